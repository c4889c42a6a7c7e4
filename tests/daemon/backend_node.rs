//! examples/backend-node, the company's half of the integration, against a real daemon: its npm
//! packages installed from its lockfile (`npm ci`), its typed client checked against
//! docs/openapi.json and compiled, then Portal's webhook calls replayed on the daemon and the
//! app's calls made through the Express backend, through a backup, a recovery, a second backup
//! and an eject.

use crate::harness::Sandbox;
use crate::http_client::{Http, Reply};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

const INSTALL_NODE: &str = "Node.js 18+ and npm are needed: apt-get install nodejs npm (Debian; \
     scripts/test installs them), then run the tests again";

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/backend-node")
}

/// Runs `npm ARGS` in the example, which must succeed.
fn npm(args: &[&str]) {
    let out = match Command::new("npm")
        .args(args)
        .current_dir(example())
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => out,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => panic!("{INSTALL_NODE}"),
        Err(err) => panic!("cannot run npm: {err}"),
    };
    assert!(
        out.status.success(),
        "npm {args:?} failed in examples/backend-node:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The example backend, running; killed when dropped.
struct Backend {
    child: Child,
    http: Http,
    output: Arc<Mutex<String>>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Backend {
    fn start(vault: &str, token_file: &Path, eject_token_file: &Path, users: &Value) -> Self {
        let mut child = match Command::new("node")
            .arg("dist/server.js")
            .current_dir(example())
            .env("SHAREVAULT_URL", vault)
            .env("SHAREVAULT_TOKEN_FILE", token_file)
            .env("SHAREVAULT_EJECT_TOKEN_FILE", eject_token_file)
            .env("BACKEND_USERS", users.to_string())
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => panic!("{INSTALL_NODE}"),
            Err(err) => panic!("cannot run node: {err}"),
        };
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for (stream, tx) in [
            (Box::new(stdout) as Box<dyn std::io::Read + Send>, Some(tx)),
            (Box::new(stderr), None),
        ] {
            let sink = Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if let (Some(addr), Some(tx)) =
                        (line.strip_prefix("backend listening on http://"), &tx)
                    {
                        let _ = tx.send(addr.to_owned());
                    }
                    let mut all = sink.lock().unwrap();
                    all.push_str(&line);
                    all.push('\n');
                }
            });
        }
        let addr = rx
            .recv_timeout(crate::harness::STARTUP_TIMEOUT)
            .unwrap_or_else(|_| {
                panic!(
                    "the example backend did not start:\n{}",
                    output.lock().unwrap()
                )
            });
        Self {
            child,
            http: Http::plain(&addr),
            output,
        }
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        self.http.post_json(path, &[], &body).await
    }

    async fn get(&self, path: &str) -> Reply {
        self.http.send("GET", path, &[], None).await
    }

    /// The app's recovery read: the cipherText for `method`, for the pair `pair` if given.
    async fn cipher_text(&self, user: &str, method: &str, pair: Option<&str>) -> Reply {
        let mut path = format!("/users/{user}/encrypted-user-backup-shares?backupMethod={method}");
        if let Some(pair) = pair {
            path.push_str(&format!("&backupSharePairId={pair}"));
        }
        self.get(&path).await
    }
}

/// Portal's side: its webhook calls to the daemon's public listener, with the secret.
struct Portal {
    hook: Http,
    secret: String,
}

impl Portal {
    /// `POST /backup` then, as Portal does at once, `POST /backup/fetch`; answers the fetch.
    async fn backup(&self, client: &str, method: &str, pair: &str, key: &str) -> Vec<String> {
        let share = json!({"backupSharePairId": pair, "share": key}).to_string();
        let headers = [("x-webhook-secret", self.secret.as_str())];
        let body = json!({"clientId": client, "backupMethod": method, "share": share});
        let stored = self.hook.post_json("/backup", &headers, &body).await;
        assert_eq!(
            stored.status,
            200,
            "{}",
            String::from_utf8_lossy(&stored.body)
        );
        let fetched = self.fetch(client).await;
        assert!(
            fetched.contains(&share),
            "/backup/fetch lacks the share just stored"
        );
        fetched
    }

