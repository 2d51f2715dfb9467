//! The SMTP relay client of the partner e-mail and the team's alerts: one connection per
//! message, TLS always (STARTTLS required, or implicit), each step under the configured timeout.
//!
//! lettre speaks SMTP; the connection is opened here, with TCP_NODELAY, and handed to it. Its
//! own transport opens the socket with Nagle's algorithm on: the message's final `.` line is a
//! small write behind the unacknowledged body, so every e-mail waited out the relay's delayed
//! acknowledgement (40-45 ms a message on Linux, measured against the local stack's relay).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use lettre::Message;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, AsyncTokioStream, Certificate, CertificateStore, TlsParameters,
};
use lettre::transport::smtp::extension::ClientId;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::sinks::{SmtpSettings, SmtpTls};

/// Why a message did not reach the relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The TCP connection or the implicit TLS handshake failed (an untrusted certificate is in
    /// the error's chain).
    #[error("connect to {0}: {1}")]
    Connect(String, #[source] io::Error),
    /// A step took longer than the configured timeout.
    #[error("{0} took longer than {1} s")]
    Timeout(&'static str, u64),
    /// The SMTP exchange failed or the relay refused (lettre's error: status and kind).
    #[error(transparent)]
    Smtp(#[from] lettre::transport::smtp::Error),
}

/// An SMTP relay as configured: where it is, how to secure and authenticate the session.
pub struct Relay {
    host: String,
    port: u16,
    tls: RelayTls,
    credentials: Option<Credentials>,
    timeout: Duration,
    hello: ClientId,
}

/// How the session is secured.
enum RelayTls {
    /// Plain connection, then STARTTLS (required) with lettre's TLS settings.
    Starttls(TlsParameters),
    /// TLS from the first byte (port 465).
    Implicit {
        connector: tokio_rustls::TlsConnector,
        name: ServerName<'static>,
    },
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("authenticated", &self.credentials.is_some())
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Reads the relay's settings: its CA bundle when given (else the system's trust), the
    /// password from its secret. Errors are one line, never the secret.
    pub fn new(smtp: &SmtpSettings) -> Result<Relay, String> {
        let ca = match &smtp.ca_file {
            Some(path) => {
                Some(std::fs::read(path).map_err(|e| format!("ca_file {}: {e}", path.display()))?)
            }
            None => None,
        };
        let ca_name = || {
            smtp.ca_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        let tls = match smtp.tls {
            SmtpTls::Starttls => {
                let mut b = TlsParameters::builder(smtp.host.clone());
                if let Some(pem) = &ca {
                    let cert = Certificate::from_pem(pem)
                        .map_err(|e| format!("ca_file {}: {e}", ca_name()))?;
                    b = b
                        .certificate_store(CertificateStore::None)
                        .add_root_certificate(cert);
                }
                RelayTls::Starttls(b.build().map_err(|e| format!("tls settings: {e}"))?)
            }
            SmtpTls::Implicit => {
                let config = rustls_config(ca.as_deref())
                    .map_err(|e| format!("tls settings ({}): {e}", ca_name()))?;
                let name = ServerName::try_from(smtp.host.clone())
                    .map_err(|e| format!("smtp host {:?}: {e}", smtp.host))?;
                RelayTls::Implicit {
                    connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
                    name,
                }
            }
        };
        let credentials = match (&smtp.user, &smtp.password) {
            (Some(user), Some(password)) => {
                let secret = password
                    .read("smtp", "password")
                    .map_err(|e| e.to_string())?;
                let password = String::from_utf8(secret.expose().to_vec())
                    .map_err(|_| "smtp password is not UTF-8".to_string())?;
                Some(Credentials::new(user.clone(), password))
            }
            (None, None) => None,
            _ => return Err("smtp: set user and password together".into()),
        };
        super::warm_up_tls();
        Ok(Relay {
            host: smtp.host.clone(),
            port: smtp.port,
            tls,
            credentials,
            timeout: Duration::from_secs(smtp.timeout_secs.max(1)),
            hello: ClientId::default(),
        })
    }

    /// Sends one message (envelope from its headers) and closes the session.
    pub async fn send(&self, message: &Message) -> Result<(), RelayError> {
        let mut conn = self.connect().await?;
        let body = message.formatted();
        self.step("message", conn.send(message.envelope(), &body))
            .await??;
        conn.abort().await;
        Ok(())
    }

    /// Connects, secures and authenticates a session, then NOOP and QUIT: whether the relay
    /// answered.
    pub async fn check(&self) -> Result<bool, RelayError> {
        let mut conn = self.connect().await?;
        let alive = self.step("noop", conn.test_connected()).await?;
        conn.abort().await;
        Ok(alive)
    }

    /// Opens a session ready for MAIL FROM: TCP (no Nagle), TLS, greeting, EHLO, AUTH.
    async fn connect(&self) -> Result<AsyncSmtpConnection, RelayError> {
        let addr = format!("{}:{}", self.host, self.port);
        let tcp = self
            .step(
                "connect",
                TcpStream::connect((self.host.as_str(), self.port)),
            )
            .await?
            .and_then(|s| s.set_nodelay(true).map(|()| s))
            .map_err(|e| RelayError::Connect(addr.clone(), e))?;
        let stream: Box<dyn AsyncTokioStream> = match &self.tls {
            RelayTls::Starttls(_) => Box::new(tcp),
            RelayTls::Implicit { connector, name } => {
                let tls = self
                    .step("tls handshake", connector.connect(name.clone(), tcp))
                    .await?
                    .map_err(|e| RelayError::Connect(addr.clone(), e))?;
                Box::new(Tls(tls))
            }
        };
        let hello = AsyncSmtpConnection::connect_with_transport(stream, &self.hello);
        let mut conn = self.step("greeting", hello).await??;
        if let RelayTls::Starttls(params) = &self.tls {
            self.step("starttls", conn.starttls(params.clone(), &self.hello))
                .await??;
        }
        if let Some(c) = &self.credentials {
            let mechanisms = [Mechanism::Plain, Mechanism::Login];
            self.step("auth", conn.auth(&mechanisms, c)).await??;
        }
        Ok(conn)
    }

    /// Runs one step of the session under the timeout.
    async fn step<T>(
        &self,
        what: &'static str,
        f: impl Future<Output = T>,
    ) -> Result<T, RelayError> {
        tokio::time::timeout(self.timeout, f)
            .await
            .map_err(|_| RelayError::Timeout(what, self.timeout.as_secs()))
    }
}

/// The implicit-TLS client settings: the CA bundle's certificates as the only roots, or the
/// system's trust (the platform verifier), on the aws-lc-rs provider.
fn rustls_config(ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = match ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                roots
                    .add(cert.map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
            }
            if roots.is_empty() {
                return Err("no certificate in the CA bundle".into());
            }
            builder.with_root_certificates(roots)
        }
        None => {
            let verifier = rustls_platform_verifier::Verifier::new(provider)
                .map_err(|e| format!("system trust: {e}"))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
        }
    };
    Ok(config.with_no_client_auth())
}

