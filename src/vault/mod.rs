//! The vault: the one code path under every API.
//!
//! It validates requests, seals and opens records with the master key, authenticates callers
//! and drives the store. The gRPC services (and any other front end) only translate
//! messages to and from these calls.

mod access;
pub mod cluster;
pub mod codec;
pub mod doctor;
mod history;
mod keys;
mod pairs;
pub mod placement;
pub mod records;
pub mod rules;
mod shares;
pub mod status;
mod tokens;
pub mod versions;

pub use access::{Credentials, SharedWebhookSecrets};
pub use history::VersionView;
pub use keys::VerifyReport;
pub use pairs::{CustodianView, MethodView};
pub use shares::{BackupInput, ClientShare, ClientShareInfo, EjectedShare, FetchedShare};

pub use records::{Counts, MethodRecord, PairRecord, SealedRecord, SealedRow, TokenRecord};
pub use rules::{Rewrap, WriteOp, WriteOutcome};

use crate::audit::{Anchor, AuditEntry, AuditEvent, AuditKey, ChainReport};
use crate::crypto::{CryptoError, KeyId, MasterKey, RecordAad};
use crate::error::VaultError;
use crate::integrity::{INTEGRITY_KEY, IntegrityKey};
use crate::store::{Reader, Store, StoreError, TableId};
use crate::validate::Limits;
use crate::vault::placement::ReadPlacement;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

/// The meta record that says a vault exists: a known text sealed under its master key.
pub const KEY_CHECK: &str = "key_check";
const KEY_CHECK_PLAINTEXT: &[u8] = b"sharevault master key check v1";
/// The key check of a vault that has an integrity key: its integrity key record cannot be
/// removed (to start a new, plain audit trail) without the vault noticing.
const KEY_CHECK_PLAINTEXT_V2: &[u8] = b"sharevault master key check v2: integrity key";
const KEY_CHECK_AAD: RecordAad<'static> = RecordAad {
    table: "meta",
    client_id: "",
    backup_method: KEY_CHECK,
};
pub(crate) const REKEY_TARGET: &str = "rekey_target";
const REKEY_TARGET_AAD: RecordAad<'static> = RecordAad {
    table: "meta",
    client_id: "",
    backup_method: REKEY_TARGET,
};

/// Why the vault could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "the master key (id {given}) is not the key this data dir was sealed with (id {expected}); \
         start with the data dir's own master key"
    )]
    WrongMasterKey { given: KeyId, expected: KeyId },
    #[error(
        "the data dir's key check record is damaged ({0}); restore the data dir from a snapshot"
    )]
    KeyCheck(CryptoError),
    #[error(
        "the data dir's integrity key record is damaged ({0}); restore the data dir from a \
         snapshot"
    )]
    IntegrityKey(CryptoError),
    #[error(
        "the data dir's integrity key record is missing, though its key check says it has one: \
         the database was altered; restore the data dir from a snapshot"
    )]
    IntegrityKeyMissing,
    #[error(
        "cannot open the database: {0}. If another sharevault runs on this data dir, stop it; if \
         the file is damaged, move the data dir aside and restore the last snapshot \
         (sharevault restore)"
    )]
    Store(StoreError),
    #[error("cannot open the PostgreSQL database: {0}")]
    Database(StoreError),
    #[error("cannot record the master key check in the database: {0}")]
    Write(VaultError),
}

