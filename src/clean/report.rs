//! The quality report: what staging and the batch step did to every table of a batch.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// Counts of one column: values changed by normalization, invalid values nulled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldCounts {
    /// Values kept whose canonical text differs from the raw text.
    pub normalized: u64,
    /// Non-null values that no rule could read, set to null.
    pub nulled: u64,
}

/// A file-level failure: the whole file is rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileError {
    /// `missing_column`, `undecodable`, `not_csv`, `too_large` or `missing_object`.
    pub kind: String,
    /// What is wrong, in one line.
    pub message: String,
}

/// One file of the batch as read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileReport {
    /// Object name.
    pub object: String,
    /// Object generation.
    pub generation: String,
    /// `utf-8` or `windows-1252`.
    pub encoding: String,
    /// `,` or `;`.
    pub delimiter: String,
    /// Whether the bytes were gzip.
    pub gzip: bool,
    /// Data rows read.
    pub rows: u64,
    /// Rows longer than the record limit, quarantined as `malformed_row` (detail `too_long`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rows_too_long: u64,
    /// Times the batch marker listed this file again (it is read once).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub listed_again: u64,
    /// Header columns not in the schema (ignored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_columns: Vec<String>,
    /// Why the file was rejected whole, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<FileError>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Counts of one table in one batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableReport {
    /// Data rows read from every accepted file.
    pub rows_read: u64,
    /// Rows written to curated data.
    pub rows_kept: u64,
    /// Rows written to quarantine.
    pub rows_quarantined: u64,
    /// Exact duplicates (after normalization) removed.
    pub duplicates_removed: u64,
    /// Rows that lost a key conflict.
    pub conflicts_resolved: u64,
    /// Quarantined rows per reason (a row with two reasons counts under both).
    pub quarantined_by_reason: BTreeMap<String, u64>,
    /// Per column counts.
    pub fields: BTreeMap<String, FieldCounts>,
    /// Every file of the table in the batch.
    pub files: Vec<FileReport>,
}

impl TableReport {
    /// Checks `rows_read = rows_kept + rows_quarantined + duplicates_removed + conflicts_resolved`.
    pub fn balances(&self) -> bool {
        self.rows_read
            == self.rows_kept
                + self.rows_quarantined
                + self.duplicates_removed
                + self.conflicts_resolved
    }
}

/// The quality report of a batch, written as `reports/dt=<D>/quality.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QualityReport {
    /// The batch date.
    pub dt: NaiveDate,
    /// One entry per table.
    pub tables: BTreeMap<String, TableReport>,
}

impl QualityReport {
    /// Files rejected whole, across tables.
    pub fn failed_files(&self) -> impl Iterator<Item = &FileReport> {
        self.tables
            .values()
            .flat_map(|t| t.files.iter())
            .filter(|f| f.error.is_some())
    }
}
