//! Where the PostgreSQL database is, and how to reach it: the URL, the password, TLS.

use crate::store::StoreError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zeroize::Zeroizing;

/// How the connection to PostgreSQL is protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// No TLS: only for a loopback address or a Unix socket.
    Disable,
    /// TLS, the server's certificate checked against this CA file and its name against the
    /// host (libpq's `sslmode=verify-full`).
    VerifyFull { ca_file: PathBuf },
}

/// A parsed `--database-url`: `postgres://USER@HOST:PORT/DB`, with libpq's `sslmode` and
/// `sslrootcert` as query parameters (`sslmode=verify-full&sslrootcert=/path/ca.pem`, or
/// `sslmode=disable`, the default for a loopback host or a Unix socket). A password in the
/// URL is refused: it would be seen in the process list and the config file; it comes from
/// a file instead ([`PgSettings::with_password`]).
#[derive(Clone)]
pub struct PgSettings {
    config: tokio_postgres::Config,
    pub tls: Tls,
    password: Option<Arc<Zeroizing<Vec<u8>>>>,
    /// Connections each daemon keeps at most.
    pub pool_size: usize,
}

impl fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgSettings")
            .field("url", &self.describe())
            .field("tls", &self.tls)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl PartialEq for PgSettings {
    fn eq(&self, other: &Self) -> bool {
        self.describe() == other.describe()
            && self.tls == other.tls
            && self.password.as_deref() == other.password.as_deref()
    }
}
impl Eq for PgSettings {}

