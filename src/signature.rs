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
//!   under a UTF-8/US-ASCII/absent charset, parts mail-parser reports as broken.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};
use mail_parser::decoders::charsets::map::charset_decoder;
use mail_parser::{Attribute, Message, MessageParser, MessagePart, MimeHeaders, PartType};

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
    let clean = |s: Option<&str>| {
        s.filter(|s| !s.trim().is_empty())
            .map(|s| crlf(s.trim_end_matches(['\r', '\n'])))
    };
    let text = clean(signature.text);
    let html = clean(signature.html).or_else(|| text.as_deref().map(text_to_html));
    if text.is_none() && html.is_none() {
        return mime.to_vec();
    }
    // A "message" without a single header field is not one we can safely edit.
    let parsed = MessageParser::default().parse(mime);
    let Some(message) = parsed.filter(|m| m.parts.first().is_some_and(|p| !p.headers.is_empty()))
    else {
        return mime.to_vec();
    };
    let mut targets = Vec::new();
    bodies(&message, 0, 0, &mut targets);
    targets.sort_by_key(|(id, _)| message.parts[*id].offset_header);

    let mut out = Vec::with_capacity(mime.len() + 1024);
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
        if let Some(new_part) = sig.and_then(|sig| rewrite(mime, part, kind, sig, id == 0)) {
            out.extend_from_slice(&mime[pos..start]);
            out.extend_from_slice(&new_part);
            pos = end;
        }
    }
    out.extend_from_slice(&mime[pos..]);
    out
}

