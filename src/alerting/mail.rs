//! The alert e-mails to the data team: what failed, where, since when, how often, what to do.
//! Plain text in English; never a secret or a personal value (alerts carry neither).

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::runbook::runbook;
use super::state::{Sending, State};
use crate::config::sinks::SmtpSettings;
use tracing::Instrument;

/// The mailer could not be built, or a send failed.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// Settings that can never work (bad address, unreadable CA or password).
    #[error("alert mail settings: {0}")]
    Config(String),
    /// The relay failed or refused; always retried (the team must hear of it eventually).
    #[error("alert mail not sent: {0}")]
    Send(String),
}

/// Sends alert e-mails through the SMTP relay.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("from", &self.from.to_string())
            .field("to", &self.to.len())
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// Builds the transport (TLS always: STARTTLS required or implicit) and reads the password.
    pub fn new(
        smtp: &SmtpSettings,
        from: &str,
        recipients: &[String],
    ) -> Result<Mailer, MailError> {
        let cfg = |m: String| MailError::Config(m);
        let transport = crate::sinks::email::smtp_transport(smtp).map_err(cfg)?;
        let from: Mailbox = (if from.is_empty() { &smtp.from } else { from })
            .parse()
            .map_err(|e| cfg(format!("from: {e}")))?;
        let to = recipients
            .iter()
            .map(|r| r.parse().map_err(|e| cfg(format!("recipient: {e}"))))
            .collect::<Result<Vec<Mailbox>, _>>()?;
        Ok(Mailer {
            transport,
            from,
            to,
        })
    }

    /// Sends one e-mail to every recipient.
    pub async fn send(&self, mail: &Mail) -> Result<(), MailError> {
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(mail.subject.clone())
            .message_id(Some(mail.message_id.clone()))
            .date_now();
        for to in &self.to {
            b = b.to(to.clone());
        }
        let m = b
            .header(ContentType::TEXT_PLAIN)
            .body(mail.body.clone())
            .map_err(|e| MailError::Config(format!("cannot build the message: {e}")))?;
        self.transport
            .send(m)
            .instrument(tracing::info_span!("send_email", otel.kind = "client"))
            .await
            .map(|_| ())
            .map_err(|e| MailError::Send(e.to_string()))
    }
}

/// A composed alert e-mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
    /// `Message-ID`, derived from the fingerprint and the time it was decided.
    pub message_id: String,
}

fn hm(t: DateTime<Utc>) -> String {
    t.format("%H:%M UTC").to_string()
}

fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn body(s: &State, how_often: String) -> String {
    let a = &s.alert;
    let mut b = String::new();
    let _ = writeln!(b, "What failed: {}", a.summary);
    let _ = writeln!(b, "Kind: {} ({:?})", a.kind, a.severity);
    let mut place = Vec::new();
    for (k, v) in [
        ("partner", &a.partner),
        ("product", &a.product),
        ("period", &a.period),
    ] {
        if !v.is_empty() && v != "*" {
            place.push(format!("{k} {v}"));
        }
    }
    let _ = writeln!(
        b,
        "Where: {}",
        if place.is_empty() {
            "-".to_string()
        } else {
            place.join(", ")
        }
    );
    for (k, v) in &a.details {
        let v = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let _ = writeln!(b, "  {k}: {v}");
    }
    let _ = writeln!(b, "Since: {} (first seen)", ts(s.first_seen));
    let _ = writeln!(b, "How often: {how_often}");
    let _ = writeln!(b, "What to do: {}", runbook(&a.kind));
    let _ = writeln!(b, "\nFingerprint: {}", s.fingerprint);
    b.push_str("Sent by datashare alert.\n");
    b
}

/// The e-mail of a first alert (or the first after the grouping window).
pub fn first_mail(s: &State, sending: &Sending) -> Mail {
    let a = &s.alert;
    let how_often = format!(
        "{} time{} in all; repeats in the next hour come as one digest",
        s.total,
        if s.total == 1 { "" } else { "s" }
    );
    Mail {
        subject: format!("[datashare] {}: {}", a.kind, a.summary),
        body: body(s, how_often),
        message_id: format!(
            "<{}.{}@datashare-alert>",
            s.fingerprint,
            sending.at.timestamp_millis()
        ),
    }
}

/// The digest of repeats: "49 more since 14:02 UTC".
pub fn digest_mail(s: &State, d: &Sending) -> Mail {
    let since = d.since.map(hm).unwrap_or_else(|| "the last e-mail".into());
    let more = format!("{} more since {since}", d.count);
    let how_often = format!("{more} ({} in all)", s.total);
    Mail {
        subject: format!("[datashare] {}: {more}: {}", s.alert.kind, s.alert.summary),
        body: body(s, how_often),
        message_id: format!(
            "<{}.d{}@datashare-alert>",
            s.fingerprint,
            d.at.timestamp_millis()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Alert, Severity};

    #[test]
    fn mails_say_what_where_since_how_often_and_what_to_do() {
        let t0 = "2026-11-28T14:02:10Z".parse::<DateTime<Utc>>().unwrap();
        let a = Alert::new(
            Severity::Critical,
            "batch.held",
            ("ouch", "daily", "2026-11-27"),
            "x",
            "products held".into(),
        )
        .with("failed_files", 1);
        let mut s = State::new(&a, t0);
        s.record(&a, "m0", t0, 3600);
        let first = first_mail(&s, s.first.as_ref().unwrap());
        assert!(first.subject.contains("batch.held"));
        for needle in [
            "What failed: products held",
            "partner ouch",
            "period 2026-11-27",
            "failed_files: 1",
            "2026-11-28 14:02:10 UTC",
            "1 time",
            "datashare release",
        ] {
            assert!(first.body.contains(needle), "{needle}: {}", first.body);
        }
        s.first_sent("m0");
        for i in 1..50 {
            s.record(&a, &format!("m{i}"), t0, 3600);
        }
        let d = s.take_digest("tick", t0).unwrap();
        let digest = digest_mail(&s, &d);
        assert!(
            digest.subject.contains("49 more since 14:02 UTC"),
            "{}",
            digest.subject
        );
        assert_ne!(digest.message_id, first.message_id);
    }
}
