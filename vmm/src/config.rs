//! Step 1 of a run: the command line becomes a validated [`VmConfig`].
//!
//! Everything a user can get wrong in the arguments is found here, before any KVM object exists,
//! and reported as one line naming the option and the value.

use std::path::PathBuf;

use clap::Parser;
use thiserror::Error;

use crate::layout::MIB;
use crate::pmem_option::{parse_pmem, PmemConfig};

/// The guest needs this much to boot a kernel and a small initramfs.
pub const MIN_MEMORY: u64 = 64 * MIB;
/// MADT local APIC entries carry 8-bit APIC ids and 0xff is the broadcast id.
pub use geometry::MAX_CPUS;

pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0    the guest powered off (ACPI S5)
  1    the monitor failed (KVM error, host cannot run the guest, I/O error)
  2    bad command line or configuration; nothing was started
  3    the guest rebooted (ACPI reset register, port 0xcf9 or the i8042 reset line)
  4    the guest triple-faulted
  128+N  stopped by signal N (SIGINT 130, SIGTERM 143) after an orderly shutdown

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
    /// Guest kernel: a bzImage, or an ELF vmlinux with a PVH entry note
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,
    /// Initial ramdisk loaded for the kernel
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,
    /// Kernel command line
    #[arg(long, value_name = "STR", default_value = DEFAULT_CMDLINE)]
    pub cmdline: String,
    /// Number of vCPUs (1 to 254)
    #[arg(long, value_name = "N", default_value = "1")]
    pub cpus: String,
    /// Guest RAM, e.g. 512M or 2G (at least 64M)
    #[arg(long, value_name = "SIZE", default_value = "512M")]
    pub memory: String,
    /// Where the guest's COM1 goes: stdio, file=PATH or off
    #[arg(long, value_name = "MODE", default_value = "stdio")]
    pub serial: String,
    /// Write a JSON description of the guest's pmem namespaces (addresses, modes, memmap cost,
    /// capacity) to PATH before the guest starts
    #[arg(long, value_name = "PATH")]
    pub report: Option<PathBuf>,
    /// A persistent memory device (repeatable): path=PATH[,size=SIZE][,readonly=on|off][,id=NAME]
    /// [,numa=NODE][,memmap=ram|pmem|none|auto][,mode=fsdax|devdax|raw][,align=4K|2M|1G]
    /// [,format=keep|init|force]
    #[arg(long, value_name = "SPEC")]
    pub pmem: Vec<String>,
    /// Seccomp filters on the monitor's threads: true (a system call outside the allow list
    /// kills the monitor), false (none) or log (allowed and logged by the host kernel)
    #[arg(long, value_name = "true|false|log", default_value = "true")]
    pub seccomp: crate::seccomp::SeccompMode,
    /// Test hook: the named thread (main or vcpu) makes a forbidden system call once the
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
    pub seccomp: crate::seccomp::SeccompMode,
    pub seccomp_selftest: Option<crate::seccomp::SelftestThread>,
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

/// Parses a size such as `512M`, `2G`, `4096K`, `1T` or a bare number of `bare_unit` bytes.
/// Suffixes are binary (K = 1024); `KiB`, `MiB`, ... and `B` are accepted too.
pub fn parse_size(text: &str, bare_unit: u64) -> Result<u64, String> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(digits_end);
    if digits.is_empty() {
        return Err("expected a number with an optional K, M, G or T suffix".into());
    }
    let number: u64 = digits
        .parse()
        .map_err(|_| "the number is too large".to_string())?;
    let unit = match suffix.to_ascii_uppercase().as_str() {
        "" => bare_unit,
        "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        _ => return Err(format!("unknown size suffix {suffix:?}; use K, M, G or T")),
    };
    number
        .checked_mul(unit)
        .ok_or_else(|| "the size is too large".to_string())
}

fn host_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl VmConfig {
    /// Validates the parsed command line. `host_memory` is the host's RAM in bytes (None when
    /// unknown), the bound for guest RAM: more than the host has could never be backed.
    pub fn from_cli(cli: Cli, host_memory: Option<u64>) -> Result<Self, ConfigError> {
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

        let memory = parse_size(&cli.memory, MIB).map_err(|r| invalid("memory", &cli.memory, r))?;
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
                &cli.pmem[MAX_PMEM_DEVICES],
                format!("at most {MAX_PMEM_DEVICES} devices per guest"),
            ));
        }
        let mut pmem = Vec::with_capacity(cli.pmem.len());
        for (index, spec) in cli.pmem.iter().enumerate() {
            let dev = parse_pmem(spec, index).map_err(|r| invalid("pmem", spec, r))?;
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
            seccomp: cli.seccomp,
            seccomp_selftest: cli.seccomp_selftest,
        })
    }

    /// Parses and validates `args` (including the program name).
    pub fn parse_args<I, T>(args: I) -> Result<Self, CliFailure>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cli = Cli::try_parse_from(args).map_err(CliFailure::Clap)?;
        VmConfig::from_cli(cli, host_memory_bytes()).map_err(CliFailure::Config)
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
        VmConfig::from_cli(Cli::try_parse_from(args).unwrap(), Some(8 << 30))
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M", 1), Ok(512 << 20));
        assert_eq!(parse_size("2G", 1), Ok(2 << 30));
        assert_eq!(parse_size("3584MiB", 1), Ok(3584 << 20));
        assert_eq!(parse_size("64k", 1), Ok(64 << 10));
        assert_eq!(parse_size("1T", 1), Ok(1 << 40));
        assert_eq!(parse_size("256", MIB), Ok(256 << 20));
        assert!(parse_size("", 1).is_err());
        assert!(parse_size("12Q", 1).is_err());
        assert!(parse_size("-1G", 1).is_err());
        assert!(parse_size("99999999999999999999", 1).is_err());
        assert!(parse_size("99999999999T", 1).is_err());
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
}
