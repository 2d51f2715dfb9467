//! Google Cloud clients: Cloud Storage (data plane, plus the JSON API for metadata and listing)
//! and Pub/Sub publishers and subscribers, pointed at the emulators when the configuration says
//! so (the official clients do not read `PUBSUB_EMULATOR_HOST`/`STORAGE_EMULATOR_HOST`).

pub mod pubsub;
pub mod storage;

use google_cloud_auth::credentials::{Credentials, anonymous};

pub use pubsub::{Bus, PublishError};
pub use storage::{Gcs, GcsError, ObjectMeta};

/// A client could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No credentials could be found or built.
    #[error("credentials: {0}")]
    Credentials(String),
    /// A client builder failed.
    #[error("{client} client: {message}")]
    Build {
        /// Which client.
        client: &'static str,
        /// The cause.
        message: String,
    },
}

/// Credentials for a service: anonymous against an emulator, Application Default otherwise.
pub fn credentials(emulated: bool) -> Result<Credentials, ClientError> {
    if emulated {
        return Ok(anonymous::Builder::new().build());
    }
    google_cloud_auth::credentials::Builder::default()
        .build()
        .map_err(|e| ClientError::Credentials(e.to_string()))
}

/// Is this HTTP status worth retrying (408, 429, 5xx)?
pub fn retryable_status(status: u16) -> bool {
    status == 408 || status == 429 || status >= 500
}

/// Classifies a client error: network problems, timeouts and 408/429/5xx are transient.
///
/// 401/403 are transient too here: for the worker's own buckets and topics they mean a
/// misconfiguration to fix, not a message to throw away (Pub/Sub's attempt limit still ends it).
pub fn is_transient(e: &google_cloud_gax::error::Error) -> bool {
    if e.is_timeout() || e.is_io() || e.is_connect() || e.is_transport() || e.is_authentication() {
        return true;
    }
    if let Some(code) = e.http_status_code() {
        return retryable_status(code) || code == 401 || code == 403;
    }
    if let Some(s) = e.status() {
        use google_cloud_gax::error::rpc::Code;
        return matches!(
            s.code,
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::ResourceExhausted
                | Code::Aborted
                | Code::Internal
                | Code::Unknown
                | Code::Unauthenticated
                | Code::PermissionDenied
        );
    }
    true
}