fn is_loopback(host: &tokio_postgres::config::Host) -> bool {
    match host {
        tokio_postgres::config::Host::Unix(_) => true,
        tokio_postgres::config::Host::Tcp(name) => {
            name == "localhost"
                || name
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    }
}

/// The connections a daemon opens at most, unless the URL's `pool_size` says otherwise.
pub const DEFAULT_POOL_SIZE: usize = 8;
const MAX_POOL_SIZE: usize = 1024;

impl PgSettings {
    /// Parses and checks a database URL.
    /// Parses a `postgres://` URL. Besides the driver's parameters it takes `sslmode`
    /// (`verify-full` or `disable`), `sslrootcert` and `pool_size` (the daemon's connections
    /// at most, [`DEFAULT_POOL_SIZE`] unless given).
    pub fn parse(url: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("database_url: {why}");
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, query),
            None => (url, ""),
        };
        if !(base.starts_with("postgres://") || base.starts_with("postgresql://")) {
            return Err(bad("must be postgres://USER@HOST:PORT/DB"));
        }
        let (mut sslmode, mut ca_file, mut pool_size) = (None, None, DEFAULT_POOL_SIZE);
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("sslmode", value)) => sslmode = Some(value.to_owned()),
                Some(("sslrootcert", value)) => ca_file = Some(PathBuf::from(value)),
                Some(("pool_size", value)) => {
                    pool_size = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_POOL_SIZE).contains(n))
                        .ok_or_else(|| {
                            bad(&format!(
                                "pool_size must be a number of connections from 1 to \
                                 {MAX_POOL_SIZE}"
                            ))
                        })?;
                }
                Some(("password", _)) => {
                    return Err(bad(
                        "holds a password; put it in database_password_file (or the systemd \
                         credential database-password) instead",
                    ));
                }
                _ => rest.push(pair),
            }
        }
        let stripped = if rest.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        let mut config: tokio_postgres::Config = stripped
            .parse()
            .map_err(|_| bad("is not a valid postgres:// URL"))?;
        if config.get_password().is_some() {
            return Err(bad(
                "holds a password; put it in database_password_file (or the systemd credential \
                 database-password) instead",
            ));
        }
        if config.get_user().is_none() {
            return Err(bad("names no user (postgres://USER@HOST:PORT/DB)"));
        }
        if config.get_dbname().is_none() {
            return Err(bad("names no database (postgres://USER@HOST:PORT/DB)"));
        }
        if config.get_hosts().is_empty() {
            return Err(bad("names no host"));
        }
        // With several hosts (a primary and its standbys, `HOST1:PORT,HOST2:PORT`), the
        // daemon connects to the one that takes writes: libpq's `read-write`, unless the
        // URL's `target_session_attrs` says otherwise.
        let attrs_given = query
            .split('&')
            .any(|p| p.starts_with("target_session_attrs="));
        if config.get_hosts().len() > 1 && !attrs_given {
            config.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
        }
        let local = config.get_hosts().iter().all(is_loopback);
        let tls = match (sslmode.as_deref(), ca_file) {
            (Some("verify-full"), Some(ca_file)) => Tls::VerifyFull { ca_file },
            (Some("verify-full"), None) => {
                return Err(bad("sslmode=verify-full needs sslrootcert=/path/to/ca.pem"));
            }
            (Some("disable"), _) => Tls::Disable,
            (None, _) if local => Tls::Disable,
            (None, _) => {
                return Err(bad(
                    "a remote database needs sslmode=verify-full&sslrootcert=/path/to/ca.pem \
                     (or sslmode=disable, to send everything in clear)",
                ));
            }
            (Some(other), _) => {
                return Err(bad(&format!(
                    "sslmode={other} is not supported: use verify-full (or disable)"
                )));
            }
        };
        config.ssl_mode(match tls {
            Tls::Disable => tokio_postgres::config::SslMode::Disable,
            Tls::VerifyFull { .. } => tokio_postgres::config::SslMode::Require,
        });
        config.application_name("sharevault");
        config.connect_timeout(std::time::Duration::from_secs(3));
        config.keepalives_idle(std::time::Duration::from_secs(30));
        Ok(Self {
            config,
            tls,
            password: None,
            pool_size,
        })
    }

    /// The password, read from a file (trailing newline removed).
    pub fn with_password(mut self, password: Zeroizing<Vec<u8>>) -> Self {
        let mut password = password;
        while password.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            password.pop();
        }
        self.password = Some(Arc::new(password));
        self
    }

    /// `USER@HOST:PORT/DB`, for logs: no password, ever.
    pub fn describe(&self) -> String {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .zip(
                self.config
                    .get_ports()
                    .iter()
                    .chain(std::iter::repeat(&5432)),
            )
            .map(|(host, port)| match host {
                tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                tokio_postgres::config::Host::Unix(path) => format!("{}:{port}", path.display()),
            })
            .collect();
        format!(
            "{}@{}/{}",
            self.config.get_user().unwrap_or_default(),
            hosts.join(","),
            self.config.get_dbname().unwrap_or_default()
        )
    }

    /// The driver's configuration, with the password.
    pub(super) fn driver_config(&self) -> tokio_postgres::Config {
        let mut config = self.config.clone();
        if let Some(password) = &self.password {
            config.password(password.as_slice());
        }
        config
    }

    /// A pool of connections, TLS as configured.
    pub(super) fn pool(&self) -> Result<deadpool_postgres::Pool, StoreError> {
        let manager_config = deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        };
        let manager = match &self.tls {
            Tls::Disable => deadpool_postgres::Manager::from_config(
                self.driver_config(),
                tokio_postgres::NoTls,
                manager_config,
            ),
            Tls::VerifyFull { ca_file } => deadpool_postgres::Manager::from_config(
                self.driver_config(),
                tokio_postgres_rustls::MakeRustlsConnect::new(client_tls(ca_file)?),
                manager_config,
            ),
        };
        let timeout = Some(std::time::Duration::from_secs(3));
        deadpool_postgres::Pool::builder(manager)
            .max_size(self.pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(timeout)
            .create_timeout(timeout)
            .recycle_timeout(timeout)
            .build()
            .map_err(|e| StoreError::Backend(format!("cannot set up the connection pool: {e}")))
    }
}

