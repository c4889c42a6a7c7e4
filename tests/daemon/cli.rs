//! The operator's command line against a running daemon: `status`, `token create|list|revoke`
//! and `check-config --json`, over TCP, a Unix socket and TLS, and its errors.

use crate::harness::{Daemon, Sandbox, Started, command, create_token, with_secret, with_token};
use crate::http_client::TestCert;
use sharevault::pb;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What a run of the binary printed, and whether it succeeded.
pub(crate) struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        assert!(self.ok, "failed: {}", self.stderr);
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }

    fn failed_with(&self, needle: &str) {
        assert!(
            !self.ok,
            "should have failed; stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        assert!(
            self.stderr.contains(needle),
            "stderr should contain {needle:?}: {}",
            self.stderr
        );
    }
}

/// Runs `sharevault ARGS` in `dir`, with no `SHAREVAULT_*` variable inherited.
pub(crate) fn sharevault(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(crate::harness::binary());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SHAREVAULT_") {
            cmd.env_remove(name);
        }
    }
    let output = cmd
        .args(args)
        .envs(env.iter().copied())
        .env_remove("CREDENTIALS_DIRECTORY")
        .current_dir(dir)
        .output()
        .unwrap();
    Run {
        ok: output.status.success(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// A daemon and the flags that reach it as its administrator.
pub(crate) struct Admin<'a> {
    sandbox: &'a Sandbox,
    connect: String,
    token_file: String,
}

impl<'a> Admin<'a> {
    pub fn new(sandbox: &'a Sandbox, daemon: &Daemon) -> Self {
        let connect = match daemon.endpoint.strip_prefix("http://") {
            Some(addr) => addr.to_owned(),
            None => format!("unix:{}", daemon.endpoint),
        };
        Self {
            sandbox,
            connect,
            token_file: sandbox.keys.dir.join("admin-token").display().to_string(),
        }
    }

    /// Runs `sharevault ARGS --connect ... --admin-token-file ...`.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with_env(args, &[])
    }

    /// As [`Admin::run`], with these environment variables.
    pub fn run_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut all = args.to_vec();
        all.extend([
            "--connect",
            &self.connect,
            "--admin-token-file",
            &self.token_file,
        ]);
        sharevault(self.sandbox.tmp.path(), &all, env)
    }
}

pub(crate) async fn backup(
    daemon: &Daemon,
    sandbox: &Sandbox,
    client: &str,
    method: &str,
    pair: &str,
) {
    daemon
        .webhook()
        .await
        .backup(with_secret(
            pb::BackupRequest {
                client_id: client.into(),
                backup_method: method.into(),
                share: format!("{{\"backupSharePairId\":\"{pair}\",\"share\":\"s\"}}"),
                backup_share_pair_id: None,
            },
            &sandbox.keys.webhook_secret,
        ))
        .await
        .unwrap();
}

async fn list_backups(daemon: &Daemon, token: &str) -> Result<(), tonic::Status> {
    daemon
        .backup()
        .await
        .list_backups(with_token(
            pb::ListBackupsRequest {
                client_id: "cli-client".into(),
            },
            token,
        ))
        .await
        .map(|_| ())
}

