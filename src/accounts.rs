//! Accounts and the identities they may send as; password checks.
//!
//! An account owns identities: one address (`alice@example.com`) or a whole domain. Every path
//! that accepts mail (SMTP, later JMAP and sendmail) asks [`Account::identity_for`] whether the
//! sender belongs to the account.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{anyhow, Result};
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;

use crate::config::AccountConfig;
use crate::live::Live;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityScope {
    /// One address, compared case-insensitively.
    Address(String),
    /// Every address at this domain.
    Domain(String),
}

#[derive(Debug, Clone)]
pub struct Identity {
    pub id: String,
    pub scope: IdentityScope,
    pub name: String,
    pub text_signature: Option<String>,
    pub html_signature: Option<String>,
    pub configuration_set: Option<String>,
    /// Static SES tags for this identity's mail (validated at config load).
    pub ses_tags: Vec<(String, String)>,
}

#[derive(Debug)]
pub struct Account {
    pub login: String,
    pub tenant_id: String,
    pub account_id: String,
    pub user_id: String,
    password_hash: String,
    pub identities: Vec<Identity>,
}

impl Account {
    pub fn identity(&self, id: &str) -> Option<&Identity> {
        self.identities.iter().find(|i| i.id == id)
    }

    /// The identity under which this account may use `address`, if any. An exact address wins
    /// over a domain identity. The null sender `<>` belongs to nobody.
    pub fn identity_for(&self, address: &str) -> Option<&Identity> {
        let address = address.trim().to_lowercase();
        let (_, domain) = address.rsplit_once('@')?;
        if domain.is_empty() {
            return None;
        }
        self.identities
            .iter()
            .find(|i| matches!(&i.scope, IdentityScope::Address(a) if *a == address))
            .or_else(|| {
                self.identities
                    .iter()
                    .find(|i| matches!(&i.scope, IdentityScope::Domain(d) if d == domain))
            })
    }
}

/// All configured accounts, by login.
pub struct Directory {
    accounts: HashMap<String, Arc<Account>>,
    /// Local Unix uids allowed to submit as an account (`outbox sendmail`).
    by_uid: HashMap<u32, Arc<Account>>,
    /// Verified against when the login is unknown, so that answer costs the same argon2 work.
    dummy_hash: String,
}

impl Directory {
    pub fn from_config(accounts: &[AccountConfig]) -> Result<Directory> {
        let mut map = HashMap::new();
        let mut by_uid = HashMap::new();
        // Every problem, one per line: an operator fixes them all in one go.
        let mut problems: Vec<String> = Vec::new();
        for a in accounts {
            let hash = a.password_hash.clone().unwrap_or_default();
            if hash.is_empty() {
                problems.push(format!(
                    "account {}: password_hash or password_hash_file is required",
                    a.login
                ));
            } else if !hash.starts_with("$argon2") {
                // The words config validation uses (check-config shows the line once).
                problems.push(format!(
                    "account {}: password_hash is not an argon2 PHC string (use `outbox passwd`)",
                    a.login
                ));
            } else if let Err(e) = PasswordHash::new(&hash) {
                problems.push(format!("account {}: bad password_hash: {e}", a.login));
            }
            let identities = a
                .identities
                .iter()
                .filter_map(|i| {
                    let scope = match (&i.email, &i.domain) {
                        (Some(email), _) => IdentityScope::Address(email.to_lowercase()),
                        (None, Some(domain)) => IdentityScope::Domain(domain.to_lowercase()),
                        // Refused at config load; `check-config` gets here with it anyway.
                        (None, None) => return None,
                    };
                    Some((i, scope))
                })
                .map(|(i, scope)| Identity {
                    id: i.id.clone(),
                    scope,
                    name: i.name.clone(),
                    text_signature: i.text_signature.clone(),
                    html_signature: i.html_signature.clone(),
                    configuration_set: i.configuration_set.clone(),
                    ses_tags: i
                        .ses_tags
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                })
                .collect();
            let account = Account {
                login: a.login.clone(),
                tenant_id: a.tenant_id.clone(),
                account_id: a.account_id.clone().unwrap_or_else(|| a.login.clone()),
                user_id: a.user_id.clone().unwrap_or_else(|| a.login.clone()),
                password_hash: hash,
                identities,
            };
            let account = Arc::new(account);
            for user in &a.unix_users {
                let Some(uid) = resolve_uid(user) else {
                    problems.push(format!("account {}: no Unix user {user}", a.login));
                    continue;
                };
                if by_uid.insert(uid, account.clone()).is_some() {
                    problems.push(format!("Unix user {user} is given to two accounts"));
                }
            }
            map.insert(a.login.to_lowercase(), account);
        }
        if !problems.is_empty() {
            anyhow::bail!("{}", problems.join("\n"));
        }
        Ok(Directory {
            accounts: map,
            by_uid,
            dummy_hash: hash_password("outbox-dummy-password")?,
        })
    }

