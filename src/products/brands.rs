//! The monthly brand view `<partner>_monthly_brands_<M>`: one row per (level, uf, city, brand).
//!
//! Built from the same lines as the monthly aggregate (latest version, completed, sold in local
//! month M). Three levels: `city` (uf, city), `uf` (the whole state) and `country`. Orders and
//! customers are distinct at the row's level, never summed from the level below, so a customer
//! who bought in two cities counts once in the state and in the country. Segment figures (shares,
//! price index, customers share) are over every brand of the segment in the same cell, and null
//! when fewer than [`MIN_OTHER_BRANDS`] other brands sold there. City cells with fewer than `k`
//! customers merge per (uf, brand) into `OUTRAS` (segment figures over the merged cities), dropped
//! when still below `k`; `uf` rows are computed from every sale and dropped below `k`; the
//! `country` row is computed from every sale and always kept (its totals reconcile with the
//! monthly aggregate's). The month-over-month change compares with M−1 computed the same way,
//! before suppression, on the same (level, uf, city, brand); `OUTRAS` rows get null.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::FastSet;
use super::contract::Contract;
use super::daily::{OTHER_CITIES, is_partner_product};
use super::month_lines::{MonthLine, MonthLines};
use super::monthly::{MIN_OTHER_BRANDS, MonthlyError, MonthlyTable, round_div};
use super::schema::Cell;

/// The level of a brand-view row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// The whole country.
    Country,
    /// A whole state.
    Uf,
    /// A city (or the merged small cities of a state).
    City,
}

impl Level {
    /// The value of the `level` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Country => "country",
            Level::Uf => "uf",
            Level::City => "city",
        }
    }
}

/// One row of the brand view.
#[derive(Debug, Clone, PartialEq)]
pub struct BrandRow {
    /// The level.
    pub level: Level,
    /// State (none at country level).
    pub uf: Option<String>,
    /// City or `OUTRAS` (city level only).
    pub city: Option<String>,
    /// Cities merged (0 except in `OUTRAS` rows).
    pub cities_merged: i32,
    /// Brand.
    pub brand: String,
    /// The brand's segment.
    pub segment: String,
    /// Distinct product codes sold.
    pub skus_sold: i32,
    /// Σ quantity.
    pub units_sold: i64,
    /// Distinct orders at the row's level.
    pub orders: i64,
    /// Distinct customers at the row's level.
    pub customers_reached: i64,
    /// Σ net amount, cents.
    pub net_revenue: i64,
    /// Σ(quantity × unit_price) / units, cents.
    pub avg_unit_price: i64,
    /// units_sold / segment units.
    pub segment_share_units: Option<f64>,
    /// net_revenue / segment net revenue.
    pub segment_share_revenue: Option<f64>,
    /// avg_unit_price / segment average price.
    pub price_index: Option<f64>,
    /// customers_reached / segment customers.
    pub customers_share: Option<f64>,
    /// units(M) / units(M−1) − 1.
    pub units_mom_change: Option<f64>,
}

/// The brand view of one month.
#[derive(Debug, Clone)]
pub struct BrandTable {
    /// `YYYY-MM`.
    pub month: String,
    /// Rows sorted by (uf, the state's row first, city rows before `OUTRAS`, city, brand); the
    /// country rows first.
    pub rows: Vec<BrandRow>,
    /// Merged city rows dropped for staying below k.
    pub dropped_outras_rows: usize,
    /// State rows dropped for being below k.
    pub dropped_uf_rows: usize,
}

impl BrandTable {
    /// The rows as cells in the brand view schema's order.
    pub fn cells(&self) -> Vec<Vec<Cell>> {
        let f = |v: Option<f64>| v.map_or(Cell::Null, Cell::F64);
        let s = |v: &Option<String>| v.clone().map_or(Cell::Null, Cell::Str);
        self.rows
            .iter()
            .map(|r| {
                vec![
                    Cell::Str(self.month.clone()),
                    Cell::Str(r.level.as_str().to_string()),
                    s(&r.uf),
                    s(&r.city),
                    Cell::I32(r.cities_merged),
                    Cell::Str(r.brand.clone()),
                    Cell::Str(r.segment.clone()),
                    Cell::I32(r.skus_sold),
                    Cell::I64(r.units_sold),
                    Cell::I64(r.orders),
                    Cell::I64(r.customers_reached),
                    Cell::Cents(r.net_revenue),
                    Cell::Cents(r.avg_unit_price),
                    f(r.segment_share_units),
                    f(r.segment_share_revenue),
                    f(r.price_index),
                    f(r.customers_share),
                    f(r.units_mom_change),
                ]
            })
            .collect()
    }

