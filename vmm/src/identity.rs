//! What a path really is, so that two paths naming the same bytes are never used for two
//! purposes: an output (`--report`, `--serial file=`) that is a backing, the kernel or the
//! initramfs, or two `--pmem` backings where one sits on the other.
//!
//! Paths are compared by the identity of what they resolve to, never by their text: `st_dev` and
//! `st_ino` for a regular file (so symbolic links, hard links and bind mounts compare equal), the
//! device number for a device node. A block device is also followed down to what holds its bytes:
//! a partition to its disk (at the partition's byte range), a loop device to its backing file
//! (`/sys/block/loopN/loop/backing_file`, at the loop's `offset` and `sizelimit`). Each object
//! becomes a list of [`Extent`]s; two objects alias when they share an extent of one identity with
//! overlapping byte ranges. A path that does not exist yet (a `size=` file to create, a new
//! output) is identified by its absolute path with the directory resolved.

use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use log::debug;
use thiserror::Error;

/// Where the real sysfs is mounted; tests pass a fake tree instead.
pub const SYSFS_ROOT: &str = "/sys";

/// How deep a chain of loop devices and partitions is followed (loop over a partition of a loop
/// over a file, ...); deeper chains are not followed further.
const MAX_DEPTH: usize = 8;

/// The identity of one file system object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// `st_dev` and `st_ino` of a regular file (or of anything that is not a device node).
    Inode { dev: u64, ino: u64 },
    /// `st_rdev` of a character device node.
    CharDevice { rdev: u64 },
    /// `st_rdev` of a block device node.
    BlockDevice { rdev: u64 },
    /// A path that does not exist yet: its directory resolved, then its name.
    Planned(PathBuf),
}

impl Identity {
    /// The identity of what `meta` (from `stat` or `fstat`) describes.
    pub fn of(meta: &Metadata) -> Identity {
        let ft = meta.file_type();
        if ft.is_char_device() {
            Identity::CharDevice { rdev: meta.rdev() }
        } else if ft.is_block_device() {
            Identity::BlockDevice { rdev: meta.rdev() }
        } else {
            Identity::Inode {
                dev: meta.dev(),
                ino: meta.ino(),
            }
        }
    }

    /// The identity a path that does not exist will have once created: `dir/name` with `dir`
    /// resolved (symbolic links, `..`), so two spellings of one new path compare equal.
    pub fn planned(path: &Path) -> io::Result<Identity> {
        let name = path.file_name().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name")
        })?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        Ok(Identity::Planned(fs::canonicalize(dir)?.join(name)))
    }
}

/// A byte range `[start, end)` of an object; `end` is `u64::MAX` when unbounded or unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    pub id: Identity,
    pub start: u64,
    pub end: u64,
}

impl Extent {
    fn whole(id: Identity) -> Extent {
        Extent {
            id,
            start: 0,
            end: u64::MAX,
        }
    }

    fn overlaps(&self, other: &Extent) -> bool {
        self.id == other.id && self.start < other.end && other.start < self.end
    }
}

/// Everything whose bytes an object's bytes are: the object itself, and for a block device the
/// disk under a partition and the file under a loop device, recursively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extents(pub Vec<Extent>);

impl Extents {
    /// A path that does not exist yet.
    pub fn planned(id: Identity) -> Extents {
        Extents(vec![Extent::whole(id)])
    }

    /// The object `meta` describes; block devices are followed through `sysfs`.
    pub fn of(meta: &Metadata, sysfs: &Path) -> Extents {
        let mut out = Vec::new();
        collect(meta, 0, u64::MAX, sysfs, 0, &mut out);
        Extents(out)
    }

    /// Whether the two objects share any byte.
    pub fn aliases(&self, other: &Extents) -> bool {
        self.0.iter().any(|a| other.0.iter().any(|b| a.overlaps(b)))
    }
}

fn collect(
    meta: &Metadata,
    start: u64,
    end: u64,
    sysfs: &Path,
    depth: usize,
    out: &mut Vec<Extent>,
) {
    let id = Identity::of(meta);
    out.push(Extent {
        id: id.clone(),
        start,
        end,
    });
    if let Identity::BlockDevice { rdev } = id {
        follow_block(rdev, start, end, sysfs, depth, out);
    }
}