/// rustls' client configuration trusting only the CA certificates in `ca_file`.
fn client_tls(ca_file: &Path) -> Result<rustls::ClientConfig, StoreError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let fail = |why: String| StoreError::Backend(format!("database CA file: {why}"));
    let pem = std::fs::read(ca_file).map_err(|e| fail(format!("{}: {e}", ca_file.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| fail(format!("{}: {e}", ca_file.display())))?;
        roots
            .add(cert)
            .map_err(|e| fail(format!("{}: {e}", ca_file.display())))?;
    }
    if roots.is_empty() {
        return Err(fail(format!("{} holds no certificate", ca_file.display())));
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_never_carry_a_password() {
        let ok = PgSettings::parse("postgres://vault@127.0.0.1:5433/sharevault").unwrap();
        assert_eq!(ok.tls, Tls::Disable);
        assert_eq!(ok.describe(), "vault@127.0.0.1:5433/sharevault");
        assert_eq!(ok.pool_size, DEFAULT_POOL_SIZE);
        let small = PgSettings::parse("postgres://vault@127.0.0.1/sv?pool_size=8").unwrap();
        assert_eq!(small.pool_size, 8);
        use tokio_postgres::config::TargetSessionAttrs;
        let pair = PgSettings::parse("postgres://vault@127.0.0.1:5433,127.0.0.1:5434/sv").unwrap();
        assert_eq!(pair.describe(), "vault@127.0.0.1:5433,127.0.0.1:5434/sv");
        assert_eq!(
            pair.config.get_target_session_attrs(),
            TargetSessionAttrs::ReadWrite,
            "several hosts: the one that takes writes"
        );
        let said = PgSettings::parse(
            "postgres://vault@127.0.0.1:5433,127.0.0.1:5434/sv?target_session_attrs=any",
        )
        .unwrap();
        assert_eq!(
            said.config.get_target_session_attrs(),
            TargetSessionAttrs::Any
        );
        let explicit = PgSettings::parse(
            "postgres://vault@127.0.0.1:5433,127.0.0.1:5434/sv?target_session_attrs=read-write",
        )
        .unwrap();
        assert_eq!(
            explicit.config.get_target_session_attrs(),
            TargetSessionAttrs::ReadWrite
        );
        assert_eq!(
            ok.config.get_target_session_attrs(),
            TargetSessionAttrs::Any
        );
        let tls = PgSettings::parse(
            "postgres://vault@db.example:5432/sv?sslmode=verify-full&sslrootcert=/etc/ca.pem",
        )
        .unwrap();
        assert_eq!(
            tls.tls,
            Tls::VerifyFull {
                ca_file: "/etc/ca.pem".into()
            }
        );
        for (bad, why) in [
            ("postgres://vault:hunter2@127.0.0.1/sv", "password"),
            ("postgres://vault@127.0.0.1/sv?password=hunter2", "password"),
            ("postgres://vault@db.example/sv", "sslmode=verify-full"),
            (
                "postgres://vault@db.example/sv?sslmode=require",
                "not supported",
            ),
            (
                "postgres://vault@db.example/sv?sslmode=verify-full",
                "sslrootcert",
            ),
            ("mysql://vault@127.0.0.1/sv", "postgres://"),
            ("postgres://127.0.0.1/sv", "no user"),
            ("postgres://vault@127.0.0.1", "no database"),
            ("postgres://vault@127.0.0.1/sv?pool_size=0", "pool_size"),
            ("postgres://vault@127.0.0.1/sv?pool_size=many", "pool_size"),
        ] {
            let err = PgSettings::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        let with = ok.with_password(Zeroizing::new(b"hunter2\n".to_vec()));
        assert!(!format!("{with:?}").contains("hunter2"));
        assert_eq!(with.driver_config().get_password(), Some(&b"hunter2"[..]));
    }
}
