//! A minimal writer for the `newc` cpio format the kernel unpacks as an initramfs.
//!
//! Written here rather than calling `cpio` so that the L1 image can hold device nodes
//! (`/dev/console`) without root and so that file paths inside the archive need not exist on
//! the host. The archive is left uncompressed: under TCG the L1 kernel would spend seconds
//! inflating it, while copying it in is nearly free.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Streams entries into a newc archive. Parent directories are created implicitly.
pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
    dirs: BTreeSet<String>,
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive on `out`.
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            written: 0,
            next_ino: 1,
            dirs: BTreeSet::new(),
        }
    }

    /// Adds a directory (and its parents) with mode `perm`.
    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        let path = clean(path);
        if path.is_empty() || self.dirs.contains(&path) {
            return Ok(());
        }
        self.parents(&path)?;
        self.dirs.insert(path.clone());
        self.entry(&path, S_IFDIR | (perm & 0o7777), 2, 0, 0, &mut io::empty())
    }

    /// Adds a regular file with the given contents.
    pub fn file_bytes(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        let path = clean(path);
        self.parents(&path)?;
        self.entry(
            &path,
            S_IFREG | (perm & 0o7777),
            1,
            data.len() as u64,
            0,
            &mut &data[..],
        )
    }

    /// Adds a regular file copied from `src` on the host (symlinks followed), keeping its mode.
    pub fn file_from(&mut self, path: &str, src: &Path) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let path = clean(path);
        self.parents(&path)?;
        let mut f = File::open(src)?;
        let meta = f.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", src.display()),
            ));
        }
        let perm = meta.permissions().mode() & 0o7777;
        self.entry(&path, S_IFREG | perm, 1, meta.len(), 0, &mut f)
    }

    /// Adds a symbolic link `path` pointing at `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let path = clean(path);
        self.parents(&path)?;
        let t = target.as_bytes();
        self.entry(&path, S_IFLNK | 0o777, 1, t.len() as u64, 0, &mut &t[..])
    }

    /// Adds a character device node.
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        let path = clean(path);
        self.parents(&path)?;
        let rdev = (major << 8) | minor;
        self.entry(
            &path,
            S_IFCHR | (perm & 0o7777),
            1,
            0,
            rdev,
            &mut io::empty(),
        )
    }

    /// Writes the trailer and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, 1, 0, 0, &mut io::empty())?;
        // Pad the archive to a 512-byte multiple like cpio(1) does.
        let pad = (512 - (self.written % 512)) % 512;
        self.out.write_all(&vec![0u8; pad as usize])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn parents(&mut self, path: &str) -> io::Result<()> {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent, 0o755)?;
        }
        Ok(())
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        size: u64,
        rdev: u32,
        data: &mut dyn Read,
    ) -> io::Result<()> {
        let size32 = u32::try_from(size).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{name}: over 4 GiB"))
        })?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            size32,
            0, // devmajor
            0, // devminor
            rdev >> 8,
            rdev & 0xff,
            name.len() as u32 + 1,
            0, // check
        ];
        let mut header = String::from("070701");
        for f in fields {
            header.push_str(&format!("{f:08X}"));
        }
        self.write(header.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad4()?;
        let copied = io::copy(&mut data.take(size), &mut self.out)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{name}: file changed while archiving"),
            ));
        }
        self.written += copied;
        self.pad4()
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad4(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4)) % 4;
        self.write(&[0u8; 3][..pad as usize])
    }
}

/// Archive paths are relative (`bin/sh`, not `/bin/sh`) and have no `.` components.
fn clean(path: &str) -> String {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout() {
        let mut w = CpioWriter::new(Vec::new());
        w.file_bytes("/a", 0o644, b"xyz").unwrap();
        let buf = w.finish().unwrap();
        let h = std::str::from_utf8(&buf[..110]).unwrap();
        assert_eq!(&h[..6], "070701");
        assert_eq!(&h[6..14], "00000001"); // ino
        assert_eq!(&h[14..22], "000081A4"); // regular file 0644
        assert_eq!(&h[54..62], "00000003"); // size
        assert_eq!(&h[94..102], "00000002"); // namesize "a\0"
        assert_eq!(&buf[110..112], b"a\0");
        // 112 is 4-aligned, so data follows directly.
        assert_eq!(&buf[112..115], b"xyz");
        assert_eq!(buf.len() % 512, 0);
    }

    #[test]
    fn clean_paths() {
        assert_eq!(clean("/usr//lib/./x"), "usr/lib/x");
        assert_eq!(clean("/"), "");
    }

    /// Round trip through GNU cpio (installed by scripts/install-deps.sh; fails without it).
    #[test]
    fn gnu_cpio_lists_what_we_wrote() {
        let cpio = crate::config::which("cpio")
            .expect("this test needs GNU cpio on PATH (apt-get install cpio)");
        let mut w = CpioWriter::new(Vec::new());
        w.file_bytes("/usr/bin/x", 0o755, b"#!/bin/sh\n").unwrap();
        w.symlink("/bin/sh", "busybox").unwrap();
        w.char_dev("/dev/console", 0o600, 5, 1).unwrap();
        w.dir("/proc", 0o755).unwrap();
        let buf = w.finish().unwrap();
        let mut child = std::process::Command::new(cpio)
            .args(["-t", "-v", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&buf).unwrap();
        let out = child.wait_with_output().unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{listing}");
        for needle in [
            "usr/bin/x",
            "bin/sh -> busybox",
            "dev/console",
            "proc",
            "usr\n",
        ] {
            assert!(listing.contains(needle), "{needle} missing from\n{listing}");
        }
        assert!(listing.contains("crw-------"), "{listing}");
        assert!(listing.contains("-rwxr-xr-x"), "{listing}");
    }
}
