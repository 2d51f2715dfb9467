//! The monthly aggregate `<partner>_monthly_<M>`: one row per (uf, city, product) of month M.
//!
//! Input: the batches of M's days and of the `late_days` after M; the latest version of each
//! line (greatest `updated_at`, ties to the later batch); lines sold in local month M whose latest
//! status is completed. Segment figures are computed over every brand of the segment in the
//! (uf, city) cell and nulled when fewer than 3 brands other than the row's sold there. Rows
//! with fewer than `k` customers merge per (uf, product) into `OUTRAS`, recomputed over the
//! merged lines, and that row is dropped when it is still below `k`. The month-over-month change
//! compares with M−1 computed the same way, before suppression, on the same (uf, city, product);
//! `OUTRAS` rows get null.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{Datelike, Days, Months, NaiveDate};

use super::FastSet;
use super::brands::{self, BrandUnitsKey};
use super::contract::Contract;
use super::curated::{Curated, CuratedError, Product};
use super::daily::{OTHER_CITIES, month_of};
use super::month_lines::{self, MonthLine, MonthLines, MonthReads};
use super::schema::Cell;

/// Brands other than the row's that must have sold in a cell for segment figures to show.
pub const MIN_OTHER_BRANDS: usize = 3;

/// The monthly product could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum MonthlyError {
    /// Curated data could not be read.
    #[error(transparent)]
    Curated(#[from] CuratedError),
    /// `--month` is not `YYYY-MM`.
    #[error("month {0:?} is not YYYY-MM")]
    BadMonth(String),
    /// A sum does not fit its column (permanent: the data must be corrected).
    #[error("monthly {column} of {cell} is {value}: it does not fit 64 bits")]
    Overflow {
        /// The column.
        column: &'static str,
        /// The cell: `<uf>/<city>/<product_code>` (city `OUTRAS` for merged cities).
        cell: String,
        /// The exact value, in decimal.
        value: String,
    },
    /// The month's scratch files could not be written or read (transient: disk space).
    #[error("month scratch file {path}: {source}")]
    Scratch {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Batches of the month's window are missing.
    #[error("month {month}: {} batch(es) missing, first {first}; pass --allow-missing-batches to build anyway", missing.len())]
    MissingBatches {
        /// The month.
        month: String,
        /// The first missing day.
        first: NaiveDate,
        /// Every missing day.
        missing: Vec<NaiveDate>,
    },
}

/// Parses `YYYY-MM` into the month's first day.
pub fn parse_month(s: &str) -> Result<NaiveDate, MonthlyError> {
    if s.len() != 7 {
        return Err(MonthlyError::BadMonth(s.to_string()));
    }
    NaiveDate::parse_from_str(&format!("{s}-01"), "%Y-%m-%d")
        .map_err(|_| MonthlyError::BadMonth(s.to_string()))
}

/// The batch days whose data may hold month M's lines: M's days and `late_days` more.
pub fn window(first_day: NaiveDate, late_days: u32) -> Vec<NaiveDate> {
    let next = first_day + Months::new(1);
    let end = next + Days::new(u64::from(late_days));
    first_day.iter_days().take_while(|d| *d < end).collect()
}

/// Figures of a set of lines; distinct orders are counted apart, once the rows are known
/// ([`MonthLines::count_orders`]).
#[derive(Debug, Clone, Default)]
struct Agg {
    lines: u64,
    units: i128,
    net: i128,
    list: i128,
    min: i64,
    max: i64,
    orders: u64,
    customers: FastSet<u64>,
}

impl Agg {
    fn add(&mut self, l: &MonthLine) {
        if self.lines == 0 {
            self.min = l.unit_price;
            self.max = l.unit_price;
        }
        self.lines += 1;
        self.units = self.units.saturating_add(i128::from(l.quantity));
        self.net = self.net.saturating_add(l.net_amount());
        self.list = self.list.saturating_add(l.list_value());
        self.min = self.min.min(l.unit_price);
        self.max = self.max.max(l.unit_price);
        self.customers.insert(l.customer);
    }

    fn merge(&mut self, o: &Agg) {
        if self.lines == 0 {
            self.min = o.min;
            self.max = o.max;
        }
        self.lines += o.lines;
        self.units = self.units.saturating_add(o.units);
        self.net = self.net.saturating_add(o.net);
        self.list = self.list.saturating_add(o.list);
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.customers.extend(&o.customers);
    }
}

/// Figures of a segment in a cell: every brand.
#[derive(Debug, Clone, Default)]
struct SegmentCell {
    units: i128,
    net: i128,
    list: i128,
    brands: BTreeSet<String>,
}

impl SegmentCell {
    fn merge(&mut self, o: &SegmentCell) {
        self.units = self.units.saturating_add(o.units);
        self.net = self.net.saturating_add(o.net);
        self.list = self.list.saturating_add(o.list);
        self.brands.extend(o.brands.iter().cloned());
    }
}

/// Divides and rounds half away from zero.
pub fn round_div(num: i128, den: i128) -> i128 {
    if den == 0 {
        return 0;
    }
    // Quotient and remainder: no doubling of the numerator, so no overflow near i128's range.
    let (Some(q), Some(r)) = (num.checked_div(den), num.checked_rem(den)) else {
        return i128::MAX;
    };
    if r.unsigned_abs() * 2 >= den.unsigned_abs() {
        q.saturating_add(num.signum() * den.signum())
    } else {
        q
    }
}

/// One row of the monthly file.
#[derive(Debug, Clone, PartialEq)]
pub struct MonthlyRow {
    /// State.
    pub uf: String,
    /// City or `OUTRAS`.
    pub city: String,
    /// Cities merged (0 for a city row).
    pub cities_merged: i32,
    /// The product.
    pub product: Product,
    /// Σ quantity.
    pub units_sold: i64,
    /// Σ net amount, cents.
    pub net_revenue: i64,
    /// Σ(quantity × unit_price) / units, cents.
    pub avg_unit_price: i64,
    /// Minimum unit price, cents.
    pub min_unit_price: i64,
    /// Maximum unit price, cents.
    pub max_unit_price: i64,
    /// Distinct orders.
    pub orders: i64,
    /// Distinct customers.
    pub customers_reached: i64,
    /// Units of all brands of the segment in the cell.
    pub segment_units: Option<i64>,
    /// units_sold / segment_units.
    pub segment_share_units: Option<f64>,
    /// net_revenue / segment net revenue.
    pub segment_share_revenue: Option<f64>,
    /// avg_unit_price / segment average price.
    pub price_index: Option<f64>,
    /// units(M) / units(M−1) − 1.
    pub units_mom_change: Option<f64>,
}

/// The monthly product of one month.
#[derive(Debug, Clone)]
pub struct MonthlyTable {
    /// `YYYY-MM`.
    pub month: String,
    /// Rows sorted by (uf, city rows before `OUTRAS`, city, product_code).
    pub rows: Vec<MonthlyRow>,
    /// Net revenue of merged rows dropped for staying below k, cents.
    pub dropped_net_revenue: i64,
    /// Merged rows dropped.
    pub dropped_rows: usize,
    /// Units and net revenue (cents) of the dropped merged rows, by (brand, segment).
    pub dropped_by_brand: BTreeMap<(String, String), (i128, i128)>,
    /// Batches read for M.
    pub source_batches: Vec<NaiveDate>,
    /// Batches of M's window that do not exist.
    pub missing_batches: Vec<NaiveDate>,
    /// Batches read for M−1 (for the month-over-month change).
    pub comparison_batches: Vec<NaiveDate>,
    /// Month M's lines (kept for reconciliation and the brand view).
    pub lines: MonthLines,
    /// What the builds need of M−1 (the brand view's month-over-month change, the highlights).
    pub previous: Arc<PreviousMonth>,
}

impl MonthlyTable {
    /// Frees the lines of M (the rows stay).
    pub fn drop_lines(&mut self) {
        self.lines = MonthLines::default();
    }

    /// The rows as cells in the monthly schema's order.
    pub fn cells(&self) -> Vec<Vec<Cell>> {
        let f = |v: Option<f64>| v.map_or(Cell::Null, Cell::F64);
        self.rows
            .iter()
            .map(|r| {
                vec![
                    Cell::Str(self.month.clone()),
                    Cell::Str(r.uf.clone()),
                    Cell::Str(r.city.clone()),
                    Cell::I32(r.cities_merged),
                    Cell::Str(r.product.product_code.clone()),
                    Cell::Str(r.product.name.clone()),
                    Cell::Str(r.product.brand.clone()),
                    Cell::Str(r.product.segment.clone()),
                    Cell::I64(r.units_sold),
                    Cell::Cents(r.net_revenue),
                    Cell::Cents(r.avg_unit_price),
                    Cell::Cents(r.min_unit_price),
                    Cell::Cents(r.max_unit_price),
                    Cell::I64(r.orders),
                    Cell::I64(r.customers_reached),
                    r.segment_units.map_or(Cell::Null, Cell::I64),
                    f(r.segment_share_units),
                    f(r.segment_share_revenue),
                    f(r.price_index),
                    f(r.units_mom_change),
                ]
            })
            .collect()
    }
}

/// A cell of the partner's products: (place, product), numbered as in the month's lines.
type CellKey = (u32, u32);

/// Per cell figures of the partner's products and per (place, segment) figures of every brand.
type Aggregates<'a> = (
    BTreeMap<CellKey, Agg>,
    BTreeMap<(u32, &'a str), SegmentCell>,
);

/// Per (place, product) figures of the partner's products, and per (place, segment) figures of
/// every brand.
fn aggregate<'a>(
    contract: &Contract,
    lines: &'a MonthLines,
) -> Result<Aggregates<'a>, MonthlyError> {
    let segments = contract.segments();
    let partner = lines.partner_products(contract);
    let mut cells: BTreeMap<CellKey, Agg> = BTreeMap::new();
    let mut seg: BTreeMap<(u32, &str), SegmentCell> = BTreeMap::new();
    lines.each_line(|l| {
        let p = lines.product(l);
        if !segments.contains(p.segment.as_str()) {
            return;
        }
        let s = seg.entry((l.place, &p.segment)).or_default();
        s.units = s.units.saturating_add(i128::from(l.quantity));
        s.net = s.net.saturating_add(l.net_amount());
        s.list = s.list.saturating_add(l.list_value());
        if !s.brands.contains(&p.brand) {
            s.brands.insert(p.brand.clone());
        }
        if partner[l.product as usize] {
            cells.entry((l.place, l.product)).or_default().add(l);
        }
    })?;
    Ok((cells, seg))
}

