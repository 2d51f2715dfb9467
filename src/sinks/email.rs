//! The partner e-mail sink: one pt-BR e-mail per product version to the contract's contacts.
//!
//! Sent once every data sink succeeded (the caller passes their receipts in
//! [`Delivery::upstream`]): what was updated, the period, row counts, where to fetch the files,
//! checksums and the manifest's highlights, as plain text and HTML. The `Message-ID`
//! `<delivery id@datashare>` makes a rare second send recognisable. The data dictionary is
//! attached when the caller sets [`Delivery::new_dictionary`] (first delivery, schema change).

use std::fmt::Write as _;

use lettre::Message;
use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart};
use serde::Deserialize;

use super::smtp::{Relay, RelayError};
use super::{Delivery, Sink, SinkError, receipt};
use crate::config::sinks::{EmailConfig, SmtpSettings};
use crate::events::ProductKind;
use crate::events::{Receipt, ReceiptFile};
use crate::products::contract::Contract;
use crate::products::highlights::number;
use tracing::Instrument;

const SINK: &str = "email";

/// Sends the partner e-mail.
pub struct EmailSink {
    relay: Relay,
    from: Mailbox,
    to: Vec<Mailbox>,
    reply_to: Option<Mailbox>,
    display_name: String,
}

impl std::fmt::Debug for EmailSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailSink")
            .field("from", &self.from.to_string())
            .field("to", &self.to.len())
            .finish_non_exhaustive()
    }
}

fn config(message: String) -> SinkError {
    SinkError::Config {
        sink: SINK,
        message,
    }
}

fn mailbox(what: &str, s: &str) -> Result<Mailbox, SinkError> {
    s.parse()
        .map_err(|e| config(format!("{what}: not an address ({e})")))
}

