//! Crash simulation of redb under the redo log: a workload of batches, checkpoints and clean
//! reopens runs on a simulated disk (file 0 the database, file 1 the log) that crashes at its
//! N-th write, length change or sync; the disk is then reopened as the crash left it (nothing
//! unsynced kept, everything kept, the last write torn, or a random subset kept) and checked
//! against a model: every acknowledged batch is there, the state is the state after some
//! prefix of the batches (nothing half-visible), and the open needed no repair of redb's file.
//!
//! A small workload is crashed at every point; random longer ones at random points
//! (`PROPTEST_CASES` raises the number of cases).

use super::engine::{Applied, Checkpoints, Engine};
use super::tables::RedbReader;
use crate::store::disk_sim::{SimDisk, Survivors};
use crate::store::{Apply, Key, Range, Reader, StoreError, TableId};
use proptest::prelude::*;
use redb::{Database, ReadableDatabase, StorageBackend};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// redb's file on a simulated disk.
struct SimBackend(Box<dyn crate::store::disk::Disk>);

impl std::fmt::Debug for SimBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimBackend")
    }
}

impl StorageBackend for SimBackend {
    fn len(&self) -> std::io::Result<u64> {
        self.0.size()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.0.read_at(out, offset)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.0.sync()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.write_at(data, offset)
    }
    fn close(&self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// One batch: keys put (with a value length) or deleted; deferred batches are not
    /// fsynced (a deferred read audit) and are not acknowledged until a later fsync.
    Batch(Vec<(u32, Option<u16>)>),
    /// A checkpoint.
    Checkpoint,
    /// A clean close (a last checkpoint) and an open.
    Reopen,
}

type State = BTreeMap<String, Vec<u8>>;

fn value(key: u32, batch: usize, len: u16) -> Vec<u8> {
    let mut v = vec![(key as u8) ^ (batch as u8); len as usize];
    v.extend_from_slice(&(batch as u32).to_le_bytes());
    v
}

fn name(key: u32) -> String {
    format!("k{key:03}")
}

fn models(ops: &[Op]) -> Vec<State> {
    let mut states = vec![State::new()];
    for op in ops {
        if let Op::Batch(changes) = op {
            let mut next = states.last().cloned().unwrap_or_default();
            let n = states.len();
            for (key, put) in changes {
                match put {
                    Some(len) => drop(next.insert(name(*key), value(*key, n, *len))),
                    None => drop(next.remove(&name(*key))),
                }
            }
            states.push(next);
        }
    }
    states
}

fn open(
    disk: &SimDisk,
    checkpoints: Checkpoints,
    repaired: &AtomicBool,
) -> Result<(Database, Engine), String> {
    let flag = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&flag);
    // No page cache: every read goes to the simulated file.
    let db = Database::builder()
        .set_cache_size(0)
        .set_repair_callback(move |_| seen.store(true, Ordering::SeqCst))
        .create_with_backend(SimBackend(disk.file(0)))
        .map_err(|e| e.to_string())?;
    repaired.store(flag.load(Ordering::SeqCst), Ordering::SeqCst);
    let engine = Engine::recover(&db, disk.file(1), checkpoints).map_err(|e| e.to_string())?;
    Ok((db, engine))
}

fn batch(changes: Vec<(u32, Option<u16>)>, n: usize) -> Apply {
    Box::new(move |w| {
        for (key, put) in &changes {
            match put {
                Some(len) => w.put(TableId::Meta, Key::Name(&name(*key)), &value(*key, n, *len))?,
                None => drop(w.delete(TableId::Meta, Key::Name(&name(*key)))?),
            }
        }
        Ok(())
    })
}

