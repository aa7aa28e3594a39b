//! Amazon SNS HTTP(S) message authentication.
//!
//! Two steps, so the network fetch sits between them and only happens for messages that passed
//! every offline check:
//!
//! 1. [`Verifier::parse`] parses the JSON body, checks the topic ARN against the allow-list, the
//!    signing-certificate URL with [`cert_url_allowed`] (no SSRF: nothing outside
//!    `https://sns.<region>.amazonaws.com[.cn]/<name>.pem` is ever fetched), the `SubscribeURL` host,
//!    and the timestamp's freshness against the verifier's [`Clock`].
//! 2. [`Verifier::verify`] takes the PEM fetched from [`SnsMessage::signing_cert_url`], checks the
//!    certificate's validity period and subject CN at an injected `now`, verifies the RSA signature
//!    (SignatureVersion 1 = SHA1withRSA, 2 = SHA256withRSA) over the canonical string-to-sign, and
//!    checks freshness again at the same `now`.
//!
//! The certificate chain is not validated here: the certificate is trusted because it was fetched
//! over HTTPS (WebPKI-verified by the caller's client) from an allowed SNS host.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::clock::{Clock, SystemClock};

/// How far in the future a message timestamp may be (clock skew between SNS and us).
pub const MAX_FUTURE_SKEW_SECS: i64 = 300;

/// The JSON body is refused above this size (SNS messages are at most 256 KiB plus envelope).
pub const MAX_BODY_BYTES: usize = 512 * 1024;

/// Why an SNS message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnsError {
    #[error("malformed SNS message: {0}")]
    Malformed(String),
    #[error("SNS topic not allowed: {0}")]
    TopicNotAllowed(String),
    #[error("SNS URL not allowed: {0}")]
    BadCertUrl(String),
    #[error("SNS message timestamp outside the accepted window")]
    Stale,
    /// Timestamped ahead of our clock by more than the allowed skew: it may verify later.
    #[error("SNS message timestamp is ahead of this server's clock")]
    Early,
    #[error("SNS message signature does not verify")]
    BadSignature,
    #[error("SNS signing certificate rejected: {0}")]
    BadCertificate(String),
}

/// The SNS message type (`Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Notification,
    SubscriptionConfirmation,
    UnsubscribeConfirmation,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Notification => "Notification",
            Kind::SubscriptionConfirmation => "SubscriptionConfirmation",
            Kind::UnsubscribeConfirmation => "UnsubscribeConfirmation",
        }
    }
}

/// A parsed SNS message. Field values are exactly the (signed) strings from the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnsMessage {
    pub kind: Kind,
    pub message_id: String,
    pub topic_arn: String,
    pub message: String,
    pub subject: Option<String>,
    /// The `Timestamp` as Unix seconds.
    pub timestamp: i64,
    /// The `Timestamp` string as sent (it is part of the string-to-sign).
    pub timestamp_raw: String,
    pub signature_version: u8,
    pub signature: Vec<u8>,
    pub signing_cert_url: String,
    pub subscribe_url: Option<String>,
    pub unsubscribe_url: Option<String>,
    pub token: Option<String>,
}

impl SnsMessage {
    /// The canonical string the signature covers (AWS "Verifying the signatures of Amazon SNS
    /// messages"): `Key\nValue\n` pairs in a fixed order.
    pub fn string_to_sign(&self) -> String {
        let mut s = String::with_capacity(self.message.len() + 256);
        let mut add = |k: &str, v: &str| {
            s.push_str(k);
            s.push('\n');
            s.push_str(v);
            s.push('\n');
        };
        match self.kind {
            Kind::Notification => {
                add("Message", &self.message);
                add("MessageId", &self.message_id);
                if let Some(subject) = &self.subject {
                    add("Subject", subject);
                }
                add("Timestamp", &self.timestamp_raw);
                add("TopicArn", &self.topic_arn);
                add("Type", self.kind.as_str());
            }
            Kind::SubscriptionConfirmation | Kind::UnsubscribeConfirmation => {
                add("Message", &self.message);
                add("MessageId", &self.message_id);
                add("SubscribeURL", self.subscribe_url.as_deref().unwrap_or(""));
                add("Timestamp", &self.timestamp_raw);
                add("Token", self.token.as_deref().unwrap_or(""));
                add("TopicArn", &self.topic_arn);
                add("Type", self.kind.as_str());
            }
        }
        s
    }

