//! Crash simulation of the journal, and of redb over it: a workload runs on a simulated disk
//! that crashes at its N-th write, length change or sync; the disk is then reopened as the
//! crash left it (nothing unsynced kept, everything kept, the last write torn, or a random
//! subset kept) and checked against a model: every acknowledged commit is there, and the state
//! is the state after some prefix of the commits, so nothing is half-visible.
//!
//! The journal-level workload is run at every crash point; the redb-level one at random points
//! of random workloads (`PROPTEST_CASES` raises the number of cases, see docs/design.md).

use super::*;
use crate::store::disk_sim::{SimDisk, Survivors};
use proptest::prelude::*;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::sync::atomic::{AtomicBool, Ordering};

const PAGE: u64 = 4096;
/// Two one-page records per journal: the journals switch every other commit.
const SMALL: u64 = 4 * PAGE;
const PAGES: u64 = 3;

/// One commit of the journal-level workload: pages written, each filled with one byte.
type Commit = &'static [(u64, u8)];

/// Two runs: six commits (the journals switch three times, so the newest records end up in
/// `journal0` with older ones in `journal1`), a clean close, a reopen, two more, a clean close.
const RUNS: [&[Commit]; 2] = [
    &[
        &[(0, 1)],
        &[(1, 2)],
        &[(0, 3)],
        &[(2, 4)],
        &[(1, 5)],
        &[(0, 6)],
    ],
    &[&[(2, 7)], &[(0, 8), (1, 8)]],
];

/// The database file (from its second page on: the first holds its identity) after the
/// first `k` commits of the workload.
fn model(k: usize) -> Vec<u8> {
    let mut file = vec![0u8; (PAGES * PAGE) as usize];
    for (page, byte) in RUNS
        .iter()
        .flat_map(|run| run.iter())
        .take(k)
        .flat_map(|c| c.iter())
    {
        let at = (page * PAGE) as usize;
        file[at..at + PAGE as usize].fill(*byte);
    }
    file
}

/// Runs the workload until it ends or the disk crashes; answers how many commits were
/// acknowledged (their `sync_data` returned).
fn journal_workload(disk: &SimDisk) -> usize {
    let mut acked = 0;
    let _ = (|| -> io::Result<()> {
        for run in RUNS {
            let journal = JournaledFile::open_sim(disk, SMALL)?;
            journal.set_len((PAGES + 1) * PAGE)?;
            for commit in run {
                for (page, byte) in commit.iter() {
                    journal.write((page + 1) * PAGE, &vec![*byte; PAGE as usize])?;
                }
                journal.sync_data()?;
                acked += 1;
            }
            journal.close()?;
        }
        Ok(())
    })();
    acked
}

/// Reopens (replays) what a crash left and answers the database file.
fn recover(image: Vec<Vec<u8>>) -> Vec<u8> {
    let disk = SimDisk::new(image, None);
    let journal = JournaledFile::open_sim(&disk, SMALL).expect("reopens after the crash");
    let mut file = disk.contents().swap_remove(0);
    journal.close().expect("closes cleanly");
    file.resize(file.len().max(((PAGES + 1) * PAGE) as usize), 0);
    file.split_off(PAGE as usize)
}

fn check_journal_crash(crash_at: u64, survivors: Survivors) -> bool {
    let disk = SimDisk::new(vec![Vec::new(); 3], Some(crash_at));
    let acked = journal_workload(&disk);
    let file = recover(disk.crash_image(survivors));
    let total = RUNS.iter().map(|r| r.len()).sum::<usize>();
    let matching = (acked..=total).find(|&k| model(k) == file);
    assert!(
        matching.is_some(),
        "crash at change {crash_at} ({survivors:?}): {acked} commits acknowledged, and the \
         recovered file is the state after no prefix that holds them all"
    );
    disk.crashed()
}

