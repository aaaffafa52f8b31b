//! NFIT, the NVDIMM Firmware Interface Table (ACPI 6.x §5.2.25).
//!
//! Per DIMM in slot `i` ([`NvdimmDesc::slot`]) we emit three structures, in this order: a System Physical Address range
//! (type 0), an NVDIMM Region Mapping (type 1) tying the range to the DIMM's device handle, and
//! an NVDIMM Control Region (type 4). One Platform Capabilities structure (type 7) closes the
//! table. Linux 6.12 (drivers/acpi/nfit/core.c) rejects the whole table if a SPA or mapping has
//! any other length than below (`add_spa()`, `add_memdev()`), and needs a control region for
//! every DIMM (`acpi_nfit_add_dimm()` dereferences it). Sizes match the kernel's
//! `BUILD_BUG_ON`s in `nfit_init()` and include/acpi/actbl2.h.

use crate::desc::{NvdimmDesc, MAX_NVDIMMS};
use crate::sdt::{new_table, Le};

pub const SIGNATURE: [u8; 4] = *b"NFIT";
/// NFIT revision 1 (the only one defined; QEMU uses it too).
const REVISION: u8 = 1;
/// `struct acpi_table_nfit`: the standard header plus 4 reserved bytes.
const HEADER_LEN: u32 = 40;

const TYPE_SPA: u16 = 0;
const TYPE_MEMDEV: u16 = 1;
const TYPE_DCR: u16 = 4;
const TYPE_FLUSH_HINT: u16 = 6;
const TYPE_CAPABILITIES: u16 = 7;

/// SPA length without the ACPI 6.4 location cookie. `sizeof_spa()` demands exactly 56 unless
/// flag bit 2 (cookie valid) is set, which we never set.
const SPA_LEN: u16 = 56;
const MEMDEV_LEN: u16 = 48;
/// The full control region; Linux would accept 32 bytes with no block windows, but 80 is what
/// the spec and QEMU use and what iasl expects.
const DCR_LEN: u16 = 80;
const CAPABILITIES_LEN: u16 = 16;
/// `struct acpi_nfit_flush_address` with one hint address (16 + 8 bytes).
const FLUSH_HINT_LEN: u16 = 24;

/// Address Range Type GUID "Persistent Memory Region" 66F0D379-B4F3-4074-AC43-0D3318B78CDB,
/// in the EFI byte order (first three fields little-endian) that Linux's `import_guid()` reads.
const PERSISTENT_MEMORY_GUID: [u8; 16] = [
    0x79, 0xd3, 0xf0, 0x66, 0xf3, 0xb4, 0x74, 0x40, 0xac, 0x43, 0x0d, 0x33, 0x18, 0xb7, 0x8c, 0xdb,
];

/// SPA flag bit 1: the proximity domain field is valid (`ACPI_NFIT_PROXIMITY_VALID`).
const SPA_PROXIMITY_VALID: u16 = 1 << 1;
/// UEFI memory attributes for the range: write-back cacheable and non-volatile. Linux does not
/// read this field; other OSes do, and QEMU uses the same 0x8008.
const EFI_MEMORY_WB: u64 = 0x8;
const EFI_MEMORY_NV: u64 = 0x8000;

/// Region mapping state flag bit 3 (`ACPI_NFIT_MEM_NOT_ARMED`): the device will not persist
/// writes, so Linux marks the region read-only.
const MEM_NOT_ARMED: u16 = 1 << 3;

/// Control region identity. There is no JEDEC vendor for a virtual DIMM; we use QEMU's values
/// so that guest tooling sees familiar ids. Linux only prints them (sysfs `vendor`, `device`,
/// `rev_id`, and `id` = vendor-serial, both read big-endian by the kernel).
const DCR_VENDOR_ID: u16 = 0x8086;
const DCR_DEVICE_ID: u16 = 0x0001;
const DCR_REVISION_ID: u16 = 0x0001;
/// Region Format Interface Code 0x301: byte-addressable, no energy source (`NFIT_FIC_BYTEN`).
const FORMAT_INTERFACE_CODE: u16 = 0x0301;

