//! Per raw object (`extracts-worker`): classify; stage a part or read the marker; then publish
//! `BatchReady` when the marker exists and every listed file is settled at its current
//! generation. The batch step itself never runs here.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::path::Path;

use chrono::NaiveDate;
use futures::{StreamExt, TryStreamExt, stream};

use super::{Worker, names};
use crate::clean::stage::{PartSummary, StageError, StagedPaths, Staging, stage_part_with};
use crate::clean::validators::today_sao_paulo;
use crate::clean::{Limits, Schemas};
use crate::config::Config;
use crate::events::batch::BATCH_READY_VERSION;
use crate::events::gcs::OBJECT_FINALIZE;
use crate::events::{
    BatchReady, ErrorKind, GcsNotification, Incoming, ObjectGeneration, ObjectRef,
};
use crate::extract::{Layout, Marker, classify};
use crate::gcp::Gcs;
use crate::service::{Disposition, HandleError, blocking};

/// What staging one object generation came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Staged {
    /// Staged now; the file error when the whole file was rejected.
    Now(Option<String>),
    /// Staged before (a duplicate notification or a redelivery).
    Already,
    /// That generation no longer exists (deleted); nothing to stage.
    Gone,
}

impl Worker {
    /// Handles one GCS notification of the raw bucket.
    pub async fn handle_object(&self, msg: &Incoming) -> Result<Disposition, HandleError> {
        let n = GcsNotification::parse(msg)?;
        if n.event_type != OBJECT_FINALIZE {
            tracing::info!(event = %n.event_type, object = %n.object, "not a new object, ignored");
            return Ok(Disposition::Done);
        }
        let raw = &self.config.gcp.buckets.raw;
        if &n.object.bucket != raw {
            return Ok(Disposition::DeadLetter {
                kind: ErrorKind::UnknownLayout,
                error: format!("object of bucket {}, not the raw bucket", n.object.bucket),
            });
        }
        let tables: Vec<&str> = self.schemas.names().collect();
        match classify(&n.object.name, &tables) {
            Layout::Other { reason } => {
                tracing::warn!(object = %n.object, reason = %reason, "not an extract");
                Ok(Disposition::DeadLetter {
                    kind: ErrorKind::UnknownLayout,
                    error: format!("{}: {reason}", n.object.name),
                })
            }
            Layout::Part { table, dt } => {
                let staged = self.stage_object(&n.object, &table, dt).await?;
                self.check_batch(dt).await?;
                match staged {
                    Staged::Now(Some(error)) => Ok(Disposition::DeadLetter {
                        kind: ErrorKind::InvalidExtract,
                        error: format!("{}: {error}", n.object.name),
                    }),
                    _ => Ok(Disposition::Done),
                }
            }
            Layout::Marker { dt } => {
                let Some((body, _)) = self
                    .gcs
                    .read(raw, &n.object.name, Some(n.object.generation))
                    .await?
                else {
                    tracing::info!(object = %n.object, "marker generation gone");
                    return Ok(Disposition::Done);
                };
                if let Err(e) = Marker::parse(&body, dt, &tables) {
                    return Ok(Disposition::DeadLetter {
                        kind: ErrorKind::InvalidExtract,
                        error: format!("{}: {e}", n.object.name),
                    });
                }
                self.check_batch(dt).await?;
                Ok(Disposition::Done)
            }
        }
    }

