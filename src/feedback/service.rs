//! The one path every feedback message takes, whatever brought it (HTTPS POST, SQS, the
//! simulator): authenticate (SNS), parse the SES event, apply it to the spool in one durable
//! transaction, count it. The HTTPS handler turns the result into a status code: 2xx only
//! after the commit, 4xx for forged or malformed input (nothing stored), 5xx when storage or a
//! certificate fetch failed (SNS retries).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;

use super::fetch::{FetchError, SnsFetcher};
use super::ses::{self, SuppressionPolicy};
use super::sns::{Kind, SnsError, Verifier, MAX_BODY_BYTES};
use crate::clock::Clock;
use crate::config::FeedbackConfig;
use crate::domain::FeedbackApplied;
use crate::metrics::{Metrics, Reason};
use crate::spool::Ledger;

/// What became of an accepted message.
#[derive(Debug)]
pub enum Verdict {
    Applied(FeedbackApplied),
    Duplicate,
    /// A subscription was confirmed.
    Confirmed,
    /// Authentic, but nothing to do (an UnsubscribeConfirmation).
    Ignored,
}

impl Verdict {
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Applied(_) => "applied",
            Verdict::Duplicate => "duplicate",
            Verdict::Confirmed => "subscription_confirmed",
            Verdict::Ignored => "ignored",
        }
    }
}

/// Why a message was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Not an SNS message, or not an SES event: the sender must not retry.
    #[error("{0}")]
    Malformed(String),
    /// Forged, replayed or from a host we do not trust: it will never be accepted.
    #[error("{0}")]
    Forbidden(String),
    /// Refused now for a reason that can change while the message does not: a topic not (yet)
    /// in `feedback.topics`, a timestamp ahead of our clock. HTTPS answers 403 as for
    /// Forbidden; a queued (SQS) copy is kept for a later receive.
    #[error("{0}")]
    NotYet(String),
    /// Could not fetch the certificate or confirm the subscription: try again later.
    #[error("{0}")]
    Unavailable(String),
    /// The spool could not store it: try again later.
    #[error("{0}")]
    Storage(String),
}

impl Refusal {
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Malformed(_) => "malformed",
            Refusal::Forbidden(_) => "forbidden",
            Refusal::NotYet(_) => "not_yet",
            Refusal::Unavailable(_) => "unavailable",
            Refusal::Storage(_) => "storage_error",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Malformed(_) => StatusCode::BAD_REQUEST,
            Refusal::Forbidden(_) | Refusal::NotYet(_) => StatusCode::FORBIDDEN,
            Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl Refusal {
    /// Whether the same message can never be accepted later, so a queued copy may be deleted.
    /// Anything that might pass later (storage, a certificate fetch, a topic the operator has
    /// not configured yet, our clock) keeps it: deleting would lose a bounce or complaint.
    pub fn is_final(&self) -> bool {
        matches!(self, Refusal::Malformed(_) | Refusal::Forbidden(_))
    }
}

impl From<SnsError> for Refusal {
    fn from(e: SnsError) -> Self {
        match e {
            SnsError::Malformed(_) => Refusal::Malformed(e.to_string()),
            SnsError::TopicNotAllowed(_) | SnsError::Early => Refusal::NotYet(e.to_string()),
            _ => Refusal::Forbidden(e.to_string()),
        }
    }
}

/// How an SNS message reached us, which sets how old it may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// POSTed by SNS: `feedback.max_message_age_secs` (a replay window; SNS delivers HTTPS
    /// within its retry policy, about an hour by default).
    Https,
    /// Read from an SQS queue: SNS→SQS delivery is retried for days and the queue keeps a
    /// message up to [`SQS_MAX_RETENTION`], so an authentic message can be that old after an
    /// outage of ours; only the queue's own bound applies.
    Sqs,
}

/// SQS `MessageRetentionPeriod` at most 1,209,600 seconds (14 days; SQS API reference,
/// SetQueueAttributes): nothing older can come out of a queue.
pub const SQS_MAX_RETENTION: Duration = Duration::from_secs(1_209_600);

