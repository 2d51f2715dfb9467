//! Typed settings: `config/default.toml` (built in, or a file) plus environment overrides,
//! validated once at start-up so a misconfigured service refuses to start instead of failing on
//! its first message.
//!
//! Environment overrides (the names Terraform sets, `terraform/README.md`):
//! `DATASHARE_GCP_PROJECT`, `DATASHARE_BUCKET_<LOGICAL>` (`RAW`, `CURATED`, `PRODUCTS`, `OPS`);
//! the emulators' `PUBSUB_EMULATOR_HOST` and `STORAGE_EMULATOR_HOST`; and for the worker
//! `DATASHARE_STEP_TIMEOUT_SECS`, `DATASHARE_LEASE_EXTENSION_SECS`,
//! `DATASHARE_UNCLAIMED_RESTART_AFTER_SECS`, `DATASHARE_ENCODE_THREADS` and
//! `DATASHARE_PARTNERS_DIR`; push-token checks
//! (`[push]`): `DATASHARE_PUSH_VERIFY`, `_AUDIENCE`, `_SERVICE_ACCOUNT`, `_JWKS_URL`, and
//! `K_SERVICE` (Cloud Run) making verification required (see [`push`]);
//! the partner e-mail relay (`[smtp]`): `DATASHARE_SMTP_HOST`, `_PORT`, `_TLS` (`starttls` or
//! `implicit`), `_FROM`, `_USER`, `_CA_FILE`, and the password as `DATASHARE_SMTP_PASSWORD_FILE`
//! (a file) or in `DATASHARE_SMTP_PASSWORD` (read only when the e-mail sink starts, never printed).
//!
//! A leaf: every module's settings live here ([`sinks`], [`guardrails`], [`alerting`],
//! [`secret`]), so `config` imports nothing from the rest of the crate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod alerting;
pub mod guardrails;
pub mod powerbi;
pub mod push;
pub mod secret;
pub mod sinks;

use alerting::AlertingSettings;
use guardrails::Guardrails;
use push::PushSettings;
use sinks::{SinkOptions, SinkSettings, SmtpSettings};

/// The configuration built into the binary.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Subscription of the worker to raw-object notifications.
pub const EXTRACTS_SUBSCRIPTION: &str = "extracts-worker";
/// Subscription of the worker to batch-ready messages.
pub const BATCHES_SUBSCRIPTION: &str = "batches-worker";
/// Subscription of the worker to schedule messages (monthly builds, ticks).
pub const SCHEDULES_SUBSCRIPTION: &str = "schedules-worker";

/// The configuration is unusable; the message names the field and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The TOML is malformed or has an unknown field.
    #[error("{file}: {message}")]
    Parse {
        /// The file (or `built-in`).
        file: String,
        /// The parser's message.
        message: String,
    },
    /// A value is not allowed.
    #[error("config {field}: {problem}")]
    Invalid {
        /// The field, as a TOML path or an environment variable.
        field: String,
        /// What is wrong.
        problem: String,
    },
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Bucket names by logical name.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Buckets {
    /// Extracts as uploaded.
    pub raw: String,
    /// Staging, curated, quarantine and reports.
    pub curated: String,
    /// Product files and manifests.
    pub products: String,
    /// Claims, receipts, alert state, dead-letter archive.
    pub ops: String,
}

/// Topic names by role.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Topics {
    /// GCS notifications of the raw bucket.
    pub extracts: String,
    /// Batch-ready messages.
    pub batches: String,
    /// Delivery requests, one per product version.
    pub deliveries: String,
    /// Partner notifications.
    pub notify: String,
    /// Scheduled messages.
    pub schedules: String,
    /// Alerts to the data team.
    pub alerts: String,
    /// Cloud Billing budget notifications (read by the alerting consumer).
    pub budgets: String,
    /// What a batch step updated (read by the Power BI monitor).
    pub updates: String,
}

/// The `[gcp]` table: project and resource names.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Gcp {
    /// Project id.
    pub project: String,
    /// Buckets.
    pub buckets: Buckets,
    /// Topics.
    pub topics: Topics,
    /// Dead-letter topic of each subscription that has one.
    pub dead_letter_topics: BTreeMap<String, String>,
    /// Per role, its subscriptions and the push path served for each.
    pub subscriptions: BTreeMap<String, BTreeMap<String, String>>,
}

