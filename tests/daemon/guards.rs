//! Single-host guards: the gRPC webhook only on request and behind the allow-list; refusals
//! and timeouts counted and logged; the allow-list and the per-source cap applied when a
//! connection is accepted; failures from a limited source answered late.

use crate::harness::{Daemon, Sandbox, Started, command, with_secret};
use crate::http_client::Http;
use serde_json::json;
use sharevault::pb;
use sharevault::pb::webhook_service_client::WebhookServiceClient;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

const WEBHOOK: &str = "sharevault.v1.WebhookService";

/// Starts a daemon of `sandbox` with `extra` flags and none of the harness's defaults for the
/// gRPC webhook.
fn start_without_grpc_webhook_default(sandbox: &Sandbox, extra: &[&str]) -> Daemon {
    let mut args = Daemon::tcp_args(&sandbox.keys);
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut cmd = command(&sandbox.data_dir, &args);
    cmd.env_remove("SHAREVAULT_GRPC_WEBHOOK");
    match Daemon::launch(cmd) {
        Started::Ready(daemon) => daemon,
        Started::Exited { status, logs } => panic!("daemon exited ({status}):\n{logs}"),
    }
}

fn backup(client: &str, share: &str) -> pb::BackupRequest {
    pb::BackupRequest {
        client_id: client.into(),
        backup_method: "PASSWORD-SECP256K1".into(),
        share: share.into(),
        backup_share_pair_id: None,
    }
}

fn fetch(client: &str) -> pb::FetchRequest {
    pb::FetchRequest {
        client_id: client.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_webhook_is_served_only_on_request_and_only_to_the_allow_list() {
    let sandbox = Sandbox::new(110);
    let secret = sandbox.keys.webhook_secret.as_str();

    // By default the private listener does not serve it, and health does not report it.
    let mut daemon = start_without_grpc_webhook_default(&sandbox, &[]);
    let err = daemon
        .webhook()
        .await
        .backup(with_secret(backup("grpc-hook", "s0"), secret))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    let mut health = tonic_health::pb::health_client::HealthClient::new(daemon.channel().await);
    let unknown = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: WEBHOOK.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(daemon.signal("TERM").success());

    // With --grpc-webhook, only the allowed source is served, by its connection's address.
    let daemon = start_without_grpc_webhook_default(
        &sandbox,
        &["--grpc-webhook", "--webhook-allow-cidrs", "127.0.0.2/32"],
    );
    let mut outsider = daemon.webhook().await;
    for call in [
        outsider
            .backup(with_secret(backup("grpc-hook", "s1"), secret))
            .await
            .map(|_| ()),
        outsider
            .fetch(with_secret(fetch("grpc-hook"), secret))
            .await
            .map(|_| ()),
    ] {
        let err = call.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    }
    let mut allowed = WebhookServiceClient::new(daemon.channel_from("127.0.0.2").await);
    allowed
        .backup(with_secret(backup("grpc-hook", "s2"), secret))
        .await
        .unwrap();
    let shares = allowed
        .fetch(with_secret(fetch("grpc-hook"), secret))
        .await
        .unwrap()
        .into_inner()
        .backup_shares
        .clone();
    assert_eq!(shares, ["s2"], "the refused backup stored nothing");
}

/// The daemon's `/metrics` text.
async fn scrape(daemon: &Daemon) -> String {
    let reply = Http::plain(&daemon.endpoint)
        .send("GET", "/metrics", &[], None)
        .await;
    assert_eq!(reply.status, 200);
    String::from_utf8(reply.body).unwrap()
}

/// The value of `sharevault_calls_total` for the webhook's `method` and `outcome` (0 if the
/// series is not exported).
fn webhook_calls(text: &str, method: &str, outcome: &str) -> u64 {
    let series = format!(
        "sharevault_calls_total{{service=\"WebhookHttp\",method=\"{method}\",outcome=\"{outcome}\"}} "
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.parse().unwrap())
}

/// The call log lines of `logs` with `outcome`.
fn call_lines<'a>(logs: &'a str, outcome: &str) -> Vec<&'a str> {
    let needle = format!("outcome=\"{outcome}\"");
    logs.lines()
        .filter(|l| l.contains("sharevault::call") && l.contains(&needle))
        .collect()
}

