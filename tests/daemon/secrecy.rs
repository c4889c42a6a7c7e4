//! Secrets stay secret: nothing planted reaches the disk in clear or the logs, and a record
//! that was altered or moved is refused instead of served.

use crate::harness::{Sandbox, create_token, with_secret, with_token};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use sharevault::pb::backup_service_client::BackupServiceClient;
use sharevault::pb::webhook_service_client::WebhookServiceClient;
use sharevault::pb::{self, Role};
use std::path::Path;
use tonic::Code;
use tonic::transport::Channel;

const SHARE_MARKER: &str = "PLANTED-SHARE-7f3a9c";
const CIPHER_MARKER: &str = "PLANTED-CIPHER-41d2e8";

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

type Webhook = WebhookServiceClient<Channel>;
type Api = BackupServiceClient<Channel>;

/// Plants a marked custodian share of each curve and a marked client share.
async fn plant(webhook: &mut Webhook, api: &mut Api, secret: &str, token: &str) {
    for method in ["PASSWORD-SECP256K1", "PASSWORD-ED25519"] {
        webhook
            .backup(with_secret(
                pb::BackupRequest {
                    client_id: "planted".into(),
                    backup_method: method.into(),
                    share: format!(
                        "{{\"backupSharePairId\":\"p-{method}\",\"k\":\"{SHARE_MARKER}\"}}"
                    ),
                    backup_share_pair_id: None,
                },
                secret,
            ))
            .await
            .unwrap();
    }
    api.store_client_backup_share(with_token(
        pb::StoreClientBackupShareRequest {
            client_id: "planted".into(),
            backup_method: "PASSWORD".into(),
            cipher_text: CIPHER_MARKER.into(),
        },
        token,
    ))
    .await
    .unwrap();
}

/// Reads everything back, and fails a few calls on purpose, so that every path logs.
async fn read_back_and_fail_on_purpose(
    webhook: &mut Webhook,
    api: &mut Api,
    secret: &str,
    token: &str,
) {
    webhook
        .fetch(with_secret(
            pb::FetchRequest {
                client_id: "planted".into(),
            },
            secret,
        ))
        .await
        .unwrap();
    api.get_client_backup_share(with_token(
        pb::GetClientBackupShareRequest {
            client_id: "planted".into(),
            backup_method: "PASSWORD".into(),
            ..Default::default()
        },
        token,
    ))
    .await
    .unwrap();
    let ejected = api
        .get_custodian_backup_share(with_token(
            pb::GetCustodianBackupShareRequest {
                client_id: "planted".into(),
                backup_method: "PASSWORD-SECP256K1".into(),
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(ejected.share.contains(SHARE_MARKER));
    let bad = webhook
        .backup(with_secret(
            pb::BackupRequest {
                client_id: "planted".into(),
                backup_method: "BAD\nMETHOD".into(),
                share: SHARE_MARKER.into(),
                backup_share_pair_id: None,
            },
            secret,
        ))
        .await
        .unwrap_err();
    assert!(!bad.message().contains(SHARE_MARKER));
    let _ = api
        .list_backups(with_token(
            pb::ListBackupsRequest {
                client_id: "planted".into(),
            },
            &format!("{token}x"),
        ))
        .await
        .unwrap_err();
}

/// The calls were logged, and neither a planted value nor the master key was.
fn assert_not_in_logs(logs: &str, planted: &[&str], master_key_file: &Path) {
    assert!(
        logs.contains("method=\"Fetch\""),
        "calls are logged: {logs}"
    );
    for planted in planted {
        assert!(!logs.contains(planted), "a secret reached the logs");
    }
    let master_key = std::fs::read_to_string(master_key_file).unwrap();
    assert!(!logs.contains(master_key.trim()));
}

/// No file of the data dir holds a planted value in clear (and there are bytes to scan).
fn assert_not_on_disk(data_dir: &Path, planted: &[&str]) {
    let mut scanned = 0;
    for entry in std::fs::read_dir(data_dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        scanned += bytes.len();
        for planted in planted {
            assert!(!contains(&bytes, planted), "a secret is on disk in clear");
        }
    }
    assert!(scanned > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_secrets_never_reach_the_disk_or_the_logs() {
    let sandbox = Sandbox::new(14);
    let mut daemon = sandbox.start();
    let secret = &sandbox.keys.webhook_secret;
    let admin = &sandbox.keys.admin_token;
    let token = create_token(&daemon, admin, "eject", Role::Eject as i32).await;
    let mut webhook = daemon.webhook().await;
    let mut api = daemon.backup().await;
    plant(&mut webhook, &mut api, secret, &token).await;
    read_back_and_fail_on_purpose(&mut webhook, &mut api, secret, &token).await;
    drop((webhook, api));
    assert!(daemon.signal("TERM").success());

    let planted = [
        SHARE_MARKER,
        CIPHER_MARKER,
        token.as_str(),
        secret.as_str(),
        admin.as_str(),
    ];
    assert_not_in_logs(&daemon.logs(), &planted, &sandbox.keys.master_key_file);
    assert_not_on_disk(&sandbox.data_dir, &planted);
}

const CUSTODIAN: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("custodian_shares");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_or_altered_record_fails_to_open_and_is_never_served() {
    let sandbox = Sandbox::new(15);
    let secret = sandbox.keys.webhook_secret.clone();
    let mut daemon = sandbox.start();
    let mut webhook = daemon.webhook().await;
    for client in ["alice", "bob", "carol"] {
        webhook
            .backup(with_secret(
                pb::BackupRequest {
                    client_id: client.into(),
                    backup_method: "PASSWORD-SECP256K1".into(),
                    share: format!("share of {client}"),
                    backup_share_pair_id: None,
                },
                &secret,
            ))
            .await
            .unwrap();
    }
    drop(webhook);
    assert!(daemon.signal("TERM").success());

    // Copy alice's record over bob's, and flip one byte of carol's.
    {
        let db = redb::Database::open(sandbox.database()).unwrap();
        let alice = {
            let read = db.begin_read().unwrap();
            let table = read.open_table(CUSTODIAN).unwrap();
            table
                .get(("alice", "PASSWORD-SECP256K1"))
                .unwrap()
                .unwrap()
                .value()
                .to_vec()
        };
        let write = db.begin_write().unwrap();
        {
            let mut table = write.open_table(CUSTODIAN).unwrap();
            table
                .insert(("bob", "PASSWORD-SECP256K1"), alice.as_slice())
                .unwrap();
            let mut carol = table
                .get(("carol", "PASSWORD-SECP256K1"))
                .unwrap()
                .unwrap()
                .value()
                .to_vec();
            let last = carol.len() - 1;
            carol[last] ^= 0x40;
            table
                .insert(("carol", "PASSWORD-SECP256K1"), carol.as_slice())
                .unwrap();
        }
        write.commit().unwrap();
    }

    let daemon = sandbox.start();
    let mut webhook = daemon.webhook().await;
    let fetch = |client: &str| pb::FetchRequest {
        client_id: client.into(),
    };
    let alice = webhook
        .fetch(with_secret(fetch("alice"), &secret))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(alice.backup_shares, vec!["share of alice".to_string()]);
    for victim in ["bob", "carol"] {
        let err = webhook
            .fetch(with_secret(fetch(victim), &secret))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::DataLoss, "{victim}");
        assert!(!err.message().contains("share of"));
    }
    assert!(daemon.logs().contains("a stored record failed to open"));
}
