//! The JSON API for backends, on the private listener beside gRPC.

use crate::harness::{Daemon, Sandbox};
use crate::http_client::{Http, Reply};
use serde_json::json;

/// The client share of PASSWORD for the client `u1`.
const PATH: &str = "/v1/clients/u1/client-backup-shares/PASSWORD";
const PAIRS_PATH: &str = "/v1/clients/u1/backup-share-pairs";

/// A daemon, its two HTTP listeners, and the `authorization` values of its roles.
pub struct JsonApi {
    pub api: Http,
    hook: Http,
    pub backend: String,
    pub eject: String,
    admin: String,
    _daemon: Daemon,
    sandbox: Sandbox,
}

impl JsonApi {
    pub async fn start() -> Self {
        let sandbox = Sandbox::new(30);
        let daemon = sandbox.start();
        let admin = format!("Bearer {}", sandbox.keys.admin_token);
        let (backend, eject) = sandbox.backend_and_eject_tokens(&daemon).await;
        Self {
            api: Http::plain(&daemon.endpoint),
            hook: Http::plain(daemon.webhook_addr.as_deref().unwrap()),
            backend: format!("Bearer {backend}"),
            eject: format!("Bearer {eject}"),
            admin,
            _daemon: daemon,
            sandbox,
        }
    }

    fn as_backend(&self) -> [(&str, &str); 1] {
        [("authorization", self.backend.as_str())]
    }

    fn json_backend(&self) -> [(&str, &str); 2] {
        [
            ("authorization", self.backend.as_str()),
            ("content-type", "application/json"),
        ]
    }

    fn secret(&self) -> [(&str, &str); 1] {
        [(
            "x-webhook-secret",
            self.sandbox.keys.webhook_secret.as_str(),
        )]
    }

    /// Portal stores u1's PASSWORD shares of both curves, pairs `pair-SECP256K1` and
    /// `pair-ED25519`.
    pub async fn store_custodian_shares(&self) {
        for curve in ["SECP256K1", "ED25519"] {
            let share = format!("{{\"backupSharePairId\":\"pair-{curve}\",\"k\":1}}");
            let reply = self
                .hook
                .post_json("/backup", &self.secret(), &json!({"clientId": "u1", "backupMethod": format!("PASSWORD-{curve}"), "share": share}))
                .await;
            assert_eq!(reply.status, 200);
        }
    }

