//! The SMTP session as a state machine without sockets (STYLE habit 2).
//!
//! The connection driver feeds it whole lines and the results of the slow things it asked for
//! (reading a body, checking a password, storing a message); the session answers with
//! [`Action`]s. One handler per verb; every policy decision of RFC 5321/6409/3207/4954 lives here.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use smtp_proto::{
    Error as ParseError, Request, AUTH_LOGIN, AUTH_PLAIN, MAIL_BODY_BINARYMIME, MAIL_SMTPUTF8,
};

use super::data::{BodyError, LineRules};
use super::reply::{self, Reply};
use crate::accounts::Account;
use crate::address::{AddressError, AddressPolicy};
use crate::clock::{rfc3339, Clock, SystemClock};
use crate::domain::QueueId;
use crate::submission::SubmitError;

/// Which kind of listener the client reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    /// Plain text until STARTTLS (RFC 6409, port 587).
    Submission,
    /// TLS from the first byte (RFC 8314, port 465).
    Submissions,
}

/// The limits one session enforces (see `config::SmtpConfig` for their origins).
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// Longest FUTURERELEASE hold (RFC 4865), in seconds; 0 disables the extension.
    pub max_hold_secs: u64,
    pub max_message_size: usize,
    pub max_recipients: usize,
    pub max_errors: u32,
    pub max_auth_failures: u32,
    /// What envelope addresses the transport carries: SMTPUTF8 is offered only when it
    /// carries UTF-8 (not SES).
    pub addresses: AddressPolicy,
}

/// What the driver must do next, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Reply(Reply),
    /// Upgrade to TLS (the 220 has been queued); throw away anything already buffered.
    StartTls,
    /// Read a dot-stuffed DATA body, then call [`Session::data_done`].
    ReadData,
    /// Read exactly `size` octets, then call [`Session::bdat_chunk`]; when `keep` is false
    /// they will be thrown away, so do not hold them in memory.
    ReadBdat {
        size: usize,
        keep: bool,
    },
    /// Check the credentials, then call [`Session::auth_done`].
    Authenticate {
        login: String,
        password: String,
    },
    /// Ask whether the account may send to `address` (the suppression list), then call
    /// [`Session::recipient_checked`].
    CheckRecipient {
        address: String,
    },
    /// Store the message, then call [`Session::submitted`].
    Submit {
        mail_from: String,
        recipients: Vec<String>,
        mime: Vec<u8>,
        /// When to release it (RFC 4865 FUTURERELEASE), Unix milliseconds.
        release_at: Option<u64>,
    },
    Close,
}

/// The verdict on an AUTH attempt.
pub enum AuthOutcome {
    Success(Arc<Account>),
    Failure,
    /// Too many recent failures from this client's address.
    CoolingDown,
}

/// A mail transaction (RFC 5321 §3.3), from MAIL to the end of the body.
struct Transaction {
    mail_from: String,
    release_at: Option<u64>,
    recipients: Vec<String>,
    /// BDAT chunks so far.
    body: Vec<u8>,
    rules: Option<LineRules>,
    /// Once a BDAT chunk failed, every later chunk of the transaction gets this reply.
    failed: Option<Reply>,
}

/// A SASL exchange waiting for the client's next line.
enum Sasl {
    Plain,
    LoginUser,
    LoginPassword(String),
}

pub struct Session {
    hostname: String,
    limits: SessionLimits,
    max_line_length: usize,
    tls: bool,
    /// EHLO/HELO name; `None` before it and after STARTTLS.
    helo: Option<String>,
    extended: bool,
    account: Option<Arc<Account>>,
    transaction: Option<Transaction>,
    sasl: Option<Sasl>,
    /// Whether the BDAT chunk being read is the last one.
    bdat_last: bool,
    errors: u32,
    auth_failures: u32,
    room: Box<dyn Fn(u64) -> bool + Send + Sync>,
    clock: Arc<dyn Clock>,
}

impl Session {
    /// `room(size)` tells whether the spool can take `size` more octets.
    pub fn new(
        port: PortKind,
        hostname: String,
        limits: SessionLimits,
        max_line_length: usize,
        room: Box<dyn Fn(u64) -> bool + Send + Sync>,
    ) -> Self {
        Session {
            tls: port == PortKind::Submissions,
            hostname,
            limits,
            max_line_length,
            helo: None,
            extended: false,
            account: None,
            transaction: None,
            sasl: None,
            bdat_last: false,
            errors: 0,
            auth_failures: 0,
            room,
            clock: Arc::new(SystemClock),
        }
    }

