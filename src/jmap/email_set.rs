//! Writing Emails (RFC 8621 §4.6, §4.8): Email/set (create from properties, update keywords
//! and mailboxIds, destroy), Email/import from an uploaded blob, and the Drafts → Sent move
//! after a send. Every write records the Email and Mailbox changes for `*/changes` and push.

use std::collections::BTreeSet;

use mail_parser::MessageParser;
use serde_json::{json, Map, Value};

use super::api::{
    check_if_in_state, invalid_properties, server_fail, set_args, set_error, Args, Ctx,
    MethodError, MethodResult,
};
use super::email::{thread_id, EmailMeta};
use super::mailbox::{self, DRAFTS, SENT};
use super::mime;
use super::store::{state_string, Kind, Tx, T_EMAIL};

fn id_set(v: &Value, prop: &str) -> Result<BTreeSet<String>, Value> {
    let map = v
        .as_object()
        .ok_or_else(|| invalid_properties(&[prop], format!("{prop} must be an object")))?;
    let mut out = BTreeSet::new();
    for (k, v) in map {
        match v {
            Value::Bool(true) => {
                out.insert(k.clone());
            }
            _ => {
                return Err(invalid_properties(
                    &[prop],
                    format!("{prop} values must be true"),
                ))
            }
        }
    }
    Ok(out)
}

fn valid_keyword(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 255
        && k.bytes()
            .all(|c| c.is_ascii_graphic() && !b"(){]%*\"\\".contains(&c))
}

fn check_mailboxes(ids: &BTreeSet<String>) -> Result<(), Value> {
    if ids.is_empty() {
        return Err(invalid_properties(
            &["mailboxIds"],
            "an Email must be in a mailbox",
        ));
    }
    if ids.len() > 1 || !ids.iter().all(|m| mailbox::exists(m)) {
        return Err(invalid_properties(
            &["mailboxIds"],
            "mailboxIds must name exactly one of drafts, sent",
        ));
    }
    Ok(())
}

/// Stores a new Email; records the Email and Mailbox changes.
pub fn insert(
    tx: &mut Tx,
    account: &str,
    mime: &[u8],
    mailbox_ids: BTreeSet<String>,
    keywords: BTreeSet<String>,
    received_at: u64,
    blob_id: Option<String>,
) -> anyhow::Result<(String, EmailMeta)> {
    let id = tx.next_id("M")?;
    let blob_id = match blob_id {
        Some(b) => b,
        None => {
            let b = tx.next_id("B")?;
            tx.put_blob(account, &b, mime)?;
            b
        }
    };
    let meta = EmailMeta {
        blob_id,
        mailbox_ids,
        keywords,
        received_at,
        size: mime.len() as u64,
    };
    tx.put(account, T_EMAIL, &id, &meta)?;
    tx.touch(account, "Email", &id, Kind::Created);
    for m in &meta.mailbox_ids {
        tx.touch(account, "Mailbox", m, Kind::Updated);
    }
    Ok((id, meta))
}

fn created_json(id: &str, meta: &EmailMeta) -> Value {
    json!({"id": id, "blobId": meta.blob_id, "threadId": thread_id(id), "size": meta.size})
}

fn create_one(ctx: &mut Ctx, tx: &mut Tx, obj: &Map<String, Value>) -> Result<Value, Value> {
    let account = ctx.account_id().to_string();
    for k in obj.keys() {
        if !(mime::is_message_property(k)
            || ["mailboxIds", "keywords", "receivedAt"].contains(&k.as_str()))
        {
            return Err(invalid_properties(
                &[k],
                format!("{k} cannot be set on create"),
            ));
        }
    }
    let mailbox_ids = id_set(obj.get("mailboxIds").unwrap_or(&Value::Null), "mailboxIds")?;
    check_mailboxes(&mailbox_ids)?;
    let keywords = match obj.get("keywords") {
        None | Some(Value::Null) => BTreeSet::new(),
        Some(v) => id_set(v, "keywords")?,
    };
    if !keywords.iter().all(|k| valid_keyword(k)) {
        return Err(invalid_properties(&["keywords"], "invalid keyword"));
    }
    let keywords = keywords.into_iter().map(|k| k.to_lowercase()).collect();
    let received_at = match obj.get("receivedAt") {
        None | Some(Value::Null) => ctx.jmap.now_ms(),
        Some(Value::String(s)) => mime::parse_date(s)
            .map(|t| t.max(0) as u64)
            .ok_or_else(|| invalid_properties(&["receivedAt"], "receivedAt must be a UTCDate"))?,
        Some(_) => {
            return Err(invalid_properties(
                &["receivedAt"],
                "receivedAt must be a UTCDate",
            ))
        }
    };
    let mime = {
        let blob = |id: &str| tx.blob(&account, id).ok().flatten();
        mime::build(obj, blob, ctx.jmap.now_ms(), &ctx.jmap.hostname)?
    };
    if mime.len() > ctx.jmap.max_message_size {
        return Err(
            json!({"type": "tooLarge", "maxSize": ctx.jmap.max_message_size,
            "description": "the message is larger than the limit"}),
        );
    }
    let (id, meta) = insert(
        tx,
        &account,
        &mime,
        mailbox_ids,
        keywords,
        received_at,
        None,
    )
    .map_err(|e| server_fail(format!("{e:#}")))?;
    Ok(created_json(&id, &meta))
}

