//! Signature injection: adds the configured text and/or HTML signature to the body parts of a
//! raw MIME message.
//!
//! It runs at send time on the copy handed to the transport, never on the stored (spooled) copy:
//! the spool keeps exactly what the client submitted, so every attempt (retries included) signs
//! the pristine message exactly once, a changed signature applies to the next attempt, and a
//! failure here can never damage the stored message.
//!
//! Only the signed parts change: their body, their line breaks (now CRLF), the `charset` of their
//! Content-Type and their Content-Transfer-Encoding when needed. Everything else (boundaries,
//! preamble and epilogue, other headers, attachments) is copied byte for byte. Conventions:
//!
//! - Parts: leaf `text/plain` / `text/html` (no Content-Type = `text/plain`) that are not
//!   attachments (disposition `attachment`, or a `filename` / Content-Type `name` parameter).
//!   Every alternative of a `multipart/alternative` is signed; in `multipart/related` only the
//!   root (first) part; in `mixed` and other multiparts only the last child holding a body, so
//!   `mixed(text, image, text)` is signed once, at its end. Never touched: attached `message/*`
//!   (forwarded mail), `multipart/signed` / `encrypted`, and text holding inline PGP.
//! - Signatures: used verbatim (no `-- ` added; trailing line breaks dropped, CRLF). With only a
//!   text signature, HTML parts get it escaped in a `<div>`, lines joined by `<br>`; with only
//!   an HTML signature, plain parts get nothing (tag-stripped HTML is too lossy to be better).
//! - Placement: text goes on a new line after the existing text (a final line break is kept);
//!   HTML goes just before the last `</body>` (any case), else it is appended like text.
//! - Encoding: the body is decoded (transfer encoding, then charset to UTF-8, CRLF line breaks),
//!   signed and re-encoded: base64 stays base64 (76-char lines), quoted-printable stays QP (lines
//!   ≤ 76), 8bit/binary stay; 7bit stays unless the result is not ASCII; a non-ASCII 7bit result
//!   or a line over 998 octets becomes QP. `charset=utf-8` is set unless the part was UTF-8, or
//!   US-ASCII with an ASCII result; other parameters are kept. `format=flowed` is kept and the
//!   signature's lines made hard (no trailing spaces but `-- `, space-stuffed). A single-part
//!   message whose MIME headers change gets `MIME-Version: 1.0` if it lacked one. An HTML
//!   `<meta charset>` is left as is (the MIME charset takes precedence).
//! - Left unchanged: unknown transfer encodings or charsets, invalid base64/QP, non-UTF-8 bytes
//!   under a UTF-8/US-ASCII/absent charset, parts mail-parser reports as broken, and parts that
//!   already hold the signature: RFC 8621 §6 says the *client* should insert the identity's
//!   `textSignature`/`htmlSignature`, and a client that did (or an SMTP client that pasted it)
//!   must not get it twice. "Holds" ignores whitespace and, for HTML, tags and the common
//!   entities, so a signature re-wrapped or put in a `<div class="signature">` still counts.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};
use mail_parser::decoders::charsets::map::charset_decoder;
use mail_parser::{Attribute, Message, MessagePart, MimeHeaders, PartType};

/// The signature to add; `None` (or blank) means "nothing of that kind".
pub struct Signature<'a> {
    /// Plain-text signature, e.g. `"-- \nAlice\nExample Corp"`.
    pub text: Option<&'a str>,
    /// HTML fragment, e.g. `"<p>-- <br>Alice</p>"`.
    pub html: Option<&'a str>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Plain,
    Html,
}

#[derive(Clone, Copy, PartialEq)]
enum Cte {
    SevenBit,
    EightBit, // also "binary", whose label is then kept
    QuotedPrintable,
    Base64,
}

/// Multiparts nested deeper than this are not searched for body parts.
const MAX_DEPTH: usize = 32;

/// Returns the message with the signature added; returns the input unchanged (a copy) when
/// there is nothing to add or the message cannot be parsed.
pub fn inject_signature(mime: &[u8], signature: &Signature<'_>) -> Vec<u8> {
    let edits = signature_edits(mime, signature);
    let growth: usize = edits.iter().map(|e| e.bytes.len()).sum();
    let mut out = Vec::with_capacity(mime.len() + growth);
    let mut pos = 0;
    for edit in edits {
        out.extend_from_slice(&mime[pos..edit.range.start]);
        out.extend_from_slice(&edit.bytes);
        pos = edit.range.end;
    }
    out.extend_from_slice(&mime[pos..]);
    out
}

