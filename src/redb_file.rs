//! A redb database file that survives an I/O error, shared by the spool and the JMAP store.
//!
//! After one failed write (a full disk, EIO), redb refuses every later transaction with "Previous
//! I/O error occurred. Please close and re-open the database" — forever, in that process. So a
//! failure must close the handle and open the file again: redb then recovers to its last
//! committed state. [`RedbFile`] does that: a caller whose operation failed reports it
//! ([`RedbFile::after_failure`]); if redb now refuses writes, the handle is taken out of service,
//! and the next [`RedbFile::get`] (at most once per [`RETRY`]) waits for the last reader of the
//! old handle to finish, closes it and reopens the file. Until that works, callers get a clear
//! "storage unavailable" error at once — they answer 451 and lose nothing — and
//! [`RedbFile::failing`] says why (for `/readyz`).
//!
//! The same exclusive hold lets [`RedbFile::compact`] shrink the file, which redb only does with
//! no transaction open.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase};

/// How often a failed file is tried again: often enough that mail flows within a second or two
/// of space returning, rarely enough that a dead disk is not hammered.
pub const RETRY: Duration = Duration::from_secs(1);
/// How long [`RedbFile::compact`] and a reopen wait for readers of the old handle (reads are
/// short: a record, a listing, one message).
const READERS_GRACE: Duration = Duration::from_secs(5);

/// Runs on a freshly reopened database before it is used (recount what the caller caches).
pub type OnReopen = Box<dyn Fn(&Database) -> Result<(), String> + Send + Sync>;

pub struct RedbFile {
    path: PathBuf,
    slot: Mutex<Slot>,
    on_reopen: OnReopen,
}

struct Slot {
    open: Option<Arc<Database>>,
    /// The handle taken out of service, until its last reader lets go.
    closing: Option<Arc<Database>>,
    /// Why the file is out of service (None while it is open).
    error: Option<String>,
    next_try: Instant,
}

/// The file cannot be used now; the text says why (for logs; clients get a generic 451).
#[derive(Debug, Clone)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "storage unavailable: {}", self.0)
    }
}

impl RedbFile {
    /// Wraps a database the caller opened (at `path`); `on_reopen` runs after every reopen.
    pub fn new(path: &Path, db: Database, on_reopen: OnReopen) -> RedbFile {
        RedbFile {
            path: path.to_path_buf(),
            slot: Mutex::new(Slot {
                open: Some(Arc::new(db)),
                closing: None,
                error: None,
                next_try: Instant::now(),
            }),
            on_reopen,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open database; if it was taken out of service, tries to reopen it first (at most
    /// once per [`RETRY`]).
    pub fn get(&self) -> Result<Arc<Database>, Unavailable> {
        let mut slot = self.lock();
        if let Some(db) = &slot.open {
            return Ok(db.clone());
        }
        let error = slot.error.clone().unwrap_or_default();
        if Instant::now() < slot.next_try {
            return Err(Unavailable(error));
        }
        slot.next_try = Instant::now() + RETRY;
        if let Some(old) = slot.closing.take() {
            match wait_for_sole_owner(old, Duration::ZERO) {
                Ok(db) => drop(db), // closes the file and releases its lock
                Err(old) => {
                    slot.closing = Some(old);
                    return Err(Unavailable(format!(
                        "{error} (closing: readers still active)"
                    )));
                }
            }
        }
        let reopened = Database::create(&self.path)
            .map_err(|e| e.to_string())
            .and_then(|db| (self.on_reopen)(&db).map(|()| db));
        match reopened {
            Ok(db) => {
                // Still failing until a write proves otherwise (see `works`): a full disk lets
                // the file open but not grow.
                tracing::info!(path = %self.path.display(), after = %error, "storage reopened");
                let db = Arc::new(db);
                slot.open = Some(db.clone());
                Ok(db)
            }
            Err(e) => {
                slot.error = Some(e.clone());
                Err(Unavailable(e))
            }
        }
    }

    /// A read transaction that keeps the handle in service until it ends (so a reopen or a
    /// compaction waits for it instead of pulling the file from under it).
    pub fn begin_read(&self) -> Result<Reading, Unavailable> {
        let db = self.get()?;
        let txn = db.begin_read().map_err(|e| Unavailable(e.to_string()))?;
        Ok(Reading { txn, _db: db })
    }

    /// Called after an operation on the file failed with `error`. If redb now refuses writes
    /// (it does after any I/O error, until reopened) the handle is taken out of service; an
    /// error that left the database usable (a missing record, a full quota) changes nothing.
    /// Must not be called while the caller holds a write transaction.
    pub fn after_failure(&self, error: &dyn std::fmt::Display) {
        let mut slot = self.lock();
        let Some(db) = slot.open.clone() else {
            return;
        };
        let probe = db.begin_write();
        let Err(refused) = probe else {
            return; // dropping the probe aborts it
        };
        if slot.error.is_none() {
            tracing::error!(
                path = %self.path.display(), %error, %refused,
                "storage failed; refusing mail with 451/452 until a write works again"
            );
        } else {
            tracing::debug!(path = %self.path.display(), %error, "storage still failing");
        }
        slot.error = Some(error.to_string());
        slot.closing = slot.open.take();
        slot.next_try = Instant::now();
    }

    /// A write that needed new space committed: the failure (if any) is over.
    pub fn works(&self) {
        let mut slot = self.lock();
        if slot.open.is_some() {
            if let Some(error) = slot.error.take() {
                tracing::warn!(path = %self.path.display(), after = %error, "storage works again; accepting mail");
            }
        }
    }

    /// Why the file is failing: from an I/O error until a write that needed space commits
    /// again ([`works`](Self::works)); None while it works.
    pub fn failing(&self) -> Option<String> {
        self.lock().error.clone()
    }

    /// Rewrites the file without its free pages (redb's `compact`); true if it shrank. Waits
    /// for readers to finish; callers of [`get`](Self::get) wait meanwhile. The caller must
    /// hold no transaction (the spool runs this on its writer thread).
    pub fn compact(&self) -> Result<bool, Unavailable> {
        let mut slot = self.lock();
        let Some(db) = slot.open.take() else {
            return Err(Unavailable(slot.error.clone().unwrap_or_default()));
        };
        let mut db = match wait_for_sole_owner(db, READERS_GRACE) {
            Ok(db) => db,
            Err(db) => {
                slot.open = Some(db);
                return Err(Unavailable("readers still active; try again".into()));
            }
        };
        let result = db.compact().map_err(|e| Unavailable(e.to_string()));
        slot.open = Some(Arc::new(db));
        result
    }
}

/// A read transaction and the handle it reads through (dropped in that order).
pub struct Reading {
    txn: redb::ReadTransaction,
    _db: Arc<Database>,
}

impl std::ops::Deref for Reading {
    type Target = redb::ReadTransaction;
    fn deref(&self) -> &redb::ReadTransaction {
        &self.txn
    }
}

/// The database itself once no one else holds it, or the shared handle back after `grace`.
fn wait_for_sole_owner(mut db: Arc<Database>, grace: Duration) -> Result<Database, Arc<Database>> {
    let deadline = Instant::now() + grace;
    loop {
        match Arc::try_unwrap(db) {
            Ok(db) => return Ok(db),
            Err(shared) if Instant::now() >= deadline => return Err(shared),
            Err(shared) => {
                db = shared;
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}
