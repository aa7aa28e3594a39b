//! The certificate's life: wait until an order is due ([`super::schedule`]), order, store,
//! swap into the listeners; on failure, log, count and retry with backoff. The stored
//! certificate is the state: after a restart the loop picks up where it was, and orders
//! nothing while the stored certificate is good (CAs rate-limit orders).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::client::Issuer;
use super::schedule::{next_order_at, retry_delay, Policy, Situation};
use super::store::CertInfo;
use super::Acme;
use crate::clock::{rfc3339, Clock};
use crate::live::Live;
use crate::metrics::Metrics;

/// The longest single sleep: the schedule is looked at again after it, so a suspended host or
/// a wall-clock jump delays a renewal by at most this much.
const RECHECK: Duration = Duration::from_secs(3600);

pub struct Manager<I> {
    pub acme: Arc<Acme>,
    pub issuer: I,
    pub tls: Arc<Live<rustls::ServerConfig>>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
}

/// Publishes the served certificate's expiry (also for certificates from files).
pub fn record_expiry(metrics: &Metrics, info: Option<&CertInfo>) {
    let secs = info.map_or(0, |i| i.validity.not_after_ms / 1000);
    metrics.tls_certificate_expiry.set(secs as i64);
}

impl<I: Issuer> Manager<I> {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let config = &self.acme.config;
        let policy = Policy::from(config);
        let mut failures = 0u32;
        let mut last_failure_ms = 0u64;
        let mut announced = None;
        loop {
            let current = self.acme.usable_certificate().map(|(_, info)| info);
            let situation = Situation {
                current: current
                    .as_ref()
                    .map(|i| (i.validity, i.covers_exactly(&config.domains))),
                failures,
                last_failure_ms,
            };
            let at = next_order_at(situation, &policy);
            let now = self.clock.now_ms();
            if at > now {
                if announced != Some(at) && failures == 0 {
                    tracing::info!(
                        renew_at = %rfc3339(at),
                        serial = current.as_ref().map(|c| c.serial.as_str()),
                        "ACME certificate good; renewal scheduled"
                    );
                }
                announced = Some(at);
                let wait = Duration::from_millis(at - now).min(RECHECK);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            tracing::info!(
                domains = ?config.domains,
                directory = %config.directory,
                reason = match &current {
                    None => "no certificate yet",
                    Some(c) if !c.covers_exactly(&config.domains) => "names changed",
                    Some(_) => "renewal due",
                },
                "ACME: ordering a certificate"
            );
            let issued = tokio::select! {
                issued = self.issuer.issue() => issued,
                _ = stop.wait_for(|s| *s) => return,
            };
            let stored = issued.and_then(|issued| {
                self.acme
                    .store
                    .save_certificate(&issued.chain_pem, &issued.key_pem)
            });
            // A certificate that was stored but cannot be served (the placeholder came back)
            // is a failure too: without backoff it would be re-ordered at once, again and again.
            let served = stored
                .and_then(|_| self.acme.swap_into(&self.tls))
                .and_then(|info| {
                    info.ok_or_else(|| anyhow::anyhow!("the issued certificate cannot be served"))
                });
            match served {
                Ok(info) => {
                    failures = 0;
                    self.metrics.acme_order("issued");
                    record_expiry(&self.metrics, Some(&info));
                    tracing::info!(
                        serial = %info.serial,
                        not_after = %rfc3339(info.validity.not_after_ms),
                        path = %self.acme.store.certificate_path().display(),
                        "ACME certificate issued; now served on every TLS listener"
                    );
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    last_failure_ms = self.clock.now_ms();
                    self.metrics.acme_order("failed");
                    tracing::error!(
                        error = %format!("{e:#}"),
                        directory = %config.directory,
                        failures,
                        retry_in_secs = retry_delay(failures, &policy).as_secs(),
                        "ACME order failed"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::client::Issued;
    use crate::acme::AcmeConfig;
    use crate::clock::TokioClock;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// 2030-01-01T00:00:00Z.
    const BASE_MS: u64 = 1_893_456_000_000;
    const DAY: u64 = 86_400_000;

    /// Issues 10-day certificates from the (paused) clock's now, or fails, as scripted;
    /// reports the time of each call.
    struct FakeCa {
        clock: Arc<dyn Clock>,
        script: Mutex<VecDeque<bool>>,
        calls: tokio::sync::mpsc::UnboundedSender<u64>,
    }

    impl Issuer for FakeCa {
        async fn issue(&self) -> anyhow::Result<Issued> {
            let now = self.clock.now_ms();
            let _ = self.calls.send(now - BASE_MS);
            let ok = self.script.lock().unwrap().pop_front().unwrap_or(true);
            anyhow::ensure!(ok, "the CA said no");
            let start = time::OffsetDateTime::from_unix_timestamp((now / 1000) as i64).unwrap();
            let mut params =
                rcgen::CertificateParams::new(vec!["mail.example.com".to_string()]).unwrap();
            params.not_before = start;
            params.not_after = start + time::Duration::days(10);
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            Ok(Issued {
                chain_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            })
        }
    }

    /// An ACME setup for one name, its state under `dir`.
    fn test_acme(dir: &std::path::Path) -> Arc<Acme> {
        let config: AcmeConfig = toml::from_str(
            r#"domains = ["mail.example.com"]
directory = "https://ca.test/dir""#,
        )
        .unwrap();
        Acme::new(config, dir)
    }

    /// Rule: no certificate → order at once; a 10-day certificate is renewed at half its life
    /// (the 30-day margin capped); failures retry after 60 s, then 120 s; every success is
    /// swapped into the live TLS configuration and counted.
    #[tokio::test(start_paused = true)]
    async fn orders_at_once_renews_halfway_and_backs_off() {
        let dir = tempfile::tempdir().unwrap();
        let acme = test_acme(dir.path());
        let (placeholder, _) = acme.server_config().unwrap();
        let tls = Live::new(placeholder);
        let first = tls.get();
        let clock: Arc<dyn Clock> = TokioClock::new(BASE_MS);
        let (calls_tx, mut calls) = tokio::sync::mpsc::unbounded_channel();
        let metrics = Metrics::new();
        let manager = Manager {
            acme: acme.clone(),
            issuer: FakeCa {
                clock: clock.clone(),
                script: Mutex::new([true, false, false, true].into()),
                calls: calls_tx,
            },
            tls: tls.clone(),
            metrics: metrics.clone(),
            clock,
        };
        let (stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(manager.run(stop));

        assert_eq!(calls.recv().await.unwrap(), 0);
        let renewal = 5 * DAY;
        // The first renewal fails twice, then succeeds.
        let t = calls.recv().await.unwrap();
        assert!((renewal..renewal + 1000).contains(&t), "{t}");
        assert!(
            !Arc::ptr_eq(&first, &tls.get()),
            "issued certificate swapped in"
        );
        let t = calls.recv().await.unwrap();
        assert!((renewal + 60_000..renewal + 61_000).contains(&t), "{t}");
        let t = calls.recv().await.unwrap();
        assert!((renewal + 180_000..renewal + 181_000).contains(&t), "{t}");
        let t = calls.recv().await.unwrap();
        assert!(
            (renewal + 180_000 + 5 * DAY..renewal + 182_000 + 5 * DAY).contains(&t),
            "{t}"
        );
        let counted = |result: &str| {
            metrics
                .acme_orders
                .get_or_create(&crate::metrics::OrderResult {
                    result: result.into(),
                })
                .get()
        };
        // The last success may still be on its way to the store when its call is seen.
        assert!(counted("issued") >= 2);
        assert_eq!(counted("failed"), 2);
        assert!(metrics.tls_certificate_expiry.get() > (BASE_MS / 1000) as i64);
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }

    /// Rule: a stored, good certificate is reused after a restart: nothing is ordered until
    /// its renewal point.
    #[tokio::test(start_paused = true)]
    async fn a_stored_certificate_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let acme = test_acme(dir.path());
        let clock: Arc<dyn Clock> = TokioClock::new(BASE_MS);
        let (calls_tx, mut calls) = tokio::sync::mpsc::unbounded_channel();
        let ca = FakeCa {
            clock: clock.clone(),
            script: Mutex::new(VecDeque::new()),
            calls: calls_tx,
        };
        let issued = ca.issue().await.unwrap();
        assert_eq!(calls.recv().await, Some(0));
        acme.store
            .save_certificate(&issued.chain_pem, &issued.key_pem)
            .unwrap();
        let (config, info) = acme.server_config().unwrap();
        assert!(info.is_some());
        let manager = Manager {
            acme,
            issuer: ca,
            tls: Live::new(config),
            metrics: Metrics::new(),
            clock,
        };
        let (_stop_tx, stop) = watch::channel(false);
        tokio::spawn(manager.run(stop));
        let t = calls.recv().await.unwrap();
        assert!((5 * DAY..5 * DAY + 1000).contains(&t), "{t}");
    }
}
