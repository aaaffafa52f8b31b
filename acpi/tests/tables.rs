//! Structure and field checks of the blob `build_tables` produces, read back with offsets taken
//! from the ACPI 6.x specification (not from the crate).

mod common;

use acpi::{
    build_tables, decode_sleep_control, nfit_handle, AcpiError, AcpiTables, NvdimmDesc,
    PlatformDesc, MAX_NVDIMMS, MAX_PROXIMITY_DOMAIN, S5_SLEEP_TYPE, SLP_EN,
};
use common::*;

fn build(desc: &PlatformDesc) -> AcpiTables {
    build_tables(desc, BASE, MAX_LEN).expect("tables build")
}

/// Checks RSDP, checksums, lengths, alignment and every pointer of a blob.
fn check_links(t: &AcpiTables) {
    let b = &t.bytes;
    assert!(b.len() <= MAX_LEN);
    assert_eq!(t.base, BASE);
    assert_eq!(t.rsdp_addr, BASE, "RSDP comes first");

    // RSDP (ACPI 6.x §5.2.5.3): 36 bytes, two checksums.
    let rsdp = &b[..36];
    assert_eq!(&rsdp[0..8], b"RSD PTR ");
    assert_eq!(sum(&rsdp[..20]), 0, "RSDP checksum (first 20 bytes)");
    assert_eq!(sum(rsdp), 0, "RSDP extended checksum");
    assert_eq!(&rsdp[9..15], b"PMEMVM");
    assert_eq!(rsdp[15], 2, "revision");
    assert_eq!(u32_at(rsdp, 16), 0, "no RSDT");
    assert_eq!(u32_at(rsdp, 20), 36, "length");
    assert_eq!(u64_at(rsdp, 24), addr_of(t, b"XSDT"));

    let mut prev_end = 36;
    for info in &t.tables {
        let sig = String::from_utf8_lossy(&info.signature).to_string();
        assert_eq!(info.offset % 8, 0, "{sig} is 8-byte aligned");
        assert!(info.offset >= prev_end, "{sig} overlaps its predecessor");
        prev_end = info.offset + info.len;
        let table = &b[info.offset..info.offset + info.len];
        assert_eq!(&table[0..4], &info.signature);
        assert_eq!(u32_at(table, 4) as usize, info.len, "{sig} length field");
        assert_eq!(sum(table), 0, "{sig} checksum");
        assert_eq!(&table[10..16], b"PMEMVM", "{sig} OEM id");
        assert_eq!(&table[16..20], b"PMEM", "{sig} OEM table id");
        assert_eq!(&table[20..24], &info.signature, "{sig} OEM table id");
    }
    assert_eq!(prev_end, b.len(), "no trailing bytes");

    // XSDT: FADT, MADT, (with NVDIMMs) NFIT and (with NUMA NVDIMMs) SRAT, never the DSDT.
    let xsdt = table(t, b"XSDT");
    let entries: Vec<u64> = (36..xsdt.len())
        .step_by(8)
        .map(|o| u64_at(xsdt, o))
        .collect();
    let mut expected = vec![addr_of(t, b"FACP"), addr_of(t, b"APIC")];
    for sig in [b"NFIT", b"SRAT"] {
        if t.table(sig).is_some() {
            expected.push(addr_of(t, sig));
        }
    }
    assert_eq!(entries, expected);

    // FADT X_DSDT (offset 140) points at the DSDT; the 32-bit DSDT field (40) stays 0.
    let fadt = table(t, b"FACP");
    assert_eq!(u64_at(fadt, 140), addr_of(t, b"DSDT"));
    assert_eq!(u32_at(fadt, 40), 0);
}

#[test]
fn checksums_and_pointers() {
    for (cpus, n) in [(1, 0), (1, 1), (4, 2), (4, 3), (64, 5), (254, 32)] {
        let desc = platform(cpus, dimms(n));
        let t = build(&desc);
        check_links(&t);
        let sigs: Vec<&[u8; 4]> = t.tables.iter().map(|i| &i.signature).collect();
        let mut want: Vec<&[u8; 4]> = vec![b"XSDT", b"FACP", b"DSDT", b"APIC"];
        if n > 0 {
            want.push(b"NFIT");
        }
        // dimms(): DIMM 2, 5, ... is on a NUMA node.
        assert_eq!(desc.needs_srat(), n >= 3);
        if n >= 3 {
            want.push(b"SRAT");
        }
        assert_eq!(sigs, want);
    }
}

#[test]
fn pointers_follow_base() {
    let desc = platform(2, dimms(1));
    let a = build_tables(&desc, 0xe0000, MAX_LEN).unwrap();
    let b = build_tables(&desc, 0x10_0000_0000, MAX_LEN).unwrap();
    assert_eq!(b.rsdp_addr, 0x10_0000_0000);
    assert_eq!(a.tables, b.tables, "layout does not depend on base");
    let xsdt = table(&b, b"XSDT");
    assert_eq!(u64_at(xsdt, 36), 0x10_0000_0000 + b.tables[1].offset as u64);
    assert_eq!(
        u64_at(&b.bytes, 24),
        0x10_0000_0000 + b.tables[0].offset as u64
    );
}

