//! Two or three facts worth a line in the partner's e-mail, in pt-BR with Brazilian numbers.

use std::collections::{BTreeMap, BTreeSet};

use super::brands::{BrandTable, Level};
use super::daily::DailyTable;
use super::monthly::MonthlyTable;

/// Formats a number the Brazilian way: `.` between thousands, `,` before decimals (`1.234,56`).
pub fn number(value: f64, decimals: usize) -> String {
    let s = format!("{:.*}", decimals, value.abs());
    let (int, frac) = s.split_once('.').unwrap_or((&s, ""));
    let mut grouped = String::with_capacity(int.len() + int.len() / 3);
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i).is_multiple_of(3) {
            grouped.push('.');
        }
        grouped.push(c);
    }
    let negative = value < 0.0 && s.bytes().any(|b| (b'1'..=b'9').contains(&b));
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    out.push_str(&grouped);
    if !frac.is_empty() {
        out.push(',');
        out.push_str(frac);
    }
    out
}

/// Formats cents as `1.234,56`.
pub fn cents(v: i128) -> String {
    let a = v.unsigned_abs();
    let int = number((a / 100) as f64, 0);
    format!("{}{int},{:02}", if v < 0 { "-" } else { "" }, a % 100)
}

/// Formats a ratio as a percentage with one decimal (`0.123` → `12,3%`).
pub fn percent(ratio: f64) -> String {
    format!("{}%", number(ratio * 100.0, 1))
}

/// Formats a ratio as a signed percentage (`0.325` → `+32,5%`).
pub fn signed_percent(ratio: f64) -> String {
    let s = percent(ratio);
    if s.starts_with('-') || s == "0,0%" {
        s
    } else {
        format!("+{s}")
    }
}

/// Formats a difference of ratios in percentage points (`0.012` → `+1,2 p.p.`).
pub fn points(diff: f64) -> String {
    let s = number(diff * 100.0, 1);
    if s.starts_with('-') || s == "0,0" {
        format!("{s} p.p.")
    } else {
        format!("+{s} p.p.")
    }
}

/// Units of a brand and of its segment over the cells where segment figures are published.
fn brand_share(t: &MonthlyTable, brand: &str) -> Option<(String, f64)> {
    let mut units = 0i128;
    let mut cells: BTreeMap<(&str, &str, &str), i64> = BTreeMap::new();
    let mut segment = None;
    for r in t.rows.iter().filter(|r| r.product.brand == brand) {
        if let Some(s) = r.segment_units {
            units += i128::from(r.units_sold);
            cells.insert((&r.uf, &r.city, &r.product.segment), s);
            segment.get_or_insert_with(|| r.product.segment.clone());
        }
    }
    let total: i128 = cells.values().map(|v| i128::from(*v)).sum();
    (total > 0).then(|| (segment.unwrap_or_default(), units as f64 / total as f64))
}

/// Each brand's (segment, share of the segment's units) in a monthly product, over the cells
/// where segment figures are published (the brands without such a cell are absent).
pub fn brand_shares(t: &MonthlyTable) -> BTreeMap<String, (String, f64)> {
    let brands: BTreeSet<&str> = t.rows.iter().map(|r| r.product.brand.as_str()).collect();
    brands
        .into_iter()
        .filter_map(|b| brand_share(t, b).map(|s| (b.to_string(), s)))
        .collect()
}

