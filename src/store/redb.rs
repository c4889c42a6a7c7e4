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

use super::journal::JournaledFile;
use super::{
    Key, Range, Reader, Store, StoreError, TableId, Visit, WriteClass, WriteFuture, WriteJob,
    Writer, wrong_key,
};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table,
    TableDefinition, WriteTransaction,
};
use std::ops::Bound;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use tokio::sync::{mpsc, oneshot};

/// The most jobs committed in one transaction.
pub const MAX_BATCH: usize = 256;
const QUEUE_DEPTH: usize = 4096;

type ClientKey<'a> = (&'a str, &'a str);
type ClientDef = TableDefinition<'static, ClientKey<'static>, &'static [u8]>;
type NameDef = TableDefinition<'static, &'static str, &'static [u8]>;
const CUSTODIAN: ClientDef = TableDefinition::new("custodian_shares");
const CLIENT: ClientDef = TableDefinition::new("client_shares");
const PAIRS: ClientDef = TableDefinition::new("backup_share_pairs");
const TOKENS: NameDef = TableDefinition::new("tokens");
const TOKEN_HASHES: TableDefinition<&[u8], &str> = TableDefinition::new("token_hashes");
const META: NameDef = TableDefinition::new("meta");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// redb's page cache while a snapshot is imported.
const IMPORT_CACHE_BYTES: usize = 32 << 20;

fn backend(err: impl Into<redb::Error>) -> StoreError {
    StoreError::Backend(err.into().to_string())
}

fn client_def(table: TableId) -> Result<ClientDef, StoreError> {
    match table {
        TableId::Custodian => Ok(CUSTODIAN),
        TableId::Client => Ok(CLIENT),
        TableId::Pairs => Ok(PAIRS),
        _ => Err(wrong_key(table)),
    }
}

fn name_def(table: TableId) -> Result<NameDef, StoreError> {
    match table {
        TableId::Tokens => Ok(TOKENS),
        TableId::Meta => Ok(META),
        _ => Err(wrong_key(table)),
    }
}

fn expect_table(table: TableId, wanted: TableId) -> Result<(), StoreError> {
    if table == wanted {
        Ok(())
    } else {
        Err(wrong_key(table))
    }
}

fn token_name(value: &[u8]) -> Result<&str, StoreError> {
    std::str::from_utf8(value).map_err(|_| StoreError::Corrupt("token hash"))
}

// ---- reads over any redb table, read-only or inside the write transaction ----

fn get_client(
    t: &impl ReadableTable<ClientKey<'static>, &'static [u8]>,
    client: &str,
    second: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(t.get((client, second))
        .map_err(backend)?
        .map(|v| v.value().to_vec()))
}

fn scan_client(
    t: &impl ReadableTable<ClientKey<'static>, &'static [u8]>,
    table: TableId,
    range: Range<'_>,
    visit: &mut Visit<'_>,
) -> Result<(), StoreError> {
    let (rows, only) = match range {
        Range::Client(client) => (t.range((client, "")..), Some(client)),
        Range::After(None) => (t.range::<ClientKey>(..), None),
        Range::After(Some(Key::Client(c, s))) => (
            t.range::<ClientKey>((Bound::Excluded((c, s)), Bound::Unbounded)),
            None,
        ),
        Range::After(Some(_)) => return Err(wrong_key(table)),
    };
    for item in rows.map_err(backend)? {
        let (key, value) = item.map_err(backend)?;
        let (client, second) = key.value();
        if only.is_some_and(|c| c != client) || !visit(Key::Client(client, second), value.value())?
        {
            break;
        }
    }
    Ok(())
}

fn get_name(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(t.get(name).map_err(backend)?.map(|v| v.value().to_vec()))
}

fn scan_name(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    table: TableId,
    range: Range<'_>,
    visit: &mut Visit<'_>,
) -> Result<(), StoreError> {
    let rows = match range {
        Range::After(None) => t.range::<&str>(..),
        Range::After(Some(Key::Name(n))) => t.range::<&str>((Bound::Excluded(n), Bound::Unbounded)),
        _ => return Err(wrong_key(table)),
    };
    for item in rows.map_err(backend)? {
        let (key, value) = item.map_err(backend)?;
        if !visit(Key::Name(key.value()), value.value())? {
            break;
        }
    }
    Ok(())
}

