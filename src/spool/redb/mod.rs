//! The embedded backend: [`Queue`], [`Blobs`] and [`Ledger`] in one redb database,
//! `<state_dir>/spool/spool.redb`.
//!
//! All writes go through one writer thread that batches whatever is pending into one
//! transaction and one fsync (group commit, see [`writer`]); a batch of blob puts alone is
//! committed without an fsync and made durable by the enqueue that follows it, so a
//! submission costs one fsync. Reads open their own read transactions.
//!
//! Tables (ids are [`QueueId`]s as `u128`):
//! `records` id → JSON [`SubmissionRecord`]; `blob_chunks` (id, n) → bytes;
//! `queue` (due or lease deadline, id); `held` id; `dead` (dead since, id);
//! `suppressions` (address, account, class) → JSON; `provider_ids` SES id → id;
//! `feedback_seen` message id → when; `feed` seq → JSON [`Change`]; `usage` the stored MIME's
//! message count and bytes; `unclaimed_blobs` ids stored but not yet enqueued; `activity`
//! (hour, identity, class) → sends, deliveries, bounces, complaints; `guard_state` the
//! reputation guard's JSON.

mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::sync::mpsc;

use tokio::sync::{oneshot, watch, Notify};

use super::{
    Action, Blobs, Change, Changes, Compacted, Depth, Fut, Lease, Ledger, Listing, Purged, Queue,
    Settled, Settlement, Spool, SpoolError, SpoolOptions,
};
use crate::activity::{ActivityRow, Counts};
use crate::clock::Clock;
use crate::domain::{
    FeedbackApplied, FeedbackEvent, MessageClass, QueueId, State, SubmissionRecord, Suppression,
};
use crate::redb_file::{Reading, RedbFile};
use writer::Op;

const RECORDS: TableDefinition<u128, &[u8]> = TableDefinition::new("records");
const BLOB_CHUNKS: TableDefinition<(u128, u32), &[u8]> = TableDefinition::new("blob_chunks");
/// The largest value a message is stored in: a read holds one of these at a time beside the
/// message being assembled, not a second copy of a large message (issue 13). Older spools
/// may hold larger ones; they read the same.
const BLOB_CHUNK_MAX: usize = 256 * 1024;
const QUEUE: TableDefinition<(u64, u128), ()> = TableDefinition::new("queue_v2");
const HELD: TableDefinition<u128, ()> = TableDefinition::new("held");
const DEAD: TableDefinition<(u64, u128), ()> = TableDefinition::new("dead_v2");
const SUPPRESSIONS: TableDefinition<(&str, &str, &str), &[u8]> =
    TableDefinition::new("suppression_list");
const PROVIDER_IDS: TableDefinition<&str, u128> = TableDefinition::new("provider_ids_v2");
const FEEDBACK_SEEN: TableDefinition<&str, u64> = TableDefinition::new("feedback_seen");
const FEED: TableDefinition<u64, &[u8]> = TableDefinition::new("feed");
/// What the stored MIME adds up to ("messages", "bytes"), kept with every change so opening
/// reads two numbers instead of walking every stored message.
const USAGE: TableDefinition<&str, u64> = TableDefinition::new("usage");
/// Ids whose MIME is stored but not yet claimed by an enqueue; what is left here at start-up
/// is a put whose enqueue never committed, and its bytes are dropped.
const UNCLAIMED: TableDefinition<u128, ()> = TableDefinition::new("unclaimed_blobs");
/// Sends, deliveries, bounces and complaints per (hour start, identity id, class name), see
/// [`crate::activity`]; kept [`crate::activity::ACTIVITY_RETENTION_MS`].
const ACTIVITY: TableDefinition<(u64, &str, &str), ActivityCounts> =
    TableDefinition::new("activity");
/// Sends, deliveries, bounces, complaints.
type ActivityCounts = (u64, u64, u64, u64);
/// Small documents owned by one consumer: "reputation" → the guard's JSON state.
const GUARD: TableDefinition<&str, &[u8]> = TableDefinition::new("guard_state");
/// The queue of the format before queue ids were 128-bit; only looked at to warn.
const OLD_QUEUE: TableDefinition<(u64, u64), ()> = TableDefinition::new("queue");

/// Shared, cheap-to-read view of how full the spool is.
#[derive(Debug, Default)]
struct Usage {
    messages: AtomicU64,
    bytes: AtomicU64,
    /// Transactions committed (each one fsync with `fsync` on).
    commits: AtomicU64,
}

