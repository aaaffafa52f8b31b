//! The main thread while a guest runs (`run_with_pmem`'s loop): the event loop (epoll, the
//! stop signals' signalfd, eventfds, console input), then the way out: kicking and joining the
//! vCPU threads (tgkill, futex: common), restoring the terminal, flushing file and block backings
//! (`msync`) and unmapping them.

use super::ioctls::{KVM_GET_IRQCHIP, TCSETS};
use super::{Allow, List};

pub const LIST: List = List {
    name: "event loop",
    allow: &[
        Allow::any(libc::SYS_epoll_wait),
        Allow::any(libc::SYS_epoll_pwait),
        // Console input is watched and unwatched as the UART's FIFO fills and drains.
        Allow::any(libc::SYS_epoll_ctl),
        // The signalfd, eventfds and stdin.
        Allow::any(libc::SYS_read),
        // The terminal back to how it was (`terminal::RawTerminal`'s drop); the I/O APIC's COM1
        // entry, read once the guest has stopped (`crate::irq_report`).
        Allow::ioctl(&[TCSETS, KVM_GET_IRQCHIP]),
        // PmemDevices::flush on every way out.
        Allow::any(libc::SYS_msync),
    ],
};
