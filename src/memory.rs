//! The process's memory, as /metrics reports it: what the kernel holds
//! resident, and — from the allocator the binary installs — what live
//! objects take against what the allocator keeps. The gap between the two
//! says whether memory that does not come back after a load is data still
//! held or pages the allocator has not returned yet. And what makes it
//! come back: each of the app's threads hands its cache of freed objects to
//! the allocator while it idles.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::Duration;

/// The allocator's account of the heap, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapStats {
    /// Held by live allocations.
    pub allocated: u64,
    /// In pages the allocator has in use for them (allocated plus the
    /// fragmentation around them).
    pub active: u64,
    /// Resident pages the allocator maps, its own metadata included.
    pub resident: u64,
    /// The allocator's own bookkeeping (extent and page maps, per-arena
    /// tables), which grows with the heap's peak and is not returned.
    pub metadata: u64,
    /// Returned to the kernel but still reserved in address space.
    pub retained: u64,
}

static HEAP: OnceLock<fn() -> Option<HeapStats>> = OnceLock::new();

/// Tells /metrics how to read the heap: called by a binary that installs
/// an allocator which can say (the server installs jemalloc).
pub fn read_heap_with(read: fn() -> Option<HeapStats>) {
    let _ = HEAP.set(read);
}

/// Sets the memory gauges; called when /metrics is scraped.
pub fn record() {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(rss) = status_bytes(&status, "VmRSS") {
            metrics::gauge!("turnout_process_resident_bytes").set(rss as f64);
        }
        // The rest of the resident set is pages of files — the binary's
        // and the libraries' (some 22 MiB of a release build at start),
        // which the kernel may drop and read again, and SQLite's shared WAL
        // index: what the process holds of its own is this part.
        if let Some(anonymous) = status_bytes(&status, "RssAnon") {
            metrics::gauge!("turnout_process_resident_anonymous_bytes").set(anonymous as f64);
        }
    }
    if let Some(heap) = HEAP.get().and_then(|read| read()) {
        metrics::gauge!("turnout_heap_allocated_bytes").set(heap.allocated as f64);
        metrics::gauge!("turnout_heap_active_bytes").set(heap.active as f64);
        metrics::gauge!("turnout_heap_resident_bytes").set(heap.resident as f64);
        metrics::gauge!("turnout_heap_metadata_bytes").set(heap.metadata as f64);
        metrics::gauge!("turnout_heap_retained_bytes").set(heap.retained as f64);
    }
}

/// jemalloc's account, for a binary that installs it as the global
/// allocator.
pub fn jemalloc_heap() -> Option<HeapStats> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    Some(HeapStats {
        allocated: stats::allocated::read().ok()? as u64,
        active: stats::active::read().ok()? as u64,
        resident: stats::resident::read().ok()? as u64,
        metadata: stats::metadata::read().ok()? as u64,
        retained: stats::retained::read().ok()? as u64,
    })
}

/// How often a thread looks whether it has idled.
const IDLE_LOOK: Duration = Duration::from_secs(5);

/// Below this much allocated between two looks a thread counts as idle: a
/// heuristic — a thread serving even a trickle of requests allocates more.
const IDLE_BELOW_BYTES: u64 = 64 * 1024;

thread_local! {
    static WATCHED: Cell<bool> = const { Cell::new(false) };
}

/// Starts, on the current actix thread (once per thread, however often it
/// is called), a look every few seconds at what the thread allocated: while
/// it idles, its cache of freed objects goes back to the allocator at each
/// look. A thread's cache keeps up to a few hundred objects of every size
/// it freed, where they pin partly empty pages, and jemalloc trims it only
/// as the thread allocates and frees, a size class at a time; after a load
/// that was a fifth of the heap (docs/BENCHMARKS.md, "Memory after a
/// load"). An idle thread still frees — actors passivate, hubs close,
/// SQLite's cache is released — so it hands back at every look, not once;
/// flushing an empty cache costs microseconds. A busy thread keeps its
/// cache, which is what makes it fast. Freed pages go back to the kernel
/// on jemalloc's own schedule (its background threads), not from here.
pub fn give_back_when_idle() {
    if WATCHED.replace(true) {
        return;
    }
    let Ok(allocated) = tikv_jemalloc_ctl::thread::allocatedp::read() else {
        return;
    };
    actix_web::rt::spawn(async move {
        let mut idle = IdleWatch::new(allocated.get());
        let mut every = tokio::time::interval(IDLE_LOOK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            if idle.has_idled(allocated.get()) {
                hand_back_thread_cache();
            }
        }
    });
}

