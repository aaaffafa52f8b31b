//! The namespace label storage area of a DIMM (`--pmem ...,labels=on[,label-size=SIZE]`): where
//! it lives in the backing, what capacity it leaves the guest, what the host can tell of its
//! contents, and [`MappedLabelArea`], the label bytes the `_DSM` mailbox
//! ([`crate::nvdimm_dsm`]) reads and writes.
//!
//! # Placement
//!
//! As in QEMU (`nvdimm_prepare_memory_region()`), the label area is the last `label-size` bytes
//! of the backing, so a backing labelled under QEMU keeps its labels here and the other way
//! round. The guest-visible region (the NFIT SPA range, the KVM slot, the info block and its
//! memmap reserve) is the backing's first [`LabelGeometry::capacity`] bytes: the backing size
//! less the label area, rounded down to the 2 MiB granule ([`geometry::PMEM_SIZE_GRANULE`]).
//! Because the label area is at most one granule ([`LABEL_SIZE_MAX`]), the capacity is always
//! the backing size less exactly 2 MiB: a region never ends off the granule (QEMU 7.2 subtracts
//! the label size and aligns down only to the memory backend's alignment, which for a file
//! backend is a page, leaving a region that ends 128 KiB short of a 2 MiB boundary, so that
//! neither namespace ends nor info-block truncation line up), and the guest never maps a byte
//! of the label area.

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use thiserror::Error;

use super::backing::{BackingError, BackingKind};
use super::bytes::Bytes;
use super::mapping::PmemMapping;

pub use geometry::PMEM_SIZE_GRANULE;

/// Smallest and default label area: 128 KiB, QEMU's minimum (`MIN_NAMESPACE_LABEL_SIZE`) and
/// what Linux's v1.1/v1.2 label format needs for its two index blocks and a useful number of
/// 256-byte labels.
pub const LABEL_SIZE_MIN: u64 = 128 << 10;
/// Largest label area: one 2 MiB granule, so the area always fits in the granule the capacity
/// gives up (see the module docs). 2 MiB holds over 8000 labels.
pub const LABEL_SIZE_MAX: u64 = PMEM_SIZE_GRANULE;
/// The label area is a whole number of these (a guest page), so that flushing a label write
/// never touches a page outside it.
pub const LABEL_SIZE_UNIT: u64 = 4096;

/// A `label-size=` the monitor does not accept.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LabelSizeError {
    #[error("label-size={0}: expected a multiple of 4 KiB from 128K to 2M")]
    OutOfRange(u64),
    #[error("label-size= needs labels=on")]
    WithoutLabels,
}

/// Checks a `label-size=` in bytes.
pub fn check_label_size(size: u64) -> Result<u64, LabelSizeError> {
    if (LABEL_SIZE_MIN..=LABEL_SIZE_MAX).contains(&size) && size.is_multiple_of(LABEL_SIZE_UNIT) {
        Ok(size)
    } else {
        Err(LabelSizeError::OutOfRange(size))
    }
}

/// Where a labelled backing's parts are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelGeometry {
    /// Bytes of the backing the guest sees as its region, from offset 0.
    pub capacity: u64,
    /// Backing offset of the label area.
    pub label_offset: u64,
    /// Bytes of label area (the `_DSM` "config size").
    pub label_size: u32,
}

/// The backing is too small to hold a label area and a region.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("with labels=on the backing needs at least {min}: one 2 MiB granule for the label area and at least one for the region; it has {size}", min = Bytes(2 * PMEM_SIZE_GRANULE), size = Bytes(*.size))]
pub struct TooSmallForLabels {
    pub size: u64,
}

