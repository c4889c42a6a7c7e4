//! The PostgreSQL store: several daemons on one database.
//!
//! Chosen with `--database-url`. Every table lives in one PostgreSQL table ([`rows`]), created
//! by versioned migrations applied at start ([`schema`]). Writes go through a group-commit
//! writer thread per daemon ([`writer`]): a batch of queued jobs runs in one transaction
//! that holds the database's write lock, so write transactions from every daemon run one
//! after another and the audit chain stays one chain. A write resolves once PostgreSQL has
//! answered its `COMMIT` (durable under `synchronous_commit = on`, the default). A reader of one
//! client ([`Store::read_client`]) is one statement, and a lookup by key one statement per
//! key; other readers get a `REPEATABLE READ READ ONLY` transaction. Each sees a consistent
//! snapshot holding every commit that completed before it began, from any daemon.
//!
//! The connections are driven by a small runtime of the store's own ([`session`]), so that
//! the synchronous [`Reader`] can be used from any thread. Every statement is bounded by a
//! timeout; while PostgreSQL cannot be reached, reads and writes fail at once with a
//! backend error (UNAVAILABLE / 503), [`Store::ready`] says so, and the pool reconnects by
//! itself once the server is back.

mod cluster;
mod import;
mod rows;
pub mod schema;
mod session;
pub mod settings;
#[cfg(test)]
mod tests;
mod writer;

pub use import::PgImport;
pub use settings::{PgSettings, Tls};

use super::{Key, Range, Reader, Store, StoreError, TableId, Visit, WriteFuture, WriteJob};
use session::Session;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use writer::{Job, run_writer};

/// The most jobs committed in one transaction.
pub const MAX_BATCH: usize = 256;
const QUEUE_DEPTH: usize = 4096;
/// The longest a statement (or the wait for a connection) may take before it fails.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the store checks that PostgreSQL answers.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// What readers, the writer and the probe share.
pub struct Shared {
    runtime: tokio::runtime::Handle,
    pool: deadpool_postgres::Pool,
    timeout: Duration,
    reachable: AtomicBool,
    /// Why the last connection failed, for the errors answered while it is unreachable.
    last_failure: std::sync::Mutex<Option<String>>,
    /// Write transactions run again after a conflict.
    conflicts: AtomicU64,
    metrics: crate::metrics::StoreMetrics,
    /// This daemon's id in the registry, once registered: every write transaction checks
    /// that the registration is still there.
    member: std::sync::OnceLock<String>,
}

impl Shared {
    /// Fails at once while PostgreSQL is known to be down, instead of waiting for a
    /// connection until the timeout.
    fn check_reachable(&self) -> Result<(), StoreError> {
        if self.reachable.load(Ordering::SeqCst) {
            return Ok(());
        }
        // The cause of the last failed connection (a refused connection, an untrusted
        // certificate) says what to fix; it never holds a statement's parameters.
        let why = self
            .last_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        Err(StoreError::Backend(match why {
            Some(why) => format!("PostgreSQL cannot be reached ({why})"),
            None => "PostgreSQL cannot be reached".into(),
        }))
    }

    /// Marks PostgreSQL unreachable because a connection failed with `err`.
    fn set_unreachable(&self, err: &StoreError) {
        *self
            .last_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(err.to_string());
        self.set_reachable(false);
    }

    fn set_reachable(&self, up: bool) {
        let was = self.reachable.swap(up, Ordering::SeqCst);
        if was != up {
            if up {
                tracing::info!("PostgreSQL answers again");
            } else {
                tracing::error!("PostgreSQL cannot be reached; requests fail until it is back");
            }
        }
    }
}

/// The PostgreSQL-backed [`Store`].
pub struct PgStore {
    shared: Arc<Shared>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    queue: RwLock<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    describe: String,
}

