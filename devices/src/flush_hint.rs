//! NFIT flush hints: one MMIO page per DIMM that the guest writes when it needs its pmem writes
//! durable (Linux's `generic_nvdimm_flush()`, called for REQ_PREFLUSH/REQ_FUA, i.e. fsync on a
//! filesystem or DAX file and `sync` on the block device).
//!
//! The write reaches the monitor as an MMIO exit, the vCPU hands it to the MMIO bus and waits
//! until [`FlushHints`]' `write` returns, so a guest fsync completes only after the host side is durable too: `msync` for file
//! and block-device backings, nothing for device-dax (see `PmemMapping::flush`). Without hints
//! the guest assumes an ADR platform and the host would learn of nothing until it exits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use log::warn;

use crate::bus::MmioDevice;
use crate::pmem::mapping::PmemMapping;

/// Bytes of MMIO per DIMM; Linux ioremaps a whole page for each hint.
pub const FLUSH_HINT_STRIDE: u64 = 4096;

/// The flush-hint pages of all DIMMs: one MMIO range on the [`MmioBus`](crate::bus::MmioBus),
/// DIMM `i`'s page at offset `i * FLUSH_HINT_STRIDE`.
pub struct FlushHints {
    targets: Vec<Option<Arc<PmemMapping>>>,
    flushes: AtomicU64,
}

impl FlushHints {
    /// `targets[i]` is DIMM `i`'s mapping, or None when there is nothing to flush (read-only).
    pub fn new(targets: Vec<Option<Arc<PmemMapping>>>) -> Self {
        FlushHints {
            targets,
            flushes: AtomicU64::new(0),
        }
    }

    /// The guest-physical address of DIMM `index`'s hint when the hints sit at `base`.
    pub fn address(base: u64, index: usize) -> u64 {
        base + index as u64 * FLUSH_HINT_STRIDE
    }

    /// Bytes of MMIO the hints take: the length of their bus range.
    pub fn len(&self) -> u64 {
        self.targets.len() as u64 * FLUSH_HINT_STRIDE
    }

    /// No DIMMs, no hints. (For clippy's `len_without_is_empty`.)
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// How many guest flushes were served.
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }
}

impl MmioDevice for FlushHints {
    /// Linux never reads a hint; a read sees all ones, as an unclaimed address would.
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    /// A guest write anywhere in DIMM `i`'s page flushes that DIMM before the vCPU continues.
    /// The value written does not matter (Linux writes 1).
    fn write(&self, offset: u64, _data: &[u8]) {
        let index = (offset / FLUSH_HINT_STRIDE) as usize;
        if let Some(Some(mapping)) = self.targets.get(index) {
            if let Err(e) = mapping.flush() {
                // The guest has no way to learn of the failure through this register; the
                // monitor keeps running and flushes again at exit.
                warn!("flush hint of DIMM {index}: {e}");
            }
        }
        self.flushes.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::MmioBus;
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
        let hints = Arc::new(FlushHints::new(vec![None, Some(mapping.clone())]));
        assert_eq!(hints.len(), 0x2000);
        let mut bus = MmioBus::new();
        bus.insert(0xfe00_0000, hints.len(), hints.clone()).unwrap();
        assert!(!bus.write(0xfdff_f000, &[1]));
        assert!(!bus.write(0xfe00_2000, &[1]));
        assert!(
            bus.write(0xfe00_0000, &[1]),
            "read-only DIMM: served, nothing to flush"
        );
        assert!(bus.write(FlushHints::address(0xfe00_0000, 1) + 8, &[1]));
        assert_eq!(hints.flush_count(), 2);
        assert_eq!(std::fs::read(&path).unwrap()[100], 0x5a);
    }
}
