//! A small deterministic curated-data builder: curated Parquet of several batch days, written
//! with the cleaning engine's own curated schema.
//!
//! Months 2026-10 and 2026-11, batches every day from 2026-10-01 to 2026-12-02. Segments
//! Refrigerantes (Hungry + three rivals), Salgadinhos (Ouch + two rivals; a third rival only in
//! Campinas) and Sucos (the fictional partner Sucorama's Suquinho + three rivals), plus Cervejas
//! (no partner). Big cities everywhere; Itu and Jundiaí (SP) with four customers each, who merge
//! into `OUTRAS`; Armação dos Búzios (RJ) with two customers, dropped. About 10% cancelled and
//! refunded lines, corrections within the month and late refunds in the batches of 12-01/12-02.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use chrono::{NaiveDate, TimeZone};
use chrono_tz::America::Sao_Paulo;
use datashare::clean::Schemas;
use datashare::clean::columns::{ColumnBuilder, curated_schema};
use datashare::clean::validators::Value;
use parquet::arrow::ArrowWriter;

/// A product row.
#[derive(Debug, Clone)]
pub struct FxProduct {
    pub code: &'static str,
    pub name: String,
    pub brand: &'static str,
    pub manufacturer: &'static str,
    pub segment: &'static str,
    pub unit_size: Option<&'static str>,
    pub price_cents: i64,
}

/// A transaction row as it appears in one batch.
#[derive(Debug, Clone)]
pub struct FxLine {
    pub batch: NaiveDate,
    pub transaction_id: String,
    pub order_id: String,
    pub customer_id: String,
    pub product_code: &'static str,
    pub quantity: i64,
    pub unit_price: i64,
    pub discount: i64,
    pub status: &'static str,
    /// Seconds, UTC.
    pub sold_at: i64,
    pub city: &'static str,
    pub uf: &'static str,
    /// Seconds, UTC.
    pub updated_at: i64,
}

