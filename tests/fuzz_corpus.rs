//! The fuzz targets' checks over their committed corpus (`fuzz/corpus/<target>/`), as plain
//! tests: every file is decoded without a panic and every invariant of `fuzz/src/lib.rs` holds.
//! `cargo fuzz run <target>` explores further (see docs/development.md).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::path::Path;

/// Runs `check` over every file of `fuzz/corpus/<target>/` and answers how many there were.
fn over_corpus(target: &str, check: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{} failed its check", path.display());
        files += 1;
    }
    assert!(files > 0, "no corpus in {}", dir.display());
    files
}

#[test]
fn webhook_body_corpus() {
    over_corpus("webhook_body", checks::webhook_body);
}

#[test]
fn record_corpus() {
    over_corpus("record", checks::record);
}

#[test]
fn audit_event_corpus() {
    over_corpus("audit_event", checks::audit_event);
}

#[test]
fn snapshot_corpus() {
    over_corpus("snapshot", checks::snapshot);
}

/// Trailing bytes are refused by every decoder.
#[test]
fn trailing_bytes_are_refused() {
    let read = |p: &str| std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(p)).unwrap();
    let trailing = read("fuzz/corpus/snapshot/trailing_after_end");
    assert!(
        sharevault::snapshot::parse(&trailing, sharevault::snapshot::Trailer::sha256()).is_err()
    );
    let token = read("fuzz/corpus/record/token_trailing");
    assert!(sharevault::vault::codec::decode_token("t", &token).is_err());
    // The well-formed seeds decode.
    let valid = read("fuzz/corpus/snapshot/valid");
    assert_eq!(
        sharevault::snapshot::parse(&valid, sharevault::snapshot::Trailer::sha256())
            .unwrap()
            .len(),
        5
    );
}
