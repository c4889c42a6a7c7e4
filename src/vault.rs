//! The vault: the one code path under every API.
//!
//! It validates requests, seals and opens records with the master key, authenticates callers
//! and drives the store. The gRPC services (and any other front end) only translate
//! messages to and from these calls.

use crate::audit::{AuditEntry, AuditEvent, ChainReport};
use crate::auth::{self, Principal, Role, WebhookSecrets};
use crate::crypto::{CryptoError, KeyId, MasterKey, RecordAad};
use crate::error::{Field, VaultError};
use crate::pairs::PairStatus;
use crate::placement::ReadPlacement;
use crate::snapshot::{self, TableId};
use crate::store::redb::{CLIENT_TABLE, CUSTODIAN_TABLE};
use crate::store::{
    Counts, ExportItem, MethodRecord, PairRecord, Rewrap, SealedRecord, Store, StoreError,
    TokenRecord, WriteOp, WriteOutcome,
};
use crate::validate::{self, Limits, UNKNOWN_METHOD, split_curve};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

const KEY_CHECK: &str = "key_check";
const KEY_CHECK_PLAINTEXT: &[u8] = b"sharevault master key check v1";
const KEY_CHECK_AAD: RecordAad<'static> = RecordAad {
    table: "meta",
    client_id: "",
    backup_method: KEY_CHECK,
};
const REKEY_TARGET: &str = "rekey_target";
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
        "cannot open the database: {0}. If another sharevault runs on this data dir, stop it; if \
         the file is damaged, move the data dir aside and restore the last snapshot \
         (sharevault restore)"
    )]
    Store(StoreError),
}

/// Everything about a credential check that the vault needs.
pub struct Credentials {
    pub webhook: WebhookSecrets,
    /// SHA-256 of the admin token.
    pub admin_token: [u8; 32],
    /// Failed authentications, per source address and per credential.
    pub failures: auth::FailureLimiter,
}

/// A custodian share as the webhook delivers it.
pub struct BackupInput<'a> {
    pub client_id: &'a str,
    pub backup_method: &'a str,
    pub share: &'a str,
    pub backup_share_pair_id: Option<&'a str>,
}

/// A custodian share as read back.
pub struct FetchedShare {
    pub share: Zeroizing<String>,
    pub stored_at_ms: u64,
}

/// A client share as read back.
pub struct ClientShare {
    pub backup_method: String,
    pub cipher_text: Zeroizing<String>,
    pub created_at_ms: u64,
}

/// One custodian share in the [`Vault::list_backups`] view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustodianView {
    pub backup_method: String,
    pub curve: String,
    pub stored_at_ms: u64,
    pub pair_id: Option<String>,
    pub pair_status: Option<PairStatus>,
}

/// What a client holds for one bare method.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MethodView {
    pub backup_method: String,
    pub client_share_created_at_ms: Option<u64>,
    pub custodian_shares: Vec<CustodianView>,
}

impl MethodView {
    /// `completed` when the client share is held and every custodian share's pair is
    /// completed; `incomplete` otherwise.
    pub fn status(&self) -> &'static str {
        let complete = self.client_share_created_at_ms.is_some()
            && !self.custodian_shares.is_empty()
            && self
                .custodian_shares
                .iter()
                .all(|c| c.pair_status == Some(PairStatus::StoredClientBackupShare));
        if complete { "completed" } else { "incomplete" }
    }
}

/// Every sealed record of a share table, a page at a time, in key order.
struct Pages<'a> {
    store: &'a dyn Store,
    table: TableId,
    after: Option<(String, String)>,
    size: usize,
}

impl<'a> Pages<'a> {
    fn new(store: &'a dyn Store, table: TableId, size: usize) -> Self {
        Self {
            store,
            table,
            after: None,
            size,
        }
    }

    fn next(&mut self) -> Result<Option<Vec<crate::store::SealedRow>>, StoreError> {
        let page = self.store.sealed_records(
            self.table,
            self.after.as_ref().map(|(c, m)| (c.as_str(), m.as_str())),
            self.size,
        )?;
        let Some(last) = page.last() else {
            return Ok(None);
        };
        self.after = Some((last.0.clone(), last.1.clone()));
        Ok(Some(page))
    }
}

