//! The `ses` transport: Amazon SES v2 `SendEmail` with raw content.
//!
//! The envelope recipients go in an explicit `Destination` (SES would otherwise take them from
//! the headers, and the stripped Bcc recipients would be lost). Tags ride along as `EmailTags`
//! so feedback events can find their submission. The SDK's own retries are off: the spool owns
//! retrying, and every SES error is classified once, in [`classify`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use base64::Engine;

use aws_sdk_sesv2::config::http::HttpRequest;
use aws_sdk_sesv2::error::DisplayErrorContext;
use aws_sdk_sesv2::primitives::Blob;
use aws_sdk_sesv2::types::{Destination, EmailContent, MessageTag, RawMessage};
use aws_sdk_sesv2::Client;
use aws_smithy_types::body::SdkBody;

use super::aws::{aws_config, delivery_for, Class};
use super::{Delivery, OutboundMessage, SendFuture, Transport};
use crate::config::SesConfig;
use crate::rope::Rope;

/// SES v2 accepts at most 50 destinations per `SendEmail`.
pub const MAX_DESTINATIONS: usize = 50;

/// Fallback pace when `GetAccount` cannot be read: the SES sandbox's 1 message per second.
const FALLBACK_SEND_RATE: f64 = 1.0;

pub struct SesTransport {
    client: Client,
    config: SesConfig,
    /// Where SES's `Message-ID`s live (see [`message_id_domain`]).
    message_id_domain: String,
}

/// The domain of the `Message-ID` SES gives each message it sends, replacing the message's
/// own ("If you provide a Message-ID header, Amazon SES overrides the header with its own
/// value", SES Developer Guide, "Amazon SES header fields"): `<MessageId@DOMAIN>`. The guide
/// does not spell the domain out; received mail shows `email.amazonses.com` for us-east-1 and
/// `<region>.amazonses.com` elsewhere, so that is the default, and `message_id_domain` in the
/// config overrides it.
pub fn message_id_domain(region: Option<&str>) -> String {
    match region {
        None | Some("us-east-1") => "email.amazonses.com".into(),
        Some(region) => format!("{region}.amazonses.com"),
    }
}

impl SesTransport {
    /// Builds the client from the standard AWS chain (region, credentials, `AWS_ENDPOINT_URL`).
    pub async fn new(config: SesConfig) -> SesTransport {
        let shared = aws_config(config.region.as_deref(), config.timeout_secs).await;
        let message_id_domain = config
            .message_id_domain
            .clone()
            .unwrap_or_else(|| message_id_domain(shared.region().map(|r| r.as_ref())));
        SesTransport {
            client: Client::new(&shared),
            config,
            message_id_domain,
        }
    }

    /// Messages per second to send at: configured, or the account's `MaxSendRate`.
    pub async fn send_rate(&self) -> f64 {
        if self.config.max_send_rate > 0.0 {
            return self.config.max_send_rate;
        }
        match self.client.get_account().send().await {
            Ok(account) => match account.send_quota().map(|q| q.max_send_rate()) {
                Some(rate) if rate > 0.0 => rate,
                _ => FALLBACK_SEND_RATE,
            },
            Err(e) => {
                tracing::warn!(error = %DisplayErrorContext(&e), "GetAccount failed; pacing at {FALLBACK_SEND_RATE}/s");
                FALLBACK_SEND_RATE
            }
        }
    }

