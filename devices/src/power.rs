//! The two ports a hardware-reduced ACPI guest uses to leave: the sleep control register (S5 is
//! power off) and the reset register. Their addresses and the S5 sleep type come from the ACPI
//! tables the monitor builds, so they are parameters here rather than constants.

use std::sync::Arc;

use log::{debug, warn};

use crate::bus::PioDevice;
use crate::lifecycle::{StopReason, StopSignal};

/// SLP_EN: bit 5 of the sleep control register (ACPI 6.4, 4.8.3.7).
const SLP_EN: u8 = 1 << 5;
/// SLP_TYP: bits 4:2 of the sleep control register.
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111;

/// Sleep control (offset 0) and sleep status (offset 1) registers.
pub struct SleepControl {
    s5_sleep_type: u8,
    stop: Arc<StopSignal>,
}

impl SleepControl {
    /// `s5_sleep_type` is the SLP_TYP value of the `\_S5_` object in the DSDT.
    pub fn new(s5_sleep_type: u8, stop: Arc<StopSignal>) -> Self {
        SleepControl {
            s5_sleep_type,
            stop,
        }
    }
}

impl PioDevice for SleepControl {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        // Sleep status: WAK_STS never set because we never resume from a sleep state.
        data.fill(0);
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if offset != 0 || data.len() != 1 {
            return;
        }
        let value = data[0];
        if value & SLP_EN == 0 {
            return;
        }
        let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
        if sleep_type == self.s5_sleep_type {
            debug!("guest entered ACPI S5 (sleep control {value:#x})");
            self.stop.request(StopReason::PowerOff);
        } else {
            warn!("guest asked for unsupported sleep type {sleep_type}; ignoring");
        }
    }
}

/// The PC reset control register at 0xcf9 that the FADT names as its reset register. Writing a
/// value with bit 2 (reset CPU) set resets the machine.
pub struct ResetControl {
    stop: Arc<StopSignal>,
}

impl ResetControl {
    pub fn new(stop: Arc<StopSignal>) -> Self {
        ResetControl { stop }
    }
}

impl PioDevice for ResetControl {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u16, data: &[u8]) {
        if data.len() == 1 && data[0] & 0x04 != 0 {
            debug!("guest wrote {:#x} to the reset control register", data[0]);
            self.stop.request(StopReason::Reboot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_powers_off_other_types_do_not() {
        let stop = Arc::new(StopSignal::new().unwrap());
        let mut dev = SleepControl::new(5, stop.clone());
        dev.write(0, &[(3 << 2) | SLP_EN]);
        dev.write(0, &[5 << 2]); // no SLP_EN
        dev.write(1, &[(5 << 2) | SLP_EN]); // status register
        assert_eq!(stop.reason(), None);
        dev.write(0, &[(5 << 2) | SLP_EN]);
        assert_eq!(stop.reason(), Some(StopReason::PowerOff));
    }

    #[test]
    fn reset_needs_bit_two() {
        let stop = Arc::new(StopSignal::new().unwrap());
        let mut dev = ResetControl::new(stop.clone());
        dev.write(0, &[0x02]);
        dev.write(0, &[0x06, 0]);
        assert_eq!(stop.reason(), None);
        dev.write(0, &[0x06]);
        assert_eq!(stop.reason(), Some(StopReason::Reboot));
    }
}
