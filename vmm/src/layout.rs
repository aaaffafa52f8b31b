//! Step 3 of a run: where things live in guest physical memory.
//!
//! Low memory (below 1 MiB) holds the boot structures at fixed addresses, the way PC firmware
//! leaves them; RAM fills the rest up to the 32-bit MMIO hole at 3 GiB and continues at 4 GiB.
//! Everything here is a pure function of the configuration, so it is unit-tested without KVM.

pub use geometry::{GIB, KIB, MIB, PAGE_SIZE};

/// Guest RAM stops at 3 GiB below 4 GiB and continues at 4 GiB; the hole holds the IOAPIC and
/// local APIC windows and the flush hints.
pub use geometry::{MMIO_HOLE_END, MMIO_HOLE_START};

/// Largest guest RAM we accept; far below the 46-bit physical address width KVM guarantees.
pub const MAX_RAM: u64 = 1 << 40;

/// Global descriptor table used for both boot protocols.
pub const GDT_ADDR: u64 = 0x500;
/// PVH `hvm_start_info`, followed by its module list and memory map.
pub const PVH_INFO_ADDR: u64 = 0x6000;
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
pub const PVH_MEMMAP_ADDR: u64 = 0x6080;
/// Most entries of the memory map we hand over: low RAM, the ACPI area, two RAM regions and
/// one legacy persistent-memory range per device. The PVH copy (24 bytes an entry) must end
/// below the zero page; the zero page's own table has room for 128.
pub const E820_MAX_ENTRIES: usize = 4 + geometry::MAX_PMEM_DEVICES;
/// Linux's zero page (`struct boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// The boot stack grows down from here (below the page tables).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapped page tables for the 64-bit entry: PML4, one PDPT, four page directories of
/// 2 MiB pages covering the first 4 GiB.
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
pub const IDENTITY_MAPPED_GIB: u64 = 4;
/// Kernel command line; Linux on x86 reads at most 2048 bytes (COMMAND_LINE_SIZE).
pub const CMDLINE_ADDR: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// End of conventional low RAM; above it sits the (unused) EBDA and the legacy ROM area.
pub const LOW_RAM_END: u64 = 0x9fc00;
/// ACPI tables live in the BIOS ROM area Linux scans for the RSDP.
pub const ACPI_ADDR: u64 = 0xe0000;
pub const ACPI_MAX_SIZE: usize = 0x20000;
/// The FIT buffer for NVDIMM hot-add (`acpi::NvdimmHotplugDesc`): the last 16 KiB of the
/// reserved ACPI area, a u32 byte count and then the current NFIT structures, which the DSDT's
/// `_FIT` returns. The tables take the area below it.
pub const FIT_ADDR: u64 = 0xfc000;
pub const FIT_MAX: u32 = 0x4000 - 4;
/// The NVDIMM `_DSM` mailbox page (`acpi::NvdimmDsmDesc`, `devices::nvdimm_dsm`): the page
/// below the FIT buffer, in the reserved ACPI area, so the guest never uses it as RAM. The
/// tables take the area below it.
pub const DSM_PAGE_ADDR: u64 = FIT_ADDR - geometry::dsm_mailbox::PAGE_SIZE;
pub const ACPI_TABLES_MAX_SIZE: usize = (DSM_PAGE_ADDR - ACPI_ADDR) as usize;
const _: () = assert!(acpi::MAX_FIT_LEN <= FIT_MAX as usize);
const _: () = assert!(FIT_ADDR + 4 + FIT_MAX as u64 == ACPI_ADDR + ACPI_MAX_SIZE as u64);
/// Where bzImage and vmlinux kernels are loaded ("high memory" in the boot protocol).
pub const HIMEM_START: u64 = 0x100000;

/// Local APIC and IOAPIC, both inside the MMIO hole.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// NFIT flush hints, one 4 KiB MMIO page per pmem device, below the IOAPIC.
pub const FLUSH_HINT_BASE: u64 = 0xfe00_0000;
/// KVM needs three pages for the TSS and one for the EPT identity map, somewhere no RAM is.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// A guest RAM region: (guest physical start, length in bytes).
pub type Region = (u64, u64);

/// Guest RAM as KVM memory slots: one region below the MMIO hole, and one above 4 GiB holding
/// whatever did not fit below it.
pub fn ram_regions(memory: u64) -> Vec<Region> {
    let low = memory.min(MMIO_HOLE_START);
    let mut regions = vec![(0, low)];
    if memory > low {
        regions.push((MMIO_HOLE_END, memory - low));
    }
    regions
}

