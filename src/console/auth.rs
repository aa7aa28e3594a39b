//! Who may use the console: its own admin accounts (argon2id PHC hashes, never the mail
//! accounts' passwords), server-side sessions behind an opaque cookie, and one CSRF token per
//! session that every form carries and every POST must present.
//!
//! A session is found by the SHA-256 of its cookie value, so the table never holds a usable
//! token and a lookup compares digests, not secrets. Sessions live in memory: a restart logs
//! every operator out, which is the closed default.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Result};
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::PasswordVerifier;
use argon2::Argon2;
use base64::Engine;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::ConsoleAdmin;

/// What an admin account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads every page; no action.
    #[default]
    Viewer,
    /// Also retries, holds, releases, deletes, redrives and removes suppressions.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Admin => "admin",
        }
    }
}

/// Password checks at once: argon2 takes ~19 MiB and a core for each (see
/// `accounts::PasswordChecker`); further logins wait their turn.
const CONCURRENT_CHECKS: usize = 2;

/// The console's accounts, by lower-cased login.
pub struct Admins {
    accounts: HashMap<String, (String, Role)>,
    /// Checked for an unknown login, so it costs what a known one does.
    dummy_hash: String,
    checks: Semaphore,
}

impl Admins {
    pub fn new(admins: &[ConsoleAdmin]) -> Result<Admins> {
        let mut accounts = HashMap::new();
        for admin in admins {
            let hash = admin.password_hash.clone().unwrap_or_default();
            PasswordHash::new(&hash)
                .map_err(|e| anyhow!("console admin {}: bad password_hash: {e}", admin.login))?;
            accounts.insert(admin.login.to_lowercase(), (hash, admin.role));
        }
        Ok(Admins {
            accounts,
            dummy_hash: crate::accounts::hash_password("outbox-console-dummy")?,
            checks: Semaphore::new(CONCURRENT_CHECKS),
        })
    }

    /// The account's login (as configured, lower-cased) and role when the password is right.
    pub async fn verify(self: &Arc<Self>, login: &str, password: String) -> Option<(String, Role)> {
        let _permit = self.checks.acquire().await.ok()?;
        let key = login.to_lowercase();
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let (hash, role) = match this.accounts.get(&key) {
                Some((hash, role)) => (hash.as_str(), Some(*role)),
                None => (this.dummy_hash.as_str(), None),
            };
            let ok = PasswordHash::new(hash).is_ok_and(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            });
            role.filter(|_| ok).map(|role| (key, role))
        })
        .await
        .ok()
        .flatten()
    }
}

/// A signed-in operator, as a handler sees it.
#[derive(Debug, Clone)]
pub struct Session {
    pub login: String,
    pub role: Role,
    /// Goes into every form; a POST without it (or with another) is refused.
    pub csrf: String,
}

impl Session {
    /// Whether `presented` is this session's CSRF token (compared in constant time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        !presented.is_empty() && bool::from(self.csrf.as_bytes().ct_eq(presented.as_bytes()))
    }
}

struct Entry {
    session: Session,
    created: Instant,
    last_seen: Instant,
}

/// How long sessions last.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// Signed out after this long without a request.
    pub idle: Duration,
    /// Signed out this long after signing in, however busy.
    pub lifetime: Duration,
    /// Sessions held at most; signing in beyond it ends the least recently used one.
    pub max: usize,
}

/// The server-side session table.
pub struct Sessions {
    limits: SessionLimits,
    table: Mutex<HashMap<[u8; 32], Entry>>,
}

impl Sessions {
    pub fn new(limits: SessionLimits) -> Sessions {
        Sessions {
            limits,
            table: Mutex::new(HashMap::new()),
        }
    }

    /// Starts a session; returns the cookie value (the only copy of the token).
    pub fn create(&self, login: String, role: Role) -> String {
        let token = random_token();
        let now = Instant::now();
        let mut table = self.table.lock().unwrap();
        self.expire(&mut table, now);
        if table.len() >= self.limits.max.max(1) {
            if let Some(oldest) = table
                .iter()
                .min_by_key(|(_, e)| e.last_seen)
                .map(|(k, _)| *k)
            {
                table.remove(&oldest);
            }
        }
        table.insert(
            digest(&token),
            Entry {
                session: Session {
                    login,
                    role,
                    csrf: random_token(),
                },
                created: now,
                last_seen: now,
            },
        );
        token
    }

