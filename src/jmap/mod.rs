//! The JMAP bridge (RFC 8620 core, RFC 8621 mail and submission, as far as sending needs):
//! a JMAP client puts a draft in Drafts, picks an identity, calls `EmailSubmission/set`, and
//! watches the submission go from queued to sent to delivered — through the same submitter,
//! spool and senders as SMTP.
//!
//! - [`store`]: `<state_dir>/jmap.redb` — Emails, blobs, identity overrides, submission links,
//!   bearer tokens, states and change logs.
//! - [`auth`]: HTTP Basic (the SMTP accounts, with a short in-memory cache) and bearer tokens.
//! - [`api`]: the API endpoint — request-level errors, result references, dispatch.
//! - [`mailbox`], [`email`] (reading) and [`email_set`] (writing, import), [`identity`],
//!   [`submission`] with [`submission_rules`] (the checks before queueing) and
//!   [`submission_status`] (undoStatus, deliveryStatus): one module per data type.
//! - [`mime`]: an Email/set create object turned into MIME.
//! - [`push`]: EventSource, and the ledger watcher that moves sent drafts to Sent.
//!
//! Routes: `GET /.well-known/jmap` (session), `POST /jmap/api`, `POST /jmap/upload/{account}/`,
//! `GET /jmap/download/{account}/{blob}/{name}`, `GET /jmap/eventsource`, `POST|DELETE
//! /jmap/token` (bearer tokens). Everything needs authentication.

pub mod api;
pub mod auth;
pub mod body_structure;
pub mod email;
pub mod email_set;
pub mod identity;
pub mod mailbox;
pub mod mime;
pub mod push;
pub mod store;
pub mod submission;
pub mod submission_rules;
pub mod submission_status;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::request::Parts as RequestParts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::accounts::{Account, Directory, PasswordChecker};
use crate::clock::Clock;
use crate::domain::MessageClass;
use crate::live::Live;
use crate::spool::Spool;
use crate::submission::Submitter;

pub use store::Store;

/// Our capability: the `messageClass` property of EmailSubmission.
pub const CAP_MESSAGE_CLASS: &str = "urn:outbox:params:jmap:message-class";
pub const CAP_CORE: &str = "urn:ietf:params:jmap:core";
pub const CAP_MAIL: &str = "urn:ietf:params:jmap:mail";
pub const CAP_SUBMISSION: &str = "urn:ietf:params:jmap:submission";

/// RFC 8620 §2 core limits we announce and enforce.
pub mod limits {
    /// Parallel API requests per account (each holds a storage transaction or a submission).
    pub const MAX_CONCURRENT_REQUESTS: usize = 4;
    /// Parallel uploads per account (each is bounded by maxSizeUpload).
    pub const MAX_CONCURRENT_UPLOAD: usize = 4;
    /// Method calls in one request.
    pub const MAX_CALLS_IN_REQUEST: usize = 16;
    /// Ids in one `/get`.
    pub const MAX_OBJECTS_IN_GET: usize = 500;
    /// create + update + destroy in one `/set`.
    pub const MAX_OBJECTS_IN_SET: usize = 500;
    /// Largest API response, in octets of JSON. RFC 8620 sets no response limit, but result
    /// references (§3.7) let a request of `maxSizeRequest` copy one large value into every later
    /// call: a 9 MB Core/echo and 15 references to it built a 144 MB response. A call whose
    /// response would pass this gets `requestTooLarge` in its place (and the calls after it
    /// referencing it `invalidResultReference`), so a request holds at most this much.
    pub const MAX_RESPONSE_SIZE: usize = 32 * 1024 * 1024;
    /// Longest page of a `/changes`.
    pub const MAX_CHANGES: usize = 500;
    /// How long an uploaded blob is kept (RFC 8620 §6: at least an hour). Email/set and
    /// Email/import copy what they use, so an expired upload takes no Email with it.
    pub const UPLOAD_TTL_MS: u64 = 24 * 3_600_000;
    /// Room in a message for its headers and text/HTML parts next to the attachments.
    pub const MESSAGE_OVERHEAD: usize = 64 * 1024;

    /// `maxSizeAttachmentsPerEmail`: RFC 8621 §1.3.1 counts the attachments' *unencoded*
    /// octets, and each goes out as base64 in 76-character lines plus CRLF — 78 octets for
    /// every 57 — so a message of `max_message_size` holds at most this much.
    pub fn attachments_per_email(max_message_size: usize) -> usize {
        max_message_size.saturating_sub(MESSAGE_OVERHEAD) / 78 * 57
    }
}

