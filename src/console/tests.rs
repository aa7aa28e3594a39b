//! The console in process: its router over a real redb spool, requests as a browser sends
//! them (cookies, form bodies, Origin), answers read back whole.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Request as HttpRequest, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;
use crate::clock::SystemClock;
use crate::config::SpoolConfig;
use crate::domain::{Job, MessageClass, QueueId, State as MailState, SubmissionRecord};
use crate::spool::SpoolOptions;

struct Fixture {
    router: Router,
    spool: Spool,
    _dir: tempfile::TempDir,
}

fn admin(login: &str, password: &str, role: Role) -> ConsoleAdmin {
    ConsoleAdmin {
        login: login.into(),
        password_hash: Some(crate::accounts::hash_password(password).unwrap()),
        password_hash_file: None,
        role,
    }
}

fn fixture() -> Fixture {
    fixture_with_floor(0)
}

fn fixture_with_floor(login_min_duration_ms: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let spool = crate::spool::redb::open(
        &dir.path().join("spool"),
        SpoolOptions::from(&SpoolConfig::default()),
        clock.clone(),
    )
    .unwrap();
    let config = ConsoleConfig {
        session_idle_secs: 600,
        session_lifetime_secs: 3600,
        login_min_duration_ms,
        admins: vec![
            admin("ops", "ops-secret", Role::Admin),
            admin("watch", "watch-secret", Role::Viewer),
        ],
    };
    let reputation = futures_util::FutureExt::now_or_never(crate::reputation::Reputation::open(
        Default::default(),
        vec![],
        spool.clone(),
        clock.clone(),
    ))
    .expect("opening reads the saved state at once");
    let console = Console::new(
        &config,
        Parts {
            spool: spool.clone(),
            reputation,
            throttle: Arc::new(AuthThrottle::new(
                3,
                Duration::from_secs(60),
                Duration::from_secs(60),
            )),
            clock,
        },
    )
    .unwrap();
    Fixture {
        router: router(console),
        spool,
        _dir: dir,
    }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

async fn send(f: &Fixture, req: HttpRequest<Body>) -> Answer {
    let mut req = req;
    let peer: SocketAddr = "192.0.2.7:5555".parse().unwrap();
    req.extensions_mut().insert(ConnectInfo(peer));
    let response = f.router.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn get(f: &Fixture, path: &str, cookie: &str) -> Answer {
    let req = HttpRequest::get(path)
        .header(header::HOST, "console.test")
        .header(header::COOKIE, cookie)
        .body(Body::empty())
        .unwrap();
    send(f, req).await
}

async fn post(f: &Fixture, path: &str, cookie: &str, form: &[(&str, &str)]) -> Answer {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let req = HttpRequest::post(path)
        .header(header::HOST, "console.test")
        .header(header::ORIGIN, "https://console.test")
        .header(header::COOKIE, cookie)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap();
    send(f, req).await
}

fn set_cookie_value(answer: &Answer, name: &str) -> Option<String> {
    answer
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap()[name.len() + 1..].to_string())
}

/// Signs in through the form; returns the session cookie header and the page's CSRF token.
async fn sign_in(f: &Fixture, login: &str, password: &str) -> Result<(String, String), Answer> {
    let form = get(f, "/console/login", "").await;
    let token = set_cookie_value(&form, LOGIN_COOKIE).unwrap();
    let answer = post(
        f,
        "/console/login",
        &format!("{LOGIN_COOKIE}={token}"),
        &[("csrf", &token), ("login", login), ("password", password)],
    )
    .await;
    if answer.status != StatusCode::SEE_OTHER {
        return Err(answer);
    }
    let session = set_cookie_value(&answer, SESSION_COOKIE).unwrap();
    let cookie = format!("{SESSION_COOKIE}={session}");
    let page = get(f, "/console", &cookie).await;
    assert_eq!(page.status, StatusCode::OK);
    let csrf = page
        .body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    Ok((cookie, csrf))
}

async fn enqueue(spool: &Spool) -> QueueId {
    let id = QueueId::generate(SystemClock.now_ms());
    let job = Job {
        id,
        login: "alice".into(),
        tenant_id: "t".into(),
        account_id: "alice".into(),
        user_id: "alice".into(),
        identity_id: "alice".into(),
        mail_from: "alice@example.com".into(),
        recipients: vec!["bob@example.net".into()],
        message_class: MessageClass::Transactional,
        size: 10,
    };
    spool
        .blobs
        .put(
            id,
            vec![bytes::Bytes::from_static(b"Subject: x\r\n\r\nhi\r\n")],
        )
        .await
        .unwrap();
    let now = SystemClock.now_ms();
    spool
        .queue
        .enqueue(SubmissionRecord::queued(job, now, now + 3_600_000, None))
        .await
        .unwrap();
    id
}

async fn state_of(spool: &Spool, id: QueueId) -> MailState {
    spool.ledger.get(id).await.unwrap().unwrap().state
}

/// Rule: every page but the sign-in form needs a session; the sign-in form and every answer
/// carry the strict CSP; the session cookie is HttpOnly, Secure, SameSite=Strict.
#[tokio::test]
async fn pages_need_a_session_and_carry_the_policy() {
    let f = fixture();
    for path in [
        "/console",
        "/console/queue",
        "/console/dlq",
        "/console/suppressions",
    ] {
        let answer = get(&f, path, "").await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(answer.headers[header::LOCATION], "/console/login");
        let csp = answer.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(
            csp.contains("default-src 'none'") && !csp.contains("unsafe"),
            "{csp}"
        );
    }
    let form = get(&f, "/console/login", "").await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(!form.body.contains("<script"), "no script on any page");
    let token = set_cookie_value(&form, LOGIN_COOKIE).unwrap();
    let answer = post(
        &f,
        "/console/login",
        &format!("{LOGIN_COOKIE}={token}"),
        &[
            ("csrf", &token),
            ("login", "ops"),
            ("password", "ops-secret"),
        ],
    )
    .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    let cookie = answer
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|v| v.starts_with(SESSION_COOKIE))
        .unwrap();
    for flag in ["HttpOnly", "Secure", "SameSite=Strict"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
}

/// Rule: a wrong password, an unknown login and a mail account's credentials are refused
/// alike; so is a sign-in without the form's own token.
#[tokio::test]
async fn wrong_credentials_and_forged_sign_ins_are_refused() {
    let f = fixture();
    let wrong = sign_in(&f, "ops", "not-it").await.err().unwrap();
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body.contains("Wrong login or password"));
    assert!(set_cookie_value(&wrong, SESSION_COOKIE).is_none());
    let unknown = sign_in(&f, "nobody", "ops-secret").await.err().unwrap();
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    // No login-form token: refused before any password check.
    let forged = post(
        &f,
        "/console/login",
        "",
        &[("csrf", "x"), ("login", "ops"), ("password", "ops-secret")],
    )
    .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    // The forged one cost no check; a third wrong password uses the address's budget up, and
    // then even the right password waits.
    let third = sign_in(&f, "ops", "still-not-it").await.err().unwrap();
    assert_eq!(third.status, StatusCode::UNAUTHORIZED);
    let blocked = sign_in(&f, "ops", "ops-secret").await.err().unwrap();
    assert_eq!(blocked.status, StatusCode::TOO_MANY_REQUESTS);
}

