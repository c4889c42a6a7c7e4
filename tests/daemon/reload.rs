//! `systemctl reload` (SIGHUP) under a steady load of correct webhook calls: the webhook
//! secret and both listeners' certificate rotated without one failed request, new handshakes
//! see the new certificate, and a bad file is refused with the old secret and certificate
//! still in force.

use crate::harness::Sandbox;
use crate::http_client::TestCert;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The most calls each load task makes; it stops earlier once the test has done its part.
const MAX_CALLS_PER_TASK: usize = 3000;
const LOAD_TASKS: usize = 3;

fn write_private(path: &Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A TLS client trusting both test certificates, so that either may be served.
fn connector(certs: &[&TestCert]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert.der().clone()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    // Full handshakes only: a resumed session reports the certificate of the session it
    // resumes, not the one the listener serves now.
    config.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One request on a new connection (so a new handshake): its status and body, and the
/// certificate the listener presented.
async fn call(
    addr: &str,
    tls: &tokio_rustls::TlsConnector,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, Vec<u8>, CertificateDer<'static>), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tls
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let presented = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("http: {e}"))?;
    tokio::spawn(conn);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes()
        .to_vec();
    Ok((status, body, presented))
}

/// What the load saw: each call's secret (by index), its result and the certificate.
#[derive(Default)]
struct Seen {
    calls: Vec<(usize, Result<u16, String>, Option<usize>)>,
}

/// The steady load: `LOAD_TASKS` tasks each making fetch calls one after another with the
/// secret `secrets[phase]`, until `stop` or `MAX_CALLS_PER_TASK`.
struct Load {
    phase: Arc<AtomicUsize>,
    /// Calls in flight with each secret.
    in_flight: Arc<[AtomicUsize; 2]>,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(
        addr: String,
        tls: tokio_rustls::TlsConnector,
        secrets: [String; 2],
        certs: [CertificateDer<'static>; 2],
    ) -> Self {
        let phase = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let secrets = Arc::new(secrets);
        let certs = Arc::new(certs);
        let tasks = (0..LOAD_TASKS)
            .map(|_| {
                let (addr, tls, secrets, certs) =
                    (addr.clone(), tls.clone(), secrets.clone(), certs.clone());
                let (phase, in_flight, stop, seen) =
                    (phase.clone(), in_flight.clone(), stop.clone(), seen.clone());
                tokio::spawn(async move {
                    for _ in 0..MAX_CALLS_PER_TASK {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        // Counted in flight under the secret it uses, checked again after
                        // counting: the test retires the old secret only once no call can
                        // still use it.
                        let used = loop {
                            let p = phase.load(Ordering::SeqCst);
                            in_flight[p].fetch_add(1, Ordering::SeqCst);
                            if phase.load(Ordering::SeqCst) == p {
                                break p;
                            }
                            in_flight[p].fetch_sub(1, Ordering::SeqCst);
                        };
                        let headers = [("x-webhook-secret", secrets[used].as_str())];
                        let result = call(
                            &addr,
                            &tls,
                            "POST",
                            "/backup/fetch",
                            &headers,
                            br#"{"clientId":"reload-client"}"#,
                        )
                        .await;
                        let entry = match result {
                            Ok((status, body, presented)) => {
                                let ok = status == 200
                                    && String::from_utf8_lossy(&body).contains("kept across");
                                let which = certs.iter().position(|c| *c == presented);
                                let outcome = if ok {
                                    Ok(status)
                                } else {
                                    Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
                                };
                                (used, outcome, which)
                            }
                            Err(err) => (used, Err(err), None),
                        };
                        seen.lock().unwrap().calls.push(entry);
                        in_flight[used].fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        Self {
            phase,
            in_flight,
            stop,
            seen,
            tasks,
        }
    }

    fn served(&self) -> usize {
        self.seen.lock().unwrap().calls.len()
    }

    /// Waits until `n` more calls have been answered (at most 60 s).
    async fn wait_for_calls(&self, n: usize) {
        let target = self.served() + n;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.served() < target {
            assert!(Instant::now() < deadline, "the load stalled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Sends SIGHUP and waits until the daemon has logged `count` lines containing `marker`.
async fn reload(daemon: &crate::harness::Daemon, marker: &str, count: usize) {
    let ok = std::process::Command::new("kill")
        .arg("-HUP")
        .arg(daemon.pid().to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP failed");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logs = daemon.logs();
        if logs.matches(marker).count() >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {count} x '{marker}' in the logs:\n{logs}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const RELOADED: &str = "reloaded the webhook secrets and TLS certificates";
const REFUSED: &str = "reload refused";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rotates_the_webhook_secret_and_certificates_under_load_without_a_failed_call() {
    let sandbox = Sandbox::new(95);
    let dirs = ["first", "second", "served"].map(|d| {
        let dir = sandbox.tmp.path().join(d);
        std::fs::create_dir(&dir).unwrap();
        dir
    });
    let (first, second) = (TestCert::new(&dirs[0]), TestCert::new(&dirs[1]));
    let (cert_file, key_file) = (dirs[2].join("cert.pem"), dirs[2].join("key.pem"));
    let serve = |cert: &TestCert| {
        std::fs::copy(&cert.key_file, &key_file).unwrap();
        std::fs::copy(&cert.cert_file, &cert_file).unwrap();
    };
    serve(&first);
    let (c, k) = (
        cert_file.display().to_string(),
        key_file.display().to_string(),
    );
    let daemon = sandbox.start_with(&[
        "--http-tls-cert-file",
        &c,
        "--http-tls-key-file",
        &k,
        "--grpc-tls-cert-file",
        &c,
        "--grpc-tls-key-file",
        &k,
    ]);
    let webhook = daemon.webhook_addr.clone().unwrap();
    let private = daemon.endpoint.trim_start_matches("http://").to_owned();
    let tls = connector(&[&first, &second]);
    let secret_file = sandbox.keys.dir.join("webhook-secret");
    let old = sandbox.keys.webhook_secret.clone();
    let new = "the-rotated-webhook-secret-0123456789".to_string();
    let bad = "short";
    let post = |secret: String| {
        let (webhook, tls) = (webhook.clone(), tls.clone());
        async move {
            let headers = [("x-webhook-secret", secret.as_str())];
            call(
                &webhook,
                &tls,
                "POST",
                "/backup/fetch",
                &headers,
                br#"{"clientId":"reload-client"}"#,
            )
            .await
            .unwrap()
        }
    };
    let presented = |addr: String| {
        let tls = tls.clone();
        async move {
            call(&addr, &tls, "GET", "/readyz", &[], b"")
                .await
                .unwrap()
                .2
        }
    };

    let stored = call(
        &webhook,
        &tls,
        "POST",
        "/backup",
        &[("x-webhook-secret", old.as_str())],
        br#"{"clientId":"reload-client","backupMethod":"PASSWORD-SECP256K1","share":"kept across reloads"}"#,
    )
    .await
    .unwrap();
    assert_eq!(stored.0, 200, "{}", String::from_utf8_lossy(&stored.1));

    let mut load = Load::start(
        webhook.clone(),
        tls.clone(),
        [old.clone(), new.clone()],
        [first.der().clone(), second.der().clone()],
    );
    load.wait_for_calls(50).await;

    // 1. Both secrets in force; the load moves to the new one.
    write_private(&secret_file, &format!("{old}\n{new}\n"));
    reload(&daemon, RELOADED, 1).await;
    assert_eq!(post(new.clone()).await.0, 200, "the new secret, added");
    assert_eq!(
        post(old.clone()).await.0,
        200,
        "the old secret, still in force"
    );
    load.phase.store(1, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    while load.in_flight[0].load(Ordering::SeqCst) > 0 {
        assert!(
            Instant::now() < deadline,
            "calls with the old secret never ended"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    load.wait_for_calls(50).await;

    // 2. The old secret retired.
    write_private(&secret_file, &format!("{new}\n"));
    reload(&daemon, RELOADED, 2).await;
    assert_eq!(post(old.clone()).await.0, 401, "the retired secret");
    load.wait_for_calls(50).await;

    // 3. The certificate renewed: new handshakes on both listeners see the new one.
    assert_eq!(presented(webhook.clone()).await, *first.der());
    serve(&second);
    reload(&daemon, RELOADED, 3).await;
    for addr in [&webhook, &private] {
        assert_eq!(presented(addr.clone()).await, *second.der(), "{addr}");
    }
    load.wait_for_calls(50).await;

    // 4. Bad files are refused, and what was in force stays in force.
    write_private(&secret_file, &format!("{new}\n{bad}\n"));
    reload(&daemon, REFUSED, 1).await;
    assert_eq!(
        post(new.clone()).await.0,
        200,
        "after a refused secret file"
    );
    write_private(&secret_file, &format!("{new}\n"));
    load.wait_for_calls(50).await;
    std::fs::write(&cert_file, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    reload(&daemon, REFUSED, 2).await;
    std::fs::copy(&first.cert_file, &cert_file).unwrap(); // another certificate's key
    reload(&daemon, REFUSED, 3).await;
    for addr in [&webhook, &private] {
        assert_eq!(presented(addr.clone()).await, *second.der(), "{addr}");
    }
    assert_eq!(post(new.clone()).await.0, 200);
    load.wait_for_calls(50).await;

    load.stop.store(true, Ordering::SeqCst);
    for task in std::mem::take(&mut load.tasks) {
        task.await.unwrap();
    }
    let seen = std::mem::take(&mut *load.seen.lock().unwrap());
    let failed: Vec<_> = seen.calls.iter().filter(|c| c.1.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} calls failed: {:?}",
        failed.len(),
        seen.calls.len(),
        &failed[..failed.len().min(5)]
    );
    for secret in [0, 1] {
        assert!(
            seen.calls.iter().any(|c| c.0 == secret),
            "no call with secret {secret}"
        );
    }
    for cert in [0, 1] {
        assert!(
            seen.calls.iter().any(|c| c.2 == Some(cert)),
            "no handshake of the load saw certificate {cert}"
        );
    }
    // The load's last handshakes, after the renewal, all saw the new certificate.
    let last = &seen.calls[seen.calls.len() - LOAD_TASKS..];
    assert!(last.iter().all(|c| c.2 == Some(1)), "{:?}", last);

    let metrics = call(&private, &tls, "GET", "/metrics", &[], b"")
        .await
        .unwrap();
    let text = String::from_utf8(metrics.1).unwrap();
    for (series, value) in [("ok", 3), ("refused", 3)] {
        let line = format!("sharevault_reloads_total{{outcome=\"{series}\"}} {value}");
        assert!(text.lines().any(|l| l == line), "no {line} in:\n{text}");
    }
    let logs = daemon.logs();
    assert!(
        logs.contains("webhook secret") && logs.contains(&c),
        "a refused reload names its file:\n{logs}"
    );
    for secret in [old.as_str(), new.as_str()] {
        assert!(!logs.contains(secret), "a secret in the logs:\n{logs}");
    }
    assert!(!logs.contains("\"short\""), "{logs}");
}
