//! Portal's backup share pair status model.
//!
//! ```text
//!   custodian share stored (webhook Backup)          client share stored for the method
//!        │                                                   │
//!        ▼                                                   ▼
//!  STORED_CUSTODIAN_BACKUP_SHARE ──► STORED_CLIENT_BACKUP_SHARE_KEY ──► STORED_CLIENT_BACKUP_SHARE
//!        ▲          (update)                     (update, or client share stored)   │
//!        │                                                                          │
//!        └──── a new custodian share for the same key restarts its pair ◄───────────┘
//! ```
//!
//! Updates only move a pair forward (or leave it where it is); moving it back is illegal.
//! A pair reaches `STORED_CLIENT_BACKUP_SHARE` only while a client share is held for its
//! method; deleting that client share moves its completed pairs back to
//! `STORED_CLIENT_BACKUP_SHARE_KEY`. Publicly, the last state is `completed` and the others
//! are `incomplete`.

use crate::error::{Field, VaultError};

/// Where a backup share pair stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum PairStatus {
    StoredCustodianBackupShare = 1,
    StoredClientBackupShareKey = 2,
    StoredClientBackupShare = 3,
}

impl PairStatus {
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::StoredCustodianBackupShare),
            2 => Some(Self::StoredClientBackupShareKey),
            3 => Some(Self::StoredClientBackupShare),
            _ => None,
        }
    }

    /// Portal's name of the status.
    pub fn name(self) -> &'static str {
        match self {
            Self::StoredCustodianBackupShare => "STORED_CUSTODIAN_BACKUP_SHARE",
            Self::StoredClientBackupShareKey => "STORED_CLIENT_BACKUP_SHARE_KEY",
            Self::StoredClientBackupShare => "STORED_CLIENT_BACKUP_SHARE",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::StoredCustodianBackupShare,
            Self::StoredClientBackupShareKey,
            Self::StoredClientBackupShare,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }

    /// The status shown publicly: `completed` or `incomplete`.
    pub fn public(self) -> &'static str {
        if self == Self::StoredClientBackupShare {
            "completed"
        } else {
            "incomplete"
        }
    }

    /// Checks an update requested through the API. `client_share_held` says whether a client
    /// share is stored for the pair's method.
    pub fn check_update(self, next: PairStatus, client_share_held: bool) -> Result<(), VaultError> {
        if next < self {
            return Err(VaultError::FailedPrecondition(format!(
                "a backup share pair cannot move back from {} to {}",
                self.name(),
                next.name()
            )));
        }
        if next == Self::StoredClientBackupShare && !client_share_held {
            return Err(VaultError::FailedPrecondition(format!(
                "a backup share pair can reach {} only once the client backup share for its \
                 method is stored",
                next.name()
            )));
        }
        Ok(())
    }
}

/// Parses a status named in a request.
pub fn parse_status(name: &str) -> Result<PairStatus, VaultError> {
    PairStatus::from_name(name).ok_or_else(|| {
        VaultError::invalid(
            Field::Status,
            "must be STORED_CUSTODIAN_BACKUP_SHARE, STORED_CLIENT_BACKUP_SHARE_KEY or \
             STORED_CLIENT_BACKUP_SHARE",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::PairStatus::*;
    use super::*;

    #[test]
    fn updates_move_forward_only() {
        assert!(
            StoredCustodianBackupShare
                .check_update(StoredClientBackupShareKey, false)
                .is_ok()
        );
        assert!(
            StoredClientBackupShareKey
                .check_update(StoredClientBackupShareKey, false)
                .is_ok()
        );
        assert!(
            StoredClientBackupShareKey
                .check_update(StoredClientBackupShare, true)
                .is_ok()
        );
        let back = StoredClientBackupShare.check_update(StoredCustodianBackupShare, true);
        assert!(matches!(back, Err(VaultError::FailedPrecondition(_))));
    }

    #[test]
    fn completion_needs_the_client_share() {
        let err = StoredClientBackupShareKey
            .check_update(StoredClientBackupShare, false)
            .unwrap_err();
        assert!(matches!(err, VaultError::FailedPrecondition(_)));
    }

    #[test]
    fn names_round_trip_and_map_to_public_statuses() {
        for s in [
            StoredCustodianBackupShare,
            StoredClientBackupShareKey,
            StoredClientBackupShare,
        ] {
            assert_eq!(PairStatus::from_name(s.name()), Some(s));
            assert_eq!(PairStatus::from_u8(s.as_u8()), Some(s));
        }
        assert_eq!(StoredClientBackupShare.public(), "completed");
        assert_eq!(StoredClientBackupShareKey.public(), "incomplete");
        assert!(parse_status("completed").is_err());
    }
}
