//! The record codec: share, pair and token records round-trip, and what the decoders accept is
//! canonical.

use proptest::prelude::*;
use sharevault::auth::Role;
use sharevault::vault::codec;
use sharevault::vault::status::PairStatus;
use sharevault::vault::{PairRecord, SealedRecord};

use super::{STATUSES, config};

fn status() -> impl Strategy<Value = PairStatus> {
    prop::sample::select(STATUSES.to_vec())
}

fn role() -> impl Strategy<Value = Role> {
    prop::sample::select(vec![Role::Backend, Role::Eject, Role::Admin])
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn share_records_round_trip(
        created_at_ms in any::<u64>(),
        seq in any::<u64>(),
        pair_id in prop::option::of("\\PC{1,140}"),
        covers in prop::collection::vec("\\PC{1,40}", 0..4),
        envelope in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let record = SealedRecord { created_at_ms, seq, pair_id, covers, envelope };
        let bytes = codec::encode_record(&record);
        prop_assert_eq!(codec::decode_record(&bytes).unwrap(), record);
    }

    #[test]
    fn pair_records_round_trip(
        id in "\\PC{0,140}",
        backup_method in "\\PC{0,80}",
        status in status(),
        created_at_ms in any::<u64>(),
        updated_at_ms in any::<u64>(),
    ) {
        let pair = PairRecord { id: id.clone(), backup_method, status, created_at_ms, updated_at_ms };
        let bytes = codec::encode_pair(&pair);
        prop_assert_eq!(codec::decode_pair(&id, &bytes).unwrap(), pair);
    }

    #[test]
    fn token_records_round_trip(
        name in "\\PC{0,64}",
        role in role(),
        created_at_ms in any::<u64>(),
        hash in any::<[u8; 32]>(),
    ) {
        let bytes = codec::encode_token(role, created_at_ms, &hash);
        let token = codec::decode_token(&name, &bytes).unwrap();
        prop_assert_eq!(
            (token.name, token.role, token.created_at_ms, token.hash),
            (name, role, created_at_ms, hash)
        );
    }

    /// Whatever the decoders accept is canonical: encoding it again gives the same bytes
    /// (for a token, the bytes it read; anything after them is ignored).
    #[test]
    fn arbitrary_bytes_never_panic_the_record_decoders(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..80),
            prop::collection::vec(any::<u8>(), 0..80).prop_map(|mut b| {
                b.insert(0, 1);
                b
            }),
        ],
    ) {
        if let Ok(record) = codec::decode_record(&bytes) {
            prop_assert_eq!(codec::encode_record(&record), bytes.clone());
        }
        if let Ok(pair) = codec::decode_pair("p", &bytes) {
            prop_assert_eq!(codec::encode_pair(&pair), bytes.clone());
        }
        if let Ok(token) = codec::decode_token("t", &bytes) {
            let again = codec::encode_token(token.role, token.created_at_ms, &token.hash);
            prop_assert!(bytes.starts_with(&again));
        }
    }
}
