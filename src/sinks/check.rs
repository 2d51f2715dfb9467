//! `datashare check-sinks`: every sink of every contract checks its connection without
//! delivering (SFTP login and listing of the target folder, an authenticated API health call,
//! SMTP greeting, STARTTLS and AUTH); each failure becomes a `sink.check_failed` alert.
//!
//! [`check_all`] is the reusable core (the worker's tick calls it before a day's deadline);
//! [`run`] is the subcommand: one line per (partner, sink), alerts published to `alerts` when
//! Pub/Sub is configured, exit code non-zero on any failure.

use std::path::PathBuf;

use super::{AnySink, Sink, SinkError, SinkSettings};
use crate::config::Config;
use crate::events::alert::{Alert, Severity};
use crate::products::contract::{self, Contract};

/// Kind of the alert raised by a failed check.
pub const CHECK_FAILED: &str = "sink.check_failed";

/// The result of checking one sink of one partner.
#[derive(Debug)]
pub struct CheckResult {
    /// Partner name.
    pub partner: String,
    /// Sink name (`sftp`, `api`, `email`).
    pub sink: &'static str,
    /// `Ok` or what failed (building the sink from its settings, or the check itself).
    pub outcome: Result<(), SinkError>,
}

impl CheckResult {
    /// One line for the operator: `ouchhungry sftp: ok` or the error (never a secret).
    pub fn line(&self) -> String {
        match &self.outcome {
            Ok(()) => format!("{} {}: ok", self.partner, self.sink),
            Err(e) => format!(
                "{} {}: FAILED ({}, {}): {e}",
                self.partner,
                self.sink,
                e.kind(),
                if e.is_transient() {
                    "transient"
                } else {
                    "permanent"
                }
            ),
        }
    }

    /// The `sink.check_failed` alert of a failed check (`None` when it passed); the fingerprint
    /// is stable per partner and sink, so repeated failures group.
    pub fn alert(&self) -> Option<Alert> {
        let e = self.outcome.as_ref().err()?;
        Some(
            Alert::new(
                Severity::Error,
                CHECK_FAILED,
                (&self.partner, "", ""),
                self.sink,
                format!(
                    "{} sink of {} failed its connection check: {e}",
                    self.sink, self.partner
                ),
            )
            .with("sink", self.sink)
            .with("error_kind", e.kind())
            .with("transient", e.is_transient())
            .with(
                "next",
                "check the partner's server and the sink's settings and secrets, then run \
                 `datashare check-sinks` again",
            ),
        )
    }
}

/// Builds and checks every sink of every contract, in order, one at a time.
pub async fn check_all(contracts: &[Contract], settings: &SinkSettings) -> Vec<CheckResult> {
    let mut results = Vec::new();
    for c in contracts {
        for config in &c.sinks {
            let outcome = match AnySink::build(c, config, settings) {
                Ok(sink) => sink.check().await,
                Err(e) => Err(e),
            };
            if let Err(e) = &outcome {
                tracing::warn!(partner = %c.name, sink = config.name(), error = %e, "sink check failed");
            }
            results.push(CheckResult {
                partner: c.name.clone(),
                sink: config.name(),
                outcome,
            });
        }
    }
    results
}

/// Arguments of `datashare check-sinks`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckSinksArgs {
    /// Configuration file instead of the built-in `config/default.toml`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Checks only this partner.
    #[arg(long)]
    pub partner: Option<String>,
}

/// Runs `datashare check-sinks`; returns false when a check failed.
pub fn run(args: &CheckSinksArgs) -> anyhow::Result<bool> {
    let config = Config::load(args.config.as_deref())?;
    let mut contracts = contract::load_dir(&config.worker.partners_dir)?;
    if let Some(p) = &args.partner {
        contracts.retain(|c| &c.name == p);
        anyhow::ensure!(
            !contracts.is_empty(),
            "no contract named {p:?} in {}",
            config.worker.partners_dir.display()
        );
    }
    let settings = config.sink_settings();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let results = check_all(&contracts, &settings).await;
        for r in &results {
            println!("{}", r.line());
        }
        let alerts: Vec<Alert> = results.iter().filter_map(CheckResult::alert).collect();
        if !alerts.is_empty() {
            publish(&config, &alerts).await;
        }
        Ok(alerts.is_empty())
    })
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
                crate::service::publish_alert(config, &bus, a).await;
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
