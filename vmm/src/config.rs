//! Step 1 of a run: the command line becomes a validated [`VmConfig`].
//!
//! Everything a user can get wrong in the arguments is found here, before any KVM object exists,
//! and reported as one line naming the option and the value.

use std::os::fd::RawFd;
use std::path::PathBuf;

use clap::Parser;
use thiserror::Error;

use crate::layout::MIB;
use crate::pmem_option::{parse_pmem, PmemConfig};
use crate::size::parse_size;

/// The guest needs this much to boot a kernel and a small initramfs.
pub const MIN_MEMORY: u64 = 64 * MIB;
/// MADT local APIC entries carry 8-bit APIC ids and 0xff is the broadcast id.
pub use geometry::MAX_CPUS;

pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0    the guest powered off (ACPI S5)
  1    the monitor failed (KVM error, host cannot run the guest, I/O error)
  2    bad command line or configuration; nothing was written, nothing was started
  3    the guest rebooted (ACPI reset register, port 0xcf9 or the i8042 reset line)
  4    the guest triple-faulted
  5    a host flush of guest data failed (msync of a --pmem backing, for a guest flush or at
       exit): the guest was stopped before its flush completed; data written since its last
       successful flush may not be durable
  6    a --pmem backing failed under the guest (the host could not supply a page the guest
       touched: its file system is full, the device returns I/O errors, the device-dax was
       removed): the guest was stopped at the access; what it flushed before is on the backing
  128+N  stopped by signal N (SIGINT 130, SIGTERM 143, SIGHUP 129) after an orderly shutdown;
       before the guest started, files this run created are removed
  159  (as a shell reports it) killed by SIGSYS: a thread made a system call outside its
       seccomp allow list; --seccomp log finds which (see the README's sandbox section)

Output files (--report, --serial file=) must be regular files or new paths in a writable
directory (--serial file= also takes /dev/null or a terminal), and never a --pmem backing, the
kernel, the initramfs or the other output, however reached (links, bind mounts, loop devices).
They are created or truncated only after every check has passed. --api-socket path= follows
the same rules and may also be a stale socket (replaced), not a live one.

Control API: --api-socket serves cloud-hypervisor's HTTP endpoints (ch-remote works); without
--kernel the monitor starts empty and waits for vm.create and vm.boot.

Sizes take a K, M, G or T suffix (powers of 1024); a bare --memory number is MiB, as in QEMU.
The serial console is COM1 (0x3f8, IRQ 4): give the guest console=ttyS0.";

#[derive(Parser, Debug)]
#[command(
    name = "vmm",
    version,
    about = "A KVM virtual machine monitor for persistent memory",
    after_help = EXIT_STATUS_HELP
)]
pub struct Cli {
    /// Guest kernel: a bzImage, or an ELF vmlinux with a PVH entry note. Without it (and with
    /// --api-socket) the monitor starts empty and waits for vm.create and vm.boot
    #[arg(long, value_name = "PATH", required_unless_present = "api_socket")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk loaded for the kernel
    #[arg(long, value_name = "PATH", requires = "kernel")]
    pub initramfs: Option<PathBuf>,
    /// Kernel command line
    #[arg(long, value_name = "STR", default_value = DEFAULT_CMDLINE, requires = "kernel")]
    pub cmdline: String,
    /// Number of vCPUs (1 to 254)
    #[arg(long, value_name = "N", default_value = "1", requires = "kernel")]
    pub cpus: String,
    /// Guest RAM, e.g. 512M or 2G (at least 64M)
    #[arg(long, value_name = "SIZE", default_value = "512M", requires = "kernel")]
    pub memory: String,
    /// Where the guest's COM1 goes: stdio, file=PATH or off
    #[arg(
        long,
        value_name = "MODE",
        default_value = "stdio",
        requires = "kernel"
    )]
    pub serial: String,
    /// Write a JSON description of the guest's pmem namespaces (addresses, modes, memmap cost,
    /// capacity) to PATH before the guest starts
    #[arg(long, value_name = "PATH", requires = "kernel")]
    pub report: Option<PathBuf>,
    #[arg(
        long,
        value_name = "SPEC",
        requires = "kernel",
        help = concat!(
            "A persistent memory device (repeatable): ",
            crate::pmem_option::pmem_syntax!()
        )
    )]
    pub pmem: Vec<String>,
    /// Serve the HTTP control API (cloud-hypervisor's endpoints) on a Unix socket:
    /// path=PATH (created; a stale socket there is replaced) or fd=N (an inherited listening
    /// socket)
    #[arg(long, value_name = "path=PATH|fd=N")]
    pub api_socket: Option<String>,
    /// Leave HLT to the guest (KVM_CAP_X86_DISABLE_EXITS, as QEMU's -overcommit cpu-pm=on): a
    /// halted vCPU keeps its host CPU busy instead of sleeping, and in exchange a backing that
    /// fails under the guest (a full file system under a sparse file, an I/O error, a removed
    /// device-dax) stops it at once, at the failing address; without it the monitor notices
    /// KVM retrying the fault a few seconds later. Either way: exit status 6 and a line naming
    /// the device
    #[arg(long, requires = "kernel")]
    pub halt_in_guest: bool,
    /// Seccomp filters on every thread of the monitor (main, vCPU, API), each with its own
    /// allow list: true (a system call outside the list kills the monitor with SIGSYS), false
    /// (no filters) or log (allowed and logged by the host kernel's audit, to find a missing
    /// call)
    #[arg(long, value_name = "true|false|log", default_value = "true")]
    pub seccomp: crate::seccomp::SeccompMode,
    /// Test hook: the named thread (main, vcpu or api) makes a forbidden system call once the
    /// filters are in place
    #[arg(long, value_name = "THREAD", hide = true)]
    pub seccomp_selftest: Option<crate::seccomp::SelftestThread>,
}

