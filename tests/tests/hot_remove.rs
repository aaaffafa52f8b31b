//! NVDIMM hot-remove (`PUT /api/v1/vm.remove-device`, docs/hot-remove.md) driven with
//! `curl --unix-socket` against guests on the testbed.
//!
//! - `stock_guest_keeps_what_it_does_not_release`: a stock distribution kernel knows nothing of
//!   the eject request; the request times out with 409 "guest did not release pmem0", the device
//!   stays (`vm.info`), the guest keeps running and keeps writing to it, and what it wrote is on
//!   the backing after the run. An unknown id is a 404 and changes nothing.
//! - `our_guest_releases_what_it_does_not_use`: our guest kernel (patch 0004) refuses to release
//!   a mounted fsdax namespace and an open device-dax instance, with the reason, and releases
//!   them once unmounted or closed; the file written before the removal is on the backing when
//!   the API answers, `/proc/iomem`, the guest's regions and `MemFree` (the memmap in RAM comes
//!   back) show the range gone, and the same backing added again (`format=keep`) holds the file.
//!
//! These need KVM (direct) or QEMU (nested) and fail, never skip, when neither is available.

use std::path::PathBuf;
use std::time::Duration;

use testbed::markers::marker_values;
use testbed::{run_on_kvm_host, Error, HostOpts, ScratchDir, StockStaging};

fn curl() -> PathBuf {
    let p = PathBuf::from("/usr/bin/curl");
    assert!(
        p.is_file(),
        "curl is needed (apt-get install curl; scripts/install-deps.sh installs it)"
    );
    p
}

/// The shell functions every script here uses: `req NAME ENDPOINT [BODY]` prints the status
/// code of a PUT and leaves the answer in NAME.out; `get ENDPOINT` prints a GET's answer;
/// `waitfor PATTERN FILE TRIES` polls FILE for PATTERN every 0.25 s.
fn script_lib(curl: &std::path::Path) -> String {
    format!(
        r#"
req() {{ {curl} -s -o "$1.out" -w '%{{http_code}}' --unix-socket "$WORK/api.sock" -X PUT -H 'Content-Type: application/json' --data-binary "${{3:-}}" "http://localhost/api/v1/$2"; }}
get() {{ {curl} -s --unix-socket "$WORK/api.sock" "http://localhost/api/v1/$1"; }}
waitfor() {{ i=0; while ! grep -q "$1" "$2" 2>/dev/null && [ $i -lt $3 ]; do sleep 0.25; i=$((i+1)); done; grep -q "$1" "$2" 2>/dev/null; }}
"#,
        curl = curl.display()
    )
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

/// The guest side of `our_guest_releases_what_it_does_not_use`: the host writes a command word
/// to the start of the boot-time raw device (`/dev/pmem0`, the control channel); the guest runs
/// each new word once and reports with `@@G-...@@` markers.
const GUEST_SCRIPT: &str = r#"#!/bin/sh
mkdir -p /mnt
cmd() { blockdev --flushbufs /dev/pmem0 2>/dev/null || echo 1 > /proc/sys/vm/drop_caches; dd if=/dev/pmem0 bs=16 count=1 2>/dev/null | tr -cd 'A-Z'; }
hot() { ls /dev | grep -e '^pmem[1-9]' | head -n 1; }
dax() { ls /dev | grep -e '^dax' | head -n 1; }
state() { echo "@@G-STATE $1 pmem=$(hot) dax=$(dax) iomem=$(grep -c 'Persistent Memory' /proc/iomem) regions=$(ls /sys/bus/nd/devices | grep -c region) memfree=$(grep MemFree /proc/meminfo | tr -s ' ' | cut -d' ' -f2)@@"; }
last=""
echo @@G-READY@@
while sleep 0.5; do
  c=$(cmd)
  [ -z "$c" ] && continue
  [ "$c" = "$last" ] && continue
  last=$c
  case "$c" in
    MOUNT) d=$(hot); mkfs.ext4 -q -F -b 4096 /dev/$d && mount -o dax /dev/$d /mnt && echo HOTDATA-4242 > /mnt/f && sync && echo "@@G-MOUNTED $d@@" ;;
    UMOUNT) umount /mnt && echo @@G-UMOUNTED@@ ;;
    CHECK) d=$(hot); mount -o dax /dev/$d /mnt && echo "@@G-READ $(cat /mnt/f)@@"; umount /mnt ;;
    HOLD) exec 3</dev/$(dax) && echo "@@G-HOLD $(dax)@@" ;;
    RELEASE) exec 3<&- && echo @@G-RELEASED@@ ;;
    S*) state $c ;;
  esac
  dmesg | grep -e eject -e nfit -e 'new nfit' | sed 's/^/KMSG /' > /tmp/k.new
  if [ -f /tmp/k.old ]; then grep -vxF -f /tmp/k.old /tmp/k.new; else cat /tmp/k.new; fi
  mv /tmp/k.new /tmp/k.old
