//! `run_on_kvm_host`: run a POSIX sh script on a machine with usable KVM, directly or inside
//! the nested L1 VM, and get its exit status and output back the same way in both modes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::artifacts::{self, InitramfsSpec};
use crate::config::{self, ENV_DEVDAX};
use crate::error::{
    Error, IoContext, Result, EARLY_HANG_MARKER, GUEST_CRASH_MARKER, LOST_INTERRUPT_MARKER,
};
use crate::l1_probe;
use crate::markers::{
    guest_crash_line, has_marker, host_section, lost_interrupt_line, marker_values, tail_lines,
    HostSection,
};
use crate::mode::{self, Mode};
use crate::nvdimm::{Nvdimm, NvdimmKind};
use crate::process::{run_captured, Captured, Stopped, Watch};
use crate::scratch::ScratchDir;
use crate::shell::is_var_name;
use crate::{nested, slots};

/// How many console lines error messages carry.
pub const TAIL_LINES: usize = 40;

/// Default [`HostOpts::silence`].
pub const DEFAULT_SILENCE: Duration = Duration::from_secs(150);

/// What of the stock distribution kernel a host needs, for guests that boot it
/// ([`crate::guest::GuestKernel::Stock`]); the script then sees `$STOCK_KERNEL`,
/// `$STOCK_INITRAMFS` (built from [`HostOpts::initramfs`] plus the kernel's NVDIMM modules) and,
/// with the ELF image, `$STOCK_VMLINUX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum StockStaging {
    /// Nothing (the variables are empty).
    #[default]
    None,
    /// The bzImage and its initramfs.
    BzImage,
    /// Those and the ELF image for PVH boot (66 MB for Debian's 6.1, so only when used).
    BzImageAndVmlinux,
}

impl StockStaging {
    /// What `guests` boot of the stock kernel.
    pub fn for_guests(guests: &[crate::guest::GuestOpts]) -> Self {
        use crate::guest::{GuestKernel, KernelImage};
        guests
            .iter()
            .filter(|g| g.guest_kernel == GuestKernel::Stock)
            .map(|g| match g.kernel {
                KernelImage::BzImage => StockStaging::BzImage,
                KernelImage::Vmlinux => StockStaging::BzImageAndVmlinux,
            })
            .max()
            .unwrap_or_default()
    }
}

/// Options for [`run_on_kvm_host`]. Build with `HostOpts::default()` and the `with_*` methods.
#[derive(Debug, Clone)]
pub struct HostOpts {
    /// L1 memory in MiB (nested mode). Default 6144: room for a 3.5 GiB L2 guest.
    pub memory_mib: u64,
    /// L1 vCPUs (nested mode). Default 2.
    pub cpus: u32,
    /// Wall-clock limit for the whole run, L1 boot included. Default 180 s: TCG is slow and the
    /// machine may be busy building a kernel.
    pub timeout: Duration,
    /// Longest console silence before the run is stopped as hung. Default 150 s: every test
    /// script prints more often; a guest stuck without timer interrupts prints nothing.
    pub silence: Option<Duration>,
    /// Stop the run as soon as the console shows a kernel stall report (RCU stall, lockup).
    /// Default true; only a test that provokes one on purpose turns it off.
    pub stop_on_stall: bool,
    /// Extra environment for the script.
    pub env: Vec<(String, String)>,
    /// A host directory the script sees as `$SHARE` (read-write, via 9p in nested mode). When
    /// `None`, `$SHARE` is an empty scratch directory that is discarded.
    pub share: Option<PathBuf>,
    /// Extra QEMU arguments (nested mode only; a direct run refuses them).
    pub qemu_args: Vec<String>,
    /// Emulated NVDIMMs (nested) or required real devices (direct); the script sees
    /// `$NVDIMM0`, `$NVDIMM1`, ... naming the device nodes.
    pub nvdimms: Vec<Nvdimm>,
    /// Resolve `$VMM`, `$INITRAMFS` (and build them if needed). Default true; the testbed's own
    /// tests turn it off so they do not depend on the vmm.
    pub guest_artifacts: bool,
    /// Extra contents of the guest initramfs (`$INITRAMFS`).
    pub initramfs: InitramfsSpec,
    /// Host executables copied into L1 at the same path, with their libraries (nested mode; in
    /// direct mode they are already there).
    pub host_bins: Vec<PathBuf>,
    /// Extra L1 kernel command-line words (nested mode).
    pub l1_cmdline: Vec<String>,
    /// The stock kernel's files for the script (set by `boot_guest`/`boot_guests` from the
    /// guests). Default none.
    pub stock_kernel: StockStaging,
}