impl Usage {
    fn set(&self, counted: &Usage) {
        for (to, from) in [
            (&self.messages, &counted.messages),
            (&self.bytes, &counted.bytes),
        ] {
            to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

/// The redb backend; one value serves as all three seams.
pub struct RedbSpool {
    file: Arc<RedbFile>,
    /// The spool's folder (its file system's free space is checked against the floor).
    dir: PathBuf,
    ops: mpsc::Sender<Op>,
    usage: Arc<Usage>,
    options: SpoolOptions,
    clock: Arc<dyn Clock>,
    /// Signalled when a message may have become due (enqueue, retry, redrive).
    work: Arc<Notify>,
    /// The last change-feed position committed.
    feed: watch::Receiver<u64>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for RedbSpool {
    /// Closes the writer's channel and waits for it to finish, so the database is closed (and
    /// can be reopened) when the spool is gone.
    fn drop(&mut self) {
        let (closed, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.ops, closed));
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Opens (or creates) the spool under `dir` and returns its three seams.
pub fn open(dir: &Path, options: SpoolOptions, clock: Arc<dyn Clock>) -> Result<Spool, SpoolError> {
    let spool = RedbSpool::open(dir, options, clock)?;
    Ok(Spool {
        queue: spool.clone(),
        blobs: spool.clone(),
        ledger: spool,
    })
}

impl RedbSpool {
    pub fn open(
        dir: &Path,
        options: SpoolOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<RedbSpool>, SpoolError> {
        use crate::state_files::{io_problem, open_problem};
        crate::state_files::create_dir(dir, crate::state_files::PRIVATE_DIR_MODE)
            .map_err(|e| SpoolError::Storage(io_problem(dir, &e)))?;
        let path = dir.join("spool.redb");
        remove_stale_backups(dir);
        crate::state_files::prepare_database(&path)
            .map_err(|e| SpoolError::Storage(io_problem(&path, &e)))?;
        let db = Database::builder()
            .set_cache_size(usize::try_from(options.cache_bytes).unwrap_or(usize::MAX))
            .create(&path)
            .map_err(|e| SpoolError::Storage(open_problem(&path, &e)))?;
        let init = writer::init(&db, &path)?;
        if init.old_format_queued > 0 {
            tracing::warn!(
                messages = init.old_format_queued,
                "the spool holds messages queued by an older Outbox (64-bit queue ids); they are not sent by this version"
            );
        }
        let usage = Arc::new(init.usage);
        let recount = usage.clone();
        let reopened = path.clone();
        let file = Arc::new(RedbFile::new(
            &path,
            db,
            // Reopened after an I/O error: count again what the file holds now (its last
            // committed state).
            Box::new(move |db| {
                let init = writer::init(db, &reopened).map_err(|e| e.to_string())?;
                recount.set(&init.usage);
                Ok(())
            }),
        ));
        let work = Arc::new(Notify::new());
        let (feed_tx, feed) = watch::channel(init.last_seq);
        let (ops, writer) = writer::start(
            file.clone(),
            dir.to_path_buf(),
            options.clone(),
            usage.clone(),
            work.clone(),
            feed_tx,
            init.last_seq,
        )?;
        if let Some(why) = below_floor(dir, options.min_free_disk_bytes) {
            tracing::warn!("{why}");
        }
        Ok(Arc::new(RedbSpool {
            file,
            dir: dir.to_path_buf(),
            ops,
            usage,
            options,
            clock,
            work,
            feed,
            writer: Some(writer),
        }))
    }

    /// Transactions committed since the spool was opened.
    pub fn commits(&self) -> u64 {
        self.usage.commits.load(Ordering::Relaxed)
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

    fn read(&self) -> Result<Reading, SpoolError> {
        self.file.begin_read().map_err(SpoolError::storage)
    }

    fn read_record(&self, id: QueueId) -> Result<Option<SubmissionRecord>, SpoolError> {
        let txn = self.read()?;
        let table = txn.open_table(RECORDS).map_err(SpoolError::storage)?;
        let value = table.get(id.0).map_err(SpoolError::storage)?;
        value.map(|v| decode(v.value())).transpose()
    }

    /// Due time of the earliest queued message, leased or not.
    fn next_due(&self) -> Result<Option<u64>, SpoolError> {
        let txn = self.read()?;
        let queue = txn.open_table(QUEUE).map_err(SpoolError::storage)?;
        let first = queue.first().map_err(SpoolError::storage)?;
        Ok(first.map(|(k, _)| k.value().0))
    }

    async fn lease_now(&self, max: usize) -> Result<Vec<Lease>, SpoolError> {
        let now = self.clock.now_ms();
        self.call(|reply| Op::Lease { now, max, reply }).await
    }
}

/// Backup copies are made beside the file under this name and removed once streamed out.
const BACKUP_PREFIX: &str = "spool.redb.backup-";

/// Copies a crash left behind while a backup was being streamed.
fn remove_stale_backups(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(BACKUP_PREFIX)
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

pub(crate) fn decode(bytes: &[u8]) -> Result<SubmissionRecord, SpoolError> {
    serde_json::from_slice(bytes).map_err(SpoolError::storage)
}

pub(crate) fn encode(record: &SubmissionRecord) -> Vec<u8> {
    serde_json::to_vec(record).expect("record serializes")
}

impl Queue for RedbSpool {
    fn enqueue(&self, record: SubmissionRecord) -> Fut<'_, ()> {
        Box::pin(self.call(|reply| Op::Enqueue {
            record: Box::new(record),
            reply,
        }))
    }

    fn lease(&self, max: usize, wait: Duration) -> Fut<'_, Vec<Lease>> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + wait;
            let mut first_try = true;
            loop {
                // Register for wake-ups before looking, so an enqueue in between is not missed.
                let notified = self.work.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                // The first try goes straight to the writer (a busy sender finds mail); after
                // that, a look first, so an idle worker costs a read, not a write transaction.
                let due_now = std::mem::take(&mut first_try)
                    || self
                        .next_due()?
                        .is_some_and(|due| due <= self.clock.now_ms());
                if due_now {
                    let leases = self.lease_now(max).await?;
                    if !leases.is_empty() {
                        return Ok(leases);
                    }
                }
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Ok(Vec::new());
                }
                let due_in = match self.next_due()? {
                    Some(due) => Duration::from_millis(due.saturating_sub(self.clock.now_ms())),
                    None => wait,
                };
                let nap = due_in.min(deadline - now).max(Duration::from_millis(1));
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep(nap) => {}
                }
            }
        })
    }

    fn extend<'a>(&'a self, lease: &'a Lease, visibility_ms: u64) -> Fut<'a, u64> {
        Box::pin(async move {
            let token = parse_token(lease)?;
            let now = self.clock.now_ms();
            self.call(|reply| Op::Extend {
                now,
                id: lease.job.id,
                token,
                visibility_ms,
                reply,
            })
            .await
        })
    }

    fn settle<'a>(&'a self, lease: &'a Lease, settlement: Settlement) -> Fut<'a, Settled> {
        Box::pin(async move {
            let token = parse_token(lease)?;
            let now = self.clock.now_ms();
            self.call(|reply| Op::Settle {
                now,
                id: lease.job.id,
                token,
                settlement,
                reply,
            })
            .await
        })
    }

    fn act(&self, id: QueueId, action: Action) -> Fut<'_, ()> {
        let now = self.clock.now_ms();
        Box::pin(self.call(move |reply| Op::Act {
            now,
            id,
            action,
            reply,
        }))
    }

    fn list(&self, which: Listing, limit: usize) -> Fut<'_, Vec<QueueId>> {
        Box::pin(async move {
            let txn = self.read()?;
            let mut out = Vec::new();
            match which {
                Listing::Queued => {
                    let t = txn.open_table(QUEUE).map_err(SpoolError::storage)?;
                    for entry in t.iter().map_err(SpoolError::storage)?.take(limit) {
                        out.push(QueueId(entry.map_err(SpoolError::storage)?.0.value().1));
                    }
                }
                Listing::Held => {
                    let t = txn.open_table(HELD).map_err(SpoolError::storage)?;
                    for entry in t.iter().map_err(SpoolError::storage)?.take(limit) {
                        out.push(QueueId(entry.map_err(SpoolError::storage)?.0.value()));
                    }
                }
                Listing::Dead => {
                    let t = txn.open_table(DEAD).map_err(SpoolError::storage)?;
                    for entry in t.iter().map_err(SpoolError::storage)?.take(limit) {
                        out.push(QueueId(entry.map_err(SpoolError::storage)?.0.value().1));
                    }
                }
            }
            Ok(out)
        })
    }

