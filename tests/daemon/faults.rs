//! Faults: a filesystem that fills up, crashes during a snapshot and a rotation, and a
//! damaged database file.

use crate::harness::{
    Daemon, Keys, Sandbox, Started, command, fetch_shares, restore_command, succeeds, with_secret,
    with_token,
};
use crate::http_client::{Http, Reply};
use serde_json::json;
use sharevault::pb;
use std::path::{Path, PathBuf};
use std::process::Command;
use tokio_stream::StreamExt;

/// A small tmpfs, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts it, or fails saying what the test needs: root (or CAP_SYS_ADMIN), as in CI.
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status();
        assert!(
            status.as_ref().is_ok_and(|s| s.success()),
            "the full-disk test mounts a small tmpfs and needs root (or CAP_SYS_ADMIN) for it: \
             run the suite as root, as CI does, or leave this test out with \
             `cargo test -- --skip a_full_disk` ({status:?})"
        );
        Tmpfs(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `len` characters that compress poorly (shares are compressed before they are sealed, and a
/// repeated character would hardly take any room).
fn incompressible(len: usize, seed: u64) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(ALPHABET[(x >> 58) as usize])
        })
        .collect()
}

async fn fill_until_refused(
    http: &Http,
    secret: &str,
    prefix: &str,
) -> (Vec<(String, String)>, Option<serde_json::Value>) {
    let mut acked = Vec::new();
    for i in 0..3_000 {
        let client = format!("{prefix}-{i}");
        let share = format!("{i:08}{}", incompressible(60_000, i));
        let reply = http
            .post_json(
                "/backup",
                &[("x-webhook-secret", secret)],
                &json!({"clientId": client, "backupMethod": "PASSWORD-SECP256K1", "share": share}),
            )
            .await;
        match reply.status {
            200 => acked.push((client, share)),
            503 => return (acked, Some(reply.json())),
            other => panic!(
                "unexpected status {other}: {}",
                String::from_utf8_lossy(&reply.body)
            ),
        }
    }
    (acked, None)
}

/// Starts the daemon on `data_dir` with `--min-free-disk-bytes min_free`; `what` names the
/// start in the panic if it fails.
fn start_with_reserve(data_dir: &Path, keys: &Keys, min_free: String, what: &str) -> Daemon {
    let mut args = Daemon::tcp_args(keys);
    args.extend(["--min-free-disk-bytes".into(), min_free]);
    let Started::Ready(daemon) = Daemon::launch(command(data_dir, &args)) else {
        panic!("{what} failed")
    };
    daemon
}

fn webhook_http(daemon: &Daemon) -> Http {
    Http::plain(daemon.webhook_addr.as_deref().unwrap())
}

async fn fetch(http: &Http, secret: &str, client: &str) -> Reply {
    http.post_json(
        "/backup/fetch",
        &[("x-webhook-secret", secret)],
        &json!({"clientId": client}),
    )
    .await
}

async fn post_backup(http: &Http, secret: &str, client: &str, share: &str) -> Reply {
    http.post_json(
        "/backup",
        &[("x-webhook-secret", secret)],
        &json!({"clientId": client, "share": share}),
    )
    .await
}

/// Phase 1: the reserve refuses writes (over HTTP and gRPC) before the disk is full, and reads
/// go on. Answers what was acknowledged.
async fn the_reserve_refuses_writes_and_keeps_reads(
    daemon: &Daemon,
    secret: &str,
) -> Vec<(String, String)> {
    let http = webhook_http(daemon);
    let (acked, refusal) = fill_until_refused(&http, secret, "reserve").await;
    let refusal = refusal.expect("the disk filled up within the bounded loop");
    assert_eq!(refusal["error"]["code"], "unavailable");
    assert!(acked.len() > 10, "wrote {} shares first", acked.len());
    for (client, share) in acked.iter().step_by(7) {
        let reply = fetch(&http, secret, client).await;
        assert_eq!(reply.status, 200, "reads keep working");
        assert_eq!(reply.json()["backupShares"], json!([share]));
    }
    // The refusal's checkpoint may have given some space back (the log's file is cut back
    // near the reserve): gRPC writes fill it again until they are refused the same way.
    let mut grpc = daemon.webhook().await;
    let mut acked = acked;
    let mut grpc_refused = None;
    for i in 0..3_000 {
        let client = format!("grpc-{i}");
        let share = format!("{i:08}{}", incompressible(60_000, 100_000 + i));
        let request = pb::BackupRequest {
            client_id: client.clone(),
            backup_method: "PASSWORD-SECP256K1".into(),
            share: share.clone(),
            backup_share_pair_id: None,
        };
        match grpc.backup(with_secret(request, secret)).await {
            Ok(_) => acked.push((client, share)),
            Err(status) => {
                grpc_refused = Some(status);
                break;
            }
        }
    }
    let grpc_refused = grpc_refused.expect("gRPC writes are refused at the reserve too");
    assert_eq!(grpc_refused.code(), tonic::Code::Unavailable);
    acked
}

