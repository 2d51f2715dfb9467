//! Generate extracts with defects, clean them, and compare with the generator's ground truth.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::Path;

use datashare::clean::Schemas;
use datashare::clean::columns::{quarantined_rows, value_at};
use datashare::clean::report::QualityReport;
use datashare::clean::validators::Value;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value as Json;

use crate::{datashare_cmd, run_ok};

/// Curated rows of a table: key → column → canonical text (None: null).
type Curated = HashMap<String, BTreeMap<String, Option<String>>>;

fn read_curated(path: &Path, key: &str) -> Curated {
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let mut out = Curated::new();
    for batch in reader {
        let batch = batch.unwrap();
        let schema = batch.schema();
        for r in 0..batch.num_rows() {
            let mut row = BTreeMap::new();
            for (i, f) in schema.fields().iter().enumerate() {
                row.insert(
                    f.name().clone(),
                    value_at(batch.column(i).as_ref(), r).map(|v| v.canonical()),
                );
            }
            let k = row[key].clone().expect("curated key is never null");
            assert!(
                out.insert(k.clone(), row).is_none(),
                "key {k} twice in curated data"
            );
        }
    }
    out
}

/// Quarantined rows of a table: (object, line) → reasons.
fn read_quarantine(path: &Path, columns: usize) -> HashMap<(String, u64), Vec<String>> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let mut out = HashMap::new();
    for batch in reader {
        for q in quarantined_rows(&batch.unwrap(), columns) {
            assert!(!q.reasons.is_empty());
            out.insert((q.object, q.line), q.reasons);
        }
    }
    out
}

#[test]
fn cleaning_matches_the_ground_truth_of_injected_defects() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("raw");
    let out = dir.path().join("out");
    let dt = "2026-11-27";
    run_ok(datashare_cmd().args(["generate", "--out"]).arg(&raw).args([
        "--date",
        dt,
        "--rows",
        "3000",
        "--parts",
        "3",
        "--defect-rate",
        "0.05",
        "--seed",
        "7",
    ]));
    run_ok(
        datashare_cmd()
            .args(["clean", "--input"])
            .arg(&raw)
            .arg("--output")
            .arg(&out)
            .args(["--date", dt]),
    );

    let schemas = Schemas::builtin().unwrap();
    let report: QualityReport = serde_json::from_slice(
        &std::fs::read(out.join(format!("reports/dt={dt}/quality.json"))).unwrap(),
    )
    .unwrap();
    let truth: Json = serde_json::from_slice(
        &std::fs::read(raw.join(format!("truth/dt={dt}/summary.json"))).unwrap(),
    )
    .unwrap();

    // Counts: exactly the ground truth, and the identity holds.
    for (table, expected) in truth["tables"].as_object().unwrap() {
        let got = &report.tables[table];
        assert!(got.balances(), "{table} balances");
        let got_json = serde_json::to_value(got).unwrap();
        for field in [
            "rows_read",
            "rows_kept",
            "rows_quarantined",
            "duplicates_removed",
            "conflicts_resolved",
        ] {
            assert_eq!(got_json[field], expected[field], "{table}.{field}");
        }
        assert_eq!(
            got_json["quarantined_by_reason"], expected["quarantined_by_reason"],
            "{table} reasons"
        );
        for (col, counts) in expected["fields"].as_object().unwrap() {
            assert_eq!(&got_json["fields"][col], counts, "{table}.fields.{col}");
        }
    }
    // Files: encoding and delimiter as written.
    let files: HashMap<String, &datashare::clean::FileReport> = report
        .tables
        .values()
        .flat_map(|t| t.files.iter())
        .map(|f| (f.object.clone(), f))
        .collect();
    for f in truth["files"].as_array().unwrap() {
        let got = files[f["object"].as_str().unwrap()];
        assert_eq!(
            got.encoding,
            f["encoding"].as_str().unwrap(),
            "{}",
            got.object
        );
        assert_eq!(
            got.delimiter,
            f["delimiter"].as_str().unwrap(),
            "{}",
            got.object
        );
        assert_eq!(got.gzip, f["gzip"].as_bool().unwrap(), "{}", got.object);
        let extra: Vec<String> = f["extra_columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().trim().to_lowercase())
            .collect();
        assert_eq!(got.extra_columns, extra, "{}", got.object);
    }

    // Every injected defect: fixed, nulled, defaulted, quarantined with the right reasons, or removed.
    let mut curated = HashMap::new();
    let mut quarantine = HashMap::new();
    for name in ["transactions", "products", "customers"] {
        let t = schemas.table(name).unwrap();
        curated.insert(
            name,
            read_curated(
                &out.join(format!("curated/{name}/dt={dt}/part-00000.parquet")),
                &t.columns[t.key].name,
            ),
        );
        quarantine.insert(
            name,
            read_quarantine(
                &out.join(format!("quarantine/{name}/dt={dt}/part-00000.parquet")),
                t.columns.len(),
            ),
        );
    }
    let defects =
        std::fs::read_to_string(raw.join(format!("truth/dt={dt}/defects.jsonl"))).unwrap();
    let mut kinds = BTreeSet::new();
    let mut checked = 0;
    for line in defects.lines().filter(|l| !l.trim().is_empty()) {
        let d: Json = serde_json::from_str(line).unwrap();
        let table = d["table"].as_str().unwrap();
        kinds.insert(format!("{table}:{}", d["kind"].as_str().unwrap()));
        let key = d["key"].as_str();
        let column = d["column"].as_str();
        match d["outcome"].as_str().unwrap() {
            "fixed" | "defaulted" => {
                let row = &curated[table][key.unwrap()];
                assert_eq!(
                    row[column.unwrap()].as_deref(),
                    d["expected"].as_str(),
                    "{d}"
                );
            }
            "nulled" => {
                let row = &curated[table][key.unwrap()];
                assert_eq!(row[column.unwrap()], None, "{d}");
            }
            "quarantined" => {
                let place = (
                    d["object"].as_str().unwrap().to_string(),
                    d["line"].as_u64().unwrap(),
                );
                let got: BTreeSet<&str> = quarantine[table]
                    .get(&place)
                    .unwrap_or_else(|| panic!("not quarantined: {d}"))
                    .iter()
                    .map(String::as_str)
                    .collect();
                let want: BTreeSet<&str> = d["reasons"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap())
                    .collect();
                assert_eq!(got, want, "{d}");
            }
            "kept" => {
                assert!(curated[table].contains_key(key.unwrap()), "{d}");
            }
            "removed" => {
                // The key survives through its winner (or another copy); counts are checked above.
                if let Some(k) = key {
                    assert!(curated[table].contains_key(k), "{d}");
                }
            }
            other => panic!("unknown outcome {other}: {d}"),
        }
        checked += 1;
    }
    assert!(checked > 50, "the generator injected defects ({checked})");
    for kind in [
        "null_marker",
        "format",
        "invalid",
        "exact_duplicate",
        "conflict_loser",
        "malformed_row",
    ] {
        assert!(
            kinds.iter().any(|k| k.ends_with(&format!(":{kind}"))),
            "defect kind {kind} injected: {kinds:?}"
        );
    }

    // No invalid value left in curated data: each value is already normal (validating it again changes nothing).
    for name in ["transactions", "products", "customers"] {
        let t = schemas.table(name).unwrap();
        for row in curated[name].values() {
            for c in &t.columns {
                let Some(text) = &row[&c.name] else {
                    assert!(!c.required, "{name}.{} is required", c.name);
                    continue;
                };
                let uf = row.get("uf").and_then(|u| u.as_deref());
                let again = c
                    .kind
                    .validate(text, &c.options, uf, chrono::NaiveDate::MAX)
                    .unwrap_or_else(|_| panic!("{name}.{} = {text:?} is not valid", c.name));
                assert_eq!(&again.canonical(), text, "{name}.{} is stable", c.name);
                if let Value::Str(s) = again {
                    assert_eq!(s.trim(), s);
                }
            }
        }
    }
}

