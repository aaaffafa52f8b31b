//! KVM's binary statistics (`KVM_GET_STATS_FD`, Linux 5.14 and later), read from the file the
//! ioctl returns (include/uapi/linux/kvm.h: a `kvm_stats_header`, an id string, one
//! `kvm_stats_desc` per statistic, then the data), never estimated here:
//! - per VM ([`VmStats`]): how much guest memory KVM maps in the stage-2 (EPT/NPT) tables with
//!   4 KiB, 2 MiB and 1 GiB pages (`pages_4k`, `pages_2m`, `pages_1g`);
//! - per vCPU ([`VcpuStats`]): its page-fault counts (`pf_taken`, `pf_fixed`, `pf_emulate`,
//!   `pf_spurious`), from which `fault_watch` tells a fault KVM retries forever.
//!
//! A descriptor is opened once when the VM or vCPU is created (before any seccomp filter), the
//! layout read then; every later read is one `pread` of the data block, which the API thread
//! (`vm.counters`) and the main thread (the exit log, the fault watch) may do at any time.

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
/// More descriptors than any kernel has (x86 VMs have 16, vCPUs about 50): a header that
/// claims more is not believed.
const MAX_DESCRIPTORS: usize = 4096;
/// Longest descriptor name field accepted (the kernel's is 48 bytes).
const MAX_NAME_SIZE: usize = 4096;
/// `KVM_STATS_TYPE_MASK` and the types a count may have: instant (the kernel's
/// `STATS_DESC_ICOUNTER`) or cumulative.
const TYPE_MASK: u32 = 0xf;
const TYPE_CUMULATIVE: u32 = 0;
const TYPE_INSTANT: u32 = 1;
/// `KVM_STATS_UNIT_MASK`: a count has no unit (`KVM_STATS_UNIT_NONE`).
const UNIT_MASK: u32 = 0xf << 4;

/// The VM statistics this module reads, by KVM's names.
pub const PAGE_STATS: [&str; 3] = ["pages_4k", "pages_2m", "pages_1g"];
/// The vCPU statistics this module reads, by KVM's names (arch/x86/kvm/x86.c). KVM counts a
/// fault it takes in `pf_taken` and the outcome in one of the other three; a fault it only
/// retries (an asynchronous page fault, a race with an invalidation) has no outcome.
pub const FAULT_STATS: [&str; 4] = ["pf_taken", "pf_fixed", "pf_emulate", "pf_spurious"];

