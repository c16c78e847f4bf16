//! The process's memory, as /metrics reports it: what the kernel holds
//! resident, and — from the allocator the binary installs — what live
//! objects take against what the allocator keeps. The gap between the two
//! says whether memory that does not come back after a load is data still
//! held or pages the allocator has not returned yet.

use std::sync::OnceLock;

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
    if let Some(rss) = resident_set() {
        metrics::gauge!("turnout_process_resident_bytes").set(rss as f64);
    }
    if let Some(heap) = HEAP.get().and_then(|read| read()) {
        metrics::gauge!("turnout_heap_allocated_bytes").set(heap.allocated as f64);
        metrics::gauge!("turnout_heap_active_bytes").set(heap.active as f64);
        metrics::gauge!("turnout_heap_resident_bytes").set(heap.resident as f64);
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
        retained: stats::retained::read().ok()? as u64,
    })
}

/// The process's resident set, from `/proc/self/status` (Linux only).
fn resident_set() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    vm_rss(&status)
}

fn vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resident_set_is_read_in_bytes_from_the_kernels_kib() {
        let status = "Name:\tturnout\nVmPeak:\t  900 kB\nVmRSS:\t   34816 kB\nThreads:\t9\n";
        assert_eq!(vm_rss(status), Some(34816 * 1024));
        assert_eq!(vm_rss("Name:\tturnout\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_a_resident_set() {
        assert!(resident_set().is_some_and(|rss| rss > 0));
    }
}
