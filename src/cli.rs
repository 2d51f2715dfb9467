//! Subcommands that run locally on folders: `clean`.

use std::path::PathBuf;

use chrono::NaiveDate;

use crate::clean::Schemas;
use crate::clean::local::{marker_days, run_local_batch};

/// Arguments of `datashare clean`.
#[derive(Debug, clap::Args)]
pub struct CleanArgs {
    /// Folder laid out like the raw bucket (`extracts/...`).
    #[arg(long)]
    pub input: PathBuf,
    /// Folder receiving `curated/`, `quarantine/` and `reports/`.
    #[arg(long)]
    pub output: PathBuf,
    /// Batch day; every day with a marker when omitted.
    #[arg(long)]
    pub date: Option<NaiveDate>,
    /// Table schemas to use instead of the built-in `config/tables.toml`.
    #[arg(long)]
    pub tables: Option<PathBuf>,
}

/// Runs `datashare clean`; returns false when a file or batch failed.
pub fn clean(args: &CleanArgs) -> anyhow::Result<bool> {
    let schemas = match &args.tables {
        Some(p) => Schemas::load(p)?,
        None => Schemas::builtin()?,
    };
    let days = match args.date {
        Some(d) => vec![d],
        None => marker_days(&args.input)?,
    };
    if days.is_empty() {
        anyhow::bail!(
            "no batch marker (extracts/dt=<D>/_SUCCESS) under {}",
            args.input.display()
        );
    }
    let mut ok = true;
    for dt in days {
        let batch = match run_local_batch(&schemas, &args.input, &args.output, dt) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("dt={dt}: {e}");
                ok = false;
                continue;
            }
        };
        for (name, t) in &batch.report.tables {
            println!(
                "dt={dt} {name}: read {} kept {} quarantined {} duplicates {} conflicts {}",
                t.rows_read,
                t.rows_kept,
                t.rows_quarantined,
                t.duplicates_removed,
                t.conflicts_resolved
            );
        }
        for f in batch.failed_files() {
            let e = f.error.as_ref().expect("failed files have an error");
            eprintln!("dt={dt} {}: {} ({})", f.object, e.kind, e.message);
            ok = false;
        }
        for u in &batch.unlisted {
            eprintln!("dt={dt} {u}: not listed in the marker, ignored");
        }
        println!("dt={dt} report: {}", batch.outputs.quality().display());
    }
    Ok(ok)
}
