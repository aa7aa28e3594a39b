//! outbox-load: a small SMTP submission load generator for Outbox.
//!
//! Opens `--sessions` concurrent sessions; each one connects, upgrades to TLS
//! (STARTTLS, or TLS from the first byte with `--implicit-tls`), logs in with
//! AUTH PLAIN and submits `--messages` messages of about `--size` bytes using
//! PIPELINING (MAIL/RCPT/DATA in one write) when the server offers it, then QUITs.
//!
//! ```text
//! outbox-load --addr 127.0.0.1:2587 --sessions 50 --messages 20 --size 10240 \
//!     --user alice --password PASS --from alice@example.com --to rcpt@example.net \
//!     [--ca certs/dev-ca.pem | --insecure] [--implicit-tls] [--server-pid PID] [--json]
//! ```
//! Against the demo config (`outbox serve --config config/outbox.toml`): `cargo run --release
//! --bin outbox-load -- --user demo --password outbox-demo --from demo@example.com
//! --to rcpt@example.net --ca certs/dev-ca.pem --server-pid $(pgrep -x outbox)`.
//!
//! Reports messages ok/failed, wall time, msgs/s, per-message latency (MAIL sent ->
//! final reply after the body) p50/p99/max, session setup time (connect+TLS+AUTH) p50,
//! and with `--server-pid` the server's peak RSS (VmHWM). Every network step has a
//! timeout (`--timeout`, default 60 s). Exit status is 1 if any message was not accepted.
//! Only point it at servers you run yourself (loopback).
use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use clap::Parser;
use outbox::clock::Clock as _;
use rustls::client::danger::{
    HandshakeSignatureValid as SigValid, ServerCertVerified, ServerCertVerifier,
};
use rustls::pki_types::{CertificateDer as Cert, ServerName, UnixTime};
use rustls::{DigitallySignedStruct as Dss, Error as TlsError};
use std::{sync::Arc, time::Duration, time::Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::{client::TlsStream, TlsConnector};

#[derive(Parser, Debug)]
#[command(
    name = "outbox-load",
    about = "SMTP submission load generator for Outbox"
)]
struct Args {
    #[arg(
        long,
        default_value = "127.0.0.1:2587",
        help = "Server address (host:port)"
    )]
    addr: String,
    #[arg(long, default_value_t = 50, help = "Concurrent sessions")]
    sessions: usize,
    #[arg(long, default_value_t = 20, help = "Messages per session")]
    messages: usize,
    #[arg(
        long,
        default_value_t = 10240,
        help = "Approximate message size in bytes (headers + body)"
    )]
    size: usize,
    #[arg(long, help = "AUTH PLAIN login")]
    user: String,
    #[arg(long, help = "AUTH PLAIN password")]
    password: String,
    #[arg(long, help = "Envelope sender and From: address")]
    from: String,
    #[arg(long, help = "Envelope recipient and To: address")]
    to: String,
    #[arg(
        long,
        conflicts_with = "insecure",
        help = "PEM file with the CA to trust for the server certificate"
    )]
    ca: Option<String>,
    #[arg(
        long,
        help = "Accept any server certificate (loopback benchmarking only)"
    )]
    insecure: bool,
    #[arg(
        long,
        help = "TLS from the first byte (port 465 style) instead of STARTTLS"
    )]
    implicit_tls: bool,
    #[arg(
        long,
        default_value = "localhost",
        help = "TLS server name (SNI), checked against the certificate"
    )]
    sni: String,
    #[arg(
        long,
        help = "Server process id: report its peak RSS (VmHWM) at the end"
    )]
    server_pid: Option<u32>,
    #[arg(
        long,
        default_value_t = 60,
        help = "Timeout for every network step, in seconds"
    )]
    timeout: u64,
    #[arg(long, help = "Print one JSON object instead of text")]
    json: bool,
    #[arg(
        long,
        default_value_t = 0,
        help = "Log in as N distinct accounts: session k uses --user with k mod N appended, and \
                --from with k mod N appended to its local part (0: everyone is --user)"
    )]
    accounts: usize,
    #[arg(
        long,
        default_value_t = 0,
        help = "Spread sessions over N loopback source addresses 127.0.0.1.. (session k binds \
                127.0.x.y, the (k mod N)+1-th address), as clients from N hosts would arrive \
                (0: the system's choice)"
    )]
    source_ips: usize,
    #[arg(
        long,
        default_value_t = 0,
        help = "Once every session is set up (and has sent its messages), keep each one open \
                and idle for this many seconds before QUIT (idle-session memory measurements)"
    )]
    hold_secs: u64,
    #[arg(
        long,
        default_value_t = 0,
        help = "At most N sessions in setup (connect + TLS + AUTH) at once, as clients arriving \
                over time rather than in one burst (0: no limit)"
    )]
    setup_concurrency: usize,
}

