//! `boot_guest`: one vmm run of the L2 guest, on top of [`run_on_kvm_host`], with the guest
//! init's markers parsed into fields.

use std::time::Duration;

use crate::artifacts;
use crate::error::{Error, Result};
use crate::host::{run_on_kvm_host, HostOpts, HostRun, StockStaging, TAIL_LINES};
use crate::markers::{fold_data_blocks, has_marker, last_marker, tail_lines};
use crate::shell::{sh_join, sh_quote};

/// Printed by the guest init once it runs.
pub const GUEST_INIT: &str = "GUEST-INIT";
/// `@@GUEST-CPUS n@@`: online CPUs seen by the guest.
pub const GUEST_CPUS: &str = "GUEST-CPUS";
/// `@@GUEST-MEMTOTAL-KB n@@`: MemTotal seen by the guest.
pub const GUEST_MEMTOTAL_KB: &str = "GUEST-MEMTOTAL-KB";
/// `@@GUEST-EXIT rc@@`: the guest command's exit status.
pub const GUEST_EXIT: &str = "GUEST-EXIT";
/// `@@VMM-EXIT rc@@`: printed by the host script after the vmm exits.
pub const VMM_EXIT: &str = "VMM-EXIT";
/// `@@VMM-START uptime@@`: host uptime (seconds) right before the vmm starts.
pub const VMM_START: &str = "VMM-START";
/// `@@VMM-END uptime@@`: host uptime right after the vmm exits.
pub const VMM_END: &str = "VMM-END";

/// The longest kernel command line x86 Linux accepts (`COMMAND_LINE_SIZE`), minus the NUL.
pub const MAX_CMDLINE: usize = 2047;

/// Which image of the kernel the vmm boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelImage {
    /// `$KERNEL`, the bzImage.
    BzImage,
    /// `$VMLINUX`, the ELF image.
    Vmlinux,
}

/// Which kernel the guest boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GuestKernel {
    /// Ours (`guest-kernel/`, NVDIMM drivers built in), with the guest initramfs `$INITRAMFS`.
    #[default]
    Ours,
    /// A stock distribution kernel with the NVDIMM drivers as modules
    /// ([`artifacts::stock_kernel`]), with `$STOCK_INITRAMFS`, which loads them.
    Stock,
}

/// Options for [`boot_guest`].
#[derive(Debug, Clone)]
pub struct GuestOpts {
    /// `--cpus`. Default 1.
    pub cpus: u32,
    /// `--memory` (as the vmm spells sizes). Default `256M`.
    pub memory: String,
    /// Which kernel image. Default bzImage.
    pub kernel: KernelImage,
    /// Which kernel. Default ours.
    pub guest_kernel: GuestKernel,
    /// Guest kernel parameters before `--`. Default `console=ttyS0 quiet panic=-1`: a quiet
    /// guest keeps slow emulated serial output short, and a panic becomes a reboot (vmm exit 3)
    /// rather than a hang.
    pub kernel_params: Vec<String>,
    /// Shell command the guest init runs (`sh -c`); it may not contain `"` or a newline, since
    /// the kernel command line has no escapes. `None`: init just reports and powers off.
    pub command: Option<String>,
    /// `--serial` value. Default `stdio`, so the guest console is in the host output.
    pub serial: String,
    /// Further vmm arguments (e.g. `--pmem ...`), passed as separate words.
    pub vmm_args: Vec<String>,
    /// Shell run on the host before the vmm (e.g. to create backing files in `$WORK`).
    pub before: String,
    /// Shell run on the host after the vmm; its status becomes the host script's.
    pub after: String,
    /// The host run (timeout, NVDIMMs, share, extra initramfs contents, ...).
    pub host: HostOpts,
}

impl Default for GuestOpts {
    fn default() -> Self {
        GuestOpts {
            cpus: 1,
            memory: "256M".into(),
            kernel: KernelImage::BzImage,
            guest_kernel: GuestKernel::Ours,
            kernel_params: ["console=ttyS0", "quiet", "panic=-1"]
                .map(String::from)
                .to_vec(),
            command: None,
            serial: "stdio".into(),
            vmm_args: Vec::new(),
            before: String::new(),
            after: String::new(),
            host: HostOpts::default(),
        }
    }
}

