//! Emails (RFC 8621 §4): metadata (mailboxes, keywords, received time) in the store, the
//! message itself as a blob; everything else is read from the MIME when asked for.
//! Every Email is its own Thread (`T` + its id).

use std::collections::BTreeSet;

use mail_parser::{Message, MessageParser, MimeHeaders};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::api::{
    check_if_in_state, get_ids, invalid_properties, select, set_args, set_error, Args, Ctx,
    MethodError, MethodResult,
};
use super::mailbox::{self, DRAFTS, SENT};
use super::store::{state_string, Kind, Rx, Tx, T_EMAIL};
use super::{mime, Jmap};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmailMeta {
    pub blob_id: String,
    pub mailbox_ids: BTreeSet<String>,
    pub keywords: BTreeSet<String>,
    pub received_at: u64,
    pub size: u64,
}

const PROPERTIES: [&str; 25] = [
    "id",
    "blobId",
    "threadId",
    "mailboxIds",
    "keywords",
    "size",
    "receivedAt",
    "messageId",
    "inReplyTo",
    "references",
    "sender",
    "from",
    "to",
    "cc",
    "bcc",
    "replyTo",
    "subject",
    "sentAt",
    "hasAttachment",
    "preview",
    "bodyValues",
    "textBody",
    "htmlBody",
    "attachments",
    "headers",
];

/// RFC 8621 §4.2 default properties of Email/get.
const DEFAULT_PROPERTIES: [&str; 24] = [
    "id",
    "blobId",
    "threadId",
    "mailboxIds",
    "keywords",
    "size",
    "receivedAt",
    "messageId",
    "inReplyTo",
    "references",
    "sender",
    "from",
    "to",
    "cc",
    "bcc",
    "replyTo",
    "subject",
    "sentAt",
    "hasAttachment",
    "preview",
    "bodyValues",
    "textBody",
    "htmlBody",
    "attachments",
];

pub fn thread_id(email_id: &str) -> String {
    format!("T{email_id}")
}

pub fn load_all(rx: &Rx, account: &str) -> anyhow::Result<Vec<(String, EmailMeta)>> {
    rx.list(account, T_EMAIL)
}

/// A whole blob, or one body part of an Email blob (`<blob>_p<part>`).
pub fn read_blob(jmap: &Jmap, account: &str, blob_id: &str) -> anyhow::Result<Option<Vec<u8>>> {
    let rx = jmap.store.read()?;
    if let Some(b) = rx.blob(account, blob_id)? {
        return Ok(Some(b));
    }
    let Some((base, part)) = blob_id.rsplit_once("_p") else {
        return Ok(None);
    };
    let (Some(mime), Ok(part)) = (rx.blob(account, base)?, part.parse::<u32>()) else {
        return Ok(None);
    };
    let Some(message) = MessageParser::default().parse(&mime) else {
        return Ok(None);
    };
    Ok(message.part(part).map(|p| p.contents().to_vec()))
}

fn addresses(field: Option<&mail_parser::Address>) -> Value {
    match field {
        None => Value::Null,
        Some(a) => Value::Array(
            a.iter()
                .map(|x| json!({"name": x.name(), "email": x.address().unwrap_or_default()}))
                .collect(),
        ),
    }
}

fn text_list(v: &mail_parser::HeaderValue) -> Value {
    match v {
        mail_parser::HeaderValue::Text(t) => json!([t]),
        mail_parser::HeaderValue::TextList(l) => json!(l),
        _ => Value::Null,
    }
}

fn body_part(message: &Message, blob_id: &str, index: u32) -> Value {
    let Some(part) = message.part(index) else {
        return Value::Null;
    };
    let ct = part.content_type();
    let kind = ct.map_or("text/plain".to_string(), |c| {
        format!("{}/{}", c.ctype(), c.subtype().unwrap_or("plain")).to_lowercase()
    });
    let charset = ct
        .and_then(|c| c.attribute("charset"))
        .map(str::to_lowercase);
    json!({
        "partId": index.to_string(),
        "blobId": format!("{blob_id}_p{index}"),
        "size": part.len(),
        "name": part.attachment_name(),
        "type": kind,
        "charset": charset.or_else(|| kind.starts_with("text/").then(|| "us-ascii".into())),
        "disposition": part.content_disposition().map(|d| d.ctype().to_lowercase()),
        "cid": part.content_id(),
        "language": Value::Null,
        "location": part.content_location(),
    })
}

