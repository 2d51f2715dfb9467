//! Month M's lines in bounded memory: the latest version of each line of M's window, on disk.
//!
//! Every version of every line in the batches of M's window (M's days and the `late_days`) is
//! read as a stream and cut to a fixed 77-byte record (a 128-bit hash of the line, its version,
//! batch, flags, product and place numbers, figures, hashed order and customer); records are
//! sorted in chunks spilled to scratch files, and the chunks are merged as streams, so that all
//! versions of a line meet once: the latest (greatest `updated_at`, ties to the later batch, then
//! to the later line read) decides. The completed lines of the contract's segments sold in M go,
//! cut to 48 bytes, into a second sort by order, which the builds replay line by line
//! ([`MonthLines::each_line`]; [`MonthLines::count_orders`] counts each order once per row).
//! Memory holds a chunk of records, one record per scratch file being merged, and the products
//! and places: never the window's lines nor their strings. The same pass sums the
//! reconciliation's daily side.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::NaiveDate;

use super::contract::Contract;
use super::curated::{Curated, Line, LineRef, Product, Status, catalog};
use super::daily::{is_partner_product, month_of};
use super::monthly::{MonthlyError, window};
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

/// A fixed-size record that is sorted in spilled chunks and merged.
trait Record: Copy {
    /// Bytes of one record in a scratch file.
    const SIZE: usize;
    /// The merge order.
    type Key: Ord + Copy;
    /// The record's place in the merge order.
    fn key(&self) -> Self::Key;
    /// Writes the record into `out` (`SIZE` bytes).
    fn encode(&self, out: &mut [u8]);
    /// Reads a record from `b` (`SIZE` bytes).
    fn decode(b: &[u8]) -> Self;
}

/// `N` little-endian bytes of `b` from `at`.
fn le<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[at..at + N]);
    out
}

impl Record for MonthLine {
    const SIZE: usize = 48;
    type Key = u64;

    fn key(&self) -> u64 {
        self.order
    }

