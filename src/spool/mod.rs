//! The durable spool: submissions, their MIME, and a queue ordered by due time.
//!
//! Semantics mirror SQS (the many-node backend of the design): a message becomes visible at its
//! due time; a sender *leases* it, which hides it for the visibility timeout; a lease that is
//! neither completed nor retried simply expires and the message is visible again (this is also
//! how a crash is survived). Every lease counts as a receive; after `max_attempts` receives a
//! retry moves the message to the dead-letter queue instead.
//!
//! All writes go through one writer thread that batches whatever is pending into one redb
//! transaction and one fsync (group commit, see [`writer`]). The 250 after DATA is sent only
//! after that commit returns. Storage knows nothing of SMTP.
//!
//! Tables: `submissions` (id → JSON record), `blobs` (id → MIME), `queue` ((due, id) → ()),
//! `dead` ((dead since, id) → ()).

mod record;
mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot, Notify};

pub use record::{Outcome, QueueId, RecipientStatus, State, SubmissionRecord, Transition};
use writer::{Change, Op};

use crate::clock::Clock;
use crate::config::SpoolConfig;

const SUBMISSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("submissions");
const BLOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("blobs");
const QUEUE: TableDefinition<(u64, u64), ()> = TableDefinition::new("queue");
const DEAD: TableDefinition<(u64, u64), ()> = TableDefinition::new("dead");
/// (address, account id or `*`, message class or `*`) → JSON [`Suppression`].
const SUPPRESSIONS: TableDefinition<(&str, &str, &str), &[u8]> =
    TableDefinition::new("suppression_list");
/// SES message id → queue id, so feedback without our tags finds its submission.
const PROVIDER_IDS: TableDefinition<&str, u64> = TableDefinition::new("provider_ids");
/// Feedback messages already applied (SNS MessageId) → when; duplicates are acknowledged and
/// skipped. Purged after [`FEEDBACK_DEDUPE_MS`].
const FEEDBACK_SEEN: TableDefinition<&str, u64> = TableDefinition::new("feedback_seen");

/// How long a feedback message id is remembered: longer than SNS retries (about an hour with
/// the default policy, 23 days at most) and SQS retention (14 days).
pub const FEEDBACK_DEDUPE_MS: u64 = 30 * 86_400_000;

/// Scope meaning every message class, or every account.
pub const ALL_CLASSES: &str = "*";
pub const ALL_ACCOUNTS: &str = "*";

/// Why an address is not sent to, for which account and message class, until when.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Suppression {
    pub address: String,
    /// Account id, or `*` for every account.
    #[serde(default = "all_accounts")]
    pub account: String,
    pub class: String,
    pub reason: String,
    pub at_ms: u64,
    /// After this the entry no longer applies (and the janitor removes it); `None` = never.
    #[serde(default)]
    pub expires_ms: Option<u64>,
}

fn all_accounts() -> String {
    ALL_ACCOUNTS.to_string()
}

impl Suppression {
    pub fn active_at(&self, now_ms: u64) -> bool {
        self.expires_ms.is_none_or(|e| e > now_ms)
    }
}

/// One provider report (an SES event), as the spool applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackEvent {
    /// The provider's message id (SES `mail.messageId`).
    pub provider_id: Option<String>,
    /// Our queue id, from the `submission_id` tag when the event carries tags.
    pub submission_id: Option<QueueId>,
    pub outcome: Outcome,
    /// The recipients it concerns; empty means every recipient of the submission.
    pub recipients: Vec<String>,
    pub detail: Option<String>,
    pub at_ms: u64,
    /// Account and class from the tags, for suppressions when no submission matches.
    pub tag_account: Option<String>,
    pub tag_class: Option<String>,
    /// Add the recipients to the suppression list (scoped to the submission's account and
    /// class) with this reason, for this many milliseconds from when it is applied (`None`:
    /// until removed).
    pub suppress: Option<(String, Option<u64>)>,
}

/// What applying one feedback message did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedbackApplied {
    /// Seen before: nothing was changed.
    pub duplicate: bool,
    /// Submissions found and updated (an id per event that matched).
    pub matched: Vec<QueueId>,
    /// Events that matched no submission (still recorded in suppressions where asked).
    pub unmatched: usize,
    /// Suppression entries added.
    pub suppressed: Vec<Suppression>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A configured bound (messages, bytes, free disk) was reached.
    #[error("spool full: {0}")]
    Full(&'static str),
    #[error("no such submission {0}")]
    NotFound(QueueId),
    #[error("spool storage: {0}")]
    Storage(String),
}

