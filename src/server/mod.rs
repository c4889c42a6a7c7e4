//! Wiring: listeners, services, health, reflection and the daemon's lifecycle.
//!
//! [`run`] takes listeners that are already bound and a shutdown future. Health answers
//! NOT_SERVING until the database is open and the master key verified, then SERVING (overall
//! and per service), and systemd is told `READY=1`. When `shutdown` resolves the daemon stops
//! accepting, drains in-flight calls for the grace period, and closes the database cleanly.

use crate::config::Config;
mod connection;
mod listen;
mod pruner;
mod reload;
mod tls;

pub use connection::{Admission, AllowAtAccept, App, HEADER_TIMEOUT, MAX_HEADER_BYTES, serve};
pub use listen::Listener;
pub use reload::Reloader;
pub use tls::{TlsIdentity, tls_acceptor};

use crate::api::Ready;
use crate::api::grpc::{admin::AdminApi, backup::BackupApi, webhook::WebhookApi};
use crate::pb::admin_service_server::AdminServiceServer;
use crate::pb::backup_service_server::BackupServiceServer;
use crate::pb::webhook_service_server::WebhookServiceServer;
use crate::seal::{Seal, TokenSeal};
use crate::secrets::{DATABASE_FILE, Secrets};
use crate::store::Store;
use crate::store::postgres::PgStore;
use crate::store::redb::RedbStore;
use crate::validate::Limits;
use crate::vault::OpenError;
use crate::vault::{Credentials, Vault};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tonic::server::NamedService;
use tonic_health::ServingStatus;

/// The bound listeners, with their TLS certificates (read again at each reload).
pub struct Listeners {
    /// The private listener: gRPC, and the JSON API for any other content type.
    pub grpc: Listener,
    pub grpc_tls: Option<Arc<TlsIdentity>>,
    /// The public webhook listener, if enabled.
    pub http: Option<Listener>,
    pub http_tls: Option<Arc<TlsIdentity>>,
    /// The local admin socket, if enabled: the private app, for the daemon's own user and
    /// root, where the AdminService needs no token.
    pub admin_socket: Option<Listener>,
}

/// What the daemon runs with, once configuration and secrets are loaded.
pub struct Settings {
    pub config: Config,
    /// The webhook secrets and admin token (the master key, if any, is in `seal`).
    pub secrets: Secrets,
    /// Where the root key comes from.
    pub seal: Seal,
}

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Open(#[from] crate::vault::OpenError),
    #[error(transparent)]
    Seal(crate::seal::StartError),
    #[error("cannot build the reflection service: {0}")]
    Reflection(String),
    #[error("the server task failed: {0}")]
    Task(String),
    #[error("{0}")]
    DataDir(String),
    #[error("{0}")]
    Tls(String),
}

/// Checks, on the database as its open will see it but without writing a byte, what would
/// refuse this start after the open: the seal the vault was made under, the token's key, the
/// master key. A refused start leaves the data dir exactly as it was.
fn preflight(path: &std::path::Path, seal: &Seal) -> Result<(), ServeError> {
    let Some(peeked) = RedbStore::peek(path).map_err(OpenError::Store)? else {
        return Ok(());
    };
    let reader = peeked.read().map_err(OpenError::Store)?;
    let Some(keys) = crate::seal::start::check(&*reader, seal).map_err(ServeError::Seal)? else {
        return Ok(());
    };
    crate::vault::check_keys(&*reader, &keys.primary, &keys.older)?;
    Ok(())
}

const SERVICES: [&str; 3] = [
    <WebhookServiceServer<WebhookApi> as NamedService>::NAME,
    <BackupServiceServer<BackupApi> as NamedService>::NAME,
    <AdminServiceServer<AdminApi> as NamedService>::NAME,
];

/// Sets the health of the daemon and of every service it serves (the WebhookService only
/// with `grpc_webhook`).
async fn set_health(
    reporter: &tonic_health::server::HealthReporter,
    grpc_webhook: bool,
    status: ServingStatus,
) {
    let served = SERVICES.into_iter().filter(|name| {
        grpc_webhook || *name != <WebhookServiceServer<WebhookApi> as NamedService>::NAME
    });
    for name in std::iter::once("").chain(served) {
        reporter.set_service_status(name, status).await;
    }
}