impl GuestOpts {
    /// Sets `--cpus`.
    pub fn with_cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }
    /// Sets `--memory`.
    pub fn with_memory(mut self, memory: impl Into<String>) -> Self {
        self.memory = memory.into();
        self
    }
    /// Boots the given kernel image.
    pub fn with_kernel(mut self, kernel: KernelImage) -> Self {
        self.kernel = kernel;
        self
    }
    /// Boots the stock distribution kernel instead of ours.
    pub fn with_stock_kernel(mut self) -> Self {
        self.guest_kernel = GuestKernel::Stock;
        self
    }
    /// Appends a guest kernel parameter.
    pub fn with_kernel_param(mut self, param: impl Into<String>) -> Self {
        self.kernel_params.push(param.into());
        self
    }
    /// Sets the guest command.
    pub fn with_command(mut self, command: impl Into<String>) -> Self {
        self.command = Some(command.into());
        self
    }
    /// Appends vmm arguments.
    pub fn with_vmm_args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.vmm_args.extend(args.into_iter().map(Into::into));
        self
    }
    /// Sets the host commands run before the vmm.
    pub fn with_before(mut self, script: impl Into<String>) -> Self {
        self.before = script.into();
        self
    }
    /// Sets the host commands run after the vmm.
    pub fn with_after(mut self, script: impl Into<String>) -> Self {
        self.after = script.into();
        self
    }
    /// Sets the whole-run timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.host.timeout = timeout;
        self
    }
    /// Replaces the host options.
    pub fn with_host(mut self, host: HostOpts) -> Self {
        self.host = host;
        self
    }

    /// The guest kernel command line: parameters, then `-- "command"`.
    pub fn guest_cmdline(&self) -> Result<String> {
        let mut line = self.kernel_params.join(" ");
        if let Some(cmd) = &self.command {
            if cmd.contains('"') || cmd.contains('\n') {
                return Err(Error::setup(format!(
                    "guest command {cmd:?} contains a double quote or newline, which the kernel \
                     command line cannot carry; put the commands in a file in the initramfs"
                )));
            }
            line.push_str(&format!(" -- \"{cmd}\""));
        }
        if line.len() > MAX_CMDLINE {
            return Err(Error::setup(format!(
                "guest kernel command line is {} bytes, over Linux's {MAX_CMDLINE}",
                line.len()
            )));
        }
        Ok(line)
    }

    /// The host script that runs the vmm once and reports its exit status.
    pub fn host_script(&self) -> Result<String> {
        let (kernel_var, initramfs_var) = match (self.guest_kernel, self.kernel) {
            (GuestKernel::Ours, KernelImage::BzImage) => ("$KERNEL", "$INITRAMFS"),
            (GuestKernel::Ours, KernelImage::Vmlinux) => ("$VMLINUX", "$INITRAMFS"),
            (GuestKernel::Stock, KernelImage::BzImage) => ("$STOCK_KERNEL", "$STOCK_INITRAMFS"),
            (GuestKernel::Stock, KernelImage::Vmlinux) => ("$STOCK_VMLINUX", "$STOCK_INITRAMFS"),
        };
        let mut s = String::new();
        if !self.before.trim().is_empty() {
            s.push_str(&format!(
                "{{\n{}\n}} || {{ echo \"testbed: host commands before the vmm failed ($?)\"; \
                 exit 98; }}\n",
                self.before
            ));
        }
        s.push_str("echo \"@@VMM-START $(cut -d' ' -f1 /proc/uptime)@@\"\n");
        s.push_str(&format!(
            "\"$VMM\" --kernel \"{kernel_var}\" --initramfs \"{initramfs_var}\" {} --cmdline {}",
            sh_join([
                "--cpus",
                &self.cpus.to_string(),
                "--memory",
                &self.memory,
                "--serial",
                &self.serial,
            ]),
            sh_quote(&self.guest_cmdline()?),
        ));
        if !self.vmm_args.is_empty() {
            s.push(' ');
            s.push_str(&sh_join(&self.vmm_args));
        }
        s.push_str(" </dev/null\nrc=$?\n");
        s.push_str("echo \"@@VMM-END $(cut -d' ' -f1 /proc/uptime)@@\"\n");
        s.push_str("echo \"@@VMM-EXIT $rc@@\"\n");
        if !self.after.trim().is_empty() {
            s.push_str(&self.after);
            s.push('\n');
        } else {
            s.push_str("exit 0\n");
        }
        Ok(s)
    }
}

