//! SMTP replies. Every reply is built here, so a class-4 code can never carry a 5.x.x enhanced
//! code (RFC 3463 §2: the class of the enhanced code matches the reply's first digit).

use std::fmt::Write;

/// One SMTP reply, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// RFC 2034 enhanced code `(subject, detail)`; its class is taken from `code`.
    pub enhanced: Option<(u16, u16)>,
    pub lines: Vec<String>,
}

impl Reply {
    /// A reply with an enhanced status code `class.subject.detail`, class from `code`.
    pub fn new(code: u16, subject: u16, detail: u16, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: Some((subject, detail)),
            lines: vec![text.into()],
        }
    }

    /// A reply without an enhanced code (greeting, EHLO/HELO, RFC 2034 §3), or a challenge.
    pub fn plain(code: u16, lines: Vec<String>) -> Reply {
        Reply {
            code,
            enhanced: None,
            lines,
        }
    }

    /// The enhanced code, e.g. `4.5.3`.
    pub fn enhanced_code(&self) -> Option<String> {
        self.enhanced
            .map(|(s, d)| format!("{}.{}.{}", self.code / 100, s, d))
    }

    /// Appends the wire form (CRLF-terminated lines, `-` on all but the last).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let enhanced = self.enhanced_code();
        let last = self.lines.len().saturating_sub(1);
        let mut line = String::new();
        for (i, text) in self.lines.iter().enumerate() {
            line.clear();
            let sep = if i == last { ' ' } else { '-' };
            let _ = write!(line, "{}{}", self.code, sep);
            if let Some(e) = &enhanced {
                line.push_str(e);
                line.push(' ');
            }
            // Never let client-controlled text break the framing.
            line.extend(text.chars().filter(|c| *c != '\r' && *c != '\n'));
            line.push_str("\r\n");
            out.extend_from_slice(line.as_bytes());
        }
        if self.lines.is_empty() {
            let _ = write!(line, "{}", self.code);
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    pub fn to_wire(&self) -> String {
        let mut out = Vec::new();
        self.write_to(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

// The replies the server gives, by name. Texts are safe for clients; details go to the log.
pub fn recipient_ok() -> Reply {
    Reply::new(250, 1, 5, "Recipient ok")
}
/// RFC 5321 §2.3.5: only fully-qualified domains; a bare local name (`root`) is not guessed
/// at (`sendmail` qualifies one with `default_domain`; an SMTP client must send it whole).
pub fn unqualified_recipient() -> Reply {
    Reply::new(
        553,
        1,
        3,
        "Recipient address must be fully qualified (name@domain)",
    )
}
pub fn ok() -> Reply {
    Reply::new(250, 0, 0, "Ok")
}
pub fn bad_sequence(text: &str) -> Reply {
    Reply::new(503, 5, 1, text)
}
pub fn syntax(text: &str) -> Reply {
    Reply::new(501, 5, 4, text)
}
pub fn unknown_command() -> Reply {
    Reply::new(500, 5, 1, "Command not recognized")
}
pub fn not_implemented() -> Reply {
    Reply::new(502, 5, 1, "Command not implemented")
}
pub fn line_too_long() -> Reply {
    Reply::new(500, 5, 2, "Line too long")
}
pub fn must_end_with_crlf() -> Reply {
    Reply::new(500, 5, 2, "Command lines must end with CRLF")
}
pub fn auth_required() -> Reply {
    Reply::new(530, 7, 0, "Authentication required")
}
pub fn tls_required() -> Reply {
    Reply::new(530, 7, 0, "Must issue a STARTTLS command first")
}
pub fn too_many_errors() -> Reply {
    Reply::new(421, 7, 0, "Too many errors, closing connection")
}
pub fn too_many_auth_failures() -> Reply {
    Reply::new(
        421,
        7,
        0,
        "Too many authentication failures, closing connection",
    )
}
pub fn auth_cooldown() -> Reply {
    Reply::new(
        454,
        7,
        0,
        "Too many authentication failures from your address, try later",
    )
}
pub fn auth_failed() -> Reply {
    Reply::new(535, 7, 8, "Authentication credentials invalid")
}
pub fn auth_ok() -> Reply {
    Reply::new(235, 7, 0, "Authentication successful")
}
pub fn auth_cancelled() -> Reply {
    Reply::new(501, 7, 0, "Authentication cancelled")
}
pub fn not_owner() -> Reply {
    Reply::new(
        550,
        7,
        1,
        "Sender address not owned by the authenticated account",
    )
}
/// RFC 6531 §3.5: 553 with X.6.7, "Non-ASCII addresses not permitted for that
/// sender/recipient" (the transport cannot carry SMTPUTF8).
pub fn non_ascii_address(role: &str) -> Reply {
    Reply::new(
        553,
        6,
        7,
        format!("Non-ASCII addresses not permitted for that {role}"),
    )
}
pub fn too_many_recipients() -> Reply {
    Reply::new(452, 5, 3, "Too many recipients")
}
/// States the limit, as RFC 1870 servers do, so the user learns what would fit.
pub fn too_big(limit: usize) -> Reply {
    Reply::new(
        552,
        3,
        4,
        format!("Message size exceeds the limit of {limit} octets"),
    )
}
pub fn spool_full() -> Reply {
    Reply::new(452, 3, 1, "Insufficient system storage, try later")
}
pub fn local_error() -> Reply {
    Reply::new(451, 3, 0, "Local error in processing, try later")
}
pub fn timeout() -> Reply {
    Reply::new(421, 4, 2, "Timeout, closing connection")
}
pub fn too_many_connections() -> Reply {
    Reply::new(421, 7, 0, "Too many connections, try later")
}
pub fn shutting_down() -> Reply {
    Reply::new(421, 3, 0, "Server shutting down")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_forms() {
        assert_eq!(ok().to_wire(), "250 2.0.0 Ok\r\n");
        assert_eq!(
            too_many_recipients().to_wire(),
            "452 4.5.3 Too many recipients\r\n"
        );
        assert_eq!(
            Reply::plain(250, vec!["host".into(), "PIPELINING".into()]).to_wire(),
            "250-host\r\n250 PIPELINING\r\n"
        );
        assert_eq!(Reply::plain(334, vec![String::new()]).to_wire(), "334 \r\n");
        assert_eq!(
            Reply::new(501, 5, 4, "bad\r\nMAIL").to_wire(),
            "501 5.5.4 badMAIL\r\n"
        );
    }

    #[test]
    fn enhanced_class_follows_code() {
        for reply in [
            too_many_recipients(),
            spool_full(),
            auth_cooldown(),
            too_many_errors(),
            timeout(),
            local_error(),
            not_owner(),
            too_big(41_943_040),
            auth_failed(),
            auth_ok(),
            ok(),
        ] {
            let code = reply.enhanced_code().unwrap();
            assert_eq!(
                code.as_bytes()[0],
                reply.code.to_string().as_bytes()[0],
                "{reply:?}"
            );
        }
    }
}
