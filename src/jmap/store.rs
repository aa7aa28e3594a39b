//! The JMAP bridge's own storage, `<state_dir>/jmap.redb`, kept apart from the spool: Emails
//! (metadata + MIME blob), uploaded blobs, identity overrides, what clients were last shown
//! of each EmailSubmission (the submission itself is the ledger record), bearer tokens, the
//! ledger change-feed cursor, and per-account state counters with a change log for
//! `*/changes`.
//!
//! Every write runs in one redb transaction through [`Store::write`]; the objects it touched
//! are recorded on the [`Tx`], and on commit each touched (account, type) gets the next state
//! number and one change-log entry, and a [`StateChange`] is broadcast (EventSource).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// (account, data type) → current state number.
const STATES: TableDefinition<(&str, &str), u64> = TableDefinition::new("states");
/// (account, data type, state) → JSON `[ [id, kind], … ]`: what that state changed.
const CHANGES: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("changes");
/// (account, table, id) → JSON object; `table` is one of the `T_*` names.
const OBJECTS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("objects");
/// (account, blob id) → bytes: uploads and Email MIME.
const BLOBS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("blobs");
/// Queue id → account id, for the EmailSubmissions this store shows (their views).
const QUEUE_INDEX: TableDefinition<u128, &str> = TableDefinition::new("submission_index");
/// Counters for ids.
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

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

/// New states after a commit, for push.
#[derive(Debug, Clone)]
pub struct StateChange {
    pub account: String,
    /// JMAP type name → new state string.
    pub changed: BTreeMap<String, String>,
}

pub struct Store {
    db: Database,
    push: broadcast::Sender<StateChange>,
}

pub fn state_string(n: u64) -> String {
    format!("s{n}")
}

pub fn parse_state(s: &str) -> Option<u64> {
    s.strip_prefix('s')?.parse().ok()
}

/// One object, from a read or a write transaction's table.
fn read_object<T: DeserializeOwned>(
    t: &impl ReadableTable<(&'static str, &'static str, &'static str), &'static [u8]>,
    account: &str,
    table: &str,
    id: &str,
) -> Result<Option<T>> {
    let v = t.get((account, table, id)).map_err(storage)?;
    v.map(|v| serde_json::from_slice(v.value()).map_err(storage))
        .transpose()
}

/// One blob's bytes, from a read or a write transaction's table.
fn read_blob(
    t: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    account: &str,
    blob_id: &str,
) -> Result<Option<Vec<u8>>> {
    Ok(t.get((account, blob_id))
        .map_err(storage)?
        .map(|v| v.value().to_vec()))
}

fn storage(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("jmap store: {e}")
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let db = Database::create(path).with_context(|| format!("opening {}", path.display()))?;
        let txn = db.begin_write()?;
        txn.open_table(STATES)?;
        txn.open_table(CHANGES)?;
        txn.open_table(OBJECTS)?;
        txn.open_table(BLOBS)?;
        txn.open_table(QUEUE_INDEX)?;
        txn.open_table(COUNTERS)?;
        txn.commit()?;
        let (push, _) = broadcast::channel(1024);
        Ok(Store { db, push })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<StateChange> {
        self.push.subscribe()
    }

    /// Runs `f` in one write transaction; commits (fsync) if it returns Ok. On the
    /// multi-threaded runtime the commit runs under `block_in_place`, so the worker's other
    /// tasks (other requests, pushes) move on while this one waits for the disk.
    pub fn write<R>(&self, f: impl FnOnce(&mut Tx) -> Result<R>) -> Result<R> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        match Handle::try_current() {
            Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| self.write_now(f))
            }
            _ => self.write_now(f),
        }
    }

    fn write_now<R>(&self, f: impl FnOnce(&mut Tx) -> Result<R>) -> Result<R> {
        let txn = self.db.begin_write().map_err(storage)?;
        let mut tx = Tx {
            txn: &txn,
            touched: BTreeMap::new(),
        };
        let out = f(&mut tx)?;
        let touched = std::mem::take(&mut tx.touched);
        let mut pushes: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        {
            let mut states = txn.open_table(STATES).map_err(storage)?;
            let mut changes = txn.open_table(CHANGES).map_err(storage)?;
            for ((account, ty), entries) in touched {
                let next = states
                    .get((account.as_str(), ty))
                    .map_err(storage)?
                    .map_or(0, |v| v.value())
                    + 1;
                states
                    .insert((account.as_str(), ty), next)
                    .map_err(storage)?;
                let json = serde_json::to_vec(&entries)?;
                changes
                    .insert((account.as_str(), ty, next), json.as_slice())
                    .map_err(storage)?;
                // One in, one out: the log keeps the last CHANGE_LOG_KEEP states.
                if next > CHANGE_LOG_KEEP {
                    changes
                        .remove((account.as_str(), ty, next - CHANGE_LOG_KEEP))
                        .map_err(storage)?;
                }
                pushes
                    .entry(account)
                    .or_default()
                    .insert(ty.to_string(), state_string(next));
            }
        }
        txn.commit().map_err(storage)?;
        for (account, changed) in pushes {
            let _ = self.push.send(StateChange { account, changed });
        }
        Ok(out)
    }

    pub fn read(&self) -> Result<Rx> {
        Ok(Rx {
            txn: self.db.begin_read().map_err(storage)?,
        })
    }
}

