//! Configuration: a TOML file, `SHAREVAULT_*` environment variables and flags, flags winning.
//!
//! Everything is validated before any port is bound. Secrets are referenced by file path only.

use crate::seal::{Pkcs11Settings, SealKind, WrapMechanism};
use crate::validate::Limits;
use crate::validate::MAX_SECRET_LIMIT;
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Where a listener binds: `HOST:PORT` or `unix:/path/to.sock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!("`{s}`: a unix socket path must be absolute"));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        s.parse()
            .map(ListenAddr::Tcp)
            .map_err(|_| format!("`{s}` is neither HOST:PORT (an IP address) nor unix:/path"))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// When the audit event of a read becomes durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ReadAudit {
    /// Before the read is answered.
    Durable,
    /// Within 100 ms after the read is answered.
    Deferred,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The settings of `sharevault serve`, as flags and environment variables, or as keys of a
/// TOML config file (unknown keys are refused).
#[derive(Debug, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (snake_case names) [default: none].
    #[arg(long, env = "SHAREVAULT_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// PostgreSQL database to keep the vault in instead of the embedded one:
    /// `postgres://USER@HOST:PORT/DB`, with `?sslmode=verify-full&sslrootcert=CA.pem` for a
    /// server that is not on this host; never with a password [default: none].
    #[arg(long, env = "SHAREVAULT_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// File holding the PostgreSQL password (mode 0600) [default: the systemd credential
    /// `database-password`, if any].
    #[arg(long, env = "SHAREVAULT_DATABASE_PASSWORD_FILE", value_name = "FILE")]
    pub database_password_file: Option<PathBuf>,
    /// Directory of the database, created with mode 0700; locked (`flock`) by the daemon for
    /// its whole run [default: ./sharevault-data].
    #[arg(long, env = "SHAREVAULT_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Start a new, empty vault even though the data dir holds a vault's other files (its
    /// journals, or secrets generated there) but no database; without it such a start is
    /// refused ("the database is missing"). Only a flag: never in the config file
    /// [default: off].
    #[arg(long)]
    #[serde(skip)]
    pub init: bool,
    /// Private listener (gRPC and the JSON API): HOST:PORT or unix:/path
    /// [default: 127.0.0.1:7450].
    #[arg(long, env = "SHAREVAULT_GRPC_LISTEN", value_name = "ADDR")]
    pub grpc_listen: Option<String>,
    /// Public webhook listener (HTTP): HOST:PORT, unix:/path, or `none` [default: 127.0.0.1:7451].
    #[arg(long, env = "SHAREVAULT_HTTP_LISTEN", value_name = "ADDR")]
    pub http_listen: Option<String>,
    /// Path the webhook base URL carries, e.g. `/webhook` [default: none].
    #[arg(long, env = "SHAREVAULT_WEBHOOK_PATH_PREFIX", value_name = "PATH")]
    pub webhook_path_prefix: Option<String>,
    /// Also answer `/backup/fetch` with the legacy single `backupShare` field (the latest
    /// share) [default: false].
    #[arg(long, env = "SHAREVAULT_WEBHOOK_LEGACY_BACKUP_SHARE", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub webhook_legacy_backup_share: Option<bool>,
    /// Networks allowed to call the webhook (comma-separated CIDRs); on the public listener a
    /// connection from elsewhere (not a trusted proxy) is closed when accepted, before TLS,
    /// health included [default: any].
    #[arg(
        long,
        env = "SHAREVAULT_WEBHOOK_ALLOW_CIDRS",
        value_delimiter = ',',
        value_name = "CIDRS"
    )]
    pub webhook_allow_cidrs: Option<Vec<String>>,
    /// Also serve the webhook over gRPC (`sharevault.v1.WebhookService`) on the private
    /// listener, to the sources the webhook allow-list admits by their own address; Portal
    /// calls only the HTTP webhook [default: false].
    #[arg(long, env = "SHAREVAULT_GRPC_WEBHOOK", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub grpc_webhook: Option<bool>,
    /// Proxies (CIDRs) whose `X-Forwarded-For` header names the real client, on both
    /// listeners; they are exempt from the per-source connection limit [default: none].
    #[arg(
        long,
        env = "SHAREVAULT_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_name = "CIDRS"
    )]
    pub trusted_proxies: Option<Vec<String>>,
    /// PEM certificate chain for TLS on the webhook listener, given with its key
    /// [default: none].
    #[arg(long, env = "SHAREVAULT_HTTP_TLS_CERT_FILE", value_name = "FILE")]
    pub http_tls_cert_file: Option<PathBuf>,
    /// PEM private key for TLS on the webhook listener [default: none].
    #[arg(long, env = "SHAREVAULT_HTTP_TLS_KEY_FILE", value_name = "FILE")]
    pub http_tls_key_file: Option<PathBuf>,
    /// PEM certificate chain for TLS on the gRPC/API listener, given with its key
    /// [default: none].
    #[arg(long, env = "SHAREVAULT_GRPC_TLS_CERT_FILE", value_name = "FILE")]
    pub grpc_tls_cert_file: Option<PathBuf>,
    /// PEM private key for TLS on the gRPC/API listener [default: none].
    #[arg(long, env = "SHAREVAULT_GRPC_TLS_KEY_FILE", value_name = "FILE")]
    pub grpc_tls_key_file: Option<PathBuf>,
    /// Seconds a request may take (1-60): HTTP requests still running after this are
    /// answered 503, gRPC calls DEADLINE_EXCEEDED [default: 8].
    #[arg(
        long,
        env = "SHAREVAULT_REQUEST_TIMEOUT_SECONDS",
        value_name = "SECONDS"
    )]
    pub request_timeout_seconds: Option<u64>,
    /// Largest accepted HTTP request body, in bytes [default: 262144].
    #[arg(long, env = "SHAREVAULT_MAX_REQUEST_BYTES", value_name = "BYTES")]
    pub max_request_bytes: Option<usize>,
    /// File holding the 256-bit master key (64 hex characters) [default: the systemd
    /// credential `master-key`, else `master-key` in the data dir, generated at the first
    /// start of a new vault].
    #[arg(long, env = "SHAREVAULT_MASTER_KEY_FILE", value_name = "FILE")]
    pub master_key_file: Option<PathBuf>,
    /// Where the root key (the master key) is kept: `file` (--master-key-file, a systemd
    /// credential, or the data dir) or `pkcs11` (sealed by a PKCS#11 token's key) [default: file].
    #[arg(long, env = "SHAREVAULT_SEAL", value_enum)]
    pub seal: Option<SealKind>,
    /// The PKCS#11 library of the token (`.so`); the module and the two labels are given
    /// together, and required by the pkcs11 seal [default: none].
    #[arg(long, env = "SHAREVAULT_PKCS11_MODULE", value_name = "FILE")]
    pub pkcs11_module: Option<PathBuf>,
    /// The label of the PKCS#11 token [default: none].
    #[arg(long, env = "SHAREVAULT_PKCS11_TOKEN_LABEL", value_name = "LABEL")]
    pub pkcs11_token_label: Option<String>,
    /// The label of the token's AES-256 key that seals the root key [default: none].
    #[arg(long, env = "SHAREVAULT_PKCS11_KEY_LABEL", value_name = "LABEL")]
    pub pkcs11_key_label: Option<String>,
    /// File holding the token's user PIN [default: the `pkcs11-pin` systemd credential].
    #[arg(long, env = "SHAREVAULT_PKCS11_PIN_FILE", value_name = "FILE")]
    pub pkcs11_pin_file: Option<PathBuf>,
    /// How the token encrypts the root key: `aes-gcm` (CKM_AES_GCM), or `cloudkms-aes-gcm`
    /// for Google Cloud KMS's PKCS#11 library [default: aes-gcm].
    #[arg(long, env = "SHAREVAULT_PKCS11_MECHANISM", value_enum)]
    pub pkcs11_mechanism: Option<WrapMechanism>,
    /// Seconds between checks that the token still answers, under the pkcs11 seal (1-3600)
    /// [default: 30].
    #[arg(long, env = "SHAREVAULT_SEAL_CHECK_SECONDS", value_name = "SECONDS")]
    pub seal_check_seconds: Option<u64>,
    /// Local admin socket: the private API for the daemon's own user and root, where the
    /// AdminService needs no token [default: none].
    #[arg(long, env = "SHAREVAULT_ADMIN_SOCKET", value_name = "PATH")]
    pub admin_socket: Option<PathBuf>,
    /// File holding the previous master key, needed only to finish an interrupted rotation
    /// [default: none].
    #[arg(long, env = "SHAREVAULT_OLD_MASTER_KEY_FILE", value_name = "FILE")]
    pub old_master_key_file: Option<PathBuf>,
    /// File holding the webhook secrets, one per line, each of at least 16 characters
    /// [default: the systemd credential `webhook-secret`, else `webhook-secret` in the data
    /// dir, generated at the first start].
    #[arg(long, env = "SHAREVAULT_WEBHOOK_SECRET_FILE", value_name = "FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    /// File holding the admin token, of at least 16 characters [default: the systemd
    /// credential `admin-token`, else `admin-token` in the data dir, generated at the first
    /// start].
    #[arg(long, env = "SHAREVAULT_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Largest accepted custodian share, in bytes, at most 1 MiB [default: 65536].
    #[arg(long, env = "SHAREVAULT_MAX_SHARE_BYTES", value_name = "BYTES")]
    pub max_share_bytes: Option<usize>,
    /// Largest accepted client cipherText, in bytes, at most 1 MiB [default: 65536].
    #[arg(long, env = "SHAREVAULT_MAX_CIPHER_TEXT_BYTES", value_name = "BYTES")]
    pub max_cipher_text_bytes: Option<usize>,
    /// Replaced custodian shares and cipherTexts kept per key, at least, whatever their age
    /// [default: 5].
    #[arg(long, env = "SHAREVAULT_KEEP_VERSIONS", value_name = "N")]
    pub keep_versions: Option<u32>,
    /// Also keep every version replaced less than this many days ago [default: 90].
    #[arg(long, env = "SHAREVAULT_KEEP_VERSIONS_DAYS", value_name = "DAYS")]
    pub keep_versions_days: Option<u32>,
    /// But never more versions than this per key, at least `keep_versions` [default: 100].
    #[arg(long, env = "SHAREVAULT_MAX_VERSIONS", value_name = "N")]
    pub max_versions: Option<u32>,
    /// Nor more versions than this per client, across all its keys, at least
    /// `max_versions`; the newest completed version of each key that holds a share stays
    /// whatever the limits [default: 200].
    #[arg(long, env = "SHAREVAULT_MAX_VERSIONS_PER_CLIENT", value_name = "N")]
    pub max_versions_per_client: Option<u32>,
    /// Failed authentications allowed per source address (IPv6: per /64), and per credential, within the
    /// window before further attempts are refused (429 / RESOURCE_EXHAUSTED); 0 disables
    /// [default: 20].
    #[arg(long, env = "SHAREVAULT_AUTH_FAILURE_LIMIT", value_name = "N")]
    pub auth_failure_limit: Option<u32>,
    /// The window of the failure limit, in seconds [default: 60].
    #[arg(
        long,
        env = "SHAREVAULT_AUTH_FAILURE_WINDOW_SECONDS",
        value_name = "SECONDS"
    )]
    pub auth_failure_window_seconds: Option<u64>,
    /// Most delay added to the answer of a failed authentication past the failure limit, in
    /// milliseconds: 100 ms more per failure past the limit, up to this (at most 10000); 0
    /// answers at once [default: 2000].
    #[arg(long, env = "SHAREVAULT_AUTH_FAILURE_MAX_DELAY_MS", value_name = "MS")]
    pub auth_failure_max_delay_ms: Option<u64>,
    /// Most open connections per listener [default: 1024].
    #[arg(long, env = "SHAREVAULT_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most open connections per source address (IPv6: per /64) on each listener; more are
    /// closed at once; at least `max_connections` means no limit per source. Trusted proxies
    /// are exempt [default: max_connections / 16 (64), at least 1, so that no fewer than 16
    /// sources can fill a listener].
    #[arg(long, env = "SHAREVAULT_MAX_CONNECTIONS_PER_SOURCE", value_name = "N")]
    pub max_connections_per_source: Option<usize>,
    /// Seconds a connection may stay open with no request in it before it is closed
    /// (HTTP/2 GOAWAY), 1-3600 [default: 60].
    #[arg(
        long,
        env = "SHAREVAULT_CONNECTION_IDLE_SECONDS",
        value_name = "SECONDS"
    )]
    pub connection_idle_seconds: Option<u64>,
    /// Most requests in flight per listener; more are answered 503 at once [default: 256].
    #[arg(long, env = "SHAREVAULT_MAX_IN_FLIGHT", value_name = "N")]
    pub max_in_flight: Option<usize>,
    /// When the audit event of a read of share material is made durable: `durable` before the
    /// answer, or `deferred` within 100 ms after it (reads then need no fsync) [default: durable].
    #[arg(long, env = "SHAREVAULT_READ_AUDIT", value_enum)]
    pub read_audit: Option<ReadAudit>,
    /// Memory for the database's page cache, in bytes [default: 50331648]. The daemon's
    /// resident memory is about twice this plus 40 MiB under load.
    #[arg(long, env = "SHAREVAULT_CACHE_BYTES", value_name = "BYTES")]
    pub cache_bytes: Option<usize>,
    /// Deprecated, ignored: the page journals it sized are gone (the database is made
    /// durable by its redo log, `sharevault.redb.log`, docs/design.md#durability)
    /// [default: ignored].
    #[arg(
        long,
        env = "SHAREVAULT_JOURNAL_BYTES",
        value_name = "BYTES",
        hide = true
    )]
    pub journal_bytes: Option<u64>,
    /// Deprecated, ignored: every restart after a crash is quick (redb opens at its last
    /// checkpoint, which records its allocator state, and the log is replayed)
    /// [default: ignored].
    #[arg(long, env = "SHAREVAULT_QUICK_REPAIR", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", hide = true)]
    pub quick_repair: Option<bool>,
    /// Keep at most this many audit events; older ones are written to `audit_archive_dir` and
    /// then pruned, leaving a signed anchor [default: 0, keep all].
    #[arg(long, env = "SHAREVAULT_AUDIT_RETAIN_EVENTS", value_name = "N")]
    pub audit_retain_events: Option<u64>,
    /// Keep audit events for this many days; older ones are written to `audit_archive_dir`
    /// and then pruned [default: 0, keep all].
    #[arg(long, env = "SHAREVAULT_AUDIT_RETAIN_DAYS", value_name = "DAYS")]
    pub audit_retain_days: Option<u64>,
    /// Directory that receives the audit events pruned by a retention setting, one JSON-lines
    /// file per pruned range, each fsynced before its events are deleted (an absolute path,
    /// required with a retention setting; outside the data dir, so that the data dir stays
    /// bounded) [default: none].
    #[arg(long, env = "SHAREVAULT_AUDIT_ARCHIVE_DIR", value_name = "DIR")]
    pub audit_archive_dir: Option<PathBuf>,
    /// Seconds between two prunes of the audit trail under a retention setting (1-86400)
    /// [default: 60].
    #[arg(
        long,
        env = "SHAREVAULT_AUDIT_PRUNE_INTERVAL_SECONDS",
        value_name = "SECONDS"
    )]
    pub audit_prune_interval_seconds: Option<u64>,
    /// Refuse writes while less than this many bytes are free on the data dir's filesystem
    /// [default: 67108864].
    #[arg(long, env = "SHAREVAULT_MIN_FREE_DISK_BYTES", value_name = "BYTES")]
    pub min_free_disk_bytes: Option<u64>,
    /// Seconds that in-flight calls get to finish on shutdown [default: 10].
    #[arg(
        long,
        env = "SHAREVAULT_SHUTDOWN_GRACE_SECONDS",
        value_name = "SECONDS"
    )]
    pub shutdown_grace_seconds: Option<u64>,
    /// Format of the log lines on stderr; `RUST_LOG` sets the level [default: text].
    #[arg(long, env = "SHAREVAULT_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

