//! An Email/set `create` object (RFC 8621 §4.6) turned into RFC 5322 MIME with mail-builder:
//! addresses, subject, date and id headers, `header:Name[:asText|:asRaw]` properties, one
//! text and/or one HTML body from `bodyValues`, and attachments from uploaded blobs — or the
//! whole tree as `bodyStructure` ([`super::body_structure`]).

use mail_builder::headers::address::Address;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::message_id::MessageId;
use mail_builder::headers::raw::Raw;
use mail_builder::headers::text::Text;
use mail_builder::mime::{BodyPart, MimePart};
use mail_builder::MessageBuilder;
use serde_json::{Map, Value};

use super::api::invalid_properties;

/// Properties of a create that describe the message (the rest are metadata).
const MESSAGE_PROPERTIES: [&str; 14] = [
    "from",
    "to",
    "cc",
    "bcc",
    "replyTo",
    "sender",
    "subject",
    "sentAt",
    "messageId",
    "inReplyTo",
    "references",
    "textBody",
    "htmlBody",
    "attachments",
];

pub fn is_message_property(p: &str) -> bool {
    MESSAGE_PROPERTIES.contains(&p)
        || p == "bodyValues"
        || p == "bodyStructure"
        || p.starts_with("header:")
}

/// Headers a client may not set through `header:` (they come from properties or the body).
const RESERVED_HEADERS: [&str; 4] = [
    "content-type",
    "content-transfer-encoding",
    "mime-version",
    "x-outbox-class",
];

type SetError = Value;

fn addresses(v: &Value, prop: &str) -> Result<Option<Address<'static>>, SetError> {
    let bad = || invalid_properties(&[prop], format!("{prop} must be a list of EmailAddress"));
    let list = match v {
        Value::Null => return Ok(None),
        Value::Array(a) => a,
        _ => return Err(bad()),
    };
    let mut out = Vec::new();
    for a in list {
        let email = a.get("email").and_then(Value::as_str).ok_or_else(bad)?;
        if !valid_address(email) {
            return Err(invalid_properties(
                &[prop],
                format!("invalid address {email:?}"),
            ));
        }
        let name = match a.get("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(n)) if !n.contains(['\r', '\n']) => Some(n.clone()),
            _ => return Err(bad()),
        };
        out.push(Address::new_address(name, email.to_string()));
    }
    Ok((!out.is_empty()).then(|| Address::new_list(out)))
}

/// A plausible addr-spec: one `@`, non-empty parts, nothing that breaks a header or envelope.
pub fn valid_address(a: &str) -> bool {
    let Some((local, domain)) = a.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && a.len() <= 254
        && !a
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';'))
}

fn string_list(v: &Value, prop: &str) -> Result<Option<Vec<String>>, SetError> {
    match v {
        Value::Null => Ok(None),
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .filter(|s| !s.contains(['\r', '\n', '<', '>']))
                    .map(String::from)
            })
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| invalid_properties(&[prop], format!("{prop} must be a list of ids"))),
        _ => Err(invalid_properties(
            &[prop],
            format!("{prop} must be a list"),
        )),
    }
}

/// The one body part a textBody/htmlBody list may hold, with its value from bodyValues.
fn body_text(
    create: &Map<String, Value>,
    prop: &str,
    want_type: &str,
) -> Result<Option<String>, SetError> {
    let parts = match create.get(prop) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(a)) => a,
        _ => {
            return Err(invalid_properties(
                &[prop],
                format!("{prop} must be a list"),
            ))
        }
    };
    match parts.as_slice() {
        [] => Ok(None),
        [part] => {
            if let Some(t) = part.get("type").and_then(Value::as_str) {
                if !t.eq_ignore_ascii_case(want_type) {
                    return Err(invalid_properties(
                        &[prop],
                        format!("{prop} must be {want_type}"),
                    ));
                }
            }
            let part_id = part
                .get("partId")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid_properties(&[prop], "a body part needs a partId"))?;
            Ok(Some(body_value(create, part_id)?.to_string()))
        }
        _ => Err(invalid_properties(
            &[prop],
            format!("at most one part in {prop}"),
        )),
    }
}

/// The text of `bodyValues[part_id]` of an Email/set create (RFC 8621 §4.1.4), or the
/// SetError naming the missing value.
pub(crate) fn body_value<'a>(
    create: &'a Map<String, Value>,
    part_id: &str,
) -> Result<&'a str, Value> {
    create
        .get("bodyValues")
        .and_then(|b| b.get(part_id))
        .and_then(|b| b.get("value"))
        .and_then(Value::as_str)
        .ok_or_else(|| invalid_properties(&["bodyValues"], format!("no bodyValues for {part_id}")))
}

