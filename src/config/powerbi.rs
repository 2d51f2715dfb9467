//! The Power BI monitor's settings (`config/powerbi.toml`, built in; `DATASHARE_POWERBI_CONFIG`
//! names another file): Microsoft Entra client credentials, the REST API, and the datasets and
//! dataflows to refresh and watch. Environment overrides: `DATASHARE_POWERBI_AUTHORITY_URL`,
//! `_API_URL`, `_CA_FILE`, `_TENANT`, `_CLIENT_ID`, `_CLIENT_SECRET_FILE`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::secret::SecretRef;
use super::{ConfigError, invalid};

/// The monitor's configuration built into the binary.
pub const POWERBI_TOML: &str = include_str!("../../config/powerbi.toml");

/// Most refreshes a day Power BI allows an item (Premium capacity).
pub const MAX_DAILY_QUOTA: u32 = 48;

/// The Entra application the monitor signs in as.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EntraSettings {
    /// `https://login.microsoftonline.com` (the token endpoint is under `<tenant>/oauth2/v2.0/`).
    pub authority_url: String,
    /// Directory (tenant) id.
    pub tenant: String,
    /// Application (client) id.
    pub client_id: String,
    /// Where the client secret lives.
    pub client_secret: SecretRef,
}

/// The Power BI REST API.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    /// `https://api.powerbi.com`.
    pub url: String,
    /// An extra trusted CA (PEM), e.g. the local stand-in's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Timeout of each request.
    #[serde(default = "default_timeout")]
    pub request_timeout_secs: u64,
    /// History entries read per item at each tick.
    #[serde(default = "default_top")]
    pub history_top: u32,
}

fn default_timeout() -> u64 {
    30
}

fn default_top() -> u32 {
    20
}

/// A dataset or a dataflow.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum ItemKind {
    /// `.../datasets/{id}`.
    Dataset,
    /// `.../dataflows/{id}`.
    Dataflow,
}

impl ItemKind {
    /// `dataset` or `dataflow`.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Dataset => "dataset",
            ItemKind::Dataflow => "dataflow",
        }
    }
}

/// One watched dataset or dataflow.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PowerBiItem {
    /// A name for alerts and logs.
    pub name: String,
    /// Dataset or dataflow.
    pub kind: ItemKind,
    /// Workspace (group) id.
    pub workspace: String,
    /// Item id.
    pub id: String,
    /// Refreshes a UTC day (8 shared capacity, 48 Premium), scheduled ones included.
    pub daily_quota: u32,
    /// What it reads, as the batch step names its updates (`curated/<table>`, `products/<kind>`).
    pub tables: Vec<String>,
    /// The last completed refresh older than this alerts.
    pub freshness_sla_hours: u64,
    /// A refresh running longer than this alerts as stuck.
    pub max_refresh_mins: u64,
}

impl PowerBiItem {
    /// Whether it reads any of `tables`.
    pub fn reads_any(&self, tables: &[String]) -> bool {
        self.tables.iter().any(|t| tables.contains(t))
    }
}

/// The whole validated monitor configuration.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PowerBiConfig {
    /// Entra client credentials.
    pub entra: EntraSettings,
    /// The REST API.
    pub api: ApiSettings,
    /// Watched datasets and dataflows.
    pub items: Vec<PowerBiItem>,
}

impl PowerBiConfig {
    /// Loads `path`, else `$DATASHARE_POWERBI_CONFIG`, else the built-in file; applies the
    /// process environment and validates.
    pub fn load(path: Option<&Path>) -> Result<PowerBiConfig, ConfigError> {
        Self::load_with(path, &|k| std::env::var(k).ok())
    }

