//! The testbed's own integration tests: a KVM host is really there, scripts' results come
//! back, the share works both ways, timeouts are reported with the console tail, and (nested)
//! an emulated NVDIMM shows up as device DAX.
//!
//! These need KVM (direct) or QEMU (nested) and fail, never skip, when neither is available.

use std::time::Duration;

use testbed::{run_on_kvm_host, Error, HostOpts, Mode, Nvdimm, Result, ScratchDir};

fn opts() -> HostOpts {
    HostOpts::default()
        .without_guest_artifacts()
        .with_timeout(Duration::from_secs(150))
}

#[test]
fn host_has_usable_kvm_and_returns_status_and_output() -> Result<()> {
    let script = r#"
        test -c /dev/kvm || { echo "no /dev/kvm"; exit 1; }
        exec 3<>/dev/kvm || { echo "cannot open /dev/kvm read-write"; exit 1; }
        echo "kvm ok in $TESTBED_MODE"
        echo "work=$WORK pwd=$(pwd)"
        echo to-stderr >&2
        if [ "$TESTBED_MODE" = nested ]; then
            dmesg | grep -i 'nested paging' || { echo "no nested paging in L1"; exit 1; }
        fi
        exit 42
    "#;
    let run = run_on_kvm_host(script, &opts())?;
    eprintln!(
        "{} run: {:.2?} total, host ready after {:?}",
        run.mode, run.duration, run.host_ready
    );
    if run.rc != 42 {
        return Err(run.error(format!("expected exit status 42, got {}", run.rc)));
    }
    let mode = testbed::mode()?;
    for needle in [
        format!("kvm ok in {mode}"),
        "to-stderr".to_string(),
        "pwd=".to_string(),
    ] {
        if !run.output.contains(&needle) {
            return Err(run.error(format!("output lacks {needle:?}")));
        }
    }
    let work_line = run
        .output
        .lines()
        .find(|l| l.starts_with("work="))
        .unwrap_or("");
    let (work, pwd) = work_line
        .trim_start_matches("work=")
        .split_once(" pwd=")
        .unwrap_or(("", "?"));
    if work.is_empty() || work != pwd {
        return Err(run.error(format!("script should start in $WORK: {work_line:?}")));
    }
    // The markers themselves are not part of the output.
    if run.output.contains("@@HOST-") {
        return Err(run.error("markers leaked into the output"));
    }
    Ok(())
}

