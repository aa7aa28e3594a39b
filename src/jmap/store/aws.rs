//! The JMAP store every node shares, on the AWS spool's DynamoDB table and S3 bucket, so any
//! node serves any client: objects, states, change logs, counters and the submission index as
//! DynamoDB items (keys below, beside the spool's own), blobs (uploads, Email MIME) as S3
//! objects under `jmap/`.
//!
//! | item | pk | sk |
//! |---|---|---|
//! | object | `jo#<account>␟<table>` | id (`v`: JSON, `ver`: version tag) |
//! | state | `js` | `<account>␟<type>` (`n`) |
//! | change log entry | `jc#<account>␟<type>` | state, zero-padded |
//! | submission index | `jq` | queue id |
//! | counter | `jn` | name (`n`) |
//!
//! A write is optimistic: reads inside it are consistent and remembered with the version tag
//! they saw; the commit is one DynamoDB transaction whose writes (and reads) are conditioned
//! on those tags, and which moves each touched state on. If another node got there first the
//! transaction is cancelled and the closure runs again on fresh reads. All states live in one
//! partition, so a node reads every account's states in one query: that is how EventSource
//! clients on one node hear of changes made on another (a poll every second while anyone
//! listens). Blob bytes go to S3 as they are written (blob ids are never reused; a write that
//! fails leaves an object nothing points at, removed by the bucket's lifecycle rule).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{anyhow, Result};
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Delete, Put, TransactWriteItem};
use aws_sdk_s3::primitives::ByteStream;
use tokio::sync::{broadcast, watch};

use super::redb::NewStates;
use super::{state_string, storage, ChangeLog, RxOps, StateChange, Tx, TxOps, CHANGE_LOG_KEEP};

type Item = HashMap<String, AttributeValue>;
type Key = (String, String);

/// Transactions retried when another writer changed what they read (with a growing, random
/// pause between tries).
const MAX_RACES: usize = 40;
/// DynamoDB's limit of items in one transaction.
const MAX_ITEMS: usize = 100;
/// How often a node looks for states other nodes moved on (while anyone listens).
const WATCH_EVERY: Duration = Duration::from_secs(1);
const SEP: char = '\u{1f}';

#[derive(Clone)]
pub struct AwsStore {
    ddb: aws_sdk_dynamodb::Client,
    s3: aws_sdk_s3::Client,
    table: String,
    bucket: String,
}

/// Runs an AWS call from synchronous store code (the runtime moves its other tasks on).
fn block<F: std::future::Future>(future: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn key_item((pk, sk): &Key) -> Item {
    HashMap::from([
        ("pk".to_string(), s(pk.clone())),
        ("sk".to_string(), s(sk.clone())),
    ])
}

fn get_n(item: &Item, name: &str) -> Option<u64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)?.as_s().ok().map(String::as_str)
}

fn object_key(account: &str, table: &str, id: &str) -> Key {
    (format!("jo#{account}{SEP}{table}"), id.to_string())
}

fn state_key(account: &str, ty: &str) -> Key {
    ("js".into(), format!("{account}{SEP}{ty}"))
}

fn change_pk(account: &str, ty: &str) -> String {
    format!("jc#{account}{SEP}{ty}")
}

fn change_sk(state: u64) -> String {
    format!("{state:020}")
}

fn queue_key(queue_id: u128) -> Key {
    ("jq".into(), format!("{queue_id:039}"))
}

fn counter_key(name: &str) -> Key {
    ("jn".into(), name.to_string())
}

fn aws(what: &str, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("jmap store: {what}: {e}")
}

impl AwsStore {
    pub fn new(
        ddb: aws_sdk_dynamodb::Client,
        s3: aws_sdk_s3::Client,
        table: String,
        bucket: String,
    ) -> AwsStore {
        AwsStore {
            ddb,
            s3,
            table,
            bucket,
        }
    }

    fn blob_key(&self, account: &str, blob_id: &str) -> String {
        format!("jmap/{account}/{blob_id}")
    }

    async fn get_item(&self, key: &Key) -> Result<Option<Item>> {
        let out = self
            .ddb
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_item(key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| aws("GetItem", aws_sdk_dynamodb::error::DisplayErrorContext(e)))?;
        Ok(out.item)
    }

