//! A page journal beneath redb: a commit is made durable by one sequential append.
//!
//! redb makes a commit durable by writing every page it changed in place and calling
//! `sync_data` on its file. Those pages are scattered over the file, so each commit costs the
//! disk one random write per page, and the flush waits for all of them. [`JournaledFile`] is
//! a redb [`StorageBackend`] that keeps redb's file as it is but changes what `sync_data`
//! means:
//!
//! - every `write` goes to the database file (the OS page cache) and is also appended, with
//!   its offset, to an in-memory list of the writes since the last sync;
//! - `sync_data` writes that list as one checksummed record at the end of the active journal
//!   file, a preallocated file written sequentially, and fsyncs the journal: one sequential
//!   write and one flush per commit, whatever the number of pages;
//! - when the active journal is full, the other one takes over, and a checkpointer thread
//!   fsyncs the database file; after that the full journal's records are no longer needed and
//!   it can be reused. The database file's scattered writes reach the disk in the background,
//!   once per checkpoint for a page rewritten by many commits, and no commit waits for them.
//!
//! On open, the records of both journals are replayed into the database file in the order
//! they were written (generation, then position), the file is fsynced and the journals are
//! cleared; only then does redb see the file. A record is replayed only if it is whole (its
//! checksum matches) and belongs to its file's current generation, so a record torn by a
//! crash, which redb never saw acknowledged, is ignored. After replay the file holds every
//! write up to the last completed `sync_data`, plus possibly some later ones that the OS had
//! already written back: exactly the state a crash leaves a plain file in, which redb's
//! commit protocol is built to recover from.
//!
//! Journal files sit beside the database: `<file>.journal0` and `<file>.journal1`. The first
//! one also carries an exclusive `flock` for as long as the database is open, so that no
//! second process replays a journal under a running daemon.
//!
//! Record layout (integers little-endian), padded with zeros to a multiple of 4 KiB:
//!
//! | size | field |
//! |------|-------|
//! | 8    | magic `SVJRNL01` |
//! | 8    | generation |
//! | 8    | payload length |
//! | 4    | CRC-32 of generation, payload length and payload |
//! | 4    | zero |
//! | n    | payload: entries `kind u8 \| offset u64 \| length u32 \| data`; kind 1 writes `data` at `offset`, kind 2 sets the file length to `offset` |

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};
use std::fs::File;
use std::io;
use std::ops::Bound;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

const MAGIC: &[u8; 8] = b"SVJRNL01";
const HEADER: usize = 32;
const ALIGN: u64 = 4096;
const KIND_WRITE: u8 = 1;
const KIND_SET_LEN: u8 = 2;
const ENTRY_HEADER: usize = 13;

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
    checkpointer: Mutex<Option<JoinHandle<()>>>,
}

struct Inner {
    main: FileBackend,
    journals: [File; 2],
    /// Records are appended until the active journal would pass this length.
    capacity: u64,
    /// Entries written since the last sync, encoded as in a record's payload.
    pending: Mutex<Vec<u8>>,
    log: Mutex<Log>,
    changed: Condvar,
}

struct Log {
    active: usize,
    generation: u64,
    tail: u64,
    /// The inactive journal's records are all in the fsynced database file: it may be reused.
    other_free: bool,
    checkpoint_due: bool,
    closing: bool,
    /// A failed journal write or checkpoint: every later sync fails, until the database is
    /// reopened (and the journals replayed).
    failed: Option<String>,
}

