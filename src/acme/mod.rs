//! ACME certificates (RFC 8555): the server's certificate ordered from an ACME CA (Let's
//! Encrypt, or Pebble in the tests), renewed before it expires and swapped into the running
//! listeners through the same [`Live`] value a SIGHUP reload uses, so open sessions keep the
//! certificate they started with and new ones get the new one.
//!
//! - [`schedule`]: when to renew and when to retry (pure, table-tested).
//! - [`store`]: the account key and the issued certificate under the state folder (0600).
//! - [`challenge`]: TLS-ALPN-01 (RFC 8737) on the HTTPS listener, HTTP-01 on a plain port.
//! - [`client`]: one order against the CA (instant-acme).
//! - [`manager`]: the loop: wait until due, order, store, swap, retry with backoff.
//!
//! Until the first certificate is issued the listeners serve a self-signed placeholder for the
//! configured names: the server starts (and takes mail from clients that accept it) even when
//! the CA is unreachable.

pub mod challenge;
pub mod client;
pub mod manager;
pub mod schedule;
pub mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use rustls::sign::CertifiedKey;
use serde::Deserialize;

use crate::live::Live;

pub use challenge::Challenges;
pub use store::Store;

/// Let's Encrypt's production directory (the default).
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// `[tls.acme]`: order the server's certificate from an ACME CA.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// DNS names the certificate covers; the first is the subject. No wildcards (they need
    /// DNS-01, which Outbox does not do).
    pub domains: Vec<String>,
    /// Whom the CA writes to about the account (expiry warnings): addresses, with or without
    /// `mailto:`. One string or a list.
    #[serde(default, deserialize_with = "one_or_many")]
    pub contact: Vec<String>,
    /// The CA's directory URL (https).
    #[serde(default = "default_directory")]
    pub directory: String,
    /// Extra root certificates (PEM) trusted for the directory's own HTTPS, besides the public
    /// WebPKI roots: for a test CA such as Pebble. Never needed for Let's Encrypt.
    #[serde(default)]
    pub directory_ca: Option<PathBuf>,
    /// How the CA checks that we control the names.
    #[serde(default)]
    pub challenge: ChallengeKind,
    /// Where the HTTP-01 responder listens (the CA connects to port 80 of each name).
    #[serde(default = "default_http_listen")]
    pub http_listen: SocketAddr,
    /// Renew this many days before the certificate expires (Let's Encrypt's 90-day
    /// certificates: at 60 days). Capped at half the lifetime, so a short-lived certificate is
    /// renewed halfway rather than all the time.
    #[serde(default = "default_renew_before_days")]
    pub renew_before_days: u64,
    /// A failed order is retried after this long, doubling each time up to `retry_max_secs`.
    /// Let's Encrypt allows 5 failed validations per name per hour.
    #[serde(default = "default_retry_base_secs")]
    pub retry_base_secs: u64,
    #[serde(default = "default_retry_max_secs")]
    pub retry_max_secs: u64,
}

/// The ACME challenge type used to prove control of the names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum ChallengeKind {
    /// RFC 8737: answered on the HTTPS listener (the CA connects to port 443).
    #[default]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// RFC 8555 §8.3: answered on `http_listen` (the CA connects to port 80).
    #[serde(rename = "http-01")]
    Http01,
}

