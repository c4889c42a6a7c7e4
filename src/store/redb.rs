//! The embedded default store: one redb file, written by a single group-commit writer.
//!
//! Writers hand their operation to one thread that blocks for the first queued operation,
//! takes whatever else is queued (up to [`MAX_BATCH`]), applies them all in one write
//! transaction and commits it with `Durability::Immediate` (fsync) before answering every
//! waiter. A lone write never waits for a batch to fill; under load one fsync carries many
//! writes. An operation rejected by the vault's rules changes nothing and does not affect the
//! others in its batch; a backend failure aborts the whole transaction and fails every
//! operation in it.

use super::codec;
use super::journal::JournaledFile;
use super::{
    Counts, ExportItem, MethodRecord, PairRecord, Rewrap, SealedRecord, Store, StoreError,
    TokenRecord, WriteFuture, WriteOp, WriteOutcome,
};
use crate::audit::{AuditEntry, AuditEvent};
use crate::error::VaultError;
use crate::pairs::PairStatus;
use crate::snapshot::TableId;
use crate::validate::{MAX_METHODS_PER_CLIENT, split_curve};
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

/// The most operations committed in one transaction.
pub const MAX_BATCH: usize = 256;
const QUEUE_DEPTH: usize = 4096;

type ClientKey<'a> = (&'a str, &'a str);
const CUSTODIAN: TableDefinition<ClientKey, &[u8]> = TableDefinition::new("custodian_shares");
const CLIENT: TableDefinition<ClientKey, &[u8]> = TableDefinition::new("client_shares");
const PAIRS: TableDefinition<ClientKey, &[u8]> = TableDefinition::new("backup_share_pairs");
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
const TOKEN_HASHES: TableDefinition<&[u8], &str> = TableDefinition::new("token_hashes");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const AUDIT_HEAD: &str = "audit_head";
/// redb's page cache while a snapshot is imported.
const IMPORT_CACHE_BYTES: usize = 32 << 20;

/// The last audit event: (sequence number, hash).
type Head = (u64, [u8; 32]);

fn decode_head(bytes: &[u8]) -> Result<Head, StoreError> {
    if bytes.len() != 40 {
        return Err(StoreError::Corrupt("audit head"));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[..8]);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&bytes[8..]);
    Ok((u64::from_be_bytes(seq), hash))
}

fn encode_head(head: &Head) -> Vec<u8> {
    let mut out = head.0.to_be_bytes().to_vec();
    out.extend_from_slice(&head.1);
    out
}

/// Table names as bound into record envelopes.
pub const CUSTODIAN_TABLE: &str = "custodian_shares";
pub const CLIENT_TABLE: &str = "client_shares";

fn backend(err: impl Into<redb::Error>) -> StoreError {
    StoreError::Backend(err.into().to_string())
}

struct Job {
    op: WriteOp,
    audit: Option<AuditEntry>,
    reply: oneshot::Sender<Result<WriteOutcome, StoreError>>,
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
        let head = {
            let txn = db.begin_read().map_err(backend)?;
            let meta = txn.open_table(META).map_err(backend)?;
            let head = meta.get(AUDIT_HEAD).map_err(backend)?;
            head.map(|v| decode_head(v.value())).transpose()?
        };
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
            .spawn(move || run_writer(&writer_shared, rx, Some(head.unwrap_or((0, [0; 32])))))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            shared,
            queue: RwLock::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            flusher: Mutex::new(Some(flusher)),
        })
    }

    /// Writes `records` (already verified) into a new database file at `path`, in batches.
    pub fn import(
        path: &Path,
        records: &mut dyn Iterator<Item = Result<(TableId, Vec<u8>, Vec<u8>), StoreError>>,
    ) -> Result<u64, StoreError> {
        // Records arrive in key order, so each commit touches few pages: a small page cache
        // is enough (redb's default is 1 GiB).
        let db = Database::builder()
            .set_cache_size(IMPORT_CACHE_BYTES)
            .create(path)
            .map_err(backend)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| StoreError::Backend(format!("cannot restrict the database file: {e}")))?;
        let mut written = 0u64;
        let mut records = records.peekable();
        loop {
            let txn = db.begin_write().map_err(backend)?;
            {
                let mut t = Tables::open(&txn)?;
                let mut in_batch = 0;
                while in_batch < 10_000 {
                    let Some(record) = records.next() else { break };
                    let (table, key, value) = record?;
                    t.import(table, &key, &value)?;
                    in_batch += 1;
                    written += 1;
                }
            }
            txn.commit().map_err(backend)?;
            if records.peek().is_none() {
                break;
            }
        }
        Ok(written)
    }

    fn read(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.shared.current()?.begin_read().map_err(backend)
    }

    fn records_of(
        &self,
        def: TableDefinition<ClientKey, &[u8]>,
        client_id: &str,
    ) -> Result<Vec<MethodRecord>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(def).map_err(backend)?;
        client_rows(&table, client_id)?
            .into_iter()
            .map(|(method, bytes)| {
                Ok(MethodRecord {
                    backup_method: method,
                    record: codec::decode_record(&bytes)?,
                })
            })
            .collect()
    }

    fn record(
        &self,
        def: TableDefinition<ClientKey, &[u8]>,
        client_id: &str,
        backup_method: &str,
    ) -> Result<Option<SealedRecord>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(def).map_err(backend)?;
        let value = table.get((client_id, backup_method)).map_err(backend)?;
        value.map(|v| codec::decode_record(v.value())).transpose()
    }
}