pub const DEFAULT_CMDLINE: &str = "console=ttyS0";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialMode {
    Stdio,
    File(PathBuf),
    Off,
}

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    pub cmdline: String,
    pub cpus: u32,
    pub memory: u64,
    pub serial: SerialMode,
    pub pmem: Vec<PmemConfig>,
    pub report: Option<PathBuf>,
    /// `--halt-in-guest`: HLT without an exit, so a failing backing is reported at once (`vm`).
    pub halt_in_guest: bool,
}

/// How many `--pmem` devices one guest may have (NFIT handles and ACPI names are sized for it).
pub use geometry::MAX_PMEM_DEVICES;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--{option} {value:?}: {reason}")]
    Invalid {
        option: &'static str,
        value: String,
        reason: String,
    },
}

fn invalid(option: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        option,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// The value of `--api-socket`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiSocketOption {
    Path(PathBuf),
    Fd(RawFd),
}

pub const API_SOCKET_SYNTAX: &str = "path=PATH or fd=N";

/// Parses `path=PATH` or `fd=N`.
pub fn parse_api_socket(text: &str) -> Result<ApiSocketOption, String> {
    if let Some(p) = text.strip_prefix("path=") {
        if p.is_empty() {
            return Err(format!("path= needs a value; expected {API_SOCKET_SYNTAX}"));
        }
        return Ok(ApiSocketOption::Path(PathBuf::from(p)));
    }
    if let Some(n) = text.strip_prefix("fd=") {
        let fd: RawFd = n
            .parse()
            .ok()
            .filter(|fd| *fd >= 3)
            .ok_or_else(|| format!("fd={n}: expected a descriptor number of 3 or more"))?;
        return Ok(ApiSocketOption::Fd(fd));
    }
    Err(format!("expected {API_SOCKET_SYNTAX}"))
}

/// The monitor's start: a VM from the command line, an API socket, or both.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The VM the command line describes (`--kernel` given); None: wait for `vm.create`.
    pub vm: Option<VmConfig>,
    pub api_socket: Option<ApiSocketOption>,
    /// `--seccomp` and its test hook: the monitor's, whatever VM it runs.
    pub sandbox: crate::seccomp::Sandbox,
}

