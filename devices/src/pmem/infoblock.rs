//! The pfn / dax info block: Linux's `struct nd_pfn_sb` (`drivers/nvdimm/pfn.h`).
//!
//! A label-less NFIT namespace is a raw block device to the guest until the 4 KiB at namespace
//! offset [`INFO_BLOCK_OFFSET`] hold a valid info block. The block gives the namespace a
//! personality (fsdax `/dev/pmemN` with signature `NVDIMM_PFN_INFO`, or devdax `/dev/daxN.M` with
//! `NVDIMM_DAX_INFO`) and says where the guest keeps the `struct page` array (the memmap) for the
//! namespace: in guest RAM (`PFN_MODE_RAM`) or in a reserved area at the start of the namespace
//! itself (`PFN_MODE_PMEM`, a `struct vmem_altmap`). Writing that block from the host is how the
//! monitor decides the memmap policy for the guest.
//!
//! This module is pure: it turns a request into the exact 4096 bytes and reads them back.
//!
//! * [`InfoBlock::compute`] lays a block out the way the guest kernel's `nd_pfn_init()`
//!   (`drivers/nvdimm/pfn_devs.c`, Linux 6.12) would for the same namespace. For a namespace
//!   base aligned to the mapping alignment this is byte for byte what `ndctl write-infoblock
//!   --offset BASE` writes (`write_pfn_sb()` in ndctl's `ndctl/namespace.c`); see
//!   [`InfoBlock::compute`] for where the two differ and why the kernel wins.
//! * [`InfoBlock::parse`], [`InfoBlock::parse_for`] and [`InfoBlock::validate_for`] reject what
//!   the kernel rejects (`nd_pfn_validate()`, then the enable-time checks in
//!   `__nvdimm_setup_pfn()`, the vmemmap allocator and `alloc_dax_region()`), in the kernel's
//!   order, with an error that names the field, the values and the kernel's own message.
//! * [`InfoBlock::layout`] derives what the guest will see and pay: data offset and capacity, and
//!   the memmap footprint in guest RAM and in the device ([`MemmapFootprint`]).
//!
//! Numbers are those of an x86-64 guest (`PAGE_SIZE` 4 KiB, 128 MiB memory sections, 2 MiB
//! subsections, 64-byte `struct page`, THP and PUD THP available).

use std::fmt;

use thiserror::Error;

/// Namespace offset of the info block: `nd_pfn_validate()` reads `sizeof(struct nd_pfn_sb)` bytes
/// at `SZ_4K`.
pub const INFO_BLOCK_OFFSET: u64 = 4096;
/// `sizeof(struct nd_pfn_sb)` (`BUILD_BUG_ON` in `nd_sb_checksum()`, `drivers/nvdimm/claim.c`).
pub const INFO_BLOCK_SIZE: usize = 4096;
/// `nd_info_block_reserve()` (`drivers/nvdimm/nd.h`): the namespace header the data and the
/// memmap never overlap: 4 KiB unused + the 4 KiB block. The altmap reserves these pages.
pub const INFO_BLOCK_RESERVE: u64 = 8192;
/// The guest's `PAGE_SIZE`.
pub use geometry::PAGE_SIZE;
/// `MAX_STRUCT_PAGE_SIZE` (`drivers/nvdimm/nd.h`): bytes per page reserved for the memmap in
/// `PFN_MODE_PMEM`, whatever the real `sizeof(struct page)`.
pub const MAX_STRUCT_PAGE_SIZE: u64 = 64;
/// `sizeof(struct page)` in the guest: 64 on production x86-64 configs. `nd_pfn_init()` refuses
/// `PFN_MODE_PMEM` when it is larger ("Memory debug options prevent using pmem for the page
/// map"), and `nd_pfn_validate()` compares a block's `page_struct_size` with it.
pub const STRUCT_PAGE_SIZE: u64 = 64;
/// `1 << SECTION_SIZE_BITS` (`arch/x86/include/asm/sparsemem.h`): memory is hot-added (and its
/// vmemmap populated) one section at a time. The guest geometry's memory section, under the
/// kernel's name.
pub use geometry::MEMORY_SECTION_SIZE as SECTION_SIZE;
/// `memremap_compat_align()` (`mm/memremap.c`) = `SUBSECTION_SIZE` on x86-64: the granularity of
/// ZONE_DEVICE hot-add. Namespace start and (truncated) end must be aligned to it. The guest
/// geometry's pmem size granule, under the kernel's name.
pub use geometry::PMEM_SIZE_GRANULE as SUBSECTION_SIZE;
/// `nd_pfn_supported_alignments()` on x86-64 with THP: `PAGE_SIZE`, `HPAGE_PMD_SIZE`,
/// `HPAGE_PUD_SIZE`. The kernel's `align` sysfs store accepts only these for both fsdax and devdax;
/// `nd_pfn_validate()` enforces them on devdax blocks only.
pub const SUPPORTED_ALIGNMENTS: [u64; 3] = [4 << 10, 2 << 20, 1 << 30];
/// `nd_pfn_default_alignment()`: `HPAGE_PMD_SIZE` when THP is available. Also ndctl's default.
pub const DEFAULT_ALIGN: u64 = 2 << 20;
/// `PFN_SIG` (`drivers/nvdimm/pfn.h`): fsdax.
pub const PFN_SIG: [u8; 16] = *b"NVDIMM_PFN_INFO\0";
/// `DAX_SIG` (`drivers/nvdimm/pfn.h`): devdax.
pub const DAX_SIG: [u8; 16] = *b"NVDIMM_DAX_INFO\0";
/// Version written by `nd_pfn_init()` and by ndctl: 1.4 (minor 4 added `page_size` and
/// `page_struct_size`).
pub const VERSION_MAJOR: u16 = 1;
/// See [`VERSION_MAJOR`].
pub const VERSION_MINOR: u16 = 4;

