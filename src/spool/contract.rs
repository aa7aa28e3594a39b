//! The contract every spool backend must pass, under an injected clock: leases expire and
//! reappear, extension keeps a lease, the fifth failure dead-letters, release does not spend an
//! attempt, a late "sent" beats a concurrent dead-letter, feedback applied twice counts once,
//! retention purges exactly what is due, the change feed resumes from a cursor, bounds refuse
//! rather than overfill, and what was acknowledged survives a reopen.
//!
//! Each check is a function over a [`Backend`]; [`contract_suite!`] turns the list into tests
//! for one backend (the redb one at the bottom of this file).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::clock::{Clock, ManualClock};
use crate::domain::{
    FeedbackEvent, JmapLink, Job, MessageClass, Outcome, QueueId, State, SubmissionRecord,
    Suppression, ALL_ACCOUNTS, ALL_CLASSES,
};

const START: u64 = 1_800_000_000_000;
const DAY: u64 = 86_400_000;

/// Storage a test can open, close and open again.
pub(crate) trait Backend {
    fn open(&self, options: SpoolOptions, clock: Arc<ManualClock>) -> Spool;
    /// The options the checks start from (a backend whose queue keeps real time, like SQS,
    /// asks for short timeouts).
    fn options(&self) -> SpoolOptions {
        options()
    }
    /// Whether due messages are leased in due-time order (SQS standard queues are
    /// best-effort ordered: only that each is leased once due is promised there).
    fn ordered(&self) -> bool {
        true
    }
    /// Whether the change feed announces every record's changes, or (a backend whose feed
    /// is a shared, rate-bound sequence) only those of JMAP submissions, the feed's readers.
    fn announces_all(&self) -> bool {
        true
    }
    /// Lets `ms` pass for the queue: the clock moves, and a queue that keeps its own real
    /// time (SQS visibility and delays, in whole seconds) is given that time too.
    fn elapse<'a>(
        &'a self,
        clock: &'a ManualClock,
        ms: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        clock.advance_ms(ms);
        Box::pin(async {})
    }
}

pub(crate) fn options() -> SpoolOptions {
    SpoolOptions {
        fsync: true,
        max_messages: 100,
        max_bytes: 1_000_000,
        min_free_disk_bytes: 0,
        visibility_timeout_ms: 60_000,
        max_attempts: 5,
        retry_base_ms: 1_000,
        retry_max_ms: 10_000,
        dead_letter_retention_ms: 14 * DAY,
        retention_ms: 30 * DAY,
        jitter_seed: 7,
        cache_bytes: crate::spool::DEFAULT_CACHE_BYTES,
    }
}

fn job(id: QueueId, size: u64) -> Job {
    Job {
        id,
        login: "alice".into(),
        tenant_id: "t".into(),
        account_id: "a".into(),
        user_id: "u".into(),
        identity_id: "i".into(),
        mail_from: "alice@example.com".into(),
        recipients: vec!["bob@example.net".into(), "Carol@example.net".into()],
        message_class: MessageClass::Bulk,
        size,
    }
}

/// Stores `body` and queues it, due at `due`; the id is made at the clock's time.
async fn submit_at(spool: &Spool, clock: &ManualClock, body: &str, due: u64) -> QueueId {
    try_submit(spool, clock, body, due, None).await.unwrap()
}

async fn submit(spool: &Spool, clock: &ManualClock, body: &str) -> QueueId {
    submit_at(spool, clock, body, clock.now_ms()).await
}

async fn try_submit(
    spool: &Spool,
    clock: &ManualClock,
    body: &str,
    due: u64,
    jmap: Option<JmapLink>,
) -> Result<QueueId, SpoolError> {
    let now = clock.now_ms();
    let id = QueueId::generate(now);
    // Two chunks, as the submission service stores a trace header and the body.
    let (head, tail) = body.split_at(body.len() / 2);
    let chunks = vec![
        Bytes::copy_from_slice(head.as_bytes()),
        Bytes::copy_from_slice(tail.as_bytes()),
    ];
    spool.blobs.put(id, chunks).await?;
    let record = SubmissionRecord::queued(job(id, body.len() as u64), now, due, jmap);
    spool.queue.enqueue(record).await?;
    Ok(id)
}

async fn lease(spool: &Spool) -> Option<Lease> {
    let mut leases = spool.queue.lease(1, Duration::ZERO).await.unwrap();
    assert!(leases.len() <= 1);
    leases.pop()
}

async fn record(spool: &Spool, id: QueueId) -> SubmissionRecord {
    spool.ledger.get(id).await.unwrap().expect("record")
}

async fn settle(spool: &Spool, lease: &Lease, settlement: Settlement) -> Settled {
    spool.queue.settle(lease, settlement).await.unwrap()
}

fn sent(provider_id: &str) -> Settlement {
    Settlement::Sent {
        provider_id: provider_id.into(),
        message_id: None,
    }
}

fn retry(reason: &str) -> Settlement {
    Settlement::Retry {
        reason: reason.into(),
        after_ms: None,
    }
}