#[test]
fn madt_fields() {
    for cpus in [1u32, 4, 64, 254] {
        let t = build(&platform(cpus, vec![]));
        let madt = table(&t, b"APIC");
        assert_eq!(u32_at(madt, 36), 0xfee0_0000, "Local APIC address");
        assert_eq!(u32_at(madt, 40), 1, "flags = PCAT_COMPAT");
        let subs = substructures(madt, 44, false);
        let lapics: Vec<&[u8]> = subs.iter().filter(|s| s.0 == 0).map(|s| s.1).collect();
        assert_eq!(lapics.len(), cpus as usize);
        for (i, l) in lapics.iter().enumerate() {
            assert_eq!(l.len(), 8);
            assert_eq!(l[2] as usize, i, "processor UID");
            assert_eq!(l[3] as usize, i, "APIC id");
            assert_eq!(u32_at(l, 4), 1, "enabled");
        }
        // No x2APIC (type 9) entries, exactly one IOAPIC and one override.
        assert!(subs.iter().all(|s| [0, 1, 2].contains(&s.0)));
        let ioapic: Vec<&[u8]> = subs.iter().filter(|s| s.0 == 1).map(|s| s.1).collect();
        assert_eq!(ioapic.len(), 1);
        let io = ioapic[0];
        assert_eq!(io.len(), 12);
        assert_eq!(io[2], 0, "IOAPIC id");
        assert_eq!(u32_at(io, 4), 0xfec0_0000, "IOAPIC address");
        assert_eq!(u32_at(io, 8), 0, "GSI base");
        let iso: Vec<&[u8]> = subs.iter().filter(|s| s.0 == 2).map(|s| s.1).collect();
        assert_eq!(iso.len(), 1);
        // Bus 0 (ISA), source IRQ 0, GSI 2, flags 0 (conforms to bus).
        assert_eq!(iso[0], &[2, 10, 0, 0, 2, 0, 0, 0, 0, 0]);
    }
}

#[test]
fn madt_uses_ioapic_desc() {
    let mut desc = platform(2, vec![]);
    desc.ioapic.id = 3;
    desc.ioapic.address = 0xfec1_0000;
    desc.ioapic.gsi_base = 24;
    let t = build(&desc);
    let madt = table(&t, b"APIC");
    let subs = substructures(madt, 44, false);
    let io = subs.iter().find(|s| s.0 == 1).unwrap().1;
    assert_eq!((io[2], u32_at(io, 4), u32_at(io, 8)), (3, 0xfec1_0000, 24));
    let iso = subs.iter().find(|s| s.0 == 2).unwrap().1;
    assert_eq!(u32_at(iso, 4), 26, "ISA IRQ 0 -> pin 2 of this IOAPIC");
}

#[test]
fn fadt_fields() {
    let mut desc = platform(1, vec![]);
    desc.power.sleep_control_port = 0x600;
    desc.power.sleep_status_port = 0x601;
    desc.power.reset_port = 0x604;
    desc.power.reset_value = 0x0e;
    let t = build(&desc);
    let f = table(&t, b"FACP");
    assert_eq!(f.len(), 276);
    assert_eq!(f[8], 6, "FADT major revision");
    assert_eq!(u32_at(f, 36), 0, "no FACS");
    assert_eq!(u64_at(f, 132), 0, "no X_FACS");
    assert_eq!(u16_at(f, 46), 0, "no SCI");
    // Flags (offset 112): HW_REDUCED_ACPI (bit 20) and RESET_REG_SUP (bit 10), nothing else.
    assert_eq!(u32_at(f, 112), (1 << 20) | (1 << 10));
    // IAPC_BOOT_ARCH (offset 109): legacy devices, no VGA, no CMOS RTC; no 8042.
    assert_eq!(u16_at(f, 109), 0x0001 | 0x0004 | 0x0020);
    assert_eq!(u16_at(f, 109), acpi::IAPC_BOOT_ARCH);
    // GAS: space id 1 (system I/O), 8 bits, offset 0, byte access (1), address.
    let gas = |off: usize, port: u64| {
        assert_eq!(&f[off..off + 4], &[1, 8, 0, 1], "GAS header at {off}");
        assert_eq!(u64_at(f, off + 4), port, "GAS address at {off}");
    };
    gas(116, 0x604); // RESET_REG
    assert_eq!(f[128], 0x0e, "RESET_VALUE");
    gas(244, 0x600); // SLEEP_CONTROL_REG
    gas(256, 0x601); // SLEEP_STATUS_REG
                     // Legacy PM blocks stay empty on a hardware-reduced platform.
    assert!(
        f[56..88].iter().all(|&b| b == 0),
        "PM1/PM2/PM timer/GPE blocks"
    );
    assert!(f[148..244].iter().all(|&b| b == 0), "X_ PM blocks");
}

