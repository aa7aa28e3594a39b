//! The spool's single writer: group commit.
//!
//! Sessions and senders send operations over a channel; this thread takes everything pending,
//! applies it in one write transaction and commits once — one fsync for the whole batch — then
//! answers each caller. Under load a batch holds many acceptances, which is how the spool goes
//! past the disk's fsync rate. Leases are durable too: a lease counts an attempt, and a
//! message that crashes the process must still reach the dead-letter queue after
//! `max_attempts` instead of being retried forever.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redb::{Database, Durability, ReadableTable, WriteTransaction};
use tokio::sync::{mpsc, oneshot, Notify};

use super::{
    FeedbackApplied, FeedbackEvent, Lease, QueueId, RecipientStatus, RetryOutcome, SpoolError,
    SpoolOptions, State, SubmissionRecord, Suppression, Usage, ALL_ACCOUNTS, ALL_CLASSES, BLOBS,
    DEAD, FEEDBACK_DEDUPE_MS, FEEDBACK_SEEN, PROVIDER_IDS, QUEUE, SUBMISSIONS, SUPPRESSIONS,
};

/// Most operations folded into one transaction.
const MAX_BATCH: usize = 512;

type Reply<T> = oneshot::Sender<Result<T, SpoolError>>;

pub(super) enum Op {
    Enqueue {
        record: Box<SubmissionRecord>,
        mime: Vec<u8>,
        reply: Reply<()>,
    },
    Lease {
        now: u64,
        reply: Reply<Option<Lease>>,
    },
    Change {
        now: u64,
        id: QueueId,
        /// The lease's `visible_at`, for changes made under a lease.
        lease: Option<u64>,
        change: Change,
        reply: Reply<RetryOutcome>,
    },
    Suppress {
        entry: super::Suppression,
        remove: bool,
        reply: Reply<bool>,
    },
    PurgeDead {
        now: u64,
        reply: Reply<u64>,
    },
    Feedback {
        now: u64,
        message_id: Option<String>,
        events: Vec<FeedbackEvent>,
        reply: Reply<FeedbackApplied>,
    },
}

pub(super) enum Change {
    Sent {
        provider_id: String,
    },
    Fail {
        reason: String,
    },
    Retry {
        reason: String,
        delay_ms: Option<u64>,
    },
    /// Back into the queue at once without spending the attempt (the transport could not try).
    Release {
        reason: String,
    },
    Redrive,
    /// An operator: try a queued message now, whatever its backoff said.
    RetryNow,
    /// An operator: take a queued or dead message out; it fails with that reason.
    Delete,
    /// The submitting client withdraws a queued or held message (JMAP `undoStatus: canceled`);
    /// like `Delete`, with the client's reason and without touching dead letters.
    Cancel {
        reason: String,
    },
    /// An operator: keep a queued message from being sent until released.
    Hold,
    ReleaseHeld,
}

/// An answer computed inside the transaction, sent only after the commit.
enum Done {
    Unit(Reply<()>, Result<(), SpoolError>),
    Lease(Reply<Option<Lease>>, Result<Option<Lease>, SpoolError>),
    Change(Reply<RetryOutcome>, Result<RetryOutcome, SpoolError>),
    Count(Reply<u64>, Result<u64, SpoolError>),
    Flag(Reply<bool>, Result<bool, SpoolError>),
    Feedback(Reply<FeedbackApplied>, Result<FeedbackApplied, SpoolError>),
}

impl Done {
    fn send(self, commit: &Result<(), SpoolError>) {
        fn pick<T>(
            r: Result<T, SpoolError>,
            commit: &Result<(), SpoolError>,
        ) -> Result<T, SpoolError> {
            match commit {
                Ok(()) => r,
                Err(e) => Err(SpoolError::Storage(e.to_string())),
            }
        }
        // A caller that went away (client hung up) is no error here.
        let _ = match self {
            Done::Unit(tx, r) => tx.send(pick(r, commit)).map_err(|_| ()),
            Done::Lease(tx, r) => tx.send(pick(r, commit)).map_err(|_| ()),
            Done::Change(tx, r) => tx.send(pick(r, commit)).map_err(|_| ()),
            Done::Count(tx, r) => tx.send(pick(r, commit)).map_err(|_| ()),
            Done::Flag(tx, r) => tx.send(pick(r, commit)).map_err(|_| ()),
            Done::Feedback(tx, r) => tx.send(pick(r, commit)).map_err(|_| ()),
        };
    }
}

