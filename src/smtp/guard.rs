//! Shared limits across connections: connection caps (overall and per client IP) and the
//! per-IP AUTH failure cool-down.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The unit per-client limits count: an IPv4 address, or an IPv6 /64 (one customer's
/// subnet: per-address limits would be void against anyone holding a /64).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
        v4 => v4,
    }
}

/// Counts open connections; a [`ConnectionPermit`] gives its slot back when dropped.
pub struct ConnectionLimiter {
    max_total: usize,
    max_per_ip: usize,
    state: Mutex<(usize, HashMap<IpAddr, usize>)>,
    /// Signalled when the last connection ends (graceful shutdown waits on it).
    idle: Notify,
}

pub struct ConnectionPermit {
    limiter: Arc<ConnectionLimiter>,
    ip: IpAddr,
}

impl ConnectionLimiter {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(ConnectionLimiter {
            max_total,
            max_per_ip,
            state: Mutex::new((0, HashMap::new())),
            idle: Notify::new(),
        })
    }

    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionPermit> {
        let ip = client_key(ip);
        let mut state = self.state.lock().unwrap();
        let (total, per_ip) = &mut *state;
        let count = per_ip.entry(ip).or_insert(0);
        if *total >= self.max_total || *count >= self.max_per_ip {
            if *count == 0 {
                per_ip.remove(&ip);
            }
            return None;
        }
        *count += 1;
        *total += 1;
        Some(ConnectionPermit {
            limiter: self.clone(),
            ip,
        })
    }

    pub fn open(&self) -> usize {
        self.state.lock().unwrap().0
    }

    /// Resolves once no connection is open.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut state = self.limiter.state.lock().unwrap();
        let (total, per_ip) = &mut *state;
        *total -= 1;
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
        if *total == 0 {
            self.limiter.idle.notify_waiters();
        }
    }
}

/// Remembers AUTH failures per client IP; too many within the window blocks AUTH from that IP
/// for the cool-down, whatever the password.
///
/// A password check takes a slot of the budget *before* it starts ([`AuthThrottle::begin`]) and
/// gives it back only if it succeeds: checks in flight count as failures until they are done, so
/// a client sending its attempts in parallel gets no more full checks than one sending them in
/// turn. An attempt that finds the budget full of checks *in flight* (not of failures) waits for
/// one of them to settle rather than being refused: a program opening 50 sessions at once for
/// 50 different accounts gets them all, a few milliseconds later, while a guesser's parallel
/// attempts still meet the block their first failures set.
pub struct AuthThrottle {
    max_failures: u32,
    window: Duration,
    cooldown: Duration,
    state: Mutex<HashMap<IpAddr, IpRecord>>,
    /// Woken whenever a check settles.
    settled: tokio::sync::Notify,
}

struct IpRecord {
    failures: u32,
    /// Checks begun and not yet settled.
    in_flight: u32,
    window_start: Instant,
    blocked_until: Option<Instant>,
}

/// A reserved slot of an address's failure budget for one password check. It counts as a
/// failure when dropped, unless [`AuthAttempt::succeeded`] was called: a check whose client
/// went away half-way is a failure too.
pub struct AuthAttempt {
    throttle: Arc<AuthThrottle>,
    ip: IpAddr,
    succeeded: bool,
}

impl AuthAttempt {
    /// The password was right: the slot goes back unused.
    pub fn succeeded(mut self) {
        self.succeeded = true;
    }
}

impl Drop for AuthAttempt {
    fn drop(&mut self) {
        self.throttle.settle(self.ip, !self.succeeded);
    }
}

