//! The SMTP session and the DATA body reader.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use crate::accounts::{Account, Directory};
use crate::address::AddressPolicy;
use crate::clock::ManualClock;
use crate::config::{AccountConfig, IdentityConfig};
use crate::domain::QueueId;
use crate::smtp::data::{DotReader, LineRules};
use crate::smtp::session::{Action, AuthOutcome, PortKind, Session, SessionLimits};
use crate::submission::SubmitError;

/// The configured defaults (`config::SmtpConfig`), smaller where a smaller value reaches more
/// states per input.
const MAX_LINE: usize = 1000;
const MAX_COMMAND: usize = 2048;
const MAX_MESSAGE: usize = 4096;
const MAX_RECIPIENTS: usize = 3;
/// RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets, CRLF included.
const MAX_REPLY_LINE: usize = 512;
/// 2026-11-23T00:00:00Z.
const NOW_MS: u64 = 1_795_392_000_000;

/// A PHC string of argon2id for "pw" (never checked here: AUTH is decided by the driver below, a
/// real check would cost a second per input).
const PW_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$JWHhoNU0EZtkPlTgHGl59TfLXhUrgiojMgb7sW7P9bs";

/// alice: the address alice@example.com and the whole domain demo.test.
pub(super) fn alice() -> Arc<Account> {
    static DIR: OnceLock<Directory> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
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
        let account = AccountConfig {
            login: "alice".into(),
            password_hash: Some(PW_HASH.into()),
            password_hash_file: None,
            unix_users: vec![],
            tenant_id: "t".into(),
            account_id: None,
            user_id: None,
            identities: vec![
                identity("a", Some("alice@example.com"), None),
                identity("d", None, Some("demo.test")),
            ],
        };
        Directory::from_config(&[account]).expect("fuzz directory")
    });
    dir.get("alice").expect("alice")
}

/// The input is what a client sends. The first byte picks the port and the address policy; the
/// rest is read as the connection driver reads it: lines up to LF, DATA bodies through the
/// [`DotReader`], BDAT chunks by size. AUTH succeeds for alice/pw, cools down for login
/// "cool", fails otherwise. Checked on every action: replies are well-formed; credentials are
/// taken only over TLS; a message is submitted only after TLS and AUTH, from an address of the
/// account, to 1..=max recipients, within the size limit and the text rules.
pub fn smtp_session(data: &[u8]) {
    let Some((&mode, mut input)) = data.split_first() else {
        return;
    };
    let port = if mode & 1 == 0 {
        PortKind::Submission
    } else {
        PortKind::Submissions
    };
    let addresses = if mode & 2 == 0 {
        AddressPolicy::Utf8
    } else {
        AddressPolicy::Ascii
    };
    let limits = SessionLimits {
        max_hold_secs: if mode & 4 == 0 { 3600 } else { 0 },
        max_message_size: MAX_MESSAGE,
        max_recipients: MAX_RECIPIENTS,
        max_errors: 8,
        max_auth_failures: 2,
        addresses,
    };
    let mut session = Session::new(port, "mx.test".into(), limits, MAX_LINE, Box::new(|_| true))
        .with_clock(ManualClock::new(NOW_MS));
    let mut tls = port == PortKind::Submissions;
    let mut authenticated = false;
    let mut submissions = 0u32;
    let mut queue: VecDeque<Action> = session.greeting().into();
    loop {
        let Some(action) = queue.pop_front() else {
            // Waiting for the next command line.
            if input.is_empty() {
                return;
            }
            let end = input
                .iter()
                .position(|b| *b == b'\n')
                .map_or(input.len(), |i| i + 1);
            let (line, rest) = input.split_at(end);
            input = rest;
            queue.extend(if line.len() > MAX_COMMAND {
                session.line_too_long()
            } else {
                session.line(line)
            });
            continue;
        };
        match action {
            Action::Reply(reply) => check_reply(&reply),
            Action::Close => return,
            Action::StartTls => {
                // The driver discards what was buffered; here the rest of the input is taken as
                // what the client sent after the handshake.
                tls = true;
                session.tls_started();
            }
            Action::ReadData => {
                let mut reader = DotReader::new(MAX_LINE, MAX_MESSAGE);
                match reader.feed(input) {
                    Some(used) => input = &input[used..],
                    None => return, // the connection ends inside the body
                }
                queue.extend(session.data_done(reader.finish()));
            }
            Action::ReadBdat { size, keep } => {
                if size > input.len() {
                    return;
                }
                let (chunk, rest) = input.split_at(size);
                input = rest;
                queue.extend(session.bdat_chunk(if keep { chunk } else { b"" }));
            }
            Action::Authenticate { login, password } => {
                assert!(tls, "credentials taken without TLS");
                let outcome = match (login.as_str(), password.as_str()) {
                    ("alice", "pw") => AuthOutcome::Success(alice()),
                    ("cool", _) => AuthOutcome::CoolingDown,
                    _ => AuthOutcome::Failure,
                };
                authenticated |= matches!(outcome, AuthOutcome::Success(_));
                queue.extend(session.auth_done(outcome));
            }
            Action::CheckRecipient { address } => {
                // One recipient is on the suppression list; every other passes.
                let verdict = if address.eq_ignore_ascii_case("gone@example.net") {
                    Err(crate::submission::SubmitError::Suppressed {
                        address: address.clone(),
                        class: "transactional".into(),
                        reason: "bounce".into(),
                    })
                } else {
                    Ok(())
                };
                queue.extend(session.recipient_checked(address, verdict));
            }
            Action::Submit {
                mail_from,
                recipients,
                mime,
                release_at,
            } => {
                assert!(tls && authenticated, "submitted without TLS and AUTH");
                assert!(
                    alice().identity_for(&mail_from).is_some(),
                    "submitted from {mail_from:?}, not alice's"
                );
                assert!(
                    (1..=MAX_RECIPIENTS).contains(&recipients.len()),
                    "{} recipients",
                    recipients.len()
                );
                assert!(mime.len() <= MAX_MESSAGE, "{} octets", mime.len());
                let mut rules = LineRules::new(MAX_LINE);
                rules.push_slice(&mime);
                assert_eq!(
                    rules.finish(),
                    Ok(()),
                    "submitted body breaks the text rules"
                );
                if let Some(at) = release_at {
                    assert!(
                        (NOW_MS..=NOW_MS + 3600 * 1000).contains(&at),
                        "release at {at}"
                    );
                }
                submissions += 1;
                let result = if submissions.is_multiple_of(3) {
                    Err(SubmitError::SpoolFull)
                } else {
                    Ok(QueueId(u128::from(submissions)))
                };
                queue.extend(session.submitted(result));
            }
        }
    }
}