#[derive(Debug, Error)]
pub enum KvmStatsError {
    #[error(
        "KVM_GET_STATS_FD on the {of}: {source} (this KVM has no binary statistics, Linux < 5.14?)"
    )]
    Open { of: &'static str, source: io::Error },
    #[error("reading KVM's statistics ({what}): {source}")]
    Read {
        what: &'static str,
        source: io::Error,
    },
    #[error("KVM's statistics: {0}")]
    Malformed(String),
    #[error("KVM's statistics have no {0:?}")]
    Missing(&'static str),
}

/// Where in the data block each of `N` named counts is, from the header and descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsLayout<const N: usize> {
    /// Offset of the data block from the start of the file.
    pub data_offset: u64,
    /// Length of the data block that holds the values (up to the last one's end).
    pub data_len: usize,
    /// Byte offsets within the data block of the counts, in the order they were named.
    pub offsets: [usize; N],
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

impl<const N: usize> StatsLayout<N> {
    /// Finds the counts `names` in the descriptor block `descs` of a file with header `h`.
    pub fn parse(
        h: &StatsHeader,
        descs: &[u8],
        names: &[&'static str; N],
    ) -> Result<StatsLayout<N>, KvmStatsError> {
        let stride = DESC_FIXED_LEN + h.name_size;
        if descs.len() < h.descriptors_len() {
            return Err(KvmStatsError::Malformed(format!(
                "descriptor block of {} bytes, expected {}",
                descs.len(),
                h.descriptors_len()
            )));
        }
        let mut offsets: [Option<usize>; N] = [None; N];
        for d in descs[..h.descriptors_len()].chunks_exact(stride) {
            let raw_name = &d[DESC_FIXED_LEN..];
            let name_len = raw_name
                .iter()
                .position(|&c| c == 0)
                .unwrap_or(raw_name.len());
            let Some(which) = names
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
                    names[which]
                )));
            }
            offsets[which] = Some(offset);
        }
        let mut found = [0usize; N];
        for (i, o) in offsets.iter().enumerate() {
            found[i] = o.ok_or(KvmStatsError::Missing(names[i]))?;
        }
        let data_len = found.iter().max().copied().unwrap_or(0) + 8;
        Ok(StatsLayout {
            data_offset: h.data_offset,
            data_len,
            offsets: found,
        })
    }

    /// The counts from a data block (at least `data_len` bytes), in the order they were named.
    pub fn values(&self, data: &[u8]) -> Result<[u64; N], KvmStatsError> {
        if data.len() < self.data_len {
            return Err(KvmStatsError::Malformed(format!(
                "data block of {} bytes, expected {}",
                data.len(),
                self.data_len
            )));
        }
        Ok(self
            .offsets
            .map(|o| u64::from_le_bytes(data[o..o + 8].try_into().expect("8 bytes"))))
    }

    /// Parses a whole statistics file as read from the descriptor (a recorded blob).
    pub fn parse_file(
        file: &[u8],
        names: &[&'static str; N],
    ) -> Result<(StatsLayout<N>, [u64; N]), KvmStatsError> {
        let h = StatsHeader::parse(file)?;
        let descs = file
            .get(h.desc_offset as usize..)
            .ok_or_else(|| KvmStatsError::Malformed("descriptors past the end".into()))?;
        let layout = StatsLayout::parse(&h, descs, names)?;
        let data = file
            .get(h.data_offset as usize..)
            .ok_or_else(|| KvmStatsError::Malformed("data past the end".into()))?;
        let values = layout.values(data)?;
        Ok((layout, values))
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

impl From<[u64; 3]> for Stage2Pages {
    fn from([pages_4k, pages_2m, pages_1g]: [u64; 3]) -> Self {
        Stage2Pages {
            pages_4k,
            pages_2m,
            pages_1g,
        }
    }
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

/// A vCPU's page-fault counts, as KVM keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultCounts {
    pub taken: u64,
    pub fixed: u64,
    pub emulated: u64,
    pub spurious: u64,
}

impl From<[u64; 4]> for FaultCounts {
    fn from([taken, fixed, emulated, spurious]: [u64; 4]) -> Self {
        FaultCounts {
            taken,
            fixed,
            emulated,
            spurious,
        }
    }
}

impl FaultCounts {
    /// Faults taken that ended in no outcome (retried), as a signed figure: KVM also counts in
    /// `pf_fixed` the faults an asynchronous page fault fixes when its page is ready, which it
    /// never counted as taken, so a vCPU whose waits all end well keeps this near zero, and one
    /// whose fault is retried forever makes it grow with every retry.
    pub fn unresolved(&self) -> i64 {
        let ended = self
            .fixed
            .wrapping_add(self.emulated)
            .wrapping_add(self.spurious);
        self.taken.wrapping_sub(ended) as i64
    }
}

/// A statistics descriptor (KVM's, or a recorded copy of one) and where `N` counts are in it.
#[derive(Debug)]
struct StatsFile<const N: usize> {
    file: File,
    layout: StatsLayout<N>,
}

impl<const N: usize> StatsFile<N> {
    /// Opens the statistics of the VM or vCPU behind `fd` (`of` says which, for messages).
    fn open(
        fd: &impl AsRawFd,
        of: &'static str,
        names: &[&'static str; N],
    ) -> Result<Self, KvmStatsError> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new descriptor (or -1); it
        // reads and writes no memory of ours. `fd` is a live VM or vCPU descriptor borrowed
        // for the call.
        let raw = unsafe { libc::ioctl(fd.as_raw_fd(), KVM_GET_STATS_FD as _, 0) };
        if raw < 0 {
            return Err(KvmStatsError::Open {
                of,
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: `raw` was just returned by the kernel as a new descriptor that nothing else
        // owns; the `File` takes sole ownership and closes it.
        let file = unsafe { File::from_raw_fd(raw) };
        StatsFile::from_file(file, names)
    }

    /// Reads the layout of a statistics file.
    fn from_file(file: File, names: &[&'static str; N]) -> Result<Self, KvmStatsError> {
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
        let layout = StatsLayout::parse(&h, &descs, names)?;
        Ok(StatsFile { file, layout })
    }

    /// The current counts: one `pread` of the data block.
    fn read(&self) -> Result<[u64; N], KvmStatsError> {
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

/// The VM's statistics descriptor and where the page counts are in it.
#[derive(Debug)]
pub struct VmStats(StatsFile<3>);

impl VmStats {
    /// Opens the statistics of the VM behind `vm_fd` and reads their layout.
    pub fn open(vm_fd: &impl AsRawFd) -> Result<VmStats, KvmStatsError> {
        StatsFile::open(vm_fd, "VM", &PAGE_STATS).map(VmStats)
    }

    /// Reads the layout of a statistics file: KVM's descriptor, or a recorded copy of one.
    pub fn from_file(file: File) -> Result<VmStats, KvmStatsError> {
        StatsFile::from_file(file, &PAGE_STATS).map(VmStats)
    }

    /// The current counts: one `pread` of the data block.
    pub fn read(&self) -> Result<Stage2Pages, KvmStatsError> {
        self.0.read().map(Stage2Pages::from)
    }
}

/// A vCPU's statistics descriptor and where its page-fault counts are in it.
#[derive(Debug)]
pub struct VcpuStats(StatsFile<4>);

impl VcpuStats {
    /// Opens the statistics of the vCPU behind `vcpu_fd` and reads their layout.
    pub fn open(vcpu_fd: &impl AsRawFd) -> Result<VcpuStats, KvmStatsError> {
        StatsFile::open(vcpu_fd, "vCPU", &FAULT_STATS).map(VcpuStats)
    }

    /// Reads the layout of a statistics file: KVM's descriptor, or a recorded copy of one.
    pub fn from_file(file: File) -> Result<VcpuStats, KvmStatsError> {
        StatsFile::from_file(file, &FAULT_STATS).map(VcpuStats)
    }

    /// The current counts: one `pread` of the data block.
    pub fn read(&self) -> Result<FaultCounts, KvmStatsError> {
        self.0.read().map(FaultCounts::from)
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

    /// The whole statistics file of a new x86 vCPU, read from `KVM_GET_STATS_FD` on the same
    /// KVM (47 descriptors with 48-byte names; `pf_taken`, `pf_fixed`, `pf_emulate`,
    /// `pf_spurious` at data offsets 832, 840, 848, 856; the data block at 3080).
    pub const NEW_VCPU: &[u8] = include_bytes!("testdata/new-vcpu-kvm-6.18.bin");
    /// Where `pf_taken` is in [`NEW_VCPU`] (`pf_fixed`, `pf_emulate`, `pf_spurious` follow).
    pub const PF_TAKEN: usize = 3080 + 832;

    /// [`NEW_VCPU`] with these `pf_taken`, `pf_fixed`, `pf_emulate`, `pf_spurious`.
    pub fn with_faults(counts: [u64; 4]) -> Vec<u8> {
        let mut blob = NEW_VCPU.to_vec();
        for (i, v) in counts.into_iter().enumerate() {
            let at = PF_TAKEN + 8 * i;
            blob[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        blob
    }

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
