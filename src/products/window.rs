//! The trailing window that decides the daily file's small cities, in bounded memory.
//!
//! Each batch gets one small file per daily contract, `window/dt=<D>/<partner>-<filter>.arrow`
//! beside the curated data: one 33-byte record per version of the partner's lines in that batch
//! (per the batch's own product snapshot), plus the batch's corrections of earlier days naming
//! any other product (they can end a partner sale), sorted by line. The daily build merges the
//! window's files as streams (one record batch of each in memory), keeps the latest version of
//! each line, and counts each place's distinct customers up to `k`: memory holds the places, not
//! the window's lines, so it stays flat whatever the window's size. The batch step writes its
//! batch's files (a re-run rewrites them); a batch that has none (written before, or a contract
//! added since) gets them from its curated data on first use.

use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, Int32Array, Int64Array, RecordBatch, UInt8Array, UInt32Array, UInt64Array,
};
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow_schema::{ArrowError, DataType, Field, Schema};
use chrono::NaiveDate;
use sha2::{Digest, Sha256};

use super::contract::Contract;
use super::curated::{Curated, CuratedError, Status};
use super::daily::is_partner_product;
use super::{FastMap, FastSet};

/// Folder of the window files, beside `curated/` (in the bucket and locally).
pub const DIR: &str = "window";

/// Records written per record batch (one batch of each file is in memory while merging).
const BATCH_ROWS: usize = 4_096;

/// Schema metadata key of the places list (JSON `[[uf, city], ...]`, indexed by `place`).
const PLACES_KEY: &str = "places";

/// Schema metadata key of the format version.
const FORMAT_KEY: &str = "window_format";

/// This format's version (a different one is refused: the file is rebuilt).
const FORMAT: &str = "1";

/// Flag: the version names one of the partner's products (in its batch's snapshot).
const PARTNER: u8 = 1;

/// Flag: the version is completed.
const COMPLETED: u8 = 2;

/// The window could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    /// Curated data could not be read.
    #[error(transparent)]
    Curated(#[from] CuratedError),
    /// A window file could not be read or written.
    #[error("window file {path}: {source}")]
    Io {
        /// The file (or object).
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A window file could not be encoded or decoded.
    #[error("window file {path}: {source}")]
    Arrow {
        /// The file (or object).
        path: String,
        /// The cause.
        source: ArrowError,
    },
    /// A window file is not one this version wrote.
    #[error("window file {path}: {detail}")]
    Invalid {
        /// The file (or object).
        path: String,
        /// What is wrong.
        detail: String,
    },
}

/// Where the daily build finds each batch's window file.
pub trait WindowSource: Send + Sync + std::fmt::Debug {
    /// Returns true when batch `dt` exists (its lines count in the windows that cover it).
    fn has_batch(&self, dt: NaiveDate) -> bool;
    /// Opens batch `dt`'s window file for `contract` (written first when it has none).
    fn open(&self, contract: &Contract, dt: NaiveDate)
    -> Result<Box<dyn Read + Send>, WindowError>;
    /// Opens the window files of batches `days` for `contract`, in that order (one after the
    /// other unless the source can do better).
    fn open_all(
        &self,
        contract: &Contract,
        days: &[NaiveDate],
    ) -> Result<Vec<Box<dyn Read + Send>>, WindowError> {
        days.iter().map(|d| self.open(contract, *d)).collect()
    }
}

/// The window files of a local curated root, written into `dir` when missing.
#[derive(Debug)]
pub struct LocalWindow {
    curated: Curated,
    dir: PathBuf,
}

impl LocalWindow {
    /// Window files under `dir/window/`, computed from `curated` where missing.
    pub fn new(curated: Curated, dir: &Path) -> Self {
        Self {
            curated,
            dir: dir.to_path_buf(),
        }
    }
}

impl WindowSource for LocalWindow {
    fn has_batch(&self, dt: NaiveDate) -> bool {
        self.curated.has_batch(dt)
    }

    fn open(
        &self,
        contract: &Contract,
        dt: NaiveDate,
    ) -> Result<Box<dyn Read + Send>, WindowError> {
        let path = self.dir.join(object_name(contract, dt));
        if !path.is_file() {
            write_batch(&self.curated, &[contract], dt, &self.dir)?;
        }
        let file = File::open(&path).map_err(|source| WindowError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Box::new(file))
    }
}

/// The name of batch `dt`'s window file for `contract`, relative to the root holding
/// `curated/`: `window/dt=<dt>/<partner>-<filter>.arrow`, where `<filter>` changes with what
/// the contract counts as its products (so a changed contract never reads stale files).
pub fn object_name(contract: &Contract, dt: NaiveDate) -> String {
    let mut brands: Vec<String> = contract
        .brands
        .iter()
        .map(|b| format!("{}\u{1f}{}", b.name, b.segment))
        .collect();
    brands.sort();
    let mut h = Sha256::new();
    h.update(format!("{FORMAT}\u{1e}{}\u{1e}", contract.manufacturer));
    h.update(brands.join("\u{1e}"));
    let filter: String = h.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{DIR}/dt={dt}/{}-{filter}.arrow", contract.name)
}

/// The day a window object name is for, if it is one.
pub fn day_of(name: &str) -> Option<NaiveDate> {
    let rest = name.strip_prefix(DIR)?.strip_prefix("/dt=")?;
    NaiveDate::parse_from_str(rest.split('/').next()?, "%Y-%m-%d").ok()
}

/// One version of a line, as the window keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    /// 64-bit hash of the transaction id.
    key: u64,
    /// `updated_at` (a missing one is the oldest).
    updated_at: i64,
    /// 64-bit hash of the customer.
    customer: u64,
    /// Local day of the sale, days since 1970-01-01.
    sold_day: i32,
    /// [`PARTNER`], [`COMPLETED`].
    flags: u8,
    /// Index into the file's places.
    place: u32,
}

