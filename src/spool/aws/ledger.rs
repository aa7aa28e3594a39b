//! [`Ledger`] on DynamoDB: records, the provider id index, feedback applied once (a
//! transaction whose first item is the feedback message's id, written only if new), the
//! suppression list, and retention (the janitor's purge, with TTL as the backstop).

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{Put, TransactWriteItem};

use super::items::{
    self, decode_record, feedback_item, get_n, get_s, ms_key, provider_key, record_item,
    record_key, state_listings, suppression_item, Item, SHARDS,
};
use super::{aws_error, AwsSpool};
use crate::activity::ActivityRow;
use crate::domain::{
    FeedbackApplied, FeedbackEvent, QueueId, State, SubmissionRecord, Suppression,
};
use crate::spool::rules::{self, Target};
use crate::spool::{Changes, Fut, Ledger, Purged, SpoolError};

/// Feedback transactions retried when a record changed under them.
const MAX_FEEDBACK_RACES: usize = 10;

impl AwsSpool {
    pub(super) async fn put_provider_id(
        &self,
        provider_id: &str,
        id: QueueId,
        now: u64,
    ) -> Result<(), SpoolError> {
        let mut item = provider_key(provider_id);
        item.insert("id".into(), items::s(id.to_string()));
        // Outlives the record's own retention (the record's purge removes it earlier).
        item.insert(
            "expires".into(),
            items::n((now + self.options.retention_ms) / 1000 + 86_400),
        );
        self.ddb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| aws_error("DynamoDB PutItem", e))?;
        Ok(())
    }

    async fn get_item(&self, key: Item) -> Result<Option<Item>, SpoolError> {
        Ok(self
            .ddb
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| aws_error("DynamoDB GetItem", e))?
            .item)
    }

    async fn delete_item(
        &self,
        key: Item,
        condition: Option<(&str, Item)>,
    ) -> Result<bool, SpoolError> {
        let mut delete = self
            .ddb
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld);
        if let Some((expr, values)) = condition {
            delete = delete
                .condition_expression(expr)
                .set_expression_attribute_values(Some(values));
        }
        match delete.send().await {
            Ok(out) => Ok(out.attributes.is_some_and(|a| !a.is_empty())),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(aws_error("DynamoDB DeleteItem", e)),
        }
    }

    /// Removes a record (if it is still at version `ver`), its provider id item when that
    /// still names it, and its message bytes.
    async fn forget(&self, record: &SubmissionRecord, ver: u64) -> Result<bool, SpoolError> {
        let id = record.job.id;
        let values = HashMap::from([(":v".to_string(), items::n(ver))]);
        match super::feed::announcement(record, true, self.clock.now_ms()) {
            None => {
                if !self
                    .delete_item(record_key(id), Some(("ver = :v", values)))
                    .await?
                {
                    return Ok(false);
                }
            }
            // A JMAP submission: its removal is announced (JMAP forgets it too).
            Some(change) => {
                let delete = aws_sdk_dynamodb::types::Delete::builder()
                    .table_name(&self.table)
                    .set_key(Some(record_key(id)))
                    .condition_expression("ver = :v")
                    .set_expression_attribute_values(Some(values))
                    .build()
                    .map_err(SpoolError::storage)?;
                let mut writes = vec![TransactWriteItem::builder().delete(delete).build()];
                writes.extend(self.feed_writes(self.feed_head().await?, vec![change])?);
                let done = self
                    .ddb
                    .transact_write_items()
                    .set_transact_items(Some(writes))
                    .send()
                    .await;
                match done {
                    Ok(_) => {}
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|s| s.is_transaction_canceled_exception()) =>
                    {
                        // Changed meanwhile (or a concurrent feed write): the next pass.
                        return Ok(false);
                    }
                    Err(e) => return Err(aws_error("DynamoDB TransactWriteItems", e)),
                }
            }
        }
        if let Some(pid) = record.provider_id.as_deref().filter(|p| !p.is_empty()) {
            let values = HashMap::from([(":id".to_string(), items::s(id.to_string()))]);
            self.delete_item(provider_key(pid), Some(("id = :id", values)))
                .await?;
        }
        if rules::keeps_blob(record) {
            use crate::spool::Blobs;
            self.delete(id).await?;
        }
        Ok(true)
    }

    async fn records_of(
        &self,
        keys: Vec<(String, Item)>,
    ) -> Result<Vec<(SubmissionRecord, u64)>, SpoolError> {
        let keys = keys
            .into_iter()
            .filter_map(|(_, item)| {
                let pk = get_s(&item, "pk")?.to_string();
                let sk = get_s(&item, "sk")?.to_string();
                Some(items::key(pk, &sk))
            })
            .collect();
        self.get_items(keys)
            .await?
            .iter()
            .map(|item| Ok((decode_record(item)?, get_n(item, "ver").unwrap_or(0))))
            .collect()
    }

    /// One attempt at applying a feedback message; `None` if a record changed meanwhile.
    async fn try_feedback(
        &self,
        now: u64,
        message_id: &Option<String>,
        events: &[FeedbackEvent],
    ) -> Result<Option<FeedbackApplied>, SpoolError> {
        let mut applied = FeedbackApplied::default();
        let mut records: HashMap<QueueId, (SubmissionRecord, u64, bool)> = HashMap::new();
        // As loaded, for the activity counts (see `activity`).
        let mut before: HashMap<QueueId, SubmissionRecord> = HashMap::new();
        let mut suppressions: Vec<Suppression> = Vec::new();
        for event in events {
            let id = match rules::event_target(event) {
                Target::Id(id) => Some(id),
                Target::ProviderId(pid) => self
                    .get_item(provider_key(pid))
                    .await?
                    .and_then(|item| get_s(&item, "id")?.parse().ok()),
                Target::None => None,
            };
            if let Some(id) = id.filter(|id| !records.contains_key(id)) {
                if let Some((record, ver, _)) = self.load(id).await? {
                    before.insert(id, record.clone());
                    records.insert(id, (record, ver, false));
                }
            }
            let entry = id
                .and_then(|id| records.get_mut(&id))
                .filter(|(r, _, _)| rules::event_matches(event, r));
            let (account, class, recipients) =
                rules::event_scope(event, entry.as_ref().map(|(r, _, _)| r));
            match entry {
                Some((record, _, changed)) => {
                    *changed |= rules::apply_event(record, event, &recipients, now);
                    applied.matched.push(record.job.id);
                }
                None => applied.unmatched += 1,
            }
            for entry in rules::event_suppressions(event, &account, &class, &recipients, now) {
                suppressions.push(entry.clone());
                applied.suppressed.push(entry);
            }
        }
        let put = |item: Item,
                   condition: Option<(
            &str,
            Option<(&str, aws_sdk_dynamodb::types::AttributeValue)>,
        )>| {
            let mut put = Put::builder().table_name(&self.table).set_item(Some(item));
            if let Some((expr, value)) = condition {
                put = put.condition_expression(expr);
                if let Some((name, value)) = value {
                    put = put.expression_attribute_values(name, value);
                }
            }
            put.build()
                .map(|p| TransactWriteItem::builder().put(p).build())
                .map_err(SpoolError::storage)
        };
        let mut writes = Vec::new();
        if let Some(message_id) = message_id {
            writes.push(put(
                feedback_item(message_id, now),
                Some(("attribute_not_exists(pk)", None)),
            )?);
        }
        let op = self.random().await;
        let mut announced = Vec::new();
        for (record, ver, changed) in records.values() {
            if *changed {
                writes.push(put(
                    record_item(record, ver + 1, op, &self.options),
                    Some(("ver = :v", Some((":v", items::n(*ver))))),
                )?);
                writes.extend(super::activity::activity_updates(
                    &self.table,
                    before.get(&record.job.id),
                    record,
                )?);
                announced.extend(super::feed::announcement(record, false, now));
            }
        }
        if !announced.is_empty() {
            let head = self.feed_head().await?;
            writes.extend(self.feed_writes(head, announced)?);
        }
        for entry in &suppressions {
            writes.push(put(suppression_item(entry), None)?);
        }
        if writes.is_empty() {
            return Ok(Some(applied));
        }
        let sent = self
            .ddb
            .transact_write_items()
            .set_transact_items(Some(writes))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(Some(applied)),
            Err(e) => {
                let canceled = e
                    .as_service_error()
                    .is_some_and(|s| s.is_transaction_canceled_exception());
                if !canceled {
                    return Err(aws_error("DynamoDB TransactWriteItems", e));
                }
                // Seen before (the id item exists), or a record changed meanwhile: look.
                if let Some(message_id) = message_id {
                    if self
                        .get_item(items::feedback_key(message_id))
                        .await?
                        .is_some()
                    {
                        return Ok(Some(FeedbackApplied {
                            duplicate: true,
                            ..FeedbackApplied::default()
                        }));
                    }
                }
                Ok(None)
            }
        }
    }
}

