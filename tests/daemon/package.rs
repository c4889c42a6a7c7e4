//! The Debian package built by `packaging/deb/build` (cargo-deb): the files it holds and their
//! modes; and, installed on this machine with dpkg, that it creates the `sharevault` user,
//! starts nothing and generates no secret, that its unit passes `systemd-analyze verify` and its
//! command line starts the installed binary, and that an upgrade, a removal and a purge keep the
//! vault and the secrets.
//!
//! The package is made of the debug binary these tests run (`--profile dev --no-build`), so
//! that no second build is needed: a few seconds.

use crate::harness::{Daemon, Keys, Started};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

const CARGO_DEB_INSTALL: &str = "cargo install cargo-deb --locked --version 3.8.0";

/// `packaging/deb/build` writes into target/debug/package/: one build at a time.
static BUILD: Mutex<()> = Mutex::new(());

fn source(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs `cmd`; fails, saying how to install `program`, when it is missing.
fn output(cmd: &mut Command, install: &str) -> Output {
    match cmd.output() {
        Ok(output) => output,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            panic!("{:?} is needed: {install}", cmd.get_program())
        }
        Err(err) => panic!("cannot run {:?}: {err}", cmd.get_program()),
    }
}

/// Runs `cmd`, which must succeed; returns its stdout and stderr.
fn ok(cmd: &mut Command, install: &str) -> String {
    let out = output(cmd, install);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// Builds the package at revision `revision` into `dir`.
fn build_package(dir: &Path, revision: &str) -> PathBuf {
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let binary = Path::new(env!("CARGO_BIN_EXE_sharevault"));
    let target_dir = binary.parent().and_then(Path::parent).unwrap();
    let deb = dir.join(format!("sharevault_0.1.0-{revision}.deb"));
    let out = output(
        Command::new(source("packaging/deb/build"))
            .args(["--profile", "dev", "--no-build", "--fast", "--deb-revision"])
            .arg(revision)
            .arg("--output")
            .arg(&deb)
            .env("CARGO_TARGET_DIR", target_dir),
        "bash",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("cargo-deb is needed"),
        "cargo-deb is needed to build the package: {CARGO_DEB_INSTALL}"
    );
    assert!(
        out.status.success(),
        "packaging/deb/build failed:\n{stderr}"
    );
    deb
}

/// The unit the package must install: the repository's, with the package's binary path and
/// system user.
fn expected_unit() -> String {
    let unit = std::fs::read_to_string(source("systemd/sharevault.service")).unwrap();
    assert!(unit.contains("\nDynamicUser=yes\n"), "{unit}");
    unit.replace(
        "ExecStart=/usr/local/bin/sharevault ",
        "ExecStart=/usr/bin/sharevault ",
    )
    .replace(
        "\nDynamicUser=yes\n",
        "\nUser=sharevault\nGroup=sharevault\n",
    )
}

const PACKAGED_FILES: [(&str, &str); 13] = [
    ("./usr/bin/sharevault", "-rwxr-xr-x"),
    ("./usr/lib/systemd/system/sharevault.service", "-rw-r--r--"),
    ("./usr/lib/sysusers.d/sharevault.conf", "-rw-r--r--"),
    ("./etc/sharevault/sharevault.toml.example", "-rw-r--r--"),
    (
        "./usr/share/bash-completion/completions/sharevault",
        "-rw-r--r--",
    ),
    (
        "./usr/share/zsh/vendor-completions/_sharevault",
        "-rw-r--r--",
    ),
    (
        "./usr/share/fish/vendor_completions.d/sharevault.fish",
        "-rw-r--r--",
    ),
    ("./usr/share/man/man1/sharevault.1.gz", "-rw-r--r--"),
    ("./usr/share/man/man1/sharevault-serve.1.gz", "-rw-r--r--"),
    ("./usr/share/man/man1/sharevault-status.1.gz", "-rw-r--r--"),
    (
        "./usr/share/man/man1/sharevault-token-create.1.gz",
        "-rw-r--r--",
    ),
    ("./usr/share/doc/sharevault/README.md", "-rw-r--r--"),
    ("./usr/share/doc/sharevault/copyright", "-rw-r--r--"),
];

#[test]
fn the_package_holds_the_binary_unit_user_config_completions_and_man_pages() {
    let tmp = tempfile::tempdir().unwrap();
    let deb = build_package(tmp.path(), "1");

    // `dpkg-deb --contents`: "-rwxr-xr-x 0/0 31969944 2026-12-02 00:00 ./usr/bin/sharevault"
    let listing = ok(
        Command::new("dpkg-deb").arg("--contents").arg(&deb),
        "apt-get install dpkg",
    );
    for (path, mode) in PACKAGED_FILES {
        let line = listing
            .lines()
            .find(|l| l.ends_with(&format!(" {path}")))
            .unwrap_or_else(|| panic!("{path} is not in the package:\n{listing}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[0], mode, "{line}");
        assert_eq!(fields[1], "0/0", "{path} must belong to root: {line}");
    }
    // No secret, and no data dir: those are the operator's.
    for absent in ["master-key", "webhook-secret", "admin-token", "var/lib"] {
        assert!(
            !listing.contains(absent),
            "{absent} in the package:\n{listing}"
        );
    }
    let info = ok(
        Command::new("dpkg-deb").arg("--info").arg(&deb),
        "apt-get install dpkg",
    );
    assert!(info.contains("Package: sharevault"), "{info}");
    assert!(info.contains("Version: 0.1.0-1"), "{info}");

    let root = tmp.path().join("root");
    ok(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
        "apt-get install dpkg",
    );
    let read = |path: &str| std::fs::read_to_string(root.join(path)).unwrap();
    assert_eq!(
        read("usr/lib/systemd/system/sharevault.service"),
        expected_unit()
    );
    // As hardened under its system user as the repository's unit under a dynamic one.
    let packaged = root.join("usr/lib/systemd/system/sharevault.service");
    let (packaged_exposure, report) = crate::systemd::exposure(&packaged);
    let (source_exposure, _) = crate::systemd::exposure(&source("systemd/sharevault.service"));
    assert!(packaged_exposure <= source_exposure, "{report}");
    let sysusers = read("usr/lib/sysusers.d/sharevault.conf");
    assert!(
        sysusers
            .lines()
            .any(|l| l.starts_with("u sharevault ") && l.contains(" /var/lib/sharevault ")),
        "{sysusers}"
    );

    // The packaged binary runs, and its completions and man pages describe its commands.
    let version = ok(
        Command::new(root.join("usr/bin/sharevault")).arg("--version"),
        "",
    );
    assert_eq!(version.trim(), "sharevault 0.1.0");
    let bash = read("usr/share/bash-completion/completions/sharevault");
    for word in ["check-config", "--connect", "--admin-token-file"] {
        assert!(bash.contains(word), "{word} not in the bash completions");
    }
    assert!(
        !bash.contains("package-files"),
        "a hidden command is offered"
    );
    ok(
        Command::new("bash")
            .arg("-n")
            .arg(root.join("usr/share/bash-completion/completions/sharevault")),
        "apt-get install bash",
    );
    let man = ok(
        Command::new("zcat").arg(root.join("usr/share/man/man1/sharevault-status.1.gz")),
        "apt-get install gzip",
    );
    assert!(man.contains(".TH sharevault-status 1"), "{man}");
    assert!(man.contains("https://HOST:PORT"), "{man}");

    // The example configuration is one the daemon accepts.
    let keys = Keys::new(&tmp.path().join("keys"), 50);
    let mut check = Command::new(root.join("usr/bin/sharevault"));
    check
        .arg("check-config")
        .arg("--config")
        .arg(root.join("etc/sharevault/sharevault.toml.example"))
        .args(["--data-dir", &tmp.path().join("data").display().to_string()])
        .args(keys.args())
        .env_remove("CREDENTIALS_DIRECTORY");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SHAREVAULT_") {
            check.env_remove(name);
        }
    }
    ok(&mut check, "");
}

/// The state of this machine the install test changes, restored when it ends (even by a
/// failure): the package purged, its directories removed, and the user deleted if the test
/// created it.
struct Machine {
    had_user: bool,
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .args(["--purge", "sharevault"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all("/etc/sharevault");
        let _ = std::fs::remove_dir_all("/var/lib/sharevault");
        if !self.had_user {
            let _ = Command::new("userdel").arg("sharevault").status();
        }
    }
}

fn is_root() -> bool {
    let id = ok(Command::new("id").arg("-u"), "apt-get install coreutils");
    id.trim() == "0"
}

fn installed_version() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Status} ${Version}", "sharevault"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.strip_prefix("install ok installed ")
        .map(str::to_owned)
}

