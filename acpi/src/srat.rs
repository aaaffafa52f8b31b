//! SRAT, the System Resource Affinity Table (ACPI 6.x §5.2.16), revision 3.
//!
//! Emitted only when some NVDIMM has a proximity domain ([`PlatformDesc::needs_srat`]): the
//! NFIT's SPA range names the domain, but Linux's `pxm_to_node()` returns `NUMA_NO_NODE` for
//! every domain that no SRAT declared. The table holds, in this order:
//!
//! 1. one Processor Local APIC/SAPIC Affinity structure (type 0, 16 bytes) per CPU: APIC id
//!    `i` (as in the MADT), proximity domain 0, enabled;
//! 2. one Memory Affinity structure (type 1, 40 bytes) per [`PlatformDesc::ram`] region:
//!    domain 0, enabled;
//! 3. one Memory Affinity structure per NVDIMM covering its whole SPA window: its domain (0
//!    when it has none), enabled | non-volatile. These come sorted by domain (ties in NVDIMM
//!    order), so that guest node ids grow with the domain (see "Node numbering").
//!
//! No hot-pluggable flag on the NVDIMM entries. QEMU's `nvdimm_build_srat()`
//! (hw/acpi/nvdimm.c) sets exactly `MEM_AFFINITY_ENABLED | MEM_AFFINITY_NON_VOLATILE`; it
//! claims hot-plug only in a separate entry for its memory-hotplug window, which we do not
//! have. Our NVDIMMs cannot be hot-added or removed, and in Linux 6.12 the bit would only call
//! `memblock_mark_hotplug()` on a range that is not in `memblock.memory` (a no-op) and add
//! " hotplug" to the boot log line.
//! No SLIT, no HMAT, no zero-length padding entries (QEMU keeps those only for "some ancient
//! guest OS").
//!
//! # What Linux 6.12 (x86_64) makes of it
//!
//! Checked against drivers/acpi/numa/srat.c, arch/x86/mm/srat.c, arch/x86/mm/numa.c,
//! mm/numa_memblks.c, mm/mm_init.c, mm/mempolicy.c and drivers/acpi/nfit/core.c.
//!
//! * **Parsing** (`acpi_numa_init()`): a first pass over the CPU structures calls
//!   `acpi_numa_processor_affinity_init()`, which calls `bad_srat()` (ignore the whole SRAT)
//!   unless the length is exactly 16, skips disabled entries, reads the domain as
//!   `lo | hi << 8` (revision >= 2) and records APIC id -> node. A second pass over the Memory
//!   Affinity structures (length >= 40, enabled; full 32-bit domain because revision > 1) calls
//!   `numa_add_memblk(node, base, base + length)` and puts the node in `numa_nodes_parsed`.
//! * **Node numbering**: `acpi_map_pxm_to_node()` gives each new domain the lowest unused
//!   node id, in the order the domains first appear. The CPU structures come first, so domain 0
//!   is node 0; the NVDIMM entries are sorted by domain, so node ids follow the domains'
//!   order: domains {0, 1, 2} become nodes {0, 1, 2}, but a lone `numa=5` becomes node 1. sysfs
//!   and numactl show node ids, never domains.
//! * **Memory** (`numa_memblks_init()` -> `numa_cleanup_meminfo()`): every block that does not
//!   overlap `memblock.memory` (E820 RAM) moves to `numa_reserved_meminfo`. The pmem windows
//!   are not E820 RAM, so every NVDIMM block lands there, whatever its domain; the RAM blocks
//!   stay, and the node-0 blocks below and above the MMIO hole merge into one.
//!   `numa_register_meminfo()` assigns all of `memblock.memory` to node 0 and makes every
//!   parsed node possible; `numa_register_nodes()` requires all but 1 MiB of RAM to have a node
//!   (`memblock_validate_numa_coverage()`, hence `ram` must cover all E820 RAM) and brings
//!   online only nodes with memory: node 0. `init_cpu_to_node()` puts every CPU on node 0.
//!   The NVDIMM nodes stay possible but offline (`/sys/devices/system/node/possible` = `0-N`,
//!   `online` = `0`); `free_area_init()` gives them a `pg_data_t` through
//!   `alloc_offline_node_data()`, so memory can be hot-added to them later.
//! * **Lookups**: `pxm_to_node(domain)` returns the NVDIMM's node. `phys_to_target_node(addr)`
//!   (needs `CONFIG_NUMA_KEEP_MEMINFO`, selected by `MEMORY_HOTPLUG` and `X86_PMEM_LEGACY`)
//!   finds the address only in `numa_reserved_meminfo` and returns that node too.
//! * **NFIT regions** (`acpi_nfit_register_region()`), for a SPA with a valid domain:
//!   `numa_node = pxm_to_online_node(domain)` = `numa_nearest_node(node, N_ONLINE)`: node 0,
//!   the only online node; `target_node = pxm_to_node(domain)`: the NVDIMM's node. So
//!   `/sys/bus/nd/devices/regionX/numa_node` shows 0 (namespaces inherit it in
//!   `__nd_device_register()`; the pmem disk and the ZONE_DEVICE pages of fsdax/devdax are
//!   allocated on it), while `regionX/target_node` shows the NVDIMM's node, which is where
//!   dax kmem (`daxctl reconfigure-device --mode=system-ram`) adds the memory, bringing that
//!   node online as a CPU-less memory node. A SPA without a domain (one `--pmem` with
//!   `numa=`, another without) falls back to `memory_add_physaddr_to_nid()` = node 0 and
//!   `phys_to_target_node()` = node 0 (its SRAT entry is in domain 0).
//!
//! Requirements and non-requirements:
//!
//! * **No SLIT needed.** Without one `node_distance()` is 10 (local) / 20 (remote), which is
//!   all `numa_nearest_node()` needs; `acpi_parse_slit()` is optional.
//! * **A domain without CPUs or RAM needs nothing else** (no Generic Initiator structure, no
//!   `_PXM`): its Memory Affinity structure alone makes the node possible.
//! * **Guest kernel**: `CONFIG_NUMA` and `CONFIG_X86_64_ACPI_NUMA` (default y, but depends on
//!   `CONFIG_PCI`) to read the SRAT at all; `CONFIG_NUMA_KEEP_MEMINFO` for
//!   `phys_to_target_node()`. guest-kernel/config-fragment has all of them. A guest booted with
//!   `numa=off` gets `NUMA_NO_NODE` from `pxm_to_node()` and ignores the SRAT.
//! * **Limits**: at most `MAX_NUMNODES` distinct domains (64 with x86_64's default
//!   `NODES_SHIFT` 6), at most `NR_NODE_MEMBLKS` = 2 * `MAX_NUMNODES` Memory Affinity entries
//!   (128: RAM regions plus NVDIMMs; 2 + the monitor's 64 fit), domains below
//!   `MAX_PXM_DOMAINS` (>= 256, enforced as [`crate::MAX_PROXIMITY_DOMAIN`]). Beyond any of
//!   them Linux logs "Too many proximity domains" or "Failed to add memblk" and drops the
//!   whole SRAT.
//! * **Side effect**: every enabled Memory Affinity structure raises `max_possible_pfn` to its
//!   end. With pmem above 4 GiB, `pci_swiotlb_detect()` then enables SWIOTLB, i.e. a 64 MiB
//!   bounce buffer, in a guest that has no RAM above 4 GiB (at most 3 GiB of RAM; bigger guests
//!   have it anyway). Virtio devices without `VIRTIO_F_ACCESS_PLATFORM` never bounce; the guest
//!   can reclaim the memory with `swiotlb=noforce`.

