//! Connections: HTTP/1.1 and HTTP/2 (gRPC is HTTP/2) on one port, the limits every listener
//! keeps (connections, per source, in flight, idle), and graceful shutdown.

use super::listen::{Accepted, Listener, accept, canonical, local_admin_allowed};
use crate::api::{LocalAdmin, Peer, Transport};
use crate::auth::SourceKey;
use axum::response::IntoResponse;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

/// How long a client gets to send its request headers, and to finish a TLS handshake.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The most header bytes a request may carry; more is answered 431 (HTTP/1.1) or refused.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The service every connection is handed: one request at a time, any HTTP version.
pub type App = axum::Router;

fn builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_concurrent_streams(256);
    builder
}

/// What every connection of a listener is served with.
#[derive(Clone)]
struct Connections {
    app: App,
    tls: Option<TlsAcceptor>,
    builder: auto::Builder<TokioExecutor>,
    local_admin: bool,
    idle_timeout: Duration,
}

/// What a connection task holds while it runs: its place under the listener's connection
/// limit and under its source's.
struct Held {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _source: Option<SourceSlot>,
}

impl Connections {
    fn spawn<IO>(&self, io: IO, peer: Peer, stop: tokio::sync::watch::Receiver<bool>, held: Held)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connections {
            app,
            tls,
            builder,
            local_admin,
            idle_timeout,
        } = self.clone();
        let transport = match (&tls, peer.0) {
            (Some(_), _) => Transport::Tls,
            (None, None) => Transport::Unix,
            (None, Some(_)) => Transport::Tcp,
        };
        tokio::spawn(async move {
            let _held = held;
            let (activity, watched) = tokio::sync::watch::channel(Activity::default());
            let activity = Arc::new(activity);
            let service = tower::service_fn(move |mut req: axum::http::Request<_>| {
                req.extensions_mut().insert(peer);
                req.extensions_mut().insert(transport);
                if local_admin {
                    req.extensions_mut().insert(LocalAdmin);
                }
                let open = Open::new(&activity);
                let call = tower::ServiceExt::oneshot(app.clone(), req);
                async move {
                    let response = call.await?;
                    // The request stays open until its answer has been sent (or dropped).
                    Ok::<_, std::convert::Infallible>(response.map(move |body| {
                        axum::body::Body::new(http_body_util::BodyExt::map_frame(
                            body,
                            move |frame| {
                                let _open = &open;
                                frame
                            },
                        ))
                    }))
                }
            });
            let service = TowerToHyperService::new(service);
            match tls {
                None => {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                    drive(conn, stop, watched, idle_timeout).await;
                }
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(io)).await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(err)) => {
                                tracing::debug!(error = %err, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!("TLS handshake timed out");
                                return;
                            }
                        };
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    drive(conn, stop, watched, idle_timeout).await;
                }
            }
        });
    }
}

/// The requests of one connection: how many are open, and how many have ever started.
#[derive(Debug, Default, Clone, Copy)]
struct Activity {
    open: usize,
    started: u64,
}

/// One open request of a connection; closes it when dropped.
struct Open(Arc<tokio::sync::watch::Sender<Activity>>);

impl Open {
    fn new(activity: &Arc<tokio::sync::watch::Sender<Activity>>) -> Self {
        activity.send_modify(|a| {
            a.open += 1;
            a.started += 1;
        });
        Open(Arc::clone(activity))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.send_modify(|a| a.open = a.open.saturating_sub(1));
    }
}

/// Resolves once the connection has had no open request for `limit`.
async fn idle_for(mut activity: tokio::sync::watch::Receiver<Activity>, limit: Duration) {
    loop {
        let Ok(quiet) = activity.wait_for(|a| a.open == 0).await.map(|a| *a) else {
            return std::future::pending().await;
        };
        let busy = activity.wait_for(|a| a.open > 0 || a.started != quiet.started);
        if tokio::time::timeout(limit, busy).await.is_err() {
            return;
        }
    }
}

