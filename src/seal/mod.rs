//! Seals: where the vault's root key (the key that wraps every data key) is kept.
//!
//! - `file` (the default): the root key is the master key file (or systemd credential) that
//!   [`crate::secrets`] reads.
//! - `pkcs11`: the root key is random, made on the vault's first start, and stored in the
//!   database's meta table (record [`SEALED_ROOT_KEY`]) only wrapped, with AES-256-GCM, by a
//!   non-extractable AES-256 key that stays in a PKCS#11 token ([`pkcs11`]). At start the token
//!   unwraps it; the daemon keeps it only in zeroized memory.
//!
//! This module yields the root key as a [`MasterKey`]; the vault above does not know which
//! seal it came from. Layout of the sealed root key (all lengths big-endian):
//!
//! ```text
//! "SVSEAL01"                 magic and version
//! mechanism u8               1: CKM_AES_GCM, 2: CKM_CLOUDKMS_AES_GCM
//! label_len u8 | label       the label of the token's wrapping key
//! root key id [8]            the id of the root key (crate::crypto::KeyId), bound as AAD
//! iv_len u8 | iv             the GCM nonce (made by the daemon, or by the HSM if it insists)
//! ct_len u16 | ciphertext    the root key encrypted, with its 16-byte tag
//! ```

pub mod offline;
pub mod pkcs11;
pub mod start;

pub use pkcs11::{Hsm, Pkcs11Settings, WrapKey, WrapMechanism};
pub use start::{RootKeys, Seal, StartError, TokenSeal, root_keys};

use crate::crypto::{KEY_LEN, KeyId, MasterKey};
use std::fmt;
use zeroize::Zeroizing;

/// The meta record that holds the sealed root key of a pkcs11-sealed vault.
pub const SEALED_ROOT_KEY: &str = "sealed_root_key";
/// The meta record that holds the sealed target of an unfinished root key rotation.
pub const SEALED_ROOT_KEY_NEXT: &str = "sealed_root_key_next";
const MAGIC: &[u8; 8] = b"SVSEAL01";
const AAD_PREFIX: &[u8] = b"sharevault root key v1\0";

/// Which seal keeps the root key.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum SealKind {
    /// The master key file or systemd credential.
    #[default]
    File,
    /// A PKCS#11 token's non-extractable AES-256 key wraps the root key.
    Pkcs11,
}

impl fmt::Display for SealKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SealKind::File => "file",
            SealKind::Pkcs11 => "pkcs11",
        })
    }
}

/// Why the root key could not be sealed or unsealed. Never carries key bytes or the PIN.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "cannot load the PKCS#11 library {path}: {reason}; install the token's library or fix \
         --pkcs11-module"
    )]
    Library { path: String, reason: String },
    #[error(
        "no PKCS#11 token labelled {label:?} is present (tokens seen: {seen}); plug the token \
         in, or fix --pkcs11-token-label"
    )]
    TokenMissing { label: String, seen: String },
    #[error("cannot read the PKCS#11 PIN: {0}")]
    Pin(String),
    #[error(
        "the user PIN of token {label:?} is {state}: the daemon does not try it (a wrong try \
         could lock the token); have the token's security officer reset it"
    )]
    PinBlocked { label: String, state: &'static str },
    #[error(
        "token {label:?} refused the PIN (one try was made; the daemon never retries): fix \
         --pkcs11-pin-file or the pkcs11-pin credential"
    )]
    WrongPin { label: String },
    #[error(
        "token {token:?} holds no key labelled {label:?}; create a non-extractable AES-256 key \
         with that label (`sharevault seal create-key`) or fix --pkcs11-key-label"
    )]
    KeyMissing { token: String, label: String },
    #[error(
        "the key labelled {label:?} cannot seal the root key: {reason}; it must be one \
         non-extractable, sensitive AES-256 secret key allowed to encrypt and decrypt"
    )]
    KeyType { label: String, reason: String },
    #[error("token {token:?} already holds an object labelled {label:?}; choose another label")]
    LabelTaken { token: String, label: String },
    #[error(
        "the sealed root key is malformed ({0}); the database was altered: restore the data dir \
         from a snapshot"
    )]
    Malformed(&'static str),
    #[error(
        "the root key was sealed by the token key labelled {sealed_by:?}, not by the configured \
         {configured:?}; start with --pkcs11-key-label {sealed_by:?}"
    )]
    OtherKey {
        sealed_by: String,
        configured: String,
    },
    #[error(
        "the root key was sealed with mechanism {sealed_with}, not the configured \
         {configured}; start with --pkcs11-mechanism {sealed_with}"
    )]
    OtherMechanism {
        sealed_with: &'static str,
        configured: &'static str,
    },
    #[error(
        "the token could not unwrap the root key with the key labelled {label:?}: it is not the \
         key that sealed it (same label, another key), or the sealed root key was altered"
    )]
    Unwrap { label: String },
    #[error("the PKCS#11 token failed to {operation}: {code}")]
    Token {
        operation: &'static str,
        code: String,
    },
}

/// A root key sealed by a token key.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedRootKey {
    /// How the token encrypted it.
    pub mechanism: WrapMechanism,
    /// The label of the wrapping key in the token.
    pub key_label: String,
    /// The id of the root key it holds.
    pub root_key_id: [u8; 8],
    pub iv: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for SealedRootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedRootKey")
            .field("key_label", &self.key_label)
            .field("root_key_id", &hex::encode(self.root_key_id))
            .finish_non_exhaustive()
    }
}

