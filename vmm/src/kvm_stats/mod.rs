//! KVM's per-VM binary statistics (`KVM_GET_STATS_FD` on the VM descriptor, Linux 5.14 and
//! later): how much guest memory KVM maps in the stage-2 (EPT/NPT) tables with 4 KiB, 2 MiB and
//! 1 GiB pages (`pages_4k`, `pages_2m`, `pages_1g`). The figures are KVM's own, read from the
//! file the ioctl returns (include/uapi/linux/kvm.h: a `kvm_stats_header`, an id string, one
//! `kvm_stats_desc` per statistic, then the data), never estimated here.
//!
//! The descriptor is opened once when the VM is created (before any seccomp filter), the
//! layout read then; every later read is one `pread` of the data block, which the API thread
//! (`vm.counters`) and the main thread (the exit log) may do at any time.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

use thiserror::Error;

use crate::seccomp::ioctls::KVM_GET_STATS_FD;

/// `struct kvm_stats_header`: six `__u32`.
const HEADER_LEN: usize = 24;
/// `struct kvm_stats_desc` before its name: flags, exponent, size, offset, bucket_size.
const DESC_FIXED_LEN: usize = 16;
/// More descriptors than any kernel has (x86 VMs have 16): a header that claims more is not
/// believed.
const MAX_DESCRIPTORS: usize = 4096;
/// Longest descriptor name field accepted (the kernel's is 48 bytes).
const MAX_NAME_SIZE: usize = 4096;
/// `KVM_STATS_TYPE_MASK` and the types a page count may have: instant (the kernel's
/// `STATS_DESC_ICOUNTER`) or cumulative.
const TYPE_MASK: u32 = 0xf;
const TYPE_CUMULATIVE: u32 = 0;
const TYPE_INSTANT: u32 = 1;
/// `KVM_STATS_UNIT_MASK`: a page count has no unit (`KVM_STATS_UNIT_NONE`).
const UNIT_MASK: u32 = 0xf << 4;

/// The statistics this module reads, by KVM's names.
pub const PAGE_STATS: [&str; 3] = ["pages_4k", "pages_2m", "pages_1g"];

#[derive(Debug, Error)]
pub enum KvmStatsError {
    #[error("KVM_GET_STATS_FD on the VM: {0} (this KVM has no binary statistics, Linux < 5.14?)")]
    Open(io::Error),
    #[error("reading KVM's VM statistics ({what}): {source}")]
    Read {
        what: &'static str,
        source: io::Error,
    },
    #[error("KVM's VM statistics: {0}")]
    Malformed(String),
    #[error("KVM's VM statistics have no {0:?} (this KVM does not count stage-2 page sizes)")]
    Missing(&'static str),
}

/// Where in the data block each of [`PAGE_STATS`] is, from the header and descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsLayout {
    /// Offset of the data block from the start of the file.
    pub data_offset: u64,
    /// Length of the data block that holds the three values (up to the last one's end).
    pub data_len: usize,
    /// Byte offsets within the data block of `pages_4k`, `pages_2m`, `pages_1g`.
    pub offsets: [usize; 3],
}

/// The header's fields this module uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsHeader {
    pub name_size: usize,
    pub num_desc: usize,
    pub desc_offset: u64,
    pub data_offset: u64,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

impl StatsHeader {
    /// Parses a `kvm_stats_header`.
    pub fn parse(b: &[u8]) -> Result<StatsHeader, KvmStatsError> {
        if b.len() < HEADER_LEN {
            return Err(KvmStatsError::Malformed(format!(
                "header of {} bytes, expected {HEADER_LEN}",
                b.len()
            )));
        }
        let h = StatsHeader {
            name_size: u32_at(b, 4) as usize,
            num_desc: u32_at(b, 8) as usize,
            desc_offset: u64::from(u32_at(b, 16)),
            data_offset: u64::from(u32_at(b, 20)),
        };
        if h.num_desc > MAX_DESCRIPTORS || h.name_size == 0 || h.name_size > MAX_NAME_SIZE {
            return Err(KvmStatsError::Malformed(format!(
                "header claims {} descriptors with {}-byte names",
                h.num_desc, h.name_size
            )));
        }
        Ok(h)
    }

