//! Access to a namespace's bytes for the format step: the [`NamespaceAccess`] trait the planner
//! works against, and [`BackingAccess`], its implementation over an opened backing and its
//! mapping (the module's `unsafe`: copies through the mapping and cache-line flushes).

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

use super::backing::{Backing, BackingKind};
use super::mapping::PmemMapping;

/// Bytes read (or scanned) at a time when checking that an area is blank.
const SCAN_CHUNK: usize = 1 << 20;

/// The few operations the format step needs on a namespace's bytes (offsets are namespace
/// offsets, i.e. backing offsets).
pub trait NamespaceAccess {
    /// Reads `buf.len()` bytes at `offset`.
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// The offset of the first non-zero byte in `range`, `None` if it is all zeros. Holes of a
    /// sparse file are not read.
    fn first_nonzero(&self, range: Range<u64>) -> io::Result<Option<u64>>;
    /// Writes `data` at `offset` and makes it durable before returning.
    fn write_durably(&self, offset: u64, data: &[u8]) -> io::Result<()>;
}

/// [`NamespaceAccess`] over an opened backing and its mapping.
///
/// * Regular files and block devices: `pread`, `pwrite` and `fdatasync` on the backing's open file
///   (the descriptor the mapping was made from, so the page cache is shared and the guest sees
///   the write). Not a `memcpy` into the mapping: writing a hole of a sparse file through a shared
///   mapping raises SIGBUS when the file system is full, where `pwrite` returns `ENOSPC`. On a
///   file system, `fdatasync` also persists the block allocation. The blank check skips holes
///   with `lseek(SEEK_DATA/SEEK_HOLE)` (which moves the descriptor's file offset; nothing else
///   uses it), so a sparse terabyte costs nothing.
/// * Device-dax: it has no `read`/`write`/`fsync` (`dax_fops`), and `msync` fails with `EINVAL`,
///   so reads and writes go through the mapping (a write as one `process_vm_writev`, so SIGKILL
///   cannot tear it) and a write is made durable with `clflush` on every cache line it touched
///   and an `sfence`.
pub struct BackingAccess<'a> {
    file: &'a File,
    mapping: &'a PmemMapping,
    size: u64,
    readonly: bool,
    /// Reads and writes go through the mapping (device-dax); the planner's tests set it to
    /// exercise that path on a file.
    pub(super) via_mapping: bool,
}

impl<'a> BackingAccess<'a> {
    /// `mapping` must be the whole-backing mapping made by `backing.map()`.
    ///
    /// # Panics
    /// If the mapping's length is not the backing's size.
    pub fn new(backing: &'a Backing, mapping: &'a PmemMapping) -> BackingAccess<'a> {
        assert_eq!(
            mapping.len(),
            backing.size(),
            "the mapping is not the backing's"
        );
        BackingAccess {
            file: backing.file(),
            mapping,
            size: backing.size(),
            readonly: backing.readonly(),
            via_mapping: matches!(backing.kind(), BackingKind::DevDax { .. }),
        }
    }

    fn check(&self, offset: u64, len: usize) -> io::Result<()> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "range {offset:#x}+{len:#x} is outside the backing of {:#x} bytes",
                    self.size
                ),
            )),
        }
    }

    /// The host address of namespace offset `offset`, which [`check`](Self::check) has
    /// accepted (with the length the caller then uses).
    fn mapped(&self, offset: u64) -> *mut u8 {
        // SAFETY: callers checked offset + len <= size, the mapping's length, so the result stays
        // inside the mapping (or one past its end for len 0).
        unsafe { self.mapping.as_ptr().add(offset as usize) }
    }

    fn scan_file(&self, range: Range<u64>) -> io::Result<Option<u64>> {
        let mut buf = vec![0u8; SCAN_CHUNK];
        let mut pos = range.start;
        while pos < range.end {
            let n = (range.end - pos).min(SCAN_CHUNK as u64) as usize;
            self.file.read_exact_at(&mut buf[..n], pos)?;
            if let Some(i) = first_nonzero_in(&buf[..n]) {
                return Ok(Some(pos + i as u64));
            }
            pos += n as u64;
        }
        Ok(None)
    }

    fn scan_sparse_file(&self, range: Range<u64>) -> io::Result<Option<u64>> {
        let mut pos = range.start;
        while pos < range.end {
            let data = match seek(self.file, pos, libc::SEEK_DATA) {
                Ok(data) => data,
                // No data at or after pos.
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Ok(None),
                // A file system without SEEK_DATA: read it all.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) => {
                    return self.scan_file(pos..range.end)
                }
                Err(e) => return Err(e),
            };
            if data >= range.end {
                return Ok(None);
            }
            let hole = seek(self.file, data, libc::SEEK_HOLE)?;
            // A hole at or before `data` (the file changed under us) must not stall the loop.
            let stop = if hole > data {
                hole.min(range.end)
            } else {
                range.end
            };
            if let Some(off) = self.scan_file(data.max(pos)..stop)? {
                return Ok(Some(off));
            }
            pos = stop;
        }
        Ok(None)
    }
}

/// `lseek(fd, offset, whence)`.
fn seek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<u64> {
    let offset = libc::off_t::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
    // SAFETY: lseek on a descriptor `file` owns; it touches no memory of ours.
    let r = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}

