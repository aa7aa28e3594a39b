//! The API endpoint (RFC 8620 §3): parse the request, refuse it whole with a problem document
//! when it is not one (§3.6.1), then run each method call in order — resolving result
//! references (§3.7) and creation ids — and collect the responses, turning every failure
//! into a method-level error (§3.6.2). Nothing here panics on input: bad JSON, deep nesting
//! (serde_json's recursion limit), wrong types all become errors.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::store::{parse_state, state_string, Kind};
use super::{limits, problem, Jmap, CAP_CORE, CAP_MAIL, CAP_MESSAGE_CLASS, CAP_SUBMISSION};
use crate::accounts::Account;

const ERR: &str = "urn:ietf:params:jmap:error:";

/// IANA-registered JMAP capabilities we do not serve but accept in `using` (their methods are
/// `unknownMethod`): Stalwart's jmap-client names all of them in every request, and refusing
/// the whole request for a capability no call uses would lock that client out.
const TOLERATED_CAPABILITIES: [&str; 10] = [
    "urn:ietf:params:jmap:vacationresponse",
    "urn:ietf:params:jmap:contacts",
    "urn:ietf:params:jmap:calendars",
    "urn:ietf:params:jmap:websocket",
    "urn:ietf:params:jmap:sieve",
    "urn:ietf:params:jmap:blob",
    "urn:ietf:params:jmap:quota",
    "urn:ietf:params:jmap:principals",
    "urn:ietf:params:jmap:principals:owner",
    "urn:ietf:params:jmap:mdn",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Request {
    pub(crate) using: Vec<String>,
    #[serde(rename = "methodCalls")]
    pub(crate) method_calls: Vec<(String, Map<String, Value>, String)>,
    #[serde(rename = "createdIds", default)]
    pub(crate) created_ids: Option<HashMap<String, String>>,
}

/// A method-level error (RFC 8620 §3.6.2).
#[derive(Debug)]
pub struct MethodError {
    pub kind: &'static str,
    pub description: Option<String>,
    pub extra: Option<(&'static str, Value)>,
}

impl MethodError {
    pub fn new(kind: &'static str, description: impl Into<String>) -> Self {
        MethodError {
            kind,
            description: Some(description.into()),
            extra: None,
        }
    }
    pub fn invalid(description: impl Into<String>) -> Self {
        Self::new("invalidArguments", description)
    }
    pub fn server(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "JMAP method failed");
        Self::new("serverFail", "internal error; see the server log")
    }
    fn to_json(&self) -> Value {
        let mut v = json!({"type": self.kind});
        if let Some(d) = &self.description {
            v["description"] = json!(d);
        }
        if let Some((k, x)) = &self.extra {
            v[*k] = x.clone();
        }
        v
    }
}

impl From<anyhow::Error> for MethodError {
    fn from(e: anyhow::Error) -> Self {
        MethodError::server(format!("{e:#}"))
    }
}

pub type MethodResult = Result<Vec<(&'static str, Value)>, MethodError>;

/// What a method call sees.
pub struct Ctx<'a> {
    pub jmap: &'a Jmap,
    pub account: &'a Arc<Account>,
    /// Creation id → server id, for `#x` references across the request.
    pub created_ids: &'a mut HashMap<String, String>,
    pub peer: Option<SocketAddr>,
}

impl Ctx<'_> {
    pub fn account_id(&self) -> &str {
        &self.account.account_id
    }
    /// `#creationId` → the id it created; other ids as they are.
    pub fn resolve_id(&self, id: &str) -> Option<String> {
        match id.strip_prefix('#') {
            Some(c) => self.created_ids.get(c).cloned(),
            None => Some(id.to_string()),
        }
    }
}

/// A method's arguments with typed accessors and a check for unknown ones.
pub struct Args(pub Map<String, Value>);

