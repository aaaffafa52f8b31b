//! Files the monitor writes: `--report PATH` and `--serial file=PATH`.
//!
//! An output is checked in two steps so that nothing is created or truncated before every check
//! of the run has passed:
//!
//! 1. [`Output::prepare`], with the other checks: the path must be a regular file or not exist
//!    yet in a directory this process may create files in (`--serial file=` also takes
//!    `/dev/null` or a terminal). An existing file is opened *without* `O_TRUNC` and `O_CREAT`,
//!    and with `O_NONBLOCK`, so a path swapped for a FIFO cannot hang the monitor; its identity
//!    is taken from the open descriptor (`fstat`), so what was checked is what is later written.
//!    Nothing is written yet.
//! 2. [`Output::commit`], once the guest is about to start: the file held since step 1 is
//!    truncated, or the new file is created with `O_CREAT | O_EXCL` (if something appeared at the
//!    path meanwhile, the run fails rather than writing into it).
//!
//! Why not "write a temporary file and rename it over the path": a rename replaces a symbolic
//! link instead of writing where it points, breaks hard links and changes the file's owner and
//! mode, which for a console log someone is `tail -f`-ing is a surprise; and the serial console is
//! written for the whole life of the guest, so it cannot be renamed into place at the end.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use log::debug;
use thiserror::Error;

use crate::identity::{Extents, Identity, SYSFS_ROOT};

/// Which option names an output (for messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputOption {
    Report,
    SerialFile,
}

/// `--report PATH` or `--serial file=PATH`, as the user wrote it.
fn named(option: OutputOption, path: &Path) -> String {
    match option {
        OutputOption::Report => format!("--report {}", path.display()),
        OutputOption::SerialFile => format!("--serial file={}", path.display()),
    }
}

/// Why an output path cannot be used, or writing it failed.
#[derive(Debug, Error)]
pub enum OutputError {
    #[error("{}: it is {what}; give a regular file (or a new path in a writable directory){}",
        named(*.option, .path), if *.option == OutputOption::SerialFile { ", /dev/null or a terminal" } else { "" })]
    NotRegular {
        option: OutputOption,
        path: PathBuf,
        what: &'static str,
    },
    #[error("{}: a symbolic link to a missing file; give the target path itself", named(*.option, .path))]
    DanglingLink { option: OutputOption, path: PathBuf },
    #[error("{}: cannot create a file in {}: {source}", named(*.option, .path), .dir.display())]
    Directory {
        option: OutputOption,
        path: PathBuf,
        dir: PathBuf,
        source: io::Error,
    },
    #[error("{}: cannot open it for writing: {source}", named(*.option, .path))]
    Open {
        option: OutputOption,
        path: PathBuf,
        source: io::Error,
    },
    /// Writing at commit time: a host failure, not the user's mistake.
    #[error("{}: {op}: {source}", named(*.option, .path))]
    Write {
        option: OutputOption,
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
}

enum State {
    /// An existing regular file, opened without truncation.
    Existing(File),
    /// `/dev/null` or a terminal, opened.
    Device(File),
    /// To be created at commit time.
    New,
}

/// An output path that passed its checks; nothing has been written to it.
pub struct Output {
    option: OutputOption,
    path: PathBuf,
    state: State,
    extents: Extents,
}

/// Character devices `--serial file=` accepts: `/dev/null` (1:3) and terminals (tty majors 4,
/// 5, the pseudo-terminal slaves 136-143, USB and ARM serial 188 and 204).
fn is_console_device(rdev: u64) -> bool {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    (major, minor) == (1, 3) || matches!(major, 4 | 5 | 136..=143 | 188 | 204)
}

