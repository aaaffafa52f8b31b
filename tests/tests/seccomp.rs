//! The monitor's seccomp sandbox, on by default (`--seccomp true`): every thread of a running
//! monitor is filtered (`Seccomp: 2` in /proc/PID/task/*/status), in every mode: the command
//! line, and the API's whole lifecycle (create, boot, hot-add, info, counters, power button,
//! reboot, shutdown, delete, a second create and boot, vmm.shutdown) with the API thread and the
//! vCPU threads each boot starts. A system call outside a thread's allow list kills the whole
//! monitor with SIGSYS. The forbidden call comes from the hidden `--seccomp-selftest
//! main|vcpu|api` hook (a command-line flag; a guest cannot reach it).
//! The guest tests need KVM (direct) or QEMU (nested) and fail, never skip, when neither is
//! available; the API thread's runs on this machine (API mode needs no KVM until a VM boots).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testbed::markers::marker_values;
use testbed::{
    boot_guest, run_on_kvm_host, vmm, GuestOpts, GuestRun, HostOpts, Result, ScratchDir,
};

/// SIGSYS on x86-64.
const SIGSYS: i32 = 31;

/// Exit status of a process killed by SIGSYS (31 on x86-64), as the host shell reports it.
const KILLED_BY_SIGSYS: i32 = 128 + SIGSYS;

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

