//! The shipped systemd units: systemd accepts them without a warning and rates their exposure
//! low, their command lines and credentials are the ones the daemon understands, and two
//! instances of the template (one vault per Portal environment) keep two separate vaults.

use crate::harness::Sandbox;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const INSTALLED_BINARY: &str = "/usr/local/bin/sharevault";

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/sharevault.service")
}

fn unit() -> String {
    std::fs::read_to_string(unit_path()).unwrap()
}

/// Runs `systemd-analyze ARGS`; fails, saying how to install it, when it is missing.
fn systemd_analyze(args: &[&str]) -> Output {
    match Command::new("systemd-analyze").args(args).output() {
        Ok(output) => output,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => panic!(
            "systemd-analyze is needed to check the unit: install it (Debian: apt-get install \
             systemd) and run the tests again"
        ),
        Err(err) => panic!("cannot run systemd-analyze: {err}"),
    }
}

/// The value of every `key=` line of the unit.
fn values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn systemd_verify_accepts_the_unit_without_warnings() {
    // The unit as installed, except that ExecStart runs the binary under test and the
    // credentials are read from temporary files.
    let tmp = tempfile::tempdir().unwrap();
    let credentials = tmp.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    for name in ["master-key", "webhook-secret", "admin-token"] {
        std::fs::write(credentials.join(name), "test\n").unwrap();
    }
    let text = unit();
    assert_eq!(values(&text, "ExecStart").len(), 1, "{text}");
    let rewritten = text
        .replace(INSTALLED_BINARY, env!("CARGO_BIN_EXE_sharevault"))
        .replace("/etc/sharevault/", &format!("{}/", credentials.display()));
    let path = tmp.path().join("sharevault.service");
    std::fs::write(&path, rewritten).unwrap();

    let output = systemd_analyze(&["verify", &path.display().to_string()]);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{report}");
    let about_the_unit: Vec<&str> = report
        .lines()
        .filter(|line| line.contains("sharevault"))
        .collect();
    assert!(
        about_the_unit.is_empty(),
        "systemd-analyze verify warns about the unit:\n{report}"
    );
}

/// The overall exposure level `systemd-analyze security --offline=true` gives the unit at
/// `path`, with its report.
pub(crate) fn exposure(path: &Path) -> (f64, String) {
    let path = path.display().to_string();
    let output = systemd_analyze(&["security", "--offline=true", &path]);
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // "→ Overall exposure level for sharevault.service: 1.1 OK 🙂"
    let exposure: f64 = report
        .lines()
        .find_map(|line| line.split("Overall exposure level for ").nth(1))
        .and_then(|rest| rest.split(": ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{report}"));
    (exposure, report)
}

#[test]
fn systemd_security_rates_the_unit_exposure_at_most_2() {
    let (exposure, report) = exposure(&unit_path());
    assert!(exposure <= 2.0, "exposure {exposure} > 2.0:\n{report}");
}

#[test]
fn the_units_command_line_and_credentials_are_the_daemons() {
    let text = unit();
    for expected in [
        "Type=notify",
        "DynamicUser=yes",
        "StateDirectory=sharevault",
        "StateDirectoryMode=0700",
        // `systemctl reload`: the webhook secrets and certificates read again (reload.rs).
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(text.lines().any(|l| l == expected), "{expected} in\n{text}");
    }
    let mut credentials: Vec<&str> = values(&text, "LoadCredential")
        .iter()
        .filter_map(|v| v.split(':').next())
        .collect();
    credentials.sort_unstable();
    assert_eq!(credentials, ["admin-token", "master-key", "webhook-secret"]);

    // ExecStart's flags, with `serve` swapped for `check-config`, the state directory and the
    // credentials directory as systemd would provide them.
    let exec = values(&text, "ExecStart");
    let words: Vec<&str> = exec[0].split_whitespace().collect();
    assert_eq!(&words[..2], [INSTALLED_BINARY, "serve"], "{}", exec[0]);
    let sandbox = Sandbox::new(47);
    let state = sandbox.tmp.path().join("state");
    let runtime = sandbox.tmp.path().join("run");
    let args: Vec<String> = words[2..]
        .iter()
        .map(|w| {
            w.replace("${STATE_DIRECTORY}", &state.display().to_string())
                .replace("${RUNTIME_DIRECTORY}", &runtime.display().to_string())
        })
        .collect();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sharevault"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SHAREVAULT_") {
            command.env_remove(name);
        }
    }
    let output = command
        .arg("check-config")
        .arg("--json")
        .args(&args)
        .env("CREDENTIALS_DIRECTORY", &sandbox.keys.dir)
        .current_dir(sandbox.tmp.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let settings: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(settings["data_dir"], state.display().to_string());
    assert_eq!(settings["grpc_listen"], "127.0.0.1:7450");
    assert_eq!(settings["http_listen"], "127.0.0.1:7451");
    for (field, name) in [
        ("master_key_file", "master-key"),
        ("webhook_secret_file", "webhook-secret"),
        ("admin_token_file", "admin-token"),
    ] {
        assert_eq!(
            settings[field],
            sandbox.keys.dir.join(name).display().to_string(),
            "{field}"
        );
    }
}

