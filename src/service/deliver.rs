//! `datashare deliver --sink <name>`: a sink's consumer.
//!
//! - `sftp`, `api` (subscriptions `deliveries-<sink>`): a [`DeliveryRequest`] in; the files and
//!   manifests downloaded from the products bucket (sizes and SHA-256 checked), delivered once
//!   ([`deliver_once`] with receipts in the ops bucket). The sink whose receipt completes the
//!   request's set publishes one [`Notify`] under a claim (`notify/<delivery id>`), and a marker
//!   (`notify/<delivery id>.published`) acknowledges later redeliveries.
//! - `email` (subscription `notify-email`): a [`Notify`] in; the partner e-mail, with the data
//!   dictionary attached on the product's first delivery or a schema change
//!   (`dictionaries/<partner>/<product>/<schema fingerprint>` in the ops bucket).
//!
//! Sinks are built for every contract at start-up, so a misconfigured sink stops the service
//! before the first message. Transient sink errors nack; permanent ones dead-letter with the
//! sink error's kind (`partner_rejected`, `host_key`, `sink_auth`, `sink_config`, ...).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::claim::{self, Claim};
use super::{Disposition, HandleError, Role, instance_owner};
use crate::config::Config;
use crate::events::{DeliveryRequest, ErrorKind, FileDigest, Incoming, Notify};
use crate::gcp::{Bus, Gcs};
use crate::products::contract::{Contract, ProductKind};
use crate::sinks::{
    AnySink, Delivery, DeliveryFile, GcsReceipts, LocalFile, ReceiptError, ReceiptStore, SinkError,
    deliver_once,
};

/// The sink names `datashare deliver --sink` accepts.
pub const SINKS: [&str; 3] = ["sftp", "api", "email"];