/// Rows of one client, as (second key part, value bytes).
fn client_rows(
    table: &impl ReadableTable<ClientKey<'static>, &'static [u8]>,
    client_id: &str,
) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let mut rows = Vec::new();
    for item in table.range((client_id, "")..).map_err(backend)? {
        let (key, value) = item.map_err(backend)?;
        let (client, second) = key.value();
        if client != client_id {
            break;
        }
        rows.push((second.to_owned(), value.value().to_vec()));
    }
    Ok(rows)
}

/// Called after a record was inserted under a method its client did not hold: when that
/// makes more than [`MAX_METHODS_PER_CLIENT`], removes it again (the table is as it was) and
/// refuses the write. Portal has a handful of backup methods, two curves each; the limit only
/// keeps one client's records, and so one fetch, bounded.
fn within_method_limit(
    table: &mut Table<'_, ClientKey<'static>, &'static [u8]>,
    client_id: &str,
    backup_method: &str,
    what: &str,
) -> Result<(), StoreError> {
    let mut held = 0;
    for item in table.range((client_id, "")..).map_err(backend)? {
        let (key, _) = item.map_err(backend)?;
        if key.value().0 != client_id || held > MAX_METHODS_PER_CLIENT {
            break;
        }
        held += 1;
    }
    if held <= MAX_METHODS_PER_CLIENT {
        return Ok(());
    }
    table.remove((client_id, backup_method)).map_err(backend)?;
    Err(StoreError::Rejected(VaultError::FailedPrecondition(
        format!(
            "a client may hold at most {MAX_METHODS_PER_CLIENT} {what}, one per backup method, \
             and this one already holds that many: reuse a method or delete the client first"
        ),
    )))
}