impl LabelGeometry {
    /// The layout of a backing of `backing_size` bytes (a multiple of the granule) with a
    /// label area of `label_size` bytes (checked by [`check_label_size`]).
    pub fn new(backing_size: u64, label_size: u64) -> Result<LabelGeometry, TooSmallForLabels> {
        debug_assert!(check_label_size(label_size).is_ok());
        let too_small = TooSmallForLabels { size: backing_size };
        let label_offset = backing_size
            .checked_sub(label_size)
            .ok_or(too_small.clone())?;
        let capacity = label_offset - label_offset % PMEM_SIZE_GRANULE;
        if capacity == 0 {
            return Err(too_small);
        }
        Ok(LabelGeometry {
            capacity,
            label_offset,
            // At most LABEL_SIZE_MAX (2 MiB).
            label_size: label_size as u32,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// What the label area holds (Linux drivers/nvdimm/label.h, UEFI 2.7 namespace labels)
// ---------------------------------------------------------------------------------------------

/// `NSINDEX_SIGNATURE`.
const INDEX_SIGNATURE: &[u8; 16] = b"NAMESPACE_INDEX\0";
/// `struct nd_namespace_index` up to the free bitmap.
const INDEX_HEADER_LEN: usize = 72;
const INDEX_CHECKSUM_OFFSET: usize = 64;
/// The largest index block the fallback looks for (see [`label_state`]).
const MAX_INDEX_SIZE: usize = 16 * 256;

/// What a label area holds, as far as the guest's label code will see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelState {
    /// No valid index block: the guest treats the DIMM as label-less (one namespace over the
    /// whole region, with or without an info block), as it would with labels=off.
    Uninitialised,
    /// A valid index: the guest's namespaces are what the labels say, `labels_in_use` of them
    /// (one label per namespace on a single-DIMM region), out of `slots`.
    Initialised { labels_in_use: u32, slots: u32 },
}

impl std::fmt::Display for LabelState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LabelState::Uninitialised => f.write_str("label area not initialised"),
            LabelState::Initialised {
                labels_in_use,
                slots,
            } => write!(
                f,
                "label area initialised, {labels_in_use} of {slots} label slots in use"
            ),
        }
    }
}

