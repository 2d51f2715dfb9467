//! Partner data products: pseudonymize, aggregate, gate, write files and manifests.
//!
//! The path of one build: the partner's [`contract`] and its secret → [`curated`] batches →
//! [`daily`] or [`monthly`] rows (keys from [`pseudonym`]), or the [`brands`] view computed from
//! the monthly rows' lines → [`reconcile`] (monthly, brand view) → a record batch typed by
//! [`schema`] → [`gate`] → [`write`] (Parquet, CSV) → files, [`manifest`]s and the
//! [`dictionary`], released under `products/<partner>/<daily|monthly|monthly_brands>/`;
//! [`highlights`] feed the partner e-mail; alerts ([`crate::events::Alert`]) are raised when the gate or the
//! reconciliation holds a file.

pub mod brands;
pub mod contract;
pub mod curated;
pub mod daily;
pub mod dictionary;
pub mod gate;
pub mod highlights;
pub mod manifest;
pub mod month_lines;
pub mod monthly;
pub mod pseudonym;
pub mod reconcile;
pub mod schema;
pub mod window;
pub mod write;

use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};

use self::contract::{Contract, ContractError, Format, KeyPeriod};
use self::curated::Curated;
use self::daily::DailyError;
use self::gate::{GateError, GateTarget};
use self::manifest::{Manifest, ManifestError};
use self::monthly::MonthlyError;
use self::pseudonym::{PseudonymError, Pseudonymizer};
use self::reconcile::ReconcileError;
use self::schema::{ProductSchema, SchemaError};
use self::write::WriteError;
use crate::events::Alert;
use crate::events::ProductKind;

/// A hash map of the builds' per-line look-ups: ahash, randomly keyed (SipHash, std's default,
/// was ~5% of a 10M-row day's daily build).
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;

/// A hash set of the builds' per-line look-ups (see [`FastMap`]).
pub(crate) type FastSet<T> = std::collections::HashSet<T, ahash::RandomState>;

