//! The REST API sink: one `multipart/form-data` POST per delivery to
//! `<base>/datasets/<product>/files`, header `Idempotency-Key: <delivery id>`.
//!
//! Parts: every data file as `file`, every manifest as `manifest`, the product's data dictionary
//! as `dictionary` (with file names). 2xx and 409
//! (the partner already has it) are success; 408, 429, 5xx and network errors are retried here
//! with exponential backoff and full jitter, honouring `Retry-After`, within a bound of attempts
//! and time; past it a transient error goes back to Pub/Sub. 401/403 are refused credentials,
//! other 4xx permanent rejections.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::multipart::{Form, Part};
use reqwest::{RequestBuilder, StatusCode};
use tokio_util::io::ReaderStream;

use super::{Delivery, Sink, SinkError, receipt};
use crate::config::secret::{Secret, SecretRef};
use crate::config::sinks::{ApiAuth, ApiConfig, ApiOptions};
use crate::events::{Receipt, ReceiptFile};

const SINK: &str = "api";
/// How much of a file one read takes while it streams into the request's body.
const READ_CHUNK: usize = 1 << 20;

enum Credentials {
    Basic { user: String, password: Secret },
    Bearer(Secret),
}

/// Posts product files to a partner's REST API.
pub struct ApiSink {
    client: reqwest::Client,
    base: String,
    credentials: Credentials,
    options: ApiOptions,
}

impl std::fmt::Debug for ApiSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match &self.credentials {
            Credentials::Basic { user, .. } => format!("basic {user} ***"),
            Credentials::Bearer(_) => "bearer ***".into(),
        };
        f.debug_struct("ApiSink")
            .field("base", &self.base)
            .field("auth", &auth)
            .finish_non_exhaustive()
    }
}

fn config(message: String) -> SinkError {
    SinkError::Config {
        sink: SINK,
        message,
    }
}

fn secret_text(s: &Secret) -> Result<&str, SinkError> {
    std::str::from_utf8(s.expose()).map_err(|_| config("a credential is not UTF-8".into()))
}

impl ApiSink {
    /// Builds the sink from a contract's settings, reading its credentials and CA file.
    pub fn new(partner: &str, c: &ApiConfig, options: &ApiOptions) -> Result<ApiSink, SinkError> {
        let read =
            |r: &SecretRef, what: &str| r.read(partner, what).map_err(|e| config(e.to_string()));
        let credentials = match &c.auth {
            ApiAuth::Basic { user, password } => Credentials::Basic {
                user: user.clone(),
                password: read(password, "auth.password")?,
            },
            ApiAuth::Bearer { token } => Credentials::Bearer(read(token, "auth.token")?),
        };
        super::warm_up_tls();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(options.connect_timeout_secs.max(1)))
            .timeout(Duration::from_secs(options.request_timeout_secs.max(1)))
            .https_only(true)
            .user_agent(concat!("datashare/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &c.ca_file {
            let pem =
                std::fs::read(ca).map_err(|e| config(format!("ca_file {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| config(format!("ca_file {}: {e}", ca.display())))?;
            if certs.is_empty() {
                return Err(config(format!("ca_file {}: no certificate", ca.display())));
            }
            // A partner with a private CA: trust that CA only.
            builder = builder.tls_certs_only(certs);
        }
        let client = builder
            .build()
            .map_err(|e| config(format!("http client: {e}")))?;
        Ok(ApiSink {
            client,
            base: c.base_url.trim_end_matches('/').to_string(),
            credentials,
            options: *options,
        })
    }

    fn authenticated(&self, req: RequestBuilder) -> Result<RequestBuilder, SinkError> {
        Ok(match &self.credentials {
            Credentials::Basic { user, password } => {
                req.basic_auth(user, Some(secret_text(password)?))
            }
            Credentials::Bearer(token) => req.bearer_auth(secret_text(token)?),
        })
    }

    /// The upload URL of a product.
    pub fn files_url(&self, product: &str) -> String {
        format!("{}/datasets/{product}/files", self.base)
    }
}

/// What one attempt came to.
enum Attempt {
    Done(bool),
    Retry {
        why: String,
        retry_after: Option<Duration>,
    },
}

fn classify_status(
    status: StatusCode,
    headers: &HeaderMap,
    body: &str,
) -> Result<Attempt, SinkError> {
    if status.is_success() {
        return Ok(Attempt::Done(false));
    }
    if status == StatusCode::CONFLICT {
        return Ok(Attempt::Done(true));
    }
    if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        return Ok(Attempt::Retry {
            why: format!("http {}", status.as_u16()),
            retry_after: headers
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after),
        });
    }
    let message = format!("http {}: {}", status.as_u16(), snippet(body));
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return Err(SinkError::Auth {
            sink: SINK,
            message,
        });
    }
    Err(SinkError::Rejected {
        sink: SINK,
        message,
    })
}

