//! outbox-sender-bench: throughput of the sender pipeline (lease → load MIME → strip Bcc →
//! Date/Message-ID → signature injection → tags → SES SendEmail → mark sent), measured apart
//! from SMTP.
//!
//! ```text
//! outbox-sender-bench --messages 2000 --size 10240 --workers 8            # built-in SES sink
//! outbox-sender-bench --messages 500 --size 1048576 --endpoint http://127.0.0.1:PORT  # e.g. moto
//! ```
//! The spool is pre-filled (fsync off, so only the sending is timed); the clock runs from the
//! workers' start until the last message is marked sent. The built-in sink is a minimal HTTP
//! server that answers every request like SES's SendEmail (no real peer is that fast; moto is a
//! functional stand-in, not a throughput target). With `--endpoint`, SES must accept the
//! sender (moto: create the identity `bench@example.com` first).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use outbox::accounts::{hash_password, Directory};
use outbox::clock::{Clock, SystemClock};
use outbox::config::{AccountConfig, IdentityConfig, SesConfig};
use outbox::domain::{Job, MessageClass, QueueId, SubmissionRecord};
use outbox::live::Live;
use outbox::sender::{run_worker, Sender};
use outbox::spool::SpoolOptions;
use outbox::transport::ses::SesTransport;
use outbox::transport::{Delivery, OutboundMessage, SendFuture, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Notify};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 2000)]
    messages: u64,
    /// Approximate MIME size in octets.
    #[arg(long, default_value_t = 10240)]
    size: usize,
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// An SES-compatible endpoint (e.g. moto); without it, a built-in sink is started.
    #[arg(long)]
    endpoint: Option<String>,
    #[arg(long)]
    json: bool,
}

/// Counts sent messages and signals when all are done.
struct Counting {
    inner: SesTransport,
    sent: AtomicU64,
    failed: AtomicU64,
    target: u64,
    done: Notify,
}

impl Transport for Counting {
    fn name(&self) -> &'static str {
        "ses"
    }
    fn send(&self, message: Arc<OutboundMessage>) -> SendFuture<'_> {
        Box::pin(async move {
            let outcome = self.inner.send(message).await;
            let counter = if matches!(outcome, Delivery::Sent { .. }) {
                &self.sent
            } else {
                &self.failed
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if self.sent.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
                >= self.target
            {
                self.done.notify_one();
            }
            outcome
        })
    }
}