    /// The account a local Unix user submits as.
    pub fn for_uid(&self, uid: u32) -> Option<Arc<Account>> {
        self.by_uid.get(&uid).cloned()
    }

    pub fn get(&self, login: &str) -> Option<Arc<Account>> {
        self.accounts.get(&login.to_lowercase()).cloned()
    }

    /// Checks a login and password. Blocking (argon2 is deliberately slow): call it from
    /// `spawn_blocking`. Unknown logins still cost one verification.
    pub fn verify(&self, login: &str, password: &str) -> Option<Arc<Account>> {
        let account = self.get(login);
        let hash = account
            .as_ref()
            .map_or(self.dummy_hash.as_str(), |a| a.password_hash.as_str());
        let ok = PasswordHash::new(hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false);
        account.filter(|_| ok)
    }
}

/// First buffer for one user database record when `sysconf(_SC_GETPW_R_SIZE_MAX)` gives no
/// size (POSIX allows -1, "no determinate limit"); ample for ordinary passwd entries.
const PASSWD_BUF_DEFAULT: usize = 16 * 1024;
/// Largest buffer tried when `getpwnam_r` answers ERANGE (NSS backends such as LDAP can return
/// large records); a record bigger than this counts as no such user.
const PASSWD_BUF_MAX: usize = 1024 * 1024;

/// A Unix user name or numeric uid, resolved through the system's user database.
///
/// Uses the re-entrant `getpwnam_r` with a buffer of our own: the config is resolved again on
/// every SIGHUP reload while the server's other threads run, and `getpwnam`'s shared static
/// record can be overwritten by a concurrent lookup before its uid is read.
fn resolve_uid(user: &str) -> Option<u32> {
    if let Ok(uid) = user.parse() {
        return Some(uid);
    }
    let name = std::ffi::CString::new(user).ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hint = unsafe { libc::sysconf(libc::_SC_GETPW_R_SIZE_MAX) };
    let first = usize::try_from(hint)
        .ok()
        .filter(|&n| n > 0)
        .unwrap_or(PASSWD_BUF_DEFAULT);
    lookup_uid(&name, first)
}

/// `getpwnam_r` with a buffer of `first` bytes, doubled on ERANGE up to [`PASSWD_BUF_MAX`].
fn lookup_uid(name: &std::ffi::CStr, first: usize) -> Option<u32> {
    let mut size = first.clamp(1, PASSWD_BUF_MAX);
    loop {
        let mut buf: Vec<libc::c_char> = vec![0; size];
        let mut entry = std::mem::MaybeUninit::<libc::passwd>::uninit();
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: `name` is NUL-terminated; `entry` and `buf` are ours, valid for writes, and
        // `buf.len()` is the buffer's true length. getpwnam_r fills `entry` (its strings point
        // into `buf`) and sets `found` to `entry` or to null.
        let rc = unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                entry.as_mut_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && size < PASSWD_BUF_MAX {
            size = (size * 2).min(PASSWD_BUF_MAX);
            continue;
        }
        // Not found (0 with a null result) or an error: no such user, as getpwnam's null was.
        if rc != 0 || found.is_null() {
            return None;
        }
        // SAFETY: a non-null `found` points at `entry`, which getpwnam_r filled in.
        return Some(unsafe { (*found).pw_uid });
    }
}