/// Applies an Email update patch (RFC 8620 §5.3 PatchObject) to keywords and mailboxIds.
pub fn update_one(
    tx: &mut Tx,
    account: &str,
    id: &str,
    patch: &Map<String, Value>,
) -> Result<(), Value> {
    let mut meta: EmailMeta = tx
        .get(account, T_EMAIL, id)
        .map_err(|e| server_fail(format!("{e:#}")))?
        .ok_or_else(|| set_error("notFound", format!("no Email {id}")))?;
    let before = meta.clone();
    for (path, value) in patch {
        if path == "keywords" {
            let set = id_set(value, "keywords")?;
            if !set.iter().all(|k| valid_keyword(k)) {
                return Err(invalid_properties(&["keywords"], "invalid keyword"));
            }
            meta.keywords = set.into_iter().map(|k| k.to_lowercase()).collect();
        } else if path == "mailboxIds" {
            meta.mailbox_ids = id_set(value, "mailboxIds")?;
        } else if let Some(k) = path.strip_prefix("keywords/") {
            let k = k.replace("~1", "/").replace("~0", "~");
            if !valid_keyword(&k) {
                return Err(invalid_properties(&[path], "invalid keyword"));
            }
            match value {
                Value::Bool(true) => meta.keywords.insert(k.to_lowercase()),
                Value::Null | Value::Bool(false) => meta.keywords.remove(&k.to_lowercase()),
                _ => return Err(invalid_properties(&[path], "must be true or null")),
            };
        } else if let Some(m) = path.strip_prefix("mailboxIds/") {
            match value {
                Value::Bool(true) => meta.mailbox_ids.insert(m.to_string()),
                Value::Null | Value::Bool(false) => meta.mailbox_ids.remove(m),
                _ => return Err(invalid_properties(&[path], "must be true or null")),
            };
        } else {
            return Err(invalid_properties(
                &[path],
                "only keywords and mailboxIds can be changed",
            ));
        }
    }
    check_mailboxes(&meta.mailbox_ids)?;
    save(tx, account, id, &before, &meta).map_err(|e| server_fail(format!("{e:#}")))
}

fn save(
    tx: &mut Tx,
    account: &str,
    id: &str,
    before: &EmailMeta,
    after: &EmailMeta,
) -> anyhow::Result<()> {
    tx.put(account, T_EMAIL, id, after)?;
    tx.touch(account, "Email", id, Kind::Updated);
    for m in before.mailbox_ids.symmetric_difference(&after.mailbox_ids) {
        tx.touch(account, "Mailbox", m, Kind::Updated);
    }
    if before.keywords.contains("$seen") != after.keywords.contains("$seen") {
        for m in &after.mailbox_ids {
            tx.touch(account, "Mailbox", m, Kind::Updated);
        }
    }
    Ok(())
}

pub fn destroy_one(tx: &mut Tx, account: &str, id: &str) -> Result<(), Value> {
    let fail = |e: anyhow::Error| server_fail(format!("{e:#}"));
    let meta: EmailMeta = tx
        .get(account, T_EMAIL, id)
        .map_err(fail)?
        .ok_or_else(|| set_error("notFound", format!("no Email {id}")))?;
    tx.remove(account, T_EMAIL, id).map_err(fail)?;
    tx.remove_blob(account, &meta.blob_id).map_err(fail)?;
    tx.touch(account, "Email", id, Kind::Destroyed);
    for m in &meta.mailbox_ids {
        tx.touch(account, "Mailbox", m, Kind::Updated);
    }
    Ok(())
}

