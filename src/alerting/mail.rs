//! The alert e-mails to the data team: what failed, where, since when, how often, what to do
//! and the command to run. Plain text in pt-BR (the team is Brazilian), times in
//! America/Sao_Paulo with UTC beside; never a secret or a personal value (alerts carry neither).

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};

use chrono_tz::America::Sao_Paulo;

use super::runbook::{commands, runbook};
use super::state::{Sending, State};
use crate::config::sinks::SmtpSettings;
use crate::events::Severity;
use crate::sinks::smtp::Relay;
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
    relay: Relay,
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
        let relay = Relay::new(smtp).map_err(cfg)?;
        let from: Mailbox = (if from.is_empty() { &smtp.from } else { from })
            .parse()
            .map_err(|e| cfg(format!("from: {e}")))?;
        let to = recipients
            .iter()
            .map(|r| r.parse().map_err(|e| cfg(format!("recipient: {e}"))))
            .collect::<Result<Vec<Mailbox>, _>>()?;
        Ok(Mailer { relay, from, to })
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
        self.relay
            .send(&m)
            .instrument(tracing::info_span!("send_email", otel.kind = "client"))
            .await
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

/// `HH:MM` in São Paulo with UTC beside: `11:02 (São Paulo) / 14:02 UTC`.
pub fn hm(t: DateTime<Utc>) -> String {
    format!(
        "{} (São Paulo) / {}",
        t.with_timezone(&Sao_Paulo).format("%H:%M"),
        t.format("%H:%M UTC")
    )
}

/// A full time in São Paulo with UTC beside:
/// `28/11/2026 11:02:10 (America/Sao_Paulo) / 2026-11-28 14:02:10 UTC`.
pub fn ts(t: DateTime<Utc>) -> String {
    format!(
        "{} (America/Sao_Paulo) / {}",
        t.with_timezone(&Sao_Paulo).format("%d/%m/%Y %H:%M:%S"),
        t.format("%Y-%m-%d %H:%M:%S UTC")
    )
}

/// The severity in pt-BR.
pub fn severity_pt(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "crítico",
        Severity::Error => "erro",
        Severity::Warning => "aviso",
    }
}

/// The grouping window in words: "na próxima hora", "nos próximos 10 min".
fn window_pt(window_secs: u64) -> String {
    match window_secs {
        3600 => "na próxima hora".into(),
        s if s % 3600 == 0 => format!("nas próximas {} horas", s / 3600),
        s => format!("nos próximos {} min", s.div_ceil(60)),
    }
}

fn times(n: u64) -> String {
    format!("{n} {}", if n == 1 { "vez" } else { "vezes" })
}

fn body(s: &State, how_often: String) -> String {
    let a = &s.alert;
    let mut b = String::new();
    let _ = writeln!(b, "O que falhou: {}", a.summary);
    let _ = writeln!(b, "Tipo: {} ({})", a.kind, severity_pt(a.severity));
    let mut place = Vec::new();
    for (k, v) in [
        ("parceiro", &a.partner),
        ("produto", &a.product),
        ("período", &a.period),
    ] {
        if !v.is_empty() && v != "*" {
            place.push(format!("{k} {v}"));
        }
    }
    let _ = writeln!(
        b,
        "Onde: {}",
        if place.is_empty() {
            "-".to_string()
        } else {
            place.join(", ")
        }
    );
    for (k, v) in &a.details {
        match v {
            serde_json::Value::String(s) => {
                let _ = writeln!(b, "  {k}: {s}");
            }
            serde_json::Value::Array(items) if items.iter().all(|i| i.is_string()) => {
                let _ = writeln!(b, "  {k}:");
                for i in items {
                    let _ = writeln!(b, "    - {}", i.as_str().unwrap_or_default());
                }
            }
            other => {
                let _ = writeln!(b, "  {k}: {other}");
            }
        }
    }
    let _ = writeln!(b, "Desde: {} (primeira ocorrência)", ts(s.first_seen));
    let _ = writeln!(b, "Frequência: {how_often}");
    let _ = writeln!(b, "O que fazer: {}", runbook(&a.kind));
    let cmds = commands(a);
    if !cmds.is_empty() {
        let _ = writeln!(b, "Comandos:");
        for c in cmds {
            let _ = writeln!(b, "  {c}");
        }
    }
    let _ = writeln!(b, "\nImpressão digital (fingerprint): {}", s.fingerprint);
    b.push_str("Enviado por datashare alert.\n");
    b
}