/// No `--seccomp` option: the default filters every thread.
#[test]
fn every_thread_of_a_running_monitor_is_filtered() -> Result<()> {
    let cpus = 2;
    let run = boot(
        GuestOpts::default()
            .with_cpus(cpus)
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
            .with_vmm_args(["--seccomp-selftest", thread])
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

/// The API thread's own filter: `--seccomp-selftest api` makes it call `getppid` right after
/// installing it, before it accepts anything, which kills the monitor; under `--seccomp log`
/// the same call is let through and the API answers. Runs here: API mode needs no KVM until a
/// VM boots.
#[test]
fn forbidden_call_in_the_api_thread_kills_the_monitor() {
    let dir = ScratchDir::new("seccomp-api").unwrap();
    let socket = dir.path().join("api.sock");
    let mut child = Command::new(vmm().expect("build the vmm"))
        .arg("--api-socket")
        .arg(format!("path={}", socket.display()))
        .args(["--seccomp-selftest", "api"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the monitor outlived its API thread's forbidden call"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.signal(), Some(SIGSYS), "{status:?}");

    let socket = dir.path().join("log.sock");
    let mut child = Command::new(vmm().expect("build the vmm"))
        .arg("--api-socket")
        .arg(format!("path={}", socket.display()))
        .args(["--seccomp", "log", "--seccomp-selftest", "api"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ping = request(&socket, "GET /api/v1/vmm.ping HTTP/1.1\r\nHost: x\r\n\r\n");
    let bye = request(
        &socket,
        "PUT /api/v1/vmm.shutdown HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let status = child.wait().unwrap();
    assert!(ping.starts_with("HTTP/1.1 200 "), "{ping}");
    assert!(bye.starts_with("HTTP/1.1 204 "), "{bye}");
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// One HTTP request on a fresh connection, once the socket accepts; the whole answer.
fn request(socket: &std::path::Path, text: &str) -> String {
    let start = Instant::now();
    let mut stream = loop {
        match UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(e) => {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "{}: {e}",
                    socket.display()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(text.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    out
}

/// The L1 script of [`api_lifecycle_survives_under_the_filter`].
const API_LIFECYCLE: &str = r#"
set -u
cat > vm.json <<EOF
{"payload":{"kernel":"$KERNEL","initramfs":"$INITRAMFS",
  "cmdline":"console=ttyS0 quiet panic=-1 -- \"while sleep 1; do [ -e /dev/pmem1 ] && [ ! -e /tmp/w ] && printf SANDBOXED-42 | dd of=/dev/pmem1 conv=fsync 2>/dev/null && touch /tmp/w && echo WROTE; echo TICK; done\""},
 "cpus":{"boot_vcpus":2,"max_vcpus":2},"memory":{"size":268435456},
 "serial":{"mode":"File","file":"$WORK/console.log"},
 "pmem":[{"file":"$WORK/base.img","size":134217728,"id":"base"}]}
EOF
# req ENDPOINT METHOD [BODY]: the status code, then the answer
req() { /usr/bin/curl -s --max-time 30 -o req.out -w '%{http_code}' --unix-socket api.sock -X "$2" -H 'Content-Type: application/json' --data-binary "${3:-}" "http://localhost/api/v1/$1"; echo " $(cat req.out)"; }
# The monitor's threads: name and seccomp mode, joined by ';'.
snap() { for t in /proc/$pid/task/*; do echo "$(cat $t/comm) $(grep '^Seccomp:' $t/status | tr -s ' \t' ' ')"; done | sort | tr '\n' ';'; }
# Every wait below shares one deadline, well inside the run's timeout, so a guest that never
# gets there (e.g. the nested testbed's guest crash) still leaves time for the console and vmm
# dumps at the end.
deadline=$(( $(date +%s) + 270 ))
# fresh: prints the console so far (a crash there reaches the testbed) and empties it.
fresh() { echo "--- console ---"; cat console.log 2>/dev/null; : > console.log; }
# wait_for TEXT: until a console line (since console.log was last emptied) has TEXT, the
# monitor is gone, or the deadline has passed
wait_for() { while ! grep -q "$1" console.log 2>/dev/null && kill -0 $pid 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.25; done; grep -q "$1" console.log && echo "@@SEEN-$1@@"; }
"$VMM" --api-socket path="$WORK/api.sock" 2> vmm.log &
pid=$!
i=0; while [ ! -S api.sock ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
echo "@@PING $(req vmm.ping GET)@@"
echo "@@THREADS-IDLE $(snap)@@"
echo "@@CREATE $(req vm.create PUT "$(cat vm.json)")@@"
echo "@@BOOT $(req vm.boot PUT)@@"
wait_for TICK
echo "@@THREADS-RUNNING $(snap)@@"
echo "@@ADD $(req vm.add-pmem PUT '{"file":"'$WORK'/hot.img","size":134217728,"id":"hot"}')@@"
wait_for WROTE
echo "@@INFO $(req vm.info GET | tr -d '\n')@@"
echo "@@COUNTERS $(req vm.counters GET | tr -d '\n')@@"
echo "@@POWER-BUTTON $(req vm.power-button PUT)@@"
fresh
echo "@@REBOOT $(req vm.reboot PUT)@@"
# The old guest may still print a TICK between the truncation and its stop: only the new boot's
# init line says the rebooted guest (and its vCPU threads) run.
wait_for GUEST-INIT
wait_for TICK
echo "@@THREADS-REBOOTED $(snap)@@"
echo "@@SHUTDOWN $(req vm.shutdown PUT)@@"
echo "@@DELETE $(req vm.delete PUT)@@"
echo "@@CREATE-AGAIN $(req vm.create PUT "$(cat vm.json)")@@"
fresh
echo "@@BOOT-AGAIN $(req vm.boot PUT)@@"
wait_for TICK
echo "@@THREADS-AGAIN $(snap)@@"
echo "@@EXIT-VMM $(req vmm.shutdown PUT)@@"
i=0; while kill -0 $pid 2>/dev/null && [ $i -lt 120 ]; do sleep 0.25; i=$((i+1)); done
kill -0 $pid 2>/dev/null && { echo "@@VMM-STILL-RUNNING@@"; kill -9 $pid; }
wait $pid
echo "@@VMM-EXIT $?@@"
grep -c SANDBOXED-42 hot.img | sed 's/^/@@HOST-MARK /; s/$/@@/'
echo "--- console ---"; cat console.log
echo "--- vmm ---"; cat vmm.log
"#;

/// API mode's whole lifecycle with the default filters, through curl: create (two vCPUs, a
/// pmem device, the console to a file), boot, hot-add a second device that the guest writes and
/// fsyncs (a flush hint: the vCPU's msync), info, counters, the power button, a reboot (new vCPU
/// threads), shutdown, delete, create and boot again, vmm.shutdown. The monitor survives every
/// step and exits 0, and at each snapshot every thread, the API thread's included, is filtered.
#[test]
fn api_lifecycle_survives_under_the_filter() -> Result<()> {
    let curl = std::path::PathBuf::from("/usr/bin/curl");
    assert!(
        curl.is_file(),
        "curl is needed (apt-get install curl; scripts/install-deps.sh installs it)"
    );
    let host = HostOpts::default()
        .with_host_bin(curl)
        .with_timeout(Duration::from_secs(420));
    let run = run_on_kvm_host(API_LIFECYCLE, &host)?;
    eprintln!(
        "{} host: run {:.2?}\n{}",
        run.mode, run.duration, run.output
    );
    run.expect_success()?;
    let value = |m: &str| marker_values(&run.output, m).first().map(|s| s.to_string());
    for (m, want) in [
        ("PING", "200 "),
        ("CREATE", "204"),
        ("BOOT", "204"),
        ("ADD", "200 {"),
        ("INFO", "200 {"),
        ("COUNTERS", "200 {"),
        ("POWER-BUTTON", "204"),
        ("REBOOT", "204"),
        ("SHUTDOWN", "204"),
        ("DELETE", "204"),
        ("CREATE-AGAIN", "204"),
        ("BOOT-AGAIN", "204"),
        ("EXIT-VMM", "204"),
        ("VMM-EXIT", "0"),
        ("HOST-MARK", "1"),
    ] {
        match value(m) {
            Some(s) if s.starts_with(want) => {}
            other => return Err(run.error(format!("{m}: {other:?}, expected {want}"))),
        }
    }
    if marker_values(&run.output, "SEEN-TICK").len() != 3
        || value("SEEN-WROTE").is_none()
        || value("SEEN-GUEST-INIT").is_none()
    {
        return Err(run.error("the guest did not run (or write) after every boot"));
    }
    let counters = value("COUNTERS").unwrap_or_default();
    let counters: serde_json::Value = serde_json::from_str(counters.trim_start_matches("200 "))
        .map_err(|e| run.error(format!("vm.counters is not JSON ({e}): {counters}")))?;
    if counters["hot"]["flush_requests"].as_u64().unwrap_or(0) == 0
        || counters["hot"]["host_flushes"].as_u64().unwrap_or(0) == 0
    {
        return Err(run.error(format!(
            "the guest's fsync on the hot-added device did not reach the host: {counters}"
        )));
    }
    // KVM's stage-2 counts, read by the API thread from the statistics descriptor the main
    // thread opened at vm.boot, both under their filters.
    if counters["kvm.stage2"]["pages_4k"].as_u64().unwrap_or(0)
        + counters["kvm.stage2"]["pages_2m"].as_u64().unwrap_or(0)
        == 0
    {
        return Err(run.error(format!(
            "vm.counters has no stage-2 page counts of the running guest: {counters}"
        )));
    }
    for (snapshot, vcpus) in [
        ("THREADS-IDLE", 0),
        ("THREADS-RUNNING", 2),
        ("THREADS-REBOOTED", 2),
        ("THREADS-AGAIN", 2),
    ] {
        let threads: Vec<(String, String)> = value(snapshot)
            .unwrap_or_default()
            .split(';')
            .filter(|t| !t.trim().is_empty())
            .map(|t| {
                let (name, mode) = t.trim().split_once(' ').unwrap_or((t, ""));
                (name.to_string(), mode.trim().to_string())
            })
            .collect();
        eprintln!("{snapshot}: {threads:?}");
        let has = |name: &str| threads.iter().any(|(n, _)| n == name);
        let vcpu_threads = threads
            .iter()
            .filter(|(n, _)| n.starts_with("vcpu"))
            .count();
        if !has("vmm") || !has("api") || vcpu_threads != vcpus {
            return Err(run.error(format!(
                "{snapshot}: expected the main thread, the API thread and {vcpus} vCPU threads, \
                 saw {threads:?}"
            )));
        }
        let unfiltered: Vec<_> = threads.iter().filter(|(_, m)| m != "Seccomp: 2").collect();
        if !unfiltered.is_empty() {
            return Err(run.error(format!(
                "{snapshot}: threads without a seccomp filter: {unfiltered:?}"
            )));
        }
    }
    Ok(())
}
