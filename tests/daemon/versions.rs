//! Recoverability: a new backup never destroys the last completed one, retries change
//! nothing, one cipherText per curve, and a damaged record does not block the others. Portal's
//! calls go to the webhook over HTTP; the company's backend uses the JSON API; the operator
//! uses the AdminService.

use crate::harness::{Daemon, Sandbox, with_token};
use crate::http_client::{Http, Reply};
use serde_json::{Value, json};
use sharevault::pb;
use tokio_stream::StreamExt;

/// A daemon as Portal, a backend and an operator reach it.
struct Vault {
    hook: Http,
    api: Http,
    secret: String,
    backend: String,
    admin: String,
    daemon: Daemon,
    sandbox: Sandbox,
}

impl Vault {
    async fn start(seed: u8) -> Self {
        let sandbox = Sandbox::new(seed);
        let daemon = sandbox.start();
        let backend = format!("Bearer {}", sandbox.backend_token(&daemon).await);
        Self::on(sandbox, daemon, backend)
    }

    /// The same on a restarted daemon.
    fn on(sandbox: Sandbox, daemon: Daemon, backend: String) -> Self {
        Self {
            hook: Http::plain(daemon.webhook_addr.as_deref().unwrap()),
            api: Http::plain(&daemon.endpoint),
            secret: sandbox.keys.webhook_secret.clone(),
            admin: sandbox.keys.admin_token.clone(),
            backend,
            daemon,
            sandbox,
        }
    }

    /// Portal's `/backup`; answers the reply.
    async fn backup(&self, client: &str, method: &str, share: &str) -> Reply {
        self.hook
            .post_json(
                "/backup",
                &[("x-webhook-secret", self.secret.as_str())],
                &json!({"clientId": client, "backupMethod": method, "share": share}),
            )
            .await
    }

    /// Portal's `/backup/fetch`: the shares answered, in order.
    async fn fetch(&self, client: &str) -> Vec<String> {
        let reply = self.fetch_reply(client).await;
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        serde_json::from_value(reply.json()["backupShares"].clone()).unwrap()
    }

    async fn fetch_reply(&self, client: &str) -> Reply {
        self.hook
            .post_json(
                "/backup/fetch",
                &[("x-webhook-secret", self.secret.as_str())],
                &json!({"clientId": client}),
            )
            .await
    }

    /// The backend stores a cipherText.
    async fn store_cipher_text(&self, client: &str, method: &str, cipher_text: &str) -> Reply {
        self.api
            .send(
                "PUT",
                &format!("/v1/clients/{client}/client-backup-shares/{method}"),
                &[
                    ("authorization", self.backend.as_str()),
                    ("content-type", "application/json"),
                ],
                Some(json!({"cipherText": cipher_text}).to_string().as_bytes()),
            )
            .await
    }

    async fn cipher_text(&self, client: &str, method: &str) -> Reply {
        self.api
            .send(
                "GET",
                &format!("/v1/clients/{client}/client-backup-shares/{method}"),
                &[("authorization", self.backend.as_str())],
                None,
            )
            .await
    }

    /// The backend's PATCH of pair statuses.
    async fn patch_pairs(&self, client: &str, ids: &[&str], status: &str) -> Reply {
        self.api
            .send(
                "PATCH",
                &format!("/v1/clients/{client}/backup-share-pairs"),
                &[
                    ("authorization", self.backend.as_str()),
                    ("content-type", "application/json"),
                ],
                Some(
                    json!({"backupSharePairIds": ids, "status": status})
                        .to_string()
                        .as_bytes(),
                ),
            )
            .await
    }

