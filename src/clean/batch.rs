//! The batch step: what needs the whole batch once every part is staged.
//!
//! Per table, in reference order: deduplicate across parts (exact duplicates after normalization,
//! then key conflicts won by the latest version, ties by object name and line), check references
//! against the batch's own tables, write curated and quarantined rows as Parquet, and count it all
//! in the quality report. Memory grows with the number of staged rows' keys (about 40 bytes per
//! row), never with the size of the files: rows stream through twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, BooleanArray, RecordBatch};
use arrow_ipc::reader::FileReader;
use arrow_ipc::writer::FileWriter;
use arrow_schema::SchemaRef;
use chrono::NaiveDate;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde::Serialize;

use super::Limits;
use super::columns::{
    QuarantineBuilder, QuarantinedRow, curated_schema, key_hash, keys_schema, quarantine_schema,
    quarantined_rows, raw_values, row_hash, staged_schema, value_at,
};
use super::encode::ParallelWriter;
use super::report::{QualityReport, TableReport};
use super::schema::{Schemas, TableSchema};
use super::stage::{PartSummary, StagedPaths, Staging};
use super::validators::Value;

/// The batch step failed for a reason outside the data; it can run again.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Reading staged files or writing outputs failed.
    #[error("batch i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A staged file could not be decoded.
    #[error("batch arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    /// A Parquet file could not be written.
    #[error("batch parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// The report could not be written.
    #[error("batch report: {0}")]
    Json(#[from] serde_json::Error),
    /// A staged file does not hold what the batch step reads (its columns, or as many rows as
    /// its part's keys): written by another release, or damaged.
    #[error("staged file {path}: {reason}")]
    StagedMismatch {
        /// The staged file.
        path: String,
        /// What does not match.
        reason: String,
    },
    /// A staged part is not there.
    #[error("staged part missing for {object}@{generation}")]
    MissingStage {
        /// Object name.
        object: String,
        /// Generation.
        generation: String,
    },
}

/// Where the batch step writes, under one output root.
#[derive(Debug, Clone)]
pub struct BatchOutputs {
    /// The output root.
    pub root: PathBuf,
    /// The batch date.
    pub dt: NaiveDate,
}

impl BatchOutputs {
    /// `curated/<table>/dt=<D>/part-00000.parquet`.
    pub fn curated(&self, table: &str) -> PathBuf {
        self.root
            .join(format!("curated/{table}/dt={}/part-00000.parquet", self.dt))
    }

    /// `quarantine/<table>/dt=<D>/part-00000.parquet`.
    pub fn quarantine(&self, table: &str) -> PathBuf {
        self.root.join(format!(
            "quarantine/{table}/dt={}/part-00000.parquet",
            self.dt
        ))
    }

    /// `reports/dt=<D>/quality.json`.
    pub fn quality(&self) -> PathBuf {
        self.root
            .join(format!("reports/dt={}/quality.json", self.dt))
    }

    /// `reports/dt=<D>/conflicts.jsonl`: every key conflict with its winner and losers.
    pub fn conflicts(&self) -> PathBuf {
        self.root
            .join(format!("reports/dt={}/conflicts.jsonl", self.dt))
    }
}

/// One staged row's identity for deduplication: 32 bytes.
#[derive(Clone, Copy)]
struct Entry {
    key: u64,
    check: u32,
    part: u32,
    version: i64,
    row: u64,
}

/// Sorts `entries` and calls `each` with the rows of every key (its 96 bits: hash and check),
/// in key order, each key's rows by version, part and row: the last one wins.
fn for_each_key(entries: &mut [Entry], mut each: impl FnMut(&[Entry])) {
    // Sorting needs only the hash; the rare hashes of several rows are ordered after.
    entries.sort_unstable_by_key(|e| e.key);
    for run in entries.chunk_by_mut(|a, b| a.key == b.key) {
        if run.len() > 1 {
            // By check first: two keys may share a hash.
            run.sort_unstable_by_key(|e| (e.check, e.version, e.part, e.row));
        }
        run.chunk_by(|a, b| a.check == b.check).for_each(&mut each);
    }
}

/// A row's place: part index and row index within the staged part.
type Pos = (u32, u64);

/// A set of staged rows, as one bit per row.
struct RowBits {
    bits: Vec<Vec<u64>>,
}

impl RowBits {
    fn new(rows: &[u64]) -> Self {
        Self {
            bits: rows
                .iter()
                .map(|&n| vec![0u64; (n as usize).div_ceil(64)])
                .collect(),
        }
    }
    fn set(&mut self, (part, row): Pos) {
        self.bits[part as usize][(row / 64) as usize] |= 1 << (row % 64);
    }
    fn get(&self, (part, row): Pos) -> bool {
        self.bits[part as usize][(row / 64) as usize] & (1 << (row % 64)) != 0
    }
    /// The number of set bits before each word, counted over the parts in order (for [`Self::rank`]).
    fn ranks(&self) -> Vec<Vec<u64>> {
        let mut n = 0;
        self.bits
            .iter()
            .map(|words| {
                words
                    .iter()
                    .map(|w| {
                        let before = n;
                        n += u64::from(w.count_ones());
                        before
                    })
                    .collect()
            })
            .collect()
    }
    /// The index of a set bit among all set bits, in part and row order.
    fn rank(&self, ranks: &[Vec<u64>], (part, row): Pos) -> usize {
        let w = (row / 64) as usize;
        let below = self.bits[part as usize][w] & ((1u64 << (row % 64)) - 1);
        (ranks[part as usize][w] + u64::from(below.count_ones())) as usize
    }
}