fn get_hash(
    t: &impl ReadableTable<&'static [u8], &'static str>,
    hash: &[u8],
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(t.get(hash)
        .map_err(backend)?
        .map(|v| v.value().as_bytes().to_vec()))
}

fn scan_hash(
    t: &impl ReadableTable<&'static [u8], &'static str>,
    range: Range<'_>,
    visit: &mut Visit<'_>,
) -> Result<(), StoreError> {
    let rows = match range {
        Range::After(None) => t.range::<&[u8]>(..),
        Range::After(Some(Key::Bytes(b))) => {
            t.range::<&[u8]>((Bound::Excluded(b), Bound::Unbounded))
        }
        _ => return Err(wrong_key(TableId::TokenHashes)),
    };
    for item in rows.map_err(backend)? {
        let (key, value) = item.map_err(backend)?;
        if !visit(Key::Bytes(key.value()), value.value().as_bytes())? {
            break;
        }
    }
    Ok(())
}

fn get_seq(
    t: &impl ReadableTable<u64, &'static [u8]>,
    seq: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(t.get(seq).map_err(backend)?.map(|v| v.value().to_vec()))
}

fn scan_seq(
    t: &impl ReadableTable<u64, &'static [u8]>,
    range: Range<'_>,
    visit: &mut Visit<'_>,
) -> Result<(), StoreError> {
    let rows = match range {
        Range::After(None) => t.range::<u64>(..),
        Range::After(Some(Key::Seq(s))) => t.range::<u64>((Bound::Excluded(s), Bound::Unbounded)),
        _ => return Err(wrong_key(TableId::Audit)),
    };
    for item in rows.map_err(backend)? {
        let (key, value) = item.map_err(backend)?;
        if !visit(Key::Seq(key.value()), value.value())? {
            break;
        }
    }
    Ok(())
}

/// A read transaction; tables are opened as they are read.
struct RedbReader {
    txn: redb::ReadTransaction,
}

impl Reader for RedbReader {
    fn get(&self, table: TableId, key: Key<'_>) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = &self.txn;
        match key {
            Key::Client(c, s) => get_client(&txn.open_table(client_def(table)?).map_err(backend)?, c, s),
            Key::Name(n) => get_name(&txn.open_table(name_def(table)?).map_err(backend)?, n),
            Key::Bytes(b) => {
                expect_table(table, TableId::TokenHashes)?;
                get_hash(&txn.open_table(TOKEN_HASHES).map_err(backend)?, b)
            }
            Key::Seq(s) => {
                expect_table(table, TableId::Audit)?;
                get_seq(&txn.open_table(AUDIT).map_err(backend)?, s)
            }
        }
    }

    fn scan(
        &self,
        table: TableId,
        range: Range<'_>,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        let txn = &self.txn;
        match table {
            TableId::Custodian | TableId::Client | TableId::Pairs => scan_client(
                &txn.open_table(client_def(table)?).map_err(backend)?,
                table,
                range,
                visit,
            ),
            TableId::Tokens | TableId::Meta => scan_name(
                &txn.open_table(name_def(table)?).map_err(backend)?,
                table,
                range,
                visit,
            ),
            TableId::TokenHashes => {
                scan_hash(&txn.open_table(TOKEN_HASHES).map_err(backend)?, range, visit)
            }
            TableId::Audit => scan_seq(&txn.open_table(AUDIT).map_err(backend)?, range, visit),
        }
    }

    fn len(&self, table: TableId) -> Result<u64, StoreError> {
        let txn = &self.txn;
        match table {
            TableId::Custodian | TableId::Client | TableId::Pairs => {
                txn.open_table(client_def(table)?).map_err(backend)?.len()
            }
            TableId::Tokens | TableId::Meta => {
                txn.open_table(name_def(table)?).map_err(backend)?.len()
            }
            TableId::TokenHashes => txn.open_table(TOKEN_HASHES).map_err(backend)?.len(),
            TableId::Audit => txn.open_table(AUDIT).map_err(backend)?.len(),
        }
        .map_err(backend)
    }
}

