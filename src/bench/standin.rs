//! `sharevault bench --stand-in`: a stand-in for the daemon that keeps every share in memory
//! and answers at once. It serves the same wire (Portal's webhook and the gRPC calls the
//! bench drives) over the same connection stack, with the same runtime, but nothing is
//! sealed, written or fsynced, no audit event is kept and no call is logged. Its figures are
//! the ceiling of this machine, HTTP stack and load generator: what sharevault would reach if
//! the vault cost nothing.

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header::CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use sharevault::api::http::jsonout;
use sharevault::config::{ListenAddr, ListenerLimits};
use sharevault::pb;
use sharevault::pb::backup_service_server::{BackupService, BackupServiceServer};
use sharevault::server::{self as net, Listener};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// The settings of the stand-in, which the bench starts as a child process.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The file holding the secret Portal sends in `X-Webhook-Secret`.
    #[arg(long, value_name = "FILE")]
    webhook_secret_file: PathBuf,
}

/// Everything stored, in memory.
#[derive(Default)]
struct Memory {
    /// Custodian shares by client, then by `METHOD-CURVE`.
    custodian: RwLock<HashMap<String, HashMap<String, String>>>,
    /// Client cipherTexts by client and method.
    client: RwLock<HashMap<(String, String), String>>,
}

#[derive(Clone)]
struct Shared {
    memory: Arc<Memory>,
    secret: Arc<[u8]>,
}

