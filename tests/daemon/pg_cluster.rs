//! Several daemons on one PostgreSQL database as one vault: a first start of several at once
//! makes one set of keys; a key rotation through one reaches all; a restore or a migration
//! is refused while daemons serve the database; the server's settings are checked at start;
//! one daemon at a time prunes and archives the audit trail.

use crate::harness::{
    Daemon, Database, Sandbox, Started, command, fetch_shares, restore_command, succeeds,
    with_secret,
};
use crate::operations::snapshot_to;
use crate::pg_server::PgServer;
use sharevault::pb;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Writes acknowledged so far: (client, share).
type Acked = Arc<Mutex<Vec<(String, String)>>>;

async fn backup(
    hook: &mut pb::webhook_service_client::WebhookServiceClient<tonic::transport::Channel>,
    secret: &str,
    client: &str,
    share: &str,
) -> Result<(), tonic::Status> {
    hook.backup(with_secret(
        pb::BackupRequest {
            client_id: client.into(),
            backup_method: "PASSWORD-SECP256K1".into(),
            share: share.into(),
            backup_share_pair_id: None,
        },
        secret,
    ))
    .await
    .map(|_| ())
}

/// Up to `count` backups through `daemon`, one after another, for at most `within`; records
/// those acknowledged, answers how many failed.
async fn load(
    daemon: &Daemon,
    secret: &str,
    tag: &str,
    count: usize,
    within: Duration,
    acked: &Acked,
) -> usize {
    let mut hook = daemon.webhook().await;
    let deadline = Instant::now() + within;
    let mut failed = 0;
    for i in 0..count {
        if Instant::now() > deadline {
            break;
        }
        let (client, share) = (format!("{tag}-{i}"), format!("{tag}-share-{i}"));
        let call = backup(&mut hook, secret, &client, &share);
        match tokio::time::timeout(Duration::from_secs(15), call).await {
            Ok(Ok(())) => acked.lock().unwrap().push((client, share)),
            Ok(Err(_)) => failed += 1,
            Err(_) => panic!("a backup hung past 15 s"),
        }
    }
    failed
}

/// Every acknowledged write reads back through `daemon`.
async fn all_present(daemon: &Daemon, secret: &str, acked: &Acked) -> usize {
    let mut hook = daemon.webhook().await;
    let acked = acked.lock().unwrap().clone();
    for (client, share) in &acked {
        assert_eq!(
            fetch_shares(&mut hook, secret, client.clone()).await,
            std::slice::from_ref(share),
            "an acknowledged write of {client} is missing or does not open"
        );
    }
    acked.len()
}

/// Starts a daemon for each sandbox, all at the same instant.
fn start_at_once(boxes: &[&Sandbox], extra: &[&str]) -> Vec<Daemon> {
    let barrier = Arc::new(std::sync::Barrier::new(boxes.len()));
    let starts: Vec<_> = boxes
        .iter()
        .map(|sandbox| {
            let mut args = Daemon::tcp_args(&sandbox.keys);
            args.extend(sandbox.database.as_ref().unwrap().args());
            args.extend(extra.iter().map(|s| s.to_string()));
            let cmd = command(&sandbox.data_dir, &args);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                Daemon::launch(cmd)
            })
        })
        .collect();
    starts
        .into_iter()
        .map(|s| match s.join().unwrap() {
            Started::Ready(daemon) => daemon,
            Started::Exited { status, logs } => panic!("a daemon exited ({status}):\n{logs}"),
        })
        .collect()
}

/// The advisory lock key of migrations (`src/store/postgres/schema.rs`).
const MIGRATE_LOCK: i64 = 8319957661088113012;

