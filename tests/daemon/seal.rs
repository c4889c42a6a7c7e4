//! The pkcs11 seal against a real SoftHSM2 token (Debian package `softhsm2`): each test makes
//! its own token in a temp dir (`SOFTHSM2_CONF`), its key with `sharevault seal create-key`
//! (or, for the wrong kinds of key, `pkcs11-tool` from Debian `opensc`), and starts the real
//! daemon on it.

use crate::harness::{Daemon, Keys, Started, command, fetch_shares, with_secret, with_token};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use sharevault::pb;
use sharevault::snapshot::{RecordReader, TableId};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "vault-pin-2468";
const TOKEN: &str = "vault-token";

/// A SoftHSM2 token of its own, and the secrets a pkcs11-sealed daemon runs with.
struct Token {
    tmp: tempfile::TempDir,
    conf: PathBuf,
    keys: Keys,
    data_dir: PathBuf,
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run a command")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl Token {
    fn new(seed: u8) -> Self {
        assert!(
            Path::new(MODULE).exists()
                && Command::new("softhsm2-util")
                    .arg("--version")
                    .output()
                    .is_ok(),
            "SoftHSM2 is missing ({MODULE}, softhsm2-util): install it with \
             `apt-get install softhsm2` (.ci/run does)"
        );
        let tmp = tempfile::tempdir().unwrap();
        let tokens = tmp.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = tmp.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let init = run(Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args(["--init-token", "--free", "--label", TOKEN])
            .args(["--pin", PIN, "--so-pin", "13579111"]));
        assert!(init.status.success(), "softhsm2-util: {}", text(&init));
        let keys = Keys::new(&tmp.path().join("keys"), seed);
        let pin = |name: &str, value: &str| {
            let path = keys.dir.join(name);
            std::fs::write(&path, value).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        pin("pin", PIN);
        pin("wrong-pin", "111111");
        let data_dir = tmp.path().join("data");
        Self {
            tmp,
            conf,
            keys,
            data_dir,
        }
    }

    fn tokens(&self) -> PathBuf {
        self.tmp.path().join("tokens")
    }

    /// The token's settings, with the key `label`.
    fn pkcs11(&self, label: &str) -> Vec<String> {
        [
            "--pkcs11-module",
            MODULE,
            "--pkcs11-token-label",
            TOKEN,
            "--pkcs11-key-label",
            label,
            "--pkcs11-pin-file",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([self.keys.dir.join("pin").display().to_string()])
        .collect()
    }

    /// `sharevault <args>` with the token's configuration.
    fn sharevault(&self, args: &[String]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sharevault"));
        cmd.args(args)
            .env("SOFTHSM2_CONF", &self.conf)
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("SHAREVAULT_DATA_DIR");
        cmd
    }

    /// `sharevault seal <sub> --data-dir ... <args>`; it must succeed.
    fn seal(&self, sub: &str, args: &[String]) -> String {
        let mut all = vec!["seal".to_string(), sub.into(), "--data-dir".into()];
        all.push(self.data_dir.display().to_string());
        all.extend(args.iter().cloned());
        let out = run(&mut self.sharevault(&all));
        assert!(out.status.success(), "seal {sub}: {}", text(&out));
        text(&out)
    }

    fn create_key(&self, label: &str) {
        self.seal("create-key", &self.pkcs11(label));
    }

    /// A key of the wrong kind, made with pkcs11-tool (`AES:16`, or extractable).
    fn foreign_key(&self, label: &str, extra: &[&str]) {
        let out = Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", &self.conf)
            .args([
                "--module",
                MODULE,
                "--token-label",
                TOKEN,
                "--login",
                "--pin",
                PIN,
            ])
            .args(["--keygen", "--label", label])
            .args(extra)
            .output()
            .expect(
                "pkcs11-tool is missing: install it with `apt-get install opensc` (.ci/run does)",
            );
        assert!(out.status.success(), "pkcs11-tool: {}", text(&out));
    }

    /// The daemon's flags, less the seal's: webhook secret and admin token.
    fn base_args(&self) -> Vec<String> {
        let mut args = vec!["--grpc-listen".to_string(), "127.0.0.1:0".into()];
        for name in ["webhook-secret", "admin-token"] {
            args.push(format!("--{name}-file"));
            args.push(self.keys.dir.join(name).display().to_string());
        }
        args
    }

    fn launch(&self, extra: &[String]) -> Started {
        let mut args = self.base_args();
        args.extend(extra.iter().cloned());
        let mut cmd = command(&self.data_dir, &args);
        cmd.env("SOFTHSM2_CONF", &self.conf);
        Daemon::launch(cmd)
    }

    /// Starts under the pkcs11 seal with key `label`.
    fn start(&self, label: &str, extra: &[&str]) -> Daemon {
        let mut args = vec!["--seal".to_string(), "pkcs11".into()];
        args.extend(self.pkcs11(label));
        args.extend(extra.iter().map(|s| s.to_string()));
        ready(self.launch(&args))
    }

    /// Starts under the file seal with the test's master key.
    fn start_file(&self) -> Daemon {
        let args = vec![
            "--master-key-file".to_string(),
            self.keys.master_key_file.display().to_string(),
        ];
        ready(self.launch(&args))
    }

    /// Starts with `args`; the start must fail. Answers its logs.
    fn refused(&self, args: &[String]) -> String {
        match self.launch(args) {
            Started::Ready(_) => panic!("the daemon started with {args:?}"),
            Started::Exited { status, logs } => {
                assert!(!status.success());
                logs
            }
        }
    }
}

fn ready(started: Started) -> Daemon {
    match started {
        Started::Ready(daemon) => daemon,
        Started::Exited { status, logs } => panic!("daemon exited ({status}):\n{logs}"),
    }
}

async fn put_share(daemon: &Daemon, keys: &Keys, client: &str, share: &str) {
    daemon
        .webhook()
        .await
        .backup(with_secret(
            pb::BackupRequest {
                client_id: client.into(),
                backup_method: "PASSWORD-SECP256K1".into(),
                share: share.into(),
                backup_share_pair_id: None,
            },
            &keys.webhook_secret,
        ))
        .await
        .expect("backup");
}

async fn shares(daemon: &Daemon, keys: &Keys, client: &str) -> Vec<String> {
    fetch_shares(
        &mut daemon.webhook().await,
        &keys.webhook_secret,
        client.into(),
    )
    .await
}

fn share(n: u32) -> String {
    format!("{{\"backupSharePairId\":\"pair-{n}\",\"k\":\"seal-share-{n}\"}}")
}

/// The database file, less the identity that every open renews (the last 64 bytes of its
/// first 4 KiB: docs/design.md, "Identity"): for failures that stop the start before the
/// database is opened.
async fn audit_events(daemon: &Daemon, admin: &str, action: &str) -> Vec<pb::AuditEvent> {
    let request = pb::ListAuditEventsRequest {
        action: action.into(),
        ..Default::default()
    };
    daemon.audit_events(admin, request).await
}

fn database_bytes(token: &Token) -> Vec<u8> {
    let mut bytes = std::fs::read(token.data_dir.join("sharevault.redb")).unwrap();
    bytes[4096 - 64..4096].fill(0);
    bytes
}

#[tokio::test]
async fn a_pkcs11_vault_starts_restarts_and_refuses_the_file_seal() {
    let token = Token::new(61);
    token.create_key("wrap-1");
    let mut daemon = token.start("wrap-1", &[]);
    assert!(
        daemon
            .logs()
            .contains("generated the vault's root key and sealed it")
    );
    assert!(!token.data_dir.join("master-key").exists());
    put_share(&daemon, &token.keys, "c1", &share(1)).await;
    let id = daemon.status(&token.keys.admin_token).await.master_key_id;
    assert!(daemon.signal("TERM").success());

    let mut daemon = token.start("wrap-1", &[]);
    assert!(!daemon.logs().contains("generated"));
    assert_eq!(
        daemon.status(&token.keys.admin_token).await.master_key_id,
        id
    );
    assert_eq!(shares(&daemon, &token.keys, "c1").await, [share(1)]);
    assert!(daemon.signal("TERM").success());

    // The file seal (with any key) does not open it, says which seal it needs, and leaves
    // the vault as it was.
    let logs = token.refused(&[
        "--master-key-file".into(),
        token.keys.master_key_file.display().to_string(),
    ]);
    assert!(
        logs.contains("sealed by the PKCS#11 key labelled \"wrap-1\"")
            && logs.contains("--seal pkcs11"),
        "{logs}"
    );
    // Nor does the token with another mechanism than the one that sealed it.
    let mut args = vec!["--seal".to_string(), "pkcs11".into()];
    args.extend(token.pkcs11("wrap-1"));
    args.extend(["--pkcs11-mechanism".into(), "cloudkms-aes-gcm".into()]);
    let logs = token.refused(&args);
    assert!(logs.contains("sealed with mechanism aes-gcm"), "{logs}");
    let daemon = token.start("wrap-1", &[]);
    assert_eq!(
        daemon.status(&token.keys.admin_token).await.master_key_id,
        id
    );
    assert_eq!(shares(&daemon, &token.keys, "c1").await, [share(1)]);
    assert_eq!(daemon.verify(&token.keys.admin_token).await.failed, 0);
}

#[tokio::test]
async fn a_wrong_pin_a_missing_or_wrong_key_or_library_stop_the_start_and_change_nothing() {
    let token = Token::new(62);
    token.create_key("wrap-1");
    let mut daemon = token.start("wrap-1", &[]);
    put_share(&daemon, &token.keys, "c1", &share(1)).await;
    assert!(daemon.signal("TERM").success());
    let before = database_bytes(&token);
    token.foreign_key("aes-128", &["--key-type", "AES:16"]);
    token.foreign_key("extractable", &["--key-type", "AES:32", "--extractable"]);

    let with = |label: &str, edit: &dyn Fn(&mut Vec<String>)| {
        let mut args = vec!["--seal".to_string(), "pkcs11".into()];
        args.extend(token.pkcs11(label));
        edit(&mut args);
        token.refused(&args)
    };
    let wrong_pin = token.keys.dir.join("wrong-pin").display().to_string();
    let cases: [(&str, String, &str); 6] = [
        (
            "wrong PIN",
            with("wrap-1", &|a| *a.last_mut().unwrap() = wrong_pin.clone()),
            "refused the PIN (one try was made; the daemon never retries)",
        ),
        (
            "missing key",
            with("no-such-key", &|_| {}),
            "holds no key labelled \"no-such-key\"",
        ),
        (
            "AES-128 key",
            with("aes-128", &|_| {}),
            "it is not 256 bits long",
        ),
        (
            "extractable key",
            with("extractable", &|_| {}),
            "it can leave the token",
        ),
        (
            "missing library",
            with("wrap-1", &|a| a[3] = "/nonexistent/libpkcs11.so".into()),
            "cannot load the PKCS#11 library /nonexistent/libpkcs11.so",
        ),
        (
            "absent token",
            with("wrap-1", &|a| a[5] = "no-such-token".into()),
            "no PKCS#11 token labelled \"no-such-token\" is present",
        ),
    ];
    for (case, logs, expected) in cases {
        assert!(logs.contains(expected), "{case}: {logs}");
        assert!(!logs.contains(PIN), "{case}: the PIN is in the logs");
        assert!(
            database_bytes(&token) == before,
            "{case} changed the database"
        );
    }
    // The right PIN still works: nothing was locked.
    let daemon = token.start("wrap-1", &[]);
    assert_eq!(shares(&daemon, &token.keys, "c1").await, [share(1)]);
}

#[tokio::test]
async fn a_vault_migrates_from_its_key_file_to_the_token_and_back_without_reencryption() {
    let token = Token::new(63);
    token.create_key("wrap-1");
    let mut daemon = token.start_file();
    for n in 0..5 {
        put_share(&daemon, &token.keys, &format!("c{n}"), &share(n)).await;
    }
    let id = daemon.status(&token.keys.admin_token).await.master_key_id;
    assert!(daemon.signal("TERM").success());

    let mut args = vec![
        "--to".to_string(),
        "pkcs11".into(),
        "--master-key-file".into(),
    ];
    args.push(token.keys.master_key_file.display().to_string());
    args.extend(token.pkcs11("wrap-1"));
    let said = token.seal("migrate", &args);
    assert!(said.contains("no record was re-encrypted"), "{said}");
    assert!(
        said.contains(&token.keys.master_key_file.display().to_string()),
        "{said}"
    );

    let mut daemon = token.start("wrap-1", &[]);
    assert_eq!(
        daemon.status(&token.keys.admin_token).await.master_key_id,
        id
    );
    for n in 0..5 {
        assert_eq!(
            shares(&daemon, &token.keys, &format!("c{n}")).await,
            [share(n)]
        );
    }
    let verified = daemon.verify(&token.keys.admin_token).await;
    assert_eq!((verified.custodian_shares, verified.failed), (5, 0));
    assert!(daemon.signal("TERM").success());

    // And back: the root key comes out into a new key file, the same key as before.
    let out = token.tmp.path().join("keys/master-key-out");
    let mut args = vec!["--to".to_string(), "file".into(), "--master-key-out".into()];
    args.push(out.display().to_string());
    args.extend(token.pkcs11("wrap-1"));
    token.seal("migrate", &args);
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().trim(),
        std::fs::read_to_string(&token.keys.master_key_file)
            .unwrap()
            .trim()
    );
    let mut args = vec!["--seal".to_string(), "pkcs11".into()];
    args.extend(token.pkcs11("wrap-1"));
    let logs = token.refused(&args);
    assert!(
        logs.contains("is its master key file, not a PKCS#11 token"),
        "{logs}"
    );
    let daemon = token.start_file();
    assert_eq!(
        daemon.status(&token.keys.admin_token).await.master_key_id,
        id
    );
    for n in 0..5 {
        assert_eq!(
            shares(&daemon, &token.keys, &format!("c{n}")).await,
            [share(n)]
        );
    }
    // Each move is in the audit trail, whose chain still verifies.
    let admin = &token.keys.admin_token;
    assert!(daemon.verify_audit(admin).await.ok);
    for action in ["seal_to_pkcs11", "seal_to_file"] {
        let events = audit_events(&daemon, admin, action).await;
        assert_eq!(events.len(), 1, "{action}");
        assert_eq!(
            (events[0].actor.as_str(), events[0].backup_method.as_str()),
            ("seal", "wrap-1")
        );
    }
}

#[tokio::test]
async fn rewrap_moves_the_root_key_to_a_new_token_key() {
    let token = Token::new(64);
    token.create_key("wrap-1");
    token.create_key("wrap-2");
    let mut daemon = token.start("wrap-1", &[]);
    put_share(&daemon, &token.keys, "c1", &share(1)).await;
    let id = daemon.status(&token.keys.admin_token).await.master_key_id;
    assert!(daemon.signal("TERM").success());

    let mut args = vec!["--new-key-label".to_string(), "wrap-2".into()];
    args.extend(token.pkcs11("wrap-1"));
    let said = token.seal("rewrap", &args);
    assert!(said.contains("--pkcs11-key-label \"wrap-2\""), "{said}");

    let mut args = vec!["--seal".to_string(), "pkcs11".into()];
    args.extend(token.pkcs11("wrap-1"));
    let logs = token.refused(&args);
    assert!(
        logs.contains("sealed by the token key labelled \"wrap-2\""),
        "{logs}"
    );
    let daemon = token.start("wrap-2", &[]);
    let events = audit_events(&daemon, &token.keys.admin_token, "seal_rewrap").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].backup_method, "wrap-2");
    assert!(daemon.verify_audit(&token.keys.admin_token).await.ok);
    assert_eq!(
        daemon.status(&token.keys.admin_token).await.master_key_id,
        id
    );
    assert_eq!(shares(&daemon, &token.keys, "c1").await, [share(1)]);
}

