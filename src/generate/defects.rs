//! The defects of the spec: null markers, odd formats, invalid values, duplicates, orphans, malformed rows.

use chrono::NaiveDate;
use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use super::schema::{Col, Need, Row, Table, Ty};
use super::values::{
    TS_LAYOUTS, cep_digits, fmt_cep, fmt_money, fmt_ts, local_to_utc, local_year, parse_money,
    parse_ts, title, write_ts,
};
use crate::br;

/// Groups of rows sharing a key: exact duplicates and conflicting versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupKind {
    /// A row and an identical copy right after it, written with other raw formats.
    Exact,
    /// A row and a byte-identical copy right after it.
    ExactPlain,
    /// An older version, then a newer one (the later line wins).
    NewerLater,
    /// A newer version, then an older one (the earlier line wins).
    NewerEarlier,
    /// Two versions with equal `updated_at` (the later line wins).
    TieEqual,
    /// Two versions without `updated_at` (the later line wins).
    TieNull,
    /// A row, its reformatted exact copy, then a newer version.
    Mixed,
    /// A row in one part and its reformatted copy in the next part.
    CrossExact,
    /// An older version in one part, the newer one in the next part.
    CrossNewerLater,
    /// The newer version in one part, the older one in the next part.
    CrossNewerEarlier,
    /// Equal `updated_at` in two parts (the later object wins).
    CrossTie,
}

impl GroupKind {
    /// The group kinds placed inside one part, cycled with the other defects.
    pub(crate) const WITHIN: [GroupKind; 7] = [
        GroupKind::Exact,
        GroupKind::ExactPlain,
        GroupKind::NewerLater,
        GroupKind::NewerEarlier,
        GroupKind::TieEqual,
        GroupKind::TieNull,
        GroupKind::Mixed,
    ];
    /// The group kinds that span two consecutive parts, planned once per boundary.
    pub(crate) const CROSS: [GroupKind; 4] = [
        GroupKind::CrossExact,
        GroupKind::CrossNewerLater,
        GroupKind::CrossNewerEarlier,
        GroupKind::CrossTie,
    ];
}

/// One injected defect (at most one per row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inject {
    /// A null marker (index into `NULL_MARKERS`) in a column.
    Null { col: usize, marker: usize },
    /// An odd but readable format of a column's value.
    Format { col: usize, variant: usize },
    /// A value no rule can read.
    Invalid { col: usize, variant: usize },
    /// A customer id absent from the customers snapshot.
    OrphanCustomer,
    /// A well-formed product code absent from the products snapshot.
    OrphanProduct,
    /// One field too many (`true`) or too few.
    Malformed { extra: bool },
    /// A duplicate or conflict group.
    Group(GroupKind),
}

impl Inject {
    /// Returns true when the defect quarantines its row.
    pub(crate) fn quarantines(self, table: Table) -> bool {
        let cols = table.columns();
        match self {
            Inject::Null { col, .. } => cols[col].need == Need::Required,
            Inject::Invalid { col, .. } => cols[col].ty.invalid_quarantines(),
            Inject::OrphanCustomer | Inject::OrphanProduct | Inject::Malformed { .. } => true,
            Inject::Format { .. } | Inject::Group(_) => false,
        }
    }
}

/// Number of odd formats the generator writes for a column.
pub(crate) fn format_count(col: &Col) -> usize {
    match col.ty {
        Ty::TxId | Ty::Email | Ty::Cpf => 1,
        Ty::ProductCode | Ty::Quantity | Ty::Discount | Ty::Cep | Ty::BirthDate => 3,
        Ty::City | Ty::Uf | Ty::Brand => 2,
        Ty::Price => 6,
        Ty::Status => 7,
        Ty::Phone => 4,
        Ty::Timestamp if col.need == Need::Unspecified => TS_LAYOUTS.len() + 2,
        Ty::Timestamp => TS_LAYOUTS.len(),
        Ty::Id | Ty::Text | Ty::Ean => 0,
    }
}

/// Number of invalid values the generator writes for a column.
pub(crate) fn invalid_count(col: &Col) -> usize {
    match col.ty {
        Ty::Timestamp if col.need == Need::Unspecified => 0,
        Ty::ProductCode | Ty::Status | Ty::Cep | Ty::Uf | Ty::Ean => 1,
        Ty::Discount | Ty::Timestamp | Ty::Email | Ty::Cpf | Ty::Phone => 2,
        Ty::BirthDate => 3,
        Ty::Quantity | Ty::Price => 4,
        Ty::TxId | Ty::Id | Ty::Text | Ty::City | Ty::Brand => 0,
    }
}

