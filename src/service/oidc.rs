//! Checks the OIDC token of a Pub/Sub push request (`Authorization: Bearer <JWT>`), so a wrong
//! IAM binding alone is not enough to forge messages: RS256 only, signed by a key of Google's
//! JWK set (`[push].jwks_url`, cached as its `Cache-Control: max-age` says, fetched again at
//! most once a minute for an unknown key id), `iss` = `[push].issuer`, `aud` = `[push].audience`,
//! not expired (`exp` required; `[push].leeway_secs` of clock skew), `email` = the push service
//! account and `email_verified` true.
//!
//! A bad token is refused with 401 (Pub/Sub retries it, then dead-letters: nothing is handled);
//! keys that cannot be fetched give 503 (transient: the request is retried).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::push::PushSettings;

/// Shortest time between two fetches of the key set (an unknown `kid` never makes every request
/// fetch the keys).
pub const MIN_REFETCH: Duration = Duration::from_secs(60);
/// How long keys are kept when the response has no usable `Cache-Control: max-age`.
pub const DEFAULT_KEYS_TTL: Duration = Duration::from_secs(3600);
/// The longest a fetched key set is trusted, whatever its `max-age`.
pub const MAX_KEYS_TTL: Duration = Duration::from_secs(24 * 3600);
/// Timeout of one key-set request.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest token accepted (Google's ID tokens are about 1 KB).
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a push request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The token is missing or not valid: permanent for this request (HTTP 401).
    #[error("push token refused: {0}")]
    Unauthorized(String),
    /// The signing keys could not be fetched: transient (HTTP 503).
    #[error("push token not checked (transient): {0}")]
    Unavailable(String),
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<serde_json::Value>,
}

#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, DecodingKey>,
    expires: Option<Instant>,
    last_fetch: Option<Instant>,
}

/// Verifies push tokens against `[push]`; one per process (its key cache is shared).
pub struct Verifier {
    settings: PushSettings,
    http: reqwest::Client,
    keys: tokio::sync::Mutex<Keys>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("audience", &self.settings.audience)
            .field("service_account", &self.settings.service_account)
            .field("jwks_url", &self.settings.jwks_url)
            .finish()
    }
}

impl Verifier {
    /// A verifier for `settings` (no request is made before the first token).
    pub fn new(settings: PushSettings) -> Verifier {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Verifier {
            settings,
            http,
            keys: tokio::sync::Mutex::new(Keys::default()),
        }
    }

    /// Checks the value of a request's `Authorization` header.
    pub async fn verify(&self, authorization: Option<&str>) -> Result<(), Refused> {
        let unauthorized = |m: String| Refused::Unauthorized(m);
        let header = authorization.ok_or_else(|| unauthorized("no Authorization header".into()))?;
        let token = header
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .ok_or_else(|| unauthorized("not a Bearer token".into()))?;
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(unauthorized("empty or oversized token".into()));
        }
        let head = jsonwebtoken::decode_header(token)
            .map_err(|e| unauthorized(format!("malformed token header: {e}")))?;
        if head.alg != Algorithm::RS256 {
            return Err(unauthorized(format!(
                "algorithm {:?} (only RS256)",
                head.alg
            )));
        }
        let kid = head
            .kid
            .ok_or_else(|| unauthorized("token without key id".into()))?;
        let key = self.key(&kid).await?;