/// A TLS stream (implicit TLS) as lettre takes it.
#[derive(Debug)]
struct Tls(tokio_rustls::client::TlsStream<TcpStream>);

impl AsyncTokioStream for Tls {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

impl AsyncRead for Tls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lettre::message::header::ContentType;

    fn settings(port: u16, tls: SmtpTls) -> SmtpSettings {
        SmtpSettings {
            host: "127.0.0.1".into(),
            port,
            tls,
            from: "datashare <dados@datashare.example>".into(),
            user: None,
            password: None,
            ca_file: None,
            timeout_secs: 1,
        }
    }

    fn message() -> Message {
        Message::builder()
            .from("dados@datashare.example".parse().unwrap())
            .to("equipe@datashare.example".parse().unwrap())
            .subject("teste")
            .header(ContentType::TEXT_PLAIN)
            .body("corpo".to_string())
            .unwrap()
    }

    #[tokio::test]
    async fn a_relay_that_accepts_and_never_greets_times_out_at_its_step() {
        // Accepts connections and holds them without a word (a hung relay).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                open.push(s);
            }
        });
        for (tls, step) in [
            (SmtpTls::Starttls, "greeting"),
            (SmtpTls::Implicit, "tls handshake"),
        ] {
            let relay = Relay::new(&settings(port, tls)).unwrap();
            let sent = tokio::time::timeout(Duration::from_secs(5), relay.send(&message())).await;
            let e = sent
                .expect("the relay's own 1 s timeout ends the send")
                .unwrap_err();
            assert!(
                matches!(e, RelayError::Timeout(s, 1) if s == step),
                "{tls:?}: {e}"
            );
        }
        held.abort();
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let relay = Relay::new(&settings(port, SmtpTls::Starttls)).unwrap();
        let e = relay.check().await.unwrap_err();
        assert!(matches!(e, RelayError::Connect(..)), "{e}");
    }
}
