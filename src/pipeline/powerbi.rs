//! The Power BI monitor (`datashare powerbi`, operations.md "Power BI and Metabase"): a role of
//! its own with two subscriptions.
//!
//! - `updates-powerbi` (what a batch step updated): for each configured dataset or dataflow that
//!   reads an updated table, one refresh request per batch version, recorded create-only in the
//!   ops bucket (`powerbi/refreshes/<kind>/<id>/<batch version>.json`) so a redelivered message
//!   refreshes nothing twice; never while a refresh of the item runs (nack: Pub/Sub retries
//!   with backoff), never beyond the item's daily quota (refreshes started this UTC day in its
//!   history, scheduled ones included: no request, one `powerbi.quota` alert), never before a
//!   429's `Retry-After` has passed (`powerbi/backoff/<kind>/<id>.json`).
//! - `schedules-powerbi` (the tick): reads each item's refresh history and alerts once per
//!   refresh on a failure (`powerbi.refresh_failed`, with `serviceExceptionJson`) or a refresh
//!   running longer than the item's limit (`powerbi.refresh_stuck`), once a day on a last
//!   completed refresh older than the SLA (`powerbi.stale`). Each refresh seen in a terminal
//!   state (completed, failed, disabled, cancelled) is counted once in
//!   `datashare.powerbi.refreshes`, whatever the ticks and instances: the count goes with the
//!   create-only marker `powerbi/seen/<kind>/<id>/<refresh>.json` (refreshes older than
//!   [`SEEN_WINDOW_DAYS`] are not counted, so the bucket's lifecycle may delete the markers after
//!   30 days); a refresh request answered 429 counts as `throttled`.
//!
//! Other 4xx (the token endpoint refusing the credentials, an unknown item, no access) are
//! configuration errors: one `powerbi.config` alert a day per cause, the message acknowledged
//! (no retry storm). Alerts go to `alerts` (grouped and e-mailed by the alerting consumer); "once"
//! is a create-only marker `powerbi/alerted/<key>` in the ops bucket.

pub mod client;

use std::ops::Deref;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::config::powerbi::{PowerBiConfig, PowerBiItem};
use crate::events::{Alert, Incoming, Schedule, Severity, Updates};
use crate::service::{Disposition, HandleError, Role, RoleContext};
use client::{ApiError, Client, Refresh};

/// The monitor's key in `[gcp.subscriptions]`.
pub const POWERBI_ROLE: &str = "powerbi";
/// Its subscription to `updates`.
pub const UPDATES_SUBSCRIPTION: &str = "updates-powerbi";
/// Its subscription to `schedules` (the tick).
pub const SCHEDULES_SUBSCRIPTION: &str = "schedules-powerbi";

/// Alert kind: a refresh failed.
pub const REFRESH_FAILED: &str = "powerbi.refresh_failed";
/// Alert kind: a refresh runs longer than its item's limit.
pub const REFRESH_STUCK: &str = "powerbi.refresh_stuck";
/// Alert kind: the last completed refresh is older than the SLA.
pub const STALE: &str = "powerbi.stale";
/// Alert kind: the daily quota is used; an update was not refreshed.
pub const QUOTA: &str = "powerbi.quota";
/// Alert kind: Power BI or Entra refused the configuration (credentials, ids, access).
pub const CONFIG: &str = "powerbi.config";

/// Refreshes that ended (or started) longer ago than this are not counted any more: their
/// `powerbi/seen/` markers may be gone (lifecycle rule of the ops bucket: 30 days).
pub const SEEN_WINDOW_DAYS: i64 = 7;

/// A 429 whose `Retry-After` is longer than this is the daily quota: alerted and acknowledged
/// rather than retried.
const LONG_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(900);

/// The monitor role.
#[derive(Debug)]
pub struct PowerBi {
    /// Name, configuration, clients.
    pub context: RoleContext,
    /// Items, credentials and API settings.
    pub settings: Arc<PowerBiConfig>,
    client: Client,
}

impl Deref for PowerBi {
    type Target = RoleContext;
    fn deref(&self) -> &RoleContext {
        &self.context
    }
}

