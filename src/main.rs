//! The `datashare` command line: one binary, one subcommand per role.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Turns a marketplace's daily data extracts into data products for brand partners.
#[derive(Parser, Debug)]
#[command(name = "datashare", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Writes seeded synthetic extracts (with injected defects and their ground truth) to a folder.
    Generate(datashare::generate::GenerateArgs),
    /// Cleans whole batches from a local folder laid out like the raw bucket.
    Clean(datashare::cli::CleanArgs),
    /// Measures the cleaning engine on generated data.
    Bench(datashare::cli::BenchArgs),
    /// Builds a partner's daily or monthly product from local curated data.
    Build(datashare::products::command::BuildArgs),
    /// Runs the worker: stages parts, runs claimed batch steps, publishes delivery requests.
    Worker(datashare::service::command::WorkerArgs),
    /// Runs a sink's consumer: delivers requests (sftp, api) or sends partner e-mails (email).
    Deliver(datashare::service::deliver::DeliverArgs),
    /// Releases a held batch (failed files, blocking guardrails): products are built and delivered.
    Release(datashare::service::release::ReleaseArgs),
    /// Runs the alerting consumer: archives dead letters, e-mails alerts to the data team.
    Alert(datashare::alerting::AlertArgs),
    /// Re-runs batch steps (--date, --from/--to) or republishes archived dead letters.
    Replay(datashare::alerting::replay::ReplayArgs),
    /// Checks every partner sink's connection and credentials without delivering.
    CheckSinks(datashare::sinks::check::CheckSinksArgs),
}

fn main() -> anyhow::Result<ExitCode> {
    datashare::telemetry::init(
        std::io::stderr,
        "warn",
        std::io::IsTerminal::is_terminal(&std::io::stderr())
            && std::env::var_os("NO_COLOR").is_none(),
    );
    let ok = match Cli::parse().command {
        Command::Generate(args) => {
            datashare::generate::run(&args)?;
            true
        }
        Command::Clean(args) => datashare::cli::clean(&args)?,
        Command::Bench(args) => datashare::cli::bench(&args)?,
        Command::Build(args) => {
            datashare::products::command::run(&args)?;
            true
        }
        Command::Worker(args) => {
            datashare::service::command::run(&args)?;
            true
        }
        Command::Deliver(args) => {
            datashare::service::deliver::run(&args)?;
            true
        }
        Command::Release(args) => datashare::service::release::run(&args)?,
        Command::Alert(args) => {
            datashare::alerting::run(&args)?;
            true
        }
        Command::Replay(args) => datashare::alerting::replay::run(&args)?,
        Command::CheckSinks(args) => datashare::sinks::check::run(&args)?,
    };
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
