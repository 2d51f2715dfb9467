//! Per batch (`batches-worker`): the claimed batch step.
//!
//! done marker present → ack; stale batch version → ack; claim (412 and unexpired → nack); download
//! the staged parts; `run_batch`; upload curated, quarantine and reports; unless a listed file
//! failed (products held, alert), build each partner's daily product (and the monthly one when
//! this batch completes a month: its last day + `late_days`) from the curated window, upload
//! files and manifests, publish one `DeliveryRequest` per new product version; done marker; ack.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{Days, NaiveDate, Utc};
use futures::future::try_join_all;
use tokio::sync::watch;

use super::stage::bounded;
use super::{Worker, names};
use crate::clean::Limits;
use crate::clean::batch::{BatchOutputs, run_batch_with};
use crate::clean::guardrails;
use crate::clean::stage::{PartSummary, StagedPaths, Staging};
use crate::clean::{QualityReport, Schemas};
use crate::config::guardrails::VOLUME_HISTORY;
use crate::events::ProductKind;
use crate::events::delivery::DELIVERY_REQUEST_VERSION;
use crate::events::{Alert, Severity};
use crate::events::{BatchReady, DeliveryFile, DeliveryRequest, FileDigest, Incoming, Schedule};
use crate::extract::{Layout, classify};
use crate::gcp::storage::Gcs;
use crate::products::contract::Contract;
use crate::products::curated::{Curated, TransactionsSource};
use crate::products::daily::WINDOW_DAYS;
use crate::products::month_lines::MonthReads;
use crate::products::monthly::{self, first_day_of};
use crate::products::window::{self, WindowError, WindowSource};
use crate::products::{BuildError, BuildOptions, Period, Released, build};
use crate::service::claim::{self, Claim};
use crate::service::{Disposition, HandleError, blocking};
use crate::sinks::LocalFile;
use crate::telemetry::metrics;
use tracing::Instrument;

/// How long a handler waits on a held batch claim before nacking.
const HELD_CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How often it looks again meanwhile.
const HELD_CLAIM_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Uploads of a step's output files made at once (a handful of files, each streamed).
const UPLOADS_AT_ONCE: usize = 4;

/// What the batch step did, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepSummary {
    /// Delivery ids published.
    pub published: Vec<String>,
    /// Product versions already delivered before (skipped).
    pub redelivered: Vec<String>,
    /// Products held by a guardrail or a failed file.
    pub held: Vec<String>,
    /// What was written, for topic `updates`: `curated/<table>`, `products/<product>`.
    pub updated: BTreeSet<String>,
}

/// `curated/<table>` for every curated table the batch step wrote under `out` (topic
/// `updates`: what the Power BI monitor refreshes).
fn curated_tables(out: &Path) -> Result<BTreeSet<String>, HandleError> {
    let mut updated = BTreeSet::new();
    for path in files_under(out).map_err(|e| HandleError::local("outputs", e))? {
        let rel = relative(out, &path);
        if let Some((table, _)) = rel.strip_prefix("curated/").and_then(|r| r.split_once('/')) {
            updated.insert(format!("curated/{table}"));
        }
    }
    Ok(updated)
}

/// One product build's outcome, with the contract (by index) and period it was for.
struct Built {
    contract: usize,
    period: Period,
    outcome: Result<Released, BuildError>,
}

/// The month whose monthly product batch `dt` completes (its last day + `late_days`), if any.
pub fn month_completed_by(dt: NaiveDate, late_days: u32) -> Option<NaiveDate> {
    let first = first_day_of(dt - Days::new(u64::from(late_days)));
    (monthly::window(first, late_days).last() == Some(&dt)).then_some(first)
}

/// `datashare.rows.*` of a batch's quality report.
fn record_rows(report: &QualityReport) {
    for (table, t) in &report.tables {
        metrics::rows_read(table, t.rows_read);
        metrics::rows_curated(table, t.rows_kept);
        for (reason, n) in &t.quarantined_by_reason {
            metrics::rows_quarantined(table, reason, *n);
        }
    }
}

