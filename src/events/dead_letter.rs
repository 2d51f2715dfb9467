//! Dead letters: a message that failed permanently, republished by its consumer with why.

use std::fmt;

use sha2::{Digest, Sha256};

use super::{Incoming, Outgoing};

/// Why a message failed permanently (the `error_kind` attribute).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A part that can never be parsed (undecodable, not CSV, a missing required column).
    InvalidExtract,
    /// An object outside the raw bucket's layout.
    UnknownLayout,
    /// A message without the shape its topic promises.
    MalformedMessage,
    /// The partner refused a delivery (HTTP 4xx, SMTP 5xx, SFTP permission denied).
    PartnerRejected,
    /// The SFTP server's host key is not the pinned one.
    HostKey,
    /// A sink's credentials were refused.
    SinkAuth,
    /// A sink's configuration cannot work.
    SinkConfig,
    /// A delivery request with unusable names or ids.
    InvalidDelivery,
    /// A delivery for a partner without a contract or without this sink.
    UnknownPartner,
    /// A stored receipt is unreadable.
    Receipts,
}

impl ErrorKind {
    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidExtract => "invalid_extract",
            ErrorKind::UnknownLayout => "unknown_layout",
            ErrorKind::MalformedMessage => "malformed_message",
            ErrorKind::PartnerRejected => "partner_rejected",
            ErrorKind::HostKey => "host_key",
            ErrorKind::SinkAuth => "sink_auth",
            ErrorKind::SinkConfig => "sink_config",
            ErrorKind::InvalidDelivery => "invalid_delivery",
            ErrorKind::UnknownPartner => "unknown_partner",
            ErrorKind::Receipts => "receipts",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The fingerprint of a dead letter: its source subscription, kind and subject (the object,
/// delivery or day it is about). An alert about the consequence of that failure (a held
/// batch) reuses it, so one failure is one e-mail.
pub fn dead_letter_fingerprint(
    source_subscription: &str,
    error_kind: &str,
    subject: &str,
) -> String {
    hex::encode(Sha256::digest(
        format!("dead-letter|{source_subscription}|{error_kind}|{subject}").as_bytes(),
    ))[..32]
        .to_string()
}

/// What a dead letter says about the failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The kind of failure.
    pub kind: ErrorKind,
    /// One line.
    pub error: String,
    /// The subscription the message came from.
    pub source_subscription: String,
    /// The topic the message was published to.
    pub source_topic: String,
}

impl DeadLetter {
    /// The dead-letter message: the original data and attributes plus `error_kind`, `error`,
    /// `source_subscription` and `source_topic`.
    pub fn message(&self, original: &Incoming) -> Outgoing {
        let mut attributes = original.attributes.clone();
        let line: String = self
            .error
            .lines()
            .next()
            .unwrap_or_default()
            .chars()
            .take(1000)
            .collect();
        attributes.insert("error_kind".into(), self.kind.as_str().into());
        attributes.insert("error".into(), line);
        attributes.insert(
            "source_subscription".into(),
            self.source_subscription.clone(),
        );
        attributes.insert("source_topic".into(), self.source_topic.clone());
        if !original.id.is_empty() {
            attributes.insert("source_message_id".into(), original.id.clone());
        }
        Outgoing {
            data: original.data.clone(),
            attributes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_original_and_says_why_in_one_line() {
        let original = Incoming {
            id: "42".into(),
            data: b"{}".to_vec(),
            attributes: [("objectId".to_string(), "x".to_string())].into(),
            delivery_attempt: Some(1),
        };
        let m = DeadLetter {
            kind: ErrorKind::UnknownLayout,
            error: "not under extracts/\nsecond line".into(),
            source_subscription: "extracts-worker".into(),
            source_topic: "extracts".into(),
        }
        .message(&original);
        assert_eq!(m.data, b"{}");
        assert_eq!(m.attributes["objectId"], "x");
        assert_eq!(m.attributes["error_kind"], "unknown_layout");
        assert_eq!(m.attributes["error"], "not under extracts/");
        assert_eq!(m.attributes["source_subscription"], "extracts-worker");
        assert_eq!(m.attributes["source_topic"], "extracts");
    }
}
