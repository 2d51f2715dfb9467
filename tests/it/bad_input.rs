//! Hostile and unlucky input through the cleaning engine: each class ends in its quarantine
//! reason or a permanent file error, the other parts are cleaned, and the heap the engine holds
//! stays under 200 MiB + 40 bytes per distinct key (measured by the counting allocator), plus
//! what the staged-rows budget holds (`Limits::stage_memory_bytes`; these parts' are small).

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use datashare::clean::local::{LocalBatch, run_local_batch_with};
use datashare::clean::report::TableReport;
use datashare::clean::{Limits, Schemas};

use crate::alloc::peak_heap;

const DT: &str = "2026-11-27";
const PRODUCTS: &str = "product_code,ean,name,brand,manufacturer,segment,unit_size,updated_at\n";
const CUSTOMERS: &str =
    "customer_id,name,email,cpf,phone,birth_date,cep,city,uf,created_at,updated_at\n";
const TRANSACTIONS: &str = "transaction_id,order_id,customer_id,product_code,quantity,unit_price,discount,status,sold_at,delivery_cep,city,uf,updated_at\n";

/// A good transactions row with id `TX-<i>`.
fn tx(i: usize) -> String {
    format!(
        "TX-{i},O-{i},C-1,OHB-000101,1,7.99,0,completed,2026-11-27 10:00:00,,São Paulo,SP,2026-11-27 10:00:00\n"
    )
}

/// A raw folder with one good part per table, to which a test adds its hostile parts.
struct Batch {
    _dir: tempfile::TempDir,
    raw: PathBuf,
    out: PathBuf,
    listed: Vec<String>,
}

impl Batch {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Batch {
            raw: dir.path().join("raw"),
            out: dir.path().join("out"),
            _dir: dir,
            listed: Vec::new(),
        };
        b.add(
            "products",
            "part-000.csv",
            format!("{PRODUCTS}OHB-000101,7894900011517,Hungry Cola,Hungry,OuchHungry,Refrigerantes,350ml,2026-11-01 10:00:00\n").as_bytes(),
        );
        b.add(
            "customers",
            "part-000.csv",
            format!("{CUSTOMERS}C-1,Ana,ana@x.com.br,529.982.247-25,(11) 91234-5678,1990-01-02,01001-000,sao paulo,SP,2020-01-01,2026-01-01\n").as_bytes(),
        );
        let good: String = (0..100).map(tx).collect();
        b.add(
            "transactions",
            "part-000.csv",
            format!("{TRANSACTIONS}{good}").as_bytes(),
        );
        b
    }

    fn object(table: &str, file: &str) -> String {
        format!("extracts/{table}/dt={DT}/{file}")
    }

    fn add(&mut self, table: &str, file: &str, bytes: &[u8]) -> String {
        let name = Self::object(table, file);
        let path = self.raw.join(&name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, bytes).unwrap();
        self.listed.push(name.clone());
        name
    }

    /// Writes the marker (listing `listed` and `extra`) and runs the batch in this thread;
    /// returns the outcome, the peak heap and the time taken.
    fn run(&self, extra: &[String], limits: &Limits) -> (LocalBatch, usize, Duration) {
        let marker = self.raw.join(format!("extracts/dt={DT}/_SUCCESS"));
        fs::create_dir_all(marker.parent().unwrap()).unwrap();
        let files: Vec<&String> = self.listed.iter().chain(extra).collect();
        fs::write(
            &marker,
            serde_json::to_vec(&serde_json::json!({"dt": DT, "files": files})).unwrap(),
        )
        .unwrap();
        let schemas = Schemas::builtin().unwrap();
        let dt = NaiveDate::parse_from_str(DT, "%Y-%m-%d").unwrap();
        let started = Instant::now();
        let (batch, peak) = peak_heap(|| {
            run_local_batch_with(&schemas, &self.raw, &self.out, dt, limits).expect("batch runs")
        });
        let took = started.elapsed();
        eprintln!("peak heap {:.1} MiB, {took:?}", peak as f64 / 1048576.0);
        (batch, peak, took)
    }
}

/// 200 MiB + 40 bytes per distinct key.
fn bound(distinct_keys: usize) -> usize {
    (200 << 20) + 40 * distinct_keys
}

fn table<'a>(b: &'a LocalBatch, name: &str) -> &'a TableReport {
    &b.report.tables[name]
}

