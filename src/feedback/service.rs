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
    /// Forged, foreign, replayed or from a host we do not trust.
    #[error("{0}")]
    Forbidden(String),
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
            Refusal::Unavailable(_) => "unavailable",
            Refusal::Storage(_) => "storage_error",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Malformed(_) => StatusCode::BAD_REQUEST,
            Refusal::Forbidden(_) => StatusCode::FORBIDDEN,
            Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<SnsError> for Refusal {
    fn from(e: SnsError) -> Self {
        match e {
            SnsError::Malformed(_) => Refusal::Malformed(e.to_string()),
            _ => Refusal::Forbidden(e.to_string()),
        }
    }
}

pub struct FeedbackService {
    verifier: Verifier,
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
    pub async fn sns(&self, body: &[u8], type_header: Option<&str>) -> Result<Verdict, Refusal> {
        let result = self.sns_inner(body, type_header).await;
        self.count(&result);
        result
    }

    async fn sns_inner(&self, body: &[u8], type_header: Option<&str>) -> Result<Verdict, Refusal> {
        let message = self.verifier.parse(body)?;
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
        self.verifier.verify(&message, &pem, now)?;
        match message.kind {
            Kind::Notification => {
                self.event(Some(message.message_id.clone()), &message.message)
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
    match service.sns(&body, type_header).await {
        Ok(verdict) => (StatusCode::OK, format!("{}\n", verdict.label())),
        Err(refusal) => {
            tracing::warn!(status = %refusal.status(), error = %refusal, "SNS message refused");
            (refusal.status(), format!("{refusal}\n"))
        }
    }
}
