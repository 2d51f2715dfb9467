//! Delivery sinks: one module per destination behind one [`Sink`] trait.
//!
//! A sink takes a [`Delivery`] (one product version: its data files, their manifests, files
//! already on the local disk) and returns a [`Receipt`] or a [`SinkError`] that says whether a
//! retry can help ([`SinkError::is_transient`]): that, and nothing else, decides nack-and-retry
//! versus dead letter. [`deliver_once`] makes every sink idempotent through a [`ReceiptStore`]: a
//! delivery whose receipt exists is not delivered again.
//!
//! - [`sftp`]: key authentication, pinned host key, temporary name then rename, size checked.
//! - [`api`]: one `multipart/form-data` POST per delivery, `Idempotency-Key`, bounded retries.
//! - [`email`]: the pt-BR e-mail to the partner's contacts once the data sinks succeeded.
//! - [`receipts`]: where receipts are kept (a local folder, or the ops bucket: [`GcsReceipts`]).

pub mod api;
pub mod check;
pub mod email;
pub mod receipts;
pub mod sftp;
pub mod smtp;

use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::config::sinks::{SinkConfig, SinkSettings};
use crate::events::{ErrorKind, ProductKind, Receipt, ReceiptFile};
use crate::products::Released;
use crate::products::contract::Contract;

pub use receipts::{GcsReceipts, LocalReceipts, ReceiptError, ReceiptStore};

/// A file of a delivery on the local disk, with what it must hash to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalFile {
    /// File name at the destination (no folder).
    pub name: String,
    /// Where the file is on the local disk.
    pub path: PathBuf,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256 hex of the content.
    pub sha256: String,
}

impl LocalFile {
    /// Describes a local file by reading and hashing it; its name is the path's file name.
    pub fn from_path(path: &Path) -> std::io::Result<LocalFile> {
        let (bytes, sha256) = hash_file(path)?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| std::io::Error::other("file name is not UTF-8"))?
            .to_string();
        Ok(LocalFile {
            name,
            path: path.to_path_buf(),
            bytes,
            sha256,
        })
    }
}

/// A data file and its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryFile {
    /// The data file (Parquet or CSV).
    pub data: LocalFile,
    /// Its `<file>.manifest.json`.
    pub manifest: LocalFile,
}

/// One product version to deliver: what every sink receives.
///
/// The worker converts its `DeliveryRequest` (with `gs://` URIs) into this after downloading
/// the files; [`Delivery::from_released`] builds it from a local build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// SHA-256 hex of `partner|product|period|product version` (see products.md).
    pub delivery_id: String,
    /// Partner name.
    pub partner: String,
    /// Daily or monthly.
    pub product: ProductKind,
    /// `YYYY-MM-DD` or `YYYY-MM`.
    pub period: String,
    /// The data files (Parquet first when both formats) with their manifests.
    pub files: Vec<DeliveryFile>,
    /// The product's pt-BR data dictionary: one of the product version's files, put beside the
    /// data files by the data sinks (SFTP, API).
    #[serde(default)]
    pub dictionary: Option<LocalFile>,
    /// The data dictionary, set by the caller on the product's first delivery or after a schema
    /// change: the e-mail attaches it.
    #[serde(default)]
    pub new_dictionary: Option<LocalFile>,
    /// Receipts of the data sinks (filled for the e-mail: where the partner fetches the files).
    #[serde(default)]
    pub upstream: Vec<Receipt>,
    /// Every local file was checked against its size and SHA-256 as it was written (a download
    /// that hashed it): [`deliver_once`] does not read them again.
    #[serde(skip)]
    pub checked: bool,
}

impl Delivery {
    /// Builds a delivery from a local product build (hashes the manifests).
    pub fn from_released(r: &Released) -> std::io::Result<Delivery> {
        let mut files = Vec::with_capacity(r.files.len());
        for f in &r.files {
            let mut data = LocalFile::from_path(&f.path)?;
            data.bytes = f.bytes;
            data.sha256 = f.sha256.clone();
            files.push(DeliveryFile {
                data,
                manifest: LocalFile::from_path(&f.manifest)?,
            });
        }
        Ok(Delivery {
            delivery_id: r.delivery_id.clone(),
            partner: r.partner.clone(),
            product: r.product,
            period: r.period.clone(),
            files,
            dictionary: Some(LocalFile::from_path(&r.dictionary)?),
            new_dictionary: None,
            upstream: Vec::new(),
            checked: false,
        })
    }