/// The monitor could not start.
#[derive(Debug, thiserror::Error)]
pub enum PowerBiStartError {
    /// `config/powerbi.toml` (or its overrides) is unusable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The client secret cannot be read.
    #[error(transparent)]
    Secret(#[from] crate::config::secret::SecretError),
    /// The HTTP client cannot be built (CA file).
    #[error("powerbi: {0}")]
    Http(String),
    /// A Google Cloud client could not be created.
    #[error(transparent)]
    Client(#[from] crate::gcp::ClientError),
}

/// What stopped one item's refresh request.
enum Later {
    /// Try again later (nack).
    Retry(String),
    /// Alerted (a configuration error, the quota): acknowledged, the other items go on.
    Skip,
    /// The credentials are refused: stop this message, acknowledged.
    Stop,
}

impl PowerBi {
    /// Starts with `config/powerbi.toml` (or `$DATASHARE_POWERBI_CONFIG`) and the environment.
    pub async fn start(config: Config) -> Result<PowerBi, PowerBiStartError> {
        let settings = PowerBiConfig::load(None)?;
        Self::with_settings(config, settings).await
    }

    /// Starts with explicit monitor settings (tests).
    pub async fn with_settings(
        config: Config,
        settings: PowerBiConfig,
    ) -> Result<PowerBi, PowerBiStartError> {
        // Fails now, naming the variable or file, rather than at the first update.
        settings
            .entra
            .client_secret
            .read("powerbi", "client_secret")?;
        let client = Client::new(settings.clone()).map_err(PowerBiStartError::Http)?;
        let topics = vec![config.gcp.topics.alerts.clone()];
        let context = RoleContext::connect(POWERBI_ROLE, config, topics).await?;
        tracing::info!(items = settings.items.len(), "powerbi monitor ready");
        Ok(PowerBi {
            context,
            settings: Arc::new(settings),
            client,
        })
    }

    fn ops(&self) -> &str {
        &self.config.gcp.buckets.ops
    }

    /// Requests the refreshes an updates message calls for.
    pub async fn handle_updates(&self, msg: &Incoming) -> Result<Disposition, HandleError> {
        let u = Updates::parse(msg)?;
        let mut retry = Vec::new();
        for item in self
            .settings
            .items
            .iter()
            .filter(|i| i.reads_any(&u.tables))
        {
            match self.refresh_once(item, &u).await {
                Ok(()) => {}
                Err(Later::Retry(why)) => retry.push(format!("{}: {why}", item.name)),
                Err(Later::Skip) => {}
                Err(Later::Stop) => break,
            }
        }
        if retry.is_empty() {
            Ok(Disposition::Done)
        } else {
            Err(HandleError::Transient(format!(
                "refreshes to request later: {}",
                retry.join("; ")
            )))
        }
    }

    /// One item's refresh for one batch version, at most once.
    async fn refresh_once(&self, item: &PowerBiItem, u: &Updates) -> Result<(), Later> {
        let ops = self.ops();
        let record = refresh_record(item, &u.batch_version);
        let gcs_err = |e: crate::gcp::GcsError| Later::Retry(e.to_string());
        if self
            .gcs
            .stat(ops, &record)
            .await
            .map_err(gcs_err)?
            .is_some()
        {
            tracing::info!(item = %item.name, batch_version = %u.batch_version, "refresh already requested for this batch version");
            return Ok(());
        }
        let backoff = backoff_object(item);
        if let Some((body, _)) = self.gcs.read(ops, &backoff, None).await.map_err(gcs_err)?
            && let Some(until) = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["until"].as_str().map(String::from))
                .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            && until > Utc::now()
        {
            return Err(Later::Retry(format!("throttled until {until}")));
        }
        let history = match self
            .client
            .history(
                item,
                self.settings.api.history_top.max(item.daily_quota + 1),
            )
            .await
        {
            Ok(h) => h,
            Err(e) => return Err(self.api_failure(item, e).await),
        };
        if history.iter().any(Refresh::running) {
            return Err(Later::Retry("a refresh is running".into()));
        }
        let today = Utc::now().date_naive();
        let used = history
            .iter()
            .filter(|r| r.start.is_some_and(|s| s.date_naive() == today))
            .count();
        if used >= item.daily_quota as usize {
            self.quota_alert(item, u, used).await;
            return Ok(());
        }
        match self.client.refresh(item).await {
            Ok(request_id) => {
                let body = serde_json::json!({
                    "item": item.name,
                    "kind": item.kind.as_str(),
                    "workspace": item.workspace,
                    "id": item.id,
                    "batch_version": u.batch_version,
                    "dt": u.dt,
                    "tables": u.tables,
                    "request_id": request_id,
                    "requested_at": Utc::now().to_rfc3339(),
                    "owner": self.owner,
                });
                match self
                    .gcs
                    .write(ops, &record, body.to_string().into_bytes(), Some(0))
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.is_precondition_failed() => {}
                    Err(e) => {
                        tracing::warn!(error = %e, item = %item.name, "refresh requested, record not written")
                    }
                }
                // `datashare.powerbi.refreshes` counts outcomes (completed, failed, ...), seen
                // in the history at the tick; a request is not an outcome yet.
                tracing::info!(item = %item.name, kind = item.kind.as_str(), %request_id, batch_version = %u.batch_version, used_today = used + 1, quota = item.daily_quota, "Power BI refresh requested");
                Ok(())
            }
            Err(e) => {
                if matches!(e, ApiError::Throttled { .. }) {
                    crate::telemetry::metrics::powerbi_refresh(&item.name, "throttled");
                }
                Err(self.api_failure(item, e).await)
            }
        }
    }

