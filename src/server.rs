//! The composition root: the only module that sees every part. It builds the directory, TLS,
//! spool, submitter, transport and senders from the config, binds the listeners, announces
//! readiness, and on shutdown stops accepting, lets sessions and sends finish, and returns.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::watch;

use crate::accounts::{Directory, PasswordChecker};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, SpoolBackend, TransportConfig};
use crate::live::Live;
use crate::metrics::Metrics;
use crate::sender::dkim::DkimKeys;
use crate::sender::flow::{InFlight, Pace};
use crate::sender::{self, Sender};
use crate::smtp::conn::ConnContext;
use crate::smtp::guard::{AuthThrottle, ConnectionLimiter};
use crate::smtp::listener::accept_loop;
use crate::smtp::session::PortKind;
use crate::spool::SpoolOptions;
use crate::submission::Submitter;
use crate::tls;
use crate::transport::dir::DirTransport;
use crate::transport::ses::SesTransport;
use crate::transport::smtp::SmtpTransport;
use crate::transport::sqs::SqsTransport;
use crate::transport::Transport;

/// How long shutdown waits for open SMTP sessions to finish their transaction.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// Everything `outbox check-config` can verify without starting: the parts built from the
/// config (accounts and their Unix users, DKIM keys, TLS material if present). Empty: fine.
pub fn check(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = Directory::from_config(&config.accounts) {
        // One problem per line (every account is checked).
        problems.extend(format!("{e:#}").lines().map(str::to_string));
    }
    if let Err(e) = DkimKeys::load(&config.dkim) {
        problems.push(format!("dkim: {e:#}"));
    }
    if let Err(e) =
        crate::feedback::fetch::SnsFetcher::new(config.feedback.test_trust_override.as_ref())
    {
        problems.push(format!("{e:#}"));
    }
    if let Some(acme) = &config.tls.acme {
        // The certificate comes from the CA; only the directory's extra roots are files.
        if let Some(path) = &acme.directory_ca {
            if let Err(e) = crate::acme::client::read_roots(path) {
                problems.push(format!("{e:#}"));
            }
        }
    } else if config.tls.cert.exists() && config.tls.key.exists() {
        if let Err(e) = tls::server_config(&config.tls) {
            problems.push(format!("tls: {e:#}"));
        }
    } else if !config.tls.generate_dev_cert {
        problems.push(format!(
            "tls: {} or {} missing",
            config.tls.cert.display(),
            config.tls.key.display()
        ));
    }
    problems
}

