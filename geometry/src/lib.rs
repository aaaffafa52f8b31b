//! Guest geometry and limits: the numbers that more than one crate of the monitor must agree on.
//!
//! Every crate takes these from here (`acpi` for table limits, `devices` for backing sizes and
//! the info block, `vmm` for the command line and the guest physical layout) so that a rule has
//! one definition. Plain constants, no dependencies.

#![deny(missing_docs)]

/// 1 KiB.
pub const KIB: u64 = 1 << 10;
/// 1 MiB.
pub const MIB: u64 = 1 << 20;
/// 1 GiB.
pub const GIB: u64 = 1 << 30;
/// 1 TiB.
pub const TIB: u64 = 1 << 40;

/// The guest's base page size (x86-64 `PAGE_SIZE`).
pub const PAGE_SIZE: u64 = 4096;

/// The pmem size granule: every backing size and namespace size is a multiple of it.
///
/// It is `SUBSECTION_SIZE` on x86-64, which is `memremap_compat_align()` (`mm/memremap.c`): the
/// granularity of ZONE_DEVICE hot-add, so a namespace's start and (truncated) end must be aligned
/// to it; it also lets KVM back the range with 2 MiB pages.
pub const PMEM_SIZE_GRANULE: u64 = 2 * MIB;

/// A Linux memory section on x86-64 (`1 << SECTION_SIZE_BITS`,
/// `arch/x86/include/asm/sparsemem.h`): memory is hot-added, and its vmemmap populated, one
/// section at a time. Two pmem windows must not share one (the second fails to come up), so the
/// layout starts each window on a section boundary.
pub const MEMORY_SECTION_SIZE: u64 = 128 * MIB;

/// Highest vCPU count. APIC ids are `0..cpus` in 8-bit Local APIC entries, where 0xff is the
/// broadcast id that Linux's `acpi_parse_lapic()` skips; 254 keeps every id well below it.
pub const MAX_CPUS: u32 = 254;

/// Highest pmem device (NVDIMM) count per guest.
///
/// 64: what the command line has always accepted (`--pmem` may be given up to 64 times). The
/// ACPI naming of NVDIMM child devices (`NV00`..`NVFF`) would allow 256, and the flush-hint pages
/// below the IOAPIC would allow more; 64 is the one limit every crate enforces, so the tables are
/// never asked for more than the command line accepts.
pub const MAX_PMEM_DEVICES: usize = 64;

/// Start of the 32-bit MMIO hole: guest RAM stops here below 4 GiB; the hole holds the IOAPIC,
/// the local APIC and the NFIT flush hints.
pub const MMIO_HOLE_START: u64 = 3 * GIB;
/// End of the 32-bit MMIO hole: RAM that did not fit below the hole continues here.
pub const MMIO_HOLE_END: u64 = 4 * GIB;

/// A KASLR guest sizes its direct map as the RAM it booted with plus this padding for hotplug
/// (`CONFIG_RANDOMIZE_MEMORY_PHYSICAL_PADDING`, 10 TiB by default); pmem above it is unreachable
/// (cloud-hypervisor issue 8191).
pub const KASLR_PADDING: u64 = 10 * TIB;

// The granules nest: a section is whole granules, a granule whole pages, and the hole ends on a
// section boundary (so the first pmem window can start right at 4 GiB).
const _: () = {
    assert!(MEMORY_SECTION_SIZE.is_multiple_of(PMEM_SIZE_GRANULE));
    assert!(PMEM_SIZE_GRANULE.is_multiple_of(PAGE_SIZE));
    assert!(MMIO_HOLE_START < MMIO_HOLE_END);
    assert!(MMIO_HOLE_END.is_multiple_of(MEMORY_SECTION_SIZE));
};

