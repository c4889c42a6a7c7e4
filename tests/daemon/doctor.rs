//! `sharevault doctor` finds exactly the clients that cannot recover, and why.
//!
//! The vault is filled with a known mix of clients (`SHAREVAULT_DOCTOR_CLIENTS`, 1,200 by
//! default), then the report is compared with the mix. The figures in docs/recoverability.md
//! come from
//!
//! ```text
//! SHAREVAULT_DOCTOR_CLIENTS=100000 SHAREVAULT_TEST_BINARY=target/release/sharevault \
//!   cargo test --test daemon doctor_finds -- --nocapture
//! ```

use crate::cli::Admin;
use crate::harness::{Daemon, Sandbox, with_secret, with_token};
use sharevault::pb;
use std::collections::BTreeSet;

/// What a client of the mix is, by its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Both curves, and a cipherText stored after them.
    Healthy,
    /// A second backup of one curve whose cipherText never came: the fetch falls back to the
    /// completed one, so it still recovers.
    NewBackupPending,
    /// No cipherText.
    NoCipherText,
    /// One curve only.
    OneCurve,
    /// A cipherText and no custodian share.
    NoCustodianShare,
    /// The cipherText was stored before the custodian shares: an earlier backup's.
    Stale,
    /// The pair was moved to STORED_CLIENT_BACKUP_SHARE_KEY, and the cipherText never came.
    Stuck,
}

fn kind(n: usize) -> Kind {
    match n % 100 {
        1 => Kind::NoCipherText,
        2 => Kind::OneCurve,
        3 => Kind::NoCustodianShare,
        4 => Kind::Stale,
        5 => Kind::Stuck,
        6 | 7 => Kind::NewBackupPending,
        _ => Kind::Healthy,
    }
}

/// The (client, method, reasons) the report must list for client `n`.
fn expected(n: usize) -> Option<(String, String, Vec<String>)> {
    let reasons: &[&str] = match kind(n) {
        Kind::Healthy | Kind::NewBackupPending => return None,
        Kind::NoCipherText => &[
            "cipher_text_missing:ED25519",
            "cipher_text_missing:SECP256K1",
        ],
        Kind::OneCurve => &["curve_missing:ED25519"],
        Kind::NoCustodianShare => &["custodian_share_missing"],
        Kind::Stale => &["stale_cipher_text:ED25519", "stale_cipher_text:SECP256K1"],
        Kind::Stuck => &["pair_stuck:ED25519", "pair_stuck:SECP256K1"],
    };
    Some((
        client(n),
        "PASSWORD".into(),
        reasons.iter().map(|r| (*r).to_owned()).collect(),
    ))
}

fn client(n: usize) -> String {
    format!("doc-{n:06}")
}

