//! Dead letters in: archived as objects before they are acknowledged, then turned into alerts.
//!
//! A dead letter is either one of ours (original data and attributes plus `error_kind`,
//! `error`, `source_subscription`, `source_topic`; [`crate::events::DeadLetter`]) or one
//! Pub/Sub forwarded after the maximum delivery attempts (`CloudPubSubDeadLetter*`
//! attributes).

use std::collections::BTreeMap;

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::runbook::MAX_DELIVERY_ATTEMPTS;
use crate::config::Config;
use crate::events::{Alert, Incoming, Severity, dead_letter_fingerprint};

/// Attributes added to a message when it is dead-lettered (dropped again on replay).
pub fn is_dead_letter_attribute(key: &str) -> bool {
    matches!(
        key,
        "error_kind" | "error" | "source_subscription" | "source_topic" | "source_message_id"
    ) || key.starts_with("CloudPubSubDeadLetter")
}

/// An archived dead letter: `gs://<ops>/deadletters/<source subscription>/<message id>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Archived {
    /// The dead letter's message id.
    pub message_id: String,
    /// The subscription it was read from (`<dead-letter topic>-alert`).
    pub subscription: String,
    /// The subscription that failed it.
    pub source_subscription: String,
    /// The topic to republish it to.
    pub source_topic: String,
    /// The original data, base64.
    pub data: String,
    /// Every attribute, as received.
    pub attributes: BTreeMap<String, String>,
    /// Delivery attempt of the dead letter itself.
    pub delivery_attempt: Option<i32>,
    /// When the alerting consumer received it.
    pub received_at: DateTime<Utc>,
}

impl Archived {
    /// The original data.
    pub fn original_data(&self) -> Result<Vec<u8>, base64::DecodeError> {
        base64::engine::general_purpose::STANDARD.decode(&self.data)
    }

