//! The host side of a pmem device (its "backing"): open, lock, size and map it.
//!
//! A backing is one of
//!
//! * a **regular file**: used at its length, or, when the path does not exist and `size=` is
//!   given, created sparse (`O_CREAT|O_EXCL`, mode 0600) at that size. An existing file is never
//!   resized: a `size=` that disagrees with it is an error.
//! * a **device-dax character device** (`/dev/daxX.Y`): `stat` says 0 bytes, so size and
//!   alignment come from sysfs (`/sys/dev/char/MAJ:MIN/{size,align}`, pmem-reference.md §5). The
//!   device only accepts shared mappings whose address and length are multiples of its alignment.
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
//! # Durability
//! See [`PmemMapping::flush`] for what the host guarantees about guest writes for each kind of
//! backing.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use log::{debug, warn};
use thiserror::Error;

/// Backing sizes must be multiples of this (2 MiB): the guest hot-adds pmem in 2 MiB subsections
/// and the info block's alignment rules assume it; it also lets KVM back the range with 2 MiB
/// pages. The guest geometry's pmem size granule.
pub use geometry::PMEM_SIZE_GRANULE as PMEM_SIZE_ALIGN;

/// Largest device-dax alignment we can map: the biggest page size on x86-64 (a PUD, 1 GiB).
const MAX_DAX_ALIGN: u64 = 1 << 30;
/// Smallest device-dax alignment: one base page.
const MIN_DAX_ALIGN: u64 = 4096;

/// Where the real sysfs is mounted; tests pass a fake tree instead.
const SYSFS_ROOT: &str = "/sys";

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

/// A byte count for messages: exact binary units when they fit (`4 MiB`), bytes otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [
            (1 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
        ];
        for (unit, name) in UNITS {
            if self.0 >= unit && self.0.is_multiple_of(unit) {
                return write!(f, "{} {name}", self.0 / unit);
            }
        }
        write!(f, "{} bytes", self.0)
    }
}

/// Why a backing cannot be used. `Display` is one line that starts with the path (as the user
/// gave it), names the offending value and says what was expected.
#[derive(Debug, Error)]
pub enum BackingError {
    #[error("{}: size=0 is not allowed; give a size that is a multiple of 2 MiB", .path.display())]
    ZeroSize { path: PathBuf },

    #[error(
        "{}: size {} is not a multiple of 2 MiB; use a multiple of 2 MiB such as {} (the next one up)",
        .path.display(), Bytes(*.size), Bytes(*.next)
    )]
    SizeNotAligned { path: PathBuf, size: u64, next: u64 },

    #[error("{} does not exist; give size=SIZE to create it", .path.display())]
    Missing { path: PathBuf },

    #[error(
        "{} does not exist; readonly=on needs an existing backing (a new one would be all zeros)",
        .path.display()
    )]
    MissingReadonly { path: PathBuf },

    #[error(
        "{} is a directory; give a regular file, a /dev/daxX.Y device or a block device",
        .path.display()
    )]
    Directory { path: PathBuf },

    #[error(
        "{} is a {what}; give a regular file, a /dev/daxX.Y device or a block device",
        .path.display()
    )]
    UnsupportedType { path: PathBuf, what: String },

    #[error("{} is the same backing as {}; give each backing once", .path.display(), .first.display())]
    SameBacking { path: PathBuf, first: PathBuf },

    #[error(
        "{} is in use by another process (locked{}); stop that process or give another backing",
        .path.display(), if *.readonly { " read-write" } else { "" }
    )]
    Locked { path: PathBuf, readonly: bool },

    #[error(
        "{} is in use (mounted, or opened exclusively by another process); unmount or stop it, or give another backing",
        .path.display()
    )]
    BlockDeviceBusy { path: PathBuf },

    #[error("{} is read-only ({reason}); add readonly=on to use it read-only", .path.display())]
    NeedsReadonly { path: PathBuf, reason: &'static str },

    #[error(
        "{}: size={} disagrees with the {what}'s size {}; give size={} or leave size= out (an existing backing is never resized)",
        .path.display(), Bytes(*.requested), Bytes(*.actual), .actual
    )]
    SizeMismatch {
        path: PathBuf,
        what: &'static str,
        actual: u64,
        requested: u64,
    },

    #[error(
        "{} is an empty {what} (0 bytes); an existing backing is never resized: give one with a size, or a new path with size=SIZE",
        .path.display()
    )]
    EmptyBacking { path: PathBuf, what: &'static str },

    #[error(
        "{}: the {what}'s size {} is not a multiple of 2 MiB; the monitor never resizes a backing: use one whose size is a multiple of 2 MiB such as {} (the next one up)",
        .path.display(), Bytes(*.size), Bytes(*.next)
    )]
    BackingNotAligned {
        path: PathBuf,
        what: &'static str,
        size: u64,
        next: u64,
    },

    #[error("{}: cannot honour device-dax alignment {}: {reason}", .path.display(), Bytes(*.align))]
    DaxAlign {
        path: PathBuf,
        align: u64,
        reason: String,
    },

    #[error("{}: cannot read device-dax geometry from {}: {reason}", .path.display(), .file.display())]
    DaxSysfs {
        path: PathBuf,
        file: PathBuf,
        reason: String,
    },

    #[error("{} changed while it was being opened (another program replaced it); try again", .path.display())]
    Changed { path: PathBuf },

    /// Opening, creating or inspecting the path failed; a user mistake when the errno says the
    /// path is wrong or not accessible (see [`BackingError::is_usage`]).
    #[error("{}: {op}: {source}", .path.display())]
    Path {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },

    /// A system call on an already opened backing failed (lock, ioctl, mmap, msync): not
    /// something the user can fix by changing the option.
    #[error("{}: {op}: {source}", .path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
}

