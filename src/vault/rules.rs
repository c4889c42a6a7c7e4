//! The vault's write rules, as store jobs: Portal's share-pair state machine, the per-client
//! method limit and tokens. They are written against [`Writer`] and so run unchanged over
//! every backend, in the transaction that commits them.
//!
//! Every operation runs over a [`Staged`] writer: an operation refused half-way changes
//! nothing, and its audit event still records the refusal.

use super::codec;
use super::records::{self, PairRecord, SealedRecord, TokenRecord};
use super::versions::{self, Retention, ShareKind};
use crate::audit::{self, AuditEntry, AuditKey};
use crate::crypto::MasterKey;
use crate::error::VaultError;
use crate::store::{Key, Staged, Store, StoreError, TableId, WriteClass, WriteJob, Writer};
pub use crate::validate::covers;
use crate::validate::{MAX_METHODS_PER_CLIENT, split_curve};
use crate::vault::status::PairStatus;
use std::sync::{Arc, Mutex, PoisonError};

/// One atomic write.
#[derive(Debug)]
pub enum WriteOp {
    /// Stores the custodian share for (client, `METHOD-CURVE`) and (re)starts its pair at
    /// `STORED_CUSTODIAN_BACKUP_SHARE`. A replaced share is kept as a version, with its pair
    /// (see [`versions`]). A share under a new key is refused (`FailedPrecondition`) when the
    /// client already holds [`MAX_METHODS_PER_CLIENT`] of them.
    ///
    /// With `unchanged`, the stored bytes of the current share that the caller found to hold
    /// the same share: if they are still current, the write is a repeat and changes nothing.
    PutCustodianShare {
        client_id: String,
        backup_method: String,
        record: SealedRecord,
        unchanged: Option<Vec<u8>>,
        retention: Retention,
    },
    /// Stores the client share for (client, method), keeping a replaced one as a version, and
    /// completes the pairs of the current custodian shares it covers: under a bare method,
    /// every curve of that method; under `METHOD-CURVE`, that curve only. Limited per client
    /// as custodian shares are; `unchanged` as for custodian shares.
    PutClientShare {
        client_id: String,
        backup_method: String,
        record: SealedRecord,
        unchanged: Option<Vec<u8>>,
        retention: Retention,
    },
    /// Makes a kept version current again; the share it replaces becomes a version.
    RestoreVersion {
        client_id: String,
        kind: ShareKind,
        backup_method: String,
        number: u64,
        now_ms: u64,
        retention: Retention,
    },
    /// Deletes a client share; the completed pairs it covered, and no other client share
    /// covers, fall back to `STORED_CLIENT_BACKUP_SHARE_KEY`.
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
    /// Erases every record of a client, kept versions included.
    DeleteClient {
        client_id: String,
    },
    CreateToken(TokenRecord),
    RevokeToken {
        name: String,
    },
    /// Sets the values of the meta table, together, only if `unless` holds none yet (a
    /// compare-and-set: the keys of a new vault, made by whichever daemon comes first);
    /// otherwise changes nothing and answers [`WriteOutcome::Repeat`].
    MetaIfAbsent {
        set: Vec<(String, Vec<u8>)>,
        unless: String,
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
    /// [`TableId::Custodian`], [`TableId::Client`] or [`TableId::Versions`] (then
    /// `backup_method` is the version's key).
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
    /// The share was already stored, byte for byte: nothing changed.
    Repeat,
    /// Pairs that a stored client share completed.
    PairsCompleted(Vec<String>),
    /// Whether there was something to delete.
    Deleted(bool),
    ClientDeleted {
        custodian_shares: u64,
        client_shares: u64,
        backup_share_pairs: u64,
        versions: u64,
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
            | WriteOp::RestoreVersion { .. }
            | WriteOp::Meta { .. }
            | WriteOp::MetaIfAbsent { .. } => WriteClass::AddsData,
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
                    (None, Ok(WriteOutcome::Repeat)) => "repeat",
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

/// Refuses (UNAVAILABLE) a record sealed under a key the vault no longer seals under: one
/// that is neither the key its key check is sealed under nor the target of a rotation under
/// way. A daemon that missed a rotation (it could not get the new key) thus never writes a
/// record that retiring the old key would make unreadable, whatever it holds in memory.
fn refuse_retired_key(w: &dyn Writer, envelope: &[u8]) -> Result<(), Failure> {
    // The vault seals every record it writes; bytes that name no key are no key's to check.
    let Ok(sealed_under) = MasterKey::envelope_key_id(envelope) else {
        return Ok(());
    };
    let id_of = |name: &str| -> Result<Option<crate::crypto::KeyId>, Failure> {
        Ok(records::meta(w, name)?.and_then(|e| MasterKey::envelope_key_id(&e).ok()))
    };
    let Some(current) = id_of(super::KEY_CHECK)? else {
        return Ok(());
    };
    if current == sealed_under || id_of(super::REKEY_TARGET)? == Some(sealed_under) {
        return Ok(());
    }
    tracing::error!(
        key_id = %sealed_under,
        vault_key_id = %current,
        "a write sealed under a retired master key was refused: this daemon missed a key \
         rotation; restart it with the vault's current key"
    );
    Err(Failure::Refused(VaultError::Unavailable))
}

fn apply(w: &mut dyn Writer, op: &WriteOp) -> Applied {
    if let WriteOp::PutCustodianShare { record, .. } | WriteOp::PutClientShare { record, .. } = op {
        refuse_retired_key(&*w, &record.envelope)?;
    }
    match op {
        WriteOp::PutCustodianShare {
            client_id,
            backup_method,
            record,
            unchanged,
            retention,
        } => put_share(
            w,
            ShareKind::Custodian,
            client_id,
            backup_method,
            record,
            unchanged.as_deref(),
            *retention,
        ),
        WriteOp::PutClientShare {
            client_id,
            backup_method,
            record,
            unchanged,
            retention,
        } => put_share(
            w,
            ShareKind::Client,
            client_id,
            backup_method,
            record,
            unchanged.as_deref(),
            *retention,
        ),
        WriteOp::RestoreVersion {
            client_id,
            kind,
            backup_method,
            number,
            now_ms,
            retention,
        } => restore_version(
            w,
            client_id,
            *kind,
            backup_method,
            *number,
            *now_ms,
            *retention,
        ),
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
        WriteOp::MetaIfAbsent { set, unless } => {
            if records::meta(w, unless)?.is_some() {
                return Ok(WriteOutcome::Repeat);
            }
            for (name, value) in set {
                w.put(TableId::Meta, Key::Name(name), value)?;
            }
            Ok(WriteOutcome::Done)
        }
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

/// The meta row that holds the vault's write sequence: the number of the last share stored.
pub const WRITE_SEQ: &str = "write_seq";

/// The next write sequence, counted in the transaction that stores the share, so that the
/// order of shares is the order of their commits, whatever the clocks of the daemons.
fn next_seq(w: &mut dyn Writer) -> Result<u64, StoreError> {
    let last = match w.get(TableId::Meta, Key::Name(WRITE_SEQ))? {
        Some(bytes) => u64::from_be_bytes(
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| StoreError::Corrupt("write sequence"))?,
        ),
        None => 0,
    };
    let next = last + 1;
    w.put(TableId::Meta, Key::Name(WRITE_SEQ), &next.to_be_bytes())?;
    Ok(next)
}

/// Stores a custodian or client share (see [`WriteOp::PutCustodianShare`] and
/// [`WriteOp::PutClientShare`]).
fn put_share(
    w: &mut dyn Writer,
    kind: ShareKind,
    client_id: &str,
    backup_method: &str,
    record: &SealedRecord,
    unchanged: Option<&[u8]>,
    retention: Retention,
) -> Applied {
    let table = kind.table();
    let key = Key::Client(client_id, backup_method);
    let now = record.created_at_ms;
    let current = w.get(table, key)?;
    if current.is_some() && current.as_deref() == unchanged {
        return Ok(WriteOutcome::Repeat);
    }
    if current.is_none() {
        let what = match kind {
            ShareKind::Custodian => "custodian shares",
            ShareKind::Client => "client shares",
        };
        within_method_limit(w, table, client_id, what)?;
    }
    let mut record = record.clone();
    record.seq = next_seq(w)?;
    let covered = match kind {
        ShareKind::Custodian => Vec::new(),
        ShareKind::Client => covered_pairs(w, client_id, backup_method)?,
    };
    record.covers = covered.iter().map(|p| p.id.clone()).collect();
    w.put(table, key, &codec::encode_record(&record))?;
    if let Some(current) = current {
        let dropped = versions::keep(w, client_id, kind, backup_method, &current, now, retention)?;
        for pair in dropped {
            if !versions::pair_referenced(w, client_id, &pair)? {
                w.delete(TableId::Pairs, Key::Client(client_id, &pair))?;
            }
        }
    }
    match kind {
        ShareKind::Custodian => {
            if let Some(id) = &record.pair_id {
                let pair = PairRecord {
                    id: id.clone(),
                    backup_method: backup_method.to_owned(),
                    status: PairStatus::StoredCustodianBackupShare,
                    created_at_ms: now,
                    updated_at_ms: now,
                };
                put_pair(w, client_id, &pair)?;
            }
            Ok(WriteOutcome::Done)
        }
        ShareKind::Client => {
            let mut completed = Vec::with_capacity(covered.len());
            for mut pair in covered {
                if pair.status != PairStatus::StoredClientBackupShare {
                    pair.status = PairStatus::StoredClientBackupShare;
                    pair.updated_at_ms = now;
                    put_pair(w, client_id, &pair)?;
                }
                completed.push(pair.id);
            }
            Ok(WriteOutcome::PairsCompleted(completed))
        }
    }
}

/// The pairs of the current custodian shares that a client share stored under
/// `client_method` now covers: the backup it belongs to. A pair that a client share stored
/// after its custodian share already covers belongs to that earlier client share (a backup
/// in which only one curve's webhook arrived leaves the other curve's completed pair alone).
fn covered_pairs(
    w: &dyn Writer,
    client_id: &str,
    client_method: &str,
) -> Result<Vec<PairRecord>, StoreError> {
    let mut covered = Vec::new();
    for share in records::shares(w, TableId::Custodian, client_id)? {
        if !covers(client_method, &share.backup_method) {
            continue;
        }
        let Some(id) = &share.record.pair_id else {
            continue;
        };
        if client_share_for(w, client_id, &share.backup_method, &share.record)?
            == ClientShareFor::ThisBackup
        {
            continue;
        }
        if let Some(pair) = records::pair(w, client_id, id)? {
            covered.push(pair);
        }
    }
    Ok(covered)
}

/// Whether a client share that covers the custodian share under `custodian_method` is held
/// and was stored after `custodian` (by write sequence): only then does it belong to that
/// backup.
fn client_share_for(
    r: &dyn Writer,
    client_id: &str,
    custodian_method: &str,
    custodian: &SealedRecord,
) -> Result<ClientShareFor, StoreError> {
    let bare = split_curve(custodian_method).0;
    let mut found = ClientShareFor::None;
    for method in [custodian_method, bare] {
        if let Some(record) = records::share(r, TableId::Client, client_id, method)? {
            if record.stored_after(custodian) {
                return Ok(ClientShareFor::ThisBackup);
            }
            found = ClientShareFor::Older;
        }
        if bare == custodian_method {
            break;
        }
    }
    Ok(found)
}

#[derive(PartialEq, Eq)]
enum ClientShareFor {
    None,
    /// Only a client share stored before the custodian share: it belongs to an earlier backup.
    Older,
    ThisBackup,
}

fn delete_client_share(
    w: &mut dyn Writer,
    client_id: &str,
    backup_method: &str,
    now_ms: u64,
) -> Applied {
    let removed = w.delete(TableId::Client, Key::Client(client_id, backup_method))?;
    if removed {
        for share in records::shares(w, TableId::Custodian, client_id)? {
            if !covers(backup_method, &share.backup_method) {
                continue;
            }
            let Some(id) = &share.record.pair_id else {
                continue;
            };
            let held = client_share_for(w, client_id, &share.backup_method, &share.record)?
                == ClientShareFor::ThisBackup;
            if let Some(mut pair) = records::pair(w, client_id, id)?
                && pair.status == PairStatus::StoredClientBackupShare
                && !held
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
        let refuse = |msg: String| Failure::Refused(VaultError::FailedPrecondition(msg));
        // A pair already completed stays so; one that completes now needs its own cipherText.
        let mut held = pair.status == PairStatus::StoredClientBackupShare;
        if status == PairStatus::StoredClientBackupShare && !held {
            let current = records::share(w, TableId::Custodian, client_id, &pair.backup_method)?
                .filter(|r| r.pair_id.as_deref() == Some(id.as_str()));
            let Some(current) = current else {
                return Err(refuse(format!(
                    "backup share pair {id} belongs to a custodian share that a newer backup \
                     replaced; only the current backup's pair can complete"
                )));
            };
            match client_share_for(w, client_id, &pair.backup_method, &current)? {
                ClientShareFor::ThisBackup => held = true,
                ClientShareFor::Older => {
                    return Err(refuse(format!(
                        "the client backup share held for backup share pair {id} was stored \
                         before its custodian share, so it belongs to an earlier backup: store \
                         this backup's cipherText first"
                    )));
                }
                ClientShareFor::None => {}
            }
        }
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

fn restore_version(
    w: &mut dyn Writer,
    client_id: &str,
    kind: ShareKind,
    backup_method: &str,
    number: u64,
    now_ms: u64,
    retention: Retention,
) -> Applied {
    let version_key = versions::key(kind, backup_method, number);
    let row = w
        .get(TableId::Versions, Key::Client(client_id, &version_key))?
        .ok_or_else(|| {
            Failure::Refused(VaultError::NotFound(format!(
                "no {} version {number} of {backup_method} for this client",
                kind.name()
            )))
        })?;
    let version = versions::decode(&version_key, &row)?;
    w.delete(TableId::Versions, Key::Client(client_id, &version_key))?;
    let table = kind.table();
    let key = Key::Client(client_id, backup_method);
    let restored = codec::encode_record(&version.record);
    match w.get(table, key)? {
        Some(current) => {
            w.put(table, key, &restored)?;
            let dropped = versions::keep(
                w,
                client_id,
                kind,
                backup_method,
                &current,
                now_ms,
                retention,
            )?;
            for pair in dropped {
                if !versions::pair_referenced(w, client_id, &pair)? {
                    w.delete(TableId::Pairs, Key::Client(client_id, &pair))?;
                }
            }
        }
        None => w.put(table, key, &restored)?,
    }
    Ok(WriteOutcome::Done)
}

fn delete_client(w: &mut dyn Writer, client_id: &str) -> Applied {
    let mut counts = [0u64; 4];
    for (count, table) in counts.iter_mut().zip([
        TableId::Custodian,
        TableId::Client,
        TableId::Pairs,
        TableId::Versions,
    ]) {
        for (second, _) in records::client_rows(w, table, client_id)? {
            w.delete(table, Key::Client(client_id, &second))?;
            *count += 1;
        }
    }
    Ok(WriteOutcome::ClientDeleted {
        custodian_shares: counts[0],
        client_shares: counts[1],
        backup_share_pairs: counts[2],
        versions: counts[3],
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
        let key = Key::Client(&item.client_id, &item.backup_method);
        if item.table == TableId::Versions {
            if let Some(row) = w.get(TableId::Versions, key)? {
                let version = versions::decode(&item.backup_method, &row)?;
                if version.record == item.expected {
                    let replacement = codec::encode_record(&item.replacement);
                    let value = versions::encode(version.superseded_at_ms, &replacement);
                    w.put(TableId::Versions, key, &value)?;
                }
            }
            continue;
        }
        if !matches!(item.table, TableId::Custodian | TableId::Client) {
            continue;
        }
        let current = w.get(item.table, key)?;
        if current.as_deref() == Some(codec::encode_record(&item.expected).as_slice()) {
            w.put(item.table, key, &codec::encode_record(&item.replacement))?;
        }
    }
    Ok(WriteOutcome::Done)
}
