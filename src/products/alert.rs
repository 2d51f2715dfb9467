//! Alerts raised by the product builders (the alert model of events.md).
//!
//! Until the alerting consumer lands, an alert is logged with `tracing` and carried in the
//! builder's error; its JSON is the message the `alerts` topic will receive.

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::schema::hex;

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Data was held or refused; someone must act.
    Critical,
    /// Something failed and will be retried or needs a look.
    Error,
    /// Worth knowing, nothing held.
    Warning,
}

/// An alert for the data team.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// How urgent.
    pub severity: Severity,
    /// What kind (`privacy.gate`, `reconciliation`, ...).
    pub kind: String,
    /// One line.
    pub summary: String,
    /// Where and what, never a personal value.
    pub details: BTreeMap<String, serde_json::Value>,
    /// The partner concerned.
    pub partner: String,
    /// The product concerned (`daily`, `monthly`).
    pub product: String,
    /// The period concerned (`YYYY-MM-DD` or `YYYY-MM`).
    pub period: String,
    /// Groups identical alerts: stable across runs.
    pub fingerprint: String,
}

impl Alert {
    /// Creates an alert whose fingerprint hashes the kind, partner, product, period and `scope`.
    pub fn new(
        severity: Severity,
        kind: &str,
        (partner, product, period): (&str, &str, &str),
        scope: &str,
        summary: String,
    ) -> Self {
        let fingerprint = hex(&Sha256::digest(
            format!("{kind}|{partner}|{product}|{period}|{scope}").as_bytes(),
        ))[..32]
            .to_string();
        Self {
            severity,
            kind: kind.to_string(),
            summary,
            details: BTreeMap::new(),
            partner: partner.to_string(),
            product: product.to_string(),
            period: period.to_string(),
            fingerprint,
        }
    }

    /// Adds a detail.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.details.insert(key.to_string(), value.into());
        self
    }

    /// Logs the alert (the stand-in for publishing it to `alerts`).
    pub fn log(&self) {
        let json = serde_json::to_string(self).unwrap_or_default();
        tracing::error!(
            kind = %self.kind,
            partner = %self.partner,
            product = %self.product,
            period = %self.period,
            fingerprint = %self.fingerprint,
            alert = %json,
            "{}",
            self.summary
        );
    }
}
