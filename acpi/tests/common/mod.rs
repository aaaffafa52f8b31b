//! Helpers shared by the integration tests: sample descriptions and little-endian readers.
#![allow(dead_code)]

use acpi::{AcpiTables, IoApicDesc, NvdimmDesc, PlatformDesc, PowerDesc, SerialDesc};

pub const BASE: u64 = 0xe0000;
pub const MAX_LEN: usize = 0x20000;
pub const GIB: u64 = 1 << 30;

/// Guest RAM of the sample platforms: 3 GiB below the MMIO hole, none above, so that `dimms()`
/// may start at 4 GiB.
pub const RAM: [(u64, u64); 1] = [(0, 3 * GIB)];

pub fn platform(num_cpus: u32, nvdimms: Vec<NvdimmDesc>) -> PlatformDesc {
    PlatformDesc {
        num_cpus,
        ioapic: IoApicDesc {
            id: 0,
            address: 0xfec0_0000,
            gsi_base: 0,
        },
        serial: vec![SerialDesc {
            io_base: 0x3f8,
            irq: 4,
        }],
        power: PowerDesc {
            sleep_control_port: 0x3c0,
            sleep_status_port: 0x3c1,
            reset_port: 0xcf9,
            reset_value: 0x06,
            power_button_gsi: None,
        },
        nvdimms,
        ram: RAM.to_vec(),
        nvdimm_hotplug: None,
        nvdimm_dsm: None,
    }
}

/// `n` 1 GiB DIMMs from 4 GiB upwards; odd ones read-only, every third on node 1.
pub fn dimms(n: usize) -> Vec<NvdimmDesc> {
    (0..n)
        .map(|i| NvdimmDesc {
            base: 4 * GIB + i as u64 * GIB,
            size: GIB,
            proximity_domain: (i % 3 == 2).then_some(1),
            readonly: i % 2 == 1,
            serial_number: 0x1000 + i as u32,
            slot: i,
            flush_hint: (i % 2 == 0).then_some(0xfe00_0000 + i as u64 * 0x1000),
        })
        .collect()
}

pub fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

pub fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}

pub fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

pub fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

pub fn table<'a>(t: &'a AcpiTables, sig: &[u8; 4]) -> &'a [u8] {
    t.table(sig)
        .unwrap_or_else(|| panic!("no {} table", String::from_utf8_lossy(sig)))
}

/// Guest-physical address of the table with `sig`.
pub fn addr_of(t: &AcpiTables, sig: &[u8; 4]) -> u64 {
    let info = t.tables.iter().find(|i| &i.signature == sig).unwrap();
    t.base + info.offset as u64
}

/// Sub-structures of a table with a `header_len`-byte header, as (type, bytes) pairs.
/// `wide` selects NFIT-style u16 type/length headers over MADT-style u8 ones.
pub fn substructures(table: &[u8], header_len: usize, wide: bool) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut off = header_len;
    while off < table.len() {
        let (ty, len) = if wide {
            (u16_at(table, off), usize::from(u16_at(table, off + 2)))
        } else {
            (u16::from(table[off]), usize::from(table[off + 1]))
        };
        assert!(
            len > 0 && off + len <= table.len(),
            "bad sub-structure at {off:#x}"
        );
        out.push((ty, &table[off..off + len]));
        off += len;
    }
    out
}
