//! The journal: durability, replay order, torn and foreign records, locking.

use super::*;
use redb::{Database, ReadableDatabase, TableDefinition};
use std::os::unix::fs::FileExt;

const PAGE: usize = 4096;
/// Page 0 holds the file's identity: the tests write from page 1 on.
const BASE: u64 = PAGE as u64;

fn page(byte: u8) -> Vec<u8> {
    vec![byte; PAGE]
}

fn read_main(path: &Path, offset: u64) -> Vec<u8> {
    let mut out = vec![0u8; PAGE];
    let file = File::open(path).unwrap();
    file.read_exact_at(&mut out, offset).unwrap();
    out
}

/// What a machine crash leaves when none of the database file's page-cache writes reached
/// the disk: the file as it was before them.
fn lose_unsynced_file_writes(path: &Path, before: &[u8]) {
    std::fs::write(path, before).unwrap();
}

#[test]
fn synced_writes_survive_the_loss_of_the_file_writes_and_unsynced_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let journal = JournaledFile::open(&path, 1 << 20).unwrap();
    journal.set_len(BASE + 3 * PAGE as u64).unwrap();
    journal.sync_data().unwrap();
    let before = std::fs::read(&path).unwrap();
    journal.write(BASE, &page(0xA1)).unwrap();
    journal.sync_data().unwrap();
    journal.write(BASE + PAGE as u64, &page(0xB2)).unwrap();
    journal.write(BASE, &page(0xA3)).unwrap();
    journal.sync_data().unwrap();
    journal.write(BASE + 2 * PAGE as u64, &page(0xC4)).unwrap();
    drop(journal); // a crash: no clean close

    lose_unsynced_file_writes(&path, &before);
    let reopened = JournaledFile::open(&path, 1 << 20).unwrap();
    assert!(
        read_main(&path, BASE) == page(0xA3),
        "the last synced write wins"
    );
    assert!(read_main(&path, BASE + PAGE as u64) == page(0xB2));
    assert!(
        read_main(&path, BASE + 2 * PAGE as u64) == page(0),
        "never synced"
    );
    reopened.close().unwrap();
}

#[test]
fn writes_are_read_back_at_once_but_reach_the_file_only_once_durable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let journal = JournaledFile::open(&path, 1 << 20).unwrap();
    journal.set_len(BASE + 3 * PAGE as u64).unwrap();
    let mut two = page(0xAA);
    two.extend(page(0xAB));
    journal.write(BASE, &two).unwrap();
    journal.write(BASE + PAGE as u64, &page(0xBB)).unwrap();
    // Read back across both writes, the later one over the earlier.
    let mut out = vec![0u8; 3 * PAGE];
    journal.read(BASE, &mut out).unwrap();
    assert!(out[..PAGE] == page(0xAA)[..]);
    assert!(out[PAGE..2 * PAGE] == page(0xBB)[..]);
    assert!(out[2 * PAGE..] == page(0)[..]);
    assert!(
        read_main(&path, BASE) == page(0),
        "not in the file before it is durable"
    );

    let before = std::fs::read(&path).unwrap();
    journal.sync_data().unwrap();
    // Durable now: a crash at this moment, with none of the file's writes on the disk,
    // keeps the pages (the journal has them).
    let crashed = dir.path().join("crashed");
    copy_disk(&path, Some(&before), &crashed);
    JournaledFile::settle(&crashed).unwrap();
    assert!(read_main(&crashed, BASE) == page(0xAA));
    assert!(read_main(&crashed, BASE + PAGE as u64) == page(0xBB));
    // The pages follow into the file (at the latest when the journal
    // thread stops), and reads see them all along.
    let mut again = vec![0u8; 2 * PAGE];
    journal.read(BASE + PAGE as u64, &mut again).unwrap();
    assert!(again[..PAGE] == page(0xBB)[..]);
    journal.close().unwrap();
    assert!(read_main(&path, BASE) == page(0xAA));
    assert!(read_main(&path, BASE + PAGE as u64) == page(0xBB));
}

#[test]
fn records_left_by_an_earlier_run_are_never_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    // An earlier run: two one-page records, then a clean close, which clears the journal
    // without erasing the second record (at the same offset as a later run's second).
    let journal = JournaledFile::open(&path, 1 << 20).unwrap();
    journal.set_len(BASE + PAGE as u64).unwrap();
    journal.write(BASE, &page(0x11)).unwrap();
    journal.sync_data().unwrap();
    journal.write(BASE, &page(0x22)).unwrap();
    journal.sync_data().unwrap();
    journal.close().unwrap();
    drop(journal);
    // This run: one record, then a machine crash.
    let journal = JournaledFile::open(&path, 1 << 20).unwrap();
    let before = std::fs::read(&path).unwrap();
    journal.write(BASE, &page(0x33)).unwrap();
    journal.sync_data().unwrap();
    drop(journal);
    lose_unsynced_file_writes(&path, &before);
    JournaledFile::settle(&path).unwrap();
    assert!(
        read_main(&path, BASE) == page(0x33),
        "the stale record was replayed"
    );
}