    fn depth(&self) -> Fut<'_, Depth> {
        Box::pin(async move {
            let txn = self.read()?;
            Ok(Depth {
                queued: txn
                    .open_table(QUEUE)
                    .map_err(SpoolError::storage)?
                    .len()
                    .map_err(SpoolError::storage)?,
                held: txn
                    .open_table(HELD)
                    .map_err(SpoolError::storage)?
                    .len()
                    .map_err(SpoolError::storage)?,
                dead: txn
                    .open_table(DEAD)
                    .map_err(SpoolError::storage)?
                    .len()
                    .map_err(SpoolError::storage)?,
                stored_messages: self.usage.messages.load(Ordering::Relaxed),
                stored_bytes: self.usage.bytes.load(Ordering::Relaxed),
            })
        })
    }

    fn has_room(&self, size: u64) -> bool {
        self.file.failing().is_none()
            && below_floor(&self.dir, self.options.min_free_disk_bytes).is_none()
            && self.usage.messages.load(Ordering::Relaxed) < self.options.max_messages
            && self.usage.bytes.load(Ordering::Relaxed) + size <= self.options.max_bytes
    }

    fn visibility_timeout_ms(&self) -> u64 {
        self.options.visibility_timeout_ms
    }

    fn failing(&self) -> Option<String> {
        self.file
            .failing()
            .or_else(|| below_floor(&self.dir, self.options.min_free_disk_bytes))
    }
}

