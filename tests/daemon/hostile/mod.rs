//! Hostile requests over the wire: a table of malformed requests to the webhook listener and
//! the JSON API, each with its documented status and `error.code`, then proof that none of
//! them stored anything or leaked what it carried, and that the daemon still serves.
//!
//! Every case that can carries a marker (`PLANTED-SECRET-<n>`) in a share, a cipherText, a
//! webhook secret or a token; no answer, log line or metric may contain one.

mod api_cases;
mod check;
mod protocol_cases;
mod table;
mod webhook_cases;

use crate::harness::{Daemon, Sandbox, create_token, with_secret, with_token};
use crate::http_client::Http;
use serde_json::json;
use sharevault::pb::{self, Role};
use std::collections::BTreeMap;
use std::time::Duration;
use table::{
    API_VICTIM, Expect, JSON, MARKER, MAX_REQUEST_BYTES, MAX_SECRET_BYTES, Table, To,
    WEBHOOK_VICTIM,
};
use tokio::io::AsyncWriteExt;

/// The daemon under attack, its two listeners and its credentials.
struct Target {
    sandbox: Sandbox,
    daemon: Daemon,
    webhook: String,
    api: String,
    secret: String,
    token: String,
    bearer: String,
}

impl Target {
    async fn start() -> Self {
        let sandbox = Sandbox::new(60);
        let max_request = MAX_REQUEST_BYTES.to_string();
        let max_secret = MAX_SECRET_BYTES.to_string();
        let daemon = sandbox.start_with(&[
            "--max-request-bytes",
            &max_request,
            "--max-share-bytes",
            &max_secret,
            "--max-cipher-text-bytes",
            &max_secret,
            // Every wrong credential below is answered 401 rather than rate limited.
            "--auth-failure-limit",
            "0",
        ]);
        let webhook = daemon.webhook_addr.clone().unwrap();
        let api = daemon.endpoint.trim_start_matches("http://").to_owned();
        let secret = sandbox.keys.webhook_secret.clone();
        let token = create_token(
            &daemon,
            &sandbox.keys.admin_token,
            "backend",
            Role::Backend as i32,
        )
        .await;
        Self {
            bearer: format!("Bearer {token}"),
            sandbox,
            daemon,
            webhook,
            api,
            secret,
            token,
        }
    }

    /// Every case: the webhook's, then the protocol's, then the JSON API's.
    fn table(&self) -> Table {
        let mut table = Table {
            cases: Vec::new(),
            secret: self.secret.clone(),
            bearer: self.bearer.clone(),
        };
        webhook_cases::webhook_cases(&mut table);
        protocol_cases::protocol_cases(&mut table);
        api_cases::api_cases(&mut table);
        table
    }
}

