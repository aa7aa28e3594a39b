//! Message body readers, without I/O: feed bytes, get "need more" or "done".
//!
//! SMTP smuggling works when two servers disagree about where a message ends. We accept one
//! ending only, `<CRLF>.<CRLF>` (RFC 5321 §4.1.1.4), and refuse any message that contains a bare
//! CR or LF (§2.3.8), a NUL, or a line longer than the limit (§4.5.3.1.6): a refused message is
//! still read to its real end, so nothing smuggled inside it is ever taken as a command.

/// Why a body was refused. The first problem found is the one reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    BareLf,
    BareCr,
    Nul,
    LineTooLong,
    TooBig,
}

/// Checks the text rules on raw message bytes as they stream in (used directly for BDAT, which
/// has no dot-stuffing, and under [`DotReader`] for DATA).
#[derive(Debug)]
pub struct LineRules {
    max_line: usize,
    line_len: usize,
    prev_cr: bool,
    error: Option<BodyError>,
}

impl LineRules {
    pub fn new(max_line: usize) -> Self {
        Self {
            max_line,
            line_len: 0,
            prev_cr: false,
            error: None,
        }
    }

    fn fail(&mut self, error: BodyError) {
        self.error.get_or_insert(error);
    }

    /// Takes one byte; true when it completed a CRLF line ending.
    fn push(&mut self, b: u8) -> bool {
        self.line_len += 1;
        if self.line_len > self.max_line {
            self.fail(BodyError::LineTooLong);
        }
        if b == 0 {
            self.fail(BodyError::Nul);
        }
        if self.prev_cr {
            self.prev_cr = false;
            if b == b'\n' {
                self.line_len = 0;
                return true;
            }
            self.fail(BodyError::BareCr);
        }
        match b {
            b'\r' => self.prev_cr = true,
            b'\n' => self.fail(BodyError::BareLf),
            _ => {}
        }
        false
    }