/// How long a notify claim holds before a redelivery may take it over.
pub const NOTIFY_LEASE: Duration = Duration::from_secs(60);

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
    sink: &'static str,
    config: Arc<Config>,
    gcs: Gcs,
    bus: Bus,
    receipts: GcsReceipts,
    contracts: BTreeMap<String, Contract>,
    sinks: BTreeMap<String, AnySink>,
    owner: String,
    tmp_root: PathBuf,
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
        let gcs = Gcs::connect(config.emulators.storage.as_deref()).await?;
        let g = &config.gcp;
        let mut topics: Vec<&str> = vec![&g.topics.notify, &g.topics.alerts];
        topics.extend(config.role_dead_letter_topics(sink));
        let bus = Bus::connect(&g.project, &topics, config.emulators.pubsub.as_deref()).await?;
        let receipts = GcsReceipts::new(gcs.clone(), g.buckets.ops.clone());
        tracing::info!(
            sink,
            partners = sinks.len(),
            contracts = contracts.len(),
            "deliver ready"
        );
        Ok(Deliver {
            sink,
            config: Arc::new(config),
            gcs,
            bus,
            receipts,
            contracts,
            sinks,
            owner: instance_owner(),
            tmp_root: std::env::temp_dir(),
        })
    }

    /// The receipts in the ops bucket.
    pub fn receipts(&self) -> &GcsReceipts {
        &self.receipts
    }

    fn partner_sink(&self, partner: &str) -> Result<&AnySink, HandleError> {
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

    fn tempdir(&self) -> Result<tempfile::TempDir, HandleError> {
        tempfile::Builder::new()
            .prefix("datashare-deliver-")
            .tempdir_in(&self.tmp_root)
            .map_err(|e| HandleError::local("temporary folder", e))
    }

    /// A data sink's message: deliver once, then publish the notify if this completed the set.
    async fn handle_request(&self, msg: &Incoming) -> Result<Disposition, HandleError> {
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
            tracing::info!(delivery_id = %req.delivery_id, "receipt exists, not delivering again");
        } else {
            let tmp = self.tempdir()?;
            let delivery = self.download(&req, tmp.path()).await?;
            deliver_once(sink, &self.receipts, &delivery)
                .await
                .map_err(sink_error)?;
        }
        self.notify_if_complete(&req).await?;
        Ok(Disposition::Done)
    }

    /// Publishes one notify once every sink of the request has its receipt.
    async fn notify_if_complete(&self, req: &DeliveryRequest) -> Result<(), HandleError> {
        let Some(contract) = self.contracts.get(&req.partner) else {
            return Ok(());
        };
        if !contract.sinks.iter().any(|s| s.name() == "email") {
            tracing::info!(partner = %req.partner, "no email sink, no notify");
            return Ok(());
        }
        let all = self
            .receipts
            .list(&req.partner, &req.delivery_id)
            .await
            .map_err(receipt_error)?;
        let data: Vec<_> = all
            .into_iter()
            .filter(|r| req.sinks.contains(&r.sink))
            .collect();
        let missing: Vec<&String> = req
            .sinks
            .iter()
            .filter(|s| !data.iter().any(|r| &r.sink == *s))
            .collect();
        if !missing.is_empty() {
            tracing::info!(?missing, "waiting for other sinks before the notify");
            return Ok(());
        }
        let ops = &self.config.gcp.buckets.ops;
        let claim_name = format!("notify/{}", req.delivery_id);
        let marker = format!("notify/{}.published", req.delivery_id);
        if self.gcs.stat(ops, &marker).await?.is_some() {
            tracing::info!("notify already published");
            return Ok(());
        }
        match claim::take(&self.gcs, ops, &claim_name, &self.owner, NOTIFY_LEASE).await? {
            Claim::Held { owner, until } => {
                return Err(HandleError::Transient(format!(
                    "notify claim held by {owner} until {until}"
                )));
            }
            Claim::Taken { took_over, .. } => {
                if took_over && self.gcs.stat(ops, &marker).await?.is_some() {
                    return Ok(());
                }
            }
        }
        let notify = Notify::new(req, data);
        let id = self
            .bus
            .publish(&self.config.gcp.topics.notify, notify.to_message())
            .await?;
        match self
            .gcs
            .write(ops, &marker, id.clone().into_bytes(), Some(0))
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_precondition_failed() => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(message_id = %id, "notify published");
        Ok(())
    }

    /// The e-mail sink's message.
    async fn handle_notify(&self, msg: &Incoming) -> Result<Disposition, HandleError> {
        let n = Notify::parse(msg)?;
        let sink = self.partner_sink(&n.partner)?;
        let existing = self
            .receipts
            .get(&n.partner, self.sink, &n.delivery_id)
            .await
            .map_err(receipt_error)?;
        if existing.is_some() {
            tracing::info!(delivery_id = %n.delivery_id, "e-mail receipt exists, not sending again");
            return Ok(Disposition::Done);
        }
        let tmp = self.tempdir()?;
        let mut delivery = self.download(&n.request, tmp.path()).await?;
        delivery.upstream = n.receipts.clone();
        let Some(dict) = delivery.dictionary.clone() else {
            return Err(HandleError::Transient("dictionary not downloaded".into()));
        };
        let fingerprint = schema_fingerprint(&delivery).unwrap_or(dict.sha256.clone());
        let ops = &self.config.gcp.buckets.ops;
        let dict_marker = format!(
            "dictionaries/{}/{}/{}",
            n.partner, n.request.product, fingerprint
        );
        let first = self.gcs.stat(ops, &dict_marker).await?.is_none();
        if first {
            delivery.new_dictionary = Some(dict);
        }
        deliver_once(sink, &self.receipts, &delivery)
            .await
            .map_err(sink_error)?;
        if first {
            match self
                .gcs
                .write(
                    ops,
                    &dict_marker,
                    n.delivery_id.clone().into_bytes(),
                    Some(0),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_precondition_failed() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Disposition::Done)
    }

    /// Downloads a request's files and manifests into `dir` and describes them.
    async fn download(&self, req: &DeliveryRequest, dir: &Path) -> Result<Delivery, HandleError> {
        let Some(product) = ProductKind::parse(&req.product) else {
            return Err(HandleError::Permanent {
                kind: ErrorKind::InvalidDelivery,
                message: format!("unknown product {:?}", req.product),
            });
        };
        let mut files = Vec::with_capacity(req.files.len());
        for f in &req.files {
            let mut data = self.download_file(&f.file, dir).await?;
            data.name = f.name.clone();
            let manifest = self.download_file(&f.manifest, dir).await?;
            files.push(DeliveryFile { data, manifest });
        }
        // The dictionary is one of the product version's files: it goes where the files go.
        let dictionary = self.download_file(&req.dictionary, dir).await?;
        // Sizes and SHA-256 against the request: `deliver_once` checks them (a mismatch is
        // transient: a fresh download may fix it).
        Ok(Delivery {
            delivery_id: req.delivery_id.clone(),
            partner: req.partner.clone(),
            product,
            period: req.period.clone(),
            files,
            dictionary: Some(dictionary),
            new_dictionary: None,
            upstream: Vec::new(),
        })
    }

    /// Downloads one `gs://` object into `dir` under its last name segment.
    async fn download_file(&self, f: &FileDigest, dir: &Path) -> Result<LocalFile, HandleError> {
        let invalid = |m: String| HandleError::Permanent {
            kind: ErrorKind::InvalidDelivery,
            message: m,
        };
        let (bucket, name) = f
            .uri
            .strip_prefix("gs://")
            .and_then(|r| r.split_once('/'))
            .ok_or_else(|| invalid(format!("{:?} is not a gs:// URI", f.uri)))?;
        let file_name = name.rsplit('/').next().unwrap_or(name);
        if file_name.is_empty() || file_name.starts_with('.') {
            return Err(invalid(format!("{:?} has no file name", f.uri)));
        }
        let path = dir.join(file_name);
        if self
            .gcs
            .download(bucket, name, None, &path)
            .await?
            .is_none()
        {
            return Err(HandleError::Transient(format!("{} not found", f.uri)));
        }
        Ok(LocalFile {
            name: file_name.to_string(),
            path,
            bytes: f.bytes,
            sha256: f.sha256.clone(),
        })
    }
}

