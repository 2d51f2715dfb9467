//! The main loop of every role: serve its subscriptions (push or pull) until SIGTERM or
//! Ctrl-C, then finish what is in flight.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use super::{Role, pull, push};

/// How a role receives its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The streaming subscriber pulls every subscription of the role.
    Pull,
    /// Pub/Sub pushes to an HTTP endpoint at this address (Cloud Run).
    Push(SocketAddr),
}

/// Serving stopped on an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The subscriber could not be created.
    #[error(transparent)]
    Client(#[from] crate::gcp::ClientError),
    /// The push endpoint could not listen.
    #[error("push endpoint: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves `role` until SIGTERM or Ctrl-C; in-flight messages finish first.
pub async fn serve<R: Role>(role: Arc<R>, mode: Mode) -> Result<(), ServeError> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        let _ = tx.send(true);
    });
    match mode {
        Mode::Pull => pull::run(role.clone(), rx).await?,
        Mode::Push(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            push::serve(role.clone(), listener, rx).await?;
        }
    }
    tracing::info!(role = role.context().role, "stopped");
    // Spans and metric points still buffered go out now, inside Cloud Run's SIGTERM grace.
    crate::telemetry::flush();
    Ok(())
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
