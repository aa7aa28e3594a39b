//! The spool's three seams, each a small interface that a backend implements:
//!
//! - [`Queue`]: what is due and who holds it. Semantics mirror SQS (the many-node backend):
//!   a message becomes visible at its due time; a sender *leases* it, which hides it until the
//!   lease's deadline (the visibility timeout) — extended while a send is in flight — and
//!   settles it as sent, failed, retry-after or released. A lease that is never settled
//!   expires and the message is visible again (this is also how a crash is survived). Every
//!   lease counts as a receive; a retry after `max_attempts` receives dead-letters it.
//! - [`Blobs`]: the message bytes, apart from the small queue record.
//! - [`Ledger`]: the submission records (state history, per-recipient outcomes, the JMAP
//!   link), provider feedback applied atomically, the suppression list, the provider id index,
//!   a change feed consumers resume from a cursor, and retention.
//!
//! The vocabulary they speak is [`crate::domain`]. A backend keeps queue and ledger in step:
//! settling a lease or enqueueing a submission is one write that covers both (in redb one
//! transaction, see [`redb`]). Consumers hold only the seams they use; the composition root
//! ([`crate::server`]) picks the backend.

#[cfg(test)]
#[macro_use]
pub(crate) mod contract;

pub mod aws;
pub mod redb;
pub(crate) mod rules;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::activity::ActivityRow;
use crate::config::SpoolConfig;
use crate::domain::{
    FeedbackApplied, FeedbackEvent, Job, QueueId, State, SubmissionRecord, Suppression,
};

/// How long a feedback message id is remembered: longer than SNS retries (about an hour with
/// the default policy, 23 days at most) and SQS retention (14 days).
pub const FEEDBACK_DEDUPE_MS: u64 = 30 * 86_400_000;
/// How long change-feed entries are kept: a consumer further behind re-reads what it watches.
pub const CHANGE_FEED_RETENTION_MS: u64 = 7 * 86_400_000;

/// A boxed future, the object-safe form of an async method.
pub type Fut<'a, T> = Pin<Box<dyn Future<Output = Result<T, SpoolError>> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A configured bound (messages, bytes, free disk) was reached.
    #[error("spool full: {0}")]
    Full(&'static str),
    #[error("no such submission {0}")]
    NotFound(QueueId),
    /// The lease is no longer this holder's (it expired and the message changed hands, or it
    /// was settled already).
    #[error("lease on {0} lost")]
    LeaseLost(QueueId),
    #[error("spool storage: {0}")]
    Storage(String),
}

impl SpoolError {
    pub fn storage(e: impl std::fmt::Display) -> Self {
        SpoolError::Storage(e.to_string())
    }
}

/// A sender's hold on one message.
#[derive(Debug, Clone)]
pub struct Lease {
    pub job: Job,
    /// Opaque to the holder (a redb lease number, an SQS receipt handle).
    pub token: String,
    /// When the message becomes visible to others unless extended (ms).
    pub deadline_ms: u64,
    /// Which delivery attempt this is (1 for the first).
    pub attempt: u32,
}

/// How a lease ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// The transport accepted it; `provider_id` is the transport's id.
    Sent {
        provider_id: String,
        /// The `Message-ID` recipients see, when the provider replaced the message's own.
        message_id: Option<String>,
    },
    /// A permanent failure: no more attempts.
    Failed { reason: String },
    /// A temporary failure: again after `after_ms` (or the backoff schedule), or to the
    /// dead-letter queue once the attempts are used up.
    Retry {
        reason: String,
        after_ms: Option<u64>,
    },
    /// The transport could not even try (unreachable, paused): due again now, and the lease
    /// does not count as an attempt.
    Release { reason: String },
}

/// What a settlement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Recorded sent or failed.
    Applied,
    Requeued {
        due_ms: u64,
    },
    DeadLettered,
    /// The lease had expired and someone else holds the message now; nothing changed.
    /// (A `Sent` is recorded even then: sent is what really happened.)
    Stale,
}

/// What an operator or the submitting client does to a message by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Keep a queued message from being sent until released.
    Hold,
    /// Put a held message back in the queue: due now, or at its release time if that is
    /// still ahead (FUTURERELEASE, `sendAt`).
    Release,
    /// Hold, for a reason other than an operator's (the reputation guard's), recorded in the
    /// history so a later [`Action::Unpark`] can tell these holds from an operator's.
    Park { reason: String },
    /// Release a held message, for a reason other than an operator's.
    Unpark { reason: String },
    /// Try a queued message now, whatever its backoff said (not before its release time).
    RetryNow,
    /// Send a queued or held message now, before its release time too (`queue send-now`).
    SendNow,
    /// Move a dead letter back into the queue with a fresh attempt budget.
    Redrive,
    /// Take a queued, held or dead message out for good; it fails (operator).
    Delete,
    /// Withdraw a queued or held message at its submitter's request (JMAP undo); `NotFound`
    /// once it has left the queue.
    Cancel { reason: String },
}