impl AuthThrottle {
    pub fn new(max_failures: u32, window: Duration, cooldown: Duration) -> Self {
        AuthThrottle {
            max_failures,
            window,
            cooldown,
            state: Mutex::new(HashMap::new()),
            settled: tokio::sync::Notify::new(),
        }
    }

    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        let ip = client_key(ip);
        let now = Instant::now();
        let state = self.state.lock().unwrap();
        state
            .get(&ip)
            .and_then(|r| r.blocked_until)
            .is_some_and(|until| now < until)
    }

    /// Reserves a slot for one password check from `ip`; `None` while the address cools down
    /// (answer as blocked). While failures plus checks in flight fill its budget, waits for a
    /// check in flight to settle and decides again (the caller's command timeout bounds it).
    pub async fn begin(self: &Arc<Self>, ip: IpAddr) -> Option<AuthAttempt> {
        loop {
            let settled = self.settled.notified();
            match self.try_begin(ip) {
                Begin::Go(attempt) => return Some(attempt),
                Begin::Blocked => return None,
                Begin::Wait => settled.await,
            }
        }
    }

    fn try_begin(self: &Arc<Self>, ip: IpAddr) -> Begin {
        let key = client_key(ip);
        let now = Instant::now();
        let mut state = self.state.lock().unwrap();
        self.forget_old(&mut state, now);
        let record = state.entry(key).or_insert_with(|| IpRecord::new(now));
        if record.blocked_until.is_some_and(|until| now < until) {
            return Begin::Blocked;
        }
        if now - record.window_start >= self.window {
            record.failures = 0;
            record.window_start = now;
        }
        if record.failures >= self.max_failures {
            return Begin::Blocked;
        }
        if record.failures + record.in_flight >= self.max_failures {
            return Begin::Wait;
        }
        record.in_flight += 1;
        Begin::Go(AuthAttempt {
            throttle: self.clone(),
            ip: key,
            succeeded: false,
        })
    }

    /// Counts one failed check that took no slot (kept for callers outside a check).
    pub fn record_failure(&self, ip: IpAddr) {
        let ip = client_key(ip);
        let now = Instant::now();
        let mut state = self.state.lock().unwrap();
        self.forget_old(&mut state, now);
        let record = state.entry(ip).or_insert_with(|| IpRecord::new(now));
        self.fail(ip, record, now);
    }

    fn settle(&self, ip: IpAddr, failed: bool) {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap();
        let Some(record) = state.get_mut(&ip) else {
            return;
        };
        record.in_flight = record.in_flight.saturating_sub(1);
        if failed {
            self.fail(ip, record, now);
        }
        drop(state);
        self.settled.notify_waiters();
    }

    fn fail(&self, ip: IpAddr, record: &mut IpRecord, now: Instant) {
        if now - record.window_start >= self.window {
            record.failures = 0;
            record.window_start = now;
        }
        record.failures += 1;
        if record.failures >= self.max_failures {
            record.blocked_until = Some(now + self.cooldown);
            record.failures = 0;
            record.window_start = now;
            tracing::warn!(%ip, "AUTH blocked for this address after repeated failures");
        }
    }

    /// Keeps the table bounded: forgets addresses that are neither blocked, busy nor recent.
    fn forget_old(&self, state: &mut HashMap<IpAddr, IpRecord>, now: Instant) {
        if state.len() > 100_000 {
            let window = self.window;
            state.retain(|_, r| {
                r.in_flight > 0
                    || r.blocked_until.is_some_and(|u| now < u)
                    || now - r.window_start < window
            });
        }
    }
}

/// What [`AuthThrottle::try_begin`] decided.
enum Begin {
    Go(AuthAttempt),
    Blocked,
    /// The budget is full of checks in flight: wait for one to settle.
    Wait,
}

