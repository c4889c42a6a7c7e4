//! The redb store: group commit, failed commits, the free-space reserve, the audit trail.

use super::*;
use crate::audit::{self, AuditEntry, AuditEvent};
use crate::error::VaultError;
use crate::store::disk::Disk;
use crate::store::{Key, WriteClass};
use crate::vault::SealedRecord;
use crate::vault::records;
use crate::vault::rules::{self, WriteOp};
use redb::{Database, ReadableTable};
use std::sync::atomic::{AtomicBool, Ordering};
use tables::AUDIT;

/// Runs a conformance test of the store contract on a fresh journaled redb store.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let dir = tempfile::tempdir().unwrap();
            let store = RedbStore::open(&dir.path().join("c.redb"), 0, 1 << 20, Default::default()).unwrap();
            crate::store::conformance::$name(&store).await;
            store.close();
        }
    )*};
}

conformance!(
    keys_are_ordered_and_ranges_are_exact,
    writes_replace_delete_and_readers_are_consistent,
    a_failed_job_changes_nothing,
    staged_changes_are_kept_or_dropped_whole,
    exports_visit_every_row_in_order,
    a_client_reader_reads_the_client_whole,
);

/// A log file whose writes fail with "no space left on device" while `fail` is set, and
/// whose syncs take `sync_ms` longer.
struct Flaky {
    inner: std::fs::File,
    fail: Arc<AtomicBool>,
    sync_ms: Arc<std::sync::atomic::AtomicU64>,
    /// Syncs, then reports a failure: the record is on disk but its writer is told otherwise.
    sync_then_fail: Arc<AtomicBool>,
}

fn flaky_opener(
    path: &Path,
    fail: &Arc<AtomicBool>,
    sync_ms: &Arc<std::sync::atomic::AtomicU64>,
) -> (Opener, LogOpener) {
    flaky_opener_with(path, fail, sync_ms, &Arc::new(AtomicBool::new(false)))
}

fn flaky_opener_with(
    path: &Path,
    fail: &Arc<AtomicBool>,
    sync_ms: &Arc<std::sync::atomic::AtomicU64>,
    sync_then_fail: &Arc<AtomicBool>,
) -> (Opener, LogOpener) {
    let (f, s) = (Arc::clone(fail), Arc::clone(sync_ms));
    let lying = Arc::clone(sync_then_fail);
    let db = path.to_owned();
    let log = crate::store::wal::log_path(path);
    (
        Box::new(move || Database::builder().create(&db)),
        Box::new(move || {
            let inner = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&log)?;
            Ok(Box::new(Flaky {
                inner,
                fail: Arc::clone(&f),
                sync_ms: Arc::clone(&s),
                sync_then_fail: Arc::clone(&lying),
            }) as Box<dyn Disk>)
        }),
    )
}

fn open_flaky(openers: (Opener, LogOpener)) -> RedbStore {
    let (opener, log) = openers;
    RedbStore::open_with(
        opener,
        log,
        None,
        0,
        Checkpoints::default(),
        Default::default(),
    )
    .unwrap()
}

impl Flaky {
    fn check(&self) -> std::io::Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            Err(std::io::Error::from_raw_os_error(28))
        } else {
            Ok(())
        }
    }
}

impl Disk for Flaky {
    fn read_at(&self, out: &mut [u8], at: u64) -> std::io::Result<()> {
        self.inner.read_at(out, at)
    }
    fn write_at(&self, data: &[u8], at: u64) -> std::io::Result<()> {
        self.check()?;
        self.inner.write_at(data, at)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.check()?;
        Disk::set_len(&self.inner, len)
    }
    fn sync(&self) -> std::io::Result<()> {
        std::thread::sleep(std::time::Duration::from_millis(
            self.sync_ms.load(Ordering::SeqCst),
        ));
        self.check()?;
        self.inner.sync()?;
        if self.sync_then_fail.swap(false, Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(5));
        }
        Ok(())
    }
    fn size(&self) -> std::io::Result<u64> {
        self.inner.size()
    }
}

