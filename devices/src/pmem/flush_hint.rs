//! NFIT flush hints: one MMIO page per DIMM that the guest writes when it needs its pmem writes
//! durable (Linux's `generic_nvdimm_flush()`, called for REQ_PREFLUSH/REQ_FUA, i.e. fsync on a
//! filesystem or DAX file and `sync` on the block device).
//!
//! The write reaches the monitor as an MMIO exit and the vCPU waits until [`FlushHints::write`]
//! returns, so a guest fsync completes only after the host side is durable too: `msync` for file
//! and block-device backings, nothing for device-dax (see `PmemMapping::flush`). Without hints
//! the guest assumes an ADR platform and the host would learn of nothing until it exits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use log::warn;

use super::backing::PmemMapping;

/// Bytes of MMIO per DIMM; Linux ioremaps a whole page for each hint.
pub const FLUSH_HINT_STRIDE: u64 = 4096;

pub struct FlushHints {
    base: u64,
    targets: Vec<Option<Arc<PmemMapping>>>,
    flushes: AtomicU64,
}

impl FlushHints {
    /// `targets[i]` is DIMM `i`'s mapping, or None when there is nothing to flush (read-only).
    /// DIMM `i`'s hint sits at `base + i * FLUSH_HINT_STRIDE`.
    pub fn new(base: u64, targets: Vec<Option<Arc<PmemMapping>>>) -> Self {
        FlushHints {
            base,
            targets,
            flushes: AtomicU64::new(0),
        }
    }

    /// The guest-physical address of DIMM `index`'s hint.
    pub fn address(base: u64, index: usize) -> u64 {
        base + index as u64 * FLUSH_HINT_STRIDE
    }

    /// One past the last hint address.
    pub fn end(&self) -> u64 {
        self.base + self.targets.len() as u64 * FLUSH_HINT_STRIDE
    }

    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr < self.end()
    }

    /// How many guest flushes were served.
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// Serves a guest write at `addr`; returns false when the address is not a hint. The value
    /// written does not matter (Linux writes 1).
    pub fn write(&self, addr: u64) -> bool {
        if !self.contains(addr) {
            return false;
        }
        let index = ((addr - self.base) / FLUSH_HINT_STRIDE) as usize;
        if let Some(Some(mapping)) = self.targets.get(index) {
            if let Err(e) = mapping.flush() {
                // The guest has no way to learn of the failure through this register; the
                // monitor keeps running and flushes again at exit.
                warn!("flush hint of DIMM {index}: {e}");
            }
        }
        self.flushes.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pmem::backing::{Backing, BackingRequest};

    #[test]
    fn writes_to_a_hint_flush_that_dimm() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pmem");
        let backing = Backing::open(&BackingRequest {
            path: path.clone(),
            size: Some(2 << 20),
            readonly: false,
        })
        .unwrap();
        let mapping = Arc::new(backing.map().unwrap());
        // SAFETY: the mapping is 2 MiB long and writable; offset 100 is inside it.
        unsafe { mapping.as_ptr().add(100).write_volatile(0x5a) };
        let hints = FlushHints::new(0xfe00_0000, vec![None, Some(mapping.clone())]);
        assert_eq!(hints.end(), 0xfe00_2000);
        assert!(!hints.write(0xfdff_f000));
        assert!(!hints.write(0xfe00_2000));
        assert!(
            hints.write(0xfe00_0000),
            "read-only DIMM: served, nothing to flush"
        );
        assert!(hints.write(FlushHints::address(0xfe00_0000, 1) + 8));
        assert_eq!(hints.flush_count(), 2);
        assert_eq!(std::fs::read(&path).unwrap()[100], 0x5a);
    }
}