/// A message larger than a chunk of either backend reads back octet for octet.
pub(crate) async fn a_large_message_reads_back_whole(b: &impl Backend) {
    let clock = ManualClock::new(START);
    let options = SpoolOptions {
        max_bytes: 10_000_000,
        ..b.options()
    };
    let spool = b.open(options, clock.clone());
    let body: String = (0..900_000u32)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    let id = submit(&spool, &clock, &body).await;
    let got = spool.blobs.get(id).await.unwrap();
    assert_eq!(got.len(), body.len());
    assert!(got == body.as_bytes(), "the message came back different");
}

pub(crate) async fn leases_hide_until_the_deadline_then_reappear(b: &impl Backend) {
    let clock = ManualClock::new(START);
    let spool = b.open(b.options(), clock.clone());
    let id = submit(&spool, &clock, "m1").await;

    let vis = b.options().visibility_timeout_ms;
    let first = lease(&spool).await.expect("due at once");
    assert_eq!(first.job.id, id);
    assert_eq!(first.attempt, 1);
    assert_eq!(first.deadline_ms, START + vis);
    assert_eq!(&spool.blobs.get(id).await.unwrap()[..], b"m1");
    assert!(lease(&spool).await.is_none(), "hidden while leased");

    b.elapse(&clock, vis - 1).await;
    assert!(lease(&spool).await.is_none());
    b.elapse(&clock, 1).await;
    let again = lease(&spool).await.expect("visible after the deadline");
    assert_eq!(again.attempt, 2);
    assert_ne!(again.token, first.token);

    // The first holder's late settlements are stale and change nothing.
    assert_eq!(settle(&spool, &first, retry("late")).await, Settled::Stale);
    assert!(matches!(
        spool.queue.extend(&first, 60_000).await,
        Err(SpoolError::LeaseLost(_))
    ));
    assert_eq!(settle(&spool, &again, sent("p-1")).await, Settled::Applied);
    let r = record(&spool, id).await;
    assert_eq!(r.state, State::Sent);
    assert_eq!(r.provider_id.as_deref(), Some("p-1"));
    assert_eq!(r.receive_count, 2);
    assert!(
        matches!(spool.blobs.get(id).await, Err(SpoolError::NotFound(_))),
        "the message's bytes go once it is sent"
    );
    assert!(lease(&spool).await.is_none());
}

pub(crate) async fn extension_keeps_a_lease(b: &impl Backend) {
    let clock = ManualClock::new(START);
    let spool = b.open(b.options(), clock.clone());
    let id = submit(&spool, &clock, "slow").await;
    let vis = b.options().visibility_timeout_ms;
    let mut held = lease(&spool).await.unwrap();
    // A long send: extended every 2/3 of the visibility timeout, it outlives it many times.
    for _ in 0..5 {
        clock.advance_ms(vis * 2 / 3);
        held.deadline_ms = spool.queue.extend(&held, vis).await.unwrap();
        assert_eq!(held.deadline_ms, clock.now_ms() + vis);
        assert!(lease(&spool).await.is_none(), "nobody else gets it");
    }
    assert_eq!(settle(&spool, &held, sent("p")).await, Settled::Applied);
    let r = record(&spool, id).await;
    assert_eq!((r.state, r.receive_count), (State::Sent, 1));
}

pub(crate) async fn the_queue_is_ordered_by_due_time_and_leases_in_batches(b: &impl Backend) {
    let clock = ManualClock::new(START);
    let spool = b.open(b.options(), clock.clone());
    let late = submit_at(&spool, &clock, "late", START + 5_000).await;
    let early = submit_at(&spool, &clock, "early", START + 1_000).await;
    let now = submit(&spool, &clock, "now").await;
    let first = lease(&spool).await.unwrap();
    assert_eq!(first.job.id, now);
    // Held through what follows (the visibility timeout may be shorter than 5 s).
    spool.queue.extend(&first, 60_000).await.unwrap();
    assert!(lease(&spool).await.is_none());
    b.elapse(&clock, 5_000).await;
    let both = spool.queue.lease(10, Duration::ZERO).await.unwrap();
    let mut ids: Vec<QueueId> = both.iter().map(|l| l.job.id).collect();
    let mut expected = vec![early, late];
    if !b.ordered() {
        ids.sort();
        expected.sort();
    }
    assert_eq!(ids, expected);
    let depth = spool.queue.depth().await.unwrap();
    assert_eq!(depth.queued, 3, "leased messages are still queued");
    assert_eq!(depth.stored_messages, 3);
}

pub(crate) async fn a_long_poll_wakes_when_mail_arrives(b: &impl Backend) {
    let clock = ManualClock::new(START);
    let spool = b.open(b.options(), clock.clone());
    let waiter = {
        let spool = spool.clone();
        tokio::spawn(async move { spool.queue.lease(1, Duration::from_secs(30)).await })
    };
    // Let the waiter look and find nothing before the message arrives.
    tokio::task::yield_now().await;
    let id = submit(&spool, &clock, "m").await;
    let got = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("woken by the enqueue, not by its 30 s wait")
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].job.id, id);
}

