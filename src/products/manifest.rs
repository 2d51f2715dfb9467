//! The manifest beside every delivered file, and the version and delivery id it names.
//!
//! product version = SHA-256 hex of the data file (with both formats, of the Parquet file);
//! delivery id = SHA-256 hex of `partner|product|period|<product version>`. The build time is in
//! the manifest only: it is not part of the version.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// Version of the manifest's own layout.
pub const MANIFEST_VERSION: u32 = 1;

/// The manifest could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// JSON encoding failed.
    #[error("manifest json: {0}")]
    Json(#[from] serde_json::Error),
}

/// SHA-256 hex of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The delivery id of a product version.
pub fn delivery_id(partner: &str, product: &str, period: &str, file_sha256: &str) -> String {
    sha256_hex(format!("{partner}|{product}|{period}|{file_sha256}").as_bytes())
}

/// `<file>.manifest.json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Manifest {
    /// Layout version of this manifest.
    pub manifest_version: u32,
    /// Partner.
    pub partner: String,
    /// `daily` or `monthly`.
    pub product: String,
    /// `YYYY-MM-DD` or `YYYY-MM`.
    pub period: String,
    /// The file described (name only).
    pub file: String,
    /// `parquet` or `csv`.
    pub format: String,
    /// The Parquet codec (`snappy`, `zstd(3)`); absent for CSV.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// Schema version of the product.
    pub schema_version: u32,
    /// SHA-256 of the column definitions (changes with the schema).
    pub schema_fingerprint: String,
    /// Data rows.
    pub rows: usize,
    /// File size.
    pub bytes: u64,
    /// SHA-256 hex of the file.
    pub sha256: String,
    /// SHA-256 of the delivery's reference file (the Parquet one when both formats).
    pub product_version: String,
    /// SHA-256 of `partner|product|period|product_version`.
    pub delivery_id: String,
    /// Which pseudonymization secret.
    pub key_version: String,
    /// `month` or `contract`.
    pub key_period: String,
    /// Minimum customers per cell.
    pub k: u32,
    /// Batches the file was built from.
    pub source_batches: Vec<String>,
    /// Batches of the product's window that did not exist.
    pub missing_batches: Vec<String>,
    /// Batches of the previous month read for the month-over-month change (monthly).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub comparison_batches: Vec<String>,
    /// The other files of the same delivery (the other format).
    pub companion_files: Vec<String>,
    /// The data dictionary of the product (delivered beside the file).
    pub dictionary: String,
    /// SHA-256 hex of the data dictionary.
    pub dictionary_sha256: String,
    /// Facts for the partner e-mail, pt-BR.
    pub highlights: Vec<String>,
    /// When it was built, RFC 3339 UTC (not part of the version).
    pub built_at: String,
}

impl Manifest {
    /// Encodes the manifest as pretty JSON with a final newline.
    pub fn to_json(&self) -> Result<Vec<u8>, ManifestError> {
        let mut v = serde_json::to_vec_pretty(self)?;
        v.push(b'\n');
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_spec() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let id = delivery_id("p", "daily", "2026-11-27", "ab");
        assert_eq!(id, sha256_hex(b"p|daily|2026-11-27|ab"));
    }
}
