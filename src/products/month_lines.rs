//! Month M's lines in bounded memory: the latest version of each line of M's window, on disk.
//!
//! Every version of every line in the batches of M's window (M's days and the `late_days`) is
//! read as a stream and cut to a record (a 128-bit hash of the line, its version, batch and
//! flags; then, for a version that can count in M, its product and place numbers, figures, hashed
//! order and customer); records are sorted in chunks spilled to scratch files, and the chunks are
//! merged as streams, so that all versions of a line meet once: the latest (greatest
//! `updated_at`, ties to the later batch, then to the later line read) decides. The completed
//! lines of the contract's segments sold in M go into a second sort by order, which the builds
//! replay line by line
//! ([`MonthLines::each_line`]; [`MonthLines::count_orders`] counts each order once per row).
//! Memory holds a chunk of records, one record per scratch file being merged, and the products
//! and places: never the window's lines nor their strings. The same pass sums the
//! reconciliation's daily side.
//!
//! Scratch records hold their small numbers as variable-length integers (a version of ~50
//! bytes, one that cannot count ~26, a line ~25, against 77 and 48 at fixed widths): the
//! temporary folder is memory on Cloud Run.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::NaiveDate;
use integer_encoding::VarInt;

use super::contract::Contract;
use super::curated::{Curated, Line, LineRef, Product, Status, catalog};
use super::daily::{is_partner_product, month_of};
use super::monthly::{MonthlyError, PreviousMonth, window};
use super::window::{Places, id_hash};

/// Bytes of records sorted in memory before a chunk is spilled (87k versions, 174k lines).
const CHUNK_BYTES: usize = 8 << 20;

/// Scratch files merged at once; more are first merged into longer ones.
const FAN_IN: usize = 512;

/// Buffer of each scratch file while it is merged.
const READ_BUFFER: usize = 16 << 10;

/// Flag: the version is sold in local month M.
const IN_MONTH: u8 = 1;

/// Flag: the version is completed.
const COMPLETED: u8 = 2;

/// Flag: the version is a line of its batch's daily file (batch in M, completed, sold on the
/// batch's day, one of the partner's products per the batch's own snapshot).
const DAILY: u8 = 4;

/// Flag: the version, if it is its line's latest, is a line of M (in M, completed, of the
/// contract's segments). The scratch file keeps the line of such a version and of a
/// [`DAILY`] one only: of any other, the latest is dropped and its figures are never summed.
const COUNTS: u8 = 8;

/// A product not in the window's catalog (its lines are in no file).
const NO_PRODUCT: u32 = u32::MAX;

/// One completed line of the contract's segments sold in M, in its latest version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonthLine {
    /// 64-bit hash of the order id (distinct orders are counted on it).
    pub order: u64,
    /// 64-bit hash of the customer id (distinct customers are counted on it).
    pub customer: u64,
    /// Units.
    pub quantity: i64,
    /// List price, cents.
    pub unit_price: i64,
    /// Discount, cents.
    pub discount: i64,
    /// Index into [`MonthLines::products`].
    pub product: u32,
    /// Index into [`MonthLines::places`].
    pub place: u32,
}

impl MonthLine {
    /// quantity × unit_price − discount, in cents, exact.
    pub fn net_amount(&self) -> i128 {
        self.list_value() - i128::from(self.discount)
    }

    /// quantity × unit_price, in cents, exact.
    pub fn list_value(&self) -> i128 {
        i128::from(self.quantity) * i128::from(self.unit_price)
    }
}

/// A record that is sorted in spilled chunks and merged; its length in a file varies.
trait Record: Copy {
    /// Most bytes one record takes in a scratch file.
    const MAX_SIZE: usize;
    /// The merge order.
    type Key: Ord + Copy;
    /// The record's place in the merge order.
    fn key(&self) -> Self::Key;
    /// Writes the record at the start of `out` (at least `MAX_SIZE` bytes); returns its length.
    fn encode(&self, out: &mut [u8]) -> usize;
    /// Reads a record from the start of `b`, with its length; `None` when `b` does not hold one.
    fn decode(b: &[u8]) -> Option<(Self, usize)>;
}

/// Writes a record's fields one after another.
struct Put<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl Put<'_> {
    /// Fixed-width bytes (hashes, whose bytes are all alike).
    fn bytes(&mut self, b: &[u8]) {
        self.out[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
    }

    /// A variable-length integer (signed ones zigzag, so small negatives stay short).
    fn var(&mut self, v: impl VarInt) {
        self.at += v.encode_var(&mut self.out[self.at..]);
    }
}