    /// Replaces the wall clock (FUTURERELEASE times are checked against it).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn greeting(&self) -> Vec<Action> {
        vec![Action::Reply(Reply::plain(
            220,
            vec![format!("{} ESMTP Outbox", self.hostname)],
        ))]
    }

    pub fn helo(&self) -> &str {
        self.helo.as_deref().unwrap_or("unknown")
    }

    /// Between MAIL and the end of the body (a graceful stop waits for it to finish).
    pub fn in_transaction(&self) -> bool {
        self.transaction.is_some()
    }

    pub fn account(&self) -> Option<&Arc<Account>> {
        self.account.as_ref()
    }

    /// RFC 3848 protocol name for the `Received` header.
    pub fn protocol(&self) -> &'static str {
        match (self.extended, self.tls, self.account.is_some()) {
            (false, _, _) => "SMTP",
            (true, true, true) => "ESMTPSA",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, false, false) => "ESMTP",
        }
    }

    /// A client error: counted, and past the budget the connection is closed.
    fn error(&mut self, reply: Reply) -> Vec<Action> {
        self.errors += 1;
        if self.errors >= self.limits.max_errors {
            return vec![Action::Reply(reply::too_many_errors()), Action::Close];
        }
        vec![Action::Reply(reply)]
    }

    fn reply(reply: Reply) -> Vec<Action> {
        vec![Action::Reply(reply)]
    }

    /// A command line over the length limit (already discarded by the driver).
    pub fn line_too_long(&mut self) -> Vec<Action> {
        self.sasl = None;
        self.error(reply::line_too_long())
    }

    /// One complete line, CRLF included: a command, or the next step of a SASL exchange.
    pub fn line(&mut self, line: &[u8]) -> Vec<Action> {
        if !line.ends_with(b"\r\n") {
            self.sasl = None;
            return self.error(reply::must_end_with_crlf());
        }
        if let Some(sasl) = self.sasl.take() {
            return self.sasl_step(sasl, &line[..line.len() - 2]);
        }
        if is_http(line) {
            tracing::info!("HTTP request on the SMTP port, closing");
            return vec![Action::Close];
        }
        match Request::parse(&mut line.iter()) {
            Ok(request) => self.command(request),
            Err(ParseError::InvalidRecipientAddress) if bare_local_name(line) => {
                self.error(reply::unqualified_recipient())
            }
            Err(e) => self.parse_error(e),
        }
    }

    fn parse_error(&mut self, e: ParseError) -> Vec<Action> {
        let reply = match e {
            ParseError::UnknownCommand => reply::unknown_command(),
            ParseError::InvalidSenderAddress => Reply::new(501, 1, 7, "Invalid sender address"),
            ParseError::InvalidRecipientAddress => {
                Reply::new(501, 1, 3, "Invalid recipient address")
            }
            ParseError::UnsupportedParameter { .. } => {
                Reply::new(555, 5, 4, "Unsupported parameter")
            }
            ParseError::SyntaxError { syntax } => reply::syntax(&format!("Syntax: {syntax}")),
            ParseError::InvalidParameter { param } => {
                reply::syntax(&format!("Invalid parameter {param}"))
            }
            _ => reply::syntax("Syntax error"),
        };
        self.error(reply)
    }

    fn command(&mut self, request: Request<std::borrow::Cow<'_, str>>) -> Vec<Action> {
        match request {
            Request::Ehlo { host } => self.ehlo(host.into_owned(), true),
            Request::Helo { host } => self.ehlo(host.into_owned(), false),
            Request::StartTls => self.starttls(),
            Request::Auth { mechanism, initial_response } => self.auth(mechanism, &initial_response),
            Request::Mail { from } => {
                let hold = (from.hold_for, from.hold_until);
                self.mail(from.address.into_owned(), from.size, from.flags, hold)
            }
            Request::Rcpt { to } => self.rcpt(to.address.into_owned()),
            Request::Data => self.data(),
            Request::Bdat { chunk_size, is_last } => self.bdat(chunk_size, is_last),
            Request::Rset => {
                self.transaction = None;
                Self::reply(reply::ok())
            }
            Request::Noop { .. } => Self::reply(reply::ok()),
            Request::Quit => vec![
                Action::Reply(Reply::new(221, 0, 0, "Bye")),
                Action::Close,
            ],
            // RFC 5321 §3.5.3: 252 when we will not verify.
            Request::Vrfy { .. } => Self::reply(Reply::new(252, 5, 0, "Cannot VRFY user, but will accept message")),
            Request::Help { .. } => Self::reply(Reply::new(
                214,
                0,
                0,
                "Outbox submission: EHLO STARTTLS AUTH MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT",
            )),
            Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. }
            | Request::Lhlo { .. } => self.error(reply::not_implemented()),
        }
    }

    fn ehlo(&mut self, host: String, extended: bool) -> Vec<Action> {
        self.transaction = None;
        self.helo = Some(host);
        self.extended = extended;
        if !extended {
            return Self::reply(Reply::plain(250, vec![self.hostname.clone()]));
        }
        let mut lines = vec![
            self.hostname.clone(),
            "PIPELINING".into(),
            format!("SIZE {}", self.limits.max_message_size),
            "8BITMIME".into(),
        ];
        if self.limits.addresses.smtputf8() {
            lines.push("SMTPUTF8".into());
        }
        lines.extend(["ENHANCEDSTATUSCODES".into(), "CHUNKING".into()]);
        if self.limits.max_hold_secs > 0 {
            // RFC 4865 §3: the longest interval and the latest date we accept.
            let max = self.limits.max_hold_secs;
            let latest = rfc3339(self.clock.now_ms() + max * 1000);
            lines.push(format!("FUTURERELEASE {max} {latest}"));
        }
        if self.tls {
            // RFC 4954 §4: offer AUTH only where it may be used.
            lines.push("AUTH PLAIN LOGIN".into());
        } else {
            lines.push("STARTTLS".into());
        }
        Self::reply(Reply::plain(250, lines))
    }

    fn starttls(&mut self) -> Vec<Action> {
        if self.tls {
            return self.error(reply::bad_sequence("TLS already active"));
        }
        vec![
            Action::Reply(Reply::new(220, 0, 0, "Ready to start TLS")),
            Action::StartTls,
        ]
    }

    /// RFC 3207 §4.2: after the handshake the client starts afresh with EHLO.
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.helo = None;
        self.transaction = None;
    }

    fn auth(&mut self, mechanism: u64, initial: &str) -> Vec<Action> {
        if !self.tls {
            return self.error(reply::tls_required());
        }
        if self.helo.is_none() {
            return self.error(reply::bad_sequence("Send EHLO first"));
        }
        if self.account.is_some() {
            return self.error(reply::bad_sequence("Already authenticated"));
        }
        if self.transaction.is_some() {
            return self.error(reply::bad_sequence(
                "AUTH not allowed during a mail transaction",
            ));
        }
        match (mechanism, initial.is_empty()) {
            (AUTH_PLAIN, true) => self.challenge(Sasl::Plain, ""),
            (AUTH_PLAIN, false) => self.sasl_step(Sasl::Plain, initial.as_bytes()),
            (AUTH_LOGIN, true) => self.challenge(Sasl::LoginUser, "VXNlcm5hbWU6"),
            (AUTH_LOGIN, false) => self.sasl_step(Sasl::LoginUser, initial.as_bytes()),
            _ => self.error(Reply::new(
                504,
                5,
                4,
                "Unrecognized authentication mechanism",
            )),
        }
    }

    fn challenge(&mut self, next: Sasl, text: &str) -> Vec<Action> {
        self.sasl = Some(next);
        Self::reply(Reply::plain(334, vec![text.into()]))
    }

    fn sasl_step(&mut self, step: Sasl, response: &[u8]) -> Vec<Action> {
        if response == b"*" {
            return self.error(reply::auth_cancelled());
        }
        // RFC 4954 §4: "=" is an empty initial response.
        let decoded = if response == b"=" {
            Ok(Vec::new())
        } else {
            B64.decode(response)
        };
        let Ok(decoded) = decoded else {
            return self.error(Reply::new(501, 5, 2, "Invalid base64 data"));
        };
        let text = String::from_utf8_lossy(&decoded).into_owned();
        match step {
            Sasl::Plain => {
                // RFC 4616: [authzid] NUL authcid NUL passwd.
                let mut parts = text.splitn(3, '\0');
                let (authz, login, password) = (parts.next(), parts.next(), parts.next());
                let (Some(authz), Some(login), Some(password)) = (authz, login, password) else {
                    return self.error(Reply::new(501, 5, 5, "Malformed PLAIN response"));
                };
                // Acting for someone else is not offered: such a login is treated as unknown,
                // which still costs a full password check.
                let login = if authz.is_empty() || authz == login {
                    login
                } else {
                    ""
                };
                vec![Action::Authenticate {
                    login: login.to_string(),
                    password: password.to_string(),
                }]
            }
            Sasl::LoginUser => self.challenge(Sasl::LoginPassword(text), "UGFzc3dvcmQ6"),
            Sasl::LoginPassword(login) => vec![Action::Authenticate {
                login,
                password: text,
            }],
        }
    }

    pub fn auth_done(&mut self, outcome: AuthOutcome) -> Vec<Action> {
        match outcome {
            AuthOutcome::Success(account) => {
                self.account = Some(account);
                Self::reply(reply::auth_ok())
            }
            AuthOutcome::CoolingDown => self.error(reply::auth_cooldown()),
            AuthOutcome::Failure => {
                self.auth_failures += 1;
                if self.auth_failures >= self.limits.max_auth_failures {
                    return vec![
                        Action::Reply(reply::too_many_auth_failures()),
                        Action::Close,
                    ];
                }
                self.error(reply::auth_failed())
            }
        }
    }

    /// RFC 4865: HOLDFOR (seconds) or HOLDUNTIL (a date-time, which the parser hands over as a
    /// Unix time in seconds), at most one, within the limit.
    fn release_at(&self, (hold_for, hold_until): (u64, u64)) -> Result<Option<u64>, Reply> {
        let now = self.clock.now_ms();
        let max = self.limits.max_hold_secs;
        // In milliseconds. Checked: a client's far-off date (HOLDUNTIL in the year 999999999)
        // does not fit in a u64 of milliseconds; None is then a hold past any limit.
        let release = match (hold_for, hold_until) {
            (0, 0) => return Ok(None),
            _ if max == 0 => return Err(Reply::new(555, 5, 4, "FUTURERELEASE is not offered")),
            (f, u) if f > 0 && u > 0 => {
                return Err(Reply::new(501, 5, 5, "Give HOLDFOR or HOLDUNTIL, not both"))
            }
            (f, 0) => f.checked_mul(1000).and_then(|ms| now.checked_add(ms)),
            // A time already past means: release at once.
            (0, u) => u.checked_mul(1000).map(|ms| ms.max(now)),
            _ => unreachable!(),
        };
        let latest = now.saturating_add(max.saturating_mul(1000));
        match release {
            Some(release) if release <= latest => Ok(Some(release)),
            _ => Err(Reply::new(
                501,
                5,
                4,
                format!("Hold longer than {max} seconds"),
            )),
        }
    }

    fn mail(&mut self, from: String, size: usize, flags: u64, hold: (u64, u64)) -> Vec<Action> {
        if self.helo.is_none() {
            return self.error(reply::bad_sequence("Send EHLO first"));
        }
        if self.account.is_none() {
            return self.error(if self.tls {
                reply::auth_required()
            } else {
                reply::tls_required()
            });
        }
        if self.transaction.is_some() {
            return self.error(reply::bad_sequence("Sender already given"));
        }
        if flags & MAIL_BODY_BINARYMIME != 0 {
            return self.error(Reply::new(555, 5, 4, "BODY=BINARYMIME is not supported"));
        }
        // RFC 5321 §4.1.1.11: a parameter of an extension not offered is 555.
        if flags & MAIL_SMTPUTF8 != 0 && !self.limits.addresses.smtputf8() {
            return self.error(Reply::new(555, 5, 4, "SMTPUTF8 is not supported"));
        }
        let from = match self.limits.addresses.envelope(&from) {
            Ok(from) => from,
            Err(e) => return self.address_refused(e, "sender"),
        };
        if size > self.limits.max_message_size {
            return self.error(reply::too_big(self.limits.max_message_size));
        }
        let release_at = match self.release_at(hold) {
            Ok(r) => r,
            Err(reply) => return self.error(reply),
        };
        let Some(account) = &self.account else {
            unreachable!("checked above")
        };
        if account.identity_for(&from).is_none() {
            tracing::info!(login = %account.login, mail_from = %from, "MAIL FROM not owned");
            return self.error(reply::not_owner());
        }
        if !(self.room)(size as u64) {
            return Self::reply(reply::spool_full());
        }
        self.transaction = Some(Transaction {
            mail_from: from,
            release_at,
            recipients: Vec::new(),
            body: Vec::new(),
            rules: None,
            failed: None,
        });
        Self::reply(Reply::new(250, 1, 0, "Sender ok"))
    }

    fn rcpt(&mut self, to: String) -> Vec<Action> {
        let max = self.limits.max_recipients;
        if self.transaction.is_none() {
            return self.error(reply::bad_sequence("Need MAIL before RCPT"));
        }
        if to.is_empty() {
            return self.error(Reply::new(501, 1, 3, "Invalid recipient address"));
        }
        if !to.contains('@') {
            return self.error(reply::unqualified_recipient());
        }
        let to = match self.limits.addresses.envelope(&to) {
            Ok(to) => to,
            Err(e) => return self.address_refused(e, "recipient"),
        };
        let Some(tx) = &mut self.transaction else {
            unreachable!("checked above")
        };
        if !tx.recipients.iter().any(|r| r.eq_ignore_ascii_case(&to)) {
            if tx.recipients.len() >= max {
                // RFC 5321 §4.5.3.1.10: the client sends the rest in another transaction;
                // that is normal, not an error to count.
                return Self::reply(reply::too_many_recipients());
            }
            // Each recipient is judged on its own (RFC 5321 §3.3): a suppressed one gets its
            // 550 here and the others still get the message.
            return vec![Action::CheckRecipient { address: to }];
        }
        Self::reply(reply::recipient_ok())
    }

    /// The verdict on a recipient asked about with [`Action::CheckRecipient`].
    pub fn recipient_checked(
        &mut self,
        address: String,
        verdict: Result<(), SubmitError>,
    ) -> Vec<Action> {
        match verdict {
            Ok(()) => match &mut self.transaction {
                Some(tx) => {
                    tx.recipients.push(address);
                    Self::reply(reply::recipient_ok())
                }
                None => Self::reply(reply::local_error()),
            },
            // RFC 3463 X.7.1: delivery not authorized, for this recipient only. Not counted
            // as a client error: the client cannot know the list.
            Err(e @ SubmitError::Suppressed { .. }) => {
                Self::reply(Reply::new(550, 7, 1, e.to_string()))
            }
            Err(_) => Self::reply(reply::local_error()),
        }
    }

    /// An envelope address the transport cannot carry (see [`crate::address`]).
    fn address_refused(&mut self, e: AddressError, role: &str) -> Vec<Action> {
        tracing::info!(error = %e, "envelope address refused");
        match e {
            AddressError::NonAsciiLocalPart(_) => self.error(reply::non_ascii_address(role)),
            AddressError::BadDomain(_) => self.error(Reply::new(
                501,
                1,
                if role == "sender" { 7 } else { 3 },
                format!("Invalid {role} domain"),
            )),
        }
    }

    fn data(&mut self) -> Vec<Action> {
        match &self.transaction {
            None => self.error(reply::bad_sequence("Need MAIL before DATA")),
            Some(tx) if tx.recipients.is_empty() => {
                self.error(reply::bad_sequence("Need RCPT before DATA"))
            }
            Some(tx) if tx.rules.is_some() => {
                self.error(reply::bad_sequence("DATA not allowed after BDAT"))
            }
            Some(_) => vec![
                Action::Reply(Reply::plain(
                    354,
                    vec!["End data with <CR><LF>.<CR><LF>".into()],
                )),
                Action::ReadData,
            ],
        }
    }

    pub fn data_done(&mut self, body: Result<Vec<u8>, BodyError>) -> Vec<Action> {
        let Some(tx) = self.transaction.take() else {
            return Self::reply(reply::local_error());
        };
        match body {
            Ok(mime) => vec![Action::Submit {
                mail_from: tx.mail_from,
                recipients: tx.recipients,
                mime,
                release_at: tx.release_at,
            }],
            Err(e) => self.body_error(e),
        }
    }

    fn body_error(&mut self, e: BodyError) -> Vec<Action> {
        let reply = match e {
            BodyError::TooBig => reply::too_big(self.limits.max_message_size),
            BodyError::BareLf | BodyError::BareCr => Reply::new(
                550,
                6,
                0,
                "Message contains a bare CR or LF (lines must end with CRLF)",
            ),
            BodyError::Nul => Reply::new(550, 6, 0, "Message contains a NUL octet"),
            BodyError::LineTooLong => {
                Reply::new(550, 6, 0, "Message contains a line longer than 1000 octets")
            }
        };
        tracing::info!(error = ?e, "message body refused");
        self.error(reply)
    }

    fn bdat(&mut self, size: usize, last: bool) -> Vec<Action> {
        self.bdat_last = last;
        let (max, max_line) = (self.limits.max_message_size, self.max_line_length);
        let keep = match &mut self.transaction {
            Some(tx) if !tx.recipients.is_empty() => {
                tx.rules.get_or_insert_with(|| LineRules::new(max_line));
                if tx.failed.is_none() && size > max.saturating_sub(tx.body.len()) {
                    tx.failed = Some(reply::too_big(max));
                }
                tx.failed.is_none()
            }
            _ => false,
        };
        vec![Action::ReadBdat { size, keep }]
    }

    /// A BDAT chunk has been read (empty when it was thrown away).
    pub fn bdat_chunk(&mut self, chunk: &[u8]) -> Vec<Action> {
        let last = self.bdat_last;
        let Some(tx) = &mut self.transaction else {
            return self.error(reply::bad_sequence("Need MAIL before BDAT"));
        };
        if tx.recipients.is_empty() {
            return self.error(reply::bad_sequence("Need RCPT before BDAT"));
        }
        if let Some(failed) = tx.failed.clone() {
            if last {
                self.transaction = None;
            }
            return self.error(failed);
        }
        tx.body.extend_from_slice(chunk);
        let rules = tx.rules.as_mut().expect("set when the chunk was announced");
        rules.push_slice(chunk);
        if !last {
            return Self::reply(Reply::new(
                250,
                0,
                0,
                format!("{} octets received", chunk.len()),
            ));
        }
        let tx = self.transaction.take().expect("checked above");
        match tx.rules.as_ref().map_or(Ok(()), LineRules::finish) {
            Ok(()) => vec![Action::Submit {
                mail_from: tx.mail_from,
                recipients: tx.recipients,
                mime: tx.body,
                release_at: tx.release_at,
            }],
            Err(e) => self.body_error(e),
        }
    }

    pub fn submitted(&mut self, result: Result<QueueId, SubmitError>) -> Vec<Action> {
        match result {
            Ok(id) => Self::reply(Reply::new(250, 0, 0, format!("Ok: queued as {id}"))),
            Err(SubmitError::NotOwner(_)) => self.error(reply::not_owner()),
            Err(SubmitError::Address(e)) => self.address_refused(e, "recipient"),
            // RFC 3463 X.6.0: the content cannot be carried (the provider refuses the type).
            Err(e @ SubmitError::Attachment(_)) => {
                self.error(Reply::new(550, 6, 0, format!("Message refused: {e}")))
            }
            Err(SubmitError::BadMessage(text)) => self.error(Reply::new(550, 6, 0, text)),
            Err(SubmitError::SpoolFull) => Self::reply(reply::spool_full()),
            Err(SubmitError::Storage) => Self::reply(reply::local_error()),
            // RFC 3463 X.7.1 (delivery not authorized), temporary: the class is held until
            // its bounce or complaint rate recovers or an operator releases it.
            Err(SubmitError::Held(text)) => Self::reply(Reply::new(451, 7, 1, text)),
            // RFC 3463 X.7.1: delivery not authorized; every recipient left was suppressed for
            // the class the message declared (one reply to DATA: the first is named).
            Err(e @ SubmitError::Suppressed { .. }) => {
                Self::reply(Reply::new(550, 7, 1, e.to_string()))
            }
        }
    }
}

/// `RCPT TO:<root>`: a path without a domain (the parser only says "invalid").
fn bare_local_name(line: &[u8]) -> bool {
    let path = line
        .iter()
        .position(|b| *b == b'<')
        .and_then(|start| {
            let rest = &line[start + 1..];
            rest.iter().position(|b| *b == b'>').map(|end| &rest[..end])
        })
        .unwrap_or_default();
    !path.is_empty()
        && path
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~.-".contains(b))
}

/// Browsers and proxies sometimes reach SMTP ports; such "commands" end the connection.
fn is_http(line: &[u8]) -> bool {
    const VERBS: [&[u8]; 8] = [
        b"GET ",
        b"POST ",
        b"HEAD ",
        b"PUT ",
        b"DELETE ",
        b"OPTIONS ",
        b"CONNECT ",
        b"PATCH ",
    ];
    VERBS.iter().any(|v| line.starts_with(v))
}

#[cfg(test)]
mod tests;
