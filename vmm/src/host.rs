//! Can this host's KVM run a stock Linux guest? Answered from /proc and /sys before any KVM
//! object exists, so the user gets one sentence instead of a KVM internal error much later.

use std::path::Path;

/// The CPU flags that mean hardware virtualization (Intel VT-x, AMD-V).
fn cpu_has_virtualization(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
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

/// Explains why KVM here cannot run a stock guest, or None when it should work.
pub fn kvm_unsuitable_reason(cpuinfo: &str, pvm_loaded: bool) -> Option<HostUnsuitable> {
    if pvm_loaded && !cpu_has_virtualization(cpuinfo) {
        return Some(HostUnsuitable::PvmWithoutVirtualization);
    }
    None
}

pub fn check_host() -> Result<(), HostUnsuitable> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    match kvm_unsuitable_reason(&cpuinfo, Path::new("/sys/module/kvm_pvm").exists()) {
        Some(reason) => Err(reason),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_without_vmx_is_refused() {
        let plain = "processor\t: 0\nflags\t\t: fpu sse2 avx\n";
        let intel = "processor\t: 0\nflags\t\t: fpu vmx sse2\n";
        let amd = "flags\t: fpu svm\n";
        assert!(kvm_unsuitable_reason(plain, true).is_some());
        assert!(kvm_unsuitable_reason(plain, false).is_none());
        assert!(kvm_unsuitable_reason(intel, true).is_none());
        assert!(kvm_unsuitable_reason(amd, true).is_none());
        assert!(!kvm_unsuitable_reason(plain, true)
            .unwrap()
            .to_string()
            .contains('\n'));
    }
}
