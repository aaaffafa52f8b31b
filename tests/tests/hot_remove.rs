//! NVDIMM hot-remove (`PUT /api/v1/vm.remove-device`, docs/hot-remove.md) driven with
//! `curl --unix-socket` against guests on the testbed.
//!
//! - `stock_guest_keeps_what_it_does_not_release`: a stock distribution kernel knows nothing of
//!   the eject request; the request times out with 409 "guest did not release pmem0", the device
//!   stays (`vm.info`), the guest keeps running and keeps writing to it, and what it wrote is on
//!   the backing after the run. An unknown id is a 404 and changes nothing.
//! - `our_guest_releases_what_it_does_not_use`: our guest kernel (patch 0004) refuses to release
//!   a pmem disk a shell holds open (plain `exec 3<`), a mounted fsdax namespace and an open
//!   device-dax instance, with the reason, gives its claims back at once (mkfs and mount work
//!   right after the first refusal) and releases them once closed or unmounted; the file written
//!   before the removal is on the backing when the API answers, `/proc/iomem`, the guest's
//!   regions, `ndctl list -N`, the pfn checker's registry, its range query for the device's
//!   guest-physical range (patch 0006: no valid pfn, online page or pgmap left) and `MemFree`
//!   (the memmap in RAM comes back) show the range gone, and the same backing added again
//!   (`format=keep`) holds the file and is back in each of them. The range query refuses twelve
//!   malformed requests with EINVAL.
//! - `every_device_goes_even_from_under_dax_load`: our guest with two boot-time devices (the raw
//!   control channel, fsdax) and three hot-added ones (devdax, raw, fsdax). A `daxio spin`
//!   MAP_SYNC write loop on a file of the mounted fsdax namespace and one on the open, mapped
//!   device-dax instance make those removals 409 with the guest's reason while the loops' round
//!   counters keep going; once they stop (every page read back) and the mount goes, both go
//!   (204). Then all the others, one with `ch-remote remove-device` (the raw device's bytes,
//!   written with `conv=fsync`, are on its backing), the control channel last: the guest has no
//!   pmem or dax device, no Persistent Memory in `/proc/iomem`, no region, an empty
//!   `ndctl list -RN`, and `vm.info` says `pmem: []`, Running. A device added then works, and
//!   the bytes the guest wrote to it are on its backing although the monitor was SIGKILLed as
//!   soon as its removal was answered.
//!
//! The host scripts of the tests with our kernel bound every wait and stop at once, with
//! `@@NO <step>@@` and the tails of the console and the monitor's log, when the guest reports a
//! step it could not do, the monitor exits or the VM stops (`guest_lib`); the guest bounds its
//! own waits the same way (`GUEST_SCRIPT`). The tests name the step that did not happen.
//!
//! These need KVM (direct) or QEMU (nested) and fail, never skip, when neither is available
//! (`scripts_parse` only checks that the scripts parse, on this machine).

use std::path::PathBuf;
use std::time::Duration;

use testbed::markers::marker_values;
use testbed::{run_on_kvm_host, Error, HostOpts, HostRun, ScratchDir, StockStaging};

fn curl() -> PathBuf {
    let p = PathBuf::from("/usr/bin/curl");
    assert!(
        p.is_file(),
        "curl is needed (apt-get install curl; scripts/install-deps.sh installs it)"
    );
    p
}

/// The shell functions every script here uses: `req NAME ENDPOINT [BODY]` prints the status
/// code of a PUT and leaves the answer in NAME.out; `get ENDPOINT` prints a GET's answer (both
/// give up after 200 s, longer than any request's `timeout_ms` here); `waitfor PATTERN FILE
/// TRIES` polls FILE for PATTERN every 0.25 s.
fn script_lib(curl: &std::path::Path) -> String {
    format!(
        r#"
req() {{ {curl} -s -m 200 -o "$1.out" -w '%{{http_code}}' --unix-socket "$WORK/api.sock" -X PUT -H 'Content-Type: application/json' --data-binary "${{3:-}}" "http://localhost/api/v1/$2"; }}
get() {{ {curl} -s -m 200 --unix-socket "$WORK/api.sock" "http://localhost/api/v1/$1"; }}
waitfor() {{ i=0; while ! grep -q "$1" "$2" 2>/dev/null && [ $i -lt $3 ]; do sleep 0.25; i=$((i+1)); done; grep -q "$1" "$2" 2>/dev/null; }}
"#,
        curl = curl.display()
    )
}

/// The host side of [`GUEST_SCRIPT`]'s command channel, on top of [`script_lib`], for a script
/// that started the monitor as `$pid` with the guest's console in `console.log`:
/// `setcmd WORD` writes the guest's next command into the control device's backing;
/// `alive` says whether the monitor runs (`kill -0` alone also succeeds for a zombie the shell
/// has not reaped); `die WHAT` prints `@@NO WHAT@@` with the tails of the console and the
/// monitor's log, kills the monitor and ends the script; `waitg PATTERN WHAT [SECONDS]` waits
/// for PATTERN on the console, at most SECONDS (300), and dies at once when the guest reports a
/// step it could not do (`@@NO G-...@@`), the monitor exits or `vm.info` (every 5 s) says the
/// VM is not running; `step WORD PATTERN` sends a command and waits for the guest's marker.
fn guest_lib(curl: &std::path::Path) -> String {
    format!(
        r#"{lib}
setcmd() {{ printf '%-16s' "$1" | tr ' ' '\000' | dd of=ctl.img bs=16 count=1 conv=notrunc 2>/dev/null; }}
alive() {{ kill -0 $pid 2>/dev/null && ! grep -q zombie /proc/$pid/status 2>/dev/null; }}
die() {{
  echo "@@NO $1@@"
  echo "--- console (tail) ---"; tail -n 25 console.log
  echo "--- vmm log (tail) ---"; tail -n 25 vmm.log
  kill -9 $pid 2>/dev/null; exit 1
}}
waitg() {{
  i=0; lim=$(( ${{3:-300}} * 4 ))
  while ! grep -q -e "$1" console.log 2>/dev/null; do
    g=$(grep -o '@@NO G-[^@]*' console.log | head -n 1)
    [ -n "$g" ] && die "$2: the guest could not do ${{g#@@NO }}"
    alive || {{ wait $pid; die "$2: the monitor exited with status $?"; }}
    if [ $((i % 20)) = 19 ]; then
      st=$(get vm.info | tr -d ' \n' | grep -o '"state":"[A-Za-z]*"')
      [ "$st" = '"state":"Running"' ] || die "$2: the VM is not running (vm.info: ${{st:-no state}} $(get vm.info | tr -d ' \n' | grep -o '"last_stop":[^,]*'))"
    fi
    [ $((i % 120)) = 119 ] && echo "waiting for $2: $(( (i + 1) / 4 )) s"
    [ $i -ge $lim ] && die "$2 (not within ${{3:-300}} s)"
    sleep 0.25; i=$((i+1))
  done
}}
step() {{ setcmd "$1"; waitg "$2" "$1"; }}
"#,
        lib = script_lib(curl)
    )
}

