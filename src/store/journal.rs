//! A page journal beneath redb: a commit is made durable by one sequential append.
//!
//! redb makes a commit durable by writing every page it changed in place and calling
//! `sync_data` on its file. Those pages are scattered over the file, so each commit costs the
//! disk one random write per page, and the writer waits for all of them. [`JournaledFile`] is
//! a redb [`StorageBackend`] that keeps redb's file as it is but changes what `write` and
//! `sync_data` mean:
//!
//! - `write` appends the page, with its offset, to the record being filled, and keeps it in
//!   memory (the overlay) for reads; the database file is not touched yet;
//! - `sync_data` seals that record, appends it to the active journal file (a preallocated
//!   file written sequentially) and fsyncs that: one sequential write and one flush per
//!   commit, whatever the number of pages, in the committing thread. When redb's `commit`
//!   returns, the commit is durable, and the store answers its callers (nothing is
//!   acknowledged before);
//! - the journal thread then writes the record's pages to the database file (the OS page
//!   cache), and they leave the overlay;
//! - when the active journal is full, the other one takes over and a checkpointer thread
//!   fsyncs the database file; after that the full journal's records are no longer needed and
//!   it can be reused. The database file's scattered writes reach the disk in the background,
//!   once per checkpoint for a page rewritten by many commits, and no commit waits for them.
//!
//! The database file therefore only ever receives pages of commits already durable in a
//! journal, in commit order. On open, the whole records of both journals are replayed into it
//! in the order they were written (generation, then position), the file is fsynced, the
//! journals are cleared (the older one first: a crash between the two clears leaves the
//! newest records, whose replay is harmless, never the older ones alone, which would undo
//! them), and the file gets a fresh identity; only then does redb see the file, which holds
//! exactly the state of the last durable commit. A record is replayed only if it is whole (its
//! header's checksum, then its payload's, match) and belongs to its file's current generation,
//! so a record torn by a crash, whose commits were never acknowledged, is ignored, and so is
//! whatever an earlier generation or an earlier run (whose generations started at another
//! random number) left behind it. A record written for another database file, or for an
//! earlier copy of this one (its identity differs), fails the open: it is never replayed, and
//! never ignored. A clean close clears the journals in the same order.
//!
//! A failed fsync of the database file (a checkpoint) fails every later commit, and every
//! read of the file, at once: the kernel may have dropped the file's unwritten pages, so it
//! can no longer be read for what was written to it, and a later fsync may succeed without
//! writing them, so the journals are kept; the store reopens the database, which replays both
//! journals into it.
//!
//! The database file's identity (`SVDBID01`, 16 random bytes, CRC-32) is kept in the last 64
//! bytes of its first 4 KiB: redb 4.5 keeps its header in the first 320 bytes of a page of its
//! own and never writes the rest, and a write there fails rather than lose the identity.
//!
//! Readers may see a commit in the moment between redb's `commit` and the record's fsync. No
//! caller is answered on the strength of such a read before the commit is durable: writes are
//! answered once it is, and a read of share material waits for its own audit event, which is
//! journaled after every commit the read could have seen.
//!
//! Journal files sit beside the database: `<file>.journal0` and `<file>.journal1`. The first
//! one also carries an exclusive `flock` for as long as the database is open, so that no
//! second process replays a journal under a running daemon.
//!
//! Record layout (integers little-endian), padded with zeros to a multiple of 4 KiB:
//!
//! | size | field |
//! |------|-------|
//! | 8    | magic `SVJRNL02` |
//! | 16   | identity of the database file |
//! | 8    | generation |
//! | 8    | payload length (at most 1 GiB) |
//! | 4    | CRC-32 of generation, payload length and payload |
//! | 4    | CRC-32 of the 44 bytes before |
//! | n    | payload: entries `kind u8 \| offset u64 \| length u32 \| data`; kind 1 writes `data` at `offset`, kind 2 sets the file length to `offset` |
//!
//! Journals of the earlier format `SVJRNL01` (a 32-byte header: magic, generation, length,
//! payload CRC, zero; no identity) are still replayed, once, by the first open.

use super::disk::Disk;
use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io;
use std::ops::Bound;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;

const MAGIC: &[u8; 8] = b"SVJRNL02";
/// The format of earlier versions (no header checksum), still replayed on open.
const MAGIC_V1: &[u8; 8] = b"SVJRNL01";
const HEADER: usize = 48;
const HEADER_V1: usize = 32;
/// Where the database file keeps its identity: the end of its first 4 KiB, which redb 4.5
/// never writes (its header is the first 320 bytes of a page of its own). A fresh random
/// identity is written at every open, once the journals are cleared; every record carries it.
const ID_AT: u64 = 4096 - 64;
const ID_LEN: usize = 64;
const ID_MAGIC: &[u8; 8] = b"SVDBID01";
/// The largest record payload: a commit larger than this fails (and a header claiming more is
/// not a record).
pub const MAX_RECORD: u64 = 1 << 30;
const ALIGN: u64 = 4096;
const KIND_WRITE: u8 = 1;
const KIND_SET_LEN: u8 = 2;
const ENTRY_HEADER: usize = 13;
/// Sealed records waiting for the journal thread, in bytes, before `sync_data` waits.
const MAX_QUEUED_BYTES: u64 = 16 << 20;

