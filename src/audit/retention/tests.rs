//! Pruning: by count and by age, archived before it is deleted, verifiable afterwards from the
//! prune anchor, and refused over a range that does not verify.

use super::*;
use crate::audit::{AuditEntry, ChainReport, append, verify_trail};
use crate::store::redb::RedbStore;

fn key() -> AuditKey {
    AuditKey::from_bytes(&[7; 32])
}

fn open(dir: &Path) -> RedbStore {
    RedbStore::open(&dir.join("audit.redb"), 0, 1 << 20, Default::default()).unwrap()
}

/// A keyed trail of `n` events, event `i` at `i` seconds.
async fn fill(store: &RedbStore, n: u64) {
    store
        .write(WriteJob {
            client: None,
            class: WriteClass::Changes,
            apply: Box::new(move |w: &mut dyn Writer| {
                w.put(
                    TableId::Meta,
                    Key::Name(Anchor::META),
                    &Anchor::encode(&key(), 1),
                )?;
                for i in 1..=n {
                    let entry = AuditEntry {
                        time_ms: i * 1000,
                        actor: "webhook".into(),
                        action: "fetch",
                        client_id: format!("client-{i}"),
                        backup_method: String::new(),
                        outcome: None,
                    };
                    append(w, &entry, "ok", Some(&key()))?;
                }
                Ok(())
            }),
        })
        .await
        .unwrap();
}

fn meta(store: &RedbStore, name: &str) -> Option<Vec<u8>> {
    store
        .read()
        .unwrap()
        .get(TableId::Meta, Key::Name(name))
        .unwrap()
}

fn verify(store: &RedbStore) -> ChainReport {
    let check = check_from_anchors(
        key(),
        meta(store, Anchor::META).as_deref(),
        meta(store, PruneAnchor::META).as_deref(),
    );
    verify_trail(store, check).unwrap()
}

fn by_count(archive: &Path, keep: u64) -> Retention {
    Retention {
        keep_events: Some(keep),
        keep_age: None,
        archive_dir: archive.to_path_buf(),
        interval: Duration::from_secs(60),
    }
}

/// The sequence numbers of every line of the archive files, in file order.
fn archived(files: &[PathBuf]) -> Vec<u64> {
    let mut out = Vec::new();
    for file in files {
        for line in std::fs::read_to_string(file).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["action"], "fetch");
            assert_eq!(v["hash"].as_str().unwrap().len(), 64);
            out.push(v["seq"].as_u64().unwrap());
        }
    }
    out
}

async fn put_raw(store: &RedbStore, table: TableId, key: KeyOwned, value: Vec<u8>) {
    store
        .write(WriteJob {
            client: None,
            class: WriteClass::Changes,
            apply: Box::new(move |w: &mut dyn Writer| match &key {
                KeyOwned::Name(n) => w.put(table, Key::Name(n), &value),
                KeyOwned::Seq(s) => w.put(table, Key::Seq(*s), &value),
            }),
        })
        .await
        .unwrap();
}

enum KeyOwned {
    Name(&'static str),
    Seq(u64),
}

fn event(store: &RedbStore, seq: u64) -> Option<AuditEvent> {
    store
        .read()
        .unwrap()
        .get(TableId::Audit, Key::Seq(seq))
        .unwrap()
        .map(|v| AuditEvent::decode(&v).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_by_count_archives_then_deletes_and_the_rest_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let store = Arc::new(open(dir.path()));
    let total = BATCH as u64 * 2 + 500;
    fill(&store, total).await;

    let pruned = prune(store.clone(), &key(), &by_count(&archive, 1000), 0, 100)
        .await
        .unwrap();
    let cut = total - 1000;
    assert_eq!(pruned.events, cut);
    assert_eq!(pruned.pruned_to, cut);
    assert_eq!(archived(&pruned.files), (1..=cut).collect::<Vec<_>>());
    assert_eq!(event(&store, cut), None);
    assert_eq!(event(&store, cut + 1).unwrap().seq, cut + 1);
    let report = verify(&store);
    assert_eq!(report.problem, None);
    assert_eq!(report.events, 1000);

    // Nothing more to prune until the trail grows.
    let again = prune(store.clone(), &key(), &by_count(&archive, 1000), 0, 100)
        .await
        .unwrap();
    assert_eq!((again.events, again.pruned_to), (0, cut));
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_by_age_keeps_the_younger_events() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let store = Arc::new(open(dir.path()));
    fill(&store, 300).await;
    let retention = Retention {
        keep_events: None,
        keep_age: Some(Duration::from_secs(100)),
        archive_dir: archive.clone(),
        interval: Duration::from_secs(60),
    };
    // At 250 s, events older than 150 s (events 1..=149) go.
    let pruned = prune(store.clone(), &key(), &retention, 250_000, 100)
        .await
        .unwrap();
    assert_eq!(archived(&pruned.files), (1..=149).collect::<Vec<_>>());
    let report = verify(&store);
    assert_eq!((report.events, report.problem), (151, None));
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_anchor_or_kept_event_fails_verification() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()));
    fill(&store, 200).await;
    prune(
        store.clone(),
        &key(),
        &by_count(&dir.path().join("a"), 50),
        0,
        10,
    )
    .await
    .unwrap();
    assert_eq!(verify(&store).problem, None);
    let anchor = meta(&store, PruneAnchor::META).unwrap();