/// The e-mail of a first alert (or the first after the grouping window).
pub fn first_mail(s: &State, sending: &Sending, window_secs: u64) -> Mail {
    let a = &s.alert;
    let how_often = format!(
        "{} no total; repetições {} chegam num único resumo",
        times(s.total),
        window_pt(window_secs)
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

/// The e-mail of a budget threshold crossed for the first time in its cost interval.
pub fn budget_mail(s: &State, at: DateTime<Utc>) -> Mail {
    let how_often = "primeira vez neste período de custo; as cópias que o Google reenvia \
                     não geram novos e-mails"
        .to_string();
    Mail {
        subject: format!("[datashare] {}: {}", s.alert.kind, s.alert.summary),
        body: body(s, how_often),
        message_id: format!(
            "<{}.b{}@datashare-alert>",
            s.fingerprint,
            at.timestamp_millis()
        ),
    }
}

/// The digest of repeats: "49 a mais desde 11:02 (São Paulo) / 14:02 UTC".
pub fn digest_mail(s: &State, d: &Sending) -> Mail {
    let since = d.since.map(hm).unwrap_or_else(|| "o último e-mail".into());
    let more = format!("{} a mais desde {since}", d.count);
    let how_often = format!("{more} ({} no total)", times(s.total));
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

/// The e-mail that closes a condition that cleared (the day arrived, the batch went through).
pub fn resolved_mail(s: &State, r: &Sending) -> Mail {
    let mut how_often = format!("{} no total", times(s.total));
    if r.count > 0 {
        let since = r.since.map(hm).unwrap_or_else(|| "o último e-mail".into());
        how_often.push_str(&format!(
            "; {} a mais desde {since} antes de resolver",
            r.count
        ));
    }
    let mut b = format!(
        "RESOLVIDO em {}: a condição deixou de ocorrer.\n\n",
        ts(r.at)
    );
    b.push_str(&body(s, how_often));
    Mail {
        subject: format!(
            "[datashare] resolvido: {}: {}",
            s.alert.kind, s.alert.summary
        ),
        body: b,
        message_id: format!(
            "<{}.r{}@datashare-alert>",
            s.fingerprint,
            r.at.timestamp_millis()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Alert;

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
        let first = first_mail(&s, s.first.as_ref().unwrap(), 3600);
        assert!(first.subject.contains("batch.held"));
        for needle in [
            "O que falhou: products held",
            "parceiro ouch",
            "período 2026-11-27",
            "failed_files: 1",
            "28/11/2026 11:02:10 (America/Sao_Paulo) / 2026-11-28 14:02:10 UTC",
            "1 vez no total; repetições na próxima hora",
            "O que fazer: Os produtos do dia estão retidos",
            "  datashare status --date 2026-11-27 --partner ouch\n",
            "  datashare release --date 2026-11-27\n",
        ] {
            assert!(first.body.contains(needle), "{needle}: {}", first.body);
        }
        s.first_sent("m0");
        for i in 1..50 {
            s.record(&a, &format!("m{i}"), t0, 3600);
        }
        let d = s
            .take_digest("tick", t0 + chrono::Duration::hours(1), 3600)
            .unwrap();
        let digest = digest_mail(&s, &d);
        assert!(
            digest
                .subject
                .contains("49 a mais desde 11:02 (São Paulo) / 14:02 UTC"),
            "{}",
            digest.subject
        );
        assert_ne!(digest.message_id, first.message_id);
        let r = s
            .take_resolved("tick2", t0 + chrono::Duration::hours(2))
            .unwrap();
        let resolved = resolved_mail(&s, &r);
        assert!(
            resolved
                .subject
                .starts_with("[datashare] resolvido: batch.held")
        );
        assert!(
            resolved
                .body
                .starts_with("RESOLVIDO em 28/11/2026 13:02:10 (America/Sao_Paulo)"),
            "{}",
            resolved.body
        );
    }
}