/// Platform capability bit 1 (`ACPI_NFIT_CAPABILITY_MEM_FLUSH`): on power loss the platform
/// flushes the memory controller's write queues, i.e. data is durable once it has left the CPU
/// caches (ADR semantics). We deliberately do not claim bit 0 (CPU cache flush, eADR): Linux
/// would then treat stores as durable without cache write-back (`nvdimm_has_cache()` false ->
/// `dax_write_cache(false)`, fsync stops flushing caches), yet a guest's dirty cache lines die
/// with the host. With bit 1 only, Linux keeps writing back caches on fsync/msync/REQ_FLUSH and
/// reports `persistence_domain` = `memory_controller` (`acpi_nfit_register_region()` sets
/// `ND_REGION_PERSIST_MEMCTRL`). Written-back data sits in the host mapping of the backing; the
/// monitor flushes that mapping before it exits, and it survives a host crash only if the
/// backing is itself persistent (devdax / MAP_SYNC on real pmem). The structure is optional for
/// Linux; without it `persistence_domain` would be empty and behaviour otherwise the same.
const CAPABILITY_MEM_FLUSH: u32 = 1 << 1;
/// Highest capability bit we describe; Linux masks the capabilities with
/// `(1 << (highest + 1)) - 1` in `add_platform_cap()`.
const HIGHEST_CAPABILITY: u8 = 1;

/// The NFIT device handle of DIMM `index`: `index + 1`.
///
/// It is both the Region Mapping's "NFIT Device Handle" and the `_ADR` of the DIMM's child
/// device under the `ACPI0012` root; Linux pairs them with `acpi_find_child_device()` and drops
/// the DIMM ("no ACPI.NFIT device with _ADR ...") if they differ. Any distinct values work; we
/// keep 0 free as QEMU does (its `_DSM` mailbox uses handle 0 for the root device). In the
/// ACPI 6 handle layout (`ACPI_NFIT_BUILD_DEVICE_HANDLE`) the first 15 DIMMs read as "node 0,
/// socket 0, controller 0, channel 0, DIMM n"; Linux never decodes it.
///
/// # Panics
/// If `index >= MAX_NVDIMMS` (64, `geometry::MAX_PMEM_DEVICES`).
pub const fn nfit_handle(index: usize) -> u32 {
    assert!(index < MAX_NVDIMMS, "NVDIMM index out of range");
    index as u32 + 1
}

/// SPA range index and control region index of DIMM `index`: `index + 1`. Zero is reserved
/// ("not mapped"; `acpi_nfit_register_region()` ignores range index 0).
const fn structure_index(index: usize) -> u16 {
    // MAX_NVDIMMS (at most 256) keeps this far below u16::MAX.
    index as u16 + 1
}

/// The NFIT's structures without its header: what `_FIT` returns (Linux's
/// `acpi_nfit_update_notify()` parses the buffer as a series of NFIT structures).
pub fn nfit_structures(nvdimms: &[NvdimmDesc]) -> Vec<u8> {
    build(nvdimms)[HEADER_LEN as usize..].to_vec()
}

/// The largest [`nfit_structures`]: [`MAX_NVDIMMS`] DIMMs, each with a flush hint.
pub const MAX_FIT_LEN: usize = MAX_NVDIMMS
    * (SPA_LEN as usize + MEMDEV_LEN as usize + DCR_LEN as usize + FLUSH_HINT_LEN as usize)
    + CAPABILITIES_LEN as usize;

