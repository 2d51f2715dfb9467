//! Staging one part: decode, parse, apply the field rules, keep good and quarantined rows apart.
//!
//! Staging needs nothing but the part itself, so the worker can stage each object as it lands.
//! Its output (Arrow IPC files and a summary) is what the batch step reads.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Read};
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_ipc::CompressionType;
use arrow_ipc::writer::{FileWriter, IpcWriteOptions};
use arrow_schema::SchemaRef;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use super::Limits;
use super::columns::{
    QuarantineBuilder, QuarantinedRow, RAW_SEP, RowIdentity, StagedBatches, StagedBuilder,
    key_hash, keys_schema, quarantine_schema, staged_schema,
};
use super::memory::StagedMemory;
use super::report::{FieldCounts, FileError, FileReport};
use super::schema::{OnInvalid, TableSchema};
use super::validators::{Kind, Value, is_trimmed_null_marker};
use crate::extract::{CsvReader, FileFault, Record};

/// Staging failed for a reason outside the file's content, naming the object.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Reading the input or writing the staging area failed.
    #[error("staging {object}: i/o: {source}")]
    Io {
        /// The object being staged (empty until known).
        object: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Encoding the staged Arrow files failed.
    #[error("staging {object}: arrow: {source}")]
    Arrow {
        /// The object being staged.
        object: String,
        /// The cause.
        source: arrow_schema::ArrowError,
    },
    /// The summary could not be written.
    #[error("staging {object}: summary: {source}")]
    Json {
        /// The object being staged.
        object: String,
        /// The cause.
        source: serde_json::Error,
    },
}

impl From<std::io::Error> for StageError {
    fn from(source: std::io::Error) -> Self {
        StageError::Io {
            object: String::new(),
            source,
        }
    }
}

impl From<arrow_schema::ArrowError> for StageError {
    fn from(source: arrow_schema::ArrowError) -> Self {
        StageError::Arrow {
            object: String::new(),
            source,
        }
    }
}

impl From<serde_json::Error> for StageError {
    fn from(source: serde_json::Error) -> Self {
        StageError::Json {
            object: String::new(),
            source,
        }
    }
}

impl StageError {
    /// Transient, except a path the platform cannot hold (too long, a NUL): staging again
    /// would fail the same way.
    pub fn is_transient(&self) -> bool {
        match self {
            StageError::Io { source, .. } => !matches!(
                source.kind(),
                std::io::ErrorKind::InvalidFilename | std::io::ErrorKind::InvalidInput
            ),
            StageError::Arrow { .. } | StageError::Json { .. } => true,
        }
    }

    /// Names the object, when the error does not yet.
    pub fn at(mut self, name: &str) -> Self {
        let (StageError::Io { object, .. }
        | StageError::Arrow { object, .. }
        | StageError::Json { object, .. }) = &mut self;
        if object.is_empty() {
            *object = name.to_string();
        }
        self
    }
}

/// What staging one part produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartSummary {
    /// The table.
    pub table: String,
    /// The file as read (encoding, delimiter, rows, extra columns, file-level error).
    pub file: FileReport,
    /// Rows that passed the field rules.
    pub rows_staged: u64,
    /// Rows quarantined by field rules or as malformed.
    pub rows_quarantined: u64,
    /// Quarantined rows per reason.
    pub quarantined_by_reason: BTreeMap<String, u64>,
    /// Per column counts.
    pub fields: BTreeMap<String, FieldCounts>,
}

/// Where a staged part's files live inside a staging folder.
#[derive(Debug, Clone)]
pub struct StagedPaths {
    /// Typed values of the rows that passed the field rules, with their lines and the raw
    /// values that differ from them, for rows the batch step quarantines (Arrow IPC).
    pub data: PathBuf,
    /// Their keys and versions: all deduplication reads (Arrow IPC).
    pub keys: PathBuf,
    /// Quarantined rows (Arrow IPC).
    pub quarantine: PathBuf,
    /// The [`PartSummary`] as JSON, written last.
    pub summary: PathBuf,
}

impl StagedPaths {
    /// Paths of one object generation's staged files; a name too long for a file system
    /// (object names reach 1,024 bytes) is cut and completed by a hash of the whole.
    pub fn new(staging: &Path, object: &str, generation: &str) -> Self {
        let mut base = format!("{}@{}", object.replace('/', "~"), generation);
        if base.len() > MAX_BASE_BYTES {
            let hash = xxhash_rust::xxh3::xxh3_128(base.as_bytes());
            let mut cut = MAX_BASE_BYTES - 33;
            while !base.is_char_boundary(cut) {
                cut -= 1;
            }
            base = format!("{}~{hash:032x}", &base[..cut]);
        }
        let file = |suffix: &str| staging.join(format!("{base}.{suffix}"));
        Self {
            data: file("data.arrow"),
            keys: file("keys.arrow"),
            quarantine: file("quarantine.arrow"),
            summary: file("summary.json"),
        }
    }

    /// Every staged file, the summary last (it says the others are complete).
    pub fn files(&self) -> [&Path; 4] {
        self.named().map(|(_, p)| p)
    }

