//! The JSON API for backends, on the private listener beside gRPC.

use crate::harness::{Sandbox, create_token};
use crate::http_client::Http;
use serde_json::json;
use sharevault::pb::Role;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_api_mirrors_the_backup_service() {
    let sandbox = Sandbox::new(30);
    let daemon = sandbox.start();
    let admin = &sandbox.keys.admin_token;
    let backend = create_token(&daemon, admin, "backend", Role::Backend as i32).await;
    let eject = create_token(&daemon, admin, "eject", Role::Eject as i32).await;
    let (backend, eject) = (format!("Bearer {backend}"), format!("Bearer {eject}"));
    let api = Http::plain(&daemon.endpoint);
    let as_backend = [("authorization", backend.as_str())];
    let json_backend = [
        ("authorization", backend.as_str()),
        ("content-type", "application/json"),
    ];
    let hook = Http::plain(daemon.webhook_addr.as_deref().unwrap());
    let secret = [("x-webhook-secret", sandbox.keys.webhook_secret.as_str())];
    for curve in ["SECP256K1", "ED25519"] {
        let share = format!("{{\"backupSharePairId\":\"pair-{curve}\",\"k\":1}}");
        let reply = hook
            .post_json("/backup", &secret, &json!({"clientId": "u1", "backupMethod": format!("PASSWORD-{curve}"), "share": share}))
            .await;
        assert_eq!(reply.status, 200);
    }

    let path = "/v1/clients/u1/client-backup-shares/PASSWORD";
    // Credentials first.
    assert_eq!(api.send("GET", path, &[], None).await.status, 401);
    assert_eq!(
        api.send(
            "GET",
            path,
            &[("authorization", "Bearer nope-nope-nope")],
            None
        )
        .await
        .status,
        401
    );
    let admin_header = format!("Bearer {admin}");
    assert_eq!(
        api.send(
            "GET",
            path,
            &[("authorization", admin_header.as_str())],
            None
        )
        .await
        .status,
        403
    );
    assert_eq!(api.send("GET", path, &as_backend, None).await.status, 404);

    // Pairs move to the key step, then the client share completes them.
    let pairs_path = "/v1/clients/u1/backup-share-pairs";
    let patch = |status: &str| {
        json!({"backupSharePairIds": ["pair-SECP256K1", "pair-ED25519"], "status": status})
            .to_string()
    };
    let moved = api
        .send(
            "PATCH",
            pairs_path,
            &json_backend,
            Some(patch("STORED_CLIENT_BACKUP_SHARE_KEY").as_bytes()),
        )
        .await;
    assert_eq!(moved.status, 204);
    let early = api
        .send(
            "PATCH",
            pairs_path,
            &json_backend,
            Some(patch("STORED_CLIENT_BACKUP_SHARE").as_bytes()),
        )
        .await;
    assert_eq!(early.status, 409);
    let bad = api
        .send(
            "PATCH",
            pairs_path,
            &json_backend,
            Some(patch("completed").as_bytes()),
        )
        .await;
    assert_eq!(
        (bad.status, bad.error_message().starts_with("status:")),
        (400, true)
    );

    let put = api
        .send(
            "PUT",
            path,
            &json_backend,
            Some(json!({"cipherText": "ct-PASSWORD"}).to_string().as_bytes()),
        )
        .await;
    assert_eq!(put.status, 200, "{}", String::from_utf8_lossy(&put.body));
    assert_eq!(
        put.json()["completedBackupSharePairIds"],
        json!(["pair-ED25519", "pair-SECP256K1"])
    );
    let unsupported = api
        .send("PUT", path, &as_backend, Some(b"{\"cipherText\":\"x\"}"))
        .await;
    assert_eq!(unsupported.status, 415);
    let missing = api.send("PUT", path, &json_backend, Some(b"{}")).await;
    assert_eq!(
        (missing.status, missing.error_message()),
        (400, "cipherText: is required".to_string())
    );

    let got = api.send("GET", path, &as_backend, None).await.json();
    assert_eq!(got["cipherText"], json!("ct-PASSWORD"));
    assert_eq!(got["backupMethod"], json!("PASSWORD"));
    assert!(got["createdAt"].as_str().unwrap().ends_with('Z'));

    let pairs = api.send("GET", pairs_path, &as_backend, None).await.json();
    let statuses: Vec<&str> = pairs["backupSharePairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["completed", "completed"]);
    let back = api
        .send(
            "PATCH",
            pairs_path,
            &json_backend,
            Some(patch("STORED_CUSTODIAN_BACKUP_SHARE").as_bytes()),
        )
        .await;
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

    // Eject needs the eject role.
    let custodian = "/v1/clients/u1/custodian-backup-shares/PASSWORD-ED25519";
    assert_eq!(
        api.send("GET", custodian, &as_backend, None).await.status,
        403
    );
    let org = api
        .send("GET", custodian, &[("authorization", eject.as_str())], None)
        .await
        .json();
    assert_eq!(
        org["orgShare"],
        json!("{\"backupSharePairId\":\"pair-ED25519\",\"k\":1}")
    );

    // Deletion, then erasure.
    assert_eq!(
        api.send("DELETE", path, &as_backend, None).await.status,
        204
    );
    assert_eq!(
        api.send("DELETE", path, &as_backend, None).await.status,
        404
    );
    assert_eq!(
        api.send("POST", path, &json_backend, Some(b"{}"))
            .await
            .status,
        405
    );
    let erased = api
        .send("DELETE", "/v1/clients/u1", &as_backend, None)
        .await
        .json();
    assert_eq!(erased["custodianSharesDeleted"], json!(2));
    let gone = hook
        .post_json("/backup/fetch", &secret, &json!({"clientId": "u1"}))
        .await
        .json();
    assert_eq!(gone, json!({"backupShares": []}));

    assert_eq!(
        api.send("GET", "/healthz", &[], None).await.json(),
        json!({"status": "ok"})
    );
    assert_eq!(
        api.send("GET", "/readyz", &[], None).await.json(),
        json!({"status": "ready"})
    );
    assert_eq!(
        api.send("GET", "/v1/clients/bad%20id/backups", &as_backend, None)
            .await
            .status,
        400
    );
}