/// The first step a [`guest_lib`] script or [`GUEST_SCRIPT`] could not do (`@@NO WHAT@@`), as
/// an error that names it.
fn missed_step(run: &HostRun) -> testbed::Result<()> {
    match marker_values(&run.output, "NO").first() {
        Some(what) => Err(run.error(format!("the run stopped at {what} (@@NO@@)"))),
        None => Ok(()),
    }
}

/// A stock kernel does not answer the eject request: 409 after the timeout, nothing lost.
#[test]
fn stock_guest_keeps_what_it_does_not_release() -> testbed::Result<()> {
    let curl = curl();
    // The guest writes a numbered beat to the start of the raw namespace every second and
    // makes it durable (the flush hint), and prints it with the pmem devices it sees.
    let script = format!(
        r#"
set -u
{lib}
cat > vm.json <<EOF
{{"payload":{{"kernel":"$STOCK_KERNEL","initramfs":"$STOCK_INITRAMFS",
  "cmdline":"console=ttyS0 quiet panic=-1 -- \"n=0; while sleep 1; do n=\$((n+1)); printf BEAT-%06d \$n | dd of=/dev/pmem0 conv=fsync 2>/dev/null; echo BEAT \$n DEVS: \$(ls /dev | grep pmem) END; done\""}},
 "cpus":{{"boot_vcpus":1,"max_vcpus":1}},"memory":{{"size":1073741824}},
 "pmem":[{{"file":"$WORK/a.img","size":268435456,"id":"pmem0","mode":"raw"}}],
 "serial":{{"mode":"File","file":"$WORK/console.log"}}}}
EOF
"$VMM" --api-socket path="$WORK/api.sock" 2> vmm.log &
pid=$!
i=0; while [ ! -S api.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
echo "@@CREATE $(req create vm.create "$(cat vm.json)")@@"
echo "@@BOOT $(req boot vm.boot)@@"
waitfor 'DEVS: pmem0 END' console.log 1200 || echo "@@NO-BEAT@@"
echo "@@UNKNOWN $(req unknown vm.remove-device '{{"id":"pmem9"}}') $(cat unknown.out)@@"
t0=$(cut -d' ' -f1 /proc/uptime)
echo "@@REMOVE $(req remove vm.remove-device '{{"id":"pmem0","timeout_ms":3000}}') $(cat remove.out)@@"
t1=$(cut -d' ' -f1 /proc/uptime)
echo "@@REMOVE-SECONDS $(echo "$t0 $t1" | awk '{{print $2 - $1}}')@@"
last=$(grep -o 'BEAT [0-9]*' console.log | tail -n 1 | cut -d' ' -f2)
echo "@@BEAT-AT-REMOVE $last@@"
want=$((last + 3))
waitfor "BEAT $want DEVS: pmem0 END" console.log 1200 && echo "@@ALIVE-AFTER@@"
echo "@@INFO $(get vm.info)@@"
echo "@@EXIT-VMM $(req exit vmm.shutdown)@@"
wait $pid
echo "@@VMM-EXIT $?@@"
echo "@@ON-HOST $(head -c 11 a.img)@@"
echo "--- console ---"; tail -n 5 console.log; echo "--- vmm ---"; cat vmm.log
"#,
        lib = script_lib(&curl),
    );
    let mut host = HostOpts::default()
        .with_host_bin(curl)
        .with_timeout(Duration::from_secs(300));
    host.stock_kernel = StockStaging::BzImage;
    let run = run_on_kvm_host(&script, &host)?;
    eprintln!(
        "{} host: run {:.2?}\n{}",
        run.mode, run.duration, run.output
    );
    run.expect_success()?;
    run.expect_markers(&[
        ("CREATE", "204"),
        ("BOOT", "204"),
        (
            "UNKNOWN",
            "404 [\"vm.remove-device: no device with id \\\"pmem9\\\"",
        ),
        ("REMOVE", "409 [\"guest did not release pmem0 within 3s"),
        ("EXIT-VMM", "204"),
        ("VMM-EXIT", "0"),
    ])?;
    let value = |m: &str| marker_values(&run.output, m).first().map(|s| s.to_string());
    if run.output.contains("@@NO-BEAT@@") || !run.output.contains("@@ALIVE-AFTER@@") {
        return Err(run.error("the guest did not keep writing to pmem0 after the request"));
    }
    // The request waited for its timeout, not much longer.
    let seconds: f64 = value("REMOVE-SECONDS")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| run.error("no REMOVE-SECONDS"))?;
    if !(2.9..8.0).contains(&seconds) {
        return Err(run.error(format!("the refusal took {seconds} s, expected about 3")));
    }
    // vm.info still lists the device.
    let info: serde_json::Value = serde_json::from_str(value("INFO").unwrap_or_default().trim())
        .map_err(|e| run.error(format!("vm.info is not JSON: {e}")))?;
    if info["state"] != "Running" || info["pmem"][0]["id"] != "pmem0" {
        return Err(run.error(format!("vm.info after the refusal: {info}")));
    }
    // The guest's last beat (written after the refusal) is on the host backing.
    let at_remove: u64 = value("BEAT-AT-REMOVE")
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| run.error("no BEAT-AT-REMOVE"))?;
    let on_host: u64 = value("ON-HOST")
        .and_then(|s| s.trim().strip_prefix("BEAT-").and_then(|n| n.parse().ok()))
        .ok_or_else(|| run.error("no beat on the host backing"))?;
    if on_host < at_remove + 3 {
        return Err(run.error(format!(
            "the backing holds beat {on_host}, the guest had written {} after the refusal",
            at_remove + 3
        )));
    }
    Ok(())
}

