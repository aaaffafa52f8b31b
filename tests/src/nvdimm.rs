//! Emulated NVDIMMs for the nested host, so tests get a real `/dev/daxN.0` in L1 to hand to
//! the vmm — something the direct mode can only use if the machine already has one.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::process::Command;

use crate::error::{Error, IoContext, Result};
use crate::markers::tail_lines;

/// Offset of the info block in a namespace (after the 4 KiB label/"reserved" area), and the
/// signatures of a device-DAX and an fsdax ("pfn") info block (`struct nd_pfn_sb`): the
/// monitor's own definitions.
pub use devices::pmem::infoblock::{
    DAX_SIG as DAX_SIGNATURE, INFO_BLOCK_OFFSET, PFN_SIG as PFN_SIGNATURE,
};

/// How L1 should see an emulated NVDIMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NvdimmKind {
    /// A devdax info block is written (if absent) so L1 creates `/dev/daxN.0`.
    Devdax {
        /// Mapping alignment recorded in the info block (2 MiB is what the vmm expects).
        align: u64,
    },
    /// No info block is written; L1 sees whatever the file holds (`/dev/pmemN` when empty).
    Raw,
}

/// One NVDIMM given to the nested host, backed by a file on this machine so the test can read
/// what the guest wrote after the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nvdimm {
    /// Backing file on the L0 host; created and sized if needed.
    pub backing: PathBuf,
    /// Size in bytes (a multiple of 2 MiB).
    pub size: u64,
    /// What L1 should get.
    pub kind: NvdimmKind,
}

impl Nvdimm {
    /// A device-DAX NVDIMM with 2 MiB alignment.
    pub fn devdax(backing: impl Into<PathBuf>, size: u64) -> Self {
        Nvdimm {
            backing: backing.into(),
            size,
            kind: NvdimmKind::Devdax { align: 2 << 20 },
        }
    }

    /// A raw NVDIMM (no info block written).
    pub fn raw(backing: impl Into<PathBuf>, size: u64) -> Self {
        Nvdimm {
            backing: backing.into(),
            size,
            kind: NvdimmKind::Raw,
        }
    }

    /// The device node L1 creates for the `index`-th NVDIMM (regions are numbered in the order
    /// QEMU lists the DIMMs in its NFIT, which is command-line order).
    pub fn l1_device(&self, index: usize) -> String {
        match self.kind {
            NvdimmKind::Devdax { .. } => format!("/dev/dax{index}.0"),
            NvdimmKind::Raw => format!("/dev/pmem{index}"),
        }
    }

    /// Creates and sizes the backing file, then writes a devdax info block with
    /// `ndctl write-infoblock` unless one is there already.
    pub fn prepare(&self) -> Result<()> {
        if self.size == 0 || !self.size.is_multiple_of(geometry::PMEM_SIZE_GRANULE) {
            return Err(Error::setup(format!(
                "NVDIMM {}: size {} is not a non-zero multiple of 2 MiB",
                self.backing.display(),
                self.size
            )));
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&self.backing)
            .ctx(|| format!("opening NVDIMM backing {}", self.backing.display()))?;
        let len = file
            .metadata()
            .ctx(|| format!("stat {}", self.backing.display()))?
            .len();
        if len != self.size {
            file.set_len(self.size)
                .ctx(|| format!("sizing {} to {}", self.backing.display(), self.size))?;
        }
        drop(file);
        if let NvdimmKind::Devdax { align } = self.kind {
            if self.signature()? != DAX_SIGNATURE {
                write_devdax_infoblock(&self.backing, align)?;
            }
        }
        Ok(())
    }

    /// The 16-byte signature at the info-block offset (zeros for a fresh file).
    pub fn signature(&self) -> Result<[u8; 16]> {
        let mut sig = [0u8; 16];
        let mut f = std::fs::File::open(&self.backing)
            .ctx(|| format!("opening {}", self.backing.display()))?;
        f.seek(SeekFrom::Start(INFO_BLOCK_OFFSET))
            .and_then(|_| f.read_exact(&mut sig))
            .ctx(|| format!("reading the info block of {}", self.backing.display()))?;
        Ok(sig)
    }

