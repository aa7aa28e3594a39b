//! The operator console: server-rendered pages under `/console` on the HTTPS listener, for
//! the console's own admin accounts (`[[console.admin]]`, argon2id, role `viewer` or `admin`).
//!
//! - Reading (every role): queue depth and age, the hourly mail-flow chart and the rates
//!   against the guard's thresholds (both from [`Reputation::report`], the one source of
//!   those figures), the queue, held mail, dead letters, suppressions, and one submission's
//!   whole record.
//! - Acting (role `admin` only): retry, hold, release, delete, redrive, remove a suppression,
//!   end a reputation guard hold.
//!   Every action is an [`admin::Request`](crate::admin::Request) handled by
//!   [`admin::handle`](crate::admin::handle), the code behind `outbox queue …` — there is no
//!   second implementation here.
//! - Every POST is same-origin (`Origin`, `Sec-Fetch-Site`) and carries the session's CSRF
//!   token; the login form carries a double-submit token of its own. Logins share the mail
//!   accounts' per-address failure budget ([`AuthThrottle`]) and take at least
//!   `login_min_duration_ms` whatever the outcome.
//! - Responses carry a strict Content-Security-Policy: the pages have no script at all, the
//!   chart is inline SVG ([`chart`]), the one stylesheet is served from here.
//!
//! Off unless `[console]` is configured with at least one admin account.

mod auth;
mod chart;
mod html;
mod pages;
mod reputation;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use serde::Deserialize;

pub use auth::Role;
use auth::{Admins, Session, SessionLimits, Sessions, LOGIN_COOKIE, SESSION_COOKIE};

use crate::admin::{AdminError, Request};
use crate::clock::Clock;
use crate::reputation::Reputation;
use crate::smtp::guard::AuthThrottle;
use crate::spool::Spool;

/// `[console]`: present (with at least one admin) turns the console on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// A session ends after this many seconds without a request.
    #[serde(default = "default_idle")]
    pub session_idle_secs: u64,
    /// A session ends this many seconds after signing in, however busy.
    #[serde(default = "default_lifetime")]
    pub session_lifetime_secs: u64,
    /// Every login answer, right or wrong, takes at least this long (as SMTP AUTH's
    /// `auth_min_duration_ms`): timing tells nothing about which logins exist.
    #[serde(default = "default_login_floor")]
    pub login_min_duration_ms: u64,
    #[serde(default, rename = "admin")]
    pub admins: Vec<ConsoleAdmin>,
}

/// One console account. Its password is its own: mail accounts cannot sign in here.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleAdmin {
    pub login: String,
    /// An argon2id PHC string (`outbox passwd` prints one).
    #[serde(default)]
    pub password_hash: Option<String>,
    /// A file holding the PHC string, relative to the config file.
    #[serde(default)]
    pub password_hash_file: Option<PathBuf>,
    /// `viewer` (the default: read only) or `admin` (may act on the queue).
    #[serde(default)]
    pub role: Role,
}

fn default_idle() -> u64 {
    1800
}
fn default_lifetime() -> u64 {
    12 * 3600
}
fn default_login_floor() -> u64 {
    500
}

/// Sessions held at once at most.
const MAX_SESSIONS: usize = 1000;
/// Largest form body accepted (a login or one action).
const MAX_FORM_BYTES: usize = 16 * 1024;
/// The login form's token lives this long.
const LOGIN_TOKEN_TTL: Duration = Duration::from_secs(600);

/// The console's Content-Security-Policy: nothing but its own stylesheet and same-origin
/// forms; no script, no frames, no inline style.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

impl ConsoleConfig {
    /// Reads `password_hash_file`s, resolving them against the config's folder.
    pub fn resolve_paths(&mut self, base: &Path) -> Result<()> {
        for admin in &mut self.admins {
            if let Some(file) = &mut admin.password_hash_file {
                if file.is_relative() {
                    *file = base.join(&*file);
                }
                let hash = std::fs::read_to_string(&*file)
                    .with_context(|| format!("reading {}", file.display()))?;
                admin.password_hash = Some(hash.trim().to_string());
            }
        }
        Ok(())
    }