    /// Every staged file with its suffix (what follows `<object>@<generation>.`), the summary last.
    pub fn named(&self) -> [(&'static str, &Path); 4] {
        [
            ("data.arrow", &self.data),
            ("keys.arrow", &self.keys),
            ("quarantine.arrow", &self.quarantine),
            ("summary.json", &self.summary),
        ]
    }
}

/// Bytes of a staged file's name before its suffix: 255-byte names with the longest suffix.
const MAX_BASE_BYTES: usize = 160;

/// Indexes of [`StagedWriters`], in the order they are created.
const DATA: usize = 0;
const KEYS: usize = 1;
const QUARANTINE: usize = 2;

/// Staged files compressed (Arrow IPC buffer compression, zstd level 1) when `compress`: in the
/// worker they go up to the curated bucket and back down for the batch step, ~400 bytes a row
/// uncompressed; on one machine the compression would only cost CPU. Level 1 against LZ4 on a
/// 1M-row day: 67 MB instead of 106 MB for ~0.1 s more CPU; files staged with LZ4 read the same.
fn staged_ipc_options(compress: bool) -> Result<IpcWriteOptions, StageError> {
    let options = IpcWriteOptions::default();
    Ok(match compress {
        true => options
            .try_with_compression(Some(CompressionType::ZSTD))?
            .try_with_compression_level(Some(STAGED_ZSTD_LEVEL))?,
        false => options,
    })
}

/// The zstd level of staged files: as small as the default level (3) on staged rows, for less CPU.
const STAGED_ZSTD_LEVEL: i32 = 1;

/// Where a part is staged: a folder, and the memory that may hold its staged files instead.
#[derive(Debug, Clone, Copy)]
pub struct Staging<'a> {
    /// The staging folder (summaries always, staged files when not held in memory).
    pub dir: &'a Path,
    /// Staged files held in memory while its budget lasts (the local `clean` command).
    pub memory: Option<&'a StagedMemory>,
}

impl<'a> Staging<'a> {
    /// Staging to files in `dir` only (the worker: its staged files go to the bucket).
    pub fn dir(dir: &'a Path) -> Self {
        Self { dir, memory: None }
    }

    /// Returns true when a staged file is held in memory or exists under `path`.
    pub fn has(&self, path: &Path) -> bool {
        self.memory.is_some_and(|m| m.contains(path)) || path.exists()
    }
}

/// A staged file's Arrow IPC writer.
type IpcFile = FileWriter<BufWriter<File>>;

/// Where one staged file's batches go.
enum Sink {
    /// An Arrow IPC file under a temporary name (renamed when the part is complete).
    File(Box<IpcFile>, PathBuf),
    /// Batches held in memory, with the bytes reserved for them.
    Memory(StagedMemory, Vec<RecordBatch>, usize),
}

/// One staged file being written.
struct StagedWriter {
    sink: Sink,
    path: PathBuf,
    schema: SchemaRef,
}

/// The staged files of one part, each written to a temporary name until the part is complete,
/// or held in memory while the budget lasts (then written out, what it held first).
struct StagedWriters {
    writers: Vec<StagedWriter>,
    compress: bool,
}

impl StagedWriters {
    fn create(
        targets: &[(&Path, SchemaRef)],
        compress: bool,
        memory: Option<&StagedMemory>,
    ) -> Result<Self, StageError> {
        let mut writers = Vec::with_capacity(targets.len());
        for (path, schema) in targets {
            let sink = match memory {
                Some(m) => Sink::Memory(m.clone(), Vec::new(), 0),
                None => {
                    let (f, tmp) = file_writer(path, schema, compress)?;
                    Sink::File(f, tmp)
                }
            };
            writers.push(StagedWriter {
                sink,
                path: path.to_path_buf(),
                schema: schema.clone(),
            });
        }
        Ok(Self { writers, compress })
    }

    fn write(&mut self, i: usize, batch: &RecordBatch) -> Result<(), StageError> {
        let w = &mut self.writers[i];
        match &mut w.sink {
            Sink::File(f, _) => Ok(f.write(batch)?),
            Sink::Memory(memory, held, bytes) => {
                let n = batch.get_array_memory_size();
                if memory.reserve(n) {
                    held.push(batch.clone());
                    *bytes += n;
                    return Ok(());
                }
                let (mut f, tmp) = file_writer(&w.path, &w.schema, self.compress)?;
                for b in held.iter().chain([batch]) {
                    f.write(b)?;
                }
                memory.release(*bytes);
                w.sink = Sink::File(f, tmp);
                Ok(())
            }
        }
    }

    fn finish(mut self) -> Result<(), StageError> {
        for w in std::mem::take(&mut self.writers) {
            match w.sink {
                Sink::File(mut f, tmp) => {
                    f.finish()?;
                    drop(f);
                    fs::rename(&tmp, &w.path)?;
                }
                Sink::Memory(memory, held, bytes) => memory.insert(&w.path, w.schema, held, bytes),
            }
        }
        Ok(())
    }
}

