//! The DynamoDB table's items (one table, keys `pk` and `sk`, a sparse key-only index
//! `listing` on `lst`/`lsk`, TTL on `expires`):
//!
//! | item | pk | sk | listing (lst / lsk) |
//! |---|---|---|---|
//! | submission record | `sub#<id>` | `rec` | `<state>#<shard>` / id, dead: `<dead since>#<id>` |
//! | provider id | `pid#<SES message id>` | `pid` | — |
//! | feedback message seen | `fb#<SNS message id>` | `fb` | — |
//! | suppression | `sup#<address>` | `<account> <class>` | `sup#<shard>` or `supx#<shard>` / address or expiry |
//! | activity, guard state | see [`super::activity`] | | — |
//!
//! A record item holds the JSON record (`rec`), a version (`ver`) every write is conditioned
//! on, and the nonce of the write that made it (`op`), so a write whose answer was lost is
//! recognised when it is retried. Listing keys are spread over [`SHARDS`] partitions so no
//! single index partition takes every write.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use super::AwsSpool;
use crate::domain::{QueueId, State, SubmissionRecord, Suppression};
use crate::spool::{rules, SpoolError, FEEDBACK_DEDUPE_MS};

pub(super) type Item = HashMap<String, AttributeValue>;

/// Partitions of each listing: every record write that changes state writes the index, and
/// one index partition takes about 1,000 writes a second, so a state's listing is spread over
/// this many (enough for ~30,000 state changes a second; a listing reads them all).
pub(super) const SHARDS: u64 = 64;
pub(super) const LISTING: &str = "listing";
/// Mutations retried on a lost race before giving up.
const MAX_RACES: usize = 20;

pub(super) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(super) fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(super) fn get_s<'a>(item: &'a Item, key: &str) -> Option<&'a str> {
    item.get(key)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

pub(super) fn get_n(item: &Item, key: &str) -> Option<u64> {
    item.get(key)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

pub(super) fn key(pk: String, sk: &str) -> Item {
    HashMap::from([("pk".to_string(), s(pk)), ("sk".to_string(), s(sk))])
}

pub(super) fn record_key(id: QueueId) -> Item {
    key(format!("sub#{id}"), "rec")
}

pub(super) fn provider_key(provider_id: &str) -> Item {
    key(format!("pid#{provider_id}"), "pid")
}

pub(super) fn feedback_key(message_id: &str) -> Item {
    key(format!("fb#{message_id}"), "fb")
}

fn shard_of(text: &str) -> u64 {
    // FNV-1a: stable across builds and machines (every node must agree).
    text.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    }) % SHARDS
}

/// Zero-padded milliseconds, so they sort as text.
pub(super) fn ms_key(ms: u64) -> String {
    format!("{ms:015}")
}

pub(super) fn state_name(state: State) -> &'static str {
    match state {
        State::Queued => "queued",
        State::Held => "held",
        State::Sent => "sent",
        State::Failed => "failed",
        State::Dead => "dead",
        State::Delivered => "delivered",
        State::Bounced => "bounced",
        State::Complained => "complained",
    }
}

/// The listing partitions of records in `state`.
pub(super) fn state_listings(state: State) -> Vec<String> {
    (0..SHARDS)
        .map(|k| format!("{}#{k}", state_name(state)))
        .collect()
}

/// Seconds since the epoch for DynamoDB's TTL.
fn ttl(ms: u64) -> AttributeValue {
    n(ms / 1000 + 1)
}

/// The item of `record` at version `ver`, written by the operation `op`.
pub(super) fn record_item(
    record: &SubmissionRecord,
    ver: u64,
    op: u64,
    options: &crate::spool::SpoolOptions,
) -> Item {
    let id = record.job.id.to_string();
    let mut item = record_key(record.job.id);
    item.insert(
        "rec".into(),
        s(serde_json::to_string(record).unwrap_or_default()),
    );
    item.insert("ver".into(), n(ver));
    item.insert("op".into(), n(op));
    item.insert("state".into(), s(state_name(record.state)));
    item.insert(
        "lst".into(),
        s(format!("{}#{}", state_name(record.state), shard_of(&id))),
    );
    let lsk = match rules::dead_since(record) {
        Some(since) => format!("{}#{id}", ms_key(since)),
        None => id,
    };
    item.insert("lsk".into(), s(lsk));
    // TTL as a backstop to the janitor's purge (DynamoDB deletes within days of expiry).
    if let Some(finished) = record.finished_ms {
        item.insert("expires".into(), ttl(finished + options.retention_ms));
    }
    item
}

pub(super) fn decode_record(item: &Item) -> Result<SubmissionRecord, SpoolError> {
    let json = get_s(item, "rec").ok_or_else(|| SpoolError::storage("record item without rec"))?;
    serde_json::from_str(json).map_err(SpoolError::storage)
}