impl Args {
    /// Refuses arguments not in `known` (RFC 8620 §3.6.2 invalidArguments) and checks the
    /// `accountId` is the caller's (`accountNotFound` otherwise).
    pub fn check(&self, ctx: &Ctx, known: &[&str]) -> Result<(), MethodError> {
        for k in self.0.keys() {
            if k != "accountId" && !known.contains(&k.as_str()) {
                return Err(MethodError::invalid(format!("unknown argument {k}")));
            }
        }
        match self.0.get("accountId") {
            Some(Value::String(id)) if id == ctx.account_id() => Ok(()),
            Some(Value::String(_)) => Err(MethodError::new("accountNotFound", "no such account")),
            _ => Err(MethodError::invalid("accountId must be a string")),
        }
    }
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }
    pub fn str(&self, key: &str) -> Result<Option<&str>, MethodError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(MethodError::invalid(format!("{key} must be a string"))),
        }
    }
    pub fn ids(&self, key: &str) -> Result<Option<Vec<String>>, MethodError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(String::from))
                .collect::<Option<Vec<_>>>()
                .map(Some)
                .ok_or_else(|| MethodError::invalid(format!("{key} must be a list of strings"))),
            Some(_) => Err(MethodError::invalid(format!("{key} must be a list"))),
        }
    }
    pub fn uint(&self, key: &str) -> Result<Option<u64>, MethodError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| MethodError::invalid(format!("{key} must be an unsigned integer"))),
        }
    }
    pub fn int(&self, key: &str) -> Result<Option<i64>, MethodError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| MethodError::invalid(format!("{key} must be an integer"))),
        }
    }
    pub fn bool(&self, key: &str) -> Result<bool, MethodError> {
        match self.get(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(MethodError::invalid(format!("{key} must be a boolean"))),
        }
    }
    pub fn object(&self, key: &str) -> Result<Option<&Map<String, Value>>, MethodError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(_) => Err(MethodError::invalid(format!("{key} must be an object"))),
        }
    }
}

/// Runs one API request; `Err` is a request-level problem response.
pub async fn handle(
    jmap: &Jmap,
    account: &Arc<Account>,
    peer: Option<SocketAddr>,
    body: &[u8],
) -> Result<Value, Response> {
    let limit = |detail: &str, which: &str| {
        problem(
            StatusCode::BAD_REQUEST,
            &format!("{ERR}limit"),
            detail,
            Some(("limit", json!(which))),
        )
    };
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        problem(
            StatusCode::BAD_REQUEST,
            &format!("{ERR}notJSON"),
            &format!("the request is not valid JSON: {e}"),
            None,
        )
    })?;
    let request: Request = serde_json::from_value(value).map_err(|e| {
        problem(
            StatusCode::BAD_REQUEST,
            &format!("{ERR}notRequest"),
            &format!("the JSON is not a JMAP Request: {e}"),
            None,
        )
    })?;
    for cap in &request.using {
        let served =
            [CAP_CORE, CAP_MAIL, CAP_SUBMISSION, CAP_MESSAGE_CLASS].contains(&cap.as_str());
        if !served && !TOLERATED_CAPABILITIES.contains(&cap.as_str()) {
            return Err(problem(
                StatusCode::BAD_REQUEST,
                &format!("{ERR}unknownCapability"),
                &format!("unsupported capability {cap}"),
                None,
            ));
        }
    }
    if request.method_calls.len() > limits::MAX_CALLS_IN_REQUEST {
        return Err(limit(
            "too many method calls in the request",
            "maxCallsInRequest",
        ));
    }
    let mut created_ids = request.created_ids.clone().unwrap_or_default();
    let mut responses: Vec<(String, Value, String)> = Vec::new();
    let mut response_size = 0usize;
    for (name, args, call_id) in request.method_calls {
        let result = match resolve_references(args, &responses, jmap.max_request_size) {
            Ok(args) => {
                if let Some(cap) =
                    capability_of(&name).filter(|c| !request.using.iter().any(|u| u == c))
                {
                    Err(MethodError::new(
                        "unknownMethod",
                        format!("{name} needs {cap} in \"using\""),
                    ))
                } else {
                    let mut ctx = Ctx {
                        jmap,
                        account,
                        created_ids: &mut created_ids,
                        peer,
                    };
                    dispatch(&mut ctx, &name, Args(args)).await
                }
            }
            Err(e) => Err(e),
        };
        let out = match result {
            Ok(out) => out.into_iter().map(|(n, v)| (n.to_string(), v)).collect(),
            Err(e) => vec![("error".to_string(), e.to_json())],
        };
        for (n, v) in out {
            let size = json_size(&v);
            if response_size.saturating_add(size) > jmap.max_response_size {
                tracing::info!(method = %name, size, "JMAP response over the size limit");
                let e = MethodError::new(
                    "requestTooLarge",
                    format!(
                        "the response would pass {} octets; ask for less",
                        jmap.max_response_size
                    ),
                );
                responses.push(("error".into(), e.to_json(), call_id.clone()));
                continue;
            }
            response_size += size;
            responses.push((n, v, call_id.clone()));
        }
    }
    let mut out = json!({
        // Moved, not copied: `json!` would clone each response.
        "methodResponses": Value::Array(
            responses
                .into_iter()
                .map(|(n, v, c)| Value::Array(vec![Value::String(n), v, Value::String(c)]))
                .collect(),
        ),
        "sessionState": super::session_object(jmap, account, "")["state"].clone(),
    });
    if request.created_ids.is_some() {
        out["createdIds"] = json!(created_ids);
    }
    Ok(out)
}