/// The guest side of the tests with our kernel: the host writes a command word to the start of
/// the boot-time raw device (`/dev/pmem0`, the control channel); the guest runs each new word
/// once and reports with `@@G-...@@` markers. Every wait in it is bounded (`W` half-seconds, with
/// a counter) and prints `@@NO G-<what>@@` and the kernel log's tail when it runs out; so does
/// the command loop when no new command comes for as long, and the script then ends (the guest
/// powers off, which the host notices).
///
/// Commands of `our_guest_releases_what_it_does_not_use`: for the first hot-added fsdax
/// namespace MOUNT, UMOUNT, CHECK, OPENDISK and CLOSEDISK (a plain `exec 3<` of its disk, and the
/// close), RANGE<tag> (the pfn checker's range query for its guest-physical range, remembered
/// for after it is gone); BADRANGES (requests the range query refuses, then a 1 TiB one); HOLD,
/// RELEASE (the first device-dax instance); S<tag> (state).
/// Of `every_device_goes_even_from_under_dax_load`: FIVE (waits for five devices), FSLOAD and
/// DAXLOAD (a `daxio spin` MAP_SYNC write loop on a file of the mounted first fsdax namespace,
/// on the first device-dax instance, in the background), ROUNDS<tag> (their round counters),
/// HALT (stops both, unmounts), WRITE (random bytes to the first raw namespace that is not
/// pmem0, `conv=fsync`, and their md5), LAST (leaves the loop, so the control device is no
/// longer opened, and goes on alone: waits until no pmem or dax device is left and reports, then
/// writes random bytes to the next device the host adds and reports their md5).
const GUEST_SCRIPT: &str = r#"#!/bin/sh
mkdir -p /mnt
W=480
cmd() { blockdev --flushbufs /dev/pmem0 2>/dev/null || echo 1 > /proc/sys/vm/drop_caches; dd if=/dev/pmem0 bs=16 count=1 2>/dev/null | tr -cd 'A-Z'; }
hot() { ls /dev | grep -e '^pmem[1-9]' | head -n 1; }
dax() { ls /dev | grep -e '^dax' | head -n 1; }
devs() { ls /dev | grep -e '^pmem' -e '^dax' | tr '\n' ' '; }
ndevs() { ls /dev | grep -c -e '^pmem' -e '^dax'; }
# rawdev: the first raw namespace's disk but the control device (its device is the namespace,
# not a pfn or btt device)
rawdev() { for d in $(ls /dev | grep -e '^pmem[1-9]'); do case "$(readlink /sys/block/$d/device)" in */namespace*) echo $d; return ;; esac; done; }
iomem() { grep -c 'Persistent Memory' /proc/iomem; }
regions() { ls /sys/bus/nd/devices | grep -c region; }
# checked: namespaces the kernel's pfn checker has registered (debugfs); ns: ndctl's namespaces
checked() { grep -q ' /sys/kernel/debug ' /proc/mounts || mount -t debugfs debugfs /sys/kernel/debug; wc -l < /sys/kernel/debug/nvdimm-pfn-check/devices; }
nss() { ndctl list -N 2>/dev/null | grep -c '"dev"'; }
state() { echo "@@G-STATE $1 pmem=$(hot) dax=$(dax) iomem=$(iomem) regions=$(regions) checked=$(checked) ns=$(nss) memfree=$(grep MemFree /proc/meminfo | tr -s ' ' | cut -d' ' -f2)@@"; }
no() { echo "@@NO G-$1@@"; dmesg | tail -n 15 | sed 's/^/KMSG /'; }
# the pfn checker's range query (write "START SIZE" in hex, read one line back)
R=/sys/kernel/debug/nvdimm-pfn-check/range
# range TAG: its answer for the first hot-added fsdax namespace's guest-physical range, read from
# the namespace's region while there is one and remembered for after the region is gone
range() {
  checked > /dev/null
  d=$(hot)
  if [ -n "$d" ]; then r=$(dirname "$(readlink -f /sys/block/$d/device)"); echo "$(cat $r/resource) $(printf '%x' $(cat $r/size))" > /tmp/range; fi
  [ -s /tmp/range ] || { no "$1 (no range known)"; return; }
  echo "$(cat /tmp/range)" > $R && echo "@@G-RANGE $1 $(cat $R)@@" || no "$1 (range $(cat /tmp/range))"
}
# badranges: requests the range query must refuse with EINVAL (empty, not hex, one number, zero
# size, start or size not page aligned, wrapping, too big a number, extra tokens, a sign, a bare
# 0x), then what is left to read (nothing), then a 1 TiB range (2^19 subsections)
badranges() {
  n=0; acc=""
  for q in '' 'zz 1000' '1000' '1000 0' '1001 1000' '1000 1001' 'fffffffffffff000 1000' '10000000000000000 1000' '1000 1000 1000' '-1000 1000' '1000 +1000' '0x 1000'; do
    if (echo "$q" > $R) 2>/tmp/e; then acc="$acc($q)"; elif grep -q 'Invalid argument' /tmp/e; then n=$((n+1)); else acc="$acc($q: $(cat /tmp/e))"; fi
  done
  left=$(cat $R)
  echo '0x0 0x10000000000' > $R && echo "@@G-BADRANGES refused=$n accepted=[$acc] left=[$left] big: $(cat $R)@@" || no "BADRANGES (1 TiB)"
}
# the write loops: running while their output has no end line yet
running() { for l in fs dax; do [ -f /tmp/out-$l ] && ! grep -q DAXIO-SPIN /tmp/out-$l && echo $l; done; }
rounds() { echo "fs=$(cat /tmp/cnt-fs 2>/dev/null) dax=$(cat /tmp/cnt-dax 2>/dev/null) running=$(running | tr '\n' ,)"; }
spin() { rm -f /tmp/stop-$1 /tmp/out-$1 /tmp/cnt-$1; daxio spin $2 2097152 /tmp/stop-$1 400 /tmp/cnt-$1 > /tmp/out-$1 & i=0; while [ ! -s /tmp/cnt-$1 ] && [ $i -lt $W ]; do sleep 0.5; i=$((i+1)); done; sleep 1; [ -s /tmp/cnt-$1 ]; }
# alone: after LAST
alone() {
  i=0; while [ "$(ndevs)" != 0 ] && [ $i -lt $W ]; do sleep 0.5; i=$((i+1)); done
  [ "$(ndevs)" = 0 ] || { no "ALL-GONE (still: $(devs))"; return; }
  echo "@@G-NONE devs=[$(devs)] daxbus=[$(ls /sys/bus/dax/devices 2>/dev/null | tr '\n' ' ')] iomem=$(iomem) regions=$(regions) ndctl=[$(ndctl list -RN 2>&1 | tr -d ' \n')]@@"
  i=0; while [ "$(ndevs)" = 0 ] && [ $i -lt $W ]; do sleep 0.5; i=$((i+1)); done
  d=$(ls /dev | grep -e '^pmem' | head -n 1)
  [ -b "/dev/$d" ] || { no "NEW-DEVICE (devices: $(devs))"; return; }
  dd if=/dev/urandom of=/tmp/last bs=1M count=4 2>/dev/null
  dd if=/tmp/last of=/dev/$d bs=1M conv=fsync 2>/dev/null && echo "@@G-NEW $d $(md5sum < /tmp/last | cut -d' ' -f1) iomem=$(iomem)@@"
  i=0; while [ -e "/dev/$d" ] && [ $i -lt $W ]; do sleep 0.5; i=$((i+1)); done
  echo "@@G-NEW-GONE $(devs)@@"
  sleep 120
}
last=""
n=0
echo @@G-READY@@
while [ $n -lt $W ]; do
  sleep 0.5; n=$((n+1))
  c=$(cmd)
  [ -z "$c" ] && continue
  [ "$c" = "$last" ] && continue
  last=$c; n=0
  case "$c" in
    MOUNT) d=$(hot); mkfs.ext4 -q -F -b 4096 /dev/$d && mount -o dax /dev/$d /mnt && echo HOTDATA-4242 > /mnt/f && sync && echo "@@G-MOUNTED $d@@" || no "MOUNT ($d)" ;;
    OPENDISK) d=$(hot); exec 3</dev/$d && echo "@@G-OPENDISK $d@@" ;;
    CLOSEDISK) exec 3<&- && echo @@G-CLOSEDISK@@ ;;
    RANGE*) range $c ;;
    BADRANGES) badranges ;;
    UMOUNT) umount /mnt && echo @@G-UMOUNTED@@ ;;
    CHECK) d=$(hot); mount -o dax /dev/$d /mnt && echo "@@G-READ $(cat /mnt/f)@@"; umount /mnt ;;
    HOLD) exec 3</dev/$(dax) && echo "@@G-HOLD $(dax)@@" ;;
    RELEASE) exec 3<&- && echo @@G-RELEASED@@ ;;
    FIVE) i=0; while [ "$(ndevs)" != 5 ] && [ $i -lt $W ]; do sleep 0.5; i=$((i+1)); done
      if [ "$(ndevs)" = 5 ]; then echo "@@G-FIVE devs=$(devs) iomem=$(iomem) regions=$(regions)@@"; else no "FIVE (devices: $(devs))"; fi ;;
    FSLOAD) d=$(hot); mkfs.ext4 -q -F -b 4096 /dev/$d && mount -o dax /dev/$d /mnt && spin fs /mnt/f && echo "@@G-FSLOAD $d $(rounds)@@" || no "FSLOAD ($d: $(cat /tmp/out-fs 2>/dev/null))" ;;
    DAXLOAD) d=$(dax); spin dax /dev/$d && echo "@@G-DAXLOAD $d $(rounds)@@" || no "DAXLOAD ($d: $(cat /tmp/out-dax 2>/dev/null))" ;;
    ROUNDS*) echo "@@G-ROUNDS $c $(rounds)@@" ;;
    HALT) touch /tmp/stop-fs /tmp/stop-dax; i=0; while [ -n "$(running)" ] && [ $i -lt $W ]; do sleep 0.5; i=$((i+1)); done
      if [ -n "$(running)" ]; then no "HALT (still running: $(running))"; else umount /mnt && echo "@@G-HALTED $(sed 's/@@//g' /tmp/out-fs /tmp/out-dax | tr '\n' ' ')@@"; fi ;;
    WRITE) d=$(rawdev); dd if=/dev/urandom of=/tmp/w bs=1M count=4 2>/dev/null; dd if=/tmp/w of=/dev/$d bs=1M conv=fsync 2>/dev/null && echo "@@G-WROTE $d $(md5sum < /tmp/w | cut -d' ' -f1)@@" || no "WRITE ($d)" ;;
    LAST) echo @@G-LAST@@; alone; exit 0 ;;
    S*) state $c ;;
  esac
  dmesg | grep -e eject -e nfit -e 'new nfit' | sed 's/^/KMSG /' > /tmp/k.new
  if [ -f /tmp/k.old ]; then grep -vxF -f /tmp/k.old /tmp/k.new; else cat /tmp/k.new; fi
  mv /tmp/k.new /tmp/k.old