/// Units per (uf, city, product_code) of the partner's products: M−1's side of the
/// month-over-month change (months number places and products apart, so by name).
fn partner_units(
    contract: &Contract,
    lines: &MonthLines,
) -> Result<HashMap<(String, String, String), i128>, MonthlyError> {
    let partner = lines.partner_products(contract);
    let mut units: HashMap<CellKey, i128> = HashMap::new();
    lines.each_line(|l| {
        if partner[l.product as usize] {
            let u = units.entry((l.place, l.product)).or_default();
            *u = u.saturating_add(i128::from(l.quantity));
        }
    })?;
    Ok(units
        .into_iter()
        .map(|((place, product), u)| {
            let (uf, city) = lines.places[place as usize].clone();
            (
                (
                    uf,
                    city,
                    lines.products[product as usize].product_code.clone(),
                ),
                u,
            )
        })
        .collect())
}

fn row(
    uf: &str,
    city: &str,
    merged: i32,
    a: &Agg,
    p: &Product,
    s: Option<&SegmentCell>,
) -> Result<MonthlyRow, MonthlyError> {
    let fit = |column: &'static str, value: i128| {
        i64::try_from(value).map_err(|_| MonthlyError::Overflow {
            column,
            cell: format!("{uf}/{city}/{}", p.product_code),
            value: value.to_string(),
        })
    };
    let avg = fit("avg_unit_price", round_div(a.list, a.units))?;
    let visible =
        s.filter(|s| s.brands.iter().filter(|b| **b != p.brand).count() >= MIN_OTHER_BRANDS);
    let seg_avg = visible.map(|s| round_div(s.list, s.units));
    Ok(MonthlyRow {
        uf: uf.to_string(),
        city: city.to_string(),
        cities_merged: merged,
        product: p.clone(),
        units_sold: fit("units_sold", a.units)?,
        net_revenue: fit("net_revenue", a.net)?,
        avg_unit_price: avg,
        min_unit_price: a.min,
        max_unit_price: a.max,
        orders: i64::try_from(a.orders).unwrap_or(i64::MAX),
        customers_reached: a.customers.len() as i64,
        segment_units: visible.map(|s| fit("segment_units", s.units)).transpose()?,
        segment_share_units: visible
            .filter(|s| s.units != 0)
            .map(|s| a.units as f64 / s.units as f64),
        segment_share_revenue: visible
            .filter(|s| s.net != 0)
            .map(|s| a.net as f64 / s.net as f64),
        price_index: seg_avg.filter(|x| *x != 0).map(|x| avg as f64 / x as f64),
        units_mom_change: None,
    })
}