#[test]
fn a_structurally_invalid_file_is_named_and_the_others_still_clean() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("raw");
    let out = dir.path().join("out");
    let dt = "2026-11-27";
    run_ok(datashare_cmd().args(["generate", "--out"]).arg(&raw).args([
        "--date",
        dt,
        "--rows",
        "500",
        "--parts",
        "2",
        "--bad-files",
        "--seed",
        "3",
    ]));
    let output = datashare_cmd()
        .args(["clean", "--input"])
        .arg(&raw)
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!output.status.success(), "exit code says something failed");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for kind in ["missing_column", "not_csv", "undecodable"] {
        assert!(stderr.contains(kind), "stderr names {kind}: {stderr}");
    }
    let report: QualityReport = serde_json::from_slice(
        &std::fs::read(out.join(format!("reports/dt={dt}/quality.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(report.failed_files().count(), 3);
    for t in report.tables.values() {
        assert!(t.rows_kept > 0, "the good parts were still cleaned");
        assert!(t.balances());
    }
}

#[test]
fn the_generators_brands_are_the_known_brands_of_the_schema() {
    let schemas = Schemas::builtin().unwrap();
    let brand = schemas
        .table("products")
        .unwrap()
        .columns
        .iter()
        .find(|c| c.name == "brand")
        .unwrap();
    let mut known = brand.options.known.clone();
    let mut generated: Vec<String> = datashare::generate::known_brands()
        .iter()
        .map(|b| b.to_string())
        .collect();
    known.sort();
    generated.sort();
    assert_eq!(
        known, generated,
        "config/tables.toml `known` brands and the generator's catalog agree"
    );
}