/// Adds what block device `rdev`'s bytes `[start, end)` are bytes of: its disk when it is a
/// partition, the backing file when it (or its disk) is a loop device.
fn follow_block(
    rdev: u64,
    start: u64,
    end: u64,
    sysfs: &Path,
    depth: usize,
    out: &mut Vec<Extent>,
) {
    if depth >= MAX_DEPTH {
        debug!("block device {rdev:#x}: not following a chain deeper than {MAX_DEPTH}");
        return;
    }
    let mut dev_dir =
        sysfs
            .join("dev/block")
            .join(format!("{}:{}", libc::major(rdev), libc::minor(rdev)));
    let (mut start, mut end) = (start, end);
    // A partition: its bytes are a range of its disk, whose directory is the parent.
    if let Some(first_sector) = read_u64(&dev_dir.join("start")) {
        if dev_dir.join("partition").exists() {
            let offset = first_sector.saturating_mul(512);
            start = start.saturating_add(offset);
            end = end.saturating_add(offset);
            if let Some(sectors) = read_u64(&dev_dir.join("size")) {
                end = end.min(offset.saturating_add(sectors.saturating_mul(512)));
            }
            let Ok(disk_dir) = fs::canonicalize(&dev_dir).map(|d| d.join("..")) else {
                return;
            };
            if let Some(disk) = read_dev_number(&disk_dir.join("dev")) {
                out.push(Extent {
                    id: Identity::BlockDevice { rdev: disk },
                    start,
                    end,
                });
            }
            dev_dir = disk_dir;
        }
    }
    // A loop device: its bytes are a range of its backing file.
    let Ok(text) = fs::read_to_string(dev_dir.join("loop/backing_file")) else {
        return;
    };
    let file = text.trim_end_matches('\n');
    if file.ends_with(" (deleted)") {
        debug!("loop device {rdev:#x}: backing file {file:?} is deleted");
        return;
    }
    let offset = read_u64(&dev_dir.join("loop/offset")).unwrap_or(0);
    let limit = read_u64(&dev_dir.join("loop/sizelimit")).unwrap_or(0);
    let (mut lo_start, mut lo_end) = (start.saturating_add(offset), end.saturating_add(offset));
    if limit != 0 {
        lo_end = lo_end.min(offset.saturating_add(limit));
    }
    if lo_start > lo_end {
        lo_start = lo_end;
    }
    match fs::metadata(file) {
        Ok(m) => collect(&m, lo_start, lo_end, sysfs, depth + 1, out),
        Err(e) => debug!("loop device {rdev:#x}: backing file {file:?}: {e}"),
    }
}

fn read_u64(file: &Path) -> Option<u64> {
    fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// A sysfs `dev` file: `MAJOR:MINOR`.
fn read_dev_number(file: &Path) -> Option<u64> {
    let text = fs::read_to_string(file).ok()?;
    let (major, minor) = text.trim().split_once(':')?;
    Some(libc::makedev(major.parse().ok()?, minor.parse().ok()?))
}

/// What the monitor does with a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Kernel,
    Initramfs,
    /// A `--pmem` backing; `writable` unless `readonly=on`.
    Pmem {
        writable: bool,
    },
    Report,
    SerialFile,
    /// `--api-socket path=`: created by the monitor.
    ApiSocket,
}

impl Role {
    fn writes(self) -> bool {
        matches!(
            self,
            Role::Pmem { writable: true } | Role::Report | Role::SerialFile | Role::ApiSocket
        )
    }

    fn is_output(self) -> bool {
        matches!(self, Role::Report | Role::SerialFile | Role::ApiSocket)
    }
}

/// `--kernel PATH`, `--serial file=PATH`: the option and the path as the user typed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub role: Role,
    pub path: PathBuf,
}

impl std::fmt::Display for Named {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self.path.display();
        match self.role {
            Role::Kernel => write!(f, "--kernel {p}"),
            Role::Initramfs => write!(f, "--initramfs {p}"),
            Role::Pmem { .. } => write!(f, "--pmem path={p}"),
            Role::Report => write!(f, "--report {p}"),
            Role::SerialFile => write!(f, "--serial file={p}"),
            Role::ApiSocket => write!(f, "--api-socket path={p}"),
        }
    }
}