/// A consistent read view.
pub struct Rx {
    txn: redb::ReadTransaction,
}

impl Rx {
    pub fn state(&self, account: &str, ty: &str) -> Result<u64> {
        let t = self.txn.open_table(STATES).map_err(storage)?;
        Ok(t.get((account, ty))
            .map_err(storage)?
            .map_or(0, |v| v.value()))
    }

    pub fn get<T: DeserializeOwned>(
        &self,
        account: &str,
        table: &str,
        id: &str,
    ) -> Result<Option<T>> {
        read_object(
            &self.txn.open_table(OBJECTS).map_err(storage)?,
            account,
            table,
            id,
        )
    }

    pub fn list<T: DeserializeOwned>(
        &self,
        account: &str,
        table: &str,
    ) -> Result<Vec<(String, T)>> {
        let t = self.txn.open_table(OBJECTS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in t.range((account, table, "")..).map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            let (a, tb, id) = k.value();
            if a != account || tb != table {
                break;
            }
            out.push((
                id.to_string(),
                serde_json::from_slice(v.value()).map_err(storage)?,
            ));
        }
        Ok(out)
    }

    pub fn blob(&self, account: &str, blob_id: &str) -> Result<Option<Vec<u8>>> {
        read_blob(
            &self.txn.open_table(BLOBS).map_err(storage)?,
            account,
            blob_id,
        )
    }

    pub fn account_of_queue_id(&self, queue_id: u128) -> Result<Option<String>> {
        let t = self.txn.open_table(QUEUE_INDEX).map_err(storage)?;
        Ok(t.get(queue_id)
            .map_err(storage)?
            .map(|v| v.value().to_string()))
    }

    /// Every (queue id, account) of an EmailSubmission this store has a view of.
    pub fn queue_ids(&self) -> Result<Vec<(u128, String)>> {
        let t = self.txn.open_table(QUEUE_INDEX).map_err(storage)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            out.push((k.value(), v.value().to_string()));
        }
        Ok(out)
    }

    /// A counter's value (0 when never set).
    pub fn counter(&self, name: &str) -> Result<u64> {
        let t = self.txn.open_table(COUNTERS).map_err(storage)?;
        Ok(t.get(name).map_err(storage)?.map_or(0, |v| v.value()))
    }

    /// Change-log entries of states `since+1 ..= up to`, in order.
    pub fn changes(&self, account: &str, ty: &str, since: u64) -> Result<ChangeLog> {
        let t = self.txn.open_table(CHANGES).map_err(storage)?;
        let mut out = Vec::new();
        for entry in t.range((account, ty, since + 1)..).map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            let (a, tt, state) = k.value();
            if a != account || tt != ty {
                break;
            }
            out.push((state, serde_json::from_slice(v.value()).map_err(storage)?));
        }
        Ok(out)
    }
}

/// A write transaction in progress.
pub struct Tx<'a> {
    txn: &'a WriteTransaction,
    touched: BTreeMap<(String, &'static str), Vec<(String, Kind)>>,
}

