//! nginx in front, as docs/install.md ("Behind a reverse proxy") sets it up: TLS terminated
//! by nginx, `X-Forwarded-For` believed from `--trusted-proxies` only, `selftest` passing
//! through it, and the allow-list seeing the client's address rather than nginx's.

use crate::http_client::{Http, TestCert};
use serde_json::json;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NGINX: &str = "/usr/sbin/nginx";

/// The server block docs/install.md shows, from its first line to the closing brace.
fn documented_server_block() -> String {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/install.md"))
            .unwrap();
    let start = doc
        .find("# /etc/nginx/conf.d/sharevault.conf\n")
        .expect("the nginx server block in docs/install.md");
    let block = &doc[start..];
    block[..block.find("\n```").unwrap()].to_owned()
}

/// nginx, stopped when dropped.
struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts nginx in `dir` with the documented server block, listening on `port` with `cert`
/// and forwarding to `upstream`; waits until it accepts connections.
fn start_nginx(dir: &Path, port: u16, cert: &TestCert, upstream: &str) -> Nginx {
    if !Path::new(NGINX).exists() {
        panic!(
            "nginx is needed for the reverse proxy test: install it (Debian: apt-get install \
             nginx, or scripts/test --setup-only) and run the tests again"
        );
    }
    let mut server = String::new();
    for line in documented_server_block().lines() {
        let trimmed = line.trim_start();
        let line = if trimmed.starts_with("listen ") {
            format!("    listen 127.0.0.1:{port} ssl;\n    listen [::1]:{port} ssl;")
        } else if trimmed.starts_with("ssl_certificate ") {
            format!("    ssl_certificate {};", cert.cert_file.display())
        } else if trimmed.starts_with("ssl_certificate_key ") {
            format!("    ssl_certificate_key {};", cert.key_file.display())
        } else {
            line.replace("127.0.0.1:7451", upstream)
        };
        server.push_str(&line);
        server.push('\n');
    }
    let d = dir.display();
    let config = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log stderr warn;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  \
         proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
         uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{server}}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, config).unwrap();
    let child = Command::new(NGINX)
        .arg("-e")
        .arg("stderr")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start nginx");
    let mut nginx = Nginx(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = nginx.0.try_wait().unwrap() {
            panic!(
                "nginx exited ({status}); its config:\n{}",
                std::fs::read_to_string(&path).unwrap()
            );
        }
        assert!(Instant::now() < deadline, "nginx did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    nginx
}

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_nginx_selftest_passes_and_the_allow_list_sees_the_real_source() {
    let sandbox = crate::harness::Sandbox::new(36);
    // 127.0.0.2 stands for Portal, ::1 for the host the operator runs selftest from.
    let daemon = sandbox.start_with(&[
        "--trusted-proxies",
        "127.0.0.1",
        "--webhook-allow-cidrs",
        "127.0.0.2,::1",
    ]);
    let certs = sandbox.tmp.path().join("nginx-cert");
    std::fs::create_dir(&certs).unwrap();
    let cert = TestCert::for_names(&certs, &["localhost", "127.0.0.1", "::1"]);
    let prefix = sandbox.tmp.path().join("nginx");
    std::fs::create_dir(&prefix).unwrap();
    let port = free_port();
    let _nginx = start_nginx(
        &prefix,
        port,
        &cert,
        daemon.webhook_addr.as_deref().unwrap(),
    );
    let front = format!("127.0.0.1:{port}");

    let secret_file = sandbox.keys.dir.join("webhook-secret");
    let selftest = |url: String| {
        let dir = sandbox.tmp.path().to_owned();
        let (secret_arg, ca_arg) = (
            secret_file.display().to_string(),
            cert.cert_file.display().to_string(),
        );
        tokio::task::spawn_blocking(move || {
            crate::cli::sharevault(
                &dir,
                &[
                    "selftest",
                    "--webhook-url",
                    &url,
                    "--webhook-secret-file",
                    &secret_arg,
                    "--ca-file",
                    &ca_arg,
                ],
                &[],
            )
        })
    };
    // From an address the list admits: every check passes through nginx.
    let run = selftest(format!("https://[::1]:{port}")).await.unwrap();
    assert!(
        run.ok,
        "selftest through nginx:\n{}\n{}",
        run.stdout, run.stderr
    );
    // From 127.0.0.1, nginx's own address: the daemon cannot tell the client from the proxy,
    // and the allow-list refuses it (docs/install.md says to run it from an admitted address).
    let run = selftest(format!("https://127.0.0.1:{port}")).await.unwrap();
    assert!(!run.ok);
    assert!(run.stdout.contains("answered 403"), "{}", run.stdout);

    let secret = sandbox.keys.webhook_secret.as_str();
    let fetch = |source: &str, forwarded: Option<&str>| {
        let client = Http::tls(&front, &cert).bound_to(source);
        let forwarded = forwarded.map(str::to_owned);
        async move {
            let mut headers = vec![("x-webhook-secret", secret)];
            if let Some(value) = forwarded.as_deref() {
                headers.push(("x-forwarded-for", value));
            }
            client
                .post_json("/backup/fetch", &headers, &json!({"clientId": "proxied"}))
                .await
        }
    };
    let allowed = fetch("127.0.0.2", None).await;
    assert_eq!(
        allowed.status,
        200,
        "{}",
        String::from_utf8_lossy(&allowed.body)
    );
    let refused = fetch("127.0.0.3", None).await;
    assert_eq!(
        refused.status,
        403,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    // nginx replaces what the client claims: an allowed address sent by the client is not
    // believed.
    let claimed = fetch("127.0.0.3", Some("127.0.0.2")).await;
    assert_eq!(
        claimed.status,
        403,
        "{}",
        String::from_utf8_lossy(&claimed.body)
    );
}
