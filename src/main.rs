//! The `datashare` command line: one binary, one subcommand per role.

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
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Generate(args) => datashare::generate::run(&args)?,
    }
    Ok(())
}