    /// Counts each refresh of `history` seen in a terminal state for the first time
    /// (`datashare.powerbi.refreshes`); returns how many it counted. One listing of the item's
    /// markers, then one create-only write per refresh not seen before.
    async fn count_refreshes(
        &self,
        item: &PowerBiItem,
        history: &[Refresh],
        at: DateTime<Utc>,
    ) -> usize {
        let since = at - chrono::Duration::days(SEEN_WINDOW_DAYS);
        let ended: Vec<(&Refresh, &'static str)> = history
            .iter()
            .filter(|r| r.end.or(r.start).is_some_and(|t| t >= since))
            .filter_map(|r| outcome(&r.status).map(|o| (r, o)))
            .collect();
        if ended.is_empty() {
            return 0;
        }
        let prefix = seen_prefix(item);
        let known: std::collections::BTreeSet<String> = match self
            .gcs
            .list(self.ops(), &prefix)
            .await
        {
            Ok(objects) => objects.into_iter().map(|o| o.name).collect(),
            Err(e) => {
                // The next tick counts them.
                tracing::warn!(error = %e, item = %item.name, "seen refreshes not listed, not counted");
                return 0;
            }
        };
        let mut counted = 0;
        for (r, outcome) in ended {
            let marker = seen_record(item, &r.id);
            if known.contains(&marker) {
                continue;
            }
            let body = serde_json::json!({
                "item": item.name,
                "refresh_id": r.id,
                "outcome": outcome,
                "start": r.start.map(|t| t.to_rfc3339()),
                "end": r.end.map(|t| t.to_rfc3339()),
                "seen_at": at.to_rfc3339(),
            });
            match self
                .gcs
                .write(self.ops(), &marker, body.to_string().into_bytes(), Some(0))
                .await
            {
                Ok(_) => {
                    crate::telemetry::metrics::powerbi_refresh(&item.name, outcome);
                    counted += 1;
                }
                Err(e) if e.is_precondition_failed() => {}
                Err(e) => {
                    tracing::warn!(error = %e, item = %item.name, "seen refresh not recorded, not counted")
                }
            }
        }
        counted
    }

    /// What an API failure means for the message: retry later, or alert and go on.
    async fn api_failure(&self, item: &PowerBiItem, e: ApiError) -> Later {
        match e {
            ApiError::Running => Later::Retry("a refresh is running".into()),
            ApiError::Transient(m) => Later::Retry(m),
            ApiError::Throttled { retry_after } => {
                let until = Utc::now()
                    + chrono::Duration::from_std(retry_after)
                        .unwrap_or_else(|_| chrono::Duration::hours(24));
                let body = serde_json::json!({"until": until.to_rfc3339()});
                if let Err(err) = self
                    .gcs
                    .write(
                        self.ops(),
                        &backoff_object(item),
                        body.to_string().into_bytes(),
                        None,
                    )
                    .await
                {
                    tracing::warn!(error = %err, "backoff not recorded");
                }
                if retry_after > LONG_RETRY_AFTER {
                    let alert = Alert::new(
                        Severity::Error,
                        QUOTA,
                        ("*", &item.name, &Utc::now().date_naive().to_string()),
                        &format!("{}/{}", item.kind.as_str(), item.id),
                        format!(
                            "o Power BI recusou uma atualização de {} {} (429) até {until}: a cota diária foi usada",
                            item.kind.as_str(),
                            item.name
                        ),
                    );
                    let key = format!(
                        "quota/{}/{}/{}",
                        Utc::now().date_naive(),
                        item.kind.as_str(),
                        item.id
                    );
                    self.alert_once(&key, item_details(alert, item)).await;
                    Later::Skip
                } else {
                    Later::Retry(format!("throttled for {} s", retry_after.as_secs()))
                }
            }
            ApiError::Config(m) => {
                let auth = m.contains("token endpoint") || m.contains("secret");
                let scope = if auth {
                    "credentials".to_string()
                } else {
                    format!("{}/{}", item.kind.as_str(), item.id)
                };
                let day = Utc::now().date_naive().to_string();
                let alert = Alert::new(
                    Severity::Critical,
                    CONFIG,
                    ("*", if auth { "*" } else { &item.name }, &day),
                    &scope,
                    format!("monitor do Power BI mal configurado: {m}"),
                )
                .with("error", m.as_str());
                let alert = if auth {
                    alert
                } else {
                    item_details(alert, item)
                };
                let key = format!("config/{day}/{}", short_hash(&scope));
                self.alert_once(&key, alert).await;
                if auth { Later::Stop } else { Later::Skip }
            }
        }
    }

    async fn quota_alert(&self, item: &PowerBiItem, u: &Updates, used: usize) {
        let day = Utc::now().date_naive().to_string();
        let alert = Alert::new(
            Severity::Error,
            QUOTA,
            ("*", &item.name, &day),
            &format!("{}/{}", item.kind.as_str(), item.id),
            format!(
                "{} {} não atualizado após o lote {}: {used} atualizações iniciadas hoje, cota {}",
                item.kind.as_str(),
                item.name,
                u.dt,
                item.daily_quota
            ),
        )
        .with("used_today", used as u64)
        .with("daily_quota", item.daily_quota)
        .with("batch_version", u.batch_version.as_str());
        let key = format!("quota/{day}/{}/{}", item.kind.as_str(), item.id);
        self.alert_once(&key, item_details(alert, item)).await;
    }

    /// Publishes `alert` unless the marker `powerbi/alerted/<key>` exists (create-only).
    async fn alert_once(&self, key: &str, alert: Alert) -> bool {
        let marker = format!("powerbi/alerted/{key}");
        let body =
            serde_json::json!({"fingerprint": alert.fingerprint, "at": Utc::now().to_rfc3339()});
        match self
            .gcs
            .write(self.ops(), &marker, body.to_string().into_bytes(), Some(0))
            .await
        {
            Ok(_) => {
                self.alert(&alert).await;
                true
            }
            Err(e) if e.is_precondition_failed() => {
                tracing::info!(kind = %alert.kind, key, "alert already raised");
                false
            }
            Err(e) => {
                // Better twice than never.
                tracing::warn!(error = %e, "alert marker not written");
                self.alert(&alert).await;
                true
            }
        }
    }

    /// The tick: histories, failures, stuck refreshes, stale items.
    pub async fn tick(&self, at: DateTime<Utc>) -> Result<Disposition, HandleError> {
        let mut transient = Vec::new();
        for item in self.settings.items.iter() {
            let history = match self
                .client
                .history(item, self.settings.api.history_top)
                .await
            {
                Ok(h) => h,
                Err(e) => {
                    match self.api_failure(item, e).await {
                        Later::Stop => break,
                        Later::Retry(m) => transient.push(format!("{}: {m}", item.name)),
                        Later::Skip => {}
                    }
                    continue;
                }
            };
            self.check_history(item, &history, at).await;
            self.count_refreshes(item, &history, at).await;
        }
        if !transient.is_empty() {
            // The next tick reads the histories again; this one is not retried.
            tracing::warn!(failures = ?transient, "some refresh histories could not be read");
        }
        Ok(Disposition::Done)
    }

    /// Alerts on one item's history.
    async fn check_history(&self, item: &PowerBiItem, history: &[Refresh], at: DateTime<Utc>) {
        let scope = format!("{}/{}", item.kind.as_str(), item.id);
        for r in history {
            let rid = short_hash(&r.id);
            let started = r.start.map(|s| s.to_rfc3339()).unwrap_or_default();
            if r.status == "Failed" {
                let error = r.error.clone().unwrap_or_else(|| "(no error text)".into());
                let alert = Alert::new(
                    Severity::Error,
                    REFRESH_FAILED,
                    ("*", &item.name, &day_of(r.start)),
                    &format!("{scope}/{}", r.id),
                    format!(
                        "a atualização do Power BI de {} {} falhou: {}",
                        item.kind.as_str(),
                        item.name,
                        one_line(&error)
                    ),
                )
                .with("service_exception", error.as_str())
                .with("refresh_id", r.id.as_str())
                .with("started", started.as_str())
                .with("refresh_type", r.refresh_type.as_str());
                self.alert_once(&format!("failed/{scope}/{rid}"), item_details(alert, item))
                    .await;
            }
            if r.running()
                && let Some(start) = r.start
                && at - start > chrono::Duration::minutes(item.max_refresh_mins as i64)
            {
                let mins = (at - start).num_minutes();
                let alert = Alert::new(
                    Severity::Error,
                    REFRESH_STUCK,
                    ("*", &item.name, &day_of(r.start)),
                    &format!("{scope}/{}", r.id),
                    format!(
                        "a atualização do Power BI de {} {} roda há {mins} min (limite {} min)",
                        item.kind.as_str(),
                        item.name,
                        item.max_refresh_mins
                    ),
                )
                .with("refresh_id", r.id.as_str())
                .with("started", started.as_str())
                .with("running_mins", mins);
                self.alert_once(&format!("stuck/{scope}/{rid}"), item_details(alert, item))
                    .await;
            }
        }
        let last = history
            .iter()
            .filter(|r| r.status == "Completed")
            .filter_map(|r| r.end.or(r.start))
            .max();
        if let Some(t) = last {
            crate::telemetry::metrics::powerbi_freshness(
                &item.name,
                (at - t).to_std().unwrap_or_default(),
            );
        }
        let sla = chrono::Duration::hours(item.freshness_sla_hours as i64);
        if last.is_none_or(|t| at - t > sla) {
            let age = last.map(|t| format!("há {} h", (at - t).num_hours()));
            let day = at.date_naive().to_string();
            let alert = Alert::new(
                Severity::Warning,
                STALE,
                ("*", &item.name, &day),
                &scope,
                format!(
                    "{} {} desatualizado: última atualização concluída {} (SLA {} h)",
                    item.kind.as_str(),
                    item.name,
                    age.as_deref().unwrap_or("fora do histórico recente"),
                    item.freshness_sla_hours
                ),
            )
            .with(
                "last_completed",
                last.map(|t| t.to_rfc3339()).unwrap_or_default(),
            );
            self.alert_once(&format!("stale/{day}/{scope}"), item_details(alert, item))
                .await;
        }
    }
}

impl Role for PowerBi {
    fn context(&self) -> &RoleContext {
        &self.context
    }

