//! Answering the CA's challenges while an order is open.
//!
//! - TLS-ALPN-01 (RFC 8737): the CA opens TLS to port 443 of the name, offering only the
//!   `acme-tls/1` protocol; we answer with a self-signed certificate for that name carrying the
//!   key authorization's digest in the `acmeIdentifier` extension. The [`Resolver`] picks that
//!   certificate when `acme-tls/1` is offered and the served one otherwise, so it lives inside
//!   the HTTPS listener's configuration and costs ordinary clients nothing.
//! - HTTP-01 (RFC 8555 §8.3): the CA fetches
//!   `http://<name>/.well-known/acme-challenge/<token>` on port 80; [`serve_http01`] answers
//!   with the key authorization, and 404 for everything else.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rcgen::{CertificateParams, CustomExtension, DnType, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

/// The ALPN protocol name of TLS-ALPN-01 (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The challenges of the order under way.
#[derive(Default)]
pub struct Challenges {
    /// Name → validation certificate (TLS-ALPN-01).
    tls_alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// Token → key authorization (HTTP-01).
    http: Mutex<HashMap<String, String>>,
}

impl Challenges {
    /// Prepares the TLS-ALPN-01 answer for `name` (RFC 8737 §3).
    pub fn add_tls_alpn(&self, name: &str, key_authorization_digest: &[u8]) -> Result<()> {
        let mut params = CertificateParams::new(vec![name.to_string()])?;
        params.custom_extensions = vec![CustomExtension::new_acme_identifier(
            key_authorization_digest,
        )];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let certified = certified_key(cert.der().clone(), &key)?;
        lock(&self.tls_alpn).insert(name.to_ascii_lowercase(), Arc::new(certified));
        Ok(())
    }

    pub fn add_http(&self, token: &str, key_authorization: &str) {
        lock(&self.http).insert(token.to_string(), key_authorization.to_string());
    }

    /// Forgets every answer (the order is over, whatever its outcome).
    pub fn clear(&self) {
        lock(&self.tls_alpn).clear();
        lock(&self.http).clear();
    }

    fn tls_alpn(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        lock(&self.tls_alpn)
            .get(&name.to_ascii_lowercase())
            .cloned()
    }

    fn http(&self, token: &str) -> Option<String> {
        lock(&self.http).get(token).cloned()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Pairs a certificate we just made with its key. Not `CertifiedKey::from_der`: its
/// consistency check parses the certificate with webpki, which refuses the critical
/// `acmeIdentifier` extension of a TLS-ALPN-01 answer.
fn certified_key(
    der: rustls::pki_types::CertificateDer<'static>,
    key: &KeyPair,
) -> Result<CertifiedKey> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing_key = provider.key_provider.load_private_key(key)?;
    Ok(CertifiedKey::new(vec![der], signing_key))
}

/// A self-signed certificate for `domains`, served until the first one is issued (clients that
/// verify refuse it; nothing is pretended).
pub fn placeholder(domains: &[String]) -> Result<CertifiedKey> {
    let mut params = CertificateParams::new(domains.to_vec())?;
    params.distinguished_name.push(
        DnType::CommonName,
        "Outbox placeholder: ACME certificate not issued yet",
    );
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    certified_key(cert.der().clone(), &key)
}

/// Serves the current certificate, or a TLS-ALPN-01 answer to the CA's validator.
#[derive(Debug)]
pub struct Resolver {
    current: Arc<CertifiedKey>,
    challenges: Arc<Challenges>,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenges").finish_non_exhaustive()
    }
}

impl Resolver {
    pub fn new(current: Arc<CertifiedKey>, challenges: Arc<Challenges>) -> Resolver {
        Resolver {
            current,
            challenges,
        }
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // RFC 8737 §3: the validator offers acme-tls/1 alone; no answer, no handshake.
        let validator = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN));
        if validator {
            let name = hello.server_name()?;
            let answer = self.challenges.tls_alpn(name);
            tracing::info!(
                name,
                answered = answer.is_some(),
                "ACME TLS-ALPN-01 validation"
            );
            return answer;
        }
        Some(self.current.clone())
    }
}

/// Connections the HTTP-01 responder serves at once (port 80 is open to the Internet); more
/// wait in the kernel's backlog.
const HTTP01_MAX_CONNECTIONS: usize = 256;
/// A connection's one request must arrive and be answered within this (no keep-alive): a
/// validator asks once, a slow dribble is cut off.
const HTTP01_DEADLINE: Duration = Duration::from_secs(10);
/// RFC 8555 §8.3: where the CA fetches `<token>`'s key authorization.
const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// The HTTP-01 responder on `addr` until `stop`; returns the bound address and its task. It
/// answers `GET /.well-known/acme-challenge/<token>` for an open challenge and 404 to anything
/// else, one request per connection.
pub async fn serve_http01(
    addr: SocketAddr,
    challenges: Arc<Challenges>,
    mut stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<()>)> {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        // The default "[::]:80" on a host without IPv6: IPv4 alone.
        Err(e)
            if addr.ip() == std::net::Ipv6Addr::UNSPECIFIED
                && e.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
        {
            tokio::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, addr.port())).await
        }
        other => other,
    }
    .with_context(|| {
        format!("binding the ACME HTTP-01 responder on {addr} (tls.acme.http_listen)")
    })?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "ACME HTTP-01 responder listening");
    let task = tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(HTTP01_MAX_CONNECTIONS));
        loop {
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => permit.expect("semaphore never closed"),
                _ = crate::http::stopped(&mut stop) => return,
            };
            let tcp = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        tracing::warn!(error = %e, "ACME HTTP-01 accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = crate::http::stopped(&mut stop) => return,
            };
            let challenges = challenges.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let response = respond(&challenges, &req);
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(HTTP01_DEADLINE)
                    .keep_alive(false);
                let conn = builder.serve_connection(TokioIo::new(tcp), service);
                let _ = tokio::time::timeout(HTTP01_DEADLINE, conn).await;
            });
        }
    });
    Ok((local, task))
}

fn respond(
    challenges: &Challenges,
    req: &hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let answer = (req.method() == hyper::Method::GET)
        .then(|| req.uri().path().strip_prefix(HTTP01_PREFIX))
        .flatten()
        .and_then(|token| challenges.http(token));
    let (status, body) = match answer {
        Some(key_authorization) => {
            tracing::info!("ACME HTTP-01 validation answered");
            (hyper::StatusCode::OK, key_authorization)
        }
        None => (hyper::StatusCode::NOT_FOUND, String::new()),
    };
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_certificate_carries_the_digest() {
        let challenges = Challenges::default();
        challenges
            .add_tls_alpn("Mail.Example.com", &[7u8; 32])
            .unwrap();
        let answer = challenges.tls_alpn("mail.example.com").unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&answer.cert[0]).unwrap();
        // id-pe-acmeIdentifier (RFC 8737 §6.1), critical, an OCTET STRING of the digest.
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        assert_eq!(&ext.value[2..], &[7u8; 32]);
        challenges.clear();
        assert!(challenges.tls_alpn("mail.example.com").is_none());
    }
}
