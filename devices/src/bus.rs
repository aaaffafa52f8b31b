//! The two buses the vCPUs dispatch guest accesses through: port I/O ([`PioBus`]) and MMIO
//! ([`MmioBus`]). Each maps non-overlapping address ranges to device models; a device sees
//! offsets relative to the start of its range.
//!
//! Accesses that hit no device read as all ones and are otherwise ignored, as on a PC where
//! nothing decodes the address.
//!
//! Port devices sit behind a `Mutex` because any vCPU thread may touch them and their registers
//! are small state machines. MMIO devices take `&self` and lock what they need themselves: every
//! vCPU may hit them at once and a handler may block (a flush hint waits for an `msync`), which
//! one bus-wide lock per device would serialise.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use thiserror::Error;

/// A device reachable through port I/O. `offset` is relative to the start of its range.
pub trait PioDevice: Send {
    fn read(&mut self, offset: u16, data: &mut [u8]);
    fn write(&mut self, offset: u16, data: &[u8]);
}

/// A device reachable through MMIO (guest physical addresses that no memory slot backs).
/// `offset` is relative to the start of its range.
pub trait MmioDevice: Send + Sync {
    fn read(&self, offset: u64, data: &mut [u8]);
    /// Serves a guest write. An error means the device could not do what the write asks and
    /// the write must not complete: the vCPU stops instead of re-entering the guest (a flush
    /// hint whose `msync` failed must not let the guest's fsync return).
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), DeviceFault>;
}

/// A device could not complete a guest access; the error says which device and why.
#[derive(Debug, Error)]
#[error(transparent)]
pub struct DeviceFault(pub Box<dyn std::error::Error + Send + Sync>);

impl DeviceFault {
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        DeviceFault(Box::new(e))
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BusError {
    #[error("I/O range {base:#x}+{len:#x} is empty or wraps past 0xffff")]
    InvalidRange { base: u16, len: u16 },
    #[error("I/O range {base:#x}+{len:#x} overlaps the device already at {other:#x}")]
    Overlap { base: u16, len: u16, other: u16 },
    #[error("MMIO range {base:#x}+{len:#x} is empty or wraps past the end of the address space")]
    InvalidMmioRange { base: u64, len: u64 },
    #[error("MMIO range {base:#x}+{len:#x} overlaps the device already at {other:#x}")]
    MmioOverlap { base: u64, len: u64, other: u64 },
}

/// Non-overlapping ranges `[base, base + len)` of one address space, each with its device: the
/// lookup both buses share.
struct RangeMap<T: ?Sized> {
    /// Keyed by base address; the value holds the range length and the device.
    ranges: BTreeMap<u64, (u64, Arc<T>)>,
}

impl<T: ?Sized> Default for RangeMap<T> {
    fn default() -> Self {
        RangeMap {
            ranges: BTreeMap::new(),
        }
    }
}

impl<T: ?Sized> RangeMap<T> {
    /// Adds `[base, base + len)`, which the caller has checked is non-empty and does not wrap.
    /// `Err(other)` names the base of a range it overlaps.
    fn insert(&mut self, base: u64, len: u64, device: Arc<T>) -> Result<(), u64> {
        let end = base + len;
        let clash = self
            .ranges
            .iter()
            .find(|(&b, &(l, _))| base < b + l && b < end);
        if let Some((&other, _)) = clash {
            return Err(other);
        }
        self.ranges.insert(base, (len, device));
        Ok(())
    }

    /// The device whose range holds `addr`, and `addr`'s offset in it.
    fn find(&self, addr: u64) -> Option<(u64, &Arc<T>)> {
        let (&base, (len, dev)) = self.ranges.range(..=addr).next_back()?;
        (addr - base < *len).then_some((addr - base, dev))
    }
}

#[derive(Default)]
pub struct PioBus {
    devices: RangeMap<Mutex<dyn PioDevice>>,
}

impl PioBus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(
        &mut self,
        base: u16,
        len: u16,
        device: Arc<Mutex<dyn PioDevice>>,
    ) -> Result<(), BusError> {
        if len == 0 || base.checked_add(len - 1).is_none() {
            return Err(BusError::InvalidRange { base, len });
        }
        self.devices
            .insert(u64::from(base), u64::from(len), device)
            .map_err(|other| BusError::Overlap {
                base,
                len,
                // A port range's base is a port.
                other: other as u16,
            })
    }