    async fn send_email(&self, message: Arc<OutboundMessage>) -> Delivery {
        if message.recipients.len() > MAX_DESTINATIONS {
            return Delivery::Reject {
                reason: format!("more than {MAX_DESTINATIONS} recipients for one SES SendEmail"),
            };
        }
        // What was accepted left room for our additions (config::ADDITIONS_RESERVE), but a
        // part re-encoded to carry the signature can still outgrow SES's limit: say so here
        // rather than let SES refuse it with a less clear MessageRejected.
        let max = self.config.max_message_size;
        if message.mime.len() > max {
            return Delivery::Reject {
                reason: format!(
                    "message is {} octets once signed and traced; SES accepts at most {max}",
                    message.mime.len()
                ),
            };
        }
        // The message's tags (built-in, then the identity's), then the configured global ones
        // whose names the message does not already carry (validated at config load).
        let global = self
            .config
            .tags
            .iter()
            .filter(|(name, _)| !message.tags.iter().any(|(n, _)| n == *name));
        let tags: Result<Vec<MessageTag>, _> = message
            .tags
            .iter()
            .map(|(name, value)| (name, value))
            .chain(global)
            .map(|(name, value)| MessageTag::builder().name(name).value(value).build())
            .collect();
        let tags = match tags {
            Ok(tags) => tags,
            Err(e) => {
                return Delivery::Reject {
                    reason: format!("building the tags: {e}"),
                }
            }
        };
        let configuration_set = message
            .configuration_set
            .clone()
            .or_else(|| self.config.configuration_set.clone());
        let request = |data: Vec<u8>| {
            let raw = RawMessage::builder().data(Blob::new(data)).build()?;
            Ok::<_, aws_sdk_sesv2::error::BuildError>(
                self.client
                    .send_email()
                    .from_email_address(&message.mail_from)
                    .destination(
                        Destination::builder()
                            .set_to_addresses(Some(message.recipients.clone()))
                            .build(),
                    )
                    .content(EmailContent::builder().raw(raw).build())
                    .set_email_tags(Some(tags.clone()))
                    .set_configuration_set_name(configuration_set.clone())
                    .set_from_email_address_identity_arn(self.config.from_identity_arn.clone()),
            )
        };
        // The SDK would hold the message three times over (its `Blob`, the base64 of it, the
        // JSON it is copied into, grown by doubling). Instead it serializes a placeholder, and
        // the request's body is rebuilt, before signing, with the message's base64 written
        // straight from its pieces into a body of the right size. Should the placeholder ever
        // not be found (a new SDK encoding the body otherwise), the message goes the SDK's way.
        let spliced = (|| {
            let failed = Arc::new(AtomicBool::new(false));
            let (mime, flag) = (Arc::clone(&message), Arc::clone(&failed));
            let operation = request(PLACEHOLDER.to_vec())?.customize().map_request(
                move |mut req: HttpRequest| {
                    let body = req.body().bytes().and_then(|b| splice(b, &mime.mime));
                    let Some(body) = body else {
                        flag.store(true, Ordering::Relaxed);
                        return Err(SpliceFailed);
                    };
                    req.headers_mut()
                        .insert("content-length", body.len().to_string());
                    *req.body_mut() = SdkBody::from(body);
                    Ok(req)
                },
            );
            Ok::<_, aws_sdk_sesv2::error::BuildError>((operation, failed))
        })();
        let result = match spliced {
            Ok((operation, failed)) => match operation.send().await {
                Err(_) if failed.load(Ordering::Relaxed) => {
                    tracing::warn!(id = %message.job.id, "the SES request had no placeholder to replace; sending it the SDK's way");
                    None
                }
                result => Some(result),
            },
            Err(_) => None,
        };
        let result = match result {
            Some(result) => result,
            None => match request(message.mime.to_vec()) {
                Ok(operation) => operation.send().await,
                Err(e) => {
                    return Delivery::Reject {
                        reason: format!("building the request: {e}"),
                    }
                }
            },
        };
        match result {
            Ok(out) => match out.message_id() {
                Some(id) if !id.is_empty() => Delivery::Sent {
                    provider_id: id.to_string(),
                },
                // A 2xx that is not SES's answer (SES always returns the id): it may or may
                // not have been sent, and without the id feedback could not find it either.
                _ => Delivery::Retry {
                    reason: "SES answered without a MessageId".to_string(),
                    after: None,
                },
            },
            Err(err) => delivery_for(&err, classify),
        }
    }
}

/// What the SDK serializes in place of the message: 33 octets (no base64 padding) whose
/// base64 has a `+` and a `/`, so it cannot be any other field of the request (tags and set
/// names are `[A-Za-z0-9_-]`, addresses have an `@`).
const PLACEHOLDER: &[u8; 33] = b"\xfb\xef\xbfoutbox raw message placeholder";

#[derive(Debug)]
struct SpliceFailed;