/// A product could not be built or was held.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The contract or its secret is not usable.
    #[error(transparent)]
    Contract(#[from] ContractError),
    /// The key could not be used.
    #[error(transparent)]
    Pseudonym(#[from] PseudonymError),
    /// The daily rows could not be computed.
    #[error(transparent)]
    Daily(#[from] DailyError),
    /// The monthly rows could not be computed.
    #[error(transparent)]
    Monthly(#[from] MonthlyError),
    /// The monthly reconciliation held the file.
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    /// The privacy gate held the file.
    #[error(transparent)]
    Gate(#[from] GateError),
    /// Rows do not fit the product schema.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// A file could not be encoded.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// A manifest could not be encoded.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// An output could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The contract does not include this product.
    #[error("partner {partner} did not buy the {product} product")]
    NotBought {
        /// The partner.
        partner: String,
        /// The product.
        product: ProductKind,
    },
}

impl BuildError {
    /// The alert raised, when the file was held by a guardrail.
    pub fn alert(&self) -> Option<&Alert> {
        match self {
            BuildError::Gate(GateError::Refused { alert, .. }) => Some(alert),
            BuildError::Reconcile(ReconcileError::Mismatch { alert, .. }) => Some(alert),
            BuildError::Reconcile(ReconcileError::BrandMismatch { alert, .. }) => Some(alert),
            _ => None,
        }
    }
}

/// The monthly aggregate of the month starting on `first`, held unless it reconciles with the
/// month's daily lines.
fn reconciled_month(
    curated: &Curated,
    contract: &Contract,
    first: NaiveDate,
    opts: &BuildOptions,
) -> Result<monthly::MonthlyTable, BuildError> {
    let t = monthly::build(
        curated,
        contract,
        first,
        opts.allow_missing_batches,
        &opts.months,
    )?;
    let rec = reconcile::check(contract, &t)?;
    tracing::info!(cents = rec.monthly_cents, "reconciliation held");
    Ok(t)
}

/// Which period to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// The daily file of this day.
    Day(NaiveDate),
    /// The monthly file of the month starting on this day.
    Month(NaiveDate),
    /// The monthly brand view of the month starting on this day.
    MonthBrands(NaiveDate),
}

impl Period {
    /// The period of a month product (`kind` monthly or monthly_brands) of the month starting on
    /// `first_day`; the daily kind gives that day's daily file.
    pub fn of_month(kind: ProductKind, first_day: NaiveDate) -> Period {
        match kind {
            ProductKind::Daily => Period::Day(first_day),
            ProductKind::Monthly => Period::Month(first_day),
            ProductKind::MonthlyBrands => Period::MonthBrands(first_day),
        }
    }

    /// The product kind.
    pub fn kind(self) -> ProductKind {
        match self {
            Period::Day(_) => ProductKind::Daily,
            Period::Month(_) => ProductKind::Monthly,
            Period::MonthBrands(_) => ProductKind::MonthlyBrands,
        }
    }

    /// `YYYY-MM-DD` or `YYYY-MM`.
    pub fn label(self) -> String {
        match self {
            Period::Day(d) => d.to_string(),
            Period::Month(m) | Period::MonthBrands(m) => daily::month_of(m),
        }
    }
}

/// The periods of month products a contract bought for the month starting on `first_day`.
pub fn month_periods(contract: &Contract, first_day: NaiveDate) -> Vec<Period> {
    contract
        .monthly_products()
        .into_iter()
        .map(|k| Period::of_month(k, first_day))
        .collect()
}

/// Where a build reads and writes.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Root holding `curated/`.
    pub input: PathBuf,
    /// Root receiving `products/`.
    pub output: PathBuf,
    /// Builds a month even when batches of its window are missing.
    pub allow_missing_batches: bool,
    /// Build time written in manifests.
    pub built_at: DateTime<Utc>,
    /// Where a daily build finds the window's files; `None`: computed from the curated data
    /// under `input` into a temporary folder.
    pub window: Option<std::sync::Arc<dyn window::WindowSource>>,
    /// Months read by earlier builds with these options (clones share it): both month products
    /// of a request read each month once.
    pub months: month_lines::MonthReads,
    /// Where the batches' transactions missing under `input` are fetched from, one batch at a
    /// time; `None`: all are under `input`.
    pub transactions: Option<std::sync::Arc<dyn curated::TransactionsSource>>,
}

/// A file released with its manifest.
#[derive(Debug, Clone)]
pub struct ReleasedFile {
    /// The data file.
    pub path: PathBuf,
    /// Its manifest.
    pub manifest: PathBuf,
    /// Data rows.
    pub rows: usize,
    /// Size.
    pub bytes: u64,
    /// SHA-256 hex.
    pub sha256: String,
}

/// What a build released.
#[derive(Debug, Clone)]
pub struct Released {
    /// Partner.
    pub partner: String,
    /// Product.
    pub product: ProductKind,
    /// Period label.
    pub period: String,
    /// The files (Parquet first when both).
    pub files: Vec<ReleasedFile>,
    /// The data dictionary.
    pub dictionary: PathBuf,
    /// The product version (SHA-256 of the reference file).
    pub product_version: String,
    /// The delivery id.
    pub delivery_id: String,
    /// Facts for the partner e-mail.
    pub highlights: Vec<String>,
}

/// Folder of a partner's product files under an output root.
pub fn product_dir(output: &Path, partner: &str, kind: ProductKind) -> PathBuf {
    output.join("products").join(partner).join(kind.as_str())
}

/// File name (without extension) of a product.
pub fn base_name(partner: &str, kind: ProductKind, period: &str) -> String {
    format!("{partner}_{kind}_{period}")
}

/// A built product's rows: turned into record batches chunk by chunk when released.
enum Rows {
    /// Rows already as cells (the monthly aggregates: small).
    Cells(Vec<Vec<schema::Cell>>),
    /// A daily table, turned into Arrow a row group at a time.
    Daily(daily::DailyTable),
}

impl Rows {
    fn len(&self) -> usize {
        match self {
            Rows::Cells(c) => c.len(),
            Rows::Daily(t) => t.rows.len(),
        }
    }

    fn batch(
        &self,
        schema: &schema::ProductSchema,
        range: std::ops::Range<usize>,
    ) -> Result<arrow_array::RecordBatch, SchemaError> {
        match self {
            Rows::Cells(c) => schema.to_batch(&c[range]),
            Rows::Daily(t) => t.batch_of(schema, range),
        }
    }
}

struct Built {
    rows: Rows,
    source_batches: Vec<NaiveDate>,
    missing_batches: Vec<NaiveDate>,
    comparison_batches: Vec<NaiveDate>,
    highlights: Vec<String>,
}

/// Builds one product of one partner from local curated data and releases its files.
pub fn build(
    contract: &Contract,
    period: Period,
    opts: &BuildOptions,
) -> Result<Released, BuildError> {
    let kind = period.kind();
    if !contract.buys(kind) {
        return Err(BuildError::NotBought {
            partner: contract.name.clone(),
            product: kind,
        });
    }
    // The secret is required for every build: a missing one is a misconfiguration found early.
    let keys = Pseudonymizer::new(&contract.hmac_secret()?, contract.key_period)?;
    let curated = Curated::new(&opts.input).with_source(opts.transactions.clone());
    let label = period.label();
    let span = tracing::info_span!(
        "build",
        otel.name = format!("build {} {kind}", contract.name),
        partner = %contract.name,
        product = %kind,
        period = %label
    );
    let _guard = span.enter();
    let _timer = crate::telemetry::metrics::Stage::ProductBuild.timer();
    let built = match period {
        Period::Day(d) => {
            let t = match &opts.window {
                Some(w) => daily::build(&curated, contract, &keys, d, w.as_ref())?,
                None => {
                    let tmp = tempfile::tempdir().map_err(io(&opts.output))?;
                    let w = window::LocalWindow::new(curated.clone(), tmp.path());
                    daily::build(&curated, contract, &keys, d, &w)?
                }
            };
            Built {
                highlights: highlights::daily(&t),
                source_batches: t.source_batches.clone(),
                missing_batches: t.missing_batches.clone(),
                comparison_batches: Vec::new(),
                rows: Rows::Daily(t),
            }
        }
        Period::Month(first) => {
            let mut t = reconciled_month(&curated, contract, first, opts)?;
            t.drop_lines();
            // The highlights compare with M−1's brand shares, taken when M−1's lines were read.
            Built {
                rows: Rows::Cells(t.cells()),
                highlights: highlights::monthly(&t, &t.previous.brand_shares),
                source_batches: t.source_batches,
                missing_batches: t.missing_batches,
                comparison_batches: t.comparison_batches,
            }
        }
        Period::MonthBrands(first) => {
            // The brand view is computed from the monthly aggregate's lines, and held unless
            // that aggregate reconciles with the daily lines and its country rows with it.
            let m = reconciled_month(&curated, contract, first, opts)?;
            let t = brands::build(contract, &m)?;
            reconcile::check_brands(contract, &m, &t)?;
            tracing::info!(
                rows = t.rows.len(),
                dropped_outras = t.dropped_outras_rows,
                dropped_uf = t.dropped_uf_rows,
                "brand view reconciled"
            );
            Built {
                rows: Rows::Cells(t.cells()),
                highlights: highlights::brands(&t),
                source_batches: m.source_batches,
                missing_batches: m.missing_batches,
                comparison_batches: m.comparison_batches,
            }
        }
    };
    release(contract, kind, &label, built, opts)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes bytes to a temporary name beside `path`, then renames it into place.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    let tmp = tmp_name(path);
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The temporary name a file is written under before it is renamed into place.
fn tmp_name(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}

/// One file of a product being written: its format, name and final path.
struct Target {
    format: Format,
    name: String,
    path: PathBuf,
}

/// Writes the rows in each format the contract buys (Parquet first), a row group at a time,
/// each chunk passing the privacy gate before it is written; returns what each file holds.
/// A file the gate refuses is removed and nothing is released.
///
/// Each format is written on a thread of its own (the worker has two vCPUs) while this thread
/// builds and scans the next row group, which waits until every writer has taken the last.
fn encode(
    contract: &Contract,
    (kind, label): (ProductKind, &str),
    rows: &Rows,
    targets: &[Target],
) -> Result<Vec<write::Written>, BuildError> {
    let schema = schema::of(kind);
    let discard = || {
        for t in targets {
            let _ = std::fs::remove_file(tmp_name(&t.path));
        }
    };
    let mut writers = Vec::new();
    for t in targets {
        let tmp = tmp_name(&t.path);
        match write::FileWriter::create(&tmp, t.format, schema, &contract.parquet) {
            Ok(w) => writers.push(w),
            Err(e) => {
                discard();
                return Err(e.into());
            }
        }
    }
    let mut scanner = gate::Scanner::new(schema);
    let (fed, writers) = std::thread::scope(|s| {
        let (senders, handles): (Vec<_>, Vec<_>) =
            writers.into_iter().map(|w| spawn_writer(s, w)).unzip();
        let fed = feed(rows, schema, &mut scanner, &targets[0].name, &senders);
        drop(senders);
        let writers: Vec<_> = (handles.into_iter())
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect();
        (fed, writers)
    });
    let mut failed = fed.err();
    let mut done = Vec::new();
    for (w, outcome) in writers {
        match outcome {
            Ok(()) => done.push(w),
            Err(e) => failed = failed.or(Some(e.into())),
        }
    }
    if let Some(e) = failed {
        drop(done);
        discard();
        return Err(e);
    }
    let target = GateTarget {
        partner: &contract.name,
        product: kind.as_str(),
        period: label,
        file: &targets[0].name,
    };
    if let Err(e) = gate::refuse(scanner.findings(), target) {
        drop(done);
        discard();
        return Err(e.into());
    }
    let written = match done.into_iter().map(|w| w.finish()).collect() {
        Ok(written) => written,
        Err(e) => {
            discard();
            return Err(BuildError::from(e));
        }
    };
    for t in targets {
        std::fs::rename(tmp_name(&t.path), &t.path).map_err(io(&t.path))?;
    }
    Ok(written)
}

/// A writer's thread: writes each row group it receives until the channel closes or a write
/// fails; hands the writer back with the outcome.
type WriterThread<'s> =
    std::thread::ScopedJoinHandle<'s, (write::FileWriter, Result<(), write::WriteError>)>;

/// Starts a writer's thread; returns the sender of its row groups (a rendezvous: a group is
/// handed over once the writer is done with the previous one) and the thread.
fn spawn_writer<'s>(
    s: &'s std::thread::Scope<'s, '_>,
    mut w: write::FileWriter,
) -> (std::sync::mpsc::SyncSender<RecordBatch>, WriterThread<'s>) {
    let (tx, rx) = std::sync::mpsc::sync_channel::<RecordBatch>(0);
    let thread = s.spawn(move || {
        for batch in rx {
            if let Err(e) = w.write(&batch) {
                return (w, Err(e));
            }
        }
        (w, Ok(()))
    });
    (tx, thread)
}

/// Builds the rows' row groups in order, scans each (privacy gate) and sends it to every writer
/// until a finding: the rest is still scanned (the alert lists the file's first findings) but
/// no longer written. A writer that stopped (its error comes from its thread) stops the feed.
fn feed(
    rows: &Rows,
    schema: &'static ProductSchema,
    scanner: &mut gate::Scanner,
    file: &str,
    writers: &[std::sync::mpsc::SyncSender<RecordBatch>],
) -> Result<(), BuildError> {
    let n = rows.len();
    let mut start = 0;
    loop {
        let end = (start + write::ROW_GROUP_ROWS).min(n);
        let batch = rows.batch(schema, start..end)?;
        {
            let _gate = tracing::info_span!("privacy_gate", file = %file).entered();
            let _timer = crate::telemetry::metrics::Stage::PrivacyGate.timer();
            scanner.scan(&batch);
        }
        if !scanner.found() {
            for w in writers {
                if w.send(batch.clone()).is_err() {
                    return Ok(());
                }
            }
        }
        start = end;
        if start >= n {
            return Ok(());
        }
    }
}

/// Encodes and writes a built product: its files, their manifests and the data dictionary.
fn release(
    contract: &Contract,
    kind: ProductKind,
    label: &str,
    built: Built,
    opts: &BuildOptions,
) -> Result<Released, BuildError> {
    let schema = schema::of(kind);
    let dir = product_dir(&opts.output, &contract.name, kind);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let base = base_name(&contract.name, kind, label);
    let mut formats = contract.formats.clone();
    formats.sort();
    let targets: Vec<Target> = formats
        .into_iter()
        .map(|format| {
            let name = format!("{base}.{}", format.extension());
            let path = dir.join(&name);
            Target { format, name, path }
        })
        .collect();
    let written = encode(contract, (kind, label), &built.rows, &targets)?;
    let rows = built.rows.len();
    let product_version = written[0].sha256.clone();
    let delivery_id = manifest::delivery_id(&contract.name, kind.as_str(), label, &product_version);
    let dictionary = dir.join(dictionary::file_name(&contract.name, kind));
    let dictionary_text = dictionary::render(contract, schema);
    write_atomic(&dictionary, dictionary_text.as_bytes())?;
    let dictionary_sha256 = manifest::sha256_hex(dictionary_text.as_bytes());
    let dates = |v: &[NaiveDate]| v.iter().map(|d| d.to_string()).collect::<Vec<_>>();
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    let mut files = Vec::new();
    for (t, w) in targets.iter().zip(written) {
        let (f, name, path) = (&t.format, &t.name, t.path.clone());
        let sha256 = w.sha256;
        let m = Manifest {
            manifest_version: manifest::MANIFEST_VERSION,
            partner: contract.name.clone(),
            product: kind.as_str().to_string(),
            period: label.to_string(),
            file: name.clone(),
            format: f.extension().to_string(),
            compression: (*f == Format::Parquet).then(|| contract.parquet.describe()),
            schema_version: schema.version,
            schema_fingerprint: schema.fingerprint(),
            rows,
            bytes: w.bytes,
            sha256: sha256.clone(),
            product_version: product_version.clone(),
            delivery_id: delivery_id.clone(),
            key_version: contract.pseudonymization.key_version.clone(),
            key_period: match contract.key_period {
                KeyPeriod::Month => "month".into(),
                KeyPeriod::Contract => "contract".into(),
            },
            k: contract.k,
            source_batches: dates(&built.source_batches),
            missing_batches: dates(&built.missing_batches),
            comparison_batches: dates(&built.comparison_batches),
            companion_files: names.iter().filter(|n| *n != name).cloned().collect(),
            dictionary: dictionary::file_name(&contract.name, kind),
            dictionary_sha256: dictionary_sha256.clone(),
            highlights: built.highlights.clone(),
            built_at: opts.built_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        };
        let manifest_path = dir.join(format!("{name}.manifest.json"));
        write_atomic(&manifest_path, &m.to_json()?)?;
        files.push(ReleasedFile {
            path,
            manifest: manifest_path,
            rows,
            bytes: w.bytes,
            sha256,
        });
    }
    tracing::info!(rows, delivery_id = %delivery_id, "product released");
    Ok(Released {
        partner: contract.name.clone(),
        product: kind,
        period: label.to_string(),
        files,
        dictionary,
        product_version,
        delivery_id,
        highlights: built.highlights,
    })
}
