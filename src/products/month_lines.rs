//! Month M's lines in bounded memory: the latest version of each line of M's window, compact.
//!
//! Every version of every line in the batches of M's window (M's days and the `late_days`) is
//! read as a stream and cut to a fixed 77-byte record (a 128-bit hash of the line, its version,
//! batch, flags, product and place numbers, figures, hashed order and customer); records are
//! sorted in chunks spilled to scratch files, and the chunks are merged as streams, so that all
//! versions of a line meet once: the latest (greatest `updated_at`, ties to the later batch, then
//! to the later line read) decides. What stays in memory is the result, 48 bytes a completed
//! line of the contract's segments sold in M, and the products and places it names; never the
//! window's versions nor their strings. The same pass sums the reconciliation's daily side.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use chrono::NaiveDate;

use super::contract::Contract;
use super::curated::{Curated, Line, LineRef, Product, Status, catalog};
use super::daily::{is_partner_product, month_of};
use super::monthly::{MonthlyError, window};
use super::window::{Places, id_hash};

/// Versions sorted in memory before a chunk is spilled (about 22 MiB of records).
const CHUNK: usize = 1 << 18;

/// Bytes of one version in a scratch file.
const RECORD: usize = 77;

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

/// Month M's lines: latest version, completed, sold in local month M, of the contract's
/// segments (every brand).
#[derive(Debug, Clone, Default)]
pub struct MonthLines {
    /// The lines.
    pub lines: Vec<MonthLine>,
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

    /// The (uf, city) of a line.
    pub fn place(&self, l: &MonthLine) -> (&str, &str) {
        let (uf, city) = &self.places[l.place as usize];
        (uf, city)
    }

    /// Month lines from owned lines already chosen (latest, completed, in M), with their
    /// products; the daily side is left at 0.
    pub fn from_lines(lines: impl IntoIterator<Item = (Line, Product)>) -> Self {
        let mut out = MonthLines::default();
        let mut places = Places::default();
        let mut codes: BTreeMap<String, u32> = BTreeMap::new();
        for (l, p) in lines {
            let product = *codes.entry(p.product_code.clone()).or_insert_with(|| {
                out.products.push(p.clone());
                (out.products.len() - 1) as u32
            });
            out.lines.push(MonthLine {
                order: id_hash(b'o', &l.order_id),
                customer: id_hash(b'c', &l.customer_id),
                quantity: l.quantity,
                unit_price: l.unit_price,
                discount: l.discount,
                product,
                place: places.id(&l.uf, &l.city),
            });
        }
        out.places = places.names;
        out
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
    /// Index into the catalog, or [`NO_PRODUCT`].
    product: u32,
    /// Index into the places.
    place: u32,
    quantity: i64,
    unit_price: i64,
    discount: i64,
    order: u64,
    customer: u64,
}

impl Version {
    /// The merge order: line, then version (the last of a line is its latest).
    fn order_key(&self) -> (u128, i64, i32) {
        (self.key, self.updated_at, self.batch)
    }

    fn encode(&self, out: &mut [u8; RECORD]) {
        out[0..16].copy_from_slice(&self.key.to_le_bytes());
        out[16..24].copy_from_slice(&self.updated_at.to_le_bytes());
        out[24..28].copy_from_slice(&self.batch.to_le_bytes());
        out[28] = self.flags;
        out[29..33].copy_from_slice(&self.product.to_le_bytes());
        out[33..37].copy_from_slice(&self.place.to_le_bytes());
        out[37..45].copy_from_slice(&self.quantity.to_le_bytes());
        out[45..53].copy_from_slice(&self.unit_price.to_le_bytes());
        out[53..61].copy_from_slice(&self.discount.to_le_bytes());
        out[61..69].copy_from_slice(&self.order.to_le_bytes());
        out[69..77].copy_from_slice(&self.customer.to_le_bytes());
    }

