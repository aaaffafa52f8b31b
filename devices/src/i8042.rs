//! Just enough of the i8042 keyboard controller for its reset line: Linux's `reboot=k` path (and
//! its fallback when the ACPI reset register does not take) polls the status port until the input
//! buffer is empty and then sends command 0xfe, "pulse the reset line".
//!
//! The controller itself is vm-superio's [`I8042Device`]; this file only puts it on the port bus
//! and turns its reset trigger into a [`StopReason::Reboot`].
//!
//! Registered at 0x60 with length 5: offset 0 is the data port, offset 4 the command/status port.
//! 0x61 (system control port B) lies in between but KVM's in-kernel PIT serves it before we see it.

use std::convert::Infallible;
use std::sync::Arc;

use log::debug;
use vm_superio::{I8042Device, Trigger};

use crate::bus::PioDevice;
use crate::lifecycle::{StopReason, StopSignal};

const DATA: u16 = 0;
const COMMAND: u16 = 4;

/// The controller's reset output: asks the monitor to reboot the guest.
pub struct ResetLine(Arc<StopSignal>);

impl Trigger for ResetLine {
    type E = Infallible;

    fn trigger(&self) -> Result<(), Infallible> {
        debug!("guest pulsed the i8042 reset line");
        self.0.request(StopReason::Reboot);
        Ok(())
    }
}

pub struct I8042 {
    device: I8042Device<ResetLine>,
}

impl I8042 {
    pub fn new(stop: Arc<StopSignal>) -> Self {
        I8042 {
            device: I8042Device::new(ResetLine(stop)),
        }
    }
}

impl PioDevice for I8042 {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        // vm-superio reads 0 everywhere (status: output and input buffers empty; no keyboard
        // data ever arrives). Offsets 1-3 are not the controller's: they read as unclaimed ports.
        match offset {
            DATA | COMMAND => data.fill(self.device.read(offset as u8)),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if let (Ok(offset), Some(&value)) = (u8::try_from(offset), data.first()) {
            // The trigger cannot fail (its error type is uninhabited).
            let Ok(()) = self.device.write(offset, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CMD_PULSE_RESET: u8 = 0xfe;

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
