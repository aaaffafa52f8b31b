//! Boots many guests in one testbed host, interleaving our vmm (bzImage and PVH vmlinux) with
//! the peer monitors, and prints each launch-to-exit time: the tool behind the timer-stall and
//! guest-crash investigations in `tests/README.md` ("Nested timer stalls", "The nested guest
//! crash").
//!
//! ```text
//! cargo run --release -p testbed --example soak -- [--boots N] [--peers DIR] [--no-peers]
//!     [--monitors NAME,...] [--parallel K] [--guest-cmd CMD] [--guest-param WORD]...
//!     [--l1-param WORD]... [--l1-background CMD] [--qemu-arg ARG]... [--timeout SECS] [--echo]
//!     [--print-script]
//! ```
//! Each round boots every monitor (`vmm-bzimage`, `vmm-pvh`, `cloud-hypervisor`, `firecracker`;
//! `--monitors` picks some) once, or `--parallel K` guests of it at once; `--l1-background` runs
//! a shell command in L1 for the whole run (a CPU hog, say). A boot slower than 3x its
//! monitor's median, one that timed out, and a guest console with an RCU stall or a kernel
//! crash are listed at the end. Exits 1 when any was seen. `--peers DIR` defaults to
//! `../shared/peers` beside the repository when it exists.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use testbed::{marker_values, run_on_kvm_host, HostOpts};

/// Per-boot limit inside L1; a stalled guest is killed after it.
const BOOT_LIMIT_SECS: u32 = 120;

struct Args {
    boots: u32,
    peers: Option<PathBuf>,
    guest_cmd: String,
    guest_params: Vec<String>,
    l1_params: Vec<String>,
    qemu_args: Vec<String>,
    timeout: u64,
    print: bool,
    l1_background: Option<String>,
    monitors: Option<Vec<String>>,
    parallel: u32,
}

fn parse_args() -> Args {
    let default_peers = testbed::config::peers_dir();
    let mut a = Args {
        boots: 10,
        peers: default_peers
            .join("cloud-hypervisor")
            .exists()
            .then_some(default_peers),
        guest_cmd: "sleep 2".into(),
        guest_params: ["console=ttyS0", "quiet", "panic=-1"]
            .map(String::from)
            .to_vec(),
        l1_params: Vec::new(),
        qemu_args: Vec::new(),
        timeout: 3600,
        print: false,
        l1_background: None,
        monitors: None,
        parallel: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next().unwrap_or_else(|| {
                eprintln!("soak: {arg} needs a value");
                std::process::exit(2)
            })
        };
        match arg.as_str() {
            "--boots" => a.boots = value().parse().expect("--boots takes a number"),
            "--peers" => a.peers = Some(PathBuf::from(value())),
            "--no-peers" => a.peers = None,
            "--guest-cmd" => a.guest_cmd = value(),
            "--guest-param" => a.guest_params.push(value()),
            "--l1-param" => a.l1_params.push(value()),
            "--qemu-arg" => a.qemu_args.push(value()),
            "--timeout" => a.timeout = value().parse().expect("--timeout takes seconds"),
            "--echo" => std::env::set_var("PMEMVMM_TESTBED_ECHO", "1"),
            "--print-script" => a.print = true,
            "--parallel" => a.parallel = value().parse().expect("--parallel takes a number"),
            "--l1-background" => a.l1_background = Some(value()),
            "--monitors" => a.monitors = Some(value().split(',').map(String::from).collect()),
            other => {
                eprintln!("soak: unknown argument {other:?}");
                std::process::exit(2);
            }
        }
    }
    a
}

/// Seconds into a boot after which L1's view of it is dumped once (`@@SOAK-DIAG@@`): the
/// guest vCPU threads' states, L1's pending hrtimers (is the guest's LAPIC timer armed?), and
/// KVM's per-VM and per-vCPU debugfs values.
const DIAG_AFTER_SECS: u32 = 30;