impl SpoolError {
    fn storage(e: impl std::fmt::Display) -> Self {
        SpoolError::Storage(e.to_string())
    }
}

/// A submission to be stored: who sent it, where to, and its MIME.
#[derive(Debug, Clone)]
pub struct NewSubmission {
    pub login: String,
    pub tenant_id: String,
    pub account_id: String,
    pub user_id: String,
    pub identity_id: String,
    pub mail_from: String,
    pub recipients: Vec<String>,
    pub message_class: String,
    pub mime: Vec<u8>,
}

/// A sender's hold on one message until `visible_at` (ms).
#[derive(Debug, Clone)]
pub struct Lease {
    pub record: SubmissionRecord,
    pub visible_at: u64,
}

/// What a change under a lease did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOutcome {
    Requeued {
        due_ms: u64,
    },
    DeadLettered,
    /// Marked sent or failed as asked.
    Applied,
    /// The lease had expired and someone else holds the message now; nothing changed.
    Stale,
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
    /// Seed for retry jitter (tests fix it).
    pub jitter_seed: u64,
}

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
            jitter_seed: rand::random(),
        }
    }
}

/// Queue and storage figures for monitoring.
#[derive(Debug, Clone, Copy)]
pub struct Depth {
    pub queued: u64,
    pub dead: u64,
    pub stored_messages: u64,
    pub stored_bytes: u64,
}

/// Shared, cheap-to-read view of how full the spool is.
#[derive(Debug, Default)]
struct Usage {
    messages: AtomicU64,
    bytes: AtomicU64,
    /// Transactions committed (each one fsync with `fsync` on).
    commits: AtomicU64,
}

