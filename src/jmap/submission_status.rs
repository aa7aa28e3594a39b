//! What a client sees of a submission's progress: `undoStatus` and per-recipient
//! `deliveryStatus` (RFC 8621 §7), read from the spool record, which SES feedback fills.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::domain::{Outcome, QueueId, State, SubmissionRecord};

/// What the JMAP store keeps per EmailSubmission: only what was last shown to clients. The
/// submission itself — Email, identity, envelope, sendAt, status — is the ledger record with
/// its JMAP link, written in the same write that queued the message.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SubmissionView {
    /// Drafts → Sent has been applied (or is no longer wanted).
    #[serde(default)]
    pub settled: bool,
    /// Hash of the undoStatus and deliveryStatus last published: a ledger change that leaves
    /// them as they were (a lease, a retry) does not bump the EmailSubmission state.
    #[serde(default)]
    pub view: u64,
    /// The client destroyed the EmailSubmission (the send goes on, RFC 8621 §7.5).
    #[serde(default)]
    pub destroyed: bool,
}

/// A fingerprint of what a client sees change on a submission.
pub fn view_hash(record: &SubmissionRecord) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    undo_status(record).hash(&mut h);
    delivery_status(record).to_string().hash(&mut h);
    h.finish()
}

pub fn undo_status(record: &SubmissionRecord) -> &'static str {
    match record.state {
        // A cancel that raced a send in progress loses: the message went.
        s if s.was_sent() => "final",
        _ if record.canceled => "canceled",
        State::Queued | State::Held => "pending",
        _ => "final",
    }
}

/// RFC 8621 §7: per-recipient `{smtpReply, delivered, displayed}` from the ledger record.
pub fn delivery_status(r: &SubmissionRecord) -> Value {
    let mut out = Map::new();
    for rcpt in &r.job.recipients {
        let reported = r.delivery.get(&rcpt.to_lowercase());
        let (delivered, reply) = match (r.state, reported) {
            (_, Some(s)) => {
                let detail = s.detail.clone().unwrap_or_default();
                match s.outcome {
                    Outcome::Delayed => ("queued", format!("451 4.4.7 delivery delayed {detail}")),
                    Outcome::Delivered => ("yes", format!("250 2.0.0 delivered {detail}")),
                    Outcome::NotSpam => (
                        "yes",
                        format!("250 2.0.0 delivered; reported as not spam {detail}"),
                    ),
                    // A complaint follows a delivery: the recipient has it.
                    Outcome::Complained => (
                        "yes",
                        format!("250 2.0.0 delivered; the recipient complained {detail}"),
                    ),
                    Outcome::Suppressed => ("no", format!("550 5.7.1 not sent: {detail}")),
                    Outcome::Rejected => {
                        ("no", format!("554 5.7.1 rejected by the provider {detail}"))
                    }
                    Outcome::Bounced => ("no", format!("550 5.1.1 bounced {detail}")),
                }
            }
            (State::Queued | State::Held, None) if r.canceled => {
                ("no", "554 5.0.0 canceled".to_string())
            }
            (State::Queued | State::Held, None) => (
                "queued",
                match &r.last_error {
                    Some(e) => format!("451 4.0.0 will retry: {e}"),
                    None => "250 2.0.0 queued".to_string(),
                },
            ),
            // Handed to the provider; its report (if feedback is set up) changes this.
            (s, None) if s.was_sent() => (
                "unknown",
                format!(
                    "250 2.0.0 accepted by the provider {}",
                    r.provider_id.clone().unwrap_or_default()
                ),
            ),
            (_, None) => (
                "no",
                format!(
                    "554 5.0.0 {}",
                    if r.canceled {
                        "canceled".to_string()
                    } else {
                        r.last_error.clone().unwrap_or_else(|| "not sent".into())
                    }
                ),
            ),
        };
        out.insert(
            rcpt.clone(),
            json!({"smtpReply": reply.trim_end(), "delivered": delivered, "displayed": "unknown"}),
        );
    }
    Value::Object(out)
}