/// What [`Vault::verify_records`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub custodian_shares: u64,
    pub client_shares: u64,
    pub failed: u64,
    /// `table/client/method: reason`, for the first 100 failures.
    pub failures: Vec<String>,
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

/// The `backupSharePairId` a share's JSON carries, if any.
fn embedded_pair_id(share: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "backupSharePairId")]
        id: Option<String>,
    }
    serde_json::from_str::<Probe>(share).ok()?.id
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

/// Checks that `key` opens a data dir's key check record.
pub fn verify_key_check(key: &MasterKey, check: &[u8]) -> Result<(), CryptoError> {
    check_opens(key, &KEY_CHECK_AAD, check)
}

fn check_opens(key: &MasterKey, aad: &RecordAad<'_>, check: &[u8]) -> Result<(), CryptoError> {
    match key.open(aad, check) {
        Ok(plain) if plain.as_slice() == KEY_CHECK_PLAINTEXT => Ok(()),
        Ok(_) => Err(CryptoError::Tampered),
        Err(err) => Err(err),
    }
}

/// The vault.
pub struct Vault {
    store: Arc<dyn Store>,
    keys: RwLock<Keyring>,
    limits: Limits,
    credentials: Credentials,
    started: Instant,
    rekeying: tokio::sync::Mutex<()>,
    /// Audit events of reads become durable up to 100 ms after the read is answered, instead
    /// of before.
    deferred_read_audit: bool,
    /// Whether store reads run inline or on the blocking pool.
    placement: Arc<ReadPlacement>,
}

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
    ) -> Result<Self, OpenError> {
        let target = store.meta(REKEY_TARGET).map_err(OpenError::Store)?;
        match store.meta(KEY_CHECK).map_err(OpenError::Store)? {
            Some(check) => match check_opens(&key, &KEY_CHECK_AAD, &check) {
                Ok(()) => {
                    if let Some(target) = &target {
                        let id = MasterKey::envelope_key_id(target).map_err(OpenError::KeyCheck)?;
                        tracing::warn!(
                            target_key_id = %id,
                            "a master key rotation was interrupted; run `sharevault rekey` again \
                             with the new key to finish it"
                        );
                    }
                }
                Err(CryptoError::WrongKey { expected, found }) => {
                    // The configured key may be the target of an interrupted rotation whose
                    // old key is given too.
                    let resumable = target
                        .as_ref()
                        .is_some_and(|t| check_opens(&key, &REKEY_TARGET_AAD, t).is_ok())
                        && older
                            .iter()
                            .any(|old| check_opens(old, &KEY_CHECK_AAD, &check).is_ok());
                    if !resumable {
                        return Err(OpenError::WrongMasterKey {
                            given: expected,
                            expected: found,
                        });
                    }
                    tracing::warn!(
                        "a master key rotation to this key was interrupted; run `sharevault \
                         rekey` again with this key to finish it"
                    );
                }
                Err(err) => return Err(OpenError::KeyCheck(err)),
            },
            None => {
                let check = key
                    .seal(&KEY_CHECK_AAD, KEY_CHECK_PLAINTEXT)
                    .map_err(OpenError::KeyCheck)?;
                store
                    .write(
                        WriteOp::Meta {
                            set: vec![(KEY_CHECK.into(), check)],
                            remove: Vec::new(),
                        },
                        None,
                    )
                    .await
                    .map_err(OpenError::Store)?;
            }
        }
        Ok(Self {
            store,
            keys: RwLock::new(Keyring {
                primary: Arc::new(key),
                older: older.into_iter().map(Arc::new).collect(),
            }),
            limits,
            credentials,
            started: Instant::now(),
            placement: Arc::new(ReadPlacement::new()),
            rekeying: tokio::sync::Mutex::new(()),
            deferred_read_audit: false,
        })
    }

    /// With `deferred`, the audit event of a read is committed (and visible) before the read
    /// is answered, but made durable within 100 ms by a later commit rather than before the
    /// answer: reads then need no fsync of their own.
    pub fn with_deferred_read_audit(mut self, deferred: bool) -> Self {
        self.deferred_read_audit = deferred;
        self
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

    // ---- credentials ----

    /// Counts a failed authentication against `keys`: `err`, or "rate limited" once any of
    /// them has failed too often. Only failures are ever limited, so a caller with a valid
    /// credential is always served, whatever its source (a shared egress address, or
    /// 127.0.0.1 in a sidecar deployment) or anyone else did.
    fn failed(&self, keys: &[auth::FailureKey], err: VaultError) -> VaultError {
        match self.credentials.failures.fail(keys) {
            Ok(()) => err,
            Err(retry_after_secs) => VaultError::RateLimited { retry_after_secs },
        }
    }

    /// Checks the webhook secret presented by `source`.
    pub fn verify_webhook_secret(
        &self,
        presented: Option<&[u8]>,
        source: Option<IpAddr>,
    ) -> Result<(), VaultError> {
        match presented {
            Some(secret) if self.credentials.webhook.verify(secret) => Ok(()),
            None => Err(self.failed(
                &auth::failure_keys(source, None),
                VaultError::Unauthenticated("the webhook secret is missing"),
            )),
            Some(secret) => Err(self.failed(
                &auth::failure_keys(source, Some(secret)),
                VaultError::Unauthenticated("the webhook secret is wrong"),
            )),
        }
    }

    /// Authenticates an `authorization` header value presented by `source` and checks that
    /// its role allows `needed`.
    pub fn authorize(
        &self,
        authorization: Option<&str>,
        needed: Role,
        source: Option<IpAddr>,
    ) -> Result<Principal, VaultError> {
        let keys = || auth::failure_keys(source, authorization.map(str::as_bytes));
        let Some(header) = authorization else {
            return Err(self.failed(
                &keys(),
                VaultError::Unauthenticated("a bearer token is required"),
            ));
        };
        let Some(token) = auth::bearer(header) else {
            return Err(self.failed(
                &keys(),
                VaultError::Unauthenticated("the authorization header must be `Bearer <token>`"),
            ));
        };
        let hash = auth::digest(token.as_bytes());
        let principal = if auth::digests_equal(&hash, &self.credentials.admin_token) {
            Principal {
                name: "admin".into(),
                role: Role::Admin,
            }
        } else {
            match self.store.token_by_hash(&hash)? {
                Some(record) => Principal {
                    name: record.name,
                    role: record.role,
                },
                None => {
                    return Err(self.failed(
                        &keys(),
                        VaultError::Unauthenticated("the token is not valid"),
                    ));
                }
            }
        };
        if principal.role.allows(needed) {
            Ok(principal)
        } else {
            Err(VaultError::PermissionDenied(match needed {
                Role::Backend => "this token's role may not use the BackupService",
                Role::Eject => "reading a custodian backup share needs a token with the eject role",
                Role::Admin => "this call needs the admin token or a token with the admin role",
            }))
        }
    }

    // ---- custodian shares (the webhook) ----

    /// Stores a custodian share durably. Returns the id of the pair it started, if any.
    pub async fn backup(
        &self,
        input: BackupInput<'_>,
        actor: &str,
    ) -> Result<Option<String>, VaultError> {
        validate::client_id(input.client_id)?;
        let method = validate::backup_method(input.backup_method)?;
        validate::secret_text(Field::Share, input.share, self.limits.max_share_bytes)?;
        let pair_id = match input.backup_share_pair_id.filter(|id| !id.is_empty()) {
            Some(id) => {
                validate::pair_id(Field::BackupSharePairId, id)?;
                Some(id.to_owned())
            }
            None => embedded_pair_id(input.share).filter(|id| {
                let ok = validate::pair_id(Field::BackupSharePairId, id).is_ok();
                if !ok {
                    tracing::warn!(
                        client = input.client_id,
                        "the share's backupSharePairId is not a valid id; storing the share \
                         without a pair"
                    );
                }
                ok
            }),
        };
        let aad = RecordAad {
            table: CUSTODIAN_TABLE,
            client_id: input.client_id,
            backup_method: method,
        };
        let envelope = self
            .primary()
            .seal(&aad, input.share.as_bytes())
            .map_err(crypto_failure)?;
        self.warm_for_write(TableId::Custodian, input.client_id, method)
            .await;
        self.store
            .write(
                WriteOp::PutCustodianShare {
                    client_id: input.client_id.to_owned(),
                    backup_method: method.to_owned(),
                    record: SealedRecord {
                        created_at_ms: now_ms(),
                        pair_id: pair_id.clone(),
                        envelope,
                    },
                },
                Some(entry(actor, "backup", input.client_id, method)),
            )
            .await?;
        Ok(pair_id)
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
        audit.outcome = Some(match &read {
            Ok(_) => "ok".to_owned(),
            Err(err) => err.outcome().to_owned(),
        });
        self.store
            .write(
                WriteOp::AuditOnly {
                    deferred: self.deferred_read_audit,
                },
                Some(audit),
            )
            .await?;
        read
    }

    /// Every custodian share of a client, byte for byte, ordered by backup method.
    pub async fn fetch(
        &self,
        client_id: &str,
        actor: &str,
    ) -> Result<Vec<FetchedShare>, VaultError> {
        validate::client_id(client_id)?;
        let id = client_id.to_owned();
        let read = self
            .read_store(move |store| store.custodian_shares(&id))
            .await
            .and_then(|rows| self.open_custodian_shares(client_id, &rows));
        self.audited(read, entry(actor, "fetch", client_id, ""))
            .await
    }

    /// While store reads wait for the disk ([`ReadPlacement`]), reads on the blocking pool the
    /// pages a write of this record will change (its own and its client's pairs), so that the
    /// single writer finds them in the page cache instead of waiting for the disk one page at
    /// a time. Only a hint: what it reads is dropped, and a failure here is the write's to
    /// report.
    async fn warm_for_write(&self, table: TableId, client_id: &str, method: &str) {
        if !self.placement.offloading() {
            return;
        }
        let store = Arc::clone(&self.store);
        let placement = Arc::clone(&self.placement);
        let (id, method) = (client_id.to_owned(), method.to_owned());
        let _ = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let _ = match table {
                TableId::Custodian => store.custodian_share(&id, &method),
                _ => store.client_share(&id, &method),
            };
            let _ = store.pairs(&id);
            placement.observe(started.elapsed());
        })
        .await;
    }

    /// Runs a store read inline while reads find their pages in memory, and on the runtime's
    /// blocking threads once one has waited for the disk ([`ReadPlacement`]): there a
    /// page-cache miss holds up no other request, and as many reads wait on the disk at once
    /// as there are requests (a database much larger than memory is read at the disk's queue
    /// depth, not one read per runtime worker).
    async fn read_store<T: Send + 'static>(
        &self,
        read: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, VaultError> {
        let store = Arc::clone(&self.store);
        let placement = Arc::clone(&self.placement);
        let timed = move || {
            let started = Instant::now();
            let result = read(store.as_ref());
            placement.observe(started.elapsed());
            result
        };
        if !self.placement.offloading() {
            return Ok(timed()?);
        }
        crate::metrics::global()
            .offloaded_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match tokio::task::spawn_blocking(timed).await {
            Ok(result) => Ok(result?),
            Err(err) => {
                tracing::error!(error = %err, "a store read did not finish");
                Err(VaultError::Unavailable)
            }
        }
    }

    fn open_custodian_shares(
        &self,
        client_id: &str,
        rows: &[MethodRecord],
    ) -> Result<Vec<FetchedShare>, VaultError> {
        rows.iter()
            .map(|m| {
                Ok(FetchedShare {
                    share: self.open_record(
                        CUSTODIAN_TABLE,
                        client_id,
                        &m.backup_method,
                        &m.record,
                    )?,
                    stored_at_ms: m.record.created_at_ms,
                })
            })
            .collect()
    }

    /// One custodian share, for eject (the caller must hold the eject role).
    pub async fn custodian_share(
        &self,
        client_id: &str,
        backup_method: &str,
        actor: &str,
    ) -> Result<Zeroizing<String>, VaultError> {
        validate::client_id(client_id)?;
        let method = validate::backup_method(backup_method)?;
        let (id, wanted) = (client_id.to_owned(), method.to_owned());
        let read = self
            .read_store(move |store| store.custodian_share(&id, &wanted))
            .await
            .and_then(|record| {
                record.ok_or_else(|| {
                    VaultError::NotFound(
                        "no custodian backup share is held for this client and method".into(),
                    )
                })
            })
            .and_then(|record| self.open_record(CUSTODIAN_TABLE, client_id, method, &record));
        self.audited(read, entry(actor, "get_custodian_share", client_id, method))
            .await
    }

    // ---- client shares ----

    /// Stores a client share durably; returns the pairs it completed.
    pub async fn store_client_share(
        &self,
        client_id: &str,
        backup_method: &str,
        cipher_text: &str,
        actor: &str,
    ) -> Result<Vec<String>, VaultError> {
        validate::client_id(client_id)?;
        let method = validate::backup_method(backup_method)?;
        validate::secret_text(
            Field::CipherText,
            cipher_text,
            self.limits.max_cipher_text_bytes,
        )?;
        let aad = RecordAad {
            table: CLIENT_TABLE,
            client_id,
            backup_method: method,
        };
        let envelope = self
            .primary()
            .seal(&aad, cipher_text.as_bytes())
            .map_err(crypto_failure)?;
        self.warm_for_write(TableId::Client, client_id, method)
            .await;
        let outcome = self
            .store
            .write(
                WriteOp::PutClientShare {
                    client_id: client_id.to_owned(),
                    backup_method: method.to_owned(),
                    record: SealedRecord {
                        created_at_ms: now_ms(),
                        pair_id: None,
                        envelope,
                    },
                },
                Some(entry(actor, "store_client_share", client_id, method)),
            )
            .await?;
        Ok(match outcome {
            WriteOutcome::PairsCompleted(ids) => ids,
            _ => Vec::new(),
        })
    }

    /// The client share for a method. Like Portal's example server, a share stored under the
    /// legacy method `UNKNOWN` answers when the method itself has none.
    pub async fn client_share(
        &self,
        client_id: &str,
        backup_method: &str,
        actor: &str,
    ) -> Result<ClientShare, VaultError> {
        validate::client_id(client_id)?;
        let method = validate::backup_method(backup_method)?;
        let (id, wanted) = (client_id.to_owned(), method.to_owned());
        let read = self
            .read_store(move |store| {
                let mut found = store.client_share(&id, &wanted)?.map(|r| (false, r));
                if found.is_none() && wanted != UNKNOWN_METHOD {
                    found = store.client_share(&id, UNKNOWN_METHOD)?.map(|r| (true, r));
                }
                Ok(found)
            })
            .await
            .and_then(|found| self.open_client_share(client_id, method, found));
        self.audited(read, entry(actor, "get_client_share", client_id, method))
            .await
    }

    /// Opens the client share found for `method` (or, with `true`, under the legacy method).
    fn open_client_share(
        &self,
        client_id: &str,
        method: &str,
        found: Option<(bool, SealedRecord)>,
    ) -> Result<ClientShare, VaultError> {
        let found = found.map(|(legacy, r)| (if legacy { UNKNOWN_METHOD } else { method }, r));
        let (method, record) = found.ok_or_else(|| {
            VaultError::NotFound("no client backup share is held for this client and method".into())
        })?;
        Ok(ClientShare {
            backup_method: method.to_owned(),
            cipher_text: self.open_record(CLIENT_TABLE, client_id, method, &record)?,
            created_at_ms: record.created_at_ms,
        })
    }

    /// Deletes a client share; answers whether there was one.
    pub async fn delete_client_share(
        &self,
        client_id: &str,
        backup_method: &str,
        actor: &str,
    ) -> Result<bool, VaultError> {
        validate::client_id(client_id)?;
        let method = validate::backup_method(backup_method)?;
        let outcome = self
            .store
            .write(
                WriteOp::DeleteClientShare {
                    client_id: client_id.to_owned(),
                    backup_method: method.to_owned(),
                    now_ms: now_ms(),
                },
                Some(entry(actor, "delete_client_share", client_id, method)),
            )
            .await?;
        Ok(outcome == WriteOutcome::Deleted(true))
    }

    // ---- views and the status model ----

    /// What a client holds, per bare method. Reads no secret bytes.
    pub async fn list_backups(&self, client_id: &str) -> Result<Vec<MethodView>, VaultError> {
        validate::client_id(client_id)?;
        let id = client_id.to_owned();
        let (pairs, client_shares, custodian_shares) = self
            .read_store(move |store| {
                Ok((
                    store.pairs(&id)?,
                    store.client_shares(&id)?,
                    store.custodian_shares(&id)?,
                ))
            })
            .await?;
        let pairs: BTreeMap<String, PairRecord> =
            pairs.into_iter().map(|p| (p.id.clone(), p)).collect();
        let mut methods: BTreeMap<String, MethodView> = BTreeMap::new();
        fn view<'m>(
            methods: &'m mut BTreeMap<String, MethodView>,
            method: &str,
        ) -> &'m mut MethodView {
            methods
                .entry(method.to_owned())
                .or_insert_with(|| MethodView {
                    backup_method: method.to_owned(),
                    ..MethodView::default()
                })
        }
        for MethodRecord {
            backup_method,
            record,
        } in client_shares
        {
            view(&mut methods, &backup_method).client_share_created_at_ms =
                Some(record.created_at_ms);
        }
        for MethodRecord {
            backup_method,
            record,
        } in custodian_shares
        {
            let (bare, curve) = split_curve(&backup_method);
            let pair_status = record
                .pair_id
                .as_ref()
                .and_then(|id| pairs.get(id))
                .map(|p| p.status);
            let entry = CustodianView {
                curve: curve.unwrap_or("").to_owned(),
                stored_at_ms: record.created_at_ms,
                pair_id: record.pair_id,
                pair_status,
                backup_method: backup_method.clone(),
            };
            view(&mut methods, bare).custodian_shares.push(entry);
        }
        Ok(methods.into_values().collect())
    }

    pub async fn list_pairs(&self, client_id: &str) -> Result<Vec<PairRecord>, VaultError> {
        validate::client_id(client_id)?;
        let id = client_id.to_owned();
        self.read_store(move |store| store.pairs(&id)).await
    }

    /// Moves pairs to `status`, all or none.
    pub async fn update_pairs(
        &self,
        client_id: &str,
        ids: &[String],
        status: PairStatus,
        actor: &str,
    ) -> Result<(), VaultError> {
        validate::client_id(client_id)?;
        if ids.is_empty() {
            return Err(VaultError::invalid(
                Field::BackupSharePairIds,
                "is required",
            ));
        }
        if ids.len() > validate::MAX_PAIR_IDS {
            return Err(VaultError::invalid(
                Field::BackupSharePairIds,
                format!("may name at most {} pairs", validate::MAX_PAIR_IDS),
            ));
        }
        for id in ids {
            validate::pair_id(Field::BackupSharePairIds, id)?;
        }
        self.store
            .write(
                WriteOp::UpdatePairs {
                    client_id: client_id.to_owned(),
                    ids: ids.to_vec(),
                    status,
                    now_ms: now_ms(),
                },
                Some(entry(actor, "update_pairs", client_id, "")),
            )
            .await?;
        Ok(())
    }

    /// Erases everything held for a client; answers (custodian, client, pairs) deleted.
    pub async fn delete_client(
        &self,
        client_id: &str,
        actor: &str,
    ) -> Result<(u64, u64, u64), VaultError> {
        validate::client_id(client_id)?;
        match self
            .store
            .write(
                WriteOp::DeleteClient {
                    client_id: client_id.to_owned(),
                },
                Some(entry(actor, "delete_client", client_id, "")),
            )
            .await?
        {
            WriteOutcome::ClientDeleted {
                custodian_shares,
                client_shares,
                backup_share_pairs,
            } => Ok((custodian_shares, client_shares, backup_share_pairs)),
            _ => Err(VaultError::Internal),
        }
    }

    // ---- administration ----

    /// Creates a token; the returned secret is shown once and stored only as a hash.
    pub async fn create_token(
        &self,
        name: &str,
        role: Role,
        actor: &str,
    ) -> Result<Zeroizing<String>, VaultError> {
        validate::token_name(name)?;
        if name == "admin" || name == "webhook" {
            return Err(VaultError::invalid(
                Field::Name,
                "`admin` and `webhook` are reserved",
            ));
        }
        let token = auth::generate_token().map_err(crypto_failure)?;
        self.store
            .write(
                WriteOp::CreateToken(TokenRecord {
                    name: name.to_owned(),
                    role,
                    hash: auth::digest(token.as_bytes()),
                    created_at_ms: now_ms(),
                }),
                Some(entry(
                    actor,
                    "create_token",
                    &format!("token:{name}"),
                    role.name(),
                )),
            )
            .await?;
        Ok(token)
    }

    pub fn list_tokens(&self) -> Result<Vec<TokenRecord>, VaultError> {
        Ok(self.store.tokens()?)
    }

    pub async fn revoke_token(&self, name: &str, actor: &str) -> Result<(), VaultError> {
        validate::token_name(name)?;
        self.store
            .write(
                WriteOp::RevokeToken {
                    name: name.to_owned(),
                },
                Some(entry(actor, "revoke_token", &format!("token:{name}"), "")),
            )
            .await?;
        Ok(())
    }

    /// Audit events after `after` that match `filter`, a step at a time: see
    /// [`Store::find_audit_events`].
    pub fn audit_events(
        &self,
        after: u64,
        limit: usize,
        filter: impl Fn(&AuditEvent) -> bool,
    ) -> Result<(Vec<AuditEvent>, u64), VaultError> {
        Ok(self.store.find_audit_events(after, limit, &filter)?)
    }

    /// Checks the whole audit chain up to its current head.
    pub fn verify_audit(&self) -> Result<ChainReport, VaultError> {
        Ok(self.store.verify_audit()?)
    }

    // ---- keys, verification and snapshots ----

    /// Re-wraps every record's data key under `new`, while serving: new writes are sealed
    /// under `new` from the start; records are re-wrapped page by page (a record rewritten
    /// meanwhile is left as written). Resumable: records already under `new` are skipped, and
    /// the rotation is recorded so that an interrupted one is noticed at start. When it
    /// finishes, the data dir's key check is sealed under `new` and the old key is no longer
    /// needed. `progress` is told (done, total) after each page; answers the total.
    pub async fn rekey(
        &self,
        new: MasterKey,
        actor: &str,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<u64, VaultError> {
        let _one_at_a_time = self.rekeying.lock().await;
        let new = Arc::new(new);
        let target = new
            .seal(&REKEY_TARGET_AAD, KEY_CHECK_PLAINTEXT)
            .map_err(crypto_failure)?;
        self.store
            .write(
                WriteOp::Meta {
                    set: vec![(REKEY_TARGET.into(), target)],
                    remove: Vec::new(),
                },
                Some(entry(actor, "rekey_start", "", &new.id().to_string())),
            )
            .await?;
        {
            let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
            if keys.primary.id() != new.id() {
                let old = std::mem::replace(&mut keys.primary, Arc::clone(&new));
                keys.older.retain(|k| k.id() != new.id());
                keys.older.push(old);
            }
        }
        let counts = self.store.counts()?;
        let total = counts.custodian_shares + counts.client_shares;
        // Sweep until a sweep finds nothing under another key: a write sealed just before the
        // switch may land after its page was re-wrapped, and the next sweep catches it.
        for sweep in 0.. {
            let stale = self
                .rewrap_sweep(&new, sweep == 0, total, &mut progress)
                .await?;
            if stale == 0 {
                break;
            }
            if sweep == 8 {
                return Err(VaultError::Unavailable);
            }
        }
        let check = new
            .seal(&KEY_CHECK_AAD, KEY_CHECK_PLAINTEXT)
            .map_err(crypto_failure)?;
        self.store
            .write(
                WriteOp::Meta {
                    set: vec![(KEY_CHECK.into(), check)],
                    remove: vec![REKEY_TARGET.into()],
                },
                Some(entry(actor, "rekey_finish", "", &new.id().to_string())),
            )
            .await?;
        progress(total, total);
        Ok(total)
    }

    /// Re-wraps every record not yet under `new`; answers how many it found.
    async fn rewrap_sweep(
        &self,
        new: &MasterKey,
        report: bool,
        total: u64,
        progress: &mut impl FnMut(u64, u64),
    ) -> Result<u64, VaultError> {
        let (mut done, mut stale) = (0u64, 0u64);
        for (table, name) in [
            (TableId::Custodian, CUSTODIAN_TABLE),
            (TableId::Client, CLIENT_TABLE),
        ] {
            let mut pages = Pages::new(self.store.as_ref(), table, 512);
            while let Some(page) = pages.next()? {
                done += page.len() as u64;
                let mut batch = Vec::new();
                for (client_id, backup_method, record) in page {
                    let current = MasterKey::envelope_key_id(&record.envelope)
                        .map_err(|_| VaultError::Corrupt)?;
                    if current == new.id() {
                        continue;
                    }
                    let aad = RecordAad {
                        table: name,
                        client_id: &client_id,
                        backup_method: &backup_method,
                    };
                    let envelope = self
                        .key_for(&record.envelope)
                        .and_then(|old| old.rewrap(&aad, &record.envelope, new))
                        .map_err(|err| {
                            tracing::error!(table = name, client = %client_id, %backup_method, error = %err, "cannot re-wrap a record");
                            crypto_failure(err)
                        })?;
                    let replacement = SealedRecord {
                        envelope,
                        ..record.clone()
                    };
                    batch.push(Rewrap {
                        table,
                        client_id,
                        backup_method,
                        expected: record,
                        replacement,
                    });
                }
                stale += batch.len() as u64;
                if !batch.is_empty() {
                    self.store.write(WriteOp::Rewrap(batch), None).await?;
                }
                if report {
                    progress(done.min(total), total);
                }
            }
        }
        Ok(stale)
    }

    /// Opens every share and cipherText; answers the counts per table and what failed.
    pub fn verify_records(&self) -> Result<VerifyReport, VaultError> {
        let mut report = VerifyReport::default();
        for (table, name) in [
            (TableId::Custodian, CUSTODIAN_TABLE),
            (TableId::Client, CLIENT_TABLE),
        ] {
            let mut pages = Pages::new(self.store.as_ref(), table, 1024);
            while let Some(page) = pages.next()? {
                for (client_id, backup_method, record) in page {
                    let aad = RecordAad {
                        table: name,
                        client_id: &client_id,
                        backup_method: &backup_method,
                    };
                    let opened = self
                        .key_for(&record.envelope)
                        .and_then(|key| key.open(&aad, &record.envelope));
                    match table {
                        TableId::Custodian => report.custodian_shares += 1,
                        _ => report.client_shares += 1,
                    }
                    if let Err(err) = opened {
                        report.failed += 1;
                        if report.failures.len() < 100 {
                            report
                                .failures
                                .push(format!("{name}/{client_id}/{backup_method}: {err}"));
                        }
                    }
                }
            }
        }
        Ok(report)
    }

    /// Writes a snapshot of the whole vault from one read transaction, in chunks handed to
    /// `sink` (see [`crate::snapshot`] for the format).
    pub fn snapshot(
        &self,
        sink: &mut dyn FnMut(Vec<u8>) -> Result<(), StoreError>,
    ) -> Result<(), VaultError> {
        const CHUNK: usize = 256 * 1024;
        let key_id = self.key_id().to_bytes();
        let mut sum = snapshot::Checksummer::default();
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK);
        let mut emit = |bytes: &[u8], buf: &mut Vec<u8>, sum: &mut snapshot::Checksummer| {
            sum.update(bytes);
            buf.extend_from_slice(bytes);
            if buf.len() >= CHUNK {
                sink(std::mem::take(buf))
            } else {
                Ok(())
            }
        };
        self.store.export(&mut |item| match item {
            ExportItem::Counts(counts) => {
                let header = snapshot::Header {
                    created_at_ms: now_ms(),
                    key_id,
                    counts,
                };
                emit(&header.encode(), &mut buf, &mut sum)
            }
            ExportItem::Record(table, key, value) => {
                emit(&snapshot::record(table, key, value), &mut buf, &mut sum)
            }
        })?;
        emit(&snapshot::end(), &mut buf, &mut sum)?;
        buf.extend_from_slice(&sum.finish());
        sink(buf)?;
        Ok(())
    }

    /// Records an administrative action in the audit trail.
    pub async fn record_admin(&self, actor: &str, action: &'static str) -> Result<(), VaultError> {
        self.store
            .write(
                WriteOp::AuditOnly { deferred: false },
                Some(entry(actor, action, "", "")),
            )
            .await?;
        Ok(())
    }

    pub fn status(&self) -> Result<VaultStatus, VaultError> {
        Ok(VaultStatus {
            counts: self.store.counts()?,
            database_bytes: self.store.size_bytes(),
            key_id: self.key_id(),
            uptime_secs: self.started.elapsed().as_secs(),
        })
    }
}
