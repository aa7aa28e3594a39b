//! Unqualified addresses from local programs: `sendmail root`, cron's `MAILTO=root` and its
//! `From: root (Cron Daemon)` / `To: root` header fields. Traditional MTAs append their own
//! domain (Postfix's `myorigin`); SES refuses an address without one. With `default_domain`
//! configured such a local name becomes `name@default_domain`, in the envelope and in the
//! address fields of the header; without it the envelope address is refused with a clear
//! text rather than queued for a send that can only fail.

use crate::message::header_fields;

/// Header fields whose addresses are qualified (RFC 5322 §3.6.2, §3.6.3).
const ADDRESS_FIELDS: [&str; 6] = ["From", "Sender", "Reply-To", "To", "Cc", "Bcc"];

/// An envelope address without a domain and no `default_domain` to add.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{role} \"{address}\" has no domain: give a full address (name@domain), or set default_domain in the config to qualify local names")]
pub struct Unqualified {
    pub role: &'static str,
    pub address: String,
}

/// `address`, with `@domain` added when it is a bare local name.
pub fn address(
    address: &str,
    domain: Option<&str>,
    role: &'static str,
) -> Result<String, Unqualified> {
    if address.contains('@') {
        return Ok(address.to_string());
    }
    match domain {
        Some(domain) if is_local_name(address) => Ok(format!("{address}@{domain}")),
        _ => Err(Unqualified {
            role,
            address: address.to_string(),
        }),
    }
}

/// The message with every bare local name in its address fields qualified with `domain`
/// (`To: root` → `To: root@domain`, `From: root (Cron Daemon)` → `From: root@domain (Cron
/// Daemon)`, `Name <root>` → `Name <root@domain>`). A field that has none is left byte for
/// byte; one that has is written again on one line.
pub fn headers(mime: &[u8], domain: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(mime.len() + 64);
    let mut copied = 0;
    for (name, raw) in header_fields(mime) {
        let Ok(name_text) = std::str::from_utf8(name) else {
            continue;
        };
        if !ADDRESS_FIELDS
            .iter()
            .any(|f| f.eq_ignore_ascii_case(name_text))
        {
            continue;
        }
        let Some(value) = std::str::from_utf8(raw)
            .ok()
            .and_then(|r| r.split_once(':'))
            .map(|(_, v)| v.replace("\r\n", ""))
        else {
            continue;
        };
        let items = split_list(&value);
        let qualified: Vec<Option<String>> = items.iter().map(|i| item(i, domain)).collect();
        if qualified.iter().all(Option::is_none) {
            continue;
        }
        let joined: Vec<String> = items
            .iter()
            .zip(qualified)
            .map(|(i, q)| q.unwrap_or_else(|| i.trim().to_string()))
            .collect();
        // `raw` is a slice of `mime`: its offset says where the field starts.
        let start = raw.as_ptr() as usize - mime.as_ptr() as usize;
        out.extend_from_slice(&mime[copied..start]);
        out.extend_from_slice(format!("{name_text}: {}\r\n", joined.join(", ")).as_bytes());
        copied = start + raw.len();
    }
    out.extend_from_slice(&mime[copied..]);
    out
}

/// One list item qualified, or None when it needs nothing (or is not a simple mailbox).
fn item(item: &str, domain: &str) -> Option<String> {
    let item = item.trim();
    if item.contains('@') {
        return None;
    }
    // `Name <root>`
    if let Some((display, rest)) = item.rsplit_once('<') {
        let local = rest.strip_suffix('>')?.trim();
        return is_local_name(local).then(|| format!("{display}<{local}@{domain}>"));
    }
    // `root` or `root (comment)`
    let local = item.split('(').next().unwrap_or_default().trim_end();
    let comment = &item[local.len()..];
    is_local_name(local).then(|| format!("{local}@{domain}{comment}"))
}

/// RFC 5322 §3.2.3 dot-atom text: what a local name such as `root` or `www-data` is made of.
fn is_local_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c))
}

/// Splits an address list on the commas that separate items (not those inside quotes,
/// comments or angle brackets).
fn split_list(value: &str) -> Vec<&str> {
    let (mut items, mut start, mut depth, mut quoted, mut escaped) =
        (Vec::new(), 0, 0i32, false, false);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            '(' | '<' if !quoted => depth += 1,
            ')' | '>' if !quoted => depth -= 1,
            ',' if !quoted && depth <= 0 => {
                items.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&value[start..]);
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_addresses() {
        let d = Some("example.com");
        assert_eq!(address("root", d, "recipient").unwrap(), "root@example.com");
        assert_eq!(address("a@b.test", None, "recipient").unwrap(), "a@b.test");
        let e = address("root", None, "recipient").unwrap_err();
        assert_eq!(
            e.to_string(),
            "recipient \"root\" has no domain: give a full address (name@domain), or set default_domain in the config to qualify local names"
        );
        assert!(address("two words", d, "sender").is_err());
    }

    #[test]
    fn header_fields_table() {
        let cases: [(&str, &str); 7] = [
            // What cron writes.
            (
                "From: root (Cron Daemon)\r\nTo: root\r\nSubject: Cron <root@h> ls\r\n\r\nbody\r\n",
                "From: root@example.com (Cron Daemon)\r\nTo: root@example.com\r\nSubject: Cron <root@h> ls\r\n\r\nbody\r\n",
            ),
            (
                "To: \"Doe, J\" <jdoe>, x@y.test,\r\n www-data\r\n\r\nx",
                "To: \"Doe, J\" <jdoe@example.com>, x@y.test, www-data@example.com\r\n\r\nx",
            ),
            // Qualified already, other fields, the body: untouched.
            (
                "To: a@b.test\r\nX-To: root\r\n\r\nTo: root\r\n",
                "To: a@b.test\r\nX-To: root\r\n\r\nTo: root\r\n",
            ),
            // A group is not a mailbox.
            (
                "To: undisclosed-recipients:;\r\n\r\nx",
                "To: undisclosed-recipients:;\r\n\r\nx",
            ),
            ("cc: ops\r\n\r\n", "cc: ops@example.com\r\n\r\n"),
            ("Reply-To: <root>\r\n\r\n", "Reply-To: <root@example.com>\r\n\r\n"),
            ("Subject: root\r\n\r\n", "Subject: root\r\n\r\n"),
        ];
        for (input, want) in cases {
            let got = headers(input.as_bytes(), "example.com");
            assert_eq!(String::from_utf8(got).unwrap(), want, "{input:?}");
        }
    }
}
