//! `datashare worker`, and the main loop of every role: load and check the configuration,
//! connect, serve (push or pull) until SIGTERM, finish what is in flight.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use super::{Role, Worker, pull, push};
use crate::config::Config;

/// Arguments of `datashare worker`.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// How to serve.
    #[command(flatten)]
    pub serve: ServeArgs,
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
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,
    /// Configuration file instead of the built-in `config/default.toml`.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Runs the worker until SIGTERM or Ctrl-C; in-flight messages finish first.
pub fn run(args: &WorkerArgs) -> anyhow::Result<()> {
    serve(&args.serve, |config| async move {
        Ok(Worker::start(config).await?)
    })
}

/// Loads the configuration, starts a role with `start`, and serves it (push or pull) until
/// SIGTERM or Ctrl-C; in-flight messages finish first.
pub fn serve<R, F, Fut>(args: &ServeArgs, start: F) -> anyhow::Result<()>
where
    R: Role,
    F: FnOnce(Config) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<R>>,
{
    let config = Config::load(args.config.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let role = Arc::new(start(config).await?);
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutdown requested");
            let _ = tx.send(true);
        });
        if args.pull {
            pull::run(role.clone(), rx).await?;
        } else {
            let port = match args.port {
                Some(p) => p,
                None => std::env::var("PORT")
                    .ok()
                    .map(|p| p.parse())
                    .transpose()
                    .map_err(|_| anyhow::anyhow!("PORT is not a port number"))?
                    .unwrap_or(8080),
            };
            let listener = tokio::net::TcpListener::bind((args.host.as_str(), port)).await?;
            push::serve(role.clone(), listener, rx).await?;
        }
        tracing::info!(role = role.role(), "stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
