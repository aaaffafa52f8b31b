//! A vCPU thread (`crate::vcpu`) once the guest runs: the one thread kind a guest drives
//! directly, so the smallest list. Besides [`super::common`]: `KVM_RUN`, the registers (and
//! special registers) for the message of an internal error or a triple fault, the local APIC
//! once the guest has stopped (`crate::irq_report`), and `msync` for an NFIT flush hint (the
//! group commit runs the host flush on one of the waiting vCPUs). Console output, the COM1 irqfd and stop requests are
//! writes (common).

use super::ioctls::{KVM_GET_LAPIC, KVM_GET_REGS, KVM_GET_SREGS, KVM_RUN};
use super::{Allow, List};

pub const LIST: List = List {
    name: "vCPU",
    allow: &[
        Allow::ioctl(&[KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS, KVM_GET_LAPIC]),
        // devices::flush_hint: a guest flush becomes an msync of the DIMM's mapping.
        Allow::any(libc::SYS_msync),
        // devices::pmem::labels: the `_DSM` mailbox reads and writes a file's or block device's
        // label area with pread/pwrite (a store into a hole could SIGBUS the monitor).
        Allow::any(libc::SYS_pread64),
        Allow::any(libc::SYS_pwrite64),
    ],
};
