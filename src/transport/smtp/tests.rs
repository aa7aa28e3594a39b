//! The transport against a scripted relay on loopback. The relay is ours because what is under
//! test is the client: the relay only records the exact bytes and commands it received (and
//! can be awaited), and answers as a test tells it. TLS and AUTH against a real server are in
//! `tests/e2e/test_smarthost.py` (aiosmtpd).

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::reply::Reply;
use super::*;

/// What the relay does.
#[derive(Clone, Default)]
struct Script {
    pipelining: bool,
    /// Close each connection after this many messages (an idle timeout, say).
    close_after: Option<usize>,
}

#[derive(Default)]
struct Seen {
    connections: usize,
    /// Every command line, per connection, in order.
    commands: Vec<Vec<String>>,
    /// The DATA content of each accepted message, dot-unstuffed, as it came.
    messages: Vec<Vec<u8>>,
}

struct Sink {
    port: u16,
    seen: Arc<Mutex<Seen>>,
    changed: Arc<Notify>,
}

impl Sink {
    async fn start(script: Script) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let changed = Arc::new(Notify::new());
        let (s, c) = (seen.clone(), changed.clone());
        tokio::spawn(async move {
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                let index = {
                    let mut seen = s.lock().unwrap();
                    seen.connections += 1;
                    seen.commands.push(Vec::new());
                    seen.commands.len() - 1
                };
                tokio::spawn(serve(socket, index, script.clone(), s.clone(), c.clone()));
            }
        });
        Sink {
            port,
            seen,
            changed,
        }
    }

    /// Waits until `done` holds for what the relay saw.
    async fn wait(&self, done: impl Fn(&Seen) -> bool) {
        loop {
            let notified = self.changed.notified();
            if done(&self.seen.lock().unwrap()) {
                return;
            }
            notified.await;
        }
    }
}

/// Answers RCPT from the address: `temp…` 451, `perm…` 550, else 250.
async fn serve(
    socket: tokio::net::TcpStream,
    index: usize,
    script: Script,
    seen: Arc<Mutex<Seen>>,
    changed: Arc<Notify>,
) {
    let (read, mut write) = socket.into_split();
    let mut read = BufReader::new(read);
    write.write_all(b"220 sink ready\r\n").await.unwrap();
    let mut delivered = 0;
    let mut line = Vec::new();
    loop {
        line.clear();
        if read.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let command = String::from_utf8_lossy(&line).trim_end().to_string();
        seen.lock().unwrap().commands[index].push(command.clone());
        changed.notify_waiters();
        let verb = command
            .split([' ', ':'])
            .next()
            .unwrap()
            .to_ascii_uppercase();
        let answer: &[u8] = match verb.as_str() {
            "EHLO" if script.pipelining => b"250-sink\r\n250 PIPELINING\r\n",
            "EHLO" => b"250 sink\r\n",
            "RCPT" if command.contains("<temp") => b"451 4.3.0 try later\r\n",
            "RCPT" if command.contains("<perm") => b"550 5.1.1 no such user\r\n",
            "QUIT" => b"221 bye\r\n",
            "DATA" => {
                write.write_all(b"354 go on\r\n").await.unwrap();
                let mut data = Vec::new();
                loop {
                    line.clear();
                    read.read_until(b'\n', &mut line).await.unwrap();
                    if line == b".\r\n" {
                        break;
                    }
                    data.extend_from_slice(line.strip_prefix(b".").unwrap_or(&line));
                }
                delivered += 1;
                seen.lock().unwrap().messages.push(data);
                write.write_all(b"250 2.0.0 queued as x\r\n").await.unwrap();
                changed.notify_waiters();
                if Some(delivered) == script.close_after {
                    // As a relay does at its idle timeout: close without a word.
                    return;
                }
                continue;
            }
            _ => b"250 ok\r\n",
        };
        write.write_all(answer).await.unwrap();
        if verb == "QUIT" {
            let _ = read.read_to_end(&mut Vec::new()).await;
            return;
        }
    }
}

fn transport(port: u16) -> SmtpTransport {
    let config: SmarthostConfig = toml::from_str(&format!(
        "host = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\ntimeout_secs = 10\nhelo_name = \"outbox.test\""
    ))
    .unwrap();
    SmtpTransport::new(config).unwrap()
}

fn message(recipients: &[&str], mime: &[u8]) -> Arc<OutboundMessage> {
    Arc::new(crate::transport::test_message(recipients, mime.into()))
}

fn kind(d: &Delivery) -> &'static str {
    match d {
        Delivery::Sent { .. } => "sent",
        Delivery::Retry { .. } => "retry",
        Delivery::Reject { .. } => "reject",
        Delivery::Unavailable { .. } => "pause",
    }
}

#[tokio::test]
async fn delivers_exactly_the_bytes_it_was_given() {
    let sink = Sink::start(Script::default()).await;
    let smtp = transport(sink.port);
    // Lines starting with dots, an empty last line of the body: all as given (issue 15 item 4:
    // the old client added an empty line before the final dot).
    let mime = b"Subject: x\r\n\r\n.one\r\n..two\r\nbody\r\n\r\n";
    let sent = smtp.send(message(&["b@example.net"], mime)).await;
    assert_eq!(kind(&sent), "sent", "{sent:?}");
    let seen = sink.seen.lock().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&seen.messages[0]),
        String::from_utf8_lossy(mime)
    );
    let commands = &seen.commands[0];
    assert_eq!(commands[0], "EHLO outbox.test");
    assert_eq!(commands[1], "MAIL FROM:<alice@example.com>");
    assert_eq!(commands[2], "RCPT TO:<b@example.net>");
}

