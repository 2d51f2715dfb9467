//! The daily analytic `<partner>_daily_<D>`: every completed line of the partner's products sold on D.
//!
//! Read from batch D only (a line is sent as known in batch D, not re-sent when a later batch
//! corrects it). Small cities are written as `OUTRAS`: a (uf, city) where fewer than `k` distinct
//! customers bought the partner's products over the trailing 30 days (D−29..D: the latest
//! version of each line over the batches of that window that exist, completed, sold in the
//! window). A missing batch only lowers the counts, so it can hide more cities, never fewer.

use std::collections::{HashMap, HashSet};

use arrow_array::RecordBatch;
use chrono::{Datelike, Days, NaiveDate};

use super::contract::Contract;
use super::curated::{Curated, CuratedError, Line, LineRef, Product, Status, catalog};
use super::pseudonym::Pseudonymizer;
use super::schema::{CellRef, ProductSchema, SchemaError};

/// Days of the trailing window that decides small cities.
pub const WINDOW_DAYS: u64 = 30;
/// The city written for small cities.
pub const OTHER_CITIES: &str = "OUTRAS";

/// The daily product could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum DailyError {
    /// Curated data could not be read.
    #[error(transparent)]
    Curated(#[from] CuratedError),
    /// Batch D is not in the curated data.
    #[error("batch {0} not found in the curated data")]
    MissingBatch(NaiveDate),
    /// A computed cell does not fit its column (permanent: the data must be corrected).
    #[error("net_amount of transaction {transaction_id} is {value} cents: it does not fit 64 bits")]
    Overflow {
        /// The line.
        transaction_id: String,
        /// The exact value, in decimal.
        value: String,
    },
}

/// One row of the daily file, compact: texts are indexes into its table's lists and keys are
/// their 64 bits (a 10M-row day holds ~2M partner rows at 64 bytes each).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DailyRow {
    /// Sale instant truncated to the hour, microseconds UTC.
    pub sold_at_hour: i64,
    /// Pseudonymous line (`key_text` writes it).
    pub line_key: u64,
    /// Pseudonymous customer (`key_text` writes it).
    pub customer_key: u64,
    /// Units.
    pub quantity: i64,
    /// List price, cents.
    pub unit_price: i64,
    /// Discount, cents.
    pub discount: i64,
    /// Net amount, cents.
    pub net_amount: i64,
    /// The product: an index into [`DailyTable::products`].
    pub product: u32,
    /// The (uf, city) read: an index into [`DailyTable::places`].
    pub place: u32,
    /// The city is written `OUTRAS` (fewer than k customers over the window).
    pub outras: bool,
}

/// The daily product of one day.
#[derive(Debug, Clone)]
pub struct DailyTable {
    /// The day.
    pub date: NaiveDate,
    /// Rows, sorted by (sold_at, line_key).
    pub rows: Vec<DailyRow>,
    /// The partner's products the rows name.
    pub products: Vec<Product>,
    /// The (uf, city) places the rows name.
    pub places: Vec<(String, String)>,
    /// Batches read (D and the window's).
    pub source_batches: Vec<NaiveDate>,
    /// Batches of the window that do not exist.
    pub missing_batches: Vec<NaiveDate>,
    /// Cities written as `OUTRAS` (count only).
    pub cities_suppressed: usize,
}

impl DailyTable {
    /// The product of a row.
    pub fn product(&self, r: &DailyRow) -> &Product {
        &self.products[r.product as usize]
    }

    /// The city written for a row: its city, or `OUTRAS`.
    pub fn city(&self, r: &DailyRow) -> &str {
        if r.outras {
            OTHER_CITIES
        } else {
            &self.places[r.place as usize].1
        }
    }

    /// The state of a row.
    pub fn uf(&self, r: &DailyRow) -> &str {
        &self.places[r.place as usize].0
    }

