//! The nested host: an L1 Linux (our own kernel, with KVM_AMD) under
//! `qemu-system-x86_64 -accel tcg -cpu max`, whose `-cpu max` exposes SVM with nested paging so
//! L1 gets a `/dev/kvm` that can run stock Linux guests.
//!
//! L1's initramfs is built per run: busybox-static, an init that prints the same markers as
//! the direct wrapper, the test script and its environment, the vmm with its shared libraries,
//! the kernel and guest initramfs as plain files. It is an uncompressed cpio (see `cpio.rs`).

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config;
use crate::cpio::CpioWriter;
use crate::error::{Error, IoContext, Result};
use crate::host::{HostOpts, Resolved};
use crate::ldd::shared_libs;
use crate::mode;
use crate::shell::sh_quote;

/// Where the 9p share is mounted in L1.
pub const L1_SHARE: &str = "/mnt/host";
/// L1's scratch tmpfs (`$WORK`).
pub const L1_WORK: &str = "/work";
/// 9p mount tag of the share.
pub const SHARE_TAG: &str = "hostshare";

/// The L1 kernel command line: serial console, silent kernel (so the console holds only the
/// script's output), reboot (QEMU exits: `-no-reboot`) on panic, no CPU-bug mitigations since
/// every barrier is expensive under TCG, and `tsc_early_khz` set to this machine's TSC rate
/// (see [`host_tsc_khz`] for why).
pub fn l1_cmdline(extra: &[String], tsc_khz: Option<u64>) -> String {
    let mut words: Vec<String> = [
        "console=ttyS0",
        "quiet",
        "loglevel=1",
        "panic=-1",
        "mitigations=off",
        "rdinit=/init",
    ]
    .map(String::from)
    .to_vec();
    if let Some(khz) = tsc_khz {
        words.push(format!("tsc_early_khz={khz}"));
    }
    words.extend(extra.iter().cloned());
    words.join(" ")
}

/// This machine's TSC rate in kHz, measured once per process against `CLOCK_MONOTONIC_RAW`
/// (median of three 100 ms windows, each end a clock read between two TSC reads a few
/// microseconds apart: tens of ppm at worst). `None` off x86_64.
///
/// Why L1 needs it (the nested timer stall, `tests/README.md`): QEMU TCG gives L1 a TSC that
/// runs at this machine's rate but no invariant-TSC bit, so L1's KVM records the TSC rate it
/// will give every VM (`max_tsc_khz`) at KVM init, from the early PIT calibration, before the
/// refined calibration runs. Under TCG that early figure can be off by more than KVM's 250 ppm
/// tolerance; when it is *below* the refined rate, `kvm_set_tsc_khz()` fails for every vCPU
/// ("kvm: user requested TSC rate below hardware speed": no TSC scaling under TCG) and leaves
/// the vCPU's TSC scaling ratio at 0, so KVM reads the guest's TSC as frozen and arms each
/// TSC-deadline timer about "L1's TSC value" nanoseconds late: guest timers fire after 10 s,
/// 20 s, 40 s... and the guest stalls. Telling L1 the exact rate up front makes the early and
/// refined figures agree.
pub fn host_tsc_khz() -> Option<u64> {
    static KHZ: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *KHZ.get_or_init(measure_tsc_khz)
}

#[cfg(target_arch = "x86_64")]
fn measure_tsc_khz() -> Option<u64> {
    fn now_ns() -> Option<u128> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_RAW, &mut ts) };
        (rc == 0).then(|| ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128)
    }
    fn rdtsc() -> u64 {
        // SAFETY: RDTSC has no memory effects; every x86_64 CPU has it.
        unsafe { std::arch::x86_64::_rdtsc() }
    }
    // A (clock, TSC) pair read close together: retried when something (preemption) came
    // between the two TSC reads around the clock read.
    let pair = || -> Option<(u128, u64)> {
        for _ in 0..100 {
            let before = rdtsc();
            let t = now_ns()?;
            let after = rdtsc();
            if after.wrapping_sub(before) < 20_000 {
                return Some((t, before / 2 + after / 2));
            }
        }
        None
    };
    let mut samples = Vec::new();
    for _ in 0..3 {
        let (t0, c0) = pair()?;
        std::thread::sleep(std::time::Duration::from_millis(100));
        let (t1, c1) = pair()?;
        let ns = t1.checked_sub(t0)?;
        if ns == 0 {
            return None;
        }
        samples.push((u128::from(c1.wrapping_sub(c0)) * 1_000_000 / ns) as u64);
    }
    samples.sort_unstable();
    let khz = samples[1];
    // Anything outside 100 MHz..10 GHz is not a TSC rate worth telling L1.
    (100_000..10_000_000).contains(&khz).then_some(khz)
}