/// Shell functions of the L1 script: `diag PID` and `run_one NAME` (runs function `m`).
fn run_one() -> String {
    format!(
        r#"mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
diag() {{
  echo "@@SOAK-DIAG begin $1@@"
  for t in /proc/$1/task/*; do
    echo "task $(cat $t/comm) state $(cut -d' ' -f3 $t/stat) wchan $(cat $t/wchan 2>/dev/null)"
  done
  grep -E 'cpu:|apic_timer_fn|kvm|expires at' /proc/timer_list 2>/dev/null | grep -B1 -A1 -E 'apic_timer|kvm' | head -n 40
  grep -E '^ *(cpu:|now at)' /proc/timer_list 2>/dev/null | head -n 4
  for d in /sys/kernel/debug/kvm/*-*; do
    for f in "$d"/* "$d"/vcpu0/*; do [ -f "$f" ] && echo "$f $(head -c 200 "$f" 2>/dev/null | head -n 1)"; done
  done
  tail -n 15 "$WORK/console.0"
  echo "@@SOAK-DIAG end@@"
}}
CRASH='triple fault: rip\|Oops: \|BUG: \|Kernel panic\|general protection fault'
run_one() {{
  t0=$(cut -d' ' -f1 /proc/uptime)
  k=0
  while [ $k -lt $PAR ]; do m >"$WORK/console.$k" 2>&1 </dev/null & eval "pid_$k=$!"; k=$((k+1)); done
  n=0
  while [ $n -lt {BOOT_LIMIT_SECS} ]; do
    alive=0; k=0
    while [ $k -lt $PAR ]; do kill -0 $(eval echo \$pid_$k) 2>/dev/null && alive=1; k=$((k+1)); done
    [ $alive = 0 ] && break
    sleep 1; n=$((n+1))
    [ $n = {DIAG_AFTER_SECS} ] && diag $pid_0
  done
  t1=$(cut -d' ' -f1 /proc/uptime)
  cs=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)
  k=0
  while [ $k -lt $PAR ]; do
    pid=$(eval echo \$pid_$k); rc=
    if kill -0 $pid 2>/dev/null; then kill -9 $pid; rc=124; fi
    wait $pid; r=$?; [ -z "$rc" ] && rc=$r
    c="$WORK/console.$k"
    st=0; grep -q 'rcu.*stall\|timer wakeup didn' "$c" && st=1
    grep -q "$CRASH" "$c" && st=2
    [ "$(grep -c 'Linux version' "$c")" -gt 1 ] && st=3
    echo "@@SOAK $1 $i $t0 $t1 $rc $st $cs@@"
    if [ $st != 0 ] || [ $rc != 0 ]; then echo "--- console of $1 round $i instance $k"; grep -B2 -A25 "$CRASH\\|Linux version" "$c" | tail -n 60; tail -n 8 "$c"; fi
    k=$((k+1))
  done
}}
"#
    )
}

/// The L1 script: `boots` rounds, each monitor once per round, one `@@SOAK ...@@` line each.
fn script(a: &Args, ch: Option<&Path>, fc: Option<&Path>) -> String {
    let cmdline = format!("{} -- \"{}\"", a.guest_params.join(" "), a.guest_cmd);
    let mut monitors = vec![
        (
            "vmm-bzimage",
            "\"$VMM\" --kernel \"$KERNEL\" --initramfs \"$INITRAMFS\" --memory 256M \
             --cmdline \"$CMDLINE\""
                .to_string(),
        ),
        (
            "vmm-pvh",
            "\"$VMM\" --kernel \"$VMLINUX\" --initramfs \"$INITRAMFS\" --memory 256M \
             --cmdline \"$CMDLINE\""
                .to_string(),
        ),
    ];
    if let Some(ch) = ch {
        monitors.push((
            "cloud-hypervisor",
            format!(
                "'{}' --kernel \"$VMLINUX\" --initramfs \"$INITRAMFS\" --cmdline \"$CMDLINE\" \
                 --cpus boot=1 --memory size=256M --serial tty --console off",
                ch.display()
            ),
        ));
    }
    if let Some(fc) = fc {
        monitors.push((
            "firecracker",
            format!(
                "'{}' --no-api --config-file \"$WORK/fc.json\"",
                fc.display()
            ),
        ));
    }
    let mut s = format!(
        "CMDLINE='{}'\n\
         JCMDLINE=$(printf '%s' \"$CMDLINE\" | sed 's/ -- / pmemvmm.action=reboot -- /; s/\"/\\\\\"/g')\n\
         cat >\"$WORK/fc.json\" <<EOF\n\
         {{ \"boot-source\": {{ \"kernel_image_path\": \"$VMLINUX\", \"initrd_path\": \
         \"$INITRAMFS\", \"boot_args\": \"$JCMDLINE\" }},\n\
         \"machine-config\": {{ \"vcpu_count\": 1, \"mem_size_mib\": 256 }}, \"drives\": [] }}\n\
         EOF\n\
         echo \"@@SOAK-L1 clocksource $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)@@\"\n\
         dmesg | grep -i -E 'tsc|kvm:|clocksource' | sed 's/^/L1 dmesg: /'\n\
         {RUN_ONE}\
         {background}\
         PAR={par}\n\
         i=0\n\
         while [ $i -lt {} ]; do\n",
        cmdline.replace('\'', "'\\''"),
        a.boots,
        RUN_ONE = run_one(),
        background = a.l1_background.as_ref().map_or(String::new(), |bg| format!(
            "( {bg} ) >/dev/null 2>&1 &\necho \"@@SOAK-L1 background: {bg}@@\"\n"
        )),
        par = a.parallel
    );
    let monitors: Vec<_> = monitors
        .into_iter()
        .filter(|(n, _)| a.monitors.as_ref().is_none_or(|m| m.iter().any(|x| x == n)))
        .collect();
    for (name, cmd) in &monitors {
        s.push_str(&format!("  m() {{ exec {cmd}; }}\n  run_one {name}\n"));
    }
    s.push_str("  i=$((i+1))\ndone\ndmesg | tail -n 40\n");
    s
}

#[derive(Debug)]
struct Boot {
    monitor: String,
    round: u32,
    secs: f64,
    rc: i32,
    /// 0 fine, 1 an RCU stall report, 2 a kernel crash, 3 a crash the monitor rebooted from
    /// (the console shows a second boot).
    state: u8,
    clocksource: String,
}

fn parse(output: &str) -> Vec<Boot> {
    marker_values(output, "SOAK")
        .into_iter()
        .filter_map(|v| {
            let w: Vec<&str> = v.split_whitespace().collect();
            if w.len() < 7 {
                return None;
            }
            let t0: f64 = w[2].parse().ok()?;
            let t1: f64 = w[3].parse().ok()?;
            Some(Boot {
                monitor: w[0].to_string(),
                round: w[1].parse().ok()?,
                secs: t1 - t0,
                rc: w[4].parse().ok()?,
                state: w[5].parse().ok()?,
                clocksource: w[6].to_string(),
            })
        })
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let a = parse_args();
    let (ch, fc) = match &a.peers {
        Some(dir) => {
            let dir = dir.canonicalize().unwrap_or_else(|e| {
                eprintln!("soak: peers directory {}: {e}", dir.display());
                std::process::exit(2)
            });
            let stage = |name: &str| {
                testbed::nested::visible_in_l1(&dir.join(name), name).unwrap_or_else(|e| {
                    eprintln!("soak: {e}");
                    std::process::exit(2)
                })
            };
            (Some(stage("cloud-hypervisor")), Some(stage("firecracker")))
        }
        None => (None, None),
    };
    if a.print {
        print!("{}", script(&a, ch.as_deref(), fc.as_deref()));
        return;
    }
    let mut opts = HostOpts::default().with_timeout(Duration::from_secs(a.timeout));
    for bin in [&ch, &fc].into_iter().flatten() {
        opts = opts.with_host_bin(bin.clone());
    }
    opts.l1_cmdline = a.l1_params.clone();
    opts = opts.with_qemu_args(a.qemu_args.clone());
    let run = match run_on_kvm_host(&script(&a, ch.as_deref(), fc.as_deref()), &opts) {
        Ok(run) => run,
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(1);
        }
    };
    let boots = parse(&run.output);
    let mut by_monitor: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for b in &boots {
        println!(
            "{:<17} round {:>3}  {:>7.2} s  exit {:>3}  clocksource {}{}",
            b.monitor,
            b.round,
            b.secs,
            b.rc,
            b.clocksource,
            ["", "  RCU STALL", "  CRASH", "  CRASH, REBOOTED"][usize::from(b.state.min(3))]
        );
        by_monitor.entry(&b.monitor).or_default().push(b.secs);
    }
    let medians: BTreeMap<&str, f64> = by_monitor
        .iter_mut()
        .map(|(m, v)| (*m, median(v)))
        .collect();
    let mut bad = 0;
    println!(
        "\nmonitor            boots  median   max     >3x median  stalls  crashes  timeouts  failed"
    );
    for (m, v) in &by_monitor {
        let med = medians[m];
        let mine = boots.iter().filter(|b| b.monitor == *m);
        let slow = mine.clone().filter(|b| b.secs > 3.0 * med).count();
        let stalls = mine.clone().filter(|b| b.state == 1).count();
        let crashes = mine.clone().filter(|b| b.state >= 2).count();
        let timeouts = mine.clone().filter(|b| b.rc == 124).count();
        let failed = mine.filter(|b| b.rc != 0 && b.rc != 124).count();
        bad += slow + stalls + crashes + timeouts + failed;
        println!(
            "{m:<17} {:>6}  {med:>6.2}  {:>6.2}  {slow:>10}  {stalls:>6}  {crashes:>7}  {timeouts:>8}  {failed:>6}",
            v.len(),
            v.iter().copied().fold(0.0, f64::max)
        );
    }
    let expected = a.boots as usize * by_monitor.len().max(1);
    if boots.len() < expected {
        println!(
            "only {} of {expected} boots reported; L1 output tail:\n{}",
            boots.len(),
            run.tail(40)
        );
        bad += 1;
    }
    if bad > 0 {
        println!("\nL1 output (tail):\n{}", run.tail(60));
        std::process::exit(1);
    }
}
