//! The ledger's writes inside the writer's transaction: provider feedback (dedupe, outcomes,
//! derived states, suppressions), the suppression list, and retention.

use redb::{ReadableTable, ReadableTableMetadata, WriteTransaction};

use super::{table_err, Writer};
use crate::activity::{self, Counts, ACTIVITY_RETENTION_MS};
use crate::domain::{
    FeedbackApplied, FeedbackEvent, QueueId, State, SubmissionRecord, Suppression,
};
use crate::spool::redb::{
    decode, ACTIVITY, DEAD, FEED, FEEDBACK_SEEN, GUARD, PROVIDER_IDS, RECORDS, SUPPRESSIONS,
};
use crate::spool::rules::{self, Target};
use crate::spool::{Change, Purged, SpoolError, CHANGE_FEED_RETENTION_MS, FEEDBACK_DEDUPE_MS};

impl Writer {
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

    pub(super) fn purge(&mut self, txn: &WriteTransaction, now: u64) -> Result<Purged, SpoolError> {
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
        // Finished records past retention. A record cannot have finished before it was made,
        // and ids sort by when they were made: only ids older than the cutoff are candidates
        // (each pass reads what crossed the cutoff since the last one, and the few old records
        // still queued, held, dead or recently finished).
        let cutoff = now.saturating_sub(self.options.retention_ms);
        let made_before = u128::from(cutoff) << QueueId::RANDOM_BITS;
        let mut due = Vec::new();
        {
            let records = txn.open_table(RECORDS).map_err(table_err)?;
            for entry in records.range(..made_before).map_err(table_err)? {
                let record = decode(entry.map_err(table_err)?.1.value())?;
                if record.state.is_finished() && record.finished_ms.is_some_and(|f| f < cutoff) {
                    due.push(record);
                }
            }
        }
        for record in &due {
            self.forget(txn, record)?;
        }
        purged.finished = due.len() as u64;
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
        // Activity is keyed by hour first: drop whole old hours from the front.
        let keep_from = activity::hour_of(now.saturating_sub(ACTIVITY_RETENTION_MS));
        let mut rows = txn.open_table(ACTIVITY).map_err(table_err)?;
        for entry in rows
            .extract_from_if(..(keep_from, "", ""), |_, _| true)
            .map_err(table_err)?
        {
            entry.map_err(table_err)?;
            purged.activity += 1;
        }
        Ok(purged)
    }

    /// Applies provider feedback: per-recipient outcomes on the submission (precedence in
    /// [`SubmissionRecord::report`]), the derived submission state, and suppressions.
    pub(super) fn feedback(
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
            let id = match rules::event_target(&event) {
                Target::Id(id) => Some(id),
                Target::ProviderId(pid) => txn
                    .open_table(PROVIDER_IDS)
                    .map_err(table_err)?
                    .get(pid)
                    .map_err(table_err)?
                    .map(|v| QueueId(v.value())),
                Target::None => None,
            };
            let record = match id {
                Some(id) => self.load(txn, id)?,
                None => None,
            };
            let record = record.filter(|r| rules::event_matches(&event, r));
            let (account, class, recipients) = rules::event_scope(&event, record.as_ref());
            if let Some(mut record) = record {
                if rules::apply_event(&mut record, &event, &recipients, now) {
                    self.store(txn, &record)?;
                }
                applied.matched.push(record.job.id);
            } else {
                applied.unmatched += 1;
            }
            for entry in rules::event_suppressions(&event, &account, &class, &recipients, now) {
                suppress(txn, &entry, false)?;
                applied.suppressed.push(entry);
            }
        }
        Ok(applied)
    }
}

/// Removes and returns the entries of a (time, id) index older than `cutoff`.
pub(super) fn take_older(
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

pub(super) fn suppress(
    txn: &WriteTransaction,
    entry: &Suppression,
    remove: bool,
) -> Result<bool, SpoolError> {
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

/// Adds what changed between `old` and `new` to the hourly activity of `new`'s identity and
/// class (see [`activity::delta`]), in the transaction that writes `new`.
pub(super) fn count_activity(
    txn: &WriteTransaction,
    old: Option<&SubmissionRecord>,
    new: &SubmissionRecord,
) -> Result<(), SpoolError> {
    let changes = activity::delta(old, new);
    if changes.is_empty() {
        return Ok(());
    }
    let mut rows = txn.open_table(ACTIVITY).map_err(table_err)?;
    let (identity, class) = (new.job.identity_id.as_str(), new.job.message_class.as_str());
    for (hour, change) in changes {
        let key = (hour, identity, class);
        let mut counts = match rows.get(key).map_err(table_err)? {
            Some(v) => {
                let (sends, deliveries, bounces, complaints) = v.value();
                Counts {
                    sends,
                    deliveries,
                    bounces,
                    complaints,
                }
            }
            None => Counts::default(),
        };
        counts.apply(&change);
        rows.insert(
            key,
            (
                counts.sends,
                counts.deliveries,
                counts.bounces,
                counts.complaints,
            ),
        )
        .map_err(table_err)?;
    }
    Ok(())
}

/// Replaces the reputation guard's saved state.
pub(super) fn save_guard(txn: &WriteTransaction, state: &[u8]) -> Result<(), SpoolError> {
    txn.open_table(GUARD)
        .map_err(table_err)?
        .insert("reputation", state)
        .map_err(table_err)?;
    Ok(())
}
