//! Choosing where a "host with usable KVM" comes from.
//!
//! Some machines (like the development boxes) expose a `/dev/kvm` from the `kvm_pvm` module that
//! cannot run a stock Linux guest; there we boot our own kernel as L1 under QEMU TCG and let it
//! provide nested KVM. On machines with real VT-x/AMD-V the vmm runs directly.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::config::{self, ENV_MODE, ENV_QEMU};
use crate::error::{Error, Result};

/// Where scripts run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `sh -c` on this machine, which has hardware-assisted KVM.
    Direct,
    /// Inside an L1 Linux VM under `qemu-system-x86_64 -accel tcg`, which provides nested KVM.
    Nested,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Direct => "direct",
            Mode::Nested => "nested",
        })
    }
}

/// What the user asked for in `PMEMVMM_TESTBED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    /// Pick direct when hardware KVM is usable, nested otherwise.
    Auto,
    /// Force direct.
    Direct,
    /// Force nested.
    Nested,
}

impl Requested {
    /// Parses the value of `PMEMVMM_TESTBED` (`None` or empty means auto).
    pub fn parse(value: Option<&str>) -> Result<Self> {
        match value.map(str::trim) {
            None | Some("") | Some("auto") => Ok(Requested::Auto),
            Some("direct") => Ok(Requested::Direct),
            Some("nested") => Ok(Requested::Nested),
            Some(other) => Err(Error::setup(format!(
                "{ENV_MODE}={other:?} is not one of auto, direct, nested"
            ))),
        }
    }
}

/// Facts about this machine that decide the mode; gathered by [`Probe::gather`], kept plain so
/// the decision is a unit-tested pure function.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probe {
    /// `/proc/cpuinfo` lists `vmx` or `svm`.
    pub cpu_virt: bool,
    /// `/sys/module/kvm_pvm` exists (a KVM that cannot run stock Linux guests).
    pub kvm_pvm: bool,
    /// `/dev/kvm` opens read-write.
    pub kvm_rw: bool,
    /// The QEMU binary, if found.
    pub qemu: Option<PathBuf>,
}

impl Probe {
    /// Looks at this machine.
    pub fn gather() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Probe {
            cpu_virt: cpuinfo_has_virt(&cpuinfo),
            kvm_pvm: Path::new("/sys/module/kvm_pvm").exists(),
            kvm_rw: std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_ok(),
            qemu: find_qemu(),
        }
    }
}

/// Whether a `flags` line of `/proc/cpuinfo` has `vmx` or `svm` as a whole word.
pub fn cpuinfo_has_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .any(|w| w == "vmx" || w == "svm")
}

fn find_qemu() -> Option<PathBuf> {
    match config::var(ENV_QEMU) {
        Some(p) => Some(PathBuf::from(p)).filter(|p| p.exists()),
        None => config::which("qemu-system-x86_64"),
    }
}

/// The mode decision. Never "skip": if no mode works the answer is an error saying what to
/// install or configure.
pub fn decide(requested: Requested, probe: &Probe) -> Result<Mode> {
    let nested = || {
        if probe.qemu.is_some() {
            Ok(Mode::Nested)
        } else {
            Err(Error::setup(format!(
                "nested mode needs qemu-system-x86_64 (install it with \
                 `apt-get install qemu-system-x86`, or point {ENV_QEMU} at one); this machine \
                 has no hardware KVM usable for direct mode (vmx/svm flag: {}, kvm_pvm module: \
                 {}, /dev/kvm read-write: {})",
                probe.cpu_virt, probe.kvm_pvm, probe.kvm_rw
            )))
        }
    };
    match requested {
        Requested::Nested => nested(),
        Requested::Direct => {
            if probe.kvm_rw {
                Ok(Mode::Direct)
            } else {
                Err(Error::setup(format!(
                    "{ENV_MODE}=direct but /dev/kvm cannot be opened read-write here (load \
                     kvm_intel/kvm_amd and give this user access to /dev/kvm, or use \
                     {ENV_MODE}=nested)"
                )))
            }
        }
        Requested::Auto => {
            if probe.cpu_virt && !probe.kvm_pvm && probe.kvm_rw {
                Ok(Mode::Direct)
            } else {
                nested()
            }
        }
    }
}

