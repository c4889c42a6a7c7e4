//! The group-commit writer: a thread that runs batches of queued jobs in one transaction.
//!
//! Each transaction first takes a transaction-level advisory lock that every daemon on the
//! database takes before it writes ([`WRITE_LOCK`]): write transactions, from every daemon,
//! run one after another, as on redb's single writer, so the audit chain's head and a
//! client's pairs are never written by two at once. Under `READ COMMITTED` each statement
//! after the lock sees every transaction committed before it. The job's changes are held in
//! memory and written with two statements just before `COMMIT`; the values read are cached
//! for the transaction (nothing else writes while the lock is held). A transaction that
//! conflicts anyway (serialisation failure, deadlock, unique key) is rolled back and its
//! jobs run again, up to [`RETRIES`] times; no such conflict reaches a caller.

use super::rows;
use super::session::Session;
use super::{MAX_BATCH, Shared};
use crate::store::{
    Key, KeyBuf, KeyKind, Range, Reader, StoreError, TABLES, TableId, Visit, WriteClass, Writer,
};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::mpsc;

/// The advisory lock key of write transactions ("sharevlt").
#[cfg_attr(not(test), allow(dead_code))] // spelled out in BEGIN_SQL; a test checks it
pub const WRITE_LOCK: i64 = 0x7368_6172_6576_6c74;
/// How often a conflicting transaction is run again before its jobs fail.
pub const RETRIES: usize = 20;

pub(super) const BEGIN_SQL: &str = "BEGIN ISOLATION LEVEL READ COMMITTED; \
                     SELECT pg_advisory_xact_lock(8316003855896046708)";

/// A row of a table: (table, encoded key).
type Slot = (u8, Vec<u8>);

pub(super) use crate::store::QueuedJob as Job;

pub(super) fn run_writer(shared: &Arc<Shared>, mut queue: mpsc::Receiver<Job>) {
    while let Some(jobs) = crate::store::next_batch(&mut queue, MAX_BATCH) {
        let started = std::time::Instant::now();
        // Audit events of reads first, in a transaction of their own (as on redb).
        let (reads, writes): (Vec<Job>, Vec<Job>) = jobs
            .into_iter()
            .partition(|j| matches!(j.job.class, WriteClass::ReadAudit { .. }));
        for group in [reads, writes] {
            if !group.is_empty() {
                commit_group(shared, group, started);
            }
        }
    }
}

fn commit_group(shared: &Arc<Shared>, mut jobs: Vec<Job>, started: std::time::Instant) {
    let committed = commit_retrying(shared, &mut jobs);
    shared
        .metrics
        .batch(jobs.len(), started.elapsed(), committed.is_ok());
    match &committed {
        Ok(()) => {}
        Err(err) => {
            tracing::error!(batch = jobs.len(), error = %err, "write transaction failed");
        }
    }
    crate::store::answer_all(jobs, &committed);
}

fn commit_retrying(shared: &Arc<Shared>, jobs: &mut [Job]) -> Result<(), StoreError> {
    let mut attempt = 0;
    loop {
        match commit_batch(shared, jobs) {
            Ok(()) => return Ok(()),
            Err((err, true)) if attempt < RETRIES => {
                attempt += 1;
                shared
                    .conflicts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(attempt, error = %err, "write transaction conflicted; running it again");
                std::thread::sleep(std::time::Duration::from_millis(attempt as u64));
            }
            Err((err, _)) => return Err(err),
        }
    }
}

