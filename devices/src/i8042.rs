//! Just enough of the i8042 keyboard controller for its reset line: Linux's `reboot=k` path (and
//! its fallback when the ACPI reset register does not take) polls the status port until the input
//! buffer is empty and then sends command 0xfe, "pulse the reset line".
//!
//! Registered at 0x60 with length 5: offset 0 is the data port, offset 4 the command/status port.
//! 0x61 (system control port B) lies in between but KVM's in-kernel PIT serves it before we see it.

use std::sync::Arc;

use log::debug;

use crate::bus::PioDevice;
use crate::lifecycle::{StopReason, StopSignal};

const DATA: u16 = 0;
const COMMAND: u16 = 4;
const CMD_PULSE_RESET: u8 = 0xfe;

pub struct I8042 {
    stop: Arc<StopSignal>,
}

impl I8042 {
    pub fn new(stop: Arc<StopSignal>) -> Self {
        I8042 { stop }
    }
}

impl PioDevice for I8042 {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty; no keyboard data ever arrives.
        match offset {
            DATA | COMMAND => data.fill(0),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if offset == COMMAND && data.first() == Some(&CMD_PULSE_RESET) {
            debug!("guest pulsed the i8042 reset line");
            self.stop.request(StopReason::Reboot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulse_reset_reboots() {
        let stop = Arc::new(StopSignal::new().unwrap());
        let mut dev = I8042::new(stop.clone());
        let mut status = [0xaa];
        dev.read(COMMAND, &mut status);
        assert_eq!(status, [0]);
        dev.write(DATA, &[CMD_PULSE_RESET]);
        dev.write(COMMAND, &[0xd1]);
        assert_eq!(stop.reason(), None);
        dev.write(COMMAND, &[CMD_PULSE_RESET]);
        assert_eq!(stop.reason(), Some(StopReason::Reboot));
    }
}
