//! Settings of the sinks: what a partner contract says about each sink (`[[sinks]]`, a closed
//! tagged enum) and the service's own sink settings (`[sinks.sftp]`, `[sinks.api]`, `[smtp]`).

use std::path::PathBuf;

use serde::Deserialize;

use super::secret::SecretRef;

/// Authentication to a partner's REST API.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ApiAuth {
    /// HTTP Basic with a user and a password secret.
    Basic {
        /// User name.
        user: String,
        /// Password reference.
        password: SecretRef,
    },
    /// A bearer token secret.
    Bearer {
        /// Token reference.
        token: SecretRef,
    },
}

/// Settings of the SFTP sink.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SftpConfig {
    /// Server host name.
    pub host: String,
    /// Server port.
    #[serde(default = "default_sftp_port")]
    pub port: u16,
    /// Login.
    pub user: String,
    /// Remote root folder (`<root>/<partner>/<daily|monthly>/<file>`).
    pub root: String,
    /// The pinned host key: an OpenSSH public key line or a `SHA256:` fingerprint.
    pub host_key: String,
    /// Private key reference.
    pub private_key: SecretRef,
    /// Optional passphrase reference.
    #[serde(default)]
    pub passphrase: Option<SecretRef>,
}

fn default_sftp_port() -> u16 {
    22
}

/// Settings of the REST API sink.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Base URL, HTTPS (`<base>/datasets/<product>/files`).
    pub base_url: String,
    /// Authentication.
    pub auth: ApiAuth,
    /// Optional CA bundle to trust.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// Settings of the partner e-mail sink: one e-mail per product version to the contract's contacts.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// Optional reply-to address.
    #[serde(default)]
    pub reply_to: Option<String>,
}

/// A sink, by its type.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SinkConfig {
    /// Upload to the partner's SFTP server.
    Sftp(SftpConfig),
    /// POST to the partner's REST API.
    Api(ApiConfig),
    /// E-mail to the partner's contacts after the data sinks succeeded.
    Email(EmailConfig),
}

impl SinkConfig {
    /// The sink's name (`sftp`, `api`, `email`).
    pub fn name(&self) -> &'static str {
        match self {
            SinkConfig::Sftp(_) => "sftp",
            SinkConfig::Api(_) => "api",
            SinkConfig::Email(_) => "email",
        }
    }
}

/// Timeouts of the SFTP sink (`[sinks.sftp]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftpOptions {
    /// TCP connect timeout.
    pub connect_timeout_secs: u64,
    /// Timeout of each SSH/SFTP operation once connected.
    pub io_timeout_secs: u64,
}

impl Default for SftpOptions {
    fn default() -> Self {
        SftpOptions {
            connect_timeout_secs: 10,
            io_timeout_secs: 60,
        }
    }
}

/// Timeouts and retry bounds of the API sink (`[sinks.api]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiOptions {
    /// TCP and TLS connect timeout.
    pub connect_timeout_secs: u64,
    /// Timeout of one whole request (upload and answer).
    pub request_timeout_secs: u64,
    /// Attempts within one delivery before giving the message back to Pub/Sub.
    pub max_attempts: u32,
    /// First backoff; doubles each attempt.
    pub initial_backoff_ms: u64,
    /// Largest backoff, and largest `Retry-After` honoured in-process.
    pub max_backoff_ms: u64,
    /// Time budget of one delivery's retries (keep it under the push request's timeout).
    pub retry_budget_secs: u64,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            connect_timeout_secs: 10,
            request_timeout_secs: 120,
            max_attempts: 5,
            initial_backoff_ms: 500,
            max_backoff_ms: 30_000,
            retry_budget_secs: 150,
        }
    }
}

/// How the connection to the SMTP relay is encrypted (never in clear text).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, required (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
}

/// The service's SMTP relay (not part of a partner contract).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    /// Relay host name (checked against its certificate).
    pub host: String,
    /// Relay port.
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    /// STARTTLS or implicit TLS.
    #[serde(default)]
    pub tls: SmtpTls,
    /// Sender, e.g. `datashare <dados@datashare.example>`.
    pub from: String,
    /// Login, when the relay wants one.
    #[serde(default)]
    pub user: Option<String>,
    /// Password reference (with `user`).
    #[serde(default)]
    pub password: Option<SecretRef>,
    /// A CA bundle to trust instead of the system's (a relay with a private certificate).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Timeout of each SMTP command.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

fn default_smtp_port() -> u16 {
    587
}

fn default_timeout_secs() -> u64 {
    30
}

/// Settings that are not in a partner contract: the service's SMTP relay and timeouts.
#[derive(Debug, Clone, Default)]
pub struct SinkSettings {
    /// The SMTP relay used for partner e-mails (required when a contract has an email sink).
    pub smtp: Option<SmtpSettings>,
    /// SFTP timeouts.
    pub sftp: SftpOptions,
    /// API timeouts and retry bounds.
    pub api: ApiOptions,
}

/// The `[sinks]` table: timeouts and retry bounds of the data sinks (all optional).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct SinkOptions {
    /// `[sinks.sftp]`.
    pub sftp: SftpOptions,
    /// `[sinks.api]`.
    pub api: ApiOptions,
}
