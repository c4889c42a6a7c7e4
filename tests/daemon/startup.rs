//! Starting and stopping: secrets, refusal of wrong keys and unsafe permissions, health,
//! systemd notification, Unix sockets and configuration files.

use crate::harness::{Daemon, Keys, Sandbox, Started, command, with_secret, with_token};
use sharevault::pb;
use std::os::unix::fs::PermissionsExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

fn exited(started: Started) -> String {
    match started {
        Started::Ready(_) => panic!("the daemon should have refused to start"),
        Started::Exited { status, logs } => {
            assert!(!status.success());
            logs
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_generates_secrets_that_work_and_are_private() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let args = vec!["--grpc-listen".to_string(), "127.0.0.1:0".to_string()];
    let Started::Ready(daemon) = Daemon::launch(command(&data, &args)) else {
        panic!("first start failed")
    };
    let logs = daemon.logs();
    assert!(logs.contains("generated a new master key"), "{logs}");
    for name in [
        "master-key",
        "webhook-secret",
        "admin-token",
        "sharevault.redb",
    ] {
        let mode = std::fs::metadata(data.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{name} is private");
    }
    let secret = std::fs::read_to_string(data.join("webhook-secret")).unwrap();
    let admin = std::fs::read_to_string(data.join("admin-token")).unwrap();
    assert!(!logs.contains(secret.trim()) && !logs.contains(admin.trim()));
    daemon
        .webhook()
        .await
        .backup(with_secret(
            pb::BackupRequest {
                client_id: "c".into(),
                backup_method: "PASSWORD-SECP256K1".into(),
                share: "s".into(),
                backup_share_pair_id: None,
            },
            secret.trim(),
        ))
        .await
        .unwrap();
    daemon
        .admin()
        .await
        .get_status(with_token(pb::GetStatusRequest {}, admin.trim()))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_master_key_or_unsafe_permissions_are_refused() {
    let sandbox = Sandbox::new(9);
    drop(sandbox.start());

    let other = Keys::new(&sandbox.tmp.path().join("other-keys"), 10);
    let logs = exited(Daemon::launch(command(
        &sandbox.data_dir,
        &Daemon::tcp_args(&other),
    )));
    assert!(
        logs.contains("is not the key this data dir was sealed with"),
        "{logs}"
    );

    std::fs::set_permissions(
        &sandbox.keys.master_key_file,
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let logs = exited(Daemon::launch(command(
        &sandbox.data_dir,
        &Daemon::tcp_args(&sandbox.keys),
    )));
    assert!(logs.contains("accessible by other users"), "{logs}");
    std::fs::set_permissions(
        &sandbox.keys.master_key_file,
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    std::fs::set_permissions(&sandbox.data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let logs = exited(Daemon::launch(command(
        &sandbox.data_dir,
        &Daemon::tcp_args(&sandbox.keys),
    )));
    assert!(
        logs.contains("data dir") && logs.contains("accessible by other users"),
        "{logs}"
    );
    std::fs::set_permissions(&sandbox.data_dir, std::fs::Permissions::from_mode(0o700)).unwrap();

    // Without a master key, no new one is invented for an existing vault.
    let args = vec!["--grpc-listen".to_string(), "127.0.0.1:0".to_string()];
    let logs = exited(Daemon::launch(command(&sandbox.data_dir, &args)));
    assert!(logs.contains("no master key was given"), "{logs}");

    // And the right key still opens it.
    drop(sandbox.start());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_data_dir_is_refused() {
    let sandbox = Sandbox::new(11);
    let _first = sandbox.start();
    let logs = exited(Daemon::launch(command(
        &sandbox.data_dir,
        &Daemon::tcp_args(&sandbox.keys),
    )));
    // Refused at the data dir's lock, before anything of the data dir is read or written.
    assert!(
        logs.contains("is in use by another sharevault process"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_serving_per_service_and_systemd_is_notified() {
    let sandbox = Sandbox::new(12);
    let socket_path = sandbox.tmp.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    notify
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut cmd = command(&sandbox.data_dir, &Daemon::tcp_args(&sandbox.keys));
    cmd.env("NOTIFY_SOCKET", &socket_path);
    let Started::Ready(mut daemon) = Daemon::launch(cmd) else {
        panic!("start failed")
    };
    // While the database opens, systemd hears that the start is still under way (so that a
    // long repair after a crash does not hit its start timeout); then READY=1.
    let mut buf = [0u8; 256];
    let mut before_ready = Vec::new();
    loop {
        let n = notify.recv(&mut buf).unwrap();
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        if message.contains("READY=1") {
            assert!(message.contains("STATUS=serving"), "{message}");
            break;
        }
        before_ready.push(message);
    }
    assert!(
        before_ready
            .iter()
            .any(|m| m.contains("STATUS=opening the database")),
        "{before_ready:?}"
    );
    assert!(
        before_ready
            .iter()
            .any(|m| m.contains("EXTEND_TIMEOUT_USEC=30000000")),
        "{before_ready:?}"
    );

    let mut health = HealthClient::new(daemon.channel().await);
    for service in [
        "",
        "sharevault.v1.WebhookService",
        "sharevault.v1.BackupService",
        "sharevault.v1.AdminService",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service}");
    }
    let status = daemon.signal("TERM");
    assert!(status.success());
    let n = notify.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_on_a_unix_socket_configured_from_a_file() {
    let sandbox = Sandbox::new(13);
    let socket = sandbox.tmp.path().join("sharevault.sock");
    let config = sandbox.tmp.path().join("sharevault.toml");
    std::fs::write(
        &config,
        format!(
            "grpc_listen = \"unix:{}\"\nmaster_key_file = \"{}\"\nwebhook_secret_file = \"{}\"\nadmin_token_file = \"{}\"\nmax_share_bytes = 10\n",
            socket.display(),
            sandbox.keys.master_key_file.display(),
            sandbox.keys.dir.join("webhook-secret").display(),
            sandbox.keys.dir.join("admin-token").display(),
        ),
    )
    .unwrap();
    let args = vec!["--config".to_string(), config.display().to_string()];
    let Started::Ready(daemon) = Daemon::launch(command(&sandbox.data_dir, &args)) else {
        panic!("start failed")
    };
    assert_eq!(daemon.endpoint, socket.display().to_string());
    let mut webhook = daemon.webhook().await;
    let request = |share: &str| pb::BackupRequest {
        client_id: "unix-client".into(),
        backup_method: "GDRIVE-SECP256K1".into(),
        share: share.into(),
        backup_share_pair_id: None,
    };
    webhook
        .backup(with_secret(
            request("0123456789"),
            &sandbox.keys.webhook_secret,
        ))
        .await
        .unwrap();
    let err = webhook
        .backup(with_secret(
            request("01234567890"),
            &sandbox.keys.webhook_secret,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.message(), "share: must be at most 10 bytes");

    // An unknown setting in the file is refused before anything starts.
    std::fs::write(&config, "grpc_listen = \"127.0.0.1:0\"\nmax_shares = 3\n").unwrap();
    let logs = exited(Daemon::launch(command(&sandbox.data_dir, &args)));
    assert!(logs.contains("max_shares"), "{logs}");
}

/// A data dir that lost its database but still holds its log, or the secrets a first
/// start generated there, is not a new vault: the start is refused, names what it found, and
/// changes nothing; `--init` starts a new, empty vault there on purpose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_whose_database_is_missing_is_refused_unless_init() {
    // A log, no database.
    let sandbox = Sandbox::new(94);
    let mut daemon = sandbox.start();
    assert!(daemon.signal("TERM").success());
    std::fs::remove_file(sandbox.database()).unwrap();
    let before = crate::harness::dir_digest(&sandbox.data_dir);
    let args = Daemon::tcp_args(&sandbox.keys);
    let logs = exited(Daemon::launch(command(&sandbox.data_dir, &args)));
    assert!(logs.contains("the database is missing"), "{logs}");
    assert!(logs.contains("the database's log"), "{logs}");
    assert!(logs.contains("--init"), "{logs}");
    assert_eq!(crate::harness::dir_digest(&sandbox.data_dir), before);
    let daemon = sandbox.start_with(&["--init"]);
    assert!(daemon.logs().contains("sharevault is ready"));
    drop(daemon);

    // Generated secrets, no database (nor its log).
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let args = vec!["--grpc-listen".to_string(), "127.0.0.1:0".to_string()];
    let Started::Ready(mut daemon) = Daemon::launch(command(&data, &args)) else {
        panic!("first start failed")
    };
    assert!(daemon.signal("TERM").success());
    std::fs::remove_file(data.join("sharevault.redb")).unwrap();
    std::fs::remove_file(data.join("sharevault.redb.log")).unwrap();
    let before = crate::harness::dir_digest(&data);
    let logs = exited(Daemon::launch(command(&data, &args)));
    assert!(logs.contains("the database is missing"), "{logs}");
    assert!(logs.contains("generated master key"), "{logs}");
    assert!(
        !logs.contains(
            &std::fs::read_to_string(data.join("master-key"))
                .unwrap()
                .trim()
                .to_string()
        )
    );
    assert_eq!(crate::harness::dir_digest(&data), before);
}

/// A first start refused after its secrets were generated (here: its port is taken) writes
/// none of them, so that the next start is still a first start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_first_start_leaves_the_data_dir_empty() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let args = vec![
        "--grpc-listen".to_string(),
        taken.local_addr().unwrap().to_string(),
    ];
    let logs = exited(Daemon::launch(command(&data, &args)));
    assert!(logs.contains("cannot listen"), "{logs}");
    assert_eq!(std::fs::read_dir(&data).unwrap().count(), 0);
    let args = vec!["--grpc-listen".to_string(), "127.0.0.1:0".to_string()];
    let Started::Ready(_daemon) = Daemon::launch(command(&data, &args)) else {
        panic!("the next first start failed")
    };
}

/// The data dir itself is fsynced after a first start creates files in it (the database, its
/// log or journals, the generated secrets), so that they survive a power loss: seen with
/// strace, as an `fsync` of a descriptor opened on the data dir, after the files are created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_fsyncs_the_data_dir_after_creating_its_files() {
    let strace = std::process::Command::new("strace").arg("-V").output();
    assert!(
        strace.is_ok_and(|o| o.status.success()),
        "this test needs strace: apt-get install strace (scripts/test installs it)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let trace = tmp.path().join("trace");
    let args = vec!["--grpc-listen".to_string(), "127.0.0.1:0".to_string()];
    let plain = command(&data, &args);
    let mut traced = std::process::Command::new("strace");
    traced
        .args(["-f", "-qq", "-e", "trace=openat,fsync,fdatasync", "-o"])
        .arg(&trace)
        .arg(plain.get_program())
        .args(plain.get_args())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (name, value) in plain.get_envs() {
        match value {
            Some(value) => traced.env(name, value),
            None => traced.env_remove(name),
        };
    }
    let Started::Ready(daemon) = Daemon::launch(traced) else {
        panic!("first start under strace failed")
    };
    drop(daemon);
    let trace = std::fs::read_to_string(&trace).unwrap();
    let dir = data.display().to_string();
    // `PID openat(AT_FDCWD, "DIR", O_RDONLY|O_CLOEXEC) = FD`, later `PID fsync(FD) = 0`.
    let mut dir_fds = Vec::new();
    let mut created = false;
    let mut synced_after_creation = false;
    for line in trace.lines() {
        if line.contains("openat(") && line.contains("O_CREAT") && line.contains(&dir) {
            created = true;
            synced_after_creation = false;
        }
        if line.contains(&format!("\"{dir}\""))
            && line.contains("openat(")
            && let Some(fd) = line
                .rsplit("= ")
                .next()
                .and_then(|fd| fd.trim().parse::<i32>().ok())
        {
            dir_fds.push(fd);
        }
        for fd in &dir_fds {
            if line.contains(&format!("fsync({fd})")) && line.trim_end().ends_with("= 0") {
                synced_after_creation = true;
            }
        }
    }
    assert!(
        created,
        "the first start created files in the data dir:\n{trace}"
    );
    assert!(
        synced_after_creation,
        "the data dir is fsynced after the last file created in it"
    );
}