/// Creates the tables and reads the highest id and the current usage.
pub(super) fn init(db: &Database) -> Result<(u64, Usage), SpoolError> {
    let txn = db.begin_write().map_err(SpoolError::storage)?;
    let usage = Usage::default();
    let mut max_id = 0;
    {
        txn.open_table(QUEUE).map_err(SpoolError::storage)?;
        txn.open_table(DEAD).map_err(SpoolError::storage)?;
        txn.open_table(SUPPRESSIONS).map_err(SpoolError::storage)?;
        txn.open_table(PROVIDER_IDS).map_err(SpoolError::storage)?;
        txn.open_table(FEEDBACK_SEEN).map_err(SpoolError::storage)?;
        txn.open_table(SUBMISSIONS).map_err(SpoolError::storage)?;
        let blobs = txn.open_table(BLOBS).map_err(SpoolError::storage)?;
        for entry in blobs.iter().map_err(SpoolError::storage)? {
            let (k, v) = entry.map_err(SpoolError::storage)?;
            usage.messages.fetch_add(1, Ordering::Relaxed);
            usage
                .bytes
                .fetch_add(v.value().len() as u64, Ordering::Relaxed);
            max_id = max_id.max(k.value());
        }
        let subs = txn.open_table(SUBMISSIONS).map_err(SpoolError::storage)?;
        let last = subs
            .last()
            .map_err(SpoolError::storage)?
            .map(|(k, _)| k.value());
        max_id = max_id.max(last.unwrap_or(0));
    }
    txn.commit().map_err(SpoolError::storage)?;
    Ok((max_id, usage))
}

pub(super) fn start(
    db: Arc<Database>,
    dir: PathBuf,
    options: SpoolOptions,
    usage: Arc<Usage>,
    work: Arc<Notify>,
    changed: tokio::sync::broadcast::Sender<QueueId>,
) -> Result<(mpsc::UnboundedSender<Op>, std::thread::JoinHandle<()>), SpoolError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = Writer {
        db,
        dir,
        rng: StdRng::seed_from_u64(options.jitter_seed),
        options,
        usage,
        work,
        changed,
        touched: Vec::new(),
    };
    let handle = std::thread::Builder::new()
        .name("spool-writer".into())
        .spawn(move || writer.run(rx))
        .map_err(SpoolError::storage)?;
    Ok((tx, handle))
}