/// Why mail is refused for want of disk space, when the file system holding `dir` has less
/// free than `floor` (`spool.min_free_disk_bytes`; 0: no floor). Said at start-up, by
/// `/readyz` while it lasts, and checked at SMTP MAIL (452 before the client sends the data).
fn below_floor(dir: &Path, floor: u64) -> Option<String> {
    if floor == 0 {
        return None;
    }
    let free = fs4::available_space(dir).ok()?;
    (free < floor).then(|| {
        format!(
            "{free} bytes free on the file system of {}, below spool.min_free_disk_bytes ({floor}): new mail is refused (452) until space is freed",
            dir.display()
        )
    })
}

fn parse_token(lease: &Lease) -> Result<u64, SpoolError> {
    u64::from_str_radix(&lease.token, 16).map_err(|_| SpoolError::LeaseLost(lease.job.id))
}

impl Blobs for RedbSpool {
    fn put(&self, id: QueueId, chunks: Vec<Bytes>) -> Fut<'_, ()> {
        Box::pin(self.call(move |reply| Op::PutBlob { id, chunks, reply }))
    }

    fn get(&self, id: QueueId) -> Fut<'_, Bytes> {
        let file = self.file.clone();
        Box::pin(async move {
            // A large message is read on a blocking thread, not the runtime's.
            tokio::task::spawn_blocking(move || {
                let txn = file.begin_read().map_err(SpoolError::storage)?;
                let table = txn.open_table(BLOB_CHUNKS).map_err(SpoolError::storage)?;
                let chunks = || {
                    table
                        .range((id.0, 0)..=(id.0, u32::MAX))
                        .map_err(SpoolError::storage)
                };
                // Two passes, each holding one chunk at a time: the lengths, then the bytes
                // into a buffer of the right size (collecting the chunks first, or growing
                // the buffer, would hold a large message twice).
                let mut total = 0;
                for entry in chunks()? {
                    total += entry.map_err(SpoolError::storage)?.1.value().len();
                }
                let mut out = Vec::with_capacity(total);
                let mut any = false;
                for entry in chunks()? {
                    out.extend_from_slice(entry.map_err(SpoolError::storage)?.1.value());
                    any = true;
                }
                if !any {
                    return Err(SpoolError::NotFound(id));
                }
                Ok(Bytes::from(out))
            })
            .await
            .map_err(SpoolError::storage)?
        })
    }

    fn delete(&self, id: QueueId) -> Fut<'_, ()> {
        Box::pin(self.call(move |reply| Op::DeleteBlob { id, reply }))
    }
}

