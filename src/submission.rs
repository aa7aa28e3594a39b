//! Submission: the one place every front door (SMTP now; JMAP and sendmail later) hands a
//! message to. It checks that the account owns the envelope sender and the header `From`,
//! adds the `Received` trace header, reads the message class, and stores the message
//! durably. It knows nothing of SMTP replies; [`SubmitError`] says what went wrong.

use std::net::IpAddr;
use std::sync::Arc;

use mail_parser::MessageParser;

use crate::accounts::{Account, Identity};
use crate::address::{AddressError, AddressPolicy};
use crate::attachments::{refused_by_ses, RefusedAttachment};
use crate::clock::{rfc5322_date, Clock};
use crate::config::TransportConfig;
use crate::message::header_values;
use bytes::Bytes;

use crate::domain::{
    JmapLink, Job, MessageClass, Outcome, QueueId, RecipientStatus, SubmissionRecord,
};
use crate::spool::{Spool, SpoolError};

/// Header by which SMTP clients choose a message class; removed before sending.
pub const CLASS_HEADER: &str = "X-Outbox-Class";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    /// The envelope sender, or an address in From/Sender, is not the account's.
    #[error("address {0} is not owned by the account")]
    NotOwner(String),
    /// The message itself is unacceptable; the text is safe to show the client.
    #[error("{0}")]
    BadMessage(&'static str),
    /// A recipient is on the suppression list for this account and message class.
    #[error("recipient {address} is suppressed for {class} mail: {reason}")]
    Suppressed {
        address: String,
        class: String,
        reason: String,
    },
    /// An envelope address the transport cannot carry (a non-ASCII local part for SES).
    #[error(transparent)]
    Address(#[from] AddressError),
    /// An attachment type the SES-bound transport would refuse.
    #[error(transparent)]
    Attachment(#[from] RefusedAttachment),
    /// The reputation guard holds this identity's mail of this class; temporary. The text
    /// names the class and the rate and is safe to show the client.
    #[error("{0}")]
    Held(String),
    #[error("spool full")]
    SpoolFull,
    #[error("storage failure")]
    Storage,
}

/// Where a message came from, for the `Received` header (RFC 5321 §4.4).
#[derive(Debug, Clone)]
pub struct Trace {
    pub helo: String,
    pub client_ip: IpAddr,
    /// RFC 3848 protocol name, e.g. `ESMTPSA`.
    pub protocol: &'static str,
    /// e.g. `TLSv1_3 TLS13_AES_256_GCM_SHA384`.
    pub tls: Option<String>,
}

/// A stored submission.
#[derive(Debug)]
pub struct Submitted {
    pub id: QueueId,
    /// Recipients on the suppression list for the message's class: kept in the envelope and
    /// recorded on the submission as suppressed, never sent to.
    pub suppressed: Vec<LeftOut>,
}

/// A recipient left out because it is on the suppression list for the message's class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftOut {
    pub address: String,
    pub class: MessageClass,
    pub reason: String,
}

impl From<LeftOut> for SubmitError {
    fn from(s: LeftOut) -> Self {
        SubmitError::Suppressed {
            address: s.address,
            class: s.class.as_str().to_string(),
            reason: s.reason,
        }
    }
}

impl std::fmt::Display for LeftOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "recipient {} is suppressed for {} mail: {}",
            self.address, self.class, self.reason
        )
    }
}

pub struct SubmitRequest {
    pub account: Arc<Account>,
    pub mail_from: String,
    pub recipients: Vec<String>,
    pub mime: Vec<u8>,
    /// Hold until this Unix time in ms (JMAP `sendAt`, SMTP FUTURERELEASE); `None`: now.
    pub release_at: Option<u64>,
    pub trace: Trace,
}

pub struct Submitter {
    spool: Spool,
    hostname: String,
    clock: Arc<dyn Clock>,
    addresses: AddressPolicy,
    /// Refuse attachment types SES refuses (the transport ends at SES).
    ses_attachments: bool,
    /// Refuse classes the reputation guard holds.
    reputation: Option<Arc<crate::reputation::Reputation>>,
}

impl Submitter {
    pub fn new(spool: Spool, hostname: String, clock: Arc<dyn Clock>) -> Self {
        Submitter {
            spool,
            hostname,
            clock,
            addresses: AddressPolicy::default(),
            ses_attachments: false,
            reputation: None,
        }
    }

    /// Refuses new mail of the classes `reputation`'s guard holds.
    pub fn with_reputation(mut self, reputation: Arc<crate::reputation::Reputation>) -> Self {
        self.reputation = Some(reputation);
        self
    }