/// The daemon's status.
#[derive(Debug, Clone)]
pub struct VaultStatus {
    pub counts: Counts,
    pub database_bytes: Option<u64>,
    pub key_id: KeyId,
    pub uptime_secs: u64,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn entry(actor: &str, action: &'static str, client_id: &str, backup_method: &str) -> AuditEntry {
    AuditEntry {
        time_ms: now_ms(),
        actor: actor.to_owned(),
        action,
        client_id: client_id.to_owned(),
        backup_method: backup_method.to_owned(),
        outcome: None,
    }
}

fn crypto_failure(err: CryptoError) -> VaultError {
    match err {
        CryptoError::Random => VaultError::Internal,
        _ => VaultError::Corrupt,
    }
}

fn utf8(bytes: Zeroizing<Vec<u8>>) -> Result<Zeroizing<String>, VaultError> {
    std::str::from_utf8(&bytes)
        .map(|s| Zeroizing::new(s.to_owned()))
        .map_err(|_| VaultError::Corrupt)
}

/// The master keys the vault knows: the primary seals new records; older ones (given at start
/// for an interrupted rotation, or replaced by a rotation) only open records.
struct Keyring {
    primary: Arc<MasterKey>,
    older: Vec<Arc<MasterKey>>,
}

impl Keyring {
    fn for_envelope(&self, envelope: &[u8]) -> Result<Arc<MasterKey>, CryptoError> {
        let id = MasterKey::envelope_key_id(envelope)?;
        std::iter::once(&self.primary)
            .chain(&self.older)
            .find(|k| k.id() == id)
            .cloned()
            .ok_or(CryptoError::WrongKey {
                expected: self.primary.id(),
                found: id,
            })
    }
}

/// Checks that `key` opens a data dir's key check record; answers its version: 2 if the vault
/// has an integrity key, 1 if it was made before integrity keys existed.
pub fn verify_key_check(key: &MasterKey, check: &[u8]) -> Result<u8, CryptoError> {
    check_version(key, &KEY_CHECK_AAD, check)
}

fn check_version(key: &MasterKey, aad: &RecordAad<'_>, check: &[u8]) -> Result<u8, CryptoError> {
    match key.open(aad, check) {
        Ok(plain) if plain.as_slice() == KEY_CHECK_PLAINTEXT => Ok(1),
        Ok(plain) if plain.as_slice() == KEY_CHECK_PLAINTEXT_V2 => Ok(2),
        Ok(_) => Err(CryptoError::Tampered),
        Err(err) => Err(err),
    }
}

fn check_opens(key: &MasterKey, aad: &RecordAad<'_>, check: &[u8]) -> Result<(), CryptoError> {
    check_version(key, aad, check).map(|_| ())
}

/// Checks that `key` (with `older`, for an interrupted rotation) opens the key check record
/// `check`; answers whether `key` is the target of an interrupted rotation that `older`
/// resumes (`target` is the rotation's target record, if any).
fn check_key_check(
    key: &MasterKey,
    older: &[MasterKey],
    check: &[u8],
    target: Option<&[u8]>,
) -> Result<bool, OpenError> {
    match check_opens(key, &KEY_CHECK_AAD, check) {
        Ok(()) => Ok(false),
        Err(CryptoError::WrongKey { expected, found }) => {
            // The configured key may be the target of an interrupted rotation whose old key
            // is given too.
            let resumable = target.is_some_and(|t| check_opens(key, &REKEY_TARGET_AAD, t).is_ok())
                && older
                    .iter()
                    .any(|old| check_opens(old, &KEY_CHECK_AAD, check).is_ok());
            if resumable {
                Ok(true)
            } else {
                Err(OpenError::WrongMasterKey {
                    given: expected,
                    expected: found,
                })
            }
        }
        Err(err) => Err(OpenError::KeyCheck(err)),
    }
}

/// What [`Vault::open`] would refuse in the vault `reader` shows, checked without writing: a
/// master key that is not the vault's, a damaged key check, a damaged or missing integrity
/// key. A vault with no key check yet (new) passes.
pub fn check_keys(
    reader: &dyn Reader,
    key: &MasterKey,
    older: &[MasterKey],
) -> Result<(), OpenError> {
    let meta = |name: &str| records::meta(reader, name).map_err(OpenError::Store);
    let Some(check) = meta(KEY_CHECK)? else {
        return Ok(());
    };
    check_key_check(key, older, &check, meta(REKEY_TARGET)?.as_deref())?;
    let id = MasterKey::envelope_key_id(&check).map_err(OpenError::KeyCheck)?;
    let for_id = |id| std::iter::once(key).chain(older).find(|k| k.id() == id);
    let check_key = for_id(id).ok_or(OpenError::KeyCheck(CryptoError::WrongKey {
        expected: key.id(),
        found: id,
    }))?;
    let version = check_version(check_key, &KEY_CHECK_AAD, &check).map_err(OpenError::KeyCheck)?;
    match meta(INTEGRITY_KEY)? {
        Some(sealed) => {
            let id = MasterKey::envelope_key_id(&sealed).map_err(OpenError::IntegrityKey)?;
            let sealer = for_id(id).ok_or(OpenError::IntegrityKey(CryptoError::WrongKey {
                expected: key.id(),
                found: id,
            }))?;
            IntegrityKey::open(sealer, &sealed).map_err(OpenError::IntegrityKey)?;
            Ok(())
        }
        None if version >= 2 => Err(OpenError::IntegrityKeyMissing),
        None => Ok(()),
    }
}

/// The sequence number the next audit event gets.
fn audit_next(store: &dyn Store) -> Result<u64, OpenError> {
    let r = store.read().map_err(OpenError::Store)?;
    Ok(crate::audit::head(&*r)
        .map_err(OpenError::Store)?
        .map_or(1, |(seq, _)| seq + 1))
}

/// The vault.
pub struct Vault {
    store: Arc<dyn Store>,
    keys: RwLock<Keyring>,
    limits: Limits,
    credentials: Credentials,
    started: Instant,
    rekeying: tokio::sync::Mutex<()>,
    /// The key behind the snapshot and audit MACs (see [`crate::integrity`]).
    integrity: IntegrityKey,
    /// The audit MAC's key, derived from `integrity`.
    audit_key: AuditKey,
    /// Audit events of reads become durable up to 100 ms after the read is answered, instead
    /// of before.
    deferred_read_audit: bool,
    /// Whether store reads run inline or on the blocking pool.
    placement: Arc<ReadPlacement>,
    /// The vault's own metrics: offloaded reads, failed authentications, broken audit chains.
    metrics: crate::metrics::VaultMetrics,
    /// Which replaced shares are kept as versions.
    retention: versions::Retention,
    /// The longest a request waits for the store off the async workers (a read on the
    /// blocking pool, a write's commit on a store over the network) before it is answered
    /// UNAVAILABLE: below the request timeout, so that the answer says what happened.
    store_deadline: Duration,
    /// This daemon in the registry of a database several daemons serve.
    presence: cluster::Presence,
    /// Writes are refused: this daemon lacks the key the vault seals under, or the vault was
    /// replaced under it ([`cluster`]).
    refusing: std::sync::atomic::AtomicBool,
    /// This daemon's registration was removed: the vault was replaced under it.
    replaced: std::sync::atomic::AtomicBool,
}

/// [`Vault::store_deadline`] unless [`Vault::with_request_timeout`] says otherwise: 3/4 of
/// the default request timeout (8 s).
const DEFAULT_STORE_DEADLINE: Duration = Duration::from_secs(6);

impl Vault {
    /// Opens the vault over `store`: checks that `key` is the data dir's master key, or
    /// records it if the store is new. `older` keys open records only (an interrupted
    /// rotation: see [`Vault::rekey`]).
    pub async fn open(
        store: Arc<dyn Store>,
        key: MasterKey,
        older: Vec<MasterKey>,
        limits: Limits,
        credentials: Credentials,
        metrics: crate::metrics::VaultMetrics,
    ) -> Result<Self, OpenError> {
        let meta = |name: &str| -> Result<Option<Vec<u8>>, OpenError> {
            let r = store.read().map_err(OpenError::Store)?;
            records::meta(&*r, name).map_err(OpenError::Store)
        };
        let target = meta(REKEY_TARGET)?;
        // A new vault's key check, integrity key and audit anchor are written in one
        // compare-and-set: when daemons start at once on a new database, exactly one set
        // wins, and the others open it (see also [`crate::store::cluster::ClusterLock::Init`]).
        let mut made = None;
        let check = match meta(KEY_CHECK)? {
            Some(check) => check,
            None => {
                let check = key
                    .seal(&KEY_CHECK_AAD, KEY_CHECK_PLAINTEXT_V2)
                    .map_err(OpenError::KeyCheck)?;
                let (integrity, sealed) =
                    IntegrityKey::generate(&key).map_err(OpenError::IntegrityKey)?;
                let next = audit_next(store.as_ref())?;
                let anchor = Anchor::encode(&integrity.audit_key(), next);
                let outcome = rules::write(
                    store.as_ref(),
                    WriteOp::MetaIfAbsent {
                        set: vec![
                            (KEY_CHECK.into(), check.clone()),
                            (INTEGRITY_KEY.into(), sealed),
                            (Anchor::META.into(), anchor),
                        ],
                        unless: KEY_CHECK.into(),
                    },
                    None,
                    None,
                )
                .await
                .map_err(OpenError::Write)?;
                match outcome {
                    WriteOutcome::Repeat => {
                        tracing::info!("another daemon made this new vault's keys first");
                        meta(KEY_CHECK)?.ok_or(OpenError::KeyCheck(CryptoError::Malformed))?
                    }
                    _ => {
                        made = Some(integrity);
                        check
                    }
                }
            }
        };
        if made.is_none() {
            let resumed = check_key_check(&key, &older, &check, target.as_deref())?;
            match (&target, resumed) {
                (_, true) => tracing::warn!(
                    "a master key rotation to this key was interrupted; run `sharevault \
                     rekey` again with this key to finish it"
                ),
                (Some(target), false) => {
                    let id = MasterKey::envelope_key_id(target).map_err(OpenError::KeyCheck)?;
                    tracing::warn!(
                        target_key_id = %id,
                        "a master key rotation was interrupted; run `sharevault rekey` again \
                         with the new key to finish it"
                    );
                }
                (None, false) => {}
            }
        }
        let keys = Keyring {
            primary: Arc::new(key),
            older: older.into_iter().map(Arc::new).collect(),
        };
        // The key check, under whichever known key seals it, and its version.
        let check_key = keys.for_envelope(&check).map_err(OpenError::KeyCheck)?;
        let check_version =
            check_version(&check_key, &KEY_CHECK_AAD, &check).map_err(OpenError::KeyCheck)?;
        let integrity = match (made, meta(INTEGRITY_KEY)?) {
            (Some(integrity), _) => integrity,
            (None, Some(sealed)) => keys
                .for_envelope(&sealed)
                .and_then(|key| IntegrityKey::open(&key, &sealed))
                .map_err(OpenError::IntegrityKey)?,
            (None, None) if check_version >= 2 => return Err(OpenError::IntegrityKeyMissing),
            (None, None) => {
                // A vault made before integrity keys existed: its audit events are keyed
                // from the next one on, which the anchor records; the key check then says
                // that the vault has an integrity key.
                // Sealed under the key the key check is under, so that whichever key the
                // data dir starts with next (during an unfinished rotation) opens both.
                let (integrity, sealed) =
                    IntegrityKey::generate(&check_key).map_err(OpenError::IntegrityKey)?;
                let audit_key = integrity.audit_key();
                let next = audit_next(store.as_ref())?;
                let check = check_key
                    .seal(&KEY_CHECK_AAD, KEY_CHECK_PLAINTEXT_V2)
                    .map_err(OpenError::KeyCheck)?;
                let outcome = rules::write(
                    store.as_ref(),
                    WriteOp::MetaIfAbsent {
                        set: vec![
                            (INTEGRITY_KEY.into(), sealed),
                            (Anchor::META.into(), Anchor::encode(&audit_key, next)),
                            (KEY_CHECK.into(), check),
                        ],
                        unless: INTEGRITY_KEY.into(),
                    },
                    None,
                    None,
                )
                .await
                .map_err(OpenError::Write)?;
                match (outcome, meta(INTEGRITY_KEY)?) {
                    (WriteOutcome::Repeat, Some(sealed)) => keys
                        .for_envelope(&sealed)
                        .and_then(|key| IntegrityKey::open(&key, &sealed))
                        .map_err(OpenError::IntegrityKey)?,
                    (WriteOutcome::Repeat, None) => return Err(OpenError::IntegrityKeyMissing),
                    _ => integrity,
                }
            }
        };
        Ok(Self {
            store,
            keys: RwLock::new(keys),
            audit_key: integrity.audit_key(),
            integrity,
            limits,
            credentials,
            started: Instant::now(),
            placement: Arc::new(
                ReadPlacement::new().counting_slow_reads(metrics.slow_reads.clone()),
            ),
            metrics,
            rekeying: tokio::sync::Mutex::new(()),
            deferred_read_audit: false,
            retention: versions::Retention::default(),
            store_deadline: DEFAULT_STORE_DEADLINE,
            presence: cluster::Presence::new(),
            refusing: std::sync::atomic::AtomicBool::new(false),
            replaced: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// How many replaced shares and cipherTexts are kept as versions.
    pub fn with_retention(mut self, retention: versions::Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Waits for the store end at 3/4 of the request timeout `timeout` (at least 100 ms), so
    /// that a slow database is answered UNAVAILABLE before the request itself times out.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.store_deadline = (timeout * 3 / 4).max(Duration::from_millis(100));
        self
    }

    /// With `deferred`, the audit event of a read is committed (and visible) before the read
    /// is answered, but made durable within 100 ms by a later commit rather than before the
    /// answer: reads then need no fsync of their own.
    pub fn with_deferred_read_audit(mut self, deferred: bool) -> Self {
        self.deferred_read_audit = deferred;
        self
    }

    /// The store under the vault.
    pub(crate) fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// The key behind the snapshot and audit MACs.
    pub(crate) fn integrity(&self) -> &IntegrityKey {
        &self.integrity
    }

    /// Applies `op` durably, with its audit event.
    async fn write(
        &self,
        op: WriteOp,
        audit: Option<AuditEntry>,
    ) -> Result<WriteOutcome, VaultError> {
        if self.refusing() {
            return Err(VaultError::Unavailable);
        }
        let write = rules::write(self.store.as_ref(), op, audit, Some(&self.audit_key));
        if !self.store.reads_wait() {
            return write.await;
        }
        // A database server that does not answer: the job may still commit once it does,
        // so the write's outcome is unknown (its retry with the same bytes is a repeat).
        tokio::time::timeout_at(self.wait_until(), write)
            .await
            .unwrap_or_else(|_| {
                tracing::warn!("a write's commit was not confirmed within the deadline");
                Err(VaultError::Unsettled)
            })
    }

    fn primary(&self) -> Arc<MasterKey> {
        Arc::clone(
            &self
                .keys
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .primary,
        )
    }

    fn key_for(&self, envelope: &[u8]) -> Result<Arc<MasterKey>, CryptoError> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .for_envelope(envelope)
    }

    /// The id of the key that seals new records.
    pub fn key_id(&self) -> KeyId {
        self.primary().id()
    }

    /// Finishes queued writes and closes the store.
    pub fn close(&self) {
        self.store.close();
    }

    fn open_record(
        &self,
        table: &str,
        client_id: &str,
        backup_method: &str,
        record: &SealedRecord,
    ) -> Result<Zeroizing<String>, VaultError> {
        let aad = RecordAad {
            table,
            client_id,
            backup_method,
        };
        let plain = self
            .key_for(&record.envelope)
            .and_then(|key| key.open(&aad, &record.envelope))
            .map_err(|err| {
                tracing::error!(
                    table,
                    client = client_id,
                    backup_method,
                    error = %err,
                    "a stored record failed to open; it is not served"
                );
                crypto_failure(err)
            })?;
        utf8(plain)
    }

    /// Records a read of share material, durably, before its answer is sent. If the audit
    /// event cannot be written the read fails: nothing is disclosed unrecorded.
    async fn audited<T>(
        &self,
        read: Result<T, VaultError>,
        mut audit: AuditEntry,
    ) -> Result<T, VaultError> {
        audit.outcome = Some(match (&read, audit.outcome.take()) {
            (Ok(_), Some(outcome)) => outcome,
            (Ok(_), None) => "ok".to_owned(),
            (Err(err), _) => err.outcome().to_owned(),
        });
        self.write(
            WriteOp::AuditOnly {
                deferred: self.deferred_read_audit,
            },
            Some(audit),
        )
        .await?;
        read
    }

    /// While store reads wait for the disk ([`ReadPlacement`]), reads on the blocking pool the
    /// pages a write of this record will change (its own and its client's pairs), so that the
    /// single writer finds them in the page cache instead of waiting for the disk one page at
    /// a time. Only a hint: what it reads is dropped, and a failure here is the write's to
    /// report.
    async fn warm_for_write(&self, table: TableId, client_id: &str, method: &str) {
        if !self.placement.offloading() || !self.store.warms_for_writes() {
            return;
        }
        let store = Arc::clone(&self.store);
        let placement = Arc::clone(&self.placement);
        let (id, method) = (client_id.to_owned(), method.to_owned());
        let _ = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            if let Ok(r) = store.read() {
                let _ = records::share(&*r, table, &id, &method);
                let _ = records::pairs(&*r, &id);
            }
            placement.observe(started.elapsed());
        })
        .await;
    }