impl Ledger for RedbSpool {
    fn get(&self, id: QueueId) -> Fut<'_, Option<SubmissionRecord>> {
        Box::pin(async move { self.read_record(id) })
    }

    fn get_many(&self, ids: Vec<QueueId>) -> Fut<'_, Vec<SubmissionRecord>> {
        Box::pin(async move {
            let txn = self.read()?;
            let table = txn.open_table(RECORDS).map_err(SpoolError::storage)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(v) = table.get(id.0).map_err(SpoolError::storage)? {
                    out.push(decode(v.value())?);
                }
            }
            Ok(out)
        })
    }

    fn in_state(&self, state: State, limit: usize) -> Fut<'_, Vec<SubmissionRecord>> {
        Box::pin(async move {
            if let Some(which) = Listing::for_state(state) {
                let ids = self.list(which, limit).await?;
                return self.get_many(ids).await;
            }
            // Finished states: what retention keeps, read in id (time) order.
            let txn = self.read()?;
            let table = txn.open_table(RECORDS).map_err(SpoolError::storage)?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(SpoolError::storage)? {
                if out.len() >= limit {
                    break;
                }
                let record = decode(entry.map_err(SpoolError::storage)?.1.value())?;
                if record.state == state {
                    out.push(record);
                }
            }
            Ok(out)
        })
    }

    fn by_provider_id<'a>(&'a self, provider_id: &'a str) -> Fut<'a, Option<QueueId>> {
        Box::pin(async move {
            let txn = self.read()?;
            let table = txn.open_table(PROVIDER_IDS).map_err(SpoolError::storage)?;
            Ok(table
                .get(provider_id)
                .map_err(SpoolError::storage)?
                .map(|v| QueueId(v.value())))
        })
    }

    fn apply_feedback(
        &self,
        message_id: Option<String>,
        events: Vec<FeedbackEvent>,
    ) -> Fut<'_, FeedbackApplied> {
        let now = self.clock.now_ms();
        Box::pin(self.call(move |reply| Op::Feedback {
            now,
            message_id,
            events,
            reply,
        }))
    }

    fn suppressed_among<'a>(
        &'a self,
        addresses: &'a [String],
        account: &'a str,
        class: &'a str,
    ) -> Fut<'a, Vec<(String, Suppression)>> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let txn = self.read()?;
            let table = txn.open_table(SUPPRESSIONS).map_err(SpoolError::storage)?;
            let mut found = Vec::new();
            'addresses: for original in addresses {
                let address = original.trim().to_lowercase();
                for (acct, scope) in Suppression::scopes(account, class) {
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
        })
    }

    fn suppressions(&self) -> Fut<'_, Vec<Suppression>> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let txn = self.read()?;
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
        })
    }

    fn suppress(&self, entry: Suppression) -> Fut<'_, ()> {
        Box::pin(async move {
            self.call(|reply| Op::Suppress {
                entry,
                remove: false,
                reply,
            })
            .await
            .map(|_| ())
        })
    }

    fn unsuppress(&self, address: String, account: String, class: String) -> Fut<'_, bool> {
        let entry = Suppression::new(&address, &account, &class, String::new(), 0, None);
        Box::pin(self.call(|reply| Op::Suppress {
            entry,
            remove: true,
            reply,
        }))
    }

    fn changes(&self, cursor: u64, max: usize) -> Fut<'_, Changes> {
        Box::pin(async move {
            let txn = self.read()?;
            let table = txn.open_table(FEED).map_err(SpoolError::storage)?;
            let mut out = Changes {
                next: cursor,
                ..Changes::default()
            };
            // Entries are numbered without gaps: a first entry past cursor + 1 means the ones
            // in between were purged.
            let first = table
                .first()
                .map_err(SpoolError::storage)?
                .map(|(k, _)| k.value());
            out.truncated = first.is_some_and(|first| first > cursor + 1);
            for entry in table
                .range(cursor + 1..)
                .map_err(SpoolError::storage)?
                .take(max)
            {
                let (k, v) = entry.map_err(SpoolError::storage)?;
                let change: Change =
                    serde_json::from_slice(v.value()).map_err(SpoolError::storage)?;
                out.next = k.value();
                out.changes.push(change);
            }
            Ok(out)
        })
    }

    fn wait_for_changes(
        &self,
        cursor: u64,
        wait: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        let mut feed = self.feed.clone();
        Box::pin(async move {
            let _ = tokio::time::timeout(wait, feed.wait_for(|seq| *seq > cursor)).await;
        })
    }

    fn activity(&self, since_ms: u64) -> Fut<'_, Vec<ActivityRow>> {
        Box::pin(async move {
            let txn = self.read()?;
            let table = txn.open_table(ACTIVITY).map_err(SpoolError::storage)?;
            let mut out = Vec::new();
            for entry in table
                .range((since_ms, "", "")..)
                .map_err(SpoolError::storage)?
            {
                let (k, v) = entry.map_err(SpoolError::storage)?;
                let (hour_ms, identity_id, class) = k.value();
                let Some(class) = MessageClass::parse(class) else {
                    continue;
                };
                let (sends, deliveries, bounces, complaints) = v.value();
                out.push(ActivityRow {
                    hour_ms,
                    identity_id: identity_id.to_string(),
                    class,
                    counts: Counts {
                        sends,
                        deliveries,
                        bounces,
                        complaints,
                    },
                });
            }
            Ok(out)
        })
    }

    fn guard_state(&self) -> Fut<'_, Option<serde_json::Value>> {
        Box::pin(async move {
            let txn = self.read()?;
            let table = txn.open_table(GUARD).map_err(SpoolError::storage)?;
            let value = table.get("reputation").map_err(SpoolError::storage)?;
            value
                .map(|v| serde_json::from_slice(v.value()).map_err(SpoolError::storage))
                .transpose()
        })
    }

    fn save_guard_state(&self, state: serde_json::Value) -> Fut<'_, ()> {
        Box::pin(async move {
            let state = serde_json::to_vec(&state).map_err(SpoolError::storage)?;
            self.call(|reply| Op::SaveGuard { state, reply }).await
        })
    }

    fn purge(&self) -> Fut<'_, Purged> {
        let now = self.clock.now_ms();
        Box::pin(self.call(move |reply| Op::Purge { now, reply }))
    }

    fn backup(&self) -> Fut<'_, Option<std::path::PathBuf>> {
        Box::pin(async move {
            let dir = self.file.path().parent().unwrap_or(Path::new("."));
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            let dest = dir.join(format!("{BACKUP_PREFIX}{nanos}"));
            self.call(|reply| Op::Backup {
                dest: dest.clone(),
                reply,
            })
            .await?;
            Ok(Some(dest))
        })
    }

    fn compact(&self, force: bool) -> Fut<'_, Option<Compacted>> {
        Box::pin(async move {
            self.call(|reply| Op::Compact { force, reply })
                .await
                .map(Some)
        })
    }
}