    /// Every local file of the delivery: data, manifests, then the dictionaries.
    pub fn local_files(&self) -> impl Iterator<Item = &LocalFile> {
        self.files
            .iter()
            .flat_map(|f| [&f.data, &f.manifest])
            .chain(self.dictionary.iter())
            .chain(self.new_dictionary.iter())
    }

    /// Checks names and ids: they end up in remote paths and headers.
    pub fn validate(&self, sink: &'static str) -> Result<(), SinkError> {
        let invalid = |message: String| Err(SinkError::Invalid { sink, message });
        let id_ok = self.delivery_id.len() == 64
            && self
                .delivery_id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !id_ok {
            return invalid("delivery id must be 64 lower-case hex digits".into());
        }
        if !plain_name(&self.partner) || self.partner.contains('.') {
            return invalid(format!(
                "partner name {:?} is not a plain name",
                self.partner
            ));
        }
        if !plain_name(&self.period) {
            return invalid(format!("period {:?} is not a plain name", self.period));
        }
        if self.files.is_empty() {
            return invalid("no data file".into());
        }
        for f in self.local_files() {
            if !plain_name(&f.name) {
                return invalid(format!("file name {:?} is not a plain name", f.name));
            }
        }
        Ok(())
    }

    /// Checks that every local file has the declared size and SHA-256 (blocking: hashes files);
    /// without `data`, the data files are left out (a sink that does not send them). A delivery
    /// already `checked` as it was written is not read again.
    pub fn verify_local_files(&self, sink: &'static str, data: bool) -> Result<(), SinkError> {
        if self.checked {
            return Ok(());
        }
        let data_files = self.files.iter().filter(|_| data).map(|f| &f.data);
        let others = (self.files.iter().map(|f| &f.manifest))
            .chain(self.dictionary.iter())
            .chain(self.new_dictionary.iter());
        for f in data_files.chain(others) {
            let (bytes, sha256) = hash_file(&f.path).map_err(|e| SinkError::Transient {
                sink,
                message: format!("cannot read local file {}: {e}", f.path.display()),
            })?;
            if bytes != f.bytes || sha256 != f.sha256 {
                // A fresh download on the next attempt may fix it.
                return Err(SinkError::Transient {
                    sink,
                    message: format!(
                        "local file {} does not match its declared size and sha256",
                        f.path.display()
                    ),
                });
            }
        }
        Ok(())
    }
}

/// A name usable as one path segment: not empty, no separators, no leading dot.
fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, hex::encode(h.finalize())))
}

/// True when an error chain holds a TLS certificate the client refused (unknown issuer,
/// expired, wrong name): a configuration problem that retrying does not fix.
pub fn is_untrusted_certificate(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(rustls::Error::InvalidCertificate(_)) = err.downcast_ref::<rustls::Error>() {
            return true;
        }
        // io::Error::source() skips the error it wraps: look inside.
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && is_untrusted_certificate(inner)
        {
            return true;
        }
        next = err.source();
    }
    false
}

/// Starts one key exchange of each group of the TLS provider, once a process, so that the first
/// delivery does not pay for initialising it (measured: the first e-mail and the first API
/// upload of a process took ~40 ms longer than the next ones).
pub(crate) fn warm_up_tls() {
    static WARM: std::sync::Once = std::sync::Once::new();
    WARM.call_once(|| {
        let started = std::time::Instant::now();
        for group in rustls::crypto::aws_lc_rs::default_provider().kx_groups {
            let _ = group.start();
        }
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "TLS provider warmed up"
        );
    });
}

/// Starts a receipt for a delivery, delivered now.
pub fn receipt(
    sink: &str,
    d: &Delivery,
    files: Vec<ReceiptFile>,
    already_present: bool,
) -> Receipt {
    Receipt {
        sink: sink.to_string(),
        delivery_id: d.delivery_id.clone(),
        partner: d.partner.clone(),
        product: d.product,
        period: d.period.clone(),
        files,
        already_present,
        reference: None,
        delivered_at: Utc::now(),
    }
}