impl Ledger for AwsSpool {
    fn get(&self, id: QueueId) -> Fut<'_, Option<SubmissionRecord>> {
        Box::pin(async move { Ok(self.load(id).await?.map(|(r, _, _)| r)) })
    }

    fn get_many(&self, ids: Vec<QueueId>) -> Fut<'_, Vec<SubmissionRecord>> {
        Box::pin(async move {
            let keys = ids.iter().map(|id| record_key(*id)).collect();
            self.get_items(keys)
                .await?
                .iter()
                .map(decode_record)
                .collect()
        })
    }

    fn in_state(&self, state: State, limit: usize) -> Fut<'_, Vec<SubmissionRecord>> {
        Box::pin(async move {
            let ids = self.ids_in(state, limit).await?;
            self.get_many(ids).await
        })
    }

    fn by_provider_id<'a>(&'a self, provider_id: &'a str) -> Fut<'a, Option<QueueId>> {
        Box::pin(async move {
            let Some(item) = self.get_item(provider_key(provider_id)).await? else {
                return Ok(None);
            };
            let id: Option<QueueId> = get_s(&item, "id").and_then(|t| t.parse().ok());
            // Only while the record it names is kept (retention removes both).
            match id {
                Some(id) if self.load(id).await?.is_some() => Ok(Some(id)),
                _ => Ok(None),
            }
        })
    }

    fn apply_feedback(
        &self,
        message_id: Option<String>,
        events: Vec<FeedbackEvent>,
    ) -> Fut<'_, FeedbackApplied> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            for _ in 0..MAX_FEEDBACK_RACES {
                if let Some(applied) = self.try_feedback(now, &message_id, &events).await? {
                    return Ok(applied);
                }
            }
            Err(SpoolError::Storage(
                "feedback: records kept changing; try again".into(),
            ))
        })
    }

    fn suppressed_among<'a>(
        &'a self,
        addresses: &'a [String],
        account: &'a str,
        class: &'a str,
    ) -> Fut<'a, Vec<(String, Suppression)>> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut keys = Vec::new();
            for original in addresses {
                let address = original.trim().to_lowercase();
                for (acct, scope) in Suppression::scopes(account, class) {
                    keys.push(items::key(
                        format!("sup#{address}"),
                        &format!("{acct} {scope}"),
                    ));
                }
            }
            let mut entries: HashMap<(String, String, String), Suppression> = HashMap::new();
            for item in self.get_items(keys).await? {
                let Some(json) = get_s(&item, "entry") else {
                    continue;
                };
                let entry: Suppression = serde_json::from_str(json).map_err(SpoolError::storage)?;
                entries.insert(
                    (
                        entry.address.clone(),
                        entry.account.clone(),
                        entry.class.clone(),
                    ),
                    entry,
                );
            }
            let mut found = Vec::new();
            'addresses: for original in addresses {
                let address = original.trim().to_lowercase();
                for (acct, scope) in Suppression::scopes(account, class) {
                    let key = (address.clone(), acct.to_string(), scope.to_string());
                    if let Some(entry) = entries.get(&key).filter(|e| e.active_at(now)) {
                        found.push((original.clone(), entry.clone()));
                        continue 'addresses;
                    }
                }
            }
            Ok(found)
        })
    }

    fn suppressions(&self) -> Fut<'_, Vec<Suppression>> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let lsts: Vec<String> = (0..SHARDS)
                .flat_map(|k| [format!("sup#{k}"), format!("supx#{k}")])
                .collect();
            let keys = self.list_keys(&lsts, None, usize::MAX).await?;
            let keys = keys
                .into_iter()
                .filter_map(|(_, item)| {
                    Some(items::key(
                        get_s(&item, "pk")?.to_string(),
                        get_s(&item, "sk")?,
                    ))
                })
                .collect();
            let mut out = Vec::new();
            for item in self.get_items(keys).await? {
                let Some(json) = get_s(&item, "entry") else {
                    continue;
                };
                let entry: Suppression = serde_json::from_str(json).map_err(SpoolError::storage)?;
                if entry.active_at(now) {
                    out.push(entry);
                }
            }
            Ok(out)
        })
    }

    fn suppress(&self, entry: Suppression) -> Fut<'_, ()> {
        Box::pin(async move {
            let entry = Suppression::new(
                &entry.address,
                &entry.account,
                &entry.class,
                entry.reason.clone(),
                entry.at_ms,
                entry.expires_ms,
            );
            self.ddb
                .put_item()
                .table_name(&self.table)
                .set_item(Some(suppression_item(&entry)))
                .send()
                .await
                .map_err(|e| aws_error("DynamoDB PutItem", e))?;
            Ok(())
        })
    }

    fn unsuppress(&self, address: String, account: String, class: String) -> Fut<'_, bool> {
        Box::pin(async move {
            let probe = Suppression::new(&address, &account, &class, String::new(), 0, None);
            let key = items::key(
                format!("sup#{}", probe.address),
                &format!("{} {}", probe.account, probe.class),
            );
            self.delete_item(key, None).await
        })
    }

    /// JMAP submissions' changes (see [`super::feed`]).
    fn changes(&self, cursor: u64, max: usize) -> Fut<'_, Changes> {
        Box::pin(self.feed_page(cursor, max))
    }

    fn wait_for_changes(
        &self,
        cursor: u64,
        wait: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(self.feed_wait(cursor, wait))
    }

    fn activity(&self, since_ms: u64) -> Fut<'_, Vec<ActivityRow>> {
        Box::pin(self.read_activity(since_ms))
    }

    fn guard_state(&self) -> Fut<'_, Option<serde_json::Value>> {
        Box::pin(self.load_guard_state())
    }

    fn save_guard_state(&self, state: serde_json::Value) -> Fut<'_, ()> {
        Box::pin(self.store_guard_state(state))
    }

    fn purge(&self) -> Fut<'_, Purged> {
        Box::pin(async move {
            let now = self.clock.now_ms();
            let mut purged = Purged::default();
            let folded = self.fold_dead_letters().await?;
            if folded > 0 {
                tracing::warn!(folded, "messages moved to the SQS dead-letter queue by its redrive policy are dead letters now");
            }
            // Dead letters past their retention (with their bytes).
            let cutoff = now.saturating_sub(self.options.dead_letter_retention_ms);
            let dead = self
                .list_keys(
                    &state_listings(State::Dead),
                    Some(ms_key(cutoff)),
                    usize::MAX,
                )
                .await?;
            for (record, ver) in self.records_of(dead).await? {
                if record.state == State::Dead && self.forget(&record, ver).await? {
                    purged.dead += 1;
                }
            }
            // Finished records past retention: only ids made before the cutoff can be (see the
            // embedded backend); TTL removes what a missed pass leaves.
            let cutoff = now.saturating_sub(self.options.retention_ms);
            let made_before = QueueId(u128::from(cutoff) << QueueId::RANDOM_BITS).to_string();
            for state in [
                State::Sent,
                State::Delivered,
                State::Bounced,
                State::Complained,
                State::Failed,
            ] {
                let old = self
                    .list_keys(
                        &state_listings(state),
                        Some(made_before.clone()),
                        usize::MAX,
                    )
                    .await?;
                for (record, ver) in self.records_of(old).await? {
                    if record.state.is_finished()
                        && record.finished_ms.is_some_and(|f| f < cutoff)
                        && self.forget(&record, ver).await?
                    {
                        purged.finished += 1;
                    }
                }
            }
            // Expired suppressions (feedback ids and provider ids expire by TTL).
            let lsts: Vec<String> = (0..SHARDS).map(|k| format!("supx#{k}")).collect();
            for (_, item) in self
                .list_keys(&lsts, Some(ms_key(now + 1)), usize::MAX)
                .await?
            {
                let (Some(pk), Some(sk)) = (get_s(&item, "pk"), get_s(&item, "sk")) else {
                    continue;
                };
                if self
                    .delete_item(items::key(pk.to_string(), sk), None)
                    .await?
                {
                    purged.suppressions += 1;
                }
            }
            purged.changes = self.feed_purge(now).await?;
            purged.activity = self.purge_activity(now).await?;
            Ok(purged)
        })
    }
}
