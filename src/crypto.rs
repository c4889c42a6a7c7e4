//! Envelope encryption of shares and cipherTexts.
//!
//! Every record is sealed with AES-256-GCM under a fresh 256-bit data key; the data key is
//! wrapped with AES-256-GCM under the master key. Both layers bind the record's location
//! (table, client id, backup method) as associated data, so a record copied under another
//! key fails to open instead of serving another user's share.
//!
//! Payloads are compressed with zstd before they are sealed when that makes them smaller
//! (Portal's shares are JSON of hex and decimal numbers, about half of which is redundancy):
//! the database then holds two to three records per 4 KiB page instead of one, and every read
//! and write touches fewer pages. The envelope version says which: `1` holds the payload as
//! given, `2` its zstd frame. The version is bound into both layers' associated data, so
//! changing it fails authentication. Decompression is capped at [`MAX_PAYLOAD`].
//!
//! Envelope layout, all offsets in bytes:
//!
//! | offset | size   | field                                          |
//! |--------|--------|------------------------------------------------|
//! | 0      | 1      | envelope version: `1` plain, `2` zstd          |
//! | 1      | 8      | id of the master key that wrapped the data key |
//! | 9      | 12     | nonce of the data-key wrap                     |
//! | 21     | 48     | wrapped data key (32) and its GCM tag (16)     |
//! | 69     | 12     | nonce of the payload                           |
//! | 81     | n + 16 | sealed payload and its GCM tag                 |

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use sha2::{Digest, Sha256};
use std::fmt;
use zeroize::Zeroizing;

/// Length of the master key and of every data key.
pub const KEY_LEN: usize = 32;
/// An envelope whose sealed payload is the plaintext itself.
const VERSION_PLAIN: u8 = 1;
/// An envelope whose sealed payload is a zstd frame of the plaintext.
const VERSION_ZSTD: u8 = 2;
/// zstd level: the fastest, which already removes most of a share's redundancy.
const ZSTD_LEVEL: i32 = 1;
/// The largest plaintext an envelope may hold (the largest share or cipherText the daemon
/// can be configured to accept); a frame that would inflate past it is refused.
pub const MAX_PAYLOAD: usize = crate::validate::MAX_SECRET_LIMIT;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const KEY_ID_LEN: usize = 8;
const WRAP_NONCE_AT: usize = 1 + KEY_ID_LEN;
const WRAPPED_AT: usize = WRAP_NONCE_AT + NONCE_LEN;
const DATA_NONCE_AT: usize = WRAPPED_AT + KEY_LEN + TAG_LEN;
const PAYLOAD_AT: usize = DATA_NONCE_AT + NONCE_LEN;

/// Size an envelope adds to its payload.
pub const ENVELOPE_OVERHEAD: usize = PAYLOAD_AT + TAG_LEN;

/// Why an envelope could not be made or opened. Never carries key or payload bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("the master key must be 32 bytes, given raw or as 64 hex characters")]
    BadMasterKey,
    #[error("the envelope is truncated or has an unknown version")]
    Malformed,
    #[error("the envelope was wrapped by master key {found}, not by the configured key {expected}")]
    WrongKey { expected: KeyId, found: KeyId },
    #[error("the envelope failed authentication: it was altered or moved")]
    Tampered,
    #[error("the system random number generator failed")]
    Random,
}

/// Identifies a master key without revealing it: the first 8 bytes of a domain-separated
/// SHA-256 of the key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId([u8; KEY_ID_LEN]);

impl KeyId {
    fn of(key: &[u8; KEY_LEN]) -> Self {
        let digest = Sha256::new()
            .chain_update(b"sharevault master key id v1\0")
            .chain_update(key)
            .finalize();
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        Self(id)
    }
}

impl KeyId {
    pub fn to_bytes(self) -> [u8; KEY_ID_LEN] {
        self.0
    }

    /// The id as stored beside a sealed key.
    pub fn from_bytes(bytes: [u8; KEY_ID_LEN]) -> Self {
        Self(bytes)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// Where a record lives; bound into both GCM layers as associated data.
#[derive(Clone, Copy, Debug)]
pub struct RecordAad<'a> {
    pub table: &'a str,
    pub client_id: &'a str,
    pub backup_method: &'a str,
}

impl RecordAad<'_> {
    fn encode(&self, layer: &[u8], version: u8, key_id: Option<&KeyId>) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            32 + self.table.len() + self.client_id.len() + self.backup_method.len(),
        );
        out.extend_from_slice(b"sharevault/v1/");
        out.extend_from_slice(layer);
        out.push(version);
        if let Some(id) = key_id {
            out.extend_from_slice(&id.0);
        }
        for part in [self.table, self.client_id, self.backup_method] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part.as_bytes());
        }
        out
    }
}

