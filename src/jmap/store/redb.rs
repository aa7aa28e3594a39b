//! The one-node JMAP store: `<state_dir>/jmap.redb`, one redb transaction per write.

use std::path::Path;

use anyhow::Result;
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};

use crate::redb_file::{Reading, RedbFile};

use super::{storage, ChangeLog, RxOps, Touched, Tx, TxOps, CHANGE_LOG_KEEP};

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

pub(crate) struct RedbStore {
    file: RedbFile,
}

/// New state numbers of a commit: ((account, type), state).
/// The JMAP store's format (see [`crate::redb_format`]). 1: the tables as they are now.
const FORMAT: u64 = 1;
/// Format 0 (written before formats were numbered) has format 1's tables: nothing to change.
const FORMAT_STEPS: [crate::redb_format::Step; FORMAT as usize] = [|_| Ok(())];

pub(crate) type NewStates = Vec<((String, &'static str), u64)>;

impl RedbStore {
    pub fn open(path: &Path) -> Result<RedbStore> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        crate::state_files::prepare_database(path)
            .map_err(|e| anyhow::anyhow!(crate::state_files::io_problem(path, &e)))?;
        let db = Database::create(path)
            .map_err(|e| anyhow::anyhow!(crate::state_files::open_problem(path, &e)))?;
        let txn = db.begin_write()?;
        crate::redb_format::check_and_migrate(&txn, "JMAP store", path, FORMAT, &FORMAT_STEPS)
            .map_err(anyhow::Error::msg)?;
        txn.open_table(STATES)?;
        txn.open_table(CHANGES)?;
        txn.open_table(OBJECTS)?;
        txn.open_table(BLOBS)?;
        txn.open_table(QUEUE_INDEX)?;
        txn.open_table(COUNTERS)?;
        txn.commit()?;
        // Reopened after an I/O error (see RedbFile): the tables exist; nothing is cached.
        Ok(RedbStore {
            file: RedbFile::new(path, db, Box::new(|_| Ok(()))),
        })
    }

    pub fn write<R>(&self, mut f: impl FnMut(&mut Tx) -> Result<R>) -> Result<(R, NewStates)> {
        let db = self.file.get().map_err(storage)?;
        let result = (|| {
            let txn = db.begin_write().map_err(storage)?;
            let mut ops = RedbTx { txn: &txn };
            let mut tx = Tx::new(&mut ops);
            let out = f(&mut tx)?;
            let touched = tx.into_touched();
            let states = bump(&txn, touched)?;
            txn.commit().map_err(storage)?;
            Ok((out, states))
        })();
        drop(db);
        if let Err(e) = &result {
            self.file.after_failure(e);
        }
        result
    }

    pub fn read(&self) -> Result<RedbRx> {
        Ok(RedbRx {
            txn: self.file.begin_read().map_err(storage)?,
        })
    }
}

/// Each touched (account, type) gets the next state and one change-log entry.
fn bump(txn: &WriteTransaction, touched: Touched) -> Result<NewStates> {
    let mut states = txn.open_table(STATES).map_err(storage)?;
    let mut changes = txn.open_table(CHANGES).map_err(storage)?;
    let mut out = Vec::new();
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
        out.push(((account, ty), next));
    }
    Ok(out)
}

struct RedbTx<'a> {
    txn: &'a WriteTransaction,
}

