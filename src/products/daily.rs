//! The daily analytic `<partner>_daily_<D>`: every completed line of the partner's products sold on D.
//!
//! Read from batch D only (a line is sent as known in batch D, not re-sent when a later batch
//! corrects it). Small cities are written as `OUTRAS`: a (uf, city) where fewer than `k` distinct
//! customers bought the partner's products over the trailing 30 days (D−29..D: the latest
//! version of each line over the batches of that window that exist, completed, sold in the
//! window). A missing batch only lowers the counts, so it can hide more cities, never fewer.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{Datelike, Days, NaiveDate};

use super::contract::Contract;
use super::curated::{Curated, CuratedError, Line, Product, Status, catalog, latest_versions};
use super::pseudonym::Pseudonymizer;
use super::schema::Cell;

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

/// One row of the daily file.
#[derive(Debug, Clone, PartialEq)]
pub struct DailyRow {
    /// Sale instant truncated to the hour, microseconds UTC.
    pub sold_at_hour: i64,
    /// Pseudonymous line.
    pub line_key: String,
    /// Pseudonymous customer.
    pub customer_key: String,
    /// The product.
    pub product: Product,
    /// Units.
    pub quantity: i64,
    /// List price, cents.
    pub unit_price: i64,
    /// Discount, cents.
    pub discount: i64,
    /// Net amount, cents.
    pub net_amount: i64,
    /// City, or `OUTRAS`.
    pub city: String,
    /// State.
    pub uf: String,
}

/// The daily product of one day.
#[derive(Debug, Clone)]
pub struct DailyTable {
    /// The day.
    pub date: NaiveDate,
    /// Rows, sorted by (sold_at, line_key).
    pub rows: Vec<DailyRow>,
    /// Batches read (D and the window's).
    pub source_batches: Vec<NaiveDate>,
    /// Batches of the window that do not exist.
    pub missing_batches: Vec<NaiveDate>,
    /// Cities written as `OUTRAS` (count only).
    pub cities_suppressed: usize,
}

impl DailyTable {
    /// The rows as cells in the daily schema's order.
    pub fn cells(&self) -> Vec<Vec<Cell>> {
        let date = days_since_epoch(self.date);
        self.rows
            .iter()
            .map(|r| {
                vec![
                    Cell::Date(date),
                    Cell::Micros(r.sold_at_hour),
                    Cell::Str(r.line_key.clone()),
                    Cell::Str(r.customer_key.clone()),
                    Cell::Str(r.product.product_code.clone()),
                    Cell::Str(r.product.name.clone()),
                    Cell::Str(r.product.brand.clone()),
                    Cell::Str(r.product.segment.clone()),
                    r.product.unit_size.clone().map_or(Cell::Null, Cell::Str),
                    Cell::I64(r.quantity),
                    Cell::Cents(r.unit_price),
                    Cell::Cents(r.discount),
                    Cell::Cents(r.net_amount),
                    Cell::Str(r.city.clone()),
                    Cell::Str(r.uf.clone()),
                ]
            })
            .collect()
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

/// Builds the daily product of day D.
pub fn build(
    curated: &Curated,
    contract: &Contract,
    keys: &Pseudonymizer,
    d: NaiveDate,
) -> Result<DailyTable, DailyError> {
    let lines = day_lines(curated, contract, d)?;
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
    let products = catalog(curated, &present)?;
    let mut all = Vec::new();
    for x in &present {
        all.extend(curated.transactions(*x)?);
    }
    let mut customers: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for l in latest_versions(all).into_values() {
        let in_window = l.local_date().is_some_and(|x| x >= first && x <= d);
        let partner = products
            .get(&l.product_code)
            .is_some_and(|p| is_partner_product(contract, p));
        if l.status == Status::Completed && in_window && partner {
            customers
                .entry((l.uf.clone(), l.city.clone()))
                .or_default()
                .insert(l.customer_id);
        }
    }
    let k = contract.k as usize;
    let small = |uf: &str, city: &str| {
        customers
            .get(&(uf.to_string(), city.to_string()))
            .is_none_or(|c| c.len() < k)
    };
    let month = month_of(d);
    let mut suppressed = BTreeSet::new();
    let mut rows: Vec<DailyRow> = lines
        .into_iter()
        .map(|(l, p)| -> Result<DailyRow, DailyError> {
            let net = l.net_amount();
            let net_amount = i64::try_from(net).map_err(|_| DailyError::Overflow {
                transaction_id: l.transaction_id.clone(),
                value: net.to_string(),
            })?;
            let city = if small(&l.uf, &l.city) {
                suppressed.insert((l.uf.clone(), l.city.clone()));
                OTHER_CITIES.to_string()
            } else {
                l.city.clone()
            };
            Ok(DailyRow {
                sold_at_hour: l.sold_at - l.sold_at.rem_euclid(3_600_000_000),
                line_key: keys.line_key(&l.transaction_id),
                customer_key: keys.customer_key(&month, &l.customer_id),
                product: p,
                quantity: l.quantity,
                unit_price: l.unit_price,
                discount: l.discount,
                net_amount,
                city,
                uf: l.uf,
            })
        })
        .collect::<Result<_, _>>()?;
    rows.sort_by(|a, b| (a.sold_at_hour, &a.line_key).cmp(&(b.sold_at_hour, &b.line_key)));
    Ok(DailyTable {
        date: d,
        rows,
        source_batches: present,
        missing_batches: missing,
        cities_suppressed: suppressed.len(),
    })
}