/// The complete NFIT for `nvdimms` (validated, non-empty).
pub(crate) fn build(nvdimms: &[NvdimmDesc]) -> Vec<u8> {
    let mut table = new_table(SIGNATURE, HEADER_LEN, REVISION);
    for dimm in nvdimms {
        let i = dimm.slot;
        table.append_slice(spa(i, dimm).as_slice());
        table.append_slice(memdev(i, dimm).as_slice());
        table.append_slice(dcr(i, dimm).as_slice());
        if let Some(address) = dimm.flush_hint {
            table.append_slice(flush_hint(i, address).as_slice());
        }
    }
    table.append_slice(capabilities().as_slice());
    table.as_slice().to_vec()
}

/// Type 0: the guest-physical window of the whole DIMM, typed as persistent memory.
fn spa(i: usize, dimm: &NvdimmDesc) -> Le {
    let flags = if dimm.proximity_domain.is_some() {
        SPA_PROXIMITY_VALID
    } else {
        0
    };
    let mut w = Le::default();
    w.u16(TYPE_SPA)
        .u16(SPA_LEN)
        .u16(structure_index(i)) // SPA Range Structure Index
        .u16(flags)
        .u32(0) // reserved
        .u32(dimm.proximity_domain.unwrap_or(0))
        .bytes(&PERSISTENT_MEMORY_GUID)
        .u64(dimm.base)
        .u64(dimm.size)
        .u64(EFI_MEMORY_WB | EFI_MEMORY_NV);
    debug_assert_eq!(w.len(), usize::from(SPA_LEN));
    w
}

/// Type 1: DIMM `i` provides the whole SPA range `i + 1` from DPA 0, not interleaved.
fn memdev(i: usize, dimm: &NvdimmDesc) -> Le {
    let state = if dimm.readonly { MEM_NOT_ARMED } else { 0 };
    let mut w = Le::default();
    w.u16(TYPE_MEMDEV)
        .u16(MEMDEV_LEN)
        .u32(nfit_handle(i))
        .u16(i as u16) // NVDIMM Physical ID (an SMBIOS handle; we have no SMBIOS, just unique)
        .u16(0) // NVDIMM Region ID
        .u16(structure_index(i)) // SPA Range Structure Index
        .u16(structure_index(i)) // NVDIMM Control Region Structure Index
        .u64(dimm.size) // NVDIMM Region Size
        .u64(0) // Region Offset
        .u64(0) // NVDIMM Physical Address Region Base (DPA)
        .u16(0) // Interleave Structure Index: none
        .u16(1) // Interleave Ways
        .u16(state)
        .u16(0); // reserved
    debug_assert_eq!(w.len(), usize::from(MEMDEV_LEN));
    w
}

/// Type 4: identity of DIMM `i`; no block control windows (pmem only).
fn dcr(i: usize, dimm: &NvdimmDesc) -> Le {
    let mut w = Le::default();
    w.u16(TYPE_DCR)
        .u16(DCR_LEN)
        .u16(structure_index(i)) // NVDIMM Control Region Structure Index
        .u16(DCR_VENDOR_ID)
        .u16(DCR_DEVICE_ID)
        .u16(DCR_REVISION_ID)
        .u16(0) // Subsystem Vendor ID
        .u16(0) // Subsystem Device ID
        .u16(0) // Subsystem Revision ID
        .u8(0) // Valid Fields: manufacturing location/date not valid
        .u8(0) // Manufacturing Location
        .u16(0) // Manufacturing Date
        .zeros(2) // reserved
        .u32(dimm.serial_number)
        .u16(FORMAT_INTERFACE_CODE)
        .u16(0) // Number of Block Control Windows
        .zeros(8 * 5) // window size, command offset/size, status offset/size
        .u16(0) // NVDIMM Control Region Flags
        .zeros(6); // reserved
    debug_assert_eq!(w.len(), usize::from(DCR_LEN));
    w
}

