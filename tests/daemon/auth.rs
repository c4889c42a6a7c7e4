//! Every credential failure: missing, wrong, malformed, revoked, and roles that are not enough.

use crate::harness::{Daemon, Sandbox, create_token, with_secret, with_token};
use sharevault::pb::{self, Role};
use tonic::Code;

fn backup_request(share: &str) -> pb::BackupRequest {
    pb::BackupRequest {
        client_id: "auth-client".into(),
        backup_method: "PASSWORD-SECP256K1".into(),
        share: share.into(),
        backup_share_pair_id: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_secret_is_required_and_checked() {
    let sandbox = Sandbox::new(3);
    let daemon = sandbox.start();
    let mut webhook = daemon.webhook().await;

    let missing = webhook
        .backup(tonic::Request::new(backup_request("s1")))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    let wrong = webhook
        .backup(with_secret(
            backup_request("s2"),
            "not-the-secret-0123456789",
        ))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    let prefix = &sandbox.keys.webhook_secret[..sandbox.keys.webhook_secret.len() - 1];
    let truncated = webhook
        .fetch(with_secret(
            pb::FetchRequest {
                client_id: "auth-client".into(),
            },
            prefix,
        ))
        .await
        .unwrap_err();
    assert_eq!(truncated.code(), Code::Unauthenticated);
    // A bearer token is not a webhook secret.
    let admin = webhook
        .fetch(with_token(
            pb::FetchRequest {
                client_id: "auth-client".into(),
            },
            &sandbox.keys.admin_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(admin.code(), Code::Unauthenticated);

    // Nothing was stored by the refused calls.
    let fetched = webhook
        .fetch(with_secret(
            pb::FetchRequest {
                client_id: "auth-client".into(),
            },
            &sandbox.keys.webhook_secret,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(fetched.backup_shares.is_empty());
}

fn list(client: &str) -> pb::ListBackupsRequest {
    pb::ListBackupsRequest {
        client_id: client.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_malformed_or_unknown_token_is_unauthenticated() {
    let sandbox = Sandbox::new(10);
    let daemon = sandbox.start();
    let mut api = daemon.backup().await;

    // No token, a malformed header, an unknown token.
    let none = api
        .list_backups(tonic::Request::new(list("c")))
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated);
    let mut basic = tonic::Request::new(list("c"));
    basic
        .metadata_mut()
        .insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
    assert_eq!(
        api.list_backups(basic).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let unknown = api
        .list_backups(with_token(
            list("c"),
            "svt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unauthenticated);

    // The webhook secret is not a token.
    let secret = api
        .list_backups(with_token(list("c"), &sandbox.keys.webhook_secret))
        .await
        .unwrap_err();
    assert_eq!(secret.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_roles_and_revocation() {
    let sandbox = Sandbox::new(4);
    let daemon = sandbox.start();
    let admin_token = &sandbox.keys.admin_token;
    let mut api = daemon.backup().await;
    let mut admin = daemon.admin().await;

    let backend = each_role_reaches_only_its_services(&daemon, admin_token).await;
    tokens_are_listed_by_an_admin_role_and_created_only_valid(&daemon, admin_token).await;

    // A revoked token stops working at once.
    admin
        .revoke_token(with_token(
            pb::RevokeTokenRequest {
                name: "svc-backend".into(),
            },
            admin_token,
        ))
        .await
        .unwrap();
    let revoked = api
        .list_backups(with_token(list("c"), &backend))
        .await
        .unwrap_err();
    assert_eq!(revoked.code(), Code::Unauthenticated);
    let again = admin
        .revoke_token(with_token(
            pb::RevokeTokenRequest {
                name: "svc-backend".into(),
            },
            admin_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);

    // Status reports the counts.
    let status = admin
        .get_status(with_token(pb::GetStatusRequest {}, admin_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.tokens, 1);
    assert_eq!(status.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(status.master_key_id.len(), 16);
}

/// The admin token administers but does not read backups; a backend token ("svc-backend",
/// answered) reads backups but neither administers nor ejects.
async fn each_role_reaches_only_its_services(daemon: &Daemon, admin_token: &str) -> String {
    let mut api = daemon.backup().await;
    let mut admin = daemon.admin().await;
    let admin_on_backups = api
        .list_backups(with_token(list("c"), admin_token))
        .await
        .unwrap_err();
    assert_eq!(admin_on_backups.code(), Code::PermissionDenied);

    let backend = create_token(daemon, admin_token, "svc-backend", Role::Backend as i32).await;
    api.list_backups(with_token(list("c"), &backend))
        .await
        .unwrap();
    let backend_on_admin = admin
        .list_tokens(with_token(pb::ListTokensRequest {}, &backend))
        .await
        .unwrap_err();
    assert_eq!(backend_on_admin.code(), Code::PermissionDenied);
    let backend_eject = api
        .get_custodian_backup_share(with_token(
            pb::GetCustodianBackupShareRequest {
                client_id: "c".into(),
                backup_method: "PASSWORD-SECP256K1".into(),
                ..Default::default()
            },
            &backend,
        ))
        .await
        .unwrap_err();
    assert_eq!(backend_eject.code(), Code::PermissionDenied);
    backend
}

/// An admin-role token ("ops") lists the tokens; duplicate names and unspecified roles are
/// refused.
async fn tokens_are_listed_by_an_admin_role_and_created_only_valid(
    daemon: &Daemon,
    admin_token: &str,
) {
    let mut admin = daemon.admin().await;
    let ops = create_token(daemon, admin_token, "ops", Role::Admin as i32).await;
    let tokens = admin
        .list_tokens(with_token(pb::ListTokensRequest {}, &ops))
        .await
        .unwrap()
        .into_inner()
        .tokens;
    let mut names: Vec<_> = tokens.iter().map(|t| t.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["ops", "svc-backend"]);

    let dup = admin
        .create_token(with_token(
            pb::CreateTokenRequest {
                name: "ops".into(),
                role: Role::Backend as i32,
            },
            admin_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    let no_role = admin
        .create_token(with_token(
            pb::CreateTokenRequest {
                name: "x".into(),
                role: 0,
            },
            admin_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(no_role.code(), Code::InvalidArgument);
    assert!(no_role.message().starts_with("role:"));
}
