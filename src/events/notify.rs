//! `Notify` (topic `notify`): every data sink delivered a product version; the partner e-mail
//! sink consumes it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{DeliveryRequest, Incoming, Malformed, Outgoing, Receipt};

/// Layout version of [`Notify`].
pub const NOTIFY_VERSION: u32 = 1;

/// Every data sink of a delivery stored its receipt: time to tell the partner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notify {
    /// Layout version.
    pub schema_version: u32,
    /// The delivery id.
    pub delivery_id: String,
    /// Partner name.
    pub partner: String,
    /// `daily` or `monthly`.
    pub product: String,
    /// `YYYY-MM-DD` or `YYYY-MM`.
    pub period: String,
    /// The delivery request (files, manifests, dictionary).
    pub request: DeliveryRequest,
    /// The receipts of the data sinks.
    pub receipts: Vec<Receipt>,
}

impl Notify {
    /// Builds the message for a request and its data sinks' receipts.
    pub fn new(request: &DeliveryRequest, receipts: Vec<Receipt>) -> Notify {
        Notify {
            schema_version: NOTIFY_VERSION,
            delivery_id: request.delivery_id.clone(),
            partner: request.partner.clone(),
            product: request.product.clone(),
            period: request.period.clone(),
            request: request.clone(),
            receipts,
        }
    }

    /// Encodes the message (attributes: `partner`, `product`, `period`, `delivery_id`).
    pub fn to_message(&self) -> Outgoing {
        Outgoing {
            data: serde_json::to_vec(self).expect("notify encodes"),
            attributes: BTreeMap::from([
                ("partner".to_string(), self.partner.clone()),
                ("product".to_string(), self.product.clone()),
                ("period".to_string(), self.period.clone()),
                ("delivery_id".to_string(), self.delivery_id.clone()),
            ]),
        }
    }

    /// Decodes a received message.
    pub fn parse(msg: &Incoming) -> Result<Notify, Malformed> {
        let n: Notify =
            serde_json::from_slice(&msg.data).map_err(|e| Malformed(format!("notify: {e}")))?;
        if n.schema_version != NOTIFY_VERSION {
            return Err(Malformed(format!(
                "notify schema version {}",
                n.schema_version
            )));
        }
        if n.delivery_id != n.request.delivery_id || n.partner != n.request.partner {
            return Err(Malformed("notify does not match its request".into()));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{DeliveryFile, FileDigest, delivery::DELIVERY_REQUEST_VERSION};

    #[test]
    fn round_trips_and_refuses_a_mismatched_request() {
        let digest = |u: &str| FileDigest {
            uri: u.into(),
            sha256: "ab".into(),
            bytes: 1,
        };
        let req = DeliveryRequest {
            schema_version: DELIVERY_REQUEST_VERSION,
            delivery_id: "c".repeat(64),
            partner: "acme".into(),
            product: "daily".into(),
            period: "2026-11-27".into(),
            product_version: "ab".into(),
            files: vec![DeliveryFile {
                name: "acme_daily_2026-11-27.csv".into(),
                format: "csv".into(),
                rows: 3,
                file: digest("gs://b/f"),
                manifest: digest("gs://b/f.manifest.json"),
            }],
            dictionary: digest("gs://b/d"),
            sinks: vec!["sftp".into()],
            source_batches: vec![],
            marker_generation: None,
        };
        let n = Notify::new(&req, vec![]);
        let m = n.to_message();
        assert_eq!(m.attributes["delivery_id"], req.delivery_id);
        let incoming = |data: Vec<u8>| Incoming {
            data,
            ..Incoming::default()
        };
        assert_eq!(Notify::parse(&incoming(m.data)).unwrap(), n);
        let mut bad = n.clone();
        bad.partner = "other".into();
        assert!(Notify::parse(&incoming(serde_json::to_vec(&bad).unwrap())).is_err());
        assert!(Notify::parse(&incoming(b"{}".to_vec())).is_err());
    }
}
