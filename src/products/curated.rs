//! Reading the cleaning engine's curated Parquet across batch days.
//!
//! Layout: `<root>/curated/<table>/dt=<D>/*.parquet` (every part, in name order). Columns are
//! read by name and checked against the curated types (`clean::columns::data_type`).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Decimal128Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use chrono::NaiveDate;
use parquet::arrow::ProjectionMask;
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
        sale_date(self.sold_at)
    }

    /// quantity × unit_price − discount, in cents, exact (128 bits hold any product of two i64).
    pub fn net_amount(&self) -> i128 {
        net(self.quantity, self.unit_price, self.discount)
    }
}

/// One curated order line borrowed from the record batch being read.
#[derive(Debug, Clone, Copy)]
pub struct LineRef<'a> {
    /// Order line id (never delivered).
    pub transaction_id: &'a str,
    /// Order id (never delivered).
    pub order_id: &'a str,
    /// Customer id (never delivered).
    pub customer_id: &'a str,
    /// Product code.
    pub product_code: &'a str,
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
    pub city: &'a str,
    /// Delivery state.
    pub uf: &'a str,
    /// Version instant, microseconds UTC.
    pub updated_at: Option<i64>,
    /// The batch the line was read from.
    pub batch: NaiveDate,
}

impl LineRef<'_> {
    /// An owned copy.
    pub fn to_owned(self) -> Line {
        Line {
            transaction_id: self.transaction_id.to_string(),
            order_id: self.order_id.to_string(),
            customer_id: self.customer_id.to_string(),
            product_code: self.product_code.to_string(),
            quantity: self.quantity,
            unit_price: self.unit_price,
            discount: self.discount,
            status: self.status,
            sold_at: self.sold_at,
            city: self.city.to_string(),
            uf: self.uf.to_string(),
            updated_at: self.updated_at,
            batch: self.batch,
        }
    }

    /// Local (America/Sao_Paulo) date of the sale.
    pub fn local_date(&self) -> Option<NaiveDate> {
        sale_date(self.sold_at)
    }

    /// quantity × unit_price − discount, in cents, exact.
    pub fn net_amount(&self) -> i128 {
        net(self.quantity, self.unit_price, self.discount)
    }
}

/// Local (America/Sao_Paulo) date of a sale instant in microseconds.
fn sale_date(sold_at: i64) -> Option<NaiveDate> {
    local_date(sold_at.div_euclid(1_000_000))
}

/// quantity × unit_price − discount, in cents, exact (128 bits hold any product of two i64).
fn net(quantity: i64, unit_price: i64, discount: i64) -> i128 {
    i128::from(quantity) * i128::from(unit_price) - i128::from(discount)
}

/// Rows decoded at a time when reading curated Parquet.
const READ_BATCH_ROWS: usize = 8192;

/// The transactions columns an order line is read from (the others are not decoded).
const LINE_COLUMNS: &[&str] = &[
    "transaction_id",
    "order_id",
    "customer_id",
    "product_code",
    "quantity",
    "unit_price",
    "discount",
    "status",
    "sold_at",
    "city",
    "uf",
    "updated_at",
];

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

/// Where batches' curated transactions come from when they are not under the root: fetched when
/// a batch's lines are read, removed once read. The worker's monthly builds read two months of
/// batches this way, so their temporary folder (memory, on Cloud Run) holds one at a time.
pub trait TransactionsSource: Send + Sync + std::fmt::Debug {
    /// Returns true when batch `dt` has curated transactions.
    fn has(&self, dt: NaiveDate) -> bool;
    /// Writes batch `dt`'s curated transaction files into the folder `dir` (which exists).
    fn fetch(&self, dt: NaiveDate, dir: &Path) -> std::io::Result<()>;
}

/// The curated data under one root.
#[derive(Debug, Clone)]
pub struct Curated {
    root: PathBuf,
    /// Transactions fetched on demand (`None`: all under the root).
    source: Option<Arc<dyn TransactionsSource>>,
}

/// A batch's fetched transactions folder, removed when dropped (read or not).
struct Fetched(PathBuf);

