//! The redb backend's single writer: group commit.
//!
//! Sessions and senders send operations over a channel; this thread takes everything pending,
//! applies it in one write transaction and commits once — one fsync for the whole batch — then
//! answers each caller. Under load a batch holds many acceptances, which is how the spool goes
//! past the disk's fsync rate. A batch of blob puts and deletes alone commits without an fsync
//! (redb makes it durable with the next fsync'd commit, which the enqueue after a put is).
//! Leases are durable too: a lease counts an attempt, and a message that crashes the process
//! must still reach the dead-letter queue after `max_attempts` instead of being retried forever.
//! Every record written is announced on the change feed, in the same transaction.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, WriteTransaction};
use std::sync::mpsc;

use tokio::sync::{oneshot, watch, Notify};

use super::{
    decode, encode, Usage, BLOB_CHUNKS, DEAD, FEED, FEEDBACK_SEEN, FINISHED, HELD, OLD_QUEUE,
    PROVIDER_IDS, QUEUE, RECORDS, SUPPRESSIONS,
};
use crate::domain::{
    FeedbackApplied, FeedbackEvent, QueueId, RecipientStatus, State, SubmissionRecord, Suppression,
    Transition, ALL_ACCOUNTS, ALL_CLASSES,
};
use crate::spool::{
    Action, Change, Lease, Purged, Settled, Settlement, SpoolError, SpoolOptions,
    CHANGE_FEED_RETENTION_MS, FEEDBACK_DEDUPE_MS,
};

/// Most operations folded into one transaction.
const MAX_BATCH: usize = 512;
/// How long a transaction holding only blob writes stays open for the enqueue that follows
/// them (the submitting task sends it as soon as its put is acknowledged): then both share one
/// commit and one fsync instead of two commits.
const LINGER: std::time::Duration = std::time::Duration::from_millis(5);

type Reply<T> = oneshot::Sender<Result<T, SpoolError>>;

pub(super) enum Op {
    PutBlob {
        id: QueueId,
        chunks: Vec<Bytes>,
        reply: Reply<()>,
    },
    DeleteBlob {
        id: QueueId,
        reply: Reply<()>,
    },
    Enqueue {
        record: Box<SubmissionRecord>,
        reply: Reply<()>,
    },
    Lease {
        now: u64,
        max: usize,
        reply: Reply<Vec<Lease>>,
    },
    Extend {
        now: u64,
        id: QueueId,
        token: u64,
        visibility_ms: u64,
        reply: Reply<u64>,
    },
    Settle {
        now: u64,
        id: QueueId,
        token: u64,
        settlement: Settlement,
        reply: Reply<Settled>,
    },
    Act {
        now: u64,
        id: QueueId,
        action: Action,
        reply: Reply<()>,
    },
    Suppress {
        entry: Suppression,
        remove: bool,
        reply: Reply<bool>,
    },
    Purge {
        now: u64,
        reply: Reply<Purged>,
    },
    Feedback {
        now: u64,
        message_id: Option<String>,
        events: Vec<FeedbackEvent>,
        reply: Reply<FeedbackApplied>,
    },
}

impl Op {
    /// Whether the caller is told "done" only once this is on disk. Blob writes are not
    /// acknowledged to anyone outside; what makes them matter (an enqueue) is fsync'd.
    fn needs_fsync(&self) -> bool {
        !matches!(
            self,
            Op::PutBlob { .. } | Op::DeleteBlob { .. } | Op::Extend { .. }
        )
    }

    /// Answered as soon as it is applied, before the commit: a blob write only has to be
    /// visible to the operations after it (an enqueue checks the bytes are there, in the same
    /// or a later transaction, and fails with the transaction if it fails).
    fn answered_early(&self) -> bool {
        matches!(self, Op::PutBlob { .. } | Op::DeleteBlob { .. })
    }
}

/// An answer computed inside the transaction, sent only after the commit (given its result).
type Answer = Box<dyn FnOnce(&Result<(), SpoolError>) + Send>;
struct Done(Answer);

