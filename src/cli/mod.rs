//! The `datashare` command line: every command's arguments, one tokio runtime for the commands
//! that talk to Google Cloud, and one exit-code convention:
//!
//! - `0`: the command did what it was asked;
//! - `1`: it ran, and something it handled failed (a file rejected, a sink check failed, a batch
//!   not settled): the output says what;
//! - `2`: it could not run (bad arguments, configuration, a client that cannot start).
//!
//! [`local`] holds the commands that work on local folders (`clean`, `bench`, `build`); the
//! roles (`worker`, `deliver`, `alert`, `powerbi`) are served by [`crate::service::serve`].

pub mod local;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use chrono::NaiveDate;
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::service::memory::runtime;
use crate::service::serve::{Mode, serve};
use crate::service::{Role, Verdict};

/// Turns a marketplace's daily data extracts into data products for brand partners.
#[derive(Parser, Debug)]
#[command(name = "datashare", version, about)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// One subcommand per role or tool.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Writes seeded synthetic extracts (with injected defects and their ground truth) to a folder.
    Generate(GenerateArgs),
    /// Cleans whole batches from a local folder laid out like the raw bucket.
    Clean(CleanArgs),
    /// Measures the cleaning engine on generated data.
    Bench(BenchArgs),
    /// Builds a partner's daily or monthly product from local curated data.
    Build(BuildArgs),
    /// Runs the worker: stages parts, runs claimed batch steps, publishes delivery requests.
    Worker(ServeArgs),
    /// Runs a sink's consumer: delivers requests (sftp, api) or sends partner e-mails (email).
    Deliver(DeliverArgs),
    /// Releases a held batch (failed files, blocking guardrails): products are built and delivered.
    Release(ReleaseArgs),
    /// Runs the alerting consumer: archives dead letters, e-mails alerts to the data team.
    Alert(ServeArgs),
    /// Re-runs batch steps (--date, --from/--to) or republishes archived dead letters.
    Replay(ReplayArgs),
    /// Checks every partner sink's connection and credentials without delivering.
    CheckSinks(CheckSinksArgs),
    /// Did the day go out? Marker, parts, batch, rows, receipts and open alerts per day.
    Status(StatusArgs),
    /// Runs the Power BI monitor: refreshes after a batch's updates, history checks at each tick.
    Powerbi(ServeArgs),
}

/// Runs the command line: parses, runs, maps the result to the exit code.
pub fn main() -> ExitCode {
    crate::service::memory::configure_allocator();
    let command = Cli::parse().command;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    // Flushed and stopped when dropped, after the command (and its runtime) ended.
    let format = crate::telemetry::LogFormat::from_env(ansi);
    let mut telemetry = crate::telemetry::start(
        &format!("datashare-{}", command.role()),
        std::io::stderr,
        "warn",
        format,
    );
    let code = match run(command) {
        Ok(Verdict::Done) => ExitCode::SUCCESS,
        Ok(Verdict::Failed) => ExitCode::from(1),
        Err(e) => {
            if format == crate::telemetry::LogFormat::Json {
                tracing::error!("datashare: {e:#}");
            } else {
                eprintln!("datashare: {e:#}");
            }
            ExitCode::from(2)
        }
    };
    telemetry.shutdown();
    code
}

impl Command {
    /// The role (`worker`, a sink, `alert`) or command name: `service.name` is
    /// `datashare-<role>`.
    pub fn role(&self) -> &str {
        match self {
            Command::Generate(_) => "generate",
            Command::Clean(_) => "clean",
            Command::Bench(_) => "bench",
            Command::Build(_) => "build",
            Command::Worker(_) => "worker",
            Command::Deliver(a) => &a.sink,
            Command::Release(_) => "release",
            Command::Alert(_) => "alert",
            Command::Replay(_) => "replay",
            Command::CheckSinks(_) => "check-sinks",
            Command::Status(_) => "status",
            Command::Powerbi(_) => "powerbi",
        }
    }
}