    /// The country rows.
    pub fn country(&self) -> impl Iterator<Item = &BrandRow> {
        self.rows.iter().filter(|r| r.level == Level::Country)
    }
}

/// A cell: (uf, city); both none for the country, city none for a state.
type Place<'a> = (Option<&'a str>, Option<&'a str>);
/// (brand, segment).
type BrandKey<'a> = (&'a str, &'a str);

/// Units, net revenue and list value (quantity × unit price, for the average price) of lines,
/// in cents, summed in 128 bits.
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    units: i128,
    net: i128,
    list: i128,
}

impl Sums {
    fn add(&mut self, l: &MonthLine) {
        self.units = self.units.saturating_add(i128::from(l.quantity));
        self.net = self.net.saturating_add(l.net_amount());
        self.list = self.list.saturating_add(l.list_value());
    }

    fn merge(&mut self, o: &Sums) {
        self.units = self.units.saturating_add(o.units);
        self.net = self.net.saturating_add(o.net);
        self.list = self.list.saturating_add(o.list);
    }
}

/// Figures of a brand's lines in a cell (customers by their 64-bit hashes, products by their
/// number in the month's lines); distinct orders are counted apart, once the rows are known.
#[derive(Debug, Clone, Default)]
struct BrandAgg {
    sums: Sums,
    orders: u64,
    customers: FastSet<u64>,
    skus: FastSet<u32>,
}

impl BrandAgg {
    fn add(&mut self, l: &MonthLine) {
        self.sums.add(l);
        self.customers.insert(l.customer);
        self.skus.insert(l.product);
    }

    fn merge(&mut self, o: &BrandAgg) {
        self.sums.merge(&o.sums);
        self.customers.extend(&o.customers);
        self.skus.extend(&o.skus);
    }
}

/// Figures of every brand of a segment in a cell.
#[derive(Debug, Clone, Default)]
struct SegmentAgg<'a> {
    sums: Sums,
    brands: BTreeSet<&'a str>,
    customers: FastSet<u64>,
}

impl<'a> SegmentAgg<'a> {
    fn add(&mut self, l: &MonthLine, brand: &'a str) {
        self.sums.add(l);
        self.brands.insert(brand);
        self.customers.insert(l.customer);
    }

    fn merge(&mut self, o: &SegmentAgg<'a>) {
        self.sums.merge(&o.sums);
        self.brands.extend(o.brands.iter().copied());
        self.customers.extend(&o.customers);
    }
}

type BrandCells<'a> = BTreeMap<(Place<'a>, BrandKey<'a>), BrandAgg>;
type SegmentCells<'a> = BTreeMap<(Place<'a>, &'a str), SegmentAgg<'a>>;

/// The three places of a line's (uf, city): its city, its state, the country.
fn places<'a>((uf, city): (&'a str, &'a str)) -> [Place<'a>; 3] {
    [(Some(uf), Some(city)), (Some(uf), None), (None, None)]
}

/// Per (place, brand) figures of the partner's brands and per (place, segment) figures of every
/// brand of the contract's segments, at the three levels.
fn aggregate<'a>(
    contract: &Contract,
    lines: &'a MonthLines,
) -> Result<(BrandCells<'a>, SegmentCells<'a>), MonthlyError> {
    let segments = contract.segments();
    let mut brands = BrandCells::new();
    let mut seg = SegmentCells::new();
    lines.each_line(|l| {
        let p = lines.product(l);
        if !segments.contains(p.segment.as_str()) {
            return;
        }
        let mine = is_partner_product(contract, p);
        for place in places(lines.place(l)) {
            seg.entry((place, &p.segment)).or_default().add(l, &p.brand);
            if mine {
                brands
                    .entry((place, (&p.brand, &p.segment)))
                    .or_default()
                    .add(l);
            }
        }
    })?;
    Ok((brands, seg))
}

/// Units per (place, brand) of the partner's brands, at the three levels: M−1's side of the
/// month-over-month change.
/// A brand view row's (uf, city, brand, segment), owned: M−1's units outlive its lines.
pub type BrandUnitsKey = (Option<String>, Option<String>, String, String);

/// The owned key of a (place, brand).
fn owned(((uf, city), (brand, segment)): (Place<'_>, BrandKey<'_>)) -> BrandUnitsKey {
    (
        uf.map(str::to_string),
        city.map(str::to_string),
        brand.to_string(),
        segment.to_string(),
    )
}