impl std::fmt::Display for SpliceFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no message placeholder in the serialized SendEmail request")
    }
}

impl std::error::Error for SpliceFailed {}

/// `body` (the serialized request) with the placeholder's base64, a JSON string of its own,
/// replaced by the base64 of `mime`; None unless the placeholder is there exactly once.
fn splice(body: &[u8], mime: &Rope) -> Option<Vec<u8>> {
    let engine = &base64::engine::general_purpose::STANDARD;
    let needle = format!("\"{}\"", engine.encode(PLACEHOLDER));
    let needle = needle.as_bytes();
    let mut found = body
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| w == &needle)
        .map(|(i, _)| i);
    let (Some(at), None) = (found.next(), found.next()) else {
        return None;
    };
    let encoded = base64::encoded_len(mime.len(), true)?;
    let mut out = Vec::with_capacity(body.len() - needle.len() + encoded + 2);
    out.extend_from_slice(&body[..at + 1]);
    encode_pieces(mime, &mut out);
    out.extend_from_slice(&body[at + needle.len() - 1..]);
    Some(out)
}

/// Appends the base64 (standard alphabet, padded) of `mime`, encoding piece by piece: the one
/// or two octets a piece leaves over a multiple of three are joined with the next piece's.
fn encode_pieces(mime: &Rope, out: &mut Vec<u8>) {
    let engine = &base64::engine::general_purpose::STANDARD;
    let append = |bytes: &[u8], out: &mut Vec<u8>| {
        let start = out.len();
        let len = base64::encoded_len(bytes.len(), true).expect("fits: it is in memory");
        out.resize(start + len, 0);
        let written = engine
            .encode_slice(bytes, &mut out[start..])
            .expect("sized by encoded_len");
        debug_assert_eq!(written, len);
    };
    let mut carry: Vec<u8> = Vec::with_capacity(3);
    for mut piece in mime.pieces() {
        if !carry.is_empty() {
            let take = (3 - carry.len()).min(piece.len());
            carry.extend_from_slice(&piece[..take]);
            piece = &piece[take..];
            if carry.len() < 3 {
                continue;
            }
            append(&carry, out);
            carry.clear();
        }
        let whole = piece.len() / 3 * 3;
        append(&piece[..whole], out);
        carry.extend_from_slice(&piece[whole..]);
    }
    append(&carry, out);
}

impl Transport for SesTransport {
    fn name(&self) -> &'static str {
        "ses"
    }

    fn visible_message_id(&self, provider_id: &str) -> Option<String> {
        Some(format!("<{provider_id}@{}>", self.message_id_domain))
    }

    fn send(&self, message: Arc<OutboundMessage>) -> SendFuture<'_> {
        Box::pin(self.send_email(message))
    }
}

