//! Why a backing could not supply a page of its mapping: the cause the monitor names when KVM
//! fails to map guest memory (`KVM_RUN` returns `EFAULT`: the host's page fault on the backing
//! answered SIGBUS) or when the monitor's own access faults.
//!
//! Linux 6.12 tells userspace neither the guest address nor the reason for such an `EFAULT` (only
//! guest_memfd faults fill `KVM_EXIT_MEMORY_FAULT`), so the monitor asks each backing what is
//! wrong with it, using only calls that change nothing: `fstat`, `fstatfs`, `pread` of pages
//! that are not resident (`mincore`), and `fstatat` on the device-dax's sysfs directory, opened
//! when the device was. [`FaultProbe::diagnose`] runs after the guest stopped, under the main
//! thread's seccomp filter, which allows exactly these.

use std::ffi::CStr;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

use super::backing::{Backing, BackingKind};
use super::bytes::Bytes;
use super::mapping::PmemMapping;

/// The read probe of a backing with no obvious cause stops after this many bytes or this long,
/// so a huge backing on a slow device cannot keep the monitor from exiting.
const READ_PROBE_BYTES: u64 = 256 << 20;
const READ_PROBE_TIME: Duration = Duration::from_secs(3);
/// Bytes read at a time by the read probe (one run of non-resident pages is read in pieces).
const READ_PROBE_CHUNK: usize = 1 << 20;
const PAGE: usize = 4096;
/// Pages whose residency `read_probe` asks for at a time (64 MiB of mapping).
const RESIDENCY_WINDOW_PAGES: usize = 16 << 10;

/// What is wrong with a backing.
#[derive(Debug)]
pub enum BackingFault {
    /// The file system holding a sparse file has no free block: a page the guest wrote in a
    /// hole could not be allocated.
    FileSystemFull { free: u64 },
    /// The file is shorter than the mapping (someone truncated it): pages past its end are gone.
    Truncated { size: u64, mapped: u64 },
    /// Reading the backing at `offset` fails: the device returns an I/O error.
    ReadError { offset: u64, source: io::Error },
    /// The device-dax is no longer bound to its driver (unbound, or its namespace disabled or
    /// destroyed): its memory is gone.
    DaxRemoved,
}

impl fmt::Display for BackingFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackingFault::FileSystemFull { free } => write!(
                f,
                "the file system holding the sparse file is full ({} free), so the host could \
                 not allocate a page the guest wrote into a hole",
                Bytes(*free)
            ),
            BackingFault::Truncated { size, mapped } => write!(
                f,
                "the file was truncated to {} under the guest ({} mapped)",
                Bytes(*size),
                Bytes(*mapped)
            ),
            BackingFault::ReadError { offset, source } => {
                write!(f, "reading it at offset {offset:#x} fails: {source}")
            }
            BackingFault::DaxRemoved => write!(
                f,
                "the device-dax was removed (unbound from its driver, or its namespace \
                 disabled) under the guest"
            ),
        }
    }
}

/// What [`FaultProbe::diagnose`] needs that cannot be opened later (the monitor's seccomp
/// filter forbids `open` once the guest runs): a device-dax's sysfs directory.
#[derive(Debug, Default)]
pub struct FaultProbe {
    dax_sysfs: Option<File>,
}

impl FaultProbe {
    /// Opens what the probe of `backing` will need. A device-dax whose sysfs directory cannot be
    /// opened is probed without it (its removal is then not recognised, not an error).
    pub fn new(backing: &Backing) -> FaultProbe {
        let dax_sysfs = match backing.kind() {
            BackingKind::DevDax { .. } => backing
                .file()
                .metadata()
                .ok()
                .and_then(|m| open_path_dir(&dax_sysfs_dir(m.rdev())).ok()),
            _ => None,
        };
        FaultProbe { dax_sysfs }
    }

    /// Why `backing` (mapped as `mapping`) cannot supply its pages, or `None` when nothing is
    /// visibly wrong with it. `offset`, when known, is the backing offset that faulted.
    pub fn diagnose(
        &self,
        backing: &Backing,
        mapping: &PmemMapping,
        offset: Option<u64>,
    ) -> Option<BackingFault> {
        let file = backing.file();
        match backing.kind() {
            BackingKind::DevDax { .. } => {
                let dir = self.dax_sysfs.as_ref()?;
                // The driver link goes when the device is unbound; a destroyed device's whole
                // directory goes, and fstatat in it fails alike.
                match fstatat_nofollow(dir, c"driver") {
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                        Some(BackingFault::DaxRemoved)
                    }
                    _ => None,
                }
            }
            BackingKind::File { .. } => {
                let mapped = mapping.len();
                if let Ok(meta) = file.metadata() {
                    if meta.len() < mapped {
                        return Some(BackingFault::Truncated {
                            size: meta.len(),
                            mapped,
                        });
                    }
                    let sparse = meta.blocks().saturating_mul(512) < meta.len();
                    if sparse {
                        if let Ok(free) = free_bytes(file) {
                            if free < PAGE as u64 {
                                return Some(BackingFault::FileSystemFull { free });
                            }
                        }
                    }
                }
                read_probe(file, mapping, offset)
            }
            BackingKind::BlockDevice => read_probe(file, mapping, offset),
        }
    }
}

