//! The host side of a pmem device (its "backing"): open, lock, size and map it.
//!
//! A backing is one of
//!
//! * a **regular file**: used at its length, or, when the path does not exist and `size=` is
//!   given, created sparse (`O_CREAT|O_EXCL`, mode 0600) at that size. An existing file is never
//!   resized: a `size=` that disagrees with it is an error.
//! * a **device-dax character device** (`/dev/daxX.Y`): `stat` says 0 bytes, so size and
//!   alignment come from sysfs (`/sys/dev/char/MAJ:MIN/{size,align}`, the dax bus attributes of
//!   `drivers/dax/bus.c`; see [`super::dax_sysfs`]). The device only accepts shared mappings whose address and length are multiples of its alignment.
//! * a **block device** such as a host `/dev/pmemN`: size from `BLKGETSIZE64`. Opened with
//!   `O_EXCL` when read-write, so a mounted device or one another program holds exclusively is
//!   refused instead of being corrupted under a file system.
//!
//! [`Backing::open`] (or [`Backing::open_all`] for the whole command line) checks everything the
//! user can get wrong before any KVM object exists; every refusal is a [`BackingError`] whose
//! `Display` is one line starting with the path. Nothing in this module writes to an existing
//! backing: the only write is the `ftruncate` that sizes a file it has just created, and such a
//! file is removed again if the run fails before the guest starts ([`Backing::abandon`]).
//!
//! # Locking
//! Each backing takes a `flock` right after it is opened: exclusive for read-write, shared for
//! `readonly=on`, so two monitors cannot map one backing read-write while any number may share it
//! read-only. `flock` (not `fcntl` record locks) because its locks belong to the open file
//! description: they are released only when the last descriptor of it closes, survive a `dup`,
//! and conflict between two opens within one process, whereas `fcntl` locks are per process and
//! are silently dropped when *any* descriptor of the file is closed. The same backing given twice
//! to one monitor is found earlier and reported as such by comparing identities
//! ([`BackingId`]: device and inode, or the device number of a device node), which also catches
//! symbolic and hard links. The lock is advisory: it stops other monitors and cooperating tools
//! (`flock(1)`), not a process that ignores it.
//!
//! # Where the rest lives
//! Device-dax geometry comes from [`super::dax_sysfs`]; [`Backing::map`] hands the open backing to
//! [`super::mapping`], whose [`PmemMapping`] owns the mmap. See [`PmemMapping::flush`] for what the
//! host guarantees about guest writes for each kind of backing.

use std::collections::HashMap;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use log::{debug, warn};

use super::dax_sysfs::{self, probe_dax, DaxGeometry};

mod error;

pub use self::error::BackingError;
// Re-exported where callers have always found them.
pub use super::bytes::Bytes;
pub use super::mapping::PmemMapping;

/// Backing sizes must be multiples of this (2 MiB): the guest hot-adds pmem in 2 MiB subsections
/// and the info block's alignment rules assume it; it also lets KVM back the range with 2 MiB
/// pages. The guest geometry's pmem size granule.
pub use geometry::PMEM_SIZE_GRANULE as PMEM_SIZE_ALIGN;

/// Largest device-dax alignment we can map: the biggest page size on x86-64 (a PUD, 1 GiB).
const MAX_DAX_ALIGN: u64 = 1 << 30;
/// Smallest device-dax alignment: one base page.
const MIN_DAX_ALIGN: u64 = 4096;

mod sys {
    // `BLKGETSIZE64` is `_IOR(0x12, 114, size_t)` (`include/uapi/linux/fs.h`) = 0x80081272.
    vmm_sys_util::ioctl_ior_nr!(BLKGETSIZE64, 0x12, 114, u64);
    // `BLKROGET` is `_IO(0x12, 94)`; it stores an int (1 = read-only).
    vmm_sys_util::ioctl_io_nr!(BLKROGET, 0x12, 94);
}

/// What the user asked for in one `--pmem` option, as far as the backing is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingRequest {
    pub path: PathBuf,
    /// Size of a file to create; for an existing backing it must equal the backing's size.
    pub size: Option<u64>,
    /// Open and map read-only, take a shared lock.
    pub readonly: bool,
}

/// What kind of object the backing is; decides how it is sized, mapped and flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackingKind {
    /// A regular file; `created` when this run created it (from `size=`).
    File { created: bool },
    /// A device-dax character device; `align` is its mapping alignment in bytes (4 KiB, 2 MiB or
    /// 1 GiB).
    DevDax { align: u64 },
    /// A block device, mapped through its page cache.
    BlockDevice,
}

