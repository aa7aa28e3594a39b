//! Spool semantics under a manual clock: leases, expiry, retries with backoff, dead letters,
//! redrive, bounds, and survival across reopen.

use std::sync::Arc;

use super::*;
use crate::clock::ManualClock;

const START: u64 = 1_800_000_000_000;

fn options() -> SpoolOptions {
    SpoolOptions {
        fsync: true,
        max_messages: 100,
        max_bytes: 1_000_000,
        min_free_disk_bytes: 0,
        visibility_timeout_ms: 60_000,
        max_attempts: 3,
        retry_base_ms: 1_000,
        retry_max_ms: 10_000,
        dead_letter_retention_ms: 14 * 86_400_000,
        jitter_seed: 7,
    }
}

fn new_submission(body: &str) -> NewSubmission {
    NewSubmission {
        login: "alice".into(),
        tenant_id: "t".into(),
        account_id: "a".into(),
        user_id: "u".into(),
        identity_id: "i".into(),
        mail_from: "alice@example.com".into(),
        recipients: vec!["bob@example.net".into()],
        message_class: "transactional".into(),
        mime: body.as_bytes().to_vec(),
    }
}

fn open(dir: &std::path::Path, clock: &Arc<ManualClock>, opts: SpoolOptions) -> Arc<Spool> {
    Spool::open(dir, opts, clock.clone()).unwrap()
}

#[tokio::test]
async fn lease_hides_until_visibility_timeout_then_expires() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let spool = open(dir.path(), &clock, options());
    let id = spool.allocate_id();
    spool.enqueue(id, new_submission("m1")).await.unwrap();

    let lease = spool.lease().await.unwrap().expect("due at once");
    assert_eq!(lease.record.id, id);
    assert_eq!(lease.record.receive_count, 1);
    assert_eq!(spool.load_mime(id).await.unwrap(), b"m1");
    assert!(
        spool.lease().await.unwrap().is_none(),
        "hidden while leased"
    );

    clock.advance_ms(59_999);
    assert!(spool.lease().await.unwrap().is_none());
    clock.advance_ms(1);
    let again = spool
        .lease()
        .await
        .unwrap()
        .expect("visible after the timeout");
    assert_eq!(again.record.receive_count, 2);

    // The first holder's late retry is stale and changes nothing.
    assert_eq!(
        spool.retry(&lease, "late".into(), None).await.unwrap(),
        RetryOutcome::Stale
    );
    spool.complete(&again, "p-1".into()).await.unwrap();
    let record = spool.get(id).unwrap().unwrap();
    assert_eq!(record.state, State::Sent);
    assert_eq!(record.provider_id.as_deref(), Some("p-1"));
    assert!(
        matches!(spool.load_mime(id).await, Err(SpoolError::NotFound(_))),
        "blob freed once sent"
    );
    assert!(spool.lease().await.unwrap().is_none());
}

#[tokio::test]
async fn queue_is_ordered_by_due_time() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let spool = open(dir.path(), &clock, options());
    let (late, early, now) = (
        spool.allocate_id(),
        spool.allocate_id(),
        spool.allocate_id(),
    );
    spool
        .enqueue_at(late, new_submission("late"), START + 5_000)
        .await
        .unwrap();
    spool
        .enqueue_at(early, new_submission("early"), START + 1_000)
        .await
        .unwrap();
    spool.enqueue(now, new_submission("now")).await.unwrap();
    assert_eq!(spool.lease().await.unwrap().unwrap().record.id, now);
    assert!(spool.lease().await.unwrap().is_none());
    assert_eq!(spool.next_due().unwrap(), Some(START + 1_000));
    clock.advance_ms(5_000);
    assert_eq!(spool.lease().await.unwrap().unwrap().record.id, early);
    assert_eq!(spool.lease().await.unwrap().unwrap().record.id, late);
}