/// The good parts of every table were cleaned: their rows are kept.
fn others_cleaned(b: &LocalBatch) {
    for t in ["products", "customers"] {
        assert!(table(b, t).rows_kept >= 1, "{t}");
    }
    assert!(table(b, "transactions").rows_kept >= 100);
    for t in b.report.tables.values() {
        assert!(t.balances(), "{t:?}");
    }
}

fn file_error<'a>(b: &'a LocalBatch, object: &str) -> Option<&'a str> {
    b.report
        .tables
        .values()
        .flat_map(|t| &t.files)
        .find(|f| f.object == object)
        .and_then(|f| f.error.as_ref())
        .map(|e| e.kind.as_str())
}

/// Gzip members of `chunk` repeated `times`: a small file that expands `times`-fold.
fn gzip_bomb(head: &[u8], chunk: &[u8], times: usize) -> Vec<u8> {
    let gz = |bytes: &[u8]| {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    };
    let member = gz(chunk);
    let mut out = gz(head);
    for _ in 0..times {
        out.extend_from_slice(&member);
    }
    out
}

#[test]
fn a_gzip_that_expands_past_the_limits_is_rejected_as_too_large() {
    let mut b = Batch::new();
    // 1 MiB of identical rows per member: 1 GiB from about 1 MB of gzip.
    let rows: String = std::iter::repeat_n(tx(7), (1 << 20) / tx(7).len()).collect();
    let ratio = b.add(
        "transactions",
        "part-001.csv.gz",
        &gzip_bomb(TRANSACTIONS.as_bytes(), rows.as_bytes(), 1024),
    );
    // A part that compresses normally but is larger than the part limit.
    let big: String = (1000..60_000).map(tx).collect();
    let size = b.add(
        "transactions",
        "part-002.csv",
        format!("{TRANSACTIONS}{big}").as_bytes(),
    );
    let limits = Limits {
        max_part_bytes: 4 << 20,
        ..Limits::default()
    };
    let (batch, peak, _) = b.run(&[], &limits);
    assert_eq!(file_error(&batch, &ratio), Some("too_large"));
    assert_eq!(file_error(&batch, &size), Some("too_large"));
    others_cleaned(&batch);
    assert!(peak < bound(102), "peak heap {peak}");
    // With the default limits a bomb of one endless line is stopped by its ratio, after 64 MiB.
    let mut b = Batch::new();
    let name = b.add(
        "transactions",
        "part-001.csv.gz",
        &gzip_bomb(TRANSACTIONS.as_bytes(), &vec![b'a'; 1 << 20], 8 * 1024),
    );
    let (batch, peak, _) = b.run(&[], &Limits::default());
    assert_eq!(file_error(&batch, &name), Some("too_large"));
    others_cleaned(&batch);
    assert!(peak < bound(102), "peak heap {peak}");
}

#[test]
fn long_and_malformed_lines_are_quarantined_one_by_one() {
    let mut b = Batch::new();
    let mut part = TRANSACTIONS.as_bytes().to_vec();
    // One 40 MiB line, then 300 lines of 100 KiB... past the 64 KiB limit of this test, an
    // unclosed quote whose record would grow past it, and good rows between them.
    part.extend(std::iter::repeat_n(b'x', 40 << 20));
    part.extend_from_slice(b"\n");
    part.extend_from_slice(tx(1000).as_bytes());
    let long = format!("TX-1,{}\n", "y".repeat(100 << 10));
    for i in 0..300 {
        part.extend_from_slice(long.as_bytes());
        part.extend_from_slice(tx(2000 + i).as_bytes());
    }
    part.extend_from_slice(format!("\"TX-9,{}\n", "z".repeat(40 << 10)).as_bytes());
    part.extend_from_slice(format!("{}\n", "w".repeat(40 << 10)).as_bytes());
    part.extend_from_slice(tx(3000).as_bytes());
    let name = b.add("transactions", "part-001.csv", &part);
    let limits = Limits {
        max_record_bytes: 64 << 10,
        ..Limits::default()
    };
    let (batch, peak, _) = b.run(&[], &limits);
    let t = table(&batch, "transactions");
    let file = t.files.iter().find(|f| f.object == name).unwrap();
    assert_eq!(file.rows_too_long, 301);
    assert!(file.error.is_none());
    // The 301 long lines, the unclosed quote and the line after it (one field).
    assert_eq!(t.quarantined_by_reason["malformed_row"], 303);
    assert_eq!(t.rows_kept, 100 + 302);
    others_cleaned(&batch);
    assert!(peak < bound(402), "peak heap {peak}");
    // With the default limit (1 MiB), the 40 MiB line alone is too long.
    let (batch, peak, _) = b.run(&[], &Limits::default());
    let file = table(&batch, "transactions")
        .files
        .iter()
        .find(|f| f.object == name)
        .unwrap()
        .clone();
    assert_eq!(file.rows_too_long, 1);
    assert!(peak < bound(402), "peak heap {peak}");
}

