//! Per batch (`batches-worker`): the claimed batch step.
//!
//! done marker present → ack; stale batch version → ack; claim (412 and unexpired → nack); download
//! the staged parts; `run_batch`; upload curated, quarantine and reports; unless a listed file
//! failed (products held, alert), build each partner's daily product (and the monthly one when
//! this batch completes a month: its last day + `late_days`) from the curated window, upload
//! files and manifests, publish one `DeliveryRequest` per new product version; done marker; ack.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chrono::{Days, NaiveDate, Utc};
use futures::future::try_join_all;

use super::{Worker, names};
use crate::clean::batch::{BatchOutputs, run_batch};
use crate::clean::guardrails;
use crate::clean::stage::{PartSummary, StagedPaths};
use crate::clean::{QualityReport, Schemas};
use crate::config::guardrails::VOLUME_HISTORY;
use crate::events::ProductKind;
use crate::events::delivery::DELIVERY_REQUEST_VERSION;
use crate::events::{Alert, Severity};
use crate::events::{BatchReady, DeliveryFile, DeliveryRequest, FileDigest, Incoming, Schedule};
use crate::extract::{Layout, classify};
use crate::products::contract::Contract;
use crate::products::daily::WINDOW_DAYS;
use crate::products::monthly::{self, first_day_of};
use crate::products::{BuildError, BuildOptions, Period, Released, build};
use crate::service::claim::{self, Claim};
use crate::service::{Disposition, HandleError, blocking};
use crate::sinks::LocalFile;

/// How long a handler waits on a held batch claim before nacking.
const HELD_CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How often it looks again meanwhile.
const HELD_CLAIM_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// What the batch step did, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepSummary {
    /// Delivery ids published.
    pub published: Vec<String>,
    /// Product versions already delivered before (skipped).
    pub redelivered: Vec<String>,
    /// Products held by a guardrail or a failed file.
    pub held: Vec<String>,
}

/// The month whose monthly product batch `dt` completes (its last day + `late_days`), if any.
pub fn month_completed_by(dt: NaiveDate, late_days: u32) -> Option<NaiveDate> {
    let first = first_day_of(dt - Days::new(u64::from(late_days)));
    (monthly::window(first, late_days).last() == Some(&dt)).then_some(first)
}

