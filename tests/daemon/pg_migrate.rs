//! Moving a vault between the embedded database and PostgreSQL: `sharevault migrate` both
//! ways, and snapshots that restore on either backend.

use crate::harness::{
    Daemon, Database, Sandbox, create_token, fetch_shares, restore_command, succeeds, with_secret,
    with_token,
};
use crate::operations::snapshot_to;
use sharevault::pb;
use std::path::Path;
use std::process::{Command, Output};

const CLIENTS: usize = 25;

/// Stores a custodian share and a client share for each of [`CLIENTS`] clients; answers the
/// backend token.
async fn fill(daemon: &Daemon, sandbox: &Sandbox, tag: &str) -> String {
    let token = create_token(
        daemon,
        &sandbox.keys.admin_token,
        &format!("backend-{tag}"),
        pb::Role::Backend as i32,
    )
    .await;
    let (mut hook, mut api) = (daemon.webhook().await, daemon.backup().await);
    for i in 0..CLIENTS {
        hook.backup(with_secret(
            pb::BackupRequest {
                client_id: format!("{tag}-{i}"),
                backup_method: "PASSWORD-SECP256K1".into(),
                share: format!("{tag}-share-{i}"),
                backup_share_pair_id: None,
            },
            &sandbox.keys.webhook_secret,
        ))
        .await
        .unwrap();
        api.store_client_backup_share(with_token(
            pb::StoreClientBackupShareRequest {
                client_id: format!("{tag}-{i}"),
                backup_method: "PASSWORD".into(),
                cipher_text: format!("{tag}-cipher-{i}"),
            },
            &token,
        ))
        .await
        .unwrap();
    }
    token
}

/// Every share `fill` stored under `tag` is served by `daemon`, through `token`.
async fn holds(daemon: &Daemon, sandbox: &Sandbox, tag: &str, token: &str) {
    let (mut hook, mut api) = (daemon.webhook().await, daemon.backup().await);
    for i in 0..CLIENTS {
        let client = format!("{tag}-{i}");
        assert_eq!(
            fetch_shares(&mut hook, &sandbox.keys.webhook_secret, client.clone()).await,
            [format!("{tag}-share-{i}")]
        );
        let cipher = api
            .get_client_backup_share(with_token(
                pb::GetClientBackupShareRequest {
                    client_id: client,
                    backup_method: "PASSWORD".into(),
                    ..Default::default()
                },
                token,
            ))
            .await
            .unwrap()
            .into_inner()
            .cipher_text
            .clone();
        assert_eq!(cipher, format!("{tag}-cipher-{i}"));
    }
    let audit = daemon.verify_audit(&sandbox.keys.admin_token).await;
    assert!(audit.ok && audit.events > 2 * CLIENTS as u64, "{audit:?}");
}