pub(super) fn suppression_item(entry: &Suppression) -> Item {
    let mut item = key(
        format!("sup#{}", entry.address),
        &format!("{} {}", entry.account, entry.class),
    );
    item.insert(
        "entry".into(),
        s(serde_json::to_string(entry).unwrap_or_default()),
    );
    let shard = shard_of(&entry.address);
    match entry.expires_ms {
        Some(expires) => {
            item.insert("lst".into(), s(format!("supx#{shard}")));
            item.insert(
                "lsk".into(),
                s(format!("{}#{}", ms_key(expires), entry.address)),
            );
            item.insert("expires".into(), ttl(expires));
        }
        None => {
            item.insert("lst".into(), s(format!("sup#{shard}")));
            item.insert("lsk".into(), s(entry.address.clone()));
        }
    }
    item
}

pub(super) fn feedback_item(message_id: &str, now: u64) -> Item {
    let mut item = feedback_key(message_id);
    item.insert("at".into(), n(now));
    item.insert("expires".into(), ttl(now + FEEDBACK_DEDUPE_MS));
    item
}

/// What a mutation decided, given the record as it is.
#[allow(clippy::large_enum_variant)]
pub(super) enum Change<T> {
    /// Write this record.
    Write(SubmissionRecord, T),
    /// Leave it as it is.
    Keep(T),
}