/// Runs password checks on a fixed set of threads. argon2 needs ~19 MiB per check; on
/// `spawn_blocking`'s many threads, glibc keeps a freed block in each thread's arena, and a
/// burst of logins (valid or not) grew the server by hundreds of MiB. A few dedicated threads
/// bound both the memory and the CPU spent on logins; further checks queue.
///
/// Successful checks can be remembered for a while ([`PasswordChecker::with_cache`]), as
/// Dovecot's auth cache does: a client that logs in again and again (an application sending
/// every few seconds, a reconnecting mail client) then costs one argon2 verification per period
/// instead of one per connection. Only successes are cached, keyed by an HMAC (per-process
/// random key) of the login, the password *and the stored hash*, so a changed password or a
/// reload that changes the hash misses; wrong passwords always pay the full price.
pub struct PasswordChecker {
    jobs: std::sync::Mutex<std::sync::mpsc::Sender<CheckJob>>,
    directory: Arc<Live<Directory>>,
    cache: std::sync::Mutex<HashMap<[u8; 32], Cached>>,
    cache_key: aws_lc_rs::hmac::Key,
    cache_ttl: std::time::Duration,
    verifications: Arc<std::sync::atomic::AtomicU64>,
}

/// A remembered success, or a check of the same credentials under way (which a burst of
/// identical logins waits for instead of running its own).
enum Cached {
    Verified(std::time::Instant),
    Pending(tokio::sync::watch::Receiver<Option<bool>>),
}

/// Remembered successes at most (the map is cleared when full).
const AUTH_CACHE_MAX: usize = 10_000;

struct CheckJob {
    login: String,
    password: String,
    reply: tokio::sync::oneshot::Sender<Option<Arc<Account>>>,
}

impl PasswordChecker {
    /// Checks run against the directory current at the time of each check (reloads apply).
    pub fn new(directory: Arc<Live<Directory>>, threads: usize) -> PasswordChecker {
        let (tx, rx) = std::sync::mpsc::channel::<CheckJob>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let verifications = Arc::new(std::sync::atomic::AtomicU64::new(0));
        for i in 0..threads.max(1) {
            let (rx, directory) = (rx.clone(), directory.clone());
            let verifications = verifications.clone();
            std::thread::Builder::new()
                .name(format!("password-check-{i}"))
                .spawn(move || loop {
                    let job = rx.lock().unwrap().recv();
                    let Ok(job) = job else { return };
                    verifications.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let _ = job
                        .reply
                        .send(directory.get().verify(&job.login, &job.password));
                })
                .expect("spawning a password-check thread");
        }
        let mut key = [0u8; 32];
        rand::fill(&mut key);
        PasswordChecker {
            jobs: std::sync::Mutex::new(tx),
            directory,
            cache: std::sync::Mutex::new(HashMap::new()),
            cache_key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key),
            cache_ttl: std::time::Duration::ZERO,
            verifications,
        }
    }

    /// Remembers successful checks for `ttl` (zero: never).
    pub fn with_cache(mut self, ttl: std::time::Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// argon2 verifications run so far.
    pub fn verifications(&self) -> u64 {
        self.verifications
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The account, if these credentials were verified within the cache's lifetime: no
    /// check runs, so callers need not count it against a failure budget.
    pub fn remembered(&self, login: &str, password: &str) -> Option<Arc<Account>> {
        let (tag, account) = self.cache_tag(login, password)?;
        match self.cache.lock().unwrap().get(&tag) {
            Some(Cached::Verified(at)) if at.elapsed() < self.cache_ttl => Some(account),
            _ => None,
        }
    }

    /// The account, if the password is right.
    pub async fn check(&self, login: String, password: String) -> Option<Arc<Account>> {
        let Some((tag, account)) = self.cache_tag(&login, &password) else {
            return self.verify(login, password).await;
        };
        let pending = {
            let mut cache = self.cache.lock().unwrap();
            match cache.get(&tag) {
                Some(Cached::Verified(at)) if at.elapsed() < self.cache_ttl => {
                    return Some(account)
                }
                Some(Cached::Pending(rx)) => Err(rx.clone()),
                _ => {
                    if cache.len() >= AUTH_CACHE_MAX {
                        cache.clear();
                    }
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    cache.insert(tag, Cached::Pending(rx));
                    Ok(tx)
                }
            }
        };
        match pending {
            // Someone is checking these very credentials: share the answer.
            Err(mut rx) => {
                let shared = rx
                    .wait_for(Option::is_some)
                    .await
                    .map(|ok| ok.unwrap_or(false));
                match shared {
                    Ok(ok) => ok.then_some(account),
                    // The checking task went away (its client hung up): check ourselves.
                    Err(_) => self.verify(login, password).await,
                }
            }
            Ok(tx) => {
                let verified = self.verify(login, password).await;
                let mut cache = self.cache.lock().unwrap();
                if verified.is_some() {
                    cache.insert(tag, Cached::Verified(std::time::Instant::now()));
                } else {
                    cache.remove(&tag);
                }
                let _ = tx.send(Some(verified.is_some()));
                verified
            }
        }
    }

    /// One argon2 verification on the checker's threads.
    async fn verify(&self, login: String, password: String) -> Option<Arc<Account>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = CheckJob {
            login,
            password,
            reply,
        };
        self.jobs.lock().unwrap().send(job).ok()?;
        answer.await.ok().flatten()
    }

    /// The cache key for a login and password against the account's current hash.
    fn cache_tag(&self, login: &str, password: &str) -> Option<([u8; 32], Arc<Account>)> {
        if self.cache_ttl.is_zero() {
            return None;
        }
        let account = self.directory.get().get(login)?;
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&self.cache_key);
        for part in [
            account.login.to_lowercase().as_bytes(),
            password.as_bytes(),
            account.password_hash.as_bytes(),
        ] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        let mut tag = [0u8; 32];
        tag.copy_from_slice(ctx.sign().as_ref());
        Some((tag, account))
    }
}