done
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
# setcmd WORD: the guest's next command, through the control device's backing.
setcmd() {{ printf '%-16s' "$1" | tr ' ' '\000' | dd of=ctl.img bs=16 count=1 conv=notrunc 2>/dev/null; }}
# step WORD MARKER: send a command and wait for the guest's marker.
step() {{ setcmd "$1"; waitfor "$2" console.log 480 || {{ echo "@@NO $2@@"; tail -n 15 console.log; }}; }}
cat > vm.json <<JSON
{{"payload":{{"kernel":"$KERNEL","initramfs":"$INITRAMFS",
  "cmdline":"console=ttyS0 quiet panic=-1 -- \"sh /hr.sh\""}},
 "cpus":{{"boot_vcpus":2,"max_vcpus":2}},"memory":{{"size":1073741824}},
 "pmem":[{{"file":"$WORK/ctl.img","size":16777216,"id":"ctl","mode":"raw"}}],
 "serial":{{"mode":"File","file":"$WORK/console.log"}}}}
JSON
"$VMM" --api-socket path="$WORK/api.sock" 2> vmm.log &
pid=$!
i=0; while [ ! -S api.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
echo "@@CREATE $(req create vm.create "$(cat vm.json)")@@"
echo "@@BOOT $(req boot vm.boot)@@"
waitfor '@@G-READY@@' console.log 1200 || echo "@@NO READY@@"
step SA '@@G-STATE SA'
echo "@@ADD-A $(req adda vm.add-pmem '{{"file":"'$WORK'/a.img","size":536870912,"id":"hot-a","mode":"fsdax","memmap":"ram"}}')@@"
sleep 3
step SB '@@G-STATE SB'
step MOUNT '@@G-MOUNTED'
echo "@@REMOVE-MOUNTED $(req rm1 vm.remove-device '{{"id":"hot-a","timeout_ms":60000}}') $(cat rm1.out)@@"
step UMOUNT '@@G-UMOUNTED@@'
echo "@@REMOVE-UNMOUNTED $(req rm2 vm.remove-device '{{"id":"hot-a","timeout_ms":60000}}') $(cat rm2.out)@@"
echo "@@ON-HOST-AT-ANSWER $(grep -c HOTDATA-4242 a.img)@@"
sleep 2
step SC '@@G-STATE SC'
echo "@@INFO-GONE $(get vm.info)@@"
echo "@@ADD-A-AGAIN $(req adda2 vm.add-pmem '{{"file":"'$WORK'/a.img","id":"hot-a","mode":"fsdax","memmap":"ram","format":"keep"}}') $(cat adda2.out)@@"
sleep 3
step SD '@@G-STATE SD'
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
        lib = script_lib(&curl),
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
    run.expect_success()?;
    let value = |m: &str| marker_values(&run.output, m).first().map(|s| s.to_string());
    let expect = |m: &str, want: &str| -> testbed::Result<String> {
        match value(m) {
            Some(s) if s.contains(want) => Ok(s),
            other => Err(run.error(format!("{m}: {other:?}, expected {want}"))),
        }
    };
    if run.output.contains("@@NO ") {
        return Err(run.error("the guest missed a step (@@NO ...@@)"));
    }
    expect("CREATE", "204")?;
    expect("BOOT", "204")?;
    expect("ADD-A", "200")?;
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

/// One `@@G-STATE@@` report of the guest.
#[derive(Debug)]
struct State {
    pmem: String,
    dax: String,
    iomem: u32,
    regions: u32,
    memfree_kb: u64,
}

impl State {
    fn parse(s: &str) -> Option<State> {
        let field = |k: &str| {
            s.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")))
                .map(str::to_string)
        };
        Some(State {
            pmem: field("pmem")?,
            dax: field("dax")?,
            iomem: field("iomem")?.parse().ok()?,
            regions: field("regions")?.parse().ok()?,
            memfree_kb: field("memfree")?.parse().ok()?,
        })
    }
}
