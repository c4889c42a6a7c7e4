//! How client commands reach the daemon: the address (TCP or Unix socket), optional TLS with a
//! private CA, the admin token, and error messages an operator can act on.

use crate::pb::admin_service_client::AdminServiceClient;
use crate::pb::backup_service_client::BackupServiceClient;
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic_health::pb::health_client::HealthClient;
use zeroize::Zeroizing;

/// The environment variable that may hold the admin token itself.
pub const ADMIN_TOKEN_ENV: &str = "SHAREVAULT_ADMIN_TOKEN";

/// The token file used when none is named: the one a first `serve` generates in its default
/// data dir, so that a trial works from the same directory without flags.
pub const DEFAULT_ADMIN_TOKEN_FILE: &str = "./sharevault-data/admin-token";

/// The name a certificate must carry when neither `--tls-server-name` nor an `https://`
/// address names one.
const DEFAULT_TLS_SERVER_NAME: &str = "localhost";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a long call's connection is pinged, and how long a ping may go unanswered.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the daemon is and how to authenticate to it; shared by every client command.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// The daemon's private (gRPC) listener: HOST:PORT (TLS with --ca-file), http://HOST:PORT,
    /// https://HOST:PORT (TLS, trusting --ca-file or else the system's roots) or
    /// unix:/path/to.sock.
    #[arg(
        long,
        env = "SHAREVAULT_CONNECT",
        value_name = "ADDR",
        default_value = "127.0.0.1:7450"
    )]
    pub connect: String,
    /// Use TLS, trusting the PEM certificate(s) in FILE as roots (and no others).
    #[arg(long, env = "SHAREVAULT_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Name the daemon's certificate must carry [default: the host of an https:// address,
    /// else localhost].
    #[arg(long, env = "SHAREVAULT_TLS_SERVER_NAME", value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// File holding the admin token [default: $SHAREVAULT_ADMIN_TOKEN, else
    /// ./sharevault-data/admin-token].
    #[arg(long, env = "SHAREVAULT_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
}

/// Why a client command failed, worded for the operator. Never carries a token.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The daemon could not be reached, or its certificate was refused.
    #[error("cannot connect to {target}: {reason}{hint}")]
    Connect {
        target: String,
        reason: String,
        hint: &'static str,
    },
    /// The daemon answered with a gRPC error: `code: message`.
    #[error("{code}: {message}{hint}")]
    Rpc {
        code: &'static str,
        message: String,
        hint: &'static str,
    },
    /// The daemon answers, but is not serving yet (or any more).
    #[error("the daemon at {target} is not serving (health {health})")]
    NotServing { target: String, health: String },
    /// Bad options, an unreadable file, or a local failure.
    #[error("{0}")]
    Local(String),
}

impl CliError {
    /// Translates a gRPC status, with a hint where the fix is on the operator's side.
    pub fn from_status(status: &tonic::Status) -> Self {
        use tonic::Code;
        let hint = match status.code() {
            Code::Unauthenticated => {
                " (check the admin token: --admin-token-file or SHAREVAULT_ADMIN_TOKEN)"
            }
            Code::PermissionDenied => " (the token is not an admin token)",
            _ => "",
        };
        let message = causes(
            status.message().to_owned(),
            std::error::Error::source(status),
        );
        CliError::Rpc {
            code: code_name(status.code()),
            message,
            hint,
        }
    }
}

/// The canonical gRPC name of `code`, lower-case.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// `first`, then the messages of `source` and its own sources that `first` and the messages
/// before them do not already say, joined with `: `.
fn causes(first: String, source: Option<&(dyn std::error::Error + 'static)>) -> String {
    let mut parts = vec![first];
    let mut next = source;
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.retain(|p| !p.is_empty());
    parts.join(": ")
}

/// Whether TLS (rather than reaching the daemon) failed somewhere in `err`'s chain.
fn is_tls(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner.is::<rustls::Error>());
        if e.is::<rustls::Error>() || inner == Some(true) {
            return true;
        }
        next = e.source();
    }
    false
}

/// The forms `--connect` accepts, for its help and its errors.
pub const CONNECT_FORMS: &str =
    "HOST:PORT, http://HOST:PORT, https://HOST:PORT or unix:/path/to.sock";

