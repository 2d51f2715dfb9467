//! The `[alerting]` table: who is told, how alerts are grouped, and the SMTP relay.
//!
//! Environment overrides: `DATASHARE_ALERT_RECIPIENTS` (comma-separated) and
//! `DATASHARE_ALERT_WINDOW_SECS`. The relay is `[alerting.smtp]` when set, else the service's
//! one relay (`[smtp]` and its `DATASHARE_SMTP_*` variables, see [`crate::config`]).

use serde::Deserialize;

use super::ConfigError;
use super::sinks::SmtpSettings;

/// The `[alerting]` table.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AlertingSettings {
    /// The data team's addresses.
    pub recipients: Vec<String>,
    /// Repeats of a fingerprint within this long after its last e-mail are counted for the
    /// digest instead of e-mailed.
    pub window_secs: u64,
    /// Sender of the alert e-mails.
    pub from: String,
    /// A relay for alerts only; without it the service's `[smtp]` relay is used, and
    /// `datashare alert` refuses to start without either.
    #[serde(default)]
    pub smtp: Option<SmtpSettings>,
}

fn invalid(field: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_string(),
        problem: problem.into(),
    }
}

impl AlertingSettings {
    /// Applies the environment overrides.
    pub fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let get = |k: &str| {
            env(k)
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        if let Some(v) = get("DATASHARE_ALERT_RECIPIENTS") {
            self.recipients = v.split(',').map(|s| s.trim().to_string()).collect();
        }
        if let Some(v) = get("DATASHARE_ALERT_WINDOW_SECS") {
            self.window_secs = v
                .parse()
                .map_err(|_| invalid("DATASHARE_ALERT_WINDOW_SECS", "not a whole number"))?;
        }
        Ok(())
    }

    /// Checks addresses, window and relay.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.recipients.is_empty() {
            return Err(invalid("alerting.recipients", "at least one address"));
        }
        for r in &self.recipients {
            if r.parse::<lettre::Address>().is_err() {
                return Err(invalid(
                    "alerting.recipients",
                    format!("{r:?} is not an e-mail address"),
                ));
            }
        }
        if self.from.parse::<lettre::message::Mailbox>().is_err() {
            return Err(invalid("alerting.from", "not a mailbox"));
        }
        if !(60..=7 * 24 * 3600).contains(&self.window_secs) {
            return Err(invalid(
                "alerting.window_secs",
                "must be between 60 and 604800",
            ));
        }
        if let Some(s) = &self.smtp {
            if s.host.is_empty() {
                return Err(invalid("alerting.smtp.host", "empty"));
            }
            if s.port == 0 {
                return Err(invalid("alerting.smtp.port", "not a port number"));
            }
            if s.from.parse::<lettre::message::Mailbox>().is_err() {
                return Err(invalid("alerting.smtp.from", "not a mailbox"));
            }
            if s.user.is_some() != s.password.is_some() {
                return Err(invalid("alerting.smtp", "set user and password together"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn load(vars: &[(&str, &str)]) -> Result<Config, crate::config::ConfigError> {
        crate::config::load_with_vars(vars)
    }

    #[test]
    fn defaults_name_the_team_and_env_sets_the_relay() {
        let c = load(&[]).unwrap();
        assert_eq!(c.alerting.recipients.len(), 3);
        assert!(c.alerting.recipients[0].ends_with("@aiqfome.com"));
        assert_eq!(c.alerting.window_secs, 3600);
        assert!(c.alerting.smtp.is_none());
        let c = load(&[
            ("DATASHARE_SMTP_HOST", "smtp.example"),
            ("DATASHARE_SMTP_FROM", "d <d@datashare.example>"),
            ("DATASHARE_SMTP_PORT", "465"),
            ("DATASHARE_SMTP_TLS", "implicit"),
            ("DATASHARE_SMTP_USER", "u"),
            ("DATASHARE_SMTP_PASSWORD_FILE", "/run/secrets/smtp"),
        ])
        .unwrap();
        let s = c.smtp.unwrap();
        assert_eq!((s.host.as_str(), s.port), ("smtp.example", 465));
        assert_eq!(s.tls, crate::config::sinks::SmtpTls::Implicit);
        assert!(s.password.unwrap().file.is_some());
    }

    #[test]
    fn bad_values_name_the_field() {
        for (var, value, field) in [
            (
                "DATASHARE_ALERT_RECIPIENTS",
                "not-an-address",
                "alerting.recipients",
            ),
            ("DATASHARE_ALERT_WINDOW_SECS", "5", "alerting.window_secs"),
            (
                "DATASHARE_ALERT_WINDOW_SECS",
                "x",
                "DATASHARE_ALERT_WINDOW_SECS",
            ),
        ] {
            let e = load(&[(var, value)]).unwrap_err().to_string();
            assert!(e.contains(field), "{var}={value}: {e}");
        }
        let e = load(&[
            ("DATASHARE_SMTP_HOST", "h"),
            ("DATASHARE_SMTP_FROM", "a@b.example"),
            ("DATASHARE_SMTP_USER", "u"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("together"), "{e}");
    }
}