    /// The rows of `range` as a record batch of the daily schema.
    pub fn batch_of(
        &self,
        schema: &ProductSchema,
        range: std::ops::Range<usize>,
    ) -> Result<RecordBatch, SchemaError> {
        let date = days_since_epoch(self.date);
        let rows = &self.rows[range];
        schema.batch_from(rows.len(), |i, j| {
            let r = &rows[i];
            let p = || self.product(r);
            match j {
                0 => CellRef::Date(date),
                1 => CellRef::Micros(r.sold_at_hour),
                2 => CellRef::Key(r.line_key),
                3 => CellRef::Key(r.customer_key),
                4 => CellRef::Str(&p().product_code),
                5 => CellRef::Str(&p().name),
                6 => CellRef::Str(&p().brand),
                7 => CellRef::Str(&p().segment),
                8 => p().unit_size.as_deref().map_or(CellRef::Null, CellRef::Str),
                9 => CellRef::I64(r.quantity),
                10 => CellRef::Cents(r.unit_price),
                11 => CellRef::Cents(r.discount),
                12 => CellRef::Cents(r.net_amount),
                13 => CellRef::Str(self.city(r)),
                14 => CellRef::Str(self.uf(r)),
                _ => CellRef::Null, // no such column: the schema refuses the batch
            }
        })
    }
}

/// Days since 1970-01-01.
pub fn days_since_epoch(d: NaiveDate) -> i32 {
    d.to_epoch_days()
}

/// `YYYY-MM` of a date.
pub fn month_of(d: NaiveDate) -> String {
    format!("{:04}-{:02}", d.year(), d.month())
}

/// Returns true when the product is one the contract bought.
pub fn is_partner_product(contract: &Contract, p: &Product) -> bool {
    p.manufacturer == contract.manufacturer && contract.covers(&p.brand, &p.segment)
}

/// The lines of the daily file for D, before pseudonymization and suppression: batch D's
/// completed lines sold on local day D of the partner's products (per batch D's snapshot).
pub fn day_lines(
    curated: &Curated,
    contract: &Contract,
    d: NaiveDate,
) -> Result<Vec<(Line, Product)>, DailyError> {
    if !curated.has_batch(d) {
        return Err(DailyError::MissingBatch(d));
    }
    let products = curated.products(d)?;
    Ok(curated
        .transactions(d)?
        .into_iter()
        .filter(|l| l.status == Status::Completed && l.local_date() == Some(d))
        .filter_map(|l| {
            let p = products.get(&l.product_code)?;
            is_partner_product(contract, p).then(|| (l, p.clone()))
        })
        .collect())
}

/// Interns (uf, city) places: each distinct place once, named by its index.
#[derive(Default)]
struct Places {
    /// uf → city → index (looked up by borrowed strings: a place is read millions of times).
    ids: HashMap<String, HashMap<String, u32>>,
    names: Vec<(String, String)>,
}