    /// Bytes of the descriptor block.
    pub fn descriptors_len(&self) -> usize {
        self.num_desc * (DESC_FIXED_LEN + self.name_size)
    }
}

impl StatsLayout {
    /// Finds [`PAGE_STATS`] in the descriptor block `descs` of a file with header `h`.
    pub fn parse(h: &StatsHeader, descs: &[u8]) -> Result<StatsLayout, KvmStatsError> {
        let stride = DESC_FIXED_LEN + h.name_size;
        if descs.len() < h.descriptors_len() {
            return Err(KvmStatsError::Malformed(format!(
                "descriptor block of {} bytes, expected {}",
                descs.len(),
                h.descriptors_len()
            )));
        }
        let mut offsets: [Option<usize>; 3] = [None; 3];
        for d in descs[..h.descriptors_len()].chunks_exact(stride) {
            let raw_name = &d[DESC_FIXED_LEN..];
            let name_len = raw_name
                .iter()
                .position(|&c| c == 0)
                .unwrap_or(raw_name.len());
            let Some(which) = PAGE_STATS
                .iter()
                .position(|n| n.as_bytes() == &raw_name[..name_len])
            else {
                continue;
            };
            let flags = u32_at(d, 0);
            let exponent = i16::from_le_bytes([d[4], d[5]]);
            let size = u16::from_le_bytes([d[6], d[7]]);
            let offset = u32_at(d, 8) as usize;
            let kind = flags & TYPE_MASK;
            if !matches!(kind, TYPE_CUMULATIVE | TYPE_INSTANT)
                || flags & UNIT_MASK != 0
                || exponent != 0
                || size != 1
            {
                return Err(KvmStatsError::Malformed(format!(
                    "{} is not a plain count (flags {flags:#x}, exponent {exponent}, size {size})",
                    PAGE_STATS[which]
                )));
            }
            offsets[which] = Some(offset);
        }
        let mut found = [0usize; 3];
        for (i, o) in offsets.iter().enumerate() {
            found[i] = o.ok_or(KvmStatsError::Missing(PAGE_STATS[i]))?;
        }
        let data_len = found.iter().max().copied().unwrap_or(0) + 8;
        Ok(StatsLayout {
            data_offset: h.data_offset,
            data_len,
            offsets: found,
        })
    }

    /// The three counts from a data block (at least `data_len` bytes).
    pub fn values(&self, data: &[u8]) -> Result<Stage2Pages, KvmStatsError> {
        if data.len() < self.data_len {
            return Err(KvmStatsError::Malformed(format!(
                "data block of {} bytes, expected {}",
                data.len(),
                self.data_len
            )));
        }
        let at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().expect("8 bytes"));
        Ok(Stage2Pages {
            pages_4k: at(self.offsets[0]),
            pages_2m: at(self.offsets[1]),
            pages_1g: at(self.offsets[2]),
        })
    }

    /// Parses a whole statistics file as read from the descriptor (a recorded blob).
    pub fn parse_file(file: &[u8]) -> Result<(StatsLayout, Stage2Pages), KvmStatsError> {
        let h = StatsHeader::parse(file)?;
        let descs = file
            .get(h.desc_offset as usize..)
            .ok_or_else(|| KvmStatsError::Malformed("descriptors past the end".into()))?;
        let layout = StatsLayout::parse(&h, descs)?;
        let data = file
            .get(h.data_offset as usize..)
            .ok_or_else(|| KvmStatsError::Malformed("data past the end".into()))?;
        let pages = layout.values(data)?;
        Ok((layout, pages))
    }
}

/// How many stage-2 leaf entries of each size KVM has for the VM (all memory slots together:
/// RAM and every pmem window).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stage2Pages {
    pub pages_4k: u64,
    pub pages_2m: u64,
    pub pages_1g: u64,
}

impl Stage2Pages {
    /// Bytes mapped with each size: 4 KiB, 2 MiB, 1 GiB.
    pub fn bytes(&self) -> [u64; 3] {
        [
            self.pages_4k.saturating_mul(4 << 10),
            self.pages_2m.saturating_mul(2 << 20),
            self.pages_1g.saturating_mul(1 << 30),
        ]
    }

    /// Bytes mapped in all.
    pub fn total_bytes(&self) -> u64 {
        self.bytes().iter().fold(0u64, |a, b| a.saturating_add(*b))
    }

