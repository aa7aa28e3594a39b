//! `outbox sendmail`: the `sendmail` command programs expect, handing the message to the
//! running daemon over the local submission socket.
//!
//! Trust model: the socket is world-connectable (0666); the kernel tells the daemon the
//! caller's uid (SO_PEERCRED), and only uids listed in an account's `unix_users` may submit,
//! as that account, under the same ownership rules as SMTP. No password sits in a cron job.
//!
//! Wire format: one JSON line ([`LocalRequest`]), then exactly `size` octets of message; the
//! daemon answers one JSON line ([`LocalAnswer`]) carrying a sysexits.h code.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use mail_parser::MessageParser;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::accounts::{Directory, IdentityScope};
use crate::live::Live;
use crate::message::header_values;
use crate::smtp::data::LineRules;
use crate::submission::{SubmitError, SubmitRequest, Submitter, Trace};

mod qualify;

/// sysexits.h codes, as programs calling sendmail expect them.
pub mod exit {
    pub const OK: u8 = 0;
    pub const USAGE: u8 = 64;
    pub const DATAERR: u8 = 65;
    /// An address the transport cannot carry (EX_NOUSER).
    pub const NOUSER: u8 = 67;
    pub const UNAVAILABLE: u8 = 69;
    pub const SOFTWARE: u8 = 70;
    pub const TEMPFAIL: u8 = 75;
    pub const NOPERM: u8 = 77;
}

/// The command line, as sendmail understands it (flags it does not act on are accepted and
/// ignored, as Postfix's sendmail does: `-odi`, `-oem`, `-bm`, ...).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Args {
    /// `-t`: recipients from To, Cc and Bcc.
    pub extract: bool,
    /// `-f addr`: envelope sender.
    pub from: Option<String>,
    /// `-F name`: display name for a From header we add.
    pub full_name: Option<String>,
    /// `-i` / `-oi`: a line with a single dot does not end the message.
    pub ignore_dots: bool,
    pub recipients: Vec<String>,
}

pub fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut out = Args::default();
    let mut it = args.iter().peekable();
    while let Some(arg) = it.next() {
        if arg == "--" {
            out.recipients.extend(it.by_ref().cloned());
            break;
        }
        let Some(flag) = arg.strip_prefix('-').filter(|f| !f.is_empty()) else {
            out.recipients.push(arg.clone());
            continue;
        };
        // Flags taking a value accept it attached (`-fme@x`) or as the next word.
        let mut value = |rest: &str, name: char| -> Result<String, String> {
            if rest.is_empty() {
                it.next().cloned().ok_or(format!("-{name} needs a value"))
            } else {
                Ok(rest.to_string())
            }
        };
        match flag.chars().next().unwrap_or_default() {
            't' if flag == "t" => out.extract = true,
            'i' if flag == "i" => out.ignore_dots = true,
            'o' if flag == "oi" => out.ignore_dots = true,
            'f' | 'r' => out.from = Some(value(&flag[1..], 'f')?),
            'F' => out.full_name = Some(value(&flag[1..], 'F')?),
            // -B: the body type (Debian's cron passes -B8BITMIME); 8-bit bodies pass anyway.
            'o' | 'b' | 'd' | 'e' | 'v' | 'm' | 'B' | 'N' | 'R' | 'V' | 'X' | 'q'
                if flag != "bs" && flag != "bp" =>
            {
                // -B/-N/-R/-V/-X take a value.
                if matches!(&flag[..1], "B" | "N" | "R" | "V" | "X") && flag.len() == 1 {
                    it.next();
                }
            }
            _ => return Err(format!("unsupported option -{flag}")),
        }
    }
    Ok(out)
}