fn check_reply(reply: &crate::smtp::reply::Reply) {
    assert!(
        (200..=599).contains(&reply.code),
        "reply code {}",
        reply.code
    );
    let wire = reply.to_wire();
    assert!(wire.ends_with("\r\n"));
    for line in wire.split_inclusive("\r\n") {
        assert!(
            line.len() <= MAX_REPLY_LINE,
            "reply line of {} octets",
            line.len()
        );
        assert!(line.starts_with(&reply.code.to_string()), "{line:?}");
        assert!(!line[..line.len() - 2].contains(['\r', '\n']), "{line:?}");
    }
}

/// The first 4 bytes (when there are more) give read sizes, cycled; the rest is the stream
/// after `354`. Checked: the reader's verdict and the bytes it consumed are the same whether
/// the stream comes at once, in those reads, or a byte at a time; LineRules (BDAT) likewise;
/// and a body that passes the rules, dot-stuffed and terminated, reads back as itself.
pub fn body_reader(data: &[u8]) {
    let (sizes, stream) = data.split_at(data.len().min(4));
    let mut sizes: Vec<usize> = sizes.iter().map(|b| usize::from(b % 16)).collect();
    if sizes.iter().all(|s| *s == 0) {
        sizes = vec![1]; // empty reads alone would never move on
    }
    let limits = [(MAX_LINE, MAX_MESSAGE), (78, 256)];
    for (max_line, max_size) in limits {
        let whole = read_in(stream, &[stream.len().max(1)], max_line, max_size);
        let split = read_in(stream, &sizes, max_line, max_size);
        assert_eq!(whole, split, "split into reads of {sizes:?}");
        let bytewise = read_in(stream, &[1], max_line, max_size);
        assert_eq!(whole, bytewise, "read a byte at a time");

        let mut once = LineRules::new(max_line);
        once.push_slice(stream);
        let mut pieces = LineRules::new(max_line);
        for piece in chunks(stream, &sizes) {
            pieces.push_slice(piece);
        }
        assert_eq!(once.finish(), pieces.finish(), "LineRules split");

        // Round trip: a body that passes the rules and ends a line (or is empty).
        if once.finish().is_ok()
            && stream.len() <= max_size
            && (stream.is_empty() || stream.ends_with(b"\r\n"))
        {
            let mut wire = dot_stuff(stream);
            wire.extend_from_slice(b".\r\n");
            wire.extend_from_slice(b"QUIT\r\n");
            let (used, body) = read_in(&wire, &[wire.len()], max_line, max_size);
            assert_eq!(
                used,
                Some(wire.len() - 6),
                "terminator not where it was put"
            );
            assert_eq!(body.as_deref(), Ok(stream), "dot-stuffing round trip");
        }
    }
}

/// Dot-stuffing (RFC 5321 §4.5.2): a line that begins with "." gets one more.
fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16);
    let mut at_line_start = true;
    for &b in body {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    out
}

fn chunks<'a>(stream: &'a [u8], sizes: &'a [usize]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut rest = stream;
    let mut i = 0;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = sizes[i % sizes.len()].min(rest.len());
        i += 1;
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        Some(chunk)
    })
}

type Read = (Option<usize>, Result<Vec<u8>, crate::smtp::data::BodyError>);

/// Feeds the stream in reads of `sizes` (cycled; a 0 is an empty read) and returns where the
/// terminator ended in the stream and the verdict.
fn read_in(stream: &[u8], sizes: &[usize], max_line: usize, max_size: usize) -> Read {
    let mut reader = DotReader::new(max_line, max_size);
    let mut offset = 0;
    for chunk in chunks(stream, sizes) {
        if let Some(used) = reader.feed(chunk) {
            assert!(used <= chunk.len());
            return (Some(offset + used), reader.finish());
        }
        offset += chunk.len();
    }
    (None, reader.finish())
}
