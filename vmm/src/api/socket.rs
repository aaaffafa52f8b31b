//! `--api-socket path=PATH` or `--api-socket fd=N`: where the API listens.
//!
//! The socket path is an output path of the run, checked like `--report` and `--serial file=`
//! (see `crate::output`), with the same identity rules (`crate::identity`): it may not be a
//! backing, the kernel, the initramfs or another output, however reached. What may be at the
//! path: nothing (the socket is created there), or a socket no process listens on any more (a
//! stale one from a monitor that was killed, which is replaced). Anything else, a regular file
//! or a socket another process serves, is a usage error (exit 2) and is left alone. The check
//! creates nothing; [`ApiSocket::bind`] creates the socket once the check of the run has passed.

use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::config::ApiSocketOption;
use crate::identity::{Extents, Identity, SYSFS_ROOT};
use crate::output::{may_create_at, parent_dir};

#[derive(Debug, Error)]
pub enum ApiSocketError {
    #[error("--api-socket path={}: it is {what}; give a new path or a stale socket", .path.display())]
    NotSocket { path: PathBuf, what: &'static str },
    #[error("--api-socket path={}: another process is serving this socket", .path.display())]
    InUse { path: PathBuf },
    #[error("--api-socket path={}: cannot create a socket in {}: {source}", .path.display(), .dir.display())]
    Directory {
        path: PathBuf,
        dir: PathBuf,
        source: io::Error,
    },
    #[error("--api-socket path={}: {source}", .path.display())]
    Path { path: PathBuf, source: io::Error },
    #[error("--api-socket path={}: the path is longer than a Unix socket address takes (107 bytes)", .path.display())]
    TooLong { path: PathBuf },
    #[error("--api-socket fd={fd}: {reason}")]
    Fd { fd: RawFd, reason: String },
    /// Binding after the checks: the host's failure, not the user's.
    #[error("--api-socket path={}: {op}: {source}", .path.display())]
    Bind {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
}

impl ApiSocketError {
    /// Whether the user asked for something impossible (exit 2) rather than the host failing.
    pub fn is_usage(&self) -> bool {
        !matches!(self, ApiSocketError::Bind { .. })
    }
}

/// A checked `--api-socket`; nothing created yet.
#[derive(Debug)]
pub struct ApiSocket {
    option: ApiSocketOption,
    /// For `path=`: what the path is (for identity checks) and whether a stale socket is there.
    extents: Option<Extents>,
    stale: bool,
}

impl ApiSocket {
    /// Checks the option; creates, removes and writes nothing.
    pub fn prepare(option: &ApiSocketOption) -> Result<ApiSocket, ApiSocketError> {
        match option {
            ApiSocketOption::Fd(fd) => {
                check_listening_fd(*fd)?;
                Ok(ApiSocket {
                    option: option.clone(),
                    extents: None,
                    stale: false,
                })
            }
            ApiSocketOption::Path(path) => Self::prepare_path(option, path),
        }
    }

    fn prepare_path(option: &ApiSocketOption, path: &Path) -> Result<ApiSocket, ApiSocketError> {
        use std::os::unix::ffi::OsStrExt;
        if path.as_os_str().as_bytes().len() > 107 {
            return Err(ApiSocketError::TooLong {
                path: path.to_path_buf(),
            });
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) => {
                let ft = meta.file_type();
                if !ft.is_socket() {
                    return Err(ApiSocketError::NotSocket {
                        path: path.to_path_buf(),
                        what: crate::identity::describe_file_type(&ft),
                    });
                }
                // A socket someone answers on is theirs; one nobody answers on is stale.
                match UnixStream::connect(path) {
                    Ok(_) => Err(ApiSocketError::InUse {
                        path: path.to_path_buf(),
                    }),
                    Err(_) => Ok(ApiSocket {
                        option: option.clone(),
                        extents: Some(Extents::of(&meta, Path::new(SYSFS_ROOT))),
                        stale: true,
                    }),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let dir_err = |source| ApiSocketError::Directory {
                    path: path.to_path_buf(),
                    dir: parent_dir(path).to_path_buf(),
                    source,
                };
                may_create_at(path).map_err(dir_err)?;
                let id = Identity::planned(path).map_err(dir_err)?;
                Ok(ApiSocket {
                    option: option.clone(),
                    extents: Some(Extents::planned(id)),
                    stale: false,
                })
            }
            Err(source) => Err(ApiSocketError::Path {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// The socket this monitor has bound, as a claim for the checks of later `vm.create`s
    /// (never bound again).
    pub fn prepare_bound(bound: &BoundSocket) -> ApiSocket {
        let extents = bound
            .path
            .as_ref()
            .and_then(|p| std::fs::symlink_metadata(p).ok())
            .map(|m| Extents::of(&m, Path::new(SYSFS_ROOT)));
        ApiSocket {
            option: match &bound.path {
                Some(p) => ApiSocketOption::Path(p.clone()),
                None => ApiSocketOption::Fd(-1),
            },
            extents,
            stale: false,
        }
    }

    /// The path, when the socket has one.
    pub fn path(&self) -> Option<&Path> {
        match &self.option {
            ApiSocketOption::Path(p) => Some(p),
            ApiSocketOption::Fd(_) => None,
        }
    }

    /// What the path is, for [`crate::identity::check_claims`].
    pub fn extents(&self) -> Option<&Extents> {
        self.extents.as_ref()
    }

    /// Creates the socket (replacing a stale one) or takes over the inherited descriptor.
    pub fn bind(self) -> Result<BoundSocket, ApiSocketError> {
        match self.option {
            ApiSocketOption::Fd(fd) => {
                // SAFETY: `prepare` checked that `fd` is an open, listening Unix stream socket;
                // the monitor takes it over for its whole life and nothing else in the process
                // uses or closes this number.
                let listener = unsafe { UnixListener::from_raw_fd(fd) };
                Ok(BoundSocket {
                    listener,
                    path: None,
                })
            }
            ApiSocketOption::Path(path) => {
                let fail = |op, source| ApiSocketError::Bind {
                    path: path.clone(),
                    op,
                    source,
                };
                if self.stale {
                    // Only a socket: a path swapped for something else since the check stays.
                    match std::fs::symlink_metadata(&path) {
                        Ok(m) if m.file_type().is_socket() => {
                            std::fs::remove_file(&path)
                                .map_err(|e| fail("removing the stale socket", e))?;
                        }
                        Ok(_) => {
                            return Err(fail("bind", io::Error::from_raw_os_error(libc::EEXIST)))
                        }
                        Err(_) => {}
                    }
                }
                let listener = UnixListener::bind(&path).map_err(|e| fail("bind", e))?;
                Ok(BoundSocket {
                    listener,
                    path: Some(path),
                })
            }
        }
    }
}

/// Checks that `fd` is an open Unix stream socket in the listening state.
fn check_listening_fd(fd: RawFd) -> Result<(), ApiSocketError> {
    let fail = |reason: String| ApiSocketError::Fd { fd, reason };
    let int_opt = |opt| -> Result<libc::c_int, ApiSocketError> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `value`, an int on this frame;
        // on a descriptor that is not a socket it fails with ENOTSOCK or EBADF.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(fail(format!(
                "not an open socket: {}",
                io::Error::last_os_error()
            )));
        }
        Ok(value)
    };
    if int_opt(libc::SO_DOMAIN)? != libc::AF_UNIX {
        return Err(fail("expected a Unix domain socket".into()));
    }
    if int_opt(libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err(fail("expected a stream socket".into()));
    }
    if int_opt(libc::SO_ACCEPTCONN)? == 0 {
        return Err(fail(
            "the socket is not listening (call listen() first)".into(),
        ));
    }
    Ok(())
}

/// The listening socket; removes its path when dropped (when it created one).
pub struct BoundSocket {
    pub listener: UnixListener,
    path: Option<PathBuf>,
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn existing_non_sockets_are_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"keep me").unwrap();
        let e = ApiSocket::prepare(&ApiSocketOption::Path(file.clone())).unwrap_err();
        assert!(matches!(e, ApiSocketError::NotSocket { .. }), "{e}");
        assert!(e.is_usage());
        assert!(e.to_string().contains("a regular file"), "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
        let e = ApiSocket::prepare(&ApiSocketOption::Path(dir.path().into())).unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");
        let e = ApiSocket::prepare(&ApiSocketOption::Path(dir.path().join("no/such"))).unwrap_err();
        assert!(matches!(e, ApiSocketError::Directory { .. }), "{e}");
    }

