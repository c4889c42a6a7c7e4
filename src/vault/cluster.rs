//! One vault, several daemons: each daemon's presence in the database's registry, and a key
//! rotation that every live daemon follows.
//!
//! Every half second each daemon refreshes its row (its heartbeat, the key it seals under,
//! the keys it holds) and looks at the rotation records of the meta table:
//!
//! 1. A rotation starts with its target ([`super::REKEY_TARGET`]) and the new key handed
//!    over: sealed under the vault's current key ([`REKEY_HANDOVER`], so only a holder of
//!    that key can take it), or, under a token seal, the new root key sealed by the token
//!    (each daemon unseals it through its own token session). Each daemon takes the new
//!    key, to open records with, and says so in its row. The rotating daemon waits until
//!    every live daemon holds it ([`ACK_WITHIN`]; else the rotation is called off, nothing
//!    re-wrapped).
//! 2. Then [`REKEY_SWITCH`]: every daemon seals under the new key from then on, and says so;
//!    the rotating daemon waits for that too, then re-wraps the records. When it finishes,
//!    the hand-over records are removed with the target.
//!
//! A daemon that cannot get the key the vault seals under refuses every write (UNAVAILABLE),
//! and every write transaction refuses a record sealed under a retired key anyway
//! ([`super::rules`]).

use super::{KEY_CHECK, REKEY_TARGET, Vault};
use crate::crypto::{KeyId, MasterKey, RecordAad};
use crate::error::VaultError;
use crate::seal::{SEALED_ROOT_KEY, SEALED_ROOT_KEY_NEXT};
use crate::store::cluster::{Cluster, Member};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

/// The new key of a rotation under way, sealed under the vault's current key.
pub(crate) const REKEY_HANDOVER: &str = "rekey_handover";
pub(super) const HANDOVER_AAD: RecordAad<'static> = RecordAad {
    table: "meta",
    client_id: "",
    backup_method: REKEY_HANDOVER,
};
/// Present once every live daemon holds a rotation's new key: seal under it from now on.
pub(crate) const REKEY_SWITCH: &str = "rekey_switch";
/// How long a rotation waits for the live daemons at each step.
pub const ACK_WITHIN: Duration = Duration::from_secs(30);
/// How often a daemon refreshes its row and looks for a rotation.
pub const PRESENCE_EVERY: Duration = Duration::from_millis(500);

/// Opens a root key sealed by this daemon's token (the `--seal pkcs11` daemons).
pub type Unsealer = Arc<dyn Fn(&[u8]) -> Result<MasterKey, String> + Send + Sync>;

/// Who this daemon is in the registry.
pub(super) struct Presence {
    pub id: String,
    pub host: String,
}

impl Presence {
    pub fn new() -> Self {
        let mut id = [0u8; 12];
        // A clash is harmless but for its row; without randomness, the clock.
        if getrandom::fill(&mut id).is_err() {
            id[..8].copy_from_slice(&super::now_ms().to_be_bytes());
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "unknown-host".into());
        Self {
            id: hex::encode(id),
            host,
        }
    }
}

impl Vault {
    fn cluster(&self) -> Option<&dyn Cluster> {
        self.store.cluster()
    }

    /// This daemon's row as it is now.
    pub fn member(&self) -> Member {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        Member {
            id: self.presence.id.clone(),
            host: self.presence.host.clone(),
            pid: std::process::id(),
            primary_key: keys.primary.id().to_string(),
            held_keys: std::iter::once(&keys.primary)
                .chain(&keys.older)
                .map(|k| k.id().to_string())
                .collect(),
        }
    }

    fn holds(&self, id: KeyId) -> bool {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        keys.primary.id() == id || keys.older.iter().any(|k| k.id() == id)
    }

    /// Adds `key` to the keys that open records.
    pub(super) fn hold(&self, key: Arc<MasterKey>) {
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        if keys.primary.id() != key.id() && keys.older.iter().all(|k| k.id() != key.id()) {
            keys.older.push(key);
        }
    }

