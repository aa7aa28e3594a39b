//! Who is calling: HTTP Basic with the SMTP accounts, or a bearer token.
//!
//! Basic runs argon2 (deliberately slow) on the password-check threads shared with SMTP AUTH,
//! and so shares their login cache (`smtp.auth_cache_secs`: an HMAC of login, password and
//! stored hash, successes only) and the per-IP failed-login budget.
//!
//! Bearer tokens are minted by `POST /jmap/token` (authenticated with Basic): 32 random
//! bytes, shown once; only their SHA-256 is stored (jmap.redb), with an expiry of
//! [`TOKEN_LIFETIME_MS`]. `DELETE /jmap/token` with the token revokes it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_lc_rs::digest;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::request::Parts;
use axum::http::{header, Extensions, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::store::{Store, T_TOKEN};
use super::{problem, Jmap};
use crate::accounts::{Account, Directory, PasswordChecker};
use crate::clock::Clock;
use crate::live::Live;
use crate::smtp::guard::AuthThrottle;

/// Lifetime of a bearer token.
pub const TOKEN_LIFETIME_MS: u64 = 30 * 86_400_000;
const TOKEN_PREFIX: &str = "obx_";

#[derive(Serialize, Deserialize)]
struct TokenRecord {
    login: String,
    created_ms: u64,
    expires_ms: u64,
}

pub struct Authenticator {
    directory: Arc<Live<Directory>>,
    passwords: Arc<PasswordChecker>,
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    throttle: Arc<AuthThrottle>,
}

impl Authenticator {
    pub fn new(
        directory: Arc<Live<Directory>>,
        passwords: Arc<PasswordChecker>,
        store: Arc<Store>,
        clock: Arc<dyn Clock>,
        throttle: Arc<AuthThrottle>,
    ) -> Self {
        Authenticator {
            directory,
            passwords,
            store,
            clock,
            throttle,
        }
    }

    /// The caller's account, or the 401 to answer. Failed credentials count against the
    /// client's address in the same per-IP AUTH budget as SMTP; while it cools down, no
    /// password is checked and the answer is 429.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        extensions: &Extensions,
    ) -> Result<Arc<Account>, Response> {
        let value = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if value.is_empty() {
            return Err(unauthorized());
        }
        let ip = extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        let basic = scheme
            .eq_ignore_ascii_case("basic")
            .then(|| basic_credentials(rest.trim()));
        // A login the cache remembers costs no check and takes no slot of the failure budget.
        if let Some(Some((login, password))) = &basic {
            if let Some(account) = self.passwords.remembered(login, password) {
                return Ok(account);
            }
        }
        // Any other attempt takes its slot before the check starts, so parallel attempts
        // cannot all be checked before the first failure is counted.
        let attempt = match ip {
            Some(ip) => match self.throttle.begin(ip).await {
                Some(attempt) => Some(attempt),
                None => {
                    return Err(problem(
                        StatusCode::TOO_MANY_REQUESTS,
                        "about:blank",
                        "too many failed logins from this address; try again later",
                        None,
                    ))
                }
            },
            None => None,
        };
        let found = match basic {
            Some(Some((login, password))) => self.passwords.check(login, password).await,
            Some(None) => None,
            None if scheme.eq_ignore_ascii_case("bearer") => self.bearer(rest.trim()),
            None => None,
        };
        match (&found, attempt) {
            (Some(_), Some(attempt)) => attempt.succeeded(),
            (None, attempt) => {
                drop(attempt);
                tracing::info!(client = ?ip, scheme, "JMAP authentication failed");
            }
            (Some(_), None) => {}
        }
        found.ok_or_else(unauthorized)
    }

    fn bearer(&self, token: &str) -> Option<Arc<Account>> {
        if !token.starts_with(TOKEN_PREFIX) || token.len() > 200 {
            return None;
        }
        let record: TokenRecord = self
            .store
            .read()
            .ok()?
            .get("", T_TOKEN, &token_key(token))
            .ok()??;
        if record.expires_ms <= self.clock.now_ms() {
            return None;
        }
        self.directory.get().get(&record.login)
    }
}

fn token_key(token: &str) -> String {
    digest::digest(&digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Login and password from an HTTP Basic value (RFC 7617). argon2 runs on the shared
/// password-check threads, whose login cache (`auth_cache_secs`, as for SMTP AUTH) spares a
/// client that sends many requests one check per request.
fn basic_credentials(encoded: &str) -> Option<(String, String)> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (login, password) = text.split_once(':')?;
    if login.is_empty() || login.len() > 256 || password.len() > 1024 {
        return None;
    }
    Some((login.to_string(), password.to_string()))
}

pub fn unauthorized() -> Response {
    let mut r = problem(
        StatusCode::UNAUTHORIZED,
        "about:blank",
        "authentication required (HTTP Basic with the account's login, or a bearer token)",
        None,
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"Outbox JMAP\", charset=\"UTF-8\""),
    );
    r.headers_mut().append(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"Outbox JMAP\""),
    );
    r
}

