//! The alternative feedback path: SES → SNS → an SQS queue that Outbox long-polls, for
//! operators who cannot expose an HTTPS endpoint. Each body goes through the same
//! [`FeedbackService`] as an HTTPS POST: an SNS envelope is verified exactly like one (topic
//! allow-list, certificate host rule, signature, freshness); with raw message delivery the body
//! is the SES event itself, trusted because only principals allowed by the queue policy can
//! write to the queue.
//!
//! An SNS envelope read here may be hours or days old (SNS→SQS delivery retries for days; the
//! queue keeps messages up to 14 days): the HTTPS replay window does not apply, only the
//! queue's retention bound (see [`Via::Sqs`]). A message is deleted once it was applied (after
//! the spool's commit), or when it can never be applied (malformed, forged); anything that
//! might pass later — storage, a certificate fetch, a topic not configured yet, our clock —
//! leaves it in the queue, to come back after the visibility timeout (and, past the queue's
//! redrive policy, in its dead-letter queue): deleting it would lose a bounce or complaint
//! and its suppression.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::service::{FeedbackService, Via};
use crate::config::FeedbackSqsConfig;
use crate::transport::aws::aws_config;

/// Waits between failed ReceiveMessage calls, doubling up to the maximum.
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

pub async fn poll(
    config: FeedbackSqsConfig,
    service: Arc<FeedbackService>,
    mut stop: watch::Receiver<bool>,
) {
    let shared = aws_config(config.region.as_deref(), config.wait_secs + 30).await;
    let client = aws_sdk_sqs::Client::new(&shared);
    let mut backoff = BACKOFF_START;
    tracing::info!(queue = %config.queue_url, raw = config.raw_message_delivery, "polling SQS for SES feedback");
    loop {
        let receive = client
            .receive_message()
            .queue_url(&config.queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(config.wait_secs as i32)
            .send();
        let received = tokio::select! {
            r = receive => r,
            _ = crate::http::stopped(&mut stop) => return,
        };
        let messages = match received {
            Ok(out) => {
                backoff = BACKOFF_START;
                out.messages.unwrap_or_default()
            }
            Err(e) => {
                tracing::warn!(
                    error = %aws_sdk_sqs::error::DisplayErrorContext(&e),
                    retry_in = ?backoff,
                    "receiving SES feedback from SQS failed"
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = crate::http::stopped(&mut stop) => return,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        for message in messages {
            let body = message.body.as_deref().unwrap_or_default();
            let result = if config.raw_message_delivery {
                let dedupe = message.message_id.as_ref().map(|id| format!("sqs:{id}"));
                let result = service.event(dedupe, body).await;
                service.count(&result);
                result
            } else {
                service.sns(body.as_bytes(), None, Via::Sqs).await
            };
            let delete = match &result {
                Ok(_) => true,
                Err(e) if e.is_final() => {
                    tracing::warn!(error = %e, message_id = ?message.message_id, "SQS feedback message refused and deleted");
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, reason = e.label(), message_id = ?message.message_id, "SQS feedback message kept for a retry");
                    false
                }
            };
            if let (true, Some(receipt)) = (delete, message.receipt_handle.as_deref()) {
                if let Err(e) = client
                    .delete_message()
                    .queue_url(&config.queue_url)
                    .receipt_handle(receipt)
                    .send()
                    .await
                {
                    // It comes back after the visibility timeout; the dedupe table skips it.
                    tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "deleting an SQS feedback message failed");
                }
            }
        }
    }
}