/// The `[worker]` table.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Longest the batch step (with its products) may run; a batch claim's lease is twice this.
    pub step_timeout_secs: u64,
    /// Folder of partner contracts.
    pub partners_dir: PathBuf,
    /// Messages handled at once per subscription in pull mode.
    pub max_concurrent_messages: usize,
    /// Pull mode: each lease extension (the stream's ack deadline), so a message held by a
    /// crashed worker is redelivered after at most this long.
    pub lease_extension_secs: u64,
    /// A day's batch is due by this local hour (America/Sao_Paulo) of the next day; a tick
    /// after it without a finished batch raises `extract.missing`.
    #[serde(default = "default_deadline_hour")]
    pub deadline_local_hour: u32,
    /// How many past days a tick checks for a missing batch.
    #[serde(default = "default_deadline_lookback_days")]
    pub deadline_lookback_days: u32,
    /// Ticks this long before a day's deadline run every sink's connection check.
    #[serde(default = "default_check_sinks_before_mins")]
    pub check_sinks_before_mins: u32,
    /// Downloads of a batch's staged parts made at once by its step: a marker listing 100k
    /// files makes at most this many requests at a time.
    #[serde(default = "default_listing_concurrency")]
    pub listing_concurrency: usize,
    /// A tick restarts (publishes `BatchReady` again) a day whose batch has been ready — marker
    /// and every listed part staged — this long without a claim or a done marker.
    #[serde(default = "default_unclaimed_restart_after_secs")]
    pub unclaimed_restart_after_secs: u64,
    /// Days (before the tick's day) whose ready but unclaimed batch a tick looks for.
    #[serde(default = "default_unclaimed_lookback_days")]
    pub unclaimed_lookback_days: u32,
    /// Threads encoding the batch step's curated Parquet columns (0, the default: one per
    /// vCPU, up to 4).
    #[serde(default)]
    pub encode_threads: usize,
}

impl WorkerSettings {
    /// The threads encoding curated columns: `encode_threads`, or one per vCPU up to 4.
    pub fn encode_threads(&self) -> usize {
        match self.encode_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
            n => n,
        }
    }
}

fn default_listing_concurrency() -> usize {
    32
}

fn default_unclaimed_restart_after_secs() -> u64 {
    900
}

fn default_unclaimed_lookback_days() -> u32 {
    7
}

fn default_deadline_hour() -> u32 {
    6
}

fn default_deadline_lookback_days() -> u32 {
    3
}

fn default_check_sinks_before_mins() -> u32 {
    120
}

/// Where the emulators are, when they are used instead of Google Cloud.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Emulators {
    /// Pub/Sub emulator endpoint (`http://host:port`).
    pub pubsub: Option<String>,
    /// Cloud Storage emulator endpoint (`http://host:port`).
    pub storage: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    gcp: Gcp,
    worker: WorkerSettings,
    #[serde(default)]
    guardrails: Guardrails,
    alerting: AlertingSettings,
    smtp: Option<SmtpSettings>,
    #[serde(default)]
    sinks: SinkOptions,
    #[serde(default)]
    push: PushSettings,
}

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Project and resource names.
    pub gcp: Gcp,
    /// Worker settings.
    pub worker: WorkerSettings,
    /// Emulator endpoints, from the environment.
    pub emulators: Emulators,
    /// Data-quality guardrails per table (`[guardrails.<table>]`).
    pub guardrails: Guardrails,
    /// The alerting consumer's settings.
    pub alerting: AlertingSettings,
    /// The SMTP relay for partner e-mails (`[smtp]`; required by `datashare deliver --sink email`).
    pub smtp: Option<SmtpSettings>,
    /// Timeouts and retry bounds of the data sinks (`[sinks.sftp]`, `[sinks.api]`).
    pub sinks: SinkOptions,
    /// Verification of push requests' OIDC tokens (`[push]`).
    pub push: PushSettings,
}

