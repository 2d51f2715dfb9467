//! Reading the cleaning engine's curated Parquet across batch days.
//!
//! Layout: `<root>/curated/<table>/dt=<D>/*.parquet` (every part, in name order). Columns are
//! read by name and checked against the curated types (`clean::columns::data_type`).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Decimal128Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use chrono::NaiveDate;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::clean::validators::local_date;

/// Curated data could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CuratedError {
    /// A folder or file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A Parquet file could not be decoded.
    #[error("{path}: {source}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: parquet::errors::ParquetError,
    },
    /// A column is missing or has another type than the curated schema's.
    #[error("{path}: column {column}: {problem}")]
    Column {
        /// The file.
        path: PathBuf,
        /// The column.
        column: String,
        /// What is wrong.
        problem: String,
    },
}

/// Status of an order line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Sold and kept.
    Completed,
    /// Cancelled.
    Cancelled,
    /// Refunded.
    Refunded,
}

/// One curated order line, as known in one batch.
#[derive(Debug, Clone)]
pub struct Line {
    /// Order line id (never delivered).
    pub transaction_id: String,
    /// Order id (never delivered).
    pub order_id: String,
    /// Customer id (never delivered).
    pub customer_id: String,
    /// Product code.
    pub product_code: String,
    /// Units.
    pub quantity: i64,
    /// List price, cents.
    pub unit_price: i64,
    /// Discount, cents.
    pub discount: i64,
    /// Status in this version.
    pub status: Status,
    /// Sale instant, microseconds UTC.
    pub sold_at: i64,
    /// Delivery city.
    pub city: String,
    /// Delivery state.
    pub uf: String,
    /// Version instant, microseconds UTC.
    pub updated_at: Option<i64>,
    /// The batch the line was read from.
    pub batch: NaiveDate,
}

impl Line {
    /// Local (America/Sao_Paulo) date of the sale.
    pub fn local_date(&self) -> Option<NaiveDate> {
        local_date(self.sold_at.div_euclid(1_000_000))
    }

    /// quantity × unit_price − discount, in cents, exact (128 bits hold any product of two i64).
    pub fn net_amount(&self) -> i128 {
        i128::from(self.quantity) * i128::from(self.unit_price) - i128::from(self.discount)
    }
}

/// One curated product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    /// Product code.
    pub product_code: String,
    /// Name.
    pub name: String,
    /// Brand.
    pub brand: String,
    /// Manufacturer.
    pub manufacturer: String,
    /// Segment.
    pub segment: String,
    /// Unit size.
    pub unit_size: Option<String>,
}

/// The curated data under one root.
#[derive(Debug, Clone)]
pub struct Curated {
    root: PathBuf,
}

impl Curated {
    /// Opens a root holding `curated/` (or the `curated` folder itself).
    pub fn new(root: &Path) -> Self {
        let nested = root.join("curated");
        Self {
            root: if nested.is_dir() {
                nested
            } else {
                root.to_path_buf()
            },
        }
    }

    /// Batch days that hold this table, sorted.
    pub fn days(&self, table: &str) -> Result<Vec<NaiveDate>, CuratedError> {
        let dir = self.root.join(table);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(CuratedError::Io { path: dir, source }),
        };
        let mut days: Vec<NaiveDate> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                NaiveDate::parse_from_str(name.strip_prefix("dt=")?, "%Y-%m-%d").ok()
            })
            .collect();
        days.sort();
        Ok(days)
    }

    /// Returns true when batch `dt` holds both transactions and products.
    pub fn has_batch(&self, dt: NaiveDate) -> bool {
        ["transactions", "products"]
            .iter()
            .all(|t| self.root.join(format!("{t}/dt={dt}")).is_dir())
    }

    fn files(&self, table: &str, dt: NaiveDate) -> Result<Vec<PathBuf>, CuratedError> {
        let dir = self.root.join(format!("{table}/dt={dt}"));
        let entries = std::fs::read_dir(&dir).map_err(|source| CuratedError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .collect();
        files.sort();
        Ok(files)
    }

    fn batches(
        &self,
        table: &str,
        dt: NaiveDate,
    ) -> Result<Vec<(PathBuf, RecordBatch)>, CuratedError> {
        let mut out = Vec::new();
        for path in self.files(table, dt)? {
            let file = File::open(&path).map_err(|source| CuratedError::Io {
                path: path.clone(),
                source,
            })?;
            let pq = |source| CuratedError::Parquet {
                path: path.clone(),
                source,
            };
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(pq)?
                .build()
                .map_err(pq)?;
            for b in reader {
                let b = b.map_err(|e| pq(e.into()))?;
                out.push((path.clone(), b));
            }
        }
        Ok(out)
    }

    /// Reads the order lines of batch `dt`.
    pub fn transactions(&self, dt: NaiveDate) -> Result<Vec<Line>, CuratedError> {
        let mut out = Vec::new();
        for (path, b) in self.batches("transactions", dt)? {
            let c = Columns {
                path: &path,
                batch: &b,
            };
            let tid = c.utf8("transaction_id")?;
            let oid = c.utf8("order_id")?;
            let cid = c.utf8("customer_id")?;
            let code = c.utf8("product_code")?;
            let qty = c.int64("quantity")?;
            let price = c.cents("unit_price")?;
            let disc = c.cents("discount")?;
            let status = c.utf8("status")?;
            let sold = c.micros("sold_at")?;
            let city = c.utf8("city")?;
            let uf = c.utf8("uf")?;
            let upd = c.micros("updated_at")?;
            for r in 0..b.num_rows() {
                let required = [tid, oid, cid, code, status, city, uf];
                if required.iter().any(|a| a.is_null(r))
                    || qty.is_null(r)
                    || price.is_null(r)
                    || sold.is_null(r)
                {
                    return Err(c.problem(
                        "transaction_id",
                        format!("row {}: a required value is null", r + 1),
                    ));
                }
                let status = match status.value(r) {
                    "completed" => Status::Completed,
                    "cancelled" => Status::Cancelled,
                    "refunded" => Status::Refunded,
                    other => {
                        return Err(c.problem(
                            "status",
                            format!("row {}: unknown status {other:?}", r + 1),
                        ));
                    }
                };
                out.push(Line {
                    transaction_id: tid.value(r).to_string(),
                    order_id: oid.value(r).to_string(),
                    customer_id: cid.value(r).to_string(),
                    product_code: code.value(r).to_string(),
                    quantity: qty.value(r),
                    unit_price: to_cents(price.value(r)),
                    discount: if disc.is_null(r) {
                        0
                    } else {
                        to_cents(disc.value(r))
                    },
                    status,
                    sold_at: sold.value(r),
                    city: city.value(r).to_string(),
                    uf: uf.value(r).to_string(),
                    updated_at: (!upd.is_null(r)).then(|| upd.value(r)),
                    batch: dt,
                });
            }
        }
        Ok(out)
    }

    /// Reads the product snapshot of batch `dt`, by product code.
    pub fn products(&self, dt: NaiveDate) -> Result<BTreeMap<String, Product>, CuratedError> {
        let mut out = BTreeMap::new();
        for (path, b) in self.batches("products", dt)? {
            let c = Columns {
                path: &path,
                batch: &b,
            };
            let code = c.utf8("product_code")?;
            let name = c.utf8("name")?;
            let brand = c.utf8("brand")?;
            let manufacturer = c.utf8("manufacturer")?;
            let segment = c.utf8("segment")?;
            let unit_size = c.utf8("unit_size")?;
            for r in 0..b.num_rows() {
                if [code, name, brand, manufacturer, segment]
                    .iter()
                    .any(|a| a.is_null(r))
                {
                    return Err(c.problem(
                        "product_code",
                        format!("row {}: a required value is null", r + 1),
                    ));
                }
                out.insert(
                    code.value(r).to_string(),
                    Product {
                        product_code: code.value(r).to_string(),
                        name: name.value(r).to_string(),
                        brand: brand.value(r).to_string(),
                        manufacturer: manufacturer.value(r).to_string(),
                        segment: segment.value(r).to_string(),
                        unit_size: (!unit_size.is_null(r)).then(|| unit_size.value(r).to_string()),
                    },
                );
            }
        }
        Ok(out)
    }
}