/// Returns the defect kinds of a table: those for referenced (base) rows, and those that
/// quarantine and so go on extra rows with fresh keys (products, customers).
pub(crate) fn kinds(table: Table) -> (Vec<Inject>, Vec<Inject>) {
    let cols = table.columns();
    let mut all = Vec::new();
    for (needs, _) in [
        (&[Need::Required][..], 0),
        (&[Need::Optional, Need::DefaultZero][..], 1),
    ] {
        let chosen: Vec<usize> = (0..cols.len())
            .filter(|&i| needs.contains(&cols[i].need))
            .collect();
        for k in 0..chosen.len().max(super::values::NULL_MARKERS.len()) {
            if !chosen.is_empty() {
                all.push(Inject::Null {
                    col: chosen[k % chosen.len()],
                    marker: k % 10,
                });
            }
        }
    }
    for (i, col) in cols.iter().enumerate() {
        for v in 0..format_count(col) {
            all.push(Inject::Format { col: i, variant: v });
        }
        for v in 0..invalid_count(col) {
            all.push(Inject::Invalid { col: i, variant: v });
        }
    }
    if table == Table::Transactions {
        all.push(Inject::OrphanCustomer);
        all.push(Inject::OrphanProduct);
    }
    all.push(Inject::Malformed { extra: true });
    all.push(Inject::Malformed { extra: false });
    all.extend(GroupKind::WITHIN.map(Inject::Group));
    if table == Table::Transactions {
        return (all, Vec::new());
    }
    all.into_iter().partition(|k| !k.quarantines(table))
}

fn cell(row: &Row, col: usize) -> String {
    row.get(col).cloned().flatten().unwrap_or_default()
}

fn set(row: &mut Row, col: usize, v: String) {
    if let Some(c) = row.get_mut(col) {
        *c = Some(v);
    }
}

/// Splits a canonical product code into prefix and number.
fn code_parts(code: &str) -> (&str, &str) {
    code.split_once('-').unwrap_or((code, ""))
}

/// Splits an E.164 phone into DDD and subscriber number.
fn phone_parts(p: &str) -> (&str, &str) {
    let rest = p.strip_prefix("+55").unwrap_or(p);
    (rest.get(..2).unwrap_or("11"), rest.get(2..).unwrap_or(""))
}

fn split_sub(sub: &str) -> (&str, &str) {
    let cut = sub.len().saturating_sub(4);
    (&sub[..cut], &sub[cut..])
}

fn thousands(cents: i64, sep: char, dec: char) -> String {
    let int = cents / 100;
    let s = int.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(sep);
        }
        out.push(ch);
    }
    format!("{out}{dec}{:02}", cents % 100)
}

fn city_upper(city: &str, uf: &str) -> String {
    let folded = br::fold_name(city).to_uppercase();
    if br::canonical_municipality(&folded, uf) == Some(city) {
        folded
    } else {
        city.to_uppercase()
    }
}

fn city_spaced(city: &str, uf: &str) -> String {
    let folded = br::fold_name(city);
    if br::canonical_municipality(&folded, uf) == Some(city) {
        format!(" {}", folded.split(' ').collect::<Vec<_>>().join("  "))
    } else {
        format!(" {}", city.to_lowercase())
    }
}

fn parse_date(s: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}