fn capability_of(method: &str) -> Option<&'static str> {
    match method.split_once('/')?.0 {
        "Core" => Some(CAP_CORE),
        "Mailbox" | "Email" | "Thread" => Some(CAP_MAIL),
        "Identity" | "EmailSubmission" => Some(CAP_SUBMISSION),
        _ => None,
    }
}

async fn dispatch(ctx: &mut Ctx<'_>, name: &str, args: Args) -> MethodResult {
    use super::{email, email_set, identity, mailbox, submission};
    match name {
        "Core/echo" => Ok(vec![("Core/echo", Value::Object(args.0))]),
        "Mailbox/get" => mailbox::get(ctx, args),
        "Mailbox/query" => mailbox::query(ctx, args),
        "Mailbox/changes" => changes(ctx, args, "Mailbox", "Mailbox/changes"),
        "Email/get" => email::get(ctx, args),
        "Email/query" => email::query(ctx, args),
        "Email/changes" => changes(ctx, args, "Email", "Email/changes"),
        "Email/set" => email_set::set(ctx, args),
        "Email/import" => email_set::import(ctx, args),
        "Thread/get" => email::thread_get(ctx, args),
        "Thread/changes" => changes(ctx, args, "Email", "Thread/changes"),
        "Identity/get" => identity::get(ctx, args),
        "Identity/set" => identity::set(ctx, args),
        "Identity/changes" => changes(ctx, args, "Identity", "Identity/changes"),
        "EmailSubmission/get" => submission::get(ctx, args).await,
        "EmailSubmission/set" => submission::set(ctx, args).await,
        "EmailSubmission/query" => submission::query(ctx, args).await,
        "EmailSubmission/queryChanges" => submission::query_changes(ctx, args).await,
        "EmailSubmission/changes" => {
            changes(ctx, args, "EmailSubmission", "EmailSubmission/changes")
        }
        _ => Err(MethodError::new(
            "unknownMethod",
            format!("unknown method {name}"),
        )),
    }
}

