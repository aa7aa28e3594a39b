//! EmailSubmission (RFC 8621 §7): sending an Email through the same [`Submitter`] as SMTP.
//! The submission's id is the queue id, and the EmailSubmission *is* the ledger record: its
//! JMAP link (Email, identity, envelope, sendAt) is written in the same write that queues the
//! message, so a message is never sent without its EmailSubmission. State, per-recipient
//! outcomes and the last error are read live from the record, so SES feedback shows up in
//! `deliveryStatus` without copying. The store keeps only what clients were last shown
//! ([`SubmissionView`]), for `/changes` and push.
//!
//! [`Submitter`]: crate::submission::Submitter

use std::net::{IpAddr, Ipv4Addr};

use serde_json::{json, Map, Value};

use super::api::{
    check_if_in_state, get_ids, invalid_properties, select, server_fail, set_args, set_error, Args,
    Ctx, MethodError, MethodResult,
};
use super::email::thread_id;
use super::email_set;
use super::store::{parse_state, state_string, Kind, T_SUBMISSION};
use super::submission_rules::plan;
pub use super::submission_status::{
    delivery_status, queue_id, undo_status, view_hash, SubmissionView,
};
use super::{mime, Jmap};
use crate::domain::{JmapLink, SubmissionRecord};
use crate::spool::{Action, SpoolError};
use crate::submission::{SubmitError, SubmitRequest, Trace};

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

fn object(record: &SubmissionRecord, link: &JmapLink) -> Value {
    json!({
        "id": record.id().to_string(),
        "identityId": link.identity_id,
        "emailId": link.email_id,
        "threadId": thread_id(&link.email_id),
        "envelope": link.envelope,
        "sendAt": crate::clock::rfc3339(link.send_at),
        "undoStatus": undo_status(record),
        "deliveryStatus": delivery_status(record),
        "dsnBlobIds": [],
        "mdnBlobIds": [],
        "messageClass": record.job.message_class.as_str(),
    })
}

/// The ledger records of `account`'s EmailSubmissions among `ids` (others, destroyed ones and
/// ones retention removed are left out), with their links.
async fn visible(
    jmap: &Jmap,
    account: &str,
    ids: Vec<String>,
) -> Result<Vec<(SubmissionRecord, JmapLink)>, MethodError> {
    let rx = jmap.store.read()?;
    let mut wanted = Vec::new();
    for id in &ids {
        let destroyed = rx
            .get::<SubmissionView>(account, T_SUBMISSION, id)?
            .is_some_and(|v| v.destroyed);
        if let Some(q) = queue_id(id).filter(|_| !destroyed) {
            wanted.push(q);
        }
    }
    drop(rx);
    let records = jmap
        .spool
        .ledger
        .get_many(wanted)
        .await
        .map_err(MethodError::server)?;
    Ok(records
        .into_iter()
        .filter(|r| r.job.account_id == account)
        .filter_map(|r| r.jmap.clone().map(|link| (r, link)))
        .collect())
}

/// Ids of the account's EmailSubmissions the store has views of (not destroyed).
fn listed(jmap: &Jmap, account: &str) -> Result<Vec<String>, MethodError> {
    Ok(jmap
        .store
        .read()?
        .list::<SubmissionView>(account, T_SUBMISSION)?
        .into_iter()
        .filter(|(_, v)| !v.destroyed)
        .map(|(id, _)| id)
        .collect())
}

pub async fn get(ctx: &mut Ctx<'_>, args: Args) -> MethodResult {
    args.check(ctx, &["ids", "properties"])?;
    let ids = get_ids(&args)?;
    let account = ctx.account_id().to_string();
    let state = state_string(ctx.jmap.store.read()?.state(&account, "EmailSubmission")?);
    let asked = match ids {
        None => {
            let mut all = listed(ctx.jmap, &account)?;
            all.truncate(super::limits::MAX_OBJECTS_IN_GET);
            all
        }
        Some(ids) => ids,
    };
    let found = visible(ctx.jmap, &account, asked.clone()).await?;
    let mut list = Vec::new();
    let mut not_found = Vec::new();
    for id in asked {
        match found.iter().find(|(r, _)| r.id().to_string() == id) {
            Some((record, link)) => list.push(object(record, link)),
            None => not_found.push(id),
        }
    }
    let list = select(list, args.ids("properties")?, &PROPERTIES)?;
    Ok(vec![(
        "EmailSubmission/get",
        json!({"accountId": account, "state": state, "list": list, "notFound": not_found}),
    )])
}