#[test]
fn every_crash_point_of_the_journal_keeps_every_acknowledged_commit_and_nothing_half_done() {
    let clean = SimDisk::new(vec![Vec::new(); 3], None);
    assert_eq!(journal_workload(&clean), 8);
    let changes = clean.changes();
    // The background threads make the count vary a little from run to run: go past it until
    // a run no longer crashes.
    let mut crash_at = 1;
    let mut crashed = true;
    while crashed && crash_at < 4 * changes {
        crashed = false;
        for survivors in [
            Survivors::None,
            Survivors::All,
            Survivors::TornLast,
            Survivors::Some(crash_at.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        ] {
            crashed |= check_journal_crash(crash_at, survivors);
        }
        crash_at += 1;
    }
    assert!(
        !crashed,
        "the workload ran to its end without a crash point left"
    );
}

/// A crash in the middle of a clean close, after the first journal's clear reached the disk:
/// what is left must be the newest records (harmless to replay over the synced file), never
/// only the older ones (which would undo the newer commits).
#[test]
fn a_crash_between_the_clears_of_a_clean_close_leaves_no_stale_records() {
    let disk = SimDisk::new(vec![Vec::new(); 3], None);
    let journal = JournaledFile::open_sim(&disk, SMALL).unwrap();
    journal.set_len((PAGES + 1) * PAGE).unwrap();
    for commit in RUNS[0] {
        for (page, byte) in commit.iter() {
            journal
                .write((page + 1) * PAGE, &vec![*byte; PAGE as usize])
                .unwrap();
        }
        journal.sync_data().unwrap();
    }
    assert_eq!(
        guard(&journal.inner.log).active,
        0,
        "the newest records are in journal0"
    );
    disk.crash_after_next_sync_of_a_journal();
    assert!(journal.close().is_err(), "the crash stops the close");
    let file = recover(disk.crash_image(Survivors::None));
    assert!(
        file == model(RUNS[0].len()),
        "older records were replayed over newer ones"
    );
}

/// After a failed fsync of the database file the kernel may have dropped its dirty pages: the
/// journal stops at once (the next commit fails), and a reopen recovers every acknowledged
/// commit from the journals.
#[test]
fn a_failed_checkpoint_fails_the_next_commit_and_a_reopen_recovers_everything() {
    let disk = SimDisk::new(vec![Vec::new(); 3], None);
    // The database file is fsynced twice by the open (after the replay, and with its new
    // identity); the third fsync is the first checkpoint.
    disk.fail_sync(0, 3);
    let journal = JournaledFile::open_sim(&disk, SMALL).unwrap();
    journal.set_len((PAGES + 1) * PAGE).unwrap();
    let commit = |page: u64, byte: u8| {
        journal.write((page + 1) * PAGE, &vec![byte; PAGE as usize])?;
        journal.sync_data()
    };
    commit(0, 1).unwrap();
    commit(1, 2).unwrap();
    commit(2, 3).unwrap(); // switches journals: the checkpoint of journal0 starts, and fails
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while journal.inner.failure().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(disk.syncs(0) >= 3, "the checkpoint ran");
    assert!(
        commit(0, 4).is_err(),
        "a commit was acknowledged after the database file failed to sync"
    );
    drop(journal);
    let reopened = JournaledFile::open_sim(&disk, SMALL).unwrap();
    let mut expected = disk.contents()[0][..PAGE as usize].to_vec();
    expected.extend(vec![1u8; PAGE as usize]);
    expected.extend(vec![2u8; PAGE as usize]);
    expected.extend(vec![3u8; PAGE as usize]);
    assert!(disk.contents()[0] == expected);
    reopened.close().unwrap();
}

/// A record header whose length is garbage is refused by its own checksum before any of the
/// payload it claims is read (or allocated).
#[test]
fn a_garbage_record_length_is_refused_before_the_payload_is_read() {
    let mut journal = vec![0u8; 1 << 20];
    journal[..8].copy_from_slice(MAGIC);
    journal[24..32].copy_from_slice(&7u64.to_le_bytes());
    journal[32..40].copy_from_slice(&((1u64 << 20) - 64).to_le_bytes());
    let disk = SimDisk::new(vec![Vec::new(), journal, Vec::new()], None);
    let file = JournaledFile::open_sim(&disk, SMALL).unwrap();
    assert!(
        disk.largest_read() <= HEADER,
        "read {} bytes for a record whose header does not check",
        disk.largest_read()
    );
    file.close().unwrap();
}

/// A journal of the earlier format (`SVJRNL01`, no header checksum) left with live records is
/// replayed, not ignored.
#[test]
fn a_journal_of_the_earlier_format_is_replayed() {
    let mut payload = Vec::new();
    push_entry(&mut payload, KIND_SET_LEN, 2 * PAGE, &[]);
    push_entry(&mut payload, KIND_WRITE, PAGE, &[0x5A; PAGE as usize]);
    let mut journal = vec![0u8; SMALL as usize];
    journal[..8].copy_from_slice(MAGIC_V1);
    journal[8..16].copy_from_slice(&41u64.to_le_bytes());
    journal[16..24].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    journal[24..28].copy_from_slice(&checksum(41, &payload).to_le_bytes());
    journal[HEADER_V1..HEADER_V1 + payload.len()].copy_from_slice(&payload);
    let disk = SimDisk::new(vec![Vec::new(), Vec::new(), journal], None);
    let file = JournaledFile::open_sim(&disk, SMALL).unwrap();
    assert!(disk.contents()[0][PAGE as usize..] == vec![0x5A; PAGE as usize]);
    file.close().unwrap();
}

/// Runs one commit (a page of `byte` at page 1) and stops without a clean close: answers the
/// disk as a crash left it, everything written kept.
fn crashed_after_a_commit(main: Vec<u8>, byte: u8) -> Vec<Vec<u8>> {
    let disk = SimDisk::new(vec![main, Vec::new(), Vec::new()], None);
    let journal = JournaledFile::open_sim(&disk, SMALL).unwrap();
    journal.set_len(2 * PAGE).unwrap();
    journal.write(PAGE, &vec![byte; PAGE as usize]).unwrap();
    journal.sync_data().unwrap();
    drop(journal);
    disk.crash_image(Survivors::None)
}

fn refused(files: Vec<Vec<u8>>) {
    let disk = SimDisk::new(files.clone(), None);
    let err = JournaledFile::open_sim(&disk, SMALL).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    assert!(err.to_string().contains("another database file"), "{err}");
    assert!(disk.contents() == files, "a refused open changes nothing");
}

/// A database file put beside the journals of another (moved, restored, copied in) is not
/// given their records.
#[test]
fn journals_written_for_another_database_file_are_refused() {
    let [_, j0, j1] = <[Vec<u8>; 3]>::try_from(crashed_after_a_commit(Vec::new(), 0xA1)).unwrap();
    let other = crashed_after_a_commit(Vec::new(), 0xB2).swap_remove(0);
    refused(vec![other, j0, j1]);
}

/// Nor is an earlier copy of the same database file: each open gives the file a new identity.
#[test]
fn journals_are_refused_for_an_earlier_copy_of_the_file() {
    let disk = SimDisk::new(vec![Vec::new(); 3], None);
    let journal = JournaledFile::open_sim(&disk, SMALL).unwrap();
    journal.set_len(2 * PAGE).unwrap();
    journal.write(PAGE, &vec![1; PAGE as usize]).unwrap();
    journal.sync_data().unwrap();
    journal.close().unwrap();
    let earlier = disk.contents().swap_remove(0);
    let [_, j0, j1] = <[Vec<u8>; 3]>::try_from(crashed_after_a_commit(earlier.clone(), 2)).unwrap();
    refused(vec![earlier, j0, j1]);
}

#[test]
fn a_write_over_the_identity_is_refused() {
    let disk = SimDisk::new(vec![Vec::new(); 3], None);
    let journal = JournaledFile::open_sim(&disk, SMALL).unwrap();
    journal.set_len(2 * PAGE).unwrap();
    assert!(journal.write(0, &[7; 320]).is_ok(), "redb's header");
    assert!(journal.write(0, &vec![7; PAGE as usize]).is_err());
    journal.close().unwrap();
}

// ---------------------------------------------------------------------------------------------
// redb over the journal
// ---------------------------------------------------------------------------------------------

const T: TableDefinition<u32, &[u8]> = TableDefinition::new("t");

#[derive(Clone, Debug)]
enum Op {
    /// One commit: keys put (with a value length) or deleted.
    Commit(Vec<(u32, Option<u16>)>),
    /// Drop the database (a clean close) and open it again.
    Reopen,
}

fn value(key: u32, commit: usize, len: u16) -> Vec<u8> {
    let mut v = vec![(key as u8) ^ (commit as u8); len as usize];
    v.extend_from_slice(&(commit as u32).to_le_bytes());
    v
}

type State = std::collections::BTreeMap<u32, Vec<u8>>;

/// The table after each prefix of the commits.
fn redb_models(ops: &[Op]) -> Vec<State> {
    let mut states = vec![State::new()];
    for op in ops {
        if let Op::Commit(changes) = op {
            let mut next = states.last().cloned().unwrap_or_default();
            let n = states.len();
            for (key, put) in changes {
                match put {
                    Some(len) => drop(next.insert(*key, value(*key, n, *len))),
                    None => drop(next.remove(key)),
                }
            }
            states.push(next);
        }
    }
    states
}

fn open_db(disk: &SimDisk, capacity: u64) -> Result<Database, redb::Error> {
    open_db_watched(disk, capacity).map(|(db, _)| db)
}

/// Opens redb over the journal, and answers the journal's state too, to watch its failures.
fn open_db_watched(disk: &SimDisk, capacity: u64) -> Result<(Database, Arc<Inner>), redb::Error> {
    open_db_repairing(disk, capacity, &AtomicBool::new(false))
}

/// As [`open_db_watched`], setting `repaired` if redb had to rebuild its allocator state by
/// reading the whole file (a full repair, which quick-repair commits avoid).
fn open_db_repairing(
    disk: &SimDisk,
    capacity: u64,
    repaired: &AtomicBool,
) -> Result<(Database, Arc<Inner>), redb::Error> {
    let file = JournaledFile::open_sim(disk, capacity).map_err(redb::StorageError::Io)?;
    let inner = Arc::clone(&file.inner);
    let flag = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&flag);
    // No page cache: redb reads every page through the journal (overlay, then file).
    let db = Database::builder()
        .set_cache_size(0)
        .set_repair_callback(move |_| seen.store(true, Ordering::SeqCst))
        .create_with_backend(file)?;
    repaired.store(flag.load(Ordering::SeqCst), Ordering::SeqCst);
    Ok((db, inner))
}