done
no "COMMAND (none for $((W / 2)) s)"
"#;

/// Our guest kernel releases an NVDIMM nothing uses and refuses one something holds.
#[test]
fn our_guest_releases_what_it_does_not_use() -> testbed::Result<()> {
    let curl = curl();
    let scratch = ScratchDir::new("hot-remove")?;
    let guest_script = scratch.path().join("hr.sh");
    std::fs::write(&guest_script, GUEST_SCRIPT).map_err(|e| Error::setup(e.to_string()))?;
    let initramfs = testbed::policy_checks::guest_initramfs()?
        .with_file(&guest_script, "/hr.sh")
        .with_file("/etc/mke2fs.conf", "/etc/mke2fs.conf");
    let script = format!(
        r#"
set -u
{lib}
cat > vm.json <<JSON
{{"payload":{{"kernel":"$KERNEL","initramfs":"$INITRAMFS",
  "cmdline":"console=ttyS0 quiet panic=-1 -- \"sh /hr.sh\""}},
 "cpus":{{"boot_vcpus":2,"max_vcpus":2}},"memory":{{"size":1073741824}},
 "pmem":[{{"file":"$WORK/ctl.img","size":16777216,"id":"ctl","mode":"raw"}}],
 "serial":{{"mode":"File","file":"$WORK/console.log"}}}}
JSON
"$VMM" --api-socket path="$WORK/api.sock" 2> vmm.log &
pid=$!
i=0; while [ ! -S api.sock ]; do alive || die "API-SOCKET: the monitor exited"; [ $i -ge 100 ] && die "API-SOCKET (10 s)"; sleep 0.1; i=$((i+1)); done
echo "@@CREATE $(req create vm.create "$(cat vm.json)")@@"
echo "@@BOOT $(req boot vm.boot)@@"
waitg '@@G-READY@@' READY
step SA '@@G-STATE SA'
echo "@@ADD-A $(req adda vm.add-pmem '{{"file":"'$WORK'/a.img","size":536870912,"id":"hot-a","mode":"fsdax","memmap":"ram"}}')@@"
sleep 3
step SB '@@G-STATE SB'
step RANGEB '@@G-RANGE RANGEB'
step BADRANGES '@@G-BADRANGES'
step OPENDISK '@@G-OPENDISK'
echo "@@REMOVE-OPEN-DISK $(req rm0 vm.remove-device '{{"id":"hot-a","timeout_ms":60000}}') $(cat rm0.out)@@"
step CLOSEDISK '@@G-CLOSEDISK@@'
# mkfs and mount claim the disk: the refusal gave its claim back
step MOUNT '@@G-MOUNTED'
echo "@@REMOVE-MOUNTED $(req rm1 vm.remove-device '{{"id":"hot-a","timeout_ms":60000}}') $(cat rm1.out)@@"
step UMOUNT '@@G-UMOUNTED@@'
echo "@@REMOVE-UNMOUNTED $(req rm2 vm.remove-device '{{"id":"hot-a","timeout_ms":60000}}') $(cat rm2.out)@@"
# Without its zero bytes: busybox grep reads a 512 MiB image of mostly zeros as one line (31 s
# natively on the 2-core machine, about 9 minutes in L1; 2 s natively through tr).
echo "@@ON-HOST-AT-ANSWER $(tr -d '\000' < a.img | grep -c HOTDATA-4242)@@"
sleep 2
step SC '@@G-STATE SC'
step RANGEC '@@G-RANGE RANGEC'
echo "@@INFO-GONE $(get vm.info)@@"
echo "@@ADD-A-AGAIN $(req adda2 vm.add-pmem '{{"file":"'$WORK'/a.img","id":"hot-a","mode":"fsdax","memmap":"ram","format":"keep"}}') $(cat adda2.out)@@"
sleep 3
step SD '@@G-STATE SD'
step RANGED '@@G-RANGE RANGED'
step CHECK '@@G-READ'
echo "@@ADD-C $(req addc vm.add-pmem '{{"file":"'$WORK'/c.img","size":268435456,"id":"hot-c","mode":"devdax","memmap":"ram"}}')@@"
sleep 3
step HOLD '@@G-HOLD'
echo "@@REMOVE-OPEN $(req rm3 vm.remove-device '{{"id":"hot-c","timeout_ms":60000}}') $(cat rm3.out)@@"
step RELEASE '@@G-RELEASED@@'
echo "@@REMOVE-CLOSED $(req rm4 vm.remove-device '{{"id":"hot-c","timeout_ms":60000}}') $(cat rm4.out)@@"
sleep 2
step SE '@@G-STATE SE'
echo "@@COUNTERS $(get vm.counters)@@"
echo "@@EXIT-VMM $(req exit vmm.shutdown)@@"
wait $pid
echo "@@VMM-EXIT $?@@"
echo "--- console ---"; cat console.log; echo "--- vmm ---"; cat vmm.log
"#,
        lib = guest_lib(&curl),
    );
    let host = HostOpts::default()
        .with_initramfs(initramfs)
        .with_host_bin(curl)
        .with_timeout(Duration::from_secs(900));
    let run = run_on_kvm_host(&script, &host)?;
    eprintln!(
        "{} host: run {:.2?}\n{}",
        run.mode, run.duration, run.output
    );
    missed_step(&run)?;
    run.expect_success()?;
    let value = |m: &str| marker_values(&run.output, m).first().map(|s| s.to_string());
    let expect = |m: &str, want: &str| run.expect_marker(m, want);
    expect("CREATE", "204")?;
    expect("BOOT", "204")?;
    expect("ADD-A", "200")?;
    // A plain open of the disk (not a mount) is a use too; the refusal gives the claim of the
    // disk back at once: mkfs and mount (exclusive opens) work right after the close.
    let open_disk = expect("G-OPENDISK", "pmem")?;
    expect(
        "REMOVE-OPEN-DISK",
        &format!("409 [\"guest refused to release hot-a: {open_disk} is open (_OST status 0x81)"),
    )?;
    expect("G-CLOSEDISK", "")?;
    expect("G-MOUNTED", &open_disk)?;
    expect(
        "REMOVE-MOUNTED",
        "409 [\"guest refused to release hot-a: pmem1 is mounted or claimed (_OST status 0x81)",
    )?;
    expect("REMOVE-UNMOUNTED", "204")?;
    // The file the guest wrote (and synced) before the removal is on the backing when the API
    // answers: the monitor flushed it before it answered.
    let on_host: u32 = expect("ON-HOST-AT-ANSWER", "")?.trim().parse().unwrap_or(0);
    if on_host == 0 {
        return Err(run.error("the guest's file is not on the backing after the 204"));
    }
    expect("ADD-A-AGAIN", "200")?;
    expect("G-READ", "HOTDATA-4242")?;
    expect("ADD-C", "200")?;
    expect("REMOVE-OPEN", "409 [\"guest refused to release hot-c: dax")?;
    expect("REMOVE-CLOSED", "204")?;
    expect("EXIT-VMM", "204")?;
    expect("VMM-EXIT", "0")?;
    // vm.info after the first removal: only the control device.
    let info: serde_json::Value =
        serde_json::from_str(value("INFO-GONE").unwrap_or_default().trim())
            .map_err(|e| run.error(format!("vm.info is not JSON: {e}")))?;
    if info["pmem"].as_array().map(Vec::len) != Some(1) || info["pmem"][0]["id"] != "ctl" {
        return Err(run.error(format!("vm.info after the removal: {info}")));
    }
    // The guest's view: SA before any add, SB with hot-a, SC after its removal, SD with it back,
    // SE after hot-c's removal.
    let state = |tag: &str| -> testbed::Result<State> {
        let s = value(&format!("G-STATE {tag}"))
            .ok_or_else(|| run.error(format!("no G-STATE {tag}")))?;
        State::parse(&s).ok_or_else(|| run.error(format!("G-STATE {tag}: {s}")))
    };
    let (sa, sb, sc, sd, se) = (
        state("SA")?,
        state("SB")?,
        state("SC")?,
        state("SD")?,
        state("SE")?,
    );
    eprintln!("guest states: SA {sa:?}\nSB {sb:?}\nSC {sc:?}\nSD {sd:?}\nSE {se:?}");
    let same_as_before = |s: &State| {
        s.pmem.is_empty() && s.dax.is_empty() && s.iomem == sa.iomem && s.regions == sa.regions
    };
    // The pfn checker's registry and ndctl's namespaces follow the device: one more with hot-a,
    // back to the start once it is removed, one more again once it is back.
    let counts = |s: &State| (s.checked, s.ns);
    let one_more = (sa.checked + 1, sa.ns + 1);
    if counts(&sb) != one_more || counts(&sc) != counts(&sa) || counts(&sd) != one_more {
        return Err(run.error(format!(
            "(checker registrations, ndctl namespaces) before {:?}, with hot-a {:?}, after its \
             removal {:?}, with it again {:?}",
            counts(&sa),
            counts(&sb),
            counts(&sc),
            counts(&sd)
        )));
    }
    if sb.pmem.is_empty() || sb.iomem <= sa.iomem || sb.regions != sa.regions + 1 {
        return Err(run.error(format!("hot-a added: {sb:?} (before: {sa:?})")));
    }
    if !same_as_before(&sc) {
        return Err(run.error(format!("after hot-a's removal: {sc:?} (before: {sa:?})")));
    }
    if sd.pmem.is_empty() || sd.regions != sa.regions + 1 {
        return Err(run.error(format!("hot-a added again: {sd:?}")));
    }
    // hot-c came and went: the guest is as with hot-a alone.
    if se.pmem != sd.pmem || !se.dax.is_empty() || se.iomem != sd.iomem || se.regions != sd.regions
    {
        return Err(run.error(format!("after hot-c's removal: {se:?} (before: {sd:?})")));
    }
    // The pfn checker's range query for hot-a's guest-physical range: every pfn valid with a
    // pgmap while it is there, nothing at all (no struct page, no online page, no pgmap) once it
    // is removed, and all back with it; asked per 2 MiB subsection.
    let range = |tag: &str| -> testbed::Result<RangeAnswer> {
        let s = value(&format!("G-RANGE {tag}"))
            .ok_or_else(|| run.error(format!("no G-RANGE {tag}")))?;
        RangeAnswer::parse(&s).ok_or_else(|| run.error(format!("G-RANGE {tag}: {s}")))
    };
    let (rb, rc, rd) = (range("RANGEB")?, range("RANGEC")?, range("RANGED")?);
    eprintln!("range query: with hot-a {rb:?}\nremoved {rc:?}\nagain {rd:?}");
    let present = |r: &RangeAnswer| {
        r.size == 512 << 20
            && r.pfns == r.size / 4096
            && r.valid == r.pfns
            && r.pgmap > 0
            && r.steps == r.size.div_ceil(2 << 20)
    };
    if !present(&rb) || !present(&rd) {
        return Err(run.error(format!(
            "hot-a's range while it is there: {rb:?}, added again: {rd:?}"
        )));
    }
    if (rc.start, rc.size, rc.pfns) != (rb.start, rb.size, rb.pfns)
        || (rc.valid, rc.online, rc.pgmap) != (0, 0, 0)
    {
        return Err(run.error(format!(
            "after hot-a's removal its range {:#x}+{:#x} still has struct pages, online pages or \
             a pgmap: {rc:?}",
            rb.start, rb.size
        )));
    }
    // Bad requests fail with EINVAL and leave nothing to read; 1 TiB is 2^19 subsections.
    let bad = expect("G-BADRANGES", "refused=")?;
    let big = RangeAnswer::parse(bad.split("big:").nth(1).unwrap_or_default())
        .ok_or_else(|| run.error(format!("no 1 TiB answer in {bad:?}")))?;
    eprintln!("range query of 1 TiB: {big:?}");
    if !bad.starts_with("refused=12 accepted=[] left=[]")
        || (big.pfns, big.steps) != (1 << 28, 1 << 19)
    {
        return Err(run.error(format!("the range query's bad requests: {bad}")));
    }
    // memmap=ram: 512 MiB of pmem has 8 MiB of struct pages in RAM, which the removal frees.
    // The mkfs, mount and umount in between move the page cache by a few MiB either way (two
    // runs measured +12.2 and +6.6 MiB), so half the memmap is the bar.
    if sc.memfree_kb < sb.memfree_kb + 4 * 1024 {
        return Err(run.error(format!(
            "MemFree did not get the memmap back: {} KiB with hot-a, {} KiB after its removal",
            sb.memfree_kb, sc.memfree_kb
        )));
    }
    Ok(())
}