#[test]
fn sleep_control_contract() {
    // What Linux writes to power off: (SLP_TYP << 2) | SLP_EN with SLP_TYP from \_S5_.
    assert_eq!(SLP_EN, 0x20);
    assert_eq!(S5_SLEEP_TYPE, 5);
    assert_eq!(decode_sleep_control((S5_SLEEP_TYPE << 2) | SLP_EN), Some(5));
    assert_eq!(acpi::S5_SLEEP_CONTROL, 0x34);
    assert_eq!(decode_sleep_control(0x14), None);
    // The DSDT holds Name (\_S5_, Package (4) { 5, 0, 0, 0 }):
    // NameOp 08, '\' "_S5_", PackageOp 12, PkgLength 07, NumElements 04, BytePrefix 0A 05,
    // Zero, Zero, Zero.
    let t = build(&platform(1, vec![]));
    let dsdt = table(&t, b"DSDT");
    let s5 = [
        0x08, b'\\', b'_', b'S', b'5', b'_', 0x12, 0x07, 0x04, 0x0a, 0x05, 0x00, 0x00, 0x00,
    ];
    assert!(dsdt.windows(s5.len()).any(|w| w == s5), "\\_S5_ package");
}

#[test]
fn dsdt_contents() {
    let t = build(&platform(1, dimms(3)));
    let dsdt = table(&t, b"DSDT");
    assert_eq!(dsdt[8], 2, "DSDT revision 2 (64-bit integers)");
    let has = |needle: &[u8]| dsdt.windows(needle.len()).any(|w| w == needle);
    // _HID string "ACPI0012": StringPrefix 0D, chars, NUL.
    assert!(has(b"\x0dACPI0012\x00"));
    assert!(has(b"NVDR"));
    for i in 0..3 {
        // Device name, then Name (_ADR, DWordConst handle).
        let name = format!("NV{i:02X}");
        assert!(has(name.as_bytes()), "{name}");
        let mut adr = vec![0x08, b'_', b'A', b'D', b'R', 0x0c];
        adr.extend_from_slice(&nfit_handle(i).to_le_bytes());
        assert!(has(&adr), "_ADR of {name}");
    }
    assert!(!has(b"NV03"));
    // PNP0501 as an EISA id: 0x0105D041 little-endian behind DWordPrefix.
    assert!(has(&[0x0c, 0x41, 0xd0, 0x05, 0x01]));
    // _CRS: IO(Decode16, 0x3f8, 0x3f8, 1, 8), IRQNoFlags {4}, EndTag.
    assert!(has(&[
        0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08, 0x22, 0x10, 0x00, 0x79, 0x00
    ]));
}

#[test]
fn no_nvdimms_means_no_nfit_and_no_root() {
    let t = build(&platform(4, vec![]));
    assert!(t.table(b"NFIT").is_none());
    let xsdt = table(&t, b"XSDT");
    assert_eq!(xsdt.len(), 36 + 2 * 8);
    let dsdt = table(&t, b"DSDT");
    assert!(!dsdt.windows(8).any(|w| w == b"ACPI0012"));
    assert!(!dsdt.windows(4).any(|w| w == b"NVDR"));
}

#[test]
fn nfit_fields() {
    let ds = dimms(4);
    let t = build(&platform(2, ds.clone()));
    let nfit = table(&t, b"NFIT");
    assert_eq!(nfit[8], 1, "NFIT revision");
    assert_eq!(u32_at(nfit, 36), 0, "reserved");
    let subs = substructures(nfit, 40, true);
    let types: Vec<u16> = subs.iter().map(|s| s.0).collect();
    // Even DIMMs carry a flush hint (type 6) after their control region.
    assert_eq!(types, [0, 1, 4, 6, 0, 1, 4, 0, 1, 4, 6, 0, 1, 4, 7]);
    let mut next = 0;
    for (i, d) in ds.iter().enumerate() {
        let (spa, memdev, dcr) = (subs[next].1, subs[next + 1].1, subs[next + 2].1);
        next += 3;
        let index = i as u16 + 1;
        if let Some(hint) = d.flush_hint {
            // Flush hint address (§5.2.25.8): handle, one hint, the address.
            let flush = subs[next].1;
            next += 1;
            assert_eq!(flush.len(), 24);
            assert_eq!(u32_at(flush, 4), nfit_handle(i));
            assert_eq!(u16_at(flush, 8), 1);
            assert_eq!(u64_at(flush, 16), hint);
        }

        // SPA range (ACPI 6.x §5.2.25.2).
        assert_eq!(spa.len(), 56);
        assert_eq!(u16_at(spa, 4), index, "range index");
        let pxm_valid = u16_at(spa, 6) & 2 != 0;
        assert_eq!(pxm_valid, d.proximity_domain.is_some());
        assert_eq!(u16_at(spa, 6) & !2, 0, "no other SPA flags");
        assert_eq!(u32_at(spa, 12), d.proximity_domain.unwrap_or(0));
        assert_eq!(u64_at(spa, 32), d.base);
        assert_eq!(u64_at(spa, 40), d.size);
        assert_eq!(u64_at(spa, 48), 0x8008, "EFI_MEMORY_WB | EFI_MEMORY_NV");

        // Region mapping (§5.2.25.3).
        assert_eq!(memdev.len(), 48);
        assert_eq!(u32_at(memdev, 4), nfit_handle(i));
        assert_eq!(u16_at(memdev, 12), index, "SPA range index");
        assert_eq!(u16_at(memdev, 14), u16_at(dcr, 4), "control region index");
        assert_eq!(u64_at(memdev, 16), d.size, "region size");
        assert_eq!(u64_at(memdev, 24), 0, "region offset");
        assert_eq!(u64_at(memdev, 32), 0, "DPA");
        assert_eq!(u16_at(memdev, 42), 1, "interleave ways");
        let not_armed = u16_at(memdev, 44) == 1 << 3;
        assert_eq!(not_armed, d.readonly);
        assert!(u16_at(memdev, 44) & !(1 << 3) == 0);

        // Control region (§5.2.25.6).
        assert_eq!(dcr.len(), 80);
        assert_eq!(u16_at(dcr, 4), index);
        assert_eq!(u32_at(dcr, 24), d.serial_number);
        assert_eq!(u16_at(dcr, 28), 0x301, "format interface code");
        assert_eq!(u16_at(dcr, 30), 0, "no block control windows");
    }
    // Platform capabilities (§5.2.25.9): highest bit 1, memory-controller flush only.
    assert_eq!(next, subs.len() - 1);
    assert_eq!(
        subs[next].1,
        &[7, 0, 16, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]
    );
}