/// One replaced stretch of the message: the octets in `range` give way to `bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub range: std::ops::Range<usize>,
    pub bytes: Vec<u8>,
}

/// The signed parts as replacements of the parts they were (whole parts, headers included),
/// in order and not overlapping; empty when there is nothing to add or the message cannot be
/// parsed. Lets the caller build the outgoing message in one pass, without a signed copy.
pub fn signature_edits(mime: &[u8], signature: &Signature<'_>) -> Vec<Edit> {
    let clean = |s: Option<&str>| {
        s.filter(|s| !s.trim().is_empty())
            .map(|s| crlf(s.trim_end_matches(['\r', '\n'])))
    };
    let text = clean(signature.text);
    let html = clean(signature.html).or_else(|| text.as_deref().map(text_to_html));
    if text.is_none() && html.is_none() {
        return Vec::new();
    }
    // A lone CR is left alone: every way in refuses it (issue 15 item 5), and the edits, which
    // write CRLF, would turn it into a line break — one before a header field ended the header
    // block early (found by the `signature` fuzz target). LF-only text is fine: it is read as
    // lines and the rewritten parts get CRLF.
    if crate::message::has_lone_cr(mime) {
        return Vec::new();
    }
    // A "message" without a single header field is not one we can safely edit.
    let parsed = crate::message::parse_mime(mime);
    let Some(message) = parsed.filter(|m| m.parts.first().is_some_and(|p| !p.headers.is_empty()))
    else {
        return Vec::new();
    };
    if unterminated_quote(&message) {
        return Vec::new();
    }
    let mut targets = Vec::new();
    bodies(&message, 0, 0, &mut targets);
    targets.sort_by_key(|(id, _)| message.parts[*id].offset_header);

    let mut edits = Vec::new();
    let mut pos = 0;
    for (id, kind) in targets {
        let part = &message.parts[id];
        let sig = match kind {
            Kind::Plain => text.as_deref(),
            Kind::Html => html.as_deref(),
        };
        let (start, end) = (part.offset_header as usize, part.offset_end as usize);
        if pos > start || start > end || end > mime.len() {
            continue;
        }
        if let Some(bytes) = sig.and_then(|sig| rewrite(mime, part, kind, sig, id == 0)) {
            edits.push(Edit {
                range: start..end,
                bytes,
            });
            pos = end;
        }
    }
    edits
}

/// Pushes the body parts under part `id` that get a signature; returns whether it found any.
fn bodies(msg: &Message<'_>, id: usize, depth: usize, out: &mut Vec<(usize, Kind)>) -> bool {
    let Some(part) = msg.parts.get(id) else {
        return false;
    };
    match &part.body {
        PartType::Text(_) | PartType::Html(_) => {
            let header = msg
                .raw_message()
                .get(part.offset_header as usize..part.offset_body as usize)
                .unwrap_or_default();
            let kind = body_kind(part).filter(|_| !names_a_file(header));
            out.extend(kind.map(|kind| (id, kind)));
            kind.is_some()
        }
        PartType::Multipart(children) if depth < MAX_DEPTH => {
            // Part ids grow in document order; anything else would be a parser bug, not a loop.
            let kids = children.iter().map(|&c| c as usize).filter(|&c| c > id);
            let mut walk = |c: usize| bodies(msg, c, depth + 1, out);
            let subtype = part.content_type().and_then(|ct| ct.subtype());
            match subtype.unwrap_or("mixed") {
                "alternative" => kids.fold(false, |found, c| walk(c) | found),
                "related" => kids.take(1).any(walk),
                "signed" | "encrypted" => false,
                _ => kids.rev().any(walk),
            }
        }
        _ => false,
    }
}

/// Whether a `Content-Type` or `Content-Disposition` field of any part, as written, opens a
/// quoted string it does not close. mail-parser reads such a parameter on across lines — a
/// boundary, across the message's own structure — so an edit anywhere after it can change what
/// the message is read as: an attachment was no longer one after signing (found by the
/// `signature` fuzz target with an unterminated `boundary="`). Such a message is not edited.
fn unterminated_quote(message: &Message<'_>) -> bool {
    let raw = message.raw_message();
    message.parts.iter().any(|part| {
        let header = raw
            .get(part.offset_header as usize..part.offset_body as usize)
            .unwrap_or_default();
        crate::message::header_fields(header)
            .iter()
            .any(|(name, field)| {
                (name.eq_ignore_ascii_case(b"content-type")
                    || name.eq_ignore_ascii_case(b"content-disposition"))
                    && !quotes_closed(field)
            })
    })
}