    /// The live session behind a cookie value; refreshes its idle clock.
    pub fn get(&self, token: &str) -> Option<Session> {
        let now = Instant::now();
        let mut table = self.table.lock().unwrap();
        let key = digest(token);
        let entry = table.get_mut(&key)?;
        if self.expired(entry, now) {
            table.remove(&key);
            return None;
        }
        entry.last_seen = now;
        Some(entry.session.clone())
    }

    /// Ends a session (logout).
    pub fn remove(&self, token: &str) {
        self.table.lock().unwrap().remove(&digest(token));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().unwrap().len()
    }

    fn expired(&self, entry: &Entry, now: Instant) -> bool {
        now.duration_since(entry.last_seen) >= self.limits.idle
            || now.duration_since(entry.created) >= self.limits.lifetime
    }

    fn expire(&self, table: &mut HashMap<[u8; 32], Entry>, now: Instant) {
        table.retain(|_, e| !self.expired(e, now));
    }
}

fn digest(token: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// 256 random bits, URL-safe base64 (a cookie value and a form field as they are).
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The session cookie. `__Host-`: the browser keeps it only if set over HTTPS with `Path=/`
/// and no `Domain`, so no sibling host or plain-HTTP page can plant or read it.
pub const SESSION_COOKIE: &str = "__Host-outbox-console";
/// The login form's double-submit token (there is no session yet to hold a CSRF token).
pub const LOGIN_COOKIE: &str = "__Host-outbox-console-login";

/// A `Set-Cookie` value with the console's flags; `max_age` 0 deletes it.
pub fn set_cookie(name: &str, value: &str, max_age: Duration) -> String {
    format!(
        "{name}={value}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
        max_age.as_secs()
    )
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: SessionLimits = SessionLimits {
        idle: Duration::from_secs(60),
        lifetime: Duration::from_secs(600),
        max: 2,
    };

    /// Rule: a session ends after its idle time, and after its lifetime however busy it is.
    #[tokio::test(start_paused = true)]
    async fn sessions_expire_when_idle_and_at_their_lifetime() {
        let sessions = Sessions::new(LIMITS);
        let idle = sessions.create("a".into(), Role::Viewer);
        let busy = sessions.create("b".into(), Role::Admin);
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(55)).await;
            assert!(sessions.get(&busy).is_some(), "a busy session lives on");
        }
        assert!(sessions.get(&idle).is_none(), "idle for over a minute");
        tokio::time::advance(Duration::from_secs(55)).await;
        assert!(
            sessions.get(&busy).is_none(),
            "over its ten-minute lifetime"
        );
    }

    /// Rule: the table is bounded; a new sign-in beyond it ends the least recently used one.
    #[tokio::test(start_paused = true)]
    async fn the_table_is_bounded() {
        let sessions = Sessions::new(LIMITS);
        let a = sessions.create("a".into(), Role::Viewer);
        tokio::time::advance(Duration::from_secs(1)).await;
        let b = sessions.create("b".into(), Role::Viewer);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(sessions.get(&a).is_some());
        let c = sessions.create("c".into(), Role::Viewer);
        assert_eq!(sessions.len(), 2);
        assert!(sessions.get(&b).is_none(), "b was the least recently used");
        assert!(sessions.get(&a).is_some() && sessions.get(&c).is_some());
    }

    /// Rule: the CSRF token is the session's own; empty or different tokens do not match.
    #[test]
    fn csrf_tokens_must_match_exactly() {
        let s = Session {
            login: "a".into(),
            role: Role::Admin,
            csrf: random_token(),
        };
        assert!(s.csrf_matches(&s.csrf.clone()));
        assert!(!s.csrf_matches(""));
        assert!(!s.csrf_matches(&random_token()));
        assert!(!s.csrf_matches(&s.csrf[..10]));
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = axum::http::HeaderMap::new();
        headers.append("cookie", "x=1; __Host-outbox-console=abc".parse().unwrap());
        headers.append("cookie", "y=2".parse().unwrap());
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "y"), Some("2"));
        assert_eq!(cookie(&headers, LOGIN_COOKIE), None);
        let set = set_cookie(SESSION_COOKIE, "abc", Duration::from_secs(60));
        for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
            assert!(set.contains(flag), "{set}");
        }
    }
}
