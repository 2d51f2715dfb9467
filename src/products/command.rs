//! `datashare build`: builds one partner product from local curated data.

use std::path::PathBuf;

use chrono::NaiveDate;

use super::{BuildOptions, Period, build, contract, monthly};

/// Arguments of `datashare build`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("period").required(true).args(["date", "month"])))]
pub struct BuildArgs {
    /// Partner name (a contract `<partners>/<name>.toml`).
    #[arg(long)]
    pub partner: String,
    /// Builds the daily file of this day (`YYYY-MM-DD`).
    #[arg(long)]
    pub date: Option<NaiveDate>,
    /// Builds the monthly file of this month (`YYYY-MM`).
    #[arg(long)]
    pub month: Option<String>,
    /// Folder holding `curated/` (the output of `datashare clean`).
    #[arg(long)]
    pub input: PathBuf,
    /// Folder receiving `products/<partner>/<daily|monthly>/`.
    #[arg(long)]
    pub output: PathBuf,
    /// Folder of partner contracts.
    #[arg(long, default_value = "partners")]
    pub partners: PathBuf,
    /// Builds a month even when batches of its window are missing.
    #[arg(long)]
    pub allow_missing_batches: bool,
}

/// Runs `datashare build`: validates every contract, builds, prints the files and highlights.
pub fn run(args: &BuildArgs) -> anyhow::Result<()> {
    let c = contract::find(&args.partners, &args.partner)?;
    let period = match (&args.date, &args.month) {
        (Some(d), None) => Period::Day(*d),
        (None, Some(m)) => Period::Month(monthly::parse_month(m)?),
        _ => anyhow::bail!("give exactly one of --date or --month"),
    };
    let opts = BuildOptions {
        input: args.input.clone(),
        output: args.output.clone(),
        allow_missing_batches: args.allow_missing_batches,
        built_at: chrono::Utc::now(),
    };
    let released = build(&c, period, &opts)?;
    for f in &released.files {
        println!(
            "{} rows={} bytes={} sha256={}",
            f.path.display(),
            f.rows,
            f.bytes,
            f.sha256
        );
    }
    println!("dictionary {}", released.dictionary.display());
    println!("delivery_id {}", released.delivery_id);
    for h in &released.highlights {
        println!("highlight {h}");
    }
    Ok(())
}
