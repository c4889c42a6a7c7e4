//! Progress of the long commands on stderr when it is not a terminal: plain lines with the
//! figures, the results on stdout unchanged, and nothing with `--json` or `--quiet`. The
//! daemon holds 1,100 custodian shares, a page (1,024) and a bit, so that verify and restore
//! report a step between the start and the end.

use crate::cli::{Admin, Run, backup, sharevault};
use crate::harness::{Daemon, Keys, Sandbox, with_secret, with_token};
use sharevault::cli::progress::grouped;
use sharevault::pb;

const RECORDS: usize = 1_100;
/// Every progress update printed, so that a fast run shows its lines.
const EVERY_UPDATE: &[(&str, &str)] = &[("SHAREVAULT_PROGRESS_INTERVAL_MS", "0")];

/// Stores `RECORDS` custodian shares, 16 calls at a time.
async fn fill(daemon: &Daemon, sandbox: &Sandbox) {
    let mut calls = tokio::task::JoinSet::new();
    let webhook = daemon.webhook().await;
    for i in 0..RECORDS {
        let mut webhook = webhook.clone();
        let secret = sandbox.keys.webhook_secret.clone();
        calls.spawn(async move {
            let share = format!("{{\"backupSharePairId\":\"pair-{i}\",\"share\":\"s\"}}");
            let request = pb::BackupRequest {
                client_id: format!("progress-{i}"),
                backup_method: "PASSWORD-SECP256K1".into(),
                share,
                backup_share_pair_id: None,
            };
            webhook.backup(with_secret(request, &secret)).await.unwrap();
        });
        if calls.len() == 16 {
            calls.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(call) = calls.join_next().await {
        call.unwrap();
    }
}

/// The stderr line that starts with `start`; fails showing stderr if there is none.
fn line<'r>(run: &'r Run, start: &str) -> &'r str {
    assert!(run.ok, "failed: {}", run.stderr);
    run.stderr
        .lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no stderr line starting {start:?}:\n{}", run.stderr))
}

/// Verify reports the start, the first page with its rate and time left, and the end; its
/// stdout is the same as with `--quiet`, which prints nothing on stderr.
fn verify_shows_the_records_opened(admin: &Admin) {
    let run = admin.run_with_env(&["verify"], EVERY_UPDATE);
    line(&run, "verify: 0 of 1,100 records (0 %)");
    let step = line(&run, "verify: 1,024 of 1,100 records (93 %), ");
    assert!(
        step.contains("/s, about ") && step.ends_with(" left"),
        "{step}"
    );
    line(&run, "verify: 1,100 of 1,100 records (100 %)");
    let quiet = admin.run_with_env(&["verify", "--quiet"], EVERY_UPDATE);
    assert!(quiet.ok && quiet.stderr.is_empty(), "{}", quiet.stderr);
    assert_eq!(run.stdout, quiet.stdout);
    assert!(
        run.stdout.contains("custodian_shares  1100"),
        "{}",
        run.stdout
    );
}

/// The audit trail's commands count events up to the head the daemon reports.
fn audit_shows_the_events_checked_and_exported(admin: &Admin, head: u64) {
    let head = grouped(head);
    let run = admin.run_with_env(&["audit", "verify"], EVERY_UPDATE);
    line(&run, "audit verify: 0 of ");
    line(
        &run,
        &format!("audit verify: {head} of {head} events (100 %)"),
    );
    assert!(
        run.stdout.starts_with("audit trail intact"),
        "{}",
        run.stdout
    );

    let run = admin.run_with_env(&["audit", "export"], EVERY_UPDATE);
    line(&run, &format!("audit export: 1 of {head} events ("));
    line(
        &run,
        &format!("audit export: {head} of {head} events (100 %)"),
    );
    let quiet = admin.run_with_env(&["audit", "export", "--quiet"], EVERY_UPDATE);
    assert!(quiet.ok && quiet.stderr.is_empty(), "{}", quiet.stderr);
    assert_eq!(run.stdout, quiet.stdout, "the exported lines are the same");
}