/// After the transport accepted a submission: the Email leaves Drafts for Sent, without
/// `$draft`. Returns the Sent copy's id if anything changed.
///
/// When the provider replaced the message's `Message-ID` (SES does: `message_id`), the Sent
/// copy must carry the one recipients see, or their replies do not thread with it. An Email
/// is immutable but for its mailboxes and keywords (RFC 8621 §4.1), so the copy is a new Email
/// with that header (and a new id); the draft's id is destroyed, as `onSuccessDestroyEmail`
/// would (the EmailSubmission's `emailId` keeps naming what was submitted).
pub fn mark_sent(
    tx: &mut Tx,
    account: &str,
    id: &str,
    message_id: Option<&str>,
) -> anyhow::Result<Option<String>> {
    let Some(meta) = tx.get::<EmailMeta>(account, T_EMAIL, id)? else {
        return Ok(None);
    };
    let mut after = meta.clone();
    after.mailbox_ids.remove(DRAFTS);
    after.mailbox_ids.insert(SENT.to_string());
    after.keywords.remove("$draft");
    if let Some(message_id) = message_id {
        let mime = tx
            .blob(account, &meta.blob_id)?
            .ok_or_else(|| anyhow::anyhow!("Email {id} has no blob {}", meta.blob_id))?;
        if crate::message::header_values(&mime, "Message-ID") != [message_id] {
            let mut sent = format!("Message-ID: {message_id}\r\n").into_bytes();
            sent.extend_from_slice(&crate::message::strip_headers(&mime, &["Message-ID"]));
            let (copy, _) = insert(
                tx,
                account,
                &sent,
                after.mailbox_ids,
                after.keywords,
                meta.received_at,
                None,
            )?;
            destroy_one(tx, account, id).map_err(|e| anyhow::anyhow!("{e}"))?;
            return Ok(Some(copy));
        }
    }
    if after.mailbox_ids == meta.mailbox_ids && after.keywords == meta.keywords {
        return Ok(None);
    }
    save(tx, account, id, &meta, &after)?;
    Ok(Some(id.to_string()))
}

/// Email/set, also used for the implicit call after EmailSubmission/set (RFC 8621 §7.5).
pub fn set(ctx: &mut Ctx, args: Args) -> MethodResult {
    args.check(ctx, &["ifInState", "create", "update", "destroy"])?;
    let sets = set_args(&args)?;
    let old_state = check_if_in_state(ctx, &args, "Email")?;
    let account = ctx.account_id().to_string();
    let mut created = Map::new();
    let mut not_created = Map::new();
    let mut updated = Map::new();
    let mut not_updated = Map::new();
    let mut destroyed = Vec::new();
    let mut not_destroyed = Map::new();
    let store = ctx.jmap.store.clone();
    store.write(|tx| {
        for (cid, obj) in &sets.create {
            match create_one(ctx, tx, obj) {
                Ok(v) => {
                    if let Some(id) = v.get("id").and_then(Value::as_str) {
                        ctx.created_ids.insert(cid.clone(), id.to_string());
                    }
                    created.insert(cid.clone(), v);
                }
                Err(e) => {
                    not_created.insert(cid.clone(), e);
                }
            }
        }
        for (id, patch) in &sets.update {
            let Some(real) = ctx.resolve_id(id) else {
                not_updated.insert(id.clone(), set_error("notFound", "unknown creation id"));
                continue;
            };
            match update_one(tx, &account, &real, patch) {
                Ok(()) => {
                    updated.insert(real, Value::Null);
                }
                Err(e) => {
                    not_updated.insert(id.clone(), e);
                }
            }
        }
        for id in &sets.destroy {
            let Some(real) = ctx.resolve_id(id) else {
                not_destroyed.insert(id.clone(), set_error("notFound", "unknown creation id"));
                continue;
            };
            match destroy_one(tx, &account, &real) {
                Ok(()) => destroyed.push(real),
                Err(e) => {
                    not_destroyed.insert(id.clone(), e);
                }
            }
        }
        Ok(())
    })?;
    let new_state = state_string(ctx.jmap.store.read()?.state(&account, "Email")?);
    Ok(vec![(
        "Email/set",
        json!({
            "accountId": account,
            "oldState": old_state,
            "newState": new_state,
            "created": created,
            "updated": updated,
            "destroyed": destroyed,
            "notCreated": not_created,
            "notUpdated": not_updated,
            "notDestroyed": not_destroyed,
        }),
    )])
}

