//! DKIM signing at send time (RFC 6376, ed25519-sha256 per RFC 8463), with `mail-auth`, after
//! every other change to the message so the signature covers what actually leaves.

use std::collections::HashMap;

use anyhow::{anyhow, Context, Result};
use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{DkimSigner, Done};
use rustls::pki_types::PrivateKeyDer;

use crate::config::DkimConfig;

/// Header fields signed when present (RFC 6376 §5.4.1's recommendation, plus MIME fields).
const SIGNED_HEADERS: [&str; 12] = [
    "From",
    "Sender",
    "Reply-To",
    "Subject",
    "Date",
    "Message-ID",
    "To",
    "Cc",
    "MIME-Version",
    "Content-Type",
    "In-Reply-To",
    "References",
];

/// Signers by domain.
#[derive(Default)]
pub struct DkimKeys {
    signers: HashMap<String, DkimSigner<DkimKey, Done>>,
}

impl DkimKeys {
    pub fn load(configs: &[DkimConfig]) -> Result<DkimKeys> {
        let mut signers = HashMap::new();
        for c in configs {
            let pem = std::fs::read(&c.private_key_file)
                .with_context(|| format!("reading DKIM key {}", c.private_key_file.display()))?;
            let key = parse_key(&pem)
                .with_context(|| format!("DKIM key {}", c.private_key_file.display()))?;
            let signer = DkimSigner::from_key(key)
                .domain(c.domain.to_lowercase())
                .selector(&c.selector)
                .headers(SIGNED_HEADERS);
            signers.insert(c.domain.to_lowercase(), signer);
        }
        Ok(DkimKeys { signers })
    }

    /// The message with a `DKIM-Signature` header for `domain` prepended, if we hold a key
    /// for it; otherwise unchanged.
    pub fn sign(&self, domain: &str, mime: Vec<u8>) -> Result<Vec<u8>> {
        let Some(signer) = self.signers.get(&domain.to_lowercase()) else {
            return Ok(mime);
        };
        let signature = signer
            .sign(&mime)
            .map_err(|e| anyhow!("DKIM signing: {e}"))?;
        Ok(prepend(mime, signature.to_header().as_bytes()))
    }
}

/// `field` in front of `mime`, in `mime`'s own allocation when it has the room (the sender
/// leaves [`super::prepare::SIGNATURE_FIELD_ROOM`]): a move, not a second copy.
fn prepend(mut mime: Vec<u8>, field: &[u8]) -> Vec<u8> {
    let len = mime.len();
    mime.resize(len + field.len(), 0);
    mime.copy_within(..len, field.len());
    mime[..field.len()].copy_from_slice(field);
    mime
}

fn parse_key(pem: &[u8]) -> Result<DkimKey> {
    let der = rustls_pemfile::private_key(&mut &pem[..])?
        .ok_or_else(|| anyhow!("no private key in PEM"))?;
    match der {
        PrivateKeyDer::Pkcs8(pkcs8) => {
            match RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(pkcs8.clone_key())) {
                Ok(rsa) => Ok(DkimKey::Rsa(rsa)),
                Err(_) => Ed25519Key::from_pkcs8_der(pkcs8.secret_pkcs8_der())
                    .map(DkimKey::Ed25519)
                    .map_err(|e| anyhow!("neither RSA nor Ed25519: {e}")),
            }
        }
        other => RsaKey::<Sha256>::from_key_der(other)
            .map(DkimKey::Rsa)
            .map_err(|e| anyhow!("{e}")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn prepending_uses_the_room_left() {
        let mut mime = Vec::with_capacity(64);
        mime.extend_from_slice(b"From: a\r\n\r\nbody\r\n");
        let at = mime.as_ptr();
        let signed = super::prepend(mime, b"DKIM-Signature: x\r\n");
        assert_eq!(signed, b"DKIM-Signature: x\r\nFrom: a\r\n\r\nbody\r\n");
        assert_eq!(signed.as_ptr(), at, "no new allocation");
    }
}