/// Reads a record's fields one after another; `None` past the end of the bytes.
struct Take<'a> {
    b: &'a [u8],
    at: usize,
}

impl Take<'_> {
    fn bytes<const N: usize>(&mut self) -> Option<[u8; N]> {
        let b = self.b.get(self.at..self.at + N)?.try_into().ok()?;
        self.at += N;
        Some(b)
    }

    fn var<T: VarInt>(&mut self) -> Option<T> {
        let (v, n) = T::decode_var(self.b.get(self.at..)?)?;
        self.at += n;
        Some(v)
    }
}

impl MonthLine {
    /// Most bytes of a line's fields in a scratch record.
    const MAX_SIZE: usize = 8 + 8 + 3 * 10 + 2 * 5;

    fn put(&self, p: &mut Put<'_>) {
        p.bytes(&self.order.to_le_bytes());
        p.bytes(&self.customer.to_le_bytes());
        p.var(self.quantity);
        p.var(self.unit_price);
        p.var(self.discount);
        p.var(self.product);
        p.var(self.place);
    }

    fn take(t: &mut Take<'_>) -> Option<Self> {
        Some(MonthLine {
            order: u64::from_le_bytes(t.bytes()?),
            customer: u64::from_le_bytes(t.bytes()?),
            quantity: t.var()?,
            unit_price: t.var()?,
            discount: t.var()?,
            product: t.var()?,
            place: t.var()?,
        })
    }
}

impl Record for MonthLine {
    const MAX_SIZE: usize = MonthLine::MAX_SIZE;
    type Key = u64;

    fn key(&self) -> u64 {
        self.order
    }

    fn encode(&self, out: &mut [u8]) -> usize {
        let mut p = Put { out, at: 0 };
        self.put(&mut p);
        p.at
    }

    fn decode(b: &[u8]) -> Option<(Self, usize)> {
        let mut t = Take { b, at: 0 };
        let l = MonthLine::take(&mut t)?;
        Some((l, t.at))
    }
}

/// Month M's lines: latest version, completed, sold in local month M, of the contract's
/// segments (every brand); the lines are on disk, sorted by order.
#[derive(Debug, Clone, Default)]
pub struct MonthLines {
    /// The lines, sorted by order (none when empty).
    lines: Option<Arc<Spilled>>,
    /// How many lines.
    pub count: u64,
    /// The products the lines name, by index.
    pub products: Vec<Product>,
    /// The (uf, city) places the lines name, by index.
    pub places: Vec<(String, String)>,
    /// Σ net amount of the month's daily lines (each batch's own lines of its day, the
    /// partner's products per its snapshot) whose latest version is completed and in M, cents:
    /// the reconciliation's daily side.
    pub daily_cents: i128,
    /// Batches read.
    pub source_batches: Vec<NaiveDate>,
    /// Batches of the window that do not exist.
    pub missing_batches: Vec<NaiveDate>,
}

impl MonthLines {
    /// The folder of the lines' scratch files (for tests: whether they still exist).
    #[cfg(test)]
    pub(crate) fn scratch_dir(&self) -> Option<PathBuf> {
        self.lines.as_ref().map(|s| s._dir.path().to_path_buf())
    }

    /// The product of a line.
    pub fn product(&self, l: &MonthLine) -> &Product {
        &self.products[l.product as usize]
    }

    /// Whether each product, by index, is one of the partner's.
    pub fn partner_products(&self, contract: &Contract) -> Vec<bool> {
        self.products
            .iter()
            .map(|p| is_partner_product(contract, p))
            .collect()
    }

    /// The (uf, city) of a line.
    pub fn place(&self, l: &MonthLine) -> (&str, &str) {
        let (uf, city) = &self.places[l.place as usize];
        (uf, city)
    }

    /// Calls `f` with each line, by order (one line in memory, whatever an order's size).
    pub fn each_line(&self, mut f: impl FnMut(&MonthLine)) -> Result<(), MonthlyError> {
        let Some(spilled) = &self.lines else {
            return Ok(());
        };
        spilled.merge(|l: MonthLine| {
            f(&l);
            Ok(())
        })
    }