impl Places {
    /// The index of a place, added on first sight.
    fn id(&mut self, uf: &str, city: &str) -> u32 {
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

/// A row of the daily file from a completed line of the partner's products sold on D.
fn day_row(
    l: &LineRef<'_>,
    product: u32,
    place: u32,
    keys: &Pseudonymizer,
    month: &str,
) -> Result<DailyRow, DailyError> {
    let net = l.net_amount();
    let net_amount = i64::try_from(net).map_err(|_| DailyError::Overflow {
        transaction_id: l.transaction_id.to_string(),
        value: net.to_string(),
    })?;
    Ok(DailyRow {
        sold_at_hour: l.sold_at - l.sold_at.rem_euclid(3_600_000_000),
        line_key: keys.line_bits(l.transaction_id),
        customer_key: keys.customer_bits(month, l.customer_id),
        quantity: l.quantity,
        unit_price: l.unit_price,
        discount: l.discount,
        net_amount,
        product,
        place,
        outras: false,
    })
}

/// One version of an order line of the partner's products in the window (32 bytes, kept in a
/// sorted vector: no hash table overhead).
#[derive(Clone, Copy)]
struct Version {
    /// 64-bit hash of the transaction id.
    key: u64,
    /// `updated_at` (a missing one is the oldest).
    updated_at: i64,
    /// 64-bit hash of the customer.
    customer: u64,
    /// The line's place.
    place: u32,
    /// The batch's day number (ties on `updated_at` go to the later batch), as i24 + flag:
    /// see [`Version::batch`] and [`Version::counts`].
    batch_counts: i32,
}

impl Version {
    fn new(key: u64, updated_at: i64, batch: i32, customer: u64, place: u32, counts: bool) -> Self {
        Version {
            key,
            updated_at,
            customer,
            place,
            // Day numbers of years 1..9999 fit 23 bits with their sign; the low bit is the flag.
            batch_counts: batch * 2 + i32::from(counts),
        }
    }

    /// The batch's day number.
    fn batch(&self) -> i32 {
        self.batch_counts.div_euclid(2)
    }

    /// A completed sale in the window (counts toward its place's customers).
    fn counts(&self) -> bool {
        self.batch_counts.rem_euclid(2) == 1
    }

    /// Which version is later: (updated_at, batch).
    fn at(&self) -> (i64, i32) {
        (self.updated_at, self.batch())
    }
}

/// A 64-bit hash of an id, the same in every process (SipHash with fixed keys). Two ids
/// sharing one would be counted as one: fewer customers, so more cities hidden, never fewer.
fn id_hash(tag: u8, id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(0x6461_7461_7368_6172, u64::from(tag));
    id.hash(&mut h);
    h.finish()
}

/// Batch D's rows of the file, collected while the window is read (batch D is read once).
struct DayRows<'k> {
    d: NaiveDate,
    month: String,
    keys: &'k Pseudonymizer,
    /// The partner's products in batch D's own snapshot, by code.
    product_ids: HashMap<String, u32>,
    rows: Vec<DailyRow>,
}

impl DayRows<'_> {
    /// Keeps a line of batch D when it is a completed sale of the partner's products on D.
    fn take(&mut self, l: &LineRef<'_>, places: &mut Places) -> Result<(), DailyError> {
        if l.status != Status::Completed || l.local_date() != Some(self.d) {
            return Ok(());
        }
        let Some(product) = self.product_ids.get(l.product_code) else {
            return Ok(());
        };
        let place = places.id(l.uf, l.city);
        let row = day_row(l, *product, place, self.keys, &self.month)?;
        self.rows.push(row);
        Ok(())
    }
}