/// A 64-bit hash of an id, the same in every process (SipHash with fixed keys). Two ids
/// sharing one would be counted as one: fewer customers, so more cities hidden, never fewer.
pub(crate) fn id_hash(tag: u8, id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(0x6461_7461_7368_6172, u64::from(tag));
    id.hash(&mut h);
    h.finish()
}

/// Interns (uf, city) places: each distinct place once, named by its index.
#[derive(Default)]
pub(crate) struct Places {
    /// uf → city → index (looked up by borrowed strings: a place is read millions of times).
    ids: FastMap<String, FastMap<String, u32>>,
    /// The places, by index.
    pub(crate) names: Vec<(String, String)>,
}

impl Places {
    /// The index of a place, added on first sight.
    pub(crate) fn id(&mut self, uf: &str, city: &str) -> u32 {
        if let Some(id) = self.ids.get(uf).and_then(|c| c.get(city)) {
            return *id;
        }
        let id = self.names.len() as u32;
        self.names.push((uf.to_string(), city.to_string()));
        self.ids
            .entry(uf.to_string())
            .or_default()
            .insert(city.to_string(), id);
        id
    }
}

/// One contract's records of a batch while they are collected.
struct Collect<'a> {
    contract: &'a Contract,
    partner: FastSet<&'a str>,
    records: Vec<Record>,
    places: Places,
}

/// Writes batch `dt`'s window file of each contract under `root` ([`object_name`]), reading
/// the batch's curated lines once; returns the files written.
pub fn write_batch(
    curated: &Curated,
    contracts: &[&Contract],
    dt: NaiveDate,
    root: &Path,
) -> Result<Vec<PathBuf>, WindowError> {
    let products = curated.products(dt)?;
    let mut collects: Vec<Collect<'_>> = contracts
        .iter()
        .map(|c| Collect {
            contract: c,
            partner: products
                .values()
                .filter(|p| is_partner_product(c, p))
                .map(|p| p.product_code.as_str())
                .collect(),
            records: Vec::new(),
            places: Places::default(),
        })
        .collect();
    let batch_day = dt.to_epoch_days();
    curated.each_line(dt, |l| -> Result<(), WindowError> {
        let sold_day = l.local_date().map_or(i32::MIN, |x| x.to_epoch_days());
        let mut hashes = None;
        for c in &mut collects {
            let partner = c.partner.contains(l.product_code);
            // Another product's version matters only as a correction of an earlier day.
            if !partner && sold_day >= batch_day {
                continue;
            }
            let (key, customer) = *hashes.get_or_insert_with(|| {
                (
                    id_hash(b'l', l.transaction_id),
                    id_hash(b'c', l.customer_id),
                )
            });
            let flags = if partner { PARTNER } else { 0 }
                | if l.status == Status::Completed {
                    COMPLETED
                } else {
                    0
                };
            c.records.push(Record {
                key,
                updated_at: l.updated_at.unwrap_or(i64::MIN),
                customer,
                sold_day,
                flags,
                place: c.places.id(l.uf, l.city),
            });
        }
        Ok(())
    })?;
    let mut written = Vec::with_capacity(collects.len());
    for c in collects {
        let path = root.join(object_name(c.contract, dt));
        write_file(&path, c.records, &c.places.names)?;
        written.push(path);
    }
    Ok(written)
}

