//! The vault's logical redo log: one checksummed record per write batch, fsynced before
//! anyone is answered; the B-tree (redb) is committed durably only at checkpoints.
//!
//! A record holds a batch's effects in the order they were made: `put` (table, key, value) and
//! `delete` (table, key), the audit events of its writes and of reads of share material
//! included (they are rows of the audit and meta tables like any other). The store's writer
//! runs a batch's jobs in a redb write transaction, appends their effects here as one record,
//! fsyncs the log, then commits the transaction *without* durability (readers see it at once)
//! and answers. Every few seconds or MiB of log, a **checkpoint** commits redb durably (with its
//! allocator state, so an open after a crash needs no repair), records in redb the last log
//! position it holds, and then starts the log afresh. Recovery opens redb at its last
//! checkpoint and replays the records after it, in order: restart time is bounded by the log,
//! never by the size of the database. The shape is etcd's (server/storage/wal and backend).
//!
//! File layout (`<database file>.log`, integers little-endian):
//!
//! | size | field |
//! |------|-------|
//! | 8 | magic `SVLOG001` |
//! | 8 | epoch: random, new at every reset of the log |
//! | 8 | sequence number (LSN) of the first record |
//! | 4 | CRC-32 of the 24 bytes before |
//! | 4 | zero |
//!
//! then records, one after another from byte 32:
//!
//! | size | field |
//! |------|-------|
//! | 4 | payload length (at most [`MAX_RECORD`]) |
//! | 4 | CRC-32 of the epoch, the LSN, the length and the payload |
//! | 8 | LSN: the previous record's plus one |
//! | n | payload: effects `op u8 \| table u8 \| key \| [value len u32 \| value]`, op 1 put, 2 delete; a key is `u16 len \| bytes` (names, token hashes), two of those (client id, second part), or `u64` (audit sequence numbers) |
//!
//! A scan stops at the first record that is not whole (torn by a crash: never acknowledged),
//! whose CRC does not match (the epoch is in it, so records an earlier epoch left behind the
//! current tail never count), or whose LSN does not follow. A reset writes a new header (new
//! epoch, next LSN) over the old one; it happens only after the checkpoint that holds every
//! record of the old epoch is durable, so a torn header loses nothing.
//!
//! The checkpoint row (redb table `sharevault_log`, key `checkpoint`) holds the last LSN the
//! checkpoint covers and the epoch the log is reset to right after it. On open, a log of that
//! epoch is replayed (its records come after the checkpoint); a log of another epoch whose
//! records the checkpoint already holds (a crash between the checkpoint and the reset) is
//! ignored; any other log (written beside another copy of the database) fails the open, as the
//! page journal's foreign records did: replaying it would corrupt the database and ignoring it
//! could lose acknowledged writes.

mod effects;
#[cfg(test)]
mod tests;

pub use effects::{Effect, Recorder, decode, encode_delete, encode_put, replay};

use super::disk::Disk;
use std::io;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"SVLOG001";
const FILE_HEADER: u64 = 32;
const RECORD_HEADER: usize = 16;
/// The largest record payload; a batch with more effects than this fails.
pub const MAX_RECORD: usize = 256 << 20;
/// Bytes zero-filled ahead of the tail, so that appends within them change no file size (an
/// fdatasync then carries no metadata).
/// How much the zero-filled part grows by when an append reaches its end.
const GROW: u64 = 1 << 20;
#[cfg(not(test))]
const PREALLOCATE: u64 = 8 << 20;
#[cfg(test)]
const PREALLOCATE: u64 = 16 << 10;

/// The log file of the database file at `path`.
pub fn log_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".log");
    PathBuf::from(name)
}

/// What a scan of the log found: its epoch and records in order.
pub struct Scan {
    pub epoch: u64,
    pub first_lsn: u64,
    /// (LSN, payload) of every whole record, in order.
    pub records: Vec<(u64, Vec<u8>)>,
    /// Where the next record would go.
    pub tail: u64,
}

/// The log, open for appending.
pub struct Log {
    disk: Box<dyn Disk>,
    epoch: u64,
    tail: u64,
    next_lsn: u64,
    /// Zero-filled up to here.
    allocated: u64,
    /// Records appended since the last sync.
    unsynced: bool,
    buf: Vec<u8>,
    /// Bytes appended since the last reset.
    appended: u64,
}

fn crc(epoch: u64, lsn: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&epoch.to_le_bytes());
    h.update(&lsn.to_le_bytes());
    h.update(&(payload.len() as u32).to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

/// A fresh random number (an epoch).
pub fn random_epoch() -> io::Result<u64> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b)
        .map_err(|e| io::Error::other(format!("the system random number generator: {e}")))?;
    Ok(u64::from_le_bytes(b))
}

