//! `restore` over a vault: it shows when the snapshot was taken, its newest event and the
//! vault's last write, and refuses a snapshot older than that write unless `--allow-older`.

use crate::harness::{Sandbox, dir_digest, fetch_shares, restore_command, succeeds, with_secret};
use crate::operations::snapshot_to;
use sharevault::pb;

fn backup(client: &str, share: &str) -> pb::BackupRequest {
    pb::BackupRequest {
        client_id: client.into(),
        backup_method: "PASSWORD-SECP256K1".into(),
        share: share.into(),
        backup_share_pair_id: None,
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts that `stdout` shows the snapshot's creation time and newest event, and the last
/// write of the vault it replaces.
fn shows_the_times(stdout: &str) {
    for part in [
        "the snapshot was taken at 20",
        "its newest event #",
        "the vault it replaces last wrote at event #",
    ] {
        assert!(stdout.contains(part), "{part:?} missing from:\n{stdout}");
    }
}

/// A snapshot; reads only (a fetch, the snapshot's own event) do not make it older, so it
/// replaces its vault without the flag. Writes after it do: `restore --replace` is refused,
/// naming `--allow-older` and both times, and changes no byte of the data dir; with the flag
/// the snapshot's vault is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_a_snapshot_older_than_the_vaults_last_write() {
    let sandbox = Sandbox::new(71);
    let secret = &sandbox.keys.webhook_secret;
    let snap = sandbox.tmp.path().join("vault.snapshot");
    let mut daemon = sandbox.start();
    let mut hook = daemon.webhook().await;
    hook.backup(with_secret(backup("c1", "one"), secret))
        .await
        .unwrap();
    snapshot_to(&daemon, &sandbox.keys.admin_token, &snap).await;
    assert_eq!(fetch_shares(&mut hook, secret, "c1".into()).await, ["one"]);
    assert!(daemon.signal("TERM").success());

    // Only reads since the snapshot: it is not older.
    let out = succeeds(
        restore_command(&snap, &sandbox.data_dir, &sandbox.keys.master_key_file)
            .args(["--replace", "-q"]),
    );
    shows_the_times(&text(&out.stdout));

    // A write after it.
    let mut daemon = sandbox.start();
    let mut hook = daemon.webhook().await;
    hook.backup(with_secret(backup("c1", "two"), secret))
        .await
        .unwrap();
    assert!(daemon.signal("TERM").success());
    let before = dir_digest(&sandbox.data_dir);
    let out = restore_command(&snap, &sandbox.data_dir, &sandbox.keys.master_key_file)
        .args(["--replace", "-q"])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "an older snapshot was restored");
    for part in [
        "older than the vault",
        "--allow-older",
        "nothing was changed",
    ] {
        assert!(stderr.contains(part), "{part:?} missing from:\n{stderr}");
    }
    shows_the_times(&text(&out.stdout));
    assert_eq!(
        dir_digest(&sandbox.data_dir),
        before,
        "the refusal changed the data dir"
    );

    // With the flag, the snapshot's vault is back.
    let out = succeeds(
        restore_command(&snap, &sandbox.data_dir, &sandbox.keys.master_key_file).args([
            "--replace",
            "--allow-older",
            "-q",
        ]),
    );
    shows_the_times(&text(&out.stdout));
    let daemon = sandbox.start();
    let mut hook = daemon.webhook().await;
    assert_eq!(fetch_shares(&mut hook, secret, "c1".into()).await, ["one"]);
}

/// The same over PostgreSQL: the database is read in the import's transaction, and a refused
/// restore leaves it as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_into_postgres_refuses_a_snapshot_older_than_the_vaults_last_write() {
    let sandbox = Sandbox::on_shared_postgres(72);
    let secret = &sandbox.keys.webhook_secret;
    let db = sandbox.database.as_ref().unwrap().args();
    let snap = sandbox.tmp.path().join("vault.snapshot");
    let mut daemon = sandbox.start();
    let mut hook = daemon.webhook().await;
    hook.backup(with_secret(backup("c1", "one"), secret))
        .await
        .unwrap();
    snapshot_to(&daemon, &sandbox.keys.admin_token, &snap).await;
    hook.backup(with_secret(backup("c1", "two"), secret))
        .await
        .unwrap();
    assert!(daemon.signal("TERM").success());

    let out = restore_command(&snap, &sandbox.data_dir, &sandbox.keys.master_key_file)
        .args(&db)
        .args(["--replace", "-q"])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "an older snapshot was restored");
    assert!(stderr.contains("--allow-older"), "{stderr}");
    shows_the_times(&text(&out.stdout));
    let mut daemon = sandbox.start();
    let mut hook = daemon.webhook().await;
    assert_eq!(
        fetch_shares(&mut hook, secret, "c1".into()).await,
        ["two"],
        "the refusal changed the database"
    );
    assert!(daemon.signal("TERM").success());

    succeeds(
        restore_command(&snap, &sandbox.data_dir, &sandbox.keys.master_key_file)
            .args(&db)
            .args(["--replace", "--allow-older", "-q"]),
    );
    let daemon = sandbox.start();
    let mut hook = daemon.webhook().await;
    assert_eq!(fetch_shares(&mut hook, secret, "c1".into()).await, ["one"]);
}
