//! Pseudonymous keys: keyed hashes that let a partner count customers and lines, never identify them.
//!
//! Exact input bytes (products.md, "Privacy"), with `<period>` = `YYYY-MM` of the local sale month
//! or the literal `contract`:
//! - `customer_key` = first 16 lower-case hex characters of
//!   HMAC-SHA-256(key = partner secret bytes, message = UTF-8 of `c:<period>:<customer_id>`);
//! - `line_key` = the same over `l:<transaction_id>` (no period: a line belongs to one month).
//!
//! The secret bytes are the UTF-8 bytes of the secret's value, trimmed of surrounding whitespace.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::contract::KeyPeriod;
use crate::config::secret::Secret;

/// The key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PseudonymError {
    /// HMAC refused the key (never happens for HMAC-SHA-256, which takes any length).
    #[error("hmac key rejected")]
    Key,
}

/// Derives the pseudonymous keys of one partner.
#[derive(Clone)]
pub struct Pseudonymizer {
    mac: Hmac<Sha256>,
    period: KeyPeriod,
}

impl std::fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pseudonymizer")
            .field("key", &"***")
            .field("period", &self.period)
            .finish()
    }
}

impl Pseudonymizer {
    /// Creates a pseudonymizer from the partner's secret and key period.
    pub fn new(secret: &Secret, period: KeyPeriod) -> Result<Self, PseudonymError> {
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.expose())
            .map_err(|_| PseudonymError::Key)?;
        Ok(Self { mac, period })
    }

    /// The `<period>` of a sale month (`YYYY-MM`): the month itself, or `contract`.
    pub fn period<'a>(&self, month: &'a str) -> &'a str {
        match self.period {
            KeyPeriod::Month => month,
            KeyPeriod::Contract => "contract",
        }
    }

    /// `customer_key` of a customer in a sale month (`YYYY-MM`).
    pub fn customer_key(&self, month: &str, customer_id: &str) -> String {
        key_text(self.customer_bits(month, customer_id))
    }

    /// `line_key` of an order line.
    pub fn line_key(&self, transaction_id: &str) -> String {
        key_text(self.line_bits(transaction_id))
    }

    /// `customer_key` as its 64 bits (`key_text` writes it).
    pub fn customer_bits(&self, month: &str, customer_id: &str) -> u64 {
        self.key(&["c:", self.period(month), ":", customer_id])
    }

    /// `line_key` as its 64 bits (`key_text` writes it).
    pub fn line_bits(&self, transaction_id: &str) -> u64 {
        self.key(&["l:", transaction_id])
    }

    fn key(&self, parts: &[&str]) -> u64 {
        let mut m = self.mac.clone();
        for p in parts {
            m.update(p.as_bytes());
        }
        let digest = m.finalize().into_bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first)
    }
}

/// A key's text: its 64 bits as 16 lower-case hex digits (the first 8 bytes of the HMAC).
pub fn key_text(bits: u64) -> String {
    format!("{bits:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(key: &str, period: KeyPeriod) -> Pseudonymizer {
        Pseudonymizer::new(&Secret::new(key.as_bytes().to_vec()), period).unwrap()
    }

    /// Vectors computed independently with Python:
    /// `hmac.new(key, msg, hashlib.sha256).hexdigest()[:16]`.
    #[test]
    fn keys_match_independent_vectors() {
        let a = p(
            "test-key-0123456789abcdef0123456789abcdef",
            KeyPeriod::Month,
        );
        assert_eq!(a.customer_key("2026-11", "C-004512"), "aa571ed323c433bf");
        assert_eq!(a.line_key("TX-000123"), "a78bd841fc09b9d7");
        let c = p(
            "test-key-0123456789abcdef0123456789abcdef",
            KeyPeriod::Contract,
        );
        assert_eq!(c.customer_key("2026-11", "C-004512"), "62cc02347332ddea");
    }

    #[test]
    fn keys_are_keyed_and_periodic() {
        let a = p("partner-a-secret-0000000000000000000000", KeyPeriod::Month);
        let b = p("partner-b-secret-0000000000000000000000", KeyPeriod::Month);
        let k = a.customer_key("2026-11", "C-1");
        assert_eq!(k, a.customer_key("2026-11", "C-1"));
        assert_ne!(k, a.customer_key("2026-12", "C-1"));
        assert_ne!(k, b.customer_key("2026-11", "C-1"));
        assert_eq!(k.len(), 16);
        assert!(
            k.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        );
    }
}