    // The anchor moved one event on (as if event 151 were pruned too, unarchived).
    let mut moved = anchor.clone();
    moved[..8].copy_from_slice(&151u64.to_be_bytes());
    put_raw(
        &store,
        TableId::Meta,
        KeyOwned::Name(PruneAnchor::META),
        moved,
    )
    .await;
    let problem = verify(&store).problem.unwrap().1;
    assert!(problem.contains("prune anchor was altered"), "{problem}");

    // The anchor back, a kept event edited.
    put_raw(
        &store,
        TableId::Meta,
        KeyOwned::Name(PruneAnchor::META),
        anchor,
    )
    .await;
    let mut edited = event(&store, 160).unwrap();
    edited.outcome = "denied".into();
    put_raw(&store, TableId::Audit, KeyOwned::Seq(160), edited.encode()).await;
    let (at, problem) = verify(&store).problem.unwrap();
    assert_eq!(at, 160);
    assert!(problem.contains("edited"), "{problem}");
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_that_does_not_verify_is_not_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let store = Arc::new(open(dir.path()));
    fill(&store, 100).await;
    let mut edited = event(&store, 20).unwrap();
    edited.client_id = "someone-else".into();
    put_raw(&store, TableId::Audit, KeyOwned::Seq(20), edited.encode()).await;

    let err = prune(store.clone(), &key(), &by_count(&archive, 10), 0, 10)
        .await
        .unwrap_err();
    assert!(matches!(err, PruneError::Broken(20, _)), "{err}");
    assert!(event(&store, 1).is_some());
    assert_eq!(meta(&store, PruneAnchor::META), None);
    assert!(!archive.exists() || std::fs::read_dir(&archive).unwrap().next().is_none());
    store.close();
}

/// Someone who can write the archive directory plants a symlink where the archive's temp file
/// was written (a predictable name): the prune must not write through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_planted_in_the_archive_dir_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    std::fs::create_dir(&archive).unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"the database, say").unwrap();
    let name = format!("audit-{:020}-{:020}.jsonl", 1, 10);
    std::os::unix::fs::symlink(&victim, archive.join(format!(".{name}.tmp"))).unwrap();
    let store = Arc::new(open(dir.path()));
    fill(&store, 20).await;

    let pruned = prune(store.clone(), &key(), &by_count(&archive, 10), 0, 10)
        .await
        .unwrap();
    assert_eq!(archived(&pruned.files), (1..=10).collect::<Vec<_>>());
    assert_eq!(std::fs::read(&victim).unwrap(), b"the database, say");
    store.close();
}

#[test]
fn the_archive_temp_file_is_never_opened_through_a_symlink_or_over_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"kept").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    assert!(create_private(&link).is_err());
    assert!(create_private(&victim).is_err());
    assert_eq!(std::fs::read(&victim).unwrap(), b"kept");
    // A dangling link is not followed either.
    let dangling = dir.path().join("dangling");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
    assert!(create_private(&dangling).is_err());
    assert!(!dir.path().join("nowhere").exists());
}

/// A store that notes the threads its reads run on.
struct Watched {
    inner: RedbStore,
    readers: std::sync::Mutex<Vec<std::thread::ThreadId>>,
}

impl Store for Watched {
    fn write(&self, job: WriteJob) -> crate::store::WriteFuture {
        self.inner.write(job)
    }

    fn read(&self) -> Result<Box<dyn crate::store::Reader + '_>, StoreError> {
        self.readers
            .lock()
            .unwrap()
            .push(std::thread::current().id());
        self.inner.read()
    }

    fn size_bytes(&self) -> Option<u64> {
        self.inner.size_bytes()
    }

    fn close(&self) {
        self.inner.close();
    }
}

/// The daemon's async workers serve calls: the pruner's reads of the trail (and its archive's
/// writes and fsyncs, in the same blocking task) must not hold one of them. On a
/// current-thread runtime, the runtime's thread is the test's.
#[tokio::test(flavor = "current_thread")]
async fn pruning_reads_and_archives_on_the_blocking_pool() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let inner = open(dir.path());
    fill(&inner, 50).await;
    let store = Arc::new(Watched {
        inner,
        readers: Default::default(),
    });
    let pruned = prune(store.clone(), &key(), &by_count(&archive, 10), 0, 10)
        .await
        .unwrap();
    assert_eq!(pruned.events, 40);
    let readers = store.readers.lock().unwrap().clone();
    assert!(!readers.is_empty());
    let runtime_thread = std::thread::current().id();
    assert!(
        readers.iter().all(|&t| t != runtime_thread),
        "the trail was read on the runtime's thread"
    );
    store.close();
}
