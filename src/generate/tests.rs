//! Tests of the generator against its own contract, with an in-memory sink.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::rc::Rc;

use chrono::NaiveDate;
use proptest::prelude::*;

use super::*;
use crate::br;

type Store = Rc<RefCell<BTreeMap<String, Vec<u8>>>>;

/// Keeps objects in memory.
#[derive(Default, Clone)]
struct MemSink(Store);

struct MemObject {
    name: String,
    buf: Vec<u8>,
    store: Store,
}

impl Write for MemObject {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for MemObject {
    fn finish(self: Box<Self>) -> io::Result<()> {
        self.store.borrow_mut().insert(self.name, self.buf);
        Ok(())
    }
}

impl ObjectSink for MemSink {
    fn create(&self, name: &str) -> io::Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(MemObject {
            name: name.to_string(),
            buf: Vec::new(),
            store: self.0.clone(),
        }))
    }
}

/// Counts bytes and remembers the largest single write.
#[derive(Default, Clone)]
struct CountSink(Rc<RefCell<(u64, usize)>>);

struct CountObject(Rc<RefCell<(u64, usize)>>);

impl Write for CountObject {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let mut s = self.0.borrow_mut();
        s.0 += b.len() as u64;
        s.1 = s.1.max(b.len());
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for CountObject {
    fn finish(self: Box<Self>) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectSink for CountSink {
    fn create(&self, _name: &str) -> io::Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(CountObject(self.0.clone())))
    }
}

fn day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 27).unwrap_or_default()
}

fn opts(rate: f64) -> GenerateOptions {
    GenerateOptions {
        defect_rate: rate,
        bad_files: true,
        ..GenerateOptions::default()
    }
}

fn generate(o: &GenerateOptions) -> (DayTruth, BTreeMap<String, Vec<u8>>) {
    let sink = MemSink::default();
    let truth = generate_day(o, day(), &sink).unwrap_or_else(|e| panic!("generate: {e}"));
    let objects = sink.0.borrow().clone();
    (truth, objects)
}

fn entries(objects: &BTreeMap<String, Vec<u8>>) -> Vec<DefectEntry> {
    let text =
        String::from_utf8(objects["truth/dt=2026-11-27/defects.jsonl"].clone()).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Reads a part back as a reader following the spec would: gunzip, decode, strip the BOM, parse.
fn read_part(f: &FileSummary, bytes: &[u8]) -> (Vec<String>, Vec<Vec<String>>) {
    let mut raw = Vec::new();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut raw)
            .unwrap_or_else(|e| panic!("{e}"));
    } else {
        raw = bytes.to_vec();
    }
    let text = match std::str::from_utf8(&raw) {
        Ok(s) => {
            assert_eq!(f.encoding, "utf-8", "{}", f.object);
            s.to_string()
        }
        Err(_) => {
            assert_eq!(f.encoding, "windows-1252", "{}", f.object);
            encoding_rs::WINDOWS_1252.decode(&raw).0.into_owned()
        }
    };
    let text = text
        .strip_prefix('\u{feff}')
        .map(str::to_string)
        .unwrap_or(text);
    assert_eq!(text.contains("\r\n"), f.crlf, "{}", f.object);
    let delim = f.delimiter.as_bytes()[0];
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(delim)
        .flexible(true)
        .has_headers(false)
        .from_reader(text.as_bytes());
    let mut records = rdr.records().map(|r| {
        r.unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .map(str::to_string)
            .collect::<Vec<_>>()
    });
    let header = records.next().unwrap_or_default();
    (header, records.collect())
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let (_, a) = generate(&opts(0.05));
    let (_, b) = generate(&opts(0.05));
    assert_eq!(a, b);
    let (_, c) = generate(&GenerateOptions {
        seed: 7,
        ..opts(0.05)
    });
    assert_ne!(
        a["extracts/transactions/dt=2026-11-27/part-000.csv"],
        c["extracts/transactions/dt=2026-11-27/part-000.csv"]
    );
}

