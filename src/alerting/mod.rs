//! The alerting consumer (`datashare alert`): alerts and dead letters in, e-mails to the data
//! team out, grouped per fingerprint.
//!
//! - [`dead_letters`]: archive every dead letter (`deadletters/<source subscription>/<id>.json`,
//!   create-only, before the ack) and turn it into an alert with a stable fingerprint.
//! - [`state`]: one state object per fingerprint; first alert e-mailed at once, repeats counted.
//! - [`mail`]: the e-mails (what, where, since when, how often, what to do), sent with lettre.
//! - [`runbook`]: what to do next, one line per kind, and the commands to run.
//! - [`budget`]: Cloud Billing budget notifications: the first crossing of each threshold.
//! - [`replay`]: `datashare replay --dead-letters`. Its settings are [`crate::config::alerting`].

pub mod budget;
pub mod dead_letters;
pub mod mail;
pub mod replay;
pub mod runbook;
pub mod state;

use std::ops::Deref;

use chrono::Utc;

use crate::config::Config;
use crate::events::{Alert, Incoming, Schedule};
use crate::service::{Disposition, HandleError, Role, RoleContext};
use mail::{Mailer, digest_mail, first_mail, resolved_mail};
use state::{Recorded, State};
use tracing::Instrument;

/// The alerting role's key in `[gcp.subscriptions]`.
pub const ALERT_ROLE: &str = "alert";
/// The subscription to `alerts`.
pub const ALERTS_SUBSCRIPTION: &str = "alerts-alert";
/// The subscription to `schedules`.
pub const SCHEDULES_SUBSCRIPTION: &str = "schedules-alert";

/// Kinds of alert raised at every tick while a condition lasts, and closed by one "resolved"
/// e-mail when the tick sees the day's batch done (a done marker under `claims/batch/dt=D/`).
pub const CLEARED_BY_A_DONE_BATCH: [&str; 2] = ["extract.missing", "batch.stalled"];

/// The alerting consumer.
#[derive(Debug)]
pub struct Alerting {
    /// Name, configuration, clients (archive and state in ops; its dead-letter topics).
    pub context: RoleContext,
    mailer: Mailer,
}

impl Deref for Alerting {
    type Target = RoleContext;
    fn deref(&self) -> &RoleContext {
        &self.context
    }
}