/// Where the daemon listens, as parsed from `--connect`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// `HOST:PORT`: TLS with `--ca-file`, else plaintext.
    Tcp(String),
    /// `http://HOST:PORT`: plaintext.
    Http(String),
    /// `https://HOST:PORT`: TLS, trusting `--ca-file` or else the system's roots.
    Https(String),
    Unix(PathBuf),
}

impl Target {
    fn parse(value: &str) -> Result<Self, CliError> {
        let invalid = |why: &str| {
            CliError::Local(format!(
                "--connect `{value}`: {why}; expected {CONNECT_FORMS}"
            ))
        };
        if let Some(path) = value.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(invalid("no socket path after unix:"));
            }
            return Ok(Target::Unix(PathBuf::from(path)));
        }
        let (scheme, rest) = match value.split_once("://") {
            Some((scheme, rest)) => (Some(scheme.to_ascii_lowercase()), rest),
            None => (None, value),
        };
        // A URL may end with `/`; any other path means the address was mistaken for a URL of
        // the JSON API.
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        let valid = !authority.contains('/')
            && authority
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !valid {
            return Err(invalid("not an address with a port"));
        }
        let authority = authority.to_owned();
        match scheme.as_deref() {
            None => Ok(Target::Tcp(authority)),
            Some("http") => Ok(Target::Http(authority)),
            Some("https") => Ok(Target::Https(authority)),
            Some(other) => Err(invalid(&format!("unknown scheme {other}://"))),
        }
    }

    /// The host of a TCP address, without the brackets of an IPv6 address.
    fn host(&self) -> Option<&str> {
        match self {
            Target::Tcp(addr) | Target::Http(addr) | Target::Https(addr) => addr
                .rsplit_once(':')
                .map(|(host, _)| host.trim_start_matches('[').trim_end_matches(']')),
            Target::Unix(_) => None,
        }
    }
}

/// Anything a connection can run over: TCP, a Unix socket, or TLS on either.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// TLS towards the daemon, with the roots from `--ca-file` or else the system's.
#[derive(Clone)]
struct Tls {
    connector: tokio_rustls::TlsConnector,
    server_name: rustls::pki_types::ServerName<'static>,
}

impl Tls {
    fn new(ca_file: Option<&Path>, server_name: &str) -> Result<Self, CliError> {
        use rustls::pki_types::ServerName;
        let roots = match ca_file {
            Some(ca_file) => roots_from_file(ca_file)?,
            None => system_roots()?,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| CliError::Local(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let server_name = ServerName::try_from(server_name.to_owned()).map_err(|_| {
            CliError::Local(format!(
                "--tls-server-name `{server_name}` is not a DNS name or IP address"
            ))
        })?;
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }
}

/// The roots in the PEM file `--ca-file`.
pub(crate) fn roots_from_file(ca_file: &Path) -> Result<rustls::RootCertStore, CliError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let what = || format!("--ca-file {}", ca_file.display());
    let certs = CertificateDer::pem_file_iter(ca_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| CliError::Local(format!("{}: {e}", what())))?;
    if certs.is_empty() {
        return Err(CliError::Local(format!("{}: no certificate found", what())));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| CliError::Local(format!("{}: {e}", what())))?;
    }
    Ok(roots)
}

/// The system's trusted roots (`/etc/ssl/certs`, or `SSL_CERT_FILE`/`SSL_CERT_DIR`).
pub(crate) fn system_roots() -> Result<rustls::RootCertStore, CliError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(CliError::Local(format!(
            "https://: no trusted root certificate found on this system{why}; pass --ca-file"
        )));
    }
    Ok(roots)
}

/// Why the CLI will not send a new master key to `target`: what the daemon answers a key that
/// came over plain TCP from another host (it refuses it, and the key crossed the network in
/// clear all the same).
fn clear_key_refusal(target: &str) -> String {
    format!(
        "refusing to send the new master key to {target} in clear: the daemon accepts a key \
         only over TLS (--ca-file, or https://), its Unix socket (unix:/path) or plain TCP on \
         this host's loopback; nothing was sent"
    )
}

/// Whether a plain TCP connection to `addr` stays on this host, as the daemon's own check
/// ([`crate::api::Transport::may_carry_keys`]) sees the peer.
fn stays_on_host(addr: std::net::SocketAddr) -> bool {
    match addr.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
        ip => ip.is_loopback(),
    }
}

