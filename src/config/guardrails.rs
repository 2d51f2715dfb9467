//! The `[guardrails.<table>]` tables: thresholds of the batch step's data-quality guardrails
//! (evaluated by `clean::guardrails`).

use std::collections::BTreeMap;

use serde::Deserialize;

/// Earlier batches the volume median is taken over (the current one excluded).
pub const VOLUME_HISTORY: usize = 7;

/// A share of rows, checked to lie in 0..=1 when read.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Deserialize)]
#[serde(try_from = "f64")]
pub struct Share(f64);

// Sound: a `Share` is never NaN (checked in `try_from`).
impl Eq for Share {}

impl TryFrom<f64> for Share {
    type Error = String;
    fn try_from(v: f64) -> Result<Self, String> {
        if v.is_finite() && (0.0..=1.0).contains(&v) {
            Ok(Share(v))
        } else {
            Err(format!("{v} is not a share between 0 and 1"))
        }
    }
}

impl Share {
    /// The share as a number in 0..=1.
    pub fn get(self) -> f64 {
        self.0
    }
}

/// A relative deviation (0.5 = 50 %), checked to be finite and above 0 when read.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Deserialize)]
#[serde(try_from = "f64")]
pub struct Deviation(f64);

// Sound: a `Deviation` is never NaN (checked in `try_from`).
impl Eq for Deviation {}

impl TryFrom<f64> for Deviation {
    type Error = String;
    fn try_from(v: f64) -> Result<Self, String> {
        if v.is_finite() && v > 0.0 {
            Ok(Deviation(v))
        } else {
            Err(format!("{v} is not a relative deviation above 0"))
        }
    }
}

impl Deviation {
    /// The deviation as a ratio (0.5 = 50 %).
    pub fn get(self) -> f64 {
        self.0
    }
}

/// Two levels of one share measure: above `warn` a warning, above `block` a critical alert that
/// holds the batch's products. Either may be left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Highest share without a warning.
    pub warn: Option<Share>,
    /// Highest share without holding the products (blocking).
    pub block: Option<Share>,
}

/// The volume guardrail: the batch's rows read against the median of the previous batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeLimit {
    /// Largest relative distance from the median without an alert (spec: 0.5).
    #[serde(default = "half")]
    pub max_deviation: Deviation,
    /// Earlier batches needed before the check applies (1..=7).
    #[serde(default = "three")]
    pub min_history: usize,
    /// Whether an anomaly holds the products.
    #[serde(default)]
    pub blocking: bool,
}

fn half() -> Deviation {
    Deviation(0.5)
}

fn three() -> usize {
    3
}

impl Default for VolumeLimit {
    fn default() -> Self {
        VolumeLimit {
            max_deviation: half(),
            min_history: three(),
            blocking: false,
        }
    }
}

/// Rows read below which a table's share measures are not evaluated, unless its `min_rows`
/// says otherwise: on fewer rows one bad row moves a share by a whole percent or more.
pub const MIN_ROWS: u64 = 100;

/// The guardrails of one table (`[guardrails.<table>]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TableGuardrails {
    /// Rows read a batch needs before its share measures (quarantine, duplicates, key nulls)
    /// can trip; the volume check does not depend on it.
    pub min_rows: u64,
    /// Quarantined rows / rows read.
    pub quarantine: Limit,
    /// Exact duplicates removed / rows read.
    pub duplicates: Limit,
    /// Per key field: (rows quarantined as `missing_<field>` + values nulled) / rows read.
    pub key_nulls: Limit,
    /// The key fields `key_nulls` applies to.
    pub key_fields: Vec<String>,
    /// The volume check; none when left out.
    pub volume: Option<VolumeLimit>,
}

impl Default for TableGuardrails {
    fn default() -> Self {
        TableGuardrails {
            min_rows: MIN_ROWS,
            quarantine: Limit::default(),
            duplicates: Limit::default(),
            key_nulls: Limit::default(),
            key_fields: Vec::new(),
            volume: None,
        }
    }
}

/// Every table's guardrails, by table name (`[guardrails]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Guardrails(pub BTreeMap<String, TableGuardrails>);

impl Guardrails {
    /// Checks the levels are ordered and the volume history fits; the first problem as
    /// (field, problem).
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (table, g) in &self.0 {
            for (name, l) in [
                ("quarantine", g.quarantine),
                ("duplicates", g.duplicates),
                ("key_nulls", g.key_nulls),
            ] {
                if let (Some(w), Some(b)) = (l.warn, l.block)
                    && w > b
                {
                    return Err((
                        format!("guardrails.{table}.{name}"),
                        format!("warn {} is above block {}", w.0, b.0),
                    ));
                }
            }
            if g.key_nulls != Limit::default() && g.key_fields.is_empty() {
                return Err((
                    format!("guardrails.{table}.key_fields"),
                    "key_nulls is set but no key field is named".into(),
                ));
            }
            if let Some(v) = g.volume
                && !(1..=VOLUME_HISTORY).contains(&v.min_history)
            {
                return Err((
                    format!("guardrails.{table}.volume.min_history"),
                    format!("must be between 1 and {VOLUME_HISTORY}"),
                ));
            }
        }
        Ok(())
    }
}
