//! The transport, shared by every role: a [`Role`] handles the messages of its subscriptions
//! (`[gcp.subscriptions.<role>]`) behind two front ends, [`pull`] (the streaming subscriber,
//! leases extended) and [`push`] (the HTTP endpoint Pub/Sub calls on Cloud Run), run by
//! [`serve`] until SIGTERM; [`dispatch`] is the one mapping of a handler's result to ack, nack
//! or dead letter. [`claim`]: claims with leases in the ops bucket; [`faults`]: injected faults
//! (tests only). What the roles do is [`crate::pipeline`] and [`crate::alerting`].
//!
//! Errors decide what happens: transient → nack (Pub/Sub retries with backoff); permanent →
//! one dead letter with `error_kind`, then ack.

pub mod claim;
pub mod faults;
pub mod memory;
pub mod oidc;
pub mod pull;
pub mod push;
pub mod serve;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tracing::Instrument;

use crate::config::Config;
use crate::events::{Alert, DeadLetter, ErrorKind, Incoming, Malformed};
use crate::gcp::{Bus, ClientError, Gcs, GcsError, PublishError};

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

/// What every role holds: its name, the validated configuration, its clients, who this
/// instance is and where its temporary files go.
#[derive(Clone, Debug)]
pub struct RoleContext {
    /// The role's key in `[gcp.subscriptions]` (`worker`, `sftp`, `api`, `email`, `alert`).
    pub role: &'static str,
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Cloud Storage.
    pub gcs: Gcs,
    /// Publishers: the role's topics and its subscriptions' dead-letter topics.
    pub bus: Bus,
    /// Who this instance is, written into claims.
    pub owner: String,
    /// Where temporary files go.
    pub tmp_root: PathBuf,
}

impl RoleContext {
    /// Connects role `role`'s clients: Cloud Storage, and publishers to `topics` plus the
    /// dead-letter topics of the role's subscriptions.
    pub async fn connect(
        role: &'static str,
        config: Config,
        topics: Vec<String>,
    ) -> Result<RoleContext, ClientError> {
        let gcs = Gcs::connect(config.emulators.storage.as_deref()).await?;
        let mut all: Vec<&str> = topics.iter().map(String::as_str).collect();
        all.extend(config.role_dead_letter_topics(role));
        let bus = Bus::connect(
            &config.gcp.project,
            &all,
            config.emulators.pubsub.as_deref(),
        )
        .await?;
        Ok(RoleContext {
            role,
            config: Arc::new(config),
            gcs,
            bus,
            owner: instance_owner(),
            tmp_root: std::env::temp_dir(),
        })
    }

    /// A fresh temporary folder for one message's files.
    pub fn tempdir(&self) -> Result<tempfile::TempDir, HandleError> {
        tempfile::Builder::new()
            .prefix(&format!("datashare-{}-", self.role))
            .tempdir_in(&self.tmp_root)
            .map_err(|e| HandleError::local("temporary folder", e))
    }

    /// Publishes an alert to `alerts`.
    pub async fn alert(&self, alert: &Alert) {
        publish_alert(&self.config, &self.bus, alert).await;
    }

    /// Whether `subscription` is one of the role's.
    pub fn consumes(&self, subscription: &str) -> bool {
        self.config
            .role_subscriptions(self.role)
            .iter()
            .any(|(s, _)| *s == subscription)
    }
}

/// A service role: the messages of its subscriptions in, a [`Disposition`] or an error out.
pub trait Role: Send + Sync + 'static {
    /// Its name, configuration and clients.
    fn context(&self) -> &RoleContext;
    /// Handles one message of one of its subscriptions.
    fn handle_message(
        &self,
        subscription: &str,
        msg: &Incoming,
    ) -> impl Future<Output = Result<Disposition, HandleError>> + Send;
}

/// Handles a message and decides: transient error → nack; permanent → one dead letter, ack.
pub async fn dispatch<R: Role>(role: &R, subscription: &str, msg: &Incoming) -> Outcome {
    let ctx = role.context();
    let span = tracing::info_span!(
        "message",
        otel.name = format!("handle {subscription}"),
        otel.kind = "consumer",
        role = ctx.role,
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
                dead_letter(&ctx.config, &ctx.bus, subscription, msg, kind, error).await
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
            crate::telemetry::metrics::dead_letter(subscription, letter.kind.as_str());
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

/// What a one-shot command that ran says about its work (the exit code: see [`crate::cli`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Everything asked was done.
    Done,
    /// It ran, and something it handled failed (reported on the way).
    Failed,
}

impl Verdict {
    /// `Done` when `ok`, else `Failed`.
    pub fn of(ok: bool) -> Verdict {
        if ok { Verdict::Done } else { Verdict::Failed }
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

/// Runs CPU-heavy work off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, HandleError> {
    // The work runs in the caller's span (its child spans and logs stay in the trace).
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let out = span.in_scope(f);
        memory::release_free();
        out
    })
    .await
    .map_err(|e| HandleError::local(what, e))
}