/// The generated data.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub products: Vec<FxProduct>,
    pub lines: Vec<FxLine>,
    pub days: Vec<NaiveDate>,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub fn day(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

fn local(d: NaiveDate, h: u32, m: u32) -> i64 {
    Sao_Paulo
        .from_local_datetime(&d.and_hms_opt(h, m, 0).unwrap())
        .earliest()
        .unwrap()
        .timestamp()
}

fn p(
    code: &'static str,
    name: &str,
    brand: &'static str,
    manufacturer: &'static str,
    segment: &'static str,
    unit_size: Option<&'static str>,
    price_cents: i64,
) -> FxProduct {
    FxProduct {
        code,
        name: name.to_string(),
        brand,
        manufacturer,
        segment,
        unit_size,
        price_cents,
    }
}

const BIG: &[(&str, &str, u64)] = &[
    ("São Paulo", "SP", 60),
    ("Campinas", "SP", 40),
    ("Rio de Janeiro", "RJ", 50),
    ("Belo Horizonte", "MG", 30),
];

impl Fixture {
    /// Generates the data from a seed.
    pub fn generate(seed: u64) -> Fixture {
        let products = vec![
            p(
                "HGY-000001",
                "Hungry Cola 350ml",
                "Hungry",
                "OuchHungry",
                "Refrigerantes",
                Some("350ml"),
                499,
            ),
            p(
                "HGY-000002",
                "Hungry Guaraná 2L",
                "Hungry",
                "OuchHungry",
                "Refrigerantes",
                Some("2L"),
                899,
            ),
            p(
                "OUC-000001",
                "Ouch Original 96g",
                "Ouch",
                "OuchHungry",
                "Salgadinhos",
                Some("96g"),
                749,
            ),
            p(
                "OUC-000002",
                "=Ouch Picante 45g",
                "Ouch",
                "OuchHungry",
                "Salgadinhos",
                Some("45g"),
                399,
            ),
            p(
                "FZZ-000001",
                "Fizz Limão 350ml",
                "Fizz",
                "Fizz Bebidas",
                "Refrigerantes",
                Some("350ml"),
                459,
            ),
            p(
                "BLH-000001",
                "Bolha Laranja 2L",
                "Bolha",
                "Bolha SA",
                "Refrigerantes",
                Some("2L"),
                799,
            ),
            p(
                "GLO-000001",
                "Gelo Tônica 350ml",
                "Gelo",
                "Gelo Ltda",
                "Refrigerantes",
                None,
                529,
            ),
            p(
                "CRC-000001",
                "Crocante Queijo 100g",
                "Crocante",
                "Crocante SA",
                "Salgadinhos",
                Some("100g"),
                699,
            ),
            p(
                "PIP-000001",
                "Pipo Bacon 80g",
                "Pipo",
                "Pipo Alimentos",
                "Salgadinhos",
                Some("80g"),
                649,
            ),
            p(
                "TCH-000001",
                "Tchan Milho 90g",
                "Tchan",
                "Tchan Ltda",
                "Salgadinhos",
                Some("90g"),
                599,
            ),
            p(
                "SQN-000001",
                "Suquinho Uva 1L",
                "Suquinho",
                "Sucorama",
                "Sucos",
                Some("1L"),
                699,
            ),
            p(
                "LRJ-000001",
                "Laranjal Laranja 1L",
                "Laranjal",
                "Laranjal SA",
                "Sucos",
                Some("1L"),
                649,
            ),
            p(
                "PLP-000001",
                "Polpa Manga 1L",
                "Polpa",
                "Polpa SA",
                "Sucos",
                Some("1L"),
                729,
            ),
            p(
                "CTR-000001",
                "Citrus Limão 1L",
                "Citrus",
                "Citrus SA",
                "Sucos",
                Some("1L"),
                679,
            ),
            p(
                "CVD-000001",
                "Cevada Pilsen 350ml",
                "Cevada",
                "Cevada SA",
                "Cervejas",
                Some("350ml"),
                389,
            ),
        ];
        let mut rng = Rng(seed);
        let days: Vec<NaiveDate> = day("2026-10-01")
            .iter_days()
            .take_while(|d| *d <= day("2026-12-02"))
            .collect();
        let mut lines: Vec<FxLine> = Vec::new();
        let mut n = 0u64;
        let mut push = |lines: &mut Vec<FxLine>,
                        rng: &mut Rng,
                        d: NaiveDate,
                        customer: String,
                        city: &'static str,
                        uf: &'static str,
                        prod: &FxProduct| {
            n += 1;
            let h = 8 + rng.below(16) as u32; // 08:00-23:59 local: some are the next day in UTC
            let m = rng.below(60) as u32;
            let sold_at = local(d, h, m);
            let roll = rng.below(100);
            let status = match roll {
                0..=5 => "cancelled",
                6..=9 => "refunded",
                _ => "completed",
            };
            let price = prod.price_cents + rng.below(3) as i64 * 10 - 10;
            let quantity = 1 + rng.below(4) as i64;
            let discount = if rng.below(5) == 0 {
                50 * quantity.min(2)
            } else {
                0
            };
            lines.push(FxLine {
                batch: d,
                transaction_id: format!("TX-{n:06}"),
                order_id: format!("OR-{:06}", n / 2),
                customer_id: customer,
                product_code: prod.code,
                quantity,
                unit_price: price,
                discount,
                status,
                sold_at,
                city,
                uf,
                updated_at: sold_at + 60,
            });
        };
        for &d in &days {
            // The batches after the last month only carry corrections.
            if d >= day("2026-12-01") {
                continue;
            }
            for &(city, uf, customers) in BIG {
                let per_day = 10 + rng.below(6);
                for _ in 0..per_day {
                    let c = format!("C-{uf}{:04}", rng.below(customers));
                    let mut prod = &products[rng.below(products.len() as u64) as usize];
                    // Tchan sells only in Campinas: the one Salgadinhos cell with 3 other brands.
                    if prod.brand == "Tchan" && city != "Campinas" {
                        prod = &products[7];
                    }
                    push(&mut lines, &mut rng, d, c, city, uf, prod);
                }
            }
            // Small cities: a few fixed customers buying the partners' products now and then.
            let smalls: &[(&str, &str, u64)] = &[
                ("Itu", "SP", 4),
                ("Jundiaí", "SP", 4),
                ("Armação dos Búzios", "RJ", 2),
            ];
            for &(city, uf, customers) in smalls {
                if rng.below(3) == 0 {
                    let c = format!("C-{}{:02}", &city[..3], rng.below(customers));
                    let prod = &products[rng.below(4) as usize];
                    push(&mut lines, &mut rng, d, c, city, uf, prod);
                }
            }
        }
        // Small cities in November: each customer buys each partner product once, completed,
        // so the merged OUTRAS rows of SP hold 8 customers (kept) and RJ's 2 (dropped).
        for (i, &(city, uf, customers)) in [
            ("Itu", "SP", 4u64),
            ("Jundiaí", "SP", 4),
            ("Armação dos Búzios", "RJ", 2),
        ]
        .iter()
        .enumerate()
        {
            for c in 0..customers {
                for prod in products.iter().take(4) {
                    let d = day("2026-11-10") + chrono::Days::new(c + i as u64);
                    push(
                        &mut lines,
                        &mut rng,
                        d,
                        format!("C-{}{c:02}", &city[..3]),
                        city,
                        uf,
                        prod,
                    );
                    lines.last_mut().unwrap().status = "completed";
                }
            }
        }
        // Corrections: a completed line of an earlier day becomes refunded or cancelled in a
        // later batch (the same day's batch is never re-sent), including the late days.
        let mut corrections = Vec::new();
        for l in &lines {
            if l.status != "completed" || rng.below(25) != 0 {
                continue;
            }
            let later = 1 + rng.below(3);
            let batch = l.batch + chrono::Days::new(later);
            if batch > day("2026-12-02") {
                continue;
            }
            let mut c = l.clone();
            c.batch = batch;
            c.status = if rng.below(2) == 0 {
                "refunded"
            } else {
                "cancelled"
            };
            c.updated_at = l.updated_at + later as i64 * 86_400;
            corrections.push(c);
        }
        // Late corrections on the first days of December for lines of November 29-30.
        for l in &lines {
            if l.status == "completed"
                && (l.batch == day("2026-11-29") || l.batch == day("2026-11-30"))
                && l.transaction_id.ends_with('3')
            {
                let mut c = l.clone();
                c.batch = day("2026-12-02");
                c.status = "refunded";
                c.updated_at = l.updated_at + 3 * 86_400;
                corrections.push(c);
            }
        }
        // Within one batch a transaction appears once (the cleaning engine deduplicates).
        let mut seen = std::collections::BTreeSet::new();
        corrections.retain(|c| seen.insert((c.batch, c.transaction_id.clone())));
        lines.extend(corrections);
        Fixture {
            products,
            lines,
            days,
        }
    }

    /// Writes `<root>/curated/<table>/dt=<D>/part-00000.parquet` for every day.
    pub fn write(&self, root: &Path) {
        let schemas = Schemas::builtin().unwrap();
        let mut by_batch: BTreeMap<NaiveDate, Vec<&FxLine>> = BTreeMap::new();
        for l in &self.lines {
            by_batch.entry(l.batch).or_default().push(l);
        }
        for d in &self.days {
            let rows: Vec<BTreeMap<&str, Value>> = by_batch
                .get(d)
                .map(|v| v.as_slice())
                .unwrap_or_default()
                .iter()
                .map(|l| {
                    BTreeMap::from([
                        (
                            "transaction_id",
                            Value::Str(l.transaction_id.as_str().into()),
                        ),
                        ("order_id", Value::Str(l.order_id.as_str().into())),
                        ("customer_id", Value::Str(l.customer_id.as_str().into())),
                        ("product_code", Value::Str(l.product_code.into())),
                        ("quantity", Value::Int(l.quantity)),
                        ("unit_price", Value::Cents(l.unit_price)),
                        ("discount", Value::Cents(l.discount)),
                        ("status", Value::Str(l.status.into())),
                        ("sold_at", Value::Ts(l.sold_at)),
                        ("delivery_cep", Value::Str("01001-000".into())),
                        ("city", Value::Str(l.city.into())),
                        ("uf", Value::Str(l.uf.into())),
                        ("updated_at", Value::Ts(l.updated_at)),
                    ])
                })
                .collect();
            write_table(&schemas, root, "transactions", *d, &rows);
            let prows: Vec<BTreeMap<&str, Value>> = self
                .products
                .iter()
                .map(|p| {
                    let mut m = BTreeMap::from([
                        ("product_code", Value::Str(p.code.into())),
                        ("name", Value::Str(p.name.as_str().into())),
                        ("brand", Value::Str(p.brand.into())),
                        ("manufacturer", Value::Str(p.manufacturer.into())),
                        ("segment", Value::Str(p.segment.into())),
                    ]);
                    if let Some(u) = p.unit_size {
                        m.insert("unit_size", Value::Str(u.into()));
                    }
                    m
                })
                .collect();
            write_table(&schemas, root, "products", *d, &prows);
        }
    }
}

fn write_table(
    schemas: &Schemas,
    root: &Path,
    table: &str,
    d: NaiveDate,
    rows: &[BTreeMap<&str, Value>],
) {
    let t = schemas.table(table).unwrap();
    let mut builders: Vec<ColumnBuilder> = t
        .columns
        .iter()
        .map(|c| ColumnBuilder::new(c.kind, rows.len()))
        .collect();
    for r in rows {
        for (c, b) in t.columns.iter().zip(builders.iter_mut()) {
            b.append(r.get(c.name.as_str()));
        }
    }
    let schema = curated_schema(t);
    let arrays = builders.iter_mut().map(ColumnBuilder::finish).collect();
    let batch = arrow_array::RecordBatch::try_new(schema.clone(), arrays).unwrap();
    let dir = root.join(format!("curated/{table}/dt={d}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut w = ArrowWriter::try_new(
        File::create(dir.join("part-00000.parquet")).unwrap(),
        schema,
        None,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}