/// A delivery or a check failed; the variant decides retry versus dead letter.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The sink's configuration cannot work (unreadable key, CA file, address): permanent.
    #[error("{sink}: configuration: {message}")]
    Config {
        /// Sink name.
        sink: &'static str,
        /// What is wrong (never a secret).
        message: String,
    },
    /// The server's host key is not the pinned one: permanent until someone checks it.
    #[error("{sink}: host key: {message}")]
    HostKey {
        /// Sink name.
        sink: &'static str,
        /// What was presented and what was expected.
        message: String,
    },
    /// The server refused the credentials: permanent.
    #[error("{sink}: authentication refused: {message}")]
    Auth {
        /// Sink name.
        sink: &'static str,
        /// The server's answer.
        message: String,
    },
    /// The partner refused the delivery (HTTP 4xx, SMTP 5xx, SFTP permission denied): permanent.
    #[error("{sink}: rejected: {message}")]
    Rejected {
        /// Sink name.
        sink: &'static str,
        /// The partner's answer.
        message: String,
    },
    /// The delivery itself is malformed (names, ids): permanent.
    #[error("{sink}: invalid delivery: {message}")]
    Invalid {
        /// Sink name.
        sink: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Network, timeout, HTTP 408/429/5xx, I/O: a later attempt may succeed.
    #[error("{sink}: {message}")]
    Transient {
        /// Sink name.
        sink: &'static str,
        /// What failed.
        message: String,
    },
    /// The receipt store failed.
    #[error("{sink}: receipts: {source}")]
    Receipts {
        /// Sink name.
        sink: &'static str,
        /// The cause.
        source: ReceiptError,
    },
}

impl SinkError {
    /// True when retrying later may succeed (nack); false sends the message to the dead letter.
    pub fn is_transient(&self) -> bool {
        match self {
            SinkError::Transient { .. } => true,
            SinkError::Receipts { source, .. } => source.is_transient(),
            SinkError::Config { .. }
            | SinkError::HostKey { .. }
            | SinkError::Auth { .. }
            | SinkError::Rejected { .. }
            | SinkError::Invalid { .. } => false,
        }
    }

    /// The dead-letter `error_kind` of a permanent error; `None` for a transient one (nack).
    pub fn error_kind(&self) -> Option<ErrorKind> {
        if self.is_transient() {
            return None;
        }
        Some(self.class())
    }

    /// The kind as an attribute value: the dead letter's `error_kind`, or `transient`.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkError::Transient { .. } => "transient",
            _ => self.class().as_str(),
        }
    }

    fn class(&self) -> ErrorKind {
        match self {
            SinkError::Config { .. } => ErrorKind::SinkConfig,
            SinkError::HostKey { .. } => ErrorKind::HostKey,
            SinkError::Auth { .. } => ErrorKind::SinkAuth,
            SinkError::Rejected { .. } => ErrorKind::PartnerRejected,
            SinkError::Invalid { .. } => ErrorKind::InvalidDelivery,
            SinkError::Receipts { .. } | SinkError::Transient { .. } => ErrorKind::Receipts,
        }
    }

    /// The sink that failed.
    pub fn sink(&self) -> &'static str {
        match self {
            SinkError::Config { sink, .. }
            | SinkError::HostKey { sink, .. }
            | SinkError::Auth { sink, .. }
            | SinkError::Rejected { sink, .. }
            | SinkError::Invalid { sink, .. }
            | SinkError::Transient { sink, .. }
            | SinkError::Receipts { sink, .. } => sink,
        }
    }
}

/// A destination for product versions.
pub trait Sink: Send + Sync {
    /// The sink's name (`sftp`, `api`, `email`).
    fn name(&self) -> &'static str;

    /// Delivers the files of a product version; content already at the destination counts as
    /// delivered (the receipt says `already_present`).
    fn deliver(
        &self,
        delivery: &Delivery,
    ) -> impl Future<Output = Result<Receipt, SinkError>> + Send;

    /// Checks the connection and credentials without delivering anything.
    fn check(&self) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Whether the sink sends the data files' bytes. The e-mail only names them (size and
    /// SHA-256 come with the request), so its caller need not download them.
    fn sends_data(&self) -> bool {
        true
    }

    /// Starts what the next delivery needs while its files are still downloading (the SFTP
    /// sink opens its connection, within the Tokio runtime); nothing for the others.
    fn open_ahead(&self) {}
}