#[test]
fn counts_balance_and_match_the_defect_entries() {
    for (rate, parts) in [(0.0, 1), (0.05, 2), (0.05, 3), (0.3, 2), (0.01, 1)] {
        let (truth, objects) = generate(&GenerateOptions {
            parts,
            ..opts(rate)
        });
        let es = entries(&objects);
        for (name, t) in &truth.tables {
            assert!(t.balances(), "{name} {rate} {parts}: {t:?}");
            let mine: Vec<&DefectEntry> = es.iter().filter(|e| e.table == *name).collect();
            let count =
                |f: &dyn Fn(&DefectEntry) -> bool| mine.iter().filter(|e| f(e)).count() as u64;
            assert_eq!(
                t.rows_quarantined,
                count(&|e| e.outcome == "quarantined"),
                "{name}"
            );
            assert_eq!(
                t.duplicates_removed,
                count(&|e| e.kind == "exact_duplicate" && e.outcome == "removed")
            );
            assert_eq!(t.conflicts_resolved, count(&|e| e.kind == "conflict_loser"));
            let reasons: u64 = t.quarantined_by_reason.values().sum();
            assert_eq!(
                reasons,
                mine.iter().map(|e| e.reasons.len() as u64).sum::<u64>()
            );
            let rows: u64 = truth
                .files
                .iter()
                .filter(|f| f.table == *name && f.rejected.is_none())
                .map(|f| f.rows)
                .sum();
            assert_eq!(rows, t.rows_read);
            assert_eq!(
                t.fields.len(),
                Table::ALL
                    .iter()
                    .find(|x| x.name() == name)
                    .map_or(0, |x| x.columns().len())
            );
        }
        let kept = truth.tables["products"].rows_kept;
        assert_eq!(
            kept,
            Catalog::new(42, day()).products.len() as u64,
            "every referenced product survives"
        );
        assert_eq!(
            truth.tables["customers"].rows_kept, 200,
            "every referenced customer survives"
        );
    }
}

#[test]
fn every_defect_kind_appears() {
    let (truth, objects) = generate(&opts(0.05));
    let es = entries(&objects);
    for table in Table::ALL {
        let mine: Vec<&DefectEntry> = es.iter().filter(|e| e.table == table.name()).collect();
        let kinds: BTreeSet<&str> = mine.iter().map(|e| e.kind.as_str()).collect();
        let mut want = vec![
            "null_marker",
            "format",
            "invalid",
            "exact_duplicate",
            "conflict_winner",
            "conflict_loser",
            "malformed_row",
        ];
        if table == Table::Transactions {
            want.extend(["orphan_customer", "orphan_product", "late_correction"]);
        }
        for k in want {
            assert!(kinds.contains(k), "{} lacks {k}", table.name());
        }
        let details: BTreeSet<&str> = mine.iter().filter_map(|e| e.detail.as_deref()).collect();
        assert_eq!(details.len(), 11, "{}: {details:?}", table.name());
        for (req, outcome) in [(true, "quarantined"), (false, "")] {
            let markers: BTreeSet<&str> = mine
                .iter()
                .filter(|e| e.kind == "null_marker" && (e.outcome == "quarantined") == req)
                .filter(|_| !outcome.is_empty() || !req)
                .filter_map(|e| e.raw.as_deref())
                .collect();
            assert_eq!(
                markers.len(),
                NULL_MARKERS.len(),
                "{} required={req}: {markers:?}",
                table.name()
            );
        }
        for col in table.columns() {
            let formats = defects::format_count(col);
            let seen = mine
                .iter()
                .filter(|e| e.kind == "format" && e.column.as_deref() == Some(col.name))
                .count();
            assert!(
                seen >= formats,
                "{}.{} formats {seen} < {formats}",
                table.name(),
                col.name
            );
            let invalids = defects::invalid_count(col);
            let seen = mine
                .iter()
                .filter(|e| e.kind == "invalid" && e.column.as_deref() == Some(col.name))
                .count();
            assert!(
                seen >= invalids,
                "{}.{} invalid {seen} < {invalids}",
                table.name(),
                col.name
            );
            if col.need == Need::Required {
                assert!(
                    mine.iter()
                        .any(|e| e.reasons.contains(&format!("missing_{}", col.name))),
                    "missing_{}",
                    col.name
                );
            }
        }
        for o in ["fixed", "nulled", "quarantined", "removed", "kept"] {
            assert!(
                mine.iter().any(|e| e.outcome == o),
                "{} lacks outcome {o}",
                table.name()
            );
        }
    }
    assert!(
        es.iter()
            .any(|e| e.outcome == "defaulted" && e.expected.as_deref() == Some("0.00"))
    );
    let ok: Vec<&FileSummary> = truth
        .files
        .iter()
        .filter(|f| f.rejected.is_none())
        .collect();
    assert!(ok.iter().any(|f| f.encoding == "windows-1252"));
    assert!(ok.iter().any(|f| f.delimiter == ";"));
    assert!(ok.iter().any(|f| f.crlf));
    assert!(ok.iter().any(|f| f.bom));
    assert!(ok.iter().any(|f| !f.extra_columns.is_empty()));
    assert!(ok.iter().any(|f| {
        f.header
            .iter()
            .any(|h| h.trim() != h || h.chars().any(char::is_uppercase))
    }));
    let rejected: BTreeSet<&str> = truth
        .files
        .iter()
        .filter_map(|f| f.rejected.as_deref())
        .collect();
    assert_eq!(
        rejected,
        BTreeSet::from(["missing_column", "not_csv", "undecodable"])
    );
}

