//! Sender workers: lease a due message, prepare it, hand it to the transport, record the
//! outcome. Delivery knows nothing of sessions: it reads the spool and the account directory.
//!
//! - [`prepare`]: the outgoing MIME (Bcc stripped, Date/Message-ID, signature) and tags.
//! - [`flow`]: provider pace, bytes in flight, and the circuit breaker.
//! - [`dkim`]: DKIM signatures for domains we hold keys for.

pub mod dkim;
pub mod flow;
pub mod prepare;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::accounts::Directory;
use crate::clock::Clock;
use crate::domain::{FeedbackEvent, Job, Outcome};
use crate::live::Live;
use crate::metrics::Metrics;
use crate::spool::{Lease, Settled, Settlement, Spool, SpoolError};
use crate::transport::{Delivery, OutboundMessage, Transport};
use flow::{Breaker, InFlight, Pace};

/// Longest a worker waits for work in one long poll, so a clock jump is noticed eventually.
const MAX_IDLE: Duration = Duration::from_secs(60);

/// Signatures set outside the config (JMAP `Identity/set`) that replace an identity's
/// configured ones at send time.
pub trait SignatureSource: Send + Sync {
    /// `(text, html)` to use for `identity` (as configured) of `account_id`, or `None` to
    /// keep the configured ones.
    fn signatures(
        &self,
        account_id: &str,
        identity: &crate::accounts::Identity,
    ) -> Option<(Option<String>, Option<String>)>;
}

/// Everything the workers share.
pub struct Sender {
    pub spool: Spool,
    pub transport: Arc<dyn Transport>,
    pub directory: Arc<Live<Directory>>,
    pub hostname: String,
    pub clock: Arc<dyn Clock>,
    pub pace: Pace,
    pub in_flight: InFlight,
    pub breaker: Breaker,
    pub dkim: dkim::DkimKeys,
    pub metrics: Arc<Metrics>,
    /// Signature overrides (JMAP); `None`: the configured signatures.
    pub signatures: Option<Arc<dyn SignatureSource>>,
    /// Told about every message the transport accepted (after the spool recorded it).
    pub on_sent: Option<Arc<dyn Fn(SentNotice) + Send + Sync>>,
    /// Holds queued mail of a class the reputation guard holds instead of sending it.
    pub reputation: Option<Arc<crate::reputation::Reputation>>,
}

/// A message the transport accepted, as it went out.
#[derive(Debug, Clone)]
pub struct SentNotice {
    pub job: Job,
    /// The recipients it was actually sent to (suppressed ones left out).
    pub recipients: Vec<String>,
    pub provider_id: String,
    pub tags: Vec<(String, String)>,
    pub at_ms: u64,
}

impl Sender {
    /// Defaults for flow control: no pacing, 256 MiB in flight, pauses of 5 s up to 5 min.
    pub fn new(
        spool: Spool,
        transport: Arc<dyn Transport>,
        directory: Arc<Live<Directory>>,
        hostname: String,
        clock: Arc<dyn Clock>,
    ) -> Sender {
        Sender {
            spool,
            transport,
            directory,
            hostname,
            clock,
            pace: Pace::new(0.0),
            in_flight: InFlight::new(256 * 1024 * 1024),
            breaker: Breaker::new(Duration::from_secs(5), Duration::from_secs(300)),
            dkim: dkim::DkimKeys::default(),
            metrics: Metrics::new(),
            signatures: None,
            on_sent: None,
            reputation: None,
        }
    }
}

