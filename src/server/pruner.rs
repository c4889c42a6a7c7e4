//! The audit trail's retention, run by the daemon: every interval, the events the retention
//! no longer keeps are archived and pruned. The reads and the archive's writes run on the
//! blocking pool ([`crate::audit::prune`]), so that a long prune holds no async worker.
//!
//! On a database several daemons serve, one of them prunes and archives at a time: the one
//! that holds the cluster's pruner lock (a PostgreSQL advisory lock held by a session of its
//! own). Its archive dir is where the archived events are; when it stops (or its session is
//! lost), another daemon takes the lock at its next interval and archives into its own dir.

use crate::audit::Retention;
use crate::store::cluster::{ClusterLock, LockGuard};
use crate::vault::Vault;
use std::sync::Arc;

/// Ranges of [`crate::audit::retention::BATCH`] events pruned at most per interval, so that a
/// long backlog (retention turned on for a large trail) is worked off in steps that leave the
/// writer to the traffic in between.
const BATCHES_PER_ROUND: usize = 64;

/// Whether this daemon is the pruner now: alone on its store, or holding the pruner lock
/// (taken if free).
async fn leading(vault: &Arc<Vault>, lock: &mut Option<Box<dyn LockGuard>>) -> bool {
    if vault.store().cluster().is_none() {
        return true;
    }
    let (v, held) = (Arc::clone(vault), lock.take());
    let checked = tokio::task::spawn_blocking(move || {
        if let Some(held) = held {
            if held.held() {
                return (Some(held), false);
            }
            tracing::warn!("lost the audit pruner lock");
        }
        let taken = v
            .store()
            .cluster()
            .and_then(|c| c.lock(ClusterLock::Pruner, std::time::Duration::ZERO).ok())
            .flatten();
        let new = taken.is_some();
        (taken, new)
    })
    .await;
    match checked {
        Ok((held, new)) => {
            if new {
                tracing::info!(
                    "this daemon runs the audit pruner and archive (it holds the pruner lock)"
                );
            }
            *lock = held;
            lock.is_some()
        }
        Err(_) => false,
    }
}

/// Prunes the trail at start and then every `retention.interval`, until aborted.
pub async fn run(vault: Arc<Vault>, retention: Retention) {
    let mut tick = tokio::time::interval(retention.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lock = None;
    loop {
        tick.tick().await;
        if !leading(&vault, &mut lock).await {
            continue;
        }
        match vault.prune_audit(&retention, BATCHES_PER_ROUND).await {
            Ok(pruned) if pruned.events > 0 => tracing::info!(
                events = pruned.events,
                files = pruned.files.len(),
                pruned_to = pruned.pruned_to,
                archive_dir = %retention.archive_dir.display(),
                "audit events archived and pruned"
            ),
            Ok(_) => {}
            Err(err) => tracing::error!(error = %err, "the audit trail could not be pruned"),
        }
    }
}
