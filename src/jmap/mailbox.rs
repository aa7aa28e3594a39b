//! Mailboxes (RFC 8621 §2): a sending bridge needs exactly two, Drafts and Sent, fixed and
//! with their roles. Counts come from the account's Emails; the Mailbox state moves whenever
//! an Email enters or leaves one or changes `$seen`.

use serde_json::{json, Value};

use super::api::{get_ids, select, Args, Ctx, MethodError, MethodResult};
use super::email::{load_all, EmailMeta};
use super::store::state_string;

pub const DRAFTS: &str = "drafts";
pub const SENT: &str = "sent";

/// (id, name, role, sortOrder)
pub const MAILBOXES: [(&str, &str, &str, u32); 2] =
    [(DRAFTS, "Drafts", "drafts", 1), (SENT, "Sent", "sent", 2)];

const PROPERTIES: [&str; 11] = [
    "id",
    "name",
    "parentId",
    "role",
    "sortOrder",
    "totalEmails",
    "unreadEmails",
    "totalThreads",
    "unreadThreads",
    "myRights",
    "isSubscribed",
];

pub fn exists(id: &str) -> bool {
    MAILBOXES.iter().any(|m| m.0 == id)
}

fn object(id: &str, name: &str, role: &str, sort: u32, emails: &[(String, EmailMeta)]) -> Value {
    let inside: Vec<&EmailMeta> = emails
        .iter()
        .map(|(_, m)| m)
        .filter(|m| m.mailbox_ids.contains(id))
        .collect();
    let total = inside.len();
    let unread = inside
        .iter()
        .filter(|m| !m.keywords.contains("$seen"))
        .count();
    json!({
        "id": id,
        "name": name,
        "parentId": null,
        "role": role,
        "sortOrder": sort,
        "totalEmails": total,
        "unreadEmails": unread,
        // Every Email is its own thread.
        "totalThreads": total,
        "unreadThreads": unread,
        "myRights": {
            "mayReadItems": true,
            "mayAddItems": true,
            "mayRemoveItems": true,
            "maySetSeen": true,
            "maySetKeywords": true,
            "mayCreateChild": false,
            "mayRename": false,
            "mayDelete": false,
            "maySubmit": true,
        },
        "isSubscribed": true,
    })
}

pub fn get(ctx: &mut Ctx, args: Args) -> MethodResult {
    args.check(ctx, &["ids", "properties"])?;
    let ids = get_ids(&args)?;
    let rx = ctx.jmap.store.read()?;
    let state = state_string(rx.state(ctx.account_id(), "Mailbox")?);
    let emails = load_all(&rx, ctx.account_id())?;
    let mut list = Vec::new();
    let mut not_found = Vec::new();
    match &ids {
        None => {
            for (id, name, role, sort) in MAILBOXES {
                list.push(object(id, name, role, sort, &emails));
            }
        }
        Some(ids) => {
            for want in ids {
                match MAILBOXES.iter().find(|m| m.0 == want) {
                    Some((id, name, role, sort)) => {
                        list.push(object(id, name, role, *sort, &emails))
                    }
                    None => not_found.push(want.clone()),
                }
            }
        }
    }
    let list = select(list, args.ids("properties")?, &PROPERTIES)?;
    Ok(vec![(
        "Mailbox/get",
        json!({"accountId": ctx.account_id(), "state": state, "list": list, "notFound": not_found}),
    )])
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
            "sortAsTree",
            "filterAsTree",
        ],
    )?;
    let filter = args.object("filter")?.cloned().unwrap_or_default();
    let mut ids = Vec::new();
    for (id, name, role, _) in MAILBOXES {
        let mut keep = true;
        for (k, v) in &filter {
            keep &= match (k.as_str(), v) {
                ("role", Value::Null) => false,
                ("role", Value::String(r)) => r == role,
                ("hasAnyRole", Value::Bool(b)) => *b,
                ("parentId", Value::Null) => true,
                ("parentId", Value::String(_)) => false,
                ("name", Value::String(n)) => name.to_lowercase().contains(&n.to_lowercase()),
                ("isSubscribed", Value::Bool(b)) => *b,
                _ => {
                    return Err(MethodError::new(
                        "unsupportedFilter",
                        format!("unsupported filter {k}"),
                    ))
                }
            };
        }
        if keep {
            ids.push(id);
        }
    }
    if let Some(Value::Array(sort)) = args.get("sort") {
        for s in sort {
            match s.get("property").and_then(Value::as_str) {
                Some("sortOrder") | Some("name") => {}
                _ => {
                    return Err(MethodError::new(
                        "unsupportedSort",
                        "sort by sortOrder or name",
                    ))
                }
            }
            if s.get("isAscending") == Some(&Value::Bool(false)) {
                ids.reverse();
            }
        }
    }
    let state = state_string(ctx.jmap.store.read()?.state(ctx.account_id(), "Mailbox")?);
    let total = ids.len();
    let position = args.uint("position")?.unwrap_or(0) as usize;
    let ids: Vec<&str> = ids.into_iter().skip(position).collect();
    let mut out = json!({
        "accountId": ctx.account_id(),
        "queryState": state,
        "canCalculateChanges": false,
        "position": position.min(total),
        "ids": ids,
    });
    if args.bool("calculateTotal")? {
        out["total"] = json!(total);
    }
    Ok(vec![("Mailbox/query", out)])
}