impl Default for HostOpts {
    fn default() -> Self {
        HostOpts {
            memory_mib: 6144,
            cpus: 2,
            timeout: Duration::from_secs(180),
            silence: Some(DEFAULT_SILENCE),
            stop_on_stall: true,
            env: Vec::new(),
            share: None,
            qemu_args: Vec::new(),
            nvdimms: Vec::new(),
            guest_artifacts: true,
            initramfs: InitramfsSpec::default(),
            host_bins: Vec::new(),
            l1_cmdline: Vec::new(),
            stock_kernel: StockStaging::None,
        }
    }
}

impl HostOpts {
    /// Sets L1 memory in MiB.
    pub fn with_memory_mib(mut self, mib: u64) -> Self {
        self.memory_mib = mib;
        self
    }
    /// Sets L1 vCPUs.
    pub fn with_cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }
    /// Sets the timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// Sets the silence limit (`None`: only the timeout).
    pub fn with_silence(mut self, silence: Option<Duration>) -> Self {
        self.silence = silence;
        self
    }

    fn watch(&self) -> Watch {
        Watch {
            timeout: self.timeout,
            silence: self.silence,
            stalls: self.stop_on_stall,
            early_look: crate::process::EARLY_LOOK,
        }
    }
    /// Adds an environment variable for the script.
    pub fn with_env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }
    /// Shares `dir` as `$SHARE`.
    pub fn with_share(mut self, dir: impl Into<PathBuf>) -> Self {
        self.share = Some(dir.into());
        self
    }
    /// Adds raw QEMU arguments (nested mode only).
    pub fn with_qemu_args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.qemu_args.extend(args.into_iter().map(Into::into));
        self
    }
    /// Adds an NVDIMM; in direct mode the machine must have the matching device.
    pub fn with_nvdimm(mut self, nvdimm: Nvdimm) -> Self {
        self.nvdimms.push(nvdimm);
        self
    }
    /// Do not build or resolve the vmm and guest initramfs.
    pub fn without_guest_artifacts(mut self) -> Self {
        self.guest_artifacts = false;
        self
    }
    /// Sets extra guest initramfs contents.
    pub fn with_initramfs(mut self, spec: InitramfsSpec) -> Self {
        self.initramfs = spec;
        self
    }
    /// Copies a host executable into L1.
    pub fn with_host_bin(mut self, path: impl Into<PathBuf>) -> Self {
        self.host_bins.push(path.into());
        self
    }
}

/// The outcome of a script that ran to completion (any exit status).
#[derive(Debug, Clone)]
pub struct HostRun {
    /// Where it ran.
    pub mode: Mode,
    /// The script's exit status.
    pub rc: i32,
    /// What the script printed (stdout and stderr interleaved), between the markers.
    pub output: String,
    /// The whole console: L1 boot messages, markers, output.
    pub full_console: String,
    /// Wall time of the run (QEMU start to exit in nested mode).
    pub duration: Duration,
    /// Time from start until the script began (the L1 boot time in nested mode).
    pub host_ready: Option<Duration>,
}

impl HostRun {
    /// The last `n` console lines.
    pub fn tail(&self, n: usize) -> String {
        tail_lines(&self.full_console, n)
    }

    /// An [`Error::Host`] with `msg` and the console tail, for a failed expectation.
    pub fn error(&self, msg: impl Into<String>) -> Error {
        Error::Host {
            msg: msg.into(),
            tail: self.tail(TAIL_LINES),
        }
    }