/// Whether every quoted string in `field` ends (a backslash escapes the next octet inside one).
fn quotes_closed(field: &[u8]) -> bool {
    let (mut inside, mut escaped) = (false, false);
    for &b in field {
        match b {
            _ if escaped => escaped = false,
            b'\\' if inside => escaped = true,
            b'"' => inside = !inside,
            _ => {}
        }
    }
    !inside
}

/// Whether a part's header, as written, has a `name` or `filename` parameter (RFC 2231 forms
/// too), however malformed: a parameter mail-parser could not read (an unterminated quoted
/// `name="`, found by the `signature` fuzz target) still makes the part a file to some
/// reader, so no signature goes into it.
fn names_a_file(header: &[u8]) -> bool {
    let lower = header.to_ascii_lowercase();
    lower.windows(5).enumerate().any(|(i, w)| {
        w.starts_with(b"name")
            && matches!(w[4], b'=' | b'*' | b' ' | b'\t')
            && i.checked_sub(1)
                .is_none_or(|p| matches!(lower[p], b';' | b' ' | b'\t' | b'\n' | b'e'))
    })
}

/// Whether a leaf text part is a plain or HTML body (`None`: attachment or another text type).
fn body_kind(part: &MessagePart<'_>) -> Option<Kind> {
    // `name` / `filename`, or their RFC 2231 forms (`name*`, `name*0*`, ...).
    let names_file = |attrs: Option<&[Attribute<'_>]>, param: &str| {
        let is_param = |a: &Attribute<'_>| a.name.split('*').next() == Some(param);
        attrs.is_some_and(|a| a.iter().any(is_param))
    };
    if part.is_encoding_problem {
        return None;
    }
    if let Some(d) = part.content_disposition() {
        if d.is_attachment() || names_file(d.attributes(), "filename") {
            return None;
        }
    }
    let Some(ct) = part.content_type() else {
        return Some(Kind::Plain);
    };
    if names_file(ct.attributes(), "name") || !ct.ctype().eq_ignore_ascii_case("text") {
        return None;
    }
    match ct.subtype().map(str::to_ascii_lowercase).as_deref() {
        Some("plain") => Some(Kind::Plain),
        Some("html") => Some(Kind::Html),
        _ => None,
    }
}

/// A Content-Type parameter, trimmed and lowercased.
fn param(part: &MessagePart<'_>, name: &str) -> Option<String> {
    let value = part.content_type()?.attribute(name)?;
    Some(value.trim().to_ascii_lowercase())
}

/// The rewritten bytes of `part` (header block and body), or `None` to leave it unchanged.
fn rewrite(
    raw: &[u8],
    part: &MessagePart<'_>,
    kind: Kind,
    sig: &str,
    top: bool,
) -> Option<Vec<u8>> {
    let header = raw.get(part.offset_header as usize..part.offset_body as usize)?;
    let body = raw.get(part.offset_body as usize..part.offset_end as usize)?;
    let cte = part.content_transfer_encoding().unwrap_or("7bit");
    let cte = match cte.trim().to_ascii_lowercase().as_str() {
        "7bit" => Cte::SevenBit,
        "8bit" | "binary" => Cte::EightBit,
        "quoted-printable" => Cte::QuotedPrintable,
        "base64" => Cte::Base64,
        _ => return None,
    };
    let charset = param(part, "charset");
    let bytes = match cte {
        Cte::QuotedPrintable => qp_decode(body)?,
        Cte::Base64 => b64_decode(body)?,
        _ => body.to_vec(),
    };
    // (A large part is in memory a few times over while it is rewritten: each step below
    // drops what it no longer needs.)
    let text = crlf_owned(decode_charset(bytes, charset.as_deref())?);
    if text.contains("-----BEGIN PGP") || already_signed(&text, sig, kind) {
        return None;
    }
    let new_text = match kind {
        Kind::Plain if param(part, "format").as_deref() == Some("flowed") => {
            append(text, &flowed_lines(sig))
        }
        Kind::Plain => append(text, sig),
        Kind::Html => insert_html(&text, sig),
    };

    let utf8_label = matches!(charset.as_deref(), Some("utf-8" | "utf8"));
    let ascii_label = matches!(charset.as_deref(), None | Some("us-ascii" | "ascii"));
    let relabel = !(utf8_label || ascii_label && new_text.is_ascii());
    let long_line = new_text.split("\r\n").any(|l| l.len() > 998);
    let new_cte = match cte {
        Cte::SevenBit if long_line || !new_text.is_ascii() => Cte::QuotedPrintable,
        Cte::EightBit if long_line => Cte::QuotedPrintable,
        same => same,
    };
    let mut out = rewrite_headers(header, relabel, new_cte != cte, top);
    match new_cte {
        Cte::QuotedPrintable => out.extend_from_slice(qp_encode(&new_text).as_bytes()),
        Cte::Base64 => out.extend(b64_encode(new_text.as_bytes(), body.ends_with(b"\n")).bytes()),
        _ => out.extend_from_slice(new_text.as_bytes()),
    }
    Some(out)
}

