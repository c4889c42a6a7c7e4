//! Recovery as Portal performs it, after any sequence of failed, half-done or repeated steps.
//!
//! A model of Portal's side (which backup it considers completed, per method) runs next to the
//! company's calls into a real vault (the embedded store, in memory). Each backup goes through
//! the steps of one of Portal's two flows:
//!
//! - SDK: the webhook for each curve, Portal's immediate fetch, the app's cipherText (one,
//!   under the bare method), the app's `storedClientBackupShare(true)` to Portal, and the
//!   backend's mirror of the pair status into the vault;
//! - Enclave: the same, with one cipherText per curve (`METHOD-CURVE`) and the PATCH of both
//!   pairs to Portal.
//!
//! Any step may fail (no effect, the caller sees an error), time out after taking effect
//! (the caller sees an error), or be repeated. A failure seen by Portal aborts the backup on
//! its side; a failure seen by the app stops the app before it tells Portal. After every
//! sequence, recovery must succeed for the backup Portal considers completed: the fetch holds
//! its custodian share for every curve, and the backend reads its cipherText by pair id.

use proptest::prelude::*;
use sharevault::auth::{FailureLimiter, WebhookSecrets};
use sharevault::crypto::MasterKey;
use sharevault::store::Store;
use sharevault::store::disk::{Disk, MemDisk};
use sharevault::store::redb::RedbStore;
use sharevault::validate::Limits;
use sharevault::vault::status::PairStatus;
use sharevault::vault::{BackupInput, Credentials, Vault};
use std::sync::Arc;

const CURVES: [&str; 2] = ["SECP256K1", "ED25519"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Sdk,
    Enclave,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Portal's `POST /backup` for one curve.
    Webhook(usize),
    /// Portal's `POST /backup/fetch` right after the webhooks.
    Fetch,
    /// The app's cipherText: the bare method's (SDK), or one curve's (Enclave).
    CipherText(Option<usize>),
    /// `storedClientBackupShare(true)` (SDK) or the PATCH of both pairs (Enclave), to Portal.
    Notify,
    /// The backend's update of both pairs to `STORED_CLIENT_BACKUP_SHARE` in the vault.
    Mirror,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Not done; the caller sees an error.
    Fails,
    /// Done; the caller sees an error (a timeout after the effect).
    TimesOut,
    /// Done twice; the caller sees success.
    Repeated,
}

const FAULTS: [Fault; 3] = [Fault::Fails, Fault::TimesOut, Fault::Repeated];

fn steps(flow: Flow) -> Vec<Step> {
    let mut steps = vec![Step::Webhook(0), Step::Webhook(1), Step::Fetch];
    match flow {
        Flow::Sdk => steps.push(Step::CipherText(None)),
        Flow::Enclave => steps.extend([Step::CipherText(Some(0)), Step::CipherText(Some(1))]),
    }
    steps.extend([Step::Notify, Step::Mirror]);
    steps
}

/// One backup attempt: its flow and the faults of its steps.
#[derive(Debug, Clone)]
struct Attempt {
    flow: Flow,
    method: &'static str,
    faults: Vec<(Step, Fault)>,
}

/// The vault under test, as the company's server and backend use it.
struct Company {
    vault: Vault,
    store: Arc<dyn Store>,
}

impl Company {
    async fn open() -> Self {
        let opener: sharevault::store::redb::Opener = Box::new(|| {
            redb::Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())
        });
        let store: Arc<dyn Store> = Arc::new(
            RedbStore::open_with(
                opener,
                Box::new(|| Ok(Box::new(MemDisk::default()) as Box<dyn Disk>)),
                None,
                0,
                Default::default(),
                Default::default(),
            )
            .unwrap(),
        );
        let key = MasterKey::from_file_contents(&[7u8; 32]).unwrap();
        let credentials = Credentials {
            webhook: std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(
                WebhookSecrets::from_file_contents("a-webhook-secret-of-enough-length").unwrap(),
            )),
            admin_token: [0; 32],
            failures: FailureLimiter::new(
                0,
                std::time::Duration::from_secs(60),
                std::time::Duration::ZERO,
            ),
        };
        let vault = Vault::open(
            Arc::clone(&store),
            key,
            Vec::new(),
            Limits::default(),
            credentials,
            Default::default(),
        )
        .await
        .unwrap_or_else(|_| panic!("the vault opens"));
        Self { vault, store }
    }
}