impl Drop for StagedWriters {
    /// A part given up (a file-level failure) gives its reserved bytes back.
    fn drop(&mut self) {
        for w in &self.writers {
            if let Sink::Memory(memory, _, bytes) = &w.sink {
                memory.release(*bytes);
            }
        }
    }
}

/// A staged file's Arrow IPC writer, to its temporary name.
fn file_writer(
    path: &Path,
    schema: &SchemaRef,
    compress: bool,
) -> Result<(Box<IpcFile>, PathBuf), StageError> {
    let tmp = path.with_extension("arrow.tmp");
    let file = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
    let w = FileWriter::try_new_with_options(file, schema, staged_ipc_options(compress)?)?;
    Ok((Box::new(w), tmp))
}

/// Applies a table's field rules to one row of raw values.
pub struct RowCleaner<'s> {
    schema: &'s TableSchema,
    order: Vec<usize>,
    today: NaiveDate,
    uf_index: Option<usize>,
}

/// The outcome of the field rules on one row.
#[derive(Debug, Default)]
pub struct CleanRow {
    /// Typed values in schema order (None: null).
    pub values: Vec<Option<Value>>,
    /// Reasons to quarantine; empty when the row is good.
    pub reasons: Vec<String>,
    /// Columns whose value was normalized.
    pub normalized: Vec<bool>,
    /// Columns whose invalid value was nulled.
    pub nulled: Vec<bool>,
    /// Columns whose raw text is the canonical text of their value (empty: no value), so the
    /// staged value gives the raw text back.
    pub verbatim: Vec<bool>,
}

impl<'s> RowCleaner<'s> {
    /// Prepares the rules of a table; `today` bounds dates that may not be in the future.
    pub fn new(schema: &'s TableSchema, today: NaiveDate) -> Self {
        // Municipalities need their row's cleaned UF: evaluate them last.
        let mut order: Vec<usize> = (0..schema.columns.len()).collect();
        order.sort_by_key(|&i| schema.columns[i].kind == Kind::Municipality);
        let uf_index = schema.columns.iter().find_map(|c| c.options.uf_column);
        Self {
            schema,
            order,
            today,
            uf_index,
        }
    }

    /// Evaluates every field rule of a row; `raw(i)` is column i's raw value (None: column absent).
    pub fn clean<'r>(&self, raw: impl Fn(usize) -> Option<&'r str>, out: &mut CleanRow) {
        let n = self.schema.columns.len();
        if out.values.len() != n {
            out.values.resize(n, None);
            out.normalized.resize(n, false);
            out.nulled.resize(n, false);
            out.verbatim.resize(n, false);
        }
        out.reasons.clear();
        // Every column's slots are written once a row, in the order the rules need.
        for &i in &self.order {
            let col = &self.schema.columns[i];
            let r = raw(i).unwrap_or("");
            let trimmed = super::validators::trim(r);
            let (mut value, mut normalized, mut nulled, mut verbatim) = (None, false, false, false);
            if is_trimmed_null_marker(trimmed) {
                if let Some(d) = &col.default {
                    value = col.kind.validate(d, &col.options, None, self.today).ok();
                    normalized = r != d.as_str();
                } else if col.required {
                    out.reasons.push(format!("missing_{}", col.name));
                } else {
                    verbatim = r.is_empty();
                }
            } else {
                let uf = match (col.kind, self.uf_index) {
                    (Kind::Municipality, Some(u)) => match &out.values[u] {
                        Some(Value::Str(s)) => Some(s.as_str()),
                        _ => None,
                    },
                    _ => None,
                };
                // A pattern rule normalizes the raw value itself (trimming is one of its options).
                match col
                    .kind
                    .validate_trimmed(trimmed, r, &col.options, uf, self.today)
                {
                    Ok(v) => {
                        normalized = differs(&v, r);
                        verbatim = !normalized;
                        value = Some(v);
                    }
                    Err(_) => match col.on_invalid {
                        OnInvalid::Null => nulled = true,
                        OnInvalid::Quarantine => out.reasons.push(format!("invalid_{}", col.name)),
                    },
                }
            }
            out.values[i] = value;
            out.normalized[i] = normalized;
            out.nulled[i] = nulled;
            out.verbatim[i] = verbatim;
        }
        self.sort_reasons(out);
    }

    /// Quarantines a row holding a NUL character: `invalid_<column>` for each column whose
    /// raw value has one (whatever the column's `on_invalid`), else `malformed_row` (the NUL is
    /// in a column the table ignores).
    pub fn refuse_nul<'r>(&self, raw: impl Fn(usize) -> Option<&'r str>, out: &mut CleanRow) {
        let mut found = false;
        for (i, col) in self.schema.columns.iter().enumerate() {
            if raw(i).is_some_and(|v| v.contains('\0')) {
                found = true;
                out.values[i] = None;
                let reason = format!("invalid_{}", col.name);
                if !out.reasons.contains(&reason) {
                    out.reasons.push(reason);
                }
            }
        }
        if !found {
            out.reasons.push("malformed_row".to_string());
        }
        self.sort_reasons(out);
    }

    fn sort_reasons(&self, out: &mut CleanRow) {
        // Reasons in column order, whatever the evaluation order was.
        if out.reasons.len() > 1 {
            let pos = |r: &String| {
                let name = r.split_once('_').map_or("", |(_, c)| c);
                self.schema.column_index(name).unwrap_or(usize::MAX)
            };
            out.reasons.sort_by_key(pos);
        }
    }
}