    /// What is wrong with the section, each problem with its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.admins.is_empty() {
            problems.push("console: give at least one [[console.admin]] account".to_string());
        }
        let mut logins = std::collections::HashSet::new();
        for admin in &self.admins {
            if admin.login.is_empty() || !logins.insert(admin.login.to_lowercase()) {
                problems.push(format!(
                    "console.admin {:?}: empty, or given twice",
                    admin.login
                ));
            }
            if !admin
                .password_hash
                .as_deref()
                .is_some_and(|h| h.starts_with("$argon2"))
            {
                problems.push(format!(
                    "console.admin {}: password_hash (or password_hash_file) must be an argon2 \
                     PHC string (use `outbox passwd`)",
                    admin.login
                ));
            }
        }
        if self.session_idle_secs == 0 || self.session_lifetime_secs == 0 {
            problems.push(
                "console: session_idle_secs and session_lifetime_secs must be positive".into(),
            );
        }
        problems
    }
}

/// What the console needs from the composition root.
pub struct Parts {
    pub spool: Spool,
    /// The figures behind the chart and the reputation panel.
    pub reputation: Arc<Reputation>,
    /// The per-address login failure budget, shared with SMTP AUTH and JMAP.
    pub throttle: Arc<AuthThrottle>,
    pub clock: Arc<dyn Clock>,
}

pub struct Console {
    spool: Spool,
    reputation: Arc<Reputation>,
    admins: Arc<Admins>,
    sessions: Sessions,
    throttle: Arc<AuthThrottle>,
    login_floor: Duration,
    session_lifetime: Duration,
    clock: Arc<dyn Clock>,
}

impl Console {
    pub fn new(config: &ConsoleConfig, parts: Parts) -> Result<Arc<Console>> {
        Ok(Arc::new(Console {
            spool: parts.spool,
            reputation: parts.reputation,
            admins: Arc::new(Admins::new(&config.admins)?),
            sessions: Sessions::new(SessionLimits {
                idle: Duration::from_secs(config.session_idle_secs),
                lifetime: Duration::from_secs(config.session_lifetime_secs),
                max: MAX_SESSIONS,
            }),
            throttle: parts.throttle,
            login_floor: Duration::from_millis(config.login_min_duration_ms),
            session_lifetime: Duration::from_secs(config.session_lifetime_secs),
            clock: parts.clock,
        }))
    }

    /// The signed-in operator behind the request's session cookie.
    fn session(&self, headers: &HeaderMap) -> Option<Session> {
        self.sessions.get(auth::cookie(headers, SESSION_COOKIE)?)
    }
}

/// The console's routes, under `/console`.
pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/console", get(pages::overview))
        .route("/console/", get(|| async { see_other("/console") }))
        .route("/console/queue", get(pages::queue))
        .route("/console/dlq", get(pages::dead_letters))
        .route("/console/suppressions", get(pages::suppressions))
        .route("/console/submission/{id}", get(pages::submission))
        .route("/console/login", get(login_form).post(login))
        .route("/console/logout", post(logout))
        .route("/console/action", post(action))
        .route("/console/static/console.css", get(stylesheet))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(console)
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // Not `no-referrer`: with it a browser sends `Origin: null` on the console's own POSTs.
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("console.css"),
    )
        .into_response()
}

pub(crate) fn see_other(location: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
}

pub(crate) fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// A refusal page (403 and the like) with the reason.
fn refuse(status: StatusCode, why: &str, session: Option<&Session>) -> Response {
    let body = format!("<p class=\"error\" id=\"refused\">{}</p>", html::esc(why));
    html(status, html::page("Refused", session, &body))
}

/// A POST must come from the console's own pages: a browser names the page's origin in
/// `Origin` (and `Sec-Fetch-Site`); a cross-site one is refused whatever cookies it carries.
/// SameSite=Strict already keeps the cookie off such requests; this is the second lock.
fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_ok = match headers.get(header::ORIGIN).map(|v| v.to_str()) {
        None => true,
        Some(Ok(origin)) => !host.is_empty() && origin == format!("https://{host}"),
        Some(Err(_)) => false,
    };
    let site_ok = headers
        .get("sec-fetch-site")
        .is_none_or(|v| v.as_bytes() == b"same-origin");
    if !(origin_ok && site_ok) {
        tracing::warn!(
            origin = ?headers.get(header::ORIGIN),
            host,
            "console POST refused: not same-origin"
        );
    }
    origin_ok && site_ok
}

/// The fields of a form body (`application/x-www-form-urlencoded`); a later duplicate does not
/// replace the first.
fn form_fields(body: &[u8]) -> std::collections::HashMap<String, String> {
    let mut fields = std::collections::HashMap::new();
    for (k, v) in form_urlencoded::parse(body) {
        fields
            .entry(k.into_owned())
            .or_insert_with(|| v.into_owned());
    }
    fields
}

