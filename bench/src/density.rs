//! The density phase's sharing figures: which host pages back each monitor's mapping of the root
//! image, from `/proc/PID/maps` and `/proc/PID/pagemap` (read by `bench-probe density` on the
//! KVM host, as root: without `CAP_SYS_ADMIN` the kernel reports every frame number as 0).
//!
//! A guest page of the image is *shared* when the frames of two monitors' mappings are the same
//! frame: one page of the host's page cache serving both. Each monitor's mapping is keyed by the
//! file (device and inode) and the page's offset in it, so the same page of one file mapped by
//! two monitors must resolve to one frame (`mismatch` counts those that do not: a private copy
//! made by copy-on-write, say), and pages of different files (one copy per guest) never can.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Page size of the pagemap (x86_64).
pub const PAGE: u64 = 4096;

/// One line of `/proc/PID/maps` that maps a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMapping {
    /// Start address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// Offset in the file of `start`.
    pub offset: u64,
    /// `major:minor` of the file's device.
    pub dev: String,
    /// The file's inode.
    pub inode: u64,
    /// Its path.
    pub path: String,
}

/// The file mappings of `/proc/PID/maps` text whose path starts with one of `prefixes`.
pub fn image_mappings(maps: &str, prefixes: &[String]) -> Vec<FileMapping> {
    maps.lines()
        .filter_map(|line| {
            let mut w = line.split_whitespace();
            let (a, b) = w.next()?.split_once('-')?;
            let _perms = w.next()?;
            let offset = u64::from_str_radix(w.next()?, 16).ok()?;
            let dev = w.next()?.to_string();
            let inode: u64 = w.next()?.parse().ok()?;
            let path = w.collect::<Vec<_>>().join(" ");
            if inode == 0
                || !prefixes
                    .iter()
                    .any(|p| !p.is_empty() && path.starts_with(p))
            {
                return None;
            }
            Some(FileMapping {
                start: u64::from_str_radix(a, 16).ok()?,
                end: u64::from_str_radix(b, 16).ok()?,
                offset,
                dev,
                inode,
                path,
            })
        })
        .collect()
}

/// The frame number of a pagemap entry, when the page is present.
pub fn present_pfn(entry: u64) -> Option<u64> {
    (entry >> 63 == 1).then_some(entry & ((1 << 55) - 1))
}

/// A present page of a monitor's image mapping: `(device, inode, page index in the file)` and
/// its frame.
pub type PageKey = (String, u64, u64);

/// What the monitors' image mappings resolve to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sharing {
    /// Present pages summed over monitors.
    pub mapped: u64,
    /// Distinct frames among them.
    pub distinct: u64,
    /// Distinct frames present in two monitors or more.
    pub shared: u64,
    /// Pages of one file at one offset that two monitors map with different frames.
    pub mismatch: u64,
    /// Distinct files mapped.
    pub files: u64,
}

/// Sharing of `pages`: one list of `(key, frame)` per monitor.
pub fn sharing(pages: &[Vec<(PageKey, u64)>]) -> Sharing {
    let mut monitors_of_pfn: BTreeMap<u64, BTreeSet<usize>> = BTreeMap::new();
    let mut pfns_of_key: BTreeMap<&PageKey, BTreeSet<u64>> = BTreeMap::new();
    let mut files: BTreeSet<(&str, u64)> = BTreeSet::new();
    let mut mapped = 0;
    for (i, list) in pages.iter().enumerate() {
        for (key, pfn) in list {
            mapped += 1;
            monitors_of_pfn.entry(*pfn).or_default().insert(i);
            pfns_of_key.entry(key).or_default().insert(*pfn);
            files.insert((key.0.as_str(), key.1));
        }
    }
    Sharing {
        mapped,
        distinct: monitors_of_pfn.len() as u64,
        shared: monitors_of_pfn.values().filter(|m| m.len() > 1).count() as u64,
        mismatch: pfns_of_key.values().filter(|p| p.len() > 1).count() as u64,
        files: files.len() as u64,
    }
}

