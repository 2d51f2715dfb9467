//! The Power BI REST client: Microsoft Entra client credentials (the token cached until shortly
//! before it expires, renewed once on 401/403), refresh requests and refresh histories. The
//! secret and the token are never logged (they are [`Secret`]s).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::config::powerbi::{ItemKind, PowerBiConfig, PowerBiItem};
use crate::config::secret::Secret;

/// The scope of a Power BI API token.
pub const SCOPE: &str = "https://analysis.windows.net/powerbi/api/.default";

/// A token is renewed this long before Entra says it expires.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// A Power BI call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 429: try again after this long (transient).
    #[error("throttled (429), retry after {} s", retry_after.as_secs())]
    Throttled {
        /// The `Retry-After`.
        retry_after: Duration,
    },
    /// 400 because a refresh of the item is running (transient).
    #[error("a refresh is already running")]
    Running,
    /// The token endpoint refused the credentials, or another 4xx: a configuration error
    /// (permanent until someone fixes it).
    #[error("configuration error: {0}")]
    Config(String),
    /// A network error, a timeout or a 5xx (transient).
    #[error("transient: {0}")]
    Transient(String),
}

/// One refresh as the history shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refresh {
    /// The request id (datasets) or the transaction id (dataflows).
    pub id: String,
    /// `Unknown` (running), `Completed`, `Failed`, `Disabled`, `Cancelled`.
    pub status: String,
    /// When it started.
    pub start: Option<DateTime<Utc>>,
    /// When it ended.
    pub end: Option<DateTime<Utc>>,
    /// `Scheduled`, `ViaApi`, ...
    pub refresh_type: String,
    /// Power BI's error (a JSON string), on a failed dataset refresh.
    pub error: Option<String>,
}

impl Refresh {
    /// Status `Unknown`: still running.
    pub fn running(&self) -> bool {
        self.status == "Unknown"
    }
}

#[derive(Deserialize)]
struct RawHistory {
    #[serde(default)]
    value: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: serde_json::Value,
}

struct Token {
    value: Secret,
    until: Instant,
}

/// The client: an HTTP client trusting the configured CA, and the cached token.
pub struct Client {
    http: reqwest::Client,
    settings: PowerBiConfig,
    token: Mutex<Option<Token>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("api", &self.settings.api.url)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Builds the HTTP client (HTTPS only, the configured CA trusted).
    pub fn new(settings: PowerBiConfig) -> Result<Client, String> {
        let timeout = Duration::from_secs(settings.api.request_timeout_secs);
        let mut b = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .timeout(timeout)
            .https_only(true);
        if let Some(ca) = &settings.api.ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
            if certs.is_empty() {
                return Err(format!("ca_file {}: no certificate", ca.display()));
            }
            b = b.tls_certs_only(certs);
        }
        let http = b.build().map_err(|e| format!("http client: {e}"))?;
        Ok(Client {
            http,
            settings,
            token: Mutex::new(None),
        })
    }

    /// Forgets the cached token (the next call signs in again).
    pub async fn forget_token(&self) {
        *self.token.lock().await = None;
    }

    /// A valid token: the cached one, or a new one from the token endpoint.
    async fn token(&self) -> Result<Secret, ApiError> {
        let mut slot = self.token.lock().await;
        if let Some(t) = slot.as_ref()
            && Instant::now() < t.until
        {
            return Ok(t.value.clone());
        }
        let e = &self.settings.entra;
        let secret = e
            .client_secret
            .read("powerbi", "client_secret")
            .map_err(|err| ApiError::Config(err.to_string()))?;
        let body = form(&[
            ("grant_type", b"client_credentials".as_slice()),
            ("client_id", e.client_id.as_bytes()),
            ("client_secret", secret.expose()),
            ("scope", SCOPE.as_bytes()),
        ]);
        let url = format!(
            "{}/{}/oauth2/v2.0/token",
            e.authority_url.trim_end_matches('/'),
            e.tenant
        );
        let resp = self
            .http
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|err| ApiError::Transient(format!("token endpoint: {}", without_url(&err))))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let what = entra_error(&text);
            return Err(if status.is_server_error() || status.as_u16() == 429 {
                ApiError::Transient(format!("token endpoint: {status} {what}"))
            } else {
                ApiError::Config(format!(
                    "token endpoint refused the client credentials: {status} {what}"
                ))
            });
        }
        let t: TokenAnswer = resp
            .json()
            .await
            .map_err(|err| ApiError::Transient(format!("token endpoint answer: {err}")))?;
        let secs = match &t.expires_in {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .unwrap_or(0);
        let lifetime = Duration::from_secs(secs);
        // Renewed a minute early; a token shorter-lived than two minutes: at half its life.
        let margin = if lifetime > 2 * EXPIRY_MARGIN {
            EXPIRY_MARGIN
        } else {
            lifetime / 2
        };
        let value = Secret::new(t.access_token.into_bytes());
        *slot = Some(Token {
            value: value.clone(),
            until: Instant::now() + lifetime - margin,
        });
        tracing::info!(expires_in_secs = secs, "Power BI token obtained");
        Ok(value)
    }

    /// Sends a request with the token; on 401 or 403 renews the token once and sends it again.
    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<reqwest::Response, ApiError> {
        for attempt in 0..2 {
            let token = self.token().await?;
            let mut req = self.http.request(method.clone(), url).header(
                "authorization",
                format!("Bearer {}", String::from_utf8_lossy(token.expose())),
            );
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| ApiError::Transient(without_url(&e)))?;
            let s = resp.status().as_u16();
            if (s == 401 || s == 403) && attempt == 0 {
                tracing::info!(status = s, "Power BI refused the token, renewing it");
                self.forget_token().await;
                continue;
            }
            return Ok(resp);
        }
        Err(ApiError::Transient("unreachable".into()))
    }

    fn item_url(&self, item: &PowerBiItem) -> String {
        let kind = match item.kind {
            ItemKind::Dataset => "datasets",
            ItemKind::Dataflow => "dataflows",
        };
        format!(
            "{}/v1.0/myorg/groups/{}/{kind}/{}",
            self.settings.api.url.trim_end_matches('/'),
            item.workspace,
            item.id
        )
    }

    /// Requests a refresh (`NoNotification`); returns Power BI's `RequestId`.
    pub async fn refresh(&self, item: &PowerBiItem) -> Result<String, ApiError> {
        let url = format!("{}/refreshes", self.item_url(item));
        let body = serde_json::json!({"notifyOption": "NoNotification"});
        let resp = self.send(reqwest::Method::POST, &url, Some(&body)).await?;
        let status = resp.status();
        let request_id = resp
            .headers()
            .get("requestid")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if status.is_success() {
            return Ok(request_id);
        }
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let text = resp.text().await.unwrap_or_default();
        Err(classify(status.as_u16(), retry_after, &text))
    }

    /// The newest `top` refreshes, newest first.
    pub async fn history(&self, item: &PowerBiItem, top: u32) -> Result<Vec<Refresh>, ApiError> {
        let url = match item.kind {
            ItemKind::Dataset => format!("{}/refreshes?$top={top}", self.item_url(item)),
            ItemKind::Dataflow => format!("{}/transactions", self.item_url(item)),
        };
        let resp = self.send(reqwest::Method::GET, &url, None).await?;
        let status = resp.status();
        if !status.is_success() {
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let text = resp.text().await.unwrap_or_default();
            return Err(classify(status.as_u16(), retry_after, &text));
        }
        let raw: RawHistory = resp
            .json()
            .await
            .map_err(|e| ApiError::Transient(format!("refresh history: {e}")))?;
        let mut out: Vec<Refresh> = raw.value.iter().map(parse_refresh).collect();
        out.sort_by_key(|r| std::cmp::Reverse(r.start));
        out.truncate(top as usize);
        Ok(out)
    }
}

