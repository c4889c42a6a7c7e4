//! Prometheus metrics, served as text at `GET /metrics` on the private listener.
//!
//! [`Metrics::new`] builds the registry and one handle per part of the daemon, once, in
//! [`crate::server::run`]; each part gets only its own handle ([`CallMetrics`] for the front
//! ends, [`StoreMetrics`] for the store's writer, [`VaultMetrics`] for the vault,
//! [`ListenerMetrics`] for the listeners, [`ScrapeMetrics`] for the `/metrics` handler). A
//! handle made with `Default` counts into metrics that no registry exports (for tests and
//! tools that run without the daemon).
//!
//! Labels are only ever static names (service, method, outcome, table): never a client id, a
//! token or anything from a request body.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;

/// The `Content-Type` of [`Metrics::render`]'s text (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    service: &'static str,
    method: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    service: &'static str,
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    table: &'static str,
}

/// The front ends' handle: calls by service, method and outcome, and their latency.
#[derive(Clone, Debug)]
pub struct CallMetrics {
    calls: Family<OutcomeLabels, Counter>,
    latency: Family<CallLabels, Histogram, fn() -> Histogram>,
}

impl Default for CallMetrics {
    fn default() -> Self {
        Self {
            calls: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl CallMetrics {
    /// Counts a finished call and its latency.
    pub fn call(
        &self,
        service: &'static str,
        method: &'static str,
        outcome: &'static str,
        elapsed: Duration,
    ) {
        self.calls
            .get_or_create(&OutcomeLabels {
                service,
                method,
                outcome,
            })
            .inc();
        self.latency
            .get_or_create(&CallLabels { service, method })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a call refused before it was read (a connection closed when accepted, for its
    /// source): no latency to observe.
    pub fn refused(&self, service: &'static str, method: &'static str, outcome: &'static str) {
        self.calls
            .get_or_create(&OutcomeLabels {
                service,
                method,
                outcome,
            })
            .inc();
    }
}

/// The store writer's handle: group commits, and writes refused at the disk reserve.
#[derive(Clone, Debug)]
pub struct StoreMetrics {
    commit: Histogram,
    committed_ops: Counter,
    batches: Counter,
    failed_batches: Counter,
    reserve_refusals: Counter,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self {
            commit: latency_histogram(),
            committed_ops: Counter::default(),
            batches: Counter::default(),
            failed_batches: Counter::default(),
            reserve_refusals: Counter::default(),
        }
    }
}

impl StoreMetrics {
    /// Counts a batch of `ops` operations, committed (`ok`) or failed.
    pub fn batch(&self, ops: usize, elapsed: Duration, ok: bool) {
        if ok {
            self.commit.observe(elapsed.as_secs_f64());
            self.committed_ops.inc_by(ops as u64);
            self.batches.inc();
        } else {
            self.failed_batches.inc();
        }
    }

    /// Counts `writes` refused because the disk's free-space reserve was reached.
    pub fn refused_at_reserve(&self, writes: usize) {
        self.reserve_refusals.inc_by(writes as u64);
    }

    /// Writes refused at the reserve so far.
    pub fn reserve_refusals(&self) -> u64 {
        self.reserve_refusals.get()
    }
}

/// The vault's handle: where its reads ran, failed authentications, audit verifications
/// that found the chain broken.
#[derive(Clone, Debug, Default)]
pub struct VaultMetrics {
    /// Store reads that took longer than [`crate::vault::placement::SLOW_READ`].
    pub slow_reads: Counter,
    offloaded_reads: Counter,
    auth_failures: Counter,
    audit_chain_broken: Counter,
    damaged_records: Counter,
}

impl VaultMetrics {
    /// Counts stored records that failed to decode or open and were left out of an answer.
    pub fn damaged_records(&self, n: u64) {
        self.damaged_records.inc_by(n);
    }

    pub fn offloaded_read(&self) {
        self.offloaded_reads.inc();
    }

    pub fn auth_failure(&self) {
        self.auth_failures.inc();
    }

    pub fn audit_chain_broken(&self) {
        self.audit_chain_broken.inc();
    }
}

/// The listeners' handle.
#[derive(Clone, Debug, Default)]
pub struct ListenerMetrics {
    overloaded: Counter,
}

impl ListenerMetrics {
    /// Counts a request refused at a listener's in-flight limit.
    pub fn overloaded(&self) {
        self.overloaded.inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    outcome: &'static str,
}

/// The reloader's handle: reloads (SIGHUP) put in force, and refused for a bad file.
#[derive(Clone, Debug, Default)]
pub struct ReloadMetrics {
    reloads: Family<ReloadLabels, Counter>,
}

impl ReloadMetrics {
    /// Counts a reload: `ok`, or `refused` when a file was not valid.
    pub fn reload(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "refused" };
        self.reloads.get_or_create(&ReloadLabels { outcome }).inc();
    }
}

/// Figures read at scrape time.
pub struct Gauges {
    pub custodian_shares: u64,
    pub client_shares: u64,
    pub backup_share_pairs: u64,
    pub tokens: u64,
    pub database_bytes: u64,
    pub uptime_seconds: u64,
    pub ready: bool,
    /// Whether the root key's seal can be reached (always for the file seal).
    pub seal_reachable: bool,
}

/// The `/metrics` handler's handle: the figures read at scrape time, and the rendering.
#[derive(Clone, Debug)]
pub struct ScrapeMetrics {
    registry: std::sync::Arc<Registry>,
    records: Family<TableLabels, Gauge>,
    database_bytes: Gauge,
    uptime_seconds: Gauge,
    ready: Gauge,
    seal_reachable: Gauge,
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl ScrapeMetrics {
    /// Sets the scrape-time figures and renders every metric as Prometheus text.
    pub fn render(&self, gauges: &Gauges) -> String {
        for (table, n) in [
            ("custodian_shares", gauges.custodian_shares),
            ("client_shares", gauges.client_shares),
            ("backup_share_pairs", gauges.backup_share_pairs),
            ("tokens", gauges.tokens),
        ] {
            self.records
                .get_or_create(&TableLabels { table })
                .set(gauge_value(n));
        }
        self.database_bytes.set(gauge_value(gauges.database_bytes));
        self.uptime_seconds.set(gauge_value(gauges.uptime_seconds));
        self.ready.set(i64::from(gauges.ready));
        self.seal_reachable.set(i64::from(gauges.seal_reachable));
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// Every handle, each registered once in one registry.
pub struct Metrics {
    pub calls: CallMetrics,
    pub store: StoreMetrics,
    pub vault: VaultMetrics,
    pub listeners: ListenerMetrics,
    pub reloads: ReloadMetrics,
    pub scrape: ScrapeMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Builds the registry and its handles. Names are given without the `_total` that the
    /// encoder adds to every counter.
    pub fn new() -> Self {
        let mut r = Registry::default();
        let calls = CallMetrics::default();
        r.register(
            "sharevault_calls",
            "Calls by service, method and outcome",
            calls.calls.clone(),
        );
        r.register(
            "sharevault_call_duration_seconds",
            "Call latency",
            calls.latency.clone(),
        );
        let store = StoreMetrics::default();
        r.register(
            "sharevault_commit_duration_seconds",
            "Group commit latency, from batch start to durable commit",
            store.commit.clone(),
        );
        for (name, help, counter) in [
            (
                "sharevault_committed_operations",
                "Write operations committed",
                &store.committed_ops,
            ),
            (
                "sharevault_commit_batches",
                "Write transactions committed",
                &store.batches,
            ),
            (
                "sharevault_failed_batches",
                "Write transactions that failed",
                &store.failed_batches,
            ),
            (
                "sharevault_disk_reserve_refusals",
                "Writes refused because the data dir's filesystem had less than the free-space reserve",
                &store.reserve_refusals,
            ),
        ] {
            r.register(name, help, counter.clone());
        }
        let vault = VaultMetrics::default();
        let listeners = ListenerMetrics::default();
        for (name, help, counter) in [
            (
                "sharevault_overloaded",
                "Requests refused at a listener's in-flight limit",
                &listeners.overloaded,
            ),
            (
                "sharevault_slow_reads",
                "Store reads that took longer than 500 us (they waited for the disk)",
                &vault.slow_reads,
            ),
            (
                "sharevault_offloaded_reads",
                "Store reads run on the blocking pool instead of inline",
                &vault.offloaded_reads,
            ),
            (
                "sharevault_auth_failures",
                "Failed authentications: a webhook secret or bearer token missing, malformed or wrong",
                &vault.auth_failures,
            ),
            (
                "sharevault_audit_chain_broken",
                "Audit verifications run by the daemon that found the audit chain broken",
                &vault.audit_chain_broken,
            ),
            (
                "sharevault_damaged_records",
                "Stored records that failed their integrity check and were left out of an answer",
                &vault.damaged_records,
            ),
        ] {
            r.register(name, help, counter.clone());
        }
        let reloads = ReloadMetrics::default();
        // Both outcomes are exported from the start, at 0.
        for outcome in ["ok", "refused"] {
            drop(reloads.reloads.get_or_create(&ReloadLabels { outcome }));
        }
        r.register(
            "sharevault_reloads",
            "Reloads of the webhook secrets and TLS certificates (SIGHUP), by outcome: ok, or refused for a bad file (the previous ones kept)",
            reloads.reloads.clone(),
        );
        let scrape = ScrapeMetrics {
            registry: std::sync::Arc::new(Registry::default()),
            records: Family::default(),
            database_bytes: Gauge::default(),
            uptime_seconds: Gauge::default(),
            ready: Gauge::default(),
            seal_reachable: Gauge::default(),
        };
        r.register(
            "sharevault_records",
            "Records held, by table",
            scrape.records.clone(),
        );
        for (name, help, gauge) in [
            (
                "sharevault_database_bytes",
                "Size of the database file",
                &scrape.database_bytes,
            ),
            (
                "sharevault_uptime_seconds",
                "Seconds since the vault opened",
                &scrape.uptime_seconds,
            ),
            (
                "sharevault_ready",
                "1 once the vault is open and serving",
                &scrape.ready,
            ),
            (
                "sharevault_seal_reachable",
                "1 while the root key's seal answers (the file seal always; a PKCS#11 token at its last check), 0 when it does not",
                &scrape.seal_reachable,
            ),
        ] {
            r.register(name, help, gauge.clone());
        }
        let scrape = ScrapeMetrics {
            registry: std::sync::Arc::new(r),
            ..scrape
        };
        Self {
            calls,
            store,
            vault,
            listeners,
            reloads,
            scrape,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauges() -> Gauges {
        Gauges {
            custodian_shares: 3,
            client_shares: 1,
            backup_share_pairs: 2,
            tokens: 0,
            database_bytes: 4096,
            uptime_seconds: 9,
            ready: true,
            seal_reachable: false,
        }
    }

    #[test]
    fn histograms_are_cumulative_and_counters_render() {
        let m = Metrics::new();
        m.calls
            .call("WebhookHttp", "Backup", "ok", Duration::from_micros(700));
        m.calls
            .call("WebhookHttp", "Backup", "ok", Duration::from_millis(30));
        m.calls.call(
            "WebhookHttp",
            "Backup",
            "unauthenticated",
            Duration::from_micros(100),
        );
        m.store.refused_at_reserve(2);
        let text = m.scrape.render(&gauges());
        assert!(text.contains(
            "sharevault_calls_total{service=\"WebhookHttp\",method=\"Backup\",outcome=\"ok\"} 2"
        ));
        assert!(text.contains("sharevault_call_duration_seconds_bucket{service=\"WebhookHttp\",method=\"Backup\",le=\"0.001\"} 2"), "{text}");
        assert!(text.contains("sharevault_call_duration_seconds_bucket{service=\"WebhookHttp\",method=\"Backup\",le=\"+Inf\"} 3"));
        assert!(text.contains("sharevault_records{table=\"custodian_shares\"} 3"));
        assert!(text.contains("sharevault_database_bytes 4096"));
        assert!(text.contains("sharevault_seal_reachable 0"), "{text}");
        assert!(text.contains("sharevault_disk_reserve_refusals_total 2"));
        assert!(text.contains("# TYPE sharevault_commit_batches_total counter"));
    }

    #[test]
    fn a_handle_made_alone_is_not_exported() {
        let m = Metrics::new();
        let alone = CallMetrics::default();
        alone.call("ApiHttp", "ListBackups", "ok", Duration::from_millis(1));
        assert!(!m.scrape.render(&gauges()).contains("ListBackups"));
    }
}