/// Delivers unless a receipt exists, then stores the receipt: the idempotent entry point.
pub async fn deliver_once<S: Sink, R: ReceiptStore>(
    sink: &S,
    store: &R,
    delivery: &Delivery,
) -> Result<Receipt, SinkError> {
    let name = sink.name();
    let span = tracing::info_span!(
        "deliver",
        otel.name = format!("deliver {name}"),
        otel.kind = "client",
        sink = name,
        partner = %delivery.partner,
        product = %delivery.product,
        period = %delivery.period,
        delivery_id = %delivery.delivery_id,
    );
    let started = std::time::Instant::now();
    let result = async move {
        delivery.validate(name)?;
        let receipts = |source| SinkError::Receipts { sink: name, source };
        if let Some(r) = store
            .get(&delivery.partner, name, &delivery.delivery_id)
            .await
            .map_err(receipts)?
        {
            tracing::info!("receipt exists, not delivering again");
            return Ok((r, false));
        }
        let d = delivery.clone();
        let data = sink.sends_data();
        tokio::task::spawn_blocking(move || d.verify_local_files(name, data))
            .await
            .map_err(|e| SinkError::Transient {
                sink: name,
                message: format!("local file check did not finish: {e}"),
            })??;
        let receipt = sink.deliver(delivery).await.inspect_err(|e| {
            tracing::warn!(transient = e.is_transient(), error = %e, "delivery failed");
        })?;
        store.put(&receipt).await.map_err(receipts)?;
        tracing::info!(
            already_present = receipt.already_present,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "delivered"
        );
        Ok((receipt, true))
    }
    .instrument(span)
    .await;
    record_delivery(name, &delivery.partner, &result, started.elapsed());
    result.map(|(receipt, _)| receipt)
}

/// The delivery metrics of one attempt (a transient failure is one retry to come).
fn record_delivery(
    sink: &str,
    partner: &str,
    result: &Result<(Receipt, bool), SinkError>,
    took: std::time::Duration,
) {
    use crate::telemetry::metrics::{self, DeliveryOutcome};
    let (outcome, bytes) = match result {
        Ok((r, now)) if r.already_present || !now => (DeliveryOutcome::AlreadyDelivered, 0),
        Ok((r, _)) => (
            DeliveryOutcome::Delivered,
            // An e-mail carries links, not the files.
            r.files
                .iter()
                .filter(|f| !f.location.starts_with("mailto:"))
                .map(|f| f.bytes)
                .sum(),
        ),
        Err(e) if e.is_transient() => (DeliveryOutcome::TransientError, 0),
        Err(_) => (DeliveryOutcome::PermanentError, 0),
    };
    metrics::delivery(sink, partner, outcome, took, bytes);
}

/// Any sink, built from a contract's closed [`SinkConfig`] enum.
#[derive(Debug)]
pub enum AnySink {
    /// The SFTP sink.
    Sftp(sftp::SftpSink),
    /// The REST API sink.
    Api(Box<api::ApiSink>),
    /// The partner e-mail sink.
    Email(Box<email::EmailSink>),
}

impl AnySink {
    /// Builds a contract's sink, reading its secrets: call at start-up so problems show early.
    pub fn build(
        contract: &Contract,
        config: &SinkConfig,
        settings: &SinkSettings,
    ) -> Result<AnySink, SinkError> {
        Ok(match config {
            SinkConfig::Sftp(c) => {
                AnySink::Sftp(sftp::SftpSink::new(&contract.name, c, &settings.sftp)?)
            }
            SinkConfig::Api(c) => AnySink::Api(Box::new(api::ApiSink::new(
                &contract.name,
                c,
                &settings.api,
            )?)),
            SinkConfig::Email(c) => {
                let smtp = settings.smtp.as_ref().ok_or_else(|| SinkError::Config {
                    sink: "email",
                    message: "no SMTP relay configured".into(),
                })?;
                AnySink::Email(Box::new(email::EmailSink::new(contract, c, smtp)?))
            }
        })
    }
}