/// The journal files of the database file at `path`.
pub fn journal_paths(path: &Path) -> [PathBuf; 2] {
    let name = |i: u8| {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".journal{i}"));
        PathBuf::from(name)
    };
    [name(0), name(1)]
}

/// A redb storage backend: the database file, made durable through a journal.
pub struct JournaledFile {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

struct Inner {
    main: Box<dyn Disk>,
    journals: [Box<dyn Disk>; 2],
    /// The real files' locks: `journal0`'s flock, and redb's range locks on the database file.
    /// None over a simulated disk.
    locks: Option<Locks>,
    /// The database file's identity, in every record.
    id: [u8; 16],
    /// Records are appended until the active journal would pass this length.
    capacity: u64,
    /// The record being filled: its buffer (which starts with room for the header) and the
    /// length of the file as redb sees it.
    pending: Mutex<Pending>,
    /// Pages written by commits not yet in the database file: (offset, write order) → page.
    overlay: RwLock<BTreeMap<(u64, u64), Overlaid>>,
    longest_write: AtomicU64,
    /// The database file failed a write or a sync: it may have lost pages, so it is not read
    /// again until the database is reopened (and the journals replayed into it).
    main_lost: AtomicBool,
    queue: Mutex<Queue>,
    queue_changed: Condvar,
    log: Mutex<Log>,
    log_changed: Condvar,
}

struct Locks {
    journal0: File,
    main: FileBackend,
}

struct Pending {
    buf: Vec<u8>,
    /// Sequence number the record being filled will get.
    seq: u64,
    /// Write order, for overlapping overlay pages.
    order: u64,
    len: u64,
}

struct Overlaid {
    record: u64,
    data: Arc<[u8]>,
}

struct Queue {
    /// Durable records whose pages are still to be written to the database file.
    records: VecDeque<(u64, Vec<u8>)>,
    queued_bytes: u64,
    /// The last record written to the database file.
    applied: u64,
    spare: Vec<Vec<u8>>,
    closing: bool,
    /// A failed journal write or checkpoint: every later sync fails, until the database is
    /// reopened (and the journals replayed).
    failed: Option<String>,
}

struct Log {
    active: usize,
    generation: u64,
    tail: u64,
    /// The inactive journal's records are all in the fsynced database file: it may be reused.
    other_free: bool,
    checkpoint_due: bool,
    /// The last record of the journal the due checkpoint frees.
    checkpoint_upto: u64,
    closing: bool,
    failed: Option<String>,
}

fn guard<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn wait<'a, T>(cv: &Condvar, g: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(g)
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl std::fmt::Debug for JournaledFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournaledFile")
            .field("capacity", &self.inner.capacity)
            .finish_non_exhaustive()
    }
}

