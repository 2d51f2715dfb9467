//! Step 3: `datashare deliver --sink <name>`, a sink's consumer.
//!
//! `sftp`, `api` (subscriptions `deliveries-<sink>`): a [`DeliveryRequest`] in; the files and
//! manifests downloaded from the products bucket (sizes and SHA-256 checked), delivered once
//! ([`deliver_once`] with receipts in the ops bucket), then the notify of step 4
//! ([`super::notify`]) if this receipt completed the set. `email` (subscription `notify-email`)
//! runs step 4's e-mail. Every sink role also reads ticks (`schedules-<sink>`) to check its own
//! sink's connections before a deadline ([`super::check`]).
//!
//! Sinks are built for every contract at start-up, so a misconfigured sink stops the service
//! before the first message. Transient sink errors nack; permanent ones dead-letter with the
//! sink error's kind (`partner_rejected`, `host_key`, `sink_auth`, `sink_config`, ...).

use std::collections::BTreeMap;
use std::ops::Deref;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::events::ProductKind;
use crate::events::{DeliveryRequest, ErrorKind, FileDigest, Incoming};
use crate::products::contract::Contract;
use crate::service::{Disposition, HandleError, Role, RoleContext};
use crate::sinks::{
    AnySink, Delivery, DeliveryFile, GcsReceipts, LocalFile, ReceiptError, ReceiptStore, Sink,
    SinkError, deliver_once,
};
use tracing::Instrument;

/// The sink names `datashare deliver --sink` accepts.
pub const SINKS: [&str; 3] = ["sftp", "api", "email"];