    /// Errors (with the console tail) unless, for each `(name, want)`, the first `@@name ...@@`
    /// marker in the output contains `want` (a name may be listed more than once).
    pub fn expect_markers(&self, expected: &[(&str, &str)]) -> Result<()> {
        for (name, want) in expected {
            self.expect_marker(name, want)?;
        }
        Ok(())
    }

    /// The first `@@name ...@@` marker's value, which must contain `want`; else an error with
    /// the console tail.
    pub fn expect_marker(&self, name: &str, want: &str) -> Result<String> {
        match marker_values(&self.output, name).first() {
            Some(s) if s.contains(want) => Ok(s.to_string()),
            other => Err(self.error(format!("{name}: {other:?}, expected {want}"))),
        }
    }

    /// Errors (with the console tail) unless the script exited 0.
    pub fn expect_success(&self) -> Result<&Self> {
        if self.rc == 0 {
            Ok(self)
        } else {
            Err(self.error(format!("the host script exited {}", self.rc)))
        }
    }
}

/// The host-side files the script may use.
pub(crate) struct Resolved {
    pub kernel: Option<&'static artifacts::Kernel>,
    pub vmm: Option<PathBuf>,
    pub initramfs: Option<PathBuf>,
    pub stock: Option<ResolvedStock>,
}

/// The stock kernel's files for a host ([`StockStaging`]).
pub(crate) struct ResolvedStock {
    pub bzimage: PathBuf,
    /// Only with [`StockStaging::BzImageAndVmlinux`].
    pub vmlinux: Option<PathBuf>,
    pub initramfs: PathBuf,
}

fn resolve_stock(opts: &HostOpts) -> Result<Option<ResolvedStock>> {
    if opts.stock_kernel == StockStaging::None {
        return Ok(None);
    }
    let stock = artifacts::stock_kernel()?;
    Ok(Some(ResolvedStock {
        bzimage: stock.bzimage.clone(),
        vmlinux: match opts.stock_kernel {
            StockStaging::BzImageAndVmlinux => stock.vmlinux.clone(),
            _ => None,
        },
        initramfs: artifacts::stock_initramfs(&opts.initramfs)?,
    }))
}

fn resolve(opts: &HostOpts, mode: Mode) -> Result<Resolved> {
    let kernel = if mode == Mode::Nested || opts.guest_artifacts {
        Some(artifacts::kernel()?)
    } else {
        None
    };
    let (vmm, initramfs) = if opts.guest_artifacts {
        (
            Some(artifacts::vmm()?.to_path_buf()),
            Some(artifacts::initramfs(&opts.initramfs)?),
        )
    } else {
        (None, None)
    };
    Ok(Resolved {
        kernel,
        vmm,
        initramfs,
        stock: resolve_stock(opts)?,
    })
}

fn check_opts(opts: &HostOpts) -> Result<()> {
    for (name, _) in &opts.env {
        if !is_var_name(name) {
            return Err(Error::setup(format!(
                "bad environment variable name {name:?}"
            )));
        }
    }
    if let Some(share) = &opts.share {
        if !share.is_dir() {
            return Err(Error::setup(format!(
                "share directory {} does not exist",
                share.display()
            )));
        }
    }
    Ok(())
}