fn default_directory() -> String {
    LETS_ENCRYPT.into()
}
fn default_http_listen() -> SocketAddr {
    // Both IPv4 and IPv6 (dual stack); IPv4 alone where the host has no IPv6.
    "[::]:80".parse().unwrap()
}
fn default_renew_before_days() -> u64 {
    30
}
fn default_retry_base_secs() -> u64 {
    60
}
fn default_retry_max_secs() -> u64 {
    6 * 3600
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

impl AcmeConfig {
    pub fn resolve_paths(&mut self, base: &Path) {
        if let Some(p) = &mut self.directory_ca {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// Contacts as `mailto:` URLs (RFC 8555 §7.3).
    pub fn contact_urls(&self) -> Vec<String> {
        self.contact
            .iter()
            .map(|c| {
                if c.starts_with("mailto:") {
                    c.clone()
                } else {
                    format!("mailto:{c}")
                }
            })
            .collect()
    }

    /// Every value the CA would refuse or we cannot serve, each naming its key.
    pub fn problems(&self, https_listeners: usize) -> Vec<String> {
        let mut problems = Vec::new();
        if self.domains.is_empty() {
            problems.push("tls.acme.domains: give at least one name".to_string());
        }
        for name in &self.domains {
            if let Some(why) = domain_problem(name) {
                problems.push(format!("tls.acme.domains: {name:?} {why}"));
            }
        }
        for contact in self.contact_urls() {
            let addr = contact.trim_start_matches("mailto:");
            if !addr.contains('@') || addr.contains([' ', ',', '<', '>']) {
                problems.push(format!(
                    "tls.acme.contact: {contact:?} is not an address (e.g. \"postmaster@example.com\")"
                ));
            }
        }
        match self.directory.parse::<hyper::Uri>() {
            Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => {}
            _ => problems.push(format!(
                "tls.acme.directory: {:?} is not an https:// URL (RFC 8555 §6.1; e.g. {LETS_ENCRYPT})",
                self.directory
            )),
        }
        if self.challenge == ChallengeKind::TlsAlpn01 && https_listeners == 0 {
            problems.push(
                "tls.acme.challenge: tls-alpn-01 is answered on the HTTPS listener, and http.listen is empty (add one, or use challenge = \"http-01\")"
                    .to_string(),
            );
        }
        if self.renew_before_days == 0 {
            problems.push("tls.acme.renew_before_days: must be at least 1".to_string());
        }
        if self.retry_base_secs == 0 || self.retry_max_secs < self.retry_base_secs {
            problems.push(
                "tls.acme: retry_base_secs must be at least 1 and retry_max_secs at least retry_base_secs"
                    .to_string(),
            );
        }
        problems
    }
}

/// Why `name` cannot be in an ACME order, if it cannot.
fn domain_problem(name: &str) -> Option<&'static str> {
    if name.starts_with("*.") {
        return Some("is a wildcard: that needs the DNS-01 challenge, which Outbox does not do");
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Some("is an IP address: give a DNS name");
    }
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    (!valid).then_some("is not a DNS name (ASCII letters, digits, '-' and '.'; IDNs as punycode)")
}

/// What the listeners and the reload path share: where the certificate is kept, the open
/// challenges, and how to build the rustls configuration from what is stored.
pub struct Acme {
    pub config: AcmeConfig,
    pub store: Store,
    pub challenges: Arc<Challenges>,
}

impl Acme {
    pub fn new(config: AcmeConfig, state_dir: &Path) -> Arc<Acme> {
        let store = Store::new(state_dir, &config.directory);
        Arc::new(Acme {
            config,
            store,
            challenges: Arc::new(Challenges::default()),
        })
    }

    /// The server configuration for what is stored now: the issued certificate, or a
    /// self-signed placeholder for the configured names until there is one.
    pub fn server_config(&self) -> Result<(rustls::ServerConfig, Option<store::CertInfo>)> {
        let (key, info) = match self.usable_certificate() {
            Some((key, info)) => (key, Some(info)),
            None => (
                Arc::new(challenge::placeholder(&self.config.domains)?),
                None,
            ),
        };
        let resolver = challenge::Resolver::new(key, self.challenges.clone());
        Ok((crate::tls::with_resolver(Arc::new(resolver))?, info))
    }

    /// The stored certificate, if it can be served. A damaged file (unreadable, a key that
    /// does not match) is logged and treated as absent, so a new certificate is ordered rather
    /// than the server refusing to start.
    pub fn usable_certificate(&self) -> Option<(Arc<CertifiedKey>, store::CertInfo)> {
        let usable = self
            .store
            .load_certificate()
            .and_then(|stored| stored.map(|s| Ok((s.certified_key()?, s.info))).transpose());
        usable.unwrap_or_else(|e| {
            tracing::error!(error = %format!("{e:#}"), "stored ACME certificate unusable; a new one will be ordered");
            None
        })
    }

    /// Swaps the stored certificate into `live` (new handshakes use it; open sessions keep
    /// theirs).
    pub fn swap_into(&self, live: &Live<rustls::ServerConfig>) -> Result<Option<store::CertInfo>> {
        let (config, info) = self.server_config()?;
        live.set(config);
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> AcmeConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_and_contact_forms() {
        let c = parse(r#"domains = ["mail.example.com"]"#);
        assert_eq!(c.directory, LETS_ENCRYPT);
        assert_eq!(c.challenge, ChallengeKind::TlsAlpn01);
        assert_eq!(c.renew_before_days, 30);
        assert!(c.problems(1).is_empty(), "{:?}", c.problems(1));
        let c = parse(
            r#"domains = ["a.example.com"]
contact = "ops@example.com"
challenge = "http-01""#,
        );
        assert_eq!(c.contact_urls(), vec!["mailto:ops@example.com"]);
        assert!(c.problems(0).is_empty());
        let c = parse(
            r#"domains = ["a.example.com"]
contact = ["mailto:a@example.com", "b@example.com"]"#,
        );
        assert_eq!(
            c.contact_urls(),
            vec!["mailto:a@example.com", "mailto:b@example.com"]
        );
    }

    /// The example config documents every key with its default: uncommented, it loads and
    /// equals the defaults.
    #[test]
    fn example_config_block_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/outbox.example.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let block: String = text
            .lines()
            .skip_while(|l| *l != "# [tls.acme]")
            .skip(1)
            .take_while(|l| l.starts_with("# "))
            .filter(|l| !l.starts_with("# #") && !l.starts_with("#    "))
            .map(|l| format!("{}\n", &l[2..]))
            .collect();
        let documented: AcmeConfig = toml::from_str(&block).unwrap();
        let defaults = parse(
            r#"domains = ["mail.example.com"]
contact = "postmaster@example.com""#,
        );
        assert_eq!(documented, defaults);
    }

    /// Rules: a CA answer whose key does not match is refused before it replaces the stored
    /// certificate; a damaged stored certificate does not stop the server: the placeholder is
    /// served and the manager sees no certificate, so it orders.
    #[test]
    fn damaged_certificates_never_replace_or_block() {
        let dir = tempfile::tempdir().unwrap();
        let acme = Acme::new(parse(r#"domains = ["mail.example.com"]"#), dir.path());
        let params = rcgen::CertificateParams::new(vec!["mail.example.com".into()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let good = acme
            .store
            .save_certificate(&cert.pem(), &key.serialize_pem())
            .unwrap();
        let other_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let refused = acme.store.save_certificate(&cert.pem(), &other_key);
        assert!(refused.is_err());
        assert_eq!(acme.usable_certificate().unwrap().1, good.info);

        std::fs::write(acme.store.certificate_path(), cert.pem() + &other_key).unwrap();
        assert!(acme.usable_certificate().is_none());
        let (_, info) = acme.server_config().unwrap();
        assert!(info.is_none());
    }

    #[test]
    fn every_problem_is_named() {
        let c = parse(
            r#"domains = ["*.example.com", "10.0.0.1", "bad_name.example", "ok.example.com"]
contact = "not an address"
directory = "http://acme.example/dir"
renew_before_days = 0"#,
        );
        let problems = c.problems(0).join("\n");
        for needle in [
            "wildcard",
            "IP address",
            "\"bad_name.example\" is not a DNS name",
            "tls.acme.contact",
            "not an https:// URL",
            "http.listen is empty",
            "renew_before_days",
        ] {
            assert!(
                problems.contains(needle),
                "{needle} missing from\n{problems}"
            );
        }
        assert!(!problems.contains("ok.example.com"));
        assert!(toml::from_str::<AcmeConfig>("domains = []\nchallenge = \"dns-01\"").is_err());
    }
}