async fn query_ids(ctx: &Ctx<'_>, args: &Args) -> Result<Vec<String>, MethodError> {
    let account = ctx.account_id();
    let filter = args.object("filter")?.cloned().unwrap_or_default();
    let all = visible(ctx.jmap, account, listed(ctx.jmap, account)?).await?;
    let mut found = Vec::new();
    for (record, link) in all {
        let mut keep = true;
        for (k, v) in &filter {
            let in_list = |x: &str| {
                v.as_array()
                    .is_some_and(|a| a.iter().any(|i| i.as_str() == Some(x)))
            };
            let date = |v: &Value| v.as_str().and_then(mime::parse_date).unwrap_or(0);
            keep &= match k.as_str() {
                "identityIds" => in_list(&link.identity_id),
                "emailIds" => in_list(&link.email_id),
                "threadIds" => in_list(&thread_id(&link.email_id)),
                "undoStatus" => v.as_str() == Some(undo_status(&record)),
                "before" => (link.send_at as i64) < date(v),
                "after" => (link.send_at as i64) >= date(v),
                _ => {
                    return Err(MethodError::new(
                        "unsupportedFilter",
                        format!("unsupported filter {k}"),
                    ))
                }
            };
        }
        if keep {
            found.push((record.id().to_string(), link.send_at));
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
    found.sort_by(|(ia, a), (ib, b)| a.cmp(b).then(ia.cmp(ib)));
    if !ascending {
        found.reverse();
    }
    Ok(found.into_iter().map(|(id, _)| id).collect())
}

pub async fn query(ctx: &mut Ctx<'_>, args: Args) -> MethodResult {
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
    let ids = query_ids(ctx, &args).await?;
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
pub async fn query_changes(ctx: &mut Ctx<'_>, args: Args) -> MethodResult {
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
        .filter(|n| *n <= current && current - n <= super::store::CHANGE_LOG_KEEP)
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
    drop(rx);
    let ids = query_ids(ctx, &args).await?;
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

async fn create_one(ctx: &mut Ctx<'_>, obj: &Map<String, Value>) -> Result<(String, Value), Value> {
    let plan = plan(ctx, obj).await?;
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
    let link = JmapLink {
        email_id: plan.email_id,
        identity_id: plan.identity_id,
        envelope: plan.envelope,
        send_at: plan.send_at,
    };
    // Queueing and the EmailSubmission are one write: the link is in the ledger record.
    let id = match jmap
        .submitter
        .submit_with(request, Some(plan.class), Some(link.clone()))
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
        // RFC 8621 §7.5 forbiddenToSend: "does not have permission to send at all right now";
        // the description names the held class and rate.
        Err(SubmitError::Held(m)) => return Err(set_error("forbiddenToSend", m)),
        Err(e @ SubmitError::Suppressed { .. }) => {
            return Err(set_error("forbiddenToSend", e.to_string()))
        }
        // RFC 8621 §7.5 invalidEmail: "The email to be sent is invalid in some way".
        Err(e @ SubmitError::Attachment(_)) => {
            return Err(set_error("invalidEmail", e.to_string()))
        }
        // The plan already checked each address (invalidRecipients / forbiddenMailFrom).
        Err(e @ SubmitError::Address(_)) => {
            return Err(set_error("forbiddenToSend", e.to_string()))
        }
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
    tracing::info!(%id, account = %ctx.account_id(), email = %link.email_id, "JMAP submission queued");
    // The view (for /changes and push) now rather than when the ledger's feed gets here.
    super::push::settle(jmap, id).await;
    let full = match jmap.spool.ledger.get(id).await {
        Ok(Some(record)) => object(&record, &link),
        // Just written; should it be unreadable the client still gets what is known.
        _ => json!({"id": sub_id, "threadId": thread_id(&link.email_id), "undoStatus": "pending",
               "sendAt": crate::clock::rfc3339(link.send_at)}),
    };
    Ok((sub_id, created_entry(obj, full)))
}

/// RFC 8620 §5.3: the `created` entry holds every property the client did not send — all the
/// server-set ones (id, threadId, sendAt, undoStatus, deliveryStatus, dsnBlobIds, mdnBlobIds)
/// and defaults such as a derived envelope — plus any the server changed (an envelope whose
/// IDN domains became A-labels).
fn created_entry(sent: &Map<String, Value>, full: Value) -> Value {
    let Value::Object(full) = full else {
        return full;
    };
    let kept = full
        .into_iter()
        .filter(|(k, v)| sent.get(k) != Some(v))
        .collect();
    Value::Object(kept)
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
    let not_found = || set_error("notFound", format!("no EmailSubmission {id}"));
    let (record, _) = visible(ctx.jmap, &account, vec![id.to_string()])
        .await
        .map_err(|_| server_fail("reading the submission failed"))?
        .into_iter()
        .next()
        .ok_or_else(not_found)?;
    if record.canceled && !record.state.was_sent() {
        return Ok(()); // already canceled: nothing to do
    }
    let reason = "canceled by the client (JMAP)".to_string();
    match ctx
        .jmap
        .spool
        .queue
        .act(record.id(), Action::Cancel { reason })
        .await
    {
        Ok(()) => {}
        Err(SpoolError::NotFound(_)) => {
            return Err(set_error(
                "cannotUnsend",
                "the message has already left the queue",
            ))
        }
        Err(e) => return Err(server_fail(e)),
    }
    super::push::settle(ctx.jmap, record.id()).await;
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
                let email = visible(ctx.jmap, &account, vec![real.clone()])
                    .await?
                    .into_iter()
                    .next()
                    .map(|(_, link)| link.email_id)
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
        let found = visible(ctx.jmap, &account, vec![real.clone()])
            .await?
            .into_iter()
            .next();
        match found {
            None => {
                not_destroyed.insert(
                    id.clone(),
                    set_error("notFound", format!("no EmailSubmission {id}")),
                );
            }
            Some((record, link)) => {
                // RFC 8621 §7.5: destroying the EmailSubmission does not stop the send. The
                // view stays as a tombstone so the ledger's feed does not bring it back.
                ctx.jmap.store.write(|tx| {
                    let mut view = tx
                        .get::<SubmissionView>(&account, T_SUBMISSION, &real)?
                        .unwrap_or_default();
                    view.destroyed = true;
                    tx.put(&account, T_SUBMISSION, &real, &view)?;
                    tx.index_queue_id(record.id().0, &account)?;
                    tx.touch(&account, "EmailSubmission", &real, Kind::Destroyed);
                    Ok(())
                })?;
                succeeded.push((id.clone(), link.email_id.clone()));
                succeeded.push((real.clone(), link.email_id));
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
        out.extend(email_set::set(ctx, Args(implicit))?);
    }
    Ok(out)
}
