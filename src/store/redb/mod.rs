//! The embedded default store: one redb file, written by a single group-commit writer.
//!
//! Writers hand their job to one thread that blocks for the first queued job, takes whatever
//! else is queued (up to [`MAX_BATCH`]), runs them all in one write transaction and commits it
//! with `Durability::Immediate` before answering every waiter. A lone write never waits for a
//! batch to fill; under load one fsync carries many writes. A job that fails (a backend
//! error) aborts the whole transaction and fails every job in it; the database is then
//! reopened, which repairs it.
//!
//! Each [`TableId`] is a typed redb table: per-client tables are keyed by the tuple
//! `(client id, second part)`, names by `&str`, token hashes by bytes (their value is the
//! token's name as `&str`), the audit trail by `u64`.

mod tables;
#[cfg(test)]
mod tests;
mod writer;

use super::journal::JournaledFile;
use super::{Reader, Store, StoreError, TableId, WriteFuture, WriteJob, Writer};
use redb::{Database, ReadableDatabase};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use tables::{RedbReader, Tables, backend};
use tokio::sync::{mpsc, oneshot};
use writer::{Job, run_flusher, run_writer};

/// The most jobs committed in one transaction.
pub const MAX_BATCH: usize = 256;
const QUEUE_DEPTH: usize = 4096;

/// redb's page cache while a snapshot is imported.
const IMPORT_CACHE_BYTES: usize = 32 << 20;

/// Opens the database: the file at a path, or, for fault-injection tests, any redb storage
/// backend. Called again to reopen the database after an I/O error. A commit is durable once
/// redb's `commit` returns (with the journal too: its `sync_data` appends and fsyncs).
pub type Opener = Box<dyn Fn() -> Result<Database, redb::DatabaseError> + Send + Sync>;

/// The open database, shared by readers and the writer. After an I/O error redb refuses every
/// further operation until the database is reopened (which repairs it); the writer does that.
struct Shared {
    db: RwLock<Option<Arc<Database>>>,
    opener: Opener,
    /// The database file, to check the free space of its filesystem.
    path: Option<std::path::PathBuf>,
    /// Writes are refused (and nothing is attempted) while less than this is free, so that
    /// the database never hits a full disk in the middle of a commit.
    min_free_bytes: u64,
    /// A deferred audit event was committed without an fsync and awaits a durable commit.
    unflushed: std::sync::atomic::AtomicBool,
    /// The store is closing: the flusher stops.
    closing: std::sync::atomic::AtomicBool,
    /// Commits, and writes refused at the free-space reserve.
    metrics: crate::metrics::StoreMetrics,
    /// Every durable commit records redb's allocator state (quick-repair), so that an open
    /// after a crash loads it instead of reading the whole file to rebuild it.
    quick_repair: bool,
}

impl Shared {
    fn current(&self) -> Result<Arc<Database>, StoreError> {
        self.db
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or_else(|| StoreError::Backend("the database is being reopened".into()))
    }

    /// Closes the database and opens it again; redb repairs it if a commit failed.
    fn reopen(&self) {
        let mut slot = self
            .db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(mut old) = slot.take() {
            // Readers hold their handle only for the length of a read.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(still_shared) if std::time::Instant::now() < deadline => {
                        old = still_shared;
                        std::thread::sleep(std::time::Duration::from_millis(2));
                    }
                    Err(_) => {
                        tracing::error!("cannot reopen the database: it is still in use");
                        return;
                    }
                }
            }
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match (self.opener)() {
                Ok(db) => {
                    tracing::warn!("database reopened after a failed write");
                    *slot = Some(Arc::new(db));
                    return;
                }
                Err(redb::DatabaseError::DatabaseAlreadyOpen)
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot reopen the database; will retry on the next write");
                    return;
                }
            }
        }
    }

    /// Refuses a write when the disk is nearly full.
    fn check_space(&self) -> Result<(), StoreError> {
        let (Some(path), true) = (&self.path, self.min_free_bytes > 0) else {
            return Ok(());
        };
        let Ok(stat) = rustix::fs::statvfs(path) else {
            return Ok(());
        };
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        if free < self.min_free_bytes {
            return Err(StoreError::Backend(format!(
                "only {free} bytes free on the database's filesystem, below the reserve of {}",
                self.min_free_bytes
            )));
        }
        Ok(())
    }
}

