//! The snapshot file format, written online from one read transaction and restored offline.
//!
//! ```text
//! "SVSNAP\0\x01"                      magic and format version 1
//! created_at_ms u64 | master key id [8] | record count u64 per table (7 tables)
//! records: table u8 | key_len u32 | key | value_len u32 | value
//! 0xFF                                end of records
//! SHA-256 of every byte above [32]
//! ```
//!
//! Keys are the store's keys: `client_len u16 | client | second part` for the per-client tables,
//! a big-endian u64 for the audit trail, raw bytes otherwise. Values are the stored bytes,
//! so shares and cipherTexts stay sealed under the master key: a snapshot is useless without
//! it, and restoring one needs it to verify every record first.

use sha2::{Digest, Sha256};
use std::io::Read;

pub const MAGIC: &[u8; 8] = b"SVSNAP\0\x01";
const END: u8 = 0xFF;
/// Largest key or value a snapshot may carry; anything larger is corruption.
const MAX_FIELD: u32 = 8 * 1024 * 1024;

use crate::store::{Key, KeyBuf, KeyKind};
pub use crate::store::{TABLES, TableId};

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
    pub created_at_ms: u64,
    pub key_id: [u8; 8],
    /// Record counts, in [`TABLES`] order.
    pub counts: [u64; 7],
}

impl Header {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&self.created_at_ms.to_be_bytes());
        out.extend_from_slice(&self.key_id);
        for c in self.counts {
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
    #[error("the snapshot is malformed: {0}")]
    Malformed(String),
    #[error("cannot read the snapshot: {0}")]
    Io(String),
}

/// Checks a snapshot file's checksum (the last 32 bytes are the SHA-256 of the rest),
/// streaming, before anything else is read from it.
pub fn verify_checksum(mut input: impl Read, len: u64) -> Result<(), SnapshotError> {
    let min = (MAGIC.len() + 8 + 8 + 7 * 8 + 1 + 32) as u64;
    if len < min {
        return Err(SnapshotError::Truncated);
    }
    let mut hasher = Sha256::new();
    let mut remaining = len - 32;
    let mut buf = vec![0u8; 64 * 1024];
    let mut last = 0u8;
    while remaining > 0 {
        let want = remaining.min(buf.len() as u64) as usize;
        input
            .read_exact(&mut buf[..want])
            .map_err(|e| SnapshotError::Io(e.to_string()))?;
        hasher.update(&buf[..want]);
        last = buf[want - 1];
        remaining -= want as u64;
    }
    let mut sum = [0u8; 32];
    input
        .read_exact(&mut sum)
        .map_err(|e| SnapshotError::Io(e.to_string()))?;
    if hasher.finalize().as_slice() == sum {
        Ok(())
    } else if last != END {
        // A cut-off file: the end marker is missing.
        Err(SnapshotError::Truncated)
    } else {
        Err(SnapshotError::Checksum)
    }
}

/// Reads a snapshot's header and records, in order, checking structure and counts. It does
/// not check the checksum (see [`verify_checksum`]) nor open records (restore does, with the
/// master key).
pub struct RecordReader<R> {
    input: R,
    pub header: Header,
    seen: [u64; 7],
    done: bool,
}

fn read_exact<R: Read>(input: &mut R, n: usize) -> Result<Vec<u8>, SnapshotError> {
    let mut buf = vec![0u8; n];
    input.read_exact(&mut buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            SnapshotError::Truncated
        } else {
            SnapshotError::Io(e.to_string())
        }
    })?;
    Ok(buf)
}

fn read_u64<R: Read>(input: &mut R) -> Result<u64, SnapshotError> {
    let b = read_exact(input, 8)?;
    Ok(u64::from_be_bytes(b.try_into().unwrap_or([0; 8])))
}