    async fn handle_message(
        &self,
        subscription: &str,
        msg: &Incoming,
    ) -> Result<Disposition, HandleError> {
        // Boxed: the futures are large, and callers may poll them on a small stack.
        match subscription {
            UPDATES_SUBSCRIPTION => Box::pin(self.handle_updates(msg)).await,
            SCHEDULES_SUBSCRIPTION => match Schedule::parse(msg)? {
                Schedule::Tick { at } => Box::pin(self.tick(at)).await,
                _ => Ok(Disposition::Done),
            },
            other => Err(HandleError::Transient(format!(
                "the Power BI monitor does not consume subscription {other}"
            ))),
        }
    }
}

/// `powerbi/refreshes/<kind>/<id>/<batch version>.json`: the create-only record of a request.
pub fn refresh_record(item: &PowerBiItem, batch_version: &str) -> String {
    format!(
        "powerbi/refreshes/{}/{}/{batch_version}.json",
        item.kind.as_str(),
        item.id
    )
}

/// `powerbi/seen/<kind>/<id>/`: the markers of an item's refreshes already counted.
pub fn seen_prefix(item: &PowerBiItem) -> String {
    format!("powerbi/seen/{}/{}/", item.kind.as_str(), item.id)
}

/// `powerbi/seen/<kind>/<id>/<hash of the refresh id>.json`: refresh `refresh_id` of `item` was
/// counted in a terminal state (create-only).
pub fn seen_record(item: &PowerBiItem, refresh_id: &str) -> String {
    format!("{}{}.json", seen_prefix(item), short_hash(refresh_id))
}

/// The `datashare.powerbi.refreshes` outcome of a terminal history status; `None` while running.
fn outcome(status: &str) -> Option<&'static str> {
    match status {
        "Completed" | "Success" => Some("completed"),
        "Failed" => Some("failed"),
        "Disabled" => Some("disabled"),
        "Cancelled" => Some("cancelled"),
        _ => None,
    }
}

/// `powerbi/backoff/<kind>/<id>.json`: no request before its `until` (a 429's `Retry-After`).
pub fn backoff_object(item: &PowerBiItem) -> String {
    format!("powerbi/backoff/{}/{}.json", item.kind.as_str(), item.id)
}

fn item_details(alert: Alert, item: &PowerBiItem) -> Alert {
    alert
        .with("item", item.name.as_str())
        .with("item_kind", item.kind.as_str())
        .with("workspace", item.workspace.as_str())
        .with("item_id", item.id.as_str())
}

fn short_hash(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))[..24].to_string()
}

fn day_of(t: Option<DateTime<Utc>>) -> String {
    t.unwrap_or_else(Utc::now).date_naive().to_string()
}

/// The first 300 characters of `s` on one line.
fn one_line(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(300)
        .collect()
}
