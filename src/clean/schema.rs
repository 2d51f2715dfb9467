//! Table schemas declared in `config/tables.toml`, parsed and checked once at start-up.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::NaiveDate;
use serde::Deserialize;

use super::pattern::PatternRule;
use super::validators::{Kind, KindOptions};

/// The table schemas shipped with the project.
pub const DEFAULT_TABLES_TOML: &str = include_str!("../../config/tables.toml");

/// A schema file that cannot be used, with the table and column at fault.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The file could not be read.
    #[error("cannot read table schemas {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for the schema model.
    #[error("table schemas {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What the parser said.
        message: String,
    },
    /// The file parsed but a rule is inconsistent.
    #[error("table schemas: table `{table}`, column `{column}`: {problem}")]
    Invalid {
        /// The table.
        table: String,
        /// The column (or the table's own field).
        column: String,
        /// What is wrong.
        problem: String,
    },
}

/// What happens to a value no rule can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnInvalid {
    /// The row is quarantined with `invalid_<column>`.
    #[default]
    Quarantine,
    /// The value becomes null and the row is kept.
    Null,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    tables: BTreeMap<String, RawTable>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    key: String,
    version: Option<String>,
    columns: Vec<RawColumn>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColumn {
    name: String,
    kind: String,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    on_invalid: OnInvalid,
    default: Option<String>,
    references: Option<String>,
    #[serde(default)]
    upper: bool,
    #[serde(default)]
    positive: bool,
    #[serde(default)]
    non_negative: bool,
    max: Option<i64>,
    #[serde(default)]
    units: Vec<String>,
    #[serde(default)]
    values: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    known: Vec<String>,
    uf_column: Option<String>,
    min: Option<String>,
    #[serde(default)]
    not_future: bool,
    #[serde(default = "yes")]
    dictionary: bool,
    #[serde(default = "yes")]
    statistics: bool,
    pattern: Option<String>,
    #[serde(default)]
    normalize: Vec<String>,
    remove: Option<String>,
}

fn yes() -> bool {
    true
}

/// One column of a table: its validator and its rules.
#[derive(Debug, Clone)]
pub struct ColumnSchema {
    /// Header name, lower case.
    pub name: String,
    /// The validator.
    pub kind: Kind,
    /// Options of the validator.
    pub options: KindOptions,
    /// A null value quarantines the row.
    pub required: bool,
    /// What an unreadable value does.
    pub on_invalid: OnInvalid,
    /// Canonical text used for a null value.
    pub default: Option<String>,
    /// Table whose key this column must reference.
    pub references: Option<String>,
    /// Dictionary-encode the column in Parquet (off for nearly unique values).
    pub dictionary: bool,
    /// Write the column's min/max statistics in Parquet (off where they prune nothing).
    pub statistics: bool,
}

/// One table: its columns, key and version column.
#[derive(Debug, Clone)]
pub struct TableSchema {
    /// Table name, as in the object layout.
    pub name: String,
    /// Columns in declaration order (the order of curated output).
    pub columns: Vec<ColumnSchema>,
    /// Index of the key column.
    pub key: usize,
    /// Index of the column that picks the winner among key duplicates.
    pub version: Option<usize>,
}

impl TableSchema {
    /// Finds a column's index by name.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// Columns that reference another table, with that table's name.
    pub fn references(&self) -> impl Iterator<Item = (usize, &str)> {
        self.columns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.references.as_deref().map(|t| (i, t)))
    }
}

/// Every table schema, by name.
#[derive(Debug, Clone)]
pub struct Schemas {
    tables: BTreeMap<String, TableSchema>,
}

impl Schemas {
    /// Parses the schemas shipped with the project.
    pub fn builtin() -> Result<Self, SchemaError> {
        Self::parse(DEFAULT_TABLES_TOML, "config/tables.toml (built in)")
    }

