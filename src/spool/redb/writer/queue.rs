//! The queue's writes inside the writer's transaction: leases, their extension and
//! settlement (sent, failed, retry with backoff or to the dead-letter queue, release), and what
//! operators and submitters do by id.

use rand::Rng;
use redb::{ReadableTable, WriteTransaction};

use super::{table_err, Writer};
use crate::domain::{QueueId, State, SubmissionRecord, Transition};
use crate::spool::redb::{DEAD, HELD, PROVIDER_IDS, QUEUE};
use crate::spool::{Action, Lease, Settled, Settlement, SpoolError};

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

    pub(super) fn extend(
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
    pub(super) fn dequeue(
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

    pub(super) fn settle(
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

    pub(super) fn act(
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

    pub(super) fn remove_dead(
        &self,
        txn: &WriteTransaction,
        id: QueueId,
    ) -> Result<(), SpoolError> {
        let mut dead = txn.open_table(DEAD).map_err(table_err)?;
        dead.retain(|(_, dead_id), ()| dead_id != id.0)
            .map_err(table_err)
    }
}