/// The largest gRPC message decoded: the largest share or cipherText, and room for the
/// bounded fields beside it (ids, methods, up to 64 pair ids). Larger messages are refused
/// (OUT_OF_RANGE) before anything is decoded.
fn max_grpc_message(limits: &Limits) -> usize {
    limits.max_share_bytes.max(limits.max_cipher_text_bytes) + 16 * 1024
}

fn grpc_router(
    ready: &Ready,
    calls: &crate::metrics::CallMetrics,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    limits: &Limits,
    timeout: Duration,
    webhook: Option<Arc<Vec<ipnet::IpNet>>>,
) -> Result<axum::Router, ServeError> {
    let max = max_grpc_message(limits);
    let health = health.max_decoding_message_size(max);
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
        .map_err(|e| ServeError::Reflection(e.to_string()))?
        .max_decoding_message_size(max);
    let v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?
        .max_decoding_message_size(max);
    let mut routes = tonic::service::Routes::builder();
    // Portal calls only the HTTP webhook: its gRPC twin is served on request, and then only
    // to the sources the allow-list admits.
    if let Some(allow) = webhook {
        routes.add_service(
            WebhookServiceServer::new(WebhookApi {
                ready: ready.clone(),
                calls: calls.clone(),
                allow,
            })
            .max_decoding_message_size(max),
        );
    }
    routes
        .add_service(health)
        .add_service(v1)
        .add_service(v1alpha)
        .add_service(
            BackupServiceServer::new(BackupApi {
                ready: ready.clone(),
                calls: calls.clone(),
            })
            .max_decoding_message_size(max),
        )
        .add_service(
            AdminServiceServer::new(AdminApi {
                ready: ready.clone(),
                calls: calls.clone(),
            })
            .max_decoding_message_size(max),
        );
    Ok(routes
        .routes()
        .prepare()
        .into_axum_router()
        .layer(axum::middleware::from_fn(move |req, next| {
            grpc_deadline(timeout, max, req, next)
        })))
}

/// Calls that may rightly run for minutes: they check the whole vault or its audit trail.
const LONG_CALLS: [&str; 2] = [
    "/sharevault.v1.AdminService/Verify",
    "/sharevault.v1.AdminService/VerifyAudit",
];

/// Gives every gRPC call `timeout` to be answered (a streamed answer: to start), else
/// DEADLINE_EXCEEDED, so that a client sending its request slowly, or never finishing it,
/// does not hold its place for ever. The [`LONG_CALLS`] get `timeout` to send their request,
/// and as long as their work takes.
async fn grpc_deadline(
    timeout: Duration,
    max: usize,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let late = || {
        tonic::Status::deadline_exceeded("the call took too long; try again")
            .into_http::<axum::body::Body>()
    };
    if !LONG_CALLS.contains(&request.uri().path()) {
        let served = tokio::time::timeout(timeout, next.run(request));
        return crate::api::observe::within_deadline(timeout, served)
            .await
            .unwrap_or_else(|_| late());
    }
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, max.saturating_add(5))).await {
        Ok(Ok(bytes)) => {
            next.run(axum::extract::Request::from_parts(parts, bytes.into()))
                .await
        }
        Ok(Err(_)) => {
            tonic::Status::out_of_range("the request is too large").into_http::<axum::body::Body>()
        }
        Err(_) => late(),
    }
}

/// The private listener's app: gRPC requests (told apart by their content type) go to the
/// gRPC services, everything else to the JSON API. Both attribute requests to their source
/// as the webhook does, believing `X-Forwarded-For` only from `proxies`, and hold back the
/// answers of authentication failures past the limit ([`crate::auth::penalty`]).
fn private_app(
    grpc: axum::Router,
    api: axum::Router,
    proxies: Arc<Vec<ipnet::IpNet>>,
) -> axum::Router {
    let app = axum::Router::new().fallback_service(tower::service_fn(
        move |request: axum::extract::Request| {
            let is_grpc = request
                .headers()
                .get(axum::http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/grpc"));
            let target = if is_grpc { grpc.clone() } else { api.clone() };
            tower::ServiceExt::oneshot(target, request)
        },
    ));
    app.layer(axum::middleware::from_fn(move |req, next| {
        crate::api::http::attribute_source(Arc::clone(&proxies), req, next)
    }))
    .layer(axum::middleware::from_fn(crate::api::http::answer_late))
}

fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(false, states) {
        tracing::warn!(error = %err, "cannot notify systemd");
    }
}