/// Writes column `col` of `row` in odd format `variant`; updates the canonical row when the
/// format changes the value (e.g. `27/11/2026` is local midnight) and returns the raw text.
pub(crate) fn apply_format(
    table: Table,
    row: &mut Row,
    col: usize,
    variant: usize,
    rng: &mut ChaCha8Rng,
) -> String {
    let spec = table.columns()[col];
    let canon = cell(row, col);
    match spec.ty {
        Ty::TxId => format!(" {} ", canon.to_lowercase()),
        Ty::ProductCode => {
            let (p, n) = code_parts(&canon);
            match variant {
                0 => format!("{} {n}", p.to_lowercase()),
                1 => format!("{p}{n}"),
                _ => format!("{}-{n}", p.to_lowercase()),
            }
        }
        Ty::Quantity => match variant {
            0 => format!("{canon}.0"),
            1 => format!("{canon} un"),
            _ => format!(" {canon} "),
        },
        Ty::Price | Ty::Discount => {
            let mut c = parse_money(&canon).unwrap_or(0);
            if c == 0 {
                c = rng.random_range(50..300);
            }
            let raw = match (spec.ty, variant) {
                (_, 0) => fmt_money(c).replace('.', ","),
                (_, 1) => format!("R$ {}", fmt_money(c).replace('.', ",")),
                (Ty::Discount, _) | (_, 4) => {
                    c = (c / 10) * 10;
                    format!("{}.{}", c / 100, (c % 100) / 10)
                }
                (_, 2) => {
                    c = rng.random_range(100_000..1_000_000);
                    format!("R${}", thousands(c, '.', ','))
                }
                (_, 3) => {
                    c = rng.random_range(100_000..1_000_000);
                    thousands(c, ',', '.')
                }
                _ => {
                    c = rng.random_range(1000..10_000) * 100;
                    let t = thousands(c, '.', ',');
                    t.trim_end_matches(",00").to_string()
                }
            };
            set(row, col, fmt_money(c));
            raw
        }
        Ty::Status => {
            let (raw, canon_new) = match variant {
                0 => (canon.to_uppercase(), canon.clone()),
                1 => (title(&canon), canon.clone()),
                2 => ("concluido".to_string(), "completed".to_string()),
                3 => ("concluído".to_string(), "completed".to_string()),
                4 => ("Concluído".to_string(), "completed".to_string()),
                5 => ("cancelado".to_string(), "cancelled".to_string()),
                _ => ("estornado".to_string(), "refunded".to_string()),
            };
            set(row, col, canon_new);
            raw
        }
        Ty::Timestamp => {
            let t = parse_ts(&canon).unwrap_or_default();
            let (raw, back) = match TS_LAYOUTS.get(variant) {
                Some(&layout) => write_ts(t, layout),
                None => {
                    // Wall-clock times in a DST gap and in an ambiguous hour (customers.created_at).
                    let (d, h) = if variant == TS_LAYOUTS.len() {
                        ((2018, 11, 4), 0)
                    } else {
                        ((2019, 2, 16), 23)
                    };
                    let naive = NaiveDate::from_ymd_opt(d.0, d.1, d.2)
                        .and_then(|d| {
                            d.and_hms_opt(h, rng.random_range(0..60), rng.random_range(0..60))
                        })
                        .unwrap_or_default();
                    (
                        naive.format("%Y-%m-%d %H:%M:%S").to_string(),
                        local_to_utc(naive),
                    )
                }
            };
            set(row, col, fmt_ts(back));
            raw
        }
        Ty::Cep => {
            let mut d = cep_digits(&canon).unwrap_or(1_001_000);
            let raw = match variant {
                0 => format!("{d:08}"),
                1 => format!(
                    "{:02}.{:03}-{:03}",
                    d / 1_000_000,
                    (d / 1000) % 1000,
                    d % 1000
                ),
                _ => {
                    if d >= 10_000_000 {
                        // Only São Paulo CEPs start with 0: move the row there.
                        d = rng.random_range(1000..10_000) * 1000 + rng.random_range(0..1000);
                        if let (Some(ci), Some(ui)) = (table.col("city"), table.col("uf")) {
                            set(row, ci, "São Paulo".to_string());
                            set(row, ui, "SP".to_string());
                        }
                    }
                    d.to_string()
                }
            };
            set(row, col, fmt_cep(d));
            raw
        }
        Ty::City => {
            let uf = table.col("uf").map(|u| cell(row, u)).unwrap_or_default();
            if variant == 0 {
                city_upper(&canon, &uf)
            } else {
                city_spaced(&canon, &uf)
            }
        }
        Ty::Uf => {
            if variant == 0 {
                canon.to_lowercase()
            } else {
                format!(" {} ", title(&canon))
            }
        }
        Ty::Brand => {
            if variant == 0 {
                canon.to_uppercase()
            } else {
                format!(" {} ", canon.to_lowercase())
            }
        }
        Ty::Email => canon.to_uppercase(),
        Ty::Cpf => {
            let d = canon.as_str();
            if d.len() == 11 {
                format!("{}.{}.{}-{}", &d[..3], &d[3..6], &d[6..9], &d[9..])
            } else {
                d.to_string()
            }
        }
        Ty::Phone => {
            let (ddd, sub) = phone_parts(&canon);
            let (a, b) = split_sub(sub);
            match variant {
                0 => format!("({ddd}) {a}-{b}"),
                1 => format!("{ddd}{sub}"),
                2 => format!("+55 {ddd} {a} {b}"),
                _ => format!("0{ddd} {a}-{b}"),
            }
        }
        Ty::BirthDate => {
            let d = parse_date(&canon).unwrap_or_default();
            match variant {
                0 => d.format("%d/%m/%Y").to_string(),
                1 => d.format("%Y-%m-%d 00:00:00").to_string(),
                _ => d.format("%Y/%m/%d 00:00:00").to_string(),
            }
        }
        Ty::Id | Ty::Text | Ty::Ean => canon,
    }
}