/// The write that resumes once space is back after the database hit the full disk.
const RESUMED: (&str, &str) = ("resumed", "again");

/// Phase 2: without a reserve the database itself hits the full disk; the failed commits are
/// refused, and writes resume once `ballast` is gone. Answers what was acknowledged before.
async fn a_full_database_refuses_commits_until_space_is_back(
    daemon: &Daemon,
    secret: &str,
    ballast: &Path,
) -> Vec<(String, String)> {
    let http = webhook_http(daemon);
    let (acked, refusal) = fill_until_refused(&http, secret, "enospc").await;
    assert!(refusal.is_some(), "the disk filled up");
    std::fs::remove_file(ballast).unwrap();
    let mut resumed = false;
    for _ in 0..50 {
        let reply = post_backup(&http, secret, RESUMED.0, RESUMED.1).await;
        if reply.status == 200 {
            resumed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(resumed, "writes resume once space is back");
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_keeps_reads_and_recovers_without_a_restart() {
    let sandbox = Sandbox::new(70);
    let mount = Tmpfs::mount(&sandbox.tmp.path().join("small-disk"), "48m");
    let data_dir = mount.0.join("data");
    let ballast = mount.0.join("ballast");
    let secret = sandbox.keys.webhook_secret.clone();
    std::fs::write(&ballast, vec![0u8; 12 << 20]).unwrap();
    let reserve = (8u64 << 20).to_string();
    let mut daemon = start_with_reserve(&data_dir, &sandbox.keys, reserve, "start");
    let acked = the_reserve_refuses_writes_and_keeps_reads(&daemon, &secret).await;

    // Space comes back: writes resume, no restart.
    std::fs::remove_file(&ballast).unwrap();
    let reply = post_backup(&webhook_http(&daemon), &secret, "after-space", "back").await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );

    assert!(daemon.signal("TERM").success());
    std::fs::write(&ballast, vec![0u8; 4 << 20]).unwrap();
    let mut daemon = start_with_reserve(&data_dir, &sandbox.keys, "0".into(), "restart");
    let acked2 =
        a_full_database_refuses_commits_until_space_is_back(&daemon, &secret, &ballast).await;
    assert!(daemon.signal("TERM").success());

    // Everything acknowledged, in both phases, is there after a restart.
    let resumed = (RESUMED.0.to_string(), RESUMED.1.to_string());
    let daemon = Daemon::start(&data_dir, &sandbox.keys);
    let http = webhook_http(&daemon);
    for (client, share) in acked.iter().chain(&acked2).step_by(3).chain([&resumed]) {
        let reply = fetch(&http, &secret, client).await;
        assert_eq!(reply.json()["backupShares"], json!([share]), "{client}");
    }
    let report = daemon.verify(&sandbox.keys.admin_token).await;
    assert_eq!(report.failed, 0);
    drop(daemon);
    drop(mount);
}

/// A whole snapshot from the admin API, or the error that ended it.
async fn snapshot_bytes(daemon: &Daemon, admin: &str) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = daemon
        .admin()
        .await
        .snapshot(with_token(pb::SnapshotRequest {}, admin))
        .await?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk?.data);
    }
    Ok(bytes)
}

/// Stores 3,000 users `cN`, each with an ICLOUD custodian share `share-N`.
pub(crate) async fn store_shares(daemon: &Daemon, secret: &str) {
    let mut hook = daemon.webhook().await;
    for i in 0..3_000 {
        hook.backup(with_secret(
            pb::BackupRequest {
                client_id: format!("c{i}"),
                backup_method: "ICLOUD-ED25519".into(),
                share: format!("share-{i}"),
                backup_share_pair_id: None,
            },
            secret,
        ))
        .await
        .unwrap();
    }
}

/// Kills `daemon` with SIGKILL once a snapshot has started streaming.
async fn kill_while_a_snapshot_streams(mut daemon: Daemon, admin: &str) {
    let mut snapshot = daemon
        .admin()
        .await
        .snapshot(with_token(pb::SnapshotRequest {}, admin))
        .await
        .unwrap()
        .into_inner();
    let _first = snapshot.next().await;
    assert!(!daemon.signal("KILL").success());
}

/// Kills `daemon` with SIGKILL once a rotation to `raw` has reported its first, unfinished,
/// step.
async fn kill_while_a_rotation_runs(mut daemon: Daemon, admin: &str, raw: &[u8]) {
    let mut progress = daemon.rekey_stream(admin, raw).await;
    let first = progress.next().await.unwrap().unwrap();
    assert!(!first.finished);
    assert!(!daemon.signal("KILL").success());
}

