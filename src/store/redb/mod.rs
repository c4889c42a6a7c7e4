//! The embedded default store: one redb file under a logical redo log, written by a single
//! group-commit writer.
//!
//! Writers hand their job to one thread that blocks for the first queued job, takes whatever
//! else is queued (up to [`MAX_BATCH`]), runs them all in one redb write transaction, appends
//! their effects to the log ([`crate::store::wal`]) as one record and fsyncs it, commits the
//! transaction without durability (readers see it at once) and answers every waiter. A lone
//! write never waits for a batch to fill; under load one fsync carries many writes. Every few
//! seconds or MiB of log, a checkpoint commits redb durably and starts the log afresh
//! ([`engine`]). A job that fails (a backend error) abandons the whole transaction and fails
//! every job in it.
//!
//! Each [`TableId`] is a typed redb table: per-client tables are keyed by the tuple
//! `(client id, second part)`, names by `&str`, token hashes by bytes (their value is the
//! token's name as `&str`), the audit trail by `u64`.

#[cfg(test)]
mod crash_tests;
pub(crate) mod engine;
mod tables;
#[cfg(test)]
mod tests;
mod writer;

use super::disk::Disk;
use super::journal::{JournaledFile, journal_paths};
use super::wal::log_path;
use super::{Reader, Store, StoreError, TableId, WriteFuture, WriteJob, Writer};
pub use engine::Checkpoints;
use engine::Engine;
use redb::{Database, ReadableDatabase};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
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
/// backend. Called again to reopen the database after an I/O error.
pub type Opener = Box<dyn Fn() -> Result<Database, redb::DatabaseError> + Send + Sync>;

/// Opens the log's file (after the database, whose lock keeps a second process out).
pub type LogOpener = Box<dyn Fn() -> std::io::Result<Box<dyn Disk>> + Send + Sync>;

/// The open database, shared by readers and the writer. After an I/O error redb refuses every
/// further operation until the database is reopened (which replays the log); the writer does
/// that.
struct Shared {
    db: RwLock<Option<Arc<Database>>>,
    opener: Opener,
    log_opener: LogOpener,
    checkpoints: Checkpoints,
    /// The database file, to check the free space of its filesystem.
    path: Option<std::path::PathBuf>,
    /// Writes are refused (and nothing is attempted) while less than this is free, so that
    /// the database never hits a full disk in the middle of a commit.
    min_free_bytes: u64,
    /// A deferred audit event was logged without an fsync and awaits one.
    unflushed: std::sync::atomic::AtomicBool,
    /// The store is closing: the flusher stops.
    closing: std::sync::atomic::AtomicBool,
    /// Commits, and writes refused at the free-space reserve.
    metrics: crate::metrics::StoreMetrics,
}

/// Opens the database and recovers it from its log.
fn open_and_recover(
    opener: &Opener,
    log_opener: &LogOpener,
    checkpoints: Checkpoints,
) -> Result<(Database, Engine), StoreError> {
    let db =
        opener().map_err(|e| StoreError::Backend(format!("opening the database file: {e}")))?;
    let disk =
        log_opener().map_err(|e| StoreError::Backend(format!("cannot open the log: {e}")))?;
    let engine = Engine::recover(&db, disk, checkpoints)?;
    Ok((db, engine))
}

impl Shared {
    fn current(&self) -> Result<Arc<Database>, StoreError> {
        self.db
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or_else(|| StoreError::Backend("the database is being reopened".into()))
    }

    /// Closes the database and opens it again, replaying the log; `None` if that failed (the
    /// next write tries again).
    fn reopen(&self) -> Option<Engine> {
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
                        return None;
                    }
                }
            }
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match open_and_recover(&self.opener, &self.log_opener, self.checkpoints) {
                Ok((db, engine)) => {
                    tracing::warn!("database reopened after a failed write");
                    *slot = Some(Arc::new(db));
                    return Some(engine);
                }
                Err(StoreError::Backend(err))
                    if err.contains("already open") && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot reopen the database; will retry on the next write");
                    return None;
                }
            }
        }
    }

    /// Bytes free on the database's filesystem, if known.
    fn free_bytes(&self) -> Option<u64> {
        let stat = rustix::fs::statvfs(self.path.as_ref()?).ok()?;
        Some(stat.f_bavail.saturating_mul(stat.f_frsize))
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
    /// Repaired, or given the log's records, in memory.
    InMemory(Database),
}