/// Runs one worker until `shutdown` turns true; a send in progress is finished first.
pub async fn run_worker(sender: Arc<Sender>, mut shutdown: watch::Receiver<bool>) {
    let queue = &sender.spool.queue;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let probe = tokio::select! {
            probe = sender.breaker.admit() => probe,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let leased = tokio::select! {
            leased = queue.lease(1, MAX_IDLE) => leased,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let leases = match leased {
            Ok(leases) => leases,
            Err(e) => {
                tracing::error!(error = %e, "leasing from the spool failed");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
                Vec::new()
            }
        };
        if leases.is_empty() && probe {
            sender.breaker.probe_unused();
        }
        for lease in leases {
            // Sending was paused while this worker waited for mail: hand the message back
            // without spending its attempt, and wait for the breaker with everyone else.
            if !probe && !sender.breaker.is_closed() {
                let reason = "sending paused: the provider is unavailable".to_string();
                if let Err(e) = queue.settle(&lease, Settlement::Release { reason }).await {
                    tracing::warn!(id = %lease.job.id, error = %e, "handing back a lease failed; it expires");
                }
                continue;
            }
            if park_if_held(&sender, &lease).await {
                continue;
            }
            deliver(&sender, lease).await;
        }
    }
}

/// Holds a leased message whose class the reputation guard holds (`hold_queued`): sending it
/// into an account under review is what the hold is for. True when it was held.
async fn park_if_held(sender: &Sender, lease: &Lease) -> bool {
    let Some(reputation) = sender.reputation.as_ref().filter(|r| r.holds_queued()) else {
        return false;
    };
    let job = &lease.job;
    let Some(hold) = reputation.hold_for(&job.identity_id, job.message_class) else {
        return false;
    };
    match reputation.park(job, &hold).await {
        Ok(()) => true,
        Err(e) => {
            // Left leased: it is visible again when the lease expires, and judged again then.
            tracing::warn!(id = %job.id, error = %e, "holding a message of a held class failed");
            true
        }
    }
}

/// Builds the outgoing message, or says why it can never be sent.
async fn outbound(sender: &Sender, job: &Job) -> Result<OutboundMessage, Delivery> {
    // Check the identity again at send time: the account or identity may have gone since.
    let account = sender.directory.get().get(&job.login);
    let identity = account.as_ref().and_then(|a| a.identity(&job.identity_id));
    let Some(identity) = identity.filter(|_| {
        account
            .as_ref()
            .is_some_and(|a| a.identity_for(&job.mail_from).is_some())
    }) else {
        return Err(Delivery::Reject {
            reason: format!(
                "identity {} of account {} is no longer configured",
                job.identity_id, job.login
            ),
        });
    };
    // Suppressed addresses (bounced, complained, or by the operator) are left out, by class.
    let ledger = &sender.spool.ledger;
    let suppressed: Vec<(String, String)> = ledger
        .suppressed_among(&job.recipients, &job.account_id, job.message_class.as_str())
        .await
        .map_err(|e| local_storage_error(job, "reading the suppression list", e))?
        .into_iter()
        .map(|(rcpt, s)| (rcpt, s.reason))
        .collect();
    let recipients: Vec<String> = job
        .recipients
        .iter()
        .filter(|r| !suppressed.iter().any(|(s, _)| s == *r))
        .cloned()
        .collect();
    if !suppressed.is_empty() {
        sender.metrics.suppressed.inc_by(suppressed.len() as u64);
        tracing::info!(id = %job.id, class = %job.message_class, suppressed = ?suppressed, "recipients suppressed");
        // Each left-out recipient's status says why (visible in `queue show` and JMAP).
        let at_ms = sender.clock.now_ms();
        let events = suppressed
            .iter()
            .map(|(rcpt, reason)| FeedbackEvent {
                provider_id: None,
                submission_id: Some(job.id),
                outcome: Outcome::Suppressed,
                recipients: vec![rcpt.clone()],
                // The same words as a recipient left out at submission (the record keeps one).
                detail: Some(crate::submission::suppressed_detail(
                    job.message_class,
                    reason,
                )),
                at_ms,
                tag_account: None,
                tag_class: None,
                suppress: None,
            })
            .collect();
        if let Err(e) = ledger.apply_feedback(None, events).await {
            tracing::warn!(id = %job.id, error = %e, "could not record suppressed recipients");
        }
    }
    if recipients.is_empty() {
        let list: Vec<String> = suppressed
            .iter()
            .map(|(rcpt, reason)| format!("{rcpt} ({reason})"))
            .collect();
        return Err(Delivery::Reject {
            reason: format!("every recipient is suppressed: {}", list.join(", ")),
        });
    }
    let stored = sender
        .spool
        .blobs
        .get(job.id)
        .await
        .map_err(|e| local_storage_error(job, "loading the message", e))?;
    let overridden = sender
        .signatures
        .as_ref()
        .and_then(|s| s.signatures(&job.account_id, identity))
        .map(|(text, html)| crate::accounts::Identity {
            text_signature: text,
            html_signature: html,
            ..identity.clone()
        });
    let identity = overridden.as_ref().unwrap_or(identity);
    // The outgoing message shares the stored one's bytes: `stored` goes with its last piece.
    let mime = prepare::outgoing_mime(job, &stored, identity, &sender.hostname);
    drop(stored);
    let domain = job.mail_from.rsplit_once('@').map_or("", |(_, d)| d);
    let mime = sender
        .dkim
        .sign(domain, mime)
        .map_err(|e| Delivery::Reject {
            reason: e.to_string(),
        })?;
    Ok(OutboundMessage {
        mail_from: job.mail_from.clone(),
        recipients,
        mime,
        // The built-in tags, then the identity's static ones (the transport may add its own).
        tags: prepare::tags(job)
            .into_iter()
            .chain(identity.ses_tags.iter().cloned())
            .collect(),
        configuration_set: identity.configuration_set.clone(),
        job: job.clone(),
    })
}

/// A retry for a failure of our own storage: the record (which clients read, e.g. as JMAP
/// `smtpReply`) says what failed; the log has the error chain.
fn local_storage_error(job: &Job, what: &str, e: SpoolError) -> Delivery {
    tracing::error!(id = %job.id, error = %e, "{what} failed");
    Delivery::Retry {
        reason: format!("temporary local error ({what})"),
        after: None,
    }
}

/// When a lease with `deadline_ms` should be extended: once a third of the visibility
/// timeout has passed since it was last set, so two extensions can fail before it runs out.
fn renew_in(sender: &Sender, deadline_ms: u64) -> Duration {
    let visibility = sender.spool.queue.visibility_timeout_ms();
    let renew_at = deadline_ms.saturating_sub(visibility * 2 / 3);
    Duration::from_millis(renew_at.saturating_sub(sender.clock.now_ms()))
}

/// Pushes the lease's deadline out by a visibility timeout; false when it is lost.
async fn extend(sender: &Sender, lease: &mut Lease) -> bool {
    let queue = &sender.spool.queue;
    match queue.extend(lease, queue.visibility_timeout_ms()).await {
        Ok(deadline) => {
            lease.deadline_ms = deadline;
            true
        }
        Err(SpoolError::LeaseLost(_) | SpoolError::NotFound(_)) => false,
        Err(e) => {
            // The lease still runs until its deadline; the next renewal tries again.
            tracing::warn!(id = %lease.job.id, error = %e, "extending a lease failed");
            true
        }
    }
}

async fn deliver(sender: &Sender, mut lease: Lease) {
    let id = lease.job.id;
    let attempt = lease.attempt;
    let transport = sender.transport.name();
    let _bytes = sender.in_flight.acquire(lease.job.size).await;
    let message = match outbound(sender, &lease.job).await {
        Ok(message) => message,
        Err(refusal) => {
            // Decided here, without asking the provider: says nothing about its health.
            sender.breaker.probe_unused();
            record(sender, &lease, refusal).await;
            return;
        }
    };
    sender.pace.wait().await;
    // Waiting for bytes or pace may have used up most of the lease: renew it before sending,
    // and leave the message alone if another worker may hold it now.
    if renew_in(sender, lease.deadline_ms).is_zero() && !extend(sender, &mut lease).await {
        sender.breaker.probe_unused();
        tracing::warn!(%id, transport, "lease lost before sending; left for the next worker");
        return;
    }
    let started = std::time::Instant::now();
    let message = Arc::new(message);
    let send = sender.transport.send(message.clone());
    tokio::pin!(send);
    // While the transport works, the lease is extended so no second worker sends the message.
    let delivery = loop {
        tokio::select! {
            delivery = &mut send => break delivery,
            _ = tokio::time::sleep(renew_in(sender, lease.deadline_ms)) => {
                if !extend(sender, &mut lease).await {
                    tracing::warn!(%id, transport, "lease lost during a send; the message may be sent twice");
                    // Still wait for the answer: a sent message must be recorded as sent.
                    break (&mut send).await;
                }
            }
        }
    };
    let outcome = match &delivery {
        Delivery::Sent { .. } => "sent",
        Delivery::Retry { .. } => "retry",
        Delivery::Reject { .. } => "reject",
        Delivery::Unavailable { .. } => "unavailable",
    };
    sender
        .metrics
        .delivery(transport, outcome, started.elapsed().as_secs_f64());
    match &delivery {
        Delivery::Unavailable { .. } => {}
        _ => sender.breaker.reachable(),
    }
    tracing::debug!(%id, transport, attempt, "transport answered");
    let sent = match &delivery {
        Delivery::Sent { provider_id } => Some(provider_id.clone()),
        _ => None,
    };
    let recorded = record(sender, &lease, delivery).await;
    if let (Some(provider_id), Some(on_sent), true) = (sent, &sender.on_sent, recorded) {
        on_sent(SentNotice {
            job: lease.job.clone(),
            recipients: message.recipients.clone(),
            provider_id,
            tags: message.tags.clone(),
            at_ms: sender.clock.now_ms(),
        });
    }
}

/// Records what became of one attempt; true when the spool took it.
async fn record(sender: &Sender, lease: &Lease, delivery: Delivery) -> bool {
    let (id, attempt, transport) = (lease.job.id, lease.attempt, sender.transport.name());
    let settlement = match delivery {
        Delivery::Sent { provider_id } => {
            tracing::info!(%id, transport, %provider_id, attempt, "message sent");
            Settlement::Sent {
                message_id: sender.transport.visible_message_id(&provider_id),
                provider_id,
            }
        }
        Delivery::Reject { reason } => {
            tracing::warn!(%id, transport, %reason, "message failed permanently");
            Settlement::Failed { reason }
        }
        Delivery::Unavailable { reason } => {
            let pause = sender.breaker.unavailable();
            tracing::warn!(%id, transport, %reason, pause_secs = pause.as_secs(), "provider unavailable; sending paused");
            Settlement::Release { reason }
        }
        Delivery::Retry { reason, after } => Settlement::Retry {
            reason,
            after_ms: after.map(|d| d.as_millis() as u64),
        },
    };
    let reason = match &settlement {
        Settlement::Retry { reason, .. } => Some(reason.clone()),
        _ => None,
    };
    match sender.spool.queue.settle(lease, settlement).await {
        Ok(Settled::Stale) => {
            tracing::warn!(%id, attempt, "outcome not recorded: the message changed hands (lease expired)");
            false
        }
        Ok(Settled::DeadLettered) => {
            tracing::warn!(%id, reason = reason.as_deref().unwrap_or(""), attempt, "attempts used up, moved to the dead-letter queue");
            true
        }
        Ok(Settled::Requeued { .. }) => {
            if let Some(reason) = reason {
                tracing::info!(%id, %reason, attempt, "delivery will be retried");
            }
            true
        }
        Ok(Settled::Applied) => true,
        // The lease will expire and the message be tried again: at-least-once.
        Err(e) => {
            tracing::error!(%id, error = %e, "recording the outcome failed");
            false
        }
    }
}

/// Applies retention once an hour: finished records past `retention_days`, expired dead
/// letters and suppressions, old feedback ids and change-feed entries; then compacts the
/// spool file if most of it is free.
pub async fn run_janitor(
    ledger: Arc<dyn crate::spool::Ledger>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        match ledger.purge().await {
            Ok(p) if p == Default::default() => {}
            Ok(p) => tracing::info!(
                finished = p.finished,
                dead = p.dead,
                suppressions = p.suppressions,
                feedback_ids = p.feedback_ids,
                changes = p.changes,
                "retention: old records removed"
            ),
            Err(e) => tracing::error!(error = %e, "applying retention failed"),
        }
        // What retention freed is reused by new mail; the file itself shrinks only when much
        // of it is free (a drained backlog), see `Ledger::compact`.
        if let Err(e) = ledger.compact(false).await {
            tracing::warn!(error = %e, "compacting the spool file failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::sync::mpsc;

    use super::*;
    use crate::clock::TokioClock;
    use crate::domain::{MessageClass, QueueId, State, SubmissionRecord};
    use crate::spool::SpoolOptions;

    /// A transport that plays back scripted outcomes and reports each attempt. (No real peer
    /// can be told to fail on cue; the real transports have their own tests.)
    struct Scripted {
        outcomes: Mutex<Vec<Delivery>>,
        seen: mpsc::UnboundedSender<Arc<OutboundMessage>>,
    }

    impl Transport for Scripted {
        fn name(&self) -> &'static str {
            "scripted"
        }
        fn send(&self, message: Arc<OutboundMessage>) -> crate::transport::SendFuture<'_> {
            let outcome = self.outcomes.lock().unwrap().remove(0);
            let _ = self.seen.send(message);
            Box::pin(async move { outcome })
        }
    }

    fn directory() -> Arc<Live<Directory>> {
        let account = crate::accounts::test_account("a", "x", "i", "a@example.com");
        Live::new(Directory::from_config(&[account]).unwrap())
    }

    fn retry() -> Delivery {
        Delivery::Retry {
            reason: "throttled".into(),
            after: None,
        }
    }

    /// Queues a bulk message to two recipients, one of them in Bcc.
    async fn queue_test_message(spool: &Spool, now: u64) -> QueueId {
        let mime = b"From: a@example.com\r\nBcc: hidden@example.net\r\nX-Outbox-Class: bulk\r\nSubject: s\r\n\r\nbody\r\n";
        let id = QueueId::generate(now);
        let job = Job {
            id,
            login: "a".into(),
            tenant_id: "t".into(),
            account_id: "a".into(),
            user_id: "a".into(),
            identity_id: "i".into(),
            mail_from: "a@example.com".into(),
            recipients: vec!["to@example.net".into(), "hidden@example.net".into()],
            message_class: MessageClass::Bulk,
            size: mime.len() as u64,
        };
        spool
            .blobs
            .put(id, vec![bytes::Bytes::from_static(mime)])
            .await
            .unwrap();
        spool
            .queue
            .enqueue(SubmissionRecord::queued(job, now, now, None))
            .await
            .unwrap();
        id
    }

    async fn run(
        outcomes: Vec<Delivery>,
        max_attempts: u32,
    ) -> (Vec<Arc<OutboundMessage>>, SubmissionRecord, u64) {
        let dir = tempfile::tempdir().unwrap();
        let clock = TokioClock::new(1_800_000_000_000);
        let options = SpoolOptions {
            fsync: false,
            max_messages: 10,
            max_bytes: 1 << 20,
            min_free_disk_bytes: 0,
            visibility_timeout_ms: 300_000,
            max_attempts,
            retry_base_ms: 30_000,
            retry_max_ms: 3_600_000,
            dead_letter_retention_ms: 86_400_000,
            retention_ms: 30 * 86_400_000,
            jitter_seed: 1,
            cache_bytes: crate::spool::DEFAULT_CACHE_BYTES,
        };
        let spool = crate::spool::redb::open(dir.path(), options, clock.clone()).unwrap();
        let expected = outcomes.len();
        let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
        let transport = Arc::new(Scripted {
            outcomes: Mutex::new(outcomes),
            seen: seen_tx,
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let sender = Arc::new(Sender::new(
            spool.clone(),
            transport,
            directory(),
            "mx.test".into(),
            clock.clone(),
        ));

        let id = queue_test_message(&spool, clock.now_ms()).await;
        // Queued before the worker starts: paused time jumps ahead whenever every task waits,
        // and a worker idling in its long poll while the spool's writer thread commits the
        // enqueue would see a minute pass.
        let started = tokio::time::Instant::now();
        let worker = tokio::spawn(run_worker(sender, stop_rx));
        let mut attempts = Vec::new();
        for _ in 0..expected {
            attempts.push(seen_rx.recv().await.expect("an attempt"));
        }
        let elapsed = started.elapsed().as_millis() as u64;
        // The worker finishes recording the last outcome before it sees the stop.
        stop_tx.send(true).unwrap();
        worker.await.unwrap();
        let record = spool.ledger.get(id).await.unwrap().unwrap();
        (attempts, record, elapsed)
    }

    #[tokio::test(start_paused = true)]
    async fn retries_with_backoff_then_sends_without_bcc() {
        let sent = Delivery::Sent {
            provider_id: "p-1".into(),
        };
        let (attempts, record, elapsed) = run(vec![retry(), retry(), sent], 5).await;
        assert_eq!(record.state, State::Sent);
        assert_eq!(record.provider_id.as_deref(), Some("p-1"));
        assert_eq!(record.receive_count, 3);
        // Backoff 30 s then 60 s, each ±20%.
        assert!(
            (72_000..=108_000).contains(&elapsed),
            "elapsed {elapsed} ms"
        );
        let last = attempts.last().unwrap();
        assert_eq!(last.recipients, ["to@example.net", "hidden@example.net"]);
        let text = String::from_utf8(last.mime.to_vec()).unwrap();
        assert!(!text.to_lowercase().contains("bcc:"), "{text}");
        assert!(!text.contains("X-Outbox-Class"), "{text}");
        assert!(text.contains("Subject: s\r\n\r\nbody\r\n"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failure_keeps_the_reason() {
        let (_, record, _) = run(
            vec![Delivery::Reject {
                reason: "MessageRejected: bad".into(),
            }],
            5,
        )
        .await;
        assert_eq!(record.state, State::Failed);
        assert_eq!(record.last_error.as_deref(), Some("MessageRejected: bad"));
        assert_eq!(
            record.receive_count, 1,
            "no retry after a permanent failure"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fifth_failure_dead_letters() {
        let (attempts, record, _) = run(vec![retry(), retry(), retry(), retry(), retry()], 5).await;
        assert_eq!(attempts.len(), 5);
        assert_eq!(record.state, State::Dead);
        assert_eq!(record.last_error.as_deref(), Some("throttled"));
    }

    /// A transport that takes its time (a large message to a slow endpoint), then accepts.
    struct Slow {
        takes: Duration,
        sends: std::sync::atomic::AtomicU32,
    }

    impl Transport for Slow {
        fn name(&self) -> &'static str {
            "slow"
        }
        fn send(&self, _message: Arc<OutboundMessage>) -> crate::transport::SendFuture<'_> {
            self.sends.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(self.takes).await;
                Delivery::Sent {
                    provider_id: "slow-1".into(),
                }
            })
        }
    }

    /// A send that lasts three visibility timeouts: the lease is extended while it runs, so
    /// the second worker never takes the message and it goes out once. (Real time: paused
    /// time would jump ahead while the spool's writer thread works.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_send_longer_than_the_visibility_timeout_keeps_its_lease() {
        let dir = tempfile::tempdir().unwrap();
        let clock: Arc<dyn Clock> = Arc::new(crate::clock::SystemClock);
        let options = SpoolOptions {
            visibility_timeout_ms: 2_000,
            ..crate::spool::contract::options()
        };
        let spool = crate::spool::redb::open(dir.path(), options, clock.clone()).unwrap();
        let id = queue_test_message(&spool, clock.now_ms()).await;
        let transport = Arc::new(Slow {
            takes: Duration::from_secs(6),
            sends: Default::default(),
        });
        let sender = Arc::new(Sender::new(
            spool.clone(),
            transport.clone(),
            directory(),
            "mx.test".into(),
            clock,
        ));
        let (stop_tx, stop_rx) = watch::channel(false);
        let workers: Vec<_> = (0..2)
            .map(|_| tokio::spawn(run_worker(sender.clone(), stop_rx.clone())))
            .collect();
        let mut feed = 0;
        let record = loop {
            spool
                .ledger
                .wait_for_changes(feed, Duration::from_secs(1))
                .await;
            feed = spool.ledger.changes(0, 1000).await.unwrap().next;
            let record = spool.ledger.get(id).await.unwrap().unwrap();
            if record.state != State::Queued {
                break record;
            }
        };
        stop_tx.send(true).unwrap();
        for w in workers {
            w.await.unwrap();
        }
        assert_eq!(record.state, State::Sent);
        assert_eq!(transport.sends.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(record.receive_count, 1, "nobody else leased it");
    }
}
