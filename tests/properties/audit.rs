//! Audit events: they round-trip, arbitrary bytes never panic the decoder, and any edit of a
//! chain is detected.

use proptest::prelude::*;
use sharevault::audit::{AuditEntry, AuditEvent};

use super::config;

fn audit_event() -> impl Strategy<Value = AuditEvent> {
    (
        (any::<u64>(), any::<u64>()),
        [
            "\\PC{0,40}",
            "[a-z_]{0,24}",
            "\\PC{0,140}",
            "\\PC{0,70}",
            "[a-z_]{0,20}",
        ],
        (any::<[u8; 32]>(), any::<[u8; 32]>(), 1u8..=2),
    )
        .prop_map(
            |(
                (seq, time_ms),
                [actor, action, client_id, backup_method, outcome],
                (prev, hash, version),
            )| {
                AuditEvent {
                    version,
                    seq,
                    time_ms,
                    actor,
                    action,
                    client_id,
                    backup_method,
                    outcome,
                    prev_hash: prev,
                    hash,
                }
            },
        )
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn audit_events_round_trip(event in audit_event()) {
        prop_assert_eq!(AuditEvent::decode(&event.encode()), Some(event));
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_audit_decoder(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            audit_event().prop_flat_map(|e| {
                let encoded = e.encode();
                let len = encoded.len();
                (Just(encoded), 0..len, any::<u8>())
            }).prop_map(|(mut encoded, at, byte)| {
                encoded[at] = byte;
                encoded
            }),
        ],
    ) {
        if let Some(event) = AuditEvent::decode(&bytes) {
            prop_assert_eq!(event.encode(), bytes);
        }
    }

    #[test]
    fn chained_events_verify_and_any_edit_is_detected(
        entries in prop::collection::vec(("\\PC{0,12}", "[a-z]{1,8}", "[A-Z-]{0,12}"), 1..8),
        victim in any::<prop::sample::Index>(),
    ) {
        let mut events: Vec<AuditEvent> = Vec::new();
        for (client_id, actor, backup_method) in &entries {
            let entry = AuditEntry {
                time_ms: 7,
                actor: actor.clone(),
                action: "backup",
                client_id: client_id.clone(),
                backup_method: backup_method.clone(),
                outcome: None,
            };
            let (seq, hash) = events.last().map_or((0, [0; 32]), |e| (e.seq, e.hash));
            events.push(AuditEvent::chain(&entry, "ok", seq, hash, None));
        }
        let last = events.last().unwrap();
        let head = Some((last.seq, last.hash));
        let intact = sharevault::audit::verify(
            sharevault::audit::ChainCheck::plain(),
            events.iter().cloned().map(Ok),
            head,
        );
        prop_assert_eq!(intact.problem, None);
        prop_assert_eq!(intact.events, events.len() as u64);

        let at = victim.index(events.len());
        let mut edited = events.clone();
        edited[at].client_id.push('!');
        let report = sharevault::audit::verify(
            sharevault::audit::ChainCheck::plain(),
            edited.into_iter().map(Ok),
            head,
        );
        prop_assert_eq!(report.problem.map(|p| p.0), Some(at as u64 + 1));
    }
}