fn open_rw(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

fn fresh_buffer(mut buf: Vec<u8>) -> Vec<u8> {
    buf.clear();
    buf.resize(HEADER, 0);
    buf
}

impl JournaledFile {
    /// Opens (or creates) the database file at `path` and its journals of `capacity` bytes
    /// each, replaying whatever the journals hold. Fails with `WouldBlock` if another process
    /// has the database open.
    pub fn open(path: &Path, capacity: u64) -> io::Result<Self> {
        let [j0, j1] = journal_paths(path);
        let journals = [open_rw(&j0)?, open_rw(&j1)?];
        match rustix::fs::flock(
            &journals[0],
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        ) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "the database is open in another process",
                ));
            }
            Err(err) => return Err(err.into()),
        }
        let main = open_rw(path)?;
        let locks = Locks {
            journal0: journals[0].try_clone()?,
            main: FileBackend::new(main.try_clone()?)
                .map_err(|e| io::Error::other(format!("cannot open the database file: {e}")))?,
        };
        let [first, second] = journals;
        Self::open_disks(
            Box::new(main),
            [Box::new(first), Box::new(second)],
            capacity,
            Some(locks),
        )
    }

    /// Opens the database file `main` with its journals, replaying what they hold.
    fn open_disks(
        main: Box<dyn Disk>,
        journals: [Box<dyn Disk>; 2],
        capacity: u64,
        locks: Option<Locks>,
    ) -> io::Result<Self> {
        let (replayed, oldest_first) = replay(main.as_ref(), &journals)?;
        if replayed > 0 {
            tracing::info!(
                records = replayed,
                "journal replayed into the database file"
            );
        }
        main.sync()?;
        // Oldest first: if this stops half-way, what is left is the newest records, whose
        // replay over the synced file is harmless; the older ones alone would undo them.
        for i in oldest_first {
            prepare(journals[i].as_ref(), capacity)?;
        }
        // A fresh identity, now that no record of the last one is left: journals written from
        // here on are replayed into this file only, as it is from now on.
        let mut id = [0u8; 16];
        getrandom::fill(&mut id)
            .map_err(|e| io::Error::other(format!("the system random number generator: {e}")))?;
        let fresh = main.size()? == 0;
        write_identity(main.as_ref(), &id)?;
        main.sync()?;
        // A new file holds nothing but the identity: redb sees it empty, and creates it.
        let len = if fresh || holds_only_identity(main.as_ref())? {
            0
        } else {
            main.size()?
        };
        // Clearing a journal erases only its first record, so records of earlier runs stay
        // behind the ones this run writes. Each run's generations start at a fresh random
        // number, so a scan stops at the first record of another run instead of replaying it.
        let mut start = [0u8; 8];
        getrandom::fill(&mut start)
            .map_err(|e| io::Error::other(format!("the system random number generator: {e}")))?;
        let generation = u64::from_le_bytes(start) >> 2;
        let inner = Arc::new(Inner {
            main,
            journals,
            locks,
            id,
            capacity: capacity.max(ALIGN),
            pending: Mutex::new(Pending {
                buf: fresh_buffer(Vec::new()),
                seq: 1,
                order: 0,
                len,
            }),
            overlay: RwLock::new(BTreeMap::new()),
            longest_write: AtomicU64::new(0),
            main_lost: AtomicBool::new(false),
            queue: Mutex::new(Queue {
                records: VecDeque::new(),
                queued_bytes: 0,
                applied: 0,
                spare: Vec::new(),
                closing: false,
                failed: None,
            }),
            queue_changed: Condvar::new(),
            log: Mutex::new(Log {
                active: 0,
                generation,
                tail: 0,
                other_free: true,
                checkpoint_due: false,
                checkpoint_upto: 0,
                closing: false,
                failed: None,
            }),
            log_changed: Condvar::new(),
        });
        let mut threads = Vec::with_capacity(2);
        for (name, run) in [
            ("sharevault-journal", Inner::run_apply as fn(&Inner)),
            ("sharevault-checkpoint", Inner::run_checkpointer),
        ] {
            let worker = Arc::clone(&inner);
            threads.push(
                std::thread::Builder::new()
                    .name(name.into())
                    .spawn(move || run(&worker))?,
            );
        }
        Ok(Self {
            inner,
            threads: Mutex::new(threads),
        })
    }

    /// Opens the database over a simulated disk: file 0 is the database file, 1 and 2 its
    /// journals.
    #[cfg(test)]
    pub(crate) fn open_sim(disk: &super::disk_sim::SimDisk, capacity: u64) -> io::Result<Self> {
        Self::open_disks(disk.file(0), [disk.file(1), disk.file(2)], capacity, None)
    }

    /// Replays and clears the journals of the database file at `path`, if it has any, so that
    /// the file alone holds the database (before it is moved, copied or replaced offline).
    pub fn settle(path: &Path) -> io::Result<()> {
        if !journal_paths(path).iter().any(|p| p.exists()) {
            return Ok(());
        }
        let file = Self::open(path, 0)?;
        let fresh = guard(&file.inner.pending).len == 0;
        file.close()?;
        drop(file);
        if fresh {
            // Nothing but the identity: left empty, as redb expects a file it is to create.
            open_rw(path)?.set_len(0)?;
        }
        Ok(())
    }

    /// Stops the journal thread (once it has written every sealed record) and the
    /// checkpointer.
    fn stop_threads(&self) {
        guard(&self.inner.queue).closing = true;
        self.inner.queue_changed.notify_all();
        let threads = std::mem::take(&mut *guard(&self.threads));
        let mut threads = threads.into_iter();
        if let Some(journal) = threads.next()
            && journal.join().is_err()
        {
            tracing::error!("the journal thread panicked");
        }
        guard(&self.inner.log).closing = true;
        self.inner.log_changed.notify_all();
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("the checkpoint thread panicked");
            }
        }
    }
}