/// The window file's Arrow schema, with its places in the metadata.
fn schema(places: &[(String, String)]) -> Result<Schema, serde_json::Error> {
    let metadata = HashMap::from([
        (FORMAT_KEY.to_string(), FORMAT.to_string()),
        (PLACES_KEY.to_string(), serde_json::to_string(places)?),
    ]);
    Ok(Schema::new(vec![
        Field::new("key", DataType::UInt64, false),
        Field::new("updated_at", DataType::Int64, false),
        Field::new("customer", DataType::UInt64, false),
        Field::new("sold_day", DataType::Int32, false),
        Field::new("flags", DataType::UInt8, false),
        Field::new("place", DataType::UInt32, false),
    ])
    .with_metadata(metadata))
}

/// Writes records sorted by line (an Arrow IPC stream, LZ4-compressed) to `path`.
fn write_file(
    path: &Path,
    mut records: Vec<Record>,
    places: &[(String, String)],
) -> Result<(), WindowError> {
    let shown = path.display().to_string();
    let io = |source| WindowError::Io {
        path: shown.clone(),
        source,
    };
    let arrow = |source| WindowError::Arrow {
        path: shown.clone(),
        source,
    };
    records.sort_unstable_by_key(|r| (r.key, r.updated_at));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let schema = Arc::new(schema(places).map_err(|e| io(std::io::Error::other(e)))?);
    let options = IpcWriteOptions::default()
        .try_with_compression(Some(arrow_ipc::CompressionType::LZ4_FRAME))
        .map_err(arrow)?;
    let file = BufWriter::new(File::create(path).map_err(io)?);
    let mut w = StreamWriter::try_new_with_options(file, &schema, options).map_err(arrow)?;
    for chunk in records.chunks(BATCH_ROWS) {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from_iter_values(chunk.iter().map(|r| r.key))),
            Arc::new(Int64Array::from_iter_values(
                chunk.iter().map(|r| r.updated_at),
            )),
            Arc::new(UInt64Array::from_iter_values(
                chunk.iter().map(|r| r.customer),
            )),
            Arc::new(Int32Array::from_iter_values(
                chunk.iter().map(|r| r.sold_day),
            )),
            Arc::new(UInt8Array::from_iter_values(chunk.iter().map(|r| r.flags))),
            Arc::new(UInt32Array::from_iter_values(chunk.iter().map(|r| r.place))),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns).map_err(arrow)?;
        w.write(&batch).map_err(arrow)?;
    }
    w.finish().map_err(arrow)?;
    let file = w.into_inner().map_err(arrow)?;
    file.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)?;
    Ok(())
}

/// One window file being read, a record batch at a time.
struct Cursor {
    name: String,
    reader: StreamReader<BufReader<Box<dyn Read + Send>>>,
    /// The batch's day number (ties on `updated_at` go to the later batch).
    day: i32,
    /// The file's place indexes → the build's.
    places: Vec<u32>,
    columns: Option<Columns>,
    row: usize,
}

/// The columns of the record batch being read.
struct Columns {
    key: UInt64Array,
    updated_at: Int64Array,
    customer: UInt64Array,
    sold_day: Int32Array,
    flags: UInt8Array,
    place: UInt32Array,
}

impl Cursor {
    /// Opens a window file read from `input`, interning its places into `places`.
    fn open(
        name: String,
        day: NaiveDate,
        input: Box<dyn Read + Send>,
        places: &mut Places,
    ) -> Result<Self, WindowError> {
        let invalid = |detail: String| WindowError::Invalid {
            path: name.clone(),
            detail,
        };
        let reader = StreamReader::try_new(BufReader::with_capacity(64 << 10, input), None)
            .map_err(|source| WindowError::Arrow {
                path: name.clone(),
                source,
            })?;
        let meta = reader.schema().metadata().clone();
        if meta.get(FORMAT_KEY).map(String::as_str) != Some(FORMAT) {
            return Err(invalid(format!(
                "format {:?}, expected {FORMAT}",
                meta.get(FORMAT_KEY)
            )));
        }
        let names: Vec<(String, String)> =
            serde_json::from_str(meta.get(PLACES_KEY).map_or("", String::as_str))
                .map_err(|e| invalid(format!("places: {e}")))?;
        let places = names.iter().map(|(uf, city)| places.id(uf, city)).collect();
        Ok(Self {
            name,
            reader,
            day: day.to_epoch_days(),
            places,
            columns: None,
            row: 0,
        })
    }

