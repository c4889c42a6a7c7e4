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
use super::{
    Counts, MethodRecord, PairRecord, SealedRecord, Store, StoreError, TokenRecord, WriteFuture,
    WriteOp, WriteOutcome,
};
use crate::error::VaultError;
use crate::pairs::PairStatus;
use crate::validate::split_curve;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table,
    TableDefinition, WriteTransaction,
};
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

/// Table names as bound into record envelopes.
pub const CUSTODIAN_TABLE: &str = "custodian_shares";
pub const CLIENT_TABLE: &str = "client_shares";

fn backend(err: impl Into<redb::Error>) -> StoreError {
    StoreError::Backend(err.into().to_string())
}

type Job = (WriteOp, oneshot::Sender<Result<WriteOutcome, StoreError>>);

/// The redb-backed [`Store`].
pub struct RedbStore {
    db: Arc<Database>,
    queue: RwLock<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl RedbStore {
    /// Opens (or creates) the database file and starts the writer thread.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::builder().create(path).map_err(backend)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| StoreError::Backend(format!("cannot restrict the database file: {e}")))?;
        let txn = db.begin_write().map_err(backend)?;
        {
            txn.open_table(CUSTODIAN).map_err(backend)?;
            txn.open_table(CLIENT).map_err(backend)?;
            txn.open_table(PAIRS).map_err(backend)?;
            txn.open_table(TOKENS).map_err(backend)?;
            txn.open_table(TOKEN_HASHES).map_err(backend)?;
            txn.open_table(META).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let writer_db = Arc::clone(&db);
        let writer = std::thread::Builder::new()
            .name("sharevault-writer".into())
            .spawn(move || run_writer(&writer_db, rx))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            db,
            queue: RwLock::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
        })
    }

    fn read(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.db.begin_read().map_err(backend)
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

impl Store for RedbStore {
    fn write(&self, op: WriteOp) -> WriteFuture {
        let queue = self
            .queue
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        Box::pin(async move {
            let queue = queue.ok_or(StoreError::Closed)?;
            let (tx, rx) = oneshot::channel();
            queue.send((op, tx)).await.map_err(|_| StoreError::Closed)?;
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
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        self.close();
    }
}

fn run_writer(db: &Database, mut queue: mpsc::Receiver<Job>) {
    while let Some(first) = queue.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        match commit_batch(db, &jobs) {
            Ok(results) => {
                tracing::debug!(
                    batch = jobs.len(),
                    commit_us = started.elapsed().as_micros() as u64,
                    "committed"
                );
                for ((_, reply), result) in jobs.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(err) => {
                tracing::error!(batch = jobs.len(), error = %err, "write transaction failed");
                for (_, reply) in jobs {
                    let _ = reply.send(Err(StoreError::Backend(err.to_string())));
                }
            }
        }
    }
}

/// Applies every job in one transaction. The outer error means nothing was committed.
fn commit_batch(
    db: &Database,
    jobs: &[Job],
) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError> {
    let mut txn = db.begin_write().map_err(backend)?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| StoreError::Backend(e.to_string()))?;
    let mut results = Vec::with_capacity(jobs.len());
    {
        let mut tables = Tables::open(&txn)?;
        for (op, _) in jobs {
            let result = tables.apply(op);
            if let Err(StoreError::Backend(detail)) = &result {
                return Err(StoreError::Backend(detail.clone()));
            }
            results.push(result);
        }
    }
    txn.commit().map_err(backend)?;
    Ok(results)
}

struct Tables<'t> {
    custodian: Table<'t, ClientKey<'static>, &'static [u8]>,
    client: Table<'t, ClientKey<'static>, &'static [u8]>,
    pairs: Table<'t, ClientKey<'static>, &'static [u8]>,
    tokens: Table<'t, &'static str, &'static [u8]>,
    token_hashes: Table<'t, &'static [u8], &'static str>,
    meta: Table<'t, &'static str, &'static [u8]>,
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
        })
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
            WriteOp::PutMeta { name, value } => {
                self.meta
                    .insert(name.as_str(), value.as_slice())
                    .map_err(backend)?;
                Ok(WriteOutcome::Done)
            }
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
            .map(|v| codec::decode_record(v.value()))
            .transpose()?;
        if let Some(old_pair) = old.and_then(|o| o.pair_id)
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
        self.client
            .insert(
                (client_id, backup_method),
                codec::encode_record(record).as_slice(),
            )
            .map_err(backend)?;
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