impl Worker {
    /// Handles one `BatchReady`.
    pub async fn handle_batch(&self, msg: &Incoming) -> Result<Disposition, HandleError> {
        let ready = BatchReady::parse(msg)?;
        let version = ready.step_key();
        let dt = ready.dt;
        let ops = &self.config.gcp.buckets.ops;
        let done = names::batch_done(dt, &version);
        if self.gcs.stat(ops, &done).await?.is_some() {
            tracing::info!(%dt, %version, "batch already done");
            return Ok(Disposition::Done);
        }
        if !self.is_current(&ready).await? {
            tracing::info!(%dt, %version, "batch superseded by a newer generation, skipped");
            return Ok(Disposition::Done);
        }
        let claim_name = names::batch_claim(dt, &version);
        // A held claim is waited on briefly before nacking: the step may finish (done marker:
        // ack) or its lease expire (take over) meanwhile, and every nack spends one of the
        // subscription's delivery attempts.
        let waited_since = std::time::Instant::now();
        let generation = loop {
            match claim::take(
                &self.gcs,
                ops,
                &claim_name,
                &self.owner,
                self.config.claim_lease(),
            )
            .await?
            {
                Claim::Taken { generation, .. } => break generation,
                Claim::Held { owner, until } => {
                    if self.gcs.stat(ops, &done).await?.is_some() {
                        return Ok(Disposition::Done);
                    }
                    if waited_since.elapsed() >= HELD_CLAIM_WAIT {
                        return Err(HandleError::Transient(format!(
                            "batch claim held by {owner} until {until}"
                        )));
                    }
                    tokio::time::sleep(HELD_CLAIM_POLL).await;
                }
            }
        };
        tracing::info!(%dt, %version, "batch claim taken");
        self.faults.at("after_claim").await;
        let timeout = std::time::Duration::from_secs(self.config.worker.step_timeout_secs);
        let result = match tokio::time::timeout(timeout, self.batch_step(&ready)).await {
            Ok(r) => r,
            Err(_) => Err(HandleError::Transient(format!(
                "batch step exceeded {} s",
                timeout.as_secs()
            ))),
        };
        match result {
            Ok(summary) => {
                self.faults.at("before_done").await;
                let body = serde_json::json!({
                    "owner": self.owner,
                    "finished_at": Utc::now().to_rfc3339(),
                    "published": summary.published,
                    "redelivered": summary.redelivered,
                    "held": summary.held,
                });
                match self
                    .gcs
                    .write(ops, &done, body.to_string().into_bytes(), Some(0))
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.is_precondition_failed() => {}
                    Err(e) => return Err(e.into()),
                }
                tracing::info!(
                    %dt,
                    %version,
                    published = summary.published.len(),
                    redelivered = summary.redelivered.len(),
                    held = summary.held.len(),
                    "batch step done"
                );
                Ok(Disposition::Done)
            }
            Err(e) => {
                claim::release(&self.gcs, ops, &claim_name, &self.owner, generation).await;
                Err(e)
            }
        }
    }

    /// Whether the marker and every file are still at the generations of this batch version.
    async fn is_current(&self, ready: &BatchReady) -> Result<bool, HandleError> {
        let raw = &self.config.gcp.buckets.raw;
        let marker = names::marker(ready.dt);
        let mut wanted = vec![(marker.as_str(), ready.marker_generation)];
        wanted.extend(ready.files.iter().map(|f| (f.name.as_str(), f.generation)));
        let metas = try_join_all(wanted.iter().map(|(n, _)| self.gcs.stat(raw, n))).await?;
        Ok(wanted
            .iter()
            .zip(metas)
            .all(|((_, g), m)| m.is_some_and(|m| m.generation == *g)))
    }

    /// The claimed work: batch step, uploads, products, delivery requests.
    async fn batch_step(&self, ready: &BatchReady) -> Result<StepSummary, HandleError> {
        let b = &self.config.gcp.buckets;
        let dt = ready.dt;
        self.faults.at("batch_step").await;
        let tmp = self.tempdir()?;
        let staging = tmp.path().join("staging");
        let out = tmp.path().join("out");
        let parts = try_join_all(ready.files.iter().map(|f| {
            let staging = staging.clone();
            async move { self.fetch_staged(dt, &f.name, f.generation, &staging).await }
        }))
        .await?;

        let schemas: std::sync::Arc<Schemas> = self.schemas.clone();
        let outputs = BatchOutputs {
            root: out.clone(),
            dt,
        };
        let started = std::time::Instant::now();
        let (staging2, outputs2) = (staging.clone(), outputs.clone());
        let report: QualityReport = blocking("batch step", move || {
            run_batch(&schemas, dt, &staging2, &parts, &outputs2)
        })
        .await?
        .map_err(|e| HandleError::local("batch step", e))?;
        tracing::info!(%dt, elapsed_ms = started.elapsed().as_millis() as u64, "batch step ran");
        for path in files_under(&out).map_err(|e| HandleError::local("outputs", e))? {
            let rel = relative(&out, &path);
            self.gcs.upload(&b.curated, &rel, &path).await?;
        }

        // Guardrails on the report just written, and raw files the marker does not list.
        self.report_unlisted(ready).await?;
        let history = self.previous_reports(dt).await?;
        let mut guard = guardrails::evaluate(&self.config.guardrails, &report, &history);
        if ready.release && guard.holds() {
            tracing::warn!(%dt, blocking = ?guard.blocking, "batch released despite blocking guardrails");
            guard = guard.released();
        }
        for alert in &guard.alerts {
            self.alert(alert).await;
        }

        let mut summary = StepSummary::default();
        let failed: Vec<String> = report
            .failed_files()
            .map(|f| {
                format!(
                    "{} ({})",
                    f.object,
                    f.error.as_ref().map_or("", |e| e.kind.as_str())
                )
            })
            .collect();
        if !failed.is_empty() && ready.release {
            tracing::warn!(%dt, failed = ?failed, "batch released without its failed files");
        } else if !failed.is_empty() {
            let alert = Alert::new(
                Severity::Critical,
                "batch.held",
                ("*", "*", &dt.to_string()),
                &failed.join(","),
                format!(
                    "batch {dt} held: {} listed file(s) failed; products wait for a new generation or `datashare release`",
                    failed.len()
                ),
            )
            .with("failed_files", failed.clone());
            // The same fingerprint as the first failed file's dead letter: one failure, one
            // e-mail (whichever of the two reaches the alerting consumer first is mailed, the
            // other is recorded with it: src/alerting/state.rs).
            let alert = match report.failed_files().next() {
                Some(f) => alert.with_fingerprint(crate::events::dead_letter_fingerprint(
                    crate::config::EXTRACTS_SUBSCRIPTION,
                    crate::events::ErrorKind::InvalidExtract.as_str(),
                    &f.object,
                )),
                None => alert,
            };
            self.alert(&alert).await;
            summary.held.push(format!("batch {dt}"));
            return Ok(summary);
        }
        if guard.holds() {
            tracing::warn!(%dt, blocking = ?guard.blocking, "batch held by blocking guardrails");
            summary
                .held
                .push(format!("batch {dt}: {}", guard.blocking.join(",")));
            return Ok(summary);
        }

        let mut periods: Vec<(usize, Period)> = Vec::new();
        let mut days: BTreeSet<NaiveDate> = BTreeSet::new();
        let mut months: Vec<Schedule> = Vec::new();
        for (i, c) in self.contracts.iter().enumerate() {
            if c.buys(ProductKind::Daily) {
                periods.push((i, Period::Day(dt)));
                let first = dt - Days::new(WINDOW_DAYS - 1);
                days.extend(first.iter_days().take_while(|d| *d <= dt));
            }
            if !c.monthly_products().is_empty()
                && let Some(first) = month_completed_by(dt, c.late_days)
            {
                months.push(Schedule::Monthly {
                    month: first.format("%Y-%m").to_string(),
                    partner: Some(c.name.clone()),
                });
            }
        }
        days.remove(&dt);
        self.fetch_curated(&out, &days).await?;
        self.build_products(&out, &tmp.path().join("products"), periods, &mut summary)
            .await?;
        // Monthly builds run from their own message (slow work, its own claim).
        for m in months {
            let id = self
                .bus
                .publish(&self.config.gcp.topics.schedules, m.to_message())
                .await?;
            tracing::info!(%dt, request = ?m, message_id = %id, "monthly build requested");
        }
        Ok(summary)
    }

    /// Builds the products of `periods` from the curated data under `input`, uploads them and
    /// publishes one delivery request per new product version; held products (privacy gate,
    /// reconciliation, missing batches) alert and are listed in `summary.held`.
    pub(crate) async fn build_products(
        &self,
        input: &Path,
        output: &Path,
        periods: Vec<(usize, Period)>,
        summary: &mut StepSummary,
    ) -> Result<(), HandleError> {
        for (i, period) in periods {
            let contract = self.contracts[i].clone();
            let opts = BuildOptions {
                input: input.to_path_buf(),
                output: output.to_path_buf(),
                allow_missing_batches: false,
                built_at: Utc::now(),
            };
            let label = format!("{} {} {}", contract.name, period.kind(), period.label());
            let c2 = contract.clone();
            let built = blocking("product build", move || build(&c2, period, &opts)).await?;
            match built {
                Ok(released) => {
                    if self.deliver(&contract, &released).await? {
                        summary.published.push(released.delivery_id.clone());
                    } else {
                        summary.redelivered.push(released.delivery_id.clone());
                    }
                }
                Err(e) => {
                    if let Some(alert) = e.alert() {
                        self.alert(alert).await;
                        summary.held.push(label);
                    } else if let BuildError::Monthly(
                        m @ monthly::MonthlyError::MissingBatches { .. },
                    ) = &e
                    {
                        let alert = Alert::new(
                            Severity::Error,
                            "product.missing_batches",
                            (&contract.name, period.kind().as_str(), &period.label()),
                            "missing_batches",
                            m.to_string(),
                        );
                        self.alert(&alert).await;
                        summary.held.push(label);
                    } else {
                        return Err(HandleError::local("product build", e));
                    }
                }
            }
        }
        Ok(())
    }

    /// The quality reports of the latest [`VOLUME_HISTORY`] batches before `dt` in the curated
    /// bucket (`reports/dt=<D>/quality.json`); one that cannot be read is skipped with a warning.
    async fn previous_reports(&self, dt: NaiveDate) -> Result<Vec<QualityReport>, HandleError> {
        let curated = &self.config.gcp.buckets.curated;
        let mut earlier: Vec<(NaiveDate, String)> = self
            .gcs
            .list(curated, "reports/dt=")
            .await?
            .into_iter()
            .filter_map(|o| {
                let d = o
                    .name
                    .strip_prefix("reports/dt=")?
                    .strip_suffix("/quality.json")?;
                let d = NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()?;
                (d < dt).then_some((d, o.name))
            })
            .collect();
        earlier.sort();
        let start = earlier.len().saturating_sub(VOLUME_HISTORY);
        let mut out = Vec::new();
        for (d, name) in &earlier[start..] {
            let Some((body, _)) = self.gcs.read(curated, name, None).await? else {
                continue;
            };
            match serde_json::from_slice::<QualityReport>(&body) {
                Ok(r) => out.push(r),
                Err(e) => {
                    tracing::warn!(%dt, batch = %d, error = %e, "earlier quality report unreadable, left out of the volume check")
                }
            }
        }
        Ok(out)
    }

    /// Publishes one `extract.unlisted` warning per part of the batch's day in the raw bucket
    /// that its marker does not list (the worker stages such a part but the batch ignores it).
    async fn report_unlisted(&self, ready: &BatchReady) -> Result<(), HandleError> {
        let raw = &self.config.gcp.buckets.raw;
        let dt = ready.dt;
        let tables: Vec<&str> = self.schemas.names().collect();
        let listed: BTreeSet<&str> = ready.files.iter().map(|f| f.name.as_str()).collect();
        for table in &tables {
            let objects = self
                .gcs
                .list(raw, &format!("extracts/{table}/dt={dt}/"))
                .await?;
            for o in objects {
                // Objects outside the layout were dead-lettered when they arrived: not repeated.
                let is_part =
                    matches!(classify(&o.name, &tables), Layout::Part { dt: d, .. } if d == dt);
                if !is_part || listed.contains(o.name.as_str()) {
                    continue;
                }
                tracing::warn!(%dt, object = %o.name, generation = o.generation, "extract not listed in the batch marker, ignored");
                let alert = Alert::new(
                    Severity::Warning,
                    "extract.unlisted",
                    ("*", "*", &dt.to_string()),
                    &o.name,
                    format!(
                        "batch {dt}: {} is not listed in the marker and was left out of the batch",
                        o.name
                    ),
                )
                .with("object", o.name.as_str())
                .with("generation", o.generation)
                .with("table", *table)
                .with("dt", dt.to_string());
                self.alert(&alert).await;
            }
        }
        Ok(())
    }

    /// Downloads one staged part (summary, then its Arrow files) into `staging`.
    async fn fetch_staged(
        &self,
        dt: NaiveDate,
        object: &str,
        generation: i64,
        staging: &Path,
    ) -> Result<PartSummary, HandleError> {
        let curated = &self.config.gcp.buckets.curated;
        let key = names::staged(dt, object, generation, "summary.json");
        let Some((body, _)) = self.gcs.read(curated, &key, None).await? else {
            return Err(HandleError::Transient(format!(
                "staged part {object}@{generation} not found"
            )));
        };
        let summary: PartSummary =
            serde_json::from_slice(&body).map_err(|e| HandleError::local("staged summary", e))?;
        if summary.file.error.is_none() {
            let paths = StagedPaths::new(staging, object, &generation.to_string());
            for (suffix, dest) in paths
                .named()
                .into_iter()
                .filter(|(s, _)| *s != "summary.json")
            {
                let key = names::staged(dt, object, generation, suffix);
                // A summary without its files is a part still being written: retry later.
                if self
                    .gcs
                    .download(curated, &key, None, dest)
                    .await?
                    .is_none()
                {
                    return Err(HandleError::Transient(format!(
                        "staged file gs://{curated}/{key} not found"
                    )));
                }
            }
        }
        Ok(summary)
    }

    /// Downloads the curated batches of `days` that exist into `root/curated/`.
    pub(crate) async fn fetch_curated(
        &self,
        root: &Path,
        days: &BTreeSet<NaiveDate>,
    ) -> Result<(), HandleError> {
        if days.is_empty() {
            return Ok(());
        }
        let curated = &self.config.gcp.buckets.curated;
        for table in ["transactions", "products"] {
            let listed = self
                .gcs
                .list(curated, &format!("curated/{table}/dt="))
                .await?;
            let wanted: Vec<_> = listed
                .into_iter()
                .filter(|o| {
                    o.name
                        .split('/')
                        .nth(2)
                        .and_then(|s| s.strip_prefix("dt="))
                        .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
                        .is_some_and(|d| days.contains(&d))
                })
                .collect();
            try_join_all(wanted.iter().map(|o| {
                let dest = root.join(&o.name);
                async move {
                    self.gcs
                        .download(curated, &o.name, Some(o.generation), &dest)
                        .await
                }
            }))
            .await?;
        }
        Ok(())
    }

    /// Uploads a released product and publishes its delivery request, unless this product
    /// version was already published; returns whether it published.
    async fn deliver(&self, contract: &Contract, rel: &Released) -> Result<bool, HandleError> {
        let b = &self.config.gcp.buckets;
        let published = names::delivery_published(&rel.delivery_id);
        if self.gcs.stat(&b.ops, &published).await?.is_some() {
            tracing::info!(partner = %rel.partner, delivery_id = %rel.delivery_id, "product version already delivered");
            return Ok(false);
        }
        let product = rel.product.as_str();
        let key = |p: &Path| {
            let file = p
                .file_name()
                .map(|f| f.to_string_lossy().to_string())
                .unwrap_or_default();
            names::product_file(&rel.partner, product, &rel.delivery_id, &file)
        };
        let dictionary = self
            .put_immutable(&b.products, &key(&rel.dictionary), &rel.dictionary)
            .await?;
        let mut files = Vec::new();
        for f in &rel.files {
            files.push(
                self.put_immutable(&b.products, &key(&f.path), &f.path)
                    .await?,
            );
        }
        let mut manifests = Vec::new();
        for f in &rel.files {
            manifests.push(
                self.put_immutable(&b.products, &key(&f.manifest), &f.manifest)
                    .await?,
            );
        }
        let request = DeliveryRequest {
            schema_version: DELIVERY_REQUEST_VERSION,
            delivery_id: rel.delivery_id.clone(),
            partner: rel.partner.clone(),
            product: product.to_string(),
            period: rel.period.clone(),
            product_version: rel.product_version.clone(),
            files: rel
                .files
                .iter()
                .zip(files)
                .zip(manifests)
                .map(|((f, file), manifest)| DeliveryFile {
                    name: f
                        .path
                        .file_name()
                        .map(|n| n.to_string_lossy().to_string())
                        .unwrap_or_default(),
                    format: f
                        .path
                        .extension()
                        .map(|e| e.to_string_lossy().to_string())
                        .unwrap_or_default(),
                    rows: f.rows as u64,
                    file,
                    manifest,
                })
                .collect(),
            dictionary,
            sinks: contract
                .sinks
                .iter()
                .map(|s| s.name())
                .filter(|n| *n != "email")
                .map(String::from)
                .collect(),
            source_batches: source_batches(rel).await,
        };
        self.faults.at("before_publish").await;
        let id = self
            .bus
            .publish(&self.config.gcp.topics.deliveries, request.to_message())
            .await?;
        let record = serde_json::json!({
            "delivery_id": rel.delivery_id,
            "message_id": id,
            "published_at": Utc::now().to_rfc3339(),
            "owner": self.owner,
        });
        match self
            .gcs
            .write(&b.ops, &published, record.to_string().into_bytes(), Some(0))
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_precondition_failed() => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(partner = %rel.partner, product, period = %rel.period, delivery_id = %rel.delivery_id, message_id = %id, "delivery request published");
        Ok(true)
    }

    /// Writes an object that must never change (content-addressed by delivery id): created if
    /// absent; if present (an earlier attempt), the stored bytes are what the digest describes.
    async fn put_immutable(
        &self,
        bucket: &str,
        name: &str,
        src: &Path,
    ) -> Result<FileDigest, HandleError> {
        // Streamed both ways: a product file is never held in memory whole.
        let stored = match self.gcs.upload_file(bucket, name, src, Some(0)).await {
            Ok(_) => src.to_path_buf(),
            Err(e) if e.is_precondition_failed() => {
                let copy = src.with_extension("stored");
                match self.gcs.download(bucket, name, None, &copy).await? {
                    Some(_) => copy,
                    None => return Err(HandleError::Transient(format!("{name} vanished"))),
                }
            }
            Err(e) => return Err(e.into()),
        };
        let original = stored == src;
        let f = blocking("product file", move || {
            let f = LocalFile::from_path(&stored);
            if !original {
                let _ = std::fs::remove_file(&stored);
            }
            f
        })
        .await?
        .map_err(|e| HandleError::local("product file", e))?;
        Ok(FileDigest {
            uri: names::uri(bucket, name),
            sha256: f.sha256,
            bytes: f.bytes,
        })
    }
}

