//! The connection driver: moves bytes between the socket and the [`Session`], enforces the
//! timeouts, upgrades to TLS, and runs the slow steps (password check, storage) the session
//! asks for. It makes no policy decisions of its own.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::data::DotReader;
use super::guard::AuthThrottle;
use super::reply;
use super::session::{Action, AuthOutcome, PortKind, Session, SessionLimits};
use crate::accounts::PasswordChecker;
use crate::config::SmtpConfig;
use crate::live::Live;
use crate::metrics::Metrics;
use crate::submission::{SubmitError, SubmitRequest, Submitter, Trace};

/// Room made in the input buffer before each read (a TLS record's plaintext is up to 16 KiB;
/// what does not fit is read by the next call, from rustls's buffer, without a syscall).
const READ_CHUNK: usize = 8 * 1024;

/// Everything a connection needs, shared by all of them.
pub struct ConnContext {
    pub hostname: String,
    pub smtp: SmtpConfig,
    pub submitter: Arc<Submitter>,
    pub auth_throttle: Arc<AuthThrottle>,
    pub passwords: Arc<PasswordChecker>,
    pub metrics: Arc<Metrics>,
    /// The TLS configuration; a reload replaces it for new handshakes.
    pub tls: Arc<Live<rustls::ServerConfig>>,
}

/// Plain TCP until STARTTLS, TLS after.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Only while upgrading.
    Upgrading,
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Upgrading => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Upgrading => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
            Stream::Upgrading => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Upgrading => Poll::Ready(Ok(())),
        }
    }
}

/// Why reading stopped short of a full line or body.
enum ReadError {
    Timeout,
    Closed,
    Shutdown,
}

struct Conn {
    stream: Stream,
    input: Vec<u8>,
    output: Vec<u8>,
    peer: SocketAddr,
    ctx: Arc<ConnContext>,
    session: Session,
    shutdown: watch::Receiver<bool>,
    /// The whole connection ends by then, whatever it is doing.
    session_deadline: Instant,
    /// One budget for all BDAT chunks of a transaction, so chunking cannot stretch it.
    bdat_deadline: Option<Instant>,
}

/// Serves one client until it quits, misbehaves past its budgets, times out, or the server
/// shuts down between transactions.
pub async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    port: PortKind,
    ctx: Arc<ConnContext>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let ctx_session_secs = ctx.smtp.session_timeout_secs;
    let submitter = ctx.submitter.clone();
    let session = Session::new(
        port,
        ctx.hostname.clone(),
        SessionLimits {
            max_hold_secs: ctx.smtp.max_hold_secs,
            max_message_size: ctx.smtp.max_message_size,
            max_recipients: ctx.smtp.max_recipients,
            max_errors: ctx.smtp.max_errors,
            max_auth_failures: ctx.smtp.max_auth_failures,
            addresses: ctx.submitter.address_policy(),
        },
        ctx.smtp.max_line_length,
        Box::new(move |size| submitter.has_room(size)),
    );
    let mut conn = Conn {
        stream: Stream::Plain(tcp),
        input: Vec::with_capacity(4096),
        output: Vec::with_capacity(1024),
        peer,
        ctx,
        session,
        shutdown,
        session_deadline: Instant::now() + Duration::from_secs(ctx_session_secs),
        bdat_deadline: None,
    };
    if port == PortKind::Submissions && !conn.handshake().await {
        return;
    }
    let greeting = conn.session.greeting();
    if let Err(e) = conn.run(greeting).await {
        tracing::debug!(%peer, error = %e, "connection ended with an I/O error");
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.stream.shutdown()).await;
}

impl Conn {
    async fn run(&mut self, first: Vec<Action>) -> io::Result<()> {
        let mut actions: VecDeque<Action> = first.into();
        loop {
            while let Some(action) = actions.pop_front() {
                let more = match action {
                    Action::Reply(r) => {
                        r.write_to(&mut self.output);
                        continue;
                    }
                    Action::Close => {
                        self.flush().await?;
                        return Ok(());
                    }
                    Action::StartTls => {
                        self.flush().await?;
                        // RFC 3207 §4.2 / CVE-2011-0411: nothing sent before TLS may count after.
                        self.input.clear();
                        if !self.handshake().await {
                            return Ok(());
                        }
                        self.session.tls_started();
                        continue;
                    }
                    Action::ReadData => self.read_data().await?,
                    Action::ReadBdat { size, keep } => self.read_bdat(size, keep).await?,
                    Action::Authenticate { login, password } => {
                        self.authenticate(login, password).await
                    }
                    Action::CheckRecipient { address } => {
                        let verdict = match self.session.account() {
                            Some(account) => {
                                self.ctx.submitter.check_recipient(account, &address).await
                            }
                            None => Err(SubmitError::Storage),
                        };
                        if let Err(e @ SubmitError::Suppressed { .. }) = &verdict {
                            self.ctx.metrics.refused("suppressed");
                            tracing::info!(peer = %self.peer, error = %e, "recipient refused");
                        }
                        Some(self.session.recipient_checked(address, verdict))
                    }
                    Action::Submit {
                        mail_from,
                        recipients,
                        mime,
                        release_at,
                    } => self.submit(mail_from, recipients, mime, release_at).await,
                };
                match more {
                    Some(more) => actions.extend(more),
                    None => return Ok(()),
                }
            }
            match self.read_line().await {
                Ok(Some(line)) => actions.extend(self.session.line(&line)),
                Ok(None) => actions.extend(self.session.line_too_long()),
                Err(ReadError::Closed) => return Ok(()),
                Err(ReadError::Timeout) => {
                    tracing::info!(peer = %self.peer, "command timeout");
                    actions.extend([Action::Reply(reply::timeout()), Action::Close]);
                }
                Err(ReadError::Shutdown) => {
                    actions.extend([Action::Reply(reply::shutting_down()), Action::Close]);
                }
            }
        }
    }