/// Byte offsets of the `struct nd_pfn_sb` fields (checked against a compiled copy of the struct).
mod field {
    pub const SIGNATURE: usize = 0;
    pub const UUID: usize = 16;
    pub const PARENT_UUID: usize = 32;
    pub const FLAGS: usize = 48;
    pub const VERSION_MAJOR: usize = 52;
    pub const VERSION_MINOR: usize = 54;
    pub const DATAOFF: usize = 56;
    pub const NPFNS: usize = 64;
    pub const MODE: usize = 72;
    pub const START_PAD: usize = 76;
    pub const END_TRUNC: usize = 80;
    pub const ALIGN: usize = 84;
    pub const PAGE_SIZE: usize = 88;
    pub const PAGE_STRUCT_SIZE: usize = 92;
    pub const CHECKSUM: usize = 4088;
}

/// The personality, carried by the signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InfoMode {
    /// `NVDIMM_PFN_INFO`: the guest gets `/dev/pmemN` with DAX (ndctl `--mode fsdax`).
    Fsdax,
    /// `NVDIMM_DAX_INFO`: the guest gets `/dev/daxN.M` (ndctl `--mode devdax`).
    Devdax,
}

impl InfoMode {
    /// The 16-byte signature, NUL included (the kernel compares all 16 bytes).
    pub fn signature(self) -> &'static [u8; 16] {
        match self {
            InfoMode::Fsdax => &PFN_SIG,
            InfoMode::Devdax => &DAX_SIG,
        }
    }

    fn from_signature(sig: &[u8]) -> Option<InfoMode> {
        if sig == PFN_SIG {
            Some(InfoMode::Fsdax)
        } else if sig == DAX_SIG {
            Some(InfoMode::Devdax)
        } else {
            None
        }
    }
}

impl fmt::Display for InfoMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InfoMode::Fsdax => "fsdax",
            InfoMode::Devdax => "devdax",
        })
    }
}

/// Where the guest keeps the memmap (`enum nd_pfn_mode`, `drivers/nvdimm/nd.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemmapLocation {
    /// `PFN_MODE_RAM` (1), ndctl `--map=mem`: struct pages in guest RAM.
    Ram,
    /// `PFN_MODE_PMEM` (2), ndctl `--map=dev`: struct pages in a reserve at the start of the
    /// namespace, before `dataoff`.
    Pmem,
}

impl MemmapLocation {
    /// The value of the block's `mode` field.
    pub fn raw(self) -> u32 {
        match self {
            MemmapLocation::Ram => 1,
            MemmapLocation::Pmem => 2,
        }
    }

    fn from_raw(raw: u32) -> Option<MemmapLocation> {
        match raw {
            1 => Some(MemmapLocation::Ram),
            2 => Some(MemmapLocation::Pmem),
            _ => None,
        }
    }
}

impl fmt::Display for MemmapLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemmapLocation::Ram => "ram",
            MemmapLocation::Pmem => "pmem",
        })
    }
}

/// The namespace as the guest sees it: what the device-dependent checks compare against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Namespace {
    /// Guest physical address of namespace offset 0 (`nsio->res.start`; for an NFIT io namespace
    /// the SPA range base).
    pub phys_addr: u64,
    /// Namespace size in bytes (`resource_size(&nsio->res)`).
    pub size: u64,
    /// What `nd_dev_to_uuid()` returns for the namespace: all zero for an io (label-less)
    /// namespace, the label's uuid for a labelled one.
    pub parent_uuid: [u8; 16],
}

impl Namespace {
    /// A label-less io namespace (parent uuid all zero), which is what an NFIT SPA range without
    /// a label area gives the guest.
    pub fn io(phys_addr: u64, size: u64) -> Namespace {
        Namespace {
            phys_addr,
            size,
            parent_uuid: [0; 16],
        }
    }
}

/// What to lay out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InfoBlockRequest {
    pub mode: InfoMode,
    pub memmap: MemmapLocation,
    /// Mapping alignment in bytes: one of [`SUPPORTED_ALIGNMENTS`] (devdax: the fault size; fsdax:
    /// only the alignment of the data start). Usually [`DEFAULT_ALIGN`].
    pub align: u64,
    /// The namespace the block is for, at the guest physical address the layout gives it: the
    /// data offset and end truncation depend on it, not only on the size.
    pub namespace: Namespace,
    /// Identity of this pfn/dax instance (any value; random v4 is what the kernel and ndctl use).
    pub uuid: [u8; 16],
}

/// A decoded (or computed) info block.
///
/// The fields hold what `nd_pfn_validate()` leaves in `pfn_sb` after it has applied the
/// defaults for older minor versions (minor < 1: no `start_pad`/`end_trunc`; < 2: `align` 0;
/// < 4: `page_size` 4096, `page_struct_size` 64). For a version 1.4 block, [`InfoBlock::to_bytes`]
/// reproduces the parsed bytes exactly, except for any non-zero padding, which the kernel ignores
/// and the writer zeroes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InfoBlock {
    /// From the signature.
    pub mode: InfoMode,
    pub uuid: [u8; 16],
    pub parent_uuid: [u8; 16],
    /// Unused by the kernel; 0 in blocks it writes.
    pub flags: u32,
    pub version_major: u16,
    pub version_minor: u16,
    /// Namespace offset of the first data byte (relative to the namespace base; `start_pad` is
    /// added on top, see [`Layout::data_offset`]).
    pub dataoff: u64,
    /// Data pages. Informational: the kernel recomputes it for `PFN_MODE_PMEM` and never uses it
    /// otherwise, so no check looks at it.
    pub npfns: u64,
    /// From the `mode` field.
    pub memmap: MemmapLocation,
    /// Deprecated; always 0 in blocks the kernel (and [`InfoBlock::compute`]) writes.
    pub start_pad: u32,
    /// Bytes at the end of the namespace left out so that the data end is aligned.
    pub end_trunc: u32,
    /// The stored alignment; 0 means "derive from `dataoff`" (see [`InfoBlock::align`]).
    pub align: u32,
    pub page_size: u32,
    pub page_struct_size: u16,
}