/// The NVDIMM `_DSM` mailbox: the one page through which the DSDT's `_DSM` methods hand a
/// request to the monitor and read its answer back (the `acpi` crate writes the AML that fills
/// it, `devices::nvdimm_dsm` serves it). Offsets are bytes from the start of the page; every
/// field is little-endian.
///
/// The AML writes the request, then any value to the doorbell port, which the monitor serves
/// before the guest's port write completes; the answer then overlays the request.
pub mod dsm_mailbox {
    /// Size of the page, one guest page.
    pub const PAGE_SIZE: u64 = super::PAGE_SIZE;
    /// Request: the NFIT device handle of the DIMM (`_ADR`), u32.
    pub const IN_HANDLE: u64 = 0;
    /// Request: `_DSM` Arg1, the revision, as a u32 (the low 32 bits of the integer).
    pub const IN_REVISION: u64 = 4;
    /// Request: `_DSM` Arg2, the function index, u32 (the low 32 bits).
    pub const IN_FUNCTION: u64 = 8;
    /// Request: the byte count of the input buffer (Arg3's first element), u32, as `SizeOf`
    /// reports it: it may exceed what fitted into [`IN_PAYLOAD`], which is how an oversized
    /// input is recognised.
    pub const IN_PAYLOAD_LEN: u64 = 12;
    /// Request: `_DSM` Arg0, the 16-byte UUID buffer as the guest passed it.
    pub const IN_UUID: u64 = 16;
    /// Request: the input buffer (truncated to the page).
    pub const IN_PAYLOAD: u64 = 32;
    /// Answer: the byte count of the buffer `_DSM` returns, u32.
    pub const OUT_LEN: u64 = 0;
    /// Answer: the returned buffer.
    pub const OUT_DATA: u64 = 4;
    /// Bytes of request payload the page holds.
    pub const MAX_IN_PAYLOAD: u64 = PAGE_SIZE - IN_PAYLOAD;
    /// Bytes of answer the page holds.
    pub const MAX_OUT_DATA: u64 = PAGE_SIZE - OUT_DATA;
    /// The doorbell: a 32-bit I/O port (QEMU's NVDIMM `_DSM` port; nothing else of ours uses it).
    pub const DOORBELL_PORT: u16 = 0x0a18;
    /// Bytes of I/O space the doorbell decodes.
    pub const DOORBELL_LEN: u16 = 4;
    /// The Intel DIMM `_DSM` UUID 4309AC30-0D11-11E4-9191-0800200C9A66 as the `ToUUID` buffer
    /// the guest passes (first three fields little-endian): the family the monitor serves,
    /// whose function masks the AML keeps once read (`acpi`'s DIMM `_DSM`).
    pub const INTEL_DSM_UUID: [u8; 16] = [
        0x30, 0xac, 0x09, 0x43, 0x11, 0x0d, 0xe4, 0x11, 0x91, 0x91, 0x08, 0x00, 0x20, 0x0c, 0x9a,
        0x66,
    ];
    /// The revision of every Intel function but set-SMART-threshold (Linux's
    /// `nfit_dsm_revid()`: 1 for functions 0-6).
    pub const REVISION: u32 = 1;
    /// The revision Linux calls set-SMART-threshold with (`nfit_dsm_revid()`: 2 for the Intel
    /// functions from 11 on).
    pub const REVISION_2: u32 = 2;
}

/// The NVDIMM eject registers: how the monitor asks the guest to release a DIMM and how the
/// guest answers (docs/hot-remove.md). The `acpi` crate writes the AML that uses them (the
/// GED's eject event, every DIMM's `_EJ0` and `_OST`), `devices::nvdimm_eject` serves them.
/// Registers are little-endian u32 at `PORT + offset`, except the one-byte [`OST_REASON`].
pub mod nvdimm_eject {
    /// First I/O port of the block (after the `_DSM` doorbell; nothing else of ours uses it).
    pub const PORT: u16 = 0x0a20;
    /// Bytes of I/O space the block decodes.
    pub const LEN: u16 = 24;
    /// Read: the NFIT device handle of the DIMM the monitor asks the guest to release, 0 when
    /// it asks for nothing. The GED's eject event reads it and notifies that DIMM's device.
    pub const REQUEST: u16 = 0;
    /// Write (`_EJ0`): the handle of a DIMM the guest has released; the monitor may now take it.
    pub const EJECT: u16 = 4;
    /// Write (`_OST`, first): the handle the report is about; starts a report (clears the
    /// reason collected so far).
    pub const OST_HANDLE: u16 = 8;
    /// Write (`_OST`): the source event, `_OST`'s Arg0.
    pub const OST_EVENT: u16 = 12;
    /// Write (`_OST`), one byte at a time: the status information, `_OST`'s Arg2, which our
    /// guest kernel fills with the reason it refuses (text); at most [`MAX_REASON_LEN`] bytes
    /// are kept.
    pub const OST_REASON: u16 = 16;
    /// Write (`_OST`, last): the status code, `_OST`'s Arg1; completes the report.
    pub const OST_STATUS: u16 = 20;
    /// Bytes of `_OST` status information the monitor keeps (and the AML passes on).
    pub const MAX_REASON_LEN: u32 = 64;
    /// `_OST` source event of an eject request (ACPI 6.5 §6.3.5: the notify value, 3).
    pub const EVENT_EJECT_REQUEST: u32 = 3;
    /// `_OST` status for an eject request (ACPI 6.5 §6.3.5): success.
    pub const OST_SUCCESS: u32 = 0;
    /// `_OST` status: non-specific failure.
    pub const OST_NON_SPECIFIC_FAILURE: u32 = 1;
    /// `_OST` status for an eject request: the OS does not support ejecting the device.
    pub const OST_EJECT_NOT_SUPPORTED: u32 = 0x80;
    /// `_OST` status for an eject request: the device is in use by an application.
    pub const OST_DEVICE_IN_USE: u32 = 0x81;
    /// `_OST` status for an eject request: the device is busy.
    pub const OST_DEVICE_BUSY: u32 = 0x82;
    /// `_OST` status for an eject request: an ejection dependency is busy.
    pub const OST_EJECT_DEPENDENCY_BUSY: u32 = 0x83;
    /// `_OST` status for an eject request: ejection is in progress (not an answer yet).
    pub const OST_EJECT_IN_PROGRESS: u32 = 0x84;
}

/// The NVDIMM health-event register (`devices::nvdimm_events`), which the GED's `_EVT` reads to
/// learn which DIMMs to notify: two 32-bit halves, read to clear.
pub mod nvdimm_events {
    /// Its I/O port: right after the NVDIMM eject registers' block.
    pub const PORT: u16 = super::nvdimm_eject::PORT + super::nvdimm_eject::LEN;
    /// Bytes of I/O space it decodes.
    pub const LEN: u16 = 8;
}
