//! One structured log line per call, whatever the protocol, and one count in
//! `sharevault_calls_total`: for calls answered, for calls refused before their handler (the
//! webhook allow-list), and for calls cut by the request timeout.

use crate::error::VaultError;
use crate::metrics::CallMetrics;
use crate::validate;
use std::time::{Duration, Instant};

tokio::task_local! {
    /// When the request being served is cut by the request timeout; set by the timeout
    /// middlewares ([`within_deadline`]) around everything that serves the request.
    static DEADLINE: Instant;
}

/// Runs `serve` (a request, to its answer) with the deadline `limit` from now known to the
/// [`Call`]s it makes, so that a call dropped at the deadline is logged and counted as
/// `timeout` (and one dropped before it, when the client went away, as `cancelled`).
pub async fn within_deadline<F: std::future::Future>(limit: Duration, serve: F) -> F::Output {
    DEADLINE.scope(Instant::now() + limit, serve).await
}

/// When the request being served is cut by the request timeout, if one is being served on
/// this task: the vault ends its waits for the store before then.
pub fn request_deadline() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

/// A call in flight, logged once when it finishes: service, method, client, backup method,
/// source (only for a refused source), outcome and latency. Identifiers are logged only if
/// they are valid; payloads never are. A call dropped before it finished (the request
/// timeout cut it, or its client went away) is logged and counted when dropped.
pub struct Call {
    metrics: CallMetrics,
    service: &'static str,
    method: &'static str,
    client: String,
    backup_method: String,
    source: String,
    started: Instant,
    deadline: Option<Instant>,
    finished: bool,
}

impl Call {
    pub fn new(metrics: &CallMetrics, service: &'static str, method: &'static str) -> Self {
        Self {
            metrics: metrics.clone(),
            service,
            method,
            client: String::new(),
            backup_method: String::new(),
            source: String::new(),
            started: Instant::now(),
            deadline: DEADLINE.try_with(|d| *d).ok(),
            finished: false,
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

    /// The address the call came from, for a call refused because of it.
    pub fn source(&mut self, peer: Option<std::net::IpAddr>, from: Option<std::net::IpAddr>) {
        self.source = match (peer, from) {
            (Some(peer), Some(from)) if peer != from => format!("{from} via {peer}"),
            (_, Some(from)) => from.to_string(),
            (Some(peer), None) => peer.to_string(),
            (None, None) => "unix".into(),
        };
    }

    /// Logs the call with its outcome.
    pub fn finish<T>(self, result: &Result<T, VaultError>) {
        self.finish_with(match result {
            Ok(_) => "ok",
            Err(err) => err.outcome(),
        });
    }

    /// Logs the call with an outcome that is not a vault result (a protocol error).
    pub fn finish_with(mut self, outcome: &'static str) {
        self.record(outcome);
    }

    fn record(&mut self, outcome: &'static str) {
        self.finished = true;
        let elapsed = self.started.elapsed();
        self.metrics
            .call(self.service, self.method, outcome, elapsed);
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    target: "sharevault::call",
                    service = self.service,
                    method = self.method,
                    client = self.client,
                    backup_method = self.backup_method,
                    source = self.source,
                    outcome,
                    latency_us = elapsed.as_micros() as u64,
                )
            };
        }
        // Refusals that an operator must see (Portal's address changed, the disk stalls).
        if matches!(outcome, "forbidden" | "permission_denied" | "timeout") {
            line!(warn);
        } else {
            line!(info);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.finished {
            let cut = self.deadline.is_some_and(|d| Instant::now() >= d);
            self.record(if cut { "timeout" } else { "cancelled" });
        }
    }
}
