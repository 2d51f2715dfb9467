//! Where receipts are kept: `receipts/<partner>/<delivery id>/<sink>.json`.
//!
//! The first receipt written wins (a create-only write, like Cloud Storage's
//! `ifGenerationMatch=0`), so two instances delivering the same message at once keep one receipt.
//! The layout groups a delivery's receipts so whoever completes the set can list them.

use std::future::Future;
use std::path::{Path, PathBuf};

use super::Receipt;

/// A receipt could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    /// Storage I/O failed: transient.
    #[error("{path}: {source}")]
    Io {
        /// The receipt's path or object name.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Cloud Storage failed (transient or not, as the error says).
    #[error(transparent)]
    Gcs(#[from] crate::gcp::GcsError),
    /// A stored receipt is not valid JSON: permanent (someone must look at it).
    #[error("{path}: not a receipt: {source}")]
    Corrupt {
        /// The receipt's path or object name.
        path: String,
        /// The cause.
        source: serde_json::Error,
    },
}

impl ReceiptError {
    /// True when retrying may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ReceiptError::Io { .. } => true,
            ReceiptError::Gcs(e) => e.transient,
            ReceiptError::Corrupt { .. } => false,
        }
    }
}

/// Keeps receipts, one per (partner, delivery id, sink).
pub trait ReceiptStore: Send + Sync {
    /// Reads the receipt of a sink for a delivery, if any.
    fn get(
        &self,
        partner: &str,
        sink: &str,
        delivery_id: &str,
    ) -> impl Future<Output = Result<Option<Receipt>, ReceiptError>> + Send;

    /// Stores a receipt unless one already exists (the first one wins).
    fn put(&self, receipt: &Receipt) -> impl Future<Output = Result<(), ReceiptError>> + Send;
}

/// Receipts in a local folder (tests, the local stack, `datashare deliver` on a laptop).
#[derive(Debug, Clone)]
pub struct LocalReceipts {
    root: PathBuf,
}

impl LocalReceipts {
    /// Keeps receipts under `<root>/receipts/`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalReceipts { root: root.into() }
    }

    /// The path of a receipt.
    pub fn path(&self, partner: &str, sink: &str, delivery_id: &str) -> PathBuf {
        self.root
            .join("receipts")
            .join(partner)
            .join(delivery_id)
            .join(format!("{sink}.json"))
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> ReceiptError + '_ {
    move |source| ReceiptError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl ReceiptStore for LocalReceipts {
    async fn get(
        &self,
        partner: &str,
        sink: &str,
        delivery_id: &str,
    ) -> Result<Option<Receipt>, ReceiptError> {
        let path = self.path(partner, sink, delivery_id);
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| ReceiptError::Corrupt {
                path: path.display().to_string(),
                source,
            })
    }

    async fn put(&self, receipt: &Receipt) -> Result<(), ReceiptError> {
        let path = self.path(&receipt.partner, &receipt.sink, &receipt.delivery_id);
        let dir = path.parent().unwrap_or(Path::new("."));
        tokio::fs::create_dir_all(dir).await.map_err(io_err(dir))?;
        let mut json =
            serde_json::to_vec_pretty(receipt).map_err(|source| ReceiptError::Corrupt {
                path: path.display().to_string(),
                source,
            })?;
        json.push(b'\n');
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            receipt.sink,
            std::process::id() as u64 * 1_000_000_007 + u64::from(rand_u32())
        ));
        tokio::fs::write(&tmp, &json).await.map_err(io_err(&tmp))?;
        // A hard link fails when the target exists: the create-only write.
        let linked = tokio::fs::hard_link(&tmp, &path).await;
        let _ = tokio::fs::remove_file(&tmp).await;
        match linked {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                tracing::info!(sink = %receipt.sink, "receipt already stored, keeping the first");
                Ok(())
            }
            Err(e) => Err(io_err(&path)(e)),
        }
    }
}

