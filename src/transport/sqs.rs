//! The `sqs` transport, for a downstream sender such as a Lambda: the MIME is stored in S3 and
//! the submission record — envelope, tags, the object's location, never the MIME — is sent to
//! an SQS queue. The queue message is the hand-off: the S3 object is written first, so a
//! consumer never sees a record whose MIME is missing.

use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_types::body::SdkBody;

use super::aws::{aws_config, delivery_for, Class};
use super::{Delivery, OutboundMessage, SendFuture, Transport};
use crate::config::SqsConfig;

pub struct SqsTransport {
    s3: aws_sdk_s3::Client,
    sqs: aws_sdk_sqs::Client,
    config: SqsConfig,
}

impl SqsTransport {
    pub async fn new(config: SqsConfig) -> SqsTransport {
        let shared = aws_config(config.region.as_deref(), config.timeout_secs).await;
        let s3_config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(config.s3_force_path_style)
            .build();
        SqsTransport {
            s3: aws_sdk_s3::Client::from_conf(s3_config),
            sqs: aws_sdk_sqs::Client::new(&shared),
            config,
        }
    }

    async fn hand_off(&self, message: &OutboundMessage) -> Delivery {
        let key = format!("{}{}.eml", self.config.key_prefix, message.job.id);
        let put = self
            .s3
            .put_object()
            .bucket(&self.config.bucket)
            .key(&key)
            .content_type("message/rfc822")
            // The pieces as they are, not joined into one more copy of the message.
            .content_length(message.mime.len() as i64)
            .body(ByteStream::new(SdkBody::retryable({
                let mime = message.mime.clone();
                move || SdkBody::from_body_1_x(mime.body())
            })))
            .send()
            .await;
        if let Err(e) = put {
            return delivery_for(&e, classify);
        }
        let tags: serde_json::Map<String, serde_json::Value> = message
            .tags
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        let record = serde_json::json!({
            "submission_id": message.job.id.to_string(),
            "mail_from": message.mail_from,
            "recipients": message.recipients,
            "message_class": message.job.message_class,
            "configuration_set": message.configuration_set,
            "tags": tags,
            "size": message.mime.len(),
            "s3": { "bucket": self.config.bucket, "key": key },
        });
        let sent = self
            .sqs
            .send_message()
            .queue_url(&self.config.queue_url)
            .message_body(record.to_string())
            .send()
            .await;
        match sent {
            Ok(out) => Delivery::Sent {
                provider_id: out.message_id().unwrap_or_default().to_string(),
            },
            Err(e) => delivery_for(&e, classify),
        }
    }
}

impl Transport for SqsTransport {
    fn name(&self) -> &'static str {
        "sqs"
    }

    fn send(&self, message: Arc<OutboundMessage>) -> SendFuture<'_> {
        Box::pin(async move { self.hand_off(&message).await })
    }
}

/// S3 and SQS errors. A missing bucket or queue, or refused credentials, stop every message
/// alike: park the queue rather than fail or dead-letter everything.
pub fn classify(code: Option<&str>, status: Option<u16>) -> Class {
    match code {
        Some(
            "SlowDown"
            | "RequestThrottled"
            | "ThrottlingException"
            | "Throttling"
            | "RequestTimeout"
            | "InternalError"
            | "ServiceUnavailable"
            | "KmsThrottled",
        ) => Class::Retry,
        Some(
            "NoSuchBucket"
            | "AccessDenied"
            | "AccessDeniedException"
            | "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "ExpiredToken"
            | "QueueDoesNotExist"
            | "AWS.SimpleQueueService.NonExistentQueue"
            | "InvalidClientTokenId"
            | "KmsDisabled",
        ) => Class::Pause,
        Some("EntityTooLarge" | "InvalidMessageContents" | "InvalidParameterValue") => {
            Class::Reject
        }
        Some(_) => match status {
            Some(429) | Some(500..=599) | None => Class::Retry,
            Some(_) => Class::Reject,
        },
        // No error code: an answer that is not AWS's (a proxy, a truncated 2xx) says nothing
        // about the message, so only an explicit code may be permanent (as for SES).
        None => Class::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        use Class::*;
        let table: &[(Option<&str>, Option<u16>, Class)] = &[
            (Some("SlowDown"), Some(503), Retry),
            (None, Some(500), Retry),
            (Some("NoSuchBucket"), Some(404), Pause),
            (
                Some("AWS.SimpleQueueService.NonExistentQueue"),
                Some(400),
                Pause,
            ),
            (Some("QueueDoesNotExist"), Some(400), Pause),
            (Some("AccessDenied"), Some(403), Pause),
            (Some("InvalidMessageContents"), Some(400), Reject),
            (Some("Unknown"), Some(400), Reject),
            (None, Some(200), Retry),
            (None, Some(404), Retry),
        ];
        for (code, status, want) in table {
            assert_eq!(classify(*code, *status), *want, "{code:?} {status:?}");
        }
    }
}
