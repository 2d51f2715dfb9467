//! Alerts (topic `alerts`): what is not a failed message (guardrails, held batches, missing
//! extracts, failed sink checks, budgets). Raised by the worker and the sinks, published to
//! `alerts`, e-mailed to the data team by the alerting consumer (`datashare alert`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Incoming, Malformed, Outgoing};

/// Version of the alert message body.
pub const ALERT_VERSION: u32 = 1;

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// When it was raised.
    #[serde(default = "chrono::Utc::now")]
    pub raised_at: chrono::DateTime<chrono::Utc>,
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
        let fingerprint = hex::encode(Sha256::digest(
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
            raised_at: chrono::Utc::now(),
        }
    }

    /// Replaces the fingerprint (an alert about a held batch reuses its dead letter's).
    pub fn with_fingerprint(mut self, fingerprint: impl Into<String>) -> Self {
        self.fingerprint = fingerprint.into();
        self
    }

    /// The message for topic `alerts`: JSON body, attributes `kind`, `severity`, `fingerprint`.
    pub fn to_message(&self) -> Outgoing {
        let mut body = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = body.as_object_mut() {
            o.insert("schema_version".into(), ALERT_VERSION.into());
        }
        let severity = serde_json::to_value(self.severity)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        Outgoing {
            data: body.to_string().into_bytes(),
            attributes: [
                ("kind".to_string(), self.kind.clone()),
                ("severity".to_string(), severity),
                ("fingerprint".to_string(), self.fingerprint.clone()),
            ]
            .into(),
        }
    }

    /// Parses an alert message.
    pub fn parse(msg: &Incoming) -> Result<Alert, Malformed> {
        serde_json::from_slice(&msg.data).map_err(|e| Malformed(format!("not an alert: {e}")))
    }

    /// Adds a detail.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.details.insert(key.to_string(), value.into());
        self
    }

    /// Logs the alert (beside publishing it, or when there is nowhere to publish: local builds).
    pub fn log(&self) {
        macro_rules! at {
            ($level:ident) => {
                tracing::$level!(
                    kind = %self.kind,
                    severity = ?self.severity,
                    partner = %self.partner,
                    product = %self.product,
                    period = %self.period,
                    fingerprint = %self.fingerprint,
                    "alert: {}",
                    self.summary
                )
            };
        }
        match self.severity {
            Severity::Critical | Severity::Error => at!(error),
            Severity::Warning => at!(warn),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_round_trip_through_their_message() {
        let a = Alert::new(
            Severity::Critical,
            "batch.held",
            ("*", "*", "2026-11-27"),
            "x",
            "held".into(),
        )
        .with("n", 3);
        let m = a.to_message();
        assert_eq!(m.attributes["severity"], "critical");
        let back = Alert::parse(&Incoming {
            data: m.data,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(back, a);
        assert!(Alert::parse(&Incoming::default()).is_err());
    }
}