#[cfg(not(target_arch = "x86_64"))]
fn measure_tsc_khz() -> Option<u64> {
    None
}

/// The L1 `/init`. `share` says whether to mount the 9p share; `wait_for` lists device nodes
/// (NVDIMMs) to wait for, since libnvdimm probes them asynchronously.
pub fn l1_init(share: bool, wait_for: &[String]) -> String {
    let mut s = String::from(
        r#"#!/bin/busybox sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /tmp /work /mnt/host
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o size=80% work /work
[ -e /dev/kvm ] || mknod /dev/kvm c 10 232
[ -e /dev/kvm ] || echo "testbed: L1 has no /dev/kvm"
"#,
    );
    if share {
        s.push_str(&format!(
            "mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 {SHARE_TAG} {L1_SHARE} \
             || echo \"testbed: mounting the 9p share failed\"\n"
        ));
    }
    for dev in wait_for {
        let d = sh_quote(dev);
        s.push_str(&format!(
            "n=0; while [ ! -e {d} ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n+1)); done\n\
             [ -e {d} ] || {{ echo \"testbed: {dev} did not appear in L1\"; ls /dev; }}\n"
        ));
    }
    s.push_str(
        r#". /testbed/env.sh
cd /work
echo @@HOST-BEGIN@@
sh /testbed/script.sh </dev/null 2>&1
echo "@@HOST-END $?@@"
# The trigger of the nested timer stall (see host_tsc_khz): say so if it happened anyway.
dmesg | grep -E "TSC rate below hardware speed|Marking TSC unstable|clocksource: Marking" \
    | sed 's/^/testbed: L1 kernel: /'
sync
# Let the UART drain before the power goes: poweroff does not wait for the tty.
sleep 0.3
poweroff -f
"#,
    );
    s
}

/// `export NAME='value'` lines for the script's environment.
pub fn env_file(vars: &[(String, String)]) -> String {
    vars.iter()
        .map(|(k, v)| format!("export {k}={}\n", sh_quote(v)))
        .collect()
}

/// Paths inside L1 of the files the script uses.
const L1_VMM: &str = "/testbed/bin/vmm";
const L1_BZIMAGE: &str = "/testbed/bzImage";
const L1_VMLINUX: &str = "/testbed/vmlinux";
const L1_INITRAMFS: &str = "/testbed/initramfs.img";
const L1_STOCK_BZIMAGE: &str = "/testbed/stock-bzImage";
const L1_STOCK_VMLINUX: &str = "/testbed/stock-vmlinux";
const L1_STOCK_INITRAMFS: &str = "/testbed/stock-initramfs.img";

/// Adds an executable at `dest` and its shared libraries at their host paths.
fn add_binary<W: std::io::Write>(
    cpio: &mut CpioWriter<W>,
    src: &Path,
    dest: &str,
    libs_done: &mut Vec<PathBuf>,
) -> Result<()> {
    cpio.file_from(dest, src)
        .ctx(|| format!("archiving {}", src.display()))?;
    for lib in shared_libs(src)? {
        if libs_done.contains(&lib) {
            continue;
        }
        let name = lib.to_string_lossy().into_owned();
        cpio.file_from(&name, &lib)
            .ctx(|| format!("archiving {}", lib.display()))?;
        libs_done.push(lib);
    }
    Ok(())
}