/// Email/import (RFC 8621 §4.8): Emails from uploaded blobs.
pub fn import(ctx: &mut Ctx, args: Args) -> MethodResult {
    args.check(ctx, &["ifInState", "emails"])?;
    let emails = args
        .object("emails")?
        .cloned()
        .ok_or_else(|| MethodError::invalid("emails is required"))?;
    if emails.len() > super::limits::MAX_OBJECTS_IN_SET {
        return Err(MethodError::new("requestTooLarge", "too many emails"));
    }
    let old_state = check_if_in_state(ctx, &args, "Email")?;
    let account = ctx.account_id().to_string();
    let mut created = Map::new();
    let mut not_created = Map::new();
    let now = ctx.jmap.now_ms();
    let max = ctx.jmap.max_message_size;
    let store = ctx.jmap.store.clone();
    store.write(|tx| {
        for (cid, obj) in &emails {
            let result = (|| -> Result<Value, Value> {
                let obj = obj
                    .as_object()
                    .ok_or_else(|| invalid_properties(&[], "an EmailImport must be an object"))?;
                let blob_id = obj
                    .get("blobId")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid_properties(&["blobId"], "blobId is required"))?;
                let mailbox_ids =
                    id_set(obj.get("mailboxIds").unwrap_or(&Value::Null), "mailboxIds")?;
                check_mailboxes(&mailbox_ids)?;
                let keywords = match obj.get("keywords") {
                    None | Some(Value::Null) => BTreeSet::new(),
                    Some(v) => id_set(v, "keywords")?,
                };
                let received_at = match obj.get("receivedAt").and_then(Value::as_str) {
                    Some(s) => mime::parse_date(s)
                        .map(|t| t.max(0) as u64)
                        .ok_or_else(|| {
                            invalid_properties(&["receivedAt"], "receivedAt must be a UTCDate")
                        })?,
                    None => now,
                };
                let mime = tx
                    .blob(&account, blob_id)
                    .map_err(|e| server_fail(format!("{e:#}")))?
                    .ok_or_else(|| {
                        json!({"type": "blobNotFound", "notFound": [blob_id],
                        "description": format!("no blob {blob_id}")})
                    })?;
                if mime.len() > max {
                    return Err(json!({"type": "tooLarge", "maxSize": max}));
                }
                // Files often have LF line endings: made CRLF here, once, so the Email, its
                // ownership check and what is sent are the same bytes; what is still not
                // RFC 5322 text (a lone CR, NUL, long lines) is refused as SMTP refuses it.
                let mime = crlf_lines(&mime);
                crate::submission::check_text(&mime)
                    .map_err(|e| set_error("invalidEmail", e.to_string()))?;
                if mime.len() > max {
                    return Err(json!({"type": "tooLarge", "maxSize": max}));
                }
                let parsed = MessageParser::default().parse_headers(&mime);
                if parsed.is_none_or(|m| m.headers().is_empty()) {
                    return Err(set_error(
                        "invalidEmail",
                        "the blob is not an RFC 5322 message",
                    ));
                }
                let keywords = keywords.into_iter().map(|k| k.to_lowercase()).collect();
                let (id, meta) = insert(
                    tx,
                    &account,
                    &mime,
                    mailbox_ids,
                    keywords,
                    received_at,
                    None,
                )
                .map_err(|e| server_fail(format!("{e:#}")))?;
                Ok(created_json(&id, &meta))
            })();
            match result {
                Ok(v) => {
                    if let Some(id) = v.get("id").and_then(Value::as_str) {
                        ctx.created_ids.insert(cid.clone(), id.to_string());
                    }
                    created.insert(cid.clone(), v);
                }
                Err(e) => {
                    not_created.insert(cid.clone(), e);
                }
            }
        }
        Ok(())
    })?;
    let new_state = state_string(ctx.jmap.store.read()?.state(&account, "Email")?);
    Ok(vec![(
        "Email/import",
        json!({"accountId": account, "oldState": old_state, "newState": new_state,
               "created": created, "notCreated": not_created}),
    )])
}

/// `mime` with every bare LF made CRLF (a CR not followed by LF is left for the text rules
/// to refuse).
fn crlf_lines(mime: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(mime.len() + mime.len() / 32);
    let mut prev = 0u8;
    for &b in mime {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}
