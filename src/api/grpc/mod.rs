//! The gRPC front end: one file per service, each a thin translation onto [`crate::vault`].

pub mod admin;
pub mod backup;
pub mod webhook;

use crate::error::VaultError;
use tonic::{Request, Response, Status};

pub(crate) use crate::api::observe::Call;

/// Logs the call and turns its result into a gRPC answer.
pub(crate) fn reply<T>(call: Call, result: Result<T, VaultError>) -> Result<Response<T>, Status> {
    call.finish(&result);
    result.map(Response::new).map_err(Status::from)
}

/// The address the call is attributed to: the peer, or behind a trusted proxy the client its
/// `X-Forwarded-For` names (see [`crate::api::http::Source`]).
pub(crate) fn source<T>(request: &Request<T>) -> Option<std::net::IpAddr> {
    match request.extensions().get::<crate::api::http::Source>() {
        Some(source) => source.0,
        None => request
            .extensions()
            .get::<crate::api::Peer>()
            .and_then(|p| p.0),
    }
}

/// The value of a metadata entry, if present and printable.
pub(crate) fn metadata<'a, T>(request: &'a Request<T>, name: &str) -> Option<&'a str> {
    request.metadata().get(name).and_then(|v| v.to_str().ok())
}
