//! The service over a real (redb) spool: figures from recorded feedback, the in-memory check,
//! queued mail held and released with its class, state surviving a reopen.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::activity::HOUR_MS;
use crate::clock::ManualClock;
use crate::domain::{FeedbackEvent, Job, Outcome, QueueId, SubmissionRecord};
use crate::spool::{Settlement, Spool, SpoolOptions};

const START: u64 = 1_800_000_000_000 + 5 * 60_000;

/// The contract suite's options, without fsync (these tests never crash).
fn options() -> SpoolOptions {
    SpoolOptions {
        fsync: false,
        ..crate::spool::contract::options()
    }
}

fn config() -> ReputationConfig {
    ReputationConfig {
        min_sends_bounce: 4,
        min_sends_complaint: 4,
        ..ReputationConfig::default()
    }
}

async fn queue(spool: &Spool, clock: &ManualClock, class: MessageClass, to: &str) -> QueueId {
    queue_as(spool, clock, "news", class, to).await
}

/// Queues one message from `identity` to `to`.
async fn queue_as(
    spool: &Spool,
    clock: &ManualClock,
    identity: &str,
    class: MessageClass,
    to: &str,
) -> QueueId {
    let now = clock.now_ms();
    let id = QueueId::generate(now);
    spool
        .blobs
        .put(id, vec![Bytes::from_static(b"Subject: x\r\n\r\nhi\r\n")])
        .await
        .unwrap();
    let job = Job {
        id,
        login: "news".into(),
        tenant_id: "t".into(),
        account_id: "a".into(),
        user_id: "u".into(),
        identity_id: identity.into(),
        mail_from: format!("{identity}@example.com"),
        recipients: vec![to.into()],
        message_class: class,
        size: 10,
    };
    spool
        .queue
        .enqueue(SubmissionRecord::queued(job, now, now, None))
        .await
        .unwrap();
    id
}

/// Queues and sends one message to `to`; the provider id is `ses-<to>`.
async fn send(spool: &Spool, clock: &ManualClock, class: MessageClass, to: &str) {
    send_as(spool, clock, "news", class, to).await
}

/// Queues and sends one message from `identity` to `to`; the provider id is `ses-<to>`.
async fn send_as(
    spool: &Spool,
    clock: &ManualClock,
    identity: &str,
    class: MessageClass,
    to: &str,
) {
    queue_as(spool, clock, identity, class, to).await;
    let lease = spool
        .queue
        .lease(1, Duration::ZERO)
        .await
        .unwrap()
        .pop()
        .unwrap();
    let sent = Settlement::Sent {
        provider_id: format!("ses-{to}"),
        message_id: None,
    };
    spool.queue.settle(&lease, sent).await.unwrap();
}

async fn bounce(spool: &Spool, to: &str, at_ms: u64) {
    let event = FeedbackEvent {
        provider_id: Some(format!("ses-{to}")),
        submission_id: None,
        outcome: Outcome::Bounced,
        recipients: vec![to.into()],
        detail: Some("Permanent/General: 550 5.1.1 no such user".into()),
        at_ms,
        tag_account: None,
        tag_class: None,
        suppress: None,
    };
    let applied = spool
        .ledger
        .apply_feedback(Some(format!("sns-{to}")), vec![event])
        .await
        .unwrap();
    assert_eq!(applied.matched.len(), 1);
}

fn open_spool(dir: &tempfile::TempDir, clock: &Arc<ManualClock>) -> Spool {
    crate::spool::redb::open(dir.path(), options(), clock.clone()).unwrap()
}