/// Sets byte 9 so that the table sums to zero, the way the spec defines the checksum.
fn fix_checksum(table: &mut [u8]) {
    table[9] = 0;
    table[9] = 0u8.wrapping_sub(sum(table));
}

/// The standard header of an NFIT of `len` bytes, checksum left 0.
fn nfit_header(len: u32) -> Vec<u8> {
    [
        &b"NFIT"[..],        // Signature
        &len.to_le_bytes(),  // Length
        &[0x01],             // Revision
        &[0x00],             // Checksum (fixed up below)
        b"PMEMVM",           // OEM ID
        b"PMEMNFIT",         // OEM Table ID
        &[0x01, 0, 0, 0],    // OEM Revision
        b"RVAT",             // Creator ID (acpi_tables)
        &[0x00, 0, 0, 0x01], // Creator Revision
        &[0x00, 0, 0, 0],    // Reserved
    ]
    .concat()
}

/// DIMM 0 of the expected-bytes tests: base 0x12_3456_7000, size 0x89AB_C000, no NUMA node,
/// writable, serial 0xDEADBEEF.
const DIMM_A: NvdimmDesc = NvdimmDesc {
    base: 0x12_3456_7000,
    size: 0x89ab_c000,
    proximity_domain: None,
    readonly: false,
    serial_number: 0xdead_beef,
    slot: 0,
    flush_hint: None,
};

/// DIMM 1: base 0x13_0000_0000, size 256 MiB, proximity domain 0xFE, read-only, serial 2.
const DIMM_B: NvdimmDesc = NvdimmDesc {
    base: 0x13_0000_0000,
    size: 0x1000_0000,
    proximity_domain: Some(0xfe),
    readonly: true,
    serial_number: 2,
    slot: 1,
    flush_hint: None,
};

const PMEM_GUID: [u8; 16] = [
    0x79, 0xd3, 0xf0, 0x66, 0xf3, 0xb4, 0x74, 0x40, 0xac, 0x43, 0x0d, 0x33, 0x18, 0xb7, 0x8c, 0xdb,
];

fn dimm_a_structures() -> Vec<u8> {
    [
        // --- SPA range structure (type 0) ---
        &[0x00, 0x00][..],                                 // Type 0
        &[0x38, 0x00],                                     // Length 56
        &[0x01, 0x00],                                     // SPA Range Structure Index 1
        &[0x00, 0x00],                                     // Flags: proximity domain not valid
        &[0x00, 0x00, 0x00, 0x00],                         // Reserved
        &[0x00, 0x00, 0x00, 0x00],                         // Proximity Domain
        &PMEM_GUID,                                        // Address Range Type GUID
        &[0x00, 0x70, 0x56, 0x34, 0x12, 0x00, 0x00, 0x00], // SPA Range Base
        &[0x00, 0xc0, 0xab, 0x89, 0x00, 0x00, 0x00, 0x00], // SPA Range Length
        &[0x08, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00], // Memory Mapping Attribute WB|NV
        // --- NVDIMM region mapping structure (type 1) ---
        &[0x01, 0x00],                                     // Type 1
        &[0x30, 0x00],                                     // Length 48
        &[0x01, 0x00, 0x00, 0x00],                         // NFIT Device Handle 1
        &[0x00, 0x00],                                     // NVDIMM Physical ID 0
        &[0x00, 0x00],                                     // NVDIMM Region ID 0
        &[0x01, 0x00],                                     // SPA Range Structure Index 1
        &[0x01, 0x00],                                     // Control Region Structure Index 1
        &[0x00, 0xc0, 0xab, 0x89, 0x00, 0x00, 0x00, 0x00], // NVDIMM Region Size
        &[0x00; 8],                                        // Region Offset 0
        &[0x00; 8],                                        // Physical Address Region Base 0
        &[0x00, 0x00],                                     // Interleave Structure Index 0
        &[0x01, 0x00],                                     // Interleave Ways 1
        &[0x00, 0x00],                                     // NVDIMM State Flags: armed
        &[0x00, 0x00],                                     // Reserved
        // --- NVDIMM control region structure (type 4) ---
        &[0x04, 0x00],             // Type 4
        &[0x50, 0x00],             // Length 80
        &[0x01, 0x00],             // Control Region Structure Index 1
        &[0x86, 0x80],             // Vendor ID 0x8086
        &[0x01, 0x00],             // Device ID 1
        &[0x01, 0x00],             // Revision ID 1
        &[0x00, 0x00],             // Subsystem Vendor ID
        &[0x00, 0x00],             // Subsystem Device ID
        &[0x00, 0x00],             // Subsystem Revision ID
        &[0x00],                   // Valid Fields
        &[0x00],                   // Manufacturing Location
        &[0x00, 0x00],             // Manufacturing Date
        &[0x00, 0x00],             // Reserved
        &[0xef, 0xbe, 0xad, 0xde], // Serial Number 0xDEADBEEF
        &[0x01, 0x03],             // Region Format Interface Code 0x301
        &[0x00, 0x00],             // Number of Block Control Windows 0
        &[0x00; 8],                // Size of Block Control Window
        &[0x00; 8],                // Command Register Offset
        &[0x00; 8],                // Size of Command Register
        &[0x00; 8],                // Status Register Offset
        &[0x00; 8],                // Size of Status Register
        &[0x00, 0x00],             // Control Region Flags
        &[0x00; 6],                // Reserved
    ]
    .concat()
}

