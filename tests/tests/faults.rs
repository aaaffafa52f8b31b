//! Backing faults (issue 10), in the nested testbed: a backing that fails under a running guest
//! must stop the guest with one clear line naming the device and the cause, a non-zero exit
//! status and no hang, and what the guest flushed before the fault must be intact on the backing.
//! And SIGKILL at any point of a format leaves the backing with its old info block or a valid
//! new one.
//!
//! Each test is one L1 host script: it builds the faulty backing (a full tmpfs, a device-mapper
//! `error` table, an unbound device-dax), starts the vmm in the background with the guest's
//! console in `console.log` and the vmm's own output in `vmm.log`, waits for the guest to say
//! its data is flushed (`@@PMEM-MARK flushed@@`), makes the fault happen, waits a bounded time
//! for the vmm to exit, and checks the backing. The assertions are made here from markers.
//!
//! The sparse-file and read-error cases run twice in their L1 host, with HLT exits (the default)
//! and with `--halt-in-guest`: the two ways the monitor learns of the fault differ. With HLT in
//! the guest KVM faults the page in synchronously and `KVM_RUN` fails with the address; with HLT
//! exits KVM retries an asynchronous page fault forever, and the monitor notices it from KVM's
//! per-vCPU fault counts (`vmm::fault_watch`). The other cases run in the default mode.
//!
//! These need KVM (direct) or QEMU (nested) and fail, never skip, when neither is available.

use std::time::Duration;

use testbed::markers::{last_marker, marker_values};
use testbed::pmem_checks::{guest_initramfs, pattern, GUEST_LIB, MIB, PATTERN_SH};
use testbed::shell::sh_quote;
use testbed::{run_on_kvm_host, GuestOpts, HostOpts, HostRun, Nvdimm, Result, ScratchDir};

/// `vmm::exit::BACKING_FAULT`: a backing failed under the guest.
const EXIT_BACKING_FAULT: i32 = 6;
/// `vmm::exit::FLUSH_FAILED`: a host flush of guest data failed.
const EXIT_FLUSH_FAILED: i32 = 5;

/// Bytes of the pattern the guest writes and flushes before the fault (at offset 0).
const FLUSHED_LEN: u64 = 256 * 1024;
/// Seconds the host waits for the vmm to exit once the fault was made; past it the vmm hung.
const EXIT_WAIT_S: u32 = 60;

/// Host shell for every fault test. `start_vmm SPEC` runs the vmm with one `--pmem SPEC` in the
/// background (pid in `$pid`), with `$HALT_FLAG` (empty, or `--halt-in-guest`);
/// `each_mode CMD` runs `CMD` once per mode, after a `@@FAULT-MODE name@@` line; `waitmark NAME` waits for the guest's `@@PMEM-MARK NAME@@`;
/// `wait_exit` waits up to EXIT_WAIT_S for the vmm and prints `@@VMM-EXIT rc@@` (or
/// `@@VMM-HUNG@@`, then kills it); `show_logs` prints the vmm's output between markers.
fn host_lib(cmdline: &str) -> String {
    format!(
        r#"{PATTERN_SH}
CMDLINE={cmdline}
start_vmm() {{
    rm -f console.log vmm.log
    "$VMM" --kernel "$KERNEL" --initramfs "$INITRAMFS" --cpus 1 --memory 256M $HALT_FLAG \
        --serial file=console.log --cmdline "$CMDLINE" --pmem "$1" </dev/null >vmm.log 2>&1 &
    pid=$!
}}
HALT_FLAG=
each_mode() {{
    for HALT_FLAG in "" --halt-in-guest; do
        echo "@@FAULT-MODE ${{HALT_FLAG:-hlt-exits}}@@"
        "$@"
    done
    HALT_FLAG=
}}
waitmark() {{
    i=0
    while ! grep -q "@@PMEM-MARK $1@@" console.log 2>/dev/null; do
        kill -0 $pid 2>/dev/null || {{ echo "@@FAULT-EARLY-EXIT $1@@"; return 1; }}
        i=$((i + 1))
        [ $i -lt 3000 ] || {{ echo "@@FAULT-WAIT-TIMEOUT $1@@"; return 1; }}
        sleep 0.1
    done
}}
wait_exit() {{
    i=0
    while kill -0 $pid 2>/dev/null; do
        i=$((i + 1))
        if [ $i -ge $(( {EXIT_WAIT_S} * 10 )) ]; then
            echo "@@VMM-HUNG@@"
            kill -KILL $pid
            break
        fi
        sleep 0.1
    done
    wait $pid
    echo "@@VMM-EXIT $?@@"
}}
show_logs() {{
    echo "--- guest console ---"; cat console.log
    echo "@@VMM-LOG-BEGIN@@"; cat vmm.log; echo "@@VMM-LOG-END@@"
}}
# intact FILE OFFSET: is the guest's flushed pattern at byte OFFSET of FILE?
intact() {{
    pat flushed {FLUSHED_LEN} > /tmp/want-flushed
    dd if="$1" of=/tmp/got-flushed bs=4096 skip=$(( $2 / 4096 )) count=$(( {FLUSHED_LEN} / 4096 )) \
        2>/dev/null
    if cmp -s /tmp/want-flushed /tmp/got-flushed; then
        echo "@@FAULT-INTACT ok@@"
    else
        echo "@@FAULT-INTACT fail@@"
    fi
}}
"#,
        cmdline = sh_quote(cmdline),
    )
}