/// Linux's `nd_fletch64()` over little-endian 32-bit words.
fn fletcher64(bytes: &[u8]) -> u64 {
    let (mut lo, mut hi) = (0u32, 0u64);
    for w in bytes.chunks_exact(4) {
        lo = lo.wrapping_add(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
        hi = hi.wrapping_add(u64::from(lo));
    }
    hi << 32 | u64::from(lo)
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A valid index block at `at`: (seq, nslot, labels in use). Checks what Linux's
/// `__nd_label_validate()` checks that matters here: signature, self offset, size and checksum,
/// a sequence number in 1..=3, and a label array and free bitmap inside the area.
fn parse_index(area: &[u8], at: usize) -> Option<(u32, u32, u32)> {
    let b = area.get(at..at.checked_add(INDEX_HEADER_LEN)?)?;
    if &b[..16] != INDEX_SIGNATURE {
        return None;
    }
    let seq = le32(b, 20) & 3;
    let (myoff, mysize, labeloff) = (le64(b, 24), le64(b, 32), le64(b, 48));
    let nslot = le32(b, 56);
    let label_size: u64 = match b[19] {
        0 => 128, // v1.1
        n if n < 8 => 128u64 << n,
        _ => return None,
    };
    if seq == 0 || myoff != at as u64 || mysize < INDEX_HEADER_LEN as u64 {
        return None;
    }
    let end = myoff.checked_add(mysize)?;
    let block = area.get(at..usize::try_from(end).ok()?)?;
    let bitmap_len = u64::from(nslot).div_ceil(8);
    if INDEX_HEADER_LEN as u64 + bitmap_len > mysize || !mysize.is_multiple_of(8) {
        return None;
    }
    let labels_end = u64::from(nslot)
        .checked_mul(label_size)?
        .checked_add(labeloff)?;
    if labels_end > area.len() as u64 {
        return None;
    }
    let mut copy = block.to_vec();
    let stored = le64(&copy, INDEX_CHECKSUM_OFFSET);
    copy[INDEX_CHECKSUM_OFFSET..INDEX_CHECKSUM_OFFSET + 8].fill(0);
    if fletcher64(&copy) != stored {
        return None;
    }
    let bitmap = &block[INDEX_HEADER_LEN..INDEX_HEADER_LEN + bitmap_len as usize];
    // A set bit is a free slot.
    let free: u32 = (0..nslot)
        .filter(|i| bitmap[(i / 8) as usize] & (1 << (i % 8)) != 0)
        .count() as u32;
    Some((seq, nslot, nslot - free))
}

/// What the label area `area` (the whole area, from its first byte) holds: the newer of the two
/// index blocks (Linux's `nd_label_copy()` order: sequence numbers 1 → 2 → 3 → 1).
pub fn label_state(area: &[u8]) -> LabelState {
    let first = parse_index(area, 0);
    let second = first
        .map(|_| le64(area, 32) as usize)
        .and_then(|size| parse_index(area, size))
        .or_else(|| {
            // Without a valid first block, where the second sits is not known from it: Linux
            // computes the index size from the area size (a multiple of 256 bytes, at most
            // 2304 for a 2 MiB area of 128-byte labels). Try those few offsets only, so a
            // guest-written area full of signatures costs at most 16 checksums at start-up.
            (1..=MAX_INDEX_SIZE / 256).find_map(|k| parse_index(area, k * 256))
        });
    let newer = |a: u32, b: u32| a % 3 + 1 == b;
    let best = match (first, second) {
        (Some(a), Some(b)) => Some(if newer(a.0, b.0) { b } else { a }),
        (a, b) => a.or(b),
    };
    match best {
        None => LabelState::Uninitialised,
        Some((_, slots, labels_in_use)) => LabelState::Initialised {
            labels_in_use,
            slots,
        },
    }
}

// ---------------------------------------------------------------------------------------------
// The label bytes the mailbox serves
// ---------------------------------------------------------------------------------------------

/// A label write could not be made durable (or a read-only DIMM was written).
#[derive(Debug, Error)]
pub enum LabelIoError {
    #[error("label area bytes {offset:#x}+{len:#x} are outside its {size:#x} bytes")]
    OutOfRange { offset: u32, len: usize, size: u32 },
    #[error("the DIMM is read-only")]
    ReadOnly,
    #[error("{0}")]
    Flush(#[from] BackingError),
}

/// The label bytes of one DIMM. Offsets are relative to the start of the label area.
pub trait LabelStore: Send + Sync {
    /// Bytes in the area (the `_DSM` config size).
    fn size(&self) -> u32;
    fn readonly(&self) -> bool;
    fn read(&self, offset: u32, buf: &mut [u8]) -> Result<(), LabelIoError>;
    /// Writes and makes the bytes durable before returning.
    fn write_durably(&self, offset: u32, data: &[u8]) -> Result<(), LabelIoError>;
}

/// `[offset, offset + len)` inside `size`, computed without overflow.
fn check_range(offset: u32, len: usize, size: u32) -> Result<(), LabelIoError> {
    let end = u64::from(offset).checked_add(len as u64);
    if end.is_some_and(|e| e <= u64::from(size)) {
        Ok(())
    } else {
        Err(LabelIoError::OutOfRange { offset, len, size })
    }
}

/// The label area of a mapped backing. The guest cannot reach these bytes (they lie past its
/// region, outside the KVM slot); only the mailbox, serialised by its bus lock, touches them
/// while the guest runs.
pub struct MappedLabelArea {
    mapping: Arc<PmemMapping>,
    geometry: LabelGeometry,
}

impl MappedLabelArea {
    /// The area `geometry` describes in `mapping`, which must cover it.
    pub fn new(mapping: Arc<PmemMapping>, geometry: LabelGeometry) -> io::Result<Self> {
        let end = geometry.label_offset + u64::from(geometry.label_size);
        if end > mapping.len() {
            return Err(io::Error::other(format!(
                "label area ends at {end:#x}, past the mapping's {:#x} bytes",
                mapping.len()
            )));
        }
        Ok(MappedLabelArea { mapping, geometry })
    }

    /// A copy of the whole area.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.geometry.label_size as usize];
        self.read(0, &mut v).expect("the whole area is in range");
        v
    }

    /// Files and block devices are read and written with `pread`/`pwrite` on the mapping's own
    /// descriptor (same page cache, so the guest and the mapping see the bytes): a store
    /// through the mapping into a hole of a sparse file on a full file system raises SIGBUS in
    /// the monitor, where `pwrite` returns `ENOSPC` and the guest's `_DSM` call gets status 4.
    /// Device-dax has no `read`/`write`, so its labels go through the mapping.
    fn via_file(&self) -> bool {
        !matches!(self.mapping.kind(), BackingKind::DevDax { .. })
    }

    fn ptr(&self, offset: u32) -> *mut u8 {
        // In range: callers checked offset against the area, which `new` checked against the
        // mapping; the sum fits the address space because the mapping does.
        self.mapping
            .as_ptr()
            .wrapping_add((self.geometry.label_offset + u64::from(offset)) as usize)
    }
}

impl LabelStore for MappedLabelArea {
    fn size(&self) -> u32 {
        self.geometry.label_size
    }

    fn readonly(&self) -> bool {
        self.mapping.readonly()
    }

    fn read(&self, offset: u32, buf: &mut [u8]) -> Result<(), LabelIoError> {
        check_range(offset, buf.len(), self.size())?;
        if self.via_file() {
            self.mapping
                .file()
                .read_exact_at(buf, self.geometry.label_offset + u64::from(offset))
                .map_err(|e| BackingError::io(self.mapping.path(), "pread", e))?;
            return Ok(());
        }
        // SAFETY: [ptr(offset), + buf.len()) is inside the label area (checked above), which is
        // inside the live mapping (`new`, and `self.mapping` keeps it mapped); `buf` is a
        // distinct Rust buffer. Nothing else writes the area concurrently: the guest cannot
        // reach it and the mailbox serialises its calls.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr(offset), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    fn write_durably(&self, offset: u32, data: &[u8]) -> Result<(), LabelIoError> {
        check_range(offset, data.len(), self.size())?;
        if self.readonly() {
            return Err(LabelIoError::ReadOnly);
        }
        if data.is_empty() {
            return Ok(());
        }
        if self.via_file() {
            self.mapping
                .file()
                .write_all_at(data, self.geometry.label_offset + u64::from(offset))
                .map_err(|e| BackingError::io(self.mapping.path(), "pwrite", e))?;
        } else {
            // SAFETY: as in `read`; the mapping is writable (checked above), and a device-dax
            // has no holes to fill, so the stores cannot fault while the device is bound.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr(offset), data.len()) };
        }
        self.mapping.flush_range(
            self.geometry.label_offset + u64::from(offset),
            data.len() as u64,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn label_sizes() {
        assert_eq!(check_label_size(128 << 10), Ok(128 << 10));
        assert_eq!(check_label_size(2 * MIB), Ok(2 * MIB));
        for bad in [0, 4096, (128 << 10) - 4096, (128 << 10) + 1, 2 * MIB + 4096] {
            assert_eq!(check_label_size(bad), Err(LabelSizeError::OutOfRange(bad)));
        }
    }

    #[test]
    fn capacity_is_the_backing_less_one_granule() {
        for (backing, label) in [
            (GIB, LABEL_SIZE_MIN),
            (GIB + 2 * MIB, LABEL_SIZE_MIN),
            (GIB + 2 * MIB, LABEL_SIZE_MAX),
            (4 * MIB, LABEL_SIZE_MIN),
        ] {
            let g = LabelGeometry::new(backing, label).unwrap();
            assert_eq!(g.capacity, backing - 2 * MIB, "{backing:#x}");
            assert_eq!(g.capacity % PMEM_SIZE_GRANULE, 0);
            assert_eq!(g.label_offset + label, backing, "at the end, as QEMU");
            assert!(g.capacity <= g.label_offset, "no overlap");
        }
        // 1 GiB + 2 MiB, not a multiple of 16 MiB: the region is exactly 1 GiB.
        assert_eq!(
            LabelGeometry::new(GIB + 2 * MIB, LABEL_SIZE_MIN)
                .unwrap()
                .capacity,
            GIB
        );
        assert_eq!(
            LabelGeometry::new(2 * MIB, LABEL_SIZE_MIN),
            Err(TooSmallForLabels { size: 2 * MIB })
        );
    }

    /// An index pair as Linux's `nd_label_write_index()` writes it for a 128 KiB area.
    pub(crate) fn linux_index_pair(area: &mut [u8], in_use: &[u32]) {
        let nslot: u32 = 510; // (128K - 2 * 256) / 256, Linux's count for 128 KiB
        let mysize = 256u64; // ALIGN(72 + 64, 256)
        for (i, seq) in [(0usize, 3u32), (1, 1)] {
            let at = i * mysize as usize;
            let b = &mut area[at..at + mysize as usize];
            b.fill(0);
            b[..16].copy_from_slice(INDEX_SIGNATURE);
            b[19] = 1; // 256-byte labels (v1.2)
            b[20..24].copy_from_slice(&seq.to_le_bytes());
            b[24..32].copy_from_slice(&(at as u64).to_le_bytes());
            b[32..40].copy_from_slice(&mysize.to_le_bytes());
            b[40..48].copy_from_slice(&((1 - i) as u64 * mysize).to_le_bytes());
            b[48..56].copy_from_slice(&(2 * mysize).to_le_bytes());
            b[56..60].copy_from_slice(&nslot.to_le_bytes());
            b[60..62].copy_from_slice(&1u16.to_le_bytes());
            b[62..64].copy_from_slice(&2u16.to_le_bytes());
            for s in 0..nslot {
                if !in_use.contains(&s) {
                    b[72 + (s / 8) as usize] |= 1 << (s % 8);
                }
            }
            let sum = fletcher64(b);
            b[64..72].copy_from_slice(&sum.to_le_bytes());
        }
    }

    #[test]
    fn label_state_reads_linux_indexes() {
        let mut area = vec![0u8; LABEL_SIZE_MIN as usize];
        assert_eq!(label_state(&area), LabelState::Uninitialised);
        linux_index_pair(&mut area, &[]);
        assert_eq!(
            label_state(&area),
            LabelState::Initialised {
                labels_in_use: 0,
                slots: 510
            }
        );
        linux_index_pair(&mut area, &[0, 1]);
        assert_eq!(
            label_state(&area),
            LabelState::Initialised {
                labels_in_use: 2,
                slots: 510
            }
        );
        // A corrupted first block: the second still counts.
        area[100] ^= 0xff;
        assert!(matches!(
            label_state(&area),
            LabelState::Initialised {
                labels_in_use: 2,
                ..
            }
        ));
        // Both corrupted: uninitialised, as Linux sees it.
        area[256 + 100] ^= 0xff;
        assert_eq!(label_state(&area), LabelState::Uninitialised);
    }

    #[test]
    fn a_hostile_label_area_is_read_quickly() {
        // Signatures everywhere with the largest sizes and slot counts: every candidate fails
        // a check, and the whole scan stays cheap.
        let mut area = vec![0u8; LABEL_SIZE_MAX as usize];
        for at in (0..area.len()).step_by(256) {
            area[at..at + 16].copy_from_slice(INDEX_SIGNATURE);
            area[at + 20] = 1;
            area[at + 24..at + 32].copy_from_slice(&(at as u64).to_le_bytes());
            area[at + 32..at + 40].copy_from_slice(&(LABEL_SIZE_MAX - at as u64).to_le_bytes());
            area[at + 56..at + 60].copy_from_slice(&1u32.to_le_bytes()); // reaches the checksum
        }
        let started = std::time::Instant::now();
        assert_eq!(label_state(&area), LabelState::Uninitialised);
        // At most 17 checksummed candidates: well under a second even unoptimised. A scan that
        // tried every signature (8192 of them, each checksumming up to 2 MiB) would take
        // minutes; the bound is loose so a loaded machine does not fail it.
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
    }

    #[test]
    fn fletcher_matches_linux() {
        // nd_fletch64 over words 1, 2: lo = 3, hi = 1 + 3 = 4.
        let b = [1u8, 0, 0, 0, 2, 0, 0, 0];
        assert_eq!(fletcher64(&b), 4 << 32 | 3);
    }
}