/// What one backup attempt produces: a pair and a share per curve, and the cipherTexts.
struct Backup {
    pairs: [String; 2],
    shares: [String; 2],
    /// The SDK's one cipherText, or the Enclave flow's one per curve.
    cipher_texts: [String; 2],
}

impl Backup {
    fn new(client: &str, method: &str, n: usize, flow: Flow) -> Self {
        let pairs = CURVES.map(|c| format!("pair-{method}-{c}-{n}"));
        let shares = [0, 1].map(|i| {
            format!(
                "{{\"backupSharePairId\":\"{}\",\"share\":\"{client}/{method}/{}/{n}\"}}",
                pairs[i], CURVES[i]
            )
        });
        let cipher_texts = match flow {
            Flow::Sdk => [0, 1].map(|_| format!("ct-{method}-{n}")),
            Flow::Enclave => [0, 1].map(|i| format!("ct-{method}-{}-{n}", CURVES[i])),
        };
        Self {
            pairs,
            shares,
            cipher_texts,
        }
    }
}

/// Portal's `POST /backup` of one curve of `backup`.
async fn webhook(
    vault: &Vault,
    client: &str,
    method: &str,
    backup: &Backup,
    curve: usize,
) -> Result<(), sharevault::error::VaultError> {
    let key = format!("{method}-{}", CURVES[curve]);
    let input = BackupInput {
        client_id: client,
        backup_method: &key,
        share: &backup.shares[curve],
        backup_share_pair_id: None,
    };
    vault.backup(input, "portal").await.map(|_| ())
}

/// Portal's view of one method: the backup it considers completed.
type PortalView = Option<usize>;