#[test]
fn parts_read_back_as_the_truth_says() {
    for gzip in [false, true] {
        let (truth, objects) = generate(&GenerateOptions { gzip, ..opts(0.05) });
        let marker: serde_json::Value =
            serde_json::from_slice(&objects["extracts/dt=2026-11-27/_SUCCESS"]).unwrap_or_default();
        let listed: Vec<&str> = marker["files"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        assert_eq!(
            listed,
            truth
                .files
                .iter()
                .map(|f| f.object.as_str())
                .collect::<Vec<_>>()
        );
        let es = entries(&objects);
        let mut cells: BTreeMap<(String, u64), BTreeMap<String, String>> = BTreeMap::new();
        for f in truth.files.iter().filter(|f| f.rejected.is_none()) {
            let bytes = &objects[&f.object];
            assert_eq!(bytes.starts_with(&[0x1f, 0x8b]), gzip);
            let (header, rows) = read_part(f, bytes);
            assert_eq!(header, f.header);
            assert_eq!(rows.len() as u64, f.rows, "{}", f.object);
            for (i, r) in rows.iter().enumerate() {
                let named: BTreeMap<String, String> =
                    f.columns.iter().cloned().zip(r.iter().cloned()).collect();
                cells.insert((f.object.clone(), i as u64 + 2), named);
            }
        }
        for e in &es {
            let row = cells
                .get(&(e.object.clone(), e.line))
                .unwrap_or_else(|| panic!("no line for {e:?}"));
            if let (Some(col), Some(raw)) = (&e.column, &e.raw) {
                assert_eq!(row.get(col), Some(raw), "{e:?}");
            }
            if e.column.as_deref() == Some("uf") && e.outcome == "quarantined" {
                // Without a readable uf, title case must already be the official spelling.
                let city = row.get("city").cloned().unwrap_or_default();
                assert_eq!(table::title_words(&city), city, "{e:?}");
            }
            if let Some(key) = &e.key {
                let kc = if e.table == "customers" {
                    "customer_id"
                } else if e.table == "products" {
                    "product_code"
                } else {
                    "transaction_id"
                };
                let raw = row.get(kc).cloned().unwrap_or_default();
                assert_eq!(
                    raw.trim().to_uppercase().replace([' ', '-'], ""),
                    key.replace('-', ""),
                    "{e:?}"
                );
            }
        }
    }
}

#[test]
fn clean_days_have_only_late_corrections() {
    let (truth, objects) = generate(&GenerateOptions {
        bad_files: false,
        ..opts(0.0)
    });
    let es = entries(&objects);
    assert!(es.iter().all(|e| e.kind == "late_correction"));
    let late = es.len() as u64;
    assert!(late >= 5, "about 0.5 % of 2000 rows: {late}");
    let t = &truth.tables["transactions"];
    assert_eq!(
        (t.rows_read, t.rows_kept, t.rows_quarantined),
        (2000 + late, 2000 + late, 0)
    );
    assert!(
        t.fields
            .values()
            .all(|f| f.normalized == 0 && f.nulled == 0)
    );
    for f in &truth.files {
        assert_eq!(
            (f.encoding.as_str(), f.delimiter.as_str(), f.crlf, f.bom),
            ("utf-8", ",", false, false)
        );
    }
    let gz = generate(&GenerateOptions {
        gzip: true,
        bad_files: false,
        ..opts(0.0)
    })
    .1;
    for (name, bytes) in &objects {
        if name.ends_with(".csv") {
            let z = &gz[&format!("{name}.gz")];
            assert!(
                z.len() * 2 < bytes.len(),
                "gzip compresses: {} of {}",
                z.len(),
                bytes.len()
            );
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(&z[..])
                .read_to_end(&mut plain)
                .unwrap_or_default();
            assert_eq!(&plain, bytes);
        }
    }
}

#[test]
fn late_corrections_restate_yesterdays_lines() {
    let (_, objects) = generate(&opts(0.0));
    let es = entries(&objects);
    let catalog = Catalog::new(42, day());
    let mut yesterday = transactions::TxDay::new(42, 200, &catalog);
    for e in es.iter().filter(|e| e.kind == "late_correction") {
        let key = e.key.clone().unwrap_or_default();
        assert!(key.starts_with("TX-20261126-"), "{key}");
        let i: u64 = key[12..].parse::<u64>().unwrap_or(0) - 1;
        let before = yesterday.line(day() - chrono::Duration::days(1), i);
        assert_eq!(before[7].as_deref(), Some("completed"));
        assert!(matches!(e.raw.as_deref(), Some("refunded" | "cancelled")));
    }
}

#[test]
fn dates_and_options_are_checked() {
    let bad = GenerateOptions {
        defect_rate: 1.5,
        ..GenerateOptions::default()
    };
    assert!(matches!(
        bad.validate(),
        Err(GenerateError::InvalidOptions(_))
    ));
    let bad = GenerateOptions {
        parts: 0,
        ..GenerateOptions::default()
    };
    assert!(generate_day(&bad, day(), &MemSink::default()).is_err());
}

#[test]
fn a_large_part_streams_through_bounded_writes() {
    let sink = CountSink::default();
    let o = GenerateOptions {
        rows: 100_000,
        parts: 1,
        defect_rate: 0.05,
        customers: Some(5_000),
        ..GenerateOptions::default()
    };
    let truth = generate_day(&o, day(), &sink).unwrap_or_else(|e| panic!("{e}"));
    let (bytes, largest) = *sink.0.borrow();
    assert!(bytes > 10_000_000, "{bytes}");
    assert!(largest <= 300 * 1024, "largest single write {largest}");
    assert!(truth.tables.values().all(TableSummary::balances));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn generated_customers_pass_the_validators(seed in any::<u64>(), i in 0u64..10_000_000) {
        let row = customers::row(seed, i, day());
        let get = |c: &str| row[Table::Customers.col(c).unwrap_or(0)].clone().unwrap_or_default();
        let uf = get("uf");
        prop_assert!(br::is_uf(&uf));
        let cpf: Vec<u8> = get("cpf").bytes().map(|b| b - b'0').collect();
        let cpf: [u8; 11] = cpf.try_into().unwrap_or([1; 11]);
        prop_assert!(br::cpf_is_valid(&cpf));
        let phone = get("phone");
        prop_assert!(phone.starts_with("+55"));
        let ddd: u8 = phone[3..5].parse().unwrap_or(0);
        prop_assert!(br::ddds_of(&uf).any(|d| d == ddd));
        let sub = &phone[5..];
        prop_assert!((sub.len() == 9 && sub.starts_with('9')) || (sub.len() == 8 && matches!(sub.as_bytes()[0], b'2'..=b'5')));
        let cep = values::cep_digits(&get("cep")).unwrap_or(0);
        prop_assert!(get("cep").len() == 9 && br::cep_ranges_of(&uf).any(|(lo, hi)| (lo..=hi).contains(&(cep / 1000))));
        let city = get("city");
        prop_assert_eq!(br::canonical_municipality(&city, &uf), Some(city.as_str()));
        let email = get("email");
        let (local, domain) = email.split_once('@').unwrap_or(("", ""));
        prop_assert!(!local.is_empty() && domain.contains('.') && !email.contains(' ') && email == email.to_lowercase());
        let birth = get("birth_date");
        prop_assert!(("1940-01-01".."2008-01-01").contains(&birth.as_str()));
        prop_assert!(get("created_at") <= get("updated_at"));
    }

    #[test]
    fn generated_lines_are_plausible(seed in any::<u64>(), i in 0u64..1_000_000) {
        let catalog = Catalog::new(seed, day());
        let mut d = transactions::TxDay::new(seed, 500, &catalog);
        let row = d.line(day(), i);
        let get = |c: &str| row[Table::Transactions.col(c).unwrap_or(0)].clone().unwrap_or_default();
        let q: u32 = get("quantity").parse().unwrap_or(0);
        prop_assert!((1..=12).contains(&q));
        let price = values::parse_money(&get("unit_price")).unwrap_or(0);
        prop_assert!((200..=4000).contains(&price));
        prop_assert!(values::parse_money(&get("discount")).unwrap_or(-1) >= 0);
        let sold = values::parse_ts(&get("sold_at")).unwrap_or_default();
        prop_assert!(values::utc_to_local(sold).date() == day());
        prop_assert!(get("updated_at") >= get("sold_at"));
        prop_assert!(catalog.products.iter().any(|p| p.code == get("product_code")));
        prop_assert!(br::is_uf(&get("uf")));
        let city = get("city");
        prop_assert_eq!(br::canonical_municipality(&city, &get("uf")), Some(city.as_str()));
        let ean_ok = catalog.products.iter().all(|p| {
            let d: Vec<u8> = p.ean.bytes().map(|b| b - b'0').collect();
            d.try_into().map(|a: [u8; 13]| br::gtin13_is_valid(&a)).unwrap_or(false)
        });
        prop_assert!(ean_ok);
    }
}
