//! The submission record kept for every message: small, JSON-encoded, separate from the MIME.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::SpoolError;

/// A submission's queue id: 16 upper-case hex digits on the wire and in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QueueId(pub u64);

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

impl std::str::FromStr for QueueId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(QueueId)
    }
}

/// Lifecycle: `queued → sent | failed | dead`; a dead letter can be redriven to `queued`; an
/// operator may hold a queued message (`held`, not sent) and release it again. Provider
/// feedback then moves a sent message on: `sent → delivered | bounced | complained` (derived
/// from the per-recipient outcomes, see [`SubmissionRecord::derive_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Queued,
    Held,
    Sent,
    Failed,
    Dead,
    /// Every recipient's mailbox provider accepted it.
    Delivered,
    /// At least one recipient bounced (or SES rejected the message after accepting it).
    Bounced,
    /// At least one recipient complained.
    Complained,
}

impl State {
    /// Sent, or sent and reported on by the provider.
    pub fn was_sent(self) -> bool {
        matches!(
            self,
            State::Sent | State::Delivered | State::Bounced | State::Complained
        )
    }
}

/// What the provider reported for one recipient. Declared in precedence order: a report only
/// replaces one that ranks lower or equal, so a late `Delivery` never undoes a `Bounce`, and a
/// complaint (which follows a delivery) wins over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// SES is still trying (DeliveryDelay).
    Delayed,
    Delivered,
    /// Left out by Outbox at send time: on the suppression list.
    Suppressed,
    /// SES rejected the message after accepting it (virus) — no recipient got it.
    Rejected,
    Bounced,
    Complained,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delayed => "delayed",
            Outcome::Delivered => "delivered",
            Outcome::Suppressed => "suppressed",
            Outcome::Rejected => "rejected",
            Outcome::Bounced => "bounced",
            Outcome::Complained => "complained",
        }
    }
}

/// One recipient's latest reported outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientStatus {
    pub outcome: Outcome,
    /// The provider's words: SMTP response / diagnostic code, bounce type and subtype, etc.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// When it happened (the event's own timestamp).
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub at_ms: u64,
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Transition {
    pub fn new(at_ms: u64, state: State, detail: Option<String>) -> Self {
        Transition {
            at_ms,
            state,
            detail,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmissionRecord {
    pub id: QueueId,
    pub login: String,
    pub tenant_id: String,
    pub account_id: String,
    pub user_id: String,
    pub identity_id: String,
    pub mail_from: String,
    pub recipients: Vec<String>,
    pub message_class: String,
    pub size: u64,
    pub state: State,
    pub created_ms: u64,
    /// The message's key in the queue while it is queued.
    pub due_ms: Option<u64>,
    /// Leases taken so far (SQS ApproximateReceiveCount).
    pub receive_count: u32,
    pub last_error: Option<String>,
    /// The transport's id for the accepted message (SES MessageId, file name, ...).
    pub provider_id: Option<String>,
    pub history: Vec<Transition>,
    /// Per-recipient outcomes reported by the provider (lower-cased address → status).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub delivery: BTreeMap<String, RecipientStatus>,
}

impl SubmissionRecord {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("record serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, SpoolError> {
        serde_json::from_slice(bytes).map_err(SpoolError::storage)
    }

    pub fn transition(&mut self, at_ms: u64, state: State, detail: Option<String>) {
        self.state = state;
        self.history.push(Transition::new(at_ms, state, detail));
    }

    /// Records `status` for `address` unless what is recorded ranks higher; true if it changed.
    pub fn report(&mut self, address: &str, status: RecipientStatus) -> bool {
        let key = address.trim().to_lowercase();
        match self.delivery.get(&key) {
            Some(old) if old.outcome > status.outcome => false,
            Some(old) if old.outcome == status.outcome && old.detail == status.detail => false,
            _ => {
                self.delivery.insert(key, status);
                true
            }
        }
    }

    /// The submission state the per-recipient outcomes imply, for a message that was sent:
    /// complained if anyone complained, else bounced if anyone bounced or it was rejected, else
    /// delivered once every recipient not left out by suppression was delivered, else sent.
    /// Before the send is recorded the state stays as it is (an event can overtake it).
    pub fn derive_state(&self) -> State {
        if !self.state.was_sent() {
            return self.state;
        }
        let outcomes: Vec<Outcome> = self.delivery.values().map(|s| s.outcome).collect();
        if outcomes.contains(&Outcome::Complained) {
            return State::Complained;
        }
        if outcomes.contains(&Outcome::Bounced) || outcomes.contains(&Outcome::Rejected) {
            return State::Bounced;
        }
        let mut any_delivered = false;
        for rcpt in &self.recipients {
            match self.delivery.get(&rcpt.to_lowercase()).map(|s| s.outcome) {
                Some(Outcome::Delivered) => any_delivered = true,
                Some(Outcome::Suppressed) => {}
                _ => return State::Sent,
            }
        }
        if any_delivered {
            State::Delivered
        } else {
            State::Sent
        }
    }
}
