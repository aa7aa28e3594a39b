//! What the AWS-backed transports share: turning an SDK error into a [`Delivery`] through a
//! service's own table of error codes.

use aws_sdk_sesv2::config::http::HttpResponse;
use aws_sdk_sesv2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

use super::Delivery;

/// Loads the shared AWS configuration the way every AWS transport does: the standard chain,
/// SDK retries off (the spool retries), bounded call time.
pub async fn aws_config(region: Option<&str>, timeout_secs: u64) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(timeout_secs))
                .connect_timeout(Duration::from_secs(10))
                .build(),
        );
    if let Some(region) = region {
        loader = loader.region(Region::new(region.to_string()));
    }
    loader.load().await
}

/// How a failed AWS call is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Temporary: back into the queue with backoff.
    Retry,
    /// Permanent: the submission fails with the reason.
    Reject,
    /// Nothing can be sent now (sending paused, endpoint unreachable, credentials refused): park
    /// the queue without spending attempts until a probe succeeds.
    Pause,
}

pub fn delivery_for<E>(
    err: &SdkError<E, HttpResponse>,
    classify: fn(Option<&str>, Option<u16>) -> Class,
) -> Delivery
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (class, reason) = match err {
        SdkError::ServiceError(service) => {
            let code = err.code();
            let status = service.raw().status().as_u16();
            let reason = match code {
                Some(code) => format!(
                    "{code} (HTTP {status}): {}",
                    err.message().unwrap_or("no message")
                ),
                // E.g. a 2xx whose body is truncated or not the service's: it may or may not
                // have been acted on.
                None => {
                    format!("HTTP {status} answer without an AWS error code that could not be read")
                }
            };
            (classify(code, Some(status)), reason)
        }
        // No connection at all (refused, DNS): nothing will go until the endpoint is back.
        // A timeout or a connection dropped mid-call may be one bad call: retry that.
        // The SDK's error chain (hosts, sockets, OS errors) goes to the log; the record,
        // which a JMAP client reads as smtpReply, gets a short text.
        SdkError::DispatchFailure(failure) if failure.is_io() => {
            (Class::Pause, "AWS endpoint unreachable".to_string())
        }
        SdkError::ConstructionFailure(_) => (
            Class::Reject,
            "the AWS request could not be built".to_string(),
        ),
        SdkError::TimeoutError(_) => (Class::Retry, "the AWS call timed out".to_string()),
        SdkError::ResponseError(_) => (
            Class::Retry,
            "AWS answered with a response that could not be read".to_string(),
        ),
        _ => (Class::Retry, "the AWS call failed".to_string()),
    };
    if !matches!(err, SdkError::ServiceError(_)) {
        tracing::warn!(error = %DisplayErrorContext(err), %reason, "AWS call failed");
    }
    match class {
        Class::Retry => Delivery::Retry {
            reason,
            after: None,
        },
        Class::Reject => Delivery::Reject { reason },
        Class::Pause => Delivery::Unavailable { reason },
    }
}