/// Returns true when a value's canonical text differs from its raw text.
#[inline]
fn differs(v: &Value, raw: &str) -> bool {
    match v {
        Value::Str(s) => !same_bytes(s.as_bytes(), raw.as_bytes()),
        // A raw text shaped like the canonical form was read field by field: it is that form.
        Value::Ts(_) => !INSTANT_SHAPE.matches(raw.as_bytes()),
        // A raw text already in canonical form reads back as the same number.
        Value::Int(_) => !is_canonical_number(raw, 0),
        Value::Cents(_) => !is_canonical_number(raw, 2),
        Value::Date(_) => !DATE_SHAPE.matches(raw.as_bytes()),
    }
}

/// Reads 8 bytes of `s` at `i` as a little-endian word.
fn word(s: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(s[i..i + 8].try_into().expect("8 bytes"))
}

/// Compares two byte strings; those of up to 32 bytes (most values) in two or four overlapping
/// word loads, without a call to `memcmp`.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let half = |s: &[u8], i: usize| u32::from_le_bytes(s[i..i + 4].try_into().expect("4 bytes"));
    match n {
        0..4 => a.iter().zip(b).fold(true, |same, (x, y)| same & (x == y)),
        4..8 => (half(a, 0) == half(b, 0)) & (half(a, n - 4) == half(b, n - 4)),
        8..=16 => (word(a, 0) == word(b, 0)) & (word(a, n - 8) == word(b, n - 8)),
        17..=32 => {
            (word(a, 0) == word(b, 0))
                & (word(a, 8) == word(b, 8))
                & (word(a, n - 16) == word(b, n - 16))
                & (word(a, n - 8) == word(b, n - 8))
        }
        _ => a == b,
    }
}

/// A fixed text shape (`d` standing for any ASCII digit, other bytes for themselves) of 8 to 32
/// bytes, checked a word at a time: the words at 0, 8, 16 as far as they fit, and the last.
struct Shape {
    len: usize,
    /// Each word's offset, its digit bytes (0xff) and its other bytes' expected values.
    words: [(usize, u64, u64); 4],
    count: usize,
}

/// The canonical text of an instant.
const INSTANT_SHAPE: Shape = Shape::new(b"dddd-dd-ddTdd:dd:ddZ");
/// The canonical text of a date.
const DATE_SHAPE: Shape = Shape::new(b"dddd-dd-dd");

impl Shape {
    /// Builds the words of `shape` (8 to 32 bytes).
    const fn new(shape: &[u8]) -> Shape {
        let len = shape.len();
        assert!(len >= 8 && len <= 32, "a shape has 8 to 32 bytes");
        let mut words = [(0, 0, 0); 4];
        let mut count = 0;
        let mut at = 0;
        loop {
            let off = if at + 8 <= len { at } else { len - 8 };
            let (mut digits, mut literal) = (0u64, 0u64);
            let mut k = 0;
            while k < 8 {
                let c = shape[off + k];
                if c == b'd' {
                    digits |= 0xff << (8 * k);
                } else {
                    literal |= (c as u64) << (8 * k);
                }
                k += 1;
            }
            words[count] = (off, digits, literal);
            count += 1;
            if off + 8 >= len {
                break;
            }
            at += 8;
        }
        Shape { len, words, count }
    }

    /// Returns true when `raw` has the shape's length and bytes.
    fn matches(&self, raw: &[u8]) -> bool {
        const LOW: u64 = 0x0101_0101_0101_0101;
        raw.len() == self.len
            && self.words[..self.count]
                .iter()
                .fold(true, |ok, &(off, digits, literal)| {
                    let x = word(raw, off);
                    // Digits are 0x30..=0x39: high nibble 3, and still 3 after adding 6. A byte
                    // of 0xfa or more fails the first test, so a carry out of it changes nothing.
                    let d = x & digits;
                    let high = (0xf0 * LOW) & digits;
                    let three = (0x30 * LOW) & digits;
                    ok & (x & !digits == literal)
                        & (d & high == three)
                        & (d.wrapping_add((0x06 * LOW) & digits) & high == three)
                })
    }
}

/// Returns true when `raw` is written as the canonical text of a number with `decimals` places.
fn is_canonical_number(raw: &str, decimals: usize) -> bool {
    let b = raw.as_bytes();
    let negative = b.first() == Some(&b'-');
    let b = b.strip_prefix(b"-").unwrap_or(b);
    let int_len = if decimals == 0 {
        b.len()
    } else if b.len() > decimals && b[b.len() - decimals - 1] == b'.' {
        b.len() - decimals - 1
    } else {
        return false;
    };
    let (mut digits, mut zero) = (true, true);
    for (i, &c) in b.iter().enumerate() {
        if i != int_len {
            digits &= c.is_ascii_digit();
            zero &= c == b'0';
        }
    }
    // `-0.00` reads as zero, written `0.00`; `07` reads as 7.
    digits && int_len > 0 && (int_len == 1 || b[0] != b'0') && !(negative && zero)
}

