//! The delivery vocabulary every layer speaks: queue ids, message classes, submission states,
//! per-recipient outcomes, suppressions and provider feedback. Storage ([`crate::spool`])
//! depends on this module, not the other way round; so do the submission service, the
//! senders, feedback, JMAP and the admin tools.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// A submission's id, unique across machines and sortable by time: the creation time in
/// milliseconds in the top 48 bits, then 80 bits that are random per millisecond and counted
/// up within one (so ids made by one process in one millisecond still sort in order).
///
/// One textual form everywhere (SMTP reply, `Received`, Message-ID, SES tag, JMAP id, CLI):
/// 26 characters of Crockford base32, like a ULID — within the SES tag and JMAP id alphabets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(pub u128);

/// Crockford's base32 alphabet (no I, L, O, U).
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters in the textual form: 128 bits in 5-bit digits.
pub const QUEUE_ID_LEN: usize = 26;

/// The last id handed out, so ids of one millisecond count up instead of colliding.
static LAST_ID: Mutex<u128> = Mutex::new(0);

impl QueueId {
    /// Bits below the millisecond timestamp.
    pub const RANDOM_BITS: u32 = 80;

    /// A new id for something created at `now_ms`.
    pub fn generate(now_ms: u64) -> QueueId {
        let time = u128::from(now_ms & ((1 << 48) - 1)) << Self::RANDOM_BITS;
        let mut last = LAST_ID.lock().unwrap_or_else(|e| e.into_inner());
        let id = if *last >> Self::RANDOM_BITS == time >> Self::RANDOM_BITS
            && *last & random_mask() != random_mask()
        {
            *last + 1
        } else {
            // Leave headroom so counting up within the millisecond cannot overflow into time.
            time | (rand::random::<u128>() & (random_mask() >> 1))
        };
        *last = id;
        QueueId(id)
    }

    /// When the id was made (ms since the Unix epoch).
    pub fn created_ms(self) -> u64 {
        (self.0 >> Self::RANDOM_BITS) as u64
    }
}

