//! Tests of opening, locking, identifying and sizing backings.

use super::*;
use crate::pmem::test_support::{
    checksum, fake_dax, is_root, maps_perms, message, req, write_file, MIB,
};

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::process::Command;

#[test]
fn next_multiple_of_the_granule() {
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
    if unsafe { vmm_sys_util::ioctl::ioctl_with_mut_ref(&f, FS_IOC_GETFLAGS(), &mut flags) } < 0 {
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
    let e = check_backing_size(p, BackingKind::DevDax { align: 4096 }, 3 * MIB, None).unwrap_err();
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