    fn find(&self, port: u16) -> Option<(u16, &Arc<Mutex<dyn PioDevice>>)> {
        // Offsets within a port range are below 0x10000.
        self.devices
            .find(u64::from(port))
            .map(|(offset, dev)| (offset as u16, dev))
    }

    /// Serves a guest read. Returns false when no device claims the port.
    pub fn read(&self, port: u16, data: &mut [u8]) -> bool {
        match self.find(port) {
            Some((offset, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Serves a guest write. Returns false when no device claims the port.
    pub fn write(&self, port: u16, data: &[u8]) -> bool {
        match self.find(port) {
            Some((offset, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[derive(Default)]
pub struct MmioBus {
    devices: RangeMap<dyn MmioDevice>,
}

impl MmioBus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: Arc<dyn MmioDevice>,
    ) -> Result<(), BusError> {
        if len == 0 || base.checked_add(len - 1).is_none() {
            return Err(BusError::InvalidMmioRange { base, len });
        }
        self.devices
            .insert(base, len, device)
            .map_err(|other| BusError::MmioOverlap { base, len, other })
    }

    /// Serves a guest read. Returns false when no device claims the address (the data then
    /// reads as all ones).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.devices.find(addr) {
            Some((offset, dev)) => {
                dev.read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Serves a guest write. Returns false when no device claims the address, and the device's
    /// fault when it could not complete the write.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<bool, DeviceFault> {
        match self.devices.find(addr) {
            Some((offset, dev)) => dev.write(offset, data).map(|()| true),
            None => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u16, Vec<u8>)>);
    impl PioDevice for Echo {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u16, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_offset_and_rejects_overlap() {
        let mut bus = PioBus::new();
        let dev = Arc::new(Mutex::new(Echo(vec![])));
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        assert_eq!(
            bus.insert(0x3fc, 8, dev.clone()),
            Err(BusError::Overlap {
                base: 0x3fc,
                len: 8,
                other: 0x3f8
            })
        );
        assert_eq!(
            bus.insert(0xfffe, 4, dev.clone()),
            Err(BusError::InvalidRange {
                base: 0xfffe,
                len: 4
            })
        );
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b, [5]);
        assert!(!bus.read(0x400, &mut b));
        assert_eq!(b, [0xff]);
        assert!(!bus.read(0x3f7, &mut b));
        assert!(bus.write(0x3ff, &[9]));
        assert_eq!(dev.lock().unwrap().0, vec![(7, vec![9])]);
    }

    struct Log(Mutex<Vec<(u64, Vec<u8>)>>);
    impl MmioDevice for Log {
        fn read(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), DeviceFault> {
            self.0.lock().unwrap().push((offset, data.to_vec()));
            Ok(())
        }
    }

    #[test]
    fn mmio_dispatches_by_offset_and_rejects_overlap() {
        let mut bus = MmioBus::new();
        let dev = Arc::new(Log(Mutex::new(vec![])));
        bus.insert(0xfe00_0000, 0x2000, dev.clone()).unwrap();
        assert_eq!(
            bus.insert(0xfe00_1000, 0x1000, dev.clone()),
            Err(BusError::MmioOverlap {
                base: 0xfe00_1000,
                len: 0x1000,
                other: 0xfe00_0000
            })
        );
        assert_eq!(
            bus.insert(u64::MAX, 2, dev.clone()),
            Err(BusError::InvalidMmioRange {
                base: u64::MAX,
                len: 2
            })
        );
        assert!(bus.insert(0xfe00_2000, 0, dev.clone()).is_err());
        bus.insert(0xfdff_f000, 0x1000, dev.clone()).unwrap();
        let mut b = [0u8; 4];
        assert!(bus.read(0xfe00_0010, &mut b));
        assert_eq!(b, [0x10; 4]);
        assert!(!bus.read(0xfe00_2000, &mut b));
        assert_eq!(b, [0xff; 4]);
        assert!(bus.write(0xfe00_1008, &[1]).unwrap());
        assert!(bus.write(0xfdff_f000, &[2]).unwrap());
        assert!(!bus.write(0xfe00_2000, &[3]).unwrap());
        assert_eq!(
            *dev.0.lock().unwrap(),
            vec![(0x1008, vec![1]), (0, vec![2])]
        );
    }
}