#[tokio::test]
async fn retries_back_off_then_dead_letter_and_redrive() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let spool = open(dir.path(), &clock, options());
    let id = spool.allocate_id();
    spool.enqueue(id, new_submission("m")).await.unwrap();

    let mut delays = Vec::new();
    for attempt in 1..=2 {
        let lease = spool.lease().await.unwrap().expect("due");
        assert_eq!(lease.record.receive_count, attempt);
        let RetryOutcome::Requeued { due_ms } = spool
            .retry(&lease, format!("fail {attempt}"), None)
            .await
            .unwrap()
        else {
            panic!("expected requeue");
        };
        delays.push(due_ms - clock.now_ms());
        assert!(
            spool.lease().await.unwrap().is_none(),
            "not due before its backoff"
        );
        clock.advance_ms(due_ms - clock.now_ms());
    }
    // base 1 s doubling, ±20% jitter.
    assert!((800..=1200).contains(&delays[0]), "{delays:?}");
    assert!((1600..=2400).contains(&delays[1]), "{delays:?}");

    let lease = spool.lease().await.unwrap().expect("third attempt");
    assert_eq!(
        spool.retry(&lease, "fail 3".into(), None).await.unwrap(),
        RetryOutcome::DeadLettered
    );
    let record = spool.get(id).unwrap().unwrap();
    assert_eq!(record.state, State::Dead);
    assert_eq!(record.last_error.as_deref(), Some("fail 3"));
    clock.advance_ms(86_400_000);
    assert!(
        spool.lease().await.unwrap().is_none(),
        "dead letters are not delivered"
    );
    assert_eq!(spool.load_mime(id).await.unwrap(), b"m", "kept for redrive");

    spool.redrive(id).await.unwrap();
    let lease = spool.lease().await.unwrap().expect("redriven");
    assert_eq!(lease.record.receive_count, 1, "fresh attempt budget");
    spool.fail(&lease, "rejected".into()).await.unwrap();
    assert_eq!(spool.get(id).unwrap().unwrap().state, State::Failed);
}

#[tokio::test]
async fn dead_letters_purged_after_retention() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let spool = open(
        dir.path(),
        &clock,
        SpoolOptions {
            max_attempts: 1,
            ..options()
        },
    );
    let id = spool.allocate_id();
    spool.enqueue(id, new_submission("m")).await.unwrap();
    let lease = spool.lease().await.unwrap().unwrap();
    assert_eq!(
        spool.retry(&lease, "x".into(), None).await.unwrap(),
        RetryOutcome::DeadLettered
    );
    clock.advance_ms(14 * 86_400_000 - 1);
    assert_eq!(spool.purge_dead().await.unwrap(), 0);
    clock.advance_ms(2);
    assert_eq!(spool.purge_dead().await.unwrap(), 1);
    assert!(spool.get(id).unwrap().is_none());
    assert!(spool.has_room(999_999), "purged bytes are given back");
}

#[tokio::test]
async fn bounds_refuse_rather_than_overfill() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let spool = open(
        dir.path(),
        &clock,
        SpoolOptions {
            max_messages: 2,
            max_bytes: 10,
            ..options()
        },
    );
    spool
        .enqueue(spool.allocate_id(), new_submission("12345"))
        .await
        .unwrap();
    assert!(matches!(
        spool
            .enqueue(spool.allocate_id(), new_submission("123456"))
            .await,
        Err(SpoolError::Full("bytes"))
    ));
    spool
        .enqueue(spool.allocate_id(), new_submission("1"))
        .await
        .unwrap();
    assert!(!spool.has_room(0));
    assert!(matches!(
        spool.enqueue(spool.allocate_id(), new_submission("")).await,
        Err(SpoolError::Full("message count"))
    ));
    // Sending frees room.
    let lease = spool.lease().await.unwrap().unwrap();
    spool.complete(&lease, "p".into()).await.unwrap();
    assert!(spool.has_room(0));

    let other_dir = tempfile::tempdir().unwrap();
    let full_disk = open(
        other_dir.path(),
        &clock,
        SpoolOptions {
            min_free_disk_bytes: u64::MAX,
            ..options()
        },
    );
    assert!(matches!(
        full_disk
            .enqueue(full_disk.allocate_id(), new_submission("x"))
            .await,
        Err(SpoolError::Full("free disk"))
    ));
}

