//! When to order: the renewal point of a certificate, and the backoff after failed orders.
//! Pure functions of times in Unix milliseconds (STYLE habit 7), so they are table-tested.

use std::time::Duration;

/// The renewal policy, from [`super::AcmeConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Renew when this much validity is left (capped at half the lifetime).
    pub renew_before: Duration,
    /// First wait after a failed order; doubled after each further failure.
    pub retry_base: Duration,
    /// Longest wait between two attempts.
    pub retry_max: Duration,
}

impl From<&super::AcmeConfig> for Policy {
    fn from(c: &super::AcmeConfig) -> Self {
        Policy {
            renew_before: Duration::from_secs(c.renew_before_days.saturating_mul(86_400)),
            retry_base: Duration::from_secs(c.retry_base_secs),
            retry_max: Duration::from_secs(c.retry_max_secs),
        }
    }
}

/// The validity window of the certificate being served, Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before_ms: u64,
    pub not_after_ms: u64,
}

/// When a certificate should be renewed: `renew_before` ahead of its expiry, but never before
/// half its lifetime has passed (Let's Encrypt's 6-day and Pebble's test certificates would
/// otherwise be renewed at once, again and again).
pub fn renew_at(validity: Validity, renew_before: Duration) -> u64 {
    let lifetime = validity.not_after_ms.saturating_sub(validity.not_before_ms);
    let before = (renew_before.as_millis() as u64).min(lifetime / 2);
    validity.not_after_ms - before
}

/// The wait after `failures` consecutive failed orders (1: the first): `retry_base`, doubling,
/// at most `retry_max`.
pub fn retry_delay(failures: u32, policy: &Policy) -> Duration {
    let doublings = failures.saturating_sub(1).min(30);
    policy
        .retry_base
        .saturating_mul(1u32 << doublings)
        .min(policy.retry_max)
}

/// What the manager knows when it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Situation {
    /// The stored certificate, if any, and whether it covers exactly the configured names.
    pub current: Option<(Validity, bool)>,
    /// Consecutive failed orders, and when the last one failed.
    pub failures: u32,
    pub last_failure_ms: u64,
}

/// When to place the next order (Unix milliseconds; at or before `now`: at once).
pub fn next_order_at(situation: Situation, policy: &Policy) -> u64 {
    let due = match situation.current {
        Some((validity, true)) => renew_at(validity, policy.renew_before),
        // No certificate, or one for other names: order now.
        _ => 0,
    };
    if situation.failures == 0 {
        return due;
    }
    let retry = situation
        .last_failure_ms
        .saturating_add(retry_delay(situation.failures, policy).as_millis() as u64);
    due.max(retry)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000;

    fn policy() -> Policy {
        Policy {
            renew_before: Duration::from_secs(30 * 86_400),
            retry_base: Duration::from_secs(60),
            retry_max: Duration::from_secs(6 * 3600),
        }
    }

    /// Rule: a 90-day certificate is renewed 30 days before it expires; a short-lived one
    /// halfway through its life; a test certificate of 20 s after 10 s.
    #[test]
    fn renewal_point() {
        let p = policy();
        for (lifetime, want) in [
            (90 * DAY, 60 * DAY),
            (6 * DAY, 3 * DAY),
            (20_000, 10_000),
            (0, 0),
        ] {
            let v = Validity {
                not_before_ms: 1_000 * DAY,
                not_after_ms: 1_000 * DAY + lifetime,
            };
            assert_eq!(
                renew_at(v, p.renew_before),
                1_000 * DAY + want,
                "{lifetime}"
            );
        }
        // An operator's larger margin is honoured up to half the lifetime.
        let v = Validity {
            not_before_ms: 0,
            not_after_ms: 90 * DAY,
        };
        assert_eq!(renew_at(v, Duration::from_secs(40 * 86_400)), 50 * DAY);
        assert_eq!(renew_at(v, Duration::from_secs(80 * 86_400)), 45 * DAY);
    }

    #[test]
    fn backoff_doubles_up_to_the_ceiling() {
        let p = policy();
        let waits: Vec<u64> = (1..=11).map(|n| retry_delay(n, &p).as_secs()).collect();
        assert_eq!(
            waits,
            [60, 120, 240, 480, 960, 1920, 3840, 7680, 15360, 21600, 21600]
        );
        assert_eq!(retry_delay(u32::MAX, &p).as_secs(), 21600);
    }

    #[test]
    fn next_order() {
        let p = policy();
        let v = Validity {
            not_before_ms: 0,
            not_after_ms: 90 * DAY,
        };
        let at = |current, failures, last_failure_ms| {
            next_order_at(
                Situation {
                    current,
                    failures,
                    last_failure_ms,
                },
                &p,
            )
        };
        // Nothing stored, or stored for other names: now.
        assert_eq!(at(None, 0, 0), 0);
        assert_eq!(at(Some((v, false)), 0, 0), 0);
        // A good certificate: at its renewal point, whatever the failures before it.
        assert_eq!(at(Some((v, true)), 0, 0), 60 * DAY);
        assert_eq!(at(Some((v, true)), 3, 60 * DAY), 60 * DAY + 240_000);
        // Failing without a certificate: backoff from the last failure.
        assert_eq!(at(None, 1, 5_000), 65_000);
        assert_eq!(at(None, 2, 5_000), 125_000);
    }
}