/// E820 memory types used in the map we give the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum E820Kind {
    Ram = 1,
    Reserved = 2,
    /// `E820_TYPE_PRAM`: legacy persistent memory, what the kernel's `memmap=ss!nn` makes and
    /// its `nd_e820` driver turns into one region per range (`--pmem ...,firmware=e820`).
    Pmem = 12,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Kind,
}

/// The memory map for the guest: RAM except where boot firmware would keep its data, then the
/// legacy persistent-memory ranges (`legacy_pmem`, windows of `firmware=e820` devices, above
/// RAM). The ACPI area is reserved so the kernel never allocates over the tables it still has
/// to parse.
pub fn e820_map(memory: u64, legacy_pmem: &[Region]) -> Vec<E820Entry> {
    let entry = |addr, size, kind| E820Entry { addr, size, kind };
    let mut map = vec![
        entry(0, LOW_RAM_END, E820Kind::Ram),
        entry(ACPI_ADDR, ACPI_MAX_SIZE as u64, E820Kind::Reserved),
    ];
    for (start, len) in ram_regions(memory) {
        let end = start + len;
        let start = start.max(HIMEM_START);
        if end > start {
            map.push(entry(start, end - start, E820Kind::Ram));
        }
    }
    let mut pmem: Vec<E820Entry> = legacy_pmem
        .iter()
        .map(|&(addr, size)| entry(addr, size, E820Kind::Pmem))
        .collect();
    pmem.sort_by_key(|e| e.addr);
    map.extend(pmem);
    map
}

