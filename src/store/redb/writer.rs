//! The group-commit writer thread, and the flusher of deferred audit events.

use super::tables::{Tables, backend};
use super::{MAX_BATCH, Shared};
use crate::store::{StoreError, WriteClass, WriteJob};
use redb::{Database, Durability};
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
/// it queues an empty durable write, whose commit carries them to disk.
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

pub(super) fn run_writer(shared: &Shared, mut queue: mpsc::Receiver<Job>) {
    while let Some(mut jobs) = crate::store::next_batch(&mut queue, MAX_BATCH) {
        let started = std::time::Instant::now();
        // Below the free-space reserve, jobs that add data are refused; audit events of
        // reads, deletions and status updates still go through, so that reads keep working.
        if let Err(low) = shared.check_space() {
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
        // Reads of share material wait for their audit events: those go first, in a commit
        // of their own, so that recovery traffic never waits for a burst of writes to be
        // applied (only for the commit already under way).
        let (reads, writes): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(is_read_audit);
        for group in [reads, writes] {
            if !group.is_empty() {
                commit_group(shared, group, started);
            }
        }
    }
    if shared.unflushed.load(std::sync::atomic::Ordering::SeqCst)
        && let Ok(db) = shared.current()
        && let Ok(mut txn) = db.begin_write()
        && let Err(err) = {
            txn.set_quick_repair(shared.quick_repair);
            txn.commit()
        }
    {
        tracing::error!(error = %err, "the last deferred audit events could not be flushed");
    }
}

/// Commits one group of jobs and answers each.
fn commit_group(shared: &Shared, mut jobs: Vec<Job>, started: std::time::Instant) {
    let deferred = all_deferred(&jobs);
    let committed = commit_or_reopen(shared, &mut jobs);
    if committed.is_ok() {
        // A durable commit also makes every earlier deferred one durable.
        shared
            .unflushed
            .store(deferred, std::sync::atomic::Ordering::SeqCst);
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

/// Commits a batch; after a failure the database is reopened (and repaired) so that the next
/// batch, and reads, can go on.
fn commit_or_reopen(shared: &Shared, jobs: &mut [Job]) -> Result<(), StoreError> {
    let db = match shared.current() {
        Ok(db) => db,
        Err(_) => {
            shared.reopen();
            shared.current()?
        }
    };
    let committed = commit_batch(&db, jobs, shared.quick_repair);
    if committed.is_err() {
        drop(db);
        shared.reopen();
    }
    committed
}

/// Runs every job in one transaction and commits it. An error means nothing was committed.
/// With `quick_repair`, a durable commit also records redb's allocator state (and commits in
/// two phases, two journal records), so that an open after a crash need not rebuild it.
fn commit_batch(db: &Database, jobs: &mut [Job], quick_repair: bool) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(backend)?;
    // A batch of nothing but deferred audit events commits without an fsync; the next
    // durable commit (a write, or the flusher's within DEFERRED_FLUSH) makes it durable.
    let durable = !all_deferred(jobs);
    let durability = if durable {
        Durability::Immediate
    } else {
        Durability::None
    };
    txn.set_durability(durability)
        .map_err(|e| StoreError::Backend(e.to_string()))?;
    txn.set_quick_repair(quick_repair && durable);
    {
        let mut tables = Tables::open(&txn)?;
        for job in jobs.iter_mut() {
            (job.job.apply)(&mut tables)?;
        }
    }
    txn.commit().map_err(backend)
}
