//! The SES mailbox simulator, offline: with the `dir` transport, a message to
//! `success@`, `bounce@`, `ooto@`, `complaint@` or `suppressionlist@simulator.amazonses.com`
//! (a `+label` is allowed, as with SES) produces the events SES would publish for it, in SES's
//! own configuration-set event format with our tags, and they take the same path as real
//! feedback ([`FeedbackService::event`]): parse, one durable spool transaction, suppressions,
//! metrics. So the whole lifecycle — delivered, bounced, complained, suppressed — can be seen
//! without an AWS account.

use std::sync::Arc;

use serde_json::{json, Value};

use super::service::FeedbackService;
use crate::clock::rfc3339;
use crate::sender::SentNotice;

pub const DOMAIN: &str = "simulator.amazonses.com";

pub struct Simulator {
    service: Arc<FeedbackService>,
}

impl Simulator {
    pub fn new(service: Arc<FeedbackService>) -> Arc<Self> {
        Arc::new(Simulator { service })
    }

    /// Called after a message was handed to the transport: publishes, in the background, the
    /// events SES would for each simulator recipient (others get none: a directory knows
    /// nothing of delivery).
    pub fn sent(self: &Arc<Self>, notice: SentNotice) {
        let payloads = payloads(&notice);
        if payloads.is_empty() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            for (n, payload) in payloads.into_iter().enumerate() {
                let dedupe = format!("simulator:{}:{n}", notice.provider_id);
                let result = this.service.event(Some(dedupe), &payload.to_string()).await;
                this.service.count(&result);
                if let Err(e) = result {
                    tracing::error!(id = %notice.job.id, error = %e, "simulated feedback failed");
                }
            }
        });
    }
}

/// What a simulator mailbox does with a message, if `address` is one.
fn mailbox(address: &str) -> Option<&'static str> {
    let (local, domain) = address.rsplit_once('@')?;
    if !domain.eq_ignore_ascii_case(DOMAIN) {
        return None;
    }
    let local = local
        .split('+')
        .next()
        .unwrap_or(local)
        .to_ascii_lowercase();
    ["success", "bounce", "ooto", "complaint", "suppressionlist"]
        .into_iter()
        .find(|m| *m == local)
}

/// The SES event payloads for one sent message, in the order SES would publish them.
fn payloads(notice: &SentNotice) -> Vec<Value> {
    let now = rfc3339(notice.at_ms);
    let tags: serde_json::Map<String, Value> = notice
        .tags
        .iter()
        .map(|(k, v)| (k.clone(), json!([v])))
        .collect();
    let mail = json!({
        "timestamp": now,
        "source": notice.job.mail_from,
        "messageId": notice.provider_id,
        "destination": notice.recipients,
        "tags": tags,
    });
    let delivery = |rcpt: &str, response: &str| {
        json!({"eventType": "Delivery", "mail": mail, "delivery": {
            "timestamp": now, "recipients": [rcpt], "smtpResponse": response,
            "reportingMTA": "simulator.amazonses.com", "processingTimeMillis": 0}})
    };
    let bounce = |rcpt: &str, subtype: &str, diagnostic: &str| {
        json!({"eventType": "Bounce", "mail": mail, "bounce": {
            "bounceType": "Permanent", "bounceSubType": subtype, "timestamp": now,
            "feedbackId": format!("{}-{rcpt}", notice.provider_id),
            "bouncedRecipients": [{"emailAddress": rcpt, "action": "failed", "status": "5.1.1",
                                    "diagnosticCode": diagnostic}]}})
    };
    let mut out = Vec::new();
    for rcpt in &notice.recipients {
        match mailbox(rcpt) {
            Some("success") => out.push(delivery(rcpt, "250 2.6.0 Message received")),
            // SES delivers it; the auto-reply goes to the sender. Not a bounce.
            Some("ooto") => out.push(delivery(
                rcpt,
                "250 2.6.0 Message received (the recipient's out-of-office reply goes to the sender)",
            )),
            Some("bounce") => out.push(bounce(
                rcpt,
                "General",
                "smtp; 550 5.1.1 user unknown (SES mailbox simulator)",
            )),
            Some("suppressionlist") => out.push(bounce(
                rcpt,
                "OnAccountSuppressionList",
                "Amazon SES did not send the message to this address because it is on the suppression list for your account.",
            )),
            Some("complaint") => {
                out.push(delivery(rcpt, "250 2.6.0 Message received"));
                out.push(json!({"eventType": "Complaint", "mail": mail, "complaint": {
                    "timestamp": now, "feedbackId": format!("{}-c", notice.provider_id),
                    "complaintFeedbackType": "abuse",
                    "complainedRecipients": [{"emailAddress": rcpt}]}}));
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulator_addresses_allow_a_label_and_nothing_else() {
        assert_eq!(mailbox("success@simulator.amazonses.com"), Some("success"));
        assert_eq!(mailbox("Bounce+x1@Simulator.AmazonSES.com"), Some("bounce"));
        assert_eq!(mailbox("bounce@example.com"), None);
        assert_eq!(mailbox("nobody@simulator.amazonses.com"), None);
        assert_eq!(mailbox("no-at-sign"), None);
    }
}
