//! EmailSubmission (RFC 8621 §7): sending an Email through the same [`Submitter`] as SMTP.
//! The submission's id is the spool's queue id; what the spool record says (state, per
//! recipient outcomes, last error) is read live, so feedback from SES shows up in
//! `deliveryStatus` without copying. The store keeps only the link to the Email and what the
//! client chose (identity, envelope, sendAt, message class).
//!
//! [`Submitter`]: crate::submission::Submitter

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::api::{
    check_if_in_state, get_ids, invalid_properties, select, set_args, set_error, Args, Ctx,
    MethodError, MethodResult,
};
use super::email::{self, thread_id, EmailMeta};
use super::identity::{covers, email_of};
use super::store::{parse_state, state_string, Kind, T_EMAIL, T_SUBMISSION};
use super::{mime, Jmap};
use crate::spool::{Outcome, QueueId, State, SubmissionRecord};
use crate::submission::{SubmitError, SubmitRequest, Trace, MESSAGE_CLASSES};

/// What the store keeps per submission.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmissionMeta {
    pub email_id: String,
    pub identity_id: String,
    pub envelope: Value,
    pub send_at: u64,
    pub message_class: String,
    /// The client set undoStatus to canceled.
    #[serde(default)]
    pub canceled: bool,
    /// Drafts → Sent has been applied (or is no longer wanted).
    #[serde(default)]
    pub settled: bool,
    /// Hash of the undoStatus and deliveryStatus last published: a spool change that leaves
    /// them as they were (a lease, a retry) does not bump the EmailSubmission state.
    #[serde(default)]
    pub view: u64,
}

/// A fingerprint of what a client sees change on a submission.
pub fn view_hash(meta: &SubmissionMeta, record: Option<&SubmissionRecord>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    undo_status(meta, record).hash(&mut h);
    delivery_status(meta, record).to_string().hash(&mut h);
    h.finish()
}

const PROPERTIES: [&str; 11] = [
    "id",
    "identityId",
    "emailId",
    "threadId",
    "envelope",
    "sendAt",
    "undoStatus",
    "deliveryStatus",
    "dsnBlobIds",
    "mdnBlobIds",
    "messageClass",
];

pub fn undo_status(meta: &SubmissionMeta, record: Option<&SubmissionRecord>) -> &'static str {
    match record.map(|r| r.state) {
        _ if meta.canceled => "canceled",
        Some(State::Queued | State::Held) => "pending",
        _ => "final",
    }
}

/// RFC 8621 §7: per-recipient `{smtpReply, delivered, displayed}` from the spool record.
pub fn delivery_status(meta: &SubmissionMeta, record: Option<&SubmissionRecord>) -> Value {
    let Some(r) = record else {
        return Value::Null;
    };
    let mut out = Map::new();
    for rcpt in &r.recipients {
        let reported = r.delivery.get(&rcpt.to_lowercase());
        let (delivered, reply) = match (r.state, reported) {
            (_, Some(s)) => {
                let detail = s.detail.clone().unwrap_or_default();
                match s.outcome {
                    Outcome::Delayed => ("queued", format!("451 4.4.7 delivery delayed {detail}")),
                    Outcome::Delivered => ("yes", format!("250 2.0.0 delivered {detail}")),
                    // A complaint follows a delivery: the recipient has it.
                    Outcome::Complained => (
                        "yes",
                        format!("250 2.0.0 delivered; the recipient complained {detail}"),
                    ),
                    Outcome::Suppressed => ("no", format!("550 5.7.1 not sent: {detail}")),
                    Outcome::Rejected => {
                        ("no", format!("554 5.7.1 rejected by the provider {detail}"))
                    }
                    Outcome::Bounced => ("no", format!("550 5.1.1 bounced {detail}")),
                }
            }
            (State::Queued | State::Held, None) if meta.canceled => {
                ("no", "554 5.0.0 canceled".to_string())
            }
            (State::Queued | State::Held, None) => (
                "queued",
                match &r.last_error {
                    Some(e) => format!("451 4.0.0 will retry: {e}"),
                    None => "250 2.0.0 queued".to_string(),
                },
            ),
            // Handed to the provider; its report (if feedback is set up) changes this.
            (s, None) if s.was_sent() => (
                "unknown",
                format!(
                    "250 2.0.0 accepted by the provider {}",
                    r.provider_id.clone().unwrap_or_default()
                ),
            ),
            (_, None) => (
                "no",
                format!(
                    "554 5.0.0 {}",
                    if meta.canceled {
                        "canceled".to_string()
                    } else {
                        r.last_error.clone().unwrap_or_else(|| "not sent".into())
                    }
                ),
            ),
        };
        out.insert(
            rcpt.clone(),
            json!({"smtpReply": reply.trim_end(), "delivered": delivered, "displayed": "unknown"}),
        );
    }
    Value::Object(out)
}