/// Refuses, before anything is sent, a plain TCP `target` that resolves to any address off
/// this host.
async fn check_keys_stay_on_host(target: &Target, shown: &str) -> Result<(), CliError> {
    let (Target::Tcp(addr) | Target::Http(addr)) = target else {
        return Ok(());
    };
    let resolved: Vec<_> = tokio::net::lookup_host(addr.as_str())
        .await
        .map_err(|e| CliError::Local(format!("--connect `{shown}`: {e}")))?
        .collect();
    if resolved.is_empty() || !resolved.into_iter().all(stays_on_host) {
        return Err(CliError::Local(clear_key_refusal(shown)));
    }
    Ok(())
}

async fn open(
    target: &Target,
    tls: Option<&Tls>,
    carries_keys: bool,
) -> std::io::Result<Box<dyn Stream>> {
    let raw: Box<dyn Stream> = match target {
        Target::Tcp(addr) | Target::Http(addr) | Target::Https(addr) => {
            let stream = tokio::net::TcpStream::connect(addr.as_str()).await?;
            stream.set_nodelay(true)?;
            // Checked again on the connection itself, whatever the name resolved to before.
            if carries_keys && tls.is_none() && !stays_on_host(stream.peer_addr()?) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    clear_key_refusal(addr),
                ));
            }
            Box::new(stream)
        }
        Target::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
    };
    match tls {
        None => Ok(raw),
        Some(tls) => Ok(Box::new(
            tls.connector.connect(tls.server_name.clone(), raw).await?,
        )),
    }
}

/// Finds the admin token: `--admin-token-file` (or `$SHAREVAULT_ADMIN_TOKEN_FILE`), else
/// `$SHAREVAULT_ADMIN_TOKEN`, else [`DEFAULT_ADMIN_TOKEN_FILE`] if it exists.
fn admin_token(file: Option<&Path>) -> Result<Zeroizing<String>, CliError> {
    let from_file = |path: &Path| -> Result<Zeroizing<String>, CliError> {
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| {
            CliError::Local(format!(
                "cannot read admin token file {}: {e}",
                path.display()
            ))
        })?);
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            CliError::Local(format!(
                "admin token file {}: must be UTF-8 text",
                path.display()
            ))
        })?;
        Ok(Zeroizing::new(text.trim().to_owned()))
    };
    let token = if let Some(path) = file {
        from_file(path)?
    } else if let Some(value) = std::env::var_os(ADMIN_TOKEN_ENV) {
        let value = Zeroizing::new(
            value
                .into_string()
                .map_err(|_| CliError::Local(format!("{ADMIN_TOKEN_ENV}: must be UTF-8 text")))?,
        );
        Zeroizing::new(value.trim().to_owned())
    } else if Path::new(DEFAULT_ADMIN_TOKEN_FILE).exists() {
        from_file(Path::new(DEFAULT_ADMIN_TOKEN_FILE))?
    } else {
        return Err(CliError::Local(format!(
            "no admin token: pass --admin-token-file FILE, or set {ADMIN_TOKEN_ENV} \
             ({DEFAULT_ADMIN_TOKEN_FILE} does not exist)"
        )));
    };
    if token.is_empty() {
        return Err(CliError::Local("the admin token is empty".into()));
    }
    Ok(token)
}

/// A connection to the daemon, with the admin token to present.
pub struct Client {
    channel: Channel,
    /// `None` on a Unix socket without a token: the daemon's admin socket vouches for the
    /// caller by its user id.
    token: Option<Zeroizing<String>>,
    target: String,
    tls: bool,
}

impl Client {
    /// Reads the admin token, then connects (TLS included) so that an unreachable daemon is
    /// reported before any call. Each call must answer within 30 s.
    pub async fn connect(args: &ConnectArgs) -> Result<Self, CliError> {
        Self::connect_with(args, Some(CALL_TIMEOUT), false).await
    }

    /// As [`Client::connect`], for a call that carries a new master key: refused before
    /// anything is sent unless the connection is one the daemon accepts a key over (TLS, a
    /// Unix socket, or plain TCP on loopback).
    pub async fn connect_to_send_keys(args: &ConnectArgs) -> Result<Self, CliError> {
        Self::connect_with(args, Some(CALL_TIMEOUT), true).await
    }

