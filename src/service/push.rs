//! Push front end: `POST <push path>` per subscription of a role (the topology's push paths), the
//! Pub/Sub push envelope in, 204 to ack, 503 to have it retried, 400 for an envelope that is not
//! one; `GET /healthz`. A path shared by several subscriptions (the alert role's dead letters)
//! tells them apart by the envelope's `subscription`. Handlers run in their own task, so a
//! dropped connection never abandons work half done. With `[push].verify` on (Cloud Run), every
//! push request's OIDC token is checked first ([`super::oidc`]): 401 without a valid one.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use base64::Engine;
use serde::Deserialize;

use super::oidc::{Refused, Verifier};
use super::{Outcome, Role, dispatch};
use crate::events::Incoming;

/// The `message` of a push envelope (camelCase or snake_case ids).
#[derive(Debug, Deserialize)]
struct PushMessage {
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    attributes: Option<BTreeMap<String, String>>,
    // Pub/Sub sends both spellings (serde aliases would call them duplicates).
    #[serde(default, rename = "messageId")]
    message_id: Option<String>,
    #[serde(default, rename = "message_id")]
    message_id_snake: Option<String>,
}

/// A Pub/Sub push request body.
#[derive(Debug, Deserialize)]
struct Envelope {
    message: PushMessage,
    #[serde(default)]
    subscription: Option<String>,
    #[serde(default, rename = "deliveryAttempt")]
    delivery_attempt: Option<i32>,
    #[serde(default, rename = "delivery_attempt")]
    delivery_attempt_snake: Option<i32>,
}

/// Parses a push request body into a message; the error says why it is not an envelope.
pub fn parse_envelope(body: &[u8]) -> Result<(Incoming, Option<String>), String> {
    let env: Envelope =
        serde_json::from_slice(body).map_err(|e| format!("not a push envelope: {e}"))?;
    let data = match env.message.data.as_deref() {
        None | Some("") => Vec::new(),
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("message data is not base64: {e}"))?,
    };
    let id = env
        .message
        .message_id
        .or(env.message.message_id_snake)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| "message without messageId".to_string())?;
    Ok((
        Incoming {
            id,
            data,
            attributes: env.message.attributes.unwrap_or_default(),
            delivery_attempt: env.delivery_attempt.or(env.delivery_attempt_snake),
        },
        env.subscription,
    ))
}

struct Route<R> {
    role: Arc<R>,
    /// The subscriptions pushing to this path.
    subscriptions: Vec<String>,
    /// Checks the push token (`None`: `[push].verify` is off).
    verifier: Option<Arc<Verifier>>,
}

impl<R> Clone for Route<R> {
    fn clone(&self) -> Self {
        Route {
            role: self.role.clone(),
            subscriptions: self.subscriptions.clone(),
            verifier: self.verifier.clone(),
        }
    }
}

/// Checks a request's token when verification is on; the status to answer otherwise.
pub async fn authorize(verifier: Option<&Verifier>, headers: &HeaderMap) -> Result<(), StatusCode> {
    let Some(v) = verifier else {
        return Ok(());
    };
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    match v.verify(header).await {
        Ok(()) => Ok(()),
        Err(e @ Refused::Unauthorized(_)) => {
            tracing::warn!(error = %e, "push request refused");
            Err(StatusCode::UNAUTHORIZED)
        }
        Err(e @ Refused::Unavailable(_)) => {
            tracing::warn!(error = %e, "push request not checked, retried later");
            Err(StatusCode::SERVICE_UNAVAILABLE)
        }
    }
}

impl<R> Route<R> {
    /// The subscription a request comes from: the path's only one, else the envelope's.
    fn subscription(&self, from: Option<&str>) -> Result<String, String> {
        let named = from.map(|f| f.rsplit('/').next().unwrap_or(f));
        match (self.subscriptions.as_slice(), named) {
            ([only], Some(n)) if n != only => {
                tracing::warn!(expected = %only, got = %n, "push from another subscription");
                Ok(only.clone())
            }
            ([only], _) => Ok(only.clone()),
            (subs, Some(n)) if subs.iter().any(|s| s == n) => Ok(n.to_string()),
            (_, n) => Err(format!(
                "push from {n:?}, not one of {}",
                self.subscriptions.join(", ")
            )),
        }
    }
}