/// Highlights of a monthly product; `previous` holds M−1's [`brand_shares`] (empty when M−1
/// has no batches).
pub fn monthly(t: &MonthlyTable, previous: &BTreeMap<String, (String, f64)>) -> Vec<String> {
    let mut out = Vec::new();
    let growth = t
        .rows
        .iter()
        .filter(|r| r.cities_merged == 0)
        .filter_map(|r| r.units_mom_change.map(|c| (c, r)))
        .filter(|(c, _)| *c > 0.0)
        .max_by(|a, b| {
            a.0.total_cmp(&b.0)
                .then_with(|| b.1.product.product_code.cmp(&a.1.product.product_code))
        });
    if let Some((c, r)) = growth {
        out.push(format!(
            "{}: maior crescimento em {} ({}), {} em unidades",
            r.product.name,
            r.city,
            r.uf,
            signed_percent(c)
        ));
    }
    let mut units_by_brand: BTreeMap<&str, i128> = BTreeMap::new();
    for r in &t.rows {
        *units_by_brand.entry(&r.product.brand).or_default() += i128::from(r.units_sold);
    }
    let top = units_by_brand
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(b, _)| b.to_string());
    if let Some(brand) = &top {
        if let Some((segment, share)) = brand_share(t, brand) {
            let change = previous
                .get(brand)
                .map(|(_, prev)| format!(" ({})", points(share - prev)))
                .unwrap_or_default();
            out.push(format!(
                "Participação de {brand} em {segment}: {}{change}",
                percent(share)
            ));
        }
        let (mut weighted, mut units) = (0.0, 0i128);
        for r in t.rows.iter().filter(|r| &r.product.brand == brand) {
            if let Some(i) = r.price_index {
                weighted += i * r.units_sold as f64;
                units += i128::from(r.units_sold);
            }
        }
        if units > 0 {
            let index = weighted / units as f64;
            let diff = (index - 1.0).abs();
            let side = if number(diff * 100.0, 0) == "0" {
                "na média do segmento".to_string()
            } else if index < 1.0 {
                format!("{}% abaixo da média do segmento", number(diff * 100.0, 0))
            } else {
                format!("{}% acima da média do segmento", number(diff * 100.0, 0))
            };
            out.push(format!(
                "Índice de preço de {brand}: {} ({side})",
                number(index, 2)
            ));
        }
    }
    out.truncate(3);
    out
}

/// Highlights of a monthly brand view: each brand's reach in the country, and the city where
/// the brand with most customers reached most.
pub fn brands(t: &BrandTable) -> Vec<String> {
    let mut out = Vec::new();
    for r in t.country() {
        let share = r
            .customers_share
            .map(|s| format!(" ({} dos clientes de {})", percent(s), r.segment))
            .unwrap_or_default();
        out.push(format!(
            "{}: {} clientes distintos no país{share}, {} unidades",
            r.brand,
            number(r.customers_reached as f64, 0),
            number(r.units_sold as f64, 0)
        ));
    }
    let top = t
        .country()
        .max_by(|a, b| {
            a.customers_reached
                .cmp(&b.customers_reached)
                .then_with(|| b.brand.cmp(&a.brand))
        })
        .map(|r| r.brand.clone());
    let best_city = t
        .rows
        .iter()
        .filter(|r| r.level == Level::City && r.cities_merged == 0)
        .filter(|r| Some(&r.brand) == top.as_ref())
        .max_by(|a, b| {
            a.customers_reached
                .cmp(&b.customers_reached)
                .then_with(|| b.city.cmp(&a.city))
        });
    if let Some(r) = best_city {
        out.truncate(2);
        out.push(format!(
            "{}: maior alcance em {} ({}), {} clientes",
            r.brand,
            r.city.as_deref().unwrap_or_default(),
            r.uf.as_deref().unwrap_or_default(),
            number(r.customers_reached as f64, 0)
        ));
    }
    out.truncate(3);
    out
}

