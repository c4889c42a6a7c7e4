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

/// The length of a derived key: one SHA-256 block, HMAC-SHA256's own key size.
const DERIVED_LEN: usize = 64;

/// The audit MAC's key: the derived key bytes, zeroized on drop (as every clone is: one goes
/// with each write job), from which each use builds its HMAC state ([`AuditKey::mac`]); the
/// HMAC state itself does not zeroize, so none is kept. `Debug` shows nothing of it.
#[derive(Clone)]
pub struct AuditKey(Zeroizing<[u8; DERIVED_LEN]>);

/// The only field is a `Zeroizing`, which zeroizes the key on drop.
impl zeroize::ZeroizeOnDrop for AuditKey {}

impl AuditKey {
    /// A fresh HMAC keyed with the audit key.
    pub(crate) fn mac(&self) -> HmacSha256 {
        keyed(&self.0)
    }

    /// A key of `bytes` (at most 64), as HMAC pads a shorter key: for tests.
    #[cfg(test)]
    pub(crate) fn from_bytes(bytes: &[u8]) -> Self {
        let mut key = Zeroizing::new([0u8; DERIVED_LEN]);
        key[..bytes.len()].copy_from_slice(bytes);
        Self(key)
    }
}

/// An HMAC keyed with `key`, read in place (exactly the key size), so no copy of it is left
/// behind.
fn keyed(key: &[u8; DERIVED_LEN]) -> HmacSha256 {
    let key = hmac::digest::Key::<HmacSha256>::from_slice(key);
    <HmacSha256 as hmac::digest::KeyInit>::new(key)
}

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

    fn derive(&self, info: &[u8]) -> Zeroizing<[u8; DERIVED_LEN]> {
        // One SHA-256 block of key: HMAC's own key size, a valid HKDF-SHA256 output length.
        let mut okm = Zeroizing::new([0u8; DERIVED_LEN]);
        let _ = hkdf::Hkdf::<Sha256>::new(None, self.0.as_ref()).expand(info, okm.as_mut());
        okm
    }

    /// A fresh MAC for a snapshot file.
    pub fn snapshot_mac(&self) -> HmacSha256 {
        keyed(&self.derive(SNAPSHOT_INFO))
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
        assert_ne!(tag(key.snapshot_mac()), tag(key.audit_key().mac()));
        let other = MasterKey::from_file_contents(&[4u8; 32]).unwrap();
        assert!(IntegrityKey::open(&other, &sealed).is_err());
        assert_eq!(format!("{key:?}"), "IntegrityKey(***)");
    }

    /// Every copy of the audit key (one goes with each write) is wiped when dropped.
    #[test]
    fn the_audit_key_zeroizes_on_drop_and_never_shows() {
        fn zeroized_on_drop<T: zeroize::ZeroizeOnDrop>(_: &T) {}
        let master = MasterKey::from_file_contents(&[3u8; 32]).unwrap();
        let (key, _) = IntegrityKey::generate(&master).unwrap();
        let audit = key.audit_key();
        zeroized_on_drop(&audit);
        zeroized_on_drop(&audit.clone());
        assert_eq!(format!("{audit:?}"), "AuditKey(***)");
        // Building the HMAC when used gives the MAC the kept state gave.
        let tag = |mac: HmacSha256| mac.chain_update(b"x").finalize().into_bytes();
        assert_eq!(tag(audit.mac()), tag(key.audit_key().mac()));
        assert_eq!(tag(audit.mac()), tag(keyed(&key.derive(AUDIT_INFO))));
    }
}