/// The message from stdin with CRLF line endings; without `ignore_dots`, a line holding only
/// a dot ends it (traditional sendmail).
pub fn normalize(input: &[u8], ignore_dots: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 32);
    for line in input.split_inclusive(|b| *b == b'\n') {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if !ignore_dots && text == b"." {
            break;
        }
        out.extend_from_slice(text);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LocalRequest {
    pub from: Option<String>,
    pub full_name: Option<String>,
    pub recipients: Vec<String>,
    pub extract: bool,
    pub size: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LocalAnswer {
    pub exit: u8,
    pub message: String,
    /// Said on stderr even when the message was accepted: recipients left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

impl LocalAnswer {
    fn new(exit: u8, message: impl Into<String>) -> Self {
        LocalAnswer {
            exit,
            message: message.into(),
            warning: None,
        }
    }
}

/// Limits on the local submission socket. Anyone may connect (0666), so nothing is read before
/// the caller's uid is known to belong to an account, and an allowed caller still cannot hold
/// more than its share of memory or time.
#[derive(Debug, Clone)]
pub struct LocalLimits {
    /// Largest message, in octets (the SMTP `max_message_size`: SES v2's 40 MB).
    pub max_size: usize,
    /// Most distinct recipients (the SMTP `max_recipients`: SES's 50 destinations).
    pub max_recipients: usize,
    /// The request line and the whole message must arrive within this time. The client has
    /// read stdin before it connects, so this only waits on a socket copy.
    pub read_deadline: std::time::Duration,
    /// Local submissions served at once; more connections are answered EX_TEMPFAIL.
    pub max_concurrent: usize,
    /// The config's `default_domain`: a bare local name (`root`) becomes `root@` it; without
    /// it such an envelope address is refused (see [`qualify`]).
    pub default_domain: Option<String>,
}

/// Default [`LocalLimits::read_deadline`]: a 40 MB copy over a Unix socket takes well under a
/// second; a minute leaves room for a loaded machine.
pub const LOCAL_READ_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// Default [`LocalLimits::max_concurrent`]: at most this many messages (each up to
/// `max_size`) are held in memory for local callers at once.
pub const MAX_LOCAL_SUBMISSIONS: usize = 8;

/// The request line is JSON of a few addresses; anything longer is refused.
const MAX_REQUEST_LINE: u64 = 64 * 1024;

/// The message is read in pieces of at most this size, so memory follows what arrives and not
/// what the request declares.
const READ_CHUNK: usize = 64 * 1024;

/// The daemon side: serves the local submission socket until shutdown.
pub async fn serve(
    path: PathBuf,
    directory: Arc<Live<Directory>>,
    submitter: Arc<Submitter>,
    limits: LocalLimits,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent));
    let limits = Arc::new(limits);
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            let (directory, submitter, slots, limits) = (
                directory.clone(),
                submitter.clone(),
                slots.clone(),
                limits.clone(),
            );
            tokio::spawn(async move {
                let directory = directory.get();
                if let Err(e) = accept_one(stream, &directory, &submitter, &slots, &limits).await {
                    tracing::debug!(error = %e, "local submission connection ended");
                }
            });
        }
        let _ = std::fs::remove_file(&path);
    });
    Ok(())
}

async fn accept_one(
    stream: UnixStream,
    directory: &Directory,
    submitter: &Submitter,
    slots: &tokio::sync::Semaphore,
    limits: &LocalLimits,
) -> Result<()> {
    let uid = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    // The uid first: a caller no account lists is answered before one octet is read.
    let answer = match directory.for_uid(uid) {
        None => {
            tracing::warn!(
                uid,
                "local submission refused: uid not in any account's unix_users"
            );
            LocalAnswer::new(
                exit::NOPERM,
                format!("uid {uid} may not submit mail (see unix_users)"),
            )
        }
        Some(account) => match slots.try_acquire() {
            Err(_) => LocalAnswer::new(
                exit::TEMPFAIL,
                "too many local submissions at once, try later",
            ),
            Ok(_slot) => {
                match tokio::time::timeout(limits.read_deadline, read_request(read, limits)).await {
                    Err(_) => LocalAnswer::new(exit::TEMPFAIL, "message not received in time"),
                    Ok(Err(e)) => LocalAnswer::new(exit::USAGE, format!("bad request: {e}")),
                    Ok(Ok(Err(refused))) => refused,
                    Ok(Ok(Ok((req, mime)))) => {
                        submit(uid, account, req, mime, submitter, limits).await
                    }
                }
            }
        },
    };
    let mut text = serde_json::to_string(&answer)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    Ok(())
}

