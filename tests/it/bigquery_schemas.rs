//! The BigQuery schemas of the external tables (`terraform/schemas/`) are the writer's own:
//! built here from the same types the Parquet writers use (curated: `config/tables.toml`
//! through `clean::columns::curated_schema`; products: `products::schema`), and compared with
//! the committed files. `UPDATE_SCHEMAS=1 cargo test --test it bigquery_schemas` rewrites them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use arrow_schema::{DataType, Schema};
use datashare::clean::columns::curated_schema;
use datashare::clean::schema::Schemas;
use datashare::events::ProductKind;
use datashare::products::schema;
use serde::Serialize;

/// One column of a BigQuery JSON schema.
#[derive(Debug, Serialize, PartialEq)]
struct BqField {
    name: String,
    #[serde(rename = "type")]
    ty: &'static str,
    mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
}

/// The BigQuery type that reads a Parquet column written from this Arrow type, or `None` when
/// BigQuery has no exact counterpart (the generator then refuses the schema).
fn bq_type(dt: &DataType) -> Option<&'static str> {
    Some(match dt {
        DataType::Utf8 | DataType::LargeUtf8 => "STRING",
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => "INTEGER",
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 => "INTEGER",
        DataType::Float32 | DataType::Float64 => "FLOAT",
        DataType::Boolean => "BOOLEAN",
        DataType::Date32 => "DATE",
        DataType::Timestamp(_, Some(_)) => "TIMESTAMP",
        DataType::Timestamp(_, None) => "DATETIME",
        // NUMERIC: 38 digits, scale up to 9, at most 29 before the point.
        DataType::Decimal128(p, s) if *s >= 0 && *s <= 9 && i16::from(*p) - i16::from(*s) <= 29 => {
            "NUMERIC"
        }
        DataType::Decimal128(p, s) if *s >= 0 && *s <= 38 && *p <= 76 => "BIGNUMERIC",
        _ => return None,
    })
}

fn bq_fields(schema: &Schema, descriptions: &BTreeMap<&str, &str>) -> Vec<BqField> {
    schema
        .fields()
        .iter()
        .map(|f| BqField {
            name: f.name().clone(),
            ty: bq_type(f.data_type()).unwrap_or_else(|| {
                panic!(
                    "column {}: no BigQuery type for {}",
                    f.name(),
                    f.data_type()
                )
            }),
            mode: if f.is_nullable() {
                "NULLABLE"
            } else {
                "REQUIRED"
            },
            description: descriptions.get(f.name().as_str()).map(|d| d.to_string()),
        })
        .collect()
}

/// Every product kind. The match is exhaustive on purpose: a new kind does not compile here
/// until it is listed, so it cannot ship without its external table's schema.
fn product_kinds() -> Vec<ProductKind> {
    let kinds = ProductKind::ALL;
    for k in kinds {
        match k {
            ProductKind::Daily | ProductKind::Monthly | ProductKind::MonthlyBrands => {}
        }
    }
    kinds.to_vec()
}

/// Every schema file the writers imply: `curated/<table>.json`, `products/<kind>.json`.
fn generated() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let tables = Schemas::builtin().expect("the built-in table schemas");
    for name in tables.names() {
        let table = tables.table(name).expect("a listed table");
        let fields = bq_fields(&curated_schema(table), &BTreeMap::new());
        out.insert(format!("curated/{name}.json"), render(&fields));
    }
    for kind in product_kinds() {
        let s = schema::of(kind);
        let descriptions: BTreeMap<&str, &str> =
            s.columns.iter().map(|c| (c.name, c.description)).collect();
        let fields = bq_fields(&s.arrow_schema(), &descriptions);
        out.insert(format!("products/{}.json", kind.as_str()), render(&fields));
    }
    out
}

fn render(fields: &[BqField]) -> String {
    let mut text = serde_json::to_string_pretty(fields).expect("plain data serializes");
    text.push('\n');
    text
}

fn schemas_dir() -> PathBuf {
    crate::root().join("terraform/schemas")
}