/// The settings a config file may hold: the same as the flags, by their snake_case names,
/// but for `config` itself.
type FileConfig = ServeArgs;

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub data_dir: PathBuf,
    /// A new vault is meant in this data dir, whatever it holds (`--init`).
    pub init: bool,
    /// The PostgreSQL database, if the vault lives there rather than in the data dir.
    pub database: Option<crate::store::postgres::PgSettings>,
    pub database_password_file: Option<PathBuf>,
    pub grpc_listen: ListenAddr,
    /// The public webhook listener; `None` when disabled.
    pub http_listen: Option<ListenAddr>,
    pub webhook: WebhookConfig,
    pub http_tls: Option<TlsFiles>,
    pub grpc_tls: Option<TlsFiles>,
    pub request_timeout: Duration,
    pub max_request_bytes: usize,
    pub master_key_file: Option<PathBuf>,
    pub old_master_key_file: Option<PathBuf>,
    /// Where the root key is kept.
    pub seal: SealKind,
    /// The token, when its settings are given (required by the pkcs11 seal).
    pub pkcs11: Option<Pkcs11Settings>,
    /// How often the pkcs11 seal's token is checked.
    pub seal_check_interval: Duration,
    pub admin_socket: Option<PathBuf>,
    pub webhook_secret_file: Option<PathBuf>,
    pub admin_token_file: Option<PathBuf>,
    pub limits: Limits,
    pub shutdown_grace: Duration,
    pub min_free_disk_bytes: u64,
    pub read_audit: ReadAudit,
    pub cache_bytes: usize,
    /// Which replaced shares are kept as versions.
    pub versions: crate::vault::versions::Retention,
    /// Settings given that no longer do anything (the daemon warns at start).
    pub deprecated: Vec<&'static str>,
    /// Pruning of the audit trail; `None` keeps every event.
    pub audit_retention: Option<crate::audit::Retention>,
    pub auth_failure_limit: u32,
    pub auth_failure_window: Duration,
    /// The longest a failure past the limit is held back.
    pub auth_failure_max_delay: Duration,
    pub limits_per_listener: ListenerLimits,
    pub log_format: LogFormat,
}