/// Distinct customers per place over the trailing window (`first..=d`): lines whose latest
/// version over the `present` batches is a completed sale of the partner's products in the
/// window. Reads the window's lines as a stream and holds one small record per partner line;
/// batch D's lines also go to `day`.
fn window_customers(
    curated: &Curated,
    contract: &Contract,
    first: NaiveDate,
    present: &[NaiveDate],
    (places, day): (&mut Places, &mut DayRows<'_>),
) -> Result<HashMap<u32, usize>, DailyError> {
    let d = day.d;
    let products = catalog(curated, present)?;
    let partner: HashSet<&str> = products
        .values()
        .filter(|p| is_partner_product(contract, p))
        .map(|p| p.product_code.as_str())
        .collect();
    let mut versions: Vec<Version> = Vec::new();
    for x in present {
        curated.each_line(*x, |l| -> Result<(), DailyError> {
            if l.batch == d {
                day.take(&l, places)?;
            }
            if !partner.contains(l.product_code) {
                return Ok(());
            }
            let counts = l.status == Status::Completed
                && l.local_date().is_some_and(|x| x >= first && x <= d);
            versions.push(Version::new(
                id_hash(b'l', l.transaction_id),
                l.updated_at.unwrap_or(i64::MIN),
                l.batch.to_epoch_days(),
                id_hash(b'c', l.customer_id),
                places.id(l.uf, l.city),
                counts,
            ));
            Ok(())
        })?;
    }
    // The latest version of each line: the last of its key once sorted by (key, updated_at,
    // batch). A batch holds a line once, so no two versions of a key tie.
    versions.sort_unstable_by_key(|v| (v.key, v.updated_at, v.batch()));
    versions.reverse();
    versions.dedup_by_key(|v| v.key);
    versions.reverse();
    // A later version naming another manufacturer's product ends a line's partner sale.
    if !versions.is_empty() {
        // Eight bits a line: most other manufacturers' lines are ruled out without a search.
        let bits = (versions.len() * 8).next_power_of_two();
        let mut seen = vec![0u64; bits / 64];
        for v in &versions {
            let b = v.key as usize & (bits - 1);
            seen[b / 64] |= 1 << (b % 64);
        }
        for x in present {
            curated.each_version(*x, |tid, code, updated_at| {
                if partner.contains(code) {
                    return;
                }
                let key = id_hash(b'l', tid);
                let b = key as usize & (bits - 1);
                if seen[b / 64] & (1 << (b % 64)) == 0 {
                    return;
                }
                let Ok(i) = versions.binary_search_by_key(&key, |v| v.key) else {
                    return;
                };
                let at = (updated_at.unwrap_or(i64::MIN), x.to_epoch_days());
                if at >= versions[i].at() {
                    let v = &versions[i];
                    versions[i] = Version::new(key, at.0, at.1, v.customer, v.place, false);
                }
            })?;
        }
    }
    // Distinct customers per place: the counting versions sorted by (place, customer).
    versions.retain(|v| v.counts());
    versions.sort_unstable_by_key(|v| (v.place, v.customer));
    versions.dedup_by_key(|v| (v.place, v.customer));
    let mut out: HashMap<u32, usize> = HashMap::new();
    for v in versions {
        *out.entry(v.place).or_default() += 1;
    }
    Ok(out)
}

/// Builds the daily product of day D, reading the curated lines as streams: memory holds one
/// record per partner line of the window while counting customers, then the day's rows.
pub fn build(
    curated: &Curated,
    contract: &Contract,
    keys: &Pseudonymizer,
    d: NaiveDate,
) -> Result<DailyTable, DailyError> {
    if !curated.has_batch(d) {
        return Err(DailyError::MissingBatch(d));
    }
    let first = d - Days::new(WINDOW_DAYS - 1);
    let window: Vec<NaiveDate> = first.iter_days().take_while(|x| *x <= d).collect();
    let (present, missing): (Vec<NaiveDate>, Vec<NaiveDate>) =
        window.into_iter().partition(|x| curated.has_batch(*x));
    if !missing.is_empty() {
        tracing::warn!(
            partner = %contract.name,
            date = %d,
            missing = missing.len(),
            "batches missing in the trailing window: small cities counted over fewer days"
        );
    }
    // Batch D's own product snapshot decides which of its lines are the partner's.
    let product_list: Vec<Product> = curated
        .products(d)?
        .into_values()
        .filter(|p| is_partner_product(contract, p))
        .collect();
    let mut day = DayRows {
        d,
        month: month_of(d),
        keys,
        product_ids: product_list
            .iter()
            .enumerate()
            .map(|(i, p)| (p.product_code.clone(), i as u32))
            .collect(),
        rows: Vec::new(),
    };
    let mut places = Places::default();
    let customers = window_customers(curated, contract, first, &present, (&mut places, &mut day))?;
    let k = contract.k as usize;
    let small = |place: u32| customers.get(&place).is_none_or(|n| *n < k);
    let mut rows = day.rows;
    let mut suppressed = HashSet::new();
    for r in &mut rows {
        r.outras = small(r.place);
        if r.outras {
            suppressed.insert(r.place);
        }
    }
    rows.sort_unstable_by_key(|r| (r.sold_at_hour, r.line_key));
    Ok(DailyTable {
        date: d,
        rows,
        products: product_list,
        places: places.names,
        source_batches: present,
        missing_batches: missing,
        cities_suppressed: suppressed.len(),
    })
}