#[tokio::test]
async fn one_connection_carries_many_messages_with_rset_between() {
    let sink = Sink::start(Script {
        pipelining: true,
        ..Script::default()
    })
    .await;
    let smtp = transport(sink.port);
    for i in 0..3 {
        let sent = smtp
            .send(message(
                &["b@example.net", "c@example.net"],
                format!("m{i}\r\n").as_bytes(),
            ))
            .await;
        assert_eq!(kind(&sent), "sent", "{sent:?}");
    }
    assert_eq!(smtp.idle_connections(), 1);
    let seen = sink.seen.lock().unwrap();
    assert_eq!(seen.connections, 1);
    assert_eq!(seen.messages, [b"m0\r\n", b"m1\r\n", b"m2\r\n"]);
    let verbs: Vec<&str> = seen.commands[0]
        .iter()
        .map(|c| c.split([' ', ':']).next().unwrap())
        .collect();
    assert_eq!(
        verbs,
        [
            "EHLO", "MAIL", "RCPT", "RCPT", "DATA", // first message
            "RSET", "MAIL", "RCPT", "RCPT", "DATA", // then each on the same connection
            "RSET", "MAIL", "RCPT", "RCPT", "DATA",
        ]
    );
}

#[tokio::test]
async fn a_connection_the_relay_closed_is_replaced_without_losing_the_message() {
    let sink = Sink::start(Script {
        pipelining: true,
        close_after: Some(1),
    })
    .await;
    let smtp = transport(sink.port);
    for i in 0..3 {
        let sent = smtp
            .send(message(&["b@example.net"], format!("m{i}\r\n").as_bytes()))
            .await;
        assert_eq!(kind(&sent), "sent", "message {i}: {sent:?}");
    }
    let seen = sink.seen.lock().unwrap();
    assert_eq!(seen.messages.len(), 3);
    assert_eq!(seen.connections, 3);
}

#[tokio::test]
async fn refused_recipients_decide_the_outcome_and_keep_the_connection() {
    let sink = Sink::start(Script {
        pipelining: true,
        ..Script::default()
    })
    .await;
    let smtp = transport(sink.port);
    let table = [
        (vec!["perm1@example.net"], "reject"),
        (vec!["ok@example.net", "perm2@example.net"], "reject"),
        (vec!["perm3@example.net", "temp@example.net"], "retry"),
        (vec!["ok@example.net"], "sent"),
    ];
    for (rcpts, want) in table {
        let got = smtp.send(message(&rcpts, b"x\r\n")).await;
        assert_eq!(kind(&got), want, "{rcpts:?}: {got:?}");
        if let Delivery::Reject { reason } | Delivery::Retry { reason, .. } = &got {
            assert!(reason.contains("550 5.1.1"), "{reason}");
        }
    }
    let seen = sink.seen.lock().unwrap();
    // Nothing reached DATA but the last message, and all went over one connection.
    assert_eq!(seen.messages, [b"x\r\n"]);
    assert_eq!(seen.connections, 1);
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_limit() {
    let sink = Sink::start(Script::default()).await;
    let mut config: SmarthostConfig = toml::from_str(&format!(
        "host = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nidle_timeout_secs = 1",
        sink.port
    ))
    .unwrap();
    config.helo_name = Some("outbox.test".into());
    let smtp = SmtpTransport::new(config).unwrap();
    let sent = smtp.send(message(&["b@example.net"], b"x\r\n")).await;
    assert_eq!(kind(&sent), "sent");
    assert_eq!(smtp.idle_connections(), 1);
    // The reaper says QUIT once the connection has been idle for a second.
    sink.wait(|seen| seen.commands[0].last().is_some_and(|c| c == "QUIT"))
        .await;
    assert_eq!(smtp.idle_connections(), 0);
}

#[tokio::test]
async fn an_unreachable_relay_pauses_sending() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let got = transport(port)
        .send(message(&["b@example.net"], b"x\r\n"))
        .await;
    assert_eq!(kind(&got), "pause", "{got:?}");
}

#[test]
fn classification_table() {
    let reply = |code: u16| Reply {
        code,
        lines: vec!["text".into()],
    };
    let transaction = |code| SmtpError::Transaction {
        stage: "MAIL",
        reply: reply(code),
    };
    let session = |code| SmtpError::Session {
        stage: "AUTH",
        reply: reply(code),
    };
    let rcpts = |codes: &[u16]| {
        SmtpError::Recipients(
            codes
                .iter()
                .map(|c| ("r@x".to_string(), reply(*c)))
                .collect(),
        )
    };
    let io = |kind: std::io::ErrorKind| std::io::Error::from(kind);
    let table = [
        (transaction(421), "retry"),
        (transaction(450), "retry"),
        (transaction(452), "retry"),
        (transaction(550), "reject"),
        (transaction(554), "reject"),
        (rcpts(&[550, 551]), "reject"),
        (rcpts(&[550, 450]), "retry"),
        (SmtpError::Timeout, "retry"),
        (SmtpError::Closed, "retry"),
        (
            SmtpError::Io(io(std::io::ErrorKind::ConnectionReset)),
            "retry",
        ),
        (
            SmtpError::Protocol(super::reply::ReplyError::Malformed),
            "retry",
        ),
        (
            SmtpError::Connect(io(std::io::ErrorKind::ConnectionRefused)),
            "pause",
        ),
        (session(535), "pause"),
        (session(421), "pause"),
        (SmtpError::NoStartTls, "pause"),
        (SmtpError::Tls(io(std::io::ErrorKind::InvalidData)), "pause"),
        (SmtpError::NoAuthMechanism("CRAM-MD5".into()), "pause"),
    ];
    for (error, want) in table {
        let text = error.to_string();
        assert_eq!(kind(&classify(&error)), want, "{text}");
    }
}