/// What the guest gets from a namespace with a given block, see [`InfoBlock::layout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Namespace offset of the first data byte: `start_pad + dataoff` (`resource_show()`). Every
    /// byte before it is guest-invisible: 8 KiB header, memmap reserve (`PFN_MODE_PMEM`) and
    /// alignment padding.
    pub data_offset: u64,
    /// Guest physical address of the first data byte (`pfnX.Y/resource`, the dax region start).
    pub data_phys_addr: u64,
    /// Guest-visible capacity: `size - start_pad - end_trunc - dataoff` (`size_show()`; the
    /// `/dev/pmemN` capacity and the dax device size).
    pub data_size: u64,
    /// Bytes ignored at the end of the namespace.
    pub end_trunc: u64,
    /// Where the struct pages live and what they cost.
    pub memmap: MemmapFootprint,
}

/// The memmap the guest builds for the namespace, as the 6.12 x86-64 vmemmap code allocates it.
///
/// The guest maps the whole range `[base + start_pad, end - end_trunc)` with
/// `devm_memremap_pages()`, so every 4 KiB page of it (the header and the reserve included, not
/// only the data) gets a struct page. Hot-add goes one 128 MiB section at a time
/// (`__add_pages()`); x86's `vmemmap_populate()` maps a full section's 2 MiB of struct pages with
/// one PMD block, taken from the altmap in `PFN_MODE_PMEM`, and maps a partial section with base
/// pages that always come from RAM. For devdax in `PFN_MODE_RAM` with an alignment of 2 MiB or
/// 1 GiB the vmemmap of each compound page is deduplicated (`vmemmap_populate_compound_pages()`,
/// `ARCH_WANT_OPTIMIZE_DAX_VMEMMAP`): 2 vmemmap pages per compound page instead of all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemmapFootprint {
    pub location: MemmapLocation,
    /// Pages given a struct page.
    pub struct_pages: u64,
    /// Struct-page bytes the guest allocates from its RAM (vmemmap data pages).
    pub ram_bytes: u64,
    /// PTE tables the guest allocates from RAM for base-page-mapped vmemmap: one 4 KiB page per
    /// section that is not PMD-mapped. Upper-level page tables (at most 4 KiB per 64 GiB of
    /// namespace) are not counted.
    pub ram_page_table_bytes: u64,
    /// Struct-page bytes placed in the device's reserve (`PFN_MODE_PMEM`, full sections only).
    pub device_bytes: u64,
    /// Size of the device reserve the altmap may use: `dataoff - 8 KiB` in `PFN_MODE_PMEM`, 0 in
    /// `PFN_MODE_RAM`.
    pub device_reserve_bytes: u64,
}

impl MemmapFootprint {
    /// Everything the guest takes from RAM for this namespace's memmap.
    pub fn ram_total(&self) -> u64 {
        self.ram_bytes + self.ram_page_table_bytes
    }
}

/// Why a block cannot be made, or why the guest kernel would not use it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InfoBlockError {
    // --- Requests the kernel would not lay out (nd_pfn_init / align_store) ---
    #[error(
        "align {align:#x} is not one the guest kernel supports (4K, 2M or 1G: \
         nd_pfn_supported_alignments)"
    )]
    UnsupportedAlign { align: u64 },
    #[error("namespace of {size:#x} bytes is too small for an info block (needs more than 8 KiB)")]
    NamespaceTooSmall { size: u64 },
    #[error("namespace at {phys_addr:#x} + {size:#x} bytes overflows the physical address space")]
    AddressOverflow { phys_addr: u64, size: u64 },
    #[error(
        "namespace start {phys_addr:#x} misaligned to {SUBSECTION_SIZE:#x} \
         (nd_pfn_init: \"start ... misaligned\")"
    )]
    StartMisaligned { phys_addr: u64 },
    #[error(
        "unable to satisfy requested alignment {align:#x} for a {memmap} memmap on a namespace of \
         {size:#x} bytes at {phys_addr:#x}: data would start at offset {dataoff:#x} but only \
         {usable:#x} bytes are left after end truncation (nd_pfn_init)"
    )]
    AlignmentUnsatisfiable {
        memmap: MemmapLocation,
        align: u64,
        size: u64,
        phys_addr: u64,
        dataoff: u64,
        usable: u64,
    },

    // --- Reader: nd_pfn_validate(), in its order ---
    #[error("buffer of {len} bytes is not a {INFO_BLOCK_SIZE}-byte info block")]
    WrongLength { len: usize },
    #[error(
        "no info block: signature is {found:?}, not \"NVDIMM_PFN_INFO\" or \"NVDIMM_DAX_INFO\""
    )]
    NoInfoBlock { found: String },
    #[error(
        "info block checksum mismatch: stored {stored:#018x}, computed {computed:#018x} \
         (the guest treats the namespace as having no info block)"
    )]
    BadChecksum { stored: u64, computed: u64 },
    #[error(
        "info block parent_uuid {block} does not match the namespace's {namespace} \
         (the guest treats the namespace as having no info block)"
    )]
    ParentUuidMismatch { block: String, namespace: String },
    #[error("info block mode {mode} is neither PFN_MODE_RAM (1) nor PFN_MODE_PMEM (2)")]
    BadMode { mode: u32 },
    #[error("info block page_size {page_size} exceeds PAGE_SIZE 4096 (\"init failed, page size mismatch\")")]
    PageSizeMismatch { page_size: u32 },
    #[error(
        "info block page_struct_size {page_struct_size} is below sizeof(struct page) \
         {STRUCT_PAGE_SIZE} (\"init failed, struct page size mismatch\")"
    )]
    StructPageSizeMismatch { page_struct_size: u16 },
    #[error(
        "devdax info block align {align:#x} is not a supported alignment (4K, 2M, 1G) \
         (\"init failed, alignment mismatch\")"
    )]
    DaxAlignUnsupported { align: u64 },
    #[error("info block align {align:#x} exceeds namespace capacity {capacity:#x}")]
    AlignExceedsCapacity { align: u64, capacity: u64 },
    #[error(
        "info block dataoff {dataoff:#x} is not below the namespace size {size:#x} \
         (\"pfn array size exceeds capacity\")"
    )]
    DataOffsetBeyondCapacity { dataoff: u64, size: u64 },
    #[error(
        "info block dataoff {dataoff:#x} (start_pad {start_pad:#x}, namespace at {phys_addr:?}) is \
         not page aligned or does not put the data on an align {align:#x} boundary (\"bad offset\")"
    )]
    BadOffset {
        dataoff: u64,
        start_pad: u32,
        align: u64,
        /// `None` when checked without a namespace (only page alignment is known then).
        phys_addr: Option<u64>,
    },
    #[error(
        "namespace start {phys_addr:#x} + start_pad {start_pad:#x} is not aligned to \
         {SUBSECTION_SIZE:#x} (\"resource start misaligned\")"
    )]
    ResourceStartMisaligned { phys_addr: u64, start_pad: u32 },
    #[error(
        "namespace end {end:#x} - end_trunc {end_trunc:#x} is not aligned to {SUBSECTION_SIZE:#x} \
         (\"resource end misaligned\")"
    )]
    ResourceEndMisaligned { end: u64, end_trunc: u32 },
    #[error(
        "info block dataoff {dataoff:#x} leaves no data in a namespace of {size:#x} bytes with \
         start_pad {start_pad:#x} and end_trunc {end_trunc:#x} (\"bad offset with small namespace\")"
    )]
    SmallNamespace {
        dataoff: u64,
        size: u64,
        start_pad: u32,
        end_trunc: u32,
    },

    // --- Passes nd_pfn_validate() but fails when the guest enables the device ---
    #[error(
        "PFN_MODE_RAM info block dataoff {dataoff:#x} is below the 8 KiB info block reserve \
         (__nvdimm_setup_pfn)"
    )]
    RamModeOffsetTooSmall { dataoff: u64 },
    #[error(
        "PFN_MODE_PMEM info block dataoff {dataoff:#x} is below the 8 KiB info block reserve: the \
         guest's altmap size would wrap and its struct pages would overwrite data"
    )]
    PmemModeOffsetTooSmall { dataoff: u64 },
    #[error(
        "memmap reserve of {available} pages (dataoff {dataoff:#x}) cannot hold the {needed} \
         pages of struct pages the guest allocates from it (vmemmap_populate_hugepages: -ENOMEM)"
    )]
    MemmapReserveTooSmall {
        dataoff: u64,
        needed: u64,
        available: u64,
    },
    #[error(
        "devdax data range at {start:#x} of {len:#x} bytes is not aligned to align {align:#x} \
         (alloc_dax_region)"
    )]
    DaxRegionMisaligned { start: u64, len: u64, align: u32 },
}

