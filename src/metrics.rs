//! Prometheus metrics and health endpoints, on their own plain-HTTP listener (loopback by
//! default): `/metrics`, `/healthz` (the process answers), `/readyz` (listening and not
//! shutting down).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::spool::{Depth, Queue};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub transport: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OrderResult {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Transport {
    pub transport: String,
}

/// Every metric the server keeps. Counters are cheap atomics, safe to bump on hot paths.
pub struct Metrics {
    pub connections: Counter,
    pub connections_refused: Counter,
    pub auth_failures: Counter,
    pub accepted: Counter,
    pub refused: Family<Reason, Counter>,
    pub deliveries: Family<Outcome, Counter>,
    /// Recipients left out because they are on the suppression list.
    pub suppressed: Counter,
    pub send_seconds: Family<Transport, Histogram, fn() -> Histogram>,
    /// SNS/SQS feedback messages by what became of them (applied, duplicate, refused, ...).
    pub feedback_messages: Family<Reason, Counter>,
    /// SES events applied, by outcome (delivered, bounced, complained, delayed, rejected).
    pub feedback_events: Family<Reason, Counter>,
    /// Suppression entries added by feedback.
    pub suppressions_added: Counter,
    /// ACME orders by result (`issued`, `failed`).
    pub acme_orders: Family<OrderResult, Counter>,
    /// When the served TLS certificate expires, Unix seconds (0: unknown).
    pub tls_certificate_expiry: Gauge,
    queue_length: Gauge,
    dead_letters: Gauge,
    held: Gauge,
    spool_messages: Gauge,
    spool_bytes: Gauge,
    ready: AtomicBool,
    /// The reputation figures, registered at each scrape (see [`crate::reputation`]).
    pub reputation: std::sync::OnceLock<Arc<crate::reputation::Reputation>>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        fn send_histogram() -> Histogram {
            // 1 ms to ~33 s.
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        }
        Arc::new(Metrics {
            connections: Counter::default(),
            connections_refused: Counter::default(),
            auth_failures: Counter::default(),
            accepted: Counter::default(),
            refused: Family::default(),
            deliveries: Family::default(),
            suppressed: Counter::default(),
            send_seconds: Family::new_with_constructor(send_histogram),
            feedback_messages: Family::default(),
            feedback_events: Family::default(),
            suppressions_added: Counter::default(),
            acme_orders: Family::default(),
            tls_certificate_expiry: Gauge::default(),
            queue_length: Gauge::default(),
            dead_letters: Gauge::default(),
            held: Gauge::default(),
            spool_messages: Gauge::default(),
            spool_bytes: Gauge::default(),
            ready: AtomicBool::new(false),
            reputation: std::sync::OnceLock::new(),
        })
    }

    pub fn refused(&self, reason: &str) {
        self.refused
            .get_or_create(&Reason {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn delivery(&self, transport: &str, outcome: &str, seconds: f64) {
        let labels = Outcome {
            transport: transport.into(),
            outcome: outcome.into(),
        };
        self.deliveries.get_or_create(&labels).inc();
        self.send_seconds
            .get_or_create(&Transport {
                transport: transport.into(),
            })
            .observe(seconds);
    }

    pub fn acme_order(&self, result: &str) {
        self.acme_orders
            .get_or_create(&OrderResult {
                result: result.into(),
            })
            .inc();
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    fn render(&self, depth: Option<Depth>) -> Result<String, std::fmt::Error> {
        if let Some(depth) = depth {
            self.queue_length.set(depth.queued as i64);
            self.dead_letters.set(depth.dead as i64);
            self.held.set(depth.held as i64);
            self.spool_messages.set(depth.stored_messages as i64);
            self.spool_bytes.set(depth.stored_bytes as i64);
        }
        let mut registry = Registry::with_prefix("outbox");
        if let Some(reputation) = self.reputation.get() {
            reputation.register_metrics(&mut registry);
        }
        let m = self;
        registry.register(
            "acme_orders",
            "ACME certificate orders by result (issued, failed)",
            m.acme_orders.clone(),
        );
        registry.register(
            "tls_certificate_expiry_seconds",
            "When the served TLS certificate expires (Unix time, seconds)",
            m.tls_certificate_expiry.clone(),
        );
        registry.register(
            "smtp_connections",
            "SMTP connections accepted",
            m.connections.clone(),
        );
        registry.register(
            "smtp_connections_refused",
            "SMTP connections refused by the caps",
            m.connections_refused.clone(),
        );
        registry.register(
            "auth_failures",
            "Failed AUTH attempts",
            m.auth_failures.clone(),
        );
        registry.register(
            "messages_accepted",
            "Messages accepted (250 after fsync)",
            m.accepted.clone(),
        );
        registry.register(
            "messages_refused",
            "Messages or transactions refused, by reason",
            m.refused.clone(),
        );
        registry.register(
            "deliveries",
            "Transport hand-offs by outcome",
            m.deliveries.clone(),
        );
        registry.register(
            "suppression_hits",
            "Recipients left out by the suppression list",
            m.suppressed.clone(),
        );
        registry.register(
            "send_duration_seconds",
            "Time a transport took per message",
            m.send_seconds.clone(),
        );
        registry.register(
            "feedback_messages",
            "SES feedback messages (SNS over HTTPS or SQS) by result",
            m.feedback_messages.clone(),
        );
        registry.register(
            "feedback_events",
            "SES events applied to submissions, by outcome",
            m.feedback_events.clone(),
        );
        registry.register(
            "suppressions_added",
            "Suppression entries added from bounces and complaints",
            m.suppressions_added.clone(),
        );
        registry.register(
            "queue_length",
            "Messages in the queue (due, delayed or leased)",
            m.queue_length.clone(),
        );
        registry.register(
            "dead_letters",
            "Messages in the dead-letter queue",
            m.dead_letters.clone(),
        );
        registry.register(
            "held_messages",
            "Messages an operator holds (not sent until released)",
            m.held.clone(),
        );
        registry.register(
            "spool_messages",
            "Messages whose MIME the spool holds",
            m.spool_messages.clone(),
        );
        registry.register(
            "spool_bytes",
            "Octets of MIME the spool holds",
            m.spool_bytes.clone(),
        );
        let mut out = String::new();
        encode(&mut out, &registry)?;
        Ok(out)
    }
}

struct Http {
    metrics: Arc<Metrics>,
    queue: Arc<dyn Queue>,
}

/// Serves the endpoints on `addr` until shutdown; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    queue: Arc<dyn Queue>,
    mut stop: watch::Receiver<bool>,
) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let bound = listener.local_addr()?;
    let state = Arc::new(Http { metrics, queue });
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(state);
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "metrics listener failed");
        }
    });
    Ok(bound)
}

async fn scrape(State(http): State<Arc<Http>>) -> impl IntoResponse {
    let depth = http.queue.depth().await.ok();
    let http2 = http.clone();
    match tokio::task::spawn_blocking(move || http2.metrics.render(depth)).await {
        Ok(Ok(text)) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        _ => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Ready: listening, not shutting down, and storage working (a spool recovering from an I/O
/// error refuses every message, so a load balancer should send clients elsewhere).
async fn ready(State(http): State<Arc<Http>>) -> impl IntoResponse {
    if !http.metrics.ready.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_string());
    }
    match http.queue.failing() {
        None => (StatusCode::OK, "ready\n".to_string()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: storage failing: {why}\n"),
        ),
    }
}
