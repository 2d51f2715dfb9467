//! `BatchReady` (topic `batches`): a batch whose marker exists and whose listed files are all
//! settled, with the generations that make this version of the batch.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Incoming, Malformed, Outgoing};

/// Layout version of [`BatchReady`].
pub const BATCH_READY_VERSION: u32 = 1;

/// An object name at one generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
pub struct ObjectGeneration {
    /// Object name in the raw bucket.
    pub name: String,
    /// Its generation.
    pub generation: i64,
}

/// A batch ready for its batch step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchReady {
    /// Layout version.
    pub schema_version: u32,
    /// The batch day.
    pub dt: NaiveDate,
    /// The marker's generation.
    pub marker_generation: i64,
    /// Every listed file at the generation that was settled.
    pub files: Vec<ObjectGeneration>,
    /// The team released this batch version although a listed file failed (`datashare release`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub release: bool,
    /// A replay of this batch version (`datashare replay --date`): a nonce, so the step runs
    /// again under its own claim and done marker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<String>,
}

impl BatchReady {
    /// Identifies this version of the batch: the marker generation and a digest of the files'.
    ///
    /// A new generation of any file (or of the marker) is a new version, claimed anew.
    pub fn version(&self) -> String {
        let mut files = self.files.clone();
        files.sort();
        let mut h = Sha256::new();
        for f in &files {
            h.update(format!("{}#{}\n", f.name, f.generation).as_bytes());
        }
        let digest = hex::encode(h.finalize());
        format!("{}-{}", self.marker_generation, &digest[..16])
    }

    /// Names this step's claim and done marker: the version, `.release` for a release and
    /// `.replay-<nonce>` for a replay.
    pub fn step_key(&self) -> String {
        let mut key = self.version();
        if self.release {
            key.push_str(".release");
        }
        if let Some(n) = &self.replay {
            key.push_str(&format!(".replay-{n}"));
        }
        key
    }

    /// This version of the batch under the step key `key` (the inverse of
    /// [`BatchReady::step_key`]); `None` when `key` names another version.
    pub fn for_step_key(mut self, key: &str) -> Option<BatchReady> {
        let rest = key.strip_prefix(&self.version())?;
        let rest = match rest.strip_prefix(".release") {
            Some(r) => {
                self.release = true;
                r
            }
            None => rest,
        };
        self.replay = rest.strip_prefix(".replay-").map(str::to_string);
        (self.step_key() == key).then_some(self)
    }

    /// Encodes the message (JSON data; `dt`, `batch_version` and `release` attributes).
    pub fn to_message(&self) -> Outgoing {
        let mut attributes = BTreeMap::from([
            ("dt".to_string(), self.dt.to_string()),
            ("batch_version".to_string(), self.version()),
        ]);
        if self.release {
            attributes.insert("release".to_string(), "true".to_string());
        }
        Outgoing {
            data: serde_json::to_vec(self).expect("batch-ready encodes"),
            attributes,
        }
    }

    /// Decodes a received message.
    pub fn parse(msg: &Incoming) -> Result<BatchReady, Malformed> {
        let b: BatchReady = serde_json::from_slice(&msg.data)
            .map_err(|e| Malformed(format!("batch-ready: {e}")))?;
        if b.schema_version != BATCH_READY_VERSION {
            return Err(Malformed(format!(
                "batch-ready schema version {} (expected {BATCH_READY_VERSION})",
                b.schema_version
            )));
        }
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_versions_ignore_order() {
        let f = |n: &str, g| ObjectGeneration {
            name: n.into(),
            generation: g,
        };
        let b = BatchReady {
            schema_version: BATCH_READY_VERSION,
            dt: NaiveDate::from_ymd_opt(2026, 11, 27).unwrap(),
            marker_generation: 7,
            files: vec![f("a", 1), f("b", 2)],
            release: false,
            replay: None,
        };
        let out = b.to_message();
        let back = BatchReady::parse(&Incoming {
            data: out.data,
            ..Incoming::default()
        })
        .unwrap();
        assert_eq!(back, b);
        let mut swapped = b.clone();
        swapped.files.reverse();
        assert_eq!(swapped.version(), b.version());
        let mut newer = b.clone();
        newer.files[1].generation = 3;
        assert_ne!(newer.version(), b.version());
        assert!(b.version().starts_with("7-"));
        let released = BatchReady {
            release: true,
            replay: None,
            ..b.clone()
        };
        assert_eq!(released.version(), b.version());
        assert_eq!(released.step_key(), format!("{}.release", b.version()));
        assert!(
            !String::from_utf8(b.to_message().data)
                .unwrap()
                .contains("release")
        );
        assert!(BatchReady::parse(&Incoming::default()).is_err());
        for step in [
            b.clone(),
            released.clone(),
            BatchReady {
                release: true,
                replay: Some("n1".into()),
                ..b.clone()
            },
        ] {
            assert_eq!(b.clone().for_step_key(&step.step_key()), Some(step));
        }
        assert_eq!(b.clone().for_step_key(&newer.step_key()), None);
        assert_eq!(
            b.clone().for_step_key(&format!("{}.other", b.version())),
            None
        );
    }
}