/// How many sources, at the default per-source limit, it takes to fill a listener's
/// connections: each may hold `max_connections / SOURCES_TO_FILL` (at least one). A handful of
/// addresses (a small cloud allocation, a few IPv6 /64s) cannot take a listener, and Portal's
/// three egress addresses keep 64 connections each at the default 1024.
pub const SOURCES_TO_FILL: usize = 16;

/// Limits each listener enforces on its own, so that a flood on one does not starve another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    pub max_connections: usize,
    /// Open connections one source (an IPv4 address, an IPv6 /64) may hold.
    pub max_connections_per_source: usize,
    pub max_in_flight: usize,
    /// How long a connection may stay open with no request in it.
    pub connection_idle: Duration,
}

/// A PEM certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How the public webhook listener behaves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WebhookConfig {
    /// Empty, or a path such as `/webhook` that the routes sit under.
    pub path_prefix: String,
    /// Add the legacy `backupShare` field to `/backup/fetch` answers.
    pub legacy_backup_share: bool,
    /// Networks allowed to call the webhook routes; empty allows any.
    pub allow: Vec<ipnet::IpNet>,
    /// Whether the private listener also serves the webhook over gRPC.
    pub grpc: bool,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

fn cidrs(name: &str, values: Option<Vec<String>>) -> Result<Vec<ipnet::IpNet>, String> {
    values
        .unwrap_or_default()
        .iter()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse::<ipnet::IpNet>()
                .or_else(|_| v.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("{name}: `{v}` is not an IP address or CIDR"))
        })
        .collect()
}

