//! Prometheus metrics, served as text at `GET /metrics` on the private listener.
//!
//! Labels are only ever static names (service, method, outcome): never a client id, a token
//! or anything from a request body.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram of durations.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        for (bucket, bound) in self.buckets.iter().zip(BUCKETS) {
            if secs <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bucket, bound) in self.buckets.iter().zip(BUCKETS) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {count}", braces(labels));
    }
}

type CallKey = (&'static str, &'static str);
type OutcomeKey = (&'static str, &'static str, &'static str);

/// Every metric the daemon keeps.
#[derive(Default)]
pub struct Metrics {
    calls: RwLock<BTreeMap<OutcomeKey, Arc<AtomicU64>>>,
    latency: RwLock<BTreeMap<CallKey, Arc<Histogram>>>,
    /// Time from a batch's start to its durable commit.
    pub commit: Histogram,
    /// Operations committed, and batches.
    pub committed_ops: AtomicU64,
    pub batches: AtomicU64,
    /// Write transactions that failed (each failed every operation in it).
    pub failed_batches: AtomicU64,
    /// Requests refused because a listener had its most requests in flight.
    pub overloaded: AtomicU64,
    /// Store reads that waited for the disk, and reads run on the blocking pool.
    pub slow_reads: AtomicU64,
    pub offloaded_reads: AtomicU64,
}

fn get_or_insert<K: Ord + Copy, V: Default>(map: &RwLock<BTreeMap<K, Arc<V>>>, key: K) -> Arc<V> {
    if let Some(v) = map.read().unwrap_or_else(PoisonError::into_inner).get(&key) {
        return Arc::clone(v);
    }
    let mut map = map.write().unwrap_or_else(PoisonError::into_inner);
    Arc::clone(map.entry(key).or_default())
}

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

/// Numbers read at scrape time.
pub struct Gauges {
    pub custodian_shares: u64,
    pub client_shares: u64,
    pub backup_share_pairs: u64,
    pub tokens: u64,
    pub database_bytes: u64,
    pub uptime_seconds: u64,
    pub ready: bool,
}

impl Metrics {
    /// Counts a finished call and its latency.
    pub fn call(
        &self,
        service: &'static str,
        method: &'static str,
        outcome: &'static str,
        elapsed: Duration,
    ) {
        get_or_insert(&self.calls, (service, method, outcome)).fetch_add(1, Ordering::Relaxed);
        get_or_insert(&self.latency, (service, method)).observe(elapsed);
    }

    pub fn overloaded(&self) {
        self.overloaded.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a committed batch of `ops` operations.
    pub fn batch(&self, ops: usize, elapsed: Duration, ok: bool) {
        if ok {
            self.commit.observe(elapsed);
            self.committed_ops.fetch_add(ops as u64, Ordering::Relaxed);
            self.batches.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed_batches.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(16 * 1024);
        out.push_str("# HELP sharevault_calls_total Calls by service, method and outcome.\n");
        out.push_str("# TYPE sharevault_calls_total counter\n");
        for ((service, method, outcome), n) in self
            .calls
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(
                out,
                "sharevault_calls_total{{service=\"{service}\",method=\"{method}\",outcome=\"{outcome}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP sharevault_call_duration_seconds Call latency.\n");
        out.push_str("# TYPE sharevault_call_duration_seconds histogram\n");
        for ((service, method), h) in self
            .latency
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            h.render(
                &mut out,
                "sharevault_call_duration_seconds",
                &format!("service=\"{service}\",method=\"{method}\""),
            );
        }
        out.push_str("# HELP sharevault_commit_duration_seconds Group commit latency, from batch start to durable commit.\n");
        out.push_str("# TYPE sharevault_commit_duration_seconds histogram\n");
        self.commit
            .render(&mut out, "sharevault_commit_duration_seconds", "");
        let counters = [
            (
                "sharevault_committed_operations_total",
                "Write operations committed.",
                self.committed_ops.load(Ordering::Relaxed),
            ),
            (
                "sharevault_commit_batches_total",
                "Write transactions committed.",
                self.batches.load(Ordering::Relaxed),
            ),
            (
                "sharevault_failed_batches_total",
                "Write transactions that failed.",
                self.failed_batches.load(Ordering::Relaxed),
            ),
            (
                "sharevault_overloaded_total",
                "Requests refused at a listener's in-flight limit.",
                self.overloaded.load(Ordering::Relaxed),
            ),
            (
                "sharevault_slow_reads_total",
                "Store reads that took longer than 500 us (they waited for the disk).",
                self.slow_reads.load(Ordering::Relaxed),
            ),
            (
                "sharevault_offloaded_reads_total",
                "Store reads run on the blocking pool instead of inline.",
                self.offloaded_reads.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        out.push_str(
            "# HELP sharevault_records Records held, by table.\n# TYPE sharevault_records gauge\n",
        );
        for (table, n) in [
            ("custodian_shares", gauges.custodian_shares),
            ("client_shares", gauges.client_shares),
            ("backup_share_pairs", gauges.backup_share_pairs),
            ("tokens", gauges.tokens),
        ] {
            let _ = writeln!(out, "sharevault_records{{table=\"{table}\"}} {n}");
        }
        let gauges = [
            (
                "sharevault_database_bytes",
                "Size of the database file.",
                gauges.database_bytes,
            ),
            (
                "sharevault_uptime_seconds",
                "Seconds since the vault opened.",
                gauges.uptime_seconds,
            ),
            (
                "sharevault_ready",
                "1 once the vault is open and serving.",
                u64::from(gauges.ready),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_counters_render() {
        let m = Metrics::default();
        m.call("WebhookHttp", "Backup", "ok", Duration::from_micros(700));
        m.call("WebhookHttp", "Backup", "ok", Duration::from_millis(30));
        m.call(
            "WebhookHttp",
            "Backup",
            "unauthenticated",
            Duration::from_micros(100),
        );
        let text = m.render(&Gauges {
            custodian_shares: 3,
            client_shares: 1,
            backup_share_pairs: 2,
            tokens: 0,
            database_bytes: 4096,
            uptime_seconds: 9,
            ready: true,
        });
        assert!(text.contains(
            "sharevault_calls_total{service=\"WebhookHttp\",method=\"Backup\",outcome=\"ok\"} 2"
        ));
        assert!(text.contains("sharevault_call_duration_seconds_bucket{service=\"WebhookHttp\",method=\"Backup\",le=\"0.001\"} 2"));
        assert!(text.contains("sharevault_call_duration_seconds_bucket{service=\"WebhookHttp\",method=\"Backup\",le=\"+Inf\"} 3"));
        assert!(text.contains("sharevault_records{table=\"custodian_shares\"} 3"));
        assert!(text.contains("sharevault_database_bytes 4096"));
    }
}