/// Highest guest address (exclusive) of RAM that a 32-bit consumer such as the initramfs loader
/// can use: the end of the region below the hole.
pub fn low_ram_end(memory: u64) -> u64 {
    memory.min(MMIO_HOLE_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_region() {
        assert_eq!(ram_regions(256 * MIB), vec![(0, 256 * MIB)]);
        assert_eq!(ram_regions(3 * GIB), vec![(0, 3 * GIB)]);
    }

    #[test]
    fn large_guest_splits_around_the_hole() {
        let r = ram_regions(3584 * MIB);
        assert_eq!(r, vec![(0, 3 * GIB), (4 * GIB, 512 * MIB)]);
        assert_eq!(r.iter().map(|x| x.1).sum::<u64>(), 3584 * MIB);
        for (start, len) in ram_regions(64 * GIB) {
            let end = start + len;
            assert!(end <= MMIO_HOLE_START || start >= MMIO_HOLE_END);
        }
    }

    #[test]
    fn e820_covers_ram_but_not_boot_areas() {
        let map = e820_map(3584 * MIB, &[]);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820Kind::Ram)
            .map(|e| e.size)
            .sum();
        // All RAM except the 0x9fc00..1 MiB window.
        assert_eq!(ram, 3584 * MIB - (HIMEM_START - LOW_RAM_END));
        assert!(map
            .iter()
            .any(|e| e.kind == E820Kind::Reserved && e.addr == ACPI_ADDR));
        // The FIT buffer and the _DSM page are in the reserved ACPI area.
        for (addr, len) in [
            (FIT_ADDR, 4 + u64::from(FIT_MAX)),
            (DSM_PAGE_ADDR, geometry::dsm_mailbox::PAGE_SIZE),
        ] {
            assert!(addr >= ACPI_ADDR && addr + len <= ACPI_ADDR + ACPI_MAX_SIZE as u64);
        }
        for e in &map {
            assert!(e.addr + e.size <= MMIO_HOLE_START || e.addr >= MMIO_HOLE_END);
        }
        assert_eq!(map.last().unwrap().addr, 4 * GIB);
    }

    /// The largest tables the monitor can be asked for (254 CPUs, 64 DIMMs on NUMA nodes with
    /// flush hints, hot-add, the `_DSM` mailbox) fit below the `_DSM` page.
    #[test]
    fn largest_tables_fit_below_the_dsm_page() {
        let nvdimms = (0..acpi::MAX_NVDIMMS)
            .map(|i| acpi::NvdimmDesc {
                base: 4 * GIB + i as u64 * GIB,
                size: GIB,
                proximity_domain: Some(1),
                readonly: false,
                serial_number: i as u32 + 1,
                slot: i,
                flush_hint: Some(FLUSH_HINT_BASE + i as u64 * PAGE_SIZE),
            })
            .collect();
        let desc = acpi::PlatformDesc {
            num_cpus: acpi::MAX_CPUS,
            ioapic: Default::default(),
            serial: vec![acpi::SerialDesc::COM1],
            power: acpi::PowerDesc {
                power_button_gsi: Some(5),
                ..Default::default()
            },
            nvdimms,
            ram: ram_regions(3 * GIB),
            nvdimm_hotplug: Some(acpi::NvdimmHotplugDesc {
                fit_addr: FIT_ADDR,
                fit_max: FIT_MAX,
                gsi: 6,
                eject: Some(acpi::NvdimmEjectDesc {
                    port: geometry::nvdimm_eject::PORT,
                    gsi: 7,
                }),
            }),
            nvdimm_dsm: Some(acpi::NvdimmDsmDesc {
                page_addr: DSM_PAGE_ADDR,
                doorbell_port: geometry::dsm_mailbox::DOORBELL_PORT,
                health_events: Some(acpi::HealthEventsDesc {
                    gsi: 10,
                    port: geometry::nvdimm_events::PORT,
                }),
            }),
        };
        let t = acpi::build_tables(&desc, ACPI_ADDR, ACPI_TABLES_MAX_SIZE).unwrap();
        assert!(t.bytes.len() <= ACPI_TABLES_MAX_SIZE);
    }

    #[test]
    fn legacy_pmem_ranges_follow_ram_in_address_order() {
        let map = e820_map(512 * MIB, &[(6 * GIB, GIB), (4 * GIB, GIB)]);
        let pmem: Vec<(u64, u64)> = map
            .iter()
            .filter(|e| e.kind == E820Kind::Pmem)
            .map(|e| (e.addr, e.size))
            .collect();
        assert_eq!(pmem, vec![(4 * GIB, GIB), (6 * GIB, GIB)]);
        assert_eq!(map.len(), 5);
        assert_eq!(E820Kind::Pmem as u32, 12);
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        let areas = [
            (GDT_ADDR, 0x40),
            (
                PVH_INFO_ADDR,
                PVH_MEMMAP_ADDR + E820_MAX_ENTRIES as u64 * 24 - PVH_INFO_ADDR,
            ),
            (ZERO_PAGE_ADDR, PAGE_SIZE),
            (PML4_ADDR, PAGE_SIZE),
            (PDPT_ADDR, PAGE_SIZE),
            (PD_ADDR, IDENTITY_MAPPED_GIB * PAGE_SIZE),
            (CMDLINE_ADDR, CMDLINE_MAX_SIZE as u64),
            (ACPI_ADDR, ACPI_TABLES_MAX_SIZE as u64),
            (DSM_PAGE_ADDR, geometry::dsm_mailbox::PAGE_SIZE),
            (FIT_ADDR, 4 + u64::from(FIT_MAX)),
        ];
        for (i, a) in areas.iter().enumerate() {
            for b in &areas[i + 1..] {
                assert!(a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0, "{a:x?} vs {b:x?}");
            }
        }
        const {
            assert!(BOOT_STACK_POINTER < PML4_ADDR);
            assert!(BOOT_STACK_POINTER > ZERO_PAGE_ADDR + PAGE_SIZE);
            assert!(PD_ADDR + IDENTITY_MAPPED_GIB * PAGE_SIZE <= LOW_RAM_END);
        }
    }
}

/// A KASLR guest sizes its direct map as the RAM it booted with plus this padding for hotplug
/// (CONFIG_RANDOMIZE_MEMORY_PHYSICAL_PADDING, 10 TiB by default); pmem above it is unreachable
/// (cloud-hypervisor issue 8191).
pub use geometry::KASLR_PADDING;
/// Linux hotplugs memory (and maps pmem with struct pages) in 128 MiB sections on x86-64; a
/// window that shares a section with another fails to come up (ndctl issue 76).
pub use geometry::MEMORY_SECTION_SIZE as PMEM_WINDOW_ALIGN;
/// Namespace sizes are a multiple of this (the backings are checked to be) so the guest can map
/// them with 2 MiB pages.
pub use geometry::PMEM_SIZE_GRANULE as PMEM_SIZE_ALIGN;

/// One device's guest-physical window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PmemWindow {
    pub base: u64,
    pub size: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PmemLayoutError {
    #[error("the device does not fit: its window would end at {end:#x}, above {limit:#x}, the highest guest address this guest can map ({reason})")]
    TooHigh {
        index: usize,
        end: u64,
        limit: u64,
        reason: &'static str,
    },
}

