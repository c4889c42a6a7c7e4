//! The vault's write rules, as store jobs: Portal's share-pair state machine, the per-client
//! method limit and tokens. They are written against [`Writer`] and so run unchanged over
//! every backend, in the transaction that commits them.
//!
//! Every operation runs over a [`Staged`] writer: an operation refused half-way changes
//! nothing, and its audit event still records the refusal.

use super::codec;
use super::records::{self, PairRecord, SealedRecord, TokenRecord};
use crate::audit::{self, AuditEntry, AuditKey};
use crate::error::VaultError;
use crate::store::{Key, Staged, Store, StoreError, TableId, WriteClass, WriteJob, Writer};
use crate::validate::{MAX_METHODS_PER_CLIENT, split_curve};
use crate::vault::status::PairStatus;
use std::sync::{Arc, Mutex, PoisonError};

/// One atomic write.
#[derive(Debug)]
pub enum WriteOp {
    /// Stores the custodian share for (client, `METHOD-CURVE`), replacing that key only, and
    /// (re)starts its pair at `STORED_CUSTODIAN_BACKUP_SHARE`. The pair of a replaced share
    /// with another id is removed. A share under a new key is refused (`FailedPrecondition`)
    /// when the client already holds [`MAX_METHODS_PER_CLIENT`] of them.
    PutCustodianShare {
        client_id: String,
        backup_method: String,
        record: SealedRecord,
    },
    /// Stores the client share for (client, bare method), replacing it, and completes the
    /// pairs of that method. Limited per client as custodian shares are.
    PutClientShare {
        client_id: String,
        backup_method: String,
        record: SealedRecord,
    },
    /// Deletes a client share; the method's completed pairs fall back to
    /// `STORED_CLIENT_BACKUP_SHARE_KEY`.
    DeleteClientShare {
        client_id: String,
        backup_method: String,
        now_ms: u64,
    },
    /// Moves pairs to `status`, all or none.
    UpdatePairs {
        client_id: String,
        ids: Vec<String>,
        status: PairStatus,
        now_ms: u64,
    },
    /// Erases every record of a client.
    DeleteClient {
        client_id: String,
    },
    CreateToken(TokenRecord),
    RevokeToken {
        name: String,
    },
    /// Sets and removes values of the meta table, together.
    Meta {
        set: Vec<(String, Vec<u8>)>,
        remove: Vec<String>,
    },
    /// Replaces sealed records whose stored bytes are still `expected` (a record written in
    /// the meantime is left alone). Used to re-wrap data keys under a new master key.
    Rewrap(Vec<Rewrap>),
    /// Changes nothing but the audit trail: the entry of a read of share material. With
    /// `deferred`, it may become durable up to [`crate::store::DEFERRED_FLUSH`] after it
    /// resolves (it is visible at once); otherwise it is durable when it resolves.
    AuditOnly {
        deferred: bool,
    },
}

/// One record to re-wrap.
#[derive(Debug)]
pub struct Rewrap {
    /// [`TableId::Custodian`] or [`TableId::Client`].
    pub table: TableId,
    pub client_id: String,
    pub backup_method: String,
    pub expected: SealedRecord,
    pub replacement: SealedRecord,
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    Done,
    /// Pairs that a stored client share completed.
    PairsCompleted(Vec<String>),
    /// Whether there was something to delete.
    Deleted(bool),
    ClientDeleted {
        custodian_shares: u64,
        client_shares: u64,
        backup_share_pairs: u64,
    },
}

impl WriteOp {
    /// How the store should schedule the operation.
    /// The client whose records the operation reads and changes, if one.
    pub fn client_id(&self) -> Option<&str> {
        match self {
            WriteOp::PutCustodianShare { client_id, .. }
            | WriteOp::PutClientShare { client_id, .. }
            | WriteOp::DeleteClientShare { client_id, .. }
            | WriteOp::UpdatePairs { client_id, .. }
            | WriteOp::DeleteClient { client_id, .. } => Some(client_id),
            _ => None,
        }
    }

    pub fn class(&self) -> WriteClass {
        match self {
            WriteOp::PutCustodianShare { .. }
            | WriteOp::PutClientShare { .. }
            | WriteOp::CreateToken(_)
            | WriteOp::Rewrap(_)
            | WriteOp::Meta { .. } => WriteClass::AddsData,
            WriteOp::AuditOnly { deferred } => WriteClass::ReadAudit {
                deferred: *deferred,
            },
            WriteOp::DeleteClientShare { .. }
            | WriteOp::UpdatePairs { .. }
            | WriteOp::DeleteClient { .. }
            | WriteOp::RevokeToken { .. } => WriteClass::Changes,
        }
    }
}

/// Why an operation did not apply: refused by the rules (the job goes on and records it), or
/// a failure of the store (the transaction is abandoned).
enum Failure {
    Refused(VaultError),
    Store(StoreError),
}

impl From<StoreError> for Failure {
    fn from(err: StoreError) -> Self {
        Failure::Store(err)
    }
}

type Applied = Result<WriteOutcome, Failure>;