fn busybox() -> Result<PathBuf> {
    config::which("busybox").ok_or_else(|| {
        Error::setup("nested mode needs busybox for the L1 host (apt-get install busybox-static)")
    })
}

/// Busybox applet paths (`bin/sh`, `sbin/poweroff`, ...), so L1 needs no `--install` at boot.
fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .ctx(|| "running busybox --list-full".to_string())?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && !l.ends_with("/busybox"))
        .collect())
}

fn build_l1_initramfs(
    out: &Path,
    script: &str,
    opts: &HostOpts,
    resolved: &Resolved,
) -> Result<()> {
    let file = File::create(out).ctx(|| format!("creating {}", out.display()))?;
    let mut cpio = CpioWriter::new(BufWriter::new(file));
    let io = |e| Error::io(format!("writing {}", out.display()), e);
    let bb = busybox()?;
    let mut libs = Vec::new();
    add_binary(&mut cpio, &bb, "/bin/busybox", &mut libs)?;
    for applet in busybox_applets(&bb)? {
        let depth = applet.matches('/').count();
        let target = format!("{}bin/busybox", "../".repeat(depth));
        cpio.symlink(&applet, &target).map_err(io)?;
    }
    for d in [
        "/proc",
        "/sys",
        "/dev",
        "/tmp",
        "/work",
        "/mnt/host",
        "/etc",
        "/root",
    ] {
        cpio.dir(d, 0o755).map_err(io)?;
    }
    // The kernel opens /dev/console for init's stdio before anything is mounted.
    cpio.char_dev("/dev/console", 0o600, 5, 1).map_err(io)?;
    cpio.char_dev("/dev/null", 0o666, 1, 3).map_err(io)?;

    let wait_for: Vec<String> = opts
        .nvdimms
        .iter()
        .enumerate()
        .map(|(i, n)| n.l1_device(i))
        .collect();
    let init = l1_init(opts.share.is_some(), &wait_for);
    cpio.file_bytes("/init", 0o755, init.as_bytes())
        .map_err(io)?;
    cpio.file_bytes("/testbed/script.sh", 0o755, script.as_bytes())
        .map_err(io)?;

    let mut env: Vec<(String, String)> = vec![
        ("TESTBED_MODE".into(), "nested".into()),
        ("WORK".into(), L1_WORK.into()),
        ("SHARE".into(), L1_SHARE.into()),
        ("HOME".into(), "/root".into()),
    ];
    let mut set = |name: &str, value: &str| env.push((name.into(), value.into()));
    match resolved.kernel {
        Some(k) => {
            cpio.file_from(L1_BZIMAGE, &k.bzimage)
                .ctx(|| format!("archiving {}", k.bzimage.display()))?;
            set("KERNEL", L1_BZIMAGE);
            match &k.vmlinux {
                Some(v) => {
                    cpio.file_from(L1_VMLINUX, v)
                        .ctx(|| format!("archiving {}", v.display()))?;
                    set("VMLINUX", L1_VMLINUX);
                }
                None => set("VMLINUX", ""),
            }
        }
        None => {
            set("KERNEL", "");
            set("VMLINUX", "");
        }
    }
    match &resolved.initramfs {
        Some(i) => {
            cpio.file_from(L1_INITRAMFS, i)
                .ctx(|| format!("archiving {}", i.display()))?;
            set("INITRAMFS", L1_INITRAMFS);
        }
        None => set("INITRAMFS", ""),
    }
    let mut stage = |var: &str, dest: &str, src: Option<&Path>| -> Result<()> {
        match src {
            Some(src) => {
                cpio.file_from(dest, src)
                    .ctx(|| format!("archiving {}", src.display()))?;
                env.push((var.into(), dest.into()));
            }
            None => env.push((var.into(), String::new())),
        }
        Ok(())
    };
    let stock = resolved.stock.as_ref();
    stage(
        "STOCK_KERNEL",
        L1_STOCK_BZIMAGE,
        stock.map(|s| s.bzimage.as_path()),
    )?;
    stage(
        "STOCK_VMLINUX",
        L1_STOCK_VMLINUX,
        stock.and_then(|s| s.vmlinux.as_deref()),
    )?;
    stage(
        "STOCK_INITRAMFS",
        L1_STOCK_INITRAMFS,
        stock.map(|s| s.initramfs.as_path()),
    )?;
    let mut set = |name: &str, value: &str| env.push((name.into(), value.into()));
    match &resolved.vmm {
        Some(v) => {
            add_binary(&mut cpio, v, L1_VMM, &mut libs)?;
            set("VMM", L1_VMM);
        }
        None => set("VMM", ""),
    }
    for bin in &opts.host_bins {
        let dest = bin.to_string_lossy().into_owned();
        add_binary(&mut cpio, bin, &dest, &mut libs)?;
    }
    for (i, dev) in wait_for.iter().enumerate() {
        env.push((format!("NVDIMM{i}"), dev.clone()));
    }
    env.extend(opts.env.iter().cloned());
    cpio.file_bytes("/testbed/env.sh", 0o644, env_file(&env).as_bytes())
        .map_err(io)?;
    cpio.finish().map_err(io)?;
    Ok(())
}

