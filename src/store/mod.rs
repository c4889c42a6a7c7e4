//! The storage boundary: what a database must provide, and nothing Portal-specific.
//!
//! A backend stores eight tables of opaque byte values ([`TableId`]) under typed keys
//! ([`Key`]), reads them in key order, and applies batches of write jobs in transactions.
//! The vault's rules (the share-pair state machine, the per-client method limit, tokens, the
//! audit chain) are write jobs written against [`Writer`] in [`crate::vault`] and
//! [`crate::audit`]: they run unchanged over every backend.
//!
//! # The contract every backend keeps
//!
//! - **Durable before acknowledged.** [`Store::write`] resolves `Ok` only after the job's
//!   changes are on stable storage (the redb store: its batch's log record fsynced; the
//!   PostgreSQL store: its transaction committed); a crash after that never loses it. A job
//!   whose write resolved with an error was not committed.
//! - **Serialised jobs.** Jobs run one after another against the state the previous ones
//!   left, each seeing every change committed or applied before it, so a job's reads and
//!   writes are one atomic step. A backend may run several jobs in one transaction (group
//!   commit); they then commit or fail together.
//! - **A job that fails fails its batch.** When a job's closure returns an error, the whole
//!   transaction is abandoned and every job in it resolves with that error. (A job refused by
//!   the vault's rules is not a failure at this level: it leaves its changes unmade, see
//!   [`Staged`], and returns `Ok`.)
//! - **Read your writes.** A [`Store::read`] that starts after a write resolved sees it, and
//!   everything one reader returns comes from one consistent state.
//! - **Ordered scans.** Keys are ordered per table: per-client keys by client id then by the
//!   second part, names and bytes lexicographically by byte, sequence numbers numerically.
//! - **Opaque values.** Shares and cipherTexts reach the store already sealed
//!   ([`crate::crypto`]); a backend never sees plaintext and never needs the master key.
//! - **Write classes.** A job's [`WriteClass`] lets the backend refuse jobs that add data when
//!   its disk is nearly full ([`WriteClass::AddsData`]), commit the audit events of reads ahead
//!   of queued writes, and make a deferred read audit durable within [`DEFERRED_FLUSH`] instead
//!   of before the write resolves.
//!
//! [`redb::RedbStore`] is the embedded default, made durable by its redo log ([`wal`]);
//! [`journal`] is the page journal of earlier versions, kept to migrate their data dirs.

pub mod cluster;
#[cfg(test)]
pub mod conformance;
pub mod disk;
#[cfg(test)]
mod disk_sim;
pub mod journal;
pub mod postgres;
pub mod redb;
mod staged;
pub mod wal;

pub use staged::Staged;

use crate::error::VaultError;
use std::future::Future;
use std::pin::Pin;

/// The tables every backend holds, by their byte in a snapshot. Their names are bound into
/// record envelopes as associated data, so they never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TableId {
    /// Custodian shares, keyed (client id, `METHOD-CURVE`).
    Custodian = 1,
    /// Client shares (cipherTexts), keyed (client id, method).
    Client = 2,
    /// Backup share pairs, keyed (client id, pair id).
    Pairs = 3,
    /// API tokens, keyed by name.
    Tokens = 4,
    /// Token names, keyed by the token's SHA-256.
    TokenHashes = 5,
    /// The store's own values, keyed by name.
    Meta = 6,
    /// The audit trail, keyed by sequence number.
    Audit = 7,
    /// Earlier custodian shares and client shares, keyed (client id, kind/method/version).
    Versions = 8,
}

/// The number of tables.
pub const TABLE_COUNT: usize = 8;

/// Every table, in snapshot order.
pub const TABLES: [TableId; TABLE_COUNT] = [
    TableId::Custodian,
    TableId::Client,
    TableId::Pairs,
    TableId::Tokens,
    TableId::TokenHashes,
    TableId::Meta,
    TableId::Audit,
    TableId::Versions,
];

impl TableId {
    pub fn from_u8(v: u8) -> Option<Self> {
        TABLES.into_iter().find(|t| *t as u8 == v)
    }

    pub fn name(self) -> &'static str {
        match self {
            TableId::Custodian => "custodian_shares",
            TableId::Client => "client_shares",
            TableId::Pairs => "backup_share_pairs",
            TableId::Tokens => "tokens",
            TableId::TokenHashes => "token_hashes",
            TableId::Meta => "meta",
            TableId::Audit => "audit",
            TableId::Versions => "share_versions",
        }
    }

    /// The kind of key the table is keyed by.
    pub fn key_kind(self) -> KeyKind {
        match self {
            TableId::Custodian | TableId::Client | TableId::Pairs | TableId::Versions => {
                KeyKind::Client
            }
            TableId::Tokens | TableId::Meta => KeyKind::Name,
            TableId::TokenHashes => KeyKind::Bytes,
            TableId::Audit => KeyKind::Seq,
        }
    }
}

/// The kinds of keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Client,
    Name,
    Bytes,
    Seq,
}