/// Octets `value` takes as JSON, counted without building the text.
fn json_size(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// RFC 8620 §3.7: replaces every `#name` argument by the value its reference points at. The
/// values one call's references copy in may add up to at most `max_size` octets (the
/// `maxSizeRequest` the call could have been sent with): several references to one large
/// result would otherwise multiply it.
pub(crate) fn resolve_references(
    args: Map<String, Value>,
    responses: &[(String, Value, String)],
    max_size: usize,
) -> Result<Map<String, Value>, MethodError> {
    let mut copied = 0usize;
    for key in args.keys() {
        if key.starts_with('#') && args.contains_key(&key[1..]) {
            return Err(MethodError::invalid(format!(
                "{} is given both directly and as a result reference",
                &key[1..]
            )));
        }
    }
    let mut out = Map::new();
    for (key, value) in args {
        let Some(plain) = key.strip_prefix('#') else {
            out.insert(key, value);
            continue;
        };
        let bad = |why: &str| MethodError::new("invalidResultReference", why.to_string());
        let r = value
            .as_object()
            .ok_or_else(|| bad("a result reference must be an object"))?;
        let (Some(Value::String(of)), Some(Value::String(name)), Some(Value::String(path))) =
            (r.get("resultOf"), r.get("name"), r.get("path"))
        else {
            return Err(bad("a result reference needs resultOf, name and path"));
        };
        let (_, response, _) = responses
            .iter()
            .find(|(n, _, c)| c == of && n == name)
            .ok_or_else(|| bad("no earlier response matches resultOf and name"))?;
        let resolved =
            pointer(response, path).ok_or_else(|| bad("the path matches nothing in the result"))?;
        copied = copied.saturating_add(json_size(&resolved));
        if copied > max_size {
            return Err(MethodError::new(
                "requestTooLarge",
                format!("result references expand past {max_size} octets (maxSizeRequest)"),
            ));
        }
        out.insert(plain.to_string(), resolved);
    }
    Ok(out)
}

/// A JSON pointer with the JMAP `*` extension: `*` applied to an array maps the rest of the
/// path over its items and flattens arrays that result.
pub fn pointer(value: &Value, path: &str) -> Option<Value> {
    if path.is_empty() {
        return Some(value.clone());
    }
    let rest = path.strip_prefix('/')?;
    let (token, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let token = token.replace("~1", "/").replace("~0", "~");
    match value {
        Value::Array(items) if token == "*" => {
            let mut out = Vec::new();
            for item in items {
                match pointer(item, tail)? {
                    Value::Array(inner) => out.extend(inner),
                    other => out.push(other),
                }
            }
            Some(Value::Array(out))
        }
        Value::Array(items) => pointer(items.get(token.parse::<usize>().ok()?)?, tail),
        Value::Object(map) => pointer(map.get(&token)?, tail),
        _ => None,
    }
}

/// `Foo/changes` (RFC 8620 §5.2) from the store's change log of `ty`.
pub fn changes(ctx: &mut Ctx, args: Args, ty: &str, name: &'static str) -> MethodResult {
    args.check(ctx, &["sinceState", "maxChanges"])?;
    let since = args
        .str("sinceState")?
        .ok_or_else(|| MethodError::invalid("sinceState is required"))?;
    let max = match args.uint("maxChanges")? {
        Some(0) => return Err(MethodError::invalid("maxChanges must be positive")),
        Some(n) => (n as usize).min(limits::MAX_CHANGES),
        None => limits::MAX_CHANGES,
    };
    let rx = ctx.jmap.store.read()?;
    let current = rx.state(ctx.account_id(), ty)?;
    let cannot = || MethodError::new("cannotCalculateChanges", "unknown sinceState");
    let since_n = parse_state(since).ok_or_else(cannot)?;
    if since_n > current || current - since_n > super::store::CHANGE_LOG_KEEP {
        return Err(cannot());
    }
    let mut created: Vec<String> = Vec::new();
    let mut updated: Vec<String> = Vec::new();
    let mut destroyed: Vec<String> = Vec::new();
    let mut new_state = since_n;
    let mut count = 0;
    let mut more = false;
    for (state, entries) in rx.changes(ctx.account_id(), ty, since_n)? {
        if count > 0 && count + entries.len() > max {
            more = true;
            break;
        }
        count += entries.len();
        new_state = state;
        for (id, kind) in entries {
            match kind {
                Kind::Created => {
                    destroyed.retain(|d| d != &id);
                    if !created.contains(&id) {
                        created.push(id);
                    }
                }
                Kind::Updated => {
                    if !created.contains(&id) && !updated.contains(&id) {
                        updated.push(id);
                    }
                }
                Kind::Destroyed => {
                    updated.retain(|u| u != &id);
                    if let Some(p) = created.iter().position(|c| c == &id) {
                        created.remove(p);
                    } else if !destroyed.contains(&id) {
                        destroyed.push(id);
                    }
                }
            }
        }
    }
    let mut out = json!({
        "accountId": ctx.account_id(),
        "oldState": since,
        "newState": state_string(new_state),
        "hasMoreChanges": more,
        "created": created,
        "updated": updated,
        "destroyed": destroyed,
    });
    if ty == "Mailbox" {
        out["updatedProperties"] = Value::Null;
    }
    Ok(vec![(name, out)])
}

/// Keeps only `properties` (always with `id`) of each object; unknown names are refused.
pub fn select(
    objects: Vec<Value>,
    properties: Option<Vec<String>>,
    known: &[&str],
) -> Result<Vec<Value>, MethodError> {
    let Some(props) = properties else {
        return Ok(objects);
    };
    for p in &props {
        // `header:…` properties exist only where raw headers do (Email).
        let header = p.starts_with("header:") && known.contains(&"headers");
        if !known.contains(&p.as_str()) && !header {
            return Err(MethodError::invalid(format!("unknown property {p}")));
        }
    }
    Ok(objects
        .into_iter()
        .map(|o| {
            let mut out = Map::new();
            if let Some(id) = o.get("id") {
                out.insert("id".into(), id.clone());
            }
            for p in &props {
                if let Some(v) = o.get(p) {
                    out.insert(p.clone(), v.clone());
                }
            }
            Value::Object(out)
        })
        .collect())
}

/// The ids a `/get` asks for, within maxObjectsInGet (`None`: all).
pub fn get_ids(args: &Args) -> Result<Option<Vec<String>>, MethodError> {
    let ids = args.ids("ids")?;
    if ids
        .as_ref()
        .is_some_and(|i| i.len() > limits::MAX_OBJECTS_IN_GET)
    {
        return Err(MethodError {
            kind: "requestTooLarge",
            description: Some(format!(
                "at most {} ids per get",
                limits::MAX_OBJECTS_IN_GET
            )),
            extra: None,
        });
    }
    Ok(ids)
}

/// (creation id or id, object or patch) pairs of a `/set`.
pub type SetObjects = Vec<(String, Map<String, Value>)>;

/// A `/set`'s create, update and destroy, within maxObjectsInSet.
pub struct SetArgs {
    pub create: SetObjects,
    pub update: SetObjects,
    pub destroy: Vec<String>,
}

pub fn set_args(args: &Args) -> Result<SetArgs, MethodError> {
    let objects = |key: &str| -> Result<SetObjects, MethodError> {
        let Some(map) = args.object(key)? else {
            return Ok(Vec::new());
        };
        map.iter()
            .map(|(k, v)| match v {
                Value::Object(o) => Ok((k.clone(), o.clone())),
                _ => Err(MethodError::invalid(format!("{key}.{k} must be an object"))),
            })
            .collect()
    };
    let set = SetArgs {
        create: objects("create")?,
        update: objects("update")?,
        destroy: args.ids("destroy")?.unwrap_or_default(),
    };
    if set.create.len() + set.update.len() + set.destroy.len() > limits::MAX_OBJECTS_IN_SET {
        return Err(MethodError::new(
            "requestTooLarge",
            format!("at most {} objects per set", limits::MAX_OBJECTS_IN_SET),
        ));
    }
    Ok(set)
}

/// Checks `ifInState` against the current state of `ty`.
pub fn check_if_in_state(ctx: &Ctx, args: &Args, ty: &str) -> Result<String, MethodError> {
    let current = state_string(ctx.jmap.store.read()?.state(ctx.account_id(), ty)?);
    if let Some(want) = args.str("ifInState")? {
        if want != current {
            return Err(MethodError::new(
                "stateMismatch",
                "ifInState does not match",
            ));
        }
    }
    Ok(current)
}

/// A SetError (RFC 8620 §5.3).
pub fn set_error(kind: &str, description: impl Into<String>) -> Value {
    json!({"type": kind, "description": description.into()})
}

/// A `serverFail` SetError: the client gets a short, safe text; the log keeps the detail
/// (storage and SDK error chains are not for clients).
pub fn server_fail(e: impl std::fmt::Display) -> Value {
    tracing::error!(error = %e, "JMAP object could not be processed");
    set_error("serverFail", "internal error; see the server log")
}

pub fn invalid_properties(props: &[&str], description: impl Into<String>) -> Value {
    json!({"type": "invalidProperties", "properties": props, "description": description.into()})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers() {
        let v = json!({"list": [{"id": "a", "x": [1, 2]}, {"id": "b", "x": [3]}], "ids": ["p", "q"], "a/b": 7});
        assert_eq!(pointer(&v, "/ids").unwrap(), json!(["p", "q"]));
        assert_eq!(pointer(&v, "/list/*/id").unwrap(), json!(["a", "b"]));
        assert_eq!(pointer(&v, "/list/*/x").unwrap(), json!([1, 2, 3]));
        assert_eq!(pointer(&v, "/list/1/id").unwrap(), json!("b"));
        assert_eq!(pointer(&v, "/a~1b").unwrap(), json!(7));
        assert!(pointer(&v, "/nope").is_none());
        assert!(pointer(&v, "/list/9").is_none());
        assert!(pointer(&v, "ids").is_none());
    }

    #[test]
    fn references_resolve_against_earlier_responses() {
        let responses = vec![(
            "Email/query".to_string(),
            json!({"ids": ["M1", "M2"]}),
            "q".to_string(),
        )];
        let mut args = Map::new();
        args.insert(
            "#ids".into(),
            json!({"resultOf": "q", "name": "Email/query", "path": "/ids"}),
        );
        let out = resolve_references(args.clone(), &responses, 1 << 20).unwrap();
        assert_eq!(out["ids"], json!(["M1", "M2"]));
        args.insert(
            "#ids".into(),
            json!({"resultOf": "q", "name": "Email/get", "path": "/ids"}),
        );
        let e = resolve_references(args, &responses, 1 << 20).unwrap_err();
        assert_eq!(e.kind, "invalidResultReference");
    }
}