fn to_cents(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

struct Columns<'a> {
    path: &'a Path,
    batch: &'a RecordBatch,
}

impl<'a> Columns<'a> {
    fn problem(&self, column: &str, problem: String) -> CuratedError {
        CuratedError::Column {
            path: self.path.to_path_buf(),
            column: column.to_string(),
            problem,
        }
    }

    fn get(
        &self,
        name: &str,
        ok: impl Fn(&DataType) -> bool,
        want: &str,
    ) -> Result<&'a dyn Array, CuratedError> {
        let col = self
            .batch
            .column_by_name(name)
            .ok_or_else(|| self.problem(name, "missing".into()))?;
        if !ok(col.data_type()) {
            return Err(self.problem(name, format!("is {}, expected {want}", col.data_type())));
        }
        Ok(col.as_ref())
    }

    fn utf8(&self, name: &str) -> Result<&'a arrow_array::StringArray, CuratedError> {
        Ok(self
            .get(name, |t| *t == DataType::Utf8, "Utf8")?
            .as_string::<i32>())
    }

    fn int64(&self, name: &str) -> Result<&'a arrow_array::Int64Array, CuratedError> {
        Ok(self
            .get(name, |t| *t == DataType::Int64, "Int64")?
            .as_primitive::<Int64Type>())
    }

    fn cents(&self, name: &str) -> Result<&'a arrow_array::Decimal128Array, CuratedError> {
        Ok(self
            .get(
                name,
                |t| matches!(t, DataType::Decimal128(_, 2)),
                "Decimal128(_, 2)",
            )?
            .as_primitive::<Decimal128Type>())
    }

    fn micros(
        &self,
        name: &str,
    ) -> Result<&'a arrow_array::TimestampMicrosecondArray, CuratedError> {
        Ok(self
            .get(
                name,
                |t| matches!(t, DataType::Timestamp(TimeUnit::Microsecond, Some(tz)) if tz.as_ref() == "UTC" || tz.as_ref() == "+00:00"),
                "Timestamp(Microsecond, UTC)",
            )?
            .as_primitive::<TimestampMicrosecondType>())
    }
}

/// Keeps the latest version of each order line: the greatest `updated_at` (a missing one is the
/// oldest), ties won by the later batch, then by the later line read.
pub fn latest_versions(lines: impl IntoIterator<Item = Line>) -> BTreeMap<String, Line> {
    let mut out: BTreeMap<String, Line> = BTreeMap::new();
    for l in lines {
        match out.get(&l.transaction_id) {
            Some(cur)
                if (cur.updated_at.unwrap_or(i64::MIN), cur.batch)
                    > (l.updated_at.unwrap_or(i64::MIN), l.batch) => {}
            _ => {
                out.insert(l.transaction_id.clone(), l);
            }
        }
    }
    out
}

/// Merges the product snapshots of these batches: for each code, the latest snapshot holding it.
pub fn catalog(
    curated: &Curated,
    days: &[NaiveDate],
) -> Result<BTreeMap<String, Product>, CuratedError> {
    let mut out = BTreeMap::new();
    let mut sorted = days.to_vec();
    sorted.sort();
    for d in sorted {
        out.extend(curated.products(d)?);
    }
    Ok(out)
}