/// Answers whether the database was created, and how many commits were acknowledged. With
/// `quick_repair`, every commit records the allocator state, as the store's writer does.
fn redb_workload(disk: &SimDisk, ops: &[Op], capacity: u64, quick_repair: bool) -> (bool, usize) {
    let mut acked = 0;
    let mut created = false;
    let _ = (|| -> Result<(), redb::Error> {
        let mut db = open_db(disk, capacity)?;
        created = true;
        for op in ops {
            match op {
                Op::Reopen => {
                    drop(db);
                    db = open_db(disk, capacity)?;
                }
                Op::Commit(changes) => {
                    let mut txn = db.begin_write()?;
                    txn.set_quick_repair(quick_repair);
                    {
                        let mut table = txn.open_table(T)?;
                        for (key, put) in changes {
                            match put {
                                Some(len) => {
                                    table.insert(*key, value(*key, acked + 1, *len).as_slice())?;
                                }
                                None => drop(table.remove(*key)?),
                            }
                        }
                    }
                    txn.commit()?;
                    acked += 1;
                }
            }
        }
        Ok(())
    })();
    (created, acked)
}

fn read_table(db: &Database) -> State {
    let txn = db.begin_read().expect("a read transaction");
    let table = match txn.open_table(T) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return State::new(),
        Err(err) => panic!("cannot open the table: {err}"),
    };
    table
        .iter()
        .expect("the table iterates")
        .map(|row| {
            let (k, v) = row.expect("a row reads");
            (k.value(), v.value().to_vec())
        })
        .collect()
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let change = (0u32..40, prop::option::weighted(0.8, 1u16..3000));
    let op = prop_oneof![
        12 => prop::collection::vec(change, 1..6).prop_map(Op::Commit),
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

    /// redb over small journals (so that they switch and checkpoint), crashed at a random
    /// point of a random workload of commits and clean reopens.
    #[test]
    fn redb_over_the_journal_survives_a_crash_anywhere(
        ops in ops(),
        crash in 0.0f64..1.0,
        survivors in survivors(),
        capacity in prop_oneof![Just(64 * 1024u64), Just(256 * 1024u64)],
        quick_repair in any::<bool>(),
    ) {
        let clean = SimDisk::new(vec![Vec::new(); 3], None);
        redb_workload(&clean, &ops, capacity, quick_repair);
        let crash_at = 1 + (crash * clean.changes() as f64) as u64;
        let disk = SimDisk::new(vec![Vec::new(); 3], Some(crash_at));
        let (created, acked) = redb_workload(&disk, &ops, capacity, quick_repair);
        let models = redb_models(&ops);
        let recovered = SimDisk::new(disk.crash_image(survivors), None);
        let repaired = AtomicBool::new(false);
        let db = match open_db_repairing(&recovered, capacity, &repaired) {
            Ok((db, _)) => db,
            // A crash in the middle of redb's creation of the file can leave a file redb
            // does not recognise (as it would without the journal); nothing was acknowledged.
            Err(err) => {
                prop_assert!(!created, "redb cannot open the database after a crash: {}", err);
                return Ok(());
            }
        };
        let state = read_table(&db);
        // Once a commit with quick-repair is durable, the open after the crash loads the
        // allocator state it recorded instead of reading the whole file.
        prop_assert!(
            !(quick_repair && acked > 0 && repaired.load(Ordering::SeqCst)),
            "crash at change {} ({:?}): a full repair after {} quick-repair commits",
            crash_at, survivors, acked
        );
        prop_assert!(
            (acked..models.len()).any(|k| models[k] == state),
            "crash at change {} ({:?}): {} commits acknowledged, the table matches no prefix \
             that holds them all",
            crash_at, survivors, acked
        );
    }
}

