//! NFIT flush hints: one MMIO page per DIMM that the guest writes when it needs its pmem writes
//! durable (Linux's `generic_nvdimm_flush()`, called for REQ_PREFLUSH/REQ_FUA, i.e. fsync on a
//! filesystem or DAX file and `sync` on the block device).
//!
//! The write reaches the monitor as an MMIO exit, the vCPU hands it to the MMIO bus and waits
//! until [`FlushHints`]' `write` returns, so a guest fsync completes only after the host side is durable too: `msync` for file
//! and block-device backings, nothing for device-dax (see `PmemMapping::flush`). Without hints
//! the guest assumes an ADR platform and the host would learn of nothing until it exits.//!
//! A flush that fails is never reported as done: [`FlushHints::write`] returns the error and the
//! caller must not complete the guest's write (the monitor stops the guest instead, see the
//! README). The hint register has no way to carry an error back, and after a failed writeback
//! the kernel has already dropped the dirty state of the pages it could not write, so no later
//! flush can make the lost data durable: letting the guest continue would let its fsync succeed
//! over data that is gone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use thiserror::Error;

use crate::bus::{DeviceFault, MmioDevice};
use crate::pmem::backing::BackingError;
use crate::pmem::mapping::PmemMapping;

/// Bytes of MMIO per DIMM; Linux ioremaps a whole page for each hint.
pub const FLUSH_HINT_STRIDE: u64 = 4096;

/// What a DIMM's flush hint makes durable: its backing's mapping.
pub trait FlushTarget: Send + Sync {
    fn flush(&self) -> Result<(), BackingError>;
}

impl FlushTarget for PmemMapping {
    fn flush(&self) -> Result<(), BackingError> {
        PmemMapping::flush(self)
    }
}

/// The host could not make DIMM `index`'s data durable for a guest flush.
#[derive(Debug, Error)]
#[error("DIMM {index}: {source}")]
pub struct FlushFailed {
    /// The DIMM, in command-line order.
    pub index: usize,
    pub source: BackingError,
}

/// The flush-hint pages of all DIMMs: one MMIO range on the [`MmioBus`](crate::bus::MmioBus),
/// DIMM `i`'s page at offset `i * FLUSH_HINT_STRIDE`.
pub struct FlushHints {
    /// One entry per DIMM slot the MMIO range covers; a hot-added DIMM fills its slot.
    targets: RwLock<Vec<Option<Arc<dyn FlushTarget>>>>,
    flushes: AtomicU64,
    /// Per DIMM: guest writes to its hint, and host flushes (`msync`s) that succeeded.
    counters: Vec<DimmCounters>,
}

/// One DIMM's flush counters.
#[derive(Default)]
struct DimmCounters {
    requests: AtomicU64,
    host_flushes: AtomicU64,
}

impl FlushHints {
    /// `targets[i]` is DIMM `i`'s mapping, or None when there is nothing to flush (read-only).
    pub fn new(targets: Vec<Option<Arc<dyn FlushTarget>>>) -> Self {
        let capacity = targets.len();
        Self::with_capacity(targets, capacity)
    }

    /// As [`new`](Self::new), with pages for `capacity` DIMMs (at least `targets.len()`), so
    /// DIMMs added later ([`set_target`](Self::set_target)) have their hint in the same range.
    pub fn with_capacity(mut targets: Vec<Option<Arc<dyn FlushTarget>>>, capacity: usize) -> Self {
        let capacity = capacity.max(targets.len());
        targets.resize_with(capacity, || None);
        let counters = (0..capacity).map(|_| DimmCounters::default()).collect();
        FlushHints {
            targets: RwLock::new(targets),
            flushes: AtomicU64::new(0),
            counters,
        }
    }

    /// Gives DIMM `index` (a hot-added one) its flush target. False when `index` is beyond
    /// the range.
    pub fn set_target(&self, index: usize, target: Option<Arc<dyn FlushTarget>>) -> bool {
        let mut targets = self.targets.write().unwrap_or_else(|e| e.into_inner());
        match targets.get_mut(index) {
            Some(slot) => {
                *slot = target;
                true
            }
            None => false,
        }
    }