/// `POST /jmap/token` (HTTP Basic): a new bearer token for the caller's account.
pub async fn issue_token(State(jmap): State<Arc<Jmap>>, parts: Parts) -> Response {
    let headers = &parts.headers;
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // A token cannot mint tokens: the password is needed.
    if !value
        .get(..6)
        .is_some_and(|s| s.eq_ignore_ascii_case("basic "))
    {
        return unauthorized();
    }
    let account = match jmap.auth.authenticate(headers, &parts.extensions).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let secret: [u8; 32] = rand::random();
    let token = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    let now = jmap.now_ms();
    let record = TokenRecord {
        login: account.login.clone(),
        created_ms: now,
        expires_ms: now + TOKEN_LIFETIME_MS,
    };
    let key = token_key(&token);
    if let Err(e) = jmap.store.write(|tx| tx.put("", T_TOKEN, &key, &record)) {
        tracing::error!(error = %e, "storing a token failed");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    tracing::info!(login = %account.login, "JMAP bearer token issued");
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        json!({
            "accessToken": token,
            "tokenType": "Bearer",
            "accountId": account.account_id,
            "expiresAt": crate::clock::rfc3339(record.expires_ms),
        })
        .to_string(),
    )
        .into_response()
}

/// `DELETE /jmap/token` with `Authorization: Bearer TOKEN`: revokes that token.
pub async fn revoke_token(State(jmap): State<Arc<Jmap>>, parts: Parts) -> Response {
    let token = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_string());
    let Some(token) = token else {
        return unauthorized();
    };
    if jmap
        .auth
        .authenticate(&parts.headers, &parts.extensions)
        .await
        .is_err()
    {
        return unauthorized();
    }
    let key = token_key(&token);
    match jmap.store.write(|tx| tx.remove("", T_TOKEN, &key)) {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Counts requests in progress per account (maxConcurrentRequests).
#[derive(Default)]
pub struct InFlight(Arc<Mutex<HashMap<String, usize>>>);

pub struct Slot {
    map: Arc<Mutex<HashMap<String, usize>>>,
    account: String,
}

impl InFlight {
    pub fn enter(&self, account: &str, max: usize) -> Option<Slot> {
        let mut map = self.0.lock().unwrap();
        let n = map.entry(account.to_string()).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            map: self.0.clone(),
            account: account.to_string(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap();
        if let Some(n) = map.get_mut(&self.account) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.account);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::test_account;
    use std::time::Duration;

    /// Rule: the per-IP failed-login budget holds under concurrency: 200 wrong Basic passwords
    /// sent at once from one address get at most the budget (10) of argon2 checks; the rest are
    /// answered 429 without a check.
    #[tokio::test]
    async fn parallel_wrong_passwords_get_at_most_the_budget_of_checks() {
        let dir = tempfile::tempdir().unwrap();
        let directory = Live::new(
            Directory::from_config(&[test_account("alice", "pw", "alice", "alice@example.com")])
                .unwrap(),
        );
        let passwords = Arc::new(PasswordChecker::new(directory.clone(), 2));
        let auth = Arc::new(Authenticator::new(
            directory,
            passwords.clone(),
            Arc::new(Store::open(&dir.path().join("jmap.redb")).unwrap()),
            Arc::new(crate::clock::SystemClock),
            Arc::new(AuthThrottle::new(
                10,
                Duration::from_secs(600),
                Duration::from_secs(600),
            )),
        ));
        let peer: SocketAddr = "192.0.2.9:40000".parse().unwrap();
        let tasks: Vec<_> = (0..200)
            .map(|n| {
                let auth = auth.clone();
                tokio::spawn(async move {
                    let mut headers = HeaderMap::new();
                    let basic =
                        base64::engine::general_purpose::STANDARD.encode(format!("alice:wrong{n}"));
                    headers.insert(
                        header::AUTHORIZATION,
                        format!("Basic {basic}").parse().unwrap(),
                    );
                    let mut extensions = Extensions::new();
                    extensions.insert(ConnectInfo(peer));
                    auth.authenticate(&headers, &extensions)
                        .await
                        .err()
                        .unwrap()
                        .status()
                })
            })
            .collect();
        let mut limited = 0;
        for task in tasks {
            if task.await.unwrap() == StatusCode::TOO_MANY_REQUESTS {
                limited += 1;
            }
        }
        assert!(
            passwords.verifications() <= 10,
            "{} checks",
            passwords.verifications()
        );
        assert_eq!(limited, 200 - passwords.verifications() as usize);
    }
}
