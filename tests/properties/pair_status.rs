//! The share-pair status machine: forward-only updates, and statuses decoded only from their own
//! byte and name.

use proptest::prelude::*;
use sharevault::error::VaultError;
use sharevault::vault::status::PairStatus;

use super::{STATUSES, config};

/// Every transition, both ways of the client-share flag: allowed exactly when it moves
/// forward or stays, and does not complete a pair without its client share.
#[test]
fn status_updates_are_allowed_iff_forward_and_never_complete_without_a_client_share() {
    for (from_rank, from) in STATUSES.into_iter().enumerate() {
        for (to_rank, to) in STATUSES.into_iter().enumerate() {
            for held in [false, true] {
                let completes = to == PairStatus::StoredClientBackupShare;
                let allowed = to_rank >= from_rank && (held || !completes);
                match from.check_update(to, held) {
                    Ok(()) => assert!(allowed, "{from:?} -> {to:?} (held {held}) was allowed"),
                    Err(VaultError::FailedPrecondition(message)) => {
                        assert!(!allowed, "{from:?} -> {to:?} (held {held}) was refused");
                        assert!(message.contains(to.name()), "{message}");
                    }
                    Err(other) => panic!("{from:?} -> {to:?}: unexpected {other:?}"),
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn statuses_decode_only_from_their_own_byte_and_name(byte in any::<u8>(), name in "\\PC{0,40}") {
        match PairStatus::from_u8(byte) {
            Some(status) => prop_assert_eq!(status.as_u8(), byte),
            None => prop_assert!(!(1..=3).contains(&byte)),
        }
        match PairStatus::from_name(&name) {
            Some(status) => prop_assert_eq!(status.name(), name.as_str()),
            None => prop_assert!(STATUSES.iter().all(|s| s.name() != name)),
        }
        if let Err(err) = sharevault::vault::status::parse_status(&name) {
            // One fixed message, whatever was given.
            prop_assert_eq!(
                err.to_string(),
                "status: must be STORED_CUSTODIAN_BACKUP_SHARE, STORED_CLIENT_BACKUP_SHARE_KEY \
                 or STORED_CLIENT_BACKUP_SHARE"
            );
        }
    }
}