/// The guest's kernel command line: the pmem guest library, then `command`.
fn guest_cmdline(command: &str) -> Result<String> {
    GuestOpts::default()
        .with_command(format!(". {GUEST_LIB}; {command}"))
        .guest_cmdline()
}

/// The guest writes the flushed pattern at offset 0 of /dev/pmem0, fsyncs it (the flush hint)
/// and says so; `then` runs next (the access that meets the fault).
fn flush_then(then: &str) -> String {
    format!(
        "pat flushed {FLUSHED_LEN} > /tmp/f; writeat /dev/pmem0 /tmp/f 0 && sync /dev/pmem0 \
         && mark flushed; {then}; mark survived; sleep 600"
    )
}

/// The outcome of one fault run: one vmm started in one mode, and what the script said after.
struct FaultRun<'a> {
    run: &'a HostRun,
    /// `hlt-exits` or `--halt-in-guest`.
    mode: &'a str,
    /// The part of the host's output about this run.
    output: &'a str,
    exit: Option<i32>,
    log: Vec<String>,
}

/// The runs of a host script: one per `@@FAULT-MODE name@@` section (every mode must be
/// there), or the whole output as the default mode's when the script has no sections.
fn fault_runs<'a>(run: &'a HostRun, modes: &[&str]) -> Result<Vec<FaultRun<'a>>> {
    eprintln!("{} host: run {:.2?}", run.mode, run.duration);
    run.expect_success()?;
    let mut parts: Vec<(&str, &str)> = Vec::new();
    let mut rest = run.output.as_str();
    while let Some(at) = rest.find("@@FAULT-MODE ") {
        let body = &rest[at + "@@FAULT-MODE ".len()..];
        let (name, after) = body.split_once("@@").unwrap_or((body, ""));
        let end = after.find("@@FAULT-MODE ").unwrap_or(after.len());
        parts.push((name, &after[..end]));
        rest = &after[end..];
    }
    if parts.is_empty() {
        parts.push(("hlt-exits", run.output.as_str()));
    }
    let found: Vec<&str> = parts.iter().map(|(m, _)| *m).collect();
    if found != modes {
        return Err(run.error(format!(
            "the script ran modes {found:?}, expected {modes:?}"
        )));
    }
    parts
        .into_iter()
        .map(|(mode, output)| FaultRun::new(run, mode, output))
        .collect()
}