fn dimm_b_structures() -> Vec<u8> {
    [
        // --- SPA range structure (type 0) ---
        &[0x00, 0x00][..],                                 // Type 0
        &[0x38, 0x00],                                     // Length 56
        &[0x02, 0x00],                                     // SPA Range Structure Index 2
        &[0x02, 0x00],                                     // Flags: bit 1 proximity domain valid
        &[0x00, 0x00, 0x00, 0x00],                         // Reserved
        &[0xfe, 0x00, 0x00, 0x00],                         // Proximity Domain 0xFE
        &PMEM_GUID,                                        // Address Range Type GUID
        &[0x00, 0x00, 0x00, 0x00, 0x13, 0x00, 0x00, 0x00], // SPA Range Base
        &[0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00], // SPA Range Length
        &[0x08, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00], // Memory Mapping Attribute WB|NV
        // --- NVDIMM region mapping structure (type 1) ---
        &[0x01, 0x00],                                     // Type 1
        &[0x30, 0x00],                                     // Length 48
        &[0x02, 0x00, 0x00, 0x00],                         // NFIT Device Handle 2
        &[0x01, 0x00],                                     // NVDIMM Physical ID 1
        &[0x00, 0x00],                                     // NVDIMM Region ID 0
        &[0x02, 0x00],                                     // SPA Range Structure Index 2
        &[0x02, 0x00],                                     // Control Region Structure Index 2
        &[0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00], // NVDIMM Region Size
        &[0x00; 8],                                        // Region Offset 0
        &[0x00; 8],                                        // Physical Address Region Base 0
        &[0x00, 0x00],                                     // Interleave Structure Index 0
        &[0x01, 0x00],                                     // Interleave Ways 1
        &[0x08, 0x00],                                     // NVDIMM State Flags: bit 3 not armed
        &[0x00, 0x00],                                     // Reserved
        // --- NVDIMM control region structure (type 4) ---
        &[0x04, 0x00],             // Type 4
        &[0x50, 0x00],             // Length 80
        &[0x02, 0x00],             // Control Region Structure Index 2
        &[0x86, 0x80],             // Vendor ID 0x8086
        &[0x01, 0x00],             // Device ID 1
        &[0x01, 0x00],             // Revision ID 1
        &[0x00, 0x00],             // Subsystem Vendor ID
        &[0x00, 0x00],             // Subsystem Device ID
        &[0x00, 0x00],             // Subsystem Revision ID
        &[0x00],                   // Valid Fields
        &[0x00],                   // Manufacturing Location
        &[0x00, 0x00],             // Manufacturing Date
        &[0x00, 0x00],             // Reserved
        &[0x02, 0x00, 0x00, 0x00], // Serial Number 2
        &[0x01, 0x03],             // Region Format Interface Code 0x301
        &[0x00, 0x00],             // Number of Block Control Windows 0
        &[0x00; 40],               // Window/command/status fields
        &[0x00, 0x00],             // Control Region Flags
        &[0x00; 6],                // Reserved
    ]
    .concat()
}

fn platform_capabilities() -> Vec<u8> {
    [
        &[0x07, 0x00][..],         // Type 7
        &[0x10, 0x00],             // Length 16
        &[0x01],                   // Highest Valid Capability: bit 1
        &[0x00, 0x00, 0x00],       // Reserved
        &[0x02, 0x00, 0x00, 0x00], // Capabilities: memory controller flush
        &[0x00, 0x00, 0x00, 0x00], // Reserved
    ]
    .concat()
}

#[test]
fn nfit_expected_bytes_one_dimm() {
    let t = build(&platform(1, vec![DIMM_A]));
    // 40 header + 56 SPA + 48 mapping + 80 control region + 16 capabilities = 240.
    let mut expected = [
        nfit_header(240),
        dimm_a_structures(),
        platform_capabilities(),
    ]
    .concat();
    fix_checksum(&mut expected);
    assert_eq!(expected.len(), 240);
    assert_eq!(table(&t, b"NFIT"), expected.as_slice());
}

#[test]
fn nfit_expected_bytes_two_dimms() {
    let t = build(&platform(1, vec![DIMM_A, DIMM_B]));
    // 40 + 2 * (56 + 48 + 80) + 16 = 424.
    let mut expected = [
        nfit_header(424),
        dimm_a_structures(),
        dimm_b_structures(),
        platform_capabilities(),
    ]
    .concat();
    fix_checksum(&mut expected);
    assert_eq!(expected.len(), 424);
    assert_eq!(table(&t, b"NFIT"), expected.as_slice());
}