fn done<T: Send + 'static>(reply: Reply<T>, result: Result<T, SpoolError>) -> Done {
    Done(Box::new(move |commit| {
        let result = match commit {
            Ok(()) => result,
            Err(e) => Err(SpoolError::Storage(e.to_string())),
        };
        // A caller that went away (client hung up) is no error here.
        let _ = reply.send(result);
    }))
}

/// What opening found.
pub(super) struct Init {
    pub usage: Usage,
    pub last_seq: u64,
    pub old_format_queued: u64,
}

/// Creates the tables, counts the stored MIME, and drops blobs no record claims (a put whose
/// enqueue never committed). Costs a walk over what is queued, not over history.
pub(super) fn init(db: &Database) -> Result<Init, SpoolError> {
    let txn = db.begin_write().map_err(SpoolError::storage)?;
    let usage = Usage::default();
    let last_seq;
    let mut old_format_queued = 0;
    {
        txn.open_table(QUEUE).map_err(SpoolError::storage)?;
        txn.open_table(HELD).map_err(SpoolError::storage)?;
        txn.open_table(DEAD).map_err(SpoolError::storage)?;
        txn.open_table(FINISHED).map_err(SpoolError::storage)?;
        txn.open_table(SUPPRESSIONS).map_err(SpoolError::storage)?;
        txn.open_table(PROVIDER_IDS).map_err(SpoolError::storage)?;
        txn.open_table(FEEDBACK_SEEN).map_err(SpoolError::storage)?;
        let feed = txn.open_table(FEED).map_err(SpoolError::storage)?;
        last_seq = feed
            .last()
            .map_err(SpoolError::storage)?
            .map_or(0, |(k, _)| k.value());
        drop(feed);
        if let Ok(old) = txn.open_table(OLD_QUEUE) {
            old_format_queued = old.len().unwrap_or(0);
        }
        let records = txn.open_table(RECORDS).map_err(SpoolError::storage)?;
        let mut blobs = txn.open_table(BLOB_CHUNKS).map_err(SpoolError::storage)?;
        let mut orphans = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for entry in blobs.iter().map_err(SpoolError::storage)? {
            let (k, v) = entry.map_err(SpoolError::storage)?;
            let (id, chunk) = k.value();
            if records.get(id).map_err(SpoolError::storage)?.is_none() {
                orphans.push((id, chunk));
                continue;
            }
            if seen.insert(id) {
                usage.messages.fetch_add(1, Ordering::Relaxed);
            }
            usage
                .bytes
                .fetch_add(v.value().len() as u64, Ordering::Relaxed);
        }
        for key in orphans {
            blobs.remove(key).map_err(SpoolError::storage)?;
        }
    }
    txn.commit().map_err(SpoolError::storage)?;
    Ok(Init {
        usage,
        last_seq,
        old_format_queued,
    })
}