impl Config {
    /// What the sinks need beside a contract: the SMTP relay and the sinks' timeouts.
    pub fn sink_settings(&self) -> SinkSettings {
        SinkSettings {
            smtp: self.smtp.clone(),
            sftp: self.sinks.sftp,
            api: self.sinks.api,
        }
    }

    /// Loads `path` (or the built-in defaults), applies the process environment and validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with(path, &|k| std::env::var(k).ok())
    }

    /// Loads like [`Config::load`] with an explicit environment (for tests).
    pub fn load_with(
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let (name, text) = match path {
            Some(p) => (
                p.display().to_string(),
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    file: p.to_path_buf(),
                    source,
                })?,
            ),
            None => (
                "built-in config/default.toml".to_string(),
                DEFAULT_TOML.to_string(),
            ),
        };
        let file: File = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            file: name,
            message: e.to_string(),
        })?;
        let mut c = Config {
            gcp: file.gcp,
            worker: file.worker,
            emulators: Emulators::default(),
            guardrails: file.guardrails,
            alerting: file.alerting,
            smtp: file.smtp,
            sinks: file.sinks,
            push: file.push,
        };
        c.apply_env(env)?;
        c.alerting.apply_env(env)?;
        c.push.apply_env(env)?;
        c.validate()?;
        c.alerting.validate()?;
        c.push.validate()?;
        Ok(c)
    }

    fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let set = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        if let Some(p) = set(env("DATASHARE_GCP_PROJECT")) {
            self.gcp.project = p;
        }
        let b = &mut self.gcp.buckets;
        for (var, slot) in [
            ("DATASHARE_BUCKET_RAW", &mut b.raw),
            ("DATASHARE_BUCKET_CURATED", &mut b.curated),
            ("DATASHARE_BUCKET_PRODUCTS", &mut b.products),
            ("DATASHARE_BUCKET_OPS", &mut b.ops),
        ] {
            if let Some(v) = set(env(var)) {
                *slot = v;
            }
        }
        if let Some(v) = set(env("DATASHARE_STEP_TIMEOUT_SECS")) {
            self.worker.step_timeout_secs = v
                .parse()
                .map_err(|_| invalid("DATASHARE_STEP_TIMEOUT_SECS", "not a whole number"))?;
        }
        if let Some(v) = set(env("DATASHARE_ENCODE_THREADS")) {
            self.worker.encode_threads = v
                .parse()
                .map_err(|_| invalid("DATASHARE_ENCODE_THREADS", "not a whole number"))?;
        }
        if let Some(v) = set(env("DATASHARE_LEASE_EXTENSION_SECS")) {
            self.worker.lease_extension_secs = v
                .parse()
                .map_err(|_| invalid("DATASHARE_LEASE_EXTENSION_SECS", "not a whole number"))?;
        }
        if let Some(v) = set(env("DATASHARE_UNCLAIMED_RESTART_AFTER_SECS")) {
            self.worker.unclaimed_restart_after_secs = v.parse().map_err(|_| {
                invalid(
                    "DATASHARE_UNCLAIMED_RESTART_AFTER_SECS",
                    "not a whole number",
                )
            })?;
        }
        if let Some(v) = set(env("DATASHARE_PARTNERS_DIR")) {
            self.worker.partners_dir = PathBuf::from(v);
        }
        self.apply_smtp_env(&|k| set(env(k)))?;
        if let Some(v) = set(env("PUBSUB_EMULATOR_HOST")) {
            self.emulators.pubsub = Some(endpoint("PUBSUB_EMULATOR_HOST", &v)?);
        }
        if let Some(v) = set(env("STORAGE_EMULATOR_HOST")) {
            self.emulators.storage = Some(endpoint("STORAGE_EMULATOR_HOST", &v)?);
        }
        Ok(())
    }

    fn apply_smtp_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        use secret::SecretRef;
        use sinks::SmtpTls;
        let host = env("DATASHARE_SMTP_HOST");
        if self.smtp.is_none() {
            let Some(host) = host.clone() else {
                return Ok(());
            };
            let from = env("DATASHARE_SMTP_FROM").ok_or_else(|| {
                invalid("DATASHARE_SMTP_FROM", "required with DATASHARE_SMTP_HOST")
            })?;
            self.smtp = Some(SmtpSettings {
                host,
                port: 587,
                tls: SmtpTls::Starttls,
                from,
                user: None,
                password: None,
                ca_file: None,
                timeout_secs: 30,
            });
        }
        let Some(smtp) = self.smtp.as_mut() else {
            return Ok(());
        };
        if let Some(h) = host {
            smtp.host = h;
        }
        if let Some(v) = env("DATASHARE_SMTP_PORT") {
            smtp.port = v
                .parse()
                .map_err(|_| invalid("DATASHARE_SMTP_PORT", "not a port number"))?;
        }
        if let Some(v) = env("DATASHARE_SMTP_TLS") {
            smtp.tls = match v.as_str() {
                "starttls" => SmtpTls::Starttls,
                "implicit" => SmtpTls::Implicit,
                _ => {
                    return Err(invalid(
                        "DATASHARE_SMTP_TLS",
                        "must be starttls or implicit",
                    ));
                }
            };
        }
        if let Some(v) = env("DATASHARE_SMTP_FROM") {
            smtp.from = v;
        }
        if let Some(v) = env("DATASHARE_SMTP_USER") {
            smtp.user = Some(v);
        }
        if let Some(v) = env("DATASHARE_SMTP_CA_FILE") {
            smtp.ca_file = Some(PathBuf::from(v));
        }
        if let Some(v) = env("DATASHARE_SMTP_PASSWORD_FILE") {
            smtp.password = Some(SecretRef {
                env: None,
                file: Some(PathBuf::from(v)),
            });
        } else if env("DATASHARE_SMTP_PASSWORD").is_some() {
            smtp.password = Some(SecretRef {
                env: Some("DATASHARE_SMTP_PASSWORD".into()),
                file: None,
            });
        }
        Ok(())
    }

    fn validate_smtp(&self) -> Result<(), ConfigError> {
        let Some(smtp) = &self.smtp else {
            return Ok(());
        };
        if smtp.host.trim().is_empty() {
            return Err(invalid("smtp.host", "empty"));
        }
        if smtp.port == 0 {
            return Err(invalid("smtp.port", "must be a port number"));
        }
        if smtp.from.parse::<lettre::message::Mailbox>().is_err() {
            return Err(invalid("smtp.from", "not an e-mail address"));
        }
        if smtp.password.is_some() != smtp.user.is_some() {
            return Err(invalid("smtp.user", "set user and password together"));
        }
        if smtp.timeout_secs == 0 {
            return Err(invalid("smtp.timeout_secs", "must be at least 1"));
        }
        Ok(())
    }

    /// Checks every name and setting; the first problem is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_names()?;
        self.validate_subscriptions()?;
        self.validate_worker()?;
        self.validate_sink_limits()?;
        if self.worker.max_concurrent_messages == 0 {
            return Err(invalid(
                "worker.max_concurrent_messages",
                "must be at least 1",
            ));
        }
        if self.worker.encode_threads > 64 {
            return Err(invalid(
                "worker.encode_threads",
                "must be 0-64 (0: one per vCPU, up to 4)",
            ));
        }
        if !(1..=1000).contains(&self.worker.listing_concurrency) {
            return Err(invalid("worker.listing_concurrency", "must be 1-1000"));
        }
        if !(1..=86400).contains(&self.worker.unclaimed_restart_after_secs) {
            return Err(invalid(
                "worker.unclaimed_restart_after_secs",
                "must be between 1 and 86400",
            ));
        }
        if !(1..=90).contains(&self.worker.unclaimed_lookback_days) {
            return Err(invalid("worker.unclaimed_lookback_days", "must be 1-90"));
        }
        self.validate_smtp()
    }

    /// Checks the project id, bucket and topic names.
    fn validate_names(&self) -> Result<(), ConfigError> {
        let g = &self.gcp;
        if !valid_project(&g.project) {
            return Err(invalid(
                "gcp.project",
                format!(
                    "{:?} is not a project id (6-30 lower-case letters, digits, hyphens)",
                    g.project
                ),
            ));
        }
        for (name, value) in [
            ("raw", &g.buckets.raw),
            ("curated", &g.buckets.curated),
            ("products", &g.buckets.products),
            ("ops", &g.buckets.ops),
        ] {
            if !valid_bucket(value) {
                return Err(invalid(
                    format!("gcp.buckets.{name}"),
                    format!("{value:?} is not a bucket name"),
                ));
            }
        }
        let t = &g.topics;
        for (name, value) in [
            ("extracts", &t.extracts),
            ("batches", &t.batches),
            ("deliveries", &t.deliveries),
            ("notify", &t.notify),
            ("schedules", &t.schedules),
            ("alerts", &t.alerts),
            ("budgets", &t.budgets),
            ("updates", &t.updates),
        ] {
            if !valid_resource(value) {
                return Err(invalid(
                    format!("gcp.topics.{name}"),
                    format!("{value:?} is not a topic name"),
                ));
            }
        }
        Ok(())
    }

    /// Checks the subscriptions (named after their topic, pushed under `/push/`), their dead
    /// letter topics, and that the worker has both of its own.
    fn validate_subscriptions(&self) -> Result<(), ConfigError> {
        let g = &self.gcp;
        for (sub, topic) in &g.dead_letter_topics {
            if !valid_resource(sub) || !valid_resource(topic) {
                return Err(invalid(
                    format!("gcp.dead_letter_topics.{sub}"),
                    "not a subscription and topic name",
                ));
            }
        }
        for (role, subs) in &g.subscriptions {
            for (sub, path) in subs {
                if !valid_resource(sub) {
                    return Err(invalid(
                        format!("gcp.subscriptions.{role}.{sub}"),
                        "not a subscription name",
                    ));
                }
                if self.source_topic(sub).is_none() {
                    return Err(invalid(
                        format!("gcp.subscriptions.{role}.{sub}"),
                        format!("must be named <topic>-{role} after a configured topic"),
                    ));
                }
                if !path.starts_with("/push/") {
                    return Err(invalid(
                        format!("gcp.subscriptions.{role}.{sub}"),
                        format!("push path {path:?} does not start with /push/"),
                    ));
                }
            }
        }
        let worker = g
            .subscriptions
            .get("worker")
            .ok_or_else(|| invalid("gcp.subscriptions.worker", "missing"))?;
        for sub in [EXTRACTS_SUBSCRIPTION, BATCHES_SUBSCRIPTION] {
            if !worker.contains_key(sub) {
                return Err(invalid(
                    format!("gcp.subscriptions.worker.{sub}"),
                    "missing: the worker consumes it",
                ));
            }
            if !g.dead_letter_topics.contains_key(sub) {
                return Err(invalid(
                    format!("gcp.dead_letter_topics.{sub}"),
                    "missing: the worker dead-letters permanent failures there",
                ));
            }
        }
        Ok(())
    }

    /// Checks the worker's timings and schedule, and the guardrails it applies.
    fn validate_worker(&self) -> Result<(), ConfigError> {
        if self.worker.step_timeout_secs == 0 || self.worker.step_timeout_secs > 24 * 3600 {
            return Err(invalid(
                "worker.step_timeout_secs",
                "must be between 1 and 86400",
            ));
        }
        if !(10..=600).contains(&self.worker.lease_extension_secs) {
            return Err(invalid(
                "worker.lease_extension_secs",
                "must be between 10 and 600 (Pub/Sub's ack deadline range)",
            ));
        }
        self.guardrails
            .validate()
            .map_err(|(field, problem)| invalid(field, problem))?;
        if self.worker.deadline_local_hour > 23 {
            return Err(invalid("worker.deadline_local_hour", "must be 0-23"));
        }
        if !(1..=31).contains(&self.worker.deadline_lookback_days) {
            return Err(invalid("worker.deadline_lookback_days", "must be 1-31"));
        }
        if self.worker.check_sinks_before_mins > 24 * 60 {
            return Err(invalid(
                "worker.check_sinks_before_mins",
                "must be at most 1440",
            ));
        }
        Ok(())
    }

    /// Checks the sinks' timeouts and the API sink's retries.
    fn validate_sink_limits(&self) -> Result<(), ConfigError> {
        let (sftp, api) = (&self.sinks.sftp, &self.sinks.api);
        for (field, secs) in [
            ("sinks.sftp.connect_timeout_secs", sftp.connect_timeout_secs),
            ("sinks.sftp.io_timeout_secs", sftp.io_timeout_secs),
            ("sinks.api.connect_timeout_secs", api.connect_timeout_secs),
            ("sinks.api.request_timeout_secs", api.request_timeout_secs),
            ("sinks.api.retry_budget_secs", api.retry_budget_secs),
        ] {
            if !(1..=3600).contains(&secs) {
                return Err(invalid(field, "must be between 1 and 3600 seconds"));
            }
        }
        if api.max_attempts == 0 {
            return Err(invalid("sinks.api.max_attempts", "must be at least 1"));
        }
        if api.initial_backoff_ms == 0 || api.initial_backoff_ms > api.max_backoff_ms {
            return Err(invalid(
                "sinks.api.initial_backoff_ms",
                "must be at least 1 and at most sinks.api.max_backoff_ms",
            ));
        }
        Ok(())
    }

    /// `projects/<project>/topics/<topic>`.
    pub fn topic_path(&self, topic: &str) -> String {
        format!("projects/{}/topics/{topic}", self.gcp.project)
    }

    /// `projects/<project>/subscriptions/<subscription>`.
    pub fn subscription_path(&self, subscription: &str) -> String {
        format!("projects/{}/subscriptions/{subscription}", self.gcp.project)
    }

    /// The lease of a batch claim: twice the step timeout.
    pub fn claim_lease(&self) -> Duration {
        Duration::from_secs(2 * self.worker.step_timeout_secs)
    }

    /// The topic a subscription reads: its name without the `-<role>` suffix of the role that
    /// consumes it (`deliveries-sftp` → `deliveries`, `extracts-worker-dead-letter-alert` →
    /// `extracts-worker-dead-letter`), when that is a known topic.
    pub fn source_topic(&self, subscription: &str) -> Option<&str> {
        let g = &self.gcp;
        let (role, _) = g
            .subscriptions
            .iter()
            .find(|(_, subs)| subs.contains_key(subscription))?;
        let stem = subscription.strip_suffix(&format!("-{role}"))?;
        let t = &g.topics;
        [
            &t.extracts,
            &t.batches,
            &t.deliveries,
            &t.notify,
            &t.schedules,
            &t.alerts,
            &t.budgets,
            &t.updates,
        ]
        .into_iter()
        .chain(g.dead_letter_topics.values())
        .find(|t| t.as_str() == stem)
        .map(String::as_str)
    }

    /// The push path a role serves for one of its subscriptions.
    pub fn push_path(&self, role: &str, subscription: &str) -> Option<&str> {
        self.gcp
            .subscriptions
            .get(role)
            .and_then(|s| s.get(subscription))
            .map(String::as_str)
    }

    /// A role's subscriptions with their push paths (empty for an unknown role).
    pub fn role_subscriptions(&self, role: &str) -> Vec<(&str, &str)> {
        self.gcp
            .subscriptions
            .get(role)
            .map(|s| s.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect())
            .unwrap_or_default()
    }

    /// The dead-letter topics of a role's subscriptions (what its consumers publish to).
    pub fn role_dead_letter_topics(&self, role: &str) -> Vec<&str> {
        self.role_subscriptions(role)
            .into_iter()
            .filter_map(|(sub, _)| self.gcp.dead_letter_topics.get(sub).map(String::as_str))
            .collect()
    }
}