/// Runs every job in one transaction and commits it. An error says whether a retry may pass.
fn commit_batch(shared: &Arc<Shared>, jobs: &mut [Job]) -> Result<(), (StoreError, bool)> {
    let session = Session::open(shared, BEGIN_SQL).map_err(|e| (e, false))?;
    let mut txn = PgTxn {
        session: RefCell::new(session),
        changes: BTreeMap::new(),
        cache: RefCell::new(HashMap::new()),
        clients: RefCell::new(HashSet::new()),
        meta_loaded: std::cell::Cell::new(false),
        member: shared.member.get().cloned(),
    };
    // The batch's clients (the jobs' hints) and the meta table, with the first statement.
    let clients: Vec<String> = jobs
        .iter()
        .filter_map(|j| j.job.client.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    txn.prefetch(clients)
        .map_err(|e| (e, txn.session.borrow().conflicted))?;
    for job in jobs.iter_mut() {
        if let Err(err) = (job.job.apply)(&mut txn) {
            return Err((err, txn.session.borrow().conflicted));
        }
    }
    txn.commit()
}

/// A write transaction: reads go to PostgreSQL (cached), changes wait in memory. Jobs run
/// on the writer thread one at a time, so the cells are never borrowed twice.
struct PgTxn {
    session: RefCell<Session>,
    /// (table, encoded key) → the new value, or `None` for a removal.
    changes: BTreeMap<(u8, Vec<u8>), Option<Vec<u8>>>,
    /// Values read from the database in this transaction.
    cache: RefCell<HashMap<Slot, Option<Vec<u8>>>>,
    /// Clients whose rows in every per-client table are all in `cache` (a miss is `None`).
    clients: RefCell<HashSet<String>>,
    /// Every row of the meta table is in `cache`.
    meta_loaded: std::cell::Cell<bool>,
    /// This daemon's registration, once it has one ([`Shared::member`]).
    member: Option<String>,
}

impl PgTxn {
    /// Reads every row of `client` in every per-client table into the cache, in one
    /// statement: a job reads a client's share, its pairs and its other shares, and each
    /// would be a round trip of its own. A client's rows are bounded (the method limit).
    fn load_client(&self, client: &str) -> Result<(), StoreError> {
        if self.clients.borrow().contains(client) {
            return Ok(());
        }
        let tables: Vec<TableId> = TABLES
            .into_iter()
            .filter(|t| t.key_kind() == KeyKind::Client)
            .collect();
        let found = rows::client_rows(&mut self.session.borrow_mut(), &tables, client)?;
        let mut cache = self.cache.borrow_mut();
        for (table, key, value) in found {
            cache.entry((table, key)).or_insert(Some(value));
        }
        self.clients.borrow_mut().insert(client.to_owned());
        Ok(())
    }

    /// Reads the rows of `clients` in every per-client table, and the meta table (a handful
    /// of the store's own values, among them the audit head every write reads), in one
    /// statement: sent with `BEGIN`, in the same round trip.
    fn prefetch(&self, clients: Vec<String>) -> Result<(), StoreError> {
        let tables: Vec<TableId> = TABLES
            .into_iter()
            .filter(|t| t.key_kind() == KeyKind::Client)
            .collect();
        // A registered daemon writes only while its registration is there: a restore or a
        // migration removes every registration in its transaction, under the write lock, so
        // a daemon that was counted dead meanwhile never writes into the vault that replaced
        // the one it knew.
        let member = self.member.clone();
        let (found, registered) =
            rows::batch_rows(&mut self.session.borrow_mut(), &tables, &clients, member)?;
        if !registered {
            return Err(StoreError::Backend(
                "this daemon's registration was removed: the vault was restored or migrated \
                 under it; restart it"
                    .into(),
            ));
        }
        let mut cache = self.cache.borrow_mut();
        for (table, key, value) in found {
            cache.insert((table, key), Some(value));
        }
        self.clients.borrow_mut().extend(clients);
        self.meta_loaded.set(true);
        Ok(())
    }

    /// The value below the pending changes.
    fn stored(&self, table: TableId, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let slot = (table as u8, key.to_vec());
        if let Some(value) = self.cache.borrow().get(&slot) {
            return Ok(value.clone());
        }
        if table == TableId::Meta && self.meta_loaded.get() {
            return Ok(None);
        }
        if table.key_kind() == KeyKind::Client
            && let Ok(KeyBuf::Client(client, _)) = rows::decode(table, key)
        {
            self.load_client(&client)?;
            return Ok(self.cache.borrow().get(&slot).cloned().flatten());
        }
        let value = rows::get(&mut self.session.borrow_mut(), table, key)?;
        self.cache.borrow_mut().insert(slot, value.clone());
        Ok(value)
    }

    fn commit(mut self) -> Result<(), (StoreError, bool)> {
        let mut puts = Vec::new();
        let mut deletes = Vec::new();
        for ((table, key), value) in std::mem::take(&mut self.changes) {
            match value {
                Some(value) => puts.push((i16::from(table), key, value)),
                None => deletes.push((i16::from(table), key)),
            }
        }
        let session = self.session.get_mut();
        let done = rows::apply_and_commit(session, puts, deletes);
        match done {
            Ok(()) => {
                // Committed: nothing to roll back when the session is released.
                session.committed();
                Ok(())
            }
            // The COMMIT went out with the writes: without its answer, it may have landed.
            Err(err) if session.lost => Err((StoreError::Unsettled(err.to_string()), false)),
            Err(err) => Err((err, session.conflicted)),
        }
    }
}

impl Reader for PgTxn {
    fn get(&self, table: TableId, key: Key<'_>) -> Result<Option<Vec<u8>>, StoreError> {
        let encoded = rows::encode(table, key)?;
        if let Some(value) = self.changes.get(&(table as u8, encoded.clone())) {
            return Ok(value.clone());
        }
        self.stored(table, &encoded)
    }

    fn scan(
        &self,
        table: TableId,
        range: Range<'_>,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        let (lower, upper) = rows::bounds(table, &range)?;
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        rows::scan(
            &mut self.session.borrow_mut(),
            table,
            &range,
            &mut |k, v| {
                merged.insert(k.to_vec(), Some(v.to_vec()));
                Ok(true)
            },
        )?;
        let t = table as u8;
        for ((_, key), value) in self
            .changes
            .range((t, lower)..)
            .take_while(|((tt, k), _)| *tt == t && upper.as_ref().is_none_or(|u| k < u))
        {
            merged.insert(key.clone(), value.clone());
        }
        for (key, value) in &merged {
            if let Some(value) = value {
                let key = rows::decode(table, key)?;
                if !visit(key.as_key(), value)? {
                    break;
                }
            }
        }
        Ok(())
    }

    fn len(&self, table: TableId) -> Result<u64, StoreError> {
        let mut len = rows::count(&mut self.session.borrow_mut(), table)?;
        let t = table as u8;
        for ((_, key), value) in self
            .changes
            .range((t, Vec::new())..)
            .take_while(|((tt, _), _)| *tt == t)
        {
            let below = self.stored(table, key)?.is_some();
            match (below, value.is_some()) {
                (false, true) => len += 1,
                (true, false) => len = len.saturating_sub(1),
                _ => {}
            }
        }
        Ok(len)
    }
}

impl Writer for PgTxn {
    fn put(&mut self, table: TableId, key: Key<'_>, value: &[u8]) -> Result<(), StoreError> {
        let encoded = rows::encode(table, key)?;
        self.changes
            .insert((table as u8, encoded), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, table: TableId, key: Key<'_>) -> Result<bool, StoreError> {
        let encoded = rows::encode(table, key)?;
        let existed = match self.changes.get(&(table as u8, encoded.clone())) {
            Some(value) => value.is_some(),
            None => self.stored(table, &encoded)?.is_some(),
        };
        self.changes.insert((table as u8, encoded), None);
        Ok(existed)
    }
}
