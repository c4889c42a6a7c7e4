//! The vault's integrity key: the secret behind the snapshot MAC and the audit MAC.
//!
//! A random 32-byte key, created with the vault and stored in the meta table sealed under the
//! master key like every record (record `integrity_key`, associated data `meta`/``/
//! `integrity_key`); a rotation re-wraps it with the rest, so the key itself (and with it every
//! MAC made before) survives rotations. Separate keys are derived from it with HKDF-SHA256,
//! one per use (`info` strings below), and used with HMAC-SHA256.

use crate::crypto::{CryptoError, KEY_LEN, MasterKey, RecordAad};
use hmac::Hmac;
use sha2::Sha256;
use std::fmt;
use zeroize::Zeroizing;

/// The meta record that holds the sealed integrity key.
pub const INTEGRITY_KEY: &str = "integrity_key";
/// Where the sealed integrity key lives; bound into its envelope.
pub const INTEGRITY_KEY_AAD: RecordAad<'static> = RecordAad {
    table: "meta",
    client_id: "",
    backup_method: INTEGRITY_KEY,
};
const SNAPSHOT_INFO: &[u8] = b"sharevault snapshot mac v1";
const AUDIT_INFO: &[u8] = b"sharevault audit mac v1";

/// An HMAC-SHA256 in progress.
pub type HmacSha256 = Hmac<Sha256>;

/// The audit MAC's key (an HMAC state keyed with the derived audit key). `Debug` shows
/// nothing of it.
#[derive(Clone)]
pub struct AuditKey(pub(crate) HmacSha256);

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditKey(***)")
    }
}

/// The integrity key, opened. Zeroized on drop; `Debug` shows nothing of it.
#[derive(Clone)]
pub struct IntegrityKey(Zeroizing<[u8; KEY_LEN]>);

impl fmt::Debug for IntegrityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IntegrityKey(***)")
    }
}

impl IntegrityKey {
    /// A new random key and its envelope under `master`.
    pub fn generate(master: &MasterKey) -> Result<(Self, Vec<u8>), CryptoError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(key.as_mut()).map_err(|_| CryptoError::Random)?;
        let sealed = master.seal(&INTEGRITY_KEY_AAD, key.as_ref())?;
        Ok((Self(key), sealed))
    }

    /// Opens the sealed integrity key with `master`.
    pub fn open(master: &MasterKey, sealed: &[u8]) -> Result<Self, CryptoError> {
        let plain = master.open(&INTEGRITY_KEY_AAD, sealed)?;
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        if plain.len() != KEY_LEN {
            return Err(CryptoError::Tampered);
        }
        key.copy_from_slice(&plain);
        Ok(Self(key))
    }

    /// The key sealed under `master`, as the meta record holds it.
    pub fn seal(&self, master: &MasterKey) -> Result<Vec<u8>, CryptoError> {
        master.seal(&INTEGRITY_KEY_AAD, self.0.as_ref())
    }

    fn derive(&self, info: &[u8]) -> HmacSha256 {
        // One SHA-256 block of key: HMAC's own key size, a valid HKDF-SHA256 output length.
        let mut okm = Zeroizing::new([0u8; 64]);
        let _ = hkdf::Hkdf::<Sha256>::new(None, self.0.as_ref()).expand(info, okm.as_mut());
        // A view of `okm` (exactly the key size), so no copy of the key is left behind.
        let key = hmac::digest::Key::<HmacSha256>::from_slice(okm.as_slice());
        <HmacSha256 as hmac::digest::KeyInit>::new(key)
    }

    /// A fresh MAC for a snapshot file.
    pub fn snapshot_mac(&self) -> HmacSha256 {
        self.derive(SNAPSHOT_INFO)
    }

    /// The key audit events are chained with.
    pub fn audit_key(&self) -> AuditKey {
        AuditKey(self.derive(AUDIT_INFO))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::Mac;

    #[test]
    fn the_key_round_trips_and_its_uses_are_separated() {
        let master = MasterKey::from_file_contents(&[3u8; 32]).unwrap();
        let (key, sealed) = IntegrityKey::generate(&master).unwrap();
        let opened = IntegrityKey::open(&master, &sealed).unwrap();
        let tag = |mac: HmacSha256| mac.chain_update(b"x").finalize().into_bytes();
        assert_eq!(tag(key.snapshot_mac()), tag(opened.snapshot_mac()));
        assert_ne!(tag(key.snapshot_mac()), tag(key.audit_key().0));
        let other = MasterKey::from_file_contents(&[4u8; 32]).unwrap();
        assert!(IntegrityKey::open(&other, &sealed).is_err());
        assert_eq!(format!("{key:?}"), "IntegrityKey(***)");
    }
}