fn object(jmap: &Jmap, id: &str, meta: &SubmissionMeta) -> Value {
    let record = queue_id(id).and_then(|q| jmap.spool.get(q).ok().flatten());
    json!({
        "id": id,
        "identityId": meta.identity_id,
        "emailId": meta.email_id,
        "threadId": thread_id(&meta.email_id),
        "envelope": meta.envelope,
        "sendAt": crate::clock::rfc3339(meta.send_at),
        "undoStatus": undo_status(meta, record.as_ref()),
        "deliveryStatus": delivery_status(meta, record.as_ref()),
        "dsnBlobIds": [],
        "mdnBlobIds": [],
        "messageClass": meta.message_class,
    })
}

/// A submission id is the 16-hex-digit queue id.
pub fn queue_id(id: &str) -> Option<QueueId> {
    (id.len() == 16).then(|| id.parse().ok()).flatten()
}

pub fn get(ctx: &mut Ctx, args: Args) -> MethodResult {
    args.check(ctx, &["ids", "properties"])?;
    let ids = get_ids(&args)?;
    let account = ctx.account_id().to_string();
    let rx = ctx.jmap.store.read()?;
    let state = state_string(rx.state(&account, "EmailSubmission")?);
    let mut list = Vec::new();
    let mut not_found = Vec::new();
    match ids {
        None => {
            for (id, meta) in rx
                .list::<SubmissionMeta>(&account, T_SUBMISSION)?
                .into_iter()
                .take(super::limits::MAX_OBJECTS_IN_GET)
            {
                list.push(object(ctx.jmap, &id, &meta));
            }
        }
        Some(ids) => {
            for id in ids {
                match rx.get::<SubmissionMeta>(&account, T_SUBMISSION, &id)? {
                    Some(meta) => list.push(object(ctx.jmap, &id, &meta)),
                    None => not_found.push(id),
                }
            }
        }
    }
    let list = select(list, args.ids("properties")?, &PROPERTIES)?;
    Ok(vec![(
        "EmailSubmission/get",
        json!({"accountId": account, "state": state, "list": list, "notFound": not_found}),
    )])
}

