//! The snapshot file format, written online from one read transaction and restored offline.
//!
//! ```text
//! "SVSNAP\0\x02"                      magic and format version 2
//! created_at_ms u64 | master key id [8]
//! sealed_len u16 | sealed integrity key   the vault's integrity key, sealed under the master key
//! record count u64 per table (7 tables)
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
//! Format 1 (`"SVSNAP\0\x01"`) had no integrity key and ended with a plain SHA-256, which
//! anyone who can write the file can recompute; restore refuses it unless told to accept an
//! unauthenticated snapshot.

use sha2::{Digest, Sha256};
use std::io::Read;

use crate::integrity::HmacSha256;
use hmac::Mac;

/// The magic of the current format (2), authenticated with a MAC.
pub const MAGIC: &[u8; 8] = b"SVSNAP\0\x02";
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
    /// 2, or 1 for a snapshot of an older version.
    pub version: u8,
    pub created_at_ms: u64,
    pub key_id: [u8; 8],
    /// The vault's integrity key sealed under the master key (format 2; empty in format 1).
    pub sealed_integrity_key: Vec<u8>,
    /// Record counts, in [`TABLES`] order.
    pub counts: [u64; 7],
}

impl Header {
    /// Encodes the header in its `version`'s format.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = if self.version == 1 {
            MAGIC_V1.to_vec()
        } else {
            MAGIC.to_vec()
        };
        out.extend_from_slice(&self.created_at_ms.to_be_bytes());
        out.extend_from_slice(&self.key_id);
        if self.version != 1 {
            out.extend_from_slice(&(self.sealed_integrity_key.len() as u16).to_be_bytes());
            out.extend_from_slice(&self.sealed_integrity_key);
        }
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

/// What checks a snapshot's trailer: a MAC (format 2) or a plain SHA-256 (format 1).
pub enum Trailer {
    Mac(Box<HmacSha256>),
    Sha256(Sha256),
}

impl Trailer {
    /// A format 1 checksum.
    pub fn sha256() -> Self {
        Trailer::Sha256(Sha256::new())
    }

    /// The trailer of the bytes seen, to append to a snapshot.
    pub fn finish(self) -> [u8; 32] {
        match self {
            Trailer::Mac(mac) => mac.finalize().into_bytes().into(),
            Trailer::Sha256(sha) => sha.finalize().into(),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Trailer::Mac(mac) => mac.update(bytes),
            Trailer::Sha256(sha) => sha.update(bytes),
        }
    }

    /// Whether `expected` is the trailer of the bytes seen (in constant time for a MAC).
    pub fn matches(self, expected: &[u8]) -> bool {
        match self {
            Trailer::Mac(mac) => mac.verify_slice(expected).is_ok(),
            Trailer::Sha256(sha) => sha.finalize().as_slice() == expected,
        }
    }

    fn mismatch(&self) -> SnapshotError {
        match self {
            Trailer::Mac(_) => SnapshotError::Mac,
            Trailer::Sha256(_) => SnapshotError::Checksum,
        }
    }
}

/// Checks a snapshot file's trailer (its last 32 bytes, the MAC or checksum of the rest),
/// streaming, before anything else is read from it.
pub fn verify_trailer(
    mut input: impl Read,
    len: u64,
    mut trailer: Trailer,
) -> Result<(), SnapshotError> {
    let min = (MAGIC.len() + 8 + 8 + 7 * 8 + 1) as u64 + TRAILER;
    if len < min {
        return Err(SnapshotError::Truncated);
    }
    let mut remaining = len - TRAILER;
    let mut buf = vec![0u8; 64 * 1024];
    let mut last = 0u8;
    while remaining > 0 {
        let want = remaining.min(buf.len() as u64) as usize;
        input
            .read_exact(&mut buf[..want])
            .map_err(|e| SnapshotError::Io(e.to_string()))?;
        trailer.update(&buf[..want]);
        last = buf[want - 1];
        remaining -= want as u64;
    }
    let mut sum = [0u8; TRAILER as usize];
    input
        .read_exact(&mut sum)
        .map_err(|e| SnapshotError::Io(e.to_string()))?;
    let mismatch = trailer.mismatch();
    if trailer.matches(&sum) {
        Ok(())
    } else if last != END {
        // A cut-off file: the end marker is missing.
        Err(SnapshotError::Truncated)
    } else {
        Err(mismatch)
    }
}

/// Checks that a file of `len` bytes is a whole snapshot: header, records and counts, the end
/// marker, and exactly a trailer after it. Needs no key, so it cannot tell an altered snapshot
/// from a good one (restore does, with the master key).
pub fn check_structure(input: impl Read, len: u64) -> Result<Header, SnapshotError> {
    if len < TRAILER {
        return Err(SnapshotError::Truncated);
    }
    let mut reader = RecordReader::new(input.take(len - TRAILER))?;
    while reader.next_record()?.is_some() {}
    reader.finish()?;
    Ok(reader.header)
}