    /// Reads and parses a schema file.
    pub fn load(path: &Path) -> Result<Self, SchemaError> {
        let text = std::fs::read_to_string(path).map_err(|source| SchemaError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses schema TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, SchemaError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| SchemaError::Parse {
            path: origin.to_string(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        let mut tables = BTreeMap::new();
        for (name, table) in &raw.tables {
            tables.insert(name.clone(), build_table(name, table)?);
        }
        for table in tables.values() {
            for (i, target) in table.references() {
                if !tables.contains_key(target) {
                    return Err(invalid(
                        &table.name,
                        &table.columns[i].name,
                        format!("references unknown table `{target}`"),
                    ));
                }
            }
        }
        Ok(Self { tables })
    }

    /// Returns a table's schema.
    pub fn table(&self, name: &str) -> Option<&TableSchema> {
        self.tables.get(name)
    }

    /// Iterates over the tables in an order where referenced tables come first.
    pub fn in_dependency_order(&self) -> Vec<&TableSchema> {
        let mut order: Vec<&TableSchema> = Vec::new();
        let mut pending: Vec<&TableSchema> = self.tables.values().collect();
        while !pending.is_empty() {
            let before = pending.len();
            pending.retain(|t| {
                let ready = t
                    .references()
                    .all(|(_, target)| target == t.name || order.iter().any(|o| o.name == target));
                if ready {
                    order.push(t);
                }
                !ready
            });
            if pending.len() == before {
                // A cycle: the remaining tables are taken in name order.
                order.append(&mut pending);
            }
        }
        order
    }

    /// Names of every table.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tables.keys().map(String::as_str)
    }
}

fn invalid(table: &str, column: &str, problem: impl Into<String>) -> SchemaError {
    SchemaError::Invalid {
        table: table.to_string(),
        column: column.to_string(),
        problem: problem.into(),
    }
}

fn build_table(name: &str, raw: &RawTable) -> Result<TableSchema, SchemaError> {
    let names: Vec<String> = raw
        .columns
        .iter()
        .map(|c| c.name.trim().to_lowercase())
        .collect();
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            return Err(invalid(name, n, "declared twice"));
        }
    }
    let mut columns = Vec::with_capacity(raw.columns.len());
    for (col, cname) in raw.columns.iter().zip(&names) {
        columns.push(build_column(name, raw, col, cname, &names)?);
    }
    let (key, version) = key_and_version(name, raw, &names, &columns)?;
    Ok(TableSchema {
        name: name.to_string(),
        columns,
        key,
        version,
    })
}

/// Checks and types column `cname` of table `table` (whose lower-cased column names are
/// `names`).
fn build_column(
    table: &str,
    raw: &RawTable,
    col: &RawColumn,
    cname: &str,
    names: &[String],
) -> Result<ColumnSchema, SchemaError> {
    let kind = Kind::from_name(&col.kind).ok_or_else(|| {
        invalid(
            table,
            cname,
            format!("unknown kind `{}` (see config/tables.toml)", col.kind),
        )
    })?;
    let options = column_options(table, col, cname, kind, names)?;
    if let Some(d) = &col.default
        && kind
            .validate(d, &options, None, chrono::NaiveDate::MAX)
            .is_err()
    {
        return Err(invalid(
            table,
            cname,
            format!("default `{d}` is not a valid {}", col.kind),
        ));
    }
    Ok(ColumnSchema {
        name: cname.to_string(),
        kind,
        options,
        required: col.required,
        on_invalid: col.on_invalid,
        default: col.default.clone(),
        references: col.references.clone(),
        dictionary: col.dictionary && *cname != raw.key,
        statistics: col.statistics && *cname != raw.key,
    })
}