struct Writer {
    db: Arc<Database>,
    dir: PathBuf,
    options: SpoolOptions,
    usage: Arc<Usage>,
    work: Arc<Notify>,
    rng: StdRng,
    /// Announced after the commit: records this batch changed.
    changed: tokio::sync::broadcast::Sender<QueueId>,
    touched: Vec<QueueId>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Op>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(op) = rx.blocking_recv() {
            batch.push(op);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.commit_batch(&mut batch);
        }
    }

    fn commit_batch(&mut self, batch: &mut Vec<Op>) {
        let (before_msgs, before_bytes) = (
            self.usage.messages.load(Ordering::Relaxed),
            self.usage.bytes.load(Ordering::Relaxed),
        );
        let mut done = Vec::with_capacity(batch.len());
        let mut wake = false;
        let result = (|| {
            let mut txn = self.db.begin_write().map_err(SpoolError::storage)?;
            let durability = if self.options.fsync {
                Durability::Immediate
            } else {
                Durability::None
            };
            txn.set_durability(durability)
                .map_err(SpoolError::storage)?;
            let mut disk_checked = None;
            for op in batch.drain(..) {
                done.push(self.apply(&txn, op, &mut disk_checked, &mut wake));
            }
            txn.commit().map_err(SpoolError::storage)
        })();
        if let Err(e) = &result {
            // Nothing of the batch happened: restore the usage it had counted.
            self.usage.messages.store(before_msgs, Ordering::Relaxed);
            self.usage.bytes.store(before_bytes, Ordering::Relaxed);
            tracing::error!(error = %e, "spool commit failed");
        } else {
            self.usage.commits.fetch_add(1, Ordering::Relaxed);
        }
        for d in done {
            d.send(&result);
        }
        if wake && result.is_ok() {
            self.work.notify_waiters();
        }
        for id in self.touched.drain(..) {
            if result.is_ok() {
                // No receivers is fine.
                let _ = self.changed.send(id);
            }
        }
    }

    fn apply(
        &mut self,
        txn: &WriteTransaction,
        op: Op,
        disk_checked: &mut Option<bool>,
        wake: &mut bool,
    ) -> Done {
        match op {
            Op::Enqueue {
                record,
                mime,
                reply,
            } => {
                let r = self.enqueue(txn, &record, &mime, disk_checked);
                *wake |= r.is_ok();
                Done::Unit(reply, r)
            }
            Op::Lease { now, reply } => Done::Lease(reply, self.lease(txn, now)),
            Op::Change {
                now,
                id,
                lease,
                change,
                reply,
            } => {
                *wake |= matches!(
                    change,
                    Change::Retry { .. }
                        | Change::Release { .. }
                        | Change::Redrive
                        | Change::RetryNow
                        | Change::ReleaseHeld
                );
                Done::Change(reply, self.change(txn, now, id, lease, change))
            }
            Op::PurgeDead { now, reply } => Done::Count(reply, self.purge_dead(txn, now)),
            Op::Feedback {
                now,
                message_id,
                events,
                reply,
            } => Done::Feedback(reply, self.feedback(txn, now, message_id, events)),
            Op::Suppress {
                entry,
                remove,
                reply,
            } => Done::Flag(reply, suppress(txn, &entry, remove)),
        }
    }

    fn has_free_disk(&self, disk_checked: &mut Option<bool>) -> bool {
        if self.options.min_free_disk_bytes == 0 {
            return true;
        }
        *disk_checked.get_or_insert_with(|| {
            fs4::available_space(&self.dir)
                .map(|free| free >= self.options.min_free_disk_bytes)
                .unwrap_or(true)
        })
    }

    fn enqueue(
        &mut self,
        txn: &WriteTransaction,
        record: &SubmissionRecord,
        mime: &[u8],
        disk_checked: &mut Option<bool>,
    ) -> Result<(), SpoolError> {
        let size = mime.len() as u64;
        if self.usage.messages.load(Ordering::Relaxed) >= self.options.max_messages {
            return Err(SpoolError::Full("message count"));
        }
        if self.usage.bytes.load(Ordering::Relaxed) + size > self.options.max_bytes {
            return Err(SpoolError::Full("bytes"));
        }
        if !self.has_free_disk(disk_checked) {
            return Err(SpoolError::Full("free disk"));
        }
        let id = record.id.0;
        let due = record.due_ms.unwrap_or(0);
        let mut blobs = txn.open_table(BLOBS).map_err(SpoolError::storage)?;
        blobs.insert(id, mime).map_err(SpoolError::storage)?;
        let mut subs = txn.open_table(SUBMISSIONS).map_err(SpoolError::storage)?;
        subs.insert(id, record.encode().as_slice())
            .map_err(SpoolError::storage)?;
        let mut queue = txn.open_table(QUEUE).map_err(SpoolError::storage)?;
        queue.insert((due, id), ()).map_err(SpoolError::storage)?;
        self.touched.push(record.id);
        self.usage.messages.fetch_add(1, Ordering::Relaxed);
        self.usage.bytes.fetch_add(size, Ordering::Relaxed);
        Ok(())
    }

    fn load(
        &self,
        txn: &WriteTransaction,
        id: u64,
    ) -> Result<Option<SubmissionRecord>, SpoolError> {
        let subs = txn.open_table(SUBMISSIONS).map_err(SpoolError::storage)?;
        let value = subs.get(id).map_err(SpoolError::storage)?;
        value
            .map(|v| SubmissionRecord::decode(v.value()))
            .transpose()
    }

    fn store(
        &mut self,
        txn: &WriteTransaction,
        record: &SubmissionRecord,
    ) -> Result<(), SpoolError> {
        self.touched.push(record.id);
        let mut subs = txn.open_table(SUBMISSIONS).map_err(SpoolError::storage)?;
        subs.insert(record.id.0, record.encode().as_slice())
            .map_err(SpoolError::storage)?;
        Ok(())
    }

    fn lease(&mut self, txn: &WriteTransaction, now: u64) -> Result<Option<Lease>, SpoolError> {
        let mut queue = txn.open_table(QUEUE).map_err(SpoolError::storage)?;
        let first = queue
            .first()
            .map_err(SpoolError::storage)?
            .map(|(k, _)| k.value());
        let Some((due, id)) = first.filter(|(due, _)| *due <= now) else {
            return Ok(None);
        };
        queue.remove((due, id)).map_err(SpoolError::storage)?;
        let visible_at = now + self.options.visibility_timeout_ms;
        queue
            .insert((visible_at, id), ())
            .map_err(SpoolError::storage)?;
        drop(queue);
        let Some(mut record) = self.load(txn, id)? else {
            // An orphaned queue entry: drop it rather than lease nothing forever.
            txn.open_table(QUEUE)
                .map_err(SpoolError::storage)?
                .remove((visible_at, id))
                .map_err(SpoolError::storage)?;
            return Ok(None);
        };
        record.receive_count += 1;
        record.due_ms = Some(visible_at);
        self.store(txn, &record)?;
        Ok(Some(Lease { record, visible_at }))
    }

    /// Removes the message from the queue and, unless it stays for a redrive, its MIME.
    fn dequeue(
        &self,
        txn: &WriteTransaction,
        record: &mut SubmissionRecord,
        keep_blob: bool,
    ) -> Result<(), SpoolError> {
        if let Some(due) = record.due_ms.take() {
            let mut queue = txn.open_table(QUEUE).map_err(SpoolError::storage)?;
            queue
                .remove((due, record.id.0))
                .map_err(SpoolError::storage)?;
        }
        if !keep_blob {
            self.delete_blob(txn, record.id)?;
        }
        Ok(())
    }

    fn delete_blob(&self, txn: &WriteTransaction, id: QueueId) -> Result<(), SpoolError> {
        let mut blobs = txn.open_table(BLOBS).map_err(SpoolError::storage)?;
        if let Some(old) = blobs.remove(id.0).map_err(SpoolError::storage)? {
            self.usage.messages.fetch_sub(1, Ordering::Relaxed);
            self.usage
                .bytes
                .fetch_sub(old.value().len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    fn backoff_ms(&mut self, receive_count: u32) -> u64 {
        let exp = receive_count.saturating_sub(1).min(30);
        let base = self
            .options
            .retry_base_ms
            .saturating_mul(1 << exp)
            .min(self.options.retry_max_ms);
        // ±20% jitter so a burst of failures does not retry in lockstep.
        let jitter = base / 5;
        if jitter == 0 {
            return base;
        }
        base - jitter + self.rng.random_range(0..=2 * jitter)
    }

    fn change(
        &mut self,
        txn: &WriteTransaction,
        now: u64,
        id: QueueId,
        lease: Option<u64>,
        change: Change,
    ) -> Result<RetryOutcome, SpoolError> {
        let mut record = self.load(txn, id.0)?.ok_or(SpoolError::NotFound(id))?;
        let stale = lease.is_some() && (record.state != State::Queued || record.due_ms != lease);
        let outcome = match change {
            Change::Sent { provider_id } => {
                // Sent is sent, even if the lease ran out and another attempt meanwhile
                // failed or dead-lettered it: the record must say what really happened.
                match record.state {
                    State::Sent | State::Delivered | State::Bounced | State::Complained => {
                        return Ok(RetryOutcome::Stale)
                    }
                    State::Dead => {
                        self.remove_dead(txn, id)?;
                        self.delete_blob(txn, id)?;
                    }
                    State::Queued | State::Held | State::Failed => {
                        self.dequeue(txn, &mut record, false)?
                    }
                }
                if !provider_id.is_empty() {
                    let mut index = txn.open_table(PROVIDER_IDS).map_err(SpoolError::storage)?;
                    index
                        .insert(provider_id.as_str(), id.0)
                        .map_err(SpoolError::storage)?;
                }
                record.provider_id = Some(provider_id.clone());
                record.transition(now, State::Sent, Some(provider_id));
                // Feedback that overtook the send record (a crash window) applies now.
                let derived = record.derive_state();
                if derived != State::Sent {
                    record.transition(now, derived, None);
                }
                RetryOutcome::Applied
            }
            Change::Fail { reason } => {
                if stale {
                    return Ok(RetryOutcome::Stale);
                }
                self.dequeue(txn, &mut record, false)?;
                record.last_error = Some(reason.clone());
                record.transition(now, State::Failed, Some(reason));
                RetryOutcome::Applied
            }
            Change::Retry { reason, delay_ms } => {
                if stale {
                    return Ok(RetryOutcome::Stale);
                }
                record.last_error = Some(reason.clone());
                if record.receive_count >= self.options.max_attempts {
                    self.dequeue(txn, &mut record, true)?;
                    let mut dead = txn.open_table(DEAD).map_err(SpoolError::storage)?;
                    dead.insert((now, id.0), ()).map_err(SpoolError::storage)?;
                    record.transition(now, State::Dead, Some(reason));
                    RetryOutcome::DeadLettered
                } else {
                    self.dequeue(txn, &mut record, true)?;
                    let due =
                        now + delay_ms.unwrap_or_else(|| self.backoff_ms(record.receive_count));
                    let mut queue = txn.open_table(QUEUE).map_err(SpoolError::storage)?;
                    queue.insert((due, id.0), ()).map_err(SpoolError::storage)?;
                    record.due_ms = Some(due);
                    record
                        .history
                        .push(super::Transition::new(now, State::Queued, Some(reason)));
                    RetryOutcome::Requeued { due_ms: due }
                }
            }
            Change::Release { reason } => {
                if stale {
                    return Ok(RetryOutcome::Stale);
                }
                self.dequeue(txn, &mut record, true)?;
                let mut queue = txn.open_table(QUEUE).map_err(SpoolError::storage)?;
                queue.insert((now, id.0), ()).map_err(SpoolError::storage)?;
                record.due_ms = Some(now);
                record.receive_count = record.receive_count.saturating_sub(1);
                record.last_error = Some(reason);
                RetryOutcome::Requeued { due_ms: now }
            }
            Change::Hold => {
                if record.state != State::Queued {
                    return Err(SpoolError::NotFound(id));
                }
                // Out of the queue (a lease in progress simply finds it changed), MIME kept.
                self.dequeue(txn, &mut record, true)?;
                record.transition(now, State::Held, Some("held by the operator".into()));
                RetryOutcome::Applied
            }
            Change::ReleaseHeld => {
                if record.state != State::Held {
                    return Err(SpoolError::NotFound(id));
                }
                let mut queue = txn.open_table(QUEUE).map_err(SpoolError::storage)?;
                queue.insert((now, id.0), ()).map_err(SpoolError::storage)?;
                record.due_ms = Some(now);
                record.transition(now, State::Queued, Some("released by the operator".into()));
                RetryOutcome::Requeued { due_ms: now }
            }
            Change::RetryNow => {
                let Some(due) = record.due_ms.filter(|_| record.state == State::Queued) else {
                    return Err(SpoolError::NotFound(id));
                };
                let mut queue = txn.open_table(QUEUE).map_err(SpoolError::storage)?;
                queue.remove((due, id.0)).map_err(SpoolError::storage)?;
                queue.insert((now, id.0), ()).map_err(SpoolError::storage)?;
                record.due_ms = Some(now);
                RetryOutcome::Requeued { due_ms: now }
            }
            Change::Delete => {
                match record.state {
                    State::Queued | State::Held => self.dequeue(txn, &mut record, false)?,
                    State::Dead => {
                        self.remove_dead(txn, id)?;
                        self.delete_blob(txn, id)?;
                    }
                    State::Sent
                    | State::Failed
                    | State::Delivered
                    | State::Bounced
                    | State::Complained => return Err(SpoolError::NotFound(id)),
                }
                let reason = "deleted by the operator".to_string();
                record.last_error = Some(reason.clone());
                record.transition(now, State::Failed, Some(reason));
                RetryOutcome::Applied
            }
            Change::Cancel { reason } => {
                if !matches!(record.state, State::Queued | State::Held) {
                    return Err(SpoolError::NotFound(id));
                }
                self.dequeue(txn, &mut record, false)?;
                record.last_error = Some(reason.clone());
                record.transition(now, State::Failed, Some(reason));
                RetryOutcome::Applied
            }
            Change::Redrive => {
                if record.state != State::Dead {
                    return Err(SpoolError::NotFound(id));
                }
                self.remove_dead(txn, id)?;
                let mut queue = txn.open_table(QUEUE).map_err(SpoolError::storage)?;
                queue.insert((now, id.0), ()).map_err(SpoolError::storage)?;
                record.due_ms = Some(now);
                record.receive_count = 0;
                record.transition(now, State::Queued, Some("redriven".into()));
                RetryOutcome::Requeued { due_ms: now }
            }
        };
        self.store(txn, &record)?;
        Ok(outcome)
    }

    fn remove_dead(&self, txn: &WriteTransaction, id: QueueId) -> Result<(), SpoolError> {
        let mut dead = txn.open_table(DEAD).map_err(SpoolError::storage)?;
        dead.retain(|(_, dead_id), ()| dead_id != id.0)
            .map_err(SpoolError::storage)
    }

    fn purge_dead(&self, txn: &WriteTransaction, now: u64) -> Result<u64, SpoolError> {
        let cutoff = now.saturating_sub(self.options.dead_letter_retention_ms);
        let mut expired = Vec::new();
        {
            let dead = txn.open_table(DEAD).map_err(SpoolError::storage)?;
            for entry in dead
                .range((0, 0)..(cutoff, 0))
                .map_err(SpoolError::storage)?
            {
                expired.push(entry.map_err(SpoolError::storage)?.0.value());
            }
        }
        let mut dead = txn.open_table(DEAD).map_err(SpoolError::storage)?;
        for key in &expired {
            dead.remove(*key).map_err(SpoolError::storage)?;
        }
        drop(dead);
        for (_, id) in &expired {
            self.delete_blob(txn, QueueId(*id))?;
            let mut subs = txn.open_table(SUBMISSIONS).map_err(SpoolError::storage)?;
            subs.remove(*id).map_err(SpoolError::storage)?;
        }
        let mut suppressions = txn.open_table(SUPPRESSIONS).map_err(SpoolError::storage)?;
        suppressions
            .retain(|_, v| {
                serde_json::from_slice::<Suppression>(v).map_or(true, |e| e.active_at(now))
            })
            .map_err(SpoolError::storage)?;
        let forget = now.saturating_sub(FEEDBACK_DEDUPE_MS);
        let mut seen = txn.open_table(FEEDBACK_SEEN).map_err(SpoolError::storage)?;
        seen.retain(|_, at| at >= forget)
            .map_err(SpoolError::storage)?;
        Ok(expired.len() as u64)
    }

    /// Applies provider feedback: per-recipient outcomes on the submission (precedence in
    /// [`SubmissionRecord::report`]), the derived submission state, and suppressions.
    fn feedback(
        &mut self,
        txn: &WriteTransaction,
        now: u64,
        message_id: Option<String>,
        events: Vec<FeedbackEvent>,
    ) -> Result<FeedbackApplied, SpoolError> {
        let mut applied = FeedbackApplied::default();
        if let Some(message_id) = &message_id {
            let mut seen = txn.open_table(FEEDBACK_SEEN).map_err(SpoolError::storage)?;
            if seen
                .insert(message_id.as_str(), now)
                .map_err(SpoolError::storage)?
                .is_some()
            {
                applied.duplicate = true;
                return Ok(applied);
            }
        }
        for event in events {
            let id = match event.submission_id {
                Some(id) => Some(id),
                None => match &event.provider_id {
                    Some(pid) => txn
                        .open_table(PROVIDER_IDS)
                        .map_err(SpoolError::storage)?
                        .get(pid.as_str())
                        .map_err(SpoolError::storage)?
                        .map(|v| QueueId(v.value())),
                    None => None,
                },
            };
            let record = match id {
                Some(id) => self.load(txn, id.0)?,
                None => None,
            };
            // A tag can name a submission that is not ours (another Outbox sharing the
            // configuration set): the provider id must then agree.
            let record = record.filter(|r| match (&event.provider_id, &r.provider_id) {
                (Some(event_pid), Some(ours)) => event_pid == ours,
                _ => true,
            });
            let (account, class) = match &record {
                Some(r) => (r.account_id.clone(), r.message_class.clone()),
                None => (
                    event
                        .tag_account
                        .clone()
                        .unwrap_or_else(|| ALL_ACCOUNTS.into()),
                    event
                        .tag_class
                        .clone()
                        .unwrap_or_else(|| ALL_CLASSES.into()),
                ),
            };
            let recipients: Vec<String> = if event.recipients.is_empty() {
                record
                    .as_ref()
                    .map(|r| r.recipients.clone())
                    .unwrap_or_default()
            } else {
                event.recipients.clone()
            };
            if let Some(mut record) = record {
                let mut changed = false;
                for rcpt in &recipients {
                    changed |= record.report(
                        rcpt,
                        RecipientStatus {
                            outcome: event.outcome,
                            detail: event.detail.clone(),
                            at_ms: event.at_ms,
                        },
                    );
                }
                if changed {
                    let derived = record.derive_state();
                    if derived != record.state {
                        let detail = format!(
                            "{} {}",
                            event.outcome.as_str(),
                            event.detail.as_deref().unwrap_or("")
                        );
                        record.transition(now, derived, Some(detail.trim_end().to_string()));
                    }
                    self.store(txn, &record)?;
                }
                applied.matched.push(record.id);
            } else {
                applied.unmatched += 1;
            }
            if let Some((reason, lasts_ms)) = &event.suppress {
                for rcpt in &recipients {
                    let entry = Suppression {
                        address: rcpt.trim().to_lowercase(),
                        account: account.clone(),
                        class: class.clone(),
                        reason: reason.clone(),
                        at_ms: now,
                        expires_ms: lasts_ms.map(|d| now.saturating_add(d)),
                    };
                    suppress(txn, &entry, false)?;
                    applied.suppressed.push(entry);
                }
            }
        }
        Ok(applied)
    }
}

fn suppress(
    txn: &WriteTransaction,
    entry: &super::Suppression,
    remove: bool,
) -> Result<bool, SpoolError> {
    let mut table = txn.open_table(SUPPRESSIONS).map_err(SpoolError::storage)?;
    let key = (
        entry.address.as_str(),
        entry.account.as_str(),
        entry.class.as_str(),
    );
    if remove {
        return Ok(table.remove(key).map_err(SpoolError::storage)?.is_some());
    }
    let json = serde_json::to_vec(entry).map_err(SpoolError::storage)?;
    table
        .insert(key, json.as_slice())
        .map_err(SpoolError::storage)?;
    Ok(true)
}