    /// The key a delivered notification is recorded under so it is applied once: a digest of the
    /// signed content (the string-to-sign), not the `MessageId` alone, so a retry of the same
    /// message is a duplicate whatever id it carries, and no other message can claim its id.
    pub fn dedupe_key(&self) -> String {
        let digest =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, self.string_to_sign().as_bytes());
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("sns:{hex}")
    }
}

/// Checks SNS messages against the configured topics, age limit and clock.
pub struct Verifier {
    topics: Vec<String>,
    max_age: Duration,
    clock: Arc<dyn Clock>,
}

impl Verifier {
    /// A verifier accepting only `topics` (exact ARNs) and messages at most `max_age` old, using
    /// the system clock for [`Verifier::parse`].
    pub fn new(topics: Vec<String>, max_age: Duration) -> Self {
        Self {
            topics,
            max_age,
            clock: Arc::new(SystemClock),
        }
    }

    /// The same verifier reading the time for [`Verifier::parse`] from `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Parses an SNS HTTP POST body (JSON), checks everything that needs no network, and returns
    /// the message plus the certificate URL the caller must fetch.
    pub fn parse(&self, body: &[u8]) -> Result<SnsMessage, SnsError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(SnsError::Malformed("body too large".into()));
        }
        let map: Map<String, Value> = serde_json::from_slice(body)
            .map_err(|e| SnsError::Malformed(format!("not a JSON object: {e}")))?;

        let kind = match required(&map, &["Type"])? {
            "Notification" => Kind::Notification,
            "SubscriptionConfirmation" => Kind::SubscriptionConfirmation,
            "UnsubscribeConfirmation" => Kind::UnsubscribeConfirmation,
            other => return Err(SnsError::Malformed(format!("unknown Type {other:?}"))),
        };

        // Topic first: nothing else about a message for a foreign topic matters.
        let topic_arn = required(&map, &["TopicArn"])?.to_owned();
        if !self.topics.contains(&topic_arn) {
            return Err(SnsError::TopicNotAllowed(topic_arn));
        }

        let signing_cert_url = required(&map, &["SigningCertURL", "SigningCertUrl"])?.to_owned();
        if !cert_url_allowed(&signing_cert_url) {
            return Err(SnsError::BadCertUrl(signing_cert_url));
        }

        let signature_version = match required(&map, &["SignatureVersion"])? {
            "1" => 1,
            "2" => 2,
            other => {
                return Err(SnsError::Malformed(format!(
                    "unsupported SignatureVersion {other:?}"
                )))
            }
        };
        let signature = base64::engine::general_purpose::STANDARD
            .decode(required(&map, &["Signature"])?)
            .map_err(|e| SnsError::Malformed(format!("Signature is not base64: {e}")))?;

        let message_id = required(&map, &["MessageId"])?.to_owned();
        let message = message_field(&map, &["Message"])?
            .ok_or_else(|| SnsError::Malformed("missing Message".into()))?
            .to_owned();
        let timestamp_raw = required(&map, &["Timestamp"])?.to_owned();
        let timestamp = parse_timestamp(&timestamp_raw)
            .ok_or_else(|| SnsError::Malformed(format!("bad Timestamp {timestamp_raw:?}")))?;
        let subject = optional(&map, &["Subject"])?.map(str::to_owned);
        let unsubscribe_url =
            optional(&map, &["UnsubscribeURL", "UnsubscribeUrl"])?.map(str::to_owned);

        let (subscribe_url, token) = match kind {
            Kind::Notification => (None, None),
            Kind::SubscriptionConfirmation | Kind::UnsubscribeConfirmation => {
                let url = required(&map, &["SubscribeURL", "SubscribeUrl"])?.to_owned();
                // The caller GETs this URL to confirm: same SSRF rule for the host.
                if !sns_https_url(&url) {
                    return Err(SnsError::BadCertUrl(url));
                }
                (Some(url), Some(required(&map, &["Token"])?.to_owned()))
            }
        };

        let msg = SnsMessage {
            kind,
            message_id,
            topic_arn,
            message,
            subject,
            timestamp,
            timestamp_raw,
            signature_version,
            signature,
            signing_cert_url,
            subscribe_url,
            unsubscribe_url,
            token,
        };
        let now = (self.clock.now_ms() / 1000) as i64;
        self.check_fresh(&msg, now)?;
        Ok(msg)
    }

    /// Verifies the signature with the PEM certificate fetched from `message.signing_cert_url`,
    /// checking the certificate's validity at `now_unix` and that its subject CN is
    /// `sns.amazonaws.com` (or `sns.<region>.amazonaws.com[.cn]`), then the message's freshness at
    /// the same `now_unix`.
    pub fn verify(
        &self,
        message: &SnsMessage,
        cert_pem: &[u8],
        now_unix: i64,
    ) -> Result<(), SnsError> {
        // Re-check what parse checked: a caller may build or alter an SnsMessage by hand.
        if !self.topics.contains(&message.topic_arn) {
            return Err(SnsError::TopicNotAllowed(message.topic_arn.clone()));
        }
        if !cert_url_allowed(&message.signing_cert_url) {
            return Err(SnsError::BadCertUrl(message.signing_cert_url.clone()));
        }

        let der = first_certificate_der(cert_pem)?;
        let (rest, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| SnsError::BadCertificate(format!("unparsable certificate: {e}")))?;
        if !rest.is_empty() {
            return Err(SnsError::BadCertificate(
                "trailing data after certificate".into(),
            ));
        }
        let validity = cert.validity();
        let (not_before, not_after) = (
            validity.not_before.timestamp(),
            validity.not_after.timestamp(),
        );
        if now_unix < not_before || now_unix > not_after {
            return Err(SnsError::BadCertificate(format!(
                "not valid at {now_unix} (valid {not_before}..{not_after})"
            )));
        }
        let mut cns = cert.subject().iter_common_name();
        let cn = match (cns.next(), cns.next()) {
            (Some(cn), None) => cn
                .as_str()
                .map_err(|_| SnsError::BadCertificate("subject CN is not a string".into()))?,
            _ => {
                return Err(SnsError::BadCertificate(
                    "subject must have exactly one CN".into(),
                ))
            }
        };
        if !sns_cert_cn_allowed(cn) {
            return Err(SnsError::BadCertificate(format!(
                "subject CN {cn:?} is not SNS"
            )));
        }

        let spki = cert.public_key();
        if spki.algorithm.algorithm != x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION {
            return Err(SnsError::BadCertificate("public key is not RSA".into()));
        }
        // PKCS#1 RSAPublicKey, the BIT STRING contents of the SubjectPublicKeyInfo.
        let public_key = spki.subject_public_key.data.as_ref();
        let algorithm: &'static dyn aws_lc_rs::signature::VerificationAlgorithm =
            match message.signature_version {
                1 => &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
                2 => &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
                v => {
                    return Err(SnsError::Malformed(format!(
                        "unsupported SignatureVersion {v}"
                    )))
                }
            };
        aws_lc_rs::signature::UnparsedPublicKey::new(algorithm, public_key)
            .verify(message.string_to_sign().as_bytes(), &message.signature)
            .map_err(|_| SnsError::BadSignature)?;

        self.check_fresh(message, now_unix)
    }

    fn check_fresh(&self, message: &SnsMessage, now_unix: i64) -> Result<(), SnsError> {
        let max_age = i64::try_from(self.max_age.as_secs()).unwrap_or(i64::MAX);
        let age = now_unix.saturating_sub(message.timestamp);
        if age < -MAX_FUTURE_SKEW_SECS {
            return Err(SnsError::Early);
        }
        if age > max_age {
            return Err(SnsError::Stale);
        }
        Ok(())
    }
}