/// A path the monitor writes is one it also reads or writes for another purpose.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{written}: it is the same file as {other} (compared by identity, through links, bind mounts and loop devices); the monitor would overwrite it: give another path")]
pub struct AliasError {
    /// The use that writes.
    pub written: Named,
    pub other: Named,
}

/// One path of the run with what it is.
pub struct Claim<'a> {
    pub role: Role,
    pub path: &'a Path,
    pub extents: &'a Extents,
}

/// Refuses any two uses of the same bytes where one of them writes: an output that is a backing,
/// the kernel, the initramfs or the other output, or a writable backing that is the kernel or the
/// initramfs. (Two backings sharing bytes are refused when the backings are opened.)
pub fn check_claims(claims: &[Claim]) -> Result<(), AliasError> {
    for (j, b) in claims.iter().enumerate() {
        for a in &claims[..j] {
            let both_pmem =
                matches!(a.role, Role::Pmem { .. }) && matches!(b.role, Role::Pmem { .. });
            if both_pmem || !(a.role.writes() || b.role.writes()) {
                continue;
            }
            if !a.extents.aliases(b.extents) {
                continue;
            }
            // Name the output first, else the one that is written.
            let (w, o) = if b.role.is_output() || (!a.role.is_output() && b.role.writes()) {
                (b, a)
            } else {
                (a, b)
            };
            return Err(AliasError {
                written: Named {
                    role: w.role,
                    path: w.path.to_path_buf(),
                },
                other: Named {
                    role: o.role,
                    path: o.path.to_path_buf(),
                },
            });
        }
    }
    Ok(())
}

