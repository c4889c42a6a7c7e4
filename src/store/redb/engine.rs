//! redb under the redo log ([`crate::store::wal`]): batches applied without durability once
//! their record is fsynced, checkpoints, and recovery.

use super::tables::{Tables, backend};
use crate::store::disk::Disk;
use crate::store::wal::{self, Log, Recorder};
use crate::store::{StoreError, Writer};
use redb::{Database, Durability, ReadableDatabase, TableDefinition};
use std::time::{Duration, Instant};

/// The checkpoint row's table: redb-internal, in no snapshot.
const LOG_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("sharevault_log");
const CHECKPOINT: &str = "checkpoint";

/// When a checkpoint is taken: after this long, or this many bytes of log, whichever first.
#[derive(Debug, Clone, Copy)]
pub struct Checkpoints {
    pub every: Duration,
    pub bytes: u64,
}

impl Default for Checkpoints {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(5),
            bytes: 64 << 20,
        }
    }
}

/// Where the last checkpoint left the log: the last LSN it holds, the epoch the log was
/// started afresh with after it, and the epoch of the log it covers (which a crash before
/// the fresh start leaves behind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    lsn: u64,
    epoch: u64,
    previous: u64,
}

fn read_mark(db: &Database) -> Result<Option<Mark>, StoreError> {
    let txn = db.begin_read().map_err(backend)?;
    let table = match txn.open_table(LOG_TABLE) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(err) => return Err(backend(err)),
    };
    let Some(row) = table.get(CHECKPOINT).map_err(backend)? else {
        return Ok(None);
    };
    let v = row.value();
    if v.len() != 24 {
        return Err(StoreError::Corrupt("log checkpoint"));
    }
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&v[i..i + 8]);
        u64::from_le_bytes(b)
    };
    Ok(Some(Mark {
        lsn: word(0),
        epoch: word(8),
        previous: word(16),
    }))
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("log: {e}"))
}

/// The log beside the database was written for another copy of it.
fn foreign_log() -> StoreError {
    StoreError::Backend(
        "the log beside the database file (sharevault.redb.log) was written for another copy \
         of the database and is not replayed into it; move the log away to open the database \
         as it is, or put back the database file it belongs to"
            .into(),
    )
}

/// Records, in order.
pub(crate) type Records = Vec<(u64, Vec<u8>)>;

/// The records of `disk` that come after the checkpoint in `db`, in order, and the log's
/// epoch (0 without a log).
pub(crate) fn pending_records(
    db: &Database,
    disk: &dyn Disk,
) -> Result<(Records, u64), StoreError> {
    let mark = read_mark(db)?;
    let Some(scan) = wal::scan(disk).map_err(io)? else {
        return Ok((Vec::new(), 0));
    };
    let epoch = scan.epoch;
    if scan.records.is_empty() {
        return Ok((Vec::new(), epoch));
    }
    match mark {
        Some(m) if m.epoch == scan.epoch && scan.first_lsn == m.lsn + 1 => {
            Ok((scan.records, epoch))
        }
        // A crash between a checkpoint and the log's fresh start leaves the log it covers.
        Some(m) if m.previous == scan.epoch && scan.records.iter().all(|(l, _)| *l <= m.lsn) => {
            Ok((Vec::new(), epoch))
        }
        // Records of a log this database never checkpointed: another copy's.
        _ => Err(foreign_log()),
    }
}

/// Applies `records` to `db` in one transaction; with `durable`, also records the checkpoint
/// (`epoch` is what the log is started afresh with) and commits durably, with the allocator
/// state, so that the next open after a crash needs no repair.
pub(crate) fn apply_records(
    db: &Database,
    records: &[(u64, Vec<u8>)],
    checkpoint: Option<(u64, u64, u64)>,
) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(backend)?;
    let durable = checkpoint.is_some();
    txn.set_durability(if durable {
        Durability::Immediate
    } else {
        Durability::None
    })
    .map_err(|e| StoreError::Backend(e.to_string()))?;
    txn.set_quick_repair(durable);
    {
        let mut tables = Tables::open(&txn)?;
        for (_, payload) in records {
            wal::replay(payload, &mut tables)?;
        }
    }
    if let Some((lsn, epoch, previous)) = checkpoint {
        let mut row = [0u8; 24];
        row[..8].copy_from_slice(&lsn.to_le_bytes());
        row[8..16].copy_from_slice(&epoch.to_le_bytes());
        row[16..].copy_from_slice(&previous.to_le_bytes());
        txn.open_table(LOG_TABLE)
            .map_err(backend)?
            .insert(CHECKPOINT, row.as_slice())
            .map_err(backend)?;
    }
    txn.commit().map_err(backend)
}

/// The log and its checkpoints, owned by the writer thread.
pub(crate) struct Engine {
    log: Log,
    last_checkpoint: Instant,
    checkpoints: Checkpoints,
    payload: Vec<u8>,
    /// The log failed: nothing more is appended until a checkpoint starts it afresh.
    log_failed: bool,
}