/// The tables of a write transaction.
struct Tables<'t> {
    custodian: Table<'t, ClientKey<'static>, &'static [u8]>,
    client: Table<'t, ClientKey<'static>, &'static [u8]>,
    pairs: Table<'t, ClientKey<'static>, &'static [u8]>,
    tokens: Table<'t, &'static str, &'static [u8]>,
    token_hashes: Table<'t, &'static [u8], &'static str>,
    meta: Table<'t, &'static str, &'static [u8]>,
    audit: Table<'t, u64, &'static [u8]>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            custodian: txn.open_table(CUSTODIAN).map_err(backend)?,
            client: txn.open_table(CLIENT).map_err(backend)?,
            pairs: txn.open_table(PAIRS).map_err(backend)?,
            tokens: txn.open_table(TOKENS).map_err(backend)?,
            token_hashes: txn.open_table(TOKEN_HASHES).map_err(backend)?,
            meta: txn.open_table(META).map_err(backend)?,
            audit: txn.open_table(AUDIT).map_err(backend)?,
        })
    }

    fn per_client(
        &mut self,
        table: TableId,
    ) -> Result<&mut Table<'t, ClientKey<'static>, &'static [u8]>, StoreError> {
        match table {
            TableId::Custodian => Ok(&mut self.custodian),
            TableId::Client => Ok(&mut self.client),
            TableId::Pairs => Ok(&mut self.pairs),
            _ => Err(wrong_key(table)),
        }
    }

    fn named(
        &mut self,
        table: TableId,
    ) -> Result<&mut Table<'t, &'static str, &'static [u8]>, StoreError> {
        match table {
            TableId::Tokens => Ok(&mut self.tokens),
            TableId::Meta => Ok(&mut self.meta),
            _ => Err(wrong_key(table)),
        }
    }

    fn per_client_ref(
        &self,
        table: TableId,
    ) -> Result<&Table<'t, ClientKey<'static>, &'static [u8]>, StoreError> {
        match table {
            TableId::Custodian => Ok(&self.custodian),
            TableId::Client => Ok(&self.client),
            TableId::Pairs => Ok(&self.pairs),
            _ => Err(wrong_key(table)),
        }
    }

    fn named_ref(&self, table: TableId) -> Result<&Table<'t, &'static str, &'static [u8]>, StoreError> {
        match table {
            TableId::Tokens => Ok(&self.tokens),
            TableId::Meta => Ok(&self.meta),
            _ => Err(wrong_key(table)),
        }
    }
}

impl Reader for Tables<'_> {
    fn get(&self, table: TableId, key: Key<'_>) -> Result<Option<Vec<u8>>, StoreError> {
        match key {
            Key::Client(c, s) => get_client(self.per_client_ref(table)?, c, s),
            Key::Name(n) => get_name(self.named_ref(table)?, n),
            Key::Bytes(b) => {
                expect_table(table, TableId::TokenHashes)?;
                get_hash(&self.token_hashes, b)
            }
            Key::Seq(s) => {
                expect_table(table, TableId::Audit)?;
                get_seq(&self.audit, s)
            }
        }
    }

    fn scan(
        &self,
        table: TableId,
        range: Range<'_>,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        match table {
            TableId::Custodian | TableId::Client | TableId::Pairs => {
                scan_client(self.per_client_ref(table)?, table, range, visit)
            }
            TableId::Tokens | TableId::Meta => {
                scan_name(self.named_ref(table)?, table, range, visit)
            }
            TableId::TokenHashes => scan_hash(&self.token_hashes, range, visit),
            TableId::Audit => scan_seq(&self.audit, range, visit),
        }
    }

    fn len(&self, table: TableId) -> Result<u64, StoreError> {
        match table {
            TableId::Custodian | TableId::Client | TableId::Pairs => {
                self.per_client_ref(table)?.len()
            }
            TableId::Tokens | TableId::Meta => self.named_ref(table)?.len(),
            TableId::TokenHashes => self.token_hashes.len(),
            TableId::Audit => self.audit.len(),
        }
        .map_err(backend)
    }
}

impl Writer for Tables<'_> {
    fn put(&mut self, table: TableId, key: Key<'_>, value: &[u8]) -> Result<(), StoreError> {
        match key {
            Key::Client(c, s) => {
                self.per_client(table)?.insert((c, s), value).map_err(backend)?;
            }
            Key::Name(n) => {
                self.named(table)?.insert(n, value).map_err(backend)?;
            }
            Key::Bytes(b) => {
                expect_table(table, TableId::TokenHashes)?;
                self.token_hashes
                    .insert(b, token_name(value)?)
                    .map_err(backend)?;
            }
            Key::Seq(s) => {
                expect_table(table, TableId::Audit)?;
                self.audit.insert(s, value).map_err(backend)?;
            }
        }
        Ok(())
    }

    fn delete(&mut self, table: TableId, key: Key<'_>) -> Result<bool, StoreError> {
        Ok(match key {
            Key::Client(c, s) => self.per_client(table)?.remove((c, s)).map_err(backend)?.is_some(),
            Key::Name(n) => self.named(table)?.remove(n).map_err(backend)?.is_some(),
            Key::Bytes(b) => {
                expect_table(table, TableId::TokenHashes)?;
                self.token_hashes.remove(b).map_err(backend)?.is_some()
            }
            Key::Seq(s) => {
                expect_table(table, TableId::Audit)?;
                self.audit.remove(s).map_err(backend)?.is_some()
            }
        })
    }
}

