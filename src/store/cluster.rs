//! What several daemons on one database share beyond the records: a registry of the live
//! daemons (each refreshes its row, its heartbeat, every half second) and cluster-wide locks.
//!
//! Only a store that several daemons serve at once (PostgreSQL) has one
//! ([`super::Store::cluster`]); on the embedded database the daemon is alone.

use super::StoreError;
use std::time::Duration;

/// A daemon that counts as live: its heartbeat is newer than this (by the database's clock).
pub const LIVE_WITHIN: Duration = Duration::from_secs(10);

/// One daemon's row in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Random, made at start.
    pub id: String,
    pub host: String,
    pub pid: u32,
    /// The id of the key that seals its new records.
    pub primary_key: String,
    /// The ids of every key it holds, the primary among them.
    pub held_keys: Vec<String>,
}

impl Member {
    /// `HOST (pid N)`, for messages.
    pub fn describe(&self) -> String {
        format!("{} (pid {})", self.host, self.pid)
    }
}

/// The locks held by one daemon at a time across the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterLock {
    /// Making a new vault's keys at a first start.
    Init,
    /// Running the audit pruner and archive.
    Pruner,
}

/// A cluster lock, held until dropped (or its connection is lost: [`LockGuard::held`]).
pub trait LockGuard: Send + Sync {
    /// Whether the lock is still held (its session answers).
    fn held(&self) -> bool;
}

/// The registry and the locks.
pub trait Cluster: Send + Sync {
    /// Adds or refreshes `me`'s row.
    fn register(&self, me: &Member) -> Result<(), StoreError>;
    /// Refreshes `me`'s row; answers false if it was gone (the vault was replaced meanwhile).
    fn heartbeat(&self, me: &Member) -> Result<bool, StoreError>;
    /// Removes `id`'s row (a clean stop).
    fn leave(&self, id: &str) -> Result<(), StoreError>;
    /// The daemons whose heartbeat is newer than [`LIVE_WITHIN`].
    fn live(&self) -> Result<Vec<Member>, StoreError>;
    /// Takes `lock`, waiting for it at most `wait`; `None` if another daemon held it all
    /// that time.
    fn lock(
        &self,
        lock: ClusterLock,
        wait: Duration,
    ) -> Result<Option<Box<dyn LockGuard>>, StoreError>;
}