/// Runs one command.
pub fn run(command: Command) -> anyhow::Result<Verdict> {
    match command {
        Command::Generate(a) => {
            crate::generate::run(&a.out, &a.days.dates()?, &a.options())?;
            Ok(Verdict::Done)
        }
        Command::Clean(a) => local::clean(&a),
        Command::Bench(a) => local::bench(&a),
        Command::Build(a) => local::build(&a),
        Command::Worker(a) => serve_role(&a, crate::pipeline::Worker::start),
        Command::Deliver(a) => {
            let sink = a.sink;
            serve_role(&a.serve, async move |config| {
                crate::pipeline::deliver::Deliver::start(config, &sink).await
            })
        }
        Command::Alert(a) => serve_role(&a, crate::alerting::Alerting::start),
        Command::Powerbi(a) => serve_role(&a, crate::pipeline::powerbi::PowerBi::start),
        Command::Release(a) => {
            let config = Config::load(a.config.as_deref())?;
            runtime()?.block_on(crate::pipeline::release::run_release(&config, a.date))
        }
        Command::Replay(a) => {
            let config = Config::load(a.config.as_deref())?;
            let rt = runtime()?;
            match (&a.dead_letters, a.days.range()?) {
                (Some(sub), None) => {
                    rt.block_on(crate::alerting::replay::run_dead_letters(&config, sub))
                }
                (None, Some((from, to))) => {
                    rt.block_on(crate::pipeline::release::run_replay(&config, from, to))
                }
                _ => anyhow::bail!(
                    "give --dead-letters <subscription>, --date D or --from D1 --to D2"
                ),
            }
        }
        Command::CheckSinks(a) => {
            let config = Config::load(a.config.as_deref())?;
            runtime()?.block_on(crate::pipeline::check::run(&config, a.partner.as_deref()))
        }
        Command::Status(a) => {
            let config = Config::load(a.config.as_deref())?;
            let days = match a.days.range()? {
                Some(_) => a.days.dates()?,
                None => vec![crate::pipeline::status::yesterday()],
            };
            runtime()?.block_on(crate::pipeline::status::run(
                &config,
                &days,
                a.partner.as_deref(),
                a.json,
            ))
        }
    }
}

/// Loads the configuration, starts a role with `start`, and serves it until SIGTERM or Ctrl-C.
fn serve_role<R, E, F>(args: &ServeArgs, start: F) -> anyhow::Result<Verdict>
where
    R: Role,
    E: std::error::Error + Send + Sync + 'static,
    F: AsyncFnOnce(Config) -> Result<R, E>,
{
    let config = Config::load(args.config.as_deref())?;
    let mode = args.mode()?;
    runtime()?.block_on(async move {
        let role = Arc::new(start(config).await?);
        serve(role, mode).await?;
        Ok(Verdict::Done)
    })
}

/// A day, or a range of days (`--date D` or `--from D1 --to D2`).
#[derive(Debug, Clone, clap::Args)]
pub struct Days {
    /// One day (`YYYY-MM-DD`).
    #[arg(long, conflicts_with_all = ["from", "to"])]
    pub date: Option<NaiveDate>,
    /// First day of a range.
    #[arg(long, requires = "to")]
    pub from: Option<NaiveDate>,
    /// Last day of a range (inclusive).
    #[arg(long, requires = "from")]
    pub to: Option<NaiveDate>,
}

/// Longest range a command accepts, in days (ten years).
const MAX_DAYS: i64 = 3660;

impl Days {
    /// The first and last day, when any was given.
    pub fn range(&self) -> anyhow::Result<Option<(NaiveDate, NaiveDate)>> {
        match (self.date, self.from, self.to) {
            (Some(d), _, _) => Ok(Some((d, d))),
            (None, Some(from), Some(to)) => {
                anyhow::ensure!(
                    from <= to && (to - from).num_days() < MAX_DAYS,
                    "--from must not be after --to (at most ten years)"
                );
                Ok(Some((from, to)))
            }
            _ => Ok(None),
        }
    }

    /// Every day, in order; at least one must have been given.
    pub fn dates(&self) -> anyhow::Result<Vec<NaiveDate>> {
        let (from, to) = self
            .range()?
            .ok_or_else(|| anyhow::anyhow!("give --date, or --from and --to"))?;
        Ok(from.iter_days().take_while(|d| *d <= to).collect())
    }
}

/// Arguments of `datashare generate`.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    /// Folder the bucket layout is written under.
    #[arg(long)]
    pub out: PathBuf,
    /// The day or days to generate.
    #[command(flatten)]
    pub days: Days,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Transaction lines per day.
    #[arg(long, default_value_t = 2000)]
    pub rows: u64,
    /// Customers in the snapshot [default: max(200, rows/10)].
    #[arg(long)]
    pub customers: Option<u64>,
    /// Parts per table (products and customers use at most two).
    #[arg(long, default_value_t = 2)]
    pub parts: usize,
    /// Gzip-compress the parts.
    #[arg(long)]
    pub gzip: bool,
    /// Share of rows with one injected defect (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub defect_rate: f64,
    /// Add one part per table that must be rejected whole.
    #[arg(long)]
    pub bad_files: bool,
}

impl GenerateArgs {
    /// The generation options of the command line.
    pub fn options(&self) -> crate::generate::GenerateOptions {
        crate::generate::GenerateOptions {
            seed: self.seed,
            rows: self.rows,
            customers: self.customers,
            parts: self.parts,
            gzip: self.gzip,
            defect_rate: self.defect_rate,
            bad_files: self.bad_files,
        }
    }
}

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
    /// MiB of staged rows kept in memory instead of staged files (0: write every staged file).
    #[arg(long, default_value_t = 256)]
    pub stage_memory_mib: usize,
}