    /// As [`Client::connect`], for calls that take as long as the vault is large (checking
    /// every record or the whole audit trail): no time limit on the call, but HTTP/2 pings
    /// every 30 s, so that a daemon that died or vanished is noticed within a minute.
    pub async fn connect_for_long_calls(args: &ConnectArgs) -> Result<Self, CliError> {
        Self::connect_with(args, None, false).await
    }

    async fn connect_with(
        args: &ConnectArgs,
        call_timeout: Option<Duration>,
        carries_keys: bool,
    ) -> Result<Self, CliError> {
        let target = Target::parse(&args.connect)?;
        let token = match admin_token(args.admin_token_file.as_deref()) {
            Ok(token) => Some(token),
            Err(_) if matches!(target, Target::Unix(_)) => None,
            Err(err) => return Err(err),
        };
        let tls = match &target {
            Target::Http(_) if args.ca_file.is_some() => {
                return Err(CliError::Local(format!(
                    "--connect `{}` is plaintext: with --ca-file, use https://",
                    args.connect
                )));
            }
            Target::Http(_) => None,
            Target::Https(_) => {
                let name = args
                    .tls_server_name
                    .as_deref()
                    .or(target.host())
                    .unwrap_or(DEFAULT_TLS_SERVER_NAME);
                Some(Tls::new(args.ca_file.as_deref(), name)?)
            }
            Target::Tcp(_) | Target::Unix(_) => args
                .ca_file
                .as_deref()
                .map(|ca| {
                    let name = args
                        .tls_server_name
                        .as_deref()
                        .unwrap_or(DEFAULT_TLS_SERVER_NAME);
                    Tls::new(Some(ca), name)
                })
                .transpose()?,
        };
        let with_tls = tls.is_some();
        if carries_keys && !with_tls {
            check_keys_stay_on_host(&target, &args.connect).await?;
        }
        let scheme = if with_tls { "https" } else { "http" };
        let authority = match &target {
            Target::Tcp(addr) | Target::Http(addr) | Target::Https(addr) => addr.as_str(),
            Target::Unix(_) => "localhost",
        };
        let uri: Uri = format!("{scheme}://{authority}")
            .parse()
            .map_err(|e| CliError::Local(format!("--connect `{}`: {e}", args.connect)))?;
        let mut endpoint = Endpoint::from(uri).connect_timeout(CONNECT_TIMEOUT);
        endpoint = match call_timeout {
            Some(limit) => endpoint.timeout(limit),
            None => endpoint
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true),
        };
        let connector_target = target.clone();
        let channel = endpoint
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let target = connector_target.clone();
                let tls = tls.clone();
                async move {
                    open(&target, tls.as_ref(), carries_keys)
                        .await
                        .map(TokioIo::new)
                }
            }))
            .await
            .map_err(|e| CliError::Connect {
                target: args.connect.clone(),
                // The cause, without tonic's generic "transport error".
                reason: causes(String::new(), std::error::Error::source(&e).or(Some(&e))),
                hint: if is_tls(&e) {
                    " (check --ca-file and --tls-server-name)"
                } else {
                    "; is the daemon running?"
                },
            })?;
        Ok(Self {
            channel,
            token,
            target: args.connect.clone(),
            tls: with_tls,
        })
    }

    /// The address the client is connected to, as given.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Translates the gRPC status of a call. A failure below gRPC on a connection without
    /// TLS may be a TLS listener, so that is suggested.
    pub fn error(&self, status: &tonic::Status) -> CliError {
        match CliError::from_status(status) {
            CliError::Rpc { code, message, .. }
                if !self.tls && std::error::Error::source(status).is_some() =>
            {
                CliError::Rpc {
                    code,
                    message,
                    hint: " (if the daemon's listener uses TLS, pass --ca-file)",
                }
            }
            other => other,
        }
    }

    /// `message` as a request carrying `authorization: Bearer <admin token>`.
    pub fn request<T>(&self, message: T) -> Result<tonic::Request<T>, CliError> {
        let mut request = tonic::Request::new(message);
        let Some(token) = &self.token else {
            return Ok(request);
        };
        let header = Zeroizing::new(format!("Bearer {}", token.as_str()));
        let mut value =
            tonic::metadata::MetadataValue::try_from(header.as_str()).map_err(|_| {
                CliError::Local("the admin token holds characters a header cannot carry".into())
            })?;
        value.set_sensitive(true);
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }

    pub fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel.clone())
    }

    /// The backend API, for commands that present a backend token (`selftest`).
    pub fn backup(&self) -> BackupServiceClient<Channel> {
        BackupServiceClient::new(self.channel.clone())
    }

    pub fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_host_port_http_https_or_unix() {
        let tcp = |s: &str| Target::Tcp(s.into());
        for (given, expected) in [
            ("127.0.0.1:7450", tcp("127.0.0.1:7450")),
            ("[::1]:7450", tcp("[::1]:7450")),
            ("vault.internal:443", tcp("vault.internal:443")),
            (
                "http://127.0.0.1:7450",
                Target::Http("127.0.0.1:7450".into()),
            ),
            (
                "HTTP://127.0.0.1:7450/",
                Target::Http("127.0.0.1:7450".into()),
            ),
            (
                "https://vault.internal:7450",
                Target::Https("vault.internal:7450".into()),
            ),
            ("https://[::1]:7450/", Target::Https("[::1]:7450".into())),
            (
                "unix:/run/sharevault/grpc.sock",
                Target::Unix("/run/sharevault/grpc.sock".into()),
            ),
        ] {
            assert_eq!(Target::parse(given).unwrap(), expected, "{given}");
        }
        assert_eq!(
            Target::parse("https://[::1]:7450").unwrap().host(),
            Some("::1")
        );
        assert_eq!(
            Target::parse("https://vault.internal:7450").unwrap().host(),
            Some("vault.internal")
        );
        for bad in [
            "localhost",
            ":7450",
            "host:port",
            "unix:",
            "http://127.0.0.1",
            "http://127.0.0.1:7450/v1/status",
            "grpc://127.0.0.1:7450",
            "https://:7450",
        ] {
            let err = Target::parse(bad).unwrap_err().to_string();
            assert!(
                err.contains(&format!("--connect `{bad}`")) && err.ends_with(CONNECT_FORMS),
                "{bad}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn a_new_key_goes_in_clear_only_to_this_hosts_loopback() {
        for on_host in [
            "127.0.0.1:7450",
            "127.0.0.2:7450",
            "[::1]:7450",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(stays_on_host(on_host.parse().unwrap()), "{on_host}");
        }
        for off_host in [
            "192.0.2.7:7450",
            "[2001:db8::1]:7450",
            "[::ffff:10.0.0.1]:1",
        ] {
            assert!(!stays_on_host(off_host.parse().unwrap()), "{off_host}");
        }
        async fn checked(target: &str) -> Result<(), CliError> {
            check_keys_stay_on_host(&Target::parse(target).unwrap(), target).await
        }
        let err = checked("http://192.0.2.7:7450").await.unwrap_err();
        assert!(err.to_string().contains("nothing was sent"), "{err}");
        assert!(checked("192.0.2.7:7450").await.is_err());
        assert!(checked("127.0.0.1:7450").await.is_ok());
        assert!(checked("unix:/run/sharevault.sock").await.is_ok());
        // https:// is TLS: any host will do.
        assert!(checked("https://192.0.2.7:7450").await.is_ok());
    }

    #[test]
    fn grpc_errors_read_as_code_and_message() {
        let err = CliError::from_status(&tonic::Status::not_found("no token named x"));
        assert_eq!(err.to_string(), "not found: no token named x");
        let err = CliError::from_status(&tonic::Status::unauthenticated("invalid token"));
        assert!(
            err.to_string()
                .starts_with("unauthenticated: invalid token (check"),
            "{err}"
        );
    }

    #[test]
    fn the_token_file_is_trimmed_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-token");
        std::fs::write(&path, "svt_secret-value-0123456789\n").unwrap();
        assert_eq!(
            admin_token(Some(&path)).unwrap().as_str(),
            "svt_secret-value-0123456789"
        );
        let err = admin_token(Some(&dir.path().join("missing"))).unwrap_err();
        assert!(err.to_string().contains("cannot read admin token file"));
    }
}