#[cfg(test)]
mod tests {
    //! What is particular to this backend (the shared contract is in `spool::contract`).

    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::clock::ManualClock;
    use crate::domain::{Job, MessageClass};

    const START: u64 = 1_800_000_000_000;

    fn record(id: QueueId) -> SubmissionRecord {
        let job = Job {
            id,
            login: "a".into(),
            tenant_id: "t".into(),
            account_id: "a".into(),
            user_id: "u".into(),
            identity_id: "i".into(),
            mail_from: "a@example.com".into(),
            recipients: vec!["b@example.net".into()],
            message_class: MessageClass::Transactional,
            size: 1,
        };
        SubmissionRecord::queued(job, START, START, None)
    }

    fn options() -> SpoolOptions {
        SpoolOptions {
            max_messages: 1000,
            ..crate::spool::contract::options()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_submissions_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        let spool = RedbSpool::open(dir.path(), options(), ManualClock::new(START)).unwrap();
        let before = spool.commits();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let spool = spool.clone();
            tasks.push(tokio::spawn(async move {
                let id = QueueId::generate(START);
                spool.put(id, vec![Bytes::from(format!("m{i}"))]).await?;
                spool.enqueue(record(id)).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let commits = spool.commits() - before;
        // Each submission is a put and an enqueue: 400 operations.
        assert!(
            commits < 200,
            "200 concurrent submissions took {commits} commits"
        );
        let leased = spool.lease(500, Duration::ZERO).await.unwrap();
        assert_eq!(leased.len(), 200);
    }

    #[tokio::test]
    async fn a_submission_is_one_commit() {
        let dir = tempfile::tempdir().unwrap();
        let spool = RedbSpool::open(dir.path(), options(), ManualClock::new(START)).unwrap();
        for n in 0..5 {
            let before = spool.commits();
            let id = QueueId::generate(START);
            let chunks = vec![
                Bytes::from_static(b"Received: x\r\n"),
                Bytes::from(format!("m{n}")),
            ];
            spool.put(id, chunks).await.unwrap();
            spool.enqueue(record(id)).await.unwrap();
            assert_eq!(spool.commits() - before, 1, "the put waits for its enqueue");
            assert_eq!(
                &Blobs::get(&*spool, id).await.unwrap()[..],
                format!("Received: x\r\nm{n}").as_bytes()
            );
        }
    }

    #[tokio::test]
    async fn a_large_message_is_stored_in_bounded_pieces_and_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let spool = RedbSpool::open(dir.path(), options(), ManualClock::new(START)).unwrap();
        let body: Vec<u8> = (0..3 * BLOB_CHUNK_MAX + 17)
            .map(|i| (i % 251) as u8)
            .collect();
        let (large, empty) = (QueueId::generate(START), QueueId::generate(START));
        let chunks = vec![Bytes::from_static(b"Received: x\r\n"), Bytes::from(body)];
        let whole = chunks.concat();
        spool.put(large, chunks).await.unwrap();
        spool.enqueue(record(large)).await.unwrap();
        spool.put(empty, vec![Bytes::new()]).await.unwrap();
        spool.enqueue(record(empty)).await.unwrap();
        let txn = spool.file.begin_read().unwrap();
        let table = txn.open_table(BLOB_CHUNKS).unwrap();
        let sizes: Vec<usize> = table
            .range((large.0, 0)..=(large.0, u32::MAX))
            .unwrap()
            .map(|e| e.unwrap().1.value().len())
            .collect();
        assert_eq!(sizes.len(), 5, "{sizes:?}");
        assert!(sizes.iter().all(|s| *s <= BLOB_CHUNK_MAX), "{sizes:?}");
        assert_eq!(Blobs::get(&*spool, large).await.unwrap(), whole);
        assert!(Blobs::get(&*spool, empty).await.unwrap().is_empty());
        let depth = spool.depth().await.unwrap();
        assert_eq!(depth.stored_bytes, whole.len() as u64);
    }

    #[tokio::test]
    async fn a_blob_without_a_record_is_dropped_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(START);
        let (kept, orphan) = (QueueId::generate(START), QueueId::generate(START));
        {
            let spool = RedbSpool::open(dir.path(), options(), clock.clone()).unwrap();
            spool
                .put(kept, vec![Bytes::from_static(b"kept")])
                .await
                .unwrap();
            spool.enqueue(record(kept)).await.unwrap();
            // A put whose enqueue never came (the process died, or the enqueue failed).
            spool
                .put(orphan, vec![Bytes::from_static(b"orphan")])
                .await
                .unwrap();
            assert_eq!(spool.depth().await.unwrap().stored_messages, 2);
        }
        let spool = RedbSpool::open(dir.path(), options(), clock).unwrap();
        let depth = spool.depth().await.unwrap();
        assert_eq!((depth.stored_messages, depth.stored_bytes), (1, 4));
        assert!(Blobs::get(&*spool, orphan).await.is_err());
        assert_eq!(&Blobs::get(&*spool, kept).await.unwrap()[..], b"kept");
    }

    /// Issue 15 item 2: start-up must not depend on how much is stored. Opening reads the
    /// counts kept in the `usage` table (shown by planting a count no walk would find), and a
    /// spool from before that table is walked once and counted from then on.
    #[tokio::test]
    async fn opening_reads_the_kept_usage_instead_of_walking_the_messages() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(START);
        {
            let spool = RedbSpool::open(dir.path(), options(), clock.clone()).unwrap();
            for body in [&b"one"[..], b"three"] {
                let id = QueueId::generate(START);
                spool.put(id, vec![Bytes::from(body)]).await.unwrap();
                spool.enqueue(record(id)).await.unwrap();
            }
        }
        let path = dir.path().join("spool.redb");
        let rewrite = |planted: Option<u64>| {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            match planted {
                Some(n) => {
                    let mut usage = txn.open_table(USAGE).unwrap();
                    let kept = usage.get("messages").unwrap().map(|v| v.value());
                    assert_eq!(kept, Some(2), "the count is kept on every change");
                    usage.insert("messages", n).unwrap();
                }
                None => assert!(txn.delete_table(USAGE).unwrap()),
            }
            txn.commit().unwrap();
        };
        rewrite(Some(7_777));
        {
            let spool = RedbSpool::open(dir.path(), options(), clock.clone()).unwrap();
            assert_eq!(spool.depth().await.unwrap().stored_messages, 7_777);
        }
        rewrite(None);
        let spool = RedbSpool::open(dir.path(), options(), clock).unwrap();
        let depth = spool.depth().await.unwrap();
        assert_eq!((depth.stored_messages, depth.stored_bytes), (2, 8));
    }

    /// Issue 15 item 2: the file gives freed space back. A drained backlog leaves the file at
    /// its high-water mark; compaction (forced, as from `outbox queue compact`) shrinks it and
    /// what is still queued reads the same; the unforced (hourly) check leaves a file alone
    /// whose free space is small.
    #[tokio::test]
    async fn compaction_gives_a_drained_backlogs_space_back() {
        let dir = tempfile::tempdir().unwrap();
        let options = SpoolOptions {
            max_bytes: 1 << 30,
            ..options()
        };
        let spool = RedbSpool::open(dir.path(), options, ManualClock::new(START)).unwrap();
        let body = Bytes::from(vec![b'x'; 256 * 1024]);
        let mut ids = Vec::new();
        for _ in 0..80 {
            let id = QueueId::generate(START);
            spool.put(id, vec![body.clone()]).await.unwrap();
            spool.enqueue(record(id)).await.unwrap();
            ids.push(id);
        }
        let kept = ids.pop().unwrap();
        for id in ids {
            Blobs::delete(&*spool, id).await.unwrap();
        }
        let file = dir.path().join("spool.redb");
        let high_water = std::fs::metadata(&file).unwrap().len();
        assert!(high_water > 20 << 20, "file {high_water}");

        let hourly = spool.compact(false).await.unwrap().unwrap();
        assert!(!hourly.performed, "{hourly:?}: under COMPACT_MIN_FREE");
        assert_eq!(std::fs::metadata(&file).unwrap().len(), high_water);

        let forced = spool.compact(true).await.unwrap().unwrap();
        assert!(forced.performed);
        assert_eq!(forced.before_bytes, high_water);
        assert!(
            forced.after_bytes < high_water / 4,
            "{high_water} -> {}",
            forced.after_bytes
        );
        assert_eq!(std::fs::metadata(&file).unwrap().len(), forced.after_bytes);
        assert_eq!(Blobs::get(&*spool, kept).await.unwrap(), body);
        assert_eq!(spool.lease(100, Duration::ZERO).await.unwrap().len(), 80);
    }

    #[tokio::test]
    async fn enqueue_refuses_a_record_without_bytes_or_twice() {
        let dir = tempfile::tempdir().unwrap();
        let spool = RedbSpool::open(dir.path(), options(), ManualClock::new(START)).unwrap();
        let id = QueueId::generate(START);
        assert!(spool.enqueue(record(id)).await.is_err(), "no bytes stored");
        spool.put(id, vec![Bytes::from_static(b"m")]).await.unwrap();
        spool.enqueue(record(id)).await.unwrap();
        assert!(spool.enqueue(record(id)).await.is_err(), "queued already");
        assert_eq!(spool.list(Listing::Queued, 10).await.unwrap(), vec![id]);
    }

    /// Upgrades: a spool written before formats were numbered is stamped and read as before;
    /// one written by a newer Outbox is refused with both numbers, and left as it was.
    #[tokio::test]
    async fn an_unnumbered_spool_is_migrated_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(START);
        let path = dir.path().join("spool.redb");
        let id = QueueId::generate(START);
        {
            let spool = RedbSpool::open(dir.path(), options(), clock.clone()).unwrap();
            spool.put(id, vec![Bytes::from_static(b"m")]).await.unwrap();
            spool.enqueue(record(id)).await.unwrap();
        }
        {
            let db = Database::create(&path).unwrap();
            assert_eq!(
                crate::redb_format::stored_format(&db).unwrap(),
                Some(writer::FORMAT)
            );
            crate::redb_format::forget_format(&db);
        }
        {
            let spool = RedbSpool::open(dir.path(), options(), clock.clone()).unwrap();
            assert_eq!(spool.list(Listing::Queued, 10).await.unwrap(), vec![id]);
        }
        {
            let db = Database::create(&path).unwrap();
            assert_eq!(
                crate::redb_format::stored_format(&db).unwrap(),
                Some(writer::FORMAT)
            );
            crate::redb_format::force_format(&db, writer::FORMAT + 1);
        }
        let Err(e) = RedbSpool::open(dir.path(), options(), clock.clone()) else {
            panic!("a newer format was opened");
        };
        let text = e.to_string();
        assert!(
            text.contains(&format!(
                "spool.redb: the spool has format {}, written by a newer Outbox",
                writer::FORMAT + 1
            )),
            "{text}"
        );
        let db = Database::create(&path).unwrap();
        assert_eq!(
            crate::redb_format::stored_format(&db).unwrap(),
            Some(writer::FORMAT + 1)
        );
    }