pub(crate) async fn retries_back_off_and_the_fifth_failure_dead_letters(b: &impl Backend) {
    let clock = ManualClock::new(START);
    let spool = b.open(b.options(), clock.clone());
    let id = submit(&spool, &clock, "m").await;
    let mut delays = Vec::new();
    for attempt in 1..=4 {
        let l = lease(&spool).await.expect("due");
        assert_eq!(l.attempt, attempt);
        let Settled::Requeued { due_ms } =
            settle(&spool, &l, retry(&format!("fail {attempt}"))).await
        else {
            panic!("attempt {attempt} should requeue");
        };
        delays.push(due_ms - clock.now_ms());
        assert!(lease(&spool).await.is_none(), "not due before its backoff");
        b.elapse(&clock, due_ms - clock.now_ms()).await;
    }
    // base 1 s doubling, capped at 10 s, ±20% jitter.
    for (delay, base) in delays.iter().zip([1_000u64, 2_000, 4_000, 8_000]) {
        assert!((base * 4 / 5..=base * 6 / 5).contains(delay), "{delays:?}");
    }
    let fifth = lease(&spool).await.expect("fifth attempt");
    assert_eq!(
        settle(&spool, &fifth, retry("fail 5")).await,
        Settled::DeadLettered
    );
    let r = record(&spool, id).await;
    assert_eq!(r.state, State::Dead);
    assert_eq!(r.last_error.as_deref(), Some("fail 5"));
    clock.advance_ms(DAY);
    assert!(
        lease(&spool).await.is_none(),
        "dead letters are not delivered"
    );
    assert_eq!(
        &spool.blobs.get(id).await.unwrap()[..],
        b"m",
        "kept for a redrive"
    );
    assert_eq!(spool.queue.list(Listing::Dead, 10).await.unwrap(), vec![id]);

    spool.queue.act(id, Action::Redrive).await.unwrap();
    let l = lease(&spool).await.expect("redriven");
    assert_eq!(l.attempt, 1, "a fresh attempt budget");
    settle(
        &spool,
        &l,
        Settlement::Failed {
            reason: "rejected".into(),
        },
    )
    .await;
    assert_eq!(record(&spool, id).await.state, State::Failed);
    assert!(spool
        .queue
        .list(Listing::Dead, 10)
        .await
        .unwrap()
        .is_empty());
}

pub(crate) async fn release_does_not_spend_an_attempt(b: &impl Backend) {
    let clock = ManualClock::new(START);
    let spool = b.open(b.options(), clock.clone());
    let id = submit(&spool, &clock, "m").await;
    for _ in 0..8 {
        let l = lease(&spool).await.expect("due again at once");
        assert_eq!(l.attempt, 1);
        let released = Settlement::Release {
            reason: "provider paused".into(),
        };
        assert_eq!(
            settle(&spool, &l, released).await,
            Settled::Requeued { due_ms: START }
        );
    }
    let r = record(&spool, id).await;
    assert_eq!((r.state, r.receive_count), (State::Queued, 0));
    assert_eq!(r.last_error.as_deref(), Some("provider paused"));
}

pub(crate) async fn a_late_sent_beats_a_concurrent_dead_letter(b: &impl Backend) {
    let clock = ManualClock::new(START);
    let spool = b.open(
        SpoolOptions {
            max_attempts: 2,
            ..b.options()
        },
        clock.clone(),
    );
    let id = submit(&spool, &clock, "m").await;
    let slow = lease(&spool).await.unwrap();
    // The slow worker's lease runs out.
    b.elapse(&clock, b.options().visibility_timeout_ms).await;
    let other = lease(&spool).await.unwrap();
    assert_eq!(
        settle(&spool, &other, retry("x")).await,
        Settled::DeadLettered
    );
    // The slow worker's send did go through: the record must say so.
    assert_eq!(settle(&spool, &slow, sent("p")).await, Settled::Applied);
    assert_eq!(record(&spool, id).await.state, State::Sent);
    assert_eq!(settle(&spool, &slow, sent("p")).await, Settled::Stale);
    assert!(
        spool.queue.act(id, Action::Redrive).await.is_err(),
        "no longer a dead letter"
    );
    assert!(spool
        .queue
        .list(Listing::Dead, 10)
        .await
        .unwrap()
        .is_empty());
}

