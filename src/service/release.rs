//! `datashare release --date D`: the team releases a held batch without its failed files, or
//! despite a blocking data-quality guardrail.
//!
//! Publishes `BatchReady` with `release: true` for the batch as it stands (every listed file
//! settled at its current generation); the batch step then builds and delivers the products
//! despite the failed files. Its claim and done marker are the release's own, so the held run
//! does not stop it, and a second release of the same version does nothing.

use chrono::NaiveDate;

use super::HandleError;
use super::objects::ready_batch;
use crate::clean::Schemas;
use crate::config::Config;
use crate::events::BatchReady;
use crate::gcp::{Bus, Gcs};

/// Arguments of `datashare release`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReleaseArgs {
    /// The batch day to release.
    #[arg(long)]
    pub date: NaiveDate,
    /// Configuration file instead of the built-in `config/default.toml`.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
}

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

/// Runs `datashare release`.
pub fn run(args: &ReleaseArgs) -> anyhow::Result<bool> {
    let config = Config::load(args.config.as_deref())?;
    let schemas = Schemas::builtin()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let gcs = Gcs::connect(config.emulators.storage.as_deref()).await?;
        let bus = Bus::connect(
            &config.gcp.project,
            &[config.gcp.topics.batches.as_str()],
            config.emulators.pubsub.as_deref(),
        )
        .await?;
        match release(&gcs, &bus, &config, &schemas, args.date).await? {
            Some((ready, id)) => {
                println!(
                    "released batch {} version {} (message {id})",
                    ready.dt,
                    ready.version()
                );
                Ok(true)
            }
            None => {
                eprintln!(
                    "batch {} is not settled (marker missing, or a listed file not uploaded or staged)",
                    args.date
                );
                Ok(false)
            }
        }
    })
}