/// What the guest init and the vmm reported, parsed from the host script's output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestReport {
    /// The vmm's exit status, if it exited.
    pub vmm_exit: Option<i32>,
    /// Guest console (everything the vmm printed).
    pub console: String,
    /// `@@GUEST-INIT@@` was seen.
    pub init_seen: bool,
    /// Guest CPU count from init.
    pub cpus: Option<u32>,
    /// Guest MemTotal in KiB from init.
    pub memtotal_kb: Option<u64>,
    /// The guest command's exit status.
    pub guest_exit: Option<i32>,
    /// vmm wall time measured on the host (10 ms resolution).
    pub vmm_time: Option<Duration>,
}

/// Parses the output of [`GuestOpts::host_script`] (pure; unit-tested).
pub fn parse_guest_report(output: &str) -> GuestReport {
    let start = output
        .find("@@VMM-START")
        .and_then(|p| output[p..].find('\n').map(|n| p + n + 1))
        .unwrap_or(0);
    let end = output[start..]
        .find("@@VMM-END")
        .map(|p| start + p)
        .unwrap_or(output.len());
    let console = output[start..end].to_string();
    let uptime = |name| last_marker::<f64>(output, name);
    let vmm_time = match (uptime(VMM_START), uptime(VMM_END)) {
        (Some(a), Some(b)) if b >= a => Some(Duration::from_secs_f64(b - a)),
        _ => None,
    };
    GuestReport {
        vmm_exit: last_marker(output, VMM_EXIT),
        init_seen: has_marker(&console, GUEST_INIT),
        cpus: last_marker(&console, GUEST_CPUS),
        memtotal_kb: last_marker(&console, GUEST_MEMTOTAL_KB),
        guest_exit: last_marker(&console, GUEST_EXIT),
        console,
        vmm_time,
    }
}

/// One guest run.
#[derive(Debug, Clone)]
pub struct GuestRun {
    /// The vmm's exit status (0 poweroff, 3 reboot, 4 triple fault, ...).
    pub vmm_exit: i32,
    /// Parsed guest output.
    pub report: GuestReport,
    /// The host run around it.
    pub host: HostRun,
}

impl GuestRun {
    /// The guest console.
    pub fn console(&self) -> &str {
        &self.report.console
    }

    /// The last `n` lines of the host console (guest console included), with the data blocks
    /// the host printed after the guest (`markers::fold_data_blocks`) folded away.
    pub fn tail(&self, n: usize) -> String {
        tail_lines(&fold_data_blocks(&self.host.output), n)
    }

    /// An [`Error::Guest`] with `msg` and the console tail.
    pub fn error(&self, msg: impl Into<String>) -> Error {
        Error::Guest {
            msg: msg.into(),
            tail: self.tail(TAIL_LINES),
        }
    }

    /// Errors unless `ok`, with `msg` and the console tail.
    pub fn check(&self, ok: bool, msg: impl FnOnce() -> String) -> Result<()> {
        if ok {
            Ok(())
        } else {
            Err(self.error(msg()))
        }
    }

    /// Errors unless the vmm exited with `code`.
    pub fn expect_vmm_exit(&self, code: i32) -> Result<&Self> {
        self.check(self.vmm_exit == code, || {
            format!("vmm exited {}, expected {code}", self.vmm_exit)
        })?;
        Ok(self)
    }

    /// Errors unless the guest init ran.
    pub fn expect_booted(&self) -> Result<&Self> {
        self.check(self.report.init_seen, || {
            format!(
                "the guest never reached init (@@GUEST-INIT@@ missing; vmm exited {})",
                self.vmm_exit
            )
        })?;
        Ok(self)
    }

    /// Errors unless init ran, the guest command exited 0 and the vmm exited 0.
    pub fn expect_success(&self) -> Result<&Self> {
        self.expect_booted()?;
        self.check(self.report.guest_exit == Some(0), || {
            format!(
                "guest command exit status {:?}, expected 0",
                self.report.guest_exit
            )
        })?;
        self.expect_vmm_exit(0)
    }
}

