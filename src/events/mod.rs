//! Pub/Sub messages: what the worker receives (GCS notifications, batch-ready) and publishes
//! (batch-ready, delivery requests, dead letters). Parsed once at the edge into types; a message
//! that cannot be parsed is a permanent failure (dead-lettered, never retried).
//!
//! A leaf: the messages import nothing from the rest of the crate.

pub mod alert;
pub mod batch;
pub mod dead_letter;
pub mod delivery;
pub mod gcs;
pub mod notify;
pub mod receipt;
pub mod schedule;
pub mod updates;

use std::collections::BTreeMap;

pub use alert::{Alert, Severity};
pub use batch::{BatchReady, ObjectGeneration};
pub use dead_letter::{DeadLetter, ErrorKind, dead_letter_fingerprint};
pub use delivery::{DeliveryFile, DeliveryRequest, FileDigest, ProductKind};
pub use gcs::{GcsNotification, ObjectRef};
pub use notify::Notify;
pub use receipt::{Receipt, ReceiptFile};
pub use schedule::Schedule;
pub use updates::Updates;

/// A message as received, whichever front end (pull or push) delivered it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Incoming {
    /// Pub/Sub message id.
    pub id: String,
    /// The payload.
    pub data: Vec<u8>,
    /// The attributes.
    pub attributes: BTreeMap<String, String>,
    /// Delivery attempt, when the subscription has a dead-letter policy.
    pub delivery_attempt: Option<i32>,
}

/// A message to publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outgoing {
    /// The payload.
    pub data: Vec<u8>,
    /// The attributes.
    pub attributes: BTreeMap<String, String>,
}

/// A message that does not have the shape its topic promises.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed message: {0}")]
pub struct Malformed(pub String);