/// What a month's builds need of M−1, summed from its lines once: its lines' scratch files are
/// deleted before M's are written, so the two months are never on disk together.
#[derive(Debug, Default)]
pub struct PreviousMonth {
    /// Batches read for M−1 (none: no month-over-month change).
    pub source_batches: Vec<NaiveDate>,
    /// Units of the partner's products per (uf, city, product_code).
    pub partner_units: HashMap<(String, String, String), i128>,
    /// Units of the partner's brands per brand view row.
    pub brand_units: HashMap<BrandUnitsKey, i128>,
    /// Each brand's share of its segment in M−1's monthly product (the highlights compare with
    /// it; empty without batches).
    pub brand_shares: BTreeMap<String, (String, f64)>,
}

impl PreviousMonth {
    /// M−1's figures from its lines (M−1 starting on `first_day`); the lines are dropped.
    pub fn from_lines(
        contract: &Contract,
        first_day: NaiveDate,
        lines: MonthLines,
    ) -> Result<Self, MonthlyError> {
        let partner_units = partner_units(contract, &lines)?;
        let brand_units = brands::units(contract, &lines)?;
        let source_batches = lines.source_batches.clone();
        // Only the shares are kept of M−1's product: its rows would stay among the freed cells.
        let brand_shares = if source_batches.is_empty() {
            BTreeMap::new()
        } else {
            super::highlights::brand_shares(&table(contract, first_day, lines, Arc::default())?)
        };
        Ok(PreviousMonth {
            source_batches,
            partner_units,
            brand_units,
            brand_shares,
        })
    }
}