/// Every device goes, one after another, two of them from under a DAX write load: a guest with
/// two boot-time devices and three hot-added ones, of all modes, where a MAP_SYNC write loop on
/// a file of a mounted fsdax namespace and one on a device-dax instance make the removals of
/// those two answer 409 with the guest's reason while the loops keep going; once they stop and
/// the mount goes, everything is removed (one device with `ch-remote remove-device`, the
/// control channel last), after which the guest has no NVDIMM left anywhere and `vm.info` none;
/// a device added then works, and the bytes the guest wrote to it are on the backing although
/// the monitor is SIGKILLed as soon as its removal is answered.
#[test]
fn every_device_goes_even_from_under_dax_load() -> testbed::Result<()> {
    let curl = curl();
    let ch = testbed::nested::visible_in_l1(&testbed::config::ch_remote()?, "ch-remote")
        .map_err(Error::setup)?;
    let scratch = ScratchDir::new("hot-remove-all")?;
    let guest_script = scratch.path().join("hr.sh");
    std::fs::write(&guest_script, GUEST_SCRIPT).map_err(|e| Error::setup(e.to_string()))?;
    let initramfs = testbed::policy_checks::guest_initramfs()?
        .with_file(&guest_script, "/hr.sh")
        .with_file("/etc/mke2fs.conf", "/etc/mke2fs.conf");
    let script = every_device_script(&curl, &ch);
    let host = HostOpts::default()
        .with_initramfs(initramfs)
        .with_host_bin(curl)
        .with_host_bin(ch.clone())
        .with_timeout(Duration::from_secs(600));
    let run = run_on_kvm_host(&script, &host)?;
    eprintln!(
        "{} host: run {:.2?}\n{}",
        run.mode, run.duration, run.output
    );
    missed_step(&run)?;
    run.expect_success()?;
    let value = |m: &str| marker_values(&run.output, m).first().map(|s| s.to_string());
    let expect = |m: &str, want: &str| run.expect_marker(m, want);
    // `key=value` words of a marker.
    let field = |s: &str, k: &str| testbed::word_value(s, k).map(str::to_string);
    let count = |s: &str, k: &str| -> testbed::Result<u64> {
        field(s, k)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| run.error(format!("no {k}= count in {s:?}")))
    };
    for m in ["CREATE", "BOOT"] {
        expect(m, "204")?;
    }
    for m in ["ADD-DAX", "ADD-RAW", "ADD-FS"] {
        expect(m, "200")?;
    }
    let five = expect("G-FIVE", "devs=")?;
    if count(&five, "iomem")? != 5 || count(&five, "regions")? != 5 {
        return Err(run.error(format!("the guest with five devices: {five}")));
    }

    // Under load: refused with the guest's reason, the loops going on through the refusal.
    let fsload = expect("G-FSLOAD", "fs=")?;
    let daxload = expect("G-DAXLOAD", "dax=")?;
    let fs_disk = fsload.split_whitespace().next().unwrap_or_default();
    let dax_dev = daxload.split_whitespace().next().unwrap_or_default();
    expect(
        "REMOVE-MOUNTED",
        &format!("409 [\"guest refused to release bfs: {fs_disk} is mounted or claimed (_OST status 0x81)"),
    )?;
    expect(
        "REMOVE-MAPPED",
        &format!(
            "409 [\"guest refused to release hdax: {dax_dev} is open or mapped (_OST status 0x81)"
        ),
    )?;
    let after = expect("G-ROUNDS", "ROUNDSA")?;
    let (fs0, fs1, fs2) = (
        count(&fsload, "fs")?,
        count(&daxload, "fs")?,
        count(&after, "fs")?,
    );
    let (dax1, dax2) = (count(&daxload, "dax")?, count(&after, "dax")?);
    eprintln!("write loop rounds: fsdax {fs0} -> {fs1} -> {fs2}, devdax {dax1} -> {dax2}");
    if !(fs0 > 0 && fs1 > fs0 && fs2 > fs1 && dax1 > 0 && dax2 > dax1) {
        return Err(run.error(format!(
            "the write loops did not keep going through the refusals: fsdax rounds {fs0} before \
             the first, {fs1} after it, {fs2} after the second; devdax {dax1} before the \
             second, {dax2} after it"
        )));
    }
    if field(&after, "running").as_deref() != Some("fs,dax,") {
        return Err(run.error(format!("both write loops should still run: {after}")));
    }
    // Both stopped on request (not their own time limit), every page read back.
    let halted = expect("G-HALTED", "DAXIO-SPIN")?;
    let ends: Vec<&str> = halted.matches("end=stop").collect();
    if ends.len() != 2 || halted.matches("bad=0").count() != 2 {
        return Err(run.error(format!("the write loops' ends: {halted}")));
    }
    expect("REMOVE-UNMOUNTED", "204")?;
    expect("REMOVE-CLOSED", "204")?;

    // The raw device's bytes, through ch-remote.
    let ch_remove = expect("CH-REMOVE", "")?;
    if ch_remove.split_whitespace().next() != Some("0") {
        return Err(run.error(format!(
            "ch-remote remove-device hraw: exit status and output {ch_remove}"
        )));
    }
    let md5 = |m: &str| -> testbed::Result<String> {
        let s = expect(m, "")?;
        s.split_whitespace()
            .find(|w| w.len() == 32 && w.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_string)
            .ok_or_else(|| run.error(format!("{m}: no md5 in {s:?}")))
    };
    let raw_md5 = md5("G-WROTE")?;
    if md5("RAW-ON-HOST")? != raw_md5 {
        return Err(run.error(format!(
            "hraw's backing does not hold the bytes the guest wrote (md5 {raw_md5})"
        )));
    }
    expect("REMOVE-FS", "204")?;
    expect("REMOVE-CTL", "204")?;

    // None left: nothing in the guest, nothing in vm.info, the VM running.
    let none = expect("G-NONE", "devs=")?;
    if !(none.contains("devs=[]") && none.contains("daxbus=[]") && none.contains("ndctl=[]"))
        || count(&none, "iomem")? != 0
        || count(&none, "regions")? != 0
    {
        return Err(run.error(format!("the guest with no device left: {none}")));
    }
    let info: serde_json::Value =
        serde_json::from_str(value("INFO-NONE").unwrap_or_default().trim())
            .map_err(|e| run.error(format!("vm.info is not JSON: {e}")))?;
    if info["state"] != "Running" || info["pmem"] != serde_json::json!([]) {
        return Err(run.error(format!("vm.info with no device left: {info}")));
    }

    // A device added then works; what the guest wrote is on the backing after a SIGKILL that
    // followed the removal's answer at once.
    expect("ADD-NEW", "200")?;
    expect("G-NEW", "iomem=1")?;
    let new_md5 = md5("G-NEW")?;
    expect("REMOVE-NEW", "204")?;
    expect("KILLED", "137")?;
    if md5("NEW-ON-HOST")? != new_md5 {
        return Err(run.error(format!(
            "after the SIGKILL, hnew's backing does not hold the bytes the guest wrote (md5 \
             {new_md5})"
        )));
    }
    eprintln!("phases (s since the monitor started): {:?}", value("TIMES"));
    Ok(())
}