#[tokio::test]
async fn rekey_under_the_token_seal_makes_and_seals_a_new_root_key() {
    let token = Token::new(65);
    token.create_key("wrap-1");
    let mut daemon = token.start("wrap-1", &[]);
    let admin = token.keys.admin_token.clone();
    for n in 0..3 {
        put_share(&daemon, &token.keys, &format!("c{n}"), &share(n)).await;
    }
    let old = daemon.status(&admin).await.master_key_id;
    // A key sent by the caller is refused: the daemon makes it.
    let refused = daemon
        .admin()
        .await
        .rekey(with_token(
            pb::RekeyRequest {
                new_master_key: vec![9; 32],
            },
            &admin,
        ))
        .await
        .expect_err("a caller's key is refused under the token seal");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(daemon.status(&admin).await.master_key_id, old);

    let last = daemon.rekey(&admin, &[]).await;
    assert!(last.finished);
    assert_eq!(last.total, 3);
    assert_ne!(last.new_master_key_id, old);
    assert_eq!(daemon.verify(&admin).await.failed, 0);
    assert!(daemon.signal("TERM").success());

    let daemon = token.start("wrap-1", &[]);
    assert_eq!(
        daemon.status(&admin).await.master_key_id,
        last.new_master_key_id
    );
    for n in 0..3 {
        assert_eq!(
            shares(&daemon, &token.keys, &format!("c{n}")).await,
            [share(n)]
        );
    }
}