    /// Distinct orders per row: `rows_of` names the rows (`0..rows`) a line counts in; each
    /// order counts once in each row any of its lines names. Memory: a mark per row, whatever
    /// an order's size.
    pub fn count_orders(
        &self,
        rows: usize,
        mut rows_of: impl FnMut(&MonthLine, &mut Vec<usize>),
    ) -> Result<Vec<u64>, MonthlyError> {
        let mut counts = vec![0u64; rows];
        let mut marked = vec![false; rows];
        let mut named = Vec::new();
        let mut these = Vec::new();
        let mut order = None;
        self.each_line(|l| {
            if order != Some(l.order) {
                for r in named.drain(..) {
                    marked[r] = false;
                }
                order = Some(l.order);
            }
            these.clear();
            rows_of(l, &mut these);
            for r in &these {
                if !marked[*r] {
                    marked[*r] = true;
                    counts[*r] += 1;
                    named.push(*r);
                }
            }
        })?;
        Ok(counts)
    }

    /// Month lines from owned lines already chosen (latest, completed, in M), with their
    /// products; the daily side is left at 0.
    pub fn from_lines(
        lines: impl IntoIterator<Item = (Line, Product)>,
    ) -> Result<Self, MonthlyError> {
        let mut out = MonthLines::default();
        let mut places = Places::default();
        let mut codes: BTreeMap<String, u32> = BTreeMap::new();
        let mut runs = Runs::new()?;
        for (l, p) in lines {
            let product = *codes.entry(p.product_code.clone()).or_insert_with(|| {
                out.products.push(p.clone());
                (out.products.len() - 1) as u32
            });
            runs.push(MonthLine {
                order: id_hash(b'o', &l.order_id),
                customer: id_hash(b'c', &l.customer_id),
                quantity: l.quantity,
                unit_price: l.unit_price,
                discount: l.discount,
                product,
                place: places.id(&l.uf, &l.city),
            })?;
            out.count += 1;
        }
        out.lines = Some(Arc::new(runs.finish()?));
        out.places = places.names;
        Ok(out)
    }
}

/// A month read for a contract: (contract, first day).
type MonthKey = (String, NaiveDate);

/// Months already read, shared by the builds of one request: the monthly aggregate and the
/// brand view read M and M−1 once. M's lines stay on disk (not in memory) while it lives; of
/// M−1 only its figures stay ([`PreviousMonth`]).
#[derive(Debug, Clone, Default)]
pub struct MonthReads {
    lines: Arc<Mutex<HashMap<MonthKey, MonthLines>>>,
    previous: Arc<Mutex<HashMap<MonthKey, Arc<PreviousMonth>>>>,
    /// Returns freed heap to the system (the process's allocator policy); none by default.
    release: Option<fn()>,
}

/// A lock's value (a build that panicked holding the lock left it whole).
fn held<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl MonthReads {
    /// Month reads that call `release` once M−1's figures are summed: M−1's customer sets are
    /// freed then, and their pages go back before M's are built (else the figures kept among
    /// them leave M's sets to grow the heap past them).
    pub fn releasing(release: fn()) -> Self {
        MonthReads {
            release: Some(release),
            ..MonthReads::default()
        }
    }

    /// Month M's lines for the contract, read on first use.
    pub fn get(
        &self,
        curated: &Curated,
        contract: &Contract,
        first_day: NaiveDate,
    ) -> Result<MonthLines, MonthlyError> {
        let key = (contract.name.clone(), first_day);
        if let Some(lines) = held(&self.lines).get(&key) {
            return Ok(lines.clone());
        }
        let lines = read(curated, contract, first_day)?;
        held(&self.lines).insert(key, lines.clone());
        Ok(lines)
    }

    /// The figures of the month starting on `first_day` as M−1 of the next, read on first use;
    /// its lines are not kept.
    pub fn previous(
        &self,
        curated: &Curated,
        contract: &Contract,
        first_day: NaiveDate,
    ) -> Result<Arc<PreviousMonth>, MonthlyError> {
        let key = (contract.name.clone(), first_day);
        if let Some(p) = held(&self.previous).get(&key) {
            return Ok(Arc::clone(p));
        }
        let lines = match held(&self.lines).get(&key) {
            Some(lines) => lines.clone(),
            None => read(curated, contract, first_day)?,
        };
        let p = Arc::new(PreviousMonth::from_lines(contract, first_day, lines)?);
        if let Some(release) = self.release {
            release();
        }
        held(&self.previous).insert(key, Arc::clone(&p));
        Ok(p)
    }
}

/// The batches of M's window (M starting on `first_day`) that do not exist.
pub fn missing_batches(
    curated: &Curated,
    contract: &Contract,
    first_day: NaiveDate,
) -> Vec<NaiveDate> {
    present_and_missing(curated, contract, first_day).1
}