fn lock(mutex: &Mutex<Log>) -> MutexGuard<'_, Log> {
    mutex
        .lock()
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
        let main = FileBackend::new(open_rw(path)?)
            .map_err(|e| io::Error::other(format!("cannot open the database file: {e}")))?;
        let replayed = replay(&main, &journals)?;
        if replayed > 0 {
            tracing::info!(
                records = replayed,
                "journal replayed into the database file"
            );
        }
        main.sync_data()?;
        for journal in &journals {
            prepare(journal, capacity)?;
        }
        let inner = Arc::new(Inner {
            main,
            journals,
            capacity: capacity.max(ALIGN),
            pending: Mutex::new(Vec::new()),
            log: Mutex::new(Log {
                active: 0,
                generation: 1,
                tail: 0,
                other_free: true,
                checkpoint_due: false,
                closing: false,
                failed: None,
            }),
            changed: Condvar::new(),
        });
        let worker = Arc::clone(&inner);
        let checkpointer = std::thread::Builder::new()
            .name("sharevault-checkpoint".into())
            .spawn(move || worker.run_checkpointer())?;
        Ok(Self {
            inner,
            checkpointer: Mutex::new(Some(checkpointer)),
        })
    }

    /// Replays and clears the journals of the database file at `path`, if it has any, so that
    /// the file alone holds the database (before it is moved, copied or replaced offline).
    pub fn settle(path: &Path) -> io::Result<()> {
        if !journal_paths(path).iter().any(|p| p.exists()) {
            return Ok(());
        }
        let file = Self::open(path, 0)?;
        file.close()
    }
}

/// Clears a journal (no record survives in it) and makes it at least `capacity` long, written
/// with zeros, so that records later overwrite allocated blocks and their fsync carries no
/// file-size change.
fn prepare(journal: &File, capacity: u64) -> io::Result<()> {
    let len = journal.metadata()?.len();
    let zeros = vec![0u8; 1 << 20];
    journal.write_all_at(&zeros[..ALIGN as usize], 0)?;
    let mut at = len.max(ALIGN);
    while at < capacity {
        let n = (capacity - at).min(zeros.len() as u64);
        journal.write_all_at(&zeros[..n as usize], at)?;
        at += n;
    }
    journal.sync_all()
}

/// The records of one journal: its generation and payloads, in order.
fn scan(journal: &File) -> io::Result<Option<(u64, Vec<Vec<u8>>)>> {
    let len = journal.metadata()?.len();
    let mut records = Vec::new();
    let mut generation = None;
    let mut at = 0u64;
    let mut header = [0u8; HEADER];
    while at + HEADER as u64 <= len {
        journal.read_exact_at(&mut header, at)?;
        if &header[..8] != MAGIC {
            break;
        }
        let field = |i: usize| u64::from_le_bytes(header[i..i + 8].try_into().unwrap_or([0; 8]));
        let (record_gen, payload_len) = (field(8), field(16));
        let crc = u32::from_le_bytes(header[24..28].try_into().unwrap_or([0; 4]));
        if generation.is_some_and(|g| g != record_gen) || payload_len > len - at - HEADER as u64 {
            break;
        }
        let mut payload = vec![0u8; payload_len as usize];
        journal.read_exact_at(&mut payload, at + HEADER as u64)?;
        if checksum(record_gen, &payload) != crc {
            break;
        }
        generation = Some(record_gen);
        records.push(payload);
        at += padded(HEADER as u64 + payload_len);
    }
    Ok(generation.map(|g| (g, records)))
}

fn checksum(generation: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&generation.to_le_bytes());
    hasher.update(&(payload.len() as u64).to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

fn padded(len: u64) -> u64 {
    len.div_ceil(ALIGN) * ALIGN
}

/// Applies every whole record of both journals to `main`, oldest generation first. Answers
/// the number of records applied.
fn replay(main: &FileBackend, journals: &[File; 2]) -> io::Result<usize> {
    let mut found = Vec::new();
    for journal in journals {
        if let Some(records) = scan(journal)? {
            found.push(records);
        }
    }
    found.sort_by_key(|(generation, _)| *generation);
    let mut applied = 0;
    for (_, records) in found {
        for payload in records {
            apply(main, &payload)?;
            applied += 1;
        }
    }
    Ok(applied)
}

fn apply(main: &FileBackend, mut payload: &[u8]) -> io::Result<()> {
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
            KIND_WRITE => main.write(offset, data)?,
            KIND_SET_LEN => main.set_len(offset)?,
            _ => return Err(bad()),
        }
        payload = &payload[ENTRY_HEADER + len..];
    }
    Ok(())
}

fn push_entry(pending: &mut Vec<u8>, kind: u8, offset: u64, data: &[u8]) {
    pending.push(kind);
    pending.extend_from_slice(&offset.to_le_bytes());
    pending.extend_from_slice(&(data.len() as u32).to_le_bytes());
    pending.extend_from_slice(data);
}

