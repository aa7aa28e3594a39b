//! SES event payloads → [`FeedbackEvent`]s the spool applies. Pure: no I/O, no clock.
//!
//! Two shapes arrive: configuration-set event publishing (`eventType`, with `mail.tags`, which
//! carry our `submission_id`, `account_id` and `message_class`) and identity notifications
//! (`notificationType`, no tags: matched by `mail.messageId` alone). Both share `mail` and the
//! per-type objects (`bounce`, `complaint`, `delivery`, `deliveryDelay`, `reject`).
//!
//! What becomes what:
//! - `Delivery` → delivered, with the remote MTA's `smtpResponse`;
//! - `Bounce` → bounced, with type/subtype and each recipient's diagnostic; `Permanent`
//!   bounces suppress the recipient (for the submission's account and class); `Transient`
//!   (SES gave up: mailbox full, too large, content rejected) and `Undetermined` do not.
//!   Nothing is ever re-sent because of a bounce (an auto-responder's reply is not a bounce,
//!   and SES reports it as neither);
//! - `Complaint` → complained and suppressed; with the feedback type `not-spam` (RFC 5965
//!   §7.3) it is recorded as not_spam for the recipient and neither complains nor suppresses;
//! - `DeliveryDelay` → delayed (ranks below everything, so it never hides an outcome);
//! - `Reject` → rejected for every recipient (SES refused the message after accepting it);
//! - `Send`, `Open`, `Click`, `Rendering Failure`, `Subscription`: acknowledged, not applied.

use serde_json::Value;

use crate::domain::{FeedbackEvent, Outcome, QueueId};

/// How long feedback suppressions last, in milliseconds (`None`: until removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuppressionPolicy {
    pub bounce_ms: Option<u64>,
    pub complaint_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an SES event: {0}")]
pub struct NotAnEvent(pub String);

/// The event type name, whichever shape the payload has.
pub fn event_type(v: &Value) -> Option<&str> {
    v.get("eventType")
        .or_else(|| v.get("notificationType"))
        .and_then(Value::as_str)
}

