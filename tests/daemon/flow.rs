//! Portal's flow end to end: custodian shares for every method and curve, client shares,
//! fetches, replacement and the share-pair status model.

use crate::harness::{Daemon, Sandbox, fetch_shares, with_secret, with_token};
use sharevault::pb::backup_service_client::BackupServiceClient;
use sharevault::pb::webhook_service_client::WebhookServiceClient;
use sharevault::pb::{self, BackupSharePairStatus};
use tonic::Code;
use tonic::transport::Channel;

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

/// One client's way through Portal's flow on one daemon: the webhook as Portal calls it, and
/// the backup service as the company's backend (and an eject tool) call it.
struct Flow {
    /// Runs while the flow lasts; dropped (killed) before the sandbox's files go.
    _daemon: Daemon,
    webhook: WebhookServiceClient<Channel>,
    api: BackupServiceClient<Channel>,
    backend: String,
    eject: String,
    client: &'static str,
    sandbox: Sandbox,
}

impl Flow {
    async fn start() -> Self {
        Self::start_in(Sandbox::new(1)).await
    }

    async fn start_in(sandbox: Sandbox) -> Self {
        let daemon = sandbox.start();
        let (backend, eject) = sandbox.backend_and_eject_tokens(&daemon).await;
        Self {
            webhook: daemon.webhook().await,
            api: daemon.backup().await,
            _daemon: daemon,
            backend,
            eject,
            client: "clxportal0001",
            sandbox,
        }
    }

    /// Portal's `Backup` call; it must succeed.
    async fn backup(
        &mut self,
        client: &str,
        method: &str,
        share: &str,
        pair: Option<&str>,
    ) -> pb::BackupResponse {
        self.webhook
            .backup(with_secret(
                pb::BackupRequest {
                    client_id: client.into(),
                    backup_method: method.into(),
                    share: share.into(),
                    backup_share_pair_id: pair.map(str::to_owned),
                },
                &self.sandbox.keys.webhook_secret,
            ))
            .await
            .unwrap()
            .into_inner()
    }

    /// Portal's `Fetch` call for `client`.
    async fn fetch(&mut self, client: &str) -> Vec<String> {
        let secret = &self.sandbox.keys.webhook_secret;
        fetch_shares(&mut self.webhook, secret, client.into()).await
    }

    /// The ids of the flow's pairs of `method`, one per curve, at `version`.
    fn pair_ids(&self, method: &str, version: u32) -> Vec<String> {
        CURVES
            .iter()
            .map(|c| pair_id(self.client, method, c, version))
            .collect()
    }

    async fn pairs(&mut self) -> Vec<pb::BackupSharePair> {
        self.api
            .list_backup_share_pairs(with_token(
                pb::ListBackupSharePairsRequest {
                    client_id: self.client.into(),
                },
                &self.backend,
            ))
            .await
            .unwrap()
            .into_inner()
            .backup_share_pairs
    }

    async fn update_pairs(
        &mut self,
        ids: Vec<String>,
        status: BackupSharePairStatus,
    ) -> Result<tonic::Response<pb::UpdateBackupSharePairsResponse>, tonic::Status> {
        self.api
            .update_backup_share_pairs(with_token(
                pb::UpdateBackupSharePairsRequest {
                    client_id: self.client.into(),
                    backup_share_pair_ids: ids,
                    status: status as i32,
                },
                &self.backend,
            ))
            .await
    }