/// How often systemd hears that the database is still being opened.
const OPENING_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(10);

/// Tells systemd, until it is aborted, that the daemon is still opening the database, so
/// that its start timeout does not kill a long open: after an unclean shutdown redb reads the
/// whole file to rebuild its free-space map, minutes for tens of GiB.
async fn opening_heartbeat() {
    let started = std::time::Instant::now();
    let mut ticks = tokio::time::interval(OPENING_HEARTBEAT);
    loop {
        ticks.tick().await;
        let elapsed = started.elapsed().as_secs();
        if elapsed > 0 {
            tracing::info!(seconds = elapsed, "still opening the database");
        }
        let status = format!("opening the database ({elapsed} s)");
        // Three heartbeats' worth: a missed one or two does not end the start.
        let extend = u32::try_from(3 * OPENING_HEARTBEAT.as_micros()).unwrap_or(u32::MAX);
        notify(&[
            sd_notify::NotifyState::Status(&status),
            sd_notify::NotifyState::ExtendTimeoutUsec(extend),
        ]);
    }
}

/// How long a first start waits for another daemon making the vault's keys.
const FIRST_START_WAIT: Duration = Duration::from_secs(60);

/// The cluster's first-start lock, on a database several daemons serve.
async fn first_start_lock(
    store: &Arc<dyn Store>,
) -> Result<Option<Box<dyn crate::store::cluster::LockGuard>>, ServeError> {
    if store.cluster().is_none() {
        return Ok(None);
    }
    let store = Arc::clone(store);
    let taken = tokio::task::spawn_blocking(move || {
        store
            .cluster()
            .map(|c| c.lock(crate::store::cluster::ClusterLock::Init, FIRST_START_WAIT))
    })
    .await
    .map_err(|e| ServeError::Task(e.to_string()))?;
    match taken {
        None => Ok(None),
        Some(Ok(Some(guard))) => Ok(Some(guard)),
        Some(Ok(None)) => Err(ServeError::Task(format!(
            "another daemon held the first-start lock of this database for {} s",
            FIRST_START_WAIT.as_secs()
        ))),
        Some(Err(err)) => Err(ServeError::Open(OpenError::Database(err))),
    }
}

/// Registers the daemon in the database's registry and starts its presence rounds (see
/// [`crate::vault::cluster`]), on a database several daemons serve.
async fn start_presence(
    vault: &Arc<Vault>,
    token: Option<&TokenSeal>,
) -> Option<tokio::task::JoinHandle<()>> {
    vault.store().cluster()?;
    let registering = Arc::clone(vault);
    match tokio::task::spawn_blocking(move || registering.register()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "could not register this daemon"),
        Err(err) => tracing::warn!(error = %err, "could not register this daemon"),
    }
    let unseal = token.map(TokenSeal::unsealer);
    Some(tokio::spawn(Arc::clone(vault).run_presence(unseal)))
}

/// Stops the presence rounds and removes the daemon from the registry.
async fn leave(vault: &Arc<Vault>, presence: Option<tokio::task::JoinHandle<()>>) {
    let Some(presence) = presence else { return };
    presence.abort();
    let _ = presence.await;
    let leaving = Arc::clone(vault);
    let _ = tokio::task::spawn_blocking(move || leaving.leave()).await;
}

