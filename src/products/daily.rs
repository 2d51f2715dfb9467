//! The daily analytic `<partner>_daily_<D>`: every completed line of the partner's products sold on D.
//!
//! Read from batch D only (a line is sent as known in batch D, not re-sent when a later batch
//! corrects it). Small cities are written as `OUTRAS`: a (uf, city) where fewer than `k` distinct
//! customers bought the partner's products over the trailing 30 days (D−29..D: the latest
//! version of each line over the batches of that window that exist, completed, sold in the
//! window, naming a product of the partner in its batch's own snapshot; a later correction
//! naming another product ends the sale). A missing batch only lowers the counts, so it can hide
//! more cities, never fewer. The window is counted from one small file per batch
//! (`super::window`).

use std::collections::HashSet;

use arrow_array::RecordBatch;
use chrono::{Datelike, Days, NaiveDate};

use super::FastMap;
use super::contract::Contract;
use super::curated::{Curated, CuratedError, LineRef, Product, Status};
use super::pseudonym::Pseudonymizer;
use super::schema::{CellRef, ProductSchema, SchemaError};
use super::window::{Places, WindowError, WindowSource, customers_per_place, object_name};

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
    /// The window's files could not be read.
    #[error(transparent)]
    Window(#[from] WindowError),
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

/// Batch D's rows of the file, collected while the window is read (batch D is read once).
struct DayRows<'k> {
    d: NaiveDate,
    month: String,
    keys: &'k Pseudonymizer,
    /// The partner's products in batch D's own snapshot, by code.
    product_ids: FastMap<String, u32>,
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

/// Builds the daily product of day D: batch D's lines are read as a stream, and the window's
/// small cities come from its batches' window files merged as streams (`window`): memory holds
/// the day's rows and the places, not the window's lines.
pub fn build(
    curated: &Curated,
    contract: &Contract,
    keys: &Pseudonymizer,
    d: NaiveDate,
    window: &dyn WindowSource,
) -> Result<DailyTable, DailyError> {
    if !curated.has_batch(d) {
        return Err(DailyError::MissingBatch(d));
    }
    let first = d - Days::new(WINDOW_DAYS - 1);
    let days: Vec<NaiveDate> = first.iter_days().take_while(|x| *x <= d).collect();
    let (present, missing): (Vec<NaiveDate>, Vec<NaiveDate>) = days
        .into_iter()
        .partition(|x| *x == d || window.has_batch(*x));
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
    curated.each_line(d, |l| day.take(&l, &mut places))?;
    let readers = window.open_all(contract, &present)?;
    let files = (present.iter().zip(readers))
        .map(|(x, r)| (object_name(contract, *x), *x, r))
        .collect();
    let k = contract.k as usize;
    let customers = customers_per_place(files, (first, d), k, &mut places)?;
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