/// Clears a journal (no record survives in it) and makes it at least `capacity` long, written
/// with zeros, so that records later overwrite allocated blocks and their fsync carries no
/// file-size change.
fn prepare(journal: &dyn Disk, capacity: u64) -> io::Result<()> {
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
struct Found {
    magic: &'static [u8; 8],
    /// The identity of the database file it was written for (none in the earlier format).
    id: Option<[u8; 16]>,
    generation: u64,
    /// Where the next record starts.
    next: u64,
}

/// Reads the record at `at` of a journal `len` bytes long into `payload`, if a whole one is
/// there (in the format of `magic` and of `generation`, if given). The header's own checksum
/// is checked before its length is trusted, so a garbage length never sizes a read.
fn read_record(
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
fn read_identity(main: &dyn Disk) -> io::Result<Option<[u8; 16]>> {
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

fn write_identity(main: &dyn Disk, id: &[u8; 16]) -> io::Result<()> {
    let mut block = [0u8; ID_LEN];
    block[..8].copy_from_slice(ID_MAGIC);
    block[8..24].copy_from_slice(id);
    let crc = crc32fast::hash(&block[..24]);
    block[24..28].copy_from_slice(&crc.to_le_bytes());
    main.write_at(&block, ID_AT)
}

/// Whether the file is 4 KiB of zeros but for its identity (created, but not yet by redb).
fn holds_only_identity(main: &dyn Disk) -> io::Result<bool> {
    if main.size()? != ID_AT + ID_LEN as u64 {
        return Ok(false);
    }
    let mut first = vec![0u8; ID_AT as usize];
    main.read_at(&mut first, 0)?;
    Ok(first.iter().all(|b| *b == 0))
}

/// The journals hold records written for another database file, or for this one as it was
/// before a later open: replaying them would corrupt it.
fn foreign_journal() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "the journals beside the database file were written for another database file (or \
         an earlier copy of this one), and are not replayed into it; move the .journal0 and \
         .journal1 files away to open the file as it is, or put back the database file they \
         belong to",
    )
}

fn checksum(generation: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&generation.to_le_bytes());
    hasher.update(&(payload.len() as u64).to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// The checksum of a header's first 28 bytes, kept in its last 4.
fn header_checksum(header: &[u8]) -> u32 {
    crc32fast::hash(&header[..HEADER - 4])
}

fn padded(len: u64) -> u64 {
    len.div_ceil(ALIGN) * ALIGN
}

/// Applies every whole record of both journals to `main`, oldest generation first, one
/// record at a time (a journal can hold far more than the daemon's memory budget). Answers
/// the number of records applied, and the journals from oldest to newest (those without a
/// record first).
fn replay(main: &dyn Disk, journals: &[Box<dyn Disk>; 2]) -> io::Result<(usize, Vec<usize>)> {
    let file_id = read_identity(main)?;
    let mut payload = Vec::new();
    let mut found = Vec::new();
    let mut empty = Vec::new();
    for (i, journal) in journals.iter().enumerate() {
        let len = journal.size()?;
        match read_record(journal.as_ref(), len, 0, None, &mut payload)? {
            Some(first) => {
                // Checked for both journals before anything is applied.
                if first.id.is_some() && first.id != file_id {
                    return Err(foreign_journal());
                }
                found.push((first.generation, i, first.magic, len));
            }
            None => empty.push(i),
        }
    }
    found.sort_by_key(|(generation, ..)| *generation);
    let mut applied = 0;
    for &(generation, i, magic, len) in &found {
        if magic == MAGIC_V1 {
            tracing::warn!("replaying a journal of the earlier format SVJRNL01");
        }
        let journal = journals[i].as_ref();
        let mut at = 0;
        while let Some(record) =
            read_record(journal, len, at, Some((magic, generation)), &mut payload)?
        {
            if record.id.is_some() && record.id != file_id {
                return Err(foreign_journal());
            }
            apply(main, &payload)?;
            applied += 1;
            at = record.next;
        }
    }
    empty.extend(found.iter().map(|(_, i, ..)| *i));
    Ok((applied, empty))
}

/// Writes a record's entries to the database file, in order.
fn apply(main: &dyn Disk, mut payload: &[u8]) -> io::Result<()> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed journal entry");
    while !payload.is_empty() {
        if payload.len() < ENTRY_HEADER {
            return Err(bad());
        }
        let kind = payload[0];
        let offset = u64::from_le_bytes(payload[1..9].try_into().map_err(|_| bad())?);
        let len = u32::from_le_bytes(payload[9..13].try_into().map_err(|_| bad())?) as usize;
        let data = payload
            .get(ENTRY_HEADER..ENTRY_HEADER + len)
            .ok_or_else(bad)?;
        match kind {
            KIND_WRITE => main.write_at(data, offset)?,
            KIND_SET_LEN => main.set_len(offset)?,
            _ => return Err(bad()),
        }
        payload = &payload[ENTRY_HEADER + len..];
    }
    Ok(())
}

fn push_entry(buf: &mut Vec<u8>, kind: u8, offset: u64, data: &[u8]) {
    buf.push(kind);
    buf.extend_from_slice(&offset.to_le_bytes());
    buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
    buf.extend_from_slice(data);
}

impl Inner {
    fn failure(&self) -> Option<String> {
        guard(&self.queue).failed.clone()
    }

    /// Seals the record being filled, appends it to the active journal and fsyncs that: once
    /// this returns, the commit is durable. The record then waits for the journal thread to
    /// write its pages to the database file.
    fn seal(&self) -> io::Result<()> {
        let mut pending = guard(&self.pending);
        if pending.buf.len() == HEADER {
            return self.failure().map_or(Ok(()), |f| Err(io::Error::other(f)));
        }
        let spare = {
            let mut queue = guard(&self.queue);
            while queue.queued_bytes > MAX_QUEUED_BYTES && queue.failed.is_none() {
                queue = wait(&self.queue_changed, queue);
            }
            if let Some(failure) = &queue.failed {
                return Err(io::Error::other(failure.clone()));
            }
            queue.spare.pop().unwrap_or_default()
        };
        let mut record = std::mem::replace(&mut pending.buf, fresh_buffer(spare));
        let seq = pending.seq;
        pending.seq += 1;
        drop(pending);
        let appended = if (record.len() - HEADER) as u64 > MAX_RECORD {
            Err(io::Error::other(format!(
                "a commit of more than {MAX_RECORD} bytes of pages"
            )))
        } else {
            self.append(seq, &mut record)
        };
        if let Err(err) = appended {
            self.fail(&err);
            return Err(err);
        }
        let mut queue = guard(&self.queue);
        queue.queued_bytes += record.len() as u64;
        queue.records.push_back((seq, record));
        self.queue_changed.notify_all();
        Ok(())
    }

    /// Fails every later commit. The journals are kept for the next open to replay.
    fn fail(&self, err: &io::Error) {
        tracing::error!(error = %err, "journal write failed");
        let mut queue = guard(&self.queue);
        queue.failed = Some(format!("journal write failed: {err}"));
        queue.records.clear();
        self.queue_changed.notify_all();
    }

    /// Writes the pages of durable records to the database file, in order, and drops them
    /// from the overlay; until the store closes.
    fn run_apply(&self) {
        let mut batch = Vec::new();
        loop {
            let mut queue = guard(&self.queue);
            while queue.records.is_empty() && !queue.closing && queue.failed.is_none() {
                queue = wait(&self.queue_changed, queue);
            }
            if queue.records.is_empty() || queue.failed.is_some() {
                return;
            }
            batch.extend(queue.records.drain(..));
            drop(queue);
            let last = batch.last().map_or(0, |(seq, _)| *seq);
            let applied = batch
                .iter()
                .try_for_each(|(_, record)| apply(self.main.as_ref(), &record[HEADER..]));
            if let Err(err) = applied {
                self.main_lost.store(true, Ordering::SeqCst);
                self.fail(&err);
                return;
            }
            // The pages are in the database file now: readers find them there.
            self.overlay
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .retain(|_, page| page.record > last);
            let mut queue = guard(&self.queue);
            queue.applied = last;
            for (_, record) in batch.drain(..) {
                queue.queued_bytes -= record.len() as u64;
                if queue.spare.len() < 4 {
                    queue.spare.push(record);
                }
            }
            self.queue_changed.notify_all();
        }
    }

    /// Appends record `seq` to the active journal (switching journals when it is full) and
    /// fsyncs it.
    fn append(&self, seq: u64, record: &mut Vec<u8>) -> io::Result<()> {
        let mut log = guard(&self.log);
        let len = padded(record.len() as u64);
        if log.tail > 0 && log.tail + len > self.capacity {
            // Switch journals once the other one's records are all in the database file.
            while !log.other_free && log.failed.is_none() {
                log = wait(&self.log_changed, log);
            }
            if let Some(failure) = &log.failed {
                return Err(io::Error::other(failure.clone()));
            }
            log.active ^= 1;
            log.generation += 1;
            log.tail = 0;
            log.other_free = false;
            log.checkpoint_due = true;
            log.checkpoint_upto = seq - 1;
            self.log_changed.notify_all();
        }
        let journal = &self.journals[log.active];
        let payload_len = (record.len() - HEADER) as u64;
        let crc = checksum(log.generation, &record[HEADER..]);
        record[..8].copy_from_slice(MAGIC);
        record[8..24].copy_from_slice(&self.id);
        record[24..32].copy_from_slice(&log.generation.to_le_bytes());
        record[32..40].copy_from_slice(&payload_len.to_le_bytes());
        record[40..44].copy_from_slice(&crc.to_le_bytes());
        let header_crc = header_checksum(record);
        record[44..48].copy_from_slice(&header_crc.to_le_bytes());
        let unpadded = record.len();
        record.resize(len as usize, 0);
        let written = journal.write_at(record, log.tail);
        record.truncate(unpadded);
        written?;
        log.tail += len;
        journal.sync()
    }

    /// Fsyncs the database file whenever a journal has been filled, then frees that journal.
    fn run_checkpointer(&self) {
        let mut log = guard(&self.log);
        loop {
            while !log.checkpoint_due && !log.closing {
                log = wait(&self.log_changed, log);
            }
            if log.closing {
                return;
            }
            log.checkpoint_due = false;
            let upto = log.checkpoint_upto;
            drop(log);
            // Every record of the full journal must be in the database file before the fsync.
            let mut queue = guard(&self.queue);
            while queue.applied < upto && queue.failed.is_none() {
                queue = wait(&self.queue_changed, queue);
            }
            let failed = queue.failed.clone();
            drop(queue);
            let synced = match failed {
                Some(failure) => Err(io::Error::other(failure)),
                None => self.main.sync(),
            };
            if let Err(err) = &synced {
                // After a failed fsync the kernel may have dropped the file's dirty pages, so
                // the file can no longer be read for what it was written: every later commit
                // fails at once, and the reopen replays both journals into the file.
                tracing::error!(error = %err, "checkpoint of the database file failed");
                self.main_lost.store(true, Ordering::SeqCst);
                self.fail(&io::Error::other(format!("checkpoint failed: {err}")));
            }
            log = guard(&self.log);
            match synced {
                Ok(()) => log.other_free = true,
                Err(err) => log.failed = Some(format!("checkpoint failed: {err}")),
            }
            self.log_changed.notify_all();
        }
    }
}

impl StorageBackend for JournaledFile {
    fn len(&self) -> io::Result<u64> {
        Ok(guard(&self.inner.pending).len)
    }

    /// Reads the database file, with the pages of commits not yet in it laid over.
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        if self.inner.main_lost.load(Ordering::Relaxed) {
            return Err(io::Error::other(
                "the database file failed to sync and is not read until it is reopened",
            ));
        }
        let end = offset + out.len() as u64;
        // The overlay's pages over this range: (write order, offset, page). The lock is not
        // held across the file read: a page leaves the overlay only once it is in the file,
        // so the file read below finds what a page taken out meanwhile held.
        let mut pages: Vec<(u64, u64, Arc<[u8]>)> = {
            let overlay = self
                .inner
                .overlay
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let from = offset.saturating_sub(self.inner.longest_write.load(Ordering::Relaxed));
            overlay
                .range((from, 0)..(end, 0))
                .filter(|((at, _), page)| at + page.data.len() as u64 > offset)
                .map(|(&(at, order), page)| (order, at, Arc::clone(&page.data)))
                .collect()
        };
        pages.sort_unstable_by_key(|(order, _, _)| *order);
        // From the newest page that covers the whole range on, the file is not needed. (A
        // longer file is made at once in `set_len`, so it covers every page redb reads.)
        let covering = pages
            .iter()
            .rposition(|(_, at, data)| *at <= offset && at + data.len() as u64 >= end);
        match covering {
            Some(newest) => drop(pages.drain(..newest)),
            None => self.inner.main.read_at(out, offset)?,
        }
        for (_, at, data) in pages {
            let start = offset.max(at);
            let stop = end.min(at + data.len() as u64);
            out[(start - offset) as usize..(stop - offset) as usize]
                .copy_from_slice(&data[(start - at) as usize..(stop - at) as usize]);
        }
        Ok(())
    }

    /// A longer file is made at once (a longer file is harmless after a crash); a shorter one
    /// only once the commit that shrinks it is durable.
    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut pending = guard(&self.inner.pending);
        if len > self.inner.main.size()? {
            self.inner.main.set_len(len)?;
        }
        pending.len = len;
        push_entry(&mut pending.buf, KIND_SET_LEN, len, &[]);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.inner.seal()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if offset < ID_AT + ID_LEN as u64 && offset + data.len() as u64 > ID_AT {
            return Err(io::Error::other(
                "redb wrote over the bytes that keep the database file's identity",
            ));
        }
        let mut pending = guard(&self.inner.pending);
        push_entry(&mut pending.buf, KIND_WRITE, offset, data);
        pending.order += 1;
        let page = Overlaid {
            record: pending.seq,
            data: Arc::from(data),
        };
        self.inner
            .longest_write
            .fetch_max(data.len() as u64, Ordering::Relaxed);
        self.inner
            .overlay
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((offset, pending.order), page);
        Ok(())
    }

    /// A clean close: every sealed record is written, the database file is fsynced, and the
    /// journals are cleared. After a failure they are kept, for the next open to replay.
    fn close(&self) -> io::Result<()> {
        self.stop_threads();
        // After a failed sync of the database file, a later one may succeed without writing
        // the pages the failed one lost: the journals are kept for the next open to replay.
        let failed = self.inner.main_lost.load(Ordering::SeqCst)
            || self.inner.failure().is_some()
            || guard(&self.inner.log).failed.is_some();
        let mut result = Ok(());
        if !failed {
            // The inactive journal holds the older records: it is cleared first, so that a
            // crash between the two clears leaves only the newest records, which the next open
            // replays over the synced file harmlessly (the older ones alone would undo them).
            let active = guard(&self.inner.log).active;
            result = self.inner.main.sync().and_then(|()| {
                for i in [active ^ 1, active] {
                    self.inner.journals[i].write_at(&[0u8; ALIGN as usize], 0)?;
                    self.inner.journals[i].sync()?;
                }
                Ok(())
            });
        }
        if let Some(locks) = &self.inner.locks {
            let _ = rustix::fs::flock(&locks.journal0, rustix::fs::FlockOperation::Unlock);
            result = locks.main.close().and(result);
        }
        result
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.main_locks()?.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.main_locks()?.try_lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.main_locks()?.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.main_locks()?.query_lock_range(start, end)
    }
}

