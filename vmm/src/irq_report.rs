//! Why a guest's console output stopped: the COM1 interrupt's path at the moment the guest
//! stopped, from the UART through the I/O APIC to each vCPU's local APIC.
//!
//! A guest whose 8250 driver enabled the transmit interrupt and never took it keeps its console
//! output queued; kernel messages still appear (the console writes them by polling), so the
//! only sign is output that never comes. [`tx_stall`] says where the interrupt stopped: never
//! requested at any local APIC (lost before it), requested and not taken (the vCPU did not
//! accept interrupts of its priority), or in service and never completed.

use std::fmt::Write as _;
use std::sync::Mutex;
#[cfg(test)]
use std::time::Duration;

use devices::serial::{SerialPort, TxStall};
use kvm_bindings::{kvm_irqchip, kvm_lapic_state, KVM_IRQCHIP_IOAPIC};
use kvm_ioctls::VmFd;

use crate::cpu::lapic_reg;

// Local APIC register offsets (Intel SDM vol. 3, table 11-1).
const TPR: usize = 0x80;
const PPR: usize = 0xa0;
const ISR: usize = 0x100;
const IRR: usize = 0x200;

/// One vCPU's local APIC, as far as interrupt acceptance goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LapicView {
    pub vcpu: u32,
    /// Vectors requested and not yet accepted (IRR).
    pub requested: Vec<u8>,
    /// Vectors accepted and not yet completed by an EOI (ISR).
    pub in_service: Vec<u8>,
    pub tpr: u8,
    pub ppr: u8,
}

impl LapicView {
    pub fn new(vcpu: u32, lapic: &kvm_lapic_state) -> Self {
        LapicView {
            vcpu,
            requested: vectors(lapic, IRR),
            in_service: vectors(lapic, ISR),
            tpr: lapic_reg(lapic, TPR) as u8,
            ppr: lapic_reg(lapic, PPR) as u8,
        }
    }
}

/// The set bits of a 256-bit vector register: eight 32-bit registers, 16 bytes apart.
fn vectors(lapic: &kvm_lapic_state, base: usize) -> Vec<u8> {
    (0..8)
        .flat_map(|i| {
            let bits = lapic_reg(lapic, base + 16 * i);
            (0..32)
                .filter(move |b| bits & (1 << b) != 0)
                .map(move |b| (32 * i + b) as u8)
        })
        .collect()
}

/// An I/O APIC redirection entry (82093AA datasheet, 3.2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinView {
    pub pin: u32,
    pub vector: u8,
    pub masked: bool,
    pub level: bool,
    pub remote_irr: bool,
}

impl PinView {
    pub fn new(pin: u32, bits: u64) -> Self {
        PinView {
            pin,
            vector: bits as u8,
            masked: bits & (1 << 16) != 0,
            level: bits & (1 << 15) != 0,
            remote_irr: bits & (1 << 14) != 0,
        }
    }
}

/// The warning for a guest that stopped with console output it never sent (see the module
/// doc), or None when it did not. `lapics` are the vCPUs' local APICs as the guest left them.
pub fn console_stall(
    vm: &VmFd,
    serial: &Mutex<SerialPort>,
    irq: u32,
    lapics: &[(u32, kvm_lapic_state)],
) -> Option<String> {
    let stall = serial
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .tx_stall()?;
    let cpus: Vec<LapicView> = lapics
        .iter()
        .map(|(id, l)| LapicView::new(*id, l))
        .collect();
    Some(tx_stall(stall, ioapic_pin(vm, irq), &cpus))
}

/// An I/O APIC pin's redirection entry, read from KVM's in-kernel I/O APIC.
fn ioapic_pin(vm: &VmFd, pin: u32) -> Option<PinView> {
    let mut chip = kvm_irqchip {
        chip_id: KVM_IRQCHIP_IOAPIC,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip).ok()?;
    // SAFETY: KVM filled `chip` for KVM_IRQCHIP_IOAPIC, so the union holds the I/O APIC's
    // state, and a redirection entry's `bits` (a u64) is valid for every bit pattern.
    let bits = unsafe { chip.chip.ioapic.redirtbl.get(pin as usize)?.bits };
    Some(PinView::new(pin, bits))
}

fn hex_list(v: &[u8]) -> String {
    let items: Vec<String> = v.iter().map(|x| format!("{x:#04x}")).collect();
    format!("[{}]", items.join(" "))
}

