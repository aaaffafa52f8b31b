//! Why a backing cannot be opened, mapped or flushed.

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::pmem::bytes::Bytes;

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

    pub(crate) fn path(path: &Path, op: &'static str, source: io::Error) -> BackingError {
        BackingError::Path {
            path: path.to_path_buf(),
            op,
            source,
        }
    }

    pub(crate) fn io(path: &Path, op: &'static str, source: io::Error) -> BackingError {
        BackingError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }
}