/// Whether a thread idled between two looks, from the bytes it has
/// allocated in all (a counter that only grows).
#[derive(Debug)]
struct IdleWatch {
    seen: u64,
}

impl IdleWatch {
    fn new(allocated: u64) -> Self {
        Self { seen: allocated }
    }

    fn has_idled(&mut self, allocated: u64) -> bool {
        let since = allocated.saturating_sub(self.seen);
        self.seen = allocated;
        since < IDLE_BELOW_BYTES
    }
}

/// Flushes the calling thread's cache into its arena. (`thread.idle` would
/// also purge the arena, which busy threads may share, at every look.)
fn hand_back_thread_cache() {
    // SAFETY: `thread.tcache.flush` reads and writes nothing; the name is
    // NUL-terminated and every pointer is null, as the call requires.
    let status = unsafe {
        tikv_jemalloc_sys::mallctl(
            c"thread.tcache.flush".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if status != 0 {
        tracing::debug!(status, "jemalloc refused thread.tcache.flush");
    }
}

/// A field of `/proc/self/status` (Linux only) in bytes: the kernel
/// gives KiB.
fn status_bytes(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| {
        l.strip_prefix(field)
            .is_some_and(|rest| rest.starts_with(':'))
    })?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resident_set_is_read_in_bytes_from_the_kernels_kib() {
        let status = "Name:\tturnout\nVmPeak:\t  900 kB\nVmRSS:\t   34816 kB\n\
                      RssAnon:\t   20480 kB\nRssFile:\t   14336 kB\nThreads:\t9\n";
        assert_eq!(status_bytes(status, "VmRSS"), Some(34816 * 1024));
        assert_eq!(status_bytes(status, "RssAnon"), Some(20480 * 1024));
        assert_eq!(status_bytes("Name:\tturnout\n", "VmRSS"), None);
    }

    #[test]
    fn a_thread_idles_while_it_allocates_little_between_two_looks() {
        let mut watch = IdleWatch::new(1_000);
        assert!(!watch.has_idled(1_000 + IDLE_BELOW_BYTES), "busy");
        assert!(watch.has_idled(1_000 + IDLE_BELOW_BYTES + 10), "idle");
        assert!(watch.has_idled(1_000 + IDLE_BELOW_BYTES + 20), "still idle");
        assert!(!watch.has_idled(1_000 + 3 * IDLE_BELOW_BYTES), "busy again");
        assert!(watch.has_idled(1_000 + 3 * IDLE_BELOW_BYTES), "idle again");
    }

    /// Where jemalloc is the C library's `malloc` too, as in this test's
    /// process (the unprefixed build replaces glibc's).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_thread_hands_its_cache_back_to_the_allocator() {
        use tikv_jemalloc_ctl::{epoch, raw};
        std::thread::spawn(|| {
            // An arena of this thread's own, so that what the arena's
            // caches hold is this thread's cache alone.
            let arena: u32 = unsafe { raw::read(b"arenas.create\0") }.unwrap();
            unsafe { raw::write(b"thread.arena\0", arena) }.unwrap();
            let cached_name = format!("stats.arenas.{arena}.tcache_bytes\0");
            let cached = || -> usize {
                epoch::advance().unwrap();
                unsafe { raw::read(cached_name.as_bytes()) }.unwrap()
            };
            let freed: Vec<Box<[u8; 48]>> = (0..100).map(|_| Box::new([0; 48])).collect();
            drop(freed);
            let before = cached();
            hand_back_thread_cache();
            let after = cached();
            assert!(before >= 48 * 50, "the thread's cache held {before} bytes");
            assert_eq!(after, 0, "{before} bytes cached before");
        })
        .join()
        .unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_a_resident_set() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let rss = status_bytes(&status, "VmRSS").unwrap();
        let anonymous = status_bytes(&status, "RssAnon").unwrap();
        assert!(0 < anonymous && anonymous <= rss, "{anonymous} of {rss}");
    }
}