/// The warning for a guest that stopped with console output it never sent; `pin` is COM1's
/// I/O APIC entry when it could be read.
pub fn tx_stall(stall: TxStall, pin: Option<PinView>, cpus: &[LapicView]) -> String {
    let mut s = format!(
        "COM1: the guest stopped with console output it never sent: it enabled the transmit \
         interrupt, the UART raised it and it was never taken ({} interrupt edges since start, \
         the last {} ms before the stop)",
        stall.edges,
        stall.since_last_edge.as_millis()
    );
    let Some(pin) = pin else {
        let _ = write!(s, "; the I/O APIC could not be read");
        return s;
    };
    let _ = write!(
        s,
        "; I/O APIC pin {}: vector {:#04x}, {}, {}{}",
        pin.pin,
        pin.vector,
        if pin.level { "level" } else { "edge" },
        if pin.masked { "masked" } else { "unmasked" },
        if pin.remote_irr {
            ", waiting for an EOI"
        } else {
            ""
        }
    );
    for cpu in cpus {
        let v = pin.vector;
        let verdict = if cpu.in_service.contains(&v) {
            "in service, never completed"
        } else if cpu.requested.contains(&v) {
            "requested, not accepted"
        } else {
            "not requested"
        };
        let _ = write!(
            s,
            "; vCPU {}: vector {v:#04x} {verdict} (IRR {}, ISR {}, TPR {:#04x}, PPR {:#04x})",
            cpu.vcpu,
            hex_list(&cpu.requested),
            hex_list(&cpu.in_service),
            cpu.tpr,
            cpu.ppr
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lapic_with(regs: &[(usize, u32)]) -> kvm_lapic_state {
        let mut l = kvm_lapic_state::default();
        for &(off, v) in regs {
            for (i, b) in v.to_le_bytes().iter().enumerate() {
                l.regs[off + i] = *b as _;
            }
        }
        l
    }

    #[test]
    fn vectors_come_from_every_register_of_irr_and_isr() {
        // 0x24 = register 1 bit 4; 0xec = register 7 bit 12; 0x21 in service.
        let l = lapic_with(&[
            (IRR + 0x10, 1 << 4),
            (IRR + 0x70, 1 << 12),
            (ISR + 0x10, 1 << 1),
            (TPR, 0x10),
            (PPR, 0x20),
        ]);
        let v = LapicView::new(0, &l);
        assert_eq!(v.requested, vec![0x24, 0xec]);
        assert_eq!(v.in_service, vec![0x21]);
        assert_eq!((v.tpr, v.ppr), (0x10, 0x20));
    }

    #[test]
    fn the_report_says_where_the_interrupt_stopped() {
        let pin = PinView::new(4, 0x24 | (1 << 14) | (1 << 15));
        assert_eq!(
            (pin.vector, pin.masked, pin.level, pin.remote_irr),
            (0x24, false, true, true)
        );
        let requested = LapicView::new(0, &lapic_with(&[(IRR + 0x10, 1 << 4)]));
        let in_service = LapicView::new(1, &lapic_with(&[(ISR + 0x10, 1 << 4)]));
        let neither = LapicView::new(2, &lapic_with(&[]));
        let stall = TxStall {
            edges: 7,
            since_last_edge: Duration::from_millis(5400),
        };
        let s = tx_stall(
            stall,
            Some(PinView::new(4, 0x24)),
            &[requested, in_service, neither],
        );
        assert!(
            s.contains("(7 interrupt edges since start, the last 5400 ms before the stop)"),
            "{s}"
        );
        assert!(
            s.contains("I/O APIC pin 4: vector 0x24, edge, unmasked;"),
            "{s}"
        );
        assert!(
            s.contains("vCPU 0: vector 0x24 requested, not accepted (IRR [0x24]"),
            "{s}"
        );
        assert!(
            s.contains("vCPU 1: vector 0x24 in service, never completed"),
            "{s}"
        );
        assert!(
            s.contains("vCPU 2: vector 0x24 not requested (IRR [], ISR []"),
            "{s}"
        );
        let no_pin = tx_stall(stall, None, &[]);
        assert!(
            no_pin.ends_with("the I/O APIC could not be read"),
            "{no_pin}"
        );
    }
}
