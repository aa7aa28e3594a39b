//! Transports: where senders hand messages. Each returns one typed [`Delivery`]; temporary
//! versus permanent is decided here, at the boundary, and nowhere else (STYLE habit 4).
//! `ses` (SES v2), `sqs` (S3 + SQS for a downstream sender), `smtp` (a smarthost) and `dir`
//! (files, the development default).

pub mod aws;
pub mod dir;
pub mod ses;
mod ses_body;
pub mod smtp;
pub mod sqs;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::domain::Job;
use crate::rope::Rope;

/// A message ready to go: envelope resolved, headers that must not leave already removed.
#[derive(Debug, Clone)]
pub struct OutboundMessage {
    pub job: Job,
    pub mail_from: String,
    pub recipients: Vec<String>,
    /// The message as shared pieces (see [`crate::rope`]): transports that can take it piece
    /// by piece do, so a large message is not copied once more to be sent.
    pub mime: Rope,
    /// Provider tags (SES `EmailTags`), already in the provider's alphabet.
    pub tags: Vec<(String, String)>,
    /// The identity's SES configuration set, if it names one.
    pub configuration_set: Option<String>,
}

/// What became of one hand-off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Accepted; `provider_id` is the transport's id for it.
    Sent { provider_id: String },
    /// Try again later (`after`, or the spool's backoff).
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Will never succeed; the submission fails with this reason.
    Reject { reason: String },
    /// Nothing can be sent right now (provider unreachable, sending paused): the message goes
    /// back without spending an attempt and sending pauses until a probe succeeds.
    Unavailable { reason: String },
}

pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Delivery> + Send + 'a>>;

pub trait Transport: Send + Sync {
    fn name(&self) -> &'static str;
    /// Shared ownership lets a transport move the message to a blocking thread uncopied.
    fn send(&self, message: Arc<OutboundMessage>) -> SendFuture<'_>;
    /// The `Message-ID` recipients see, given the transport's id for an accepted message,
    /// when the provider replaces the message's own (SES does); None when it goes through.
    fn visible_message_id(&self, _provider_id: &str) -> Option<String> {
        None
    }
}

/// A message from alice@example.com to `recipients`, for transport tests.
#[cfg(test)]
pub(crate) fn test_message(recipients: &[&str], mime: Rope) -> OutboundMessage {
    let recipients: Vec<String> = recipients.iter().map(|r| r.to_string()).collect();
    OutboundMessage {
        job: Job {
            id: crate::domain::QueueId(1),
            login: "alice".into(),
            tenant_id: "t".into(),
            account_id: "a".into(),
            user_id: "u".into(),
            identity_id: "i".into(),
            mail_from: "alice@example.com".into(),
            recipients: recipients.clone(),
            message_class: crate::domain::MessageClass::Transactional,
            size: mime.len() as u64,
        },
        mail_from: "alice@example.com".into(),
        recipients,
        mime,
        tags: Vec::new(),
        configuration_set: None,
    }
}