    /// Runs a store read inline while reads find their pages in memory, and on the runtime's
    /// blocking threads once one has waited for the disk ([`ReadPlacement`]): there a
    /// page-cache miss holds up no other request, and as many reads wait on the disk at once
    /// as there are requests (a database much larger than memory is read at the disk's queue
    /// depth, not one read per runtime worker).
    ///
    /// The read is of `client`'s rows in `tables` ([`Store::read_client`]); with no tables, it
    /// is a lookup of single keys ([`Store::read_latest`]). A store whose reads wait on a
    /// server ([`Store::reads_wait`]) is always read on the blocking threads.
    async fn read_store<T: Send + 'static>(
        &self,
        client: &str,
        tables: Option<&'static [TableId]>,
        read: impl FnOnce(&dyn Reader) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, VaultError> {
        let store = Arc::clone(&self.store);
        let placement = Arc::clone(&self.placement);
        let client = client.to_owned();
        let timed = move || {
            let started = Instant::now();
            let reader = match tables {
                Some(tables) => store.read_client(&client, tables),
                None => store.read_latest(),
            };
            let result = reader.and_then(|r| read(&*r));
            placement.observe(started.elapsed());
            result
        };
        if !self.store.reads_wait() && !self.placement.offloading() {
            return Ok(timed()?);
        }
        self.metrics.offloaded_read();
        self.off_workers(timed).await
    }