    /// Forgets `id` (a rotation called off), unless it is the primary.
    pub(super) fn forget(&self, id: KeyId) {
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        keys.older.retain(|k| k.id() != id);
    }

    /// Seals under `id` (a key held already) from now on; the previous primary still opens.
    pub(super) fn switch_to(&self, id: KeyId) -> bool {
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        if keys.primary.id() == id {
            return true;
        }
        let Some(at) = keys.older.iter().position(|k| k.id() == id) else {
            return false;
        };
        let new = keys.older.remove(at);
        let old = std::mem::replace(&mut keys.primary, new);
        keys.older.push(old);
        tracing::info!(master_key_id = %id, "this daemon now seals new records under the rotated key");
        true
    }

    /// Refuses writes (or serves again): this daemon lacks the vault's key, or the vault was
    /// replaced under it.
    fn refuse(&self, refuse: bool, why: &str) {
        let was = self.refusing.swap(refuse, Ordering::SeqCst);
        if refuse && !was {
            tracing::error!(
                "{why}; this daemon refuses writes (UNAVAILABLE) until it is restarted with the vault's key"
            );
        } else if !refuse && was {
            tracing::info!("this daemon holds the vault's key again and takes writes");
        }
    }

    /// Whether writes are refused (see [`Vault::refuse`]).
    pub(super) fn refusing(&self) -> bool {
        self.refusing.load(Ordering::SeqCst)
    }

    /// The new key sealed under the vault's current key (the one its key check is under), for
    /// the other daemons to take.
    pub(super) fn handover(&self, new: &MasterKey) -> Result<Vec<u8>, VaultError> {
        let check =
            super::records::meta(&*self.store.read()?, KEY_CHECK)?.ok_or(VaultError::Corrupt)?;
        let current = self.key_for(&check).map_err(|_| VaultError::Corrupt)?;
        current
            .seal(&HANDOVER_AAD, &new.to_raw())
            .map_err(super::crypto_failure)
    }

    /// Takes the key `id` from the hand-over record (or through the token).
    fn take_key(
        &self,
        id: KeyId,
        handover: Option<&[u8]>,
        token_sealed: Option<&[u8]>,
        unseal: Option<&Unsealer>,
    ) -> Result<Arc<MasterKey>, String> {
        let key = match (unseal, token_sealed, handover) {
            (Some(unseal), Some(sealed), _) => unseal(sealed)?,
            (_, _, Some(handover)) => {
                let opener = self
                    .key_for(handover)
                    .map_err(|_| "the hand-over is sealed under a key this daemon lacks")?;
                let raw = opener
                    .open(&HANDOVER_AAD, handover)
                    .map_err(|e| format!("the hand-over does not open: {e}"))?;
                MasterKey::from_file_contents(&raw).map_err(|e| e.to_string())?
            }
            _ => return Err("no hand-over record of the new key".into()),
        };
        if key.id() != id {
            return Err(format!("the key handed over is {}, not {id}", key.id()));
        }
        Ok(Arc::new(key))
    }