    /// Stages one part generation into the curated bucket's staging area (once).
    pub async fn stage_object(
        &self,
        object: &ObjectRef,
        table: &str,
        dt: NaiveDate,
    ) -> Result<Staged, HandleError> {
        let curated = &self.config.gcp.buckets.curated;
        let summary_name = names::staged(dt, &object.name, object.generation, "summary.json");
        if self.gcs.stat(curated, &summary_name).await?.is_some() {
            tracing::info!(object = %object, "part already staged");
            return Ok(Staged::Already);
        }
        let tmp = self.tempdir()?;
        let raw_path = tmp.path().join("raw");
        let got = self
            .gcs
            .download(
                &object.bucket,
                &object.name,
                Some(object.generation),
                &raw_path,
            )
            .await?;
        if got.is_none() {
            tracing::info!(object = %object, "object generation gone, nothing to stage");
            return Ok(Staged::Gone);
        }
        let schema = self
            .schemas
            .table(table)
            .ok_or_else(|| HandleError::Transient(format!("no schema for table {table}")))?
            .clone();
        let staging = tmp.path().join("staging");
        let (name, generation) = (object.name.clone(), object.generation.to_string());
        let started = std::time::Instant::now();
        let stage_dir = staging.clone();
        let span = tracing::info_span!("stage_part", table, %dt);
        let timer = crate::telemetry::metrics::Stage::StagePart.timer();
        let summary = blocking("staging", move || -> Result<PartSummary, StageError> {
            let _span = span.entered();
            let file = File::open(&raw_path)?;
            // Staged files go up to the curated bucket and back down: compressed.
            let limits = Limits {
                compress_staged: true,
                ..Limits::default()
            };
            stage_part_with(
                &schema,
                &name,
                &generation,
                file,
                Staging::dir(&stage_dir),
                today_sao_paulo(),
                &limits,
            )
        })
        .await?
        .map_err(|e| match e.is_transient() {
            true => HandleError::local("staging", e),
            false => HandleError::Permanent {
                kind: ErrorKind::InvalidExtract,
                message: e.to_string(),
            },
        })?;
        drop(timer);
        tracing::info!(
            object = %object,
            rows = summary.file.rows,
            quarantined = summary.rows_quarantined,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "part staged"
        );
        let paths = StagedPaths::new(&staging, &object.name, &object.generation.to_string());
        // Every staged file, side by side (each upload is a round trip of its own), then the
        // summary: its presence says the part is staged.
        let [files @ .., summary_file] = paths.named();
        let upload = async |(suffix, path): (&'static str, &Path)| {
            if path.exists() {
                let key = names::staged(dt, &object.name, object.generation, suffix);
                // Boxed: the staging future stays small (a debug build's threads have 2 MiB of
                // stack, and the storage client's upload future is large).
                Box::pin(self.gcs.upload(curated, &key, path)).await?;
            }
            Ok::<_, HandleError>(())
        };
        futures::future::try_join_all(files.map(&upload)).await?;
        upload(summary_file).await?;
        crate::service::memory::release_free();
        let error = summary
            .file
            .error
            .as_ref()
            .map(|e| format!("{} ({})", e.kind, e.message));
        Ok(Staged::Now(error))
    }

    /// Publishes `BatchReady` when the marker exists and every listed file is staged at its
    /// current generation; returns whether it did.
    pub async fn check_batch(&self, dt: NaiveDate) -> Result<bool, HandleError> {
        let Some(ready) = ready_batch(&self.gcs, &self.config, &self.schemas, dt).await? else {
            return Ok(false);
        };
        let id = self
            .bus
            .publish(&self.config.gcp.topics.batches, ready.to_message())
            .await?;
        tracing::info!(%dt, version = %ready.version(), message_id = %id, "batch ready published");
        self.faults.at("after_batch_ready").await;
        Ok(true)
    }
}