/// A key of a table; its kind must be the table's ([`TableId::key_kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'a> {
    /// (client id, second part): a backup method or a pair id.
    Client(&'a str, &'a str),
    Name(&'a str),
    Bytes(&'a [u8]),
    Seq(u64),
}

/// An owned [`Key`], ordered as the store orders keys of one table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyBuf {
    Client(String, String),
    Name(String),
    Bytes(Vec<u8>),
    Seq(u64),
}

impl Key<'_> {
    pub fn kind(&self) -> KeyKind {
        match self {
            Key::Client(..) => KeyKind::Client,
            Key::Name(_) => KeyKind::Name,
            Key::Bytes(_) => KeyKind::Bytes,
            Key::Seq(_) => KeyKind::Seq,
        }
    }

    pub fn to_buf(&self) -> KeyBuf {
        match *self {
            Key::Client(c, s) => KeyBuf::Client(c.to_owned(), s.to_owned()),
            Key::Name(n) => KeyBuf::Name(n.to_owned()),
            Key::Bytes(b) => KeyBuf::Bytes(b.to_vec()),
            Key::Seq(s) => KeyBuf::Seq(s),
        }
    }
}

impl KeyBuf {
    pub fn as_key(&self) -> Key<'_> {
        match self {
            KeyBuf::Client(c, s) => Key::Client(c, s),
            KeyBuf::Name(n) => Key::Name(n),
            KeyBuf::Bytes(b) => Key::Bytes(b),
            KeyBuf::Seq(s) => Key::Seq(*s),
        }
    }
}

/// Which keys a scan visits, in key order.
#[derive(Debug, Clone, Copy)]
pub enum Range<'a> {
    /// Every key of one client (per-client tables only).
    Client(&'a str),
    /// Every key after the given one, or every key.
    After(Option<Key<'a>>),
}

impl Range<'_> {
    /// Whether `key` lies in the range.
    pub fn contains(&self, key: &KeyBuf) -> bool {
        match (self, key) {
            (Range::Client(c), KeyBuf::Client(kc, _)) => kc == c,
            (Range::Client(_), _) => false,
            (Range::After(None), _) => true,
            (Range::After(Some(after)), key) => key > &after.to_buf(),
        }
    }
}

/// Called for each row of a scan with its key and value; returns whether to go on.
pub type Visit<'v> = dyn FnMut(Key<'_>, &[u8]) -> Result<bool, StoreError> + 'v;

/// Reads from one consistent state of the store.
pub trait Reader {
    fn get(&self, table: TableId, key: Key<'_>) -> Result<Option<Vec<u8>>, StoreError>;
    /// Visits the rows of `range` in key order until `visit` returns `false`.
    fn scan(
        &self,
        table: TableId,
        range: Range<'_>,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError>;
    /// The number of rows in a table.
    fn len(&self, table: TableId) -> Result<u64, StoreError>;
}

/// Reads and changes the state inside a write transaction.
pub trait Writer: Reader {
    fn put(&mut self, table: TableId, key: Key<'_>, value: &[u8]) -> Result<(), StoreError>;
    /// Removes a row; returns whether there was one.
    fn delete(&mut self, table: TableId, key: Key<'_>) -> Result<bool, StoreError>;
}

/// What a write job does, for the backend's scheduling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteClass {
    /// Stores new data: refused below the free-space reserve.
    AddsData,
    /// Changes or removes data; allowed below the reserve, so that deletions go on.
    Changes,
    /// Only the audit event of a read of share material: committed ahead of queued writes.
    /// With `deferred`, it may become durable up to [`DEFERRED_FLUSH`] after the write
    /// resolves (it is visible at once); otherwise it is durable when it resolves.
    ReadAudit { deferred: bool },
}

/// The body of a write job. It may be run more than once (a backend may retry a transaction
/// that conflicted), each time against the state as it then is.
pub type Apply = Box<dyn FnMut(&mut dyn Writer) -> Result<(), StoreError> + Send>;

/// One write job.
pub struct WriteJob {
    pub class: WriteClass,
    pub apply: Apply,
    /// The client whose rows the job reads, if it reads one's: only a hint, which a backend
    /// may use to read them ahead (the PostgreSQL store reads the clients of a whole batch in
    /// one statement). A job may still read anything.
    pub client: Option<String>,
}

impl std::fmt::Debug for WriteJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteJob")
            .field("class", &self.class)
            .finish_non_exhaustive()
    }
}

/// How long a deferred audit event may wait to become durable.
pub const DEFERRED_FLUSH: std::time::Duration = std::time::Duration::from_millis(100);

/// One step of an export: the counts first, then every row.
pub enum ExportItem<'a> {
    Counts([u64; TABLE_COUNT]),
    Record(TableId, Key<'a>, &'a [u8]),
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A stored value could not be decoded.
    #[error("malformed record in {0}")]
    Corrupt(&'static str),
    /// The backend failed (I/O, disk full, ...); the write was not committed.
    #[error("storage backend failure: {0}")]
    Backend(String),
    /// The connection to a database server broke, or its deadline passed, while a commit
    /// was on its way: the write may have been committed.
    #[error("storage did not confirm a commit: {0}")]
    Unsettled(String),
    /// The store is shut down.
    #[error("the store is closed")]
    Closed,
}

impl From<StoreError> for VaultError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Corrupt(table) => {
                tracing::error!(table, "stored record is malformed");
                VaultError::Corrupt
            }
            StoreError::Backend(detail) => {
                tracing::error!(%detail, "storage failure");
                VaultError::Unavailable
            }
            StoreError::Unsettled(detail) => {
                tracing::error!(%detail, "storage did not confirm a commit");
                VaultError::Unsettled
            }
            StoreError::Closed => VaultError::NotReady,
        }
    }
}