/// Arguments of `datashare bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// What to measure (only `clean` for now).
    #[arg(default_value = "clean")]
    pub what: String,
    /// Transaction rows of the generated batch.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: u64,
    /// Parts the transactions are split into.
    #[arg(long, default_value_t = 1)]
    pub parts: usize,
    /// Share of rows with a defect.
    #[arg(long, default_value_t = 0.01)]
    pub defect_rate: f64,
    /// Gzip the generated parts.
    #[arg(long)]
    pub gzip: bool,
    /// Folder for the generated batch and the outputs (a temporary folder when omitted).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

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
    pub product: Option<crate::events::ProductKind>,
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

fn parse_product(s: &str) -> Result<crate::events::ProductKind, String> {
    crate::events::ProductKind::parse(s)
        .ok_or_else(|| format!("{s:?} is not daily, monthly or monthly_brands"))
}

/// How a role serves: push endpoint or pull, where, which configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Pulls the subscriptions with the streaming subscriber.
    #[arg(long, conflicts_with = "push")]
    pub pull: bool,
    /// Serves Pub/Sub push requests over HTTP (the default; Cloud Run).
    #[arg(long)]
    pub push: bool,
    /// Port of the push endpoint (default: $PORT, else 8080).
    #[arg(long)]
    pub port: Option<u16>,
    /// Address to listen on (default: 127.0.0.1; 0.0.0.0 on Cloud Run, where `K_SERVICE` is set).
    #[arg(long)]
    pub host: Option<IpAddr>,
    /// Configuration file instead of the built-in `config/default.toml`.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl ServeArgs {
    /// Pull, or push on `--host` and `--port` (else `$PORT`, else 8080).
    pub fn mode(&self) -> anyhow::Result<Mode> {
        if self.pull {
            return Ok(Mode::Pull);
        }
        let port = match self.port {
            Some(p) => p,
            None => std::env::var("PORT")
                .ok()
                .map(|p| p.parse())
                .transpose()
                .map_err(|_| anyhow::anyhow!("PORT is not a port number"))?
                .unwrap_or(8080),
        };
        let cloud_run = std::env::var_os("K_SERVICE").is_some_and(|s| !s.is_empty());
        let host = self.host.unwrap_or(default_host(cloud_run));
        Ok(Mode::Push(SocketAddr::new(host, port)))
    }
}

/// Where the push server listens without `--host`: every interface on Cloud Run (`K_SERVICE`
/// set), loopback anywhere else.
pub fn default_host(cloud_run: bool) -> IpAddr {
    if cloud_run {
        IpAddr::from([0, 0, 0, 0])
    } else {
        IpAddr::from([127, 0, 0, 1])
    }
}

/// Arguments of `datashare deliver`.
#[derive(Debug, Clone, clap::Args)]
pub struct DeliverArgs {
    /// The sink to run: `sftp`, `api` or `email`.
    #[arg(long, value_parser = crate::pipeline::deliver::SINKS)]
    pub sink: String,
    /// How to serve.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Arguments of `datashare release`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReleaseArgs {
    /// The batch day to release.
    #[arg(long)]
    pub date: NaiveDate,
    /// Configuration file instead of the built-in `config/default.toml`.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Arguments of `datashare replay`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Republishes the archived dead letters of this source subscription (e.g. `deliveries-sftp`).
    #[arg(long, value_name = "SUBSCRIPTION", conflicts_with_all = ["date", "from", "to"])]
    pub dead_letters: Option<String>,
    /// The batch step(s) to re-run (unchanged products are not delivered again).
    #[command(flatten)]
    pub days: Days,
    /// Configuration file instead of the built-in `config/default.toml`.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Arguments of `datashare status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// The day(s) to show (yesterday in America/Sao_Paulo when none is given).
    #[command(flatten)]
    pub days: Days,
    /// Shows only this partner's products and alerts.
    #[arg(long)]
    pub partner: Option<String>,
    /// JSON for scripts instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Configuration file instead of the built-in `config/default.toml`.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Arguments of `datashare check-sinks`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckSinksArgs {
    /// Configuration file instead of the built-in `config/default.toml`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Checks only this partner.
    #[arg(long)]
    pub partner: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_listens_on_loopback_unless_on_cloud_run_or_told() {
        assert!(default_host(false).is_loopback());
        assert!(default_host(true).is_unspecified());
        let cli = Cli::try_parse_from(["datashare", "worker", "--push", "--port", "9"]).unwrap();
        let Command::Worker(args) = cli.command else {
            panic!("not the worker")
        };
        assert_eq!(args.host, None);
        let cli = Cli::try_parse_from(["datashare", "alert", "--host", "0.0.0.0", "--port", "9"])
            .unwrap();
        let Command::Alert(args) = cli.command else {
            panic!("not alert")
        };
        assert_eq!(
            args.mode().unwrap(),
            Mode::Push(SocketAddr::from(([0, 0, 0, 0], 9)))
        );
    }
}
