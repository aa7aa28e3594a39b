//! The `ses` transport: Amazon SES v2 `SendEmail` with raw content.
//!
//! The envelope recipients go in an explicit `Destination` (SES would otherwise take them from
//! the headers, and the stripped Bcc recipients would be lost). Tags ride along as `EmailTags`
//! so feedback events can find their submission. The SDK's own retries are off: the spool owns
//! retrying, and every SES error is classified once, in [`classify`].

use std::sync::atomic::Ordering;
use std::sync::Arc;

use aws_sdk_sesv2::error::DisplayErrorContext;
use aws_sdk_sesv2::primitives::Blob;
use aws_sdk_sesv2::types::{Destination, EmailContent, MessageTag, RawMessage};
use aws_sdk_sesv2::Client;

use super::aws::{aws_config, delivery_for, Class};
use super::ses_body::{StreamRawMessage, PLACEHOLDER};
use super::{Delivery, OutboundMessage, SendFuture, Transport};
use crate::config::SesConfig;

/// SES v2 accepts at most 50 destinations per `SendEmail`.
pub const MAX_DESTINATIONS: usize = 50;

/// Fallback pace when `GetAccount` cannot be read: the SES sandbox's 1 message per second.
const FALLBACK_SEND_RATE: f64 = 1.0;

pub struct SesTransport {
    client: Client,
    config: SesConfig,
    /// Where SES's `Message-ID`s live (see [`message_id_domain`]).
    message_id_domain: String,
    /// The message is written into the request as it is sent (`ses_body`); false sends it the
    /// SDK's way (the fallback, and the reference the tests compare with).
    stream_body: bool,
    /// Messages that went the SDK's way because the placeholder was not found.
    fallbacks: std::sync::atomic::AtomicU64,
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
            stream_body: true,
            fallbacks: Default::default(),
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