/// Reads the request line and exactly `size` octets, growing the buffer as data arrives.
async fn read_request(
    read: tokio::net::unix::OwnedReadHalf,
    limits: &LocalLimits,
) -> Result<std::result::Result<(LocalRequest, Vec<u8>), LocalAnswer>> {
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    (&mut reader)
        .take(MAX_REQUEST_LINE)
        .read_line(&mut line)
        .await?;
    let req: LocalRequest = serde_json::from_str(&line)?;
    if req.size > limits.max_size {
        return Ok(Err(LocalAnswer::new(
            exit::DATAERR,
            format!("message larger than {} octets", limits.max_size),
        )));
    }
    let mut mime = Vec::with_capacity(req.size.min(READ_CHUNK));
    let mut body = (&mut reader).take(req.size as u64);
    loop {
        mime.reserve(READ_CHUNK.min(req.size - mime.len()));
        if body.read_buf(&mut mime).await? == 0 {
            break;
        }
    }
    if mime.len() != req.size {
        anyhow::bail!("message ended after {} of {} octets", mime.len(), req.size);
    }
    Ok(Ok((req, mime)))
}

async fn submit(
    uid: u32,
    account: Arc<crate::accounts::Account>,
    req: LocalRequest,
    mut mime: Vec<u8>,
    submitter: &Submitter,
    limits: &LocalLimits,
) -> LocalAnswer {
    let first_address = account.identities.iter().find_map(|i| match &i.scope {
        IdentityScope::Address(a) => Some(a.clone()),
        IdentityScope::Domain(_) => None,
    });
    // Local names (`root`, cron's MAILTO) get the default domain, in the envelope and the
    // header's address fields; without one they are refused here, not at SES.
    let domain = limits.default_domain.as_deref();
    if let Some(domain) = domain {
        mime = qualify::headers(&mime, domain);
    }
    // The envelope sender: -f, else the account's address, else the header's From (cron
    // passes no -f and writes `From: root (Cron Daemon)`).
    let Some(mail_from) = req.from.or(first_address).or_else(|| header_from(&mime)) else {
        return LocalAnswer::new(
            exit::USAGE,
            "give the sender with -f: the account has no single address",
        );
    };
    let mail_from = match qualify::address(&mail_from, domain, "sender") {
        Ok(a) => a,
        Err(e) => return LocalAnswer::new(exit::NOUSER, e.to_string()),
    };
    let given = req.recipients.len();
    let mut recipients = req.recipients;
    if req.extract {
        recipients.extend(header_recipients(&mime));
    }
    let recipients: Result<Vec<String>, _> = recipients
        .iter()
        .map(|r| qualify::address(r, domain, "recipient"))
        .collect();
    let mut recipients = match recipients {
        Ok(r) => r,
        Err(e) => return LocalAnswer::new(exit::NOUSER, e.to_string()),
    };
    let mut seen = std::collections::HashSet::new();
    recipients.retain(|r| seen.insert(r.clone()));
    if recipients.len() > limits.max_recipients {
        // sysexits.h: a command line with too many addresses is a usage error; too many taken
        // from the message's headers (-t) is bad input data.
        let code = if given > limits.max_recipients {
            exit::USAGE
        } else {
            exit::DATAERR
        };
        return LocalAnswer::new(
            code,
            format!(
                "too many recipients: {} (at most {} per message)",
                recipients.len(),
                limits.max_recipients
            ),
        );
    }
    let mut rules = LineRules::new(1000);
    rules.push_slice(&mime);
    if let Err(e) = rules.finish() {
        return LocalAnswer::new(
            exit::DATAERR,
            format!(
                "message refused: {e:?} (RFC 5322 lines: at most 998 octets, CRLF only, no NUL)"
            ),
        );
    }
    if recipients.is_empty() {
        return LocalAnswer::new(exit::USAGE, "no recipients (give addresses or -t)");
    }
    if header_values(&mime, "From").is_empty() {
        let from = match &req.full_name {
            Some(name) => format!(
                "From: \"{}\" <{mail_from}>\r\n",
                name.replace(['"', '\\', '\r', '\n'], "")
            ),
            None => format!("From: {mail_from}\r\n"),
        };
        mime.splice(0..0, from.into_bytes());
    }
    let request = SubmitRequest {
        account,
        mail_from,
        recipients,
        mime,
        release_at: None,
        trace: Trace {
            helo: format!("uid-{uid}"),
            client_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            protocol: "local",
            tls: None,
        },
    };
    match submitter.store(request, None, None).await {
        // Accepted for the others: exit 0, as sendmail does for a recipient that will bounce
        // (a failure code would make `mail` keep a dead.letter and a caller that retries send
        // the others a second copy); the left-out recipients are named on stderr and recorded
        // on the submission (`outbox queue show`).
        Ok(done) => LocalAnswer {
            warning: (!done.suppressed.is_empty()).then(|| {
                let each: Vec<String> = done.suppressed.iter().map(|s| s.to_string()).collect();
                format!(
                    "not sent to every recipient (queued as {}): {}",
                    done.id,
                    each.join("; ")
                )
            }),
            ..LocalAnswer::new(exit::OK, done.id.to_string())
        },
        Err(SubmitError::NotOwner(a)) => {
            LocalAnswer::new(exit::NOPERM, format!("{a} is not this account's address"))
        }
        Err(SubmitError::BadMessage(m)) => LocalAnswer::new(exit::DATAERR, m),
        Err(SubmitError::SpoolFull) => LocalAnswer::new(exit::TEMPFAIL, "queue full, try later"),
        Err(SubmitError::Storage) => LocalAnswer::new(exit::TEMPFAIL, "local error, try later"),
        Err(e @ SubmitError::Suppressed { .. }) => LocalAnswer::new(exit::NOPERM, e.to_string()),
        // sysexits.h: EX_NOUSER for an address that cannot be used.
        Err(e @ SubmitError::Address(_)) => LocalAnswer::new(exit::NOUSER, e.to_string()),
        Err(e @ SubmitError::Attachment(_)) => LocalAnswer::new(exit::DATAERR, e.to_string()),
        // EX_TEMPFAIL: the class is held for now; the caller's queue tries again later.
        Err(SubmitError::Held(m)) => LocalAnswer::new(exit::TEMPFAIL, m),
    }
}

