//! The body of an SES `SendEmail` request, written from the message's pieces while it is sent.
//!
//! SES takes a raw message base64 in a JSON body. Left to itself the SDK would hold the message
//! in its `Blob`, then its base64, then the JSON that is copied into (grown by doubling), and
//! the request would be signed over that whole buffer: a 40 MB message cost four times its size
//! on top of the message itself (issue 13). Instead the SDK serializes a small placeholder; this
//! interceptor, before signing, cuts the serialized body around it and replaces the body with
//! one that encodes the message frame by frame as the HTTP client reads it. SigV4 signs the body's
//! SHA-256, which is computed first by the same encoding (CPU, not memory) and handed to the
//! signer as a precomputed payload hash, the SDK's own mechanism for bodies it cannot hold.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use aws_runtime::auth::PayloadSigningOverride;
use aws_sdk_sesv2::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_sesv2::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_types::body::SdkBody;
use base64::Engine;
use bytes::Bytes;

use crate::rope::Rope;

/// What the SDK serializes in place of the message: 33 octets (no base64 padding) whose
/// base64 has a `+` and a `/`, so it cannot be any other field of the request (tags and set
/// names are `[A-Za-z0-9_-]`, addresses have an `@`).
pub const PLACEHOLDER: &[u8; 33] = b"\xfb\xef\xbfoutbox raw message placeholder";

/// Message octets encoded per frame (a multiple of 3, so only the last frame is padded).
const FRAME_INPUT: usize = 48 * 1024;

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Replaces the placeholder body of a `SendEmail` request (see the module notes). When the
/// placeholder is not there exactly once it fails the request and sets `failed`: the caller
/// then sends the message the SDK's way.
#[derive(Debug)]
pub struct StreamRawMessage {
    pieces: Arc<[Bytes]>,
    pub failed: Arc<AtomicBool>,
}

impl StreamRawMessage {
    pub fn new(mime: &Rope) -> StreamRawMessage {
        StreamRawMessage {
            pieces: mime.shared_pieces().into(),
            failed: Arc::new(AtomicBool::new(false)),
        }
    }
}

#[derive(Debug)]
struct NoPlaceholder;

impl std::fmt::Display for NoPlaceholder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no message placeholder in the serialized SendEmail request")
    }
}

impl std::error::Error for NoPlaceholder {}

impl Intercept for StreamRawMessage {
    fn name(&self) -> &'static str {
        "StreamRawMessage"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let request = context.request_mut();
        let body = request
            .body()
            .bytes()
            .and_then(|serialized| RawJsonBody::around_placeholder(serialized, &self.pieces));
        let Some(body) = body else {
            self.failed.store(true, Ordering::Relaxed);
            return Err(Box::new(NoPlaceholder));
        };
        request
            .headers_mut()
            .insert("content-length", body.len.to_string());
        cfg.interceptor_state()
            .store_put(PayloadSigningOverride::Precomputed(body.sha256_hex()));
        *request.body_mut() = SdkBody::retryable(move || SdkBody::from_body_1_x(body.frames()));
        Ok(())
    }
}

/// The serialized request with the message's base64 in place of the placeholder's.
#[derive(Debug, Clone)]
struct RawJsonBody {
    /// Up to and including the opening quote of the placeholder's string.
    prefix: Bytes,
    pieces: Arc<[Bytes]>,
    /// From the closing quote on.
    suffix: Bytes,
    len: u64,
}

impl RawJsonBody {
    /// None unless the placeholder's base64 is in `serialized` exactly once, as a JSON string.
    fn around_placeholder(serialized: &[u8], pieces: &Arc<[Bytes]>) -> Option<RawJsonBody> {
        let needle = format!("\"{}\"", BASE64.encode(PLACEHOLDER));
        let needle = needle.as_bytes();
        let mut found = serialized
            .windows(needle.len())
            .enumerate()
            .filter(|(_, w)| w == &needle)
            .map(|(i, _)| i);
        let (Some(at), None) = (found.next(), found.next()) else {
            return None;
        };
        let message_len = pieces.iter().map(Bytes::len).sum();
        let prefix = Bytes::copy_from_slice(&serialized[..at + 1]);
        let suffix = Bytes::copy_from_slice(&serialized[at + needle.len() - 1..]);
        let len = prefix.len() + base64::encoded_len(message_len, true)? + suffix.len();
        Some(RawJsonBody {
            prefix,
            pieces: Arc::clone(pieces),
            suffix,
            len: len as u64,
        })
    }

    fn frames(&self) -> Frames {
        Frames {
            body: self.clone(),
            stage: Stage::Prefix,
            piece: 0,
            offset: 0,
            input: Vec::new(),
            sent: 0,
        }
    }