/// Runs the workload until it ends or the disk crashes. Answers whether the database was
/// created and how many batches were acknowledged.
fn workload(disk: &SimDisk, ops: &[Op], checkpoints: Checkpoints) -> (bool, usize) {
    let mut acked = 0;
    let mut created = false;
    let _ = (|| -> Result<(), String> {
        let (mut db, mut engine) = open(disk, checkpoints, &AtomicBool::new(false))?;
        created = true;
        let mut n = 0;
        for op in ops {
            match op {
                Op::Batch(changes) => {
                    n += 1;
                    let mut apply = batch(changes.clone(), n);
                    match engine.apply(&db, &mut std::iter::once(&mut apply), true) {
                        Applied::Done => acked = n,
                        Applied::Refused(e) | Applied::Reopen(e) => return Err(e.to_string()),
                    }
                    if engine.due() {
                        engine.checkpoint(&db).map_err(|e| e.to_string())?;
                    }
                }
                Op::Checkpoint => engine.checkpoint(&db).map_err(|e| e.to_string())?,
                Op::Reopen => {
                    engine.checkpoint(&db).map_err(|e| e.to_string())?;
                    drop(engine);
                    drop(db);
                    (db, engine) = open(disk, checkpoints, &AtomicBool::new(false))?;
                }
            }
        }
        Ok(())
    })();
    (created, acked)
}

fn read_state(db: &Database) -> State {
    let reader = RedbReader {
        txn: db.begin_read().expect("a read transaction"),
    };
    let mut state = State::new();
    reader
        .scan(TableId::Meta, Range::After(None), &mut |key, value| {
            if let Key::Name(n) = key {
                state.insert(n.to_owned(), value.to_vec());
            }
            Ok(true)
        })
        .expect("the table scans");
    state
}

/// Crashes `ops` at change `crash_at`, reopens what the crash left and checks it. Answers
/// whether the disk crashed (a point past the workload's end does not).
fn check(ops: &[Op], checkpoints: Checkpoints, crash_at: u64, survivors: Survivors) -> bool {
    let disk = SimDisk::new(vec![Vec::new(); 2], Some(crash_at));
    let (created, acked) = workload(&disk, ops, checkpoints);
    let recovered = SimDisk::new(disk.crash_image(survivors), None);
    let repaired = AtomicBool::new(false);
    let (db, _engine) = match open(&recovered, checkpoints, &repaired) {
        Ok(opened) => opened,
        // A crash in the middle of redb's creation of its file can leave a file redb does
        // not recognise; nothing was acknowledged then.
        Err(err) => {
            assert!(
                !created,
                "crash at change {crash_at} ({survivors:?}): cannot open: {err}"
            );
            return disk.crashed();
        }
    };
    assert!(
        !(created && repaired.load(Ordering::SeqCst)),
        "crash at change {crash_at} ({survivors:?}): redb needed a full repair"
    );
    let state = read_state(&db);
    let models = models(ops);
    assert!(
        (acked..models.len()).any(|k| models[k] == state),
        "crash at change {crash_at} ({survivors:?}): {acked} batches acknowledged, and the \
         recovered state is that of no prefix holding them all"
    );
    disk.crashed()
}

fn small() -> Vec<Op> {
    vec![
        Op::Batch(vec![(1, Some(100)), (2, Some(3000))]),
        Op::Batch(vec![(1, None), (3, Some(10))]),
        Op::Checkpoint,
        Op::Batch(vec![(2, Some(50))]),
        Op::Reopen,
        Op::Batch(vec![(4, Some(2000)), (3, None)]),
        Op::Batch(vec![(5, Some(1))]),
    ]
}

/// Checkpoints only when asked for.
const NEVER: Checkpoints = Checkpoints {
    every: Duration::from_secs(3600),
    bytes: u64::MAX,
};

