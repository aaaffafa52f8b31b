//! Environment variables that steer the testbed, read in one place so the README can list them.

use std::path::PathBuf;

use crate::{Error, Result};

/// `auto`, `direct` or `nested`: where scripts run (see [`crate::mode`]).
pub const ENV_MODE: &str = "PMEMVMM_TESTBED";
/// Maximum number of concurrent hosts (L0 QEMUs or direct runs) across all test processes.
pub const ENV_JOBS: &str = "PMEMVMM_TESTBED_JOBS";
/// Set to `1` to echo every console line live to stderr (prefixed), for debugging hangs.
pub const ENV_ECHO: &str = "PMEMVMM_TESTBED_ECHO";
/// Cache root (slot lock files, built initramfs images). Default `$XDG_CACHE_HOME/pmem-vmm`.
pub const ENV_CACHE: &str = "PMEMVMM_CACHE";
/// Path to a bzImage to use instead of running `guest-kernel/build.sh`.
pub const ENV_KERNEL: &str = "PMEMVMM_KERNEL";
/// Path to the matching `vmlinux` (only needed with [`ENV_KERNEL`] when tests boot an ELF kernel).
pub const ENV_VMLINUX: &str = "PMEMVMM_VMLINUX";
/// Path to a guest initramfs to use instead of running `resources/build-initramfs.sh`.
pub const ENV_INITRAMFS: &str = "PMEMVMM_INITRAMFS";
/// Path to a stock distribution kernel's bzImage, for the guests that boot one, instead of
/// running `guest-kernel/stock.sh`. Needs [`ENV_STOCK_MODULES`] too.
pub const ENV_STOCK_KERNEL: &str = "PMEMVMM_STOCK_KERNEL";
/// The stock kernel's ELF image for PVH boot (default: `vmlinux` next to [`ENV_STOCK_KERNEL`]).
pub const ENV_STOCK_VMLINUX: &str = "PMEMVMM_STOCK_VMLINUX";
/// The stock kernel's `lib/modules/<release>` directory (with `modules.dep`), the source of the
/// NVDIMM modules in its guest initramfs.
pub const ENV_STOCK_MODULES: &str = "PMEMVMM_STOCK_MODULES";
/// Path to a `vmm` binary to use instead of building one with `scripts/build-vmm.sh`.
pub const ENV_VMM: &str = "PMEMVMM_VMM";
/// QEMU binary for nested mode (default: `qemu-system-x86_64` from `PATH`).
pub const ENV_QEMU: &str = "PMEMVMM_QEMU";
/// Path to cloud-hypervisor's `ch-remote` instead of `../shared/peers/ch-remote` (see
/// [`ch_remote`]).
pub const ENV_CH_REMOTE: &str = "PMEMVMM_CH_REMOTE";
/// Direct mode only: space-separated device-DAX devices on the host to hand to tests asking for
/// NVDIMMs (default `/dev/dax0.0 /dev/dax1.0 ...`).
pub const ENV_DEVDAX: &str = "PMEMVMM_DEVDAX";

/// A non-empty environment variable.
pub(crate) fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The cache root: `$PMEMVMM_CACHE`, else `$XDG_CACHE_HOME/pmem-vmm`, else `~/.cache/pmem-vmm`.
/// The same rule as the kernel build script, so one variable moves everything.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = var(ENV_CACHE) {
        return PathBuf::from(dir);
    }
    if let Some(xdg) = var("XDG_CACHE_HOME") {
        return PathBuf::from(xdg).join("pmem-vmm");
    }
    let home = var("HOME").unwrap_or_else(|| "/tmp".to_string());
    PathBuf::from(home).join(".cache").join("pmem-vmm")
}

/// Maximum concurrent hosts: `$PMEMVMM_TESTBED_JOBS`, else one per core, at most one per
/// [`MEMORY_PER_JOB_GIB`] of RAM, at least one.
///
/// One per core although a nested host has two vCPUs: the suite's guests are mostly one vCPU
/// that waits on I/O or timers part of the time, so one host keeps about one core busy. Measured
/// on a 2-core machine (the pfn_checker and memmap_policy binaries, 3 rounds each): one host at
/// a time 352-410 s a round, load 1.0-1.2; two at once 156-193 s, load ~5, no stall, no failure.
pub fn jobs() -> usize {
    if let Some(n) = var(ENV_JOBS).and_then(|v| v.trim().parse::<usize>().ok()) {
        return n.max(1);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let by_memory = mem_total_gib().map_or(cores, |gib| (gib / MEMORY_PER_JOB_GIB) as usize);
    cores.min(by_memory).max(1)
}

/// RAM a host may take: the nested host's default memory (6 GiB) and its largest (8 GiB, the
/// boot test's) plus its QEMU and the sparse backings' touched pages.
pub const MEMORY_PER_JOB_GIB: u64 = 8;

/// `MemTotal` of `/proc/meminfo` in GiB, rounded down.
fn mem_total_gib() -> Option<u64> {
    mem_total_gib_in(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

fn mem_total_gib_in(meminfo: &str) -> Option<u64> {
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib >> 20)
}

/// Whether console lines are echoed live to stderr.
pub fn echo() -> bool {
    matches!(var(ENV_ECHO).as_deref(), Some("1" | "true" | "yes"))
}

/// The workspace root (parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Where the prebuilt peer monitors are (cloud-hypervisor, `ch-remote`, Firecracker):
/// `../shared/peers` beside the repository root (its README says what each is).
pub fn peers_dir() -> PathBuf {
    workspace_root().join("../shared/peers")
}

/// cloud-hypervisor's `ch-remote`, the real client the API tests drive the monitor with:
/// `$PMEMVMM_CH_REMOTE` when set (a path that does not exist is an error), else `ch-remote` in
/// [`peers_dir`]. Missing, it is an [`Error::Setup`] that says what to set: the tests that need
/// it fail, never skip.
pub fn ch_remote() -> Result<PathBuf> {
    if let Some(p) = var(ENV_CH_REMOTE) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Error::setup(format!(
                "{ENV_CH_REMOTE}={} does not exist",
                p.display()
            )))
        };
    }
    let p = peers_dir().join("ch-remote");
    if p.is_file() {
        Ok(p)
    } else {
        Err(Error::setup(format!(
            "ch-remote not found at {}; set {ENV_CH_REMOTE} to cloud-hypervisor's ch-remote",
            p.display()
        )))
    }
}

/// Looks a program up in `PATH`, returning its full path if it is an executable file.
pub fn which(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_is_read_in_whole_gib() {
        let meminfo = "MemTotal:       24585716 kB\nMemFree:        22000000 kB\n";
        assert_eq!(mem_total_gib_in(meminfo), Some(23));
        assert_eq!(mem_total_gib_in("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total_gib_in("MemTotal: lots kB\n"), None);
        assert!(
            mem_total_gib().is_some(),
            "this Linux machine has /proc/meminfo"
        );
    }
}