/// Stores client `n` as its kind says.
async fn store(daemon: &Daemon, secret: &str, backend: &str, n: usize) {
    let mut hook = daemon.webhook().await;
    let mut api = daemon.backup().await;
    let id = client(n);
    let backup = async |hook: &mut pb::webhook_service_client::WebhookServiceClient<_>,
                        curve: &str,
                        version: u32| {
        let share = format!("{{\"backupSharePairId\":\"{id}-{curve}-{version}\",\"s\":1}}");
        hook.backup(with_secret(
            pb::BackupRequest {
                client_id: id.clone(),
                backup_method: format!("PASSWORD-{curve}"),
                share,
                backup_share_pair_id: None,
            },
            secret,
        ))
        .await
        .unwrap();
    };
    let cipher_text = async |api: &mut pb::backup_service_client::BackupServiceClient<_>| {
        api.store_client_backup_share(with_token(
            pb::StoreClientBackupShareRequest {
                client_id: id.clone(),
                backup_method: "PASSWORD".into(),
                cipher_text: format!("ct-{id}"),
            },
            backend,
        ))
        .await
        .unwrap();
    };
    let k = kind(n);
    if k == Kind::Stale || k == Kind::NoCustodianShare {
        cipher_text(&mut api).await;
        // The custodian shares come in a later millisecond than the cipherText.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    if k != Kind::NoCustodianShare {
        backup(&mut hook, "SECP256K1", 1).await;
        if k != Kind::OneCurve {
            backup(&mut hook, "ED25519", 1).await;
        }
    }
    if matches!(k, Kind::Healthy | Kind::OneCurve | Kind::NewBackupPending) {
        cipher_text(&mut api).await;
    }
    if k == Kind::NewBackupPending {
        backup(&mut hook, "SECP256K1", 2).await;
    }
    if k == Kind::Stuck {
        api.update_backup_share_pairs(with_token(
            pb::UpdateBackupSharePairsRequest {
                client_id: id.clone(),
                backup_share_pair_ids: vec![format!("{id}-SECP256K1-1"), format!("{id}-ED25519-1")],
                status: pb::BackupSharePairStatus::StoredClientBackupShareKey as i32,
            },
            backend,
        ))
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_finds_exactly_the_clients_that_cannot_recover() {
    let clients: usize = std::env::var("SHAREVAULT_DOCTOR_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_200);
    let sandbox = Sandbox::new(84);
    let daemon = sandbox.start();
    let backend = sandbox.backend_token(&daemon).await;
    let secret = sandbox.keys.webhook_secret.clone();
    let started = std::time::Instant::now();
    let workers = 16;
    let mut tasks = Vec::new();
    let daemon = std::sync::Arc::new(daemon);
    for w in 0..workers {
        let (daemon, secret, backend) = (daemon.clone(), secret.clone(), backend.clone());
        tasks.push(tokio::spawn(async move {
            for n in (w..clients).step_by(workers) {
                store(&daemon, &secret, &backend, n).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!("stored {clients} clients in {:?}", started.elapsed());
    // Stuck means at STORED_CLIENT_BACKUP_SHARE_KEY for longer than --stuck-after.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    let admin = Admin::new(&sandbox, &daemon);
    let before = crate::harness::peak_rss_kib(daemon.pid());
    let started = std::time::Instant::now();
    let run = admin.run(&["doctor", "--json", "--limit", "0", "--stuck-after", "1"]);
    eprintln!(
        "doctor of {clients} clients took {:?}; daemon peak RSS {:?} KiB before, {:?} KiB after",
        started.elapsed(),
        before,
        crate::harness::peak_rss_kib(daemon.pid())
    );
    assert!(!run.ok, "some clients cannot recover: exit 1");
    let mut lines = run.stdout.lines();
    let totals: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let want: BTreeSet<(String, String, Vec<String>)> = (0..clients).filter_map(expected).collect();
    let got: BTreeSet<(String, String, Vec<String>)> = lines
        .map(|l| {
            let f: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(f["type"], "finding");
            let mut reasons: Vec<String> = serde_json::from_value(f["reasons"].clone()).unwrap();
            reasons.sort();
            (
                f["client_id"].as_str().unwrap().to_owned(),
                f["backup_method"].as_str().unwrap().to_owned(),
                reasons,
            )
        })
        .collect();
    assert_eq!(got.len(), want.len(), "{} findings", got.len());
    assert!(got == want, "the findings are exactly the broken clients");
    assert_eq!(totals["type"], "totals");
    assert_eq!(totals["clients"], clients as u64);
    assert_eq!(totals["unrecoverable_clients"], want.len() as u64);
    assert_eq!(
        totals["reasons"]["stale_cipher_text"],
        (0..clients).filter(|n| kind(*n) == Kind::Stale).count() as u64
    );
    assert!(
        run.stderr.contains(&format!(
            "{} of {clients} clients cannot recover",
            want.len()
        )),
        "{}",
        run.stderr
    );

    // The text report puts the totals first, then at most --limit clients.
    let text = admin.run(&["doctor", "--limit", "3", "--quiet"]);
    assert!(!text.ok);
    let first = text.stdout.lines().next().unwrap();
    assert!(
        first.starts_with("clients") && first.ends_with(&clients.to_string()),
        "{first}"
    );
    let listed = text
        .stdout
        .lines()
        .filter(|l| l.starts_with("doc-"))
        .count();
    assert_eq!(listed, 3.min(want.len()), "{}", text.stdout);
    assert!(
        text.stdout
            .contains(&format!("and {} more", want.len() - 3))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_exits_zero_when_every_client_can_recover() {
    let sandbox = Sandbox::new(85);
    let daemon = sandbox.start();
    let backend = sandbox.backend_token(&daemon).await;
    let secret = sandbox.keys.webhook_secret.clone();
    for n in [0, 6, 8] {
        assert!(matches!(kind(n), Kind::Healthy | Kind::NewBackupPending));
        store(&daemon, &secret, &backend, n).await;
    }
    // A synthetic client `sharevault selftest` left behind is nobody's wallet.
    daemon
        .webhook()
        .await
        .backup(with_secret(
            pb::BackupRequest {
                client_id: format!("{}0123abcd", sharevault::validate::SELFTEST_CLIENT_PREFIX),
                backup_method: "PASSWORD-SECP256K1".into(),
                share: "{\"s\":1}".into(),
                backup_share_pair_id: None,
            },
            &secret,
        ))
        .await
        .unwrap();
    let admin = Admin::new(&sandbox, &daemon);
    let run = admin.run(&["doctor", "--json"]);
    assert!(run.ok, "{}", run.stderr);
    let totals: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        (
            totals["clients"].as_u64(),
            totals["recoverable_clients"].as_u64()
        ),
        (Some(3), Some(3))
    );
}

/// Shares stored under a method without a curve (legacy `UNKNOWN`, a bare `GDRIVE`) or under
/// a method Portal added since (`PASSKEY-ENCLAVE`: its suffix is no curve) are stored as sent,
/// answered by the fetch, and recover: doctor finds nothing missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_without_a_known_curve_are_stored_fetched_and_recover() {
    let sandbox = Sandbox::new(85);
    let daemon = sandbox.start();
    let backend = sandbox.backend_token(&daemon).await;
    let secret = sandbox.keys.webhook_secret.clone();
    let mut hook = daemon.webhook().await;
    let mut api = daemon.backup().await;
    let mut shares = Vec::new();
    for (sent, stored) in [
        ("", "UNKNOWN"),
        ("GDRIVE", "GDRIVE"),
        ("PASSKEY-ENCLAVE", "PASSKEY-ENCLAVE"),
        ("Some Method/v2", "Some Method/v2"),
    ] {
        let share = format!(
            "{{\"backupSharePairId\":\"pair-{}\",\"s\":1}}",
            shares.len()
        );
        hook.backup(with_secret(
            pb::BackupRequest {
                client_id: "legacy".into(),
                backup_method: sent.into(),
                share: share.clone(),
                backup_share_pair_id: None,
            },
            &secret,
        ))
        .await
        .unwrap();
        let stored_ct = api
            .store_client_backup_share(with_token(
                pb::StoreClientBackupShareRequest {
                    client_id: "legacy".into(),
                    backup_method: stored.into(),
                    cipher_text: format!("ct-{stored}"),
                },
                &backend,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            stored_ct.completed_backup_share_pair_ids,
            [format!("pair-{}", shares.len())],
            "{stored}: its cipherText completes its own pair"
        );
        shares.push(share);
    }
    let mut fetched = crate::harness::fetch_shares(&mut hook, &secret, "legacy".into()).await;
    fetched.sort();
    shares.sort();
    assert_eq!(fetched, shares);

    let admin = Admin::new(&sandbox, &daemon);
    let run = admin.run(&["doctor", "--json"]);
    assert!(
        run.ok,
        "every method recovers: {}{}",
        run.stdout, run.stderr
    );
    let totals: serde_json::Value =
        serde_json::from_str(run.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(totals["unrecoverable_clients"], 0, "{}", run.stdout);
}