/// A VM's settings as text, before validation: what `--kernel`, `--cpus`, ... give, and what
/// the API's `vm.create` translates its JSON into. [`VmConfig::validate`] is the one validation
/// both go through.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    pub cmdline: String,
    pub cpus: String,
    pub memory: String,
    pub serial: String,
    pub report: Option<PathBuf>,
    /// Each device as validated by `pmem_option::pmem_from_pairs`, with the text that names
    /// it in messages (the `--pmem` value, or `pmem[i]` in the API).
    pub pmem: Vec<(String, PmemConfig)>,
    pub halt_in_guest: bool,
}

impl Launch {
    /// Validates the parsed command line (see [`VmConfig::validate`]).
    pub fn from_cli(cli: Cli, host_memory: Option<u64>) -> Result<Self, ConfigError> {
        let api_socket = match &cli.api_socket {
            Some(text) => Some(parse_api_socket(text).map_err(|r| invalid("api-socket", text, r))?),
            None => None,
        };
        let sandbox = crate::seccomp::Sandbox {
            mode: cli.seccomp,
            selftest: cli.seccomp_selftest,
        };
        let vm = match cli.kernel {
            Some(kernel) => {
                if cli.pmem.len() > MAX_PMEM_DEVICES {
                    return Err(invalid(
                        "pmem",
                        &cli.pmem[MAX_PMEM_DEVICES],
                        format!("at most {MAX_PMEM_DEVICES} devices per guest"),
                    ));
                }
                let mut pmem = Vec::with_capacity(cli.pmem.len());
                for (index, spec) in cli.pmem.iter().enumerate() {
                    let dev = parse_pmem(spec, index)
                        .map_err(|r| invalid("pmem", spec, r.to_string()))?;
                    pmem.push((spec.clone(), dev));
                }
                Some(VmConfig::validate(
                    VmSpec {
                        kernel,
                        initramfs: cli.initramfs,
                        cmdline: cli.cmdline,
                        cpus: cli.cpus,
                        memory: cli.memory,
                        serial: cli.serial,
                        report: cli.report,
                        pmem,
                        halt_in_guest: cli.halt_in_guest,
                    },
                    host_memory,
                )?)
            }
            None => None,
        };
        Ok(Launch {
            vm,
            api_socket,
            sandbox,
        })
    }

    /// Parses and validates `args` (including the program name).
    pub fn parse_args<I, T>(args: I) -> Result<Self, CliFailure>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cli = Cli::try_parse_from(args).map_err(CliFailure::Clap)?;
        Launch::from_cli(cli, host_memory_bytes()).map_err(CliFailure::Config)
    }
}