    fn decode(b: &[u8; RECORD]) -> Self {
        fn le<const N: usize>(b: &[u8]) -> [u8; N] {
            b.try_into().expect("slice of the record's width")
        }
        Version {
            key: u128::from_le_bytes(le(&b[0..16])),
            updated_at: i64::from_le_bytes(le(&b[16..24])),
            batch: i32::from_le_bytes(le(&b[24..28])),
            flags: b[28],
            product: u32::from_le_bytes(le(&b[29..33])),
            place: u32::from_le_bytes(le(&b[33..37])),
            quantity: i64::from_le_bytes(le(&b[37..45])),
            unit_price: i64::from_le_bytes(le(&b[45..53])),
            discount: i64::from_le_bytes(le(&b[53..61])),
            order: u64::from_le_bytes(le(&b[61..69])),
            customer: u64::from_le_bytes(le(&b[69..77])),
        }
    }
}

/// Sorted chunks of versions in a scratch folder.
struct Runs {
    dir: tempfile::TempDir,
    paths: Vec<PathBuf>,
    buffer: Vec<Version>,
}

impl Runs {
    fn new() -> Result<Self, MonthlyError> {
        let dir = tempfile::tempdir().map_err(|source| MonthlyError::Scratch {
            path: std::env::temp_dir(),
            source,
        })?;
        Ok(Runs {
            dir,
            paths: Vec::new(),
            buffer: Vec::new(),
        })
    }

    fn push(&mut self, v: Version) -> Result<(), MonthlyError> {
        self.buffer.push(v);
        if self.buffer.len() >= CHUNK {
            self.spill()?;
        }
        Ok(())
    }

    /// Spills what is buffered and frees the buffer: the runs are ready to merge.
    fn finish(&mut self) -> Result<(), MonthlyError> {
        self.spill()?;
        self.buffer = Vec::new();
        Ok(())
    }

    /// Sorts the buffered versions (stably: ties keep their reading order) into a new file.
    fn spill(&mut self) -> Result<(), MonthlyError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.buffer.sort_by_key(Version::order_key);
        let path = self.dir.path().join(format!("run-{:05}", self.paths.len()));
        let scratch = |source| MonthlyError::Scratch {
            path: path.clone(),
            source,
        };
        let mut w = BufWriter::with_capacity(256 << 10, File::create(&path).map_err(scratch)?);
        let mut record = [0u8; RECORD];
        for v in self.buffer.drain(..) {
            v.encode(&mut record);
            w.write_all(&record).map_err(scratch)?;
        }
        w.flush().map_err(scratch)?;
        self.paths.push(path);
        Ok(())
    }
}

/// One scratch file being merged.
struct Run {
    path: PathBuf,
    reader: BufReader<File>,
}

impl Run {
    fn open(path: &Path) -> Result<Self, MonthlyError> {
        let file = File::open(path).map_err(|source| MonthlyError::Scratch {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Run {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(READ_BUFFER, file),
        })
    }

    /// The next version, `None` at the end.
    fn next(&mut self) -> Result<Option<Version>, MonthlyError> {
        let mut record = [0u8; RECORD];
        match self.reader.read_exact(&mut record) {
            Ok(()) => Ok(Some(Version::decode(&record))),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(source) => Err(MonthlyError::Scratch {
                path: self.path.clone(),
                source,
            }),
        }
    }
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
    let mut runs = Runs::new()?;
    for d in &present {
        let daily_day = month_of(*d) == month;
        let partner: HashSet<String> = if daily_day {
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
            runs.push(version(&l, &month, batch, &partner, &ids, &mut places))
        })?;
    }
    runs.finish()?;
    let in_segments: Vec<bool> = products
        .iter()
        .map(|p| segments.contains(p.segment.as_str()))
        .collect();
    let mut out = MonthLines {
        source_batches: present,
        missing_batches: missing,
        ..MonthLines::default()
    };
    merge(&runs.paths, |latest, daily| {
        if latest.flags & (IN_MONTH | COMPLETED) != IN_MONTH | COMPLETED {
            return;
        }
        out.daily_cents = out.daily_cents.saturating_add(daily);
        if latest.product != NO_PRODUCT && in_segments[latest.product as usize] {
            out.lines.push(MonthLine {
                order: latest.order,
                customer: latest.customer,
                quantity: latest.quantity,
                unit_price: latest.unit_price,
                discount: latest.discount,
                product: latest.product,
                place: latest.place,
            });
        }
    })?;
    drop(runs);
    out.products = products;
    out.places = places.names;
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
        product: ids.get(l.product_code).copied().unwrap_or(NO_PRODUCT),
        place: places.id(l.uf, l.city),
        quantity: l.quantity,
        unit_price: l.unit_price,
        discount: l.discount,
        order: id_hash(b'o', l.order_id),
        customer: id_hash(b'c', l.customer_id),
    }
}