    /// Sends the pending replies. A client that stops reading cannot hold the connection:
    /// writing and flushing (TLS buffers until the socket drains) share one deadline.
    async fn flush(&mut self) -> io::Result<()> {
        if !self.output.is_empty() {
            let deadline = Instant::now() + Duration::from_secs(self.ctx.smtp.command_timeout_secs);
            let write = async {
                self.stream.write_all(&self.output).await?;
                self.stream.flush().await
            };
            match timeout_at(deadline.min(self.session_deadline), write).await {
                Ok(r) => r?,
                Err(_) => return Err(io::ErrorKind::TimedOut.into()),
            }
            self.output.clear();
        }
        Ok(())
    }

    /// Reads more input before `deadline`, flushing pending replies first (pipelining: replies
    /// go out when the client's batch has been consumed). With `interruptible`, a shutdown
    /// ends the wait.
    async fn fill(&mut self, deadline: Instant, interruptible: bool) -> Result<(), ReadError> {
        self.flush().await.map_err(|_| ReadError::Closed)?;
        // Straight into `input`'s spare room: a buffer of the future's own (it was a 16 KiB
        // array, zeroed) lives as long as the wait, i.e. all the time in an idle session.
        self.input.reserve(READ_CHUNK);
        let read = async {
            match timeout_at(deadline, self.stream.read_buf(&mut self.input)).await {
                Err(_) => Err(ReadError::Timeout),
                Ok(Ok(0)) | Ok(Err(_)) => Err(ReadError::Closed),
                Ok(Ok(n)) => Ok(n),
            }
        };
        let n = if interruptible {
            let mut shutdown = self.shutdown.clone();
            tokio::select! {
                n = read => n?,
                _ = shutdown.wait_for(|stop| *stop) => return Err(ReadError::Shutdown),
            }
        } else {
            read.await?
        };
        debug_assert!(n > 0);
        Ok(())
    }

    /// One command line (CRLF included), or `None` if it was too long and has been discarded.
    /// The whole line must arrive within the command timeout, however it is dribbled.
    async fn read_line(&mut self) -> Result<Option<Vec<u8>>, ReadError> {
        let deadline = (Instant::now() + Duration::from_secs(self.ctx.smtp.command_timeout_secs))
            .min(self.session_deadline);
        let max = self.ctx.smtp.max_command_length;
        // A graceful stop waits for an open transaction to finish.
        let idle = !self.session.in_transaction();
        let mut too_long = false;
        let mut scanned = 0;
        loop {
            if let Some(i) = self.input[scanned..].iter().position(|b| *b == b'\n') {
                let end = scanned + i + 1;
                let line: Vec<u8> = self.input.drain(..end).collect();
                return Ok((!too_long && line.len() <= max).then_some(line));
            }
            if self.input.len() > max {
                too_long = true;
                self.input.clear();
            }
            scanned = self.input.len();
            if idle && *self.shutdown.borrow() && self.input.is_empty() {
                return Err(ReadError::Shutdown);
            }
            self.fill(deadline, idle && self.input.is_empty()).await?;
        }
    }

    fn data_deadline(&self) -> Instant {
        (Instant::now() + Duration::from_secs(self.ctx.smtp.data_timeout_secs))
            .min(self.session_deadline)
    }

    async fn read_data(&mut self) -> io::Result<Option<Vec<Action>>> {
        let deadline = self.data_deadline();
        let mut reader = DotReader::new(
            self.ctx.smtp.max_line_length,
            self.ctx.smtp.max_message_size,
        );
        loop {
            if let Some(used) = reader.feed(&self.input) {
                self.input.drain(..used);
                return Ok(Some(self.session.data_done(reader.finish())));
            }
            self.input.clear();
            if !self.fill_or_end(deadline).await? {
                return Ok(None);
            }
        }
    }