pub struct Spool {
    db: Arc<Database>,
    ops: mpsc::UnboundedSender<Op>,
    next_id: AtomicU64,
    usage: Arc<Usage>,
    options: SpoolOptions,
    clock: Arc<dyn Clock>,
    /// Signalled when a message may have become due (enqueue, retry, redrive).
    work: Arc<Notify>,
    changed: tokio::sync::broadcast::Sender<QueueId>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Spool {
    /// Closes the writer's channel and waits for it to finish, so the database is closed (and
    /// can be reopened) when the spool is gone.
    fn drop(&mut self) {
        let (closed, _) = mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.ops, closed));
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Spool {
    /// Opens (or creates) the spool database under `dir` and starts its writer thread.
    pub fn open(
        dir: &Path,
        options: SpoolOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Spool>, SpoolError> {
        std::fs::create_dir_all(dir).map_err(SpoolError::storage)?;
        let db = Arc::new(Database::create(dir.join("spool.redb")).map_err(SpoolError::storage)?);
        let (max_id, usage) = writer::init(&db)?;
        let usage = Arc::new(usage);
        let work = Arc::new(Notify::new());
        let (changed, _) = tokio::sync::broadcast::channel(4096);
        let (ops, writer) = writer::start(
            db.clone(),
            dir.to_path_buf(),
            options.clone(),
            usage.clone(),
            work.clone(),
            changed.clone(),
        )?;
        // Ids grow with time and past every stored id, so they stay unique across restarts.
        let now_us = clock.now_ms() * 1000;
        Ok(Arc::new(Spool {
            db,
            ops,
            next_id: AtomicU64::new(now_us.max(max_id + 1)),
            usage,
            options,
            clock,
            work,
            changed,
            writer: Some(writer),
        }))
    }

    /// A fresh queue id, before the message is stored (it goes into the `Received` header).
    pub fn allocate_id(&self) -> QueueId {
        QueueId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// A quick check before a transaction starts (SMTP MAIL): would `size` more octets fit?
    /// The authoritative check happens again at commit.
    pub fn has_room(&self, size: u64) -> bool {
        self.usage.messages.load(Ordering::Relaxed) < self.options.max_messages
            && self.usage.bytes.load(Ordering::Relaxed) + size <= self.options.max_bytes
    }

    pub fn options(&self) -> &SpoolOptions {
        &self.options
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, SpoolError>>) -> Op,
    ) -> Result<T, SpoolError> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(make(tx))
            .map_err(|_| SpoolError::Storage("spool writer stopped".into()))?;
        rx.await
            .map_err(|_| SpoolError::Storage("spool writer stopped".into()))?
    }

    /// Stores a submission and queues it, due at once; returns when it is durable.
    pub async fn enqueue(&self, id: QueueId, new: NewSubmission) -> Result<(), SpoolError> {
        let now = self.clock.now_ms();
        self.enqueue_at(id, new, now).await
    }

    /// As [`enqueue`](Self::enqueue), first due at `due_ms`.
    pub async fn enqueue_at(
        &self,
        id: QueueId,
        new: NewSubmission,
        due_ms: u64,
    ) -> Result<(), SpoolError> {
        let now = self.clock.now_ms();
        let mime = new.mime;
        let record = SubmissionRecord {
            id,
            login: new.login,
            tenant_id: new.tenant_id,
            account_id: new.account_id,
            user_id: new.user_id,
            identity_id: new.identity_id,
            mail_from: new.mail_from,
            recipients: new.recipients,
            message_class: new.message_class,
            size: mime.len() as u64,
            state: State::Queued,
            created_ms: now,
            due_ms: Some(due_ms),
            receive_count: 0,
            last_error: None,
            provider_id: None,
            history: vec![Transition::new(now, State::Queued, None)],
            delivery: Default::default(),
        };
        self.call(|reply| Op::Enqueue {
            record: Box::new(record),
            mime,
            reply,
        })
        .await
    }

    /// Takes the earliest due message, hiding it for the visibility timeout.
    pub async fn lease(&self) -> Result<Option<Lease>, SpoolError> {
        let now = self.clock.now_ms();
        self.call(|reply| Op::Lease { now, reply }).await
    }

    /// The transport accepted the message.
    pub async fn complete(
        &self,
        lease: &Lease,
        provider_id: String,
    ) -> Result<RetryOutcome, SpoolError> {
        self.change(lease, Change::Sent { provider_id }).await
    }

    /// A permanent failure: no more attempts.
    pub async fn fail(&self, lease: &Lease, reason: String) -> Result<RetryOutcome, SpoolError> {
        self.change(lease, Change::Fail { reason }).await
    }

    /// Transactions committed since the spool was opened.
    pub fn commits(&self) -> u64 {
        self.usage.commits.load(Ordering::Relaxed)
    }

    /// A temporary failure: back into the queue after `delay_ms` (or the backoff schedule), or
    /// to the dead-letter queue once the attempts are used up.
    pub async fn retry(
        &self,
        lease: &Lease,
        reason: String,
        delay_ms: Option<u64>,
    ) -> Result<RetryOutcome, SpoolError> {
        self.change(lease, Change::Retry { reason, delay_ms }).await
    }

    /// The transport could not even try (it is unreachable or paused): the message goes back
    /// due now, and the lease does not count as an attempt.
    pub async fn release(&self, lease: &Lease, reason: String) -> Result<RetryOutcome, SpoolError> {
        self.change(lease, Change::Release { reason }).await
    }

    async fn change(&self, lease: &Lease, change: Change) -> Result<RetryOutcome, SpoolError> {
        let (id, visible_at) = (lease.record.id, lease.visible_at);
        let now = self.clock.now_ms();
        self.call(|reply| Op::Change {
            now,
            id,
            lease: Some(visible_at),
            change,
            reply,
        })
        .await
    }

    /// Moves a dead letter back into the queue with a fresh attempt budget.
    pub async fn redrive(&self, id: QueueId) -> Result<(), SpoolError> {
        self.operate(id, Change::Redrive).await
    }

    /// Makes a queued message due now (an operator's "retry").
    pub async fn retry_now(&self, id: QueueId) -> Result<(), SpoolError> {
        self.operate(id, Change::RetryNow).await
    }

    /// Keeps a queued message from being sent until [`release_held`](Self::release_held).
    pub async fn hold(&self, id: QueueId) -> Result<(), SpoolError> {
        self.operate(id, Change::Hold).await
    }

    /// Puts a held message back into the queue, due now.
    pub async fn release_held(&self, id: QueueId) -> Result<(), SpoolError> {
        self.operate(id, Change::ReleaseHeld).await
    }

    /// Takes a queued or dead message out for good; its submission fails with that reason.
    pub async fn delete(&self, id: QueueId) -> Result<(), SpoolError> {
        self.operate(id, Change::Delete).await
    }

    /// Withdraws a queued or held message at its submitter's request (JMAP undo): out of the
    /// queue, MIME deleted, the submission failed with `reason`. `NotFound` once it has left
    /// the queue (sent, failed, dead).
    pub async fn cancel(&self, id: QueueId, reason: String) -> Result<(), SpoolError> {
        self.operate(id, Change::Cancel { reason }).await
    }

    async fn operate(&self, id: QueueId, change: Change) -> Result<(), SpoolError> {
        let now = self.clock.now_ms();
        self.call(|reply| Op::Change {
            now,
            id,
            lease: None,
            change,
            reply,
        })
        .await
        .map(|_| ())
    }

    /// Adds (or replaces) a suppression of `address` for `account` and `class` (or
    /// [`ALL_ACCOUNTS`], [`ALL_CLASSES`]), until `expires_ms` if given.
    pub async fn suppress(
        &self,
        address: &str,
        account: &str,
        class: &str,
        reason: String,
        expires_ms: Option<u64>,
    ) -> Result<(), SpoolError> {
        let entry = Suppression {
            address: address.trim().to_lowercase(),
            account: account.to_string(),
            class: class.to_lowercase(),
            reason,
            at_ms: self.clock.now_ms(),
            expires_ms,
        };
        self.call(|reply| Op::Suppress {
            entry,
            remove: false,
            reply,
        })
        .await
        .map(|_| ())
    }

    /// Removes a suppression; false when there was none.
    pub async fn unsuppress(
        &self,
        address: &str,
        account: &str,
        class: &str,
    ) -> Result<bool, SpoolError> {
        let entry = Suppression {
            address: address.trim().to_lowercase(),
            account: account.to_string(),
            class: class.to_lowercase(),
            reason: String::new(),
            at_ms: 0,
            expires_ms: None,
        };
        self.call(|reply| Op::Suppress {
            entry,
            remove: true,
            reply,
        })
        .await
    }

    /// Every suppression entry still in force.
    pub fn suppressions(&self) -> Result<Vec<Suppression>, SpoolError> {
        let now = self.clock.now_ms();
        let txn = self.db.begin_read().map_err(SpoolError::storage)?;
        let table = txn.open_table(SUPPRESSIONS).map_err(SpoolError::storage)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(SpoolError::storage)? {
            let (_, value) = entry.map_err(SpoolError::storage)?;
            let entry: Suppression =
                serde_json::from_slice(value.value()).map_err(SpoolError::storage)?;
            if entry.active_at(now) {
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// The suppression in force that stops mail of `account` and `class` to `address`.
    pub fn suppressed(
        &self,
        address: &str,
        account: &str,
        class: &str,
    ) -> Result<Option<Suppression>, SpoolError> {
        let found = self.suppressed_among(&[address.to_string()], account, class)?;
        Ok(found.into_iter().next().map(|(_, s)| s))
    }

    /// The recipients among `addresses` that a suppression in force stops for `account` and
    /// `class`, with it, in order; one read transaction for all of them.
    pub fn suppressed_among(
        &self,
        addresses: &[String],
        account: &str,
        class: &str,
    ) -> Result<Vec<(String, Suppression)>, SpoolError> {
        let now = self.clock.now_ms();
        let txn = self.db.begin_read().map_err(SpoolError::storage)?;
        let table = txn.open_table(SUPPRESSIONS).map_err(SpoolError::storage)?;
        let mut found = Vec::new();
        'addresses: for original in addresses {
            let address = original.trim().to_lowercase();
            for (acct, scope) in [
                (account, class),
                (account, ALL_CLASSES),
                (ALL_ACCOUNTS, class),
                (ALL_ACCOUNTS, ALL_CLASSES),
            ] {
                if let Some(value) = table
                    .get((address.as_str(), acct, scope))
                    .map_err(SpoolError::storage)?
                {
                    let entry: Suppression =
                        serde_json::from_slice(value.value()).map_err(SpoolError::storage)?;
                    if entry.active_at(now) {
                        found.push((original.clone(), entry));
                        continue 'addresses;
                    }
                }
            }
        }
        Ok(found)
    }

    /// Applies one feedback message's events in one durable transaction; a message id seen
    /// before changes nothing. Returns only after the commit, so an acknowledgement sent after
    /// it can never lose the event.
    pub async fn apply_feedback(
        &self,
        message_id: Option<String>,
        events: Vec<FeedbackEvent>,
    ) -> Result<FeedbackApplied, SpoolError> {
        let now = self.clock.now_ms();
        self.call(|reply| Op::Feedback {
            now,
            message_id,
            events,
            reply,
        })
        .await
    }

    /// The submission an SES message id belongs to.
    pub fn by_provider_id(&self, provider_id: &str) -> Result<Option<QueueId>, SpoolError> {
        let txn = self.db.begin_read().map_err(SpoolError::storage)?;
        let table = txn.open_table(PROVIDER_IDS).map_err(SpoolError::storage)?;
        Ok(table
            .get(provider_id)
            .map_err(SpoolError::storage)?
            .map(|v| QueueId(v.value())))
    }

    /// Ids of submissions whose record changed, after each commit (JMAP push, waiting tests).
    /// A lagging receiver misses ids and should re-read what it watches.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<QueueId> {
        self.changed.subscribe()
    }

    /// How full the spool is, cheaply (table lengths and the usage counters).
    pub fn depth(&self) -> Result<Depth, SpoolError> {
        use redb::ReadableTableMetadata;
        let txn = self.db.begin_read().map_err(SpoolError::storage)?;
        let queued = txn
            .open_table(QUEUE)
            .map_err(SpoolError::storage)?
            .len()
            .map_err(SpoolError::storage)?;
        let dead = txn
            .open_table(DEAD)
            .map_err(SpoolError::storage)?
            .len()
            .map_err(SpoolError::storage)?;
        Ok(Depth {
            queued,
            dead,
            stored_messages: self.usage.messages.load(Ordering::Relaxed),
            stored_bytes: self.usage.bytes.load(Ordering::Relaxed),
        })
    }

    /// Every submission record matching `filter` (reads the whole table: an operator's tool).
    pub fn list(
        &self,
        filter: impl Fn(&SubmissionRecord) -> bool,
    ) -> Result<Vec<SubmissionRecord>, SpoolError> {
        let txn = self.db.begin_read().map_err(SpoolError::storage)?;
        let table = txn.open_table(SUBMISSIONS).map_err(SpoolError::storage)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(SpoolError::storage)? {
            let (_, value) = entry.map_err(SpoolError::storage)?;
            let record = SubmissionRecord::decode(value.value())?;
            if filter(&record) {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// Deletes dead letters older than the retention period, expired suppressions and
    /// remembered feedback ids; returns how many dead letters went.
    pub async fn purge_dead(&self) -> Result<u64, SpoolError> {
        let now = self.clock.now_ms();
        self.call(|reply| Op::PurgeDead { now, reply }).await
    }

    /// Resolves when a message may have become due. Create it *before* looking for work, so a
    /// wake-up between the look and the wait is not lost.
    pub fn work_signal(&self) -> Arc<Notify> {
        self.work.clone()
    }

    /// Due time of the earliest queued message, leased or not.
    pub fn next_due(&self) -> Result<Option<u64>, SpoolError> {
        let txn = self.db.begin_read().map_err(SpoolError::storage)?;
        let queue = txn.open_table(QUEUE).map_err(SpoolError::storage)?;
        let first = queue.first().map_err(SpoolError::storage)?;
        Ok(first.map(|(k, _)| k.value().0))
    }

    pub fn get(&self, id: QueueId) -> Result<Option<SubmissionRecord>, SpoolError> {
        let txn = self.db.begin_read().map_err(SpoolError::storage)?;
        let table = txn.open_table(SUBMISSIONS).map_err(SpoolError::storage)?;
        let value = table.get(id.0).map_err(SpoolError::storage)?;
        value
            .map(|v| SubmissionRecord::decode(v.value()))
            .transpose()
    }

    /// The stored MIME of a submission (blocking read on a worker thread).
    pub async fn load_mime(&self, id: QueueId) -> Result<Vec<u8>, SpoolError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(SpoolError::storage)?;
            let table = txn.open_table(BLOBS).map_err(SpoolError::storage)?;
            let value = table.get(id.0).map_err(SpoolError::storage)?;
            value
                .map(|v| v.value().to_vec())
                .ok_or(SpoolError::NotFound(id))
        })
        .await
        .map_err(SpoolError::storage)?
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
}

#[cfg(test)]
mod tests;
