//! The gRPC front end: one file per service, each a thin translation onto [`crate::vault`].

pub mod admin;
pub mod backup;
pub mod webhook;

use crate::error::VaultError;
use crate::validate;
use crate::vault::Vault;
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tonic::{Request, Response, Status};

/// The vault once it is open; until then every call answers UNAVAILABLE.
#[derive(Clone, Default)]
pub struct Ready(Arc<OnceLock<Arc<Vault>>>);

impl Ready {
    pub fn set(&self, vault: Arc<Vault>) {
        let _ = self.0.set(vault);
    }

    pub fn get(&self) -> Result<&Arc<Vault>, VaultError> {
        self.0.get().ok_or(VaultError::NotReady)
    }
}

/// One call, logged once when it finishes: service, method, client, backup method, outcome
/// and latency. Identifiers are logged only if they are valid; payloads never are.
pub(crate) struct Call {
    service: &'static str,
    method: &'static str,
    client: String,
    backup_method: String,
    started: Instant,
}

impl Call {
    pub(crate) fn new(service: &'static str, method: &'static str) -> Self {
        Self {
            service,
            method,
            client: String::new(),
            backup_method: String::new(),
            started: Instant::now(),
        }
    }

    pub(crate) fn client(mut self, client_id: &str) -> Self {
        if validate::client_id(client_id).is_ok() {
            client_id.clone_into(&mut self.client);
        } else if !client_id.is_empty() {
            self.client = "<invalid>".into();
        }
        self
    }

    pub(crate) fn backup_method(mut self, backup_method: &str) -> Self {
        if validate::backup_method(backup_method).is_ok() {
            backup_method.clone_into(&mut self.backup_method);
        } else {
            self.backup_method = "<invalid>".into();
        }
        self
    }

    pub(crate) fn finish<T>(self, result: Result<T, VaultError>) -> Result<Response<T>, Status> {
        let outcome = match &result {
            Ok(_) => "ok",
            Err(err) => err.outcome(),
        };
        tracing::info!(
            target: "sharevault::call",
            service = self.service,
            method = self.method,
            client = self.client,
            backup_method = self.backup_method,
            outcome,
            latency_us = self.started.elapsed().as_micros() as u64,
        );
        result.map(Response::new).map_err(Status::from)
    }
}

/// The value of a metadata entry, if present and printable.
pub(crate) fn metadata<'a, T>(request: &'a Request<T>, name: &str) -> Option<&'a str> {
    request.metadata().get(name).and_then(|v| v.to_str().ok())
}