async fn login_form(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if console.session(&headers).is_some() {
        return see_other("/console");
    }
    login_page(StatusCode::OK, None)
}

/// The sign-in form with a fresh double-submit token (cookie and hidden field).
fn login_page(status: StatusCode, error: Option<&str>) -> Response {
    let token = auth::random_token();
    let error = error
        .map(|e| format!("<p class=\"error\" id=\"login-error\">{}</p>", html::esc(e)))
        .unwrap_or_default();
    let body = format!(
        "<section class=\"login\"><h2>Sign in</h2>{error}\
         <form method=\"post\" action=\"/console/login\" id=\"login-form\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{token}\">\
         <label>Login <input name=\"login\" id=\"login\" autocomplete=\"username\" required></label>\
         <label>Password <input name=\"password\" id=\"password\" type=\"password\" \
         autocomplete=\"current-password\" required></label>\
         <button type=\"submit\" id=\"sign-in\">Sign in</button></form></section>"
    );
    let mut response = html(status, html::page("Sign in", None, &body));
    if let Ok(value) =
        HeaderValue::from_str(&auth::set_cookie(LOGIN_COOKIE, &token, LOGIN_TOKEN_TTL))
    {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

async fn login(
    State(console): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !same_origin(&headers) {
        return refuse(StatusCode::FORBIDDEN, "cross-site request refused", None);
    }
    let fields = form_fields(&body);
    let presented = fields.get("csrf").map(String::as_str).unwrap_or("");
    let expected = auth::cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    let token_ok = !expected.is_empty()
        && bool::from(subtle::ConstantTimeEq::ct_eq(
            presented.as_bytes(),
            expected.as_bytes(),
        ));
    if !token_ok {
        return login_page(
            StatusCode::FORBIDDEN,
            Some("The sign-in form expired; please try again."),
        );
    }
    let login = fields.get("login").cloned().unwrap_or_default();
    let password = fields.get("password").cloned().unwrap_or_default();
    let started = tokio::time::Instant::now();
    let outcome = match console.throttle.begin(peer.ip()).await {
        None => Err(StatusCode::TOO_MANY_REQUESTS),
        Some(attempt) => match console.admins.verify(&login, password).await {
            Some(found) => {
                attempt.succeeded();
                Ok(found)
            }
            None => {
                drop(attempt);
                Err(StatusCode::UNAUTHORIZED)
            }
        },
    };
    // Every answer takes at least the floor, whatever happened above.
    tokio::time::sleep_until(started + console.login_floor).await;
    match outcome {
        Ok((login, role)) => {
            tracing::info!(%peer, %login, role = role.as_str(), "console sign-in");
            let token = console.sessions.create(login, role);
            let mut response = see_other("/console");
            let cookies = [
                auth::set_cookie(SESSION_COOKIE, &token, console.session_lifetime),
                auth::set_cookie(LOGIN_COOKIE, "", Duration::ZERO),
            ];
            for cookie in cookies {
                if let Ok(value) = HeaderValue::from_str(&cookie) {
                    response.headers_mut().append(header::SET_COOKIE, value);
                }
            }
            response
        }
        Err(status) => {
            tracing::info!(%peer, %login, "console sign-in failed");
            let why = if status == StatusCode::TOO_MANY_REQUESTS {
                "Too many failed sign-ins from this address; try again later."
            } else {
                "Wrong login or password."
            };
            login_page(status, Some(why))
        }
    }
}

/// The checks every state-changing POST passes: same origin, a live session, its CSRF token.
#[allow(clippy::result_large_err)]
fn checked_post(
    console: &Console,
    headers: &HeaderMap,
    fields: &std::collections::HashMap<String, String>,
) -> Result<Session, Response> {
    if !same_origin(headers) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "cross-site request refused",
            None,
        ));
    }
    let Some(session) = console.session(headers) else {
        return Err(refuse(StatusCode::FORBIDDEN, "not signed in", None));
    };
    if !session.csrf_matches(fields.get("csrf").map(String::as_str).unwrap_or("")) {
        tracing::warn!(login = %session.login, "console POST with a missing or wrong CSRF token");
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "missing or wrong CSRF token",
            Some(&session),
        ));
    }
    Ok(session)
}

