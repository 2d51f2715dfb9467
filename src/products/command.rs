//! `datashare build`: builds one partner product from local curated data.

use std::path::PathBuf;

use chrono::NaiveDate;

use super::contract::ProductKind;
use super::{BuildOptions, Period, build, contract, month_periods, monthly};

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
    /// Builds the month products the partner bought (monthly aggregate, brand view) of this
    /// month (`YYYY-MM`).
    #[arg(long)]
    pub month: Option<String>,
    /// With `--month`, builds only this product (`monthly` or `monthly_brands`).
    #[arg(long, value_parser = parse_product)]
    pub product: Option<ProductKind>,
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

fn parse_product(s: &str) -> Result<ProductKind, String> {
    ProductKind::parse(s).ok_or_else(|| format!("{s:?} is not daily, monthly or monthly_brands"))
}

/// Runs `datashare build`: validates every contract, builds, prints the files and highlights.
pub fn run(args: &BuildArgs) -> anyhow::Result<()> {
    let c = contract::find(&args.partners, &args.partner)?;
    let periods = match (&args.date, &args.month, args.product) {
        (Some(d), None, None | Some(ProductKind::Daily)) => vec![Period::Day(*d)],
        (None, Some(m), None) => {
            let periods = month_periods(&c, monthly::parse_month(m)?);
            if periods.is_empty() {
                anyhow::bail!("partner {} did not buy a month product", c.name);
            }
            periods
        }
        (None, Some(m), Some(k)) if k.is_monthly() => {
            vec![Period::of_month(k, monthly::parse_month(m)?)]
        }
        (_, _, Some(k)) => anyhow::bail!("--product {k} does not go with this period"),
        _ => anyhow::bail!("give exactly one of --date or --month"),
    };
    let opts = BuildOptions {
        input: args.input.clone(),
        output: args.output.clone(),
        allow_missing_batches: args.allow_missing_batches,
        built_at: chrono::Utc::now(),
    };
    for period in periods {
        print_released(&build(&c, period, &opts)?);
    }
    Ok(())
}

fn print_released(released: &super::Released) {
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
}