/// Serves `conn` until it ends. It is shut down gracefully (HTTP/2 GOAWAY, or closed between
/// HTTP/1.1 requests) when the listener stops, or once it has had no open request for
/// `idle_timeout`; an idle connection that has not finished closing 10 s later is dropped.
async fn drive<C>(
    conn: C,
    mut stop: tokio::sync::watch::Receiver<bool>,
    activity: tokio::sync::watch::Receiver<Activity>,
    idle_timeout: Duration,
) where
    C: std::future::Future + GracefulShutdownOf,
{
    let mut conn = std::pin::pin!(conn);
    let idle = idle_for(activity, idle_timeout);
    let mut idle = std::pin::pin!(idle);
    let stopping = tokio::select! {
        _ = conn.as_mut() => return,
        () = stopped(&mut stop) => true,
        () = &mut idle => false,
    };
    conn.as_mut().shut_down();
    if stopping {
        let _ = conn.await;
    } else {
        tracing::debug!("closing an idle connection");
        let _ = tokio::time::timeout(HEADER_TIMEOUT, conn).await;
    }
}

/// A connection that can be asked to finish gracefully.
trait GracefulShutdownOf {
    fn shut_down(self: std::pin::Pin<&mut Self>);
}

impl<I, S, B> GracefulShutdownOf for auto::UpgradeableConnection<'_, I, S, TokioExecutor>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn shut_down(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Open connections per source, so that one address cannot take a listener's whole
/// connection limit.
struct PerSource {
    max: usize,
    open: std::sync::Mutex<std::collections::HashMap<SourceKey, usize>>,
}

/// A connection's place under its source's limit; given back when dropped.
struct SourceSlot {
    owner: Arc<PerSource>,
    key: SourceKey,
}

impl PerSource {
    /// A place for one more connection from `key`, unless it already has `max` open.
    fn admit(self: &Arc<Self>, key: SourceKey) -> Option<SourceSlot> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = open.entry(key).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            owner: Arc::clone(self),
            key,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self
            .owner
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// What a listener enforces and counts: its limits, the proxies exempt from the per-source
/// limit, the handle that counts requests refused at the in-flight limit, and on the public
/// listener the webhook allow-list.
#[derive(Clone)]
pub struct Admission {
    pub limits: crate::config::ListenerLimits,
    pub trusted_proxies: Arc<Vec<ipnet::IpNet>>,
    pub metrics: crate::metrics::ListenerMetrics,
    pub allow: Option<AllowAtAccept>,
}

/// The webhook allow-list, checked when a connection is accepted on the public listener, so
/// that a refused source holds no connection slot and gets no TLS handshake: its connection
/// is closed at once. A trusted proxy is let in (the address its `X-Forwarded-For` names
/// decides, per request); a Unix-socket peer, which has no address, is refused, as its
/// requests would be.
#[derive(Clone)]
pub struct AllowAtAccept {
    pub allow: Arc<Vec<ipnet::IpNet>>,
    /// Counts each refused connection as a `WebhookHttp` call, method `Connection`, outcome
    /// `forbidden`, so that the "no successful webhook" alert sees Portal's calls refused.
    pub calls: crate::metrics::CallMetrics,
}

/// The most often a refused connection is logged: once per interval, with the number refused
/// since the line before, so that a scan of the port cannot flood the log.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// What [`AllowAtAccept`] refused since it last logged.
struct Refusals {
    logged: Option<std::time::Instant>,
    unlogged: u64,
}

impl AllowAtAccept {
    fn admits(&self, peer: Option<std::net::IpAddr>, proxies: &[ipnet::IpNet]) -> bool {
        peer.is_some_and(|ip| {
            proxies.iter().any(|p| p.contains(&ip)) || self.allow.iter().any(|n| n.contains(&ip))
        })
    }

