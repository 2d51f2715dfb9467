//! The last delivered version of each partner product, for `datashare.product.freshness` and
//! `datashare.e2e.latency` (operations.md, "Metrics").
//!
//! - The batch step puts the generation of its batch's marker (a microsecond timestamp: when the
//!   exporter finished the day) in a daily product's delivery request (`marker_generation`).
//! - Once a product version has reached the partner (the partner e-mail sent; for a partner
//!   without an e-mail sink, every data sink's receipt stored), the sink that finished it
//!   overwrites one small record per partner product, `delivered/<partner>/<product>.json` in
//!   the ops bucket, unless a newer period is recorded there already (a replay of an old day
//!   does not make a late product look fresh); the e-mail sink also records the latency from
//!   the marker's upload to the e-mail.
//! - Each worker tick reads one record per configured partner product and records its age:
//!   bounded (one read per partner product), whatever the number of receipts kept.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::{Worker, names};
use crate::events::{DeliveryRequest, ProductKind};
use crate::gcp::{Gcs, GcsError};
use crate::products::Released;

/// What `delivered/<partner>/<product>.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastDelivered {
    /// The delivery id of the version.
    pub delivery_id: String,
    /// Its period (`YYYY-MM-DD` or `YYYY-MM`).
    pub period: String,
    /// When it reached the partner (the e-mail sent, or the last data sink's receipt).
    pub delivered_at: DateTime<Utc>,
    /// Generation of the batch marker it was built from, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker_generation: Option<i64>,
}

/// `delivered/<partner>/<product>.json` in the ops bucket.
pub fn record_name(partner: &str, product: &str) -> String {
    format!("delivered/{partner}/{product}.json")
}

/// Conditional writes tried before giving up on a record raced by other instances.
const ATTEMPTS: usize = 3;

/// Overwrites the record of `req`'s partner product with `rec`, unless it names a newer period
/// (compare-and-swap on the object's generation). Errors are Cloud Storage's (transient or not).
pub async fn record(
    gcs: &Gcs,
    ops: &str,
    req: &DeliveryRequest,
    rec: &LastDelivered,
) -> Result<(), GcsError> {
    let name = record_name(&req.partner, &req.product);
    let body = serde_json::to_vec(rec).unwrap_or_default();
    for _ in 0..ATTEMPTS {
        let current = gcs.read(ops, &name, None).await?;
        let generation = match &current {
            Some((bytes, generation)) => {
                let newer = serde_json::from_slice::<LastDelivered>(bytes)
                    .is_ok_and(|old| old.period > rec.period);
                if newer {
                    tracing::info!(partner = %req.partner, product = %req.product, period = %rec.period, "a newer period is recorded as delivered, kept");
                    return Ok(());
                }
                *generation
            }
            None => 0,
        };
        match gcs.write(ops, &name, body.clone(), Some(generation)).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_precondition_failed() => continue,
            Err(e) => return Err(e),
        }
    }
    tracing::warn!(partner = %req.partner, product = %req.product, "delivered record raced by other writers, left to them");
    Ok(())
}

/// Reads the record of a partner product, if any (an unreadable one counts as none).
pub async fn read(
    gcs: &Gcs,
    ops: &str,
    partner: &str,
    product: &str,
) -> Result<Option<LastDelivered>, GcsError> {
    let Some((bytes, _)) = gcs.read(ops, &record_name(partner, product), None).await? else {
        return Ok(None);
    };
    match serde_json::from_slice(&bytes) {
        Ok(r) => Ok(Some(r)),
        Err(e) => {
            tracing::warn!(error = %e, partner, product, "delivered record unreadable, ignored");
            Ok(None)
        }
    }
}

/// The time a Cloud Storage generation stands for (microseconds since the epoch), when it is a
/// plausible one.
pub fn generation_time(generation: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(generation).filter(|t| t.timestamp() > 1_000_000_000)
}

/// `datashare.e2e.latency` of a partner e-mail sent at `sent_at` for `req`: from its batch
/// marker's upload; nothing for a request without one (monthly products, older requests) or
/// with a generation that is not a time before `sent_at`.
pub fn record_e2e_latency(req: &DeliveryRequest, sent_at: DateTime<Utc>) -> Option<f64> {
    let start = generation_time(req.marker_generation?)?;
    let took = (sent_at - start).to_std().ok()?;
    crate::telemetry::metrics::e2e_latency(&req.partner, &req.product, took);
    Some(took.as_secs_f64())
}

impl Worker {
    /// The generation of the batch marker a daily product was built from (for its delivery
    /// request); `None` for other products or when the marker cannot be read (the latency is
    /// then not measured, the delivery goes on).
    pub(super) async fn marker_generation(&self, rel: &Released) -> Option<i64> {
        if rel.product != ProductKind::Daily {
            return None;
        }
        let dt = NaiveDate::parse_from_str(&rel.period, "%Y-%m-%d").ok()?;
        let raw = &self.config.gcp.buckets.raw;
        match self.gcs.stat(raw, &names::marker(dt)).await {
            Ok(meta) => meta.map(|m| m.generation),
            Err(e) => {
                tracing::warn!(error = %e, %dt, "marker not read, no e2e latency for this delivery");
                None
            }
        }
    }

    /// `datashare.product.freshness` of every configured partner product: the age at `at` of
    /// its last delivered version; nothing for a product never delivered. Returns the ages
    /// recorded (partner, product, seconds).
    pub async fn record_freshness(&self, at: DateTime<Utc>) -> Vec<(String, String, f64)> {
        let ops = &self.config.gcp.buckets.ops;
        let mut out = Vec::new();
        for c in self.contracts.iter() {
            for kind in ProductKind::ALL.into_iter().filter(|k| c.buys(*k)) {
                let product = kind.as_str();
                let last = match read(&self.gcs, ops, &c.name, product).await {
                    Ok(Some(last)) => last,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, partner = %c.name, product, "delivered record not read, no freshness this tick");
                        continue;
                    }
                };
                let age = (at - last.delivered_at).to_std().unwrap_or_default();
                crate::telemetry::metrics::product_freshness(&c.name, product, age);
                out.push((c.name.clone(), product.to_string(), age.as_secs_f64()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_are_microsecond_times() {
        let t = generation_time(1_764_300_000_123_456).unwrap();
        assert_eq!(t.to_rfc3339(), "2025-11-28T03:20:00.123456+00:00");
        assert_eq!(generation_time(7), None, "a test's small generation");
        assert_eq!(generation_time(-1), None);
        assert_eq!(generation_time(i64::MAX), None);
    }

    #[test]
    fn records_name_the_partner_product_and_parse_without_a_marker() {
        assert_eq!(
            record_name("ouchhungry", "daily"),
            "delivered/ouchhungry/daily.json"
        );
        let r: LastDelivered = serde_json::from_str(
            r#"{"delivery_id":"d","period":"2026-11","delivered_at":"2026-12-03T10:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(r.marker_generation, None);
        assert!(!serde_json::to_string(&r).unwrap().contains("marker"));
    }
}
