//! The snapshot file format, written online from one read transaction and restored offline.
//!
//! ```text
//! "SVSNAP\0\x03"                      magic and format version 3
//! created_at_ms u64 | master key id [8]
//! sealed_len u16 | sealed integrity key   the vault's integrity key, sealed under the master key
//! record count u64 per table (8 tables)
//! records: table u8 | key_len u32 | key | value_len u32 | value
//! 0xFF                                end of records
//! HMAC-SHA256 of every byte above [32] with the snapshot key (HKDF of the integrity key)
//! ```
//!
//! Keys are the store's keys: `client_len u16 | client | second part` for the per-client tables,
//! a big-endian u64 for the audit trail, raw bytes otherwise. Values are the stored bytes,
//! so shares and cipherTexts stay sealed under the master key: a snapshot is useless without
//! it, and restoring one needs it, to open the integrity key and check the MAC before anything
//! else, then to verify every record.
//!
//! Format 2 (`"SVSNAP\0\x02"`) is format 3 without the table of versions (7 counts); it is
//! still restored. Format 1 (`"SVSNAP\0\x01"`) had no integrity key and ended with a plain SHA-256, which
//! anyone who can write the file can recompute; restore refuses it unless told to accept an
//! unauthenticated snapshot.

mod read;
pub mod restore;
#[cfg(test)]
mod tests;
mod write;

pub use read::{RecordReader, Tee, Trailer, check_structure, find_meta, parse, verify_trailer};
pub use write::{Written, write};

/// The magic of the current format (3), authenticated with a MAC.
pub const MAGIC: &[u8; 8] = b"SVSNAP\0\x03";
/// The magic of format 2: format 3 without the table of versions.
pub const MAGIC_V2: &[u8; 8] = b"SVSNAP\0\x02";
/// The current format.
pub const VERSION: u8 = 3;
/// The magic of format 1, checked with a plain SHA-256 only.
pub const MAGIC_V1: &[u8; 8] = b"SVSNAP\0\x01";
/// Length of the trailing checksum or MAC.
pub const TRAILER: u64 = 32;
/// Longest sealed integrity key a header may carry.
const MAX_SEALED_KEY: usize = 1024;
const END: u8 = 0xFF;
/// Largest key or value a snapshot may carry; anything larger is corruption.
const MAX_FIELD: u32 = 8 * 1024 * 1024;

use crate::store::{Key, KeyBuf, KeyKind};
pub use crate::store::{TABLE_COUNT, TABLES, TableId};

/// The number of tables a snapshot of format `version` counts.
pub fn table_count(version: u8) -> usize {
    if version >= 3 { TABLE_COUNT } else { 7 }
}

/// One record: its table, key and value.
pub type Record = (TableId, Vec<u8>, Vec<u8>);

/// Encodes a per-client key.
pub fn client_key(client: &str, second: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + client.len() + second.len());
    out.extend_from_slice(&(client.len() as u16).to_be_bytes());
    out.extend_from_slice(client.as_bytes());
    out.extend_from_slice(second.as_bytes());
    out
}

/// Decodes a per-client key.
pub fn split_client_key(key: &[u8]) -> Option<(&str, &str)> {
    let len = u16::from_be_bytes(key.get(..2)?.try_into().ok()?) as usize;
    let client = std::str::from_utf8(key.get(2..2 + len)?).ok()?;
    let second = std::str::from_utf8(key.get(2 + len..)?).ok()?;
    Some((client, second))
}

/// Encodes a store key as the snapshot writes it.
pub fn encode_key(key: Key<'_>) -> Vec<u8> {
    match key {
        Key::Client(client, second) => client_key(client, second),
        Key::Name(name) => name.as_bytes().to_vec(),
        Key::Bytes(bytes) => bytes.to_vec(),
        Key::Seq(seq) => seq.to_be_bytes().to_vec(),
    }
}

/// Decodes a snapshot key of `table` into a store key.
pub fn decode_key(table: TableId, key: &[u8]) -> Option<KeyBuf> {
    Some(match table.key_kind() {
        KeyKind::Client => {
            let (client, second) = split_client_key(key)?;
            KeyBuf::Client(client.to_owned(), second.to_owned())
        }
        KeyKind::Name => KeyBuf::Name(std::str::from_utf8(key).ok()?.to_owned()),
        KeyKind::Bytes => KeyBuf::Bytes(key.to_vec()),
        KeyKind::Seq => KeyBuf::Seq(u64::from_be_bytes(key.try_into().ok()?)),
    })
}

/// The header of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// [`VERSION`], or 2 or 1 for a snapshot of an older version.
    pub version: u8,
    pub created_at_ms: u64,
    pub key_id: [u8; 8],
    /// The vault's integrity key sealed under the master key (empty in format 1).
    pub sealed_integrity_key: Vec<u8>,
    /// Record counts, in [`TABLES`] order (0 for tables the format does not hold).
    pub counts: [u64; TABLE_COUNT],
}

impl Header {
    /// Encodes the header in its `version`'s format.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = match self.version {
            1 => MAGIC_V1.to_vec(),
            2 => MAGIC_V2.to_vec(),
            _ => MAGIC.to_vec(),
        };
        out.extend_from_slice(&self.created_at_ms.to_be_bytes());
        out.extend_from_slice(&self.key_id);
        if self.version != 1 {
            out.extend_from_slice(&(self.sealed_integrity_key.len() as u16).to_be_bytes());
            out.extend_from_slice(&self.sealed_integrity_key);
        }
        for c in &self.counts[..table_count(self.version)] {
            out.extend_from_slice(&c.to_be_bytes());
        }
        out
    }
}

/// Encodes one record.
pub fn record(table: TableId, key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + key.len() + value.len());
    out.push(table as u8);
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// The end marker.
pub fn end() -> [u8; 1] {
    [END]
}

/// Why a snapshot is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("not a sharevault snapshot (bad magic or unknown format version)")]
    NotASnapshot,
    #[error("the snapshot is truncated")]
    Truncated,
    #[error("the snapshot's checksum does not match: it is corrupt")]
    Checksum,
    #[error(
        "the snapshot's MAC does not match: it is corrupt or was altered (or it is another \
         vault's)"
    )]
    Mac,
    #[error(
        "the snapshot is in format 1, whose checksum anyone who can write the file can \
         recompute: it cannot prove it was not altered. Take a new snapshot, or pass \
         --accept-unauthenticated-snapshot if you trust where this one was kept"
    )]
    Unauthenticated,
    #[error("the snapshot is malformed: {0}")]
    Malformed(String),
    #[error("cannot read the snapshot: {0}")]
    Io(String),
}