impl Inner {
    fn pending(&self) -> MutexGuard<'_, Vec<u8>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends the writes since the last sync to the journal as one record, and fsyncs it.
    fn sync(&self) -> io::Result<()> {
        let payload = std::mem::take(&mut *self.pending());
        if payload.is_empty() {
            return self.failed();
        }
        let mut log = lock(&self.log);
        let len = padded(HEADER as u64 + payload.len() as u64);
        if log.tail > 0 && log.tail + len > self.capacity {
            // Switch journals once the other one's records are all in the database file.
            while !log.other_free && log.failed.is_none() {
                log = self
                    .changed
                    .wait(log)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            if let Some(failure) = &log.failed {
                return Err(io::Error::other(failure.clone()));
            }
            log.active ^= 1;
            log.generation += 1;
            log.tail = 0;
            log.other_free = false;
            log.checkpoint_due = true;
            self.changed.notify_all();
        }
        if let Some(failure) = &log.failed {
            return Err(io::Error::other(failure.clone()));
        }
        let mut record = Vec::with_capacity(len as usize);
        record.extend_from_slice(MAGIC);
        record.extend_from_slice(&log.generation.to_le_bytes());
        record.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        record.extend_from_slice(&checksum(log.generation, &payload).to_le_bytes());
        record.extend_from_slice(&[0; 4]);
        record.extend_from_slice(&payload);
        record.resize(len as usize, 0);
        let journal = &self.journals[log.active];
        let written = journal
            .write_all_at(&record, log.tail)
            .and_then(|()| journal.sync_data());
        if let Err(err) = written {
            log.failed = Some(format!("journal write failed: {err}"));
            self.changed.notify_all();
            return Err(err);
        }
        log.tail += len;
        Ok(())
    }

    fn failed(&self) -> io::Result<()> {
        match &lock(&self.log).failed {
            Some(failure) => Err(io::Error::other(failure.clone())),
            None => Ok(()),
        }
    }

    /// Fsyncs the database file whenever a journal has been filled, then frees that journal.
    fn run_checkpointer(&self) {
        let mut log = lock(&self.log);
        loop {
            while !log.checkpoint_due && !log.closing {
                log = self
                    .changed
                    .wait(log)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            if log.closing {
                return;
            }
            log.checkpoint_due = false;
            drop(log);
            let synced = self.main.sync_data();
            log = lock(&self.log);
            match synced {
                Ok(()) => log.other_free = true,
                Err(err) => {
                    tracing::error!(error = %err, "checkpoint of the database file failed");
                    log.failed = Some(format!("checkpoint failed: {err}"));
                }
            }
            self.changed.notify_all();
        }
    }
}

impl JournaledFile {
    fn stop_checkpointer(&self) {
        lock(&self.inner.log).closing = true;
        self.inner.changed.notify_all();
        let handle = self
            .checkpointer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!("the checkpoint thread panicked");
        }
    }
}

impl StorageBackend for JournaledFile {
    fn len(&self) -> io::Result<u64> {
        self.inner.main.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.inner.main.read(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.main.set_len(len)?;
        push_entry(&mut self.inner.pending(), KIND_SET_LEN, len, &[]);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.inner.main.write(offset, data)?;
        push_entry(&mut self.inner.pending(), KIND_WRITE, offset, data);
        Ok(())
    }

    /// A clean close: the database file is fsynced, so the journals are cleared. After a
    /// failure they are kept, for the next open to replay.
    fn close(&self) -> io::Result<()> {
        self.stop_checkpointer();
        let failed = lock(&self.inner.log).failed.is_some();
        let mut result = Ok(());
        if !failed {
            result = self.inner.main.sync_data().and_then(|()| {
                for journal in &self.inner.journals {
                    journal.write_all_at(&[0u8; ALIGN as usize], 0)?;
                    journal.sync_data()?;
                }
                Ok(())
            });
        }
        let _ = rustix::fs::flock(&self.inner.journals[0], rustix::fs::FlockOperation::Unlock);
        self.inner.main.close().and(result)
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.main.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.main.try_lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.main.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.main.query_lock_range(start, end)
    }
}

impl Drop for JournaledFile {
    fn drop(&mut self) {
        self.stop_checkpointer();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{Database, ReadableDatabase, TableDefinition};

    const PAGE: usize = 4096;

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
        journal.set_len(3 * PAGE as u64).unwrap();
        journal.sync_data().unwrap();
        let before = std::fs::read(&path).unwrap();
        journal.write(0, &page(0xA1)).unwrap();
        journal.sync_data().unwrap();
        journal.write(PAGE as u64, &page(0xB2)).unwrap();
        journal.write(0, &page(0xA3)).unwrap();
        journal.sync_data().unwrap();
        journal.write(2 * PAGE as u64, &page(0xC4)).unwrap();
        drop(journal); // a crash: no clean close

        lose_unsynced_file_writes(&path, &before);
        let reopened = JournaledFile::open(&path, 1 << 20).unwrap();
        assert!(
            read_main(&path, 0) == page(0xA3),
            "the last synced write wins"
        );
        assert!(read_main(&path, PAGE as u64) == page(0xB2));
        assert!(read_main(&path, 2 * PAGE as u64) == page(0), "never synced");
        reopened.close().unwrap();
    }