impl Output {
    /// Checks `path` for `option` and holds it open if it exists; writes nothing.
    pub fn prepare(option: OutputOption, path: &Path) -> Result<Output, OutputError> {
        let not_regular = |what| OutputError::NotRegular {
            option,
            path: path.to_path_buf(),
            what,
        };
        let open_err = |source| OutputError::Open {
            option,
            path: path.to_path_buf(),
            source,
        };
        if path.as_os_str().as_bytes().ends_with(b"/") {
            return Err(not_regular("a directory"));
        }
        let link = match std::fs::symlink_metadata(path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                return Err(OutputError::Directory {
                    option,
                    path: path.to_path_buf(),
                    dir: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
                    source: e,
                })
            }
            Err(e) => return Err(open_err(e)),
        };
        let Some(link) = link else {
            return Self::prepare_new(option, path);
        };
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound && link.file_type().is_symlink() => {
                return Err(OutputError::DanglingLink {
                    option,
                    path: path.to_path_buf(),
                })
            }
            Err(e) => return Err(open_err(e)),
        };
        // Look before opening: opening a FIFO blocks, opening some devices has side effects.
        let ft = meta.file_type();
        let device = option == OutputOption::SerialFile
            && ft.is_char_device()
            && is_console_device(meta.rdev());
        if !ft.is_file() && !device {
            return Err(not_regular(crate::identity::describe_file_type(&ft)));
        }
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(open_err)?;
        // Check what was opened, not what the path named a moment ago.
        let fmeta = file.metadata().map_err(open_err)?;
        let fft = fmeta.file_type();
        if fft.is_file() && !device {
            let extents = Extents::of(&fmeta, Path::new(SYSFS_ROOT));
            return Ok(Output {
                option,
                path: path.to_path_buf(),
                state: State::Existing(file),
                extents,
            });
        }
        if device && fft.is_char_device() && fmeta.rdev() == meta.rdev() {
            devices::pmem::backing::clear_nonblock(&file).map_err(open_err)?;
            let extents = Extents::of(&fmeta, Path::new(SYSFS_ROOT));
            return Ok(Output {
                option,
                path: path.to_path_buf(),
                state: State::Device(file),
                extents,
            });
        }
        Err(not_regular(crate::identity::describe_file_type(&fft)))
    }

    fn prepare_new(option: OutputOption, path: &Path) -> Result<Output, OutputError> {
        let dir_err = |source| OutputError::Directory {
            option,
            path: path.to_path_buf(),
            dir: parent_dir(path).to_path_buf(),
            source,
        };
        may_create_at(path).map_err(dir_err)?;
        let id = Identity::planned(path).map_err(dir_err)?;
        Ok(Output {
            option,
            path: path.to_path_buf(),
            state: State::New,
            extents: Extents::planned(id),
        })
    }

    pub fn option(&self) -> OutputOption {
        self.option
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the output's bytes are, for [`crate::identity`] comparisons.
    pub fn extents(&self) -> &Extents {
        &self.extents
    }

    /// Whether the path is created by [`commit`](Self::commit) (and may be removed again).
    pub fn is_new(&self) -> bool {
        matches!(self.state, State::New)
    }

    /// Truncates the existing file or creates the new one, and hands over the open file.
    pub fn commit(self) -> Result<File, OutputError> {
        let fail = |op, source| OutputError::Write {
            option: self.option,
            path: self.path.clone(),
            op,
            source,
        };
        match self.state {
            State::Existing(file) => {
                devices::pmem::backing::clear_nonblock(&file).map_err(|e| fail("fcntl", e))?;
                file.set_len(0).map_err(|e| fail("truncate", e))?;
                Ok(file)
            }
            State::Device(file) => Ok(file),
            State::New => {
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
                    .open(&self.path)
                    .map_err(|e| fail("create", e))?;
                debug!("{}: created", named(self.option, &self.path));
                Ok(file)
            }
        }
    }

    /// Commits and writes `bytes` as the whole file.
    /// A new file that cannot be written is removed again.
    pub fn commit_with(self, bytes: &[u8]) -> Result<(), OutputError> {
        let (option, path, new) = (self.option, self.path.clone(), self.is_new());
        let mut file = self.commit()?;
        file.write_all(bytes)
            .and_then(|()| file.flush())
            .map_err(|source| {
                if new {
                    let _ = std::fs::remove_file(&path);
                }
                OutputError::Write {
                    option,
                    path,
                    op: "write",
                    source,
                }
            })
    }
}

