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
//!
//! - [`queue`]: leases, extension, settlement, and actions by id.
//! - [`ledger`]: feedback, suppressions, retention.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;

use crate::redb_file::RedbFile;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::SeedableRng;
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, WriteTransaction};
use tokio::sync::{oneshot, watch, Notify};

mod ledger;
mod queue;

use super::{
    decode, encode, Usage, ACTIVITY, BLOB_CHUNKS, BLOB_CHUNK_MAX, DEAD, FEED, FEEDBACK_SEEN, GUARD,
    HELD, OLD_QUEUE, PROVIDER_IDS, QUEUE, RECORDS, SUPPRESSIONS, UNCLAIMED, USAGE,
};
use crate::domain::{FeedbackApplied, FeedbackEvent, QueueId, SubmissionRecord, Suppression};
use crate::spool::{
    Action, Change, Compacted, Lease, Purged, Settled, Settlement, SpoolError, SpoolOptions,
};

/// What a probe writes to see whether a failing file has space again: about one large
/// message's worth of pages, so "works" means mail fits, not just a record.
const PROBE_BYTES: usize = 1 << 20;
/// The probe's scratch table (empty between probes).
const PROBE: redb::TableDefinition<u8, &[u8]> = redb::TableDefinition::new("probe");

/// Free space in the spool file below which the hourly check leaves it alone: rewriting a file
/// stops the spool for a moment, which is not worth a few megabytes.
const COMPACT_MIN_FREE: u64 = 64 << 20;

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
    SaveGuard {
        state: Vec<u8>,
        reply: Reply<()>,
    },
    /// Run between transactions, never in one (redb compacts only with none open).
    Compact {
        force: bool,
        reply: Reply<Compacted>,
    },
    /// A consistent copy of the file at `dest`, taken between transactions.
    Backup {
        dest: PathBuf,
        reply: Reply<u64>,
    },
}