fn template_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/sharevault@.service")
}

fn template() -> String {
    std::fs::read_to_string(template_path()).unwrap()
}

#[test]
fn systemd_verify_accepts_an_instance_of_the_template_unit_without_warnings() {
    let tmp = tempfile::tempdir().unwrap();
    let credentials = tmp.path().join("production");
    std::fs::create_dir(&credentials).unwrap();
    for name in [
        "master-key",
        "webhook-secret",
        "admin-token",
        "sharevault.env",
    ] {
        std::fs::write(credentials.join(name), "test\n").unwrap();
    }
    let text = template();
    assert_eq!(values(&text, "ExecStart").len(), 1, "{text}");
    let rewritten = text
        .replace(INSTALLED_BINARY, env!("CARGO_BIN_EXE_sharevault"))
        .replace("/etc/sharevault/", &format!("{}/", tmp.path().display()));
    let path = tmp.path().join("sharevault@production.service");
    std::fs::write(&path, rewritten).unwrap();
    let output = systemd_analyze(&["verify", &path.display().to_string()]);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{report}");
    assert!(
        !report.lines().any(|line| line.contains("sharevault")),
        "systemd-analyze verify warns about the template:\n{report}"
    );
    let (exposure, report) = exposure(&template_path());
    assert!(exposure <= 2.0, "exposure {exposure} > 2.0:\n{report}");
}

/// The environment files docs/install.md shows, by instance name: `# /etc/sharevault/NAME/
/// sharevault.env` and the `KEY=VALUE` lines under it, up to the end of the code block.
fn documented_environment_files() -> Vec<(String, Vec<(String, String)>)> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/install.md"))
            .unwrap();
    let mut files: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let mut current: Option<(String, Vec<(String, String)>)> = None;
    for line in doc.lines() {
        if let Some(name) = line
            .strip_prefix("# /etc/sharevault/")
            .and_then(|rest| rest.strip_suffix("/sharevault.env"))
        {
            current = Some((name.to_owned(), Vec::new()));
        } else if line.starts_with("```") {
            files.extend(current.take());
        } else if let Some((_, vars)) = current.as_mut() {
            let (key, value) = line.split_once('=').expect("KEY=VALUE");
            vars.push((key.to_owned(), value.to_owned()));
        }
    }
    files
}