fn query_ids(ctx: &Ctx, args: &Args) -> Result<Vec<String>, MethodError> {
    let account = ctx.account_id();
    let rx = ctx.jmap.store.read()?;
    let filter = args.object("filter")?.cloned().unwrap_or_default();
    let mut found = Vec::new();
    for (id, meta) in rx.list::<SubmissionMeta>(account, T_SUBMISSION)? {
        let mut keep = true;
        for (k, v) in &filter {
            let in_list = |x: &str| {
                v.as_array()
                    .is_some_and(|a| a.iter().any(|i| i.as_str() == Some(x)))
            };
            let date = |v: &Value| v.as_str().and_then(mime::parse_date).unwrap_or(0);
            keep &= match k.as_str() {
                "identityIds" => in_list(&meta.identity_id),
                "emailIds" => in_list(&meta.email_id),
                "threadIds" => in_list(&thread_id(&meta.email_id)),
                "undoStatus" => {
                    let record = queue_id(&id).and_then(|q| ctx.jmap.spool.get(q).ok().flatten());
                    v.as_str() == Some(undo_status(&meta, record.as_ref()))
                }
                "before" => (meta.send_at as i64) < date(v),
                "after" => (meta.send_at as i64) >= date(v),
                _ => {
                    return Err(MethodError::new(
                        "unsupportedFilter",
                        format!("unsupported filter {k}"),
                    ))
                }
            };
        }
        if keep {
            found.push((id, meta));
        }
    }
    let mut ascending = true;
    if let Some(Value::Array(sort)) = args.get("sort") {
        for s in sort {
            match s.get("property").and_then(Value::as_str) {
                Some("sentAt") | Some("sendAt") | Some("emailId") | Some("threadId") => {}
                _ => return Err(MethodError::new("unsupportedSort", "sort by sentAt")),
            }
            ascending = s
                .get("isAscending")
                .and_then(Value::as_bool)
                .unwrap_or(true);
        }
    }
    found.sort_by(|(ia, a), (ib, b)| a.send_at.cmp(&b.send_at).then(ia.cmp(ib)));
    if !ascending {
        found.reverse();
    }
    Ok(found.into_iter().map(|(id, _)| id).collect())
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
        ],
    )?;
    let ids = query_ids(ctx, &args)?;
    let total = ids.len();
    let position = args.uint("position")?.unwrap_or(0) as usize;
    let limit = args
        .uint("limit")?
        .map_or(super::limits::MAX_OBJECTS_IN_GET, |l| l as usize)
        .min(super::limits::MAX_OBJECTS_IN_GET);
    let page: Vec<&String> = ids.iter().skip(position).take(limit).collect();
    let state = ctx
        .jmap
        .store
        .read()?
        .state(ctx.account_id(), "EmailSubmission")?;
    let mut out = json!({
        "accountId": ctx.account_id(),
        "queryState": state_string(state),
        "canCalculateChanges": true,
        "position": position.min(total),
        "ids": page,
        "limit": limit,
    });
    if args.bool("calculateTotal")? {
        out["total"] = json!(total);
    }
    Ok(vec![("EmailSubmission/query", out)])
}

/// RFC 8620 §5.6, the simple way it allows: every submission changed since `sinceQueryState`
/// is reported removed, and those still in the results are added back at their index.
pub fn query_changes(ctx: &mut Ctx, args: Args) -> MethodResult {
    args.check(
        ctx,
        &[
            "filter",
            "sort",
            "sinceQueryState",
            "maxChanges",
            "upToId",
            "calculateTotal",
        ],
    )?;
    let since = args
        .str("sinceQueryState")?
        .ok_or_else(|| MethodError::invalid("sinceQueryState is required"))?
        .to_string();
    let account = ctx.account_id().to_string();
    let rx = ctx.jmap.store.read()?;
    let current = rx.state(&account, "EmailSubmission")?;
    let since_n = parse_state(&since)
        .filter(|n| *n <= current)
        .ok_or_else(|| MethodError::new("cannotCalculateChanges", "unknown sinceQueryState"))?;
    let mut changed: Vec<String> = Vec::new();
    for (_, entries) in rx.changes(&account, "EmailSubmission", since_n)? {
        for (id, _) in entries {
            if !changed.contains(&id) {
                changed.push(id);
            }
        }
    }
    if let Some(max) = args.uint("maxChanges")? {
        if changed.len() as u64 > max {
            return Err(MethodError::new(
                "tooManyChanges",
                "more changes than maxChanges",
            ));
        }
    }
    let ids = query_ids(ctx, &args)?;
    let added: Vec<Value> = ids
        .iter()
        .enumerate()
        .filter(|(_, id)| changed.contains(id))
        .map(|(i, id)| json!({"id": id, "index": i}))
        .collect();
    let mut out = json!({
        "accountId": account,
        "oldQueryState": since,
        "newQueryState": state_string(current),
        "removed": changed,
        "added": added,
    });
    if args.bool("calculateTotal")? {
        out["total"] = json!(ids.len());
    }
    Ok(vec![("EmailSubmission/queryChanges", out)])
}