/// The batches of M's window that exist, and those that do not.
fn present_and_missing(
    curated: &Curated,
    contract: &Contract,
    first_day: NaiveDate,
) -> (Vec<NaiveDate>, Vec<NaiveDate>) {
    window(first_day, contract.late_days)
        .into_iter()
        .partition(|d| curated.has_batch(*d))
}

/// One version of a line, as the month's pass keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Version {
    /// 128-bit hash of the transaction id (two SipHashes with distinct keys).
    key: u128,
    /// `updated_at` (a missing one is the oldest).
    updated_at: i64,
    /// The batch's day number.
    batch: i32,
    /// [`IN_MONTH`], [`COMPLETED`], [`DAILY`].
    flags: u8,
    /// The line as the month keeps it (product [`NO_PRODUCT`] when not in the catalog).
    line: MonthLine,
}

impl Version {
    /// Whether the scratch file keeps the version's line ([`COUNTS`] or [`DAILY`]).
    fn keeps_line(&self) -> bool {
        self.flags & (COUNTS | DAILY) != 0
    }

    /// The version as the scratch file gives it back: without its line when it keeps none.
    #[cfg(test)]
    fn stored(mut self) -> Self {
        if !self.keeps_line() {
            self.line = NO_LINE;
        }
        self
    }
}

/// The line of a version whose line the scratch file does not keep.
const NO_LINE: MonthLine = MonthLine {
    order: 0,
    customer: 0,
    quantity: 0,
    unit_price: 0,
    discount: 0,
    product: NO_PRODUCT,
    place: 0,
};

/// Microseconds in a day: `updated_at` is written from its batch's midnight (UTC), so the
/// usual one is 5-6 bytes, not 8.
const DAY_MICROS: i64 = 86_400_000_000;

impl Record for Version {
    const MAX_SIZE: usize = 16 + 10 + 5 + 1 + MonthLine::MAX_SIZE;
    /// Line, then version: the last of a line is its latest.
    type Key = (u128, i64, i32);

    fn key(&self) -> Self::Key {
        (self.key, self.updated_at, self.batch)
    }

    fn encode(&self, out: &mut [u8]) -> usize {
        let mut p = Put { out, at: 0 };
        p.bytes(&self.key.to_le_bytes());
        p.var(
            self.updated_at
                .wrapping_sub(i64::from(self.batch).wrapping_mul(DAY_MICROS)),
        );
        p.var(self.batch);
        p.bytes(&[self.flags]);
        if self.keeps_line() {
            self.line.put(&mut p);
        }
        p.at
    }

    fn decode(b: &[u8]) -> Option<(Self, usize)> {
        let mut t = Take { b, at: 0 };
        let key = u128::from_le_bytes(t.bytes()?);
        let since_batch: i64 = t.var()?;
        let batch: i32 = t.var()?;
        let [flags] = t.bytes()?;
        let mut v = Version {
            key,
            updated_at: since_batch.wrapping_add(i64::from(batch).wrapping_mul(DAY_MICROS)),
            batch,
            flags,
            line: NO_LINE,
        };
        if v.keeps_line() {
            v.line = MonthLine::take(&mut t)?;
        }
        Some((v, t.at))
    }
}

/// The scratch error of a path.
fn scratch(path: &Path) -> impl Fn(std::io::Error) -> MonthlyError + '_ {
    move |source| MonthlyError::Scratch {
        path: path.to_path_buf(),
        source,
    }
}

/// Records being sorted: a chunk in memory, the sorted chunks in a scratch folder.
struct Runs<T> {
    dir: tempfile::TempDir,
    paths: Vec<PathBuf>,
    buffer: Vec<T>,
    /// Bytes of the sorted chunks written.
    bytes: u64,
}

impl<T: Record> Runs<T> {
    fn new() -> Result<Self, MonthlyError> {
        let dir = tempfile::tempdir().map_err(scratch(&std::env::temp_dir()))?;
        Ok(Runs {
            dir,
            paths: Vec::new(),
            buffer: Vec::new(),
            bytes: 0,
        })
    }

    fn push(&mut self, v: T) -> Result<(), MonthlyError> {
        self.buffer.push(v);
        if self.buffer.len() >= CHUNK_BYTES / std::mem::size_of::<T>() {
            self.spill()?;
        }
        Ok(())
    }

    /// A new scratch file's path.
    fn next_path(&self) -> PathBuf {
        self.dir.path().join(format!("run-{:06}", self.paths.len()))
    }

