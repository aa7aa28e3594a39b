//! Fuzz targets, kept in the crate so the libFuzzer binaries in `fuzz/` are one-liners and the
//! stable replay test (`tests/fuzz_corpus.rs`) runs exactly the same code over the committed
//! corpus. Each target takes arbitrary bytes, must never panic, and asserts a property of the
//! code under test (a panic here is a finding). Not part of the public API.
//!
//! - [`smtp_session`]: command lines (AUTH, BDAT, DATA…) through the session state machine.
//! - [`body_reader`]: the DATA reader gives one result however its input is split into reads;
//!   dot-stuffing round-trips.
//! - [`header_from`]: the From the ownership check passes is the From mail-parser reads.
//! - [`signature`]: signed output is MIME mail-parser reads, attachments byte-identical.
//! - [`sns_message`], [`ses_event`]: SES feedback as it arrives.
//! - [`jmap_request`]: request parsing and result references.

mod feedback;
mod jmap;
mod mime;
mod smtp;

pub use feedback::{ses_event, sns_message};
pub use jmap::jmap_request;
pub use mime::{header_from, signature};
pub use smtp::{body_reader, smtp_session};

/// The message of the `signature` target's regression input `name` (its first byte, which
/// picks the target's signature, left off), for unit tests of a fixed finding.
#[cfg(test)]
pub(crate) fn signature_regression(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/fuzz/regressions/signature/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut input = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    input.remove(0);
    input
}

/// A fuzz target: arbitrary bytes in, a panic on a finding.
pub type Target = fn(&[u8]);

/// Every target by name (the directory names under `fuzz/corpus/`).
pub const TARGETS: [(&str, Target); 7] = [
    ("smtp_session", smtp_session),
    ("body_reader", body_reader),
    ("header_from", header_from),
    ("signature", signature),
    ("sns_message", sns_message),
    ("ses_event", ses_event),
    ("jmap_request", jmap_request),
];

/// For the libFuzzer binaries' `init`: libfuzzer-sys aborts on every panic, even one that is
/// caught, so the mail-parser panic [`crate::message::parse_mime`] contains would stop every
/// run that meets it. This lets that one panic (by its file and text) unwind to the catch;
/// any other still aborts. `cargo test`'s replay needs nothing: no hook aborts there.
pub fn tolerate_contained_parser_panic() {
    let abort = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_mail_parser = info
            .location()
            .is_some_and(|l| l.file().contains("mail-parser-"));
        let known = info
            .payload_as_str()
            .is_some_and(|text| text.contains("Invalid part ID"));
        if !(in_mail_parser && known) {
            abort(info);
        }
    }));
}
