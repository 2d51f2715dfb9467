//! The Cloud Storage notification (payload format `JSON_API_V1`) of the raw bucket.

use std::fmt;

use serde::Deserialize;

use super::{Incoming, Malformed};

/// One generation of one object: the idempotency key of a part.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// Bucket name.
    pub bucket: String,
    /// Object name.
    pub name: String,
    /// Object generation.
    pub generation: i64,
}

impl fmt::Display for ObjectRef {
    /// Formats `bucket/name#generation`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}#{}", self.bucket, self.name, self.generation)
    }
}

/// The object resource in the notification's data (the fields the worker reads).
#[derive(Debug, Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectResource {
    /// Object name.
    pub name: String,
    /// Bucket name.
    pub bucket: String,
    /// Generation, as a decimal string.
    pub generation: String,
    /// Size in bytes, as a decimal string.
    #[serde(default)]
    pub size: Option<String>,
    /// Content type.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Content encoding (`gzip` when stored compressed).
    #[serde(default)]
    pub content_encoding: Option<String>,
}

/// A GCS notification: the event and the object it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcsNotification {
    /// `OBJECT_FINALIZE`, `OBJECT_DELETE`, ...
    pub event_type: String,
    /// The object generation.
    pub object: ObjectRef,
    /// Size in bytes, when the data carried it.
    pub size: Option<u64>,
}

/// The event type of a new object generation.
pub const OBJECT_FINALIZE: &str = "OBJECT_FINALIZE";

impl GcsNotification {
    /// Parses the attributes, cross-checked with the object resource when the data has one.
    pub fn parse(msg: &Incoming) -> Result<GcsNotification, Malformed> {
        let attr = |k: &str| {
            msg.attributes
                .get(k)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| Malformed(format!("gcs notification without attribute {k}")))
        };
        let event_type = attr("eventType")?.clone();
        let bucket = attr("bucketId")?.clone();
        let name = attr("objectId")?.clone();
        let generation: i64 = attr("objectGeneration")?
            .parse()
            .map_err(|_| Malformed("objectGeneration is not a number".into()))?;
        let mut size = None;
        if !msg.data.is_empty() {
            let r: ObjectResource = serde_json::from_slice(&msg.data)
                .map_err(|e| Malformed(format!("gcs notification data: {e}")))?;
            if r.name != name || r.bucket != bucket || r.generation != generation.to_string() {
                return Err(Malformed(
                    "gcs notification data names another object than its attributes".into(),
                ));
            }
            size = r.size.and_then(|s| s.parse().ok());
        }
        Ok(GcsNotification {
            event_type,
            object: ObjectRef {
                bucket,
                name,
                generation,
            },
            size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(data: &str, attrs: &[(&str, &str)]) -> Incoming {
        Incoming {
            id: "1".into(),
            data: data.as_bytes().to_vec(),
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            delivery_attempt: None,
        }
    }

    const ATTRS: &[(&str, &str)] = &[
        ("eventType", "OBJECT_FINALIZE"),
        ("payloadFormat", "JSON_API_V1"),
        ("bucketId", "raw"),
        (
            "objectId",
            "extracts/transactions/dt=2026-11-27/part-000.csv",
        ),
        ("objectGeneration", "1764300000123456"),
        ("eventTime", "2026-11-28T03:00:00Z"),
    ];

    #[test]
    fn parses_a_real_notification() {
        let data = r#"{"kind":"storage#object","name":"extracts/transactions/dt=2026-11-27/part-000.csv",
            "bucket":"raw","generation":"1764300000123456","size":"42","md5Hash":"x","crc32c":"y",
            "contentType":"text/csv","timeCreated":"2026-11-28T03:00:00Z"}"#;
        let n = GcsNotification::parse(&msg(data, ATTRS)).unwrap();
        assert_eq!(n.event_type, OBJECT_FINALIZE);
        assert_eq!(n.size, Some(42));
        assert_eq!(
            n.object.to_string(),
            "raw/extracts/transactions/dt=2026-11-27/part-000.csv#1764300000123456"
        );
    }

    #[test]
    fn refuses_what_is_not_a_notification() {
        assert!(GcsNotification::parse(&msg("", &ATTRS[..3])).is_err());
        let mut bad = ATTRS.to_vec();
        bad[4] = ("objectGeneration", "soon");
        assert!(GcsNotification::parse(&msg("", &bad)).is_err());
        assert!(GcsNotification::parse(&msg("not json", ATTRS)).is_err());
        let other = r#"{"name":"other","bucket":"raw","generation":"1764300000123456"}"#;
        assert!(GcsNotification::parse(&msg(other, ATTRS)).is_err());
        assert!(GcsNotification::parse(&msg("", ATTRS)).is_ok());
    }
}
