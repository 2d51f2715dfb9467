//! The raw bucket's object layout: parts, batch markers, and everything else.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// What an object name means in the raw bucket's layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// A part of a table's extract for one day.
    Part {
        /// The table.
        table: String,
        /// The batch date.
        dt: NaiveDate,
    },
    /// The batch marker of one day.
    Marker {
        /// The batch date.
        dt: NaiveDate,
    },
    /// Anything else: not an extract.
    Other {
        /// Why the name is not an extract.
        reason: String,
    },
}

/// Classifies an object name: `extracts/<table>/dt=<D>/<file>.csv[.gz]` or `extracts/dt=<D>/_SUCCESS`.
pub fn classify(name: &str, tables: &[&str]) -> Layout {
    let other = |reason: &str| Layout::Other {
        reason: reason.to_string(),
    };
    let Some(rest) = name.strip_prefix("extracts/") else {
        return other("not under extracts/");
    };
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.as_slice() {
        [dt, "_SUCCESS"] => match parse_dt(dt) {
            Some(dt) => Layout::Marker { dt },
            None => other("marker folder is not dt=YYYY-MM-DD"),
        },
        [table, dt, file] => {
            if !tables.contains(table) {
                return other("unknown table");
            }
            let Some(dt) = parse_dt(dt) else {
                return other("folder is not dt=YYYY-MM-DD");
            };
            if file.is_empty() || !(file.ends_with(".csv") || file.ends_with(".csv.gz")) {
                return other("file name does not end in .csv or .csv.gz");
            }
            Layout::Part {
                table: (*table).to_string(),
                dt,
            }
        }
        _ => other("not a part or marker path"),
    }
}

fn parse_dt(segment: &str) -> Option<NaiveDate> {
    let d = segment.strip_prefix("dt=")?;
    if d.len() != 10 {
        return None;
    }
    NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()
}

/// The body of a batch marker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// The batch date.
    pub dt: NaiveDate,
    /// Every part of the batch, as object names, each once (in the order first listed).
    pub files: Vec<String>,
    /// Names the body listed more than once, once per extra listing (they are read once).
    #[serde(skip)]
    pub listed_again: Vec<String>,
}

/// A marker that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MarkerError {
    /// The body is not the marker's JSON.
    #[error("marker is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The body's date differs from the marker's folder.
    #[error("marker says dt {body} but sits in dt={path}")]
    DateMismatch {
        /// Date in the body.
        body: NaiveDate,
        /// Date in the object name.
        path: NaiveDate,
    },
    /// A listed file is not a part of the marker's day.
    #[error("marker lists {0}, which is not a part of its day")]
    ForeignFile(String),
}

impl Marker {
    /// Parses a marker body and checks it against the day of its object name.
    ///
    /// A file listed twice is kept once, and named in [`Marker::listed_again`].
    pub fn parse(body: &[u8], dt: NaiveDate, tables: &[&str]) -> Result<Marker, MarkerError> {
        let mut marker: Marker = serde_json::from_slice(body)?;
        let mut seen = std::collections::HashSet::with_capacity(marker.files.len());
        let mut again = Vec::new();
        marker.files.retain(|f| {
            let first = seen.insert(f.clone());
            if !first {
                again.push(f.clone());
            }
            first
        });
        marker.listed_again = again;
        if marker.dt != dt {
            return Err(MarkerError::DateMismatch {
                body: marker.dt,
                path: dt,
            });
        }
        for f in &marker.files {
            match classify(f, tables) {
                Layout::Part { dt: d, .. } if d == dt => {}
                _ => return Err(MarkerError::ForeignFile(f.clone())),
            }
        }
        Ok(marker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &[&str] = &["transactions", "products", "customers"];

    #[test]
    fn classifies_names() {
        let d = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
        assert_eq!(
            classify("extracts/transactions/dt=2026-11-27/part-000.csv.gz", T),
            Layout::Part {
                table: "transactions".into(),
                dt: d
            }
        );
        assert_eq!(
            classify("extracts/dt=2026-11-27/_SUCCESS", T),
            Layout::Marker { dt: d }
        );
        for other in [
            "extracts/orders/dt=2026-11-27/part-000.csv",
            "extracts/transactions/dt=2026-11-31/part-000.csv",
            "extracts/transactions/dt=2026-11-27/readme.txt",
            "extracts/transactions/part-000.csv",
            "uploads/x.csv",
            "extracts/transactions/dt=2026-11-27/sub/part.csv",
        ] {
            assert!(
                matches!(classify(other, T), Layout::Other { .. }),
                "{other}"
            );
        }
    }

    #[test]
    fn parses_markers() {
        let d = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
        let body = br#"{"dt": "2026-11-27", "files": ["extracts/transactions/dt=2026-11-27/part-000.csv"]}"#;
        assert_eq!(Marker::parse(body, d, T).unwrap().files.len(), 1);
        let foreign = br#"{"dt": "2026-11-27", "files": ["extracts/transactions/dt=2026-11-26/part-000.csv"]}"#;
        assert!(matches!(
            Marker::parse(foreign, d, T),
            Err(MarkerError::ForeignFile(_))
        ));
        assert!(Marker::parse(b"not json", d, T).is_err());
        let twice = br#"{"dt": "2026-11-27", "files": ["extracts/products/dt=2026-11-27/a.csv",
            "extracts/products/dt=2026-11-27/b.csv", "extracts/products/dt=2026-11-27/a.csv"]}"#;
        let m = Marker::parse(twice, d, T).unwrap();
        assert_eq!(
            m.files,
            [
                "extracts/products/dt=2026-11-27/a.csv",
                "extracts/products/dt=2026-11-27/b.csv"
            ]
        );
        assert_eq!(m.listed_again, ["extracts/products/dt=2026-11-27/a.csv"]);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    const T: &[&str] = &["transactions", "products", "customers"];

    fn day() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 27).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn any_body_parses_or_fails_without_panic(body in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = Marker::parse(&body, day(), T);
        }

        #[test]
        fn any_name_classifies_without_panic(name in "(extracts/)?[a-z_=/.0-9-]{0,60}") {
            let _ = classify(&name, T);
        }

        #[test]
        fn a_listing_is_read_once_per_file(picks in prop::collection::vec((0usize..3, 0usize..5), 0..40)) {
            let names: Vec<String> = picks
                .iter()
                .map(|(t, i)| format!("extracts/{}/dt=2026-11-27/part-{i:03}.csv", T[*t]))
                .collect();
            let body = serde_json::json!({"dt": "2026-11-27", "files": names}).to_string();
            let m = Marker::parse(body.as_bytes(), day(), T).unwrap();
            let unique: std::collections::BTreeSet<&String> = names.iter().collect();
            prop_assert_eq!(m.files.len(), unique.len());
            prop_assert_eq!(m.files.len() + m.listed_again.len(), names.len());
            // Idempotent: the parsed listing parses to itself.
            let again = serde_json::json!({"dt": "2026-11-27", "files": m.files}).to_string();
            let m2 = Marker::parse(again.as_bytes(), day(), T).unwrap();
            prop_assert_eq!(&m2.files, &m.files);
            prop_assert!(m2.listed_again.is_empty());
        }
    }
}
