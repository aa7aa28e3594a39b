//! Replays the committed fuzz corpus on stable: every file under `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` goes through the same target function the libFuzzer binaries
//! call (`outbox::fuzzing`), so a change that breaks a fuzzed property fails `cargo test`.

use std::path::Path;

fn inputs(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str) {
    let (_, run) = outbox::fuzzing::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a known target");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut count = 0;
    for kind in ["corpus", "regressions"] {
        for file in inputs(&root.join(kind).join(target)) {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target} fails on {}", file.display());
            count += 1;
        }
    }
    assert!(count > 0, "no corpus for {target}");
}

#[test]
fn every_target_has_a_test() {
    let mut names: Vec<&str> = outbox::fuzzing::TARGETS.iter().map(|(n, _)| *n).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "body_reader",
            "header_from",
            "jmap_request",
            "ses_event",
            "signature",
            "smtp_session",
            "sns_message"
        ]
    );
}

#[test]
fn smtp_session() {
    replay("smtp_session");
}

#[test]
fn body_reader() {
    replay("body_reader");
}

#[test]
fn header_from() {
    replay("header_from");
}

#[test]
fn signature() {
    replay("signature");
}

#[test]
fn sns_message() {
    replay("sns_message");
}

#[test]
fn ses_event() {
    replay("ses_event");
}

#[test]
fn jmap_request() {
    replay("jmap_request");
}