/// Stages one part of a table into `staging` with the default [`Limits`].
pub fn stage_part(
    schema: &TableSchema,
    object: &str,
    generation: &str,
    input: impl Read + Send + 'static,
    staging: &Path,
    today: NaiveDate,
) -> Result<PartSummary, StageError> {
    stage_part_with(
        schema,
        object,
        generation,
        input,
        Staging::dir(staging),
        today,
        &Limits::default(),
    )
}

/// Stages one part of a table into `staging`; a file-level failure is reported in the summary.
///
/// Errors are only those outside the file (reading the source, writing the staging area).
pub fn stage_part_with(
    schema: &TableSchema,
    object: &str,
    generation: &str,
    input: impl Read + Send + 'static,
    staging: Staging<'_>,
    today: NaiveDate,
    limits: &Limits,
) -> Result<PartSummary, StageError> {
    stage_inner(schema, object, generation, input, staging, today, limits).map_err(|e| e.at(object))
}

fn stage_inner(
    schema: &TableSchema,
    object: &str,
    generation: &str,
    input: impl Read + Send + 'static,
    staging: Staging<'_>,
    today: NaiveDate,
    limits: &Limits,
) -> Result<PartSummary, StageError> {
    fs::create_dir_all(staging.dir)?;
    let paths = StagedPaths::new(staging.dir, object, generation);
    let mut summary = PartSummary {
        table: schema.name.clone(),
        file: FileReport {
            object: object.to_string(),
            generation: generation.to_string(),
            encoding: "utf-8".into(),
            delimiter: ",".into(),
            gzip: false,
            rows: 0,
            rows_too_long: 0,
            listed_again: 0,
            extra_columns: Vec::new(),
            error: None,
        },
        rows_staged: 0,
        rows_quarantined: 0,
        quarantined_by_reason: BTreeMap::new(),
        fields: schema
            .columns
            .iter()
            .map(|c| (c.name.clone(), FieldCounts::default()))
            .collect(),
    };
    match stage_rows(schema, &paths, staging, input, today, limits, &mut summary) {
        Ok(()) => {}
        Err(Failure::File(kind, message)) => {
            for f in paths.files() {
                if let Some(m) = staging.memory {
                    m.remove(f);
                }
                let _ = fs::remove_file(f);
                let _ = fs::remove_file(f.with_extension("arrow.tmp"));
            }
            summary.rows_staged = 0;
            summary.rows_quarantined = 0;
            summary.quarantined_by_reason.clear();
            summary
                .fields
                .values_mut()
                .for_each(|f| *f = FieldCounts::default());
            summary.file.rows = 0;
            summary.file.rows_too_long = 0;
            summary.file.error = Some(FileError {
                kind: kind.to_string(),
                message,
            });
            tracing::warn!(object, generation, kind, "file rejected");
        }
        Err(Failure::Stage(e)) => return Err(e),
    }
    let tmp = paths.summary.with_extension("json.tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(&summary)?)?;
    fs::rename(&tmp, &paths.summary)?;
    Ok(summary)
}

enum Failure {
    File(&'static str, String),
    Stage(StageError),
}

impl<E: Into<StageError>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Stage(e.into())
    }
}

fn fault(f: FileFault) -> Failure {
    match f {
        FileFault::Undecodable(m) => Failure::File("undecodable", m),
        FileFault::NotCsv(m) => Failure::File("not_csv", m),
        FileFault::TooLarge(m) => Failure::File("too_large", m),
        FileFault::Io(e) => Failure::Stage(e.into()),
    }
}

