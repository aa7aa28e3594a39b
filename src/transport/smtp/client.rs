//! One SMTP client connection to the smarthost (RFC 5321), kept open for many messages: greeting,
//! EHLO, STARTTLS or implicit TLS, AUTH PLAIN/LOGIN, then transactions (MAIL, RCPT, DATA)
//! pipelined when the relay offers PIPELINING (RFC 2920). Replies are parsed by [`super::reply`];
//! this file only moves bytes and enforces the timeout.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::rope::Rope;

use super::reply::{self, Extensions, Reply, ReplyError};
use crate::config::SmarthostTls;

/// Octets of DATA gathered before a write: large enough that a 40 MB message is a few hundred
/// writes, small enough to stay out of the way of memory accounting.
const WRITE_CHUNK: usize = 64 * 1024;

/// How to reach and greet the relay; built once per process and shared by every connection.
pub struct Relay {
    pub host: String,
    pub port: u16,
    pub tls: SmarthostTls,
    /// The TLS client configuration (one root store for the process); `None` with `tls = "none"`.
    pub connector: Option<TlsConnector>,
    pub server_name: ServerName<'static>,
    /// The name we give in EHLO.
    pub helo: String,
    pub credentials: Option<(String, String)>,
    /// Longest wait for one reply, connect or write.
    pub timeout: Duration,
}