    /// The rules of the transport messages leave by: envelope addresses it can carry, and
    /// for SES the attachment types it refuses (refused here, at the door, with the reason).
    pub fn for_transport(mut self, transport: &TransportConfig) -> Self {
        self.addresses = transport.address_policy();
        self.ses_attachments = transport.ses_bound();
        self
    }

    /// What the front doors check envelope addresses against before a message is given.
    pub fn address_policy(&self) -> AddressPolicy {
        self.addresses
    }

    /// Whether a message of `size` octets would currently fit in the spool.
    pub fn has_room(&self, size: u64) -> bool {
        self.spool.queue.has_room(size)
    }

    /// Checks, traces and durably stores a message; returns once it is fsync'd.
    pub async fn submit(&self, req: SubmitRequest) -> Result<QueueId, SubmitError> {
        self.submit_with(req, None, None).await
    }

    /// [`submit`](Self::submit) with the message class chosen by the caller (JMAP's
    /// `messageClass` property) instead of read from the `X-Outbox-Class` header, and the
    /// JMAP link stored in the same write as the queue entry.
    pub async fn submit_with(
        &self,
        req: SubmitRequest,
        class: Option<MessageClass>,
        jmap: Option<JmapLink>,
    ) -> Result<QueueId, SubmitError> {
        self.store(req, class, jmap).await.map(|s| s.id)
    }

    /// Whether `address` may be a recipient of the account's next message, judged at SMTP
    /// RCPT, before the message — and so its class — is known: for the default class
    /// (transactional; a message without `X-Outbox-Class`), the common case. A recipient
    /// suppressed only for another class passes here and is left out after DATA
    /// ([`store`](Self::store)) if the message turns out to be of that class; one suppressed
    /// for transactional mail is refused here even for a message that will declare itself
    /// bulk (the cautious side: the address bounced or complained).
    pub async fn check_recipient(
        &self,
        account: &Account,
        address: &str,
    ) -> Result<(), SubmitError> {
        let class = MessageClass::default();
        match self
            .spool
            .ledger
            .suppressed_among(&[address.to_string()], &account.account_id, class.as_str())
            .await
        {
            Ok(found) => match found.into_iter().next() {
                None => Ok(()),
                Some((address, s)) => Err(LeftOut {
                    address,
                    class,
                    reason: s.reason,
                }
                .into()),
            },
            Err(e) => {
                tracing::error!(error = %e, "reading the suppression list failed");
                Err(SubmitError::Storage)
            }
        }
    }