impl Tx<'_> {
    /// Records that `id` of JMAP type `ty` changed in `account` (state bump at commit).
    pub fn touch(&mut self, account: &str, ty: &'static str, id: &str, kind: Kind) {
        self.touched
            .entry((account.to_string(), ty))
            .or_default()
            .push((id.to_string(), kind));
    }

    pub fn next_id(&mut self, prefix: &str) -> Result<String> {
        let mut t = self.txn.open_table(COUNTERS).map_err(storage)?;
        let n = t.get(prefix).map_err(storage)?.map_or(0, |v| v.value()) + 1;
        t.insert(prefix, n).map_err(storage)?;
        Ok(format!("{prefix}{n:x}"))
    }

    pub fn get<T: DeserializeOwned>(
        &self,
        account: &str,
        table: &str,
        id: &str,
    ) -> Result<Option<T>> {
        read_object(
            &self.txn.open_table(OBJECTS).map_err(storage)?,
            account,
            table,
            id,
        )
    }

    pub fn put<T: Serialize>(
        &mut self,
        account: &str,
        table: &str,
        id: &str,
        value: &T,
    ) -> Result<()> {
        let json = serde_json::to_vec(value)?;
        let mut t = self.txn.open_table(OBJECTS).map_err(storage)?;
        t.insert((account, table, id), json.as_slice())
            .map_err(storage)?;
        Ok(())
    }

    pub fn remove(&mut self, account: &str, table: &str, id: &str) -> Result<bool> {
        let mut t = self.txn.open_table(OBJECTS).map_err(storage)?;
        let removed = t.remove((account, table, id)).map_err(storage)?.is_some();
        Ok(removed)
    }

    pub fn put_blob(&mut self, account: &str, blob_id: &str, bytes: &[u8]) -> Result<()> {
        let mut t = self.txn.open_table(BLOBS).map_err(storage)?;
        t.insert((account, blob_id), bytes).map_err(storage)?;
        Ok(())
    }

    pub fn blob(&self, account: &str, blob_id: &str) -> Result<Option<Vec<u8>>> {
        read_blob(
            &self.txn.open_table(BLOBS).map_err(storage)?,
            account,
            blob_id,
        )
    }

    pub fn remove_blob(&mut self, account: &str, blob_id: &str) -> Result<()> {
        let mut t = self.txn.open_table(BLOBS).map_err(storage)?;
        t.remove((account, blob_id)).map_err(storage)?;
        Ok(())
    }

    pub fn index_queue_id(&mut self, queue_id: u128, account: &str) -> Result<()> {
        let mut t = self.txn.open_table(QUEUE_INDEX).map_err(storage)?;
        t.insert(queue_id, account).map_err(storage)?;
        Ok(())
    }

    pub fn unindex_queue_id(&mut self, queue_id: u128) -> Result<()> {
        let mut t = self.txn.open_table(QUEUE_INDEX).map_err(storage)?;
        t.remove(queue_id).map_err(storage)?;
        Ok(())
    }

    pub fn set_counter(&mut self, name: &str, value: u64) -> Result<()> {
        let mut t = self.txn.open_table(COUNTERS).map_err(storage)?;
        t.insert(name, value).map_err(storage)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("jmap.redb")).unwrap();
        let mut push = store.subscribe();
        store
            .write(|tx| {
                tx.put("a", T_EMAIL, "M1", &serde_json::json!({"x": 1}))?;
                tx.touch("a", "Email", "M1", Kind::Created);
                Ok(())
            })
            .unwrap();
        store
            .write(|tx| {
                tx.touch("a", "Email", "M1", Kind::Updated);
                tx.touch("b", "Email", "M9", Kind::Created);
                Ok(())
            })
            .unwrap();
        let rx = store.read().unwrap();
        assert_eq!(rx.state("a", "Email").unwrap(), 2);
        assert_eq!(rx.state("b", "Email").unwrap(), 1);
        assert_eq!(rx.state("a", "Mailbox").unwrap(), 0);
        let changes = rx.changes("a", "Email", 1).unwrap();
        assert_eq!(changes, vec![(2, vec![("M1".to_string(), Kind::Updated)])]);
        assert_eq!(rx.list::<serde_json::Value>("a", T_EMAIL).unwrap().len(), 1);
        assert!(rx
            .list::<serde_json::Value>("b", T_EMAIL)
            .unwrap()
            .is_empty());
        let first = push.try_recv().unwrap();
        assert_eq!(first.account, "a");
        assert_eq!(first.changed["Email"], "s1");
        // A failed write changes nothing.
        let failed: Result<()> = store.write(|tx| {
            tx.touch("a", "Email", "M1", Kind::Destroyed);
            anyhow::bail!("no")
        });
        assert!(failed.is_err());
        assert_eq!(store.read().unwrap().state("a", "Email").unwrap(), 2);
    }
}