/// The value of the first key present among `keys` (alternative spellings), which must be a string
/// without a line break.
///
/// The string-to-sign joins keys and values with `\n`, so a value holding a newline could carry
/// another field's `Key\nValue` pair: an authentic message re-sent without its `Subject` and with
/// `MessageId = id + "\nSubject\n" + subject` would verify again under a new id. AWS never sends
/// a line break in these fields (`Subject`: "must not include line breaks or control characters",
/// SNS Publish API reference); only `Message` may hold one, and it is read with [`message_field`].
fn optional<'a>(map: &'a Map<String, Value>, keys: &[&str]) -> Result<Option<&'a str>, SnsError> {
    let value = message_field(map, keys)?;
    if value.is_some_and(|v| v.contains(['\n', '\r'])) {
        return Err(SnsError::Malformed(format!(
            "{} contains a line break",
            keys[0]
        )));
    }
    Ok(value)
}

/// Like [`optional`], for the one field whose value may span lines (`Message`: an SES event is
/// JSON, which SNS passes through as sent).
fn message_field<'a>(
    map: &'a Map<String, Value>,
    keys: &[&str],
) -> Result<Option<&'a str>, SnsError> {
    let mut found = None;
    for key in keys {
        if let Some(v) = map.get(*key) {
            if found.is_some() {
                return Err(SnsError::Malformed(format!("{} given twice", keys[0])));
            }
            found = Some(
                v.as_str()
                    .ok_or_else(|| SnsError::Malformed(format!("{key} is not a string")))?,
            );
        }
    }
    Ok(found)
}