/// Builds the MIME; `blob` fetches an uploaded blob by id. Errors are SetErrors.
/// `hostname` (the configured one) is the right-hand side of the Message-ID given to a draft
/// that has none: mail-builder would otherwise use the machine's name (RFC 5322 §3.6.4 wants
/// a domain the sender controls).
pub fn build(
    create: &Map<String, Value>,
    blob: impl Fn(&str) -> Option<Vec<u8>>,
    now_ms: u64,
    hostname: &str,
) -> Result<Vec<u8>, SetError> {
    let mut b = MessageBuilder::new();
    if create.get("bodyStructure").is_some_and(|v| !v.is_null()) {
        b = b.body(super::body_structure::build(create, &blob)?);
    }
    for (prop, v) in create {
        b = match prop.as_str() {
            "from" => match addresses(v, prop)? {
                Some(a) => b.from(a),
                None => b,
            },
            "to" => match addresses(v, prop)? {
                Some(a) => b.to(a),
                None => b,
            },
            "cc" => match addresses(v, prop)? {
                Some(a) => b.cc(a),
                None => b,
            },
            "bcc" => match addresses(v, prop)? {
                Some(a) => b.bcc(a),
                None => b,
            },
            "replyTo" => match addresses(v, prop)? {
                Some(a) => b.reply_to(a),
                None => b,
            },
            "sender" => match addresses(v, prop)? {
                Some(a) => b.sender(a),
                None => b,
            },
            "subject" => match v {
                Value::Null => b,
                Value::String(s) => b.subject(s.replace(['\r', '\n'], " ")),
                _ => return Err(invalid_properties(&["subject"], "subject must be a string")),
            },
            "sentAt" => match v {
                Value::Null => b,
                Value::String(s) => {
                    let ts = parse_date(s).ok_or_else(|| {
                        invalid_properties(&["sentAt"], "sentAt must be an RFC 3339 date")
                    })?;
                    b.date(mail_builder::headers::date::Date::new(ts.div_euclid(1000)))
                }
                _ => return Err(invalid_properties(&["sentAt"], "sentAt must be a string")),
            },
            "messageId" | "inReplyTo" | "references" => match string_list(v, prop)? {
                None => b,
                Some(ids) if ids.is_empty() => b,
                Some(ids) => {
                    let id = MessageId::new_list(ids.into_iter());
                    match prop.as_str() {
                        "messageId" => b.message_id(id),
                        "inReplyTo" => b.in_reply_to(id),
                        _ => b.references(id),
                    }
                }
            },
            p if p.starts_with("header:") => {
                let mut parts = p["header:".len()..].split(':');
                let name = parts.next().unwrap_or("");
                let form = parts.next();
                let valid_name = !name.is_empty()
                    && name.bytes().all(|c| c.is_ascii_graphic() && c != b':')
                    && !RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str());
                let value = v.as_str().filter(|s| !s.contains(['\r', '\n']));
                match (valid_name, form, parts.next(), value) {
                    (true, None | Some("asRaw"), None, Some(s)) => {
                        b.header(name.to_string(), Raw::new(s.trim_start().to_string()))
                    }
                    (true, Some("asText"), None, Some(s)) => {
                        b.header(name.to_string(), Text::new(s.to_string()))
                    }
                    _ => {
                        return Err(invalid_properties(
                            &[p],
                            "header properties must be header:Name[:asText|:asRaw] with a one-line string",
                        ))
                    }
                }
            }
            _ => b,
        };
    }
    let text = body_text(create, "textBody", "text/plain")?;
    let html = body_text(create, "htmlBody", "text/html")?;
    if let Some(t) = text {
        b = b.text_body(t);
    }
    if let Some(h) = html {
        b = b.html_body(h);
    }
    match create.get("attachments") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for a in list {
                let blob_id = a.get("blobId").and_then(Value::as_str).ok_or_else(|| {
                    invalid_properties(&["attachments"], "an attachment needs a blobId")
                })?;
                let bytes = blob(blob_id).ok_or_else(|| {
                    serde_json::json!({"type": "blobNotFound", "notFound": [blob_id],
                        "description": format!("no blob {blob_id}")})
                })?;
                let kind = a
                    .get("type")
                    .and_then(Value::as_str)
                    .filter(|t| t.contains('/') && !t.contains(['\r', '\n', ';', '"']))
                    .unwrap_or("application/octet-stream")
                    .to_string();
                let name = a
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("attachment")
                    .replace(['\r', '\n', '"'], "_");
                let inline = a.get("disposition").and_then(Value::as_str) == Some("inline");
                let cid = a
                    .get("cid")
                    .and_then(Value::as_str)
                    .map(|c| c.replace(['\r', '\n', '<', '>'], ""));
                let part = MimePart::new(ContentType::new(kind), BodyPart::Binary(bytes.into()));
                let part = match (inline, cid) {
                    (true, Some(cid)) => part.inline().cid(cid),
                    _ => part.attachment(name),
                };
                b.attachments.get_or_insert_with(Vec::new).push(part);
            }
        }
        Some(_) => {
            return Err(invalid_properties(
                &["attachments"],
                "attachments must be a list",
            ))
        }
    }
    let has_id = matches!(create.get("messageId"), Some(Value::Array(ids)) if !ids.is_empty());
    if !has_id {
        let unique = crate::domain::QueueId::generate(now_ms);
        b = b.message_id(MessageId::new(format!("{unique}@{hostname}")));
    }
    if !create.contains_key("sentAt") {
        b = b.date(mail_builder::headers::date::Date::new(
            (now_ms / 1000) as i64,
        ));
    }
    b.write_to_vec()
        .map_err(|e| invalid_properties(&[], format!("the message could not be built: {e}")))
}