/// Rule: an admin's hold and release go through the admin socket's handler and change the
/// spool; a POST without the CSRF token, with another one, or from another origin changes
/// nothing; a viewer's POST is 403.
#[tokio::test]
async fn actions_need_the_admin_role_and_the_csrf_token() {
    let f = fixture();
    let id = enqueue(&f.spool).await;
    let ids = id.to_string();
    let (admin_cookie, csrf) = sign_in(&f, "ops", "ops-secret").await.ok().unwrap();

    let hold = [
        ("op", "hold"),
        ("id", ids.as_str()),
        ("back", "/console/queue"),
    ];
    let without: Vec<_> = hold.to_vec();
    let answer = post(&f, "/console/action", &admin_cookie, &without).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert!(answer.body.contains("CSRF"), "{}", answer.body);
    let mut wrong = hold.to_vec();
    let other = auth::random_token();
    wrong.push(("csrf", &other));
    assert_eq!(
        post(&f, "/console/action", &admin_cookie, &wrong)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(state_of(&f.spool, id).await, MailState::Queued);

    let mut with = hold.to_vec();
    with.push(("csrf", &csrf));
    let req = HttpRequest::post("/console/action")
        .header(header::HOST, "console.test")
        .header(header::ORIGIN, "https://evil.test")
        .header(header::COOKIE, &admin_cookie)
        .body(Body::from(
            form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&with)
                .finish(),
        ))
        .unwrap();
    assert_eq!(send(&f, req).await.status, StatusCode::FORBIDDEN);
    assert_eq!(state_of(&f.spool, id).await, MailState::Queued);

    let (viewer_cookie, viewer_csrf) = sign_in(&f, "watch", "watch-secret").await.ok().unwrap();
    let mut as_viewer = hold.to_vec();
    as_viewer.push(("csrf", &viewer_csrf));
    let refused = post(&f, "/console/action", &viewer_cookie, &as_viewer).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.body.contains("admin role"), "{}", refused.body);
    assert_eq!(state_of(&f.spool, id).await, MailState::Queued);
    // A viewer sees no action buttons.
    let page = get(&f, "/console/queue", &viewer_cookie).await;
    assert!(page.body.contains(&ids) && !page.body.contains("data-action=\"hold\""));

    let done = post(&f, "/console/action", &admin_cookie, &with).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert_eq!(
        done.headers[header::LOCATION],
        "/console/queue?done=hold&changed=1"
    );
    assert_eq!(state_of(&f.spool, id).await, MailState::Held);
    let release = [
        ("op", "release"),
        ("id", ids.as_str()),
        ("csrf", csrf.as_str()),
        ("back", "https://evil.test/"),
    ];
    let done = post(&f, "/console/action", &admin_cookie, &release).await;
    assert_eq!(
        done.headers[header::LOCATION],
        "/console?done=release&changed=1"
    );
    assert_eq!(state_of(&f.spool, id).await, MailState::Queued);

    // The submission page shows the record and its history.
    let page = get(&f, &format!("/console/submission/{ids}"), &admin_cookie).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("bob@example.net") && page.body.contains(">held<"));
}