    /// Sorts the buffered records (stably: ties keep their reading order) into a new file.
    fn spill(&mut self) -> Result<(), MonthlyError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.buffer.sort_by_key(T::key);
        let path = self.next_path();
        let mut w = Writer::create(&path)?;
        for v in &self.buffer {
            w.write(v)?;
        }
        self.bytes += w.finish()?;
        self.buffer.clear();
        self.paths.push(path);
        Ok(())
    }

    /// Spills what is buffered, frees the buffer and merges the files down to [`FAN_IN`].
    fn finish(self) -> Result<Spilled, MonthlyError> {
        self.finish_with(FAN_IN)
    }

    /// [`Runs::finish`], merging down to `fan_in` files (at least 2).
    fn finish_with(mut self, fan_in: usize) -> Result<Spilled, MonthlyError> {
        let fan_in = fan_in.max(2);
        self.spill()?;
        self.buffer = Vec::new();
        let mut made = self.paths.len();
        while self.paths.len() > fan_in {
            // Neighbours merge in place of their group, so files keep their order: equal keys
            // still pop from the file written later.
            let mut next = Vec::with_capacity(self.paths.len().div_ceil(fan_in));
            for group in self.paths.chunks(fan_in) {
                if let [one] = group {
                    next.push(one.clone());
                    continue;
                }
                let path = self.dir.path().join(format!("run-{made:06}"));
                made += 1;
                let mut w = Writer::create(&path)?;
                merge_files(group, |v: T| w.write(&v))?;
                w.finish()?;
                for p in group {
                    std::fs::remove_file(p).map_err(scratch(p))?;
                }
                next.push(path);
            }
            self.paths = next;
        }
        Ok(Spilled {
            paths: self.paths,
            bytes: self.bytes,
            _dir: self.dir,
        })
    }
}

/// A scratch file being written.
struct Writer {
    path: PathBuf,
    out: BufWriter<File>,
    record: Vec<u8>,
    bytes: u64,
}

impl Writer {
    fn create(path: &Path) -> Result<Self, MonthlyError> {
        let file = File::create(path).map_err(scratch(path))?;
        Ok(Writer {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(256 << 10, file),
            record: Vec::new(),
            bytes: 0,
        })
    }

    fn write<T: Record>(&mut self, v: &T) -> Result<(), MonthlyError> {
        self.record.resize(T::MAX_SIZE, 0);
        let n = v.encode(&mut self.record);
        self.bytes += n as u64;
        self.out
            .write_all(&self.record[..n])
            .map_err(scratch(&self.path))
    }

    /// Flushes the file; returns its length.
    fn finish(mut self) -> Result<u64, MonthlyError> {
        self.out.flush().map_err(scratch(&self.path))?;
        Ok(self.bytes)
    }
}

/// Sorted scratch files, deleted with the value.
#[derive(Debug)]
struct Spilled {
    paths: Vec<PathBuf>,
    /// Bytes of the files.
    bytes: u64,
    _dir: tempfile::TempDir,
}

impl Spilled {
    /// Calls `f` with every record in key order (equal keys in file order).
    fn merge<T: Record>(
        &self,
        f: impl FnMut(T) -> Result<(), MonthlyError>,
    ) -> Result<(), MonthlyError> {
        merge_files(&self.paths, f)
    }
}

/// One scratch file being merged: records are decoded from a buffer of the file.
struct Run {
    path: PathBuf,
    file: File,
    buffer: Box<[u8]>,
    /// The buffer's bytes not decoded yet.
    start: usize,
    end: usize,
    /// Whether the file has been read to its end.
    eof: bool,
}

impl Run {
    fn open(path: &Path) -> Result<Self, MonthlyError> {
        let file = File::open(path).map_err(scratch(path))?;
        Ok(Run {
            path: path.to_path_buf(),
            file,
            buffer: vec![0; READ_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
        })
    }

    /// The next record, `None` at the end.
    fn next<T: Record>(&mut self) -> Result<Option<T>, MonthlyError> {
        if self.end - self.start < T::MAX_SIZE && !self.eof {
            self.fill()?;
        }
        if self.start == self.end {
            return Ok(None);
        }
        match T::decode(&self.buffer[self.start..self.end]) {
            Some((v, n)) => {
                self.start += n;
                Ok(Some(v))
            }
            None => Err(scratch(&self.path)(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the scratch file ends inside a record",
            ))),
        }
    }

