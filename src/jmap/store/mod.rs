//! The JMAP bridge's own storage, kept apart from the spool: Emails (metadata + MIME blob),
//! uploaded blobs, identity overrides, what clients were last shown of each EmailSubmission
//! (the submission itself is the ledger record), bearer tokens, the ledger change-feed cursor,
//! and per-account state counters with a change log for `*/changes`.
//!
//! Two backends behind one interface: [`redb`] (`<state_dir>/jmap.redb`, one node) and
//! [`aws`] (DynamoDB + S3, shared by every node of the AWS spool backend, so any node serves
//! any client). Every write runs as one transaction through [`Store::write`]; the objects it
//! touched are recorded on the [`Tx`], and on commit each touched (account, type) gets the
//! next state number and one change-log entry, and a [`StateChange`] is broadcast
//! (EventSource). A backend whose transactions are optimistic runs the closure again when
//! another writer got there first, so closures must not have effects outside the [`Tx`].

pub mod aws;
mod redb;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// States of change log kept per account and type; `/changes` from an older state answers
/// `cannotCalculateChanges` (the client re-fetches).
pub const CHANGE_LOG_KEEP: u64 = 10_000;

pub const T_EMAIL: &str = "email";
pub const T_SUBMISSION: &str = "submission";
pub const T_IDENTITY: &str = "identity";
/// Tokens live under the pseudo-account `""` keyed by the token's SHA-256.
pub const T_TOKEN: &str = "token";
/// Uploads, under the pseudo-account `""` keyed `account/blobId`, with their upload time.
pub const T_UPLOAD: &str = "upload";

/// A change-log entry kind (RFC 8620 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Created,
    Updated,
    Destroyed,
}

/// Change-log entries: (state, what that state changed).
pub type ChangeLog = Vec<(u64, Vec<(String, Kind)>)>;

/// What one transaction touched: (account, JMAP type) → entries.
pub(crate) type Touched = BTreeMap<(String, &'static str), Vec<(String, Kind)>>;

/// Account → (JMAP type → new state string), what a commit announces.
type Pushes = BTreeMap<String, BTreeMap<String, String>>;

/// New states after a commit, for push.
#[derive(Debug, Clone)]
pub struct StateChange {
    pub account: String,
    /// JMAP type name → new state string.
    pub changed: BTreeMap<String, String>,
}

pub fn state_string(n: u64) -> String {
    format!("s{n}")
}

pub fn parse_state(s: &str) -> Option<u64> {
    s.strip_prefix('s')?.parse().ok()
}

pub(crate) fn storage(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("jmap store: {e}")
}

/// A backend's write transaction, in bytes.
pub(crate) trait TxOps {
    fn get(&self, account: &str, table: &str, id: &str) -> Result<Option<Vec<u8>>>;
    fn put(&mut self, account: &str, table: &str, id: &str, json: Vec<u8>) -> Result<()>;
    fn remove(&mut self, account: &str, table: &str, id: &str) -> Result<bool>;
    fn put_blob(&mut self, account: &str, blob_id: &str, bytes: &[u8]) -> Result<()>;
    fn blob(&self, account: &str, blob_id: &str) -> Result<Option<Vec<u8>>>;
    fn remove_blob(&mut self, account: &str, blob_id: &str) -> Result<()>;
    fn index_queue_id(&mut self, queue_id: u128, account: &str) -> Result<()>;
    fn unindex_queue_id(&mut self, queue_id: u128) -> Result<()>;
    fn counter(&self, name: &str) -> Result<u64>;
    fn set_counter(&mut self, name: &str, value: u64) -> Result<()>;
}

/// A backend's read view, in bytes.
pub(crate) trait RxOps: Send {
    fn state(&self, account: &str, ty: &str) -> Result<u64>;
    fn get(&self, account: &str, table: &str, id: &str) -> Result<Option<Vec<u8>>>;
    fn list(&self, account: &str, table: &str) -> Result<Vec<(String, Vec<u8>)>>;
    fn blob(&self, account: &str, blob_id: &str) -> Result<Option<Vec<u8>>>;
    fn account_of_queue_id(&self, queue_id: u128) -> Result<Option<String>>;
    fn queue_ids(&self) -> Result<Vec<(u128, String)>>;
    fn counter(&self, name: &str) -> Result<u64>;
    fn changes(&self, account: &str, ty: &str, since: u64) -> Result<ChangeLog>;
}

enum Backend {
    Redb(redb::RedbStore),
    Aws(aws::AwsStore),
}

pub struct Store {
    backend: Backend,
    push: broadcast::Sender<StateChange>,
}

impl Store {
    /// The one-node store, a redb file.
    pub fn open(path: &Path) -> Result<Store> {
        let (push, _) = broadcast::channel(1024);
        Ok(Store {
            backend: Backend::Redb(redb::RedbStore::open(path)?),
            push,
        })
    }

    /// The store every node shares (see [`aws`]).
    pub fn shared(store: aws::AwsStore) -> Store {
        let (push, _) = broadcast::channel(1024);
        Store {
            backend: Backend::Aws(store),
            push,
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<StateChange> {
        self.push.subscribe()
    }

    /// For a shared store: states other nodes moved on, broadcast to this node's EventSource
    /// clients (see [`aws::AwsStore::watch`]).
    pub(crate) fn push_sender(&self) -> broadcast::Sender<StateChange> {
        self.push.clone()
    }

    pub(crate) fn aws(&self) -> Option<&aws::AwsStore> {
        match &self.backend {
            Backend::Aws(store) => Some(store),
            Backend::Redb(_) => None,
        }
    }

    /// Runs `f` in one write transaction and commits it if `f` returns Ok. The caller waits
    /// for the disk (or AWS) without holding up the runtime's other tasks.
    pub fn write<R>(&self, f: impl FnMut(&mut Tx) -> Result<R>) -> Result<R> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let (out, pushes) = match Handle::try_current() {
            Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| self.write_now(f))?
            }
            _ => self.write_now(f)?,
        };
        for (account, changed) in pushes {
            let _ = self.push.send(StateChange { account, changed });
        }
        Ok(out)
    }

    fn write_now<R>(&self, f: impl FnMut(&mut Tx) -> Result<R>) -> Result<(R, Pushes)> {
        let (out, states) = match &self.backend {
            Backend::Redb(store) => store.write(f)?,
            Backend::Aws(store) => store.write(f)?,
        };
        let mut pushes = Pushes::new();
        for ((account, ty), state) in states {
            pushes
                .entry(account)
                .or_default()
                .insert(ty.to_string(), state_string(state));
        }
        Ok((out, pushes))
    }

    pub fn read(&self) -> Result<Rx> {
        Ok(Rx {
            ops: match &self.backend {
                Backend::Redb(store) => Box::new(store.read()?),
                Backend::Aws(store) => Box::new(store.read()),
            },
        })
    }
}

