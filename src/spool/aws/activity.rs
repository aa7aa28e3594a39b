//! Hourly activity (see [`crate::activity`]) and the reputation guard's state on DynamoDB.
//!
//! | item | pk | sk |
//! |---|---|---|
//! | one hour of one identity and class | `act` | `<hour, 16 digits>#<class>#<identity>` |
//! | the guard's state | `guard#reputation` | `guard` |
//!
//! An activity item holds `sends`, `deliveries`, `bounces` and `complaints`, changed with
//! `ADD` in the same transaction as the record write that causes them (so a write that loses
//! its race adds nothing). All activity sits in one partition, read with one Query from the
//! first hour a window needs: at most 192 hours × identities × 3 classes items. Its volume of
//! writes is one per send or report, well inside a partition's 1,000 writes a second at the
//! rates one SES account sends; a larger installation would shard the key by hour.

use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};

use super::items::{get_s, key, n, s, Item};
use super::{aws_error, AwsSpool};
use crate::activity::{self, ActivityRow, Counts, ACTIVITY_RETENTION_MS};
use crate::domain::{MessageClass, SubmissionRecord};
use crate::spool::SpoolError;

const ACTIVITY_PK: &str = "act";

fn activity_sk(hour_ms: u64, class: MessageClass, identity: &str) -> String {
    format!("{hour_ms:016}#{class}#{identity}")
}

fn signed(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// The `ADD`s that count what changed between `old` and `new`, for `new`'s transaction.
pub(super) fn activity_updates(
    table: &str,
    old: Option<&SubmissionRecord>,
    new: &SubmissionRecord,
) -> Result<Vec<TransactWriteItem>, SpoolError> {
    activity::delta(old, new)
        .into_iter()
        .map(|(hour, c)| {
            let sk = activity_sk(hour, new.job.message_class, &new.job.identity_id);
            let update = Update::builder()
                .table_name(table)
                .set_key(Some(key(ACTIVITY_PK.into(), &sk)))
                .update_expression(
                    "SET expires = :e ADD sends :s, deliveries :d, bounces :b, complaints :c",
                )
                .expression_attribute_values(":e", n((hour + ACTIVITY_RETENTION_MS) / 1000))
                .expression_attribute_values(":s", signed(c.sends))
                .expression_attribute_values(":d", signed(c.deliveries))
                .expression_attribute_values(":b", signed(c.bounces))
                .expression_attribute_values(":c", signed(c.complaints))
                .build()
                .map_err(SpoolError::storage)?;
            Ok(TransactWriteItem::builder().update(update).build())
        })
        .collect()
}

fn count(item: &Item, name: &str) -> u64 {
    // Never below zero, whatever a lost race left.
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .map_or(0, |v| v.max(0) as u64)
}

fn row(item: &Item) -> Option<ActivityRow> {
    let sk = get_s(item, "sk")?;
    let mut parts = sk.splitn(3, '#');
    let hour_ms = parts.next()?.parse().ok()?;
    let class = MessageClass::parse(parts.next()?)?;
    let identity_id = parts.next()?.to_string();
    Some(ActivityRow {
        hour_ms,
        identity_id,
        class,
        counts: Counts {
            sends: count(item, "sends"),
            deliveries: count(item, "deliveries"),
            bounces: count(item, "bounces"),
            complaints: count(item, "complaints"),
        },
    })
}

impl AwsSpool {
    /// Activity items whose sort key is at or after `from` (or before `below`), in order.
    async fn activity_items(
        &self,
        from: Option<String>,
        below: Option<String>,
    ) -> Result<Vec<Item>, SpoolError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut query = self
                .ddb
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .expression_attribute_values(":p", s(ACTIVITY_PK))
                .set_exclusive_start_key(start.take());
            query = match (&from, &below) {
                (Some(from), _) => query
                    .key_condition_expression("pk = :p AND sk >= :k")
                    .expression_attribute_values(":k", s(from.clone())),
                (None, Some(below)) => query
                    .key_condition_expression("pk = :p AND sk < :k")
                    .expression_attribute_values(":k", s(below.clone())),
                (None, None) => query.key_condition_expression("pk = :p"),
            };
            let page = query
                .send()
                .await
                .map_err(|e| aws_error("DynamoDB Query", e))?;
            out.extend(page.items.unwrap_or_default());
            start = page.last_evaluated_key;
            if start.is_none() {
                return Ok(out);
            }
        }
    }

    pub(super) async fn read_activity(
        &self,
        since_ms: u64,
    ) -> Result<Vec<ActivityRow>, SpoolError> {
        let from = format!("{since_ms:016}");
        Ok(self
            .activity_items(Some(from), None)
            .await?
            .iter()
            .filter_map(row)
            .collect())
    }

    /// Deletes hours older than [`ACTIVITY_RETENTION_MS`] (TTL is the backstop); how many.
    pub(super) async fn purge_activity(&self, now: u64) -> Result<u64, SpoolError> {
        let keep_from = activity::hour_of(now.saturating_sub(ACTIVITY_RETENTION_MS));
        let old = self
            .activity_items(None, Some(format!("{keep_from:016}")))
            .await?;
        let mut purged = 0;
        for item in old {
            let Some(sk) = get_s(&item, "sk") else {
                continue;
            };
            self.ddb
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(key(ACTIVITY_PK.into(), sk)))
                .send()
                .await
                .map_err(|e| aws_error("DynamoDB DeleteItem", e))?;
            purged += 1;
        }
        Ok(purged)
    }

    pub(super) async fn load_guard_state(&self) -> Result<Option<serde_json::Value>, SpoolError> {
        let out = self
            .ddb
            .get_item()
            .table_name(&self.table)
            .consistent_read(true)
            .set_key(Some(key("guard#reputation".into(), "guard")))
            .send()
            .await
            .map_err(|e| aws_error("DynamoDB GetItem", e))?;
        out.item
            .as_ref()
            .and_then(|item| get_s(item, "doc"))
            .map(|doc| serde_json::from_str(doc).map_err(SpoolError::storage))
            .transpose()
    }

    pub(super) async fn store_guard_state(
        &self,
        state: serde_json::Value,
    ) -> Result<(), SpoolError> {
        let mut item = key("guard#reputation".into(), "guard");
        item.insert("doc".into(), s(state.to_string()));
        item.insert("at".into(), n(self.clock.now_ms()));
        self.ddb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| aws_error("DynamoDB PutItem", e))?;
        Ok(())
    }
}
