//! What the guest gets of one namespace, as the log line and the `--report` JSON state it.

use std::fmt;

use super::bytes::Bytes;
use super::infoblock::{page_map_footprint, InfoBlock, InfoMode, Layout, MemmapLocation};
use super::options::{AlignName, NsMode};

/// Where a namespace's memmap (its struct pages) lives: the decided `memmap=`, never `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemmapPlacement {
    /// A raw namespace: no struct pages.
    None,
    /// In guest RAM.
    Ram,
    /// In the device's reserve.
    Pmem,
}

impl From<MemmapLocation> for MemmapPlacement {
    fn from(m: MemmapLocation) -> MemmapPlacement {
        match m {
            MemmapLocation::Ram => MemmapPlacement::Ram,
            MemmapLocation::Pmem => MemmapPlacement::Pmem,
        }
    }
}

impl fmt::Display for MemmapPlacement {
    /// As `memmap=` spells it: `none`, `ram` or `pmem`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemmapPlacement::None => "none",
            MemmapPlacement::Ram => "ram",
            MemmapPlacement::Pmem => "pmem",
        })
    }
}

/// What the guest sees of one namespace, and what its memmap costs.
///
/// `capacity` is what the guest kernel derives from the block: for fsdax `pmem_attach_disk()`
/// (`drivers/nvdimm/pmem.c`) sets the `/dev/pmemN` capacity to `size - pfn_pad - data_offset` with
/// `pfn_pad = start_pad + end_trunc`; for devdax `__dax_pmem_probe()` (`drivers/dax/pmem.c`) makes
/// the dax region, and the one `/dev/daxN.M` covering it, `[base + start_pad + dataoff, end -
/// end_trunc)`. Both are [`Layout::data_size`] (also `pfnX.Y/size`). A raw namespace's
/// `/dev/pmemN` is the whole namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceReport {
    /// The personality the guest gives the namespace.
    pub mode: NsMode,
    /// Where its memmap lives.
    pub memmap: MemmapPlacement,
    /// Bytes of struct pages the guest builds for the namespace (in RAM and in the device).
    pub memmap_bytes: u64,
    /// Guest RAM the memmap takes (struct pages and vmemmap page tables).
    pub ram_cost_bytes: u64,
    /// Device bytes reserved for the memmap (`dataoff - 8 KiB` with the memmap in pmem, else 0).
    pub device_reserve_bytes: u64,
    /// Namespace offset of the first guest-visible data byte (0 for raw).
    pub data_offset: u64,
    /// Guest-visible bytes: the `/dev/pmemN` or `/dev/daxN.M` size.
    pub capacity: u64,
    /// Mapping alignment of the block (0 for raw).
    pub align: u64,
    /// `Some(n)`: the DIMM's label area is initialised and holds `n` namespace labels, which
    /// decide the guest's namespaces (`capacity` is then the whole region); the other fields
    /// are those of a raw namespace.
    pub label_namespaces: Option<u32>,
}

impl NamespaceReport {
    /// A raw namespace of `size` bytes: no info block, no memmap.
    pub fn raw(size: u64) -> NamespaceReport {
        NamespaceReport {
            mode: NsMode::Raw,
            memmap: MemmapPlacement::None,
            memmap_bytes: 0,
            ram_cost_bytes: 0,
            device_reserve_bytes: 0,
            data_offset: 0,
            capacity: size,
            align: 0,
            label_namespaces: None,
        }
    }

    /// A region of `size` bytes whose namespaces `labels` namespace labels decide.
    pub fn labelled(size: u64, labels: u32) -> NamespaceReport {
        NamespaceReport {
            label_namespaces: Some(labels),
            ..NamespaceReport::raw(size)
        }
    }

    /// A raw namespace at guest physical `base` on a region Linux maps with struct pages (a
    /// legacy E820 range): no info block, but the kernel builds the whole namespace's memmap in
    /// RAM ([`page_map_footprint`]).
    pub fn raw_with_memmap_in_ram(base: u64, size: u64) -> NamespaceReport {
        let fp = page_map_footprint(base, size);
        NamespaceReport {
            memmap: MemmapPlacement::Ram,
            memmap_bytes: fp.ram_bytes,
            ram_cost_bytes: fp.ram_total(),
            ..NamespaceReport::raw(size)
        }
    }

    /// What the guest makes of namespace layout `l` of block `b`.
    pub fn block(b: &InfoBlock, l: &Layout) -> NamespaceReport {
        NamespaceReport {
            mode: match b.mode {
                InfoMode::Fsdax => NsMode::Fsdax,
                InfoMode::Devdax => NsMode::Devdax,
            },
            memmap: b.memmap.into(),
            memmap_bytes: l.memmap.ram_bytes + l.memmap.device_bytes,
            ram_cost_bytes: l.memmap.ram_total(),
            device_reserve_bytes: l.memmap.device_reserve_bytes,
            data_offset: l.data_offset,
            capacity: l.data_size,
            align: b.align(),
            label_namespaces: None,
        }
    }
}

impl fmt::Display for NamespaceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(n) = self.label_namespaces {
            return write!(
                f,
                "labelled region of {}, namespaces as its {n} namespace labels say",
                Bytes(self.capacity)
            );
        }
        if self.mode == NsMode::Raw {
            return match self.memmap {
                MemmapPlacement::None => {
                    write!(f, "raw, no memmap, capacity {}", Bytes(self.capacity))
                }
                _ => write!(
                    f,
                    "raw, memmap in {} without an info block ({} of struct pages: {} of guest \
                     RAM), capacity {}",
                    self.memmap,
                    Bytes(self.memmap_bytes),
                    Bytes(self.ram_cost_bytes),
                    Bytes(self.capacity)
                ),
            };
        }
        write!(
            f,
            "{}, memmap in {} ({} of struct pages: {} of guest RAM, {} device reserve), \
             align {}, data at offset {:#x}, capacity {}",
            self.mode,
            self.memmap,
            Bytes(self.memmap_bytes),
            Bytes(self.ram_cost_bytes),
            Bytes(self.device_reserve_bytes),
            AlignName(self.align),
            self.data_offset,
            Bytes(self.capacity)
        )
    }
}