/// Everything the JMAP handlers share.
pub struct Jmap {
    pub store: Arc<Store>,
    pub spool: Spool,
    pub directory: Arc<Live<Directory>>,
    pub submitter: Arc<Submitter>,
    pub clock: Arc<dyn Clock>,
    pub auth: auth::Authenticator,
    /// SES v2: 40 MB per message; also our upload limit.
    pub max_message_size: usize,
    /// SES: 50 recipients per message.
    pub max_recipients: usize,
    /// Longest `sendAt` delay (the SMTP FUTURERELEASE limit).
    pub max_hold_secs: u64,
    /// `maxSizeRequest` (config `http.max_request_size`).
    pub max_request_size: usize,
    /// Largest API response ([`limits::MAX_RESPONSE_SIZE`] when serving).
    pub max_response_size: usize,
    /// `maxSizeUpload` (config `http.max_upload_size`, else the message size limit).
    pub max_upload_size: usize,
    pub hostname: String,
    pub stop: watch::Receiver<bool>,
    requests: auth::InFlight,
    uploads: auth::InFlight,
}

/// What the composition root hands over.
pub struct Parts {
    pub store: Arc<Store>,
    pub spool: Spool,
    pub directory: Arc<Live<Directory>>,
    pub passwords: Arc<PasswordChecker>,
    /// The per-IP failed-login budget shared with SMTP AUTH.
    pub auth_throttle: Arc<crate::smtp::guard::AuthThrottle>,
    pub submitter: Arc<Submitter>,
    pub clock: Arc<dyn Clock>,
    pub max_message_size: usize,
    pub max_recipients: usize,
    pub max_hold_secs: u64,
    pub max_request_size: usize,
    pub max_response_size: usize,
    /// 0: `max_message_size`.
    pub max_upload_size: usize,
    pub hostname: String,
    pub stop: watch::Receiver<bool>,
}

impl Jmap {
    pub fn new(parts: Parts) -> Arc<Jmap> {
        let auth = auth::Authenticator::new(
            parts.directory.clone(),
            parts.passwords,
            parts.store.clone(),
            parts.clock.clone(),
            parts.auth_throttle,
        );
        Arc::new(Jmap {
            store: parts.store,
            spool: parts.spool,
            directory: parts.directory,
            submitter: parts.submitter,
            clock: parts.clock,
            auth,
            max_message_size: parts.max_message_size,
            max_recipients: parts.max_recipients,
            max_hold_secs: parts.max_hold_secs,
            max_request_size: parts.max_request_size,
            max_response_size: parts.max_response_size,
            max_upload_size: match parts.max_upload_size {
                0 => parts.max_message_size,
                n => n,
            },
            hostname: parts.hostname,
            stop: parts.stop,
            requests: auth::InFlight::default(),
            uploads: auth::InFlight::default(),
        })
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
}

/// The JMAP routes; also starts the ledger watcher (Drafts → Sent, push on delivery status).
pub fn router(jmap: Arc<Jmap>) -> Router {
    tokio::spawn(push::watch_ledger(jmap.clone()));
    tokio::spawn(push::expire_uploads(jmap.clone()));
    Router::new()
        .route("/.well-known/jmap", get(session))
        .route("/jmap/session", get(session))
        .route("/jmap/api", post(api_endpoint))
        .route("/jmap/upload/{account}", post(upload))
        .route("/jmap/upload/{account}/", post(upload))
        .route("/jmap/download/{account}/{blob}/{name}", get(download))
        .route("/jmap/eventsource", get(push::eventsource))
        .route(
            "/jmap/token",
            post(auth::issue_token).delete(auth::revoke_token),
        )
        .with_state(jmap)
}

/// RFC 7807 problem details, as RFC 8620 §3.6.1 uses them.
pub fn problem(
    status: StatusCode,
    kind: &str,
    detail: &str,
    extra: Option<(&str, Value)>,
) -> Response {
    let mut body = json!({"type": kind, "status": status.as_u16(), "detail": detail});
    if let Some((k, v)) = extra {
        body[k] = v;
    }
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

fn json_response(value: &Value) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache, no-store, must-revalidate"),
        ],
        value.to_string(),
    )
        .into_response()
}

