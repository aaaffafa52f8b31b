//! NVDIMM health events: which DIMMs the guest should be notified about, and the interrupt
//! that tells it to look.
//!
//! ACPI notifies a DIMM's health change with `Notify (NVxx, 0x81)` (Linux
//! `NFIT_NOTIFY_DIMM_HEALTH`: the nfit driver wakes pollers of the DIMM's `nfit/flags` sysfs
//! file, which is what `ndctl monitor` waits on). Only AML can notify, so the monitor raises a
//! GED interrupt and the GED's `_EVT` reads this register to learn which DIMMs changed (the
//! `acpi` crate's `dsdt.rs` builds that method; the port is `geometry::nvdimm_events`): 64
//! bits, one per DIMM by NFIT index, read as
//! two 32-bit halves at offsets 0 and 4, each read returning its half's pending bits and
//! clearing them. Notifying a DIMM twice is harmless (the guest re-reads SMART), so a guest that
//! reads the register itself only loses its own notifications. Writes are ignored.

use std::sync::atomic::{AtomicU64, Ordering};

use log::warn;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::PioDevice;

/// The pending health events and the interrupt (a KVM irqfd) that announces them.
pub struct HealthEvents {
    pending: AtomicU64,
    irq: EventFd,
}

impl HealthEvents {
    pub fn new(irq: EventFd) -> Self {
        HealthEvents {
            pending: AtomicU64::new(0),
            irq,
        }
    }

    /// Marks DIMM `index` (its NFIT index) as changed and interrupts the guest. Indexes past
    /// the 64 the register holds are ignored (there are never more DIMMs).
    pub fn notify(&self, index: usize) {
        let Some(bit) = u32::try_from(index).ok().and_then(|i| 1u64.checked_shl(i)) else {
            return;
        };
        self.pending.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.irq.write(1) {
            warn!("NVDIMM health event for DIMM {index}: interrupt not raised: {e}");
        }
    }

    /// Takes the pending bits of one half (0: DIMMs 0-31, 1: DIMMs 32-63).
    fn take(&self, half: u32) -> u32 {
        let mask = 0xffff_ffffu64 << (32 * half);
        let before = self.pending.fetch_and(!mask, Ordering::SeqCst);
        ((before & mask) >> (32 * half)) as u32
    }
}

/// The register on the port bus, sharing the events with whoever notifies.
pub struct HealthEventRegister(pub std::sync::Arc<HealthEvents>);

impl PioDevice for HealthEventRegister {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0);
        if data.len() == 4 && (offset == 0 || offset == 4) {
            let half = self.0.take(u32::from(offset / 4));
            data.copy_from_slice(&half.to_le_bytes());
        }
    }

    fn write(&mut self, _offset: u16, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn read(r: &mut HealthEventRegister, offset: u16, len: usize) -> Vec<u8> {
        let mut b = vec![0xaa; len];
        r.read(offset, &mut b);
        b
    }

    #[test]
    fn each_half_reports_and_clears_its_dimms() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let events = Arc::new(HealthEvents::new(irq.try_clone().unwrap()));
        let mut reg = HealthEventRegister(events.clone());
        assert_eq!(read(&mut reg, 0, 4), [0; 4]);
        assert!(irq.read().is_err(), "no interrupt without an event");
        events.notify(0);
        events.notify(3);
        events.notify(33);
        events.notify(64); // no such DIMM: ignored
        assert_eq!(irq.read().unwrap(), 3, "one interrupt per event");
        assert_eq!(read(&mut reg, 4, 4), 2u32.to_le_bytes());
        assert_eq!(read(&mut reg, 4, 4), [0; 4], "read clears");
        assert_eq!(read(&mut reg, 0, 4), 0b1001u32.to_le_bytes());
        assert_eq!(read(&mut reg, 0, 4), [0; 4]);
        // Odd sizes and offsets read zero and take nothing; writes change nothing.
        events.notify(1);
        assert_eq!(read(&mut reg, 0, 1), [0]);
        assert_eq!(read(&mut reg, 2, 4), [0; 4]);
        assert_eq!(read(&mut reg, 0, 8), [0; 8]);
        reg.write(0, &[0xff; 4]);
        assert_eq!(read(&mut reg, 0, 4), 2u32.to_le_bytes());
    }
}