    async fn fetch(&self, client: &str) -> Vec<String> {
        let headers = [("x-webhook-secret", self.secret.as_str())];
        let body = json!({"clientId": client});
        let reply = self.hook.post_json("/backup/fetch", &headers, &body).await;
        assert_eq!(reply.status, 200);
        serde_json::from_value(reply.json()["backupShares"].clone()).unwrap()
    }
}

/// The pair ids of the shares a fetch answered.
fn pairs(shares: &[String]) -> Vec<String> {
    shares
        .iter()
        .map(|s| {
            let share: Value = serde_json::from_str(s).unwrap();
            share["backupSharePairId"].as_str().unwrap().to_owned()
        })
        .collect()
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort_unstable();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_backend_stores_the_cipher_text_and_serves_recovery_and_eject() {
    // The example as a user gets it: its locked packages, its generated client checked
    // against the document, compiled.
    npm(&["ci", "--no-audit", "--no-fund", "--prefer-offline"]);
    npm(&["run", "--silent", "check-generated"]);
    npm(&["run", "--silent", "build"]);

    let sandbox = Sandbox::new(71);
    let daemon = sandbox.start();
    let (backend_token, eject_token) = sandbox.backend_and_eject_tokens(&daemon).await;
    let token_file = sandbox.tmp.path().join("backend-token");
    let eject_file = sandbox.tmp.path().join("eject-token");
    std::fs::write(&token_file, format!("{backend_token}\n")).unwrap();
    std::fs::write(&eject_file, format!("{eject_token}\n")).unwrap();
    let users = json!({"alice": "clx-alice-0001"});
    let backend = Backend::start(&daemon.endpoint, &token_file, &eject_file, &users);
    let portal = Portal {
        hook: Http::plain(daemon.webhook_addr.as_deref().unwrap()),
        secret: sandbox.keys.webhook_secret.clone(),
    };
    let client = "clx-alice-0001";

    // Backup A: Portal pushes both curves' custodian shares; the app hands the backend its
    // cipherText, which completes both pairs.
    portal
        .backup(client, "PASSWORD-SECP256K1", "pair-a1", "key-a1")
        .await;
    portal
        .backup(client, "PASSWORD-ED25519", "pair-a2", "key-a2")
        .await;
    let stored = backend
        .post(
            "/users/alice/user-backup-shares",
            json!({"backupMethod": "PASSWORD", "cipherText": "cipher-text-A"}),
        )
        .await;
    assert_eq!(
        stored.status,
        200,
        "{}",
        String::from_utf8_lossy(&stored.body)
    );
    let completed: Vec<String> =
        serde_json::from_value(stored.json()["completedBackupSharePairIds"].clone()).unwrap();
    assert_eq!(sorted(completed), ["pair-a1", "pair-a2"]);

    // Recovery of A: Portal fetches the custodian shares, the app the cipherText, by method
    // and by the pair id the device recovers.
    assert_eq!(
        sorted(pairs(&portal.fetch(client).await)),
        ["pair-a1", "pair-a2"]
    );
    let by_method = backend.cipher_text("alice", "PASSWORD", None).await;
    assert_eq!(by_method.status, 200);
    assert_eq!(by_method.json()["cipherText"], "cipher-text-A");
    let by_pair = backend
        .cipher_text("alice", "PASSWORD", Some("pair-a1"))
        .await;
    assert_eq!(by_pair.json()["cipherText"], "cipher-text-A");

    // Backup B: its custodian shares arrive, its cipherText not yet. The fetch answers B and
    // the completed A; A's pair still gets A's cipherText, B's pair none (never A's).
    portal
        .backup(client, "PASSWORD-SECP256K1", "pair-b1", "key-b1")
        .await;
    let fetched = portal
        .backup(client, "PASSWORD-ED25519", "pair-b2", "key-b2")
        .await;
    assert_eq!(
        sorted(pairs(&fetched)),
        ["pair-a1", "pair-a2", "pair-b1", "pair-b2"]
    );
    let a = backend
        .cipher_text("alice", "PASSWORD", Some("pair-a2"))
        .await;
    assert_eq!(a.json()["cipherText"], "cipher-text-A");
    let b = backend
        .cipher_text("alice", "PASSWORD", Some("pair-b1"))
        .await;
    assert_eq!(b.status, 404, "B's pair was given A's cipherText");

    // B's cipherText, posted as Portal's React Native guide posts it ({data: {...}}).
    let stored = backend
        .post(
            "/users/alice/user-backup-shares",
            json!({"data": {"backupMethod": "PASSWORD", "cipherText": "cipher-text-B"}}),
        )
        .await;
    assert_eq!(stored.status, 200);
    // The fetch answers B, then A, kept: Portal completes B only when the app tells it so,
    // and until then recovers A.
    assert_eq!(
        sorted(pairs(&portal.fetch(client).await)),
        ["pair-a1", "pair-a2", "pair-b1", "pair-b2"]
    );
    let b = backend
        .cipher_text("alice", "PASSWORD", Some("pair-b1"))
        .await;
    assert_eq!(b.json()["cipherText"], "cipher-text-B");
    // A's pair still gets A's kept cipherText, never B's.
    let a = backend
        .cipher_text("alice", "PASSWORD", Some("pair-a1"))
        .await;
    assert_eq!(a.json()["cipherText"], "cipher-text-A");
    // A pair of another method is not this method's.
    let other = backend
        .cipher_text("alice", "GDRIVE", Some("pair-a1"))
        .await;
    assert_eq!(other.status, 404);

    // The Enclave flow: one ciphertext per curve, stored under METHOD-CURVE.
    portal
        .backup(client, "CUSTOM-SECP256K1", "pair-c1", "key-c1")
        .await;
    portal
        .backup(client, "CUSTOM-ED25519", "pair-c2", "key-c2")
        .await;
    let stored = backend
        .post(
            "/users/alice/user-backup-shares",
            json!({"backupMethod": "CUSTOM", "secp256k1Ciphertext": "c-secp", "ed25519Ciphertext": "c-ed"}),
        )
        .await;
    let completed: Vec<String> =
        serde_json::from_value(stored.json()["completedBackupSharePairIds"].clone()).unwrap();
    assert_eq!(sorted(completed), ["pair-c1", "pair-c2"]);
    let ed = backend
        .cipher_text("alice", "CUSTOM-ED25519", Some("pair-c2"))
        .await;
    assert_eq!(ed.json()["cipherText"], "c-ed");

    // Eject: the custodian share, byte for byte.
    let eject = backend
        .get("/users/alice/custodian-backup-shares?backupMethod=PASSWORD-SECP256K1")
        .await;
    assert_eq!(eject.status, 200);
    assert_eq!(
        eject.json()["orgShare"],
        json!({"backupSharePairId": "pair-b1", "share": "key-b1"}).to_string()
    );

    // What the app gets wrong is refused, and an unknown user is not found.
    let bad = backend
        .post(
            "/users/alice/user-backup-shares",
            json!({"backupMethod": "PASSWORD"}),
        )
        .await;
    assert_eq!(bad.status, 400);
    let bad = backend.cipher_text("alice", "PASS%20WORD", None).await;
    assert_eq!(bad.status, 400);
    let nobody = backend.cipher_text("bob", "PASSWORD", None).await;
    assert_eq!(nobody.status, 404);
    let none = backend.cipher_text("alice", "GDRIVE", None).await;
    assert_eq!(none.status, 404);

    // Neither the backend nor the daemon logged a cipherText or a share.
    let logs = format!("{}{}", backend.output.lock().unwrap(), daemon.logs());
    for secret in ["cipher-text-A", "cipher-text-B", "c-secp", "key-b1"] {
        assert!(!logs.contains(secret), "{secret} is in the logs:\n{logs}");
    }
}