    /// The key of the next record, reading the next record batch when needed; `None` at the end.
    fn peek(&mut self) -> Result<Option<u64>, WindowError> {
        loop {
            if let Some(c) = &self.columns
                && self.row < c.key.len()
            {
                return Ok(Some(c.key.value(self.row)));
            }
            self.columns = None;
            self.row = 0;
            let Some(batch) = self.reader.next() else {
                return Ok(None);
            };
            let batch = batch.map_err(|source| WindowError::Arrow {
                path: self.name.clone(),
                source,
            })?;
            self.columns = Some(self.columns_of(&batch)?);
        }
    }

    /// The typed columns of a record batch (a file of another shape is refused).
    fn columns_of(&self, b: &RecordBatch) -> Result<Columns, WindowError> {
        fn col<T: Array + Clone + 'static>(b: &RecordBatch, i: usize) -> Option<T> {
            let a = b.columns().get(i)?;
            (a.null_count() == 0).then(|| a.as_any().downcast_ref::<T>().cloned())?
        }
        let c = (|| {
            Some(Columns {
                key: col(b, 0)?,
                updated_at: col(b, 1)?,
                customer: col(b, 2)?,
                sold_day: col(b, 3)?,
                flags: col(b, 4)?,
                place: col(b, 5)?,
            })
        })();
        let c = c.ok_or_else(|| WindowError::Invalid {
            path: self.name.clone(),
            detail: "columns are not key, updated_at, customer, sold_day, flags, place".into(),
        })?;
        if let Some(bad) = c
            .place
            .values()
            .iter()
            .find(|p| **p as usize >= self.places.len())
        {
            return Err(WindowError::Invalid {
                path: self.name.clone(),
                detail: format!("place {bad} is not in the file's places"),
            });
        }
        Ok(c)
    }

    /// The record at the cursor, with its place in the build's numbering; moves past it.
    /// Call only after [`Cursor::peek`] returned a key.
    fn take(&mut self) -> Record {
        let c = self.columns.as_ref().expect("peek found a record");
        let i = self.row;
        self.row += 1;
        Record {
            key: c.key.value(i),
            updated_at: c.updated_at.value(i),
            customer: c.customer.value(i),
            sold_day: c.sold_day.value(i),
            flags: c.flags.value(i),
            place: self.places[c.place.value(i) as usize],
        }
    }
}

