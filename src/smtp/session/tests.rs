//! The session state machine, driven without a network: each case is a dialog of client lines
//! and the reply each must get.

use std::sync::OnceLock;

use super::*;
use crate::accounts::Directory;
use crate::clock::ManualClock;

fn directory() -> &'static Directory {
    static DIR: OnceLock<Directory> = OnceLock::new();
    DIR.get_or_init(|| {
        let account = crate::accounts::test_account("alice", "pw", "a", "alice@example.com");
        Directory::from_config(&[account]).unwrap()
    })
}

fn session(port: PortKind) -> Session {
    session_with_room(port, true)
}

fn session_with_room(port: PortKind, room: bool) -> Session {
    session_for(port, room, AddressPolicy::Utf8)
}

fn session_for(port: PortKind, room: bool, addresses: AddressPolicy) -> Session {
    Session::new(
        port,
        "mx.test".into(),
        SessionLimits {
            max_hold_secs: 3600,
            max_message_size: 1000,
            max_recipients: 3,
            max_errors: 8,
            max_auth_failures: 2,
            addresses,
        },
        1000,
        Box::new(move |_| room),
    )
    .with_clock(ManualClock::new(NOW_MS))
}

const NOW_MS: u64 = 1_795_686_845_000;

/// The one address on the suppression list [`drive`] answers from.
const SUPPRESSED: &str = "gone@example.net";

