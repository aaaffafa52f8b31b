//! An arbitrary ACPI platform description from fuzz input, and the checks every built blob must
//! pass. Shared by the `acpi_tables` target and the test that runs `iasl -d` over the corpus.
//!
//! Most descriptions are made plausible (CPUs in range, NVDIMMs laid out above RAM at 4 KiB
//! multiples) so the builders are exercised past validation; a `raw` choice passes the fields
//! through unchanged, so validation itself is fuzzed too.

use acpi::{
    AcpiTables, IoApicDesc, NvdimmDesc, NvdimmHotplugDesc, PlatformDesc, PowerDesc, SerialDesc,
};
use arbitrary::{Arbitrary, Unstructured};

/// Where the monitor puts the blob, and the room it gives it.
pub const ACPI_BASE: u64 = 0xe0000;
pub const ACPI_MAX: usize = 0x20000;

#[derive(Arbitrary, Debug)]
struct Nvdimm {
    gap_pages: u16,
    size_pages: u32,
    proximity_domain: Option<u16>,
    readonly: bool,
    serial_number: u32,
    flush_hint: bool,
}

#[derive(Arbitrary, Debug)]
struct Platform {
    /// Pass numbers through unclamped (fuzzes `PlatformDesc::validate`).
    raw: bool,
    num_cpus: u16,
    ioapic_id: u8,
    ioapic_address: u32,
    serial: Vec<(u16, u8)>,
    power: (u16, u16, u16, u8),
    ram_mib: u32,
    nvdimms: Vec<Nvdimm>,
    // Last, so inputs written before these existed decode as they did (with both off).
    /// The power button's GED interrupt.
    power_button_gsi: Option<u8>,
    /// NVDIMM hot-add: (FIT buffer address in pages, FIT room in pages, GED interrupt).
    nvdimm_hotplug: Option<(u32, u16, u8)>,
    /// The NVDIMM `_DSM` mailbox: (page address in pages, doorbell port).
    nvdimm_dsm: Option<(u32, u16)>,
    /// NVDIMM health events (with the mailbox): (GED interrupt, register port).
    health_events: Option<(u8, u16)>,
}

/// The description `data` decodes to (an empty input gives a one-CPU platform).
pub fn platform_from_bytes(data: &[u8]) -> PlatformDesc {
    let mut u = Unstructured::new(data);
    let p = Platform::arbitrary(&mut u).unwrap_or(Platform {
        raw: false,
        num_cpus: 1,
        ioapic_id: 0,
        ioapic_address: 0xfec0_0000,
        serial: vec![],
        power: (0x3c0, 0x3c1, 0xcf9, 6),
        ram_mib: 256,
        nvdimms: vec![],
        power_button_gsi: None,
        nvdimm_hotplug: None,
        nvdimm_dsm: None,
        health_events: None,
    });
    let raw = p.raw;
    let num_cpus = if raw {
        u32::from(p.num_cpus)
    } else {
        1 + u32::from(p.num_cpus) % acpi::MAX_CPUS
    };
    let serial = p
        .serial
        .iter()
        .take(if raw {
            usize::MAX
        } else {
            acpi::MAX_SERIAL_PORTS
        })
        .map(|&(io_base, irq)| SerialDesc {
            io_base: if raw { io_base } else { io_base.min(0xfff0) },
            irq: if raw { irq } else { irq % 16 },
        })
        .collect();
    let ram_bytes = (u64::from(p.ram_mib % (64 << 10)) + 1) << 20;
    let ram: Vec<(u64, u64)> = if ram_bytes > 3 << 30 {
        vec![(0, 3 << 30), (1 << 32, ram_bytes - (3 << 30))]
    } else {
        vec![(0, ram_bytes)]
    };
    let mut next = ram.last().map(|&(s, l)| s + l).unwrap_or(0).max(1 << 32);
    let mut nvdimms = Vec::new();
    for (i, d) in p
        .nvdimms
        .iter()
        .take(if raw { 300 } else { acpi::MAX_NVDIMMS })
        .enumerate()
    {
        let (base, size) = if raw {
            (u64::from(d.gap_pages) << 12, u64::from(d.size_pages) << 12)
        } else {
            let base = next + (u64::from(d.gap_pages) << 12);
            let size = (u64::from(d.size_pages % (1 << 24)) + 1) << 12;
            next = base + size;
            (base, size)
        };
        nvdimms.push(NvdimmDesc {
            base,
            size,
            proximity_domain: d.proximity_domain.map(|n| {
                if raw {
                    u32::from(n)
                } else {
                    u32::from(n) % (acpi::MAX_PROXIMITY_DOMAIN + 1)
                }
            }),
            readonly: d.readonly,
            serial_number: d.serial_number,
            slot: i,
            flush_hint: d.flush_hint.then_some(0xfe00_0000 + i as u64 * 4096),
        });
    }
    PlatformDesc {
        num_cpus,
        ioapic: IoApicDesc {
            id: p.ioapic_id,
            address: if raw {
                p.ioapic_address
            } else {
                IoApicDesc::default().address
            },
            gsi_base: 0,
        },
        serial,
        power: PowerDesc {
            sleep_control_port: p.power.0,
            sleep_status_port: p.power.1,
            reset_port: p.power.2,
            reset_value: p.power.3,
            power_button_gsi: p.power_button_gsi.map(|g| {
                if raw {
                    u32::from(g)
                } else {
                    u32::from(g) % 24
                }
            }),
        },
        nvdimms,
        ram,
        nvdimm_hotplug: p.nvdimm_hotplug.map(|(addr, room, gsi)| NvdimmHotplugDesc {
            fit_addr: u64::from(addr) << 12,
            fit_max: u32::from(room) << 12,
            gsi: if raw {
                u32::from(gsi)
            } else {
                u32::from(gsi) % 24
            },
            eject: None,
        }),
        nvdimm_dsm: p.nvdimm_dsm.map(|(page, port)| acpi::NvdimmDsmDesc {
            page_addr: u64::from(page) << 12,
            doorbell_port: port,
            health_events: p.health_events.map(|(gsi, port)| acpi::HealthEventsDesc {
                gsi: if raw {
                    u32::from(gsi)
                } else {
                    u32::from(gsi) % 24
                },
                port,
            }),
        }),
    }
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

/// What every blob the builders return must satisfy: the RSDP at offset 0 with both checksums
/// zero and pointing at the XSDT; every table inside the blob, its header length equal to its
/// size, its checksum zero.
pub fn check_tables(t: &AcpiTables) {
    assert!(t.bytes.len() <= ACPI_MAX, "blob larger than its room");
    assert_eq!(&t.bytes[..8], b"RSD PTR ");
    assert_eq!(checksum(&t.bytes[..20]), 0, "RSDP checksum");
    assert_eq!(checksum(&t.bytes[..36]), 0, "RSDP extended checksum");
    let xsdt = u64::from_le_bytes(t.bytes[24..32].try_into().expect("8 bytes"));
    let xsdt_info = t
        .tables
        .iter()
        .find(|i| &i.signature == b"XSDT")
        .expect("an XSDT");
    assert_eq!(
        xsdt,
        t.base + xsdt_info.offset as u64,
        "RSDP points at the XSDT"
    );
    for info in &t.tables {
        let table = &t.bytes[info.offset..info.offset + info.len];
        assert_eq!(&table[..4], &info.signature);
        let len = u32::from_le_bytes(table[4..8].try_into().expect("4 bytes")) as usize;
        assert_eq!(len, info.len, "{:?} header length", info.signature);
        assert_eq!(checksum(table), 0, "{:?} checksum", info.signature);
    }
}
