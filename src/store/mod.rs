//! The storage boundary.
//!
//! [`Store`] is everything the vault needs from a database. Its semantics, which every
//! backend must keep:
//!
//! - **Durable before acknowledged.** [`Store::write`] resolves only after the operation has
//!   been committed to stable storage; a crash after that never loses it.
//! - **Atomic, serialised writes.** Each [`WriteOp`] is applied entirely or not at all, and
//!   writes are applied one after another, so concurrent writes to the same key leave exactly
//!   one value and never fail because of each other. A backend may commit several operations
//!   in one transaction (group commit) as long as each keeps these properties; an operation
//!   that is rejected ([`StoreError::Rejected`]) changes nothing.
//! - **Read your writes.** A read that starts after a write resolved sees it.
//! - **Opaque records.** Shares and cipherTexts reach the store already sealed
//!   ([`crate::crypto`]); a backend never sees plaintext and never needs the master key.
//! - **Audit in the same transaction.** A write's audit entry is appended, chained
//!   ([`crate::audit`]), in the transaction that applies the write, with the write's outcome;
//!   a rejected write still records its entry.
//! - **Share-pair semantics in the same transaction.** Storing a custodian share (re)starts
//!   its pair, storing a client share completes its method's pairs, and updates are checked
//!   with [`crate::pairs::PairStatus::check_update`] against the state they change.
//!
//! [`redb::RedbStore`] is the embedded default.

pub mod codec;
pub mod disk;
#[cfg(test)]
mod disk_sim;
pub mod journal;
pub mod redb;

use crate::audit::{AuditEntry, AuditEvent, ChainCheck, ChainReport};
use crate::auth::Role;
use crate::error::VaultError;
use crate::pairs::PairStatus;
use crate::snapshot::TableId;
use std::future::Future;
use std::pin::Pin;

/// A sealed share or cipherText with the little metadata kept beside it in clear.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedRecord {
    pub created_at_ms: u64,
    /// The backup share pair a custodian share belongs to (none for client shares).
    pub pair_id: Option<String>,
    /// The envelope from [`crate::crypto::MasterKey::seal`].
    pub envelope: Vec<u8>,
}

impl std::fmt::Debug for SealedRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedRecord")
            .field("created_at_ms", &self.created_at_ms)
            .field("pair_id", &self.pair_id)
            .field("envelope_len", &self.envelope.len())
            .finish()
    }
}

/// A record together with the backup method it is stored under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodRecord {
    pub backup_method: String,
    pub record: SealedRecord,
}

/// One backup share pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairRecord {
    pub id: String,
    /// The full `METHOD-CURVE` key of its custodian share.
    pub backup_method: String,
    pub status: PairStatus,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// An API token, known only by the SHA-256 hash of its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub name: String,
    pub role: Role,
    pub hash: [u8; 32],
    pub created_at_ms: u64,
}

impl std::fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRecord")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Numbers of records per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub custodian_shares: u64,
    pub client_shares: u64,
    pub backup_share_pairs: u64,
    pub tokens: u64,
}

/// One atomic write.
#[derive(Debug)]
pub enum WriteOp {
    /// Stores the custodian share for (client, `METHOD-CURVE`), replacing that key only, and
    /// (re)starts its pair at `STORED_CUSTODIAN_BACKUP_SHARE`. The pair of a replaced share
    /// with another id is removed. A share under a new key is rejected (`FailedPrecondition`)
    /// when the client already holds [`crate::validate::MAX_METHODS_PER_CLIENT`] of them.
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
    /// Sets and removes metadata values of the store itself, together.
    Meta {
        set: Vec<(String, Vec<u8>)>,
        remove: Vec<String>,
    },
    /// Replaces sealed records whose stored bytes are still `expected` (a record written in
    /// the meantime is left alone). Used to re-wrap data keys under a new master key.
    Rewrap(Vec<Rewrap>),
    /// Changes nothing but the audit trail: the entry of a read of share material. With
    /// `deferred`, the store may make it durable up to [`DEFERRED_FLUSH`] after it resolves
    /// (it is visible at once); otherwise it is durable when it resolves, like any write.
    AuditOnly {
        deferred: bool,
    },
}

/// Audit events read at a time when the chain is checked.
pub const AUDIT_PAGE: usize = 4096;
/// Audit events one [`Store::find_audit_events`] call looks at, at most.
#[cfg(not(test))]
pub const AUDIT_SCAN: u64 = 65_536;
#[cfg(test)]
pub const AUDIT_SCAN: u64 = 300;

/// How long a deferred audit event may wait to become durable.
pub const DEFERRED_FLUSH: std::time::Duration = std::time::Duration::from_millis(100);

impl WriteOp {
    /// Whether the operation stores new data (refused when the disk is nearly full).
    pub fn adds_data(&self) -> bool {
        matches!(
            self,
            WriteOp::PutCustodianShare { .. }
                | WriteOp::PutClientShare { .. }
                | WriteOp::CreateToken(_)
                | WriteOp::Rewrap(_)
                | WriteOp::Meta { .. }
        )
    }
}

/// A sealed share record with its client id and backup method.
pub type SealedRow = (String, String, SealedRecord);

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

