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
pub mod monthly;
pub mod pseudonym;
pub mod reconcile;
pub mod schema;
pub mod write;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Months, NaiveDate, SecondsFormat, Utc};

use self::contract::{Contract, ContractError, Format, KeyPeriod};
use self::curated::Curated;
use self::daily::DailyError;
use self::gate::{GateError, GateTarget};
use self::manifest::{Manifest, ManifestError};
use self::monthly::MonthlyError;
use self::pseudonym::{PseudonymError, Pseudonymizer};
use self::reconcile::ReconcileError;
use self::schema::SchemaError;
use self::write::WriteError;
use crate::events::Alert;
use crate::events::ProductKind;

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

struct Built {
    cells: Vec<Vec<schema::Cell>>,
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
    let curated = Curated::new(&opts.input);
    let label = period.label();
    let span =
        tracing::info_span!("build", partner = %contract.name, product = %kind, period = %label);
    let _guard = span.enter();
    let built = match period {
        Period::Day(d) => {
            let t = daily::build(&curated, contract, &keys, d)?;
            Built {
                cells: t.cells(),
                highlights: highlights::daily(&t),
                source_batches: t.source_batches,
                missing_batches: t.missing_batches,
                comparison_batches: Vec::new(),
            }
        }
        Period::Month(first) => {
            let t = monthly::build(&curated, contract, first, opts.allow_missing_batches)?;
            let rec = reconcile::check(&curated, contract, first, &t)?;
            tracing::info!(cents = rec.monthly_cents, "reconciliation held");
            let previous = if t.comparison_batches.is_empty() {
                None
            } else {
                Some(monthly::build(
                    &curated,
                    contract,
                    first - Months::new(1),
                    true,
                )?)
            };
            Built {
                cells: t.cells(),
                highlights: highlights::monthly(&t, previous.as_ref()),
                source_batches: t.source_batches,
                missing_batches: t.missing_batches,
                comparison_batches: t.comparison_batches,
            }
        }
        Period::MonthBrands(first) => {
            // The brand view is computed from the monthly aggregate's lines, and held unless
            // that aggregate reconciles with the daily lines and its country rows with it.
            let m = monthly::build(&curated, contract, first, opts.allow_missing_batches)?;
            reconcile::check(&curated, contract, first, &m)?;
            let t = brands::build(contract, &m);
            reconcile::check_brands(contract, &m, &t)?;
            tracing::info!(
                rows = t.rows.len(),
                dropped_outras = t.dropped_outras_rows,
                dropped_uf = t.dropped_uf_rows,
                "brand view reconciled"
            );
            Built {
                cells: t.cells(),
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
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn release(
    contract: &Contract,
    kind: ProductKind,
    label: &str,
    built: Built,
    opts: &BuildOptions,
) -> Result<Released, BuildError> {
    let schema = schema::of(kind);
    let batch = schema.to_batch(&built.cells)?;
    let base = base_name(&contract.name, kind, label);
    let mut formats = contract.formats.clone();
    formats.sort();
    let mut encoded: Vec<(Format, String, Vec<u8>)> = Vec::new();
    for f in formats {
        let name = format!("{base}.{}", f.extension());
        gate::check(
            schema,
            &batch,
            GateTarget {
                partner: &contract.name,
                product: kind.as_str(),
                period: label,
                file: &name,
            },
        )?;
        let bytes = match f {
            Format::Parquet => write::parquet_bytes(&batch, &contract.parquet)?,
            Format::Csv => write::csv_bytes(schema, &batch)?,
        };
        encoded.push((f, name, bytes));
    }
    let product_version = manifest::sha256_hex(&encoded[0].2);
    let delivery_id = manifest::delivery_id(&contract.name, kind.as_str(), label, &product_version);
    let dir = product_dir(&opts.output, &contract.name, kind);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let dictionary = dir.join(dictionary::file_name(&contract.name, kind));
    let dictionary_text = dictionary::render(contract, schema);
    write_atomic(&dictionary, dictionary_text.as_bytes())?;
    let dictionary_sha256 = manifest::sha256_hex(dictionary_text.as_bytes());
    let dates = |v: &[NaiveDate]| v.iter().map(|d| d.to_string()).collect::<Vec<_>>();
    let names: Vec<String> = encoded.iter().map(|e| e.1.clone()).collect();
    let mut files = Vec::new();
    for (f, name, bytes) in &encoded {
        let path = dir.join(name);
        write_atomic(&path, bytes)?;
        let sha256 = manifest::sha256_hex(bytes);
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
            rows: batch.num_rows(),
            bytes: bytes.len() as u64,
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
            rows: batch.num_rows(),
            bytes: bytes.len() as u64,
            sha256,
        });
    }
    tracing::info!(rows = batch.num_rows(), delivery_id = %delivery_id, "product released");
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