/// A key held by several staged rows (duplicates or versions): its winner and its rows, oldest
/// first, as a range of the members list.
struct Group {
    winner: Pos,
    members: std::ops::Range<usize>,
}

#[derive(Serialize)]
struct ConflictRecord<'a> {
    table: &'a str,
    key: &'a str,
    winner: Place<'a>,
    losers: Vec<Place<'a>>,
    /// Distinct losing contents past [`MAX_LISTED_LOSERS`], counted only.
    #[serde(skip_serializing_if = "is_zero")]
    losers_not_listed: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Serialize)]
struct Place<'a> {
    object: &'a str,
    line: u64,
}

struct Conflict {
    key: String,
    winner: Pos,
    losers: Vec<Pos>,
    not_listed: u64,
}

/// Losers listed per key conflict in `conflicts.jsonl`; the others are counted.
const MAX_LISTED_LOSERS: usize = 1000;

/// The keys of a table's kept rows, as [`key_id`]s (ahash, randomly keyed: the ids are
/// unkeyed hashes of untrusted text, and SipHash cost a tenth of the batch step).
type KeySet = HashSet<u128, ahash::RandomState>;

fn key_id(s: &str) -> u128 {
    let (k, c) = key_hash(s);
    (u128::from(c) << 64) | u128::from(k)
}

/// Runs the batch step with the default [`Limits`].
pub fn run_batch(
    schemas: &Schemas,
    dt: NaiveDate,
    staging: &Path,
    parts: &[PartSummary],
    out: &BatchOutputs,
) -> Result<QualityReport, BatchError> {
    run_batch_with(
        schemas,
        dt,
        Staging::dir(staging),
        parts,
        out,
        &Limits::default(),
    )
}

/// Runs the batch step over the staged parts of one batch and writes curated data, quarantine and the report.
///
/// `parts` are the summaries of every listed part at its current generation (rejected files included).
pub fn run_batch_with(
    schemas: &Schemas,
    dt: NaiveDate,
    staging: Staging<'_>,
    parts: &[PartSummary],
    out: &BatchOutputs,
    limits: &Limits,
) -> Result<QualityReport, BatchError> {
    let mut report = QualityReport {
        dt,
        tables: BTreeMap::new(),
    };
    let mut key_sets: HashMap<String, KeySet> = HashMap::new();
    let referenced: HashSet<&str> = schemas
        .names()
        .filter_map(|n| schemas.table(n))
        .flat_map(|t| t.references().map(|(_, r)| r))
        .collect();
    // Conflicts stream to a file: their number grows with the data.
    let conflicts_path = out.conflicts();
    fs::create_dir_all(conflicts_path.parent().expect("reports path has a folder"))?;
    let conflicts_tmp = conflicts_path.with_extension("tmp");
    let mut conflicts_out = std::io::BufWriter::new(File::create(&conflicts_tmp)?);
    for table in schemas.in_dependency_order() {
        let mut mine: Vec<&PartSummary> = parts.iter().filter(|p| p.table == table.name).collect();
        mine.sort_by(|a, b| {
            (&a.file.object, &a.file.generation).cmp(&(&b.file.object, &b.file.generation))
        });
        let keep_keys = referenced.contains(table.name.as_str());
        let (table_report, keys) = run_table(
            table,
            staging,
            &mine,
            out,
            &key_sets,
            keep_keys,
            &mut conflicts_out,
            limits,
        )?;
        if keep_keys {
            key_sets.insert(table.name.clone(), keys);
        }
        report.tables.insert(table.name.clone(), table_report);
    }
    let quality = out.quality();
    write_atomic(&quality, &serde_json::to_vec_pretty(&report)?)?;
    conflicts_out.flush()?;
    drop(conflicts_out);
    fs::rename(&conflicts_tmp, &conflicts_path)?;
    Ok(report)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BatchError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)?;
    Ok(())
}

/// A staged file being read: from its Arrow IPC file, or the batches memory held for it.
enum StagedReader {
    File(FileReader<BufReader<File>>),
    Memory(SchemaRef, std::vec::IntoIter<RecordBatch>),
}

impl StagedReader {
    fn schema(&self) -> SchemaRef {
        match self {
            StagedReader::File(r) => r.schema(),
            StagedReader::Memory(schema, _) => schema.clone(),
        }
    }
}

impl Iterator for StagedReader {
    type Item = Result<RecordBatch, arrow_schema::ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            StagedReader::File(r) => r.next(),
            StagedReader::Memory(_, batches) => batches.next().map(Ok),
        }
    }
}

