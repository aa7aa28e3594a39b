//! The seed's rules for a new EmailSubmission, checked before anything is queued: the Email
//! must exist and fit, the identity must be the account's and cover the envelope sender, the
//! recipients must exist, be few enough, valid and not suppressed for the message class, and
//! `sendAt` must be within maxDelayedSend. Each refusal is an RFC 8621 §7.5 SetError.

use serde_json::{json, Map, Value};

use super::api::{invalid_properties, server_fail, set_error, Ctx};
use super::email::EmailMeta;
use super::identity::{covers, email_of};
use super::mime;
use super::store::T_EMAIL;
use crate::domain::MessageClass;

fn address_of(v: &Value) -> Option<String> {
    v.get("email").and_then(Value::as_str).map(str::to_string)
}

fn parameters_ok(v: &Value) -> bool {
    match v.get("parameters") {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => m.is_empty(),
        _ => false,
    }
}

/// Everything decided before the message goes to the submitter.
pub struct Plan {
    pub email_id: String,
    pub identity_id: String,
    pub mail_from: String,
    pub recipients: Vec<String>,
    pub mime: Vec<u8>,
    pub send_at: u64,
    pub release_at: Option<u64>,
    pub class: MessageClass,
    pub envelope: Value,
}

pub async fn plan(ctx: &Ctx<'_>, obj: &Map<String, Value>) -> Result<Plan, Value> {
    for k in obj.keys() {
        let ok = match k.as_str() {
            "emailId" | "identityId" | "envelope" | "sendAt" | "messageClass" => true,
            "undoStatus" => obj[k] == json!("pending"),
            _ => false,
        };
        if !ok {
            return Err(invalid_properties(
                &[k],
                format!("{k} cannot be set on create"),
            ));
        }
    }
    let jmap = ctx.jmap;
    let account = ctx.account;
    let email_ref = obj
        .get("emailId")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid_properties(&["emailId"], "emailId is required"))?;
    let email_id = ctx.resolve_id(email_ref).ok_or_else(|| {
        invalid_properties(&["emailId"], format!("unknown creation id {email_ref}"))
    })?;
    let identity_id = obj
        .get("identityId")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid_properties(&["identityId"], "identityId is required"))?;
    let identity = account.identity(identity_id).ok_or_else(|| {
        set_error(
            "forbiddenFrom",
            format!("identity {identity_id} is not this account's"),
        )
    })?;
    let rx = jmap.store.read().map_err(server_fail)?;
    let meta: EmailMeta = rx
        .get(&account.account_id, T_EMAIL, &email_id)
        .map_err(server_fail)?
        .ok_or_else(|| {
            json!({"type": "invalidEmail", "properties": ["emailId"],
            "description": format!("no Email {email_id}")})
        })?;
    if meta.size as usize > jmap.max_message_size {
        return Err(json!({"type": "tooLarge", "maxSize": jmap.max_message_size,
            "description": "the message is larger than the limit"}));
    }
    let mime = rx
        .blob(&account.account_id, &meta.blob_id)
        .map_err(server_fail)?
        .ok_or_else(|| set_error("invalidEmail", "the Email's message is missing"))?;
    drop(rx);
    let parsed = mail_parser::MessageParser::default()
        .parse_headers(&mime)
        .ok_or_else(|| set_error("invalidEmail", "the Email cannot be parsed"))?;
    let class = match obj.get("messageClass") {
        None | Some(Value::Null) => MessageClass::default(),
        Some(Value::String(c)) if MessageClass::parse(c).is_some_and(|p| p.as_str() == c) => {
            MessageClass::parse(c).unwrap_or_default()
        }
        _ => {
            return Err(invalid_properties(
                &["messageClass"],
                "messageClass must be transactional, mailing_list or bulk",
            ))
        }
    };
    let envelope = obj.get("envelope").filter(|v| !v.is_null());
    let (mail_from, recipients) = match envelope {
        Some(env) => {
            let from = env.get("mailFrom").ok_or_else(|| {
                invalid_properties(&["envelope"], "envelope needs mailFrom and rcptTo")
            })?;
            let rcpts = env
                .get("rcptTo")
                .and_then(Value::as_array)
                .ok_or_else(|| invalid_properties(&["envelope"], "envelope needs rcptTo"))?;
            if !parameters_ok(from) || !rcpts.iter().all(parameters_ok) {
                return Err(invalid_properties(
                    &["envelope"],
                    "SMTP parameters are not supported",
                ));
            }
            let from = address_of(from)
                .ok_or_else(|| invalid_properties(&["envelope"], "mailFrom needs an email"))?;
            let rcpts = rcpts
                .iter()
                .map(address_of)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| invalid_properties(&["envelope"], "each rcptTo needs an email"))?;
            (from, rcpts)
        }
        None => {
            // RFC 8621 §7: Sender, else From; recipients from To, Cc and Bcc.
            let from = parsed
                .sender()
                .or(parsed.from())
                .and_then(|a| a.first())
                .and_then(|a| a.address())
                .map(str::to_string)
                .ok_or_else(|| set_error("invalidEmail", "the Email has no From address"))?;
            let mut rcpts = Vec::new();
            for field in [parsed.to(), parsed.cc(), parsed.bcc()]
                .into_iter()
                .flatten()
            {
                for a in field.iter() {
                    if let Some(addr) = a.address() {
                        rcpts.push(addr.to_string());
                    }
                }
            }
            (from, rcpts)
        }
    };
    // What the transport can carry (RFC 6531 addresses not for SES; IDN domains as A-labels):
    // RFC 8621 §7.5 forbiddenMailFrom / invalidRecipients rather than a later failure.
    let addresses = jmap.submitter.address_policy();
    let mail_from = addresses.envelope(&mail_from).map_err(|e| {
        set_error(
            "forbiddenMailFrom",
            format!("{mail_from} cannot be used: {e}"),
        )
    })?;
    if !mime::valid_address(&mail_from) || !covers(identity, &mail_from) {
        return Err(set_error(
            "forbiddenFrom",
            format!(
                "{mail_from} may not be sent from identity {} ({})",
                identity.id,
                email_of(identity)
            ),
        ));
    }
    let mut uncarried = Vec::new();
    let recipients: Vec<String> = recipients
        .into_iter()
        .filter_map(|r| match addresses.envelope(&r) {
            Ok(a) => Some(a),
            Err(_) => {
                uncarried.push(r);
                None
            }
        })
        .collect();
    if !uncarried.is_empty() {
        return Err(
            json!({"type": "invalidRecipients", "invalidRecipients": uncarried,
            "description": "non-ASCII addresses cannot be sent through this server's transport (no SMTPUTF8)"}),
        );
    }
    let mut unique: Vec<String> = Vec::new();
    for r in recipients {
        if !unique.iter().any(|u| u.eq_ignore_ascii_case(&r)) {
            unique.push(r);
        }
    }
    if unique.is_empty() {
        return Err(set_error("noRecipients", "the message has no recipients"));
    }
    if unique.len() > jmap.max_recipients {
        return Err(
            json!({"type": "tooManyRecipients", "maxRecipients": jmap.max_recipients,
            "description": format!("at most {} recipients per message", jmap.max_recipients)}),
        );
    }
    let invalid: Vec<&String> = unique.iter().filter(|r| !mime::valid_address(r)).collect();
    if !invalid.is_empty() {
        return Err(
            json!({"type": "invalidRecipients", "invalidRecipients": invalid,
            "description": "invalid recipient addresses"}),
        );
    }
    match jmap
        .spool
        .ledger
        .suppressed_among(&unique, &account.account_id, class.as_str())
        .await
    {
        Ok(found) => {
            if let Some((r, s)) = found.into_iter().next() {
                return Err(set_error(
                    "forbiddenToSend",
                    format!(
                        "{r} is on the suppression list for {class} mail: {}",
                        s.reason
                    ),
                ));
            }
        }
        Err(e) => return Err(server_fail(e)),
    }
    let now = jmap.now_ms();
    let (send_at, release_at) = match obj.get("sendAt") {
        None | Some(Value::Null) => (now, None),
        Some(Value::String(s)) => {
            let t = mime::parse_date(s)
                .ok_or_else(|| invalid_properties(&["sendAt"], "sendAt must be a UTCDate"))?;
            let t = t.max(0) as u64;
            if t > now + jmap.max_hold_secs * 1000 {
                return Err(invalid_properties(
                    &["sendAt"],
                    format!(
                        "sendAt is further than maxDelayedSend ({} s)",
                        jmap.max_hold_secs
                    ),
                ));
            }
            if t > now {
                (t, Some(t))
            } else {
                (now, None)
            }
        }
        _ => return Err(invalid_properties(&["sendAt"], "sendAt must be a UTCDate")),
    };
    let envelope = json!({
        "mailFrom": {"email": mail_from, "parameters": null},
        "rcptTo": unique.iter().map(|r| json!({"email": r, "parameters": null})).collect::<Vec<_>>(),
    });
    Ok(Plan {
        email_id,
        identity_id: identity.id.clone(),
        mail_from,
        recipients: unique,
        mime,
        send_at,
        release_at,
        class,
        envelope,
    })
}