/// How a batch ended.
pub(crate) enum Applied {
    /// Logged (fsynced unless deferred) and visible.
    Done,
    /// Nothing of it is anywhere: the transaction was abandoned before its record was written.
    Refused(StoreError),
    /// Its record may be in the log but redb failed: the database must be reopened (which
    /// replays the log), and the outcome is known only after that.
    Reopen(StoreError),
}

impl Engine {
    /// Recovers `db` from the log on `disk` (the records after its last checkpoint), takes a
    /// checkpoint, and starts the log afresh.
    pub(crate) fn recover(
        db: &Database,
        disk: Box<dyn Disk>,
        checkpoints: Checkpoints,
    ) -> Result<Self, StoreError> {
        let (records, previous) = pending_records(db, disk.as_ref())?;
        let last = match (records.last(), read_mark(db)?) {
            (Some((lsn, _)), _) => *lsn,
            (None, Some(mark)) => mark.lsn,
            (None, None) => 0,
        };
        if !records.is_empty() {
            tracing::info!(records = records.len(), "log replayed into the database");
        }
        let epoch = wal::random_epoch().map_err(io)?;
        apply_records(db, &records, Some((last, epoch, previous))).map_err(|e| {
            StoreError::Backend(format!("replaying {} log records: {e}", records.len()))
        })?;
        let log = Log::reset(disk, epoch, last + 1).map_err(io)?;
        Ok(Self {
            log,
            last_checkpoint: Instant::now(),
            checkpoints,
            payload: Vec::new(),
            log_failed: false,
        })
    }

    /// Runs `jobs` in one redb transaction, appends their effects to the log as one record
    /// (fsynced when `durable`), then commits the transaction without durability.
    pub(crate) fn apply(
        &mut self,
        db: &Database,
        jobs: &mut dyn Iterator<Item = &mut crate::store::Apply>,
        durable: bool,
    ) -> Applied {
        if self.log_failed
            && let Err(err) = self.checkpoint(db)
        {
            return Applied::Reopen(err);
        }
        let mut txn = match db.begin_write() {
            Ok(txn) => txn,
            Err(err) => return Applied::Reopen(backend(err)),
        };
        if let Err(err) = txn.set_durability(Durability::None) {
            return Applied::Refused(StoreError::Backend(err.to_string()));
        }
        txn.set_quick_repair(false);
        self.payload.clear();
        let ran = (|| -> Result<(), StoreError> {
            let mut tables = Tables::open(&txn)?;
            let mut recorder = Recorder {
                below: &mut tables as &mut dyn Writer,
                payload: &mut self.payload,
            };
            for apply in jobs {
                apply(&mut recorder)?;
            }
            Ok(())
        })();
        if let Err(err) = ran {
            drop(txn);
            return Applied::Refused(err);
        }
        if self.payload.is_empty() {
            // Nothing changed (every job was refused by the rules, or a flush).
            drop(txn);
            if durable && let Err(err) = self.log.sync() {
                self.log_failed = true;
                return Applied::Refused(io(err));
            }
            return Applied::Done;
        }
        if let Err(err) = self.log.append(&self.payload, durable) {
            // The record may or may not be on the disk: the transaction is abandoned, and the
            // next batch first checkpoints the database as it is and starts a fresh log, so
            // that the record can never come back.
            drop(txn);
            self.log_failed = true;
            return Applied::Refused(io(err));
        }
        match txn.commit() {
            Ok(()) => Applied::Done,
            Err(err) => Applied::Reopen(backend(err)),
        }
    }

    /// Whether a checkpoint is due.
    pub(crate) fn due(&self) -> bool {
        self.log.appended() >= self.checkpoints.bytes
            || (self.log.appended() > 0 && self.last_checkpoint.elapsed() >= self.checkpoints.every)
    }

    /// Commits the database durably with the log position it holds, then starts the log
    /// afresh.
    pub(crate) fn checkpoint(&mut self, db: &Database) -> Result<(), StoreError> {
        self.checkpoint_shrinking(db, false)
    }

    /// A checkpoint; with `shrink`, the log's file is also cut back (the disk is nearly full:
    /// the checkpoint also lets redb reuse the pages that commits since the last one freed).
    pub(crate) fn checkpoint_shrinking(
        &mut self,
        db: &Database,
        shrink: bool,
    ) -> Result<(), StoreError> {
        let epoch = wal::random_epoch().map_err(io)?;
        apply_records(
            db,
            &[],
            Some((self.log.last_lsn(), epoch, self.log.epoch())),
        )?;
        self.log_failed = true;
        self.log.restart(epoch, shrink).map_err(io)?;
        self.log_failed = false;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// Whether the log since the last checkpoint holds more than a quarter of `free` bytes:
    /// until a checkpoint, both the log and the pages redb may not yet reuse grow with it, so
    /// a nearly full disk is checkpointed (and the log cut back) well before it fills.
    pub(crate) fn crowds(&self, free: u64) -> bool {
        self.log.appended() > 0 && self.log.appended().saturating_mul(4) >= free
    }

    /// Whether records were appended since the last checkpoint.
    pub(crate) fn dirty(&self) -> bool {
        self.log.appended() > 0
    }

    /// Whether records were appended without an fsync.
    pub(crate) fn unsynced(&self) -> bool {
        self.log.unsynced()
    }
}
