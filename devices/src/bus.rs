//! The port-I/O bus: maps guest I/O port ranges to device models.
//!
//! Accesses that hit no device read as all ones and are otherwise ignored, as on a PC where
//! nothing decodes the port. Devices sit behind a `Mutex` because any vCPU thread may touch them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use thiserror::Error;

/// A device reachable through port I/O. `offset` is relative to the start of its range.
pub trait PioDevice: Send {
    fn read(&mut self, offset: u16, data: &mut [u8]);
    fn write(&mut self, offset: u16, data: &[u8]);
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BusError {
    #[error("I/O range {base:#x}+{len:#x} is empty or wraps past 0xffff")]
    InvalidRange { base: u16, len: u16 },
    #[error("I/O range {base:#x}+{len:#x} overlaps the device already at {other:#x}")]
    Overlap { base: u16, len: u16, other: u16 },
}

type Slot = (u16, Arc<Mutex<dyn PioDevice>>);

#[derive(Default)]
pub struct PioBus {
    /// Keyed by base port; the value holds the range length and the device.
    devices: BTreeMap<u16, Slot>,
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
        let end = u32::from(base) + u32::from(len);
        let clash = self.devices.iter().find(|(&b, &(l, _))| {
            let other_end = u32::from(b) + u32::from(l);
            u32::from(base) < other_end && u32::from(b) < end
        });
        if let Some((&other, _)) = clash {
            return Err(BusError::Overlap { base, len, other });
        }
        self.devices.insert(base, (len, device));
        Ok(())
    }

    fn find(&self, port: u16) -> Option<(u16, &Arc<Mutex<dyn PioDevice>>)> {
        let (&base, (len, dev)) = self.devices.range(..=port).next_back()?;
        (u32::from(port) < u32::from(base) + u32::from(*len)).then_some((port - base, dev))
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
}