    /// The guest-physical address of DIMM `index`'s hint when the hints sit at `base`.
    pub fn address(base: u64, index: usize) -> u64 {
        base + index as u64 * FLUSH_HINT_STRIDE
    }

    /// Bytes of MMIO the hints take: the length of their bus range.
    pub fn len(&self) -> u64 {
        self.counters.len() as u64 * FLUSH_HINT_STRIDE
    }

    /// No DIMMs, no hints. (For clippy's `len_without_is_empty`.)
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }

    /// How many guest flushes were served.
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// DIMM `index`'s counters: guest flush requests (writes to its hint, including those that
    /// failed) and host flushes that succeeded (none for a read-only DIMM).
    pub fn counters(&self, index: usize) -> (u64, u64) {
        self.counters.get(index).map_or((0, 0), |c| {
            (
                c.requests.load(Ordering::Relaxed),
                c.host_flushes.load(Ordering::Relaxed),
            )
        })
    }
}

impl MmioDevice for FlushHints {
    /// Linux never reads a hint; a read sees all ones, as an unclaimed address would.
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    /// A guest write anywhere in DIMM `i`'s page flushes that DIMM before the vCPU continues.
    /// The value written does not matter (Linux writes 1). A flush that failed is the device's
    /// fault ([`FlushFailed`]): the guest's write must not complete.
    fn write(&self, offset: u64, _data: &[u8]) -> Result<(), DeviceFault> {
        let index = (offset / FLUSH_HINT_STRIDE) as usize;
        let counters = self.counters.get(index);
        if let Some(c) = counters {
            c.requests.fetch_add(1, Ordering::Relaxed);
        }
        let target = self
            .targets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(index)
            .cloned()
            .flatten();
        if let Some(target) = target {
            target
                .flush()
                .map_err(|source| DeviceFault::new(FlushFailed { index, source }))?;
            if let Some(c) = counters {
                c.host_flushes.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
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
        assert!(!bus.write(0xfdff_f000, &[1]).unwrap());
        assert!(!bus.write(0xfe00_2000, &[1]).unwrap());
        assert!(
            bus.write(0xfe00_0000, &[1]).unwrap(),
            "read-only DIMM: served, nothing to flush"
        );
        assert!(bus
            .write(FlushHints::address(0xfe00_0000, 1) + 8, &[1])
            .unwrap());
        assert_eq!(hints.flush_count(), 2);
        assert_eq!(
            hints.counters(0),
            (1, 0),
            "read-only: asked, nothing to flush"
        );
        assert_eq!(hints.counters(1), (1, 1));
        assert_eq!(hints.counters(7), (0, 0));
        assert_eq!(std::fs::read(&path).unwrap()[100], 0x5a);
    }

    /// A backing whose writeback fails (as msync does with EIO on a failing disk).
    struct Failing;

    impl FlushTarget for Failing {
        fn flush(&self) -> Result<(), BackingError> {
            Err(BackingError::Io {
                path: "/dev/broken".into(),
                op: "msync",
                source: std::io::Error::from_raw_os_error(libc::EIO),
            })
        }
    }

    #[test]
    fn a_failed_flush_is_not_reported_as_done() {
        let hints = FlushHints::new(vec![None, Some(Arc::new(Failing))]);
        let e = hints
            .write(FLUSH_HINT_STRIDE, &[1])
            .expect_err("a failed msync must not complete the guest's flush");
        let text = e.to_string();
        assert!(text.starts_with("DIMM 1: "), "{text}");
        assert!(
            text.contains("/dev/broken") && text.contains("msync"),
            "{text}"
        );
        assert!(text.contains("Input/output error"), "{text}");
        assert_eq!(
            hints.flush_count(),
            0,
            "a failed flush is not counted as served"
        );
        assert_eq!(hints.counters(1), (1, 0));
    }
}