/// The key that wraps every data key. Zeroized on drop; `Debug` shows only its id.
pub struct MasterKey {
    key: Zeroizing<[u8; KEY_LEN]>,
    /// The key's expanded AES-GCM state, made once (aes-gcm zeroizes it on drop).
    wrap: Aes256Gcm,
    id: KeyId,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn random<const N: usize>() -> Result<Zeroizing<[u8; N]>, CryptoError> {
    let mut bytes = Zeroizing::new([0u8; N]);
    getrandom::fill(bytes.as_mut()).map_err(|_| CryptoError::Random)?;
    Ok(bytes)
}

fn nonce(bytes: &[u8]) -> Result<&[u8; NONCE_LEN], CryptoError> {
    bytes.try_into().map_err(|_| CryptoError::Malformed)
}

fn cipher(key: &[u8; KEY_LEN]) -> Aes256Gcm {
    Aes256Gcm::new(key.into())
}

thread_local! {
    /// One zstd context per thread (made on first use), reused: creating one costs more than
    /// compressing a share. `None` if zstd could not allocate one.
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        std::cell::RefCell::new(zstd::bulk::Compressor::new(ZSTD_LEVEL).ok());
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new().ok());
}

/// The plaintext's zstd frame, if it is smaller than the plaintext.
fn compress(plaintext: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    COMPRESSOR.with_borrow_mut(|compressor| {
        let frame = Zeroizing::new(compressor.as_mut()?.compress(plaintext).ok()?);
        (frame.len() < plaintext.len()).then_some(frame)
    })
}

fn decompress(frame: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    DECOMPRESSOR.with_borrow_mut(|decompressor| {
        let decompressor = decompressor.as_mut().ok_or(CryptoError::Malformed)?;
        // Every frame this module writes declares its size: allocate exactly that.
        let size = match zstd::zstd_safe::get_frame_content_size(frame) {
            Ok(Some(size)) if size <= MAX_PAYLOAD as u64 => size as usize,
            _ => return Err(CryptoError::Malformed),
        };
        decompressor
            .decompress(frame, size)
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Malformed)
    })
}

fn version_of(envelope: &[u8]) -> Result<u8, CryptoError> {
    match envelope.first() {
        Some(&v @ (VERSION_PLAIN | VERSION_ZSTD)) if envelope.len() >= ENVELOPE_OVERHEAD => Ok(v),
        _ => Err(CryptoError::Malformed),
    }
}