fn address_of(v: &Value) -> Option<String> {
    v.get("email").and_then(Value::as_str).map(str::to_string)
}

fn parameters_ok(v: &Value) -> bool {
    match v.get("parameters") {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => m.is_empty(),
        _ => false,
    }
}

/// Everything decided before the message goes to the submitter.
struct Plan {
    email_id: String,
    identity_id: String,
    mail_from: String,
    recipients: Vec<String>,
    mime: Vec<u8>,
    send_at: u64,
    release_at: Option<u64>,
    class: String,
    envelope: Value,
}

fn plan(ctx: &Ctx, obj: &Map<String, Value>) -> Result<Plan, Value> {
    for k in obj.keys() {
        let ok = match k.as_str() {
            "emailId" | "identityId" | "envelope" | "sendAt" | "messageClass" => true,
            "undoStatus" => obj[k] == json!("pending"),
            _ => false,
        };
        if !ok {
            return Err(invalid_properties(
                &[k],
                format!("{k} cannot be set on create"),
            ));
        }
    }
    let jmap = ctx.jmap;
    let account = ctx.account;
    let email_ref = obj
        .get("emailId")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid_properties(&["emailId"], "emailId is required"))?;
    let email_id = ctx.resolve_id(email_ref).ok_or_else(|| {
        invalid_properties(&["emailId"], format!("unknown creation id {email_ref}"))
    })?;
    let identity_id = obj
        .get("identityId")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid_properties(&["identityId"], "identityId is required"))?;
    let identity = account.identity(identity_id).ok_or_else(|| {
        set_error(
            "forbiddenFrom",
            format!("identity {identity_id} is not this account's"),
        )
    })?;
    let server = |e: anyhow::Error| set_error("serverFail", format!("{e:#}"));
    let rx = jmap.store.read().map_err(server)?;
    let meta: EmailMeta = rx
        .get(&account.account_id, T_EMAIL, &email_id)
        .map_err(server)?
        .ok_or_else(|| {
            json!({"type": "invalidEmail", "properties": ["emailId"],
            "description": format!("no Email {email_id}")})
        })?;
    if meta.size as usize > jmap.max_message_size {
        return Err(json!({"type": "tooLarge", "maxSize": jmap.max_message_size,
            "description": "the message is larger than the limit"}));
    }
    let mime = rx
        .blob(&account.account_id, &meta.blob_id)
        .map_err(server)?
        .ok_or_else(|| set_error("invalidEmail", "the Email's message is missing"))?;
    let parsed = mail_parser::MessageParser::default()
        .parse_headers(&mime)
        .ok_or_else(|| set_error("invalidEmail", "the Email cannot be parsed"))?;
    let class = match obj.get("messageClass") {
        None | Some(Value::Null) => MESSAGE_CLASSES[0].to_string(),
        Some(Value::String(c)) if MESSAGE_CLASSES.contains(&c.as_str()) => c.clone(),
        _ => {
            return Err(invalid_properties(
                &["messageClass"],
                "messageClass must be transactional, mailing_list or bulk",
            ))
        }
    };
    let envelope = obj.get("envelope").filter(|v| !v.is_null());
    let (mail_from, recipients) = match envelope {
        Some(env) => {
            let from = env.get("mailFrom").ok_or_else(|| {
                invalid_properties(&["envelope"], "envelope needs mailFrom and rcptTo")
            })?;
            let rcpts = env
                .get("rcptTo")
                .and_then(Value::as_array)
                .ok_or_else(|| invalid_properties(&["envelope"], "envelope needs rcptTo"))?;
            if !parameters_ok(from) || !rcpts.iter().all(parameters_ok) {
                return Err(invalid_properties(
                    &["envelope"],
                    "SMTP parameters are not supported",
                ));
            }
            let from = address_of(from)
                .ok_or_else(|| invalid_properties(&["envelope"], "mailFrom needs an email"))?;
            let rcpts = rcpts
                .iter()
                .map(address_of)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| invalid_properties(&["envelope"], "each rcptTo needs an email"))?;
            (from, rcpts)
        }
        None => {
            // RFC 8621 §7: Sender, else From; recipients from To, Cc and Bcc.
            let from = parsed
                .sender()
                .or(parsed.from())
                .and_then(|a| a.first())
                .and_then(|a| a.address())
                .map(str::to_string)
                .ok_or_else(|| set_error("invalidEmail", "the Email has no From address"))?;
            let mut rcpts = Vec::new();
            for field in [parsed.to(), parsed.cc(), parsed.bcc()]
                .into_iter()
                .flatten()
            {
                for a in field.iter() {
                    if let Some(addr) = a.address() {
                        rcpts.push(addr.to_string());
                    }
                }
            }
            (from, rcpts)
        }
    };
    if !mime::valid_address(&mail_from) || !covers(identity, &mail_from) {
        return Err(set_error(
            "forbiddenFrom",
            format!(
                "{mail_from} may not be sent from identity {} ({})",
                identity.id,
                email_of(identity)
            ),
        ));
    }
    let mut unique: Vec<String> = Vec::new();
    for r in recipients {
        if !unique.iter().any(|u| u.eq_ignore_ascii_case(&r)) {
            unique.push(r);
        }
    }
    if unique.is_empty() {
        return Err(set_error("noRecipients", "the message has no recipients"));
    }
    if unique.len() > jmap.max_recipients {
        return Err(
            json!({"type": "tooManyRecipients", "maxRecipients": jmap.max_recipients,
            "description": format!("at most {} recipients per message", jmap.max_recipients)}),
        );
    }
    let invalid: Vec<&String> = unique.iter().filter(|r| !mime::valid_address(r)).collect();
    if !invalid.is_empty() {
        return Err(
            json!({"type": "invalidRecipients", "invalidRecipients": invalid,
            "description": "invalid recipient addresses"}),
        );
    }
    for r in &unique {
        match jmap.spool.suppressed(r, &account.account_id, &class) {
            Ok(Some(s)) => {
                return Err(set_error(
                    "forbiddenToSend",
                    format!(
                        "{r} is on the suppression list for {class} mail: {}",
                        s.reason
                    ),
                ))
            }
            Ok(None) => {}
            Err(e) => return Err(set_error("serverFail", e.to_string())),
        }
    }
    let now = jmap.now_ms();
    let (send_at, release_at) = match obj.get("sendAt") {
        None | Some(Value::Null) => (now, None),
        Some(Value::String(s)) => {
            let t = mime::parse_date(s)
                .ok_or_else(|| invalid_properties(&["sendAt"], "sendAt must be a UTCDate"))?;
            let t = t.max(0) as u64;
            if t > now + jmap.max_hold_secs * 1000 {
                return Err(invalid_properties(
                    &["sendAt"],
                    format!(
                        "sendAt is further than maxDelayedSend ({} s)",
                        jmap.max_hold_secs
                    ),
                ));
            }
            if t > now {
                (t, Some(t))
            } else {
                (now, None)
            }
        }
        _ => return Err(invalid_properties(&["sendAt"], "sendAt must be a UTCDate")),
    };
    let envelope = json!({
        "mailFrom": {"email": mail_from, "parameters": null},
        "rcptTo": unique.iter().map(|r| json!({"email": r, "parameters": null})).collect::<Vec<_>>(),
    });
    Ok(Plan {
        email_id,
        identity_id: identity.id.clone(),
        mail_from,
        recipients: unique,
        mime,
        send_at,
        release_at,
        class,
        envelope,
    })
}

