//! The snapshot format: round trips, and damage of every kind refused.

use super::*;
use crate::integrity::HmacSha256;
use hmac::Mac;
use sha2::{Digest, Sha256};

fn mac() -> Trailer {
    Trailer::Mac(Box::new(
        <HmacSha256 as Mac>::new_from_slice(b"snapshot key").unwrap(),
    ))
}

fn sample() -> Vec<u8> {
    let header = Header {
        version: super::VERSION,
        created_at_ms: 7,
        key_id: [1; 8],
        sealed_integrity_key: b"sealed integrity key".to_vec(),
        counts: [1, 0, 0, 0, 0, 1, 0, 0],
    };
    let mut out = header.encode();
    out.extend(record(
        TableId::Custodian,
        &client_key("c", "PASSWORD-SECP256K1"),
        b"sealed",
    ));
    out.extend(record(TableId::Meta, b"key_check", b"sealed check"));
    out.extend(end());
    let mut trailer = mac();
    trailer.update(&out);
    out.extend_from_slice(&trailer.finish());
    out
}

#[test]
fn a_snapshot_round_trips() {
    let records = parse(&sample(), mac()).unwrap();
    assert_eq!(records.len(), 2);
    // A plain SHA-256 in place of the MAC, as anyone could compute, is refused.
    let mut forged = sample();
    let body = forged.len() - 32;
    let sum = Sha256::digest(&forged[..body]);
    forged[body..].copy_from_slice(&sum);
    assert_eq!(parse(&forged, mac()).unwrap_err(), SnapshotError::Mac);
    assert_eq!(
        split_client_key(&records[0].1),
        Some(("c", "PASSWORD-SECP256K1"))
    );
}

#[test]
fn truncation_and_flipped_bytes_are_refused() {
    let good = sample();
    for cut in [0, 5, 40, good.len() - 33, good.len() - 1] {
        assert!(parse(&good[..cut], mac()).is_err(), "cut at {cut}");
    }
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x10;
        assert!(parse(&bad, mac()).is_err(), "flip at {i}");
    }
    assert_eq!(
        parse(&good[..good.len() - 10], mac()).unwrap_err(),
        SnapshotError::Truncated
    );
    assert_eq!(
        check_structure(&good[..], good.len() as u64)
            .unwrap()
            .sealed_integrity_key,
        b"sealed integrity key"
    );
    assert!(check_structure(&good[..good.len() - 1], good.len() as u64 - 1).is_err());
}