/// RFC 3339 date-time (`UTCDate` or `Date`) → Unix ms.
pub fn parse_date(s: &str) -> Option<i64> {
    let dt = mail_parser::DateTime::parse_rfc3339(s)?;
    dt.is_valid().then(|| dt.to_timestamp() * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builds_text_html_and_attachment() {
        let create = json!({
            "from": [{"name": "Alice", "email": "alice@example.com"}],
            "to": [{"email": "bob@example.net"}],
            "bcc": [{"email": "hidden@example.org"}],
            "subject": "Hello",
            "header:X-Custom:asText": "yes",
            "textBody": [{"partId": "t", "type": "text/plain"}],
            "htmlBody": [{"partId": "h", "type": "text/html"}],
            "bodyValues": {"t": {"value": "plain body"}, "h": {"value": "<p>html body</p>"}},
            "attachments": [{"blobId": "B1", "type": "application/pdf", "name": "a.pdf"}],
        });
        let mime = build(
            create.as_object().unwrap(),
            |id| (id == "B1").then(|| b"%PDF-1".to_vec()),
            0,
            "mx.test",
        )
        .unwrap();
        let parsed = mail_parser::MessageParser::default().parse(&mime).unwrap();
        assert_eq!(parsed.subject(), Some("Hello"));
        assert_eq!(
            parsed.from().unwrap().first().unwrap().address(),
            Some("alice@example.com")
        );
        assert_eq!(
            parsed.bcc().unwrap().first().unwrap().address(),
            Some("hidden@example.org")
        );
        assert_eq!(parsed.body_text(0).unwrap(), "plain body");
        assert!(parsed.body_html(0).unwrap().contains("html body"));
        assert_eq!(parsed.attachment_count(), 1);
        assert_eq!(parsed.attachment(0).unwrap().contents(), b"%PDF-1");
    }

    #[test]
    fn refuses_bad_input() {
        for bad in [
            json!({"to": "bob@example.net"}),
            json!({"to": [{"email": "no-at-sign"}]}),
            json!({"to": [{"email": "a@b\r\nBcc: x@y"}]}),
            json!({"header:Content-Type": "text/evil"}),
            json!({"header:X-A": "one\r\nBcc: x@y"}),
            json!({"textBody": [{"partId": "t"}]}),
            json!({"bodyStructure": {}}),
            json!({"sentAt": "yesterday"}),
            json!({"attachments": [{"blobId": "nope"}]}),
        ] {
            assert!(
                build(bad.as_object().unwrap(), |_| None, 0, "mx.test").is_err(),
                "{bad}"
            );
        }
    }

    /// RFC 8621 §1.3.1: maxSizeAttachmentsPerEmail counts unencoded octets; attachments of
    /// exactly the advertised size, base64-encoded into a message with a body, still fit
    /// the message limit (issue 14 item 9: 41,943,040 was advertised and refused after base64).
    #[test]
    fn advertised_attachment_size_fits_after_base64() {
        let max_message = 1_000_000;
        let advertised = super::super::limits::attachments_per_email(max_message);
        let halves = [advertised / 2, advertised - advertised / 2];
        let create = json!({
            "from": [{"email": "alice@example.com"}], "to": [{"email": "b@example.net"}],
            "subject": "two big files", "bodyValues": {"t": {"value": "see attached"}},
            "textBody": [{"partId": "t", "type": "text/plain"}],
            "attachments": [
                {"blobId": "B0", "type": "application/octet-stream", "name": "a.bin"},
                {"blobId": "B1", "type": "application/octet-stream", "name": "b.bin"}],
        });
        let mime = build(
            create.as_object().unwrap(),
            |id| match id {
                "B0" => Some(vec![0xA5; halves[0]]),
                "B1" => Some(vec![0x5A; halves[1]]),
                _ => None,
            },
            0,
            "mx.test",
        )
        .unwrap();
        assert!(mime.len() <= max_message, "{} > {max_message}", mime.len());
        // And it is not needlessly small: within the overhead of the limit.
        assert!(mime.len() + 2 * super::super::limits::MESSAGE_OVERHEAD > max_message);
    }

    #[test]
    fn extreme_dates_build() {
        // Built or refused (invalidProperties), never a panic.
        for date in [
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "1969-12-31T23:59:59Z",
        ] {
            let create = json!({"sentAt": date, "subject": "x"});
            let _ = build(create.as_object().unwrap(), |_| None, 0, "mx.test");
        }
        let create = json!({"sentAt": "2030-06-01T12:00:00Z"});
        assert!(build(create.as_object().unwrap(), |_| None, 0, "mx.test").is_ok());
    }

    #[test]
    fn dates() {
        assert_eq!(parse_date("1970-01-01T00:00:10Z"), Some(10_000));
        assert_eq!(parse_date("1970-01-01T01:00:10+01:00"), Some(10_000));
        assert_eq!(parse_date("1970-01-01T00:00:10.250Z"), Some(10_000));
        assert_eq!(parse_date("not a date"), None);
    }
}