/// `https://HOST` as the client reached us (a sane Host header), else our hostname.
fn base_url(headers: &HeaderMap, hostname: &str) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        })
        .unwrap_or(hostname);
    format!("https://{host}")
}

async fn session(State(jmap): State<Arc<Jmap>>, parts: RequestParts) -> Response {
    let headers = parts.headers;
    let account = match jmap.auth.authenticate(&headers, &parts.extensions).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    json_response(&session_object(
        &jmap,
        &account,
        &base_url(&headers, &jmap.hostname),
    ))
}

/// The session resource (RFC 8620 §2) for `account`.
pub fn session_object(jmap: &Jmap, account: &Account, base: &str) -> Value {
    let id = &account.account_id;
    let core = json!({
        "maxSizeUpload": jmap.max_upload_size,
        "maxConcurrentUpload": limits::MAX_CONCURRENT_UPLOAD,
        "maxSizeRequest": jmap.max_request_size,
        "maxConcurrentRequests": limits::MAX_CONCURRENT_REQUESTS,
        "maxCallsInRequest": limits::MAX_CALLS_IN_REQUEST,
        "maxObjectsInGet": limits::MAX_OBJECTS_IN_GET,
        "maxObjectsInSet": limits::MAX_OBJECTS_IN_SET,
        "collationAlgorithms": ["i;ascii-casemap", "i;octet"],
    });
    let mail = json!({
        "maxMailboxesPerEmail": 1,
        "maxMailboxDepth": 1,
        "maxSizeMailboxName": 255,
        "maxSizeAttachmentsPerEmail": limits::attachments_per_email(jmap.max_message_size),
        "emailQuerySortOptions": ["receivedAt", "size", "id"],
        "mayCreateTopLevelMailbox": false,
    });
    let submission = json!({
        "maxDelayedSend": jmap.max_hold_secs,
        // RFC 8621 §1.3.2: the EHLO arguments; RFC 4865 §3 gives FUTURERELEASE two, the
        // longest interval and the latest date-time, as our EHLO line does.
        "submissionExtensions": if jmap.max_hold_secs > 0 {
            json!({"FUTURERELEASE": [
                jmap.max_hold_secs.to_string(),
                crate::clock::rfc3339(jmap.now_ms() + jmap.max_hold_secs * 1000),
            ]})
        } else {
            json!({})
        },
    });
    let class =
        json!({"classes": MessageClass::NAMES, "default": MessageClass::default().as_str()});
    // Changes whenever the account's identities (from the config) change.
    let state = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for i in &account.identities {
            i.id.hash(&mut h);
            format!("{:?}", i.scope).hash(&mut h);
        }
        format!("{:x}", h.finish())
    };
    json!({
        "capabilities": {
            CAP_CORE: core,
            CAP_MAIL: {},
            CAP_SUBMISSION: {},
            CAP_MESSAGE_CLASS: {},
        },
        "accounts": {
            id: {
                "name": account.login,
                "isPersonal": true,
                "isReadOnly": false,
                "accountCapabilities": {
                    CAP_MAIL: mail,
                    CAP_SUBMISSION: submission,
                    CAP_MESSAGE_CLASS: class,
                },
            }
        },
        "primaryAccounts": {CAP_MAIL: id, CAP_SUBMISSION: id, CAP_MESSAGE_CLASS: id},
        "username": account.login,
        "apiUrl": format!("{base}/jmap/api"),
        "downloadUrl": format!("{base}/jmap/download/{{accountId}}/{{blobId}}/{{name}}?accept={{type}}"),
        "uploadUrl": format!("{base}/jmap/upload/{{accountId}}/"),
        "eventSourceUrl": format!("{base}/jmap/eventsource?types={{types}}&closeafter={{closeafter}}&ping={{ping}}"),
        "state": state,
    })
}

async fn api_endpoint(State(jmap): State<Arc<Jmap>>, request: Request) -> Response {
    let account = match jmap
        .auth
        .authenticate(request.headers(), request.extensions())
        .await
    {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Some(_slot) = jmap
        .requests
        .enter(&account.account_id, limits::MAX_CONCURRENT_REQUESTS)
    else {
        return problem(
            StatusCode::TOO_MANY_REQUESTS,
            "urn:ietf:params:jmap:error:limit",
            "too many concurrent requests",
            Some(("limit", json!("maxConcurrentRequests"))),
        );
    };
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let body = match axum::body::to_bytes(request.into_body(), jmap.max_request_size).await {
        Ok(b) => b,
        Err(_) => {
            return problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "urn:ietf:params:jmap:error:limit",
                "the request is larger than maxSizeRequest",
                Some(("limit", json!("maxSizeRequest"))),
            )
        }
    };
    match api::handle(&jmap, &account, peer, &body).await {
        Ok(value) => json_response(&value),
        Err(r) => r,
    }
}