    /// When a wait for the store that starts now ends: after the store deadline, and, while
    /// a request is served, early enough before its timeout (a quarter of it, with the
    /// default deadline) that every wait of the request together ends before the request is
    /// cut, so that it is answered UNAVAILABLE rather than timed out.
    fn wait_until(&self) -> tokio::time::Instant {
        let mut until = Instant::now() + self.store_deadline;
        if let Some(deadline) = crate::api::observe::request_deadline() {
            until = until.min(
                deadline
                    .checked_sub(self.store_deadline / 3)
                    .unwrap_or(deadline),
            );
        }
        tokio::time::Instant::from_std(until)
    }

    /// Runs `work` (which waits on the store) on the blocking threads, for at most the store
    /// deadline: past it the caller is answered UNAVAILABLE while `work` ends by itself (each
    /// of the store's own waits is bounded). The async workers never wait on the store.
    async fn off_workers<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, VaultError> {
        match tokio::time::timeout_at(self.wait_until(), tokio::task::spawn_blocking(work)).await {
            Ok(Ok(result)) => Ok(result?),
            Ok(Err(err)) => {
                tracing::error!(error = %err, "a store read did not finish");
                Err(VaultError::Unavailable)
            }
            Err(_) => {
                tracing::warn!("a store read did not finish within the deadline");
                Err(VaultError::Unavailable)
            }
        }
    }