/// Applies `op` durably with its audit event (chained under `key`, or plain without one), on
/// any store.
pub async fn write(
    store: &dyn Store,
    op: WriteOp,
    audit: Option<AuditEntry>,
    key: Option<&AuditKey>,
) -> Result<WriteOutcome, VaultError> {
    let slot = Arc::new(Mutex::new(None));
    let audit = audit.map(|entry| (entry, key.cloned()));
    store.write(job(op, audit, Arc::clone(&slot))).await?;
    let result = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
    result.unwrap_or(Err(VaultError::Internal))
}

/// The store job of `op`: applies it over a [`Staged`] writer, keeps its changes only if it
/// succeeded, appends its audit event with the outcome, and leaves the result in `slot`.
fn job(
    op: WriteOp,
    audit: Option<(AuditEntry, Option<AuditKey>)>,
    slot: Arc<Mutex<Option<Result<WriteOutcome, VaultError>>>>,
) -> WriteJob {
    WriteJob {
        class: op.class(),
        client: op.client_id().map(str::to_owned),
        apply: Box::new(move |w: &mut dyn Writer| {
            let mut staged = Staged::new(w);
            let result = match apply(&mut staged, &op) {
                Ok(outcome) => {
                    staged.keep()?;
                    Ok(outcome)
                }
                Err(Failure::Refused(err)) => Err(err),
                Err(Failure::Store(StoreError::Corrupt(what))) => {
                    Err(VaultError::from(StoreError::Corrupt(what)))
                }
                Err(Failure::Store(err)) => return Err(err),
            };
            if let Some((entry, key)) = &audit {
                let outcome = match (&entry.outcome, &result) {
                    (Some(outcome), _) => outcome.as_str(),
                    (None, Ok(_)) => "ok",
                    (None, Err(e)) => e.outcome(),
                };
                audit::append(w, entry, outcome, key.as_ref())?;
            }
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
            Ok(())
        }),
    }
}

fn apply(w: &mut dyn Writer, op: &WriteOp) -> Applied {
    match op {
        WriteOp::PutCustodianShare {
            client_id,
            backup_method,
            record,
        } => put_custodian(w, client_id, backup_method, record),
        WriteOp::PutClientShare {
            client_id,
            backup_method,
            record,
        } => put_client(w, client_id, backup_method, record),
        WriteOp::DeleteClientShare {
            client_id,
            backup_method,
            now_ms,
        } => delete_client_share(w, client_id, backup_method, *now_ms),
        WriteOp::UpdatePairs {
            client_id,
            ids,
            status,
            now_ms,
        } => update_pairs(w, client_id, ids, *status, *now_ms),
        WriteOp::DeleteClient { client_id } => delete_client(w, client_id),
        WriteOp::CreateToken(token) => create_token(w, token),
        WriteOp::RevokeToken { name } => revoke_token(w, name),
        WriteOp::AuditOnly { .. } => Ok(WriteOutcome::Done),
        WriteOp::Meta { set, remove } => {
            for (name, value) in set {
                w.put(TableId::Meta, Key::Name(name), value)?;
            }
            for name in remove {
                w.delete(TableId::Meta, Key::Name(name))?;
            }
            Ok(WriteOutcome::Done)
        }
        WriteOp::Rewrap(items) => rewrap(w, items),
    }
}

/// Refuses a record under a method its client does not hold yet when the client already
/// holds [`MAX_METHODS_PER_CLIENT`] of them. Portal has a handful of backup methods, two
/// curves each; the limit only keeps one client's records, and so one fetch, bounded.
fn within_method_limit(
    w: &dyn Writer,
    table: TableId,
    client_id: &str,
    what: &str,
) -> Result<(), Failure> {
    let mut held = 0;
    w.scan(
        table,
        crate::store::Range::Client(client_id),
        &mut |_, _| {
            held += 1;
            Ok(held < MAX_METHODS_PER_CLIENT)
        },
    )?;
    if held < MAX_METHODS_PER_CLIENT {
        return Ok(());
    }
    Err(Failure::Refused(VaultError::FailedPrecondition(format!(
        "a client may hold at most {MAX_METHODS_PER_CLIENT} {what}, one per backup method, and \
         this one already holds that many: reuse a method or delete the client first"
    ))))
}

fn put_pair(w: &mut dyn Writer, client_id: &str, pair: &PairRecord) -> Result<(), StoreError> {
    w.put(
        TableId::Pairs,
        Key::Client(client_id, &pair.id),
        &codec::encode_pair(pair),
    )
}

fn put_custodian(
    w: &mut dyn Writer,
    client_id: &str,
    backup_method: &str,
    record: &SealedRecord,
) -> Applied {
    let key = Key::Client(client_id, backup_method);
    let old_pair = match w.get(TableId::Custodian, key)? {
        Some(old) => codec::record_pair_id(&old)?.map(str::to_owned),
        None => {
            within_method_limit(w, TableId::Custodian, client_id, "custodian shares")?;
            None
        }
    };
    w.put(TableId::Custodian, key, &codec::encode_record(record))?;
    if let Some(old_pair) = old_pair
        && Some(&old_pair) != record.pair_id.as_ref()
    {
        w.delete(TableId::Pairs, Key::Client(client_id, &old_pair))?;
    }
    if let Some(id) = &record.pair_id {
        let pair = PairRecord {
            id: id.clone(),
            backup_method: backup_method.to_owned(),
            status: PairStatus::StoredCustodianBackupShare,
            created_at_ms: record.created_at_ms,
            updated_at_ms: record.created_at_ms,
        };
        put_pair(w, client_id, &pair)?;
    }
    Ok(WriteOutcome::Done)
}