/// Normalizes an emulator address (`host:port` or `http://host:port`) into a URL.
fn endpoint(var: &str, value: &str) -> Result<String, ConfigError> {
    let url = if value.starts_with("http://") || value.starts_with("https://") {
        value.trim_end_matches('/').to_string()
    } else {
        format!("http://{}", value.trim_end_matches('/'))
    };
    let rest = url.split_once("://").map_or("", |(_, r)| r);
    let ok = rest
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if ok {
        Ok(url)
    } else {
        Err(invalid(var, format!("{value:?} is not host:port")))
    }
}

fn valid_project(s: &str) -> bool {
    let b = s.as_bytes();
    (6..=30).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && *b.last().unwrap_or(&b'-') != b'-'
}

fn valid_bucket(s: &str) -> bool {
    let b = s.as_bytes();
    (3..=63).contains(&b.len())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_' | b'.')
        })
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

fn valid_resource(s: &str) -> bool {
    let b = s.as_bytes();
    (3..=255).contains(&b.len())
        && b[0].is_ascii_alphabetic()
        && !s.starts_with("goog")
        && b.iter().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'~' | b'+' | b'%')
        })
}

/// Loads the built-in configuration with only `vars` as the environment (unit tests).
#[cfg(test)]
pub(crate) fn load_with_vars(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::load_with(None, &move |k| {
        vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        load_with_vars(vars)
    }

    #[test]
    fn guardrails_load_and_bad_ones_are_refused() {
        let c = load(&[]).unwrap();
        let t = &c.guardrails.0["transactions"];
        assert_eq!(t.quarantine.block.map(|s| s.get()), Some(0.20));
        assert_eq!(t.volume.map(|v| v.max_deviation.get()), Some(0.5));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        let bad = DEFAULT_TOML.replacen(
            "quarantine = { warn = 0.05, block = 0.20 }",
            "quarantine = { warn = 0.05, block = 0.01 }",
            1,
        );
        std::fs::write(&path, bad).unwrap();
        let e = Config::load_with(Some(&path), &|_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("guardrails.transactions.quarantine"), "{e}");
    }

    #[test]
    fn sink_timeouts_load_and_bad_ones_are_refused() {
        let c = load(&[]).unwrap();
        assert_eq!(c.sink_settings().api, sinks::ApiOptions::default());
        assert_eq!(c.sinks.sftp, sinks::SftpOptions::default());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sinks.toml");
        let with = |from: &str, to: &str| {
            std::fs::write(&path, DEFAULT_TOML.replacen(from, to, 1)).unwrap();
            Config::load_with(Some(&path), &|_| None)
        };
        let c = with("request_timeout_secs = 120", "request_timeout_secs = 30").unwrap();
        assert_eq!(c.sinks.api.request_timeout_secs, 30);
        assert_eq!(c.sinks.api.max_attempts, 5);
        let e = with("initial_backoff_ms = 500", "initial_backoff_ms = 60000")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sinks.api.initial_backoff_ms"), "{e}");
        let e = with("io_timeout_secs = 60", "io_timeout_secs = 0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sinks.sftp.io_timeout_secs"), "{e}");
        let e = with("io_timeout_secs = 60", "io_timeout = 60")
            .unwrap_err()
            .to_string();
        assert!(e.contains("io_timeout"), "unknown keys are refused: {e}");
    }

    #[test]
    fn defaults_load_and_validate() {
        let c = load(&[]).unwrap();
        assert_eq!(c.gcp.project, "datashare-local");
        assert_eq!(c.gcp.buckets.raw, "datashare-raw");
        assert_eq!(
            c.push_path("worker", EXTRACTS_SUBSCRIPTION),
            Some("/push/extracts")
        );
        assert_eq!(c.source_topic("deliveries-sftp"), Some("deliveries"));
        assert_eq!(
            c.source_topic("extracts-worker-dead-letter-alert"),
            Some("extracts-worker-dead-letter")
        );
        assert_eq!(c.source_topic(BATCHES_SUBSCRIPTION), Some("batches"));
        assert_eq!(c.claim_lease(), Duration::from_secs(1200));
        assert_eq!(c.emulators, Emulators::default());
    }

    #[test]
    fn environment_overrides_names_and_emulators() {
        let c = load(&[
            ("DATASHARE_GCP_PROJECT", "acme-prod-1"),
            ("DATASHARE_BUCKET_RAW", "acme-raw"),
            ("DATASHARE_BUCKET_OPS", "acme-ops"),
            ("PUBSUB_EMULATOR_HOST", "127.0.0.1:8085"),
            ("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9023/"),
            ("DATASHARE_STEP_TIMEOUT_SECS", "25"),
        ])
        .unwrap();
        assert_eq!(c.gcp.project, "acme-prod-1");
        assert_eq!(c.gcp.buckets.raw, "acme-raw");
        assert_eq!(c.gcp.buckets.curated, "datashare-curated");
        assert_eq!(c.gcp.buckets.ops, "acme-ops");
        assert_eq!(c.emulators.pubsub.as_deref(), Some("http://127.0.0.1:8085"));
        assert_eq!(
            c.emulators.storage.as_deref(),
            Some("http://127.0.0.1:9023")
        );
        assert_eq!(c.claim_lease(), Duration::from_secs(50));
        assert_eq!(
            c.topic_path("batches"),
            "projects/acme-prod-1/topics/batches"
        );
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            ("DATASHARE_BUCKET_RAW", "Not A Bucket", "gcp.buckets.raw"),
            ("DATASHARE_GCP_PROJECT", "x", "gcp.project"),
            ("PUBSUB_EMULATOR_HOST", "localhost", "PUBSUB_EMULATOR_HOST"),
            (
                "DATASHARE_STEP_TIMEOUT_SECS",
                "soon",
                "DATASHARE_STEP_TIMEOUT_SECS",
            ),
            (
                "DATASHARE_STEP_TIMEOUT_SECS",
                "0",
                "worker.step_timeout_secs",
            ),
            (
                "DATASHARE_ENCODE_THREADS",
                "two",
                "DATASHARE_ENCODE_THREADS",
            ),
            ("DATASHARE_ENCODE_THREADS", "65", "worker.encode_threads"),
        ];
        for (var, value, field) in cases {
            let e = load(&[(var, value)]).unwrap_err().to_string();
            assert!(e.contains(field), "{var}={value}: {e}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            DEFAULT_TOML.replace("[worker]", "[worker]\nstep_timeot_secs = 3"),
        )
        .unwrap();
        let e = Config::load_with(Some(&p), &|_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("step_timeot_secs"), "{e}");
    }

    #[test]
    fn smtp_relay_from_the_environment_is_validated_and_hides_the_password() {
        assert_eq!(load(&[]).unwrap().smtp, None);
        let c = load(&[
            ("DATASHARE_SMTP_HOST", "smtp.example.com"),
            ("DATASHARE_SMTP_PORT", "465"),
            ("DATASHARE_SMTP_TLS", "implicit"),
            ("DATASHARE_SMTP_FROM", "datashare <dados@datashare.example>"),
            ("DATASHARE_SMTP_USER", "datashare"),
            ("DATASHARE_SMTP_PASSWORD", "s3cr3t-value"),
        ])
        .unwrap();
        let smtp = c.smtp.clone().unwrap();
        assert_eq!((smtp.host.as_str(), smtp.port), ("smtp.example.com", 465));
        assert_eq!(smtp.tls, sinks::SmtpTls::Implicit);
        let pw = smtp.password.unwrap();
        assert_eq!(pw.env.as_deref(), Some("DATASHARE_SMTP_PASSWORD"));
        assert!(!format!("{c:?}").contains("s3cr3t-value"));
        for (vars, field) in [
            (vec![("DATASHARE_SMTP_HOST", "h")], "DATASHARE_SMTP_FROM"),
            (
                vec![
                    ("DATASHARE_SMTP_HOST", "h"),
                    ("DATASHARE_SMTP_FROM", "not an address"),
                ],
                "smtp.from",
            ),
            (
                vec![
                    ("DATASHARE_SMTP_HOST", "h"),
                    ("DATASHARE_SMTP_FROM", "a@b.example"),
                    ("DATASHARE_SMTP_TLS", "none"),
                ],
                "DATASHARE_SMTP_TLS",
            ),
            (
                vec![
                    ("DATASHARE_SMTP_HOST", "h"),
                    ("DATASHARE_SMTP_FROM", "a@b.example"),
                    ("DATASHARE_SMTP_PASSWORD", "x"),
                ],
                "smtp.user",
            ),
        ] {
            let e = load(&vars).unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
    }
}
