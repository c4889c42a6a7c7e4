//! Portal's flow end to end: custodian shares for every method and curve, client shares,
//! fetches, replacement and the share-pair status model.

use crate::harness::{Sandbox, create_token, fetch_shares, with_secret, with_token};
use sharevault::pb::{self, BackupSharePairStatus, Role};
use tonic::Code;

pub const METHODS: [&str; 4] = ["GDRIVE", "ICLOUD", "PASSWORD", "PASSKEY"];
pub const CURVES: [&str; 2] = ["SECP256K1", "ED25519"];

/// A share shaped like Portal's: JSON with a pair id, and bytes that re-serialising would
/// change (spacing, escapes, key order, non-ASCII).
pub fn portal_share(client: &str, method: &str, curve: &str, version: u32) -> String {
    format!(
        "{{\"share\":\"{client}/{method}/{curve}/v{version}\",  \"backupSharePairId\":\"pair-{client}-{method}-{curve}-{version}\",\n\
         \"z\":1, \"a\":\"\\u00e9 é \\\"quoted\\\"\", \"bip32Key\":\"x{version}\"}}"
    )
}

pub fn pair_id(client: &str, method: &str, curve: &str, version: u32) -> String {
    format!("pair-{client}-{method}-{curve}-{version}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_flow_stores_fetches_replaces_and_completes_pairs() {
    let sandbox = Sandbox::new(1);
    let daemon = sandbox.start();
    let secret = &sandbox.keys.webhook_secret;
    let mut webhook = daemon.webhook().await;
    let client = "clxportal0001";

    // Portal backs up every method and curve, and checks each write at once.
    let mut expected = Vec::new();
    for method in METHODS {
        for curve in CURVES {
            let share = portal_share(client, method, curve, 1);
            let reply = webhook
                .backup(with_secret(
                    pb::BackupRequest {
                        client_id: client.into(),
                        backup_method: format!("{method}-{curve}"),
                        share: share.clone(),
                        backup_share_pair_id: None,
                    },
                    secret,
                ))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                reply.backup_share_pair_id,
                pair_id(client, method, curve, 1)
            );
            let fetched = fetch_shares(&mut webhook, secret, client.into()).await;
            assert!(
                fetched.contains(&share),
                "immediate fetch must see the write"
            );
            expected.push(share);
        }
    }
    let mut fetched = fetch_shares(&mut webhook, secret, client.into()).await;
    fetched.sort();
    expected.sort();
    assert_eq!(
        fetched, expected,
        "recovery fetch returns every share byte for byte"
    );

    // An unknown client has no shares.
    let none = webhook
        .fetch(with_secret(
            pb::FetchRequest {
                client_id: "nobody".into(),
            },
            secret,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(none.backup_shares.is_empty());

    let admin = &sandbox.keys.admin_token;
    let backend = create_token(&daemon, admin, "backend", Role::Backend as i32).await;
    let eject = create_token(&daemon, admin, "eject", Role::Eject as i32).await;
    let mut api = daemon.backup().await;

    // Every pair starts at STORED_CUSTODIAN_BACKUP_SHARE.
    let pairs = api
        .list_backup_share_pairs(with_token(
            pb::ListBackupSharePairsRequest {
                client_id: client.into(),
            },
            &backend,
        ))
        .await
        .unwrap()
        .into_inner()
        .backup_share_pairs;
    assert_eq!(pairs.len(), 8);
    assert!(pairs.iter().all(|p| p.internal_status
        == BackupSharePairStatus::StoredCustodianBackupShare as i32
        && p.status == "incomplete"));

    // The SDK saved the keys of PASSWORD's pairs.
    let password_pairs: Vec<String> = CURVES
        .iter()
        .map(|c| pair_id(client, "PASSWORD", c, 1))
        .collect();
    api.update_backup_share_pairs(with_token(
        pb::UpdateBackupSharePairsRequest {
            client_id: client.into(),
            backup_share_pair_ids: password_pairs.clone(),
            status: BackupSharePairStatus::StoredClientBackupShareKey as i32,
        },
        &backend,
    ))
    .await
    .unwrap();
    // Completing before the client share is stored is refused, and changes nothing.
    let early = api
        .update_backup_share_pairs(with_token(
            pb::UpdateBackupSharePairsRequest {
                client_id: client.into(),
                backup_share_pair_ids: password_pairs.clone(),
                status: BackupSharePairStatus::StoredClientBackupShare as i32,
            },
            &backend,
        ))
        .await
        .unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition);

    // The company stores the client share of every method; each completes its pairs.
    for method in METHODS {
        let completed = api
            .store_client_backup_share(with_token(
                pb::StoreClientBackupShareRequest {
                    client_id: client.into(),
                    backup_method: method.into(),
                    cipher_text: format!("cipher-{method}-v1"),
                },
                &backend,
            ))
            .await
            .unwrap()
            .into_inner()
            .completed_backup_share_pair_ids;
        let mut want: Vec<String> = CURVES
            .iter()
            .map(|c| pair_id(client, method, c, 1))
            .collect();
        want.sort();
        assert_eq!(completed, want);
    }
    let pairs = api
        .list_backup_share_pairs(with_token(
            pb::ListBackupSharePairsRequest {
                client_id: client.into(),
            },
            &backend,
        ))
        .await
        .unwrap()
        .into_inner()
        .backup_share_pairs;
    assert!(pairs.iter().all(|p| p.status == "completed"), "{pairs:?}");

    // Moving a pair back is illegal.
    let back = api
        .update_backup_share_pairs(with_token(
            pb::UpdateBackupSharePairsRequest {
                client_id: client.into(),
                backup_share_pair_ids: password_pairs.clone(),
                status: BackupSharePairStatus::StoredCustodianBackupShare as i32,
            },
            &backend,
        ))
        .await
        .unwrap_err();
    assert_eq!(back.code(), Code::FailedPrecondition);
    let unknown = api
        .update_backup_share_pairs(with_token(
            pb::UpdateBackupSharePairsRequest {
                client_id: client.into(),
                backup_share_pair_ids: vec!["no-such-pair".into()],
                status: BackupSharePairStatus::StoredClientBackupShareKey as i32,
            },
            &backend,
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    // The client share reads back exactly.
    let got = api
        .get_client_backup_share(with_token(
            pb::GetClientBackupShareRequest {
                client_id: client.into(),
                backup_method: "PASSKEY".into(),
            },
            &backend,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.cipher_text, "cipher-PASSKEY-v1");
    assert!(got.created_at.is_some());

    // A new PASSWORD-ED25519 share replaces that key only and restarts its pair.
    let replacement = portal_share(client, "PASSWORD", "ED25519", 2);
    webhook
        .backup(with_secret(
            pb::BackupRequest {
                client_id: client.into(),
                backup_method: "PASSWORD-ED25519".into(),
                share: replacement.clone(),
                backup_share_pair_id: None,
            },
            secret,
        ))
        .await
        .unwrap();
    let fetched = fetch_shares(&mut webhook, secret, client.into()).await;
    assert_eq!(fetched.len(), 8);
    assert!(fetched.contains(&replacement));
    assert!(!fetched.contains(&portal_share(client, "PASSWORD", "ED25519", 1)));
    assert!(fetched.contains(&portal_share(client, "PASSWORD", "SECP256K1", 1)));

    let view = api
        .list_backups(with_token(
            pb::ListBackupsRequest {
                client_id: client.into(),
            },
            &backend,
        ))
        .await
        .unwrap()
        .into_inner()
        .methods;
    assert_eq!(view.len(), 4);
    let password = view.iter().find(|m| m.backup_method == "PASSWORD").unwrap();
    assert_eq!(password.status, "incomplete");
    assert!(password.has_client_backup_share);
    let ed = password
        .custodian_shares
        .iter()
        .find(|c| c.curve == "ED25519")
        .unwrap();
    assert_eq!(
        ed.backup_share_pair_id,
        pair_id(client, "PASSWORD", "ED25519", 2)
    );
    assert_eq!(
        ed.pair_status,
        BackupSharePairStatus::StoredCustodianBackupShare as i32
    );
    let gdrive = view.iter().find(|m| m.backup_method == "GDRIVE").unwrap();
    assert_eq!(gdrive.status, "completed");
    assert_eq!(gdrive.custodian_shares.len(), 2);

    // The old pair is gone, the new one is listed.
    let ids: Vec<String> = api
        .list_backup_share_pairs(with_token(
            pb::ListBackupSharePairsRequest {
                client_id: client.into(),
            },
            &backend,
        ))
        .await
        .unwrap()
        .into_inner()
        .backup_share_pairs
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert!(ids.contains(&pair_id(client, "PASSWORD", "ED25519", 2)));
    assert!(!ids.contains(&pair_id(client, "PASSWORD", "ED25519", 1)));

    // Eject: only the eject role reads a custodian share.
    let ejected = api
        .get_custodian_backup_share(with_token(
            pb::GetCustodianBackupShareRequest {
                client_id: client.into(),
                backup_method: "PASSWORD-ED25519".into(),
            },
            &eject,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ejected.share, replacement);
    let denied = api
        .get_custodian_backup_share(with_token(
            pb::GetCustodianBackupShareRequest {
                client_id: client.into(),
                backup_method: "PASSWORD-ED25519".into(),
            },
            &backend,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    // Deleting a client share reopens its method's pairs.
    let deleted = api
        .delete_client_backup_share(with_token(
            pb::DeleteClientBackupShareRequest {
                client_id: client.into(),
                backup_method: "GDRIVE".into(),
            },
            &backend,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.deleted);
    let missing = api
        .get_client_backup_share(with_token(
            pb::GetClientBackupShareRequest {
                client_id: client.into(),
                backup_method: "GDRIVE".into(),
            },
            &backend,
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let pairs = api
        .list_backup_share_pairs(with_token(
            pb::ListBackupSharePairsRequest {
                client_id: client.into(),
            },
            &backend,
        ))
        .await
        .unwrap()
        .into_inner()
        .backup_share_pairs;
    for p in pairs.iter().filter(|p| p.backup_method == "GDRIVE") {
        assert_eq!(
            p.internal_status,
            BackupSharePairStatus::StoredClientBackupShareKey as i32
        );
    }

    // Erasing the client leaves nothing, and other clients untouched.
    webhook
        .backup(with_secret(
            pb::BackupRequest {
                client_id: "other-client".into(),
                backup_method: "PASSWORD-SECP256K1".into(),
                share: "other share".into(),
                backup_share_pair_id: Some("other-pair".into()),
            },
            secret,
        ))
        .await
        .unwrap();
    let erased = api
        .delete_client(with_token(
            pb::DeleteClientRequest {
                client_id: client.into(),
            },
            &backend,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            erased.custodian_shares_deleted,
            erased.client_shares_deleted,
            erased.backup_share_pairs_deleted
        ),
        (8, 3, 8)
    );
    let after = webhook
        .fetch(with_secret(
            pb::FetchRequest {
                client_id: client.into(),
            },
            secret,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(after.backup_shares.is_empty());
    let other = webhook
        .fetch(with_secret(
            pb::FetchRequest {
                client_id: "other-client".into(),
            },
            secret,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(other.backup_shares, vec!["other share".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_unknown_method_is_stored_and_used_as_fallback() {
    let sandbox = Sandbox::new(2);
    let daemon = sandbox.start();
    let secret = &sandbox.keys.webhook_secret;
    daemon
        .webhook()
        .await
        .backup(with_secret(
            pb::BackupRequest {
                client_id: "legacy".into(),
                backup_method: String::new(),
                share: "legacy-share".into(),
                backup_share_pair_id: None,
            },
            secret,
        ))
        .await
        .unwrap();
    let backend = create_token(
        &daemon,
        &sandbox.keys.admin_token,
        "backend",
        Role::Backend as i32,
    )
    .await;
    let mut api = daemon.backup().await;
    let view = api
        .list_backups(with_token(
            pb::ListBackupsRequest {
                client_id: "legacy".into(),
            },
            &backend,
        ))
        .await
        .unwrap()
        .into_inner()
        .methods;
    assert_eq!(view[0].backup_method, "UNKNOWN");
    assert_eq!(view[0].custodian_shares[0].backup_method, "UNKNOWN");

    api.store_client_backup_share(with_token(
        pb::StoreClientBackupShareRequest {
            client_id: "legacy".into(),
            backup_method: String::new(),
            cipher_text: "legacy-cipher".into(),
        },
        &backend,
    ))
    .await
    .unwrap();
    let got = api
        .get_client_backup_share(with_token(
            pb::GetClientBackupShareRequest {
                client_id: "legacy".into(),
                backup_method: "PASSWORD".into(),
            },
            &backend,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (got.cipher_text.as_str(), got.backup_method.as_str()),
        ("legacy-cipher", "UNKNOWN")
    );
}