    /// Pair id -> Portal's status name.
    async fn pair_statuses(&self, client: &str) -> Vec<(String, String)> {
        let reply = self
            .api
            .send(
                "GET",
                &format!("/v1/clients/{client}/backup-share-pairs"),
                &[("authorization", self.backend.as_str())],
                None,
            )
            .await;
        assert_eq!(reply.status, 200);
        let body = reply.json();
        let pairs = body["backupSharePairs"].as_array().unwrap().clone();
        pairs
            .iter()
            .map(|p| {
                (
                    p["id"].as_str().unwrap().to_owned(),
                    p["internalStatus"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    async fn status_of(&self, client: &str, pair: &str) -> String {
        self.pair_statuses(client)
            .await
            .into_iter()
            .find(|(id, _)| id == pair)
            .map(|(_, s)| s)
            .unwrap_or_else(|| panic!("pair {pair} is listed"))
    }

    async fn list_backups(&self, client: &str) -> Value {
        let reply = self
            .api
            .send(
                "GET",
                &format!("/v1/clients/{client}/backups"),
                &[("authorization", self.backend.as_str())],
                None,
            )
            .await;
        assert_eq!(reply.status, 200);
        reply.json()
    }

    async fn versions(&self, client: &str) -> Vec<pb::ShareVersion> {
        self.daemon
            .admin()
            .await
            .list_versions(with_token(
                pb::ListVersionsRequest {
                    client_id: client.into(),
                },
                &self.admin,
            ))
            .await
            .unwrap()
            .into_inner()
            .versions
    }

    async fn restore_version(
        &self,
        client: &str,
        kind: &str,
        method: &str,
        version: u64,
    ) -> Result<(), tonic::Status> {
        self.daemon
            .admin()
            .await
            .restore_version(with_token(
                pb::RestoreVersionRequest {
                    client_id: client.into(),
                    kind: kind.into(),
                    backup_method: method.into(),
                    version,
                },
                &self.admin,
            ))
            .await
            .map(|_| ())
    }

    /// The outcomes of the audit events of `action` for `client`, in order.
    async fn audit_outcomes(&self, client: &str, action: &str) -> Vec<String> {
        let mut stream = self
            .daemon
            .admin()
            .await
            .list_audit_events(with_token(
                pb::ListAuditEventsRequest {
                    client_id: client.into(),
                    ..Default::default()
                },
                &self.admin,
            ))
            .await
            .unwrap()
            .into_inner();
        let mut out = Vec::new();
        while let Some(event) = stream.next().await {
            let event = event.unwrap();
            if event.action == action {
                out.push(event.outcome);
            }
        }
        out
    }
}

fn share(backup: &str, pair: &str) -> String {
    format!("{{\"share\":\"{backup}\", \"backupSharePairId\":\"{pair}\",\n \"z\":1}}")
}

const COMPLETED: &str = "STORED_CLIENT_BACKUP_SHARE";
const CUSTODIAN_STORED: &str = "STORED_CUSTODIAN_BACKUP_SHARE";
const KEY: &str = "PASSWORD-SECP256K1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_backup_never_destroys_the_last_completed_one() {
    let vault = Vault::start(80).await;
    let (a, b) = (share("A", "pair-a"), share("B", "pair-b"));

    // Backup A completes.
    assert_eq!(vault.backup("u", KEY, &a).await.status, 200);
    assert_eq!(
        vault
            .store_cipher_text("u", "PASSWORD", "ct-A")
            .await
            .status,
        200
    );
    assert_eq!(vault.status_of("u", "pair-a").await, COMPLETED);
    assert_eq!(vault.fetch("u").await, vec![a.clone()]);

    // Backup B starts but its cipherText never arrives: the fetch answers both, so the user
    // still recovers with A's cipherText.
    assert_eq!(vault.backup("u", KEY, &b).await.status, 200);
    assert_eq!(vault.fetch("u").await, vec![b.clone(), a.clone()]);
    assert_eq!(vault.status_of("u", "pair-b").await, CUSTODIAN_STORED);
    assert_eq!(vault.status_of("u", "pair-a").await, COMPLETED);

    // A's cipherText cannot complete B's pair: it belongs to the earlier backup.
    let stale = vault.patch_pairs("u", &["pair-b"], COMPLETED).await;
    assert_eq!(stale.status, 409);
    assert!(
        stale.error_message().contains("earlier backup"),
        "{}",
        stale.error_message()
    );
    assert_eq!(vault.status_of("u", "pair-b").await, CUSTODIAN_STORED);

    // B's own cipherText completes B here. Portal completes B only when the app tells it so,
    // which can fail after this store: the fetch still answers A after B, and the backend
    // reads each pair's own cipherText, current or kept.
    let stored = vault.store_cipher_text("u", "PASSWORD", "ct-B").await;
    assert_eq!(stored.status, 200);
    assert_eq!(vault.status_of("u", "pair-b").await, COMPLETED);
    assert_eq!(vault.fetch("u").await, vec![b.clone(), a.clone()]);
    for (pair, cipher_text) in [("pair-a", "ct-A"), ("pair-b", "ct-B")] {
        let got = vault
            .api
            .send(
                "GET",
                &format!("/v1/clients/u/backup-share-pairs/{pair}/client-backup-share"),
                &[("authorization", vault.backend.as_str())],
                None,
            )
            .await;
        assert_eq!(got.status, 200, "{pair}");
        let body = got.json();
        assert_eq!(body["cipherText"], cipher_text, "{pair}");
        assert_eq!(body["backupSharePairIds"], serde_json::json!([pair]));
    }
    let listed = vault
        .api
        .send(
            "GET",
            "/v1/clients/u/client-backup-shares",
            &[("authorization", vault.backend.as_str())],
            None,
        )
        .await;
    assert_eq!(listed.status, 200);
    let listed = listed.json();
    let shares = listed["clientBackupShares"].as_array().unwrap();
    assert_eq!(shares.len(), 2, "{listed}");
    assert_eq!(
        (
            shares[0]["current"].clone(),
            shares[0]["backupSharePairIds"].clone()
        ),
        (Value::Bool(true), serde_json::json!(["pair-b"]))
    );
    assert_eq!(
        (
            shares[1]["current"].clone(),
            shares[1]["backupSharePairIds"].clone()
        ),
        (Value::Bool(false), serde_json::json!(["pair-a"]))
    );
    assert!(
        !listed.to_string().contains("ct-"),
        "no cipherText in a list"
    );

    let versions = vault.versions("u").await;
    let row = |kind: &str, version: u64| {
        versions
            .iter()
            .find(|v| v.kind == kind && v.version == version)
            .unwrap_or_else(|| panic!("{kind} version {version} in {versions:?}"))
    };
    assert!(row("custodian", 0).current);
    assert_eq!(row("custodian", 0).backup_share_pair_id, "pair-b");
    let kept = row("custodian", 1);
    assert!(!kept.current && kept.superseded_at.is_some());
    assert_eq!(
        (
            kept.backup_method.as_str(),
            kept.backup_share_pair_id.as_str()
        ),
        (KEY, "pair-a")
    );
    assert_eq!(
        kept.pair_status,
        pb::BackupSharePairStatus::StoredClientBackupShare as i32
    );
    assert_eq!(row("client", 1).backup_method, "PASSWORD");
    assert_eq!(versions.len(), 4, "{versions:?}");
    // The backend sees the same list over the JSON API, without share material.
    let listed = vault
        .api
        .send(
            "GET",
            "/v1/clients/u/versions",
            &[("authorization", vault.backend.as_str())],
            None,
        )
        .await;
    assert_eq!(listed.status, 200);
    let body = listed.json();
    let kept: Vec<&Value> = body["versions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["current"] == false)
        .collect();
    assert_eq!(kept.len(), 2, "{body}");
    assert!(kept.iter().any(|v| v["backupSharePairId"] == "pair-a"
        && v["pairStatus"] == COMPLETED
        && v["supersededAt"].is_string()));
    assert!(!String::from_utf8_lossy(&listed.body).contains("ct-A"));

    // The operator restores A and its cipherText: the fetch answers A first, then B, kept
    // and completed.
    vault
        .restore_version("u", "custodian", KEY, 1)
        .await
        .unwrap();
    vault
        .restore_version("u", "client", "PASSWORD", 1)
        .await
        .unwrap();
    assert_eq!(vault.fetch("u").await, vec![a.clone(), b.clone()]);
    assert_eq!(
        vault.cipher_text("u", "PASSWORD").await.json()["cipherText"],
        "ct-A"
    );
    let after = vault.versions("u").await;
    assert_eq!(after.len(), 4, "B is kept as a version now: {after:?}");
    assert!(
        after
            .iter()
            .any(|v| !v.current && v.backup_share_pair_id == "pair-b")
    );
    assert_eq!(
        vault.audit_outcomes("u", "restore_version").await,
        ["ok", "ok"]
    );

    // A version that does not exist, or a bad kind, is refused and changes nothing.
    let missing = vault
        .restore_version("u", "custodian", KEY, 9)
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let bad = vault
        .restore_version("u", "share", KEY, 1)
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert_eq!(vault.fetch("u").await, vec![a.clone(), b.clone()]);

    // Erasing the client erases its versions too.
    let erased = vault
        .api
        .send(
            "DELETE",
            "/v1/clients/u",
            &[("authorization", vault.backend.as_str())],
            None,
        )
        .await;
    assert_eq!(erased.status, 200);
    assert!(vault.versions("u").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_backup_or_cipher_text_changes_nothing() {
    let vault = Vault::start(81).await;
    let first = share("one", "pair-1");
    assert_eq!(vault.backup("r", KEY, &first).await.status, 200);
    assert_eq!(
        vault
            .store_cipher_text("r", "PASSWORD", "ct-1")
            .await
            .status,
        200
    );
    assert_eq!(vault.status_of("r", "pair-1").await, COMPLETED);

    // Portal retries the same `/backup`, byte for byte, and the backend its cipherText.
    let retried = vault.backup("r", KEY, &first).await;
    assert_eq!(retried.status, 200);
    assert_eq!(vault.status_of("r", "pair-1").await, COMPLETED);
    assert_eq!(
        vault
            .store_cipher_text("r", "PASSWORD", "ct-1")
            .await
            .status,
        200
    );
    assert_eq!(vault.fetch("r").await, vec![first.clone()]);
    assert!(
        vault.versions("r").await.iter().all(|v| v.current),
        "a repeat keeps no version"
    );
    assert_eq!(vault.audit_outcomes("r", "backup").await, ["ok", "repeat"]);
    assert_eq!(
        vault.audit_outcomes("r", "store_client_share").await,
        ["ok", "repeat"]
    );

    // The same share under a new pair id is a new backup, not a repeat.
    let again = share("one", "pair-2");
    assert_eq!(vault.backup("r", KEY, &again).await.status, 200);
    assert_eq!(vault.status_of("r", "pair-2").await, CUSTODIAN_STORED);
    assert_eq!(vault.fetch("r").await, vec![again, first]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enclave_flow_stores_one_cipher_text_per_curve() {
    let vault = Vault::start(82).await;
    let secp = share("S", "pair-secp");
    let ed = share("E", "pair-ed");
    assert_eq!(
        vault.backup("e", "PASSWORD-SECP256K1", &secp).await.status,
        200
    );
    assert_eq!(vault.backup("e", "PASSWORD-ED25519", &ed).await.status, 200);

    // The secp256k1 cipherText covers its curve's pair only.
    let stored = vault
        .store_cipher_text("e", "PASSWORD-SECP256K1", "ct-secp")
        .await;
    assert_eq!(
        stored.status,
        200,
        "{}",
        String::from_utf8_lossy(&stored.body)
    );
    assert_eq!(vault.status_of("e", "pair-secp").await, COMPLETED);
    assert_eq!(vault.status_of("e", "pair-ed").await, CUSTODIAN_STORED);
    let early = vault.patch_pairs("e", &["pair-ed"], COMPLETED).await;
    assert_eq!(early.status, 409, "no cipherText covers ed25519 yet");

    let stored = vault
        .store_cipher_text("e", "PASSWORD-ED25519", "ct-ed")
        .await;
    assert_eq!(stored.status, 200);
    // The app marks both pair ids, as Portal's Enclave flow does.
    let patched = vault
        .patch_pairs("e", &["pair-secp", "pair-ed"], COMPLETED)
        .await;
    assert_eq!(
        patched.status,
        204,
        "{}",
        String::from_utf8_lossy(&patched.body)
    );
    assert_eq!(vault.status_of("e", "pair-ed").await, COMPLETED);

    // Each form answers what is stored under it.
    let got = vault.cipher_text("e", "PASSWORD-SECP256K1").await;
    assert_eq!(got.json()["cipherText"], "ct-secp");
    let got = vault.cipher_text("e", "PASSWORD-ED25519").await;
    assert_eq!(got.json()["cipherText"], "ct-ed");
    assert_eq!(vault.cipher_text("e", "PASSWORD").await.status, 404);

    // ListBackups shows one PASSWORD method, both curves covered, completed.
    let listed = vault.list_backups("e").await;
    let methods = listed["methods"].as_array().unwrap();
    assert_eq!(methods.len(), 1, "{listed}");
    assert_eq!(methods[0]["backupMethod"], "PASSWORD");
    assert_eq!(methods[0]["status"], "completed");
    for c in methods[0]["custodianShares"].as_array().unwrap() {
        assert_eq!(c["hasClientBackupShare"], true, "{c}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_record_is_left_out_and_the_others_answered() {
    let vault = Vault::start(83).await;
    let secp = "MARKER-SECP-OF-THE-RECORD-TO-DAMAGE";
    let ed = "MARKER-ED-OF-THE-INTACT-RECORD";
    assert_eq!(
        vault.backup("d", "PASSWORD-SECP256K1", secp).await.status,
        200
    );
    assert_eq!(vault.backup("d", "PASSWORD-ED25519", ed).await.status, 200);
    let Vault {
        mut daemon,
        sandbox,
        backend,
        ..
    } = vault;
    assert!(daemon.signal("TERM").success());
    crate::harness::damage_custodian_share(&sandbox.database(), "d", "PASSWORD-SECP256K1");

    let daemon = sandbox.start();
    let vault = Vault::on(sandbox, daemon, backend);
    assert_eq!(vault.fetch("d").await, vec![ed.to_owned()]);
    let outcomes = vault.audit_outcomes("d", "fetch").await;
    assert_eq!(outcomes, ["ok: 1 damaged record(s) left out"]);
    let metrics = vault.api.send("GET", "/metrics", &[], None).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        text.lines()
            .any(|l| l == "sharevault_damaged_records_total 1"),
        "{text}"
    );
    assert!(!vault.daemon.logs().contains(ed) && !vault.daemon.logs().contains("MARKER"));

    // With every record damaged, the answer is a data loss, never an empty list.
    let Vault {
        mut daemon,
        sandbox,
        backend,
        ..
    } = vault;
    assert!(daemon.signal("TERM").success());
    crate::harness::damage_custodian_share(&sandbox.database(), "d", "PASSWORD-ED25519");
    let daemon = sandbox.start();
    let vault = Vault::on(sandbox, daemon, backend);
    let reply = vault.fetch_reply("d").await;
    assert_eq!(
        reply.status,
        500,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.json()["error"]["code"], "data_loss");
}

/// Rekey re-wraps kept versions, verify opens them, and a snapshot carries them to a restored
/// vault that only the new master key opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_rekeyed_verified_snapshotted_and_restored() {
    use crate::harness::Keys;
    use crate::operations::{hex_decode, restore, snapshot_to};
    let vault = Vault::start(86).await;
    let (a, b) = (share("A", "pair-a"), share("B", "pair-b"));
    assert_eq!(vault.backup("k", KEY, &a).await.status, 200);
    assert_eq!(
        vault
            .store_cipher_text("k", "PASSWORD", "ct-A")
            .await
            .status,
        200
    );
    assert_eq!(vault.backup("k", KEY, &b).await.status, 200);

    let new_keys = Keys::new(&vault.sandbox.tmp.path().join("new-keys"), 87);
    let raw = hex_decode(
        std::fs::read_to_string(&new_keys.master_key_file)
            .unwrap()
            .trim(),
    );
    let rotated = vault.daemon.rekey(&vault.admin, &raw).await;
    assert!(rotated.finished, "the rotation finished: {rotated:?}");
    let report = vault.daemon.verify(&vault.admin).await;
    assert_eq!(
        (
            report.custodian_shares,
            report.client_shares,
            report.versions,
            report.failed
        ),
        (1, 1, 1, 0)
    );
    let snap = vault.sandbox.tmp.path().join("with-versions.snap");
    snapshot_to(&vault.daemon, &vault.admin, &snap).await;

    let keys = Keys {
        dir: vault.sandbox.keys.dir.clone(),
        master_key_file: new_keys.master_key_file.clone(),
        webhook_secret: vault.secret.clone(),
        admin_token: vault.admin.clone(),
    };
    let elsewhere = vault.sandbox.tmp.path().join("restored");
    let out = restore(&snap, &elsewhere, &keys);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let daemon = Daemon::start(&elsewhere, &keys);
    let hook = Http::plain(daemon.webhook_addr.as_deref().unwrap());
    let fetched = hook
        .post_json(
            "/backup/fetch",
            &[("x-webhook-secret", vault.secret.as_str())],
            &json!({"clientId": "k"}),
        )
        .await;
    let shares: Vec<String> =
        serde_json::from_value(fetched.json()["backupShares"].clone()).unwrap();
    assert_eq!(
        shares,
        vec![b, a],
        "the kept share opens under the new key alone"
    );
}