/// The database as [`RedbStore::peek`] read it: only read, never written back.
pub struct Peeked {
    db: PeekedDb,
}

enum PeekedDb {
    ReadOnly(redb::ReadOnlyDatabase),
    /// Repaired in memory (the file needed a repair).
    Repaired(Database),
}

impl Peeked {
    pub fn read(&self) -> Result<Box<dyn Reader + '_>, StoreError> {
        let txn = match &self.db {
            PeekedDb::ReadOnly(db) => db.begin_read(),
            PeekedDb::Repaired(db) => db.begin_read(),
        }
        .map_err(backend)?;
        Ok(Box::new(RedbReader { txn }))
    }
}

/// The overlay of [`RedbStore::peek`], shared by the handles redb is given.
#[derive(Debug)]
struct SharedView(Arc<super::journal::peek::Overlay>);

impl redb::StorageBackend for SharedView {
    fn len(&self) -> std::io::Result<u64> {
        redb::StorageBackend::len(self.0.as_ref())
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        redb::StorageBackend::read(self.0.as_ref(), offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        redb::StorageBackend::set_len(self.0.as_ref(), len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        redb::StorageBackend::write(self.0.as_ref(), offset, data)
    }
    fn close(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The redb-backed [`Store`].
pub struct RedbStore {
    shared: Arc<Shared>,
    queue: RwLock<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

impl RedbStore {
    /// Opens (or creates) the database file and starts the writer thread. Writes are refused
    /// while less than `min_free_bytes` is free on the file's filesystem; redb's page cache
    /// takes at most `cache_bytes`. With `journal_bytes` above zero, commits are made durable
    /// through two journals of that size ([`super::journal`]); with zero, by fsyncing the
    /// database file itself. With `quick_repair`, every durable commit also records redb's
    /// allocator state, so that the open after a crash takes about as long as a clean one.
    pub fn open(
        path: &Path,
        min_free_bytes: u64,
        cache_bytes: usize,
        journal_bytes: u64,
        quick_repair: bool,
        metrics: crate::metrics::StoreMetrics,
    ) -> Result<Self, StoreError> {
        let file = path.to_path_buf();
        let store = Self::open_with(
            Box::new(move || {
                let mut builder = Database::builder();
                builder.set_cache_size(cache_bytes);
                builder.set_repair_callback(|session| {
                    tracing::warn!(
                        progress = %format!("{:.0} %", session.progress() * 100.0),
                        "repairing the database, which was not closed cleanly: redb reads the \
                         whole file to check its pages and rebuild its free-space map"
                    );
                });
                if journal_bytes == 0 {
                    // The journals of an earlier run with them on are replayed first.
                    JournaledFile::settle(&file)
                        .map_err(|e| redb::DatabaseError::Storage(redb::StorageError::Io(e)))?;
                    return builder.create(&file);
                }
                let backend = JournaledFile::open(&file, journal_bytes).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::WouldBlock {
                        redb::DatabaseError::DatabaseAlreadyOpen
                    } else {
                        redb::DatabaseError::Storage(redb::StorageError::Io(e))
                    }
                })?;
                builder.create_with_backend(backend)
            }),
            Some(path),
            min_free_bytes,
            quick_repair,
            metrics,
        )?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| StoreError::Backend(format!("cannot restrict the database file: {e}")))?;
        Ok(store)
    }

    /// Opens the database with `opener` and starts the writer thread.
    pub fn open_with(
        opener: Opener,
        path: Option<&Path>,
        min_free_bytes: u64,
        quick_repair: bool,
        metrics: crate::metrics::StoreMetrics,
    ) -> Result<Self, StoreError> {
        let db = opener().map_err(backend)?;
        let mut txn = db.begin_write().map_err(backend)?;
        txn.set_quick_repair(quick_repair);
        Tables::open(&txn)?;
        txn.commit().map_err(backend)?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(db)),
            opener,
            path: path.map(Path::to_path_buf),
            min_free_bytes,
            unflushed: std::sync::atomic::AtomicBool::new(false),
            closing: std::sync::atomic::AtomicBool::new(false),
            metrics,
            quick_repair,
        });
        let flusher_shared = Arc::clone(&shared);
        let flusher_queue = tx.clone();
        let flusher = std::thread::Builder::new()
            .name("sharevault-flusher".into())
            .spawn(move || run_flusher(&flusher_shared, &flusher_queue))
            .map_err(|e| StoreError::Backend(format!("cannot start the flusher thread: {e}")))?;
        let writer_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("sharevault-writer".into())
            .spawn(move || run_writer(&writer_shared, rx))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            shared,
            queue: RwLock::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            flusher: Mutex::new(Some(flusher)),
        })
    }

    /// A read-only view of the database at `path` as its next open will see it (its
    /// journals replayed in memory), without writing a byte of the data dir; `None` if there
    /// is no database there yet. A file that was not closed cleanly and whose allocator state
    /// was not recorded (quick-repair off) is repaired in memory, which reads the whole file.
    pub fn peek(path: &Path) -> Result<Option<Peeked>, StoreError> {
        let io = |e: std::io::Error| StoreError::Backend(format!("cannot read the database: {e}"));
        let Some(view) = super::journal::peek::peek(path).map_err(io)? else {
            return Ok(None);
        };
        let view = Arc::new(view);
        let db = match Database::builder()
            .set_cache_size(IMPORT_CACHE_BYTES)
            .open_read_only_with_backend(SharedView(Arc::clone(&view)))
        {
            Ok(db) => PeekedDb::ReadOnly(db),
            Err(redb::DatabaseError::RepairAborted) => PeekedDb::Repaired(
                Database::builder()
                    .set_cache_size(IMPORT_CACHE_BYTES)
                    .create_with_backend(SharedView(Arc::clone(&view)))
                    .map_err(backend)?,
            ),
            Err(err) => return Err(backend(err)),
        };
        Ok(Some(Peeked { db }))
    }

    /// Writes `rows` (already verified) into a new database file at `path`, in batches.
    pub fn import(
        path: &Path,
        rows: &mut dyn Iterator<Item = Result<(TableId, super::KeyBuf, Vec<u8>), StoreError>>,
    ) -> Result<u64, StoreError> {
        // Rows arrive in key order, so each commit touches few pages: a small page cache is
        // enough (redb's default is 1 GiB).
        let db = Database::builder()
            .set_cache_size(IMPORT_CACHE_BYTES)
            .create(path)
            .map_err(backend)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| StoreError::Backend(format!("cannot restrict the database file: {e}")))?;
        let mut written = 0u64;
        let mut rows = rows.peekable();
        loop {
            let txn = db.begin_write().map_err(backend)?;
            {
                let mut t = Tables::open(&txn)?;
                let mut in_batch = 0;
                while in_batch < 10_000 {
                    let Some(row) = rows.next() else { break };
                    let (table, key, value) = row?;
                    t.put(table, key.as_key(), &value)?;
                    in_batch += 1;
                    written += 1;
                }
            }
            txn.commit().map_err(backend)?;
            if rows.peek().is_none() {
                break;
            }
        }
        Ok(written)
    }
}

impl Store for RedbStore {
    fn write(&self, job: WriteJob) -> WriteFuture {
        let queue = self
            .queue
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        Box::pin(async move {
            let queue = queue.ok_or(StoreError::Closed)?;
            let (reply, answer) = oneshot::channel();
            queue
                .send(Job { job, reply })
                .await
                .map_err(|_| StoreError::Closed)?;
            answer.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn read(&self) -> Result<Box<dyn Reader + '_>, StoreError> {
        let txn = self.shared.current()?.begin_read().map_err(backend)?;
        Ok(Box::new(RedbReader { txn }))
    }

    fn size_bytes(&self) -> Option<u64> {
        let path = self.shared.path.as_ref()?;
        std::fs::metadata(path).ok().map(|m| m.len())
    }

    fn close(&self) {
        self.shared
            .closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let flusher = self
            .flusher
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(flusher) = flusher
            && flusher.join().is_err()
        {
            tracing::error!("the flusher thread panicked");
        }
        self.queue
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(writer) = writer
            && writer.join().is_err()
        {
            tracing::error!("the writer thread panicked");
        }
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        self.close();
    }
}