/// One history entry (dataset refresh or dataflow transaction).
fn parse_refresh(v: &serde_json::Value) -> Refresh {
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(String::from);
    let time = |k: &str| {
        s(k).and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    let id = s("requestId")
        .or_else(|| s("id"))
        .or_else(|| v.get("id").map(|x| x.to_string()))
        .unwrap_or_default();
    Refresh {
        id,
        status: s("status").unwrap_or_else(|| "Unknown".into()),
        start: time("startTime"),
        end: time("endTime"),
        refresh_type: s("refreshType").unwrap_or_default(),
        error: s("serviceExceptionJson"),
    }
}

/// Maps an unsuccessful status to an [`ApiError`].
fn classify(status: u16, retry_after: Option<u64>, body: &str) -> ApiError {
    let what = api_error(body);
    match status {
        429 => ApiError::Throttled {
            retry_after: Duration::from_secs(retry_after.unwrap_or(60)),
        },
        400 if body.contains("already executing") || body.contains("already running") => {
            ApiError::Running
        }
        400..=499 => ApiError::Config(format!("Power BI answered {status}: {what}")),
        _ => ApiError::Transient(format!("Power BI answered {status}: {what}")),
    }
}

/// `code: message` of a Power BI error body, else its first 200 characters.
fn api_error(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let e = &v["error"];
    match (e["code"].as_str(), e["message"].as_str()) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.to_string(),
        _ => body.chars().take(200).collect(),
    }
}

/// `error: description` of an Entra error body (never the request, which holds the secret).
fn entra_error(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let desc = v["error_description"]
        .as_str()
        .and_then(|d| d.lines().next())
        .unwrap_or_default();
    format!("{} {desc}", v["error"].as_str().unwrap_or("error"))
        .trim()
        .to_string()
}

/// A reqwest error without its URL (which holds nothing secret, but is long).
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), "");
    }
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(&format!(": {inner}"));
        src = inner.source();
    }
    s
}

/// `application/x-www-form-urlencoded` of `pairs`.
fn form(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        encode(k.as_bytes(), &mut out);
        out.push(b'=');
        encode(v, &mut out);
    }
    out
}

fn encode(bytes: &[u8], out: &mut Vec<u8>) {
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_and_forms_encoded() {
        assert_eq!(
            classify(429, Some(7), ""),
            ApiError::Throttled {
                retry_after: Duration::from_secs(7)
            }
        );
        assert_eq!(
            classify(
                400,
                None,
                r#"{"error":{"code":"InvalidRequest","message":"Another refresh request is already executing"}}"#
            ),
            ApiError::Running
        );
        assert!(matches!(classify(404, None, "{}"), ApiError::Config(_)));
        assert!(matches!(classify(503, None, ""), ApiError::Transient(_)));
        assert_eq!(
            form(&[("a b", b"x/y&z=".as_slice()), ("s", b"~ok")]),
            b"a%20b=x%2Fy%26z%3D&s=~ok".to_vec()
        );
        let r = parse_refresh(&serde_json::json!({
            "requestId": "r1", "id": 3, "status": "Failed", "refreshType": "ViaApi",
            "startTime": "2026-12-05T10:00:00Z", "endTime": "2026-12-05T10:01:00Z",
            "serviceExceptionJson": "{\"errorCode\":\"X\"}"
        }));
        assert_eq!(r.id, "r1");
        assert_eq!(r.error.as_deref(), Some("{\"errorCode\":\"X\"}"));
        assert!(!r.running() && r.end.is_some());
    }
}
