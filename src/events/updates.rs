//! What a batch step updated (topic `updates`, read by the Power BI monitor): the curated tables
//! and the products it wrote, named like the BigQuery external tables over them
//! (`curated/<table>`, `products/<product>`), and the batch version (the monitor's idempotency
//! key: a redelivered message refreshes nothing twice).

use serde::{Deserialize, Serialize};

use super::{Incoming, Malformed, Outgoing};

/// Version of the updates message body.
pub const UPDATES_VERSION: u32 = 1;

/// One batch step's updates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Updates {
    /// The body's version.
    pub schema_version: u32,
    /// The batch day (`YYYY-MM-DD`).
    pub dt: String,
    /// The batch version (its step key).
    pub batch_version: String,
    /// What was updated: `curated/<table>`, `products/<product>`.
    pub tables: Vec<String>,
}

impl Updates {
    /// The message for topic `updates` (attribute `dt`).
    pub fn to_message(&self) -> Outgoing {
        Outgoing {
            data: serde_json::to_vec(self).unwrap_or_default(),
            attributes: [("dt".to_string(), self.dt.clone())].into(),
        }
    }

    /// Parses an updates message; the batch version must be usable in an object name.
    pub fn parse(msg: &Incoming) -> Result<Updates, Malformed> {
        let u: Updates = serde_json::from_slice(&msg.data)
            .map_err(|e| Malformed(format!("not an updates message: {e}")))?;
        let safe = |s: &str| {
            !s.is_empty()
                && s.len() <= 200
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.=".contains(&b))
        };
        if !safe(&u.batch_version) || !safe(&u.dt) {
            return Err(Malformed(format!(
                "updates: batch version {:?} or dt {:?} unusable",
                u.batch_version, u.dt
            )));
        }
        Ok(u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_round_trip_and_bad_versions_are_malformed() {
        let u = Updates {
            schema_version: UPDATES_VERSION,
            dt: "2026-11-27".into(),
            batch_version: "m123-f456".into(),
            tables: vec!["curated/transactions".into(), "products/daily".into()],
        };
        let m = u.to_message();
        let back = Updates::parse(&Incoming {
            data: m.data,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(back, u);
        let mut bad = u.clone();
        bad.batch_version = "../x".into();
        assert!(
            Updates::parse(&Incoming {
                data: serde_json::to_vec(&bad).unwrap(),
                ..Default::default()
            })
            .is_err()
        );
    }
}