/// Reads what the daemon answers on `stream` within 20 s (its status line first).
async fn answer(stream: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_list_refusals_and_timeouts_are_counted_and_logged_once_each() {
    let sandbox = Sandbox::new(111);
    let secret = sandbox.keys.webhook_secret.clone();
    // Behind a trusted proxy on loopback, Portal's forwarded address is allowed.
    let daemon = sandbox.start_with(&[
        "--webhook-allow-cidrs",
        "35.203.150.117",
        "--trusted-proxies",
        "127.0.0.0/8",
        "--request-timeout-seconds",
        "1",
    ]);
    let hook = daemon.webhook_addr.clone().unwrap();
    let refused = Http::plain(&hook)
        .post_json(
            "/backup",
            &[
                ("x-webhook-secret", secret.as_str()),
                ("x-forwarded-for", "198.51.100.7"),
            ],
            &json!({"clientId": "counted", "share": "SHARE-NEVER-LOGGED"}),
        )
        .await;
    assert_eq!(refused.status, 403);
    // An upload that never finishes is cut by the request timeout.
    let head = format!(
        "POST /backup HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         x-webhook-secret: {secret}\r\nx-forwarded-for: 35.203.150.117\r\n\
         content-length: 1000\r\n\r\n{{\"clientId\":\"counted\",\"share\":\"SHARE-NEVER"
    );
    let mut stalled = Http::plain(&hook).open(head.as_bytes()).await;
    let cut = answer(&mut stalled).await;
    assert!(cut.starts_with("HTTP/1.1 503"), "{cut}");

    let text = scrape(&daemon).await;
    assert_eq!(webhook_calls(&text, "Backup", "forbidden"), 1, "{text}");
    assert_eq!(webhook_calls(&text, "Backup", "timeout"), 1, "{text}");
    let logs = daemon.logs();
    let forbidden = call_lines(&logs, "forbidden");
    assert_eq!(forbidden.len(), 1, "{logs}");
    assert!(forbidden[0].contains("198.51.100.7"), "{}", forbidden[0]);
    assert_eq!(call_lines(&logs, "timeout").len(), 1, "{logs}");
    assert!(!logs.contains("SHARE-NEVER"), "no body in the logs");
    assert!(!logs.contains(&secret), "no secret in the logs");
}

/// What a connection from `source` to `addr` got for `GET /healthz`.
#[derive(Debug, PartialEq, Eq)]
enum Probe {
    /// Answered: the connection holds a slot (kept open in the stream).
    Served,
    /// Closed by the daemon without an answer.
    Closed,
    /// No answer within 5 s: waiting in the backlog of a full listener.
    Waiting,
}

async fn probe(addr: &str, source: &str) -> (Probe, TcpStream) {
    let mut stream = Http::from_source(addr, source).connect().await;
    let _ = stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let mut buf = [0u8; 512];
    let probe = match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
        Err(_) => Probe::Waiting,
        Ok(Ok(n)) if n > 0 => {
            assert!(buf.starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
            Probe::Served
        }
        Ok(_) => Probe::Closed,
    };
    (probe, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_outside_the_allow_list_is_closed_at_accept_and_holds_no_slot() {
    let sandbox = Sandbox::new(112);
    let daemon = sandbox.start_with(&[
        "--webhook-allow-cidrs",
        "127.0.0.2/32",
        "--max-connections",
        "2",
        "--max-connections-per-source",
        "2",
    ]);
    let hook = daemon.webhook_addr.clone().unwrap();
    // More connections than the listener holds, from a refused source, kept open: each is
    // closed at once, unanswered (health included).
    let mut held = Vec::new();
    for _ in 0..3 {
        let (got, stream) = probe(&hook, "127.0.0.1").await;
        assert_eq!(got, Probe::Closed);
        held.push(stream);
    }
    // ...so the allowed source is served meanwhile.
    let (got, _stream) = probe(&hook, "127.0.0.2").await;
    assert_eq!(got, Probe::Served);
    let reply = Http::from_source(&hook, "127.0.0.2")
        .post_json(
            "/backup",
            &[("x-webhook-secret", &sandbox.keys.webhook_secret)],
            &json!({"clientId": "allowed", "share": "s"}),
        )
        .await;
    assert_eq!(reply.status, 200);
    // Each refused connection counts as a refused webhook call.
    let text = scrape(&daemon).await;
    assert_eq!(webhook_calls(&text, "Connection", "forbidden"), 3, "{text}");
    let logs = daemon.logs();
    assert!(
        logs.contains("outside the webhook allow-list") && logs.contains("127.0.0.1"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_sources_cannot_fill_a_listener() {
    let sandbox = Sandbox::new(113);
    // The default per-source limit: an eight-connection listener holds one per source.
    let daemon = sandbox.start_with(&["--max-connections", "8"]);
    let hook = daemon.webhook_addr.clone().unwrap();
    let mut held = Vec::new();
    for source in ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"] {
        let mut served = 0;
        for _ in 0..3 {
            let (got, stream) = probe(&hook, source).await;
            assert_ne!(got, Probe::Waiting, "{source}: the listener is full");
            served += usize::from(got == Probe::Served);
            held.push(stream);
        }
        assert_eq!(
            served, 1,
            "{source} holds one connection (8 / 16, at least one)"
        );
    }
    // Four sources trying their hardest leave room for others.
    let (got, _stream) = probe(&hook, "127.0.0.6").await;
    assert_eq!(got, Probe::Served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_past_the_limit_are_answered_later_and_later() {
    use sharevault::auth::PENALTY_STEP;
    let sandbox = Sandbox::new(114);
    let daemon = sandbox.start_with(&["--auth-failure-limit", "2"]);
    let hook = daemon.webhook_addr.clone().unwrap();
    let guesser = Http::from_source(&hook, "127.0.0.2");
    let body = json!({"clientId": "guessed", "share": "s"});
    let guess = |n: u32| {
        let (guesser, body) = (&guesser, &body);
        async move {
            let secret = format!("guess-number-{n}-0123456789");
            let started = std::time::Instant::now();
            let reply = guesser
                .post_json("/backup", &[("x-webhook-secret", &secret)], body)
                .await;
            (reply.status, started.elapsed())
        }
    };
    for n in 0..2 {
        assert_eq!(guess(n).await.0, 401);
    }
    // Each failure past the limit waits PENALTY_STEP longer than the one before.
    for over in 1..=4u32 {
        let (status, took) = guess(over + 1).await;
        assert_eq!(status, 429);
        assert!(
            took >= PENALTY_STEP * over,
            "failure {over} past the limit: {took:?}"
        );
    }
    // The right secret is still served from that source.
    let right = guesser
        .post_json(
            "/backup",
            &[("x-webhook-secret", &sandbox.keys.webhook_secret)],
            &body,
        )
        .await;
    assert_eq!(right.status, 200);

    // The private listener's gRPC services hold back their limited failures too.
    let mut api =
        pb::backup_service_client::BackupServiceClient::new(daemon.channel_from("127.0.0.3").await);
    let mut took = Duration::ZERO;
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let _ = api
            .list_backups(crate::harness::with_token(
                pb::ListBackupsRequest {
                    client_id: "guessed".into(),
                },
                "svt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            ))
            .await
            .unwrap_err();
        took = started.elapsed();
    }
    assert!(took >= PENALTY_STEP, "{took:?}");
}