    /// Every item of partition `pk` whose sort key is after `after`, in order.
    async fn query(&self, pk: &str, after: Option<String>) -> Result<Vec<Item>> {
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let mut query = self
                .ddb
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .expression_attribute_values(":p", s(pk))
                .set_exclusive_start_key(start.take());
            query = match &after {
                Some(after) => query
                    .key_condition_expression("pk = :p AND sk > :a")
                    .expression_attribute_values(":a", s(after.clone())),
                None => query.key_condition_expression("pk = :p"),
            };
            let page = query
                .send()
                .await
                .map_err(|e| aws("Query", aws_sdk_dynamodb::error::DisplayErrorContext(e)))?;
            out.extend(page.items.unwrap_or_default());
            start = page.last_evaluated_key;
            if start.is_none() {
                return Ok(out);
            }
        }
    }

    async fn get_blob(&self, account: &str, blob_id: &str) -> Result<Option<Vec<u8>>> {
        let got = self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(self.blob_key(account, blob_id))
            .send()
            .await;
        match got {
            Ok(out) => Ok(Some(
                out.body
                    .collect()
                    .await
                    .map_err(|e| aws("S3 GET body", e))?
                    .into_bytes()
                    .to_vec(),
            )),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(aws("S3 GET", aws_sdk_s3::error::DisplayErrorContext(e))),
        }
    }

    pub(super) fn write<R>(
        &self,
        mut f: impl FnMut(&mut Tx) -> Result<R>,
    ) -> Result<(R, NewStates)> {
        for attempt in 0..MAX_RACES {
            if attempt > 0 {
                // Writers that collided should not collide again in lockstep (this runs
                // outside the runtime's workers: see Store::write).
                let ms = rand::random::<u64>() % (5 * attempt as u64 + 5);
                std::thread::sleep(Duration::from_millis(ms));
            }
            let mut ops = AwsTx {
                store: self,
                seen: RefCell::new(HashMap::new()),
                writes: BTreeMap::new(),
                blobs: HashMap::new(),
                removed_blobs: Vec::new(),
            };
            let mut tx = Tx::new(&mut ops);
            let out = f(&mut tx)?;
            let touched = tx.into_touched();
            if let Some(states) = ops.commit(touched)? {
                for (account, blob_id) in &ops.removed_blobs {
                    let _ = block(
                        self.s3
                            .delete_object()
                            .bucket(&self.bucket)
                            .key(self.blob_key(account, blob_id))
                            .send(),
                    );
                }
                return Ok((out, states));
            }
        }
        Err(anyhow!(
            "jmap store: too many concurrent writers; try again"
        ))
    }

    pub(super) fn read(&self) -> AwsRx {
        AwsRx {
            store: self.clone(),
        }
    }

    /// Runs until `stop`: broadcasts the states other nodes moved on to this node's listeners.
    pub async fn watch(
        self,
        push: broadcast::Sender<StateChange>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut last: HashMap<String, u64> = HashMap::new();
        let mut first = true;
        loop {
            if first || push.receiver_count() > 0 {
                match self.query("js", None).await {
                    Ok(items) => {
                        let mut changed: BTreeMap<String, BTreeMap<String, String>> =
                            BTreeMap::new();
                        for item in items {
                            let (Some(sk), Some(state)) = (get_s(&item, "sk"), get_n(&item, "n"))
                            else {
                                continue;
                            };
                            if last.get(sk) != Some(&state) {
                                last.insert(sk.to_string(), state);
                                if let (false, Some((account, ty))) = (first, sk.split_once(SEP)) {
                                    changed
                                        .entry(account.to_string())
                                        .or_default()
                                        .insert(ty.to_string(), state_string(state));
                                }
                            }
                        }
                        for (account, changed) in changed {
                            let _ = push.send(StateChange { account, changed });
                        }
                        first = false;
                    }
                    Err(e) => tracing::debug!(error = %e, "reading JMAP states failed"),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(WATCH_EVERY) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

enum Write {
    Put(Item),
    Delete,
}

struct AwsTx<'a> {
    store: &'a AwsStore,
    /// Version tag each key had when first read (`None`: absent); reads through `&self`
    /// record it too.
    seen: RefCell<HashMap<Key, Option<String>>>,
    writes: BTreeMap<Key, Write>,
    /// Blobs written by this transaction (already in S3), for reading back.
    blobs: HashMap<(String, String), Vec<u8>>,
    removed_blobs: Vec<(String, String)>,
}

impl AwsTx<'_> {
    /// The item as this transaction sees it (its own writes first), remembering the version
    /// it had.
    fn read(&self, key: &Key) -> Result<Option<Item>> {
        match self.writes.get(key) {
            Some(Write::Put(item)) => return Ok(Some(item.clone())),
            Some(Write::Delete) => return Ok(None),
            None => {}
        }
        let item = block(self.store.get_item(key))?;
        self.seen
            .borrow_mut()
            .entry(key.clone())
            .or_insert_with(|| {
                item.as_ref()
                    .and_then(|i| get_s(i, "ver"))
                    .map(str::to_string)
            });
        Ok(item)
    }

    fn put(&mut self, key: Key, mut item: Item) {
        item.extend(key_item(&key));
        self.writes.insert(key, Write::Put(item));
    }

    /// One transaction: every write and read conditioned on what was seen, each touched state
    /// moved on. `None` when another writer got there first.
    fn commit(&mut self, touched: super::Touched) -> Result<Option<NewStates>> {
        let mut states = Vec::new();
        for ((account, ty), entries) in touched {
            let key = state_key(&account, ty);
            let next = self.read(&key)?.and_then(|i| get_n(&i, "n")).unwrap_or(0) + 1;
            self.put(key, HashMap::from([("n".to_string(), n(next))]));
            let json = serde_json::to_string(&entries)?;
            let pk = change_pk(&account, ty);
            self.put(
                (pk.clone(), change_sk(next)),
                HashMap::from([("v".to_string(), s(json))]),
            );
            if next > CHANGE_LOG_KEEP {
                self.writes
                    .insert((pk, change_sk(next - CHANGE_LOG_KEEP)), Write::Delete);
            }
            states.push(((account, ty), next));
        }
        if self.writes.is_empty() {
            return Ok(Some(states));
        }
        let tag = format!("{:016x}", rand::random::<u64>());
        let condition = |seen: Option<&Option<String>>| match seen {
            Some(Some(ver)) => Some(("ver = :v", Some(ver.clone()))),
            Some(None) => Some(("attribute_not_exists(pk)", None)),
            None => None,
        };
        let mut items = Vec::new();
        let seen = self.seen.borrow();
        for (key, write) in &self.writes {
            let cond = condition(seen.get(key));
            let item = match write {
                Write::Put(item) => {
                    let mut item = item.clone();
                    item.insert("ver".into(), s(tag.clone()));
                    let mut put = Put::builder()
                        .table_name(&self.store.table)
                        .set_item(Some(item));
                    if let Some((expr, value)) = cond {
                        put = put.condition_expression(expr);
                        if let Some(v) = value {
                            put = put.expression_attribute_values(":v", s(v));
                        }
                    }
                    TransactWriteItem::builder()
                        .put(put.build().map_err(storage)?)
                        .build()
                }
                Write::Delete => {
                    let mut delete = Delete::builder()
                        .table_name(&self.store.table)
                        .set_key(Some(key_item(key)));
                    if let Some((expr, value)) = cond {
                        delete = delete.condition_expression(expr);
                        if let Some(v) = value {
                            delete = delete.expression_attribute_values(":v", s(v));
                        }
                    }
                    TransactWriteItem::builder()
                        .delete(delete.build().map_err(storage)?)
                        .build()
                }
            };
            items.push(item);
        }
        // What was read and not written must still be as it was (room permitting).
        for (key, seen) in seen.iter() {
            if self.writes.contains_key(key) || items.len() >= MAX_ITEMS {
                continue;
            }
            let Some((expr, value)) = condition(Some(seen)) else {
                continue;
            };
            let mut check = ConditionCheck::builder()
                .table_name(&self.store.table)
                .set_key(Some(key_item(key)))
                .condition_expression(expr);
            if let Some(v) = value {
                check = check.expression_attribute_values(":v", s(v));
            }
            items.push(
                TransactWriteItem::builder()
                    .condition_check(check.build().map_err(storage)?)
                    .build(),
            );
        }
        if items.len() > MAX_ITEMS {
            return Err(anyhow!(
                "jmap store: one request changes more than {MAX_ITEMS} objects; split it"
            ));
        }
        let sent = block(
            self.store
                .ddb
                .transact_write_items()
                .set_transact_items(Some(items))
                .client_request_token(tag)
                .send(),
        );
        match sent {
            Ok(_) => Ok(Some(states)),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_transaction_canceled_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(aws(
                "TransactWriteItems",
                aws_sdk_dynamodb::error::DisplayErrorContext(e),
            )),
        }
    }
}

impl TxOps for AwsTx<'_> {
    fn get(&self, account: &str, table: &str, id: &str) -> Result<Option<Vec<u8>>> {
        let item = self.read(&object_key(account, table, id))?;
        Ok(item.and_then(|i| i.get("v")?.as_b().ok().map(|b| b.as_ref().to_vec())))
    }

    fn put(&mut self, account: &str, table: &str, id: &str, json: Vec<u8>) -> Result<()> {
        let key = object_key(account, table, id);
        // Remember the version this write replaces, so a concurrent change is caught.
        self.read(&key)?;
        self.put(
            key,
            HashMap::from([(
                "v".to_string(),
                AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(json)),
            )]),
        );
        Ok(())
    }

    fn remove(&mut self, account: &str, table: &str, id: &str) -> Result<bool> {
        let key = object_key(account, table, id);
        let existed = self.read(&key)?.is_some();
        if existed {
            self.writes.insert(key, Write::Delete);
        }
        Ok(existed)
    }

    fn put_blob(&mut self, account: &str, blob_id: &str, bytes: &[u8]) -> Result<()> {
        block(
            self.store
                .s3
                .put_object()
                .bucket(&self.store.bucket)
                .key(self.store.blob_key(account, blob_id))
                .body(ByteStream::from(bytes.to_vec()))
                .send(),
        )
        .map_err(|e| aws("S3 PUT", aws_sdk_s3::error::DisplayErrorContext(e)))?;
        self.blobs
            .insert((account.to_string(), blob_id.to_string()), bytes.to_vec());
        Ok(())
    }

    fn blob(&self, account: &str, blob_id: &str) -> Result<Option<Vec<u8>>> {
        let key = (account.to_string(), blob_id.to_string());
        if self.removed_blobs.contains(&key) {
            return Ok(None);
        }
        if let Some(bytes) = self.blobs.get(&key) {
            return Ok(Some(bytes.clone()));
        }
        block(self.store.get_blob(account, blob_id))
    }

    fn remove_blob(&mut self, account: &str, blob_id: &str) -> Result<()> {
        let key = (account.to_string(), blob_id.to_string());
        self.blobs.remove(&key);
        self.removed_blobs.push(key);
        Ok(())
    }

    fn index_queue_id(&mut self, queue_id: u128, account: &str) -> Result<()> {
        self.put(
            queue_key(queue_id),
            HashMap::from([("account".to_string(), s(account))]),
        );
        Ok(())
    }

    fn unindex_queue_id(&mut self, queue_id: u128) -> Result<()> {
        self.writes.insert(queue_key(queue_id), Write::Delete);
        Ok(())
    }

    fn counter(&self, name: &str) -> Result<u64> {
        let item = self.read(&counter_key(name))?;
        Ok(item.and_then(|i| get_n(&i, "n")).unwrap_or(0))
    }

    fn set_counter(&mut self, name: &str, value: u64) -> Result<()> {
        let key = counter_key(name);
        // A counter's new value depends on its old one: conditioned like any read.
        self.read(&key)?;
        self.put(key, HashMap::from([("n".to_string(), n(value))]));
        Ok(())
    }
}