/// The committed files under `terraform/schemas/`, by relative path.
fn committed() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for zone in ["curated", "products"] {
        let dir = schemas_dir().join(zone);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.ends_with(".json") {
                let text = std::fs::read_to_string(e.path()).expect("a readable schema file");
                out.insert(format!("{zone}/{name}"), text);
            }
        }
    }
    out
}

/// Writes the generated files and removes committed ones no writer produces any more.
fn update(generated: &BTreeMap<String, String>) {
    for (rel, _) in committed() {
        if !generated.contains_key(&rel) {
            std::fs::remove_file(schemas_dir().join(&rel)).expect("remove a stale schema");
        }
    }
    for (rel, text) in generated {
        let path = schemas_dir().join(rel);
        std::fs::create_dir_all(path.parent().expect("a folder")).expect("create the folder");
        std::fs::write(&path, text).expect("write a schema");
    }
}

/// What differs between two sets of schema files, one line per file.
fn drift(want: &BTreeMap<String, String>, have: &BTreeMap<String, String>) -> Vec<String> {
    let mut problems = Vec::new();
    for (rel, text) in want {
        match have.get(rel) {
            None => problems.push(format!("terraform/schemas/{rel}: missing")),
            Some(t) if t != text => problems.push(format!("terraform/schemas/{rel}: differs")),
            Some(_) => {}
        }
    }
    for rel in have.keys().filter(|r| !want.contains_key(*r)) {
        problems.push(format!("terraform/schemas/{rel}: no writer produces it"));
    }
    problems
}

#[test]
fn external_table_schemas_are_the_writers() {
    let want = generated();
    if std::env::var_os("UPDATE_SCHEMAS").is_some_and(|v| v == "1") {
        update(&want);
    }
    let problems = drift(&want, &committed());
    assert!(
        problems.is_empty(),
        "the BigQuery schemas drifted from the writers (run `UPDATE_SCHEMAS=1 cargo test --test it \
         bigquery_schemas` and commit terraform/schemas/):\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_writers_types_map_to_bigquery() {
    let files = generated();
    let tables = Schemas::builtin().unwrap();
    let mut want: Vec<String> = tables
        .names()
        .map(|t| format!("curated/{t}.json"))
        .collect();
    want.extend(
        product_kinds()
            .iter()
            .map(|k| format!("products/{}.json", k.as_str())),
    );
    want.sort();
    assert_eq!(files.keys().cloned().collect::<Vec<_>>(), want);
    assert!(want.contains(&"curated/transactions.json".to_string()));
    assert!(want.contains(&"products/daily.json".to_string()));
    let daily: Vec<serde_json::Value> =
        serde_json::from_str(&files["products/daily.json"]).unwrap();
    let ty = |name: &str| {
        daily
            .iter()
            .find(|f| f["name"] == name)
            .map(|f| (f["type"].clone(), f["mode"].clone()))
    };
    assert_eq!(ty("date"), Some(("DATE".into(), "REQUIRED".into())));
    assert_eq!(ty("sold_at"), Some(("TIMESTAMP".into(), "REQUIRED".into())));
    assert_eq!(
        ty("net_amount"),
        Some(("NUMERIC".into(), "REQUIRED".into()))
    );
    assert_eq!(ty("unit_size"), Some(("STRING".into(), "NULLABLE".into())));
    // The hive partition keys come from the object names, never from the files.
    for text in files.values() {
        let fields: Vec<serde_json::Value> = serde_json::from_str(text).unwrap();
        assert!(
            fields
                .iter()
                .all(|f| f["name"] != "dt" && f["name"] != "partner"),
            "{text}"
        );
    }
}

#[test]
fn the_drift_check_can_fail() {
    let want = generated();
    let mut have = want.clone();
    have.insert("curated/transactions.json".into(), "[]\n".into());
    have.remove("products/monthly.json");
    have.insert("curated/orders.json".into(), "[]\n".into());
    let problems = drift(&want, &have);
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(bq_type(&DataType::Binary).is_none());
    assert_eq!(bq_type(&DataType::Decimal128(40, 2)), Some("BIGNUMERIC"));
}