    pub fn push_slice(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.push(b);
        }
    }

    pub fn error(&self) -> Option<BodyError> {
        self.error
    }

    /// The verdict once the body is complete.
    pub fn finish(&self) -> Result<(), BodyError> {
        match self.error {
            Some(e) => Err(e),
            None if self.prev_cr => Err(BodyError::BareCr),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dot {
    /// Not inside a `.` that began a line.
    Idle,
    /// A line began with `.`.
    Dot,
    /// A line began with `.<CR>`.
    DotCr,
}

/// Reads a DATA body (RFC 5321 §4.5.2 dot-stuffing) up to `<CRLF>.<CRLF>`.
#[derive(Debug)]
pub struct DotReader {
    rules: LineRules,
    dot: Dot,
    at_line_start: bool,
    max_size: usize,
    size: usize,
    body: Vec<u8>,
}

impl DotReader {
    pub fn new(max_line: usize, max_size: usize) -> Self {
        Self {
            rules: LineRules::new(max_line),
            dot: Dot::Idle,
            // DATA's 354 reply is itself the end of a line.
            at_line_start: true,
            max_size,
            size: 0,
            body: Vec::new(),
        }
    }

    /// Consumes input; `Some(n)` once the terminator was read, `n` being the bytes of `input`
    /// used (the rest are pipelined commands), `None` when all of `input` was used.
    pub fn feed(&mut self, input: &[u8]) -> Option<usize> {
        for (i, &b) in input.iter().enumerate() {
            match self.dot {
                // The leading dot is not counted in the line length: RFC 5321 §4.5.3.1.6
                // limits a line to 1000 octets "not counting the leading dot duplicated for
                // transparency", so DATA and BDAT accept the same lines.
                Dot::Idle if self.at_line_start && b == b'.' => self.dot = Dot::Dot,
                Dot::Idle => self.content(b),
                Dot::Dot if b == b'\r' => self.dot = Dot::DotCr,
                Dot::Dot => {
                    // A stuffed dot: drop it, keep the rest of the line.
                    self.dot = Dot::Idle;
                    self.content(b);
                }
                Dot::DotCr if b == b'\n' => return Some(i + 1),
                Dot::DotCr => {
                    // `.<CR>` followed by anything but LF: a bare CR, not an ending.
                    self.dot = Dot::Idle;
                    self.content(b'\r');
                    self.content(b);
                }
            }
        }
        None
    }

    fn content(&mut self, b: u8) {
        self.at_line_start = self.rules.push(b);
        self.size += 1;
        if self.size > self.max_size {
            self.rules.fail(BodyError::TooBig);
        }
        if self.rules.error().is_none() {
            self.body.push(b);
        }
    }

    /// The body without the terminator, or why it was refused.
    pub fn finish(self) -> Result<Vec<u8>, BodyError> {
        self.rules.finish().map(|()| self.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BodyError::*;

    fn read(input: &[u8]) -> (Option<usize>, Result<Vec<u8>, BodyError>) {
        let mut reader = DotReader::new(1000, 100);
        let used = reader.feed(input);
        (used, reader.finish())
    }

    #[test]
    fn dot_reader_table() {
        let long = format!("{}\r\n.\r\n", "x".repeat(999));
        let ok_long = format!("{}\r\n.\r\n", "x".repeat(998));
        let cases: Vec<(&[u8], Option<usize>, Result<&[u8], BodyError>)> = vec![
            (b".\r\n", Some(3), Ok(b"")),
            (b"a\r\n.\r\n", Some(6), Ok(b"a\r\n")),
            (b"a\r\n.\r\nMAIL", Some(6), Ok(b"a\r\n")),
            (b"..a\r\n.\r\n", Some(8), Ok(b".a\r\n")),
            (b"a\r\n..\r\n.\r\n", Some(10), Ok(b"a\r\n.\r\n")),
            // Smuggling variants: none of these ends the body, and each is refused.
            (b"a\n.\nMAIL FROM:<x>\r\n.\r\n", Some(22), Err(BareLf)),
            (b"a\n.\r\nMAIL FROM:<x>\r\n.\r\n", Some(23), Err(BareLf)),
            (b"a\r.\r\nMAIL FROM:<x>\r\n.\r\n", Some(23), Err(BareCr)),
            (b"a\r\n.\nMAIL\r\n.\r\n", Some(14), Err(BareLf)),
            (b"a\r\n.\rX\r\n.\r\n", Some(11), Err(BareCr)),
            (b"a\rb\r\n.\r\n", Some(8), Err(BareCr)),
            (b"a\0b\r\n.\r\n", Some(8), Err(Nul)),
            (b"a\r\n.", None, Ok(b"a\r\n")),
            (b"a\r\n.\r", None, Ok(b"a\r\n")),
        ];
        for (input, used, want) in cases {
            let (got_used, got) = read(input);
            assert_eq!(got_used, used, "{:?}", String::from_utf8_lossy(input));
            assert_eq!(
                got.as_deref().map_err(|e| *e),
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let mut r = DotReader::new(1000, 10_000);
        assert_eq!(r.feed(long.as_bytes()), Some(long.len()));
        assert_eq!(r.finish(), Err(LineTooLong));
        let mut r = DotReader::new(1000, 10_000);
        assert_eq!(r.feed(ok_long.as_bytes()), Some(ok_long.len()));
        assert!(r.finish().is_ok());
        // A 1000-octet line that begins with a dot is 1001 octets once stuffed (found by the
        // body_reader fuzz target): still accepted, as BDAT accepts it.
        let line = format!(".{}\r\n", "x".repeat(997));
        let mut r = DotReader::new(1000, 10_000);
        let stuffed = format!(".{line}.\r\n");
        assert_eq!(r.feed(stuffed.as_bytes()), Some(stuffed.len()));
        assert_eq!(r.finish().as_deref(), Ok(line.as_bytes()));
        let mut r = DotReader::new(1000, 10_000);
        let stuffed = format!("..{}\r\n.\r\n", "x".repeat(998));
        assert_eq!(r.feed(stuffed.as_bytes()), Some(stuffed.len()));
        assert_eq!(r.finish(), Err(LineTooLong));
    }

    #[test]
    fn too_big_is_drained_to_the_end() {
        let body = format!("{}\r\n.\r\nQUIT\r\n", "y".repeat(200));
        let (used, got) = read(body.as_bytes());
        assert_eq!(used, Some(body.len() - 6));
        assert_eq!(got, Err(TooBig));
    }

    #[test]
    fn terminator_split_across_reads() {
        let input = b"hello\r\n..x\r\n.\r\nNOOP\r\n";
        for split in 0..input.len() {
            let mut r = DotReader::new(1000, 100);
            let (a, b) = input.split_at(split);
            let used = match r.feed(a) {
                Some(n) => n,
                None => a.len() + r.feed(b).expect("ends in second part"),
            };
            assert_eq!(used, input.len() - 6, "split at {split}");
            assert_eq!(r.finish().unwrap(), b"hello\r\n.x\r\n", "split at {split}");
        }
    }

    #[test]
    fn line_rules_for_bdat() {
        let mut rules = LineRules::new(1000);
        rules.push_slice(b"a\r");
        rules.push_slice(b"\nb\r\n");
        assert_eq!(rules.finish(), Ok(()));
        let mut rules = LineRules::new(1000);
        rules.push_slice(b"a\r");
        assert_eq!(rules.finish(), Err(BareCr));
        let mut rules = LineRules::new(1000);
        rules.push_slice(b"a\nb");
        assert_eq!(rules.finish(), Err(BareLf));
    }
}