        let mut v = Validation::new(Algorithm::RS256);
        v.algorithms = vec![Algorithm::RS256];
        v.leeway = self.settings.leeway_secs;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.set_issuer(&[self.settings.issuer.as_str()]);
        v.set_audience(&[self.settings.audience.as_deref().unwrap_or_default()]);
        let data = jsonwebtoken::decode::<Claims>(token, &key, &v)
            .map_err(|e| unauthorized(format!("invalid token: {e}")))?;
        let claims = data.claims;
        let expected = self.settings.service_account.as_deref().unwrap_or_default();
        if claims.email.as_deref() != Some(expected) || expected.is_empty() {
            return Err(unauthorized(format!(
                "token of {:?}, not the push service account",
                claims.email.unwrap_or_default()
            )));
        }
        if claims.email_verified != Some(serde_json::Value::Bool(true)) {
            return Err(unauthorized("email_verified is not true".into()));
        }
        Ok(())
    }

    /// The key `kid`, from the cache or a fresh fetch.
    async fn key(&self, kid: &str) -> Result<DecodingKey, Refused> {
        let mut keys = self.keys.lock().await;
        let now = Instant::now();
        let fresh = keys.expires.is_some_and(|e| e > now);
        if fresh && let Some(k) = keys.by_kid.get(kid) {
            return Ok(k.clone());
        }
        let may_fetch = !fresh || keys.last_fetch.is_none_or(|t| now - t >= MIN_REFETCH);
        if may_fetch {
            keys.last_fetch = Some(now);
            match self.fetch().await {
                Ok((by_kid, ttl)) => {
                    keys.by_kid = by_kid;
                    keys.expires = Some(now + ttl);
                }
                Err(e) => {
                    // Google rotates keys well before using new ones: a known key of the stale
                    // set is still good for a while; anything else waits for the next fetch.
                    if let Some(k) = keys.by_kid.get(kid) {
                        tracing::warn!(error = %e, "push keys not refreshed, using the cached key");
                        return Ok(k.clone());
                    }
                    return Err(Refused::Unavailable(e));
                }
            }
        }
        keys.by_kid
            .get(kid)
            .cloned()
            .ok_or_else(|| Refused::Unauthorized(format!("unknown key id {kid:?}")))
    }

    /// Fetches the JWK set: RSA signing keys by `kid`, and how long to keep them.
    async fn fetch(&self) -> Result<(HashMap<String, DecodingKey>, Duration), String> {
        let url = &self.settings.jwks_url;
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("fetching {url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("fetching {url}: HTTP {}", resp.status()));
        }
        let ttl = resp
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age)
            .unwrap_or(DEFAULT_KEYS_TTL)
            .clamp(MIN_REFETCH, MAX_KEYS_TTL);
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("reading {url}: {e}"))?;
        #[derive(Deserialize)]
        struct Set {
            keys: Vec<serde_json::Value>,
        }
        let set: Set =
            serde_json::from_slice(&body).map_err(|e| format!("{url}: not a JWK set: {e}"))?;
        let mut by_kid = HashMap::new();
        for value in set.keys {
            // A key of another type or algorithm is skipped, not fatal.
            let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
                continue;
            };
            let (Some(kid), AlgorithmParameters::RSA(_)) = (&jwk.common.key_id, &jwk.algorithm)
            else {
                continue;
            };
            if let Ok(key) = DecodingKey::from_jwk(&jwk) {
                by_kid.insert(kid.clone(), key);
            }
        }
        if by_kid.is_empty() {
            return Err(format!("{url}: no RSA key with a key id"));
        }
        tracing::info!(
            keys = by_kid.len(),
            ttl_secs = ttl.as_secs(),
            "push token keys fetched"
        );
        Ok((by_kid, ttl))
    }
}

