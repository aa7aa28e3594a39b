//! The seed's rules for a new EmailSubmission, checked before anything is queued: the Email
//! must exist and fit, the identity must be the account's and cover the envelope sender, the
//! recipients must exist, be few enough, valid and not all suppressed for the message class, and
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

/// An Address's SMTP `parameters` (RFC 8621 §7: `String[String|null]|null`).
fn parameters(v: &Value) -> Result<Map<String, Value>, Value> {
    match v.get("parameters") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) if m.values().all(|v| v.is_string() || v.is_null()) => Ok(m.clone()),
        _ => Err(invalid_properties(
            &["envelope"],
            "parameters must be an object of strings or nulls",
        )),
    }
}

/// RFC 4865 FUTURERELEASE on `envelope.mailFrom.parameters`: RFC 8621 §7 carries SMTP
/// parameters in the envelope and §1.3.2 tells clients the `submissionExtensions` we advertise
/// are what they may use — FUTURERELEASE is the one we do. `HOLDFOR` is 1–9 digits of seconds,
/// `HOLDUNTIL` an RFC 3339 date-time (RFC 4865 §3), at most one, within `max_hold_secs`; a time
/// already past releases at once, as over SMTP. The release time in ms, if any.
fn future_release(
    params: &Map<String, Value>,
    now: u64,
    max_hold_secs: u64,
) -> Result<Option<u64>, Value> {
    let bad = |text: String| invalid_properties(&["envelope"], text);
    let mut release = None;
    for (name, value) in params {
        let value = value.as_str();
        let at = match (name.to_ascii_uppercase().as_str(), value) {
            _ if release.is_some() => {
                return Err(bad("give HOLDFOR or HOLDUNTIL, not both".into()))
            }
            ("HOLDFOR" | "HOLDUNTIL", _) if max_hold_secs == 0 => {
                return Err(bad("FUTURERELEASE is not offered".into()))
            }
            ("HOLDFOR", Some(v))
                if (1..=9).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit()) =>
            {
                now + v.parse::<u64>().unwrap_or(0) * 1000 // at most 999,999,999 s
            }
            ("HOLDUNTIL", Some(v)) => match mime::parse_date(v) {
                Some(t) => (t.max(0) as u64).max(now),
                None => return Err(bad(format!("HOLDUNTIL {v:?} is not an RFC 3339 date-time"))),
            },
            ("HOLDFOR", _) => return Err(bad("HOLDFOR takes 1 to 9 digits of seconds".into())),
            _ => {
                return Err(bad(format!(
                    "SMTP parameter {name} is not supported (submissionExtensions lists those that are)"
                )))
            }
        };
        if at > now + max_hold_secs * 1000 {
            return Err(bad(format!(
                "hold longer than maxDelayedSend ({max_hold_secs} s)"
            )));
        }
        release = Some(at);
    }
    Ok(release)
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
    let mut mail_params = Map::new();
    let (mail_from, recipients) = match envelope {
        Some(env) => {
            let from = env.get("mailFrom").ok_or_else(|| {
                invalid_properties(&["envelope"], "envelope needs mailFrom and rcptTo")
            })?;
            let rcpts = env
                .get("rcptTo")
                .and_then(Value::as_array)
                .ok_or_else(|| invalid_properties(&["envelope"], "envelope needs rcptTo"))?;
            mail_params = parameters(from)?;
            for rcpt in rcpts {
                if !parameters(rcpt)?.is_empty() {
                    return Err(invalid_properties(
                        &["envelope"],
                        "no RCPT TO parameters are supported (submissionExtensions lists those that are)",
                    ));
                }
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
        // Per recipient: a suppressed one is left out and shows as not delivered in the
        // submission's deliveryStatus (RFC 8621 §7: `delivered: "no"`, with the reason in
        // `smtpReply`); the submission is refused only when nobody is left to send to.
        Ok(found) if found.len() < unique.len() => {}
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
    let held = future_release(&mail_params, now, jmap.max_hold_secs)?;
    let (send_at, release_at) = match obj.get("sendAt") {
        // RFC 8621 §7: sendAt is when the server will release it (FUTURERELEASE), else now.
        None | Some(Value::Null) => match held {
            Some(t) if t > now => (t, Some(t)),
            _ => (now, None),
        },
        Some(_) if held.is_some() => {
            return Err(invalid_properties(
                &["sendAt", "envelope"],
                "give sendAt or HOLDFOR/HOLDUNTIL, not both",
            ))
        }
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
        "mailFrom": {"email": mail_from,
            "parameters": if mail_params.is_empty() { Value::Null } else { Value::Object(mail_params) }},
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

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8621 §7 / RFC 4865 §3: FUTURERELEASE parameters on envelope.mailFrom.
    #[test]
    fn future_release_parameters() {
        let now = 1_800_000_000_000;
        let max = 3600;
        let run = |p: Value| future_release(p.as_object().unwrap(), now, max);
        assert_eq!(run(json!({})), Ok(None));
        assert_eq!(run(json!({"HOLDFOR": "60"})), Ok(Some(now + 60_000)));
        assert_eq!(run(json!({"holdfor": "3600"})), Ok(Some(now + 3_600_000)));
        // 1_800_000_000 s is 2027-01-15T08:00:00Z; offsets are RFC 3339's too.
        assert_eq!(
            run(json!({"HOLDUNTIL": "2027-01-15T08:30:00Z"})),
            Ok(Some(now + 1_800_000))
        );
        assert_eq!(
            run(json!({"HOLDUNTIL": "2027-01-15T09:30:00+01:00"})),
            Ok(Some(now + 1_800_000))
        );
        // Already past: at once.
        assert_eq!(
            run(json!({"HOLDUNTIL": "2020-01-01T00:00:00Z"})),
            Ok(Some(now))
        );
        for bad in [
            json!({"HOLDFOR": "3601"}),
            json!({"HOLDFOR": "1234567890"}),
            json!({"HOLDFOR": "-5"}),
            json!({"HOLDFOR": null}),
            json!({"HOLDUNTIL": "tomorrow"}),
            json!({"HOLDUNTIL": "2027-01-15T10:00:01Z"}),
            json!({"HOLDFOR": "5", "HOLDUNTIL": "2027-01-15T08:30:00Z"}),
            json!({"NOTIFY": "NEVER"}),
        ] {
            let err = run(bad.clone()).expect_err(&bad.to_string());
            assert_eq!(err["type"], "invalidProperties", "{bad}");
        }
        let off = future_release(json!({"HOLDFOR": "5"}).as_object().unwrap(), now, 0);
        assert!(off.is_err(), "not offered when maxDelayedSend is 0");
    }
}