fn put_client(
    w: &mut dyn Writer,
    client_id: &str,
    backup_method: &str,
    record: &SealedRecord,
) -> Applied {
    let key = Key::Client(client_id, backup_method);
    if w.get(TableId::Client, key)?.is_none() {
        within_method_limit(w, TableId::Client, client_id, "client shares")?;
    }
    w.put(TableId::Client, key, &codec::encode_record(record))?;
    let mut completed = Vec::new();
    for mut pair in records::pairs(w, client_id)? {
        if split_curve(&pair.backup_method).0 == backup_method {
            if pair.status != PairStatus::StoredClientBackupShare {
                pair.status = PairStatus::StoredClientBackupShare;
                pair.updated_at_ms = record.created_at_ms;
                put_pair(w, client_id, &pair)?;
            }
            completed.push(pair.id);
        }
    }
    Ok(WriteOutcome::PairsCompleted(completed))
}

fn delete_client_share(
    w: &mut dyn Writer,
    client_id: &str,
    backup_method: &str,
    now_ms: u64,
) -> Applied {
    let removed = w.delete(TableId::Client, Key::Client(client_id, backup_method))?;
    if removed {
        for mut pair in records::pairs(w, client_id)? {
            if split_curve(&pair.backup_method).0 == backup_method
                && pair.status == PairStatus::StoredClientBackupShare
            {
                pair.status = PairStatus::StoredClientBackupShareKey;
                pair.updated_at_ms = now_ms;
                put_pair(w, client_id, &pair)?;
            }
        }
    }
    Ok(WriteOutcome::Deleted(removed))
}

fn update_pairs(
    w: &mut dyn Writer,
    client_id: &str,
    ids: &[String],
    status: PairStatus,
    now_ms: u64,
) -> Applied {
    for id in ids {
        let mut pair = records::pair(w, client_id, id)?.ok_or_else(|| {
            Failure::Refused(VaultError::NotFound(format!(
                "no backup share pair {id} for this client"
            )))
        })?;
        let method = split_curve(&pair.backup_method).0;
        let held = w
            .get(TableId::Client, Key::Client(client_id, method))?
            .is_some();
        pair.status
            .check_update(status, held)
            .map_err(Failure::Refused)?;
        if pair.status != status {
            pair.status = status;
            pair.updated_at_ms = now_ms;
            put_pair(w, client_id, &pair)?;
        }
    }
    Ok(WriteOutcome::Done)
}

fn delete_client(w: &mut dyn Writer, client_id: &str) -> Applied {
    let mut counts = [0u64; 3];
    for (count, table) in
        counts
            .iter_mut()
            .zip([TableId::Custodian, TableId::Client, TableId::Pairs])
    {
        for (second, _) in records::client_rows(w, table, client_id)? {
            w.delete(table, Key::Client(client_id, &second))?;
            *count += 1;
        }
    }
    Ok(WriteOutcome::ClientDeleted {
        custodian_shares: counts[0],
        client_shares: counts[1],
        backup_share_pairs: counts[2],
    })
}

fn create_token(w: &mut dyn Writer, token: &TokenRecord) -> Applied {
    if w.get(TableId::Tokens, Key::Name(&token.name))?.is_some() {
        return Err(Failure::Refused(VaultError::AlreadyExists(format!(
            "a token named {} already exists",
            token.name
        ))));
    }
    let value = codec::encode_token(token.role, token.created_at_ms, &token.hash);
    w.put(TableId::Tokens, Key::Name(&token.name), &value)?;
    w.put(
        TableId::TokenHashes,
        Key::Bytes(&token.hash),
        token.name.as_bytes(),
    )?;
    Ok(WriteOutcome::Done)
}

fn revoke_token(w: &mut dyn Writer, name: &str) -> Applied {
    let token = records::token(w, name)?
        .ok_or_else(|| Failure::Refused(VaultError::NotFound(format!("no token named {name}"))))?;
    w.delete(TableId::Tokens, Key::Name(name))?;
    w.delete(TableId::TokenHashes, Key::Bytes(&token.hash))?;
    Ok(WriteOutcome::Done)
}

fn rewrap(w: &mut dyn Writer, items: &[Rewrap]) -> Applied {
    for item in items {
        if !matches!(item.table, TableId::Custodian | TableId::Client) {
            continue;
        }
        let key = Key::Client(&item.client_id, &item.backup_method);
        let current = w.get(item.table, key)?;
        if current.as_deref() == Some(codec::encode_record(&item.expected).as_slice()) {
            w.put(item.table, key, &codec::encode_record(&item.replacement))?;
        }
    }
    Ok(WriteOutcome::Done)
}
