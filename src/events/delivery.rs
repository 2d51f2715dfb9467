//! `DeliveryRequest` (topic `deliveries`): one message per new product version.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Incoming, Malformed, Outgoing};

/// Layout version of [`DeliveryRequest`].
pub const DELIVERY_REQUEST_VERSION: u32 = 1;

/// An object to fetch, with what proves it is the right one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// `gs://bucket/name`.
    pub uri: String,
    /// SHA-256 hex of its bytes.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// One data file of a delivery and its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryFile {
    /// File name as delivered.
    pub name: String,
    /// `parquet` or `csv`.
    pub format: String,
    /// Data rows.
    pub rows: u64,
    /// The data file.
    pub file: FileDigest,
    /// Its manifest (`<file>.manifest.json`).
    pub manifest: FileDigest,
}

/// A request to deliver one product version through the partner's sinks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRequest {
    /// Layout version.
    pub schema_version: u32,
    /// SHA-256 of `partner|product|period|product_version` (products.md).
    pub delivery_id: String,
    /// Partner name.
    pub partner: String,
    /// `daily` or `monthly`.
    pub product: String,
    /// `YYYY-MM-DD` or `YYYY-MM`.
    pub period: String,
    /// SHA-256 of the reference (Parquet) file.
    pub product_version: String,
    /// Files of the delivery (Parquet first).
    pub files: Vec<DeliveryFile>,
    /// The data dictionary (pt-BR).
    pub dictionary: FileDigest,
    /// The sinks that must deliver it (`sftp`, `api`).
    pub sinks: Vec<String>,
    /// Batches the files were built from.
    pub source_batches: Vec<String>,
    /// Generation of the marker of the batch whose step built it (Cloud Storage generations are
    /// microsecond timestamps): where `datashare.e2e.latency` starts. Absent for monthly
    /// products and in requests published before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker_generation: Option<i64>,
}

impl DeliveryRequest {
    /// The attributes: `partner`, `product`, `period`, `delivery_id` and `sink_<name>` per sink.
    pub fn attributes(&self) -> BTreeMap<String, String> {
        let mut a = BTreeMap::from([
            ("partner".to_string(), self.partner.clone()),
            ("product".to_string(), self.product.clone()),
            ("period".to_string(), self.period.clone()),
            ("delivery_id".to_string(), self.delivery_id.clone()),
        ]);
        for s in &self.sinks {
            a.insert(format!("sink_{s}"), "true".to_string());
        }
        a
    }

    /// Encodes the message.
    pub fn to_message(&self) -> Outgoing {
        Outgoing {
            data: serde_json::to_vec(self).expect("delivery request encodes"),
            attributes: self.attributes(),
        }
    }

    /// Decodes a received message.
    pub fn parse(msg: &Incoming) -> Result<DeliveryRequest, Malformed> {
        let d: DeliveryRequest = serde_json::from_slice(&msg.data)
            .map_err(|e| Malformed(format!("delivery request: {e}")))?;
        if d.schema_version != DELIVERY_REQUEST_VERSION {
            return Err(Malformed(format!(
                "delivery request schema version {}",
                d.schema_version
            )));
        }
        Ok(d)
    }
}

/// A product a partner can buy.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ProductKind {
    /// One row per completed order line of day D.
    Daily,
    /// One row per (uf, city, product) of month M.
    Monthly,
    /// One row per (level, uf, city, brand) of month M: the monthly brand view.
    MonthlyBrands,
}

impl ProductKind {
    /// Every product kind, in file-name order.
    pub const ALL: [ProductKind; 3] = [
        ProductKind::Daily,
        ProductKind::Monthly,
        ProductKind::MonthlyBrands,
    ];

    /// The name used in file names, folders, manifests and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ProductKind::Daily => "daily",
            ProductKind::Monthly => "monthly",
            ProductKind::MonthlyBrands => "monthly_brands",
        }
    }

    /// Parses the name [`ProductKind::as_str`] gives.
    pub fn parse(s: &str) -> Option<ProductKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Returns true for the products of a month (built once the month's batches are complete).
    pub fn is_monthly(self) -> bool {
        matches!(self, ProductKind::Monthly | ProductKind::MonthlyBrands)
    }
}

impl fmt::Display for ProductKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_name_every_sink() {
        let digest = |u: &str| FileDigest {
            uri: u.into(),
            sha256: "ab".into(),
            bytes: 1,
        };
        let d = DeliveryRequest {
            schema_version: DELIVERY_REQUEST_VERSION,
            delivery_id: "id".into(),
            partner: "p".into(),
            product: "daily".into(),
            period: "2026-11-27".into(),
            product_version: "ab".into(),
            files: vec![DeliveryFile {
                name: "p_daily_2026-11-27.parquet".into(),
                format: "parquet".into(),
                rows: 3,
                file: digest("gs://b/f"),
                manifest: digest("gs://b/f.manifest.json"),
            }],
            dictionary: digest("gs://b/d"),
            sinks: vec!["sftp".into(), "api".into()],
            source_batches: vec!["2026-11-27".into()],
            marker_generation: Some(1_764_300_000_000_000),
        };
        let m = d.to_message();
        assert_eq!(m.attributes["sink_sftp"], "true");
        assert_eq!(m.attributes["sink_api"], "true");
        assert_eq!(m.attributes["delivery_id"], "id");
        assert_eq!(m.attributes["period"], "2026-11-27");
        assert!(!m.attributes.contains_key("sink_email"));
        let back = DeliveryRequest::parse(&Incoming {
            data: m.data,
            ..Incoming::default()
        })
        .unwrap();
        assert_eq!(back, d);

        // A request published before `marker_generation` existed still parses; without one the
        // field is left out.
        let mut old: serde_json::Value = serde_json::to_value(&d).unwrap();
        old.as_object_mut().unwrap().remove("marker_generation");
        let parsed = DeliveryRequest::parse(&Incoming {
            data: serde_json::to_vec(&old).unwrap(),
            ..Incoming::default()
        })
        .unwrap();
        assert_eq!(parsed.marker_generation, None);
        assert!(
            !String::from_utf8(parsed.to_message().data)
                .unwrap()
                .contains("marker_generation")
        );
    }
}