/// The value of the `name` row of `status`'s table.
fn row<'t>(table: &'t str, name: &str) -> &'t str {
    table
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {name} row in:\n{table}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_health_key_and_counts_and_check_config_agrees() {
    let sandbox = Sandbox::new(40);
    let daemon = sandbox.start();
    let admin = Admin::new(&sandbox, &daemon);

    let table = admin.run(&["status"]);
    assert!(table.ok, "{}", table.stderr);
    assert_eq!(row(&table.stdout, "health"), "SERVING");
    assert_eq!(row(&table.stdout, "version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(row(&table.stdout, "custodian shares"), "0");

    let before = admin.run(&["status", "--json"]).json();
    assert_eq!(before["health"], "SERVING");
    assert_eq!(before["version"], env!("CARGO_PKG_VERSION"));
    let key_id = before["master_key_id"].as_str().unwrap().to_owned();
    assert!(!key_id.is_empty() && key_id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(row(&table.stdout, "master key id"), key_id);
    assert!(before["uptime_seconds"].is_u64());
    for field in [
        "custodian_shares",
        "client_shares",
        "backup_share_pairs",
        "tokens",
    ] {
        assert_eq!(before[field], 0, "{field}");
    }

    backup(
        &daemon,
        &sandbox,
        "cli-client",
        "PASSWORD-SECP256K1",
        "pair-40a",
    )
    .await;
    backup(
        &daemon,
        &sandbox,
        "cli-client",
        "GDRIVE-ED25519",
        "pair-40b",
    )
    .await;
    let after = admin.run(&["status", "--json"]).json();
    assert_eq!(after["custodian_shares"], 2);
    assert_eq!(after["backup_share_pairs"], 2);
    assert_eq!(after["client_shares"], 0);
    assert_eq!(after["master_key_id"], key_id.as_str());

    // check-config validates the same secrets and names the same key, by id only.
    let data_dir = sandbox.data_dir.display().to_string();
    let mut args = vec!["check-config", "--json", "--data-dir", &data_dir];
    let key_args = sandbox.keys.args();
    args.extend(key_args.iter().map(String::as_str));
    let checked = sharevault(sandbox.tmp.path(), &args, &[]);
    let settings = checked.json();
    assert_eq!(settings["master_key_id"], key_id.as_str());
    assert_eq!(settings["data_dir"], data_dir.as_str());
    assert_eq!(settings["grpc_listen"], "127.0.0.1:7450");
    assert_eq!(
        settings["admin_token_file"],
        sandbox.keys.dir.join("admin-token").display().to_string()
    );
    assert_eq!(
        settings["master_key_file"],
        sandbox.keys.master_key_file.display().to_string()
    );
    let master_key = std::fs::read_to_string(&sandbox.keys.master_key_file).unwrap();
    for secret in [
        sandbox.keys.admin_token.as_str(),
        sandbox.keys.webhook_secret.as_str(),
        master_key.trim(),
    ] {
        assert!(!checked.stdout.contains(secret), "{}", checked.stdout);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_created_by_the_cli_work_until_revoked() {
    let sandbox = Sandbox::new(41);
    let daemon = sandbox.start();
    let admin = Admin::new(&sandbox, &daemon);

    let created = admin
        .run(&[
            "token",
            "create",
            "--name",
            "ops-eject",
            "--role",
            "eject",
            "--json",
        ])
        .json();
    assert_eq!(created["name"], "ops-eject");
    assert_eq!(created["role"], "eject");
    let eject = created["token"].as_str().unwrap().to_owned();
    assert!(eject.len() >= 16, "{eject}");
    list_backups(&daemon, &eject).await.unwrap();

    // Plain output: the token alone on stdout, the notice on stderr.
    let plain = admin.run(&[
        "token",
        "create",
        "--name",
        "ops-backend",
        "--role",
        "backend",
    ]);
    assert!(plain.ok, "{}", plain.stderr);
    assert!(plain.stderr.contains("shown once"), "{}", plain.stderr);
    let backend = plain.stdout.trim_end_matches('\n').to_owned();
    assert!(!backend.contains(char::is_whitespace), "{}", plain.stdout);
    list_backups(&daemon, &backend).await.unwrap();

    let duplicate = admin.run(&[
        "token",
        "create",
        "--name",
        "ops-backend",
        "--role",
        "admin",
    ]);
    duplicate.failed_with("already exists");

    let table = admin.run(&["token", "list"]);
    assert!(table.ok, "{}", table.stderr);
    let lines: Vec<Vec<&str>> = table
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["NAME", "ROLE", "CREATED"]);
    let mut rows: Vec<(&str, &str)> = lines[1..].iter().map(|r| (r[0], r[1])).collect();
    rows.sort_unstable();
    assert_eq!(rows, [("ops-backend", "backend"), ("ops-eject", "eject")]);
    for token in [&eject, &backend] {
        assert!(!table.stdout.contains(token.as_str()));
    }

    let listed = admin.run(&["token", "list", "--json"]).json();
    let tokens = listed["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 2);
    for token in tokens {
        let created_at = token["created_at"].as_str().unwrap();
        assert!(
            created_at.len() >= 20 && created_at.contains('T') && created_at.ends_with('Z'),
            "RFC 3339: {created_at}"
        );
        assert!(token.get("token").is_none());
    }
    assert_eq!(admin.run(&["status", "--json"]).json()["tokens"], 2);

    let revoked = admin.run(&["token", "revoke", "--name", "ops-eject"]);
    assert!(revoked.ok, "{}", revoked.stderr);
    assert!(revoked.stdout.contains("ops-eject"), "{}", revoked.stdout);
    let err = list_backups(&daemon, &eject).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    list_backups(&daemon, &backend).await.unwrap();

    admin
        .run(&["token", "revoke", "--name", "ops-eject"])
        .failed_with("not found");
    let names: Vec<serde_json::Value> = admin.run(&["token", "list", "--json"]).json()["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].clone())
        .collect();
    assert_eq!(names, ["ops-backend"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_admin_token_is_refused_without_being_shown() {
    let sandbox = Sandbox::new(42);
    let daemon = sandbox.start();
    let admin = Admin::new(&sandbox, &daemon);
    let dir = sandbox.tmp.path();
    let connect = ["--connect", admin.connect.as_str()];

    let wrong = "wrong-admin-token-42-0123456789";
    let wrong_file = dir.join("wrong-token");
    std::fs::write(&wrong_file, format!("{wrong}\n")).unwrap();
    let wrong_path = wrong_file.display().to_string();
    for args in [&["status"][..], &["token", "list"][..]] {
        let mut all = args.to_vec();
        all.extend(connect);
        all.extend(["--admin-token-file", &wrong_path]);
        let run = sharevault(dir, &all, &[]);
        run.failed_with("unauthenticated");
        assert!(!run.stderr.contains(wrong) && !run.stdout.contains(wrong));
    }

    // The token may also come from the environment.
    let mut status = vec!["status"];
    status.extend(connect);
    sharevault(dir, &status, &[("SHAREVAULT_ADMIN_TOKEN", wrong)]).failed_with("unauthenticated");
    let right = sharevault(
        dir,
        &status,
        &[("SHAREVAULT_ADMIN_TOKEN", &sandbox.keys.admin_token)],
    );
    assert!(right.ok, "{}", right.stderr);

    // A valid token without the admin role.
    let backend = create_token(&daemon, &sandbox.keys.admin_token, "cli-backend", 1).await;
    let backend_file = dir.join("backend-token");
    std::fs::write(&backend_file, &backend).unwrap();
    let mut all = status.clone();
    let backend_path = backend_file.display().to_string();
    all.extend(["--admin-token-file", &backend_path]);
    sharevault(dir, &all, &[]).failed_with("permission denied");

    // No token anywhere (and no ./sharevault-data/admin-token in the working directory).
    sharevault(dir, &status, &[]).failed_with("no admin token");
}

/// A loopback address where nothing listens: a port bound, then released.
fn unused_loopback_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("127.0.0.1:{}", listener.local_addr().unwrap().port())
}

#[test]
fn a_daemon_that_is_not_running_is_reported_as_such() {
    let sandbox = Sandbox::new(43);
    let token_file = sandbox.keys.dir.join("admin-token").display().to_string();
    let addr = unused_loopback_addr();
    let socket = format!("unix:{}", sandbox.tmp.path().join("absent.sock").display());
    for target in [&addr, &socket] {
        let run = sharevault(
            sandbox.tmp.path(),
            &[
                "status",
                "--connect",
                target,
                "--admin-token-file",
                &token_file,
            ],
            &[],
        );
        run.failed_with(&format!("cannot connect to {target}"));
        run.failed_with("is the daemon running?");
    }
    sharevault(
        sandbox.tmp.path(),
        &[
            "status",
            "--connect",
            "localhost",
            "--admin-token-file",
            &token_file,
        ],
        &[],
    )
    .failed_with(
        "--connect `localhost`: not an address with a port; expected HOST:PORT, \
         http://HOST:PORT, https://HOST:PORT or unix:/path/to.sock",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_takes_an_http_url_as_vault_addr_and_etcdctl_do() {
    let sandbox = Sandbox::new(48);
    let daemon = sandbox.start();
    let admin = Admin::new(&sandbox, &daemon);
    for url in [
        format!("http://{}", admin.connect),
        format!("http://{}/", admin.connect),
    ] {
        let status = Admin {
            connect: url.clone(),
            ..Admin::new(&sandbox, &daemon)
        }
        .run(&["status", "--json"])
        .json();
        assert_eq!(status["health"], "SERVING", "{url}");
    }
    // An address with another scheme or a path is refused, naming the forms that work.
    for bad in ["grpc://127.0.0.1:7450", "http://127.0.0.1:7450/v1/status"] {
        Admin {
            connect: bad.to_owned(),
            ..Admin::new(&sandbox, &daemon)
        }
        .run(&["status"])
        .failed_with("expected HOST:PORT, http://HOST:PORT, https://HOST:PORT or unix:/path");
    }
}

#[test]
fn errors_print_on_one_line_without_a_backtrace_unless_debug_asks() {
    let sandbox = Sandbox::new(49);
    let token_file = sandbox.keys.dir.join("admin-token").display().to_string();
    let addr = unused_loopback_addr();
    let status = [
        "status",
        "--connect",
        &addr,
        "--admin-token-file",
        &token_file,
    ];
    // Even with RUST_BACKTRACE=1 in the environment, one line.
    let run = sharevault(sandbox.tmp.path(), &status, &[("RUST_BACKTRACE", "1")]);
    run.failed_with("is the daemon running?");
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.starts_with("error: cannot connect to "),
        "{}",
        run.stderr
    );

    // --debug (or RUST_LOG) asks for the backtrace RUST_BACKTRACE captured.
    let mut debug = status.to_vec();
    debug.push("--debug");
    let run = sharevault(sandbox.tmp.path(), &debug, &[("RUST_BACKTRACE", "1")]);
    run.failed_with("Stack backtrace:");
    let run = sharevault(
        sandbox.tmp.path(),
        &status,
        &[("RUST_BACKTRACE", "1"), ("RUST_LOG", "debug")],
    );
    run.failed_with("Stack backtrace:");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reaches_a_daemon_on_a_unix_socket() {
    let sandbox = Sandbox::new(44);
    let socket: PathBuf = sandbox.tmp.path().join("s.sock");
    let mut args = vec![
        "--grpc-listen".to_string(),
        format!("unix:{}", socket.display()),
    ];
    args.extend(sandbox.keys.args());
    let Started::Ready(daemon) = Daemon::launch(command(&sandbox.data_dir, &args)) else {
        panic!("start on a unix socket failed")
    };
    let admin = Admin::new(&sandbox, &daemon);
    assert_eq!(admin.connect, format!("unix:{}", socket.display()));

    backup(
        &daemon,
        &sandbox,
        "cli-client",
        "PASSWORD-SECP256K1",
        "pair-44",
    )
    .await;
    let status = admin.run(&["status", "--json"]).json();
    assert_eq!(status["health"], "SERVING");
    assert_eq!(status["custodian_shares"], 1);

    let created = admin
        .run(&[
            "token", "create", "--name", "sidecar", "--role", "backend", "--json",
        ])
        .json();
    list_backups(&daemon, created["token"].as_str().unwrap())
        .await
        .unwrap();
    let listed = admin.run(&["token", "list", "--json"]).json();
    assert_eq!(listed["tokens"][0]["name"], "sidecar");
    assert!(admin.run(&["token", "revoke", "--name", "sidecar"]).ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_speaks_tls_with_a_private_ca() {
    let sandbox = Sandbox::new(45);
    let cert = TestCert::new(sandbox.tmp.path());
    let (cert_file, key_file) = (
        cert.cert_file.display().to_string(),
        cert.key_file.display().to_string(),
    );
    let daemon = sandbox.start_with(&[
        "--grpc-tls-cert-file",
        &cert_file,
        "--grpc-tls-key-file",
        &key_file,
    ]);
    let admin = Admin::new(&sandbox, &daemon);

    let status = admin
        .run(&["status", "--json", "--ca-file", &cert_file])
        .json();
    assert_eq!(status["health"], "SERVING");

    // The certificate is for localhost and 127.0.0.1, not for another name.
    admin
        .run(&[
            "status",
            "--ca-file",
            &cert_file,
            "--tls-server-name",
            "vault.example.com",
        ])
        .failed_with("certificate not valid for name \"vault.example.com\"");
    // Plaintext to a TLS listener does not get through, and the error suggests TLS.
    admin.run(&["status"]).failed_with("pass --ca-file");
    // https:// is TLS too; the certificate must then carry the address's host (127.0.0.1).
    let https = Admin {
        connect: format!("https://{}", admin.connect),
        ..Admin::new(&sandbox, &daemon)
    };
    let status = https
        .run(&["status", "--json", "--ca-file", &cert_file])
        .json();
    assert_eq!(status["health"], "SERVING");
    // Without --ca-file, https:// trusts the system's roots (here SSL_CERT_FILE): a store
    // without the test CA refuses the daemon, one with it lets the CLI through.
    let mut args = vec!["status", "--json", "--connect", &https.connect];
    args.extend(["--admin-token-file", &https.token_file]);
    let system_roots = |file: &Path| {
        sharevault(
            sandbox.tmp.path(),
            &args,
            &[
                ("SSL_CERT_FILE", &file.display().to_string()),
                ("SSL_CERT_DIR", "/nonexistent"),
            ],
        )
    };
    let other_dir = sandbox.tmp.path().join("other-ca");
    std::fs::create_dir(&other_dir).unwrap();
    let other = TestCert::new(&other_dir);
    let run = system_roots(&other.cert_file);
    run.failed_with("invalid peer certificate");
    run.failed_with("check --ca-file");
    let trusted = system_roots(&cert.cert_file);
    assert_eq!(trusted.json()["health"], "SERVING");
    // http:// is plaintext, which --ca-file contradicts.
    Admin {
        connect: format!("http://{}", admin.connect),
        ..Admin::new(&sandbox, &daemon)
    }
    .run(&["status", "--ca-file", &cert_file])
    .failed_with("is plaintext: with --ca-file, use https://");
    // A CA file without a certificate is refused before connecting.
    admin
        .run(&["status", "--ca-file", &key_file])
        .failed_with("no certificate found");
}

/// An online snapshot of the two custodian shares, written atomically and readable by its
/// owner only, restores into a new data dir.
fn snapshot_and_restore_from_the_command_line(sandbox: &Sandbox, admin: &Admin) {
    let dir = sandbox.tmp.path().join("backups");
    std::fs::create_dir_all(&dir).unwrap();
    let snap = dir.join("vault.snapshot");
    let run = admin.run(&["snapshot", "--to", snap.to_str().unwrap(), "--json"]);
    assert!(run.ok, "{}", run.stderr);
    let summary = run.json();
    assert_eq!(summary["records"]["custodian_shares"], 2);
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "no temporary file is left"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&snap).unwrap().permissions().mode() & 0o777,
        0o600,
        "the snapshot is readable by its owner only"
    );
    let plain = admin.run(&["snapshot", "--to", snap.to_str().unwrap()]);
    assert!(
        plain.stdout.contains("useless without it"),
        "{}",
        plain.stdout
    );

    // It restores into a new data dir.
    let restored = sandbox.tmp.path().join("restored");
    let key = sandbox.keys.master_key_file.display().to_string();
    let run = sharevault(
        sandbox.tmp.path(),
        &[
            "restore",
            "--from",
            snap.to_str().unwrap(),
            "--data-dir",
            restored.to_str().unwrap(),
            "--master-key-file",
            &key,
        ],
        &[],
    );
    assert!(run.ok, "{}", run.stderr);
    assert!(run.stdout.contains("2 custodian shares"), "{}", run.stdout);
}

/// Every record opens, and the audit trail exports as JSON lines (the two backups of
/// "ops-client") and its chain verifies.
fn verify_and_audit_from_the_command_line(admin: &Admin) {
    let run = admin.run(&["verify", "--json"]);
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(
        (
            run.json()["custodian_shares"].as_u64(),
            run.json()["failed"].as_u64()
        ),
        (Some(2), Some(0))
    );

    let run = admin.run(&["audit", "export", "--client-id", "ops-client"]);
    assert!(run.ok, "{}", run.stderr);
    let actions: Vec<String> = run
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(actions, ["backup", "backup"]);
    let run = admin.run(&["audit", "verify"]);
    assert!(
        run.ok && run.stdout.contains("audit trail intact"),
        "{}{}",
        run.stdout,
        run.stderr
    );
}

/// A rotation through the CLI; status then reports the new key, and every record opens.
fn rekey_from_the_command_line(sandbox: &Sandbox, admin: &Admin) {
    let new_keys = crate::harness::Keys::new(&sandbox.tmp.path().join("new-keys"), 48);
    let run = admin.run(&[
        "rekey",
        "--new-master-key-file",
        new_keys.master_key_file.to_str().unwrap(),
    ]);
    assert!(run.ok, "{}", run.stderr);
    let status = admin.run(&["status", "--json"]).json();
    let new_id = status["master_key_id"].as_str().unwrap().to_owned();
    assert!(run.stdout.contains(&new_id), "{}", run.stdout);
    let run = admin.run(&["verify"]);
    assert!(
        run.ok && run.stdout.contains("failed            0"),
        "{}",
        run.stdout
    );
}

/// Metrics count the calls made before (two backups, two snapshots), with no client id or
/// share in them.
async fn metrics_count_the_calls_made(daemon: &Daemon) {
    let metrics = crate::http_client::Http::plain(&daemon.endpoint)
        .send("GET", "/metrics", &[], None)
        .await;
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(
        text.contains(
            "sharevault_calls_total{service=\"WebhookService\",method=\"Backup\",outcome=\"ok\"} 2"
        ),
        "{text}"
    );
    assert!(text.contains(
        "sharevault_calls_total{service=\"AdminService\",method=\"Snapshot\",outcome=\"ok\"} 2"
    ));
    assert!(text.contains("sharevault_records{table=\"custodian_shares\"} 2"));
    assert!(text.contains("sharevault_commit_duration_seconds_count"));
    assert!(text.contains("sharevault_database_bytes"));
    assert!(!text.contains("ops-client") && !text.contains("pair-ops"));
}

/// Snapshot and restore, verify, the audit trail, a rotation and the metrics, in that order
/// against one daemon holding two custodian shares of "ops-client": the metrics count the
/// calls of the steps before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_restore_verify_audit_rekey_and_metrics_from_the_command_line() {
    let sandbox = Sandbox::new(46);
    let daemon = sandbox.start();
    let admin = Admin::new(&sandbox, &daemon);
    backup(
        &daemon,
        &sandbox,
        "ops-client",
        "PASSWORD-SECP256K1",
        "pair-ops",
    )
    .await;
    backup(
        &daemon,
        &sandbox,
        "ops-client",
        "PASSWORD-ED25519",
        "pair-ops-2",
    )
    .await;
    snapshot_and_restore_from_the_command_line(&sandbox, &admin);
    verify_and_audit_from_the_command_line(&admin);
    rekey_from_the_command_line(&sandbox, &admin);
    metrics_count_the_calls_made(&daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_admin_socket_needs_no_token_for_the_daemons_own_user() {
    let sandbox = Sandbox::new(49);
    let socket = sandbox.tmp.path().join("admin.sock");
    let daemon = sandbox.start_with(&["--admin-socket", socket.to_str().unwrap()]);
    let mode = std::fs::metadata(&socket).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let connect = format!("unix:{}", socket.display());
    let run = sharevault(
        sandbox.tmp.path(),
        &["status", "--json", "--connect", &connect],
        &[],
    );
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(run.json()["health"], "SERVING");
    let run = sharevault(
        sandbox.tmp.path(),
        &[
            "token",
            "create",
            "--name",
            "via-socket",
            "--role",
            "backend",
            "--connect",
            &connect,
        ],
        &[],
    );
    assert!(run.ok, "{}", run.stderr);
    // A rotation, which carries the new master key, may come over the socket.
    let new_keys = crate::harness::Keys::new(&sandbox.tmp.path().join("new-keys"), 50);
    let run = sharevault(
        sandbox.tmp.path(),
        &[
            "rekey",
            "--new-master-key-file",
            new_keys.master_key_file.to_str().unwrap(),
            "--connect",
            &connect,
        ],
        &[],
    );
    assert!(run.ok, "{}", run.stderr);
    // The same call without a token on the TCP listener is refused.
    let tcp = daemon.endpoint.trim_start_matches("http://").to_owned();
    let run = sharevault(sandbox.tmp.path(), &["status", "--connect", &tcp], &[]);
    run.failed_with("no admin token");
    // The socket grants administration only: reading backups still needs a token.
    let err = crate::harness::Daemon::launch_socket_client(&socket)
        .await
        .list_backups(pb::ListBackupsRequest {
            client_id: "c".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
}

/// `rekey` never sends a new master key over a connection the daemon would refuse it on:
/// plain TCP to another host is refused before anything is sent (here an address of the
/// documentation range, where no daemon could ever answer).
#[test]
fn rekey_refuses_to_send_a_key_in_clear_to_another_host() {
    let sandbox = Sandbox::new(51);
    let new_keys = crate::harness::Keys::new(&sandbox.tmp.path().join("new-keys"), 52);
    let token = sandbox.keys.dir.join("admin-token");
    for connect in ["http://192.0.2.1:7450", "192.0.2.1:7450"] {
        let run = sharevault(
            sandbox.tmp.path(),
            &[
                "rekey",
                "--new-master-key-file",
                new_keys.master_key_file.to_str().unwrap(),
                "--admin-token-file",
                token.to_str().unwrap(),
                "--connect",
                connect,
            ],
            &[],
        );
        run.failed_with("refusing to send the new master key");
        run.failed_with("nothing was sent");
    }
}
