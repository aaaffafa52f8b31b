//! An empty PCI bus behind configuration mechanism #1: the address register at 0xcf8 and the
//! data window at 0xcfc-0xcff, with one host bridge at 00:00.0 and nothing else.
//!
//! The guest has no PCI devices, but Linux on x86 looks for a configuration access method at
//! boot and, finding none, logs `PCI: Fatal: No config space access function found` (even with
//! `pci=off`). With mechanism #1 answering and a host bridge to pass its sanity check (which
//! looks for class 0x0600 on bus 0 when there is no DMI BIOS date), the guest's probe succeeds.
//! The DSDT describes no PCI root bridge, so Linux enumerates nothing further.
//!
//! 0xcf9 is the reset control register (byte-wide, in the middle of the address register), so
//! the address register is registered as the single port 0xcf8 (dword accesses start there) and
//! leaves 0xcf9 to [`crate::power::ResetControl`], as a PC chipset decodes them by width.

use std::sync::{Arc, Mutex};

use crate::bus::PioDevice;

/// The first port of the address register and of the data window.
pub const CONFIG_ADDRESS_PORT: u16 = 0xcf8;
pub const CONFIG_DATA_PORT: u16 = 0xcfc;
/// Ports of the data window.
pub const CONFIG_DATA_LEN: u16 = 4;

/// Intel, and the device id cloud-hypervisor gives its virtual host bridge.
const HOST_BRIDGE_VENDOR: u16 = 0x8086;
const HOST_BRIDGE_DEVICE: u16 = 0x0d57;
/// Base class 0x06 (bridge), subclass 0x00 (host bridge).
const CLASS_HOST_BRIDGE: u16 = 0x0600;
/// Bit 31 of the address register: configuration space access enabled.
const ENABLE: u32 = 1 << 31;

/// The 256-byte configuration space of the host bridge: ids and class, everything else zero
/// (no BARs, no capabilities, command and status zero). Writes are ignored.
fn host_bridge_config() -> [u8; 256] {
    let mut c = [0u8; 256];
    c[0..2].copy_from_slice(&HOST_BRIDGE_VENDOR.to_le_bytes());
    c[2..4].copy_from_slice(&HOST_BRIDGE_DEVICE.to_le_bytes());
    // 0x08 revision, 0x09 prog-if, 0x0a subclass, 0x0b class.
    c[0x0a..0x0c].copy_from_slice(&CLASS_HOST_BRIDGE.to_le_bytes());
    c
}

/// State shared by the two port ranges.
struct State {
    address: u32,
    host_bridge: [u8; 256],
}

/// The configuration mechanism; [`PciConfigIo::address_port`] and
/// [`PciConfigIo::data_port`] are the two devices to put on the port bus.
#[derive(Clone)]
pub struct PciConfigIo {
    state: Arc<Mutex<State>>,
}

impl Default for PciConfigIo {
    fn default() -> Self {
        Self::new()
    }
}

impl PciConfigIo {
    pub fn new() -> Self {
        PciConfigIo {
            state: Arc::new(Mutex::new(State {
                address: 0,
                host_bridge: host_bridge_config(),
            })),
        }
    }

    /// The device for port 0xcf8 (length 1: dword accesses start there).
    pub fn address_port(&self) -> ConfigAddress {
        ConfigAddress(self.clone())
    }

    /// The device for ports 0xcfc-0xcff.
    pub fn data_port(&self) -> ConfigData {
        ConfigData(self.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The configuration address register.
pub struct ConfigAddress(PciConfigIo);

/// The configuration data window.
pub struct ConfigData(PciConfigIo);

impl PioDevice for ConfigAddress {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        if offset == 0 && data.len() == 4 {
            data.copy_from_slice(&self.0.lock().address.to_le_bytes());
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        // Only dword writes reach the address register; byte writes to 0xcf8 (the
        // mechanism #2 probe) are not for it.
        if let (0, Ok(bytes)) = (offset, <[u8; 4]>::try_from(data)) {
            // Bits 1:0 are reserved and read as zero.
            self.0.lock().address = u32::from_le_bytes(bytes) & !0x3;
        }
    }
}

impl PioDevice for ConfigData {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let state = self.0.lock();
        let address = state.address;
        let bus_dev_fn = (address >> 8) & 0xffff;
        let register = (address & 0xfc) as usize + offset as usize;
        // Absent functions, disabled accesses and accesses past the window read as all ones.
        if address & ENABLE == 0
            || bus_dev_fn != 0
            || offset as usize + data.len() > CONFIG_DATA_LEN as usize
        {
            data.fill(0xff);
            return;
        }
        data.copy_from_slice(&state.host_bridge[register..register + data.len()]);
    }

    fn write(&mut self, _offset: u16, _data: &[u8]) {
        // The host bridge has nothing writable; absent functions ignore writes.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select(addr: &mut ConfigAddress, bus: u32, dev: u32, func: u32, reg: u32) {
        addr.write(
            0,
            &(ENABLE | (bus << 16) | (dev << 11) | (func << 8) | reg).to_le_bytes(),
        );
    }

    #[test]
    fn address_register_reads_back() {
        let pci = PciConfigIo::new();
        let mut addr = pci.address_port();
        addr.write(0, &0x8000_0000u32.to_le_bytes());
        let mut b = [0u8; 4];
        addr.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x8000_0000);
        addr.write(0, &0x8000_0843u32.to_le_bytes());
        addr.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x8000_0840);
        // A byte write (the mechanism #2 probe) leaves it alone.
        addr.write(0, &[0]);
        addr.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x8000_0840);
    }

    #[test]
    fn host_bridge_at_00_00_0() {
        let pci = PciConfigIo::new();
        let (mut addr, mut data) = (pci.address_port(), pci.data_port());
        select(&mut addr, 0, 0, 0, 0);
        let mut d = [0u8; 4];
        data.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0d57_8086);
        select(&mut addr, 0, 0, 0, 8);
        let mut w = [0u8; 2];
        data.read(2, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x0600);
        let mut b = [0u8; 1];
        data.read(3, &mut b);
        assert_eq!(b[0], 0x06);
        // Writes change nothing.
        data.write(0, &[0xff; 4]);
        data.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0600_0000);
    }

    #[test]
    fn absent_functions_read_all_ones() {
        let pci = PciConfigIo::new();
        let (mut addr, mut data) = (pci.address_port(), pci.data_port());
        for (bus, dev, func) in [(0, 1, 0), (0, 0, 1), (1, 0, 0), (255, 31, 7)] {
            select(&mut addr, bus, dev, func, 0);
            let mut d = [0u8; 4];
            data.read(0, &mut d);
            assert_eq!(d, [0xff; 4], "{bus:02x}:{dev:02x}.{func}");
        }
        // Without the enable bit nothing answers.
        addr.write(0, &0u32.to_le_bytes());
        let mut d = [0u8; 4];
        data.read(0, &mut d);
        assert_eq!(d, [0xff; 4]);
        // An access past the window (a bus could not produce it) is all ones, not a panic.
        select(&mut addr, 0, 0, 0, 0xfc);
        let mut d = [0u8; 4];
        data.read(2, &mut d);
        assert_eq!(d, [0xff; 4]);
    }
}
