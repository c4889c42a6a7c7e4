//! The shipped systemd unit: systemd accepts it without a warning, rates its exposure low, and
//! its command line and credentials are the ones the daemon understands.

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