    #[test]
    fn a_torn_last_record_is_ignored_and_the_ones_before_it_are_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let journal = JournaledFile::open(&path, 1 << 20).unwrap();
        journal.set_len(2 * PAGE as u64).unwrap();
        journal.sync_data().unwrap();
        let before = std::fs::read(&path).unwrap();
        journal.write(0, &page(0x11)).unwrap();
        journal.sync_data().unwrap();
        journal.write(PAGE as u64, &page(0x22)).unwrap();
        journal.sync_data().unwrap();
        drop(journal);

        // Tear the third record (the second write): flip a byte of its payload.
        let [j0, _] = journal_paths(&path);
        let file = open_rw(&j0).unwrap();
        let third = ALIGN + padded((HEADER + ENTRY_HEADER + PAGE) as u64) + HEADER as u64 + 100;
        file.write_all_at(&[0x5A], third).unwrap();
        lose_unsynced_file_writes(&path, &before);
        JournaledFile::open(&path, 1 << 20)
            .unwrap()
            .close()
            .unwrap();
        assert!(read_main(&path, 0) == page(0x11));
        assert!(read_main(&path, PAGE as u64) == page(0));
    }

    #[test]
    fn journals_switch_when_full_and_replay_in_the_order_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        // Every record fills a journal: each sync switches to the other one.
        let journal = JournaledFile::open(&path, ALIGN).unwrap();
        journal.set_len(PAGE as u64).unwrap();
        journal.sync_data().unwrap();
        let before = std::fs::read(&path).unwrap();
        for byte in 1..=9u8 {
            journal.write(0, &page(byte)).unwrap();
            journal.sync_data().unwrap();
        }
        drop(journal);
        lose_unsynced_file_writes(&path, &before);
        JournaledFile::open(&path, ALIGN).unwrap().close().unwrap();
        assert!(read_main(&path, 0) == page(9));
    }

    #[test]
    fn a_clean_close_leaves_nothing_to_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let journal = JournaledFile::open(&path, 1 << 20).unwrap();
        journal.write(0, &page(0x33)).unwrap();
        journal.sync_data().unwrap();
        journal.close().unwrap();
        drop(journal);
        for path in journal_paths(&path) {
            assert!(scan(&File::open(path).unwrap()).unwrap().is_none());
        }
        assert!(read_main(&path, 0) == page(0x33));
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
        JournaledFile::open(&path, 1 << 20)
            .unwrap()
            .close()
            .unwrap();
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
        let before = std::fs::read(&path).unwrap();
        let db = open();
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
        let db = Database::builder()
            .create_with_backend(JournaledFile::open(&path, 64 * 1024).unwrap())
            .unwrap();
        commit_rows(&db, 0..300);
        let crashed = dir.path().join("crashed");
        copy_disk(&path, None, &crashed);
        drop(db);
        assert_rows(&crashed, 0..300);
    }
}