/// A product file could not be read (transient: the delivery is retried).
fn read_error(path: &Path, e: &std::io::Error) -> SinkError {
    SinkError::Transient {
        sink: SINK,
        message: format!("read {}: {e}", path.display()),
    }
}

/// The start of a response body on one line, for error messages.
fn snippet(body: &str) -> String {
    let one_line: String = body
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    one_line.trim().to_string()
}

/// Parses `Retry-After`: delay seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let ms = (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_milliseconds();
    Some(Duration::from_millis(ms.max(0) as u64))
}

/// Backoff before attempt `attempt + 1`: full jitter over an exponential ceiling, at least the
/// server's `Retry-After`.
pub fn backoff(options: &ApiOptions, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let ceiling = options
        .initial_backoff_ms
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(20))
        .min(options.max_backoff_ms)
        .max(1);
    let jittered = Duration::from_millis(u64::from(super::receipts::rand_u32()) % ceiling + 1);
    match retry_after {
        Some(ra) => ra.max(jittered / 4),
        None => jittered,
    }
}

fn network_error(context: &str, e: &reqwest::Error) -> Result<Attempt, SinkError> {
    if e.is_builder() {
        return Err(config(format!("{context}: {e}")));
    }
    if super::is_untrusted_certificate(e) {
        return Err(config(format!(
            "{context}: the server's certificate is not trusted (ca_file?): {e}"
        )));
    }
    // Keep the chain: "error sending request" alone does not say what happened.
    let mut why = format!("{context}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        why.push_str(&format!(": {s}"));
        source = s.source();
    }
    Ok(Attempt::Retry {
        why,
        retry_after: None,
    })
}

impl ApiSink {
    async fn attempt(
        &self,
        url: &str,
        d: &Delivery,
        parts: &[(&str, String, &Path)],
    ) -> Result<Attempt, SinkError> {
        let mut form = Form::new();
        for (field, name, path) in parts {
            let mime = if name.ends_with(".json") {
                "application/json"
            } else if name.ends_with(".md") {
                "text/markdown; charset=utf-8"
            } else if name.ends_with(".csv") {
                "text/csv"
            } else {
                "application/vnd.apache.parquet"
            };
            // Streamed from the file, opened again at each attempt: a product file is never
            // held in memory (a 10M-row day's CSV is hundreds of MB).
            let file = tokio::fs::File::open(path)
                .await
                .map_err(|e| read_error(path, &e))?;
            let len = file
                .metadata()
                .await
                .map_err(|e| read_error(path, &e))?
                .len();
            // Read 1 MiB at a time: `Body::from(file)` reads 4 KiB per step, each a hop to a
            // blocking thread (a 500 MB file: ~120,000 of them).
            let body = reqwest::Body::wrap_stream(ReaderStream::with_capacity(file, READ_CHUNK));
            let part = Part::stream_with_length(body, len)
                .file_name(name.clone())
                .mime_str(mime)
                .map_err(|e| config(format!("mime {mime}: {e}")))?;
            form = form.part(field.to_string(), part);
        }
        let req = self
            .authenticated(self.client.post(url))?
            .header("Idempotency-Key", &d.delivery_id)
            .multipart(form);
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return network_error("post", &e),
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = match resp.text().await {
            Ok(b) => b,
            Err(e) if status.is_success() || status == StatusCode::CONFLICT => {
                tracing::debug!(error = %e, "could not read the answer's body");
                String::new()
            }
            Err(e) => return network_error("read answer", &e),
        };
        classify_status(status, &headers, &body)
    }
}