async fn on_push<R: Role>(
    State(route): State<Route<R>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    if let Err(status) = authorize(route.verifier.as_deref(), &headers).await {
        return status;
    }
    let parsed = parse_envelope(&body)
        .and_then(|(msg, from)| Ok((route.subscription(from.as_deref())?, msg)));
    let (sub, msg) = match parsed {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(subscriptions = ?route.subscriptions, error = %e, "malformed push request");
            return StatusCode::BAD_REQUEST;
        }
    };
    let role = route.role.clone();
    let handled = tokio::spawn(async move { dispatch(&*role, &sub, &msg).await }).await;
    // Cloud Run throttles the CPU once the response is sent: the request's spans go out first.
    crate::telemetry::flush_after_request().await;
    match handled {
        Ok(Outcome::Ack) => StatusCode::NO_CONTENT,
        Ok(Outcome::Nack) => StatusCode::SERVICE_UNAVAILABLE,
        Err(e) => {
            tracing::error!(error = %e, "handler panicked");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// A role's HTTP routes: one push path per subscription (or group), and `/healthz`.
pub fn router<R: Role>(role: Arc<R>) -> Router {
    let mut paths: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (sub, path) in role
        .context()
        .config
        .role_subscriptions(role.context().role)
    {
        paths
            .entry(path.to_string())
            .or_default()
            .push(sub.to_string());
    }
    let push = &role.context().config.push;
    let verifier = push
        .verifies()
        .then(|| Arc::new(Verifier::new(push.clone())));
    if verifier.is_none() {
        tracing::warn!("push tokens are not verified ([push].verify off)");
    }
    let mut app = Router::new().route("/healthz", get(|| async { "ok" }));
    for (path, subscriptions) in paths {
        let route = Route {
            role: role.clone(),
            subscriptions,
            verifier: verifier.clone(),
        };
        app = app.route(&path, post(on_push::<R>).with_state(route));
    }
    app
}

/// Serves the push endpoint on `listener` until `stop` turns true, then drains requests.
pub async fn serve<R: Role>(
    role: Arc<R>,
    listener: tokio::net::TcpListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    tracing::info!(addr = ?listener.local_addr().ok(), "serving push requests");
    axum::serve(listener, router(role))
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_in_both_spellings() {
        let camel = br#"{"message":{"data":"aGk=","attributes":{"a":"b"},"messageId":"7","publishTime":"x"},
            "subscription":"projects/p/subscriptions/extracts-worker","deliveryAttempt":3}"#;
        let (m, sub) = parse_envelope(camel).unwrap();
        assert_eq!((m.id.as_str(), m.data.as_slice()), ("7", &b"hi"[..]));
        assert_eq!(m.attributes["a"], "b");
        assert_eq!(m.delivery_attempt, Some(3));
        assert_eq!(
            sub.as_deref(),
            Some("projects/p/subscriptions/extracts-worker")
        );
        let both = br#"{"message":{"messageId":"9","message_id":"9","publishTime":"t","publish_time":"t"}}"#;
        assert_eq!(parse_envelope(both).unwrap().0.id, "9");
        let snake = br#"{"message":{"message_id":"8"}}"#;
        let (m, _) = parse_envelope(snake).unwrap();
        assert_eq!(m.id, "8");
        assert!(m.data.is_empty());
    }

    #[test]
    fn refuses_what_is_not_an_envelope() {
        assert!(parse_envelope(b"nope").is_err());
        assert!(parse_envelope(br#"{"message":{"data":"!!","messageId":"1"}}"#).is_err());
        assert!(parse_envelope(br#"{"message":{"data":"aGk="}}"#).is_err());
        assert!(parse_envelope(br#"{"subscription":"x"}"#).is_err());
    }
}