struct BodyValueOptions {
    text: bool,
    html: bool,
    max_bytes: usize,
}

fn email_object(id: &str, meta: &EmailMeta, mime: &[u8], opts: &BodyValueOptions) -> Value {
    let parsed = MessageParser::default().parse(mime);
    let mut o = json!({
        "id": id,
        "blobId": meta.blob_id,
        "threadId": thread_id(id),
        "mailboxIds": meta.mailbox_ids.iter().map(|m| (m.clone(), json!(true))).collect::<Map<_, _>>(),
        "keywords": meta.keywords.iter().map(|k| (k.clone(), json!(true))).collect::<Map<_, _>>(),
        "size": meta.size,
        "receivedAt": crate::clock::rfc3339(meta.received_at),
    });
    let Some(m) = parsed else {
        return o;
    };
    let list = |idx: &[u32]| -> Value {
        Value::Array(
            idx.iter()
                .map(|i| body_part(&m, &meta.blob_id, *i))
                .collect(),
        )
    };
    let mut values = Map::new();
    let mut add_values = |idx: &[u32]| {
        for i in idx {
            if let Some(text) = m.part(*i).and_then(|p| p.text_contents()) {
                let truncated = opts.max_bytes > 0 && text.len() > opts.max_bytes;
                let mut end = if truncated {
                    opts.max_bytes
                } else {
                    text.len()
                };
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                values.insert(
                    i.to_string(),
                    json!({"value": &text[..end], "isEncodingProblem": false, "isTruncated": truncated}),
                );
            }
        }
    };
    if opts.text {
        add_values(&m.text_body);
    }
    if opts.html {
        add_values(&m.html_body);
    }
    let headers: Vec<Value> = crate::message::header_fields(mime)
        .into_iter()
        .map(|(n, v)| {
            json!({"name": String::from_utf8_lossy(n), "value": String::from_utf8_lossy(v)})
        })
        .collect();
    let extra = json!({
        "messageId": m.message_id().map_or(Value::Null, |i| json!([i])),
        "inReplyTo": text_list(m.in_reply_to()),
        "references": text_list(m.references()),
        "sender": addresses(m.sender()),
        "from": addresses(m.from()),
        "to": addresses(m.to()),
        "cc": addresses(m.cc()),
        "bcc": addresses(m.bcc()),
        "replyTo": addresses(m.reply_to()),
        "subject": m.subject(),
        "sentAt": m.date().map(|d| d.to_rfc3339()),
        "hasAttachment": !m.attachments.is_empty(),
        "preview": m.body_preview(256).map(|p| p.trim().to_string()).unwrap_or_default(),
        "bodyValues": values,
        "textBody": list(&m.text_body),
        "htmlBody": list(&m.html_body),
        "attachments": list(&m.attachments),
        "headers": headers,
    });
    if let (Value::Object(o), Value::Object(extra)) = (&mut o, extra) {
        o.extend(extra);
    }
    o
}

pub fn get(ctx: &mut Ctx, args: Args) -> MethodResult {
    args.check(
        ctx,
        &[
            "ids",
            "properties",
            "bodyProperties",
            "fetchTextBodyValues",
            "fetchHTMLBodyValues",
            "fetchAllBodyValues",
            "maxBodyValueBytes",
        ],
    )?;
    let ids = get_ids(&args)?;
    let all = args.bool("fetchAllBodyValues")?;
    let opts = BodyValueOptions {
        text: all || args.bool("fetchTextBodyValues")?,
        html: all || args.bool("fetchHTMLBodyValues")?,
        max_bytes: args.uint("maxBodyValueBytes")?.unwrap_or(0) as usize,
    };
    let rx = ctx.jmap.store.read()?;
    let account = ctx.account_id().to_string();
    let state = state_string(rx.state(&account, "Email")?);
    let wanted: Vec<(String, Option<EmailMeta>)> = match ids {
        Some(ids) => ids
            .into_iter()
            .map(|id| {
                let meta = rx.get::<EmailMeta>(&account, T_EMAIL, &id)?;
                Ok((id, meta))
            })
            .collect::<anyhow::Result<_>>()?,
        None => load_all(&rx, &account)?
            .into_iter()
            .take(super::limits::MAX_OBJECTS_IN_GET)
            .map(|(id, m)| (id, Some(m)))
            .collect(),
    };
    let mut list = Vec::new();
    let mut not_found = Vec::new();
    for (id, meta) in wanted {
        match meta {
            None => not_found.push(id),
            Some(meta) => {
                let mime = rx.blob(&account, &meta.blob_id)?.unwrap_or_default();
                list.push(email_object(&id, &meta, &mime, &opts));
            }
        }
    }
    let props = args
        .ids("properties")?
        .or_else(|| Some(DEFAULT_PROPERTIES.iter().map(|s| s.to_string()).collect()));
    let list = select(list, props, &PROPERTIES)?;
    Ok(vec![(
        "Email/get",
        json!({"accountId": account, "state": state, "list": list, "notFound": not_found}),
    )])
}