fn put(client: &str, share: &[u8]) -> (WriteOp, Option<AuditEntry>) {
    (
        WriteOp::PutCustodianShare {
            client_id: client.into(),
            backup_method: "PASSWORD-SECP256K1".into(),
            record: SealedRecord {
                created_at_ms: 1,
                seq: 0,
                pair_id: Some(format!("pair-{client}")),
                covers: Vec::new(),
                envelope: share.to_vec(),
            },
            unchanged: None,
            retention: Default::default(),
        },
        Some(AuditEntry {
            time_ms: 1,
            actor: "webhook".into(),
            action: "backup",
            client_id: client.into(),
            backup_method: "PASSWORD-SECP256K1".into(),
            outcome: None,
        }),
    )
}

/// A read's audit event queued behind a write commits before it: a fetch waits for the
/// commit under way, not for the writes queued beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_events_of_reads_commit_ahead_of_queued_writes() {
    let dir = tempfile::tempdir().unwrap();
    let fail = Arc::new(AtomicBool::new(false));
    let sync_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let store = Arc::new(open_flaky(flaky_opener(
        &dir.path().join("slow.redb"),
        &fail,
        &sync_ms,
    )));
    let spawn = |op: WriteOp, audit: Option<AuditEntry>| {
        let store = Arc::clone(&store);
        tokio::spawn(async move { rules::write(store.as_ref(), op, audit, None).await })
    };

    // A slow disk holds the writer in its first commit while the others queue up. The margins
    // are wide so that a loaded machine (the crash simulations run beside this test) keeps the
    // order: the first write is in its commit long before the others are queued, and the
    // queued write is queued well before the read.
    sync_ms.store(1000, Ordering::SeqCst);
    let (op, audit) = put("first", b"A");
    let first = spawn(op, audit);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (op, audit) = put("queued-write", b"B");
    let write = spawn(op, audit);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let read = spawn(
        WriteOp::AuditOnly { deferred: false },
        Some(AuditEntry {
            time_ms: 2,
            actor: "webhook".into(),
            action: "fetch",
            client_id: "reader".into(),
            backup_method: String::new(),
            outcome: Some("ok".into()),
        }),
    );
    for task in [first, write, read] {
        task.await.unwrap().unwrap();
    }
    sync_ms.store(0, Ordering::SeqCst);

    let order: Vec<String> = audit::events(&*store.read().unwrap(), 0, 10)
        .unwrap()
        .into_iter()
        .map(|e| e.unwrap().client_id)
        .collect();
    assert_eq!(order, ["first", "reader", "queued-write"]);
}

#[tokio::test]
async fn a_failed_commit_changes_nothing_and_writes_resume_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flaky.redb");
    let fail = Arc::new(AtomicBool::new(false));
    let sync_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let store = open_flaky(flaky_opener(&path, &fail, &sync_ms));
    let (op, audit) = put("acked-before", b"A");
    rules::write(&store, op, audit, None).await.unwrap();

    fail.store(true, Ordering::SeqCst);
    let (op, audit) = put("during-failure", b"B");
    let err = rules::write(&store, op, audit, None).await.unwrap_err();
    assert!(matches!(err, VaultError::Unavailable), "{err:?}");

    fail.store(false, Ordering::SeqCst);
    let (op, audit) = put("after-recovery", b"C");
    rules::write(&store, op, audit, None).await.unwrap();

    let held = |c: &str| {
        records::share(
            &*store.read().unwrap(),
            TableId::Custodian,
            c,
            "PASSWORD-SECP256K1",
        )
        .unwrap()
    };
    assert_eq!(held("acked-before").unwrap().envelope, b"A");
    assert!(
        held("during-failure").is_none(),
        "nothing of the failed write is visible"
    );
    assert_eq!(held("after-recovery").unwrap().envelope, b"C");
    assert!(
        records::pairs(&*store.read().unwrap(), "during-failure")
            .unwrap()
            .is_empty()
    );

    // The audit trail chains the two committed writes and nothing else.
    let events: Vec<_> = audit::events(&*store.read().unwrap(), 0, 10)
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(events.len(), 2);
    let report = audit::verify(
        audit::ChainCheck::plain(),
        events.into_iter().map(Ok),
        audit::head(&*store.read().unwrap()).unwrap(),
    );
    assert_eq!(report.problem, None);
    store.close();
}

/// Appends the audit events of `n` reads, one after another: `reader-i` is event i + 1.
async fn read_events(store: &RedbStore, n: u64) {
    for i in 0..n {
        let (_, audit) = put(&format!("reader-{i}"), b"");
        rules::write(store, WriteOp::AuditOnly { deferred: true }, audit, None)
            .await
            .unwrap();
    }
}