/// Runs `attempts` for `client` and checks recovery after the last one.
async fn run(company: &Company, client: &str, attempts: &[Attempt]) -> Result<(), String> {
    let vault = &company.vault;
    let mut portal: Vec<(&'static str, PortalView)> = Vec::new();
    let mut backups: Vec<(&'static str, Backup)> = Vec::new();
    for (n, attempt) in attempts.iter().enumerate() {
        let backup = Backup::new(client, attempt.method, n, attempt.flow);
        let method = attempt.method;
        let fault_of = |step: Step| {
            attempt
                .faults
                .iter()
                .find(|(s, _)| *s == step)
                .map(|(_, f)| *f)
        };
        // How many times a step takes effect, and whether its caller sees success.
        let plan = |step: Step| match fault_of(step) {
            None => (1, true),
            Some(Fault::Fails) => (0, false),
            Some(Fault::TimesOut) => (1, false),
            Some(Fault::Repeated) => (2, true),
        };
        let mut completed_in_portal = false;
        'steps: for step in steps(attempt.flow) {
            let (times, ok) = plan(step);
            for _ in 0..times {
                match step {
                    Step::Webhook(curve) => webhook(vault, client, method, &backup, curve)
                        .await
                        .map_err(|e| format!("{step:?}: {e}"))?,
                    Step::Fetch => {
                        let fetched = vault
                            .fetch(client, "portal")
                            .await
                            .map_err(|e| format!("{step:?}: {e}"))?;
                        for share in &backup.shares {
                            if !fetched.iter().any(|f| f.share.as_str() == share) {
                                return Err(format!(
                                    "Portal's fetch right after the webhook misses {share}"
                                ));
                            }
                        }
                    }
                    Step::CipherText(curve) => {
                        let (key, ct) = match curve {
                            None => (method.to_owned(), &backup.cipher_texts[0]),
                            Some(c) => (format!("{method}-{}", CURVES[c]), &backup.cipher_texts[c]),
                        };
                        vault
                            .store_client_share(client, &key, ct, "backend")
                            .await
                            .map_err(|e| format!("{step:?}: {e}"))?;
                    }
                    Step::Notify => completed_in_portal = true,
                    Step::Mirror => {
                        vault
                            .update_pairs(
                                client,
                                &backup.pairs,
                                PairStatus::StoredClientBackupShare,
                                "backend",
                            )
                            .await
                            .map_err(|e| format!("{step:?}: {e}"))?;
                    }
                }
            }
            if !ok {
                break 'steps;
            }
        }
        if completed_in_portal {
            match portal.iter_mut().find(|(m, _)| *m == method) {
                Some((_, view)) => *view = Some(backups.len()),
                None => portal.push((method, Some(backups.len()))),
            }
        }
        backups.push((method, backup));
    }
    recover(vault, client, &portal, &backups).await
}

/// Recovery as Portal performs it, for every method Portal holds a completed backup of.
async fn recover(
    vault: &Vault,
    client: &str,
    portal: &[(&'static str, PortalView)],
    backups: &[(&'static str, Backup)],
) -> Result<(), String> {
    let fetched = vault
        .fetch(client, "portal")
        .await
        .map_err(|e| format!("recovery fetch: {e}"))?;
    for (method, view) in portal {
        let Some(n) = view else { continue };
        let backup = &backups[*n].1;
        for curve in 0..2 {
            if !fetched
                .iter()
                .any(|f| f.share.as_str() == backup.shares[curve])
            {
                return Err(format!(
                    "{method}: the fetch misses the custodian share of Portal's completed \
                     pair {}",
                    backup.pairs[curve]
                ));
            }
            let got = vault
                .client_share(client, "", Some(&backup.pairs[curve]), "backend")
                .await
                .map_err(|e| format!("{method}: cipherText of {}: {e}", backup.pairs[curve]))?;
            if got.cipher_text.as_str() != backup.cipher_texts[curve] {
                return Err(format!(
                    "{method}: pair {} answers the cipherText of another backup",
                    backup.pairs[curve]
                ));
            }
        }
    }
    Ok(())
}

/// Every attempt of `flow` with at most one faulty step.
fn single_fault_attempts(flow: Flow) -> Vec<Attempt> {
    let mut out = vec![Attempt {
        flow,
        method: "PASSWORD",
        faults: Vec::new(),
    }];
    for step in steps(flow) {
        for fault in FAULTS {
            out.push(Attempt {
                flow,
                method: "PASSWORD",
                faults: vec![(step, fault)],
            });
        }
    }
    out
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Every sequence of one to three backups of one method, each with any one step failing,
/// timing out after its effect or repeated (or none), in either flow; sequences run
/// concurrently, one client each.
#[test]
fn every_sequence_of_up_to_three_faulty_backups_recovers_portals_completed_backup() {
    runtime().block_on(async {
        // Two vaults, each with its own writer thread, keep both cores busy.
        let companies = [
            Arc::new(Company::open().await),
            Arc::new(Company::open().await),
        ];
        for flow in [Flow::Sdk, Flow::Enclave] {
            let attempts = single_fault_attempts(flow);
            let mut sequences: Vec<Vec<Attempt>> = Vec::new();
            for a in &attempts {
                sequences.push(vec![a.clone()]);
                for b in &attempts {
                    sequences.push(vec![a.clone(), b.clone()]);
                    for c in &attempts {
                        sequences.push(vec![a.clone(), b.clone(), c.clone()]);
                    }
                }
            }
            let total = sequences.len();
            let mut tasks = tokio::task::JoinSet::new();
            let mut failures = Vec::new();
            for (i, sequence) in sequences.into_iter().enumerate() {
                let company = Arc::clone(&companies[i % 2]);
                tasks.spawn(async move {
                    let client = format!("{flow:?}-{i}");
                    run(&company, &client, &sequence)
                        .await
                        .map_err(|e| format!("{sequence:?}: {e}"))
                });
                while tasks.len() >= 64 {
                    if let Some(Ok(Err(e))) = tasks.join_next().await {
                        failures.push(e);
                    }
                }
            }
            while let Some(done) = tasks.join_next().await {
                if let Err(e) = done.unwrap() {
                    failures.push(e);
                }
            }
            assert!(
                failures.is_empty(),
                "{flow:?}: {} of {total} sequences do not recover; the first: {}",
                failures.len(),
                failures[0]
            );
        }
    });
}

fn attempt() -> impl Strategy<Value = Attempt> {
    let flow = prop_oneof![Just(Flow::Sdk), Just(Flow::Enclave)];
    let method = prop_oneof![Just("PASSWORD"), Just("GDRIVE")];
    (
        flow,
        method,
        prop::collection::vec((0usize..7, 0usize..3), 0..3),
    )
        .prop_map(|(flow, method, picks)| {
            let steps = steps(flow);
            let mut faults: Vec<(Step, Fault)> = Vec::new();
            for (s, f) in picks {
                let step = steps[s % steps.len()];
                if !faults.iter().any(|(x, _)| *x == step) {
                    faults.push((step, FAULTS[f]));
                }
            }
            Attempt {
                flow,
                method,
                faults,
            }
        })
}

proptest! {
    #![proptest_config(crate::config(48))]

    /// Longer sequences: up to eight backups over two methods, each in either flow, with up to
    /// three faulty steps each.
    #[test]
    fn longer_faulty_sequences_over_two_methods_recover(
        attempts in prop::collection::vec(attempt(), 1..9),
    ) {
        // Each method keeps one flow, as an app does.
        let mut attempts = attempts;
        let first_flow = |m: &str, all: &[Attempt]| all.iter().find(|a| a.method == m).map(|a| a.flow);
        let flows: Vec<_> = ["PASSWORD", "GDRIVE"].iter().map(|m| (*m, first_flow(m, &attempts))).collect();
        for a in &mut attempts {
            if let Some((_, Some(flow))) = flows.iter().find(|(m, _)| *m == a.method)
                && a.flow != *flow
            {
                a.flow = *flow;
                a.faults.clear();
            }
        }
        let result = runtime().block_on(async {
            let company = Company::open().await;
            run(&company, "client", &attempts).await
        });
        prop_assert!(result.is_ok(), "{attempts:?}: {}", result.unwrap_err());
    }
}

/// Stores one backup of `method` (both curves) and, with `complete`, its cipherText.
async fn back_up(vault: &Vault, client: &str, method: &str, n: usize, complete: bool) -> Backup {
    let backup = Backup::new(client, method, n, Flow::Sdk);
    for curve in 0..CURVES.len() {
        webhook(vault, client, method, &backup, curve)
            .await
            .unwrap();
    }
    if complete {
        vault
            .store_client_share(client, method, &backup.cipher_texts[0], "backend")
            .await
            .unwrap();
    }
    backup
}

/// However tight the limits, the newest completed version of a key stays while the key holds
/// a share: backups that never complete cannot push the last completed one out.
#[test]
fn retention_never_removes_the_newest_completed_version_of_a_key() {
    runtime().block_on(async {
        let tight = sharevault::vault::versions::Retention {
            keep: 1,
            keep_days: 0,
            max: 1,
            max_per_client: 2,
        };
        let company = Company::open().await;
        let vault = company.vault.with_retention(tight);
        let done = back_up(&vault, "c", "PASSWORD", 0, true).await;
        for n in 1..5 {
            back_up(&vault, "c", "PASSWORD", n, false).await;
        }
        let fetched = vault.fetch("c", "portal").await.unwrap();
        for share in &done.shares {
            assert!(
                fetched.iter().any(|f| f.share.as_str() == share),
                "the completed backup is still answered"
            );
        }
        let ct = vault
            .client_share("c", "", Some(&done.pairs[0]), "backend")
            .await
            .unwrap();
        assert_eq!(ct.cipher_text.as_str(), done.cipher_texts[0]);
        let versions = vault.list_versions("c").await.unwrap();
        let kept = versions.iter().filter(|v| v.number > 0).count();
        assert_eq!(
            kept, 2,
            "one kept version per curve, the completed one: {versions:?}"
        );
    });
}

/// A client's versions are bounded across all its keys, those of a deleted cipherText
/// included, oldest first.
#[test]
fn versions_are_capped_per_client_across_keys() {
    runtime().block_on(async {
        let retention = sharevault::vault::versions::Retention {
            keep: 5,
            keep_days: 90,
            max: 5,
            max_per_client: 6,
        };
        let company = Company::open().await;
        let vault = company.vault.with_retention(retention);
        // Three cipherTexts per method, for four methods: two kept versions each, eight in all.
        for method in ["A", "B", "C", "D"] {
            for n in 0..3 {
                vault
                    .store_client_share("c", method, &format!("ct-{method}-{n}"), "backend")
                    .await
                    .unwrap();
            }
        }
        vault
            .delete_client_share("c", "A", "backend")
            .await
            .unwrap();
        let kept: Vec<_> = vault
            .list_versions("c")
            .await
            .unwrap()
            .into_iter()
            .filter(|v| v.number > 0)
            .collect();
        assert_eq!(kept.len(), 6, "{kept:?}");
        // The oldest (A's, whose cipherText is now deleted, then B's first) went first.
        assert_eq!(
            kept.iter().filter(|v| v.backup_method == "A").count(),
            0,
            "{kept:?}"
        );
        assert!(kept.iter().filter(|v| v.backup_method == "D").count() == 2);
        // Another write to a key whose share was deleted: the client stays within its cap.
        vault
            .store_client_share("c", "A", "ct-A-again", "backend")
            .await
            .unwrap();
        vault
            .store_client_share("c", "A", "ct-A-again-2", "backend")
            .await
            .unwrap();
        let kept = vault
            .list_versions("c")
            .await
            .unwrap()
            .into_iter()
            .filter(|v| v.number > 0)
            .count();
        assert_eq!(kept, 6);
    });
}

/// Which backup a cipherText belongs to is decided by the order of commits, not by the
/// clocks of the daemons that stored them: a cipherText stored after its custodian share by a
/// daemon whose clock is behind still completes the pair, and one stored before it by a
/// daemon whose clock is ahead still does not.
#[test]
fn a_cipher_text_belongs_to_a_backup_by_commit_order_not_by_clock() {
    use sharevault::vault::SealedRecord;
    use sharevault::vault::rules::{self, WriteOp};
    use sharevault::vault::versions::Retention;
    runtime().block_on(async {
        let company = Company::open().await;
        let store = company.store.as_ref();
        let record = |at: u64, pair: Option<&str>| SealedRecord {
            created_at_ms: at,
            seq: 0,
            pair_id: pair.map(str::to_owned),
            covers: Vec::new(),
            envelope: vec![1, 2, 3],
        };
        let put = |client: &str, custodian: bool, at: u64| {
            let (client_id, record) = (client.to_owned(), record(at, custodian.then_some("p")));
            if custodian {
                WriteOp::PutCustodianShare {
                    client_id,
                    backup_method: "PASSWORD-ED25519".into(),
                    record,
                    unchanged: None,
                    retention: Retention::default(),
                }
            } else {
                WriteOp::PutClientShare {
                    client_id,
                    backup_method: "PASSWORD".into(),
                    record,
                    unchanged: None,
                    retention: Retention::default(),
                }
            }
        };
        let complete = |client: &str| WriteOp::UpdatePairs {
            client_id: client.to_owned(),
            ids: vec!["p".into()],
            status: PairStatus::StoredClientBackupShare,
            now_ms: 10_000,
        };
        // The custodian share at 5,000 ms; the cipherText after it, from a clock 3 s behind.
        rules::write(store, put("behind", true, 5_000), None, None)
            .await
            .unwrap();
        rules::write(store, put("behind", false, 2_000), None, None)
            .await
            .unwrap();
        rules::write(store, complete("behind"), None, None)
            .await
            .expect("a cipherText committed after the custodian share completes its pair");
        // The cipherText first, from a clock 3 s ahead; then the custodian share.
        rules::write(store, put("ahead", false, 8_000), None, None)
            .await
            .unwrap();
        rules::write(store, put("ahead", true, 5_000), None, None)
            .await
            .unwrap();
        let refused = rules::write(store, complete("ahead"), None, None).await;
        assert!(
            refused.is_err(),
            "a cipherText committed before the custodian share belongs to an earlier backup"
        );
    });
}