fn matches(
    filter: &Map<String, Value>,
    id: &str,
    meta: &EmailMeta,
    rx: &Rx,
    account: &str,
) -> Result<bool, MethodError> {
    if let Some(op) = filter.get("operator").and_then(Value::as_str) {
        let conditions = filter
            .get("conditions")
            .and_then(Value::as_array)
            .ok_or_else(|| MethodError::invalid("a FilterOperator needs conditions"))?;
        let mut results = Vec::new();
        for c in conditions {
            let c = c
                .as_object()
                .ok_or_else(|| MethodError::invalid("conditions must be objects"))?;
            results.push(matches(c, id, meta, rx, account)?);
        }
        return match op {
            "AND" => Ok(results.iter().all(|r| *r)),
            "OR" => Ok(results.iter().any(|r| *r)),
            "NOT" => Ok(!results.iter().any(|r| *r)),
            _ => Err(MethodError::invalid("operator must be AND, OR or NOT")),
        };
    }
    let date = |v: &Value| {
        v.as_str()
            .and_then(mime::parse_date)
            .ok_or_else(|| MethodError::invalid("dates must be RFC 3339 UTCDate"))
    };
    for (k, v) in filter {
        let ok = match k.as_str() {
            "inMailbox" => v.as_str().is_some_and(|m| meta.mailbox_ids.contains(m)),
            "inMailboxOtherThan" => {
                let not: Vec<&str> = v
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                meta.mailbox_ids.iter().any(|m| !not.contains(&m.as_str()))
            }
            "hasKeyword" => v.as_str().is_some_and(|kw| meta.keywords.contains(kw)),
            "notKeyword" => v.as_str().is_some_and(|kw| !meta.keywords.contains(kw)),
            "before" => (meta.received_at as i64) < date(v)?,
            "after" => (meta.received_at as i64) >= date(v)?,
            "minSize" => meta.size >= v.as_u64().unwrap_or(0),
            "maxSize" => meta.size < v.as_u64().unwrap_or(u64::MAX),
            "subject" | "from" | "to" | "text" => {
                let needle = v.as_str().unwrap_or_default().to_lowercase();
                let mime = rx.blob(account, &meta.blob_id)?.unwrap_or_default();
                let m = MessageParser::default().parse_headers(&mime);
                let hay = match (k.as_str(), &m) {
                    (_, None) => String::new(),
                    ("subject", Some(m)) => m.subject().unwrap_or_default().to_string(),
                    ("from", Some(m)) => format!("{:?}", m.from()),
                    ("to", Some(m)) => format!("{:?}", m.to()),
                    _ => String::from_utf8_lossy(&mime).to_string(),
                };
                hay.to_lowercase().contains(&needle)
            }
            _ => {
                return Err(MethodError::new(
                    "unsupportedFilter",
                    format!("unsupported filter {k}"),
                ))
            }
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

pub fn query(ctx: &mut Ctx, args: Args) -> MethodResult {
    args.check(
        ctx,
        &[
            "filter",
            "sort",
            "position",
            "anchor",
            "anchorOffset",
            "limit",
            "calculateTotal",
            "collapseThreads",
        ],
    )?;
    let account = ctx.account_id().to_string();
    let rx = ctx.jmap.store.read()?;
    let filter = args.object("filter")?.cloned().unwrap_or_default();
    let mut found = Vec::new();
    for (id, meta) in load_all(&rx, &account)? {
        if matches(&filter, &id, &meta, &rx, &account)? {
            found.push((id, meta));
        }
    }
    // Default: newest first.
    let mut sort: Vec<(String, bool)> = vec![("receivedAt".into(), false)];
    if let Some(Value::Array(list)) = args.get("sort") {
        sort.clear();
        for s in list {
            let p = s.get("property").and_then(Value::as_str).unwrap_or("");
            if !["receivedAt", "size", "id"].contains(&p) {
                return Err(MethodError::new(
                    "unsupportedSort",
                    format!("cannot sort by {p}"),
                ));
            }
            let asc = s
                .get("isAscending")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            sort.push((p.to_string(), asc));
        }
    }
    found.sort_by(|(ia, a), (ib, b)| {
        for (p, asc) in &sort {
            let ord = match p.as_str() {
                "receivedAt" => a.received_at.cmp(&b.received_at),
                "size" => a.size.cmp(&b.size),
                _ => ia.cmp(ib),
            };
            let ord = if *asc { ord } else { ord.reverse() };
            if ord.is_ne() {
                return ord;
            }
        }
        ia.cmp(ib)
    });
    let ids: Vec<String> = found.into_iter().map(|(id, _)| id).collect();
    let total = ids.len();
    let mut position = match args.int("position")?.unwrap_or(0) {
        p if p < 0 => (total as i64 + p).max(0) as usize,
        p => p as usize,
    };
    if let Some(anchor) = args.str("anchor")? {
        let at = ids
            .iter()
            .position(|i| i == anchor)
            .ok_or_else(|| MethodError::new("anchorNotFound", "anchor not in the results"))?;
        let offset = args.int("anchorOffset")?.unwrap_or(0);
        position = (at as i64 + offset).max(0) as usize;
    }
    let limit = args
        .uint("limit")?
        .map_or(super::limits::MAX_OBJECTS_IN_GET, |l| l as usize)
        .min(super::limits::MAX_OBJECTS_IN_GET);
    let page: Vec<&String> = ids.iter().skip(position).take(limit).collect();
    let mut out = json!({
        "accountId": account,
        "queryState": state_string(rx.state(&account, "Email")?),
        "canCalculateChanges": false,
        "position": position.min(total),
        "ids": page,
        "limit": limit,
    });
    if args.bool("calculateTotal")? {
        out["total"] = json!(total);
    }
    Ok(vec![("Email/query", out)])
}

pub fn thread_get(ctx: &mut Ctx, args: Args) -> MethodResult {
    args.check(ctx, &["ids", "properties"])?;
    let ids = get_ids(&args)?.unwrap_or_default();
    let account = ctx.account_id().to_string();
    let rx = ctx.jmap.store.read()?;
    let mut list = Vec::new();
    let mut not_found = Vec::new();
    for t in ids {
        let email = t.strip_prefix('T').unwrap_or("");
        if !email.is_empty() && rx.get::<EmailMeta>(&account, T_EMAIL, email)?.is_some() {
            list.push(json!({"id": t, "emailIds": [email]}));
        } else {
            not_found.push(t);
        }
    }
    Ok(vec![(
        "Thread/get",
        json!({"accountId": account, "state": state_string(rx.state(&account, "Email")?),
               "list": list, "notFound": not_found}),
    )])
}

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
        mime::build(obj, blob, ctx.jmap.now_ms())?
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
    .map_err(|e| set_error("serverFail", format!("{e:#}")))?;
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
        .map_err(|e| set_error("serverFail", format!("{e:#}")))?
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
    save(tx, account, id, &before, &meta).map_err(|e| set_error("serverFail", format!("{e:#}")))
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
    let fail = |e: anyhow::Error| set_error("serverFail", format!("{e:#}"));
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

/// After the transport accepted a submission: Drafts → Sent, `$draft` removed. True if it
/// changed anything.
pub fn mark_sent(tx: &mut Tx, account: &str, id: &str) -> anyhow::Result<bool> {
    let Some(meta) = tx.get::<EmailMeta>(account, T_EMAIL, id)? else {
        return Ok(false);
    };
    let mut after = meta.clone();
    after.mailbox_ids.remove(DRAFTS);
    after.mailbox_ids.insert(SENT.to_string());
    after.keywords.remove("$draft");
    if after.mailbox_ids == meta.mailbox_ids && after.keywords == meta.keywords {
        return Ok(false);
    }
    save(tx, account, id, &meta, &after)?;
    Ok(true)
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
                    .map_err(|e| set_error("serverFail", format!("{e:#}")))?
                    .ok_or_else(|| {
                        json!({"type": "blobNotFound", "notFound": [blob_id],
                        "description": format!("no blob {blob_id}")})
                    })?;
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
                .map_err(|e| set_error("serverFail", format!("{e:#}")))?;
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