async fn create_one(ctx: &mut Ctx<'_>, obj: &Map<String, Value>) -> Result<(String, Value), Value> {
    let plan = plan(ctx, obj)?;
    let jmap = ctx.jmap;
    let request = SubmitRequest {
        account: ctx.account.clone(),
        mail_from: plan.mail_from.clone(),
        recipients: plan.recipients.clone(),
        mime: plan.mime,
        release_at: plan.release_at,
        trace: Trace {
            helo: "jmap-client".into(),
            client_ip: ctx
                .peer
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.ip()),
            protocol: "HTTPS",
            tls: None,
        },
    };
    let id = match jmap
        .submitter
        .submit_in_class(request, Some(&plan.class))
        .await
    {
        Ok(id) => id,
        Err(SubmitError::NotOwner(a)) => {
            return Err(set_error(
                "forbiddenFrom",
                format!("{a} is not this account's address"),
            ))
        }
        Err(SubmitError::BadMessage(m)) => return Err(set_error("invalidEmail", m)),
        Err(SubmitError::SpoolFull) => {
            return Err(set_error(
                "overQuota",
                "the server cannot take more mail right now",
            ))
        }
        Err(SubmitError::Storage) => {
            return Err(set_error("serverFail", "the message could not be stored"))
        }
    };
    let sub_id = id.to_string();
    let mut meta = SubmissionMeta {
        email_id: plan.email_id,
        identity_id: plan.identity_id,
        envelope: plan.envelope,
        send_at: plan.send_at,
        message_class: plan.class,
        canceled: false,
        settled: false,
        view: 0,
    };
    meta.view = view_hash(&meta, jmap.spool.get(id).ok().flatten().as_ref());
    let account = ctx.account_id().to_string();
    let stored = jmap.store.write(|tx| {
        tx.put(&account, T_SUBMISSION, &sub_id, &meta)?;
        tx.index_queue_id(id.0, &account)?;
        tx.touch(&account, "EmailSubmission", &sub_id, Kind::Created);
        Ok(())
    });
    if let Err(e) = stored {
        // The message is queued and will be sent; only the JMAP view of it is missing.
        tracing::error!(%id, error = %format!("{e:#}"), "recording a JMAP submission failed");
    }
    tracing::info!(%id, account = %account, email = %meta.email_id, "JMAP submission queued");
    // The sender may already have sent it before the link existed.
    super::push::settle(jmap, id);
    Ok((
        sub_id.clone(),
        json!({"id": sub_id, "threadId": thread_id(&meta.email_id), "undoStatus": "pending",
               "sendAt": crate::clock::rfc3339(meta.send_at)}),
    ))
}