/// POSTs `body` to `path` of a webhook listener with `keys`' webhook secret.
async fn send(
    hook: &crate::http_client::Http,
    path: String,
    keys: &crate::harness::Keys,
    body: serde_json::Value,
) -> crate::http_client::Reply {
    let headers = [("x-webhook-secret", keys.webhook_secret.as_str())];
    hook.post_json(&path, &headers, &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_of_the_template_unit_keep_two_separate_vaults() {
    use crate::harness::{Daemon, Keys, Started};
    use crate::http_client::Http;
    use serde_json::json;

    let text = template();
    assert!(
        text.lines()
            .any(|l| l == "EnvironmentFile=/etc/sharevault/%i/sharevault.env"),
        "{text}"
    );
    for expected in [
        "Type=notify",
        "DynamicUser=yes",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "StateDirectory=sharevault-%i",
        "RuntimeDirectory=sharevault-%i",
    ] {
        assert!(text.lines().any(|l| l == expected), "{expected} in\n{text}");
    }
    let mut credentials: Vec<&str> = values(&text, "LoadCredential").to_vec();
    credentials.sort_unstable();
    assert_eq!(
        credentials,
        [
            "admin-token:/etc/sharevault/%i/admin-token",
            "master-key:/etc/sharevault/%i/master-key",
            "webhook-secret:/etc/sharevault/%i/webhook-secret",
        ]
    );
    let exec = values(&text, "ExecStart")[0];
    let words: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(&words[..2], [INSTALLED_BINARY, "serve"], "{exec}");

    let files = documented_environment_files();
    let names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["production", "development"], "docs/install.md");
    let mut ports = Vec::new();
    for (_, vars) in &files {
        for (key, value) in vars {
            if key.ends_with("_LISTEN") {
                ports.push(value.clone());
            }
        }
    }
    let mut distinct = ports.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        4,
        "each instance needs its own ports: {ports:?}"
    );

    // Each instance started as systemd would start it: its ExecStart line with %i's
    // directories, its environment file (the documented one, on ephemeral ports: tests bind no
    // fixed port) and its own credentials.
    let tmp = tempfile::tempdir().unwrap();
    let mut vaults = Vec::new();
    for (seed, (name, vars)) in (60u8..).zip(&files) {
        let state = tmp.path().join(format!("lib/sharevault-{name}"));
        let runtime = tmp.path().join(format!("run/sharevault-{name}"));
        std::fs::create_dir_all(&runtime).unwrap();
        let keys = Keys::new(&tmp.path().join(format!("etc/{name}")), seed);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sharevault"));
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("SHAREVAULT_") {
                cmd.env_remove(var);
            }
        }
        cmd.args(words[1..].iter().map(|w| {
            w.replace("${STATE_DIRECTORY}", &state.display().to_string())
                .replace("${RUNTIME_DIRECTORY}", &runtime.display().to_string())
        }));
        for (key, value) in vars {
            let value = if key.ends_with("_LISTEN") {
                "127.0.0.1:0"
            } else {
                value
            };
            cmd.env(key, value);
        }
        cmd.env("CREDENTIALS_DIRECTORY", &keys.dir)
            .env("SHAREVAULT_JOURNAL_BYTES", "4194304")
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let daemon = match Daemon::launch(cmd) {
            Started::Ready(daemon) => daemon,
            Started::Exited { status, logs } => {
                panic!("instance {name} exited ({status}):\n{logs}")
            }
        };
        assert!(
            runtime.join("admin.sock").exists(),
            "{name}: no admin socket"
        );
        assert!(
            state.join("sharevault.redb").exists(),
            "{name}: no vault in {state:?}"
        );
        let prefix = vars
            .iter()
            .find(|(key, _)| key == "SHAREVAULT_WEBHOOK_PATH_PREFIX")
            .map(|(_, value)| value.clone())
            .unwrap_or_default();
        assert!(prefix.ends_with(name.as_str()), "{name}: prefix {prefix}");
        let hook = Http::plain(daemon.webhook_addr.as_deref().unwrap());
        vaults.push((name.clone(), keys, prefix, hook, daemon));
    }

    let (_, prod_keys, prod_prefix, prod_hook, _) = &vaults[0];
    let (_, dev_keys, dev_prefix, dev_hook, _) = &vaults[1];
    let backup = json!({
        "clientId": "clx-prod-1",
        "backupMethod": "PASSWORD-SECP256K1",
        "share": "{\"backupSharePairId\":\"pair-prod-1\",\"share\":\"s\"}",
    });
    let fetch = json!({"clientId": "clx-prod-1"});
    // Production's webhook, with production's secret: stored there and only there.
    let stored = send(
        prod_hook,
        format!("{prod_prefix}/backup"),
        prod_keys,
        backup.clone(),
    )
    .await;
    assert_eq!(stored.status, 200);
    let fetched = send(
        prod_hook,
        format!("{prod_prefix}/backup/fetch"),
        prod_keys,
        fetch.clone(),
    )
    .await
    .json();
    assert_eq!(
        fetched["backupShares"].as_array().unwrap().len(),
        1,
        "{fetched}"
    );
    let fetched = send(
        dev_hook,
        format!("{dev_prefix}/backup/fetch"),
        dev_keys,
        fetch.clone(),
    )
    .await
    .json();
    assert_eq!(
        fetched["backupShares"],
        json!([]),
        "development holds production's share"
    );
    // Production's secret on development's webhook, or production's path: refused.
    let wrong_secret = send(
        dev_hook,
        format!("{dev_prefix}/backup"),
        prod_keys,
        backup.clone(),
    )
    .await;
    assert_eq!(wrong_secret.status, 401);
    let wrong_path = send(
        dev_hook,
        format!("{prod_prefix}/backup"),
        dev_keys,
        backup.clone(),
    )
    .await;
    assert_eq!(wrong_path.status, 404);
}