/// Runs the daemon on `listeners` until `shutdown` resolves.
pub async fn run(
    listeners: Listeners,
    mut settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    // First of all, so that a SIGHUP during the start does not end the daemon.
    let hangups = reload::hangups();
    let (reporter, health) = tonic_health::server::health_reporter();
    let grpc_webhook = settings.config.webhook.grpc;
    set_health(&reporter, grpc_webhook, ServingStatus::NotServing).await;
    let ready = Ready::default();
    // The one registry, and a handle for each part of the daemon.
    let metrics = crate::metrics::Metrics::new();
    let acceptor = |identity: &Option<Arc<TlsIdentity>>| {
        identity
            .as_ref()
            .map(|i| i.acceptor())
            .transpose()
            .map_err(ServeError::Tls)
    };
    let (grpc_tls, http_tls) = (
        acceptor(&listeners.grpc_tls)?,
        acceptor(&listeners.http_tls)?,
    );
    let webhook_secrets: crate::vault::SharedWebhookSecrets =
        Arc::new(arc_swap::ArcSwap::from_pointee(settings.secrets.webhook));
    let reloader = Reloader {
        webhook_file: settings.secrets.webhook_file.clone(),
        webhook: Arc::clone(&webhook_secrets),
        tls: [
            ("grpc", &listeners.grpc_tls),
            ("webhook", &listeners.http_tls),
        ]
        .into_iter()
        .filter_map(|(name, identity)| Some((name, Arc::clone(identity.as_ref()?))))
        .collect(),
        metrics: metrics.reloads.clone(),
    };
    // A JoinSet aborts its task when dropped, on every way out of `run`.
    let mut reloads = tokio::task::JoinSet::new();
    if let Some(hangups) = hangups {
        reloads.spawn(reload::on_hangup(hangups, reloader));
    }
    let proxies = Arc::new(settings.config.webhook.trusted_proxies.clone());
    let private = private_app(
        grpc_router(
            &ready,
            &metrics.calls,
            health,
            &settings.config.limits,
            settings.config.request_timeout,
            grpc_webhook.then(|| Arc::new(settings.config.webhook.allow.clone())),
        )?,
        crate::api::http::json_api::router(
            ready.clone(),
            metrics.calls.clone(),
            metrics.scrape.clone(),
            settings.config.max_request_bytes,
            settings.config.request_timeout,
        ),
        Arc::clone(&proxies),
    );

    let admission = Admission {
        limits: settings.config.limits_per_listener,
        trusted_proxies: Arc::clone(&proxies),
        metrics: metrics.listeners.clone(),
        allow: None,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    tracing::info!(addr = %listeners.grpc.describe(), tls = grpc_tls.is_some(), "grpc listener bound");
    if let Some(socket) = listeners.admin_socket {
        tracing::info!(addr = %socket.describe(), "admin socket bound");
        servers.spawn(serve(
            socket,
            private.clone(),
            None,
            true,
            admission.clone(),
            stop_rx.clone(),
        ));
    }
    servers.spawn(serve(
        listeners.grpc,
        private,
        grpc_tls,
        false,
        admission.clone(),
        stop_rx.clone(),
    ));
    if let Some(http) = listeners.http {
        tracing::info!(addr = %http.describe(), tls = http_tls.is_some(), prefix = %settings.config.webhook.path_prefix, "webhook listener bound");
        let public = crate::api::http::webhook::router(
            ready.clone(),
            metrics.calls.clone(),
            settings.config.webhook.clone(),
            settings.config.max_request_bytes,
            settings.config.request_timeout,
        );
        let allow = &settings.config.webhook.allow;
        let admission = Admission {
            allow: (!allow.is_empty()).then(|| AllowAtAccept {
                allow: Arc::new(allow.clone()),
                calls: metrics.calls.clone(),
            }),
            ..admission
        };
        servers.spawn(serve(http, public, http_tls, false, admission, stop_rx));
    }

    let path = settings.config.data_dir.join(DATABASE_FILE);
    let (min_free, cache) = (
        settings.config.min_free_disk_bytes,
        settings.config.cache_bytes,
    );
    for setting in &settings.config.deprecated {
        tracing::warn!(
            setting,
            "this setting is deprecated and ignored: the database is made durable by its redo \
             log, and every restart after a crash is quick"
        );
    }
    let store_metrics = metrics.store.clone();
    let heartbeat = tokio::spawn(opening_heartbeat());
    let database = settings.config.database.clone();
    let data_dir = settings.config.data_dir.clone();
    let mut generated = std::mem::take(&mut settings.secrets.generated);
    let seal = settings.seal;
    let opened = tokio::task::spawn_blocking(move || {
        let store = (|| -> Result<Arc<dyn Store>, ServeError> {
            if let Some(database) = database {
                generated.persist(&data_dir).map_err(ServeError::DataDir)?;
                return Ok(Arc::new(
                    PgStore::open(&database, store_metrics).map_err(OpenError::Database)?,
                ));
            }
            // Whatever would refuse this start is checked before a byte is written.
            preflight(&path, &seal)?;
            generated.persist(&data_dir).map_err(ServeError::DataDir)?;
            let store =
                RedbStore::open(&path, min_free, cache, store_metrics).map_err(OpenError::Store)?;
            // The database and its log, if they were just created, survive a crash.
            crate::data_dir::sync_dir(&data_dir).map_err(|e| {
                ServeError::DataDir(format!(
                    "cannot sync the data dir {}: {e}",
                    data_dir.display()
                ))
            })?;
            Ok(Arc::new(store))
        })();
        (store, seal)
    })
    .await
    .map_err(|e| ServeError::Task(e.to_string()));
    heartbeat.abort();
    // Wait until it has stopped, so that nothing it sends can follow READY=1.
    let _ = heartbeat.await;
    let (store, seal) = opened?;
    let token = match &seal {
        Seal::Pkcs11 { hsm, key } => Some(TokenSeal::new(Arc::clone(hsm), key.clone())),
        Seal::File { .. } => None,
    };
    // A new vault's keys are made under the cluster's first-start lock: of daemons starting
    // at once on a new database, one makes them and the others find them.
    let store = match store {
        Ok(store) => match first_start_lock(&store).await {
            Ok(guard) => Ok((store, guard)),
            Err(err) => {
                store.close();
                Err(err)
            }
        },
        Err(err) => Err(err),
    };
    let keys = match store {
        Ok((store, guard)) => match crate::seal::root_keys(store.as_ref(), seal).await {
            Ok(keys) => Ok((store, keys, guard)),
            Err(err) => {
                store.close();
                Err(ServeError::Seal(err))
            }
        },
        Err(err) => Err(err),
    };
    let opened = match keys {
        Ok((store, keys, guard)) => {
            let opened = Vault::open(
                store,
                keys.primary,
                keys.older,
                settings.config.limits,
                Credentials {
                    webhook: webhook_secrets,
                    admin_token: settings.secrets.admin_token,
                    failures: crate::auth::FailureLimiter::new(
                        settings.config.auth_failure_limit,
                        settings.config.auth_failure_window,
                        settings.config.auth_failure_max_delay,
                    ),
                },
                metrics.vault.clone(),
            )
            .await
            .map(|v| {
                v.with_deferred_read_audit(
                    settings.config.read_audit == crate::config::ReadAudit::Deferred,
                )
                .with_retention(settings.config.versions)
                .with_request_timeout(settings.config.request_timeout)
            })
            .map_err(ServeError::from);
            drop(guard);
            opened
        }
        Err(err) => Err(err),
    };
    let vault = match opened {
        Ok(vault) => Arc::new(vault),
        Err(err) => {
            let _ = stop_tx.send(true);
            servers.join_all().await;
            return Err(err);
        }
    };
    // Registered before it says it is ready: a rotation from then on waits for it.
    let presence = start_presence(&vault, token.as_ref()).await;
    ready.set(Arc::clone(&vault));
    let watcher = token.map(|token| {
        ready.set_seal(token.clone());
        tokio::spawn(token.watch(settings.config.seal_check_interval))
    });
    set_health(&reporter, grpc_webhook, ServingStatus::Serving).await;
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("serving"),
    ]);
    tracing::info!(master_key_id = %vault.key_id(), "sharevault is ready");
    let pruner = settings
        .config
        .audit_retention
        .clone()
        .map(|retention| tokio::spawn(pruner::run(Arc::clone(&vault), retention)));

    tokio::select! {
        () = shutdown => {}
        result = servers.join_next() => {
            if let Some(pruner) = &pruner {
                pruner.abort();
            }
            leave(&vault, presence).await;
            vault.close();
            return Err(ServeError::Task(match result {
                Some(Err(e)) => e.to_string(),
                _ => "a listener stopped".into(),
            }));
        }
    }
    if let Some(pruner) = pruner {
        pruner.abort();
    }
    tracing::info!("shutting down: draining in-flight calls");
    notify(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("stopping: draining in-flight calls"),
    ]);
    set_health(&reporter, grpc_webhook, ServingStatus::NotServing).await;
    let _ = stop_tx.send(true);
    let drained = async { while servers.join_next().await.is_some() {} };
    if tokio::time::timeout(settings.config.shutdown_grace, drained)
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing the remaining connections");
        servers.abort_all();
    }
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    leave(&vault, presence).await;
    vault.close();
    tracing::info!("database closed; bye");
    Ok(())
}