impl IpRecord {
    fn new(now: Instant) -> Self {
        IpRecord {
            failures: 0,
            in_flight: 0,
            window_start: now,
            blocked_until: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_caps() {
        let limiter = ConnectionLimiter::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = limiter.try_acquire(a).unwrap();
        let _p2 = limiter.try_acquire(a).unwrap();
        assert!(limiter.try_acquire(a).is_none(), "per-IP cap");
        let _p3 = limiter.try_acquire(b).unwrap();
        assert!(limiter.try_acquire(b).is_none(), "total cap");
        drop(p1);
        assert!(limiter.try_acquire(a).is_some());
        assert_eq!(limiter.open(), 3 - 1, "the temporary permit was dropped");
    }

    #[test]
    fn ipv6_clients_counted_per_64() {
        let limiter = ConnectionLimiter::new(10, 1);
        let _a = limiter
            .try_acquire("2001:db8:1:2::1".parse().unwrap())
            .unwrap();
        assert!(
            limiter
                .try_acquire("2001:db8:1:2:ffff::9".parse().unwrap())
                .is_none(),
            "same /64"
        );
        assert!(
            limiter
                .try_acquire("2001:db8:1:3::1".parse().unwrap())
                .is_some(),
            "other /64"
        );
        let _b = limiter.try_acquire("192.0.2.7".parse().unwrap()).unwrap();
        assert!(
            limiter
                .try_acquire("::ffff:192.0.2.7".parse().unwrap())
                .is_none(),
            "v4-mapped is v4"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn auth_cooldown_expires() {
        let throttle = AuthThrottle::new(3, Duration::from_secs(60), Duration::from_secs(300));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        throttle.record_failure(ip);
        throttle.record_failure(ip);
        assert!(!throttle.is_blocked(ip));
        throttle.record_failure(ip);
        assert!(throttle.is_blocked(ip));
        tokio::time::advance(Duration::from_secs(299)).await;
        assert!(throttle.is_blocked(ip));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!throttle.is_blocked(ip));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_outside_the_window_do_not_add_up() {
        let throttle = AuthThrottle::new(3, Duration::from_secs(60), Duration::from_secs(300));
        let ip: IpAddr = "192.0.2.2".parse().unwrap();
        throttle.record_failure(ip);
        throttle.record_failure(ip);
        tokio::time::advance(Duration::from_secs(61)).await;
        throttle.record_failure(ip);
        assert!(!throttle.is_blocked(ip));
    }

    /// Rule: checks in flight count against the per-IP failure budget, so 200 attempts begun
    /// at once get at most the budget's worth of password checks — the rest wait, and are
    /// refused once those fail; successes give their slot back.
    #[tokio::test(start_paused = true)]
    async fn parallel_attempts_get_at_most_the_budget() {
        let throttle = Arc::new(AuthThrottle::new(
            10,
            Duration::from_secs(600),
            Duration::from_secs(300),
        ));
        let ip: IpAddr = "192.0.2.3".parse().unwrap();
        let mut waiting = tokio::task::JoinSet::new();
        for _ in 0..190 {
            let t = throttle.clone();
            waiting.spawn(async move { t.begin(ip).await.is_some() });
        }
        let mut attempts = Vec::new();
        for _ in 0..10 {
            attempts.push(throttle.begin(ip).await.expect("a slot of the budget"));
        }
        tokio::task::yield_now().await;
        assert_eq!(
            waiting.len(),
            190,
            "the other attempts wait: the budget is in flight"
        );
        drop(attempts); // ten failures
        assert!(throttle.is_blocked(ip), "ten failures block the address");
        let granted = waiting.join_all().await;
        assert!(
            granted.iter().all(|g| !g),
            "every waiting attempt is refused"
        );
        assert!(throttle.begin(ip).await.is_none());

        let other: IpAddr = "192.0.2.4".parse().unwrap();
        for _ in 0..50 {
            throttle.begin(other).await.unwrap().succeeded();
        }
        assert!(!throttle.is_blocked(other), "successes cost nothing");
    }

    /// Rule: a client logging in to many accounts at once from one address (a program with a
    /// connection per account) is not refused for checks that have not failed: attempts beyond
    /// the budget wait for earlier ones to succeed, then get their check.
    #[tokio::test(start_paused = true)]
    async fn parallel_logins_that_succeed_all_get_through() {
        let throttle = Arc::new(AuthThrottle::new(
            10,
            Duration::from_secs(600),
            Duration::from_secs(300),
        ));
        let ip: IpAddr = "192.0.2.5".parse().unwrap();
        let mut logins = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let t = throttle.clone();
            logins.spawn(async move {
                let attempt = t.begin(ip).await?;
                tokio::time::sleep(Duration::from_millis(40)).await; // the password check
                attempt.succeeded();
                Some(())
            });
        }
        let done = logins.join_all().await;
        assert_eq!(done.iter().filter(|d| d.is_some()).count(), 50);
        assert!(!throttle.is_blocked(ip));
    }
}
