//! The `smtp` transport: relay to a smarthost (SES's SMTP interface, a corporate relay) with our
//! own small client ([`client`]): one TLS configuration for the process, connections kept open
//! and reused for many messages ([`pool`]), commands pipelined when the relay offers it. A 4xx
//! reply is retried, a 5xx fails the submission; a relay that cannot be reached, will not
//! greet us or refuses our credentials parks the queue (circuit breaker) instead of spending
//! attempts.

pub mod client;
pub mod pool;
pub mod reply;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::{Delivery, OutboundMessage, SendFuture, Transport};
use crate::config::{SmarthostConfig, SmarthostTls};
use client::{Connection, Relay, SmtpError};
use pool::Pool;

pub struct SmtpTransport {
    relay: Relay,
    pool: Arc<Pool>,
}

impl SmtpTransport {
    /// Reads the password and builds the TLS configuration once, for every connection.
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
        let connector = match (config.tls, &config.ca_file) {
            (SmarthostTls::None, _) => None,
            (_, Some(ca)) => Some(connector_trusting(ca)?),
            (_, None) => Some(platform_connector()?),
        };
        if config.tls == SmarthostTls::None && !is_loopback(&config.host) {
            tracing::warn!(host = %config.host, "relaying without TLS to a non-loopback smarthost");
        }
        let server_name = ServerName::try_from(config.host.clone())
            .map_err(|e| anyhow!("smarthost host {:?}: {e}", config.host))?;
        let relay = Relay {
            host: config.host.clone(),
            port: config.port,
            tls: config.tls,
            connector,
            server_name,
            helo: config
                .helo_name
                .clone()
                .unwrap_or_else(client::machine_hostname),
            credentials: config.username.clone().zip(password),
            timeout: Duration::from_secs(config.timeout_secs),
        };
        Ok(SmtpTransport {
            relay,
            pool: Pool::new(
                config.max_connections,
                Duration::from_secs(config.idle_timeout_secs),
            ),
        })
    }

    /// Connections idle in the pool now.
    pub fn idle_connections(&self) -> usize {
        self.pool.idle()
    }

    async fn relay(&self, message: &OutboundMessage) -> Delivery {
        let _slot = self.pool.slot().await;
        loop {
            let (mut conn, reused) = match self.pool.take() {
                Some(conn) => (conn, true),
                None => match Connection::open(&self.relay).await {
                    Ok(conn) => (conn, false),
                    Err(e) => return classify(&e),
                },
            };
            match conn
                .send(
                    &message.mail_from,
                    &message.recipients,
                    &message.mime,
                    reused,
                )
                .await
            {
                Ok(reply) => {
                    self.pool.put(conn);
                    return Delivery::Sent {
                        provider_id: format!(
                            "{}:{} {}",
                            self.relay.host,
                            self.relay.port,
                            reply.text().trim()
                        ),
                    };
                }
                // The relay closed an idle connection: nothing was sent, take another.
                Err(failed) if reused && failed.worth_a_fresh_connection() => {
                    tracing::debug!(error = %failed.error, "pooled smarthost connection was closed; reconnecting");
                }
                Err(failed) => {
                    if failed.reusable {
                        self.pool.put(conn);
                    }
                    return classify(&failed.error);
                }
            }
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

/// The one table of smarthost outcomes.
pub fn classify(error: &SmtpError) -> Delivery {
    let reason = format!("smarthost: {error}");
    let retry = Delivery::Retry {
        reason: reason.clone(),
        after: None,
    };
    match error {
        // The relay refused this message: 5xx for good, 4xx for now (RFC 5321 §4.2.1).
        SmtpError::Transaction { reply, .. } if reply.is_permanent() => Delivery::Reject { reason },
        SmtpError::Transaction { .. } => retry,
        // Refused recipients: the message goes to all or none, so one temporary refusal
        // makes the whole message worth retrying.
        SmtpError::Recipients(refused) if refused.iter().all(|(_, r)| r.is_permanent()) => {
            Delivery::Reject { reason }
        }
        SmtpError::Recipients(_) => retry,
        // One bad exchange on an established connection: try the message again.
        SmtpError::Io(_) | SmtpError::Closed | SmtpError::Timeout | SmtpError::Protocol(_) => retry,
        // Cannot connect, will not greet us, TLS refused or untrusted, credentials refused:
        // nothing will go until that is fixed.
        SmtpError::Connect(_)
        | SmtpError::Tls(_)
        | SmtpError::NoStartTls
        | SmtpError::InjectedAfterStartTls
        | SmtpError::NoAuthMechanism(_)
        | SmtpError::Session { .. } => Delivery::Unavailable { reason },
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
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The system's trust store through the platform verifier (loaded once, on first use).
fn platform_connector() -> Result<TlsConnector> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_platform_verifier()?
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

#[cfg(test)]
mod tests;