impl BackingError {
    /// True for mistakes in what the user asked for (the monitor should exit with the usage
    /// status); false for unexpected host failures such as `mmap` running out of address space.
    pub fn is_usage(&self) -> bool {
        match self {
            BackingError::DaxSysfs { .. }
            | BackingError::Changed { .. }
            | BackingError::Io { .. } => false,
            BackingError::Path { source, .. } => source.raw_os_error().is_some_and(|errno| {
                matches!(
                    errno,
                    libc::ENOENT
                        | libc::ENOTDIR
                        | libc::EACCES
                        | libc::EPERM
                        | libc::EROFS
                        | libc::ELOOP
                        | libc::ENAMETOOLONG
                        | libc::EEXIST
                        | libc::EISDIR
                        | libc::ENXIO
                        | libc::ENODEV
                        | libc::EFBIG
                        | libc::ETXTBSY
                )
            }),
            _ => true,
        }
    }

    fn path(path: &Path, op: &'static str, source: io::Error) -> BackingError {
        BackingError::Path {
            path: path.to_path_buf(),
            op,
            source,
        }
    }

    fn io(path: &Path, op: &'static str, source: io::Error) -> BackingError {
        BackingError::Io {
            path: path.to_path_buf(),
            op,
            source,
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
        open_in(req, Path::new(SYSFS_ROOT), &[])
    }

    /// Opens every backing in order. A backing that is one already opened (same [`BackingId`],
    /// whatever the path) is refused with [`BackingError::SameBacking`] before it is opened, so
    /// the user is told about the duplicate rather than about a lock conflict with ourselves. On
    /// any error the backings opened so far are [abandoned](Backing::abandon): files this run
    /// created are removed again.
    pub fn open_all(reqs: &[BackingRequest]) -> Result<Vec<Backing>, BackingError> {
        open_all_in(reqs, Path::new(SYSFS_ROOT))
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

    /// Maps the whole backing shared, read-only when the backing is. The host address is aligned
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
    pub fn map(&self) -> Result<PmemMapping, BackingError> {
        let fail = |op, e| BackingError::io(&self.path, op, e);
        let len = usize::try_from(self.size).map_err(|_| {
            fail(
                "mmap",
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "size exceeds the address space",
                ),
            )
        })?;
        let align = match self.kind {
            BackingKind::DevDax { align } => align.max(PMEM_SIZE_ALIGN),
            _ => PMEM_SIZE_ALIGN,
        } as usize;
        let prot = if self.readonly {
            libc::PROT_READ
        } else {
            libc::PROT_READ | libc::PROT_WRITE
        };
        let sync = libc::MAP_SHARED_VALIDATE | libc::MAP_SYNC;
        // (flags, whether they include MAP_SYNC), in order of preference. Only the last attempt's
        // failure is reported.
        let attempts: &[(libc::c_int, bool)] = match (self.kind, self.readonly) {
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
            match reservation.map_file(&self.file, prot, flags) {
                Ok(()) => break synchronous,
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL))
                        && attempts.peek().is_some() =>
                {
                    if let BackingKind::DevDax { .. } = self.kind {
                        warn!(
                            "{}: the host kernel refused MAP_SYNC ({e}); mapping without it \
                             (guest writes are still durable once the guest flushes its caches)",
                            self.path.display()
                        );
                    } else {
                        debug!(
                            "{}: no MAP_SYNC ({e}): not on a DAX file system",
                            self.path.display()
                        );
                    }
                }
                Err(e) => return Err(fail("mmap", e)),
            }
        };
        let addr = reservation.into_mapping();
        debug!(
            "{}: mapped {} at {addr:p}{}",
            self.path.display(),
            Bytes(self.size),
            if synchronous { " with MAP_SYNC" } else { "" }
        );
        Ok(PmemMapping {
            addr,
            len,
            kind: self.kind,
            readonly: self.readonly,
            path: self.path.clone(),
            _file: Arc::clone(&self.file),
        })
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
fn check_size_option(path: &Path, size: u64) -> Result<(), BackingError> {
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

fn clear_nonblock(file: &File) -> io::Result<()> {
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

/// Size and mapping alignment of a device-dax, from sysfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DaxGeometry {
    size: u64,
    align: u64,
}

/// A sysfs file that exists but cannot be read or parsed.
#[derive(Debug)]
struct SysfsError {
    file: PathBuf,
    reason: String,
}

/// Looks the character device `major:minor` up under `sysfs` (normally `/sys`). `Ok(None)` when
/// it is not device-dax. The device's directory `dev/char/MAJ:MIN` is a link to the dev_dax
/// device, whose `subsystem` link ends in `bus/dax` (or `class/dax` on kernels before the dax
/// bus), and which has `size` and `align` files; kernels without the per-device `align` only
/// have the region's, in `../dax_region/align` (`device/dax_region/align` under the class
/// layout). This is how QEMU's `get_file_size()` recognises a dax node.
fn probe_dax(sysfs: &Path, major: u32, minor: u32) -> Result<Option<DaxGeometry>, SysfsError> {
    let dev = sysfs.join("dev/char").join(format!("{major}:{minor}"));
    let subsystem_link = dev.join("subsystem");
    let subsystem = match fs::read_link(&subsystem_link) {
        Ok(target) => target,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(SysfsError {
                file: subsystem_link,
                reason: e.to_string(),
            })
        }
    };
    if !(subsystem.ends_with("bus/dax") || subsystem.ends_with("class/dax")) {
        return Ok(None);
    }
    let size = read_sysfs_u64(&dev.join("size"))?.ok_or_else(|| SysfsError {
        file: dev.join("size"),
        reason: "missing".into(),
    })?;
    let mut candidates = vec![dev.join("align")];
    if let Some(parent) = fs::canonicalize(&dev)
        .ok()
        .and_then(|d| d.parent().map(Path::to_path_buf))
    {
        candidates.push(parent.join("dax_region/align"));
    }
    candidates.push(dev.join("device/dax_region/align"));
    for file in &candidates {
        if let Some(align) = read_sysfs_u64(file)? {
            return Ok(Some(DaxGeometry { size, align }));
        }
    }
    Err(SysfsError {
        file: candidates.swap_remove(0),
        reason: "missing, and the dax region has no align either".into(),
    })
}

/// Reads a decimal sysfs value; `Ok(None)` when the file does not exist.
fn read_sysfs_u64(file: &Path) -> Result<Option<u64>, SysfsError> {
    let text = match fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(SysfsError {
                file: file.to_path_buf(),
                reason: e.to_string(),
            })
        }
    };
    text.trim().parse().map(Some).map_err(|_| SysfsError {
        file: file.to_path_buf(),
        reason: format!("expected a decimal number, found {:?}", text.trim()),
    })
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
    use super::*;

    use std::ffi::CString;
    use std::hash::{DefaultHasher, Hasher};
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::process::Command;

    const MIB: u64 = 1 << 20;

    fn req(path: &Path, size: Option<u64>, readonly: bool) -> BackingRequest {
        BackingRequest {
            path: path.to_path_buf(),
            size,
            readonly,
        }
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    /// A file of `len` bytes with content that depends on `seed`.
    fn write_file(path: &Path, len: u64, seed: u8) {
        let data: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        fs::write(path, data).unwrap();
    }

    fn checksum(path: &Path) -> u64 {
        let mut h = DefaultHasher::new();
        h.write(&fs::read(path).unwrap());
        h.finish()
    }

    /// The permission field ("rw-s", "r--s", ...) of the mapping that starts at `addr`.
    fn maps_perms(addr: *mut u8) -> String {
        let maps = fs::read_to_string("/proc/self/maps").unwrap();
        let want = format!("{:x}-", addr as usize);
        let line = maps
            .lines()
            .find(|l| l.starts_with(&want))
            .unwrap_or_else(|| panic!("no mapping at {addr:p} in /proc/self/maps"));
        line.split_whitespace().nth(1).unwrap().to_string()
    }

    /// Asserts the one-line, path-first shape of every message.
    fn message(e: &BackingError, path: &Path) -> String {
        let text = e.to_string();
        assert!(!text.contains('\n'), "{text}");
        assert!(
            text.starts_with(&path.display().to_string()),
            "{text} does not start with {}",
            path.display()
        );
        text
    }

    #[test]
    fn bytes_display() {
        assert_eq!(Bytes(4 * MIB).to_string(), "4 MiB");
        assert_eq!(Bytes(3 << 30).to_string(), "3 GiB");
        assert_eq!(Bytes(1 << 40).to_string(), "1 TiB");
        assert_eq!(Bytes(4096).to_string(), "4 KiB");
        assert_eq!(Bytes(3 * MIB + 1).to_string(), "3145729 bytes");
        assert_eq!(Bytes(0).to_string(), "0 bytes");
        assert_eq!(next_multiple(3 * MIB), 4 * MIB);
        assert_eq!(next_multiple(u64::MAX), u64::MAX - (2 * MIB - 1));
    }

    #[test]
    fn creates_a_sparse_file_of_the_given_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.img");
        let b = Backing::open(&req(&path, Some(64 * MIB), false)).unwrap();
        assert_eq!(b.kind(), &BackingKind::File { created: true });
        assert_eq!(b.size(), 64 * MIB);
        assert!(!b.readonly());
        assert_eq!(b.path(), path);
        assert_eq!(b.canonical_path(), fs::canonicalize(&path).unwrap());
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 64 * MIB);
        assert!(
            meta.blocks() * 512 <= 64 << 10,
            "not sparse: {} blocks",
            meta.blocks()
        );
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            b.identity(),
            BackingId::Inode {
                dev: meta.dev(),
                ino: meta.ino()
            }
        );
        // Dropping keeps the file: it is the user's backing now.
        drop(b);
        assert!(path.exists());
    }

    #[test]
    fn uses_an_existing_file_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        write_file(&path, 4 * MIB, 7);
        let sum = checksum(&path);

        let b = Backing::open(&req(&path, None, false)).unwrap();
        assert_eq!(b.kind(), &BackingKind::File { created: false });
        assert_eq!(b.size(), 4 * MIB);
        drop(b);
        let b = Backing::open(&req(&path, Some(4 * MIB), false)).unwrap();
        assert_eq!(b.size(), 4 * MIB);
        drop(b);

        for size in [2 * MIB, 6 * MIB] {
            let e = Backing::open(&req(&path, Some(size), false)).unwrap_err();
            assert!(matches!(e, BackingError::SizeMismatch { .. }), "{e:?}");
            assert!(e.is_usage());
            let text = message(&e, &path);
            assert!(text.contains(&Bytes(size).to_string()), "{text}");
            assert!(text.contains("4 MiB"), "{text}");
            assert!(text.contains("never resized"), "{text}");
        }
        assert_eq!(fs::metadata(&path).unwrap().len(), 4 * MIB);
        assert_eq!(checksum(&path), sum);
    }

    #[test]
    fn missing_path_without_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.img");
        let e = Backing::open(&req(&path, None, false)).unwrap_err();
        assert!(matches!(e, BackingError::Missing { .. }), "{e:?}");
        assert!(e.is_usage());
        assert_eq!(
            message(&e, &path),
            format!(
                "{} does not exist; give size=SIZE to create it",
                path.display()
            )
        );
        assert!(!path.exists());

        // readonly=on cannot create (nothing to read).
        let e = Backing::open(&req(&path, Some(2 * MIB), true)).unwrap_err();
        assert!(matches!(e, BackingError::MissingReadonly { .. }), "{e:?}");
        message(&e, &path);
        assert!(!path.exists());

        // A missing parent directory: the OS error, still a usage error.
        let deep = dir.path().join("no/such/dir/x.img");
        let e = Backing::open(&req(&deep, Some(2 * MIB), false)).unwrap_err();
        assert!(matches!(e, BackingError::Path { .. }), "{e:?}");
        assert!(e.is_usage());
        assert!(message(&e, &deep).contains("cannot create"));

        // A dangling symbolic link is not silently replaced.
        let link = dir.path().join("dangling");
        symlink(dir.path().join("nowhere"), &link).unwrap();
        let e = Backing::open(&req(&link, Some(2 * MIB), false)).unwrap_err();
        assert!(
            message(&e, &link).contains("symbolic link to a missing file"),
            "{e}"
        );
        assert!(!dir.path().join("nowhere").exists());
    }

    #[test]
    fn directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for readonly in [false, true] {
            let e = Backing::open(&req(dir.path(), None, readonly)).unwrap_err();
            assert!(matches!(e, BackingError::Directory { .. }), "{e:?}");
            assert!(e.is_usage());
            assert!(message(&e, dir.path()).contains("is a directory"));
        }
        let e = Backing::open(&req(dir.path(), Some(2 * MIB), false)).unwrap_err();
        assert!(matches!(e, BackingError::Directory { .. }), "{e:?}");
    }

    #[test]
    fn fifo_and_socket_are_refused_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = Backing::open(&req(&fifo, None, false)).unwrap_err();
        assert!(message(&e, &fifo).contains("is a FIFO;"), "{e}");

        let sock = dir.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let e = Backing::open(&req(&sock, None, true)).unwrap_err();
        assert!(message(&e, &sock).contains("is a socket;"), "{e}");
        assert!(e.is_usage());
    }

    #[test]
    fn character_device_that_is_not_dax_is_refused() {
        let null = Path::new("/dev/null");
        let e = Backing::open(&req(null, None, false)).unwrap_err();
        assert!(matches!(e, BackingError::UnsupportedType { .. }), "{e:?}");
        assert_eq!(
            message(&e, null),
            "/dev/null is a character device 1:3 that is not device-dax; \
             give a regular file, a /dev/daxX.Y device or a block device"
        );
    }

    #[test]
    fn zero_sizes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zero.img");
        let e = Backing::open(&req(&path, Some(0), false)).unwrap_err();
        assert!(matches!(e, BackingError::ZeroSize { .. }), "{e:?}");
        assert!(e.is_usage());
        message(&e, &path);
        assert!(!path.exists());

        fs::write(&path, b"").unwrap();
        let e = Backing::open(&req(&path, None, false)).unwrap_err();
        assert!(matches!(e, BackingError::EmptyBacking { .. }), "{e:?}");
        assert!(message(&e, &path).contains("is an empty file (0 bytes)"));
        assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    }

    #[test]
    fn sizes_must_be_multiples_of_2_mib() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("odd.img");
        let e = Backing::open(&req(&path, Some(3 * MIB), false)).unwrap_err();
        assert!(matches!(e, BackingError::SizeNotAligned { .. }), "{e:?}");
        assert!(e.is_usage());
        assert_eq!(
            message(&e, &path),
            format!(
                "{}: size 3 MiB is not a multiple of 2 MiB; use a multiple of 2 MiB such as 4 MiB \
                 (the next one up)",
                path.display()
            )
        );
        assert!(!path.exists());

        // An existing file of an odd size is refused and left alone.
        write_file(&path, 3 * MIB + 512, 1);
        let sum = checksum(&path);
        let e = Backing::open(&req(&path, None, false)).unwrap_err();
        assert!(matches!(e, BackingError::BackingNotAligned { .. }), "{e:?}");
        let text = message(&e, &path);
        assert!(
            text.contains("3146240 bytes") && text.contains("4 MiB"),
            "{text}"
        );
        assert_eq!(checksum(&path), sum);
    }

    #[test]
    fn open_errors_map_to_readonly_hint() {
        let p = Path::new("/x");
        let err = |errno| io::Error::from_raw_os_error(errno);
        let e = open_error(p, err(libc::EACCES), false, false, || true);
        assert!(matches!(e, BackingError::NeedsReadonly { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "/x is read-only (write permission denied); add readonly=on to use it read-only"
        );
        let e = open_error(p, err(libc::EROFS), false, true, || true);
        assert!(
            e.to_string().contains("(on a read-only file system)"),
            "{e}"
        );
        let e = open_error(p, err(libc::EPERM), false, false, || true);
        assert!(e.to_string().contains("(immutable or append-only)"), "{e}");
        // Not even readable: readonly=on would not help; report the OS error.
        let e = open_error(p, err(libc::EACCES), false, false, || false);
        assert!(matches!(e, BackingError::Path { .. }), "{e:?}");
        assert!(e.is_usage());
        // Already read-only.
        let e = open_error(p, err(libc::EACCES), true, false, || panic!("not asked"));
        assert!(matches!(e, BackingError::Path { .. }), "{e:?}");
        // O_EXCL on a busy block device.
        let e = open_error(p, err(libc::EBUSY), false, true, || true);
        assert!(matches!(e, BackingError::BlockDeviceBusy { .. }), "{e:?}");
        let e = open_error(p, err(libc::EIO), false, false, || true);
        assert!(
            matches!(e, BackingError::Path { .. }) && !e.is_usage(),
            "{e:?}"
        );
    }

    vmm_sys_util::ioctl_ior_nr!(FS_IOC_GETFLAGS, b'f' as u32, 1, libc::c_long);
    vmm_sys_util::ioctl_iow_nr!(FS_IOC_SETFLAGS, b'f' as u32, 2, libc::c_long);
    const FS_IMMUTABLE_FL: libc::c_int = 0x10;

    /// Sets or clears the immutable attribute (`chattr +i`); needs CAP_LINUX_IMMUTABLE.
    fn set_immutable(path: &Path, on: bool) -> io::Result<()> {
        let f = File::open(path)?;
        let mut flags: libc::c_int = 0;
        // SAFETY: FS_IOC_GETFLAGS stores an int through the pointer, which points at `flags`.
        if unsafe { vmm_sys_util::ioctl::ioctl_with_mut_ref(&f, FS_IOC_GETFLAGS(), &mut flags) } < 0
        {
            return Err(io::Error::last_os_error());
        }
        flags = if on {
            flags | FS_IMMUTABLE_FL
        } else {
            flags & !FS_IMMUTABLE_FL
        };
        // SAFETY: FS_IOC_SETFLAGS reads an int through the pointer, which points at `flags`.
        if unsafe { vmm_sys_util::ioctl::ioctl_with_ref(&f, FS_IOC_SETFLAGS(), &flags) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    struct Immutable(PathBuf);
    impl Drop for Immutable {
        fn drop(&mut self) {
            let _ = set_immutable(&self.0, false);
        }
    }

    #[test]
    fn read_only_file_needs_readonly_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro.img");
        write_file(&path, 2 * MIB, 3);
        let sum = checksum(&path);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o444)).unwrap();
        // Root ignores the mode bits; the immutable attribute stops root too.
        let _guard = if is_root() {
            if let Err(e) = set_immutable(&path, true) {
                panic!(
                    "as root this test needs the immutable attribute (chattr +i) to make {} \
                     read-only, and the file system refused it: {e}; run it on ext4/xfs/btrfs \
                     (TMPDIR) or as an ordinary user",
                    path.display()
                );
            }
            Some(Immutable(path.clone()))
        } else {
            None
        };
        let e = Backing::open(&req(&path, None, false)).unwrap_err();
        assert!(matches!(e, BackingError::NeedsReadonly { .. }), "{e:?}");
        assert!(e.is_usage());
        assert!(message(&e, &path).ends_with("add readonly=on to use it read-only"));

        let b = Backing::open(&req(&path, None, true)).unwrap();
        assert!(b.readonly());
        let m = b.map().unwrap();
        assert_eq!(maps_perms(m.as_ptr()), "r--s");
        m.flush().unwrap();
        drop(m);
        assert_eq!(checksum(&path), sum);
    }

    #[test]
    fn locks_exclusive_for_read_write_shared_for_readonly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locked.img");
        write_file(&path, 2 * MIB, 0);

        let rw = Backing::open(&req(&path, None, false)).unwrap();
        let e = Backing::open(&req(&path, None, false)).unwrap_err();
        assert!(
            matches!(
                e,
                BackingError::Locked {
                    readonly: false,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.is_usage());
        assert_eq!(
            message(&e, &path),
            format!(
                "{} is in use by another process (locked); stop that process or give another backing",
                path.display()
            )
        );
        let e = Backing::open(&req(&path, None, true)).unwrap_err();
        assert_eq!(
            message(&e, &path),
            format!(
                "{} is in use by another process (locked read-write); stop that process or give \
                 another backing",
                path.display()
            )
        );

        // The lock lives as long as the open file: a mapping keeps it after the backing is gone.
        let m = rw.map().unwrap();
        drop(rw);
        assert!(Backing::open(&req(&path, None, false)).is_err());
        drop(m);

        let ro1 = Backing::open(&req(&path, None, true)).unwrap();
        let ro2 = Backing::open(&req(&path, None, true)).unwrap();
        let e = Backing::open(&req(&path, None, false)).unwrap_err();
        assert!(matches!(e, BackingError::Locked { .. }), "{e:?}");
        drop((ro1, ro2));
        Backing::open(&req(&path, None, false)).unwrap();
    }

    #[test]
    fn the_same_backing_twice_is_found_through_any_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.img");
        write_file(&path, 2 * MIB, 0);
        let sym = dir.path().join("sym.img");
        symlink(&path, &sym).unwrap();
        let hard = dir.path().join("hard.img");
        fs::hard_link(&path, &hard).unwrap();
        let other = dir.path().join("b.img");
        write_file(&other, 2 * MIB, 1);

        for dup in [&path, &sym, &hard] {
            let e = Backing::open_all(&[
                req(&path, None, false),
                req(&other, None, false),
                req(dup, None, false),
            ])
            .unwrap_err();
            assert!(matches!(e, BackingError::SameBacking { .. }), "{e:?}");
            assert!(e.is_usage());
            assert_eq!(
                message(&e, dup),
                format!(
                    "{} is the same backing as {}; give each backing once",
                    dup.display(),
                    path.display()
                )
            );
        }
        // Read-only and read-write of one backing is still the same backing.
        let e = Backing::open_all(&[req(&path, None, true), req(&sym, None, false)]).unwrap_err();
        assert!(matches!(e, BackingError::SameBacking { .. }), "{e:?}");

        // Opened one by one (shared locks do not conflict), check_distinct finds it.
        let a = Backing::open(&req(&path, None, true)).unwrap();
        let b = Backing::open(&req(&other, None, true)).unwrap();
        let s = Backing::open(&req(&sym, None, true)).unwrap();
        assert_eq!(a.identity(), s.identity());
        assert_ne!(a.identity(), b.identity());
        check_distinct(&[&a, &b]).unwrap();
        let e = check_distinct(&[&a, &b, &s]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{} is the same backing as {}; give each backing once",
                sym.display(),
                path.display()
            )
        );

        drop((a, b, s));
        let all = Backing::open_all(&[req(&path, None, false), req(&other, None, true)]).unwrap();
        assert_eq!(all.len(), 2);
    }

    #[test]
    fn a_failed_run_leaves_no_created_file_behind() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new.img");
        let missing = dir.path().join("missing.img");
        let e = Backing::open_all(&[req(&new, Some(2 * MIB), false), req(&missing, None, false)])
            .unwrap_err();
        assert!(matches!(e, BackingError::Missing { .. }), "{e:?}");
        assert!(!new.exists());

        // The same new path twice: created by the first, found again by the second.
        let e = Backing::open_all(&[
            req(&new, Some(2 * MIB), false),
            req(&new, Some(2 * MIB), false),
        ])
        .unwrap_err();
        assert!(matches!(e, BackingError::SameBacking { .. }), "{e:?}");
        assert!(!new.exists());

        // abandon() removes only what this run created.
        let existing = dir.path().join("existing.img");
        write_file(&existing, 2 * MIB, 0);
        Backing::open(&req(&existing, None, false))
            .unwrap()
            .abandon();
        assert!(existing.exists());
        Backing::open(&req(&new, Some(2 * MIB), false))
            .unwrap()
            .abandon();
        assert!(!new.exists());
    }

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

    /// A fake sysfs with the dev_dax device `major:minor` the way the dax bus lays it out:
    /// `dev/char/M:m -> devices/.../region0/dax0.0/dax0.0` with `subsystem -> bus/dax`, and
    /// the region's `dax_region/align` one level up.
    fn fake_dax(
        root: &Path,
        dev: (u32, u32),
        size: u64,
        align: Option<u64>,
        region_align: Option<u64>,
    ) {
        let parent = root.join("devices/platform/region0/dax0.0");
        let node = parent.join("dax0.0");
        fs::create_dir_all(&node).unwrap();
        fs::create_dir_all(root.join("bus/dax")).unwrap();
        fs::create_dir_all(root.join("dev/char")).unwrap();
        symlink(root.join("bus/dax"), node.join("subsystem")).unwrap();
        fs::write(node.join("size"), format!("{size}\n")).unwrap();
        if let Some(a) = align {
            fs::write(node.join("align"), format!("{a}\n")).unwrap();
        }
        if let Some(a) = region_align {
            fs::create_dir_all(parent.join("dax_region")).unwrap();
            fs::write(parent.join("dax_region/align"), format!("{a}\n")).unwrap();
        }
        symlink(&node, root.join(format!("dev/char/{}:{}", dev.0, dev.1))).unwrap();
    }

    #[test]
    fn dax_geometry_from_sysfs() {
        let sys = tempfile::tempdir().unwrap();
        fake_dax(sys.path(), (251, 0), 4 << 30, Some(2 * MIB), Some(1 << 30));
        assert_eq!(
            probe_dax(sys.path(), 251, 0).unwrap(),
            Some(DaxGeometry {
                size: 4 << 30,
                align: 2 * MIB
            })
        );
        // Not there at all: not dax.
        assert_eq!(probe_dax(sys.path(), 251, 1).unwrap(), None);

        // Only the region's alignment (older kernels).
        let sys = tempfile::tempdir().unwrap();
        fake_dax(sys.path(), (251, 0), 4 << 30, None, Some(1 << 30));
        assert_eq!(
            probe_dax(sys.path(), 251, 0).unwrap().unwrap().align,
            1 << 30
        );

        // No alignment anywhere; garbage in size.
        let sys = tempfile::tempdir().unwrap();
        fake_dax(sys.path(), (251, 0), 4 << 30, None, None);
        let e = probe_dax(sys.path(), 251, 0).unwrap_err();
        assert!(e.file.ends_with("align"), "{e:?}");
        fs::write(sys.path().join("dev/char/251:0/size"), "lots\n").unwrap();
        let e = probe_dax(sys.path(), 251, 0).unwrap_err();
        assert!(e.reason.contains("\"lots\""), "{e:?}");

        // The class layout (`subsystem -> class/dax`, region under `device/`).
        let sys = tempfile::tempdir().unwrap();
        let node = sys.path().join("devices/region0/dax/dax0.0");
        fs::create_dir_all(node.join("device/dax_region")).unwrap();
        fs::create_dir_all(sys.path().join("class/dax")).unwrap();
        fs::create_dir_all(sys.path().join("dev/char")).unwrap();
        symlink(sys.path().join("class/dax"), node.join("subsystem")).unwrap();
        fs::write(node.join("size"), "2097152").unwrap();
        fs::write(node.join("device/dax_region/align"), "4096").unwrap();
        symlink(&node, sys.path().join("dev/char/250:3")).unwrap();
        assert_eq!(
            probe_dax(sys.path(), 250, 3).unwrap(),
            Some(DaxGeometry {
                size: 2 * MIB,
                align: 4096
            })
        );

        // Some other character device.
        let sys = tempfile::tempdir().unwrap();
        let node = sys.path().join("devices/virtual/mem/null");
        fs::create_dir_all(&node).unwrap();
        fs::create_dir_all(sys.path().join("class/mem")).unwrap();
        fs::create_dir_all(sys.path().join("dev/char")).unwrap();
        symlink(sys.path().join("class/mem"), node.join("subsystem")).unwrap();
        symlink(&node, sys.path().join("dev/char/1:3")).unwrap();
        assert_eq!(probe_dax(sys.path(), 1, 3).unwrap(), None);
    }

    #[test]
    fn dax_alignments_we_can_and_cannot_honour() {
        let p = Path::new("/dev/dax0.0");
        for align in [4096, 2 * MIB, 1 << 30] {
            let kind = BackingKind::DevDax { align };
            check_backing_size(p, kind, 4 << 30, None).unwrap();
            check_backing_size(p, kind, 4 << 30, Some(4 << 30)).unwrap();
        }
        let cases = [
            (
                2 * MIB,
                3 * MIB,
                "the device size 3 MiB is not a multiple of it",
            ),
            (
                1 << 30,
                3 << 29,
                "the device size 1536 MiB is not a multiple of it",
            ),
            (2 << 30, 4 << 30, "larger than 1 GiB"),
            (3000, 4 << 30, "not a power of two"),
            (512, 4 << 30, "not a power of two of at least 4 KiB"),
        ];
        for (align, size, why) in cases {
            let e = check_backing_size(p, BackingKind::DevDax { align }, size, None).unwrap_err();
            assert!(matches!(e, BackingError::DaxAlign { .. }), "{e:?}");
            assert!(e.is_usage());
            let text = message(&e, p);
            assert!(
                text.starts_with("/dev/dax0.0: cannot honour device-dax alignment "),
                "{text}"
            );
            assert!(text.contains(why), "{text}");
        }
        // 4 KiB aligned but not 2 MiB: the generic size rule.
        let e =
            check_backing_size(p, BackingKind::DevDax { align: 4096 }, 3 * MIB, None).unwrap_err();
        assert!(matches!(e, BackingError::BackingNotAligned { .. }), "{e:?}");
        assert!(e.to_string().contains("the device-dax's size 3 MiB"), "{e}");
        let e = check_backing_size(
            p,
            BackingKind::DevDax { align: 4096 },
            4 << 30,
            Some(2 << 30),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "/dev/dax0.0: size=2 GiB disagrees with the device-dax's size 4 GiB; give size=4294967296 \
             or leave size= out (an existing backing is never resized)"
        );
    }

    /// A character device node with the numbers of /dev/null in `dir` (its own inode, so its
    /// lock is ours alone), or /dev/null itself when we may not mknod.
    fn char_node(dir: &Path) -> (PathBuf, bool) {
        let path = dir.join("dax0.0");
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) };
        if rc == 0 {
            (path, true)
        } else {
            (PathBuf::from("/dev/null"), false)
        }
    }

    #[test]
    fn opens_a_device_dax_described_by_sysfs() {
        let sys = tempfile::tempdir().unwrap();
        fake_dax(sys.path(), (1, 3), 4 << 30, Some(2 * MIB), None);
        let dir = tempfile::tempdir().unwrap();
        let (node, own) = char_node(dir.path());
        // Read-only (a shared lock) when the node is the real /dev/null others may use.
        let readonly = !own;

        let b = open_in(&req(&node, None, readonly), sys.path(), &[]).unwrap();
        assert_eq!(b.kind(), &BackingKind::DevDax { align: 2 * MIB });
        assert_eq!(b.size(), 4 << 30);
        assert_eq!(
            b.identity(),
            BackingId::CharDevice {
                rdev: libc::makedev(1, 3)
            }
        );
        drop(b);
        // Another node of the same device is the same backing.
        let e = open_all_in(
            &[
                req(&node, None, true),
                req(Path::new("/dev/null"), None, true),
            ],
            sys.path(),
        )
        .unwrap_err();
        assert!(matches!(e, BackingError::SameBacking { .. }), "{e:?}");

        let e = open_in(&req(&node, Some(2 << 30), readonly), sys.path(), &[]).unwrap_err();
        assert!(matches!(e, BackingError::SizeMismatch { .. }), "{e:?}");
        assert!(message(&e, &node).contains("device-dax's size 4 GiB"));

        let sys = tempfile::tempdir().unwrap();
        fake_dax(sys.path(), (1, 3), 3 << 29, Some(1 << 30), None);
        let e = open_in(&req(&node, None, readonly), sys.path(), &[]).unwrap_err();
        assert!(matches!(e, BackingError::DaxAlign { .. }), "{e:?}");
    }

    #[test]
    fn errors_are_usage_errors_except_host_failures() {
        let p = PathBuf::from("/p");
        assert!(BackingError::Locked {
            path: p.clone(),
            readonly: false
        }
        .is_usage());
        assert!(!BackingError::Io {
            path: p.clone(),
            op: "mmap",
            source: io::Error::from_raw_os_error(libc::ENOMEM)
        }
        .is_usage());
        assert!(!BackingError::Changed { path: p.clone() }.is_usage());
        assert!(!BackingError::DaxSysfs {
            path: p.clone(),
            file: p.clone(),
            reason: String::new()
        }
        .is_usage());
        assert!(!BackingError::Path {
            path: p,
            op: "cannot open",
            source: io::Error::from_raw_os_error(libc::EIO)
        }
        .is_usage());
    }

    /// A loop device over a file, detached on drop.
    struct Loop(PathBuf);
    impl Loop {
        /// Attaches `file`; fails the test, saying why, when that is not possible here.
        fn attach(file: &Path, readonly: bool) -> Loop {
            assert!(
                is_root(),
                "this test needs a loop device: run the unit tests as root (losetup needs it)"
            );
            let mut cmd = Command::new("losetup");
            if readonly {
                cmd.arg("--read-only");
            }
            let out = cmd
                .args(["--find", "--show"])
                .arg(file)
                .output()
                .unwrap_or_else(|e| panic!("cannot run losetup (apt-get install mount): {e}"));
            assert!(
                out.status.success(),
                "losetup --find --show {} failed (no free loop device?): {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            Loop(PathBuf::from(
                String::from_utf8(out.stdout)
                    .expect("losetup prints a path")
                    .trim(),
            ))
        }
    }
    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
        }
    }

    #[test]
    fn block_device_via_loop() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("loop.img");
        write_file(&file, 4 * MIB, 5);
        let dev = Loop::attach(&file, false);
        let b = Backing::open(&req(&dev.0, None, false)).unwrap();
        assert_eq!(b.kind(), &BackingKind::BlockDevice);
        assert_eq!(b.size(), 4 * MIB);
        // Opened O_EXCL: a second read-write open is refused by the kernel.
        let e = Backing::open(&req(&dev.0, None, false)).unwrap_err();
        assert!(matches!(e, BackingError::BlockDeviceBusy { .. }), "{e:?}");
        message(&e, &dev.0);
        let e = Backing::open(&req(&dev.0, Some(2 * MIB), true)).unwrap_err();
        assert!(
            matches!(
                e,
                BackingError::Locked { .. } | BackingError::SizeMismatch { .. }
            ),
            "{e:?}"
        );

        let m = b.map().unwrap();
        assert_eq!(m.as_ptr() as usize % (2 << 20), 0);
        // SAFETY: 4 bytes at offset 8192, inside the writable mapping.
        unsafe { std::ptr::copy_nonoverlapping(b"loop".as_ptr(), m.as_ptr().add(8192), 4) };
        m.flush().unwrap();
        drop((m, b));
        drop(dev);
        assert_eq!(&fs::read(&file).unwrap()[8192..8196], b"loop");

        // A read-only block device asks for readonly=on.
        let ro = Loop::attach(&file, true);
        let e = Backing::open(&req(&ro.0, None, false)).unwrap_err();
        assert!(matches!(e, BackingError::NeedsReadonly { .. }), "{e:?}");
        assert_eq!(
            message(&e, &ro.0),
            format!(
                "{} is read-only (a read-only block device); add readonly=on to use it read-only",
                ro.0.display()
            )
        );
        let b = Backing::open(&req(&ro.0, None, true)).unwrap();
        assert_eq!(maps_perms(b.map().unwrap().as_ptr()), "r--s");
    }
}