    /// [`submit_with`](Self::submit_with), also telling which recipients were left out.
    pub async fn store(
        &self,
        req: SubmitRequest,
        class: Option<MessageClass>,
        jmap: Option<JmapLink>,
    ) -> Result<Submitted, SubmitError> {
        // Every front door gets the same rule (SMTP and JMAP also check earlier, per address).
        let mut req = req;
        req.mail_from = self.addresses.envelope(&req.mail_from)?;
        req.recipients = req
            .recipients
            .iter()
            .map(|r| self.addresses.envelope(r))
            .collect::<Result<_, _>>()?;
        let identity = sender_identity(&req.account, &req.mail_from)?;
        // The text rules before any header is read: the header splitter and every parser
        // downstream then agree on where each field begins and ends.
        check_text(&req.mime)?;
        check_header_senders(&req.account, &req.mime)?;
        if self.ses_attachments {
            if let Some(refused) = refused_by_ses(&req.mime) {
                return Err(refused.into());
            }
        }
        let message_class = match class {
            Some(c) => c,
            None => message_class(&req.mime)?,
        };
        // An in-memory look-up: the guard's holds are kept current by its own task.
        if let Some(reputation) = &self.reputation {
            if let Err(refusal) = reputation.check(&identity.id, message_class) {
                tracing::info!(identity = %identity.id, class = %message_class, "refused: {refusal}");
                return Err(SubmitError::Held(refusal.to_string()));
            }
        }
        // Per recipient: one on the suppression list for this class is left out (recorded on
        // the submission as suppressed, never sent to) while the others get the message; only
        // when nobody is left is the message refused. SMTP refuses most such recipients at
        // RCPT already (see `check_recipient`); this is the rest, whose class the message's
        // header decided.
        let suppressed = match self
            .spool
            .ledger
            .suppressed_among(
                &req.recipients,
                &req.account.account_id,
                message_class.as_str(),
            )
            .await
        {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "reading the suppression list failed");
                return Err(SubmitError::Storage);
            }
        };
        let suppressed: Vec<LeftOut> = suppressed
            .into_iter()
            .map(|(address, s)| LeftOut {
                address,
                class: message_class,
                reason: s.reason,
            })
            .collect();
        let everyone = req
            .recipients
            .iter()
            .all(|r| suppressed.iter().any(|s| s.address.eq_ignore_ascii_case(r)));
        if let (true, Some(first)) = (everyone, suppressed.first()) {
            return Err(first.clone().into());
        }
        let now = self.clock.now_ms();
        let id = QueueId::generate(now);
        // The trace header and the message as received are stored as two chunks: no copy.
        let received = Bytes::from(self.received_header(&req, id));
        let mime = Bytes::from(req.mime);
        let size = (received.len() + mime.len()) as u64;
        let job = Job {
            id,
            login: req.account.login.clone(),
            tenant_id: req.account.tenant_id.clone(),
            account_id: req.account.account_id.clone(),
            user_id: req.account.user_id.clone(),
            identity_id: identity.id.clone(),
            mail_from: req.mail_from,
            recipients: req.recipients,
            message_class,
            size,
        };
        let due = req.release_at.unwrap_or(now);
        let mut record = SubmissionRecord::queued(job, now, due, jmap);
        for s in &suppressed {
            record.report(
                &s.address,
                RecipientStatus {
                    outcome: Outcome::Suppressed,
                    detail: Some(suppressed_detail(s.class, &s.reason)),
                    at_ms: now,
                },
            );
        }
        let stored = match self.spool.blobs.put(id, vec![received, mime]).await {
            Ok(()) => self.spool.queue.enqueue(record).await,
            Err(e) => Err(e),
        };
        match stored {
            Ok(()) => {
                if !suppressed.is_empty() {
                    let left_out: Vec<&str> =
                        suppressed.iter().map(|s| s.address.as_str()).collect();
                    tracing::info!(%id, class = %message_class, ?left_out, "suppressed recipients left out at submission");
                }
                Ok(Submitted { id, suppressed })
            }
            Err(e) => {
                // Whatever part got written is not wanted (init drops such orphans too).
                let _ = self.spool.blobs.delete(id).await;
                match e {
                    SpoolError::Full(what) => {
                        tracing::warn!(%id, what, "spool full, message refused");
                        Err(SubmitError::SpoolFull)
                    }
                    e => {
                        tracing::error!(%id, error = %e, "storing message failed");
                        Err(SubmitError::Storage)
                    }
                }
            }
        }
    }

    fn received_header(&self, req: &SubmitRequest, id: QueueId) -> String {
        let t = &req.trace;
        let tls = t
            .tls
            .as_ref()
            .map(|tls| format!("\r\n\t(using {tls})"))
            .unwrap_or_default();
        // Name one recipient only when there is one: more would leak Bcc recipients.
        let rcpt = match req.recipients.as_slice() {
            [only] => format!("\r\n\tfor <{only}>"),
            _ => String::new(),
        };
        format!(
            "Received: from {helo} ([{ip}])\r\n\tby {host} (Outbox) with {proto} id {id}{tls}{rcpt};\r\n\t{date}\r\n",
            helo = sanitize(&t.helo),
            ip = t.client_ip,
            host = self.hostname,
            proto = t.protocol,
            date = rfc5322_date(self.clock.now_ms()),
        )
    }
}

/// How a recipient left out for the suppression list is recorded on its submission.
pub fn suppressed_detail(class: MessageClass, reason: &str) -> String {
    format!("on the suppression list for {class} mail: {reason}")
}

/// The identity under which the account sends as `mail_from`.
pub fn sender_identity<'a>(
    account: &'a Account,
    mail_from: &str,
) -> Result<&'a Identity, SubmitError> {
    account
        .identity_for(mail_from)
        .ok_or_else(|| SubmitError::NotOwner(mail_from.to_string()))
}

/// The text rules SMTP's DATA reader enforces (RFC 5322 §2.3: CRLF only, no NUL, lines of at
/// most 998 octets), applied to every way in (SMTP, JMAP Email/set and Email/import,
/// sendmail). A bare LF is a line break to some parsers and not to others: with one, the
/// ownership check and the receiver could see different From fields.
pub fn check_text(mime: &[u8]) -> Result<(), SubmitError> {
    use crate::smtp::data::{BodyError, LineRules};
    let mut rules = LineRules::new(1000);
    rules.push_slice(mime);
    rules.finish().map_err(|e| {
        SubmitError::BadMessage(match e {
            BodyError::BareLf | BodyError::BareCr => {
                "Message has a bare CR or LF (RFC 5322 lines end in CRLF)"
            }
            BodyError::Nul => "Message contains a NUL octet",
            BodyError::LineTooLong | BodyError::TooBig => {
                "Message has a line longer than 998 octets"
            }
        })
    })
}

