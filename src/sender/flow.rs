//! Flow control shared by all sender workers: the pace of the provider's quota, a bound on
//! MIME bytes in flight, and a circuit breaker that parks sending while the provider is
//! unreachable or has paused the account.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// A token bucket: `rate` sends per second on average, bursts of up to one second's worth.
/// Waiters reserve tokens (the count may go negative), so concurrent workers queue fairly.
pub struct Pace {
    rate: f64,
    burst: f64,
    bucket: Mutex<(f64, Option<Instant>)>,
}

impl Pace {
    /// `rate <= 0` or infinite means no pacing.
    pub fn new(rate: f64) -> Pace {
        let rate = if rate.is_finite() && rate > 0.0 {
            rate
        } else {
            0.0
        };
        let burst = rate.ceil().max(1.0);
        Pace {
            rate,
            burst,
            bucket: Mutex::new((burst, None)),
        }
    }

    /// Waits for this send's token.
    pub async fn wait(&self) {
        if self.rate == 0.0 {
            return;
        }
        let delay = {
            let mut bucket = self.bucket.lock().unwrap();
            let (tokens, last) = &mut *bucket;
            let now = Instant::now();
            if let Some(last) = last {
                *tokens = (*tokens + (now - *last).as_secs_f64() * self.rate).min(self.burst);
            }
            *last = Some(now);
            *tokens -= 1.0;
            if *tokens >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-*tokens / self.rate)
            }
        };
        tokio::time::sleep(delay).await;
    }
}

/// Bounds the MIME octets being sent at once, in KiB units.
pub struct InFlight {
    permits: Semaphore,
    total_kib: u32,
}

impl InFlight {
    pub fn new(max_bytes: u64) -> InFlight {
        let total_kib = (max_bytes / 1024).clamp(1, u64::from(u32::MAX >> 3)) as u32;
        InFlight {
            permits: Semaphore::new(total_kib as usize),
            total_kib,
        }
    }

    /// Waits until `size` more octets may be in flight. A message larger than the whole
    /// budget waits for all of it, then goes alone.
    pub async fn acquire(&self, size: u64) -> SemaphorePermit<'_> {
        let kib = (size.div_ceil(1024) as u32).clamp(1, self.total_kib);
        self.permits
            .acquire_many(kib)
            .await
            .expect("semaphore never closed")
    }
}

enum State {
    Closed,
    Open {
        until: Instant,
        backoff: Duration,
    },
    /// One worker is trying a send to see whether the provider is back.
    Probing {
        backoff: Duration,
    },
}

/// Stops all workers while the provider cannot take mail, instead of spending every queued
/// message's attempts on an outage. After the pause one worker probes; success closes it.
pub struct Breaker {
    state: Mutex<State>,
    changed: Notify,
    first_pause: Duration,
    max_pause: Duration,
}

impl Breaker {
    pub fn new(first_pause: Duration, max_pause: Duration) -> Breaker {
        Breaker {
            state: Mutex::new(State::Closed),
            changed: Notify::new(),
            first_pause,
            max_pause,
        }
    }

    /// Waits until this worker may send; true when it is admitted as the probe.
    pub async fn admit(&self) -> bool {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait_until = {
                let mut state = self.state.lock().unwrap();
                match *state {
                    State::Closed => return false,
                    State::Open { until, backoff } if Instant::now() >= until => {
                        *state = State::Probing { backoff };
                        return true;
                    }
                    State::Open { until, .. } => Some(until),
                    State::Probing { .. } => None,
                }
            };
            match wait_until {
                Some(until) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        _ = &mut notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Whether everyone may send (no pause, no probe under way).
    pub fn is_closed(&self) -> bool {
        matches!(*self.state.lock().unwrap(), State::Closed)
    }

    /// The provider answered (whatever it said): sending resumes.
    pub fn reachable(&self) {
        let mut state = self.state.lock().unwrap();
        if !matches!(*state, State::Closed) {
            tracing::info!("provider reachable again; sending resumes");
            *state = State::Closed;
            self.changed.notify_waiters();
        }
    }

    /// The provider could not take mail: pause everyone, longer each time.
    pub fn unavailable(&self) -> Duration {
        let mut state = self.state.lock().unwrap();
        let backoff = match *state {
            State::Closed => self.first_pause,
            State::Open { backoff, .. } | State::Probing { backoff } => {
                (backoff * 2).min(self.max_pause)
            }
        };
        *state = State::Open {
            until: Instant::now() + backoff,
            backoff,
        };
        self.changed.notify_waiters();
        backoff
    }

    /// The admitted probe found nothing to send: let the next worker with mail probe.
    pub fn probe_unused(&self) {
        let mut state = self.state.lock().unwrap();
        if let State::Probing { backoff } = *state {
            *state = State::Open {
                until: Instant::now(),
                backoff,
            };
            self.changed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pace_spaces_sends_after_a_burst() {
        let pace = Pace::new(2.0);
        let start = Instant::now();
        for _ in 0..6 {
            pace.wait().await;
        }
        // A burst of 2 at once, then one every 500 ms.
        assert_eq!(start.elapsed(), Duration::from_millis(2000));
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_bytes_bound() {
        let flight = InFlight::new(10 * 1024);
        let a = flight.acquire(6 * 1024).await;
        let blocked = tokio::time::timeout(Duration::from_secs(1), flight.acquire(6 * 1024)).await;
        assert!(blocked.is_err(), "12 KiB would exceed 10 KiB");
        drop(a);
        let _big = flight.acquire(100 * 1024).await; // larger than the budget: goes alone
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_pauses_then_one_probe_then_resumes() {
        let breaker = Arc::new(Breaker::new(
            Duration::from_secs(5),
            Duration::from_secs(60),
        ));
        breaker.admit().await; // closed: immediate
        assert_eq!(breaker.unavailable(), Duration::from_secs(5));
        let start = Instant::now();
        breaker.admit().await; // becomes the probe after the pause
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        // A second worker waits while the probe is out.
        let other = tokio::spawn({
            let breaker = breaker.clone();
            async move { breaker.admit().await }
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!other.is_finished(), "must wait for the probe's verdict");
        // The probe fails: the pause doubles.
        assert_eq!(breaker.unavailable(), Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(10)).await;
        other.await.unwrap(); // it became the next probe
        breaker.reachable();
        breaker.admit().await;
    }
}