#[tokio::test]
async fn bounces_hold_the_class_queued_mail_waits_and_release_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let spool = open_spool(&dir, &clock);
    let identities = vec!["news".to_string(), "app".to_string()];
    let rep = Reputation::open(config(), identities.clone(), spool.clone(), clock.clone()).await;
    for i in 0..4 {
        send(
            &spool,
            &clock,
            MessageClass::Bulk,
            &format!("r{i}@example.net"),
        )
        .await;
    }
    send(&spool, &clock, MessageClass::Transactional, "t@example.net").await;
    assert!(rep.refresh().await.unwrap().is_empty(), "no bounce yet");
    assert!(rep.check("news", MessageClass::Bulk).is_ok());

    clock.advance_ms(HOUR_MS);
    bounce(&spool, "r0@example.net", clock.now_ms()).await;
    let decisions = rep.refresh().await.unwrap();
    let targets: Vec<HoldTarget> = decisions.iter().map(|d| d.target.clone()).collect();
    let account_bulk = HoldTarget {
        identity: None,
        class: MessageClass::Bulk,
    };
    let news_bulk = HoldTarget {
        identity: Some("news".into()),
        class: MessageClass::Bulk,
    };
    assert_eq!(targets, vec![account_bulk.clone()]);
    let refusal = rep.check("news", MessageClass::Bulk).unwrap_err();
    assert_eq!(
        refusal.to_string(),
        "bulk mail is held: bounce rate 25.00% over the last 24h (hold level 2.00%); try again later"
    );
    assert!(rep.check("news", MessageClass::Transactional).is_ok());
    assert!(rep.check("app", MessageClass::MailingList).is_ok());

    // The report: figures per scope, the holds, the decisions, an hourly series.
    let report = rep.report();
    let bulk_day = report
        .rates
        .iter()
        .find(|r| {
            r.window == Window::Day
                && r.scope
                    == Scope::Class {
                        class: MessageClass::Bulk,
                    }
        })
        .unwrap();
    assert_eq!((bulk_day.counts.sends, bulk_day.counts.bounces), (4, 1));
    assert_eq!(report.holds.len(), 1);
    assert_eq!(report.decisions.len(), 1);
    assert_eq!(report.series.len(), 168);
    assert_eq!(report.series[166].counts.sends, 5);
    assert_eq!(report.series[167].counts.bounces, 1);
    let mut text = String::new();
    let mut registry = prometheus_client::registry::Registry::with_prefix("outbox");
    rep.register_metrics(&mut registry);
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(
            r#"outbox_reputation_bounce_rate{scope="class",identity="",class="bulk",window="24h"} 0.25"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"outbox_reputation_held{identity="",class="bulk"} 1"#));
    assert!(text.contains(r#"outbox_reputation_refusals_total{identity="news",class="bulk"} 1"#));

    // Mail of the class already queued is held, not sent into the account under review.
    let waiting = queue(&spool, &clock, MessageClass::Bulk, "w@example.net").await;
    let hold = rep.hold_for("news", MessageClass::Bulk).unwrap();
    let job = spool.ledger.get(waiting).await.unwrap().unwrap().job;
    rep.park(&job, &hold).await.unwrap();
    let held = spool.ledger.get(waiting).await.unwrap().unwrap();
    assert_eq!(held.state, State::Held);

    // A restart keeps the holds (before any refresh) and the decisions.
    drop(rep);
    drop(spool);
    let spool = open_spool(&dir, &clock);
    let rep = Reputation::open(config(), identities, spool.clone(), clock.clone()).await;
    assert!(rep.check("news", MessageClass::Bulk).is_err());
    assert_eq!(rep.decisions().len(), 1);
    rep.refresh().await.unwrap();

    // Releasing an identity that has no hold of its own changes nothing.
    assert!(matches!(
        rep.release(news_bulk).await,
        Err(ReleaseError::NotHeld(_))
    ));
    assert!(rep.check("news", MessageClass::Bulk).is_err());
    let state = |id| {
        let spool = spool.clone();
        async move { spool.ledger.get(id).await.unwrap().unwrap().state }
    };
    assert_eq!(state(waiting).await, State::Held);
    let d = rep.release(account_bulk.clone()).await.unwrap();
    assert_eq!((d.kind, d.by), (DecisionKind::Release, Actor::Operator));
    assert!(rep.check("news", MessageClass::Bulk).is_ok());
    assert_eq!(
        state(waiting).await,
        State::Queued,
        "released with its class"
    );
    assert!(matches!(
        rep.release(account_bulk).await,
        Err(ReleaseError::NotHeld(_))
    ));
    // Same figures at the next refresh: the operator's release sticks.
    assert!(rep.refresh().await.unwrap().is_empty());
    assert_eq!(rep.decisions().len(), 2);
    drop(rep);
    drop(spool);
    let spool = open_spool(&dir, &clock);
    let rep = Reputation::open(config(), vec![], spool, clock.clone()).await;
    assert!(rep.check("news", MessageClass::Bulk).is_ok());
    assert_eq!(rep.decisions()[0].kind, DecisionKind::Release);
}

#[tokio::test]
async fn the_guard_off_reports_figures_but_holds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let spool = open_spool(&dir, &clock);
    let config = ReputationConfig {
        guard: false,
        ..config()
    };
    let rep = Reputation::open(config, vec![], spool.clone(), clock.clone()).await;
    for i in 0..4 {
        send(
            &spool,
            &clock,
            MessageClass::Bulk,
            &format!("r{i}@example.net"),
        )
        .await;
    }
    bounce(&spool, "r0@example.net", clock.now_ms()).await;
    assert!(rep.refresh().await.unwrap().is_empty());
    assert!(rep.check("news", MessageClass::Bulk).is_ok());
    let report = rep.report();
    assert!(!report.guard_enabled);
    let account = report
        .rates
        .iter()
        .find(|r| r.scope == Scope::Account && r.window == Window::Week)
        .unwrap();
    assert!((account.bounce_rate - 0.25).abs() < 1e-12);
}

/// The refresh task follows the change feed: feedback recorded is judged without anyone
/// calling refresh (within about [`MIN_REFRESH`]), and the task stops on shutdown.
#[tokio::test]
async fn the_refresh_task_follows_the_change_feed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let spool = open_spool(&dir, &clock);
    let rep = Reputation::open(config(), vec![], spool.clone(), clock.clone()).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut decided = rep.watch_decisions();
    let task = tokio::spawn(rep.clone().run(stopped));
    for i in 0..4 {
        send(
            &spool,
            &clock,
            MessageClass::Bulk,
            &format!("r{i}@example.net"),
        )
        .await;
    }
    bounce(&spool, "r0@example.net", clock.now_ms()).await;
    // A generous bound on a busy machine; the figure is MIN_REFRESH.
    tokio::time::timeout(Duration::from_secs(30), decided.wait_for(|n| *n >= 1))
        .await
        .expect("the task judged the bounce")
        .unwrap();
    assert!(rep.check("news", MessageClass::Bulk).is_err());
    stop.send_replace(true);
    task.await.unwrap();
}