#[tokio::test]
async fn leases_and_ids_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let (a, b);
    {
        let spool = open(dir.path(), &clock, options());
        a = spool.allocate_id();
        b = spool.allocate_id();
        spool.enqueue(a, new_submission("a")).await.unwrap();
        spool.enqueue(b, new_submission("b")).await.unwrap();
        let lease = spool.lease().await.unwrap().unwrap();
        assert_eq!(lease.record.id, a);
        // Closed while leased (a crash loses nothing more: leases are committed durably).
    }
    let spool = open(dir.path(), &clock, options());
    assert!(spool.allocate_id() > b, "ids never repeat after a restart");
    assert_eq!(spool.lease().await.unwrap().unwrap().record.id, b);
    assert!(spool.lease().await.unwrap().is_none(), "a is still leased");
    clock.advance_ms(60_000);
    let lease = spool.lease().await.unwrap().expect("a's lease expired");
    assert_eq!(lease.record.id, a);
    assert_eq!(spool.load_mime(a).await.unwrap(), b"a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enqueues_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let spool = open(
        dir.path(),
        &clock,
        SpoolOptions {
            max_messages: 1000,
            ..options()
        },
    );
    let commits_before = spool.commits();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move {
            let id = spool.allocate_id();
            spool
                .enqueue(id, new_submission(&format!("m{i}")))
                .await
                .map(|()| id)
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().unwrap());
    }
    let commits = spool.commits() - commits_before;
    assert!(
        commits < 200,
        "200 concurrent enqueues took {commits} commits: no group commit"
    );
    for id in &ids {
        assert_eq!(spool.get(*id).unwrap().unwrap().state, State::Queued);
    }
    let mut leased = 0;
    while spool.lease().await.unwrap().is_some() {
        leased += 1;
    }
    assert_eq!(leased, 200);
}

#[tokio::test]
async fn sent_wins_over_a_concurrent_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let spool = open(
        dir.path(),
        &clock,
        SpoolOptions {
            max_attempts: 2,
            ..options()
        },
    );
    let id = spool.allocate_id();
    spool.enqueue(id, new_submission("m")).await.unwrap();
    let slow = spool.lease().await.unwrap().unwrap();
    clock.advance_ms(60_000); // the slow worker's lease runs out
    let other = spool.lease().await.unwrap().unwrap();
    assert_eq!(
        spool.retry(&other, "x".into(), None).await.unwrap(),
        RetryOutcome::DeadLettered
    );
    // The slow worker's send did go through: the record must say so.
    assert_eq!(
        spool.complete(&slow, "p".into()).await.unwrap(),
        RetryOutcome::Applied
    );
    let record = spool.get(id).unwrap().unwrap();
    assert_eq!(record.state, State::Sent);
    assert_eq!(
        spool.complete(&slow, "p".into()).await.unwrap(),
        RetryOutcome::Stale
    );
    assert!(spool.redrive(id).await.is_err(), "no longer a dead letter");
}

#[tokio::test]
async fn suppressions_are_scoped_by_account_and_class_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let spool = open(dir.path(), &clock, options());
    spool
        .suppress(
            "Gone@Example.net",
            "*",
            ALL_CLASSES,
            "hard bounce".into(),
            None,
        )
        .await
        .unwrap();
    spool
        .suppress("annoyed@example.net", "a", "bulk", "complaint".into(), None)
        .await
        .unwrap();
    spool
        .suppress(
            "later@example.net",
            "a",
            ALL_CLASSES,
            "bounce".into(),
            Some(START + 1_000),
        )
        .await
        .unwrap();
    let reason = |addr: &str, account: &str, class: &str| {
        spool
            .suppressed(addr, account, class)
            .unwrap()
            .map(|s| s.reason)
    };
    assert_eq!(
        reason("gone@example.net", "b", "transactional").as_deref(),
        Some("hard bounce")
    );
    assert!(reason("annoyed@example.net", "a", "bulk").is_some());
    assert!(
        reason("annoyed@example.net", "a", "transactional").is_none(),
        "a bulk complaint must not block transactional mail"
    );
    assert!(
        reason("annoyed@example.net", "b", "bulk").is_none(),
        "another account's suppression does not apply"
    );
    assert!(reason("later@example.net", "a", "bulk").is_some());
    clock.advance_ms(1_000);
    assert!(
        reason("later@example.net", "a", "bulk").is_none(),
        "expired"
    );
    assert_eq!(spool.suppressions().unwrap().len(), 2);
    let stored = || {
        use redb::ReadableTableMetadata;
        let txn = spool.db.begin_read().unwrap();
        txn.open_table(SUPPRESSIONS).unwrap().len().unwrap()
    };
    assert_eq!(stored(), 3, "expired but not yet purged");
    spool.purge_dead().await.unwrap();
    assert_eq!(stored(), 2, "the janitor removed the expired entry");
    assert!(spool
        .unsuppress("annoyed@example.net", "a", "bulk")
        .await
        .unwrap());
    assert!(!spool
        .unsuppress("annoyed@example.net", "a", "bulk")
        .await
        .unwrap());
    assert!(reason("annoyed@example.net", "a", "bulk").is_none());
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