/// A snapshot counts the records it receives, a restore the MiB it authenticates, then the
/// records it checks and writes.
fn snapshot_and_restore_show_the_records(sandbox: &Sandbox, admin: &Admin) {
    let snap = sandbox.tmp.path().join("progress.snapshot");
    let run = admin.run_with_env(&["snapshot", "--to", snap.to_str().unwrap()], EVERY_UPDATE);
    let last = line(&run, "snapshot: ");
    let total = last
        .split(" of ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    line(
        &run,
        &format!("snapshot: {total} of {total} records (100 %)"),
    );

    let restore = |dir: &str, extra: &[&str]| {
        let target = sandbox.tmp.path().join(dir);
        let key = sandbox.keys.master_key_file.display().to_string();
        let mut args = vec!["restore", "--from", snap.to_str().unwrap()];
        args.extend(["--master-key-file", &key, "--data-dir"]);
        args.push(target.to_str().unwrap());
        args.extend(extra);
        sharevault(sandbox.tmp.path(), &args, EVERY_UPDATE)
    };
    let run = restore("restored", &[]);
    // The file is under 1 MiB: its authentication ends at 0 of 0 MiB.
    line(&run, "restore, authenticating: 0 MiB");
    line(&run, &format!("restore: 0 of {total} records (0 %)"));
    line(&run, &format!("restore: 1,024 of {total} records ("));
    line(
        &run,
        &format!("restore: {total} of {total} records (100 %)"),
    );
    assert!(
        run.stdout.contains("1100 custodian shares"),
        "{}",
        run.stdout
    );

    let quiet = restore("restored-quietly", &["--quiet"]);
    assert!(quiet.ok && quiet.stderr.is_empty(), "{}", quiet.stderr);
    let json = admin.run_with_env(
        &["snapshot", "--to", snap.to_str().unwrap(), "--json"],
        EVERY_UPDATE,
    );
    assert_eq!(json.json()["records"]["custodian_shares"], 1100);
    assert!(json.stderr.is_empty(), "{}", json.stderr);
}

/// The rotation counts the records re-wrapped; `--json` verifies stay silent on stderr.
fn rekey_shows_the_records_rewrapped(sandbox: &Sandbox, admin: &Admin) {
    let keys = Keys::new(&sandbox.tmp.path().join("new-keys"), 95);
    let file = keys.master_key_file.to_str().unwrap();
    let run = admin.run_with_env(&["rekey", "--new-master-key-file", file], EVERY_UPDATE);
    line(&run, "rekey: 1,100 of 1,100 records (100 %)");
    assert!(run.stdout.contains("1100 records"), "{}", run.stdout);
    for args in [&["verify", "--json"][..], &["audit", "verify", "--json"]] {
        let run = admin.run_with_env(args, EVERY_UPDATE);
        assert!(run.ok && run.stderr.is_empty(), "{args:?}: {}", run.stderr);
        run.json();
    }
}

/// `VerifyWithProgress` streams counts that only grow, up to the total, then the result that
/// the unary `Verify` answers, which existing clients keep calling.
async fn the_daemon_streams_the_progress_of_a_verify(daemon: &Daemon, admin_token: &str) {
    let mut stream = daemon
        .admin()
        .await
        .verify_with_progress(with_token(pb::VerifyRequest {}, admin_token))
        .await
        .unwrap()
        .into_inner();
    let mut steps = Vec::new();
    while let Some(step) = stream.message().await.unwrap() {
        steps.push(step);
    }
    let counts: Vec<(u64, u64)> = steps.iter().map(|s| (s.done, s.total)).collect();
    assert_eq!(
        counts,
        [(0, 1100), (1024, 1100), (1100, 1100), (1100, 1100)]
    );
    assert!(steps[..3].iter().all(|s| s.result.is_none()));
    let streamed = steps.pop().unwrap().result.unwrap();
    assert_eq!(streamed, daemon.verify(admin_token).await);
    assert_eq!((streamed.custodian_shares, streamed.failed), (1100, 0));
}

/// The streamed progress of a verify; then verify, the audit trail's commands, snapshot,
/// restore and rekey from the command line, against one daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_commands_print_progress_lines_when_stderr_is_not_a_terminal() {
    let sandbox = Sandbox::new(94);
    let daemon = sandbox.start();
    let admin = Admin::new(&sandbox, &daemon);
    fill(&daemon, &sandbox).await;
    the_daemon_streams_the_progress_of_a_verify(&daemon, &sandbox.keys.admin_token).await;
    verify_shows_the_records_opened(&admin);
    let head = daemon
        .status(&sandbox.keys.admin_token)
        .await
        .audit_head_seq;
    assert!(head >= RECORDS as u64, "{head}");
    audit_shows_the_events_checked_and_exported(&admin, head);
    snapshot_and_restore_show_the_records(&sandbox, &admin);
    rekey_shows_the_records_rewrapped(&sandbox, &admin);
}

/// By default a line comes every 5 s: a quick command prints none; a bad interval is refused
/// before anything is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_lines_come_every_few_seconds_and_a_bad_interval_is_refused() {
    let sandbox = Sandbox::new(96);
    let daemon = sandbox.start();
    let admin = Admin::new(&sandbox, &daemon);
    backup(&daemon, &sandbox, "quick", "PASSWORD-SECP256K1", "pair-q").await;
    let run = admin.run(&["verify"]);
    assert!(run.ok && run.stderr.is_empty(), "{}", run.stderr);
    let env = [("SHAREVAULT_PROGRESS_INTERVAL_MS", "soon")];
    let run = admin.run_with_env(&["verify"], &env);
    assert!(!run.ok && run.stdout.is_empty(), "{}", run.stdout);
    assert!(
        run.stderr
            .contains("SHAREVAULT_PROGRESS_INTERVAL_MS: `soon` is not a number of milliseconds"),
        "{}",
        run.stderr
    );
}