async fn cancel(ctx: &Ctx<'_>, id: &str, patch: &Map<String, Value>) -> Result<(), Value> {
    for (k, v) in patch {
        if k != "undoStatus" || v != "canceled" {
            return Err(invalid_properties(
                &[k],
                "only undoStatus can be changed, to canceled",
            ));
        }
    }
    let account = ctx.account_id().to_string();
    let server = |e: anyhow::Error| set_error("serverFail", format!("{e:#}"));
    let meta: SubmissionMeta = ctx
        .jmap
        .store
        .read()
        .map_err(server)?
        .get(&account, T_SUBMISSION, id)
        .map_err(server)?
        .ok_or_else(|| set_error("notFound", format!("no EmailSubmission {id}")))?;
    if meta.canceled {
        return Ok(());
    }
    let queue_id = queue_id(id).ok_or_else(|| set_error("notFound", "bad id"))?;
    match ctx
        .jmap
        .spool
        .cancel(queue_id, "canceled by the client (JMAP)".into())
        .await
    {
        Ok(()) => {}
        Err(crate::spool::SpoolError::NotFound(_)) => {
            return Err(set_error(
                "cannotUnsend",
                "the message has already left the queue",
            ))
        }
        Err(e) => return Err(set_error("serverFail", e.to_string())),
    }
    let stored = ctx.jmap.store.write(|tx| {
        let mut meta = meta.clone();
        meta.canceled = true;
        meta.settled = true;
        meta.view = view_hash(&meta, ctx.jmap.spool.get(queue_id).ok().flatten().as_ref());
        tx.put(&account, T_SUBMISSION, id, &meta)?;
        tx.touch(&account, "EmailSubmission", id, Kind::Updated);
        Ok(())
    });
    stored.map_err(server)?;
    tracing::info!(id = %id, account = %account, "JMAP submission canceled");
    Ok(())
}