/// The `sharevault` user's uid, gid, home and shell, from `getent passwd`.
fn service_user() -> Option<(u32, u32, String, String)> {
    let out = Command::new("getent")
        .args(["passwd", "sharevault"])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let f: Vec<&str> = line.split(':').collect();
    (f.len() == 7).then(|| {
        (
            f[2].parse().unwrap(),
            f[3].parse().unwrap(),
            f[5].to_owned(),
            f[6].to_owned(),
        )
    })
}

fn mode(path: &str) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn dpkg(args: &[&str], env: &[(&str, &str)]) -> String {
    ok(
        Command::new("dpkg").args(args).envs(env.iter().copied()),
        "apt-get install dpkg",
    )
}

/// Starts the installed binary as systemd would start the packaged unit: its ExecStart line as
/// the `sharevault` user, with the state directory /var/lib/sharevault, a runtime directory
/// and the credentials in `tmp`. Only the two fixed ports become ephemeral ones (tests bind
/// no fixed port).
fn start_as_the_unit(tmp: &Path, user: (u32, u32)) -> (Daemon, PathBuf) {
    let unit = std::fs::read_to_string("/usr/lib/systemd/system/sharevault.service").unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let runtime = tmp.join("run-sharevault");
    let credentials = tmp.join("credentials");
    for (dir, owner) in [
        (Path::new("/var/lib/sharevault"), user),
        (&runtime, user),
        (&credentials, user),
    ] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(dir, Some(owner.0), Some(owner.1)).unwrap();
    }
    for name in ["master-key", "webhook-secret", "admin-token"] {
        let copy = credentials.join(name);
        std::fs::copy(Path::new("/etc/sharevault").join(name), &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o400)).unwrap();
        std::os::unix::fs::chown(&copy, Some(user.0), Some(user.1)).unwrap();
    }
    let words: Vec<String> = exec
        .split_whitespace()
        .map(|w| {
            w.replace("${STATE_DIRECTORY}", "/var/lib/sharevault")
                .replace("${RUNTIME_DIRECTORY}", &runtime.display().to_string())
                .replace("127.0.0.1:7450", "127.0.0.1:0")
                .replace("127.0.0.1:7451", "127.0.0.1:0")
        })
        .collect();
    assert_eq!(&words[..2], ["/usr/bin/sharevault", "serve"], "{exec}");
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid",
        "sharevault",
        "--regid",
        "sharevault",
        "--clear-groups",
    ])
    .args(&words)
    .env("CREDENTIALS_DIRECTORY", &credentials)
    .env("RUST_LOG", "info")
    .env_remove("NOTIFY_SOCKET")
    .current_dir("/")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SHAREVAULT_") {
            cmd.env_remove(name);
        }
    }
    match Daemon::launch(cmd) {
        Started::Ready(daemon) => (daemon, runtime.join("admin.sock")),
        Started::Exited { status, logs } => {
            panic!("the installed daemon did not start ({status}):\n{logs}")
        }
    }
}