#[test]
fn a_key_shared_by_many_rows_takes_linear_time() {
    let mut b = Batch::new();
    let n = 200_000;
    let mut part = PRODUCTS.to_string();
    for i in 0..n {
        part.push_str(&format!(
            "OHB-000102,,Cola {i},Hungry,OuchHungry,Refrigerantes,,2026-11-01 10:00:00\n"
        ));
    }
    b.add("products", "part-001.csv", part.as_bytes());
    let (batch, peak, took) = b.run(&[], &Limits::default());
    let p = table(&batch, "products");
    assert_eq!(p.rows_kept, 2);
    assert_eq!(p.conflicts_resolved, n - 1);
    others_cleaned(&batch);
    assert!(peak < bound(103), "peak heap {peak}");
    // Quadratic dedup took minutes at this size; staging dominates now.
    assert!(took < Duration::from_secs(120), "took {took:?}");
}

#[test]
fn overflowing_amounts_and_quantities_are_invalid() {
    let mut b = Batch::new();
    let row = |id: &str, qty: &str, price: &str, discount: &str| {
        format!(
            "{id},O-1,C-1,OHB-000101,{qty},\"{price}\",\"{discount}\",completed,2026-11-27 10:00:00,,São Paulo,SP,\n"
        )
    };
    let rows = [
        row("TX-A1", "1", "-92233720368547758.99", "0"),
        row("TX-A2", "1", "92233720368547758.99", "0"),
        row("TX-A3", "1", "10000000000000000.00", "0"),
        row("TX-A4", "1", "7.99", "99999999999999999999999"),
        row("TX-A5", "100001", "7.99", "0"),
        row("TX-A6", "92233720368547758", "7.99", "0"),
        row("TX-A7", "100000", "9999999999999999.99", "0"),
    ]
    .concat();
    b.add(
        "transactions",
        "part-001.csv",
        format!("{TRANSACTIONS}{rows}").as_bytes(),
    );
    let (batch, peak, _) = b.run(&[], &Limits::default());
    let t = table(&batch, "transactions");
    assert_eq!(t.quarantined_by_reason["invalid_unit_price"], 3);
    assert_eq!(t.quarantined_by_reason["invalid_discount"], 1);
    assert_eq!(t.quarantined_by_reason["invalid_quantity"], 2);
    // The largest values that fit are kept.
    assert_eq!(t.rows_kept, 101);
    others_cleaned(&batch);
    assert!(peak < bound(110), "peak heap {peak}");
}

#[test]
fn dates_outside_years_1_to_9999_are_invalid() {
    let mut b = Batch::new();
    let row = |id: &str, sold_at: &str| {
        format!("{id},O-1,C-1,OHB-000101,1,7.99,0,completed,{sold_at},,São Paulo,SP,\n")
    };
    let rows = [
        row("TX-D1", "0000-01-01 10:00:00"),
        row("TX-D2", "9999-12-31T23:00:00-03:00"),
        row("TX-D3", "0001-01-01T00:00:00+01:00"),
        row("TX-D4", "0001-01-01T00:00:00Z"),
        row("TX-D5", "9999-12-31T23:59:59Z"),
    ]
    .concat();
    b.add(
        "transactions",
        "part-001.csv",
        format!("{TRANSACTIONS}{rows}").as_bytes(),
    );
    b.add(
        "customers",
        "part-001.csv",
        format!("{CUSTOMERS}C-2,Bia,,,,0000-02-01,,Recife,PE,0000-01-01,2026-01-01\n").as_bytes(),
    );
    let (batch, peak, _) = b.run(&[], &Limits::default());
    let t = table(&batch, "transactions");
    assert_eq!(t.quarantined_by_reason["invalid_sold_at"], 3);
    assert_eq!(t.rows_kept, 102);
    let c = table(&batch, "customers");
    // birth_date is nulled, created_at quarantines the row.
    assert_eq!(c.fields["birth_date"].nulled, 1);
    assert_eq!(c.quarantined_by_reason["invalid_created_at"], 1);
    others_cleaned(&batch);
    assert!(peak < bound(110), "peak heap {peak}");
}