use crate::desc::PlatformDesc;
use crate::sdt::{new_table, Le};

pub const SIGNATURE: [u8; 4] = *b"SRAT";
/// Revision 3 (ACPI 5.0+): Linux reads the full 32-bit proximity domains from revision 2 on
/// (revision 1 keeps only the low 8 bits).
const REVISION: u8 = 3;
/// Header (36) + Table Revision (4, "must be 1") + Reserved (8).
const HEADER_LEN: u32 = 48;
const TABLE_REVISION: u32 = 1;

const TYPE_CPU_AFFINITY: u8 = 0;
const TYPE_MEMORY_AFFINITY: u8 = 1;
/// `acpi_numa_processor_affinity_init()` rejects any other length.
const CPU_AFFINITY_LEN: u8 = 16;
/// `acpi_parse_memory_affinity()` rejects anything shorter.
const MEMORY_AFFINITY_LEN: u8 = 40;

/// Processor affinity flag bit 0 (`ACPI_SRAT_CPU_ENABLED`).
const CPU_ENABLED: u32 = 1;
/// Memory affinity flag bit 0 (`ACPI_SRAT_MEM_ENABLED`).
const MEM_ENABLED: u32 = 1;
/// Memory affinity flag bit 2 (`ACPI_SRAT_MEM_NON_VOLATILE`). Bit 1 (hot-pluggable) is never
/// set; see the module docs.
const MEM_NON_VOLATILE: u32 = 1 << 2;

