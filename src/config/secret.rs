//! Secrets: values that print as `***`, and references to where they live (an environment
//! variable, a file such as a Secret Manager mount, or both), never the value itself.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

/// A secret could not be read; names the reference (variable or file), never the value.
#[derive(Debug, Clone, thiserror::Error)]
#[error("secret {what} of partner {owner}: {problem}")]
pub struct SecretError {
    /// Whose secret (a partner's name, or `smtp`).
    pub owner: String,
    /// Which secret (its field).
    pub what: String,
    /// What is wrong.
    pub problem: String,
}

/// A secret value: printed as `***`, read only where used.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps secret bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }

    /// Exposes the bytes to the one place that uses them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where a secret lives: an environment variable, a file (e.g. a Secret Manager mount on Cloud
/// Run), or both (the variable when it is set, else the file: one contract serves a laptop and
/// the cloud).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// Name of the environment variable holding the secret.
    pub env: Option<String>,
    /// Path of the file holding the secret.
    pub file: Option<PathBuf>,
}

impl SecretRef {
    /// Reads the secret; the value is trimmed of surrounding whitespace (files end with a newline).
    pub fn read(&self, owner: &str, what: &str) -> Result<Secret, SecretError> {
        let err = |problem: String| SecretError {
            owner: owner.to_string(),
            what: what.to_string(),
            problem,
        };
        let from_env = self.env.as_ref().and_then(|var| std::env::var(var).ok());
        let raw = match (from_env, &self.env, &self.file) {
            (Some(value), _, _) => value,
            (None, _, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
                err(match &self.env {
                    Some(var) => format!(
                        "environment variable {var} is not set (or not UTF-8) and file {} cannot be read: {e}",
                        path.display()
                    ),
                    None => format!("cannot read file {}: {e}", path.display()),
                })
            })?,
            (None, Some(var), None) => {
                return Err(err(format!(
                    "environment variable {var} is not set (or not UTF-8)"
                )));
            }
            (None, None, None) => return Err(err("set env, file or both".into())),
        };
        let value = raw.trim();
        if value.is_empty() {
            return Err(err(format!("{} is empty", self.describe())));
        }
        Ok(Secret(value.as_bytes().to_vec()))
    }

    /// Names the reference (variable or file), never the value.
    pub fn describe(&self) -> String {
        match (&self.env, &self.file) {
            (Some(v), Some(p)) => format!("environment variable {v} or file {}", p.display()),
            (Some(v), None) => format!("environment variable {v}"),
            (None, Some(p)) => format!("file {}", p.display()),
            _ => "an empty reference".into(),
        }
    }
}