/// Highlights of a daily product.
pub fn daily(t: &DailyTable) -> Vec<String> {
    let units: i128 = t.rows.iter().map(|r| i128::from(r.quantity)).sum();
    let net: i128 = t.rows.iter().map(|r| i128::from(r.net_amount)).sum();
    let mut out = vec![format!(
        "{}: {} unidades, R$ {} em vendas líquidas",
        t.date.format("%d/%m/%Y"),
        number(units as f64, 0),
        cents(net)
    )];
    // Units per place named by a row (cities written `OUTRAS` aside), counted by the place's
    // index: a 10M-row day has ~3M rows and a few thousand places.
    let mut by_place: Vec<Option<i128>> = vec![None; t.places.len()];
    for r in t.rows.iter().filter(|r| !r.outras) {
        *by_place[r.place as usize].get_or_insert(0) += i128::from(r.quantity);
    }
    // The most units; among equals, the first (city, uf) in order.
    let top = (by_place.iter().enumerate())
        .filter_map(|(i, u)| u.map(|u| (u, &t.places[i])))
        .max_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| (&b.1.1, &b.1.0).cmp(&(&a.1.1, &a.1.0)))
        });
    if let Some((u, (uf, city))) = top {
        out.push(format!(
            "Cidade com mais unidades: {city} ({uf}), {} unidades",
            number(u as f64, 0)
        ));
    }
    if !t.rows.is_empty() {
        let mut customers: Vec<u64> = t.rows.iter().map(|r| r.customer_key).collect();
        customers.sort_unstable();
        customers.dedup();
        out.push(format!(
            "{} clientes distintos em {} itens de pedido",
            number(customers.len() as f64, 0),
            number(t.rows.len() as f64, 0)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::products::daily::DailyRow;

    fn row(place: u32, quantity: i64, customer_key: u64, outras: bool) -> DailyRow {
        DailyRow {
            sold_at_hour: 0,
            line_key: customer_key ^ 0xff,
            customer_key,
            quantity,
            unit_price: 100,
            discount: 0,
            net_amount: 100 * quantity,
            product: 0,
            place,
            outras,
        }
    }

    #[test]
    fn the_daily_top_city_ties_go_to_the_first_city_and_outras_rows_do_not_count() {
        let places = [
            ("SP", "Campinas"),
            ("RJ", "Angra"),
            ("SP", "Zeta"),
            ("MG", "Ipatinga"),
        ];
        let t = DailyTable {
            date: chrono::NaiveDate::from_ymd_opt(2026, 11, 27).unwrap(),
            // Campinas and Angra tie at 5 units; Zeta's 9 are written OUTRAS; Ipatinga has
            // no row.
            rows: vec![
                row(0, 2, 1, false),
                row(1, 5, 2, false),
                row(0, 3, 2, false),
                row(2, 9, 3, true),
            ],
            products: Vec::new(),
            places: places
                .iter()
                .map(|(uf, city)| (uf.to_string(), city.to_string()))
                .collect(),
            source_batches: Vec::new(),
            missing_batches: Vec::new(),
            cities_suppressed: 1,
        };
        assert_eq!(
            daily(&t),
            [
                "27/11/2026: 19 unidades, R$ 19,00 em vendas líquidas",
                "Cidade com mais unidades: Angra (RJ), 5 unidades",
                "3 clientes distintos em 4 itens de pedido",
            ]
        );
    }

    #[test]
    fn brazilian_numbers() {
        assert_eq!(number(1234.56, 2), "1.234,56");
        assert_eq!(number(1234567.0, 0), "1.234.567");
        assert_eq!(number(999.999, 2), "1.000,00");
        assert_eq!(number(-0.001, 2), "0,00");
        assert_eq!(number(-1234.5, 1), "-1.234,5");
        assert_eq!(number(0.97, 2), "0,97");
        assert_eq!(percent(0.123), "12,3%");
        assert_eq!(signed_percent(0.325), "+32,5%");
        assert_eq!(signed_percent(-0.05), "-5,0%");
        assert_eq!(points(0.012), "+1,2 p.p.");
        assert_eq!(points(-0.0123), "-1,2 p.p.");
        assert_eq!(cents(123_456), "1.234,56");
        assert_eq!(cents(-5), "-0,05");
        assert_eq!(cents(100_000_000), "1.000.000,00");
    }
}