/// QEMU's `-m`: with NVDIMMs it needs hotplug slots and a `maxmem` covering them.
pub fn memory_arg(memory_mib: u64, nvdimm_sizes: &[u64]) -> String {
    if nvdimm_sizes.is_empty() {
        return format!("{memory_mib}M");
    }
    let dimms_mib: u64 = nvdimm_sizes.iter().map(|s| s.div_ceil(1 << 20)).sum();
    let slots = nvdimm_sizes.len().max(8);
    format!(
        "{memory_mib}M,slots={slots},maxmem={}M",
        memory_mib + dimms_mib + 1024
    )
}

/// Directories the L1 init mounts over (tmpfs, 9p, proc, ...): a file copied into L1's
/// initramfs at a path under one of them is hidden at run time.
pub const L1_SHADOWED: [&str; 6] = ["/work", "/tmp", "/mnt/host", "/proc", "/sys", "/dev"];

/// In nested mode, a host executable must sit at a path L1 does not mount over to be copied in
/// at "the same path" (`HostOpts::with_host_bin`); one under `/work` or `/tmp` (a cargo target
/// directory, a peer monitor in `shared/peers`) is staged in the testbed cache first, under
/// `name`. Returns the path to hand to `with_host_bin` and to use in the script.
pub fn visible_in_l1(path: &Path, name: &str) -> Result<PathBuf, String> {
    if !L1_SHADOWED.iter().any(|d| path.starts_with(d)) {
        return Ok(path.to_path_buf());
    }
    let dir = config::cache_dir().join("host-bins").join(name);
    if L1_SHADOWED.iter().any(|d| dir.starts_with(d)) {
        return Err(format!(
            "{} is under a directory the nested host mounts over ({}), and so is the cache \
             {}; set PMEMVMM_CACHE elsewhere (e.g. under $HOME)",
            path.display(),
            L1_SHADOWED.join(" "),
            dir.display()
        ));
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let file = path.file_name().unwrap_or_default();
    let dest = dir.join(file);
    let tmp = dir.join(format!(
        ".{}.{}",
        file.to_string_lossy(),
        std::process::id()
    ));
    std::fs::copy(path, &tmp)
        .and_then(|_| std::fs::rename(&tmp, &dest))
        .map_err(|e| format!("staging {} in {}: {e}", path.display(), dir.display()))?;
    Ok(dest)
}

/// The L0 QEMU command for one run. Writes L1's initramfs into `run_dir`.
pub(crate) fn command(
    script: &str,
    opts: &HostOpts,
    resolved: &Resolved,
    run_dir: &Path,
) -> Result<Command> {
    let kernel = resolved
        .kernel
        .ok_or_else(|| Error::setup("nested mode needs the kernel for L1"))?;
    let initrd = run_dir.join("l1.cpio");
    build_l1_initramfs(&initrd, script, opts, resolved)?;

    let mut cmd = Command::new(mode::qemu()?);
    let nvdimm = !opts.nvdimms.is_empty();
    let sizes: Vec<u64> = opts.nvdimms.iter().map(|n| n.size).collect();
    cmd.args(["-accel", "tcg", "-cpu", "max"])
        .args(["-smp", &opts.cpus.to_string()])
        .args(["-m", &memory_arg(opts.memory_mib, &sizes)])
        .args(["-machine", if nvdimm { "q35,nvdimm=on" } else { "q35" }])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-serial", "stdio", "-no-reboot"])
        .args(crate::l1_probe::monitor_args(run_dir))
        .arg("-kernel")
        .arg(&kernel.bzimage)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", &l1_cmdline(&opts.l1_cmdline, host_tsc_khz())]);
    if let Some(share) = &opts.share {
        let share = share
            .canonicalize()
            .ctx(|| format!("resolving {}", share.display()))?;
        cmd.arg("-virtfs").arg(format!(
            "local,path={},mount_tag={SHARE_TAG},security_model=none,id={SHARE_TAG}",
            qemu_opt_escape(&share.to_string_lossy())
        ));
    }
    for (i, n) in opts.nvdimms.iter().enumerate() {
        let backing = n
            .backing
            .canonicalize()
            .ctx(|| format!("resolving {}", n.backing.display()))?;
        cmd.arg("-object").arg(format!(
            "memory-backend-file,id=nvm{i},share=on,mem-path={},size={}",
            qemu_opt_escape(&backing.to_string_lossy()),
            n.size
        ));
        cmd.arg("-device")
            .arg(format!("nvdimm,memdev=nvm{i},id=nv{i}"));
    }
    cmd.args(&opts.qemu_args);
    Ok(cmd)
}

/// QEMU option values escape a comma by doubling it.
pub fn qemu_opt_escape(value: &str) -> String {
    value.replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_args() {
        assert_eq!(memory_arg(6144, &[]), "6144M");
        assert_eq!(
            memory_arg(6144, &[1 << 30, 1 << 30]),
            "6144M,slots=8,maxmem=9216M"
        );
    }

    #[test]
    fn env_file_quotes() {
        let f = env_file(&[("A".into(), "x y".into()), ("B".into(), "it's".into())]);
        assert_eq!(f, "export A='x y'\nexport B='it'\\''s'\n");
    }

    #[test]
    fn init_mentions_markers_share_and_devices() {
        let init = l1_init(true, &["/dev/dax0.0".into()]);
        assert!(init.contains("@@HOST-BEGIN@@"));
        assert!(init.contains("@@HOST-END $?@@"));
        assert!(init.contains("hostshare /mnt/host"));
        assert!(init.contains("/dev/dax0.0"));
        assert!(!l1_init(false, &[]).contains("9p"));
    }

    #[test]
    fn init_is_valid_sh() {
        let init = l1_init(true, &["/dev/dax0.0".into()]);
        let st = Command::new("sh")
            .arg("-n")
            .arg("-c")
            .arg(init)
            .status()
            .unwrap();
        assert!(st.success());
    }

    #[test]
    fn l1_gets_the_tsc_rate() {
        let line = l1_cmdline(&["x=1".into()], Some(2_596_140));
        assert!(line.contains(" tsc_early_khz=2596140 "), "{line}");
        assert!(line.ends_with(" x=1"), "{line}");
        assert!(!l1_cmdline(&[], None).contains("tsc_early_khz"));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_tsc_rate_measures_consistently() {
        let a = measure_tsc_khz().expect("an x86_64 TSC rate");
        let b = measure_tsc_khz().expect("an x86_64 TSC rate");
        // Well inside KVM's 250 ppm tolerance, which is what L1 needs.
        let ppm = a.abs_diff(b) * 1_000_000 / a;
        assert!(ppm < 100, "{a} vs {b} kHz: {ppm} ppm apart");
    }

    #[test]
    fn comma_escape() {
        assert_eq!(qemu_opt_escape("/a,b"), "/a,,b");
    }
}