/// The `max-age` of a `Cache-Control` value (`no-store`/`no-cache` count as 0).
pub fn max_age(cache_control: &str) -> Option<Duration> {
    let mut age = None;
    for d in cache_control.split(',').map(str::trim) {
        let lower = d.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(v) = lower.strip_prefix("max-age=") {
            age = v
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    age
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use aws_lc_rs::rsa::KeySize;
    use aws_lc_rs::signature::{KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    const AUD: &str = "https://datashare-worker.example";
    const SA: &str = "datashare-invoker@p.iam.gserviceaccount.com";

    /// A throwaway signing key and its JWK.
    struct TestKey {
        pair: RsaKeyPair,
        kid: String,
    }

    impl TestKey {
        fn new(kid: &str) -> TestKey {
            TestKey {
                pair: RsaKeyPair::generate(KeySize::Rsa2048).unwrap(),
                kid: kid.into(),
            }
        }

        fn jwk(&self) -> serde_json::Value {
            let public = self.pair.public_key();
            serde_json::json!({
                "kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid,
                "n": B64.encode(public.modulus().big_endian_without_leading_zero()),
                "e": B64.encode(public.exponent().big_endian_without_leading_zero()),
            })
        }

        fn sign(&self, header: serde_json::Value, claims: serde_json::Value) -> String {
            let input = format!(
                "{}.{}",
                B64.encode(header.to_string()),
                B64.encode(claims.to_string())
            );
            let mut sig = vec![0; self.pair.public_modulus_len()];
            let rng = aws_lc_rs::rand::SystemRandom::new();
            self.pair
                .sign(&RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut sig)
                .unwrap();
            format!("{input}.{}", B64.encode(sig))
        }

        fn token(&self, claims: serde_json::Value) -> String {
            self.sign(
                serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": self.kid}),
                claims,
            )
        }
    }

    fn claims() -> serde_json::Value {
        let now = jsonwebtoken::get_current_timestamp();
        serde_json::json!({
            "iss": "https://accounts.google.com", "aud": AUD, "email": SA,
            "email_verified": true, "iat": now, "exp": now + 3600, "sub": "1234",
        })
    }

    fn with(mut c: serde_json::Value, key: &str, v: serde_json::Value) -> serde_json::Value {
        c[key] = v;
        c
    }

    /// A JWK-set endpoint on loopback serving `keys`, counting its requests.
    async fn jwks(keys: Vec<serde_json::Value>, max_age: u64) -> (String, Arc<AtomicUsize>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let body = serde_json::json!({ "keys": keys }).to_string();
        let counter = hits.clone();
        let app = axum::Router::new().route(
            "/certs",
            axum::routing::get(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                let body = body.clone();
                async move {
                    (
                        [(
                            http::header::CACHE_CONTROL,
                            format!("public, max-age={max_age}, must-revalidate"),
                        )],
                        body,
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/certs"), hits)
    }

    fn verifier(url: &str) -> Verifier {
        Verifier::new(PushSettings {
            verify: Some(true),
            audience: Some(AUD.into()),
            service_account: Some(SA.into()),
            jwks_url: url.into(),
            ..PushSettings::default()
        })
    }

    fn bearer(t: &str) -> String {
        format!("Bearer {t}")
    }

    #[tokio::test]
    async fn accepts_the_push_account_and_refuses_everything_else() {
        let key = TestKey::new("k1");
        let other = TestKey::new("k1");
        let (url, hits) = jwks(vec![key.jwk()], 600).await;
        let v = verifier(&url);
        let ok = |t: String| bearer(&t);
        assert_eq!(v.verify(Some(&ok(key.token(claims())))).await, Ok(()));

        let now = jsonwebtoken::get_current_timestamp();
        let refused = [
            ("no header", None),
            ("basic", Some("Basic dXNlcjpwYXNz".to_string())),
            ("garbage", Some(bearer("not.a.jwt"))),
            (
                "other audience",
                Some(ok(key.token(with(claims(), "aud", "https://x".into())))),
            ),
            (
                "other issuer",
                Some(ok(key.token(with(claims(), "iss", "https://evil".into())))),
            ),
            (
                "IAP issuer",
                Some(ok(key.token(with(
                    claims(),
                    "iss",
                    "https://cloud.google.com/iap".into(),
                )))),
            ),
            (
                "other account",
                Some(ok(key.token(with(
                    claims(),
                    "email",
                    "x@p.iam.gserviceaccount.com".into(),
                )))),
            ),
            (
                "unverified e-mail",
                Some(ok(key.token(with(
                    claims(),
                    "email_verified",
                    false.into(),
                )))),
            ),
            (
                "e-mail verified as text",
                Some(ok(key.token(with(
                    claims(),
                    "email_verified",
                    "true".into(),
                )))),
            ),
            (
                "expired",
                Some(ok(key.token(with(claims(), "exp", (now - 3600).into())))),
            ),
            (
                "no exp",
                Some(ok(key.token({
                    let mut c = claims();
                    c.as_object_mut().unwrap().remove("exp");
                    c
                }))),
            ),
            (
                "not yet valid",
                Some(ok(key.token(with(claims(), "nbf", (now + 3600).into())))),
            ),
            ("wrong signer", Some(ok(other.token(claims())))),
            (
                "alg none",
                Some(ok(key.sign(
                    serde_json::json!({"alg": "none", "kid": "k1"}),
                    claims(),
                ))),
            ),
            (
                "alg HS256",
                Some(ok(key.sign(
                    serde_json::json!({"alg": "HS256", "kid": "k1"}),
                    claims(),
                ))),
            ),
            (
                "no kid",
                Some(ok(key.sign(serde_json::json!({"alg": "RS256"}), claims()))),
            ),
        ];
        for (what, header) in refused {
            let got = v.verify(header.as_deref()).await;
            assert!(
                matches!(got, Err(Refused::Unauthorized(_))),
                "{what}: {got:?}"
            );
        }
        // Tampered claims under a good signature.
        let good = key.token(claims());
        let mut parts: Vec<String> = good.split('.').map(String::from).collect();
        parts[1] = B64.encode(with(claims(), "email", "x@y".into()).to_string());
        assert!(v.verify(Some(&bearer(&parts.join(".")))).await.is_err());
        // All of that with one fetch of the keys (cached for max-age).
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn unknown_key_ids_refetch_at_most_once_a_minute() {
        let key = TestKey::new("k1");
        let (url, hits) = jwks(vec![key.jwk()], 600).await;
        let v = verifier(&url);
        let stranger = TestKey::new("k2");
        for _ in 0..5 {
            let got = v.verify(Some(&bearer(&stranger.token(claims())))).await;
            assert!(matches!(got, Err(Refused::Unauthorized(_))), "{got:?}");
        }
        assert_eq!(
            hits.load(Ordering::SeqCst),
            1,
            "one fetch for five unknown kids"
        );
        assert_eq!(v.verify(Some(&bearer(&key.token(claims())))).await, Ok(()));
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn keys_that_cannot_be_fetched_are_transient() {
        let v = verifier("http://127.0.0.1:9/certs");
        let key = TestKey::new("k1");
        let got = v.verify(Some(&bearer(&key.token(claims())))).await;
        assert!(matches!(got, Err(Refused::Unavailable(_))), "{got:?}");
    }

    #[test]
    fn cache_control_max_age() {
        assert_eq!(
            max_age("public, max-age=19204, must-revalidate, no-transform"),
            Some(Duration::from_secs(19204))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=x"), None);
    }
}
