//! The queue's writes inside the writer's transaction: leases, their extension and
//! settlement (sent, failed, retry with backoff or to the dead-letter queue, release), and what
//! operators and submitters do by id.

use rand::Rng;
use redb::{ReadableTable, WriteTransaction};

use super::{table_err, Writer};
use crate::domain::{QueueId, State, SubmissionRecord};
use crate::spool::redb::{DEAD, HELD, PROVIDER_IDS, QUEUE};
use crate::spool::{rules, Action, Lease, Settled, Settlement, SpoolError};

impl Writer {
    pub(super) fn lease(
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
            rules::lease(&mut record, now, self.options.visibility_timeout_ms, token);
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

    pub(super) fn extend(
        &mut self,
        txn: &WriteTransaction,
        now: u64,
        id: QueueId,
        token: u64,
        visibility_ms: u64,
    ) -> Result<u64, SpoolError> {
        let mut record = self.load(txn, id)?.ok_or(SpoolError::NotFound(id))?;
        let old = record.clone();
        let deadline = rules::extend(&mut record, token, now, visibility_ms)?;
        self.reindex(txn, &old, &record)?;
        self.write_record(txn, &record)?;
        Ok(deadline)
    }

    /// Brings the queue, held and dead-letter indexes, the provider id index and the message
    /// bytes in line with a record's change from `old` to `new` (see [`rules`]).
    pub(super) fn reindex(
        &self,
        txn: &WriteTransaction,
        old: &SubmissionRecord,
        new: &SubmissionRecord,
    ) -> Result<(), SpoolError> {
        let id = new.job.id;
        let queued = |r: &SubmissionRecord| r.due_ms.filter(|_| r.state == State::Queued);
        if queued(old) != queued(new) {
            let mut queue = txn.open_table(QUEUE).map_err(table_err)?;
            if let Some(due) = queued(old) {
                queue.remove((due, id.0)).map_err(table_err)?;
            }
            if let Some(due) = queued(new) {
                queue.insert((due, id.0), ()).map_err(table_err)?;
            }
        }
        let is_held = |r: &SubmissionRecord| r.state == State::Held;
        if is_held(old) != is_held(new) {
            let mut held = txn.open_table(HELD).map_err(table_err)?;
            if is_held(new) {
                held.insert(id.0, ()).map_err(table_err)?;
            } else {
                held.remove(id.0).map_err(table_err)?;
            }
        }
        let (was_dead, is_dead) = (rules::dead_since(old), rules::dead_since(new));
        if was_dead != is_dead {
            let mut dead = txn.open_table(DEAD).map_err(table_err)?;
            if let Some(since) = was_dead {
                dead.remove((since, id.0)).map_err(table_err)?;
            }
            if let Some(since) = is_dead {
                dead.insert((since, id.0), ()).map_err(table_err)?;
            }
        }
        if let Some(pid) = new.provider_id.as_deref().filter(|p| !p.is_empty()) {
            if old.provider_id.as_deref() != Some(pid) {
                let mut index = txn.open_table(PROVIDER_IDS).map_err(table_err)?;
                index.insert(pid, id.0).map_err(table_err)?;
            }
        }
        if rules::keeps_blob(old) && !rules::keeps_blob(new) {
            self.delete_blob(txn, id)?;
        }
        Ok(())
    }

    pub(super) fn settle(
        &mut self,
        txn: &WriteTransaction,
        now: u64,
        id: QueueId,
        token: u64,
        settlement: Settlement,
    ) -> Result<Settled, SpoolError> {
        let mut record = self.load(txn, id)?.ok_or(SpoolError::NotFound(id))?;
        let old = record.clone();
        let settled = rules::settle(
            &mut record,
            token,
            now,
            settlement,
            &self.options,
            &mut self.rng,
        );
        if settled != Settled::Stale {
            self.reindex(txn, &old, &record)?;
            self.store(txn, &record)?;
        }
        Ok(settled)
    }

    pub(super) fn act(
        &mut self,
        txn: &WriteTransaction,
        now: u64,
        id: QueueId,
        action: Action,
    ) -> Result<(), SpoolError> {
        let mut record = self.load(txn, id)?.ok_or(SpoolError::NotFound(id))?;
        let old = record.clone();
        if rules::act(&mut record, now, action)? {
            self.reindex(txn, &old, &record)?;
            self.store(txn, &record)?;
        }
        Ok(())
    }
}