/// The account in the path must be the caller's own (no cross-account access); the refusal
/// otherwise.
fn foreign_account(account: &Account, path_account: &str) -> Option<Response> {
    (account.account_id != path_account).then(|| {
        problem(
            StatusCode::NOT_FOUND,
            "urn:ietf:params:jmap:error:accountNotFound",
            "no such account",
            None,
        )
    })
}

async fn upload(
    State(jmap): State<Arc<Jmap>>,
    Path(path_account): Path<String>,
    request: Request,
) -> Response {
    let account = match jmap
        .auth
        .authenticate(request.headers(), request.extensions())
        .await
    {
        Ok(a) => a,
        Err(r) => return r,
    };
    if let Some(r) = foreign_account(&account, &path_account) {
        return r;
    }
    let Some(_slot) = jmap
        .uploads
        .enter(&account.account_id, limits::MAX_CONCURRENT_UPLOAD)
    else {
        return problem(
            StatusCode::TOO_MANY_REQUESTS,
            "urn:ietf:params:jmap:error:limit",
            "too many concurrent uploads",
            Some(("limit", json!("maxConcurrentUpload"))),
        );
    };
    let kind = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    let body = match axum::body::to_bytes(request.into_body(), jmap.max_upload_size).await {
        Ok(b) => b,
        Err(_) => {
            return problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "urn:ietf:params:jmap:error:limit",
                "the upload is larger than maxSizeUpload",
                Some(("limit", json!("maxSizeUpload"))),
            )
        }
    };
    let id = &account.account_id;
    let now = jmap.now_ms();
    let stored = jmap.store.write(|tx| {
        let blob_id = tx.next_id("B")?;
        tx.put_blob(id, &blob_id, &body)?;
        tx.put("", store::T_UPLOAD, &format!("{id}/{blob_id}"), &now)?;
        Ok(blob_id)
    });
    match stored {
        Ok(blob_id) => (
            StatusCode::CREATED,
            [(header::CONTENT_TYPE, "application/json")],
            json!({"accountId": id, "blobId": blob_id, "type": kind, "size": body.len()})
                .to_string(),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "storing an upload failed");
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "about:blank",
                "the upload could not be stored",
                None,
            )
        }
    }
}

async fn download(
    State(jmap): State<Arc<Jmap>>,
    Path((path_account, blob_id, name)): Path<(String, String, String)>,
    parts: RequestParts,
) -> Response {
    let uri = parts.uri;
    let account = match jmap
        .auth
        .authenticate(&parts.headers, &parts.extensions)
        .await
    {
        Ok(a) => a,
        Err(r) => return r,
    };
    if let Some(r) = foreign_account(&account, &path_account) {
        return r;
    }
    let found = email::read_blob(&jmap, &account.account_id, &blob_id);
    match found {
        Ok(Some(bytes)) => {
            let kind = push::query_pairs(&uri)
                .into_iter()
                .find(|(k, _)| k == "accept")
                .map(|(_, v)| v)
                // RFC 8620 §6.2: `type` is what the server sets as Content-Type, parameters
                // included ("text/plain; charset=utf-8"); anything that is not a one-line
                // printable header value falls back to octet-stream.
                .filter(|t| {
                    t.len() < 200
                        && t.contains('/')
                        && t.chars().all(|c| c == ' ' || c.is_ascii_graphic())
                        && axum::http::HeaderValue::from_str(t).is_ok()
                })
                .unwrap_or_else(|| "application/octet-stream".into());
            let name: String = name
                .chars()
                .filter(|c| !c.is_control() && *c != '"' && *c != '\\')
                .take(200)
                .collect();
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, kind)
                .header(
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{name}\""),
                )
                .header(
                    header::CACHE_CONTROL,
                    "private, immutable, max-age=31536000",
                )
                .body(Body::from(bytes))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
        Ok(None) => problem(StatusCode::NOT_FOUND, "about:blank", "no such blob", None),
        Err(e) => {
            tracing::error!(error = %e, "reading a blob failed");
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "about:blank",
                "the blob could not be read",
                None,
            )
        }
    }
}