/// Builds the monthly product of the month starting on `first_day`.
pub fn build(
    curated: &Curated,
    contract: &Contract,
    first_day: NaiveDate,
    allow_missing_batches: bool,
    reads: &MonthReads,
) -> Result<MonthlyTable, MonthlyError> {
    let month = month_of(first_day);
    let refuse = |missing: &[NaiveDate]| match missing.first() {
        Some(first) if !allow_missing_batches => Err(MonthlyError::MissingBatches {
            month: month.clone(),
            first: *first,
            missing: missing.to_vec(),
        }),
        _ => Ok(()),
    };
    // A month still waiting for batches is refused before anything is read.
    refuse(&month_lines::missing_batches(curated, contract, first_day))?;
    // M−1 first: its figures are summed and its lines' scratch files deleted before M's exist.
    let prev = reads.previous(curated, contract, first_day - Months::new(1))?;
    let lines = reads.get(curated, contract, first_day)?;
    refuse(&lines.missing_batches)?;
    table(contract, first_day, lines, prev)
}

/// The monthly product of the month starting on `first_day` from its lines and M−1's figures
/// (empty: no month-over-month change).
pub fn table(
    contract: &Contract,
    first_day: NaiveDate,
    lines: MonthLines,
    prev: Arc<PreviousMonth>,
) -> Result<MonthlyTable, MonthlyError> {
    let month = month_of(first_day);
    let prev_units = &prev.partner_units;
    let (mut cells, seg) = aggregate(contract, &lines)?;
    let k = i64::from(contract.k);
    // Each cell's orders count in its own row, or in its state's OUTRAS row of the product.
    let mut slots: HashMap<CellKey, usize> = HashMap::with_capacity(cells.len());
    let mut outras: HashMap<(&str, u32), usize> = HashMap::new();
    for ((place, product), a) in &cells {
        let next = slots.len() + outras.len();
        let slot = if (a.customers.len() as i64) < k {
            let uf = lines.places[*place as usize].0.as_str();
            *outras.entry((uf, *product)).or_insert(next)
        } else {
            next
        };
        slots.insert((*place, *product), slot);
    }
    let orders = lines.count_orders(slots.len() + outras.len(), |l, out| {
        out.extend(slots.get(&(l.place, l.product)));
    })?;

    let mut rows = Vec::new();
    // (uf, product_code) -> (merged figures, merged segment cell, cities, product)
    let mut small: BTreeMap<(&str, &str), (Agg, SegmentCell, i32, &Product)> = BTreeMap::new();
    for ((place, product), a) in cells.iter_mut() {
        let (uf, city) = &lines.places[*place as usize];
        let p = &lines.products[*product as usize];
        let s = seg.get(&(*place, p.segment.as_str()));
        // The cell's row's, or its OUTRAS row's (the same for each cell merged into it).
        a.orders = orders[slots[&(*place, *product)]];
        if (a.customers.len() as i64) < k {
            let m = small
                .entry((uf, &p.product_code))
                .or_insert_with(|| (Agg::default(), SegmentCell::default(), 0, p));
            m.0.merge(a);
            m.0.orders = a.orders;
            if let Some(s) = s {
                m.1.merge(s);
            }
            m.2 += 1;
            continue;
        }
        let mut r = row(uf, city, 0, a, p, s)?;
        r.units_mom_change = prev_units
            .get(&(uf.clone(), city.clone(), p.product_code.clone()))
            .filter(|units| **units != 0)
            .map(|units| a.units as f64 / *units as f64 - 1.0);
        rows.push(r);
    }
    let mut dropped_net_revenue: i128 = 0;
    let mut dropped_rows = 0;
    let mut dropped_by_brand: BTreeMap<(String, String), (i128, i128)> = BTreeMap::new();
    for ((uf, _), (a, s, n, p)) in &small {
        if (a.customers.len() as i64) < k {
            dropped_net_revenue = dropped_net_revenue.saturating_add(a.net);
            dropped_rows += 1;
            let d = dropped_by_brand
                .entry((p.brand.clone(), p.segment.clone()))
                .or_default();
            d.0 = d.0.saturating_add(a.units);
            d.1 = d.1.saturating_add(a.net);
            continue;
        }
        rows.push(row(uf, OTHER_CITIES, *n, a, p, Some(s))?);
    }
    // The maps borrow the lines, which the table keeps.
    drop((cells, seg, small, slots, outras));
    let dropped_net_revenue =
        i64::try_from(dropped_net_revenue).map_err(|_| MonthlyError::Overflow {
            column: "dropped_net_revenue",
            cell: format!("the month's dropped cells ({dropped_rows})"),
            value: dropped_net_revenue.to_string(),
        })?;
    rows.sort_by(|a, b| {
        (&a.uf, a.cities_merged > 0, &a.city, &a.product.product_code).cmp(&(
            &b.uf,
            b.cities_merged > 0,
            &b.city,
            &b.product.product_code,
        ))
    });
    Ok(MonthlyTable {
        month,
        rows,
        dropped_net_revenue,
        dropped_rows,
        dropped_by_brand,
        source_batches: lines.source_batches.clone(),
        missing_batches: lines.missing_batches.clone(),
        comparison_batches: prev.source_batches.clone(),
        lines,
        previous: prev,
    })
}