/// A submission id is the queue id's text.
pub fn queue_id(id: &str) -> Option<QueueId> {
    id.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Job, MessageClass, RecipientStatus};

    fn record(state: State, rcpts: &[&str]) -> SubmissionRecord {
        let job = Job {
            id: QueueId(1),
            login: "alice".into(),
            tenant_id: "t".into(),
            account_id: "a".into(),
            user_id: "u".into(),
            identity_id: "i".into(),
            mail_from: "alice@example.com".into(),
            recipients: rcpts.iter().map(|r| r.to_string()).collect(),
            message_class: MessageClass::Transactional,
            size: 1,
        };
        let mut r = SubmissionRecord::queued(job, 0, 0, None);
        r.state = state;
        r.provider_id = Some("ses-1".into());
        r
    }

    fn canceled(mut r: SubmissionRecord) -> SubmissionRecord {
        r.canceled = true;
        r
    }

    fn status(v: &Value, rcpt: &str) -> (String, String) {
        let s = &v[rcpt];
        assert_eq!(s["displayed"], "unknown");
        (
            s["delivered"].as_str().unwrap().to_string(),
            s["smtpReply"].as_str().unwrap().to_string(),
        )
    }

    #[test]
    fn undo_status_table() {
        assert_eq!(undo_status(&record(State::Queued, &[])), "pending");
        assert_eq!(undo_status(&record(State::Held, &[])), "pending");
        for s in [
            State::Sent,
            State::Delivered,
            State::Bounced,
            State::Failed,
            State::Dead,
        ] {
            assert_eq!(undo_status(&record(s, &[])), "final");
        }
        assert_eq!(
            undo_status(&canceled(record(State::Failed, &[]))),
            "canceled"
        );
        // A cancel that lost the race with a send in progress.
        assert_eq!(undo_status(&canceled(record(State::Sent, &[]))), "final");
    }

    #[test]
    fn delivery_status_table() {
        let queued = record(State::Queued, &["a@x.test"]);
        assert_eq!(status(&delivery_status(&queued), "a@x.test").0, "queued");

        let mut r = record(
            State::Sent,
            &["a@x.test", "b@x.test", "c@x.test", "d@x.test", "e@x.test"],
        );
        let report = |outcome, detail: &str| RecipientStatus {
            outcome,
            detail: Some(detail.into()),
            at_ms: 1,
        };
        r.delivery
            .insert("a@x.test".into(), report(Outcome::Delivered, "250 ok"));
        r.delivery.insert(
            "b@x.test".into(),
            report(Outcome::Bounced, "Permanent/General 550 no such user"),
        );
        r.delivery.insert(
            "c@x.test".into(),
            report(Outcome::Suppressed, "on the suppression list"),
        );
        r.delivery
            .insert("d@x.test".into(), report(Outcome::Delayed, "mailbox full"));
        let v = delivery_status(&r);
        assert_eq!(status(&v, "a@x.test").0, "yes");
        let (d, reply) = status(&v, "b@x.test");
        assert_eq!(d, "no");
        assert!(reply.contains("no such user"), "{reply}");
        assert_eq!(status(&v, "c@x.test").0, "no");
        assert_eq!(status(&v, "d@x.test").0, "queued");
        // Handed to SES, no report yet.
        let (d, reply) = status(&v, "e@x.test");
        assert_eq!(d, "unknown");
        assert!(
            reply.starts_with("250") && reply.contains("ses-1"),
            "{reply}"
        );

        let mut failed = record(State::Failed, &["a@x.test"]);
        failed.last_error = Some("554 Message rejected".into());
        let (d, reply) = status(&delivery_status(&failed), "a@x.test");
        assert_eq!(d, "no");
        assert!(reply.contains("Message rejected"));
    }
}