/// The alerting consumer could not start.
#[derive(Debug, thiserror::Error)]
pub enum AlertStartError {
    /// No SMTP relay configured.
    #[error("alerting: no SMTP relay (set DATASHARE_SMTP_HOST, [smtp] or [alerting.smtp])")]
    NoRelay,
    /// The mailer cannot be built.
    #[error(transparent)]
    Mail(#[from] mail::MailError),
    /// A client could not be created.
    #[error(transparent)]
    Client(#[from] crate::gcp::ClientError),
}

impl Alerting {
    /// Builds the consumer: mailer (password read now), storage and publishers.
    pub async fn start(config: Config) -> Result<Alerting, AlertStartError> {
        let a = &config.alerting;
        let smtp = a
            .smtp
            .as_ref()
            .or(config.smtp.as_ref())
            .ok_or(AlertStartError::NoRelay)?;
        let mailer = Mailer::new(smtp, &a.from, &a.recipients)?;
        tracing::info!(
            recipients = a.recipients.len(),
            window_secs = a.window_secs,
            "alerting ready"
        );
        let context = RoleContext::connect(ALERT_ROLE, config, Vec::new()).await?;
        Ok(Alerting { context, mailer })
    }

    fn ops(&self) -> &str {
        &self.config.gcp.buckets.ops
    }

    /// Records an alert in its fingerprint's state and e-mails it when it is the first.
    pub async fn notify(&self, alert: &Alert, message_id: &str) -> Result<(), HandleError> {
        let now = Utc::now();
        let window = self.config.alerting.window_secs;
        let decided = state::update(&self.gcs, self.ops(), &alert.fingerprint, |current| {
            let mut s = current.unwrap_or_else(|| State::new(alert, now));
            let r = s.record(alert, message_id, now, window);
            if r == Recorded::Duplicate {
                return None;
            }
            Some((s.clone(), (r, s)))
        })
        .await?;
        let s = match decided {
            Some((Recorded::MailNow, s)) => s,
            Some((Recorded::Related, _)) => {
                tracing::info!(fingerprint = %alert.fingerprint, kind = %alert.kind, "alert about a failure already reported, recorded");
                return Ok(());
            }
            _ => {
                tracing::info!(fingerprint = %alert.fingerprint, kind = %alert.kind, "alert counted");
                return Ok(());
            }
        };
        let Some(sending) = s.first.clone() else {
            return Ok(());
        };
        self.mailer
            .send(&first_mail(&s, &sending, window))
            .await
            .map_err(|e| HandleError::Transient(e.to_string()))?;
        tracing::info!(fingerprint = %alert.fingerprint, kind = %alert.kind, "alert e-mailed");
        let severity = format!("{:?}", alert.severity).to_ascii_lowercase();
        crate::telemetry::metrics::alert_sent(&alert.kind, &severity);
        state::update(&self.gcs, self.ops(), &alert.fingerprint, |current| {
            let mut s = current?;
            s.first_sent(message_id);
            Some((s, ()))
        })
        .await?;
        Ok(())
    }

    /// At a tick: one "resolved" e-mail per open condition that cleared, and one digest per
    /// fingerprint with pending repeats whose window since its last e-mail has passed.
    pub async fn tick(&self, tick_id: &str) -> Result<usize, HandleError> {
        let now = Utc::now();
        let objects = self.gcs.list(self.ops(), "alerts/state/").await?;
        let mut sent = 0;
        let mut failed = None;
        for o in objects {
            let Some(fp) = o
                .name
                .strip_prefix("alerts/state/")
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            match self.tick_one(tick_id, fp, now).await {
                Ok(true) => sent += 1,
                Ok(false) => {}
                // The others are still tried; the tick is retried for this one.
                Err(e) => {
                    tracing::warn!(fingerprint = fp, error = %e, "tick e-mail not sent");
                    failed = Some(e);
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(sent),
        }
    }

    /// One fingerprint at a tick: its "resolved" e-mail or its digest; true when one was sent.
    async fn tick_one(
        &self,
        tick_id: &str,
        fp: &str,
        now: chrono::DateTime<Utc>,
    ) -> Result<bool, HandleError> {
        let window = self.config.alerting.window_secs;
        let Some((bytes, _)) = self
            .gcs
            .read(self.ops(), &state::state_object(fp), None)
            .await?
        else {
            return Ok(false);
        };
        let Ok(current) = serde_json::from_slice::<State>(&bytes) else {
            return Ok(false);
        };
        let resolving =
            current.resolving.is_some() || (current.is_open() && self.cleared(&current).await?);
        if resolving {
            let taken = state::update(&self.gcs, self.ops(), fp, |current| {
                let mut s = current?;
                let r = s.take_resolved(tick_id, now)?;
                Some((s.clone(), (s, r)))
            })
            .await?;
            let Some((s, r)) = taken else {
                return Ok(false);
            };
            self.mailer
                .send(&resolved_mail(&s, &r))
                .await
                .map_err(|e| HandleError::Transient(e.to_string()))?;
            tracing::info!(fingerprint = fp, kind = %s.alert.kind, "resolved e-mailed");
            state::update(&self.gcs, self.ops(), fp, |current| {
                let mut s = current?;
                s.resolved_sent(tick_id);
                Some((s, ()))
            })
            .await?;
            return Ok(true);
        }
        let taken = state::update(&self.gcs, self.ops(), fp, |current| {
            let mut s = current?;
            let d = s.take_digest(tick_id, now, window)?;
            Some((s.clone(), (s, d)))
        })
        .await?;
        let Some((s, d)) = taken else {
            return Ok(false);
        };
        self.mailer
            .send(&digest_mail(&s, &d))
            .await
            .map_err(|e| HandleError::Transient(e.to_string()))?;
        tracing::info!(fingerprint = fp, repeats = d.count, "digest e-mailed");
        state::update(&self.gcs, self.ops(), fp, |current| {
            let mut s = current?;
            s.digest_sent(tick_id);
            Some((s, ()))
        })
        .await?;
        Ok(true)
    }

    /// Whether the condition of an open alert has cleared: for the kinds of
    /// [`CLEARED_BY_A_DONE_BATCH`], its day's batch step has finished (any version).
    pub async fn cleared(&self, s: &State) -> Result<bool, HandleError> {
        if !CLEARED_BY_A_DONE_BATCH.contains(&s.alert.kind.as_str()) {
            return Ok(false);
        }
        let Ok(dt) = chrono::NaiveDate::parse_from_str(&s.alert.period, "%Y-%m-%d") else {
            return Ok(false);
        };
        let prefix = format!("claims/batch/dt={dt}/");
        Ok(self
            .gcs
            .list(self.ops(), &prefix)
            .await?
            .iter()
            .any(|o| o.name.ends_with(".done.json")))
    }

    /// A budget notification: each threshold it says is crossed is e-mailed once per cost
    /// interval; copies send nothing.
    pub async fn budget(&self, msg: &Incoming) -> Result<(), HandleError> {
        let m = budget::BudgetMessage::parse(msg)?;
        let crossings = m.crossings();
        if crossings.is_empty() {
            tracing::info!(budget_id = %m.budget_id, "budget update without a threshold crossed");
        }
        for c in crossings {
            let alert = m.alert(c);
            let name = budget::mark_object(&alert.fingerprint);
            let now = Utc::now();
            let send = state::update_object(&self.gcs, self.ops(), &name, |current| {
                let (mark, send) = budget::Mark::record(current, &alert, &msg.id, now);
                Some((mark, send))
            })
            .await?;
            if send != Some(true) {
                tracing::info!(fingerprint = %alert.fingerprint, "budget notification already e-mailed, counted");
                continue;
            }
            let mut s = State::new(&alert, now);
            s.total = 1;
            self.mailer
                .send(&mail::budget_mail(&s, now))
                .await
                .map_err(|e| HandleError::Transient(e.to_string()))?;
            tracing::info!(fingerprint = %alert.fingerprint, "budget threshold e-mailed");
            state::update_object(
                &self.gcs,
                self.ops(),
                &name,
                |current: Option<budget::Mark>| {
                    let mut mark = current?;
                    mark.sent(&msg.id, Utc::now());
                    Some((mark, ()))
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Archives a dead letter (create-only), then notifies its alert.
    pub async fn dead_letter(&self, subscription: &str, msg: &Incoming) -> Result<(), HandleError> {
        let letter = dead_letters::Letter::read(&self.config, subscription, msg);
        let name = dead_letters::archive_object(&letter.source_subscription, &msg.id);
        let record = letter.archived(subscription, msg, Utc::now());
        let body = serde_json::to_vec_pretty(&record).unwrap_or_default();
        match self.gcs.write(self.ops(), &name, body, Some(0)).await {
            Ok(_) => {}
            Err(e) if e.is_precondition_failed() => {
                tracing::info!(archive = %name, "dead letter already archived (redelivery)");
            }
            Err(e) => return Err(e.into()),
        }
        tracing::warn!(
            archive = %name,
            kind = %letter.kind,
            source_subscription = %letter.source_subscription,
            "dead letter archived"
        );
        let alert = letter.alert(&format!("gs://{}/{name}", self.ops()));
        self.notify(&alert, &msg.id).await
    }

    fn is_dead_letter_subscription(&self, subscription: &str) -> bool {
        self.config
            .source_topic(subscription)
            .is_some_and(|t| self.config.gcp.dead_letter_topics.values().any(|d| d == t))
    }
}

impl Role for Alerting {
    fn context(&self) -> &RoleContext {
        &self.context
    }

    async fn handle_message(
        &self,
        subscription: &str,
        msg: &Incoming,
    ) -> Result<Disposition, HandleError> {
        match subscription {
            ALERTS_SUBSCRIPTION => {
                let mut alert = Alert::parse(msg)?;
                if let Some(t) = crate::telemetry::trace_id(&msg.attributes) {
                    alert = alert.with("trace_id", t);
                }
                let span = tracing::info_span!(
                    "alert",
                    otel.name = format!("alert {}", alert.kind),
                    kind = %alert.kind
                );
                self.notify(&alert, &msg.id).instrument(span).await?;
            }
            budget::BUDGETS_SUBSCRIPTION => self.budget(msg).await?,
            SCHEDULES_SUBSCRIPTION => match Schedule::parse(msg)? {
                Schedule::Tick { at } => {
                    let sent = self.tick(&msg.id).await?;
                    tracing::info!(%at, sent, "tick handled");
                }
                other => tracing::info!(schedule = ?other, "schedule not for the alerting role"),
            },
            s if self.is_dead_letter_subscription(s) => {
                // A dead letter is the end of the line: it is retried until archived, never
                // dead-lettered again (its subscription has nowhere to send it).
                self.dead_letter(s, msg)
                    .await
                    .map_err(|e| HandleError::Transient(e.to_string()))?
            }
            other => {
                return Err(HandleError::Transient(format!(
                    "the alerting role does not consume subscription {other}"
                )));
            }
        }
        Ok(Disposition::Done)
    }
}
