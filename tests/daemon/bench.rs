//! `sharevault bench` end to end on a tiny data set: it runs every operation and reports no
//! errors. Speed is not asserted.

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const LABELS: [&str; 8] = [
    "webhook backup",
    "webhook backup, new shares",
    "webhook fetch",
    "grpc store client share",
    "grpc get client share",
    "webhook backup, 1 connection",
    "webhook fetch during backups",
    "webhook backup alongside",
];

/// Runs `sharevault bench` on 20 clients, 2 connections, 1 s per operation, plus `extra`;
/// returns its output after checking that it succeeded, printed a row for every operation
/// with requests and no errors, and removed its temp dir.
fn bench(extra: &[&str]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_sharevault"))
        .args([
            "bench",
            "--clients",
            "20",
            "--connections",
            "2",
            "--seconds",
            "1",
        ])
        .args(extra)
        .env("TMPDIR", tmp.path())
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            panic!("bench did not finish within 120 s");
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("populated 20 clients"), "{stdout}");
    for label in LABELS {
        let cells: Vec<&str> = stdout
            .lines()
            .find(|l| l.split('|').nth(1).map(str::trim) == Some(label))
            .unwrap_or_else(|| panic!("no row for {label}:\n{stdout}"))
            .split('|')
            .map(str::trim)
            .collect();
        // | operation | conns | requests | errors | req/s | ...
        let number = |i: usize| cells[i].parse::<f64>().unwrap();
        assert!(number(3) > 0.0, "{label}: no requests:\n{stdout}");
        assert_eq!(number(4), 0.0, "{label}: errors:\n{stdout}\n{stderr}");
        assert!(number(5) > 0.0, "{label}: no throughput:\n{stdout}");
    }
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "temp dir left behind"
    );
    stdout
}

#[test]
fn bench_runs_every_operation_without_errors() {
    let stdout = bench(&[]);
    // Every new share acknowledged is held, with its pair, beside the 160 populated; the
    // bench's own token is revoked when it is done.
    let new_shares: u64 = stdout
        .lines()
        .find(|l| l.split('|').nth(1).map(str::trim) == Some("webhook backup, new shares"))
        .and_then(|l| l.split('|').nth(3))
        .and_then(|cell| cell.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count of new shares:\n{stdout}"));
    let held = 160 + new_shares;
    assert!(
        stdout.contains(&format!(
            "{held} custodian shares, 80 client shares, {held} share pairs, 0 API tokens"
        )),
        "{stdout}"
    );
}

/// The stand-in answers every operation the way the daemon does: the bench checks each
/// answer (a fetch must return the client's 8 shares), so a wrong answer is an error.
#[test]
fn bench_drives_the_in_memory_stand_in() {
    let stdout = bench(&["--stand-in"]);
    assert!(
        stdout.contains("stand-in (in memory, nothing durable)"),
        "{stdout}"
    );
    assert!(!stdout.contains("custodian shares"), "{stdout}");
}
