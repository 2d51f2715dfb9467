//! Staged parts this worker instance wrote, kept on its local disk for its own batch steps.
//!
//! A part's staged files go up to the curated bucket, the record every instance reads. The
//! instance that staged them also keeps its copy for a while: when its own batch step needs the
//! part, the files are moved into place instead of downloaded again (at 100k rows a day, ~6 MB
//! and a round trip per file; at 1M, ~65 MB). The copies are bounded in bytes
//! (`worker.kept_staged_mib`; on Cloud Run local files are memory), the oldest dropped first; a
//! step that finds no copy (another instance staged the part, or it was dropped) downloads it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use crate::clean::stage::{PartSummary, StagedPaths};

/// The kept copies: a folder of the instance's own, and what it holds.
#[derive(Debug)]
pub struct KeptStaged {
    /// Removed with the worker.
    dir: tempfile::TempDir,
    /// Most bytes held; 0 keeps nothing.
    budget: u64,
    state: Mutex<State>,
}

/// What the folder holds: each part generation's files, in the order they were kept.
#[derive(Debug, Default)]
struct State {
    used: u64,
    next: u64,
    parts: BTreeMap<(String, i64), Kept>,
}

/// One part generation's kept files.
#[derive(Debug)]
struct Kept {
    /// Order of keeping: the smallest goes first.
    seq: u64,
    bytes: u64,
    paths: StagedPaths,
}

impl KeptStaged {
    /// An empty store under `root` holding at most `budget` bytes.
    pub fn new(root: &Path, budget: u64) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("datashare-worker-kept-")
            .tempdir_in(root)?;
        Ok(Self {
            dir,
            budget,
            state: Mutex::default(),
        })
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves a consistent map (every change is one
        // statement): the data stays usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps the staged files of `object` at `generation` (moved out of `from`), dropping the
    /// oldest copies to make room; files that do not fit the budget whole are left where they
    /// are.
    pub fn keep(&self, object: &str, generation: i64, from: &StagedPaths) {
        let files = from.files();
        let bytes: u64 = files
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        if bytes > self.budget {
            return;
        }
        let to = StagedPaths::new(self.dir.path(), object, &generation.to_string());
        let mut state = self.lock();
        let key = (object.to_string(), generation);
        if let Some(old) = state.parts.remove(&key) {
            state.used -= old.bytes;
            remove(&old.paths);
        }
        while state.used + bytes > self.budget {
            let Some(oldest) = state
                .parts
                .iter()
                .min_by_key(|(_, k)| k.seq)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(old) = state.parts.remove(&oldest) {
                state.used -= old.bytes;
                remove(&old.paths);
            }
        }
        for (src, dst) in files.iter().zip(to.files()) {
            if src.exists()
                && let Err(e) = std::fs::rename(src, dst)
            {
                tracing::debug!(object, generation, error = %e, "staged part not kept");
                remove(&to);
                return;
            }
        }
        let seq = state.next;
        state.next += 1;
        state.used += bytes;
        state.parts.insert(
            key,
            Kept {
                seq,
                bytes,
                paths: to,
            },
        );
    }

    /// Moves the kept files of `object` at `generation` to `to` and returns their summary;
    /// `None` when none are kept (or they cannot be read: the caller downloads the part).
    pub fn take(&self, object: &str, generation: i64, to: &StagedPaths) -> Option<PartSummary> {
        let kept = {
            let mut state = self.lock();
            let kept = state.parts.remove(&(object.to_string(), generation))?;
            state.used -= kept.bytes;
            kept
        };
        let moved = (|| -> std::io::Result<PartSummary> {
            if let Some(parent) = to.summary.parent() {
                std::fs::create_dir_all(parent)?;
            }
            for (src, dst) in kept.paths.files().iter().zip(to.files()) {
                if src.exists() {
                    std::fs::rename(src, dst)?;
                }
            }
            let summary = std::fs::read(&to.summary)?;
            serde_json::from_slice(&summary).map_err(std::io::Error::other)
        })();
        match moved {
            Ok(summary) => Some(summary),
            Err(e) => {
                tracing::warn!(object, generation, error = %e, "kept staged part unreadable, downloaded instead");
                remove(&kept.paths);
                remove(to);
                None
            }
        }
    }
}

/// Removes a part's files, those that exist.
fn remove(paths: &StagedPaths) {
    for p in paths.files() {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A part's staged files under `dir`, `size` bytes of data, and its summary.
    fn staged(dir: &Path, object: &str, generation: i64, size: usize) -> StagedPaths {
        let paths = StagedPaths::new(dir, object, &generation.to_string());
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(&paths.data, vec![7u8; size]).unwrap();
        std::fs::write(&paths.keys, b"keys").unwrap();
        let summary = serde_json::json!({
            "table": format!("t-{object}"),
            "file": {"object": object, "generation": generation.to_string(), "encoding": "utf-8",
                     "delimiter": ",", "gzip": true, "rows": 1},
            "rows_staged": 1, "rows_quarantined": 0, "quarantined_by_reason": {}, "fields": {},
        });
        std::fs::write(&paths.summary, summary.to_string()).unwrap();
        paths
    }

    #[test]
    fn a_kept_part_is_moved_into_place_once_and_the_oldest_go_first() {
        let root = tempfile::tempdir().unwrap();
        let kept = KeptStaged::new(root.path(), 10_000).unwrap();
        let staging = root.path().join("staging");
        for (i, object) in ["a", "b", "c"].iter().enumerate() {
            let from = staged(&staging, object, i as i64, 4_000);
            kept.keep(object, i as i64, &from);
            assert!(!from.data.exists(), "moved, not copied");
        }
        // Three parts of ~4 kB in 10 kB: the first was dropped for the third.
        let step = root.path().join("step");
        let to = |o: &str, g: i64| StagedPaths::new(&step, o, &g.to_string());
        assert_eq!(kept.take("a", 0, &to("a", 0)), None);
        let b = kept.take("b", 1, &to("b", 1)).expect("b kept");
        assert_eq!(b.table, "t-b");
        assert_eq!(std::fs::read(to("b", 1).data).unwrap().len(), 4_000);
        assert!(
            !to("b", 1).quarantine.exists(),
            "a file the part did not have"
        );
        assert_eq!(kept.take("b", 1, &to("b", 1)), None, "taken once");
        assert_eq!(kept.take("c", 1, &to("c", 1)), None, "another generation");
        assert!(kept.take("c", 2, &to("c", 2)).is_some());
        assert_eq!(kept.used(), 0);
    }

    #[test]
    fn a_part_larger_than_the_budget_stays_where_it_is_and_a_broken_copy_is_not_used() {
        let root = tempfile::tempdir().unwrap();
        let kept = KeptStaged::new(root.path(), 1_000).unwrap();
        let staging = root.path().join("staging");
        let big = staged(&staging, "big", 1, 5_000);
        kept.keep("big", 1, &big);
        assert!(big.data.exists());
        assert_eq!(kept.used(), 0);
        let small = staged(&staging, "small", 1, 10);
        kept.keep("small", 1, &small);
        assert!(kept.used() > 0);
        // Its summary overwritten with something else: the step downloads the part instead.
        let held = StagedPaths::new(kept.dir.path(), "small", "1");
        std::fs::write(&held.summary, b"not json").unwrap();
        let to = StagedPaths::new(&root.path().join("step"), "small", "1");
        assert_eq!(kept.take("small", 1, &to), None);
        assert!(!held.data.exists() && !to.data.exists());
        assert_eq!(kept.used(), 0);
    }
}