    /// Loads like [`PowerBiConfig::load`] with an explicit environment (for tests).
    pub fn load_with(
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<PowerBiConfig, ConfigError> {
        let set = |k: &str| {
            env(k)
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        let path = path
            .map(Path::to_path_buf)
            .or_else(|| set("DATASHARE_POWERBI_CONFIG").map(PathBuf::from));
        let (name, text) = match &path {
            Some(p) => (
                p.display().to_string(),
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    file: p.clone(),
                    source,
                })?,
            ),
            None => (
                "built-in config/powerbi.toml".into(),
                POWERBI_TOML.to_string(),
            ),
        };
        let mut c: PowerBiConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            file: name,
            message: e.to_string(),
        })?;
        if let Some(v) = set("DATASHARE_POWERBI_AUTHORITY_URL") {
            c.entra.authority_url = v;
        }
        if let Some(v) = set("DATASHARE_POWERBI_API_URL") {
            c.api.url = v;
        }
        if let Some(v) = set("DATASHARE_POWERBI_CA_FILE") {
            c.api.ca_file = Some(PathBuf::from(v));
        }
        if let Some(v) = set("DATASHARE_POWERBI_TENANT") {
            c.entra.tenant = v;
        }
        if let Some(v) = set("DATASHARE_POWERBI_CLIENT_ID") {
            c.entra.client_id = v;
        }
        if let Some(v) = set("DATASHARE_POWERBI_CLIENT_SECRET_FILE") {
            c.entra.client_secret = SecretRef {
                env: None,
                file: Some(PathBuf::from(v)),
            };
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks every value; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, url) in [
            ("entra.authority_url", &self.entra.authority_url),
            ("api.url", &self.api.url),
        ] {
            if !url.starts_with("https://") || url.len() <= "https://".len() {
                return Err(invalid(field, "must be an https:// URL"));
            }
        }
        for (field, v) in [
            ("entra.tenant", &self.entra.tenant),
            ("entra.client_id", &self.entra.client_id),
        ] {
            if !is_id(v) {
                return Err(invalid(field, "must be an id (letters, digits, '-', '.')"));
            }
        }
        if self.entra.client_secret.env.is_none() && self.entra.client_secret.file.is_none() {
            return Err(invalid("entra.client_secret", "set env, file or both"));
        }
        if !(1..=60).contains(&self.api.request_timeout_secs) {
            return Err(invalid("api.request_timeout_secs", "must be 1 to 60"));
        }
        if !(1..=100).contains(&self.api.history_top) {
            return Err(invalid("api.history_top", "must be 1 to 100"));
        }
        let mut seen = BTreeSet::new();
        for (i, it) in self.items.iter().enumerate() {
            let f = |k: &str| format!("items[{i}].{k}");
            if it.name.trim().is_empty() {
                return Err(invalid(f("name"), "must not be empty"));
            }
            if !is_id(&it.workspace) {
                return Err(invalid(f("workspace"), "must be an id"));
            }
            if !is_id(&it.id) {
                return Err(invalid(f("id"), "must be an id"));
            }
            if !seen.insert((it.kind, it.id.clone())) {
                return Err(invalid(f("id"), "listed twice"));
            }
            if !(1..=MAX_DAILY_QUOTA).contains(&it.daily_quota) {
                return Err(invalid(
                    f("daily_quota"),
                    format!("must be 1 to {MAX_DAILY_QUOTA} (8 shared capacity, 48 Premium)"),
                ));
            }
            if it.tables.is_empty() {
                return Err(invalid(f("tables"), "must name at least one table"));
            }
            if let Some(t) = it.tables.iter().find(|t| !is_table(t)) {
                return Err(invalid(
                    f("tables"),
                    format!("{t:?} is not `curated/<table>` or `products/<product>`"),
                ));
            }
            if !(1..=24 * 31).contains(&it.freshness_sla_hours) {
                return Err(invalid(f("freshness_sla_hours"), "must be 1 to 744"));
            }
            if !(1..=24 * 60).contains(&it.max_refresh_mins) {
                return Err(invalid(f("max_refresh_mins"), "must be 1 to 1440"));
            }
        }
        Ok(())
    }
}

/// An id that is safe in a URL path and an object name.
fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// `curated/<table>` or `products/<product>`.
fn is_table(s: &str) -> bool {
    match s.split_once('/') {
        Some(("curated" | "products", t)) => {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<PowerBiConfig, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        PowerBiConfig::load_with(None, &move |k| {
            vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn the_example_has_two_datasets_and_one_dataflow_and_env_overrides_apply() {
        let c = load(&[]).unwrap();
        let kinds: Vec<_> = c.items.iter().map(|i| i.kind).collect();
        assert_eq!(
            kinds,
            [ItemKind::Dataset, ItemKind::Dataset, ItemKind::Dataflow]
        );
        let c = load(&[
            ("DATASHARE_POWERBI_API_URL", "https://127.0.0.1:9"),
            ("DATASHARE_POWERBI_TENANT", "t-1"),
            ("DATASHARE_POWERBI_CLIENT_SECRET_FILE", "/tmp/x"),
        ])
        .unwrap();
        assert_eq!(c.api.url, "https://127.0.0.1:9");
        assert_eq!(c.entra.tenant, "t-1");
        assert_eq!(c.entra.client_secret.file, Some(PathBuf::from("/tmp/x")));
        assert!(
            c.items[0].reads_any(&["curated/transactions".into()])
                && !c.items[1].reads_any(&["curated/transactions".into()])
        );
    }

    #[test]
    fn bad_values_are_refused_naming_the_field() {
        let bad = |from: &str, to: &str, field: &str| {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("p.toml");
            std::fs::write(&p, POWERBI_TOML.replacen(from, to, 1)).unwrap();
            let e = PowerBiConfig::load_with(Some(&p), &|_| None).unwrap_err();
            assert!(e.to_string().contains(field), "{e}");
        };
        bad(
            "daily_quota = 8",
            "daily_quota = 49",
            "items[0].daily_quota",
        );
        bad("daily_quota = 8", "daily_quota = 0", "items[0].daily_quota");
        bad("\"curated/transactions\"", "\"raw/x\"", "items[0].tables");
        bad(
            "url = \"https://api.powerbi.com\"",
            "url = \"http://api.powerbi.com\"",
            "api.url",
        );
        bad(
            "id = \"c6f2d815-90ab-4c3e-b7d4-5e1a8f9c0b27\"",
            "id = \"a3e91c07-4b5d-4f2a-8e63-1c9d7b0f2e48\"",
            "items[1].id",
        );
        bad(
            "max_refresh_mins = 30",
            "max_refresh_mins = 0",
            "max_refresh_mins",
        );
        bad("tenant = \"0", "tenant = \"../0", "entra.tenant");
    }
}
