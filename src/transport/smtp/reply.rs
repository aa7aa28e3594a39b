//! A smarthost's replies, parsed without I/O (RFC 5321 §4.2): feed the bytes read so far, get
//! a complete (possibly multi-line) reply and how many bytes it used, or "need more".
//! Also the EHLO keywords we act on (RFC 5321 §4.1.1.1).

use std::fmt;

/// Longest reply we buffer. RFC 5321 §4.5.3.1.5 limits a reply line to 512 octets; a relay
/// listing many EHLO extensions needs a few lines, never kilobytes. Past this the relay is
/// broken or hostile and the connection is dropped.
pub const MAX_REPLY: usize = 16 * 1024;

/// One reply: its code and its lines' text (without code and separator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 5xx: the relay will never take it (RFC 5321 §4.2.1).
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The text of every line, joined: what the log and the record show.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("malformed reply line from the relay")]
    Malformed,
    #[error("reply lines with different codes from the relay")]
    MixedCodes,
    #[error("reply from the relay longer than {MAX_REPLY} octets")]
    TooLong,
}

/// A complete reply at the start of `buf` and the number of bytes it takes, or `None` when
/// more bytes are needed. Lines end in CRLF (a bare LF is tolerated: we only read).
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
    let mut at = 0;
    let mut code = None;
    let mut lines = Vec::new();
    loop {
        let Some(end) = buf[at..].iter().position(|&b| b == b'\n') else {
            return if buf.len() > MAX_REPLY {
                Err(ReplyError::TooLong)
            } else {
                Ok(None)
            };
        };
        let line = &buf[at..at + end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        at += end + 1;
        if at > MAX_REPLY {
            return Err(ReplyError::TooLong);
        }
        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
            return Err(ReplyError::Malformed);
        }
        let this: u16 = std::str::from_utf8(&line[..3])
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|c| (200..600).contains(c))
            .ok_or(ReplyError::Malformed)?;
        if *code.get_or_insert(this) != this {
            return Err(ReplyError::MixedCodes);
        }
        let last = match line.get(3) {
            None | Some(b' ') => true,
            Some(b'-') => false,
            Some(_) => return Err(ReplyError::Malformed),
        };
        let text = line.get(4..).unwrap_or_default();
        lines.push(String::from_utf8_lossy(text).into_owned());
        if last {
            return Ok(Some((Reply { code: this, lines }, at)));
        }
    }
}

/// What an EHLO reply offers that the client uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    pub pipelining: bool,
    pub starttls: bool,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    /// SASL mechanisms offered with AUTH, upper case.
    pub auth: Vec<String>,
}

impl Extensions {
    /// Reads the keywords of an EHLO reply (its first line is the greeting, RFC 5321 §4.1.1.1).
    pub fn from_ehlo(reply: &Reply) -> Extensions {
        let mut ext = Extensions::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => ext.pipelining = true,
                "STARTTLS" => ext.starttls = true,
                "8BITMIME" => ext.eight_bit_mime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "AUTH" => ext.auth.extend(
                    words
                        .map(|m| m.to_ascii_uppercase())
                        .filter(|m| !m.is_empty()),
                ),
                _ => {}
            }
        }
        ext
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, lines: &[&str]) -> Reply {
        Reply {
            code,
            lines: lines.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn parse_table() {
        let ok = |r: Reply, n: usize| Ok(Some((r, n)));
        type Parsed = Result<Option<(Reply, usize)>, ReplyError>;
        let table: Vec<(&[u8], Parsed)> = vec![
            (b"", Ok(None)),
            (b"250 OK", Ok(None)),
            (b"250 OK\r\n", ok(reply(250, &["OK"]), 8)),
            (b"250 OK\n", ok(reply(250, &["OK"]), 7)),
            (b"250\r\n", ok(reply(250, &[""]), 5)),
            (b"250-a\r\n", Ok(None)),
            (b"250-a\r\n250 b\r\n", ok(reply(250, &["a", "b"]), 14)),
            // The next reply (pipelined answers) is left for the next call.
            (b"250 a\r\n354 go\r\n", ok(reply(250, &["a"]), 7)),
            (b"250-a\r\n251 b\r\n", Err(ReplyError::MixedCodes)),
            (b"25 x\r\n", Err(ReplyError::Malformed)),
            (b"abc x\r\n", Err(ReplyError::Malformed)),
            (b"250_x\r\n", Err(ReplyError::Malformed)),
            (b"999 x\r\n", Err(ReplyError::Malformed)),
            (b"\r\n", Err(ReplyError::Malformed)),
        ];
        for (input, want) in table {
            assert_eq!(parse(input), want, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn an_endless_reply_is_refused() {
        let mut long = Vec::new();
        while long.len() <= MAX_REPLY {
            long.extend_from_slice(b"250-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(parse(&long), Err(ReplyError::TooLong));
        assert_eq!(parse(&[b'2'; MAX_REPLY + 1]), Err(ReplyError::TooLong));
    }

    #[test]
    fn ehlo_keywords() {
        let ehlo = reply(
            250,
            &[
                "relay.example greets you",
                "PIPELINING",
                "auth PLAIN login",
                "SIZE 10240000",
                "STARTTLS",
                "8BITMIME",
            ],
        );
        let ext = Extensions::from_ehlo(&ehlo);
        assert!(ext.pipelining && ext.starttls && ext.eight_bit_mime && !ext.smtputf8);
        assert_eq!(ext.auth, ["PLAIN", "LOGIN"]);
        // The greeting line is not a keyword.
        let bare = reply(250, &["PIPELINING"]);
        assert_eq!(Extensions::from_ehlo(&bare), Extensions::default());
    }
}