/// Transfer-decoded bytes → UTF-8 text; `None` for an unknown charset or invalid UTF-8.
fn decode_charset(bytes: Vec<u8>, label: Option<&str>) -> Option<String> {
    match label {
        // 8-bit bytes under a US-ASCII label are taken as (mislabelled) UTF-8 when valid.
        None | Some("" | "utf-8" | "utf8" | "us-ascii" | "ascii") => String::from_utf8(bytes).ok(),
        Some(label) => charset_decoder(label.as_bytes()).map(|decode| decode(&bytes)),
    }
}

/// `sig` on a new line after `text`; keeps a final line break if `text` had one.
/// Whether `body` already holds `sig` (see the module notes): compared without whitespace, and
/// for HTML by visible text, so formatting a client added does not hide it.
fn already_signed(body: &str, sig: &str, kind: Kind) -> bool {
    fn visible(s: &str, kind: Kind) -> std::borrow::Cow<'_, str> {
        match kind {
            Kind::Plain => s.into(),
            Kind::Html => visible_text(s).into(),
        }
    }
    let squeezed = |s: &str| {
        s.chars()
            .filter(|c| !c.is_whitespace())
            .collect::<Vec<char>>()
    };
    let sig = squeezed(&visible(sig, kind));
    // A signature of a few characters ("--") says nothing about who wrote it. The body is
    // searched as it is read, not copied squeezed: it may be most of a large message.
    let body = visible(body, kind);
    sig.len() >= 4 && contains_chars(body.chars().filter(|c| !c.is_whitespace()), &sig)
}

/// Whether `needle` occurs in `haystack` (Knuth–Morris–Pratt over chars: one pass, no copy).
fn contains_chars(haystack: impl Iterator<Item = char>, needle: &[char]) -> bool {
    if needle.is_empty() {
        return true;
    }
    // fail[i]: the length of the longest proper prefix of needle[..=i] that is also its suffix.
    let mut fail = vec![0; needle.len()];
    let mut k = 0;
    for i in 1..needle.len() {
        while k > 0 && needle[i] != needle[k] {
            k = fail[k - 1];
        }
        if needle[i] == needle[k] {
            k += 1;
        }
        fail[i] = k;
    }
    let mut matched = 0;
    for c in haystack {
        while matched > 0 && c != needle[matched] {
            matched = fail[matched - 1];
        }
        if c == needle[matched] {
            matched += 1;
        }
        if matched == needle.len() {
            return true;
        }
    }
    false
}

/// HTML without its tags, with the entities a signature commonly uses decoded.
fn visible_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// `text` with `sig` after it on a new line (in `text`'s own buffer).
fn append(mut text: String, sig: &str) -> String {
    match text.as_str() {
        "" => text.push_str(sig),
        _ if text.ends_with("\r\n") => {
            text.push_str(sig);
            text.push_str("\r\n");
        }
        _ => {
            text.push_str("\r\n");
            text.push_str(sig);
        }
    }
    text
}

fn insert_html(html: &str, sig: &str) -> String {
    // ASCII lowercasing keeps byte offsets, and "</body>" starts on a char boundary.
    match html.to_ascii_lowercase().rfind("</body>") {
        Some(i) => format!("{}{sig}\r\n{}", &html[..i], &html[i..]),
        None => append(html.to_string(), sig),
    }
}