/// `/sys/dev/char/MAJ:MIN` of a character device number.
fn dax_sysfs_dir(rdev: u64) -> String {
    format!(
        "{}/dev/char/{}:{}",
        super::dax_sysfs::SYSFS_ROOT,
        libc::major(rdev),
        libc::minor(rdev)
    )
}

fn open_path_dir(path: &str) -> io::Result<File> {
    let c = std::ffi::CString::new(path).map_err(io::Error::other)?;
    // SAFETY: `c` is a NUL-terminated path; open returns a new descriptor or -1 and touches no
    // memory of ours besides reading the path.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by open and is owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn fstatat_nofollow(dir: &File, name: &CStr) -> io::Result<()> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `dir` is an open descriptor, `name` is NUL-terminated, and `st` is a writable stat
    // the call fills.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Bytes free for an unprivileged writer on the file system holding `file` (what a page fault
/// in a hole can allocate; root's reserve is not used by it on tmpfs, and on ext4 only for
/// root-owned processes, so the smaller of the two counts is the honest one).
fn free_bytes(file: &File) -> io::Result<u64> {
    // SAFETY: an all-zero `statfs` is a valid value of this plain C struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `file` is an open descriptor and `st` a writable statfs the call fills.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let blocks = (st.f_bavail as u64).min(st.f_bfree as u64);
    Ok(blocks.saturating_mul(st.f_bsize as u64))
}

/// Reads pages the host does not hold in memory (the ones a guest access can have faulted on)
/// and returns the first read that fails: the page at `offset` first when it is known, then the
/// non-resident pages from the start, within [`READ_PROBE_BYTES`] and [`READ_PROBE_TIME`].
fn read_probe(file: &File, mapping: &PmemMapping, offset: Option<u64>) -> Option<BackingFault> {
    let mut buf = vec![0u8; READ_PROBE_CHUNK];
    if let Some(at) = offset {
        let page = at & !(PAGE as u64 - 1);
        if let Err(source) = file.read_exact_at(&mut buf[..PAGE], page) {
            return Some(BackingFault::ReadError {
                offset: page,
                source,
            });
        }
    }
    let len = mapping.len() as usize;
    let pages = len.div_ceil(PAGE);
    // Residency is asked a window at a time, so a probe of a 1 TiB mapping (which the fault
    // watch may run while the guest lives) needs 16 KiB of memory for it, not 256 MiB.
    let mut resident = vec![0u8; RESIDENCY_WINDOW_PAGES];
    let mut window_start = usize::MAX;
    let mut known = false;
    let mut is_resident = |page: usize| -> bool {
        let window = page - page % RESIDENCY_WINDOW_PAGES;
        if window != window_start {
            window_start = window;
            let n = RESIDENCY_WINDOW_PAGES.min(pages - window);
            // SAFETY: [as_ptr + window * PAGE, + n pages) lies inside the live mapping (page
            // aligned; the last page may be partly past `len`, which mincore rounds to), and
            // `resident` has at least one byte per page of it, as mincore requires; mincore only
            // reads page tables and writes `resident`.
            known = unsafe {
                libc::mincore(
                    mapping.as_ptr().add(window * PAGE).cast(),
                    (n * PAGE).min(len - window * PAGE),
                    resident.as_mut_ptr().cast(),
                )
            } == 0;
        }
        known && resident[page - window] & 1 != 0
    };
    let started = Instant::now();
    let mut read = 0u64;
    let mut page = 0usize;
    while page < pages {
        if is_resident(page) {
            page += 1;
            continue;
        }
        if read >= READ_PROBE_BYTES || started.elapsed() >= READ_PROBE_TIME {
            return None;
        }
        // A run of non-resident pages, read in chunks.
        let mut run = 1;
        while page + run < pages && run * PAGE < READ_PROBE_CHUNK {
            if is_resident(page + run) {
                break;
            }
            run += 1;
        }
        let at = (page * PAGE) as u64;
        let n = (run * PAGE).min(len - page * PAGE);
        if file.read_exact_at(&mut buf[..n], at).is_err() {
            // Find the page within the run.
            for p in 0..run {
                let off = at + (p * PAGE) as u64;
                if let Err(source) = file.read_exact_at(&mut buf[..PAGE], off) {
                    return Some(BackingFault::ReadError {
                        offset: off,
                        source,
                    });
                }
            }
        }
        read += n as u64;
        page += run;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pmem::backing::BackingRequest;

    #[test]
    fn a_healthy_file_has_no_fault_and_a_truncated_one_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.img");
        let f = File::create(&path).unwrap();
        f.set_len(4 << 20).unwrap();
        drop(f);
        let backing = Backing::open(&BackingRequest {
            path: path.clone(),
            size: None,
            readonly: false,
        })
        .unwrap();
        let mapping = backing.map().unwrap();
        let probe = FaultProbe::new(&backing);
        assert!(probe.diagnose(&backing, &mapping, None).is_none());
        assert!(probe.diagnose(&backing, &mapping, Some(8192)).is_none());
        backing.file().set_len(1 << 20).unwrap();
        let fault = probe.diagnose(&backing, &mapping, None).unwrap();
        assert!(matches!(fault, BackingFault::Truncated { .. }), "{fault:?}");
        let text = fault.to_string();
        assert!(text.contains("truncated to 1 MiB"), "{text}");
    }
}
