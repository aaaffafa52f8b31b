//! Self-deleting scratch directories (a few lines instead of a `tempfile` dependency).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::{IoContext, Result};

/// A directory under `$TMPDIR` removed (recursively) on drop, unless [`ScratchDir::keep`] is
/// called. Tests use it for share directories and NVDIMM backing files.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
    keep: bool,
}

impl ScratchDir {
    /// Creates `$TMPDIR/pmem-vmm-<label>-<pid>-<n>`.
    pub fn new(label: &str) -> Result<Self> {
        Self::new_in(&std::env::temp_dir(), label)
    }

    /// Creates a fresh directory under `parent`.
    pub fn new_in(parent: &Path, label: &str) -> Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        std::fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = parent.join(format!("pmem-vmm-{label}-{}-{n}", std::process::id()));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(ScratchDir { path, keep: false }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(crate::Error::io(format!("creating {}", path.display()), e)),
            }
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leaves the directory in place after drop (for post-mortem debugging).
    pub fn keep(mut self) -> PathBuf {
        self.keep = true;
        self.path.clone()
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_and_removed() {
        let d = ScratchDir::new("unit").unwrap();
        let p = d.path().to_path_buf();
        std::fs::write(p.join("f"), b"x").unwrap();
        assert!(p.is_dir());
        drop(d);
        assert!(!p.exists());
    }
}
