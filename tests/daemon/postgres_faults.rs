//! The vault on PostgreSQL when PostgreSQL is slow, out of reach or replaced by its standby:
//! a daemon never stalls, never loses an acknowledged write, and serves again by itself.

use crate::harness::{Daemon, Sandbox};
use crate::http_client::Http;
use crate::pg_server::PgServer;
use serde_json::json;
use std::time::{Duration, Instant};

/// The daemons' request timeout in these tests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// What a request may take past the request timeout (scheduling on a busy 2-core machine).
const SLACK: Duration = Duration::from_secs(1);

/// Lets a frozen server go on when dropped, so that a failed test does not leave it stopped.
struct Thaw<'a>(&'a PgServer);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        self.0.signal_all("CONT");
    }
}

fn webhook(daemon: &Daemon) -> Http {
    Http::plain(
        daemon
            .webhook_addr
            .as_deref()
            .expect("the webhook listener runs"),
    )
}

/// Sends one request, bounded well past the request timeout: `None` if no answer came.
async fn timed(
    http: &Http,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> (Option<u16>, Duration) {
    let sent = Instant::now();
    let answer = tokio::time::timeout(
        REQUEST_TIMEOUT * 4,
        http.try_send(method, path, headers, body),
    )
    .await;
    let status = match answer {
        Ok(Ok(reply)) => Some(reply.status),
        Ok(Err(_)) | Err(_) => None,
    };
    (status, sent.elapsed())
}

/// Portal's backup of `share` for `client` on the HTTP webhook.
async fn backup(hook: &Http, secret: &str, client: &str, share: &str) -> (Option<u16>, Duration) {
    let body = json!({"clientId": client, "backupMethod": "PASSWORD-SECP256K1", "share": share})
        .to_string();
    timed(
        hook,
        "POST",
        "/backup",
        &[
            ("x-webhook-secret", secret),
            ("content-type", "application/json"),
        ],
        Some(body.as_bytes()),
    )
    .await
}

/// PostgreSQL frozen (SIGSTOP of its postmaster and every backend: connections are accepted
/// by the kernel, nothing is answered) while requests with bogus tokens keep arriving on the
/// private listener. Every token lookup, `/healthz`, `/readyz` and `/metrics` waits off the
/// async workers with a deadline, so the webhook's `/healthz` and a correct webhook call
/// answer within the request timeout (the backup with 503, the database cannot confirm it),
/// as do the private probes; nothing hangs. Once PostgreSQL goes on (SIGCONT) everything
/// serves again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_database_never_stalls_the_daemon() {
    let server = PgServer::start();
    let sandbox = Sandbox::on_postgres(45, &server);
    let timeout = REQUEST_TIMEOUT.as_secs().to_string();
    let daemon = sandbox.start_with(&["--request-timeout-seconds", &timeout]);
    let secret = sandbox.keys.webhook_secret.clone();
    let (hook, private) = (webhook(&daemon), Http::plain(&daemon.endpoint));
    assert_eq!(
        backup(&hook, &secret, "before", "share-before").await.0,
        Some(200)
    );
    let bogus = [("authorization", "Bearer not-a-token-0123456789abcdef")];
    assert_eq!(
        timed(&private, "GET", "/v1/clients/c/backups", &bogus, None)
            .await
            .0,
        Some(401)
    );

    let frozen = server.signal_all("STOP");
    let thaw = Thaw(&server);
    // Requests with bogus tokens keep arriving, 8 at a time, for as long as it is frozen.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (http, stop) = (Http::plain(&daemon.endpoint), std::sync::Arc::clone(&stop));
        flood.spawn(async move {
            let mut sent = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && sent < 1000 {
                let _ = timed(&http, "GET", "/v1/clients/c/backups", &bogus, None).await;
                sent += 1;
            }
            sent
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut slowest = Duration::ZERO;
    let limit = REQUEST_TIMEOUT + SLACK;
    for round in 0..3 {
        let (health, took) = timed(&hook, "GET", "/healthz", &[], None).await;
        slowest = slowest.max(took);
        assert_eq!(
            health,
            Some(200),
            "the webhook's /healthz (round {round}) answered {health:?} after {took:?}"
        );
        assert!(took < limit, "the webhook's /healthz took {took:?}");
        let (written, took) = backup(&hook, &secret, &format!("frozen-{round}"), "x").await;
        slowest = slowest.max(took);
        assert_eq!(
            written,
            Some(503),
            "a backup while PostgreSQL is frozen answered {written:?} after {took:?}"
        );
        assert!(took < limit, "a backup took {took:?}");
        for path in ["/readyz", "/healthz", "/metrics"] {
            let (status, took) = timed(&private, "GET", path, &[], None).await;
            slowest = slowest.max(took);
            assert!(
                matches!(status, Some(200 | 503)),
                "{path} answered {status:?} after {took:?}"
            );
            assert!(took < limit, "{path} took {took:?}");
        }
    }
    eprintln!(
        "PostgreSQL frozen ({frozen} processes stopped): the slowest answer took {slowest:?} \
         (request timeout {REQUEST_TIMEOUT:?})"
    );

    drop(thaw);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut bogus_sent = 0;
    while let Some(sent) = flood.join_next().await {
        bogus_sent += sent.unwrap();
    }
    let thawed = Instant::now();
    let deadline = thawed + Duration::from_secs(30);
    loop {
        let (ready, _) = timed(&private, "GET", "/readyz", &[], None).await;
        let (written, _) = backup(&hook, &secret, "after", "share-after").await;
        if ready == Some(200) && written == Some(200) {
            break;
        }
        assert!(Instant::now() < deadline, "the daemon did not serve again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "{bogus_sent} requests with bogus tokens during the freeze; serving again {:?} after SIGCONT",
        thawed.elapsed()
    );
    let fetched = webhook(&daemon)
        .post_json(
            "/backup/fetch",
            &[("x-webhook-secret", secret.as_str())],
            &json!({"clientId": "before"}),
        )
        .await;
    assert_eq!(fetched.status, 200);
    assert!(String::from_utf8_lossy(&fetched.body).contains("share-before"));
}
