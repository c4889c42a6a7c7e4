//! Restore: what it refuses, and that a refusal changes nothing.

use super::*;
use crate::audit::AuditEntry;

/// A snapshot of nothing but `events` (keyed from the first) and their anchor, under
/// `key`'s id.
fn snapshot_of(
    key: &MasterKey,
    (integrity, sealed): &(IntegrityKey, Vec<u8>),
    events: &[AuditEvent],
) -> Vec<u8> {
    let header = snapshot::Header {
        version: 2,
        created_at_ms: 1,
        key_id: key.id().to_bytes(),
        sealed_integrity_key: sealed.clone(),
        counts: [0, 0, 0, 0, 0, 1, events.len() as u64, 0],
    };
    let mut out = header.encode();
    out.extend(snapshot::record(
        TableId::Meta,
        Anchor::META.as_bytes(),
        &Anchor::encode(&integrity.audit_key(), 1),
    ));
    for e in events {
        out.extend(snapshot::record(
            TableId::Audit,
            &e.seq.to_be_bytes(),
            &e.encode(),
        ));
    }
    out.extend(snapshot::end());
    let mut mac = Trailer::Mac(Box::new(integrity.snapshot_mac()));
    mac.update(&out);
    out.extend_from_slice(&mac.finish());
    out
}

#[test]
fn an_edited_audit_event_is_refused_by_its_sequence_number() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::from_file_contents(&[7u8; 32]).unwrap();
    let integrity = IntegrityKey::generate(&key).unwrap();
    let audit_key = integrity.0.audit_key();
    let mut events: Vec<AuditEvent> = Vec::new();
    for _ in 0..3 {
        let entry = AuditEntry {
            time_ms: 1,
            actor: "webhook".into(),
            action: "backup",
            client_id: "c1".into(),
            backup_method: "PASSWORD-SECP256K1".into(),
            outcome: None,
        };
        let (seq, hash) = events.last().map_or((0, [0; 32]), |e| (e.seq, e.hash));
        events.push(AuditEvent::chain(&entry, "ok", seq, hash, Some(&audit_key)));
    }
    events[1].actor = "mallory".into();
    let file = dir.path().join("edited.snapshot");
    std::fs::write(&file, snapshot_of(&key, &integrity, &events)).unwrap();
    let data_dir = dir.path().join("data");
    let err = restore(&file, &data_dir, &key, RestoreOptions::default()).unwrap_err();
    assert!(
        err.contains("the audit chain is broken at event 2: its content does not match"),
        "{err}"
    );
    assert!(
        !data_dir.join(DATABASE_FILE).exists(),
        "nothing was restored"
    );
}

/// A snapshot file of `records` in format `version`: MAC'd under `integrity` (format 2) or
/// with a plain SHA-256 (format 1).
fn file_of(
    key: &MasterKey,
    integrity: Option<&(IntegrityKey, Vec<u8>)>,
    mut records: Vec<snapshot::Record>,
) -> Vec<u8> {
    records.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut counts = [0u64; snapshot::TABLE_COUNT];
    for (table, _, _) in &records {
        counts[*table as usize - 1] += 1;
    }
    let header = snapshot::Header {
        version: if integrity.is_some() {
            snapshot::VERSION
        } else {
            1
        },
        created_at_ms: 1,
        key_id: key.id().to_bytes(),
        sealed_integrity_key: integrity.map(|i| i.1.clone()).unwrap_or_default(),
        counts,
    };
    let mut out = header.encode();
    for (table, k, v) in &records {
        out.extend(snapshot::record(*table, k, v));
    }
    out.extend(snapshot::end());
    let mut trailer = match integrity {
        Some((integrity, _)) => Trailer::Mac(Box::new(integrity.snapshot_mac())),
        None => Trailer::sha256(),
    };
    trailer.update(&out);
    out.extend_from_slice(&trailer.finish());
    out
}

fn key_check(key: &MasterKey, plaintext: &[u8]) -> snapshot::Record {
    let aad = RecordAad {
        table: "meta",
        client_id: "",
        backup_method: "key_check",
    };
    (
        TableId::Meta,
        b"key_check".to_vec(),
        key.seal(&aad, plaintext).unwrap(),
    )
}

fn token(name: &str, hash: [u8; 32]) -> snapshot::Record {
    (
        TableId::Tokens,
        name.as_bytes().to_vec(),
        codec::encode_token(crate::auth::Role::Admin, 1, &hash),
    )
}

#[test]
fn a_format_1_snapshot_needs_the_flag_and_its_own_kind_of_vault() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::from_file_contents(&[8u8; 32]).unwrap();
    let old = dir.path().join("old.snapshot");
    let records = vec![key_check(&key, b"sharevault master key check v1")];
    std::fs::write(&old, file_of(&key, None, records)).unwrap();
    let data_dir = dir.path().join("data");
    let err = restore(&old, &data_dir, &key, RestoreOptions::default()).unwrap_err();
    assert!(
        err.contains("format 1") && err.contains("--accept-unauthenticated-snapshot"),
        "{err}"
    );
    assert!(!data_dir.exists(), "nothing was made");
    let accept = RestoreOptions {
        accept_unauthenticated: true,
        ..RestoreOptions::default()
    };
    restore(&old, &data_dir, &key, accept).unwrap();
    assert!(data_dir.join(DATABASE_FILE).exists());

    // A vault with an integrity key, made to look like format 1: refused even so.
    let converted = dir.path().join("converted.snapshot");
    let records = vec![key_check(
        &key,
        b"sharevault master key check v2: integrity key",
    )];
    std::fs::write(&converted, file_of(&key, None, records)).unwrap();
    let err = restore(&converted, &dir.path().join("other"), &key, accept).unwrap_err();
    assert!(err.contains("converted"), "{err}");
}

/// Every token hash entry must name a token carrying that hash, and every token must have
/// its entry, even in a snapshot whose MAC is good.
#[test]
fn token_hash_entries_must_match_their_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::from_file_contents(&[9u8; 32]).unwrap();
    let integrity = IntegrityKey::generate(&key).unwrap();
    let base = || {
        vec![
            key_check(&key, b"sharevault master key check v2: integrity key"),
            (
                TableId::Meta,
                INTEGRITY_KEY.as_bytes().to_vec(),
                integrity.1.clone(),
            ),
            token("ops", [1; 32]),
            (
                TableId::Meta,
                Anchor::META.as_bytes().to_vec(),
                Anchor::encode(&integrity.0.audit_key(), 1),
            ),
        ]
    };
    let planted = (TableId::TokenHashes, vec![2u8; 32], b"ops".to_vec());
    let genuine = (TableId::TokenHashes, vec![1u8; 32], b"ops".to_vec());
    for (name, extra, expected) in [
        (
            "planted",
            vec![genuine.clone(), planted],
            Some("does not match"),
        ),
        ("missing", vec![], Some("has no token_hashes record")),
        ("intact", vec![genuine], None),
    ] {
        let file = dir.path().join(name);
        let mut records = base();
        records.extend(extra);
        std::fs::write(&file, file_of(&key, Some(&integrity), records)).unwrap();
        let data_dir = dir.path().join(format!("data-{name}"));
        let result = restore(&file, &data_dir, &key, RestoreOptions::default());
        match expected {
            Some(expected) => {
                let err = result.unwrap_err();
                assert!(err.contains(expected), "{name}: {err}");
                assert!(!data_dir.join(DATABASE_FILE).exists(), "{name}");
            }
            None => {
                result.unwrap();
            }
        }
    }
}