/// The chain is checked a page at a time: a trail longer than a page verifies whole, and
/// an event edited on a later page is found and named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_chain_is_checked_across_pages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.redb");
    let total = audit::PAGE as u64 * 2 + 100;
    let store = RedbStore::open(&path, 0, 1 << 20, Default::default()).unwrap();
    read_events(&store, total).await;
    let report = audit::verify_trail(&store, audit::ChainCheck::plain()).unwrap();
    assert_eq!(report.events, total);
    assert_eq!(report.problem, None);
    store.close();
    drop(store);

    let victim = audit::PAGE as u64 + 50;
    {
        let db = Database::open(&path).unwrap();
        let write = db.begin_write().unwrap();
        {
            let mut table = write.open_table(AUDIT).unwrap();
            let mut event =
                AuditEvent::decode(table.get(victim).unwrap().unwrap().value()).unwrap();
            event.outcome = "denied".into();
            table.insert(victim, event.encode().as_slice()).unwrap();
        }
        write.commit().unwrap();
    }
    let store = RedbStore::open(&path, 0, 1 << 20, Default::default()).unwrap();
    let report = audit::verify_trail(&store, audit::ChainCheck::plain()).unwrap();
    let (at, problem) = report.problem.unwrap();
    assert_eq!(at, victim);
    assert!(problem.contains("edited"), "{problem}");
    assert_eq!(report.events, victim);
    store.close();
}

/// A filtered listing looks at a bounded number of events per step, and the steps,
/// taken until one ends where it started, find every match in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_audit_listings_step_through_a_long_trail() {
    use crate::audit::SCAN as AUDIT_SCAN;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("listing.redb");
    let store = RedbStore::open(&path, 0, 1 << 20, Default::default()).unwrap();
    let total = AUDIT_SCAN * 3 + 50;
    read_events(&store, total).await;
    let wanted = ["reader-5", "reader-700", "reader-949"];
    let filter = |e: &AuditEvent| wanted.contains(&e.client_id.as_str());
    let (mut after, mut found, mut steps) = (0, Vec::new(), 0);
    loop {
        let (events, cursor) = audit::find(&store, after, 1024, &filter).unwrap();
        assert!(cursor - after <= AUDIT_SCAN, "a step looked at too much");
        if events.is_empty() && cursor == after {
            break;
        }
        steps += 1;
        found.extend(events.into_iter().map(|e| e.client_id));
        after = cursor;
    }
    assert_eq!(found, wanted);
    assert_eq!(steps, total.div_ceil(AUDIT_SCAN));
    // A limit ends a step at its last match.
    let near = |e: &AuditEvent| e.client_id.starts_with("reader-1");
    let (events, cursor) = audit::find(&store, 0, 2, &near).unwrap();
    let ids: Vec<&str> = events.iter().map(|e| e.client_id.as_str()).collect();
    assert_eq!(ids, ["reader-1", "reader-10"]);
    assert_eq!(cursor, 11);
    store.close();
}

#[tokio::test]
async fn writes_are_refused_below_the_free_space_reserve_and_reads_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reserve.redb");
    let store = RedbStore::open(&path, 0, 1 << 20, Default::default()).unwrap();
    let (op, audit) = put("kept", b"K");
    rules::write(&store, op, audit, None).await.unwrap();
    store.close();
    drop(store);

    let metrics = crate::metrics::StoreMetrics::default();
    let store = RedbStore::open(&path, u64::MAX, 1 << 20, metrics.clone()).unwrap();
    let refused = WriteJob {
        class: WriteClass::AddsData,
        apply: Box::new(|w| {
            w.put(
                TableId::Custodian,
                Key::Client("refused", "PASSWORD-SECP256K1"),
                b"R",
            )
        }),
        client: None,
    };
    let err = store.write(refused).await.unwrap_err();
    assert!(err.to_string().contains("below the reserve"), "{err}");
    let (op, audit) = put("also-refused", b"R");
    assert!(matches!(
        rules::write(&store, op, audit, None).await,
        Err(VaultError::Unavailable)
    ));
    assert_eq!(metrics.reserve_refusals(), 2, "both refusals are counted");
    // Deletions still go through below the reserve.
    let delete = WriteOp::DeleteClient {
        client_id: "kept".into(),
    };
    rules::write(&store, delete, None, None).await.unwrap();
    let r = store.read().unwrap();
    for client in ["kept", "refused", "also-refused"] {
        assert!(
            records::share(&*r, TableId::Custodian, client, "PASSWORD-SECP256K1")
                .unwrap()
                .is_none(),
            "{client}"
        );
    }
    assert_eq!(metrics.reserve_refusals(), 2, "a deletion is no refusal");
}