static MODE: OnceLock<std::result::Result<(Mode, Option<PathBuf>), String>> = OnceLock::new();

fn resolved() -> Result<&'static (Mode, Option<PathBuf>)> {
    MODE.get_or_init(|| {
        let probe = Probe::gather();
        let requested =
            Requested::parse(config::var(ENV_MODE).as_deref()).map_err(Error::into_message)?;
        decide(requested, &probe)
            .map(|m| (m, probe.qemu.clone()))
            .map_err(Error::into_message)
    })
    .as_ref()
    .map_err(|e| Error::Earlier(e.clone()))
}

/// The mode for this process, decided once from `PMEMVMM_TESTBED` and the machine.
pub fn mode() -> Result<Mode> {
    resolved().map(|(m, _)| *m)
}

/// The QEMU binary (only meaningful in nested mode).
pub(crate) fn qemu() -> Result<PathBuf> {
    resolved()?.1.clone().ok_or_else(|| {
        Error::setup("qemu-system-x86_64 not found (apt-get install qemu-system-x86)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(cpu_virt: bool, kvm_pvm: bool, kvm_rw: bool, qemu: bool) -> Probe {
        Probe {
            cpu_virt,
            kvm_pvm,
            kvm_rw,
            qemu: qemu.then(|| PathBuf::from("/usr/bin/qemu-system-x86_64")),
        }
    }

    #[test]
    fn auto_prefers_direct_only_with_real_kvm() {
        let a = Requested::Auto;
        assert_eq!(
            decide(a, &probe(true, false, true, true)).unwrap(),
            Mode::Direct
        );
        assert_eq!(
            decide(a, &probe(true, false, true, false)).unwrap(),
            Mode::Direct
        );
        // kvm_pvm: the /dev/kvm cannot run Linux, go nested.
        assert_eq!(
            decide(a, &probe(true, true, true, true)).unwrap(),
            Mode::Nested
        );
        assert_eq!(
            decide(a, &probe(false, true, true, true)).unwrap(),
            Mode::Nested
        );
        assert_eq!(
            decide(a, &probe(true, false, false, true)).unwrap(),
            Mode::Nested
        );
    }

    #[test]
    fn missing_qemu_fails_with_install_hint() {
        let e = decide(Requested::Auto, &probe(false, true, true, false)).unwrap_err();
        assert!(
            e.to_string().contains("apt-get install qemu-system-x86"),
            "{e}"
        );
        let e = decide(Requested::Nested, &probe(true, false, true, false)).unwrap_err();
        assert!(
            e.to_string().contains("apt-get install qemu-system-x86"),
            "{e}"
        );
    }

    #[test]
    fn forced_direct_needs_dev_kvm() {
        assert_eq!(
            decide(Requested::Direct, &probe(false, true, true, false)).unwrap(),
            Mode::Direct
        );
        let e = decide(Requested::Direct, &probe(true, false, false, true)).unwrap_err();
        assert!(e.to_string().contains("/dev/kvm"), "{e}");
    }

    #[test]
    fn parse_requested() {
        assert_eq!(Requested::parse(None).unwrap(), Requested::Auto);
        assert_eq!(Requested::parse(Some("")).unwrap(), Requested::Auto);
        assert_eq!(Requested::parse(Some("nested")).unwrap(), Requested::Nested);
        assert_eq!(Requested::parse(Some("direct")).unwrap(), Requested::Direct);
        assert!(Requested::parse(Some("hw")).is_err());
    }

    #[test]
    fn cpuinfo_flags() {
        assert!(cpuinfo_has_virt(
            "processor: 0\nflags\t\t: fpu vme svm lm\n"
        ));
        assert!(cpuinfo_has_virt("flags : fpu vmx\n"));
        assert!(!cpuinfo_has_virt("flags : fpu svmx vmxe\n"));
        assert!(!cpuinfo_has_virt("model name: svm vmx\n"));
    }
}