pub struct FeedbackService {
    /// For HTTPS deliveries (freshness: `max_message_age_secs`).
    verifier: Verifier,
    /// For SNS envelopes read from SQS (freshness: the queue's retention).
    queued: Verifier,
    fetcher: SnsFetcher,
    ledger: Arc<dyn Ledger>,
    policy: SuppressionPolicy,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
}

impl FeedbackService {
    pub fn new(
        config: &FeedbackConfig,
        ledger: Arc<dyn Ledger>,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Arc<Self>> {
        let days = |d: u64| (d > 0).then_some(d * 86_400_000);
        Ok(Arc::new(FeedbackService {
            verifier: Verifier::new(
                config.topics.clone(),
                Duration::from_secs(config.max_message_age_secs),
            )
            .with_clock(clock.clone()),
            queued: Verifier::new(config.topics.clone(), SQS_MAX_RETENTION)
                .with_clock(clock.clone()),
            fetcher: SnsFetcher::new(config.test_trust_override.as_ref())?,
            ledger,
            policy: SuppressionPolicy {
                bounce_ms: days(config.bounce_suppression_days),
                complaint_ms: days(config.complaint_suppression_days),
            },
            metrics,
            clock,
        }))
    }

    /// An SNS message (HTTPS body or SQS body): authenticate it, then act on its type.
    /// `type_header` is `x-amz-sns-message-type` when the transport had one.
    pub async fn sns(
        &self,
        body: &[u8],
        type_header: Option<&str>,
        via: Via,
    ) -> Result<Verdict, Refusal> {
        let verifier = match via {
            Via::Https => &self.verifier,
            Via::Sqs => &self.queued,
        };
        let result = self.sns_inner(verifier, body, type_header).await;
        self.count(&result);
        result
    }

    async fn sns_inner(
        &self,
        verifier: &Verifier,
        body: &[u8],
        type_header: Option<&str>,
    ) -> Result<Verdict, Refusal> {
        let message = verifier.parse(body)?;
        if let Some(header) = type_header {
            if header != message.kind.as_str() {
                return Err(Refusal::Malformed(format!(
                    "x-amz-sns-message-type {header:?} does not match Type {:?}",
                    message.kind.as_str()
                )));
            }
        }
        let pem = self
            .fetcher
            .certificate(&message.signing_cert_url)
            .await
            .map_err(|e| match e {
                FetchError::NotAllowed(_) => Refusal::Forbidden(e.to_string()),
                FetchError::Failed { .. } => Refusal::Unavailable(e.to_string()),
            })?;
        let now = (self.clock.now_ms() / 1000) as i64;
        verifier.verify(&message, &pem, now)?;
        match message.kind {
            Kind::Notification => {
                self.event(Some(message.dedupe_key()), &message.message)
                    .await
            }
            Kind::SubscriptionConfirmation => {
                let url = message.subscribe_url.as_deref().unwrap_or_default();
                self.fetcher
                    .confirm(url)
                    .await
                    .map_err(|e| Refusal::Unavailable(e.to_string()))?;
                tracing::info!(topic = %message.topic_arn, "SNS subscription confirmed");
                Ok(Verdict::Confirmed)
            }
            Kind::UnsubscribeConfirmation => {
                // Not re-subscribing on our own: an operator removed the subscription.
                tracing::warn!(topic = %message.topic_arn, "SNS subscription was removed; feedback from this topic stops");
                Ok(Verdict::Ignored)
            }
        }
    }

    /// An SES event payload already trusted (verified SNS message, raw SQS delivery, the
    /// simulator): parse and apply it durably, once per `dedupe` id.
    pub async fn event(&self, dedupe: Option<String>, payload: &str) -> Result<Verdict, Refusal> {
        let events = ses::events(payload, self.policy).map_err(|e| {
            tracing::warn!(error = %e, "authentic feedback message that is not an SES event");
            Refusal::Malformed(e.to_string())
        })?;
        let outcomes: Vec<&'static str> = events.iter().map(|e| e.outcome.as_str()).collect();
        let applied = self
            .ledger
            .apply_feedback(dedupe, events)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "storing feedback failed; the sender will retry");
                Refusal::Storage(e.to_string())
            })?;
        if applied.duplicate {
            return Ok(Verdict::Duplicate);
        }
        for outcome in outcomes {
            self.metrics
                .feedback_events
                .get_or_create(&Reason {
                    reason: outcome.to_string(),
                })
                .inc();
        }
        self.metrics
            .suppressions_added
            .inc_by(applied.suppressed.len() as u64);
        for id in &applied.matched {
            tracing::info!(%id, "feedback applied");
        }
        for s in &applied.suppressed {
            tracing::info!(address = %s.address, account = %s.account, class = %s.class, reason = %s.reason, "address suppressed");
        }
        if applied.unmatched > 0 {
            tracing::info!(
                unmatched = applied.unmatched,
                "feedback for messages this spool does not know"
            );
        }
        Ok(Verdict::Applied(applied))
    }

    /// Counts a result (the SNS path; the other paths count through their own callers).
    pub fn count(&self, result: &Result<Verdict, Refusal>) {
        let label = match result {
            Ok(verdict) => verdict.label(),
            Err(e) => e.label(),
        };
        self.metrics
            .feedback_messages
            .get_or_create(&Reason {
                reason: label.to_string(),
            })
            .inc();
    }
}