/// RFC 5322 §2.2 and §3.6.8: every header field is a name of printable ASCII but `:`, then
/// `:`. A line that is neither a field nor a continuation is read differently by different
/// parsers (mail-parser takes `:FROM: x` for a From field; our splitter for a nameless one),
/// so the ownership check could count one From where the receiver finds two.
fn check_field_names(mime: &[u8]) -> Result<(), SubmitError> {
    const MALFORMED: SubmitError =
        SubmitError::BadMessage("Message has a malformed header field (RFC 5322 §2.2)");
    if mime.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
        return Err(MALFORMED);
    }
    for (name, raw) in crate::message::header_fields(mime) {
        let named = !name.is_empty()
            && name.iter().all(|b| (33..=126).contains(b) && *b != b':')
            && raw.get(name.len()..).is_some_and(|rest| {
                rest.iter()
                    .find(|b| **b != b' ' && **b != b'\t')
                    .is_some_and(|b| *b == b':')
            });
        if !named {
            return Err(MALFORMED);
        }
    }
    Ok(())
}

/// RFC 5322 §3.6: exactly one From; every author (and the Sender, if any) must be the account's.
pub(crate) fn check_header_senders(account: &Account, mime: &[u8]) -> Result<(), SubmitError> {
    check_field_names(mime)?;
    match header_values(mime, "From").len() {
        0 => return Err(SubmitError::BadMessage("Message has no From header")),
        1 => {}
        _ => {
            return Err(SubmitError::BadMessage(
                "Message has more than one From header",
            ))
        }
    }
    // The parser reports only one Sender; a second could hide a forged one (RFC 5322 §3.6
    // allows at most one).
    if header_values(mime, "Sender").len() > 1 {
        return Err(SubmitError::BadMessage(
            "Message has more than one Sender header",
        ));
    }
    let parsed = MessageParser::default()
        .parse_headers(mime)
        .ok_or(SubmitError::BadMessage("Message headers cannot be parsed"))?;
    let mut authors = 0;
    for field in [parsed.from(), parsed.sender()].into_iter().flatten() {
        for addr in field.iter() {
            let address = addr.address().unwrap_or_default();
            if address.is_empty() || account.identity_for(address).is_none() {
                return Err(SubmitError::NotOwner(address.to_string()));
            }
            authors += 1;
        }
    }
    if authors == 0 {
        return Err(SubmitError::BadMessage("From header has no address"));
    }
    Ok(())
}

fn message_class(mime: &[u8]) -> Result<MessageClass, SubmitError> {
    match header_values(mime, CLASS_HEADER).first() {
        None => Ok(MessageClass::default()),
        Some(v) => MessageClass::parse(v).ok_or(SubmitError::BadMessage(
            "X-Outbox-Class must be transactional, mailing_list or bulk",
        )),
    }
}