/// What a file type is, in words for messages ("a FIFO", "a block device", ...).
pub fn describe_file_type(ft: &std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn claims_refuse_writing_what_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("bzImage");
        fs::write(&k, b"k").unwrap();
        symlink(&k, dir.path().join("link")).unwrap();
        let sys = dir.path().join("nosys");
        let kernel = Extents::of(&fs::metadata(&k).unwrap(), &sys);
        let link = Extents::of(&fs::metadata(dir.path().join("link")).unwrap(), &sys);
        let claim = |role, path: &'static str, extents| Claim {
            role,
            path: Path::new(path),
            extents,
        };
        let e = check_claims(&[
            claim(Role::Kernel, "bzImage", &kernel),
            claim(Role::Report, "link", &link),
        ])
        .unwrap_err();
        assert_eq!(e.written.role, Role::Report);
        assert!(
            e.to_string()
                .starts_with("--report link: it is the same file as --kernel bzImage"),
            "{e}"
        );
        // Reading one file twice is fine; so is a read-only backing that is the kernel.
        assert!(check_claims(&[
            claim(Role::Kernel, "a", &kernel),
            claim(Role::Initramfs, "b", &link),
            claim(Role::Pmem { writable: false }, "c", &link),
        ])
        .is_ok());
        let e = check_claims(&[
            claim(Role::Kernel, "a", &kernel),
            claim(Role::Pmem { writable: true }, "c", &link),
        ])
        .unwrap_err();
        assert_eq!(e.written.role, Role::Pmem { writable: true });
        // Two new outputs at one planned path.
        let p = Extents::planned(Identity::planned(&dir.path().join("new")).unwrap());
        let e = check_claims(&[
            claim(Role::SerialFile, "x/../new", &p),
            claim(Role::Report, "new", &p),
        ])
        .unwrap_err();
        assert_eq!(e.written.role, Role::Report);
    }

    #[test]
    fn links_compare_equal() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        fs::write(&a, b"x").unwrap();
        fs::hard_link(&a, dir.path().join("hard")).unwrap();
        symlink(&a, dir.path().join("soft")).unwrap();
        fs::write(dir.path().join("other"), b"x").unwrap();
        let sys = dir.path().join("nosys");
        let ext = |n: &str| Extents::of(&fs::metadata(dir.path().join(n)).unwrap(), &sys);
        assert!(ext("a").aliases(&ext("hard")));
        assert!(ext("a").aliases(&ext("soft")));
        assert!(!ext("a").aliases(&ext("other")));
    }

    #[test]
    fn planned_paths_resolve_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("d")).unwrap();
        symlink(dir.path().join("d"), dir.path().join("l")).unwrap();
        let a = Identity::planned(&dir.path().join("d/new")).unwrap();
        let b = Identity::planned(&dir.path().join("l/../d/new")).unwrap();
        let c = Identity::planned(&dir.path().join("l/new")).unwrap();
        assert_eq!(a, c);
        // `l/..` is the parent of `d`'s target, the same directory as `dir`.
        assert_eq!(b, a);
        assert!(Identity::planned(&dir.path().join("missing/new")).is_err());
    }

    /// A fake sysfs entry for block device `maj:min`.
    fn fake_block(sys: &Path, maj: u32, min: u32, files: &[(&str, &str)]) -> PathBuf {
        let dir = sys.join(format!("devices/{maj}-{min}"));
        fs::create_dir_all(dir.join("loop")).unwrap();
        for (name, value) in files {
            fs::write(dir.join(name), value).unwrap();
        }
        fs::create_dir_all(sys.join("dev/block")).unwrap();
        symlink(&dir, sys.join(format!("dev/block/{maj}:{min}"))).unwrap();
        dir
    }

    fn extents_of_block(rdev: u64, sys: &Path) -> Extents {
        // A real block device node is not available in a test: start where `collect` does
        // after pushing the node's own extent.
        let mut out = vec![Extent::whole(Identity::BlockDevice { rdev })];
        follow_block(rdev, 0, u64::MAX, sys, 0, &mut out);
        Extents(out)
    }

    #[test]
    fn loop_device_aliases_its_backing_file_range() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        let file = dir.path().join("disk.img");
        fs::write(&file, vec![0u8; 8192]).unwrap();
        let backing = format!("{}\n", file.display());
        fake_block(&sys, 7, 0, &[("loop/backing_file", &backing)]);
        fake_block(
            &sys,
            7,
            1,
            &[
                ("loop/backing_file", &backing),
                ("loop/offset", "4096"),
                ("loop/sizelimit", "4096"),
            ],
        );
        let whole = extents_of_block(libc::makedev(7, 0), &sys);
        let tail = extents_of_block(libc::makedev(7, 1), &sys);
        let file_ext = Extents::of(&fs::metadata(&file).unwrap(), &sys);
        assert!(whole.aliases(&file_ext));
        assert!(tail.aliases(&file_ext));
        assert!(whole.aliases(&tail));
        // A loop over the first 4 KiB and one over the second do not share bytes.
        fake_block(
            &sys,
            7,
            2,
            &[("loop/backing_file", &backing), ("loop/sizelimit", "4096")],
        );
        let head = extents_of_block(libc::makedev(7, 2), &sys);
        assert!(!head.aliases(&tail));
        assert!(head.aliases(&whole));
    }

    #[test]
    fn deleted_backing_files_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        fake_block(&sys, 7, 3, &[("loop/backing_file", "/x (deleted)\n")]);
        assert_eq!(extents_of_block(libc::makedev(7, 3), &sys).0.len(), 1);
    }

    #[test]
    fn partitions_are_ranges_of_their_disk() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        let file = dir.path().join("disk.img");
        fs::write(&file, vec![0u8; 4096]).unwrap();
        let disk = fake_block(
            &sys,
            7,
            8,
            &[
                ("loop/backing_file", &format!("{}\n", file.display())),
                ("dev", "7:8\n"),
            ],
        );
        for (min, start) in [(9u32, "2048"), (10, "4096")] {
            let part = disk.join(format!("p{min}"));
            fs::create_dir_all(&part).unwrap();
            for (name, value) in [("partition", "1"), ("start", start), ("size", "2048")] {
                fs::write(part.join(name), value).unwrap();
            }
            symlink(&part, sys.join(format!("dev/block/7:{min}"))).unwrap();
        }
        let p1 = extents_of_block(libc::makedev(7, 9), &sys);
        let p2 = extents_of_block(libc::makedev(7, 10), &sys);
        let whole = extents_of_block(libc::makedev(7, 8), &sys);
        let file_ext = Extents::of(&fs::metadata(&file).unwrap(), &sys);
        assert!(!p1.aliases(&p2), "{p1:?} {p2:?}");
        assert!(p1.aliases(&whole) && p2.aliases(&whole));
        assert!(p1.aliases(&file_ext) && p2.aliases(&file_ext));
        assert_eq!(p1.0[1].start, 2048 * 512);
        assert_eq!(p1.0[1].end, 4096 * 512);
    }
}
