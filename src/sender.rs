//! Sender workers: lease a due message, prepare it, hand it to the transport, record the
//! outcome. Delivery knows nothing of sessions: it reads only the spool.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::message::strip_headers;
use crate::spool::{Lease, RetryOutcome, Spool};
use crate::submission::CLASS_HEADER;
use crate::transport::{Delivery, OutboundMessage, Transport};

/// Longest nap when nothing is due, so a clock jump is noticed eventually.
const MAX_IDLE: Duration = Duration::from_secs(60);

/// Runs one worker until `shutdown` turns true; a send in progress is finished first.
pub async fn run_worker(
    spool: Arc<Spool>,
    transport: Arc<dyn Transport>,
    mut shutdown: watch::Receiver<bool>,
) {
    let signal = spool.work_signal();
    loop {
        if *shutdown.borrow() {
            return;
        }
        // Register for wake-ups before looking, so an enqueue in between is not missed.
        let notified = signal.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match spool.lease().await {
            Ok(Some(lease)) => {
                deliver(&spool, transport.as_ref(), lease).await;
                continue;
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "leasing from the spool failed"),
        }
        let nap = match spool.next_due() {
            Ok(Some(due)) => {
                Duration::from_millis(due.saturating_sub(spool.now_ms())).min(MAX_IDLE)
            }
            Ok(None) => MAX_IDLE,
            Err(_) => Duration::from_secs(1),
        };
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep(nap) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// The message as it leaves: `Bcc` and our class header removed (RFC 5322 §3.6.3: Bcc
/// recipients are in the envelope, never in the header that others see).
pub fn prepare(mime: &[u8]) -> Vec<u8> {
    strip_headers(mime, &["Bcc", CLASS_HEADER])
}

async fn deliver(spool: &Spool, transport: &dyn Transport, lease: Lease) {
    let id = lease.record.id;
    let mime = match spool.load_mime(id).await {
        Ok(mime) => mime,
        Err(e) => {
            tracing::error!(%id, error = %e, "loading message failed");
            let _ = spool
                .retry(&lease, format!("loading message: {e}"), None)
                .await;
            return;
        }
    };
    let message = Arc::new(OutboundMessage {
        mail_from: lease.record.mail_from.clone(),
        recipients: lease.record.recipients.clone(),
        mime: prepare(&mime),
        record: lease.record.clone(),
    });
    drop(mime);
    let attempt = lease.record.receive_count;
    let result = match transport.send(message).await {
        Delivery::Sent { provider_id } => {
            tracing::info!(%id, transport = transport.name(), %provider_id, attempt, "message sent");
            spool.complete(&lease, provider_id).await
        }
        Delivery::Reject { reason } => {
            tracing::warn!(%id, transport = transport.name(), %reason, "message failed permanently");
            spool.fail(&lease, reason).await
        }
        Delivery::Retry { reason, after } => {
            let delay = after.map(|d| d.as_millis() as u64);
            match spool.retry(&lease, reason.clone(), delay).await {
                Ok(RetryOutcome::DeadLettered) => {
                    tracing::warn!(%id, %reason, attempt, "attempts used up, moved to the dead-letter queue");
                }
                Ok(outcome) => {
                    tracing::info!(%id, %reason, attempt, ?outcome, "delivery will be retried")
                }
                Err(e) => tracing::error!(%id, error = %e, "recording retry failed"),
            }
            return;
        }
    };
    if let Err(e) = result {
        // The lease will expire and the message be tried again: at-least-once.
        tracing::error!(%id, error = %e, "recording the outcome failed");
    }
}

/// Purges expired dead letters once an hour.
pub async fn run_janitor(spool: Arc<Spool>, mut shutdown: watch::Receiver<bool>) {
    loop {
        match spool.purge_dead().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "expired dead letters removed"),
            Err(e) => tracing::error!(error = %e, "purging dead letters failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}