fn stage_rows(
    schema: &TableSchema,
    paths: &StagedPaths,
    staging: Staging<'_>,
    input: impl Read + Send + 'static,
    today: NaiveDate,
    limits: &Limits,
    summary: &mut PartSummary,
) -> Result<(), Failure> {
    let mut reader = CsvReader::open_with(input, limits.read()).map_err(fault)?;
    let header = reader.header().to_vec();
    let column_at: Vec<Option<usize>> = schema
        .columns
        .iter()
        .map(|c| header.iter().position(|h| *h == c.name))
        .collect();
    let missing: Vec<&str> = schema
        .columns
        .iter()
        .zip(&column_at)
        .filter(|(c, at)| c.required && at.is_none())
        .map(|(c, _)| c.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(Failure::File(
            "missing_column",
            format!("missing required column(s): {}", missing.join(", ")),
        ));
    }
    summary.file.extra_columns = header
        .iter()
        .filter(|h| !schema.columns.iter().any(|c| c.name == **h))
        .cloned()
        .collect();
    let dialect = reader.dialect();
    summary.file.delimiter = char::from(dialect.delimiter).to_string();
    summary.file.gzip = dialect.gzip;

    let mut writers = StagedWriters::create(
        &[
            (&paths.data, staged_schema(schema)),
            (&paths.keys, keys_schema()),
            (&paths.quarantine, quarantine_schema(schema)),
        ],
        limits.compress_staged,
        staging.memory,
    )?;
    let (flush_rows, flush_bytes) = (limits.flush_rows(), limits.flush_bytes);
    let mut staged = StagedBuilder::new(schema, flush_rows.min(32 * 1024));
    let mut quarantined = QuarantineBuilder::new(schema);
    let cleaner = RowCleaner::new(schema, today);
    let mut rec = Record::default();
    let mut row = CleanRow::default();
    let mut raw_joined = String::with_capacity(256);
    let ncols = schema.columns.len();
    let mut normalized = vec![0u64; ncols];
    let mut nulled = vec![0u64; schema.columns.len()];
    let delimiter = char::from(dialect.delimiter).to_string();

    loop {
        match reader.next_record(&mut rec) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(fault(crate::extract::csv::classify_io(e))),
        }
        summary.file.rows += 1;
        let raw = |i: usize| column_at[i].and_then(|at| rec.get(at));
        let raw_strings = || (0..ncols).map(|i| raw(i).map(str::to_string)).collect();
        if rec.broken || rec.len() != header.len() {
            let record = match rec.too_long {
                Some(n) => {
                    summary.file.rows_too_long += 1;
                    format!(
                        "too_long: {n} bytes, over the limit of {} bytes; starts with: {}",
                        limits.max_record_bytes,
                        rec.prefix()
                    )
                }
                None => rec.iter().collect::<Vec<_>>().join(&delimiter),
            };
            let q = QuarantinedRow {
                raw: raw_strings(),
                reasons: vec!["malformed_row".to_string()],
                object: summary.file.object.clone(),
                generation: summary.file.generation.clone(),
                line: rec.line,
                record: Some(record),
            };
            count_quarantine(summary, &q.reasons);
            quarantined.append(&q);
            if quarantined.len() >= flush_rows || quarantined.bytes() >= flush_bytes {
                writers.write(QUARANTINE, &quarantined.finish())?;
            }
            continue;
        }
        cleaner.clean(raw, &mut row);
        if rec.has_nul() {
            cleaner.refuse_nul(raw, &mut row);
        }
        for i in 0..schema.columns.len() {
            normalized[i] += u64::from(row.normalized[i]);
            nulled[i] += u64::from(row.nulled[i]);
        }
        if row.reasons.is_empty() {
            // The raw values are kept only when the staged values do not give them back.
            raw_joined.clear();
            // A bound on the raw values' length, for the flush (the line holds them all).
            let raw_len = rec.text_len();
            let verbatim = row.verbatim.iter().all(|&v| v);
            if !verbatim {
                for i in 0..ncols {
                    if i > 0 {
                        raw_joined.push(RAW_SEP);
                    }
                    raw_joined.push_str(raw(i).unwrap_or(""));
                }
            }
            let id = RowIdentity {
                key: match &row.values[schema.key] {
                    Some(Value::Str(k)) => key_hash(k),
                    Some(other) => key_hash(&other.canonical()),
                    None => (0, 0), // the key is required: never null here
                },
                version: match schema.version.and_then(|v| row.values[v].as_ref()) {
                    Some(Value::Ts(t)) => *t,
                    _ => i64::MIN,
                },
            };
            let kept = (!verbatim).then_some(raw_joined.as_str());
            staged.append(&row.values, rec.line, id, raw_len, kept);
            summary.rows_staged += 1;
            if staged.len() >= flush_rows || staged.bytes() >= flush_bytes {
                write_staged(&mut writers, staged.finish())?;
            }
        } else {
            let q = QuarantinedRow {
                raw: raw_strings(),
                reasons: std::mem::take(&mut row.reasons),
                object: summary.file.object.clone(),
                generation: summary.file.generation.clone(),
                line: rec.line,
                record: None,
            };
            count_quarantine(summary, &q.reasons);
            quarantined.append(&q);
            if quarantined.len() >= flush_rows || quarantined.bytes() >= flush_bytes {
                writers.write(QUARANTINE, &quarantined.finish())?;
            }
        }
    }
    if !staged.is_empty() {
        write_staged(&mut writers, staged.finish())?;
    }
    if !quarantined.is_empty() {
        writers.write(QUARANTINE, &quarantined.finish())?;
    }
    writers.finish()?;
    for (i, c) in schema.columns.iter().enumerate() {
        summary.fields.insert(
            c.name.clone(),
            FieldCounts {
                normalized: normalized[i],
                nulled: nulled[i],
            },
        );
    }
    summary.file.encoding = reader.encoding().to_string();
    Ok(())
}

fn write_staged(writers: &mut StagedWriters, b: StagedBatches) -> Result<(), StageError> {
    writers.write(DATA, &b.data)?;
    writers.write(KEYS, &b.keys)
}