async fn logout(State(console): State<Arc<Console>>, headers: HeaderMap, body: Bytes) -> Response {
    let fields = form_fields(&body);
    if let Err(refused) = checked_post(&console, &headers, &fields) {
        return refused;
    }
    if let Some(token) = auth::cookie(&headers, SESSION_COOKIE) {
        console.sessions.remove(token);
    }
    let mut response = see_other("/console/login");
    if let Ok(value) = HeaderValue::from_str(&auth::set_cookie(SESSION_COOKIE, "", Duration::ZERO))
    {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// The admin-socket request a console action stands for.
fn request_for(fields: &std::collections::HashMap<String, String>) -> Result<Request, String> {
    let field = |name: &str| fields.get(name).filter(|v| !v.is_empty()).cloned();
    let all = fields.get("all").is_some_and(|v| v == "1");
    let id = field("id");
    if id.is_some() == all && fields.get("op").is_some_and(|op| op != "unsuppress") {
        return Err("give one message id, or all".into());
    }
    let op = fields.get("op").map(String::as_str).unwrap_or("");
    Ok(match op {
        "retry" => Request::QueueRetry { id, all },
        "hold" => Request::QueueHold { id, all },
        "release" => Request::QueueRelease { id, all },
        // Before a release time the submitter asked for, as `outbox queue send-now`.
        "send_now" => Request::QueueSendNow {
            id: id.ok_or("send now takes one message id")?,
        },
        "redrive" => Request::DlqRedrive { id, all },
        "delete" => Request::QueueDelete {
            id: id.ok_or("delete takes one message id")?,
        },
        "unsuppress" => Request::SuppressionRemove {
            address: field("address").ok_or("no address")?,
            class: field("class").ok_or("no class")?,
            account: field("account").ok_or("no account")?,
        },
        _ => return Err(format!("unknown action {op:?}")),
    })
}

/// Where to go after an action: a console page named by the form, else the overview.
fn back_to(fields: &std::collections::HashMap<String, String>) -> String {
    fields
        .get("back")
        .filter(|b| {
            b.starts_with("/console")
                && !b.contains("//")
                && !b.contains('\\')
                && b.chars().all(|c| c.is_ascii_graphic())
        })
        .cloned()
        .unwrap_or_else(|| "/console".into())
}

async fn action(State(console): State<Arc<Console>>, headers: HeaderMap, body: Bytes) -> Response {
    let fields = form_fields(&body);
    let session = match checked_post(&console, &headers, &fields) {
        Ok(session) => session,
        Err(refused) => return refused,
    };
    if session.role != Role::Admin {
        tracing::warn!(login = %session.login, "console action refused: viewer role");
        return refuse(
            StatusCode::FORBIDDEN,
            "the admin role is required for this",
            Some(&session),
        );
    }
    if fields
        .get("op")
        .is_some_and(|op| op == "reputation_release")
    {
        return reputation_release(&console, &session, &fields).await;
    }
    let request = match request_for(&fields) {
        Ok(request) => request,
        Err(why) => return refuse(StatusCode::BAD_REQUEST, &why, Some(&session)),
    };
    tracing::info!(login = %session.login, ?request, "console action");
    let op = fields.get("op").cloned().unwrap_or_default();
    match crate::admin::handle(&console.spool, request).await {
        Ok(response) => {
            let back = back_to(&fields);
            let sep = if back.contains('?') { '&' } else { '?' };
            see_other(&format!(
                "{back}{sep}done={op}&changed={}",
                response.changed
            ))
        }
        Err(e) => {
            let status = match e {
                AdminError::NoSuch(_)
                | AdminError::Spool(crate::spool::SpoolError::NotFound(_)) => StatusCode::NOT_FOUND,
                _ => StatusCode::CONFLICT,
            };
            refuse(status, &format!("{op}: {e}"), Some(&session))
        }
    }
}

/// Ends a reputation guard hold, as `outbox reputation release` does (through
/// [`Reputation::release`], the code behind that command).
async fn reputation_release(
    console: &Console,
    session: &Session,
    fields: &std::collections::HashMap<String, String>,
) -> Response {
    let Some(class) = fields
        .get("class")
        .and_then(|c| crate::domain::MessageClass::parse(c))
    else {
        return refuse(StatusCode::BAD_REQUEST, "no such class", Some(session));
    };
    let identity = fields.get("identity").filter(|i| !i.is_empty()).cloned();
    let target = crate::reputation::HoldTarget { identity, class };
    tracing::info!(login = %session.login, %target, "console reputation release");
    match console.reputation.release(target).await {
        Ok(_) => see_other("/console?done=reputation_release&changed=1"),
        Err(e) => refuse(StatusCode::CONFLICT, &e.to_string(), Some(session)),
    }
}
