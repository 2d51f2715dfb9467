//! The ground truth: what a correct cleaner must report (`summary.json`) and find (`defects.jsonl`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Per-column counters of the quality report (the report's own type: the truth has its shape).
pub use crate::clean::report::FieldCounts;

/// The counters a correct cleaner reports for one table of one batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSummary {
    /// Every data record of every accepted part.
    pub rows_read: u64,
    /// Rows in the curated table.
    pub rows_kept: u64,
    /// Rows quarantined (field rules, references, malformed).
    pub rows_quarantined: u64,
    /// Rows identical after normalization to an already counted row.
    pub duplicates_removed: u64,
    /// Losing versions of conflicting keys.
    pub conflicts_resolved: u64,
    /// Quarantined rows per reason (a row with two reasons counts under both).
    pub quarantined_by_reason: BTreeMap<String, u64>,
    /// Counters of every declared column, zeros included.
    pub fields: BTreeMap<String, FieldCounts>,
}

/// How one generated file was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSummary {
    /// Object name relative to the bucket (`extracts/…`).
    pub object: String,
    /// Table name.
    pub table: String,
    /// `utf-8` or `windows-1252` (what a reader detects: a Latin-1 file with only ASCII is `utf-8`).
    pub encoding: String,
    /// `,` or `;`.
    pub delimiter: String,
    /// Line endings are CRLF.
    pub crlf: bool,
    /// Starts with a UTF-8 byte-order mark.
    pub bom: bool,
    /// Gzip-compressed.
    pub gzip: bool,
    /// Unknown columns added to the header.
    pub extra_columns: Vec<String>,
    /// Column names (declared spelling) in the order written.
    pub columns: Vec<String>,
    /// Header cells exactly as written (odd case, spaces).
    pub header: Vec<String>,
    /// Data records written.
    pub rows: u64,
    /// Why the whole file must be rejected, if it must.
    pub rejected: Option<String>,
}

/// The ground truth of one day: files written and per-table counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DayTruth {
    /// The batch date `YYYY-MM-DD`.
    pub dt: String,
    /// The seed used.
    pub seed: u64,
    /// The defect rate used.
    pub defect_rate: f64,
    /// Every part written, bad files included.
    pub files: Vec<FileSummary>,
    /// Counters per table name.
    pub tables: BTreeMap<String, TableSummary>,
}

/// One line of `defects.jsonl`: what was injected on one row and what the cleaner must do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefectEntry {
    /// Table name.
    pub table: String,
    /// Object name of the part.
    pub object: String,
    /// Physical line where the record starts (header is line 1).
    pub line: u64,
    /// Canonical key of the row, or null when it has none.
    pub key: Option<String>,
    /// Defect kind (`null_marker`, `format`, `invalid`, `exact_duplicate`, `conflict_winner`,
    /// `conflict_loser`, `orphan_customer`, `orphan_product`, `malformed_row`, `late_correction`).
    pub kind: String,
    /// Sub-kind of duplicate groups (`exact`, `newer_later`, `cross_tie`, …), else null.
    pub detail: Option<String>,
    /// Column concerned, if one.
    pub column: Option<String>,
    /// Raw text written in that column, if one.
    pub raw: Option<String>,
    /// `fixed`, `nulled`, `defaulted`, `quarantined`, `removed` or `kept`.
    pub outcome: String,
    /// Canonical text the curated row holds in `column` (for `fixed` and `defaulted`).
    pub expected: Option<String>,
    /// Quarantine reasons (for `quarantined`).
    pub reasons: Vec<String>,
}

impl TableSummary {
    /// Returns true when `rows_read = kept + quarantined + duplicates + conflicts`.
    pub fn balances(&self) -> bool {
        self.rows_read
            == self.rows_kept
                + self.rows_quarantined
                + self.duplicates_removed
                + self.conflicts_resolved
    }
}