    #[test]
    fn live_sockets_are_refused_stale_ones_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let live = UnixListener::bind(&path).unwrap();
        let e = ApiSocket::prepare(&ApiSocketOption::Path(path.clone())).unwrap_err();
        assert!(matches!(e, ApiSocketError::InUse { .. }), "{e}");
        drop(live); // the file stays: now stale
        assert!(path.exists());
        let checked = ApiSocket::prepare(&ApiSocketOption::Path(path.clone())).unwrap();
        let bound = checked.bind().unwrap();
        UnixStream::connect(&path).unwrap();
        drop(bound);
        assert!(!path.exists(), "the monitor removes the socket it created");
        // A new path: nothing is created by the check.
        let checked = ApiSocket::prepare(&ApiSocketOption::Path(path.clone())).unwrap();
        assert!(!path.exists());
        drop(checked);
    }

    #[test]
    fn inherited_descriptors_must_be_listening_unix_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("f")).unwrap();
        let e = ApiSocket::prepare(&ApiSocketOption::Fd(file.as_raw_fd())).unwrap_err();
        assert!(e.to_string().contains("not an open socket"), "{e}");
        let (a, _b) = UnixStream::pair().unwrap();
        let e = ApiSocket::prepare(&ApiSocketOption::Fd(a.as_raw_fd())).unwrap_err();
        assert!(e.to_string().contains("not listening"), "{e}");
        let l = UnixListener::bind(dir.path().join("s")).unwrap();
        assert!(ApiSocket::prepare(&ApiSocketOption::Fd(l.as_raw_fd())).is_ok());
    }
}
