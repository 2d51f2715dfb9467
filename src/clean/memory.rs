//! Staged files held in memory within a byte budget, for a batch staged and cleaned in one
//! process (`datashare clean`): the record batches a staged file would hold, written once and
//! read back once, stay as they are; past the budget a part's files are written as usual.
//!
//! The worker never uses it: its staged files go to the curated bucket and back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

/// Staged files held in memory by path, sharing one budget of bytes; clones share it too.
#[derive(Debug, Clone, Default)]
pub struct StagedMemory {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    budget: usize,
    used: usize,
    files: HashMap<PathBuf, Held>,
}

#[derive(Debug)]
struct Held {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    bytes: usize,
}

impl StagedMemory {
    /// Holds up to `budget` bytes of staged batches (0: none, every staged file is written).
    pub fn new(budget: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                budget,
                ..Inner::default()
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state stays consistent whatever a panicking holder was doing: counts and a map.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `bytes` from the budget; false, and nothing taken, when they do not fit.
    pub fn reserve(&self, bytes: usize) -> bool {
        let mut m = self.lock();
        if m.used.saturating_add(bytes) > m.budget {
            return false;
        }
        m.used += bytes;
        true
    }

    /// Gives back `bytes` reserved for batches that were dropped or written to a file.
    pub fn release(&self, bytes: usize) {
        let mut m = self.lock();
        m.used = m.used.saturating_sub(bytes);
    }

    /// Keeps a complete staged file's batches under its path; their `bytes` are already reserved.
    pub fn insert(&self, path: &Path, schema: SchemaRef, batches: Vec<RecordBatch>, bytes: usize) {
        let mut m = self.lock();
        let held = Held {
            schema,
            batches,
            bytes,
        };
        if let Some(old) = m.files.insert(path.to_path_buf(), held) {
            m.used = m.used.saturating_sub(old.bytes);
        }
    }

    /// Returns true when a staged file is held under `path`.
    pub fn contains(&self, path: &Path) -> bool {
        self.lock().files.contains_key(path)
    }

    /// Takes the schema and batches held under `path` out; their bytes go back to the budget.
    pub fn take(&self, path: &Path) -> Option<(SchemaRef, Vec<RecordBatch>)> {
        let mut m = self.lock();
        let held = m.files.remove(path)?;
        m.used = m.used.saturating_sub(held.bytes);
        Some((held.schema, held.batches))
    }

    /// Drops whatever is held under `path`.
    pub fn remove(&self, path: &Path) {
        drop(self.take(path));
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.lock().used
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{ArrayRef, Int64Array};
    use arrow_schema::{DataType, Field, Schema};

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let n: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
        RecordBatch::try_new(schema, vec![n]).unwrap()
    }

    #[test]
    fn the_budget_is_shared_and_comes_back_when_a_file_is_taken() {
        let m = StagedMemory::new(100);
        let other = m.clone();
        assert!(m.reserve(60));
        assert!(!other.reserve(41), "the clone shares the budget");
        assert!(other.reserve(40));
        m.release(40);
        let b = batch();
        m.insert(Path::new("a"), b.schema(), vec![b.clone()], 60);
        assert!(m.contains(Path::new("a")));
        let (_, batches) = m.take(Path::new("a")).unwrap();
        assert_eq!(batches, vec![b]);
        assert_eq!(m.used(), 0);
        assert!(m.take(Path::new("a")).is_none(), "a file is read once");
    }

    #[test]
    fn a_zero_budget_holds_nothing() {
        let m = StagedMemory::new(0);
        assert!(m.reserve(0));
        assert!(!m.reserve(1));
        m.release(5);
        assert_eq!(m.used(), 0);
    }
}