/// Builds the density phase's root file system image in `dir` and returns its path: ext4 with
/// 4 KiB blocks (what DAX needs; `mke2fs` would pick 1 KiB for a file system this small), no
/// journal (it is only ever mounted read-only), holding `busybox` (from `busybox-static`, as the
/// guest initramfs) with every applet as a link in `/bin`, empty `/dev`, `/proc`, `/sys`,
/// `/tmp` and `init` ([`crate::scripts::DENSITY_INIT`]). `size` is the file system's size.
pub fn build_rootfs(
    dir: &Path,
    busybox: &Path,
    mke2fs: &Path,
    size: u64,
) -> Result<PathBuf, String> {
    let tree = dir.join("rootfs");
    let _ = std::fs::remove_dir_all(&tree);
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    for d in ["bin", "dev", "proc", "sys", "tmp"] {
        std::fs::create_dir_all(tree.join(d)).map_err(|e| io(d, e))?;
    }
    std::fs::copy(busybox, tree.join("bin/busybox"))
        .map_err(|e| io(&format!("copying {}", busybox.display()), e))?;
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|e| io(&format!("running {} --list", busybox.display()), e))?;
    let applets = String::from_utf8_lossy(&list.stdout).into_owned();
    if !list.status.success() || applets.lines().all(|a| a.trim() != "sh") {
        return Err(format!("{} --list names no sh", busybox.display()));
    }
    for applet in applets
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        std::os::unix::fs::symlink("busybox", tree.join("bin").join(applet))
            .map_err(|e| io(applet, e))?;
    }
    let init = tree.join("init");
    std::fs::write(&init, crate::scripts::DENSITY_INIT).map_err(|e| io("init", e))?;
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(|e| io("init", e))?;
    let image = dir.join(crate::scripts::DENSITY_ROOTFS);
    let _ = std::fs::remove_file(&image);
    let out = Command::new(mke2fs)
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-O",
            "^has_journal",
            "-L",
            "densroot",
        ])
        .args(["-E", "root_owner=0:0", "-d"])
        .arg(&tree)
        .arg(&image)
        .arg(format!("{}k", size / 1024))
        .output()
        .map_err(|e| io(&format!("running {}", mke2fs.display()), e))?;
    let _ = std::fs::remove_dir_all(&tree);
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            mke2fs.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0000000-55d0c0200000 r-xp 00000000 00:1f 1234    /testbed/bin/vmm
7f0010000000-7f0014000000 r--s 00200000 00:1f 99   /work/dens-shared.img
7f0020000000-7f0020001000 rw-p 00000000 00:00 0 
7f0030000000-7f0034000000 r--p 00000000 00:1f 100   /work/dens-copy-1.img (deleted)
";

    #[test]
    fn finds_the_image_mappings() {
        let m = image_mappings(MAPS, &["/work/dens-".into()]);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].start, 0x7f00_1000_0000);
        assert_eq!(m[0].end, 0x7f00_1400_0000);
        assert_eq!(m[0].offset, 0x20_0000);
        assert_eq!((m[0].dev.as_str(), m[0].inode), ("00:1f", 99));
        assert_eq!(m[1].path, "/work/dens-copy-1.img (deleted)");
        assert!(image_mappings(MAPS, &[String::new()]).is_empty());
    }

    /// The image holds an ext4 file system with 4 KiB blocks and the init (read back with
    /// `debugfs`, which comes with `mke2fs`).
    #[test]
    fn rootfs_image() {
        let (busybox, mke2fs) = (Path::new("/bin/busybox"), Path::new(crate::scripts::MKE2FS));
        assert!(
            busybox.is_file() && mke2fs.is_file(),
            "needs busybox-static and e2fsprogs"
        );
        let dir = testbed::ScratchDir::new("density-rootfs").unwrap();
        let image = build_rootfs(dir.path(), busybox, mke2fs, 16 << 20).unwrap();
        assert_eq!(std::fs::metadata(&image).unwrap().len(), 16 << 20);
        let debugfs = mke2fs.with_file_name("debugfs");
        let out = Command::new(&debugfs)
            .args(["-R", "stats"])
            .arg(&image)
            .output()
            .unwrap();
        let stats = String::from_utf8_lossy(&out.stdout);
        assert!(stats.contains("Block size:               4096"), "{stats}");
        assert!(!stats.contains("has_journal"), "{stats}");
        let out = Command::new(&debugfs)
            .args(["-R", "cat /init"])
            .arg(&image)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            crate::scripts::DENSITY_INIT
        );
        assert!(!dir.path().join("rootfs").exists());
    }

    #[test]
    fn pagemap_entries() {
        assert_eq!(present_pfn((1 << 63) | 0x1234), Some(0x1234));
        // Soft-dirty and exclusive bits are not part of the frame.
        assert_eq!(present_pfn((1 << 63) | (1 << 55) | (1 << 56) | 7), Some(7));
        assert_eq!(present_pfn(0x1234), None);
    }

    fn key(inode: u64, page: u64) -> PageKey {
        ("00:1f".into(), inode, page)
    }

    #[test]
    fn shared_and_private() {
        // Two monitors, one file: pages 0 and 1 resolve to the same frames.
        let one = sharing(&[
            vec![(key(9, 0), 100), (key(9, 1), 101)],
            vec![(key(9, 0), 100), (key(9, 1), 101), (key(9, 2), 102)],
        ]);
        assert_eq!(
            one,
            Sharing {
                mapped: 5,
                distinct: 3,
                shared: 2,
                mismatch: 0,
                files: 1
            }
        );
        // One copy each: nothing shared, nothing to mismatch.
        let copies = sharing(&[vec![(key(9, 0), 100)], vec![(key(10, 0), 200)]]);
        assert_eq!((copies.shared, copies.mismatch, copies.files), (0, 0, 2));
        assert_eq!(copies.distinct, copies.mapped);
        // One file, but a private copy of page 0 in the second monitor.
        let cow = sharing(&[vec![(key(9, 0), 100)], vec![(key(9, 0), 300)]]);
        assert_eq!((cow.shared, cow.mismatch), (0, 1));
    }
}