impl<R: Read> RecordReader<R> {
    pub fn new(mut input: R) -> Result<Self, SnapshotError> {
        if read_exact(&mut input, MAGIC.len()).map_err(|_| SnapshotError::NotASnapshot)? != MAGIC {
            return Err(SnapshotError::NotASnapshot);
        }
        let created_at_ms = read_u64(&mut input)?;
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&read_exact(&mut input, 8)?);
        let mut counts = [0u64; 7];
        for c in &mut counts {
            *c = read_u64(&mut input)?;
        }
        Ok(Self {
            input,
            header: Header {
                created_at_ms,
                key_id,
                counts,
            },
            seen: [0; 7],
            done: false,
        })
    }

    /// Checks that nothing follows the end marker (the checksum is not part of the input).
    pub fn finish(&mut self) -> Result<(), SnapshotError> {
        let mut extra = [0u8; 1];
        match self.input.read(&mut extra) {
            Ok(0) => Ok(()),
            Ok(_) => Err(SnapshotError::Malformed(
                "bytes after the end marker".into(),
            )),
            Err(e) => Err(SnapshotError::Io(e.to_string())),
        }
    }

    /// The next record, or `None` after the end marker (once the counts are checked).
    pub fn next_record(&mut self) -> Result<Option<Record>, SnapshotError> {
        if self.done {
            return Ok(None);
        }
        let tag = read_exact(&mut self.input, 1)?[0];
        if tag == END {
            self.done = true;
            if self.seen != self.header.counts {
                return Err(SnapshotError::Malformed(
                    "record counts do not match the header".into(),
                ));
            }
            return Ok(None);
        }
        let table = TableId::from_u8(tag)
            .ok_or_else(|| SnapshotError::Malformed(format!("unknown table {tag}")))?;
        let field = |input: &mut R| -> Result<Vec<u8>, SnapshotError> {
            let len = u32::from_be_bytes(read_exact(input, 4)?.try_into().unwrap_or([0; 4]));
            if len > MAX_FIELD {
                return Err(SnapshotError::Malformed("a field is too large".into()));
            }
            read_exact(input, len as usize)
        };
        let key = field(&mut self.input)?;
        let value = field(&mut self.input)?;
        self.seen[table as usize - 1] += 1;
        Ok(Some((table, key, value)))
    }
}

/// Checks a whole snapshot held in memory: checksum, structure and counts.
pub fn parse(bytes: &[u8]) -> Result<Vec<Record>, SnapshotError> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(SnapshotError::NotASnapshot);
    }
    verify_checksum(bytes, bytes.len() as u64)?;
    let mut reader = RecordReader::new(&bytes[..bytes.len() - 32])?;
    let mut records = Vec::new();
    while let Some(record) = reader.next_record()? {
        records.push(record);
    }
    reader.finish()?;
    Ok(records)
}

/// Hashes a snapshot as it is written, and appends the checksum at the end.
#[derive(Default)]
pub struct Checksummer(Sha256);

impl Checksummer {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let header = Header {
            created_at_ms: 7,
            key_id: [1; 8],
            counts: [1, 0, 0, 0, 0, 1, 0],
        };
        let mut out = header.encode();
        out.extend(record(
            TableId::Custodian,
            &client_key("c", "PASSWORD-SECP256K1"),
            b"sealed",
        ));
        out.extend(record(TableId::Meta, b"key_check", b"sealed check"));
        out.extend(end());
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        out
    }

    #[test]
    fn a_snapshot_round_trips() {
        let records = parse(&sample()).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(
            split_client_key(&records[0].1),
            Some(("c", "PASSWORD-SECP256K1"))
        );
    }

    #[test]
    fn truncation_and_flipped_bytes_are_refused() {
        let good = sample();
        for cut in [0, 5, 40, good.len() - 33, good.len() - 1] {
            assert!(parse(&good[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            assert!(parse(&bad).is_err(), "flip at {i}");
        }
        assert_eq!(
            parse(&good[..good.len() - 10]).unwrap_err(),
            SnapshotError::Truncated
        );
    }
}
