//! The operations, the workers that run them, and their timed loops.

use super::http::Webhook;
use super::payload::{self, CURVES, METHODS, Rng, SHARES_PER_CLIENT};
use anyhow::{Context, anyhow, ensure};
use hyper::StatusCode;
use serde::Deserialize;
use sharevault::pb::backup_service_client::BackupServiceClient;
use sharevault::pb::{GetClientBackupShareRequest, StoreClientBackupShareRequest};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

/// An operation the bench measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Op {
    /// Webhook `POST /backup`: send a random client's custodian share again, the bytes
    /// already stored (as Portal retries): recognised as a repeat, it is compared and audited.
    Backup,
    /// Webhook `POST /backup` of shares never stored before: the backups of new wallets,
    /// each a new record, pair and audit event (under client ids of this run's own).
    #[value(name = "backup-new")]
    BackupNew,
    /// Webhook `POST /backup/fetch`: read all 8 custodian shares of a random client.
    Fetch,
    /// gRPC `StoreClientBackupShare`: overwrite a random client's cipherText.
    Store,
    /// gRPC `GetClientBackupShare`: read a random client's cipherText.
    Get,
    /// Webhook `POST /backup` on one connection, one request at a time.
    #[value(name = "backup-1conn")]
    BackupOneConnection,
    /// Webhook fetches on half the connections while backups run on the other half: does
    /// recovery traffic wait behind a burst of writes?
    #[value(name = "fetch-during-backup")]
    FetchDuringBackup,
}

impl Op {
    pub const ALL: [Op; 7] = [
        Op::Backup,
        Op::BackupNew,
        Op::Fetch,
        Op::Store,
        Op::Get,
        Op::BackupOneConnection,
        Op::FetchDuringBackup,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Op::Backup => "webhook backup",
            Op::BackupNew => "webhook backup, new shares",
            Op::Fetch => "webhook fetch",
            Op::Store => "grpc store client share",
            Op::Get => "grpc get client share",
            Op::BackupOneConnection => "webhook backup, 1 connection",
            Op::FetchDuringBackup => "webhook fetch during backups",
        }
    }

    pub fn connections(self, configured: usize) -> usize {
        match self {
            Op::BackupOneConnection => 1,
            _ => configured,
        }
    }

    fn uses_webhook(self) -> bool {
        matches!(
            self,
            Op::Backup
                | Op::BackupNew
                | Op::Fetch
                | Op::BackupOneConnection
                | Op::FetchDuringBackup
        )
    }

    /// The operations run side by side, with their share of the connections: one, or for
    /// [`Op::FetchDuringBackup`] fetches and backups on half each.
    pub fn parts(self, connections: usize) -> Vec<(Op, usize)> {
        match self {
            Op::FetchDuringBackup => {
                let fetchers = (connections / 2).max(1);
                vec![
                    (Op::Fetch, fetchers),
                    (Op::Backup, connections.saturating_sub(fetchers).max(1)),
                ]
            }
            _ => vec![(self, self.connections(connections))],
        }
    }
}

/// The daemon and the data set the workers address.
pub struct Target {
    pub webhook_addr: SocketAddr,
    pub grpc_endpoint: String,
    pub webhook_secret: String,
    pub token: String,
    pub clients: u32,
    pub share_bytes: usize,
    /// A prefix of this run's own for [`Op::BackupNew`]'s client ids.
    pub fresh_prefix: String,
    /// [`Op::BackupNew`]'s shares sent so far: client `n / 8`, share `n % 8`.
    pub fresh: std::sync::atomic::AtomicU64,
}

/// One connection's worth of load: a webhook connection and a gRPC channel, opened on use.
struct Worker {
    target: Arc<Target>,
    webhook: Webhook,
    grpc: Option<BackupServiceClient<Channel>>,
    auth: MetadataValue<Ascii>,
    rng: Rng,
}

#[derive(Deserialize)]
struct Stored {
    #[serde(rename = "backupSharePairId")]
    pair: String,
}

#[derive(Deserialize)]
struct Fetched {
    #[serde(rename = "backupShares")]
    shares: Vec<String>,
}

fn grpc_error(status: tonic::Status) -> anyhow::Error {
    anyhow!("{:?}: {}", status.code(), status.message())
}

impl Worker {
    fn new(target: Arc<Target>, seed: u64) -> anyhow::Result<Self> {
        Ok(Self {
            webhook: Webhook::new(target.webhook_addr, &target.webhook_secret)?,
            auth: format!("Bearer {}", target.token)
                .parse()
                .context("token is not valid metadata")?,
            grpc: None,
            rng: Rng::new(seed),
            target,
        })
    }

