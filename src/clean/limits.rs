//! Bounds on the memory and work one part or one batch may take, whatever the input's shape.

use serde::{Deserialize, Serialize};

use crate::extract::csv::ReadLimits;

/// Limits of the cleaning engine; every field has a safe default, so `[limits]` may be partial.
///
/// Past `max_record_bytes` a row is quarantined as `malformed_row` (detail `too_long`) and reading
/// goes on at the next line; past `max_part_bytes` or `max_compression_ratio` the part is rejected
/// whole as `too_large` (permanent). The flush limits bound buffers: staged and quarantined rows
/// are written out every `flush_rows` rows or `flush_bytes` bytes, Parquet row groups close at
/// `row_group_rows` rows or `row_group_bytes` bytes, whichever comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Bytes of one line or quoted record, without its line ending (default 1 MiB).
    pub max_record_bytes: usize,
    /// Decompressed bytes of one part (default 4 GiB).
    pub max_part_bytes: u64,
    /// Decompressed bytes per compressed byte of a gzip part (default 100).
    pub max_compression_ratio: u64,
    /// Decompressed bytes read before the ratio is checked (default 64 MiB).
    pub ratio_after_bytes: u64,
    /// Rows buffered before staged or quarantined rows are written out (default 32,768).
    pub flush_rows: usize,
    /// Bytes of values buffered before staged or quarantined rows are written out (default 32 MiB).
    pub flush_bytes: usize,
    /// Rows of one Parquet row group (default 262,144).
    pub row_group_rows: usize,
    /// Buffered bytes of one Parquet row group (default 64 MiB).
    pub row_group_bytes: usize,
    /// Staged Arrow files compressed with zstd (default off: on where staged files cross the
    /// network, as in the worker, where they go up to the curated bucket and back).
    pub compress_staged: bool,
    /// Bytes of staged rows a batch staged and cleaned in one process (`datashare clean`) keeps
    /// in memory rather than writing them to staged files and reading them back (default
    /// 256 MiB: a 1M-row day; 0: every staged file is written). The worker always writes them:
    /// they go to the curated bucket.
    pub stage_memory_bytes: usize,
    /// Threads encoding the columns of curated Parquet (default 1: on the batch step's own
    /// thread; the worker uses its vCPUs, up to 4).
    pub encode_threads: usize,
}

impl Default for Limits {
    fn default() -> Self {
        let read = ReadLimits::default();
        Self {
            max_record_bytes: read.max_record_bytes,
            max_part_bytes: read.max_part_bytes,
            max_compression_ratio: read.max_compression_ratio,
            ratio_after_bytes: read.ratio_after_bytes,
            flush_rows: 32 * 1024,
            flush_bytes: 32 << 20,
            row_group_rows: 256 * 1024,
            row_group_bytes: 64 << 20,
            compress_staged: false,
            stage_memory_bytes: 256 << 20,
            encode_threads: 1,
        }
    }
}

impl Limits {
    /// The limits the CSV reader enforces.
    pub fn read(&self) -> ReadLimits {
        ReadLimits {
            max_record_bytes: self.max_record_bytes.max(1),
            max_part_bytes: self.max_part_bytes,
            max_compression_ratio: self.max_compression_ratio.max(1),
            ratio_after_bytes: self.ratio_after_bytes,
        }
    }

    /// Rows per flush, at least one.
    pub fn flush_rows(&self) -> usize {
        self.flush_rows.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_settings_keep_the_other_defaults() {
        let l: Limits = toml::from_str("max_record_bytes = 4096").unwrap();
        assert_eq!(l.max_record_bytes, 4096);
        assert_eq!(l.max_part_bytes, Limits::default().max_part_bytes);
        assert!(toml::from_str::<Limits>("max_line = 1").is_err());
    }
}
