//! Audit retention: the daemon archives, then prunes, the events its retention no longer
//! keeps; the kept part verifies from the signed prune anchor, before and after a snapshot
//! and restore, and an edited anchor or kept event is detected.

use crate::harness::{
    Daemon, Sandbox, fetch_shares, restore_command, succeeds, with_secret, with_token,
};
use redb::{ReadableTable, TableDefinition};
use sharevault::pb;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const KEEP: u64 = 20;

/// The archive files' lines, in file-name order (which is sequence order).
fn archived(dir: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "jsonl"))
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Changes the last byte of meta record `name` of a stopped vault.
fn flip_meta(database: &Path, name: &str) {
    let db = redb::Database::open(database).unwrap();
    let write = db.begin_write().unwrap();
    {
        let mut table = write.open_table(META).unwrap();
        let mut value = table.get(name).unwrap().unwrap().value().to_vec();
        *value.last_mut().unwrap() ^= 1;
        table.insert(name, value.as_slice()).unwrap();
    }
    write.commit().unwrap();
}

/// Replaces "fetch" with "fetcH" in the stored bytes of audit event `seq` of a stopped vault.
fn edit_event(database: &Path, seq: u64) {
    let db = redb::Database::open(database).unwrap();
    let write = db.begin_write().unwrap();
    {
        let mut table = write.open_table(AUDIT).unwrap();
        let mut bytes = table.get(seq).unwrap().unwrap().value().to_vec();
        let pos = bytes.windows(5).position(|w| w == b"fetch").unwrap();
        bytes[pos + 4] = b'H';
        table.insert(seq, bytes.as_slice()).unwrap();
    }
    write.commit().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_retention_archives_prunes_and_the_kept_trail_verifies() {
    let sandbox = Sandbox::new(120);
    let archive = sandbox.tmp.path().join("audit-archive");
    let admin = sandbox.keys.admin_token.clone();
    let secret = sandbox.keys.webhook_secret.clone();
    let mut daemon = sandbox.start_with(&[
        "--audit-retain-events",
        &KEEP.to_string(),
        "--audit-archive-dir",
        archive.to_str().unwrap(),
        "--audit-prune-interval-seconds",
        "1",
    ]);
    let mut hook = daemon.webhook().await;
    for i in 0..40 {
        hook.backup(with_secret(
            pb::BackupRequest {
                client_id: format!("r{i}"),
                backup_method: "PASSWORD-SECP256K1".into(),
                share: format!("share-{i}"),
                backup_share_pair_id: None,
            },
            &secret,
        ))
        .await
        .unwrap();
        fetch_shares(&mut hook, &secret, format!("r{i}")).await;
    }
    let head = daemon.status(&admin).await.audit_head_seq;
    assert!(head >= 80, "{head}");

    // The pruner runs every second: wait (at most 30 s) until the trail keeps KEEP events.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut kept = daemon
        .audit_events(&admin, pb::ListAuditEventsRequest::default())
        .await;
    while kept.len() as u64 > KEEP && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        kept = daemon
            .audit_events(&admin, pb::ListAuditEventsRequest::default())
            .await;
    }
    assert_eq!(
        kept.len() as u64,
        KEEP,
        "the trail was not pruned to {KEEP} events"
    );
    let first_kept = kept[0].seq;
    assert_eq!(first_kept, head - KEEP + 1);

    // Every pruned event is in the archive, in order, and the kept trail chains from the last.
    let lines = archived(&archive);
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..first_kept).collect::<Vec<_>>());
    assert!(
        lines
            .iter()
            .any(|l| l["action"] == "fetch" && l["client_id"] == "r3")
    );
    assert_eq!(lines.last().unwrap()["hash"], kept[0].prev_hash.as_str());
    let report = daemon.verify_audit(&admin).await;
    assert!(report.ok && report.events == KEEP, "{report:?}");

    // A snapshot of the pruned vault restores elsewhere and verifies there.
    let snap = sandbox.tmp.path().join("pruned.snap");
    let mut stream = daemon
        .admin()
        .await
        .snapshot(with_token(pb::SnapshotRequest {}, &admin))
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.unwrap().data);
    }
    std::fs::write(&snap, bytes).unwrap();
    let target = sandbox.tmp.path().join("restored");
    succeeds(&mut restore_command(
        &snap,
        &target,
        &sandbox.keys.master_key_file,
    ));
    let mut restored = Daemon::start(&target, &sandbox.keys);
    let report = restored.verify_audit(&admin).await;
    assert!(report.ok && report.events >= KEEP, "{report:?}");
    assert_eq!(
        fetch_shares(&mut restored.webhook().await, &secret, "r39".into()).await,
        vec!["share-39".to_string()]
    );
    assert!(restored.signal("TERM").success());
    drop(hook);
    assert!(daemon.signal("TERM").success());

    // An edited prune anchor is detected (the daemon starts without retention, so nothing
    // more is pruned).
    flip_meta(&sandbox.database(), "audit_pruned_to");
    let mut daemon = sandbox.start();
    let report = daemon.verify_audit(&admin).await;
    assert!(!report.ok, "{report:?}");
    assert!(
        report.problem.contains("prune anchor"),
        "{}",
        report.problem
    );
    assert!(daemon.signal("TERM").success());
    flip_meta(&sandbox.database(), "audit_pruned_to");

    // So is an edited kept event, with the anchor back as it was.
    let victim = kept.iter().find(|e| e.action == "fetch").unwrap().seq;
    edit_event(&sandbox.database(), victim);
    let daemon = sandbox.start();
    let report = daemon.verify_audit(&admin).await;
    assert!(!report.ok, "{report:?}");
    assert_eq!(report.first_bad_seq, victim);
    assert!(report.problem.contains("edited"), "{}", report.problem);
}

/// Retention without an archive dir is refused at start: no event is pruned without a copy.
#[test]
fn retention_without_an_archive_dir_is_refused() {
    let sandbox = Sandbox::new(121);
    let mut args = Daemon::tcp_args(&sandbox.keys);
    args.extend(["--audit-retain-events".to_string(), "10".to_string()]);
    let out = crate::harness::command(&sandbox.data_dir, &args)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("audit_archive_dir"), "{stderr}");
    assert!(!sandbox.database().exists());
}