impl Store for RedbStore {
    fn write(&self, op: WriteOp, audit: Option<AuditEntry>) -> WriteFuture {
        let queue = self
            .queue
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        Box::pin(async move {
            let queue = queue.ok_or(StoreError::Closed)?;
            let (tx, rx) = oneshot::channel();
            let job = Job {
                op,
                audit,
                reply: tx,
            };
            queue.send(job).await.map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn custodian_shares(&self, client_id: &str) -> Result<Vec<MethodRecord>, StoreError> {
        self.records_of(CUSTODIAN, client_id)
    }

    fn custodian_share(
        &self,
        client_id: &str,
        backup_method: &str,
    ) -> Result<Option<SealedRecord>, StoreError> {
        self.record(CUSTODIAN, client_id, backup_method)
    }

    fn client_shares(&self, client_id: &str) -> Result<Vec<MethodRecord>, StoreError> {
        self.records_of(CLIENT, client_id)
    }

    fn client_share(
        &self,
        client_id: &str,
        backup_method: &str,
    ) -> Result<Option<SealedRecord>, StoreError> {
        self.record(CLIENT, client_id, backup_method)
    }

    fn pairs(&self, client_id: &str) -> Result<Vec<PairRecord>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(PAIRS).map_err(backend)?;
        client_rows(&table, client_id)?
            .into_iter()
            .map(|(id, bytes)| codec::decode_pair(&id, &bytes))
            .collect()
    }

    fn token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError> {
        let txn = self.read()?;
        let hashes = txn.open_table(TOKEN_HASHES).map_err(backend)?;
        let Some(name) = hashes.get(hash.as_slice()).map_err(backend)? else {
            return Ok(None);
        };
        let tokens = txn.open_table(TOKENS).map_err(backend)?;
        let value = tokens.get(name.value()).map_err(backend)?;
        value
            .map(|v| codec::decode_token(name.value(), v.value()))
            .transpose()
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(TOKENS).map_err(backend)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(backend)? {
            let (name, value) = item.map_err(backend)?;
            out.push(codec::decode_token(name.value(), value.value())?);
        }
        Ok(out)
    }

    fn counts(&self) -> Result<Counts, StoreError> {
        let txn = self.read()?;
        let len = |def: TableDefinition<ClientKey, &[u8]>| -> Result<u64, StoreError> {
            txn.open_table(def).map_err(backend)?.len().map_err(backend)
        };
        Ok(Counts {
            custodian_shares: len(CUSTODIAN)?,
            client_shares: len(CLIENT)?,
            backup_share_pairs: len(PAIRS)?,
            tokens: txn
                .open_table(TOKENS)
                .map_err(backend)?
                .len()
                .map_err(backend)?,
        })
    }

    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(META).map_err(backend)?;
        Ok(table
            .get(name)
            .map_err(backend)?
            .map(|v| v.value().to_vec()))
    }

    fn audit_events(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Result<AuditEvent, u64>>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(AUDIT).map_err(backend)?;
        let mut out = Vec::new();
        for item in table
            .range(after.saturating_add(1)..)
            .map_err(backend)?
            .take(limit)
        {
            let (seq, value) = item.map_err(backend)?;
            out.push(AuditEvent::decode(value.value()).ok_or(seq.value()));
        }
        Ok(out)
    }

    fn audit_head(&self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        self.meta(AUDIT_HEAD)?.map(|v| decode_head(&v)).transpose()
    }

    fn sealed_records(
        &self,
        table: TableId,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<super::SealedRow>, StoreError> {
        let def = match table {
            TableId::Custodian => CUSTODIAN,
            TableId::Client => CLIENT,
            _ => return Ok(Vec::new()),
        };
        let txn = self.read()?;
        let table = txn.open_table(def).map_err(backend)?;
        let range = match after {
            Some(key) => table.range::<ClientKey>((Bound::Excluded(key), Bound::Unbounded)),
            None => table.range::<ClientKey>(..),
        }
        .map_err(backend)?;
        let mut out = Vec::new();
        for item in range.take(limit) {
            let (key, value) = item.map_err(backend)?;
            let (client, method) = key.value();
            out.push((
                client.to_owned(),
                method.to_owned(),
                codec::decode_record(value.value())?,
            ));
        }
        Ok(out)
    }

    fn export(
        &self,
        visit: &mut dyn FnMut(ExportItem<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let txn = self.read()?;
        let client_tables = [
            (
                TableId::Custodian,
                txn.open_table(CUSTODIAN).map_err(backend)?,
            ),
            (TableId::Client, txn.open_table(CLIENT).map_err(backend)?),
            (TableId::Pairs, txn.open_table(PAIRS).map_err(backend)?),
        ];
        let tokens = txn.open_table(TOKENS).map_err(backend)?;
        let hashes = txn.open_table(TOKEN_HASHES).map_err(backend)?;
        let meta = txn.open_table(META).map_err(backend)?;
        let audit = txn.open_table(AUDIT).map_err(backend)?;
        let mut counts = [0u64; 7];
        for (i, (_, table)) in client_tables.iter().enumerate() {
            counts[i] = table.len().map_err(backend)?;
        }
        counts[3] = tokens.len().map_err(backend)?;
        counts[4] = hashes.len().map_err(backend)?;
        counts[5] = meta.len().map_err(backend)?;
        counts[6] = audit.len().map_err(backend)?;
        visit(ExportItem::Counts(counts))?;
        for (id, table) in &client_tables {
            for item in table.iter().map_err(backend)? {
                let (key, value) = item.map_err(backend)?;
                let (client, second) = key.value();
                let key = crate::snapshot::client_key(client, second);
                visit(ExportItem::Record(*id, &key, value.value()))?;
            }
        }
        for item in tokens.iter().map_err(backend)? {
            let (key, value) = item.map_err(backend)?;
            visit(ExportItem::Record(
                TableId::Tokens,
                key.value().as_bytes(),
                value.value(),
            ))?;
        }
        for item in hashes.iter().map_err(backend)? {
            let (key, value) = item.map_err(backend)?;
            visit(ExportItem::Record(
                TableId::TokenHashes,
                key.value(),
                value.value().as_bytes(),
            ))?;
        }
        for item in meta.iter().map_err(backend)? {
            let (key, value) = item.map_err(backend)?;
            visit(ExportItem::Record(
                TableId::Meta,
                key.value().as_bytes(),
                value.value(),
            ))?;
        }
        for item in audit.iter().map_err(backend)? {
            let (key, value) = item.map_err(backend)?;
            visit(ExportItem::Record(
                TableId::Audit,
                &key.value().to_be_bytes(),
                value.value(),
            ))?;
        }
        Ok(())
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

/// Makes deferred audit events durable within [`super::DEFERRED_FLUSH`]: when one is waiting,
/// it queues an empty durable write, whose commit carries them to disk.
fn run_flusher(shared: &Shared, queue: &mpsc::Sender<Job>) {
    use std::sync::atomic::Ordering;
    while !shared.closing.load(Ordering::SeqCst) {
        std::thread::sleep(super::DEFERRED_FLUSH / 2);
        if shared.unflushed.swap(false, Ordering::SeqCst) {
            let (reply, _) = oneshot::channel();
            let flush = Job {
                op: WriteOp::AuditOnly { deferred: false },
                audit: None,
                reply,
            };
            if queue.blocking_send(flush).is_err() {
                break;
            }
        }
    }
}

/// `head` is the audit head as last committed; None when it must be read from the database
/// again (after a reopen, which may have replayed a commit whose fsync reported a failure).
fn run_writer(shared: &Shared, mut queue: mpsc::Receiver<Job>, mut head: Option<Head>) {
    while let Some(first) = queue.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        // Below the free-space reserve, writes that add data are refused; audit events of
        // reads, deletions and status updates still go through, so that reads keep working.
        if let Err(low) = shared.check_space() {
            let (allowed, refused): (Vec<Job>, Vec<Job>) =
                jobs.into_iter().partition(|job| !job.op.adds_data());
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
        let (reads, writes): (Vec<Job>, Vec<Job>) = jobs
            .into_iter()
            .partition(|job| matches!(job.op, WriteOp::AuditOnly { .. }));
        for group in [reads, writes] {
            if !group.is_empty() {
                commit_group(shared, group, &mut head, started);
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
fn commit_group(
    shared: &Shared,
    jobs: Vec<Job>,
    head: &mut Option<Head>,
    started: std::time::Instant,
) {
    let deferred = all_deferred(&jobs);
    let committed = commit_or_reopen(shared, &jobs, head);
    if committed.is_ok() {
        // A durable commit also makes every earlier deferred one durable.
        shared
            .unflushed
            .store(deferred, std::sync::atomic::Ordering::SeqCst);
    }
    crate::metrics::global().batch(jobs.len(), started.elapsed(), committed.is_ok());
    match committed {
        Ok(results) => {
            tracing::debug!(
                batch = jobs.len(),
                commit_us = started.elapsed().as_micros() as u64,
                "committed"
            );
            for (job, result) in jobs.into_iter().zip(results) {
                let _ = job.reply.send(result);
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

type BatchResult = (Vec<Result<WriteOutcome, StoreError>>, Head);

fn all_deferred(jobs: &[Job]) -> bool {
    jobs.iter()
        .all(|j| matches!(j.op, WriteOp::AuditOnly { deferred: true }))
}

/// Commits a batch; after a failure the database is reopened (and repaired) so that the next
/// batch, and reads, can go on. A failed commit may still have reached the disk (its fsync
/// failed after the data was written), so after a reopen the audit head is read again from
/// the database rather than kept from memory.
fn commit_or_reopen(
    shared: &Shared,
    jobs: &[Job],
    head: &mut Option<Head>,
) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError> {
    let db = match shared.current() {
        Ok(db) => db,
        Err(_) => {
            *head = None;
            shared.reopen();
            shared.current()?
        }
    };
    let start = match *head {
        Some(start) => start,
        None => {
            let txn = db.begin_read().map_err(backend)?;
            let meta = txn.open_table(META).map_err(backend)?;
            let stored = meta.get(AUDIT_HEAD).map_err(backend)?;
            let start = stored
                .map(|v| decode_head(v.value()))
                .transpose()?
                .unwrap_or((0, [0; 32]));
            *head = Some(start);
            start
        }
    };
    match commit_batch(&db, jobs, start) {
        Ok((results, new_head)) => {
            *head = Some(new_head);
            Ok(results)
        }
        Err(err) => {
            drop(db);
            *head = None;
            shared.reopen();
            Err(err)
        }
    }
}

/// Applies every job, and appends its audit event, in one transaction. The outer error means
/// nothing was committed (and the audit head stays where it was).
fn commit_batch(db: &Database, jobs: &[Job], mut head: Head) -> Result<BatchResult, StoreError> {
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
    let mut results = Vec::with_capacity(jobs.len());
    {
        let mut tables = Tables::open(&txn)?;
        let start = head;
        for job in jobs {
            let result = tables.apply(&job.op);
            if let Err(StoreError::Backend(detail)) = &result {
                return Err(StoreError::Backend(detail.clone()));
            }
            if let Some(entry) = &job.audit {
                let outcome = match (&entry.outcome, &result) {
                    (Some(outcome), _) => outcome.as_str(),
                    (None, Ok(_)) => "ok",
                    (None, Err(StoreError::Rejected(e))) => e.outcome(),
                    (None, Err(_)) => "error",
                };
                let event = AuditEvent::chain(entry, outcome, head.0, head.1);
                tables
                    .audit
                    .insert(event.seq, event.encode().as_slice())
                    .map_err(backend)?;
                head = (event.seq, event.hash);
            }
            results.push(result);
        }
        if head != start {
            tables
                .meta
                .insert(AUDIT_HEAD, encode_head(&head).as_slice())
                .map_err(backend)?;
        }
    }
    txn.commit().map_err(backend)?;
    Ok((results, head))
}

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

    fn import(&mut self, table: TableId, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let bad = || StoreError::Corrupt("snapshot key");
        let text = |b: &[u8]| std::str::from_utf8(b).map(str::to_owned).map_err(|_| bad());
        match table {
            TableId::Custodian | TableId::Client | TableId::Pairs => {
                let (client, second) = crate::snapshot::split_client_key(key).ok_or_else(bad)?;
                let t = match table {
                    TableId::Custodian => &mut self.custodian,
                    TableId::Client => &mut self.client,
                    _ => &mut self.pairs,
                };
                t.insert((client, second), value).map_err(backend)?;
            }
            TableId::Tokens => {
                self.tokens
                    .insert(text(key)?.as_str(), value)
                    .map_err(backend)?;
            }
            TableId::TokenHashes => {
                self.token_hashes
                    .insert(key, text(value)?.as_str())
                    .map_err(backend)?;
            }
            TableId::Meta => {
                self.meta
                    .insert(text(key)?.as_str(), value)
                    .map_err(backend)?;
            }
            TableId::Audit => {
                let seq = u64::from_be_bytes(key.try_into().map_err(|_| bad())?);
                self.audit.insert(seq, value).map_err(backend)?;
            }
        }
        Ok(())
    }

    /// Applies one operation. Every check happens before the first change, so a rejected
    /// operation leaves the transaction as it found it.
    fn apply(&mut self, op: &WriteOp) -> Result<WriteOutcome, StoreError> {
        match op {
            WriteOp::PutCustodianShare {
                client_id,
                backup_method,
                record,
            } => self.put_custodian(client_id, backup_method, record),
            WriteOp::PutClientShare {
                client_id,
                backup_method,
                record,
            } => self.put_client(client_id, backup_method, record),
            WriteOp::DeleteClientShare {
                client_id,
                backup_method,
                now_ms,
            } => self.delete_client_share(client_id, backup_method, *now_ms),
            WriteOp::UpdatePairs {
                client_id,
                ids,
                status,
                now_ms,
            } => self.update_pairs(client_id, ids, *status, *now_ms),
            WriteOp::DeleteClient { client_id } => self.delete_client(client_id),
            WriteOp::CreateToken(token) => self.create_token(token),
            WriteOp::RevokeToken { name } => self.revoke_token(name),
            WriteOp::AuditOnly { .. } => Ok(WriteOutcome::Done),
            WriteOp::Meta { set, remove } => {
                for (name, value) in set {
                    self.meta
                        .insert(name.as_str(), value.as_slice())
                        .map_err(backend)?;
                }
                for name in remove {
                    self.meta.remove(name.as_str()).map_err(backend)?;
                }
                Ok(WriteOutcome::Done)
            }
            WriteOp::Rewrap(items) => self.rewrap(items),
        }
    }

    fn pairs_of(&self, client_id: &str) -> Result<Vec<PairRecord>, StoreError> {
        client_rows(&self.pairs, client_id)?
            .into_iter()
            .map(|(id, bytes)| codec::decode_pair(&id, &bytes))
            .collect()
    }

    fn put_pair(&mut self, client_id: &str, pair: &PairRecord) -> Result<(), StoreError> {
        self.pairs
            .insert(
                (client_id, pair.id.as_str()),
                codec::encode_pair(pair).as_slice(),
            )
            .map_err(backend)?;
        Ok(())
    }

    fn put_custodian(
        &mut self,
        client_id: &str,
        backup_method: &str,
        record: &SealedRecord,
    ) -> Result<WriteOutcome, StoreError> {
        let old = self
            .custodian
            .insert(
                (client_id, backup_method),
                codec::encode_record(record).as_slice(),
            )
            .map_err(backend)?
            .map(|v| codec::record_pair_id(v.value()).map(|p| p.map(str::to_owned)))
            .transpose()?;
        if old.is_none() {
            within_method_limit(
                &mut self.custodian,
                client_id,
                backup_method,
                "custodian shares",
            )?;
        }
        if let Some(old_pair) = old.flatten()
            && Some(&old_pair) != record.pair_id.as_ref()
        {
            self.pairs
                .remove((client_id, old_pair.as_str()))
                .map_err(backend)?;
        }
        if let Some(id) = &record.pair_id {
            let pair = PairRecord {
                id: id.clone(),
                backup_method: backup_method.to_owned(),
                status: PairStatus::StoredCustodianBackupShare,
                created_at_ms: record.created_at_ms,
                updated_at_ms: record.created_at_ms,
            };
            self.put_pair(client_id, &pair)?;
        }
        Ok(WriteOutcome::Done)
    }

    fn put_client(
        &mut self,
        client_id: &str,
        backup_method: &str,
        record: &SealedRecord,
    ) -> Result<WriteOutcome, StoreError> {
        let replaced = self
            .client
            .insert(
                (client_id, backup_method),
                codec::encode_record(record).as_slice(),
            )
            .map_err(backend)?
            .is_some();
        if !replaced {
            within_method_limit(&mut self.client, client_id, backup_method, "client shares")?;
        }
        let mut completed = Vec::new();
        for mut pair in self.pairs_of(client_id)? {
            if split_curve(&pair.backup_method).0 == backup_method {
                if pair.status != PairStatus::StoredClientBackupShare {
                    pair.status = PairStatus::StoredClientBackupShare;
                    pair.updated_at_ms = record.created_at_ms;
                    self.put_pair(client_id, &pair)?;
                }
                completed.push(pair.id);
            }
        }
        Ok(WriteOutcome::PairsCompleted(completed))
    }

    fn delete_client_share(
        &mut self,
        client_id: &str,
        backup_method: &str,
        now_ms: u64,
    ) -> Result<WriteOutcome, StoreError> {
        let removed = self
            .client
            .remove((client_id, backup_method))
            .map_err(backend)?
            .is_some();
        if removed {
            for mut pair in self.pairs_of(client_id)? {
                if split_curve(&pair.backup_method).0 == backup_method
                    && pair.status == PairStatus::StoredClientBackupShare
                {
                    pair.status = PairStatus::StoredClientBackupShareKey;
                    pair.updated_at_ms = now_ms;
                    self.put_pair(client_id, &pair)?;
                }
            }
        }
        Ok(WriteOutcome::Deleted(removed))
    }

    fn update_pairs(
        &mut self,
        client_id: &str,
        ids: &[String],
        status: PairStatus,
        now_ms: u64,
    ) -> Result<WriteOutcome, StoreError> {
        let mut changed = Vec::with_capacity(ids.len());
        for id in ids {
            let pair = self
                .pairs
                .get((client_id, id.as_str()))
                .map_err(backend)?
                .map(|v| codec::decode_pair(id, v.value()))
                .transpose()?
                .ok_or_else(|| {
                    StoreError::Rejected(VaultError::NotFound(format!(
                        "no backup share pair {id} for this client"
                    )))
                })?;
            let method = split_curve(&pair.backup_method).0;
            let held = self
                .client
                .get((client_id, method))
                .map_err(backend)?
                .is_some();
            pair.status
                .check_update(status, held)
                .map_err(StoreError::Rejected)?;
            changed.push(pair);
        }
        for mut pair in changed {
            if pair.status != status {
                pair.status = status;
                pair.updated_at_ms = now_ms;
                self.put_pair(client_id, &pair)?;
            }
        }
        Ok(WriteOutcome::Done)
    }

    fn delete_client(&mut self, client_id: &str) -> Result<WriteOutcome, StoreError> {
        let mut counts = [0u64; 3];
        for (i, table) in [&mut self.custodian, &mut self.client, &mut self.pairs]
            .into_iter()
            .enumerate()
        {
            for (second, _) in client_rows(table, client_id)? {
                table
                    .remove((client_id, second.as_str()))
                    .map_err(backend)?;
                counts[i] += 1;
            }
        }
        Ok(WriteOutcome::ClientDeleted {
            custodian_shares: counts[0],
            client_shares: counts[1],
            backup_share_pairs: counts[2],
        })
    }

    fn create_token(&mut self, token: &TokenRecord) -> Result<WriteOutcome, StoreError> {
        if self
            .tokens
            .get(token.name.as_str())
            .map_err(backend)?
            .is_some()
        {
            return Err(StoreError::Rejected(VaultError::AlreadyExists(format!(
                "a token named {} already exists",
                token.name
            ))));
        }
        let value = codec::encode_token(token.role, token.created_at_ms, &token.hash);
        self.tokens
            .insert(token.name.as_str(), value.as_slice())
            .map_err(backend)?;
        self.token_hashes
            .insert(token.hash.as_slice(), token.name.as_str())
            .map_err(backend)?;
        Ok(WriteOutcome::Done)
    }

    fn rewrap(&mut self, items: &[Rewrap]) -> Result<WriteOutcome, StoreError> {
        for item in items {
            let table = match item.table {
                TableId::Custodian => &mut self.custodian,
                TableId::Client => &mut self.client,
                _ => continue,
            };
            let key = (item.client_id.as_str(), item.backup_method.as_str());
            let current = table.get(key).map_err(backend)?.map(|v| v.value().to_vec());
            if current.as_deref() == Some(codec::encode_record(&item.expected).as_slice()) {
                table
                    .insert(key, codec::encode_record(&item.replacement).as_slice())
                    .map_err(backend)?;
            }
        }
        Ok(WriteOutcome::Done)
    }

    fn revoke_token(&mut self, name: &str) -> Result<WriteOutcome, StoreError> {
        let token = self
            .tokens
            .get(name)
            .map_err(backend)?
            .map(|v| codec::decode_token(name, v.value()))
            .transpose()?
            .ok_or_else(|| {
                StoreError::Rejected(VaultError::NotFound(format!("no token named {name}")))
            })?;
        self.tokens.remove(name).map_err(backend)?;
        self.token_hashes
            .remove(token.hash.as_slice())
            .map_err(backend)?;
        Ok(WriteOutcome::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        /// Syncs, then reports a failure: the commit is on disk but its writer is told
        /// otherwise.
        sync_then_fail: Arc<AtomicBool>,
    }

    fn flaky_opener(
        path: &Path,
        fail: &Arc<AtomicBool>,
        sync_ms: &Arc<std::sync::atomic::AtomicU64>,
    ) -> Opener {
        flaky_opener_with(path, fail, sync_ms, &Arc::new(AtomicBool::new(false)))
    }

    fn flaky_opener_with(
        path: &Path,
        fail: &Arc<AtomicBool>,
        sync_ms: &Arc<std::sync::atomic::AtomicU64>,
        sync_then_fail: &Arc<AtomicBool>,
    ) -> Opener {
        let (p, f, s) = (path.to_owned(), Arc::clone(fail), Arc::clone(sync_ms));
        let lying = Arc::clone(sync_then_fail);
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
                sync_then_fail: Arc::clone(&lying),
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
            self.inner.sync_data()?;
            if self.sync_then_fail.swap(false, Ordering::SeqCst) {
                return Err(std::io::Error::from_raw_os_error(5));
            }
            Ok(())
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
        let store = RedbStore::open_with(opener, None, 0).unwrap();

        // A slow disk holds the writer in its first commit while the others queue up.
        sync_ms.store(300, Ordering::SeqCst);
        let (op, audit) = put("first", b"A");
        let first = tokio::spawn(store.write(op, audit));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let (op, audit) = put("queued-write", b"B");
        let write = tokio::spawn(store.write(op, audit));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let read = tokio::spawn(store.write(
            WriteOp::AuditOnly { deferred: false },
            Some(AuditEntry {
                time_ms: 2,
                actor: "webhook".into(),
                action: "fetch",
                client_id: "reader".into(),
                backup_method: String::new(),
                outcome: Some("ok".into()),
            }),
        ));
        for task in [first, write, read] {
            task.await.unwrap().unwrap();
        }
        sync_ms.store(0, Ordering::SeqCst);

        let order: Vec<String> = store
            .audit_events(0, 10)
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
        store.write(op, audit).await.unwrap();

        fail.store(true, Ordering::SeqCst);
        let (op, audit) = put("during-failure", b"B");
        let err = store.write(op, audit).await.unwrap_err();
        assert!(matches!(err, StoreError::Backend(_)), "{err:?}");

        fail.store(false, Ordering::SeqCst);
        let (op, audit) = put("after-recovery", b"C");
        store.write(op, audit).await.unwrap();

        let held = |c: &str| store.custodian_share(c, "PASSWORD-SECP256K1").unwrap();
        assert_eq!(held("acked-before").unwrap().envelope, b"A");
        assert!(
            held("during-failure").is_none(),
            "nothing of the failed write is visible"
        );
        assert_eq!(held("after-recovery").unwrap().envelope, b"C");
        assert!(store.pairs("during-failure").unwrap().is_empty());

        // The audit trail chains the two committed writes and nothing else.
        let events: Vec<_> = store
            .audit_events(0, 10)
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(events.len(), 2);
        let report = crate::audit::verify(events.into_iter().map(Ok), store.audit_head().unwrap());
        assert_eq!(report.problem, None);
        store.close();
    }

    /// A commit whose fsync reported a failure after the data reached the disk is found by
    /// the reopen: the writer then continues the audit chain from the database's head, not
    /// from the one it kept in memory (which would give the next event the same number and
    /// overwrite the recovered write's event).
    #[tokio::test]
    async fn after_a_reopen_the_audit_chain_continues_from_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lying.redb");
        let fail = Arc::new(AtomicBool::new(false));
        let sync_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let lying = Arc::new(AtomicBool::new(false));
        let opener = flaky_opener_with(&path, &fail, &sync_ms, &lying);
        let store = RedbStore::open_with(opener, None, 0).unwrap();
        let (op, audit) = put("first", b"A");
        store.write(op, audit).await.unwrap();

        lying.store(true, Ordering::SeqCst);
        let (op, audit) = put("fsync-failed", b"B");
        assert!(store.write(op, audit).await.is_err());
        let (op, audit) = put("third", b"C");
        store.write(op, audit).await.unwrap();

        let held = |c: &str| store.custodian_share(c, "PASSWORD-SECP256K1").unwrap();
        assert_eq!(
            held("fsync-failed").map(|r| r.envelope),
            Some(b"B".to_vec()),
            "the write whose fsync failed after the fact is on disk"
        );
        let events: Vec<_> = store
            .audit_events(0, 10)
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let clients: Vec<&str> = events.iter().map(|e| e.client_id.as_str()).collect();
        assert_eq!(clients, ["first", "fsync-failed", "third"]);
        let report = crate::audit::verify(events.into_iter().map(Ok), store.audit_head().unwrap());
        assert_eq!(report.problem, None);
        store.close();
    }

    /// Appends the audit events of `n` reads, one after another: `reader-i` is event i + 1.
    async fn read_events(store: &RedbStore, n: u64) {
        for i in 0..n {
            let (_, audit) = put(&format!("reader-{i}"), b"");
            store
                .write(WriteOp::AuditOnly { deferred: true }, audit)
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
        let total = crate::store::AUDIT_PAGE as u64 * 2 + 100;
        let store = RedbStore::open(&path, 0, 1 << 20, 1 << 20).unwrap();
        read_events(&store, total).await;
        let report = store.verify_audit().unwrap();
        assert_eq!(report.events, total);
        assert_eq!(report.problem, None);
        store.close();
        drop(store);

        let victim = crate::store::AUDIT_PAGE as u64 + 50;
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
        let report = store.verify_audit().unwrap();
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
        use crate::store::AUDIT_SCAN;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("listing.redb");
        let store = RedbStore::open(&path, 0, 1 << 20, 1 << 20).unwrap();
        let total = AUDIT_SCAN * 3 + 50;
        read_events(&store, total).await;
        let wanted = ["reader-5", "reader-700", "reader-949"];
        let filter = |e: &AuditEvent| wanted.contains(&e.client_id.as_str());
        let (mut after, mut found, mut steps) = (0, Vec::new(), 0);
        loop {
            let (events, cursor) = store.find_audit_events(after, 1024, &filter).unwrap();
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
        let (events, cursor) = store.find_audit_events(0, 2, &near).unwrap();
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
        store.write(op, audit).await.unwrap();
        store.close();
        drop(store);

        let store = RedbStore::open(&path, u64::MAX, 1 << 20, 1 << 20).unwrap();
        let (op, audit) = put("refused", b"R");
        let err = store.write(op, audit).await.unwrap_err();
        assert!(err.to_string().contains("below the reserve"), "{err}");
        assert!(
            store
                .custodian_share("kept", "PASSWORD-SECP256K1")
                .unwrap()
                .is_some()
        );
        assert!(
            store
                .custodian_share("refused", "PASSWORD-SECP256K1")
                .unwrap()
                .is_none()
        );
    }
}