/// Every data key of the snapshot's shares, unwrapped with `root` (the envelope layout of
/// `src/crypto.rs`).
fn data_keys(snapshot: &Path, root: &[u8; 32]) -> Vec<[u8; 32]> {
    let bytes = std::fs::read(snapshot).unwrap();
    let mut reader = RecordReader::new(&bytes[..bytes.len() - 32]).unwrap();
    let mut keys = Vec::new();
    let wrap = aes_gcm::Aes256Gcm::new(root.into());
    while let Some((table, key, value)) = reader.next_record().unwrap() {
        if !matches!(table, TableId::Custodian | TableId::Client) {
            continue;
        }
        let (client, method) = sharevault::snapshot::split_client_key(&key).unwrap();
        let envelope = sharevault::vault::codec::decode_record(&value)
            .unwrap()
            .envelope;
        let mut aad = b"sharevault/v1/dek".to_vec();
        aad.push(envelope[0]);
        aad.extend_from_slice(&envelope[1..9]);
        for part in [table.name(), client, method] {
            aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
            aad.extend_from_slice(part.as_bytes());
        }
        let plain = wrap
            .decrypt(
                <&[u8; 12]>::try_from(&envelope[9..21]).unwrap().into(),
                Payload {
                    msg: &envelope[21..69],
                    aad: &aad,
                },
            )
            .expect("the data key unwraps with the root key");
        keys.push(plain.try_into().unwrap());
    }
    keys
}