fn tls_files(
    name: &str,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Option<TlsFiles>, String> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key })),
        _ => Err(format!(
            "{name}_tls_cert_file and {name}_tls_key_file must be given together"
        )),
    }
}

fn path_prefix(value: Option<String>) -> Result<String, String> {
    let prefix = value.unwrap_or_default();
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return Ok(String::new());
    }
    if !prefix.starts_with('/')
        || prefix.contains("//")
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b))
    {
        return Err(format!(
            "webhook_path_prefix: `{prefix}` must start with / and hold only letters, digits, / - _ ."
        ));
    }
    Ok(prefix.to_owned())
}

/// The token's settings: all three of module, token label and key label, or none.
fn pkcs11_settings(args: &ServeArgs, file: &FileConfig) -> Result<Option<Pkcs11Settings>, String> {
    let module = args.pkcs11_module.clone().or(file.pkcs11_module.clone());
    let token = args
        .pkcs11_token_label
        .clone()
        .or(file.pkcs11_token_label.clone());
    let key = args
        .pkcs11_key_label
        .clone()
        .or(file.pkcs11_key_label.clone());
    let pin_file = args
        .pkcs11_pin_file
        .clone()
        .or(file.pkcs11_pin_file.clone());
    match (module, token, key) {
        (None, None, None) => Ok(None),
        (Some(module), Some(token_label), Some(key_label)) => {
            // A token label fills at most the 32 bytes of its field; a key label is a length
            // byte of the sealed root key.
            for (name, label, max) in [
                ("pkcs11_token_label", &token_label, 32),
                ("pkcs11_key_label", &key_label, 255),
            ] {
                if label.is_empty() || label.len() > max {
                    return Err(format!("{name} must be 1 to {max} bytes"));
                }
            }
            Ok(Some(Pkcs11Settings {
                module,
                token_label,
                key_label,
                pin_file,
                mechanism: args
                    .pkcs11_mechanism
                    .or(file.pkcs11_mechanism)
                    .unwrap_or_default(),
            }))
        }
        _ => Err(
            "pkcs11_module, pkcs11_token_label and pkcs11_key_label must be given together".into(),
        ),
    }
}