/// Boots the guest once through the vmm on a KVM host and parses what it reported.
///
/// Errors: anything [`run_on_kvm_host`] reports, a host that failed before or after the vmm,
/// or a vmm that did not exit. A guest that misbehaves is not an error here; check it with the
/// `expect_*` methods so the message carries the console tail.
pub fn boot_guest(opts: &GuestOpts) -> Result<GuestRun> {
    check_vmlinux(std::slice::from_ref(opts))?;
    let script = opts.host_script()?;
    let mut host_opts = opts.host.clone();
    host_opts.guest_artifacts = true;
    host_opts.stock_kernel = StockStaging::for_guests(std::slice::from_ref(opts));
    let host = run_on_kvm_host(&script, &host_opts)?;
    let report = parse_guest_report(&host.output);
    let Some(vmm_exit) = report.vmm_exit else {
        return Err(host.error(format!(
            "the vmm did not run to completion (host script exited {})",
            host.rc
        )));
    };
    if !opts.after.trim().is_empty() && host.rc != 0 {
        return Err(host.error(format!(
            "host commands after the vmm exited {} (vmm exited {vmm_exit})",
            host.rc
        )));
    }
    Ok(GuestRun {
        vmm_exit,
        report,
        host,
    })
}

/// Errors when a guest boots an ELF image that is not known.
fn check_vmlinux(guests: &[GuestOpts]) -> Result<()> {
    for g in guests.iter().filter(|g| g.kernel == KernelImage::Vmlinux) {
        let known = match g.guest_kernel {
            GuestKernel::Ours => artifacts::kernel()?.vmlinux.is_some(),
            GuestKernel::Stock => artifacts::stock_kernel()?.vmlinux.is_some(),
        };
        if !known {
            return Err(Error::setup(match g.guest_kernel {
                GuestKernel::Ours => {
                    "this test boots vmlinux but none is known (set PMEMVMM_VMLINUX)"
                }
                GuestKernel::Stock => {
                    "this test boots the stock kernel's vmlinux but none is known (set \
                     PMEMVMM_STOCK_VMLINUX)"
                }
            }));
        }
    }
    Ok(())
}

/// Prefix of every line guest `i`'s host script prints in a shared host: `@@G<i>@@ `.
fn guest_tag(i: usize) -> String {
    format!("@@G{i}@@ ")
}

/// `@@GUEST-DONE <i> <rc>@@`: guest `i`'s host script finished with `rc`.
pub const GUEST_DONE: &str = "GUEST-DONE";

/// The host script for [`boot_guests`]: every guest's [`GuestOpts::host_script`] in its own
/// subshell and `$WORK/g<i>` directory, each output line tagged with [`guest_tag`] so the
/// console stays live (the testbed's stall and silence watchdogs read it) while the guests run,
/// all at once when `parallel`, else one after another.
pub fn shared_host_script(guests: &[GuestOpts], parallel: bool) -> Result<String> {
    let mut s = String::from("top=\"$WORK\"\n");
    for (i, g) in guests.iter().enumerate() {
        let tag = guest_tag(i);
        s.push_str(&format!(
            "{{ mkdir -p \"$top/g{i}\" && cd \"$top/g{i}\" && WORK=\"$top/g{i}\" && export WORK && \
             ( {body} ) 2>&1; echo \"@@{GUEST_DONE} {i} $?@@\"; }} </dev/null | sed 's/^/{tag}/'{bg}\n",
            body = g.host_script()?.trim_end().replace('\n', "\n  "),
            bg = if parallel { " &" } else { "" },
        ));
    }
    if parallel {
        s.push_str("wait\n");
    }
    s.push_str("exit 0\n");
    Ok(s)
}

/// Guest `i`'s lines of a shared host's output, untagged.
fn guest_output(output: &str, i: usize) -> String {
    let tag = guest_tag(i);
    output
        .lines()
        .filter_map(|l| l.find(&tag).map(|p| &l[p + tag.len()..]))
        .fold(String::new(), |mut out, l| {
            out.push_str(l);
            out.push('\n');
            out
        })
}

/// One guest of a shared-host test: a name for the report, its options and the check of its run.
pub struct GuestCase {
    pub name: &'static str,
    pub opts: GuestOpts,
    pub check: fn(&GuestRun) -> Result<()>,
}

/// Boots every case in one host ([`boot_guests`]) and checks each run; the error lists every
/// case that failed (`what` names the cases in its message, e.g. "boot shapes"), each with its
/// own error and console tail.
pub fn boot_and_check(
    host: &HostOpts,
    cases: &[GuestCase],
    parallel: bool,
    what: &str,
) -> Result<()> {
    let opts: Vec<GuestOpts> = cases.iter().map(|c| c.opts.clone()).collect();
    let runs = boot_guests(host, &opts, parallel)?;
    let mut failed = Vec::new();
    for (case, run) in cases.iter().zip(&runs) {
        eprintln!(
            "{}: vmm {:?}, vmm exit {}",
            case.name, run.report.vmm_time, run.vmm_exit
        );
        if let Err(e) = (case.check)(run) {
            failed.push(format!("{}: {e}", case.name));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Guest {
            msg: format!("{} of {} {what} failed", failed.len(), cases.len()),
            tail: failed.join("\n\n"),
        })
    }
}