/// Certificate verifier for `--insecure`: accepts ANY server certificate (no chain, name or expiry
/// check) but still checks the handshake signatures. Fine for benchmarking a server on loopback
/// (the point is load, not authentication); never use it for real mail.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _: &Cert<'_>,
        _: &[Cert<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &Cert<'_>,
        d: &Dss,
    ) -> Result<SigValid, TlsError> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &Cert<'_>,
        d: &Dss,
    ) -> Result<SigValid, TlsError> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_config(args: &Args) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let cfg = if args.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth()
    } else {
        let path = args
            .ca
            .as_deref()
            .ok_or_else(|| anyhow!("give --ca FILE or --insecure"))?;
        let pem = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut &pem[..]) {
            roots.add(cert.with_context(|| format!("parsing {path}"))?)?;
        }
        if roots.is_empty() {
            bail!("no certificate found in {path}");
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(cfg)
}

/// An SMTP connection (writes go straight through the BufReader).
struct Conn<S> {
    io: BufReader<S>,
    timeout: Duration,
}

/// A (possibly multi-line) reply: code and the text of all lines.
struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl Reply {
    fn text(&self) -> String {
        format!("{} {}", self.code, self.lines.join(" / "))
    }
}

async fn step<T>(
    t: Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(t, f)
        .await
        .map_err(|_| anyhow!("timeout ({t:?}) during {what}"))?
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    async fn send(&mut self, data: &[u8]) -> Result<()> {
        let io = &mut self.io;
        step(self.timeout, "write", async {
            io.write_all(data).await?;
            io.flush().await?;
            Ok(())
        })
        .await
    }

    async fn line(&mut self) -> Result<String> {
        let mut l = String::new();
        let mut io = (&mut self.io).take(8192); // bounded line length
        match step(self.timeout, "read reply", async {
            Ok(io.read_line(&mut l).await?)
        })
        .await?
        {
            0 => bail!("server closed the connection"),
            _ if !l.ends_with('\n') => bail!("reply line too long or truncated: {l:?}"),
            _ => Ok(l.trim_end_matches(['\r', '\n']).to_string()),
        }
    }

    /// Reads one reply, following `250-` continuation lines.
    async fn reply(&mut self) -> Result<Reply> {
        let mut lines = Vec::new();
        loop {
            let l = self.line().await?;
            let code = l
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| anyhow!("bad reply line {l:?}"))?;
            let more = l.as_bytes().get(3) == Some(&b'-');
            lines.push(l.get(4..).unwrap_or("").to_string());
            if !more {
                if code == 421 {
                    bail!("server closing: {code} {}", lines.join(" / "));
                }
                return Ok(Reply { code, lines });
            }
        }
    }

    async fn cmd(&mut self, line: &str) -> Result<Reply> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        self.reply().await
    }

    /// Sends `line` (unless empty: then just reads a reply) and wants reply `code`.
    async fn expect(&mut self, line: &str, code: u16) -> Result<Reply> {
        let r = if line.is_empty() {
            self.reply().await?
        } else {
            self.cmd(line).await?
        };
        if r.code != code {
            bail!(
                "{} -> {} (wanted {code})",
                if line.is_empty() { "greeting" } else { line },
                r.text()
            );
        }
        Ok(r)
    }
}

/// Shared settings for every session.
struct Ctx {
    args: Args,
    /// Sessions that finished setup (or failed it) and their messages: `--hold-secs` starts
    /// counting when it reaches `--sessions`.
    ready: (std::sync::atomic::AtomicUsize, tokio::sync::Notify),
    /// `--setup-concurrency`.
    setups: tokio::sync::Semaphore,
    tls: TlsConnector,
    sni: ServerName<'static>,
    body: Vec<u8>, // dot-stuffed body, ends with CRLF
    t: Duration,
}

#[derive(Default)]
struct Outcome {
    setup: Option<Duration>,
    latencies: Vec<Duration>, // accepted messages only
    ok: usize,
    rejected: usize, // got a 4xx/5xx for MAIL, RCPT, DATA or the body
    not_sent: usize, // never attempted because the session broke down
    errors: Vec<String>,
    pipelining: bool,
}