/// Units of the partner's brands per (place, brand) at the three levels: M−1's side of the
/// month-over-month change.
pub(super) fn units(
    contract: &Contract,
    lines: &MonthLines,
) -> Result<HashMap<BrandUnitsKey, i128>, MonthlyError> {
    let mut out: HashMap<(Place<'_>, BrandKey<'_>), i128> = HashMap::new();
    lines.each_line(|l| {
        let p = lines.product(l);
        if !is_partner_product(contract, p) {
            return;
        }
        for place in places(lines.place(l)) {
            let u = out.entry((place, (&p.brand, &p.segment))).or_default();
            *u = u.saturating_add(i128::from(l.quantity));
        }
    })?;
    Ok(out.into_iter().map(|(k, u)| (owned(k), u)).collect())
}

fn level_of(place: Place<'_>) -> Level {
    match place {
        (None, _) => Level::Country,
        (Some(_), None) => Level::Uf,
        (Some(_), Some(_)) => Level::City,
    }
}

fn ratio(num: i128, den: i128) -> Option<f64> {
    (den != 0).then(|| num as f64 / den as f64)
}

fn row(
    place: Place<'_>,
    city: Option<&str>,
    merged: i32,
    (brand, segment): BrandKey<'_>,
    a: &BrandAgg,
    s: Option<&SegmentAgg<'_>>,
) -> Result<BrandRow, MonthlyError> {
    // Sums are 128-bit; a cell whose total does not fit the file's 64-bit column is an error
    // naming it, never a wrapped or saturated figure.
    let fit = |column: &'static str, value: i128| {
        i64::try_from(value).map_err(|_| MonthlyError::Overflow {
            column,
            cell: format!(
                "{}/{}/{brand}",
                place.0.unwrap_or("BR"),
                city.unwrap_or("-")
            ),
            value: value.to_string(),
        })
    };
    let avg = fit("avg_unit_price", round_div(a.sums.list, a.sums.units))?;
    let visible =
        s.filter(|s| s.brands.iter().filter(|b| **b != brand).count() >= MIN_OTHER_BRANDS);
    let seg_avg = visible
        .map(|s| round_div(s.sums.list, s.sums.units))
        .filter(|x| *x != 0);
    Ok(BrandRow {
        level: level_of(place),
        uf: place.0.map(str::to_string),
        city: city.map(str::to_string),
        cities_merged: merged,
        brand: brand.to_string(),
        segment: segment.to_string(),
        skus_sold: i32::try_from(a.skus.len()).unwrap_or(i32::MAX),
        units_sold: fit("units_sold", a.sums.units)?,
        orders: i64::try_from(a.orders).unwrap_or(i64::MAX),
        customers_reached: a.customers.len() as i64,
        net_revenue: fit("net_revenue", a.sums.net)?,
        avg_unit_price: avg,
        segment_share_units: visible.and_then(|s| ratio(a.sums.units, s.sums.units)),
        segment_share_revenue: visible.and_then(|s| ratio(a.sums.net, s.sums.net)),
        price_index: seg_avg.map(|x| avg as f64 / x as f64),
        customers_share: visible
            .and_then(|s| ratio(a.customers.len() as i128, s.customers.len() as i128)),
        units_mom_change: None,
    })
}