/// Returns the month of a date's first day (for callers holding a day).
pub fn first_day_of(d: NaiveDate) -> NaiveDate {
    d.with_day(1).unwrap_or(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_past_64_bits_are_exact_or_an_error_naming_the_cell() {
        let line = MonthLine {
            order: 1,
            customer: 1,
            quantity: i64::MAX,
            unit_price: i64::MAX,
            discount: i64::MIN,
            product: 0,
            place: 0,
        };
        let exact = i128::from(i64::MAX) * i128::from(i64::MAX) - i128::from(i64::MIN);
        assert_eq!(line.net_amount(), exact);
        let p = Product {
            product_code: "OHB-000101".into(),
            name: "Cola".into(),
            brand: "Hungry".into(),
            manufacturer: "OuchHungry".into(),
            segment: "Refrigerantes".into(),
            unit_size: None,
        };
        let mut a = Agg::default();
        // Three such lines pass i128's range: the sums saturate, and the cell is named.
        for _ in 0..3 {
            a.add(&line);
        }
        let err = row("PE", "Recife", 0, &a, &p, None).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("PE/Recife/OHB-000101") && text.contains("units_sold"),
            "{text}"
        );
        let small = MonthLine {
            quantity: 3,
            unit_price: 1_000,
            discount: 0,
            ..line
        };
        let mut a = Agg::default();
        a.add(&small);
        assert_eq!(
            row("PE", "Recife", 0, &a, &p, None).unwrap().net_revenue,
            3_000
        );
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        assert_eq!(round_div(5, 2), 3);
        assert_eq!(round_div(-5, 2), -3);
        assert_eq!(round_div(4, 3), 1);
        assert_eq!(round_div(1999, 3), 666);
        assert_eq!(round_div(7, 0), 0);
    }

    #[test]
    fn windows_span_the_month_and_late_days() {
        let w = window(parse_month("2026-11").unwrap(), 2);
        assert_eq!(w.len(), 32);
        assert_eq!(w.last().unwrap().to_string(), "2026-12-02");
        assert!(parse_month("2026-13").is_err() && parse_month("2026-1").is_err());
    }
}