type TlsConn = Conn<TlsStream<TcpStream>>;
const EHLO: &str = "EHLO outbox-load.localhost";

async fn tls_up(ctx: &Ctx, tcp: TcpStream) -> Result<TlsStream<TcpStream>> {
    step(ctx.t, "TLS handshake", async {
        Ok(ctx.tls.connect(ctx.sni.clone(), tcp).await?)
    })
    .await
}

/// connect + greeting + (STARTTLS) + EHLO + AUTH PLAIN; returns the connection and whether PIPELINING is on.
async fn setup(ctx: &Ctx, n: usize) -> Result<(TlsConn, bool)> {
    let tcp = step(ctx.t, "connect", async {
        let Some(source) = source_ip(ctx.args.source_ips, n) else {
            return Ok(TcpStream::connect(&ctx.args.addr).await?);
        };
        let addr = tokio::net::lookup_host(&ctx.args.addr)
            .await?
            .next()
            .ok_or_else(|| anyhow!("{} resolves to nothing", ctx.args.addr))?;
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind((source, 0).into())?;
        Ok(socket.connect(addr).await?)
    })
    .await?;
    tcp.set_nodelay(true)?;
    let mut c = if ctx.args.implicit_tls {
        Conn {
            io: BufReader::new(tls_up(ctx, tcp).await?),
            timeout: ctx.t,
        }
    } else {
        let mut p = Conn {
            io: BufReader::new(tcp),
            timeout: ctx.t,
        };
        p.expect("", 220).await?;
        let e = p.expect(EHLO, 250).await?;
        if !e.lines.iter().any(|l| l.eq_ignore_ascii_case("STARTTLS")) {
            bail!("server does not offer STARTTLS");
        }
        p.expect("STARTTLS", 220).await?;
        if !p.io.buffer().is_empty() {
            bail!("server sent data after the STARTTLS reply (possible command injection)");
        }
        Conn {
            io: BufReader::new(tls_up(ctx, p.io.into_inner()).await?),
            timeout: ctx.t,
        }
    };
    if ctx.args.implicit_tls {
        c.expect("", 220).await?;
    }
    let e = c.expect(EHLO, 250).await?;
    let has = |kw: &str| {
        e.lines
            .iter()
            .any(|l| l.to_ascii_uppercase().split_whitespace().any(|w| w == kw))
    };
    if !has("PLAIN") {
        bail!("server does not offer AUTH PLAIN after TLS: {}", e.text());
    }
    let pipelining = has("PIPELINING");
    let cred = format!(
        "\0{}\0{}",
        account(&ctx.args.user, ctx.args.accounts, n),
        ctx.args.password
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(cred);
    let mut r = c.cmd(&format!("AUTH PLAIN {b64}")).await?;
    if r.code == 334 {
        r = c.cmd(&b64).await?; // server wanted the credentials in a second step
    }
    if r.code != 235 {
        bail!("AUTH PLAIN -> {}", r.text());
    }
    Ok((c, pipelining))
}

/// Sends one message; Ok(true) if accepted, Ok(false) if refused by a reply,
/// Err on I/O errors / timeouts (which end the session).
async fn one_message(
    ctx: &Ctx,
    c: &mut TlsConn,
    pipe: bool,
    n: usize,
    id: &str,
    out: &mut Outcome,
) -> Result<bool> {
    let a = &ctx.args;
    let from = account(&a.from, a.accounts, n);
    let cmds = [
        format!("MAIL FROM:<{from}>\r\n"),
        format!("RCPT TO:<{}>\r\n", a.to),
        "DATA\r\n".to_string(),
    ];
    if pipe {
        c.send(cmds.concat().as_bytes()).await?; // PIPELINING: one write, then three replies
    }
    let mut replies = Vec::with_capacity(3);
    for cmd in &cmds {
        if !pipe {
            c.send(cmd.as_bytes()).await?; // lock-step fallback for servers without PIPELINING
        }
        replies.push(c.reply().await?);
    }
    let data_ok = replies[2].code == 354;
    if !(data_ok && replies[0].code < 400 && replies[1].code < 400) {
        out.errors.push(format!(
            "message {id}: {}",
            replies
                .iter()
                .map(|r| r.text())
                .collect::<Vec<_>>()
                .join(" | ")
        ));
        if data_ok {
            // RFC 2920: DATA was accepted although MAIL/RCPT failed; end it with an empty body.
            c.send(b".\r\n").await?;
            c.reply().await?;
        }
        c.expect("RSET", 250).await?;
        return Ok(false);
    }
    let mut msg = headers(a, &from, id).into_bytes();
    msg.extend_from_slice(&ctx.body);
    msg.extend_from_slice(b".\r\n");
    c.send(&msg).await?;
    let r = c.reply().await?;
    if (200..300).contains(&r.code) {
        return Ok(true);
    }
    out.errors
        .push(format!("message {id}: end of data -> {}", r.text()));
    Ok(false)
}

async fn session(ctx: Arc<Ctx>, n: usize) -> Outcome {
    let mut out = Outcome::default();
    let t0 = Instant::now();
    let permit = ctx.setups.acquire().await.ok();
    let set_up = setup(&ctx, n).await;
    drop(permit);
    let (mut c, pipe) = match set_up {
        Ok(v) => v,
        Err(e) => {
            out.errors.push(format!("session {n} setup: {e:#}"));
            out.not_sent = ctx.args.messages;
            hold(&ctx).await;
            return out;
        }
    };
    out.setup = Some(t0.elapsed());
    out.pipelining = pipe;
    for m in 0..ctx.args.messages {
        let id = format!(
            "{n}.{m}.{}.{}",
            std::process::id(),
            outbox::clock::SystemClock.now_ms()
        ); // session.message.pid.ms
        let t = Instant::now();
        match one_message(&ctx, &mut c, pipe, n, &id, &mut out).await {
            Ok(true) => {
                out.ok += 1;
                out.latencies.push(t.elapsed());
            }
            Ok(false) => out.rejected += 1,
            Err(e) => {
                out.errors.push(format!("session {n} message {m}: {e:#}"));
                out.rejected += 1;
                out.not_sent = ctx.args.messages - m - 1;
                hold(&ctx).await;
                return out;
            }
        }
    }
    hold(&ctx).await;
    if let Err(e) = c.expect("QUIT", 221).await {
        out.errors.push(format!("session {n} QUIT: {e:#}"));
    }
    let _ = step(ctx.t, "TLS close", async { Ok(c.io.shutdown().await?) }).await;
    out
}

/// `--accounts`: session `n`'s login (or address: the number goes before the `@`).
fn account(base: &str, accounts: usize, n: usize) -> String {
    if accounts == 0 {
        return base.to_string();
    }
    let k = n % accounts;
    match base.split_once('@') {
        Some((local, domain)) => format!("{local}{k}@{domain}"),
        None => format!("{base}{k}"),
    }
}

/// `--source-ips`: the loopback address session `n` connects from (127.0.0.1, .2, … 127.0.1.0, …).
fn source_ip(ips: usize, n: usize) -> Option<std::net::Ipv4Addr> {
    (ips > 0).then(|| {
        let k = (n % ips) as u32 + 1;
        std::net::Ipv4Addr::from(0x7f00_0000 | (k & 0x00ff_ffff))
    })
}

/// `--hold-secs`: marks this session done with its work, waits for every other session to be,
/// then stays idle for the hold time.
async fn hold(ctx: &Ctx) {
    use std::sync::atomic::Ordering;
    let (done, all) = &ctx.ready;
    if ctx.args.hold_secs == 0 {
        return;
    }
    if done.fetch_add(1, Ordering::SeqCst) + 1 >= ctx.args.sessions {
        all.notify_waiters();
    }
    loop {
        let notified = all.notified();
        if done.load(Ordering::SeqCst) >= ctx.args.sessions {
            break;
        }
        notified.await;
    }
    tokio::time::sleep(Duration::from_secs(ctx.args.hold_secs)).await;
}

fn headers(a: &Args, from: &str, id: &str) -> String {
    let domain = from.rsplit('@').next().unwrap_or("localhost");
    format!(
        "From: <{}>\r\nTo: <{}>\r\nSubject: outbox-load {id}\r\nDate: {}\r\nMessage-ID: <load.{id}@{domain}>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n",
        from,
        a.to,
        outbox::clock::rfc5322_date(outbox::clock::SystemClock.now_ms())
    )
}

/// Plain-text body of about `size` bytes: lines of 70 chars, CRLF endings, every 17th line
/// starting with '.', already dot-stuffed for DATA (without the final ".").
fn make_body(size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + size / 1000 + 80);
    for k in 0..size.div_ceil(72).max(1) {
        let dot = if k % 17 == 5 { "." } else { "" }; // exercises dot-stuffing (sent as "..")
        let line = format!(
            "{dot}{k:05} outbox-load body text: the quick brown fox jumps over the lazy dog"
        );
        out.extend_from_slice(format!("{dot}{line:.70}\r\n").as_bytes());
    }
    out
}