/// Daemons started at the same instant on an empty database, several rounds (a new database
/// each): one set of keys (every daemon checks the audit events every other one wrote), all
/// serve, each restarts and serves, and a snapshot through one restores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_started_at_once_on_a_new_database_make_one_set_of_keys() {
    const ROUNDS: usize = 5;
    for round in 0..ROUNDS {
        let first = Sandbox::on_shared_postgres(60);
        let (second, third) = (first.sibling(), first.sibling());
        let boxes = [&first, &second, &third];
        // Lined up as a start at one instant is: the migration lock held meanwhile (as the
        // first daemon to create the schema holds it), then released to all three at once.
        let db = first.database.as_ref().unwrap().name.clone();
        let holder = std::thread::spawn(move || {
            PgServer::shared().psql(
                &db,
                &format!("SELECT pg_advisory_lock({MIGRATE_LOCK}); SELECT pg_sleep(2.5)"),
            )
        });
        let db = &first.database.as_ref().unwrap().name;
        while PgServer::shared().psql(
            db,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        ) == "0"
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut daemons = start_at_once(&boxes, &[]);
        holder.join().unwrap();
        let (secret, admin) = (&first.keys.webhook_secret, &first.keys.admin_token);
        for (i, daemon) in daemons.iter().enumerate() {
            let mut hook = daemon.webhook().await;
            backup(
                &mut hook,
                secret,
                &format!("r{round}-d{i}"),
                &format!("s{i}"),
            )
            .await
            .unwrap_or_else(|e| panic!("round {round}: daemon {i} does not serve: {e:?}"));
        }
        for (i, daemon) in daemons.iter().enumerate() {
            let report = daemon.verify_audit(admin).await;
            assert!(
                report.ok && report.events >= 3,
                "round {round}: the audit chain does not verify through daemon {i}: {report:?}"
            );
            for j in 0..3 {
                assert_eq!(
                    fetch_shares(
                        &mut daemon.webhook().await,
                        secret,
                        format!("r{round}-d{j}")
                    )
                    .await,
                    [format!("s{j}")],
                    "round {round}"
                );
            }
        }
        // A snapshot through one restores (its MAC is under the one integrity key).
        let snap = first.tmp.path().join("at-once.snap");
        snapshot_to(&daemons[2], admin, &snap).await;
        let target = first.tmp.path().join("restored");
        succeeds(&mut restore_command(
            &snap,
            &target,
            &first.keys.master_key_file,
        ));
        // Each restarts and serves.
        for (i, sandbox) in boxes.iter().enumerate() {
            assert!(daemons[i].signal("TERM").success());
            daemons[i] = sandbox.start();
            let mut hook = daemons[i].webhook().await;
            backup(&mut hook, secret, &format!("r{round}-again-{i}"), "again")
                .await
                .unwrap();
        }
        let report = daemons[0].verify_audit(admin).await;
        assert!(report.ok, "round {round}: {report:?}");
    }
    eprintln!("{ROUNDS} rounds of three daemons started at once: one set of keys each time");
}

/// Three daemons under write load through all of them; a rotation started through one
/// reaches all three before any record is re-wrapped, and they all seal under the new key
/// once it has. Restarted with only the new key, every record opens and every acknowledged
/// write reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_through_one_daemon_reaches_every_daemon() {
    let first = Sandbox::on_shared_postgres(61);
    let (second, third) = (first.sibling(), first.sibling());
    let boxes = [&first, &second, &third];
    let mut daemons: Vec<Daemon> = boxes.iter().map(|b| b.start()).collect();
    let (secret, admin) = (
        first.keys.webhook_secret.clone(),
        first.keys.admin_token.clone(),
    );
    let acked: Acked = Arc::default();
    let mut failed = 0;
    for (i, daemon) in daemons.iter().enumerate() {
        failed += load(
            daemon,
            &secret,
            &format!("before-{i}"),
            40,
            Duration::from_secs(30),
            &acked,
        )
        .await;
    }
    // Writes through all three while the rotation runs through the second.
    let raw = [0x5au8; 32];
    let during = {
        let rotate = daemons[1].rekey(&admin, &raw);
        let within = Duration::from_secs(40);
        let loads = async {
            let (x, y, z) = tokio::join!(
                load(&daemons[0], &secret, "during-0", 150, within, &acked),
                load(&daemons[1], &secret, "during-1", 150, within, &acked),
                load(&daemons[2], &secret, "during-2", 150, within, &acked),
            );
            [x, y, z]
        };
        let (last, fails) = tokio::join!(rotate, loads);
        assert!(last.finished, "{last:?}");
        failed += fails.iter().sum::<usize>();
        last
    };
    // And after it, through each.
    for (i, daemon) in daemons.iter().enumerate() {
        failed += load(
            daemon,
            &secret,
            &format!("after-{i}"),
            20,
            Duration::from_secs(30),
            &acked,
        )
        .await;
    }
    for daemon in &mut daemons {
        assert!(daemon.signal("TERM").success());
    }
    // The old key is retired: only the new one is given.
    std::fs::write(&first.keys.master_key_file, hex::encode(raw)).unwrap();
    let daemons: Vec<Daemon> = boxes.iter().map(|b| b.start()).collect();
    for (i, daemon) in daemons.iter().enumerate() {
        let report = daemon.verify(&admin).await;
        assert_eq!(
            report.failed, 0,
            "daemon {i} cannot open records: {:?}",
            report.failures
        );
        assert_eq!(report.master_key_id, during.new_master_key_id);
    }
    let present = all_present(&daemons[2], &secret, &acked).await;
    let report = daemons[0].verify_audit(&admin).await;
    assert!(report.ok, "{report:?}");
    eprintln!(
        "rotation through one of three daemons under load: {present} writes acknowledged, all \
         present and opening under the new key alone; {failed} refused"
    );
}

