//! What every thread of the monitor may call: whatever thread it is, Rust and glibc allocate,
//! lock, sleep, log, handle the vCPU kick signal, exit, and on a panic report and abort.

use super::ioctls::TCGETS;
use super::{Allow, List};

pub const LIST: List = List {
    name: "common",
    allow: &[
        // Allocation (malloc's arenas and the main heap) and thread stacks going away.
        Allow::any(libc::SYS_brk),
        Allow::any(libc::SYS_mmap),
        Allow::any(libc::SYS_munmap),
        Allow::any(libc::SYS_mremap),
        Allow::any(libc::SYS_mprotect),
        Allow::any(libc::SYS_madvise),
        // Mutexes, condition variables, channels, joins.
        Allow::any(libc::SYS_futex),
        Allow::any(libc::SYS_sched_yield),
        // Signals: blocked masks, the vCPU kick handler's return, the alternate signal stack
        // Rust sets up and tears down per thread.
        Allow::any(libc::SYS_rt_sigprocmask),
        Allow::any(libc::SYS_rt_sigreturn),
        Allow::any(libc::SYS_sigaltstack),
        // Time and sleeps (the vDSO falls back to the system call on some clock sources, such
        // as a nested host's).
        Allow::any(libc::SYS_clock_gettime),
        Allow::any(libc::SYS_clock_nanosleep),
        Allow::any(libc::SYS_nanosleep),
        // Hash map seeds.
        Allow::any(libc::SYS_getrandom),
        // The log (env_logger writes stderr and asks whether it is a terminal on each line), a
        // panic's message, and an abort (raise: getpid, gettid, tgkill).
        Allow::any(libc::SYS_write),
        Allow::any(libc::SYS_writev),
        Allow::ioctl(&[TCGETS]),
        Allow::any(libc::SYS_getpid),
        Allow::any(libc::SYS_gettid),
        Allow::any(libc::SYS_tgkill),
        // Descriptors a thread owns (a vCPU's, a connection) are closed when it is done.
        Allow::any(libc::SYS_close),
        Allow::any(libc::SYS_exit),
        Allow::any(libc::SYS_exit_group),
        Allow::any(libc::SYS_restart_syscall),
    ],
};