/// What an [`InfoBlockError`] from the reader means for the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestOutcome {
    /// `-ENODEV`/`-ENXIO` from `nd_pfn_validate()`: `nd_pmem_probe()` moves on (dax probe, then
    /// a raw `/dev/pmemN` without struct pages).
    RawNamespace,
    /// `-EOPNOTSUPP` from `nd_pfn_validate()` (the namespace probe fails outright) or an error
    /// when the pfn/dax device is enabled: the guest gets no device for the namespace.
    NoDevice,
    /// The kernel accepts the block but uses it wrongly (struct pages over data).
    Corruption,
}

impl InfoBlockError {
    /// The errno the guest kernel returns for this condition, if it is a kernel check.
    pub fn kernel_errno(&self) -> Option<i32> {
        use InfoBlockError::*;
        Some(match self {
            UnsupportedAlign { .. } | StartMisaligned { .. } => libc::EINVAL,
            NamespaceTooSmall { .. } | AlignmentUnsatisfiable { .. } => libc::ENXIO,
            NoInfoBlock { .. } | BadChecksum { .. } | ParentUuidMismatch { .. } => libc::ENODEV,
            BadMode { .. } => libc::ENXIO,
            PageSizeMismatch { .. }
            | StructPageSizeMismatch { .. }
            | DaxAlignUnsupported { .. }
            | AlignExceedsCapacity { .. }
            | DataOffsetBeyondCapacity { .. }
            | BadOffset { .. }
            | ResourceStartMisaligned { .. }
            | ResourceEndMisaligned { .. }
            | SmallNamespace { .. } => libc::EOPNOTSUPP,
            RamModeOffsetTooSmall { .. } => libc::EINVAL,
            MemmapReserveTooSmall { .. } | DaxRegionMisaligned { .. } => libc::ENOMEM,
            WrongLength { .. } | AddressOverflow { .. } | PmemModeOffsetTooSmall { .. } => {
                return None
            }
        })
    }

    /// What the guest does with a block that fails this way; `None` for errors that are not
    /// about an existing block (requests, buffer length).
    pub fn guest_outcome(&self) -> Option<GuestOutcome> {
        use InfoBlockError::*;
        match self {
            UnsupportedAlign { .. }
            | NamespaceTooSmall { .. }
            | AddressOverflow { .. }
            | StartMisaligned { .. }
            | AlignmentUnsatisfiable { .. }
            | WrongLength { .. } => None,
            PmemModeOffsetTooSmall { .. } => Some(GuestOutcome::Corruption),
            NoInfoBlock { .. }
            | BadChecksum { .. }
            | ParentUuidMismatch { .. }
            | BadMode { .. } => Some(GuestOutcome::RawNamespace),
            _ => Some(GuestOutcome::NoDevice),
        }
    }
}

