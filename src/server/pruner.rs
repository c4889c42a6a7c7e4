//! The audit trail's retention, run by the daemon: every interval, the events the retention
//! no longer keeps are archived and pruned. The reads and the archive's writes run on the
//! blocking pool ([`crate::audit::prune`]), so that a long prune holds no async worker.

use crate::audit::Retention;
use crate::vault::Vault;
use std::sync::Arc;

/// Ranges of [`crate::audit::retention::BATCH`] events pruned at most per interval, so that a
/// long backlog (retention turned on for a large trail) is worked off in steps that leave the
/// writer to the traffic in between.
const BATCHES_PER_ROUND: usize = 64;

/// Prunes the trail at start and then every `retention.interval`, until aborted.
pub async fn run(vault: Arc<Vault>, retention: Retention) {
    let mut tick = tokio::time::interval(retention.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
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