/// A read view (consistent as of its start on redb; each read consistent on AWS).
pub struct Rx {
    ops: Box<dyn RxOps>,
}

fn decode<T: DeserializeOwned>(bytes: Option<Vec<u8>>) -> Result<Option<T>> {
    bytes
        .map(|v| serde_json::from_slice(&v).map_err(storage))
        .transpose()
}

impl Rx {
    pub fn state(&self, account: &str, ty: &str) -> Result<u64> {
        self.ops.state(account, ty)
    }

    pub fn get<T: DeserializeOwned>(
        &self,
        account: &str,
        table: &str,
        id: &str,
    ) -> Result<Option<T>> {
        decode(self.ops.get(account, table, id)?)
    }

    pub fn list<T: DeserializeOwned>(
        &self,
        account: &str,
        table: &str,
    ) -> Result<Vec<(String, T)>> {
        self.ops
            .list(account, table)?
            .into_iter()
            .map(|(id, v)| Ok((id, serde_json::from_slice(&v).map_err(storage)?)))
            .collect()
    }

    pub fn blob(&self, account: &str, blob_id: &str) -> Result<Option<Vec<u8>>> {
        self.ops.blob(account, blob_id)
    }

    pub fn account_of_queue_id(&self, queue_id: u128) -> Result<Option<String>> {
        self.ops.account_of_queue_id(queue_id)
    }

    /// Every (queue id, account) of an EmailSubmission this store has a view of.
    pub fn queue_ids(&self) -> Result<Vec<(u128, String)>> {
        self.ops.queue_ids()
    }

    /// A counter's value (0 when never set).
    pub fn counter(&self, name: &str) -> Result<u64> {
        self.ops.counter(name)
    }

    /// Change-log entries of states `since+1 ..= up to`, in order.
    pub fn changes(&self, account: &str, ty: &str, since: u64) -> Result<ChangeLog> {
        self.ops.changes(account, ty, since)
    }
}

/// A write transaction in progress.
pub struct Tx<'a> {
    ops: &'a mut dyn TxOps,
    touched: Touched,
}

impl<'a> Tx<'a> {
    pub(crate) fn new(ops: &'a mut dyn TxOps) -> Tx<'a> {
        Tx {
            ops,
            touched: Touched::new(),
        }
    }

    pub(crate) fn into_touched(self) -> Touched {
        self.touched
    }

    /// Records that `id` of JMAP type `ty` changed in `account` (state bump at commit).
    pub fn touch(&mut self, account: &str, ty: &'static str, id: &str, kind: Kind) {
        self.touched
            .entry((account.to_string(), ty))
            .or_default()
            .push((id.to_string(), kind));
    }

    pub fn next_id(&mut self, prefix: &str) -> Result<String> {
        let n = self.ops.counter(prefix)? + 1;
        self.ops.set_counter(prefix, n)?;
        Ok(format!("{prefix}{n:x}"))
    }

    pub fn get<T: DeserializeOwned>(
        &self,
        account: &str,
        table: &str,
        id: &str,
    ) -> Result<Option<T>> {
        decode(self.ops.get(account, table, id)?)
    }

    pub fn put<T: Serialize>(
        &mut self,
        account: &str,
        table: &str,
        id: &str,
        value: &T,
    ) -> Result<()> {
        let json = serde_json::to_vec(value)?;
        self.ops.put(account, table, id, json)
    }

    pub fn remove(&mut self, account: &str, table: &str, id: &str) -> Result<bool> {
        self.ops.remove(account, table, id)
    }

    pub fn put_blob(&mut self, account: &str, blob_id: &str, bytes: &[u8]) -> Result<()> {
        self.ops.put_blob(account, blob_id, bytes)
    }

    pub fn blob(&self, account: &str, blob_id: &str) -> Result<Option<Vec<u8>>> {
        self.ops.blob(account, blob_id)
    }

    pub fn remove_blob(&mut self, account: &str, blob_id: &str) -> Result<()> {
        self.ops.remove_blob(account, blob_id)
    }

    pub fn index_queue_id(&mut self, queue_id: u128, account: &str) -> Result<()> {
        self.ops.index_queue_id(queue_id, account)
    }

    pub fn unindex_queue_id(&mut self, queue_id: u128) -> Result<()> {
        self.ops.unindex_queue_id(queue_id)
    }

    pub fn set_counter(&mut self, name: &str, value: u64) -> Result<()> {
        self.ops.set_counter(name, value)
    }
}

#[cfg(test)]
pub(crate) mod tests;
