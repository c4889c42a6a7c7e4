//! Portal's webhook over HTTP, as Portal calls it, on the public listener.

use crate::flow::{CURVES, METHODS, portal_share};
use crate::harness::Sandbox;
use crate::http_client::{Http, Reply, TestCert};
use serde_json::json;

const PREFIX: &str = "/portal/webhook";

fn webhook(daemon: &crate::harness::Daemon) -> Http {
    Http::plain(
        daemon
            .webhook_addr
            .as_deref()
            .expect("the webhook listener runs"),
    )
}

/// Portal's calls to the webhook under [`PREFIX`], with the secret.
struct Portal<'a> {
    http: Http,
    secret: &'a str,
}

impl Portal<'_> {
    /// POSTs `body` as JSON to `PREFIX` + `route`.
    async fn post(&self, route: &str, body: serde_json::Value) -> Reply {
        let auth = [
            ("x-webhook-secret", self.secret),
            ("accept", "application/json"),
        ];
        self.http
            .post_json(&format!("{PREFIX}{route}"), &auth, &body)
            .await
    }

    async fn fetch(&self, client: &str) -> Reply {
        self.post("/backup/fetch", json!({"clientId": client}))
            .await
    }

    /// The raw share strings a fetch answers (not re-serialised JSON).
    async fn shares(&self, client: &str) -> Vec<String> {
        serde_json::from_value(self.fetch(client).await.json()["backupShares"].clone()).unwrap()
    }
}

/// Portal backs up every method and curve and checks each write at once; recovery answers
/// every share, byte for byte.
async fn backs_up_every_method_and_curve_over_http(portal: &Portal<'_>, client: &str) {
    let mut expected = Vec::new();
    for method in METHODS {
        for curve in CURVES {
            let share = portal_share(client, method, curve, 1);
            let reply = portal
                .post(
                    "/backup",
                    json!({"clientId": client, "backupMethod": format!("{method}-{curve}"), "share": share}),
                )
                .await;
            assert_eq!(
                reply.status,
                200,
                "{}",
                String::from_utf8_lossy(&reply.body)
            );
            assert_eq!(
                reply.json()["backupSharePairId"],
                json!(crate::flow::pair_id(client, method, curve, 1))
            );
            // Portal's immediate check.
            let fetched = portal.fetch(client).await;
            assert_eq!(fetched.status, 200);
            let shares = fetched.json()["backupShares"].clone();
            assert!(shares.as_array().unwrap().contains(&json!(share)));
            assert!(
                fetched.json().get("backupShare").is_none(),
                "legacy field is off by default"
            );
            expected.push(share);
        }
    }

    // Recovery: every share, byte for byte (compare raw strings, not re-serialised JSON).
    let mut shares = portal.shares(client).await;
    shares.sort();
    expected.sort();
    assert_eq!(shares, expected);
}