impl PgStore {
    /// Connects, applies the migrations the database lacks and starts the writer.
    pub fn open(
        settings: &PgSettings,
        metrics: crate::metrics::StoreMetrics,
    ) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sharevault-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(format!("cannot start the database runtime: {e}")))?;
        let pool = {
            let _entered = runtime.enter();
            settings.pool()?
        };
        let shared = Arc::new(Shared {
            runtime: runtime.handle().clone(),
            pool,
            timeout: STATEMENT_TIMEOUT,
            reachable: AtomicBool::new(true),
            last_failure: std::sync::Mutex::new(None),
            conflicts: AtomicU64::new(0),
            metrics,
            member: std::sync::OnceLock::new(),
        });
        let store = Self {
            shared: Arc::clone(&shared),
            runtime: Mutex::new(Some(runtime)),
            queue: RwLock::new(None),
            writer: Mutex::new(None),
            describe: settings.describe(),
        };
        cluster::check_settings(&shared)?;
        let version = schema::migrate(&shared)?;
        tracing::info!(database = %store.describe, schema = version, "PostgreSQL database open");
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let writer_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("sharevault-writer".into())
            .spawn(move || run_writer(&writer_shared, rx))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        *store
            .queue
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tx);
        *store
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(writer);
        let probe = Arc::downgrade(&shared);
        shared.runtime.spawn(async move {
            let mut ticks = tokio::time::interval(PROBE_EVERY);
            loop {
                ticks.tick().await;
                let Some(shared) = probe.upgrade() else { break };
                let pool = shared.pool.clone();
                // A server in recovery (a standby, reached with `target_session_attrs=any`)
                // takes no writes: not ready either.
                let up = tokio::time::timeout(STATEMENT_TIMEOUT, async move {
                    let conn = pool.get().await.ok()?;
                    let row = conn
                        .query_one("SELECT pg_is_in_recovery()", &[])
                        .await
                        .ok()?;
                    row.try_get::<_, bool>(0).ok()
                })
                .await
                .ok()
                .flatten()
                    == Some(false);
                shared.set_reachable(up);
            }
        });
        Ok(store)
    }

    /// Write transactions run again after a conflict since the store opened.
    pub fn conflicts(&self) -> u64 {
        self.shared.conflicts.load(Ordering::Relaxed)
    }
}

/// A reader: one `REPEATABLE READ READ ONLY` transaction, its snapshot taken when it opens;
/// or, for [`Store::read_latest`], no transaction, each statement seeing the latest state.
struct PgReader {
    session: RefCell<Session>,
}

impl Reader for PgReader {
    fn get(&self, table: TableId, key: Key<'_>) -> Result<Option<Vec<u8>>, StoreError> {
        let key = rows::encode(table, key)?;
        rows::get(&mut self.session.borrow_mut(), table, &key)
    }

    fn scan(
        &self,
        table: TableId,
        range: Range<'_>,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        rows::scan(
            &mut self.session.borrow_mut(),
            table,
            &range,
            &mut |k, v| visit(rows::decode(table, k)?.as_key(), v),
        )
    }

    fn len(&self, table: TableId) -> Result<u64, StoreError> {
        rows::count(&mut self.session.borrow_mut(), table)
    }
}

/// A reader of one client: that client's rows in the tables asked for, read by one
/// statement (one snapshot, one round trip, no transaction to end). Any other read is a
/// statement of its own ([`Store::read_latest`]), seeing what is committed when it is made.
struct PgClientReader<'s> {
    store: &'s PgStore,
    client: String,
    tables: Vec<TableId>,
    /// (table, encoded key) → value, for the client's rows in `tables`.
    rows: std::collections::BTreeMap<(u8, Vec<u8>), Vec<u8>>,
    other: std::cell::OnceCell<Box<dyn Reader + 's>>,
}

impl PgClientReader<'_> {
    fn other(&self) -> Result<&dyn Reader, StoreError> {
        if let Some(reader) = self.other.get() {
            return Ok(&**reader);
        }
        let reader = self.store.read_latest()?;
        Ok(&**self.other.get_or_init(|| reader))
    }

    /// Whether a read of `table` under `client` is one of the rows read up front.
    fn holds(&self, table: TableId, client: &str) -> bool {
        client == self.client && self.tables.contains(&table)
    }
}

