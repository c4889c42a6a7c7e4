//! Where store reads run: inline on the async workers, or on the blocking pool.
//!
//! A store read that finds its pages in memory takes microseconds; handing it to another
//! thread and back costs more than the read itself (two wake-ups and two context switches),
//! so reads run inline on the worker that serves the request (after a first window on the
//! blocking pool, until reads are known to be fast). A read that misses the page
//! cache waits for the disk inside a synchronous `pread`, and on a runtime of two workers
//! that would stall every other request. So every read is timed, and when at least a tenth of
//! the reads of a one-second window took longer than [`SLOW_READ`], reads move to the
//! blocking pool for [`OFFLOAD_WINDOW`], where many of them can wait on the disk at once, and
//! writes read the pages they will change there first (so the single writer rarely waits on
//! the disk). A share, not a single read, decides: on a busy machine a read can be slow
//! because its thread waited for a CPU. Reads taken on the pool are timed too, so a database
//! larger than memory keeps its reads off the workers for as long as they stay slow, and a
//! vault that fits in memory goes back to inline reads once they are fast again.

use prometheus_client::metrics::counter::Counter;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A read that took longer than this waited for the disk (or for a CPU).
pub const SLOW_READ: Duration = Duration::from_micros(500);
/// Reads are judged over windows of this length...
pub const WINDOW: Duration = Duration::from_secs(1);
/// ...of at least this many reads: when this share of them (percent) was slow,
const MIN_READS: u64 = 50;
const SLOW_PERCENT: u64 = 10;
/// reads stay on the blocking pool for this long.
pub const OFFLOAD_WINDOW: Duration = Duration::from_secs(5);

/// The placement of store reads; shared by every request.
#[derive(Debug)]
pub struct ReadPlacement {
    base: Instant,
    /// Until when (milliseconds after `base`) reads run on the blocking pool.
    offload_until_ms: AtomicU64,
    /// The current window: its start, its reads, and how many of them were slow.
    window_ms: AtomicU64,
    reads: AtomicU64,
    slow: AtomicU64,
    /// Counts every slow read, for `/metrics`.
    slow_reads: Counter,
}

impl Default for ReadPlacement {
    fn default() -> Self {
        Self::new()
    }
}

impl ReadPlacement {
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            // Until a first window has been judged, reads are not known to be fast.
            offload_until_ms: AtomicU64::new(WINDOW.as_millis() as u64),
            window_ms: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            slow: AtomicU64::new(0),
            slow_reads: Counter::default(),
        }
    }

    /// Counts every slow read into `slow_reads` (the vault's metric).
    pub fn counting_slow_reads(mut self, slow_reads: Counter) -> Self {
        self.slow_reads = slow_reads;
        self
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// Whether reads should run on the blocking pool now.
    pub fn offloading(&self) -> bool {
        self.offloading_at(self.now_ms())
    }

    fn offloading_at(&self, now_ms: u64) -> bool {
        now_ms < self.offload_until_ms.load(Ordering::Relaxed)
    }

    /// Records how long a read took.
    pub fn observe(&self, took: Duration) {
        self.observe_at(self.now_ms(), took);
    }

    fn observe_at(&self, now_ms: u64, took: Duration) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        if took > SLOW_READ {
            self.slow.fetch_add(1, Ordering::Relaxed);
            self.slow_reads.inc();
        }
        let start = self.window_ms.load(Ordering::Relaxed);
        if now_ms < start + WINDOW.as_millis() as u64
            || self
                .window_ms
                .compare_exchange(start, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        // This read closes the window: judge it.
        let reads = self.reads.swap(0, Ordering::Relaxed);
        let slow = self.slow.swap(0, Ordering::Relaxed);
        if reads >= MIN_READS && slow * 100 >= reads * SLOW_PERCENT {
            let until = now_ms + OFFLOAD_WINDOW.as_millis() as u64;
            let before = self.offload_until_ms.fetch_max(until, Ordering::Relaxed);
            if before <= now_ms {
                tracing::debug!(
                    reads,
                    slow,
                    "store reads wait for the disk; they move to the blocking pool"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_start_on_the_pool_until_a_window_shows_them_fast() {
        let p = ReadPlacement::new();
        assert!(p.offloading_at(0));
        window(&p, 10, 100, 0);
        window(&p, 1_010, 1, 0);
        assert!(!p.offloading_at(1_010));
    }

    fn window(p: &ReadPlacement, at: u64, fast: u64, slow: u64) {
        for _ in 0..fast {
            p.observe_at(at, Duration::from_micros(20));
        }
        for _ in 0..slow {
            p.observe_at(at, Duration::from_millis(3));
        }
    }

    #[test]
    fn fast_reads_and_a_few_slow_ones_stay_inline() {
        let p = ReadPlacement::new();
        window(&p, 10, 500, 40);
        window(&p, 1_010, 500, 40);
        window(&p, 2_020, 1, 0);
        assert!(!p.offloading_at(2_030));
    }

    #[test]
    fn a_window_of_slow_reads_moves_reads_off_the_workers_for_a_while_then_back() {
        let p = ReadPlacement::new();
        let off = OFFLOAD_WINDOW.as_millis() as u64;
        window(&p, 10, 100, 0);
        window(&p, 1_010, 400, 100);
        // The window is judged by the first read after it ends.
        assert!(!p.offloading_at(1_900));
        window(&p, 2_010, 1, 0);
        assert!(p.offloading_at(2_010));
        assert!(p.offloading_at(2_010 + off - 1));
        assert!(!p.offloading_at(2_010 + off));
    }

    #[test]
    fn too_few_reads_are_not_judged() {
        let p = ReadPlacement::new();
        window(&p, 10, 0, 10);
        window(&p, 1_010, 1, 0);
        assert!(!p.offloading_at(1_020));
    }

    #[test]
    fn slow_windows_extend_the_offload() {
        let p = ReadPlacement::new();
        let off = OFFLOAD_WINDOW.as_millis() as u64;
        window(&p, 10, 0, 100);
        window(&p, 1_010, 0, 100);
        window(&p, 2_020, 0, 1);
        assert!(p.offloading_at(2_020 + off - 1));
        assert!(!p.offloading_at(2_020 + off));
    }
}
