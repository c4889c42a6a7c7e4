//! Bad input gets INVALID_ARGUMENT naming the field, never echoes the value, and changes
//! nothing.

use crate::harness::{Sandbox, create_token, with_secret, with_token};
use sharevault::pb::{self, Role};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_by_field_and_changes_nothing() {
    let sandbox = Sandbox::new(5);
    let daemon = sandbox.start();
    let secret = &sandbox.keys.webhook_secret;
    let backend = create_token(
        &daemon,
        &sandbox.keys.admin_token,
        "backend",
        Role::Backend as i32,
    )
    .await;
    let mut webhook = daemon.webhook().await;
    let mut api = daemon.backup().await;

    let big_share = "S".repeat(64 * 1024 + 1);
    let backups: Vec<(&str, pb::BackupRequest)> = vec![
        (
            "client_id",
            pb::BackupRequest {
                client_id: String::new(),
                backup_method: "PASSWORD-SECP256K1".into(),
                share: "s".into(),
                backup_share_pair_id: None,
            },
        ),
        (
            "client_id",
            pb::BackupRequest {
                client_id: "has space".into(),
                backup_method: "PASSWORD-SECP256K1".into(),
                share: "s".into(),
                backup_share_pair_id: None,
            },
        ),
        (
            "client_id",
            pb::BackupRequest {
                client_id: "c".repeat(129),
                backup_method: "PASSWORD-SECP256K1".into(),
                share: "s".into(),
                backup_share_pair_id: None,
            },
        ),
        (
            "client_id",
            pb::BackupRequest {
                client_id: "bad/../path".into(),
                backup_method: "PASSWORD".into(),
                share: "s".into(),
                backup_share_pair_id: None,
            },
        ),
        (
            "backup_method",
            pb::BackupRequest {
                client_id: "victim".into(),
                backup_method: "PASS WORD".into(),
                share: "s".into(),
                backup_share_pair_id: None,
            },
        ),
        (
            "backup_method",
            pb::BackupRequest {
                client_id: "victim".into(),
                backup_method: "M".repeat(65),
                share: "s".into(),
                backup_share_pair_id: None,
            },
        ),
        (
            "backup_method",
            pb::BackupRequest {
                client_id: "victim".into(),
                backup_method: "PASSWORD\n".into(),
                share: "s".into(),
                backup_share_pair_id: None,
            },
        ),
        (
            "share",
            pb::BackupRequest {
                client_id: "victim".into(),
                backup_method: "PASSWORD-SECP256K1".into(),
                share: String::new(),
                backup_share_pair_id: None,
            },
        ),
        (
            "share",
            pb::BackupRequest {
                client_id: "victim".into(),
                backup_method: "PASSWORD-SECP256K1".into(),
                share: big_share.clone(),
                backup_share_pair_id: None,
            },
        ),
        (
            "share",
            pb::BackupRequest {
                client_id: "victim".into(),
                backup_method: "PASSWORD-SECP256K1".into(),
                share: "SECRET-PAYLOAD\u{1}".into(),
                backup_share_pair_id: None,
            },
        ),
        (
            "backup_share_pair_id",
            pb::BackupRequest {
                client_id: "victim".into(),
                backup_method: "PASSWORD-SECP256K1".into(),
                share: "s".into(),
                backup_share_pair_id: Some("pair id with spaces".into()),
            },
        ),
    ];
    for (field, request) in backups {
        let err = webhook
            .backup(with_secret(request, secret))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(
            err.message().starts_with(&format!("{field}:")),
            "{field}: {}",
            err.message()
        );
        assert!(!err.message().contains("SECRET-PAYLOAD") && !err.message().contains("SSSS"));
    }

    let client_shares: Vec<(&str, pb::StoreClientBackupShareRequest)> = vec![
        (
            "client_id",
            pb::StoreClientBackupShareRequest {
                client_id: "é".into(),
                backup_method: "PASSWORD".into(),
                cipher_text: "c".into(),
            },
        ),
        (
            "backup_method",
            pb::StoreClientBackupShareRequest {
                client_id: "victim".into(),
                backup_method: "PASS/WORD".into(),
                cipher_text: "c".into(),
            },
        ),
        (
            "cipher_text",
            pb::StoreClientBackupShareRequest {
                client_id: "victim".into(),
                backup_method: "PASSWORD".into(),
                cipher_text: String::new(),
            },
        ),
        (
            "cipher_text",
            pb::StoreClientBackupShareRequest {
                client_id: "victim".into(),
                backup_method: "PASSWORD".into(),
                cipher_text: "C".repeat(64 * 1024 + 1),
            },
        ),
        (
            "cipher_text",
            pb::StoreClientBackupShareRequest {
                client_id: "victim".into(),
                backup_method: "PASSWORD".into(),
                cipher_text: "SECRET-CIPHER\u{0}".into(),
            },
        ),
    ];
    for (field, request) in client_shares {
        let err = api
            .store_client_backup_share(with_token(request, &backend))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        assert!(
            err.message().starts_with(&format!("{field}:")),
            "{}",
            err.message()
        );
        assert!(!err.message().contains("SECRET-CIPHER"));
    }

    let updates: Vec<(&str, pb::UpdateBackupSharePairsRequest)> = vec![
        (
            "backup_share_pair_ids",
            pb::UpdateBackupSharePairsRequest {
                client_id: "victim".into(),
                backup_share_pair_ids: vec![],
                status: 2,
            },
        ),
        (
            "backup_share_pair_ids",
            pb::UpdateBackupSharePairsRequest {
                client_id: "victim".into(),
                backup_share_pair_ids: vec!["bad id".into()],
                status: 2,
            },
        ),
        (
            "backup_share_pair_ids",
            pb::UpdateBackupSharePairsRequest {
                client_id: "victim".into(),
                backup_share_pair_ids: (0..65).map(|i| format!("p{i}")).collect(),
                status: 2,
            },
        ),
        (
            "status",
            pb::UpdateBackupSharePairsRequest {
                client_id: "victim".into(),
                backup_share_pair_ids: vec!["p".into()],
                status: 0,
            },
        ),
        (
            "status",
            pb::UpdateBackupSharePairsRequest {
                client_id: "victim".into(),
                backup_share_pair_ids: vec!["p".into()],
                status: 42,
            },
        ),
    ];
    for (field, request) in updates {
        let err = api
            .update_backup_share_pairs(with_token(request, &backend))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        assert!(
            err.message().starts_with(&format!("{field}:")),
            "{}",
            err.message()
        );
    }
    for request in [pb::GetCustodianBackupShareRequest {
        client_id: "".into(),
        backup_method: "X".into(),
    }] {
        let err = api.get_client_backup_share(with_token(
            pb::GetClientBackupShareRequest {
                client_id: request.client_id,
                backup_method: request.backup_method,
            },
            &backend,
        ));
        assert_eq!(err.await.unwrap_err().code(), Code::InvalidArgument);
    }

    // The limit is exact: the largest accepted share is stored byte for byte.
    let max_share = "S".repeat(64 * 1024);
    webhook
        .backup(with_secret(
            pb::BackupRequest {
                client_id: "edge".into(),
                backup_method: "PASSWORD-SECP256K1".into(),
                share: max_share.clone(),
                backup_share_pair_id: None,
            },
            secret,
        ))
        .await
        .unwrap();

    // Nothing was stored for the victim.
    let fetched = webhook
        .fetch(with_secret(
            pb::FetchRequest {
                client_id: "victim".into(),
            },
            secret,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(fetched.backup_shares.is_empty());
    let view = api
        .list_backups(with_token(
            pb::ListBackupsRequest {
                client_id: "victim".into(),
            },
            &backend,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(view.methods.is_empty());
    let status = daemon.status(&sandbox.keys.admin_token).await;
    assert_eq!(
        (
            status.custodian_shares,
            status.client_shares,
            status.backup_share_pairs
        ),
        (1, 0, 0)
    );
}

/// A client holds at most 64 custodian shares and 64 client shares, one per backup method: a
/// record under a 65th method is refused with FAILED_PRECONDITION and changes nothing, while
/// the methods it holds can still be overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_holds_at_most_64_methods_of_each_kind() {
    let sandbox = Sandbox::new(56);
    let daemon = sandbox.start();
    let secret = &sandbox.keys.webhook_secret;
    let backend = create_token(
        &daemon,
        &sandbox.keys.admin_token,
        "backend",
        Role::Backend as i32,
    )
    .await;
    let mut webhook = daemon.webhook().await;
    let mut api = daemon.backup().await;
    let backup = |method: String, share: &str| pb::BackupRequest {
        client_id: "many-methods".into(),
        backup_method: method,
        share: share.into(),
        backup_share_pair_id: None,
    };
    let store = |method: String, cipher_text: &str| pb::StoreClientBackupShareRequest {
        client_id: "many-methods".into(),
        backup_method: method,
        cipher_text: cipher_text.into(),
    };
    for i in 0..64 {
        webhook
            .backup(with_secret(backup(format!("M{i}-SECP256K1"), "s"), secret))
            .await
            .unwrap();
        api.store_client_backup_share(with_token(store(format!("M{i}"), "c"), &backend))
            .await
            .unwrap();
    }

    let err = webhook
        .backup(with_secret(backup("M64-SECP256K1".into(), "s"), secret))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("at most 64"), "{}", err.message());
    let err = api
        .store_client_backup_share(with_token(store("M64".into(), "c"), &backend))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    // Overwriting a method the client holds still works.
    webhook
        .backup(with_secret(backup("M3-SECP256K1".into(), "new"), secret))
        .await
        .unwrap();
    api.store_client_backup_share(with_token(store("M3".into(), "new"), &backend))
        .await
        .unwrap();

    let shares = webhook
        .fetch(with_secret(
            pb::FetchRequest {
                client_id: "many-methods".into(),
            },
            secret,
        ))
        .await
        .unwrap()
        .into_inner()
        .backup_shares;
    assert_eq!(shares.len(), 64, "the refused share was not kept");
    assert_eq!(shares.iter().filter(|s| *s == "new").count(), 1);
    let refused = api
        .get_client_backup_share(with_token(
            pb::GetClientBackupShareRequest {
                client_id: "many-methods".into(),
                backup_method: "M64".into(),
            },
            &backend,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    // Another client is not limited by this one.
    webhook
        .backup(with_secret(
            pb::BackupRequest {
                client_id: "another".into(),
                ..backup("M64-SECP256K1".into(), "s")
            },
            secret,
        ))
        .await
        .unwrap();
}