/// The directory a new file at `path` goes in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Whether this process may create a file at `path`: its directory exists, is a directory, and
/// [`may_create_in`] allows it. Errors are about the directory ([`parent_dir`]).
pub fn may_create_at(path: &Path) -> io::Result<()> {
    let dir = parent_dir(path);
    if !std::fs::metadata(dir)?.is_dir() {
        return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
    }
    may_create_in(dir)
}

/// Whether this process may create a file in `dir`: write and search permission for the
/// effective ids, a writable file system, and not an immutable directory (which stops root too).
pub fn may_create_in(dir: &Path) -> io::Result<()> {
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a NUL-terminated string that lives for the whole call; faccessat only
    // reads it.
    let rc = unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::W_OK | libc::X_OK,
            libc::AT_EACCESS,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn meta_snapshot(p: &Path) -> (u64, i64, i64, Vec<u8>) {
        let m = std::fs::metadata(p).unwrap();
        (
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            std::fs::read(p).unwrap(),
        )
    }

    #[test]
    fn prepare_writes_nothing_commit_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let existing = dir.path().join("old.json");
        std::fs::write(&existing, b"old contents").unwrap();
        let before = meta_snapshot(&existing);
        std::thread::sleep(Duration::from_millis(20));
        let out = Output::prepare(OutputOption::Report, &existing).unwrap();
        assert!(!out.is_new());
        assert_eq!(
            meta_snapshot(&existing),
            before,
            "prepare must not touch it"
        );
        out.commit_with(b"new").unwrap();
        assert_eq!(std::fs::read(&existing).unwrap(), b"new");

        let fresh = dir.path().join("fresh.json");
        let out = Output::prepare(OutputOption::Report, &fresh).unwrap();
        assert!(out.is_new());
        assert!(!fresh.exists(), "prepare must not create it");
        out.commit_with(b"{}").unwrap();
        assert_eq!(std::fs::read(&fresh).unwrap(), b"{}");
    }

    #[test]
    fn commit_refuses_a_path_that_appeared_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("late");
        let out = Output::prepare(OutputOption::Report, &p).unwrap();
        std::fs::write(&p, b"someone else's").unwrap();
        let e = out.commit_with(b"x").unwrap_err();
        assert!(matches!(e, OutputError::Write { .. }), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"someone else's");
    }

    #[test]
    fn non_regular_outputs_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path for the whole call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for option in [OutputOption::Report, OutputOption::SerialFile] {
            let e = Output::prepare(option, &fifo)
                .err()
                .expect("a FIFO is refused");
            assert!(e.to_string().contains("a FIFO"), "{e}");
            assert!(matches!(e, OutputError::NotRegular { .. }), "{e}");
        }
        let sock = dir.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let e = Output::prepare(OutputOption::Report, &sock).err().unwrap();
        assert!(e.to_string().contains("a socket"), "{e}");
        let e = Output::prepare(OutputOption::Report, dir.path())
            .err()
            .unwrap();
        assert!(e.to_string().contains("a directory"), "{e}");
        // /dev/null: fine for the console, not for the report.
        assert!(Output::prepare(OutputOption::SerialFile, Path::new("/dev/null")).is_ok());
        let e = Output::prepare(OutputOption::Report, Path::new("/dev/null"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("character device"), "{e}");
        // Other character devices are not opened at all.
        let e = Output::prepare(OutputOption::SerialFile, Path::new("/dev/zero"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("character device"), "{e}");
    }

    #[test]
    fn missing_directories_and_dangling_links_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = Output::prepare(OutputOption::SerialFile, &dir.path().join("nope/x"))
            .err()
            .unwrap();
        assert!(matches!(e, OutputError::Directory { .. }), "{e}");
        let link = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("missing"), &link).unwrap();
        let e = Output::prepare(OutputOption::Report, &link).err().unwrap();
        assert!(matches!(e, OutputError::DanglingLink { .. }), "{e}");
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        let e = Output::prepare(OutputOption::Report, &file.join("x"))
            .err()
            .unwrap();
        assert!(matches!(e, OutputError::Directory { .. }), "{e}");
    }
}
