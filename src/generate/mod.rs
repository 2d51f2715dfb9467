//! Seeded synthetic extracts with injected defects and a ground-truth file.
//!
//! `generate_day` writes one batch in the bucket layout of the spec (parts of the three tables,
//! then the `_SUCCESS` marker) to an [`ObjectSink`], and the ground truth under `truth/dt=<D>/`:
//! `summary.json` (the counters a correct cleaner reports) and `defects.jsonl` (every injected
//! defect, where, and what the curated data must hold). Every table streams row by row: nothing
//! is kept per row, so a 10-million-row part needs only bounded buffers.
//!
//! Randomness is derived from `(seed, date, table, index)`, so any line of any day can be
//! regenerated alone (late corrections re-state lines of the day before that way).

mod badfiles;
mod catalog;
mod customers;
mod defects;
mod people;
mod schema;
mod sink;
mod table;
mod transactions;
mod truth;
mod values;
mod writer;

use std::io::{self, IsTerminal, Write};
use std::path::Path;

use chrono::NaiveDate;

pub use catalog::{Catalog, OUCHHUNGRY, Product, known_brands};
pub use schema::{Col, Need, Row, Table, Ty};
pub use sink::{LocalDirSink, ObjectSink, ObjectWriter};
pub use truth::{DayTruth, DefectEntry, FieldCounts, FileSummary, TableSummary};
pub use values::{NULL_MARKERS, local_to_utc};

use table::{CustomerSource, DayCtx, ProductSource, TxSource, run_table};
use transactions::TxDay;

/// Largest `--rows`: transaction ids carry eight digits.
pub const MAX_ROWS: u64 = 50_000_000;

/// Errors of the generator.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The options cannot produce a batch.
    #[error("invalid option: {0}")]
    InvalidOptions(String),
    /// An object could not be written.
    #[error("cannot write {object}: {source}")]
    Io {
        /// Object name (or path).
        object: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl GenerateError {
    /// Wraps an I/O error with the object it concerns.
    pub(crate) fn io(object: &str, source: io::Error) -> Self {
        GenerateError::Io {
            object: object.to_string(),
            source,
        }
    }

    /// Returns true when retrying may succeed (I/O), false for bad options.
    pub fn is_transient(&self) -> bool {
        matches!(self, GenerateError::Io { .. })
    }
}

/// Options of one generation run (the library side of `datashare generate`).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Seed of every random choice.
    pub seed: u64,
    /// Transaction lines sold per day (duplicates, late corrections and bad files come on top).
    pub rows: u64,
    /// Customers in the snapshot; `None` means `max(200, rows / 10)`.
    pub customers: Option<u64>,
    /// Parts per table (products and customers use at most two).
    pub parts: usize,
    /// Gzip-compress the parts.
    pub gzip: bool,
    /// Share of rows that get one defect (every defect kind appears at least once when > 0).
    pub defect_rate: f64,
    /// Add one part per table that must be rejected whole.
    pub bad_files: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            seed: 42,
            rows: 2000,
            customers: None,
            parts: 2,
            gzip: false,
            defect_rate: 0.0,
            bad_files: false,
        }
    }
}

impl GenerateOptions {
    /// Returns the number of customers in the snapshot.
    pub fn customer_count(&self) -> u64 {
        self.customers.unwrap_or((self.rows / 10).max(200)).max(1)
    }

    /// Returns the number of parts of a table.
    pub fn parts_of(&self, table: Table) -> usize {
        match table {
            Table::Transactions => self.parts,
            Table::Products | Table::Customers => self.parts.min(2),
        }
    }

    /// Checks the options.
    pub fn validate(&self) -> Result<(), GenerateError> {
        let bad = |m: &str| Err(GenerateError::InvalidOptions(m.to_string()));
        if !(self.defect_rate.is_finite() && (0.0..=1.0).contains(&self.defect_rate)) {
            return bad("defect rate must be between 0 and 1");
        }
        if !(1..=999).contains(&self.parts) {
            return bad("parts must be between 1 and 999");
        }
        if self.rows > MAX_ROWS {
            return bad("rows must be at most 50000000 per day");
        }
        if self.customer_count() > 9_000_000 {
            return bad("customers must be at most 9000000");
        }
        Ok(())
    }
}

