//! Helpers shared by the pmem modules' unit tests.

use std::fs;
use std::hash::{DefaultHasher, Hasher};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use crate::pmem::backing::{BackingError, BackingRequest};

/// Fails the calling test unless `ndctl` runs: the tests that cross-check the info block against
/// `ndctl write-infoblock` / `ndctl read-infoblock` need it (CI installs it).
pub(crate) fn require_ndctl() {
    let found = Command::new("ndctl").arg("--version").output();
    match found {
        Ok(out) if out.status.success() => {}
        _ => panic!(
            "ndctl is not installed (or not on PATH): this test cross-checks the info block \
             against `ndctl write-infoblock` / `ndctl read-infoblock`. Install it \
             (Debian/Ubuntu: `apt-get install ndctl`) and run the tests again."
        ),
    }
}

pub(crate) const MIB: u64 = 1 << 20;

pub(crate) fn req(path: &Path, size: Option<u64>, readonly: bool) -> BackingRequest {
    BackingRequest {
        path: path.to_path_buf(),
        size,
        readonly,
    }
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A file of `len` bytes with content that depends on `seed`.
pub(crate) fn write_file(path: &Path, len: u64, seed: u8) {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    fs::write(path, data).unwrap();
}

pub(crate) fn checksum(path: &Path) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(&fs::read(path).unwrap());
    h.finish()
}

/// The permission field ("rw-s", "r--s", ...) of the mapping that starts at `addr`.
pub(crate) fn maps_perms(addr: *mut u8) -> String {
    let maps = fs::read_to_string("/proc/self/maps").unwrap();
    let want = format!("{:x}-", addr as usize);
    let line = maps
        .lines()
        .find(|l| l.starts_with(&want))
        .unwrap_or_else(|| panic!("no mapping at {addr:p} in /proc/self/maps"));
    line.split_whitespace().nth(1).unwrap().to_string()
}

/// Asserts the one-line, path-first shape of every message.
pub(crate) fn message(e: &BackingError, path: &Path) -> String {
    let text = e.to_string();
    assert!(!text.contains('\n'), "{text}");
    assert!(
        text.starts_with(&path.display().to_string()),
        "{text} does not start with {}",
        path.display()
    );
    text
}

/// A fake sysfs with the dev_dax device `major:minor` the way the dax bus lays it out:
/// `dev/char/M:m -> devices/.../region0/dax0.0/dax0.0` with `subsystem -> bus/dax`, and
/// the region's `dax_region/align` one level up.
pub(crate) fn fake_dax(
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