impl JournaledFile {
    /// redb's range locks on the database file (unsupported over a simulated disk).
    fn main_locks(&self) -> Result<&FileBackend, BackendError> {
        self.inner
            .locks
            .as_ref()
            .map(|l| &l.main)
            .ok_or(BackendError::Unsupported)
    }
}

impl Drop for JournaledFile {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

#[cfg(test)]
mod crash_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{Database, ReadableDatabase, TableDefinition};
    use std::os::unix::fs::FileExt;

    const PAGE: usize = 4096;
    /// Page 0 holds the file's identity: the tests write from page 1 on.
    const BASE: u64 = PAGE as u64;

    fn page(byte: u8) -> Vec<u8> {
        vec![byte; PAGE]
    }

    fn read_main(path: &Path, offset: u64) -> Vec<u8> {
        let mut out = vec![0u8; PAGE];
        let file = File::open(path).unwrap();
        file.read_exact_at(&mut out, offset).unwrap();
        out
    }

    /// What a machine crash leaves when none of the database file's page-cache writes reached
    /// the disk: the file as it was before them.
    fn lose_unsynced_file_writes(path: &Path, before: &[u8]) {
        std::fs::write(path, before).unwrap();
    }

    #[test]
    fn synced_writes_survive_the_loss_of_the_file_writes_and_unsynced_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let journal = JournaledFile::open(&path, 1 << 20).unwrap();
        journal.set_len(BASE + 3 * PAGE as u64).unwrap();
        journal.sync_data().unwrap();
        let before = std::fs::read(&path).unwrap();
        journal.write(BASE, &page(0xA1)).unwrap();
        journal.sync_data().unwrap();
        journal.write(BASE + PAGE as u64, &page(0xB2)).unwrap();
        journal.write(BASE, &page(0xA3)).unwrap();
        journal.sync_data().unwrap();
        journal.write(BASE + 2 * PAGE as u64, &page(0xC4)).unwrap();
        drop(journal); // a crash: no clean close

