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
        let pem = Arc::new(self.get(url).await?);
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
            .map_err(|e| failed(format!("{e}")))?;
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
