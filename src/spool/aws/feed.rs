//! The change feed on DynamoDB: one ordered sequence that every node reads.
//!
//! A counter item (`feed`/`seq`) and one entry item per change (`feed`/`e#<seq>`), written in
//! the same transaction as the record they announce, the counter conditioned on its old value.
//! So sequence numbers are contiguous and committed in order: a reader that has seen `n`
//! never later finds a new entry below `n`, and a gap after its cursor can only mean
//! retention dropped entries (`truncated`). Only JMAP submissions are announced — the feed's
//! readers are JMAP's state and push — because the sequence is one DynamoDB partition (about
//! 500 announced changes a second across all nodes); SMTP and sendmail mail never touches it.

use std::time::Duration;

use aws_sdk_dynamodb::types::{Put, TransactWriteItem, Update};

use super::items::{self, get_n, get_s, Item};
use super::{aws_error, AwsSpool};
use crate::domain::SubmissionRecord;
use crate::spool::{Change, Changes, SpoolError, CHANGE_FEED_RETENTION_MS};

const FEED: &str = "feed";
/// How often a waiting reader looks at the counter.
const POLL: Duration = Duration::from_millis(250);

fn entry_sk(seq: u64) -> String {
    format!("e#{seq:020}")
}

/// The change a write of `record` announces, if any.
pub(super) fn announcement(record: &SubmissionRecord, purged: bool, now: u64) -> Option<Change> {
    record.jmap.as_ref().map(|_| Change {
        seq: 0,
        id: record.job.id,
        account_id: record.job.account_id.clone(),
        jmap: true,
        purged,
        at_ms: now,
    })
}

impl AwsSpool {
    /// The last sequence number committed.
    pub(super) async fn feed_head(&self) -> Result<u64, SpoolError> {
        let out = self
            .ddb
            .get_item()
            .table_name(&self.table)
            .set_key(Some(items::key(FEED.into(), "seq")))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| aws_error("DynamoDB GetItem (feed)", e))?;
        Ok(out.item.as_ref().and_then(|i| get_n(i, "seq")).unwrap_or(0))
    }

    /// The transaction items that append `changes` after `head`: the counter moved on only if
    /// it is still at `head`, and one entry each.
    pub(super) fn feed_writes(
        &self,
        head: u64,
        changes: Vec<Change>,
    ) -> Result<Vec<TransactWriteItem>, SpoolError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let mut update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(items::key(FEED.into(), "seq")))
            .update_expression("SET seq = :new")
            .expression_attribute_values(":new", items::n(head + changes.len() as u64));
        update = if head == 0 {
            update.condition_expression("attribute_not_exists(seq)")
        } else {
            update
                .condition_expression("seq = :old")
                .expression_attribute_values(":old", items::n(head))
        };
        let mut writes = vec![TransactWriteItem::builder()
            .update(update.build().map_err(SpoolError::storage)?)
            .build()];
        for (k, mut change) in changes.into_iter().enumerate() {
            change.seq = head + 1 + k as u64;
            let mut item: Item = items::key(FEED.into(), &entry_sk(change.seq));
            item.insert("at".into(), items::n(change.at_ms));
            item.insert(
                "expires".into(),
                items::n((change.at_ms + CHANGE_FEED_RETENTION_MS) / 1000 + 1),
            );
            item.insert(
                "c".into(),
                items::s(serde_json::to_string(&change).map_err(SpoolError::storage)?),
            );
            let put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(item))
                .build()
                .map_err(SpoolError::storage)?;
            writes.push(TransactWriteItem::builder().put(put).build());
        }
        Ok(writes)
    }

    pub(super) async fn feed_page(&self, cursor: u64, max: usize) -> Result<Changes, SpoolError> {
        let out = self
            .ddb
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :p AND sk BETWEEN :from AND :to")
            .expression_attribute_values(":p", items::s(FEED))
            .expression_attribute_values(":from", items::s(entry_sk(cursor + 1)))
            .expression_attribute_values(":to", items::s("e#~"))
            .consistent_read(true)
            .limit(max.clamp(1, 1000) as i32)
            .send()
            .await
            .map_err(|e| aws_error("DynamoDB Query (feed)", e))?;
        let mut changes = Vec::new();
        for item in out.items.unwrap_or_default() {
            let Some(json) = get_s(&item, "c") else {
                continue;
            };
            changes.push(serde_json::from_str::<Change>(json).map_err(SpoolError::storage)?);
        }
        // Sequence numbers are contiguous: a gap after the cursor is what retention dropped.
        let (next, truncated) = match changes.first() {
            Some(first) => (
                changes.last().map_or(cursor, |c| c.seq),
                first.seq > cursor + 1,
            ),
            None => {
                let head = self.feed_head().await?;
                (head.max(cursor), head > cursor)
            }
        };
        Ok(Changes {
            changes,
            next,
            truncated,
        })
    }

    pub(super) async fn feed_wait(&self, cursor: u64, wait: Duration) {
        let until = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < until {
            match self.feed_head().await {
                Ok(head) if head > cursor => return,
                _ => tokio::time::sleep(POLL.min(wait)).await,
            }
        }
    }

    /// Drops entries older than the feed keeps (oldest first); how many.
    pub(super) async fn feed_purge(&self, now: u64) -> Result<u64, SpoolError> {
        let keep_from = now.saturating_sub(CHANGE_FEED_RETENTION_MS);
        let mut dropped = 0;
        loop {
            let out = self
                .ddb
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :p AND begins_with(sk, :e)")
                .expression_attribute_values(":p", items::s(FEED))
                .expression_attribute_values(":e", items::s("e#"))
                .consistent_read(true)
                .limit(100)
                .send()
                .await
                .map_err(|e| aws_error("DynamoDB Query (feed)", e))?;
            let page = out.items.unwrap_or_default();
            let mut old = 0;
            for item in &page {
                if get_n(item, "at").unwrap_or(0) >= keep_from {
                    return Ok(dropped);
                }
                let sk = get_s(item, "sk").unwrap_or_default().to_string();
                self.ddb
                    .delete_item()
                    .table_name(&self.table)
                    .set_key(Some(items::key(FEED.into(), &sk)))
                    .send()
                    .await
                    .map_err(|e| aws_error("DynamoDB DeleteItem (feed)", e))?;
                dropped += 1;
                old += 1;
            }
            if old == 0 || page.len() < 100 {
                return Ok(dropped);
            }
        }
    }
}