fn required<'a>(map: &'a Map<String, Value>, keys: &[&str]) -> Result<&'a str, SnsError> {
    optional(map, keys)?.ok_or_else(|| SnsError::Malformed(format!("missing {}", keys[0])))
}

/// The DER of the first `CERTIFICATE` block in `pem`.
fn first_certificate_der(pem: &[u8]) -> Result<Vec<u8>, SnsError> {
    let mut reader = pem;
    let first = rustls_pemfile::certs(&mut reader).next();
    match first {
        Some(Ok(der)) => Ok(der.as_ref().to_vec()),
        Some(Err(e)) => Err(SnsError::BadCertificate(format!("bad PEM: {e}"))),
        None => Err(SnsError::BadCertificate("no certificate in PEM".into())),
    }
}

/// Parses an SNS timestamp (`2022-07-28T21:23:58.317Z`, RFC 3339 in UTC) to Unix seconds.
pub(crate) fn parse_timestamp(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, min, sec) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    let tail = &b[19..];
    let tail = match tail.first() {
        Some(b'.') => {
            let n = tail[1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if n == 0 {
                return None;
            }
            &tail[1 + n..]
        }
        _ => tail,
    };
    if tail != b"Z"
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || min > 59
        || sec > 60
    {
        return None;
    }
    // Days from civil (Howard Hinnant), proleptic Gregorian.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + min * 60 + sec)
}

/// `sns.<region>.amazonaws.com` or `sns.<region>.amazonaws.com.cn`, region `[a-z0-9-]+`.
fn sns_host_allowed(host: &str) -> bool {
    let Some(rest) = host.strip_prefix("sns.") else {
        return false;
    };
    let region = rest
        .strip_suffix(".amazonaws.com")
        .or_else(|| rest.strip_suffix(".amazonaws.com.cn"));
    match region {
        Some(r) => {
            !r.is_empty()
                && !r.starts_with('-')
                && !r.ends_with('-')
                && r.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                // An IP-looking "region" cannot occur (no dots), but insist on a letter anyway.
                && r.bytes().any(|c| c.is_ascii_lowercase())
        }
        None => false,
    }
}

/// The certificate's subject CN: `sns.amazonaws.com` or an allowed regional SNS host.
fn sns_cert_cn_allowed(cn: &str) -> bool {
    cn == "sns.amazonaws.com" || sns_host_allowed(cn)
}

/// Splits `https://host/rest` strictly: lower-case scheme, a bare allowed SNS host (no userinfo,
/// port, IP, percent-escapes or backslashes), and returns the part after the host.
fn sns_https_rest(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("https://")?;
    if rest.bytes().any(|c| c <= b' ' || c == b'\\' || c >= 0x7f) {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (host, tail) = rest.split_at(end);
    if !sns_host_allowed(host) {
        return None;
    }
    Some(tail)
}

/// An `https` URL on an allowed SNS host with a path (used for `SubscribeURL`).
fn sns_https_url(url: &str) -> bool {
    matches!(sns_https_rest(url), Some(tail) if tail.starts_with('/'))
}

/// Whether a `SubscribeURL` may be visited: `https` on an allowed SNS host, with a path.
pub fn subscribe_url_allowed(url: &str) -> bool {
    sns_https_url(url)
}

/// Whether a `SigningCertURL` may be fetched: `https`, host `sns.<region>.amazonaws.com` (or
/// `.com.cn`), no userinfo or port, and a path of one segment `[A-Za-z0-9._-]+` ending in `.pem`,
/// with no query or fragment.
pub fn cert_url_allowed(url: &str) -> bool {
    let Some(tail) = sns_https_rest(url) else {
        return false;
    };
    let Some(name) = tail.strip_prefix('/') else {
        return false;
    };
    name.len() > 4
        && name.ends_with(".pem")
        && !name.contains("..")
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
}

#[cfg(test)]
mod tests;