impl PmemLayoutError {
    /// Which device (in command-line order) the error is about.
    pub fn index(&self) -> usize {
        match self {
            PmemLayoutError::TooHigh { index, .. } => *index,
        }
    }
}

/// End of guest RAM (exclusive), which is where pmem windows may start.
pub fn ram_end(memory: u64) -> u64 {
    ram_regions(memory)
        .last()
        .map(|(start, len)| start + len)
        .unwrap_or(0)
}

/// What the layout needs to know about one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PmemSpan {
    pub size: u64,
    /// The device's mapping alignment (`align=`, or a device-dax's own), 0 when none. A window
    /// starts on a multiple of the larger of this and 128 MiB: with `align=1G` the guest maps
    /// the namespace with 1 GiB pages, which needs the data on 1 GiB guest-physical boundaries
    /// (an info block's data offset is relative to the window's start), and KVM can back the
    /// range with 1 GiB host pages only when guest and host addresses agree modulo 1 GiB.
    pub align: u64,
    /// A legacy E820 range (`firmware=e820`). Linux merges adjacent E820 entries of one type
    /// into one, so two such windows never touch: the second starts a section later.
    pub legacy_e820: bool,
}

impl PmemSpan {
    fn window_align(&self) -> u64 {
        if self.align.is_power_of_two() {
            self.align.max(PMEM_WINDOW_ALIGN)
        } else {
            PMEM_WINDOW_ALIGN
        }
    }
}

/// Places one window per device above RAM and the MMIO hole, bottom-up, each on a 128 MiB
/// boundary so no two devices share a memory section, and on a 1 GiB boundary for a device with
/// 1 GiB alignment (see [`PmemSpan::align`]). `phys_limit` is the first guest physical address
/// the guest's CPU cannot address (from its CPUID physical address width).
pub fn place_pmem(
    memory: u64,
    devices: &[PmemSpan],
    phys_limit: u64,
) -> Result<Vec<PmemWindow>, PmemLayoutError> {
    place_pmem_from(memory, 0, devices, phys_limit)
}

/// As [`place_pmem`], with the first window at or above `start` too: a device hot-added to a
/// running guest goes above the windows in use (`start` = the end of the highest one), by the
/// same rules and limits.
pub fn place_pmem_from(
    memory: u64,
    start: u64,
    devices: &[PmemSpan],
    phys_limit: u64,
) -> Result<Vec<PmemWindow>, PmemLayoutError> {
    let ram_top = ram_end(memory);
    let kaslr_limit = ram_top.saturating_add(KASLR_PADDING);
    let (limit, reason) = if phys_limit <= kaslr_limit {
        (phys_limit, "the CPU's physical address width")
    } else {
        (
            kaslr_limit,
            "RAM plus the 10 TiB a KASLR kernel leaves for hotplug",
        )
    };
    let mut next = ram_top.max(MMIO_HOLE_END).max(start);
    let mut windows = Vec::with_capacity(devices.len());
    // Where the last legacy E820 window ended.
    let mut e820_end = None;
    for (index, span) in devices.iter().enumerate() {
        let size = span.size;
        // Backings are opened only when their size is a non-zero multiple of the granule.
        debug_assert!(
            size > 0 && size.is_multiple_of(PMEM_SIZE_ALIGN),
            "size {size}"
        );
        let align = span.window_align();
        let mut base = next.div_ceil(align).saturating_mul(align);
        if span.legacy_e820 && e820_end == Some(base) {
            base = base.saturating_add(align);
        }
        let end = base.saturating_add(size);
        if end > limit {
            return Err(PmemLayoutError::TooHigh {
                index,
                end,
                limit,
                reason,
            });
        }
        windows.push(PmemWindow { base, size });
        if span.legacy_e820 {
            e820_end = Some(end);
        }
        next = end;
    }
    Ok(windows)
}

#[cfg(test)]
mod pmem_tests {
    use super::*;

    const LIMIT: u64 = 1 << 46;

    fn spans(sizes: &[u64]) -> Vec<PmemSpan> {
        sizes
            .iter()
            .map(|&size| PmemSpan {
                size,
                align: 0,
                legacy_e820: false,
            })
            .collect()
    }