impl<'a> FaultRun<'a> {
    fn new(run: &'a HostRun, mode: &'a str, output: &'a str) -> Result<FaultRun<'a>> {
        let r = FaultRun {
            run,
            mode,
            output,
            exit: last_marker(output, "VMM-EXIT"),
            log: section(output, "@@VMM-LOG-BEGIN@@", "@@VMM-LOG-END@@"),
        };
        for bad in ["FAULT-EARLY-EXIT", "FAULT-WAIT-TIMEOUT"] {
            let at = marker_values(output, bad);
            if !at.is_empty() {
                return Err(r.error(format!(
                    "the guest never announced {at:?} ({bad}); nothing was tested"
                )));
            }
        }
        if output.contains("@@VMM-HUNG@@") {
            return Err(r.error(format!(
                "the vmm was still running {EXIT_WAIT_S} s after the fault (hung)"
            )));
        }
        Ok(r)
    }

    fn error(&self, msg: impl Into<String>) -> testbed::Error {
        self.run.error(format!("[{}] {}", self.mode, msg.into()))
    }

    /// The vmm exited with `status`, the guest never got past the fault, and the vmm said
    /// why in exactly one line: its final `vmm: ...` line, naming the device and containing
    /// every one of `cause` (no other error or warning line).
    fn expect_stopped(&self, status: i32, device: &[&str], cause: &[&str]) -> Result<&Self> {
        if self.exit != Some(status) {
            return Err(self.error(format!(
                "the vmm exited {:?}, expected {status}; its output: {:?}",
                self.exit, self.log
            )));
        }
        if self.output.contains("@@PMEM-MARK survived@@") {
            return Err(self.error("the guest went on after the fault"));
        }
        let lines: Vec<&String> = self
            .log
            .iter()
            .filter(|l| l.starts_with("vmm: ") || l.contains(" ERROR ") || l.contains(" WARN "))
            .collect();
        if lines.len() != 1 {
            return Err(self.error(format!(
                "expected one error line from the vmm, got {}: {lines:?}",
                lines.len()
            )));
        }
        let line = lines[0];
        for word in device.iter().chain(cause) {
            if !line.contains(word) {
                return Err(self.error(format!("the vmm's line {line:?} does not say {word:?}")));
            }
        }
        eprintln!("[{}] the vmm said: {line}", self.mode);
        Ok(self)
    }

    fn expect_intact(&self) -> Result<&Self> {
        match marker_values(self.output, "FAULT-INTACT").last() {
            Some(v) if *v == "ok" => Ok(self),
            other => Err(self.error(format!(
                "the data the guest flushed before the fault is not intact on the backing \
                 ({other:?})"
            ))),
        }
    }
}

/// Both modes, in the order `each_mode` runs them.
const BOTH_MODES: &[&str] = &["hlt-exits", "--halt-in-guest"];
/// The default mode only (a script without `each_mode`).
const DEFAULT_MODE: &[&str] = &["hlt-exits"];

/// The lines strictly between the last `begin` line and the next `end` line.
fn section(output: &str, begin: &str, end: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut inside = false;
    for line in output.lines() {
        if line.contains(begin) {
            inside = true;
            lines.clear();
        } else if line.contains(end) {
            inside = false;
        } else if inside {
            lines.push(line.to_string());
        }
    }
    lines
}

fn host(timeout_s: u64) -> Result<HostOpts> {
    Ok(HostOpts::default()
        .with_initramfs(guest_initramfs()?)
        .with_timeout(Duration::from_secs(timeout_s)))
}

/// A sparse file on a full file system: a 16 MiB tmpfs in L1 holding 12 MiB of filler and a
/// 64 MiB sparse backing. The guest writes and flushes 256 KiB (allocated), then writes 8 MiB
/// into a hole at 32 MiB: about 4 MiB in, the host cannot allocate a page, the guest's store
/// faults in KVM, and the monitor must say that pmem0's file system is full, in both modes.
#[test]
fn sparse_file_on_a_full_file_system() -> Result<()> {
    let cmdline = guest_cmdline(&flush_then(
        "dd if=/dev/zero of=/dev/pmem0 bs=1M seek=32 count=8 oflag=direct 2>/dev/null",
    ))?;
    let script = format!(
        r#"{lib}
sparse_case() {{
    mkdir full && mount -t tmpfs -o size=16m faultfs full || exit 1
    dd if=/dev/zero of=full/filler bs=1M count=12 2>/dev/null
    truncate -s 64M full/d.img || exit 1
    df full
    start_vmm path=full/d.img,memmap=none
    waitmark flushed && wait_exit
    df full
    show_logs
    intact full/d.img 0
    umount full && rmdir full
}}
each_mode sparse_case
"#,
        lib = host_lib(&cmdline)
    );
    let host_run = run_on_kvm_host(&script, &host(300)?)?;
    for run in fault_runs(&host_run, BOTH_MODES)? {
        run.expect_stopped(
            EXIT_BACKING_FAULT,
            &["pmem0", "full/d.img"],
            &["file system", "full"],
        )?
        .expect_intact()?;
    }
    Ok(())
}

/// A block device that returns EIO: a device-mapper device over a loop device in L1. The guest
/// writes and flushes its pattern; the host then swaps the table for an `error` target (every
/// I/O fails with EIO) and the guest reads 1 MiB it never touched, which the host must read from
/// the device: the read fails, the guest's load faults in KVM, and the monitor must stop it
/// naming pmem0 and the I/O error, in both modes. Then the table is swapped back and the flushed
/// pattern must be on the loop device's file.
#[test]
fn block_device_returning_eio_on_read() -> Result<()> {
    dm_case(
        "dd if=/dev/pmem0 of=/dev/null bs=1M skip=40 count=1 iflag=direct 2>/dev/null",
        EXIT_BACKING_FAULT,
        &["Input/output error"],
        BOTH_MODES,
    )
}

/// As above, but after the swap the guest overwrites the start of its flushed pattern (pages
/// the host holds in memory, so the store itself succeeds) and fsyncs: the host's flush (msync)
/// fails with EIO, and the guest's flush must not complete (issue 10, defect 7): exit 5, one
/// line naming pmem0 and the I/O error. The backing keeps the flushed pattern.
#[test]
fn block_device_returning_eio_on_flush() -> Result<()> {
    dm_case(
        "pat late 65536 > /tmp/l; writeat /dev/pmem0 /tmp/l 0 && sync /dev/pmem0",
        EXIT_FLUSH_FAILED,
        &["flush", "Input/output error"],
        DEFAULT_MODE,
    )
}

fn dm_case(after_flush: &str, status: i32, cause: &[&str], modes: &[&str]) -> Result<()> {
    let size = 64 * MIB;
    let sectors = size / 512;
    let cmdline = guest_cmdline(&flush_then(&format!("sleep 3; {after_flush}")))?;
    let each = if modes == BOTH_MODES {
        "each_mode "
    } else {
        ""
    };
    let script = format!(
        r#"{lib}
export DM_DISABLE_UDEV=1
dm_run() {{
rm -f blk.img dm.dev
truncate -s {size} blk.img || exit 1
LOOP=$(losetup -f --show blk.img 2>/dev/null) || {{ LOOP=$(losetup -f) && losetup "$LOOP" blk.img; }}
test -b "$LOOP" || {{ echo "losetup gave no loop device: '$LOOP'"; exit 1; }}
dmsetup create --noudevsync faulty --table "0 {sectors} linear $LOOP 0" || exit 1
DM=/dev/mapper/faulty
test -b $DM || DM=/dev/dm-0
ln -s $DM dm.dev
start_vmm path=dm.dev,memmap=none
if waitmark flushed; then
    dmsetup suspend --noudevsync --nolockfs faulty && \
        dmsetup reload faulty --table "0 {sectors} error" && \
        dmsetup resume --noudevsync faulty && echo "@@FAULT-MADE@@"
    wait_exit
fi
show_logs
dmsetup remove --noudevsync faulty
losetup -d "$LOOP"
intact blk.img 0
}}
{each}dm_run
"#,
        lib = host_lib(&cmdline)
    );
    let host = host(300)?.with_host_bin("/usr/sbin/dmsetup");
    let host_run = run_on_kvm_host(&script, &host)?;
    for run in fault_runs(&host_run, modes)? {
        if !run.output.contains("@@FAULT-MADE@@") {
            return Err(run.error("dmsetup could not swap in the error table"));
        }
        run.expect_stopped(status, &["pmem0", "dm.dev"], cause)?
            .expect_intact()?;
    }
    Ok(())
}

/// A device-dax unbound under the monitor: L1's /dev/dax0.0 (an emulated NVDIMM) backs the
/// guest's pmem0; after the guest flushed its pattern, the host unbinds dax0.0 from its driver,
/// and the guest then touches pages it never touched before. The unbind must not hang, the
/// monitor must stop the guest naming pmem0 and the removed device, and the flushed pattern
/// must be in the NVDIMM's bytes (read here, from the file behind the emulated NVDIMM).
#[test]
fn devdax_unbound_under_the_guest() -> Result<()> {
    let dir = ScratchDir::new("fault-devdax")?;
    let nvdimm = Nvdimm::devdax(dir.path().join("dimm"), 256 * MIB);
    nvdimm.prepare()?;
    let dataoff = nvdimm.data_offset()?;
    let cmdline = guest_cmdline(&flush_then(
        "sleep 3; dd if=/dev/zero of=/dev/pmem0 bs=1M seek=64 count=32 oflag=direct 2>/dev/null",
    ))?;
    let script = format!(
        r#"{lib}
test -c "$NVDIMM0" || {{ echo "no device-dax at $NVDIMM0"; exit 1; }}
DAX=${{NVDIMM0#/dev/}}
ln -s "$NVDIMM0" dax.dev
start_vmm path=dax.dev,memmap=none
if waitmark flushed; then
    echo "$DAX" > /sys/bus/dax/devices/$DAX/driver/unbind &
    unbind=$!
    i=0
    while kill -0 $unbind 2>/dev/null && [ $i -lt 300 ]; do i=$((i + 1)); sleep 0.1; done
    if kill -0 $unbind 2>/dev/null; then echo "@@FAULT-UNBIND-HUNG@@"; else echo "@@FAULT-MADE@@"; fi
    wait_exit
fi
show_logs
"#,
        lib = host_lib(&cmdline)
    );
    let host = host(300)?.with_nvdimm(nvdimm.clone());
    let host_run = run_on_kvm_host(&script, &host)?;
    let runs = fault_runs(&host_run, DEFAULT_MODE)?;
    let run = &runs[0];
    if run.output.contains("@@FAULT-UNBIND-HUNG@@") {
        return Err(run.error("unbinding the device-dax under the monitor hung for 30 s"));
    }
    if !run.output.contains("@@FAULT-MADE@@") {
        return Err(run.error("the device-dax was not unbound"));
    }
    run.expect_stopped(
        EXIT_BACKING_FAULT,
        &["pmem0", "dax.dev"],
        &["device-dax", "removed"],
    )?;
    let got = std::fs::read(&nvdimm.backing).map_err(|e| run.error(e.to_string()))?;
    let at = dataoff as usize;
    if got.get(at..at + FLUSHED_LEN as usize) != Some(&pattern("flushed", FLUSHED_LEN as usize)[..])
    {
        return Err(run.error(format!(
            "the flushed pattern is not at {at:#x} of the NVDIMM's bytes"
        )));
    }
    Ok(())
}

/// Delays (seconds) after which the SIGKILL test kills a formatting vmm: from before the format
/// starts to after the guest started, densest where a nested start reaches the format.
const KILL_DELAYS: &[&str] = &[
    "0", "0.02", "0.05", "0.1", "0.15", "0.2", "0.25", "0.3", "0.35", "0.4", "0.5", "0.6", "0.7",
    "0.8", "1", "1.3", "1.6", "2", "3",
];

/// SIGKILL at any point of a format leaves the backing with its old info block or a valid new
/// one. In L1, a 64 MiB file gets an fsdax namespace (one run, killed once the guest started);
/// then for each delay in [`KILL_DELAYS`] the vmm reformats it (`mode=devdax,format=force`, then
/// back to fsdax, alternating, so every write changes the block) and is killed with SIGKILL
/// after that delay. The 4 KiB info block before and after each kill is copied out; each
/// after-block must equal its before-block or parse as a valid info block. Both outcomes must
/// occur (a kill before and a kill after the write), or the test proved nothing.
#[test]
fn sigkill_during_format_leaves_old_or_new_block() -> Result<()> {
    let share = ScratchDir::new("fault-format-kill")?;
    let cmdline = guest_cmdline("sleep 600")?;
    let delays = KILL_DELAYS.join(" ");
    let script = format!(
        r#"{lib}
truncate -s 64M ns.img || exit 1
block() {{ dd if=ns.img of="$1" bs=4096 skip=1 count=1 2>/dev/null; }}
# run_until_started SPEC: format and boot, kill once the guest started (the format is done)
run_until_started() {{
    start_vmm "$1"
    i=0
    while ! grep -q "guest started" vmm.log && kill -0 $pid 2>/dev/null && [ $i -lt 600 ]; do
        i=$((i + 1)); sleep 0.1
    done
    grep -q "guest started" vmm.log || {{ echo "@@FAULT-NO-START@@"; cat vmm.log; }}
    kill -KILL $pid; wait $pid
}}
run_until_started path=ns.img,mode=fsdax,format=force
n=0
mode=devdax
for d in {delays}; do
    n=$((n + 1))
    block "$SHARE/before-$n.bin"
    start_vmm path=ns.img,mode=$mode,format=force
    sleep $d
    kill -KILL $pid; wait $pid
    block "$SHARE/after-$n.bin"
    echo "@@FAULT-KILLED $n $d $mode@@"
    cmp -s "$SHARE/before-$n.bin" "$SHARE/after-$n.bin" || {{
        [ $mode = devdax ] && mode=fsdax || mode=devdax
    }}
done
echo "@@FAULT-KILLS $n@@"
"#,
        lib = host_lib(&cmdline)
    );
    let host = host(400)?.with_share(share.path());
    let run = run_on_kvm_host(&script, &host)?;
    eprintln!("{} host: run {:.2?}", run.mode, run.duration);
    run.expect_success()?;
    if run.output.contains("@@FAULT-NO-START@@") {
        return Err(run.error("the first format's guest never started"));
    }
    let kills: Option<usize> = last_marker(&run.output, "FAULT-KILLS");
    if kills != Some(KILL_DELAYS.len()) {
        return Err(run.error(format!(
            "the host made {kills:?} kills, expected {}",
            KILL_DELAYS.len()
        )));
    }
    let (mut old, mut new) = (0, 0);
    for n in 1..=KILL_DELAYS.len() {
        let read = |name: String| {
            std::fs::read(share.path().join(&name))
                .map_err(|e| run.error(format!("reading {name} from the share: {e}")))
        };
        let before = read(format!("before-{n}.bin"))?;
        let after = read(format!("after-{n}.bin"))?;
        if after == before {
            old += 1;
            continue;
        }
        match devices::pmem::infoblock::InfoBlock::parse(&after) {
            Ok(_) => new += 1,
            Err(e) => {
                return Err(run.error(format!(
                    "kill {n} (after {} s) left an info block that is neither the old one nor \
                     valid: {e}",
                    KILL_DELAYS[n - 1]
                )))
            }
        }
    }
    eprintln!("{old} kills left the old block, {new} a valid new one");
    if old == 0 || new == 0 {
        return Err(run.error(format!(
            "every kill fell on the same side of the write ({old} old, {new} new): the delays \
             do not bracket the format on this host"
        )));
    }
    Ok(())
}
