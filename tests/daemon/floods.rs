//! Floods and slow clients: failed-authentication limits, per-listener limits, slow-loris
//! connections and memory under a flood of maximum-size requests.

use crate::harness::{Daemon, Sandbox, create_token, fetch_shares, with_secret, with_token};
use crate::http_client::Http;
use serde_json::json;
use sharevault::pb;
use sharevault::pb::backup_service_client::BackupServiceClient;
use sharevault::pb::webhook_service_client::WebhookServiceClient;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Channel;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_limited_per_source_and_per_credential() {
    let sandbox = Sandbox::new(80);
    let daemon = sandbox.start_with(&[
        "--auth-failure-limit",
        "5",
        "--auth-failure-window-seconds",
        "30",
    ]);
    let hook = daemon.webhook_addr.clone().unwrap();
    let secret = sandbox.keys.webhook_secret.as_str();
    let body = json!({"clientId": "limited", "share": "s"});
    let attacker = Http::from_source(&hook, "127.0.0.2");

    for i in 0..5 {
        let reply = attacker
            .post_json(
                "/backup",
                &[("x-webhook-secret", &format!("guess-number-{i}-0123456789"))],
                &body,
            )
            .await;
        assert_eq!(reply.status, 401);
    }
    let limited = attacker
        .post_json(
            "/backup",
            &[("x-webhook-secret", "guess-number-6-0123456789")],
            &body,
        )
        .await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.json()["error"]["code"], "rate_limited");
    let retry: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    // Only failures are limited: the right secret is served from that source all the same.
    let right = attacker
        .post_json("/backup", &[("x-webhook-secret", secret)], &body)
        .await;
    assert_eq!(right.status, 200);

    // Successful traffic from elsewhere is unaffected.
    let portal = Http::from_source(&hook, "127.0.0.3");
    for _ in 0..20 {
        let ok = portal
            .post_json("/backup", &[("x-webhook-secret", secret)], &body)
            .await;
        assert_eq!(ok.status, 200);
    }

    // A guessed credential is limited wherever it comes from: the JSON API and gRPC too.
    let api = |source: &str| Http::from_source(&daemon.endpoint, source);
    for n in 4..9 {
        let reply = api(&format!("127.0.1.{n}"))
            .send(
                "GET",
                "/v1/clients/c/backups",
                &[("authorization", "Bearer svt_stolen-and-replayed")],
                None,
            )
            .await;
        assert_eq!(reply.status, 401);
    }
    let replayed = api("127.0.1.99")
        .send(
            "GET",
            "/v1/clients/c/backups",
            &[("authorization", "Bearer svt_stolen-and-replayed")],
            None,
        )
        .await;
    assert_eq!(replayed.status, 429);
    let mut grpc = daemon.backup().await;
    let err = grpc
        .list_backups(with_token(
            pb::ListBackupsRequest {
                client_id: "c".into(),
            },
            "svt_stolen-and-replayed",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(err.metadata().get("retry-after").is_some());
    // The admin token still works (127.0.0.1 never failed).
    daemon.status(&sandbox.keys.admin_token).await;
}

/// The callers of a sidecar deployment: every one, right or wrong, comes from 127.0.0.1.
struct Sidecar {
    hook: Http,
    api: Http,
    webhook: WebhookServiceClient<Channel>,
    grpc: BackupServiceClient<Channel>,
    secret: String,
    /// A backend token, and a revoked one.
    backend: String,
    stale: String,
}

impl Sidecar {
    async fn new(sandbox: &Sandbox, daemon: &Daemon) -> Self {
        let admin_token = sandbox.keys.admin_token.as_str();
        let backend = create_token(daemon, admin_token, "backend", pb::Role::Backend as i32).await;
        let stale = create_token(daemon, admin_token, "stale", pb::Role::Backend as i32).await;
        daemon
            .admin()
            .await
            .revoke_token(with_token(
                pb::RevokeTokenRequest {
                    name: "stale".into(),
                },
                admin_token,
            ))
            .await
            .unwrap();
        Self {
            hook: Http::plain(&daemon.webhook_addr.clone().unwrap()),
            api: Http::plain(&daemon.endpoint),
            webhook: daemon.webhook().await,
            grpc: daemon.backup().await,
            secret: sandbox.keys.webhook_secret.clone(),
            backend,
            stale,
        }
    }
}

fn list_sidecar() -> pb::ListBackupsRequest {
    pb::ListBackupsRequest {
        client_id: "sidecar".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_credential_is_served_after_a_thousand_failures_from_its_source() {
    let sandbox = Sandbox::new(84);
    // The failures are counted here, not delayed (tests/daemon/guards.rs times the delays):
    // a thousand in a row would take half an hour at up to 2 s each.
    let daemon = sandbox.start_with(&["--auth-failure-max-delay-ms", "0"]);
    let sidecar = Sidecar::new(&sandbox, &daemon).await;
    a_thousand_failures_are_mostly_rate_limited(&sidecar).await;
    the_right_credentials_are_served_at_once(&sidecar).await;
    daemon.status(&sandbox.keys.admin_token).await;

    // Failures from that source are still refused without being served.
    let err = sidecar
        .grpc
        .clone()
        .list_backups(with_token(list_sidecar(), &sidecar.stale))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
}

/// 1,000 failures: wrong secrets, a revoked token, no token, over HTTP and gRPC. The first 20
/// are answered as failures, the rest as rate limited.
async fn a_thousand_failures_are_mostly_rate_limited(sidecar: &Sidecar) {
    let (mut webhook, mut grpc) = (sidecar.webhook.clone(), sidecar.grpc.clone());
    let body = json!({"clientId": "sidecar", "share": "s"});
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..250 {
        let wrong = format!("wrong-secret-number-{i}-0123456789");
        let reply = sidecar
            .hook
            .post_json("/backup", &[("x-webhook-secret", &wrong)], &body)
            .await;
        *statuses.entry(reply.status.to_string()).or_insert(0) += 1;
        let bearer = format!("Bearer {}", sidecar.stale);
        let reply = sidecar
            .api
            .send(
                "GET",
                "/v1/clients/sidecar/backups",
                &[("authorization", &bearer)],
                None,
            )
            .await;
        *statuses.entry(reply.status.to_string()).or_insert(0) += 1;
        let err = webhook
            .backup(with_secret(
                pb::BackupRequest {
                    client_id: "sidecar".into(),
                    backup_method: "PASSWORD-SECP256K1".into(),
                    share: "s".into(),
                    backup_share_pair_id: None,
                },
                &wrong,
            ))
            .await
            .unwrap_err();
        *statuses.entry(format!("{:?}", err.code())).or_insert(0) += 1;
        let err = grpc
            .list_backups(tonic::Request::new(list_sidecar()))
            .await
            .unwrap_err();
        *statuses.entry(format!("{:?}", err.code())).or_insert(0) += 1;
    }
    assert_eq!(statuses.values().sum::<i32>(), 1000, "{statuses:?}");
    assert!(
        statuses["429"] + statuses["ResourceExhausted"] >= 980,
        "{statuses:?}"
    );
}

/// The right secret and the right tokens are served at once, over HTTP and gRPC.
async fn the_right_credentials_are_served_at_once(sidecar: &Sidecar) {
    let Sidecar {
        hook,
        api,
        secret,
        backend,
        ..
    } = sidecar;
    let ok = hook
        .post_json(
            "/backup",
            &[("x-webhook-secret", secret)],
            &json!({"clientId": "sidecar", "share": "s"}),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    let fetched = hook
        .post_json(
            "/backup/fetch",
            &[("x-webhook-secret", secret)],
            &json!({"clientId": "sidecar"}),
        )
        .await;
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.json()["backupShares"], json!(["s"]));
    let bearer = format!("Bearer {backend}");
    let listed = api
        .send(
            "GET",
            "/v1/clients/sidecar/backups",
            &[("authorization", &bearer)],
            None,
        )
        .await;
    assert_eq!(listed.status, 200);
    let shares = fetch_shares(&mut sidecar.webhook.clone(), secret, "sidecar".into()).await;
    assert_eq!(shares, ["s"]);
    sidecar
        .grpc
        .clone()
        .list_backups(with_token(list_sidecar(), backend))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_private_listener_attributes_failures_behind_a_trusted_proxy() {
    let sandbox = Sandbox::new(85);
    let daemon = sandbox.start_with(&[
        "--auth-failure-limit",
        "3",
        "--trusted-proxies",
        "127.0.0.0/8",
    ]);
    let api = Http::plain(&daemon.endpoint);
    let mut grpc = daemon.backup().await;
    // Each attempt presents a different token, so only its source can limit it.
    let mut n = 0;
    let mut fail_from = async |forwarded: &str| {
        n += 1;
        let bearer = format!("Bearer svt_guess-{n}");
        api.send(
            "GET",
            "/v1/clients/c/backups",
            &[("authorization", &bearer), ("x-forwarded-for", forwarded)],
            None,
        )
        .await
        .status
    };
    // A client that writes garbage before its address is still counted by its address.
    for _ in 0..3 {
        assert_eq!(fail_from("garbage, 198.51.100.7").await, 401);
    }
    assert_eq!(fail_from("198.51.100.7").await, 429);
    // Another client behind the same proxy is not.
    assert_eq!(fail_from("198.51.100.8").await, 401);
    // gRPC is attributed the same way.
    let mut request = tonic::Request::new(pb::ListBackupsRequest {
        client_id: "c".into(),
    });
    request
        .metadata_mut()
        .insert("x-forwarded-for", "198.51.100.7".parse().unwrap());
    let err = grpc.list_backups(request).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    let mut request = tonic::Request::new(pb::ListBackupsRequest {
        client_id: "c".into(),
    });
    request
        .metadata_mut()
        .insert("x-forwarded-for", "198.51.100.9".parse().unwrap());
    let err = grpc.list_backups(request).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
}

/// Starts a request whose body never finishes: it holds its connection and its in-flight slot.
async fn stalled_upload(addr: &str, secret: &str) -> TcpStream {
    let head = format!(
        "POST /backup HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-webhook-secret: {secret}\r\ncontent-length: 100000\r\n\r\n{{\"clientId\":"
    );
    Http::plain(addr).open(head.as_bytes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_the_public_listener_does_not_starve_the_private_one() {
    let sandbox = Sandbox::new(81);
    // Every connection here comes from 127.0.0.1: let one source take the whole listener.
    let daemon = sandbox.start_with(&[
        "--max-in-flight",
        "4",
        "--max-connections",
        "6",
        "--max-connections-per-source",
        "6",
    ]);
    let secret = sandbox.keys.webhook_secret.clone();
    let flood = flood_the_public_listener(&daemon, &secret).await;
    the_private_listener_keeps_serving(&daemon, &secret).await;
    // Once the flood stops, the public listener serves again.
    drop(flood);
    the_public_listener_serves_again(&daemon, &secret).await;
}

/// Four stalled uploads fill the public listener's in-flight slots, so a fifth request is
/// refused, and three more connections reach its connection limit. Answers the connections
/// that hold it.
async fn flood_the_public_listener(daemon: &Daemon, secret: &str) -> Vec<TcpStream> {
    let hook = daemon.webhook_addr.clone().unwrap();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(stalled_upload(&hook, secret).await);
    }
    // Once they have reached the daemon (a probe arriving first would take a slot and the
    // last stalled upload would be the one refused), a fifth request is refused at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut refused = None;
    for _ in 0..100 {
        let reply = Http::plain(&hook)
            .post_json(
                "/backup",
                &[("x-webhook-secret", secret)],
                &json!({"clientId": "c", "share": "s"}),
            )
            .await;
        if reply.status != 200 {
            refused = Some(reply);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = refused
        .unwrap_or_else(|| panic!("the in-flight limit was not reached:\n{}", daemon.logs()));
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["error"]["code"], "overloaded");
    // ...and the connection limit stops accepting beyond six.
    for _ in 0..3 {
        held.push(Http::plain(&hook).connect().await);
    }
    held
}

/// The private listener keeps serving, over gRPC and JSON.
async fn the_private_listener_keeps_serving(daemon: &Daemon, secret: &str) {
    daemon
        .webhook()
        .await
        .backup(with_secret(
            pb::BackupRequest {
                client_id: "private".into(),
                backup_method: "PASSWORD-SECP256K1".into(),
                share: "still served".into(),
                backup_share_pair_id: None,
            },
            secret,
        ))
        .await
        .unwrap();
    assert_eq!(
        Http::plain(&daemon.endpoint)
            .send("GET", "/readyz", &[], None)
            .await
            .status,
        200
    );
}

/// The public listener serves the share stored meanwhile, and the refusals were counted.
async fn the_public_listener_serves_again(daemon: &Daemon, secret: &str) {
    let hook = daemon.webhook_addr.clone().unwrap();
    let mut served = false;
    for _ in 0..50 {
        let reply = Http::plain(&hook)
            .post_json(
                "/backup/fetch",
                &[("x-webhook-secret", secret)],
                &json!({"clientId": "private"}),
            )
            .await;
        if reply.status == 200 {
            assert_eq!(reply.json()["backupShares"], json!(["still served"]));
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served);
    let metrics = Http::plain(&daemon.endpoint)
        .send("GET", "/metrics", &[], None)
        .await;
    let text = String::from_utf8(metrics.body).unwrap();
    let overloaded: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("sharevault_overloaded_total "))
        .unwrap_or_else(|| panic!("{}: {text}", metrics.status))
        .parse()
        .unwrap();
    assert!(overloaded >= 1, "refusals are counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_loris_connection_is_dropped_and_others_are_served_meanwhile() {
    let sandbox = Sandbox::new(82);
    let daemon = sandbox.start();
    let hook = daemon.webhook_addr.clone().unwrap();
    let mut loris = Http::plain(&hook)
        .open(b"POST /backup HTTP/1.1\r\nhost: x\r\n")
        .await;
    let secret = sandbox.keys.webhook_secret.clone();
    // Headers trickle in, one byte a second; the daemon's header timeout is 10 s.
    let trickle = tokio::spawn(async move {
        let mut closed_after = None;
        for i in 0..20u32 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if loris.write_all(b"x").await.is_err() {
                closed_after = Some(i);
                break;
            }
            let mut buf = [0u8; 256];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(1), loris.read(&mut buf)).await
                && (n == 0 || buf.starts_with(b"HTTP/1.1 408"))
            {
                closed_after = Some(i);
                break;
            }
        }
        closed_after
    });
    for _ in 0..5 {
        let reply = Http::plain(&hook)
            .post_json(
                "/backup",
                &[("x-webhook-secret", &secret)],
                &json!({"clientId": "busy", "share": "s"}),
            )
            .await;
        assert_eq!(reply.status, 200, "served while the slow client trickles");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let closed_after = trickle.await.unwrap();
    assert!(
        closed_after.is_some(),
        "the slow-loris connection was dropped"
    );
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_under_a_flood_of_maximum_size_requests() {
    let sandbox = Sandbox::new(83);
    let daemon = sandbox.start_with(&["--max-in-flight", "64"]);
    let hook = daemon.webhook_addr.clone().unwrap();
    let secret = sandbox.keys.webhook_secret.clone();
    let before = peak_rss_kib(daemon.pid());
    let share = "S".repeat(64 * 1024);
    let oversized = "X".repeat(300 * 1024);
    let mut tasks = Vec::new();
    for w in 0..32 {
        let (hook, secret, share, oversized) = (
            hook.clone(),
            secret.clone(),
            share.clone(),
            oversized.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let http = Http::plain(&hook);
            let mut statuses = Vec::new();
            for i in 0..25 {
                // Alternate a maximum-size share with a body over the limit.
                let reply = if i % 2 == 0 {
                    http.post_json("/backup", &[("x-webhook-secret", &secret)], &json!({"clientId": format!("m{w}"), "backupMethod": format!("M{i}"), "share": share})).await
                } else {
                    http.send("POST", "/backup", &[("x-webhook-secret", &secret), ("content-type", "application/json")], Some(oversized.as_bytes())).await
                };
                statuses.push(reply.status);
            }
            statuses
        }));
    }
    let mut counts = std::collections::BTreeMap::new();
    for task in tasks {
        for status in task.await.unwrap() {
            *counts.entry(status).or_insert(0) += 1;
        }
    }
    let after = peak_rss_kib(daemon.pid());
    eprintln!(
        "flood of 800 maximum-size requests (statuses {counts:?}): daemon peak RSS {} MiB (before: {} MiB)",
        after / 1024,
        before / 1024
    );
    assert_eq!(counts.get(&200), Some(&416));
    assert_eq!(counts.get(&413), Some(&384));
    assert!(after < 400 * 1024, "peak RSS {} KiB", after);
}
