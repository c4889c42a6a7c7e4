//! The vault in PostgreSQL: several daemons on one database, and what happens when one of
//! them, or the database, goes away under load.

use crate::flow::{pair_id, portal_share};
use crate::harness::Started;
use crate::harness::{Daemon, Sandbox, create_token, fetch_shares, with_secret, with_token};
use crate::http_client::{Http, TestCert};
use crate::pg_server::PgServer;
use sharevault::pb;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::Code;

/// Portal's `Backup` of `share` for `client` through `daemon`'s gRPC webhook service.
async fn backup(
    daemon_webhook: &mut pb::webhook_service_client::WebhookServiceClient<
        tonic::transport::Channel,
    >,
    secret: &str,
    client: &str,
    share: &str,
) -> Result<(), tonic::Status> {
    daemon_webhook
        .backup(with_secret(
            pb::BackupRequest {
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

async fn verify_audit(daemon: &Daemon, admin: &str) -> pb::VerifyAuditResponse {
    let report = daemon.verify_audit(admin).await;
    assert!(report.ok, "the audit chain is broken: {report:?}");
    report
}

async fn readyz(daemon: &Daemon) -> u16 {
    Http::plain(&daemon.endpoint)
        .send("GET", "/readyz", &[], None)
        .await
        .status
}

/// A token made through one daemon works on the other at once, and once revoked through
/// one it is refused by both; writes through both daemons at once (for each client its
/// custodian share through A, then its client share through B, which completes the pair A
/// made) all land, both see the same pairs, and the audit trail is one valid chain holding
/// every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_share_tokens_pairs_and_one_audit_chain() {
    let a_box = Sandbox::on_shared_postgres(40);
    let b_box = a_box.sibling();
    let (a, b) = (a_box.start(), b_box.start());
    let admin = a_box.keys.admin_token.clone();
    let secret = a_box.keys.webhook_secret.clone();

    let token = create_token(&a, &admin, "backend", pb::Role::Backend as i32).await;
    let list = |token: String| {
        let endpoint = b.channel();
        async move {
            pb::backup_service_client::BackupServiceClient::new(endpoint.await)
                .list_backups(with_token(
                    pb::ListBackupsRequest {
                        client_id: "nobody-yet".into(),
                    },
                    &token,
                ))
                .await
        }
    };
    list(token.clone())
        .await
        .expect("a token made on A works on B");

    const CLIENTS: usize = 40;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        let (mut hook, mut api) = (a.webhook().await, b.backup().await);
        let (secret, token) = (secret.clone(), token.clone());
        tasks.spawn(async move {
            let client = format!("ha-client-{i}");
            let share = portal_share(&client, "PASSWORD", "SECP256K1", 1);
            backup(&mut hook, &secret, &client, &share)
                .await
                .expect("custodian share through A");
            // Acknowledged by A, so B sees it: the client share completes its pair.
            let completed = api
                .store_client_backup_share(with_token(
                    pb::StoreClientBackupShareRequest {
                        client_id: client.clone(),
                        backup_method: "PASSWORD".into(),
                        cipher_text: format!("cipher-{i}"),
                    },
                    &token,
                ))
                .await
                .expect("client share through B")
                .into_inner()
                .completed_backup_share_pair_ids;
            assert_eq!(completed, [pair_id(&client, "PASSWORD", "SECP256K1", 1)]);
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let (mut api_a, mut api_b) = (a.backup().await, b.backup().await);
    let mut hook_b = b.webhook().await;
    for i in 0..CLIENTS {
        let client = format!("ha-client-{i}");
        assert_eq!(
            fetch_shares(&mut hook_b, &secret, client.clone()).await,
            [portal_share(&client, "PASSWORD", "SECP256K1", 1)]
        );
        let cipher = api_a
            .get_client_backup_share(with_token(
                pb::GetClientBackupShareRequest {
                    client_id: client.clone(),
                    backup_method: "PASSWORD".into(),
                    ..Default::default()
                },
                &token,
            ))
            .await
            .expect("the client share written through B, read through A")
            .into_inner();
        assert_eq!(cipher.cipher_text, format!("cipher-{i}"));
        let pairs = |api: &mut pb::backup_service_client::BackupServiceClient<_>| {
            let request = with_token(
                pb::ListBackupSharePairsRequest {
                    client_id: client.clone(),
                },
                &token,
            );
            let mut api = api.clone();
            async move {
                let mut ids: Vec<(String, String)> = api
                    .list_backup_share_pairs(request)
                    .await
                    .unwrap()
                    .into_inner()
                    .backup_share_pairs
                    .into_iter()
                    .map(|p| (p.id, p.status))
                    .collect();
                ids.sort();
                ids
            }
        };
        let (on_a, on_b) = (pairs(&mut api_a).await, pairs(&mut api_b).await);
        assert_eq!(on_a, on_b);
        assert_eq!(
            on_a,
            [(
                pair_id(&client, "PASSWORD", "SECP256K1", 1),
                "completed".to_owned()
            )],
            "both shares of the pair are stored"
        );
    }

    // One chain: both daemons check it whole, and it holds at least every write above.
    let (ra, rb) = (
        verify_audit(&a, &admin).await,
        verify_audit(&b, &admin).await,
    );
    assert!(ra.events > 2 * CLIENTS as u64, "{ra:?}");
    assert!(rb.events >= ra.events);

    // Revoked through A: refused by B at once.
    a.admin()
        .await
        .revoke_token(with_token(
            pb::RevokeTokenRequest {
                name: "backend".into(),
            },
            &admin,
        ))
        .await
        .unwrap();
    let refused = list(token.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    // The database password is in no log line.
    for daemon in [&a, &b] {
        let logs = daemon.logs();
        assert!(logs.contains("PostgreSQL database open"), "{logs}");
        assert!(!logs.contains(crate::pg_server::PASSWORD), "{logs}");
    }
}

/// Writes acknowledged so far: (client, share).
type Acked = Arc<Mutex<Vec<(String, String)>>>;

/// Sends up to `count` backups through `daemon`'s webhook, one after another for at most
/// `within`, each bounded by `per_call`; records those acknowledged and returns how many
/// failed.
async fn load(
    mut hook: pb::webhook_service_client::WebhookServiceClient<tonic::transport::Channel>,
    secret: String,
    tag: &'static str,
    count: usize,
    within: Duration,
    acked: Acked,
) -> usize {
    let deadline = Instant::now() + within;
    let mut failed = 0;
    for i in 0..count {
        if Instant::now() > deadline {
            break;
        }
        let (client, share) = (format!("{tag}-{i}"), format!("{tag}-share-{i}"));
        let call = backup(&mut hook, &secret, &client, &share);
        match tokio::time::timeout(Duration::from_secs(10), call).await {
            Ok(Ok(())) => acked.lock().unwrap().push((client, share)),
            Ok(Err(_)) => failed += 1,
            Err(_) => panic!("a backup hung past 10 s"),
        }
    }
    failed
}

async fn all_present(daemon: &Daemon, secret: &str, acked: &Acked) -> usize {
    let mut hook = daemon.webhook().await;
    let acked = acked.lock().unwrap().clone();
    for (client, share) in &acked {
        assert_eq!(
            fetch_shares(&mut hook, secret, client.clone()).await,
            std::slice::from_ref(share),
            "an acknowledged write of {client} is missing"
        );
    }
    acked.len()
}

/// kill -9 of one daemon while both take writes: the other keeps serving, and every write
/// either acknowledged is there; the audit chain is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_under_load_loses_no_acknowledged_write() {
    let a_box = Sandbox::on_shared_postgres(41);
    let b_box = a_box.sibling();
    let (mut a, b) = (a_box.start(), b_box.start());
    let secret = a_box.keys.webhook_secret.clone();
    let acked: Acked = Arc::default();
    let within = Duration::from_secs(60);
    let on_a = tokio::spawn(load(
        a.webhook().await,
        secret.clone(),
        "via-a",
        400,
        within,
        Arc::clone(&acked),
    ));
    let on_b = tokio::spawn(load(
        b.webhook().await,
        secret.clone(),
        "via-b",
        400,
        within,
        Arc::clone(&acked),
    ));
    // Let both take writes, then kill A in the middle of its load.
    let started = Instant::now();
    while acked.lock().unwrap().len() < 100 && started.elapsed() < within {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.signal("KILL");
    let killed_at = acked.lock().unwrap().len();
    let failed_a = on_a.await.unwrap();
    let failed_b = on_b.await.unwrap();
    assert_eq!(failed_b, 0, "the surviving daemon failed writes");
    assert!(failed_a > 0, "the load on A went on after A was killed");
    let after = acked
        .lock()
        .unwrap()
        .iter()
        .filter(|(c, _)| c.starts_with("via-b"))
        .count();
    assert_eq!(after, 400, "B took every write of its load");
    let present = all_present(&b, &secret, &acked).await;
    eprintln!(
        "kill -9 under load: {killed_at} writes acknowledged at the kill, {present} in all, {failed_a} refused by the killed daemon; all present"
    );
    verify_audit(&b, &a_box.keys.admin_token).await;
}

/// PostgreSQL stopped under load, fast and then immediately: during the outage requests fail
/// at once with UNAVAILABLE and `/readyz` answers 503; once it is back the daemon reconnects
/// by itself, `/readyz` answers 200, writes go on, and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_under_load_fails_fast_and_recovers() {
    let server = PgServer::start();
    let sandbox = Sandbox::on_postgres(42, &server);
    let daemon = sandbox.start();
    let secret = sandbox.keys.webhook_secret.clone();
    let acked: Acked = Arc::default();
    assert_eq!(readyz(&daemon).await, 200);
    for (round, mode) in ["fast", "immediate"].into_iter().enumerate() {
        let tag: &'static str = if round == 0 { "fast" } else { "immediate" };
        let background = tokio::spawn(load(
            daemon.webhook().await,
            secret.clone(),
            tag,
            100_000,
            Duration::from_secs(6),
            Arc::clone(&acked),
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        server.stop(mode);
        // During the outage: fast failures, UNAVAILABLE, and /readyz says so.
        let mut hook = daemon.webhook().await;
        let mut slowest = Duration::ZERO;
        for i in 0..5 {
            let sent = Instant::now();
            let err = backup(&mut hook, &secret, &format!("{tag}-down-{i}"), "x")
                .await
                .expect_err("a write while PostgreSQL is down");
            slowest = slowest.max(sent.elapsed());
            assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        }
        assert!(
            slowest < Duration::from_secs(8),
            "a request during the outage took {slowest:?}, past the request timeout"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while readyz(&daemon).await != 503 {
            assert!(
                Instant::now() < deadline,
                "/readyz did not report the outage"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server.start_again();
        let back = Instant::now();
        let deadline = back + Duration::from_secs(30);
        while readyz(&daemon).await != 200 {
            assert!(
                Instant::now() < deadline,
                "/readyz did not report the recovery"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ready_after = back.elapsed();
        while backup(&mut hook, &secret, &format!("{tag}-back"), "back")
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "the daemon did not reconnect");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let writing_after = back.elapsed();
        let failed = background.await.unwrap();
        eprintln!(
            "PostgreSQL {mode} restart: slowest failure during the outage {slowest:?}, ready \
             {ready_after:?} and writing {writing_after:?} after the restart, {failed} writes refused \
             during the outage"
        );
    }
    let present = all_present(&daemon, &secret, &acked).await;
    assert!(present > 0);
    verify_audit(&daemon, &sandbox.keys.admin_token).await;
}

/// With `sslmode=verify-full`, the daemon talks to PostgreSQL over TLS and checks the
/// server's certificate against the CA file: a server whose certificate another CA signed is
/// refused at start, with an error that names the cause and not the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_postgres_checks_the_server_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let cert = TestCert::new(certs.path());
    let server = PgServer::start_with_tls(&cert.cert_file, &cert.key_file);
    let tls_url = |sandbox: &Sandbox, ca: &std::path::Path| {
        let db = sandbox.database.as_ref().unwrap();
        format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            db.url.replace("127.0.0.1", "localhost"),
            ca.display()
        )
    };
    let mut sandbox = Sandbox::on_postgres(43, &server);
    let url = tls_url(&sandbox, &cert.cert_file);
    sandbox.database.as_mut().unwrap().url = url;
    let daemon = sandbox.start();
    let mut hook = daemon.webhook().await;
    backup(
        &mut hook,
        &sandbox.keys.webhook_secret,
        "over-tls",
        "tls-share",
    )
    .await
    .unwrap();
    let db = &sandbox.database.as_ref().unwrap().name;
    let encrypted = server.psql(
        db,
        "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
         WHERE ssl AND application_name = 'sharevault'",
    );
    assert_ne!(encrypted, "0", "the daemon's connections use TLS");

    // Another CA: refused.
    let other = tempfile::tempdir().unwrap();
    let stranger = TestCert::new(other.path());
    let mut refused = Sandbox::on_postgres(44, &server);
    let url = tls_url(&refused, &stranger.cert_file);
    refused.database.as_mut().unwrap().url = url;
    let mut args = Daemon::tcp_args(&refused.keys);
    args.extend(refused.database.as_ref().unwrap().args());
    match Daemon::launch(crate::harness::command(&refused.data_dir, &args)) {
        Started::Exited { logs, .. } => {
            assert!(logs.to_lowercase().contains("certificate"), "{logs}");
            assert!(!logs.contains(crate::pg_server::PASSWORD), "{logs}");
        }
        Started::Ready(_) => panic!("a server with a certificate of another CA was trusted"),
    }
}