fn migrate(to: &str, data_dir: &Path, sandbox: &Sandbox, db: &Database, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sharevault"))
        .args(["migrate", "-q", "--to", to, "--data-dir"])
        .arg(data_dir)
        .arg("--master-key-file")
        .arg(&sandbox.keys.master_key_file)
        .args(db.args())
        .args(extra)
        .env_remove("SHAREVAULT_DATA_DIR")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A vault made on the embedded database moves to PostgreSQL, where a daemon serves it and
/// takes new writes; it moves back into a new data dir, where a daemon serves both. A target
/// that holds a vault is refused unless `--replace`, and a repeated migration leaves no
/// duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_moves_a_vault_to_postgres_and_back() {
    let on_disk = Sandbox::new(50);
    let mut daemon = on_disk.start();
    let token = fill(&daemon, &on_disk, "disk").await;
    daemon.signal("TERM");

    let on_pg = Sandbox {
        keys: on_disk.sibling().keys,
        ..Sandbox::on_shared_postgres(50)
    };
    let db = on_pg.database.as_ref().unwrap();
    let out = migrate("postgres", &on_disk.data_dir, &on_disk, db, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("rows per table and the audit head equal"),
        "{said}"
    );
    // Again, without --replace: refused, nothing duplicated.
    let again = migrate("postgres", &on_disk.data_dir, &on_disk, db, &[]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already holds a vault"),
        "{}",
        stderr(&again)
    );

    let mut daemon = on_pg.start();
    holds(&daemon, &on_pg, "disk", &token).await;
    let pg_token = fill(&daemon, &on_pg, "pg").await;
    daemon.signal("TERM");

    let back = Sandbox {
        keys: on_disk.sibling().keys,
        ..Sandbox::new(50)
    };
    let out = migrate("embedded", &back.data_dir, &back, db, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Run again with --replace: the same vault, no duplicate rows.
    let out = migrate("embedded", &back.data_dir, &back, db, &["--replace"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut daemon = back.start();
    holds(&daemon, &back, "disk", &token).await;
    holds(&daemon, &back, "pg", &pg_token).await;
    let status = daemon.status(&back.keys.admin_token).await;
    assert_eq!(status.custodian_shares, 2 * CLIENTS as u64, "{status:?}");
    assert_eq!(status.client_shares, 2 * CLIENTS as u64, "{status:?}");
    daemon.signal("TERM");

    // The wrong master key is refused before anything is written.
    let stranger = Sandbox::new(51);
    let fresh = Sandbox::on_shared_postgres(51);
    let out = migrate(
        "postgres",
        &back.data_dir,
        &stranger,
        fresh.database.as_ref().unwrap(),
        &[],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("master key"), "{}", stderr(&out));
}

/// A snapshot of a daemon on PostgreSQL restores into another database and into a data
/// dir; one of a daemon on the embedded database restores into PostgreSQL. Each serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_move_between_backends() {
    let on_pg = Sandbox::on_shared_postgres(52);
    let daemon = on_pg.start();
    let token = fill(&daemon, &on_pg, "snap").await;
    let snap = on_pg.tmp.path().join("pg.snapshot");
    snapshot_to(&daemon, &on_pg.keys.admin_token, &snap).await;
    drop(daemon);

    // Into another PostgreSQL database.
    let other = Sandbox {
        keys: on_pg.sibling().keys,
        ..Sandbox::on_shared_postgres(52)
    };
    let mut restore = restore_command(&snap, &other.data_dir, &other.keys.master_key_file);
    succeeds(
        restore
            .args(other.database.as_ref().unwrap().args())
            .arg("-q"),
    );
    let mut daemon = other.start();
    holds(&daemon, &other, "snap", &token).await;
    let snap_from_pg_copy = other.tmp.path().join("copy.snapshot");
    snapshot_to(&daemon, &other.keys.admin_token, &snap_from_pg_copy).await;
    // Stopped (a restore is refused while a daemon serves the database).
    daemon.signal("TERM");

    // Into a data dir.
    let on_disk = Sandbox {
        keys: on_pg.sibling().keys,
        ..Sandbox::new(52)
    };
    succeeds(restore_command(&snap, &on_disk.data_dir, &on_disk.keys.master_key_file).arg("-q"));
    let mut daemon = on_disk.start();
    holds(&daemon, &on_disk, "snap", &token).await;
    let disk_snap = on_disk.tmp.path().join("disk.snapshot");
    snapshot_to(&daemon, &on_disk.keys.admin_token, &disk_snap).await;
    daemon.signal("TERM");

    // A snapshot of the embedded database, into PostgreSQL over a vault: only with --replace.
    let mut refused = restore_command(&disk_snap, &other.data_dir, &other.keys.master_key_file);
    let out = refused
        .args(other.database.as_ref().unwrap().args())
        .arg("-q")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let mut replace = restore_command(&disk_snap, &other.data_dir, &other.keys.master_key_file);
    succeeds(
        replace
            .args(other.database.as_ref().unwrap().args())
            .args(["-q", "--replace"]),
    );
    let daemon = other.start();
    holds(&daemon, &other, "snap", &token).await;
}