impl Config {
    /// Merges defaults, the config file, the environment and flags, then validates.
    pub fn load(args: &ServeArgs) -> Result<Self, String> {
        let file = match &args.config {
            Some(path) => read_file_config(path)?,
            None => FileConfig::default(),
        };
        let pkcs11 = pkcs11_settings(args, &file)?;
        let limits = Limits {
            max_share_bytes: args
                .max_share_bytes
                .or(file.max_share_bytes)
                .unwrap_or(Limits::default().max_share_bytes),
            max_cipher_text_bytes: args
                .max_cipher_text_bytes
                .or(file.max_cipher_text_bytes)
                .unwrap_or(Limits::default().max_cipher_text_bytes),
        };
        for (name, value) in [
            ("max_share_bytes", limits.max_share_bytes),
            ("max_cipher_text_bytes", limits.max_cipher_text_bytes),
        ] {
            if value == 0 || value > MAX_SECRET_LIMIT {
                return Err(format!("{name} must be between 1 and {MAX_SECRET_LIMIT}"));
            }
        }
        let defaults = crate::vault::versions::Retention::default();
        let versions = crate::vault::versions::Retention {
            keep: args
                .keep_versions
                .or(file.keep_versions)
                .unwrap_or(defaults.keep),
            keep_days: args
                .keep_versions_days
                .or(file.keep_versions_days)
                .unwrap_or(defaults.keep_days),
            max: args
                .max_versions
                .or(file.max_versions)
                .unwrap_or(defaults.max),
            max_per_client: args
                .max_versions_per_client
                .or(file.max_versions_per_client)
                .unwrap_or(defaults.max_per_client),
        };
        if versions.max < versions.keep {
            return Err(format!(
                "max_versions ({}) must be at least keep_versions ({})",
                versions.max, versions.keep
            ));
        }
        if versions.max_per_client < versions.max {
            return Err(format!(
                "max_versions_per_client ({}) must be at least max_versions ({})",
                versions.max_per_client, versions.max
            ));
        }
        let grpc_listen = args
            .grpc_listen
            .clone()
            .or(file.grpc_listen)
            .unwrap_or_else(|| "127.0.0.1:7450".into())
            .parse()
            .map_err(|e| format!("grpc_listen: {e}"))?;
        let http_listen = match args
            .http_listen
            .clone()
            .or(file.http_listen)
            .unwrap_or_else(|| "127.0.0.1:7451".into())
        {
            off if off == "none" => None,
            addr => Some(addr.parse().map_err(|e| format!("http_listen: {e}"))?),
        };
        let webhook = WebhookConfig {
            path_prefix: path_prefix(
                args.webhook_path_prefix
                    .clone()
                    .or(file.webhook_path_prefix),
            )?,
            legacy_backup_share: args
                .webhook_legacy_backup_share
                .or(file.webhook_legacy_backup_share)
                .unwrap_or(false),
            allow: cidrs(
                "webhook_allow_cidrs",
                args.webhook_allow_cidrs
                    .clone()
                    .or(file.webhook_allow_cidrs),
            )?,
            trusted_proxies: cidrs(
                "trusted_proxies",
                args.trusted_proxies.clone().or(file.trusted_proxies),
            )?,
            grpc: args.grpc_webhook.or(file.grpc_webhook).unwrap_or(false),
        };
        let request_timeout = args
            .request_timeout_seconds
            .or(file.request_timeout_seconds)
            .unwrap_or(8);
        if request_timeout == 0 || request_timeout > 60 {
            return Err("request_timeout_seconds must be between 1 and 60".into());
        }
        let max_request_bytes = args
            .max_request_bytes
            .or(file.max_request_bytes)
            .unwrap_or(256 * 1024);
        if !(1024..=16 * MAX_SECRET_LIMIT).contains(&max_request_bytes) {
            return Err(format!(
                "max_request_bytes must be between 1024 and {}",
                16 * MAX_SECRET_LIMIT
            ));
        }
        let admin_socket = match args.admin_socket.clone().or(file.admin_socket) {
            Some(path) if !path.is_absolute() => {
                return Err("admin_socket must be an absolute path".into());
            }
            other => other,
        };
        let max_connections = args
            .max_connections
            .or(file.max_connections)
            .unwrap_or(1024)
            .max(1);
        // More than max_connections means no limit per source.
        let max_connections_per_source = match args
            .max_connections_per_source
            .or(file.max_connections_per_source)
        {
            Some(0) => return Err("max_connections_per_source must be at least 1".into()),
            Some(n) => n.min(max_connections),
            None => (max_connections / SOURCES_TO_FILL).max(1),
        };
        let connection_idle = args
            .connection_idle_seconds
            .or(file.connection_idle_seconds)
            .unwrap_or(60);
        if !(1..=3600).contains(&connection_idle) {
            return Err("connection_idle_seconds must be between 1 and 3600".into());
        }
        let limits_per_listener = ListenerLimits {
            max_connections,
            max_connections_per_source,
            max_in_flight: args
                .max_in_flight
                .or(file.max_in_flight)
                .unwrap_or(256)
                .max(1),
            connection_idle: Duration::from_secs(connection_idle),
        };
        let auth_failure_max_delay = args
            .auth_failure_max_delay_ms
            .or(file.auth_failure_max_delay_ms)
            .unwrap_or(2000);
        if auth_failure_max_delay > 10_000 {
            return Err("auth_failure_max_delay_ms must be at most 10000".into());
        }
        let seal = args.seal.or(file.seal).unwrap_or_default();
        let master_key_file = args.master_key_file.clone().or(file.master_key_file);
        let old_master_key_file = args
            .old_master_key_file
            .clone()
            .or(file.old_master_key_file);
        if seal == SealKind::Pkcs11 {
            if pkcs11.is_none() {
                return Err("seal = pkcs11 needs pkcs11_module, pkcs11_token_label and \
                            pkcs11_key_label"
                    .into());
            }
            if master_key_file.is_some() || old_master_key_file.is_some() {
                return Err("seal = pkcs11 keeps the root key sealed in the database: \
                            master_key_file and old_master_key_file are for seal = file"
                    .into());
            }
        }
        let seal_check = args
            .seal_check_seconds
            .or(file.seal_check_seconds)
            .unwrap_or(30);
        if !(1..=3600).contains(&seal_check) {
            return Err("seal_check_seconds must be between 1 and 3600".into());
        }
        let database = args
            .database_url
            .clone()
            .or(file.database_url)
            .map(|url| crate::store::postgres::PgSettings::parse(&url))
            .transpose()?;
        Ok(Self {
            seal,
            pkcs11,
            seal_check_interval: Duration::from_secs(seal_check),
            database,
            database_password_file: args
                .database_password_file
                .clone()
                .or(file.database_password_file),
            admin_socket,
            http_listen,
            webhook,
            http_tls: tls_files(
                "http",
                args.http_tls_cert_file.clone().or(file.http_tls_cert_file),
                args.http_tls_key_file.clone().or(file.http_tls_key_file),
            )?,
            grpc_tls: tls_files(
                "grpc",
                args.grpc_tls_cert_file.clone().or(file.grpc_tls_cert_file),
                args.grpc_tls_key_file.clone().or(file.grpc_tls_key_file),
            )?,
            request_timeout: Duration::from_secs(request_timeout),
            max_request_bytes,
            init: args.init,
            data_dir: args
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("./sharevault-data")),
            grpc_listen,
            master_key_file,
            old_master_key_file,
            webhook_secret_file: args
                .webhook_secret_file
                .clone()
                .or(file.webhook_secret_file),
            admin_token_file: args.admin_token_file.clone().or(file.admin_token_file),
            limits,
            shutdown_grace: Duration::from_secs(
                args.shutdown_grace_seconds
                    .or(file.shutdown_grace_seconds)
                    .unwrap_or(10),
            ),
            min_free_disk_bytes: args
                .min_free_disk_bytes
                .or(file.min_free_disk_bytes)
                .unwrap_or(64 * 1024 * 1024),
            read_audit: args
                .read_audit
                .or(file.read_audit)
                .unwrap_or(ReadAudit::Durable),
            versions,
            cache_bytes: args
                .cache_bytes
                .or(file.cache_bytes)
                .unwrap_or(48 * 1024 * 1024)
                .max(1024 * 1024),
            deprecated: [
                (
                    args.journal_bytes.or(file.journal_bytes).is_some(),
                    "journal_bytes",
                ),
                (
                    args.quick_repair.or(file.quick_repair).is_some(),
                    "quick_repair",
                ),
            ]
            .into_iter()
            .filter_map(|(given, name)| given.then_some(name))
            .collect(),
            audit_retention: audit_retention(
                args.audit_retain_events.or(file.audit_retain_events),
                args.audit_retain_days.or(file.audit_retain_days),
                args.audit_archive_dir.clone().or(file.audit_archive_dir),
                args.audit_prune_interval_seconds
                    .or(file.audit_prune_interval_seconds),
            )?,
            auth_failure_limit: args
                .auth_failure_limit
                .or(file.auth_failure_limit)
                .unwrap_or(20),
            auth_failure_window: Duration::from_secs(
                args.auth_failure_window_seconds
                    .or(file.auth_failure_window_seconds)
                    .unwrap_or(60)
                    .max(1),
            ),
            auth_failure_max_delay: Duration::from_millis(auth_failure_max_delay),
            limits_per_listener,
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
        })
    }
}

