//! Where store reads run: inline on the async workers, or on the blocking pool.
//!
//! A store read that finds its pages in memory takes microseconds; handing it to another
//! thread and back costs more than the read itself (two wake-ups and two context switches),
//! so reads run inline on the worker that serves the request. A read that misses the page
//! cache waits for the disk inside a synchronous `pread`, and on a runtime of two workers
//! that would stall every other request; so as soon as one read has been slow, reads move to
//! the blocking pool for a while ([`OFFLOAD_WINDOW`]), where many of them can wait on the
//! disk at once, and writes read the pages they will change there first (so the single
//! writer rarely waits on the disk). Every read taken in that mode is timed too, so a
//! database larger than memory keeps its reads off the workers for as long as they stay
//! slow, and a vault that fits in memory goes back to inline reads once they are fast again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A read that took longer than this waited for the disk.
pub const SLOW_READ: Duration = Duration::from_micros(500);
/// How long reads stay on the blocking pool after a slow one.
pub const OFFLOAD_WINDOW: Duration = Duration::from_secs(5);

/// The placement of store reads; shared by every request.
#[derive(Debug)]
pub struct ReadPlacement {
    base: Instant,
    /// Until when (milliseconds after `base`) reads run on the blocking pool.
    offload_until_ms: AtomicU64,
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
            offload_until_ms: AtomicU64::new(0),
        }
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
        if took <= SLOW_READ {
            return;
        }
        let until = now_ms + OFFLOAD_WINDOW.as_millis() as u64;
        let before = self.offload_until_ms.fetch_max(until, Ordering::Relaxed);
        if before <= now_ms {
            tracing::debug!(
                took_us = took.as_micros() as u64,
                "a store read waited for the disk; reads move to the blocking pool"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_start_inline() {
        assert!(!ReadPlacement::new().offloading_at(0));
    }

    #[test]
    fn fast_reads_stay_inline() {
        let p = ReadPlacement::new();
        p.observe_at(10, Duration::from_micros(20));
        p.observe_at(20, SLOW_READ);
        assert!(!p.offloading_at(30));
    }

    #[test]
    fn a_slow_read_moves_reads_off_the_workers_for_the_window_then_back() {
        let p = ReadPlacement::new();
        let window = OFFLOAD_WINDOW.as_millis() as u64;
        p.observe_at(1_000, Duration::from_millis(3));
        assert!(p.offloading_at(1_000));
        assert!(p.offloading_at(1_000 + window - 1));
        assert!(!p.offloading_at(1_000 + window));
    }

    #[test]
    fn slow_reads_extend_the_window_and_an_older_one_never_shortens_it() {
        let p = ReadPlacement::new();
        let window = OFFLOAD_WINDOW.as_millis() as u64;
        p.observe_at(1_000, Duration::from_millis(3));
        p.observe_at(4_000, Duration::from_millis(3));
        assert!(p.offloading_at(4_000 + window - 1));
        p.observe_at(2_000, Duration::from_millis(3));
        assert!(p.offloading_at(4_000 + window - 1));
        assert!(!p.offloading_at(4_000 + window));
    }
}
