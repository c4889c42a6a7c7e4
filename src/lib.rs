//! sharevault: a self-hosted vault for Portal MPC wallet backup shares.
//!
//! A map of the crate, from the wire down:
//!
//! - [`server`]: health, reflection and the daemon's lifecycle ([`server::run`]); [`net`]:
//!   listeners, TLS and connections.
//! - [`http`]: Portal's webhook over HTTP (public listener) and the JSON API for backends
//!   (private listener, beside gRPC); [`observe`] logs one line per call and feeds
//!   [`metrics`].
//! - [`grpc`]: the gRPC services (`WebhookService`, `BackupService`, `AdminService`), thin
//!   translations onto the vault; [`pb`] holds the generated types.
//! - [`vault`]: the one code path under every API: validation ([`validate`]),
//!   authentication ([`auth`]), sealing ([`crypto`]) and the share-pair model ([`pairs`]);
//!   [`placement`] decides whether its store reads run inline or on the blocking pool.
//! - [`store`]: the storage boundary, a trait with documented semantics, and its embedded
//!   redb implementation with group commit over a write-ahead page journal; [`audit`] is the hash-chained trail written in
//!   the same transactions.
//! - [`snapshot`] and [`restore`]: the snapshot format, and offline restore after verifying
//!   the snapshot's MAC and every record; [`integrity`]: the key behind the snapshot and audit
//!   MACs, sealed under the master key.
//! - [`cli`]: the operator's commands that talk to a running daemon.
//! - [`config`] and [`secrets`]: settings, and the master key, webhook secrets and admin token.
//! - [`error`]: the errors callers see and their mapping to gRPC codes.

pub mod api;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod error;
pub mod integrity;
pub mod metrics;
pub mod pb;
pub mod secrets;
pub mod server;
pub mod snapshot;
pub mod store;
pub mod validate;
pub mod vault;