/// Boots several guests in one host run (one L1 boot in nested mode instead of one per guest),
/// all at once when `parallel` (each guest should then fit the host: L1 has `host.cpus` vCPUs
/// and `host.memory_mib` of RAM). Each guest's `host` options are ignored: `host` is the one
/// host. Returns one [`GuestRun`] per guest, in order; each `GuestRun::host` carries that guest's
/// own output. Errors as [`boot_guest`] does, for the host or for any guest whose vmm did not
/// run to completion.
pub fn boot_guests(host: &HostOpts, guests: &[GuestOpts], parallel: bool) -> Result<Vec<GuestRun>> {
    check_vmlinux(guests)?;
    let script = shared_host_script(guests, parallel)?;
    let mut host_opts = host.clone();
    host_opts.guest_artifacts = true;
    host_opts.stock_kernel = StockStaging::for_guests(guests);
    let run = run_on_kvm_host(&script, &host_opts)?;
    run.expect_success()?;
    guests
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let output = guest_output(&run.output, i);
            let rc: Option<i32> = crate::markers::marker_values(&output, GUEST_DONE)
                .last()
                .and_then(|v| v.split_whitespace().nth(1)?.parse().ok());
            let own = HostRun {
                output,
                rc: rc.unwrap_or(-1),
                ..run.clone()
            };
            let report = parse_guest_report(&own.output);
            let Some(vmm_exit) = report.vmm_exit else {
                return Err(own.error(format!(
                    "guest {i}: the vmm did not run to completion (its host script exited {})",
                    own.rc
                )));
            };
            if !g.after.trim().is_empty() && own.rc != 0 {
                return Err(own.error(format!(
                    "guest {i}: host commands after the vmm exited {} (vmm exited {vmm_exit})",
                    own.rc
                )));
            }
            Ok(GuestRun {
                vmm_exit,
                report,
                host: own,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two guests in one shared host script, run by sh with a fake vmm, in both modes: each
    /// guest's output comes back untagged and whole, with its own exit status.
    #[test]
    fn shared_host_script_separates_the_guests() {
        let dir = crate::scratch::ScratchDir::new("shared").unwrap();
        let fake = dir.path().join("vmm");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho \"vmm $*\"\necho @@GUEST-INIT@@\nexit 3\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let guests = [
            GuestOpts::default().with_command("one").with_before("pwd"),
            GuestOpts::default()
                .with_cpus(2)
                .with_command("two")
                .with_after("echo after; exit 4"),
        ];
        for parallel in [false, true] {
            let script = shared_host_script(&guests, parallel).unwrap();
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(&script)
                .env("VMM", &fake)
                .env("WORK", dir.path())
                .env("KERNEL", "k")
                .env("INITRAMFS", "i")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let g0 = guest_output(&text, 0);
            let g1 = guest_output(&text, 1);
            assert!(
                g0.contains(&format!("{}/g0\n", dir.path().display())),
                "{g0}"
            );
            assert!(g0.contains("\"one\""), "{g0}");
            assert!(!g0.contains("\"two\""), "{g0}");
            assert_eq!(parse_guest_report(&g0).vmm_exit, Some(3), "{g0}");
            assert!(g1.contains("--cpus 2") && g1.contains("after"), "{g1}");
            assert!(g1.contains("@@GUEST-DONE 1 4@@"), "{g1}");
            assert!(g0.contains("@@GUEST-DONE 0 0@@"), "{g0}");
            assert!(parse_guest_report(&g1).init_seen, "{g1}");
        }
    }

    #[test]
    fn cmdline_with_command() {
        let o = GuestOpts::default().with_command("cat /proc/iomem; exit 3");
        assert_eq!(
            o.guest_cmdline().unwrap(),
            "console=ttyS0 quiet panic=-1 -- \"cat /proc/iomem; exit 3\""
        );
        assert!(GuestOpts::default()
            .with_command("echo \"x\"")
            .guest_cmdline()
            .is_err());
        assert!(GuestOpts::default()
            .with_command("x".repeat(3000))
            .guest_cmdline()
            .is_err());
    }

    #[test]
    fn script_shape() {
        let o = GuestOpts::default()
            .with_cpus(4)
            .with_memory("3584M")
            .with_kernel(KernelImage::Vmlinux)
            .with_command("echo it's")
            .with_vmm_args(["--pmem", "file=$WORK/x,size=1G"]);
        let s = o.host_script().unwrap();
        assert!(s.contains(
            "\"$VMM\" --kernel \"$VMLINUX\" --initramfs \"$INITRAMFS\" --cpus 4 --memory 3584M \
             --serial stdio --cmdline 'console=ttyS0 quiet panic=-1 -- \"echo it'\\''s\"' \
             --pmem 'file=$WORK/x,size=1G' </dev/null"
        ), "{s}");
        assert!(s.contains("@@VMM-EXIT $rc@@"));
        assert!(s.ends_with("exit 0\n"));
    }

    /// A stock guest boots `$STOCK_KERNEL` (or `$STOCK_VMLINUX`) with `$STOCK_INITRAMFS`, and
    /// the host stages what the guests need of the stock kernel, the ELF image only for PVH.
    #[test]
    fn stock_guests_use_the_stock_files() {
        let bz = GuestOpts::default()
            .with_stock_kernel()
            .with_command("true");
        let s = bz.host_script().unwrap();
        assert!(
            s.contains("\"$VMM\" --kernel \"$STOCK_KERNEL\" --initramfs \"$STOCK_INITRAMFS\""),
            "{s}"
        );
        let pvh = bz.clone().with_kernel(KernelImage::Vmlinux);
        assert!(pvh
            .host_script()
            .unwrap()
            .contains("--kernel \"$STOCK_VMLINUX\""));
        let ours = GuestOpts::default().with_kernel(KernelImage::Vmlinux);
        assert_eq!(StockStaging::for_guests(&[]), StockStaging::None);
        assert_eq!(
            StockStaging::for_guests(std::slice::from_ref(&ours)),
            StockStaging::None
        );
        assert_eq!(
            StockStaging::for_guests(&[ours.clone(), bz.clone()]),
            StockStaging::BzImage
        );
        assert_eq!(
            StockStaging::for_guests(&[bz, pvh, ours]),
            StockStaging::BzImageAndVmlinux
        );
    }

    /// The generated script runs under sh with a fake vmm that prints what it got.
    #[test]
    fn script_runs_with_fake_vmm() {
        let o = GuestOpts::default()
            .with_command("a  b")
            .with_before("echo before")
            .with_after("echo after; exit 5");
        let script = o.host_script().unwrap();
        let dir = crate::scratch::ScratchDir::new("fakevmm").unwrap();
        let fake = dir.path().join("vmm");
        std::fs::write(
            &fake,
            "#!/bin/sh\nprintf '%s|' \"$@\"; echo; echo '@@GUEST-INIT@@'; exit 3\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .env("VMM", &fake)
            .env("KERNEL", "/k")
            .env("INITRAMFS", "/initrd")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(5), "{text}");
        let r = parse_guest_report(&text);
        assert_eq!(r.vmm_exit, Some(3), "{text}");
        assert!(r.init_seen);
        assert!(
            r.console
                .contains("--cmdline|console=ttyS0 quiet panic=-1 -- \"a  b\"|"),
            "{text}"
        );
        assert!(text.starts_with("before\n"));
        assert!(text.ends_with("after\n"));
    }

    #[test]
    fn report_parsing() {
        let out = "@@VMM-START 10.50@@\n[    0.5] Linux\n@@GUEST-INIT@@\n@@GUEST-CPUS 4@@\n\
                   @@GUEST-MEMTOTAL-KB 250000@@\nhello\n@@GUEST-EXIT 0@@\n@@VMM-END 12.00@@\n\
                   @@VMM-EXIT 0@@\n";
        let r = parse_guest_report(out);
        assert_eq!(r.vmm_exit, Some(0));
        assert!(r.init_seen);
        assert_eq!(r.cpus, Some(4));
        assert_eq!(r.memtotal_kb, Some(250_000));
        assert_eq!(r.guest_exit, Some(0));
        assert_eq!(r.vmm_time, Some(Duration::from_millis(1500)));
        assert!(r.console.starts_with("[    0.5] Linux\n"));
        assert!(r.console.ends_with("@@GUEST-EXIT 0@@\n"));

        let none = parse_guest_report("@@VMM-START 1@@\n@@VMM-END 2@@\n@@VMM-EXIT 4@@\n");
        assert_eq!(none.vmm_exit, Some(4));
        assert!(!none.init_seen);
        assert_eq!(none.guest_exit, None);
    }
}