/// Which of the queue's own indexes to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    Queued,
    Held,
    Dead,
}

impl Listing {
    pub fn for_state(state: State) -> Option<Listing> {
        match state {
            State::Queued => Some(Listing::Queued),
            State::Held => Some(Listing::Held),
            State::Dead => Some(Listing::Dead),
            _ => None,
        }
    }
}

/// Queue and storage figures for monitoring.
#[derive(Debug, Clone, Copy, Default)]
pub struct Depth {
    pub queued: u64,
    pub held: u64,
    pub dead: u64,
    pub stored_messages: u64,
    pub stored_bytes: u64,
}

/// What is due and who holds it.
pub trait Queue: Send + Sync {
    /// Records `record` in the ledger and queues its job at `record.due_ms`, as one durable
    /// write; returns once it is durable. Its MIME must already be in [`Blobs`].
    fn enqueue(&self, record: SubmissionRecord) -> Fut<'_, ()>;
    /// Up to `max` due messages, each hidden until its lease's deadline; waits up to `wait`
    /// for one to become due (long polling, like SQS ReceiveMessage), then answers, possibly
    /// with none.
    fn lease(&self, max: usize, wait: Duration) -> Fut<'_, Vec<Lease>>;
    /// Pushes the lease's deadline to `visibility_ms` from now (SQS ChangeMessageVisibility);
    /// returns the new deadline, or [`SpoolError::LeaseLost`].
    fn extend<'a>(&'a self, lease: &'a Lease, visibility_ms: u64) -> Fut<'a, u64>;
    fn settle<'a>(&'a self, lease: &'a Lease, settlement: Settlement) -> Fut<'a, Settled>;
    fn act(&self, id: QueueId, action: Action) -> Fut<'_, ()>;
    /// Ids in one of the queue's indexes, oldest first, at most `limit`.
    fn list(&self, which: Listing, limit: usize) -> Fut<'_, Vec<QueueId>>;
    fn depth(&self) -> Fut<'_, Depth>;
    /// A cheap look before a transaction starts (SMTP MAIL): would `size` more octets fit?
    /// The authoritative check is made when the bytes are stored.
    fn has_room(&self, size: u64) -> bool;
    /// The visibility timeout a lease starts with (ms).
    fn visibility_timeout_ms(&self) -> u64;
    /// Why storage is refusing work right now (an I/O error it is recovering from), for
    /// `/readyz`; None while it works.
    fn failing(&self) -> Option<String> {
        None
    }
}

/// Message bytes. A put takes the message in chunks (a trace header and the body as
/// received, say), so a large message is not joined into one more copy on the way in.
pub trait Blobs: Send + Sync {
    /// Stores the chunks, in order, as the message of `id`. Durable no later than the
    /// [`Queue::enqueue`] that follows it. [`SpoolError::Full`] when a bound is reached.
    fn put(&self, id: QueueId, chunks: Vec<Bytes>) -> Fut<'_, ()>;
    fn get(&self, id: QueueId) -> Fut<'_, Bytes>;
    fn delete(&self, id: QueueId) -> Fut<'_, ()>;
}

/// One entry of the ledger's change feed: a record changed (or was purged).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Change {
    /// Position in the feed; resume after it.
    pub seq: u64,
    pub id: QueueId,
    pub account_id: String,
    /// The record has a JMAP link.
    pub jmap: bool,
    /// Retention removed the record.
    #[serde(default)]
    pub purged: bool,
    pub at_ms: u64,
}

/// A page of the change feed.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub changes: Vec<Change>,
    /// The cursor to ask with next time.
    pub next: u64,
    /// Entries after the cursor were already dropped by retention: re-read what you watch.
    pub truncated: bool,
}

/// What one retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub finished: u64,
    pub dead: u64,
    pub suppressions: u64,
    pub feedback_ids: u64,
    pub changes: u64,
    /// Hourly activity rows older than [`crate::activity::ACTIVITY_RETENTION_MS`].
    pub activity: u64,
}

/// What a compaction did to the storage file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Compacted {
    pub before_bytes: u64,
    pub after_bytes: u64,
    /// False when the file had too little free space to be worth rewriting (and it was not
    /// forced).
    pub performed: bool,
}