/// The first address of the header's From, if any.
fn header_from(mime: &[u8]) -> Option<String> {
    let parsed = MessageParser::default().parse_headers(mime)?;
    let from = parsed.from()?.first()?.address()?;
    Some(from.to_string())
}

/// Addresses in To, Cc and Bcc (for `-t`).
fn header_recipients(mime: &[u8]) -> Vec<String> {
    let Some(parsed) = MessageParser::default().parse_headers(mime) else {
        return vec![];
    };
    [parsed.to(), parsed.cc(), parsed.bcc()]
        .into_iter()
        .flatten()
        .flat_map(|field| {
            field
                .iter()
                .filter_map(|a| a.address().map(str::to_string))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The client side: sends one message; returns the daemon's answer (sysexits code, text and
/// any warning).
pub async fn send(socket: &Path, args: Args, input: &[u8]) -> LocalAnswer {
    let mime = normalize(input, args.ignore_dots);
    let request = LocalRequest {
        from: args.from,
        full_name: args.full_name,
        recipients: args.recipients,
        extract: args.extract,
        size: mime.len(),
    };
    let exchange = async {
        let stream = UnixStream::connect(socket).await?;
        let (read, mut write) = stream.into_split();
        let mut head = serde_json::to_string(&request)?;
        head.push('\n');
        // The daemon may answer before it has read the message (a uid it refuses, a queue
        // that is busy) and close: the answer is then read despite the failed write.
        let sent = async {
            write.write_all(head.as_bytes()).await?;
            write.write_all(&mime).await
        }
        .await;
        let mut line = String::new();
        let read = BufReader::new(read).read_line(&mut line).await;
        match (serde_json::from_str::<LocalAnswer>(&line), sent, read) {
            (Ok(answer), _, _) => anyhow::Ok(answer),
            (Err(_), Err(e), _) | (Err(_), Ok(()), Err(e)) => Err(e.into()),
            (Err(e), Ok(()), Ok(_)) => Err(e.into()),
        }
    };
    match exchange.await {
        Ok(answer) => answer,
        Err(e) => LocalAnswer::new(
            exit::UNAVAILABLE,
            format!(
                "cannot reach the Outbox daemon at {}: {e}",
                socket.display()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Result<Args, String> {
        parse_args(
            &line
                .split_whitespace()
                .map(String::from)
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn command_lines() {
        let a = args("-t -i -f me@example.com -F Me").unwrap();
        assert!(a.extract && a.ignore_dots);
        assert_eq!(
            (a.from.as_deref(), a.full_name.as_deref()),
            (Some("me@example.com"), Some("Me"))
        );
        let a = args("-oi -fme@example.com a@example.net b@example.net").unwrap();
        assert!(a.ignore_dots && !a.extract);
        assert_eq!(a.from.as_deref(), Some("me@example.com"));
        assert_eq!(a.recipients, ["a@example.net", "b@example.net"]);
        // Flags PHP and cron pass that change nothing here.
        assert_eq!(
            args("-odi -oem -bm -- x@example.net").unwrap().recipients,
            ["x@example.net"]
        );
        // What Debian's cron runs.
        let a = args("-FCronDaemon -i -B8BITMIME -oem root").unwrap();
        assert_eq!(a.recipients, ["root"]);
        assert_eq!(a.full_name.as_deref(), Some("CronDaemon"));
        assert_eq!(
            args("-B 8BITMIME r@x.test").unwrap().recipients,
            ["r@x.test"]
        );
        assert!(args("-f").is_err());
        assert!(args("-bs").is_err(), "SMTP on stdin is not offered");
    }

    #[test]
    fn normalizes_line_endings_and_dots() {
        assert_eq!(normalize(b"a\nb\r\n", false), b"a\r\nb\r\n");
        assert_eq!(normalize(b"a\n.\nb\n", false), b"a\r\n");
        assert_eq!(normalize(b"a\n.\nb\n", true), b"a\r\n.\r\nb\r\n");
        assert_eq!(normalize(b"no newline", false), b"no newline\r\n");
        assert_eq!(
            normalize(b"a\rb\n", false),
            b"a\rb\r\n",
            "a lone CR stays (and is refused at submission)"
        );
    }

    /// A daemon side on a socket in a temporary folder; `our_uid` lists this process's uid in
    /// the account's `unix_users`.
    struct Local {
        socket: PathBuf,
        spool: crate::spool::Spool,
        _stop: watch::Sender<bool>,
        _dir: tempfile::TempDir,
    }

    async fn local(our_uid: bool, limits: LocalLimits) -> Local {
        let dir = tempfile::tempdir().unwrap();
        let clock: Arc<dyn crate::clock::Clock> = Arc::new(crate::clock::SystemClock);
        let mut account =
            crate::accounts::test_account("alice", "pw", "alice", "alice@example.com");
        if our_uid {
            // SAFETY: getuid has no preconditions.
            account.unix_users = vec![unsafe { libc::getuid() }.to_string()];
        }
        let directory = Live::new(Directory::from_config(&[account]).unwrap());
        let spool = crate::spool::redb::open(
            &dir.path().join("spool"),
            crate::spool::SpoolOptions::from(&crate::config::SpoolConfig::default()),
            clock.clone(),
        )
        .unwrap();
        let submitter = Arc::new(Submitter::new(spool.clone(), "mx.test".into(), clock));
        let socket = dir.path().join("submit.sock");
        let (stop, rx) = watch::channel(false);
        serve(socket.clone(), directory, submitter, limits, rx)
            .await
            .unwrap();
        Local {
            socket,
            spool,
            _stop: stop,
            _dir: dir,
        }
    }

    const LIMITS: LocalLimits = LocalLimits {
        max_size: 40_000_000,
        max_recipients: 50,
        read_deadline: std::time::Duration::from_secs(60),
        max_concurrent: 2,
        default_domain: None,
    };

    /// Sends a request line declaring `size` octets and no message; returns the answer.
    async fn declare_only(socket: &Path, size: usize) -> (UnixStream, LocalAnswer) {
        let mut stream = UnixStream::connect(socket).await.unwrap();
        let req = serde_json::json!({"from": null, "full_name": null,
            "recipients": ["r@example.net"], "extract": false, "size": size});
        stream
            .write_all(format!("{req}\n").as_bytes())
            .await
            .unwrap();
        let mut line = String::new();
        BufReader::new(&mut stream)
            .read_line(&mut line)
            .await
            .unwrap();
        (stream, serde_json::from_str(&line).unwrap())
    }

    /// Rule: the caller's uid is checked before anything is read or allocated: a uid no account
    /// lists is refused at once, even while it still owes the 40 MB it declared.
    #[tokio::test]
    async fn unknown_uid_is_refused_before_the_message_is_read() {
        let l = local(false, LIMITS).await;
        let answer = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            declare_only(&l.socket, 40_000_000),
        )
        .await
        .expect("answered without waiting for the declared message")
        .1;
        assert_eq!(answer.exit, exit::NOPERM, "{}", answer.message);
    }

    /// Rule: an allowed caller that stops sending is cut off at the read deadline, and no more
    /// than `max_concurrent` local submissions are held at once.
    #[tokio::test(start_paused = true)]
    async fn stalled_callers_hold_at_most_the_cap_and_time_out() {
        let l = local(true, LIMITS).await;
        let mut stalled = Vec::new();
        for _ in 0..LIMITS.max_concurrent {
            let mut stream = UnixStream::connect(&l.socket).await.unwrap();
            let req = serde_json::json!({"from": null, "full_name": null,
                "recipients": ["r@example.net"], "extract": false, "size": 40_000_000});
            stream
                .write_all(format!("{req}\nSubject: x\r\n").as_bytes())
                .await
                .unwrap();
            stalled.push(stream);
        }
        // Let the daemon take both slots.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        let (_s, busy) = declare_only(&l.socket, 10).await;
        assert_eq!(busy.exit, exit::TEMPFAIL, "{}", busy.message);
        assert!(busy.message.contains("too many"), "{}", busy.message);
        // The stalled ones are answered once the deadline passes (time is paused: no real wait).
        for stream in &mut stalled {
            let mut line = String::new();
            BufReader::new(stream).read_line(&mut line).await.unwrap();
            let answer: LocalAnswer = serde_json::from_str(&line).unwrap();
            assert_eq!(answer.exit, exit::TEMPFAIL, "{}", answer.message);
            assert!(answer.message.contains("in time"), "{}", answer.message);
        }
    }

    /// Rule: at most `max_recipients` (SES's 50) distinct recipients per message, as SMTP and
    /// JMAP; too many on the command line is EX_USAGE, too many from `-t` headers EX_DATAERR.
    #[tokio::test]
    async fn recipients_are_capped_like_smtp() {
        let l = local(true, LIMITS).await;
        let many: Vec<String> = (0..51).map(|n| format!("r{n}@example.net")).collect();
        let args = Args {
            recipients: many.clone(),
            ..Args::default()
        };
        let LocalAnswer {
            exit: code,
            message: text,
            ..
        } = send(&l.socket, args, b"Subject: x\n\nx\n").await;
        assert_eq!(code, exit::USAGE, "{text}");
        assert!(text.contains("too many recipients"), "{text}");
        let headers = format!("To: {}\nSubject: x\n\nx\n", many.join(", "));
        let args = Args {
            extract: true,
            ..Args::default()
        };
        let LocalAnswer {
            exit: code,
            message: text,
            ..
        } = send(&l.socket, args, headers.as_bytes()).await;
        assert_eq!(code, exit::DATAERR, "{text}");
        // 50, with duplicates, is fine.
        let mut fifty = many[..50].to_vec();
        fifty.push(many[0].clone());
        let args = Args {
            recipients: fifty,
            ..Args::default()
        };
        let LocalAnswer {
            exit: code,
            message: text,
            ..
        } = send(&l.socket, args, b"Subject: x\n\nx\n").await;
        assert_eq!(code, exit::OK, "{text}");
    }

    /// Issue 16: one suppressed recipient no longer costs the others the message. It is
    /// queued for them (exit 0, as sendmail does for a recipient that will bounce: `mail` and
    /// cron take a failure code as "not sent"), the left-out one is named on stderr and
    /// recorded as suppressed on the submission; only when nobody is left is it EX_NOPERM.
    #[tokio::test]
    async fn suppressed_recipient_is_left_out_alone() {
        let l = local(true, LIMITS).await;
        let gone = crate::domain::Suppression::new(
            "gone@example.net",
            "alice",
            crate::domain::ALL_CLASSES,
            "bounce Permanent/General".into(),
            0,
            None,
        );
        l.spool.ledger.suppress(gone).await.unwrap();
        let args = Args {
            recipients: vec!["friend@example.net".into(), "Gone@example.net".into()],
            ..Args::default()
        };
        let answer = send(&l.socket, args, b"Subject: x\n\nx\n").await;
        assert_eq!(answer.exit, exit::OK, "{}", answer.message);
        let warning = answer.warning.expect("the left-out recipient is named");
        assert!(
            warning.contains("Gone@example.net is suppressed for transactional mail: bounce"),
            "{warning}"
        );
        let id: crate::domain::QueueId = answer.message.parse().unwrap();
        let record = l.spool.ledger.get(id).await.unwrap().unwrap();
        assert_eq!(
            record.job.recipients,
            ["friend@example.net", "Gone@example.net"]
        );
        let status = &record.delivery["gone@example.net"];
        assert_eq!(status.outcome, crate::domain::Outcome::Suppressed);
        assert!(!record.delivery.contains_key("friend@example.net"));

        let args = Args {
            recipients: vec!["gone@example.net".into()],
            ..Args::default()
        };
        let answer = send(&l.socket, args, b"Subject: x\n\nx\n").await;
        assert_eq!(answer.exit, exit::NOPERM, "{}", answer.message);
        assert!(answer.message.contains("suppressed"), "{}", answer.message);
        assert!(answer.warning.is_none());
    }

    /// Issue 16: `sendmail root` (cron's MAILTO) is not queued with the bare address SES
    /// refuses: without `default_domain` it is refused, saying what to do (EX_NOUSER); with
    /// it the name is qualified in the envelope and the header's address fields.
    #[tokio::test]
    async fn local_names_are_qualified_or_refused() {
        let l = local(true, LIMITS).await;
        let args = Args {
            recipients: vec!["root".into()],
            ..Args::default()
        };
        let answer = send(&l.socket, args, b"To: root\nSubject: x\n\nx\n").await;
        assert_eq!(answer.exit, exit::NOUSER, "{}", answer.message);
        assert!(
            answer.message.contains("\"root\" has no domain")
                && answer.message.contains("default_domain"),
            "{}",
            answer.message
        );

        let qualifying = LocalLimits {
            default_domain: Some("example.com".into()),
            ..LIMITS
        };
        let l = local(true, qualifying).await;
        let args = Args {
            extract: true,
            ..Args::default()
        };
        let answer = send(&l.socket, args, b"To: root\nSubject: x\n\nx\n").await;
        assert_eq!(answer.exit, exit::OK, "{}", answer.message);
        let id: crate::domain::QueueId = answer.message.parse().unwrap();
        let record = l.spool.ledger.get(id).await.unwrap().unwrap();
        assert_eq!(record.job.recipients, ["root@example.com"]);
        let stored = l.spool.blobs.get(id).await.unwrap();
        let text = String::from_utf8_lossy(&stored);
        assert!(text.contains("\r\nTo: root@example.com\r\n"), "{text}");
        // -f too.
        let args = Args {
            from: Some("nobody".into()),
            recipients: vec!["r@example.net".into()],
            ..Args::default()
        };
        let answer = send(&l.socket, args, b"Subject: x\n\nx\n").await;
        assert_eq!(answer.exit, exit::NOPERM, "{}", answer.message);
        assert!(
            answer.message.contains("nobody@example.com"),
            "{}",
            answer.message
        );
    }
}