/// Opens a staged file (taking it out of memory when held there: each is read once); its
/// columns must have `want`'s types, the last one may be missing when `last_optional` (parts
/// staged by an earlier release).
fn open_staged(
    staging: Staging<'_>,
    path: &Path,
    want: &SchemaRef,
    last_optional: bool,
) -> Result<StagedReader, BatchError> {
    let staged = match staging.memory.and_then(|m| m.take(path)) {
        Some((schema, batches)) => StagedReader::Memory(schema, batches.into_iter()),
        None => {
            let f = BufReader::with_capacity(1 << 20, File::open(path)?);
            StagedReader::File(FileReader::try_new(f, None)?)
        }
    };
    let found = staged.schema();
    let (n, wanted) = (found.fields().len(), want.fields().len());
    let fits = (n == wanted || (last_optional && n + 1 == wanted))
        && found
            .fields()
            .iter()
            .zip(want.fields())
            .all(|(f, w)| f.data_type() == w.data_type());
    if !fits {
        let types = |s: &arrow_schema::Schema| {
            s.fields()
                .iter()
                .map(|f| f.data_type().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(BatchError::StagedMismatch {
            path: path.display().to_string(),
            reason: format!(
                "columns ({}) where ({}) are read",
                types(&found),
                types(want)
            ),
        });
    }
    Ok(staged)
}

/// The error for a staged data file whose rows are not its part's keys' rows.
fn rows_mismatch(path: &Path, keys: u64) -> BatchError {
    BatchError::StagedMismatch {
        path: path.display().to_string(),
        reason: format!("its rows are not the {keys} rows of its part's keys"),
    }
}

#[allow(clippy::too_many_arguments)]
fn run_table(
    table: &TableSchema,
    staging: Staging<'_>,
    parts: &[&PartSummary],
    out: &BatchOutputs,
    key_sets: &HashMap<String, KeySet>,
    keep_keys: bool,
    conflicts_out: &mut dyn Write,
    limits: &Limits,
) -> Result<(TableReport, KeySet), BatchError> {
    let mut rep = TableReport {
        fields: table
            .columns
            .iter()
            .map(|c| (c.name.clone(), Default::default()))
            .collect(),
        ..Default::default()
    };
    let good: Vec<&PartSummary> = parts
        .iter()
        .copied()
        .filter(|p| p.file.error.is_none())
        .collect();
    for p in parts {
        rep.files.push(p.file.clone());
        if p.file.error.is_some() {
            continue;
        }
        rep.rows_read += p.file.rows;
        rep.rows_quarantined += p.rows_quarantined;
        for (reason, n) in &p.quarantined_by_reason {
            *rep.quarantined_by_reason.entry(reason.clone()).or_default() += n;
        }
        for (col, c) in &p.fields {
            let f = rep.fields.entry(col.clone()).or_default();
            f.normalized += c.normalized;
            f.nulled += c.nulled;
        }
    }
    let paths: Vec<StagedPaths> = good
        .iter()
        .map(|p| StagedPaths::new(staging.dir, &p.file.object, &p.file.generation))
        .collect();
    for (p, path) in good.iter().zip(&paths) {
        if ![&path.data, &path.keys, &path.quarantine]
            .iter()
            .all(|f| staging.has(f))
        {
            return Err(BatchError::MissingStage {
                object: p.file.object.clone(),
                generation: p.file.generation.clone(),
            });
        }
    }

    // Pass 1: every staged row's key and version; sort; pick winners. Keys held by several rows
    // are kept as groups: their rows' contents are hashed in pass 2, where they are read.
    let ncols = table.columns.len();
    let mut entries: Vec<Entry> =
        Vec::with_capacity(good.iter().map(|p| p.rows_staged as usize).sum());
    let mut rows_per_part = Vec::with_capacity(good.len());
    for (pi, path) in paths.iter().enumerate() {
        let mut row = 0u64;
        for batch in open_staged(staging, &path.keys, &keys_schema(), false)? {
            let batch = batch?;
            let keys = batch.column(0).as_primitive::<UInt64Type>();
            let checks = batch.column(1).as_primitive::<UInt32Type>();
            let versions = batch.column(2).as_primitive::<Int64Type>();
            for i in 0..batch.num_rows() {
                entries.push(Entry {
                    key: keys.value(i),
                    check: checks.value(i),
                    part: pi as u32,
                    version: versions.value(i),
                    row,
                });
                row += 1;
            }
        }
        rows_per_part.push(row);
    }
    let mut winners = RowBits::new(&rows_per_part);
    // Rows of keys held by several rows, and those groups' winners.
    let mut grouped = RowBits::new(&rows_per_part);
    let mut group_winners = RowBits::new(&rows_per_part);
    let mut groups: Vec<Group> = Vec::new();
    let mut members: Vec<Pos> = Vec::new();
    for_each_key(&mut entries, |group| {
        let winner = group[group.len() - 1];
        let winner = (winner.part, winner.row);
        winners.set(winner);
        if group.len() > 1 {
            let from = members.len();
            for e in group {
                grouped.set((e.part, e.row));
                members.push((e.part, e.row));
            }
            group_winners.set(winner);
            groups.push(Group {
                winner,
                members: from..members.len(),
            });
        }
    });
    drop(entries);

    // Pass 2: write the winners that pass reference checks; quarantine the rest.
    let refs: Vec<(usize, &str, Option<&KeySet>)> = table
        .references()
        .map(|(i, t)| (i, t, key_sets.get(t)))
        .collect();
    // Keys and nearly unique columns skip the dictionary: it would only cost time.
    let mut props = WriterProperties::builder()
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(limits.row_group_rows.max(1)));
    for c in table.columns.iter().filter(|c| !c.dictionary) {
        props = props.set_column_dictionary_enabled(ColumnPath::from(c.name.as_str()), false);
    }
    // Quarantined rows are few: they keep every statistic.
    let quarantine_props = props.clone().build();
    // Keys and ids in no order skip min/max statistics in curated files: no reader prunes by
    // them, and they cost a comparison per value.
    for c in table.columns.iter().filter(|c| !c.statistics) {
        props = props.set_column_statistics_enabled(
            ColumnPath::from(c.name.as_str()),
            EnabledStatistics::None,
        );
    }
    let props = props.build();
    let (flush_rows, flush_bytes) = (limits.flush_rows(), limits.flush_bytes);
    let curated_path = out.curated(&table.name);
    fs::create_dir_all(curated_path.parent().expect("curated path has a folder"))?;
    let curated_tmp = curated_path.with_extension("parquet.tmp");
    let curated_schema = curated_schema(table);
    let mut curated = ParallelWriter::try_new(
        File::create(&curated_tmp)?,
        curated_schema.clone(),
        props,
        limits.encode_threads,
        limits.row_group_rows,
        limits.row_group_bytes,
    )?;
    let mut quarantine = QuarantineBuilder::new(table);
    let mut keys = KeySet::default();
    // Each grouped row's content hash and line, in part and row order (see `RowBits::rank`),
    // and each group's key, in its winner's order.
    let mut grouped_rows: Vec<(u64, u64)> = Vec::with_capacity(members.len());
    let mut group_keys: Vec<String> = Vec::with_capacity(groups.len());
    let (mut hash_buf, mut values) = (Vec::new(), Vec::new());
    // Rows failing a reference check are quarantined with their raw values (`raw_values`);
    // beyond one flush they wait in a spill file, to follow the rows staging quarantined.
    let spill_path = staging.dir.join(format!("_orphans.{}.arrow", table.name));
    let mut spill: Option<FileWriter<std::io::BufWriter<File>>> = None;
    let curated_columns: Vec<usize> = (0..ncols).collect();
    for (pi, path) in paths.iter().enumerate() {
        let mut row = 0u64;
        let reader = open_staged(staging, &path.data, &staged_schema(table), true)?;
        if reader.schema().fields().len() == ncols + 1 {
            tracing::warn!(
                object = %good[pi].file.object,
                "part staged without raw values (an earlier release): rows quarantined by a reference check carry their canonical text"
            );
        }
        for batch in reader {
            let batch = batch?;
            if row + batch.num_rows() as u64 > rows_per_part[pi] {
                return Err(rows_mismatch(&path.data, rows_per_part[pi]));
            }
            let key_col = batch.column(table.key).as_string::<i32>();
            let line_col = batch.column(ncols).as_primitive::<Int64Type>();
            // The reference checks, a column at a time before the rows: in a loop of probes
            // alone the CPU overlaps the key sets' cache misses (1M customers' keys are ~34 MB).
            let known: Vec<Vec<bool>> = refs
                .iter()
                .map(|(ci, _, set)| {
                    let v = batch.column(*ci).as_string::<i32>();
                    (0..batch.num_rows())
                        .map(|i| {
                            v.is_null(i) || set.is_some_and(|s| s.contains(&key_id(v.value(i))))
                        })
                        .collect()
                })
                .collect();
            let mut mask = Vec::with_capacity(batch.num_rows());
            for i in 0..batch.num_rows() {
                let pos = (pi as u32, row + i as u64);
                if grouped.get(pos) {
                    values.clear();
                    values.extend((0..ncols).map(|c| value_at(batch.column(c).as_ref(), i)));
                    let hash = row_hash(&values, &mut hash_buf);
                    grouped_rows.push((hash, line_col.value(i) as u64));
                    if group_winners.get(pos) {
                        group_keys.push(key_col.value(i).to_string());
                    }
                }
                if !winners.get(pos) {
                    mask.push(false);
                    continue;
                }
                let mut reasons = Vec::new();
                for ((_, target, _), known) in refs.iter().zip(&known) {
                    if !known[i] {
                        reasons.push(format!("unknown_{}", entity(target)));
                    }
                }
                if reasons.is_empty() {
                    if keep_keys {
                        keys.insert(key_id(key_col.value(i)));
                    }
                    mask.push(true);
                } else {
                    quarantine_staged_row(
                        &mut rep,
                        &mut quarantine,
                        good[pi],
                        raw_values(&batch, ncols, i),
                        line_col.value(i),
                        reasons,
                    );
                    if quarantine.len() >= flush_rows || quarantine.bytes() >= flush_bytes {
                        let w = match &mut spill {
                            Some(w) => w,
                            None => spill.insert(FileWriter::try_new(
                                std::io::BufWriter::new(File::create(&spill_path)?),
                                &quarantine_schema(table),
                            )?),
                        };
                        w.write(&quarantine.finish())?;
                    }
                    mask.push(false);
                }
            }
            row += batch.num_rows() as u64;
            // The curated columns alone are filtered: not the lines and raw values.
            let kept = arrow_select::filter::filter_record_batch(
                &batch.project(&curated_columns)?,
                &BooleanArray::from(mask),
            )?;
            let kept = RecordBatch::try_new(curated_schema.clone(), kept.columns().to_vec())?;
            rep.rows_kept += kept.num_rows() as u64;
            curated.write(&kept)?;
        }
        if row != rows_per_part[pi] {
            return Err(rows_mismatch(&path.data, rows_per_part[pi]));
        }
    }
    curated.close()?;
    fs::rename(&curated_tmp, &curated_path)?;

    // Quarantined rows from staging, with reference reasons added where they apply too.
    let quarantine_path = out.quarantine(&table.name);
    fs::create_dir_all(
        quarantine_path
            .parent()
            .expect("quarantine path has a folder"),
    )?;
    let quarantine_tmp = quarantine_path.with_extension("parquet.tmp");
    let mut qwriter = ArrowWriter::try_new(
        File::create(&quarantine_tmp)?,
        quarantine_schema(table),
        Some(quarantine_props),
    )?;
    for path in &paths {
        for batch in open_staged(staging, &path.quarantine, &quarantine_schema(table), false)? {
            let mut builder = QuarantineBuilder::new(table);
            for mut row in quarantined_rows(&batch?, ncols) {
                if row.record.is_none() {
                    let added = reference_reasons(table, &row, key_sets);
                    for r in &added {
                        *rep.quarantined_by_reason.entry(r.clone()).or_default() += 1;
                    }
                    row.reasons.extend(added);
                }
                builder.append(&row);
            }
            qwriter.write(&builder.finish())?;
            if qwriter.in_progress_size() >= limits.row_group_bytes {
                qwriter.flush()?;
            }
        }
    }
    if let Some(mut w) = spill {
        w.finish()?;
        drop(w);
        for batch in open_staged(
            Staging::dir(staging.dir),
            &spill_path,
            &quarantine_schema(table),
            false,
        )? {
            qwriter.write(&batch?)?;
            if qwriter.in_progress_size() >= limits.row_group_bytes {
                qwriter.flush()?;
            }
        }
        fs::remove_file(&spill_path)?;
    }
    if !quarantine.is_empty() {
        qwriter.write(&quarantine.finish())?;
    }
    qwriter.close()?;
    fs::rename(&quarantine_tmp, &quarantine_path)?;

    // Duplicates (same content) and conflicts (different contents) within each group.
    let (row_ranks, winner_ranks) = (grouped.ranks(), group_winners.ranks());
    let content = |pos: Pos| grouped_rows[grouped.rank(&row_ranks, pos)];
    let mut conflicts: Vec<Conflict> = Vec::new();
    let mut distinct: Vec<u64> = Vec::new();
    for g in &groups {
        let rows = &members[g.members.clone()];
        distinct.clear();
        distinct.extend(rows.iter().map(|&p| content(p).0));
        distinct.sort_unstable();
        distinct.dedup();
        let m = distinct.len() as u64;
        rep.duplicates_removed += rows.len() as u64 - m;
        rep.conflicts_resolved += m - 1;
        if m > 1 {
            // One loser listed per distinct losing content: its last row. A set, not a
            // list: one key shared by millions of rows stays linear; the list is capped.
            let mut losers: Vec<Pos> = Vec::new();
            let mut seen: HashSet<u64> = HashSet::from([content(g.winner).0]);
            for &p in rows.iter().rev() {
                if losers.len() == MAX_LISTED_LOSERS {
                    break;
                }
                if seen.insert(content(p).0) {
                    losers.push(p);
                }
            }
            conflicts.push(Conflict {
                key: std::mem::take(&mut group_keys[group_winners.rank(&winner_ranks, g.winner)]),
                winner: g.winner,
                not_listed: m - 1 - losers.len() as u64,
                losers,
            });
        }
    }
    conflicts.sort_by_key(|c| c.winner);
    for c in &conflicts {
        let place = |pos: Pos| Place {
            object: &good[pos.0 as usize].file.object,
            line: content(pos).1,
        };
        let record = ConflictRecord {
            table: &table.name,
            key: &c.key,
            winner: place(c.winner),
            losers: c.losers.iter().map(|&p| place(p)).collect(),
            losers_not_listed: c.not_listed,
        };
        serde_json::to_writer(&mut *conflicts_out, &record)?;
        conflicts_out.write_all(b"\n")?;
    }
    debug_assert!(rep.balances(), "{} does not balance: {rep:?}", table.name);
    Ok((rep, keys))
}

/// `customers` → `customer`: the entity a table's key names, for `unknown_<entity>`.
fn entity(table: &str) -> &str {
    table.strip_suffix('s').unwrap_or(table)
}

fn quarantine_staged_row(
    rep: &mut TableReport,
    quarantine: &mut QuarantineBuilder,
    part: &PartSummary,
    values: Vec<Option<String>>,
    line: i64,
    reasons: Vec<String>,
) {
    for r in &reasons {
        *rep.quarantined_by_reason.entry(r.clone()).or_default() += 1;
    }
    rep.rows_quarantined += 1;
    quarantine.append(&QuarantinedRow {
        raw: values,
        reasons,
        object: part.file.object.clone(),
        generation: part.file.generation.clone(),
        line: line as u64,
        record: None,
    });
}

/// Reference reasons of a row already quarantined by field rules, from its raw values.
fn reference_reasons(
    table: &TableSchema,
    row: &QuarantinedRow,
    key_sets: &HashMap<String, KeySet>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (ci, target) in table.references() {
        let col = &table.columns[ci];
        let Some(raw) = row.raw.get(ci).and_then(|v| v.as_deref()) else {
            continue;
        };
        if super::validators::is_null_marker(raw) {
            continue;
        }
        let Ok(Value::Str(v)) = col.kind.validate(raw, &col.options, None, NaiveDate::MAX) else {
            continue;
        };
        if !key_sets
            .get(target)
            .is_some_and(|s| s.contains(&key_id(&v)))
        {
            out.push(format!("unknown_{}", entity(target)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clean::stage::stage_part;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 28).unwrap()
    }

    #[test]
    fn staged_files_that_disagree_are_refused_not_read() {
        let schemas = Schemas::builtin().unwrap();
        let products = schemas.table("products").unwrap();
        let dt = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
        let stage = |staging: &Path, p: usize, rows: usize| {
            let mut csv = String::from(
                "product_code,ean,name,brand,manufacturer,segment,unit_size,updated_at\n",
            );
            for i in 0..rows {
                csv.push_str(&format!(
                    "OHB-{:06},,Cola,Hungry,OuchHungry,Refrigerantes,,2026-11-01 10:00:00\n",
                    i + 1000 * p
                ));
            }
            let object = format!("extracts/products/dt=2026-11-27/part-00{p}.csv");
            let part = stage_part(
                products,
                &object,
                "1",
                std::io::Cursor::new(csv),
                staging,
                today(),
            )
            .unwrap();
            (part, StagedPaths::new(staging, &object, "1"))
        };
        // (what to damage, the message's words)
        type Damage = fn(&StagedPaths, &StagedPaths);
        let cases: [(Damage, &str); 3] = [
            // Another part's data: fewer rows than the keys, then more.
            (|a, b| fs::copy(&b.data, &a.data).map(drop).unwrap(), "rows"),
            (|a, b| fs::copy(&a.data, &b.data).map(drop).unwrap(), "rows"),
            // A data file where the keys should be.
            (
                |a, _| fs::copy(&a.data, &a.keys).map(drop).unwrap(),
                "columns",
            ),
        ];
        for (damage, words) in cases {
            let dir = tempfile::tempdir().unwrap();
            let staging = dir.path().join("staging");
            let (a, a_paths) = stage(&staging, 0, 50);
            let (b, b_paths) = stage(&staging, 1, 20);
            damage(&a_paths, &b_paths);
            let out = BatchOutputs {
                root: dir.path().join("out"),
                dt,
            };
            match run_batch(&schemas, dt, &staging, &[a, b], &out) {
                Err(BatchError::StagedMismatch { reason, .. }) => {
                    assert!(reason.contains(words), "{reason}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn keys_sharing_a_hash_are_told_apart_by_their_check() {
        let e = |key, check, version, part, row| Entry {
            key,
            check,
            part,
            version,
            row,
        };
        let mut entries = vec![
            e(7, 2, 5, 0, 0),
            e(3, 1, 0, 0, 1),
            e(7, 1, 9, 0, 2),
            e(7, 2, 4, 1, 0),
            e(7, 1, 9, 0, 3),
            e(1, 1, 0, 1, 1),
        ];
        let mut seen = Vec::new();
        for_each_key(&mut entries, |g| {
            seen.push(
                g.iter()
                    .map(|e| (e.key, e.check, e.part, e.row))
                    .collect::<Vec<_>>(),
            )
        });
        assert_eq!(
            seen,
            vec![
                vec![(1, 1, 1, 1)],
                vec![(3, 1, 0, 1)],
                vec![(7, 1, 0, 2), (7, 1, 0, 3)],
                vec![(7, 2, 1, 0), (7, 2, 0, 0)],
            ]
        );
    }

    #[test]
    fn one_key_shared_by_many_distinct_rows_is_linear_and_lists_a_capped_set_of_losers() {
        let schemas = Schemas::builtin().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("staging");
        let dt = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
        let mut csv =
            String::from("product_code,ean,name,brand,manufacturer,segment,unit_size,updated_at\n");
        let n = 5_000;
        for i in 0..n {
            csv.push_str(&format!(
                "OHB-000101,,Cola {i},Hungry,OuchHungry,Refrigerantes,,2026-11-01 10:00:00\n"
            ));
        }
        let part = stage_part(
            schemas.table("products").unwrap(),
            "extracts/products/dt=2026-11-27/part-000.csv",
            "1",
            std::io::Cursor::new(csv),
            &staging,
            today(),
        )
        .unwrap();
        let out = BatchOutputs {
            root: dir.path().join("out"),
            dt,
        };
        let report = run_batch(&schemas, dt, &staging, &[part], &out).unwrap();
        let p = &report.tables["products"];
        assert_eq!((p.rows_kept, p.conflicts_resolved), (1, n - 1));
        let conflicts = fs::read_to_string(out.conflicts()).unwrap();
        let record: serde_json::Value = serde_json::from_str(conflicts.trim()).unwrap();
        assert_eq!(
            record["losers"].as_array().unwrap().len(),
            MAX_LISTED_LOSERS
        );
        assert_eq!(
            record["losers_not_listed"],
            n - 1 - MAX_LISTED_LOSERS as u64
        );
        // The tie goes to the last line; the losers are listed from the last one back.
        assert_eq!(record["winner"]["line"], n + 1);
        assert_eq!(record["losers"][0]["line"], n);
    }

    #[test]
    fn curated_keys_and_columns_marked_so_have_no_statistics() {
        let schemas = Schemas::parse(
            &crate::clean::schema::DEFAULT_TABLES_TOML.replace(
                "name = \"brand\"\n",
                "name = \"brand\"\nstatistics = false\n",
            ),
            "test",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("staging");
        let dt = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
        let csv = "product_code,ean,name,brand,manufacturer,segment,unit_size,updated_at\n\
                   OHB-000101,,Cola,Hungry,OuchHungry,Refrigerantes,,2026-11-01 10:00:00\n\
                   OHB-000102,,Soda,Hungry,OuchHungry,Refrigerantes,,2026-11-01 10:00:00\n";
        let part = stage_part(
            schemas.table("products").unwrap(),
            "extracts/products/dt=2026-11-27/part-000.csv",
            "1",
            std::io::Cursor::new(csv),
            &staging,
            today(),
        )
        .unwrap();
        let out = BatchOutputs {
            root: dir.path().join("out"),
            dt,
        };
        run_batch(&schemas, dt, &staging, &[part], &out).unwrap();
        use parquet::file::reader::FileReader as _;
        let reader = parquet::file::reader::SerializedFileReader::new(
            File::open(out.curated("products")).unwrap(),
        )
        .unwrap();
        let rg = reader.metadata().row_group(0);
        let with_stats: Vec<&str> = (0..rg.num_columns())
            .filter(|&i| rg.column(i).statistics().is_some())
            .map(|i| rg.column(i).column_descr().name())
            .collect();
        assert_eq!(
            with_stats,
            [
                "ean",
                "name",
                "manufacturer",
                "segment",
                "unit_size",
                "updated_at"
            ]
        );
    }

    #[test]
    fn rows_failing_a_reference_keep_their_raw_text_whether_staged_or_given_back() {
        let schemas = Schemas::builtin().unwrap();
        let table = schemas.table("transactions").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("staging");
        let dt = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
        let header = "transaction_id,order_id,customer_id,product_code,quantity,unit_price,\
                      discount,status,sold_at,delivery_cep,city,uf,updated_at";
        // Every value readable but written otherwise than its canonical text.
        let messy = [
            " t-1 ",
            " o-1",
            "c-000001",
            "ohb 000101",
            "2 un",
            "10,5",
            "",
            "Concluído",
            "2026-11-26 10:00:00",
            "01310100",
            "sao paulo",
            "sp",
            "",
        ];
        let mut cleaned = super::super::stage::CleanRow::default();
        super::super::stage::RowCleaner::new(table, today())
            .clean(|i| messy.get(i).copied(), &mut cleaned);
        assert!(cleaned.reasons.is_empty(), "{:?}", cleaned.reasons);
        // The same row in canonical text, with an empty optional value.
        let mut canonical: Vec<String> = cleaned
            .values
            .iter()
            .map(|v| v.as_ref().map(Value::canonical).unwrap_or_default())
            .collect();
        canonical[0] = "T-2".into();
        canonical[9] = String::new();
        let csv = format!(
            "{header}\n{}\n{}\n",
            messy.map(|v| format!("\"{v}\"")).join(","),
            canonical.join(",")
        );
        let part = stage_part(
            table,
            "extracts/transactions/dt=2026-11-27/part-000.csv",
            "1",
            std::io::Cursor::new(csv),
            &staging,
            today(),
        )
        .unwrap();
        assert_eq!(part.rows_staged, 2);
        // Only the messy row keeps its raw text in the staged file.
        let paths = StagedPaths::new(&staging, &part.file.object, &part.file.generation);
        let staged = open_staged(
            Staging::dir(&staging),
            &paths.data,
            &staged_schema(table),
            false,
        )
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
        let raw = staged.column(table.columns.len() + 1);
        assert_eq!((raw.len(), raw.null_count()), (2, 1));
        assert!(raw.is_valid(0));
        // A part staged before `_raw` existed gives the canonical text back for every row.
        let ncols = table.columns.len();
        let old_layout = staged.project(&(0..=ncols).collect::<Vec<_>>()).unwrap();
        let mut messy_canonical = canonical.clone();
        messy_canonical[0] = "T-1".into();
        messy_canonical[9] = cleaned.values[9].as_ref().unwrap().canonical();
        for (i, want) in [messy_canonical, canonical.clone()].iter().enumerate() {
            let got: Vec<String> = raw_values(&old_layout, ncols, i)
                .into_iter()
                .map(Option::unwrap_or_default)
                .collect();
            assert_eq!(&got, want);
        }

        let out = BatchOutputs {
            root: dir.path().join("out"),
            dt,
        };
        let report = run_batch(&schemas, dt, &staging, &[part], &out).unwrap();
        assert_eq!(report.tables["transactions"].rows_quarantined, 2);
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(
            File::open(out.quarantine("transactions")).unwrap(),
            1024,
        )
        .unwrap();
        let rows: Vec<QuarantinedRow> = reader
            .flat_map(|b| super::super::columns::quarantined_rows(&b.unwrap(), table.columns.len()))
            .collect();
        let raw_of = |r: &QuarantinedRow| -> Vec<String> {
            r.raw
                .iter()
                .map(|v| v.clone().unwrap_or_default())
                .collect()
        };
        assert_eq!(raw_of(&rows[0]), messy.map(String::from));
        assert_eq!(raw_of(&rows[1]), canonical);
        assert_eq!(rows[1].reasons, ["unknown_customer", "unknown_product"]);
        assert_eq!((rows[0].line, rows[1].line), (2, 3));
    }

    #[test]
    fn dedups_across_parts_checks_references_and_balances() {
        let schemas = Schemas::builtin().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("staging");
        let dt = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
        let stage = |table: &str, object: &str, csv: &str| {
            stage_part(
                schemas.table(table).unwrap(),
                object,
                "1",
                std::io::Cursor::new(csv.to_string()),
                &staging,
                today(),
            )
            .unwrap()
        };
        let products = stage(
            "products",
            "extracts/products/dt=2026-11-27/part-000.csv",
            "product_code,ean,name,brand,manufacturer,segment,unit_size,updated_at\n\
             OHB-000101,7894900011517,Hungry Cola,Hungry,OuchHungry,Refrigerantes,350ml,2026-11-01 10:00:00\n",
        );
        let customers = stage(
            "customers",
            "extracts/customers/dt=2026-11-27/part-000.csv",
            "customer_id,name,email,cpf,phone,birth_date,cep,city,uf,created_at,updated_at\n\
             C-1,Ana,ana@x.com.br,529.982.247-25,(11) 91234-5678,1990-01-02,01001-000,sao paulo,SP,2020-01-01,2026-01-01\n",
        );
        let header = "transaction_id,order_id,customer_id,product_code,quantity,unit_price,discount,status,sold_at,delivery_cep,city,uf,updated_at\n";
        let p0 = stage(
            "transactions",
            "extracts/transactions/dt=2026-11-27/part-000.csv",
            &format!(
                "{header}TX-1,O-1,C-1,OHB-000101,1,7.99,0,completed,2026-11-27 10:00:00,,São Paulo,SP,2026-11-27 10:00:00\n\
                 TX-1,O-1,C-1,OHB-000101,1,\"7,99\",,Concluído,27/11/2026 10:00,,SAO PAULO,sp,2026-11-27 10:00:00\n\
                 TX-2,O-2,C-1,OHB-000101,1,7.99,0,completed,2026-11-27 10:00:00,,São Paulo,SP,2026-11-27 12:00:00\n\
                 TX-3,O-3,C-9,OHB-000101,1,7.99,0,completed,2026-11-27 10:00:00,,São Paulo,SP,\n\
                 TX-4,O-4,C-9,OHB-000101,abc,7.99,0,completed,2026-11-27 10:00:00,,São Paulo,SP,\n"
            ),
        );
        let p1 = stage(
            "transactions",
            "extracts/transactions/dt=2026-11-27/part-001.csv",
            &format!(
                "{header}TX-2,O-2,C-1,OHB-000101,1,7.99,0,refunded,2026-11-27 10:00:00,,São Paulo,SP,2026-11-27 11:00:00\n\
                 tx-1,O-1,C-1,OHB-000101,1,7.99,0.00,completed,2026-11-27T13:00:00Z,,São Paulo,SP,2026-11-27T13:00:00Z\n"
            ),
        );
        let out = BatchOutputs {
            root: dir.path().join("out"),
            dt,
        };
        let report =
            run_batch(&schemas, dt, &staging, &[products, customers, p0, p1], &out).unwrap();
        let t = &report.tables["transactions"];
        assert_eq!(t.rows_read, 7);
        assert_eq!(
            t.duplicates_removed, 2,
            "TX-1 three times, identical after normalization"
        );
        assert_eq!(
            t.conflicts_resolved, 1,
            "TX-2: the later updated_at in the earlier part wins"
        );
        assert_eq!(t.rows_quarantined, 2);
        assert_eq!(t.quarantined_by_reason["unknown_customer"], 2);
        assert_eq!(t.quarantined_by_reason["invalid_quantity"], 1);
        assert_eq!(t.rows_kept, 2);
        assert!(t.balances());
        let conflicts = fs::read_to_string(out.conflicts()).unwrap();
        assert!(conflicts.contains("\"key\":\"TX-2\""), "{conflicts}");
        assert!(
            conflicts.contains("part-001.csv\",\"line\":2"),
            "{conflicts}"
        );
        assert!(out.curated("transactions").exists() && out.quarantine("transactions").exists());
        assert!(out.quality().exists());
    }
}
