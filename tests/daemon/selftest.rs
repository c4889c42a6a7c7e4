//! `sharevault selftest`: passes against the daemon itself (plain with a path prefix, and
//! behind TLS), deletes its synthetic client when given a backend token, and fails, naming the
//! check, against small misbehaving webhooks started here.

use crate::cli::{Run, sharevault};
use crate::harness::{Daemon, Sandbox, fetch_shares, with_token};
use crate::http_client::TestCert;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Every check a run makes, in order (without `--token-file`).
const CHECKS: [&str; 11] = [
    "backup SECP256K1",
    "fetch after backup SECP256K1",
    "backup ED25519",
    "fetch after backup ED25519",
    "retry of backup SECP256K1",
    "fetch after retry",
    "overwrite SECP256K1",
    "fetch after overwrite",
    "backup with a wrong secret",
    "fetch without a secret",
    "oversized body (2048 KiB)",
];

/// Runs `sharevault selftest ARGS` on a blocking thread.
async fn selftest(dir: &Path, args: Vec<String>) -> Run {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut all = vec!["selftest".to_owned()];
        all.extend(args);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        sharevault(&dir, &refs, &[])
    })
    .await
    .unwrap()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The `{name: ok}` of a `--json` run's checks, in order.
fn verdicts(run: &Run) -> Vec<(String, bool)> {
    let report: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", run.stdout, run.stderr));
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_owned(), c["ok"] == true))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selftest_passes_against_the_daemon_behind_a_prefix_and_deletes_its_client() {
    let sandbox = Sandbox::new(71);
    let daemon = sandbox.start_with(&["--webhook-path-prefix", "/portal/hook"]);
    let backend = sandbox.backend_token(&daemon).await;
    let token_file = sandbox.tmp.path().join("backend-token");
    std::fs::write(&token_file, &backend).unwrap();
    let url = format!(
        "http://{}/portal/hook/",
        daemon.webhook_addr.as_ref().unwrap()
    );
    let secret_file = sandbox.keys.dir.join("webhook-secret");
    let connect = daemon.endpoint.clone();
    let base = strings(&["--webhook-url", &url, "--webhook-secret-file"]);
    let mut args = base.clone();
    args.push(secret_file.display().to_string());

    // Without a token: every check passes, one line each, and the client stays, with the
    // overwritten share and the other curve's share, as Portal sent them.
    let run = selftest(sandbox.tmp.path(), args.clone()).await;
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    for (line, name) in lines[1..=CHECKS.len()].iter().zip(CHECKS) {
        assert!(line.starts_with(&format!("ok    {name} ")), "{line}");
    }
    assert!(
        run.stdout.ends_with("all 11 checks passed\n"),
        "{}",
        run.stdout
    );
    let client_id = lines[0].rsplit(' ').next().unwrap().to_owned();
    assert!(client_id.starts_with("sharevault-selftest-"), "{client_id}");
    assert!(
        run.stdout.contains(&format!(
            "DELETE /v1/clients/{client_id} on the private listener"
        )),
        "{}",
        run.stdout
    );
    let mut webhook = daemon.webhook().await;
    let secret = &sandbox.keys.webhook_secret;
    let kept = fetch_shares(&mut webhook, secret, client_id.clone()).await;
    assert_eq!(kept.len(), 2, "{kept:?}");
    for pair in ["SECP256K1-2", "ED25519-1"] {
        let pair = format!("\"backupSharePairId\": \"{client_id}-{pair}\",");
        assert!(kept.iter().any(|s| s.contains(&pair)), "{pair}");
    }

    // A token that is not a backend token is refused before anything is written.
    let mut wrong = args.clone();
    let admin_file = sandbox.keys.dir.join("admin-token").display().to_string();
    wrong.extend(strings(&[
        "--token-file",
        &admin_file,
        "--connect",
        &connect,
    ]));
    let run = selftest(sandbox.tmp.path(), wrong).await;
    assert!(!run.ok && run.stdout.is_empty(), "{}", run.stdout);
    assert!(
        run.stderr.contains("must hold a backend token"),
        "{}",
        run.stderr
    );

    // With a backend token: the synthetic client is deleted, as the API then shows.
    args.extend(strings(&["--json", "--connect", &connect, "--token-file"]));
    args.push(token_file.display().to_string());
    let run = selftest(sandbox.tmp.path(), args).await;
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    let mut expected: Vec<(String, bool)> = CHECKS.iter().map(|c| (c.to_string(), true)).collect();
    expected.push(("delete the synthetic client".into(), true));
    assert_eq!(verdicts(&run), expected);
    // Neither the webhook secret nor the token is ever printed.
    for secret in [&sandbox.keys.webhook_secret, &backend] {
        assert!(!run.stdout.contains(secret.as_str()) && !run.stderr.contains(secret.as_str()));
    }
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(report["note"].is_null(), "{report}");
    let deleted_id = report["client_id"].as_str().unwrap().to_owned();
    assert!(deleted_id.starts_with("sharevault-selftest-") && deleted_id != client_id);
    assert_eq!(report["failed"], 0);
    assert!(
        fetch_shares(&mut webhook, secret, deleted_id.clone())
            .await
            .is_empty()
    );
    let listed = daemon
        .backup()
        .await
        .list_backups(with_token(
            sharevault::pb::ListBackupsRequest {
                client_id: deleted_id,
            },
            &backend,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.methods.is_empty(), "{listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selftest_passes_through_tls_with_a_prefix_and_refuses_an_untrusted_certificate() {
    let sandbox = Sandbox::new(72);
    let cert = TestCert::new(sandbox.tmp.path());
    let daemon: Daemon = sandbox.start_with(&[
        "--http-tls-cert-file",
        &cert.cert_file.display().to_string(),
        "--http-tls-key-file",
        &cert.key_file.display().to_string(),
        "--webhook-path-prefix",
        "/portal/webhook",
    ]);
    let url = format!(
        "https://{}/portal/webhook",
        daemon.webhook_addr.as_ref().unwrap()
    );
    let secret_file = sandbox
        .keys
        .dir
        .join("webhook-secret")
        .display()
        .to_string();
    let args = |ca: &Path| {
        strings(&[
            "--webhook-url",
            &url,
            "--webhook-secret-file",
            &secret_file,
            "--json",
            "--ca-file",
            &ca.display().to_string(),
        ])
    };
    let run = selftest(sandbox.tmp.path(), args(&cert.cert_file)).await;
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    assert!(verdicts(&run).iter().all(|(_, ok)| *ok));
    assert_eq!(verdicts(&run).len(), CHECKS.len());

    // Another CA: the first call fails at the TLS handshake, as Portal's would with a chain
    // it does not trust, and the replay stops there.
    let other_dir = sandbox.tmp.path().join("other-ca");
    std::fs::create_dir(&other_dir).unwrap();
    let other = TestCert::new(&other_dir);
    let run = selftest(sandbox.tmp.path(), args(&other.cert_file)).await;
    assert!(!run.ok);
    assert_eq!(verdicts(&run), vec![("backup SECP256K1".to_owned(), false)]);
    assert!(run.stdout.contains("TLS handshake"), "{}", run.stdout);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["stopped_unreachable"], true);
    // Nothing was written, so there is nothing to delete.
    assert!(report["note"].is_null(), "{report}");
    assert!(
        run.stderr.contains(
            "1 of 1 checks failed: backup SECP256K1; the webhook could not be reached, so \
             the other checks were not run"
        ),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selftest_says_when_the_vault_it_cleans_up_is_not_the_webhooks() {
    // The webhook is a stand-in; --connect names a daemon that never saw the synthetic client.
    let sandbox = Sandbox::new(73);
    let daemon = sandbox.start();
    let token_file = sandbox.tmp.path().join("backend-token");
    std::fs::write(&token_file, sandbox.backend_token(&daemon).await).unwrap();
    let secret = "stand-in-webhook-secret-0123456789";
    let secret_file = sandbox.tmp.path().join("secret");
    std::fs::write(&secret_file, secret).unwrap();
    let url = stand_in(secret, Fault::None).await;
    let args = strings(&[
        "--webhook-url",
        &url,
        "--webhook-secret-file",
        &secret_file.display().to_string(),
        "--token-file",
        &token_file.display().to_string(),
        "--connect",
        &daemon.endpoint,
    ]);
    let run = selftest(sandbox.tmp.path(), args).await;
    assert!(!run.ok, "{}", run.stdout);
    let last = run.stdout.lines().last().unwrap();
    assert!(
        last.starts_with("FAIL  delete the synthetic client")
            && last.ends_with(
                "held nothing for the synthetic client: is it the vault behind the webhook?"
            ),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr
            .contains("1 of 12 checks failed: delete the synthetic client")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selftest_stops_when_the_webhook_never_completes_a_handshake() {
    // A port that takes connections (the kernel's backlog) but never speaks TLS.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "stand-in-webhook-secret-0123456789").unwrap();
    let cert = TestCert::new(dir.path());
    let url = format!("https://{}/hook", silent.local_addr().unwrap());
    let args = strings(&[
        "--webhook-url",
        &url,
        "--webhook-secret-file",
        &secret_file.display().to_string(),
        "--ca-file",
        &cert.cert_file.display().to_string(),
        "--timeout-ms",
        "300",
    ]);
    let run = selftest(dir.path(), args).await;
    assert!(!run.ok);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", run.stdout);
    assert!(
        lines[1].starts_with("FAIL  backup SECP256K1")
            && lines[1].contains("no connection to 127.0.0.1:")
            && lines[1].contains("within 300 ms, the time Portal waits"),
        "{}",
        lines[1]
    );
    assert!(
        run.stderr.contains("the other checks were not run"),
        "{}",
        run.stderr
    );
    drop(silent);
}

/// How a stand-in webhook misbehaves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// `/backup/fetch` answers `{"shares": [...]}`.
    WrongShape,
    /// Keeps the share parsed and answers it re-serialised.
    Reserialises,
    /// `/backup/fetch` answers after 2 s.
    SlowFetch,
    /// `/backup/fetch` answers without checking the secret.
    OpenFetch,
    /// Takes a body of any size.
    NoLimit,
}

struct StandIn {
    secret: String,
    fault: Fault,
    shares: Mutex<BTreeMap<(String, String), String>>,
}

impl StandIn {
    fn authorized(&self, headers: &HeaderMap) -> bool {
        headers.get("x-webhook-secret").map(|v| v.as_bytes()) == Some(self.secret.as_bytes())
    }
}

async fn stand_in_backup(
    State(s): State<Arc<StandIn>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !s.authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let share = request["share"].as_str().unwrap_or_default();
    let kept = if s.fault == Fault::Reserialises {
        serde_json::from_str::<Value>(share).unwrap().to_string()
    } else {
        share.to_owned()
    };
    let key = (
        request["clientId"].as_str().unwrap_or_default().to_owned(),
        request["backupMethod"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    );
    s.shares.lock().unwrap().insert(key, kept);
    axum::Json(json!({"message": "stored"})).into_response()
}

async fn stand_in_fetch(
    State(s): State<Arc<StandIn>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !s.authorized(&headers) && s.fault != Fault::OpenFetch {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if s.fault == Fault::SlowFetch {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or_default();
    let client = request["clientId"].as_str().unwrap_or_default();
    let shares: Vec<String> = s
        .shares
        .lock()
        .unwrap()
        .iter()
        .filter(|((c, _), _)| c == client)
        .map(|(_, share)| share.clone())
        .collect();
    let key = if s.fault == Fault::WrongShape {
        "shares"
    } else {
        "backupShares"
    };
    axum::Json(json!({ key: shares })).into_response()
}

/// Serves a stand-in webhook on a loopback port under `/hook`; answers its base URL.
async fn stand_in(secret: &str, fault: Fault) -> String {
    let state = Arc::new(StandIn {
        secret: secret.to_owned(),
        fault,
        shares: Mutex::new(BTreeMap::new()),
    });
    let app = Router::new()
        .route("/hook/backup", post(stand_in_backup))
        .route("/hook/backup/fetch", post(stand_in_fetch))
        .layer(if fault == Fault::NoLimit {
            DefaultBodyLimit::disable()
        } else {
            DefaultBodyLimit::max(64 * 1024)
        })
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/hook")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selftest_names_the_check_a_misbehaving_webhook_fails() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "stand-in-webhook-secret-0123456789";
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let fetches = vec![
        "fetch after backup SECP256K1",
        "fetch after backup ED25519",
        "fetch after retry",
        "fetch after overwrite",
    ];
    let portal = "a real Portal call would have seen WEBHOOK_FAILED";
    for (fault, failing, why, consequence) in [
        (Fault::None, vec![], "", ""),
        (
            Fault::WrongShape,
            fetches.clone(),
            "the answer has no `backupShares` list",
            portal,
        ),
        (
            Fault::Reserialises,
            fetches.clone(),
            "share came back re-serialised (the same JSON in other bytes)",
            portal,
        ),
        (
            Fault::SlowFetch,
            fetches.clone(),
            "no complete answer within 400 ms",
            portal,
        ),
        (
            Fault::OpenFetch,
            vec!["fetch without a secret"],
            "answered 200 instead of 401",
            "hands every share to anyone who reaches it",
        ),
        (
            Fault::NoLimit,
            vec!["oversized body (2048 KiB)"],
            "answered 200 instead of 413",
            "far larger than any share with 413",
        ),
    ] {
        let url = stand_in(secret, fault).await;
        let args = strings(&[
            "--webhook-url",
            &url,
            "--webhook-secret-file",
            &secret_file.display().to_string(),
            "--timeout-ms",
            "400",
        ]);
        let run = selftest(dir.path(), args).await;
        if fault == Fault::None {
            // A webhook that is not sharevault but keeps Portal's contract passes.
            assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
            continue;
        }
        assert!(!run.ok, "{}", run.stdout);
        let summary = format!(
            "{} of 11 checks failed: {}",
            failing.len(),
            failing.join(", ")
        );
        assert!(run.stderr.contains(&summary), "{}", run.stderr);
        for name in CHECKS {
            let failed = failing.contains(&name);
            let line = run
                .stdout
                .lines()
                .find(|l| l[6..].starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no line for {name}: {}", run.stdout));
            assert_eq!(line.starts_with("FAIL  "), failed, "{line}");
            if failed {
                assert!(line.contains(why), "{line}");
                assert!(line.ends_with(consequence), "{line}");
            }
        }
    }
}
