//! The group-commit writer thread, and the flusher of deferred audit events.

use super::engine::{Applied, Engine};
use super::{MAX_BATCH, Shared};
use crate::store::{StoreError, WriteClass, WriteJob};
use tokio::sync::{mpsc, oneshot};

pub(super) use crate::store::QueuedJob as Job;

fn is_read_audit(job: &Job) -> bool {
    matches!(job.job.class, WriteClass::ReadAudit { .. })
}

fn all_deferred(jobs: &[Job]) -> bool {
    jobs.iter()
        .all(|j| j.job.class == WriteClass::ReadAudit { deferred: true })
}

/// Makes deferred audit events durable within [`crate::store::DEFERRED_FLUSH`]: when one is waiting,
/// it queues an empty durable write, whose fsync of the log carries them to disk.
pub(super) fn run_flusher(shared: &Shared, queue: &mpsc::Sender<Job>) {
    use std::sync::atomic::Ordering;
    while !shared.closing.load(Ordering::SeqCst) {
        std::thread::sleep(crate::store::DEFERRED_FLUSH / 2);
        if shared.unflushed.swap(false, Ordering::SeqCst) {
            let (reply, _) = oneshot::channel();
            let flush = Job {
                job: WriteJob {
                    class: WriteClass::ReadAudit { deferred: false },
                    apply: Box::new(|_| Ok(())),
                    client: None,
                },
                reply,
            };
            if queue.blocking_send(flush).is_err() {
                break;
            }
        }
    }
}

pub(super) fn run_writer(
    shared: &Shared,
    mut engine: Option<Engine>,
    mut queue: mpsc::Receiver<Job>,
) {
    while let Some(mut jobs) = crate::store::next_batch(&mut queue, MAX_BATCH) {
        let started = std::time::Instant::now();
        // Below the free-space reserve, jobs that add data are refused; audit events of
        // reads, deletions and status updates still go through, so that reads keep working.
        if let Err(low) = shared.check_space() {
            // Near the reserve, a checkpoint gives back what it can: the log's file, and the
            // pages freed since the last checkpoint (redb reuses them only after a durable
            // commit).
            if let (Some(e), Ok(db)) = (engine.as_mut(), shared.current())
                && e.dirty()
                && let Err(err) = e.checkpoint_shrinking(&db, true)
            {
                tracing::error!(error = %err, "checkpoint failed; the database is reopened");
                drop(db);
                engine = shared.reopen();
            }
            let (refused, allowed): (Vec<Job>, Vec<Job>) = jobs
                .into_iter()
                .partition(|job| job.job.class == WriteClass::AddsData);
            shared.metrics.refused_at_reserve(refused.len());
            for job in refused {
                let _ = job.reply.send(Err(StoreError::Backend(low.to_string())));
            }
            jobs = allowed;
            if jobs.is_empty() {
                continue;
            }
        }
        // Reads of share material wait for their audit events: those go first, in a record
        // of their own, so that recovery traffic never waits for a burst of writes to be
        // applied (only for the record already under way).
        let (reads, writes): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(is_read_audit);
        for group in [reads, writes] {
            if !group.is_empty() {
                commit_group(shared, &mut engine, group, started);
            }
        }
        let crowded = engine
            .as_ref()
            .zip(shared.free_bytes())
            .is_some_and(|(e, free)| e.crowds(free));
        if let (Some(e), Ok(db)) = (engine.as_mut(), shared.current())
            && (crowded || e.due())
            && let Err(err) = e.checkpoint_shrinking(&db, crowded)
        {
            tracing::error!(error = %err, "checkpoint failed; the database is reopened");
            drop(db);
            engine = shared.reopen();
        }
    }
    // A clean close: one last checkpoint, so that the next open has no log to replay.
    if let (Some(e), Ok(db)) = (engine.as_mut(), shared.current())
        && let Err(err) = e.checkpoint(&db)
    {
        tracing::error!(error = %err, "the last checkpoint failed; the next start replays the log");
    }
}

/// Commits one group of jobs and answers each.
fn commit_group(
    shared: &Shared,
    engine: &mut Option<Engine>,
    mut jobs: Vec<Job>,
    started: std::time::Instant,
) {
    let deferred = all_deferred(&jobs);
    let committed = commit_or_reopen(shared, engine, &mut jobs, !deferred);
    if committed.is_ok() {
        // An fsync of the log also makes every earlier deferred record durable.
        let waiting = engine.as_ref().is_some_and(Engine::unsynced);
        shared
            .unflushed
            .store(waiting, std::sync::atomic::Ordering::SeqCst);
    }
    shared
        .metrics
        .batch(jobs.len(), started.elapsed(), committed.is_ok());
    match &committed {
        Ok(()) => {
            tracing::debug!(
                batch = jobs.len(),
                commit_us = started.elapsed().as_micros() as u64,
                "committed"
            );
        }
        Err(err) => {
            tracing::error!(batch = jobs.len(), error = %err, "write transaction failed");
        }
    }
    crate::store::answer_all(jobs, &committed);
}

/// Applies a batch; after a failure of redb the database is reopened (which replays the log)
/// so that the next batch, and reads, can go on.
fn commit_or_reopen(
    shared: &Shared,
    engine: &mut Option<Engine>,
    jobs: &mut [Job],
    durable: bool,
) -> Result<(), StoreError> {
    if engine.is_none() || shared.current().is_err() {
        *engine = shared.reopen();
    }
    let (Some(e), Ok(db)) = (engine.as_mut(), shared.current()) else {
        return Err(StoreError::Backend("the database is being reopened".into()));
    };
    match e.apply(&db, &mut jobs.iter_mut().map(|j| &mut j.job.apply), durable) {
        Applied::Done => Ok(()),
        Applied::Refused(err) => Err(err),
        Applied::Reopen(err) => {
            drop(db);
            *engine = shared.reopen();
            // The reopen replayed the log: the batch is there if its record was durable.
            Err(err)
        }
    }
}
