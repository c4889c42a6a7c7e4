//! The audit chain: round trips, edits, removals, rewrites and upgraded trails.

use super::*;

fn entry(action: &'static str) -> AuditEntry {
    AuditEntry {
        time_ms: 1,
        actor: "webhook".into(),
        action,
        client_id: "c1".into(),
        backup_method: "PASSWORD-SECP256K1".into(),
        outcome: None,
    }
}

fn key(byte: u8) -> AuditKey {
    AuditKey::from_bytes(&[byte; 32])
}

/// `n` events, keyed from `keyed_from` on.
fn trail_keyed_from(n: usize, keyed_from: u64) -> Vec<AuditEvent> {
    let key = key(1);
    let mut out: Vec<AuditEvent> = Vec::new();
    for _ in 0..n {
        let (seq, hash) = out.last().map_or((0, [0; 32]), |e| (e.seq, e.hash));
        let key = (seq + 1 >= keyed_from).then_some(&key);
        out.push(AuditEvent::chain(&entry("backup"), "ok", seq, hash, key));
    }
    out
}

fn trail(n: usize) -> Vec<AuditEvent> {
    trail_keyed_from(n, 1)
}

fn check(events: &[AuditEvent], head: Option<(u64, [u8; 32])>) -> ChainReport {
    verify(
        ChainCheck::new(Some(key(1)), 1),
        events.iter().cloned().map(Ok),
        head,
    )
}

/// Rewrites `events` from index `from` on, and answers the head, as someone who can write
/// the database but has no key can: plain SHA-256 links.
fn rechain_plain(events: &mut [AuditEvent], from: usize) -> Option<(u64, [u8; 32])> {
    for i in from..events.len() {
        events[i].version = VERSION_PLAIN;
        if i > 0 {
            events[i].prev_hash = events[i - 1].hash;
        }
        events[i].hash = events[i].compute_hash(None).unwrap();
    }
    events.last().map(|e| (e.seq, e.hash))
}

#[test]
fn a_trail_rewritten_with_its_head_is_detected() {
    let events = trail(5);
    let mut rewritten = events.clone();
    rewritten[2].actor = "mallory".into();
    let head = rechain_plain(&mut rewritten, 2);
    let report = check(&rewritten, head);
    assert_eq!(report.problem.as_ref().map(|p| p.0), Some(3), "{report:?}");
    assert!(report.problem.unwrap().1.contains("rewritten"));
    // Rechained with another key (as with a forged one): detected too.
    let mut forged = events.clone();
    forged[2].actor = "mallory".into();
    for i in 2..forged.len() {
        forged[i].prev_hash = forged[i - 1].hash;
        forged[i].hash = forged[i].compute_hash(Some(&key(2))).unwrap();
    }
    let head = forged.last().map(|e| (e.seq, e.hash));
    assert_eq!(check(&forged, head).problem.unwrap().0, 3);
}

#[test]
fn an_upgraded_trail_verifies_plain_before_its_anchor_and_keyed_after() {
    let events = trail_keyed_from(6, 4);
    assert!(!events[2].keyed() && events[3].keyed());
    let head = events.last().map(|e| (e.seq, e.hash));
    let report = verify(
        ChainCheck::new(Some(key(1)), 4),
        events.iter().cloned().map(Ok),
        head,
    );
    assert_eq!(report.problem, None);
    // Moving the anchor further does not let plain events in.
    let mut rewritten = events.clone();
    let head = rechain_plain(&mut rewritten, 3);
    let report = verify(
        ChainCheck::new(Some(key(1)), 4),
        rewritten.iter().cloned().map(Ok),
        head,
    );
    assert_eq!(report.problem.unwrap().0, 4);
    // The anchor itself only decodes under its key.
    let anchor = Anchor::encode(&key(1), 4);
    assert_eq!(Anchor::decode(&key(1), &anchor), Some(4));
    assert_eq!(Anchor::decode(&key(2), &anchor), None);
    let mut moved = anchor.clone();
    moved[7] = 9;
    assert_eq!(Anchor::decode(&key(1), &moved), None);
    // A plain trail checks without a key.
    let plain = trail_keyed_from(3, u64::MAX);
    let head = plain.last().map(|e| (e.seq, e.hash));
    let report = verify(ChainCheck::plain(), plain.iter().cloned().map(Ok), head);
    assert_eq!(report.problem, None);
}

#[test]
fn an_intact_trail_verifies_and_round_trips() {
    let events = trail(5);
    for e in &events {
        assert_eq!(AuditEvent::decode(&e.encode()).as_ref(), Some(e));
    }
    let head = Some((5, events[4].hash));
    assert_eq!(
        check(&events, head),
        ChainReport {
            events: 5,
            problem: None
        }
    );
    assert_eq!(check(&[], None).problem, None);
}

#[test]
fn edits_removals_and_truncation_are_detected() {
    let events = trail(5);
    let head = Some((5, events[4].hash));
    let mut edited = events.clone();
    edited[2].outcome = "denied".into();
    assert_eq!(check(&edited, head).problem.unwrap().0, 3);
    let mut removed = events.clone();
    removed.remove(1);
    assert_eq!(check(&removed, head).problem.unwrap().0, 3);
    let truncated = &events[..4];
    assert!(
        check(truncated, head)
            .problem
            .unwrap()
            .1
            .contains("removed from the end")
    );
    let mut rehashed = events.clone();
    rehashed[2].actor = "mallory".into();
    rehashed[2].hash = rehashed[2].compute_hash(Some(&key(1))).unwrap();
    assert_eq!(check(&rehashed, head).problem.unwrap().0, 4);
}