impl SealedRootKey {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.push(self.mechanism.code());
        out.push(self.key_label.len() as u8);
        out.extend_from_slice(self.key_label.as_bytes());
        out.extend_from_slice(&self.root_key_id);
        out.push(self.iv.len() as u8);
        out.extend_from_slice(&self.iv);
        out.extend_from_slice(&(self.ciphertext.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.ciphertext);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, SealError> {
        let mut rest = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or(SealError::Malformed("unknown magic"))?;
        let mut take = |n: usize| -> Result<&[u8], SealError> {
            if rest.len() < n {
                return Err(SealError::Malformed("truncated"));
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let mechanism = WrapMechanism::from_code(take(1)?[0])
            .ok_or(SealError::Malformed("unknown mechanism"))?;
        let label_len = take(1)?[0] as usize;
        let key_label = std::str::from_utf8(take(label_len)?)
            .map_err(|_| SealError::Malformed("the key label is not UTF-8"))?
            .to_owned();
        let mut root_key_id = [0u8; 8];
        root_key_id.copy_from_slice(take(8)?);
        let iv_len = take(1)?[0] as usize;
        let iv = take(iv_len)?.to_vec();
        let ct_len = take(2)?;
        let ct_len = u16::from_be_bytes([ct_len[0], ct_len[1]]) as usize;
        let ciphertext = take(ct_len)?.to_vec();
        if !rest.is_empty() {
            return Err(SealError::Malformed("bytes after the ciphertext"));
        }
        if iv.is_empty() || ciphertext.len() != KEY_LEN + 16 {
            return Err(SealError::Malformed("wrong lengths"));
        }
        Ok(Self {
            mechanism,
            key_label,
            root_key_id,
            iv,
            ciphertext,
        })
    }
}

/// The associated data the token binds to a sealed root key: its id.
fn aad(root_key_id: &[u8; 8]) -> Vec<u8> {
    [AAD_PREFIX, root_key_id.as_slice()].concat()
}

/// A new random root key.
pub fn generate_root_key() -> Result<MasterKey, SealError> {
    let hex = MasterKey::generate_hex().map_err(|e| SealError::Token {
        operation: "generate a root key",
        code: e.to_string(),
    })?;
    MasterKey::from_file_contents(hex.as_bytes()).map_err(|e| SealError::Token {
        operation: "generate a root key",
        code: e.to_string(),
    })
}

/// Seals `root` with the token key `key`.
pub fn seal(hsm: &Hsm, key: &WrapKey, root: &MasterKey) -> Result<Vec<u8>, SealError> {
    let id = root.id().to_bytes();
    let raw = root.to_raw();
    let (iv, ciphertext) = hsm.encrypt(key, &aad(&id), &raw)?;
    Ok(SealedRootKey {
        mechanism: hsm.mechanism(),
        key_label: key.label().to_owned(),
        root_key_id: id,
        iv,
        ciphertext,
    }
    .encode())
}

/// Unseals a sealed root key with the token key `key`, and checks it is the key it claims.
pub fn unseal(hsm: &Hsm, key: &WrapKey, sealed: &[u8]) -> Result<MasterKey, SealError> {
    let sealed = SealedRootKey::decode(sealed)?;
    if sealed.key_label != key.label() {
        return Err(SealError::OtherKey {
            sealed_by: sealed.key_label,
            configured: key.label().to_owned(),
        });
    }
    if sealed.mechanism != hsm.mechanism() {
        return Err(SealError::OtherMechanism {
            sealed_with: sealed.mechanism.name(),
            configured: hsm.mechanism().name(),
        });
    }
    let unwrap = || SealError::Unwrap {
        label: key.label().to_owned(),
    };
    let raw: Zeroizing<Vec<u8>> = hsm
        .decrypt(
            key,
            &aad(&sealed.root_key_id),
            &sealed.iv,
            &sealed.ciphertext,
        )
        .map_err(|err| match err {
            SealError::Token { .. } => unwrap(),
            other => other,
        })?;
    if raw.len() != KEY_LEN {
        return Err(unwrap());
    }
    let root = MasterKey::from_file_contents(&raw).map_err(|_| unwrap())?;
    if root.id().to_bytes() != sealed.root_key_id {
        return Err(unwrap());
    }
    Ok(root)
}

/// The label of the token key that sealed `sealed`, for messages.
pub fn sealed_by(sealed: &[u8]) -> String {
    SealedRootKey::decode(sealed)
        .map(|s| s.key_label)
        .unwrap_or_else(|_| "?".into())
}

/// The id of the root key a sealed root key holds.
pub fn sealed_key_id(sealed: &[u8]) -> Option<KeyId> {
    SealedRootKey::decode(sealed)
        .ok()
        .map(|s| KeyId::from_bytes(s.root_key_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_root_key_round_trips_and_refuses_damage() {
        let sealed = SealedRootKey {
            mechanism: WrapMechanism::CloudkmsAesGcm,
            key_label: "vault-wrap".into(),
            root_key_id: [7; 8],
            iv: vec![1; 12],
            ciphertext: vec![2; 48],
        };
        let bytes = sealed.encode();
        assert_eq!(SealedRootKey::decode(&bytes).unwrap(), sealed);
        for cut in 0..bytes.len() {
            assert!(
                SealedRootKey::decode(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(SealedRootKey::decode(&longer).is_err());
        assert!(!format!("{sealed:?}").contains("2, 2"));
    }
}