impl Sink for ApiSink {
    fn name(&self) -> &'static str {
        SINK
    }

    async fn deliver(&self, d: &Delivery) -> Result<Receipt, SinkError> {
        let url = self.files_url(d.product.as_str());
        let mut parts = Vec::new();
        for f in &d.files {
            for (field, lf) in [("file", &f.data), ("manifest", &f.manifest)] {
                parts.push((field, lf.name.clone(), lf.path.as_path()));
            }
        }
        // The dictionary travels in the same POST (its own part): one of the version's files.
        if let Some(lf) = &d.dictionary {
            parts.push(("dictionary", lf.name.clone(), lf.path.as_path()));
        }
        let started = Instant::now();
        let budget = Duration::from_secs(self.options.retry_budget_secs);
        let max_attempts = self.options.max_attempts.max(1);
        let mut attempt = 0;
        let already_present = loop {
            attempt += 1;
            let (why, retry_after) = match self.attempt(&url, d, &parts).await? {
                Attempt::Done(already) => break already,
                Attempt::Retry { why, retry_after } => (why, retry_after),
            };
            let delay = backoff(&self.options, attempt, retry_after);
            let cap = Duration::from_millis(self.options.max_backoff_ms);
            if attempt >= max_attempts || delay > cap || started.elapsed() + delay > budget {
                return Err(SinkError::Transient {
                    sink: SINK,
                    message: format!("{why} (gave up after {attempt} attempts)"),
                });
            }
            tracing::warn!(
                attempt,
                delay_ms = delay.as_millis() as u64,
                reason = %why,
                "api delivery failed, retrying"
            );
            tokio::time::sleep(delay).await;
        };
        let files = d
            .files
            .iter()
            .flat_map(|f| [&f.data, &f.manifest])
            .chain(d.dictionary.iter())
            .map(|lf| ReceiptFile {
                name: lf.name.clone(),
                location: url.clone(),
                bytes: lf.bytes,
                sha256: lf.sha256.clone(),
            })
            .collect();
        Ok(receipt(SINK, d, files, already_present))
    }

    async fn check(&self) -> Result<(), SinkError> {
        let url = format!("{}/health", self.base);
        let resp = match self.authenticated(self.client.get(&url))?.send().await {
            Ok(r) => r,
            Err(e) => {
                return Err(match network_error("get health", &e)? {
                    Attempt::Retry { why, .. } => SinkError::Transient {
                        sink: SINK,
                        message: why,
                    },
                    Attempt::Done(_) => unreachable!("network errors are never done"),
                });
            }
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.text().await.unwrap_or_default();
        match classify_status(status, &headers, &body)? {
            Attempt::Done(_) => Ok(()),
            Attempt::Retry { why, .. } => Err(SinkError::Transient {
                sink: SINK,
                message: format!("health: {why}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_classify_as_the_spec_says() {
        let h = HeaderMap::new();
        let done = |s: u16| {
            matches!(
                classify_status(StatusCode::from_u16(s).unwrap(), &h, ""),
                Ok(Attempt::Done(_))
            )
        };
        let retry = |s: u16| {
            matches!(
                classify_status(StatusCode::from_u16(s).unwrap(), &h, ""),
                Ok(Attempt::Retry { .. })
            )
        };
        let permanent = |s: u16| {
            classify_status(StatusCode::from_u16(s).unwrap(), &h, "")
                .is_err_and(|e| !e.is_transient())
        };
        assert!(done(200) && done(201) && done(204) && done(409));
        assert!(retry(408) && retry(429) && retry(500) && retry(502) && retry(503));
        assert!(permanent(400) && permanent(401) && permanent(404) && permanent(422));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let o = ApiOptions {
            initial_backoff_ms: 100,
            max_backoff_ms: 1_000,
            ..ApiOptions::default()
        };
        for attempt in 1..30 {
            let d = backoff(&o, attempt, None);
            let ceiling = (100u64 << (attempt - 1).min(20)).min(1_000);
            assert!(
                d >= Duration::from_millis(1) && d <= Duration::from_millis(ceiling),
                "{attempt} {d:?}"
            );
        }
        assert!(backoff(&o, 1, Some(Duration::from_secs(2))) >= Duration::from_secs(2));
    }
}
