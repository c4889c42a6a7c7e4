//! The generated protobuf types and services of `sharevault.v1`.
//!
//! Messages that carry share material, tokens or keys have a hand-written `Debug` that shows
//! everything but those fields, and wipe those fields when dropped: a request decoded from
//! the wire, a response once encoded, the CLI's copy of a new master key.

#![allow(clippy::all, missing_docs)]

use std::fmt;

tonic::include_proto!("sharevault.v1");

/// The encoded descriptors of `sharevault.v1` (and its imports), for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/sharevault_descriptor.bin"));

const REDACTED: &str = "<redacted>";

impl fmt::Debug for BackupRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackupRequest")
            .field("client_id", &self.client_id)
            .field("backup_method", &self.backup_method)
            .field("share", &REDACTED)
            .field("backup_share_pair_id", &self.backup_share_pair_id)
            .finish()
    }
}

impl fmt::Debug for FetchResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchResponse")
            .field(
                "backup_shares",
                &format_args!("[{} redacted]", self.backup_shares.len()),
            )
            .finish()
    }
}

impl fmt::Debug for StoreClientBackupShareRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreClientBackupShareRequest")
            .field("client_id", &self.client_id)
            .field("backup_method", &self.backup_method)
            .field("cipher_text", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for GetClientBackupShareResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetClientBackupShareResponse")
            .field("cipher_text", &REDACTED)
            .field("created_at", &self.created_at)
            .field("backup_method", &self.backup_method)
            .finish()
    }
}

impl fmt::Debug for GetCustodianBackupShareResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetCustodianBackupShareResponse")
            .field("share", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for CreateTokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateTokenResponse")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("token", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for RekeyRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RekeyRequest")
            .field("new_master_key", &REDACTED)
            .finish()
    }
}

/// Wipes the named secret fields of a message when it is dropped.
macro_rules! zeroize_on_drop {
    ($($message:ident: $($field:ident),+;)+) => {
        $(
            impl Drop for $message {
                fn drop(&mut self) {
                    use zeroize::Zeroize;
                    $(self.$field.zeroize();)+
                }
            }

            impl zeroize::ZeroizeOnDrop for $message {}
        )+
    };
}

zeroize_on_drop! {
    BackupRequest: share;
    FetchResponse: backup_shares;
    StoreClientBackupShareRequest: cipher_text;
    GetClientBackupShareResponse: cipher_text;
    GetCustodianBackupShareResponse: share;
    CreateTokenResponse: token;
    RekeyRequest: new_master_key;
}

/// Milliseconds since the Unix epoch as a protobuf timestamp.
pub fn timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_share_material() {
        let req = BackupRequest {
            client_id: "c1".into(),
            backup_method: "PASSWORD-SECP256K1".into(),
            share: "PLANTED-SHARE".into(),
            backup_share_pair_id: None,
        };
        let fetched = FetchResponse {
            backup_shares: vec!["PLANTED-SHARE".into()],
        };
        let token = CreateTokenResponse {
            name: "n".into(),
            role: 1,
            token: "svt_PLANTED".into(),
        };
        for shown in [
            format!("{req:?}"),
            format!("{fetched:?}"),
            format!("{token:?}"),
        ] {
            assert!(!shown.contains("PLANTED"), "{shown}");
        }
        assert!(format!("{req:?}").contains("c1"));
    }

    /// Every message that carries a share, a cipherText, a token or a key wipes it on drop:
    /// requests decoded from the wire, responses once encoded, the CLI's new master key.
    #[test]
    fn messages_with_secrets_zeroize_on_drop() {
        fn zeroized_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        zeroized_on_drop::<BackupRequest>();
        zeroized_on_drop::<FetchResponse>();
        zeroized_on_drop::<StoreClientBackupShareRequest>();
        zeroized_on_drop::<GetClientBackupShareResponse>();
        zeroized_on_drop::<GetCustodianBackupShareResponse>();
        zeroized_on_drop::<CreateTokenResponse>();
        zeroized_on_drop::<RekeyRequest>();
    }
}