/// A hash entry planted beside another token's record authenticates nobody: the record found
/// must carry the hash it was found by.
#[tokio::test]
async fn a_token_found_by_hash_must_carry_that_hash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.redb");
    let store = RedbStore::open(&path, 0, 1 << 20, Default::default()).unwrap();
    let token = crate::vault::TokenRecord {
        name: "ops".into(),
        role: crate::auth::Role::Admin,
        hash: [1; 32],
        created_at_ms: 1,
    };
    rules::write(&store, WriteOp::CreateToken(token), None, None)
        .await
        .unwrap();
    let found = |hash: [u8; 32]| records::token_by_hash(&*store.read().unwrap(), &hash);
    assert_eq!(found([1; 32]).unwrap().unwrap().name, "ops");
    store.close();
    drop(store);
    {
        let db = Database::open(&path).unwrap();
        let write = db.begin_write().unwrap();
        write
            .open_table(tables::TOKEN_HASHES)
            .unwrap()
            .insert([2u8; 32].as_slice(), "ops")
            .unwrap();
        write.commit().unwrap();
    }
    let store = RedbStore::open(&path, 0, 1 << 20, Default::default()).unwrap();
    let found = |hash: [u8; 32]| records::token_by_hash(&*store.read().unwrap(), &hash);
    assert!(matches!(found([2; 32]), Err(StoreError::Corrupt(_))));
    assert_eq!(found([1; 32]).unwrap().unwrap().name, "ops");
    store.close();
}

/// A record whose fsync reported a failure after it reached the disk never comes back: the
/// next batch first checkpoints the database as it is and starts a fresh log (the failed
/// record's epoch ends there), so the write answered with an error is not in the vault and
/// the audit chain continues from the write before it.
#[tokio::test]
async fn after_a_failed_log_fsync_the_failed_write_is_gone_and_the_chain_continues() {
    chain_continues_after_a_lying_fsync(false).await;
}

async fn chain_continues_after_a_lying_fsync(failed_write_kept: bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lying.redb");
    let fail = Arc::new(AtomicBool::new(false));
    let sync_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let lying = Arc::new(AtomicBool::new(false));
    let store = open_flaky(flaky_opener_with(&path, &fail, &sync_ms, &lying));
    let (op, audit) = put("first", b"A");
    rules::write(&store, op, audit, None).await.unwrap();

    lying.store(true, Ordering::SeqCst);
    let (op, audit) = put("fsync-failed", b"B");
    assert!(rules::write(&store, op, audit, None).await.is_err());
    let (op, audit) = put("third", b"C");
    rules::write(&store, op, audit, None).await.unwrap();

    let r = store.read().unwrap();
    assert_eq!(
        records::share(
            &*r,
            TableId::Custodian,
            "fsync-failed",
            "PASSWORD-SECP256K1"
        )
        .unwrap()
        .map(|r| r.envelope),
        failed_write_kept.then(|| b"B".to_vec()),
        "the write whose fsync failed after the fact is not in the vault"
    );
    let events: Vec<_> = audit::events(&*r, 0, 10)
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let clients: Vec<&str> = events.iter().map(|e| e.client_id.as_str()).collect();
    if failed_write_kept {
        assert_eq!(clients, ["first", "fsync-failed", "third"]);
    } else {
        assert_eq!(clients, ["first", "third"]);
    }
    let report = audit::verify(
        audit::ChainCheck::plain(),
        events.into_iter().map(Ok),
        audit::head(&*r).unwrap(),
    );
    assert_eq!(report.problem, None);
    drop(r);
    store.close();
}