    /// Counts a refused connection, and logs it unless one was logged within the interval.
    fn refused(&self, peer: Option<std::net::IpAddr>, refusals: &mut Refusals) {
        self.calls.refused("WebhookHttp", "Connection", "forbidden");
        refusals.unlogged += 1;
        let now = std::time::Instant::now();
        if refusals
            .logged
            .is_none_or(|at| now.duration_since(at) >= REFUSAL_LOG_INTERVAL)
        {
            let source = peer.map_or_else(|| "unix".to_owned(), |ip| ip.to_string());
            tracing::warn!(
                target: "sharevault::call",
                service = "WebhookHttp",
                method = "Connection",
                source,
                outcome = "forbidden",
                refused = refusals.unlogged,
                "closed a connection from a source outside the webhook allow-list"
            );
            refusals.logged = Some(now);
            refusals.unlogged = 0;
        }
    }
}

/// Accepts connections on `listener` and serves `app` on each until `stop` turns true; then
/// stops accepting and waits for open connections to finish their requests. With
/// `local_admin`, the listener is the local admin socket: only the daemon's own user and root
/// may connect, and their requests are marked [`LocalAdmin`]. A source (an IPv4 address or an
/// IPv6 /64) holds at most `limits.max_connections_per_source` connections; more are closed
/// at once, except from the `trusted_proxies` ([`Admission`]). With an allow-list
/// ([`AllowAtAccept`]), a connection from outside it is closed at once, before TLS.
pub async fn serve(
    listener: Listener,
    app: App,
    tls: Option<TlsAcceptor>,
    local_admin: bool,
    admission: Admission,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Admission {
        limits,
        trusted_proxies,
        metrics,
        allow,
    } = admission;
    let mut refusals = Refusals {
        logged: None,
        unlogged: 0,
    };
    let in_flight = Arc::new(tokio::sync::Semaphore::new(limits.max_in_flight));
    let served = Connections {
        app: app.layer(axum::middleware::from_fn(move |req, next| {
            limit_in_flight(Arc::clone(&in_flight), metrics.clone(), req, next)
        })),
        tls,
        builder: builder(),
        local_admin,
        idle_timeout: limits.connection_idle,
    };
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let per_source = Arc::new(PerSource {
        max: limits.max_connections_per_source,
        open: std::sync::Mutex::default(),
    });
    let mut refused_sources: u64 = 0;
    loop {
        // At the connection limit, stop accepting until a connection closes: new clients wait
        // in the kernel's backlog rather than taking memory here.
        let permit = tokio::select! {
            () = stopped(&mut stop) => break,
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = accept(&listener) => match accepted {
                Ok(Accepted::Tcp(stream, addr)) => {
                    let ip = canonical(addr);
                    if let Some(allow) = allow.as_ref().filter(|a| !a.admits(Some(ip), &trusted_proxies)) {
                        allow.refused(Some(ip), &mut refusals);
                        continue;
                    }
                    let source = if trusted_proxies.iter().any(|p| p.contains(&ip)) {
                        None
                    } else {
                        match per_source.admit(SourceKey::of(ip)) {
                            Some(slot) => Some(slot),
                            None => {
                                // Closed at once; logged once per thousand, not per connection.
                                if refused_sources.is_multiple_of(1000) {
                                    tracing::warn!(source = %ip, "a source is at its connection limit; closing its new connections");
                                }
                                refused_sources += 1;
                                continue;
                            }
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let held = Held { _permit: permit, _source: source };
                    served.spawn(stream, Peer(Some(ip)), stop.clone(), held);
                }
                Ok(Accepted::Unix(stream)) => {
                    if let Some(allow) = &allow {
                        allow.refused(None, &mut refusals);
                        continue;
                    }
                    if local_admin && !local_admin_allowed(&stream) {
                        tracing::warn!(
                            uid = ?stream.peer_cred().ok().map(|c| c.uid()),
                            "refused a connection to the admin socket from another user"
                        );
                        continue;
                    }
                    let held = Held { _permit: permit, _source: None };
                    served.spawn(stream, Peer(None), stop.clone(), held);
                }
                Err(err) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    if let Listener::Unix(_, path) = &listener {
        let _ = std::fs::remove_file(path);
    }
    drop(listener);
    // Every connection holds a permit until it has finished: wait until all are back.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = connections.acquire_many(all).await;
}

/// Answers 503 at once when the listener already has its most requests in flight.
async fn limit_in_flight(
    slots: Arc<tokio::sync::Semaphore>,
    metrics: crate::metrics::ListenerMetrics,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match slots.try_acquire_owned() {
        Ok(_slot) => next.run(request).await,
        Err(_) => {
            metrics.overloaded();
            crate::api::http::HttpError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "too many requests in flight; try again",
            )
            .into_response()
        }
    }
}

async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
