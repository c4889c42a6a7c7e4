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
use format::{
    checksum, foreign_journal, header_checksum, holds_only_identity, padded, prepare, push_entry,
    read_identity, read_record, write_identity,
};
use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};
use replay::{apply, replay};
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
mod format;
pub mod peek;
mod replay;
#[cfg(test)]
mod tests;
mod writer;