fn count_quarantine(summary: &mut PartSummary, reasons: &[String]) {
    summary.rows_quarantined += 1;
    for r in reasons {
        *summary.quarantined_by_reason.entry(r.clone()).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clean::schema::Schemas;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 28).unwrap()
    }

    #[test]
    fn a_row_gets_every_reason_and_normalized_values() {
        let schemas = Schemas::builtin().unwrap();
        let t = schemas.table("transactions").unwrap();
        let cleaner = RowCleaner::new(t, today());
        let mut out = CleanRow::default();
        // transaction_id, order_id, customer_id, product_code, quantity, unit_price, discount,
        // status, sold_at, delivery_cep, city, uf, updated_at
        let raw = [
            Some(" tx-000123 "),
            Some("OR-1"),
            Some("C-000001"),
            Some("ohb 000101"),
            Some("abc"),
            Some("R$ 7,99"),
            Some("n/a"),
            Some("pending"),
            Some("27/11/2026 14:03"),
            Some("123"),
            Some("SAO PAULO"),
            Some("sp"),
            None,
        ];
        cleaner.clean(|i| raw[i], &mut out);
        assert_eq!(out.reasons, ["invalid_quantity", "invalid_status"]);
        assert_eq!(out.values[0], Some(Value::Str("TX-000123".into())));
        assert_eq!(out.values[3], Some(Value::Str("OHB-000101".into())));
        assert_eq!(out.values[5], Some(Value::Cents(799)));
        assert_eq!(out.values[6], Some(Value::Cents(0)), "discount null → 0");
        assert_eq!(out.values[9], None, "invalid CEP nulled");
        assert!(out.nulled[9]);
        assert_eq!(out.values[10], Some(Value::Str("São Paulo".into())));
        assert!(out.normalized[0] && out.normalized[5] && out.normalized[6] && out.normalized[10]);
        let missing = [None; 13];
        cleaner.clean(|i| missing[i], &mut out);
        assert_eq!(
            out.reasons,
            [
                "missing_transaction_id",
                "missing_order_id",
                "missing_customer_id",
                "missing_product_code",
                "missing_quantity",
                "missing_unit_price",
                "missing_status",
                "missing_sold_at",
                "missing_city",
                "missing_uf"
            ]
        );
    }

    #[test]
    fn word_comparison_sees_a_difference_at_every_position() {
        for n in 0usize..40 {
            let a: Vec<u8> = (0..n as u8).collect();
            assert!(same_bytes(&a, &a.clone()), "{n}");
            assert!(!same_bytes(&a, &a[..n.saturating_sub(1)]) || n == 0, "{n}");
            for p in 0..n {
                let mut b = a.clone();
                b[p] ^= 0x80;
                assert!(!same_bytes(&a, &b), "length {n}, byte {p}");
            }
        }
    }

    #[test]
    fn shapes_agree_with_a_byte_by_byte_check_at_every_position() {
        let naive = |raw: &[u8], shape: &[u8]| {
            raw.len() == shape.len()
                && raw.iter().zip(shape).all(|(&b, &s)| match s {
                    b'd' => b.is_ascii_digit(),
                    _ => b == s,
                })
        };
        for (shape, text, example) in [
            (
                &INSTANT_SHAPE,
                b"dddd-dd-ddTdd:dd:ddZ".as_slice(),
                b"2026-11-27T17:03:09Z".as_slice(),
            ),
            (&DATE_SHAPE, b"dddd-dd-dd", b"2026-11-27"),
        ] {
            assert!(shape.matches(example));
            for p in 0..example.len() {
                for c in 0..=255u8 {
                    let mut raw = example.to_vec();
                    raw[p] = c;
                    assert_eq!(shape.matches(&raw), naive(&raw, text), "{raw:?}");
                }
            }
            assert!(!shape.matches(&example[1..]));
            assert!(!shape.matches(&[example, b"0"].concat()));
        }
    }

    #[test]
    fn normalized_means_the_canonical_text_differs() {
        for (v, raw, want) in [
            (Value::Int(2), "2", false),
            (Value::Int(2), "2.0", true),
            (Value::Int(2), "02", true),
            (Value::Int(2), " 2", true),
            (Value::Cents(799), "7.99", false),
            (Value::Cents(799), "7,99", true),
            (Value::Cents(790), "7.9", true),
            (Value::Cents(0), "0.00", false),
            (Value::Cents(-100), "-1.00", false),
            (Value::Cents(0), "-0.00", true),
            (Value::Ts(1_795_798_980), "2026-11-27T17:03:00Z", false),
            (Value::Ts(1_795_798_980), "1795798980", true),
            (Value::Str("SP".into()), "SP", false),
            (Value::Str("SP".into()), "sp", true),
        ] {
            assert_eq!(differs(&v, raw), want, "{v:?} {raw:?}");
            // The shortcuts agree with comparing the canonical text.
            assert_eq!(v.canonical() != raw, want, "{v:?} {raw:?}");
        }
    }

    #[test]
    fn instant_and_date_shortcuts_agree_with_the_canonical_text() {
        use crate::clean::validators::KindOptions;
        let opts = KindOptions::default();
        let instants = [
            "2026-11-27T17:03:00Z",
            "2026-11-27T17:03:00z",
            "2026-11-27 17:03:00Z",
            "2026/11/27T17:03:00Z",
            "2026-11-27T17:03:00+00:00",
            "2026-11-27T14:03:00-03:00",
            "2026-11-27T17:03:00.5Z",
            "0001-01-01T00:00:00Z",
            "27/11/2026 14:03",
            "1795798980",
        ];
        let dates = [
            "2026-11-27",
            "2026/11/27",
            "27/11/2026",
            "0001-01-01",
            "2026-11-27T10:00",
            "1795798980",
        ];
        let cases = instants
            .iter()
            .map(|r| (Kind::Timestamp, r))
            .chain(dates.iter().map(|r| (Kind::Date, r)));
        for (kind, raw) in cases {
            let v = kind.validate(raw, &opts, None, today()).unwrap();
            assert_eq!(differs(&v, raw), v.canonical() != *raw, "{v:?} {raw:?}");
        }
    }

    #[test]
    fn stages_a_part_and_rejects_bad_files() {
        let schemas = Schemas::builtin().unwrap();
        let t = schemas.table("products").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let csv = "product_code,EAN,name,brand,manufacturer,segment,unit_size,loja\n\
                   ohb-000101,7894900011517,Hungry Cola,HUNGRY,OuchHungry,Refrigerantes,350ml,1\n\
                   OHB-000102,7894900011518,Hungry Zero,Hungry,OuchHungry,Refrigerantes,,1\n\
                   OHB-000103,,,Hungry,OuchHungry,Refrigerantes,2L,1\n\
                   OHB-000104,1,2\n";
        let s = stage_part(
            t,
            "extracts/products/dt=2026-11-27/part-000.csv",
            "7",
            std::io::Cursor::new(csv),
            dir.path(),
            today(),
        )
        .unwrap();
        assert_eq!(s.file.rows, 4);
        assert_eq!(s.rows_staged, 2);
        assert_eq!(s.rows_quarantined, 2);
        assert_eq!(s.quarantined_by_reason["missing_name"], 1);
        assert_eq!(s.quarantined_by_reason["malformed_row"], 1);
        assert_eq!(s.fields["ean"].nulled, 1);
        assert_eq!(s.fields["brand"].normalized, 1);
        assert_eq!(s.file.extra_columns, ["loja"]);
        let paths = StagedPaths::new(dir.path(), &s.file.object, "7");
        assert!(paths.data.exists() && paths.quarantine.exists() && paths.summary.exists());

        let bad = "product_code,name\nOHB-000101,x\n";
        let s = stage_part(
            t,
            "extracts/products/dt=2026-11-27/bad.csv",
            "1",
            std::io::Cursor::new(bad),
            dir.path(),
            today(),
        )
        .unwrap();
        let e = s.file.error.unwrap();
        assert_eq!(e.kind, "missing_column");
        assert!(e.message.contains("brand"), "{}", e.message);
    }

    /// With `compress_staged` the staged files are zstd-compressed, smaller and read the same;
    /// files staged with LZ4 (before zstd) read the same too.
    #[test]
    fn staged_files_can_be_compressed() {
        use arrow_ipc::reader::FileReader;
        let schemas = Schemas::builtin().unwrap();
        let t = schemas.table("products").unwrap();
        let mut csv = String::from("product_code,EAN,name,brand,manufacturer,segment,unit_size\n");
        for i in 0..2000 {
            csv.push_str(&format!(
                "OHB-{:06},,Hungry Cola {i},Hungry,OuchHungry,Refrigerantes,350ml\n",
                100_000 + i
            ));
        }
        let staged = |compress: bool| {
            let dir = tempfile::tempdir().unwrap();
            let limits = Limits {
                compress_staged: compress,
                ..Limits::default()
            };
            let s = stage_part_with(
                t,
                "extracts/products/dt=2026-11-27/part-000.csv",
                "7",
                std::io::Cursor::new(csv.clone()),
                Staging::dir(dir.path()),
                today(),
                &limits,
            )
            .unwrap();
            assert_eq!(s.rows_staged, 2000);
            let paths = StagedPaths::new(dir.path(), &s.file.object, "7");
            let size = std::fs::metadata(&paths.data).unwrap().len();
            let reader = FileReader::try_new(File::open(&paths.data).unwrap(), None).unwrap();
            let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
            (size, batches)
        };
        let (plain, a) = staged(false);
        let (zstd, b) = staged(true);
        assert_eq!(a, b);
        assert!(zstd * 2 < plain, "{zstd} compressed vs {plain} plain bytes");
        // A part staged with LZ4 by an earlier release is read by this one.
        let lz4_options = IpcWriteOptions::default()
            .try_with_compression(Some(CompressionType::LZ4_FRAME))
            .unwrap();
        let mut w =
            FileWriter::try_new_with_options(Vec::new(), &a[0].schema(), lz4_options).unwrap();
        a.iter().for_each(|batch| w.write(batch).unwrap());
        let lz4 = w.into_inner().unwrap();
        assert!(
            zstd < lz4.len() as u64,
            "zstd {zstd} vs LZ4 {} bytes",
            lz4.len()
        );
        let reader = FileReader::try_new(std::io::Cursor::new(lz4), None).unwrap();
        assert_eq!(reader.map(|b| b.unwrap()).collect::<Vec<_>>(), a);
    }
}