/// Builds the brand view of a month from its monthly aggregate's lines (M and M−1).
pub fn build(contract: &Contract, monthly: &MonthlyTable) -> Result<BrandTable, MonthlyError> {
    let lines = &monthly.lines;
    let prev = &monthly.previous.brand_units;
    let (mut cells, seg) = aggregate(contract, lines)?;
    let k = i64::from(contract.k);
    let mom = |key: &(Place<'_>, BrandKey<'_>), units: i128| {
        prev.get(&owned(*key))
            .filter(|p| **p != 0)
            .map(|p| units as f64 / *p as f64 - 1.0)
    };
    // Each cell's orders count in its own row, or in its state's OUTRAS row of the brand; a
    // state below k has no row.
    let mut slots: HashMap<(Place<'_>, BrandKey<'_>), usize> = HashMap::new();
    let mut outras: HashMap<(&str, BrandKey<'_>), usize> = HashMap::new();
    for (key @ (place, bk), a) in &cells {
        let next = slots.len() + outras.len();
        let below = (a.customers.len() as i64) < k;
        let slot = match (level_of(*place), place.0) {
            (Level::City, Some(uf)) if below => *outras.entry((uf, *bk)).or_insert(next),
            (Level::Uf, _) if below => continue,
            _ => next,
        };
        slots.insert(*key, slot);
    }
    let orders = lines.count_orders(slots.len() + outras.len(), |l, out| {
        let p = lines.product(l);
        for place in places(lines.place(l)) {
            out.extend(slots.get(&(place, (p.brand.as_str(), p.segment.as_str()))));
        }
    })?;

    let mut rows = Vec::new();
    let mut dropped_uf_rows = 0;
    // (uf, brand) -> (merged figures, merged segment cells, cities)
    type Small<'a> = BTreeMap<(&'a str, BrandKey<'a>), (BrandAgg, SegmentAgg<'a>, i32)>;
    let mut small: Small<'_> = BTreeMap::new();
    for (key @ (place, bk), a) in cells.iter_mut() {
        let s = seg.get(&(*place, bk.1));
        let below = (a.customers.len() as i64) < k;
        if let Some(slot) = slots.get(key) {
            a.orders = orders[*slot];
        }
        match (level_of(*place), place.0) {
            (Level::City, Some(uf)) if below => {
                let m = small.entry((uf, *bk)).or_default();
                m.0.merge(a);
                m.0.orders = a.orders;
                if let Some(s) = s {
                    m.1.merge(s);
                }
                m.2 += 1;
                continue;
            }
            (Level::Uf, _) if below => {
                dropped_uf_rows += 1;
                continue;
            }
            _ => {}
        }
        let mut r = row(*place, place.1, 0, *bk, a, s)?;
        r.units_mom_change = mom(key, a.sums.units);
        rows.push(r);
    }
    let mut dropped_outras_rows = 0;
    for ((uf, bk), (a, s, n)) in &small {
        if (a.customers.len() as i64) < k {
            dropped_outras_rows += 1;
            continue;
        }
        let place = (Some(*uf), Some(OTHER_CITIES));
        rows.push(row(place, Some(OTHER_CITIES), *n, *bk, a, Some(s))?);
    }
    rows.sort_by(|a, b| {
        let key = |r: &BrandRow| {
            (
                r.uf.clone(),
                r.level,
                r.cities_merged > 0,
                r.city.clone(),
                r.brand.clone(),
                r.segment.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    Ok(BrandTable {
        month: monthly.month.clone(),
        rows,
        dropped_outras_rows,
        dropped_uf_rows,
    })
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::super::curated::{Line, Product, Status};
    use super::super::monthly::PreviousMonth;
    use super::*;

    fn contract() -> Contract {
        crate::products::contract::acme_buying("monthly_brands")
    }

    fn line(tx: &str, customer: &str, code: &str, city: &str, uf: &str, q: i64) -> Line {
        Line {
            transaction_id: tx.into(),
            order_id: format!("O{tx}"),
            customer_id: customer.into(),
            product_code: code.into(),
            quantity: q,
            unit_price: 100,
            discount: 0,
            status: Status::Completed,
            sold_at: 0,
            city: city.into(),
            uf: uf.into(),
            updated_at: None,
            batch: NaiveDate::default(),
        }
    }

    fn product(code: &str, brand: &str, manufacturer: &str) -> Product {
        Product {
            product_code: code.into(),
            name: code.into(),
            brand: brand.into(),
            manufacturer: manufacturer.into(),
            segment: "Sucos".into(),
            unit_size: None,
        }
    }

    fn table(lines: Vec<(Line, Product)>) -> MonthlyTable {
        MonthlyTable {
            month: "2026-11".into(),
            rows: Vec::new(),
            dropped_net_revenue: 0,
            dropped_rows: 0,
            dropped_by_brand: BTreeMap::new(),
            source_batches: Vec::new(),
            missing_batches: Vec::new(),
            comparison_batches: Vec::new(),
            lines: MonthLines::from_lines(lines).unwrap(),
            previous: Default::default(),
        }
    }

    /// M−1's figures outlive its lines: their scratch files are gone once summed, and the brand
    /// view's month-over-month change reads the figures.
    #[test]
    fn the_previous_month_keeps_its_figures_not_its_lines() {
        let zap = |c| product(c, "Zap", "Acme");
        let mut october = MonthLines::from_lines(vec![(
            line("1", "a", "ZAP-000001", "Recife", "PE", 4),
            zap("ZAP-000001"),
        )])
        .unwrap();
        october.source_batches = vec![NaiveDate::from_ymd_opt(2026, 10, 1).unwrap()];
        let scratch = october.scratch_dir().unwrap();
        assert!(scratch.is_dir());
        let first = NaiveDate::from_ymd_opt(2026, 10, 1).unwrap();
        let previous = PreviousMonth::from_lines(&contract(), first, october).unwrap();
        assert!(!scratch.exists(), "October's scratch files deleted");
        let recife = |level: Option<&str>| {
            (
                Some("PE".to_string()),
                level.map(str::to_string),
                "Zap".to_string(),
                "Sucos".to_string(),
            )
        };
        assert_eq!(previous.brand_units.get(&recife(Some("Recife"))), Some(&4));
        assert_eq!(previous.brand_units.get(&recife(None)), Some(&4));
        assert!(
            previous.brand_shares.is_empty(),
            "no rival sold: no segment figures, no share"
        );
        let november = vec![
            (
                line("2", "a", "ZAP-000001", "Recife", "PE", 3),
                zap("ZAP-000001"),
            ),
            (
                line("3", "b", "ZAP-000001", "Recife", "PE", 3),
                zap("ZAP-000001"),
            ),
        ];
        let t = MonthlyTable {
            previous: std::sync::Arc::new(previous),
            ..table(november)
        };
        let view = build(&contract(), &t).unwrap();
        let city = view
            .rows
            .iter()
            .find(|r| r.city.as_deref() == Some("Recife"))
            .unwrap();
        assert_eq!(city.units_mom_change, Some(0.5), "6 units against 4");
    }

    #[test]
    fn customers_are_counted_per_level_and_small_cities_merge() {
        let zap = |c| product(c, "Zap", "Acme");
        let lines = vec![
            // Customer a buys in two cities: once in SP, once in the country.
            (
                line("1", "a", "ZAP-000001", "Campinas", "SP", 1),
                zap("ZAP-000001"),
            ),
            (
                line("2", "a", "ZAP-000002", "Santos", "SP", 2),
                zap("ZAP-000002"),
            ),
            (
                line("3", "b", "ZAP-000001", "Campinas", "SP", 1),
                zap("ZAP-000001"),
            ),
            (
                line("4", "c", "ZAP-000001", "Santos", "SP", 1),
                zap("ZAP-000001"),
            ),
            // Itu and Sorocaba have one customer each: merged into OUTRAS (2 customers).
            (
                line("5", "d", "ZAP-000001", "Itu", "SP", 1),
                zap("ZAP-000001"),
            ),
            (
                line("6", "e", "ZAP-000001", "Sorocaba", "SP", 1),
                zap("ZAP-000001"),
            ),
            // One customer in RJ: the city merges alone and is dropped, the state too.
            (
                line("7", "f", "ZAP-000001", "Niterói", "RJ", 4),
                zap("ZAP-000001"),
            ),
            // A rival's line: in the segment, not in the partner's rows.
            (
                line("8", "g", "RIV-000001", "Campinas", "SP", 1),
                product("RIV-000001", "Rival", "Other"),
            ),
        ];
        let t = build(&contract(), &table(lines)).unwrap();
        let got: Vec<_> = t
            .rows
            .iter()
            .map(|r| {
                (
                    r.level.as_str(),
                    r.uf.as_deref(),
                    r.city.as_deref(),
                    r.cities_merged,
                    r.customers_reached,
                    r.units_sold,
                    r.skus_sold,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("country", None, None, 0, 6, 11, 2),
                ("uf", Some("SP"), None, 0, 5, 7, 2),
                ("city", Some("SP"), Some("Campinas"), 0, 2, 2, 1),
                ("city", Some("SP"), Some("Santos"), 0, 2, 3, 2),
                ("city", Some("SP"), Some("OUTRAS"), 2, 2, 2, 1),
            ]
        );
        assert_eq!((t.dropped_outras_rows, t.dropped_uf_rows), (1, 1));
        // One rival: segment figures are hidden.
        assert!(t.rows.iter().all(|r| r.customers_share.is_none()));
        assert_eq!(t.cells()[0][2], Cell::Null);
    }

    #[test]
    fn country_rows_must_add_up_to_the_monthly_aggregate() {
        use super::super::reconcile::{ReconcileError, check_brands};

        let zap = |c| product(c, "Zap", "Acme");
        let lines = vec![
            (
                line("1", "a", "ZAP-000001", "Itu", "SP", 3),
                zap("ZAP-000001"),
            ),
            (
                line("2", "b", "ZAP-000001", "Itu", "SP", 2),
                zap("ZAP-000001"),
            ),
        ];
        let mut m = table(lines);
        let t = build(&contract(), &m).unwrap();
        // The monthly aggregate has no row and no dropped cell for Zap: held.
        let e = check_brands(&contract(), &m, &t).unwrap_err();
        assert!(matches!(e, ReconcileError::BrandMismatch { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("brand Zap/Sucos country row 5 units, 500 cents"),
            "{e}"
        );
        // Its dropped cells hold them: the brand view may go.
        m.dropped_by_brand
            .insert(("Zap".into(), "Sucos".into()), (5, 500));
        check_brands(&contract(), &m, &t).unwrap();
    }
}