    async fn send_email(&self, message: &OutboundMessage) -> Delivery {
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
        // The message goes into the request's body as it is sent (see `ses_body`); should the
        // SDK one day serialize the request otherwise, it goes the SDK's way.
        let streamed = match self.stream_body {
            true => request(PLACEHOLDER.to_vec()).ok(),
            false => None,
        };
        let result = match streamed {
            Some(operation) => {
                let stream = StreamRawMessage::new(&message.mime);
                let failed = Arc::clone(&stream.failed);
                match operation.customize().interceptor(stream).send().await {
                    Err(_) if failed.load(Ordering::Relaxed) => {
                        self.fallbacks.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(id = %message.job.id, "the SES request had no placeholder to replace; sending it the SDK's way");
                        None
                    }
                    result => Some(result),
                }
            }
            None => None,
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

impl Transport for SesTransport {
    fn name(&self) -> &'static str {
        "ses"
    }

    fn visible_message_id(&self, provider_id: &str) -> Option<String> {
        Some(format!("<{provider_id}@{}>", self.message_id_domain))
    }

    fn send(&self, message: Arc<OutboundMessage>) -> SendFuture<'_> {
        Box::pin(async move { self.send_email(&message).await })
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
    use aws_sdk_sesv2::config::Credentials;
    use base64::prelude::{Engine, BASE64_STANDARD};

    use super::*;
    use crate::rope::Rope;

    /// Records each request it gets and answers as SES does. Home-made because no real peer
    /// here checks SigV4 (moto_server does not): the test checks it instead, as AWS would.
    async fn capture_server() -> (
        String,
        tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    ) {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    loop {
                        let mut head = String::new();
                        loop {
                            let mut line = String::new();
                            if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            head.push_str(&line);
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                let (name, value) = l.split_once(':')?;
                                name.eq_ignore_ascii_case("content-length")
                                    .then(|| value.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        let mut body = vec![0; len];
                        stream.read_exact(&mut body).await.unwrap();
                        let _ = tx.send((head, body));
                        let answer = r#"{"MessageId":"0100-captured"}"#;
                        let reply = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}", answer.len());
                        stream.get_mut().write_all(reply.as_bytes()).await.unwrap();
                    }
                });
            }
        });
        (url, rx)
    }

    /// Whether `head`'s SigV4 `Authorization` is the signature of the request with `body`, for
    /// the test credentials: what SES checks before it reads anything.
    fn signature_holds(head: &str, body: &[u8], at: std::time::SystemTime) -> bool {
        use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
        let mut lines = head.lines();
        let request_line = lines.next().unwrap();
        let mut words = request_line.split(' ');
        let (method, path) = (words.next().unwrap(), words.next().unwrap());
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let authorization = header("authorization").unwrap();
        let signed: Vec<&str> = authorization
            .split("SignedHeaders=")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .split(';')
            .collect();
        // The signer writes x-amz-date itself, from `at`.
        let to_sign: Vec<(&str, &str)> = headers
            .iter()
            .filter(|(n, _)| signed.contains(&n.as_str()) && n != "x-amz-date")
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let uri = format!("http://{}{path}", header("host").unwrap());
        let identity = Credentials::new("AKIDTEST", "secret", None, None, "test").into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("ses")
            .time(at)
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let request =
            SignableRequest::new(method, uri, to_sign.into_iter(), SignableBody::Bytes(body))
                .unwrap();
        let (_, signature) = sign(request, &params).unwrap().into_parts();
        authorization.ends_with(&format!("Signature={signature}"))
    }

    fn transport(endpoint: &str, at: std::time::SystemTime, streamed: bool) -> SesTransport {
        let conf = aws_sdk_sesv2::Config::builder()
            .behavior_version(aws_sdk_sesv2::config::BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(aws_sdk_sesv2::config::Region::new("us-east-1"))
            .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
            .time_source(aws_smithy_async::time::StaticTimeSource::new(at))
            .retry_config(aws_sdk_sesv2::config::retry::RetryConfig::disabled())
            .build();
        SesTransport {
            client: Client::from_conf(conf),
            config: toml::from_str("").unwrap(),
            message_id_domain: "email.amazonses.com".into(),
            stream_body: streamed,
            fallbacks: Default::default(),
        }
    }

    fn outbound(mime: Rope) -> Arc<OutboundMessage> {
        let mut message = crate::transport::test_message(&["b@example.net"], mime);
        message.tags = vec![("submission_id".into(), "x".into())];
        message.configuration_set = Some("set".into());
        Arc::new(message)
    }

    #[tokio::test]
    async fn the_streamed_body_is_what_the_sdk_would_send_and_its_signature_holds() {
        let (url, mut requests) = capture_server().await;
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        // Pieces as the sender builds them, not multiples of 3, one spanning several frames.
        let mut mime = Rope::new();
        mime.push(bytes::Bytes::from_static(
            b"From: alice@example.com\r\nSubject: hi\r\n",
        ));
        mime.push(bytes::Bytes::from(
            (0..200_000)
                .map(|i| b"\r\nabcdefghij"[i % 12])
                .collect::<Vec<u8>>(),
        ));
        mime.push(bytes::Bytes::from_static(b"-- \r\nAlice\r\n"));
        let mut got = Vec::new();
        for streamed in [true, false] {
            let ses = transport(&url, at, streamed);
            let sent = ses.send(outbound(mime.clone())).await;
            assert_eq!(
                sent,
                Delivery::Sent {
                    provider_id: "0100-captured".into()
                }
            );
            assert_eq!(ses.fallbacks.load(Ordering::Relaxed), 0);
            let (head, body) = requests.recv().await.unwrap();
            assert!(
                signature_holds(&head, &body, at),
                "streamed {streamed}: {head}"
            );
            // A signature over another body must not hold (the check can fail).
            let mut other = body.clone();
            *other.last_mut().unwrap() ^= 1;
            assert!(!signature_holds(&head, &other, at));
            got.push((head, body));
        }
        // The same JSON as the SDK's own serialization, octet for octet.
        assert_eq!(got[0].1, got[1].1);
        let json: serde_json::Value = serde_json::from_slice(&got[0].1).unwrap();
        let data = json["Content"]["Raw"]["Data"].as_str().unwrap();
        assert_eq!(BASE64_STANDARD.decode(data).unwrap(), mime.to_vec());
        assert!(got[0]
            .0
            .to_ascii_lowercase()
            .contains(&format!("content-length: {}", got[0].1.len())));
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
