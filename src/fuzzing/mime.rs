//! Header parsing with the From ownership check, and signature injection.

use mail_parser::{HeaderName, Message, MimeHeaders};

use super::smtp::alice;
use crate::message::strip_headers;
use crate::signature::{inject_signature, Signature};
use crate::smtp::data::LineRules;
use crate::submission::check_header_senders;

/// The input is a message as a front door hands it to the submitter. Differential against
/// mail-parser on the bytes that are sent (Bcc and the class header stripped, as
/// `sender::prepare` does): when the ownership check accepts, mail-parser sees exactly one
/// From, and every From and Sender address it sees is alice's.
///
/// Messages that break SMTP's text rules (bare CR or LF, NUL, long lines) are skipped: SMTP's
/// body reader refuses them before this check, and issue 15 item 5 makes every JMAP way in do
/// the same. Without this precondition the target finds item 5 (bare-LF From forgery) at once.
pub fn header_from(data: &[u8]) {
    let mut rules = LineRules::new(1000);
    rules.push_slice(data);
    if rules.finish().is_err() {
        return;
    }
    let account = alice();
    if check_header_senders(&account, data).is_err() {
        return;
    }
    let sent = strip_headers(data, &["Bcc", "X-Outbox-Class"]);
    let parsed = crate::message::parse_mime(&sent).expect("an accepted message parses");
    let mut froms = 0;
    for header in parsed.headers() {
        let from = header.name == HeaderName::From;
        if !(from || header.name == HeaderName::Sender) {
            continue;
        }
        froms += usize::from(from);
        for addr in header.value.as_address().into_iter().flat_map(|a| a.iter()) {
            let address = addr.address().unwrap_or_default();
            assert!(
                account.identity_for(address).is_some(),
                "accepted, but mail-parser sees {:?} in {:?}",
                address,
                header.name.as_str()
            );
        }
    }
    assert_eq!(
        froms, 1,
        "accepted, but mail-parser sees {froms} From fields"
    );
}

/// Signatures the target adds, picked by the first input byte.
const SIGNATURES: [Signature<'static>; 4] = [
    Signature {
        text: Some("-- \nAlice\nExample Corp"),
        html: Some("<p>-- <br>Alice</p>"),
    },
    Signature {
        text: Some("-- \nAlíce Ünïcode — 東京"),
        html: None,
    },
    Signature {
        text: None,
        html: Some("<div class=\"sig\">Alice &amp; Co</div>"),
    },
    Signature {
        text: Some(".\n.. \nFrom here\n>quoted\n"),
        html: Some("</body><p>x</p>"),
    },
];

/// The first byte picks a signature; the rest is the message. When mail-parser reads the input
/// as a message with headers, the signed output must read too, with the same attachments
/// (parts with `Content-Disposition: attachment` or a file name), byte for byte, in order.
pub fn signature(data: &[u8]) {
    let Some((&pick, mime)) = data.split_first() else {
        return;
    };
    let sig = &SIGNATURES[usize::from(pick) % SIGNATURES.len()];
    // Only what a submission can store is ever signed: every way in refuses bare CR or LF,
    // NUL and overlong lines (`check_text`). Outside them the fuzzer found a bare-LF quoted
    // parameter whose part mail-parser calls an attachment only after signing — a message no
    // client can get into the spool.
    if crate::submission::check_text(mime).is_err() {
        return;
    }
    let out = inject_signature(mime, sig);
    let Some(before) = crate::message::parse_mime(mime) else {
        assert_eq!(out, mime, "an unreadable message was changed");
        return;
    };
    if before.parts.first().is_none_or(|p| p.headers.is_empty()) {
        assert_eq!(out, mime, "a message without headers was changed");
        return;
    }
    let after =
        crate::message::parse_mime(&out).expect("signed output is a message mail-parser reads");
    assert!(
        !after.headers().is_empty(),
        "signed output lost its headers"
    );
    assert_eq!(
        attachments(&before),
        attachments(&after),
        "attachments changed by signing"
    );
}

fn attachments<'a>(message: &'a Message<'a>) -> Vec<&'a [u8]> {
    message
        .parts
        .iter()
        .filter(|p| {
            p.content_disposition().is_some_and(|d| d.is_attachment())
                || p.attachment_name().is_some()
        })
        .map(|p| p.contents())
        .collect()
}
