//! The envelope: sealed bytes open only under the same key and location, and any damage is
//! refused.

use proptest::prelude::*;
use sharevault::crypto::{ENVELOPE_OVERHEAD, MasterKey, RecordAad};

use super::{CASES, config};

const RECORD_TABLES: [&str; 3] = ["custodian_shares", "client_shares", "meta"];

fn aad_parts() -> impl Strategy<Value = (&'static str, String, String)> {
    (
        prop::sample::select(RECORD_TABLES.to_vec()),
        "\\PC{0,24}",
        "\\PC{0,24}",
    )
}

fn aad<'a>(parts: &'a (&'static str, String, String)) -> RecordAad<'a> {
    RecordAad {
        table: parts.0,
        client_id: &parts.1,
        backup_method: &parts.2,
    }
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn envelopes_round_trip_arbitrary_bytes(
        key in any::<[u8; 32]>(),
        parts in aad_parts(),
        plaintext in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let key = MasterKey::from_file_contents(&key).unwrap();
        let envelope = key.seal(&aad(&parts), &plaintext).unwrap();
        // Compression is used only when it makes the envelope smaller.
        prop_assert!(envelope.len() <= ENVELOPE_OVERHEAD + plaintext.len());
        prop_assert_eq!(MasterKey::envelope_key_id(&envelope).unwrap(), key.id());
        prop_assert_eq!(&*key.open(&aad(&parts), &envelope).unwrap(), &plaintext);
    }

    #[test]
    fn compressible_plaintexts_round_trip_smaller(
        key in any::<[u8; 32]>(),
        parts in aad_parts(),
        text in "[0-9a-f\\{\\}\":,]{200,3000}",
    ) {
        let key = MasterKey::from_file_contents(&key).unwrap();
        let envelope = key.seal(&aad(&parts), text.as_bytes()).unwrap();
        prop_assert!(envelope.len() < ENVELOPE_OVERHEAD + text.len());
        prop_assert_eq!(&*key.open(&aad(&parts), &envelope).unwrap(), text.as_bytes());
        let mut flipped = envelope.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        prop_assert!(key.open(&aad(&parts), &flipped).is_err());
    }

    #[test]
    fn any_flipped_byte_or_truncation_fails_to_open(
        key in any::<[u8; 32]>(),
        parts in aad_parts(),
        plaintext in prop::collection::vec(any::<u8>(), 0..128),
        at in any::<prop::sample::Index>(),
        mask in 1u8..=255,
        cut in any::<prop::sample::Index>(),
    ) {
        let key = MasterKey::from_file_contents(&key).unwrap();
        let envelope = key.seal(&aad(&parts), &plaintext).unwrap();
        let mut flipped = envelope.clone();
        flipped[at.index(envelope.len())] ^= mask;
        prop_assert!(key.open(&aad(&parts), &flipped).is_err());
        let truncated = &envelope[..cut.index(envelope.len())];
        prop_assert!(key.open(&aad(&parts), truncated).is_err());
        let mut extended = envelope.clone();
        extended.push(mask);
        prop_assert!(key.open(&aad(&parts), &extended).is_err());
    }

    #[test]
    fn another_location_or_key_fails_to_open(
        key in any::<[u8; 32]>(),
        other_key in any::<[u8; 32]>(),
        parts in aad_parts(),
        other in aad_parts(),
        plaintext in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let master = MasterKey::from_file_contents(&key).unwrap();
        let envelope = master.seal(&aad(&parts), &plaintext).unwrap();
        if other != parts {
            prop_assert!(master.open(&aad(&other), &envelope).is_err());
        }
        // Moving bytes between client id and method must not keep the associated data.
        let shifted = (parts.0, format!("{}{}", parts.1, parts.2), String::new());
        if shifted != parts {
            prop_assert!(master.open(&aad(&shifted), &envelope).is_err());
        }
        if other_key != key {
            let other_master = MasterKey::from_file_contents(&other_key).unwrap();
            prop_assert!(other_master.open(&aad(&parts), &envelope).is_err());
        }
    }

    #[test]
    fn arbitrary_envelopes_never_panic(
        key in any::<[u8; 32]>(),
        parts in aad_parts(),
        bytes in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let key = MasterKey::from_file_contents(&key).unwrap();
        prop_assert!(key.open(&aad(&parts), &bytes).is_err());
        let _ = MasterKey::envelope_key_id(&bytes);
    }
}