/// The one table of SES errors: by error code, then by HTTP status.
///
/// Only an error SES states explicitly (an error code in a 4xx answer) may fail a submission
/// for good. An answer without a code — a 2xx whose body the SDK cannot read (truncated, or a
/// proxy's page), a bare 4xx or 5xx from something in between — says nothing about the
/// message: SES may or may not have taken it, so it is retried. That retry is the one place a
/// duplicate can come from besides a crash between SES's answer and the spool's write (README,
/// "Delivery guarantee").
pub fn classify(code: Option<&str>, status: Option<u16>) -> Class {
    match code {
        Some(
            "TooManyRequestsException"
            | "Throttling"
            | "ThrottlingException"
            | "LimitExceededException"
            | "ServiceUnavailable"
            | "InternalFailure"
            | "InternalServerError"
            | "RequestTimeout",
        ) => Class::Retry,
        Some(
            "SendingPausedException"
            | "AccessDeniedException"
            | "UnrecognizedClientException"
            | "InvalidClientTokenId"
            | "ExpiredTokenException"
            | "InvalidSignatureException"
            | "SignatureDoesNotMatch",
        ) => Class::Pause,
        Some(
            "MessageRejected"
            | "AccountSuspendedException"
            | "BadRequestException"
            | "MailFromDomainNotVerifiedException"
            | "NotFoundException"
            | "InvalidParameterValue",
        ) => Class::Reject,
        Some(_) => match status {
            Some(429) | Some(500..=599) | None => Class::Retry,
            Some(_) => Class::Reject,
        },
        None => Class::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rope(pieces: &[&[u8]]) -> Rope {
        let mut r = Rope::new();
        pieces
            .iter()
            .for_each(|p| r.push(bytes::Bytes::copy_from_slice(p)));
        r
    }

    #[test]
    fn base64_by_pieces_is_the_base64_of_the_whole() {
        let engine = &base64::engine::general_purpose::STANDARD;
        let mime: Vec<u8> = (0..40u8).collect();
        for i in 0..=mime.len() {
            for j in i..=mime.len() {
                let mut out = Vec::new();
                encode_pieces(&rope(&[&mime[..i], &mime[i..j], &mime[j..]]), &mut out);
                assert_eq!(out, engine.encode(&mime).into_bytes(), "cut at {i} and {j}");
            }
        }
        let mut out = b"x".to_vec();
        encode_pieces(&Rope::new(), &mut out);
        assert_eq!(out, b"x");
    }

    #[test]
    fn the_placeholder_is_replaced_by_the_message() {
        let engine = &base64::engine::general_purpose::STANDARD;
        let placeholder = engine.encode(PLACEHOLDER);
        assert!(
            placeholder.contains('+') && placeholder.contains('/') && !placeholder.contains('=')
        );
        let body = format!(r#"{{"Content":{{"Raw":{{"Data":"{placeholder}"}}}},"EmailTags":[]}}"#);
        let mime = rope(&[b"Subject: x\r\n", b"\r\nhi\r\n"]);
        let spliced = splice(body.as_bytes(), &mime).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&spliced).unwrap();
        let data = json["Content"]["Raw"]["Data"].as_str().unwrap();
        assert_eq!(engine.decode(data).unwrap(), mime.to_vec());
        assert_eq!(json["EmailTags"], serde_json::json!([]));
        // Not there, or there twice: not ours to guess.
        assert_eq!(splice(br#"{"Data":"aGk="}"#, &mime), None);
        let twice = format!(r#"["{placeholder}","{placeholder}"]"#);
        assert_eq!(splice(twice.as_bytes(), &mime), None);
    }

    #[test]
    fn ses_message_ids_live_in_the_regions_amazonses_domain() {
        assert_eq!(message_id_domain(Some("us-east-1")), "email.amazonses.com");
        assert_eq!(message_id_domain(None), "email.amazonses.com");
        assert_eq!(
            message_id_domain(Some("eu-west-1")),
            "eu-west-1.amazonses.com"
        );
    }

    #[test]
    fn classification_table() {
        use Class::*;
        let table: &[(Option<&str>, Option<u16>, Class)] = &[
            (Some("TooManyRequestsException"), Some(429), Retry),
            (Some("Throttling"), Some(400), Retry),
            (Some("LimitExceededException"), Some(400), Retry),
            (Some("InternalFailure"), Some(500), Retry),
            (None, Some(503), Retry),
            (None, Some(500), Retry),
            (None, Some(429), Retry),
            (None, None, Retry),
            // A 2xx the SDK could not parse arrives as an error without a code: SES may
            // have sent it, nothing says it never will (issue 14 item 1).
            (None, Some(200), Retry),
            (None, Some(400), Retry),
            (None, Some(403), Retry),
            (Some("MessageRejected"), Some(400), Reject),
            (Some("AccountSuspendedException"), Some(400), Reject),
            (Some("BadRequestException"), Some(400), Reject),
            (
                Some("MailFromDomainNotVerifiedException"),
                Some(400),
                Reject,
            ),
            (Some("NotFoundException"), Some(404), Reject),
            (Some("SomethingNew"), Some(400), Reject),
            (Some("SomethingNew"), Some(503), Retry),
            (Some("SendingPausedException"), Some(400), Pause),
            (Some("AccessDeniedException"), Some(403), Pause),
            (Some("ExpiredTokenException"), Some(400), Pause),
        ];
        for (code, status, want) in table {
            assert_eq!(classify(*code, *status), *want, "{code:?} {status:?}");
        }
    }
}