/// Enqueues a two-recipient message and records it sent as `ses-1`.
async fn sent_submission(spool: &Spool) -> QueueId {
    let id = spool.allocate_id();
    let mut new = new_submission("m");
    new.recipients = vec!["bob@example.net".into(), "Carol@example.net".into()];
    new.message_class = "bulk".into();
    spool.enqueue(id, new).await.unwrap();
    let lease = spool.lease().await.unwrap().unwrap();
    spool.complete(&lease, "ses-1".into()).await.unwrap();
    id
}

#[tokio::test]
async fn feedback_finds_the_submission_by_provider_id_and_derives_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let spool = open(dir.path(), &clock, options());
    let id = sent_submission(&spool).await;
    let mut changes = spool.subscribe();

    let applied = spool
        .apply_feedback(
            Some("sns-1".into()),
            vec![event(Outcome::Delivered, &["bob@example.net"], START + 10)],
        )
        .await
        .unwrap();
    assert_eq!(applied.matched, vec![id]);
    assert_eq!(changes.recv().await.unwrap(), id);
    let record = spool.get(id).unwrap().unwrap();
    assert_eq!(record.state, State::Sent, "carol not delivered yet");
    assert_eq!(
        record.delivery["bob@example.net"].outcome,
        Outcome::Delivered
    );

    spool
        .apply_feedback(
            Some("sns-2".into()),
            vec![event(
                Outcome::Delivered,
                &["carol@example.net"],
                START + 20,
            )],
        )
        .await
        .unwrap();
    assert_eq!(spool.get(id).unwrap().unwrap().state, State::Delivered);

    // The same SNS message again: acknowledged, nothing applied.
    let again = spool
        .apply_feedback(
            Some("sns-2".into()),
            vec![event(Outcome::Bounced, &["carol@example.net"], START + 30)],
        )
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(spool.get(id).unwrap().unwrap().state, State::Delivered);
}

#[tokio::test]
async fn a_late_delivery_does_not_undo_a_bounce_and_bounces_suppress_by_class() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let spool = open(dir.path(), &clock, options());
    let id = sent_submission(&spool).await;
    let mut bounce = event(Outcome::Bounced, &["bob@example.net"], START + 50);
    bounce.suppress = Some(("bounce Permanent/General".into(), Some(86_400_000)));
    let applied = spool
        .apply_feedback(Some("sns-b".into()), vec![bounce])
        .await
        .unwrap();
    assert_eq!(applied.suppressed.len(), 1);
    assert_eq!(applied.suppressed[0].class, "bulk");
    assert_eq!(applied.suppressed[0].account, "a");
    assert_eq!(applied.suppressed[0].expires_ms, Some(START + 86_400_000));
    spool
        .apply_feedback(
            Some("sns-d".into()),
            vec![event(Outcome::Delivered, &["bob@example.net"], START + 10)],
        )
        .await
        .unwrap();
    let record = spool.get(id).unwrap().unwrap();
    assert_eq!(record.delivery["bob@example.net"].outcome, Outcome::Bounced);
    assert_eq!(record.state, State::Bounced);
    assert!(spool
        .suppressed("bob@example.net", "a", "bulk")
        .unwrap()
        .is_some());
    assert!(spool
        .suppressed("bob@example.net", "a", "transactional")
        .unwrap()
        .is_none());

    // A complaint outranks the bounce state of the submission.
    spool
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
    assert_eq!(spool.get(id).unwrap().unwrap().state, State::Complained);
}

#[tokio::test]
async fn feedback_for_an_unknown_message_matches_nothing_but_is_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let spool = open(dir.path(), &clock, options());
    let mut unknown = event(Outcome::Bounced, &["x@example.net"], START);
    unknown.provider_id = Some("not-ours".into());
    unknown.suppress = Some(("bounce".into(), None));
    let applied = spool
        .apply_feedback(Some("sns-x".into()), vec![unknown])
        .await
        .unwrap();
    assert_eq!(applied.unmatched, 1);
    assert!(applied.matched.is_empty());
    assert!(
        spool
            .suppressed("x@example.net", "any", "bulk")
            .unwrap()
            .is_some(),
        "no account or class known: the entry covers all"
    );
    // A wrong submission_id tag whose provider id disagrees matches nothing.
    let id = sent_submission(&spool).await;
    let mut forged = event(Outcome::Bounced, &["bob@example.net"], START);
    forged.submission_id = Some(id);
    forged.provider_id = Some("someone-else".into());
    let applied = spool
        .apply_feedback(Some("sns-y".into()), vec![forged])
        .await
        .unwrap();
    assert_eq!(applied.unmatched, 1);
    assert_eq!(spool.get(id).unwrap().unwrap().state, State::Sent);
}
