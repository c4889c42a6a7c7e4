//! Reading a snapshot: its trailer (MAC or checksum), its structure, and its records in order.

use super::{
    END, Header, MAGIC, MAGIC_V1, MAGIC_V2, MAX_FIELD, MAX_SEALED_KEY, Record, SnapshotError,
    TABLE_COUNT, TRAILER, TableId, VERSION, table_count,
};
use crate::integrity::HmacSha256;
use hmac::Mac;
use sha2::{Digest, Sha256};
use std::io::Read;

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
    seen: [u64; TABLE_COUNT],
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
            VERSION
        } else if magic == MAGIC_V2 {
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
        if version >= 2 {
            let len = u16::from_be_bytes(read_exact(&mut input, 2)?.try_into().unwrap_or([0; 2]));
            if len as usize > MAX_SEALED_KEY {
                return Err(SnapshotError::Malformed(
                    "the sealed key is too large".into(),
                ));
            }
            sealed_integrity_key = read_exact(&mut input, len as usize)?;
        }
        let mut counts = [0u64; TABLE_COUNT];
        for c in &mut counts[..table_count(version)] {
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
            seen: [0; TABLE_COUNT],
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
        || ![&MAGIC[..], MAGIC_V2, MAGIC_V1].contains(&&bytes[..MAGIC.len()])
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

/// The value of the meta record `name` in the snapshot at `path`, read without checking the
/// trailer: only for what authenticates itself (a root key sealed by a token, whose unsealing
/// fails if it was altered) or names what the restore needs.
pub fn find_meta(path: &std::path::Path, name: &str) -> Result<Option<Vec<u8>>, SnapshotError> {
    let file = std::fs::File::open(path).map_err(|e| SnapshotError::Io(e.to_string()))?;
    let len = file
        .metadata()
        .map_err(|e| SnapshotError::Io(e.to_string()))?
        .len();
    if len < TRAILER {
        return Err(SnapshotError::Truncated);
    }
    let mut reader = RecordReader::new(std::io::BufReader::new(file).take(len - TRAILER))?;
    while let Some((table, key, value)) = reader.next_record()? {
        if table == TableId::Meta && key == name.as_bytes() {
            return Ok(Some(value));
        }
    }
    Ok(None)
}
