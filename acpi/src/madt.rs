//! MADT, the Multiple APIC Description Table (ACPI 6.x §5.2.12).
//!
//! Written by hand on top of `acpi_tables::sdt::Sdt` because `acpi_tables::madt::MADT` cannot
//! set the PCAT_COMPAT flag and has no Interrupt Source Override structure.

use crate::desc::PlatformDesc;
use crate::sdt::{new_table, Le};

pub const SIGNATURE: [u8; 4] = *b"APIC";
/// Revision 5 (ACPI 6.2-6.4). Linux takes the "online capable" semantics from the FADT
/// revision, not from this field, and every CPU we list is enabled anyway.
const REVISION: u8 = 5;
/// Header (36) + Local Interrupt Controller Address (4) + Flags (4).
const HEADER_LEN: u32 = 44;

/// Every x86 Local APIC sits here.
pub const LOCAL_APIC_ADDRESS: u32 = 0xfee0_0000;
/// Flags bit 0: the platform also has dual 8259 PICs. True for KVM's in-kernel irqchip; Linux
/// then skips probing the PIC (`legacy_pic_pcat_compat()`), and ignores it entirely on a
/// hardware-reduced platform anyway.
const PCAT_COMPAT: u32 = 1;

const TYPE_LOCAL_APIC: u8 = 0;
const TYPE_IO_APIC: u8 = 1;
const TYPE_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
/// Local APIC flags bit 0: enabled.
const LAPIC_ENABLED: u32 = 1;

/// ISA IRQ 0 (the PIT) arrives at IOAPIC pin 2, as on real PCs and in KVM's default GSI
/// routing. ISA bus 0; flags 0 = "conforms to the bus" (edge, active high).
const PIT_ISA_IRQ: u8 = 0;
const PIT_IOAPIC_PIN: u32 = 2;

/// The complete MADT. No SCI override: a hardware-reduced platform has no SCI, and Linux skips
/// the SCI setup for it (`acpi_parse_madt_ioapic_entries()` checks `acpi_gbl_reduced_hardware`).
pub(crate) fn build(desc: &PlatformDesc) -> Vec<u8> {
    let mut table = new_table(SIGNATURE, HEADER_LEN, REVISION);
    table.write_u32(36, LOCAL_APIC_ADDRESS);
    table.write_u32(40, PCAT_COMPAT);

    for cpu in 0..desc.num_cpus {
        // validate() caps num_cpus at 254, so the id fits in the 8-bit fields.
        let id = cpu as u8;
        let mut w = Le::default();
        w.u8(TYPE_LOCAL_APIC)
            .u8(8)
            .u8(id) // ACPI Processor UID
            .u8(id) // APIC ID
            .u32(LAPIC_ENABLED);
        table.append_slice(w.as_slice());
    }

    let mut w = Le::default();
    w.u8(TYPE_IO_APIC)
        .u8(12)
        .u8(desc.ioapic.id)
        .u8(0) // reserved
        .u32(desc.ioapic.address)
        .u32(desc.ioapic.gsi_base);
    table.append_slice(w.as_slice());

    let mut w = Le::default();
    w.u8(TYPE_INTERRUPT_SOURCE_OVERRIDE)
        .u8(10)
        .u8(0) // Bus: ISA
        .u8(PIT_ISA_IRQ)
        .u32(desc.ioapic.gsi_base.saturating_add(PIT_IOAPIC_PIN))
        .u16(0); // MPS INTI flags: conforms to bus
    table.append_slice(w.as_slice());

    table.as_slice().to_vec()
}