    #[test]
    fn align_1g_devices_start_on_1g_boundaries() {
        let m = MIB;
        let w = place_pmem(
            256 * m,
            &[
                PmemSpan {
                    size: 130 * m,
                    align: 2 * m,
                    legacy_e820: false,
                },
                PmemSpan {
                    size: 2 * GIB,
                    align: GIB,
                    legacy_e820: false,
                },
                PmemSpan {
                    size: 64 * m,
                    align: 4 * KIB,
                    legacy_e820: false,
                },
                PmemSpan {
                    size: GIB,
                    align: GIB,
                    legacy_e820: false,
                },
            ],
            LIMIT,
        )
        .unwrap();
        assert_eq!(w[0].base, 4 * GIB);
        // 4 GiB + 130 MiB would be 4 GiB + 256 MiB on the 128 MiB rule; 1 GiB alignment: 5 GiB.
        assert_eq!(w[1].base, 5 * GIB);
        assert_eq!(w[2].base, 7 * GIB);
        assert_eq!(w[3].base, 8 * GIB);
        for (x, a) in w.iter().zip([2 * m, GIB, 4 * KIB, GIB]) {
            assert_eq!(x.base % a.max(PMEM_WINDOW_ALIGN), 0, "{x:x?}");
        }
        // Above RAM that ends off a 1 GiB boundary.
        let w = place_pmem(
            3584 * m,
            &[PmemSpan {
                size: GIB,
                align: GIB,
                legacy_e820: false,
            }],
            LIMIT,
        )
        .unwrap();
        assert_eq!(w[0].base, 5 * GIB);
    }

    #[test]
    fn windows_start_above_ram_on_section_boundaries() {
        let w = place_pmem(256 * MIB, &spans(&[130 * MIB, GIB, 4 * GIB]), LIMIT).unwrap();
        assert_eq!(
            w[0],
            PmemWindow {
                base: 4 * GIB,
                size: 130 * MIB
            }
        );
        // 4 GiB + 130 MiB rounds up to the next 128 MiB section.
        assert_eq!(w[1].base, 4 * GIB + 256 * MIB);
        assert_eq!(w[2].base, 4 * GIB + 256 * MIB + GIB);
        for pair in w.windows(2) {
            assert!(pair[0].base + pair[0].size <= pair[1].base);
        }
        for x in &w {
            assert_eq!(x.base % PMEM_WINDOW_ALIGN, 0);
        }
    }

    #[test]
    fn windows_follow_high_ram() {
        let w = place_pmem(3584 * MIB, &spans(&[2 * MIB]), LIMIT).unwrap();
        assert_eq!(w[0].base, 4 * GIB + 512 * MIB);
        let w = place_pmem(4 * GIB + 4 * KIB, &spans(&[2 * MIB]), LIMIT).unwrap();
        assert_eq!(w[0].base, 5 * GIB + 128 * MIB);
    }

    #[test]
    fn limits_are_enforced() {
        // A 40-bit guest (1 TiB) cannot take a 1 TiB device above 4 GiB.
        let e = place_pmem(GIB, &spans(&[1 << 40]), 1 << 40).unwrap_err();
        assert!(
            matches!(e, PmemLayoutError::TooHigh { index: 0, .. }),
            "{e}"
        );
        // The KASLR padding bounds a 48-bit guest.
        let e = place_pmem(GIB, &spans(&[11 << 40]), 1 << 48).unwrap_err();
        assert!(e.to_string().contains("KASLR"), "{e}");
        assert!(place_pmem(GIB, &spans(&[1 << 40]), 1 << 46).is_ok());
        // 32 devices of 1 GiB fit easily.
        let w = place_pmem(GIB, &spans(&[GIB; 32]), LIMIT).unwrap();
        assert_eq!(w.len(), 32);
    }

    #[test]
    fn legacy_e820_windows_never_touch() {
        let span = |legacy_e820| PmemSpan {
            size: 128 * MIB,
            align: 0,
            legacy_e820,
        };
        // e820, e820: a section apart; nfit after e820 and e820 after nfit: adjacent.
        let w = place_pmem(
            256 * MIB,
            &[span(true), span(true), span(false), span(true)],
            LIMIT,
        )
        .unwrap();
        let bases: Vec<u64> = w.iter().map(|w| w.base).collect();
        let g = 4 * GIB;
        assert_eq!(
            bases,
            vec![g, g + 256 * MIB, g + 384 * MIB, g + 512 * MIB],
            "{bases:#x?}"
        );
    }
}
