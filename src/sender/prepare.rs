//! Turning a stored submission into the message that leaves: envelope from the record, `Bcc`
//! and our class header removed, `Date` and `Message-ID` added when the client left them out
//! (RFC 6409 §8.2, §8.3), the identity's signature added, and the provider tags computed.
//! The stored copy is never changed.

use bytes::Bytes;

use crate::accounts::Identity;
use crate::clock::rfc5322_date;
use crate::domain::Job;
use crate::message::{header_end, header_values, strip_headers_into};
use crate::rope::Rope;
use crate::signature::{signature_edits, Signature};
use crate::submission::CLASS_HEADER;

/// SES tag names and values: `[A-Za-z0-9_-]`, at most 256 characters.
const TAG_MAX: usize = 256;

/// SES takes at most 50 `EmailTags` per message (SES v2 API reference, `MessageTag`).
pub const MAX_TAGS: usize = 50;

/// The tags every message carries (see [`tags`]); static tags may not reuse their names.
pub const BUILT_IN_TAGS: [&str; 7] = [
    "tenant_id",
    "submission_id",
    "identity_id",
    "account_id",
    "user_id",
    "domain",
    "message_class",
];

/// What is wrong with configured static `tags` (`[sender.transport] tags`, an identity's
/// `ses_tags`): names and values in SES's alphabet and length, no built-in name, and with the
/// built-in ones and `also` (the global tags, for an identity's) at most [`MAX_TAGS`] on one
/// message.
pub fn check_static_tags(
    tags: &std::collections::BTreeMap<String, String>,
    also: &std::collections::BTreeMap<String, String>,
) -> Vec<String> {
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= TAG_MAX
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
    };
    let mut problems = Vec::new();
    for (name, value) in tags {
        if !valid(name) || !valid(value) {
            problems.push(format!(
                "tag {name:?} = {value:?}: names and values are 1-{TAG_MAX} characters of [A-Za-z0-9_-] (SES)"
            ));
        }
        if BUILT_IN_TAGS.contains(&name.as_str()) {
            problems.push(format!("tag {name:?} is one Outbox sets itself"));
        }
    }
    let distinct = tags
        .keys()
        .chain(also.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    if BUILT_IN_TAGS.len() + distinct > MAX_TAGS {
        problems.push(format!(
            "{} static tags and the {} built-in ones exceed SES's {MAX_TAGS} per message",
            distinct,
            BUILT_IN_TAGS.len()
        ));
    }
    problems
}

/// The outgoing MIME for `job`, whose stored MIME is `stored`.
/// Headers SES reads from a raw message to choose the configuration set, the message tags
/// and (sending authorization) the identities it sends as (SES developer guide, "Using
/// configuration sets", "Sending authorization"). A client's must not pick them: the
/// configured set and our tags are the only ones that apply.
const SES_CONTROL_HEADERS: [&str; 5] = [
    "X-SES-CONFIGURATION-SET",
    "X-SES-MESSAGE-TAGS",
    "X-SES-SOURCE-ARN",
    "X-SES-FROM-ARN",
    "X-SES-RETURN-PATH-ARN",
];

/// Stored stretches from this length on are shared with the outgoing message; shorter ones
/// are copied.
const SHARE_FROM: usize = 64 * 1024;

/// Builds the outgoing message over the stored one: the added `Date` and `Message-ID` fields
/// and the stored header block with our edits (copied: it is small), then the stored body
/// shared, not copied, with the signature's rewritten parts in place of the ones they replace.
/// The first piece holds whole header fields and the rest starts with the empty line before
/// the body, the shape DKIM signing reads without joining them.
pub fn outgoing_mime(job: &Job, stored: &Bytes, identity: &Identity, hostname: &str) -> Rope {
    let mut strip = vec!["Bcc", CLASS_HEADER];
    strip.extend(SES_CONTROL_HEADERS);
    let mut head = Vec::new();
    // Neither is among the stripped fields: asking the stored message is asking the result.
    if header_values(stored, "Date").is_empty() {
        head.extend_from_slice(
            format!("Date: {}\r\n", rfc5322_date(job.id.created_ms())).as_bytes(),
        );
    }
    if header_values(stored, "Message-ID").is_empty() {
        // Stable across retries, so a retried message is recognisably the same one.
        head.extend_from_slice(format!("Message-ID: <{}@{}>\r\n", job.id, hostname).as_bytes());
    }
    let signature = Signature {
        text: identity.text_signature.as_deref(),
        html: identity.html_signature.as_deref(),
    };
    // The signature's edits do not depend on the fields we strip or add (they are not MIME
    // fields), so they are found in the stored message and put in place of what they replace.
    let edits = if signature.text.is_some() || signature.html.is_some() {
        signature_edits(stored, &signature)
    } else {
        Vec::new()
    };
    // A short stretch is copied rather than shared: it must not keep a large message alive
    // (the stored message whose only text part the signature rewrote, say).
    let stretch = |range: std::ops::Range<usize>| match range.len() {
        n if n < SHARE_FROM => Bytes::copy_from_slice(&stored[range]),
        _ => stored.slice(range),
    };
    let mut pieces = Vec::with_capacity(2 * edits.len() + 1);
    let mut pos = 0;
    for edit in edits {
        pieces.push(stretch(pos..edit.range.start));
        pieces.push(Bytes::from(edit.bytes));
        pos = edit.range.end;
    }
    pieces.push(stretch(pos..stored.len()));
    // Only the first non-empty piece starts the message, so only it holds the header fields
    // to strip (a rewritten first part holds them too).
    let mut pieces = pieces.into_iter().filter(|p| !p.is_empty());
    let first = pieces.next().unwrap_or_default();
    let end = header_end(&first);
    strip_headers_into(&first[..end], &strip, &mut head);
    let mut mime = Rope::new();
    mime.push(Bytes::from(head));
    mime.push(first.slice(end..));
    pieces.for_each(|p| mime.push(p));
    mime
}

