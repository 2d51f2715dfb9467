//! `datashare release --date D`: the team releases a held batch without its failed files, or
//! despite a blocking data-quality guardrail.
//!
//! Publishes `BatchReady` with `release: true` for the batch as it stands (every listed file
//! settled at its current generation); the batch step then builds and delivers the products
//! despite the failed files. Its claim and done marker are the release's own, so the held run
//! does not stop it, and a second release of the same version does nothing.

use chrono::NaiveDate;

use super::stage::ready_batch;
use crate::clean::Schemas;
use crate::config::Config;
use crate::events::BatchReady;
use crate::gcp::{Bus, Gcs};
use crate::service::HandleError;
use crate::service::Verdict;

/// Publishes the release of batch `dt`; `None` when the batch is not settled yet.
pub async fn release(
    gcs: &Gcs,
    bus: &Bus,
    config: &Config,
    schemas: &Schemas,
    dt: NaiveDate,
) -> Result<Option<(BatchReady, String)>, HandleError> {
    let Some(mut ready) = ready_batch(gcs, config, schemas, dt).await? else {
        return Ok(None);
    };
    ready.release = true;
    let id = bus
        .publish(&config.gcp.topics.batches, ready.to_message())
        .await?;
    tracing::warn!(%dt, version = %ready.version(), message_id = %id, "batch release requested");
    Ok(Some((ready, id)))
}

/// Publishes a replay of each settled batch from `from` to `to` (`datashare replay --date`):
/// the step runs again under its own claim; unchanged products are not delivered again.
/// Returns the days replayed and those skipped (not settled).
pub async fn replay_batches(
    gcs: &Gcs,
    bus: &Bus,
    config: &Config,
    schemas: &Schemas,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<(Vec<(NaiveDate, String)>, Vec<NaiveDate>), HandleError> {
    let nonce = format!(
        "{}-{:06x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S"),
        rand::random::<u32>() & 0xff_ffff
    );
    let (mut done, mut skipped) = (Vec::new(), Vec::new());
    for dt in from.iter_days().take_while(|d| *d <= to) {
        let Some(mut ready) = ready_batch(gcs, config, schemas, dt).await? else {
            skipped.push(dt);
            continue;
        };
        ready.replay = Some(nonce.clone());
        let id = bus
            .publish(&config.gcp.topics.batches, ready.to_message())
            .await?;
        tracing::info!(%dt, version = %ready.version(), message_id = %id, "batch replay requested");
        done.push((dt, id));
    }
    Ok((done, skipped))
}

/// Connects what the one-shot commands that publish batch steps need: the schemas, storage
/// and a `batches` publisher.
async fn batch_clients(config: &Config) -> anyhow::Result<(Gcs, Bus, Schemas)> {
    let schemas = Schemas::builtin()?;
    let gcs = Gcs::connect(config.emulators.storage.as_deref()).await?;
    let bus = Bus::connect(
        &config.gcp.project,
        &[config.gcp.topics.batches.as_str()],
        config.emulators.pubsub.as_deref(),
    )
    .await?;
    Ok((gcs, bus, schemas))
}

/// Runs `datashare replay --date D` or `--from D1 --to D2`.
pub async fn run_replay(
    config: &Config,
    from: NaiveDate,
    to: NaiveDate,
) -> anyhow::Result<Verdict> {
    let (gcs, bus, schemas) = batch_clients(config).await?;
    let (done, skipped) = replay_batches(&gcs, &bus, config, &schemas, from, to).await?;
    for (dt, id) in &done {
        println!("replay of batch {dt} requested (message {id})");
    }
    for dt in &skipped {
        eprintln!(
            "batch {dt} is not settled (marker missing, or a listed file not uploaded or staged): skipped"
        );
    }
    Ok(Verdict::of(skipped.is_empty()))
}

/// Runs `datashare release --date D`.
pub async fn run_release(config: &Config, dt: NaiveDate) -> anyhow::Result<Verdict> {
    let (gcs, bus, schemas) = batch_clients(config).await?;
    match release(&gcs, &bus, config, &schemas, dt).await? {
        Some((ready, id)) => {
            println!(
                "released batch {} version {} (message {id})",
                ready.dt,
                ready.version()
            );
            Ok(Verdict::Done)
        }
        None => {
            eprintln!(
                "batch {dt} is not settled (marker missing, or a listed file not uploaded or staged)"
            );
            Ok(Verdict::Failed)
        }
    }
}