/// The audit retention: off unless a count or an age is set, and then only with an archive
/// dir, so that no event is pruned without a copy.
fn audit_retention(
    events: Option<u64>,
    days: Option<u64>,
    archive_dir: Option<PathBuf>,
    interval_seconds: Option<u64>,
) -> Result<Option<crate::audit::Retention>, String> {
    let keep_events = events.filter(|&n| n > 0);
    let keep_age = days
        .filter(|&d| d > 0)
        .map(|d| Duration::from_secs(d.saturating_mul(86_400)));
    if keep_events.is_none() && keep_age.is_none() {
        return Ok(None);
    }
    let archive_dir = archive_dir.ok_or(
        "audit_retain_events and audit_retain_days need audit_archive_dir: pruned events are \
         written there before they are deleted",
    )?;
    if !archive_dir.is_absolute() {
        return Err("audit_archive_dir must be an absolute path".into());
    }
    let interval = Duration::from_secs(interval_seconds.unwrap_or(60));
    if interval.is_zero() || interval > Duration::from_secs(86_400) {
        return Err("audit_prune_interval_seconds must be between 1 and 86400".into());
    }
    Ok(Some(crate::audit::Retention {
        keep_events,
        keep_age,
        archive_dir,
        interval,
    }))
}

fn read_file_config(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sharevault.toml");
        std::fs::write(
            &path,
            "data_dir = \"/var/lib/sharevault\"\ngrpc_listen = \"127.0.0.1:9000\"\nmax_share_bytes = 1000\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            grpc_listen: Some("unix:/run/sharevault.sock".into()),
            ..ServeArgs::default()
        };
        let config = Config::load(&args).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/sharevault"));
        assert_eq!(
            config.grpc_listen,
            ListenAddr::Unix("/run/sharevault.sock".into())
        );
        assert_eq!(config.limits.max_share_bytes, 1000);
        assert_eq!(config.limits.max_cipher_text_bytes, 65536);
        assert_eq!(config.http_listen, Some("127.0.0.1:7451".parse().unwrap()));
    }

    #[test]
    fn webhook_settings_are_parsed_and_checked() {
        let args = ServeArgs {
            http_listen: Some("none".into()),
            webhook_path_prefix: Some("/portal/webhook/".into()),
            webhook_allow_cidrs: Some(vec!["35.203.150.117".into(), "10.0.0.0/8".into()]),
            ..ServeArgs::default()
        };
        let config = Config::load(&args).unwrap();
        assert_eq!(config.http_listen, None);
        assert_eq!(config.webhook.path_prefix, "/portal/webhook");
        assert_eq!(config.webhook.allow.len(), 2);
        assert!(!config.webhook.grpc, "the gRPC webhook is off by default");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sharevault.toml");
        std::fs::write(&path, "grpc_webhook = true\n").unwrap();
        let from_file = Config::load(&ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        })
        .unwrap();
        assert!(from_file.webhook.grpc);
        for bad in [
            ServeArgs {
                webhook_path_prefix: Some("webhook".into()),
                ..ServeArgs::default()
            },
            ServeArgs {
                webhook_allow_cidrs: Some(vec!["10.0.0.0/33".into()]),
                ..ServeArgs::default()
            },
            ServeArgs {
                http_tls_cert_file: Some("/c.pem".into()),
                ..ServeArgs::default()
            },
            ServeArgs {
                request_timeout_seconds: Some(0),
                ..ServeArgs::default()
            },
            ServeArgs {
                max_connections_per_source: Some(0),
                ..ServeArgs::default()
            },
            ServeArgs {
                connection_idle_seconds: Some(0),
                ..ServeArgs::default()
            },
            ServeArgs {
                auth_failure_max_delay_ms: Some(10_001),
                ..ServeArgs::default()
            },
        ] {
            assert!(Config::load(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn no_fewer_than_sixteen_sources_fill_a_listener_by_default() {
        for (max, per_source) in [(1024, 64), (64, 4), (8, 1), (1, 1)] {
            let config = Config::load(&ServeArgs {
                max_connections: Some(max),
                ..ServeArgs::default()
            })
            .unwrap();
            let limits = config.limits_per_listener;
            assert_eq!(limits.max_connections_per_source, per_source, "{max}");
            if max >= SOURCES_TO_FILL {
                assert!(limits.max_connections_per_source * (SOURCES_TO_FILL - 1) < max);
            }
        }
    }

    #[test]
    fn the_seal_settings_are_parsed_and_checked() {
        let config = Config::load(&ServeArgs::default()).unwrap();
        assert_eq!(
            (config.seal, config.pkcs11.is_none()),
            (SealKind::File, true)
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sharevault.toml");
        std::fs::write(
            &path,
            "seal = \"pkcs11\"\npkcs11_module = \"/lib/p11.so\"\npkcs11_token_label = \"t\"\n\
             pkcs11_key_label = \"k\"\npkcs11_mechanism = \"cloudkms-aes-gcm\"\n",
        )
        .unwrap();
        let config = Config::load(&ServeArgs {
            config: Some(path.clone()),
            ..ServeArgs::default()
        })
        .unwrap();
        let pkcs11 = config.pkcs11.unwrap();
        assert_eq!(config.seal, SealKind::Pkcs11);
        assert_eq!(pkcs11.key_label, "k");
        assert_eq!(pkcs11.mechanism, WrapMechanism::CloudkmsAesGcm);
        let refused = |args: ServeArgs| Config::load(&args).unwrap_err();
        let err = refused(ServeArgs {
            config: Some(path),
            master_key_file: Some("/etc/sharevault/master-key".into()),
            ..ServeArgs::default()
        });
        assert!(err.contains("master_key_file"), "{err}");
        let err = refused(ServeArgs {
            seal: Some(SealKind::Pkcs11),
            ..ServeArgs::default()
        });
        assert!(err.contains("seal = pkcs11 needs"), "{err}");
        let err = refused(ServeArgs {
            pkcs11_module: Some("/lib/p11.so".into()),
            ..ServeArgs::default()
        });
        assert!(err.contains("given together"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "data_dri = \"/x\"\n").unwrap();
        let err = Config::load(&ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(err.contains("data_dri"), "{err}");
        for bad in ["localhost", "unix:relative.sock", "1.2.3.4"] {
            let args = ServeArgs {
                grpc_listen: Some(bad.into()),
                ..ServeArgs::default()
            };
            assert!(Config::load(&args).is_err(), "{bad}");
        }
        let args = ServeArgs {
            max_share_bytes: Some(0),
            ..ServeArgs::default()
        };
        assert!(Config::load(&args).is_err());
    }

    #[test]
    fn audit_retention_is_off_by_default_and_needs_an_archive_dir() {
        let config = Config::load(&ServeArgs::default()).unwrap();
        assert_eq!(config.audit_retention, None);
        assert!(config.deprecated.is_empty());
        let old = Config::load(&ServeArgs {
            quick_repair: Some(false),
            journal_bytes: Some(0),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(old.deprecated, ["journal_bytes", "quick_repair"]);
        let err = Config::load(&ServeArgs {
            audit_retain_events: Some(1000),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(err.contains("audit_archive_dir"), "{err}");
        let config = Config::load(&ServeArgs {
            audit_retain_days: Some(30),
            audit_archive_dir: Some("/var/lib/sharevault-audit".into()),
            ..ServeArgs::default()
        })
        .unwrap();
        let retention = config.audit_retention.unwrap();
        assert_eq!(retention.keep_events, None);
        assert_eq!(retention.keep_age, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(retention.interval, Duration::from_secs(60));
        for interval in [0, 86_401] {
            let err = Config::load(&ServeArgs {
                audit_retain_events: Some(1000),
                audit_archive_dir: Some("/srv/audit".into()),
                audit_prune_interval_seconds: Some(interval),
                ..ServeArgs::default()
            })
            .unwrap_err();
            assert!(err.contains("audit_prune_interval_seconds"), "{err}");
        }
    }
}