impl BackingKind {
    fn noun(&self) -> &'static str {
        match self {
            BackingKind::File { .. } => "file",
            BackingKind::DevDax { .. } => "device-dax",
            BackingKind::BlockDevice => "block device",
        }
    }
}

/// What makes two paths the same backing: the inode for a regular file (so symbolic and hard
/// links compare equal), the device number for a device node (so two nodes of one device compare
/// equal too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackingId {
    /// `st_dev` and `st_ino` of a regular file.
    Inode { dev: u64, ino: u64 },
    /// `st_rdev` of a character device node.
    CharDevice { rdev: u64 },
    /// `st_rdev` of a block device node.
    BlockDevice { rdev: u64 },
}

impl BackingId {
    fn of(meta: &Metadata) -> BackingId {
        let ft = meta.file_type();
        if ft.is_char_device() {
            BackingId::CharDevice { rdev: meta.rdev() }
        } else if ft.is_block_device() {
            BackingId::BlockDevice { rdev: meta.rdev() }
        } else {
            BackingId::Inode {
                dev: meta.dev(),
                ino: meta.ino(),
            }
        }
    }
}

/// An opened, locked, sized backing. The lock is held as long as the open file lives: by this
/// value and by every [`PmemMapping`] made from it.
#[derive(Debug)]
pub struct Backing {
    file: Arc<File>,
    path: PathBuf,
    canonical: PathBuf,
    kind: BackingKind,
    size: u64,
    readonly: bool,
    id: BackingId,
}

impl Backing {
    /// Opens, locks and sizes one backing. To open the backings of a whole command line use
    /// [`Backing::open_all`], which also tells the same backing given twice apart from a backing
    /// locked by another monitor.
    pub fn open(req: &BackingRequest) -> Result<Backing, BackingError> {
        open_in(req, Path::new(dax_sysfs::SYSFS_ROOT), &[])
    }

    /// Opens every backing in order. A backing that is one already opened (same [`BackingId`],
    /// whatever the path) is refused with [`BackingError::SameBacking`] before it is opened, so
    /// the user is told about the duplicate rather than about a lock conflict with ourselves. On
    /// any error the backings opened so far are [abandoned](Backing::abandon): files this run
    /// created are removed again.
    pub fn open_all(reqs: &[BackingRequest]) -> Result<Vec<Backing>, BackingError> {
        open_all_in(reqs, Path::new(dax_sysfs::SYSFS_ROOT))
    }

    /// The size of the backing in bytes: a multiple of [`PMEM_SIZE_ALIGN`] (and of the alignment
    /// of a device-dax).
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn kind(&self) -> &BackingKind {
        &self.kind
    }

    /// Opened and locked read-only (`readonly=on`): map it into a read-only KVM slot and mark the
    /// DIMM not armed.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// The path as the user gave it (what messages should name).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path with symbolic links resolved, absolute.
    pub fn canonical_path(&self) -> &Path {
        &self.canonical
    }