/// The domain of every CPU, every RAM region and every NVDIMM without `numa=`.
const DEFAULT_DOMAIN: u32 = 0;

/// The complete SRAT for `desc` (validated).
pub(crate) fn build(desc: &PlatformDesc) -> Vec<u8> {
    let mut table = new_table(SIGNATURE, HEADER_LEN, REVISION);
    table.write_u32(36, TABLE_REVISION);
    // Bytes 40..48 stay zero (reserved).

    for cpu in 0..desc.num_cpus {
        // validate() caps num_cpus at 254, so the id fits the 8-bit APIC id field.
        table.append_slice(cpu_affinity(cpu as u8, DEFAULT_DOMAIN).as_slice());
    }
    for &(start, len) in &desc.ram {
        table.append_slice(memory_affinity(start, len, DEFAULT_DOMAIN, MEM_ENABLED).as_slice());
    }
    let mut nvdimms: Vec<_> = desc.nvdimms.iter().collect();
    // Stable: equal domains keep the NVDIMM order.
    nvdimms.sort_by_key(|d| d.proximity_domain.unwrap_or(DEFAULT_DOMAIN));
    for d in nvdimms {
        let domain = d.proximity_domain.unwrap_or(DEFAULT_DOMAIN);
        let flags = MEM_ENABLED | MEM_NON_VOLATILE;
        table.append_slice(memory_affinity(d.base, d.size, domain, flags).as_slice());
    }
    table.as_slice().to_vec()
}

/// Type 0: the CPU with `apic_id` (= ACPI processor UID in our MADT) belongs to `domain`.
fn cpu_affinity(apic_id: u8, domain: u32) -> Le {
    let [d0, d1, d2, d3] = domain.to_le_bytes();
    let mut w = Le::default();
    w.u8(TYPE_CPU_AFFINITY)
        .u8(CPU_AFFINITY_LEN)
        .u8(d0) // Proximity Domain [7:0]
        .u8(apic_id)
        .u32(CPU_ENABLED)
        .u8(0) // Local SAPIC EID (IA-64 only)
        .bytes(&[d1, d2, d3]) // Proximity Domain [31:8]
        .u32(0); // Clock Domain
    debug_assert_eq!(w.len(), usize::from(CPU_AFFINITY_LEN));
    w
}

/// Type 1: guest-physical range `[base, base + len)` belongs to `domain`.
fn memory_affinity(base: u64, len: u64, domain: u32, flags: u32) -> Le {
    let mut w = Le::default();
    w.u8(TYPE_MEMORY_AFFINITY)
        .u8(MEMORY_AFFINITY_LEN)
        .u32(domain)
        .u16(0) // reserved
        .u64(base) // Base Address Low, High
        .u64(len) // Length Low, High
        .u32(0) // reserved
        .u32(flags)
        .u64(0); // reserved
    debug_assert_eq!(w.len(), usize::from(MEMORY_AFFINITY_LEN));
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structure_lengths_match_linux() {
        // include/acpi/actbl3.h: acpi_table_srat 48, acpi_srat_cpu_affinity 16,
        // acpi_srat_mem_affinity 40.
        assert_eq!(cpu_affinity(0, 0).len(), 16);
        assert_eq!(memory_affinity(0, 1 << 30, 0, MEM_ENABLED).len(), 40);
    }

    #[test]
    fn cpu_affinity_fields() {
        let w = cpu_affinity(7, 0x0403_0201);
        assert_eq!(
            w.as_slice(),
            &[0, 16, 0x01, 7, 1, 0, 0, 0, 0, 0x02, 0x03, 0x04, 0, 0, 0, 0]
        );
    }

    #[test]
    fn memory_affinity_fields() {
        let w = memory_affinity(
            0x1_2345_6000,
            0x8000_0000,
            3,
            MEM_ENABLED | MEM_NON_VOLATILE,
        );
        let b = w.as_slice();
        assert_eq!(&b[..2], &[1, 40]);
        assert_eq!(&b[2..6], &3u32.to_le_bytes(), "domain");
        assert_eq!(&b[6..8], &[0, 0], "reserved");
        assert_eq!(&b[8..16], &0x1_2345_6000u64.to_le_bytes(), "base");
        assert_eq!(&b[16..24], &0x8000_0000u64.to_le_bytes(), "length");
        assert_eq!(&b[24..28], &[0; 4], "reserved");
        assert_eq!(&b[28..32], &5u32.to_le_bytes(), "enabled | non-volatile");
        assert_eq!(&b[32..40], &[0; 8], "reserved");
    }
}