/// Started again with the old key after a rotation to `raw` was killed, `daemon` says the
/// rotation is unfinished, refuses a snapshot (its records are under two keys), and finishes
/// it.
async fn the_interrupted_rotation_is_reported_and_finished(
    daemon: &Daemon,
    admin: &str,
    raw: &[u8],
) {
    assert!(
        daemon.logs().contains("rotation was interrupted"),
        "{}",
        daemon.logs()
    );
    let refused = snapshot_bytes(daemon, admin).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("rotation is unfinished"),
        "{refused:?}"
    );
    assert!(daemon.rekey(admin, raw).await.finished);
}

/// Every one of the 3,000 shares opens and a sample of them is served; the audit trail
/// verifies.
async fn nothing_is_lost(daemon: &Daemon, admin: &str, secret: &str) {
    let report = daemon.verify(admin).await;
    assert_eq!(
        (report.custodian_shares, report.failed),
        (3_000, 0),
        "{:?}",
        report.failures
    );
    let mut hook = daemon.webhook().await;
    for i in (0..3_000).step_by(97) {
        let shares = fetch_shares(&mut hook, secret, format!("c{i}")).await;
        assert_eq!(shares, vec![format!("share-{i}")]);
    }
    let audit = daemon.verify_audit(admin).await;
    assert!(audit.ok, "{audit:?}");
}

/// A vault killed while a snapshot streams, then while a rotation runs, starts again, finishes
/// the rotation, makes a snapshot that restores with the new key alone, and has lost nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_snapshot_and_during_a_rotation_loses_nothing() {
    let sandbox = Sandbox::new(71);
    let secret = sandbox.keys.webhook_secret.clone();
    let admin = sandbox.keys.admin_token.clone();
    let daemon = sandbox.start();
    store_shares(&daemon, &secret).await;
    kill_while_a_snapshot_streams(daemon, &admin).await;

    let new_keys = Keys::new(&sandbox.tmp.path().join("new"), 72);
    let raw = sharevault::secrets::read_master_key(&new_keys.master_key_file)
        .unwrap()
        .to_raw()
        .to_vec();
    kill_while_a_rotation_runs(sandbox.start(), &admin, &raw).await;

    let daemon = sandbox.start();
    the_interrupted_rotation_is_reported_and_finished(&daemon, &admin, &raw).await;
    // Once finished, a snapshot restores with the new key alone.
    let file = sandbox.tmp.path().join("after-rotation.snapshot");
    std::fs::write(&file, snapshot_bytes(&daemon, &admin).await.unwrap()).unwrap();
    let restored = sandbox.tmp.path().join("restored");
    succeeds(&mut restore_command(
        &file,
        &restored,
        &new_keys.master_key_file,
    ));
    nothing_is_lost(&daemon, &admin, &secret).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_database_file_is_detected_never_served() {
    let sandbox = Sandbox::new(73);
    let secret = sandbox.keys.webhook_secret.clone();
    let mut daemon = sandbox.start();
    let marker = "MARKER-OF-THE-DAMAGED-RECORD";
    let mut hook = daemon.webhook().await;
    for client in ["intact", "damaged"] {
        hook.backup(with_secret(
            pb::BackupRequest {
                client_id: client.into(),
                backup_method: "GDRIVE-SECP256K1".into(),
                share: format!("{marker}-{client}"),
                backup_share_pair_id: None,
            },
            &secret,
        ))
        .await
        .unwrap();
    }
    drop(hook);
    assert!(daemon.signal("TERM").success());

    // Flip one byte of the sealed payload, in the file itself.
    crate::harness::damage_custodian_share(&sandbox.database(), "damaged", "GDRIVE-SECP256K1");

    let daemon = sandbox.start();
    let mut hook = daemon.webhook().await;
    let ok = hook
        .fetch(with_secret(
            pb::FetchRequest {
                client_id: "intact".into(),
            },
            &secret,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.backup_shares, vec![format!("{marker}-intact")]);
    let err = hook
        .fetch(with_secret(
            pb::FetchRequest {
                client_id: "damaged".into(),
            },
            &secret,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::DataLoss);
    assert!(!err.message().contains(marker));
    let report = daemon.verify(&sandbox.keys.admin_token).await;
    assert_eq!(report.failed, 1);
    assert!(
        report.failures[0].starts_with("custodian_shares/damaged/GDRIVE-SECP256K1"),
        "{:?}",
        report.failures
    );
    drop(hook);
    // A clean stop: the last checkpoint leaves nothing in the log.
    let mut daemon = daemon;
    assert!(daemon.signal("TERM").success());

    // A damaged file header is refused at start, saying what to do.
    let mut bytes = std::fs::read(sandbox.database()).unwrap();
    for b in bytes.iter_mut().take(64).skip(9) {
        *b ^= 0xFF;
    }
    std::fs::write(sandbox.database(), &bytes).unwrap();
    match Daemon::launch(command(&sandbox.data_dir, &Daemon::tcp_args(&sandbox.keys))) {
        Started::Exited { logs, .. } => {
            assert!(logs.contains("restore the last snapshot"), "{logs}")
        }
        Started::Ready(_) => panic!("a damaged header must be refused"),
    }
}