fn restore_into(snapshot: &Path, db: &Database, keys: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sharevault"))
        .args(["restore", "-q", "--from"])
        .arg(snapshot)
        .arg("--master-key-file")
        .arg(keys)
        .args(db.args())
        .args(extra)
        .env_remove("SHAREVAULT_DATA_DIR")
        .output()
        .unwrap()
}

fn migrate_into(data_dir: &Path, db: &Database, keys: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sharevault"))
        .args(["migrate", "-q", "--to", "postgres", "--data-dir"])
        .arg(data_dir)
        .arg("--master-key-file")
        .arg(keys)
        .args(db.args())
        .args(extra)
        .env_remove("SHAREVAULT_DATA_DIR")
        .output()
        .unwrap()
}

/// An embedded vault holding one share (`from-disk`), a snapshot of it, and the vault's daemon
/// stopped: what a restore or migration into PostgreSQL starts from.
async fn stopped_vault_with_a_snapshot(n: u8) -> (Sandbox, std::path::PathBuf) {
    let on_disk = Sandbox::new(n);
    let mut daemon = on_disk.start();
    let secret = on_disk.keys.webhook_secret.clone();
    backup(
        &mut daemon.webhook().await,
        &secret,
        "from-disk",
        "disk-share",
    )
    .await
    .unwrap();
    let snap = on_disk.tmp.path().join("disk.snap");
    snapshot_to(&daemon, &on_disk.keys.admin_token, &snap).await;
    assert!(daemon.signal("TERM").success());
    (on_disk, snap)
}