pub(crate) struct AwsRx {
    store: AwsStore,
}

impl RxOps for AwsRx {
    fn state(&self, account: &str, ty: &str) -> Result<u64> {
        let item = block(self.store.get_item(&state_key(account, ty)))?;
        Ok(item.and_then(|i| get_n(&i, "n")).unwrap_or(0))
    }

    fn get(&self, account: &str, table: &str, id: &str) -> Result<Option<Vec<u8>>> {
        let item = block(self.store.get_item(&object_key(account, table, id)))?;
        Ok(item.and_then(|i| i.get("v")?.as_b().ok().map(|b| b.as_ref().to_vec())))
    }

    fn list(&self, account: &str, table: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let (pk, _) = object_key(account, table, "");
        let items = block(self.store.query(&pk, None))?;
        Ok(items
            .iter()
            .filter_map(|i| {
                let id = get_s(i, "sk")?.to_string();
                let v = i.get("v")?.as_b().ok()?.as_ref().to_vec();
                Some((id, v))
            })
            .collect())
    }

    fn blob(&self, account: &str, blob_id: &str) -> Result<Option<Vec<u8>>> {
        block(self.store.get_blob(account, blob_id))
    }

    fn account_of_queue_id(&self, queue_id: u128) -> Result<Option<String>> {
        let item = block(self.store.get_item(&queue_key(queue_id)))?;
        Ok(item.and_then(|i| get_s(&i, "account").map(str::to_string)))
    }

    fn queue_ids(&self) -> Result<Vec<(u128, String)>> {
        let items = block(self.store.query("jq", None))?;
        Ok(items
            .iter()
            .filter_map(|i| {
                let id = get_s(i, "sk")?.parse().ok()?;
                Some((id, get_s(i, "account")?.to_string()))
            })
            .collect())
    }

    fn counter(&self, name: &str) -> Result<u64> {
        let item = block(self.store.get_item(&counter_key(name)))?;
        Ok(item.and_then(|i| get_n(&i, "n")).unwrap_or(0))
    }

    fn changes(&self, account: &str, ty: &str, since: u64) -> Result<ChangeLog> {
        let items = block(
            self.store
                .query(&change_pk(account, ty), Some(change_sk(since))),
        )?;
        items
            .iter()
            .map(|i| {
                let state: u64 = get_s(i, "sk")
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| anyhow!("jmap store: bad change entry"))?;
                let json = get_s(i, "v").ok_or_else(|| anyhow!("jmap store: bad change entry"))?;
                Ok((state, serde_json::from_str(json).map_err(storage)?))
            })
            .collect()
    }
}