/// Returns an unreadable raw value for column `col` of `row`.
pub(crate) fn apply_invalid(table: Table, row: &Row, col: usize, variant: usize) -> String {
    let spec = table.columns()[col];
    let canon = cell(row, col);
    let pick = |opts: &[&str]| {
        opts.get(variant)
            .or(opts.first())
            .copied()
            .unwrap_or("?")
            .to_string()
    };
    match spec.ty {
        Ty::ProductCode => "OH-12".to_string(),
        Ty::Quantity => pick(&["0", "-1", "abc", "2.5"]),
        Ty::Price => pick(&["abc", "0", "-7,99", "12.3456"]),
        Ty::Discount => pick(&["abc", "-1,00"]),
        Ty::Status => "pending".to_string(),
        Ty::Timestamp => {
            let year = parse_ts(&canon).map_or(2026, local_year);
            if variant == 0 {
                format!("31/02/{year}")
            } else {
                "yesterday".to_string()
            }
        }
        Ty::Cep => "123".to_string(),
        Ty::Uf => "XX".to_string(),
        Ty::Ean => {
            let mut b = canon.into_bytes();
            if let Some(last) = b.last_mut() {
                *last = b'0' + (last.wrapping_sub(b'0') + 1) % 10;
            }
            String::from_utf8(b).unwrap_or_default()
        }
        Ty::Email => pick(&["foo@bar", "a b@c.com"]),
        Ty::Cpf => {
            if variant == 0 || canon.len() != 11 {
                "111.111.111-11".to_string()
            } else {
                let mut b = canon.into_bytes();
                b[10] = b'0' + (b[10].wrapping_sub(b'0') + 1) % 10;
                String::from_utf8(b).unwrap_or_default()
            }
        }
        Ty::Phone => {
            let (ddd, sub) = phone_parts(&canon);
            let (_, b) = split_sub(sub);
            if variant == 0 {
                format!("(20) 9{:04}-{b}", 1234)
            } else {
                format!("({ddd}) 8{:04}-{b}", 4321)
            }
        }
        Ty::BirthDate => pick(&["2099-05-17", "1890-03-02", "31/02/1990"]),
        Ty::TxId | Ty::Id | Ty::Text | Ty::City | Ty::Brand => canon,
    }
}

