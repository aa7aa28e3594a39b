//! A message as a few shared pieces in order. The outgoing message is the stored one with a new
//! header block and perhaps a few rewritten parts: kept as pieces, it shares the stored bytes
//! instead of copying them, so a large message is in memory once while it is sent (issue 13).

use bytes::Bytes;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rope {
    /// Never an empty piece.
    pieces: Vec<Bytes>,
}

impl Rope {
    pub fn new() -> Rope {
        Rope::default()
    }

    /// Appends `piece` (shared, not copied).
    pub fn push(&mut self, piece: Bytes) {
        if !piece.is_empty() {
            self.pieces.push(piece);
        }
    }

    /// Puts `piece` in front (a header field, say).
    pub fn prepend(&mut self, piece: Bytes) {
        if !piece.is_empty() {
            self.pieces.insert(0, piece);
        }
    }

    pub fn len(&self) -> usize {
        self.pieces.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// The pieces in order (none empty).
    pub fn pieces(&self) -> impl DoubleEndedIterator<Item = &[u8]> + '_ {
        self.pieces.iter().map(|p| p.as_ref())
    }

    /// The pieces themselves, shared (for a reader that outlives this borrow).
    pub fn shared_pieces(&self) -> Vec<Bytes> {
        self.pieces.clone()
    }

    /// How many pieces (1 when the message is one stretch of bytes).
    pub fn piece_count(&self) -> usize {
        self.pieces.len()
    }

    pub fn is_ascii(&self) -> bool {
        self.pieces().all(<[u8]>::is_ascii)
    }

    pub fn ends_with(&self, suffix: &[u8]) -> bool {
        // Across pieces: compare from the back, byte by byte (suffixes here are 1–2 octets).
        let mut bytes = self.pieces().rev().flat_map(|p| p.iter().rev());
        suffix.iter().rev().all(|b| bytes.next() == Some(b))
    }

    /// One contiguous copy, for an interface that takes a single buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        for piece in self.pieces() {
            out.extend_from_slice(piece);
        }
        out
    }

    /// The pieces as an HTTP body, a frame each, for an upload that must not join them.
    pub fn body(&self) -> RopeBody {
        RopeBody {
            remaining: self.len() as u64,
            pieces: self.pieces.iter().cloned().collect(),
        }
    }

    /// Whether `needle` occurs in the message, across piece boundaries too.
    #[cfg(test)]
    pub fn contains(&self, needle: &[u8]) -> bool {
        self.to_vec().windows(needle.len()).any(|w| w == needle)
    }
}

impl FromIterator<Bytes> for Rope {
    fn from_iter<I: IntoIterator<Item = Bytes>>(pieces: I) -> Rope {
        let mut rope = Rope::new();
        pieces.into_iter().for_each(|p| rope.push(p));
        rope
    }
}

/// [`Rope::body`]: the pieces in order, with an exact size (an upload states its length).
#[derive(Debug, Clone)]
pub struct RopeBody {
    pieces: std::collections::VecDeque<Bytes>,
    remaining: u64,
}

impl http_body::Body for RopeBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let piece = this.pieces.pop_front();
        if let Some(piece) = &piece {
            this.remaining -= piece.len() as u64;
        }
        std::task::Poll::Ready(piece.map(|p| Ok(http_body::Frame::data(p))))
    }

    fn is_end_stream(&self) -> bool {
        self.pieces.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

impl From<Vec<u8>> for Rope {
    fn from(bytes: Vec<u8>) -> Rope {
        let mut rope = Rope::new();
        rope.push(Bytes::from(bytes));
        rope
    }
}

impl From<Bytes> for Rope {
    fn from(bytes: Bytes) -> Rope {
        let mut rope = Rope::new();
        rope.push(bytes);
        rope
    }
}

impl From<&[u8]> for Rope {
    fn from(bytes: &[u8]) -> Rope {
        Rope::from(bytes.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rope(pieces: &[&[u8]]) -> Rope {
        let mut r = Rope::new();
        for p in pieces {
            r.push(Bytes::copy_from_slice(p));
        }
        r
    }

    #[test]
    fn pieces_join_in_order_and_empties_are_dropped() {
        let mut r = rope(&[b"b", b"", b"cd"]);
        r.prepend(Bytes::from_static(b"a"));
        r.prepend(Bytes::new());
        assert_eq!(r.piece_count(), 3);
        assert_eq!(r.len(), 4);
        assert_eq!(r.to_vec(), b"abcd");
        assert!(Rope::new().is_empty() && Rope::new().to_vec().is_empty());
    }

    #[test]
    fn a_single_piece_is_shared_not_copied() {
        let one = Bytes::from(vec![7u8; 100]);
        let r = Rope::from(one.clone());
        assert_eq!(r.pieces().next().unwrap().as_ptr(), one.as_ptr());
    }

    #[test]
    fn the_body_yields_the_pieces_with_an_exact_size() {
        use http_body::Body;
        let r = rope(&[b"ab", b"", b"cde"]);
        let mut body = r.body();
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut got = Vec::new();
        loop {
            assert_eq!(body.size_hint().exact(), Some((r.len() - got.len()) as u64));
            match std::pin::Pin::new(&mut body).poll_frame(&mut cx) {
                std::task::Poll::Ready(Some(Ok(frame))) => {
                    got.extend_from_slice(&frame.into_data().unwrap())
                }
                std::task::Poll::Ready(None) => break,
                other => panic!("{other:?}"),
            }
        }
        assert!(body.is_end_stream());
        assert_eq!(got, b"abcde");
        let collected: Rope = [Bytes::from_static(b"x"), Bytes::new()]
            .into_iter()
            .collect();
        assert_eq!(collected.piece_count(), 1);
    }

    #[test]
    fn suffixes_and_ascii_across_pieces() {
        let r = rope(&[b"x\r", b"\n"]);
        assert!(r.ends_with(b"\r\n") && r.ends_with(b"\n") && !r.ends_with(b"x\n"));
        assert!(!rope(&[b"\n"]).ends_with(b"\r\n"));
        assert!(Rope::new().ends_with(b"") && !Rope::new().ends_with(b"\n"));
        assert!(r.is_ascii() && !rope(&[b"a", "é".as_bytes()]).is_ascii());
        assert!(rope(&[b"ab", b"cd"]).contains(b"bc"));
    }
}