/// What the table's run saw: every answer's body, and how many of each status per listener.
struct Run {
    answers: Vec<Vec<u8>>,
    statuses: BTreeMap<(To, String), usize>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_store_nothing_and_leak_nothing() {
    let target = Target::start().await;
    let table = target.table();

    // Slow-loris connections trickle their headers to both listeners while the table runs
    // (the daemon drops them after its 10 s header timeout; the table takes far less).
    let lorises: Vec<_> = (0..8)
        .map(|i| {
            let addr = if i % 2 == 0 {
                &target.webhook
            } else {
                &target.api
            };
            tokio::spawn(slow_loris(addr.clone(), format!("{MARKER}loris-{i}")))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let run = every_case_is_answered_as_expected(&target, &table).await;
    nothing_was_stored(&target).await;
    good_requests_are_still_served(&target).await;
    for loris in lorises {
        loris.abort();
    }
    nothing_leaked(&target, &run.answers).await;

    let summary: Vec<String> = run
        .statuses
        .iter()
        .map(|((to, status), n)| format!("{to:?} {status}: {n}"))
        .collect();
    eprintln!(
        "hostile: {} malformed requests answered as expected ({}); nothing stored, nothing leaked",
        table.cases.len(),
        summary.join(", ")
    );
}

/// Sends every case in turn and checks its answer; fails with every case that was wrong.
async fn every_case_is_answered_as_expected(target: &Target, table: &Table) -> Run {
    let mut failures = Vec::new();
    let mut run = Run {
        answers: Vec::new(),
        statuses: BTreeMap::new(),
    };
    for (n, case) in table.cases.iter().enumerate() {
        let outcome = check::exchange(case, &target.webhook, &target.api).await;
        let status = outcome
            .status
            .map_or_else(|| "closed".to_owned(), |s| s.to_string());
        if let Expect::StatusOrClosed(_) = case.expect {
            eprintln!(
                "hostile: case {} ({}): {status} {}",
                n + 1,
                case.name,
                outcome.content_type.as_deref().unwrap_or("")
            );
        }
        if let Err(problem) = check::check(case, &outcome) {
            failures.push(format!("case {} ({}): {problem}", n + 1, case.name));
        }
        *run.statuses.entry((case.to, status)).or_default() += 1;
        run.answers.push(outcome.body);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    run
}

/// Nothing was stored for the victims, nor for any client.
async fn nothing_was_stored(target: &Target) {
    let Target {
        daemon,
        secret,
        token,
        ..
    } = target;
    let fetched = Http::plain(&target.webhook)
        .post_json(
            "/backup/fetch",
            &[("x-webhook-secret", secret)],
            &json!({ "clientId": WEBHOOK_VICTIM }),
        )
        .await;
    assert_eq!(fetched.json(), json!({"backupShares": []}));
    let fetched = daemon
        .webhook()
        .await
        .fetch(with_secret(
            pb::FetchRequest {
                client_id: API_VICTIM.into(),
            },
            secret,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(fetched.backup_shares.is_empty());
    for client in [WEBHOOK_VICTIM, API_VICTIM, "other", "victim"] {
        assert!(
            list_backups(daemon, token, client).await.is_empty(),
            "{client} has backups"
        );
    }
    let pairs = Http::plain(&target.api)
        .send(
            "GET",
            &format!("/v1/clients/{API_VICTIM}/backup-share-pairs"),
            &[("authorization", &target.bearer)],
            None,
        )
        .await;
    assert_eq!(pairs.json(), json!({"backupSharePairs": []}));
    let status = daemon.status(&target.sandbox.keys.admin_token).await;
    assert_eq!(
        (status.custodian_shares, status.client_shares),
        (0, 0),
        "no share of any client was stored"
    );
}

/// The daemon still serves good requests, on both listeners, while the slow clients trickle.
async fn good_requests_are_still_served(target: &Target) {
    let hook = Http::plain(&target.webhook);
    let secret = [("x-webhook-secret", target.secret.as_str())];
    let good = hook
        .post_json(
            "/backup",
            &secret,
            &json!({"clientId": "survivor", "backupMethod": "PASSWORD-SECP256K1", "share": "fine"}),
        )
        .await;
    assert_eq!(good.status, 200, "{}", String::from_utf8_lossy(&good.body));
    let fetched = hook
        .post_json("/backup/fetch", &secret, &json!({"clientId": "survivor"}))
        .await;
    assert_eq!(fetched.json(), json!({"backupShares": ["fine"]}));
    let stored = Http::plain(&target.api)
        .send(
            "PUT",
            "/v1/clients/survivor/client-backup-shares/PASSWORD",
            &[JSON, ("authorization", &target.bearer)],
            Some(br#"{"cipherText":"also fine"}"#),
        )
        .await;
    assert_eq!(stored.status, 200);
}

/// No planted marker, secret or token in any answer, the logs or the metrics.
async fn nothing_leaked(target: &Target, answers: &[Vec<u8>]) {
    let metrics = Http::plain(&target.api)
        .send("GET", "/metrics", &[], None)
        .await;
    assert_eq!(metrics.status, 200);
    let metrics = String::from_utf8(metrics.body).unwrap();
    assert!(metrics.contains("sharevault_calls_total"), "{metrics}");
    let logs = target.daemon.logs();
    for (what, text) in [
        ("the logs", logs.as_str()),
        ("the metrics", metrics.as_str()),
    ] {
        assert!(
            !text.contains("PLANTED"),
            "a planted marker reached {what}:\n{text}"
        );
        assert!(
            !text.contains(&target.secret),
            "the webhook secret reached {what}"
        );
        assert!(!text.contains(&target.token), "the token reached {what}");
    }
    for answer in answers {
        assert!(!String::from_utf8_lossy(answer).contains("PLANTED"));
    }
}

/// Sends the request head byte by byte, slower than anyone would, until dropped.
async fn slow_loris(addr: String, secret_marker: String) {
    let mut stream = Http::plain(&addr).connect().await;
    let head = format!(
        "POST /backup HTTP/1.1\r\nhost: x\r\nx-webhook-secret: {secret_marker}\r\n\
         content-type: application/json\r\n"
    );
    for byte in head.bytes() {
        if stream.write_all(&[byte]).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn list_backups(daemon: &Daemon, token: &str, client: &str) -> Vec<pb::MethodBackups> {
    daemon
        .backup()
        .await
        .list_backups(with_token(
            pb::ListBackupsRequest {
                client_id: client.into(),
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
        .methods
}