#[test]
fn cpu_limits() {
    for cpus in [1, 4, 64, 254] {
        let t = build(&platform(cpus, vec![]));
        let madt = table(&t, b"APIC");
        assert_eq!(madt.len(), 44 + 8 * cpus as usize + 12 + 10);
    }
    assert_eq!(
        build_tables(&platform(0, vec![]), BASE, MAX_LEN),
        Err(AcpiError::NoCpus)
    );
    assert_eq!(
        build_tables(&platform(255, vec![]), BASE, MAX_LEN),
        Err(AcpiError::TooManyCpus {
            count: 255,
            max: 254
        })
    );
}

#[test]
fn thirty_two_nvdimms_fit() {
    let t = build_tables(&platform(254, dimms(32)), BASE, 0x20000).unwrap();
    check_links(&t);
    let nfit = table(&t, b"NFIT");
    assert_eq!(nfit.len(), 40 + 32 * (56 + 48 + 80) + 16 * 24 + 16);
    let subs = substructures(nfit, 40, true);
    let handles: Vec<u32> = subs
        .iter()
        .filter(|s| s.0 == 1)
        .map(|s| u32_at(s.1, 4))
        .collect();
    assert_eq!(handles, (1..=32).collect::<Vec<u32>>());
}

#[test]
fn too_large() {
    let desc = platform(4, dimms(2));
    let needed = build(&desc).bytes.len();
    assert!(build_tables(&desc, BASE, needed).is_ok());
    assert_eq!(
        build_tables(&desc, BASE, needed - 1),
        Err(AcpiError::TooLarge {
            needed,
            max_len: needed - 1
        })
    );
}

#[test]
fn bad_base() {
    let desc = platform(1, vec![]);
    assert_eq!(
        build_tables(&desc, 0xe0008, MAX_LEN),
        Err(AcpiError::MisalignedBase { base: 0xe0008 })
    );
    assert!(matches!(
        build_tables(&desc, u64::MAX - 15, MAX_LEN),
        Err(AcpiError::AddressOverflow { .. })
    ));
}

#[test]
fn nvdimm_errors() {
    let err = |ds: Vec<NvdimmDesc>| build_tables(&platform(1, ds), BASE, MAX_LEN).unwrap_err();
    let mut d = dimms(2);
    d[1].size = 0;
    assert_eq!(err(d), AcpiError::NvdimmEmpty { index: 1 });

    let mut d = dimms(1);
    d[0].base = u64::MAX - 0xfff;
    d[0].size = 0x2000;
    assert!(matches!(err(d), AcpiError::NvdimmOverflow { index: 0, .. }));

    let mut d = dimms(1);
    d[0].size = GIB + 512;
    assert!(matches!(
        err(d),
        AcpiError::NvdimmMisaligned { index: 0, .. }
    ));

    let mut d = dimms(2);
    d[1].base = d[0].base + GIB / 2;
    assert_eq!(
        err(d),
        AcpiError::NvdimmOverlap {
            first: 0,
            second: 1
        }
    );

    let mut d = dimms(3);
    d[2].serial_number = d[0].serial_number;
    assert!(matches!(
        err(d),
        AcpiError::NvdimmDuplicateSerial {
            first: 0,
            second: 2,
            ..
        }
    ));

    assert!(matches!(
        err(dimms(MAX_NVDIMMS + 1)),
        AcpiError::TooManyNvdimms { .. }
    ));
}

