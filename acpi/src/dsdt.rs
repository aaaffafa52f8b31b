//! DSDT: the ACPI namespace (AML), built with `acpi_tables::aml`.
//!
//! ```text
//! Name (\_S5_, Package () { 5, 0, 0, 0 })     // SLP_TYP for power off
//! Scope (\_SB_) {
//!     Device (COM1) { _HID EisaId("PNP0501"), _UID 1, _CRS { IO 0x3f8/8, IRQNoFlags {4} } }
//!     Device (PWRB) { _HID EisaId("PNP0C0C"), _UID 0 }          // with a power button
//!     Device (GED0) {                                            // with a power button
//!         _HID "ACPI0013", _UID 0, _CRS { Interrupt (Edge, ActiveHigh, Exclusive) {GSI} }
//!         Method (_EVT, 1) { Notify (\_SB.PWRB, 0x80) }
//!     }
//!     Device (NVDR) {                          // only with NVDIMMs
//!         Name (_HID, "ACPI0012")
//!         Device (NV00) { Name (_ADR, 0x00000001) }   // = NFIT device handle of DIMM 0
//!         ...
//!     }
//! }
//! ```
//!
//! No `_DSM` yet: Linux 6.12 brings a label-less region up without any. It probes each DIMM's
//! `_DSM` families and continues with "unknown dimm command family" when none answers
//! (`acpi_nfit_add_dimm()`), and without a root `_DSM` ARS fails and `ars_register()`
//! registers the region anyway. No `_STA` either: an absent `_STA` means present and enabled.

use acpi_tables::aml::{
    Device, EISAName, Interrupt, Method, Name, Notify, Package, Path, ResourceTemplate, Scope, IO,
};
use acpi_tables::{Aml, AmlSink};

use crate::desc::{NvdimmDesc, PlatformDesc, SerialDesc};
use crate::nfit::nfit_handle;
use crate::power::S5_SLEEP_TYPE;
use crate::sdt::new_table;

pub const SIGNATURE: [u8; 4] = *b"DSDT";
/// Revision 2: AML integers are 64 bits wide (revision 1 would truncate them to 32).
const REVISION: u8 = 2;

/// Name of the NVDIMM root device (`\_SB.NVDR`), as in QEMU.
pub const NVDIMM_ROOT: &str = "NVDR";

/// A 16-bit IRQ descriptor without flags (`IRQNoFlags () {n}`): edge-triggered, active-high,
/// exclusive, i.e. an ISA interrupt. `acpi_tables` only has the extended interrupt descriptor.
struct IrqNoFlags(u8);

impl Aml for IrqNoFlags {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        // Small resource item, type 4 (IRQ), length 2: tag 0x22, then the IRQ mask.
        sink.byte(0x22);
        sink.word(1u16 << self.0);
    }
}

/// An integer always encoded as a DWordConst (prefix 0x0c), so that `_ADR` reads as the
/// 32-bit NFIT handle in a disassembly (`acpi_tables` would shorten 1 to `One`).
struct DWordConst(u32);

impl Aml for DWordConst {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(0x0c);
        sink.dword(self.0);
    }
}

/// The complete DSDT.
pub(crate) fn build(desc: &PlatformDesc) -> Vec<u8> {
    let mut aml = Vec::new();

    // ACPI requires \_S5 at the root. Only the first value (SLP_TYPa) is used on
    // hardware-reduced platforms; the rest are conventional padding.
    let s5_values = [S5_SLEEP_TYPE, 0, 0, 0];
    let s5_package = Package::new(s5_values.iter().map(|v| v as &dyn Aml).collect());
    Name::new("\\_S5_".into(), &s5_package).to_aml_bytes(&mut aml);

    let serial_devices: Vec<RawAml> = desc
        .serial
        .iter()
        .enumerate()
        .map(|(i, s)| serial_device(i, s))
        .collect();
    let nvdimm_root = (!desc.nvdimms.is_empty()).then(|| nvdimm_root_device(&desc.nvdimms));
    let power_button = desc.power.power_button_gsi.map(power_button_devices);

    let mut sb_children: Vec<&dyn Aml> = Vec::new();
    for dev in &serial_devices {
        sb_children.push(dev);
    }
    if let Some(devs) = &power_button {
        sb_children.push(devs);
    }
    if let Some(root) = &nvdimm_root {
        sb_children.push(root);
    }
    Scope::new("\\_SB_".into(), sb_children).to_aml_bytes(&mut aml);

    let mut table = new_table(SIGNATURE, 36, REVISION);
    table.append_slice(&aml);
    table.as_slice().to_vec()
}

/// Serialised AML is itself AML: lets owned byte vectors sit among borrowed children.
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

/// `Device (COMn)`: a 16550A at `io_base` (8 ports) on ISA IRQ `irq`.
fn serial_device(i: usize, s: &SerialDesc) -> RawAml {
    let uid = i as u32 + 1;
    let name = format!("COM{uid}");
    let hid = Name::new("_HID".into(), &EISAName::new("PNP0501"));
    let uid_name = Name::new("_UID".into(), &uid);
    let io = IO::new(s.io_base, s.io_base, 1, 8);
    let irq = IrqNoFlags(s.irq);
    let crs = Name::new("_CRS".into(), &ResourceTemplate::new(vec![&io, &irq]));
    let mut bytes = Vec::new();
    Device::new(Path::new(&name), vec![&hid, &uid_name, &crs]).to_aml_bytes(&mut bytes);
    RawAml(bytes)
}