    fn encode(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.order.to_le_bytes());
        out[8..16].copy_from_slice(&self.customer.to_le_bytes());
        out[16..24].copy_from_slice(&self.quantity.to_le_bytes());
        out[24..32].copy_from_slice(&self.unit_price.to_le_bytes());
        out[32..40].copy_from_slice(&self.discount.to_le_bytes());
        out[40..44].copy_from_slice(&self.product.to_le_bytes());
        out[44..48].copy_from_slice(&self.place.to_le_bytes());
    }

    fn decode(b: &[u8]) -> Self {
        MonthLine {
            order: u64::from_le_bytes(le(b, 0)),
            customer: u64::from_le_bytes(le(b, 8)),
            quantity: i64::from_le_bytes(le(b, 16)),
            unit_price: i64::from_le_bytes(le(b, 24)),
            discount: i64::from_le_bytes(le(b, 32)),
            product: u32::from_le_bytes(le(b, 40)),
            place: u32::from_le_bytes(le(b, 44)),
        }
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

/// Months already read, shared by the builds of one request: the monthly aggregate and the
/// brand view read M and M−1 once. Their lines stay on disk (not in memory) while it lives.
#[derive(Debug, Clone, Default)]
pub struct MonthReads(Arc<Mutex<HashMap<(String, NaiveDate), MonthLines>>>);

impl MonthReads {
    /// The months held (a build that panicked holding the lock left them whole).
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<(String, NaiveDate), MonthLines>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Month M's lines for the contract, read on first use.
    pub fn get(
        &self,
        curated: &Curated,
        contract: &Contract,
        first_day: NaiveDate,
    ) -> Result<MonthLines, MonthlyError> {
        let key = (contract.name.clone(), first_day);
        if let Some(lines) = self.held().get(&key) {
            return Ok(lines.clone());
        }
        let lines = read(curated, contract, first_day)?;
        self.held().insert(key, lines.clone());
        Ok(lines)
    }
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

impl Record for Version {
    const SIZE: usize = 29 + MonthLine::SIZE;
    /// Line, then version: the last of a line is its latest.
    type Key = (u128, i64, i32);

    fn key(&self) -> Self::Key {
        (self.key, self.updated_at, self.batch)
    }

    fn encode(&self, out: &mut [u8]) {
        out[0..16].copy_from_slice(&self.key.to_le_bytes());
        out[16..24].copy_from_slice(&self.updated_at.to_le_bytes());
        out[24..28].copy_from_slice(&self.batch.to_le_bytes());
        out[28] = self.flags;
        self.line.encode(&mut out[29..]);
    }

    fn decode(b: &[u8]) -> Self {
        Version {
            key: u128::from_le_bytes(le(b, 0)),
            updated_at: i64::from_le_bytes(le(b, 16)),
            batch: i32::from_le_bytes(le(b, 24)),
            flags: b[28],
            line: MonthLine::decode(&b[29..]),
        }
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
}

impl<T: Record> Runs<T> {
    fn new() -> Result<Self, MonthlyError> {
        let dir = tempfile::tempdir().map_err(scratch(&std::env::temp_dir()))?;
        Ok(Runs {
            dir,
            paths: Vec::new(),
            buffer: Vec::new(),
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
        w.finish()?;
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
            _dir: self.dir,
        })
    }
}

/// A scratch file being written.
struct Writer {
    path: PathBuf,
    out: BufWriter<File>,
    record: Vec<u8>,
}

impl Writer {
    fn create(path: &Path) -> Result<Self, MonthlyError> {
        let file = File::create(path).map_err(scratch(path))?;
        Ok(Writer {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(256 << 10, file),
            record: Vec::new(),
        })
    }

    fn write<T: Record>(&mut self, v: &T) -> Result<(), MonthlyError> {
        self.record.resize(T::SIZE, 0);
        v.encode(&mut self.record);
        self.out
            .write_all(&self.record)
            .map_err(scratch(&self.path))
    }

    fn finish(mut self) -> Result<(), MonthlyError> {
        self.out.flush().map_err(scratch(&self.path))
    }
}

/// Sorted scratch files, deleted with the value.
#[derive(Debug)]
struct Spilled {
    paths: Vec<PathBuf>,
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

/// One scratch file being merged.
struct Run {
    path: PathBuf,
    reader: BufReader<File>,
    record: Vec<u8>,
}

impl Run {
    fn open(path: &Path, size: usize) -> Result<Self, MonthlyError> {
        let file = File::open(path).map_err(scratch(path))?;
        Ok(Run {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(READ_BUFFER, file),
            record: vec![0; size],
        })
    }

    /// The next record, `None` at the end.
    fn next<T: Record>(&mut self) -> Result<Option<T>, MonthlyError> {
        match self.reader.read_exact(&mut self.record) {
            Ok(()) => Ok(Some(T::decode(&self.record))),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(scratch(&self.path)(e)),
        }
    }
}

/// Calls `f` with the records of sorted files in key order; equal keys pop in file order.
fn merge_files<T: Record>(
    paths: &[PathBuf],
    mut f: impl FnMut(T) -> Result<(), MonthlyError>,
) -> Result<(), MonthlyError> {
    let mut runs = paths
        .iter()
        .map(|p| Run::open(p, T::SIZE))
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
    let (present, missing): (Vec<NaiveDate>, Vec<NaiveDate>) =
        window(first_day, contract.late_days)
            .into_iter()
            .partition(|d| curated.has_batch(*d));
    let catalog = catalog(curated, &present)?;
    let ids: BTreeMap<&str, u32> = catalog
        .keys()
        .enumerate()
        .map(|(i, code)| (code.as_str(), i as u32))
        .collect();
    let products: Vec<Product> = catalog.values().cloned().collect();
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
            versions.push(version(&l, &month, batch, &partner, &ids, &mut places))
        })?;
    }
    let versions = versions.finish()?;
    let in_segments: Vec<bool> = products
        .iter()
        .map(|p| segments.contains(p.segment.as_str()))
        .collect();
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
    drop(versions);
    out.lines = Some(Arc::new(lines.finish()?));
    out.products = products;
    out.places = places.names;
    tracing::info!(
        month = %month,
        batches = out.source_batches.len(),
        versions = read,
        lines = out.count,
        scratch_bytes = read * Version::SIZE as u64 + out.count * MonthLine::SIZE as u64,
        "month lines read"
    );
    Ok(out)
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
            0u8..8,
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
                    let e = want.entry(v.key).or_insert((*v, 0));
                    if v.key() >= e.0.key() {
                        e.0 = *v;
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
        let mut b = vec![0u8; Version::SIZE];
        v.encode(&mut b);
        assert_eq!(Version::decode(&b), v);
    }
}
