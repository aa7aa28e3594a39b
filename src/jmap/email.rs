//! Emails (RFC 8621 §4): metadata (mailboxes, keywords, received time) in the store, the
//! message itself as a blob; everything else is read from the MIME when asked for.
//! Every Email is its own Thread (`T` + its id).

use std::collections::BTreeSet;

use mail_parser::{Message, MessageParser, MimeHeaders};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::api::{get_ids, select, Args, Ctx, MethodError, MethodResult};
use super::store::{state_string, Rx, T_EMAIL};
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

/// RFC 8621 §4.2 default properties of Email/get: all of the above but `headers`.
const DEFAULT_PROPERTIES: &[&str] = PROPERTIES.split_at(PROPERTIES.len() - 1).0;

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
    let Some(message) = crate::message::parse_mime(&mime) else {
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
    let parsed = crate::message::parse_mime(mime);
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
        .map(|(n, field)| json!({"name": String::from_utf8_lossy(n), "value": raw_value(field)}))
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

/// A header field's raw value (RFC 8621 §4.1.2 Raw form): after the colon, folding kept,
/// without the final CRLF.
fn raw_value(field: &[u8]) -> String {
    let value = field
        .iter()
        .position(|b| *b == b':')
        .map_or(&field[..0], |i| &field[i + 1..]);
    let value = value.strip_suffix(b"\r\n").unwrap_or(value);
    String::from_utf8_lossy(value).into_owned()
}

/// `header:Name[:asRaw|:asText][:all]` (RFC 8621 §4.1.3) for Email/get; other forms are not
/// offered (`invalidArguments`).
fn header_property(mime: &[u8], prop: &str) -> Result<Value, MethodError> {
    let mut parts = prop["header:".len()..].split(':');
    let name = parts.next().unwrap_or_default();
    let mut form = "asRaw";
    let mut all = false;
    for p in parts {
        match p {
            "all" => all = true,
            "asRaw" | "asText" if !all => form = p,
            _ => {
                return Err(MethodError::invalid(format!(
                    "unsupported header form in {prop}"
                )))
            }
        }
    }
    if name.is_empty() {
        return Err(MethodError::invalid(format!("invalid property {prop}")));
    }
    let values: Vec<Value> = crate::message::header_fields(mime)
        .into_iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, field)| {
            let raw = raw_value(field);
            match form {
                "asText" => json!(raw.replace("\r\n", "").trim()),
                _ => json!(raw),
            }
        })
        .collect();
    Ok(if all {
        Value::Array(values)
    } else {
        values.last().cloned().unwrap_or(Value::Null)
    })
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
    let header_props: Vec<String> = args
        .ids("properties")?
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.starts_with("header:"))
        .collect();
    let mut list = Vec::new();
    let mut not_found = Vec::new();
    for (id, meta) in wanted {
        match meta {
            None => not_found.push(id),
            Some(meta) => {
                let mime = rx.blob(&account, &meta.blob_id)?.unwrap_or_default();
                let mut o = email_object(&id, &meta, &mime, &opts);
                for p in header_props.iter() {
                    o[p.as_str()] = header_property(&mime, p)?;
                }
                list.push(o);
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
            results.push(matches(c, meta, rx, account)?);
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
        if matches(&filter, &meta, &rx, &account)? {
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