impl EmailSink {
    /// Builds the sink for a contract: its contacts, reply-to, and the relay's settings.
    pub fn new(
        contract: &Contract,
        c: &EmailConfig,
        smtp: &SmtpSettings,
    ) -> Result<EmailSink, SinkError> {
        let relay = Relay::new(smtp).map_err(config)?;
        let to = contract
            .contacts
            .iter()
            .map(|ct| {
                mailbox("contacts", &ct.email).map(|m| Mailbox::new(Some(ct.name.clone()), m.email))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if to.is_empty() {
            return Err(config("the contract has no contacts".into()));
        }
        Ok(EmailSink {
            relay,
            from: mailbox("smtp.from", &smtp.from)?,
            to,
            reply_to: c
                .reply_to
                .as_deref()
                .map(|r| mailbox("reply_to", r))
                .transpose()?,
            display_name: contract.display_name.clone(),
        })
    }

    /// Composes the e-mail of a delivery (reads its manifests and the dictionary).
    pub fn compose(&self, d: &Delivery) -> Result<Message, SinkError> {
        let manifests = d
            .files
            .iter()
            .map(|f| {
                let bytes = std::fs::read(&f.manifest.path).map_err(|e| SinkError::Transient {
                    sink: SINK,
                    message: format!("read {}: {e}", f.manifest.path.display()),
                })?;
                serde_json::from_slice::<ManifestView>(&bytes).map_err(|e| SinkError::Invalid {
                    sink: SINK,
                    message: format!("manifest {}: {e}", f.manifest.name),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let text = Text::new(&self.display_name, d, &manifests);
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(text.subject())
            .message_id(Some(message_id(&d.delivery_id)))
            .date_now();
        for to in &self.to {
            b = b.to(to.clone());
        }
        if let Some(r) = &self.reply_to {
            b = b.reply_to(r.clone());
        }
        let body = MultiPart::alternative_plain_html(text.plain(), text.html());
        let built = match &d.new_dictionary {
            Some(dict) => {
                let bytes = std::fs::read(&dict.path).map_err(|e| SinkError::Transient {
                    sink: SINK,
                    message: format!("read {}: {e}", dict.path.display()),
                })?;
                let md = ContentType::parse("text/markdown; charset=utf-8")
                    .map_err(|e| config(format!("content type: {e}")))?;
                b.multipart(
                    MultiPart::mixed()
                        .multipart(body)
                        .singlepart(Attachment::new(dict.name.clone()).body(bytes, md)),
                )
            }
            None => b.multipart(body),
        };
        built.map_err(|e| SinkError::Invalid {
            sink: SINK,
            message: format!("cannot build the message: {e}"),
        })
    }
}

/// The `Message-ID` of a delivery's e-mail.
pub fn message_id(delivery_id: &str) -> String {
    format!("<{delivery_id}@datashare>")
}

fn classify(context: &str, e: RelayError) -> SinkError {
    let message = format!("{context}: {e}");
    let e = match e {
        RelayError::Smtp(e) => e,
        // An untrusted certificate does not heal by itself; a refused connection may.
        RelayError::Connect(_, io) if super::is_untrusted_certificate(&io) => {
            return config(message);
        }
        RelayError::Connect(..) | RelayError::Timeout(..) => {
            return SinkError::Transient {
                sink: SINK,
                message,
            };
        }
    };
    let code = e.status().map(|c| c.to_string());
    if e.is_permanent() {
        // 530/534/535: authentication required or refused.
        if code.as_deref().is_some_and(|c| c.starts_with("53")) {
            return SinkError::Auth {
                sink: SINK,
                message,
            };
        }
        return SinkError::Rejected {
            sink: SINK,
            message,
        };
    }
    if e.is_tls() || e.is_client() || super::is_untrusted_certificate(&e) {
        // An untrusted certificate or a client-side misconfiguration does not heal by itself.
        return config(message);
    }
    SinkError::Transient {
        sink: SINK,
        message,
    }
}

impl Sink for EmailSink {
    fn name(&self) -> &'static str {
        SINK
    }

    async fn deliver(&self, d: &Delivery) -> Result<Receipt, SinkError> {
        let message = self.compose(d)?;
        self.relay
            .send(&message)
            .instrument(tracing::info_span!("send_email", otel.kind = "client"))
            .await
            .map_err(|e| classify("send", e))?;
        let rcpt = self
            .to
            .iter()
            .map(|m| m.email.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let files = d
            .files
            .iter()
            .map(|f| ReceiptFile {
                name: f.data.name.clone(),
                location: format!("mailto:{rcpt}"),
                bytes: f.data.bytes,
                sha256: f.data.sha256.clone(),
            })
            .collect();
        let mut r = receipt(SINK, d, files, false);
        r.reference = Some(message_id(&d.delivery_id));
        Ok(r)
    }

    fn sends_data(&self) -> bool {
        false
    }

    async fn check(&self) -> Result<(), SinkError> {
        // Connects, greets, upgrades to TLS, authenticates, NOOP, QUIT.
        match self.relay.check().await {
            Ok(true) => Ok(()),
            Ok(false) => Err(SinkError::Transient {
                sink: SINK,
                message: "the relay did not answer NOOP".into(),
            }),
            Err(e) => Err(classify("check", e)),
        }
    }
}

/// What the e-mail reads from a manifest.
#[derive(Debug, Deserialize)]
struct ManifestView {
    file: String,
    format: String,
    rows: u64,
    bytes: u64,
    sha256: String,
    #[serde(default)]
    highlights: Vec<String>,
}

/// The words of the e-mail, in pt-BR.
struct Text<'a> {
    partner: &'a str,
    d: &'a Delivery,
    manifests: &'a [ManifestView],
}

/// `2026-11-27` → `27/11/2026`; `2026-11` → `11/2026`.
fn period_pt(product: ProductKind, period: &str) -> String {
    match product {
        ProductKind::Daily => chrono::NaiveDate::parse_from_str(period, "%Y-%m-%d")
            .map(|d| d.format("%d/%m/%Y").to_string())
            .unwrap_or_else(|_| period.to_string()),
        ProductKind::Monthly | ProductKind::MonthlyBrands => match period.split_once('-') {
            Some((y, m)) => format!("{m}/{y}"),
            None => period.to_string(),
        },
    }
}

fn product_pt(product: ProductKind) -> &'static str {
    match product {
        ProductKind::Daily => "diário",
        ProductKind::Monthly => "agregado mensal",
        ProductKind::MonthlyBrands => "visão mensal por marca",
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

impl<'a> Text<'a> {
    fn new(partner: &'a str, d: &'a Delivery, manifests: &'a [ManifestView]) -> Self {
        Text {
            partner,
            d,
            manifests,
        }
    }

    fn period(&self) -> String {
        period_pt(self.d.product, &self.d.period)
    }

    fn subject(&self) -> String {
        format!(
            "{}: {} de {} disponível",
            self.partner,
            product_pt(self.d.product),
            self.period()
        )
    }

    fn intro(&self) -> String {
        format!(
            "O produto {} ({}) do período {} foi atualizado e está disponível.",
            product_pt(self.d.product),
            self.d.product,
            self.period()
        )
    }

    /// Where to fetch the files: one line per data file location, from the data sinks' receipts.
    fn locations(&self) -> Vec<String> {
        let mut out = Vec::new();
        for r in &self.d.upstream {
            let label = match r.sink.as_str() {
                "sftp" => "SFTP",
                "api" => "API",
                other => other,
            };
            for f in r
                .files
                .iter()
                .filter(|f| !f.name.ends_with(".manifest.json"))
                .filter(|f| self.d.dictionary.as_ref().is_none_or(|x| x.name != f.name))
            {
                let line = if r.sink == "api" {
                    format!("{label}: dataset {} em {}", self.d.product, f.location)
                } else {
                    format!("{label}: {}", f.location)
                };
                if !out.contains(&line) {
                    out.push(line);
                }
            }
        }
        out
    }

    fn highlights(&self) -> &[String] {
        self.manifests
            .first()
            .map(|m| m.highlights.as_slice())
            .unwrap_or(&[])
    }

    fn plain(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "Olá, equipe {},\n", self.partner);
        let _ = writeln!(s, "{}\n", self.intro());
        let _ = writeln!(s, "Período: {}", self.period());
        let _ = writeln!(s, "\nArquivos:");
        for m in self.manifests {
            let _ = writeln!(
                s,
                "- {} ({}): {} linhas, {} bytes\n  SHA-256: {}",
                m.file,
                m.format,
                number(m.rows as f64, 0),
                number(m.bytes as f64, 0),
                m.sha256
            );
        }
        let locations = self.locations();
        if !locations.is_empty() {
            let _ = writeln!(s, "\nOnde buscar:");
            for l in &locations {
                let _ = writeln!(s, "- {l}");
            }
        }
        if !self.highlights().is_empty() {
            let _ = writeln!(s, "\nDestaques:");
            for h in self.highlights() {
                let _ = writeln!(s, "- {h}");
            }
        }
        if self.d.new_dictionary.is_some() {
            let _ = writeln!(s, "\nO dicionário de dados segue em anexo.");
        }
        let _ = writeln!(
            s,
            "\nCada arquivo tem ao lado um manifesto (.manifest.json) com o checksum e a versão.\n\
             Identificador da entrega: {}\n\nMensagem automática do datashare.",
            self.d.delivery_id
        );
        s
    }

    fn html(&self) -> String {
        let mut s = String::from(
            "<!DOCTYPE html>\n<html lang=\"pt-BR\"><head><meta charset=\"utf-8\"></head><body>\n",
        );
        let _ = writeln!(s, "<p>Olá, equipe {},</p>", escape(self.partner));
        let _ = writeln!(s, "<p>{}</p>", escape(&self.intro()));
        let _ = writeln!(
            s,
            "<table border=\"1\" cellpadding=\"4\" cellspacing=\"0\">\n<tr><th>Arquivo</th><th>Formato</th><th>Linhas</th><th>Bytes</th><th>SHA-256</th></tr>"
        );
        for m in self.manifests {
            let _ = writeln!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                escape(&m.file),
                escape(&m.format),
                number(m.rows as f64, 0),
                number(m.bytes as f64, 0),
                escape(&m.sha256)
            );
        }
        s.push_str("</table>\n");
        let list = |s: &mut String, title: &str, items: &[String]| {
            if items.is_empty() {
                return;
            }
            let _ = writeln!(s, "<p><b>{}</b></p>\n<ul>", escape(title));
            for i in items {
                let _ = writeln!(s, "<li>{}</li>", escape(i));
            }
            s.push_str("</ul>\n");
        };
        list(&mut s, "Onde buscar", &self.locations());
        list(&mut s, "Destaques", self.highlights());
        if self.d.new_dictionary.is_some() {
            s.push_str("<p>O dicionário de dados segue em anexo.</p>\n");
        }
        let _ = writeln!(
            s,
            "<p>Cada arquivo tem ao lado um manifesto (.manifest.json) com o checksum e a versão.<br>\
             Identificador da entrega: <code>{}</code></p>\n<p>Mensagem automática do datashare.</p>\n</body></html>",
            escape(&self.d.delivery_id)
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_and_escaping() {
        assert_eq!(period_pt(ProductKind::Daily, "2026-11-27"), "27/11/2026");
        assert_eq!(period_pt(ProductKind::Monthly, "2026-11"), "11/2026");
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(message_id("ab"), "<ab@datashare>");
    }
}
