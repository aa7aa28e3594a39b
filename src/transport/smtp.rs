//! The `smtp` transport: relay to a smarthost (SES's SMTP interface, a corporate relay) with
//! `mail-send`. A 4xx reply is retried, a 5xx fails the submission; a relay that cannot be
//! reached or refuses our credentials parks the queue (circuit breaker) instead of spending
//! attempts.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use mail_send::smtp::message::{Address, Message};
use mail_send::{SmtpClient, SmtpClientBuilder};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;

use super::{Delivery, OutboundMessage, SendFuture, Transport};
use crate::config::{SmarthostConfig, SmarthostTls};

pub struct SmtpTransport {
    config: SmarthostConfig,
    password: Option<String>,
    connector: Option<TlsConnector>,
}

impl SmtpTransport {
    pub fn new(config: SmarthostConfig) -> Result<SmtpTransport> {
        let password = match (&config.password_file, &config.password_env) {
            (Some(file), _) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
            ),
            (None, Some(var)) => {
                Some(std::env::var(var).with_context(|| format!("environment variable {var}"))?)
            }
            (None, None) => None,
        };
        let connector = match &config.ca_file {
            Some(ca) => Some(connector_trusting(ca)?),
            None => None,
        };
        if config.tls == SmarthostTls::None && !is_loopback(&config.host) {
            tracing::warn!(host = %config.host, "relaying without TLS to a non-loopback smarthost");
        }
        Ok(SmtpTransport {
            config,
            password,
            connector,
        })
    }

    fn builder(&self) -> Result<SmtpClientBuilder<String>, String> {
        let c = &self.config;
        let mut builder = match &self.connector {
            Some(connector) => {
                SmtpClientBuilder::new_with_tls_connector(c.host.clone(), c.port, connector.clone())
            }
            None => SmtpClientBuilder::new(c.host.clone(), c.port)?,
        }
        .implicit_tls(c.tls == SmarthostTls::Implicit)
        .timeout(Duration::from_secs(c.timeout_secs));
        if let Some(helo) = &c.helo_name {
            builder = builder.helo_host(helo.clone());
        }
        if let (Some(user), Some(password)) = (&c.username, &self.password) {
            builder = builder.credentials((user.clone(), password.clone()));
        }
        Ok(builder)
    }

    async fn relay(&self, message: &OutboundMessage) -> Delivery {
        let builder = match self.builder() {
            Ok(b) => b,
            Err(e) => {
                return Delivery::Unavailable {
                    reason: format!("smarthost TLS setup: {e}"),
                }
            }
        };
        let envelope = Message {
            mail_from: Address {
                email: Cow::Borrowed(&message.mail_from),
                ..Default::default()
            },
            rcpt_to: message
                .recipients
                .iter()
                .map(|r| Address {
                    email: Cow::Borrowed(r.as_str()),
                    ..Default::default()
                })
                .collect(),
            body: Cow::Borrowed(&message.mime),
        };
        let sent = match self.config.tls {
            SmarthostTls::None => match builder.connect_plain().await {
                Ok(client) => send_and_quit(client, envelope).await,
                Err(e) => Err(e),
            },
            _ => match builder.connect().await {
                Ok(client) => send_and_quit(client, envelope).await,
                Err(e) => Err(e),
            },
        };
        match sent {
            Ok(reply) => Delivery::Sent {
                provider_id: format!(
                    "{}:{} {}",
                    self.config.host,
                    self.config.port,
                    reply.message().trim()
                ),
            },
            Err(e) => classify(&e),
        }
    }
}

impl Transport for SmtpTransport {
    fn name(&self) -> &'static str {
        "smtp"
    }

    fn send(&self, message: Arc<OutboundMessage>) -> SendFuture<'_> {
        Box::pin(async move { self.relay(&message).await })
    }
}

async fn send_and_quit<T: AsyncRead + AsyncWrite + Unpin>(
    mut client: SmtpClient<T>,
    envelope: Message<'_>,
) -> Result<smtp_proto::Response<String>, mail_send::Error> {
    let reply = client.send(envelope).await?;
    let _ = client.quit().await;
    Ok(reply)
}

/// The one table of smarthost outcomes.
pub fn classify(error: &mail_send::Error) -> Delivery {
    use mail_send::Error as E;
    let reason = format!("smarthost: {error}");
    match error {
        E::UnexpectedReply(reply) if reply.code() >= 500 => Delivery::Reject { reason },
        E::UnexpectedReply(_) | E::Timeout | E::UnparseableReply => Delivery::Retry {
            reason,
            after: None,
        },
        // Cannot connect, TLS refused, credentials refused: nothing will go until fixed.
        _ => Delivery::Unavailable { reason },
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn connector_trusting(ca: &std::path::Path) -> Result<TlsConnector> {
    let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16) -> mail_send::Error {
        mail_send::Error::UnexpectedReply(smtp_proto::Response::new(
            code,
            0,
            0,
            0,
            "text".to_string(),
        ))
    }

    #[test]
    fn classification_table() {
        let kind = |d: Delivery| match d {
            Delivery::Sent { .. } => "sent",
            Delivery::Retry { .. } => "retry",
            Delivery::Reject { .. } => "reject",
            Delivery::Unavailable { .. } => "pause",
        };
        let io =
            || mail_send::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let table = [
            (reply(421), "retry"),
            (reply(450), "retry"),
            (reply(452), "retry"),
            (reply(550), "reject"),
            (reply(554), "reject"),
            (mail_send::Error::Timeout, "retry"),
            (io(), "pause"),
            (
                mail_send::Error::AuthenticationFailed(smtp_proto::Response::new(
                    535,
                    5,
                    7,
                    8,
                    "no".to_string(),
                )),
                "pause",
            ),
            (mail_send::Error::MissingStartTls, "pause"),
        ];
        for (error, want) in table {
            let text = error.to_string();
            assert_eq!(kind(classify(&error)), want, "{text}");
        }
    }
}
