//! Wiring: listeners, services, health, reflection and the daemon's lifecycle.
//!
//! [`run`] takes listeners that are already bound and a shutdown future. Health answers
//! NOT_SERVING until the database is open and the master key verified, then SERVING (overall
//! and per service), and systemd is told `READY=1`. When `shutdown` resolves the daemon stops
//! accepting, drains in-flight calls for the grace period, and closes the database cleanly.

use crate::grpc::{Ready, admin::AdminApi, backup::BackupApi, webhook::WebhookApi};
use crate::pb::admin_service_server::AdminServiceServer;
use crate::pb::backup_service_server::BackupServiceServer;
use crate::pb::webhook_service_server::WebhookServiceServer;
use crate::secrets::{DATABASE_FILE, Secrets};
use crate::store::redb::RedbStore;
use crate::validate::Limits;
use crate::vault::{Credentials, Vault};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tonic::server::NamedService;
use tonic_health::ServingStatus;

/// A bound listener.
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, PathBuf),
}

impl Listener {
    /// Binds `addr`. A stale Unix socket file is replaced.
    pub async fn bind(addr: &crate::config::ListenAddr) -> std::io::Result<Self> {
        match addr {
            crate::config::ListenAddr::Tcp(addr) => {
                Ok(Listener::Tcp(tokio::net::TcpListener::bind(addr).await?))
            }
            crate::config::ListenAddr::Unix(path) => {
                if path.exists() {
                    std::fs::remove_file(path)?;
                }
                let listener = tokio::net::UnixListener::bind(path)?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
                Ok(Listener::Unix(listener, path.clone()))
            }
        }
    }

    /// Where the listener is bound, for logs.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "tcp".into()),
            Listener::Unix(_, path) => format!("unix:{}", path.display()),
        }
    }
}

/// What the daemon runs with, once configuration and secrets are loaded.
pub struct Settings {
    pub data_dir: PathBuf,
    pub secrets: Secrets,
    pub limits: Limits,
    pub shutdown_grace: Duration,
}

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Open(#[from] crate::vault::OpenError),
    #[error("cannot build the reflection service: {0}")]
    Reflection(String),
    #[error("the server task failed: {0}")]
    Task(String),
}

const SERVICES: [&str; 3] = [
    <WebhookServiceServer<WebhookApi> as NamedService>::NAME,
    <BackupServiceServer<BackupApi> as NamedService>::NAME,
    <AdminServiceServer<AdminApi> as NamedService>::NAME,
];

async fn set_health(reporter: &tonic_health::server::HealthReporter, status: ServingStatus) {
    for name in std::iter::once("").chain(SERVICES) {
        reporter.set_service_status(name, status).await;
    }
}

fn router(
    ready: &Ready,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
) -> Result<axum::Router, ServeError> {
    // Reflection describes our services, health and reflection itself, in both versions
    // (grpcurl 1.8 speaks only v1alpha).
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
    };
    let v1 = reflection()
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let mut routes = tonic::service::Routes::builder();
    routes
        .add_service(health)
        .add_service(v1)
        .add_service(v1alpha)
        .add_service(WebhookServiceServer::new(WebhookApi {
            ready: ready.clone(),
        }))
        .add_service(BackupServiceServer::new(BackupApi {
            ready: ready.clone(),
        }))
        .add_service(AdminServiceServer::new(AdminApi {
            ready: ready.clone(),
        }));
    Ok(routes.routes().prepare().into_axum_router())
}

async fn serve(
    listener: Listener,
    router: axum::Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    match listener {
        Listener::Tcp(l) => axum::serve(l, router).with_graceful_shutdown(stopped).await,
        Listener::Unix(l, path) => {
            let result = axum::serve(l, router).with_graceful_shutdown(stopped).await;
            let _ = std::fs::remove_file(path);
            result
        }
    }
}

fn notify(state: sd_notify::NotifyState<'_>) {
    if let Err(err) = sd_notify::notify(false, &[state]) {
        tracing::warn!(error = %err, "cannot notify systemd");
    }
}

/// Runs the daemon on `grpc` until `shutdown` resolves.
pub async fn run(
    grpc: Listener,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    set_health(&reporter, ServingStatus::NotServing).await;
    let ready = Ready::default();
    let router = router(&ready, health)?;

    tracing::info!(addr = %grpc.describe(), "grpc listener bound");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut server = tokio::spawn(serve(grpc, router, stop_rx));

    let path = settings.data_dir.join(DATABASE_FILE);
    let store = tokio::task::spawn_blocking(move || RedbStore::open(&path))
        .await
        .map_err(|e| ServeError::Task(e.to_string()))?
        .map_err(crate::vault::OpenError::Store);
    let opened = match store {
        Ok(store) => {
            Vault::open(
                Arc::new(store),
                settings.secrets.master_key,
                settings.limits,
                Credentials {
                    webhook: settings.secrets.webhook,
                    admin_token: settings.secrets.admin_token,
                },
            )
            .await
        }
        Err(err) => Err(err),
    };
    let vault = match opened {
        Ok(vault) => Arc::new(vault),
        Err(err) => {
            let _ = stop_tx.send(true);
            let _ = server.await;
            return Err(err.into());
        }
    };
    ready.set(Arc::clone(&vault));
    set_health(&reporter, ServingStatus::Serving).await;
    notify(sd_notify::NotifyState::Ready);
    tracing::info!(master_key_id = %vault.key_id(), "sharevault is ready");

    tokio::select! {
        () = shutdown => {}
        result = &mut server => {
            vault.close();
            return Err(ServeError::Task(match result {
                Ok(Ok(())) => "the listener closed".into(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            }));
        }
    }
    tracing::info!("shutting down: draining in-flight calls");
    notify(sd_notify::NotifyState::Stopping);
    set_health(&reporter, ServingStatus::NotServing).await;
    let _ = stop_tx.send(true);
    match tokio::time::timeout(settings.shutdown_grace, &mut server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => tracing::warn!(error = %err, "listener error during shutdown"),
        Ok(Err(err)) => tracing::warn!(error = %err, "server task failed during shutdown"),
        Err(_) => {
            tracing::warn!("grace period over; closing the remaining connections");
            server.abort();
        }
    }
    vault.close();
    tracing::info!("database closed; bye");
    Ok(())
}
