//! FADT, the Fixed ACPI Description Table (ACPI 6.x §5.2.9), for a hardware-reduced platform.
//!
//! Hardware-reduced (flag bit 20) means no PM1/GPE blocks, no SCI, no PM timer and no FACS:
//! ACPICA installs a FACS only if the FADT names one (drivers/acpi/acpica/tbfadt.c
//! `acpi_tb_parse_fadt()`), skips the global lock for reduced hardware (evglock.c) and converts
//! no legacy register blocks (`acpi_tb_convert_fadt()` returns early). Power off and reset go
//! through the sleep control/status and reset registers described in [`crate::PowerDesc`].

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::Aml;

use crate::desc::PowerDesc;
use crate::sdt::{oem_table_id, OEM_ID, OEM_REVISION};

pub const SIGNATURE: [u8; 4] = *b"FACP";

/// IA-PC boot architecture flags (ACPI 6.x §5.2.9.3), as Linux 6.12 reads them in
/// arch/x86/kernel/acpi/boot.c `acpi_parse_fadt()`:
///
/// * bit 0 LEGACY_DEVICES, set: the serial ports are ISA-style devices. Linux only uses it to
///   keep PNPBIOS off when clear, which ACPI does anyway.
/// * bit 1 8042, **clear**: our i8042 implements only the reset line (command 0xfe), not a
///   keyboard. With the bit clear Linux marks the controller firmware-absent and the i8042
///   driver stops at "PNP: No PS/2 controller found" instead of probing a controller that never
///   answers (each probe command times out). The reset path does not depend on it: the
///   `BOOT_KBD` fallback in arch/x86/kernel/reboot.c writes 0xfe to port 0x64 unconditionally.
///   If a full i8042 is ever emulated, set this bit and add a PNP0303 device with IRQ 1 to the
///   DSDT: on a hardware-reduced platform ISA IRQ 1 is not pre-mapped, so the driver needs the
///   IRQ from ACPI.
/// * bit 2 NO_VGA, set: there is no VGA (and the default sleep registers sit on VGA ports).
/// * bit 3 NO_MSI, clear: nothing forbids MSI should a PCI bus appear.
/// * bit 4 NO_ASPM, clear: there is no PCIe.
/// * bit 5 NO_CMOS_RTC, set: no RTC at ports 0x70/0x71 is emulated, so Linux must not register
///   the `rtc_cmos` platform device (arch/x86/kernel/rtc.c checks `x86_platform.legacy.rtc`).
pub const IAPC_BOOT_ARCH: u16 = IAPC_LEGACY_DEVICES | IAPC_NO_VGA | IAPC_NO_CMOS_RTC;
const IAPC_LEGACY_DEVICES: u16 = 1 << 0;
const IAPC_NO_VGA: u16 = 1 << 2;
const IAPC_NO_CMOS_RTC: u16 = 1 << 5;

/// An 8-bit register at an I/O port, accessed with byte accesses.
fn io_port_u8(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

/// The complete 276-byte FADT (revision 6.5, as `acpi_tables` writes it) pointing at the DSDT
/// at guest-physical `dsdt_addr` through X_DSDT (the 32-bit DSDT field stays 0, which ACPICA's
/// `acpi_tb_select_address()` accepts).
pub(crate) fn build(power: &PowerDesc, dsdt_addr: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, oem_table_id(SIGNATURE), OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.reset_reg = io_port_u8(power.reset_port);
    fadt.reset_value = power.reset_value;
    fadt.sleep_control_reg = io_port_u8(power.sleep_control_port);
    fadt.sleep_status_reg = io_port_u8(power.sleep_status_port);

    let mut bytes = Vec::new();
    fadt.finalize().to_aml_bytes(&mut bytes);
    bytes
}