impl Worker {
    /// Handles one `BatchReady`.
    pub async fn handle_batch(&self, msg: &Incoming) -> Result<Disposition, HandleError> {
        let ready = BatchReady::parse(msg)?;
        let version = ready.step_key();
        let dt = ready.dt;
        let ops = &self.config.gcp.buckets.ops;
        let done = names::batch_done(dt, &version);
        // Both read side by side: a round trip each.
        let (finished, current) = tokio::try_join!(
            async { Ok::<_, HandleError>(self.gcs.stat(ops, &done).await?) },
            self.is_current(&ready),
        )?;
        if finished.is_some() {
            tracing::info!(%dt, %version, "batch already done");
            return Ok(Disposition::Done);
        }
        if !current {
            tracing::info!(%dt, %version, "batch superseded by a newer generation, skipped");
            return Ok(Disposition::Done);
        }
        let claim_name = names::batch_claim(dt, &version);
        let Some(generation) = self.take_batch_claim(&claim_name, &done).await? else {
            return Ok(Disposition::Done);
        };
        tracing::info!(%dt, %version, "batch claim taken");
        self.faults.at("after_claim").await;
        let timeout = std::time::Duration::from_secs(self.config.worker.step_timeout_secs);
        let span = tracing::info_span!("batch_step", %dt, %version);
        let timer = metrics::Stage::BatchStep.timer();
        let resources = metrics::BatchResources::start();
        let step = tokio::time::timeout(timeout, self.batch_step(&ready)).instrument(span);
        let result = match step.await {
            Ok(r) => r,
            Err(_) => Err(HandleError::Transient(format!(
                "batch step exceeded {} s",
                timeout.as_secs()
            ))),
        };
        drop(timer);
        resources.finish();
        // What the step's async part (uploads, downloads) freed goes back too, not only what
        // its blocking jobs did.
        crate::service::memory::release_free();
        match result {
            Ok(summary) => {
                self.publish_updates(&ready, &summary).await?;
                self.faults.at("before_done").await;
                let body = serde_json::json!({
                    "owner": self.owner,
                    "finished_at": Utc::now().to_rfc3339(),
                    "published": summary.published,
                    "redelivered": summary.redelivered,
                    "held": summary.held,
                });
                self.write_once(ops, &done, body).await?;
                // What the heap holds between steps: in use (a leak grows it) and free but
                // kept by the allocator (fragmentation grows it).
                let (heap_used, heap_free) = crate::service::memory::heap().unwrap_or_default();
                tracing::info!(
                    %dt,
                    %version,
                    published = summary.published.len(),
                    redelivered = summary.redelivered.len(),
                    held = summary.held.len(),
                    heap_used_kib = heap_used / 1024,
                    heap_free_kib = heap_free / 1024,
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

    /// Takes the batch claim `claim_name`; returns its generation, or `None` when the step was
    /// done (marker `done`) while the claim was held.
    ///
    /// A held claim is waited on briefly before nacking: the step may finish (done marker: ack)
    /// or its lease expire (take over) meanwhile, and every nack spends one of the
    /// subscription's delivery attempts.
    async fn take_batch_claim(
        &self,
        claim_name: &str,
        done: &str,
    ) -> Result<Option<i64>, HandleError> {
        let ops = &self.config.gcp.buckets.ops;
        let waited_since = std::time::Instant::now();
        loop {
            match claim::take(
                &self.gcs,
                ops,
                claim_name,
                &self.owner,
                self.config.claim_lease(),
            )
            .await?
            {
                Claim::Taken { generation, .. } => return Ok(Some(generation)),
                Claim::Held { owner, until } => {
                    if self.gcs.stat(ops, done).await?.is_some() {
                        return Ok(None);
                    }
                    if waited_since.elapsed() >= HELD_CLAIM_WAIT {
                        return Err(HandleError::Transient(format!(
                            "batch claim held by {owner} until {until}"
                        )));
                    }
                    tokio::time::sleep(HELD_CLAIM_POLL).await;
                }
            }
        }
    }

    /// Writes the record `body` to `name` unless an object is already there (an earlier
    /// attempt wrote it: kept as it is).
    async fn write_once(
        &self,
        bucket: &str,
        name: &str,
        body: serde_json::Value,
    ) -> Result<(), HandleError> {
        match self
            .gcs
            .write(bucket, name, body.to_string().into_bytes(), Some(0))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_precondition_failed() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Publishes what the step updated to `updates` (the Power BI monitor), before the done
    /// marker: a step run again publishes again, and the monitor refreshes once per version.
    async fn publish_updates(
        &self,
        ready: &BatchReady,
        summary: &StepSummary,
    ) -> Result<(), HandleError> {
        if summary.updated.is_empty() {
            return Ok(());
        }
        let updates = crate::events::Updates {
            schema_version: crate::events::updates::UPDATES_VERSION,
            dt: ready.dt.to_string(),
            batch_version: ready.step_key(),
            tables: summary.updated.iter().cloned().collect(),
        };
        let id = self
            .bus
            .publish(&self.config.gcp.topics.updates, updates.to_message())
            .await?;
        tracing::info!(dt = %ready.dt, tables = ?updates.tables, message_id = %id, "updates published");
        Ok(())
    }

    /// Whether the marker and every file are still at the generations of this batch version.
    async fn is_current(&self, ready: &BatchReady) -> Result<bool, HandleError> {
        let raw = &self.config.gcp.buckets.raw;
        let marker = names::marker(ready.dt);
        let mut wanted = vec![(marker.as_str(), ready.marker_generation)];
        wanted.extend(ready.files.iter().map(|f| (f.name.as_str(), f.generation)));
        let current = super::stage::generations(&self.gcs, raw, wanted.iter().map(|(n, _)| *n));
        let current = current.await?;
        Ok(wanted.iter().all(|(n, g)| current.get(*n) == Some(g)))
    }

    /// The claimed work: batch step, uploads, products, delivery requests.
    async fn batch_step(&self, ready: &BatchReady) -> Result<StepSummary, HandleError> {
        let dt = ready.dt;
        self.faults.at("batch_step").await;
        let tmp = self.tempdir()?;
        let out = tmp.path().join("out");
        let report = self
            .clean_batch(ready, &tmp.path().join("staging"), &out)
            .await?;
        let mut summary = StepSummary {
            updated: curated_tables(&out)?,
            ..Default::default()
        };
        // The batch's curated files go up while the products are built from their local copies;
        // nothing is published before they are stored.
        let upload = self.upload_curated(&out, dt)?;
        let products = async {
            let (periods, days, months) = self.plan_products(dt);
            // The batch's window files, whatever happens next: its lines count in later windows.
            // Written (CPU) while the guardrails and the stored window are read from the
            // buckets, uploaded while the products build; a daily build reads batch D's once
            // written (`written`), its first part (batch D's own lines) running meanwhile.
            let (written_tx, written) = watch::channel(false);
            let window = async {
                let files = Box::pin(self.write_window(&out, dt)).await?;
                written_tx.send_replace(true);
                Box::pin(self.upload_under(&out, files)).await
            };
            let built = async {
                let guard = self.check_guardrails(ready, &report).await?;
                if let Some(held) = self.hold_failed_files(ready, &report).await {
                    return Ok(Err(held));
                }
                if guard.holds() {
                    tracing::warn!(%dt, blocking = ?guard.blocking, "batch held by blocking guardrails");
                    return Ok(Err(format!("batch {dt}: {}", guard.blocking.join(","))));
                }
                let source = self.window_source(&out, (dt, written), &days, tmp.path());
                let source = Box::pin(source).await?;
                let products = tmp.path().join("products");
                let built = (self.build_all(&out, &products, periods, Some(source), None)).await?;
                Ok::<_, HandleError>(Ok((built, months)))
            };
            // Boxed: the step's future stays small (a debug build's worker thread has 2 MiB of stack).
            let ((), built) = tokio::try_join!(Box::pin(window), Box::pin(built))?;
            Ok::<_, HandleError>(built)
        };
        let (uploaded, products) = tokio::join!(upload, products);
        uploaded?;
        let (built, months) = match products? {
            Ok(built) => built,
            Err(held) => {
                summary.held.push(held);
                return Ok(summary);
            }
        };
        self.release_all(built, &mut summary).await?;
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

    /// Downloads the batch's staged parts into `staging` and runs the batch (`run_batch`) into
    /// `out`; returns its quality report.
    async fn clean_batch(
        &self,
        ready: &BatchReady,
        staging: &Path,
        out: &Path,
    ) -> Result<QualityReport, HandleError> {
        let dt = ready.dt;
        let parts = bounded(
            self.config.worker.listing_concurrency,
            ready.files.iter().map(|f| {
                let staging = staging.to_path_buf();
                async move { self.fetch_staged(dt, &f.name, f.generation, &staging).await }
            }),
        )
        .await?;

        let schemas: std::sync::Arc<Schemas> = self.schemas.clone();
        let outputs = BatchOutputs {
            root: out.to_path_buf(),
            dt,
        };
        let started = std::time::Instant::now();
        let (staging2, outputs2) = (staging.to_path_buf(), outputs.clone());
        let encode_threads = self.config.worker.encode_threads();
        let dedup = tracing::info_span!("dedup", %dt);
        let timer = metrics::Stage::Dedup.timer();
        let report: QualityReport = blocking("batch step", move || {
            // The curated columns encode on the worker's vCPUs.
            let limits = Limits {
                encode_threads,
                ..Limits::default()
            };
            run_batch_with(
                &schemas,
                dt,
                Staging::dir(&staging2),
                &parts,
                &outputs2,
                &limits,
            )
        })
        .instrument(dedup)
        .await?
        .map_err(|e| HandleError::local("batch step", e))?;
        drop(timer);
        record_rows(&report);
        tracing::info!(%dt, elapsed_ms = started.elapsed().as_millis() as u64, "batch step ran");
        Ok(report)
    }

    /// Uploads what the batch step wrote under `out` to the curated bucket: the files are
    /// listed now, so what is added to `out` later (earlier days' curated files) stays local.
    fn upload_curated(
        &self,
        out: &Path,
        dt: NaiveDate,
    ) -> Result<impl std::future::Future<Output = Result<(), HandleError>> + '_, HandleError> {
        let files = files_under(out).map_err(|e| HandleError::local("outputs", e))?;
        let out = out.to_path_buf();
        Ok(async move {
            let _timer = metrics::Stage::CuratedUpload.timer();
            self.upload_under(&out, files).await
        }
        .instrument(tracing::info_span!("curated_upload", %dt)))
    }

    /// Guardrails on the report just written (alerts published; a released batch does not
    /// hold), after warning of raw files the marker does not list.
    async fn check_guardrails(
        &self,
        ready: &BatchReady,
        report: &QualityReport,
    ) -> Result<guardrails::Evaluation, HandleError> {
        let dt = ready.dt;
        self.report_unlisted(ready).await?;
        let history = self.previous_reports(dt).await?;
        let mut guard = guardrails::evaluate(&self.config.guardrails, report, &history);
        if ready.release && guard.holds() {
            tracing::warn!(%dt, blocking = ?guard.blocking, "batch released despite blocking guardrails");
            guard = guard.released();
        }
        // One batch, one e-mail: every finding in one alert, blocking ones first.
        if let Some(alert) = guard.alert(dt) {
            self.alert(&alert).await;
        }
        Ok(guard)
    }

    /// When a listed file failed and the batch is not released: alerts `batch.held` and
    /// returns what is held; `None` when the products may be built.
    async fn hold_failed_files(
        &self,
        ready: &BatchReady,
        report: &QualityReport,
    ) -> Option<String> {
        let dt = ready.dt;
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
        if failed.is_empty() {
            return None;
        }
        if ready.release {
            tracing::warn!(%dt, failed = ?failed, "batch released without its failed files");
            return None;
        }
        let alert = Alert::new(
            Severity::Critical,
            "batch.held",
            ("*", "*", &dt.to_string()),
            &failed.join(","),
            format!(
                "lote {dt} retido: {} arquivo(s) listado(s) falharam; os produtos aguardam uma nova geração ou `datashare release`",
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
        Some(format!("batch {dt}"))
    }

    /// What batch `dt` builds: each daily buyer's product (the periods, by contract index), the
    /// earlier curated days their windows read, and the monthly builds it completes.
    fn plan_products(
        &self,
        dt: NaiveDate,
    ) -> (Vec<(usize, Period)>, BTreeSet<NaiveDate>, Vec<Schedule>) {
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
        (periods, days, months)
    }

    /// Builds the products of `periods` from the curated data under `input`, uploads them and
    /// publishes one delivery request per new product version; held products (privacy gate,
    /// reconciliation, missing batches) alert and are listed in `summary.held`.
    pub(crate) async fn build_products(
        &self,
        input: &Path,
        output: &Path,
        periods: Vec<(usize, Period)>,
        transactions: Option<Arc<dyn TransactionsSource>>,
        summary: &mut StepSummary,
    ) -> Result<(), HandleError> {
        let built = self
            .build_all(input, output, periods, None, transactions)
            .await?;
        self.release_all(built, summary).await
    }

    /// Builds the products of `periods` from the curated data under `input` into `output`, one
    /// after the other (daily ones reading the window from `window`, else from `input`); each
    /// outcome with its contract's index and label.
    async fn build_all(
        &self,
        input: &Path,
        output: &Path,
        periods: Vec<(usize, Period)>,
        window: Option<Arc<dyn WindowSource>>,
        transactions: Option<Arc<dyn TransactionsSource>>,
    ) -> Result<Vec<Built>, HandleError> {
        let mut built = Vec::with_capacity(periods.len());
        // Each month is read once for every product built from it here.
        let months = MonthReads::releasing(crate::service::memory::release_free);
        for (i, period) in periods {
            let contract = self.contracts[i].clone();
            let opts = BuildOptions {
                input: input.to_path_buf(),
                output: output.to_path_buf(),
                allow_missing_batches: false,
                built_at: Utc::now(),
                window: window.clone(),
                months: months.clone(),
                transactions: transactions.clone(),
            };
            let outcome =
                blocking("product build", move || build(&contract, period, &opts)).await?;
            built.push(Built {
                contract: i,
                period,
                outcome,
            });
        }
        Ok(built)
    }

    /// Uploads each released product and publishes its delivery request; held products
    /// (privacy gate, reconciliation, missing batches) alert and are listed in `summary.held`.
    async fn release_all(
        &self,
        built: Vec<Built>,
        summary: &mut StepSummary,
    ) -> Result<(), HandleError> {
        for Built {
            contract,
            period,
            outcome,
        } in built
        {
            let contract = &self.contracts[contract];
            let label = format!("{} {} {}", contract.name, period.kind(), period.label());
            match outcome {
                Ok(released) => {
                    summary
                        .updated
                        .insert(format!("products/{}", released.product.as_str()));
                    if self.deliver(contract, &released).await? {
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
                            super::schedules::missing_batches_summary(m),
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
        // Read side by side (a few small objects, each a round trip), kept in day order.
        let bodies = try_join_all(earlier[start..].iter().map(|(_, name)| async move {
            Ok::<_, HandleError>(self.gcs.read(curated, name, None).await?)
        }))
        .await?;
        let mut out = Vec::new();
        for ((d, _), read) in earlier[start..].iter().zip(bodies) {
            let Some((body, _)) = read else {
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
        // One listing per table, side by side.
        let listings = try_join_all(tables.iter().map(|table| async move {
            Ok::<_, HandleError>(
                self.gcs
                    .list(raw, &format!("extracts/{table}/dt={dt}/"))
                    .await?,
            )
        }))
        .await?;
        for (table, objects) in tables.iter().zip(listings) {
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
                        "lote {dt}: {} não está listado no marcador e ficou fora do lote",
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
            // The part's files side by side: each download is a round trip of its own.
            let downloads = paths
                .named()
                .into_iter()
                .filter(|(s, _)| *s != "summary.json")
                .map(|(suffix, dest)| async move {
                    let key = names::staged(dt, object, generation, suffix);
                    // A summary without its files is a part still being written: retry later.
                    match self.gcs.download(curated, &key, None, dest).await? {
                        Some(_) => Ok(()),
                        None => Err(HandleError::Transient(format!(
                            "staged file gs://{curated}/{key} not found"
                        ))),
                    }
                });
            try_join_all(downloads).await?;
        }
        Ok(summary)
    }

    /// The contracts that buy the daily product.
    fn daily_contracts(&self) -> Vec<&Contract> {
        self.contracts
            .iter()
            .filter(|c| c.buys(ProductKind::Daily))
            .collect()
    }

    /// Writes batch `dt`'s window files (one per daily contract) from its curated files under
    /// `out`, into `out/window/`; returns them, to be uploaded to the curated bucket
    /// (`window/dt=<dt>/...`, replacing those of an earlier run of the batch).
    async fn write_window(&self, out: &Path, dt: NaiveDate) -> Result<Vec<PathBuf>, HandleError> {
        let contracts: Vec<Contract> = self.daily_contracts().into_iter().cloned().collect();
        if contracts.is_empty() {
            return Ok(Vec::new());
        }
        self.window_files(out, dt, contracts).await
    }

    /// Writes batch `d`'s window files of `contracts` from the curated files under `root` (into
    /// `root/window/`); returns their paths.
    async fn window_files(
        &self,
        root: &Path,
        d: NaiveDate,
        contracts: Vec<Contract>,
    ) -> Result<Vec<PathBuf>, HandleError> {
        let dir = root.to_path_buf();
        blocking("window files", move || {
            let refs: Vec<&Contract> = contracts.iter().collect();
            window::write_batch(&Curated::new(&dir), &refs, d, &dir)
        })
        .await?
        .map_err(|e| HandleError::local("window files", e))
    }

    /// Uploads `files` (under `root`) to the curated bucket under their names relative to
    /// `root`, a few at a time: each upload is a round trip of its own, and each streams from
    /// its file with a bounded buffer.
    async fn upload_under(&self, root: &Path, files: Vec<PathBuf>) -> Result<(), HandleError> {
        let bucket = &self.config.gcp.buckets.curated;
        let uploads = files.iter().map(|path| async move {
            self.gcs.upload(bucket, &relative(root, path), path).await?;
            Ok::<_, HandleError>(())
        });
        bounded(UPLOADS_AT_ONCE, uploads).await.map(drop)
    }

    /// The window the daily builds of batch `dt` read: batch `dt`'s files under `out` (once
    /// `written` says so), the earlier `days`' from the curated bucket, streamed. A day whose
    /// curated batch exists without a file for a daily contract (written before, or a contract
    /// added since) gets it now, from its curated files downloaded one day at a time under `tmp`.
    async fn window_source(
        &self,
        out: &Path,
        (dt, written): (NaiveDate, watch::Receiver<bool>),
        days: &BTreeSet<NaiveDate>,
        tmp: &Path,
    ) -> Result<Arc<dyn WindowSource>, HandleError> {
        let bucket = &self.config.gcp.buckets.curated;
        let mut present = BTreeSet::new();
        if !days.is_empty() {
            // Three listings, side by side: each is a round trip of its own.
            let window_prefix = format!("{}/dt=", window::DIR);
            let (transactions, products, windows) = tokio::try_join!(
                self.curated_objects("transactions", days),
                self.curated_objects("products", days),
                async { Ok::<_, HandleError>(self.gcs.list(bucket, &window_prefix).await?) },
            )?;
            let days_of = |listed: Vec<(NaiveDate, String, i64)>| -> BTreeSet<NaiveDate> {
                listed.into_iter().map(|(d, _, _)| d).collect()
            };
            present = days_of(transactions)
                .intersection(&days_of(products))
                .copied()
                .collect();
            let stored: BTreeSet<String> = windows
                .into_iter()
                .filter(|o| window::day_of(&o.name).is_some_and(|d| present.contains(&d)))
                .map(|o| o.name)
                .collect();
            for d in &present {
                let missing: Vec<Contract> = self
                    .daily_contracts()
                    .into_iter()
                    .filter(|c| !stored.contains(&window::object_name(c, *d)))
                    .cloned()
                    .collect();
                if !missing.is_empty() {
                    self.fill_window(*d, missing, &tmp.join("window-fill"))
                        .await?;
                }
            }
        }
        present.insert(dt);
        Ok(Arc::new(StoredWindow {
            local: out.to_path_buf(),
            own: (dt, written),
            present,
            gcs: self.gcs.clone(),
            bucket: bucket.clone(),
            rt: tokio::runtime::Handle::current(),
        }))
    }

    /// Writes and uploads batch `d`'s window files of `contracts` from its curated files
    /// (downloaded into `scratch`, removed after).
    async fn fill_window(
        &self,
        d: NaiveDate,
        contracts: Vec<Contract>,
        scratch: &Path,
    ) -> Result<(), HandleError> {
        tracing::info!(date = %d, contracts = contracts.len(), "window files written from the curated batch");
        self.fetch_curated(scratch, &BTreeSet::from([d]), &["transactions", "products"])
            .await?;
        let files = self.window_files(scratch, d, contracts).await?;
        self.upload_under(scratch, files).await?;
        std::fs::remove_dir_all(scratch).map_err(|e| HandleError::local("window files", e))?;
        Ok(())
    }

    /// Downloads the curated `tables` of the batches of `days` that exist into `root/curated/`.
    pub(crate) async fn fetch_curated(
        &self,
        root: &Path,
        days: &BTreeSet<NaiveDate>,
        tables: &[&str],
    ) -> Result<(), HandleError> {
        let curated = &self.config.gcp.buckets.curated;
        for table in tables {
            let wanted = self.curated_objects(table, days).await?;
            try_join_all(wanted.iter().map(|(_, name, generation)| {
                let dest = root.join(name);
                async move {
                    self.gcs
                        .download(curated, name, Some(*generation), &dest)
                        .await
                }
            }))
            .await?;
        }
        Ok(())
    }

    /// The curated objects of `table` in the batches of `days`: (day, name, generation).
    async fn curated_objects(
        &self,
        table: &str,
        days: &BTreeSet<NaiveDate>,
    ) -> Result<Vec<(NaiveDate, String, i64)>, HandleError> {
        if days.is_empty() {
            return Ok(Vec::new());
        }
        let curated = &self.config.gcp.buckets.curated;
        let listed = self
            .gcs
            .list(curated, &format!("curated/{table}/dt="))
            .await?;
        Ok(listed
            .into_iter()
            .filter_map(|o| {
                let d = o.name.split('/').nth(2)?.strip_prefix("dt=")?;
                let d = NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()?;
                days.contains(&d).then_some((d, o.name, o.generation))
            })
            .collect())
    }

    /// The curated transactions of the batches of `days`, fetched from the bucket one batch at
    /// a time as a build reads them (a monthly build's two months never sit in its folder).
    pub(crate) async fn stored_transactions(
        &self,
        days: &BTreeSet<NaiveDate>,
    ) -> Result<Arc<dyn TransactionsSource>, HandleError> {
        let mut objects: BTreeMap<NaiveDate, Vec<(String, i64)>> = BTreeMap::new();
        for (d, name, generation) in self.curated_objects("transactions", days).await? {
            objects.entry(d).or_default().push((name, generation));
        }
        Ok(Arc::new(StoredTransactions {
            objects,
            gcs: self.gcs.clone(),
            bucket: self.config.gcp.buckets.curated.clone(),
            rt: tokio::runtime::Handle::current(),
        }))
    }

    /// Uploads a released product and publishes its delivery request, unless this product
    /// version was already published; returns whether it published.
    async fn deliver(&self, contract: &Contract, rel: &Released) -> Result<bool, HandleError> {
        let b = &self.config.gcp.buckets;
        let published = names::delivery_published(&rel.delivery_id);
        if self.gcs.stat(&b.ops, &published).await?.is_some() {
            self.put_table_copy(rel).await?;
            tracing::info!(partner = %rel.partner, delivery_id = %rel.delivery_id, "product version already delivered");
            return Ok(false);
        }
        let mut request = self.upload_release(contract, rel).await?;
        request.marker_generation = self.marker_generation(rel).await;
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
        self.write_once(&b.ops, &published, record).await?;
        tracing::info!(partner = %rel.partner, product = rel.product.as_str(), period = %rel.period, delivery_id = %rel.delivery_id, message_id = %id, "delivery request published");
        // The tables' copy is off the delivery's path; a step that stops before it writes it
        // on its retry (the branch above).
        self.put_table_copy(rel).await?;
        Ok(true)
    }

    /// Uploads a released product's dictionary, files and manifests to the products bucket;
    /// returns the delivery request that describes them.
    async fn upload_release<'a>(
        &'a self,
        contract: &Contract,
        rel: &'a Released,
    ) -> Result<DeliveryRequest, HandleError> {
        let bucket = &self.config.gcp.buckets.products;
        let key = |p: &Path| {
            let file = p
                .file_name()
                .map(|f| f.to_string_lossy().to_string())
                .unwrap_or_default();
            names::product_file(&rel.partner, rel.product.as_str(), &rel.delivery_id, &file)
        };
        // Side by side (the request is published once all are stored): each upload is a round
        // trip of its own to the bucket.
        let key = &key;
        let put = |path: &'a Path, built: Option<(u64, &'a str)>| async move {
            self.put_immutable(bucket, &key(path), path, built).await
        };
        let files = (rel.files.iter()).map(|f| put(&f.path, Some((f.bytes, f.sha256.as_str()))));
        let manifests = rel.files.iter().map(|f| put(&f.manifest, None));
        let (dictionary, files, manifests) = tokio::try_join!(
            put(&rel.dictionary, None),
            try_join_all(files),
            try_join_all(manifests),
        )?;
        Ok(delivery_request(contract, rel, dictionary, files, manifests).await)
    }

    /// Overwrites the period's Parquet under `tables/` (the BigQuery products tables read the
    /// latest version of each period there): a copy of the delivered file made by the bucket,
    /// or an upload of the local file when the delivered one is gone.
    async fn put_table_copy(&self, rel: &Released) -> Result<(), HandleError> {
        let products = &self.config.gcp.buckets.products;
        for f in &rel.files {
            if f.path.extension().is_none_or(|e| e != "parquet") {
                continue;
            }
            let file = f
                .path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            let name =
                names::product_table_file(&rel.partner, rel.product.as_str(), &rel.period, &file);
            let delivered =
                names::product_file(&rel.partner, rel.product.as_str(), &rel.delivery_id, &file);
            let copied = (self.gcs)
                .copy((products, &delivered), (products, &name))
                .await?;
            if copied.is_none() {
                self.gcs.upload(products, &name, &f.path).await?;
            }
        }
        Ok(())
    }

    /// Writes an object that must never change (content-addressed by delivery id): created if
    /// absent; if present (an earlier attempt), the stored bytes are what the digest describes.
    /// `built` is `src`'s size and SHA-256 when the build already computed them.
    async fn put_immutable(
        &self,
        bucket: &str,
        name: &str,
        src: &Path,
        built: Option<(u64, &str)>,
    ) -> Result<FileDigest, HandleError> {
        // Streamed both ways: a product file is never held in memory whole.
        let stored = match self.gcs.upload_file(bucket, name, src, Some(0)).await {
            Ok(_) => src.to_path_buf(),
            Err(e) if e.is_precondition_failed() => {
                // Beside the file, under a name of its own (uploads run side by side).
                let mut copy = src.as_os_str().to_owned();
                copy.push(".stored");
                let copy = PathBuf::from(copy);
                match self.gcs.download(bucket, name, None, &copy).await? {
                    Some(_) => copy,
                    None => return Err(HandleError::Transient(format!("{name} vanished"))),
                }
            }
            Err(e) => return Err(e.into()),
        };
        let original = stored == src;
        if let (true, Some((bytes, sha256))) = (original, built) {
            return Ok(FileDigest {
                uri: names::uri(bucket, name),
                sha256: sha256.to_string(),
                bytes,
            });
        }
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

/// The delivery request of a released product whose dictionary, files and manifests were
/// uploaded as `dictionary`, `files` and `manifests` (in the order of `rel.files`).
async fn delivery_request(
    contract: &Contract,
    rel: &Released,
    dictionary: FileDigest,
    files: Vec<FileDigest>,
    manifests: Vec<FileDigest>,
) -> DeliveryRequest {
    DeliveryRequest {
        schema_version: DELIVERY_REQUEST_VERSION,
        delivery_id: rel.delivery_id.clone(),
        partner: rel.partner.clone(),
        product: rel.product.as_str().to_string(),
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
        marker_generation: None,
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

    fn contract() -> Contract {
        crate::products::contract::acme_buying("daily")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_build_reads_batch_d_window_file_only_once_the_step_has_written_it() {
        let dir = tempfile::tempdir().unwrap();
        let d = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
        let c = contract();
        // Never reached: batch D's file is local.
        let gcs = Gcs::connect(Some("http://127.0.0.1:9")).await.unwrap();
        let window = |written| StoredWindow {
            local: dir.path().to_path_buf(),
            own: (d, written),
            present: BTreeSet::from([d]),
            gcs: gcs.clone(),
            bucket: "curated".into(),
            rt: tokio::runtime::Handle::current(),
        };
        // Written after the build asked for it: the build waits, then reads the whole file.
        let (tx, rx) = watch::channel(false);
        let source = window(rx);
        let c2 = c.clone();
        let reading = tokio::task::spawn_blocking(move || {
            let mut readers = source.open_all(&c2, &[d]).map_err(|e| e.to_string())?;
            let mut text = String::new();
            std::io::Read::read_to_string(&mut readers[0], &mut text).map_err(|e| e.to_string())?;
            Ok::<_, String>(text)
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let path = dir.path().join(window::object_name(&c, d));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "the window of D").unwrap();
        tx.send_replace(true);
        assert_eq!(reading.await.unwrap().unwrap(), "the window of D");
        // The step gave up writing them: the build fails instead of waiting for ever.
        let (tx, rx) = watch::channel(false);
        let source = window(rx);
        drop(tx);
        let c2 = c.clone();
        let failed = tokio::task::spawn_blocking(move || source.open_all(&c2, &[d]).map(drop));
        let e = failed.await.unwrap().unwrap_err().to_string();
        assert!(e.contains("not written"), "{e}");
    }
}

/// The curated transactions a worker's monthly build reads, fetched from the curated bucket
/// one batch at a time.
#[derive(Debug)]
struct StoredTransactions {
    /// Each batch's objects: (name, generation).
    objects: BTreeMap<NaiveDate, Vec<(String, i64)>>,
    gcs: Gcs,
    bucket: String,
    rt: tokio::runtime::Handle,
}

impl TransactionsSource for StoredTransactions {
    fn has(&self, dt: NaiveDate) -> bool {
        self.objects.contains_key(&dt)
    }

    fn fetch(&self, dt: NaiveDate, dir: &Path) -> std::io::Result<()> {
        for (name, generation) in self.objects.get(&dt).into_iter().flatten() {
            let file = name.rsplit('/').next().unwrap_or(name);
            let got = self
                .rt
                .block_on(
                    self.gcs
                        .download(&self.bucket, name, Some(*generation), &dir.join(file)),
                )
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            if got.is_none() {
                // Replaced or deleted since it was listed: the build is retried on a new listing.
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "gs://{}/{name} generation {generation} is gone",
                        self.bucket
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The window a worker's daily build reads: batch D's files from the step's folder (once the
/// step has written them), the earlier days' streamed from the curated bucket.
#[derive(Debug)]
struct StoredWindow {
    /// The step's output folder (holding `window/dt=<D>/`).
    local: PathBuf,
    /// Batch D, and whether the step has written its window files yet (false until then; the
    /// sender dropped without `true`: they will not be).
    own: (NaiveDate, watch::Receiver<bool>),
    /// Days whose batch exists (each has its files).
    present: BTreeSet<NaiveDate>,
    gcs: Gcs,
    bucket: String,
    rt: tokio::runtime::Handle,
}

impl StoredWindow {
    /// Opens batch `dt`'s window file of `contract`: batch D's from the step's folder when
    /// written, an earlier batch's as a stream from the bucket (its first round trip done).
    async fn open_async(
        &self,
        contract: &Contract,
        dt: NaiveDate,
    ) -> Result<Box<dyn std::io::Read + Send>, WindowError> {
        let name = window::object_name(contract, dt);
        let io = |source| WindowError::Io {
            path: name.clone(),
            source,
        };
        if dt == self.own.0 {
            let mut written = self.own.1.clone();
            if written.wait_for(|w| *w).await.is_err() {
                let e = std::io::Error::other("the batch's window files were not written");
                return Err(io(e));
            }
            let path = self.local.join(&name);
            return Ok(Box::new(std::fs::File::open(&path).map_err(io)?));
        }
        let reader = (self.gcs)
            .blocking_reader(self.rt.clone(), &self.bucket, &name)
            .await
            .map_err(|e| io(std::io::Error::other(e.to_string())))?
            .ok_or_else(|| io(std::io::Error::from(std::io::ErrorKind::NotFound)))?;
        Ok(Box::new(reader))
    }
}

impl WindowSource for StoredWindow {
    fn has_batch(&self, dt: NaiveDate) -> bool {
        self.present.contains(&dt)
    }

    fn open(
        &self,
        contract: &Contract,
        dt: NaiveDate,
    ) -> Result<Box<dyn std::io::Read + Send>, WindowError> {
        self.rt.block_on(self.open_async(contract, dt))
    }

    fn open_all(
        &self,
        contract: &Contract,
        days: &[NaiveDate],
    ) -> Result<Vec<Box<dyn std::io::Read + Send>>, WindowError> {
        // Side by side: each earlier day's file is a round trip before its first byte (29 of
        // them in a full window), and batch D's may still be being written.
        let opens = days.iter().map(|d| self.open_async(contract, *d));
        self.rt.block_on(try_join_all(opens))
    }
}