/// The seven tags every message carries, so feedback finds its submission.
pub fn tags(job: &Job) -> Vec<(String, String)> {
    let domain = job.mail_from.rsplit_once('@').map_or("", |(_, d)| d);
    [
        ("tenant_id", job.tenant_id.as_str()),
        ("submission_id", &job.id.to_string()),
        ("identity_id", &job.identity_id),
        ("account_id", &job.account_id),
        ("user_id", &job.user_id),
        ("domain", domain),
        ("message_class", job.message_class.as_str()),
    ]
    .iter()
    .map(|(name, value)| (name.to_string(), tag_value(value)))
    .collect()
}

/// Maps any text into SES's tag alphabet (other characters become `_`).
pub fn tag_value(value: &str) -> String {
    let mut out: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(TAG_MAX)
        .collect();
    if out.is_empty() {
        out.push('_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::IdentityScope;
    use crate::domain::{MessageClass, QueueId};

    /// Made at the Unix epoch: the id's time part is 0.
    fn record() -> Job {
        Job {
            id: QueueId(0x1F),
            login: "alice".into(),
            tenant_id: "acme corp".into(),
            account_id: "a.1".into(),
            user_id: "alice@example.com".into(),
            identity_id: "id-1".into(),
            mail_from: "alice@mail.example.com".into(),
            recipients: vec!["b@example.net".into()],
            message_class: MessageClass::Bulk,
            size: 0,
        }
    }

    fn identity(text: Option<&str>) -> Identity {
        Identity {
            id: "id-1".into(),
            scope: IdentityScope::Address("alice@mail.example.com".into()),
            name: String::new(),
            text_signature: text.map(Into::into),
            html_signature: None,
            configuration_set: None,
            ses_tags: Vec::new(),
        }
    }

    #[test]
    fn tags_are_sanitised() {
        let tags = tags(&record());
        let get = |n: &str| tags.iter().find(|(k, _)| k == n).unwrap().1.clone();
        assert_eq!(tags.len(), 7);
        assert_eq!(get("tenant_id"), "acme_corp");
        assert_eq!(get("submission_id"), "0000000000000000000000000Z");
        assert_eq!(get("user_id"), "alice_example_com");
        assert_eq!(get("domain"), "mail_example_com");
        assert_eq!(get("message_class"), "bulk");
        assert_eq!(tag_value(""), "_");
        assert_eq!(tag_value(&"x".repeat(300)).len(), 256);
    }

    /// The outgoing message for `stored`, joined.
    fn outgoing(stored: &[u8], signature: Option<&str>) -> Vec<u8> {
        let stored = Bytes::copy_from_slice(stored);
        outgoing_mime(&record(), &stored, &identity(signature), "mx.test").to_vec()
    }

    #[test]
    fn adds_missing_date_and_message_id_strips_bcc() {
        let stored = b"Received: x\r\nFrom: alice@mail.example.com\r\nBcc: h@example.net\r\nX-Outbox-Class: bulk\r\nx-ses-configuration-set: theirs\r\nX-SES-MESSAGE-TAGS: campaign=x\r\nX-SES-SOURCE-ARN: arn:aws:ses:us-east-1:1:identity/other.example\r\n\r\nhi\r\n";
        let out = String::from_utf8(outgoing(stored, None)).unwrap();
        assert!(out.starts_with("Date: Thu, 1 Jan 1970 00:00:00 +0000\r\nMessage-ID: <0000000000000000000000000Z@mx.test>\r\n"), "{out}");
        assert!(
            !out.contains("Bcc") && !out.contains("X-Outbox-Class"),
            "{out}"
        );
        // Only the configured set and our tags apply (issue 14 item 13).
        assert!(!out.to_ascii_lowercase().contains("x-ses-"), "{out}");
        let kept =
            b"Date: Mon, 2 Jan 2006 15:04:05 +0000\r\nMessage-ID: <a@b>\r\nFrom: x\r\n\r\nhi\r\n";
        assert_eq!(outgoing(kept, None), kept);
    }

    #[test]
    fn signature_added_at_send_time() {
        let stored = b"Date: Mon, 2 Jan 2006 15:04:05 +0000\r\nMessage-ID: <a@b>\r\nFrom: x\r\nContent-Type: text/plain\r\n\r\nhi\r\n";
        let out = String::from_utf8(outgoing(stored, Some("-- \nAlice"))).unwrap();
        assert!(out.contains("hi\r\n") && out.contains("Alice"), "{out}");
    }
    /// The pipeline as it was before the one-pass build: strip, prepend, then sign a copy.
    fn in_steps(stored: &[u8], identity: &Identity) -> Vec<u8> {
        let mut strip = vec!["Bcc", CLASS_HEADER];
        strip.extend(SES_CONTROL_HEADERS);
        let stripped = crate::message::strip_headers(stored, &strip);
        let mut mime = Vec::new();
        if header_values(&stripped, "Date").is_empty() {
            mime.extend_from_slice(b"Date: Thu, 1 Jan 1970 00:00:00 +0000\r\n");
        }
        if header_values(&stripped, "Message-ID").is_empty() {
            mime.extend_from_slice(b"Message-ID: <0000000000000000000000000Z@mx.test>\r\n");
        }
        mime.extend_from_slice(&stripped);
        let signature = Signature {
            text: identity.text_signature.as_deref(),
            html: identity.html_signature.as_deref(),
        };
        crate::signature::inject_signature(&mime, &signature)
    }

    #[test]
    fn one_pass_gives_what_the_steps_gave() {
        let single = b"Received: x\r\nFrom: alice@mail.example.com\r\nBcc: h@example.net\r\nX-Outbox-Class: bulk\r\nContent-Type: text/plain\r\n\r\nhi\r\n.\r\n";
        let multi = b"Received: x\r\nFrom: alice@mail.example.com\r\nBcc: h@example.net,\r\n i@example.net\r\nDate: Mon, 2 Jan 2006 15:04:05 +0000\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\npreamble\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAAA\r\n--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>hi</p>\r\n--b--\r\n";
        let no_body = b"From: alice@mail.example.com\r\nBcc: x@example.net\r\n\r\n";
        for stored in [&single[..], &multi[..], &no_body[..]] {
            for sig in [None, Some("-- \nAlice")] {
                let out = outgoing(stored, sig);
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(&in_steps(stored, &identity(sig)))
                );
                assert!(!String::from_utf8_lossy(&out).contains("Bcc"));
            }
        }
        // The signature did go in (the comparison above is not between two no-ops).
        let signed = outgoing(multi, Some("-- \nAlice"));
        // (In multipart/mixed only the last body part is signed: the HTML one.)
        assert!(
            String::from_utf8_lossy(&signed).contains("Alice<br>")
                || String::from_utf8_lossy(&signed).contains("Alice</div>"),
            "{}",
            String::from_utf8_lossy(&signed)
        );
    }

    #[test]
    fn the_body_is_shared_with_the_stored_message_not_copied() {
        let attachment = "QUJD".repeat(50_000);
        let stored = Bytes::from(format!("From: a@example.com\r\nBcc: x@example.net\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n{attachment}\r\n--b--\r\n"));
        let within = |p: &[u8]| {
            let (start, end) = (
                stored.as_ptr() as usize,
                stored.as_ptr() as usize + stored.len(),
            );
            (start..end).contains(&(p.as_ptr() as usize))
        };
        for sig in [None, Some("-- \nAlice")] {
            let out = outgoing_mime(&record(), &stored, &identity(sig), "mx.test");
            let pieces: Vec<&[u8]> = out.pieces().collect();
            // The head: whole fields of our own; then the body from its empty line on.
            assert!(!within(pieces[0]) && pieces[0].ends_with(b"\r\n"));
            assert_eq!(crate::message::header_end(pieces[0]), pieces[0].len());
            assert!(pieces[1].starts_with(b"\r\n"), "{:?}", &pieces[1][..10]);
            let copied: usize = pieces[1..]
                .iter()
                .filter(|p| !within(p))
                .map(|p| p.len())
                .sum();
            assert!(
                copied < 1_000,
                "{copied} octets of the body were copied (signature {sig:?})"
            );
            assert_eq!(out.contains(b"Alice"), sig.is_some());
            assert_eq!(out.len(), out.to_vec().len());
        }
        // Large text and HTML alternatives the signature rewrites whole: nothing of the stored
        // message is kept, not even the few octets of boundaries between them.
        let lines = "hello\r\n".repeat(50_000);
        let text = Bytes::from(format!(
            "From: a@example.com\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n{lines}\r\n--b\r\nContent-Type: text/html\r\n\r\n<html><body>{lines}</body></html>\r\n--b--\r\n"
        ));
        let out = outgoing_mime(&record(), &text, &identity(Some("-- \nAlice")), "mx.test");
        assert!(out.contains(b"Alice"));
        let (start, end) = (text.as_ptr() as usize, text.as_ptr() as usize + text.len());
        assert!(
            out.pieces()
                .all(|p| !(start..end).contains(&(p.as_ptr() as usize))),
            "a piece still points into the stored message"
        );
    }
}