pub async fn set(ctx: &mut Ctx<'_>, args: Args) -> MethodResult {
    args.check(
        ctx,
        &[
            "ifInState",
            "create",
            "update",
            "destroy",
            "onSuccessUpdateEmail",
            "onSuccessDestroyEmail",
        ],
    )?;
    let sets = set_args(&args)?;
    let old_state = check_if_in_state(ctx, &args, "EmailSubmission")?;
    let on_update = args.object("onSuccessUpdateEmail")?.cloned();
    let on_destroy = args.ids("onSuccessDestroyEmail")?;
    let account = ctx.account_id().to_string();
    let mut created = Map::new();
    let mut not_created = Map::new();
    // Submission id (or #creation id) → the Email it sent, for the onSuccess arguments.
    let mut succeeded: Vec<(String, String)> = Vec::new();
    for (cid, obj) in &sets.create {
        match create_one(ctx, obj).await {
            Ok((id, v)) => {
                ctx.created_ids.insert(cid.clone(), id.clone());
                let email = obj
                    .get("emailId")
                    .and_then(Value::as_str)
                    .and_then(|e| ctx.resolve_id(e))
                    .unwrap_or_default();
                succeeded.push((format!("#{cid}"), email.clone()));
                succeeded.push((id, email));
                created.insert(cid.clone(), v);
            }
            Err(e) => {
                not_created.insert(cid.clone(), e);
            }
        }
    }
    let mut updated = Map::new();
    let mut not_updated = Map::new();
    for (id, patch) in &sets.update {
        let real = ctx.resolve_id(id).unwrap_or_default();
        match cancel(ctx, &real, patch).await {
            Ok(()) => {
                let email = ctx
                    .jmap
                    .store
                    .read()?
                    .get::<SubmissionMeta>(&account, T_SUBMISSION, &real)?
                    .map(|m| m.email_id)
                    .unwrap_or_default();
                succeeded.push((id.clone(), email.clone()));
                succeeded.push((real.clone(), email));
                updated.insert(real, Value::Null);
            }
            Err(e) => {
                not_updated.insert(id.clone(), e);
            }
        }
    }
    let mut destroyed = Vec::new();
    let mut not_destroyed = Map::new();
    for id in &sets.destroy {
        let real = ctx.resolve_id(id).unwrap_or_default();
        let meta: Option<SubmissionMeta> =
            ctx.jmap.store.read()?.get(&account, T_SUBMISSION, &real)?;
        match meta {
            None => {
                not_destroyed.insert(
                    id.clone(),
                    set_error("notFound", format!("no EmailSubmission {id}")),
                );
            }
            Some(meta) => {
                // RFC 8621 §7.5: destroying the record does not stop the send.
                ctx.jmap.store.write(|tx| {
                    tx.remove(&account, T_SUBMISSION, &real)?;
                    tx.touch(&account, "EmailSubmission", &real, Kind::Destroyed);
                    Ok(())
                })?;
                succeeded.push((id.clone(), meta.email_id.clone()));
                succeeded.push((real.clone(), meta.email_id));
                destroyed.push(real);
            }
        }
    }
    let new_state = state_string(ctx.jmap.store.read()?.state(&account, "EmailSubmission")?);
    let mut out = vec![(
        "EmailSubmission/set",
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
    )];
    // RFC 8621 §7.5: the implicit Email/set, for the submissions that succeeded.
    let email_of = |key: &str| {
        succeeded
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, e)| e.clone())
            .filter(|e| !e.is_empty())
    };
    let mut update = Map::new();
    for (key, patch) in on_update.into_iter().flatten() {
        if let Some(email) = email_of(&key) {
            update.insert(email, patch);
        }
    }
    let destroy: Vec<Value> = on_destroy
        .into_iter()
        .flatten()
        .filter_map(|key| email_of(&key))
        .map(Value::String)
        .collect();
    if !update.is_empty() || !destroy.is_empty() {
        let mut implicit = Map::new();
        implicit.insert("accountId".into(), json!(account));
        implicit.insert("update".into(), Value::Object(update));
        implicit.insert("destroy".into(), Value::Array(destroy));
        out.extend(email::set(ctx, Args(implicit))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::RecipientStatus;

    fn record(state: State, rcpts: &[&str]) -> SubmissionRecord {
        SubmissionRecord {
            id: QueueId(1),
            login: "alice".into(),
            tenant_id: "t".into(),
            account_id: "a".into(),
            user_id: "u".into(),
            identity_id: "i".into(),
            mail_from: "alice@example.com".into(),
            recipients: rcpts.iter().map(|r| r.to_string()).collect(),
            message_class: "transactional".into(),
            size: 1,
            state,
            created_ms: 0,
            due_ms: None,
            receive_count: 0,
            last_error: None,
            provider_id: Some("ses-1".into()),
            history: vec![],
            delivery: Default::default(),
        }
    }

    fn meta(canceled: bool) -> SubmissionMeta {
        SubmissionMeta {
            email_id: "M1".into(),
            identity_id: "i".into(),
            envelope: Value::Null,
            send_at: 0,
            message_class: "transactional".into(),
            canceled,
            settled: false,
            view: 0,
        }
    }

    fn status(v: &Value, rcpt: &str) -> (String, String) {
        let s = &v[rcpt];
        assert_eq!(s["displayed"], "unknown");
        (
            s["delivered"].as_str().unwrap().to_string(),
            s["smtpReply"].as_str().unwrap().to_string(),
        )
    }

    #[test]
    fn undo_status_table() {
        let m = meta(false);
        assert_eq!(
            undo_status(&m, Some(&record(State::Queued, &[]))),
            "pending"
        );
        assert_eq!(undo_status(&m, Some(&record(State::Held, &[]))), "pending");
        for s in [
            State::Sent,
            State::Delivered,
            State::Bounced,
            State::Failed,
            State::Dead,
        ] {
            assert_eq!(undo_status(&m, Some(&record(s, &[]))), "final");
        }
        assert_eq!(
            undo_status(&meta(true), Some(&record(State::Failed, &[]))),
            "canceled"
        );
    }

    #[test]
    fn delivery_status_table() {
        let m = meta(false);
        let queued = record(State::Queued, &["a@x.test"]);
        assert_eq!(
            status(&delivery_status(&m, Some(&queued)), "a@x.test").0,
            "queued"
        );

        let mut r = record(
            State::Sent,
            &["a@x.test", "b@x.test", "c@x.test", "d@x.test", "e@x.test"],
        );
        let report = |outcome, detail: &str| RecipientStatus {
            outcome,
            detail: Some(detail.into()),
            at_ms: 1,
        };
        r.delivery
            .insert("a@x.test".into(), report(Outcome::Delivered, "250 ok"));
        r.delivery.insert(
            "b@x.test".into(),
            report(Outcome::Bounced, "Permanent/General 550 no such user"),
        );
        r.delivery.insert(
            "c@x.test".into(),
            report(Outcome::Suppressed, "on the suppression list"),
        );
        r.delivery
            .insert("d@x.test".into(), report(Outcome::Delayed, "mailbox full"));
        let v = delivery_status(&m, Some(&r));
        assert_eq!(status(&v, "a@x.test").0, "yes");
        let (d, reply) = status(&v, "b@x.test");
        assert_eq!(d, "no");
        assert!(reply.contains("no such user"), "{reply}");
        assert_eq!(status(&v, "c@x.test").0, "no");
        assert_eq!(status(&v, "d@x.test").0, "queued");
        // Handed to SES, no report yet.
        let (d, reply) = status(&v, "e@x.test");
        assert_eq!(d, "unknown");
        assert!(
            reply.starts_with("250") && reply.contains("ses-1"),
            "{reply}"
        );

        let mut failed = record(State::Failed, &["a@x.test"]);
        failed.last_error = Some("554 Message rejected".into());
        let (d, reply) = status(&delivery_status(&m, Some(&failed)), "a@x.test");
        assert_eq!(d, "no");
        assert!(reply.contains("Message rejected"));
    }
}