/// Runs `script` (POSIX sh) on a host with usable KVM and returns its exit status and output.
///
/// The script runs in `$WORK` and sees `VMM`, `KERNEL`, `VMLINUX`, `INITRAMFS`, `WORK`,
/// `SHARE`, `TESTBED_MODE`, `NVDIMM<i>` and `opts.env`. A non-zero exit status is not an
/// error (see [`HostRun::expect_success`]); a timeout, or a host that never started or never
/// finished the script, is — with the last console lines in the message.
pub fn run_on_kvm_host(script: &str, opts: &HostOpts) -> Result<HostRun> {
    check_opts(opts)?;
    let mode = mode::mode()?;
    let resolved = resolve(opts, mode)?;
    let run_dir = ScratchDir::new("run")?;
    let echo = config::echo().then_some(match mode {
        Mode::Direct => "[direct]",
        Mode::Nested => "[L1]",
    });
    let captured = match mode {
        Mode::Direct => {
            let cmd = direct_command(script, opts, &resolved, run_dir.path())?;
            let _slot = slots::acquire()?;
            run_captured(cmd, opts.watch(), echo, None)?
        }
        Mode::Nested => {
            for n in &opts.nvdimms {
                n.prepare()?;
            }
            let cmd = nested::command(script, opts, &resolved, run_dir.path())?;
            let _slot = slots::acquire()?;
            run_captured(
                cmd,
                opts.watch(),
                echo,
                Some(&|| l1_probe::inspect(run_dir.path(), opts.cpus)),
            )?
        }
    };
    finish(mode, opts.timeout, captured)
}

/// Turns a captured console into a [`HostRun`] or an error with the console tail.
fn finish(mode: Mode, timeout: Duration, c: Captured) -> Result<HostRun> {
    if mode == Mode::Nested {
        if let Some(line) = guest_crash_line(&c.stdout) {
            // A fixed phrase on stderr, whatever the test makes of the run afterwards:
            // scripts/check-retries.py forgives a first try that printed it.
            eprintln!("{GUEST_CRASH_MARKER} (QEMU TCG nested SVM, tests/README.md): {line}");
        }
        if let Some(line) = lost_interrupt_line(&c.stdout) {
            eprintln!("{LOST_INTERRUPT_MARKER} (QEMU TCG nested SVM, tests/README.md): {line}");
        }
    }
    let console = c.console_for_errors();
    let tail = tail_lines(&console, TAIL_LINES);
    let Some(status) = c.status else {
        let mut c = c;
        if mode == Mode::Nested
            && c.begin_at.is_some()
            && !has_marker(&c.stdout, crate::guest::GUEST_INIT)
        {
            // Say so in a fixed phrase: scripts/check-retries.py forgives such a first try.
            c.host_view = format!("{EARLY_HANG_MARKER}\n{}", c.host_view);
        }
        return Err(match c.stopped {
            Some(Stopped::Stall(line)) => Error::Stall {
                why: format!("the console reported a stall: {line}"),
                after: c.duration,
                host_view: c.host_view,
                tail,
            },
            Some(Stopped::Silence(limit)) => Error::Stall {
                why: format!("the console was silent for {limit:.0?}"),
                after: c.duration,
                host_view: c.host_view,
                tail,
            },
            Some(Stopped::Stuck(silent)) => Error::Stall {
                why: format!(
                    "the console was silent for {silent:.0?} and the host cannot go on by itself"
                ),
                after: c.duration,
                host_view: c.host_view,
                tail,
            },
            Some(Stopped::Timeout) | None => Error::Timeout {
                timeout,
                host_view: c.host_view,
                tail,
            },
        });
    };
    match host_section(&c.stdout) {
        HostSection::Done { output, rc } => Ok(HostRun {
            mode,
            rc,
            output: output.to_string(),
            full_console: c.stdout.clone(),
            duration: c.duration,
            host_ready: c.begin_at,
        }),
        HostSection::NoBegin => Err(Error::Host {
            msg: match mode {
                Mode::Nested => format!(
                    "the nested L1 host never started the script (QEMU {status}): L1 kernel or \
                     init failed, or QEMU rejected its arguments"
                ),
                Mode::Direct => format!("the direct host wrapper never started ({status})"),
            },
            tail,
        }),
        // The script cannot stop L1 itself (only L1's init powers off, after the end marker),
        // so a nested host that ends early has crashed.
        HostSection::NoEnd { .. } => Err(match mode {
            Mode::Nested => Error::L1Crashed {
                status: status.to_string(),
                tail,
            },
            Mode::Direct => Error::Host {
                msg: format!(
                    "the direct host wrapper stopped before the script finished ({status})"
                ),
                tail,
            },
        }),
    }
}