fn random_mask() -> u128 {
    (1u128 << QueueId::RANDOM_BITS) - 1
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; QUEUE_ID_LEN];
        for (i, c) in out.iter_mut().enumerate() {
            let shift = 5 * (QUEUE_ID_LEN - 1 - i);
            *c = CROCKFORD[((self.0 >> shift) & 31) as usize];
        }
        f.write_str(std::str::from_utf8(&out).expect("ASCII"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a queue id (26 characters of Crockford base32)")]
pub struct BadQueueId;

impl std::str::FromStr for QueueId {
    type Err = BadQueueId;
    fn from_str(s: &str) -> Result<Self, BadQueueId> {
        if s.len() != QUEUE_ID_LEN {
            return Err(BadQueueId);
        }
        let mut n: u128 = 0;
        for (i, b) in s.bytes().enumerate() {
            let digit = CROCKFORD
                .iter()
                .position(|c| *c == b.to_ascii_uppercase())
                .ok_or(BadQueueId)? as u128;
            // 26 digits carry 130 bits: the first may use only its low 3.
            if i == 0 && digit > 7 {
                return Err(BadQueueId);
            }
            n = (n << 5) | digit;
        }
        Ok(QueueId(n))
    }
}

impl Serialize for QueueId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for QueueId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What kind of mail a submission is; scopes the suppression list, so a complaint about bulk
/// mail does not block a password reset.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum MessageClass {
    #[default]
    Transactional,
    MailingList,
    Bulk,
}

impl MessageClass {
    /// Every class, the default first.
    pub const ALL: [MessageClass; 3] = [
        MessageClass::Transactional,
        MessageClass::MailingList,
        MessageClass::Bulk,
    ];
    pub const NAMES: [&'static str; 3] = ["transactional", "mailing_list", "bulk"];

    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// The class named `name` (case-insensitive).
    pub fn parse(name: &str) -> Option<MessageClass> {
        let name = name.trim().to_ascii_lowercase();
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

impl fmt::Display for MessageClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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

    /// Out of the queue for good: what retention counts from. (A dead letter has its own,
    /// shorter clock and can still be redriven.)
    pub fn is_finished(self) -> bool {
        self.was_sent() || self == State::Failed
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
    /// A complaint report of feedback type `not-spam` (RFC 5965 §7.3 "not-spam": the reporter
    /// does *not* consider it spam, e.g. correcting an earlier report). Recorded for the
    /// recipient, who evidently has the message, but no complaint: it counts as delivered,
    /// never suppresses, and ranks below a real complaint or a bounce.
    NotSpam,
    /// Left out by Outbox at submission or send time: on the suppression list.
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
            Outcome::NotSpam => "not_spam",
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

/// What a sender needs to send one submission, and all a queue message carries: who
/// submitted it, as which identity, the envelope and the class. Small (no MIME, no history),
/// so it fits an SQS message body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: QueueId,
    pub login: String,
    pub tenant_id: String,
    pub account_id: String,
    pub user_id: String,
    pub identity_id: String,
    pub mail_from: String,
    pub recipients: Vec<String>,
    pub message_class: MessageClass,
    /// Octets of the stored MIME.
    pub size: u64,
}

/// The JMAP side of a submission made through `EmailSubmission/set`, stored in the ledger
/// record itself so that queueing the message and creating the EmailSubmission are one write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JmapLink {
    pub email_id: String,
    /// The JMAP Identity id the client chose.
    pub identity_id: String,
    /// The RFC 8621 `envelope` as the client will read it back.
    pub envelope: serde_json::Value,
    /// `sendAt` (ms).
    pub send_at: u64,
}

/// The ledger's record of one submission: its job, where it stands, how it got there, and
/// what the provider reported per recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmissionRecord {
    #[serde(flatten)]
    pub job: Job,
    pub state: State,
    pub created_ms: u64,
    /// The message's key in the queue while it is queued (its lease deadline while leased).
    pub due_ms: Option<u64>,
    /// Leases taken so far (SQS ApproximateReceiveCount).
    pub receive_count: u32,
    /// The current lease's token; a settlement with another one is stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_token: Option<u64>,
    pub last_error: Option<String>,
    /// The transport's id for the accepted message (SES MessageId, file name, ...).
    pub provider_id: Option<String>,
    /// The `Message-ID` recipients see, when the provider replaced the message's own (SES
    /// does: `<MessageId@region.amazonses.com>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    pub history: Vec<Transition>,
    /// Per-recipient outcomes reported by the provider (lower-cased address → status).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub delivery: BTreeMap<String, RecipientStatus>,
    /// Withdrawn by its submitter (JMAP `undoStatus: canceled`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub canceled: bool,
    /// Set when the submission was made through JMAP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jmap: Option<JmapLink>,
    /// When it last reached a finished state: the retention clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    /// The release time its submitter asked for (RFC 4865 FUTURERELEASE, JMAP `sendAt`):
    /// an operator's release or retry keeps it; only `queue send-now` goes before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_ms: Option<u64>,
}

impl SubmissionRecord {
    /// A new record, queued and first due at `due_ms`.
    pub fn queued(job: Job, now_ms: u64, due_ms: u64, jmap: Option<JmapLink>) -> Self {
        SubmissionRecord {
            job,
            state: State::Queued,
            created_ms: now_ms,
            due_ms: Some(due_ms),
            receive_count: 0,
            lease_token: None,
            last_error: None,
            provider_id: None,
            message_id: None,
            history: vec![Transition::new(now_ms, State::Queued, None)],
            delivery: BTreeMap::new(),
            canceled: false,
            jmap,
            finished_ms: None,
            release_ms: (due_ms > now_ms).then_some(due_ms),
        }
    }

    pub fn id(&self) -> QueueId {
        self.job.id
    }

    pub fn transition(&mut self, at_ms: u64, state: State, detail: Option<String>) {
        self.state = state;
        self.history.push(Transition::new(at_ms, state, detail));
        self.finished_ms = state.is_finished().then_some(at_ms);
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
        for rcpt in &self.job.recipients {
            match self.delivery.get(&rcpt.to_lowercase()).map(|s| s.outcome) {
                Some(Outcome::Delivered | Outcome::NotSpam) => any_delivered = true,
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

/// Scope meaning every message class, or every account, in a suppression.
pub const ALL_CLASSES: &str = "*";
pub const ALL_ACCOUNTS: &str = "*";

/// Why an address is not sent to, for which account and message class, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suppression {
    pub address: String,
    /// Account id, or `*` for every account.
    #[serde(default = "all_accounts")]
    pub account: String,
    /// A [`MessageClass`] name, or `*` for every class.
    pub class: String,
    pub reason: String,
    pub at_ms: u64,
    /// After this the entry no longer applies (and the janitor removes it); `None` = never.
    #[serde(default)]
    pub expires_ms: Option<u64>,
}

fn all_accounts() -> String {
    ALL_ACCOUNTS.to_string()
}

impl Suppression {
    /// An entry with its address and class normalised.
    pub fn new(
        address: &str,
        account: &str,
        class: &str,
        reason: String,
        at_ms: u64,
        expires_ms: Option<u64>,
    ) -> Suppression {
        Suppression {
            address: address.trim().to_lowercase(),
            account: account.to_string(),
            class: class.to_lowercase(),
            reason,
            at_ms,
            expires_ms,
        }
    }

    pub fn active_at(&self, now_ms: u64) -> bool {
        self.expires_ms.is_none_or(|e| e > now_ms)
    }

    /// The scopes an address is looked up under for `account` and `class`, narrowest first.
    pub fn scopes<'a>(account: &'a str, class: &'a str) -> [(&'a str, &'a str); 4] {
        [
            (account, class),
            (account, ALL_CLASSES),
            (ALL_ACCOUNTS, class),
            (ALL_ACCOUNTS, ALL_CLASSES),
        ]
    }
}

/// One provider report (an SES event), as the ledger applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackEvent {
    /// The provider's message id (SES `mail.messageId`).
    pub provider_id: Option<String>,
    /// Our queue id, from the `submission_id` tag when the event carries tags.
    pub submission_id: Option<QueueId>,
    pub outcome: Outcome,
    /// The recipients it concerns; empty means every recipient of the submission.
    pub recipients: Vec<String>,
    pub detail: Option<String>,
    pub at_ms: u64,
    /// Account and class from the tags, for suppressions when no submission matches.
    pub tag_account: Option<String>,
    pub tag_class: Option<String>,
    /// Add the recipients to the suppression list (scoped to the submission's account and
    /// class) with this reason, for this many milliseconds from when it is applied (`None`:
    /// until removed).
    pub suppress: Option<(String, Option<u64>)>,
}

/// What applying one feedback message did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedbackApplied {
    /// Seen before: nothing was changed.
    pub duplicate: bool,
    /// Submissions found and updated (an id per event that matched).
    pub matched: Vec<QueueId>,
    /// Events that matched no submission (still recorded in suppressions where asked).
    pub unmatched: usize,
    /// Suppression entries added.
    pub suppressed: Vec<Suppression>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_ids_are_unique_sortable_and_round_trip_in_one_text_form() {
        let now = 1_800_000_000_000;
        let ids: Vec<QueueId> = (0..1000).map(|_| QueueId::generate(now)).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, ids, "one millisecond's ids count up, no duplicates");
        let later = QueueId::generate(now + 1);
        assert!(
            later > *ids.last().unwrap(),
            "a later millisecond sorts after"
        );
        assert_eq!(later.created_ms(), now + 1);
        for id in ids.iter().chain([&later, &QueueId(0), &QueueId(u128::MAX)]) {
            let text = id.to_string();
            assert_eq!(text.len(), QUEUE_ID_LEN);
            // The SES tag and JMAP id alphabets ([A-Za-z0-9_-]).
            assert!(text.bytes().all(|b| b.is_ascii_alphanumeric()), "{text}");
            assert_eq!(text.parse::<QueueId>().unwrap(), *id);
            assert_eq!(text.to_lowercase().parse::<QueueId>().unwrap(), *id);
            let json = serde_json::to_string(id).unwrap();
            assert_eq!(serde_json::from_str::<QueueId>(&json).unwrap(), *id);
        }
        // Text order is time order too (fixed width, alphabet in ASCII order).
        assert!(ids[0].to_string() < later.to_string());
        for bad in [
            "",
            "0123",
            "8ZZZZZZZZZZZZZZZZZZZZZZZZZ",
            "0000000000000000000000000U",
            "00066A1B2C3D4E5F",
        ] {
            assert!(bad.parse::<QueueId>().is_err(), "{bad}");
        }
    }

    /// Issue 14 item 14: a `not-spam` complaint report (RFC 5965 §7.3) is recorded for the
    /// recipient but does not make the submission complained; a real complaint still does.
    #[test]
    fn not_spam_is_recorded_and_keeps_the_state() {
        let job = Job {
            id: QueueId(1),
            login: "a".into(),
            tenant_id: "t".into(),
            account_id: "a".into(),
            user_id: "u".into(),
            identity_id: "i".into(),
            mail_from: "a@example.com".into(),
            recipients: vec!["r@example.net".into()],
            message_class: MessageClass::Bulk,
            size: 1,
        };
        let mut r = SubmissionRecord::queued(job, 0, 0, None);
        r.transition(1, State::Sent, None);
        let status = |outcome, at_ms| RecipientStatus {
            outcome,
            detail: Some(format!("{outcome:?}")),
            at_ms,
        };
        assert!(r.report("r@example.net", status(Outcome::Delivered, 2)));
        assert_eq!(r.derive_state(), State::Delivered);
        assert!(r.report("r@example.net", status(Outcome::NotSpam, 3)));
        assert_eq!(r.delivery["r@example.net"].outcome, Outcome::NotSpam);
        assert_eq!(r.derive_state(), State::Delivered);
        // A late delivery does not hide the report; a real complaint wins over it.
        assert!(!r.report("r@example.net", status(Outcome::Delivered, 4)));
        assert!(r.report("r@example.net", status(Outcome::Complained, 5)));
        assert_eq!(r.derive_state(), State::Complained);
        assert!(!r.report("r@example.net", status(Outcome::NotSpam, 6)));
    }

    #[test]
    fn message_classes_parse_case_insensitively() {
        assert_eq!(MessageClass::parse("Bulk"), Some(MessageClass::Bulk));
        assert_eq!(
            MessageClass::parse("mailing_list"),
            Some(MessageClass::MailingList)
        );
        assert_eq!(MessageClass::parse("spam"), None);
        assert_eq!(MessageClass::default().as_str(), "transactional");
        assert_eq!(
            serde_json::to_string(&MessageClass::MailingList).unwrap(),
            "\"mailing_list\""
        );
    }
}