impl Peeked {
    pub fn read(&self) -> Result<Box<dyn Reader + '_>, StoreError> {
        let txn = match &self.db {
            PeekedDb::ReadOnly(db) => db.begin_read(),
            PeekedDb::InMemory(db) => db.begin_read(),
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

fn open_log_file(path: &Path) -> std::io::Result<Box<dyn Disk>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    Ok(Box::new(file))
}

/// Replays the page journals of an earlier version (`journal0`, `journal1`) into the
/// database file and removes them: the data dir is then in this version's format.
pub fn migrate_page_journals(path: &Path) -> std::io::Result<()> {
    let journals = journal_paths(path);
    if !journals.iter().any(|p| p.exists()) {
        return Ok(());
    }
    tracing::info!("replaying the page journals of an earlier version into the database file");
    JournaledFile::settle(path)?;
    // Newest first is not needed: after the settle both are empty.
    for journal in &journals {
        match std::fs::remove_file(journal) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl RedbStore {
    /// Opens (or creates) the database file and its log and starts the writer thread. The
    /// page journals of an earlier version are replayed into the file first. Writes are
    /// refused while less than `min_free_bytes` is free on the file's filesystem; redb's page
    /// cache takes at most `cache_bytes`.
    pub fn open(
        path: &Path,
        min_free_bytes: u64,
        cache_bytes: usize,
        metrics: crate::metrics::StoreMetrics,
    ) -> Result<Self, StoreError> {
        Self::open_checkpointing(
            path,
            min_free_bytes,
            cache_bytes,
            Checkpoints::default(),
            metrics,
        )
    }

    /// As [`RedbStore::open`], with checkpoints taken as `checkpoints` says.
    pub fn open_checkpointing(
        path: &Path,
        min_free_bytes: u64,
        cache_bytes: usize,
        checkpoints: Checkpoints,
        metrics: crate::metrics::StoreMetrics,
    ) -> Result<Self, StoreError> {
        migrate_page_journals(path)
            .map_err(|e| StoreError::Backend(format!("cannot replay the page journals: {e}")))?;
        let file = path.to_path_buf();
        let log = log_path(path);
        let store = Self::open_with(
            Box::new(move || {
                let mut builder = Database::builder();
                builder.set_cache_size(cache_bytes);
                builder.set_repair_callback(|session| {
                    tracing::warn!(
                        progress = %format!("{:.0} %", session.progress() * 100.0),
                        "repairing the database, which was not checkpointed: redb reads the \
                         whole file to check its pages and rebuild its free-space map"
                    );
                });
                builder.create(&file)
            }),
            Box::new(move || open_log_file(&log)),
            Some(path),
            min_free_bytes,
            checkpoints,
            metrics,
        )?;
        for file in [path.to_path_buf(), log_path(path)] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).map_err(
                |e| StoreError::Backend(format!("cannot restrict the database file: {e}")),
            )?;
        }
        Ok(store)
    }

    /// Opens the database with `opener` and its log with `log_opener`, recovers it, and
    /// starts the writer thread.
    pub fn open_with(
        opener: Opener,
        log_opener: LogOpener,
        path: Option<&Path>,
        min_free_bytes: u64,
        checkpoints: Checkpoints,
        metrics: crate::metrics::StoreMetrics,
    ) -> Result<Self, StoreError> {
        let (db, engine) = open_and_recover(&opener, &log_opener, checkpoints)?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(db)),
            opener,
            log_opener,
            checkpoints,
            path: path.map(Path::to_path_buf),
            min_free_bytes,
            unflushed: std::sync::atomic::AtomicBool::new(false),
            closing: std::sync::atomic::AtomicBool::new(false),
            metrics,
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
            .spawn(move || run_writer(&writer_shared, Some(engine), rx))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            shared,
            queue: RwLock::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            flusher: Mutex::new(Some(flusher)),
        })
    }

    /// Makes the database file at `path` hold the whole database alone (its page journals of
    /// an earlier version and its log replayed into it, the log removed), before it is moved,
    /// copied or replaced offline.
    pub fn settle(path: &Path) -> Result<(), StoreError> {
        migrate_page_journals(path)
            .map_err(|e| StoreError::Backend(format!("cannot replay the page journals: {e}")))?;
        let log = log_path(path);
        if !log.exists() {
            return Ok(());
        }
        let db = Database::builder()
            .set_cache_size(IMPORT_CACHE_BYTES)
            .create(path)
            .map_err(backend)?;
        let disk = open_log_file(&log)
            .map_err(|e| StoreError::Backend(format!("cannot open the log: {e}")))?;
        drop(Engine::recover(&db, disk, Checkpoints::default())?);
        drop(db);
        std::fs::remove_file(&log)
            .map_err(|e| StoreError::Backend(format!("cannot remove the log: {e}")))?;
        Ok(())
    }

    /// A read-only view of the database at `path` as its next open will see it (the page
    /// journals of an earlier version and the records of its log replayed in memory),
    /// without writing a byte of the data dir; `None` if there is no database there yet.
    pub fn peek(path: &Path) -> Result<Option<Peeked>, StoreError> {
        let io = |e: std::io::Error| StoreError::Backend(format!("cannot read the database: {e}"));
        let Some(view) = super::journal::peek::peek(path).map_err(io)? else {
            return Ok(None);
        };
        let view = Arc::new(view);
        let in_memory = || {
            Database::builder()
                .set_cache_size(IMPORT_CACHE_BYTES)
                .create_with_backend(SharedView(Arc::clone(&view)))
                .map_err(backend)
        };
        let log = match std::fs::File::open(log_path(path)) {
            Ok(file) => Some(file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(e)),
        };
        if let Some(log) = log {
            // The log's records after the checkpoint, applied in memory.
            let db = in_memory()?;
            let (records, _) = engine::pending_records(&db, &log)?;
            if !records.is_empty() {
                engine::apply_records(&db, &records, None)?;
            }
            return Ok(Some(Peeked {
                db: PeekedDb::InMemory(db),
            }));
        }
        let db = match Database::builder()
            .set_cache_size(IMPORT_CACHE_BYTES)
            .open_read_only_with_backend(SharedView(Arc::clone(&view)))
        {
            Ok(db) => PeekedDb::ReadOnly(db),
            Err(redb::DatabaseError::RepairAborted) => PeekedDb::InMemory(in_memory()?),
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