/// The batches a released product was built from, as its manifest names them.
async fn source_batches(rel: &Released) -> Vec<String> {
    let Some(f) = rel.files.first() else {
        return Vec::new();
    };
    let manifest = match tokio::fs::read(&f.manifest).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, delivery_id = %rel.delivery_id, "manifest unreadable, no source batches");
            return Vec::new();
        }
    };
    serde_json::from_slice::<serde_json::Value>(&manifest)
        .ok()
        .and_then(|m| serde_json::from_value(m["source_batches"].clone()).ok())
        .unwrap_or_default()
}

/// Every file under `dir`, recursively, in name order.
fn files_under(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let p = entry?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `path` relative to `root`, with `/` separators (an object name).
fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .components()
        .map(|c| c.as_os_str().to_string_lossy().to_string())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_complete_on_their_last_day_plus_late_days() {
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        assert_eq!(
            month_completed_by(d("2026-12-02"), 2),
            Some(d("2026-11-01"))
        );
        assert_eq!(month_completed_by(d("2026-12-01"), 2), None);
        assert_eq!(
            month_completed_by(d("2026-11-30"), 0),
            Some(d("2026-11-01"))
        );
        assert_eq!(
            month_completed_by(d("2026-03-02"), 2),
            Some(d("2026-02-01"))
        );
        assert_eq!(month_completed_by(d("2026-11-27"), 2), None);
    }
}
