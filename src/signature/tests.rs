//! Signature injection: the MIME shapes real clients send.
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
    mail_parser::MessageParser::default()
        .parse(raw)
        .expect("output parses")
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
    let input = b"Subject: lf\nX-Keep: a\n  folded\nContent-Type: multipart/mixed; boundary=b\n\n\
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

/// Issue 14 item 8. RFC 8621 §6: the client SHOULD insert the identity's signature; a part
/// that already holds it (re-wrapped, in a signature `<div>`, QP-encoded) is left alone, while
/// a part without it is still signed, once.
#[test]
fn a_part_that_already_holds_the_signature_is_not_signed_again() {
    let client_signed = "From: a@example.com\nMIME-Version: 1.0\n\
        Content-Type: multipart/alternative; boundary=\"alt\"\n\n\
        --alt\nContent-Type: text/plain; charset=utf-8\n\nHi there\n\n-- \nAlice\nExample Corp\n\
        --alt\nContent-Type: text/html; charset=utf-8\n\n\
          <html><body><p>Hi there</p><div class=\"moz-signature\"><p>--&nbsp;<br>\n  Alice</p></div></body></html>\n\
        --alt--\n";
    let input = m(client_signed);
    assert_eq!(inject_signature(&input, &SIG), input, "signed twice");

    // Only the text part holds it: the HTML part is still signed, once.
    let text_signed = client_signed.replace(
        "<div class=\"moz-signature\"><p>--&nbsp;<br>\n  Alice</p></div>",
        "",
    );
    let out = inject_signature(&m(&text_signed), &SIG);
    assert_eq!(count(&out, TSIG), 1, "{}", String::from_utf8_lossy(&out));
    assert_eq!(count(&out, HSIG), 1, "{}", String::from_utf8_lossy(&out));

    // Quoted-printable and re-wrapped lines still count as holding it.
    let qp = "From: a@example.com\nContent-Type: text/plain; charset=utf-8\n\
        Content-Transfer-Encoding: quoted-printable\n\nHi=0A=0A--=20\nAlice\nExample=20Corp\n";
    assert_eq!(inject_signature(&m(qp), &TEXT_ONLY), m(qp));

    // A body that merely mentions a name is signed.
    let plain = "From: a@example.com\nContent-Type: text/plain\n\nAsk Alice at Example Corp\n";
    assert_eq!(count(&inject_signature(&m(plain), &TEXT_ONLY), TSIG), 1);
}

/// The `signature` fuzz target's third finding: a part whose `name="` never closes is no
/// attachment to mail-parser before signing and one after. Any file-name parameter as
/// written keeps the signature out of the part.
#[test]
fn a_part_that_names_a_file_however_malformed_is_not_signed() {
    let mime: &[u8] = &crate::fuzzing::signature_regression("unterminated-name-parameter");
    let sig = Signature {
        text: Some("-- \nAlice"),
        html: None,
    };
    let out = inject_signature(mime, &sig);
    let (_, file) = split_at(&out, "name=\"");
    assert_eq!(count(file, "Alice"), 0, "{}", String::from_utf8_lossy(&out));
    assert!(names_a_file(
        b"Content-Type: text/plain; name=\"a.txt\"\r\n"
    ));
    assert!(names_a_file(
        b"Content-Disposition: inline; FILENAME*0*=x\r\n"
    ));
    assert!(names_a_file(b"Content-Type: text/plain; name=\"\r\n"));
    assert!(!names_a_file(
        b"Content-Type: text/plain; charset=utf-8\r\n"
    ));
}

#[test]
fn searching_without_copying_finds_what_contains_finds() {
    // Deterministic pseudo-random strings over a small alphabet, so matches and near-misses
    // (repeated prefixes, where a naive restart would go wrong) are common.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let alphabet = ['a', 'b', 'é', '-'];
    for _ in 0..3000 {
        let mut word =
            |len: u64| -> String { (0..next(len)).map(|_| alphabet[next(4) as usize]).collect() };
        let (haystack, needle) = (word(40), word(6));
        let chars: Vec<char> = needle.chars().collect();
        assert_eq!(
            contains_chars(haystack.chars(), &chars),
            haystack.contains(&needle),
            "{haystack:?} / {needle:?}"
        );
    }
    assert!(contains_chars("aab".chars(), &['a', 'b']));
    assert!(!contains_chars("".chars(), &['a']));
}

#[test]
fn line_breaks_already_crlf_are_kept_without_a_copy_and_others_are_fixed() {
    for text in [
        "",
        "a\r\nb\r\n",
        "a\nb",
        "a\rb",
        "a\r\r\nb",
        "\n",
        "\r",
        "é\r\n",
    ] {
        assert_eq!(crlf_owned(text.to_string()), crlf(text), "{text:?}");
    }
    let text = "line\r\n".repeat(1000);
    let at = text.as_ptr();
    let kept = crlf_owned(text);
    assert_eq!(kept.as_ptr(), at, "the same buffer");
}

#[test]
fn a_quoted_parameter_that_does_not_end_leaves_the_message_alone() {
    for (field, closed) in [
        (
            &b"Content-Type: text/plain; charset=\"utf-8\"\r\n"[..],
            true,
        ),
        (
            b"Content-Type: multipart/mixed; boundary=\"a\\\"b\"\r\n",
            true,
        ),
        (b"Content-Type: multipart/mixed; boundary=\"a\r\n", false),
        (
            b"Content-Disposition: attachment; filename=\"x\\\"\r\n",
            false,
        ),
        (b"Content-Type: text/plain\r\n", true),
    ] {
        assert_eq!(
            quotes_closed(field),
            closed,
            "{}",
            String::from_utf8_lossy(field)
        );
    }
    // The fuzz finding, readable: an unterminated boundary quote; mail-parser saw an attachment
    // there before signing and none after. Now nothing is signed.
    let found = m("Content-Type: multipart/mixed; boundary=\"a\n\n\n--a\n\
        Content-Type: multipart/alternative; boundary=\" \n-a\n\
        Content-Disposition: attachment; filename=\"notes\n\nHi\n--a\n\n--a\n");
    assert_eq!(inject_signature(&found, &SIG), found);
    // Closed quotes, the same shape otherwise: signed as ever.
    let fine = m(ALTERNATIVE);
    assert_ne!(inject_signature(&fine, &SIG), fine);
}