#[test]
fn invisible_key_prefixes_do_not_make_new_keys_and_nul_quarantines_the_row() {
    let mut b = Batch::new();
    let rows = [
        // The same rows as TX-1 and TX-2 of the good part, behind a BOM or a zero-width space.
        format!("\u{feff}{}", tx(1)),
        format!("\u{200b}{}", tx(2)),
        // A customer referenced with an invisible suffix is the same customer.
        "TX-X1,O-1,C-1\u{200d},OHB-000101,1,7.99,0,completed,2026-11-27 10:00:00,,São Paulo,SP,\n"
            .to_string(),
        // NUL in a column: invalid_<column>, even where invalid values are nulled.
        "TX-N1,O-1,C-1,OHB-000101,1,7.99,0,completed,2026-11-27 10:00:00,010\u{0}01-000,São Paulo,SP,\n"
            .to_string(),
        "TX-N2,O-\u{0}1,C-1,OHB-000101,1,7.99,0,completed,2026-11-27 10:00:00,,São Paulo,SP,\n"
            .to_string(),
    ]
    .concat();
    b.add(
        "transactions",
        "part-001.csv",
        format!("{TRANSACTIONS}{rows}").as_bytes(),
    );
    // NUL in a column the table ignores: malformed_row.
    b.add(
        "products",
        "part-001.csv",
        "product_code,ean,name,brand,manufacturer,segment,unit_size,updated_at,loja\nOHB-000103,,Zero,Hungry,OuchHungry,Refrigerantes,,,a\u{0}b\n".as_bytes(),
    );
    let (batch, peak, _) = b.run(&[], &Limits::default());
    let t = table(&batch, "transactions");
    assert_eq!(t.duplicates_removed, 2, "{t:?}");
    assert_eq!(t.fields["transaction_id"].normalized, 2);
    assert_eq!(t.fields["customer_id"].normalized, 1);
    assert!(!t.quarantined_by_reason.contains_key("unknown_customer"));
    assert_eq!(t.quarantined_by_reason["invalid_delivery_cep"], 1);
    assert_eq!(t.quarantined_by_reason["invalid_order_id"], 1);
    assert_eq!(t.rows_kept, 101);
    let p = table(&batch, "products");
    assert_eq!(p.quarantined_by_reason["malformed_row"], 1);
    others_cleaned(&batch);
    assert!(peak < bound(110), "peak heap {peak}");
}

#[test]
fn a_file_listed_twice_is_read_once_and_reported() {
    let mut b = Batch::new();
    let rows: String = (500..550).map(tx).collect();
    let name = b.add(
        "transactions",
        "part-001.csv",
        format!("{TRANSACTIONS}{rows}").as_bytes(),
    );
    let (batch, peak, _) = b.run(&[name.clone(), name.clone()], &Limits::default());
    let t = table(&batch, "transactions");
    assert_eq!(t.rows_read, 150);
    assert_eq!(t.duplicates_removed, 0);
    let listed: Vec<_> = t.files.iter().filter(|f| f.object == name).collect();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].listed_again, 2);
    let json = fs::read_to_string(batch.outputs.quality()).unwrap();
    assert!(json.contains("\"listed_again\": 2"), "{json}");
    others_cleaned(&batch);
    assert!(peak < bound(160), "peak heap {peak}");
}

#[test]
fn long_object_names_are_staged_or_rejected_by_name() {
    let mut b = Batch::new();
    // 250 bytes: a file name the platform holds, a staging name it would not without the hash.
    let file = format!("{}.csv", "p".repeat(246));
    let rows: String = (600..610).map(tx).collect();
    b.add(
        "transactions",
        &file,
        format!("{TRANSACTIONS}{rows}").as_bytes(),
    );
    // 300 bytes: listed, but no local file can have that name.
    let unholdable = Batch::object("transactions", &format!("{}.csv", "q".repeat(296)));
    let (batch, peak, _) = b.run(std::slice::from_ref(&unholdable), &Limits::default());
    assert_eq!(table(&batch, "transactions").rows_kept, 110);
    assert_eq!(file_error(&batch, &unholdable), Some("missing_object"));
    others_cleaned(&batch);
    assert!(peak < bound(120), "peak heap {peak}");
}
