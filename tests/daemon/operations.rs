//! Operating the vault: snapshots under load and the restore drill, master key rotation,
//! record verification and the audit trail.

use crate::harness::{
    Daemon, Keys, Sandbox, Started, command, create_token, fetch_shares, restore_command, succeeds,
    with_secret, with_token,
};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use sharevault::audit::AuditEvent;
use sharevault::pb::{self, Role};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_stream::StreamExt;

fn backup(client: &str, method: &str, share: &str) -> pb::BackupRequest {
    pb::BackupRequest {
        client_id: client.into(),
        backup_method: method.into(),
        share: share.into(),
        backup_share_pair_id: None,
    }
}

/// Streams a snapshot from the admin API into `path`.
pub(crate) async fn snapshot_to(daemon: &Daemon, admin: &str, path: &std::path::Path) {
    let mut stream = daemon
        .admin()
        .await
        .snapshot(with_token(pb::SnapshotRequest {}, admin))
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.unwrap().data);
    }
    std::fs::write(path, bytes).unwrap();
}

/// Runs `sharevault restore` of `snapshot` into `data_dir` under `keys`' master key.
pub(crate) fn restore(
    snapshot: &std::path::Path,
    data_dir: &std::path::Path,
    keys: &Keys,
) -> std::process::Output {
    restore_command(snapshot, data_dir, &keys.master_key_file)
        .output()
        .unwrap()
}

/// A request to store `cipher_text` as the client share of `(client, method)`.
fn client_share(
    client: &str,
    method: &str,
    cipher_text: &str,
) -> pb::StoreClientBackupShareRequest {
    pb::StoreClientBackupShareRequest {
        client_id: client.into(),
        backup_method: method.into(),
        cipher_text: cipher_text.into(),
    }
}