#[test]
fn share_works_both_ways_and_env_is_passed() -> Result<()> {
    let share = ScratchDir::new("share-test")?;
    let input: Vec<u8> = (0..(3 << 20) as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(share.path().join("input.bin"), &input).unwrap();
    std::fs::write(share.path().join("hello.txt"), "hello from L0\n").unwrap();
    let script = r#"
        set -e
        cat "$SHARE/hello.txt"
        echo "$GREETING" > "$SHARE/out.txt"
        sha256sum "$SHARE/input.bin" | cut -d' ' -f1 > "$SHARE/input.sha256"
        mkdir -p "$SHARE/sub"
        dd if=/dev/zero of="$SHARE/sub/zeros" bs=64k count=16 2>/dev/null
    "#;
    let run = run_on_kvm_host(
        script,
        &opts()
            .with_share(share.path())
            .with_env("GREETING", "it's \"quoted\" $NOT_EXPANDED"),
    )?;
    run.expect_success()?;
    if !run.output.contains("hello from L0") {
        return Err(run.error("the script did not read the shared input"));
    }
    let read = |name: &str| std::fs::read_to_string(share.path().join(name)).unwrap_or_default();
    if read("out.txt") != "it's \"quoted\" $NOT_EXPANDED\n" {
        return Err(run.error(format!("out.txt is {:?}", read("out.txt"))));
    }
    let expected = sha256_hex(share.path().join("input.bin"));
    if read("input.sha256").trim() != expected {
        return Err(run.error(format!(
            "host saw input.bin as {:?}, expected {expected}",
            read("input.sha256")
        )));
    }
    let zeros = std::fs::read(share.path().join("sub/zeros")).unwrap_or_default();
    if zeros.len() != 1 << 20 || zeros.iter().any(|&b| b != 0) {
        return Err(run.error(format!("sub/zeros has {} bytes", zeros.len())));
    }
    Ok(())
}

/// sha256 via the host's `sha256sum`, to avoid a crypto dependency.
fn sha256_hex(path: std::path::PathBuf) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn work_holds_large_sparse_files() -> Result<()> {
    let script = r#"
        set -e
        truncate -s 64G "$WORK/sparse"
        dd if=/dev/zero of="$WORK/sparse" bs=1M count=8 seek=4096 conv=notrunc 2>/dev/null
        ls -l "$WORK/sparse"
        du -k "$WORK/sparse"
    "#;
    let run = run_on_kvm_host(script, &opts())?;
    run.expect_success()?;
    if !run.output.contains("68719476736") {
        return Err(run.error("the sparse file does not have its 64 GiB size"));
    }
    Ok(())
}

#[test]
fn timeout_kills_the_host_and_reports_the_last_lines() -> Result<()> {
    let script = r#"
        echo before-the-hang
        sleep 600
        echo never-printed
    "#;
    // Long enough for L1 to boot on a busy machine (a few seconds when quiet).
    let timeout = Duration::from_secs(45);
    let result = run_on_kvm_host(script, &opts().with_timeout(timeout));
    match result {
        Err(Error::Timeout {
            timeout: t,
            host_view,
            tail,
        }) => {
            assert_eq!(t, timeout);
            assert!(tail.contains("before-the-hang"), "tail:\n{tail}");
            assert!(!tail.contains("never-printed"), "tail:\n{tail}");
            // The host's view names the killed processes and their threads.
            assert!(host_view.contains("tid"), "host view:\n{host_view}");
            let msg = Error::Timeout {
                timeout: t,
                host_view,
                tail,
            }
            .to_string();
            assert!(msg.contains("timed out"), "{msg}");
            Ok(())
        }
        Err(other) => Err(other),
        Ok(run) => Err(run.error("a sleeping script should have timed out")),
    }
}

/// A console line that reports an RCU stall ends the run within seconds, not at the timeout,
/// with the stall line, the console tail and the host's view of its threads in the error.
#[test]
fn a_stall_report_stops_the_run_at_once() -> Result<()> {
    let script = r#"
        echo before-the-stall
        echo 'rcu: INFO: rcu_sched self-detected stall on CPU'
        sleep 600
        echo never-printed
    "#;
    let timeout = Duration::from_secs(170);
    match run_on_kvm_host(script, &opts().with_timeout(timeout)) {
        Err(Error::Stall {
            why,
            after,
            host_view,
            tail,
        }) => {
            assert!(why.contains("self-detected stall"), "{why}");
            assert!(tail.contains("before-the-stall"), "tail:\n{tail}");
            assert!(host_view.contains("tid"), "host view:\n{host_view}");
            // L1 boots in seconds; the stop comes a few seconds after the line, far from 170 s.
            // (The run's own time: a suite run once spent 170 s waiting for another test's host
            // slot before this run began.)
            assert!(after < Duration::from_secs(100), "stopped after {after:?}");
            Ok(())
        }
        Err(other) => Err(other),
        Ok(run) => Err(run.error("a stall report should have stopped the run")),
    }
}

/// A console that stays silent past the run's silence limit ends the run early. Nested, the
/// report carries L1's state from QEMU's monitor: every CPU's flags line and local APIC, and
/// (a healthy L1 sleeping in `sleep`) no stuck verdict.
#[test]
fn a_silent_console_stops_the_run() -> Result<()> {
    let script = "echo last-words; sleep 600";
    let opts = opts()
        .with_timeout(Duration::from_secs(170))
        .with_silence(Some(Duration::from_secs(20)));
    match run_on_kvm_host(script, &opts) {
        Err(Error::Stall {
            why,
            tail,
            host_view,
            ..
        }) => {
            assert!(why.contains("silent for 20s"), "{why}");
            assert!(tail.contains("last-words"), "tail:\n{tail}");
            if testbed::mode()? == Mode::Nested {
                for cpu in 0..opts.cpus {
                    for part in [
                        format!("cpu {cpu}: RIP="),
                        format!("cpu {cpu} local APIC: "),
                    ] {
                        assert!(host_view.contains(&part), "{part:?} in:\n{host_view}");
                    }
                }
                assert!(host_view.contains("COM1: IER 0x"), "{host_view}");
                assert!(!host_view.contains(testbed::L1_STUCK_MARKER), "{host_view}");
            }
            Ok(())
        }
        Err(other) => Err(other),
        Ok(run) => Err(run.error("a silent run should have been stopped")),
    }
}

/// An emulated NVDIMM with a devdax info block becomes `/dev/dax0.0` in L1. In direct mode the
/// machine must have a real device-DAX device; without one this fails, saying so.
#[test]
fn nvdimm_appears_as_device_dax() -> Result<()> {
    let dir = ScratchDir::new("nvdimm-test")?;
    let dimm = Nvdimm::devdax(dir.path().join("dimm0"), 1 << 30);
    let script = r#"
        set -e
        echo "device=$NVDIMM0"
        test -c "$NVDIMM0"
        cat "/sys/bus/dax/devices/${NVDIMM0#/dev/}/size"
    "#;
    let run = run_on_kvm_host(script, &opts().with_nvdimm(dimm.clone()))?;
    run.expect_success()?;
    if run.mode == Mode::Nested {
        let dataoff = dimm.data_offset()?;
        let expected = (1u64 << 30) - dataoff;
        if !run.output.lines().any(|l| l.trim() == expected.to_string()) {
            return Err(run.error(format!(
                "expected /dev/dax0.0 of {expected} bytes (1 GiB minus dataoff {dataoff})"
            )));
        }
    }
    Ok(())
}

/// A nested host that ends before the script does is reported as an L1 crash (the error
/// `scripts/check-retries.py` forgives on a retry), with the console tail. The script stands
/// in for a crash by powering L1 off mid-run, which looks the same from outside: QEMU exits
/// before the end marker. In direct mode the host is this machine, so the script kills only
/// its own shell, and the run reports that status.
#[test]
fn a_host_that_ends_mid_script_is_an_l1_crash() -> Result<()> {
    let script = r#"
        echo before-the-crash
        if [ "$TESTBED_MODE" = nested ]; then poweroff -f; else kill -KILL $$; fi
        sleep 60
        echo never-printed
    "#;
    let result = run_on_kvm_host(script, &opts());
    match (testbed::mode()?, result) {
        (Mode::Nested, Err(e @ Error::L1Crashed { .. })) => {
            let msg = e.to_string();
            assert!(msg.starts_with(testbed::L1_CRASH_MARKER), "{msg}");
            assert!(msg.contains("before-the-crash"), "{msg}");
            assert!(!msg.contains("never-printed"), "{msg}");
            Ok(())
        }
        (Mode::Direct, Ok(run)) if run.rc == 137 => Ok(()),
        (_, Err(other)) => Err(other),
        (mode, Ok(run)) => Err(run.error(format!(
            "{mode}: expected an L1 crash (nested) or status 137 (direct), got status {}",
            run.rc
        ))),
    }
}