/// What a refresh and a check cost with a full week of rows: 20 identities × 3 classes × 192
/// hours (11,520 rows). Run by hand: `cargo test --lib reputation::tests::cost -- --ignored
/// --nocapture`.
#[tokio::test]
#[ignore]
async fn cost_of_refresh_and_check_with_a_week_of_rows() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START - 192 * HOUR_MS);
    let spool = open_spool(&dir, &clock);
    let ids: Vec<String> = (0..20).map(|i| format!("id{i}")).collect();
    let made = std::time::Instant::now();
    for hour in 0..192 {
        for id in &ids {
            for class in MessageClass::ALL {
                let to = format!("{id}-{class}-{hour}@example.net");
                send_as(&spool, &clock, id, class, &to).await;
            }
        }
        clock.advance_ms(HOUR_MS);
    }
    eprintln!("filled 11,520 sends in {:?}", made.elapsed());
    let rep = Reputation::open(config(), ids, spool.clone(), clock.clone()).await;
    assert_eq!(spool.ledger.activity(0).await.unwrap().len(), 192 * 20 * 3);
    let n = 20;
    let t = std::time::Instant::now();
    for _ in 0..n {
        rep.refresh().await.unwrap();
    }
    eprintln!("refresh: {:?} each", t.elapsed() / n);
    let t = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(rep.report());
    }
    eprintln!("report: {:?} each", t.elapsed() / n);
    let m = 1_000_000;
    let t = std::time::Instant::now();
    for i in 0..m {
        let _ = std::hint::black_box(
            rep.check(if i % 2 == 0 { "id3" } else { "id7" }, MessageClass::Bulk),
        );
    }
    eprintln!("check: {:?} each", t.elapsed() / m);
}
