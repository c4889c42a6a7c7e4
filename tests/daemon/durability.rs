//! Durability: restarts, concurrent writers to one key, and kill -9 under write load.

use crate::harness::{Daemon, Sandbox, fetch_shares, with_secret};
use sharevault::pb;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

fn backup(client: &str, method: &str, share: &str) -> pb::BackupRequest {
    pb::BackupRequest {
        client_id: client.into(),
        backup_method: method.into(),
        share: share.into(),
        backup_share_pair_id: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_survive_a_clean_restart() {
    let sandbox = Sandbox::new(6);
    let secret = sandbox.keys.webhook_secret.clone();
    let mut daemon = sandbox.start();
    let mut webhook = daemon.webhook().await;
    for i in 0..20 {
        webhook
            .backup(with_secret(
                backup(
                    &format!("c{i}"),
                    "PASSWORD-SECP256K1",
                    &format!("share-{i}"),
                ),
                &secret,
            ))
            .await
            .unwrap();
    }
    drop(webhook);
    let status = daemon.signal("TERM");
    assert!(status.success(), "SIGTERM exits cleanly: {status}");
    assert!(daemon.logs().contains("database closed"));

    let daemon = sandbox.start();
    let mut webhook = daemon.webhook().await;
    for i in 0..20 {
        let shares = webhook
            .fetch(with_secret(
                pb::FetchRequest {
                    client_id: format!("c{i}"),
                },
                &secret,
            ))
            .await
            .unwrap()
            .into_inner()
            .backup_shares
            .clone();
        assert_eq!(shares, vec![format!("share-{i}")]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_to_one_key_leave_exactly_one_value() {
    let sandbox = Sandbox::new(7);
    let daemon = sandbox.start();
    let secret = sandbox.keys.webhook_secret.clone();
    let channel = daemon.channel().await;
    let mut tasks = Vec::new();
    for writer in 0..32 {
        let mut client = pb::webhook_service_client::WebhookServiceClient::new(channel.clone());
        let secret = secret.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..10 {
                let share =
                    format!("{{\"backupSharePairId\":\"p-{writer}-{round}\",\"w\":{writer}}}");
                client
                    .backup(with_secret(
                        backup("contended", "PASSKEY-ED25519", &share),
                        &secret,
                    ))
                    .await
                    .expect("a concurrent write never fails");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut client = pb::webhook_service_client::WebhookServiceClient::new(channel);
    let shares = fetch_shares(&mut client, &secret, "contended".into()).await;
    assert_eq!(shares.len(), 1, "exactly one value wins");
    assert!(shares[0].starts_with("{\"backupSharePairId\":\"p-"));

    let backend = crate::harness::create_token(
        &daemon,
        &sandbox.keys.admin_token,
        "b",
        pb::Role::Backend as i32,
    )
    .await;
    let pairs = daemon
        .backup()
        .await
        .list_backup_share_pairs(crate::harness::with_token(
            pb::ListBackupSharePairsRequest {
                client_id: "contended".into(),
            },
            &backend,
        ))
        .await
        .unwrap()
        .into_inner()
        .backup_share_pairs;
    let mut ids: Vec<&str> = pairs.iter().map(|p| p.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), pairs.len(), "no duplicate pairs: {pairs:?}");
    // The replaced shares are kept as versions with their pairs; the surviving share's pair
    // is the one just started.
    let current: Vec<_> = pairs
        .iter()
        .filter(|p| shares[0].contains(&format!("\"{}\"", p.id)))
        .collect();
    assert_eq!(
        current.len(),
        1,
        "the surviving share's pair is listed once"
    );
    assert_eq!(
        current[0].internal_status,
        pb::BackupSharePairStatus::StoredCustodianBackupShare as i32
    );
}

/// What the writers under load had acknowledged, and when to stop.
#[derive(Default)]
struct Load {
    /// `(client, share)` of every new key acknowledged.
    acked_new: Mutex<Vec<(String, String)>>,
    /// The last version each overwriting writer had acknowledged.
    acked_version: Mutex<HashMap<usize, u64>>,
    count: AtomicUsize,
    stop: AtomicBool,
}

const MAX_WRITES_PER_WRITER: usize = 2_000;

/// Even writers add new keys; odd writers overwrite one key each with rising versions, so a
/// lost or stale overwrite shows too. Each stops at its first failed or timed-out write.
async fn write(writer: usize, channel: Channel, secret: String, load: Arc<Load>) {
    let mut client = pb::webhook_service_client::WebhookServiceClient::new(channel);
    let adds_new_keys = writer.is_multiple_of(2);
    for i in 0..MAX_WRITES_PER_WRITER {
        if load.stop.load(Ordering::Relaxed) {
            break;
        }
        let (client_id, method, share) = if adds_new_keys {
            (
                format!("crash-{writer}-{i}"),
                "PASSWORD-SECP256K1".to_string(),
                format!("share-{writer}-{i}"),
            )
        } else {
            (
                "crash-overwrite".to_string(),
                format!("M{writer}-ED25519"),
                format!("{writer}:{i}"),
            )
        };
        let sent = tokio::time::timeout(
            Duration::from_secs(10),
            client.backup(with_secret(backup(&client_id, &method, &share), &secret)),
        )
        .await;
        match sent {
            Ok(Ok(_)) => {
                if adds_new_keys {
                    load.acked_new.lock().unwrap().push((client_id, share));
                } else {
                    load.acked_version.lock().unwrap().insert(writer, i as u64);
                }
                load.count.fetch_add(1, Ordering::Relaxed);
            }
            _ => break,
        }
    }
}

/// Runs the writers against `daemon`, kills it with SIGKILL once 400 writes are acknowledged
/// (or after a minute), and answers what was acknowledged.
async fn write_until_killed(mut daemon: Daemon, secret: &str) -> Load {
    const WRITERS: usize = 16;
    let channel = daemon.channel().await;
    let load = Arc::new(Load::default());
    let tasks: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (channel, secret) = (channel.clone(), secret.to_owned());
            tokio::spawn(write(writer, channel, secret, Arc::clone(&load)))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while load.count.load(Ordering::Relaxed) < 400 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = daemon.signal("KILL");
    load.stop.store(true, Ordering::Relaxed);
    assert!(!status.success());
    for task in tasks {
        task.await.unwrap();
    }
    drop(channel);
    drop(daemon);
    Arc::into_inner(load).expect("the writers are done")
}

/// Every acknowledged new key holds its share, and every overwritten key holds at least the
/// version acknowledged last, one share per method.
async fn acknowledged_writes_are_intact(
    daemon: &Daemon,
    secret: &str,
    acked_new: &[(String, String)],
    acked_version: &HashMap<usize, u64>,
) {
    let mut client = daemon.webhook().await;
    for (client_id, share) in acked_new {
        let shares = fetch_shares(&mut client, secret, client_id.clone()).await;
        assert_eq!(
            shares,
            vec![share.clone()],
            "acknowledged write of {client_id} lost"
        );
    }
    let overwritten = fetch_shares(&mut client, secret, "crash-overwrite".into()).await;
    let stored: HashMap<usize, u64> = overwritten
        .iter()
        .map(|share| {
            let (writer, version) = share.split_once(':').expect("an overwrite share");
            (writer.parse().unwrap(), version.parse().unwrap())
        })
        .collect();
    assert_eq!(stored.len(), overwritten.len(), "one share per method");
    for (writer, version) in acked_version {
        let found = stored.get(writer).copied();
        assert!(
            found.is_some_and(|f| f >= *version),
            "writer {writer}: acknowledged version {version}, found {found:?}"
        );
    }
}

/// Writers under load; the daemon is killed with SIGKILL mid-stream. Every write that was
/// acknowledged must be there, intact, after a restart. The settings of earlier versions that
/// traded restart time for throughput (`--quick-repair=false`, `--journal-bytes`) are accepted,
/// warned about and ignored: the restart replays the log and needs no repair either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_write_load_loses_no_acknowledged_write() {
    let sandbox = Sandbox::new(8);
    let secret = sandbox.keys.webhook_secret.clone();
    let load = write_until_killed(sandbox.start_with(&["--quick-repair=false"]), &secret).await;
    let acked_new = load.acked_new.into_inner().unwrap();
    let acked_version = load.acked_version.into_inner().unwrap();
    assert!(
        acked_new.len() + acked_version.len() > 0,
        "the load made progress before the kill"
    );

    let daemon = sandbox.start_with(&["--journal-bytes", "0", "--quick-repair=false"]);
    assert!(
        daemon.logs().contains("deprecated and ignored") && !daemon.logs().contains("repairing"),
        "{}",
        daemon.logs()
    );
    acknowledged_writes_are_intact(&daemon, &secret, &acked_new, &acked_version).await;
    eprintln!(
        "crash test: {} new keys and {} overwrite streams acknowledged before SIGKILL, all intact",
        acked_new.len(),
        acked_version.len()
    );
}

/// The restart after a SIGKILL under write load opens redb at its last checkpoint (which
/// recorded the allocator state: no full repair, which reads the whole file, minutes for a
/// large vault) and replays the log after it: every acknowledged write intact, the audit
/// trail whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_then_restart_needs_no_full_repair_and_loses_nothing() {
    let sandbox = Sandbox::new(9);
    let secret = sandbox.keys.webhook_secret.clone();
    let load = write_until_killed(sandbox.start(), &secret).await;
    let acked_new = load.acked_new.into_inner().unwrap();
    let acked_version = load.acked_version.into_inner().unwrap();
    assert!(
        acked_new.len() + acked_version.len() > 0,
        "the load made progress before the kill"
    );

    let daemon = sandbox.start();
    assert!(
        !daemon.logs().contains("repairing the database"),
        "the restart repaired the whole file:\n{}",
        daemon.logs()
    );
    acknowledged_writes_are_intact(&daemon, &secret, &acked_new, &acked_version).await;
    let audit = daemon.verify_audit(&sandbox.keys.admin_token).await;
    assert!(audit.ok, "{audit:?}");
    assert!(audit.events >= (acked_new.len() + acked_version.len()) as u64);
}

/// The log a SIGKILL left is not replayed into another database file put in its place (a
/// restored or moved file): the start stops with an error that says so, and changes neither
/// the file nor the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_of_another_database_file_stops_the_start_and_changes_nothing() {
    let other = Sandbox::new(90);
    let mut daemon = other.start();
    let secret = other.keys.webhook_secret.clone();
    let mut webhook = daemon.webhook().await;
    webhook
        .backup(with_secret(
            backup("elsewhere", "PASSWORD-SECP256K1", "share-b"),
            &secret,
        ))
        .await
        .unwrap();
    drop(webhook);
    assert!(daemon.signal("TERM").success());

    let sandbox = Sandbox::new(91);
    let mut daemon = sandbox.start();
    let secret = sandbox.keys.webhook_secret.clone();
    let mut webhook = daemon.webhook().await;
    webhook
        .backup(with_secret(
            backup("acked", "PASSWORD-SECP256K1", "share-a"),
            &secret,
        ))
        .await
        .unwrap();
    drop(webhook);
    daemon.signal("KILL");
    std::fs::copy(other.database(), sandbox.database()).unwrap();
    let files = |s: &Sandbox| {
        ["sharevault.redb", "sharevault.redb.log"]
            .map(|name| std::fs::read(s.data_dir.join(name)).unwrap())
    };
    let before = files(&sandbox);

    let started = crate::harness::Daemon::launch(crate::harness::command(
        &sandbox.data_dir,
        &crate::harness::Daemon::tcp_args(&sandbox.keys),
    ));
    let crate::harness::Started::Exited { status, logs } = started else {
        panic!("the daemon started over another database's log");
    };
    assert!(!status.success());
    assert!(logs.contains("written for another copy"), "{logs}");
    assert!(
        files(&sandbox) == before,
        "the refused start changed the files"
    );
}
