//! Header-level edits of raw MIME, done on bytes so the body is never re-encoded.

/// mail-parser's full parse of a message we did not write. mail-parser 0.11.9 panics on some
/// broken multipart nesting ("Invalid part ID, could not find multipart", found by the
/// `signature` fuzz target with a multipart inside message/rfc822 inside multipart): at send
/// time that panic would end a sender task, on every retry. Here it is a message that does not
/// parse (the panic hook still prints it; it is logged once more with context).
pub fn parse_mime(mime: &[u8]) -> Option<mail_parser::Message<'_>> {
    let parse = || mail_parser::MessageParser::default().parse(mime);
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(parse)) {
        Ok(parsed) => parsed,
        Err(_) => {
            tracing::warn!(
                bytes = mime.len(),
                "the MIME parser failed on this message; treated as unreadable"
            );
            None
        }
    }
}

/// Where the body starts: just past the first empty line (or the end, for a header-only
/// message).
pub fn body_offset(mime: &[u8]) -> usize {
    match header_end(mime) {
        end if end < mime.len() => end + 2,
        end => end,
    }
}

/// Where the header fields end: at the empty line before the body (the line is left out), or
/// the end, for a header-only message.
pub fn header_end(mime: &[u8]) -> usize {
    if mime.starts_with(b"\r\n") {
        return 0;
    }
    memfind(mime, b"\r\n\r\n").map_or(mime.len(), |i| i + 2)
}

fn memfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The header fields as `(name, whole field including folded lines and CRLF)`.
pub fn header_fields(mime: &[u8]) -> Vec<(&[u8], &[u8])> {
    let header = &mime[..body_offset(mime)];
    let mut fields = Vec::new();
    let mut start = None;
    let mut pos = 0;
    while pos < header.len() {
        let end = memfind(&header[pos..], b"\r\n").map_or(header.len(), |i| pos + i + 2);
        let line = &header[pos..end];
        if line == b"\r\n" {
            break; // the empty line before the body
        }
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !continuation {
            if let Some(s) = start {
                fields.push(field(&header[s..pos]));
            }
            start = Some(pos);
        }
        pos = end;
    }
    if let Some(s) = start {
        fields.push(field(&header[s..pos]));
    }
    fields
}

fn field(raw: &[u8]) -> (&[u8], &[u8]) {
    let name = raw
        .iter()
        .position(|b| *b == b':')
        .map_or(&raw[..0], |i| &raw[..i]);
    (trim(name), raw)
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &s[start..end]
}

/// Unfolded, trimmed values of every field named `name` (case-insensitive).
pub fn header_values(mime: &[u8], name: &str) -> Vec<String> {
    header_fields(mime)
        .into_iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(n, raw)| {
            let value = &raw[n.len()..];
            let value = value
                .iter()
                .position(|b| *b == b':')
                .map_or(value, |i| &value[i + 1..]);
            let unfolded: Vec<u8> = value
                .iter()
                .copied()
                .filter(|b| *b != b'\r' && *b != b'\n')
                .collect();
            String::from_utf8_lossy(trim(&unfolded)).into_owned()
        })
        .collect()
}

/// The message without the named header fields (folded continuation lines go with them).
pub fn strip_headers(mime: &[u8], names: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(mime.len());
    strip_headers_into(mime, names, &mut out);
    out
}

/// [`strip_headers`], appending to `out` (no copy of its own).
pub fn strip_headers_into(mime: &[u8], names: &[&str], out: &mut Vec<u8>) {
    let mut kept_from = 0;
    for (name, raw) in header_fields(mime) {
        if names
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
        {
            let offset = raw.as_ptr() as usize - mime.as_ptr() as usize;
            out.extend_from_slice(&mime[kept_from..offset]);
            kept_from = offset + raw.len();
        }
    }
    out.extend_from_slice(&mime[kept_from..]);
}

/// Whether a CR appears that does not start a CRLF (RFC 5322 §2.3: CR only in CRLF).
pub fn has_lone_cr(mime: &[u8]) -> bool {
    mime.iter()
        .enumerate()
        .any(|(i, &b)| b == b'\r' && mime.get(i + 1) != Some(&b'\n'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"From: a@example.com\r\nBcc: x@example.net,\r\n y@example.net\r\nSubject: hi\r\nbcc: z@example.net\r\nX-Outbox-Class: bulk\r\n\r\nBcc: not a header\r\n";

    #[test]
    fn strips_folded_fields_case_insensitively() {
        let out = strip_headers(MSG, &["Bcc", "X-Outbox-Class"]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "From: a@example.com\r\nSubject: hi\r\n\r\nBcc: not a header\r\n"
        );
    }

    #[test]
    fn reads_values() {
        assert_eq!(
            header_values(MSG, "bcc"),
            vec!["x@example.net, y@example.net", "z@example.net"]
        );
        assert_eq!(header_values(MSG, "X-OUTBOX-CLASS"), vec!["bulk"]);
        assert!(header_values(MSG, "To").is_empty());
    }

    #[test]
    fn header_only_and_empty_messages() {
        let m = b"Subject: x\r\nBcc: y\r\n";
        assert_eq!(strip_headers(m, &["bcc"]), b"Subject: x\r\n");
        assert_eq!(header_values(m, "subject"), vec!["x"]);
        assert_eq!(strip_headers(b"", &["bcc"]), b"");
        assert_eq!(strip_headers(b"\r\nbody", &["bcc"]), b"\r\nbody");
        let m = b"Bcc: y\r\n\r\n";
        assert_eq!(strip_headers(m, &["bcc"]), b"\r\n");
    }
}

#[cfg(test)]
mod parse_tests {
    /// The `signature` fuzz target's finding: a multipart in a message/rfc822 in a multipart,
    /// with broken headers, makes mail-parser 0.11.9 panic. `parse_mime` says "unreadable".
    #[test]
    fn a_message_that_panics_mail_parser_is_unreadable() {
        let mime: &[u8] =
            &crate::fuzzing::signature_regression("multipart-in-rfc822-panics-mail-parser");
        let raw = std::panic::catch_unwind(|| mail_parser::MessageParser::default().parse(mime));
        assert!(
            raw.is_err(),
            "mail-parser no longer panics here: parse_mime's guard may go"
        );
        assert!(super::parse_mime(mime).is_none());
        // And signing leaves it as it is, rather than ending the sender task.
        let sig = crate::signature::Signature {
            text: Some("-- \nA"),
            html: None,
        };
        assert_eq!(crate::signature::inject_signature(mime, &sig), mime);
    }
}