/// Parses one SES event (the SNS `Message`, or a raw SQS body) into what the spool applies.
/// An event type we do not act on gives an empty list.
pub fn events(payload: &str, policy: SuppressionPolicy) -> Result<Vec<FeedbackEvent>, NotAnEvent> {
    let v: Value =
        serde_json::from_str(payload).map_err(|e| NotAnEvent(format!("not JSON: {e}")))?;
    let kind = event_type(&v)
        .ok_or_else(|| NotAnEvent("no eventType or notificationType".into()))?
        .to_owned();
    let mail = v
        .get("mail")
        .filter(|m| m.is_object())
        .ok_or_else(|| NotAnEvent("no mail object".into()))?;
    let provider_id = mail
        .get("messageId")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| NotAnEvent("no mail.messageId".into()))?
        .to_owned();
    let tag = |name: &str| -> Option<String> {
        mail.get("tags")?
            .get(name)?
            .as_array()?
            .first()?
            .as_str()
            .map(str::to_owned)
    };
    let submission_id = tag("submission_id").and_then(|s| s.parse::<QueueId>().ok());
    let object = |name: &str| -> Result<&Value, NotAnEvent> {
        v.get(name)
            .filter(|o| o.is_object())
            .ok_or_else(|| NotAnEvent(format!("{kind} without a {name} object")))
    };
    let mail_ms = mail.get("timestamp").and_then(Value::as_str).and_then(ms);
    let at = |o: &Value| {
        o.get("timestamp")
            .and_then(Value::as_str)
            .and_then(ms)
            .or(mail_ms)
            .unwrap_or(0)
    };
    let base = FeedbackEvent {
        provider_id: Some(provider_id),
        submission_id,
        outcome: Outcome::Delivered,
        recipients: Vec::new(),
        detail: None,
        at_ms: 0,
        tag_account: tag("account_id"),
        tag_class: tag("message_class"),
        suppress: None,
    };
    let mut out = Vec::new();
    match kind.as_str() {
        "Delivery" => {
            let d = object("delivery")?;
            out.push(FeedbackEvent {
                outcome: Outcome::Delivered,
                recipients: strings(d.get("recipients")),
                detail: text(d, "smtpResponse"),
                at_ms: at(d),
                ..base
            });
        }
        "Bounce" => {
            let b = object("bounce")?;
            let bounce_type = text(b, "bounceType").unwrap_or_else(|| "Undetermined".into());
            let subtype = text(b, "bounceSubType").unwrap_or_else(|| "Undetermined".into());
            let at_ms = at(b);
            let permanent = bounce_type == "Permanent";
            // One event per recipient: each has its own diagnostic.
            for r in array(b.get("bouncedRecipients")) {
                let Some(address) = r.get("emailAddress").and_then(Value::as_str) else {
                    continue;
                };
                let diagnostic = text(r, "diagnosticCode")
                    .or_else(|| text(r, "status"))
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default();
                let detail = format!("{bounce_type}/{subtype}{diagnostic}");
                out.push(FeedbackEvent {
                    outcome: Outcome::Bounced,
                    recipients: vec![address.to_owned()],
                    suppress: permanent.then(|| (format!("bounce {detail}"), policy.bounce_ms)),
                    detail: Some(detail),
                    at_ms,
                    ..base.clone()
                });
            }
            if out.is_empty() {
                return Err(NotAnEvent("Bounce without bouncedRecipients".into()));
            }
        }
        "Complaint" => {
            let c = object("complaint")?;
            let feedback_type = text(c, "complaintFeedbackType");
            let at_ms = at(c);
            let detail = format!(
                "complaint{}{}",
                feedback_type
                    .as_deref()
                    .map(|t| format!(" ({t})"))
                    .unwrap_or_default(),
                text(c, "complaintSubType")
                    .map(|t| format!(" {t}"))
                    .unwrap_or_default()
            );
            let not_spam = feedback_type.as_deref() == Some("not-spam");
            let recipients: Vec<String> = array(c.get("complainedRecipients"))
                .filter_map(|r| r.get("emailAddress").and_then(Value::as_str))
                .map(str::to_owned)
                .collect();
            if recipients.is_empty() {
                return Err(NotAnEvent("Complaint without complainedRecipients".into()));
            }
            out.push(FeedbackEvent {
                outcome: if not_spam {
                    Outcome::NotSpam
                } else {
                    Outcome::Complained
                },
                recipients,
                suppress: (!not_spam).then(|| (detail.clone(), policy.complaint_ms)),
                detail: Some(detail),
                at_ms,
                ..base
            });
        }
        "DeliveryDelay" => {
            let d = object("deliveryDelay")?;
            let delay_type = text(d, "delayType").unwrap_or_default();
            for r in array(d.get("delayedRecipients")) {
                let Some(address) = r.get("emailAddress").and_then(Value::as_str) else {
                    continue;
                };
                let diagnostic = text(r, "diagnosticCode")
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default();
                out.push(FeedbackEvent {
                    outcome: Outcome::Delayed,
                    recipients: vec![address.to_owned()],
                    detail: Some(format!("{delay_type}{diagnostic}")),
                    at_ms: at(d),
                    ..base.clone()
                });
            }
        }
        "Reject" => {
            let r = object("reject")?;
            out.push(FeedbackEvent {
                outcome: Outcome::Rejected,
                // Every recipient of the submission.
                recipients: Vec::new(),
                detail: Some(format!(
                    "rejected by SES: {}",
                    text(r, "reason").unwrap_or_default()
                )),
                at_ms: mail_ms.unwrap_or(0),
                ..base
            });
        }
        "Send" | "Open" | "Click" | "Rendering Failure" | "Subscription" => {}
        other => return Err(NotAnEvent(format!("unknown event type {other:?}"))),
    }
    Ok(out)
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn array(v: Option<&Value>) -> impl Iterator<Item = &Value> {
    v.and_then(Value::as_array).into_iter().flatten()
}

fn strings(v: Option<&Value>) -> Vec<String> {
    array(v)
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

/// RFC 3339 timestamp → Unix milliseconds.
pub fn ms(s: &str) -> Option<u64> {
    let secs = super::sns::parse_timestamp(s)?;
    let millis = s
        .get(19..)
        .and_then(|t| t.strip_prefix('.'))
        .map(|t| {
            let digits: String = t
                .chars()
                .take_while(char::is_ascii_digit)
                .chain("000".chars())
                .take(3)
                .collect();
            digits.parse::<u64>().unwrap_or(0)
        })
        .unwrap_or(0);
    u64::try_from(secs).ok().map(|s| s * 1000 + millis)
}

#[cfg(test)]
mod tests;