/// The text signature as an HTML fragment: escaped, lines joined by `<br>`.
fn text_to_html(text: &str) -> String {
    let escape = |line: &str| {
        let line = line.replace('&', "&amp;").replace('<', "&lt;");
        line.replace('>', "&gt;").replace('"', "&quot;")
    };
    let lines: Vec<String> = text.split("\r\n").map(escape).collect();
    format!("<div>{}</div>", lines.join("<br>\r\n"))
}

/// Signature lines made hard lines for `format=flowed` (RFC 3676): no trailing space except in
/// the `-- ` separator, space-stuffed where needed.
fn flowed_lines(sig: &str) -> String {
    let line = |l: &str| {
        let l = if l == "-- " {
            l
        } else {
            l.trim_end_matches(' ')
        };
        let stuff = l.starts_with([' ', '>']) || l.starts_with("From ");
        format!("{}{l}", if stuff { " " } else { "" })
    };
    sig.split("\r\n").map(line).collect::<Vec<_>>().join("\r\n")
}

/// The part's header block, Content-Type and Content-Transfer-Encoding edited as needed, CRLF.
fn rewrite_headers(block: &[u8], relabel: bool, to_qp: bool, top: bool) -> Vec<u8> {
    const QP_FIELD: &[u8] = b"Content-Transfer-Encoding: quoted-printable\r\n";
    let (fields, tail) = split_fields(block);
    let (mut saw_ct, mut saw_cte, mut saw_version) = (false, false, false);
    let mut out = Vec::with_capacity(block.len() + 64);
    for field in fields {
        let colon = field.iter().position(|&b| b == b':').unwrap_or(0);
        let name = field[..colon].trim_ascii().to_ascii_lowercase();
        match name.as_slice() {
            b"content-type" if relabel => out.extend(set_charset_utf8(field)),
            b"content-transfer-encoding" if to_qp => out.extend_from_slice(QP_FIELD),
            _ => out.extend_from_slice(field),
        }
        saw_ct |= name == b"content-type";
        saw_cte |= name == b"content-transfer-encoding";
        saw_version |= name == b"mime-version";
        if !out.ends_with(b"\n") {
            out.extend_from_slice(b"\r\n");
        }
    }
    if relabel && !saw_ct {
        out.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\n");
    }
    if to_qp && !saw_cte {
        out.extend_from_slice(QP_FIELD);
    }
    if top && !saw_version && (relabel || to_qp) {
        out.extend_from_slice(b"MIME-Version: 1.0\r\n");
    }
    out.extend_from_slice(if tail.is_empty() { b"\r\n" } else { tail });
    crlf_bytes(&out)
}

/// The header fields (each with its folded lines and line break) and what follows them (the
/// empty line).
fn split_fields(block: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let (mut fields, mut start, mut pos) = (Vec::new(), 0, 0);
    for line in block.split_inclusive(|&b| b == b'\n') {
        let blank = line == b"\r\n" || line == b"\n";
        if pos > start && (blank || !line.starts_with(b" ") && !line.starts_with(b"\t")) {
            fields.push(&block[start..pos]);
            start = pos;
        }
        if blank {
            return (fields, &block[pos..]);
        }
        pos += line.len();
    }
    if pos > start {
        fields.push(&block[start..pos]);
    }
    (fields, &[])
}

/// A Content-Type field with its charset parameter set to (or given) `utf-8`.
fn set_charset_utf8(field: &[u8]) -> Vec<u8> {
    let Some(colon) = field.iter().position(|&b| b == b':') else {
        return field.to_vec();
    };
    let mut out = field[..=colon].to_vec();
    let mut replaced = false;
    for (i, seg) in split_params(&field[colon + 1..]).into_iter().enumerate() {
        if i > 0 {
            out.push(b';');
        }
        match seg.iter().position(|&b| b == b'=') {
            Some(eq) if i > 0 && seg[..eq].trim_ascii().eq_ignore_ascii_case(b"charset") => {
                out.extend_from_slice(&seg[..=eq]);
                out.extend_from_slice(b"utf-8");
                out.extend_from_slice(&seg[seg.trim_ascii_end().len()..]);
                replaced = true;
            }
            _ => out.extend_from_slice(seg),
        }
    }
    if !replaced {
        let eol = out.split_off(out.trim_ascii_end().len());
        let line_len = out.len() - out.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
        if out.last() != Some(&b';') {
            out.push(b';');
        }
        if line_len + 16 > 78 {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b" charset=utf-8");
        out.extend_from_slice(if eol.is_empty() { b"\r\n" } else { &eol });
    }
    out
}

