//! What ACME leaves on disk, under `<state_dir>/acme/<directory>/`, one folder per CA
//! directory (so moving from a staging to a production CA starts afresh and moving back reuses):
//!
//! - `account.json`: the account id and its private key (instant-acme's credentials);
//! - `certificate.pem`: the issued chain followed by its private key, in one file so a crash
//!   can never pair a new certificate with an old key.
//!
//! Both are written to a temporary file (mode 0600, fsynced) and renamed over the old one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::schedule::Validity;

pub struct Store {
    dir: PathBuf,
}

/// A stored certificate with its key, and what the schedule needs to know about it.
pub struct Stored {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub info: CertInfo,
}

/// Facts about a certificate read from its leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub validity: Validity,
    /// The serial number, lower-case hex (as `openssl x509 -serial` prints it, without `:`).
    pub serial: String,
    /// DNS names of the subjectAltName extension, lower case.
    pub names: Vec<String>,
}

impl CertInfo {
    /// Whether the certificate covers exactly `domains` (order and case aside).
    pub fn covers_exactly(&self, domains: &[String]) -> bool {
        let mut want: Vec<String> = domains.iter().map(|d| d.to_ascii_lowercase()).collect();
        want.sort();
        want.dedup();
        let mut have = self.names.clone();
        have.sort();
        have.dedup();
        want == have
    }

    /// Reads the leaf certificate (DER).
    pub fn parse(der: &[u8]) -> Result<CertInfo> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| anyhow::anyhow!("parsing the certificate: {e}"))?;
        let validity = cert.validity();
        let ms = |t: &x509_parser::time::ASN1Time| (t.timestamp().max(0) as u64) * 1000;
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                    names.push(dns.to_ascii_lowercase());
                }
            }
        }
        Ok(CertInfo {
            validity: Validity {
                not_before_ms: ms(&validity.not_before),
                not_after_ms: ms(&validity.not_after),
            },
            serial: cert
                .raw_serial()
                .iter()
                .skip_while(|b| **b == 0)
                .map(|b| format!("{b:02x}"))
                .collect(),
            names,
        })
    }
}

impl Stored {
    /// The chain (leaf first) and the key from one PEM text.
    fn from_pem(pem: &[u8]) -> Result<Stored> {
        let chain = rustls_pemfile::certs(&mut &pem[..]).collect::<Result<Vec<_>, _>>()?;
        let key = rustls_pemfile::private_key(&mut &pem[..])?.context("no private key")?;
        let leaf = chain.first().context("no certificate")?;
        let info = CertInfo::parse(leaf)?;
        Ok(Stored { chain, key, info })
    }

    /// The chain and key as rustls serves them; fails when the key does not match.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>> {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let key = CertifiedKey::from_der(self.chain.clone(), self.key.clone_key(), &provider)
            .context("the stored ACME certificate and key do not match")?;
        Ok(Arc::new(key))
    }
}

impl Store {
    /// The folder for `directory` (e.g. `acme/acme-v02.api.letsencrypt.org-1a2b3c4d`).
    pub fn new(state_dir: &Path, directory: &str) -> Store {
        let host = directory
            .parse::<hyper::Uri>()
            .ok()
            .and_then(|u| u.authority().map(|a| a.as_str().to_string()))
            .unwrap_or_default()
            .replace(
                |c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '-',
                "_",
            );
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, directory.as_bytes());
        let tag: String = digest.as_ref()[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Store {
            dir: state_dir.join("acme").join(format!("{host}-{tag}")),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn account_path(&self) -> PathBuf {
        self.dir.join("account.json")
    }

    pub fn certificate_path(&self) -> PathBuf {
        self.dir.join("certificate.pem")
    }

    pub fn load_account(&self) -> Result<Option<instant_acme::AccountCredentials>> {
        let path = self.account_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("parsing {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save_account(&self, credentials: &instant_acme::AccountCredentials) -> Result<()> {
        self.write_private(&self.account_path(), &serde_json::to_vec(credentials)?)
    }

    /// The stored certificate; `None` when there is none yet.
    pub fn load_certificate(&self) -> Result<Option<Stored>> {
        let path = self.certificate_path();
        let pem = match std::fs::read(&path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Stored::from_pem(&pem)
            .map(Some)
            .with_context(|| format!("reading {}", path.display()))
    }

    /// Stores a newly issued chain (PEM, leaf first) and its key (PEM); returns what was stored.
    pub fn save_certificate(&self, chain_pem: &str, key_pem: &str) -> Result<Stored> {
        let mut pem = chain_pem.trim_end().to_string();
        pem.push('\n');
        pem.push_str(key_pem.trim_end());
        pem.push('\n');
        // Checked before it replaces the stored one: a bad answer must not cost the good
        // certificate.
        Stored::from_pem(pem.as_bytes())?
            .certified_key()
            .context("the CA's answer")?;
        let path = self.certificate_path();
        self.write_private(&path, pem.as_bytes())?;
        self.load_certificate()?
            .with_context(|| format!("{} vanished after writing", path.display()))
    }

    /// Writes `bytes` to `path` atomically, readable by the owner only.
    fn write_private(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        for dir in self.dir.parent().into_iter().chain([self.dir.as_path()]) {
            crate::state_files::create_dir(dir, crate::state_files::PRIVATE_DIR_MODE)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
        if let Ok(dir) = std::fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn certificate_round_trip_private_and_per_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "https://127.0.0.1:14000/dir");
        assert!(store
            .dir()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("127.0.0.1_14000-"));
        assert_ne!(
            store.dir(),
            Store::new(dir.path(), "https://127.0.0.1:14000/other").dir()
        );
        assert!(store.load_certificate().unwrap().is_none());

        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["b.example.com".into(), "A.example.com".into()])
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        let stored = store
            .save_certificate(&cert.pem(), &key.serialize_pem())
            .unwrap();
        assert!(stored
            .info
            .covers_exactly(&["a.example.com".into(), "B.example.com".into()]));
        assert!(!stored.info.covers_exactly(&["a.example.com".into()]));
        stored.certified_key().unwrap();
        let again = store.load_certificate().unwrap().unwrap();
        assert_eq!(again.info, stored.info);
        let mode = std::fs::metadata(store.certificate_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = std::fs::metadata(store.dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
