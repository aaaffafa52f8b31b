//! The monitor's seccomp sandbox: one filter per thread kind, built with `seccompiler`
//! (rust-vmm) from the allow lists in this folder, installed by each thread before it serves the
//! guest or a client, and on by default (`--seccomp true`, cloud-hypervisor's option and
//! default). A system call outside the calling thread's list kills the whole monitor (SIGSYS);
//! `--seccomp log` allows it and has the host kernel log it (audit: the kernel needs
//! `CONFIG_AUDIT`); `--seccomp false` installs nothing.
//!
//! The lists (one module each, composed per [`ThreadKind`]):
//!
//! | list | what for |
//! | --- | --- |
//! | [`common`] | what every thread does: allocate, lock, sleep, log, exit, panic |
//! | [`vcpu`] | `KVM_RUN` and a flush hint's `msync` |
//! | [`api`] | accept, read and answer one connection at a time |
//! | [`event_loop`] | the main thread while a guest runs, and its way out |
//! | [`fault_probe`] | the main thread finding out which backing failed under the guest, and why |
//! | [`hot_add`] | `vm.add-pmem`: open, check, format and map a backing, add a KVM slot |
//! | [`kvm_stats`] | reading KVM's VM statistics (`vm.counters`, the exit log) |
//! | [`lifecycle`] | API mode's `vm.create`, `vm.boot`, reboot, `vm.delete`, and new threads |
//!
//! Filters are per thread and stack: a thread starts under the filter of the thread that spawned
//! it (if any) and may add its own; a call must pass all of them. So every thread that spawns
//! others after installing its filter ([`ThreadKind::Vmm`], the main thread in API mode, which
//! starts the vCPUs at each `vm.boot`) allows what they do; the others are spawned first.
//!
//! The lists were traced (`strace -f` of every mode in the nested testbed: command line, API
//! with create, boot, add-pmem, info, counters, power button, reboot, shutdown, delete, a second
//! create and boot, vmm.shutdown), then read against the code for the branches a trace does not
//! take (block and device-dax backings, failures and their clean-up). `ioctl` is allowed only
//! for the request numbers a list names ([`ioctls`]), `prctl` and `setsockopt` only for the
//! options named.

mod api;
mod common;
mod event_loop;
mod fault_probe;
mod hot_add;
pub(crate) mod ioctls;
mod kvm_stats;
mod lifecycle;
mod vcpu;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use thiserror::Error;

/// `--seccomp`: cloud-hypervisor's values and default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompMode {
    /// Filters on; a system call outside the list kills the monitor (SIGSYS).
    #[default]
    On,
    /// No filters.
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

/// The kinds of thread the monitor runs, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread of a command-line VM without the API, once the guest runs: the event
    /// loop and the way out.
    Main,
    /// The main thread of a command-line VM with `--api-socket`: also `vm.add-pmem`.
    MainWithApi,
    /// The main thread in API mode (no `--kernel`), from the moment the API thread runs: every
    /// `vm.create`, `vm.boot` (and reboot), `vm.delete`, hot-add, and the vCPU threads it starts.
    Vmm,
    /// A vCPU thread.
    Vcpu,
    /// The API thread.
    Api,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 5] = [
        ThreadKind::Main,
        ThreadKind::MainWithApi,
        ThreadKind::Vmm,
        ThreadKind::Vcpu,
        ThreadKind::Api,
    ];

    /// The lists this kind's filter allows.
    fn lists(self) -> &'static [List] {
        match self {
            ThreadKind::Main => &[
                common::LIST,
                event_loop::LIST,
                fault_probe::LIST,
                kvm_stats::LIST,
            ],
            ThreadKind::MainWithApi => &[
                common::LIST,
                event_loop::LIST,
                fault_probe::LIST,
                hot_add::LIST,
                kvm_stats::LIST,
            ],
            ThreadKind::Vmm => &[
                common::LIST,
                event_loop::LIST,
                kvm_stats::LIST,
                fault_probe::LIST,
                hot_add::LIST,
                lifecycle::LIST,
                // The vCPU threads it starts stay under this filter (filters stack).
                vcpu::LIST,
            ],
            ThreadKind::Vcpu => &[common::LIST, vcpu::LIST],
            ThreadKind::Api => &[common::LIST, api::LIST, kvm_stats::LIST],
        }
    }
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ThreadKind::Main => "main",
            ThreadKind::MainWithApi => "main (with the API)",
            ThreadKind::Vmm => "main (API mode)",
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::Api => "API",
        })
    }
}