#[test]
fn every_crash_point_of_a_small_workload_keeps_every_acknowledged_batch_and_nothing_half_done() {
    let ops = small();
    let clean = SimDisk::new(vec![Vec::new(); 2], None);
    assert_eq!(workload(&clean, &ops, NEVER), (true, 5));
    let changes = clean.changes();
    for crash_at in 1..=changes + 1 {
        for survivors in [
            Survivors::None,
            Survivors::All,
            Survivors::TornLast,
            Survivors::Some(crash_at.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        ] {
            check(&ops, NEVER, crash_at, survivors);
        }
    }
}

#[test]
fn a_log_written_for_another_copy_of_the_database_is_refused() {
    // The database as a checkpoint left it, and a log that went on after that checkpoint.
    let disk = SimDisk::new(vec![Vec::new(); 2], None);
    let (db, mut engine) = open(&disk, NEVER, &AtomicBool::new(false)).unwrap();
    let mut first = batch(vec![(1, Some(10))], 1);
    assert!(matches!(
        engine.apply(&db, &mut std::iter::once(&mut first), true),
        Applied::Done
    ));
    engine.checkpoint(&db).unwrap();
    let old_db = disk.contents().swap_remove(0);
    let mut second = batch(vec![(2, Some(10))], 2);
    assert!(matches!(
        engine.apply(&db, &mut std::iter::once(&mut second), true),
        Applied::Done
    ));
    engine.checkpoint(&db).unwrap();
    let mut third = batch(vec![(3, Some(10))], 3);
    assert!(matches!(
        engine.apply(&db, &mut std::iter::once(&mut third), true),
        Applied::Done
    ));
    drop(engine);
    drop(db);
    // An earlier copy of the database file beside the newer log: replaying the log would
    // corrupt it, ignoring it would lose a write.
    let log = disk.contents().swap_remove(1);
    let mixed = SimDisk::new(vec![old_db, log], None);
    let err = open(&mixed, NEVER, &AtomicBool::new(false))
        .err()
        .expect("refused");
    assert!(err.contains("another copy"), "{err}");
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let change = (0u32..40, prop::option::weighted(0.8, 1u16..3000));
    let op = prop_oneof![
        12 => prop::collection::vec(change, 1..6).prop_map(Op::Batch),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Reopen),
    ];
    prop::collection::vec(op, 1..24)
}

fn survivors() -> impl Strategy<Value = Survivors> {
    prop_oneof![
        Just(Survivors::None),
        Just(Survivors::All),
        Just(Survivors::TornLast),
        any::<u64>().prop_map(Survivors::Some),
    ]
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Random workloads, with checkpoints by size too, crashed at a random point.
    #[test]
    fn redb_under_the_log_survives_a_crash_anywhere(
        ops in ops(),
        crash in 0.0f64..1.0,
        survivors in survivors(),
        bytes in prop_oneof![Just(4096u64), Just(u64::MAX)],
    ) {
        let checkpoints = Checkpoints { every: Duration::from_secs(3600), bytes };
        let clean = SimDisk::new(vec![Vec::new(); 2], None);
        workload(&clean, &ops, checkpoints);
        let crash_at = 1 + (crash * clean.changes() as f64) as u64;
        check(&ops, checkpoints, crash_at, survivors);
    }
}

/// A batch whose records are never acknowledged (the crash came before the fsync) is not
/// half there: covered above; this checks the error path of a failed job instead: nothing of
/// a failed batch reaches the log or the database.
#[test]
fn a_failed_job_leaves_nothing_in_the_log_or_the_database() {
    let disk = SimDisk::new(vec![Vec::new(); 2], None);
    let (db, mut engine) = open(&disk, NEVER, &AtomicBool::new(false)).unwrap();
    let mut good = batch(vec![(1, Some(10))], 1);
    let mut bad: Apply = Box::new(|w| {
        w.put(TableId::Meta, Key::Name("half"), b"x")?;
        Err(StoreError::Backend("refused".into()))
    });
    let mut jobs = [&mut good, &mut bad];
    assert!(matches!(
        engine.apply(&db, &mut jobs.iter_mut().map(|j| &mut **j), true),
        Applied::Refused(_)
    ));
    assert!(read_state(&db).is_empty());
    drop(engine);
    drop(db);
    let (db, _engine) = open(&disk, NEVER, &AtomicBool::new(false)).unwrap();
    assert!(read_state(&db).is_empty());
}