impl Op {
    /// Runs with no transaction open (redb compacts only then; a backup copies a committed
    /// state).
    fn between_transactions(&self) -> bool {
        matches!(self, Op::Compact { .. } | Op::Backup { .. })
    }

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

/// Answers an operation that never reached a transaction.
fn fail(op: Op, e: SpoolError) {
    // A caller that went away is no error here.
    match op {
        Op::PutBlob { reply, .. } | Op::DeleteBlob { reply, .. } | Op::Enqueue { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        Op::Act { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        Op::Lease { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        Op::Extend { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        Op::Settle { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        Op::Suppress { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        Op::Purge { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        Op::Feedback { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        Op::Compact { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        Op::SaveGuard { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        Op::Backup { reply, .. } => {
            let _ = reply.send(Err(e));
        }
    }
}

fn last_seq_in(txn: &WriteTransaction) -> Result<u64, SpoolError> {
    let feed = txn.open_table(FEED).map_err(table_err)?;
    let last = feed.last().map_err(table_err)?;
    Ok(last.map_or(0, |(k, _)| k.value()))
}

/// What opening found.
pub(super) struct Init {
    pub usage: Usage,
    pub last_seq: u64,
    pub old_format_queued: u64,
}

/// Creates the tables, reads what the stored MIME adds up to, and drops the bytes of puts whose
/// enqueue never committed. Costs a look at the unclaimed puts, not a walk over what is stored
/// (a spool written before the usage table existed is walked once, then counted as it goes).
pub(super) fn init(db: &Database, path: &std::path::Path) -> Result<Init, SpoolError> {
    let txn = db.begin_write().map_err(SpoolError::storage)?;
    crate::redb_format::check_and_migrate(&txn, "spool", path, FORMAT, &FORMAT_STEPS)
        .map_err(SpoolError::Storage)?;
    let usage = Usage::default();
    let last_seq;
    let mut old_format_queued = 0;
    {
        txn.open_table(QUEUE).map_err(SpoolError::storage)?;
        txn.open_table(HELD).map_err(SpoolError::storage)?;
        txn.open_table(DEAD).map_err(SpoolError::storage)?;
        txn.open_table(SUPPRESSIONS).map_err(SpoolError::storage)?;
        txn.open_table(PROVIDER_IDS).map_err(SpoolError::storage)?;
        txn.open_table(FEEDBACK_SEEN).map_err(SpoolError::storage)?;
        txn.open_table(ACTIVITY).map_err(SpoolError::storage)?;
        txn.open_table(GUARD).map_err(SpoolError::storage)?;
        last_seq = last_seq_in(&txn)?;
        if let Ok(old) = txn.open_table(OLD_QUEUE) {
            old_format_queued = old.len().unwrap_or(0);
        }
        let mut counts = txn.open_table(USAGE).map_err(SpoolError::storage)?;
        let counted = match (
            counts.get("messages").map_err(SpoolError::storage)?,
            counts.get("bytes").map_err(SpoolError::storage)?,
        ) {
            (Some(m), Some(b)) => Some((m.value(), b.value())),
            _ => None,
        };
        let (messages, bytes) = match counted {
            Some(counted) => counted,
            None => walk_blobs(&txn)?,
        };
        usage.messages.store(messages, Ordering::Relaxed);
        usage.bytes.store(bytes, Ordering::Relaxed);
        let mut unclaimed = txn.open_table(UNCLAIMED).map_err(SpoolError::storage)?;
        let records = txn.open_table(RECORDS).map_err(SpoolError::storage)?;
        let mut blobs = txn.open_table(BLOB_CHUNKS).map_err(SpoolError::storage)?;
        for entry in unclaimed
            .extract_from_if::<u128, _>(.., |_, _| true)
            .map_err(SpoolError::storage)?
        {
            let id = entry.map_err(SpoolError::storage)?.0.value();
            if records.get(id).map_err(SpoolError::storage)?.is_some() {
                continue;
            }
            let (mut freed, mut any) = (0u64, false);
            for chunk in blobs
                .extract_from_if((id, 0)..=(id, u32::MAX), |_, _| true)
                .map_err(SpoolError::storage)?
            {
                freed += chunk.map_err(SpoolError::storage)?.1.value().len() as u64;
                any = true;
            }
            if any {
                usage.messages.fetch_sub(1, Ordering::Relaxed);
                usage.bytes.fetch_sub(freed, Ordering::Relaxed);
            }
        }
        save_usage(&mut counts, &usage)?;
    }
    txn.commit().map_err(SpoolError::storage)?;
    Ok(Init {
        usage,
        last_seq,
        old_format_queued,
    })
}

/// Counts the stored MIME the slow way (a spool from before the usage table), dropping chunks
/// no record claims.
fn walk_blobs(txn: &WriteTransaction) -> Result<(u64, u64), SpoolError> {
    let records = txn.open_table(RECORDS).map_err(SpoolError::storage)?;
    let mut blobs = txn.open_table(BLOB_CHUNKS).map_err(SpoolError::storage)?;
    let (mut messages, mut bytes) = (0, 0);
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
            messages += 1;
        }
        bytes += v.value().len() as u64;
    }
    for key in orphans {
        blobs.remove(key).map_err(SpoolError::storage)?;
    }
    Ok((messages, bytes))
}

fn save_usage(counts: &mut redb::Table<&str, u64>, usage: &Usage) -> Result<(), SpoolError> {
    for (name, value) in [("messages", &usage.messages), ("bytes", &usage.bytes)] {
        counts
            .insert(name, value.load(Ordering::Relaxed))
            .map_err(SpoolError::storage)?;
    }
    Ok(())
}

pub(super) fn start(
    file: Arc<RedbFile>,
    dir: PathBuf,
    options: SpoolOptions,
    usage: Arc<Usage>,
    work: Arc<Notify>,
    feed: watch::Sender<u64>,
    last_seq: u64,
) -> Result<(mpsc::Sender<Op>, std::thread::JoinHandle<()>), SpoolError> {
    let (tx, rx) = mpsc::channel();
    let writer = Writer {
        file,
        resync: false,
        dir,
        rng: StdRng::seed_from_u64(options.jitter_seed),
        options,
        usage,
        work,
        feed,
        seq: last_seq,
        now: 0,
        touched: BTreeMap::new(),
        stored_blob: false,
        after: None,
    };
    let handle = std::thread::Builder::new()
        .name("spool-writer".into())
        .spawn(move || writer.run(rx))
        .map_err(SpoolError::storage)?;
    Ok((tx, handle))
}

struct Writer {
    file: Arc<RedbFile>,
    /// The file was reopened after an I/O error: what it holds is its last committed state,
    /// so the change feed's position is read again before the next entry is written.
    resync: bool,
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
    /// A compaction that arrived during a batch, run once it is committed.
    after: Option<Op>,
    /// This batch stored message bytes: if it commits, the file has space (see
    /// [`RedbFile::works`]).
    stored_blob: bool,
}

/// The spool file's format (see [`crate::redb_format`]). 1: the tables as they are now.
pub(super) const FORMAT: u64 = 1;
/// Format 0 (written before formats were numbered) has format 1's tables: nothing to change.
const FORMAT_STEPS: [crate::redb_format::Step; FORMAT as usize] = [|_| Ok(())];

fn table_err(e: impl std::fmt::Display) -> SpoolError {
    SpoolError::storage(e)
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Op>) {
        loop {
            // While storage fails, nothing may come to prove it works again (MAIL is refused
            // with 452 meanwhile): try a write of our own every so often.
            let next = if self.file.failing().is_some() {
                match rx.recv_timeout(crate::redb_file::RETRY) {
                    Ok(op) => Some(op),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            } else {
                match rx.recv() {
                    Ok(op) => Some(op),
                    Err(_) => return,
                }
            };
            match next {
                Some(op) if op.between_transactions() => self.run_between(op),
                Some(first) => self.transaction(first, &rx),
                None => self.probe(),
            }
            if let Some(op) = self.after.take() {
                self.run_between(op);
            }
        }
    }

    /// Runs an operation that must see no transaction open (compaction, backup).
    fn run_between(&mut self, op: Op) {
        match op {
            Op::Compact { force, reply } => {
                let _ = reply.send(self.compact(force));
            }
            Op::Backup { dest, reply } => {
                let _ = reply.send(self.backup(&dest));
            }
            other => fail(
                other,
                SpoolError::Storage("not an operation between transactions".into()),
            ),
        }
    }

    /// Copies the file to `dest` (fsync'd). Between transactions the file is a committed
    /// state, as after a crash: an empty durable commit first writes out commits made without
    /// fsync (`fsync = false`); redb's reads never change the file. Writes wait meanwhile
    /// (a local copy: about as long as reading the file once).
    fn backup(&mut self, dest: &std::path::Path) -> Result<u64, SpoolError> {
        let started = std::time::Instant::now();
        {
            let db = self.file.get().map_err(table_err)?;
            let mut txn = db.begin_write().map_err(table_err)?;
            txn.set_durability(Durability::Immediate)
                .map_err(table_err)?;
            txn.commit().map_err(table_err)?;
        }
        let copy = || -> std::io::Result<u64> {
            let bytes = std::fs::copy(self.file.path(), dest)?;
            std::fs::File::open(dest)?.sync_all()?;
            Ok(bytes)
        };
        let bytes = copy().map_err(|e| {
            let _ = std::fs::remove_file(dest);
            SpoolError::Storage(format!("copying the spool to {}: {e}", dest.display()))
        })?;
        tracing::info!(
            bytes,
            ms = started.elapsed().as_millis() as u64,
            "spool copied for a backup"
        );
        Ok(bytes)
    }

    /// Rewrites the file without its free pages, if forced or if at least
    /// [`COMPACT_MIN_FREE`] and half the file are free. Everything else waits meanwhile (the
    /// operations queue up on the channel), so the automatic one is left to an hourly check.
    fn compact(&mut self, force: bool) -> Result<Compacted, SpoolError> {
        let size = || {
            std::fs::metadata(self.file.path())
                .map(|m| m.len())
                .map_err(table_err)
        };
        let before_bytes = size()?;
        let used = {
            let db = self.file.get().map_err(table_err)?;
            let txn = db.begin_write().map_err(table_err)?;
            let stats = txn.stats().map_err(table_err)?;
            stats.allocated_pages() * stats.page_size() as u64
        };
        let free = before_bytes.saturating_sub(used);
        if !force && (free < COMPACT_MIN_FREE || free * 2 < before_bytes) {
            return Ok(Compacted {
                before_bytes,
                after_bytes: before_bytes,
                performed: false,
            });
        }
        let started = std::time::Instant::now();
        self.file.compact().map_err(table_err)?;
        let after_bytes = size()?;
        tracing::info!(
            before_bytes,
            after_bytes,
            ms = started.elapsed().as_millis() as u64,
            "spool file compacted"
        );
        Ok(Compacted {
            before_bytes,
            after_bytes,
            performed: true,
        })
    }

    /// Writes [`PROBE_BYTES`] and removes them again, in two durable commits; if both work,
    /// the file has space again.
    fn probe(&mut self) {
        let result = (|| {
            let db = self.file.get().map_err(table_err)?;
            for bytes in [Some(vec![0u8; PROBE_BYTES]), None] {
                let txn = db.begin_write().map_err(table_err)?;
                {
                    let mut probe = txn.open_table(PROBE).map_err(table_err)?;
                    match &bytes {
                        Some(b) => probe.insert(0, b.as_slice()).map(drop),
                        None => probe.remove(0).map(drop),
                    }
                    .map_err(table_err)?;
                }
                txn.commit().map_err(table_err)?;
            }
            Ok::<_, SpoolError>(())
        })();
        match result {
            Ok(()) => self.file.works(),
            Err(e) => {
                self.file.after_failure(&e);
            }
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
            let db = self.file.get().map_err(table_err)?;
            let mut txn = db.begin_write().map_err(table_err)?;
            if std::mem::take(&mut self.resync) {
                self.seq = last_seq_in(&txn)?;
            }
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
                if op.between_transactions() {
                    self.after = Some(op); // after this commit, outside any transaction
                    break;
                }
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
            if (before_msgs, before_bytes)
                != (
                    self.usage.messages.load(Ordering::Relaxed),
                    self.usage.bytes.load(Ordering::Relaxed),
                )
            {
                save_usage(&mut txn.open_table(USAGE).map_err(table_err)?, &self.usage)?;
            }
            self.write_feed(&txn)?;
            txn.commit().map_err(table_err)
        })();
        self.touched.clear();
        if result.is_err() {
            self.stored_blob = false;
        }
        if let Err(e) = &result {
            // Nothing of the transaction happened: restore what it had counted.
            self.usage.messages.store(before_msgs, Ordering::Relaxed);
            self.usage.bytes.store(before_bytes, Ordering::Relaxed);
            self.seq = before_seq;
            tracing::error!(error = %e, "spool commit failed");
            // An operation taken but never applied (the transaction could not start).
            if let Some(op) = first {
                fail(op, SpoolError::Storage(e.to_string()));
            }
            self.file.after_failure(e);
            self.resync |= self.file.failing().is_some();
        } else {
            if std::mem::take(&mut self.stored_blob) {
                self.file.works();
            }
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
            Op::PutBlob { .. }
            | Op::DeleteBlob { .. }
            | Op::Suppress { .. }
            | Op::SaveGuard { .. }
            | Op::Compact { .. }
            | Op::Backup { .. } => self.now,
        };
        match op {
            Op::PutBlob { id, chunks, reply } => {
                let r = self.put_blob(txn, id, &chunks, disk_checked);
                self.stored_blob |= r.is_ok();
                done(reply, r)
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
                *wake |= matches!(
                    action,
                    Action::Release
                        | Action::Unpark { .. }
                        | Action::RetryNow
                        | Action::SendNow
                        | Action::Redrive
                );
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
            } => done(reply, ledger::suppress(txn, &entry, remove)),
            Op::SaveGuard { state, reply } => done(reply, ledger::save_guard(txn, &state)),
            // `transaction` sets these aside before they get here.
            Op::Compact { reply, .. } => done(
                reply,
                Err(SpoolError::Storage(
                    "compaction inside a transaction".into(),
                )),
            ),
            Op::Backup { reply, .. } => done(
                reply,
                Err(SpoolError::Storage("backup inside a transaction".into())),
            ),
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
        txn.open_table(UNCLAIMED)
            .map_err(table_err)?
            .insert(id.0, ())
            .map_err(table_err)?;
        let mut blobs = txn.open_table(BLOB_CHUNKS).map_err(table_err)?;
        // Stored in pieces of at most BLOB_CHUNK_MAX; an empty message is one empty piece
        // (chunk 0 is what says a message is stored).
        let mut pieces = chunks
            .iter()
            .flat_map(|chunk| chunk.chunks(BLOB_CHUNK_MAX))
            .peekable();
        if pieces.peek().is_none() {
            blobs.insert((id.0, 0), &[][..]).map_err(table_err)?;
        }
        for (n, piece) in pieces.enumerate() {
            blobs.insert((id.0, n as u32), piece).map_err(table_err)?;
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
        txn.open_table(UNCLAIMED)
            .map_err(table_err)?
            .remove(id.0)
            .map_err(table_err)?;
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

    /// Writes the record and notes it for the change feed.
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
        let old = records
            .insert(id.0, encode(record).as_slice())
            .map_err(table_err)?;
        // Only a record with a provider id can count toward the activity figures: a lease or
        // a retry of an unsent message costs no decode.
        if record.provider_id.is_some() {
            let old = old.map(|v| decode(v.value())).transpose()?;
            ledger::count_activity(txn, old.as_ref(), record)?;
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
}