struct Job {
    job: WriteJob,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

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
    /// database file itself.
    pub fn open(
        path: &Path,
        min_free_bytes: u64,
        cache_bytes: usize,
        journal_bytes: u64,
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
    ) -> Result<Self, StoreError> {
        let db = opener().map_err(backend)?;
        let txn = db.begin_write().map_err(backend)?;
        {
            txn.open_table(CUSTODIAN).map_err(backend)?;
            txn.open_table(CLIENT).map_err(backend)?;
            txn.open_table(PAIRS).map_err(backend)?;
            txn.open_table(TOKENS).map_err(backend)?;
            txn.open_table(TOKEN_HASHES).map_err(backend)?;
            txn.open_table(META).map_err(backend)?;
            txn.open_table(AUDIT).map_err(backend)?;
        }
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

fn is_read_audit(job: &Job) -> bool {
    matches!(job.job.class, WriteClass::ReadAudit { .. })
}

fn all_deferred(jobs: &[Job]) -> bool {
    jobs.iter()
        .all(|j| j.job.class == WriteClass::ReadAudit { deferred: true })
}

/// Makes deferred audit events durable within [`super::DEFERRED_FLUSH`]: when one is waiting,
/// it queues an empty durable write, whose commit carries them to disk.
fn run_flusher(shared: &Shared, queue: &mpsc::Sender<Job>) {
    use std::sync::atomic::Ordering;
    while !shared.closing.load(Ordering::SeqCst) {
        std::thread::sleep(super::DEFERRED_FLUSH / 2);
        if shared.unflushed.swap(false, Ordering::SeqCst) {
            let (reply, _) = oneshot::channel();
            let flush = Job {
                job: WriteJob {
                    class: WriteClass::ReadAudit { deferred: false },
                    apply: Box::new(|_| Ok(())),
                },
                reply,
            };
            if queue.blocking_send(flush).is_err() {
                break;
            }
        }
    }
}

fn run_writer(shared: &Shared, mut queue: mpsc::Receiver<Job>) {
    while let Some(first) = queue.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        // Below the free-space reserve, jobs that add data are refused; audit events of
        // reads, deletions and status updates still go through, so that reads keep working.
        if let Err(low) = shared.check_space() {
            let (refused, allowed): (Vec<Job>, Vec<Job>) = jobs
                .into_iter()
                .partition(|job| job.job.class == WriteClass::AddsData);
            for job in refused {
                let _ = job.reply.send(Err(StoreError::Backend(low.to_string())));
            }
            jobs = allowed;
            if jobs.is_empty() {
                continue;
            }
        }
        // Reads of share material wait for their audit events: those go first, in a commit
        // of their own, so that recovery traffic never waits for a burst of writes to be
        // applied (only for the commit already under way).
        let (reads, writes): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(is_read_audit);
        for group in [reads, writes] {
            if !group.is_empty() {
                commit_group(shared, group, started);
            }
        }
    }
    if shared.unflushed.load(std::sync::atomic::Ordering::SeqCst)
        && let Ok(db) = shared.current()
        && let Ok(txn) = db.begin_write()
        && let Err(err) = txn.commit()
    {
        tracing::error!(error = %err, "the last deferred audit events could not be flushed");
    }
}

/// Commits one group of jobs and answers each.
fn commit_group(shared: &Shared, mut jobs: Vec<Job>, started: std::time::Instant) {
    let deferred = all_deferred(&jobs);
    let committed = commit_or_reopen(shared, &mut jobs);
    if committed.is_ok() {
        // A durable commit also makes every earlier deferred one durable.
        shared
            .unflushed
            .store(deferred, std::sync::atomic::Ordering::SeqCst);
    }
    crate::metrics::global().batch(jobs.len(), started.elapsed(), committed.is_ok());
    match committed {
        Ok(()) => {
            tracing::debug!(
                batch = jobs.len(),
                commit_us = started.elapsed().as_micros() as u64,
                "committed"
            );
            for job in jobs {
                let _ = job.reply.send(Ok(()));
            }
        }
        Err(err) => {
            tracing::error!(batch = jobs.len(), error = %err, "write transaction failed");
            for job in jobs {
                let _ = job.reply.send(Err(StoreError::Backend(err.to_string())));
            }
        }
    }
}

/// Commits a batch; after a failure the database is reopened (and repaired) so that the next
/// batch, and reads, can go on.
fn commit_or_reopen(shared: &Shared, jobs: &mut [Job]) -> Result<(), StoreError> {
    let db = match shared.current() {
        Ok(db) => db,
        Err(_) => {
            shared.reopen();
            shared.current()?
        }
    };
    let committed = commit_batch(&db, jobs);
    if committed.is_err() {
        drop(db);
        shared.reopen();
    }
    committed
}

/// Runs every job in one transaction and commits it. An error means nothing was committed.
fn commit_batch(db: &Database, jobs: &mut [Job]) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(backend)?;
    // A batch of nothing but deferred audit events commits without an fsync; the next
    // durable commit (a write, or the flusher's within DEFERRED_FLUSH) makes it durable.
    let durability = if all_deferred(jobs) {
        Durability::None
    } else {
        Durability::Immediate
    };
    txn.set_durability(durability)
        .map_err(|e| StoreError::Backend(e.to_string()))?;
    {
        let mut tables = Tables::open(&txn)?;
        for job in jobs.iter_mut() {
            (job.job.apply)(&mut tables)?;
        }
    }
    txn.commit().map_err(backend)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{self, AuditEntry, AuditEvent};
    use crate::error::VaultError;
    use crate::vault::records;
    use crate::vault::rules::{self, WriteOp};
    use crate::vault::SealedRecord;
    use redb::backends::FileBackend;
    use redb::{BackendError, StorageBackend};
    use std::ops::Bound;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A file backend whose writes fail with "no space left on device" while `fail` is set, and
    /// whose syncs take `sync_ms` longer.
    #[derive(Debug)]
    struct Flaky {
        inner: FileBackend,
        fail: Arc<AtomicBool>,
        sync_ms: Arc<std::sync::atomic::AtomicU64>,
    }

