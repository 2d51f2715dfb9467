//! The `[push]` table: how push endpoints check the OIDC token of Pub/Sub push requests
//! (`Authorization: Bearer <JWT>`): issuer, audience, the push service account's e-mail and
//! Google's signing keys.
//!
//! `verify` unset means "required on Cloud Run": on when `K_SERVICE` is set (Cloud Run sets it),
//! off elsewhere (the local stack's emulator pushes without a token). An explicit `verify =
//! false` (or `DATASHARE_PUSH_VERIFY=false`) turns it off anywhere; with it on, `audience` and
//! `service_account` are required, so a service that would accept unauthenticated pushes does
//! not start. Environment overrides: `DATASHARE_PUSH_VERIFY`, `DATASHARE_PUSH_AUDIENCE`,
//! `DATASHARE_PUSH_SERVICE_ACCOUNT`, `DATASHARE_PUSH_JWKS_URL` (Terraform sets the first three).

use serde::Deserialize;

use super::ConfigError;

/// Google's OIDC issuer, the `iss` of the tokens Pub/Sub push mints.
pub const GOOGLE_ISSUER: &str = "https://accounts.google.com";
/// Google's OAuth 2 signing keys as a JWK set.
pub const GOOGLE_JWKS_URL: &str = "https://www.googleapis.com/oauth2/v3/certs";

/// The `[push]` table.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PushSettings {
    /// Verify the token; unset: on when `K_SERVICE` is set (Cloud Run), resolved at load.
    #[serde(default)]
    pub verify: Option<bool>,
    /// The `aud` the tokens must carry (the subscriptions' `oidc_token` audience).
    #[serde(default)]
    pub audience: Option<String>,
    /// The e-mail of the push service account (`email` claim, `email_verified` true).
    #[serde(default)]
    pub service_account: Option<String>,
    /// The `iss` the tokens must carry.
    #[serde(default = "default_issuer")]
    pub issuer: String,
    /// Where the signing keys are (a JWK set; cached as its `Cache-Control` says).
    #[serde(default = "default_jwks_url")]
    pub jwks_url: String,
    /// Clock skew allowed on `exp`, `iat` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
}

impl Default for PushSettings {
    fn default() -> Self {
        PushSettings {
            verify: None,
            audience: None,
            service_account: None,
            issuer: default_issuer(),
            jwks_url: default_jwks_url(),
            leeway_secs: default_leeway(),
        }
    }
}

fn default_issuer() -> String {
    GOOGLE_ISSUER.to_string()
}

fn default_jwks_url() -> String {
    GOOGLE_JWKS_URL.to_string()
}

fn default_leeway() -> u64 {
    30
}

fn invalid(field: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_string(),
        problem: problem.into(),
    }
}

impl PushSettings {
    /// Whether push requests must carry a valid token (after [`PushSettings::apply_env`]).
    pub fn verifies(&self) -> bool {
        self.verify.unwrap_or(false)
    }

    /// Applies the environment overrides, then resolves an unset `verify` from `K_SERVICE`.
    pub fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let get = |k: &str| {
            env(k)
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        if let Some(v) = get("DATASHARE_PUSH_VERIFY") {
            self.verify = Some(match v.as_str() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => return Err(invalid("DATASHARE_PUSH_VERIFY", "must be true or false")),
            });
        }
        if let Some(v) = get("DATASHARE_PUSH_AUDIENCE") {
            self.audience = Some(v);
        }
        if let Some(v) = get("DATASHARE_PUSH_SERVICE_ACCOUNT") {
            self.service_account = Some(v);
        }
        if let Some(v) = get("DATASHARE_PUSH_JWKS_URL") {
            self.jwks_url = v;
        }
        if self.verify.is_none() {
            self.verify = Some(get("K_SERVICE").is_some());
        }
        Ok(())
    }

    /// With verification on: audience, account, issuer and key URL are set and plausible.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.verifies() {
            return Ok(());
        }
        let required =
            "required when push tokens are verified (on Cloud Run, unless push.verify = false)";
        if self.audience.as_deref().is_none_or(str::is_empty) {
            return Err(invalid("push.audience", required));
        }
        match self.service_account.as_deref() {
            None | Some("") => return Err(invalid("push.service_account", required)),
            Some(a) if !a.contains('@') => {
                return Err(invalid("push.service_account", "not an e-mail address"));
            }
            Some(_) => {}
        }
        if self.issuer.is_empty() {
            return Err(invalid("push.issuer", "empty"));
        }
        let loopback = ["http://127.0.0.1", "http://[::1]", "http://localhost"]
            .iter()
            .any(|p| self.jwks_url.starts_with(p));
        if !self.jwks_url.starts_with("https://") && !loopback {
            return Err(invalid(
                "push.jwks_url",
                "must be https (plain http only on loopback, for tests)",
            ));
        }
        if self.leeway_secs > 300 {
            return Err(invalid("push.leeway_secs", "at most 300"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(vars: &[(&str, &str)]) -> Result<PushSettings, ConfigError> {
        let mut p = PushSettings::default();
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        p.apply_env(&|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))?;
        p.validate()?;
        Ok(p)
    }

    #[test]
    fn required_on_cloud_run_unless_disabled() {
        assert!(!resolved(&[]).unwrap().verifies(), "off locally");
        let e = resolved(&[("K_SERVICE", "datashare-worker")]).unwrap_err();
        assert!(e.to_string().contains("push.audience"), "{e}");
        let on = resolved(&[
            ("K_SERVICE", "datashare-worker"),
            ("DATASHARE_PUSH_AUDIENCE", "datashare-worker"),
            (
                "DATASHARE_PUSH_SERVICE_ACCOUNT",
                "invoker@p.iam.gserviceaccount.com",
            ),
        ])
        .unwrap();
        assert!(on.verifies());
        assert_eq!(on.issuer, GOOGLE_ISSUER);
        let off = resolved(&[("K_SERVICE", "x"), ("DATASHARE_PUSH_VERIFY", "false")]).unwrap();
        assert!(!off.verifies());
        assert!(resolved(&[("DATASHARE_PUSH_VERIFY", "maybe")]).is_err());
        let plain = resolved(&[
            ("DATASHARE_PUSH_VERIFY", "true"),
            ("DATASHARE_PUSH_AUDIENCE", "a"),
            ("DATASHARE_PUSH_SERVICE_ACCOUNT", "i@x"),
            ("DATASHARE_PUSH_JWKS_URL", "http://certs.example/keys"),
        ]);
        assert!(plain.is_err(), "plain http off loopback is refused");
    }
}
