//! The API-mode VM lifecycle on the main thread (`serve_api`): waiting for commands (`poll` on
//! the commands' eventfd and the stop signals' signalfd, `rt_sigtimedwait` for a pending stop
//! signal), `vm.create` (the whole check phase: open the kernel, initramfs and outputs, read
//! `/proc/cpuinfo`, open `/dev/kvm` and ask what it supports), `vm.boot` (create the VM, its
//! memory slots, irqchip, PIT, vCPUs and their registers, the eventfds, irqfds, signalfd and
//! epoll of the run, the vCPU kick handler; start the vCPU threads), and `vm.delete`
//! (close and unmap). The hot-add and event-loop lists come with it.
//!
//! A thread started from here runs under this filter until it installs its own, so this list
//! also allows what a new thread does first (glibc's and Rust's thread start-up) and, because
//! filters stack, everything a vCPU thread does afterwards: a call must pass every filter of the
//! thread.

use super::ioctls::*;
use super::{Allow, List};

/// `prctl` options (linux/prctl.h): a new thread names itself, and sets no-new-privileges
/// before it adds its own filter (seccompiler's `apply_filter`).
const PR_SET_NAME: u64 = 15;
const PR_SET_NO_NEW_PRIVS: u64 = 38;
/// `seccomp` operation (linux/seccomp.h) a vCPU thread uses to add its filter: a filter can
/// only take permissions away, never give any back.
const SECCOMP_SET_MODE_FILTER: u64 = 1;

pub const LIST: List = List {
    name: "VM lifecycle",
    allow: &[
        Allow::any(libc::SYS_poll),
        Allow::any(libc::SYS_ppoll),
        Allow::any(libc::SYS_rt_sigtimedwait),
        Allow::any(libc::SYS_eventfd2),
        Allow::any(libc::SYS_signalfd4),
        Allow::any(libc::SYS_epoll_create1),
        // The vCPU kick handler (SIGRTMIN), installed at each boot.
        Allow::any(libc::SYS_rt_sigaction),
        // vCPU threads: created, then their start-up under this filter. glibc creates threads
        // with clone3 (Linux 5.3 and later); the older clone, which a fork also uses, is not
        // allowed. (A filter cannot see clone3's flags: they are in memory.)
        Allow::any(libc::SYS_clone3),
        Allow::any(libc::SYS_set_robust_list),
        Allow::any(libc::SYS_rseq),
        Allow::any(libc::SYS_sched_getaffinity),
        Allow::only(libc::SYS_prctl, 0, &[PR_SET_NAME, PR_SET_NO_NEW_PRIVS]),
        Allow::only(libc::SYS_seccomp, 0, &[SECCOMP_SET_MODE_FILTER]),
        Allow::ioctl(&[
            KVM_CREATE_VM,
            KVM_CHECK_EXTENSION,
            KVM_GET_VCPU_MMAP_SIZE,
            KVM_GET_SUPPORTED_CPUID,
            KVM_CREATE_VCPU,
            KVM_SET_TSS_ADDR,
            KVM_SET_IDENTITY_MAP_ADDR,
            KVM_CREATE_IRQCHIP,
            KVM_IRQFD,
            KVM_CREATE_PIT2,
            KVM_SET_REGS,
            KVM_GET_SREGS,
            KVM_SET_SREGS,
            KVM_SET_MSRS,
            KVM_GET_LAPIC,
            KVM_SET_LAPIC,
            KVM_SET_FPU,
            KVM_SET_CPUID2,
            KVM_GET_TSC_KHZ,
            KVM_SET_XCRS,
            // The VM's statistics descriptor (`crate::kvm_stats`), opened with the VM.
            KVM_GET_STATS_FD,
        ]),
    ],
};