/// The device nodes a direct run hands to the script for `nvdimms`.
fn direct_nvdimm_devices(nvdimms: &[Nvdimm]) -> Result<Vec<String>> {
    let named: Vec<String> = config::var(ENV_DEVDAX)
        .map(|v| v.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    nvdimms
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let dev = match (n.kind, named.get(i)) {
                (NvdimmKind::Devdax { .. }, Some(d)) => d.clone(),
                _ => n.l1_device(i),
            };
            if Path::new(&dev).exists() {
                Ok(dev)
            } else {
                Err(Error::setup(format!(
                    "this test needs a real NVDIMM device ({dev}); direct mode cannot emulate \
                     one. Configure it on this machine (e.g. `ndctl create-namespace --mode \
                     devdax`) and list it in {ENV_DEVDAX}, or run with PMEMVMM_TESTBED=nested"
                )))
            }
        })
        .collect()
}

/// The wrapper a direct run executes; same markers as the L1 init.
const DIRECT_WRAPPER: &str = r#"exec 2>&1 </dev/null
cd "$WORK" || exit 125
echo @@HOST-BEGIN@@
sh "$TESTBED_SCRIPT"
echo "@@HOST-END $?@@"
"#;

fn direct_command(
    script: &str,
    opts: &HostOpts,
    resolved: &Resolved,
    run_dir: &Path,
) -> Result<Command> {
    if !opts.qemu_args.is_empty() {
        return Err(Error::setup(format!(
            "this test passes QEMU arguments ({:?}), which only exist in nested mode; run with \
             PMEMVMM_TESTBED=nested",
            opts.qemu_args
        )));
    }
    let devices = direct_nvdimm_devices(&opts.nvdimms)?;
    let script_path = run_dir.join("script.sh");
    std::fs::write(&script_path, script).ctx(|| format!("writing {}", script_path.display()))?;
    let work = run_dir.join("work");
    let share = match &opts.share {
        Some(s) => s
            .canonicalize()
            .ctx(|| format!("resolving {}", s.display()))?,
        None => run_dir.join("share"),
    };
    for d in [&work, &share] {
        std::fs::create_dir_all(d).ctx(|| format!("creating {}", d.display()))?;
    }
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(DIRECT_WRAPPER);
    let path_or_empty = |p: Option<&Path>| p.map(|p| p.as_os_str().to_owned()).unwrap_or_default();
    cmd.env("TESTBED_SCRIPT", &script_path)
        .env("TESTBED_MODE", "direct")
        .env("WORK", &work)
        .env("SHARE", &share)
        .env("VMM", path_or_empty(resolved.vmm.as_deref()))
        .env("INITRAMFS", path_or_empty(resolved.initramfs.as_deref()))
        .env(
            "KERNEL",
            path_or_empty(resolved.kernel.map(|k| k.bzimage.as_path())),
        )
        .env(
            "VMLINUX",
            path_or_empty(resolved.kernel.and_then(|k| k.vmlinux.as_deref())),
        );
    let stock = resolved.stock.as_ref();
    cmd.env(
        "STOCK_KERNEL",
        path_or_empty(stock.map(|s| s.bzimage.as_path())),
    )
    .env(
        "STOCK_VMLINUX",
        path_or_empty(stock.and_then(|s| s.vmlinux.as_deref())),
    )
    .env(
        "STOCK_INITRAMFS",
        path_or_empty(stock.map(|s| s.initramfs.as_path())),
    );
    for (i, dev) in devices.iter().enumerate() {
        cmd.env(format!("NVDIMM{i}"), dev);
    }
    for (k, v) in &opts.env {
        cmd.env(k, v);
    }
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captured(stdout: &str, status: Option<i32>) -> Captured {
        use std::os::unix::process::ExitStatusExt;
        Captured {
            status: status.map(|s| std::process::ExitStatus::from_raw(s << 8)),
            stopped: status.is_none().then_some(Stopped::Timeout),
            host_view: String::new(),
            stdout: stdout.to_string(),
            stderr: String::new(),
            duration: Duration::from_secs(1),
            begin_at: None,
        }
    }

    #[test]
    fn finish_maps_every_outcome() {
        let t = Duration::from_secs(9);
        let ok = finish(
            Mode::Nested,
            t,
            captured("boot\n@@HOST-BEGIN@@\nhi\n@@HOST-END 4@@\n", Some(0)),
        )
        .unwrap();
        assert_eq!((ok.rc, ok.output.as_str()), (4, "hi\n"));
        assert!(ok.expect_success().is_err());

        let e = finish(Mode::Nested, t, captured("line1\nline2\n", None)).unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }));
        assert!(e.to_string().contains("line2"), "{e}");

        let e = finish(Mode::Nested, t, captured("Kernel panic\n", Some(0))).unwrap_err();
        assert!(e.to_string().contains("never started"), "{e}");
        assert!(e.to_string().contains("Kernel panic"), "{e}");

        let e = finish(Mode::Direct, t, captured("@@HOST-BEGIN@@\nx\n", Some(1))).unwrap_err();
        assert!(e.to_string().contains("before the script finished"), "{e}");
        // A nested run stopped after the script began: an early hang unless a guest came up.
        let stopped = |console: &str, mode| {
            let mut c = captured(console, None);
            c.begin_at = Some(Duration::from_secs(1));
            finish(mode, t, c).unwrap_err().to_string()
        };
        let early = stopped("@@HOST-BEGIN@@\n@@VMM-START 1.0@@\n", Mode::Nested);
        assert!(early.contains(EARLY_HANG_MARKER), "{early}");
        let late = stopped("@@HOST-BEGIN@@\n@@GUEST-INIT@@\n", Mode::Nested);
        assert!(!late.contains(EARLY_HANG_MARKER), "{late}");
        let direct = stopped("@@HOST-BEGIN@@\n", Mode::Direct);
        assert!(!direct.contains(EARLY_HANG_MARKER), "{direct}");
    }

    #[test]
    fn bad_env_names_rejected() {
        let opts = HostOpts::default().with_env("A-B", "x");
        assert!(check_opts(&opts).is_err());
    }

    #[test]
    fn direct_wrapper_runs_the_script_with_markers() {
        let dir = ScratchDir::new("wrap").unwrap();
        let opts = HostOpts::default()
            .without_guest_artifacts()
            .with_env("GREETING", "it's me");
        let resolved = Resolved {
            kernel: None,
            vmm: None,
            initramfs: None,
            stock: None,
        };
        let cmd = direct_command(
            "echo \"$GREETING\"; pwd; echo err >&2; test -d \"$SHARE\"; exit 7",
            &opts,
            &resolved,
            dir.path(),
        )
        .unwrap();
        let c = run_captured(cmd, HostOpts::default().watch(), None, None).unwrap();
        let run = finish(Mode::Direct, Duration::from_secs(20), c).unwrap();
        assert_eq!(run.rc, 7);
        let work = dir.path().join("work");
        assert_eq!(run.output, format!("it's me\n{}\nerr\n", work.display()));
    }

    #[test]
    fn direct_refuses_qemu_args_and_missing_devices() {
        let dir = ScratchDir::new("wrap").unwrap();
        let resolved = Resolved {
            kernel: None,
            vmm: None,
            initramfs: None,
            stock: None,
        };
        let opts = HostOpts::default().with_qemu_args(["-device", "x"]);
        let e = direct_command("true", &opts, &resolved, dir.path()).unwrap_err();
        assert!(e.to_string().contains("nested"), "{e}");
        let opts = HostOpts::default().with_nvdimm(Nvdimm::devdax("/nonexistent", 2 << 20));
        if !Path::new("/dev/dax0.0").exists() && config::var(ENV_DEVDAX).is_none() {
            let e = direct_command("true", &opts, &resolved, dir.path()).unwrap_err();
            assert!(e.to_string().contains("/dev/dax0.0"), "{e}");
        }
    }
}