/// One allowed system call: with any arguments, or only with argument `arg` equal to one of
/// `values` (compared as 32 bits: ioctl requests, `prctl` and `setsockopt` options are ints).
#[derive(Debug, Clone, Copy)]
struct Allow {
    nr: i64,
    only: Option<(u8, &'static [u64])>,
}

impl Allow {
    const fn any(nr: i64) -> Allow {
        Allow { nr, only: None }
    }
    const fn only(nr: i64, arg: u8, values: &'static [u64]) -> Allow {
        Allow {
            nr,
            only: Some((arg, values)),
        }
    }
    /// `ioctl` with one of these requests (its second argument).
    const fn ioctl(requests: &'static [u64]) -> Allow {
        Allow::only(libc::SYS_ioctl, 1, requests)
    }
}

/// A named allow list (one module of this folder).
#[derive(Debug, Clone, Copy)]
struct List {
    name: &'static str,
    allow: &'static [Allow],
}

/// What a kind allows per system call: any arguments (None), or the allowed values of one
/// argument.
type Allowed = BTreeMap<i64, Option<(u8, BTreeSet<u64>)>>;

/// The union of `kind`'s lists. Two lists restricting the same call must restrict the same
/// argument (a test checks the lists); "any arguments" wins over a restriction.
fn allowed(kind: ThreadKind) -> Allowed {
    let mut map: Allowed = BTreeMap::new();
    for list in kind.lists() {
        for a in list.allow {
            match (a.only, map.get_mut(&a.nr)) {
                (None, _) => {
                    map.insert(a.nr, None);
                }
                (Some(_), Some(None)) => {}
                (Some((arg, values)), Some(Some((have_arg, have)))) => {
                    debug_assert_eq!(arg, *have_arg, "{}: syscall {}", list.name, a.nr);
                    have.extend(values.iter().copied());
                }
                (Some((arg, values)), None) => {
                    map.insert(a.nr, Some((arg, values.iter().copied().collect())));
                }
            }
        }
    }
    map
}

#[derive(Debug, Error)]
pub enum SeccompError {
    #[error("building the {kind} thread's seccomp filter: {detail}")]
    Build { kind: ThreadKind, detail: String },
    #[error("installing the {kind} thread's seccomp filter: {detail}")]
    Apply { kind: ThreadKind, detail: String },
}

/// `kind`'s allow list as seccompiler rules: syscall number → rules (an empty rule list allows
/// any arguments; otherwise one rule per allowed value).
fn rules(kind: ThreadKind) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    allowed(kind)
        .into_iter()
        .map(|(nr, only)| {
            let rules = match only {
                None => Vec::new(),
                Some((arg, values)) => values
                    .into_iter()
                    .map(|v| {
                        SeccompRule::new(vec![SeccompCondition::new(
                            arg,
                            SeccompCmpArgLen::Dword,
                            SeccompCmpOp::Eq,
                            v,
                        )?])
                    })
                    .collect::<Result<_, _>>()?,
            };
            Ok((nr, rules))
        })
        .collect()
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

/// The monitor's sandbox settings (`--seccomp`, `--seccomp-selftest`): a property of the
/// monitor, not of a VM (the API's `vm.create` cannot change them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sandbox {
    pub mode: SeccompMode,
    pub selftest: Option<SelftestThread>,
}

impl Sandbox {
    /// Builds and installs `kind`'s filter on the calling thread.
    pub fn install(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        apply(kind, filter(kind, self.mode)?.as_ref())
    }

    /// The `--seccomp-selftest` hook: when `thread` is the one named, make the forbidden call.
    pub fn selftest(&self, thread: SelftestThread) {
        if self.selftest == Some(thread) {
            selftest_violation();
        }
    }
}

/// Which thread `--seccomp-selftest` makes misbehave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelftestThread {
    Main,
    Vcpu,
    Api,
}