    async fn grpc(&mut self) -> anyhow::Result<&mut BackupServiceClient<Channel>> {
        if self.grpc.is_none() {
            let channel = Channel::from_shared(self.target.grpc_endpoint.clone())?
                .tcp_nodelay(true)
                .connect()
                .await
                .context("gRPC connect")?;
            self.grpc = Some(BackupServiceClient::new(channel));
        }
        self.grpc.as_mut().context("no gRPC channel")
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.auth.clone());
        request
    }

    /// Opens the connection `op` uses, so that connecting is not timed.
    async fn warm(&mut self, op: Op) -> anyhow::Result<()> {
        if op.uses_webhook() {
            self.webhook.connect().await?;
        } else {
            self.grpc().await?;
        }
        Ok(())
    }

    async fn call(&mut self, op: Op) -> anyhow::Result<()> {
        let client = self.rng.below(self.target.clients as usize) as u32;
        let method = self.rng.below(METHODS.len());
        match op {
            Op::Backup | Op::BackupOneConnection => {
                let curve = self.rng.below(CURVES.len());
                self.backup(client, method, curve).await
            }
            Op::BackupNew => {
                let n = self
                    .target
                    .fresh
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let client = u32::try_from(n / SHARES_PER_CLIENT as u64)?;
                let share = n as usize % SHARES_PER_CLIENT;
                let id = format!("{}-{client:07}", self.target.fresh_prefix);
                let (method, curve) = (share / CURVES.len(), share % CURVES.len());
                self.send_backup(&id, client, method, curve).await
            }
            Op::Fetch | Op::FetchDuringBackup => self.fetch(client).await,
            Op::Store => self.store(client, method).await,
            Op::Get => self.get(client, method).await,
        }
    }

    async fn backup(&mut self, client: u32, method: usize, curve: usize) -> anyhow::Result<()> {
        self.send_backup(&payload::client_id(client), client, method, curve)
            .await
    }

    /// Sends share (`client`, `method`, `curve`) under the client id `id`.
    async fn send_backup(
        &mut self,
        id: &str,
        client: u32,
        method: usize,
        curve: usize,
    ) -> anyhow::Result<()> {
        let body = serde_json::to_vec(&serde_json::json!({
            "clientId": id,
            "backupMethod": payload::custodian_method(method, curve),
            "share": payload::share(client, method, curve, self.target.share_bytes),
        }))?;
        let (code, answer) = self.webhook.post("/backup", body).await?;
        ensure!(
            code == StatusCode::OK,
            "backup: HTTP {code}: {}",
            String::from_utf8_lossy(&answer)
        );
        let stored: Stored = serde_json::from_slice(&answer).context("backup answer")?;
        let expected = payload::pair_id(client, method, curve);
        ensure!(stored.pair == expected, "backup: pair id {}", stored.pair);
        Ok(())
    }

    async fn fetch(&mut self, client: u32) -> anyhow::Result<()> {
        let id = payload::client_id(client);
        let body = serde_json::to_vec(&serde_json::json!({ "clientId": id }))?;
        let (code, answer) = self.webhook.post("/backup/fetch", body).await?;
        ensure!(
            code == StatusCode::OK,
            "fetch {id}: HTTP {code}: {}",
            String::from_utf8_lossy(&answer)
        );
        let mut got = serde_json::from_slice::<Fetched>(&answer)
            .context("fetch answer")?
            .shares;
        ensure!(
            got.len() == SHARES_PER_CLIENT,
            "fetch {id}: {} shares, expected {SHARES_PER_CLIENT}",
            got.len()
        );
        let mut expected: Vec<String> = (0..METHODS.len())
            .flat_map(|m| (0..CURVES.len()).map(move |c| (m, c)))
            .map(|(m, c)| payload::share(client, m, c, self.target.share_bytes))
            .collect();
        got.sort_unstable();
        expected.sort_unstable();
        ensure!(got == expected, "fetch {id}: the shares differ");
        Ok(())
    }

    async fn store(&mut self, client: u32, method: usize) -> anyhow::Result<()> {
        let request = self.request(StoreClientBackupShareRequest {
            client_id: payload::client_id(client),
            backup_method: METHODS[method].into(),
            cipher_text: payload::cipher_text(client, method),
        });
        self.grpc()
            .await?
            .store_client_backup_share(request)
            .await
            .map_err(grpc_error)?;
        Ok(())
    }

    async fn get(&mut self, client: u32, method: usize) -> anyhow::Result<()> {
        let request = self.request(GetClientBackupShareRequest {
            client_id: payload::client_id(client),
            backup_method: METHODS[method].into(),
            backup_share_pair_id: String::new(),
        });
        let answer = self
            .grpc()
            .await?
            .get_client_backup_share(request)
            .await
            .map_err(grpc_error)?
            .into_inner();
        ensure!(
            answer.backup_method == METHODS[method],
            "get: backup method {}",
            answer.backup_method
        );
        ensure!(
            answer.cipher_text == payload::cipher_text(client, method),
            "get {}/{}: the cipherText differs",
            payload::client_id(client),
            METHODS[method]
        );
        Ok(())
    }
}