/// The client share `daemon` serves for `(client, method)` to `token`; it must be there.
async fn client_cipher_text(daemon: &Daemon, token: &str, client: &str, method: &str) -> String {
    daemon
        .backup()
        .await
        .get_client_backup_share(with_token(
            pb::GetClientBackupShareRequest {
                client_id: client.into(),
                backup_method: method.into(),
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
        .cipher_text
        .clone()
}

/// A `(client, share)` the webhook acknowledged.
type Acked = Vec<(String, String)>;

/// Stores 40 users `fill-N`, each with a PASSWORD custodian share (pair `pN`) and client share
/// `ct-N`.
async fn fill(daemon: &Daemon, secret: &str, backend: &str) {
    let mut hook = daemon.webhook().await;
    let mut api = daemon.backup().await;
    for i in 0..40 {
        let client = format!("fill-{i}");
        let share = format!("{{\"backupSharePairId\":\"p{i}\",\"s\":{i}}}");
        hook.backup(with_secret(
            backup(&client, "PASSWORD-SECP256K1", &share),
            secret,
        ))
        .await
        .unwrap();
        api.store_client_backup_share(with_token(
            client_share(&client, "PASSWORD", &format!("ct-{i}")),
            backend,
        ))
        .await
        .unwrap();
    }
}

/// Takes a snapshot into `snap` while four writers keep writing; answers what they had
/// acknowledged before it started, which must not be empty.
async fn snapshot_under_load(daemon: &Daemon, sandbox: &Sandbox, snap: &std::path::Path) -> Acked {
    let hook = daemon.webhook().await;
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (mut hook, secret, acked, stop) = (
            hook.clone(),
            sandbox.keys.webhook_secret.clone(),
            Arc::clone(&acked),
            Arc::clone(&stop),
        );
        writers.push(tokio::spawn(async move {
            for i in 0..5_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (client, share) = (format!("load-{w}-{i}"), format!("share-{w}-{i}"));
                if hook
                    .backup(with_secret(
                        backup(&client, "GDRIVE-ED25519", &share),
                        &secret,
                    ))
                    .await
                    .is_ok()
                {
                    acked.lock().unwrap().push((client, share));
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before_snapshot = acked.lock().unwrap().clone();
    snapshot_to(daemon, &sandbox.keys.admin_token, snap).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert!(!before_snapshot.is_empty());
    before_snapshot
}

/// A corrupt or cut copy of `snap` is refused and leaves nothing in `target`; so is `snap`
/// itself under the wrong master key.
fn damaged_snapshots_and_the_wrong_key_are_refused(
    sandbox: &Sandbox,
    snap: &std::path::Path,
    target: &std::path::Path,
) {
    let bytes = std::fs::read(snap).unwrap();
    for (name, damaged) in [
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("flipped", {
            let mut b = bytes.clone();
            let mid = b.len() / 2;
            b[mid] ^= 0x01;
            b
        }),
    ] {
        let path = sandbox.tmp.path().join(name);
        std::fs::write(&path, damaged).unwrap();
        let out = restore(&path, target, &sandbox.keys);
        assert!(!out.status.success(), "{name}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("truncated") || stderr.contains("corrupt"),
            "{name}: {stderr}"
        );
        assert!(
            !target.join("sharevault.redb").exists(),
            "{name}: nothing swapped in"
        );
    }
    let other = Keys::new(&sandbox.tmp.path().join("other"), 51);
    let out = restore(snap, target, &other);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not open"));
}

/// The good snapshot restores into `target`, and a daemon on another port than `first` serves
/// every share acknowledged before it, the fill's shares and its backend token; restoring
/// over that running vault is refused.
async fn the_snapshot_restores_elsewhere(
    sandbox: &Sandbox,
    first: &Daemon,
    snap: &std::path::Path,
    target: &std::path::Path,
    before_snapshot: &Acked,
    backend: &str,
) {
    let out = succeeds(&mut restore_command(
        snap,
        target,
        &sandbox.keys.master_key_file,
    ));
    assert!(String::from_utf8_lossy(&out.stdout).contains("restored"));
    let restored = Daemon::start(target, &sandbox.keys);
    assert_ne!(restored.endpoint, first.endpoint);
    let mut hook = restored.webhook().await;
    for (client, share) in before_snapshot.iter().chain(
        [(
            "fill-7".to_string(),
            "{\"backupSharePairId\":\"p7\",\"s\":7}".to_string(),
        )]
        .iter(),
    ) {
        let shares = fetch_shares(&mut hook, &sandbox.keys.webhook_secret, client.clone()).await;
        assert_eq!(shares, vec![share.clone()], "{client}");
    }
    // Tokens and client shares came along.
    let got = client_cipher_text(&restored, backend, "fill-3", "PASSWORD").await;
    assert_eq!(got, "ct-3");

    // Restoring over a running vault is refused.
    let out = restore(snap, target, &sandbox.keys);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
}

/// The first vault is killed with its last commits still only in its log, then `snap` is
/// restored over it: what the log holds goes into the file moved aside, never into the
/// restored one.
async fn the_snapshot_replaces_a_killed_vault(
    sandbox: &Sandbox,
    mut daemon: Daemon,
    snap: &std::path::Path,
    before_snapshot: &Acked,
) {
    let secret = &sandbox.keys.webhook_secret;
    daemon
        .webhook()
        .await
        .backup(with_secret(
            backup("after-snapshot", "PASSWORD-SECP256K1", "late"),
            secret,
        ))
        .await
        .unwrap();
    assert!(daemon.signal("KILL").code().is_none());
    // The killed vault holds writes the snapshot lacks (its last one only in the journal):
    // replacing it loses them, so it takes --allow-older.
    let before = crate::harness::dir_digest(&sandbox.data_dir);
    let out = restore_command(snap, &sandbox.data_dir, &sandbox.keys.master_key_file)
        .arg("--replace")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--allow-older"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(crate::harness::dir_digest(&sandbox.data_dir), before);
    succeeds(
        restore_command(snap, &sandbox.data_dir, &sandbox.keys.master_key_file)
            .args(["--replace", "--allow-older"]),
    );
    let again = sandbox.start();
    let mut hook = again.webhook().await;
    let late = fetch_shares(&mut hook, secret, "after-snapshot".into()).await;
    assert!(late.is_empty(), "the restored vault is the snapshot's");
    let (client, share) = &before_snapshot[0];
    assert_eq!(
        fetch_shares(&mut hook, secret, client.clone()).await,
        vec![share.clone()]
    );
}

/// The restore drill: a snapshot taken while writers keep writing; damaged copies of it and
/// the wrong key are refused; it restores into a new data dir that another daemon serves; and
/// it replaces the first vault once that is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_drill_snapshot_under_load_then_restore_elsewhere() {
    let sandbox = Sandbox::new(50);
    let daemon = sandbox.start();
    let backend = sandbox.backend_token(&daemon).await;
    fill(&daemon, &sandbox.keys.webhook_secret, &backend).await;
    let snap = sandbox.tmp.path().join("vault.snapshot");
    let before_snapshot = snapshot_under_load(&daemon, &sandbox, &snap).await;
    let target = sandbox.tmp.path().join("restored");
    damaged_snapshots_and_the_wrong_key_are_refused(&sandbox, &snap, &target);
    the_snapshot_restores_elsewhere(
        &sandbox,
        &daemon,
        &snap,
        &target,
        &before_snapshot,
        &backend,
    )
    .await;
    the_snapshot_replaces_a_killed_vault(&sandbox, daemon, &snap, &before_snapshot).await;
}

/// Every file of a directory and its bytes.
fn dir_bytes(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// `snapshot` with an admin token record (and its hash entry) added, the counts fixed, and a
/// plain SHA-256 in place of the trailer: what someone who can write the backup storage, but
/// does not hold the master key, can make.
fn plant_admin_token(snapshot: &[u8], token: &str) -> Vec<u8> {
    use sha2::Digest;
    use sharevault::snapshot::{RecordReader, TableId};
    let mut reader = RecordReader::new(&snapshot[..snapshot.len() - 32]).unwrap();
    let mut records = Vec::new();
    while let Some(record) = reader.next_record().unwrap() {
        records.push(record);
    }
    let hash: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
    records.push((
        TableId::Tokens,
        b"mallory".to_vec(),
        sharevault::vault::codec::encode_token(sharevault::auth::Role::Admin, 1, &hash),
    ));
    records.push((TableId::TokenHashes, hash.to_vec(), b"mallory".to_vec()));
    records.sort_by_key(|(table, _, _)| *table);
    let mut header = reader.header.clone();
    header.counts[TableId::Tokens as usize - 1] += 1;
    header.counts[TableId::TokenHashes as usize - 1] += 1;
    let mut out = header.encode();
    for (table, key, value) in &records {
        out.extend(sharevault::snapshot::record(*table, key, value));
    }
    out.extend(sharevault::snapshot::end());
    let sum = sha2::Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

/// A snapshot altered by someone without the master key (an admin token planted, its checksum
/// recomputed) is refused, and so are truncated and flipped ones; none of them changes a byte
/// of the stopped vault it was to replace, nor leaves anything in a new data dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_snapshot_is_refused_and_changes_nothing() {
    let sandbox = Sandbox::new(52);
    let mut daemon = sandbox.start();
    let admin = sandbox.keys.admin_token.clone();
    create_token(&daemon, &admin, "backend", Role::Backend as i32).await;
    daemon
        .webhook()
        .await
        .backup(with_secret(
            backup("c1", "PASSWORD-SECP256K1", "{\"s\":1}"),
            &sandbox.keys.webhook_secret,
        ))
        .await
        .unwrap();
    let snap = sandbox.tmp.path().join("vault.snapshot");
    snapshot_to(&daemon, &admin, &snap).await;
    assert!(daemon.signal("TERM").success());
    let bytes = std::fs::read(&snap).unwrap();
    let before = dir_bytes(&sandbox.data_dir);
    let fresh = sandbox.tmp.path().join("fresh");

    let planted = plant_admin_token(&bytes, "mallory-knows-this-token");
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x01;
    for (name, damaged, expected) in [
        ("planted", planted, "MAC does not match"),
        ("flipped", flipped, "MAC does not match"),
        ("truncated", bytes[..bytes.len() - 40].to_vec(), "truncated"),
    ] {
        let path = sandbox.tmp.path().join(name);
        std::fs::write(&path, damaged).unwrap();
        for (data_dir, replace) in [(&sandbox.data_dir, true), (&fresh, false)] {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sharevault"));
            cmd.args(["restore", "--from"])
                .arg(&path)
                .arg("--data-dir")
                .arg(data_dir)
                .arg("--master-key-file")
                .arg(&sandbox.keys.master_key_file)
                .env_remove("SHAREVAULT_DATA_DIR");
            if replace {
                cmd.arg("--replace");
            }
            let out = cmd.output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{name} was restored");
            assert!(stderr.contains(expected), "{name}: {stderr}");
            assert!(stderr.contains("nothing was changed"), "{name}: {stderr}");
        }
        assert!(
            dir_bytes(&sandbox.data_dir) == before,
            "{name}: the live data dir changed"
        );
        assert!(!fresh.exists(), "{name}: a new data dir was made");
    }

    // The vault still serves, and the planted token is not valid there.
    let daemon = sandbox.start();
    let err = daemon
        .admin()
        .await
        .list_tokens(with_token(
            pb::ListTokensRequest {},
            "mallory-knows-this-token",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
}

/// Stores 600 users `cN`, each with a PASSKEY custodian share `share-N`, and client shares
/// `ct-N` for the first 100 of them.
async fn store_passkey_shares(daemon: &Daemon, secret: &str, backend: &str) {
    let mut hook = daemon.webhook().await;
    let mut api = daemon.backup().await;
    for i in 0..600 {
        hook.backup(with_secret(
            backup(&format!("c{i}"), "PASSKEY-SECP256K1", &format!("share-{i}")),
            secret,
        ))
        .await
        .unwrap();
    }
    for i in 0..100 {
        api.store_client_backup_share(with_token(
            client_share(&format!("c{i}"), "PASSKEY", &format!("ct-{i}")),
            backend,
        ))
        .await
        .unwrap();
    }
}

/// Rotates to `raw` while a writer keeps writing `during-N`; the rotation covers every record
/// and running it again is a no-op, after which every record opens under the new key. Answers
/// the new key's id.
async fn rekey_under_a_writer(daemon: &Daemon, sandbox: &Sandbox, raw: &[u8]) -> String {
    let admin = &sandbox.keys.admin_token;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (mut hook, secret) = (daemon.webhook().await, sandbox.keys.webhook_secret.clone());
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 10_000 {
                hook.backup(with_secret(
                    backup(
                        &format!("during-{n}"),
                        "GDRIVE-SECP256K1",
                        &format!("d-{n}"),
                    ),
                    &secret,
                ))
                .await
                .unwrap();
                n += 1;
            }
            n
        })
    };
    let last = daemon.rekey(admin, raw).await;
    assert!(
        last.finished && last.done == last.total && last.total >= 700,
        "{last:?}"
    );
    stop.store(true, Ordering::Relaxed);
    let during = writer.await.unwrap();

    // Running it again is a no-op that finishes at once (resumable).
    daemon.rekey(admin, raw).await;
    let report = daemon.verify(admin).await;
    assert_eq!(report.failed, 0, "{:?}", report.failures);
    assert_eq!(report.custodian_shares, 600 + during);
    assert_eq!(report.master_key_id, last.new_master_key_id);
    last.new_master_key_id
}

/// With `new_keys`' master key, a daemon serves every record, including those written during
/// the rotation, and reports the new key's id.
async fn the_new_key_serves_every_record(
    sandbox: &Sandbox,
    new_keys: &Keys,
    backend: &str,
    new_master_key_id: &str,
) {
    let secret = &sandbox.keys.webhook_secret;
    let keys = Keys {
        dir: sandbox.keys.dir.clone(),
        master_key_file: new_keys.master_key_file.clone(),
        webhook_secret: secret.clone(),
        admin_token: sandbox.keys.admin_token.clone(),
    };
    let daemon = Daemon::start(&sandbox.data_dir, &keys);
    let mut hook = daemon.webhook().await;
    for (client, share) in [
        ("c0", "share-0"),
        ("c599", "share-599"),
        ("during-0", "d-0"),
    ] {
        let shares = fetch_shares(&mut hook, secret, client.into()).await;
        assert_eq!(shares, vec![share.to_string()]);
    }
    let got = client_cipher_text(&daemon, backend, "c42", "PASSKEY").await;
    assert_eq!(got, "ct-42");
    let status = daemon.status(&sandbox.keys.admin_token).await;
    assert_eq!(status.master_key_id, new_master_key_id);
}

/// A master key rotation while a writer keeps writing covers every record; afterwards the old
/// key no longer opens the vault and the new one serves everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_while_serving_then_the_old_key_is_refused() {
    let sandbox = Sandbox::new(52);
    let mut daemon = sandbox.start();
    let backend = sandbox.backend_token(&daemon).await;
    store_passkey_shares(&daemon, &sandbox.keys.webhook_secret, &backend).await;

    let new_keys = Keys::new(&sandbox.tmp.path().join("new-keys"), 53);
    let new_key_hex = std::fs::read_to_string(&new_keys.master_key_file).unwrap();
    let raw = hex_decode(new_key_hex.trim());
    let new_master_key_id = rekey_under_a_writer(&daemon, &sandbox, &raw).await;
    assert!(daemon.signal("TERM").success());

    // The old key no longer opens the vault.
    let logs = match Daemon::launch(command(&sandbox.data_dir, &Daemon::tcp_args(&sandbox.keys))) {
        Started::Exited { logs, .. } => logs,
        Started::Ready(_) => panic!("the old key must be refused"),
    };
    assert!(
        logs.contains("is not the key this data dir was sealed with"),
        "{logs}"
    );

    the_new_key_serves_every_record(&sandbox, &new_keys, &backend, &new_master_key_id).await;
}

pub(crate) fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Rewrites the audit trail of a stopped vault from event `from` on, and its head, as someone
/// with the database file but no key can: `edit` each event, then chain it with a plain
/// SHA-256 (event format 1).
fn rewrite_trail(database: &std::path::Path, from: u64, edit: impl Fn(&mut AuditEvent)) {
    let db = redb::Database::open(database).unwrap();
    let write = db.begin_write().unwrap();
    {
        let mut table = write.open_table(AUDIT).unwrap();
        let mut events: Vec<AuditEvent> = table
            .iter()
            .unwrap()
            .map(|item| AuditEvent::decode(item.unwrap().1.value()).unwrap())
            .collect();
        let mut prev = [0u8; 32];
        for event in &mut events {
            if event.seq >= from {
                edit(event);
                event.version = 1;
                event.prev_hash = prev;
                event.hash = event.compute_hash(None).unwrap();
            }
            prev = event.hash;
        }
        for event in &events {
            table.insert(event.seq, event.encode().as_slice()).unwrap();
        }
        let last = events.last().unwrap();
        let mut head = last.seq.to_be_bytes().to_vec();
        head.extend_from_slice(&last.hash);
        write
            .open_table(META)
            .unwrap()
            .insert("audit_head", head.as_slice())
            .unwrap();
    }
    write.commit().unwrap();
}

/// As `eject` (a token named "ops-eject"), and as the webhook: writes and reads one user "aud"'s
/// custodian and client shares, then asks for a client share that is not there.
async fn audited_calls(daemon: &Daemon, secret: &str, eject: &str) {
    let mut hook = daemon.webhook().await;
    let mut api = daemon.backup().await;
    hook.backup(with_secret(
        backup("aud", "PASSWORD-SECP256K1", "AUDIT-SECRET-SHARE"),
        secret,
    ))
    .await
    .unwrap();
    hook.fetch(with_secret(
        pb::FetchRequest {
            client_id: "aud".into(),
        },
        secret,
    ))
    .await
    .unwrap();
    api.store_client_backup_share(with_token(
        client_share("aud", "PASSWORD", "AUDIT-SECRET-CT"),
        eject,
    ))
    .await
    .unwrap();
    client_cipher_text(daemon, eject, "aud", "PASSWORD").await;
    api.get_custodian_backup_share(with_token(
        pb::GetCustodianBackupShareRequest {
            client_id: "aud".into(),
            backup_method: "PASSWORD-SECP256K1".into(),
            ..Default::default()
        },
        eject,
    ))
    .await
    .unwrap();
    let missing = api
        .get_client_backup_share(with_token(
            pb::GetClientBackupShareRequest {
                client_id: "nobody".into(),
                backup_method: "PASSWORD".into(),
                ..Default::default()
            },
            eject,
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

/// Every write and every share read, by whom and with what outcome, is in the audit trail,
/// which can be filtered and limited, carries no payload, and verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_and_share_read_is_audited() {
    let sandbox = Sandbox::new(54);
    let daemon = sandbox.start();
    let admin = sandbox.keys.admin_token.clone();
    let eject = create_token(&daemon, &admin, "ops-eject", Role::Eject as i32).await;
    audited_calls(&daemon, &sandbox.keys.webhook_secret, &eject).await;

    let list = |request| daemon.audit_events(&admin, request);
    let events = list(pb::ListAuditEventsRequest {
        client_id: "aud".into(),
        ..Default::default()
    })
    .await;
    let seen: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| (e.actor.as_str(), e.action.as_str(), e.outcome.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("webhook", "backup", "ok"),
            ("webhook", "fetch", "ok"),
            ("ops-eject", "store_client_share", "ok"),
            ("ops-eject", "get_client_share", "ok"),
            ("ops-eject", "get_custodian_share", "ok"),
        ]
    );
    let reads = list(pb::ListAuditEventsRequest {
        action: "get_client_share".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(reads.len(), 2);
    assert_eq!(reads[1].outcome, "not_found");
    let limited = list(pb::ListAuditEventsRequest {
        limit: 2,
        ..Default::default()
    })
    .await;
    assert_eq!(limited.len(), 2);
    let all = list(pb::ListAuditEventsRequest::default()).await;
    assert!(
        all.iter()
            .all(|e| !format!("{e:?}").contains("AUDIT-SECRET")),
        "no payloads in events"
    );
    let report = daemon.verify_audit(&admin).await;
    assert!(report.ok && report.events == all.len() as u64, "{report:?}");
}

/// Overwrites the first "ops-eject" in the stored bytes of audit event `seq` with
/// "ops-ejecT", in place, as someone with the database file might.
fn edit_event_in_place(database: &std::path::Path, seq: u64) {
    let db = redb::Database::open(database).unwrap();
    let mut bytes = {
        let read = db.begin_read().unwrap();
        let table = read.open_table(AUDIT).unwrap();
        table.get(seq).unwrap().unwrap().value().to_vec()
    };
    let pos = bytes
        .windows(b"ops-eject".len())
        .position(|w| w == b"ops-eject")
        .unwrap();
    bytes[pos..pos + 9].copy_from_slice(b"ops-ejecT");
    let write = db.begin_write().unwrap();
    write
        .open_table(AUDIT)
        .unwrap()
        .insert(seq, bytes.as_slice())
        .unwrap();
    write.commit().unwrap();
}

/// An audit event edited in place is detected; so is the trail rewritten from there on
/// together with its head, as someone with the database file but not the master key can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_or_rewritten_audit_trail_is_detected() {
    let sandbox = Sandbox::new(58);
    let mut daemon = sandbox.start();
    let admin = sandbox.keys.admin_token.clone();
    let eject = create_token(&daemon, &admin, "ops-eject", Role::Eject as i32).await;
    audited_calls(&daemon, &sandbox.keys.webhook_secret, &eject).await;
    let all = daemon
        .audit_events(&admin, pb::ListAuditEventsRequest::default())
        .await;
    let report = daemon.verify_audit(&admin).await;
    assert!(report.ok && report.events == all.len() as u64, "{report:?}");
    assert!(daemon.signal("TERM").success());

    let victim = all
        .iter()
        .find(|e| e.action == "get_custodian_share")
        .unwrap()
        .seq;
    edit_event_in_place(&sandbox.database(), victim);
    let mut daemon = sandbox.start();
    let report = daemon.verify_audit(&admin).await;
    assert!(!report.ok);
    assert_eq!(report.first_bad_seq, victim);
    assert!(report.problem.contains("edited"), "{}", report.problem);
    assert!(daemon.signal("TERM").success());

    rewrite_trail(&sandbox.database(), victim, |event| {
        if event.seq == victim {
            event.actor = "someone-else".into();
        }
    });
    let daemon = sandbox.start();
    let report = daemon.verify_audit(&admin).await;
    assert!(!report.ok, "{report:?}");
    assert_eq!(report.first_bad_seq, victim);
    assert!(report.problem.contains("rewritten"), "{}", report.problem);
    let metrics = crate::http_client::Http::plain(&daemon.endpoint)
        .send("GET", "/metrics", &[], None)
        .await;
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(
        text.lines()
            .any(|l| l == "sharevault_audit_chain_broken_total 1"),
        "the broken chain is counted: {text}"
    );
}

/// A vault made before the audit MAC (plain SHA-256 trail, version 1 key check, no integrity
/// key) opens, verifies, and keys its new events; removing the integrity key of a vault that
/// has one, to start a plain trail, is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_from_before_the_audit_mac_opens_and_keys_its_new_events() {
    let sandbox = Sandbox::new(57);
    let secret = sandbox.keys.webhook_secret.clone();
    let admin = sandbox.keys.admin_token.clone();
    let mut daemon = sandbox.start();
    let mut hook = daemon.webhook().await;
    for client in ["old-1", "old-2"] {
        hook.backup(with_secret(
            backup(client, "PASSWORD-SECP256K1", "s"),
            &secret,
        ))
        .await
        .unwrap();
    }
    drop(hook);
    assert!(daemon.signal("TERM").success());

    // The integrity key alone removed: the key check says there was one.
    let remove_meta = |names: &[&str]| {
        let db = redb::Database::open(sandbox.database()).unwrap();
        let write = db.begin_write().unwrap();
        {
            let mut meta = write.open_table(META).unwrap();
            for name in names {
                meta.remove(*name).unwrap();
            }
        }
        write.commit().unwrap();
    };
    remove_meta(&["integrity_key"]);
    match Daemon::launch(command(&sandbox.data_dir, &Daemon::tcp_args(&sandbox.keys))) {
        Started::Exited { logs, .. } => {
            assert!(logs.contains("integrity key record is missing"), "{logs}")
        }
        Started::Ready(_) => panic!("a vault without its integrity key must be refused"),
    }

    // Made old: plain trail, version 1 key check, no integrity key nor anchor.
    remove_meta(&["audit_keyed_from"]);
    rewrite_trail(&sandbox.database(), 1, |_| {});
    {
        let key = sharevault::secrets::read_master_key(&sandbox.keys.master_key_file).unwrap();
        let check = key
            .seal(
                &sharevault::crypto::RecordAad {
                    table: "meta",
                    client_id: "",
                    backup_method: "key_check",
                },
                b"sharevault master key check v1",
            )
            .unwrap();
        let db = redb::Database::open(sandbox.database()).unwrap();
        let write = db.begin_write().unwrap();
        write
            .open_table(META)
            .unwrap()
            .insert("key_check", check.as_slice())
            .unwrap();
        write.commit().unwrap();
    }

    let mut daemon = sandbox.start();
    let before = daemon.verify_audit(&admin).await;
    assert!(before.ok && before.events >= 2, "{before:?}");
    let mut hook = daemon.webhook().await;
    let shares = fetch_shares(&mut hook, &secret, "old-1".into()).await;
    assert_eq!(shares, vec!["s".to_string()]);
    drop(hook);
    let after = daemon.verify_audit(&admin).await;
    assert!(after.ok && after.events > before.events, "{after:?}");
    assert!(daemon.signal("TERM").success());

    // The events written since are keyed: rewriting one of them plain is detected, while the
    // plain events before the upgrade still verify.
    let first_new = before.events + 1;
    rewrite_trail(&sandbox.database(), first_new, |_| {});
    let daemon = sandbox.start();
    let report = daemon.verify_audit(&admin).await;
    assert!(!report.ok, "{report:?}");
    assert_eq!(report.first_bad_seq, first_new, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_read_audit_events_are_visible_at_once_and_durable_soon_after() {
    let sandbox = Sandbox::new(55);
    let mut daemon = sandbox.start_with(&["--read-audit", "deferred"]);
    let secret = sandbox.keys.webhook_secret.clone();
    let admin = sandbox.keys.admin_token.clone();
    let mut hook = daemon.webhook().await;
    hook.backup(with_secret(
        backup("deferred", "PASSKEY-ED25519", "s"),
        &secret,
    ))
    .await
    .unwrap();
    for _ in 0..3 {
        hook.fetch(with_secret(
            pb::FetchRequest {
                client_id: "deferred".into(),
            },
            &secret,
        ))
        .await
        .unwrap();
    }
    async fn count(daemon: &Daemon, admin: &str) -> usize {
        let mut stream = daemon
            .admin()
            .await
            .list_audit_events(with_token(
                pb::ListAuditEventsRequest {
                    action: "fetch".into(),
                    ..Default::default()
                },
                admin,
            ))
            .await
            .unwrap()
            .into_inner();
        let mut n = 0;
        while let Some(e) = stream.next().await {
            e.unwrap();
            n += 1;
        }
        n
    }
    assert_eq!(count(&daemon, &admin).await, 3, "visible at once");
    // The flush interval is 100 ms; leave it ample time on a busy machine.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(hook);
    assert!(!daemon.signal("KILL").success());
    let daemon = sandbox.start();
    assert_eq!(
        count(&daemon, &admin).await,
        3,
        "durable after the flush interval, across kill -9"
    );
    let report = daemon.verify_audit(&admin).await;
    assert!(report.ok, "{report:?}");
}

/// A running daemon holds the data dir's lock: `restore --replace` does not swap its database
/// underneath it, and leaves the data dir as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_is_refused_beside_a_running_daemon() {
    let sandbox = Sandbox::new(93);
    let daemon = sandbox.start();
    let mut hook = daemon.webhook().await;
    let share = |n: u32| format!("{{\"backupSharePairId\":\"p{n}\",\"s\":{n}}}");
    let put = |n| {
        with_secret(
            backup("c1", "PASSWORD-SECP256K1", &share(n)),
            &sandbox.keys.webhook_secret,
        )
    };
    hook.backup(put(1)).await.unwrap();
    let snap = sandbox.tmp.path().join("snap");
    snapshot_to(&daemon, &sandbox.keys.admin_token, &snap).await;
    hook.backup(put(2)).await.unwrap();
    let before = crate::harness::dir_digest(&sandbox.data_dir);

    let out = restore_command(&snap, &sandbox.data_dir, &sandbox.keys.master_key_file)
        .arg("--replace")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in use"), "{stderr}");
    assert_eq!(crate::harness::dir_digest(&sandbox.data_dir), before);
    let shares = fetch_shares(&mut hook, &sandbox.keys.webhook_secret, "c1".into()).await;
    assert_eq!(shares, vec![share(2)]);
}
