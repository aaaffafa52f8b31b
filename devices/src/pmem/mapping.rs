//! The whole backing mapped into the monitor: [`PmemMapping`] owns the mmap (and, through the
//! shared open file, the backing's lock) and unmaps it when dropped. The mapping is made inside an
//! aligned `PROT_NONE` reservation so that KVM can back the guest range with huge pages.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use log::{debug, warn};

use super::backing::{Backing, BackingError, BackingKind, PMEM_SIZE_ALIGN};
use super::bytes::Bytes;

/// An anonymous `PROT_NONE` range of `len + align` bytes: address space to carve an
/// `align`-aligned mapping of `len` bytes out of. Dropping it unmaps whatever is left of it.
struct Reservation {
    base: *mut libc::c_void,
    total: usize,
    aligned: usize,
    len: usize,
}

impl Reservation {
    fn new(len: usize, align: usize) -> io::Result<Reservation> {
        let total = len
            .checked_add(align)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "size too large"))?;
        // SAFETY: a fresh anonymous PROT_NONE mapping at an address of the kernel's choice; it
        // replaces nothing, and nothing can access it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let aligned = (base as usize).next_multiple_of(align);
        Ok(Reservation {
            base,
            total,
            aligned,
            len,
        })
    }

    /// Maps `file` from offset 0 over the aligned part, replacing that part of the reservation.
    /// On failure the reservation is as it was, ready for another attempt: the failures we retry
    /// (`EOPNOTSUPP` for `MAP_SYNC`, `EINVAL` for an unknown map type) are flag checks `do_mmap()`
    /// makes before it touches the range. (A driver's `->mmap` can also say `EINVAL`, after the
    /// kernel has taken the range; for device-dax that is `check_vma()`, whose alignment rules
    /// `check_dax_align` and the aligned address already meet. This is QEMU's `qemu_ram_mmap()`
    /// pattern.)
    fn map_file(&self, file: &File, prot: libc::c_int, flags: libc::c_int) -> io::Result<()> {
        // SAFETY: MAP_FIXED over [aligned, aligned + len), which lies inside our own PROT_NONE
        // reservation (aligned - base < align and total = len + align), so it replaces nothing but
        // that reservation. The descriptor is owned by `file`; the kernel keeps its own reference.
        let addr = unsafe {
            libc::mmap(
                self.aligned as *mut libc::c_void,
                self.len,
                prot,
                flags | libc::MAP_FIXED,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        debug_assert_eq!(addr as usize, self.aligned);
        Ok(())
    }

    /// After a successful [`map_file`](Self::map_file): gives back the slack on both sides of the
    /// file mapping and hands the mapping, `[addr, addr + len)`, to the caller.
    fn into_mapping(self) -> *mut u8 {
        let this = std::mem::ManuallyDrop::new(self);
        let base = this.base as usize;
        let slack = [
            (base, this.aligned - base),
            (
                this.aligned + this.len,
                base + this.total - (this.aligned + this.len),
            ),
        ];
        for (start, len) in slack {
            if len == 0 {
                continue;
            }
            // SAFETY: [start, start + len) is reservation slack outside the file mapping, still
            // PROT_NONE and ours alone.
            if unsafe { libc::munmap(start as *mut libc::c_void, len) } != 0 {
                warn!(
                    "munmap of pmem reservation slack failed: {}",
                    io::Error::last_os_error()
                );
            }
        }
        this.aligned as *mut u8
    }
}

impl Drop for Reservation {
    /// Gives the reservation back when no mapping was made in it.
    fn drop(&mut self) {
        // SAFETY: [base, base + total) is our PROT_NONE reservation; no mapping inside it has been
        // handed out (`into_mapping` does not run this).
        if unsafe { libc::munmap(self.base, self.total) } != 0 {
            warn!(
                "munmap of a pmem reservation failed: {}",
                io::Error::last_os_error()
            );
        }
    }
}

/// A whole backing mapped into the monitor's address space, ready for a KVM memory slot. Holds
/// the backing's open file (and so its lock) until dropped; dropping unmaps it, so remove the KVM
/// slot first.
#[derive(Debug)]
pub struct PmemMapping {
    addr: *mut u8,
    len: usize,
    kind: BackingKind,
    readonly: bool,
    path: PathBuf,
    _file: Arc<File>,
}

// SAFETY: the mapping is plain shared memory owned by this value; the pointer is only an address.
// Concurrent access to the bytes (by vCPUs through KVM, or by the monitor) is synchronised by the
// guest, as for any guest memory; `flush` and `drop` only make system calls on the range.
unsafe impl Send for PmemMapping {}
// SAFETY: see `Send`; `&PmemMapping` exposes only the address and `flush` (an msync).
unsafe impl Sync for PmemMapping {}

impl PmemMapping {
    /// Maps the whole `backing` shared, read-only when the backing is. The host address is aligned
    /// to 2 MiB, or to the device alignment of a device-dax when larger, so that KVM can back the
    /// guest range with huge pages (and a device-dax accepts the mapping at all).
    ///
    /// * file: `MAP_SHARED | MAP_NORESERVE`. A writable file mapping first asks for
    ///   `MAP_SHARED_VALIDATE | MAP_SYNC`, which only a file on a DAX file system grants (then
    ///   guest cache flushes alone make writes durable, as on device-dax); elsewhere the kernel
    ///   answers `EOPNOTSUPP` before touching anything and we map plainly.
    /// * device-dax: `MAP_SHARED_VALIDATE | MAP_SYNC` when writable, falling back to
    ///   `MAP_SHARED` with a warning on `EOPNOTSUPP`/`EINVAL` (kernels without it).
    /// * block device: `MAP_SHARED`.
    pub fn new(backing: &Backing) -> Result<PmemMapping, BackingError> {
        let fail = |op, e| BackingError::io(backing.path(), op, e);
        let len = usize::try_from(backing.size()).map_err(|_| {
            fail(
                "mmap",
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "size exceeds the address space",
                ),
            )
        })?;
        let align = match *backing.kind() {
            BackingKind::DevDax { align } => align.max(PMEM_SIZE_ALIGN),
            _ => PMEM_SIZE_ALIGN,
        } as usize;
        let prot = if backing.readonly() {
            libc::PROT_READ
        } else {
            libc::PROT_READ | libc::PROT_WRITE
        };
        let sync = libc::MAP_SHARED_VALIDATE | libc::MAP_SYNC;
        // (flags, whether they include MAP_SYNC), in order of preference. Only the last attempt's
        // failure is reported.
        let attempts: &[(libc::c_int, bool)] = match (*backing.kind(), backing.readonly()) {
            (BackingKind::File { .. }, false) => &[
                (sync | libc::MAP_NORESERVE, true),
                (libc::MAP_SHARED | libc::MAP_NORESERVE, false),
            ],
            (BackingKind::File { .. }, true) => &[(libc::MAP_SHARED | libc::MAP_NORESERVE, false)],
            (BackingKind::DevDax { .. }, false) => &[(sync, true), (libc::MAP_SHARED, false)],
            // MAP_SYNC only concerns write faults.
            (BackingKind::DevDax { .. }, true) | (BackingKind::BlockDevice, _) => {
                &[(libc::MAP_SHARED, false)]
            }
        };

        let reservation = Reservation::new(len, align).map_err(|e| fail("mmap", e))?;
        let mut attempts = attempts.iter().peekable();
        let synchronous = loop {
            let &(flags, synchronous) = attempts.next().expect("at least one attempt");
            match reservation.map_file(backing.file(), prot, flags) {
                Ok(()) => break synchronous,
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL))
                        && attempts.peek().is_some() =>
                {
                    if let BackingKind::DevDax { .. } = *backing.kind() {
                        warn!(
                            "{}: the host kernel refused MAP_SYNC ({e}); mapping without it \
                             (guest writes are still durable once the guest flushes its caches)",
                            backing.path().display()
                        );
                    } else {
                        debug!(
                            "{}: no MAP_SYNC ({e}): not on a DAX file system",
                            backing.path().display()
                        );
                    }
                }
                Err(e) => return Err(fail("mmap", e)),
            }
        };
        let addr = reservation.into_mapping();
        if let BackingKind::File { .. } = *backing.kind() {
            advise_huge_pages(addr, len, backing.path());
        }
        debug!(
            "{}: mapped {} at {addr:p}{}",
            backing.path().display(),
            Bytes(backing.size()),
            if synchronous { " with MAP_SYNC" } else { "" }
        );
        Ok(PmemMapping {
            addr,
            len,
            kind: *backing.kind(),
            readonly: backing.readonly(),
            path: backing.path().to_path_buf(),
            _file: Arc::clone(backing.shared_file()),
        })
    }

    /// Host address of byte 0 of the backing; aligned to 2 MiB (and to a device-dax's alignment).
    pub fn as_ptr(&self) -> *mut u8 {
        self.addr
    }

    pub fn len(&self) -> u64 {
        self.len as u64
    }

    /// Never true: a backing has at least 2 MiB. (For clippy's `len_without_is_empty`.)
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn kind(&self) -> &BackingKind {
        &self.kind
    }

    /// Whether the mapping is read-only (a `readonly=on` backing).
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// The backing's path, for messages.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The backing's open file, the descriptor the mapping was made from (same page cache).
    pub fn file(&self) -> &File {
        &self._file
    }

    /// Makes bytes `[offset, offset + len)` of the backing durable, as [`flush`](Self::flush)
    /// does for the whole mapping: an `msync` of the pages holding them for a file or block
    /// device, cache-line write-backs for device-dax (which has no `msync`). For label writes
    /// (`super::labels`), which must be durable before the guest's `_DSM` call returns.
    pub fn flush_range(&self, offset: u64, len: u64) -> Result<(), BackingError> {
        let end = offset.checked_add(len).filter(|&e| e <= self.len as u64);
        let Some(end) = end else {
            return Err(BackingError::io(
                &self.path,
                "msync",
                io::Error::new(io::ErrorKind::InvalidInput, "range outside the mapping"),
            ));
        };
        if self.readonly || len == 0 {
            return Ok(());
        }
        if matches!(self.kind, BackingKind::DevDax { .. }) {
            // In range (checked above) of the live mapping.
            let start = self.addr.wrapping_add(offset as usize);
            return super::namespace_io::flush_cache_lines(start, len as usize)
                .map_err(|e| BackingError::io(&self.path, "clflush", e));
        }
        let page = geometry::PAGE_SIZE;
        let first = offset - offset % page;
        let last = end.next_multiple_of(page).min(self.len as u64);
        // SAFETY: [addr + first, addr + last) lies inside the mapping this value owns (`end` is
        // at most its length, `first` is page-aligned as msync requires, and the mapping starts
        // on a 2 MiB boundary); msync only writes back dirty pages and changes no memory.
        let rc = unsafe {
            libc::msync(
                self.addr.wrapping_add(first as usize).cast(),
                (last - first) as usize,
                libc::MS_SYNC,
            )
        };
        if rc != 0 {
            return Err(BackingError::io(
                &self.path,
                "msync",
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Makes the guest's writes so far durable, as far as the host side can.
    ///
    /// What the host guarantees, per kind of backing (the README's text):
    ///
    /// * **Regular file.** The mapping is `MAP_SHARED`: every guest store lands directly in the
    ///   host page cache of the file. Those pages belong to the kernel, not to the monitor, so
    ///   the monitor dying in any way, SIGKILL included, loses nothing: other readers of the file
    ///   see the data at once and the kernel writes it back on its own (within
    ///   `vm.dirty_expire_centisecs`, 30 s by default). On guest poweroff, SIGTERM and error
    ///   exits the monitor calls this, an `msync(MS_SYNC)` of the whole mapping (only dirty
    ///   pages cost anything), so the data is on stable storage when the monitor exits. Not
    ///   guaranteed: a host crash or power loss before that writeback, because the guest's own
    ///   flush (cache-line writeback and fence) never reaches the monitor or the host's disk.
    ///   Exception: a file on a DAX file system mapped with `MAP_SYNC` (write faults synchronous
    ///   with the file system's metadata; the mapping log line says so) behaves like device-dax.
    /// * **Block device** (e.g. a host `/dev/pmemN`): as a regular file, through the block
    ///   device's page cache; the `msync` also sends a cache flush to the device.
    /// * **Device-dax** (`/dev/daxX.Y`): there is no page cache and nothing to do here; `msync`
    ///   and `fsync` fail with `EINVAL` on device-dax. Guest stores go through the CPU caches
    ///   straight to the device's memory, and a write is durable once the guest has flushed it
    ///   from its caches (CLWB/CLFLUSHOPT + SFENCE, which the guest's pmem driver does on
    ///   fsync/flush). The monitor plays no part, so SIGKILL or a monitor crash loses nothing the
    ///   guest flushed; across host power loss it is as durable as the device (real persistent
    ///   memory with ADR; a devdax carved from ordinary RAM lives only as long as the host).
    ///
    /// A read-only mapping has nothing to flush.
    pub fn flush(&self) -> Result<(), BackingError> {
        if self.readonly || matches!(self.kind, BackingKind::DevDax { .. }) {
            return Ok(());
        }
        // SAFETY: [addr, addr + len) is the mapping this value owns; msync only writes back its
        // dirty pages and does not change the memory.
        if unsafe { libc::msync(self.addr.cast(), self.len, libc::MS_SYNC) } != 0 {
            return Err(BackingError::io(
                &self.path,
                "msync",
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }
}

/// Asks for transparent huge pages in a regular file's mapping (`MADV_HUGEPAGE`, as QEMU does for
/// guest RAM). KVM never maps a guest page larger than the monitor's own mapping of it, so a
/// backing on tmpfs (or shmem) with `huge=advise` or `huge=within_size`, or a read-only file with
/// large folios, only gets 2 MiB stage-2 pages this way; a DAX file system maps PMD faults with
/// or without it. Failure (`EINVAL` on a kernel without THP) costs only speed, so it is a debug
/// line.
fn advise_huge_pages(addr: *mut u8, len: usize, path: &std::path::Path) {
    // SAFETY: [addr, addr + len) is the file mapping just made, owned by the caller; MADV_HUGEPAGE
    // sets a flag on the VMA and changes no memory contents.
    if unsafe { libc::madvise(addr.cast(), len, libc::MADV_HUGEPAGE) } != 0 {
        debug!(
            "{}: no MADV_HUGEPAGE ({}): the host maps it with small pages",
            path.display(),
            io::Error::last_os_error()
        );
    }
}

impl Drop for PmemMapping {
    fn drop(&mut self) {
        // SAFETY: [addr, addr + len) is the mapping this value owns and nobody uses it after this
        // value is gone (the owner removes the KVM slot first, see the type's docs).
        if unsafe { libc::munmap(self.addr.cast(), self.len) } != 0 {
            warn!(
                "{}: munmap failed: {}",
                self.path.display(),
                io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs::{self, File};
    use std::io::Read;
    use std::path::Path;

    use super::*;
    use crate::pmem::test_support::{maps_perms, req, write_file, MIB};

    #[test]
    fn map_write_flush_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rw.img");
        let b = Backing::open(&req(&path, Some(4 * MIB), false)).unwrap();
        let m = b.map().unwrap();
        assert_eq!(m.len(), 4 * MIB);
        assert!(!m.is_empty());
        assert_eq!(m.as_ptr() as usize % (2 << 20), 0, "{:p}", m.as_ptr());
        assert_eq!(maps_perms(m.as_ptr()), "rw-s");
        let writes: [(usize, &[u8]); 3] = [
            (0, b"head"),
            (4096, b"info"),
            (4 * MIB as usize - 4, b"tail"),
        ];
        for (off, bytes) in writes {
            // SAFETY: off + bytes.len() <= len: inside the mapping, which is writable.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), m.as_ptr().add(off), bytes.len())
            };
        }
        m.flush().unwrap();

        let mut data = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut data).unwrap();
        assert_eq!(data.len() as u64, 4 * MIB);
        for (off, bytes) in writes {
            assert_eq!(&data[off..off + bytes.len()], bytes);
        }
        assert!(data[8..4096].iter().all(|&b| b == 0));
    }

    /// The `VmFlags` line of /proc/self/smaps for the mapping that starts at `addr`.
    fn vm_flags(addr: *mut u8) -> Vec<String> {
        let smaps = fs::read_to_string("/proc/self/smaps").unwrap();
        let want = format!("{:x}-", addr as usize);
        let entry = smaps
            .split_inclusive('\n')
            .skip_while(|l| !l.starts_with(&want))
            .skip(1)
            .find(|l| l.starts_with("VmFlags:"))
            .unwrap_or_else(|| panic!("no VmFlags for {addr:p} in /proc/self/smaps"));
        entry["VmFlags:".len()..]
            .split_whitespace()
            .map(String::from)
            .collect()
    }

    /// File mappings ask for transparent huge pages ("hg"), the precondition for 2 MiB stage-2
    /// pages on tmpfs; read-only ones too (large folios of a file read-only mapped).
    #[test]
    fn file_mappings_ask_for_huge_pages() {
        if !Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists() {
            panic!("this test needs a kernel with CONFIG_TRANSPARENT_HUGEPAGE");
        }
        let dir = tempfile::tempdir().unwrap();
        for readonly in [false, true] {
            let path = dir.path().join(format!("thp-{readonly}.img"));
            write_file(&path, 4 * MIB, 1);
            let b = Backing::open(&req(&path, Some(4 * MIB), readonly)).unwrap();
            let m = b.map().unwrap();
            let flags = vm_flags(m.as_ptr());
            assert!(
                flags.iter().any(|f| f == "hg"),
                "readonly={readonly}: {flags:?}"
            );
        }
    }

    #[test]
    fn readonly_mapping_is_prot_read_and_sees_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro.img");
        write_file(&path, 2 * MIB, 9);
        let b = Backing::open(&req(&path, Some(2 * MIB), true)).unwrap();
        let m = b.map().unwrap();
        assert_eq!(maps_perms(m.as_ptr()), "r--s");
        assert_eq!(m.as_ptr() as usize % (2 << 20), 0);
        let expect = fs::read(&path).unwrap();
        // SAFETY: the mapping is readable and `len` bytes long.
        let seen = unsafe { std::slice::from_raw_parts(m.as_ptr(), m.len() as usize) };
        assert!(seen == expect.as_slice());
        m.flush().unwrap();
    }
}