/// `nd_fletcher64(addr, len, le = true)` (`drivers/nvdimm/core.c`): 32-bit little-endian words,
/// a 32-bit running sum `lo` (wrapping) and a 64-bit sum of sums `hi`; the result is
/// `hi << 32 | lo` (so only the low 32 bits of `hi` survive). A trailing partial word is
/// ignored, as `len / sizeof(u32)` does.
pub fn fletcher64(bytes: &[u8]) -> u64 {
    let mut lo: u32 = 0;
    let mut hi: u64 = 0;
    for word in bytes.chunks_exact(4) {
        lo = lo.wrapping_add(u32::from_le_bytes([word[0], word[1], word[2], word[3]]));
        hi = hi.wrapping_add(u64::from(lo));
    }
    (hi << 32) | u64::from(lo)
}

/// `nd_sb_checksum()` (`drivers/nvdimm/claim.c`): [`fletcher64`] over the whole 4096-byte block
/// with the checksum field (the last 8 bytes) taken as zero. Stored little-endian in that field.
pub fn checksum(block: &[u8; INFO_BLOCK_SIZE]) -> u64 {
    let mut copy = *block;
    copy[field::CHECKSUM..].fill(0);
    fletcher64(&copy)
}

fn align_up(x: u64, a: u64) -> Option<u64> {
    Some(x.checked_add(a - 1)? & !(a - 1))
}

fn align_down(x: u64, a: u64) -> u64 {
    x & !(a - 1)
}

