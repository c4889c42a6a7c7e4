//! The vault on PostgreSQL when PostgreSQL is slow, out of reach or replaced by its standby:
//! a daemon never stalls, never loses an acknowledged write, and serves again by itself.

use crate::harness::{Daemon, Sandbox};
use crate::http_client::Http;
use crate::pg_server::PgServer;
use serde_json::json;
use std::time::{Duration, Instant};

/// The daemons' request timeout in these tests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// What a request may take past the request timeout (scheduling on a busy 2-core machine).
const SLACK: Duration = Duration::from_secs(1);

/// Lets a frozen server go on when dropped, so that a failed test does not leave it stopped.
struct Thaw<'a>(&'a PgServer);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        self.0.signal_all("CONT");
    }
}

fn webhook(daemon: &Daemon) -> Http {
    Http::plain(
        daemon
            .webhook_addr
            .as_deref()
            .expect("the webhook listener runs"),
    )
}

/// Sends one request, bounded well past the request timeout: `None` if no answer came.
async fn timed(
    http: &Http,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> (Option<u16>, Duration) {
    let sent = Instant::now();
    let answer = tokio::time::timeout(
        REQUEST_TIMEOUT * 4,
        http.try_send(method, path, headers, body),
    )
    .await;
    let status = match answer {
        Ok(Ok(reply)) => Some(reply.status),
        Ok(Err(_)) | Err(_) => None,
    };
    (status, sent.elapsed())
}

/// Portal's backup of `share` for `client` on the HTTP webhook.
async fn backup(hook: &Http, secret: &str, client: &str, share: &str) -> (Option<u16>, Duration) {
    let body = json!({"clientId": client, "backupMethod": "PASSWORD-SECP256K1", "share": share})
        .to_string();
    timed(
        hook,
        "POST",
        "/backup",
        &[
            ("x-webhook-secret", secret),
            ("content-type", "application/json"),
        ],
        Some(body.as_bytes()),
    )
    .await
}

/// PostgreSQL frozen (SIGSTOP of its postmaster and every backend: connections are accepted
/// by the kernel, nothing is answered) while requests with bogus tokens keep arriving on the
/// private listener. Every token lookup, `/healthz`, `/readyz` and `/metrics` waits off the
/// async workers with a deadline, so the webhook's `/healthz` and a correct webhook call
/// answer within the request timeout (the backup with 503, the database cannot confirm it),
/// as do the private probes; nothing hangs. Once PostgreSQL goes on (SIGCONT) everything
/// serves again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_database_never_stalls_the_daemon() {
    let server = PgServer::start();
    let sandbox = Sandbox::on_postgres(45, &server);
    let timeout = REQUEST_TIMEOUT.as_secs().to_string();
    let daemon = sandbox.start_with(&["--request-timeout-seconds", &timeout]);
    let secret = sandbox.keys.webhook_secret.clone();
    let (hook, private) = (webhook(&daemon), Http::plain(&daemon.endpoint));
    assert_eq!(
        backup(&hook, &secret, "before", "share-before").await.0,
        Some(200)
    );
    let bogus = [("authorization", "Bearer not-a-token-0123456789abcdef")];
    assert_eq!(
        timed(&private, "GET", "/v1/clients/c/backups", &bogus, None)
            .await
            .0,
        Some(401)
    );

    let frozen = server.signal_all("STOP");
    let thaw = Thaw(&server);
    // Requests with bogus tokens keep arriving, 8 at a time, for as long as it is frozen.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (http, stop) = (Http::plain(&daemon.endpoint), std::sync::Arc::clone(&stop));
        flood.spawn(async move {
            let mut sent = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && sent < 1000 {
                let _ = timed(&http, "GET", "/v1/clients/c/backups", &bogus, None).await;
                sent += 1;
            }
            sent
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut slowest = Duration::ZERO;
    let limit = REQUEST_TIMEOUT + SLACK;
    for round in 0..3 {
        let (health, took) = timed(&hook, "GET", "/healthz", &[], None).await;
        slowest = slowest.max(took);
        assert_eq!(
            health,
            Some(200),
            "the webhook's /healthz (round {round}) answered {health:?} after {took:?}"
        );
        assert!(took < limit, "the webhook's /healthz took {took:?}");
        let (written, took) = backup(&hook, &secret, &format!("frozen-{round}"), "x").await;
        slowest = slowest.max(took);
        assert_eq!(
            written,
            Some(503),
            "a backup while PostgreSQL is frozen answered {written:?} after {took:?}"
        );
        assert!(took < limit, "a backup took {took:?}");
        for path in ["/readyz", "/healthz", "/metrics"] {
            let (status, took) = timed(&private, "GET", path, &[], None).await;
            slowest = slowest.max(took);
            assert!(
                matches!(status, Some(200 | 503)),
                "{path} answered {status:?} after {took:?}"
            );
            assert!(took < limit, "{path} took {took:?}");
        }
    }
    eprintln!(
        "PostgreSQL frozen ({frozen} processes stopped): the slowest answer took {slowest:?} \
         (request timeout {REQUEST_TIMEOUT:?})"
    );

    drop(thaw);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut bogus_sent = 0;
    while let Some(sent) = flood.join_next().await {
        bogus_sent += sent.unwrap();
    }
    let thawed = Instant::now();
    let deadline = thawed + Duration::from_secs(30);
    loop {
        let (ready, _) = timed(&private, "GET", "/readyz", &[], None).await;
        let (written, _) = backup(&hook, &secret, "after", "share-after").await;
        if ready == Some(200) && written == Some(200) {
            break;
        }
        assert!(Instant::now() < deadline, "the daemon did not serve again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "{bogus_sent} requests with bogus tokens during the freeze; serving again {:?} after SIGCONT",
        thawed.elapsed()
    );
    let fetched = webhook(&daemon)
        .post_json(
            "/backup/fetch",
            &[("x-webhook-secret", secret.as_str())],
            &json!({"clientId": "before"}),
        )
        .await;
    assert_eq!(fetched.status, 200);
    assert!(String::from_utf8_lossy(&fetched.body).contains("share-before"));
}

/// Writes sent by [`write_load`]: acknowledged, answered UNAVAILABLE (their outcome unknown
/// to the caller), and failed otherwise.
#[derive(Default)]
struct Outcomes {
    acked: Vec<(String, String)>,
    unavailable: Vec<(String, String)>,
    other: Vec<String>,
}

type Shared = std::sync::Arc<std::sync::Mutex<Outcomes>>;

/// Portal's backups through `daemon`'s gRPC webhook, one after another, each to a client of
/// its own, until `stop` is set (at most `max`); each call bounded well past the request
/// timeout, so that a hang fails the test.
async fn write_load(daemon: &Daemon, secret: String, tag: &'static str, stop: Stop, out: Shared) {
    let mut hook = daemon.webhook().await;
    for i in 0..100_000 {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        let (client, share) = (format!("{tag}-{i}"), format!("{tag}-share-{i}"));
        let call = grpc_backup(&mut hook, &secret, &client, &share);
        match tokio::time::timeout(REQUEST_TIMEOUT * 4, call).await {
            Ok(Ok(())) => out.lock().unwrap().acked.push((client, share)),
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                out.lock().unwrap().unavailable.push((client, share));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(Err(status)) => out.lock().unwrap().other.push(format!("{status:?}")),
            Err(_) => panic!("a backup through {tag} hung"),
        }
    }
}

type Stop = std::sync::Arc<std::sync::atomic::AtomicBool>;

async fn grpc_backup(
    hook: &mut sharevault::pb::webhook_service_client::WebhookServiceClient<
        tonic::transport::Channel,
    >,
    secret: &str,
    client: &str,
    share: &str,
) -> Result<(), tonic::Status> {
    hook.backup(crate::harness::with_secret(
        sharevault::pb::BackupRequest {
            client_id: client.into(),
            backup_method: "PASSWORD-SECP256K1".into(),
            share: share.into(),
            backup_share_pair_id: None,
        },
        secret,
    ))
    .await
    .map(|_| ())
}

async fn readyz(daemon: &Daemon) -> Option<u16> {
    timed(&Http::plain(&daemon.endpoint), "GET", "/readyz", &[], None)
        .await
        .0
}

/// Waits (at most `within`) until every daemon's `/readyz` answers `status`; returns how long.
async fn until_ready(daemons: &[&Daemon], status: u16, within: Duration) -> Duration {
    let started = Instant::now();
    for daemon in daemons {
        while readyz(daemon).await != Some(status) {
            assert!(
                started.elapsed() < within,
                "/readyz did not answer {status} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    started.elapsed()
}

/// Every write sent again with the same bytes is accepted (a repeat), and then every
/// acknowledged write is present exactly once: the client holds that one share. Returns
/// (acknowledged, answered UNAVAILABLE then repeated).
async fn check_writes(daemon: &Daemon, secret: &str, outcomes: &Outcomes) -> (usize, usize) {
    assert!(
        outcomes.other.is_empty(),
        "writes failed other than with UNAVAILABLE: {:?}",
        outcomes.other
    );
    let mut hook = daemon.webhook().await;
    for (client, share) in &outcomes.unavailable {
        grpc_backup(&mut hook, secret, client, share)
            .await
            .unwrap_or_else(|e| panic!("the retry of an unconfirmed write of {client}: {e:?}"));
    }
    let mut lost = Vec::new();
    for (client, share) in outcomes.acked.iter().chain(&outcomes.unavailable) {
        let shares = crate::harness::fetch_shares(&mut hook, secret, client.clone()).await;
        if shares != std::slice::from_ref(share) {
            lost.push((client.clone(), shares));
        }
    }
    assert!(
        lost.is_empty(),
        "{} writes missing or duplicated: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    (outcomes.acked.len(), outcomes.unavailable.len())
}

/// A primary with a synchronous streaming standby, two daemons on the multi-host URL
/// (`A,B`: with several hosts, `target_session_attrs=read-write` by default) taking writes. The primary is stopped
/// (immediate shutdown, as a crash) under load: `/readyz` answers 503 on both daemons while
/// no primary is there, writes fail with UNAVAILABLE, never hang. The standby is promoted:
/// both daemons serve again, without a restart, within seconds; no acknowledged write is lost,
/// and each write answered UNAVAILABLE, sent again with the same bytes, is a repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_a_synchronous_standby_loses_no_acknowledged_write() {
    let primary = PgServer::start();
    let mut a_box = Sandbox::on_postgres(46, &primary);
    let standby = PgServer::standby_of(&primary);
    {
        let db = a_box.database.as_mut().unwrap();
        db.url = format!(
            // `target_session_attrs=read-write` is the default with several hosts.
            "postgres://{}@127.0.0.1:{},127.0.0.1:{}/{}",
            crate::pg_server::USER,
            primary.port,
            standby.port,
            db.name
        );
    }
    let b_box = a_box.sibling();
    let timeout = REQUEST_TIMEOUT.as_secs().to_string();
    let flags = ["--request-timeout-seconds", timeout.as_str()];
    let (a, b) = (a_box.start_with(&flags), b_box.start_with(&flags));
    let secret = a_box.keys.webhook_secret.clone();
    let out: Shared = Default::default();
    let stop: Stop = Default::default();
    let loads = async {
        tokio::join!(
            write_load(&a, secret.clone(), "via-a", stop.clone(), out.clone()),
            write_load(&b, secret.clone(), "via-b", stop.clone(), out.clone()),
        )
    };
    let failover = async {
        let started = Instant::now();
        while out.lock().unwrap().acked.len() < 100 {
            assert!(started.elapsed() < Duration::from_secs(30), "no writes");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        primary.stop("immediate");
        let acked_at_crash = out.lock().unwrap().acked.len();
        let down = until_ready(&[&a, &b], 503, Duration::from_secs(10)).await;
        // No primary for a while: the daemons keep saying so.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(readyz(&a).await, Some(503));
        assert_eq!(readyz(&b).await, Some(503));
        let promoted = Instant::now();
        standby.promote();
        let ready = until_ready(&[&a, &b], 200, Duration::from_secs(30)).await;
        let before = out.lock().unwrap().acked.len();
        while out.lock().unwrap().acked.len() < before + 50 {
            assert!(
                promoted.elapsed() < Duration::from_secs(30),
                "the daemons did not write again after the promotion"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let writing = promoted.elapsed();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        (acked_at_crash, down, ready, writing)
    };
    let (_, (acked_at_crash, down, ready, writing)) = tokio::join!(loads, failover);
    let outcomes = std::mem::take(&mut *out.lock().unwrap());
    let (acked, repeated) = check_writes(&a, &secret, &outcomes).await;
    eprintln!(
        "failover: {acked_at_crash} writes acknowledged at the crash, {acked} in all, 0 lost; \
         {repeated} answered UNAVAILABLE and repeated; /readyz 503 on both {down:?} after the \
         crash; after `pg_ctl promote`: ready {ready:?}, writing {writing:?}"
    );
    let report = a.verify_audit(&a_box.keys.admin_token).await;
    assert!(report.ok, "{report:?}");
}

/// A network namespace of this test's own with a veth pair to it: `host` is its address in
/// the namespace, `gateway` this side's. Removed when dropped, and by a watchdog if the test
/// process exits without dropping it.
struct Netns {
    name: String,
    veth: String,
    host: String,
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    /// Needs root (CAP_NET_ADMIN), `ip` (iproute2) and `iptables`.
    fn create(n: u8) -> Self {
        let pid = std::process::id();
        let name = format!("sv-{pid}-{n}");
        let veth = format!("sv{}{n}h", pid % 100_000);
        let peer = format!("sv{}{n}p", pid % 100_000);
        let subnet = format!("10.{}.{}", 200 + n, pid % 250);
        let (gateway, host) = (format!("{subnet}.1"), format!("{subnet}.2"));
        ip(&["netns", "add", &name]);
        let netns = Self {
            name: name.clone(),
            veth: veth.clone(),
            host: host.clone(),
        };
        // The watchdog: removes both once this process is gone.
        let script = format!(
            "while [ -d /proc/{pid} ]; do sleep 1; done; ip link del {veth}; ip netns del {name}"
        );
        #[allow(clippy::zombie_processes)]
        std::process::Command::new("/bin/sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the netns watchdog");
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &peer, "netns", &name]);
        ip(&["addr", "add", &format!("{gateway}/24"), "dev", &veth]);
        ip(&["link", "set", &veth, "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{host}/24"),
            "dev",
            &peer,
        ]);
        ip(&["-n", &name, "link", "set", &peer, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        netns
    }

    /// Runs `iptables ARGS` in the namespace.
    fn iptables(&self, args: &str) {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.name, "iptables"])
            .args(args.split_whitespace())
            .output()
            .expect("run iptables");
        assert!(
            out.status.success(),
            "iptables {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// PostgreSQL in a network namespace of the test's own, two daemons taking writes over its
/// veth pair while the network fails: first 30 % of the packets to and from PostgreSQL
/// dropped (iptables `statistic`), then everything dropped (a partition longer than the
/// statement timeout), then healed. Every acknowledged write is present afterwards; every
/// write answered UNAVAILABLE (its commit may or may not have landed), sent again with the
/// same bytes, is a repeat, not a duplicate; once the network heals both daemons serve again
/// without a restart. (`tc netem` is not in this kernel: loss and partitions come from
/// iptables.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_faults_lose_no_acknowledged_write() {
    let netns = Netns::create(1);
    let server = PgServer::start_in_netns(&netns.name, &netns.host);
    let port = server.port;
    let a_box = Sandbox::on_postgres(47, &server);
    let b_box = a_box.sibling();
    let timeout = REQUEST_TIMEOUT.as_secs().to_string();
    let flags = ["--request-timeout-seconds", timeout.as_str()];
    let (a, b) = (a_box.start_with(&flags), b_box.start_with(&flags));
    let secret = a_box.keys.webhook_secret.clone();
    let out: Shared = Default::default();
    let stop: Stop = Default::default();
    let loads = async {
        tokio::join!(
            write_load(&a, secret.clone(), "net-a", stop.clone(), out.clone()),
            write_load(&b, secret.clone(), "net-b", stop.clone(), out.clone()),
        )
    };
    let acked = || out.lock().unwrap().acked.len();
    let faults = async {
        let started = Instant::now();
        while acked() < 50 {
            assert!(started.elapsed() < Duration::from_secs(30), "no writes");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let lossy = "-m statistic --mode random --probability 0.3 -j DROP";
        netns.iptables(&format!("-A INPUT -p tcp --dport {port} {lossy}"));
        netns.iptables(&format!("-A OUTPUT -p tcp --sport {port} {lossy}"));
        let before = acked();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let during_loss = acked() - before;
        netns.iptables("-F");
        // A partition: nothing gets through, longer than the statement timeout (5 s).
        netns.iptables(&format!("-A INPUT -p tcp --dport {port} -j DROP"));
        netns.iptables(&format!("-A OUTPUT -p tcp --sport {port} -j DROP"));
        let cut = Instant::now();
        let down = until_ready(&[&a, &b], 503, Duration::from_secs(15)).await;
        let before = acked();
        tokio::time::sleep(Duration::from_secs(6).saturating_sub(cut.elapsed())).await;
        let during_partition = acked() - before;
        netns.iptables("-F");
        let healed = Instant::now();
        let ready = until_ready(&[&a, &b], 200, Duration::from_secs(30)).await;
        let before = acked();
        while acked() < before + 50 {
            assert!(
                healed.elapsed() < Duration::from_secs(30),
                "the daemons did not write again once the network healed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let writing = healed.elapsed();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        (during_loss, down, during_partition, ready, writing)
    };
    let (_, (during_loss, down, during_partition, ready, writing)) = tokio::join!(loads, faults);
    let outcomes = std::mem::take(&mut *out.lock().unwrap());
    let (acked, repeated) = check_writes(&a, &secret, &outcomes).await;
    eprintln!(
        "network faults: {acked} writes acknowledged, 0 lost; {repeated} answered UNAVAILABLE \
         and repeated, none duplicated; {during_loss} acknowledged during 3 s of 30 % loss; \
         partition: /readyz 503 on both after {down:?}, {during_partition} acknowledged during \
         it; healed: ready {ready:?}, writing {writing:?}"
    );
    let report = b.verify_audit(&a_box.keys.admin_token).await;
    assert!(report.ok, "{report:?}");
}
