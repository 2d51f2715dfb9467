//! Receipts: a sink's proof that it delivered a product version, stored in the ops bucket and
//! carried by the `notify` message to the partner e-mail sink.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ProductKind;

/// A file as the sink left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptFile {
    /// File name.
    pub name: String,
    /// Where it is now (`sftp://host/path`, the API URL, `mailto:` recipients).
    pub location: String,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256 hex.
    pub sha256: String,
}

/// Proof that a sink delivered a product version: stored, then sent on to the e-mail sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Sink name (`sftp`, `api`, `email`).
    pub sink: String,
    /// The delivery id.
    pub delivery_id: String,
    /// Partner.
    pub partner: String,
    /// Product.
    pub product: ProductKind,
    /// Period.
    pub period: String,
    /// The files delivered (data and manifests).
    pub files: Vec<ReceiptFile>,
    /// True when the destination already had the content (nothing was sent this time).
    pub already_present: bool,
    /// A reference from the destination (the e-mail's `Message-ID`), when there is one.
    #[serde(default)]
    pub reference: Option<String>,
    /// When the sink finished.
    pub delivered_at: DateTime<Utc>,
}