    pub fn identity(&self) -> BackingId {
        self.id
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Maps the whole backing shared, read-only when the backing is: see [`PmemMapping::new`].
    pub fn map(&self) -> Result<PmemMapping, BackingError> {
        PmemMapping::new(self)
    }

    /// The open file, shared with every [`PmemMapping`] made from it (which keeps the lock).
    pub(super) fn shared_file(&self) -> &Arc<File> {
        &self.file
    }

    /// Closes the backing and, if this run created the file, removes it again: for an error exit
    /// before the guest ran, so that a failed run leaves nothing behind. The file is removed only
    /// if the path still names the inode we created.
    pub fn abandon(self) {
        if self.kind == (BackingKind::File { created: true }) {
            remove_if_same(&self.canonical, self.id);
        }
    }
}

/// Rejects the same backing given twice (same [`BackingId`], whatever the paths), naming both
/// paths. [`Backing::open_all`] does this as it goes; this is for callers that open backings one
/// by one.
pub fn check_distinct(backings: &[&Backing]) -> Result<(), BackingError> {
    let mut seen: HashMap<BackingId, &Path> = HashMap::new();
    for b in backings {
        if let Some(first) = seen.insert(b.id, &b.path) {
            return Err(BackingError::SameBacking {
                path: b.path.clone(),
                first: first.to_path_buf(),
            });
        }
    }
    Ok(())
}

fn open_all_in(reqs: &[BackingRequest], sysfs: &Path) -> Result<Vec<Backing>, BackingError> {
    let mut opened: Vec<Backing> = Vec::with_capacity(reqs.len());
    for req in reqs {
        match open_in(req, sysfs, &opened) {
            Ok(b) => opened.push(b),
            Err(e) => {
                opened.into_iter().for_each(Backing::abandon);
                return Err(e);
            }
        }
    }
    Ok(opened)
}

/// [`Backing::open`] with the sysfs root as a parameter (tests fake device-dax sysfs entries) and
/// the backings already opened (to report duplicates before locking).
fn open_in(
    req: &BackingRequest,
    sysfs: &Path,
    opened: &[Backing],
) -> Result<Backing, BackingError> {
    let path = req.path.as_path();
    if let Some(size) = req.size {
        check_size_option(path, size)?;
    }
    match fs::metadata(path) {
        Ok(meta) => open_existing(req, &meta, sysfs, opened),
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_file(req),
        Err(e) => Err(BackingError::path(path, "cannot inspect", e)),
    }
}

/// The user's `size=` on its own: above zero and a multiple of 2 MiB.
pub fn check_size_option(path: &Path, size: u64) -> Result<(), BackingError> {
    if size == 0 {
        return Err(BackingError::ZeroSize {
            path: path.to_path_buf(),
        });
    }
    if !size.is_multiple_of(PMEM_SIZE_ALIGN) {
        return Err(BackingError::SizeNotAligned {
            path: path.to_path_buf(),
            size,
            next: next_multiple(size),
        });
    }
    Ok(())
}

fn next_multiple(size: u64) -> u64 {
    size.checked_next_multiple_of(PMEM_SIZE_ALIGN)
        .unwrap_or(u64::MAX - (u64::MAX % PMEM_SIZE_ALIGN))
}

/// How an existing path will be opened and sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeClass {
    File,
    Block,
    Dax(DaxGeometry),
}

fn open_existing(
    req: &BackingRequest,
    meta: &Metadata,
    sysfs: &Path,
    opened: &[Backing],
) -> Result<Backing, BackingError> {
    let path = req.path.as_path();
    // Classify before opening: opening some character devices has side effects (a watchdog
    // starts, a tty becomes our controlling terminal) and a FIFO blocks.
    let ft = meta.file_type();
    let unsupported = |what: String| BackingError::UnsupportedType {
        path: path.to_path_buf(),
        what,
    };
    let class = if ft.is_dir() {
        return Err(BackingError::Directory {
            path: path.to_path_buf(),
        });
    } else if ft.is_file() {
        NodeClass::File
    } else if ft.is_block_device() {
        NodeClass::Block
    } else if ft.is_char_device() {
        let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
        match probe_dax(sysfs, major, minor) {
            Ok(Some(geometry)) => NodeClass::Dax(geometry),
            Ok(None) => {
                return Err(unsupported(format!(
                    "character device {major}:{minor} that is not device-dax"
                )))
            }
            Err(e) => {
                return Err(BackingError::DaxSysfs {
                    path: path.to_path_buf(),
                    file: e.file,
                    reason: e.reason,
                })
            }
        }
    } else if ft.is_fifo() {
        return Err(unsupported("FIFO".into()));
    } else if ft.is_socket() {
        return Err(unsupported("socket".into()));
    } else {
        return Err(unsupported("file of an unknown type".into()));
    };

    let id = BackingId::of(meta);
    if let Some(first) = opened.iter().find(|b| b.id == id) {
        return Err(BackingError::SameBacking {
            path: path.to_path_buf(),
            first: first.path.clone(),
        });
    }

    let file = open_node(path, class, req.readonly)?;
    let fmeta = file
        .metadata()
        .map_err(|e| BackingError::io(path, "fstat", e))?;
    if BackingId::of(&fmeta) != id {
        return Err(BackingError::Changed {
            path: path.to_path_buf(),
        });
    }
    // The kernel lets a read-only block device be opened for writing and fails the writes later
    // (`blockdev --setro`, `losetup --read-only`): ask it.
    if class == NodeClass::Block && !req.readonly {
        let ro = block_device_readonly(&file).map_err(|e| BackingError::io(path, "BLKROGET", e))?;
        if ro {
            return Err(BackingError::NeedsReadonly {
                path: path.to_path_buf(),
                reason: "a read-only block device",
            });
        }
    }
    lock(&file, path, req.readonly)?;

    let (kind, size) = match class {
        NodeClass::File => (BackingKind::File { created: false }, fmeta.len()),
        NodeClass::Block => {
            let size =
                block_device_size(&file).map_err(|e| BackingError::io(path, "BLKGETSIZE64", e))?;
            (BackingKind::BlockDevice, size)
        }
        NodeClass::Dax(g) => (BackingKind::DevDax { align: g.align }, g.size),
    };
    check_backing_size(path, kind, size, req.size)?;
    let canonical =
        fs::canonicalize(path).map_err(|e| BackingError::path(path, "cannot resolve", e))?;
    Ok(Backing {
        file: Arc::new(file),
        path: path.to_path_buf(),
        canonical,
        kind,
        size,
        readonly: req.readonly,
        id,
    })
}