/// Distinct customers per place over the window `first..=last` (days since 1970-01-01),
/// counted up to `k`: the latest version of each line over the given batches' files (by
/// `updated_at`, ties to the later batch) counts when it is a completed sale of the partner's
/// products sold in the window. Places use `places`' numbering; a place absent had none.
pub(crate) fn customers_per_place(
    files: Vec<(String, NaiveDate, Box<dyn Read + Send>)>,
    (first, last): (NaiveDate, NaiveDate),
    k: usize,
    places: &mut Places,
) -> Result<HashMap<u32, usize>, WindowError> {
    let mut cursors = Vec::with_capacity(files.len());
    for (name, day, input) in files {
        cursors.push(Cursor::open(name, day, input, places)?);
    }
    let (first, last) = (first.to_epoch_days(), last.to_epoch_days());
    // Smallest key first: (key, cursor).
    let mut heap = BinaryHeap::new();
    for (i, c) in cursors.iter_mut().enumerate() {
        if let Some(key) = c.peek()? {
            heap.push(std::cmp::Reverse((key, i)));
        }
    }
    let mut customers: FastMap<u32, FastSet<u64>> = FastMap::default();
    while let Some(std::cmp::Reverse((key, i))) = heap.pop() {
        let mut best = (cursors[i].take(), cursors[i].day);
        if let Some(next) = cursors[i].peek()? {
            heap.push(std::cmp::Reverse((next, i)));
        }
        while let Some(std::cmp::Reverse((k2, j))) = heap.peek().copied() {
            if k2 != key {
                break;
            }
            heap.pop();
            let r = (cursors[j].take(), cursors[j].day);
            if (r.0.updated_at, r.1) >= (best.0.updated_at, best.1) {
                best = r;
            }
            if let Some(next) = cursors[j].peek()? {
                heap.push(std::cmp::Reverse((next, j)));
            }
        }
        let r = best.0;
        let counts = r.flags & (PARTNER | COMPLETED) == PARTNER | COMPLETED
            && (first..=last).contains(&r.sold_day);
        if counts {
            let set = customers.entry(r.place).or_default();
            if set.len() < k {
                set.insert(r.customer);
            }
        }
    }
    Ok(customers.into_iter().map(|(p, s)| (p, s.len())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    /// The count by holding every version: the latest per line over all batches, then distinct
    /// customers per place, capped at `k`.
    fn reference(
        batches: &[(NaiveDate, Vec<Record>)],
        (first, last): (i32, i32),
        k: usize,
    ) -> HashMap<u32, usize> {
        let mut latest: HashMap<u64, (i64, i32, Record)> = HashMap::new();
        for (d, records) in batches {
            let day = d.to_epoch_days();
            for r in records {
                let e = latest.entry(r.key).or_insert((r.updated_at, day, *r));
                if (r.updated_at, day) >= (e.0, e.1) {
                    *e = (r.updated_at, day, *r);
                }
            }
        }
        let mut sets: HashMap<u32, HashSet<u64>> = HashMap::new();
        for (_, _, r) in latest.values() {
            if r.flags == PARTNER | COMPLETED && (first..=last).contains(&r.sold_day) {
                sets.entry(r.place).or_default().insert(r.customer);
            }
        }
        sets.into_iter().map(|(p, s)| (p, s.len().min(k))).collect()
    }

    fn record() -> impl Strategy<Value = Record> {
        (0u64..20_000, -3i64..3, 0u64..12, 0i32..12, 0u8..4, 0u32..3).prop_map(
            |(key, updated_at, customer, sold_day, flags, place)| Record {
                key,
                updated_at,
                customer,
                sold_day: 20_400 + sold_day,
                flags,
                place,
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Merging the files as streams counts what holding every version counts.
        #[test]
        fn merged_files_count_as_the_held_versions(
            batches in proptest::collection::vec(proptest::collection::vec(record(), 0..9000), 1..6),
            k in 2usize..6,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let places: Vec<(String, String)> =
                (0..3).map(|i| ("SP".to_string(), format!("Cidade {i}"))).collect();
            let mut held = Vec::new();
            let mut files = Vec::new();
            for (i, mut records) in batches.into_iter().enumerate() {
                // A batch holds a line once.
                records.sort_by_key(|r| r.key);
                records.dedup_by_key(|r| r.key);
                let d = NaiveDate::from_ymd_opt(2025, 11, 20).unwrap() + chrono::Days::new(i as u64);
                let path = dir.path().join(format!("{i}.arrow"));
                write_file(&path, records.clone(), &places).unwrap();
                let input: Box<dyn Read + Send> = Box::new(File::open(&path).unwrap());
                files.push((path.display().to_string(), d, input));
                held.push((d, records));
            }
            let window = (NaiveDate::from_epoch_days(20_402).unwrap(), NaiveDate::from_epoch_days(20_409).unwrap());
            let mut interned = Places::default();
            let got = customers_per_place(files, window, k, &mut interned).unwrap();
            // The files' places were interned in order: the same numbers.
            prop_assert_eq!(interned.names.len(), 3);
            let want = reference(&held, (20_402, 20_409), k);
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn a_file_of_another_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.arrow");
        std::fs::write(&path, b"not arrow").unwrap();
        let input: Box<dyn Read + Send> = Box::new(File::open(&path).unwrap());
        let d = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
        let err = customers_per_place(
            vec![("x".into(), d, input)],
            (d, d),
            5,
            &mut Places::default(),
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("window file x:"), "{err}");
    }

    #[test]
    fn object_names_change_with_what_the_contract_counts() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("partners/ouchhungry.toml");
        let c = Contract::load(&shipped).unwrap();
        let d = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
        let a = object_name(&c, d);
        assert!(a.starts_with("window/dt=2026-11-27/ouchhungry-"), "{a}");
        assert_eq!(day_of(&a), Some(d));
        let mut other = c.clone();
        other.manufacturer = "N".into();
        assert_ne!(object_name(&other, d), a);
    }
}