/// The host's RAM in bytes, when known: the bound for guest RAM.
pub fn host_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl VmConfig {
    /// Validates a VM's settings, from the command line or from `vm.create`. `host_memory` is
    /// the host's RAM in bytes (None when unknown), the bound for guest RAM: more than the host
    /// has could never be backed.
    pub fn validate(cli: VmSpec, host_memory: Option<u64>) -> Result<Self, ConfigError> {
        let cpus: u32 = cli.cpus.trim().parse().map_err(|_| {
            invalid(
                "cpus",
                &cli.cpus,
                format!("expected a whole number from 1 to {MAX_CPUS}"),
            )
        })?;
        if cpus == 0 || cpus > MAX_CPUS {
            return Err(invalid(
                "cpus",
                &cli.cpus,
                format!("expected 1 to {MAX_CPUS} vCPUs"),
            ));
        }

        let memory = parse_size(&cli.memory, MIB)
            .map_err(|r| invalid("memory", &cli.memory, r.to_string()))?;
        if memory < MIN_MEMORY {
            return Err(invalid(
                "memory",
                &cli.memory,
                "guest RAM must be at least 64M",
            ));
        }
        if memory % crate::layout::PAGE_SIZE != 0 {
            return Err(invalid(
                "memory",
                &cli.memory,
                "guest RAM must be a multiple of 4K",
            ));
        }
        if let Some(host) = host_memory {
            if memory > host {
                return Err(invalid(
                    "memory",
                    &cli.memory,
                    format!("guest RAM exceeds this host's {} MiB of memory", host / MIB),
                ));
            }
        }
        if memory > crate::layout::MAX_RAM {
            return Err(invalid(
                "memory",
                &cli.memory,
                format!(
                    "guest RAM above {} GiB is not supported",
                    crate::layout::MAX_RAM >> 30
                ),
            ));
        }

        let serial = match cli.serial.as_str() {
            "stdio" => SerialMode::Stdio,
            "off" => SerialMode::Off,
            s => match s.strip_prefix("file=") {
                Some(p) if !p.is_empty() => SerialMode::File(PathBuf::from(p)),
                _ => {
                    return Err(invalid(
                        "serial",
                        &cli.serial,
                        "expected stdio, file=PATH or off",
                    ))
                }
            },
        };

        if cli.cmdline.as_bytes().contains(&0) {
            return Err(invalid(
                "cmdline",
                &cli.cmdline,
                "the command line contains a NUL byte",
            ));
        }

        if cli.pmem.len() > MAX_PMEM_DEVICES {
            return Err(invalid(
                "pmem",
                &cli.pmem[MAX_PMEM_DEVICES].0,
                format!("at most {MAX_PMEM_DEVICES} devices per guest"),
            ));
        }
        let mut pmem = Vec::with_capacity(cli.pmem.len());
        for (spec, dev) in cli.pmem {
            let spec = &spec;
            if let Some(other) = pmem.iter().find(|p: &&PmemConfig| p.id == dev.id) {
                return Err(invalid(
                    "pmem",
                    spec,
                    format!(
                        "id={} is already used by path={}",
                        dev.id,
                        other.path.display()
                    ),
                ));
            }
            pmem.push(dev);
        }

        Ok(VmConfig {
            kernel: cli.kernel,
            initramfs: cli.initramfs,
            cmdline: cli.cmdline,
            cpus,
            memory,
            serial,
            pmem,
            report: cli.report,
            halt_in_guest: cli.halt_in_guest,
        })
    }
}