impl Reader for PgClientReader<'_> {
    fn get(&self, table: TableId, key: Key<'_>) -> Result<Option<Vec<u8>>, StoreError> {
        match key {
            Key::Client(client, _) if self.holds(table, client) => {
                let encoded = rows::encode(table, key)?;
                Ok(self.rows.get(&(table as u8, encoded)).cloned())
            }
            _ => self.other()?.get(table, key),
        }
    }

    fn scan(
        &self,
        table: TableId,
        range: Range<'_>,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        match range {
            Range::Client(client) if self.holds(table, client) => {
                let (lower, upper) = rows::bounds(table, &range)?;
                let t = table as u8;
                let upper = upper.unwrap_or_default();
                for ((_, key), value) in self.rows.range((t, lower)..(t, upper)) {
                    if !visit(rows::decode(table, key)?.as_key(), value)? {
                        break;
                    }
                }
                Ok(())
            }
            _ => self.other()?.scan(table, range, visit),
        }
    }

    fn len(&self, table: TableId) -> Result<u64, StoreError> {
        self.other()?.len(table)
    }
}

impl Store for PgStore {
    fn write(&self, job: WriteJob) -> WriteFuture {
        let queue = self
            .queue
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let queue = queue.ok_or(StoreError::Closed)?;
            // While PostgreSQL is known to be down, fail at once instead of queueing.
            shared.check_reachable()?;
            let (reply, answer) = oneshot::channel();
            queue
                .send(Job { job, reply })
                .await
                .map_err(|_| StoreError::Closed)?;
            answer.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn read(&self) -> Result<Box<dyn Reader + '_>, StoreError> {
        self.shared.check_reachable()?;
        // The snapshot is taken by the first statement: now, so that the reader sees the
        // state as of `read()`, not as of its first use.
        let mut session = Session::open(
            &self.shared,
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT 1",
        )?;
        session.call(|_| -> session::CallFuture<'_, ()> { Box::pin(async { Ok(()) }) })?;
        Ok(Box::new(PgReader {
            session: RefCell::new(session),
        }))
    }

    fn read_client(
        &self,
        client: &str,
        tables: &[TableId],
    ) -> Result<Box<dyn Reader + '_>, StoreError> {
        self.shared.check_reachable()?;
        let tables: Vec<TableId> = tables
            .iter()
            .copied()
            .filter(|t| t.key_kind() == super::KeyKind::Client)
            .collect();
        let mut session = Session::autocommit(&self.shared)?;
        let found = rows::client_rows(&mut session, &tables, client)?;
        Ok(Box::new(PgClientReader {
            store: self,
            client: client.to_owned(),
            tables,
            rows: found.into_iter().map(|(t, k, v)| ((t, k), v)).collect(),
            other: std::cell::OnceCell::new(),
        }))
    }

    fn read_latest(&self) -> Result<Box<dyn Reader + '_>, StoreError> {
        self.shared.check_reachable()?;
        Ok(Box::new(PgReader {
            session: RefCell::new(Session::autocommit(&self.shared)?),
        }))
    }

    fn reads_wait(&self) -> bool {
        true
    }

    fn size_bytes(&self) -> Option<u64> {
        let mut session = Session::open(&self.shared, "BEGIN READ ONLY").ok()?;
        let bytes = session
            .call(|c| -> session::CallFuture<'_, i64> {
                Box::pin(async move {
                    c.query_one("SELECT pg_total_relation_size('sharevault_records')", &[])
                        .await?
                        .try_get(0)
                })
            })
            .ok()?;
        u64::try_from(bytes).ok()
    }

    fn cluster(&self) -> Option<&dyn crate::store::cluster::Cluster> {
        Some(self)
    }

    fn warms_for_writes(&self) -> bool {
        // A read ahead would be one more round trip: the writer reads a batch's clients in
        // one statement anyway.
        false
    }

    fn ready(&self) -> Result<(), StoreError> {
        self.shared.check_reachable()
    }

    fn close(&self) {
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
        self.shared.pool.close();
        let runtime = self
            .runtime
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(runtime) = runtime {
            runtime.shutdown_background();
        }
    }
}

impl PgStore {
    /// The daemons registered as live, by the transaction of an import.
    pub(super) fn live_in(
        session: &mut Session,
    ) -> Result<Vec<crate::store::cluster::Member>, StoreError> {
        cluster::live_members(session)
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.close();
    }
}