/// `restore --database-url` and `migrate --to postgres` into a database a daemon serves are
/// refused, naming the daemon, and change nothing; once it has stopped they go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_or_migration_into_a_served_database_is_refused() {
    // An embedded vault to migrate from, and a snapshot of it, under the same master key.
    let (on_disk, snap) = stopped_vault_with_a_snapshot(62).await;
    let secret = on_disk.keys.webhook_secret.clone();

    let on_pg = Sandbox::on_shared_postgres(62);
    let db = on_pg.database.as_ref().unwrap();
    let mut serving = on_pg.start();
    let mut hook = serving.webhook().await;
    backup(&mut hook, &secret, "on-pg", "pg-share")
        .await
        .unwrap();
    let key = &on_pg.keys.master_key_file;
    let named = format!("pid {}", serving.pid());
    for (what, out) in [
        ("restore", restore_into(&snap, db, key, &["--replace"])),
        (
            "migrate",
            migrate_into(&on_disk.data_dir, db, key, &["--replace"]),
        ),
    ] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what} into a served database ran");
        assert!(
            stderr.contains(&named) && stderr.contains("stop every daemon"),
            "{what}: {stderr}"
        );
    }
    // Nothing changed under the daemon.
    assert_eq!(
        fetch_shares(&mut hook, &secret, "on-pg".into()).await,
        ["pg-share"]
    );
    assert!(
        fetch_shares(&mut hook, &secret, "from-disk".into())
            .await
            .is_empty()
    );
    drop(hook);
    assert!(serving.signal("TERM").success());

    // Stopped: both go through, and a daemon serves what they brought.
    let out = restore_into(&snap, db, key, &["--replace", "--allow-older"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = migrate_into(&on_disk.data_dir, db, key, &["--replace"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let daemon = on_pg.start();
    assert_eq!(
        fetch_shares(&mut daemon.webhook().await, &secret, "from-disk".into()).await,
        ["disk-share"]
    );
}

/// A server with a synchronous standby configured but `synchronous_commit` `local` (or
/// `off`) would acknowledge writes the standby lacks: the daemon refuses to start, naming
/// the setting. With the standby setting gone it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_with_a_local_commit_is_refused_at_start() {
    let server = PgServer::start();
    let sandbox = Sandbox::on_postgres(63, &server);
    let launch = || {
        let mut args = Daemon::tcp_args(&sandbox.keys);
        args.extend(sandbox.database.as_ref().unwrap().args());
        Daemon::launch(command(&sandbox.data_dir, &args))
    };
    let reload = |sql: &str| {
        server.psql("postgres", sql);
        server.psql("postgres", "SELECT pg_reload_conf()");
        std::thread::sleep(Duration::from_millis(300));
    };
    reload("ALTER SYSTEM SET synchronous_standby_names = 'standby1'");
    for commit in ["local", "off"] {
        reload(&format!("ALTER SYSTEM SET synchronous_commit = '{commit}'"));
        match launch() {
            Started::Exited { logs, .. } => {
                assert!(
                    logs.contains("synchronous_commit")
                        && logs.contains("synchronous_standby_names"),
                    "{logs}"
                );
                assert!(!logs.contains(crate::pg_server::PASSWORD), "{logs}");
            }
            Started::Ready(_) => {
                panic!("started with synchronous_commit = {commit} and a synchronous standby")
            }
        }
    }
    reload("ALTER SYSTEM RESET synchronous_standby_names");
    match launch() {
        Started::Ready(daemon) => {
            backup(
                &mut daemon.webhook().await,
                &sandbox.keys.webhook_secret,
                "no-standby",
                "share",
            )
            .await
            .unwrap();
        }
        Started::Exited { logs, .. } => panic!("refused without a standby:\n{logs}"),
    }
}

/// The archive files in `dir`.
fn archive_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Two daemons with an audit retention: one prunes and archives (into its archive dir), the
/// other never does while the first runs; stopped, the other takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_daemon_at_a_time_prunes_and_archives_the_audit_trail() {
    let first = Sandbox::on_shared_postgres(64);
    let second = first.sibling();
    let archive = |b: &Sandbox| b.tmp.path().join("archive");
    let start = |b: &Sandbox| {
        let dir = archive(b);
        b.start_with(&[
            "--audit-retain-events",
            "20",
            "--audit-archive-dir",
            dir.to_str().unwrap(),
            "--audit-prune-interval-seconds",
            "1",
        ])
    };
    let mut daemons = [start(&first), start(&second)];
    let (secret, admin) = (&first.keys.webhook_secret, &first.keys.admin_token);
    let acked: Acked = Arc::default();
    for round in 0..6 {
        for (i, daemon) in daemons.iter().enumerate() {
            load(
                daemon,
                secret,
                &format!("p{round}-{i}"),
                15,
                Duration::from_secs(20),
                &acked,
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    let files = [
        archive_files(&archive(&first)),
        archive_files(&archive(&second)),
    ];
    let pruned_by = |d: &Daemon| d.logs().contains("audit events archived and pruned");
    let pruners: Vec<bool> = daemons.iter().map(pruned_by).collect();
    assert_eq!(
        pruners.iter().filter(|p| **p).count(),
        1,
        "pruned by {pruners:?}; archive files {files:?}"
    );
    let leader = pruners.iter().position(|p| *p).unwrap();
    assert!(files[leader] > 0 && files[1 - leader] == 0, "{files:?}");
    for daemon in &daemons {
        let report = daemon.verify_audit(admin).await;
        assert!(report.ok, "{report:?}");
    }
    // The leader stops: the other takes the lock and archives from then on.
    assert!(daemons[leader].signal("TERM").success());
    let other = &daemons[1 - leader];
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    while !pruned_by(other) {
        assert!(Instant::now() < deadline, "no daemon took over the pruning");
        load(
            other,
            secret,
            &format!("takeover-{n}"),
            25,
            Duration::from_secs(20),
            &acked,
        )
        .await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let boxes = [&first, &second];
    assert!(archive_files(&archive(boxes[1 - leader])) > 0);
    let report = other.verify_audit(admin).await;
    assert!(report.ok, "{report:?}");
}

/// A daemon that stopped answering (SIGSTOP) ages out of the registry, so a restore goes
/// through; woken, its first write finds its registration gone in the write transaction and
/// is refused with UNAVAILABLE, instead of landing in the restored vault under the state
/// (keys, audit chain) the daemon read before; the restored vault's audit chain stays whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_woken_after_a_restore_under_it_refuses_writes() {
    let (on_disk, snap) = stopped_vault_with_a_snapshot(65).await;
    let secret = on_disk.keys.webhook_secret.clone();

    let on_pg = Sandbox::on_shared_postgres(65);
    let db = on_pg.database.as_ref().unwrap();
    let stale = on_pg.start();
    let mut hook = stale.webhook().await;
    backup(&mut hook, &secret, "on-pg", "pg-share")
        .await
        .unwrap();
    let pid = stale.pid().to_string();
    let kill = |sig: &str| {
        assert!(
            Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    kill("-STOP");
    let refused_until = Instant::now() + Duration::from_secs(30);
    let out = loop {
        let out = restore_into(
            &snap,
            db,
            &on_pg.keys.master_key_file,
            &["--replace", "--allow-older"],
        );
        if out.status.success() || Instant::now() > refused_until {
            break out;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    kill("-CONT");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Its very first write finds the registration gone, in its transaction.
    let refused = backup(&mut hook, &secret, "after-restore", "stale-share")
        .await
        .expect_err("the stale daemon wrote into the restored vault");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        stale.logs().contains("registration was removed"),
        "{}",
        stale.logs()
    );
    // A daemon started on the restored vault serves it, and its audit chain is whole.
    let fresh = on_pg.sibling().start();
    assert_eq!(
        fetch_shares(&mut fresh.webhook().await, &secret, "from-disk".into()).await,
        ["disk-share"]
    );
    let report = fresh.verify_audit(&on_pg.keys.admin_token).await;
    assert!(report.ok, "{report:?}");
}