/// `POST /sns`.
pub fn router(service: Arc<FeedbackService>) -> Router {
    Router::new()
        .route("/sns", post(post_sns))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(service)
}

async fn post_sns(
    State(service): State<Arc<FeedbackService>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let type_header = headers
        .get("x-amz-sns-message-type")
        .and_then(|v| v.to_str().ok());
    if let Some(refusal) = raw_delivery_refusal(&headers) {
        service.count(&Err(Refusal::Malformed(String::new())));
        tracing::error!(error = %refusal, "SNS message refused");
        return (StatusCode::BAD_REQUEST, format!("{refusal}\n"));
    }
    match service.sns(&body, type_header, Via::Https).await {
        Ok(verdict) => (StatusCode::OK, format!("{}\n", verdict.label())),
        Err(refusal) => {
            tracing::warn!(status = %refusal.status(), error = %refusal, "SNS message refused");
            (refusal.status(), format!("{refusal}\n"))
        }
    }
}

/// SNS marks a raw-delivered message with `x-amz-sns-rawdelivery: true` (SNS developer guide,
/// "Amazon SNS raw message delivery"). The body is then the bare SES event, without the signed
/// envelope: it cannot be authenticated over HTTPS, and every event would be refused as
/// malformed ("missing Type") with nothing telling the operator why. Say what to change.
fn raw_delivery_refusal(headers: &HeaderMap) -> Option<String> {
    let raw = headers
        .get("x-amz-sns-rawdelivery")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    raw.then(|| {
        "raw message delivery is enabled on this HTTPS subscription: the message has no signed \
         SNS envelope to verify. Set the subscription attribute RawMessageDelivery to false \
         (or use [feedback.sqs] with raw_message_delivery)"
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14 item 4: a queued copy is deleted only when the message can never pass.
    #[test]
    fn only_final_refusals_delete_a_queued_message() {
        let cases = [
            (SnsError::Malformed("x".into()), true),
            (SnsError::BadSignature, true),
            (SnsError::BadCertUrl("http://evil".into()), true),
            (SnsError::Stale, true),
            // The operator may add the topic; our clock may catch up.
            (SnsError::TopicNotAllowed("arn:aws:sns:…:new".into()), false),
            (SnsError::Early, false),
        ];
        for (e, fin) in cases {
            assert_eq!(Refusal::from(e.clone()).is_final(), fin, "{e:?}");
        }
        assert!(!Refusal::Storage("disk".into()).is_final());
        assert!(!Refusal::Unavailable("fetch".into()).is_final());
    }
}
