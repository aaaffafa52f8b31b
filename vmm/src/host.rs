//! What the monitor needs to know about the host, read once from /proc and /sys
//! ([`HostInfo`]): can this host's KVM run a stock Linux guest (answered before any KVM object
//! exists, so the user gets one sentence instead of a KVM internal error much later), and how
//! far the guest's CPUs can address.

use std::path::Path;
use std::sync::OnceLock;

/// Facts about the host, from `/proc/cpuinfo` and `/sys/module`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// The CPU flags include `vmx` or `svm` (Intel VT-x, AMD-V).
    pub virtualization: bool,
    /// `kvm_pvm` provides `/dev/kvm`.
    pub pvm_loaded: bool,
    /// The CPU's physical address width (`address sizes` in /proc/cpuinfo), when reported.
    pub phys_bits: Option<u32>,
}

impl HostInfo {
    /// This host, read on first use and kept for the life of the process.
    pub fn get() -> &'static HostInfo {
        static INFO: OnceLock<HostInfo> = OnceLock::new();
        INFO.get_or_init(|| {
            let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
            HostInfo::parse(&cpuinfo, Path::new("/sys/module/kvm_pvm").exists())
        })
    }

    /// The facts in a `/proc/cpuinfo` text (pure, for tests).
    pub fn parse(cpuinfo: &str, pvm_loaded: bool) -> HostInfo {
        let virtualization = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        let phys_bits = cpuinfo
            .lines()
            .find(|l| l.starts_with("address sizes"))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|b| (32..=52).contains(b));
        HostInfo {
            virtualization,
            pvm_loaded,
            phys_bits,
        }
    }

    /// Why KVM here cannot run a stock guest, if it cannot.
    pub fn check_kvm(&self) -> Result<(), HostUnsuitable> {
        if self.pvm_loaded && !self.virtualization {
            return Err(HostUnsuitable::PvmWithoutVirtualization);
        }
        Ok(())
    }

    /// The first guest physical address the guest's CPUs cannot address: KVM gives guests the
    /// host's physical address width (36 bits when /proc/cpuinfo does not say).
    pub fn guest_phys_limit(&self) -> u64 {
        1u64 << self.phys_bits.unwrap_or(36)
    }
}

/// Why this host's KVM cannot run a stock Linux guest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostUnsuitable {
    #[error(
        "this host's /dev/kvm comes from kvm_pvm on a CPU without VMX or SVM, which runs only \
         PVM-aware kernels and cannot boot a stock Linux guest; run vmm on a host with \
         hardware virtualization or inside the nested testbed (see the README)"
    )]
    PvmWithoutVirtualization,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_without_vmx_is_refused() {
        let plain = "processor\t: 0\nflags\t\t: fpu sse2 avx\n";
        let intel = "processor\t: 0\nflags\t\t: fpu vmx sse2\n";
        let amd = "flags\t: fpu svm\n";
        assert!(HostInfo::parse(plain, true).check_kvm().is_err());
        assert!(HostInfo::parse(plain, false).check_kvm().is_ok());
        assert!(HostInfo::parse(intel, true).check_kvm().is_ok());
        assert!(HostInfo::parse(amd, true).check_kvm().is_ok());
        assert!(!HostInfo::parse(plain, true)
            .check_kvm()
            .unwrap_err()
            .to_string()
            .contains('\n'));
    }

    #[test]
    fn phys_limit_from_cpuinfo() {
        let c = "address sizes\t: 40 bits physical, 48 bits virtual\n";
        assert_eq!(HostInfo::parse(c, false).guest_phys_limit(), 1 << 40);
        assert_eq!(
            HostInfo::parse("nothing", false).guest_phys_limit(),
            1 << 36
        );
    }
}