    /// The SHA-256 of the whole body, lowercase hex (what SigV4 signs).
    fn sha256_hex(&self) -> String {
        let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        self.frames().for_each(|frame| digest.update(&frame));
        digest
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Prefix,
    Message,
    Suffix,
    Done,
}

/// The body as frames: the prefix, the message's base64 a frame at a time, the suffix.
#[derive(Debug)]
struct Frames {
    body: RawJsonBody,
    stage: Stage,
    /// Where the next message octet is: piece and offset in it.
    piece: usize,
    offset: usize,
    /// The octets of the frame being encoded (reused).
    input: Vec<u8>,
    sent: u64,
}

impl Frames {
    /// The next frame of the message's base64, None once it is all out. Takes up to
    /// FRAME_INPUT octets across pieces; a frame that is not the last takes a multiple of 3
    /// (the rest starts the next frame).
    fn message_frame(&mut self) -> Option<Bytes> {
        let pieces = &self.body.pieces;
        while self.input.len() < FRAME_INPUT && self.piece < pieces.len() {
            let rest = &pieces[self.piece][self.offset..];
            let take = rest.len().min(FRAME_INPUT - self.input.len());
            self.input.extend_from_slice(&rest[..take]);
            self.offset += take;
            if self.offset == pieces[self.piece].len() {
                self.piece += 1;
                self.offset = 0;
            }
        }
        let last = self.piece == pieces.len();
        let whole = if last {
            self.input.len()
        } else {
            self.input.len() / 3 * 3
        };
        if whole == 0 {
            return None;
        }
        let encoded = BASE64.encode(&self.input[..whole]);
        self.input.drain(..whole);
        Some(Bytes::from(encoded))
    }
}

impl Iterator for Frames {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        loop {
            let frame = match self.stage {
                Stage::Prefix => {
                    self.stage = Stage::Message;
                    Some(self.body.prefix.clone())
                }
                Stage::Message => match self.message_frame() {
                    Some(frame) => Some(frame),
                    None => {
                        self.stage = Stage::Suffix;
                        None
                    }
                },
                Stage::Suffix => {
                    self.stage = Stage::Done;
                    Some(self.body.suffix.clone())
                }
                Stage::Done => return None,
            };
            if let Some(frame) = frame.filter(|f| !f.is_empty()) {
                self.sent += frame.len() as u64;
                return Some(frame);
            }
        }
    }
}

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().next().map(|b| Ok(http_body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.stage == Stage::Done
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.body.len - self.sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(parts: &[&[u8]]) -> Arc<[Bytes]> {
        parts
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| Bytes::copy_from_slice(p))
            .collect::<Vec<_>>()
            .into()
    }

    fn serialized() -> String {
        format!(
            r#"{{"Content":{{"Raw":{{"Data":"{}"}}}},"EmailTags":[]}}"#,
            BASE64.encode(PLACEHOLDER)
        )
    }

    #[test]
    fn the_body_is_the_request_with_the_message_in_base64_however_it_is_cut() {
        let message: Vec<u8> = (0..40u8).collect();
        let want = serialized().replace(&BASE64.encode(PLACEHOLDER), &BASE64.encode(&message));
        for i in 0..=message.len() {
            for j in i..=message.len() {
                let parts = pieces(&[&message[..i], &message[i..j], &message[j..]]);
                let body =
                    RawJsonBody::around_placeholder(serialized().as_bytes(), &parts).unwrap();
                let frames: Vec<Bytes> = body.frames().collect();
                assert_eq!(frames.concat(), want.as_bytes(), "cut at {i} and {j}");
                assert_eq!(body.len, want.len() as u64);
            }
        }
    }

    #[test]
    fn frames_are_bounded_and_the_size_and_hash_are_exact() {
        // Several frames, pieces not multiples of 3, a piece spanning frames.
        let message: Vec<u8> = (0..3 * FRAME_INPUT + 7).map(|i| (i % 253) as u8).collect();
        let parts = pieces(&[
            &message[..5],
            &message[5..FRAME_INPUT + 1],
            &message[FRAME_INPUT + 1..],
        ]);
        let body = RawJsonBody::around_placeholder(serialized().as_bytes(), &parts).unwrap();
        let mut frames = body.frames();
        let mut all = Vec::new();
        loop {
            let hint = http_body::Body::size_hint(&frames).exact().unwrap();
            assert_eq!(hint, body.len - all.len() as u64);
            let Some(frame) = frames.next() else { break };
            assert!(frame.len() <= FRAME_INPUT / 3 * 4, "{}", frame.len());
            all.extend_from_slice(&frame);
        }
        assert!(http_body::Body::is_end_stream(&frames));
        assert_eq!(all.len() as u64, body.len);
        let json: serde_json::Value = serde_json::from_slice(&all).unwrap();
        let data = json["Content"]["Raw"]["Data"].as_str().unwrap();
        assert_eq!(BASE64.decode(data).unwrap(), message);
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &all);
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(body.sha256_hex(), hex);
    }

    #[test]
    fn the_placeholder_must_be_there_once() {
        let parts = pieces(&[b"hi"]);
        let placeholder = BASE64.encode(PLACEHOLDER);
        assert!(
            placeholder.contains('+') && placeholder.contains('/') && !placeholder.contains('=')
        );
        assert!(RawJsonBody::around_placeholder(br#"{"Data":"aGk="}"#, &parts).is_none());
        let twice = format!(r#"["{placeholder}","{placeholder}"]"#);
        assert!(RawJsonBody::around_placeholder(twice.as_bytes(), &parts).is_none());
        // Not as a JSON string of its own (inside another value): not ours.
        let inside = format!(r#"{{"Data":"x{placeholder}"}}"#);
        assert!(RawJsonBody::around_placeholder(inside.as_bytes(), &parts).is_none());
    }
}