#[test]
fn a_torn_last_record_is_ignored_and_the_ones_before_it_are_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let journal = JournaledFile::open(&path, 1 << 20).unwrap();
    journal.set_len(BASE + 2 * PAGE as u64).unwrap();
    journal.sync_data().unwrap();
    let before = std::fs::read(&path).unwrap();
    journal.write(BASE, &page(0x11)).unwrap();
    journal.sync_data().unwrap();
    journal.write(BASE + PAGE as u64, &page(0x22)).unwrap();
    journal.sync_data().unwrap();
    drop(journal);

    // Tear the third record (the second write): flip a byte of its payload.
    let [j0, _] = journal_paths(&path);
    let file = open_rw(&j0).unwrap();
    let third = ALIGN + padded((HEADER + ENTRY_HEADER + PAGE) as u64) + HEADER as u64 + 100;
    file.write_all_at(&[0x5A], third).unwrap();
    lose_unsynced_file_writes(&path, &before);
    JournaledFile::settle(&path).unwrap();
    assert!(read_main(&path, BASE) == page(0x11));
    assert!(read_main(&path, BASE + PAGE as u64) == page(0));
}

#[test]
fn journals_switch_when_full_and_replay_in_the_order_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    // Every record fills a journal: each sync switches to the other one.
    let journal = JournaledFile::open(&path, ALIGN).unwrap();
    journal.set_len(BASE + PAGE as u64).unwrap();
    journal.sync_data().unwrap();
    let before = std::fs::read(&path).unwrap();
    for byte in 1..=9u8 {
        journal.write(BASE, &page(byte)).unwrap();
        journal.sync_data().unwrap();
    }
    drop(journal);
    lose_unsynced_file_writes(&path, &before);
    JournaledFile::open(&path, ALIGN).unwrap().close().unwrap();
    assert!(read_main(&path, BASE) == page(9));
}

#[test]
fn a_clean_close_leaves_nothing_to_replay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let journal = JournaledFile::open(&path, 1 << 20).unwrap();
    journal.write(BASE, &page(0x33)).unwrap();
    journal.sync_data().unwrap();
    journal.close().unwrap();
    drop(journal);
    for path in journal_paths(&path) {
        let file = File::open(path).unwrap();
        let len = file.metadata().unwrap().len();
        let first = read_record(&file, len, 0, None, &mut Vec::new());
        assert!(first.unwrap().is_none());
    }
    assert!(read_main(&path, BASE) == page(0x33));
}

#[test]
fn a_second_open_of_the_same_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let first = JournaledFile::open(&path, 1 << 20).unwrap();
    let second = JournaledFile::open(&path, 1 << 20).unwrap_err();
    assert_eq!(second.kind(), io::ErrorKind::WouldBlock);
    first.close().unwrap();
    drop(first);
    JournaledFile::settle(&path).unwrap();
}

const T: TableDefinition<u64, &[u8]> = TableDefinition::new("t");

fn commit_rows(db: &Database, rows: std::ops::Range<u64>) {
    for i in rows {
        let txn = db.begin_write().unwrap();
        txn.open_table(T)
            .unwrap()
            .insert(i, vec![i as u8; 1500].as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
}

/// Copies the database file (or `file`, in its place) and its journals to `to`.
fn copy_disk(path: &Path, file: Option<&[u8]>, to: &Path) {
    match file {
        Some(bytes) => std::fs::write(to, bytes).unwrap(),
        None => drop(std::fs::copy(path, to).unwrap()),
    }
    for (from, to) in journal_paths(path).iter().zip(journal_paths(to)) {
        std::fs::copy(from, to).unwrap();
    }
}

fn assert_rows(path: &Path, rows: std::ops::Range<u64>) {
    let db = Database::builder()
        .create_with_backend(JournaledFile::open(path, 1 << 20).unwrap())
        .unwrap();
    let txn = db.begin_read().unwrap();
    let table = txn.open_table(T).unwrap();
    for i in rows {
        let value = table.get(i).unwrap().expect("a committed row is recovered");
        assert!(value.value() == vec![i as u8; 1500].as_slice(), "row {i}");
    }
}

/// redb over the journal, after a machine crash: commits made since the database file was
/// last fsynced are recovered from the journal alone.
#[test]
fn redb_commits_are_recovered_from_the_journal_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let open = || {
        Database::builder()
            .create_with_backend(JournaledFile::open(&path, 16 << 20).unwrap())
            .unwrap()
    };
    drop(open());
    let db = open();
    // The file as the open left it (fsynced, with its identity), before any commit.
    let before = std::fs::read(&path).unwrap();
    commit_rows(&db, 0..200);
    // The disk at the crash: the journals as written, and a database file none of whose
    // page-cache writes reached the disk (no checkpoint ran: the journal never filled).
    let crashed = dir.path().join("crashed");
    copy_disk(&path, Some(&before), &crashed);
    drop(db);
    assert_rows(&crashed, 0..200);
}

/// redb over small journals that switch and checkpoint many times, after a process crash
/// (the file holds every write the process made, the journals what they hold).
#[test]
fn redb_reopens_after_a_crash_with_journals_switching() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let file = JournaledFile::open(&path, 64 * 1024).unwrap();
    let db = Database::builder().create_with_backend(file).unwrap();
    commit_rows(&db, 0..300);
    let crashed = dir.path().join("crashed");
    copy_disk(&path, None, &crashed);
    drop(db);
    assert_rows(&crashed, 0..300);
}