/// The host script of [`every_device_goes_even_from_under_dax_load`].
fn every_device_script(curl: &std::path::Path, ch: &std::path::Path) -> String {
    // Boot-time: ctl (raw, the command channel, pmem0) and bfs (fsdax, memmap in the device).
    // Hot-added: hdax (devdax, memmap in RAM), hraw (raw), hfs (fsdax, memmap in RAM). After
    // all of them: hnew (raw).
    format!(
        r#"
set -u
{lib}
CH={ch}
pmem() {{ echo '{{"file":"'$WORK'/'$1'.img","size":'$2',"id":"'$1'","mode":"'$3'"'${{4:+',"memmap":"'$4'"'}}'}}'; }}
rm_dev() {{ req "$1" vm.remove-device '{{"id":"'$1'","timeout_ms":60000}}'; echo " $(cat $1.out)"; }}
# put NAME CODE TEXT: @@NAME TEXT@@, and the run stops unless TEXT starts with CODE
put() {{ echo "@@$1 $3@@"; [ "${{3%% *}}" = "$2" ] || die "$1: answered $3, expected $2"; }}
since() {{ awk -v t0="$1" '{{printf "%.1f", $1 - t0}}' /proc/uptime; }}
cat > vm.json <<JSON
{{"payload":{{"kernel":"$KERNEL","initramfs":"$INITRAMFS",
  "cmdline":"console=ttyS0 quiet panic=-1 -- \"sh /hr.sh\""}},
 "cpus":{{"boot_vcpus":2,"max_vcpus":2}},"memory":{{"size":1073741824}},
 "pmem":[$(pmem ctl 16777216 raw),$(pmem bfs 134217728 fsdax pmem)],
 "serial":{{"mode":"File","file":"$WORK/console.log"}}}}
JSON
t0=$(cut -d' ' -f1 /proc/uptime)
"$VMM" --api-socket path="$WORK/api.sock" 2> vmm.log &
pid=$!
i=0; while [ ! -S api.sock ]; do alive || die "API-SOCKET: the monitor exited"; [ $i -ge 100 ] && die "API-SOCKET (10 s)"; sleep 0.1; i=$((i+1)); done
put CREATE 204 "$(req create vm.create "$(cat vm.json)") $(cat create.out)"
put BOOT 204 "$(req boot vm.boot) $(cat boot.out)"
waitg '@@G-READY@@' READY
t_boot=$(since $t0)
put ADD-DAX 200 "$(req adddax vm.add-pmem "$(pmem hdax 134217728 devdax ram)") $(cat adddax.out)"
put ADD-RAW 200 "$(req addraw vm.add-pmem "$(pmem hraw 67108864 raw)") $(cat addraw.out)"
put ADD-FS 200 "$(req addfs vm.add-pmem "$(pmem hfs 134217728 fsdax ram)") $(cat addfs.out)"
step FIVE '@@G-FIVE'
t_add=$(since $t0)
# Under load: each refusal between two looks at the loops' round counters.
step FSLOAD '@@G-FSLOAD'
put REMOVE-MOUNTED 409 "$(rm_dev bfs)"
step DAXLOAD '@@G-DAXLOAD'
put REMOVE-MAPPED 409 "$(rm_dev hdax)"
step ROUNDSA '@@G-ROUNDS ROUNDSA'
step HALT '@@G-HALTED'
put REMOVE-UNMOUNTED 204 "$(rm_dev bfs)"
put REMOVE-CLOSED 204 "$(rm_dev hdax)"
t_load=$(since $t0)
# The raw device: random bytes, fsynced, then ch-remote takes it away.
step WRITE '@@G-WROTE'
timeout 120 "$CH" --api-socket "$WORK/api.sock" remove-device hraw > ch.out 2>&1
rc=$?
put CH-REMOVE 0 "$rc $(tr '\n' ' ' < ch.out)"
echo "@@RAW-ON-HOST $(head -c 4194304 hraw.img | md5sum | cut -d' ' -f1)@@"
put REMOVE-FS 204 "$(rm_dev hfs)"
# The control channel last: the guest stops reading it first.
step LAST '@@G-LAST@@'
put REMOVE-CTL 204 "$(rm_dev ctl)"
waitg '@@G-NONE' NONE
echo "@@INFO-NONE $(get vm.info | tr -d '\n')@@"
t_drain=$(since $t0)
put ADD-NEW 200 "$(req addnew vm.add-pmem "$(pmem hnew 67108864 raw)") $(cat addnew.out)"
waitg '@@G-NEW ' NEW
# SIGKILL as soon as the removal is answered.
code=$(req hnew vm.remove-device '{{"id":"hnew","timeout_ms":60000}}')
kill -9 $pid
echo "@@REMOVE-NEW $code $(cat hnew.out)@@"
wait $pid
echo "@@KILLED $?@@"
echo "@@NEW-ON-HOST $(head -c 4194304 hnew.img | md5sum | cut -d' ' -f1)@@"
echo "@@TIMES boot=$t_boot add=$t_add load=$t_load drain=$t_drain all=$(since $t0)@@"
echo "--- console ---"; cat console.log; echo "--- vmm ---"; tail -n 40 vmm.log
"#,
        lib = guest_lib(curl),
        ch = testbed::shell::sh_quote(&ch.display().to_string()),
    )
}