/// The batch of `dt` as it stands, if its marker exists and every listed file is settled
/// (staged, or failed permanently) at its current generation.
pub async fn ready_batch(
    gcs: &Gcs,
    config: &Config,
    schemas: &Schemas,
    dt: NaiveDate,
) -> Result<Option<BatchReady>, HandleError> {
    let b = &config.gcp.buckets;
    let marker_name = names::marker(dt);
    let Some((body, marker_generation)) = gcs.read(&b.raw, &marker_name, None).await? else {
        tracing::info!(%dt, "batch marker not there yet");
        return Ok(None);
    };
    let tables: Vec<&str> = schemas.names().collect();
    let marker = match Marker::parse(&body, dt, &tables) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(%dt, error = %e, "batch marker unusable, batch not checked");
            return Ok(None);
        }
    };
    // One listing per folder of the marker's parts (one per table) and one of the day's staged
    // files, not a request per part: a marker may list 100k files.
    // The listings side by side: each is a round trip of its own.
    let staged_prefix = format!("staging/dt={dt}/");
    let (raw, staged) = tokio::try_join!(
        generations(gcs, &b.raw, marker.files.iter().map(String::as_str)),
        async { Ok::<_, HandleError>(gcs.list(&b.curated, &staged_prefix).await?) },
    )?;
    let mut files = Vec::with_capacity(marker.files.len());
    for name in &marker.files {
        let Some(generation) = raw.get(name) else {
            tracing::info!(%dt, object = %name, "listed file not uploaded yet");
            return Ok(None);
        };
        files.push(ObjectGeneration {
            name: name.clone(),
            generation: *generation,
        });
    }
    let staged: HashSet<String> = staged.into_iter().map(|o| o.name).collect();
    let summary = |f: &ObjectGeneration| names::staged(dt, &f.name, f.generation, "summary.json");
    if let Some(f) = files.iter().find(|f| !staged.contains(&summary(f))) {
        tracing::info!(%dt, object = %f.name, generation = f.generation, "listed file not staged yet");
        return Ok(None);
    }
    Ok(Some(BatchReady {
        schema_version: BATCH_READY_VERSION,
        dt,
        marker_generation,
        files,
        release: false,
        replay: None,
    }))
}

/// Folder listings [`generations`] runs side by side.
const LISTINGS_AT_ONCE: usize = 8;

/// The current generation of the objects in the folders of `names` (one listing per folder,
/// not a request per object), by name; an object absent is not there.
pub async fn generations(
    gcs: &Gcs,
    bucket: &str,
    names: impl Iterator<Item = &str>,
) -> Result<HashMap<String, i64>, HandleError> {
    let folders: BTreeSet<&str> = names
        .filter_map(|n| n.rsplit_once('/').map(|(folder, _)| folder))
        .collect();
    let listings = bounded(
        LISTINGS_AT_ONCE,
        folders.into_iter().map(|folder| async move {
            Ok::<_, HandleError>(gcs.list(bucket, &format!("{folder}/")).await?)
        }),
    )
    .await?;
    Ok(listings
        .into_iter()
        .flatten()
        .map(|o| (o.name, o.generation))
        .collect())
}

/// Runs `futures` with at most `limit` at a time, results in order; the first error wins
/// (what `try_join_all` does, without starting every request at once). The futures are
/// collected first, so the returned future holds no closure (and stays `Send`).
pub fn bounded<T, E, F>(
    limit: usize,
    futures: impl IntoIterator<Item = F>,
) -> impl std::future::Future<Output = Result<Vec<T>, E>>
where
    F: std::future::Future<Output = Result<T, E>>,
{
    let futures: Vec<F> = futures.into_iter().collect();
    stream::iter(futures).buffered(limit.max(1)).try_collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn bounded_keeps_order_and_never_runs_more_than_its_limit() {
        let (running, peak) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let futures = (0..100).map(|i| {
            let (running, peak) = (&running, &peak);
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                if i == 1000 { Err("never") } else { Ok(i) }
            }
        });
        let got = bounded(7, futures).await.unwrap();
        assert_eq!(got, (0..100).collect::<Vec<_>>());
        let peak = peak.load(Ordering::SeqCst);
        assert!((2..=7).contains(&peak), "peak {peak}");
        let failing = (0..10).map(|i| async move { if i == 3 { Err(i) } else { Ok(i) } });
        assert_eq!(bounded(2, failing).await, Err(3));
    }
}
