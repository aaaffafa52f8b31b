//! Seccomp filters, one per thread kind, built with `seccompiler` (rust-vmm) and installed before
//! the guest runs its first instruction (see `run_with_pmem`): every vCPU thread installs
//! [`ThreadKind::Vcpu`]'s filter and then waits at a gate that the main thread opens only after
//! it installed [`ThreadKind::Main`]'s (the main thread is the event loop). Filters are per
//! thread, not inherited: vCPU threads are started before the main thread installs its own.
//!
//! The allow lists are what these threads do once the guest runs (traced with `strace -f` in
//! the nested testbed, see README): the main thread serves the event loop (epoll, signalfd and
//! eventfd reads, console input and output), kicks and joins vCPU threads, restores the
//! terminal and flushes and unmaps pmem on the way out; a vCPU thread runs `KVM_RUN`, writes
//! the console and the COM1 irqfd, `msync`s pmem for a flush hint and logs. Both allocate.
//! `--seccomp log` allows what the list does not but has the host kernel log it (the kernel
//! needs `CONFIG_AUDIT` for the log line); `--seccomp false` installs nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use thiserror::Error;

/// `--seccomp`: cloud-hypervisor's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompMode {
    /// Filters on; a system call outside the list kills the monitor (SIGSYS).
    On,
    /// No filters. The default until the allow lists cover the API thread and hot-add.
    #[default]
    Off,
    /// Filters on; a system call outside the list is allowed and logged by the host kernel.
    Log,
}

impl FromStr for SeccompMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "true" => Ok(SeccompMode::On),
            "false" => Ok(SeccompMode::Off),
            "log" => Ok(SeccompMode::Log),
            _ => Err(format!("{s:?}: expected true, false or log")),
        }
    }
}

impl fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SeccompMode::On => "true",
            SeccompMode::Off => "false",
            SeccompMode::Log => "log",
        })
    }
}

/// The kinds of thread the monitor runs while the guest runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: event loop, shutdown.
    Main,
    /// A vCPU thread.
    Vcpu,
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vCPU",
        })
    }
}

#[derive(Debug, Error)]
pub enum SeccompError {
    #[error("building the {kind} thread's seccomp filter: {detail}")]
    Build { kind: ThreadKind, detail: String },
    #[error("installing the {kind} thread's seccomp filter: {detail}")]
    Apply { kind: ThreadKind, detail: String },
}

// ioctl requests the threads make once the guest runs (asm-generic/ioctls.h and linux/kvm.h).
const TCGETS: u64 = 0x5401;
const TCSETS: u64 = 0x5402;
const TCSETSW: u64 = 0x5403;
const TCSETSF: u64 = 0x5404;
const TIOCGWINSZ: u64 = 0x5413;
const FIONBIO: u64 = 0x5421;
/// _IO(KVMIO, 0x80)
const KVM_RUN: u64 = 0xae80;
/// _IOR(KVMIO, 0x81, struct kvm_regs)
const KVM_GET_REGS: u64 = 0x8090_ae81;

/// System calls every thread kind makes: memory allocation, locks, signals (the vCPU kick and
/// its return), time, logging, thread exit, and what a panic needs to report and abort.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_futex,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_sched_yield,
    libc::SYS_getrandom,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    libc::SYS_msync,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_restart_syscall,
];

/// The main thread besides [`COMMON`]: the event loop and console.
const MAIN: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_fcntl,
    libc::SYS_lseek,
];

fn ioctl_rule(request: u64) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        1,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        request,
    )?])
}

/// The allow list of `kind` as syscall number → rules (an empty rule list allows any
/// arguments).
fn rules(kind: ThreadKind) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut map: BTreeMap<i64, Vec<SeccompRule>> =
        COMMON.iter().map(|&nr| (nr, Vec::new())).collect();
    let ioctls: &[u64] = match kind {
        ThreadKind::Main => {
            map.extend(MAIN.iter().map(|&nr| (nr, Vec::new())));
            &[TCGETS, TCSETS, TCSETSW, TCSETSF, TIOCGWINSZ, FIONBIO]
        }
        ThreadKind::Vcpu => &[KVM_RUN, KVM_GET_REGS],
    };
    map.insert(
        libc::SYS_ioctl,
        ioctls
            .iter()
            .map(|&r| ioctl_rule(r))
            .collect::<Result<_, _>>()?,
    );
    Ok(map)
}

/// The compiled filter for `kind` under `mode`; None for `--seccomp false`.
pub fn filter(kind: ThreadKind, mode: SeccompMode) -> Result<Option<BpfProgram>, SeccompError> {
    let mismatch = match mode {
        SeccompMode::Off => return Ok(None),
        SeccompMode::On => SeccompAction::KillProcess,
        SeccompMode::Log => SeccompAction::Log,
    };
    let build = |detail: String| SeccompError::Build { kind, detail };
    let rules = rules(kind).map_err(|e| build(e.to_string()))?;
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|e| build(e.to_string()))?;
    let program: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| build(e.to_string()))?;
    Ok(Some(program))
}