/// One step of an export: the counts first, then every record.
pub enum ExportItem<'a> {
    Counts([u64; 7]),
    Record(TableId, &'a [u8], &'a [u8]),
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

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The operation was refused by the vault's rules and changed nothing.
    #[error(transparent)]
    Rejected(VaultError),
    /// A stored record could not be decoded.
    #[error("malformed record in {0}")]
    Corrupt(&'static str),
    /// The backend failed (I/O, disk full, ...); the write was not committed.
    #[error("storage backend failure: {0}")]
    Backend(String),
    /// The store is shut down.
    #[error("the store is closed")]
    Closed,
}

impl From<StoreError> for VaultError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Rejected(e) => e,
            StoreError::Corrupt(table) => {
                tracing::error!(table, "stored record is malformed");
                VaultError::Corrupt
            }
            StoreError::Backend(detail) => {
                tracing::error!(%detail, "storage failure");
                VaultError::Unavailable
            }
            StoreError::Closed => VaultError::NotReady,
        }
    }
}

/// The future of a write: resolves once the write is durable.
pub type WriteFuture = Pin<Box<dyn Future<Output = Result<WriteOutcome, StoreError>> + Send>>;

/// Everything the vault needs from a database; see the module documentation for the
/// semantics every implementation keeps.
pub trait Store: Send + Sync + 'static {
    /// Applies one write atomically, with its audit entry if given; resolves after it is
    /// durable.
    fn write(&self, op: WriteOp, audit: Option<AuditEntry>) -> WriteFuture;
    /// Every custodian share of a client, ordered by backup method.
    fn custodian_shares(&self, client_id: &str) -> Result<Vec<MethodRecord>, StoreError>;
    fn custodian_share(
        &self,
        client_id: &str,
        backup_method: &str,
    ) -> Result<Option<SealedRecord>, StoreError>;
    /// Every client share of a client, ordered by backup method.
    fn client_shares(&self, client_id: &str) -> Result<Vec<MethodRecord>, StoreError>;
    fn client_share(
        &self,
        client_id: &str,
        backup_method: &str,
    ) -> Result<Option<SealedRecord>, StoreError>;
    /// Every backup share pair of a client, ordered by id.
    fn pairs(&self, client_id: &str) -> Result<Vec<PairRecord>, StoreError>;
    fn token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError>;
    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    fn counts(&self) -> Result<Counts, StoreError>;
    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Up to `limit` audit events with a sequence number above `after`, in order. An event
    /// that cannot be decoded is reported by its sequence number.
    fn audit_events(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Result<AuditEvent, u64>>, StoreError>;
    /// The last audit event's sequence number and hash.
    fn audit_head(&self) -> Result<Option<(u64, [u8; 32])>, StoreError>;
    /// Audit events after `after` that match `filter`: at most `limit` of them, from at most
    /// [`AUDIT_SCAN`] events looked at, so that a rare filter on a long trail answers in
    /// steps. Returns them with the last sequence number looked at; the trail has ended when
    /// that is still `after`.
    fn find_audit_events(
        &self,
        after: u64,
        limit: usize,
        filter: &dyn Fn(&AuditEvent) -> bool,
    ) -> Result<(Vec<AuditEvent>, u64), StoreError> {
        let mut out = Vec::new();
        let mut cursor = after;
        while out.len() < limit && cursor - after < AUDIT_SCAN {
            let want = (AUDIT_SCAN - (cursor - after)).min(AUDIT_PAGE as u64) as usize;
            let page = self.audit_events(cursor, want)?;
            if page.is_empty() {
                break;
            }
            for event in page {
                let event = event.map_err(|_| StoreError::Corrupt("audit event"))?;
                cursor = event.seq;
                if filter(&event) {
                    out.push(event);
                    if out.len() == limit {
                        break;
                    }
                }
            }
        }
        Ok((out, cursor))
    }
    /// Checks the audit chain up to the head it has when the check starts, a page of events
    /// at a time (events appended meanwhile are left for the next check).
    fn verify_audit(&self) -> Result<ChainReport, StoreError> {
        let head = self.audit_head()?;
        let end = head.map_or(0, |h| h.0);
        let mut check = ChainCheck::default();
        let mut cursor = 0;
        'pages: while cursor < end {
            let page = self.audit_events(cursor, AUDIT_PAGE)?;
            if page.is_empty() {
                break;
            }
            for event in page {
                cursor = match &event {
                    Ok(e) => e.seq,
                    Err(seq) => *seq,
                };
                if cursor > end || !check.push(event) {
                    break 'pages;
                }
            }
        }
        Ok(check.finish(head))
    }
    /// Up to `limit` sealed records of a share table (custodian or client) after the key
    /// `after`, in key order, as (client id, backup method, record).
    fn sealed_records(
        &self,
        table: TableId,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<SealedRow>, StoreError>;
    /// Visits the counts and then every record of every table from one consistent read
    /// (see [`crate::snapshot`] for the key encoding).
    fn export(
        &self,
        visit: &mut dyn FnMut(ExportItem<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
    /// Bytes the store occupies on disk, if it knows.
    fn size_bytes(&self) -> Option<u64>;
    /// Finishes queued writes and closes the store; later writes fail with
    /// [`StoreError::Closed`].
    fn close(&self);
}