/// A minimal HTTP/1.1 responder that answers every request like SendEmail.
async fn ses_sink() -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let ids = Arc::new(AtomicU64::new(0));
        while let Ok((mut conn, _)) = listener.accept().await {
            let ids = ids.clone();
            tokio::spawn(async move {
                let mut buf = Vec::with_capacity(64 * 1024);
                loop {
                    let Some(head_end) = read_until_headers(&mut conn, &mut buf).await else {
                        return;
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + length {
                        let mut chunk = [0u8; 64 * 1024];
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head_end + length);
                    let body = format!(
                        "{{\"MessageId\":\"sink-{}\"}}",
                        ids.fetch_add(1, Ordering::Relaxed)
                    );
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if conn.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(url)
}

async fn read_until_headers(conn: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        let mut chunk = [0u8; 16 * 1024];
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn message(size: usize, i: u64) -> Vec<u8> {
    let line = "The quick brown fox jumps over the lazy dog, again and again and again.\r\n";
    let text = line.repeat(size / 2 / line.len() + 1);
    format!(
        "From: Bench <bench@example.com>\r\nTo: rcpt@example.net\r\nBcc: hidden@example.net\r\n\
         Subject: bench {i}\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n\
         --b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><body><pre>{text}</pre></body></html>\r\n--b--\r\n"
    )
    .into_bytes()
}

fn directory() -> Result<Arc<Live<Directory>>> {
    Ok(Live::new(Directory::from_config(&[AccountConfig {
        login: "bench".into(),
        password_hash: Some(hash_password("unused")?),
        password_hash_file: None,
        unix_users: vec![],
        tenant_id: "bench".into(),
        account_id: None,
        user_id: None,
        identities: vec![IdentityConfig {
            id: "bench".into(),
            email: Some("bench@example.com".into()),
            domain: None,
            name: "Bench".into(),
            text_signature: Some("-- \nBench\nExample Corp".into()),
            html_signature: Some("<p>-- <br>Bench, <b>Example Corp</b></p>".into()),
            configuration_set: None,
            ses_tags: Default::default(),
        }],
    }])?))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let endpoint = match &args.endpoint {
        Some(url) => url.clone(),
        None => ses_sink().await?,
    };
    // The standard AWS variables, set before the SDK reads them (no other thread uses env).
    for (key, value) in [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "bench"),
        ("AWS_SECRET_ACCESS_KEY", "bench"),
        ("AWS_REGION", "us-east-1"),
    ] {
        // SAFETY (edition 2024 wording): set before any SDK thread reads the environment.
        std::env::set_var(key, value);
    }
    let dir = tempfile_dir()?;
    let mut options = SpoolOptions::from(&outbox::config::SpoolConfig::default());
    options.fsync = false;
    options.max_messages = args.messages + 1;
    options.max_bytes = u64::MAX;
    options.min_free_disk_bytes = 0;
    let clock = Arc::new(SystemClock);
    let spool = outbox::spool::redb::open(&dir, options, clock.clone())?;
    for i in 0..args.messages {
        let now = clock.now_ms();
        let id = QueueId::generate(now);
        let mime = message(args.size, i);
        let job = Job {
            id,
            login: "bench".into(),
            tenant_id: "bench".into(),
            account_id: "bench".into(),
            user_id: "bench".into(),
            identity_id: "bench".into(),
            mail_from: "bench@example.com".into(),
            recipients: vec!["rcpt@example.net".into(), "hidden@example.net".into()],
            message_class: MessageClass::Transactional,
            size: mime.len() as u64,
        };
        spool
            .blobs
            .put(id, vec![mime.into()])
            .await
            .context("filling the spool")?;
        spool
            .queue
            .enqueue(SubmissionRecord::queued(job, now, now, None))
            .await
            .context("filling the spool")?;
    }
    let ses = SesTransport::new(SesConfig {
        region: None,
        message_id_domain: None,
        configuration_set: None,
        from_identity_arn: None,
        max_send_rate: 0.0,
        timeout_secs: 60,
        max_message_size: 40_000_000,
        tags: Default::default(),
    })
    .await;
    let transport = Arc::new(Counting {
        inner: ses,
        sent: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        target: args.messages,
        done: Notify::new(),
    });
    let sender = Arc::new(Sender::new(
        spool.clone(),
        transport.clone(),
        directory()?,
        "bench.test".into(),
        clock.clone(),
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let start = Instant::now();
    let workers: Vec<_> = (0..args.workers)
        .map(|_| tokio::spawn(run_worker(sender.clone(), stop_rx.clone())))
        .collect();
    transport.done.notified().await;
    let elapsed = start.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    for w in workers {
        let _ = w.await;
    }
    let sent = transport.sent.load(Ordering::Relaxed);
    let failed = transport.failed.load(Ordering::Relaxed);
    let rate = sent as f64 / elapsed;
    let mb = rate * args.size as f64 / 1e6;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"messages": args.messages, "size": args.size, "workers": args.workers,
                "endpoint": args.endpoint.as_deref().unwrap_or("sink"), "sent": sent, "failed": failed,
                "seconds": elapsed, "msgs_per_s": rate, "mb_per_s": mb})
        );
    } else {
        println!(
            "{sent} sent, {failed} failed in {elapsed:.2} s: {rate:.0} msg/s ({mb:.1} MB/s), {} B messages, {} workers, {}",
            args.size,
            args.workers,
            args.endpoint.as_deref().unwrap_or("built-in SES sink")
        );
    }
    std::fs::remove_dir_all(&dir).ok();
    anyhow::ensure!(failed == 0, "{failed} messages failed");
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("outbox-sender-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