impl Drop for Fetched {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(path = %self.0.display(), error = %e, "fetched transactions not removed");
        }
    }
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
            source: None,
        }
    }

    /// The same root, fetching the transactions of batches it lacks from `source`.
    pub fn with_source(mut self, source: Option<Arc<dyn TransactionsSource>>) -> Self {
        self.source = source;
        self
    }

    /// Fetches batch `dt`'s transactions from the source when the root lacks them; the guard
    /// removes them.
    fn fetch_transactions(&self, dt: NaiveDate) -> Result<Option<Fetched>, CuratedError> {
        let dir = self.root.join(format!("transactions/dt={dt}"));
        let Some(source) = self.source.as_ref().filter(|s| s.has(dt) && !dir.is_dir()) else {
            return Ok(None);
        };
        let io = |source| CuratedError::Io {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let fetched = Fetched(dir.clone());
        source.fetch(dt, &dir).map_err(io)?;
        Ok(Some(fetched))
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
        let here = |t: &str| self.root.join(format!("{t}/dt={dt}")).is_dir();
        here("products")
            && (here("transactions") || self.source.as_ref().is_some_and(|s| s.has(dt)))
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

    /// Calls `f` with each record batch of `table` in batch `dt`, file by file in name order,
    /// reading only `columns` (all when empty): one batch of rows in memory at a time.
    fn each_batch<E: From<CuratedError>>(
        &self,
        table: &str,
        dt: NaiveDate,
        columns: &[&str],
        mut f: impl FnMut(&Columns<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        for path in self.files(table, dt)? {
            let file = File::open(&path).map_err(|source| CuratedError::Io {
                path: path.clone(),
                source,
            })?;
            let pq = |source| CuratedError::Parquet {
                path: path.clone(),
                source,
            };
            let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(pq)?;
            let builder = if columns.is_empty() {
                builder
            } else {
                let mask =
                    ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
                builder.with_projection(mask)
            };
            let reader = builder
                .with_batch_size(READ_BATCH_ROWS)
                .build()
                .map_err(pq)?;
            for b in reader {
                let b = b.map_err(|e| pq(e.into()))?;
                f(&Columns {
                    path: &path,
                    batch: &b,
                })?;
            }
        }
        Ok(())
    }

    /// Calls `f` with each order line of batch `dt`, borrowed from the record batch being read
    /// (memory: one batch of rows, whatever the day's size).
    pub fn each_line<E: From<CuratedError>>(
        &self,
        dt: NaiveDate,
        mut f: impl FnMut(LineRef<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let _fetched = self.fetch_transactions(dt)?;
        self.each_batch("transactions", dt, LINE_COLUMNS, |c| -> Result<(), E> {
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
            for r in 0..c.batch.num_rows() {
                let required = [tid, oid, cid, code, status, city, uf];
                if required.iter().any(|a| a.is_null(r))
                    || qty.is_null(r)
                    || price.is_null(r)
                    || sold.is_null(r)
                {
                    return Err(c
                        .problem(
                            "transaction_id",
                            format!("row {}: a required value is null", r + 1),
                        )
                        .into());
                }
                let status = match status.value(r) {
                    "completed" => Status::Completed,
                    "cancelled" => Status::Cancelled,
                    "refunded" => Status::Refunded,
                    other => {
                        return Err(c
                            .problem("status", format!("row {}: unknown status {other:?}", r + 1))
                            .into());
                    }
                };
                f(LineRef {
                    transaction_id: tid.value(r),
                    order_id: oid.value(r),
                    customer_id: cid.value(r),
                    product_code: code.value(r),
                    quantity: qty.value(r),
                    unit_price: to_cents(price.value(r)),
                    discount: if disc.is_null(r) {
                        0
                    } else {
                        to_cents(disc.value(r))
                    },
                    status,
                    sold_at: sold.value(r),
                    city: city.value(r),
                    uf: uf.value(r),
                    updated_at: (!upd.is_null(r)).then(|| upd.value(r)),
                    batch: dt,
                })?;
            }
            Ok(())
        })
    }

    /// Reads the product snapshot of batch `dt`, by product code.
    pub fn products(&self, dt: NaiveDate) -> Result<BTreeMap<String, Product>, CuratedError> {
        let mut out = BTreeMap::new();
        self.each_batch("products", dt, &[], |c| -> Result<(), CuratedError> {
            let code = c.utf8("product_code")?;
            let name = c.utf8("name")?;
            let brand = c.utf8("brand")?;
            let manufacturer = c.utf8("manufacturer")?;
            let segment = c.utf8("segment")?;
            let unit_size = c.utf8("unit_size")?;
            for r in 0..c.batch.num_rows() {
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
            Ok(())
        })?;
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
