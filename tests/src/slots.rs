//! A machine-wide limit on concurrent hosts, shared by every test process.
//!
//! `cargo test` runs test binaries one after another but the tests inside one binary in
//! parallel threads, and a developer may run two `cargo test`s at once. Each nested host is a
//! QEMU that keeps two host cores busy, so we hand out N slots as lock files and hold an
//! exclusive `flock` on one for the length of a run. The kernel drops the lock if the process
//! dies, so a crashed test never leaks a slot.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};

/// A held slot; released on drop.
#[derive(Debug)]
pub struct Slot {
    _file: File,
    index: usize,
}

impl Slot {
    /// Which slot (0-based) is held.
    pub fn index(&self) -> usize {
        self.index
    }
}

/// The slot directory: `<cache>/testbed-slots`.
pub fn slot_dir() -> PathBuf {
    crate::config::cache_dir().join("testbed-slots")
}

/// Blocks until one of `jobs` slots in `dir` is free and takes it.
pub fn acquire_in(dir: &Path, jobs: usize) -> Result<Slot> {
    std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    let files = (0..jobs.max(1))
        .map(|i| {
            let path = dir.join(format!("slot-{i}"));
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .ctx(|| format!("opening {}", path.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let started = Instant::now();
    let mut told = false;
    let mut files: Vec<Option<File>> = files.into_iter().map(Some).collect();
    loop {
        for (index, slot) in files.iter_mut().enumerate() {
            let file = slot.as_ref().expect("slot files are only taken on success");
            match file.try_lock() {
                Ok(()) => {
                    let file = slot.take().expect("present");
                    return Ok(Slot { _file: file, index });
                }
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(e)) => {
                    return Err(Error::io(
                        format!("locking slot {index} in {}", dir.display()),
                        e,
                    ))
                }
            }
        }
        if !told && started.elapsed() > Duration::from_secs(20) {
            eprintln!(
                "testbed: waiting for a free host slot ({jobs} in {}; raise {} to run more at once)",
                dir.display(),
                crate::config::ENV_JOBS
            );
            told = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Takes a slot from the shared directory with the configured number of jobs.
pub fn acquire() -> Result<Slot> {
    acquire_in(&slot_dir(), crate::config::jobs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::ScratchDir;

    #[test]
    fn slots_exclude_each_other() {
        let dir = ScratchDir::new("slots").unwrap();
        let a = acquire_in(dir.path(), 2).unwrap();
        let b = acquire_in(dir.path(), 2).unwrap();
        assert_ne!(a.index(), b.index());
        // Both taken: a third acquirer waits until one is dropped.
        let path = dir.path().to_path_buf();
        let waiter = std::thread::spawn(move || acquire_in(&path, 2).unwrap().index());
        std::thread::sleep(Duration::from_millis(300));
        assert!(!waiter.is_finished());
        let freed = a.index();
        drop(a);
        assert_eq!(waiter.join().unwrap(), freed);
        drop(b);
    }
}