    /// One presence round, on a blocking thread: follows the rotation records, then
    /// refreshes this daemon's row.
    pub fn presence_round(&self, unseal: Option<&Unsealer>) -> Result<(), VaultError> {
        let Some(cluster) = self.cluster() else {
            return Ok(());
        };
        let meta = {
            let r = self.store.read_latest()?;
            let get = |name: &str| super::records::meta(&*r, name);
            [
                get(KEY_CHECK)?,
                get(REKEY_TARGET)?,
                get(REKEY_HANDOVER)?,
                get(REKEY_SWITCH)?,
                get(SEALED_ROOT_KEY_NEXT)?,
                get(SEALED_ROOT_KEY)?,
            ]
        };
        let [check, target, handover, switch, next, root] = meta;
        let id_of = |e: &Option<Vec<u8>>| {
            e.as_deref()
                .and_then(|e| MasterKey::envelope_key_id(e).ok())
        };
        match (id_of(&target), id_of(&check)) {
            (Some(target_id), _) => {
                if !self.holds(target_id) {
                    match self.take_key(target_id, handover.as_deref(), next.as_deref(), unseal) {
                        Ok(key) => {
                            tracing::info!(master_key_id = %target_id, "took the new key of a master key rotation");
                            self.hold(key);
                        }
                        Err(why) => {
                            tracing::warn!(master_key_id = %target_id, %why, "cannot take the new key of a master key rotation")
                        }
                    }
                }
                let switched = switch.is_some() && self.switch_to(target_id);
                self.refuse(
                    switch.is_some() && !switched,
                    "a master key rotation switched to a key this daemon could not take",
                );
            }
            (None, Some(current)) => {
                if !self.holds(current) {
                    // The rotation finished without this daemon: only the token may still
                    // give it the key (its sealed root key).
                    if let (Some(unseal), Some(root)) = (unseal, root.as_deref()) {
                        match unseal(root) {
                            Ok(key) if key.id() == current => self.hold(Arc::new(key)),
                            Ok(_) | Err(_) => {}
                        }
                    }
                }
                let switched = self.switch_to(current);
                self.refuse(
                    !switched,
                    "the vault's master key was rotated to a key this daemon does not hold",
                );
            }
            (None, None) => {}
        }
        if !cluster.heartbeat(&self.member())? {
            self.refusing.store(true, Ordering::SeqCst);
            if !self.replaced.swap(true, Ordering::SeqCst) {
                tracing::error!(
                    "this daemon's registration was removed: the vault was restored or migrated \
                     under it; it refuses writes (UNAVAILABLE) until it is restarted"
                );
            }
        }
        Ok(())
    }

    /// Registers this daemon (at start), then runs a presence round every
    /// [`PRESENCE_EVERY`] until aborted.
    pub async fn run_presence(self: Arc<Self>, unseal: Option<Unsealer>) {
        let mut ticks = tokio::time::interval(PRESENCE_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let (vault, unseal) = (Arc::clone(&self), unseal.clone());
            let round = tokio::task::spawn_blocking(move || vault.presence_round(unseal.as_ref()));
            match round.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::debug!(error = %err, "a presence round failed"),
                Err(err) => tracing::error!(error = %err, "a presence round did not finish"),
            }
        }
    }

    /// Adds this daemon's row (at start, once the vault is open).
    pub fn register(&self) -> Result<(), VaultError> {
        match self.cluster() {
            Some(cluster) => Ok(cluster.register(&self.member())?),
            None => Ok(()),
        }
    }

    /// Removes this daemon's row (a clean stop).
    pub fn leave(&self) {
        if let Some(cluster) = self.cluster()
            && let Err(err) = cluster.leave(&self.presence.id)
        {
            tracing::warn!(error = %err, "could not remove this daemon from the registry");
        }
    }

    /// Refreshes this daemon's row now, then waits until every live daemon's row satisfies
    /// `done`, for at most [`ACK_WITHIN`]; answers those that did not.
    pub(super) async fn await_daemons(
        &self,
        done: impl Fn(&Member) -> bool + Send + Sync + 'static,
    ) -> Result<(), Vec<Member>> {
        let done = Arc::new(done);
        let started = Instant::now();
        loop {
            let (store, me) = (Arc::clone(&self.store), self.member());
            let check = Arc::clone(&done);
            let lagging = tokio::task::spawn_blocking(move || {
                let cluster = store.cluster()?;
                cluster.heartbeat(&me).ok()?;
                let live = cluster.live().ok()?;
                Some(live.into_iter().filter(|m| !check(m)).collect::<Vec<_>>())
            })
            .await
            .ok()
            .flatten();
            match lagging {
                Some(lagging) if lagging.is_empty() => return Ok(()),
                Some(lagging) if started.elapsed() >= ACK_WITHIN => return Err(lagging),
                None if started.elapsed() >= ACK_WITHIN => return Err(Vec::new()),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}