/// Runs `ops` as the store's writer does: a failed commit drops the database and opens it
/// again (which replays the journals). Once the database is created, the `nth` fsync of
/// `file` from then on fails, and what it lost is evicted (reads find the old contents) as
/// soon as the journal has taken note of the failure, before the next commit. Answers the
/// tables the commits may have left: the acknowledged ones applied, and each failed one
/// either applied whole (it failed after reaching the journal) or not at all.
fn redb_workload_with_failures(
    disk: &SimDisk,
    ops: &[Op],
    capacity: u64,
    (file, nth): (usize, u64),
) -> Vec<State> {
    let mut models = vec![State::new()];
    let mut acked = 0;
    let reopen = || open_db_watched(disk, capacity).or_else(|_| open_db_watched(disk, capacity));
    let (mut db, mut inner) = reopen().expect("opens");
    disk.fail_sync_deferred(file, disk.syncs(file) + nth);
    for op in ops {
        if let Some(checkpoint) = disk.lost() {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while checkpoint && inner.failure().is_none() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            disk.evict_lost();
        }
        let Op::Commit(changes) = op else {
            drop(db);
            (db, inner) = reopen().expect("reopens");
            continue;
        };
        let committed = (|| -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(T)?;
                for (key, put) in changes {
                    match put {
                        Some(len) => {
                            drop(table.insert(*key, value(*key, acked + 1, *len).as_slice())?)
                        }
                        None => drop(table.remove(*key)?),
                    }
                }
            }
            Ok(txn.commit()?)
        })();
        let apply = |model: &mut State| {
            for (key, put) in changes {
                match put {
                    Some(len) => drop(model.insert(*key, value(*key, acked + 1, *len))),
                    None => drop(model.remove(key)),
                }
            }
        };
        match committed {
            Ok(()) => {
                models.iter_mut().for_each(apply);
                acked += 1;
            }
            Err(_) => {
                let applied: Vec<State> = models
                    .iter()
                    .cloned()
                    .map(|mut m| {
                        apply(&mut m);
                        m
                    })
                    .collect();
                models.extend(applied);
                drop(db);
                disk.evict_lost();
                (db, inner) = reopen().expect("reopens after a failed commit");
            }
        }
    }
    drop(db);
    models
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// A failed fsync of the database file or of a journal, anywhere in a workload (the failed
    /// fsync drops the file's unsynced writes, as Linux may): the commit it fails, and every
    /// later one until the database is reopened, fails; after the reopen the table holds
    /// exactly the acknowledged commits (and a failed commit whole or not at all), and so does
    /// a power loss at the end.
    #[test]
    fn redb_over_the_journal_recovers_from_a_failed_fsync(
        ops in ops(),
        file in 0usize..3,
        nth in 1u64..40,
        capacity in prop_oneof![Just(64 * 1024u64), Just(256 * 1024u64)],
    ) {
        let disk = SimDisk::new(vec![Vec::new(); 3], None);
        let models = redb_workload_with_failures(&disk, &ops, capacity, (file, nth));
        for files in [disk.contents(), disk.crash_image(Survivors::None)] {
            let reopened = SimDisk::new(files, None);
            let db = open_db(&reopened, capacity).expect("redb opens");
            let table = read_table(&db);
            prop_assert!(
                models.contains(&table),
                "the table is not the acknowledged commits (with or without each failed one)"
            );
        }
    }
}