/// Keeps client-chosen text from breaking the header's syntax.
fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() && !matches!(c, '(' | ')' | ';' | '\\'))
        .take(255)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::Directory;

    fn alice() -> Arc<Account> {
        let account = crate::accounts::test_account("alice", "x", "a", "alice@example.com");
        Directory::from_config(&[account])
            .unwrap()
            .get("alice")
            .unwrap()
    }

    #[test]
    fn header_sender_table() {
        let a = alice();
        let cases: [(&str, Result<(), SubmitError>); 8] = [
            (
                "From: alice@example.com\r\nSender: ceo@bank.example\r\nSender: alice@example.com\r\n\r\nx",
                Err(SubmitError::BadMessage("Message has more than one Sender header")),
            ),
            ("From: Alice <alice@example.com>\r\n\r\nx", Ok(())),
            (
                "From: ALICE@example.com\r\nSender: alice@example.com\r\n\r\nx",
                Ok(()),
            ),
            (
                "From: mallory@example.com\r\n\r\nx",
                Err(SubmitError::NotOwner("mallory@example.com".into())),
            ),
            (
                "From: alice@example.com, mallory@example.com\r\n\r\nx",
                Err(SubmitError::NotOwner("mallory@example.com".into())),
            ),
            (
                "From: alice@example.com\r\nSender: bob@example.com\r\n\r\nx",
                Err(SubmitError::NotOwner("bob@example.com".into())),
            ),
            (
                "Subject: none\r\n\r\nx",
                Err(SubmitError::BadMessage("Message has no From header")),
            ),
            (
                "From: alice@example.com\r\nFrom: alice@example.com\r\n\r\nx",
                Err(SubmitError::BadMessage(
                    "Message has more than one From header",
                )),
            ),
        ];
        for (mime, want) in cases {
            assert_eq!(check_header_senders(&a, mime.as_bytes()), want, "{mime}");
        }
    }

    #[test]
    fn classes() {
        assert_eq!(
            message_class(b"From: a\r\n\r\n").unwrap(),
            MessageClass::Transactional
        );
        assert_eq!(
            message_class(b"X-Outbox-Class: Bulk\r\n\r\n").unwrap(),
            MessageClass::Bulk
        );
        assert!(message_class(b"X-Outbox-Class: spam\r\n\r\n").is_err());
    }

    /// Rule (issue 15, From forgery through Email/import): for any byte string, either the
    /// submission is refused, or mail-parser reading the bytes that are sent finds exactly one
    /// From field, holding exactly the addresses the ownership check approved. Random messages
    /// are built from fragments that matter to header splitting (bare LF and CR, folding, NUL,
    /// case and spacing of names, a forged From); the seed makes a failure repeatable.
    #[test]
    fn from_checked_is_from_sent_for_any_bytes() {
        use rand::{Rng, SeedableRng};
        const PARTS: [&[u8]; 22] = [
            b"From: alice@example.com",
            b"From: bob@evil.example",
            b"from:bob@evil.example",
            b"FROM : alice@example.com",
            b"Sender: bob@evil.example",
            b"From: Alice <alice@example.com>, bob@evil.example",
            b"Subject: hi",
            b"To: r@example.net",
            b"Bcc: x@example.net",
            b"X-Outbox-Class: bulk",
            b"\r\n",
            b"\r\n",
            b"\r\n",
            b"\n",
            b"\r",
            b"\r\n ",
            b"\r\n\t",
            b" ",
            b":",
            b"\0",
            b"\n.\n",
            b"body",
        ];
        let account = alice();
        let identity = account.identities[0].clone();
        let mut rng = rand::rngs::StdRng::seed_from_u64(15);
        let (mut accepted, mut refused) = (0, 0);
        for case in 0..20_000 {
            let n = rng.random_range(1..14);
            let mut mime = Vec::new();
            for _ in 0..n {
                mime.extend_from_slice(PARTS[rng.random_range(0..PARTS.len())]);
            }
            if check_text(&mime)
                .and_then(|()| check_header_senders(&account, &mime))
                .is_err()
            {
                refused += 1;
                continue;
            }
            accepted += 1;
            let checked: Vec<String> = MessageParser::default()
                .parse_headers(&mime)
                .and_then(|m| m.from().cloned())
                .map(|f| {
                    f.iter()
                        .filter_map(|a| a.address().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let job = Job {
                id: QueueId(case),
                login: "alice".into(),
                tenant_id: "t".into(),
                account_id: "a".into(),
                user_id: "u".into(),
                identity_id: identity.id.clone(),
                mail_from: "alice@example.com".into(),
                recipients: vec!["r@example.net".into()],
                message_class: MessageClass::Transactional,
                size: 0,
            };
            let mut stored = b"Received: from x ([127.0.0.1])\r\n\tby mx.test (Outbox);\r\n\tMon, 1 Jan 2024 00:00:00 +0000\r\n".to_vec();
            stored.extend_from_slice(&mime);
            let stored = bytes::Bytes::from(stored);
            let sent =
                crate::sender::prepare::outgoing_mime(&job, &stored, &identity, "mx.test").to_vec();
            let parsed = MessageParser::default().parse_headers(&sent).unwrap();
            let froms = parsed
                .headers()
                .iter()
                .filter(|h| h.name().eq_ignore_ascii_case("From"))
                .count();
            let seen: Vec<String> = parsed
                .from()
                .map(|f| {
                    f.iter()
                        .filter_map(|a| a.address().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            assert!(
                froms == 1 && seen == checked,
                "case {case}: {:?}\nsent {:?}: {froms} From fields, {seen:?}; checked {checked:?}",
                String::from_utf8_lossy(&mime),
                String::from_utf8_lossy(&sent),
            );
            assert!(seen.iter().all(|a| a == "alice@example.com"), "case {case}");
        }
        assert!(
            accepted > 100 && refused > 100,
            "{accepted} accepted, {refused} refused"
        );
    }
}