impl NamespaceAccess for BackingAccess<'_> {
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check(offset, buf.len())?;
        if !self.via_mapping {
            return self.file.read_exact_at(buf, offset);
        }
        let src = self.mapped(offset);
        // SAFETY: [src, src + len) lies inside the live mapping (checked), which is readable, and
        // cannot overlap `buf` (a Rust allocation, not part of the mapping). The guest is not
        // running yet, so nothing writes the bytes concurrently.
        unsafe { std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    fn first_nonzero(&self, range: Range<u64>) -> io::Result<Option<u64>> {
        if range.start >= range.end {
            return Ok(None);
        }
        self.check(range.start, (range.end - range.start) as usize)?;
        if !self.via_mapping {
            return self.scan_sparse_file(range);
        }
        let mut pos = range.start;
        while pos < range.end {
            let n = (range.end - pos).min(SCAN_CHUNK as u64) as usize;
            // SAFETY: [pos, pos + n) lies inside the live, readable mapping (checked above); the
            // guest is not running, so nothing mutates those bytes while the slice lives.
            let bytes = unsafe { std::slice::from_raw_parts(self.mapped(pos), n) };
            if let Some(i) = first_nonzero_in(bytes) {
                return Ok(Some(pos + i as u64));
            }
            pos += n as u64;
        }
        Ok(None)
    }

    fn write_durably(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check(offset, data.len())?;
        if self.readonly {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the backing is open read-only (readonly=on)",
            ));
        }
        if !self.via_mapping {
            self.file.write_all_at(data, offset)?;
            return self.file.sync_data();
        }
        let dst = self.mapped(offset);
        copy_in_kernel(dst, data)?;
        flush_cache_lines(dst, data.len())
    }
}

/// Copies `data` to `dst`, an address in this process's writable mapping of a backing, with one
/// `process_vm_writev` on the monitor itself instead of a `memcpy`. Why: a signal, even SIGKILL,
/// takes effect only when a system call returns, and the kernel copies a page in one go, so an
/// info block (4 KiB, page aligned) is either written whole or not at all when the monitor is
/// killed; a user-space copy killed midway leaves a torn block that is neither the old one nor a
/// valid new one. (Files and block devices get the same from `pwrite`.)
fn copy_in_kernel(dst: *mut u8, data: &[u8]) -> io::Result<()> {
    let local = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let remote = libc::iovec {
        iov_base: dst.cast(),
        iov_len: data.len(),
    };
    // SAFETY: `local` describes `data`, readable for its length; `remote` describes
    // [dst, dst + len) of our own address space, which the caller checked lies inside the live,
    // writable mapping, so the kernel writes nothing else; no Rust reference covers those
    // bytes, and the guest is not running.
    let n = unsafe { libc::process_vm_writev(libc::getpid(), &local, 1, &remote, 1, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != data.len() {
        return Err(io::Error::other(format!(
            "process_vm_writev wrote {n} of {} bytes",
            data.len()
        )));
    }
    Ok(())
}

/// Writes back and invalidates every cache line of `[addr, addr + len)` and fences, so that the
/// stores before it are in the persistence domain (device-dax has no `msync`). `clflush` is in
/// every x86-64 CPU; `clflushopt`/`clwb` would be faster but need a feature check, and this is
/// one 4 KiB block.
#[cfg(target_arch = "x86_64")]
pub(crate) fn flush_cache_lines(addr: *const u8, len: usize) -> io::Result<()> {
    use std::arch::x86_64::{_mm_clflush, _mm_sfence};
    const LINE: usize = 64;
    let mut line = addr as usize & !(LINE - 1);
    let end = addr as usize + len;
    while line < end {
        // SAFETY: `line` is the start of a cache line overlapping [addr, addr + len), a range of
        // mapped memory; the mapping starts on a page boundary, so the whole line is mapped.
        // clflush only writes the line back and invalidates it; memory contents do not change.
        unsafe { _mm_clflush(line as *const u8) };
        line += LINE;
    }
    // SAFETY: sfence only orders stores; SSE is part of the x86-64 baseline.
    unsafe { _mm_sfence() };
    Ok(())
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn flush_cache_lines(_addr: *const u8, _len: usize) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "flushing a device-dax write is implemented for x86-64 only",
    ))
}

/// Index of the first non-zero byte. OR-folds page-sized chunks first (vectorises well) and
/// looks for the byte only in a chunk that has one.
fn first_nonzero_in(buf: &[u8]) -> Option<usize> {
    let mut base = 0;
    for chunk in buf.chunks(4096) {
        if chunk.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return chunk.iter().position(|&b| b != 0).map(|i| base + i);
        }
        base += chunk.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_nonzero_in_finds_the_first_byte() {
        let mut v = vec![0u8; 3 * 4096 + 17];
        assert_eq!(first_nonzero_in(&v), None);
        v[3 * 4096 + 16] = 1;
        assert_eq!(first_nonzero_in(&v), Some(3 * 4096 + 16));
        v[4095] = 9;
        assert_eq!(first_nonzero_in(&v), Some(4095));
        v[0] = 1;
        assert_eq!(first_nonzero_in(&v), Some(0));
        assert_eq!(first_nonzero_in(&[]), None);
    }
}