    fn flaky_opener(
        path: &Path,
        fail: &Arc<AtomicBool>,
        sync_ms: &Arc<std::sync::atomic::AtomicU64>,
    ) -> Opener {
        let (p, f, s) = (path.to_owned(), Arc::clone(fail), Arc::clone(sync_ms));
        Box::new(move || {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&p)
                .map_err(|e| redb::DatabaseError::Storage(redb::StorageError::Io(e)))?;
            let inner = FileBackend::new(file)?;
            Database::builder().create_with_backend(Flaky {
                inner,
                fail: Arc::clone(&f),
                sync_ms: Arc::clone(&s),
            })
        })
    }

    impl Flaky {
        fn check(&self) -> std::io::Result<()> {
            if self.fail.load(Ordering::SeqCst) {
                Err(std::io::Error::from_raw_os_error(28))
            } else {
                Ok(())
            }
        }
    }

    impl StorageBackend for Flaky {
        fn len(&self) -> std::io::Result<u64> {
            self.inner.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.inner.read(offset, out)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.check()?;
            self.inner.set_len(len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            std::thread::sleep(std::time::Duration::from_millis(
                self.sync_ms.load(Ordering::SeqCst),
            ));
            self.check()?;
            self.inner.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.check()?;
            self.inner.write(offset, data)
        }
        fn close(&self) -> std::io::Result<()> {
            self.inner.close()
        }
        fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
            self.inner.try_lock_range(start, end)
        }
        fn try_lock_shared_range(
            &self,
            start: Bound<u64>,
            end: Bound<u64>,
        ) -> Result<bool, BackendError> {
            self.inner.try_lock_shared_range(start, end)
        }
        fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
            self.inner.unlock_range(start, end)
        }
        fn query_lock_range(
            &self,
            start: Bound<u64>,
            end: Bound<u64>,
        ) -> Result<bool, BackendError> {
            self.inner.query_lock_range(start, end)
        }
    }

    fn put(client: &str, share: &[u8]) -> (WriteOp, Option<AuditEntry>) {
        (
            WriteOp::PutCustodianShare {
                client_id: client.into(),
                backup_method: "PASSWORD-SECP256K1".into(),
                record: SealedRecord {
                    created_at_ms: 1,
                    pair_id: Some(format!("pair-{client}")),
                    envelope: share.to_vec(),
                },
            },
            Some(AuditEntry {
                time_ms: 1,
                actor: "webhook".into(),
                action: "backup",
                client_id: client.into(),
                backup_method: "PASSWORD-SECP256K1".into(),
                outcome: None,
            }),
        )
    }

    /// A read's audit event queued behind a write commits before it: a fetch waits for the
    /// commit under way, not for the writes queued beside it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn audit_events_of_reads_commit_ahead_of_queued_writes() {
        let dir = tempfile::tempdir().unwrap();
        let fail = Arc::new(AtomicBool::new(false));
        let sync_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let opener = flaky_opener(&dir.path().join("slow.redb"), &fail, &sync_ms);
        let store = Arc::new(RedbStore::open_with(opener, None, 0).unwrap());
        let spawn = |op: WriteOp, audit: Option<AuditEntry>| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { rules::write(store.as_ref(), op, audit).await })
        };

        // A slow disk holds the writer in its first commit while the others queue up.
        sync_ms.store(300, Ordering::SeqCst);
        let (op, audit) = put("first", b"A");
        let first = spawn(op, audit);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let (op, audit) = put("queued-write", b"B");
        let write = spawn(op, audit);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let read = spawn(
            WriteOp::AuditOnly { deferred: false },
            Some(AuditEntry {
                time_ms: 2,
                actor: "webhook".into(),
                action: "fetch",
                client_id: "reader".into(),
                backup_method: String::new(),
                outcome: Some("ok".into()),
            }),
        );
        for task in [first, write, read] {
            task.await.unwrap().unwrap();
        }
        sync_ms.store(0, Ordering::SeqCst);

        let order: Vec<String> = audit::events(&*store.read().unwrap(), 0, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.unwrap().client_id)
            .collect();
        assert_eq!(order, ["first", "reader", "queued-write"]);
    }

    #[tokio::test]
    async fn a_failed_commit_changes_nothing_and_writes_resume_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flaky.redb");
        let fail = Arc::new(AtomicBool::new(false));
        let sync_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let store = RedbStore::open_with(flaky_opener(&path, &fail, &sync_ms), None, 0).unwrap();
        let (op, audit) = put("acked-before", b"A");
        rules::write(&store, op, audit).await.unwrap();

        fail.store(true, Ordering::SeqCst);
        let (op, audit) = put("during-failure", b"B");
        let err = rules::write(&store, op, audit).await.unwrap_err();
        assert!(matches!(err, VaultError::Unavailable), "{err:?}");

        fail.store(false, Ordering::SeqCst);
        let (op, audit) = put("after-recovery", b"C");
        rules::write(&store, op, audit).await.unwrap();

        let held = |c: &str| {
            records::share(
                &*store.read().unwrap(),
                TableId::Custodian,
                c,
                "PASSWORD-SECP256K1",
            )
            .unwrap()
        };
        assert_eq!(held("acked-before").unwrap().envelope, b"A");
        assert!(
            held("during-failure").is_none(),
            "nothing of the failed write is visible"
        );
        assert_eq!(held("after-recovery").unwrap().envelope, b"C");
        assert!(
            records::pairs(&*store.read().unwrap(), "during-failure")
                .unwrap()
                .is_empty()
        );

        // The audit trail chains the two committed writes and nothing else.
        let events: Vec<_> = audit::events(&*store.read().unwrap(), 0, 10)
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(events.len(), 2);
        let report = audit::verify(
            events.into_iter().map(Ok),
            audit::head(&*store.read().unwrap()).unwrap(),
        );
        assert_eq!(report.problem, None);
        store.close();
    }

    /// Appends the audit events of `n` reads, one after another: `reader-i` is event i + 1.
    async fn read_events(store: &RedbStore, n: u64) {
        for i in 0..n {
            let (_, audit) = put(&format!("reader-{i}"), b"");
            rules::write(store, WriteOp::AuditOnly { deferred: true }, audit)
                .await
                .unwrap();
        }
    }

    /// The chain is checked a page at a time: a trail longer than a page verifies whole, and
    /// an event edited on a later page is found and named.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_audit_chain_is_checked_across_pages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.redb");
        let total = audit::PAGE as u64 * 2 + 100;
        let store = RedbStore::open(&path, 0, 1 << 20, 1 << 20).unwrap();
        read_events(&store, total).await;
        let report = audit::verify_trail(&store).unwrap();
        assert_eq!(report.events, total);
        assert_eq!(report.problem, None);
        store.close();
        drop(store);

        let victim = audit::PAGE as u64 + 50;
        {
            let db = Database::open(&path).unwrap();
            let write = db.begin_write().unwrap();
            {
                let mut table = write.open_table(AUDIT).unwrap();
                let mut event =
                    AuditEvent::decode(table.get(victim).unwrap().unwrap().value()).unwrap();
                event.outcome = "denied".into();
                table.insert(victim, event.encode().as_slice()).unwrap();
            }
            write.commit().unwrap();
        }
        let store = RedbStore::open(&path, 0, 1 << 20, 1 << 20).unwrap();
        let report = audit::verify_trail(&store).unwrap();
        let (at, problem) = report.problem.unwrap();
        assert_eq!(at, victim);
        assert!(problem.contains("edited"), "{problem}");
        assert_eq!(report.events, victim);
        store.close();
    }

    /// A filtered listing looks at a bounded number of events per step, and the steps,
    /// taken until one ends where it started, find every match in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn filtered_audit_listings_step_through_a_long_trail() {
        use crate::audit::SCAN as AUDIT_SCAN;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("listing.redb");
        let store = RedbStore::open(&path, 0, 1 << 20, 1 << 20).unwrap();
        let total = AUDIT_SCAN * 3 + 50;
        read_events(&store, total).await;
        let wanted = ["reader-5", "reader-700", "reader-949"];
        let filter = |e: &AuditEvent| wanted.contains(&e.client_id.as_str());
        let (mut after, mut found, mut steps) = (0, Vec::new(), 0);
        loop {
            let (events, cursor) = audit::find(&store, after, 1024, &filter).unwrap();
            assert!(cursor - after <= AUDIT_SCAN, "a step looked at too much");
            if events.is_empty() && cursor == after {
                break;
            }
            steps += 1;
            found.extend(events.into_iter().map(|e| e.client_id));
            after = cursor;
        }
        assert_eq!(found, wanted);
        assert_eq!(steps, total.div_ceil(AUDIT_SCAN));
        // A limit ends a step at its last match.
        let near = |e: &AuditEvent| e.client_id.starts_with("reader-1");
        let (events, cursor) = audit::find(&store, 0, 2, &near).unwrap();
        let ids: Vec<&str> = events.iter().map(|e| e.client_id.as_str()).collect();
        assert_eq!(ids, ["reader-1", "reader-10"]);
        assert_eq!(cursor, 11);
        store.close();
    }

    #[tokio::test]
    async fn writes_are_refused_below_the_free_space_reserve_and_reads_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reserve.redb");
        let store = RedbStore::open(&path, 0, 1 << 20, 1 << 20).unwrap();
        let (op, audit) = put("kept", b"K");
        rules::write(&store, op, audit).await.unwrap();
        store.close();
        drop(store);

        let store = RedbStore::open(&path, u64::MAX, 1 << 20, 1 << 20).unwrap();
        let refused = WriteJob {
            class: WriteClass::AddsData,
            apply: Box::new(|w| {
                w.put(
                    TableId::Custodian,
                    Key::Client("refused", "PASSWORD-SECP256K1"),
                    b"R",
                )
            }),
        };
        let err = store.write(refused).await.unwrap_err();
        assert!(err.to_string().contains("below the reserve"), "{err}");
        let (op, audit) = put("also-refused", b"R");
        assert!(matches!(
            rules::write(&store, op, audit).await,
            Err(VaultError::Unavailable)
        ));
        // Deletions still go through below the reserve.
        let delete = WriteOp::DeleteClient {
            client_id: "kept".into(),
        };
        rules::write(&store, delete, None).await.unwrap();
        let r = store.read().unwrap();
        for client in ["kept", "refused", "also-refused"] {
            assert!(
                records::share(&*r, TableId::Custodian, client, "PASSWORD-SECP256K1")
                    .unwrap()
                    .is_none(),
                "{client}"
            );
        }
    }
}
