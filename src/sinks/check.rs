//! Connection checks: every sink of every contract checks its connection without delivering
//! (SFTP login and listing of the target folder, an authenticated API health call, SMTP
//! greeting, STARTTLS and AUTH); each failure becomes a `sink.check_failed` alert.
//!
//! [`check_all`] is the core of `datashare check-sinks` ([`crate::pipeline::check`]); on ticks
//! before a deadline each sink role checks only its own sink (the worker holds no sink secret).

use super::{AnySink, Sink, SinkError};
use crate::config::sinks::SinkSettings;
use crate::events::alert::{Alert, Severity};
use crate::products::contract::Contract;

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
                    "o sink {} de {} falhou na verificação de conexão: {e}",
                    self.sink, self.partner
                ),
            )
            .with("sink", self.sink)
            .with("error_kind", e.kind())
            .with("transient", e.is_transient())
            .with(
                "next",
                "verifique o servidor do parceiro e as configurações e segredos do sink, depois \
                 rode `datashare check-sinks` de novo",
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