/// The drop-ins shipped in `systemd/sharevault.service.d/`.
fn drop_ins() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/sharevault.service.d");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn systemd_verify_accepts_the_unit_with_each_shipped_drop_in_without_warnings() {
    let drop_ins = drop_ins();
    let names: Vec<&str> = drop_ins.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["bind-443.conf", "reload-in-place.conf"]);
    for (name, text) in &drop_ins {
        let tmp = tempfile::tempdir().unwrap();
        let credentials = tmp.path().join("credentials");
        std::fs::create_dir(&credentials).unwrap();
        for secret in ["master-key", "webhook-secret", "admin-token"] {
            std::fs::write(credentials.join(secret), "test\n").unwrap();
        }
        let rewritten = unit()
            .replace(INSTALLED_BINARY, env!("CARGO_BIN_EXE_sharevault"))
            .replace("/etc/sharevault/", &format!("{}/", credentials.display()));
        let path = tmp.path().join("sharevault.service");
        std::fs::write(&path, rewritten).unwrap();
        // systemd-analyze reads the drop-ins of `X.service.d/` beside the unit it verifies.
        let dir = tmp.path().join("sharevault.service.d");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join(name), text).unwrap();
        let output = systemd_analyze(&["verify", &path.display().to_string()]);
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{name}: {report}");
        assert!(
            !report.lines().any(|l| l.contains("sharevault")),
            "systemd-analyze verify warns about the unit with {name}:\n{report}"
        );
        let (exposure, report) = exposure(&path);
        assert!(
            exposure <= 2.5,
            "{name}: exposure {exposure} > 2.5:\n{report}"
        );
    }
}

/// The value of `key=` in a drop-in, which must be set once.
fn drop_in_value(name: &str, key: &str) -> String {
    let (_, text) = drop_ins().into_iter().find(|(n, _)| n == name).unwrap();
    let found = values(&text, key);
    assert_eq!(found.len(), 1, "{key} in {name}");
    found[0].to_owned()
}

/// The service user of the tests' units: `nobody`, as systemd gives the files of a unit's
/// credentials and state directory to its user.
const SERVICE_UID: u32 = 65534;

/// A free loopback port under 1024.
fn free_low_port() -> u16 {
    (900..1000)
        .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free port in 900..1000")
}