/// The future of a write: resolves once the write is durable.
pub type WriteFuture = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

/// A database; see the module documentation for the contract every implementation keeps.
pub trait Store: Send + Sync + 'static {
    /// Queues a write job; resolves after the transaction that ran it is durable.
    fn write(&self, job: WriteJob) -> WriteFuture;
    /// A reader over the current committed state.
    fn read(&self) -> Result<Box<dyn Reader + '_>, StoreError>;
    /// Visits the row counts and then every row of every table, in [`TABLES`] order and key
    /// order, from one consistent state.
    fn export(
        &self,
        visit: &mut dyn FnMut(ExportItem<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let reader = self.read()?;
        let mut counts = [0u64; TABLE_COUNT];
        for (count, table) in counts.iter_mut().zip(TABLES) {
            *count = reader.len(table)?;
        }
        visit(ExportItem::Counts(counts))?;
        for table in TABLES {
            reader.scan(table, Range::After(None), &mut |key, value| {
                visit(ExportItem::Record(table, key, value))?;
                Ok(true)
            })?;
        }
        Ok(())
    }
    /// Whether the store can serve now; a backend reached over the network says when it
    /// cannot (`/readyz`).
    fn ready(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// A reader for one client's rows in `tables` (per-client tables, [`KeyKind::Client`]):
    /// those are read from one consistent state. Other reads through it are served too, from
    /// a state no older than the client's rows. A store whose reads are round trips reads the
    /// client's rows with one.
    fn read_client(
        &self,
        client: &str,
        tables: &[TableId],
    ) -> Result<Box<dyn Reader + '_>, StoreError> {
        let _ = (client, tables);
        self.read()
    }
    /// A reader for lookups that check what they find (a token by its hash): each read sees
    /// a committed state no older than the reader, not necessarily the same one for every
    /// read. A store whose reads are round trips makes each read one statement, with no
    /// transaction around them.
    fn read_latest(&self) -> Result<Box<dyn Reader + '_>, StoreError> {
        self.read()
    }
    /// Whether reads wait on something other than this machine's memory and disk (a
    /// database server): they then always run off the async workers.
    fn reads_wait(&self) -> bool {
        false
    }
    /// Whether reading a record ahead of its write makes the write faster (a page cache
    /// the single writer then finds warm). A store whose reads are round trips of their own
    /// says no.
    fn warms_for_writes(&self) -> bool {
        true
    }
    /// Bytes the store occupies on disk, if it knows.
    fn size_bytes(&self) -> Option<u64>;
    /// Finishes queued writes and closes the store; later writes fail with
    /// [`StoreError::Closed`].
    fn close(&self);
    /// The registry of daemons and the cluster-wide locks of a store that several daemons
    /// serve at once; `None` for a store one daemon has to itself.
    fn cluster(&self) -> Option<&dyn cluster::Cluster> {
        None
    }
}

/// The next batch of a writer's queue: waits for one job, then takes those already queued
/// behind it, at most `max`; `None` once the queue is closed and empty.
pub(crate) fn next_batch<T>(
    queue: &mut tokio::sync::mpsc::Receiver<T>,
    max: usize,
) -> Option<Vec<T>> {
    let mut jobs = vec![queue.blocking_recv()?];
    while jobs.len() < max {
        match queue.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
    Some(jobs)
}

/// A write job in a writer's queue, with where to send how its transaction ended.
pub(crate) struct QueuedJob {
    pub job: WriteJob,
    pub reply: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
}

/// Tells every job of a batch how its transaction ended.
pub(crate) fn answer_all(jobs: Vec<QueuedJob>, outcome: &Result<(), StoreError>) {
    for queued in jobs {
        let _ = queued.reply.send(match outcome {
            Ok(()) => Ok(()),
            Err(StoreError::Unsettled(detail)) => Err(StoreError::Unsettled(detail.clone())),
            Err(err) => Err(StoreError::Backend(err.to_string())),
        });
    }
}

/// The wrong kind of key for a table: a bug in the caller, reported as a backend failure.
pub fn wrong_key(table: TableId) -> StoreError {
    StoreError::Backend(format!(
        "a key of the wrong kind for table {}",
        table.name()
    ))
}