/// Writes a column in another raw format that reads back to the very same value, if it has one.
pub(crate) fn reformat(
    table: Table,
    row: &Row,
    col: usize,
    rng: &mut ChaCha8Rng,
) -> Option<String> {
    let spec = table.columns()[col];
    let canon = row.get(col).cloned().flatten()?;
    let mut scratch = row.clone();
    let variant = match spec.ty {
        Ty::TxId | Ty::Email | Ty::Cpf | Ty::BirthDate => 0,
        Ty::ProductCode | Ty::Quantity => rng.random_range(0..3),
        Ty::Price | Ty::Discount | Ty::Cep | Ty::Uf | Ty::Brand | Ty::City => {
            rng.random_range(0..2)
        }
        Ty::Status => rng.random_range(0..2),
        Ty::Phone => rng.random_range(0..4),
        Ty::Timestamp => {
            let t = parse_ts(&canon)?;
            let layout = if rng.random_bool(0.5) {
                TS_LAYOUTS[0]
            } else {
                TS_LAYOUTS[5]
            };
            return Some(write_ts(t, layout).0);
        }
        Ty::Id | Ty::Text | Ty::Ean => return None,
    };
    let raw = apply_format(table, &mut scratch, col, variant, rng);
    (scratch == *row && raw != canon).then_some(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::values::sub_rng;

    fn tx_row() -> Row {
        [
            "TX-20261127-00000123",
            "OR-20261127-00000120",
            "C-000042",
            "OHB-000101",
            "2",
            "7.99",
            "0.00",
            "completed",
            "2026-11-27T17:03:00Z",
            "01001-000",
            "São Paulo",
            "SP",
            "2026-11-27T17:03:00Z",
        ]
        .iter()
        .map(|s| Some(s.to_string()))
        .collect()
    }

    #[test]
    fn formats_of_the_spec() {
        let t = Table::Transactions;
        let mut rng = sub_rng(1, "t", None, 0);
        let f = |col: &str, v: usize, rng: &mut ChaCha8Rng| {
            let mut row = tx_row();
            let i = t.col(col).unwrap_or(0);
            let raw = apply_format(t, &mut row, i, v, rng);
            (raw, row[i].clone().unwrap_or_default())
        };
        assert_eq!(f("transaction_id", 0, &mut rng).0, " tx-20261127-00000123 ");
        assert_eq!(f("product_code", 0, &mut rng).0, "ohb 000101");
        assert_eq!(f("product_code", 1, &mut rng).0, "OHB000101");
        assert_eq!(f("unit_price", 0, &mut rng), ("7,99".into(), "7.99".into()));
        assert_eq!(
            f("unit_price", 1, &mut rng),
            ("R$ 7,99".into(), "7.99".into())
        );
        let (raw, canon) = f("unit_price", 2, &mut rng);
        assert!(
            raw.starts_with("R$") && raw.contains('.') && raw.contains(','),
            "{raw}"
        );
        assert_eq!(raw.replace(['R', '$', '.'], "").replace(',', "."), canon);
        let (raw, canon) = f("unit_price", 5, &mut rng);
        assert_eq!(format!("{}.00", raw.replace('.', "")), canon);
        assert_eq!(f("unit_price", 4, &mut rng), ("7.9".into(), "7.90".into()));
        assert_eq!(
            f("status", 5, &mut rng),
            ("cancelado".into(), "cancelled".into())
        );
        assert_eq!(
            f("sold_at", 3, &mut rng),
            ("27/11/2026".into(), "2026-11-27T03:00:00Z".into())
        );
        assert_eq!(
            f("delivery_cep", 2, &mut rng),
            ("1001000".into(), "01001-000".into())
        );
        assert_eq!(f("delivery_cep", 1, &mut rng).0, "01.001-000");
        assert_eq!(f("city", 0, &mut rng).0, "SAO PAULO");
        assert_eq!(f("city", 1, &mut rng).0, " sao  paulo");
        assert_eq!(f("uf", 1, &mut rng).0, " Sp ");
    }

    #[test]
    fn customer_formats_and_invalids() {
        let t = Table::Customers;
        let mut row: Row = [
            "C-000001",
            "Ana Silva",
            "ana@gmail.com",
            "52998224725",
            "+5511912345678",
            "1985-11-27",
            "01001-000",
            "São Paulo",
            "SP",
            "2020-01-01T12:00:00Z",
            "2021-01-01T12:00:00Z",
        ]
        .iter()
        .map(|s| Some(s.to_string()))
        .collect();
        let mut rng = sub_rng(1, "t", None, 0);
        let phone = t.col("phone").unwrap_or(0);
        let got: Vec<String> = (0..4)
            .map(|v| apply_format(t, &mut row, phone, v, &mut rng))
            .collect();
        assert_eq!(
            got,
            [
                "(11) 91234-5678",
                "11912345678",
                "+55 11 91234 5678",
                "011 91234-5678"
            ]
        );
        assert_eq!(apply_format(t, &mut row, 3, 0, &mut rng), "529.982.247-25");
        assert_eq!(apply_invalid(t, &row, 3, 1), "52998224726");
        assert_eq!(apply_invalid(t, &row, phone, 0), "(20) 91234-5678");
        let created = t.col("created_at").unwrap_or(0);
        let mut r2 = row.clone();
        assert!(apply_format(t, &mut r2, created, 6, &mut rng).starts_with("2018-11-04 00:"));
        assert!(
            r2[created]
                .clone()
                .unwrap_or_default()
                .starts_with("2018-11-04T03:")
        );
    }

    #[test]
    fn every_kind_list_is_complete() {
        let (base, extra) = kinds(Table::Transactions);
        assert!(extra.is_empty());
        for m in 0..10 {
            assert!(base.contains(&Inject::Null { col: 0, marker: 0 }) || m > 0);
        }
        let (base, extra) = kinds(Table::Customers);
        assert!(base.iter().all(|k| !k.quarantines(Table::Customers)));
        assert!(extra.iter().all(|k| k.quarantines(Table::Customers)));
        assert!(extra.contains(&Inject::Malformed { extra: true }));
    }
}