/// `Device (PWRB)`, the ACPI power button (`PNP0C0C`), and `Device (GED0)`, the Generic Event
/// Device (`ACPI0013`, ACPI 6.x §5.6.9) that signals it: Linux's `evged` driver requests each
/// interrupt of the GED's `_CRS` and, when it fires, runs `_EVT` with the GSI; ours notifies
/// `PWRB` with 0x80 ("button pressed"), which the button driver (`CONFIG_ACPI_BUTTON`) turns
/// into a `KEY_POWER` input event and an ACPI netlink event for acpid or systemd-logind. There
/// is only one event, so `_EVT` does not look at its argument.
fn power_button_devices(gsi: u32) -> RawAml {
    let mut bytes = Vec::new();
    let hid = Name::new("_HID".into(), &EISAName::new("PNP0C0C"));
    let uid = Name::new("_UID".into(), &0u8);
    Device::new(Path::new("PWRB"), vec![&hid, &uid]).to_aml_bytes(&mut bytes);

    let ged_hid = Name::new("_HID".into(), &"ACPI0013");
    let ged_uid = Name::new("_UID".into(), &0u8);
    let irq = Interrupt::new(true, true, false, false, gsi);
    let crs = Name::new("_CRS".into(), &ResourceTemplate::new(vec![&irq]));
    let pwrb = Path::new("\\_SB_.PWRB");
    let pressed = 0x80u8;
    let notify = Notify::new(&pwrb, &pressed);
    let evt = Method::new("_EVT".into(), 1, true, vec![&notify]);
    Device::new(Path::new("GED0"), vec![&ged_hid, &ged_uid, &crs, &evt]).to_aml_bytes(&mut bytes);
    RawAml(bytes)
}

/// `Device (NVDR)` with `_HID "ACPI0012"` (the device Linux's NFIT driver binds to) and one
/// child `NVxx` per DIMM whose `_ADR` is the DIMM's NFIT device handle.
fn nvdimm_root_device(nvdimms: &[NvdimmDesc]) -> RawAml {
    let hid = Name::new("_HID".into(), &"ACPI0012");
    let children: Vec<RawAml> = (0..nvdimms.len())
        .map(|i| {
            let adr = Name::new("_ADR".into(), &DWordConst(nfit_handle(i)));
            let mut bytes = Vec::new();
            Device::new(Path::new(&format!("NV{i:02X}")), vec![&adr]).to_aml_bytes(&mut bytes);
            RawAml(bytes)
        })
        .collect();
    let mut members: Vec<&dyn Aml> = vec![&hid];
    members.extend(children.iter().map(|c| c as &dyn Aml));
    let mut bytes = Vec::new();
    Device::new(Path::new(NVDIMM_ROOT), members).to_aml_bytes(&mut bytes);
    RawAml(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aml(a: &dyn Aml) -> Vec<u8> {
        let mut v = Vec::new();
        a.to_aml_bytes(&mut v);
        v
    }

    #[test]
    fn irq_no_flags_encoding() {
        // ACPI 6.x §6.4.2.1: byte 0 = 0x22 (IRQ descriptor, length 2), bytes 1-2 = mask.
        assert_eq!(aml(&IrqNoFlags(4)), [0x22, 0x10, 0x00]);
        assert_eq!(aml(&IrqNoFlags(12)), [0x22, 0x00, 0x10]);
    }

    #[test]
    fn power_button_only_when_asked_for() {
        let mut desc = PlatformDesc {
            num_cpus: 1,
            ioapic: Default::default(),
            serial: vec![SerialDesc::COM1],
            power: Default::default(),
            nvdimms: Vec::new(),
            ram: vec![(0, 512 << 20)],
        };
        let without = build(&desc);
        assert!(!without.windows(4).any(|w| w == b"GED0"));
        desc.power.power_button_gsi = Some(5);
        let with = build(&desc);
        for name in [&b"GED0"[..], b"PWRB", b"_EVT", b"ACPI0013"] {
            assert!(with.windows(name.len()).any(|w| w == name), "{name:?}");
        }
        // The extended interrupt descriptor: tag 0x89, length 6, flags 0x03 (consumer, edge,
        // active high, exclusive), one interrupt, GSI 5.
        let irq = [0x89, 0x06, 0x00, 0x03, 0x01, 0x05, 0x00, 0x00, 0x00];
        assert!(with.windows(irq.len()).any(|w| w == irq));
    }

    #[test]
    fn adr_is_a_dword() {
        let adr = Name::new("_ADR".into(), &DWordConst(1));
        // NameOp, "_ADR", DWordPrefix, 1 (LE).
        assert_eq!(aml(&adr), [0x08, b'_', b'A', b'D', b'R', 0x0c, 1, 0, 0, 0]);
    }
}
