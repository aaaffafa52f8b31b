//! Device-dax geometry from sysfs: a `/dev/daxX.Y` node says 0 bytes to `stat`, so its size and
//! mapping alignment are read from `/sys/dev/char/MAJ:MIN/{size,align}`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Where the real sysfs is mounted; tests pass a fake tree instead.
pub(crate) const SYSFS_ROOT: &str = "/sys";

/// Size and mapping alignment of a device-dax, from sysfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DaxGeometry {
    pub(crate) size: u64,
    pub(crate) align: u64,
}

/// A sysfs file that exists but cannot be read or parsed.
#[derive(Debug)]
pub(crate) struct SysfsError {
    pub(crate) file: PathBuf,
    pub(crate) reason: String,
}

/// Looks the character device `major:minor` up under `sysfs` (normally `/sys`). `Ok(None)` when
/// it is not device-dax. The device's directory `dev/char/MAJ:MIN` is a link to the dev_dax
/// device, whose `subsystem` link ends in `bus/dax` (or `class/dax` on kernels before the dax
/// bus), and which has `size` and `align` files; kernels without the per-device `align` only
/// have the region's, in `../dax_region/align` (`device/dax_region/align` under the class
/// layout). This is how QEMU's `get_file_size()` recognises a dax node.
pub(crate) fn probe_dax(
    sysfs: &Path,
    major: u32,
    minor: u32,
) -> Result<Option<DaxGeometry>, SysfsError> {
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::pmem::test_support::{fake_dax, MIB};

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
}