/// Feeds every byte read through it to a [`Trailer`], so that a second pass over a snapshot
/// checks the same bytes it imports.
pub struct Tee<R> {
    pub input: R,
    pub trailer: Trailer,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.input.read(buf)?;
        self.trailer.update(&buf[..n]);
        Ok(n)
    }
}

/// Reads a snapshot's header and records, in order, checking structure and counts. It does
/// not check the trailer (see [`verify_trailer`]) nor open records (restore does, with the
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
        let magic = read_exact(&mut input, MAGIC.len()).map_err(|_| SnapshotError::NotASnapshot)?;
        let version = if magic == MAGIC {
            2
        } else if magic == MAGIC_V1 {
            1
        } else {
            return Err(SnapshotError::NotASnapshot);
        };
        let created_at_ms = read_u64(&mut input)?;
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&read_exact(&mut input, 8)?);
        let mut sealed_integrity_key = Vec::new();
        if version == 2 {
            let len = u16::from_be_bytes(read_exact(&mut input, 2)?.try_into().unwrap_or([0; 2]));
            if len as usize > MAX_SEALED_KEY {
                return Err(SnapshotError::Malformed(
                    "the sealed key is too large".into(),
                ));
            }
            sealed_integrity_key = read_exact(&mut input, len as usize)?;
        }
        let mut counts = [0u64; 7];
        for c in &mut counts {
            *c = read_u64(&mut input)?;
        }
        Ok(Self {
            input,
            header: Header {
                version,
                created_at_ms,
                key_id,
                sealed_integrity_key,
                counts,
            },
            seen: [0; 7],
            done: false,
        })
    }

    /// The input, after the records.
    pub fn into_inner(self) -> R {
        self.input
    }

    /// Checks that nothing follows the end marker (the trailer is not part of the input).
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

/// Checks a whole snapshot held in memory: trailer, structure and counts.
pub fn parse(bytes: &[u8], trailer: Trailer) -> Result<Vec<Record>, SnapshotError> {
    if bytes.len() < MAGIC.len()
        || (&bytes[..MAGIC.len()] != MAGIC && &bytes[..MAGIC.len()] != MAGIC_V1)
    {
        return Err(SnapshotError::NotASnapshot);
    }
    verify_trailer(bytes, bytes.len() as u64, trailer)?;
    let mut reader = RecordReader::new(&bytes[..bytes.len() - TRAILER as usize])?;
    let mut records = Vec::new();
    while let Some(record) = reader.next_record()? {
        records.push(record);
    }
    reader.finish()?;
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac() -> Trailer {
        Trailer::Mac(Box::new(
            <HmacSha256 as Mac>::new_from_slice(b"snapshot key").unwrap(),
        ))
    }

    fn sample() -> Vec<u8> {
        let header = Header {
            version: 2,
            created_at_ms: 7,
            key_id: [1; 8],
            sealed_integrity_key: b"sealed integrity key".to_vec(),
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
        let mut trailer = mac();
        trailer.update(&out);
        out.extend_from_slice(&trailer.finish());
        out
    }

    #[test]
    fn a_snapshot_round_trips() {
        let records = parse(&sample(), mac()).unwrap();
        assert_eq!(records.len(), 2);
        // A plain SHA-256 in place of the MAC, as anyone could compute, is refused.
        let mut forged = sample();
        let body = forged.len() - 32;
        let sum = Sha256::digest(&forged[..body]);
        forged[body..].copy_from_slice(&sum);
        assert_eq!(parse(&forged, mac()).unwrap_err(), SnapshotError::Mac);
        assert_eq!(
            split_client_key(&records[0].1),
            Some(("c", "PASSWORD-SECP256K1"))
        );
    }

    #[test]
    fn truncation_and_flipped_bytes_are_refused() {
        let good = sample();
        for cut in [0, 5, 40, good.len() - 33, good.len() - 1] {
            assert!(parse(&good[..cut], mac()).is_err(), "cut at {cut}");
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            assert!(parse(&bad, mac()).is_err(), "flip at {i}");
        }
        assert_eq!(
            parse(&good[..good.len() - 10], mac()).unwrap_err(),
            SnapshotError::Truncated
        );
        assert_eq!(
            check_structure(&good[..], good.len() as u64)
                .unwrap()
                .sealed_integrity_key,
            b"sealed integrity key"
        );
        assert!(check_structure(&good[..good.len() - 1], good.len() as u64 - 1).is_err());
    }
}