    async fn read_bdat(&mut self, size: usize, keep: bool) -> io::Result<Option<Vec<Action>>> {
        let deadline = match self.bdat_deadline {
            Some(deadline) => deadline,
            None => *self.bdat_deadline.insert(self.data_deadline()),
        };
        let mut chunk = Vec::with_capacity(if keep { size.min(1 << 20) } else { 0 });
        let mut left = size;
        loop {
            let take = left.min(self.input.len());
            if keep {
                chunk.extend_from_slice(&self.input[..take]);
            }
            self.input.drain(..take);
            left -= take;
            if left == 0 {
                let actions = self.session.bdat_chunk(&chunk);
                if !self.session.in_transaction() {
                    self.bdat_deadline = None;
                }
                return Ok(Some(actions));
            }
            if !self.fill_or_end(deadline).await? {
                return Ok(None);
            }
        }
    }

    /// Reads more of a body; false when the connection must end (timeout: 421 queued).
    async fn fill_or_end(&mut self, deadline: Instant) -> io::Result<bool> {
        match self.fill(deadline, false).await {
            Ok(()) => Ok(true),
            Err(ReadError::Timeout) => {
                tracing::info!(peer = %self.peer, "data timeout");
                reply::timeout().write_to(&mut self.output);
                self.flush().await?;
                Ok(false)
            }
            Err(_) => Ok(false),
        }
    }

    async fn handshake(&mut self) -> bool {
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Upgrading) else {
            return false;
        };
        let limit = Duration::from_secs(self.ctx.smtp.tls_handshake_timeout_secs);
        let acceptor = TlsAcceptor::from(self.ctx.tls.get());
        match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => {
                self.stream = Stream::Tls(Box::new(tls));
                true
            }
            Ok(Err(e)) => {
                tracing::info!(peer = %self.peer, error = %e, "TLS handshake failed");
                false
            }
            Err(_) => {
                tracing::info!(peer = %self.peer, "TLS handshake timeout");
                false
            }
        }
    }

    fn tls_description(&self) -> Option<String> {
        let Stream::Tls(tls) = &self.stream else {
            return None;
        };
        let (_, conn) = tls.get_ref();
        Some(format!(
            "{:?} with cipher {:?}",
            conn.protocol_version()?,
            conn.negotiated_cipher_suite()?.suite()
        ))
    }

    async fn authenticate(&mut self, login: String, password: String) -> Option<Vec<Action>> {
        let ip = self.peer.ip();
        let started = Instant::now();
        // A login the cache remembers costs no check and takes no slot of the failure budget;
        // any other takes its slot before the check starts (see AuthThrottle).
        let outcome = if let Some(account) = self.ctx.passwords.remembered(&login, &password) {
            tracing::info!(peer = %self.peer, login = %account.login, "authenticated");
            AuthOutcome::Success(account)
        } else if let Some(attempt) = self.ctx.auth_throttle.begin(ip).await {
            match self.ctx.passwords.check(login.clone(), password).await {
                Some(account) => {
                    attempt.succeeded();
                    tracing::info!(peer = %self.peer, login = %account.login, "authenticated");
                    AuthOutcome::Success(account)
                }
                None => {
                    drop(attempt);
                    tracing::info!(peer = %self.peer, %login, "authentication failed");
                    self.ctx.metrics.auth_failures.inc();
                    AuthOutcome::Failure
                }
            }
        } else {
            AuthOutcome::CoolingDown
        };
        // Every answer takes at least the same time, whatever happened above.
        let floor = Duration::from_millis(self.ctx.smtp.auth_min_duration_ms);
        tokio::time::sleep_until(started + floor).await;
        Some(self.session.auth_done(outcome))
    }

    async fn submit(
        &mut self,
        mail_from: String,
        recipients: Vec<String>,
        mime: Vec<u8>,
        release_at: Option<u64>,
    ) -> Option<Vec<Action>> {
        let Some(account) = self.session.account().cloned() else {
            return Some(vec![Action::Reply(reply::auth_required())]);
        };
        let request = SubmitRequest {
            account,
            mail_from,
            recipients,
            mime,
            release_at,
            trace: Trace {
                helo: self.session.helo().to_string(),
                client_ip: self.peer.ip(),
                protocol: self.session.protocol(),
                tls: self.tls_description(),
            },
        };
        let login = request.account.login.clone();
        let result = self.ctx.submitter.submit(request).await;
        match &result {
            Ok(_) => {
                self.ctx.metrics.accepted.inc();
            }
            Err(e) => self.ctx.metrics.refused(match e {
                SubmitError::NotOwner(_) => "not_owner",
                SubmitError::BadMessage(_) => "bad_message",
                SubmitError::SpoolFull => "spool_full",
                SubmitError::Storage => "storage",
                SubmitError::Suppressed { .. } => "suppressed",
                SubmitError::Address(_) => "address",
                SubmitError::Attachment(_) => "attachment",
                SubmitError::Held(_) => "reputation_hold",
            }),
        }
        match &result {
            Ok(id) => tracing::info!(peer = %self.peer, %login, queue_id = %id, "message accepted"),
            Err(e) => tracing::info!(peer = %self.peer, %login, error = %e, "message refused"),
        }
        Some(self.session.submitted(result))
    }
}
