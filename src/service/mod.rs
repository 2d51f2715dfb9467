//! The service roles and their shared machinery: a [`Role`] handles the messages of its
//! subscriptions (`[gcp.subscriptions.<role>]`), behind two front ends (pull and push), with one
//! mapping of errors to ack, nack or dead letter ([`dispatch`]).
//!
//! The worker role (`datashare worker`):
//! - [`objects`]: per raw object (`extracts-worker`): stage a part, read a marker, and publish
//!   `BatchReady` once the batch is complete.
//! - [`batch`]: per batch (`batches-worker`): claim, batch step, partner products, delivery
//!   requests, done marker.
//! - [`claim`]: claims with leases in the ops bucket.
//! - [`deliver`]: `datashare deliver --sink <sftp|api|email>`, each sink's consumer (delivery
//!   requests in, receipts and one `notify` out; `notify` in, the partner e-mail out).
//! - [`pull`] and [`push`]: the streaming subscriber and the HTTP push endpoint; both map a
//!   handler's [`Outcome`] to ack or nack.
//! - [`command`]: `datashare worker` (and [`command::serve`], any role's main loop);
//!   [`release`]: `datashare release`.
//!
//! Errors decide what happens: transient → nack (Pub/Sub retries with backoff); permanent →
//! one dead letter with `error_kind`, then ack.

pub mod batch;
pub mod claim;
pub mod command;
pub mod deliver;
pub mod faults;
pub mod names;
pub mod objects;
pub mod pull;
pub mod push;
pub mod release;
pub mod schedules;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tracing::Instrument;

use crate::clean::Schemas;
use crate::config::{BATCHES_SUBSCRIPTION, Config, EXTRACTS_SUBSCRIPTION, SCHEDULES_SUBSCRIPTION};
use crate::events::{Alert, DeadLetter, ErrorKind, Incoming, Malformed};
use crate::gcp::{Bus, Gcs, GcsError, PublishError};
use crate::products::contract::Contract;

/// What the front end does with a message once the handler returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done (or dead-lettered): acknowledge.
    Ack,
    /// Failed transiently: let Pub/Sub deliver it again.
    Nack,
}

/// Handling a message failed.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// Cloud Storage failed.
    #[error(transparent)]
    Gcs(#[from] GcsError),
    /// Publishing failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// Something to try again later (a held claim, a part not staged yet, a local i/o error).
    #[error("{0}")]
    Transient(String),
    /// The message can never be handled.
    #[error("{kind}: {message}")]
    Permanent {
        /// The dead letter's `error_kind`.
        kind: ErrorKind,
        /// One line.
        message: String,
    },
}

impl HandleError {
    /// Decides nack (true) versus dead letter (false).
    pub fn is_transient(&self) -> bool {
        match self {
            HandleError::Gcs(e) => e.transient,
            HandleError::Publish(e) => e.transient,
            HandleError::Transient(_) => true,
            HandleError::Permanent { .. } => false,
        }
    }

    /// A local problem (temporary files, a task that panicked): transient.
    pub fn local(what: &str, e: impl std::fmt::Display) -> HandleError {
        HandleError::Transient(format!("{what}: {e}"))
    }
}

impl From<Malformed> for HandleError {
    fn from(m: Malformed) -> Self {
        HandleError::Permanent {
            kind: ErrorKind::MalformedMessage,
            message: m.0,
        }
    }
}

/// How a handler finished without a transient error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Done: acknowledge.
    Done,
    /// The work that could be done is done, and the message is one failure to report once.
    DeadLetter {
        /// The kind.
        kind: ErrorKind,
        /// One line.
        error: String,
    },
}

/// A service role: the messages of its subscriptions in, a [`Disposition`] or an error out.
pub trait Role: Send + Sync + 'static {
    /// Its key in `[gcp.subscriptions]` (`worker`, `sftp`, `api`, `email`, `alert`).
    fn role(&self) -> &str;
    /// The validated configuration.
    fn config(&self) -> &Config;
    /// Publishers (must include the dead-letter topics of the role's subscriptions).
    fn bus(&self) -> &Bus;
    /// Handles one message of one of its subscriptions.
    fn handle_message(
        &self,
        subscription: &str,
        msg: &Incoming,
    ) -> impl Future<Output = Result<Disposition, HandleError>> + Send;
}

/// Handles a message and decides: transient error → nack; permanent → one dead letter, ack.
pub async fn dispatch<R: Role>(role: &R, subscription: &str, msg: &Incoming) -> Outcome {
    let span = tracing::info_span!(
        "message",
        role = role.role(),
        subscription,
        message_id = %msg.id,
        attempt = msg.delivery_attempt.unwrap_or(0),
        trace_id = tracing::field::Empty,
    );
    crate::telemetry::continue_trace(&span, &msg.attributes);
    async {
        let disposition = match role.handle_message(subscription, msg).await {
            Ok(d) => d,
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "transient failure, message nacked");
                return Outcome::Nack;
            }
            Err(HandleError::Permanent { kind, message }) => Disposition::DeadLetter {
                kind,
                error: message,
            },
            Err(e) => Disposition::DeadLetter {
                kind: ErrorKind::MalformedMessage,
                error: e.to_string(),
            },
        };
        match disposition {
            Disposition::Done => Outcome::Ack,
            Disposition::DeadLetter { kind, error } => {
                dead_letter(role.config(), role.bus(), subscription, msg, kind, error).await
            }
        }
    }
    .instrument(span)
    .await
}