/// Opens an existing node whose type [`open_existing`] has checked.
fn open_node(path: &Path, class: NodeClass, readonly: bool) -> Result<File, BackingError> {
    // O_NONBLOCK: if the path was swapped for a FIFO since we looked, do not hang (the identity
    // check after opening catches the swap). O_EXCL on a block device opened for writing: the
    // kernel refuses it while the device is mounted or held exclusively by someone else.
    let mut flags = libc::O_NOCTTY | libc::O_NONBLOCK;
    if class == NodeClass::Block && !readonly {
        flags |= libc::O_EXCL;
    }
    let opened = OpenOptions::new()
        .read(true)
        .write(!readonly)
        .custom_flags(flags)
        .open(path);
    let file = match opened {
        Ok(file) => file,
        Err(e) => {
            let readable = || {
                OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
                    .open(path)
                    .is_ok()
            };
            return Err(open_error(
                path,
                e,
                readonly,
                class == NodeClass::Block,
                readable,
            ));
        }
    };
    clear_nonblock(&file).map_err(|e| BackingError::io(path, "fcntl", e))?;
    Ok(file)
}

/// Turns a failed open into the error the user should see: a read-write open refused because the
/// backing is read-only (and a read-only open would work) asks for `readonly=on`.
fn open_error(
    path: &Path,
    err: io::Error,
    readonly: bool,
    block: bool,
    readable: impl FnOnce() -> bool,
) -> BackingError {
    let reason = match err.raw_os_error() {
        Some(libc::EACCES) => "write permission denied",
        Some(libc::EROFS) => "on a read-only file system",
        Some(libc::EPERM) => "immutable or append-only",
        Some(libc::EBUSY) if block => {
            return BackingError::BlockDeviceBusy {
                path: path.to_path_buf(),
            }
        }
        Some(libc::EISDIR) => {
            return BackingError::Directory {
                path: path.to_path_buf(),
            }
        }
        _ => return BackingError::path(path, "cannot open", err),
    };
    if !readonly && readable() {
        BackingError::NeedsReadonly {
            path: path.to_path_buf(),
            reason,
        }
    } else {
        BackingError::path(path, "cannot open", err)
    }
}

/// Clears `O_NONBLOCK` on an open file (opened non-blocking so a FIFO cannot hang `open`).
pub fn clear_nonblock(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL on a descriptor `file` owns; no pointers involved.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL on a descriptor `file` owns, with the flags it just reported minus
    // O_NONBLOCK; no pointers involved.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes the advisory lock: exclusive for read-write, shared for read-only; never waits.
fn lock(file: &File, path: &Path, readonly: bool) -> Result<(), BackingError> {
    let op = if readonly {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    } | libc::LOCK_NB;
    // SAFETY: flock on a descriptor `file` owns; no pointers involved.
    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Err(BackingError::Locked {
            path: path.to_path_buf(),
            readonly,
        })
    } else {
        Err(BackingError::io(path, "flock", err))
    }
}