/// Runs `datashare generate`: writes every day of `dates` under `out`, with a progress bar on a
/// terminal.
pub fn run(out: &Path, dates: &[NaiveDate], opts: &GenerateOptions) -> Result<(), GenerateError> {
    opts.validate()?;
    let sink = LocalDirSink::new(out);
    let bar = if io::stderr().is_terminal() {
        let per_day = opts.rows + opts.customer_count() + 300;
        let bar = indicatif::ProgressBar::new(per_day * dates.len() as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {human_pos}/{human_len} rows ({per_sec}, eta {eta})",
        ) {
            bar.set_style(style);
        }
        Some(bar)
    } else {
        None
    };
    for date in dates {
        let mut progress = |n: u64| {
            if let Some(b) = &bar {
                b.inc(n);
            }
        };
        let truth = generate_day_with_progress(opts, *date, &sink, &mut progress)?;
        for (name, t) in &truth.tables {
            tracing::info!(dt = %truth.dt, table = %name, rows_read = t.rows_read, rows_kept = t.rows_kept, "generated");
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(())
}

/// Generates one day's batch into `sink` and returns its ground truth.
pub fn generate_day(
    opts: &GenerateOptions,
    date: NaiveDate,
    sink: &dyn ObjectSink,
) -> Result<DayTruth, GenerateError> {
    generate_day_with_progress(opts, date, sink, &mut |_| {})
}

/// Generates one day's batch, reporting rows written through `progress`.
pub fn generate_day_with_progress(
    opts: &GenerateOptions,
    date: NaiveDate,
    sink: &dyn ObjectSink,
    progress: &mut dyn FnMut(u64),
) -> Result<DayTruth, GenerateError> {
    opts.validate()?;
    check_date(date)?;
    let dt = date.format("%Y-%m-%d").to_string();
    let catalog = Catalog::new(opts.seed, date);
    let customers = opts.customer_count();
    let defects_name = format!("truth/dt={dt}/defects.jsonl");
    let mut defects = sink
        .create(&defects_name)
        .map_err(|e| GenerateError::io(&defects_name, e))?;
    let mut files = Vec::new();
    let mut tables = std::collections::BTreeMap::new();
    {
        let mut ctx = DayCtx {
            seed: opts.seed,
            date,
            defect_rate: opts.defect_rate,
            gzip: opts.gzip,
            customers,
            sink,
            defects: &mut *defects,
            progress,
        };
        for table in Table::ALL {
            let parts = opts.parts_of(table);
            let (mut fs, summary) = match table {
                Table::Transactions => {
                    let mut src = TxSource {
                        day: TxDay::new(opts.seed, customers, &catalog),
                        date,
                        rows: opts.rows,
                    };
                    let mut out = run_table(&mut ctx, &mut src, parts)?;
                    if opts.bad_files {
                        out.0.push(badfiles::missing_column(
                            &ctx,
                            &mut src.day,
                            date,
                            opts.rows,
                            parts,
                        )?);
                    }
                    out
                }
                Table::Products => {
                    let mut src = ProductSource {
                        catalog: &catalog,
                        seed: opts.seed,
                    };
                    let mut out = run_table(&mut ctx, &mut src, parts)?;
                    if opts.bad_files {
                        out.0.push(badfiles::not_csv(&ctx, date, parts)?);
                    }
                    out
                }
                Table::Customers => {
                    let mut src = CustomerSource {
                        seed: opts.seed,
                        date,
                        customers,
                    };
                    let mut out = run_table(&mut ctx, &mut src, parts)?;
                    if opts.bad_files {
                        out.0.push(badfiles::undecodable(&ctx, date, parts)?);
                    }
                    out
                }
            };
            files.append(&mut fs);
            tables.insert(table.name().to_string(), summary);
        }
    }
    defects
        .finish()
        .map_err(|e| GenerateError::io(&defects_name, e))?;
    let truth = DayTruth {
        dt: dt.clone(),
        seed: opts.seed,
        defect_rate: opts.defect_rate,
        files,
        tables,
    };
    write_json(sink, &format!("truth/dt={dt}/summary.json"), &truth)?;
    let marker = serde_json::json!({
        "dt": dt,
        "files": truth.files.iter().map(|f| f.object.as_str()).collect::<Vec<_>>(),
    });
    write_json(sink, &format!("extracts/dt={dt}/_SUCCESS"), &marker)?;
    Ok(truth)
}

/// Rejects days outside 1990–2199 (customer histories start in 2015; chrono arithmetic must not overflow).
fn check_date(date: NaiveDate) -> Result<(), GenerateError> {
    use chrono::Datelike;
    if (1990..2200).contains(&date.year()) {
        Ok(())
    } else {
        Err(GenerateError::InvalidOptions(
            "date must be between 1990 and 2199".into(),
        ))
    }
}

fn write_json(
    sink: &dyn ObjectSink,
    name: &str,
    value: &impl serde::Serialize,
) -> Result<(), GenerateError> {
    let mut w = sink.create(name).map_err(|e| GenerateError::io(name, e))?;
    serde_json::to_writer_pretty(&mut w, value).map_err(|e| GenerateError::io(name, e.into()))?;
    w.write_all(b"\n").map_err(|e| GenerateError::io(name, e))?;
    w.finish().map_err(|e| GenerateError::io(name, e))
}

/// Writes ONE transactions part of `opts.rows` lines to `path` (for benchmarks); the ground
/// truth of the defects is discarded, the file's summary is returned.
pub fn generate_transactions_part(
    opts: &GenerateOptions,
    date: NaiveDate,
    path: &Path,
) -> Result<FileSummary, GenerateError> {
    opts.validate()?;
    check_date(date)?;
    struct OnePath<'p>(&'p Path);
    impl ObjectSink for OnePath<'_> {
        fn create(&self, _name: &str) -> io::Result<Box<dyn ObjectWriter>> {
            sink::file_object(self.0)
        }
    }
    let catalog = Catalog::new(opts.seed, date);
    let customers = opts.customer_count();
    let mut discard = io::sink();
    let sink = OnePath(path);
    let mut ctx = DayCtx {
        seed: opts.seed,
        date,
        defect_rate: opts.defect_rate,
        gzip: opts.gzip,
        customers,
        sink: &sink,
        defects: &mut discard,
        progress: &mut |_| {},
    };
    let mut src = TxSource {
        day: TxDay::new(opts.seed, customers, &catalog),
        date,
        rows: opts.rows,
    };
    let (mut files, _) = run_table(&mut ctx, &mut src, 1)?;
    let mut f = files
        .pop()
        .ok_or_else(|| GenerateError::InvalidOptions("no part written".into()))?;
    f.object = path.display().to_string();
    Ok(f)
}

#[cfg(test)]
mod tests;