impl MasterKey {
    /// Reads a key file's contents: 64 hex characters (surrounding whitespace ignored) or
    /// exactly 32 raw bytes.
    pub fn from_file_contents(contents: &[u8]) -> Result<Self, CryptoError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        let trimmed = contents.trim_ascii();
        if trimmed.len() == 2 * KEY_LEN {
            hex::decode_to_slice(trimmed, key.as_mut()).map_err(|_| CryptoError::BadMasterKey)?;
        } else if contents.len() == KEY_LEN {
            key.copy_from_slice(contents);
        } else {
            return Err(CryptoError::BadMasterKey);
        }
        let id = KeyId::of(&key);
        let wrap = cipher(&key);
        Ok(Self { key, wrap, id })
    }

    /// A new random key, hex encoded as it is written to a key file.
    pub fn generate_hex() -> Result<Zeroizing<String>, CryptoError> {
        let key = random::<KEY_LEN>()?;
        Ok(Zeroizing::new(hex::encode(key.as_ref())))
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The raw key, to hand to a running daemon for a rotation.
    pub fn to_raw(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.key.to_vec())
    }

    /// Seals `plaintext` for the record at `aad` under a fresh data key.
    pub fn seal(&self, aad: &RecordAad<'_>, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let frame = compress(plaintext);
        let (version, payload) = match &frame {
            Some(frame) => (VERSION_ZSTD, frame.as_slice()),
            None => (VERSION_PLAIN, plaintext),
        };
        // The data key and both nonces, from one call to the system's generator.
        let fresh = random::<{ KEY_LEN + 2 * NONCE_LEN }>()?;
        let (data_key, nonces) = fresh.split_at(KEY_LEN);
        let (wrap_nonce, data_nonce) = nonces.split_at(NONCE_LEN);
        let data_key: &[u8; KEY_LEN] = data_key.try_into().map_err(|_| CryptoError::Random)?;
        let (wrap_nonce, data_nonce) = (nonce(wrap_nonce)?, nonce(data_nonce)?);
        let wrapped = self
            .wrap
            .encrypt(
                wrap_nonce.into(),
                Payload {
                    msg: data_key.as_ref(),
                    aad: &aad.encode(b"dek", version, Some(&self.id)),
                },
            )
            .map_err(|_| CryptoError::Tampered)?;
        let sealed = cipher(data_key)
            .encrypt(
                data_nonce.into(),
                Payload {
                    msg: payload,
                    aad: &aad.encode(b"data", version, None),
                },
            )
            .map_err(|_| CryptoError::Tampered)?;
        let mut out = Vec::with_capacity(PAYLOAD_AT + sealed.len());
        out.push(version);
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(wrap_nonce.as_ref());
        out.extend_from_slice(&wrapped);
        out.extend_from_slice(data_nonce.as_ref());
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens an envelope sealed by [`MasterKey::seal`] for the same `aad`.
    pub fn open(
        &self,
        aad: &RecordAad<'_>,
        envelope: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let data_key = self.unwrap_data_key(aad, envelope)?;
        let version = version_of(envelope)?;
        let payload = Zeroizing::new(
            cipher(&data_key)
                .decrypt(
                    nonce(&envelope[DATA_NONCE_AT..PAYLOAD_AT])?.into(),
                    Payload {
                        msg: &envelope[PAYLOAD_AT..],
                        aad: &aad.encode(b"data", version, None),
                    },
                )
                .map_err(|_| CryptoError::Tampered)?,
        );
        match version {
            VERSION_ZSTD => decompress(&payload),
            _ => Ok(payload),
        }
    }

    /// Re-wraps an envelope's data key under `new`, leaving the sealed payload as it is.
    pub fn rewrap(
        &self,
        aad: &RecordAad<'_>,
        envelope: &[u8],
        new: &MasterKey,
    ) -> Result<Vec<u8>, CryptoError> {
        let data_key = self.unwrap_data_key(aad, envelope)?;
        let version = version_of(envelope)?;
        let wrap_nonce = random::<NONCE_LEN>()?;
        let wrapped = new
            .wrap
            .encrypt(
                (&*wrap_nonce).into(),
                Payload {
                    msg: data_key.as_ref(),
                    aad: &aad.encode(b"dek", version, Some(&new.id)),
                },
            )
            .map_err(|_| CryptoError::Tampered)?;
        let mut out = Vec::with_capacity(envelope.len());
        out.push(version);
        out.extend_from_slice(&new.id.0);
        out.extend_from_slice(wrap_nonce.as_ref());
        out.extend_from_slice(&wrapped);
        out.extend_from_slice(&envelope[DATA_NONCE_AT..]);
        Ok(out)
    }

    /// The id of the master key that wrapped an envelope's data key.
    pub fn envelope_key_id(envelope: &[u8]) -> Result<KeyId, CryptoError> {
        version_of(envelope)?;
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&envelope[1..WRAP_NONCE_AT]);
        Ok(KeyId(id))
    }

    fn unwrap_data_key(
        &self,
        aad: &RecordAad<'_>,
        envelope: &[u8],
    ) -> Result<Zeroizing<[u8; KEY_LEN]>, CryptoError> {
        let found = Self::envelope_key_id(envelope)?;
        if found != self.id {
            return Err(CryptoError::WrongKey {
                expected: self.id,
                found,
            });
        }
        let version = version_of(envelope)?;
        let unwrapped = Zeroizing::new(
            self.wrap
                .decrypt(
                    nonce(&envelope[WRAP_NONCE_AT..WRAPPED_AT])?.into(),
                    Payload {
                        msg: &envelope[WRAPPED_AT..DATA_NONCE_AT],
                        aad: &aad.encode(b"dek", version, Some(&self.id)),
                    },
                )
                .map_err(|_| CryptoError::Tampered)?,
        );
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(&unwrapped);
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> MasterKey {
        MasterKey::from_file_contents(&[byte; KEY_LEN]).unwrap()
    }

    const AAD: RecordAad<'static> = RecordAad {
        table: "custodian_shares",
        client_id: "client-1",
        backup_method: "PASSWORD-SECP256K1",
    };

    #[test]
    fn seal_then_open_round_trips_and_hides_the_plaintext() {
        let k = key(7);
        let envelope = k.seal(&AAD, b"{\"share\":\"secret-material\"}").unwrap();
        assert_eq!(envelope.len(), ENVELOPE_OVERHEAD + 27);
        assert!(!envelope.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            &*k.open(&AAD, &envelope).unwrap(),
            b"{\"share\":\"secret-material\"}"
        );
    }

    /// A share-shaped plaintext: JSON around hex digits, as Portal sends.
    fn hex_share() -> Vec<u8> {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let digits: String = (0..1900)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b"0123456789abcdef"[(x & 15) as usize])
            })
            .collect();
        format!("{{\"share\":\"{digits}\",\"curve\":\"SECP256K1\"}}").into_bytes()
    }

    #[test]
    fn compressible_plaintexts_are_sealed_compressed_and_open_unchanged() {
        let k = key(7);
        let share = hex_share();
        let envelope = k.seal(&AAD, &share).unwrap();
        assert_eq!(envelope[0], VERSION_ZSTD);
        assert!(
            envelope.len() < share.len() * 6 / 10 + ENVELOPE_OVERHEAD,
            "{} bytes sealed into {}",
            share.len(),
            envelope.len()
        );
        assert_eq!(&*k.open(&AAD, &envelope).unwrap(), share.as_slice());
        let rewrapped = k.rewrap(&AAD, &envelope, &key(9)).unwrap();
        assert_eq!(&*key(9).open(&AAD, &rewrapped).unwrap(), share.as_slice());
        // Random bytes do not compress: they are sealed as given.
        let random = random::<600>().unwrap().to_vec();
        let plain = k.seal(&AAD, &random).unwrap();
        assert_eq!(plain[0], VERSION_PLAIN);
        assert_eq!(&*k.open(&AAD, &plain).unwrap(), random.as_slice());
    }

    #[test]
    fn changing_the_envelope_version_fails_authentication() {
        let k = key(7);
        for plaintext in [hex_share(), b"short".to_vec()] {
            let mut envelope = k.seal(&AAD, &plaintext).unwrap();
            envelope[0] = if envelope[0] == VERSION_ZSTD {
                VERSION_PLAIN
            } else {
                VERSION_ZSTD
            };
            assert_eq!(k.open(&AAD, &envelope), Err(CryptoError::Tampered));
            envelope[0] = 3;
            assert_eq!(k.open(&AAD, &envelope), Err(CryptoError::Malformed));
        }
    }

    #[test]
    fn the_same_plaintext_seals_differently_each_time() {
        let k = key(7);
        assert_ne!(k.seal(&AAD, b"x").unwrap(), k.seal(&AAD, b"x").unwrap());
    }

    #[test]
    fn a_record_moved_to_another_client_method_or_table_fails_to_open() {
        let k = key(7);
        let envelope = k.seal(&AAD, b"share").unwrap();
        for moved in [
            RecordAad {
                client_id: "client-2",
                ..AAD
            },
            RecordAad {
                backup_method: "PASSWORD-ED25519",
                ..AAD
            },
            RecordAad {
                table: "client_shares",
                ..AAD
            },
        ] {
            assert_eq!(k.open(&moved, &envelope), Err(CryptoError::Tampered));
        }
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let k = key(7);
        let envelope = k.seal(&AAD, b"share bytes").unwrap();
        for i in 0..envelope.len() {
            let mut bad = envelope.clone();
            bad[i] ^= 0x01;
            assert!(
                k.open(&AAD, &bad).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
        assert_eq!(k.open(&AAD, &envelope[..40]), Err(CryptoError::Malformed));
    }

    #[test]
    fn another_master_key_is_named_by_id_and_refused() {
        let envelope = key(7).seal(&AAD, b"share").unwrap();
        let err = key(8).open(&AAD, &envelope).unwrap_err();
        assert_eq!(
            err,
            CryptoError::WrongKey {
                expected: key(8).id(),
                found: key(7).id()
            }
        );
    }

    #[test]
    fn a_rewrapped_envelope_opens_with_the_new_key_only() {
        let (old, new) = (key(7), key(9));
        let envelope = old.seal(&AAD, b"share").unwrap();
        let rewrapped = old.rewrap(&AAD, &envelope, &new).unwrap();
        assert_eq!(&*new.open(&AAD, &rewrapped).unwrap(), b"share");
        assert!(matches!(
            old.open(&AAD, &rewrapped),
            Err(CryptoError::WrongKey { .. })
        ));
        assert_eq!(MasterKey::envelope_key_id(&rewrapped).unwrap(), new.id());
        let moved = RecordAad {
            client_id: "other",
            ..AAD
        };
        assert!(old.rewrap(&moved, &envelope, &new).is_err());
    }

    #[test]
    fn key_files_are_hex_or_raw_and_debug_shows_only_the_id() {
        let hex_key = MasterKey::generate_hex().unwrap();
        let from_hex = MasterKey::from_file_contents(format!("{}\n", *hex_key).as_bytes()).unwrap();
        let raw = hex::decode(hex_key.as_bytes()).unwrap();
        let from_raw = MasterKey::from_file_contents(&raw).unwrap();
        assert_eq!(from_hex.id(), from_raw.id());
        assert!(!format!("{from_hex:?}").contains(hex_key.as_str()));
        assert_eq!(
            MasterKey::from_file_contents(b"short").unwrap_err(),
            CryptoError::BadMasterKey
        );
    }
}