/// An argon2id PHC string for `password`, with a random salt and the default parameters.
pub fn hash_password(password: &str) -> Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| anyhow!("hashing password: {e}"))
}

/// Test fixtures: an account config with one address identity.
#[cfg(test)]
pub(crate) fn test_account(
    login: &str,
    password: &str,
    identity_id: &str,
    email: &str,
) -> AccountConfig {
    AccountConfig {
        login: login.into(),
        password_hash: Some(hash_password(password).unwrap()),
        password_hash_file: None,
        unix_users: vec![],
        tenant_id: "t".into(),
        account_id: None,
        user_id: None,
        identities: vec![crate::config::IdentityConfig {
            id: identity_id.into(),
            email: Some(email.into()),
            domain: None,
            name: String::new(),
            text_signature: None,
            html_signature: None,
            configuration_set: None,
            ses_tags: Default::default(),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IdentityConfig;

    fn directory() -> Directory {
        let identity = |id: &str, email: Option<&str>, domain: Option<&str>| IdentityConfig {
            id: id.into(),
            email: email.map(Into::into),
            domain: domain.map(Into::into),
            name: String::new(),
            text_signature: None,
            html_signature: None,
            configuration_set: None,
            ses_tags: Default::default(),
        };
        Directory::from_config(&[AccountConfig {
            login: "Alice".into(),
            password_hash: Some(hash_password("s3cret").unwrap()),
            password_hash_file: None,
            unix_users: vec!["0".into()],
            tenant_id: "t".into(),
            account_id: None,
            user_id: None,
            identities: vec![
                identity("a", Some("Alice@Example.com"), None),
                identity("d", None, Some("alice.test")),
            ],
        }])
        .unwrap()
    }

    #[test]
    fn verifies_passwords() {
        let dir = directory();
        assert_eq!(dir.verify("alice", "s3cret").unwrap().login, "Alice");
        assert!(dir.verify("alice", "wrong").is_none());
        assert!(dir.verify("mallory", "s3cret").is_none());
        assert!(dir.verify("", "").is_none());
        assert_eq!(dir.for_uid(0).unwrap().login, "Alice");
        assert!(dir.for_uid(4242).is_none());
    }

    #[tokio::test]
    async fn successes_are_cached_until_the_hash_changes_failures_never() {
        let live = Live::new(directory());
        let checker = Arc::new(
            PasswordChecker::new(live.clone(), 1).with_cache(std::time::Duration::from_secs(60)),
        );
        assert!(checker
            .check("alice".into(), "s3cret".into())
            .await
            .is_some());
        assert_eq!(checker.verifications(), 1);
        assert!(checker
            .check("ALICE".into(), "s3cret".into())
            .await
            .is_some());
        assert_eq!(checker.verifications(), 1, "served from the cache");
        for _ in 0..2 {
            assert!(checker
                .check("alice".into(), "wrong".into())
                .await
                .is_none());
        }
        assert_eq!(checker.verifications(), 3, "failures are never cached");
        // A reload with a new hash (the same password, re-hashed) misses the cache.
        live.set(directory());
        assert!(checker
            .check("alice".into(), "s3cret".into())
            .await
            .is_some());
        assert_eq!(checker.verifications(), 4);
        // A burst of identical logins runs one verification; a wrong password in the burst
        // is checked on its own.
        live.set(directory());
        let mut burst = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let checker = checker.clone();
            burst.spawn(async move { checker.check("alice".into(), "s3cret".into()).await });
        }
        assert!(checker
            .check("alice".into(), "wrong".into())
            .await
            .is_none());
        while let Some(result) = burst.join_next().await {
            assert!(result.unwrap().is_some());
        }
        assert_eq!(
            checker.verifications(),
            6,
            "one for the burst, one for the wrong password"
        );
        // Without a cache every check verifies.
        let uncached = PasswordChecker::new(live, 1);
        for _ in 0..2 {
            assert!(uncached
                .check("alice".into(), "s3cret".into())
                .await
                .is_some());
        }
        assert_eq!(uncached.verifications(), 2);
    }

    #[tokio::test]
    async fn checker_threads_verify() {
        let checker = PasswordChecker::new(Live::new(directory()), 2);
        let checks = ["s3cret", "wrong", "s3cret"].map(|p| checker.check("alice".into(), p.into()));
        let [a, b, c] = checks;
        let (a, b, c) = tokio::join!(a, b, c);
        assert_eq!(a.unwrap().login, "Alice");
        assert!(b.is_none());
        assert!(c.is_some());
        assert!(checker
            .check("nobody".into(), "s3cret".into())
            .await
            .is_none());
    }

    #[test]
    fn resolves_unix_users() {
        assert_eq!(resolve_uid("root"), Some(0));
        assert_eq!(resolve_uid("0"), Some(0));
        assert_eq!(resolve_uid("4242"), Some(4242));
        assert_eq!(resolve_uid("outbox-no-such-user"), None);
        assert_eq!(resolve_uid(""), None);
        assert_eq!(resolve_uid("ro\0ot"), None);
        // A buffer too small for the record grows until it fits (ERANGE, then doubling).
        assert_eq!(lookup_uid(c"root", 1), Some(0));
        assert_eq!(lookup_uid(c"outbox-no-such-user", 1), None);
    }

    /// A reload resolves users while other threads run. getpwnam's shared static record could
    /// hand one thread the uid another thread's lookup was writing.
    #[test]
    fn resolves_unix_users_from_many_threads() {
        // Whatever this system's user database says, looked up one at a time.
        let names = [
            "root",
            "daemon",
            "bin",
            "sys",
            "nobody",
            "outbox-no-such-user",
        ];
        let expected: Vec<(&str, Option<u32>)> =
            names.iter().map(|&n| (n, resolve_uid(n))).collect();
        assert_eq!(expected[0], ("root", Some(0)));
        assert_eq!(expected[5], ("outbox-no-such-user", None));
        let start = Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (start, expected) = (start.clone(), expected.clone());
                std::thread::spawn(move || {
                    start.wait();
                    for i in 0..2_000 {
                        let (name, want) = expected[(t + i) % expected.len()];
                        assert_eq!(resolve_uid(name), want, "{name}, thread {t}, round {i}");
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
    }

    #[test]
    fn ownership_table() {
        let dir = directory();
        let alice = dir.get("ALICE").unwrap();
        for (address, want) in [
            ("alice@example.com", Some("a")),
            ("ALICE@EXAMPLE.COM", Some("a")),
            ("bob@alice.test", Some("d")),
            ("alice@example.com.evil", None),
            ("alice@sub.alice.test", None),
            ("someone@example.com", None),
            ("", None),
            ("alice.test", None),
            ("x@", None),
        ] {
            assert_eq!(
                alice.identity_for(address).map(|i| i.id.as_str()),
                want,
                "{address}"
            );
        }
    }
}
