//! TLS material: load the configured certificate, or create a development CA and server
//! certificate on first start. One TLS stack: rustls with the aws-lc-rs provider, TLS 1.2+.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ResolvesServerCert;
use rustls::ServerConfig;

use crate::config::TlsConfig;

/// The server's rustls configuration, creating development certificates if allowed.
pub fn server_config(tls: &TlsConfig) -> Result<ServerConfig> {
    if !tls.cert.exists() || !tls.key.exists() {
        if !tls.generate_dev_cert {
            anyhow::bail!(
                "TLS certificate {} or key {} missing",
                tls.cert.display(),
                tls.key.display()
            );
        }
        generate_dev_cert(tls)?;
    }
    let certs = load_certs(&tls.cert)?;
    let key = load_key(&tls.key)?;
    let config = builder()?
        .with_single_cert(certs, key)
        .context("TLS certificate and key do not match")?;
    Ok(config)
}

/// A server configuration whose certificate `resolver` picks per handshake (ACME: the issued
/// certificate, or a TLS-ALPN-01 answer).
pub fn with_resolver(resolver: Arc<dyn ResolvesServerCert>) -> Result<ServerConfig> {
    Ok(builder()?.with_cert_resolver(resolver))
}

fn builder() -> Result<rustls::ConfigBuilder<ServerConfig, rustls::server::WantsServerCert>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(ServerConfig::builder_with_provider(provider)
        // TLS 1.2 or later only (RFC 8996 deprecates 1.0/1.1).
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth())
}

/// Facts about the configured certificate file's leaf (for the expiry metric).
pub fn file_cert_info(tls: &TlsConfig) -> Option<crate::acme::store::CertInfo> {
    let certs = load_certs(&tls.cert).ok()?;
    crate::acme::store::CertInfo::parse(certs.first()?).ok()
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", path.display());
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .with_context(|| format!("parsing {}", path.display()))?
        .with_context(|| format!("no private key in {}", path.display()))
}

/// Writes a throwaway CA (`tls.ca`) and a `localhost`/127.0.0.1/::1 certificate signed by it.
fn generate_dev_cert(tls: &TlsConfig) -> Result<()> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Outbox development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut params = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;

    for (path, pem) in [
        (&tls.ca, ca_cert.pem()),
        (&tls.cert, cert.pem() + &ca_cert.pem()),
        (&tls.key, key.serialize_pem()),
    ] {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tls.key, std::fs::Permissions::from_mode(0o600))?;
    }
    tracing::warn!(ca = %tls.ca.display(), "generated a development TLS certificate; not for production");
    Ok(())
}