impl FromStr for SelftestThread {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "main" => Ok(SelftestThread::Main),
            "vcpu" => Ok(SelftestThread::Vcpu),
            "api" => Ok(SelftestThread::Api),
            _ => Err(format!("{s:?}: expected main, vcpu or api")),
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
        assert_eq!(SeccompMode::default(), SeccompMode::On);
        for m in [SeccompMode::On, SeccompMode::Off, SeccompMode::Log] {
            assert_eq!(m.to_string().parse(), Ok(m));
        }
    }

    #[test]
    fn command_line_default_is_on_and_bad_values_are_refused() {
        use clap::Parser;
        let parse = |extra: &[&str]| {
            let mut args = vec!["vmm", "--kernel", "k"];
            args.extend_from_slice(extra);
            crate::config::Cli::try_parse_from(args)
        };
        assert_eq!(parse(&[]).unwrap().seccomp, SeccompMode::On);
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
        for (text, thread) in [
            ("vcpu", SelftestThread::Vcpu),
            ("main", SelftestThread::Main),
            ("api", SelftestThread::Api),
        ] {
            assert_eq!(
                parse(&["--seccomp-selftest", text])
                    .unwrap()
                    .seccomp_selftest,
                Some(thread)
            );
        }
        assert!(parse(&["--seccomp-selftest", "io"]).is_err());
    }

    #[test]
    fn filters_compile_for_every_kind() {
        for kind in ThreadKind::ALL {
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

    /// Does `kind` allow `nr` with `value` as its restricted argument (None: any)?
    fn allows(kind: ThreadKind, nr: i64, value: Option<u64>) -> bool {
        match (allowed(kind).get(&nr), value) {
            (None, _) => false,
            (Some(None), _) => true,
            (Some(Some(_)), None) => false,
            (Some(Some((_, values))), Some(v)) => values.contains(&v),
        }
    }

    #[test]
    fn lists_differ_by_kind() {
        use ioctls::*;
        use ThreadKind::*;
        // Only the event loops and API mode's main thread wait on epoll.
        for k in [Main, MainWithApi, Vmm] {
            assert!(allows(k, libc::SYS_epoll_wait, None), "{k}");
        }
        assert!(!allows(Vcpu, libc::SYS_epoll_wait, None));
        assert!(!allows(Api, libc::SYS_epoll_wait, None));
        // Only the API thread accepts connections.
        assert!(allows(Api, libc::SYS_accept4, None));
        for k in [Main, MainWithApi, Vmm, Vcpu] {
            assert!(!allows(k, libc::SYS_accept4, None), "{k}");
        }
        // Opening files: hot-add and API mode's lifecycle only.
        assert!(allows(MainWithApi, libc::SYS_openat, None));
        assert!(allows(Vmm, libc::SYS_openat, None));
        for k in [Main, Vcpu, Api] {
            assert!(!allows(k, libc::SYS_openat, None), "{k}");
        }
        // A vCPU runs and reads registers; it cannot add memory or create VMs.
        assert!(allows(Vcpu, libc::SYS_ioctl, Some(KVM_RUN)));
        assert!(!allows(
            Vcpu,
            libc::SYS_ioctl,
            Some(KVM_SET_USER_MEMORY_REGION)
        ));
        assert!(!allows(Vcpu, libc::SYS_ioctl, Some(KVM_CREATE_VM)));
        assert!(!allows(Vcpu, libc::SYS_ioctl, None));
        // The console-stall warning (crate::irq_report) at a stop: each vCPU reads its local
        // APIC, the main thread the I/O APIC; only a main thread reads the I/O APIC.
        assert!(allows(Vcpu, libc::SYS_ioctl, Some(KVM_GET_LAPIC)));
        for k in [Main, MainWithApi, Vmm] {
            assert!(allows(k, libc::SYS_ioctl, Some(KVM_GET_IRQCHIP)), "{k}");
        }
        assert!(!allows(Vcpu, libc::SYS_ioctl, Some(KVM_GET_IRQCHIP)));
        assert!(!allows(Api, libc::SYS_ioctl, Some(KVM_GET_IRQCHIP)));
        assert!(allows(
            MainWithApi,
            libc::SYS_ioctl,
            Some(KVM_SET_USER_MEMORY_REGION)
        ));
        assert!(!allows(MainWithApi, libc::SYS_ioctl, Some(KVM_CREATE_VM)));
        assert!(allows(Vmm, libc::SYS_ioctl, Some(KVM_CREATE_VM)));
        // Only API mode's main thread creates threads (and lets them add their filter); nobody
        // forks, execs or traces.
        assert!(allows(Vmm, libc::SYS_seccomp, Some(1)));
        assert!(!allows(Vmm, libc::SYS_seccomp, Some(2)));
        assert!(allows(Vmm, libc::SYS_clone3, None));
        for k in ThreadKind::ALL {
            if k != Vmm {
                assert!(!allows(k, libc::SYS_clone3, None), "{k}");
            }
            assert!(!allows(k, libc::SYS_clone, None), "{k}");
            for forbidden in [
                libc::SYS_getppid,
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_fork,
                libc::SYS_vfork,
                libc::SYS_socket,
                libc::SYS_connect,
                libc::SYS_ptrace,
                libc::SYS_process_vm_writev,
                libc::SYS_kill,
                libc::SYS_mount,
                libc::SYS_setuid,
            ] {
                assert!(!allows(k, forbidden, None), "{k}: {forbidden}");
            }
            // prctl: naming a thread at most.
            assert!(!allows(
                k,
                libc::SYS_prctl,
                Some(libc::PR_SET_SECCOMP as u64)
            ));
        }
    }

    /// Filters stack: a vCPU thread that API mode's main thread starts keeps the main thread's
    /// filter, so that filter must allow everything a vCPU thread may do.
    #[test]
    fn api_mode_main_thread_allows_what_its_vcpu_threads_do() {
        let vmm = allowed(ThreadKind::Vmm);
        for (nr, only) in allowed(ThreadKind::Vcpu) {
            match (only, vmm.get(&nr)) {
                (_, Some(None)) => {}
                (Some((arg, values)), Some(Some((vmm_arg, vmm_values)))) => {
                    assert_eq!(arg, *vmm_arg, "syscall {nr}");
                    assert!(values.is_subset(vmm_values), "syscall {nr}: {values:?}");
                }
                (only, got) => panic!("syscall {nr}: vCPU {only:?}, API-mode main {got:?}"),
            }
        }
    }

    /// API mode's stacking, with the kill action: a thread under `ThreadKind::Vmm`'s filter
    /// starts a thread that adds the vCPU filter (prctl, seccomp) and does what every thread
    /// does; a missing call kills this test process.
    #[test]
    fn a_vcpu_thread_adds_its_filter_under_the_api_mode_filter() {
        let vmm = filter(ThreadKind::Vmm, SeccompMode::On).unwrap();
        let vcpu = filter(ThreadKind::Vcpu, SeccompMode::On).unwrap();
        let n = std::thread::spawn(move || {
            apply(ThreadKind::Vmm, vmm.as_ref()).unwrap();
            std::thread::Builder::new()
                .name("vcpu0".into())
                .spawn(move || {
                    apply(ThreadKind::Vcpu, vcpu.as_ref()).unwrap();
                    let v: Vec<u64> = (0..100_000).collect();
                    v.len()
                })
                .unwrap()
                .join()
                .unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(n, 100_000);
    }

    /// Lists that restrict the same call restrict the same argument.
    #[test]
    fn restrictions_agree_on_the_argument() {
        let lists = [
            common::LIST,
            vcpu::LIST,
            api::LIST,
            event_loop::LIST,
            hot_add::LIST,
            lifecycle::LIST,
        ];
        let mut arg_of: BTreeMap<i64, u8> = BTreeMap::new();
        for list in lists {
            for a in list.allow {
                if let Some((arg, values)) = a.only {
                    assert!(!values.is_empty(), "{}: {}", list.name, a.nr);
                    assert_eq!(*arg_of.entry(a.nr).or_insert(arg), arg, "{}", list.name);
                }
            }
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

    /// Each kind's filter, installed with the kill action in a thread, lets that thread do
    /// what every thread does (allocate, lock, log, exit): no kind is missing a basic call.
    #[test]
    fn every_kind_survives_the_basics() {
        for kind in ThreadKind::ALL {
            let program = filter(kind, SeccompMode::On).unwrap();
            let out = std::thread::spawn(move || {
                apply(kind, program.as_ref()).unwrap();
                let v: Vec<u64> = (0..100_000).collect();
                let m = std::sync::Mutex::new(v.len());
                let n = *m.lock().unwrap();
                eprintln!("{kind}: {n}");
                n
            })
            .join()
            .unwrap();
            assert_eq!(out, 100_000);
        }
    }
}