/// Type 6: one flush hint address for DIMM `i` (see [`NvdimmDesc::flush_hint`]). With it,
/// `nvdimm_has_flush()` is 1, so the guest's pmem driver advertises FUA and writes the hint on
/// every flush instead of relying on ADR alone.
fn flush_hint(i: usize, address: u64) -> Le {
    let mut w = Le::default();
    w.u16(TYPE_FLUSH_HINT)
        .u16(FLUSH_HINT_LEN)
        .u32(nfit_handle(i))
        .u16(1) // Number of Flush Hint Addresses
        .zeros(6) // reserved
        .u64(address);
    debug_assert_eq!(w.len(), usize::from(FLUSH_HINT_LEN));
    w
}

/// Type 7: the persistence domain, see [`CAPABILITY_MEM_FLUSH`].
fn capabilities() -> Le {
    let mut w = Le::default();
    w.u16(TYPE_CAPABILITIES)
        .u16(CAPABILITIES_LEN)
        .u8(HIGHEST_CAPABILITY)
        .zeros(3)
        .u32(CAPABILITY_MEM_FLUSH)
        .u32(0); // reserved
    debug_assert_eq!(w.len(), usize::from(CAPABILITIES_LEN));
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_distinct_and_nonzero() {
        let handles: Vec<u32> = (0..MAX_NVDIMMS).map(nfit_handle).collect();
        assert!(handles.iter().all(|&h| h != 0));
        let mut sorted = handles.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), handles.len());
        // Within the 28 bits the ACPI 6 handle layout defines.
        assert!(handles.iter().all(|&h| h < 1 << 28));
    }

    #[test]
    #[should_panic]
    fn handle_out_of_range_panics() {
        nfit_handle(MAX_NVDIMMS);
    }

    #[test]
    fn structure_lengths_match_linux() {
        // drivers/acpi/nfit/core.c nfit_init(): header 40, SPA 64 (56 + 8-byte cookie),
        // memdev 48, DCR 80, capabilities 16.
        let d = NvdimmDesc {
            base: 1 << 32,
            size: 1 << 30,
            proximity_domain: None,
            readonly: false,
            serial_number: 1,
            slot: 0,
            flush_hint: None,
        };
        assert_eq!(spa(0, &d).len(), 64 - 8);
        assert_eq!(memdev(0, &d).len(), 48);
        assert_eq!(dcr(0, &d).len(), 80);
        assert_eq!(capabilities().len(), 16);
        assert_eq!(build(&[d]).len(), 40 + 56 + 48 + 80 + 16);
        // struct acpi_nfit_flush_address: 16 bytes + 8 per hint.
        assert_eq!(flush_hint(0, 0xfe00_0000).len(), 16 + 8);
        let with_hint = NvdimmDesc {
            flush_hint: Some(0xfe00_0000),
            ..d
        };
        assert_eq!(build(&[with_hint]).len(), 40 + 56 + 48 + 80 + 24 + 16);
    }

    #[test]
    fn flush_hint_bytes() {
        let expected: [u8; 24] = [
            0x06, 0x00, // type 6
            0x18, 0x00, // length 24
            0x03, 0x00, 0x00, 0x00, // device handle of DIMM index 2
            0x01, 0x00, // one hint
            0, 0, 0, 0, 0, 0, // reserved
            0x00, 0x20, 0x00, 0xfe, 0x00, 0x00, 0x00, 0x00, // 0xfe002000
        ];
        assert_eq!(flush_hint(2, 0xfe00_2000).as_slice(), &expected);
    }

    #[test]
    fn guid_bytes() {
        // 66F0D379-B4F3-4074-AC43-0D3318B78CDB, first three groups little-endian.
        let (a, b, c) = (0x66f0_d379u32, 0xb4f3u16, 0x4074u16);
        let mut expect = Vec::new();
        expect.extend_from_slice(&a.to_le_bytes());
        expect.extend_from_slice(&b.to_le_bytes());
        expect.extend_from_slice(&c.to_le_bytes());
        expect.extend_from_slice(&[0xac, 0x43, 0x0d, 0x33, 0x18, 0xb7, 0x8c, 0xdb]);
        assert_eq!(PERSISTENT_MEMORY_GUID.as_slice(), expect.as_slice());
    }
}
