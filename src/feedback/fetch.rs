//! HTTPS GETs to SNS: signing certificates (cached) and subscription confirmations.
//!
//! Only URLs that passed [`super::sns`]'s host rule reach here, and this module checks again.
//! Server certificates are validated against the public WebPKI roots (Mozilla's list, built in:
//! no dependence on the host's CA bundle), as the AWS SDKs' message verifiers do. Responses are
//! bounded in size and time.
//!
//! Tests cannot reach AWS, so a *trust override* (config `feedback.test_trust_override`, which
//! the config refuses unless `OUTBOX_ALLOW_TEST_TRUST_OVERRIDE=yes` is in the environment)
//! sends the same paths to a local HTTPS server and trusts only its CA.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::{TrustOverride, TRUST_OVERRIDE_ENV};

/// A signing certificate is a few KiB; a confirmation answer is small XML.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);
/// Certificates are re-fetched after this (SNS rotates them rarely; validity is checked on
/// every verification anyway).
const CACHE_TTL: Duration = Duration::from_secs(24 * 3600);
const CACHE_MAX: usize = 32;
/// A URL that could not be fetched is not tried again for this long (a flood of messages
/// naming a missing certificate costs one GET, not one each).
const FAILURE_TTL: Duration = Duration::from_secs(60);
/// Certificate fetches in flight at most; further messages wait (bounded by their deadline).
const MAX_CONCURRENT_FETCHES: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("URL not allowed: {0}")]
    NotAllowed(String),
    #[error("fetching {url}: {reason}")]
    Failed { url: String, reason: String },
}

pub struct SnsFetcher {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// `(SNS origin replaced, by)` under the test trust override.
    redirect: Option<String>,
    cache: Mutex<HashMap<String, (Arc<Vec<u8>>, Instant)>>,
    failures: Mutex<HashMap<String, Instant>>,
    fetching: tokio::sync::Semaphore,
}

impl SnsFetcher {
    pub fn new(trust_override: Option<&TrustOverride>) -> Result<Self> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let connector = match trust_override {
            None => builder
                .with_provider_and_webpki_roots(provider)
                .context("TLS client for SNS")?,
            Some(o) => {
                anyhow::ensure!(
                    std::env::var(TRUST_OVERRIDE_ENV).as_deref() == Ok("yes"),
                    "feedback.test_trust_override is for tests only: it needs {TRUST_OVERRIDE_ENV}=yes in the environment"
                );
                tracing::warn!(
                    base_url = %o.base_url,
                    ca = %o.ca_file.display(),
                    "TEST TRUST OVERRIDE: SNS certificates and confirmations are fetched from a local server; never use this in production"
                );
                let pem = std::fs::read(&o.ca_file)
                    .with_context(|| format!("reading {}", o.ca_file.display()))?;
                let mut roots = rustls::RootCertStore::empty();
                for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                    roots.add(cert?)?;
                }
                let tls = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                builder.with_tls_config(tls)
            }
        }
        .https_only()
        .enable_http1()
        .build();
        Ok(SnsFetcher {
            client: Client::builder(TokioExecutor::new()).build(connector),
            redirect: trust_override.map(|o| o.base_url.trim_end_matches('/').to_string()),
            cache: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            fetching: tokio::sync::Semaphore::new(MAX_CONCURRENT_FETCHES),
        })
    }

    /// The signing certificate at `url` (PEM), from the cache when fresh.
    pub async fn certificate(&self, url: &str) -> Result<Arc<Vec<u8>>, FetchError> {
        if !super::sns::cert_url_allowed(url) {
            return Err(FetchError::NotAllowed(url.into()));
        }
        if let Some((pem, at)) = self.cache.lock().unwrap().get(url) {
            if at.elapsed() < CACHE_TTL {
                return Ok(pem.clone());
            }
        }
        if let Some(at) = self.failures.lock().unwrap().get(url) {
            if at.elapsed() < FAILURE_TTL {
                return Err(FetchError::Failed {
                    url: url.to_string(),
                    reason: "failed moments ago; not retried yet".into(),
                });
            }
        }
        let _slot = tokio::time::timeout(TIMEOUT, self.fetching.acquire())
            .await
            .map_err(|_| FetchError::Failed {
                url: url.to_string(),
                reason: "too many certificate fetches in flight".into(),
            })?
            .expect("semaphore never closed");
        let pem = match self.get(url).await {
            Ok(pem) => Arc::new(pem),
            Err(e) => {
                let mut failures = self.failures.lock().unwrap();
                if failures.len() >= CACHE_MAX {
                    failures.clear();
                }
                failures.insert(url.to_string(), Instant::now());
                return Err(e);
            }
        };
        let mut cache = self.cache.lock().unwrap();
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(url.to_string(), (pem.clone(), Instant::now()));
        Ok(pem)
    }

    /// Confirms a subscription by visiting its `SubscribeURL`.
    pub async fn confirm(&self, subscribe_url: &str) -> Result<(), FetchError> {
        if !super::sns::subscribe_url_allowed(subscribe_url) {
            return Err(FetchError::NotAllowed(subscribe_url.into()));
        }
        self.get(subscribe_url).await.map(|_| ())
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        let failed = |reason: String| FetchError::Failed {
            url: url.to_string(),
            reason,
        };
        let target = match &self.redirect {
            // https://sns.<region>.amazonaws.com/<path> → <base_url>/<path>
            Some(base) => {
                let rest = url.strip_prefix("https://").unwrap_or(url);
                let path = rest.find('/').map_or("/", |i| &rest[i..]);
                format!("{base}{path}")
            }
            None => url.to_string(),
        };
        let uri: hyper::Uri = target.parse().map_err(|e| failed(format!("{e}")))?;
        let response = tokio::time::timeout(TIMEOUT, self.client.get(uri))
            .await
            .map_err(|_| failed("timed out".into()))?
            .map_err(|e| failed(chain(&e)))?;
        if !response.status().is_success() {
            return Err(failed(format!("HTTP {}", response.status())));
        }
        let body = tokio::time::timeout(
            TIMEOUT,
            Limited::new(response.into_body(), MAX_RESPONSE_BYTES).collect(),
        )
        .await
        .map_err(|_| failed("timed out reading the body".into()))?
        .map_err(|e| failed(format!("{e}")))?;
        Ok(body.to_bytes().to_vec())
    }
}