impl TxOps for RedbTx<'_> {
    fn get(&self, account: &str, table: &str, id: &str) -> Result<Option<Vec<u8>>> {
        let t = self.txn.open_table(OBJECTS).map_err(storage)?;
        let v = t.get((account, table, id)).map_err(storage)?;
        Ok(v.map(|v| v.value().to_vec()))
    }

    fn put(&mut self, account: &str, table: &str, id: &str, json: Vec<u8>) -> Result<()> {
        let mut t = self.txn.open_table(OBJECTS).map_err(storage)?;
        t.insert((account, table, id), json.as_slice())
            .map_err(storage)?;
        Ok(())
    }

    fn remove(&mut self, account: &str, table: &str, id: &str) -> Result<bool> {
        let mut t = self.txn.open_table(OBJECTS).map_err(storage)?;
        let removed = t.remove((account, table, id)).map_err(storage)?.is_some();
        Ok(removed)
    }

    fn put_blob(&mut self, account: &str, blob_id: &str, bytes: &[u8]) -> Result<()> {
        let mut t = self.txn.open_table(BLOBS).map_err(storage)?;
        t.insert((account, blob_id), bytes).map_err(storage)?;
        Ok(())
    }

    fn blob(&self, account: &str, blob_id: &str) -> Result<Option<Vec<u8>>> {
        let t = self.txn.open_table(BLOBS).map_err(storage)?;
        let v = t.get((account, blob_id)).map_err(storage)?;
        Ok(v.map(|v| v.value().to_vec()))
    }

    fn remove_blob(&mut self, account: &str, blob_id: &str) -> Result<()> {
        let mut t = self.txn.open_table(BLOBS).map_err(storage)?;
        t.remove((account, blob_id)).map_err(storage)?;
        Ok(())
    }

    fn index_queue_id(&mut self, queue_id: u128, account: &str) -> Result<()> {
        let mut t = self.txn.open_table(QUEUE_INDEX).map_err(storage)?;
        t.insert(queue_id, account).map_err(storage)?;
        Ok(())
    }

    fn unindex_queue_id(&mut self, queue_id: u128) -> Result<()> {
        let mut t = self.txn.open_table(QUEUE_INDEX).map_err(storage)?;
        t.remove(queue_id).map_err(storage)?;
        Ok(())
    }

    fn counter(&self, name: &str) -> Result<u64> {
        let t = self.txn.open_table(COUNTERS).map_err(storage)?;
        let value = t.get(name).map_err(storage)?.map_or(0, |v| v.value());
        Ok(value)
    }

    fn set_counter(&mut self, name: &str, value: u64) -> Result<()> {
        let mut t = self.txn.open_table(COUNTERS).map_err(storage)?;
        t.insert(name, value).map_err(storage)?;
        Ok(())
    }
}

/// A consistent read view.
pub(crate) struct RedbRx {
    txn: Reading,
}

impl RxOps for RedbRx {
    fn state(&self, account: &str, ty: &str) -> Result<u64> {
        let t = self.txn.open_table(STATES).map_err(storage)?;
        Ok(t.get((account, ty))
            .map_err(storage)?
            .map_or(0, |v| v.value()))
    }

    fn get(&self, account: &str, table: &str, id: &str) -> Result<Option<Vec<u8>>> {
        let t = self.txn.open_table(OBJECTS).map_err(storage)?;
        let v = t.get((account, table, id)).map_err(storage)?;
        Ok(v.map(|v| v.value().to_vec()))
    }

    fn list(&self, account: &str, table: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let t = self.txn.open_table(OBJECTS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in t.range((account, table, "")..).map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            let (a, tb, id) = k.value();
            if a != account || tb != table {
                break;
            }
            out.push((id.to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn blob(&self, account: &str, blob_id: &str) -> Result<Option<Vec<u8>>> {
        let t = self.txn.open_table(BLOBS).map_err(storage)?;
        Ok(t.get((account, blob_id))
            .map_err(storage)?
            .map(|v| v.value().to_vec()))
    }

    fn account_of_queue_id(&self, queue_id: u128) -> Result<Option<String>> {
        let t = self.txn.open_table(QUEUE_INDEX).map_err(storage)?;
        Ok(t.get(queue_id)
            .map_err(storage)?
            .map(|v| v.value().to_string()))
    }

    fn queue_ids(&self) -> Result<Vec<(u128, String)>> {
        let t = self.txn.open_table(QUEUE_INDEX).map_err(storage)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            out.push((k.value(), v.value().to_string()));
        }
        Ok(out)
    }

    fn counter(&self, name: &str) -> Result<u64> {
        let t = self.txn.open_table(COUNTERS).map_err(storage)?;
        Ok(t.get(name).map_err(storage)?.map_or(0, |v| v.value()))
    }

    fn changes(&self, account: &str, ty: &str, since: u64) -> Result<ChangeLog> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Upgrades, as for the spool: an unnumbered store is stamped and opened, a newer one is
    /// refused with both numbers.
    #[test]
    fn an_unnumbered_store_is_migrated_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jmap.redb");
        drop(RedbStore::open(&path).unwrap());
        {
            let db = Database::create(&path).unwrap();
            crate::redb_format::forget_format(&db);
        }
        drop(RedbStore::open(&path).unwrap());
        {
            let db = Database::create(&path).unwrap();
            assert_eq!(
                crate::redb_format::stored_format(&db).unwrap(),
                Some(FORMAT)
            );
            crate::redb_format::force_format(&db, FORMAT + 1);
        }
        let Err(e) = RedbStore::open(&path) else {
            panic!("a newer format was opened");
        };
        let text = format!("{e:#}");
        assert!(
            text.contains(&format!(
                "jmap.redb: the JMAP store has format {}, written by a newer Outbox",
                FORMAT + 1
            )),
            "{text}"
        );
    }
}