/// Why a connection or a transaction failed, kept precise enough for one classification table
/// (`super::classify`).
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    #[error("TLS with the relay failed: {0}")]
    Tls(io::Error),
    #[error("the relay does not offer STARTTLS")]
    NoStartTls,
    #[error("the relay sent data right after its STARTTLS reply")]
    InjectedAfterStartTls,
    #[error("no AUTH mechanism we speak (PLAIN, LOGIN) is offered; offered: {0}")]
    NoAuthMechanism(String),
    /// The relay refused to talk to us at all (greeting, EHLO, STARTTLS, AUTH).
    #[error("{stage} refused: {reply}")]
    Session { stage: &'static str, reply: Reply },
    /// The relay refused this message (MAIL, DATA, end of data).
    #[error("{stage} refused: {reply}")]
    Transaction { stage: &'static str, reply: Reply },
    /// Some recipients were refused (the message was not sent to any).
    #[error("recipients refused: {}", .0.iter().map(|(r, reply)| format!("<{r}> {reply}")).collect::<Vec<_>>().join("; "))]
    Recipients(Vec<(String, Reply)>),
    #[error("connection to the relay lost: {0}")]
    Io(io::Error),
    #[error("the relay closed the connection")]
    Closed,
    #[error("timed out waiting for the relay")]
    Timeout,
    #[error(transparent)]
    Protocol(#[from] ReplyError),
}

impl SmtpError {
    /// Whether the connection can carry another transaction: every reply was read and the
    /// relay is not closing (421, RFC 5321 §3.8).
    fn keeps_connection(&self) -> bool {
        match self {
            SmtpError::Transaction { reply, .. } => reply.code != 421,
            SmtpError::Recipients(refused) => refused.iter().all(|(_, r)| r.code != 421),
            _ => false,
        }
    }

    /// Whether a reused connection simply turned out dead (closed by the relay while idle): the
    /// transaction can be repeated on a fresh one, if no message data had been sent.
    fn is_stale_connection(&self) -> bool {
        match self {
            SmtpError::Io(_) | SmtpError::Closed => true,
            SmtpError::Session { reply, .. } | SmtpError::Transaction { reply, .. } => {
                reply.code == 421
            }
            _ => false,
        }
    }
}

/// A failed transaction and whether the message may have reached the relay.
#[derive(Debug)]
pub struct TxError {
    pub error: SmtpError,
    /// The message data had started to go out: repeating it elsewhere may duplicate it.
    pub data_sent: bool,
    /// The connection is still good for another transaction.
    pub reusable: bool,
}

impl TxError {
    /// A reused connection found dead before any message data went: try a fresh one.
    pub fn worth_a_fresh_connection(&self) -> bool {
        !self.data_sent && self.error.is_stale_connection()
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
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
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An open, greeted (and, as configured, encrypted and authenticated) connection.
pub struct Connection {
    stream: Stream,
    /// Bytes read and not yet parsed into a reply.
    unread: Vec<u8>,
    extensions: Extensions,
    timeout: Duration,
}

impl Connection {
    /// Connects, reads the greeting, says EHLO, upgrades to TLS and authenticates as `relay`
    /// says.
    pub async fn open(relay: &Relay) -> Result<Connection, SmtpError> {
        let tcp = tokio::time::timeout(
            relay.timeout,
            TcpStream::connect((relay.host.as_str(), relay.port)),
        )
        .await
        .map_err(|_| SmtpError::Connect(io::ErrorKind::TimedOut.into()))?
        .map_err(SmtpError::Connect)?;
        // Commands are small and answered one flight at a time: Nagle would hold each for an ACK.
        tcp.set_nodelay(true).map_err(SmtpError::Connect)?;
        let stream = match (relay.tls, &relay.connector) {
            (SmarthostTls::Implicit, Some(connector)) => {
                Stream::Tls(Box::new(handshake(relay, connector, tcp).await?))
            }
            _ => Stream::Plain(tcp),
        };
        let mut conn = Connection {
            stream,
            unread: Vec::with_capacity(1024),
            extensions: Extensions::default(),
            timeout: relay.timeout,
        };
        let greeting = conn.read_reply().await?;
        if greeting.code != 220 {
            return Err(SmtpError::Session {
                stage: "greeting",
                reply: greeting,
            });
        }
        conn.ehlo(&relay.helo).await?;
        if let (SmarthostTls::Starttls, Some(connector)) = (relay.tls, &relay.connector) {
            if !conn.extensions.starttls {
                return Err(SmtpError::NoStartTls);
            }
            conn.command("STARTTLS", b"STARTTLS\r\n", 220).await?;
            // Anything after the 220 came before the handshake, unprotected (CVE-2011-0411's
            // mirror image): refuse rather than treat it as a reply.
            if !conn.unread.is_empty() {
                return Err(SmtpError::InjectedAfterStartTls);
            }
            let Stream::Plain(tcp) = conn.stream else {
                unreachable!("STARTTLS on a plain connection only")
            };
            conn.stream = Stream::Tls(Box::new(handshake(relay, connector, tcp).await?));
            // RFC 3207 §4.2: forget what the relay said before TLS and ask again.
            conn.ehlo(&relay.helo).await?;
        }
        if let Some((user, password)) = &relay.credentials {
            conn.authenticate(user, password).await?;
        }
        Ok(conn)
    }

    async fn ehlo(&mut self, helo: &str) -> Result<(), SmtpError> {
        let reply = self
            .command("EHLO", format!("EHLO {helo}\r\n").as_bytes(), 250)
            .await?;
        self.extensions = Extensions::from_ehlo(&reply);
        Ok(())
    }

    /// AUTH PLAIN (RFC 4616) when offered, else LOGIN (the de facto mechanism of older relays).
    async fn authenticate(&mut self, user: &str, password: &str) -> Result<(), SmtpError> {
        let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
        let offered = &self.extensions.auth;
        if offered.iter().any(|m| m == "PLAIN") {
            let token = b64(format!("\0{user}\0{password}").as_bytes());
            self.command("AUTH", format!("AUTH PLAIN {token}\r\n").as_bytes(), 235)
                .await?;
        } else if offered.iter().any(|m| m == "LOGIN") {
            self.command("AUTH", b"AUTH LOGIN\r\n", 334).await?;
            self.command(
                "AUTH",
                format!("{}\r\n", b64(user.as_bytes())).as_bytes(),
                334,
            )
            .await?;
            self.command(
                "AUTH",
                format!("{}\r\n", b64(password.as_bytes())).as_bytes(),
                235,
            )
            .await?;
        } else {
            return Err(SmtpError::NoAuthMechanism(offered.join(" ")));
        }
        Ok(())
    }

    /// Sends one command and wants `expect` back; anything else refuses the session.
    async fn command(
        &mut self,
        stage: &'static str,
        line: &[u8],
        expect: u16,
    ) -> Result<Reply, SmtpError> {
        self.write(line).await?;
        self.flush().await?;
        let reply = self.read_reply().await?;
        if reply.code != expect {
            return Err(SmtpError::Session { stage, reply });
        }
        Ok(reply)
    }

    /// One transaction: MAIL, RCPT for each recipient, DATA, the message. `reset` first clears
    /// whatever a previous transaction left (RSET, RFC 5321 §4.1.1.5). With PIPELINING the
    /// envelope goes in one write; DATA waits for the RCPT replies, so a refused recipient
    /// stops the message for all (the outcome is per message).
    pub async fn send(
        &mut self,
        mail_from: &str,
        recipients: &[String],
        mime: &Rope,
        reset: bool,
    ) -> Result<Reply, TxError> {
        let mut data_sent = false;
        let result = self
            .transaction(mail_from, recipients, mime, reset, &mut data_sent)
            .await;
        result.map_err(|error| TxError {
            reusable: error.keeps_connection(),
            error,
            data_sent,
        })
    }

    async fn transaction(
        &mut self,
        mail_from: &str,
        recipients: &[String],
        mime: &Rope,
        reset: bool,
        data_sent: &mut bool,
    ) -> Result<Reply, SmtpError> {
        let mut params = String::new();
        if self.extensions.eight_bit_mime && !mime.is_ascii() {
            params.push_str(" BODY=8BITMIME"); // RFC 6152
        }
        let utf8 = !mail_from.is_ascii() || recipients.iter().any(|r| !r.is_ascii());
        if utf8 && self.extensions.smtputf8 {
            params.push_str(" SMTPUTF8"); // RFC 6531
        }
        let mut envelope: Vec<(&'static str, String)> = Vec::with_capacity(recipients.len() + 2);
        if reset {
            envelope.push(("RSET", "RSET\r\n".to_string()));
        }
        envelope.push(("MAIL", format!("MAIL FROM:<{mail_from}>{params}\r\n")));
        for rcpt in recipients {
            envelope.push(("RCPT", format!("RCPT TO:<{rcpt}>\r\n")));
        }
        let mut replies = Vec::with_capacity(envelope.len());
        if self.extensions.pipelining {
            for (_, line) in &envelope {
                self.write(line.as_bytes()).await?;
            }
            self.flush().await?;
            for _ in &envelope {
                replies.push(self.read_reply().await?);
            }
        } else {
            for (_, line) in &envelope {
                self.write(line.as_bytes()).await?;
                self.flush().await?;
                replies.push(self.read_reply().await?);
            }
        }
        let mut replies = replies.into_iter();
        if reset {
            let reply = replies.next().expect("one reply per command");
            if !reply.is_positive() {
                return Err(SmtpError::Session {
                    stage: "RSET",
                    reply,
                });
            }
        }
        let mail = replies.next().expect("one reply per command");
        let refused: Vec<(String, Reply)> = recipients
            .iter()
            .zip(replies)
            .filter(|(_, reply)| !reply.is_positive())
            .map(|(rcpt, reply)| (rcpt.clone(), reply))
            .collect();
        if !mail.is_positive() {
            // Without pipelining the RCPTs still went and were refused for want of a MAIL.
            return Err(SmtpError::Transaction {
                stage: "MAIL",
                reply: mail,
            });
        }
        if !refused.is_empty() {
            return Err(SmtpError::Recipients(refused));
        }
        self.write(b"DATA\r\n").await?;
        self.flush().await?;
        let go = self.read_reply().await?;
        if go.code != 354 {
            return Err(SmtpError::Transaction {
                stage: "DATA",
                reply: go,
            });
        }
        *data_sent = true;
        let mut chunk = Vec::with_capacity(WRITE_CHUNK);
        for piece in DotStuffed::new(mime) {
            if chunk.len() + piece.len() > WRITE_CHUNK {
                self.write(&chunk).await?;
                chunk.clear();
            }
            if piece.len() > WRITE_CHUNK {
                self.write(piece).await?;
            } else {
                chunk.extend_from_slice(piece);
            }
        }
        self.write(&chunk).await?;
        self.flush().await?;
        let done = self.read_reply().await?;
        if !done.is_positive() {
            return Err(SmtpError::Transaction {
                stage: "end of data",
                reply: done,
            });
        }
        Ok(done)
    }

    /// Says goodbye (best effort: the connection is dropped either way).
    pub async fn quit(mut self) {
        let _ = self.command("QUIT", b"QUIT\r\n", 221).await;
        let _ = self.stream.shutdown().await;
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), SmtpError> {
        tokio::time::timeout(self.timeout, self.stream.write_all(bytes))
            .await
            .map_err(|_| SmtpError::Timeout)?
            .map_err(SmtpError::Io)
    }

    async fn flush(&mut self) -> Result<(), SmtpError> {
        tokio::time::timeout(self.timeout, self.stream.flush())
            .await
            .map_err(|_| SmtpError::Timeout)?
            .map_err(SmtpError::Io)
    }

    async fn read_reply(&mut self) -> Result<Reply, SmtpError> {
        loop {
            if let Some((reply, used)) = reply::parse(&self.unread)? {
                self.unread.drain(..used);
                return Ok(reply);
            }
            self.unread.reserve(1024);
            let read = tokio::time::timeout(self.timeout, self.stream.read_buf(&mut self.unread))
                .await
                .map_err(|_| SmtpError::Timeout)?
                .map_err(SmtpError::Io)?;
            if read == 0 {
                return Err(SmtpError::Closed);
            }
        }
    }
}

async fn handshake(
    relay: &Relay,
    connector: &TlsConnector,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, SmtpError> {
    tokio::time::timeout(
        relay.timeout,
        connector.connect(relay.server_name.clone(), tcp),
    )
    .await
    .map_err(|_| SmtpError::Timeout)?
    .map_err(SmtpError::Tls)
}

/// A message as DATA content (RFC 5321 §4.5.2): a line that starts with `.` gets one more, and
/// the end-of-data line follows. The message's own final CRLF ends its last line, so only
/// `.` CRLF is added after it (RFC 5321 §4.1.1.4); a message not ending in CRLF gets one first.
/// Yields slices of the message's pieces (no copy) and the few octets added; a line may run
/// across pieces.
pub struct DotStuffed<'a> {
    pieces: std::vec::IntoIter<&'a [u8]>,
    /// What is left of the current piece.
    rest: &'a [u8],
    /// The next octet of the message starts a line.
    at_line_start: bool,
    /// `rest` starts with a dot that starts a line and has not been doubled yet.
    stuff_next: bool,
    end: Option<&'static [u8]>,
}

impl<'a> DotStuffed<'a> {
    pub fn new(mime: &'a Rope) -> DotStuffed<'a> {
        DotStuffed {
            pieces: mime.pieces().collect::<Vec<_>>().into_iter(),
            rest: &[],
            at_line_start: true,
            stuff_next: false,
            end: Some(if mime.is_empty() || mime.ends_with(b"\r\n") {
                b".\r\n"
            } else {
                b"\r\n.\r\n"
            }),
        }
    }
}

impl<'a> Iterator for DotStuffed<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.stuff_next {
            self.stuff_next = false;
            return Some(b".");
        }
        while self.rest.is_empty() {
            let Some(piece) = self.pieces.next() else {
                return self.end.take();
            };
            self.rest = piece;
            if self.at_line_start && piece.first() == Some(&b'.') {
                self.stuff_next = false;
                return Some(b".");
            }
        }
        // Up to and including the next line break that a dot follows, or the piece's end.
        let mut from = 0;
        let cut = loop {
            match self.rest[from..].iter().position(|&b| b == b'\n') {
                Some(i) if self.rest.get(from + i + 1) == Some(&b'.') => break from + i + 1,
                Some(i) => from += i + 1,
                None => break self.rest.len(),
            }
        };
        let (piece, rest) = self.rest.split_at(cut);
        self.rest = rest;
        self.stuff_next = !rest.is_empty();
        self.at_line_start = piece.last() == Some(&b'\n');
        Some(piece)
    }
}

/// The machine's host name, for EHLO when `helo_name` is not set.
pub fn machine_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..len]) {
        Ok(name) if rc == 0 && !name.is_empty() => name.to_string(),
        _ => "localhost".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuffed(mime: &[u8]) -> Vec<u8> {
        stuffed_pieces(&[mime])
    }

    fn stuffed_pieces(pieces: &[&[u8]]) -> Vec<u8> {
        let mut mime = Rope::new();
        pieces
            .iter()
            .for_each(|p| mime.push(bytes::Bytes::copy_from_slice(p)));
        DotStuffed::new(&mime).flatten().copied().collect()
    }

    #[test]
    fn dot_stuffing_is_the_same_however_the_message_is_cut() {
        let mime: &[u8] = b".a\r\n..b\r\nc.\r\n.\r\n\r\n.d";
        let whole = stuffed(mime);
        for i in 0..=mime.len() {
            for j in i..=mime.len() {
                let cut = stuffed_pieces(&[&mime[..i], &mime[i..j], &mime[j..]]);
                assert_eq!(
                    String::from_utf8_lossy(&cut),
                    String::from_utf8_lossy(&whole),
                    "cut at {i} and {j}"
                );
            }
        }
    }

    #[test]
    fn dot_stuffing_table() {
        let table: [(&[u8], &[u8]); 8] = [
            (b"", b".\r\n"),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b"a", b"a\r\n.\r\n"),
            (b".\r\n", b"..\r\n.\r\n"),
            (b"a\r\n.b\r\n", b"a\r\n..b\r\n.\r\n"),
            (b"a\r\n..\r\n.\r\nc", b"a\r\n...\r\n..\r\nc\r\n.\r\n"),
            // A dot in a line, or a line ending in a dot, is left alone.
            (b"a.b\r\nc.\r\n", b"a.b\r\nc.\r\n.\r\n"),
            // The last line ending in CRLF is the end of the message: no empty line is added.
            (b"a\r\n\r\n", b"a\r\n\r\n.\r\n"),
        ];
        for (mime, want) in table {
            assert_eq!(
                String::from_utf8_lossy(&stuffed(mime)),
                String::from_utf8_lossy(want),
                "{:?}",
                String::from_utf8_lossy(mime)
            );
        }
    }

    #[test]
    fn dot_stuffing_round_trips() {
        // Undoing it as a receiver does (RFC 5321 §4.5.2) gives back the message.
        let mime = b"Subject: x\r\n\r\n.one\r\n..two\r\nmid.dle\r\n.\r\nend\r\n";
        let wire = stuffed(mime);
        let body = wire.strip_suffix(b".\r\n").unwrap();
        let mut back = Vec::new();
        for line in body.split_inclusive(|&b| b == b'\n') {
            back.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        }
        assert_eq!(back, mime);
    }
}