/// The packaged example configuration's command line (its header's `ExecStart=`), started
/// as the service user (not root) with the example as the `config` credential and the
/// secrets as credentials: the paths it names fit the unit. With the bind-443 drop-in's
/// capabilities the webhook listener binds a port under 1024; without them it cannot.
#[test]
fn the_documented_config_and_the_bind_443_drop_in_start_as_the_service_user() {
    assert!(
        {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata("/proc/self").unwrap().uid() == 0
        },
        "this test starts the daemon as another user and must run as root (sudo scripts/test)"
    );
    let example =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/deb/sharevault.toml.example");
    let example_text = std::fs::read_to_string(&example).unwrap();
    let exec = example_text
        .lines()
        .find_map(|l| l.strip_prefix("#   ExecStart=/usr/bin/sharevault "))
        .expect("the example's ExecStart line");
    assert_eq!(
        drop_in_value("bind-443.conf", "AmbientCapabilities"),
        "CAP_NET_BIND_SERVICE"
    );
    assert_eq!(
        drop_in_value("bind-443.conf", "CapabilityBoundingSet"),
        "CAP_NET_BIND_SERVICE"
    );
    assert_eq!(drop_in_value("bind-443.conf", "PrivateUsers"), "no");

    let tmp = tempfile::tempdir().unwrap();
    // The service user must reach its directories through the temporary directory.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let (state, runtime, credentials) = (
        tmp.path().join("state"),
        tmp.path().join("run"),
        tmp.path().join("credentials"),
    );
    let keys = crate::harness::Keys::new(&credentials, 48);
    std::fs::copy(&example, credentials.join("config")).unwrap();
    for dir in [&state, &runtime] {
        std::fs::create_dir(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    for path in [&state, &runtime, &credentials] {
        std::os::unix::fs::chown(path, Some(SERVICE_UID), Some(SERVICE_UID)).unwrap();
    }
    for name in ["config", "master-key", "webhook-secret", "admin-token"] {
        let file = credentials.join(name);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&file, Some(SERVICE_UID), Some(SERVICE_UID)).unwrap();
    }
    let port = free_low_port();
    let start = |capabilities: bool| {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={SERVICE_UID}"))
            .arg(format!("--regid={SERVICE_UID}"))
            .arg("--clear-groups");
        if capabilities {
            cmd.args([
                "--inh-caps=+net_bind_service",
                "--ambient-caps=+net_bind_service",
                "--bounding-set=-all,+net_bind_service",
            ]);
        } else {
            cmd.args(["--inh-caps=-all", "--bounding-set=-all"]);
        }
        cmd.arg("--").arg(env!("CARGO_BIN_EXE_sharevault"));
        cmd.args(exec.split_whitespace().map(|w| {
            w.replace(
                "${CREDENTIALS_DIRECTORY}",
                &credentials.display().to_string(),
            )
            .replace("${STATE_DIRECTORY}", &state.display().to_string())
            .replace("${RUNTIME_DIRECTORY}", &runtime.display().to_string())
        }));
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("SHAREVAULT_") {
                cmd.env_remove(var);
            }
        }
        // The example's own ports are fixed ones; the test's are ephemeral, and the webhook's
        // is under 1024 (`--http-listen 0.0.0.0:443` in production).
        cmd.env("CREDENTIALS_DIRECTORY", &credentials)
            .env("SHAREVAULT_GRPC_LISTEN", "127.0.0.1:0")
            .env("SHAREVAULT_HTTP_LISTEN", format!("127.0.0.1:{port}"))
            .env("SHAREVAULT_JOURNAL_BYTES", "4194304")
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .current_dir(tmp.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        crate::harness::Daemon::launch(cmd)
    };
    match start(false) {
        crate::harness::Started::Exited { logs, .. } => assert!(
            logs.contains(&format!("cannot listen on 127.0.0.1:{port}")),
            "{logs}"
        ),
        crate::harness::Started::Ready(_) => panic!("bound port {port} without the capability"),
    }
    let daemon = match start(true) {
        crate::harness::Started::Ready(daemon) => daemon,
        crate::harness::Started::Exited { status, logs } => {
            panic!("the documented config did not start ({status}):\n{logs}")
        }
    };
    assert_eq!(
        daemon.webhook_addr.as_deref(),
        Some(format!("127.0.0.1:{port}").as_str())
    );
    assert!(runtime.join("admin.sock").exists(), "no admin socket");
    use std::os::unix::fs::MetadataExt;
    let vault = std::fs::metadata(state.join("sharevault.redb")).unwrap();
    assert_eq!(
        vault.uid(),
        SERVICE_UID,
        "the vault belongs to the service user"
    );
    let hook = crate::http_client::Http::plain(&format!("127.0.0.1:{port}"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reply = rt.block_on(send(
        &hook,
        "/backup/fetch".into(),
        &keys,
        serde_json::json!({"clientId": "c"}),
    ));
    assert_eq!(reply.status, 200);
}
