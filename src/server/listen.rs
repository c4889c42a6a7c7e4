//! Listeners: TCP or Unix sockets, bound before the daemon starts.

use crate::config::ListenAddr;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// A bound listener.
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, PathBuf),
}

impl Listener {
    /// Binds `addr`. A stale Unix socket file is replaced; the socket gets mode 0660.
    pub async fn bind(addr: &ListenAddr) -> std::io::Result<Self> {
        match addr {
            ListenAddr::Tcp(addr) => Ok(Listener::Tcp(tokio::net::TcpListener::bind(addr).await?)),
            ListenAddr::Unix(path) => {
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

/// Who may use the local admin socket: the daemon's own user, and root.
pub(super) fn local_admin_allowed(stream: &tokio::net::UnixStream) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(cred) = stream.peer_cred() else {
        return false;
    };
    let own = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    cred.uid() == 0 || Some(cred.uid()) == own
}

pub(super) enum Accepted {
    Tcp(tokio::net::TcpStream, SocketAddr),
    Unix(tokio::net::UnixStream),
}

pub(super) async fn accept(listener: &Listener) -> std::io::Result<Accepted> {
    match listener {
        Listener::Tcp(l) => l.accept().await.map(|(s, a)| Accepted::Tcp(s, a)),
        Listener::Unix(l, _) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
    }
}

/// An IPv4 address mapped into IPv6 is reported as IPv4.
pub(super) fn canonical(addr: SocketAddr) -> IpAddr {
    match addr.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        ip => ip,
    }
}
