//! What the roles do, one file per step of an upload's way to the partner, in order:
//!
//! 1. [`stage`]: per raw object (`extracts-worker`): stage a part, read a marker, publish
//!    `BatchReady` once the batch is complete.
//! 2. [`batch`]: per batch (`batches-worker`): claim, the batch step (dedup, curated, quality
//!    report, guardrails), partner products, delivery requests, done marker.
//! 3. [`deliver`]: each data sink's consumer (`deliveries-<sink>`): download, deliver, receipt.
//! 4. [`notify`]: the sink whose receipt completes the set publishes `notify`; the e-mail sink
//!    sends the partner e-mail once.
//!
//! Beside them: [`schedules`] (monthly builds and the tick: restarts, deadlines),
//! [`release`] (`datashare release`, `datashare replay --date`), [`check`] (`datashare
//! check-sinks`, and each sink role's own checks on ticks), [`status`] (`datashare status`),
//! [`delivered`] (the last delivered version of each product: freshness, e2e latency),
//! [`names`] (where each object lives in the buckets). The transport (pull, push, ack/nack,
//! dead letters, claims) is [`crate::service`].

pub mod batch;
pub mod check;
pub mod deliver;
pub mod delivered;
pub mod names;
pub mod notify;
pub mod powerbi;
pub mod release;
pub mod schedules;
pub mod stage;
pub mod status;

use std::ops::Deref;
use std::sync::Arc;

use crate::clean::Schemas;
use crate::config::{BATCHES_SUBSCRIPTION, Config, EXTRACTS_SUBSCRIPTION, SCHEDULES_SUBSCRIPTION};
use crate::events::Incoming;
use crate::products::contract::Contract;
use crate::service::{Disposition, HandleError, Outcome, Role, RoleContext, dispatch, faults};

/// The worker role: its context (configuration, clients), schemas and contracts.
#[derive(Clone, Debug)]
pub struct Worker {
    /// Name, configuration, clients, owner, temporary folder.
    pub context: RoleContext,
    /// Table schemas.
    pub schemas: Arc<Schemas>,
    /// Partner contracts, their secrets checked at start-up.
    pub contracts: Arc<Vec<Contract>>,
    /// Faults to inject (tests only; empty unless `DATASHARE_FAULTS` is set).
    pub faults: faults::Faults,
}

impl Deref for Worker {
    type Target = RoleContext;
    fn deref(&self) -> &RoleContext {
        &self.context
    }
}

/// The worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Table schemas are unusable.
    #[error("table schemas: {0}")]
    Schemas(String),
    /// A partner contract (or its secret) is unusable.
    #[error(transparent)]
    Contract(#[from] crate::products::contract::ContractError),
    /// A client could not be created.
    #[error(transparent)]
    Client(#[from] crate::gcp::ClientError),
    /// `DATASHARE_FAULTS` is malformed.
    #[error("{0}")]
    Faults(String),
}

impl Worker {
    /// Builds the worker: schemas, contracts (with their secrets), clients.
    pub async fn start(config: Config) -> Result<Worker, StartError> {
        let schemas = Schemas::builtin().map_err(|e| StartError::Schemas(e.to_string()))?;
        crate::clean::guardrails::check_schemas(&config.guardrails, &schemas)
            .map_err(StartError::Schemas)?;
        let faults = faults::Faults::from_env().map_err(StartError::Faults)?;
        let contracts = crate::products::contract::load_dir(&config.worker.partners_dir)?;
        for c in &contracts {
            // Fails now, naming the variable or file, rather than on the first batch.
            c.hmac_secret()?;
        }
        let t = &config.gcp.topics;
        let topics = vec![
            t.batches.clone(),
            t.deliveries.clone(),
            t.alerts.clone(),
            t.schedules.clone(),
            t.updates.clone(),
        ];
        let context = RoleContext::connect(WORKER_ROLE, config, topics).await?;
        tracing::info!(
            owner = %context.owner,
            partners = contracts.len(),
            emulated = context.config.emulators.pubsub.is_some(),
            "worker ready"
        );
        Ok(Worker {
            context,
            schemas: Arc::new(schemas),
            contracts: Arc::new(contracts),
            faults,
        })
    }

    /// Handles one message of a subscription and says whether to ack it.
    pub async fn handle(&self, subscription: &str, msg: &Incoming) -> Outcome {
        dispatch(self, subscription, msg).await
    }
}

impl Role for Worker {
    fn context(&self) -> &RoleContext {
        &self.context
    }

    async fn handle_message(
        &self,
        subscription: &str,
        msg: &Incoming,
    ) -> Result<Disposition, HandleError> {
        match subscription {
            // Boxed: the batch step's future is large, and callers may poll it on a small stack.
            EXTRACTS_SUBSCRIPTION => Box::pin(self.handle_object(msg)).await,
            BATCHES_SUBSCRIPTION => Box::pin(self.handle_batch(msg)).await,
            SCHEDULES_SUBSCRIPTION => Box::pin(self.handle_schedule(msg)).await,
            other => Err(HandleError::Transient(format!(
                "the worker does not consume subscription {other}"
            ))),
        }
    }
}

/// The worker's key in `[gcp.subscriptions]`.
pub const WORKER_ROLE: &str = "worker";