        lose_unsynced_file_writes(&path, &before);
        let reopened = JournaledFile::open(&path, 1 << 20).unwrap();
        assert!(
            read_main(&path, BASE) == page(0xA3),
            "the last synced write wins"
        );
        assert!(read_main(&path, BASE + PAGE as u64) == page(0xB2));
        assert!(
            read_main(&path, BASE + 2 * PAGE as u64) == page(0),
            "never synced"
        );
        reopened.close().unwrap();
    }

    #[test]
    fn writes_are_read_back_at_once_but_reach_the_file_only_once_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let journal = JournaledFile::open(&path, 1 << 20).unwrap();
        journal.set_len(BASE + 3 * PAGE as u64).unwrap();
        let mut two = page(0xAA);
        two.extend(page(0xAB));
        journal.write(BASE, &two).unwrap();
        journal.write(BASE + PAGE as u64, &page(0xBB)).unwrap();
        // Read back across both writes, the later one over the earlier.
        let mut out = vec![0u8; 3 * PAGE];
        journal.read(BASE, &mut out).unwrap();
        assert!(out[..PAGE] == page(0xAA)[..]);
        assert!(out[PAGE..2 * PAGE] == page(0xBB)[..]);
        assert!(out[2 * PAGE..] == page(0)[..]);
        assert!(
            read_main(&path, BASE) == page(0),
            "not in the file before it is durable"
        );

        let before = std::fs::read(&path).unwrap();
        journal.sync_data().unwrap();
        // Durable now: a crash at this moment, with none of the file's writes on the disk,
        // keeps the pages (the journal has them).
        let crashed = dir.path().join("crashed");
        copy_disk(&path, Some(&before), &crashed);
        JournaledFile::settle(&crashed).unwrap();
        assert!(read_main(&crashed, BASE) == page(0xAA));
        assert!(read_main(&crashed, BASE + PAGE as u64) == page(0xBB));
        // The pages follow into the file (at the latest when the journal
        // thread stops), and reads see them all along.
        let mut again = vec![0u8; 2 * PAGE];
        journal.read(BASE + PAGE as u64, &mut again).unwrap();
        assert!(again[..PAGE] == page(0xBB)[..]);
        journal.close().unwrap();
        assert!(read_main(&path, BASE) == page(0xAA));
        assert!(read_main(&path, BASE + PAGE as u64) == page(0xBB));
    }

    #[test]
    fn records_left_by_an_earlier_run_are_never_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        // An earlier run: two one-page records, then a clean close, which clears the journal
        // without erasing the second record (at the same offset as a later run's second).
        let journal = JournaledFile::open(&path, 1 << 20).unwrap();
        journal.set_len(BASE + PAGE as u64).unwrap();
        journal.write(BASE, &page(0x11)).unwrap();
        journal.sync_data().unwrap();
        journal.write(BASE, &page(0x22)).unwrap();
        journal.sync_data().unwrap();
        journal.close().unwrap();
        drop(journal);
        // This run: one record, then a machine crash.
        let journal = JournaledFile::open(&path, 1 << 20).unwrap();
        let before = std::fs::read(&path).unwrap();
        journal.write(BASE, &page(0x33)).unwrap();
        journal.sync_data().unwrap();
        drop(journal);
        lose_unsynced_file_writes(&path, &before);
        JournaledFile::settle(&path).unwrap();
        assert!(
            read_main(&path, BASE) == page(0x33),
            "the stale record was replayed"
        );
    }

    #[test]
    fn a_torn_last_record_is_ignored_and_the_ones_before_it_are_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let journal = JournaledFile::open(&path, 1 << 20).unwrap();
        journal.set_len(BASE + 2 * PAGE as u64).unwrap();
        journal.sync_data().unwrap();
        let before = std::fs::read(&path).unwrap();
        journal.write(BASE, &page(0x11)).unwrap();
        journal.sync_data().unwrap();
        journal.write(BASE + PAGE as u64, &page(0x22)).unwrap();
        journal.sync_data().unwrap();
        drop(journal);

        // Tear the third record (the second write): flip a byte of its payload.
        let [j0, _] = journal_paths(&path);
        let file = open_rw(&j0).unwrap();
        let third = ALIGN + padded((HEADER + ENTRY_HEADER + PAGE) as u64) + HEADER as u64 + 100;
        file.write_all_at(&[0x5A], third).unwrap();
        lose_unsynced_file_writes(&path, &before);
        JournaledFile::settle(&path).unwrap();
        assert!(read_main(&path, BASE) == page(0x11));
        assert!(read_main(&path, BASE + PAGE as u64) == page(0));
    }

    #[test]
    fn journals_switch_when_full_and_replay_in_the_order_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        // Every record fills a journal: each sync switches to the other one.
        let journal = JournaledFile::open(&path, ALIGN).unwrap();
        journal.set_len(BASE + PAGE as u64).unwrap();
        journal.sync_data().unwrap();
        let before = std::fs::read(&path).unwrap();
        for byte in 1..=9u8 {
            journal.write(BASE, &page(byte)).unwrap();
            journal.sync_data().unwrap();
        }
        drop(journal);
        lose_unsynced_file_writes(&path, &before);
        JournaledFile::open(&path, ALIGN).unwrap().close().unwrap();
        assert!(read_main(&path, BASE) == page(9));
    }

    #[test]
    fn a_clean_close_leaves_nothing_to_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let journal = JournaledFile::open(&path, 1 << 20).unwrap();
        journal.write(BASE, &page(0x33)).unwrap();
        journal.sync_data().unwrap();
        journal.close().unwrap();
        drop(journal);
        for path in journal_paths(&path) {
            let file = File::open(path).unwrap();
            let len = file.metadata().unwrap().len();
            let first = read_record(&file, len, 0, None, &mut Vec::new());
            assert!(first.unwrap().is_none());
        }
        assert!(read_main(&path, BASE) == page(0x33));
    }

    #[test]
    fn a_second_open_of_the_same_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let first = JournaledFile::open(&path, 1 << 20).unwrap();
        let second = JournaledFile::open(&path, 1 << 20).unwrap_err();
        assert_eq!(second.kind(), io::ErrorKind::WouldBlock);
        first.close().unwrap();
        drop(first);
        JournaledFile::settle(&path).unwrap();
    }

    const T: TableDefinition<u64, &[u8]> = TableDefinition::new("t");

    fn commit_rows(db: &Database, rows: std::ops::Range<u64>) {
        for i in rows {
            let txn = db.begin_write().unwrap();
            txn.open_table(T)
                .unwrap()
                .insert(i, vec![i as u8; 1500].as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
    }

    /// Copies the database file (or `file`, in its place) and its journals to `to`.
    fn copy_disk(path: &Path, file: Option<&[u8]>, to: &Path) {
        match file {
            Some(bytes) => std::fs::write(to, bytes).unwrap(),
            None => drop(std::fs::copy(path, to).unwrap()),
        }
        for (from, to) in journal_paths(path).iter().zip(journal_paths(to)) {
            std::fs::copy(from, to).unwrap();
        }
    }

    fn assert_rows(path: &Path, rows: std::ops::Range<u64>) {
        let db = Database::builder()
            .create_with_backend(JournaledFile::open(path, 1 << 20).unwrap())
            .unwrap();
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(T).unwrap();
        for i in rows {
            let value = table.get(i).unwrap().expect("a committed row is recovered");
            assert!(value.value() == vec![i as u8; 1500].as_slice(), "row {i}");
        }
    }

    /// redb over the journal, after a machine crash: commits made since the database file was
    /// last fsynced are recovered from the journal alone.
    #[test]
    fn redb_commits_are_recovered_from_the_journal_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let open = || {
            Database::builder()
                .create_with_backend(JournaledFile::open(&path, 16 << 20).unwrap())
                .unwrap()
        };
        drop(open());
        let db = open();
        // The file as the open left it (fsynced, with its identity), before any commit.
        let before = std::fs::read(&path).unwrap();
        commit_rows(&db, 0..200);
        // The disk at the crash: the journals as written, and a database file none of whose
        // page-cache writes reached the disk (no checkpoint ran: the journal never filled).
        let crashed = dir.path().join("crashed");
        copy_disk(&path, Some(&before), &crashed);
        drop(db);
        assert_rows(&crashed, 0..200);
    }

    /// redb over small journals that switch and checkpoint many times, after a process crash
    /// (the file holds every write the process made, the journals what they hold).
    #[test]
    fn redb_reopens_after_a_crash_with_journals_switching() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let file = JournaledFile::open(&path, 64 * 1024).unwrap();
        let db = Database::builder().create_with_backend(file).unwrap();
        commit_rows(&db, 0..300);
        let crashed = dir.path().join("crashed");
        copy_disk(&path, None, &crashed);
        drop(db);
        assert_rows(&crashed, 0..300);
    }
}
