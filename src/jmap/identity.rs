//! Identities (RFC 8621 §6): the account's identities from the config, with what a client
//! changed through `Identity/set` (name, signatures, replyTo, bcc) laid over them. The
//! signatures set here are the ones the sender injects ([`SignatureSource`]). Identities are
//! created and deleted only in the config.

use serde_json::{json, Map, Value};

use super::api::{
    check_if_in_state, get_ids, invalid_properties, select, set_args, set_error, Args, Ctx,
    MethodResult,
};
use super::store::{state_string, Kind, Store, T_IDENTITY};
use crate::accounts::{Identity, IdentityScope};
use crate::sender::SignatureSource;

const PROPERTIES: [&str; 8] = [
    "id",
    "name",
    "email",
    "replyTo",
    "bcc",
    "textSignature",
    "htmlSignature",
    "mayDelete",
];

/// The overridable properties.
const MUTABLE: [&str; 5] = ["name", "replyTo", "bcc", "textSignature", "htmlSignature"];

/// The JMAP `email` of an identity: a domain identity is `*@domain` (RFC 8621 §6).
pub fn email_of(identity: &Identity) -> String {
    match &identity.scope {
        IdentityScope::Address(a) => a.clone(),
        IdentityScope::Domain(d) => format!("*@{d}"),
    }
}

/// Whether `identity` may send as `address`.
pub fn covers(identity: &Identity, address: &str) -> bool {
    let address = address.trim().to_lowercase();
    match &identity.scope {
        IdentityScope::Address(a) => *a == address,
        IdentityScope::Domain(d) => address.rsplit_once('@').is_some_and(|(_, dom)| dom == d),
    }
}

fn object(identity: &Identity, over: &Map<String, Value>) -> Value {
    let mut o = json!({
        "id": identity.id,
        "name": identity.name,
        "email": email_of(identity),
        "replyTo": null,
        "bcc": null,
        "textSignature": identity.text_signature.clone().unwrap_or_default(),
        "htmlSignature": identity.html_signature.clone().unwrap_or_default(),
        "mayDelete": false,
    });
    for (k, v) in over {
        o[k] = v.clone();
    }
    o
}

pub fn get(ctx: &mut Ctx, args: Args) -> MethodResult {
    args.check(ctx, &["ids", "properties"])?;
    let ids = get_ids(&args)?;
    let rx = ctx.jmap.store.read()?;
    let account = ctx.account_id().to_string();
    let mut list = Vec::new();
    let mut not_found = Vec::new();
    let overrides = |id: &str| -> anyhow::Result<Map<String, Value>> {
        Ok(rx.get(&account, T_IDENTITY, id)?.unwrap_or_default())
    };
    match ids {
        None => {
            for i in &ctx.account.identities {
                list.push(object(i, &overrides(&i.id)?));
            }
        }
        Some(ids) => {
            for id in ids {
                match ctx.account.identity(&id) {
                    Some(i) => list.push(object(i, &overrides(&i.id)?)),
                    None => not_found.push(id),
                }
            }
        }
    }
    let list = select(list, args.ids("properties")?, &PROPERTIES)?;
    Ok(vec![(
        "Identity/get",
        json!({"accountId": account, "state": state_string(rx.state(&account, "Identity")?),
               "list": list, "notFound": not_found}),
    )])
}

fn valid_addresses(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.iter().all(|x| {
            x.get("email")
                .and_then(Value::as_str)
                .is_some_and(super::mime::valid_address)
                && x.get("name").is_none_or(|n| n.is_null() || n.is_string())
        }),
        _ => false,
    }
}

pub fn set(ctx: &mut Ctx, args: Args) -> MethodResult {
    args.check(ctx, &["ifInState", "create", "update", "destroy"])?;
    let sets = set_args(&args)?;
    let old_state = check_if_in_state(ctx, &args, "Identity")?;
    let account = ctx.account_id().to_string();
    let mut not_created = Map::new();
    for (cid, _) in &sets.create {
        not_created.insert(
            cid.clone(),
            set_error(
                "forbidden",
                "identities are created in the server's configuration",
            ),
        );
    }
    let mut not_destroyed = Map::new();
    for id in &sets.destroy {
        not_destroyed.insert(
            id.clone(),
            set_error(
                "forbidden",
                "identities are removed in the server's configuration",
            ),
        );
    }
    let mut updated = Map::new();
    let mut not_updated = Map::new();
    let identities = ctx.account.identities.clone();
    ctx.jmap.store.write(|tx| {
        for (id, patch) in &sets.update {
            if !identities.iter().any(|i| &i.id == id) {
                not_updated.insert(
                    id.clone(),
                    set_error("notFound", format!("no identity {id}")),
                );
                continue;
            }
            let mut over: Map<String, Value> =
                tx.get(&account, T_IDENTITY, id)?.unwrap_or_default();
            let mut error = None;
            for (k, v) in patch {
                let ok = match k.as_str() {
                    "name" | "textSignature" | "htmlSignature" => v.is_string(),
                    "replyTo" | "bcc" => valid_addresses(v),
                    _ => false,
                };
                if !ok {
                    error = Some(if MUTABLE.contains(&k.as_str()) {
                        invalid_properties(&[k], format!("invalid value for {k}"))
                    } else {
                        invalid_properties(&[k], format!("{k} cannot be changed"))
                    });
                    break;
                }
                over.insert(k.clone(), v.clone());
            }
            match error {
                Some(e) => {
                    not_updated.insert(id.clone(), e);
                }
                None => {
                    tx.put(&account, T_IDENTITY, id, &over)?;
                    tx.touch(&account, "Identity", id, Kind::Updated);
                    updated.insert(id.clone(), Value::Null);
                }
            }
        }
        Ok(())
    })?;
    let new_state = state_string(ctx.jmap.store.read()?.state(&account, "Identity")?);
    Ok(vec![(
        "Identity/set",
        json!({
            "accountId": account,
            "oldState": old_state,
            "newState": new_state,
            "created": {},
            "updated": updated,
            "destroyed": [],
            "notCreated": not_created,
            "notUpdated": not_updated,
            "notDestroyed": not_destroyed,
        }),
    )])
}

/// The sender asks the store for signatures a client set; an empty string removes one.
impl SignatureSource for Store {
    fn signatures(
        &self,
        account_id: &str,
        identity: &Identity,
    ) -> Option<(Option<String>, Option<String>)> {
        let over: Map<String, Value> = match self
            .read()
            .and_then(|rx| rx.get(account_id, T_IDENTITY, &identity.id))
        {
            Ok(o) => o?,
            Err(e) => {
                tracing::warn!(error = %e, identity = %identity.id, "reading identity overrides failed; using the configured signatures");
                return None;
            }
        };
        let pick = |key: &str, configured: &Option<String>| match over.get(key) {
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            _ => configured.clone(),
        };
        Some((
            pick("textSignature", &identity.text_signature),
            pick("htmlSignature", &identity.html_signature),
        ))
    }
}