/// Why the command line did not produce a configuration.
#[derive(Debug)]
pub enum CliFailure {
    /// clap's own outcome: a syntax error, or `--help` / `--version` that were asked for.
    Clap(clap::Error),
    Config(ConfigError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<VmConfig, ConfigError> {
        let mut args = vec!["vmm", "--kernel", "/k"];
        args.extend_from_slice(extra);
        Launch::from_cli(Cli::try_parse_from(args).unwrap(), Some(8 << 30))
            .map(|l| l.vm.expect("--kernel gives a VM"))
    }

    #[test]
    fn api_socket_syntax() {
        assert_eq!(
            parse_api_socket("path=/run/x.sock"),
            Ok(ApiSocketOption::Path("/run/x.sock".into()))
        );
        assert_eq!(parse_api_socket("fd=7"), Ok(ApiSocketOption::Fd(7)));
        for (bad, needle) in [
            ("path=", "path= needs a value"),
            ("fd=x", "fd=x"),
            ("fd=1", "fd=1"),
            ("/run/x.sock", "expected path=PATH or fd=N"),
        ] {
            let e = parse_api_socket(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    /// The sandbox is the monitor's, on by default in every mode, the API's included.
    #[test]
    fn seccomp_is_on_by_default_with_or_without_the_api() {
        use crate::seccomp::{Sandbox, SeccompMode, SelftestThread};
        let launch = |args: &[&str]| {
            let mut all = vec!["vmm"];
            all.extend_from_slice(args);
            Launch::from_cli(Cli::try_parse_from(all).unwrap(), Some(8 << 30)).unwrap()
        };
        let on = Sandbox {
            mode: SeccompMode::On,
            selftest: None,
        };
        assert_eq!(launch(&["--api-socket", "path=/run/v.sock"]).sandbox, on);
        assert_eq!(launch(&["--kernel", "/k"]).sandbox, on);
        assert_eq!(
            launch(&["--kernel", "/k", "--api-socket", "path=/run/v.sock"]).sandbox,
            on
        );
        for (text, mode) in [
            ("true", SeccompMode::On),
            ("log", SeccompMode::Log),
            ("false", SeccompMode::Off),
        ] {
            let l = launch(&["--api-socket", "path=/run/v.sock", "--seccomp", text]);
            assert_eq!(l.sandbox.mode, mode);
        }
        let l = launch(&["--api-socket", "path=/s", "--seccomp-selftest", "api"]);
        assert_eq!(l.sandbox.selftest, Some(SelftestThread::Api));
    }

    #[test]
    fn defaults_and_values() {
        let c = parse(&[]).unwrap();
        assert_eq!((c.cpus, c.memory), (1, 512 << 20));
        assert_eq!(c.serial, SerialMode::Stdio);
        assert_eq!(c.cmdline, DEFAULT_CMDLINE);
        let c = parse(&[
            "--cpus",
            "4",
            "--memory",
            "3584M",
            "--serial",
            "file=/tmp/x",
        ])
        .unwrap();
        assert_eq!((c.cpus, c.memory), (4, 3584 << 20));
        assert_eq!(c.serial, SerialMode::File("/tmp/x".into()));
        assert_eq!(parse(&["--serial", "off"]).unwrap().serial, SerialMode::Off);
        assert_eq!(parse(&["--cpus", "254"]).unwrap().cpus, 254);
    }

    #[test]
    fn bad_values_name_option_and_value() {
        for (args, needle) in [
            (&["--cpus", "0"][..], "--cpus \"0\""),
            (&["--cpus", "255"][..], "--cpus \"255\""),
            (&["--cpus", "two"][..], "--cpus \"two\""),
            (&["--memory", "32M"][..], "--memory \"32M\""),
            (&["--memory", "9G"][..], "this host's"),
            (&["--memory", "1X"][..], "suffix"),
            (&["--memory", "65537K"][..], "multiple of 4K"),
            (&["--serial", "tcp"][..], "--serial \"tcp\""),
            (&["--serial", "file="][..], "file=PATH"),
            (
                &["--pmem", "path=/a,bogus=1"][..],
                "--pmem \"path=/a,bogus=1\": unknown key",
            ),
            (
                &["--pmem", "path=/a", "--pmem", "path=/b,id=pmem0"][..],
                "id=pmem0 is already used",
            ),
        ] {
            let msg = parse(args).unwrap_err().to_string();
            assert!(msg.contains(needle), "{args:?}: {msg}");
            assert!(!msg.contains('\n'), "one line: {msg}");
        }
    }

    #[test]
    fn unknown_option_is_a_clap_error() {
        assert!(Cli::try_parse_from(["vmm", "--kernel", "/k", "--frobnicate"]).is_err());
        assert!(Cli::try_parse_from(["vmm"]).is_err());
    }

    #[test]
    fn api_socket_alone_starts_empty() {
        let cli = Cli::try_parse_from(["vmm", "--api-socket", "path=/run/v.sock"]).unwrap();
        let launch = Launch::from_cli(cli, None).unwrap();
        assert!(launch.vm.is_none());
        assert_eq!(
            launch.api_socket,
            Some(ApiSocketOption::Path("/run/v.sock".into()))
        );
        // VM options need --kernel: with the API the VM comes from vm.create.
        assert!(
            Cli::try_parse_from(["vmm", "--api-socket", "path=/s", "--pmem", "path=/a"]).is_err()
        );
        assert!(Cli::try_parse_from(["vmm", "--api-socket", "path=/s", "--memory", "1G"]).is_err());
        let cli = Cli::try_parse_from(["vmm", "--api-socket", "/s"]).unwrap();
        let e = Launch::from_cli(cli, None).unwrap_err().to_string();
        assert!(e.contains("--api-socket \"/s\""), "{e}");
    }
}