    /// Moves the bytes not decoded to the buffer's start and reads until it is full or the file
    /// ends.
    fn fill(&mut self) -> Result<(), MonthlyError> {
        self.buffer.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        while self.end < self.buffer.len() {
            match self.file.read(&mut self.buffer[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(scratch(&self.path)(e)),
            }
        }
        Ok(())
    }
}

/// Calls `f` with the records of sorted files in key order; equal keys pop in file order.
fn merge_files<T: Record>(
    paths: &[PathBuf],
    mut f: impl FnMut(T) -> Result<(), MonthlyError>,
) -> Result<(), MonthlyError> {
    let mut runs = paths
        .iter()
        .map(|p| Run::open(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut heap = BinaryHeap::with_capacity(runs.len());
    let mut heads: Vec<Option<T>> = Vec::with_capacity(runs.len());
    for (i, r) in runs.iter_mut().enumerate() {
        let head = r.next::<T>()?;
        if let Some(v) = &head {
            heap.push(Reverse((v.key(), i)));
        }
        heads.push(head);
    }
    while let Some(Reverse((_, i))) = heap.pop() {
        let v = heads[i].take().expect("a run in the heap has a head");
        heads[i] = runs[i].next()?;
        if let Some(n) = &heads[i] {
            heap.push(Reverse((n.key(), i)));
        }
        f(v)?;
    }
    Ok(())
}

/// Reads month M's lines from the curated batches of its window that exist.
pub fn read(
    curated: &Curated,
    contract: &Contract,
    first_day: NaiveDate,
) -> Result<MonthLines, MonthlyError> {
    let segments = contract.segments();
    let (present, missing) = present_and_missing(curated, contract, first_day);
    let catalog = catalog(curated, &present)?;
    let ids: BTreeMap<&str, u32> = catalog
        .keys()
        .enumerate()
        .map(|(i, code)| (code.as_str(), i as u32))
        .collect();
    let products: Vec<Product> = catalog.values().cloned().collect();
    let in_segments: Vec<bool> = products
        .iter()
        .map(|p| segments.contains(p.segment.as_str()))
        .collect();
    let month = month_of(first_day);
    let mut places = Places::default();
    let mut versions = Runs::new()?;
    let mut read = 0u64;
    for d in &present {
        let partner: HashSet<String> = if month_of(*d) == month {
            curated
                .products(*d)?
                .into_values()
                .filter(|p| is_partner_product(contract, p))
                .map(|p| p.product_code)
                .collect()
        } else {
            HashSet::new()
        };
        let batch = d.to_epoch_days();
        curated.each_line(*d, |l| -> Result<(), MonthlyError> {
            read += 1;
            let v = version(&l, &month, batch, &partner, &ids, &mut places);
            versions.push(counts_in(v, &in_segments))
        })?;
    }
    let versions = versions.finish()?;
    let mut out = MonthLines {
        source_batches: present,
        missing_batches: missing,
        ..MonthLines::default()
    };
    let mut lines = Runs::new()?;
    each_latest(&versions, |latest, daily| {
        if latest.flags & (IN_MONTH | COMPLETED) != IN_MONTH | COMPLETED {
            return Ok(());
        }
        out.daily_cents = out.daily_cents.saturating_add(daily);
        let product = latest.line.product;
        if product != NO_PRODUCT && in_segments[product as usize] {
            out.count += 1;
            lines.push(latest.line)?;
        }
        Ok(())
    })?;
    let versions_bytes = versions.bytes;
    drop(versions);
    let lines = lines.finish()?;
    let scratch_bytes = versions_bytes + lines.bytes;
    out.lines = Some(Arc::new(lines));
    out.products = products;
    out.places = places.names;
    tracing::info!(
        month = %month,
        batches = out.source_batches.len(),
        versions = read,
        lines = out.count,
        scratch_bytes,
        "month lines read"
    );
    Ok(out)
}

/// The version flagged [`COUNTS`] when, as its line's latest, it would be a line of M.
fn counts_in(mut v: Version, in_segments: &[bool]) -> Version {
    let product = v.line.product;
    if v.flags & (IN_MONTH | COMPLETED) == IN_MONTH | COMPLETED
        && product != NO_PRODUCT
        && in_segments[product as usize]
    {
        v.flags |= COUNTS;
    }
    v
}

/// The record of one version read from batch `batch` (days since 1970-01-01).
fn version(
    l: &LineRef<'_>,
    month: &str,
    batch: i32,
    partner: &HashSet<String>,
    ids: &BTreeMap<&str, u32>,
    places: &mut Places,
) -> Version {
    let local = l.local_date();
    let completed = l.status == Status::Completed;
    let in_month = local.is_some_and(|d| month_of(d) == month);
    let daily = completed
        && local.map(|d| d.to_epoch_days()) == Some(batch)
        && in_month
        && partner.contains(l.product_code);
    let key = u128::from(id_hash(b'l', l.transaction_id)) << 64
        | u128::from(id_hash(b'L', l.transaction_id));
    Version {
        key,
        updated_at: l.updated_at.unwrap_or(i64::MIN),
        batch,
        flags: if in_month { IN_MONTH } else { 0 }
            | if completed { COMPLETED } else { 0 }
            | if daily { DAILY } else { 0 },
        line: MonthLine {
            order: id_hash(b'o', l.order_id),
            customer: id_hash(b'c', l.customer_id),
            quantity: l.quantity,
            unit_price: l.unit_price,
            discount: l.discount,
            product: ids.get(l.product_code).copied().unwrap_or(NO_PRODUCT),
            place: places.id(l.uf, l.city),
        },
    }
}

/// Calls `f` once per line with its latest version and the Σ net amount of its [`DAILY`]
/// versions.
fn each_latest(
    versions: &Spilled,
    mut f: impl FnMut(&Version, i128) -> Result<(), MonthlyError>,
) -> Result<(), MonthlyError> {
    let mut group: Option<(Version, i128)> = None;
    versions.merge(|v: Version| {
        let daily = if v.flags & DAILY != 0 {
            v.line.net_amount()
        } else {
            0
        };
        group = match group.take() {
            Some((last, sum)) if last.key == v.key => Some((v, sum.saturating_add(daily))),
            Some((last, sum)) => {
                f(&last, sum)?;
                Some((v, daily))
            }
            None => Some((v, daily)),
        };
        Ok(())
    })?;
    if let Some((last, sum)) = group {
        f(&last, sum)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use proptest::prelude::*;

    /// A line; figures in 32 bits, so that no sum saturates (saturating sums depend on order;
    /// the limits are `records_round_trip_at_the_types_limits`' and `monthly`'s).
    fn line() -> impl Strategy<Value = MonthLine> {
        let figure = any::<i32>().prop_map(i64::from);
        (
            0u64..4,
            any::<u64>(),
            (figure.clone(), figure.clone(), figure),
            (any::<u32>(), any::<u32>()),
        )
            .prop_map(
                |(order, customer, (quantity, unit_price, discount), (product, place))| MonthLine {
                    order,
                    customer,
                    quantity,
                    unit_price,
                    discount,
                    product,
                    place,
                },
            )
    }

    fn version() -> impl Strategy<Value = Version> {
        (
            0u128..6,
            prop_oneof![Just(i64::MIN), 0i64..3, Just(i64::MAX)],
            0i32..3,
            0u8..16,
            line(),
        )
            .prop_map(|(key, updated_at, batch, flags, line)| Version {
                key,
                updated_at,
                batch,
                flags,
                line,
            })
    }

    proptest! {
        /// Merging spilled chunks (through intermediate merges too) gives each line's latest
        /// version (the last read among equal versions) and the sum of its daily versions, as
        /// holding every version does.
        #[test]
        fn the_merge_keeps_what_holding_every_version_keeps(
            chunks in prop::collection::vec(prop::collection::vec(version(), 0..12), 0..7),
            fan_in in 2usize..4,
        ) {
            let mut runs = Runs::new().unwrap();
            let mut want: BTreeMap<u128, (Version, i128)> = BTreeMap::new();
            for chunk in &chunks {
                for v in chunk {
                    let daily = if v.flags & DAILY != 0 { v.line.net_amount() } else { 0 };
                    let e = want.entry(v.key).or_insert((v.stored(), 0));
                    if v.key() >= e.0.key() {
                        e.0 = v.stored();
                    }
                    e.1 = e.1.saturating_add(daily);
                    runs.push(*v).unwrap();
                }
                runs.spill().unwrap();
            }
            let spilled = runs.finish_with(fan_in).unwrap();
            prop_assert!(spilled.paths.len() <= fan_in);
            let mut got = BTreeMap::new();
            each_latest(&spilled, |v, sum| {
                assert!(got.insert(v.key, (*v, sum)).is_none(), "one call per line");
                Ok(())
            })
            .unwrap();
            prop_assert_eq!(got, want);
        }

        /// Each order counts once in each row its lines name, whatever the chunks.
        #[test]
        fn orders_count_once_per_row(lines in prop::collection::vec(line(), 0..40)) {
            let mut runs = Runs::new().unwrap();
            for (i, l) in lines.iter().enumerate() {
                runs.push(*l).unwrap();
                if i % 7 == 6 {
                    runs.spill().unwrap();
                }
            }
            let month = MonthLines {
                lines: Some(Arc::new(runs.finish_with(2).unwrap())),
                ..MonthLines::default()
            };
            // Rows: the place modulo 3, and row 3 for every line of an even product.
            let rows_of = |l: &MonthLine, out: &mut Vec<usize>| {
                out.push(l.place as usize % 3);
                if l.product.is_multiple_of(2) {
                    out.push(3);
                }
            };
            let got = month.count_orders(4, rows_of).unwrap();
            let mut want = vec![BTreeSet::new(); 4];
            for l in &lines {
                let mut rows = Vec::new();
                rows_of(l, &mut rows);
                for r in rows {
                    want[r].insert(l.order);
                }
            }
            let want: Vec<u64> = want.iter().map(|s| s.len() as u64).collect();
            prop_assert_eq!(got, want);
            let mut seen = 0;
            month.each_line(|_| seen += 1).unwrap();
            prop_assert_eq!(seen, lines.len());
        }
    }

    #[test]
    fn records_round_trip_at_the_types_limits() {
        let v = Version {
            key: u128::MAX - 1,
            updated_at: i64::MIN,
            batch: i32::MAX,
            flags: 7,
            line: MonthLine {
                order: u64::MAX,
                customer: 1,
                quantity: i64::MAX,
                unit_price: i64::MIN,
                discount: -1,
                product: NO_PRODUCT,
                place: 3,
            },
        };
        for flags in [0, IN_MONTH | COMPLETED, DAILY, COUNTS | 7] {
            let v = Version { flags, ..v };
            assert_round_trip(v, v.stored());
            assert_round_trip(v.line, v.line);
        }
    }

    /// `v` is written in at most `MAX_SIZE` bytes and read back as `want`; every shorter
    /// prefix of its bytes is refused.
    fn assert_round_trip<T: Record + PartialEq + std::fmt::Debug>(v: T, want: T) {
        let mut b = vec![0u8; T::MAX_SIZE];
        let n = v.encode(&mut b);
        assert!(n <= T::MAX_SIZE);
        assert_eq!(T::decode(&b[..n]), Some((want, n)));
        for cut in 0..n {
            assert!(
                T::decode(&b[..cut]).is_none(),
                "{cut} of {n} bytes read as a record"
            );
        }
    }

    proptest! {
        /// Any record, whatever its values, reads back from its bytes (a version without its
        /// line when the scratch file keeps none).
        #[test]
        fn records_round_trip(
            key in any::<u128>(),
            (updated_at, batch, flags) in (any::<i64>(), any::<i32>(), any::<u8>()),
            (order, customer) in (any::<u64>(), any::<u64>()),
            (quantity, unit_price, discount) in (any::<i64>(), any::<i64>(), any::<i64>()),
            (product, place) in (any::<u32>(), any::<u32>()),
        ) {
            let line = MonthLine { order, customer, quantity, unit_price, discount, product, place };
            let v = Version { key, updated_at, batch, flags, line };
            assert_round_trip(v, v.stored());
            assert_round_trip(line, line);
        }
    }

    /// Records of varied lengths read back in order across many refills of each file's buffer.
    #[test]
    fn records_cross_the_read_buffer() {
        let mut runs = Runs::new().unwrap();
        let mut want = Vec::new();
        for i in 0..20_000u32 {
            let big = i64::from(i) << (i % 50);
            let v = Version {
                key: u128::from(i.wrapping_mul(2_654_435_761)),
                updated_at: if i % 7 == 0 { i64::MIN } else { big },
                batch: (i % 40) as i32 + 20_000,
                flags: (i % 16) as u8,
                line: MonthLine {
                    order: u64::from(i),
                    customer: u64::from(i) << 32,
                    quantity: big,
                    unit_price: -big,
                    discount: i64::from(i % 3),
                    product: i % 300,
                    place: i,
                },
            };
            runs.push(v).unwrap();
            want.push(v.stored());
            if i % 6_000 == 5_999 {
                runs.spill().unwrap();
            }
        }
        let spilled = runs.finish().unwrap();
        assert_eq!(spilled.paths.len(), 4);
        let mut got = Vec::new();
        spilled
            .merge(|v: Version| {
                got.push(v);
                Ok(())
            })
            .unwrap();
        want.sort_by_key(Version::key);
        assert_eq!(got, want);
        let on_disk: u64 = spilled
            .paths
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum();
        assert_eq!(spilled.bytes, on_disk);
    }
}