/// Installs `program` (from [`filter`]) on the calling thread.
pub fn apply(kind: ThreadKind, program: Option<&BpfProgram>) -> Result<(), SeccompError> {
    match program {
        Some(p) => seccompiler::apply_filter(p).map_err(|e| SeccompError::Apply {
            kind,
            detail: e.to_string(),
        }),
        None => Ok(()),
    }
}

/// Which thread `--seccomp-selftest` makes misbehave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelftestThread {
    Main,
    Vcpu,
}

impl FromStr for SelftestThread {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "main" => Ok(SelftestThread::Main),
            "vcpu" => Ok(SelftestThread::Vcpu),
            _ => Err(format!("{s:?}: expected main or vcpu")),
        }
    }
}

/// `--seccomp-selftest THREAD`: a hidden test hook, not in `--help`. After the filters are in
/// place, the named thread makes a system call no filter allows (`getppid`), which must kill
/// the monitor with SIGSYS; `tests/tests/seccomp.rs` checks that it does. A guest cannot reach
/// it: only the command line sets it.
pub fn selftest_violation() {
    // SAFETY: getppid takes no arguments, touches no memory and cannot fail.
    unsafe {
        libc::syscall(libc::SYS_getppid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_as_cloud_hypervisor_spells_them() {
        assert_eq!("true".parse(), Ok(SeccompMode::On));
        assert_eq!("false".parse(), Ok(SeccompMode::Off));
        assert_eq!("log".parse(), Ok(SeccompMode::Log));
        let e = "on".parse::<SeccompMode>().unwrap_err();
        assert!(e.contains("\"on\""), "{e}");
        assert_eq!(SeccompMode::default(), SeccompMode::Off);
        for m in [SeccompMode::On, SeccompMode::Off, SeccompMode::Log] {
            assert_eq!(m.to_string().parse(), Ok(m));
        }
    }

    #[test]
    fn command_line_default_is_off_and_bad_values_are_refused() {
        use clap::Parser;
        let parse = |extra: &[&str]| {
            let mut args = vec!["vmm", "--kernel", "k"];
            args.extend_from_slice(extra);
            crate::config::Cli::try_parse_from(args)
        };
        assert_eq!(parse(&[]).unwrap().seccomp, SeccompMode::Off);
        assert_eq!(
            parse(&["--seccomp", "log"]).unwrap().seccomp,
            SeccompMode::Log
        );
        assert_eq!(
            parse(&["--seccomp", "false"]).unwrap().seccomp,
            SeccompMode::Off
        );
        let e = parse(&["--seccomp", "maybe"]).unwrap_err().to_string();
        assert!(
            e.contains("maybe") && e.contains("true, false or log"),
            "{e}"
        );
        assert_eq!(
            parse(&["--seccomp-selftest", "vcpu"])
                .unwrap()
                .seccomp_selftest,
            Some(SelftestThread::Vcpu)
        );
        assert!(parse(&["--seccomp-selftest", "io"]).is_err());
    }

    #[test]
    fn filters_compile_for_every_kind() {
        for kind in [ThreadKind::Main, ThreadKind::Vcpu] {
            assert!(filter(kind, SeccompMode::Off).unwrap().is_none());
            for mode in [SeccompMode::On, SeccompMode::Log] {
                let p = filter(kind, mode).unwrap().expect("a program");
                assert!(
                    !p.is_empty() && p.len() < 4096,
                    "{kind} {mode}: {}",
                    p.len()
                );
            }
        }
    }

    #[test]
    fn lists_differ_by_kind() {
        let main = rules(ThreadKind::Main).unwrap();
        let vcpu = rules(ThreadKind::Vcpu).unwrap();
        assert!(main.contains_key(&libc::SYS_epoll_wait));
        assert!(!vcpu.contains_key(&libc::SYS_epoll_wait));
        assert_eq!(vcpu[&libc::SYS_ioctl].len(), 2);
        for forbidden in [
            libc::SYS_getppid,
            libc::SYS_execve,
            libc::SYS_openat,
            libc::SYS_socket,
            libc::SYS_ptrace,
            libc::SYS_clone,
        ] {
            assert!(!main.contains_key(&forbidden) && !vcpu.contains_key(&forbidden));
        }
    }

    /// A forbidden call in a child thread under `--seccomp log`'s action is allowed; with the
    /// kill action it is checked by the integration test (it would kill this test process).
    #[test]
    fn log_mode_lets_a_forbidden_call_through() {
        let program = filter(ThreadKind::Vcpu, SeccompMode::Log).unwrap();
        let pid = std::thread::spawn(move || {
            apply(ThreadKind::Vcpu, program.as_ref()).unwrap();
            // SAFETY: getppid takes no arguments and cannot fail.
            unsafe { libc::syscall(libc::SYS_getppid) }
        })
        .join()
        .unwrap();
        assert!(pid > 0);
    }
}
