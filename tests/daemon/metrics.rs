//! `/metrics` of a live daemon checked by promtool, the alert rules checked and unit-tested
//! by promtool, and the Grafana dashboard and alerts referring only to metrics the daemon
//! exports.

use crate::harness::{Daemon, Sandbox, with_token};
use crate::http_client::Http;
use serde_json::json;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const CONTRIB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib");

/// promtool, or a failure that says how to install it.
fn promtool() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("promtool"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("promtool is missing: install it with `apt-get install prometheus` (Debian)")
    })
}

/// Runs promtool with `args` (and `stdin`), and returns its combined output if it succeeded.
fn run_promtool(args: &[&str], stdin: Option<&str>, dir: &Path) -> String {
    let mut child = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// The daemon's `/metrics` text, after checking its status and content type.
async fn scrape(daemon: &Daemon) -> String {
    let reply = Http::plain(&daemon.endpoint)
        .send("GET", "/metrics", &[], None)
        .await;
    assert_eq!(reply.status, 200);
    let content_type = reply.headers["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    String::from_utf8(reply.body).unwrap()
}

/// The value of the sample `series` (name and labels exactly as exported).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        .parse()
        .unwrap()
}

/// Metric names the text exports: its samples' names, and the histograms' family names.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            names.extend(rest.split(' ').next().map(str::to_owned));
        } else if !line.starts_with('#') {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// Webhook calls (one stored, one with a wrong secret), a JSON API call and an audit
/// verification, then a scrape.
async fn scrape_after_some_calls(sandbox: &Sandbox, daemon: &Daemon) -> String {
    let webhook = Http::plain(daemon.webhook_addr.as_deref().unwrap());
    let body = json!({"clientId": "metrics-client", "backupMethod": "PASSWORD-SECP256K1",
        "share": "{\"backupSharePairId\":\"pair-m\",\"share\":\"s\"}"});
    let secret = sandbox.keys.webhook_secret.as_str();
    for (presented, status) in [(secret, 200), ("not-the-secret-0123456789", 401)] {
        let reply = webhook
            .post_json("/backup", &[("x-webhook-secret", presented)], &body)
            .await;
        assert_eq!(reply.status, status);
    }
    let token = sandbox.backend_token(daemon).await;
    let auth = format!("Bearer {token}");
    let listed = Http::plain(&daemon.endpoint)
        .send(
            "GET",
            "/v1/clients/metrics-client/backups",
            &[("authorization", &auth)],
            None,
        )
        .await;
    assert_eq!(listed.status, 200);
    let admin = &sandbox.keys.admin_token;
    assert!(daemon.verify_audit(admin).await.ok);
    let _ = daemon
        .admin()
        .await
        .get_status(with_token(sharevault::pb::GetStatusRequest {}, "wrong"))
        .await
        .unwrap_err();
    scrape(daemon).await
}

/// A live scrape passes `promtool check metrics`, keeps every name docs/monitoring.md lists, and
/// counts the calls, the failed authentications and the audit verification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_scrape_passes_promtool_and_counts_the_calls() {
    let sandbox = Sandbox::new(91);
    let daemon = sandbox.start();
    let text = scrape_after_some_calls(&sandbox, &daemon).await;
    let lint = run_promtool(&["check", "metrics"], Some(&text), Path::new("."));
    assert!(lint.trim().is_empty(), "promtool found problems:\n{lint}");

    let names = exported_names(&text);
    for name in [
        "sharevault_calls_total",
        "sharevault_call_duration_seconds",
        "sharevault_commit_duration_seconds",
        "sharevault_committed_operations_total",
        "sharevault_commit_batches_total",
        "sharevault_failed_batches_total",
        "sharevault_slow_reads_total",
        "sharevault_offloaded_reads_total",
        "sharevault_overloaded_total",
        "sharevault_records",
        "sharevault_database_bytes",
        "sharevault_uptime_seconds",
        "sharevault_ready",
        "sharevault_seal_reachable",
        "sharevault_auth_failures_total",
        "sharevault_disk_reserve_refusals_total",
        "sharevault_audit_chain_broken_total",
        "sharevault_reloads_total",
    ] {
        assert!(names.contains(name), "{name} is not exported:\n{text}");
    }
    let webhook = "sharevault_calls_total{service=\"WebhookHttp\",method=\"Backup\"";
    assert_eq!(sample(&text, &format!("{webhook},outcome=\"ok\"}}")), 1.0);
    assert_eq!(
        sample(&text, &format!("{webhook},outcome=\"unauthenticated\"}}")),
        1.0
    );
    assert_eq!(sample(&text, "sharevault_auth_failures_total"), 2.0);
    assert_eq!(sample(&text, "sharevault_audit_chain_broken_total"), 0.0);
    assert_eq!(sample(&text, "sharevault_disk_reserve_refusals_total"), 0.0);
    assert_eq!(sample(&text, "sharevault_ready"), 1.0);
    assert_eq!(sample(&text, "sharevault_seal_reachable"), 1.0);
    assert_eq!(
        sample(&text, "sharevault_records{table=\"custodian_shares\"}"),
        1.0
    );
    assert!(sample(&text, "sharevault_commit_batches_total") >= 2.0);
    assert!(!text.contains("metrics-client") && !text.contains("pair-m"));
}

/// The alert rules pass `promtool check rules` and their unit tests.
#[test]
fn the_alert_rules_pass_promtool_check_and_test() {
    let dir = Path::new(CONTRIB).join("prometheus");
    let checked = run_promtool(&["check", "rules", "alerts.yml"], None, &dir);
    assert!(checked.contains("SUCCESS: 7 rules found"), "{checked}");
    let tested = run_promtool(&["test", "rules", "alerts_test.yml"], None, &dir);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// `sharevault_...` names in `expr`, a histogram's series reduced to its family.
fn referenced_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("sharevault_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = name.strip_suffix("_bucket").unwrap_or(name);
        names.push(family.to_owned());
        rest = &tail[end..];
    }
    names
}

/// The Grafana dashboard parses and, like the alerts, refers only to metrics that a live
/// daemon exports (the alerts also to `sharevault_seal_reachable`, which a seal will export).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_alerts_refer_only_to_exported_metrics() {
    let sandbox = Sandbox::new(92);
    let daemon = sandbox.start();
    let exported = exported_names(&scrape_after_some_calls(&sandbox, &daemon).await);
    let path = Path::new(CONTRIB).join("grafana/sharevault.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(exprs.len() >= 15, "{exprs:?}");
    let mut used: BTreeSet<String> = exprs.iter().flat_map(|e| referenced_names(e)).collect();
    for name in &used {
        assert!(
            exported.contains(name),
            "the dashboard uses {name}, which is not exported"
        );
    }
    let alerts = std::fs::read_to_string(Path::new(CONTRIB).join("prometheus/alerts.yml")).unwrap();
    for name in referenced_names(&alerts) {
        if name != "sharevault_seal_reachable" {
            assert!(
                exported.contains(&name),
                "an alert uses {name}, which is not exported"
            );
        }
        used.insert(name);
    }
    // Every figure the alerts need is on the dashboard.
    for needed in [
        "sharevault_auth_failures_total",
        "sharevault_disk_reserve_refusals_total",
        "sharevault_audit_chain_broken_total",
    ] {
        assert!(used.contains(needed), "{needed}");
    }
}