fn found(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn snapshots_restore_under_the_token_and_no_key_is_ever_in_clear() {
    let token = Token::new(66);
    token.create_key("wrap-1");
    let mut daemon = token.start("wrap-1", &[]);
    let admin = token.keys.admin_token.clone();
    for n in 0..4 {
        put_share(&daemon, &token.keys, &format!("c{n}"), &share(n)).await;
    }
    let snap = token.tmp.path().join("vault.snap");
    crate::operations::snapshot_to(&daemon, &admin, &snap).await;
    let id = daemon.status(&admin).await.master_key_id;
    assert!(daemon.signal("TERM").success());
    let logs = daemon.logs();

    // With the master key file: refused, naming the seal and key it needs.
    let elsewhere = token.tmp.path().join("restored");
    let restore = |extra: &[String]| {
        let mut args = vec!["restore".to_string(), "--from".into()];
        args.push(snap.display().to_string());
        args.push("--data-dir".into());
        args.push(elsewhere.display().to_string());
        args.extend(extra.iter().cloned());
        run(&mut token.sharevault(&args))
    };
    let refused = restore(&[
        "--master-key-file".into(),
        token.keys.master_key_file.display().to_string(),
    ]);
    assert!(!refused.status.success());
    let said = text(&refused);
    assert!(
        said.contains("sealed by the PKCS#11 key labelled \"wrap-1\"")
            && said.contains("--seal pkcs11"),
        "{said}"
    );
    assert!(!elsewhere.join("sharevault.redb").exists());

    let mut args = vec!["--seal".to_string(), "pkcs11".into()];
    args.extend(token.pkcs11("wrap-1"));
    let restored = restore(&args);
    assert!(restored.status.success(), "{}", text(&restored));
    assert!(text(&restored).contains(&id), "{}", text(&restored));
    let moved = Token {
        data_dir: elsewhere.clone(),
        ..token
    };
    let mut daemon = moved.start("wrap-1", &[]);
    for n in 0..4 {
        assert_eq!(
            shares(&daemon, &moved.keys, &format!("c{n}")).await,
            [share(n)]
        );
    }
    assert!(daemon.signal("TERM").success());
    let all_logs = logs + &daemon.logs();

    // Everything at rest, and the logs, before the root key is taken out to check them.
    let mut at_rest = vec![std::fs::read(&snap).unwrap(), all_logs.into_bytes()];
    for file in walk(&moved.data_dir) {
        at_rest.push(std::fs::read(&file).unwrap());
    }
    let out = moved.tmp.path().join("keys/root-key-out");
    let mut args = vec!["--to".to_string(), "file".into(), "--master-key-out".into()];
    args.push(out.display().to_string());
    args.extend(moved.pkcs11("wrap-1"));
    moved.seal("migrate", &args);
    let hex_root = std::fs::read_to_string(&out).unwrap().trim().to_owned();
    let mut root = [0u8; 32];
    hex::decode_to_slice(&hex_root, &mut root).unwrap();
    let keys = data_keys(&snap, &root);
    assert_eq!(keys.len(), 4);
    let mut needles = vec![root.to_vec(), hex_root.into_bytes()];
    for key in &keys {
        needles.push(key.to_vec());
        needles.push(hex::encode(key).into_bytes());
    }
    for (i, blob) in at_rest.iter().enumerate() {
        for needle in &needles {
            assert!(
                !found(blob, needle),
                "a key is in clear in item {i} at rest"
            );
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn a_token_lost_while_serving_is_reported_and_the_vault_keeps_serving() {
    let token = Token::new(67);
    token.create_key("wrap-1");
    let daemon = token.start("wrap-1", &["--seal-check-seconds", "1"]);
    put_share(&daemon, &token.keys, "c1", &share(1)).await;
    let api = crate::http_client::Http::plain(&daemon.endpoint);
    let get = |path: &'static str| {
        let api = &api;
        async move {
            let reply = api.send("GET", path, &[], None).await;
            assert_eq!(reply.status, 200, "{path}");
            String::from_utf8_lossy(&reply.body).into_owned()
        }
    };
    assert_eq!(
        get("/readyz").await,
        "{\"status\":\"ready\",\"seal\":\"reachable\"}"
    );
    assert!(
        get("/metrics")
            .await
            .contains("\nsharevault_seal_reachable 1\n")
    );

    // The token's files vanish (as a token pulled out, or an HSM gone from the network).
    let away = token.tmp.path().join("tokens-away");
    std::fs::rename(token.tokens(), &away).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if get("/readyz").await.contains("\"seal\":\"unreachable\"") {
            break;
        }
        assert!(Instant::now() < deadline, "the lost token was not noticed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        get("/metrics")
            .await
            .contains("\nsharevault_seal_reachable 0\n")
    );
    assert!(daemon.logs().contains("the PKCS#11 token is unreachable"));
    // Reads and writes go on from the root key in memory.
    put_share(&daemon, &token.keys, "c2", &share(2)).await;
    assert_eq!(shares(&daemon, &token.keys, "c1").await, [share(1)]);
    assert_eq!(shares(&daemon, &token.keys, "c2").await, [share(2)]);
}

#[tokio::test]
async fn a_rotation_killed_half_way_under_the_token_seal_resumes() {
    let token = Token::new(68);
    token.create_key("wrap-1");
    let mut daemon = token.start("wrap-1", &[]);
    let admin = token.keys.admin_token.clone();
    crate::faults::store_shares(&daemon, &token.keys.webhook_secret).await;
    let old = daemon.status(&admin).await.master_key_id;
    let mut progress = daemon.rekey_stream(&admin, &[]).await;
    let first = progress.next().await.unwrap().unwrap();
    assert!(!first.finished);
    assert!(!daemon.signal("KILL").success());

    // The token unseals both the vault's root key and the rotation's target: every record,
    // under either, opens.
    let mut daemon = token.start("wrap-1", &[]);
    assert!(
        daemon.logs().contains("rotation was interrupted"),
        "{}",
        daemon.logs()
    );
    assert_eq!(daemon.status(&admin).await.master_key_id, old);
    let report = daemon.verify(&admin).await;
    assert_eq!((report.custodian_shares, report.failed), (3_000, 0));
    let last = daemon.rekey(&admin, &[]).await;
    assert!(last.finished);
    assert!(daemon.signal("TERM").success());

    let daemon = token.start("wrap-1", &[]);
    assert_eq!(
        daemon.status(&admin).await.master_key_id,
        last.new_master_key_id
    );
    let report = daemon.verify(&admin).await;
    assert_eq!((report.custodian_shares, report.failed), (3_000, 0));
    assert!(!daemon.logs().contains("rotation was interrupted"));
}

#[tokio::test]
async fn the_pin_comes_from_the_pkcs11_pin_credential_when_no_file_is_given() {
    let token = Token::new(69);
    token.create_key("wrap-1");
    let credentials = token.tmp.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::copy(token.keys.dir.join("pin"), credentials.join("pkcs11-pin")).unwrap();
    let settings = token.pkcs11("wrap-1");
    // The seal and the token's settings, without --pkcs11-pin-file and its value.
    let mut seal = vec!["--seal".to_string(), "pkcs11".into()];
    seal.extend(settings[..settings.len() - 2].iter().cloned());
    let mut args = token.base_args();
    args.extend(seal.iter().cloned());
    let mut cmd = command(&token.data_dir, &args);
    cmd.env("SOFTHSM2_CONF", &token.conf)
        .env("CREDENTIALS_DIRECTORY", &credentials);
    let daemon = ready(Daemon::launch(cmd));
    put_share(&daemon, &token.keys, "c1", &share(1)).await;
    assert_eq!(shares(&daemon, &token.keys, "c1").await, [share(1)]);
    drop(daemon);

    // Without the credential there is no PIN, and the start says where it is looked for.
    let logs = token.refused(&seal);
    assert!(logs.contains("pkcs11-pin systemd credential"), "{logs}");
}

/// A refused start changes no byte of the data dir: not the database file (not even its
/// identity), not its log, and it creates no file. Each start here is refused after the
/// database would have been opened: the wrong seal either way, the wrong master key.
#[tokio::test]
async fn refused_starts_change_no_byte_of_the_data_dir() {
    let token = Token::new(67);
    token.create_key("wrap-1");
    let mut daemon = token.start("wrap-1", &[]);
    put_share(&daemon, &token.keys, "c1", &share(1)).await;
    assert!(daemon.signal("TERM").success());
    let before = crate::harness::dir_digest(&token.data_dir);
    assert!(before.keys().any(|p| p.ends_with("sharevault.redb.log")));

    // The token's vault under the file seal.
    let logs = token.refused(&[
        "--master-key-file".into(),
        token.keys.master_key_file.display().to_string(),
    ]);
    assert!(logs.contains("sealed by the PKCS#11 key"), "{logs}");
    assert_eq!(crate::harness::dir_digest(&token.data_dir), before);
    assert_eq!(
        shares(&token.start("wrap-1", &[]), &token.keys, "c1").await,
        [share(1)]
    );

    // A file-sealed vault under the token seal, and under another master key.
    let file_vault = Token::new(68);
    file_vault.create_key("wrap-1");
    let mut daemon = file_vault.start_file();
    put_share(&daemon, &file_vault.keys, "c2", &share(2)).await;
    assert!(daemon.signal("TERM").success());
    let before = crate::harness::dir_digest(&file_vault.data_dir);
    let mut args = vec!["--seal".to_string(), "pkcs11".into()];
    args.extend(file_vault.pkcs11("wrap-1"));
    let logs = file_vault.refused(&args);
    assert!(logs.contains("is its master key file"), "{logs}");
    assert_eq!(crate::harness::dir_digest(&file_vault.data_dir), before);
    let other = file_vault.keys.dir.join("other-master-key");
    std::fs::write(&other, "ab".repeat(32)).unwrap();
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let logs = file_vault.refused(&["--master-key-file".into(), other.display().to_string()]);
    assert!(
        logs.contains("is not the key this data dir was sealed with"),
        "{logs}"
    );
    assert_eq!(crate::harness::dir_digest(&file_vault.data_dir), before);
    let daemon = file_vault.start_file();
    assert_eq!(shares(&daemon, &file_vault.keys, "c2").await, [share(2)]);
}

/// Two daemons on one PostgreSQL database under the token seal: a rotation through one makes
/// the new root key, and the other unseals it through its own token session before any
/// record is re-wrapped, then seals its writes under it. Restarted, both serve every record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_every_daemon_unseals_a_rotated_root_key_with_its_own_token_session() {
    let token = Token::new(71);
    token.create_key("root");
    let on_pg = crate::harness::Sandbox::on_shared_postgres(71);
    let database = on_pg.database.as_ref().unwrap().args();
    let start = |data_dir: &Path| {
        let mut args = token.base_args();
        args.extend(["--seal".to_string(), "pkcs11".into()]);
        args.extend(token.pkcs11("root"));
        args.extend(database.iter().cloned());
        let mut cmd = command(data_dir, &args);
        cmd.env("SOFTHSM2_CONF", &token.conf);
        ready(Daemon::launch(cmd))
    };
    let dirs = [token.tmp.path().join("a"), token.tmp.path().join("b")];
    let mut daemons = [start(&dirs[0]), start(&dirs[1])];
    let (keys, admin) = (&token.keys, token.keys.admin_token.clone());
    for (i, daemon) in daemons.iter().enumerate() {
        put_share(daemon, keys, &format!("before-{i}"), &share(i as u32)).await;
    }
    let last = daemons[0].rekey(&admin, &[]).await;
    assert!(last.finished, "{last:?}");
    // The other daemon seals under the new root key: every record opens with it alone.
    put_share(&daemons[1], keys, "after-1", &share(7)).await;
    let report = daemons[1].verify(&admin).await;
    assert_eq!(report.failed, 0, "{:?}", report.failures);
    assert_eq!(report.master_key_id, last.new_master_key_id);
    assert!(
        daemons[1]
            .logs()
            .contains("took the new key of a master key rotation"),
        "{}",
        daemons[1].logs()
    );
    for daemon in &mut daemons {
        assert!(daemon.signal("TERM").success());
    }
    let daemons = [start(&dirs[0]), start(&dirs[1])];
    for daemon in &daemons {
        let report = daemon.verify(&admin).await;
        assert_eq!(report.failed, 0, "{:?}", report.failures);
        assert_eq!(report.master_key_id, last.new_master_key_id);
        assert_eq!(shares(daemon, keys, "after-1").await, [share(7)]);
        assert_eq!(shares(daemon, keys, "before-1").await, [share(1)]);
    }
}