/// One `@@G-STATE@@` report of the guest.
#[derive(Debug)]
struct State {
    pmem: String,
    dax: String,
    iomem: u32,
    regions: u32,
    /// Namespaces registered with the guest kernel's pfn checker.
    checked: u32,
    /// Namespaces `ndctl list -N` shows.
    ns: u32,
    memfree_kb: u64,
}

impl State {
    fn parse(s: &str) -> Option<State> {
        let field = |k: &str| testbed::word_value(s, k).map(str::to_string);
        Some(State {
            pmem: field("pmem")?,
            dax: field("dax")?,
            iomem: field("iomem")?.parse().ok()?,
            regions: field("regions")?.parse().ok()?,
            checked: field("checked")?.parse().ok()?,
            ns: field("ns")?.parse().ok()?,
            memfree_kb: field("memfree")?.parse().ok()?,
        })
    }
}

/// One answer of the pfn checker's range query (`nvdimm-pfn-check/range`, patch 0006).
#[derive(Debug)]
struct RangeAnswer {
    start: u64,
    size: u64,
    pfns: u64,
    valid: u64,
    online: u64,
    pgmap: u64,
    steps: u64,
}

impl RangeAnswer {
    fn parse(s: &str) -> Option<RangeAnswer> {
        let field = |k: &str| testbed::word_value(s, k);
        let hex = |k: &str| u64::from_str_radix(field(k)?.strip_prefix("0x")?, 16).ok();
        let dec = |k: &str| field(k)?.parse().ok();
        Some(RangeAnswer {
            start: hex("start")?,
            size: hex("size")?,
            pfns: dec("pfns")?,
            valid: dec("valid")?,
            online: dec("online")?,
            pgmap: dec("pgmap")?,
            steps: dec("steps")?,
        })
    }
}

/// The scripts parse (`sh -n`), so a quoting slip fails here, not in a nested guest.
#[test]
fn scripts_parse() {
    let (curl, ch) = (
        PathBuf::from("/usr/bin/curl"),
        PathBuf::from("/x/ch-remote"),
    );
    testbed::shell::assert_sh_parses("guest", GUEST_SCRIPT);
    testbed::shell::assert_sh_parses("guest_lib", &guest_lib(&curl));
    testbed::shell::assert_sh_parses("every_device", &every_device_script(&curl, &ch));
}
