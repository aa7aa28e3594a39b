//! `bodyStructure` on Email/set create (RFC 8621 §4.6): the client gives the whole MIME tree as
//! EmailBodyParts instead of `textBody`/`htmlBody`/`attachments` (§7.5.2's own example does,
//! and so does jmap-client-ts). Each part is exactly one of: a `partId` naming a `bodyValues`
//! entry (text, sent as UTF-8), a `blobId` of an uploaded blob, or `subParts` (a multipart).
//! `disposition`, `name`, `cid`, `language` and `location` become the part's headers; the
//! transfer encoding is ours to choose (§4.6: a client must not set it).

use std::borrow::Cow;

use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::{BodyPart, MimePart};
use serde_json::{Map, Value};

use super::api::invalid_properties;

type SetError = Value;

/// Nesting deeper than this is refused (real messages stay within a handful of levels).
const MAX_DEPTH: usize = 16;

/// EmailBodyPart properties a create may give; `size` and `headers` (when empty) are ignored.
const KNOWN: [&str; 11] = [
    "partId",
    "blobId",
    "type",
    "charset",
    "disposition",
    "cid",
    "language",
    "location",
    "name",
    "subParts",
    "size",
];

/// The MIME tree for `create["bodyStructure"]`.
pub fn build(
    create: &Map<String, Value>,
    blob: &dyn Fn(&str) -> Option<Vec<u8>>,
) -> Result<MimePart<'static>, SetError> {
    for other in ["textBody", "htmlBody", "attachments"] {
        if create.get(other).is_some_and(|v| !v.is_null()) {
            return Err(invalid_properties(
                &["bodyStructure", other],
                format!("give bodyStructure or {other}, not both (RFC 8621 §4.6)"),
            ));
        }
    }
    let root = &create["bodyStructure"];
    part(root, create, blob, 0)
}

fn bad(text: impl Into<String>) -> SetError {
    invalid_properties(&["bodyStructure"], text)
}

