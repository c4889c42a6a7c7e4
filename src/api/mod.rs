//! The front ends: gRPC ([`grpc`], one file per service) and HTTP ([`http`]: Portal's webhook
//! and the JSON API), each a thin translation onto [`crate::vault`], and what every request
//! carries from its connection ([`Peer`], [`Transport`], [`LocalAdmin`]).

pub mod grpc;
pub mod http;
pub mod observe;

use crate::error::VaultError;
use crate::seal::TokenSeal;
use crate::vault::Vault;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

/// The vault once it is open; until then every call answers UNAVAILABLE. Under a token
/// seal, also the seal (rotations seal their new root key with it; readiness reports it).
#[derive(Clone, Default)]
pub struct Ready {
    vault: Arc<OnceLock<Arc<Vault>>>,
    seal: Arc<OnceLock<TokenSeal>>,
}

impl Ready {
    pub fn set(&self, vault: Arc<Vault>) {
        let _ = self.vault.set(vault);
    }

    pub fn get(&self) -> Result<&Arc<Vault>, VaultError> {
        self.vault.get().ok_or(VaultError::NotReady)
    }

    /// Records the token seal the vault was opened with.
    pub fn set_seal(&self, seal: TokenSeal) {
        let _ = self.seal.set(seal);
    }

    /// The token seal, if the root key is sealed by one.
    pub fn token_seal(&self) -> Option<&TokenSeal> {
        self.seal.get()
    }

    /// Whether the seal can be reached: always for the file seal; for a token, whether it
    /// answered its last check.
    pub fn seal_reachable(&self) -> bool {
        self.seal.get().is_none_or(TokenSeal::reachable)
    }
}

/// The address a connection came from; inserted into every request's extensions.
/// Unix-socket connections have none.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<IpAddr>);

/// How a connection reached the daemon; inserted into every request's extensions beside
/// [`Peer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A Unix socket: never leaves the host.
    Unix,
    /// TLS, over TCP or a Unix socket.
    Tls,
    /// Plain TCP: readable by anyone on the path.
    Tcp,
}

impl Transport {
    /// Whether a request from `peer` over this transport may carry key material: over TLS or a
    /// Unix socket, or over plain TCP from a loopback address (which never leaves the host);
    /// never over plain TCP from another address.
    pub fn may_carry_keys(self, peer: Peer) -> bool {
        match self {
            Transport::Unix | Transport::Tls => true,
            Transport::Tcp => peer.0.is_some_and(|ip| ip.is_loopback()),
        }
    }
}

/// Marks requests that came through the local admin socket from the daemon's own user or
/// root (checked with the socket's peer credentials).
#[derive(Debug, Clone, Copy)]
pub struct LocalAdmin;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_material_travels_only_over_tls_a_unix_socket_or_loopback() {
        let remote = Peer(Some("192.0.2.7".parse().unwrap()));
        let loopback = Peer(Some("127.0.0.1".parse().unwrap()));
        let loopback6 = Peer(Some("::1".parse().unwrap()));
        assert!(!Transport::Tcp.may_carry_keys(remote));
        assert!(!Transport::Tcp.may_carry_keys(Peer(Some("10.0.0.2".parse().unwrap()))));
        assert!(Transport::Tcp.may_carry_keys(loopback));
        assert!(Transport::Tcp.may_carry_keys(loopback6));
        assert!(Transport::Tls.may_carry_keys(remote));
        assert!(Transport::Unix.may_carry_keys(Peer(None)));
    }
}