impl Sink for AnySink {
    fn name(&self) -> &'static str {
        match self {
            AnySink::Sftp(s) => s.name(),
            AnySink::Api(s) => s.name(),
            AnySink::Email(s) => s.name(),
        }
    }

    async fn deliver(&self, delivery: &Delivery) -> Result<Receipt, SinkError> {
        match self {
            AnySink::Sftp(s) => s.deliver(delivery).await,
            AnySink::Api(s) => s.deliver(delivery).await,
            AnySink::Email(s) => s.deliver(delivery).await,
        }
    }

    async fn check(&self) -> Result<(), SinkError> {
        match self {
            AnySink::Sftp(s) => s.check().await,
            AnySink::Api(s) => s.check().await,
            AnySink::Email(s) => s.check().await,
        }
    }

    fn sends_data(&self) -> bool {
        match self {
            AnySink::Sftp(s) => s.sends_data(),
            AnySink::Api(s) => s.sends_data(),
            AnySink::Email(s) => s.sends_data(),
        }
    }

    fn open_ahead(&self) {
        match self {
            AnySink::Sftp(s) => s.open_ahead(),
            AnySink::Api(s) => s.open_ahead(),
            AnySink::Email(s) => s.open_ahead(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_sink_errors_keep_their_kind() {
        let e = SinkError::Rejected {
            sink: "api",
            message: "http 400".into(),
        };
        let k = e.error_kind().unwrap();
        assert_eq!(k.as_str(), e.kind());
        let e = SinkError::HostKey {
            sink: "sftp",
            message: "changed".into(),
        };
        assert_eq!(e.error_kind().unwrap().as_str(), "host_key");
        let t = SinkError::Transient {
            sink: "sftp",
            message: "refused".into(),
        };
        assert_eq!(t.error_kind(), None);
    }

    fn delivery() -> Delivery {
        let f = |name: &str| LocalFile {
            name: name.into(),
            path: PathBuf::from("/nonexistent").join(name),
            bytes: 1,
            sha256: "00".into(),
        };
        Delivery {
            delivery_id: "a".repeat(64),
            partner: "acme".into(),
            product: ProductKind::Daily,
            period: "2026-11-27".into(),
            files: vec![DeliveryFile {
                data: f("acme_daily_2026-11-27.parquet"),
                manifest: f("acme_daily_2026-11-27.parquet.manifest.json"),
            }],
            dictionary: Some(f("acme_daily_dictionary.pt-BR.md")),
            new_dictionary: None,
            upstream: vec![],
            checked: false,
        }
    }

    #[test]
    fn without_data_only_manifests_and_dictionaries_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = delivery();
        let put = |f: &mut LocalFile, text: &str| {
            f.path = dir.path().join(&f.name);
            std::fs::write(&f.path, text).unwrap();
            (f.bytes, f.sha256) = hash_file(&f.path).unwrap();
        };
        put(&mut d.files[0].manifest, "{}");
        put(d.dictionary.as_mut().unwrap(), "# dicionário");
        // The data file was never downloaded (the e-mail only names it).
        d.files[0].data.path = dir.path().join("absent.parquet");
        assert!(d.verify_local_files("email", false).is_ok());
        let e = d.verify_local_files("sftp", true).unwrap_err();
        assert!(e.is_transient(), "{e}");
        // A manifest that changed on disk fails either way.
        std::fs::write(&d.files[0].manifest.path, "{ }").unwrap();
        assert!(d.verify_local_files("email", false).is_err());
        // Files checked as they downloaded are not read again.
        d.checked = true;
        assert!(d.verify_local_files("sftp", true).is_ok());
    }

    #[test]
    fn names_that_could_escape_a_folder_are_invalid() {
        assert!(delivery().validate("sftp").is_ok());
        type Change = fn(&mut Delivery);
        let cases: [(&str, Change); 6] = [
            ("delivery id", |d| d.delivery_id = "../x".into()),
            ("partner", |d| d.partner = "a/b".into()),
            ("file name", |d| {
                d.files[0].data.name = "../../etc/passwd".into()
            }),
            ("file name", |d| d.files[0].manifest.name = ".hidden".into()),
            ("file name", |d| {
                if let Some(x) = d.dictionary.as_mut() {
                    x.name = "a/b.md".into()
                }
            }),
            ("no data file", |d| d.files.clear()),
        ];
        for (expected, change) in cases {
            let mut d = delivery();
            change(&mut d);
            let e = d.validate("sftp").unwrap_err();
            assert!(!e.is_transient());
            assert!(e.to_string().contains(expected), "{e}");
        }
    }

    #[test]
    fn errors_classify_and_name_their_kind() {
        let t = SinkError::Transient {
            sink: "api",
            message: "http 503".into(),
        };
        assert!(t.is_transient() && t.kind() == "transient");
        let p = SinkError::Rejected {
            sink: "api",
            message: "http 400".into(),
        };
        assert!(!p.is_transient() && p.kind() == "partner_rejected");
        assert_eq!(p.to_string(), "api: rejected: http 400");
    }

    #[test]
    fn receipts_round_trip_as_json() {
        let r = receipt("sftp", &delivery(), vec![], false);
        let back: Receipt = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