/// The validator options of a column of kind `kind`.
fn column_options(
    table: &str,
    col: &RawColumn,
    cname: &str,
    kind: Kind,
    names: &[String],
) -> Result<KindOptions, SchemaError> {
    let uf_column =
        match &col.uf_column {
            Some(u) => Some(names.iter().position(|n| n == u).ok_or_else(|| {
                invalid(table, cname, format!("uf_column `{u}` is not a column"))
            })?),
            None if kind == Kind::Municipality => {
                return Err(invalid(
                    table,
                    cname,
                    "a municipality column needs uf_column",
                ));
            }
            None => None,
        };
    let min_date = col
        .min
        .as_deref()
        .map(|m| {
            NaiveDate::parse_from_str(m, "%Y-%m-%d")
                .map_err(|_| invalid(table, cname, format!("min `{m}` is not YYYY-MM-DD")))
        })
        .transpose()?;
    let mut values = Vec::new();
    for (canonical, synonyms) in &col.values {
        values.push((super::validators::fold(canonical), canonical.clone()));
        for s in synonyms {
            values.push((super::validators::fold(s), canonical.clone()));
        }
    }
    if kind == Kind::Enum && values.is_empty() {
        return Err(invalid(table, cname, "an enum column needs values"));
    }
    if col.max.is_some() && kind != Kind::Int {
        return Err(invalid(table, cname, "max applies to int columns only"));
    }
    let pattern = match (&col.pattern, kind) {
        (Some(p), Kind::Pattern) => Some(
            PatternRule::compile(p, &col.normalize, col.remove.as_deref().unwrap_or(""))
                .map_err(|problem| invalid(table, cname, problem))?,
        ),
        (None, Kind::Pattern) => {
            return Err(invalid(table, cname, "a pattern column needs pattern"));
        }
        (None, _) if col.normalize.is_empty() && col.remove.is_none() => None,
        _ => {
            return Err(invalid(
                table,
                cname,
                "pattern, normalize and remove belong to kind = \"pattern\"",
            ));
        }
    };
    Ok(KindOptions {
        upper: col.upper,
        positive: col.positive,
        non_negative: col.non_negative,
        max: col.max,
        units: col.units.iter().map(|u| u.to_lowercase()).collect(),
        values,
        known: col.known.clone(),
        uf_column,
        min_date,
        not_future: col.not_future,
        pattern,
    })
}

/// The indices of the key column (required) and of the version column (a timestamp), if any.
fn key_and_version(
    name: &str,
    raw: &RawTable,
    names: &[String],
    columns: &[ColumnSchema],
) -> Result<(usize, Option<usize>), SchemaError> {
    let key = names
        .iter()
        .position(|n| *n == raw.key)
        .ok_or_else(|| invalid(name, &raw.key, "key is not a column"))?;
    if !columns[key].required {
        return Err(invalid(name, &raw.key, "the key column must be required"));
    }
    let version = raw
        .version
        .as_ref()
        .map(|v| {
            names
                .iter()
                .position(|n| n == v)
                .ok_or_else(|| invalid(name, v, "version is not a column"))
        })
        .transpose()?;
    if let Some(v) = version
        && columns[v].kind != Kind::Timestamp
    {
        return Err(invalid(
            name,
            &names[v],
            "the version column must be a timestamp",
        ));
    }
    Ok((key, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_schemas_parse() {
        let s = Schemas::builtin().expect("shipped schemas are valid");
        let t = s.table("transactions").unwrap();
        assert_eq!(t.columns.len(), 13);
        assert_eq!(t.columns[t.key].name, "transaction_id");
        let order: Vec<_> = s
            .in_dependency_order()
            .iter()
            .map(|t| t.name.clone())
            .collect();
        assert_eq!(order.last().unwrap(), "transactions");
    }

    #[test]
    fn errors_name_the_table_column_and_problem() {
        let bad = "[tables.t]\nkey = \"id\"\n[[tables.t.columns]]\nname = \"id\"\nkind = \"nope\"\nrequired = true\n";
        let e = Schemas::parse(bad, "x.toml").unwrap_err().to_string();
        assert!(
            e.contains("`t`") && e.contains("`id`") && e.contains("unknown kind"),
            "{e}"
        );
        let bad = "[tables.t]\nkey = \"id\"\n[[tables.t.columns]]\nname = \"id\"\nkind = \"id\"\nrequired = true\nreferences = \"nowhere\"\n";
        let e = Schemas::parse(bad, "x.toml").unwrap_err().to_string();
        assert!(e.contains("unknown table `nowhere`"), "{e}");
        let bad = "[tables.t]\nkey = \"id\"\nbogus = 1\n";
        let e = Schemas::parse(bad, "x.toml").unwrap_err().to_string();
        assert!(e.contains("x.toml"), "{e}");
    }

    #[test]
    fn adding_a_table_is_config_only() {
        let extra = format!(
            "{DEFAULT_TABLES_TOML}\n[tables.stores]\nkey = \"store_id\"\n[[tables.stores.columns]]\nname = \"store_id\"\nkind = \"id\"\nrequired = true\n[[tables.stores.columns]]\nname = \"cep\"\nkind = \"cep\"\non_invalid = \"null\"\n"
        );
        let s = Schemas::parse(&extra, "extra").unwrap();
        assert_eq!(s.table("stores").unwrap().columns.len(), 2);
    }
}