/// `sharevault ARGS --json` over the local admin socket, as root, with the installed binary.
fn admin(socket: &Path, args: &[&str]) -> serde_json::Value {
    let text = ok(
        Command::new("/usr/bin/sharevault")
            .args(args)
            .args(["--json", "--connect"])
            .arg(format!("unix:{}", socket.display()))
            .stderr(Stdio::null()),
        "",
    );
    serde_json::from_str(&text).unwrap()
}

fn status(socket: &Path) -> serde_json::Value {
    admin(socket, &["status"])
}

#[test]
fn installed_with_dpkg_it_waits_for_the_operators_secrets_and_keeps_the_vault() {
    assert!(
        is_root(),
        "this test installs the package on this machine with dpkg -i, creates the sharevault \
         user and removes both at the end: run it as root (CI does)"
    );
    assert_eq!(
        installed_version(),
        None,
        "a sharevault package is installed on this machine: the test would replace it; \
         remove it first (dpkg --purge sharevault)"
    );
    for dir in ["/etc/sharevault", "/var/lib/sharevault"] {
        assert!(
            !Path::new(dir).exists(),
            "{dir} exists on this machine: the test would change it; move it away first"
        );
    }
    let _machine = Machine {
        had_user: service_user().is_some(),
    };
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let first = build_package(tmp.path(), "1");
    let second = build_package(tmp.path(), "2");

    // Installed: the user exists, the files are in place, and nothing runs or was generated.
    let said = dpkg(&["-i", &first.display().to_string()], &[]);
    assert!(said.contains("installed but not started"), "{said}");
    assert_eq!(installed_version().as_deref(), Some("0.1.0-1"));
    let (uid, gid, home, shell) = service_user().expect("the sharevault user");
    assert!((1..1000).contains(&uid), "a system user: uid {uid}");
    assert_eq!(
        (home.as_str(), shell.as_str()),
        ("/var/lib/sharevault", "/usr/sbin/nologin")
    );
    for (path, expected) in [
        ("/usr/bin/sharevault", 0o755),
        ("/usr/lib/systemd/system/sharevault.service", 0o644),
        ("/usr/lib/sysusers.d/sharevault.conf", 0o644),
        ("/etc/sharevault", 0o700),
        ("/etc/sharevault/sharevault.toml.example", 0o644),
    ] {
        assert_eq!(mode(path), expected, "mode of {path}: {:o}", mode(path));
        assert_eq!(std::fs::metadata(path).unwrap().uid(), 0, "{path} owner");
    }
    assert!(
        !Path::new("/etc/systemd/system/multi-user.target.wants/sharevault.service").exists(),
        "installing must not enable the unit"
    );
    let etc: Vec<String> = std::fs::read_dir("/etc/sharevault")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(etc, ["sharevault.toml.example"], "no secret is generated");
    assert!(
        !Path::new("/var/lib/sharevault").exists(),
        "no vault before a start"
    );

    // The operator's step: the three secrets, root's, mode 0600.
    let keys = Keys::new(Path::new("/etc/sharevault"), 51);
    let secrets = |dir: &Path| -> Vec<Vec<u8>> {
        ["master-key", "webhook-secret", "admin-token"]
            .iter()
            .map(|name| std::fs::read(dir.join(name)).unwrap())
            .collect()
    };
    let chosen = secrets(&keys.dir);

    // systemd accepts the installed unit as it is.
    let verify = output(
        Command::new("systemd-analyze")
            .args(["verify", "/usr/lib/systemd/system/sharevault.service"]),
        "apt-get install systemd",
    );
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(verify.status.success(), "{report}");
    assert!(
        !report.lines().any(|l| l.contains("sharevault")),
        "systemd-analyze verify warns about the installed unit:\n{report}"
    );

    // The unit's command line starts the installed binary as the sharevault user.
    let (mut daemon, socket) = start_as_the_unit(tmp.path(), (uid, gid));
    let before = status(&socket);
    assert_eq!(before["health"], "SERVING");
    admin(
        &socket,
        &["token", "create", "--name", "kept", "--role", "backend"],
    );
    assert!(daemon.signal("TERM").success(), "{}", daemon.logs());
    let vault = Path::new("/var/lib/sharevault/sharevault.redb");
    assert!(vault.exists());
    assert_eq!(std::fs::metadata(vault).unwrap().uid(), uid);

    // An upgrade keeps the vault and the secrets, and the new binary opens them.
    dpkg(&["-i", &second.display().to_string()], &[]);
    assert_eq!(installed_version().as_deref(), Some("0.1.0-2"));
    assert_eq!(secrets(&keys.dir), chosen, "the secrets survive an upgrade");
    assert_eq!(mode("/etc/sharevault"), 0o700);
    assert!(
        !Path::new("/etc/systemd/system/multi-user.target.wants/sharevault.service").exists(),
        "an upgrade must not enable the unit"
    );
    let (mut daemon, socket) = start_as_the_unit(tmp.path(), (uid, gid));
    let after = status(&socket);
    assert_eq!(after["health"], "SERVING");
    assert_eq!(after["master_key_id"], before["master_key_id"], "{after}");
    let tokens = admin(&socket, &["token", "list"]);
    assert_eq!(tokens["tokens"][0]["name"], "kept", "{tokens}");
    assert!(daemon.signal("TERM").success(), "{}", daemon.logs());

    // Removing keeps the configuration, the vault and the secrets; purging keeps the vault and
    // the secrets unless asked.
    dpkg(&["-r", "sharevault"], &[]);
    assert!(!Path::new("/usr/bin/sharevault").exists());
    assert!(Path::new("/etc/sharevault/sharevault.toml.example").exists());
    assert!(vault.exists());
    let said = dpkg(&["--purge", "sharevault"], &[]);
    assert!(said.contains("are kept"), "{said}");
    assert!(!Path::new("/etc/sharevault/sharevault.toml.example").exists());
    assert!(vault.exists(), "a purge keeps the vault unless asked");
    assert_eq!(secrets(&keys.dir), chosen, "a purge keeps the secrets");

    dpkg(&["-i", &second.display().to_string()], &[]);
    dpkg(
        &["--purge", "sharevault"],
        &[("SHAREVAULT_PURGE_DATA", "yes")],
    );
    assert!(
        !Path::new("/var/lib/sharevault").exists(),
        "asked, a purge removes the vault"
    );
    assert_eq!(secrets(&keys.dir), chosen, "the secrets are never removed");
}
