//! Sink connection checks.
//!
//! - `datashare check-sinks`: runs every partner sink's connection check ([`check_all`]), prints
//!   one line per (partner, sink), and publishes each failure to `alerts` as `sink.check_failed`
//!   when Pub/Sub is configured (else logs it).
//! - On ticks (`schedules-<sink>`) within `check_sinks_before_mins` before a day's deadline,
//!   each sink role checks its own sink for its partners ([`Deliver::handle_schedule`]): only
//!   the sink roles hold sink credentials, never the worker, which parses untrusted files.

use super::deliver::Deliver;
use super::schedules::deadline_within;
use crate::config::Config;
use crate::events::alert::Alert;
use crate::events::{Incoming, Schedule};
use crate::products::contract;
use crate::service::{Disposition, HandleError, Verdict, publish_alert};
use crate::sinks::Sink;
use crate::sinks::check::{CheckResult, check_all};

impl Deliver {
    /// A schedule message of a sink role: on a tick shortly before a deadline, checks this
    /// role's sink for each of its partners and alerts `sink.check_failed` per failure; other
    /// kinds are acknowledged.
    pub(super) async fn handle_schedule(&self, msg: &Incoming) -> Result<Disposition, HandleError> {
        let Schedule::Tick { at } = Schedule::parse(msg)? else {
            return Ok(Disposition::Done);
        };
        let w = &self.config.worker;
        let window = chrono::Duration::minutes(i64::from(w.check_sinks_before_mins));
        let Some(dt) = deadline_within(at, w.deadline_local_hour, window) else {
            return Ok(Disposition::Done);
        };
        for r in self.check_own().await {
            tracing::info!(%dt, "{}", r.line());
            if let Some(alert) = r.alert() {
                self.alert(&alert.with("before_deadline_of", dt.to_string()))
                    .await;
            }
        }
        Ok(Disposition::Done)
    }

    /// Checks this role's sink of every partner that has one, in order.
    pub async fn check_own(&self) -> Vec<CheckResult> {
        let mut results = Vec::new();
        for (partner, sink) in &self.sinks {
            let outcome = sink.check().await;
            if let Err(e) = &outcome {
                tracing::warn!(%partner, sink = self.sink, error = %e, "sink check failed");
            }
            results.push(CheckResult {
                partner: partner.clone(),
                sink: self.sink,
                outcome,
            });
        }
        results
    }
}

/// Runs `datashare check-sinks`: one line per (partner, sink); `Failed` when a check failed.
pub async fn run(config: &Config, partner: Option<&str>) -> anyhow::Result<Verdict> {
    let mut contracts = contract::load_dir(&config.worker.partners_dir)?;
    if let Some(p) = partner {
        contracts.retain(|c| c.name == p);
        anyhow::ensure!(
            !contracts.is_empty(),
            "no contract named {p:?} in {}",
            config.worker.partners_dir.display()
        );
    }
    let results = check_all(&contracts, &config.sink_settings()).await;
    for r in &results {
        println!("{}", r.line());
    }
    let alerts: Vec<Alert> = results.iter().filter_map(CheckResult::alert).collect();
    if !alerts.is_empty() {
        publish(config, &alerts).await;
    }
    Ok(Verdict::of(alerts.is_empty()))
}

/// Publishes the alerts to `alerts` when Pub/Sub is configured (an emulator, or a real project
/// with credentials); otherwise they are only logged.
async fn publish(config: &Config, alerts: &[Alert]) {
    let emulator = config.emulators.pubsub.as_deref();
    let project_set = ["DATASHARE_GCP_PROJECT", "GOOGLE_CLOUD_PROJECT"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    if emulator.is_none() && !project_set {
        for a in alerts {
            a.log();
        }
        eprintln!("Pub/Sub is not configured: alerts logged, not published");
        return;
    }
    let topics = [config.gcp.topics.alerts.as_str()];
    match crate::gcp::Bus::connect(&config.gcp.project, &topics, emulator).await {
        Ok(bus) => {
            for a in alerts {
                publish_alert(config, &bus, a).await;
            }
        }
        Err(e) => {
            for a in alerts {
                a.log();
            }
            eprintln!("cannot connect to Pub/Sub, alerts logged only: {e}");
        }
    }
}