/// How many error messages each worker keeps.
const KEPT_ERRORS: usize = 3;

/// What a run produced.
#[derive(Default)]
pub struct Outcome {
    pub requests: u64,
    pub errors: u64,
    /// Latency of every request, in microseconds, sorted once merged.
    pub latencies_us: Vec<u32>,
    pub first_errors: Vec<String>,
    pub elapsed: Duration,
}

impl Outcome {
    fn record(&mut self, started: Instant, result: anyhow::Result<()>) {
        let micros = started.elapsed().as_micros();
        self.latencies_us
            .push(u32::try_from(micros).unwrap_or(u32::MAX));
        self.requests += 1;
        if let Err(err) = result {
            self.errors += 1;
            if self.first_errors.len() < KEPT_ERRORS {
                self.first_errors.push(format!("{err:#}"));
            }
        }
    }

    fn merge(&mut self, other: Outcome) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.latencies_us.extend(other.latencies_us);
        self.first_errors.extend(other.first_errors);
    }
}

async fn warm_workers(target: &Arc<Target>, op: Op, count: usize) -> anyhow::Result<Vec<Worker>> {
    let mut workers = Vec::with_capacity(count);
    for i in 0..count {
        let mut worker = Worker::new(Arc::clone(target), ((op as u64) << 32) | i as u64)?;
        worker.warm(op).await?;
        workers.push(worker);
    }
    Ok(workers)
}

async fn join(
    mut tasks: tokio::task::JoinSet<Outcome>,
    started: Instant,
) -> anyhow::Result<Outcome> {
    let mut total = Outcome::default();
    while let Some(part) = tasks.join_next().await {
        total.merge(part?);
    }
    total.elapsed = started.elapsed();
    total.latencies_us.sort_unstable();
    Ok(total)
}

/// Runs each `(op, connections)` part at the same time, each on its own workers, until
/// `duration` has passed or each part sent `max_requests`; one outcome per part.
pub async fn run(
    target: &Arc<Target>,
    parts: &[(Op, usize)],
    duration: Duration,
    max_requests: u64,
) -> anyhow::Result<Vec<Outcome>> {
    let mut warmed = Vec::with_capacity(parts.len());
    for &(op, connections) in parts {
        warmed.push((op, warm_workers(target, op, connections).await?));
    }
    let started = Instant::now();
    let deadline = started + duration;
    let mut sets = Vec::with_capacity(parts.len());
    for (op, workers) in warmed {
        let per_worker = max_requests.div_ceil(workers.len() as u64);
        let mut tasks = tokio::task::JoinSet::new();
        for mut worker in workers {
            tasks.spawn(async move {
                let mut part = Outcome::default();
                while part.requests < per_worker && Instant::now() < deadline {
                    let sent = Instant::now();
                    let result = worker.call(op).await;
                    part.record(sent, result);
                }
                part
            });
        }
        sets.push(tasks);
    }
    let mut outcomes = Vec::with_capacity(sets.len());
    for tasks in sets {
        outcomes.push(join(tasks, started).await?);
    }
    Ok(outcomes)
}

/// Stores every client's 8 custodian shares (webhook) and 4 client shares (gRPC).
pub async fn populate(target: &Arc<Target>, connections: usize) -> anyhow::Result<Outcome> {
    let next = Arc::new(AtomicU32::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..connections {
        let mut worker = Worker::new(Arc::clone(target), i as u64)?;
        let next = Arc::clone(&next);
        tasks.spawn(async move {
            let mut part = Outcome::default();
            loop {
                let client = next.fetch_add(1, Ordering::Relaxed);
                if client >= worker.target.clients {
                    break part;
                }
                for method in 0..METHODS.len() {
                    for curve in 0..CURVES.len() {
                        let sent = Instant::now();
                        let result = worker.backup(client, method, curve).await;
                        part.record(sent, result);
                    }
                    let sent = Instant::now();
                    let result = worker.store(client, method).await;
                    part.record(sent, result);
                }
            }
        });
    }
    join(tasks, started).await
}