/// Replacement touches one key only.
async fn a_replacement_touches_one_key_over_http(portal: &Portal<'_>, client: &str) {
    let replacement = portal_share(client, "GDRIVE", "ED25519", 2);
    let reply = portal
        .post(
            "/backup",
            json!({"clientId": client, "backupMethod": "GDRIVE-ED25519", "share": replacement}),
        )
        .await;
    assert_eq!(reply.status, 200);
    let shares = portal.shares(client).await;
    assert_eq!(shares.len(), 8);
    assert!(shares.contains(&replacement));
    assert!(!shares.contains(&portal_share(client, "GDRIVE", "ED25519", 1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_sequence_over_http() {
    let sandbox = Sandbox::new(20);
    let daemon = sandbox.start_with(&["--webhook-path-prefix", PREFIX]);
    let secret = sandbox.keys.webhook_secret.as_str();
    let portal = Portal {
        http: webhook(&daemon),
        secret,
    };
    let client = "clxhttp0001";
    backs_up_every_method_and_curve_over_http(&portal, client).await;
    a_replacement_touches_one_key_over_http(&portal, client).await;

    // An unknown client has none; a missing method is stored as UNKNOWN.
    let unknown = portal.fetch("nobody").await;
    assert_eq!(
        (unknown.status, unknown.json()),
        (200, json!({"backupShares": []}))
    );
    let legacy = portal
        .post("/backup", json!({"clientId": "old-sdk", "share": "s"}))
        .await;
    assert_eq!(legacy.status, 200);

    // The webhook's own health route.
    let health = portal.http.send("GET", "/healthz", &[], None).await;
    assert_eq!(health.status, 200);

    // Request bodies and shares never reach the logs.
    let logs = daemon.logs();
    assert!(
        logs.contains("service=\"WebhookHttp\" method=\"Backup\" client=\"clxhttp0001\""),
        "{logs}"
    );
    assert!(!logs.contains("bip32Key") && !logs.contains(secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_switch_adds_the_latest_share() {
    let sandbox = Sandbox::new(21);
    let daemon = sandbox.start_with(&["--webhook-legacy-backup-share"]);
    let http = webhook(&daemon);
    let auth = [("x-webhook-secret", sandbox.keys.webhook_secret.as_str())];
    for (method, share) in [
        ("PASSWORD-SECP256K1", "first"),
        ("GDRIVE-SECP256K1", "second"),
    ] {
        let reply = http
            .post_json(
                "/backup",
                &auth,
                &json!({"clientId": "c", "backupMethod": method, "share": share}),
            )
            .await;
        assert_eq!(reply.status, 200);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let body = http
        .post_json("/backup/fetch", &auth, &json!({"clientId": "c"}))
        .await
        .json();
    assert_eq!(body["backupShare"], json!("second"));
    assert_eq!(body["backupShares"].as_array().unwrap().len(), 2);
    let empty = http
        .post_json("/backup/fetch", &auth, &json!({"clientId": "none"}))
        .await
        .json();
    assert_eq!(empty, json!({"backupShares": []}));
}

/// Expected status, verb, path, headers, body, and a part of the error message.
type Case<'a> = (
    u16,
    &'a str,
    &'a str,
    Vec<(&'a str, &'a str)>,
    Vec<u8>,
    &'a str,
);

/// Every refusal of the webhook, with a daemon started with `--max-request-bytes 4096` and
/// `--max-share-bytes 1000`; `secret` is its webhook secret.
fn error_cases(secret: &str) -> Vec<Case<'_>> {
    let good = json!({"clientId": "victim", "backupMethod": "PASSWORD-SECP256K1", "share": "SECRET-SHARE"});
    let json_ct = ("content-type", "application/json");
    let with_secret = ("x-webhook-secret", secret);
    let good_bytes = good.to_string();

    vec![
        (
            401,
            "POST",
            "/backup",
            vec![json_ct],
            good_bytes.clone().into_bytes(),
            "the webhook secret is missing",
        ),
        (
            401,
            "POST",
            "/backup",
            vec![json_ct, ("x-webhook-secret", "wrong-secret-0123456789")],
            good_bytes.clone().into_bytes(),
            "the webhook secret is wrong",
        ),
        (
            401,
            "POST",
            "/backup/fetch",
            vec![json_ct],
            br#"{"clientId":"victim"}"#.to_vec(),
            "the webhook secret is missing",
        ),
        (
            415,
            "POST",
            "/backup",
            vec![with_secret],
            good_bytes.clone().into_bytes(),
            "Content-Type: application/json",
        ),
        (
            415,
            "POST",
            "/backup",
            vec![with_secret, ("content-type", "text/plain")],
            good_bytes.clone().into_bytes(),
            "Content-Type",
        ),
        (
            413,
            "POST",
            "/backup",
            vec![json_ct, with_secret],
            json!({"clientId": "victim", "share": "x".repeat(5000)})
                .to_string()
                .into_bytes(),
            "at most 4096 bytes",
        ),
        (
            400,
            "POST",
            "/backup",
            vec![json_ct, with_secret],
            b"{not json".to_vec(),
            "body: is not valid JSON",
        ),
        (
            400,
            "POST",
            "/backup",
            vec![json_ct, with_secret],
            b"[1,2]".to_vec(),
            "body: must be a JSON object",
        ),
        (
            400,
            "POST",
            "/backup",
            vec![json_ct, with_secret],
            br#"{"clientId":"victim","clientId":"x","share":"s"}"#.to_vec(),
            "body: a key appears more than once",
        ),
        (
            400,
            "POST",
            "/backup",
            vec![json_ct, with_secret],
            br#"{"backupMethod":"PASSWORD","share":"s"}"#.to_vec(),
            "clientId: is required",
        ),
        (
            400,
            "POST",
            "/backup",
            vec![json_ct, with_secret],
            br#"{"clientId":7,"share":"s"}"#.to_vec(),
            "clientId: must be a string",
        ),
        (
            400,
            "POST",
            "/backup",
            vec![json_ct, with_secret],
            br#"{"clientId":"victim","share":{"a":1}}"#.to_vec(),
            "share: must be a string",
        ),
        (
            400,
            "POST",
            "/backup",
            vec![json_ct, with_secret],
            br#"{"clientId":"victim"}"#.to_vec(),
            "share: is required",
        ),
        (
            400,
            "POST",
            "/backup",
            vec![json_ct, with_secret],
            br#"{"clientId":"victim","backupMethod":"A\u0007B","share":"s"}"#.to_vec(),
            "backupMethod: may contain only printable ASCII",
        ),
        (
            400,
            "POST",
            "/backup",
            vec![json_ct, with_secret],
            json!({"clientId": "victim", "share": "S".repeat(1001)})
                .to_string()
                .into_bytes(),
            "share: must be at most 1000 bytes",
        ),
        (
            400,
            "POST",
            "/backup",
            vec![json_ct, with_secret],
            br#"{"clientId":"victim","share":"s","backupSharePairId":"a b"}"#.to_vec(),
            "backupSharePairId: may contain only",
        ),
        (
            400,
            "POST",
            "/backup/fetch",
            vec![json_ct, with_secret],
            br#"{"clientId":"bad id"}"#.to_vec(),
            "clientId: may contain only",
        ),
        (
            405,
            "GET",
            "/backup",
            vec![with_secret],
            Vec::new(),
            "does not accept that method",
        ),
        (
            405,
            "PUT",
            "/backup/fetch",
            vec![json_ct, with_secret],
            br#"{"clientId":"victim"}"#.to_vec(),
            "does not accept that method",
        ),
        (
            404,
            "POST",
            "/backups",
            vec![json_ct, with_secret],
            good_bytes.clone().into_bytes(),
            "no such route",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_code_and_nothing_stored() {
    let sandbox = Sandbox::new(22);
    let daemon = sandbox.start_with(&["--max-request-bytes", "4096", "--max-share-bytes", "1000"]);
    let http = webhook(&daemon);
    let secret = sandbox.keys.webhook_secret.as_str();
    for (status, method, path, headers, body, message) in &error_cases(secret) {
        let reply = http.send(method, path, headers, Some(body)).await;
        assert_eq!(
            reply.status,
            *status,
            "{method} {path}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.headers["content-type"], "application/json");
        let error = reply.json()["error"].clone();
        assert!(error["code"].is_string());
        let text = error["message"].as_str().unwrap();
        assert!(text.contains(message), "{method} {path}: {text}");
        assert!(!text.contains("SECRET-SHARE") && !text.contains("xxxx"));
    }
    let fetched = http
        .post_json(
            "/backup/fetch",
            &[("x-webhook-secret", secret)],
            &json!({"clientId": "victim"}),
        )
        .await;
    assert_eq!(
        fetched.json(),
        json!({"backupShares": []}),
        "nothing was stored by any refused call"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listeners_serve_only_their_own_routes() {
    let sandbox = Sandbox::new(23);
    let daemon = sandbox.start();
    let public = webhook(&daemon);
    let private = Http::plain(&daemon.endpoint);
    let secret = [("x-webhook-secret", sandbox.keys.webhook_secret.as_str())];
    let token = [(
        "authorization",
        format!("Bearer {}", sandbox.keys.admin_token),
    )];
    let token: Vec<(&str, &str)> = token.iter().map(|(k, v)| (*k, v.as_str())).collect();

    // The JSON API and readiness are not on the public listener...
    for path in ["/v1/clients/c/backups", "/readyz", "/v1/clients/c"] {
        let reply = public.send("GET", path, &token, None).await;
        assert_eq!(reply.status, 404, "{path}");
    }
    // ...nor is gRPC.
    let grpc = public
        .send(
            "POST",
            "/sharevault.v1.WebhookService/Fetch",
            &[("content-type", "application/grpc")],
            Some(&[0, 0, 0, 0, 0]),
        )
        .await;
    assert_eq!(grpc.status, 404);
    // And the webhook is not on the private listener.
    let reply = private
        .post_json("/backup", &secret, &json!({"clientId": "c", "share": "s"}))
        .await;
    assert_eq!(reply.status, 404);
    assert_eq!(private.send("GET", "/nowhere", &[], None).await.status, 404);
    assert_eq!(private.send("GET", "/readyz", &[], None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_both_listeners() {
    let sandbox = Sandbox::new(24);
    let cert = TestCert::new(sandbox.tmp.path());
    let (c, k) = (
        cert.cert_file.display().to_string(),
        cert.key_file.display().to_string(),
    );
    let daemon = sandbox.start_with(&[
        "--http-tls-cert-file",
        &c,
        "--http-tls-key-file",
        &k,
        "--grpc-tls-cert-file",
        &c,
        "--grpc-tls-key-file",
        &k,
    ]);
    let public = Http::tls(daemon.webhook_addr.as_deref().unwrap(), &cert);
    let secret = [("x-webhook-secret", sandbox.keys.webhook_secret.as_str())];
    let stored = public
        .post_json(
            "/backup",
            &secret,
            &json!({"clientId": "tls", "backupMethod": "PASSKEY-ED25519", "share": "over tls"}),
        )
        .await;
    assert_eq!(stored.status, 200);
    let fetched = public
        .post_json("/backup/fetch", &secret, &json!({"clientId": "tls"}))
        .await;
    assert_eq!(fetched.json()["backupShares"], json!(["over tls"]));

    // The private listener: JSON over HTTPS, and gRPC over TLS with ALPN h2.
    let private = Http::tls(&daemon.endpoint, &cert);
    assert_eq!(private.send("GET", "/readyz", &[], None).await.status, 200);
    let addr = daemon.endpoint.trim_start_matches("http://").to_owned();
    let connector = cert.connector(&[b"h2"]);
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let (addr, connector) = (addr.clone(), connector.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .unwrap();
    let status = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Plain HTTP to a TLS listener gets nothing.
    let plain = Http::plain(daemon.webhook_addr.as_deref().unwrap())
        .try_send("GET", "/healthz", &[], None)
        .await;
    assert!(plain.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allow_list_admits_only_listed_sources() {
    let sandbox = Sandbox::new(25);
    let secret = [("x-webhook-secret", sandbox.keys.webhook_secret.as_str())];
    let body = json!({"clientId": "allow", "backupMethod": "PASSWORD-SECP256K1", "share": "s"});

    // Portal's addresses only: loopback's connections are closed when accepted, unanswered
    // (health too), and nothing is stored.
    let mut daemon = sandbox.start_with(&[
        "--webhook-allow-cidrs",
        "35.203.150.117,104.155.171.139,35.185.20.23",
    ]);
    let http = webhook(&daemon);
    let body_bytes = serde_json::to_vec(&body).unwrap();
    let json = ("content-type", "application/json");
    let refused = http
        .try_send("POST", "/backup", &[secret[0], json], Some(&body_bytes))
        .await;
    assert!(refused.is_err(), "closed at accept");
    // A forwarded header is not believed from an untrusted peer.
    let spoofed = http
        .try_send(
            "POST",
            "/backup",
            &[secret[0], json, ("x-forwarded-for", "35.203.150.117")],
            Some(&body_bytes),
        )
        .await;
    assert!(spoofed.is_err(), "closed at accept");
    assert!(http.try_send("GET", "/healthz", &[], None).await.is_err());
    assert!(daemon.signal("TERM").success());

    // Behind a trusted proxy on loopback, the forwarded address decides.
    let daemon = sandbox.start_with(&[
        "--webhook-allow-cidrs",
        "35.203.150.117",
        "--trusted-proxies",
        "127.0.0.0/8",
    ]);
    let http = webhook(&daemon);
    let from_portal = http
        .post_json(
            "/backup",
            &[secret[0], ("x-forwarded-for", "35.203.150.117")],
            &body,
        )
        .await;
    assert_eq!(from_portal.status, 200);
    let from_elsewhere = http
        .post_json(
            "/backup",
            &[secret[0], ("x-forwarded-for", "198.51.100.7")],
            &body,
        )
        .await;
    assert_eq!(from_elsewhere.status, 403);
    let direct = http.post_json("/backup", &secret, &body).await;
    assert_eq!(direct.status, 403, "the proxy itself is not Portal");
    let fetched = http
        .post_json(
            "/backup/fetch",
            &[secret[0], ("x-forwarded-for", "35.203.150.117")],
            &json!({"clientId": "allow"}),
        )
        .await;
    assert_eq!(fetched.json()["backupShares"], json!(["s"]));
}