pub(super) fn start(
    db: Arc<Database>,
    dir: PathBuf,
    options: SpoolOptions,
    usage: Arc<Usage>,
    work: Arc<Notify>,
    feed: watch::Sender<u64>,
    last_seq: u64,
) -> Result<(mpsc::Sender<Op>, std::thread::JoinHandle<()>), SpoolError> {
    let (tx, rx) = mpsc::channel();
    let writer = Writer {
        db,
        dir,
        rng: StdRng::seed_from_u64(options.jitter_seed),
        options,
        usage,
        work,
        feed,
        seq: last_seq,
        now: 0,
        touched: BTreeMap::new(),
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
    /// The change feed's last committed position, announced after each commit.
    feed: watch::Sender<u64>,
    seq: u64,
    /// The time of the operation being applied, for feed entries.
    now: u64,
    /// Records this batch wrote (or purged), for the change feed.
    touched: BTreeMap<QueueId, Change>,
}

fn table_err(e: impl std::fmt::Display) -> SpoolError {
    SpoolError::storage(e)
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Op>) {
        while let Ok(first) = rx.recv() {
            self.transaction(first, &rx);
        }
    }

    /// One write transaction and one commit for `first` and whatever else is pending (up to
    /// [`MAX_BATCH`]); while it holds only blob writes it waits up to [`LINGER`] for more.
    fn transaction(&mut self, first: Op, rx: &mpsc::Receiver<Op>) {
        let (before_msgs, before_bytes, before_seq) = (
            self.usage.messages.load(Ordering::Relaxed),
            self.usage.bytes.load(Ordering::Relaxed),
            self.seq,
        );
        let mut answers = Vec::new();
        let mut wake = false;
        let mut first = Some(first);
        let result = (|| {
            let mut txn = self.db.begin_write().map_err(table_err)?;
            let mut disk_checked = None;
            let (mut applied, mut fsync, mut only_blobs) = (0, false, true);
            while applied < MAX_BATCH {
                let next = match first.take() {
                    Some(op) => Some(op),
                    None => match rx.try_recv() {
                        Ok(op) => Some(op),
                        Err(_) if only_blobs => rx.recv_timeout(LINGER).ok(),
                        Err(_) => None,
                    },
                };
                let Some(op) = next else { break };
                applied += 1;
                fsync |= op.needs_fsync();
                let early = op.answered_early();
                only_blobs &= early;
                let answer = self.apply(&txn, op, &mut disk_checked, &mut wake);
                if early {
                    (answer.0)(&Ok(()));
                } else {
                    answers.push(answer);
                }
            }
            txn.set_durability(if fsync && self.options.fsync {
                Durability::Immediate
            } else {
                Durability::None
            })
            .map_err(table_err)?;
            self.write_feed(&txn)?;
            txn.commit().map_err(table_err)
        })();
        self.touched.clear();
        if let Err(e) = &result {
            // Nothing of the transaction happened: restore what it had counted.
            self.usage.messages.store(before_msgs, Ordering::Relaxed);
            self.usage.bytes.store(before_bytes, Ordering::Relaxed);
            self.seq = before_seq;
            tracing::error!(error = %e, "spool commit failed");
        } else {
            self.usage.commits.fetch_add(1, Ordering::Relaxed);
        }
        for answer in answers {
            (answer.0)(&result);
        }
        if result.is_ok() {
            if wake {
                self.work.notify_waiters();
            }
            if self.seq != before_seq {
                self.feed.send_replace(self.seq);
            }
        }
    }

    /// One feed entry per record the batch touched (the last state of it).
    fn write_feed(&mut self, txn: &WriteTransaction) -> Result<(), SpoolError> {
        if self.touched.is_empty() {
            return Ok(());
        }
        let mut feed = txn.open_table(FEED).map_err(table_err)?;
        for change in std::mem::take(&mut self.touched).into_values() {
            self.seq += 1;
            let change = Change {
                seq: self.seq,
                ..change
            };
            let json = serde_json::to_vec(&change).map_err(table_err)?;
            feed.insert(self.seq, json.as_slice()).map_err(table_err)?;
        }
        Ok(())
    }

    fn apply(
        &mut self,
        txn: &WriteTransaction,
        op: Op,
        disk_checked: &mut Option<bool>,
        wake: &mut bool,
    ) -> Done {
        self.now = match &op {
            Op::Enqueue { record, .. } => record.created_ms,
            Op::Lease { now, .. }
            | Op::Extend { now, .. }
            | Op::Settle { now, .. }
            | Op::Act { now, .. }
            | Op::Purge { now, .. }
            | Op::Feedback { now, .. } => *now,
            Op::PutBlob { .. } | Op::DeleteBlob { .. } | Op::Suppress { .. } => self.now,
        };
        match op {
            Op::PutBlob { id, chunks, reply } => {
                done(reply, self.put_blob(txn, id, &chunks, disk_checked))
            }
            Op::DeleteBlob { id, reply } => done(reply, self.delete_blob(txn, id)),
            Op::Enqueue { record, reply } => {
                let r = self.enqueue(txn, &record);
                *wake |= r.is_ok();
                done(reply, r)
            }
            Op::Lease { now, max, reply } => {
                // The poller gave up (shutdown): take nothing it would never send.
                let max = if reply.is_closed() { 0 } else { max };
                done(reply, self.lease(txn, now, max))
            }
            Op::Extend {
                now,
                id,
                token,
                visibility_ms,
                reply,
            } => done(reply, self.extend(txn, now, id, token, visibility_ms)),
            Op::Settle {
                now,
                id,
                token,
                settlement,
                reply,
            } => {
                let r = self.settle(txn, now, id, token, settlement);
                *wake |= matches!(r, Ok(Settled::Requeued { .. }));
                done(reply, r)
            }
            Op::Act {
                now,
                id,
                action,
                reply,
            } => {
                *wake |= matches!(action, Action::Release | Action::RetryNow | Action::Redrive);
                done(reply, self.act(txn, now, id, action))
            }
            Op::Purge { now, reply } => done(reply, self.purge(txn, now)),
            Op::Feedback {
                now,
                message_id,
                events,
                reply,
            } => done(reply, self.feedback(txn, now, message_id, events)),
            Op::Suppress {
                entry,
                remove,
                reply,
            } => done(reply, suppress(txn, &entry, remove)),
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

    fn put_blob(
        &mut self,
        txn: &WriteTransaction,
        id: QueueId,
        chunks: &[Bytes],
        disk_checked: &mut Option<bool>,
    ) -> Result<(), SpoolError> {
        let size: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        if self.usage.messages.load(Ordering::Relaxed) >= self.options.max_messages {
            return Err(SpoolError::Full("message count"));
        }
        if self.usage.bytes.load(Ordering::Relaxed) + size > self.options.max_bytes {
            return Err(SpoolError::Full("bytes"));
        }
        if !self.has_free_disk(disk_checked) {
            return Err(SpoolError::Full("free disk"));
        }
        self.delete_blob(txn, id)?;
        let mut blobs = txn.open_table(BLOB_CHUNKS).map_err(table_err)?;
        for (n, chunk) in chunks.iter().enumerate() {
            blobs
                .insert((id.0, n as u32), chunk.as_ref())
                .map_err(table_err)?;
        }
        self.usage.messages.fetch_add(1, Ordering::Relaxed);
        self.usage.bytes.fetch_add(size, Ordering::Relaxed);
        Ok(())
    }

    fn delete_blob(&self, txn: &WriteTransaction, id: QueueId) -> Result<(), SpoolError> {
        let mut blobs = txn.open_table(BLOB_CHUNKS).map_err(table_err)?;
        let mut freed = 0u64;
        let mut any = false;
        for entry in blobs
            .extract_from_if((id.0, 0)..=(id.0, u32::MAX), |_, _| true)
            .map_err(table_err)?
        {
            let (_, v) = entry.map_err(table_err)?;
            freed += v.value().len() as u64;
            any = true;
        }
        if any {
            self.usage.messages.fetch_sub(1, Ordering::Relaxed);
            self.usage.bytes.fetch_sub(freed, Ordering::Relaxed);
        }
        Ok(())
    }

    fn enqueue(
        &mut self,
        txn: &WriteTransaction,
        record: &SubmissionRecord,
    ) -> Result<(), SpoolError> {
        let id = record.job.id;
        let due = record.due_ms.unwrap_or(0);
        let blobs = txn.open_table(BLOB_CHUNKS).map_err(table_err)?;
        if blobs.get((id.0, 0)).map_err(table_err)?.is_none() {
            return Err(SpoolError::Storage(format!("no message stored for {id}")));
        }
        drop(blobs);
        let records = txn.open_table(RECORDS).map_err(table_err)?;
        if records.get(id.0).map_err(table_err)?.is_some() {
            return Err(SpoolError::Storage(format!("{id} is queued already")));
        }
        drop(records);
        let mut queue = txn.open_table(QUEUE).map_err(table_err)?;
        queue.insert((due, id.0), ()).map_err(table_err)?;
        drop(queue);
        self.store(txn, record)
    }

    fn load(
        &self,
        txn: &WriteTransaction,
        id: QueueId,
    ) -> Result<Option<SubmissionRecord>, SpoolError> {
        let records = txn.open_table(RECORDS).map_err(table_err)?;
        let value = records.get(id.0).map_err(table_err)?;
        value.map(|v| decode(v.value())).transpose()
    }

    /// Writes the record, its retention index entry, and notes it for the change feed.
    fn store(
        &mut self,
        txn: &WriteTransaction,
        record: &SubmissionRecord,
    ) -> Result<(), SpoolError> {
        self.write_record(txn, record)?;
        self.note(record, false);
        Ok(())
    }

    /// Writes the record without a change-feed entry: for changes no consumer watches (a
    /// lease taken or extended changes nothing a client or operator is shown as it happens).
    fn write_record(
        &self,
        txn: &WriteTransaction,
        record: &SubmissionRecord,
    ) -> Result<(), SpoolError> {
        let id = record.job.id;
        let mut records = txn.open_table(RECORDS).map_err(table_err)?;
        records
            .insert(id.0, encode(record).as_slice())
            .map_err(table_err)?;
        if let Some(at) = record.finished_ms {
            // Older entries for the same id stay; purge checks each against the record.
            let mut finished = txn.open_table(FINISHED).map_err(table_err)?;
            finished.insert((at, id.0), ()).map_err(table_err)?;
        }
        Ok(())
    }

    fn note(&mut self, record: &SubmissionRecord, purged: bool) {
        let id = record.job.id;
        self.touched.insert(
            id,
            Change {
                seq: 0,
                id,
                account_id: record.job.account_id.clone(),
                jmap: record.jmap.is_some(),
                purged,
                at_ms: self.now,
            },
        );
    }

    fn lease(
        &mut self,
        txn: &WriteTransaction,
        now: u64,
        max: usize,
    ) -> Result<Vec<Lease>, SpoolError> {
        let mut due = Vec::new();
        {
            let queue = txn.open_table(QUEUE).map_err(table_err)?;
            for entry in queue.range((0, 0)..=(now, u128::MAX)).map_err(table_err)? {
                if due.len() >= max {
                    break;
                }
                due.push(entry.map_err(table_err)?.0.value());
            }
        }
        let mut leases = Vec::with_capacity(due.len());
        for (at, id) in due {
            let deadline = now + self.options.visibility_timeout_ms;
            let mut queue = txn.open_table(QUEUE).map_err(table_err)?;
            queue.remove((at, id)).map_err(table_err)?;
            drop(queue);
            let Some(mut record) = self.load(txn, QueueId(id))? else {
                // An orphaned queue entry: dropped rather than leased forever.
                continue;
            };
            let mut queue = txn.open_table(QUEUE).map_err(table_err)?;
            queue.insert((deadline, id), ()).map_err(table_err)?;
            drop(queue);
            let token: u64 = self.rng.random();
            record.receive_count += 1;
            record.due_ms = Some(deadline);
            record.lease_token = Some(token);
            self.write_record(txn, &record)?;
            leases.push(Lease {
                job: record.job,
                token: format!("{token:016x}"),
                deadline_ms: deadline,
                attempt: record.receive_count,
            });
        }
        Ok(leases)
    }

    /// The record if `token` still holds its lease.
    fn leased(
        &self,
        txn: &WriteTransaction,
        id: QueueId,
        token: u64,
    ) -> Result<(SubmissionRecord, bool), SpoolError> {
        let record = self.load(txn, id)?.ok_or(SpoolError::NotFound(id))?;
        let held = record.state == State::Queued && record.lease_token == Some(token);
        Ok((record, held))
    }

    fn extend(
        &mut self,
        txn: &WriteTransaction,
        now: u64,
        id: QueueId,
        token: u64,
        visibility_ms: u64,
    ) -> Result<u64, SpoolError> {
        let (mut record, held) = self.leased(txn, id, token)?;
        if !held {
            return Err(SpoolError::LeaseLost(id));
        }
        let deadline = now + visibility_ms;
        self.move_in_queue(txn, &mut record, deadline)?;
        self.write_record(txn, &record)?;
        Ok(deadline)
    }

    fn move_in_queue(
        &self,
        txn: &WriteTransaction,
        record: &mut SubmissionRecord,
        due: u64,
    ) -> Result<(), SpoolError> {
        let mut queue = txn.open_table(QUEUE).map_err(table_err)?;
        if let Some(old) = record.due_ms {
            queue.remove((old, record.job.id.0)).map_err(table_err)?;
        }
        queue
            .insert((due, record.job.id.0), ())
            .map_err(table_err)?;
        record.due_ms = Some(due);
        Ok(())
    }

    /// Takes the message out of the queue (or the held set) and, unless it stays for a
    /// redrive or a release, deletes its MIME.
    fn dequeue(
        &self,
        txn: &WriteTransaction,
        record: &mut SubmissionRecord,
        keep_blob: bool,
    ) -> Result<(), SpoolError> {
        let id = record.job.id;
        if let Some(due) = record.due_ms.take() {
            let mut queue = txn.open_table(QUEUE).map_err(table_err)?;
            queue.remove((due, id.0)).map_err(table_err)?;
        }
        record.lease_token = None;
        let mut held = txn.open_table(HELD).map_err(table_err)?;
        held.remove(id.0).map_err(table_err)?;
        drop(held);
        if !keep_blob {
            self.delete_blob(txn, id)?;
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

    fn settle(
        &mut self,
        txn: &WriteTransaction,
        now: u64,
        id: QueueId,
        token: u64,
        settlement: Settlement,
    ) -> Result<Settled, SpoolError> {
        let (mut record, held) = self.leased(txn, id, token)?;
        let outcome = match settlement {
            Settlement::Sent { provider_id } => {
                // Sent is sent, even if the lease ran out and another attempt meanwhile
                // failed or dead-lettered it: the record must say what really happened.
                match record.state {
                    s if s.was_sent() => return Ok(Settled::Stale),
                    State::Dead => {
                        self.remove_dead(txn, id)?;
                        self.delete_blob(txn, id)?;
                    }
                    _ => self.dequeue(txn, &mut record, false)?,
                }
                if !provider_id.is_empty() {
                    let mut index = txn.open_table(PROVIDER_IDS).map_err(table_err)?;
                    index
                        .insert(provider_id.as_str(), id.0)
                        .map_err(table_err)?;
                }
                record.provider_id = Some(provider_id.clone());
                record.transition(now, State::Sent, Some(provider_id));
                // Feedback that overtook the send record (a crash window) applies now.
                let derived = record.derive_state();
                if derived != State::Sent {
                    record.transition(now, derived, None);
                }
                Settled::Applied
            }
            _ if !held => return Ok(Settled::Stale),
            Settlement::Failed { reason } => {
                self.dequeue(txn, &mut record, false)?;
                record.last_error = Some(reason.clone());
                record.transition(now, State::Failed, Some(reason));
                Settled::Applied
            }
            Settlement::Retry { reason, after_ms } => {
                record.last_error = Some(reason.clone());
                self.dequeue(txn, &mut record, true)?;
                if record.receive_count >= self.options.max_attempts {
                    let mut dead = txn.open_table(DEAD).map_err(table_err)?;
                    dead.insert((now, id.0), ()).map_err(table_err)?;
                    record.transition(now, State::Dead, Some(reason));
                    Settled::DeadLettered
                } else {
                    let due =
                        now + after_ms.unwrap_or_else(|| self.backoff_ms(record.receive_count));
                    self.move_in_queue(txn, &mut record, due)?;
                    record
                        .history
                        .push(Transition::new(now, State::Queued, Some(reason)));
                    Settled::Requeued { due_ms: due }
                }
            }
            Settlement::Release { reason } => {
                record.lease_token = None;
                self.move_in_queue(txn, &mut record, now)?;
                record.receive_count = record.receive_count.saturating_sub(1);
                record.last_error = Some(reason);
                Settled::Requeued { due_ms: now }
            }
        };
        self.store(txn, &record)?;
        Ok(outcome)
    }

    fn act(
        &mut self,
        txn: &WriteTransaction,
        now: u64,
        id: QueueId,
        action: Action,
    ) -> Result<(), SpoolError> {
        let mut record = self.load(txn, id)?.ok_or(SpoolError::NotFound(id))?;
        let refuse = Err(SpoolError::NotFound(id));
        match action {
            Action::Hold => {
                if record.state != State::Queued {
                    return refuse;
                }
                // Out of the queue (a lease in progress finds it changed), MIME kept.
                self.dequeue(txn, &mut record, true)?;
                let mut held = txn.open_table(HELD).map_err(table_err)?;
                held.insert(id.0, ()).map_err(table_err)?;
                drop(held);
                record.transition(now, State::Held, Some("held by the operator".into()));
            }
            Action::Release => {
                if record.state != State::Held {
                    return refuse;
                }
                self.dequeue(txn, &mut record, true)?;
                self.move_in_queue(txn, &mut record, now)?;
                record.transition(now, State::Queued, Some("released by the operator".into()));
            }
            Action::RetryNow => {
                let Some(due) = record.due_ms.filter(|_| record.state == State::Queued) else {
                    return refuse;
                };
                // A lease in force stays: making it due would hand it to a second sender.
                if record.lease_token.is_some() && due > now {
                    return Ok(());
                }
                self.move_in_queue(txn, &mut record, now)?;
            }
            Action::Delete => {
                match record.state {
                    State::Queued | State::Held => self.dequeue(txn, &mut record, false)?,
                    State::Dead => {
                        self.remove_dead(txn, id)?;
                        self.delete_blob(txn, id)?;
                    }
                    _ => return refuse,
                }
                let reason = "deleted by the operator".to_string();
                record.last_error = Some(reason.clone());
                record.transition(now, State::Failed, Some(reason));
            }
            Action::Cancel { reason } => {
                if !matches!(record.state, State::Queued | State::Held) {
                    return refuse;
                }
                self.dequeue(txn, &mut record, false)?;
                record.canceled = true;
                record.last_error = Some(reason.clone());
                record.transition(now, State::Failed, Some(reason));
            }
            Action::Redrive => {
                if record.state != State::Dead {
                    return refuse;
                }
                self.remove_dead(txn, id)?;
                self.move_in_queue(txn, &mut record, now)?;
                record.receive_count = 0;
                record.transition(now, State::Queued, Some("redriven".into()));
            }
        }
        self.store(txn, &record)
    }

    fn remove_dead(&self, txn: &WriteTransaction, id: QueueId) -> Result<(), SpoolError> {
        let mut dead = txn.open_table(DEAD).map_err(table_err)?;
        dead.retain(|(_, dead_id), ()| dead_id != id.0)
            .map_err(table_err)
    }

    /// Removes a record with everything that points at it, and says so on the feed.
    fn forget(
        &mut self,
        txn: &WriteTransaction,
        record: &SubmissionRecord,
    ) -> Result<(), SpoolError> {
        let id = record.job.id;
        self.delete_blob(txn, id)?;
        if let Some(pid) = record.provider_id.as_deref().filter(|p| !p.is_empty()) {
            let mut index = txn.open_table(PROVIDER_IDS).map_err(table_err)?;
            // Only if it still names this submission (a provider could reuse an id).
            let ours = index
                .get(pid)
                .map_err(table_err)?
                .is_some_and(|v| v.value() == id.0);
            if ours {
                index.remove(pid).map_err(table_err)?;
            }
        }
        let mut records = txn.open_table(RECORDS).map_err(table_err)?;
        records.remove(id.0).map_err(table_err)?;
        self.note(record, true);
        Ok(())
    }

    fn purge(&mut self, txn: &WriteTransaction, now: u64) -> Result<Purged, SpoolError> {
        let mut purged = Purged::default();
        // Dead letters past their retention.
        let cutoff = now.saturating_sub(self.options.dead_letter_retention_ms);
        for (_, id) in take_older(txn, DEAD, cutoff)? {
            match self.load(txn, QueueId(id))? {
                Some(record) if record.state == State::Dead => {
                    self.forget(txn, &record)?;
                    purged.dead += 1;
                }
                _ => {}
            }
        }
        // Finished records past retention; index entries the record has moved on from go.
        let cutoff = now.saturating_sub(self.options.retention_ms);
        for (at, id) in take_older(txn, FINISHED, cutoff)? {
            match self.load(txn, QueueId(id))? {
                Some(record) if record.state.is_finished() && record.finished_ms == Some(at) => {
                    self.forget(txn, &record)?;
                    purged.finished += 1;
                }
                _ => {}
            }
        }
        let mut suppressions = txn.open_table(SUPPRESSIONS).map_err(table_err)?;
        let before = suppressions.len().map_err(table_err)?;
        suppressions
            .retain(|_, v| {
                serde_json::from_slice::<Suppression>(v).map_or(true, |e| e.active_at(now))
            })
            .map_err(table_err)?;
        purged.suppressions = before - suppressions.len().map_err(table_err)?;
        let forget = now.saturating_sub(FEEDBACK_DEDUPE_MS);
        let mut seen = txn.open_table(FEEDBACK_SEEN).map_err(table_err)?;
        let before = seen.len().map_err(table_err)?;
        seen.retain(|_, at| at >= forget).map_err(table_err)?;
        purged.feedback_ids = before - seen.len().map_err(table_err)?;
        // The feed is in time order: drop from the front while entries are too old.
        let keep_from = now.saturating_sub(CHANGE_FEED_RETENTION_MS);
        let mut feed = txn.open_table(FEED).map_err(table_err)?;
        loop {
            let old = match feed.first().map_err(table_err)? {
                Some((k, v)) => {
                    let change: Change = serde_json::from_slice(v.value()).map_err(table_err)?;
                    (change.at_ms < keep_from).then(|| k.value())
                }
                None => None,
            };
            let Some(seq) = old else { break };
            feed.remove(seq).map_err(table_err)?;
            purged.changes += 1;
        }
        Ok(purged)
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
            let mut seen = txn.open_table(FEEDBACK_SEEN).map_err(table_err)?;
            if seen
                .insert(message_id.as_str(), now)
                .map_err(table_err)?
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
                        .map_err(table_err)?
                        .get(pid.as_str())
                        .map_err(table_err)?
                        .map(|v| QueueId(v.value())),
                    None => None,
                },
            };
            let record = match id {
                Some(id) => self.load(txn, id)?,
                None => None,
            };
            // A tag can name a submission that is not ours (another Outbox sharing the
            // configuration set): the provider id must then agree.
            let record = record.filter(|r| match (&event.provider_id, &r.provider_id) {
                (Some(event_pid), Some(ours)) => event_pid == ours,
                _ => true,
            });
            let (account, class) = match &record {
                Some(r) => (
                    r.job.account_id.clone(),
                    r.job.message_class.as_str().to_string(),
                ),
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
                    .map(|r| r.job.recipients.clone())
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
                applied.matched.push(record.job.id);
            } else {
                applied.unmatched += 1;
            }
            if let Some((reason, lasts_ms)) = &event.suppress {
                for rcpt in &recipients {
                    let entry = Suppression::new(
                        rcpt,
                        &account,
                        &class,
                        reason.clone(),
                        now,
                        lasts_ms.map(|d| now.saturating_add(d)),
                    );
                    suppress(txn, &entry, false)?;
                    applied.suppressed.push(entry);
                }
            }
        }
        Ok(applied)
    }
}

/// Removes and returns the entries of a (time, id) index older than `cutoff`.
fn take_older(
    txn: &WriteTransaction,
    index: redb::TableDefinition<(u64, u128), ()>,
    cutoff: u64,
) -> Result<Vec<(u64, u128)>, SpoolError> {
    let mut table = txn.open_table(index).map_err(table_err)?;
    let taken = table
        .extract_from_if((0, 0)..(cutoff, 0), |_, _| true)
        .map_err(table_err)?
        .map(|e| e.map(|(k, _)| k.value()))
        .collect::<Result<_, _>>()
        .map_err(table_err)?;
    Ok(taken)
}

fn suppress(txn: &WriteTransaction, entry: &Suppression, remove: bool) -> Result<bool, SpoolError> {
    let mut table = txn.open_table(SUPPRESSIONS).map_err(table_err)?;
    let key = (
        entry.address.as_str(),
        entry.account.as_str(),
        entry.class.as_str(),
    );
    if remove {
        return Ok(table.remove(key).map_err(table_err)?.is_some());
    }
    let json = serde_json::to_vec(entry).map_err(table_err)?;
    table.insert(key, json.as_slice()).map_err(table_err)?;
    Ok(true)
}