    /// The original attributes (without what dead-lettering added).
    pub fn original_attributes(&self) -> BTreeMap<String, String> {
        self.attributes
            .iter()
            .filter(|(k, _)| !is_dead_letter_attribute(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// The archive folder of a source subscription.
pub fn archive_prefix(source_subscription: &str) -> String {
    format!("deadletters/{source_subscription}/")
}

/// The archive object of a dead letter.
pub fn archive_object(source_subscription: &str, message_id: &str) -> String {
    format!(
        "{}{}.json",
        archive_prefix(source_subscription),
        safe(message_id)
    )
}

/// The marker written once an archived dead letter was republished.
pub fn replayed_object(source_subscription: &str, message_id: &str) -> String {
    format!(
        "{}replayed/{}.json",
        archive_prefix(source_subscription),
        safe(message_id)
    )
}

fn safe(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() { "no-id".into() } else { s }
}

fn last_segment(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

/// A dead letter read: where it came from, why, and what it was about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Letter {
    /// The subscription that failed it.
    pub source_subscription: String,
    /// Its topic.
    pub source_topic: String,
    /// `error_kind`, or [`MAX_DELIVERY_ATTEMPTS`] for Pub/Sub's own dead letters.
    pub kind: String,
    /// One line (or a sentence about the attempts).
    pub error: String,
    /// Delivery attempts at the source, when known.
    pub attempts: Option<String>,
    /// What it was about: object, delivery id, day (or the original message id).
    pub subject: String,
    /// Fields for the alert (object, batch, partner, product, delivery ...).
    pub place: BTreeMap<String, String>,
}

impl Letter {
    /// Reads a dead letter received on `subscription` (a `<dead-letter topic>-alert`).
    pub fn read(cfg: &Config, subscription: &str, msg: &Incoming) -> Letter {
        let a = &msg.attributes;
        let get = |k: &str| a.get(k).filter(|v| !v.is_empty()).cloned();
        // The dead-letter topic this subscription reads, and the subscription it belongs to.
        let dl_topic = cfg.source_topic(subscription).unwrap_or_default();
        let by_topic = cfg
            .gcp
            .dead_letter_topics
            .iter()
            .find(|(_, t)| t.as_str() == dl_topic)
            .map(|(s, _)| s.clone());
        let source_subscription = get("source_subscription")
            .or_else(|| {
                get("CloudPubSubDeadLetterSourceSubscription").map(|s| last_segment(&s).to_string())
            })
            .or(by_topic)
            .unwrap_or_else(|| "unknown".into());
        let source_topic = get("source_topic")
            .or_else(|| {
                get("CloudPubSubDeadLetterSourceTopic").map(|s| last_segment(&s).to_string())
            })
            .or_else(|| cfg.source_topic(&source_subscription).map(String::from))
            .unwrap_or_default();
        let attempts = get("CloudPubSubDeadLetterSourceDeliveryCount");
        let (kind, error) = match get("error_kind") {
            Some(k) => (k, get("error").unwrap_or_default()),
            None => (
                MAX_DELIVERY_ATTEMPTS.to_string(),
                format!(
                    "Pub/Sub stopped after {} delivery attempts",
                    attempts.as_deref().unwrap_or("the maximum")
                ),
            ),
        };
        let data: Option<serde_json::Value> = serde_json::from_slice(&msg.data).ok();
        let field = |k: &str| {
            data.as_ref()
                .and_then(|d| d.get(k))
                .and_then(|v| match v {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .filter(|s| !s.is_empty() && s.len() <= 300)
        };
        let mut place = BTreeMap::new();
        if let Some(o) = get("objectId").or_else(|| field("name")) {
            place.insert("object".to_string(), o);
        }
        for k in ["delivery_id", "partner", "product", "period", "dt", "sink"] {
            if let Some(v) = get(k).or_else(|| field(k)) {
                place.insert(k.to_string(), v);
            }
        }
        if let Some(t) = crate::telemetry::trace_id(&msg.attributes) {
            place.insert("trace_id".to_string(), t);
        }
        let subject = ["object", "delivery_id", "dt", "period"]
            .iter()
            .find_map(|k| place.get(*k).cloned())
            .or_else(|| get("source_message_id"))
            .unwrap_or_else(|| msg.id.clone());
        Letter {
            source_subscription,
            source_topic,
            kind,
            error,
            attempts,
            subject,
            place,
        }
    }

    /// The fingerprint ([`dead_letter_fingerprint`]).
    pub fn fingerprint(&self) -> String {
        dead_letter_fingerprint(&self.source_subscription, &self.kind, &self.subject)
    }

    /// The archive record of the message.
    pub fn archived(&self, subscription: &str, msg: &Incoming, now: DateTime<Utc>) -> Archived {
        Archived {
            message_id: msg.id.clone(),
            subscription: subscription.to_string(),
            source_subscription: self.source_subscription.clone(),
            source_topic: self.source_topic.clone(),
            data: base64::engine::general_purpose::STANDARD.encode(&msg.data),
            attributes: msg.attributes.clone(),
            delivery_attempt: msg.delivery_attempt,
            received_at: now,
        }
    }

    /// The alert for the data team.
    pub fn alert(&self, archive: &str) -> Alert {
        let p = |k: &str| self.place.get(k).cloned().unwrap_or_default();
        let period = self
            .place
            .get("period")
            .or(self.place.get("dt"))
            .cloned()
            .unwrap_or_default();
        let summary = if self.error.is_empty() {
            format!(
                "uma mensagem de {} foi para a dead letter ({})",
                self.source_subscription, self.kind
            )
        } else {
            format!(
                "{} mandou para a dead letter: {}",
                self.source_subscription, self.error
            )
        };
        let mut a = Alert::new(
            Severity::Error,
            &self.kind,
            (&p("partner"), &p("product"), &period),
            &self.subject,
            summary,
        )
        .with_fingerprint(self.fingerprint())
        .with("subscription", self.source_subscription.clone())
        .with("topic", self.source_topic.clone())
        .with("archive", archive.to_string());
        if let Some(n) = &self.attempts {
            a = a.with("delivery_attempts", n.clone());
        }
        for (k, v) in &self.place {
            if !matches!(k.as_str(), "partner" | "product" | "period") {
                a = a.with(k, v.clone());
            }
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{DeadLetter, ErrorKind};

    fn cfg() -> Config {
        Config::load_with(None, &|_| None).unwrap()
    }

    #[test]
    fn our_dead_letters_and_pubsubs_read_alike() {
        let original = Incoming {
            id: "7".into(),
            data: b"{}".to_vec(),
            attributes: [("objectId".to_string(), "uploads/x.txt".to_string())].into(),
            delivery_attempt: Some(1),
        };
        let out = DeadLetter {
            kind: ErrorKind::UnknownLayout,
            error: "not under extracts/".into(),
            source_subscription: "extracts-worker".into(),
            source_topic: "extracts".into(),
        }
        .message(&original);
        let msg = Incoming {
            id: "99".into(),
            data: out.data,
            attributes: out.attributes,
            delivery_attempt: Some(1),
        };
        let l = Letter::read(&cfg(), "extracts-worker-dead-letter-alert", &msg);
        assert_eq!(
            (l.source_subscription.as_str(), l.source_topic.as_str()),
            ("extracts-worker", "extracts")
        );
        assert_eq!(
            (l.kind.as_str(), l.subject.as_str()),
            ("unknown_layout", "uploads/x.txt")
        );
        assert_eq!(
            l.fingerprint(),
            dead_letter_fingerprint("extracts-worker", "unknown_layout", "uploads/x.txt")
        );
        let a = l.alert("gs://ops/deadletters/extracts-worker/99.json");
        assert_eq!(a.fingerprint, l.fingerprint());
        assert_eq!(a.details["object"], "uploads/x.txt");
        let arch = l.archived("extracts-worker-dead-letter-alert", &msg, Utc::now());
        assert_eq!(arch.original_data().unwrap(), b"{}");
        assert_eq!(arch.original_attributes(), original.attributes);

        // Forwarded by Pub/Sub: no error_kind, the source from the topic it came through.
        let msg = Incoming {
            id: "100".into(),
            data:
                br#"{"delivery_id":"d1","partner":"ouch","product":"daily","period":"2026-11-27"}"#
                    .to_vec(),
            attributes: [
                (
                    "CloudPubSubDeadLetterSourceDeliveryCount".to_string(),
                    "5".to_string(),
                ),
                (
                    "CloudPubSubDeadLetterSourceSubscription".to_string(),
                    "deliveries-sftp".to_string(),
                ),
            ]
            .into(),
            delivery_attempt: None,
        };
        let l = Letter::read(&cfg(), "deliveries-sftp-dead-letter-alert", &msg);
        assert_eq!(l.kind, MAX_DELIVERY_ATTEMPTS);
        assert_eq!(l.source_topic, "deliveries");
        assert_eq!(l.subject, "d1");
        let a = l.alert("x");
        assert_eq!(
            (a.partner.as_str(), a.period.as_str()),
            ("ouch", "2026-11-27")
        );
        assert_eq!(a.details["delivery_attempts"], "5");
        // Different subjects, different fingerprints; same subject, same fingerprint.
        assert_ne!(
            dead_letter_fingerprint("s", "k", "a"),
            dead_letter_fingerprint("s", "k", "b")
        );
        assert_eq!(
            dead_letter_fingerprint("s", "k", "a"),
            dead_letter_fingerprint("s", "k", "a")
        );
        assert_eq!(archive_object("s", "1/2"), "deadletters/s/1_2.json");
    }
}