/// Nearest-rank percentile in milliseconds.
fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

fn peak_rss_mib(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let l = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = l.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let tls = TlsConnector::from(Arc::new(tls_config(&args)?));
    let sni = ServerName::try_from(args.sni.clone()).context("--sni")?;
    let (size, t) = (
        args.size
            .saturating_sub(headers(&args, &args.from, "0.0.0.0").len()),
        Duration::from_secs(args.timeout),
    );
    let ctx = Arc::new(Ctx {
        ready: Default::default(),
        setups: tokio::sync::Semaphore::new(match args.setup_concurrency {
            0 => tokio::sync::Semaphore::MAX_PERMITS,
            n => n,
        }),
        body: make_body(size),
        tls,
        sni,
        t,
        args,
    });
    let start = Instant::now();
    let tasks: Vec<_> = (0..ctx.args.sessions)
        .map(|n| tokio::spawn(session(ctx.clone(), n)))
        .collect();
    let mut all = Outcome::default();
    let mut setups = Vec::new();
    for t in tasks {
        let o = t.await.unwrap_or_else(|e| Outcome {
            errors: vec![format!("task failed: {e}")],
            ..Default::default()
        });
        setups.extend(o.setup);
        all.ok += o.ok;
        all.rejected += o.rejected;
        all.not_sent += o.not_sent;
        all.pipelining |= o.pipelining;
        all.latencies.extend(o.latencies);
        all.errors.extend(o.errors);
    }
    let wall = start.elapsed().as_secs_f64();
    let failed_sessions = ctx.args.sessions - setups.len();
    let rss = ctx.args.server_pid.and_then(peak_rss_mib);
    all.latencies.sort();
    setups.sort();
    let (a, lat) = (&ctx.args, &all.latencies);
    let (rate, failed) = (all.ok as f64 / wall, a.sessions * a.messages - all.ok);
    let (p50, p99, max, setup50, setup99) = (
        pct(lat, 0.5),
        pct(lat, 0.99),
        pct(lat, 1.0),
        pct(&setups, 0.5),
        pct(&setups, 0.99),
    );
    if a.json {
        let j = serde_json::json!({
            "addr": a.addr, "sessions": a.sessions, "messages_per_session": a.messages, "size": a.size,
            "implicit_tls": a.implicit_tls, "pipelining": all.pipelining, "ok": all.ok, "errors": failed,
            "rejected": all.rejected, "not_sent": all.not_sent, "failed_sessions": failed_sessions,
            "wall_s": wall, "msgs_per_s": rate, "latency_ms": { "p50": p50, "p99": p99, "max": max },
            "setup_ms_p50": setup50, "setup_ms_p99": setup99, "accounts": a.accounts,
            "source_ips": a.source_ips, "hold_secs": a.hold_secs, "server_peak_rss_mib": rss,
            "first_errors": all.errors.iter().take(5).collect::<Vec<_>>(),
        });
        println!("{j}");
    } else {
        let mode = if a.implicit_tls {
            "implicit TLS"
        } else {
            "STARTTLS"
        };
        let pipe = if setups.is_empty() {
            "n/a"
        } else if all.pipelining {
            "on"
        } else {
            "off"
        };
        println!(
            "outbox-load: {} sessions x {} messages of ~{} bytes to {} ({mode}, pipelining {pipe})",
            a.sessions, a.messages, a.size, a.addr
        );
        println!("messages:   {} ok, {failed} errors ({} refused/failed, {} not attempted); {failed_sessions} sessions failed setup",
            all.ok, all.rejected, all.not_sent);
        println!("wall time:  {wall:.3} s   throughput: {rate:.1} msgs/s");
        println!("latency:    p50 {p50:.2} ms   p99 {p99:.2} ms   max {max:.2} ms   (MAIL sent -> final reply)");
        println!("setup:      p50 {setup50:.2} ms   p99 {setup99:.2} ms   (connect + TLS + AUTH)");
        match (a.server_pid, rss) {
            (Some(pid), Some(m)) => println!("server RSS: peak {m:.1} MiB (VmHWM of pid {pid})"),
            (Some(pid), None) => println!("server RSS: could not read /proc/{pid}/status"),
            _ => {}
        }
        for e in all.errors.iter().take(5) {
            eprintln!("error: {e}");
        }
        if all.errors.len() > 5 {
            eprintln!("... and {} more errors", all.errors.len() - 5);
        }
    }
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