/// A data dir written by the version with page journals (`038824b` and before): the vault's
/// tables in `sharevault.redb` through the page journal, killed with its last commits only in
/// `journal0`/`journal1` (the files are copied while the database is open). The first open of
/// this version replays the journals into the file, removes them and goes on with the log;
/// the preflight's read-only view sees the same before that, changing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_of_the_page_journal_version_opens_with_every_commit() {
    use crate::store::journal::{JournaledFile, journal_paths};
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.redb");
    let db = Database::builder()
        .create_with_backend(JournaledFile::open(&old, 1 << 20).unwrap())
        .unwrap();
    for i in 0..50u32 {
        let mut txn = db.begin_write().unwrap();
        txn.set_quick_repair(true);
        {
            let mut tables = Tables::open(&txn).unwrap();
            tables
                .put(
                    TableId::Custodian,
                    Key::Client(&format!("client-{i}"), "PASSWORD-SECP256K1"),
                    &[i as u8; 700],
                )
                .unwrap();
        }
        txn.commit().unwrap();
    }
    // The data dir as a kill -9 left it: the journals hold the commits.
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let path = data.join("sharevault.redb");
    std::fs::copy(&old, &path).unwrap();
    for (from, to) in journal_paths(&old).iter().zip(journal_paths(&path)) {
        std::fs::copy(from, to).unwrap();
    }
    drop(db);
    let digest = crate::store::journal::peek::peek(&path).unwrap().is_some();
    assert!(digest);

    let before: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    let peeked = RedbStore::peek(&path).unwrap().expect("a database");
    let reader = peeked.read().unwrap();
    assert_eq!(reader.len(TableId::Custodian).unwrap(), 50);
    drop(reader);
    drop(peeked);
    let after: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(before == after, "the preflight changed the data dir");

    let store = RedbStore::open(&path, 0, 1 << 20, Default::default()).unwrap();
    for p in journal_paths(&path) {
        assert!(!p.exists(), "{} is gone", p.display());
    }
    assert!(crate::store::wal::log_path(&path).exists());
    {
        let reader = store.read().unwrap();
        for i in 0..50u32 {
            assert_eq!(
                reader
                    .get(
                        TableId::Custodian,
                        Key::Client(&format!("client-{i}"), "PASSWORD-SECP256K1")
                    )
                    .unwrap(),
                Some(vec![i as u8; 700])
            );
        }
    }
    // And it goes on under the log, across a restart.
    let (op, audit) = put("after-migration", b"M");
    rules::write(&store, op, audit, None).await.unwrap();
    store.close();
    drop(store);
    let store = RedbStore::open(&path, 0, 1 << 20, Default::default()).unwrap();
    let held = records::share(
        &*store.read().unwrap(),
        TableId::Custodian,
        "after-migration",
        "PASSWORD-SECP256K1",
    )
    .unwrap();
    assert_eq!(held.unwrap().envelope, b"M");
    assert_eq!(store.read().unwrap().len(TableId::Custodian).unwrap(), 51);
}

/// After a crash the log's records are replayed; the read-only view of a refused start sees
/// them too, in memory, and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_after_the_checkpoint_are_replayed_and_seen_by_the_preflight() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.redb");
    let store = RedbStore::open(&path, 0, 1 << 20, Default::default()).unwrap();
    for i in 0..20 {
        let (op, audit) = put(&format!("c{i}"), b"S");
        rules::write(&store, op, audit, None).await.unwrap();
    }
    // A process crash: the files as they are while the store is open (no checkpoint since
    // its open).
    let crashed = dir.path().join("crashed.redb");
    std::fs::copy(&path, &crashed).unwrap();
    std::fs::copy(
        crate::store::wal::log_path(&path),
        crate::store::wal::log_path(&crashed),
    )
    .unwrap();
    store.close();
    let bytes = |p: &Path| std::fs::read(p).unwrap();
    let before = (
        bytes(&crashed),
        bytes(&crate::store::wal::log_path(&crashed)),
    );
    let peeked = RedbStore::peek(&crashed).unwrap().unwrap();
    assert_eq!(peeked.read().unwrap().len(TableId::Custodian).unwrap(), 20);
    drop(peeked);
    assert!(
        before
            == (
                bytes(&crashed),
                bytes(&crate::store::wal::log_path(&crashed))
            )
    );
    let store = RedbStore::open(&crashed, 0, 1 << 20, Default::default()).unwrap();
    assert_eq!(store.read().unwrap().len(TableId::Custodian).unwrap(), 20);
    let report = audit::verify_trail(&store, audit::ChainCheck::plain()).unwrap();
    assert_eq!((report.events, report.problem), (20, None));
    store.close();
}