#[test]
fn errors_name_the_value() {
    let msg = AcpiError::TooManyCpus {
        count: 255,
        max: 254,
    }
    .to_string();
    assert!(msg.contains("255"), "{msg}");
    let msg = AcpiError::NvdimmEmpty { index: 3 }.to_string();
    assert!(msg.contains("NVDIMM 3"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// SRAT (ACPI 6.x §5.2.16): header 48 bytes (36 + Table Revision u32 + reserved u64), then
// Processor Local APIC/SAPIC Affinity (type 0, 16 bytes) and Memory Affinity (type 1, 40 bytes)
// structures with u8 type/length headers.

const MIB: u64 = 1 << 20;

/// A 3.5 GiB guest: RAM below the MMIO hole and 512 MiB above 4 GiB, NVDIMMs from 8 GiB on.
fn numa_platform(cpus: u32, domains: &[Option<u32>]) -> PlatformDesc {
    let mut desc = platform(
        cpus,
        domains
            .iter()
            .enumerate()
            .map(|(i, &proximity_domain)| NvdimmDesc {
                base: 8 * GIB + i as u64 * 2 * GIB,
                size: GIB + i as u64 * 128 * MIB,
                proximity_domain,
                readonly: false,
                serial_number: 0x2000 + i as u32,
                slot: i,
                flush_hint: None,
            })
            .collect(),
    );
    desc.ram = vec![(0, 3 * GIB), (4 * GIB, 512 * MIB)];
    desc
}

/// (domain, base, length, flags) of a Memory Affinity structure; checks its fixed fields.
fn memory_affinity(s: &[u8]) -> (u32, u64, u64, u32) {
    assert_eq!(s.len(), 40);
    assert_eq!(u16_at(s, 6), 0, "reserved");
    assert_eq!(u32_at(s, 24), 0, "reserved");
    assert_eq!(u64_at(s, 32), 0, "reserved");
    (u32_at(s, 2), u64_at(s, 8), u64_at(s, 16), u32_at(s, 28))
}

const ENABLED: u32 = 1;
const NON_VOLATILE: u32 = 1 << 2;

#[test]
fn srat_fields() {
    let domains = [Some(1), None, Some(2), Some(0)];
    let desc = numa_platform(4, &domains);
    let t = build(&desc);
    check_links(&t);
    let srat = table(&t, b"SRAT");
    assert_eq!(srat[8], 3, "SRAT revision");
    assert_eq!(u32_at(srat, 36), 1, "Table Revision must be 1");
    assert_eq!(u64_at(srat, 40), 0, "reserved");
    let subs = substructures(srat, 48, false);
    assert_eq!(srat.len(), 48 + 4 * 16 + (2 + 4) * 40);
    let types: Vec<u16> = subs.iter().map(|s| s.0).collect();
    assert_eq!(types, [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]);

    // One enabled CPU per MADT Local APIC, all in domain 0.
    for (i, (_, c)) in subs[..4].iter().enumerate() {
        assert_eq!(c.len(), 16);
        assert_eq!(c[2], 0, "proximity domain [7:0]");
        assert_eq!(c[3] as usize, i, "APIC id");
        assert_eq!(u32_at(c, 4), ENABLED, "flags");
        assert_eq!(c[8], 0, "local SAPIC EID");
        assert_eq!(&c[9..12], &[0, 0, 0], "proximity domain [31:8]");
        assert_eq!(u32_at(c, 12), 0, "clock domain");
    }

    // RAM in domain 0, enabled, volatile.
    let mem: Vec<_> = subs[4..].iter().map(|s| memory_affinity(s.1)).collect();
    assert_eq!(mem[0], (0, 0, 3 * GIB, ENABLED));
    assert_eq!(mem[1], (0, 4 * GIB, 512 * MIB, ENABLED));

    // NVDIMMs sorted by domain (None counts as 0), ties in NVDIMM order: 1, 3, 0, 2.
    let d = &desc.nvdimms;
    let nv = ENABLED | NON_VOLATILE;
    assert_eq!(mem[2], (0, d[1].base, d[1].size, nv));
    assert_eq!(mem[3], (0, d[3].base, d[3].size, nv));
    assert_eq!(mem[4], (1, d[0].base, d[0].size, nv));
    assert_eq!(mem[5], (2, d[2].base, d[2].size, nv));
}

#[test]
fn srat_expected_bytes() {
    let mut desc = platform(1, vec![DIMM_B]);
    desc.ram = vec![(0, 0x8000_0000)];
    let t = build(&desc);
    let mut expected = [
        // --- header ---
        &b"SRAT"[..],              // Signature
        &[0x90, 0x00, 0x00, 0x00], // Length 144 = 48 + 16 + 2 * 40
        &[0x03],                   // Revision 3
        &[0x00],                   // Checksum (fixed up below)
        b"PMEMVM",                 // OEM ID
        b"PMEMSRAT",               // OEM Table ID
        &[0x01, 0, 0, 0],          // OEM Revision
        b"RVAT",                   // Creator ID (acpi_tables)
        &[0x00, 0, 0, 0x01],       // Creator Revision
        &[0x01, 0x00, 0x00, 0x00], // Table Revision 1
        &[0x00; 8],                // Reserved
        // --- Processor Local APIC/SAPIC Affinity (type 0) ---
        &[0x00],                   // Type 0
        &[0x10],                   // Length 16
        &[0x00],                   // Proximity Domain [7:0]
        &[0x00],                   // APIC ID 0
        &[0x01, 0x00, 0x00, 0x00], // Flags: enabled
        &[0x00],                   // Local SAPIC EID
        &[0x00, 0x00, 0x00],       // Proximity Domain [31:8]
        &[0x00, 0x00, 0x00, 0x00], // Clock Domain
        // --- Memory Affinity (type 1): RAM ---
        &[0x01],                                           // Type 1
        &[0x28],                                           // Length 40
        &[0x00, 0x00, 0x00, 0x00],                         // Proximity Domain 0
        &[0x00, 0x00],                                     // Reserved
        &[0x00; 8],                                        // Base Address 0
        &[0x00, 0x00, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00], // Length 2 GiB
        &[0x00; 4],                                        // Reserved
        &[0x01, 0x00, 0x00, 0x00],                         // Flags: enabled
        &[0x00; 8],                                        // Reserved
        // --- Memory Affinity (type 1): DIMM_B ---
        &[0x01],                                           // Type 1
        &[0x28],                                           // Length 40
        &[0xfe, 0x00, 0x00, 0x00],                         // Proximity Domain 0xFE
        &[0x00, 0x00],                                     // Reserved
        &[0x00, 0x00, 0x00, 0x00, 0x13, 0x00, 0x00, 0x00], // Base Address 0x13_0000_0000
        &[0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00], // Length 256 MiB
        &[0x00; 4],                                        // Reserved
        &[0x05, 0x00, 0x00, 0x00],                         // Flags: enabled | non-volatile
        &[0x00; 8],                                        // Reserved
    ]
    .concat();
    fix_checksum(&mut expected);
    assert_eq!(expected.len(), 144);
    assert_eq!(table(&t, b"SRAT"), expected.as_slice());
}

#[test]
fn srat_only_with_numa_nvdimms() {
    // No NVDIMM, or NVDIMMs without a domain: no SRAT, and the XSDT does not list one.
    for desc in [
        platform(4, vec![]),
        numa_platform(4, &[None, None]),
        // Needs no RAM either.
        PlatformDesc {
            ram: vec![],
            ..numa_platform(4, &[None])
        },
    ] {
        assert!(!desc.needs_srat());
        let t = build(&desc);
        check_links(&t);
        assert!(t.table(b"SRAT").is_none());
        let entries = 2 + usize::from(!desc.nvdimms.is_empty());
        assert_eq!(table(&t, b"XSDT").len(), 36 + 8 * entries);
    }
    // One domain, even domain 0, is enough.
    for domains in [[None, Some(0)], [Some(3), None]] {
        let desc = numa_platform(4, &domains);
        assert!(desc.needs_srat());
        let t = build(&desc);
        check_links(&t);
        assert_eq!(table(&t, b"XSDT").len(), 36 + 8 * 4);
        assert_eq!(t.tables.last().unwrap().signature, *b"SRAT");
        let subs = substructures(table(&t, b"SRAT"), 48, false);
        assert_eq!(subs.len(), 4 + 2 + 2);
    }
    // Without NUMA NVDIMMs the tables are exactly what they were before the SRAT existed:
    // the RAM regions do not show up anywhere.
    let a = numa_platform(2, &[None]);
    let b = PlatformDesc {
        ram: vec![(0, GIB)],
        ..a.clone()
    };
    assert_eq!(build(&a), build(&b));
}

#[test]
fn sixty_four_numa_nvdimms_and_254_cpus_fit() {
    // The monitor's limits (MAX_PMEM_DEVICES = 64, 254 vCPUs), every DIMM on a node.
    let mut ds = dimms(64);
    for (i, d) in ds.iter_mut().enumerate() {
        d.proximity_domain = Some(1 + i as u32 % 4);
    }
    let mut desc = platform(254, ds);
    desc.ram = vec![(0, 3 * GIB)];
    let t = build_tables(&desc, BASE, 0x20000).unwrap();
    check_links(&t);
    let srat = table(&t, b"SRAT");
    assert_eq!(srat.len(), 48 + 254 * 16 + (1 + 64) * 40);
    let subs = substructures(srat, 48, false);
    assert_eq!(subs.iter().filter(|s| s.0 == 0).count(), 254);
    assert_eq!(subs.iter().filter(|s| s.0 == 1).count(), 65);
    assert!(
        t.bytes.len() <= 0x20000,
        "{:#x} bytes of tables",
        t.bytes.len()
    );

    // The maximum number of DIMMs (MAX_NVDIMMS) fits the 128 KiB window.
    let mut desc = platform(254, dimms(MAX_NVDIMMS));
    for d in &mut desc.nvdimms {
        d.proximity_domain.get_or_insert(0);
    }
    let t = build_tables(&desc, BASE, 0x20000).unwrap();
    check_links(&t);
}

#[test]
fn srat_errors() {
    let err = |desc: PlatformDesc| build_tables(&desc, BASE, MAX_LEN).unwrap_err();

    let no_ram = PlatformDesc {
        ram: vec![],
        ..numa_platform(1, &[Some(1)])
    };
    assert_eq!(err(no_ram), AcpiError::SratWithoutRam);

    let mut desc = numa_platform(1, &[Some(MAX_PROXIMITY_DOMAIN)]);
    assert!(build_tables(&desc, BASE, MAX_LEN).is_ok());
    desc.nvdimms[0].proximity_domain = Some(MAX_PROXIMITY_DOMAIN + 1);
    assert_eq!(
        err(desc),
        AcpiError::NvdimmProximityDomain {
            index: 0,
            domain: 256,
            max: 255
        }
    );

    // RAM rules hold whether or not an SRAT is needed.
    for domain in [None, Some(1)] {
        let mut desc = numa_platform(1, &[domain]);
        desc.ram[1].1 = 0;
        assert_eq!(
            err(desc),
            AcpiError::RamRegionInvalid {
                index: 1,
                start: 4 * GIB,
                len: 0
            }
        );

        let mut desc = numa_platform(1, &[domain]);
        desc.ram[1] = (u64::MAX - 0xfff, 0x2000);
        assert!(matches!(
            err(desc),
            AcpiError::RamRegionInvalid { index: 1, .. }
        ));

        let mut desc = numa_platform(1, &[domain]);
        desc.ram[1] = (3 * GIB - 4096, GIB);
        assert_eq!(
            err(desc),
            AcpiError::RamOverlap {
                first: 0,
                second: 1
            }
        );

        let mut desc = numa_platform(1, &[domain, domain]);
        desc.ram.push((desc.nvdimms[1].base + GIB - 4096, GIB));
        assert_eq!(
            err(desc),
            AcpiError::RamOverlapsNvdimm { ram: 2, nvdimm: 1 }
        );
    }
}