/// Submission records and what is learnt about them.
pub trait Ledger: Send + Sync {
    fn get(&self, id: QueueId) -> Fut<'_, Option<SubmissionRecord>>;
    /// Records of the ids given, those that exist, in order.
    fn get_many(&self, ids: Vec<QueueId>) -> Fut<'_, Vec<SubmissionRecord>>;
    /// Records in `state`, oldest first, at most `limit`: queued, held and dead ones from the
    /// queue's own indexes, finished ones from what retention keeps.
    fn in_state(&self, state: State, limit: usize) -> Fut<'_, Vec<SubmissionRecord>>;
    /// The submission an SES message id belongs to.
    fn by_provider_id<'a>(&'a self, provider_id: &'a str) -> Fut<'a, Option<QueueId>>;
    /// Applies one feedback message's events — dedupe, outcomes, derived states,
    /// suppressions — as one durable unit; a message id seen before changes nothing.
    fn apply_feedback(
        &self,
        message_id: Option<String>,
        events: Vec<FeedbackEvent>,
    ) -> Fut<'_, FeedbackApplied>;
    /// The recipients among `addresses` that a suppression in force stops for `account` and
    /// `class`, with it, in order.
    fn suppressed_among<'a>(
        &'a self,
        addresses: &'a [String],
        account: &'a str,
        class: &'a str,
    ) -> Fut<'a, Vec<(String, Suppression)>>;
    /// Every suppression still in force.
    fn suppressions(&self) -> Fut<'_, Vec<Suppression>>;
    /// Adds or replaces the entry for its (address, account, class).
    fn suppress(&self, entry: Suppression) -> Fut<'_, ()>;
    /// Removes the entry; false when there was none.
    fn unsuppress(&self, address: String, account: String, class: String) -> Fut<'_, bool>;
    /// Up to `max` feed entries after `cursor` (0: from the start).
    fn changes(&self, cursor: u64, max: usize) -> Fut<'_, Changes>;
    /// Resolves when there may be entries after `cursor`, or after `wait` at the latest.
    fn wait_for_changes(
        &self,
        cursor: u64,
        wait: Duration,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
    /// Removes what retention says is due: finished records older than the retention period
    /// (with their indexes and provider ids), expired dead letters and suppressions,
    /// remembered feedback ids and old change-feed entries.
    fn purge(&self) -> Fut<'_, Purged>;
    /// Hourly sends, deliveries, bounces and complaints per identity and class (see
    /// [`crate::activity`]) for the hours starting at or after `since_ms`, oldest first. The
    /// backend keeps them as it writes records, in the same write, and for
    /// [`crate::activity::ACTIVITY_RETENTION_MS`] whatever the record retention is.
    fn activity(&self, since_ms: u64) -> Fut<'_, Vec<ActivityRow>>;
    /// The reputation guard's state as last saved (JSON the guard owns), None before the first
    /// save.
    fn guard_state(&self) -> Fut<'_, Option<serde_json::Value>>;
    /// Replaces the reputation guard's saved state; durable when it returns.
    fn save_guard_state(&self, state: serde_json::Value) -> Fut<'_, ()>;
    /// Gives the storage file's free space back to the filesystem: always when `force`d,
    /// otherwise only when much of it is free. None where there is no file (AWS).
    fn compact(&self, _force: bool) -> Fut<'_, Option<Compacted>> {
        Box::pin(async { Ok(None) })
    }
    /// A consistent copy of the storage file, taken while the spool runs, in a temporary file
    /// beside it (the caller streams it out and removes it). None where there is no file (AWS:
    /// its tables and buckets have their own backups).
    fn backup(&self) -> Fut<'_, Option<std::path::PathBuf>> {
        Box::pin(async { Ok(None) })
    }
}

/// The three seams of one backend.
#[derive(Clone)]
pub struct Spool {
    pub queue: Arc<dyn Queue>,
    pub blobs: Arc<dyn Blobs>,
    pub ledger: Arc<dyn Ledger>,
}

/// Limits and timings of the spool, in milliseconds.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    pub fsync: bool,
    pub max_messages: u64,
    pub max_bytes: u64,
    pub min_free_disk_bytes: u64,
    pub visibility_timeout_ms: u64,
    pub max_attempts: u32,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    pub dead_letter_retention_ms: u64,
    /// How long finished records (sent, delivered, bounced, complained, failed) are kept.
    pub retention_ms: u64,
    /// Seed for retry jitter (tests fix it).
    pub jitter_seed: u64,
    /// Page cache of the embedded backend (redb's own, read and write; [`DEFAULT_CACHE_BYTES`]).
    pub cache_bytes: u64,
}

/// redb's page cache for the spool file. Its own default (1 GiB) keeps the pages of every
/// message written or read lately — a message is read once, when it is sent — so a 40 MB
/// message took 3× its size while sent; with 16 MiB, 1.05× (and small-message throughput did
/// not drop: see README "Storage").
pub const DEFAULT_CACHE_BYTES: u64 = 16 * 1024 * 1024;

impl From<&SpoolConfig> for SpoolOptions {
    fn from(c: &SpoolConfig) -> Self {
        SpoolOptions {
            fsync: c.fsync,
            max_messages: c.max_messages,
            max_bytes: c.max_bytes,
            min_free_disk_bytes: c.min_free_disk_bytes,
            visibility_timeout_ms: c.visibility_timeout_secs * 1000,
            max_attempts: c.max_attempts,
            retry_base_ms: c.retry_base_secs * 1000,
            retry_max_ms: c.retry_max_secs * 1000,
            dead_letter_retention_ms: c.dead_letter_retention_days * 86_400_000,
            retention_ms: c.retention_days * 86_400_000,
            jitter_seed: rand::random(),
            cache_bytes: c.cache_bytes,
        }
    }
}