/// An error and its causes ("client error (Connect): invalid peer certificate: UnknownIssuer").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HttpConfig, TlsConfig};
    use crate::live::Live;
    use axum::routing::get;

    const NAME: &str = "SimpleNotificationService-0123.pem";

    #[tokio::test]
    async fn public_roots_only_unless_the_test_override_is_switched_on() {
        let dir = tempfile::tempdir().unwrap();
        let tls = TlsConfig {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            ca: dir.path().join("ca.pem"),
            generate_dev_cert: true,
            acme: None,
        };
        let server_tls = crate::tls::server_config(&tls).unwrap();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        let router = axum::Router::new()
            .route(&format!("/{NAME}"), get(|| async { "PEM" }))
            .layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    next.run(req)
                },
            ));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let config = HttpConfig {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            ..HttpConfig::default()
        };
        let (addrs, tasks) =
            crate::http::serve(&config, Live::new(server_tls), false, router, stop_rx)
                .await
                .unwrap();
        let base = format!("https://127.0.0.1:{}", addrs[0].port());

        // The default client trusts the public WebPKI roots, not a private CA.
        let public = SnsFetcher::new(None).unwrap();
        let err = public.get(&format!("{base}/{NAME}")).await.unwrap_err();
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");

        let trust = TrustOverride {
            base_url: base,
            ca_file: tls.ca.clone(),
        };
        std::env::remove_var(TRUST_OVERRIDE_ENV);
        assert!(
            SnsFetcher::new(Some(&trust)).is_err(),
            "the override needs the environment switch"
        );
        std::env::set_var(TRUST_OVERRIDE_ENV, "yes");
        let fetcher = SnsFetcher::new(Some(&trust)).unwrap();
        let url = format!("https://sns.us-east-1.amazonaws.com/{NAME}");
        assert_eq!(&fetcher.certificate(&url).await.unwrap()[..], b"PEM");
        assert!(matches!(
            fetcher
                .certificate("https://evil.example.com/x.pem")
                .await
                .unwrap_err(),
            FetchError::NotAllowed(_)
        ));

        // A missing certificate is asked for once, then refused for a while without a GET.
        let missing = format!("https://sns.us-east-1.amazonaws.com/Missing-{NAME}");
        let before = hits.load(std::sync::atomic::Ordering::SeqCst);
        for _ in 0..3 {
            assert!(fetcher.certificate(&missing).await.is_err());
        }
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), before + 1);

        // Cached: the server can go away.
        stop_tx.send(true).unwrap();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(&fetcher.certificate(&url).await.unwrap()[..], b"PEM");
        let gone = format!("https://sns.us-east-1.amazonaws.com/Other-{NAME}");
        assert!(matches!(
            fetcher.certificate(&gone).await.unwrap_err(),
            FetchError::Failed { .. }
        ));
    }
}
