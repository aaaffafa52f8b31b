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
//! With the `_DSM` mailbox (`PlatformDesc::nvdimm_dsm`) every DIMM device has a `_DSM` that
//! passes its arguments to the monitor (see `dsm_mailbox`); the monitor answers function 0 with
//! the Intel functions the DIMM has (labels 4, 5, 6; SMART 1, 2, 17), none for a plain DIMM,
//! which Linux then treats as label-less as it did before there was a `_DSM`
//! (`devices::nvdimm_dsm` says what and why). There is no root `_DSM`: ARS fails and
//! `ars_register()` registers the region anyway. No `_STA` either: an absent `_STA` means
//! present and enabled.

use acpi_tables::aml::{
    Add, And, Arg, BufferData, DeRefOf, Device, EISAName, Else, Equal, Field, FieldAccessType,
    FieldEntry, FieldLockRule, FieldUpdateRule, GreaterThan, If, Index, Interrupt, LessThan, Local,
    Method, MethodCall, Mid, Name, NotEqual, Notify, ObjectType, OpRegion, OpRegionSpace, Package,
    Path, ResourceTemplate, Return, Scope, SizeOf, Store, While, IO, ONE, ZERO,
};
use acpi_tables::{Aml, AmlSink};

use crate::desc::{
    HealthEventsDesc, NvdimmDsmDesc, NvdimmEjectDesc, NvdimmHotplugDesc, PlatformDesc, SerialDesc,
    MAX_NVDIMMS,
};
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
    let nvdimm_root = (!desc.nvdimms.is_empty() || desc.nvdimm_hotplug.is_some()).then(|| {
        nvdimm_root_device(
            desc.nvdimms.len(),
            desc.nvdimm_hotplug.as_ref(),
            desc.nvdimm_dsm.as_ref(),
        )
    });
    // Health events need DIMM devices to notify.
    let health = nvdimm_root.as_ref().and_then(|_| {
        let events = desc.nvdimm_dsm.as_ref()?.health_events?;
        Some((
            events,
            declared_dimms(desc.nvdimms.len(), desc.nvdimm_hotplug.as_ref()),
        ))
    });
    let ged = (desc.power.power_button_gsi.is_some()
        || desc.nvdimm_hotplug.is_some()
        || health.is_some())
    .then(|| {
        event_devices(
            desc.power.power_button_gsi,
            desc.nvdimm_hotplug.as_ref().map(|h| h.gsi),
            desc.nvdimm_hotplug.and_then(|h| h.eject).map(|e| e.gsi),
            health,
            nvdimm_root.is_some() && desc.nvdimm_dsm.is_some(),
        )
    });

    let mut sb_children: Vec<&dyn Aml> = Vec::new();
    for dev in &serial_devices {
        sb_children.push(dev);
    }
    if let Some(devs) = &ged {
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

/// `Device (PWRB)`, the ACPI power button (`PNP0C0C`), when there is one, and `Device (GED0)`,
/// the Generic Event Device (`ACPI0013`, ACPI 6.x §5.6.9) that signals the power button and
/// NVDIMM hot-add: Linux's `evged` driver requests each interrupt of the GED's `_CRS` and, when
/// one fires, runs `_EVT` with its GSI. A power-button GSI notifies `PWRB` with 0x80 ("button
/// pressed"), which the button driver (`CONFIG_ACPI_BUTTON`) turns into a `KEY_POWER` input
/// event and an ACPI netlink event for acpid or systemd-logind; the hot-add GSI notifies the
/// NVDIMM root device with 0x80, on which Linux re-reads `_FIT`; the eject GSI calls
/// `\_SB.NVDR.NEVT`, which notifies the DIMM the monitor asks for with 3 (eject request, see
/// [`eject_registers`]). One GSI per event. The health GSI (with `health`: its description and
/// how many DIMM devices are declared) reads which DIMMs changed from the health-event register
/// and notifies each with 0x81:
///
/// ```text
/// OperationRegion (NHEV, SystemIO, port, 8)
/// Field (NHEV, DWordAcc, NoLock, Preserve) { NHLO, 32, NHHI, 32 }
/// If (Arg0 == health_gsi) {
///     Local0 = NHLO  Local1 = NHHI
///     If (And (Local0, 0x1)) { Notify (\_SB_.NVDR.NV00, 0x81) }  ...one per DIMM
/// }
/// ```
fn event_devices(
    power_button_gsi: Option<u32>,
    nvdimm_gsi: Option<u32>,
    eject_gsi: Option<u32>,
    health: Option<(HealthEventsDesc, usize)>,
    dsm_masks: bool,
) -> RawAml {
    let mut bytes = Vec::new();
    if power_button_gsi.is_some() {
        let hid = Name::new("_HID".into(), &EISAName::new("PNP0C0C"));
        let uid = Name::new("_UID".into(), &0u8);
        Device::new(Path::new("PWRB"), vec![&hid, &uid]).to_aml_bytes(&mut bytes);
    }
    let ged_hid = Name::new("_HID".into(), &"ACPI0013");
    let ged_uid = Name::new("_UID".into(), &0u8);
    let irqs: Vec<Interrupt> = [
        power_button_gsi,
        nvdimm_gsi,
        eject_gsi,
        health.map(|(h, _)| h.gsi),
    ]
    .into_iter()
    .flatten()
    .map(|gsi| Interrupt::new(true, true, false, false, gsi))
    .collect();
    let crs_items: Vec<&dyn Aml> = irqs.iter().map(|i| i as &dyn Aml).collect();
    let crs = Name::new("_CRS".into(), &ResourceTemplate::new(crs_items));
    let pressed = 0x80u8;
    let pwrb = Path::new("\\_SB_.PWRB");
    let nvdr = Path::new(&format!("\\_SB_.{NVDIMM_ROOT}"));
    let notify_pwrb = Notify::new(&pwrb, &pressed);
    let notify_nvdr = Notify::new(&nvdr, &pressed);
    // A hot-added DIMM may fill a slot whose function masks the AML kept: read them again.
    let new_generation = new_dsm_generation();
    let arg0 = Arg(0);
    let pwr_gsi = power_button_gsi.unwrap_or(0);
    let nvd_gsi = nvdimm_gsi.unwrap_or(0);
    let is_pwr = Equal::new(&arg0, &pwr_gsi);
    let is_nvd = Equal::new(&arg0, &nvd_gsi);
    let if_pwr = If::new(&is_pwr, vec![&notify_pwrb]);
    let nvd_body: Vec<&dyn Aml> = if dsm_masks {
        vec![&new_generation, &notify_nvdr]
    } else {
        vec![&notify_nvdr]
    };
    let if_nvd = If::new(&is_nvd, nvd_body);
    let ej_gsi = eject_gsi.unwrap_or(0);
    let is_ej = Equal::new(&arg0, &ej_gsi);
    let call_nevt = MethodCall::new(Path::new(EJECT_EVENT_PATH), vec![]);
    let if_ej = If::new(&is_ej, vec![&call_nevt]);
    let mut evt_body: Vec<&dyn Aml> = Vec::new();
    if power_button_gsi.is_some() {
        evt_body.push(&if_pwr);
    }
    if nvdimm_gsi.is_some() {
        evt_body.push(&if_nvd);
    }
    if eject_gsi.is_some() {
        evt_body.push(&if_ej);
    }
    let (health_region, if_health) = match health {
        Some((h, dimms)) => {
            let (region, branch) = health_event_aml(h, dimms);
            (Some(region), Some(branch))
        }
        None => (None, None),
    };
    if let Some(b) = &if_health {
        evt_body.push(b);
    }
    let evt = Method::new("_EVT".into(), 1, true, evt_body);
    let mut members: Vec<&dyn Aml> = vec![&ged_hid, &ged_uid, &crs];
    if let Some(r) = &health_region {
        members.push(r);
    }
    members.push(&evt);
    Device::new(Path::new("GED0"), members).to_aml_bytes(&mut bytes);
    RawAml(bytes)
}

/// The health-event register's region and fields, and `_EVT`'s branch for the health GSI that
/// notifies each of the `dimms` declared DIMM devices whose bit is set.
fn health_event_aml(h: HealthEventsDesc, dimms: usize) -> (RawAml, RawAml) {
    let mut region = Vec::new();
    let port = u64::from(h.port);
    let len = u64::from(geometry::nvdimm_events::LEN);
    OpRegion::new("NHEV".into(), OpRegionSpace::SystemIO, &port, &len).to_aml_bytes(&mut region);
    field(
        "NHEV",
        FieldAccessType::DWord,
        vec![
            FieldEntry::Named(*b"NHLO", 32),
            FieldEntry::Named(*b"NHHI", 32),
        ],
    )
    .to_aml_bytes(&mut region);

    let (lo, hi) = (Local(0), Local(1));
    let (nhlo, nhhi) = (Path::new("NHLO"), Path::new("NHHI"));
    let read_lo = Store::new(&lo, &nhlo);
    let read_hi = Store::new(&hi, &nhhi);
    let health_changed = 0x81u8;
    let paths: Vec<Path> = (0..dimms)
        .map(|i| Path::new(&format!("\\_SB_.{NVDIMM_ROOT}.NV{i:02X}")))
        .collect();
    let masks: Vec<u64> = (0..dimms).map(|i| 1u64 << (i % 32)).collect();
    let tests: Vec<And> = (0..dimms)
        .map(|i| And::new(&ZERO, if i < 32 { &lo } else { &hi }, &masks[i]))
        .collect();
    let notifies: Vec<Notify> = paths
        .iter()
        .map(|p| Notify::new(p, &health_changed))
        .collect();
    let ifs: Vec<If> = (0..dimms)
        .map(|i| If::new(&tests[i], vec![&notifies[i]]))
        .collect();
    let mut body: Vec<&dyn Aml> = vec![&read_lo, &read_hi];
    body.extend(ifs.iter().map(|i| i as &dyn Aml));
    let arg0 = Arg(0);
    let is_health = Equal::new(&arg0, &h.gsi);
    let mut branch = Vec::new();
    If::new(&is_health, body).to_aml_bytes(&mut branch);
    (RawAml(region), RawAml(branch))
}

/// `Device (NVDR)` with `_HID "ACPI0012"` (the device Linux's NFIT driver binds to) and one
/// child `NVxx` per DIMM whose `_ADR` is the DIMM's NFIT device handle: for the `count` DIMMs
/// there are, or with hot-add for every DIMM there may be ([`MAX_NVDIMMS`], as QEMU declares
/// one per memory slot), since the guest finds a DIMM's device by its `_ADR` when the DIMM
/// appears and the namespace cannot change. With hot-add also the FIT buffer and `_FIT`:
///
/// ```text
/// OperationRegion (NFTR, SystemMemory, fit_addr, 4 + fit_max)
/// Field (NFTR, DWordAcc, NoLock, Preserve) { FLEN, 32, FBUF, fit_max * 8 }
/// Method (_FIT, 0, Serialized) { Mid (FBUF, Zero, FLEN, Local0)  Return (Local0) }
/// ```
///
/// With the `_DSM` mailbox ([`dsm_mailbox`]) each child also gets a `_DSM` that calls
/// `\_SB.NVDR.NCAL (Arg0, Arg1, Arg2, Arg3, handle)` ([`dimm_dsm`]), and the root the
/// generation of the function masks those keep, `Name (NGEN, One)`.
/// How many DIMM devices `NVDR` declares: the `count` DIMMs there are, or with hot-add every
/// DIMM there may be.
fn declared_dimms(count: usize, hotplug: Option<&NvdimmHotplugDesc>) -> usize {
    if hotplug.is_some() {
        MAX_NVDIMMS
    } else {
        count
    }
}

fn nvdimm_root_device(
    count: usize,
    hotplug: Option<&NvdimmHotplugDesc>,
    dsm: Option<&NvdimmDsmDesc>,
) -> RawAml {
    let hid = Name::new("_HID".into(), &"ACPI0012");
    let eject = hotplug.and_then(|h| h.eject);
    let children: Vec<RawAml> = (0..declared_dimms(count, hotplug))
        .map(|i| {
            let handle = DWordConst(nfit_handle(i));
            let adr = Name::new("_ADR".into(), &handle);
            let dsm_aml = dsm.map(|_| dimm_dsm(&handle));
            let nejd = Path::new(EJECT_DONE_PATH);
            let store_ej = Store::new(&nejd, &handle);
            // The slot may be filled again by another DIMM (see DSM_GENERATION_PATH).
            let new_generation = new_dsm_generation();
            let ej0_body: Vec<&dyn Aml> = if dsm.is_some() {
                vec![&new_generation, &store_ej]
            } else {
                vec![&store_ej]
            };
            let ej0 = Method::new("_EJ0".into(), 1, false, ej0_body);
            let (a0, a1, a2) = (Arg(0), Arg(1), Arg(2));
            let ost_call = MethodCall::new(Path::new(OST_CALL_PATH), vec![&a0, &a1, &a2, &handle]);
            let ost = Method::new("_OST".into(), 3, false, vec![&ost_call]);
            let mut members: Vec<&dyn Aml> = vec![&adr];
            if let Some(dsm_aml) = &dsm_aml {
                members.push(dsm_aml);
            }
            if eject.is_some() {
                members.push(&ej0);
                members.push(&ost);
            }
            let mut bytes = Vec::new();
            Device::new(Path::new(&format!("NV{i:02X}")), members).to_aml_bytes(&mut bytes);
            RawAml(bytes)
        })
        .collect();
    let mut members: Vec<&dyn Aml> = vec![&hid];
    let fit = hotplug.map(fit_method);
    if let Some(fit) = &fit {
        members.push(fit);
    }
    let mailbox = dsm.map(dsm_mailbox);
    let generation = Name::new("NGEN".into(), &ONE);
    if let Some(mailbox) = &mailbox {
        members.push(mailbox);
        members.push(&generation);
    }
    let eject_aml = eject.map(|e| eject_registers(e, declared_dimms(count, hotplug)));
    if let Some(eject_aml) = &eject_aml {
        members.push(eject_aml);
    }
    members.extend(children.iter().map(|c| c as &dyn Aml));
    let mut bytes = Vec::new();
    Device::new(Path::new(NVDIMM_ROOT), members).to_aml_bytes(&mut bytes);
    RawAml(bytes)
}

/// `\_SB.NVDR.NGEN += One`: the function masks every DIMM's `_DSM` kept are read again
/// ([`dimm_dsm`]).
fn new_dsm_generation() -> RawAml {
    let ngen = Path::new(DSM_GENERATION_PATH);
    let mut bytes = Vec::new();
    Add::new(&ngen, &ngen, &ONE).to_aml_bytes(&mut bytes);
    RawAml(bytes)
}

/// One DIMM's `_DSM` with NFIT handle `handle`: every call goes to the mailbox (`NCAL`, see
/// [`dsm_mailbox`]), except that the Intel family's function masks (function 0 at revisions 1
/// and 2) are read once per generation ([`DSM_GENERATION_PATH`]) and then answered from here:
///
/// ```text
/// Name (Q1GN, Zero)  Name (Q1MK, Buffer (8) {})  Name (Q2GN, Zero)  Name (Q2MK, Buffer (8) {})
/// Method (_DSM, 4, Serialized) {
///     If (Arg2 == Zero) { If (Arg0 == Buffer () { intel uuid }) {
///         If (Arg1 == 1) {
///             If (Q1GN != \_SB.NVDR.NGEN) { Q1MK = NCAL (Arg0, Arg1, Arg2, Arg3, handle)
///                                           Q1GN = \_SB.NVDR.NGEN }
///             Return (Q1MK)
///         }
///         If (Arg1 == 2) { ...the same with Q2GN and Q2MK... }
///     } }
///     Return (\_SB.NVDR.NCAL (Arg0, Arg1, Arg2, Arg3, handle))
/// }
/// ```
///
/// Why: Linux asks each DIMM for a function mask about 36 times while it probes the NFIT (each
/// family's function 0, then function 0 again before it records each Intel function:
/// `acpi_nfit_add_dimm()`), and every call through the mailbox is an exit to the monitor
/// (about 1.3 ms nested). The monitor still decides every mask ([`devices::nvdimm_dsm`]); a
/// DIMM's masks change only when its slot is filled or emptied, and both pass through AML that
/// starts a new generation (the GED's hot-add event and `_EJ0`). The mask is the monitor's
/// 8-byte answer (a u64), which a `Store` into the 8-byte buffer copies exactly.
fn dimm_dsm(handle: &DWordConst) -> RawAml {
    use geometry::dsm_mailbox::{INTEL_DSM_UUID, REVISION, REVISION_2};
    const MASK_LEN: usize = std::mem::size_of::<u64>();
    let (a0, a1, a2, a3) = (Arg(0), Arg(1), Arg(2), Arg(3));
    let call = MethodCall::new(Path::new(DSM_CALL_PATH), vec![&a0, &a1, &a2, &a3, handle]);
    let ngen = Path::new(DSM_GENERATION_PATH);
    let mut bytes = Vec::new();
    let kept = [(REVISION, "Q1GN", "Q1MK"), (REVISION_2, "Q2GN", "Q2MK")];
    let mut branches = Vec::new();
    for (revision, generation, mask) in kept {
        Name::new(generation.into(), &ZERO).to_aml_bytes(&mut bytes);
        Name::new(mask.into(), &BufferData::new(vec![0; MASK_LEN])).to_aml_bytes(&mut bytes);
        let (generation, mask) = (Path::new(generation), Path::new(mask));
        let fill = Store::new(&mask, &call);
        let mark = Store::new(&generation, &ngen);
        let stale = NotEqual::new(&generation, &ngen);
        let if_stale = If::new(&stale, vec![&fill, &mark]);
        let ret = Return::new(&mask);
        let is_revision = Equal::new(&a1, &revision);
        let mut branch = Vec::new();
        If::new(&is_revision, vec![&if_stale, &ret]).to_aml_bytes(&mut branch);
        branches.push(RawAml(branch));
    }
    let uuid = BufferData::new(INTEL_DSM_UUID.to_vec());
    let is_intel = Equal::new(&a0, &uuid);
    let if_intel = If::new(&is_intel, branches.iter().map(|b| b as &dyn Aml).collect());
    let is_query = Equal::new(&a2, &ZERO);
    let if_query = If::new(&is_query, vec![&if_intel]);
    let ret = Return::new(&call);
    Method::new("_DSM".into(), 4, true, vec![&if_query, &ret]).to_aml_bytes(&mut bytes);
    RawAml(bytes)
}

/// A field of `region` declared as every field here is: no lock, the bits outside it
/// preserved on writes.
fn field(region: &str, access: FieldAccessType, entries: Vec<FieldEntry>) -> Field {
    Field::new(
        region.into(),
        access,
        FieldLockRule::NoLock,
        FieldUpdateRule::Preserve,
        entries,
    )
}

/// Answers of at most this many bytes are read through the mailbox's short view (`NOSM`,
/// [`dsm_mailbox`]); more than 8, so the field reads as a Buffer, not an Integer.
const SMALL_ANSWER: u64 = 16;

/// The method every DIMM's `_DSM` calls.
const DSM_CALL_PATH: &str = "\\_SB_.NVDR.NCAL";
/// The generation of the function masks the DIMMs' `_DSM`s keep ([`dimm_dsm`]): a kept mask
/// read in an older generation is read again. One more on every hot-add event and `_EJ0`.
const DSM_GENERATION_PATH: &str = "\\_SB_.NVDR.NGEN";
/// The method the GED's eject event calls.
const EJECT_EVENT_PATH: &str = "\\_SB_.NVDR.NEVT";
/// The register every DIMM's `_EJ0` writes its handle to.
const EJECT_DONE_PATH: &str = "\\_SB_.NVDR.NEJD";
/// The method every DIMM's `_OST` calls.
const OST_CALL_PATH: &str = "\\_SB_.NVDR.NOST";

/// The eject registers ([`geometry::nvdimm_eject`]) in the root device, `NEVT` (the GED's eject
/// event: notify the DIMM the monitor asks for) and `NOST` (every DIMM's `_OST` with its handle
/// as Arg3):
///
/// ```text
/// OperationRegion (NEJR, SystemIO, port, 24)
/// Field (NEJR, DWordAcc, NoLock, Preserve) { NREQ,32, NEJD,32, NOHD,32, NOEV,32 }
/// Field (NEJR, ByteAcc, NoLock, Preserve) { Offset (16), NORB,8 }
/// Field (NEJR, DWordAcc, NoLock, Preserve) { Offset (20), NOSC,32 }
/// Method (NEVT, 0, Serialized) {
///     Local0 = NREQ
///     If (Local0 == 0x00000001) { Notify (NV00, 3) }     // one If per possible DIMM
///     ...
/// }
/// Method (NOST, 4, Serialized) {
///     NOHD = Arg3  NOEV = Arg0                          // a new report
///     If (ObjectType (Arg2) == 3) {                      // a Buffer: the status information
///         Local1 = SizeOf (Arg2)
///         If (Local1 > 64) { Local1 = 64 }
///         Local0 = Zero
///         While (Local0 < Local1) { NORB = DerefOf (Index (Arg2, Local0))  Local0 += 1 }
///     }
///     NOSC = Arg1                                        // completes it
/// }
/// ```
///
/// `NOST` is `Serialized`, so two reports never interleave. The monitor trusts none of it: it
/// acts only on the handle it asked for (docs/hot-remove.md).
fn eject_registers(e: NvdimmEjectDesc, children: usize) -> RawAml {
    use geometry::nvdimm_eject as reg;
    let mut bytes = Vec::new();
    let port = u64::from(e.port);
    let len = u64::from(reg::LEN);
    OpRegion::new("NEJR".into(), OpRegionSpace::SystemIO, &port, &len).to_aml_bytes(&mut bytes);
    let dword = |name: &[u8; 4]| FieldEntry::Named(*name, 32);
    field(
        "NEJR",
        FieldAccessType::DWord,
        vec![
            dword(b"NREQ"),
            dword(b"NEJD"),
            dword(b"NOHD"),
            dword(b"NOEV"),
        ],
    )
    .to_aml_bytes(&mut bytes);
    field(
        "NEJR",
        FieldAccessType::Byte,
        vec![
            FieldEntry::Reserved(usize::from(reg::OST_REASON) * 8),
            FieldEntry::Named(*b"NORB", 8),
        ],
    )
    .to_aml_bytes(&mut bytes);
    field(
        "NEJR",
        FieldAccessType::DWord,
        vec![
            FieldEntry::Reserved(usize::from(reg::OST_STATUS) * 8),
            dword(b"NOSC"),
        ],
    )
    .to_aml_bytes(&mut bytes);

    // NEVT: one If per possible DIMM, as Notify needs the device's name.
    let local0 = Local(0);
    let local1 = Local(1);
    let nreq = Path::new("NREQ");
    let load = Store::new(&local0, &nreq);
    let eject_request = 3u8;
    let handles: Vec<DWordConst> = (0..children).map(|i| DWordConst(nfit_handle(i))).collect();
    let names: Vec<Path> = (0..children)
        .map(|i| Path::new(&format!("NV{i:02X}")))
        .collect();
    let notifies: Vec<Notify> = names
        .iter()
        .map(|n| Notify::new(n, &eject_request))
        .collect();
    let tests: Vec<Equal> = handles.iter().map(|h| Equal::new(&local0, h)).collect();
    let ifs: Vec<If> = tests
        .iter()
        .zip(&notifies)
        .map(|(t, n)| If::new(t, vec![n]))
        .collect();
    let mut nevt_body: Vec<&dyn Aml> = vec![&load];
    nevt_body.extend(ifs.iter().map(|i| i as &dyn Aml));
    Method::new("NEVT".into(), 0, true, nevt_body).to_aml_bytes(&mut bytes);

    // NOST.
    const BUFFER: u8 = 3;
    let (a0, a1, a2, a3) = (Arg(0), Arg(1), Arg(2), Arg(3));
    let (nohd, noev, norb, nosc) = (
        Path::new("NOHD"),
        Path::new("NOEV"),
        Path::new("NORB"),
        Path::new("NOSC"),
    );
    let store_handle = Store::new(&nohd, &a3);
    let store_event = Store::new(&noev, &a0);
    let size = SizeOf::new(&a2);
    let load_len = Store::new(&local1, &size);
    let max = reg::MAX_REASON_LEN;
    let too_long = GreaterThan::new(&local1, &max);
    let clamp = Store::new(&local1, &max);
    let if_too_long = If::new(&too_long, vec![&clamp]);
    let start = Store::new(&local0, &ZERO);
    let byte_at = Index::new(&ZERO, &a2, &local0);
    let byte = DeRefOf::new(&byte_at);
    let store_byte = Store::new(&norb, &byte);
    let next = Add::new(&local0, &local0, &ONE);
    let more = LessThan::new(&local0, &local1);
    let copy = While::new(&more, vec![&store_byte, &next]);
    let type_of_arg2 = ObjectType::new(&a2);
    let is_buffer = Equal::new(&type_of_arg2, &BUFFER);
    let if_buffer = If::new(&is_buffer, vec![&load_len, &if_too_long, &start, &copy]);
    let store_status = Store::new(&nosc, &a1);
    Method::new(
        "NOST".into(),
        4,
        true,
        vec![&store_handle, &store_event, &if_buffer, &store_status],
    )
    .to_aml_bytes(&mut bytes);
    RawAml(bytes)
}

/// The `_DSM` mailbox in the root device: the page's two views (request and answer,
/// [`geometry::dsm_mailbox`]), the doorbell, and `NCAL`, which every DIMM's `_DSM` calls with
/// its handle as Arg4:
///
/// ```text
/// OperationRegion (NDPG, SystemMemory, page_addr, 0x1000)
/// Field (NDPG, DWordAcc, NoLock, Preserve) { NHDL,32, NREV,32, NFUN,32, NALN,32, NUID,128, NARG,32512 }
/// Field (NDPG, DWordAcc, NoLock, Preserve) { NRLN,32, NODT,32736 }
/// Field (NDPG, DWordAcc, NoLock, Preserve) { ,32, NOSM,128 }   // the first 16 answer bytes
/// OperationRegion (NDBR, SystemIO, doorbell_port, 4)
/// Field (NDBR, DWordAcc, NoLock, Preserve) { NDBL,32 }
/// Method (NCAL, 5, Serialized) {
///     NHDL = Arg4  NREV = Arg1  NFUN = Arg2  NUID = Arg0  NALN = Zero
///     If (ObjectType (Arg3) == 4) {                      // a Package
///         If (SizeOf (Arg3) > Zero) {
///             Local0 = DerefOf (Index (Arg3, Zero))
///             If (ObjectType (Local0) == 3) {            // a Buffer
///                 NALN = SizeOf (Local0)
///                 If (NALN > Zero) { NARG = Local0 }     // truncated to the page
///             }
///         }
///     }
///     NDBL = page_addr                                   // the monitor answers here
///     If (NRLN < 17) { Mid (NOSM, Zero, NRLN, Local1) }
///     Else { Mid (NODT, Zero, NRLN, Local1) }
///     Return (Local1)
/// }
/// ```
///
/// Reading a field reads all of it, a DWord access at a time through the interpreter's
/// address-space handler: NODT is 1023 accesses, about 2 ms per call in a nested TCG guest.
/// Most answers are short (the function masks Linux asks for while it probes the NFIT, of which
/// the Intel ones are then kept by [`dimm_dsm`], a status, the label-area size, the SMART
/// thresholds), so answers of up to 16 bytes are read through NOSM, 4 accesses; SMART and label data take NODT. NOSM is wider
/// than an Integer (64 bits in a revision-2 DSDT), so it reads as a Buffer (ACPI 6.5 §19.3.5.7).
///
/// `Serialized` keeps two guest threads from sharing the page at once. The AML checks nothing
/// (the monitor checks every field, the guest could write the page directly anyway) and passes
/// the input's true length, so an input longer than the page is recognised and refused.
fn dsm_mailbox(d: &NvdimmDsmDesc) -> RawAml {
    use geometry::dsm_mailbox as page;
    let mut bytes = Vec::new();
    let page_len = page::PAGE_SIZE;
    OpRegion::new(
        "NDPG".into(),
        OpRegionSpace::SystemMemory,
        &d.page_addr,
        &page_len,
    )
    .to_aml_bytes(&mut bytes);
    let dword = |name: &[u8; 4]| FieldEntry::Named(*name, 32);
    field(
        "NDPG",
        FieldAccessType::DWord,
        vec![
            dword(b"NHDL"),
            dword(b"NREV"),
            dword(b"NFUN"),
            dword(b"NALN"),
            FieldEntry::Named(*b"NUID", 128),
            FieldEntry::Named(*b"NARG", page::MAX_IN_PAYLOAD as usize * 8),
        ],
    )
    .to_aml_bytes(&mut bytes);
    field(
        "NDPG",
        FieldAccessType::DWord,
        vec![
            dword(b"NRLN"),
            FieldEntry::Named(*b"NODT", page::MAX_OUT_DATA as usize * 8),
        ],
    )
    .to_aml_bytes(&mut bytes);
    field(
        "NDPG",
        FieldAccessType::DWord,
        vec![
            FieldEntry::Reserved(32),
            FieldEntry::Named(*b"NOSM", SMALL_ANSWER as usize * 8),
        ],
    )
    .to_aml_bytes(&mut bytes);
    let port = u64::from(d.doorbell_port);
    let port_len = u64::from(page::DOORBELL_LEN);
    OpRegion::new("NDBR".into(), OpRegionSpace::SystemIO, &port, &port_len)
        .to_aml_bytes(&mut bytes);
    field("NDBR", FieldAccessType::DWord, vec![dword(b"NDBL")]).to_aml_bytes(&mut bytes);

    let (nhdl, nrev, nfun, naln, nuid, narg) = (
        Path::new("NHDL"),
        Path::new("NREV"),
        Path::new("NFUN"),
        Path::new("NALN"),
        Path::new("NUID"),
        Path::new("NARG"),
    );
    let (nrln, nodt, nosm, ndbl) = (
        Path::new("NRLN"),
        Path::new("NODT"),
        Path::new("NOSM"),
        Path::new("NDBL"),
    );
    let (a0, a1, a2, a3, a4) = (Arg(0), Arg(1), Arg(2), Arg(3), Arg(4));
    let (local0, local1) = (Local(0), Local(1));
    const PACKAGE: u8 = 4;
    const BUFFER: u8 = 3;
    let store_handle = Store::new(&nhdl, &a4);
    let store_rev = Store::new(&nrev, &a1);
    let store_fun = Store::new(&nfun, &a2);
    let store_uuid = Store::new(&nuid, &a0);
    let clear_len = Store::new(&naln, &ZERO);
    // Innermost first.
    let store_arg = Store::new(&narg, &local0);
    let has_bytes = GreaterThan::new(&naln, &ZERO);
    let if_bytes = If::new(&has_bytes, vec![&store_arg]);
    let size_of_buffer = SizeOf::new(&local0);
    let store_len = Store::new(&naln, &size_of_buffer);
    let type_of_local0 = ObjectType::new(&local0);
    let is_buffer = Equal::new(&type_of_local0, &BUFFER);
    let if_buffer = If::new(&is_buffer, vec![&store_len, &if_bytes]);
    let first = Index::new(&ZERO, &a3, &ZERO);
    let deref = DeRefOf::new(&first);
    let load_first = Store::new(&local0, &deref);
    let count = SizeOf::new(&a3);
    let non_empty = GreaterThan::new(&count, &ZERO);
    let if_non_empty = If::new(&non_empty, vec![&load_first, &if_buffer]);
    let type_of_arg3 = ObjectType::new(&a3);
    let is_package = Equal::new(&type_of_arg3, &PACKAGE);
    let if_package = If::new(&is_package, vec![&if_non_empty]);
    let ring = Store::new(&ndbl, &d.page_addr);
    let small_limit = SMALL_ANSWER + 1;
    let is_small = LessThan::new(&nrln, &small_limit);
    let mid_small = Mid::new(&nosm, &ZERO, &nrln, &local1);
    let if_small = If::new(&is_small, vec![&mid_small]);
    let mid = Mid::new(&nodt, &ZERO, &nrln, &local1);
    let else_large = Else::new(vec![&mid]);
    let ret = Return::new(&local1);
    Method::new(
        "NCAL".into(),
        5,
        true,
        vec![
            &store_handle,
            &store_rev,
            &store_fun,
            &store_uuid,
            &clear_len,
            &if_package,
            &ring,
            &if_small,
            &else_large,
            &ret,
        ],
    )
    .to_aml_bytes(&mut bytes);
    RawAml(bytes)
}

/// The FIT buffer's operation region, its fields and `_FIT` (see [`nvdimm_root_device`]).
fn fit_method(h: &NvdimmHotplugDesc) -> RawAml {
    let mut bytes = Vec::new();
    let addr = h.fit_addr;
    let len = 4 + u64::from(h.fit_max);
    OpRegion::new("NFTR".into(), OpRegionSpace::SystemMemory, &addr, &len).to_aml_bytes(&mut bytes);
    field(
        "NFTR",
        FieldAccessType::DWord,
        vec![
            FieldEntry::Named(*b"FLEN", 32),
            FieldEntry::Named(*b"FBUF", h.fit_max as usize * 8),
        ],
    )
    .to_aml_bytes(&mut bytes);
    let fbuf = Path::new("FBUF");
    let flen = Path::new("FLEN");
    let zero = 0u8;
    let local0 = Local(0);
    let mid = Mid::new(&fbuf, &zero, &flen, &local0);
    let ret = Return::new(&local0);
    Method::new("_FIT".into(), 0, true, vec![&mid, &ret]).to_aml_bytes(&mut bytes);
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
            nvdimm_hotplug: None,
            nvdimm_dsm: None,
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

    #[test]
    fn every_dimm_has_a_dsm_calling_the_mailbox() {
        let dimm = crate::desc::NvdimmDesc {
            base: 4 << 30,
            size: 1 << 30,
            proximity_domain: None,
            readonly: false,
            serial_number: 1,
            slot: 0,
            flush_hint: None,
        };
        let mut desc = PlatformDesc {
            num_cpus: 1,
            ioapic: Default::default(),
            serial: vec![SerialDesc::COM1],
            power: Default::default(),
            nvdimms: vec![dimm],
            ram: vec![(0, 512 << 20)],
            nvdimm_hotplug: None,
            nvdimm_dsm: None,
        };
        // \_SB_.NVDR.NCAL (Arg0, Arg1, Arg2, Arg3, 0x00000001): RootChar, MultiNamePrefix with
        // 3 segments, Arg0-3, DWordConst 1; in the _DSM three times (the two kept masks' reads
        // and the return of every other call).
        let call: [u8; 24] = [
            b'\\', 0x2f, 0x03, b'_', b'S', b'B', b'_', b'N', b'V', b'D', b'R', b'N', b'C', b'A',
            b'L', 0x68, 0x69, 0x6a, 0x6b, 0x0c, 1, 0, 0, 0,
        ];
        // "_DSM", then the flags: 4 arguments, Serialized.
        let header = [b'_', b'D', b'S', b'M', 0x0c];
        let without = build(&desc);
        assert!(!without.windows(4).any(|w| w == b"_DSM"));
        assert!(!without.windows(4).any(|w| w == b"NCAL"));
        desc.nvdimm_dsm = Some(NvdimmDsmDesc {
            page_addr: 0xfb000,
            doorbell_port: 0x0a18,
            health_events: None,
        });
        let with = build(&desc);
        assert_eq!(with.windows(call.len()).filter(|w| *w == call).count(), 3);
        assert!(
            with.windows(header.len()).any(|w| w == header),
            "{with:02x?}"
        );
        // The doorbell region: OpRegionOp (ExtOp 0x5b 0x80), "NDBR", SystemIO (1), WordConst
        // 0x0a18, ByteConst 4.
        let region = [
            0x5b, 0x80, b'N', b'D', b'B', b'R', 0x01, 0x0b, 0x18, 0x0a, 0x0a, 0x04,
        ];
        assert!(with.windows(region.len()).any(|w| w == region));
    }
}