    /// `outbox spool backup`: the copy taken while the spool runs opens as a spool holding
    /// what was committed before it, not what came after; no copy is left beside the file.
    #[tokio::test]
    async fn a_backup_is_a_consistent_copy_of_the_committed_spool() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(START);
        let options = SpoolOptions {
            fsync: false, // the copy must still hold commits made without fsync
            ..options()
        };
        let spool = RedbSpool::open(dir.path(), options.clone(), clock.clone()).unwrap();
        let (before, after) = (QueueId::generate(START), QueueId::generate(START));
        spool
            .put(before, vec![Bytes::from_static(b"before")])
            .await
            .unwrap();
        spool.enqueue(record(before)).await.unwrap();
        let copy = Ledger::backup(&*spool).await.unwrap().unwrap();
        spool
            .put(after, vec![Bytes::from_static(b"after")])
            .await
            .unwrap();
        spool.enqueue(record(after)).await.unwrap();
        let restored = tempfile::tempdir().unwrap();
        std::fs::rename(&copy, restored.path().join("spool.redb")).unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with(BACKUP_PREFIX))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        let copy = RedbSpool::open(restored.path(), options, clock).unwrap();
        assert_eq!(copy.list(Listing::Queued, 10).await.unwrap(), vec![before]);
        assert_eq!(&Blobs::get(&*copy, before).await.unwrap()[..], b"before");
    }
}