fn block_device_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 stores one u64 through its argument, which points at `size`, alive and
    // writable for the whole call; the descriptor is owned by `file`.
    let rc =
        unsafe { vmm_sys_util::ioctl::ioctl_with_mut_ref(file, sys::BLKGETSIZE64(), &mut size) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

fn block_device_readonly(file: &File) -> io::Result<bool> {
    let mut ro: libc::c_int = 0;
    // SAFETY: BLKROGET stores one int through its argument, which points at `ro`, alive and
    // writable for the whole call; the descriptor is owned by `file`.
    let rc = unsafe { vmm_sys_util::ioctl::ioctl_with_mut_ref(file, sys::BLKROGET(), &mut ro) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ro != 0)
}

/// The size rules every existing backing meets: not empty, equal to a given `size=`, (device-dax)
/// a multiple of an alignment we can map, and a multiple of 2 MiB.
fn check_backing_size(
    path: &Path,
    kind: BackingKind,
    size: u64,
    requested: Option<u64>,
) -> Result<(), BackingError> {
    let what = kind.noun();
    if size == 0 {
        return Err(BackingError::EmptyBacking {
            path: path.to_path_buf(),
            what,
        });
    }
    if let Some(requested) = requested {
        if requested != size {
            return Err(BackingError::SizeMismatch {
                path: path.to_path_buf(),
                what,
                actual: size,
                requested,
            });
        }
    }
    if let BackingKind::DevDax { align } = kind {
        check_dax_align(path, DaxGeometry { size, align })?;
    }
    if !size.is_multiple_of(PMEM_SIZE_ALIGN) {
        return Err(BackingError::BackingNotAligned {
            path: path.to_path_buf(),
            what,
            size,
            next: next_multiple(size),
        });
    }
    Ok(())
}

/// Creates a new sparse file of `req.size` bytes. Anything that fails after the file exists
/// removes it again.
fn create_file(req: &BackingRequest) -> Result<Backing, BackingError> {
    let path = req.path.as_path();
    if req.readonly {
        return Err(BackingError::MissingReadonly {
            path: path.to_path_buf(),
        });
    }
    let Some(size) = req.size else {
        return Err(BackingError::Missing {
            path: path.to_path_buf(),
        });
    };
    if fs::symlink_metadata(path).is_ok() {
        return Err(BackingError::UnsupportedType {
            path: path.to_path_buf(),
            what: "symbolic link to a missing file".into(),
        });
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOCTTY)
        .open(path)
        .map_err(|e| BackingError::path(path, "cannot create", e))?;
    let meta = file
        .metadata()
        .map_err(|e| BackingError::io(path, "fstat", e))?;
    let id = BackingId::of(&meta);
    let mut guard = RemoveOnError {
        path: path.to_path_buf(),
        id,
        armed: true,
    };

    lock(&file, path, false)?;
    // Sparse: no blocks are allocated until the guest writes.
    file.set_len(size)
        .map_err(|e| BackingError::path(path, "cannot size the new file", e))?;
    // Make the new file and its directory entry durable now, so that a guest's data written to
    // it is never orphaned by a host crash that forgets the file itself.
    file.sync_all()
        .map_err(|e| BackingError::io(path, "fsync", e))?;
    sync_parent_dir(path);
    let canonical =
        fs::canonicalize(path).map_err(|e| BackingError::path(path, "cannot resolve", e))?;
    guard.armed = false;
    Ok(Backing {
        file: Arc::new(file),
        path: path.to_path_buf(),
        canonical,
        kind: BackingKind::File { created: true },
        size,
        readonly: false,
        id,
    })
}

fn sync_parent_dir(path: &Path) {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Err(e) = File::open(parent).and_then(|d| d.sync_all()) {
        warn!("{}: cannot fsync the directory: {e}", parent.display());
    }
}

/// Removes a file this run created unless disarmed.
struct RemoveOnError {
    path: PathBuf,
    id: BackingId,
    armed: bool,
}

impl Drop for RemoveOnError {
    fn drop(&mut self) {
        if self.armed {
            remove_if_same(&self.path, self.id);
        }
    }
}

/// Removes `path` if it still names the inode `id` (someone may have replaced it meanwhile).
fn remove_if_same(path: &Path, id: BackingId) {
    match fs::symlink_metadata(path) {
        Ok(meta) if BackingId::of(&meta) == id => match fs::remove_file(path) {
            Ok(()) => debug!("{}: removed the file this run created", path.display()),
            Err(e) => warn!(
                "{}: cannot remove the file this run created: {e}",
                path.display()
            ),
        },
        _ => warn!(
            "{}: not removing the file this run created: the path now names another file",
            path.display()
        ),
    }
}

/// A device-dax can be mapped only in whole `align` units at `align`-aligned addresses, and the
/// kernel only has page sizes of 4 KiB, 2 MiB and 1 GiB to fault it in with.
fn check_dax_align(path: &Path, g: DaxGeometry) -> Result<(), BackingError> {
    let reason = if !g.align.is_power_of_two() || g.align < MIN_DAX_ALIGN {
        "it is not a power of two of at least 4 KiB".to_string()
    } else if g.align > MAX_DAX_ALIGN {
        "it is larger than 1 GiB, the largest page the host can map".to_string()
    } else if !g.size.is_multiple_of(g.align) {
        format!("the device size {} is not a multiple of it", Bytes(g.size))
    } else {
        return Ok(());
    };
    Err(BackingError::DaxAlign {
        path: path.to_path_buf(),
        align: g.align,
        reason,
    })
}

#[cfg(test)]
mod tests;
