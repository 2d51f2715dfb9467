//! Staged files held in memory when one process stages the parts and runs the batch step
//! (`datashare clean`), up to a budget of bytes; past it, a file is written to the staging folder.
//!
//! The worker writes every staged file: its parts are staged by separate messages, and the files go
//! up to the curated bucket. On one machine that round trip (encoding, writing, reading back and
//! checking Arrow IPC, deleting) was about a tenth of the work.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

/// Staged files kept in memory, by the path they would have in the staging folder.
#[derive(Debug, Default)]
pub struct Held {
    budget: usize,
    state: Mutex<State>,
}

/// The held files and the bytes taken from the budget (held files and files being written).
#[derive(Debug, Default)]
struct State {
    files: HashMap<PathBuf, (SchemaRef, Vec<RecordBatch>)>,
    bytes: usize,
}

/// Bytes a batch holds (its buffers' capacity), as the budget counts them.
pub fn batch_bytes(batch: &RecordBatch) -> usize {
    batch.get_array_memory_size()
}

impl Held {
    /// Nothing held: every staged file is written (the worker).
    pub fn none() -> Self {
        Self::default()
    }

    /// Holds up to `budget` bytes of staged batches.
    pub fn up_to(budget: usize) -> Self {
        Self {
            budget,
            ..Self::default()
        }
    }

    /// Returns true when files may be held at all.
    pub fn enabled(&self) -> bool {
        self.budget > 0
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes `bytes` of the budget; false (nothing taken) when they do not fit.
    pub fn reserve(&self, bytes: usize) -> bool {
        let mut s = self.state();
        match s.bytes.checked_add(bytes) {
            Some(total) if total <= self.budget => {
                s.bytes = total;
                true
            }
            _ => false,
        }
    }

    /// Gives `bytes` back to the budget.
    pub fn release(&self, bytes: usize) {
        let mut s = self.state();
        s.bytes = s.bytes.saturating_sub(bytes);
    }

    /// Keeps a finished file's batches (their bytes already reserved).
    pub fn put(&self, path: &Path, schema: SchemaRef, batches: Vec<RecordBatch>) {
        self.state()
            .files
            .insert(path.to_path_buf(), (schema, batches));
    }

    /// Returns true when the file at `path` is held.
    pub fn contains(&self, path: &Path) -> bool {
        self.state().files.contains_key(path)
    }

    /// Removes the file at `path` and gives its bytes back; its schema and batches.
    pub fn take(&self, path: &Path) -> Option<(SchemaRef, Vec<RecordBatch>)> {
        let mut s = self.state();
        let file = s.files.remove(path)?;
        let bytes: usize = file.1.iter().map(batch_bytes).sum();
        s.bytes = s.bytes.saturating_sub(bytes);
        Some(file)
    }

    /// Bytes taken from the budget now.
    pub fn bytes(&self) -> usize {
        self.state().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, RecordBatch};
    use std::sync::Arc;

    #[test]
    fn the_budget_bounds_what_is_held_and_comes_back_when_taken() {
        let batch =
            RecordBatch::try_from_iter([("v", Arc::new(Int64Array::from(vec![1i64; 1000])) as _)])
                .unwrap();
        let n = batch_bytes(&batch);
        let held = Held::up_to(2 * n);
        assert!(held.reserve(n) && held.reserve(n));
        assert!(!held.reserve(1), "past the budget");
        assert!(!held.reserve(usize::MAX), "no overflow");
        held.put(Path::new("a"), batch.schema(), vec![batch.clone(), batch]);
        assert!(held.contains(Path::new("a")));
        assert_eq!(held.take(Path::new("a")).unwrap().1.len(), 2);
        assert_eq!(held.bytes(), 0);
        assert!(held.take(Path::new("a")).is_none());
        assert!(!Held::none().enabled() && !Held::none().reserve(1));
    }
}