    /// Percent of the mapped bytes mapped with 2 MiB or 1 GiB pages (`None` when nothing is
    /// mapped).
    pub fn huge_percent(&self) -> Option<f64> {
        let [_, m2, g1] = self.bytes();
        let total = self.total_bytes();
        (total > 0).then(|| (m2.saturating_add(g1)) as f64 * 100.0 / total as f64)
    }
}

impl std::fmt::Display for Stage2Pages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [k4, m2, g1] = self.bytes();
        write!(
            f,
            "{} x 4K ({} MiB), {} x 2M ({} MiB), {} x 1G ({} MiB)",
            self.pages_4k,
            k4 >> 20,
            self.pages_2m,
            m2 >> 20,
            self.pages_1g,
            g1 >> 20
        )?;
        if let Some(p) = self.huge_percent() {
            write!(f, ": {p:.1} % huge")?;
        }
        Ok(())
    }
}

/// The VM's statistics descriptor and where the page counts are in it.
#[derive(Debug)]
pub struct VmStats {
    file: File,
    layout: StatsLayout,
}

impl VmStats {
    /// Opens the statistics of the VM behind `vm_fd` and reads their layout.
    pub fn open(vm_fd: &impl AsRawFd) -> Result<VmStats, KvmStatsError> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new descriptor (or -1); it
        // reads and writes no memory of ours. `vm_fd` is a live VM descriptor borrowed for the
        // call.
        let fd = unsafe { libc::ioctl(vm_fd.as_raw_fd(), KVM_GET_STATS_FD as _, 0) };
        if fd < 0 {
            return Err(KvmStatsError::Open(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by the kernel as a new descriptor that nothing else
        // owns; the `File` takes sole ownership and closes it.
        let file = unsafe { File::from_raw_fd(fd) };
        VmStats::from_file(file)
    }

    /// Reads the layout of a statistics file: KVM's descriptor, or a recorded copy of one.
    pub fn from_file(file: File) -> Result<VmStats, KvmStatsError> {
        let mut header = [0u8; HEADER_LEN];
        file.read_exact_at(&mut header, 0)
            .map_err(|source| KvmStatsError::Read {
                what: "header",
                source,
            })?;
        let h = StatsHeader::parse(&header)?;
        let mut descs = vec![0u8; h.descriptors_len()];
        file.read_exact_at(&mut descs, h.desc_offset)
            .map_err(|source| KvmStatsError::Read {
                what: "descriptors",
                source,
            })?;
        let layout = StatsLayout::parse(&h, &descs)?;
        Ok(VmStats { file, layout })
    }

    /// The current counts: one `pread` of the data block.
    pub fn read(&self) -> Result<Stage2Pages, KvmStatsError> {
        let mut data = vec![0u8; self.layout.data_len];
        self.file
            .read_exact_at(&mut data, self.layout.data_offset)
            .map_err(|source| KvmStatsError::Read {
                what: "data",
                source,
            })?;
        self.layout.values(&data)
    }
}

/// A recorded statistics file, for tests here and of its readers (`vm.counters`).
#[cfg(test)]
pub(crate) mod recorded {
    /// The whole statistics file of a new x86 VM, read from `KVM_GET_STATS_FD` on Linux 6.18
    /// (16 descriptors with 48-byte names; `pages_4k`, `pages_2m`, `pages_1g` at data offsets
    /// 72, 80 and 88; the data block at 1096; `max_mmu_rmap_size` (112) comes before
    /// `max_mmu_page_hash_collisions` (104): offsets are not in descriptor order).
    pub const NEW_VM: &[u8] = include_bytes!("testdata/new-vm-kvm-6.18.bin");
    /// Where the data block starts in [`NEW_VM`].
    pub const DATA: usize = 1096;
    /// Where `pages_4k` is in [`NEW_VM`] (`pages_2m` and `pages_1g` follow).
    pub const PAGES_4K: usize = DATA + 72;

    /// [`NEW_VM`] with these `pages_4k`, `pages_2m`, `pages_1g`.
    pub fn with_pages(pages: [u64; 3]) -> Vec<u8> {
        let mut blob = NEW_VM.to_vec();
        for (i, v) in pages.into_iter().enumerate() {
            let at = PAGES_4K + 8 * i;
            blob[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        blob
    }
}

#[cfg(test)]
mod tests;