/// The schema fingerprint of a delivery's first manifest.
fn schema_fingerprint(d: &Delivery) -> Option<String> {
    let bytes = std::fs::read(&d.files.first()?.manifest.path).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let fp = v.get("schema_fingerprint")?.as_str()?;
    (!fp.is_empty() && fp.bytes().all(|b| b.is_ascii_alphanumeric())).then(|| fp.to_string())
}

fn sink_error(e: SinkError) -> HandleError {
    match ErrorKind::of_sink_error(&e) {
        Some(kind) => HandleError::Permanent {
            kind,
            message: e.to_string(),
        },
        None => HandleError::Transient(e.to_string()),
    }
}

fn receipt_error(e: ReceiptError) -> HandleError {
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
    fn role(&self) -> &str {
        self.sink
    }

    fn config(&self) -> &Config {
        &self.config
    }

    fn bus(&self) -> &Bus {
        &self.bus
    }

    async fn handle_message(
        &self,
        subscription: &str,
        msg: &Incoming,
    ) -> Result<Disposition, HandleError> {
        if !self
            .config
            .role_subscriptions(self.sink)
            .iter()
            .any(|(s, _)| *s == subscription)
        {
            return Err(HandleError::Transient(format!(
                "the {} sink does not consume subscription {subscription}",
                self.sink
            )));
        }
        if self.sink == "email" {
            self.handle_notify(msg).await
        } else {
            self.handle_request(msg).await
        }
    }
}

/// Arguments of `datashare deliver`.
#[derive(Debug, Clone, clap::Args)]
pub struct DeliverArgs {
    /// The sink to run: `sftp`, `api` or `email`.
    #[arg(long, value_parser = SINKS)]
    pub sink: String,
    /// How to serve.
    #[command(flatten)]
    pub serve: super::command::ServeArgs,
}

/// Runs a sink's consumer until SIGTERM or Ctrl-C; in-flight messages finish first.
pub fn run(args: &DeliverArgs) -> anyhow::Result<()> {
    let sink = args.sink.clone();
    super::command::serve(&args.serve, |config| async move {
        Ok(Deliver::start(config, &sink).await?)
    })
}
