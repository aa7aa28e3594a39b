//! DKIM signing at send time (RFC 6376, ed25519-sha256 per RFC 8463), with `mail-auth`, after
//! every other change to the message so the signature covers what actually leaves.

use std::collections::HashMap;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{DkimSigner, Done};
use rustls::pki_types::PrivateKeyDer;

use crate::config::DkimConfig;
use crate::message::header_end;
use crate::rope::Rope;

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

    /// The message with a `DKIM-Signature` header for `domain` in front, if we hold a key
    /// for it; otherwise unchanged.
    pub fn sign(&self, domain: &str, mut mime: Rope) -> Result<Rope> {
        let Some(signer) = self.signers.get(&domain.to_lowercase()) else {
            return Ok(mime);
        };
        let signature = sign_pieces(signer, &mime).map_err(|e| anyhow!("DKIM signing: {e}"))?;
        mime.prepend(Bytes::from(signature.to_header()));
        Ok(mime)
    }
}

/// Signs `mime` without joining it when its pieces are what the sender builds (the header
/// fields, then the body from its empty line on): mail-auth reads header fields from every
/// piece and the body from the last, so the body must be one piece. A body in several pieces
/// (the signature rewrote a part of it) is joined into one copy of the body; any other shape
/// is signed joined.
fn sign_pieces(
    signer: &DkimSigner<DkimKey, Done>,
    mime: &Rope,
) -> mail_auth::Result<mail_auth::dkim::Signature> {
    let mut pieces = mime.pieces();
    let (Some(head), Some(first_body)) = (pieces.next(), pieces.next()) else {
        return signer.sign(&mime.to_vec());
    };
    let whole_fields = header_end(head) == head.len() && head.ends_with(b"\r\n");
    if !whole_fields || !first_body.starts_with(b"\r\n") {
        return signer.sign(&mime.to_vec());
    }
    if mime.piece_count() == 2 {
        return signer.sign_chained([head, first_body]);
    }
    let mut body = Vec::with_capacity(mime.len() - head.len());
    body.extend_from_slice(first_body);
    pieces.for_each(|p| body.extend_from_slice(p));
    signer.sign_chained([head, &body[..]])
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
    use super::*;

    /// An Ed25519 signer (deterministic signatures: the same input gives the same header).
    fn signer() -> DkimSigner<DkimKey, Done> {
        let pkcs8 = Ed25519Key::generate_pkcs8().unwrap();
        let key = Ed25519Key::from_pkcs8_der(&pkcs8).unwrap();
        DkimSigner::from_key(DkimKey::Ed25519(key))
            .domain("example.com")
            .selector("s")
            .headers(SIGNED_HEADERS)
    }

    fn rope(pieces: &[&[u8]]) -> Rope {
        let mut r = Rope::new();
        pieces
            .iter()
            .for_each(|p| r.push(Bytes::copy_from_slice(p)));
        r
    }

    #[test]
    fn signing_pieces_signs_what_joining_them_would() {
        let signer = signer();
        let head: &[u8] = b"From: a@example.com\r\nSubject: hi\r\nTo: b@example.net\r\n";
        let cases: Vec<Vec<&[u8]>> = vec![
            // The sender's shapes: head + body, head + body in several pieces.
            vec![head, b"\r\nhello\r\n.dot\r\n"],
            vec![head, b"\r\nhello\r\n", b"--sig\r\n", b"end"],
            vec![head, b"\r\n"],
            // Other shapes are joined first.
            vec![b"From: a@example.com\r\nSubj", b"ect: hi\r\n\r\nbody\r\n"],
            vec![b"From: a@example.com\r\n\r\nbody\r\n"],
            vec![head],
        ];
        for pieces in cases {
            let mime = rope(&pieces);
            let joined = mime.to_vec();
            // Signatures carry the time in seconds: a second boundary between the two gets
            // another try; a real difference stays.
            let (mut a, mut b) = (String::new(), String::from("x"));
            for _ in 0..3 {
                a = sign_pieces(&signer, &mime).unwrap().to_header();
                b = signer.sign(&joined).unwrap().to_header();
                if a == b {
                    break;
                }
            }
            assert_eq!(a, b, "{}", String::from_utf8_lossy(&joined));
        }
    }

    #[test]
    fn the_signature_goes_in_front() {
        let keys = DkimKeys {
            signers: HashMap::from([("example.com".to_string(), signer())]),
        };
        let mime = rope(&[b"From: a@example.com\r\n", b"\r\nhi\r\n"]);
        let signed = keys.sign("Example.COM", mime.clone()).unwrap();
        assert!(signed.to_vec().starts_with(b"DKIM-Signature: "));
        assert!(signed.to_vec().ends_with(&mime.to_vec()));
        assert_eq!(keys.sign("other.example", mime.clone()).unwrap(), mime);
    }
}