/// Runs Outbox until `stop` resolves. With `config_path`, SIGHUP re-reads that file and swaps
/// in its accounts, identities and TLS certificate without dropping connections.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    stop: impl Future<Output = ()>,
) -> Result<()> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let directory = Live::new(Directory::from_config(&config.accounts)?);
    crate::state_files::create_dir(&config.state_dir, crate::state_files::STATE_DIR_MODE)
        .with_context(|| format!("creating {}", config.state_dir.display()))?;
    // With ACME: the stored certificate, or a self-signed placeholder until the first order
    // completes (the server starts either way; see `acme`).
    let acme = config
        .tls
        .acme
        .clone()
        .map(|c| crate::acme::Acme::new(c, &config.state_dir));
    let (tls_config, cert_info) = match &acme {
        Some(acme) => {
            let (server_config, info) = acme.server_config()?;
            if info.is_none() {
                tracing::warn!(
                    domains = ?acme.config.domains,
                    "no ACME certificate yet: serving a self-signed placeholder until the first order completes"
                );
            }
            (Live::new(server_config), info)
        }
        None => (
            Live::new(tls::server_config(&config.tls)?),
            tls::file_cert_info(&config.tls),
        ),
    };
    // The composition root is the one place that picks the storage backend.
    let spool = match (config.spool.backend, &config.spool.aws) {
        (SpoolBackend::Aws, Some(aws)) => {
            crate::spool::aws::open(aws, SpoolOptions::from(&config.spool), clock.clone())
                .await
                .context("connecting to the AWS spool (SQS, S3, DynamoDB; see `outbox aws-init`)")?
        }
        _ => crate::spool::redb::open(
            &config.state_dir.join("spool"),
            SpoolOptions::from(&config.spool),
            clock.clone(),
        )
        .context("opening the spool")?,
    };
    let reputation = crate::reputation::Reputation::open(
        config.reputation.clone(),
        config.identity_ids(),
        spool.clone(),
        clock.clone(),
    )
    .await;
    let submitter = Arc::new(
        Submitter::new(spool.clone(), config.hostname.clone(), clock.clone())
            .for_transport(&config.sender.transport)
            .with_reputation(reputation.clone()),
    );
    let (transport, send_rate): (Arc<dyn Transport>, f64) = match &config.sender.transport {
        TransportConfig::Dir { path } => (Arc::new(DirTransport::new(path.clone())), 0.0),
        TransportConfig::Ses(ses) => {
            let ses = SesTransport::new(ses.clone()).await;
            let rate = ses.send_rate().await;
            tracing::info!(rate, "pacing SES sends");
            (Arc::new(ses), rate)
        }
        TransportConfig::Smtp(relay) => (Arc::new(SmtpTransport::new(relay.clone())?), 0.0),
        TransportConfig::Sqs(sqs) => (Arc::new(SqsTransport::new(sqs.clone()).await), 0.0),
    };
    // JMAP's own store (drafts, blobs, identity overrides); the sender reads signatures a
    // client set through Identity/set from it.
    let jmap_store = Arc::new(match (config.spool.backend, &config.spool.aws) {
        // Shared by every node, beside the spool (drafts, uploads, states, tokens).
        (SpoolBackend::Aws, Some(aws)) => {
            let (_, s3, ddb) = crate::spool::aws::clients(aws).await;
            crate::jmap::Store::shared(crate::jmap::store::aws::AwsStore::new(
                ddb,
                s3,
                aws.table.clone(),
                aws.bucket.clone(),
            ))
        }
        _ => crate::jmap::Store::open(&config.state_dir.join("jmap.redb"))
            .context("opening the JMAP store")?,
    });
    let mut sender = Sender::new(
        spool.clone(),
        transport,
        directory.clone(),
        config.hostname.clone(),
        clock.clone(),
    );
    sender.pace = Pace::new(send_rate);
    sender.in_flight = InFlight::new(config.sender.max_in_flight_bytes);
    sender.dkim = DkimKeys::load(&config.dkim)?;
    let metrics = Metrics::new();
    crate::acme::manager::record_expiry(&metrics, cert_info.as_ref());
    let _ = metrics.reputation.set(reputation.clone());
    sender.metrics = metrics.clone();
    sender.reputation = Some(reputation.clone());
    sender.signatures = Some(jmap_store.clone());
    let feedback = crate::feedback::service::FeedbackService::new(
        &config.feedback,
        spool.ledger.clone(),
        metrics.clone(),
        clock.clone(),
    )?;
    if config.feedback.simulate && matches!(config.sender.transport, TransportConfig::Dir { .. }) {
        let simulator = crate::feedback::simulator::Simulator::new(feedback.clone());
        sender.on_sent = Some(Arc::new(move |notice| simulator.sent(notice)));
        tracing::info!(
            "SES mailbox simulator on: mail to *@simulator.amazonses.com produces SES events"
        );
    }
    let sender = Arc::new(sender);

    let smtp = &config.smtp;
    let ctx = Arc::new(ConnContext {
        hostname: config.hostname.clone(),
        smtp: smtp.clone(),
        passwords: Arc::new(
            PasswordChecker::new(
                directory.clone(),
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )
            .with_cache(Duration::from_secs(smtp.auth_cache_secs)),
        ),
        submitter,
        metrics: metrics.clone(),
        auth_throttle: Arc::new(AuthThrottle::new(
            smtp.auth_failures_per_ip,
            Duration::from_secs(smtp.auth_failure_window_secs),
            Duration::from_secs(smtp.auth_cooldown_secs),
        )),
        tls: tls_config.clone(),
    });
    let limiter = ConnectionLimiter::new(smtp.max_connections, smtp.max_connections_per_ip);
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut bound = (Vec::new(), Vec::new());
    let mut tasks = Vec::new();
    for (addrs, kind) in [
        (&smtp.submission_listen, PortKind::Submission),
        (&smtp.submissions_listen, PortKind::Submissions),
    ] {
        for addr in addrs {
            let listener = crate::smtp::listener::bind(*addr, smtp.max_connections)
                .with_context(|| format!("binding {addr}"))?;
            let local: SocketAddr = listener.local_addr()?;
            tracing::info!(addr = %local, ?kind, "listening");
            match kind {
                PortKind::Submission => bound.0.push(local.to_string()),
                PortKind::Submissions => bound.1.push(local.to_string()),
            }
            tasks.push(tokio::spawn(accept_loop(
                listener,
                kind,
                ctx.clone(),
                limiter.clone(),
                stop_rx.clone(),
            )));
        }
    }
    let mut workers = Vec::new();
    for _ in 0..config.sender.workers {
        workers.push(tokio::spawn(sender::run_worker(
            sender.clone(),
            stop_rx.clone(),
        )));
    }
    std::fs::create_dir_all(&config.state_dir)?;
    crate::admin::serve(
        config.admin_socket(),
        spool.clone(),
        Some(reputation.clone()),
        stop_rx.clone(),
    )
    .await?;
    workers.push(tokio::spawn(reputation.clone().run(stop_rx.clone())));
    crate::sendmail::serve(
        config.submit_socket(),
        directory.clone(),
        ctx.submitter.clone(),
        crate::sendmail::LocalLimits {
            max_size: config.smtp.max_message_size,
            max_recipients: config.smtp.max_recipients,
            read_deadline: crate::sendmail::LOCAL_READ_DEADLINE,
            max_concurrent: crate::sendmail::MAX_LOCAL_SUBMISSIONS,
            default_domain: config.default_domain.clone(),
        },
        stop_rx.clone(),
    )
    .await?;
    workers.push(tokio::spawn(sender::run_janitor(
        spool.ledger.clone(),
        stop_rx.clone(),
    )));

    // HTTPS: one router, each part adding its routes (JMAP under /.well-known/jmap and /jmap,
    // SNS feedback at /sns).
    if let Some(sqs) = &config.feedback.sqs {
        workers.push(tokio::spawn(crate::feedback::sqs::poll(
            sqs.clone(),
            feedback.clone(),
            stop_rx.clone(),
        )));
    }
    let router = axum::Router::new().merge(crate::feedback::service::router(feedback.clone()));
    // A shared JMAP store: this node's EventSource clients also hear of other nodes' changes.
    if let Some(shared) = jmap_store.aws() {
        workers.push(tokio::spawn(
            shared
                .clone()
                .watch(jmap_store.push_sender(), stop_rx.clone()),
        ));
    }
    let router = router.merge(crate::jmap::router(crate::jmap::Jmap::new(
        crate::jmap::Parts {
            store: jmap_store,
            spool: spool.clone(),
            directory: directory.clone(),
            passwords: ctx.passwords.clone(),
            auth_throttle: ctx.auth_throttle.clone(),
            submitter: ctx.submitter.clone(),
            clock: clock.clone(),
            max_message_size: config.smtp.max_message_size,
            max_recipients: config.smtp.max_recipients,
            max_hold_secs: config.smtp.max_hold_secs,
            max_request_size: config.http.max_request_size,
            max_response_size: crate::jmap::limits::MAX_RESPONSE_SIZE,
            max_upload_size: config.http.max_upload_size,
            hostname: config.hostname.clone(),
            stop: stop_rx.clone(),
        },
    )));
    let router = match &config.console {
        Some(console) => router.merge(crate::console::router(crate::console::Console::new(
            console,
            crate::console::Parts {
                spool: spool.clone(),
                reputation: reputation.clone(),
                throttle: ctx.auth_throttle.clone(),
                clock: clock.clone(),
            },
        )?)),
        None => router,
    };
    let acme_tls_alpn = acme
        .as_ref()
        .is_some_and(|a| a.config.challenge == crate::acme::ChallengeKind::TlsAlpn01);
    let (https, https_tasks) = crate::http::serve(
        &config.http,
        tls_config.clone(),
        acme_tls_alpn,
        router,
        stop_rx.clone(),
    )
    .await?;
    tasks.extend(https_tasks);
    // After the HTTPS listener is bound: the CA's TLS-ALPN-01 validator connects to it.
    if let Some(acme) = &acme {
        if acme_tls_alpn && !config.http.listen.iter().any(|a| a.port() == 443) {
            tracing::warn!(
                "tls.acme: the CA validates tls-alpn-01 on port 443 and no [http] listener is on 443; forward 443 here or use challenge = \"http-01\""
            );
        }
        if acme.config.challenge == crate::acme::ChallengeKind::Http01 {
            let (_, task) = crate::acme::challenge::serve_http01(
                acme.config.http_listen,
                acme.challenges.clone(),
                stop_rx.clone(),
            )
            .await?;
            tasks.push(task);
        }
        let manager = crate::acme::manager::Manager {
            acme: acme.clone(),
            issuer: crate::acme::client::AcmeIssuer::new(acme.clone())?,
            tls: tls_config.clone(),
            metrics: metrics.clone(),
            clock: clock.clone(),
        };
        workers.push(tokio::spawn(manager.run(stop_rx.clone())));
    }
    let https: Vec<String> = https.iter().map(ToString::to_string).collect();

    let metrics_addr = match config.metrics.listen {
        Some(addr) => Some(
            crate::metrics::serve(addr, metrics.clone(), spool.queue.clone(), stop_rx.clone())
                .await?
                .to_string(),
        ),
        None => None,
    };
    // Before announcing readiness: a SIGHUP must never meet the default action (exit).
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("listening for SIGHUP")?;
    tokio::spawn(reload_on_sighup(
        hangups,
        config_path,
        directory.clone(),
        tls_config.clone(),
        acme.clone(),
        metrics.clone(),
        stop_rx.clone(),
    ));
    metrics.set_ready(true);
    // One line on stdout for supervisors and tests: where we listen.
    println!(
        "{}",
        serde_json::json!({"event": "ready", "submission": bound.0, "submissions": bound.1, "https": https, "metrics": metrics_addr})
    );

    // systemd Type=notify: ready once listening (a no-op without NOTIFY_SOCKET).
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("accepting mail"),
    ]);

    stop.await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    metrics.set_ready(false);
    tracing::info!("shutting down: no new connections; finishing open transactions and sends");
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    if tokio::time::timeout(DRAIN_LIMIT, limiter.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!(
            open = limiter.open(),
            "sessions still open after the drain limit"
        );
    }
    for worker in workers {
        let _ = worker.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP: re-read the config; swap in accounts, identities and TLS if all of it is valid,
/// keep the running ones (and say why) otherwise. Open sessions keep what they started with.
async fn reload_on_sighup(
    mut hangups: tokio::signal::unix::Signal,
    path: Option<PathBuf>,
    directory: Arc<Live<Directory>>,
    tls_config: Arc<Live<rustls::ServerConfig>>,
    acme: Option<Arc<crate::acme::Acme>>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            Some(()) = hangups.recv() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let Some(path) = &path else {
            tracing::warn!("SIGHUP ignored: started without a config file to re-read");
            continue;
        };
        let mut reloading = vec![sd_notify::NotifyState::Reloading];
        reloading.extend(sd_notify::NotifyState::monotonic_usec_now());
        let _ = sd_notify::notify(&reloading);
        let loaded = Config::load(path).and_then(|config| {
            let accounts = Directory::from_config(&config.accounts)?;
            let tls = reload_tls(&config, acme.as_deref())?;
            Ok((accounts, tls))
        });
        match loaded {
            Ok((accounts, (tls, info))) => {
                directory.set(accounts);
                tls_config.set(tls);
                crate::acme::manager::record_expiry(&metrics, info.as_ref());
                tracing::info!(config = %path.display(), "configuration reloaded: accounts, identities, TLS");
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "reload failed; keeping the running configuration")
            }
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }
}

/// The TLS configuration a reload swaps in: the certificate files again, or (with ACME, which
/// was decided at start) the stored ACME certificate. Changes to `tls.acme` take effect at the
/// next start: the renewal loop runs with the table it started with.
fn reload_tls(
    config: &Config,
    acme: Option<&crate::acme::Acme>,
) -> Result<(rustls::ServerConfig, Option<crate::acme::store::CertInfo>)> {
    match acme {
        Some(acme) => {
            if config.tls.acme.as_ref() != Some(&acme.config) {
                tracing::warn!("tls.acme changed: the change takes effect at the next start");
            }
            acme.server_config()
        }
        None => {
            if config.tls.acme.is_some() {
                tracing::warn!("tls.acme added: ACME starts at the next start");
            }
            Ok((
                tls::server_config(&config.tls)?,
                tls::file_cert_info(&config.tls),
            ))
        }
    }
}