/// Publishes one dead letter, then acks; nacks if the dead letter could not be published.
pub async fn dead_letter(
    cfg: &Config,
    bus: &Bus,
    subscription: &str,
    msg: &Incoming,
    kind: ErrorKind,
    error: String,
) -> Outcome {
    let Some(topic) = cfg.gcp.dead_letter_topics.get(subscription) else {
        tracing::error!(kind = %kind, error = %error, "no dead-letter topic; message acked");
        return Outcome::Ack;
    };
    let letter = DeadLetter {
        kind,
        error,
        source_subscription: subscription.to_string(),
        source_topic: cfg
            .source_topic(subscription)
            .unwrap_or_default()
            .to_string(),
    };
    match bus.publish(topic, letter.message(msg)).await {
        Ok(id) => {
            tracing::warn!(
                kind = %letter.kind,
                error = %letter.error,
                dead_letter_id = %id,
                "permanent failure, dead-lettered"
            );
            Outcome::Ack
        }
        Err(e) => {
            tracing::warn!(error = %e, "dead letter not published, message nacked");
            Outcome::Nack
        }
    }
}

/// Publishes an alert to `alerts` (and logs it); a failure to publish is logged, never fatal:
/// the condition that raised it is raised again on the next attempt or tick.
pub async fn publish_alert(cfg: &Config, bus: &Bus, alert: &Alert) {
    alert.log();
    if let Err(e) = bus
        .publish(&cfg.gcp.topics.alerts, alert.to_message())
        .await
    {
        tracing::error!(error = %e, fingerprint = %alert.fingerprint, "alert not published");
    }
}

/// A name for this instance, written into claims: revision or host, process id, random.
pub fn instance_owner() -> String {
    format!(
        "{}:{}:{:08x}",
        std::env::var("K_REVISION")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "local".into()),
        std::process::id(),
        rand::random::<u32>()
    )
}

/// Everything the handlers share: configuration, clients, schemas, contracts.
#[derive(Clone, Debug)]
pub struct Worker {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Cloud Storage.
    pub gcs: Gcs,
    /// Publishers.
    pub bus: Bus,
    /// Table schemas.
    pub schemas: Arc<Schemas>,
    /// Partner contracts, their secrets checked at start-up.
    pub contracts: Arc<Vec<Contract>>,
    /// Who this instance is, written into claims.
    pub owner: String,
    /// Where temporary files go.
    pub tmp_root: PathBuf,
    /// Faults to inject (tests only; empty unless `DATASHARE_FAULTS` is set).
    pub faults: faults::Faults,
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
        config
            .guardrails
            .check_schemas(&schemas)
            .map_err(StartError::Schemas)?;
        let faults = faults::Faults::from_env().map_err(StartError::Faults)?;
        let contracts = crate::products::contract::load_dir(&config.worker.partners_dir)?;
        for c in &contracts {
            // Fails now, naming the variable or file, rather than on the first batch.
            c.hmac_secret()?;
        }
        let gcs = Gcs::connect(config.emulators.storage.as_deref()).await?;
        let g = &config.gcp;
        let mut topics: Vec<&str> = vec![
            &g.topics.batches,
            &g.topics.deliveries,
            &g.topics.alerts,
            &g.topics.schedules,
        ];
        topics.extend(config.role_dead_letter_topics(WORKER_ROLE));
        let bus = Bus::connect(&g.project, &topics, config.emulators.pubsub.as_deref()).await?;
        let owner = instance_owner();
        tracing::info!(
            owner = %owner,
            partners = contracts.len(),
            emulated = config.emulators.pubsub.is_some(),
            "worker ready"
        );
        Ok(Worker {
            config: Arc::new(config),
            gcs,
            bus,
            schemas: Arc::new(schemas),
            contracts: Arc::new(contracts),
            owner,
            tmp_root: std::env::temp_dir(),
            faults,
        })
    }

    /// Handles one message of a subscription and says whether to ack it.
    pub async fn handle(&self, subscription: &str, msg: &Incoming) -> Outcome {
        dispatch(self, subscription, msg).await
    }

    /// Publishes an alert to `alerts`.
    pub async fn alert(&self, alert: &Alert) {
        publish_alert(&self.config, &self.bus, alert).await;
    }

    /// A fresh temporary folder for one message's files.
    pub(crate) fn tempdir(&self) -> Result<tempfile::TempDir, HandleError> {
        tempfile::Builder::new()
            .prefix("datashare-worker-")
            .tempdir_in(&self.tmp_root)
            .map_err(|e| HandleError::local("temporary folder", e))
    }
}

impl Role for Worker {
    fn role(&self) -> &str {
        WORKER_ROLE
    }

    fn config(&self) -> &Config {
        &self.config
    }

    fn bus(&self) -> &Bus {
        &self.bus
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

/// Runs CPU-heavy work off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, HandleError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| HandleError::local(what, e))
}