/// `IS_ALIGNED(x, a)` with the kernel's arithmetic, also for `a == 0` (never aligned unless
/// `x == 0`) and non-powers of two.
fn is_aligned(x: u64, a: u64) -> bool {
    x & a.wrapping_sub(1) == 0
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// `%pUb` / libuuid formatting: the 16 bytes in order.
pub fn format_uuid(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl InfoBlock {
    /// Lay out a block as the guest kernel's `nd_pfn_init()` does when it creates one:
    ///
    /// ```text
    /// A         = max(align, SUBSECTION_SIZE)               align itself is stored
    /// start     must be SUBSECTION_SIZE aligned             ("start ... misaligned")
    /// end_trunc = (start + size) - ALIGN_DOWN(start + size, A)
    /// npfns0    = (size - 8K) / 4K
    /// dataoff   = ALIGN(start + 8K + 64 * npfns0, A) - start      PFN_MODE_PMEM
    ///           = ALIGN(start + 8K, A) - start                    PFN_MODE_RAM
    /// dataoff   < size - end_trunc                          ("unable to satisfy requested alignment")
    /// npfns     = (size - dataoff - end_trunc) / 4K
    /// start_pad = 0, version 1.4, page_size 4096, page_struct_size 64
    /// ```
    ///
    /// `ndctl write-infoblock` (`write_pfn_sb()`) uses the same formulas with `--offset` as
    /// `start`, and its output is identical whenever `start` is a multiple of `A`. Otherwise it
    /// differs on purpose ("to allow testing legacy / buggy configurations"): it writes
    /// `start_pad = ALIGN(start, A) - start` and only refuses `dataoff >= size`, so it writes a
    /// wrapped `npfns` where the kernel refuses. On a 2 MiB-aligned base a non-zero `start_pad`
    /// only happens with a 1 GiB align, and the guest rejects that block as a bad offset; on a
    /// base that is not 2 MiB aligned the kernel creates nothing, while ndctl's legacy block may
    /// still pass `nd_pfn_validate()` (with a 4K align). This function follows the kernel, and also refuses where the kernel's unsigned
    /// arithmetic would wrap (`end_trunc > size`: no `A` boundary inside the namespace).
    ///
    /// `align` must be one of [`SUPPORTED_ALIGNMENTS`], the only values the kernel's `align`
    /// attribute accepts (ndctl accepts any power of two).
    pub fn compute(req: &InfoBlockRequest) -> Result<InfoBlock, InfoBlockError> {
        let ns = &req.namespace;
        let (start, size) = (ns.phys_addr, ns.size);
        if !SUPPORTED_ALIGNMENTS.contains(&req.align) {
            return Err(InfoBlockError::UnsupportedAlign { align: req.align });
        }
        if size <= INFO_BLOCK_RESERVE {
            return Err(InfoBlockError::NamespaceTooSmall { size });
        }
        let overflow = InfoBlockError::AddressOverflow {
            phys_addr: start,
            size,
        };
        let end = start.checked_add(size).ok_or(overflow.clone())?;
        let a = req.align.max(SUBSECTION_SIZE);
        if !is_aligned(start, SUBSECTION_SIZE) {
            return Err(InfoBlockError::StartMisaligned { phys_addr: start });
        }
        let end_trunc = end - align_down(end, a);
        let npfns0 = (size - INFO_BLOCK_RESERVE) / PAGE_SIZE;
        let meta_end = match req.memmap {
            MemmapLocation::Pmem => MAX_STRUCT_PAGE_SIZE
                .checked_mul(npfns0)
                .and_then(|m| m.checked_add(start + INFO_BLOCK_RESERVE)),
            MemmapLocation::Ram => start.checked_add(INFO_BLOCK_RESERVE),
        };
        let dataoff = meta_end.and_then(|m| align_up(m, a)).ok_or(overflow)? - start;
        // When no A boundary lies inside the namespace, end_trunc > size and the kernel's
        // `size - end_trunc` wraps; treat it as nothing usable.
        let usable = size.saturating_sub(end_trunc);
        if dataoff >= usable {
            return Err(InfoBlockError::AlignmentUnsatisfiable {
                memmap: req.memmap,
                align: req.align,
                size,
                phys_addr: start,
                dataoff,
                usable,
            });
        }
        Ok(InfoBlock {
            mode: req.mode,
            uuid: req.uuid,
            parent_uuid: ns.parent_uuid,
            flags: 0,
            version_major: VERSION_MAJOR,
            version_minor: VERSION_MINOR,
            dataoff,
            npfns: (usable - dataoff) / PAGE_SIZE,
            memmap: req.memmap,
            start_pad: 0,
            // end_trunc < A <= 1 GiB and align is one of SUPPORTED_ALIGNMENTS: both fit.
            end_trunc: end_trunc as u32,
            align: req.align as u32,
            page_size: PAGE_SIZE as u32,
            page_struct_size: MAX_STRUCT_PAGE_SIZE as u16,
        })
    }

    /// The 4096 bytes to write at namespace offset [`INFO_BLOCK_OFFSET`], checksum included.
    pub fn to_bytes(&self) -> [u8; INFO_BLOCK_SIZE] {
        let mut b = [0u8; INFO_BLOCK_SIZE];
        b[field::SIGNATURE..field::SIGNATURE + 16].copy_from_slice(self.mode.signature());
        b[field::UUID..field::UUID + 16].copy_from_slice(&self.uuid);
        b[field::PARENT_UUID..field::PARENT_UUID + 16].copy_from_slice(&self.parent_uuid);
        b[field::FLAGS..field::FLAGS + 4].copy_from_slice(&self.flags.to_le_bytes());
        b[field::VERSION_MAJOR..field::VERSION_MAJOR + 2]
            .copy_from_slice(&self.version_major.to_le_bytes());
        b[field::VERSION_MINOR..field::VERSION_MINOR + 2]
            .copy_from_slice(&self.version_minor.to_le_bytes());
        b[field::DATAOFF..field::DATAOFF + 8].copy_from_slice(&self.dataoff.to_le_bytes());
        b[field::NPFNS..field::NPFNS + 8].copy_from_slice(&self.npfns.to_le_bytes());
        b[field::MODE..field::MODE + 4].copy_from_slice(&self.memmap.raw().to_le_bytes());
        b[field::START_PAD..field::START_PAD + 4].copy_from_slice(&self.start_pad.to_le_bytes());
        b[field::END_TRUNC..field::END_TRUNC + 4].copy_from_slice(&self.end_trunc.to_le_bytes());
        b[field::ALIGN..field::ALIGN + 4].copy_from_slice(&self.align.to_le_bytes());
        b[field::PAGE_SIZE..field::PAGE_SIZE + 4].copy_from_slice(&self.page_size.to_le_bytes());
        b[field::PAGE_STRUCT_SIZE..field::PAGE_STRUCT_SIZE + 2]
            .copy_from_slice(&self.page_struct_size.to_le_bytes());
        let sum = checksum(&b);
        b[field::CHECKSUM..].copy_from_slice(&sum.to_le_bytes());
        b
    }

    /// Read a block (the [`INFO_BLOCK_SIZE`] bytes at namespace offset [`INFO_BLOCK_OFFSET`])
    /// with the checks of `nd_pfn_validate()` that do not depend on the namespace: signature,
    /// checksum, minor-version defaults, mode, page size, struct page size, devdax alignment,
    /// `dataoff` page alignment; and `dataoff >= 8 KiB` for `PFN_MODE_RAM`
    /// (`__nvdimm_setup_pfn()`). The version itself is not checked, as the kernel does not.
    pub fn parse(bytes: &[u8]) -> Result<InfoBlock, InfoBlockError> {
        decode(bytes, None)
    }

    /// [`InfoBlock::parse`] and [`InfoBlock::validate_for`] together, in the kernel's order (the
    /// parent uuid is compared right after the checksum): what the guest concludes from these
    /// bytes on this namespace.
    pub fn parse_for(bytes: &[u8], ns: &Namespace) -> Result<InfoBlock, InfoBlockError> {
        decode(bytes, Some(ns))
    }

    /// The checks that depend on the namespace: `nd_pfn_validate()`'s parent uuid, align against
    /// capacity, `dataoff` against size, data start alignment ("bad offset"), resource start and
    /// end alignment and remaining size; then what fails when the guest enables the device: the
    /// memmap reserve must hold the struct pages of every full section (`PFN_MODE_PMEM`), and
    /// the devdax data range must be aligned to `align` (`alloc_dax_region()`).
    pub fn validate_for(&self, ns: &Namespace) -> Result<(), InfoBlockError> {
        decode(&self.to_bytes(), Some(ns)).map(|_| ())
    }

    /// The effective alignment: the stored one, or when it is 0 (minor < 2) `1 << ilog2(dataoff)`,
    /// the largest power of two not above `dataoff`, as `nd_pfn_validate()` derives it.
    pub fn align(&self) -> u64 {
        effective_align(self.align, self.dataoff)
    }

    /// What the guest gets from this block on `ns`: data offset and size, memmap footprint.
    /// Fails when the guest would not use the block ([`InfoBlock::validate_for`]).
    pub fn layout(&self, ns: &Namespace) -> Result<Layout, InfoBlockError> {
        self.validate_for(ns)?;
        let base = ns.phys_addr + u64::from(self.start_pad);
        let end = ns.phys_addr + ns.size - u64::from(self.end_trunc);
        let data_offset = u64::from(self.start_pad) + self.dataoff;
        Ok(Layout {
            data_offset,
            data_phys_addr: ns.phys_addr + data_offset,
            data_size: end - base - self.dataoff,
            end_trunc: u64::from(self.end_trunc),
            memmap: footprint(self, base, end).0,
        })
    }
}

impl InfoBlockRequest {
    /// [`InfoBlock::compute`] then [`InfoBlock::layout`]: the numbers a policy costs before
    /// anything is written.
    pub fn layout(&self) -> Result<Layout, InfoBlockError> {
        InfoBlock::compute(self)?.layout(&self.namespace)
    }
}

/// `align` as `nd_pfn_validate()` uses it: the stored value, or `1UL << ilog2(dataoff)` when it
/// is 0. For `dataoff == 0` the kernel shifts by -1, which x86 executes as a shift by 63.
fn effective_align(stored: u32, dataoff: u64) -> u64 {
    if stored != 0 {
        u64::from(stored)
    } else if dataoff == 0 {
        1 << 63
    } else {
        1 << (63 - dataoff.leading_zeros())
    }
}

/// The kernel's checks, in `nd_pfn_validate()`'s order, then the enable-time ones.
fn decode(bytes: &[u8], ns: Option<&Namespace>) -> Result<InfoBlock, InfoBlockError> {
    use InfoBlockError as E;
    let b: &[u8; INFO_BLOCK_SIZE] = bytes
        .try_into()
        .map_err(|_| E::WrongLength { len: bytes.len() })?;

    let sig = &b[field::SIGNATURE..field::SIGNATURE + 16];
    let mode = InfoMode::from_signature(sig).ok_or_else(|| E::NoInfoBlock {
        found: String::from_utf8_lossy(sig).into_owned(),
    })?;

    let stored = le64(b, field::CHECKSUM);
    let computed = checksum(b);
    if stored != computed {
        return Err(E::BadChecksum { stored, computed });
    }

    let mut parent_uuid = [0u8; 16];
    parent_uuid.copy_from_slice(&b[field::PARENT_UUID..field::PARENT_UUID + 16]);
    if let Some(ns) = ns {
        if parent_uuid != ns.parent_uuid {
            return Err(E::ParentUuidMismatch {
                block: format_uuid(&parent_uuid),
                namespace: format_uuid(&ns.parent_uuid),
            });
        }
    }

    let version_minor = le16(b, field::VERSION_MINOR);
    let (mut start_pad, mut end_trunc) = (le32(b, field::START_PAD), le32(b, field::END_TRUNC));
    if version_minor < 1 {
        start_pad = 0;
        end_trunc = 0;
    }
    let mut align = le32(b, field::ALIGN);
    if version_minor < 2 {
        align = 0;
    }
    let (mut page_size, mut page_struct_size) =
        (le32(b, field::PAGE_SIZE), le16(b, field::PAGE_STRUCT_SIZE));
    if version_minor < 4 {
        page_struct_size = 64;
        page_size = PAGE_SIZE as u32;
    }

    let raw_mode = le32(b, field::MODE);
    let memmap = MemmapLocation::from_raw(raw_mode).ok_or(E::BadMode { mode: raw_mode })?;

    let dataoff = le64(b, field::DATAOFF);
    let eff_align = effective_align(align, dataoff);

    if memmap == MemmapLocation::Pmem && u64::from(page_size) > PAGE_SIZE {
        return Err(E::PageSizeMismatch { page_size });
    }
    if memmap == MemmapLocation::Pmem && u64::from(page_struct_size) < STRUCT_PAGE_SIZE {
        return Err(E::StructPageSizeMismatch { page_struct_size });
    }
    if mode == InfoMode::Devdax && !SUPPORTED_ALIGNMENTS.contains(&eff_align) {
        return Err(E::DaxAlignUnsupported { align: eff_align });
    }

    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&b[field::UUID..field::UUID + 16]);
    let block = InfoBlock {
        mode,
        uuid,
        parent_uuid,
        flags: le32(b, field::FLAGS),
        version_major: le16(b, field::VERSION_MAJOR),
        version_minor,
        dataoff,
        npfns: le64(b, field::NPFNS),
        memmap,
        start_pad,
        end_trunc,
        align,
        page_size,
        page_struct_size,
    };

    let Some(ns) = ns else {
        if !is_aligned(dataoff, PAGE_SIZE) {
            return Err(E::BadOffset {
                dataoff,
                start_pad,
                align: eff_align,
                phys_addr: None,
            });
        }
        check_ram_mode_offset(&block)?;
        return Ok(block);
    };

    // An io namespace's capacity is its resource size (nvdimm_namespace_capacity()).
    let (start, size) = (ns.phys_addr, ns.size);
    // A resource that wraps the address space cannot exist; refusing it here keeps the
    // arithmetic below and in `layout()` in range (the fuzz target found `layout()` overflowing).
    if start.checked_add(size).is_none() {
        return Err(E::AddressOverflow {
            phys_addr: start,
            size,
        });
    }
    if eff_align > size {
        return Err(E::AlignExceedsCapacity {
            align: eff_align,
            capacity: size,
        });
    }
    if dataoff >= size {
        return Err(E::DataOffsetBeyondCapacity { dataoff, size });
    }
    let data_start = start
        .wrapping_add(dataoff)
        .wrapping_add(u64::from(start_pad));
    if !is_aligned(data_start, eff_align) || !is_aligned(dataoff, PAGE_SIZE) {
        return Err(E::BadOffset {
            dataoff,
            start_pad,
            align: eff_align,
            phys_addr: Some(start),
        });
    }
    let base = start.wrapping_add(u64::from(start_pad));
    if !is_aligned(base, SUBSECTION_SIZE) {
        return Err(E::ResourceStartMisaligned {
            phys_addr: start,
            start_pad,
        });
    }
    let ns_end = start.wrapping_add(size);
    let end = ns_end.wrapping_sub(u64::from(end_trunc));
    if !is_aligned(end, SUBSECTION_SIZE) {
        return Err(E::ResourceEndMisaligned {
            end: ns_end,
            end_trunc,
        });
    }
    // The kernel computes `size - start_pad - end_trunc` unsigned; when that wraps the check
    // passes and the device fails later with an inverted range. Refuse it here.
    let small = E::SmallNamespace {
        dataoff,
        size,
        start_pad,
        end_trunc,
    };
    let usable = size
        .checked_sub(u64::from(start_pad))
        .and_then(|s| s.checked_sub(u64::from(end_trunc)))
        .ok_or(small.clone())?;
    if dataoff >= usable {
        return Err(small);
    }

    // nd_pfn_validate() passed; now what the guest finds when it enables the device.
    check_ram_mode_offset(&block)?;
    if memmap == MemmapLocation::Pmem {
        let (_, needed) = footprint(&block, base, end);
        if dataoff < INFO_BLOCK_RESERVE && needed > 0 {
            return Err(E::PmemModeOffsetTooSmall { dataoff });
        }
        let available = dataoff.saturating_sub(INFO_BLOCK_RESERVE) / PAGE_SIZE;
        if needed > available {
            return Err(E::MemmapReserveTooSmall {
                dataoff,
                needed,
                available,
            });
        }
    }
    if mode == InfoMode::Devdax {
        // __dax_pmem_probe(): the dax region is [base + dataoff, end) and alloc_dax_region()
        // wants it aligned, start and length, to the stored (not derived) align.
        let len = end - base - dataoff;
        if !is_aligned(base + dataoff, u64::from(align)) || !is_aligned(len, u64::from(align)) {
            return Err(E::DaxRegionMisaligned {
                start: base + dataoff,
                len,
                align,
            });
        }
    }
    Ok(block)
}

/// `__nvdimm_setup_pfn()`: `PFN_MODE_RAM` needs `dataoff >= nd_info_block_reserve()` (-EINVAL).
fn check_ram_mode_offset(block: &InfoBlock) -> Result<(), InfoBlockError> {
    if block.memmap == MemmapLocation::Ram && block.dataoff < INFO_BLOCK_RESERVE {
        return Err(InfoBlockError::RamModeOffsetTooSmall {
            dataoff: block.dataoff,
        });
    }
    Ok(())
}

/// The vmemmap the guest builds for the mapped range `[base, end)` (both 2 MiB aligned), and the
/// number of altmap pages it needs in `PFN_MODE_PMEM`.
///
/// Per 128 MiB section piece (`__add_pages()` → `section_activate()` →
/// `__populate_section_memmap()`):
/// * devdax, `PFN_MODE_RAM`, stored align >= 1 MiB (`vmemmap_can_optimize()`: no altmap and more
///   than 2 vmemmap pages per compound page; `dev_dax_probe()` sets `vmemmap_shift` from the
///   stored align): `vmemmap_populate_compound_pages()` maps a head and one tail vmemmap page per
///   compound page and reuses the tail page for the rest; a compound page larger than a section
///   (1 GiB) gets them in its first section only (`reuse_compound_section()`). PTE-mapped: one
///   PTE table per section.
/// * otherwise x86 `vmemmap_populate()`: a full section (2 MiB of struct pages) is one PMD block
///   from the altmap (`PFN_MODE_PMEM`) or RAM; a partial section is mapped with base pages from
///   RAM (`vmemmap_populate_basepages(..., NULL)`) plus a PTE table.
///
/// Altmap: `base_pfn` = first pfn, `reserve` = 2 pages (the 8 KiB header); each PMD block must be
/// 512-page aligned (`altmap_alloc_block_buf()`), so the first one skips 510 pages and the rest
/// follow back to back: `510 + 512 * full_sections` pages.
fn footprint(block: &InfoBlock, base: u64, end: u64) -> (MemmapFootprint, u64) {
    memmap_footprint(
        block.mode,
        block.align,
        block.memmap,
        block.dataoff,
        base,
        end,
    )
}

/// The memmap Linux builds in RAM for a namespace it maps with struct pages but no info block:
/// a raw namespace on a region with `ND_REGION_PAGEMAP` (a legacy E820 range; `pmem.c`'s
/// `pmem_should_map_pages()`), one 4 KiB struct page per page of `[base, base + size)`.
pub fn page_map_footprint(base: u64, size: u64) -> MemmapFootprint {
    memmap_footprint(
        InfoMode::Fsdax,
        PAGE_SIZE as u32,
        MemmapLocation::Ram,
        0,
        base,
        base + size,
    )
    .0
}

/// [`footprint`] from the block's fields.
fn memmap_footprint(
    mode: InfoMode,
    align: u32,
    memmap: MemmapLocation,
    dataoff: u64,
    base: u64,
    end: u64,
) -> (MemmapFootprint, u64) {
    let struct_pages = (end - base) / PAGE_SIZE;
    let compound_order = if mode == InfoMode::Devdax && u64::from(align) > PAGE_SIZE {
        // order_base_2(align >> PAGE_SHIFT)
        u64::from(align / PAGE_SIZE as u32)
            .next_power_of_two()
            .trailing_zeros()
    } else {
        0
    };
    let compound_pages = 1u64 << compound_order;
    let optimized =
        memmap == MemmapLocation::Ram && (compound_pages * STRUCT_PAGE_SIZE) / PAGE_SIZE > 2;
    let compound_bytes = compound_pages * PAGE_SIZE;

    let mut fp = MemmapFootprint {
        location: memmap,
        struct_pages,
        ram_bytes: 0,
        ram_page_table_bytes: 0,
        device_bytes: 0,
        device_reserve_bytes: match memmap {
            MemmapLocation::Pmem => dataoff.saturating_sub(INFO_BLOCK_RESERVE),
            MemmapLocation::Ram => 0,
        },
    };
    let mut full_sections = 0u64;
    let mut piece_start = base;
    while piece_start < end {
        let piece_end = end.min(align_down(piece_start, SECTION_SIZE) + SECTION_SIZE);
        let len = piece_end - piece_start;
        let vmemmap = len / PAGE_SIZE * STRUCT_PAGE_SIZE;
        if optimized {
            let vmemmap_pages = if compound_bytes < SECTION_SIZE {
                2 * len / compound_bytes
            } else if is_aligned(piece_start - base, compound_bytes) {
                2
            } else {
                0
            };
            fp.ram_bytes += vmemmap_pages * PAGE_SIZE;
            fp.ram_page_table_bytes += PAGE_SIZE;
        } else if len == SECTION_SIZE {
            match memmap {
                MemmapLocation::Pmem => {
                    fp.device_bytes += vmemmap;
                    full_sections += 1;
                }
                MemmapLocation::Ram => fp.ram_bytes += vmemmap,
            }
        } else {
            fp.ram_bytes += vmemmap;
            fp.ram_page_table_bytes += PAGE_SIZE;
        }
        piece_start = piece_end;
    }
    let per_block = SECTION_SIZE / PAGE_SIZE * STRUCT_PAGE_SIZE / PAGE_SIZE; // 512 pages
    let altmap_needed = if full_sections == 0 {
        0
    } else {
        (per_block - INFO_BLOCK_RESERVE / PAGE_SIZE) + per_block * full_sections
    };
    (fp, altmap_needed)
}

#[cfg(test)]
mod tests;