/// Splits a header value at each `;` outside a quoted string.
fn split_params(value: &[u8]) -> Vec<&[u8]> {
    let (mut segs, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, &b) in value.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b';' if !quoted => {
                segs.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    segs.push(&value[start..]);
    segs
}

/// Line breaks (CRLF, bare LF, bare CR) normalised to CRLF.
fn crlf_bytes(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 32);
    let mut iter = input.iter().peekable();
    while let Some(&b) = iter.next() {
        match b {
            b'\r' | b'\n' => {
                if b == b'\r' {
                    iter.next_if_eq(&&b'\n');
                }
                out.extend_from_slice(b"\r\n");
            }
            _ => out.push(b),
        }
    }
    out
}

fn crlf(text: &str) -> String {
    // Only ASCII CR/LF bytes are touched, so valid UTF-8 stays valid.
    String::from_utf8(crlf_bytes(text.as_bytes()))
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// [`crlf`] of an owned text, which is returned as it is when its line breaks are all CRLF
/// already (a part read from a stored message): no copy of a large part.
fn crlf_owned(text: String) -> String {
    let bytes = text.as_bytes();
    let all_crlf = bytes.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => bytes.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && bytes[i - 1] == b'\r',
        _ => true,
    });
    if all_crlf {
        text
    } else {
        crlf(&text)
    }
}

/// Strict quoted-printable decoding (RFC 2045 §6.7); `None` on a malformed `=` sequence.
fn qp_decode(body: &[u8]) -> Option<Vec<u8>> {
    let hex = |b: &u8| (*b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(body.len());
    let mut lines = body.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        // Trailing whitespace (and the CR of CRLF) was added in transport: drop it.
        let line = line.trim_ascii_end();
        let (line, soft) = match line.strip_suffix(b"=") {
            Some(rest) => (rest, true),
            None => (line, false),
        };
        let mut i = 0;
        while i < line.len() {
            if line[i] == b'=' {
                out.push(hex(line.get(i + 1)?)? << 4 | hex(line.get(i + 2)?)?);
                i += 3;
            } else {
                out.push(line[i]);
                i += 1;
            }
        }
        if !soft && lines.peek().is_some() {
            out.extend_from_slice(b"\r\n");
        }
    }
    Some(out)
}

/// Quoted-printable encoding of CRLF text: CRLF stays a hard break, lines ≤ 76 chars.
fn qp_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3 / 2);
    for (n, line) in text.split("\r\n").enumerate() {
        if n > 0 {
            out.push_str("\r\n");
        }
        let (bytes, mut col) = (line.as_bytes(), 0);
        for (i, &b) in bytes.iter().enumerate() {
            let last = i + 1 == bytes.len();
            let literal = matches!(b, b'!'..=b'<' | b'>'..=b'~') || b" \t".contains(&b) && !last;
            let width = if literal { 1 } else { 3 };
            // Keep room for a soft break's "=" unless this is the line's last char.
            if col + width > if last { 76 } else { 75 } {
                out.push_str("=\r\n");
                col = 0;
            }
            match literal {
                true => out.push(b as char),
                false => out.push_str(&format!("={b:02X}")),
            }
            col += width;
        }
    }
    out
}

fn b64_decode(body: &[u8]) -> Option<Vec<u8>> {
    let config = GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true);
    let mut compact = body.to_vec();
    compact.retain(|b| !b.is_ascii_whitespace());
    GeneralPurpose::new(&alphabet::STANDARD, config)
        .decode(compact)
        .ok()
}

/// Base64 in 76-char CRLF lines; a final CRLF when the original body ended with a line break.
fn b64_encode(bytes: &[u8], final_break: bool) -> String {
    let mut out = String::new();
    for (i, c) in STANDARD.encode(bytes).chars().enumerate() {
        if i > 0 && i % 76 == 0 {
            out.push_str("\r\n");
        }
        out.push(c);
    }
    if final_break {
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod tests;