/// Pushes the body parts under part `id` that get a signature; returns whether it found any.
fn bodies(msg: &Message<'_>, id: usize, depth: usize, out: &mut Vec<(usize, Kind)>) -> bool {
    let Some(part) = msg.parts.get(id) else {
        return false;
    };
    match &part.body {
        PartType::Text(_) | PartType::Html(_) => {
            let kind = body_kind(part);
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
    let text = crlf(&decode_charset(bytes, charset.as_deref())?);
    if text.contains("-----BEGIN PGP") {
        return None;
    }
    let new_text = match kind {
        Kind::Plain if param(part, "format").as_deref() == Some("flowed") => {
            append(&text, &flowed_lines(sig))
        }
        Kind::Plain => append(&text, sig),
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
fn append(text: &str, sig: &str) -> String {
    match text {
        "" => sig.to_string(),
        _ if text.ends_with("\r\n") => format!("{text}{sig}\r\n"),
        _ => format!("{text}\r\n{sig}"),
    }
}

fn insert_html(html: &str, sig: &str) -> String {
    // ASCII lowercasing keeps byte offsets, and "</body>" starts on a char boundary.
    match html.to_ascii_lowercase().rfind("</body>") {
        Some(i) => format!("{}{sig}\r\n{}", &html[..i], &html[i..]),
        None => append(html, sig),
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
    String::from_utf8_lossy(&crlf_bytes(text.as_bytes())).into_owned()
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
mod tests {
    use super::*;

    const SIG: Signature<'static> = Signature {
        text: Some("-- \nAlice\nExample Corp"),
        html: Some("<p>-- <br>Alice</p>"),
    };
    const TEXT_ONLY: Signature<'static> = Signature {
        text: SIG.text,
        html: None,
    };
    const TSIG: &str = "-- \r\nAlice\r\nExample Corp";
    const HSIG: &str = "<p>-- <br>Alice</p>";

    // Fixtures are written with "\n" and sent with CRLF (see `m`), about one MIME part per line.
    const ALTERNATIVE: &str = "From: a@example.com\nMIME-Version: 1.0\n\
        Content-Type: multipart/alternative; boundary=\"alt\"\n\n\
        --alt\nContent-Type: text/plain; charset=utf-8\n\nHi there\n\
        --alt\nContent-Type: text/html; charset=utf-8\n\n\
          <html><body><p>Hi there</p></body></html>\n\
        --alt--\n";
    const MIXED: &str = "Subject: mixed\nContent-Type: multipart/mixed; boundary=\"mix\"\n\n\
        preamble\n--mix\nContent-Type: text/plain\n\nBody text\n\
        --mix\nContent-Type: text/plain; name=\"notes.txt\"\n\
          Content-Disposition: attachment; filename=\"notes.txt\"\n\nattachment text\n\
        --mix\nContent-Type: application/pdf; name=\"doc.pdf\"\n\
          Content-Disposition: attachment; filename=\"doc.pdf\"\n\
          Content-Transfer-Encoding: base64\n\nJVBERi0xLjQK\n\
        --mix--\nepilogue\n";
    const NESTED: &str = "Subject: nested\nContent-Type: multipart/mixed; boundary=\"m\"\n\n\
        --m\nContent-Type: multipart/alternative; boundary=\"a\"\n\n\
        --a\nContent-Type: text/plain; charset=iso-8859-1\n\
          Content-Transfer-Encoding: quoted-printable\n\nOl=E1\n\
        --a\nContent-Type: multipart/related; boundary=\"r\"\n\n\
        --r\nContent-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: base64\n\n\
          PGh0bWw+PGJvZHk+PHA+T2zDoTwvcD48L2JvZHk+PC9odG1sPg==\n\
        --r\nContent-Type: image/png\nContent-ID: <img1>\n\
          Content-Transfer-Encoding: base64\n\niVBORw0KGgo=\n\
        --r--\n--a--\n\
        --m\nContent-Type: text/plain; name=\"a.txt\"\n\
          Content-Disposition: attachment\n\nattached\n\
        --m--\n";
    const FORWARD: &str = "Subject: fwd\nContent-Type: multipart/mixed; boundary=\"f\"\n\n\
        --f\nContent-Type: text/plain\n\nSee below\n\
        --f\nContent-Type: message/rfc822\n\n\
          Subject: inner\nContent-Type: text/plain\n\nInner text\n\
        --f--\n";

    fn m(s: &str) -> Vec<u8> {
        s.replace('\n', "\r\n").into_bytes()
    }
    fn parse(raw: &[u8]) -> Message<'_> {
        MessageParser::default().parse(raw).expect("output parses")
    }
    fn text_of(msg: &Message<'_>, id: usize) -> String {
        msg.parts[id].text_contents().unwrap_or_default().into()
    }
    fn count(hay: &[u8], needle: &str) -> usize {
        let needle = needle.as_bytes();
        hay.windows(needle.len()).filter(|w| *w == needle).count()
    }
    /// `raw` split just before the first `marker`.
    fn split_at<'a>(raw: &'a [u8], marker: &str) -> (&'a [u8], &'a [u8]) {
        let bytes = marker.as_bytes();
        raw.split_at(
            raw.windows(bytes.len())
                .position(|w| w == bytes)
                .expect(marker),
        )
    }
    fn lines_within(raw: &[u8], max: usize) -> bool {
        raw.split(|&b| b == b'\n').all(|l| l.len() <= max)
    }
    fn has_bare_lf(raw: &[u8]) -> bool {
        raw.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r') || raw.starts_with(b"\n")
    }

    /// Signs a single-part message; checks decoded text, Content-Type, CTE, CRLF, line lengths.
    fn check(input: &[u8], sig: &Signature<'_>, text: &str, ctype: &str, cte: Option<&str>) {
        let out = inject_signature(input, sig);
        let (msg, shown) = (parse(&out), String::from_utf8_lossy(&out));
        assert_eq!(text_of(&msg, 0), text, "{shown}");
        assert_eq!(count(&out, ctype), 1, "{shown}");
        assert_eq!(msg.parts[0].content_transfer_encoding(), cte, "{shown}");
        assert!(!has_bare_lf(&out) && lines_within(&out, 77), "{shown}");
    }

    #[test]
    #[rustfmt::skip]
    fn single_part_messages() {
        let s = |text| Signature { text: Some(text), html: None };
        check(&m("Subject: a\nContent-Type: text/plain; charset=us-ascii\n\nHello\n"),
            &TEXT_ONLY, &format!("Hello\r\n{TSIG}\r\n"), "text/plain; charset=us-ascii\r\n", None);
        check(&m("Content-Type: text/plain; charset=utf-8\n\
                  Content-Transfer-Encoding: 8bit\n\nGrüße\n"),
            &TEXT_ONLY, &format!("Grüße\r\n{TSIG}\r\n"), "charset=utf-8", Some("8bit"));
        check(&m("Content-Type: text/plain; charset=ISO-8859-1\n\
                  Content-Transfer-Encoding: quoted-printable\n\ncaf=E9 au lait\n"),
            &TEXT_ONLY, &format!("café au lait\r\n{TSIG}\r\n"), "text/plain; charset=utf-8\r\n",
            Some("quoted-printable"));
        let b64 = STANDARD.encode("Hello base64\r\n");
        check(&m(&format!("Content-Type: text/plain; charset=utf-8\n\
                  Content-Transfer-Encoding: base64\n\n{b64}\n")),
            &TEXT_ONLY, &format!("Hello base64\r\n{TSIG}\r\n"), "charset=utf-8", Some("base64"));
        check(b"Content-Type: text/plain; charset=windows-1252\r\n\
                Content-Transfer-Encoding: 8bit\r\n\r\nPrice: 5\x80\r\n",
            &TEXT_ONLY, &format!("Price: 5€\r\n{TSIG}\r\n"), "charset=utf-8", Some("8bit"));
        check(&m("Content-Type: text/html\n\n<html><body><p>Hi</p>\n</body></html>\n"),
            &SIG, &format!("<html><body><p>Hi</p>\r\n{HSIG}\r\n</body></html>\r\n"), "text/html",
            None);
        check(&m("Content-Type: text/html\n\n<BODY><!-- </body> -->Hi</BODY>\n"),
            &SIG, &format!("<BODY><!-- </body> -->Hi{HSIG}\r\n</BODY>\r\n"), "text/html", None);
        check(&m("Content-Type: text/html\n\n<p>Hi</p>"), &SIG, &format!("<p>Hi</p>\r\n{HSIG}"),
            "text/html", None);
        check(&m("Content-Type: text/html\n\n<p>Hi</p>\n"), &s("-- \nA & B <x>"),
            "<p>Hi</p>\r\n<div>-- <br>\r\nA &amp; B &lt;x&gt;</div>\r\n", "text/html", None);
        check(&m("Content-Type: text/plain; format=flowed; charset=\"iso-8859-1\"; delsp=no\n\
                  Content-Transfer-Encoding: quoted-printable\n\nHi\n"),
            &s("-- \nAlice   \n>quote"), "Hi\r\n-- \r\nAlice\r\n >quote\r\n",
            "text/plain; format=flowed; charset=utf-8; delsp=no\r\n", Some("quoted-printable"));
        check(&m("Content-Type: text/plain;\n names=\"x\"\n\nHi"), &TEXT_ONLY,
            &format!("Hi\r\n{TSIG}"),
            "text/plain;\r\n names=\"x\"\r\n", None);
        // No Content-Type (US-ASCII, 7bit) and a non-ASCII signature: UTF-8 QP, MIME-Version.
        check(&m("Subject: x\n\nHi"), &s("-- \nJosé"), "Hi\r\n-- \r\nJosé", "charset=utf-8",
            Some("quoted-printable"));
        let out = inject_signature(&m("Subject: x\n\nHi"), &s("-- \nJosé"));
        assert!(out.starts_with(b"Subject: x\r\nContent-Type: text/plain; charset=utf-8\r\n\
            Content-Transfer-Encoding: quoted-printable\r\n\
            MIME-Version: 1.0\r\n\r\nHi\r\n--=20\r\nJos=C3=A9"));
    }

    #[test]
    fn multipart_alternative_signs_each_part_once() {
        let out = inject_signature(&m(ALTERNATIVE), &SIG);
        let msg = parse(&out);
        assert_eq!(text_of(&msg, 1), format!("Hi there\r\n{TSIG}"));
        let html = format!("<html><body><p>Hi there</p>{HSIG}\r\n</body></html>");
        assert_eq!(text_of(&msg, 2), html);
        assert_eq!((count(&out, "Example Corp"), count(&out, HSIG)), (1, 1));

        // Only an HTML signature: the text part stays as it was.
        let html_only = Signature {
            text: None,
            html: Some(HSIG),
        };
        let out = inject_signature(&m(ALTERNATIVE), &html_only);
        assert_eq!(text_of(&parse(&out), 1), "Hi there");
        assert_eq!((count(&out, "Alice"), count(&out, HSIG)), (1, 1));
    }

    #[test]
    fn attachments_and_forwarded_messages_stay_untouched() {
        let input = m(MIXED);
        let out = inject_signature(&input, &SIG);
        assert_eq!(text_of(&parse(&out), 1), format!("Body text\r\n{TSIG}"));
        assert_eq!(count(&out, "Alice"), 1);
        let (head, _) = split_at(&input, "Content-Type: text/plain\r\n");
        let (_, attachments) = split_at(&input, "\r\n--mix\r\nContent-Type: text/plain; name");
        assert!(out.starts_with(head) && out.ends_with(attachments));

        let input = m(FORWARD);
        let out = inject_signature(&input, &SIG);
        assert_eq!(text_of(&parse(&out), 1), format!("See below\r\n{TSIG}"));
        assert_eq!(count(&out, "Alice"), 1);
        assert!(out.ends_with(split_at(&input, "\r\n--f\r\nContent-Type: message/rfc822").1));
    }

    #[test]
    fn nested_mixed_alternative_related() {
        let input = m(NESTED);
        let out = inject_signature(&input, &SIG);
        let msg = parse(&out);
        assert_eq!(text_of(&msg, 2), format!("Olá\r\n{TSIG}"));
        let html = format!("<html><body><p>Olá</p>{HSIG}\r\n</body></html>");
        assert_eq!(text_of(&msg, 4), html);
        let charset = msg.parts[2]
            .content_type()
            .and_then(|c| c.attribute("charset"));
        assert_eq!(charset, Some("utf-8"));
        assert!(out.starts_with(split_at(&input, "Content-Type: text/plain; charset=iso").0));
        assert!(out.ends_with(split_at(&input, "\r\n--r\r\nContent-Type: image/png").1));
    }

    #[test]
    fn mixed_sequence_is_signed_once_at_the_end() {
        let input = m("Content-Type: multipart/mixed; boundary=b\n\n\
            --b\nContent-Type: text/plain\n\nfirst\n\
            --b\nContent-Type: image/png\nContent-Transfer-Encoding: base64\n\niVBORw0KGgo=\n\
            --b\nContent-Type: text/plain\n\nsecond\n--b--\n");
        let out = inject_signature(&input, &TEXT_ONLY);
        let msg = parse(&out);
        assert_eq!(text_of(&msg, 1), "first");
        assert_eq!(text_of(&msg, 3), format!("second\r\n{TSIG}"));
    }

    #[test]
    fn round_trip_decodes_to_original_plus_signature() {
        // (fixture, number of parts that must change)
        for (fixture, signed) in [(ALTERNATIVE, 2), (MIXED, 1), (NESTED, 2), (FORWARD, 1)] {
            let input = m(fixture);
            let out = inject_signature(&input, &SIG);
            let (before, after) = (parse(&input), parse(&out));
            assert_eq!(before.parts.len(), after.parts.len());
            let mut changed = 0;
            for (id, (b, a)) in before.parts.iter().zip(&after.parts).enumerate() {
                if a.text_contents() == b.text_contents() || b.is_multipart() {
                    continue;
                }
                changed += 1;
                let original = text_of(&before, id);
                let expected = match b.is_text_html() {
                    true => insert_html(&original, HSIG),
                    false => format!("{original}\r\n{TSIG}"),
                };
                assert_eq!(text_of(&after, id), expected, "{fixture}: part {id}");
            }
            assert_eq!(changed, signed, "{fixture}");
        }
    }

    #[test]
    fn rewritten_parts_use_crlf_and_everything_else_is_identical() {
        // Latin-1 bytes and bare LF line endings everywhere.
        let input =
            b"Subject: lf\nX-Keep: a\n  folded\nContent-Type: multipart/mixed; boundary=b\n\n\
            --b\nContent-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: 8bit\n\n\
            caf\xe9\nbar\n--b\nContent-Type: text/csv\n\nx,y\n--b--\n";
        let out = inject_signature(input, &TEXT_ONLY);
        let (head, _) = split_at(input, "Content-Type: text/plain");
        let (_, tail) = split_at(input, "\n--b\nContent-Type: text/csv");
        assert!(out.starts_with(head) && out.ends_with(tail));
        let part = &out[head.len()..out.len() - tail.len()];
        let expected = "Content-Type: text/plain; charset=utf-8\r\n\
            Content-Transfer-Encoding: 8bit\r\n\r\ncafé\r\nbar\r\n";
        assert_eq!(part, format!("{expected}{TSIG}").as_bytes());
        assert!(!has_bare_lf(part));
    }

    #[test]
    fn long_lines_are_wrapped() {
        let long = "x".repeat(1200);
        let out = inject_signature(&m(&format!("Subject: s\n\n{long}\n")), &TEXT_ONLY);
        assert!(lines_within(&out, 77), "QP lines are at most 76 chars + CR");
        let msg = parse(&out);
        assert_eq!(
            msg.parts[0].content_transfer_encoding(),
            Some("quoted-printable")
        );
        assert_eq!(text_of(&msg, 0), format!("{long}\r\n{TSIG}\r\n"));

        let html_sig = Signature {
            text: None,
            html: Some(&long),
        };
        let out = inject_signature(&m("Content-Type: text/html\n\nHi"), &html_sig);
        assert!(lines_within(&out, 77) && text_of(&parse(&out), 0).ends_with(&long));

        let b64 = STANDARD.encode(&long);
        let out = inject_signature(
            &m(&format!("Content-Transfer-Encoding: base64\n\n{b64}")),
            &TEXT_ONLY,
        );
        assert_eq!(text_of(&parse(&out), 0), format!("{long}\r\n{TSIG}"));
        let body = split_at(&out, "\r\n\r\n").1;
        assert!(body[4..]
            .split(|&b| b == b'\n')
            .rev()
            .skip(1)
            .all(|l| l.len() == 77));
    }

    #[test]
    fn quoted_printable_round_trips() {
        let long = ["é".repeat(99), "ab ".repeat(60)];
        let strings = [
            "",
            "a ",
            "tab\t",
            "=",
            "x=y\r\n\r\n",
            "café ☕ \r\n  lead",
            &long[0],
            &long[1],
        ];
        for s in strings {
            let encoded = qp_encode(s);
            assert!(encoded
                .split("\r\n")
                .all(|l| l.len() <= 76 && !l.ends_with([' ', '\t'])));
            assert_eq!(
                qp_decode(encoded.as_bytes()).as_deref(),
                Some(s.as_bytes()),
                "{s}"
            );
        }
        assert_eq!(
            qp_decode(b"a=\r\nb =20\r\nc  "),
            Some(b"ab  \r\nc".to_vec())
        );
        assert_eq!(
            (qp_decode(b"=ZZ"), qp_decode(b"=+1"), qp_decode(b"x=4")),
            (None, None, None)
        );
    }

    #[test]
    #[rustfmt::skip]
    fn charset_parameter_is_replaced_or_added() {
        for (field, expected) in [
            ("text/plain; charset=\"ISO-8859-1\"\r\n", "text/plain; charset=utf-8\r\n"),
            ("text/plain;\r\n\tCharset=latin1 ;format=flowed\r\n",
             "text/plain;\r\n\tCharset=utf-8 ;format=flowed\r\n"),
            ("text/plain; name=\"a;charset=x\"\r\n",
             "text/plain; name=\"a;charset=x\"; charset=utf-8\r\n"),
            ("text/plain;\r\n", "text/plain; charset=utf-8\r\n"),
            ("text/plain", "text/plain; charset=utf-8\r\n"),
            // The added parameter would make the line longer than 78: it goes on a folded line.
            ("text/plain; format=flowed; delsp=yes; x-long-parameter=\"aaaaaa\"\r\n",
             "text/plain; format=flowed; delsp=yes; x-long-parameter=\"aaaaaa\";\r\n \
              charset=utf-8\r\n"),
        ] {
            let field = format!("Content-Type: {field}");
            let out = set_charset_utf8(field.as_bytes());
            assert_eq!(String::from_utf8_lossy(&out), format!("Content-Type: {expected}"));
        }
    }

    #[test]
    #[rustfmt::skip]
    fn unchanged_when_nothing_to_add_or_nothing_safe_to_change() {
        let none = Signature { text: None, html: None };
        let blank = Signature { text: Some(" \n"), html: Some("") };
        for sig in [none, blank] {
            for fixture in [ALTERNATIVE, NESTED] {
                assert_eq!(inject_signature(&m(fixture), &sig), m(fixture));
            }
        }
        let mut cases: Vec<Vec<u8>> = [
            "", "\n\n", "\r\r\n\r", "garbage without headers",
            "Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\ntrunc",
            "Content-Transfer-Encoding: base64\n\n!!!not base64!!!\n",
            "Content-Transfer-Encoding: quoted-printable\n\nbad =ZZ escape\n",
            "Content-Type: text/plain; charset=x-unknown\n\nHi\n",
            "Content-Transfer-Encoding: x-uuencode\n\nbegin 644 a\n",
            "Content-Type: text/calendar\n\nBEGIN:VCALENDAR\n",
            "Content-Type: text/plain\n\n-----BEGIN PGP SIGNED MESSAGE-----\nHi\n",
            "Content-Type: multipart/mixed; boundary=b\n\n--b\n\
                Content-Disposition: inline; filename=\"a.txt\"\n\nfile\n--b--\n",
            "Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Disposition: attachment\n\n\
                file\n--b--\n",
            "Content-Type: multipart/mixed; boundary=f\n\n--f\nContent-Type: message/rfc822\n\n\
                Subject: in\n\nInner\n--f--\n",
            "Content-Type: multipart/signed; boundary=s\n\n\
                --s\nContent-Type: text/plain\n\nsigned\n\
                --s\nContent-Type: application/pgp-signature\n\nsig\n--s--\n",
        ].iter().map(|s| m(s)).collect();
        cases.push(b"Content-Type: text/plain; charset=utf-8\r\n\r\nbad \xff utf-8\r\n".to_vec());
        cases.push((0..2000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect());
        for input in cases {
            let shown = String::from_utf8_lossy(&input).into_owned();
            assert_eq!(inject_signature(&input, &SIG), input, "{shown}");
        }
    }

    #[test]
    fn never_panics_on_truncated_or_mangled_input() {
        let input = m(NESTED);
        for cut in 0..input.len() {
            let _ = inject_signature(&input[..cut], &SIG);
            let mut mangled = input.clone();
            mangled[cut] = [b'-', b'\n', b'=', 0xff, b'"'][cut % 5];
            let _ = inject_signature(&mangled, &SIG);
        }
    }
}