fn part(
    v: &Value,
    create: &Map<String, Value>,
    blob: &dyn Fn(&str) -> Option<Vec<u8>>,
    depth: usize,
) -> Result<MimePart<'static>, SetError> {
    if depth > MAX_DEPTH {
        return Err(bad(format!("bodyStructure nests deeper than {MAX_DEPTH}")));
    }
    let obj = v
        .as_object()
        .ok_or_else(|| bad("each part must be an EmailBodyPart object"))?;
    for (k, value) in obj {
        let empty_headers = k == "headers" && value.as_array().is_none_or(|a| a.is_empty());
        if !KNOWN.contains(&k.as_str()) && !empty_headers && !value.is_null() {
            return Err(bad(format!(
                "EmailBodyPart property {k} is not supported on create (headers come from the other properties)"
            )));
        }
    }
    let text = |k: &str| obj.get(k).and_then(Value::as_str);
    let one_line = |s: &str| !s.contains(['\r', '\n', '"']);
    let kind = text("type").filter(|t| t.contains('/') && one_line(t) && !t.contains(';'));
    if text("type").is_some() && kind.is_none() {
        return Err(bad("type must be a media type without parameters"));
    }
    let sources = ["partId", "blobId", "subParts"]
        .iter()
        .filter(|k| obj.get(**k).is_some_and(|v| !v.is_null()))
        .count();
    if sources != 1 {
        return Err(bad(
            "each part needs exactly one of partId, blobId or subParts",
        ));
    }
    let mut mime = if let Some(subparts) = obj.get("subParts").filter(|v| !v.is_null()) {
        let kind = kind.unwrap_or("multipart/mixed");
        if !kind.to_ascii_lowercase().starts_with("multipart/") {
            return Err(bad("a part with subParts must be multipart/*"));
        }
        let children = subparts
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| bad("subParts must be a non-empty list"))?
            .iter()
            .map(|c| part(c, create, blob, depth + 1))
            .collect::<Result<Vec<_>, _>>()?;
        MimePart::new(
            ContentType::new(kind.to_string()),
            BodyPart::Multipart(children),
        )
    } else if let Some(part_id) = text("partId") {
        // §4.6: charset must be omitted with partId; the value is sent as UTF-8.
        if obj.get("charset").is_some_and(|c| !c.is_null()) {
            return Err(bad("charset must be omitted when partId is given"));
        }
        let kind = kind.unwrap_or("text/plain");
        if !kind.to_ascii_lowercase().starts_with("text/") {
            return Err(bad("a partId part must be text/*"));
        }
        let value = super::mime::body_value(create, part_id)?;
        let ct = ContentType::new(kind.to_string()).attribute("charset", "utf-8");
        MimePart::new(ct, BodyPart::Text(Cow::Owned(value.to_string())))
    } else {
        let blob_id = text("blobId").ok_or_else(|| bad("blobId must be a string"))?;
        let bytes = blob(blob_id).ok_or_else(|| {
            serde_json::json!({"type": "blobNotFound", "notFound": [blob_id],
                "description": format!("no blob {blob_id}")})
        })?;
        let mut ct = ContentType::new(kind.unwrap_or("application/octet-stream").to_string());
        if let Some(charset) = text("charset").filter(|c| one_line(c) && !c.contains(';')) {
            ct = ct.attribute("charset", charset.to_string());
        }
        if let Some(name) = text("name") {
            ct = ct.attribute("name", name.replace(['\r', '\n', '"'], "_"));
        }
        MimePart::new(ct, BodyPart::Binary(Cow::Owned(bytes)))
    };
    match text("disposition").map(str::to_ascii_lowercase).as_deref() {
        None => {}
        Some("attachment") => {
            mime = mime.attachment(
                text("name")
                    .unwrap_or("attachment")
                    .replace(['\r', '\n', '"'], "_"),
            )
        }
        Some("inline") => mime = mime.inline(),
        Some(_) => return Err(bad("disposition must be inline or attachment")),
    }
    if let Some(cid) = text("cid") {
        mime = mime.cid(cid.replace(['\r', '\n', '<', '>'], ""));
    }
    if let Some(location) = text("location").filter(|l| one_line(l)) {
        mime = mime.location(location.to_string());
    }
    if let Some(langs) = obj.get("language").and_then(Value::as_array) {
        let langs: Vec<&str> = langs
            .iter()
            .filter_map(Value::as_str)
            .filter(|l| one_line(l))
            .collect();
        if !langs.is_empty() {
            mime = mime.header("Content-Language", Raw::new(langs.join(", ")));
        }
    }
    Ok(mime)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::MimeHeaders;
    use serde_json::json;

    fn mime_of(create: Value) -> Result<String, Value> {
        let create = create.as_object().unwrap().clone();
        let blob = |id: &str| (id == "Bpng").then(|| b"\x89PNG\r\n\x1a\n".to_vec());
        let part = build(&create, &blob)?;
        let mut out = Vec::new();
        part.write_part(&mut out);
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// RFC 8621 §4.6 / §7.5.2 shapes: alternative of partIds, nested in mixed with an inline
    /// image (cid) and an attachment from a blob.
    #[test]
    fn nested_multipart_blob_and_inline_parts() {
        let out = mime_of(json!({
            "bodyValues": {"t": {"value": "Hi Jane"}, "h": {"value": "<p>Hi <img src=\"cid:logo\"></p>"}},
            "bodyStructure": {"type": "multipart/mixed", "subParts": [
                {"type": "multipart/related", "subParts": [
                    {"type": "multipart/alternative", "subParts": [
                        {"partId": "t", "type": "text/plain"},
                        {"partId": "h", "type": "text/html"}]},
                    {"blobId": "Bpng", "type": "image/png", "disposition": "inline", "cid": "logo"}]},
                {"blobId": "Bpng", "type": "image/png", "disposition": "attachment", "name": "logo.png"}]}
        }))
        .unwrap();
        let parsed = mail_parser::MessageParser::default()
            .parse(out.as_bytes())
            .unwrap();
        assert_eq!(parsed.body_text(0).as_deref(), Some("Hi Jane"), "{out}");
        assert!(parsed.body_html(0).unwrap().contains("cid:logo"), "{out}");
        let names: Vec<_> = parsed.attachments().map(|a| a.attachment_name()).collect();
        assert!(names.contains(&Some("logo.png")), "{out}");
        assert!(
            out.contains("multipart/related") && out.contains("Content-ID: <logo>"),
            "{out}"
        );
        assert!(
            out.to_ascii_lowercase()
                .contains("content-disposition: inline"),
            "{out}"
        );
    }

    #[test]
    fn refusals() {
        for bad in [
            json!({"bodyStructure": {"partId": "t", "type": "text/plain"}, "textBody": []}),
            json!({"bodyStructure": {"type": "text/plain"}}),
            json!({"bodyStructure": {"partId": "t", "blobId": "Bpng"}}),
            json!({"bodyStructure": {"partId": "nope"}}),
            json!({"bodyStructure": {"partId": "t", "charset": "latin1"}, "bodyValues": {"t": {"value": "x"}}}),
            json!({"bodyStructure": {"type": "text/plain", "subParts": [{"partId": "t"}]}, "bodyValues": {"t": {"value": "x"}}}),
            json!({"bodyStructure": {"blobId": "Bmissing"}}),
            json!({"bodyStructure": {"partId": "t", "headers": [{"name": "Content-Transfer-Encoding", "value": "base64"}]}, "bodyValues": {"t": {"value": "x"}}}),
        ] {
            assert!(mime_of(bad.clone()).is_err(), "{bad}");
        }
    }
}