/// Merges sorted runs and calls `f` once per line with its latest version and the Σ net amount
/// of its [`DAILY`] versions.
fn merge(paths: &[PathBuf], mut f: impl FnMut(&Version, i128)) -> Result<(), MonthlyError> {
    let mut runs = paths
        .iter()
        .map(|p| Run::open(p))
        .collect::<Result<Vec<_>, _>>()?;
    // Smallest first; equal versions pop in run order, so the later run (read later) is last.
    let mut heap = BinaryHeap::new();
    let mut heads = Vec::with_capacity(runs.len());
    for (i, r) in runs.iter_mut().enumerate() {
        let head = r.next()?;
        if let Some(v) = &head {
            heap.push(Reverse((v.order_key(), i)));
        }
        heads.push(head);
    }
    let mut group: Option<(Version, i128)> = None;
    while let Some(Reverse((_, i))) = heap.pop() {
        let v = heads[i].take().expect("a run in the heap has a head");
        heads[i] = runs[i].next()?;
        if let Some(n) = &heads[i] {
            heap.push(Reverse((n.order_key(), i)));
        }
        let daily = if v.flags & DAILY != 0 {
            i128::from(v.quantity) * i128::from(v.unit_price) - i128::from(v.discount)
        } else {
            0
        };
        group = match group {
            Some((last, sum)) if last.key == v.key => Some((v, sum.saturating_add(daily))),
            Some((last, sum)) => {
                f(&last, sum);
                Some((v, daily))
            }
            None => Some((v, daily)),
        };
    }
    if let Some((last, sum)) = group {
        f(&last, sum);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn version() -> impl Strategy<Value = Version> {
        (
            0u128..6,
            prop_oneof![Just(i64::MIN), 0i64..3, Just(i64::MAX)],
            0i32..3,
            0u8..8,
            (any::<u32>(), any::<u32>()),
            (any::<i64>(), any::<i64>(), any::<i64>()),
            (any::<u64>(), any::<u64>()),
        )
            .prop_map(
                |(key, updated_at, batch, flags, (product, place), (q, p, d), (o, c))| Version {
                    key,
                    updated_at,
                    batch,
                    flags,
                    product,
                    place,
                    quantity: q,
                    unit_price: p,
                    discount: d,
                    order: o,
                    customer: c,
                },
            )
    }

    proptest! {
        /// Merging spilled chunks gives each line's latest version (the last read among equal
        /// versions) and the sum of its daily versions, as holding every version does.
        #[test]
        fn the_merge_keeps_what_holding_every_version_keeps(
            chunks in prop::collection::vec(prop::collection::vec(version(), 0..12), 0..5)
        ) {
            let mut runs = Runs::new().unwrap();
            let mut want: BTreeMap<u128, (Version, i128)> = BTreeMap::new();
            for chunk in &chunks {
                for v in chunk {
                    let daily = if v.flags & DAILY != 0 {
                        i128::from(v.quantity) * i128::from(v.unit_price) - i128::from(v.discount)
                    } else {
                        0
                    };
                    let e = want.entry(v.key).or_insert((*v, 0));
                    if v.order_key() >= e.0.order_key() {
                        e.0 = *v;
                    }
                    e.1 = e.1.saturating_add(daily);
                    runs.push(*v).unwrap();
                }
                runs.spill().unwrap();
            }
            let mut got = BTreeMap::new();
            merge(&runs.paths, |v, sum| {
                assert!(got.insert(v.key, (*v, sum)).is_none(), "one call per line");
            })
            .unwrap();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn records_round_trip_at_the_types_limits() {
        let v = Version {
            key: u128::MAX - 1,
            updated_at: i64::MIN,
            batch: i32::MAX,
            flags: 7,
            product: NO_PRODUCT,
            place: 3,
            quantity: i64::MAX,
            unit_price: i64::MIN,
            discount: -1,
            order: u64::MAX,
            customer: 1,
        };
        let mut b = [0u8; RECORD];
        v.encode(&mut b);
        assert_eq!(Version::decode(&b), v);
    }
}