    /// Moves both of u1's pairs to `status`.
    async fn patch_pairs(&self, status: &str) -> Reply {
        let patch =
            json!({"backupSharePairIds": ["pair-SECP256K1", "pair-ED25519"], "status": status})
                .to_string();
        self.api
            .send(
                "PATCH",
                PAIRS_PATH,
                &self.json_backend(),
                Some(patch.as_bytes()),
            )
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_api_checks_the_credentials_then_the_role() {
    let daemon = JsonApi::start().await;
    let api = &daemon.api;
    daemon.store_custodian_shares().await;
    assert_eq!(api.send("GET", PATH, &[], None).await.status, 401);
    assert_eq!(
        api.send(
            "GET",
            PATH,
            &[("authorization", "Bearer nope-nope-nope")],
            None
        )
        .await
        .status,
        401
    );
    assert_eq!(
        api.send(
            "GET",
            PATH,
            &[("authorization", daemon.admin.as_str())],
            None
        )
        .await
        .status,
        403
    );
    assert_eq!(
        api.send("GET", PATH, &daemon.as_backend(), None)
            .await
            .status,
        404
    );
}

/// Pairs move to the key step, then the client share completes them.
async fn the_client_share_completes_the_pairs(daemon: &JsonApi) {
    let api = &daemon.api;
    let moved = daemon.patch_pairs("STORED_CLIENT_BACKUP_SHARE_KEY").await;
    assert_eq!(moved.status, 204);
    let early = daemon.patch_pairs("STORED_CLIENT_BACKUP_SHARE").await;
    assert_eq!(early.status, 409);
    let bad = daemon.patch_pairs("completed").await;
    assert_eq!(
        (bad.status, bad.error_message().starts_with("status:")),
        (400, true)
    );

    let put = api
        .send(
            "PUT",
            PATH,
            &daemon.json_backend(),
            Some(json!({"cipherText": "ct-PASSWORD"}).to_string().as_bytes()),
        )
        .await;
    assert_eq!(put.status, 200, "{}", String::from_utf8_lossy(&put.body));
    assert_eq!(
        put.json()["completedBackupSharePairIds"],
        json!(["pair-ED25519", "pair-SECP256K1"])
    );
    let unsupported = api
        .send(
            "PUT",
            PATH,
            &daemon.as_backend(),
            Some(b"{\"cipherText\":\"x\"}"),
        )
        .await;
    assert_eq!(unsupported.status, 415);
    let missing = api
        .send("PUT", PATH, &daemon.json_backend(), Some(b"{}"))
        .await;
    assert_eq!(
        (missing.status, missing.error_message()),
        (400, "cipherText: is required".to_string())
    );
}

/// The client share reads back, the pairs stay completed, and the view of the client's
/// backups says so without a secret byte.
async fn the_completed_method_reads_back(daemon: &JsonApi) {
    let (api, as_backend) = (&daemon.api, daemon.as_backend());
    let got = api.send("GET", PATH, &as_backend, None).await.json();
    assert_eq!(got["cipherText"], json!("ct-PASSWORD"));
    assert_eq!(got["backupMethod"], json!("PASSWORD"));
    assert!(got["createdAt"].as_str().unwrap().ends_with('Z'));

    let pairs = api.send("GET", PAIRS_PATH, &as_backend, None).await.json();
    let statuses: Vec<&str> = pairs["backupSharePairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["completed", "completed"]);
    let back = daemon.patch_pairs("STORED_CUSTODIAN_BACKUP_SHARE").await;
    assert_eq!(back.status, 409);

    let backups = api
        .send("GET", "/v1/clients/u1/backups", &as_backend, None)
        .await
        .json();
    assert_eq!(backups["methods"][0]["backupMethod"], json!("PASSWORD"));
    assert_eq!(backups["methods"][0]["status"], json!("completed"));
    assert_eq!(
        backups["methods"][0]["custodianShares"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(
        !backups.to_string().contains("ct-PASSWORD"),
        "the view holds no secret bytes"
    );
}

/// Deletion, then erasure.
async fn deletion_then_erasure(daemon: &JsonApi) {
    let (api, as_backend) = (&daemon.api, daemon.as_backend());
    assert_eq!(
        api.send("DELETE", PATH, &as_backend, None).await.status,
        204
    );
    assert_eq!(
        api.send("DELETE", PATH, &as_backend, None).await.status,
        404
    );
    assert_eq!(
        api.send("POST", PATH, &daemon.json_backend(), Some(b"{}"))
            .await
            .status,
        405
    );
    let erased = api
        .send("DELETE", "/v1/clients/u1", &as_backend, None)
        .await
        .json();
    assert_eq!(erased["custodianSharesDeleted"], json!(2));
    let gone = daemon
        .hook
        .post_json(
            "/backup/fetch",
            &daemon.secret(),
            &json!({"clientId": "u1"}),
        )
        .await
        .json();
    assert_eq!(gone, json!({"backupShares": []}));
}

/// Each step starts from the state the one before it left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_api_completes_reads_deletes_and_erases_like_the_backup_service() {
    let daemon = JsonApi::start().await;
    daemon.store_custodian_shares().await;
    the_client_share_completes_the_pairs(&daemon).await;
    the_completed_method_reads_back(&daemon).await;
    deletion_then_erasure(&daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_api_ejects_a_custodian_share_for_the_eject_role_only() {
    let daemon = JsonApi::start().await;
    daemon.store_custodian_shares().await;
    let custodian = "/v1/clients/u1/custodian-backup-shares/PASSWORD-ED25519";
    assert_eq!(
        daemon
            .api
            .send("GET", custodian, &daemon.as_backend(), None)
            .await
            .status,
        403
    );
    let org = daemon
        .api
        .send(
            "GET",
            custodian,
            &[("authorization", daemon.eject.as_str())],
            None,
        )
        .await
        .json();
    assert_eq!(
        org["orgShare"],
        json!("{\"backupSharePairId\":\"pair-ED25519\",\"k\":1}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_api_answers_health_and_refuses_a_bad_client_id() {
    let daemon = JsonApi::start().await;
    let api = &daemon.api;
    assert_eq!(
        api.send("GET", "/healthz", &[], None).await.json(),
        json!({"status": "ok"})
    );
    assert_eq!(
        api.send("GET", "/readyz", &[], None).await.json(),
        json!({"status": "ready"})
    );
    assert_eq!(
        api.send(
            "GET",
            "/v1/clients/bad%20id/backups",
            &daemon.as_backend(),
            None
        )
        .await
        .status,
        400
    );
}
