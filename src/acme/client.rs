//! One ACME order against the CA, with instant-acme: load or create the account, order the
//! names, answer each authorization's challenge, finalize with a fresh key, fetch the chain.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType, HttpClient,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use tokio::sync::Mutex;

use super::{Acme, ChallengeKind};

/// How long one order may take from the challenges being ready to the chain being fetched.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);
/// The deadline of any one request to the CA.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The chain (PEM, leaf first) and its private key (PEM) of a new certificate.
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

/// Something that can obtain a certificate: the CA, or a fake in the tests.
pub trait Issuer: Send + Sync + 'static {
    fn issue(&self) -> impl Future<Output = Result<Issued>> + Send;
}

/// The real issuer: an ACME CA.
pub struct AcmeIssuer {
    acme: Arc<Acme>,
    http: Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    account: Mutex<Option<Account>>,
}

/// instant-acme's HTTP seam, on our hyper client (one TLS stack, our roots).
struct Http(Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>);

impl HttpClient for Http {
    fn request(
        &self,
        req: axum::http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let fut = tokio::time::timeout(REQUEST_TIMEOUT, self.0.request(req));
        Box::pin(async move {
            match fut.await {
                Ok(Ok(rsp)) => Ok(BytesResponse::from(rsp)),
                Ok(Err(e)) => Err(instant_acme::Error::Other(Box::new(ErrorChain(e)))),
                Err(_) => Err(instant_acme::Error::Str("request timed out")),
            }
        })
    }
}

/// hyper's client error prints only its top line ("client error (Connect)"); this prints the
/// causes too, so "connection refused" or "invalid peer certificate" reach the log.
#[derive(Debug)]
struct ErrorChain<E>(E);

impl<E: std::error::Error> std::fmt::Display for ErrorChain<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

impl<E: std::error::Error> std::error::Error for ErrorChain<E> {}

impl AcmeIssuer {
    pub fn new(acme: Arc<Acme>) -> Result<AcmeIssuer> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &acme.config.directory_ca {
            for cert in read_roots(path)? {
                roots.add(cert)?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        Ok(AcmeIssuer {
            acme,
            http: Client::builder(TokioExecutor::new()).build(connector),
            account: Mutex::new(None),
        })
    }

    /// The stored account, or a new one (stored at once).
    async fn account(&self) -> Result<Account> {
        let mut slot = self.account.lock().await;
        if let Some(account) = &*slot {
            return Ok(account.clone());
        }
        let config = &self.acme.config;
        self.probe_directory().await?;
        let builder = Account::builder_with_http(Box::new(Http(self.http.clone())));
        let account = match self.acme.store.load_account()? {
            Some(credentials) => builder
                .from_credentials(credentials)
                .await
                .with_context(|| format!("ACME directory {}", config.directory))?,
            None => {
                let contact = config.contact_urls();
                let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (account, credentials) = builder
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        config.directory.clone(),
                        None,
                    )
                    .await
                    .with_context(|| {
                        format!("creating an account at ACME directory {}", config.directory)
                    })?;
                self.acme.store.save_account(&credentials)?;
                tracing::info!(id = account.id(), path = %self.acme.store.account_path().display(), "ACME account created");
                account
            }
        };
        *slot = Some(account.clone());
        Ok(account)
    }

    /// Fetches the directory once, so a wrong URL gets a plain answer ("HTTP 404", "not an
    /// ACME directory") rather than instant-acme's JSON decoding error.
    async fn probe_directory(&self) -> Result<()> {
        let url = &self.acme.config.directory;
        let request = axum::http::Request::get(url.as_str())
            .body(BodyWrapper::default())
            .with_context(|| format!("ACME directory {url}"))?;
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.http.request(request))
            .await
            .map_err(|_| anyhow::anyhow!("ACME directory {url}: no answer in {REQUEST_TIMEOUT:?}"))?
            .map_err(|e| anyhow::anyhow!("ACME directory {url}: {}", ErrorChain(e)))?;
        let status = response.status();
        anyhow::ensure!(
            status.is_success(),
            "ACME directory {url} answered HTTP {status} (is tls.acme.directory the directory URL?)"
        );
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .with_context(|| format!("ACME directory {url}: reading the answer"))?
            .to_bytes();
        let directory: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        anyhow::ensure!(
            directory.get("newOrder").is_some() && directory.get("newNonce").is_some(),
            "{url} is not an ACME directory (no newOrder/newNonce in its answer; RFC 8555 §7.1.1)"
        );
        Ok(())
    }

    async fn order(&self) -> Result<Issued> {
        let account = self.account().await?;
        let config = &self.acme.config;
        let identifiers: Vec<Identifier> = config
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .context("placing the order")?;
        let kind = match config.challenge {
            ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
            ChallengeKind::Http01 => ChallengeType::Http01,
        };
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization.context("reading an authorization")?;
            match authorization.status {
                AuthorizationStatus::Pending => {}
                // Reused from an earlier order (CAs keep them for a while).
                AuthorizationStatus::Valid => continue,
                status => bail!("authorization is {status:?}"),
            }
            let mut challenge = authorization
                .challenge(kind.clone())
                .with_context(|| format!("the CA offers no {kind:?} challenge"))?;
            let name = challenge.identifier().to_string();
            let key_authorization = challenge.key_authorization();
            match kind {
                ChallengeType::TlsAlpn01 => self
                    .acme
                    .challenges
                    .add_tls_alpn(&name, key_authorization.digest().as_ref())?,
                _ => self
                    .acme
                    .challenges
                    .add_http(&challenge.token, key_authorization.as_str()),
            }
            tracing::info!(name, challenge = ?kind, "ACME challenge ready");
            challenge
                .set_ready()
                .await
                .context("answering the challenge")?;
        }
        let retries = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(ORDER_TIMEOUT);
        let status = order
            .poll_ready(&retries)
            .await
            .context("waiting for the CA to validate")?;
        if status != OrderStatus::Ready {
            bail!("order is {status:?}, not ready (the CA could not validate every name)");
        }
        let key_pem = order.finalize().await.context("finalizing the order")?;
        let chain_pem = order
            .poll_certificate(&retries)
            .await
            .context("fetching the certificate")?;
        Ok(Issued { chain_pem, key_pem })
    }
}

impl Issuer for AcmeIssuer {
    async fn issue(&self) -> Result<Issued> {
        let result = self.order().await;
        self.acme.challenges.clear();
        if result.is_err() {
            // A broken account (deactivated, key rolled elsewhere) must not stick.
            *self.account.lock().await = None;
        }
        result
    }
}

/// Certificates in a PEM file.
pub fn read_roots(
    path: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("tls.acme.directory_ca: reading {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("tls.acme.directory_ca: parsing {}", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "tls.acme.directory_ca: no certificate in {}",
        path.display()
    );
    Ok(certs)
}