/// Rule: signing out ends the session on the server (the old cookie no longer works), and
/// needs the CSRF token like every POST.
#[tokio::test]
async fn logout_ends_the_session() {
    let f = fixture();
    let (cookie, csrf) = sign_in(&f, "watch", "watch-secret").await.ok().unwrap();
    let refused = post(&f, "/console/logout", &cookie, &[]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(get(&f, "/console", &cookie).await.status, StatusCode::OK);
    let out = post(&f, "/console/logout", &cookie, &[("csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(
        get(&f, "/console", &cookie).await.status,
        StatusCode::SEE_OTHER
    );
}

#[test]
fn config_needs_admins_with_argon2_hashes() {
    let text = "[[admin]]\nlogin = \"ops\"\npassword_hash = \"plain\"\nrole = \"admin\"\n";
    let config: ConsoleConfig = toml::from_str(text).unwrap();
    let problems = config.problems();
    assert!(
        problems.iter().any(|p| p.contains("argon2")),
        "{problems:?}"
    );
    let empty: ConsoleConfig = toml::from_str("").unwrap();
    assert!(!empty.problems().is_empty());
    assert!(
        toml::from_str::<ConsoleConfig>("[[admin]]\nlogin = \"x\"\nrole = \"root\"\n").is_err()
    );
    let viewer: ConsoleConfig = toml::from_str("[[admin]]\nlogin = \"x\"\n").unwrap();
    assert_eq!(viewer.admins[0].role, Role::Viewer, "read-only by default");
}

/// Rule: every sign-in answer, right or wrong, known login or not, takes at least the floor.
#[tokio::test]
async fn sign_in_answers_take_at_least_the_floor() {
    let f = fixture_with_floor(300);
    for (login, password) in [("ops", "wrong"), ("nobody", "x"), ("watch", "watch-secret")] {
        let started = std::time::Instant::now();
        let _ = sign_in(&f, login, password).await;
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300), "{login}: {took:?}");
    }
}

/// Rule: an admin removes a suppression through the admin handler; the entry is gone.
#[tokio::test]
async fn an_admin_removes_a_suppression() {
    let f = fixture();
    let now = SystemClock.now_ms();
    f.spool
        .ledger
        .suppress(crate::domain::Suppression::new(
            "gone@example.net",
            "alice",
            "bulk",
            "complaint".into(),
            now,
            None,
        ))
        .await
        .unwrap();
    let (cookie, csrf) = sign_in(&f, "ops", "ops-secret").await.ok().unwrap();
    let page = get(&f, "/console/suppressions", &cookie).await;
    assert!(page.body.contains("gone@example.net"));
    let form = [
        ("op", "unsuppress"),
        ("address", "gone@example.net"),
        ("class", "bulk"),
        ("account", "alice"),
        ("csrf", csrf.as_str()),
        ("back", "/console/suppressions"),
    ];
    let done = post(&f, "/console/action", &cookie, &form).await;
    assert_eq!(
        done.headers[header::LOCATION],
        "/console/suppressions?done=unsuppress&changed=1"
    );
    assert!(f.spool.ledger.suppressions().await.unwrap().is_empty());
}
