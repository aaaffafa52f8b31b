//! The monitor's seccomp sandbox (`--seccomp true`; off by default until the allow lists cover the
//! API thread and hot-add): every thread of a running
//! monitor is filtered (`Seccomp: 2` in /proc/PID/task/*/status), and a system call outside a
//! thread's allow list kills the whole monitor with SIGSYS. The forbidden call comes from the
//! hidden `--seccomp-selftest main|vcpu` hook (a command-line flag; a guest cannot reach it).
//! These need KVM (direct) or QEMU (nested) and fail, never skip, when neither is available.

use testbed::{boot_guest, GuestOpts, GuestRun, Result};

/// Exit status of a process killed by SIGSYS (31 on x86-64), as the host shell reports it.
const KILLED_BY_SIGSYS: i32 = 128 + 31;

/// Host commands started before the vmm: once the vmm's last vCPU thread exists, wait a second
/// (the main thread installs its filter and opens the vCPUs' start gate) and record every
/// thread's name and seccomp mode.
fn watch_threads(cpus: u32) -> String {
    format!(
        r#"(
  pid=; i=0
  while [ -z "$pid" ] && [ $i -lt 1200 ]; do
    for t in /proc/[0-9]*/task/[0-9]*; do
      [ "$(cat $t/comm 2>/dev/null)" = vcpu{last} ] && pid=$(echo $t | cut -d/ -f3)
    done
    # A monitor that already exited (a failed boot) has no threads to record: stop looking,
    # so the test fails on the vmm's exit status instead of waiting here.
    [ -z "$pid" ] && [ $i -gt 20 ] && ! pidof vmm >/dev/null && break
    i=$((i+1)); sleep 0.1
  done
  [ -n "$pid" ] || exit 0
  sleep 1
  for t in /proc/$pid/task/*; do
    echo "@@TASK $(cat $t/comm) $(grep '^Seccomp:' $t/status | tr -s ' \t' ' ')@@"
  done > /tmp/seccomp-tasks
) &
"#,
        last = cpus - 1
    )
}

fn boot(opts: GuestOpts) -> Result<GuestRun> {
    let run = boot_guest(&opts)?;
    eprintln!(
        "{} host: run {:.2?}, vmm exit {}",
        run.host.mode, run.host.duration, run.vmm_exit
    );
    Ok(run)
}

/// (thread name, seccomp mode) for every `@@TASK name Seccomp: N@@` line.
fn tasks(output: &str) -> Vec<(String, String)> {
    output
        .lines()
        .filter_map(|l| l.trim().strip_prefix("@@TASK ")?.strip_suffix("@@"))
        .map(|rest| {
            let (name, mode) = rest.split_once(' ').unwrap_or((rest, ""));
            (name.to_string(), mode.trim().to_string())
        })
        .collect()
}

#[test]
fn every_thread_of_a_running_monitor_is_filtered() -> Result<()> {
    let cpus = 2;
    let run = boot(
        GuestOpts::default()
            .with_cpus(cpus)
            .with_vmm_args(["--seccomp", "true"])
            .with_before(watch_threads(cpus))
            .with_after("wait; cat /tmp/seccomp-tasks; exit 0")
            .with_command("sleep 4"),
    )?;
    run.expect_success()?;
    let tasks = tasks(&run.host.output);
    eprintln!("threads: {tasks:?}");
    run.check(tasks.len() > cpus as usize, || {
        format!("expected the main thread and {cpus} vCPU threads, saw {tasks:?}")
    })?;
    for id in 0..cpus {
        run.check(tasks.iter().any(|(n, _)| *n == format!("vcpu{id}")), || {
            format!("no vcpu{id} thread among {tasks:?}")
        })?;
    }
    let unfiltered: Vec<_> = tasks.iter().filter(|(_, m)| m != "Seccomp: 2").collect();
    run.check(unfiltered.is_empty(), || {
        format!("threads without a seccomp filter: {unfiltered:?}")
    })
}

#[test]
fn seccomp_false_leaves_threads_unfiltered() -> Result<()> {
    let run = boot(
        GuestOpts::default()
            .with_vmm_args(["--seccomp", "false"])
            .with_before(watch_threads(1))
            .with_after("wait; cat /tmp/seccomp-tasks; exit 0")
            .with_command("sleep 3"),
    )?;
    run.expect_success()?;
    let tasks = tasks(&run.host.output);
    run.check(
        tasks.len() >= 2 && tasks.iter().all(|(_, m)| m == "Seccomp: 0"),
        || format!("with --seccomp false expected unfiltered threads, saw {tasks:?}"),
    )
}

fn expect_killed(thread: &str) -> Result<()> {
    let run = boot(
        GuestOpts::default()
            .with_vmm_args(["--seccomp", "true", "--seccomp-selftest", thread])
            .with_command("sleep 3"),
    )?;
    run.check(run.vmm_exit == KILLED_BY_SIGSYS, || {
        format!(
            "--seccomp-selftest {thread}: vmm exited {}, expected {KILLED_BY_SIGSYS} (SIGSYS)",
            run.vmm_exit
        )
    })?;
    run.check(run.report.guest_exit.is_none(), || {
        "the guest command finished although the monitor should have been killed".into()
    })
}

#[test]
fn forbidden_call_in_a_vcpu_thread_kills_the_monitor() -> Result<()> {
    expect_killed("vcpu")
}

#[test]
fn forbidden_call_in_the_main_thread_kills_the_monitor() -> Result<()> {
    expect_killed("main")
}

/// The same forbidden call under `--seccomp log` is allowed: the guest runs to the end.
#[test]
fn seccomp_log_lets_the_forbidden_call_through() -> Result<()> {
    let run = boot(
        GuestOpts::default()
            .with_vmm_args(["--seccomp", "log", "--seccomp-selftest", "vcpu"])
            .with_command("true"),
    )?;
    run.expect_success().map(drop)
}
