//! Bad input gets INVALID_ARGUMENT naming the field, never echoes the value, and changes
//! nothing.

use crate::harness::{Sandbox, with_secret, with_token};
use sharevault::pb;
use sharevault::pb::backup_service_client::BackupServiceClient;
use sharevault::pb::webhook_service_client::WebhookServiceClient;
use tonic::Code;
use tonic::transport::Channel;

fn backup(client: &str, method: &str, share: &str, pair: Option<&str>) -> pb::BackupRequest {
    pb::BackupRequest {
        client_id: client.into(),
        backup_method: method.into(),
        share: share.into(),
        backup_share_pair_id: pair.map(str::to_owned),
    }
}

/// Webhook backups refused, each with the field its message names.
fn bad_backups() -> Vec<(&'static str, pb::BackupRequest)> {
    let big_share = "S".repeat(64 * 1024 + 1);
    let (method, long_client) = ("PASSWORD-SECP256K1", "c".repeat(129));
    vec![
        ("client_id", backup("", method, "s", None)),
        ("client_id", backup("has space", method, "s", None)),
        ("client_id", backup(&long_client, method, "s", None)),
        ("client_id", backup("bad/../path", "PASSWORD", "s", None)),
        ("backup_method", backup("victim", "PASS\tWORD", "s", None)),
        (
            "backup_method",
            backup("victim", &"M".repeat(65), "s", None),
        ),
        ("backup_method", backup("victim", "PASSWORD\n", "s", None)),
        ("share", backup("victim", method, "", None)),
        ("share", backup("victim", method, &big_share, None)),
        (
            "share",
            backup("victim", method, "SECRET-PAYLOAD\u{1}", None),
        ),
        (
            "backup_share_pair_id",
            backup("victim", method, "s", Some("pair id with spaces")),
        ),
    ]
}

fn store(client: &str, method: &str, cipher_text: &str) -> pb::StoreClientBackupShareRequest {
    pb::StoreClientBackupShareRequest {
        client_id: client.into(),
        backup_method: method.into(),
        cipher_text: cipher_text.into(),
    }
}

/// Client shares refused, each with the field its message names.
fn bad_client_shares() -> Vec<(&'static str, pb::StoreClientBackupShareRequest)> {
    vec![
        ("client_id", store("é", "PASSWORD", "c")),
        ("backup_method", store("victim", "PASS\u{1b}WORD", "c")),
        ("backup_method", store("victim", &"M".repeat(65), "c")),
        ("cipher_text", store("victim", "PASSWORD", "")),
        (
            "cipher_text",
            store("victim", "PASSWORD", &"C".repeat(64 * 1024 + 1)),
        ),
        (
            "cipher_text",
            store("victim", "PASSWORD", "SECRET-CIPHER\u{0}"),
        ),
    ]
}

fn update(ids: Vec<String>, status: i32) -> pb::UpdateBackupSharePairsRequest {
    pb::UpdateBackupSharePairsRequest {
        client_id: "victim".into(),
        backup_share_pair_ids: ids,
        status,
    }
}

/// Pair updates refused, each with the field its message names.
fn bad_pair_updates() -> Vec<(&'static str, pb::UpdateBackupSharePairsRequest)> {
    vec![
        ("backup_share_pair_ids", update(vec![], 2)),
        ("backup_share_pair_ids", update(vec!["bad id".into()], 2)),
        (
            "backup_share_pair_ids",
            update((0..65).map(|i| format!("p{i}")).collect(), 2),
        ),
        ("status", update(vec!["p".into()], 0)),
        ("status", update(vec!["p".into()], 42)),
    ]
}

async fn refuses_bad_backups(webhook: &mut WebhookServiceClient<Channel>, secret: &str) {
    for (field, request) in bad_backups() {
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
}

async fn refuses_bad_backend_calls(api: &mut BackupServiceClient<Channel>, backend: &str) {
    for (field, request) in bad_client_shares() {
        let err = api
            .store_client_backup_share(with_token(request, backend))
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
    for (field, request) in bad_pair_updates() {
        let err = api
            .update_backup_share_pairs(with_token(request, backend))
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
        ..Default::default()
    }] {
        let err = api.get_client_backup_share(with_token(
            pb::GetClientBackupShareRequest {
                client_id: request.client_id,
                backup_method: request.backup_method,
                ..Default::default()
            },
            backend,
        ));
        assert_eq!(err.await.unwrap_err().code(), Code::InvalidArgument);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_by_field_and_changes_nothing() {
    let sandbox = Sandbox::new(5);
    let daemon = sandbox.start();
    let mut webhook = daemon.webhook().await;
    let secret = &sandbox.keys.webhook_secret;
    refuses_bad_backups(&mut webhook, secret).await;
    let backend = sandbox.backend_token(&daemon).await;
    let mut api = daemon.backup().await;
    refuses_bad_backend_calls(&mut api, &backend).await;

    // The limit is exact: the largest accepted share is stored byte for byte.
    let max_share = "S".repeat(64 * 1024);
    webhook
        .backup(with_secret(
            backup("edge", "PASSWORD-SECP256K1", &max_share, None),
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
    let backend = sandbox.backend_token(&daemon).await;
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
        .backup_shares
        .clone();
    assert_eq!(shares.len(), 64, "the refused share was not kept");
    assert_eq!(shares.iter().filter(|s| *s == "new").count(), 1);
    let refused = api
        .get_client_backup_share(with_token(
            pb::GetClientBackupShareRequest {
                client_id: "many-methods".into(),
                backup_method: "M64".into(),
                ..Default::default()
            },
            &backend,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    // Another client is not limited by this one.
    let mut another = backup("M64-SECP256K1".into(), "s");
    another.client_id = "another".into();
    webhook.backup(with_secret(another, secret)).await.unwrap();
}
