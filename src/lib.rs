//! sharevault: a self-hosted vault for Portal MPC wallet backup shares.
//!
//! A map of the crate, from the wire down (docs/design.md, "Where each concern lives"):
//!
//! - [`server`]: listeners, TLS, connection limits, health, reflection and the daemon's
//!   lifecycle ([`server::run`]).
//! - [`api`]: the front ends, thin translations onto the vault: [`api::grpc`] (one file per
//!   service; [`pb`] holds the generated types) and [`api::http`] (Portal's webhook on the
//!   public listener, the JSON API beside gRPC on the private one).
//! - [`vault`]: the one code path under every API: validation ([`validate`]), authentication
//!   ([`auth`]), sealing ([`crypto`]), and the rules (share pairs, method limit, tokens) as
//!   write jobs over any store.
//! - [`store`]: the storage boundary, a transactional key-value trait with a written contract
//!   and its conformance tests, the embedded redb backend with group commit over a page
//!   journal, and the PostgreSQL backend for several daemons on one database. [`audit`] is the MAC-chained trail, appended in the same transactions.
//! - [`snapshot`]: the snapshot format, writing, reading and offline restore; [`integrity`]:
//!   the key behind the snapshot and audit MACs, sealed under the master key.
//! - [`cli`]: the operator's commands.
//! - [`config`] and [`secrets`]: settings, and the master key, webhook secrets and admin token;
//!   [`data_dir`]: the data dir's one lock, and whether it holds a vault;
//!   [`metrics`] (one registry, and a handle per component, made in [`server::run`]);
//!   [`error`]: the errors callers see and their mapping to gRPC codes.
//! - [`seal`]: where the root key (the master key) is kept: its file, or sealed by a PKCS#11
//!   token's non-extractable key and unsealed into memory at start.

pub mod api;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod data_dir;
pub mod error;
pub mod integrity;
pub mod metrics;
pub mod pb;
pub mod seal;
pub mod secrets;
pub mod server;
pub mod snapshot;
pub mod store;
pub mod validate;
pub mod vault;