/// Reads the log: `None` if it has no valid header (new, or a reset torn by a crash).
pub fn scan(disk: &dyn Disk) -> io::Result<Option<Scan>> {
    let len = disk.size()?;
    if len < FILE_HEADER {
        return Ok(None);
    }
    let mut header = [0u8; FILE_HEADER as usize];
    disk.read_at(&mut header, 0)?;
    if &header[..8] != MAGIC || crc32fast::hash(&header[..24]) != u32_at(&header, 24) {
        return Ok(None);
    }
    let (epoch, first_lsn) = (u64_at(&header, 8), u64_at(&header, 16));
    let mut records = Vec::new();
    let mut at = FILE_HEADER;
    let mut lsn = first_lsn;
    loop {
        if at + RECORD_HEADER as u64 > len {
            break;
        }
        let mut rh = [0u8; RECORD_HEADER];
        disk.read_at(&mut rh, at)?;
        let (n, sum, got) = (u32_at(&rh, 0) as usize, u32_at(&rh, 4), u64_at(&rh, 8));
        if got != lsn || n > MAX_RECORD || at + (RECORD_HEADER + n) as u64 > len {
            break;
        }
        let mut payload = vec![0u8; n];
        disk.read_at(&mut payload, at + RECORD_HEADER as u64)?;
        if crc(epoch, lsn, &payload) != sum {
            break;
        }
        records.push((lsn, payload));
        at += (RECORD_HEADER + n) as u64;
        lsn += 1;
    }
    Ok(Some(Scan {
        epoch,
        first_lsn,
        records,
        tail: at,
    }))
}

impl Log {
    /// Starts the log afresh over `disk`: epoch `epoch`, first record `next_lsn`. Every record
    /// it held must already be in a durable checkpoint.
    pub fn reset(disk: Box<dyn Disk>, epoch: u64, next_lsn: u64) -> io::Result<Self> {
        let mut log = Self {
            disk,
            epoch,
            tail: FILE_HEADER,
            next_lsn,
            allocated: 0,
            unsynced: false,
            buf: Vec::new(),
            appended: 0,
        };
        log.allocated = log.disk.size()?;
        log.write_header()?;
        Ok(log)
    }

    fn write_header(&mut self) -> io::Result<()> {
        let mut header = [0u8; FILE_HEADER as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..16].copy_from_slice(&self.epoch.to_le_bytes());
        header[16..24].copy_from_slice(&self.next_lsn.to_le_bytes());
        let sum = crc32fast::hash(&header[..24]);
        header[24..28].copy_from_slice(&sum.to_le_bytes());
        // Records of the epoch before stay behind the header; their CRCs (which bind the old
        // epoch) keep them out of every later scan. Only the start of the first one is
        // zeroed, so that a scan of the new epoch stops at once.
        let mut block = vec![0u8; FILE_HEADER as usize + RECORD_HEADER];
        block[..FILE_HEADER as usize].copy_from_slice(&header);
        self.disk.write_at(&block, 0)?;
        if self.allocated < PREALLOCATE {
            self.preallocate(PREALLOCATE);
        }
        self.disk.sync()?;
        self.tail = FILE_HEADER;
        self.appended = 0;
        self.unsynced = false;
        Ok(())
    }

    /// Zero-fills the file up to `to`, as far as the disk allows: only an optimisation (an
    /// append past it grows the file, and its fsync then carries the new length too), so a
    /// full disk fails the append that needs the space, not this.
    fn preallocate(&mut self, to: u64) {
        let zeros = vec![0u8; 1 << 20];
        let mut at = self.allocated.max(FILE_HEADER + RECORD_HEADER as u64);
        while at < to {
            let n = (to - at).min(zeros.len() as u64);
            if self.disk.write_at(&zeros[..n as usize], at).is_err() {
                break;
            }
            at += n;
        }
        self.allocated = self.allocated.max(at);
    }

    /// Starts the log afresh after a checkpoint, under a new epoch. With `shrink` (the disk is
    /// nearly full), the file is also cut back to its first zero-filled part.
    pub fn restart(&mut self, epoch: u64, shrink: bool) -> io::Result<()> {
        self.epoch = epoch;
        if shrink && self.allocated > PREALLOCATE {
            self.disk.set_len(PREALLOCATE)?;
            self.allocated = PREALLOCATE;
        }
        self.write_header()
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The LSN of the last record appended.
    pub fn last_lsn(&self) -> u64 {
        self.next_lsn - 1
    }

    /// Bytes appended since the log was last started afresh.
    pub fn appended(&self) -> u64 {
        self.appended
    }

    /// Appends one record holding `payload`; with `sync`, fsyncs it (and every record before).
    /// Answers its LSN. After an error the log's contents are unknown: the store reopens.
    pub fn append(&mut self, payload: &[u8], sync: bool) -> io::Result<u64> {
        if payload.len() > MAX_RECORD {
            return Err(io::Error::other(format!(
                "a write batch of more than {MAX_RECORD} bytes of effects"
            )));
        }
        let lsn = self.next_lsn;
        self.buf.clear();
        self.buf
            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
        self.buf
            .extend_from_slice(&crc(self.epoch, lsn, payload).to_le_bytes());
        self.buf.extend_from_slice(&lsn.to_le_bytes());
        self.buf.extend_from_slice(payload);
        let end = self.tail + self.buf.len() as u64;
        if end > self.allocated {
            self.preallocate((end + GROW).next_multiple_of(GROW));
        }
        self.disk.write_at(&self.buf, self.tail)?;
        self.tail = end;
        self.appended += self.buf.len() as u64;
        self.next_lsn += 1;
        self.unsynced = true;
        if sync {
            self.sync()?;
        }
        Ok(lsn)
    }

    /// Makes every record appended so far durable.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.unsynced {
            self.disk.sync()?;
            self.unsynced = false;
        }
        Ok(())
    }

    pub fn unsynced(&self) -> bool {
        self.unsynced
    }
}