    /// Audit events after `after` that match `filter`, a step at a time: see
    /// [`crate::audit::find`].
    pub fn audit_events(
        &self,
        after: u64,
        limit: usize,
        filter: impl Fn(&AuditEvent) -> bool,
    ) -> Result<(Vec<AuditEvent>, u64), VaultError> {
        Ok(crate::audit::find(
            self.store.as_ref(),
            after,
            limit,
            &filter,
        )?)
    }

    /// Checks the whole audit chain up to its current head.
    pub fn verify_audit(&self) -> Result<ChainReport, VaultError> {
        self.verify_audit_with(&mut |_, _| {})
    }

    /// As [`Vault::verify_audit`], telling `progress` (events checked, head) after each page.
    pub fn verify_audit_with(
        &self,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<ChainReport, VaultError> {
        let key = self.audit_key.clone();
        let (anchor, pruned) = {
            let r = self.store.read()?;
            (
                records::meta(&*r, Anchor::META)?,
                records::meta(&*r, crate::audit::PruneAnchor::META)?,
            )
        };
        let check = crate::audit::check_from_anchors(key, anchor.as_deref(), pruned.as_deref());
        let report = crate::audit::verify_trail_with(self.store.as_ref(), check, progress)?;
        if report.problem.is_some() {
            self.metrics.audit_chain_broken();
        }
        Ok(report)
    }

    /// Prunes the audit trail as `retention` says, as of now, at most `max_batches` ranges:
    /// see [`crate::audit::prune`].
    pub async fn prune_audit(
        &self,
        retention: &crate::audit::Retention,
        max_batches: usize,
    ) -> Result<crate::audit::Pruned, crate::audit::PruneError> {
        crate::audit::prune(
            Arc::clone(&self.store),
            &self.audit_key,
            retention,
            now_ms(),
            max_batches,
        )
        .await
    }

    /// Records an administrative action in the audit trail.
    pub async fn record_admin(&self, actor: &str, action: &'static str) -> Result<(), VaultError> {
        self.write(
            WriteOp::AuditOnly { deferred: false },
            Some(entry(actor, action, "", "")),
        )
        .await?;
        Ok(())
    }

    /// The audit trail's last sequence number (0 when it is empty): how many events a full
    /// export or check goes through.
    pub fn audit_head_seq(&self) -> Result<u64, VaultError> {
        Ok(crate::audit::head(&*self.store.read()?)?.map_or(0, |h| h.0))
    }

    /// Whether the vault can serve now: its store answers (`/readyz`).
    pub fn ready(&self) -> Result<(), VaultError> {
        self.store.ready().map_err(|_| VaultError::Unavailable)
    }

    /// The vault's counts and size (`/healthz`, `/metrics`, `GetStatus`), read on the
    /// blocking threads within the store deadline; at once UNAVAILABLE while the store is
    /// known to be unreachable.
    pub async fn status(&self) -> Result<VaultStatus, VaultError> {
        self.ready()?;
        let store = Arc::clone(&self.store);
        let (counts, database_bytes) = self
            .off_workers(move || Ok((records::counts(&*store.read()?)?, store.size_bytes())))
            .await?;
        Ok(VaultStatus {
            counts,
            database_bytes,
            key_id: self.key_id(),
            uptime_secs: self.started.elapsed().as_secs(),
        })
    }
}