/// Plays the driver's part: answers Authenticate with the real directory, data with a given
/// body, Submit with a fixed queue id. Returns the wire text of every reply plus markers for
/// the other actions.
fn drive(session: &mut Session, actions: Vec<Action>, body: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut queue: std::collections::VecDeque<Action> = actions.into();
    while let Some(action) = queue.pop_front() {
        match action {
            Action::Reply(r) => out.push(r.to_wire().trim_end().to_string()),
            Action::Close => out.push("<close>".into()),
            Action::StartTls => {
                out.push("<tls>".into());
                session.tls_started();
            }
            Action::ReadData => {
                let mut reader = crate::smtp::data::DotReader::new(1000, 1000);
                reader.feed(body).expect("test body ends with CRLF.CRLF");
                queue.extend(session.data_done(reader.finish()));
            }
            Action::ReadBdat { size, keep } => {
                out.push(format!("<bdat {size} {keep}>"));
                let chunk = if keep { &body[..size] } else { &b""[..] };
                queue.extend(session.bdat_chunk(chunk));
            }
            Action::Authenticate { login, password } => {
                let outcome = match directory().verify(&login, &password) {
                    Some(a) => AuthOutcome::Success(a),
                    None => AuthOutcome::Failure,
                };
                queue.extend(session.auth_done(outcome));
            }
            Action::CheckRecipient { address } => {
                // The suppression list of these tests: one address, for every class.
                let verdict = if address.eq_ignore_ascii_case(SUPPRESSED) {
                    Err(SubmitError::Suppressed {
                        address: address.clone(),
                        class: "transactional".into(),
                        reason: "bounce Permanent/General".into(),
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
                let hold = release_at
                    .map(|t| format!(" release={t}"))
                    .unwrap_or_default();
                out.push(format!(
                    "<submit {mail_from} {} {}{hold}>",
                    recipients.join(","),
                    mime.len()
                ));
                queue.extend(session.submitted(Ok(QueueId(0xABC))));
            }
        }
    }
    out
}

/// Sends each line; checks the replies start with the expected text, in order.
fn dialog(port: PortKind, steps: &[(&str, &[&str])], body: &[u8]) {
    dialog_on(session(port), steps, body)
}

fn dialog_on(mut s: Session, steps: &[(&str, &[&str])], body: &[u8]) {
    let greeting = {
        let a = s.greeting();
        drive(&mut s, a, body)
    };
    assert_eq!(greeting, ["220 mx.test ESMTP Outbox"]);
    for (line, want) in steps {
        let input = format!("{line}\r\n");
        let got = {
            let a = s.line(input.as_bytes());
            drive(&mut s, a, body)
        };
        assert_eq!(
            got.len(),
            want.len(),
            "{line:?}: got {got:?}, want {want:?}"
        );
        for (g, w) in got.iter().zip(want.iter()) {
            assert!(g.starts_with(w), "{line:?}: got {g:?}, want {w:?}");
        }
    }
}

const PLAIN_OK: &str = "AUTH PLAIN AGFsaWNlAHB3"; // \0alice\0pw
const PLAIN_BAD: &str = "AUTH PLAIN AGFsaWNlAHdyb25n"; // \0alice\0wrong

fn authed() -> Vec<(&'static str, &'static [&'static str])> {
    vec![
        ("EHLO c", &["250-mx.test"][..]),
        ("STARTTLS", &["220 2.0.0", "<tls>"]),
        ("EHLO c", &["250-mx.test"]),
        (PLAIN_OK, &["235 2.7.0"]),
    ]
}

fn with_auth(
    rest: &[(&'static str, &'static [&'static str])],
) -> Vec<(&'static str, &'static [&'static str])> {
    let mut steps = authed();
    steps.extend_from_slice(rest);
    steps
}

#[test]
fn ehlo_advertises_by_tls_state() {
    let mut s = session(PortKind::Submission);
    let before = {
        let a = s.line(b"EHLO c\r\n");
        drive(&mut s, a, b"")
    }
    .join("\n");
    for ext in [
        "PIPELINING",
        "SIZE 1000",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "STARTTLS",
    ] {
        assert!(before.contains(ext), "{ext} missing before TLS: {before}");
    }
    assert!(
        !before.contains("AUTH"),
        "AUTH offered before TLS: {before}"
    );
    {
        let a = s.line(b"STARTTLS\r\n");
        drive(&mut s, a, b"")
    };
    let after = {
        let a = s.line(b"EHLO c\r\n");
        drive(&mut s, a, b"")
    }
    .join("\n");
    assert!(
        after.contains("AUTH PLAIN LOGIN") && !after.contains("STARTTLS"),
        "{after}"
    );

    let mut s = session(PortKind::Submissions);
    let implicit = {
        let a = s.line(b"EHLO c\r\n");
        drive(&mut s, a, b"")
    }
    .join("\n");
    assert!(
        implicit.contains("AUTH PLAIN LOGIN") && !implicit.contains("STARTTLS"),
        "{implicit}"
    );
}

#[test]
fn refusals_before_tls_and_auth() {
    dialog(
        PortKind::Submission,
        &[
            ("MAIL FROM:<alice@example.com>", &["503 5.5.1"]),
            ("EHLO c", &["250-mx.test"]),
            (PLAIN_OK, &["530 5.7.0"]),
            ("MAIL FROM:<alice@example.com>", &["530 5.7.0"]),
            ("STARTTLS", &["220 2.0.0", "<tls>"]),
            ("STARTTLS", &["503 5.5.1"]),
            ("MAIL FROM:<alice@example.com>", &["503 5.5.1"]),
            ("EHLO c", &["250-mx.test"]),
            ("MAIL FROM:<alice@example.com>", &["530 5.7.0"]),
        ],
        b"",
    );
}

#[test]
fn auth_mechanisms() {
    dialog(
        PortKind::Submissions,
        &[
            ("EHLO c", &["250-"]),
            ("AUTH PLAIN", &["334"]),
            ("AGFsaWNlAHB3", &["235 2.7.0"]),
            (PLAIN_OK, &["503 5.5.1"]),
        ],
        b"",
    );
    dialog(
        PortKind::Submissions,
        &[
            ("EHLO c", &["250-"]),
            ("AUTH LOGIN", &["334 VXNlcm5hbWU6"]),
            ("YWxpY2U=", &["334 UGFzc3dvcmQ6"]),
            ("cHc=", &["235 2.7.0"]),
        ],
        b"",
    );
    dialog(
        PortKind::Submissions,
        &[
            ("EHLO c", &["250-"]),
            ("AUTH LOGIN YWxpY2U=", &["334 UGFzc3dvcmQ6"]),
            ("cHc=", &["235 2.7.0"]),
        ],
        b"",
    );
    dialog(
        PortKind::Submissions,
        &[
            ("EHLO c", &["250-"]),
            ("AUTH PLAIN", &["334"]),
            ("*", &["501 5.7.0"]),
            ("AUTH CRAM-MD5", &["504 5.5.4"]),
            ("AUTH PLAIN !!!", &["501 5.5.2"]),
            // authzid differing from authcid: refused like a bad password.
            ("AUTH PLAIN Ym9iAGFsaWNlAHB3", &["535 5.7.8"]),
        ],
        b"",
    );
}

#[test]
fn auth_failure_budget_closes() {
    dialog(
        PortKind::Submissions,
        &[
            ("EHLO c", &["250-"]),
            (PLAIN_BAD, &["535 5.7.8"]),
            (PLAIN_BAD, &["421 4.7.0", "<close>"]),
        ],
        b"",
    );
}

#[test]
fn transaction_policy() {
    dialog(
        PortKind::Submission,
        &with_auth(&[
            ("RCPT TO:<x@example.net>", &["503 5.5.1"]),
            ("MAIL FROM:<mallory@example.com>", &["550 5.7.1"]),
            ("MAIL FROM:<alice@example.com> SIZE=1001", &["552 5.3.4"]),
            (
                "MAIL FROM:<alice@example.com> BODY=BINARYMIME",
                &["555 5.5.4"],
            ),
            ("DATA", &["503 5.5.1"]),
        ]),
        b"",
    );
    dialog(
        PortKind::Submission,
        &with_auth(&[
            ("MAIL FROM:<alice@example.com> SIZE=100", &["250 2.1.0"]),
            ("MAIL FROM:<alice@example.com>", &["503 5.5.1"]),
            ("DATA", &["503 5.5.1"]),
            ("RCPT TO:<a@example.net>", &["250 2.1.5"]),
            ("RCPT TO:<b@example.net>", &["250 2.1.5"]),
            ("RCPT TO:<A@example.net>", &["250 2.1.5"]),
            ("RCPT TO:<c@example.net>", &["250 2.1.5"]),
            ("RCPT TO:<d@example.net>", &["452 4.5.3"]),
            (
                "DATA",
                &[
                    "354",
                    "<submit alice@example.com a@example.net,b@example.net,c@example.net 31>",
                    "250 2.0.0 Ok: queued as 000000000000000000000002NW",
                ],
            ),
        ]),
        b"From: alice@example.com\r\n\r\nhi\r\n.\r\n",
    );
}

/// Issue 16: a suppressed recipient is refused at RCPT, alone; the message goes to the others
/// (and a suppressed one is not counted against the recipient limit).
#[test]
fn suppressed_recipient_refused_at_rcpt_alone() {
    dialog(
        PortKind::Submission,
        &with_auth(&[
            ("MAIL FROM:<alice@example.com>", &["250 2.1.0"]),
            ("RCPT TO:<a@example.net>", &["250 2.1.5"]),
            (
                "RCPT TO:<Gone@Example.net>",
                &["550 5.7.1 recipient Gone@Example.net is suppressed for transactional mail: bounce Permanent/General"],
            ),
            ("RCPT TO:<b@example.net>", &["250 2.1.5"]),
            // Issue 16: a bare local name is refused, saying why.
            (
                "RCPT TO:<root>",
                &["553 5.1.3 Recipient address must be fully qualified (name@domain)"],
            ),
            ("RCPT TO:<c@example.net>", &["250 2.1.5"]),
            (
                "DATA",
                &[
                    "354",
                    "<submit alice@example.com a@example.net,b@example.net,c@example.net 31>",
                    "250 2.0.0 Ok: queued as",
                ],
            ),
        ]),
        b"From: alice@example.com\r\n\r\nhi\r\n.\r\n",
    );
    // Only suppressed recipients: nothing to send, DATA is out of sequence (RFC 5321 §3.3).
    dialog(
        PortKind::Submission,
        &with_auth(&[
            ("MAIL FROM:<alice@example.com>", &["250 2.1.0"]),
            ("RCPT TO:<gone@example.net>", &["550 5.7.1"]),
            ("DATA", &["503 5.5.1"]),
        ]),
        b"",
    );
}

#[test]
fn bodies_refused_and_transaction_reset() {
    dialog(
        PortKind::Submission,
        &with_auth(&[
            ("MAIL FROM:<alice@example.com>", &["250"]),
            ("RCPT TO:<a@example.net>", &["250"]),
            ("DATA", &["354", "550 5.6.0"]),
            ("RCPT TO:<a@example.net>", &["503 5.5.1"]),
        ]),
        b"From: alice@example.com\r\n\r\nbare\nLF\r\n.\r\n",
    );
}

#[test]
fn bdat_chunks() {
    let body = b"From: alice@example.com\r\n\r\nhi\r\n";
    let mut steps = with_auth(&[
        ("MAIL FROM:<alice@example.com>", &["250"]),
        ("RCPT TO:<a@example.net>", &["250"]),
    ]);
    steps.push((
        "BDAT 31 LAST",
        &[
            "<bdat 31 true>",
            "<submit alice@example.com a@example.net 31>",
            "250 2.0.0",
        ],
    ));
    dialog(PortKind::Submission, &steps, body);
    // Without a transaction the chunk is still read (to stay in step), then refused.
    dialog(
        PortKind::Submissions,
        &[
            ("EHLO c", &["250-"]),
            ("BDAT 5 LAST", &["<bdat 5 false>", "503 5.5.1"]),
        ],
        b"hello",
    );
    // Too big: the chunk is drained, not kept, and refused.
    dialog(
        PortKind::Submission,
        &with_auth(&[
            ("MAIL FROM:<alice@example.com>", &["250"]),
            ("RCPT TO:<a@example.net>", &["250"]),
            ("BDAT 2000 LAST", &["<bdat 2000 false>", "552 5.3.4"]),
            ("RCPT TO:<a@example.net>", &["503 5.5.1"]),
        ]),
        b"",
    );
    // A bare LF inside BDAT data is refused at the last chunk.
    dialog(
        PortKind::Submission,
        &with_auth(&[
            ("MAIL FROM:<alice@example.com>", &["250"]),
            ("RCPT TO:<a@example.net>", &["250"]),
            ("BDAT 4", &["<bdat 4 true>", "250 2.0.0 4 octets"]),
            ("BDAT 4 LAST", &["<bdat 4 true>", "550 5.6.0"]),
        ]),
        b"a\nb\r",
    );
}

#[test]
fn misc_verbs_and_errors() {
    dialog(
        PortKind::Submission,
        &[
            ("NOOP", &["250 2.0.0"]),
            ("VRFY alice", &["252"]),
            ("HELP", &["214"]),
            ("EXPN list", &["502 5.5.1"]),
            ("FOO", &["500 5.5.1"]),
            ("RSET", &["250 2.0.0"]),
            ("QUIT", &["221 2.0.0", "<close>"]),
        ],
        b"",
    );
    // The error budget (8): the eighth error closes the connection.
    let mut steps: Vec<(&str, &[&str])> = vec![("FOO", &["500"]); 7];
    steps.push(("FOO", &["421 4.7.0", "<close>"]));
    dialog(PortKind::Submission, &steps, b"");
    dialog(
        PortKind::Submission,
        &[("GET / HTTP/1.1", &["<close>"])],
        b"",
    );
    let mut s = session(PortKind::Submission);
    let got = {
        let a = s.line(b"NOOP\n");
        drive(&mut s, a, b"")
    };
    assert_eq!(got, ["500 5.5.2 Command lines must end with CRLF"]);
}

#[test]
fn spool_full_at_mail() {
    let full = session_with_room(PortKind::Submission, false);
    dialog_on(
        full,
        &with_auth(&[("MAIL FROM:<alice@example.com>", &["452 4.3.1"])]),
        b"",
    );
}

#[test]
fn submission_errors_map_to_replies() {
    let cases: [(Result<QueueId, SubmitError>, &str); 6] = [
        (Ok(QueueId(1)), "250 2.0.0 Ok: queued as 00000000000000000000000001"),
        (Err(SubmitError::NotOwner("x".into())), "550 5.7.1"),
        (
            Err(SubmitError::BadMessage("Message has no From header")),
            "550 5.6.0 Message has no From header",
        ),
        (Err(SubmitError::SpoolFull), "452 4.3.1"),
        (Err(SubmitError::Storage), "451 4.3.0"),
        (
            Err(SubmitError::Suppressed {
                address: "gone@example.net".into(),
                class: "bulk".into(),
                reason: "bounce Permanent/General".into(),
            }),
            "550 5.7.1 recipient gone@example.net is suppressed for bulk mail: bounce Permanent/General",
        ),
    ];
    for (result, want) in cases {
        let mut s = session(PortKind::Submissions);
        let got = {
            let a = s.submitted(result);
            drive(&mut s, a, b"")
        };
        assert!(got[0].starts_with(want), "{got:?} vs {want}");
    }
}

#[test]
fn future_release() {
    let mut s = session(PortKind::Submissions);
    let ehlo = {
        let a = s.line(b"EHLO c\r\n");
        drive(&mut s, a, b"")
    }
    .join("\n");
    assert!(
        ehlo.contains("250-FUTURERELEASE 3600 2026-11-26T10:54:05Z"),
        "{ehlo}"
    );
    let body = b"From: alice@example.com\r\n\r\nhi\r\n.\r\n";
    let hold = |mail: &'static str, want: &'static [&'static str]| {
        let mut steps: Vec<(&str, &[&str])> =
            vec![("EHLO c", &["250-"]), (PLAIN_OK, &["235"]), (mail, want)];
        if want[0].starts_with("250") {
            steps.push(("RCPT TO:<a@example.net>", &["250"]));
        }
        steps
    };
    let for_60 = hold("MAIL FROM:<alice@example.com> HOLDFOR=60", &["250"]);
    let mut steps = for_60.clone();
    steps.push((
        "DATA",
        &[
            "354",
            "<submit alice@example.com a@example.net 31 release=1795686905000>",
            "250",
        ],
    ));
    dialog(PortKind::Submissions, &steps, body);
    // HOLDUNTIL in the past: released at once.
    let mut steps = hold(
        "MAIL FROM:<alice@example.com> HOLDUNTIL=2000-01-01T00:00:00Z",
        &["250"],
    );
    steps.push((
        "DATA",
        &[
            "354",
            "<submit alice@example.com a@example.net 31 release=1795686845000>",
            "250",
        ],
    ));
    dialog(PortKind::Submissions, &steps, body);
    dialog(
        PortKind::Submissions,
        &hold("MAIL FROM:<alice@example.com> HOLDFOR=3601", &["501 5.5.4"]),
        body,
    );
    dialog(
        PortKind::Submissions,
        &hold(
            "MAIL FROM:<alice@example.com> HOLDUNTIL=2030-01-01T00:00:00Z",
            &["501 5.5.4"],
        ),
        body,
    );
    dialog(
        PortKind::Submissions,
        &hold(
            "MAIL FROM:<alice@example.com> HOLDFOR=5 HOLDUNTIL=2026-11-26T10:00:00Z",
            &["501 5.5.5"],
        ),
        body,
    );
    // Far-off times are refused, not overflowed: from about the year 584554050 a HOLDUNTIL in
    // milliseconds no longer fits in a u64 (a panic in debug builds, a wrapped due time in
    // release ones). 4294967295 is the largest year the parser gives (it saturates at
    // u32::MAX); a bare number is not an RFC 3339 date-time and the parser refuses it.
    for mail in [
        "MAIL FROM:<alice@example.com> HOLDUNTIL=9999999-01-01T00:00:00Z",
        "MAIL FROM:<alice@example.com> HOLDUNTIL=999999999-01-01T00:00:00Z",
        "MAIL FROM:<alice@example.com> HOLDUNTIL=4294967295-12-31T23:59:59Z",
        "MAIL FROM:<alice@example.com> HOLDUNTIL=99999999999999999999-01-01T00:00:00Z",
        "MAIL FROM:<alice@example.com> HOLDUNTIL=99999999999999999999",
    ] {
        dialog(PortKind::Submissions, &hold(mail, &["501 5.5.4"]), body);
    }
}

#[test]
fn bdat_size_cannot_overflow_the_limit() {
    // 2 + (usize::MAX - 1) wraps to 0 without a saturating check, and the chunk would be kept.
    let huge = format!("BDAT {} LAST", usize::MAX - 1);
    let drained = format!("<bdat {} false>", usize::MAX - 1);
    let last = [drained.as_str(), "552 5.3.4"];
    let mut steps: Vec<(&str, &[&str])> = with_auth(&[
        ("MAIL FROM:<alice@example.com>", &["250"]),
        ("RCPT TO:<a@example.net>", &["250"]),
        ("BDAT 2", &["<bdat 2 true>", "250"]),
    ])
    .into_iter()
    .collect();
    steps.push((&huge, &last));
    dialog(PortKind::Submission, &steps, b"ab");
}

/// RFC 6531 §3.5 with a transport that cannot carry SMTPUTF8 (SES): not offered, a non-ASCII
/// local part gets 553 5.6.7 at MAIL/RCPT, an IDN domain is taken as A-labels (RFC 5890).
#[test]
fn smtputf8_only_where_the_transport_carries_it() {
    let ses = || session_for(PortKind::Submissions, true, AddressPolicy::Ascii);
    let mut s = ses();
    let ehlo = {
        let a = s.line(b"EHLO c\r\n");
        drive(&mut s, a, b"")
    }
    .join("\n");
    assert!(!ehlo.contains("SMTPUTF8"), "{ehlo}");
    assert!(
        ehlo.contains("8BITMIME") && ehlo.contains("CHUNKING"),
        "{ehlo}"
    );

    let body = b"From: alice@example.com\r\n\r\nhi\r\n.\r\n";
    let steps: &[(&str, &[&str])] = &[
        ("EHLO c", &["250-mx.test"]),
        (PLAIN_OK, &["235 2.7.0"]),
        ("MAIL FROM:<alice@example.com> SMTPUTF8", &["555 5.5.4"]),
        (
            "MAIL FROM:<alicé@example.com>",
            &["553 5.6.7 Non-ASCII addresses not permitted for that sender"],
        ),
        ("MAIL FROM:<alice@example.com>", &["250 2.1.0"]),
        (
            "RCPT TO:<pelé@example.net>",
            &["553 5.6.7 Non-ASCII addresses not permitted for that recipient"],
        ),
        ("RCPT TO:<info@bücher.example>", &["250 2.1.5"]),
        (
            "DATA",
            &[
                "354",
                "<submit alice@example.com info@xn--bcher-kva.example ",
                "250 2.0.0",
            ],
        ),
    ];
    dialog_on(ses(), steps, body);

    // The dir and smarthost transports keep SMTPUTF8 and take UTF-8 addresses as given.
    let mut s = session(PortKind::Submissions);
    let ehlo = {
        let a = s.line(b"EHLO c\r\n");
        drive(&mut s, a, b"")
    }
    .join("\n");
    assert!(ehlo.contains("SMTPUTF8"), "{ehlo}");
    let steps: &[(&str, &[&str])] = &[
        ("EHLO c", &["250-mx.test"]),
        (PLAIN_OK, &["235 2.7.0"]),
        ("MAIL FROM:<alice@example.com> SMTPUTF8", &["250 2.1.0"]),
        ("RCPT TO:<pelé@bücher.example>", &["250 2.1.5"]),
        (
            "DATA",
            &[
                "354",
                "<submit alice@example.com pelé@bücher.example ",
                "250 2.0.0",
            ],
        ),
    ];
    dialog_on(session(PortKind::Submissions), steps, body);
}
