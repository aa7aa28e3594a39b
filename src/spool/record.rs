//! The submission record kept for every message: small, JSON-encoded, separate from the MIME.

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
/// operator may hold a queued message (`held`, not sent) and release it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Queued,
    Held,
    Sent,
    Failed,
    Dead,
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
}
