//! The journal's bytes: record headers and their checksums, entries, the database's identity,
//! and clearing a journal.

use super::*;

/// Clears a journal (no record survives in it) and makes it at least `capacity` long, written
/// with zeros, so that records later overwrite allocated blocks and their fsync carries no
/// file-size change.
pub(super) fn prepare(journal: &dyn Disk, capacity: u64) -> io::Result<()> {
    let len = journal.size()?;
    let zeros = vec![0u8; 1 << 20];
    journal.write_at(&zeros[..ALIGN as usize], 0)?;
    let mut at = len.max(ALIGN);
    while at < capacity {
        let n = (capacity - at).min(zeros.len() as u64);
        journal.write_at(&zeros[..n as usize], at)?;
        at += n;
    }
    journal.sync()
}

/// A whole record's header, as [`read_record`] finds it.
pub(super) struct Found {
    pub(super) magic: &'static [u8; 8],
    /// The identity of the database file it was written for (none in the earlier format).
    pub(super) id: Option<[u8; 16]>,
    pub(super) generation: u64,
    /// Where the next record starts.
    pub(super) next: u64,
}

/// Reads the record at `at` of a journal `len` bytes long into `payload`, if a whole one is
/// there (in the format of `magic` and of `generation`, if given). The header's own checksum
/// is checked before its length is trusted, so a garbage length never sizes a read.
pub(super) fn read_record(
    journal: &dyn Disk,
    len: u64,
    at: u64,
    expect: Option<(&'static [u8; 8], u64)>,
    payload: &mut Vec<u8>,
) -> io::Result<Option<Found>> {
    if at + HEADER_V1 as u64 > len {
        return Ok(None);
    }
    let mut header = [0u8; HEADER];
    let size = HEADER.min((len - at) as usize);
    journal.read_at(&mut header[..size], at)?;
    let field = |i: usize| u64::from_le_bytes(header[i..i + 8].try_into().unwrap_or([0; 8]));
    let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().unwrap_or([0; 4]));
    let (magic, id, generation, payload_len, crc, header_len) = match &header[..8] {
        m if m == MAGIC && size == HEADER => {
            if header_checksum(&header) != word(44) {
                return Ok(None);
            }
            let id: [u8; 16] = header[8..24].try_into().unwrap_or([0; 16]);
            (MAGIC, Some(id), field(24), field(32), word(40), HEADER)
        }
        m if m == MAGIC_V1 => (MAGIC_V1, None, field(8), field(16), word(24), HEADER_V1),
        _ => return Ok(None),
    };
    if expect.is_some_and(|(m, g)| m != magic || g != generation)
        || payload_len > len - at - header_len as u64
        || (magic == MAGIC && payload_len > MAX_RECORD)
    {
        return Ok(None);
    }
    payload.clear();
    payload.resize(payload_len as usize, 0);
    journal.read_at(payload, at + header_len as u64)?;
    if checksum(generation, payload) != crc {
        return Ok(None);
    }
    Ok(Some(Found {
        magic,
        id,
        generation,
        next: at + padded(header_len as u64 + payload_len),
    }))
}

/// The identity kept in the database file, if it has one.
pub(super) fn read_identity(main: &dyn Disk) -> io::Result<Option<[u8; 16]>> {
    if main.size()? < ID_AT + ID_LEN as u64 {
        return Ok(None);
    }
    let mut block = [0u8; ID_LEN];
    main.read_at(&mut block, ID_AT)?;
    if &block[..8] != ID_MAGIC || crc32fast::hash(&block[..24]).to_le_bytes() != block[24..28] {
        return Ok(None);
    }
    Ok(Some(block[8..24].try_into().unwrap_or([0; 16])))
}

pub(super) fn write_identity(main: &dyn Disk, id: &[u8; 16]) -> io::Result<()> {
    let mut block = [0u8; ID_LEN];
    block[..8].copy_from_slice(ID_MAGIC);
    block[8..24].copy_from_slice(id);
    let crc = crc32fast::hash(&block[..24]);
    block[24..28].copy_from_slice(&crc.to_le_bytes());
    main.write_at(&block, ID_AT)
}

/// Whether the file is 4 KiB of zeros but for its identity (created, but not yet by redb).
pub(super) fn holds_only_identity(main: &dyn Disk) -> io::Result<bool> {
    if main.size()? != ID_AT + ID_LEN as u64 {
        return Ok(false);
    }
    let mut first = vec![0u8; ID_AT as usize];
    main.read_at(&mut first, 0)?;
    Ok(first.iter().all(|b| *b == 0))
}

/// The journals hold records written for another database file, or for this one as it was
/// before a later open: replaying them would corrupt it.
pub(super) fn foreign_journal() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "the journals beside the database file were written for another database file (or \
         an earlier copy of this one), and are not replayed into it; move the .journal0 and \
         .journal1 files away to open the file as it is, or put back the database file they \
         belong to",
    )
}

pub(super) fn checksum(generation: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&generation.to_le_bytes());
    hasher.update(&(payload.len() as u64).to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// The checksum of a header's first 28 bytes, kept in its last 4.
pub(super) fn header_checksum(header: &[u8]) -> u32 {
    crc32fast::hash(&header[..HEADER - 4])
}

pub(super) fn padded(len: u64) -> u64 {
    len.div_ceil(ALIGN) * ALIGN
}

pub(super) fn push_entry(buf: &mut Vec<u8>, kind: u8, offset: u64, data: &[u8]) {
    buf.push(kind);
    buf.extend_from_slice(&offset.to_le_bytes());
    buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
    buf.extend_from_slice(data);
}
