//! Step 4: the partner e-mail. The data sink whose receipt completes a delivery's set publishes
//! one [`Notify`] under a claim (`notify/<delivery id>`; the marker `notify/<delivery
//! id>.published` acknowledges later redeliveries); the e-mail sink (`notify-email`) sends the
//! partner e-mail once, with the data dictionary attached on the product's first delivery or a
//! schema change (`dictionaries/<partner>/<product>/<schema fingerprint>` in the ops bucket).
//! Whoever finishes a version (the e-mail sink, or for a partner without one the data sink
//! completing the set) records it as the product's last delivered one ([`super::delivered`]).

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::deliver::{Deliver, receipt_error, sink_error};
use super::delivered::{self, LastDelivered};
use crate::events::{DeliveryRequest, Incoming, Notify};
use crate::service::claim::{self, Claim};
use crate::service::{Disposition, HandleError};
use crate::sinks::{Delivery, ReceiptStore, Sink, deliver_once};

/// How long a notify claim holds before a redelivery may take it over.
pub const NOTIFY_LEASE: Duration = Duration::from_secs(60);

/// How long a sink that finds the notify claim held waits for its holder's marker before it
/// hands the message back for a redelivery.
pub const NOTIFY_HOLDER_WAIT: Duration = Duration::from_secs(5);

impl Deliver {
    /// Publishes one notify once every sink of the request has its receipt.
    pub(super) async fn notify_if_complete(
        &self,
        req: &DeliveryRequest,
    ) -> Result<(), HandleError> {
        let Some(contract) = self.contracts.get(&req.partner) else {
            return Ok(());
        };
        let email = contract.sinks.iter().any(|s| s.name() == "email");
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
        if !email {
            tracing::info!(partner = %req.partner, "no email sink, no notify");
            let last = data
                .iter()
                .map(|r| r.delivered_at)
                .max()
                .unwrap_or_else(Utc::now);
            return self.mark_delivered(req, last).await;
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
                // Most often two sinks finished together and the other one is publishing: its
                // marker comes within milliseconds, and this message needs no redelivery (nor
                // this sink a second, "already delivered" pass). A holder that died is taken
                // over on a redelivery once its lease ends.
                if self.marker_appears(ops, &marker).await? {
                    tracing::info!(holder = %owner, "notify published by its claim's holder");
                    return Ok(());
                }
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

    /// Whether `marker` exists in `bucket` within [`NOTIFY_HOLDER_WAIT`] (polled).
    async fn marker_appears(&self, bucket: &str, marker: &str) -> Result<bool, HandleError> {
        let deadline = tokio::time::Instant::now() + NOTIFY_HOLDER_WAIT;
        loop {
            if self.gcs.stat(bucket, marker).await?.is_some() {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The e-mail sink's message.
    pub(super) async fn handle_notify(&self, msg: &Incoming) -> Result<Disposition, HandleError> {
        let n = Notify::parse(msg)?;
        let sink = self.partner_sink(&n.partner)?;
        let existing = self
            .receipts
            .get(&n.partner, self.sink, &n.delivery_id)
            .await
            .map_err(receipt_error)?;
        if let Some(r) = existing {
            tracing::info!(delivery_id = %n.delivery_id, "e-mail receipt exists, not sending again");
            // A redelivery after the record below failed: written now.
            self.mark_delivered(&n.request, r.delivered_at).await?;
            return Ok(Disposition::Done);
        }
        let tmp = self.tempdir()?;
        let mut delivery = self
            .download(&n.request, tmp.path(), sink.sends_data())
            .await?;
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
        let receipt = deliver_once(sink, &self.receipts, &delivery)
            .await
            .map_err(sink_error)?;
        if !receipt.already_present
            && let Some(secs) = delivered::record_e2e_latency(&n.request, receipt.delivered_at)
        {
            tracing::info!(delivery_id = %n.delivery_id, e2e_latency_secs = secs, "marker upload to partner e-mail");
        }
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
        self.mark_delivered(&n.request, receipt.delivered_at)
            .await?;
        Ok(Disposition::Done)
    }

    /// Records `req`'s version as its product's last delivered one, delivered at `at`.
    async fn mark_delivered(
        &self,
        req: &DeliveryRequest,
        at: DateTime<Utc>,
    ) -> Result<(), HandleError> {
        let rec = LastDelivered {
            delivery_id: req.delivery_id.clone(),
            period: req.period.clone(),
            delivered_at: at,
            marker_generation: req.marker_generation,
        };
        delivered::record(&self.gcs, &self.config.gcp.buckets.ops, req, &rec).await?;
        Ok(())
    }
}

/// The schema fingerprint of a delivery's first manifest.
fn schema_fingerprint(d: &Delivery) -> Option<String> {
    let bytes = std::fs::read(&d.files.first()?.manifest.path).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let fp = v.get("schema_fingerprint")?.as_str()?;
    (!fp.is_empty() && fp.bytes().all(|b| b.is_ascii_alphanumeric())).then(|| fp.to_string())
}