/// The deliver role could not start.
#[derive(Debug, thiserror::Error)]
pub enum DeliverStartError {
    /// Not a sink name.
    #[error("unknown sink {0:?} (expected sftp, api or email)")]
    UnknownSink(String),
    /// The configuration has no subscription for this sink.
    #[error("no [gcp.subscriptions.{0}] in the configuration")]
    NoSubscription(String),
    /// A partner contract is unusable.
    #[error(transparent)]
    Contract(#[from] crate::products::contract::ContractError),
    /// A partner's sink is misconfigured (the message names the sink, never a secret).
    #[error("partner {partner}: {error}")]
    Sink {
        /// The partner.
        partner: String,
        /// The cause (in the message, not a separate source, so it prints once).
        error: SinkError,
    },
    /// A client could not be created.
    #[error(transparent)]
    Client(#[from] crate::gcp::ClientError),
}

/// One sink's consumer: its partners' sinks, receipts in the ops bucket, publishers.
#[derive(Debug)]
pub struct Deliver {
    context: RoleContext,
    pub(super) sink: &'static str,
    pub(super) receipts: GcsReceipts,
    pub(super) contracts: BTreeMap<String, Contract>,
    pub(super) sinks: BTreeMap<String, AnySink>,
}

impl Deref for Deliver {
    type Target = RoleContext;
    fn deref(&self) -> &RoleContext {
        &self.context
    }
}

impl Deliver {
    /// Builds the consumer of sink `name`: every contract's sink of that kind, with its secrets.
    pub async fn start(config: Config, name: &str) -> Result<Deliver, DeliverStartError> {
        let sink = SINKS
            .into_iter()
            .find(|s| *s == name)
            .ok_or_else(|| DeliverStartError::UnknownSink(name.to_string()))?;
        if config.role_subscriptions(sink).is_empty() {
            return Err(DeliverStartError::NoSubscription(sink.to_string()));
        }
        let settings = config.sink_settings();
        let mut contracts = BTreeMap::new();
        let mut sinks = BTreeMap::new();
        for c in crate::products::contract::load_dir(&config.worker.partners_dir)? {
            if let Some(sc) = c.sinks.iter().find(|s| s.name() == sink) {
                let built =
                    AnySink::build(&c, sc, &settings).map_err(|error| DeliverStartError::Sink {
                        partner: c.name.clone(),
                        error,
                    })?;
                sinks.insert(c.name.clone(), built);
            }
            contracts.insert(c.name.clone(), c);
        }
        let t = &config.gcp.topics;
        let topics = vec![t.notify.clone(), t.alerts.clone()];
        let context = RoleContext::connect(sink, config, topics).await?;
        let receipts =
            GcsReceipts::new(context.gcs.clone(), context.config.gcp.buckets.ops.clone());
        tracing::info!(
            sink,
            partners = sinks.len(),
            contracts = contracts.len(),
            "deliver ready"
        );
        Ok(Deliver {
            context,
            sink,
            receipts,
            contracts,
            sinks,
        })
    }

    /// The receipts in the ops bucket.
    pub fn receipts(&self) -> &GcsReceipts {
        &self.receipts
    }

    pub(super) fn partner_sink(&self, partner: &str) -> Result<&AnySink, HandleError> {
        self.sinks
            .get(partner)
            .ok_or_else(|| HandleError::Permanent {
                kind: ErrorKind::UnknownPartner,
                message: format!(
                    "partner {partner:?} has no contract with a {} sink",
                    self.sink
                ),
            })
    }

    /// A data sink's message: deliver once, then publish the notify if this completed the set.
    pub(super) async fn handle_request(&self, msg: &Incoming) -> Result<Disposition, HandleError> {
        let attr = format!("sink_{}", self.sink);
        if msg.attributes.get(&attr).map(String::as_str) != Some("true") {
            tracing::info!(attribute = %attr, "not for this sink, acknowledged");
            return Ok(Disposition::Done);
        }
        let req = DeliveryRequest::parse(msg)?;
        let sink = self.partner_sink(&req.partner)?;
        let existing = self
            .receipts
            .get(&req.partner, self.sink, &req.delivery_id)
            .await
            .map_err(receipt_error)?;
        if existing.is_some() {
            crate::telemetry::metrics::delivery(
                self.sink,
                &req.partner,
                crate::telemetry::metrics::DeliveryOutcome::AlreadyDelivered,
                std::time::Duration::ZERO,
                0,
            );
            tracing::info!(delivery_id = %req.delivery_id, "receipt exists, not delivering again");
        } else {
            let tmp = self.tempdir()?;
            // The sink's connection opens while the files download.
            sink.open_ahead();
            let delivery = self.download(&req, tmp.path(), sink.sends_data()).await?;
            deliver_once(sink, &self.receipts, &delivery)
                .await
                .map_err(sink_error)?;
        }
        self.notify_if_complete(&req)
            .instrument(tracing::info_span!("notify"))
            .await?;
        Ok(Disposition::Done)
    }

    /// Downloads a request's files and manifests into `dir` and describes them. Without
    /// `data`, the data files are described (name, size, SHA-256 from the request) but not
    /// downloaded: their paths in `dir` stay empty, for a sink that only names them.
    pub(super) async fn download(
        &self,
        req: &DeliveryRequest,
        dir: &Path,
        data: bool,
    ) -> Result<Delivery, HandleError> {
        let Some(product) = ProductKind::parse(&req.product) else {
            return Err(HandleError::Permanent {
                kind: ErrorKind::InvalidDelivery,
                message: format!("unknown product {:?}", req.product),
            });
        };
        // Every object at once: each download is a round trip of its own to the bucket.
        let files = req.files.iter().map(|f| async move {
            let file = async {
                match data {
                    true => self.download_file(&f.file, dir).await,
                    false => local_file(&f.file, dir),
                }
            };
            let (mut data, manifest) =
                tokio::try_join!(file, self.download_file(&f.manifest, dir))?;
            data.name = f.name.clone();
            Ok::<_, HandleError>(DeliveryFile { data, manifest })
        });
        // The dictionary is one of the product version's files: it goes where the files go.
        let (files, dictionary) = tokio::try_join!(
            futures::future::try_join_all(files),
            self.download_file(&req.dictionary, dir)
        )?;
        // Every downloaded file was checked against the request's size and SHA-256 as it
        // arrived (a mismatch is transient: a fresh download may fix it); the data files a sink
        // only names are not read.
        Ok(Delivery {
            delivery_id: req.delivery_id.clone(),
            partner: req.partner.clone(),
            product,
            period: req.period.clone(),
            files,
            dictionary: Some(dictionary),
            new_dictionary: None,
            upstream: Vec::new(),
            checked: true,
        })
    }

    /// Downloads one `gs://` object into `dir` under its last name segment, hashing it on the
    /// way: a size or SHA-256 other than the request's is a transient error.
    pub(super) async fn download_file(
        &self,
        f: &FileDigest,
        dir: &Path,
    ) -> Result<LocalFile, HandleError> {
        let local = local_file(f, dir)?;
        let (bucket, name) = gs_parts(&f.uri).unwrap_or_default();
        let (mut hash, mut bytes) = (Sha256::new(), 0u64);
        let hashing = |piece: &[u8]| {
            hash.update(piece);
            bytes += piece.len() as u64;
        };
        if self
            .gcs
            .download_with(bucket, name, None, &local.path, hashing)
            .await?
            .is_none()
        {
            return Err(HandleError::Transient(format!("{} not found", f.uri)));
        }
        let sha256 = hex::encode(hash.finalize());
        if bytes != f.bytes || sha256 != f.sha256 {
            return Err(HandleError::Transient(format!(
                "{}: {bytes} bytes with SHA-256 {sha256}, the request says {} bytes with {}",
                f.uri, f.bytes, f.sha256
            )));
        }
        Ok(local)
    }
}

/// The bucket and object name of a `gs://` URI.
fn gs_parts(uri: &str) -> Option<(&str, &str)> {
    uri.strip_prefix("gs://").and_then(|r| r.split_once('/'))
}

/// Where `f` goes in `dir` (under its last name segment), with its declared size and SHA-256.
fn local_file(f: &FileDigest, dir: &Path) -> Result<LocalFile, HandleError> {
    let invalid = |m: String| HandleError::Permanent {
        kind: ErrorKind::InvalidDelivery,
        message: m,
    };
    let (_, name) =
        gs_parts(&f.uri).ok_or_else(|| invalid(format!("{:?} is not a gs:// URI", f.uri)))?;
    let file_name = name.rsplit('/').next().unwrap_or(name);
    if file_name.is_empty() || file_name.starts_with('.') {
        return Err(invalid(format!("{:?} has no file name", f.uri)));
    }
    Ok(LocalFile {
        name: file_name.to_string(),
        path: dir.join(file_name),
        bytes: f.bytes,
        sha256: f.sha256.clone(),
    })
}

pub(super) fn sink_error(e: SinkError) -> HandleError {
    match e.error_kind() {
        Some(kind) => HandleError::Permanent {
            kind,
            message: e.to_string(),
        },
        None => HandleError::Transient(e.to_string()),
    }
}

pub(super) fn receipt_error(e: ReceiptError) -> HandleError {
    if e.is_transient() {
        HandleError::Transient(format!("receipts: {e}"))
    } else {
        HandleError::Permanent {
            kind: ErrorKind::Receipts,
            message: e.to_string(),
        }
    }
}

impl Role for Deliver {
    fn context(&self) -> &RoleContext {
        &self.context
    }

    async fn handle_message(
        &self,
        subscription: &str,
        msg: &Incoming,
    ) -> Result<Disposition, HandleError> {
        if !self.consumes(subscription) {
            return Err(HandleError::Transient(format!(
                "the {} sink does not consume subscription {subscription}",
                self.sink
            )));
        }
        if self.config.source_topic(subscription) == Some(self.config.gcp.topics.schedules.as_str())
        {
            self.handle_schedule(msg).await
        } else if self.sink == "email" {
            self.handle_notify(msg).await
        } else {
            self.handle_request(msg).await
        }
    }
}