pub(crate) async fn hold_release_cancel_and_retry_now_by_id(b: &impl Backend) {
    let clock = ManualClock::new(START);
    let spool = b.open(b.options(), clock.clone());
    // Issue 16: a release time the submitter asked for (FUTURERELEASE, sendAt) survives the
    // operator's retry, hold and release; only send-now goes before it.
    let later = submit_at(&spool, &clock, "later", START + DAY).await;
    spool.queue.act(later, Action::RetryNow).await.unwrap();
    assert!(
        lease(&spool).await.is_none(),
        "retry keeps the release time"
    );
    spool.queue.act(later, Action::Hold).await.unwrap();
    spool.queue.act(later, Action::Release).await.unwrap();
    let r = record(&spool, later).await;
    assert_eq!((r.state, r.due_ms), (State::Queued, Some(START + DAY)));
    assert!(
        lease(&spool).await.is_none(),
        "release keeps the release time"
    );
    spool.queue.act(later, Action::SendNow).await.unwrap();
    assert_eq!(lease(&spool).await.unwrap().job.id, later, "sent now");

    let held = submit(&spool, &clock, "held").await;
    spool.queue.act(held, Action::Hold).await.unwrap();
    assert_eq!(record(&spool, held).await.state, State::Held);
    assert!(lease(&spool).await.is_none(), "a held message is not sent");
    assert_eq!(
        spool.queue.list(Listing::Held, 10).await.unwrap(),
        vec![held]
    );
    assert!(
        spool.queue.act(held, Action::Hold).await.is_err(),
        "held already"
    );
    spool.queue.act(held, Action::Release).await.unwrap();
    assert!(spool
        .queue
        .list(Listing::Held, 10)
        .await
        .unwrap()
        .is_empty());
    let l = lease(&spool).await.expect("released: due now");
    assert_eq!(l.job.id, held);

    // The submitter withdraws a message: out for good, bytes gone, marked canceled.
    let withdrawn = submit_at(&spool, &clock, "oops", START + DAY).await;
    spool
        .queue
        .act(
            withdrawn,
            Action::Cancel {
                reason: "canceled".into(),
            },
        )
        .await
        .unwrap();
    let r = record(&spool, withdrawn).await;
    assert!(r.canceled);
    assert_eq!(r.state, State::Failed);
    assert!(spool.blobs.get(withdrawn).await.is_err());
    assert!(matches!(
        spool
            .queue
            .act(
                withdrawn,
                Action::Cancel {
                    reason: "again".into()
                }
            )
            .await,
        Err(SpoolError::NotFound(_))
    ));
    // A cancel racing a send in progress loses: sent is what happened.
    spool
        .queue
        .act(
            held,
            Action::Cancel {
                reason: "too late".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(settle(&spool, &l, sent("p")).await, Settled::Applied);
    assert_eq!(record(&spool, held).await.state, State::Sent);
    // Nothing to act on for an unknown id.
    assert!(spool.queue.act(QueueId(7), Action::Delete).await.is_err());
}

pub(crate) async fn bounds_refuse_rather_than_overfill(b: &impl Backend) {
    let clock = ManualClock::new(START);
    let spool = b.open(
        SpoolOptions {
            max_messages: 2,
            max_bytes: 10,
            ..b.options()
        },
        clock.clone(),
    );
    submit(&spool, &clock, "12345").await;
    let now = clock.now_ms();
    assert!(matches!(
        try_submit(&spool, &clock, "123456", now, None).await,
        Err(SpoolError::Full("bytes"))
    ));
    submit(&spool, &clock, "1").await;
    assert!(!spool.queue.has_room(0));
    assert!(matches!(
        try_submit(&spool, &clock, "", now, None).await,
        Err(SpoolError::Full("message count"))
    ));
    // Sending frees room.
    let l = lease(&spool).await.unwrap();
    settle(&spool, &l, sent("p")).await;
    assert!(spool.queue.has_room(0));
}

pub(crate) async fn what_was_acknowledged_survives_a_reopen(b: &impl Backend) {
    let clock = ManualClock::new(START);
    let (a, bb);
    {
        let spool = b.open(b.options(), clock.clone());
        a = submit(&spool, &clock, "a").await;
        clock.advance_ms(1);
        bb = submit(&spool, &clock, "b").await;
        assert_eq!(lease(&spool).await.unwrap().job.id, a);
        // Closed while leased: a crash loses nothing more (leases are durable).
    }
    let spool = b.open(b.options(), clock.clone());
    assert_eq!(lease(&spool).await.unwrap().job.id, bb);
    assert!(lease(&spool).await.is_none(), "a is still leased");
    b.elapse(&clock, b.options().visibility_timeout_ms).await;
    let l = lease(&spool).await.expect("a's lease expired");
    assert_eq!((l.job.id, l.attempt), (a, 2));
    assert_eq!(&spool.blobs.get(a).await.unwrap()[..], b"a");
    assert_eq!(spool.queue.depth().await.unwrap().stored_messages, 2);
}

pub(crate) async fn suppressions_are_scoped_by_account_and_class_and_expire(b: &impl Backend) {
    let clock = ManualClock::new(START);
    let spool = b.open(b.options(), clock.clone());
    let ledger = &spool.ledger;
    let entry = |address: &str, account: &str, class: &str, reason: &str, expires| {
        Suppression::new(address, account, class, reason.into(), START, expires)
    };
    ledger
        .suppress(entry(
            "Gone@Example.net",
            ALL_ACCOUNTS,
            ALL_CLASSES,
            "hard bounce",
            None,
        ))
        .await
        .unwrap();
    ledger
        .suppress(entry("annoyed@example.net", "a", "bulk", "complaint", None))
        .await
        .unwrap();
    ledger
        .suppress(entry(
            "later@example.net",
            "a",
            ALL_CLASSES,
            "bounce",
            Some(START + 1_000),
        ))
        .await
        .unwrap();
    let reason = |addr: &str, account: &str, class: &str| {
        let addrs = vec![addr.to_string()];
        let (account, class) = (account.to_string(), class.to_string());
        let ledger = ledger.clone();
        async move {
            ledger
                .suppressed_among(&addrs, &account, &class)
                .await
                .unwrap()
                .pop()
                .map(|(_, s)| s.reason)
        }
    };
    assert_eq!(
        reason("gone@example.net", "b", "transactional")
            .await
            .as_deref(),
        Some("hard bounce")
    );
    assert!(reason("annoyed@example.net", "a", "bulk").await.is_some());
    assert!(
        reason("annoyed@example.net", "a", "transactional")
            .await
            .is_none(),
        "a bulk complaint must not block transactional mail"
    );
    assert!(
        reason("annoyed@example.net", "b", "bulk").await.is_none(),
        "another account's suppression does not apply"
    );
    assert!(reason("later@example.net", "a", "bulk").await.is_some());
    clock.advance_ms(1_000);
    assert!(
        reason("later@example.net", "a", "bulk").await.is_none(),
        "expired"
    );
    assert_eq!(ledger.suppressions().await.unwrap().len(), 2);
    assert_eq!(
        ledger.purge().await.unwrap().suppressions,
        1,
        "the expired entry"
    );
    assert!(ledger
        .unsuppress("annoyed@example.net".into(), "a".into(), "bulk".into())
        .await
        .unwrap());
    assert!(!ledger
        .unsuppress("annoyed@example.net".into(), "a".into(), "bulk".into())
        .await
        .unwrap());
    assert!(reason("annoyed@example.net", "a", "bulk").await.is_none());
}

fn event(outcome: Outcome, rcpts: &[&str], at_ms: u64) -> FeedbackEvent {
    FeedbackEvent {
        provider_id: Some("ses-1".into()),
        submission_id: None,
        outcome,
        recipients: rcpts.iter().map(|r| r.to_string()).collect(),
        detail: Some(format!("{outcome:?}")),
        at_ms,
        tag_account: None,
        tag_class: None,
        suppress: None,
    }
}

/// Queues the two-recipient bulk message and records it sent as `provider_id`.
async fn sent_submission(spool: &Spool, clock: &ManualClock, provider_id: &str) -> QueueId {
    let id = submit(spool, clock, "m").await;
    let l = lease(spool).await.unwrap();
    assert_eq!(settle(spool, &l, sent(provider_id)).await, Settled::Applied);
    id
}

pub(crate) async fn feedback_applied_twice_counts_once_and_derives_the_state(b: &impl Backend) {
    let clock = ManualClock::new(START);
    let spool = b.open(b.options(), clock.clone());
    let ledger = &spool.ledger;
    let id = sent_submission(&spool, &clock, "ses-1").await;
    assert_eq!(ledger.by_provider_id("ses-1").await.unwrap(), Some(id));

    let applied = ledger
        .apply_feedback(
            Some("sns-1".into()),
            vec![event(Outcome::Delivered, &["bob@example.net"], START + 10)],
        )
        .await
        .unwrap();
    assert_eq!(applied.matched, vec![id]);
    let r = record(&spool, id).await;
    assert_eq!(r.state, State::Sent, "carol not delivered yet");
    assert_eq!(r.delivery["bob@example.net"].outcome, Outcome::Delivered);

    let carol = vec![event(
        Outcome::Delivered,
        &["carol@example.net"],
        START + 20,
    )];
    ledger
        .apply_feedback(Some("sns-2".into()), carol)
        .await
        .unwrap();
    let delivered = record(&spool, id).await;
    assert_eq!(delivered.state, State::Delivered);

    // The same SNS message again, even saying something else: acknowledged, nothing applied.
    let again = ledger
        .apply_feedback(
            Some("sns-2".into()),
            vec![event(Outcome::Bounced, &["carol@example.net"], START + 30)],
        )
        .await
        .unwrap();
    assert!(again.duplicate);
    assert!(again.matched.is_empty());
    assert_eq!(record(&spool, id).await, delivered, "nothing changed");
}

pub(crate) async fn a_late_delivery_does_not_undo_a_bounce_and_bounces_suppress_by_class(
    b: &impl Backend,
) {
    let clock = ManualClock::new(START);
    let spool = b.open(b.options(), clock.clone());
    let ledger = &spool.ledger;
    let id = sent_submission(&spool, &clock, "ses-1").await;
    let mut bounce = event(Outcome::Bounced, &["bob@example.net"], START + 50);
    bounce.suppress = Some(("bounce Permanent/General".into(), Some(DAY)));
    let applied = ledger
        .apply_feedback(Some("sns-b".into()), vec![bounce])
        .await
        .unwrap();
    assert_eq!(applied.suppressed.len(), 1);
    assert_eq!(applied.suppressed[0].class, "bulk");
    assert_eq!(applied.suppressed[0].account, "a");
    assert_eq!(applied.suppressed[0].expires_ms, Some(START + DAY));
    ledger
        .apply_feedback(
            Some("sns-d".into()),
            vec![event(Outcome::Delivered, &["bob@example.net"], START + 10)],
        )
        .await
        .unwrap();
    let r = record(&spool, id).await;
    assert_eq!(r.delivery["bob@example.net"].outcome, Outcome::Bounced);
    assert_eq!(r.state, State::Bounced);
    let bob = vec!["bob@example.net".to_string()];
    assert_eq!(
        ledger
            .suppressed_among(&bob, "a", "bulk")
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(ledger
        .suppressed_among(&bob, "a", "transactional")
        .await
        .unwrap()
        .is_empty());
    // A complaint outranks the bounce state of the submission.
    ledger
        .apply_feedback(
            Some("sns-c".into()),
            vec![event(
                Outcome::Complained,
                &["carol@example.net"],
                START + 60,
            )],
        )
        .await
        .unwrap();
    assert_eq!(record(&spool, id).await.state, State::Complained);
}

pub(crate) async fn feedback_for_an_unknown_message_matches_nothing_but_suppresses(
    b: &impl Backend,
) {
    let clock = ManualClock::new(START);
    let spool = b.open(b.options(), clock.clone());
    let ledger = &spool.ledger;
    let mut unknown = event(Outcome::Bounced, &["x@example.net"], START);
    unknown.provider_id = Some("not-ours".into());
    unknown.suppress = Some(("bounce".into(), None));
    let applied = ledger
        .apply_feedback(Some("sns-x".into()), vec![unknown])
        .await
        .unwrap();
    assert_eq!(applied.unmatched, 1);
    assert!(applied.matched.is_empty());
    let x = vec!["x@example.net".to_string()];
    assert_eq!(
        ledger
            .suppressed_among(&x, "any", "bulk")
            .await
            .unwrap()
            .len(),
        1,
        "no account or class known: the entry covers all"
    );
    // A submission_id tag whose provider id disagrees matches nothing.
    let id = sent_submission(&spool, &clock, "ses-1").await;
    let mut forged = event(Outcome::Bounced, &["bob@example.net"], START);
    forged.submission_id = Some(id);
    forged.provider_id = Some("someone-else".into());
    let applied = ledger
        .apply_feedback(Some("sns-y".into()), vec![forged])
        .await
        .unwrap();
    assert_eq!(applied.unmatched, 1);
    assert_eq!(record(&spool, id).await.state, State::Sent);
}

pub(crate) async fn feedback_that_overtakes_the_send_applies_when_it_is_recorded(b: &impl Backend) {
    let clock = ManualClock::new(START);
    let spool = b.open(b.options(), clock.clone());
    let id = submit(&spool, &clock, "m").await;
    let l = lease(&spool).await.unwrap();
    // A crash window: SES reports before the spool recorded the send.
    let mut early = event(Outcome::Bounced, &["bob@example.net"], START);
    early.submission_id = Some(id);
    early.provider_id = None;
    let applied = spool
        .ledger
        .apply_feedback(Some("sns-early".into()), vec![early])
        .await
        .unwrap();
    assert_eq!(applied.matched, vec![id]);
    assert_eq!(
        record(&spool, id).await.state,
        State::Queued,
        "not sent yet"
    );
    settle(&spool, &l, sent("ses-9")).await;
    assert_eq!(record(&spool, id).await.state, State::Bounced);
}

pub(crate) async fn retention_purges_exactly_what_is_due(b: &impl Backend) {
    let clock = ManualClock::new(START);
    let spool = b.open(b.options(), clock.clone());
    let ledger = &spool.ledger;
    let old = sent_submission(&spool, &clock, "ses-old").await;
    clock.advance_ms(DAY);
    let younger = sent_submission(&spool, &clock, "ses-young").await;
    // Feedback on the old one a day later moves its retention clock.
    clock.advance_ms(DAY);
    let delivered = event(Outcome::Delivered, &[], clock.now_ms());
    let mut delivered_old = delivered.clone();
    delivered_old.provider_id = Some("ses-old".into());
    ledger
        .apply_feedback(Some("sns-1".into()), vec![delivered_old])
        .await
        .unwrap();
    assert_eq!(record(&spool, old).await.state, State::Delivered);
    let queued = submit(&spool, &clock, "waiting").await;
    submit_at(&spool, &clock, "held for later", START + 60 * DAY).await;

    // Just past 30 days after the younger one was sent: it goes; the old one (delivered a
    // day after that) stays, and so does what is still queued.
    clock.set_ms(START + DAY + 30 * DAY + 1);
    let purged = ledger.purge().await.unwrap();
    assert_eq!(purged.finished, 1, "{purged:?}");
    assert!(ledger.get(younger).await.unwrap().is_none());
    assert_eq!(ledger.by_provider_id("ses-young").await.unwrap(), None);
    assert!(ledger.get(old).await.unwrap().is_some());
    assert!(ledger.get(queued).await.unwrap().is_some());
    assert_eq!(ledger.purge().await.unwrap().finished, 0, "nothing twice");
    clock.advance_ms(DAY);
    assert_eq!(ledger.purge().await.unwrap().finished, 1);
    assert!(ledger.get(old).await.unwrap().is_none());
    assert_eq!(ledger.by_provider_id("ses-old").await.unwrap(), None);
    // Late feedback for a purged submission matches nothing and changes nothing.
    let mut late = delivered;
    late.provider_id = Some("ses-old".into());
    let applied = ledger
        .apply_feedback(Some("sns-2".into()), vec![late])
        .await
        .unwrap();
    assert_eq!(applied.unmatched, 1);
    let still_queued = spool.queue.list(Listing::Queued, 10).await.unwrap();
    assert_eq!(still_queued.len(), 2, "queued mail is never purged");
}

pub(crate) async fn dead_letters_are_purged_after_their_retention(b: &impl Backend) {
    let clock = ManualClock::new(START);
    let spool = b.open(
        SpoolOptions {
            max_attempts: 1,
            ..b.options()
        },
        clock.clone(),
    );
    let id = submit(&spool, &clock, "m").await;
    let l = lease(&spool).await.unwrap();
    assert_eq!(settle(&spool, &l, retry("x")).await, Settled::DeadLettered);
    clock.advance_ms(14 * DAY - 1);
    assert_eq!(spool.ledger.purge().await.unwrap().dead, 0);
    clock.advance_ms(2);
    assert_eq!(spool.ledger.purge().await.unwrap().dead, 1);
    assert!(spool.ledger.get(id).await.unwrap().is_none());
    assert!(spool.blobs.get(id).await.is_err());
    assert!(spool.queue.has_room(999_999), "purged bytes are given back");
}

pub(crate) async fn the_change_feed_resumes_from_a_cursor(b: &impl Backend) {
    let clock = ManualClock::new(START);
    let spool = b.open(b.options(), clock.clone());
    let ledger = &spool.ledger;
    let start = ledger.changes(0, 100).await.unwrap();
    assert!(start.changes.is_empty() && !start.truncated);
    let link = JmapLink {
        email_id: "M1".into(),
        identity_id: "i".into(),
        envelope: serde_json::Value::Null,
        send_at: START,
    };
    let now = clock.now_ms();
    let jmap = try_submit(&spool, &clock, "via jmap", now, Some(link.clone()))
        .await
        .unwrap();
    assert_eq!(
        record(&spool, jmap).await.jmap,
        Some(link.clone()),
        "the link is in the record"
    );
    let smtp = submit(&spool, &clock, "via smtp").await;
    let page = ledger.changes(0, 100).await.unwrap();
    let seen: Vec<(QueueId, bool)> = page.changes.iter().map(|c| (c.id, c.jmap)).collect();
    if b.announces_all() {
        assert_eq!(seen, vec![(jmap, true), (smtp, false)]);
    } else {
        assert_eq!(seen, vec![(jmap, true)], "JMAP submissions are announced");
    }
    assert!(page.changes.iter().all(|c| c.account_id == "a"));
    let cursor = page.next;

    // A consumer that stopped here resumes with what happened since, in order.
    for _ in 0..2 {
        let l = lease(&spool).await.expect("both due");
        settle(&spool, &l, sent("p")).await;
    }
    let page = ledger.changes(cursor, 100).await.unwrap();
    assert!(!page.changes.is_empty());
    assert!(
        page.changes
            .iter()
            .all(|c| c.id == jmap || (c.id == smtp && b.announces_all())),
        "{:?}",
        page.changes
    );
    assert!(page.changes.iter().any(|c| c.id == jmap), "the send");
    assert!(page.changes.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(page.changes.iter().all(|c| c.seq > cursor));
    assert!(ledger
        .changes(page.next, 100)
        .await
        .unwrap()
        .changes
        .is_empty());
    // Paging: one at a time gives the same entries.
    let mut paged = Vec::new();
    let mut at = 0;
    loop {
        let one = ledger.changes(at, 1).await.unwrap();
        if one.changes.is_empty() {
            break;
        }
        assert_eq!(one.changes.len(), 1);
        paged.push(one.changes[0].seq);
        at = one.next;
    }
    let all: Vec<u64> = ledger
        .changes(0, 100)
        .await
        .unwrap()
        .changes
        .iter()
        .map(|c| c.seq)
        .collect();
    assert_eq!(paged, all);

    // A waiter for news is woken by the next change.
    let waiter = {
        let ledger = ledger.clone();
        let next = page.next;
        tokio::spawn(async move { ledger.wait_for_changes(next, Duration::from_secs(30)).await })
    };
    tokio::task::yield_now().await;
    let later = try_submit(&spool, &clock, "later", START + DAY, Some(link))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("woken by the change")
        .unwrap();

    // Retention: entries older than the feed keeps are dropped, and a consumer further
    // behind is told so (and re-reads what it watches).
    clock.advance_ms(CHANGE_FEED_RETENTION_MS + 1);
    spool.queue.act(later, Action::Hold).await.unwrap();
    assert!(ledger.purge().await.unwrap().changes >= 3);
    let behind = ledger.changes(cursor, 100).await.unwrap();
    assert!(behind.truncated);
    assert_eq!(behind.changes.len(), 1, "only the hold is left");
    assert_eq!(behind.changes[0].id, later);
    assert!(!ledger.changes(behind.next, 100).await.unwrap().truncated);
}

/// Sends, deliveries, hard bounces and complaints per hour, identity and class are counted
/// as records change — each change once, whatever else rewrites the record — and outlive the
/// records' own retention, so a 7-day window stays true when records are kept for less.
pub(crate) async fn activity_is_counted_once_and_outlives_record_retention(b: &impl Backend) {
    use crate::activity::{Counts, ACTIVITY_RETENTION_MS, HOUR_MS};
    let clock = ManualClock::new(START);
    let mut options = b.options();
    options.retention_ms = DAY;
    let spool = b.open(options.clone(), clock.clone());
    let ledger = &spool.ledger;
    assert!(ledger.activity(0).await.unwrap().is_empty());
    let id = sent_submission(&spool, &clock, "ses-1").await;
    // Queued but not sent: counts nothing.
    submit(&spool, &clock, "waiting").await;
    let bounce = vec![event(Outcome::Bounced, &["bob@example.net"], START + 10)];
    for _ in 0..2 {
        ledger
            .apply_feedback(Some("sns-1".into()), bounce.clone())
            .await
            .unwrap();
    }
    // A transient bounce is SES still trying: not a bounce for the rates.
    let mut soft = event(Outcome::Bounced, &["carol@example.net"], START + 20);
    soft.detail = Some("Transient/MailboxFull".into());
    ledger
        .apply_feedback(Some("sns-2".into()), vec![soft])
        .await
        .unwrap();
    let complaint = vec![event(
        Outcome::Complained,
        &["carol@example.net"],
        START + HOUR_MS + 5,
    )];
    ledger
        .apply_feedback(Some("sns-3".into()), complaint)
        .await
        .unwrap();
    assert_eq!(record(&spool, id).await.state, State::Complained);
    let counts = |rows: &[crate::activity::ActivityRow]| {
        rows.iter()
            .map(|r| {
                assert_eq!((r.identity_id.as_str(), r.class), ("i", MessageClass::Bulk));
                (r.hour_ms, r.counts)
            })
            .collect::<Vec<_>>()
    };
    let expected = vec![
        (
            START,
            Counts {
                sends: 2,
                bounces: 1,
                ..Counts::default()
            },
        ),
        (
            START + HOUR_MS,
            Counts {
                deliveries: 1,
                complaints: 1,
                ..Counts::default()
            },
        ),
    ];
    assert_eq!(counts(&ledger.activity(0).await.unwrap()), expected);
    assert_eq!(
        counts(&ledger.activity(START + HOUR_MS).await.unwrap()),
        expected[1..]
    );
    // The record goes with retention; its counts stay, and survive a reopen.
    clock.advance_ms(3 * DAY);
    assert_eq!(ledger.purge().await.unwrap().finished, 1);
    assert!(ledger.get(id).await.unwrap().is_none());
    drop(spool);
    let spool = b.open(options, clock.clone());
    let ledger = &spool.ledger;
    assert_eq!(counts(&ledger.activity(0).await.unwrap()), expected);
    // Counts go once they are older than any window needs.
    clock.set_ms(START + HOUR_MS + ACTIVITY_RETENTION_MS);
    assert_eq!(ledger.purge().await.unwrap().activity, 1);
    assert_eq!(counts(&ledger.activity(0).await.unwrap()), expected[1..]);
}

/// The reputation guard's state is stored as given and survives a reopen.
pub(crate) async fn guard_state_round_trips_and_survives_a_reopen(b: &impl Backend) {
    let clock = ManualClock::new(START);
    let spool = b.open(b.options(), clock.clone());
    assert_eq!(spool.ledger.guard_state().await.unwrap(), None);
    let first = serde_json::json!({"holds": [{"class": "bulk"}], "decisions": []});
    spool.ledger.save_guard_state(first).await.unwrap();
    let second = serde_json::json!({"holds": [], "decisions": [{"kind": "release"}]});
    spool.ledger.save_guard_state(second.clone()).await.unwrap();
    drop(spool);
    let spool = b.open(b.options(), clock.clone());
    assert_eq!(spool.ledger.guard_state().await.unwrap(), Some(second));
}

/// One test per contract check, for the backend `$backend` makes.
macro_rules! contract_suite {
    ($backend:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let backend = $backend;
                $crate::spool::contract::$check(&backend).await;
            }
        )*
    };
}

/// The embedded backend.
mod redb {
    use std::sync::Arc;

    use super::Backend;
    use crate::clock::ManualClock;
    use crate::spool::{Spool, SpoolOptions};

    struct Redb(tempfile::TempDir);

    impl Backend for Redb {
        fn open(&self, options: SpoolOptions, clock: Arc<ManualClock>) -> Spool {
            crate::spool::redb::open(self.0.path(), options, clock).unwrap()
        }
    }

    fn redb() -> Redb {
        Redb(tempfile::tempdir().unwrap())
    }

    contract_suite!(redb();
        leases_hide_until_the_deadline_then_reappear,
        a_large_message_reads_back_whole,
        extension_keeps_a_lease,
        the_queue_is_ordered_by_due_time_and_leases_in_batches,
        a_long_poll_wakes_when_mail_arrives,
        retries_back_off_and_the_fifth_failure_dead_letters,
        release_does_not_spend_an_attempt,
        a_late_sent_beats_a_concurrent_dead_letter,
        hold_release_cancel_and_retry_now_by_id,
        bounds_refuse_rather_than_overfill,
        what_was_acknowledged_survives_a_reopen,
        suppressions_are_scoped_by_account_and_class_and_expire,
        feedback_applied_twice_counts_once_and_derives_the_state,
        a_late_delivery_does_not_undo_a_bounce_and_bounces_suppress_by_class,
        feedback_for_an_unknown_message_matches_nothing_but_suppresses,
        feedback_that_overtakes_the_send_applies_when_it_is_recorded,
        retention_purges_exactly_what_is_due,
        dead_letters_are_purged_after_their_retention,
        the_change_feed_resumes_from_a_cursor,
        activity_is_counted_once_and_outlives_record_retention,
        guard_state_round_trips_and_survives_a_reopen,
    );
}
