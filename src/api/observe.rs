//! One structured log line per call, whatever the protocol.

use crate::error::VaultError;
use crate::metrics::CallMetrics;
use crate::validate;
use std::time::Instant;

/// A call in flight, logged once when it finishes: service, method, client, backup method,
/// outcome and latency. Identifiers are logged only if they are valid; payloads never are.
pub struct Call {
    metrics: CallMetrics,
    service: &'static str,
    method: &'static str,
    client: String,
    backup_method: String,
    started: Instant,
}

impl Call {
    pub fn new(metrics: &CallMetrics, service: &'static str, method: &'static str) -> Self {
        Self {
            metrics: metrics.clone(),
            service,
            method,
            client: String::new(),
            backup_method: String::new(),
            started: Instant::now(),
        }
    }

    pub fn client(&mut self, client_id: &str) -> &mut Self {
        if validate::client_id(client_id).is_ok() {
            client_id.clone_into(&mut self.client);
        } else if !client_id.is_empty() {
            self.client = "<invalid>".into();
        }
        self
    }

    pub fn backup_method(&mut self, backup_method: &str) -> &mut Self {
        if validate::backup_method(backup_method).is_ok() {
            backup_method.clone_into(&mut self.backup_method);
        } else {
            self.backup_method = "<invalid>".into();
        }
        self
    }

    /// Logs the call with its outcome.
    pub fn finish<T>(self, result: &Result<T, VaultError>) {
        self.finish_with(match result {
            Ok(_) => "ok",
            Err(err) => err.outcome(),
        });
    }

    /// Logs the call with an outcome that is not a vault result (a protocol error).
    pub fn finish_with(self, outcome: &'static str) {
        let elapsed = self.started.elapsed();
        self.metrics
            .call(self.service, self.method, outcome, elapsed);
        tracing::info!(
            target: "sharevault::call",
            service = self.service,
            method = self.method,
            client = self.client,
            backup_method = self.backup_method,
            outcome,
            latency_us = elapsed.as_micros() as u64,
        );
    }
}