impl AwsSpool {
    /// The record and its version, read consistently.
    pub(super) async fn load(
        &self,
        id: QueueId,
    ) -> Result<Option<(SubmissionRecord, u64, u64)>, SpoolError> {
        let out = self
            .ddb
            .get_item()
            .table_name(&self.table)
            .set_key(Some(record_key(id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| super::aws_error("DynamoDB GetItem", e))?;
        match out.item {
            Some(item) => Ok(Some((
                decode_record(&item)?,
                get_n(&item, "ver").unwrap_or(0),
                get_n(&item, "op").unwrap_or(0),
            ))),
            None => Ok(None),
        }
    }

    /// Reads the record, lets `decide` change it, and writes it back only if nobody wrote it
    /// meanwhile (optimistic concurrency on `ver`); on a lost race, again from the read. A
    /// write whose answer was lost and which the SDK retried is recognised by its nonce.
    pub(super) async fn mutate<T: Clone>(
        &self,
        id: QueueId,
        announce: bool,
        decide: impl FnMut(Option<SubmissionRecord>) -> Result<Change<T>, SpoolError>,
    ) -> Result<T, SpoolError> {
        self.mutate_from(id, announce, false, decide).await
    }

    /// Writes a new record: no read first (the write is conditioned on there being none, and
    /// a record that is there after all is read and shown to `decide`). One read less per
    /// accepted message.
    pub(super) async fn create(
        &self,
        record: SubmissionRecord,
        announce: bool,
    ) -> Result<(), SpoolError> {
        let id = record.job.id;
        self.mutate_from(id, announce, true, |existing| match existing {
            Some(_) => Err(SpoolError::Storage(format!("{id} is queued already"))),
            None => Ok(Change::Write(record.clone(), ())),
        })
        .await
    }

    async fn mutate_from<T: Clone>(
        &self,
        id: QueueId,
        announce: bool,
        assume_absent: bool,
        mut decide: impl FnMut(Option<SubmissionRecord>) -> Result<Change<T>, SpoolError>,
    ) -> Result<T, SpoolError> {
        let op = self.random().await;
        let mut written: Option<T> = None;
        for attempt in 0..MAX_RACES {
            let loaded = if attempt == 0 && assume_absent {
                None
            } else {
                self.load(id).await?
            };
            if let (Some(done), Some((_, _, last_op))) = (&written, &loaded) {
                if *last_op == op {
                    return Ok(done.clone());
                }
            }
            let ver = loaded.as_ref().map_or(0, |(_, v, _)| *v);
            // Only a record with a provider id counts toward activity: no clone otherwise.
            let old = loaded
                .as_ref()
                .and_then(|(r, _, _)| r.provider_id.is_some().then(|| r.clone()));
            let (record, answer) = match decide(loaded.map(|(r, _, _)| r))? {
                Change::Keep(answer) => return Ok(answer),
                Change::Write(record, answer) => (record, answer),
            };
            let item = record_item(&record, ver + 1, op, &self.options);
            let condition = if ver == 0 {
                ("attribute_not_exists(pk)", None)
            } else {
                ("ver = :v", Some(n(ver)))
            };
            let announced = announce
                .then(|| super::feed::announcement(&record, false, self.clock.now_ms()))
                .flatten();
            let counted = super::activity::activity_updates(&self.table, old.as_ref(), &record)?;
            let done = match (announced, counted.is_empty()) {
                (None, true) => None,
                (announced, _) => Some(announced),
            };
            let done = match done {
                // A JMAP submission, or a change the activity counts: the record, its feed
                // entry and the counts in one transaction.
                Some(announced) => {
                    let head = match announced {
                        Some(_) => Some(self.feed_head().await?),
                        None => None,
                    };
                    let mut put = aws_sdk_dynamodb::types::Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(item))
                        .condition_expression(condition.0);
                    if let Some(v) = condition.1 {
                        put = put.expression_attribute_values(":v", v);
                    }
                    let mut writes = vec![aws_sdk_dynamodb::types::TransactWriteItem::builder()
                        .put(put.build().map_err(SpoolError::storage)?)
                        .build()];
                    if let (Some(head), Some(change)) = (head, announced) {
                        writes.extend(self.feed_writes(head, vec![change])?);
                    }
                    writes.extend(counted);
                    match self
                        .ddb
                        .transact_write_items()
                        .set_transact_items(Some(writes))
                        // Idempotent if the SDK repeats the call.
                        .client_request_token(format!("{op:016x}-{attempt}"))
                        .send()
                        .await
                    {
                        Ok(_) => true,
                        Err(e)
                            if e.as_service_error()
                                .is_some_and(|s| s.is_transaction_canceled_exception()) =>
                        {
                            false
                        }
                        Err(e) => return Err(super::aws_error("DynamoDB TransactWriteItems", e)),
                    }
                }
                None => {
                    let mut put = self
                        .ddb
                        .put_item()
                        .table_name(&self.table)
                        .set_item(Some(item))
                        .condition_expression(condition.0);
                    if let Some(v) = condition.1 {
                        put = put.expression_attribute_values(":v", v);
                    }
                    match put.send().await {
                        Ok(_) => true,
                        Err(e)
                            if e.as_service_error()
                                .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
                        {
                            false
                        }
                        Err(e) => return Err(super::aws_error("DynamoDB PutItem", e)),
                    }
                }
            };
            if done {
                return Ok(answer);
            }
            written = Some(answer);
        }
        Err(SpoolError::Storage(format!(
            "record {id}: too many concurrent writers"
        )))
    }

    /// Keys (`pk`, `sk`) in listing partitions `lsts`, each read in `lsk` order up to
    /// `below` (exclusive), merged and cut at `limit`.
    pub(super) async fn list_keys(
        &self,
        lsts: &[String],
        below: Option<String>,
        limit: usize,
    ) -> Result<Vec<(String, Item)>, SpoolError> {
        let mut found: Vec<(String, Item)> = Vec::new();
        for lst in lsts {
            let mut start: Option<Item> = None;
            let mut taken = 0usize;
            loop {
                let mut query = self
                    .ddb
                    .query()
                    .table_name(&self.table)
                    .index_name(LISTING)
                    .expression_attribute_values(":l", s(lst.clone()))
                    .set_exclusive_start_key(start.take())
                    .limit(limit.clamp(1, 1000) as i32);
                query = match &below {
                    Some(below) => query
                        .key_condition_expression("lst = :l AND lsk < :b")
                        .expression_attribute_values(":b", s(below.clone())),
                    None => query.key_condition_expression("lst = :l"),
                };
                let out = query
                    .send()
                    .await
                    .map_err(|e| super::aws_error("DynamoDB Query", e))?;
                for item in out.items.unwrap_or_default() {
                    let lsk = get_s(&item, "lsk").unwrap_or_default().to_string();
                    found.push((lsk, item));
                    taken += 1;
                }
                start = out.last_evaluated_key;
                if start.is_none() || taken >= limit {
                    break;
                }
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found.truncate(limit);
        Ok(found)
    }

    /// Items by key, consistently, in the order asked (missing ones left out).
    pub(super) async fn get_items(&self, keys: Vec<Item>) -> Result<Vec<Item>, SpoolError> {
        use aws_sdk_dynamodb::types::KeysAndAttributes;
        let mut by_key: HashMap<(String, String), Item> = HashMap::new();
        let pair = |item: &Item| {
            (
                get_s(item, "pk").unwrap_or_default().to_string(),
                get_s(item, "sk").unwrap_or_default().to_string(),
            )
        };
        for chunk in keys.chunks(100) {
            let mut pending = Some(
                KeysAndAttributes::builder()
                    .set_keys(Some(chunk.to_vec()))
                    .consistent_read(true)
                    .build()
                    .map_err(SpoolError::storage)?,
            );
            while let Some(request) = pending.take() {
                let out = self
                    .ddb
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .send()
                    .await
                    .map_err(|e| super::aws_error("DynamoDB BatchGetItem", e))?;
                for item in out
                    .responses
                    .and_then(|mut r| r.remove(&self.table))
                    .unwrap_or_default()
                {
                    by_key.insert(pair(&item), item);
                }
                pending = out
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(&self.table))
                    .filter(|k| !k.keys.is_empty());
            }
        }
        Ok(keys
            .iter()
            .filter_map(|k| by_key.remove(&pair(k)))
            .collect())
    }
}