    async fn client_share(
        &mut self,
        method: &str,
    ) -> Result<pb::GetClientBackupShareResponse, tonic::Status> {
        self.api
            .get_client_backup_share(with_token(
                pb::GetClientBackupShareRequest {
                    client_id: self.client.into(),
                    backup_method: method.into(),
                    ..Default::default()
                },
                &self.backend,
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn custodian_share(
        &mut self,
        method: &str,
        pair: &str,
        token: &str,
    ) -> Result<pb::GetCustodianBackupShareResponse, tonic::Status> {
        self.api
            .get_custodian_backup_share(with_token(
                pb::GetCustodianBackupShareRequest {
                    client_id: self.client.into(),
                    backup_method: method.into(),
                    backup_share_pair_id: pair.into(),
                },
                token,
            ))
            .await
            .map(tonic::Response::into_inner)
    }
}

/// Portal backs up every method and curve and checks each write at once; the recovery fetch
/// returns every share byte for byte, and an unknown client has none.
async fn backs_up_every_method_and_curve(flow: &mut Flow) {
    let client = flow.client;
    let mut expected = Vec::new();
    for method in METHODS {
        for curve in CURVES {
            let share = portal_share(client, method, curve, 1);
            let reply = flow
                .backup(client, &format!("{method}-{curve}"), &share, None)
                .await;
            assert_eq!(
                reply.backup_share_pair_id,
                pair_id(client, method, curve, 1)
            );
            let fetched = flow.fetch(client).await;
            assert!(
                fetched.contains(&share),
                "immediate fetch must see the write"
            );
            expected.push(share);
        }
    }
    let mut fetched = flow.fetch(client).await;
    fetched.sort();
    expected.sort();
    assert_eq!(
        fetched, expected,
        "recovery fetch returns every share byte for byte"
    );

    // An unknown client has no shares.
    assert!(flow.fetch("nobody").await.is_empty());
}

/// Every pair starts at STORED_CUSTODIAN_BACKUP_SHARE; completing one before its client share
/// is stored is refused; storing each method's client share completes that method's pairs.
async fn client_shares_complete_the_pairs(flow: &mut Flow) {
    let pairs = flow.pairs().await;
    assert_eq!(pairs.len(), 8);
    assert!(pairs.iter().all(|p| p.internal_status
        == BackupSharePairStatus::StoredCustodianBackupShare as i32
        && p.status == "incomplete"));

    // The SDK saved the keys of PASSWORD's pairs.
    let password_pairs = flow.pair_ids("PASSWORD", 1);
    flow.update_pairs(
        password_pairs.clone(),
        BackupSharePairStatus::StoredClientBackupShareKey,
    )
    .await
    .unwrap();
    // Completing before the client share is stored is refused, and changes nothing.
    let early = flow
        .update_pairs(
            password_pairs,
            BackupSharePairStatus::StoredClientBackupShare,
        )
        .await
        .unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition);

    // The company stores the client share of every method; each completes its pairs.
    for method in METHODS {
        let completed = flow
            .api
            .store_client_backup_share(with_token(
                pb::StoreClientBackupShareRequest {
                    client_id: flow.client.into(),
                    backup_method: method.into(),
                    cipher_text: format!("cipher-{method}-v1"),
                },
                &flow.backend,
            ))
            .await
            .unwrap()
            .into_inner()
            .completed_backup_share_pair_ids;
        let mut want = flow.pair_ids(method, 1);
        want.sort();
        assert_eq!(completed, want);
    }
    let pairs = flow.pairs().await;
    assert!(pairs.iter().all(|p| p.status == "completed"), "{pairs:?}");
}

/// A completed pair cannot move back, an unknown pair is not found, and the client share
/// reads back exactly.
async fn completed_pairs_stay_completed(flow: &mut Flow) {
    let back = flow
        .update_pairs(
            flow.pair_ids("PASSWORD", 1),
            BackupSharePairStatus::StoredCustodianBackupShare,
        )
        .await
        .unwrap_err();
    assert_eq!(back.code(), Code::FailedPrecondition);
    let unknown = flow
        .update_pairs(
            vec!["no-such-pair".into()],
            BackupSharePairStatus::StoredClientBackupShareKey,
        )
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    // The client share reads back exactly.
    let got = flow.client_share("PASSKEY").await.unwrap();
    assert_eq!(got.cipher_text, "cipher-PASSKEY-v1");
    assert!(got.created_at.is_some());
}

/// A new PASSWORD-ED25519 share replaces that key only and starts a new pair. Until that pair
/// completes, the fetch also answers the replaced share, whose pair was completed: Portal
/// picks the one whose pair id the device knows. Answers the new share.
async fn a_new_share_replaces_one_key_and_restarts_its_pair(flow: &mut Flow) -> String {
    let client = flow.client;
    let replacement = portal_share(client, "PASSWORD", "ED25519", 2);
    flow.backup(client, "PASSWORD-ED25519", &replacement, None)
        .await;
    let fetched = flow.fetch(client).await;
    assert_eq!(
        fetched.len(),
        9,
        "eight current shares and the last completed one"
    );
    assert!(fetched.contains(&replacement));
    assert!(fetched.contains(&portal_share(client, "PASSWORD", "ED25519", 1)));
    assert!(fetched.contains(&portal_share(client, "PASSWORD", "SECP256K1", 1)));

    let view = flow
        .api
        .list_backups(with_token(
            pb::ListBackupsRequest {
                client_id: client.into(),
            },
            &flow.backend,
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

    // The new pair is listed beside the old one, which stays completed with its version.
    let pairs = flow.pairs().await;
    let status = |id: String| pairs.iter().find(|p| p.id == id).map(|p| p.internal_status);
    assert_eq!(
        status(pair_id(client, "PASSWORD", "ED25519", 2)),
        Some(BackupSharePairStatus::StoredCustodianBackupShare as i32)
    );
    assert_eq!(
        status(pair_id(client, "PASSWORD", "ED25519", 1)),
        Some(BackupSharePairStatus::StoredClientBackupShare as i32)
    );
    replacement
}

/// Eject: only the eject role reads a custodian share. Without a pair id it reads the share
/// a recovery would use: the latest when its pair is completed, else the last completed one;
/// with a pair id, that pair's share, current or kept.
async fn only_the_eject_role_reads_a_custodian_share(flow: &mut Flow, latest: &str) {
    let client = flow.client;
    let eject = flow.eject.clone();
    let ejected = flow
        .custodian_share("PASSWORD-ED25519", "", &eject)
        .await
        .unwrap();
    assert_eq!(
        ejected.share,
        portal_share(client, "PASSWORD", "ED25519", 1)
    );
    assert_eq!(
        ejected.backup_share_pair_id,
        pair_id(client, "PASSWORD", "ED25519", 1)
    );
    let newest = pair_id(client, "PASSWORD", "ED25519", 2);
    let ejected = flow
        .custodian_share("PASSWORD-ED25519", &newest, &eject)
        .await
        .unwrap();
    assert_eq!(
        (
            ejected.share.as_str(),
            ejected.backup_share_pair_id.as_str()
        ),
        (latest, newest.as_str())
    );
    let unknown = flow
        .custodian_share("PASSWORD-ED25519", "no-such-pair", &eject)
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let backend = flow.backend.clone();
    let denied = flow
        .custodian_share("PASSWORD-ED25519", "", &backend)
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
}

/// The backend reads the cipherText of a given pair over gRPC, current or kept, and lists the
/// client shares with their pairs; a malformed or unknown pair id is refused by name.
async fn the_backend_reads_a_pairs_cipher_text(flow: &mut Flow) {
    let client = flow.client;
    let by_pair = async |flow: &mut Flow, pair: &str| {
        flow.api
            .get_client_backup_share(with_token(
                pb::GetClientBackupShareRequest {
                    client_id: client.into(),
                    backup_method: String::new(),
                    backup_share_pair_id: pair.into(),
                },
                &flow.backend,
            ))
            .await
            .map(tonic::Response::into_inner)
    };
    let got = by_pair(flow, &pair_id(client, "GDRIVE", "SECP256K1", 1))
        .await
        .unwrap();
    assert_eq!(
        (got.cipher_text.as_str(), got.backup_method.as_str()),
        ("cipher-GDRIVE-v1", "GDRIVE")
    );
    let mut covered = got.backup_share_pair_ids.clone();
    covered.sort();
    let mut want = flow.pair_ids("GDRIVE", 1);
    want.sort();
    assert_eq!(covered, want);
    let unknown = by_pair(flow, "no-such-pair").await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let bad = by_pair(flow, "bad pair").await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(
        bad.message().starts_with("backup_share_pair_id:"),
        "{}",
        bad.message()
    );
    let listed = flow
        .api
        .list_client_backup_shares(with_token(
            pb::ListClientBackupSharesRequest {
                client_id: client.into(),
            },
            &flow.backend,
        ))
        .await
        .unwrap()
        .into_inner()
        .client_backup_shares;
    assert_eq!(listed.len(), METHODS.len(), "{listed:?}");
    assert!(
        listed
            .iter()
            .all(|s| s.current && s.backup_share_pair_ids.len() == 2)
    );
}

/// Deleting a client share reopens its method's pairs.
async fn deleting_a_client_share_reopens_its_pairs(flow: &mut Flow) {
    let deleted = flow
        .api
        .delete_client_backup_share(with_token(
            pb::DeleteClientBackupShareRequest {
                client_id: flow.client.into(),
                backup_method: "GDRIVE".into(),
            },
            &flow.backend,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.deleted);
    let missing = flow.client_share("GDRIVE").await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let pairs = flow.pairs().await;
    for p in pairs.iter().filter(|p| p.backup_method == "GDRIVE") {
        assert_eq!(
            p.internal_status,
            BackupSharePairStatus::StoredClientBackupShareKey as i32
        );
    }
}

/// Erasing the client leaves nothing of it, and other clients untouched.
async fn erasing_the_client_leaves_nothing_and_others_untouched(flow: &mut Flow) {
    flow.backup(
        "other-client",
        "PASSWORD-SECP256K1",
        "other share",
        Some("other-pair"),
    )
    .await;
    let erased = flow
        .api
        .delete_client(with_token(
            pb::DeleteClientRequest {
                client_id: flow.client.into(),
            },
            &flow.backend,
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
        (8, 3, 9),
        "the pair of the replaced PASSWORD-ED25519 share went with its version"
    );
    assert!(flow.fetch(flow.client).await.is_empty());
    assert_eq!(
        flow.fetch("other-client").await,
        vec!["other share".to_string()]
    );
}

/// Each step starts from the state the one before it left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_flow_stores_fetches_replaces_and_completes_pairs() {
    let mut flow = Flow::start().await;
    backs_up_every_method_and_curve(&mut flow).await;
    client_shares_complete_the_pairs(&mut flow).await;
    completed_pairs_stay_completed(&mut flow).await;
    let latest = a_new_share_replaces_one_key_and_restarts_its_pair(&mut flow).await;
    only_the_eject_role_reads_a_custodian_share(&mut flow, &latest).await;
    the_backend_reads_a_pairs_cipher_text(&mut flow).await;
    deleting_a_client_share_reopens_its_pairs(&mut flow).await;
    erasing_the_client_leaves_nothing_and_others_untouched(&mut flow).await;
}

/// The same flow with the vault in PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_flow_on_postgres_stores_fetches_replaces_and_completes_pairs() {
    let mut flow = Flow::start_in(Sandbox::on_shared_postgres(1)).await;
    backs_up_every_method_and_curve(&mut flow).await;
    client_shares_complete_the_pairs(&mut flow).await;
    completed_pairs_stay_completed(&mut flow).await;
    let latest = a_new_share_replaces_one_key_and_restarts_its_pair(&mut flow).await;
    only_the_eject_role_reads_a_custodian_share(&mut flow, &latest).await;
    the_backend_reads_a_pairs_cipher_text(&mut flow).await;
    deleting_a_client_share_reopens_its_pairs(&mut flow).await;
    erasing_the_client_leaves_nothing_and_others_untouched(&mut flow).await;
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
    let backend = sandbox.backend_token(&daemon).await;
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
                ..Default::default()
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