    /// Where byte 0 of L1's `/dev/daxN.0` lives in the backing file (the info block's
    /// `dataoff`, e.g. 18 MiB for 1 GiB with 2 MiB alignment).
    pub fn data_offset(&self) -> Result<u64> {
        let mut block = [0u8; 64];
        let mut f = std::fs::File::open(&self.backing)
            .ctx(|| format!("opening {}", self.backing.display()))?;
        f.seek(SeekFrom::Start(INFO_BLOCK_OFFSET))
            .and_then(|_| f.read_exact(&mut block))
            .ctx(|| format!("reading the info block of {}", self.backing.display()))?;
        info_block_dataoff(&block).ok_or_else(|| {
            Error::setup(format!(
                "{} has no devdax/fsdax info block at 4 KiB",
                self.backing.display()
            ))
        })
    }
}

/// `dataoff` from the first 64 bytes of a `struct nd_pfn_sb` (signature, uuid, parent_uuid,
/// flags, version_major, version_minor, then little-endian `dataoff` at byte 56).
pub fn info_block_dataoff(block: &[u8]) -> Option<u64> {
    let sig = block.get(..16)?;
    if sig != DAX_SIGNATURE && sig != PFN_SIGNATURE {
        return None;
    }
    let bytes: [u8; 8] = block.get(56..64)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// Runs `ndctl write-infoblock -o FILE --mode devdax --align ALIGN` on the L0 host.
pub fn write_devdax_infoblock(file: &std::path::Path, align: u64) -> Result<()> {
    let ndctl = crate::config::which("ndctl").ok_or_else(|| {
        Error::setup("writing a devdax info block needs ndctl (apt-get install ndctl)")
    })?;
    let out = Command::new(ndctl)
        .arg("write-infoblock")
        .arg("-o")
        .arg(file)
        .args(["--mode", "devdax", "--align"])
        .arg(align.to_string())
        .output()
        .ctx(|| "running ndctl write-infoblock".to_string())?;
    if !out.status.success() {
        return Err(Error::Command {
            cmd: format!("ndctl write-infoblock -o {} --mode devdax", file.display()),
            status: out.status.to_string(),
            output: tail_lines(
                &format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
                20,
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::ScratchDir;

    #[test]
    fn dataoff_parsing() {
        let mut b = [0u8; 64];
        assert_eq!(info_block_dataoff(&b), None);
        b[..16].copy_from_slice(&DAX_SIGNATURE);
        b[56..64].copy_from_slice(&(18u64 << 20).to_le_bytes());
        assert_eq!(info_block_dataoff(&b), Some(18 << 20));
    }

    #[test]
    fn devices_in_order() {
        assert_eq!(Nvdimm::devdax("/x", 2 << 20).l1_device(1), "/dev/dax1.0");
        assert_eq!(Nvdimm::raw("/x", 2 << 20).l1_device(0), "/dev/pmem0");
    }

    #[test]
    fn bad_size_rejected() {
        let d = ScratchDir::new("nvdimm").unwrap();
        let e = Nvdimm::raw(d.path().join("f"), 4096).prepare().unwrap_err();
        assert!(e.to_string().contains("2 MiB"), "{e}");
    }

    /// Agrees with ndctl on where the data starts (needs ndctl on the machine, as nested mode
    /// does; fails when it is missing).
    #[test]
    fn prepare_writes_an_info_block_ndctl_agrees_with() {
        assert!(
            crate::config::which("ndctl").is_some(),
            "this test needs ndctl on PATH (apt-get install ndctl; scripts/install-deps.sh)"
        );
        let d = ScratchDir::new("nvdimm").unwrap();
        let n = Nvdimm::devdax(d.path().join("dimm"), 1 << 30);
        n.prepare().unwrap();
        assert_eq!(n.signature().unwrap(), DAX_SIGNATURE);
        let meta = std::fs::metadata(&n.backing).unwrap();
        assert_eq!(meta.len(), 1 << 30);
        let dataoff = n.data_offset().unwrap();
        let out = Command::new("ndctl")
            .args(["read-infoblock", "-j", "-i"])
            .arg(&n.backing)
            .output()
            .unwrap();
        let json = String::from_utf8_lossy(&out.stdout);
        assert!(
            json.contains(&format!("{dataoff}")) || json.contains(&format!("{dataoff:#x}")),
            "dataoff {dataoff} not in {json}"
        );
        // A second prepare keeps the block.
        n.prepare().unwrap();
        assert_eq!(n.data_offset().unwrap(), dataoff);
    }
}