/// Serves until SIGTERM or SIGINT; logs the bound addresses and readiness as the daemon does.
pub fn run(args: Args) -> anyhow::Result<()> {
    let secret = std::fs::read_to_string(&args.webhook_secret_file)
        .with_context(|| format!("cannot read {}", args.webhook_secret_file.display()))?;
    let shared = Shared {
        memory: Arc::default(),
        secret: Arc::from(secret.trim().as_bytes()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(serve(shared))
}

async fn serve(shared: Shared) -> anyhow::Result<()> {
    let loopback = ListenAddr::Tcp(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let grpc = Listener::bind(&loopback).await?;
    let http = Listener::bind(&loopback).await?;
    eprintln!("grpc listener bound addr={}", grpc.describe());
    eprintln!("webhook listener bound addr={}", http.describe());

    let mut routes = tonic::service::Routes::builder();
    routes.add_service(BackupServiceServer::new(shared.clone()));
    let grpc_app = routes.routes().prepare().into_axum_router();
    let webhook_app = Router::new()
        .route("/backup", post(backup))
        .route("/backup/fetch", post(fetch))
        .with_state(shared);

    let admission = net::Admission {
        limits: ListenerLimits {
            max_connections: 1024,
            max_connections_per_source: 1024,
            max_in_flight: 1024,
            connection_idle: std::time::Duration::from_secs(60),
        },
        trusted_proxies: std::sync::Arc::default(),
        metrics: Default::default(),
        allow: None,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let servers = [
        tokio::spawn(net::serve(
            grpc,
            grpc_app,
            None,
            false,
            admission.clone(),
            stop_rx.clone(),
        )),
        tokio::spawn(net::serve(
            http,
            webhook_app,
            None,
            false,
            admission,
            stop_rx,
        )),
    ];
    eprintln!("sharevault is ready (stand-in)");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let _ = stop_tx.send(true);
    for server in servers {
        server.await?;
    }
    Ok(())
}

fn answer(code: StatusCode, body: Vec<u8>) -> Response {
    (code, [(CONTENT_TYPE, "application/json")], body).into_response()
}

fn refused(code: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({"error": message});
    answer(code, serde_json::to_vec(&body).unwrap_or_default())
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    headers
        .get("x-webhook-secret")
        .is_some_and(|v| bool::from(v.as_bytes().ct_eq(&shared.secret)))
}

#[derive(Deserialize)]
struct BackupBody {
    #[serde(rename = "clientId")]
    client_id: String,
    #[serde(rename = "backupMethod")]
    backup_method: String,
    share: String,
}

#[derive(Deserialize)]
struct SharePairId {
    #[serde(rename = "backupSharePairId")]
    pair: Option<String>,
}

async fn backup(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&shared, &headers) {
        return refused(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let Ok(request) = serde_json::from_slice::<BackupBody>(&body) else {
        return refused(StatusCode::BAD_REQUEST, "invalid body");
    };
    let pair = serde_json::from_str::<SharePairId>(&request.share)
        .ok()
        .and_then(|p| p.pair);
    if let Ok(mut custodian) = shared.memory.custodian.write() {
        custodian
            .entry(request.client_id)
            .or_default()
            .insert(request.backup_method, request.share);
    }
    let mut body = serde_json::json!({"message": "backup share stored"});
    if let Some(pair) = pair {
        body["backupSharePairId"] = pair.into();
    }
    answer(
        StatusCode::OK,
        serde_json::to_vec(&body).unwrap_or_default(),
    )
}

#[derive(Deserialize)]
struct FetchBody {
    #[serde(rename = "clientId")]
    client_id: String,
}

async fn fetch(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&shared, &headers) {
        return refused(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let Ok(request) = serde_json::from_slice::<FetchBody>(&body) else {
        return refused(StatusCode::BAD_REQUEST, "invalid body");
    };
    let Ok(custodian) = shared.memory.custodian.read() else {
        return refused(StatusCode::INTERNAL_SERVER_ERROR, "poisoned");
    };
    let Some(shares) = custodian.get(&request.client_id) else {
        return refused(StatusCode::NOT_FOUND, "no backup share for this client");
    };
    let items: Vec<&str> = shares.values().map(String::as_str).collect();
    answer(
        StatusCode::OK,
        jsonout::object_of_strings("backupShares", &items, &[]),
    )
}

#[tonic::async_trait]
impl BackupService for Shared {
    async fn store_client_backup_share(
        &self,
        request: Request<pb::StoreClientBackupShareRequest>,
    ) -> Result<tonic::Response<pb::StoreClientBackupShareResponse>, Status> {
        let mut req = request.into_inner();
        let key = (
            std::mem::take(&mut req.client_id),
            std::mem::take(&mut req.backup_method),
        );
        self.memory
            .client
            .write()
            .map_err(|_| Status::internal("poisoned"))?
            .insert(key, std::mem::take(&mut req.cipher_text));
        Ok(tonic::Response::new(
            pb::StoreClientBackupShareResponse::default(),
        ))
    }

    async fn get_client_backup_share(
        &self,
        request: Request<pb::GetClientBackupShareRequest>,
    ) -> Result<tonic::Response<pb::GetClientBackupShareResponse>, Status> {
        let req = request.into_inner();
        let client = self
            .memory
            .client
            .read()
            .map_err(|_| Status::internal("poisoned"))?;
        let cipher_text = client
            .get(&(req.client_id, req.backup_method.clone()))
            .ok_or_else(|| Status::not_found("no client backup share"))?;
        Ok(tonic::Response::new(pb::GetClientBackupShareResponse {
            cipher_text: cipher_text.clone(),
            created_at: None,
            backup_method: req.backup_method,
            backup_share_pair_ids: Vec::new(),
        }))
    }

    async fn list_client_backup_shares(
        &self,
        _: Request<pb::ListClientBackupSharesRequest>,
    ) -> Result<tonic::Response<pb::ListClientBackupSharesResponse>, Status> {
        Err(Status::unimplemented("not in the stand-in"))
    }

    async fn delete_client_backup_share(
        &self,
        _: Request<pb::DeleteClientBackupShareRequest>,
    ) -> Result<tonic::Response<pb::DeleteClientBackupShareResponse>, Status> {
        Err(Status::unimplemented("not in the stand-in"))
    }

    async fn list_backups(
        &self,
        _: Request<pb::ListBackupsRequest>,
    ) -> Result<tonic::Response<pb::ListBackupsResponse>, Status> {
        Err(Status::unimplemented("not in the stand-in"))
    }

    async fn get_custodian_backup_share(
        &self,
        _: Request<pb::GetCustodianBackupShareRequest>,
    ) -> Result<tonic::Response<pb::GetCustodianBackupShareResponse>, Status> {
        Err(Status::unimplemented("not in the stand-in"))
    }

    async fn list_backup_share_pairs(
        &self,
        _: Request<pb::ListBackupSharePairsRequest>,
    ) -> Result<tonic::Response<pb::ListBackupSharePairsResponse>, Status> {
        Err(Status::unimplemented("not in the stand-in"))
    }

    async fn update_backup_share_pairs(
        &self,
        _: Request<pb::UpdateBackupSharePairsRequest>,
    ) -> Result<tonic::Response<pb::UpdateBackupSharePairsResponse>, Status> {
        Err(Status::unimplemented("not in the stand-in"))
    }

    async fn delete_client(
        &self,
        _: Request<pb::DeleteClientRequest>,
    ) -> Result<tonic::Response<pb::DeleteClientResponse>, Status> {
        Err(Status::unimplemented("not in the stand-in"))
    }
}