/// Receipts in the ops bucket: `receipts/<partner>/<delivery id>/<sink>.json`, written with
/// `ifGenerationMatch=0` (the first one wins).
#[derive(Debug, Clone)]
pub struct GcsReceipts {
    gcs: crate::gcp::Gcs,
    bucket: String,
}

impl GcsReceipts {
    /// Keeps receipts in `bucket` (the ops bucket).
    pub fn new(gcs: crate::gcp::Gcs, bucket: impl Into<String>) -> Self {
        GcsReceipts {
            gcs,
            bucket: bucket.into(),
        }
    }

    /// The object name of a receipt.
    pub fn name(partner: &str, sink: &str, delivery_id: &str) -> String {
        format!("receipts/{partner}/{delivery_id}/{sink}.json")
    }

    /// Every receipt stored for a delivery, by sink name.
    pub async fn list(
        &self,
        partner: &str,
        delivery_id: &str,
    ) -> Result<Vec<Receipt>, ReceiptError> {
        let prefix = format!("receipts/{partner}/{delivery_id}/");
        let mut out = Vec::new();
        for meta in self.gcs.list(&self.bucket, &prefix).await? {
            if !meta.name.ends_with(".json") {
                continue;
            }
            if let Some((bytes, _)) = self.gcs.read(&self.bucket, &meta.name, None).await? {
                out.push(parse(&meta.name, &bytes)?);
            }
        }
        out.sort_by(|a, b| a.sink.cmp(&b.sink));
        Ok(out)
    }
}

fn parse(path: &str, bytes: &[u8]) -> Result<Receipt, ReceiptError> {
    serde_json::from_slice(bytes).map_err(|source| ReceiptError::Corrupt {
        path: path.to_string(),
        source,
    })
}

impl ReceiptStore for GcsReceipts {
    async fn get(
        &self,
        partner: &str,
        sink: &str,
        delivery_id: &str,
    ) -> Result<Option<Receipt>, ReceiptError> {
        let name = Self::name(partner, sink, delivery_id);
        match self.gcs.read(&self.bucket, &name, None).await? {
            Some((bytes, _)) => parse(&name, &bytes).map(Some),
            None => Ok(None),
        }
    }

    async fn put(&self, receipt: &Receipt) -> Result<(), ReceiptError> {
        let name = Self::name(&receipt.partner, &receipt.sink, &receipt.delivery_id);
        let json = serde_json::to_vec_pretty(receipt).map_err(|source| ReceiptError::Corrupt {
            path: name.clone(),
            source,
        })?;
        match self.gcs.write(&self.bucket, &name, json, Some(0)).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_precondition_failed() => {
                tracing::info!(sink = %receipt.sink, "receipt already stored, keeping the first");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// A random number for temporary names, from the standard library's per-process random keys.
pub(crate) fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::ProductKind;

    fn receipt(sink: &str, already_present: bool) -> Receipt {
        Receipt {
            sink: sink.into(),
            delivery_id: "b".repeat(64),
            partner: "acme".into(),
            product: ProductKind::Monthly,
            period: "2026-11".into(),
            files: vec![],
            already_present,
            reference: None,
            delivered_at: chrono::Utc::now(),
        }
    }

    #[tokio::test]
    async fn first_receipt_wins_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalReceipts::new(dir.path());
        let id = "b".repeat(64);
        assert!(store.get("acme", "sftp", &id).await.unwrap().is_none());
        let first = receipt("sftp", false);
        store.put(&first).await.unwrap();
        store.put(&receipt("sftp", true)).await.unwrap();
        assert_eq!(store.get("acme", "sftp", &id).await.unwrap(), Some(first));
        assert!(store.get("acme", "api", &id).await.unwrap().is_none());
        let leftovers = std::fs::read_dir(store.path("acme", "sftp", &id).parent().unwrap())
            .unwrap()
            .count();
        assert_eq!(leftovers, 1, "temporary files are removed");
    }
}
