//! NVDIMMs through `--pmem`, checked from inside the guest: what libnvdimm makes of our NFIT
//! (regions, namespaces, block devices, `/proc/iomem`, `ndctl list`), data moving both ways
//! between the host's backing and the guest's `/dev/pmemN` for each kind of backing (file,
//! device DAX, block device), read-only devices, durability across a SIGKILL after a guest
//! flush, and the monitor's refusals of bad `--pmem` input.
//!
//! Every guest runs with the pmem guest library ([`testbed::pmem_checks::guest_lib`]) and
//! Debian's ndctl in its initramfs; the guest reports facts as `@@PMEM-...@@` markers and the
//! assertions are made here, so a failure shows the console tail.
//!
//! Backing paths are relative: the host script runs in `$WORK`, and the vmm arguments are
//! passed quoted (no shell expansion). Device nodes whose name is only known at run time
//! (`$NVDIMM0`, the loop device from `losetup -f`) are reached through a symbolic link in
//! `$WORK`.
//!
//! These need KVM (direct) or QEMU (nested) and fail, never skip, when neither is available.

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use serde_json::Value;
use testbed::markers::{last_marker, marker_values};
use testbed::pmem_checks::{
    dimm_id, expected_bases, guest_initramfs, host_lib, pattern, shared_sections, GuestFacts,
    Record, END_LEN, GIB, GUEST_LIB, GUEST_OFFSET, MIB, PATTERN_LEN,
};
use testbed::shell::sh_quote;
use testbed::{
    boot_guest, run_on_kvm_host, Error, GuestOpts, GuestRun, HostOpts, HostRun, Nvdimm, Result,
    ScratchDir,
};

/// Appended to every `--pmem` that must give the guest a raw namespace: with the default
/// `memmap=auto` the monitor may write an info block into a blank backing (making it fsdax).
const RAW: &str = ",memmap=none";

/// The checks `roundtrip` in the guest library reports.
const ROUNDTRIP_CHECKS: &[&str] = &[
    "host-pattern",
    "guest-write",
    "guest-end-write",
    "guest-sync",
];

/// A guest that sources the pmem library, then runs `command`.
fn pmem_guest(command: &str) -> Result<GuestOpts> {
    Ok(GuestOpts::default()
        .with_host(HostOpts::default().with_initramfs(guest_initramfs()?))
        .with_timeout(Duration::from_secs(300))
        .with_command(format!(". {GUEST_LIB}; {command}")))
}

/// Boots and parses the guest's reports; logs where the time went.
fn boot(opts: GuestOpts) -> Result<(GuestRun, GuestFacts)> {
    let run = boot_guest(&opts)?;
    eprintln!(
        "{} host: run {:.2?}, host ready {:?}, vmm {:?}, vmm exit {}",
        run.host.mode, run.host.duration, run.host.host_ready, run.report.vmm_time, run.vmm_exit
    );
    let facts = GuestFacts::parse(run.console());
    Ok((run, facts))
}

/// `--pmem` and its value.
fn pmem(spec: impl Into<String>) -> [String; 2] {
    ["--pmem".to_string(), spec.into()]
}

/// Checks that the guest saw one device of `size` bytes at `base` as a raw namespace: the
/// region (returned), its one namespace, the block device (`pmemN` of the namespace) and the
/// `Persistent Memory` range in `/proc/iomem`.
fn expect_raw_device<'f>(
    run: &GuestRun,
    facts: &'f GuestFacts,
    base: u64,
    size: u64,
) -> Result<&'f Record> {
    let region = facts.region_at(base).ok_or_else(|| {
        run.error(format!(
            "no region at {base:#x} (the layout's address for a {size}-byte device); the guest \
             has {:?}",
            facts.regions
        ))
    })?;
    run.check(region.num("size") == Some(size), || {
        format!(
            "{} is {:?} bytes, expected {size}",
            region.name,
            region.get("size")
        )
    })?;
    let namespaces = facts.namespaces_of(&region.name);
    run.check(namespaces.len() == 1, || {
        format!(
            "{} has namespaces {namespaces:?}, expected one",
            region.name
        )
    })?;
    let ns = namespaces[0];
    run.check(ns.get("mode") == "raw", || {
        format!("{} is in mode {:?}, expected raw", ns.name, ns.get("mode"))
    })?;
    run.check(ns.num("size") == Some(size), || {
        format!("{} is {:?} bytes, expected {size}", ns.name, ns.get("size"))
    })?;
    let block = facts.block(ns.get("block")).ok_or_else(|| {
        run.error(format!(
            "{} has no block device ({:?}); block devices: {:?}",
            ns.name,
            ns.get("block"),
            facts.blocks
        ))
    })?;
    run.check(block.num("bytes") == Some(size), || {
        format!(
            "/dev/{} is {:?} bytes, expected {size}",
            block.name,
            block.get("bytes")
        )
    })?;
    let ranges: Vec<_> = facts
        .persistent_memory()
        .into_iter()
        .filter(|e| e.start < base + size && e.end >= base)
        .collect();
    run.check(
        ranges.len() == 1 && ranges[0].start == base && ranges[0].end == base + size - 1,
        || {
            format!(
                "/proc/iomem should have Persistent Memory {base:x}-{:x}, has {ranges:x?}",
                base + size - 1
            )
        },
    )?;
    Ok(region)
}

fn expect_checks(run: &GuestRun, facts: &GuestFacts, names: &[&str]) -> Result<()> {
    let failed = facts.failed_checks(names);
    run.check(failed.is_empty(), || {
        format!("guest checks failed: {failed:?}")
    })
}

/// `@@PMEM-HOSTCHECK name ok@@` from the host's `verify_guest`.
fn expect_host_check(run: &HostRun, name: &str) -> Result<()> {
    let results: Vec<&str> = marker_values(&run.output, "PMEM-HOSTCHECK")
        .into_iter()
        .filter_map(|v| v.strip_prefix(name).map(str::trim))
        .collect();
    if results == ["ok"] {
        Ok(())
    } else {
        Err(run.error(format!(
            "the guest's patterns are not in the {name} backing after the run (host check: \
             {results:?})"
        )))
    }
}

/// One file-backed device in a 256 MiB guest: region0, namespace0.0 and /dev/pmem0 of exactly
/// the file's size, `Persistent Memory` at 4 GiB (the first window for a guest with at most
/// 3 GiB of RAM) in /proc/iomem, the host's pattern readable and the guest's pattern in the
/// file afterwards. The guest's block device advertises FUA and a write-back cache, so the
/// guest flushes through the NFIT flush hint (that the hint reaches the monitor is checked by
/// `sigkill_after_guest_flush_loses_nothing`).
#[test]
fn file_backing_is_region0_at_4_gib_and_round_trips_data() -> Result<()> {
    let size = 66 * MIB;
    let opts = pmem_guest("report; roundtrip /dev/pmem0")?
        .with_before(format!(
            "{}\ntruncate -s {size} pm.img && host_pattern pm.img",
            host_lib()
        ))
        .with_vmm_args(pmem(format!("path=pm.img{RAW}")))
        .with_after(format!(
            "verify_guest file pm.img {size}\necho \"@@PMEM-HOSTSIZE $(stat -c %s pm.img)@@\""
        ));
    let (run, facts) = boot(opts)?;
    run.expect_success()?;

    let base = expected_bases(256 * MIB, &[size])[0];
    run.check(base == 4 * GIB, || {
        format!("layout rule gives {base:#x}, expected 4 GiB")
    })?;
    run.check(facts.regions.len() == 1, || {
        format!("expected one region, the guest has {:?}", facts.regions)
    })?;
    let region = expect_raw_device(&run, &facts, base, size)?;
    run.check(
        region.name == "region0" && region.get("read_only") == "0",
        || format!("expected a writable region0, got {region:?}"),
    )?;
    let namespaces = facts.namespaces_of("region0");
    let ns = namespaces[0];
    run.check(
        ns.name == "namespace0.0" && ns.get("block") == "pmem0",
        || format!("expected namespace0.0 with /dev/pmem0, got {ns:?}"),
    )?;
    let blk = facts.block("pmem0").expect("checked by expect_raw_device");
    run.check(
        blk.get("ro") == "0" && blk.get("fua") == "1" && blk.get("write_cache") == "write_back",
        || {
            format!(
                "/dev/pmem0 should be writable with fua 1 and a write-back cache (so guest \
                 flushes reach the NFIT flush hint): {blk:?}"
            )
        },
    )?;
    expect_checks(&run, &facts, ROUNDTRIP_CHECKS)?;
    expect_host_check(&run.host, "file")?;
    let host_size: Option<u64> = last_marker(&run.host.output, "PMEM-HOSTSIZE");
    run.check(host_size == Some(size), || {
        format!("the backing is {host_size:?} bytes after the run, expected {size}")
    })
}

/// A device-DAX backing: L1's /dev/dax0.0 (an emulated NVDIMM whose bytes live in a file here,
/// at the info block's data offset). The host's pattern is written into that file before the
/// run; the guest's patterns are read back from it afterwards.
#[test]
fn devdax_backing_round_trips_data() -> Result<()> {
    let dir = ScratchDir::new("pmem-devdax")?;
    let nvdimm = Nvdimm::devdax(dir.path().join("dimm"), 256 * MIB);
    nvdimm.prepare()?;
    let dataoff = nvdimm.data_offset()?;
    write_at(
        &nvdimm.backing,
        dataoff,
        &pattern("host", PATTERN_LEN as usize),
    )?;

    let opts = pmem_guest("report; roundtrip /dev/pmem0")?
        .with_host(
            HostOpts::default()
                .with_initramfs(guest_initramfs()?)
                .with_timeout(Duration::from_secs(300))
                .with_nvdimm(nvdimm.clone()),
        )
        .with_before(
            "test -c \"$NVDIMM0\" || { echo \"no device-dax at $NVDIMM0\"; exit 1; }\n\
             echo \"@@PMEM-DAX-SIZE $(cat /sys/bus/dax/devices/${NVDIMM0#/dev/}/size)@@\"\n\
             ln -s \"$NVDIMM0\" dax.dev",
        )
        .with_vmm_args(pmem(format!("path=dax.dev{RAW}")));
    let (run, facts) = boot(opts)?;
    run.expect_success()?;

    let dax_size: u64 = last_marker(&run.host.output, "PMEM-DAX-SIZE")
        .ok_or_else(|| run.error("the host did not report the device-dax size"))?;
    run.check(dax_size > 0 && dax_size <= 256 * MIB - dataoff, || {
        format!("L1's device-dax is {dax_size} bytes (data offset {dataoff})")
    })?;
    let base = expected_bases(256 * MIB, &[dax_size])[0];
    expect_raw_device(&run, &facts, base, dax_size)?;
    expect_checks(&run, &facts, ROUNDTRIP_CHECKS)?;

    let guest = read_at(&nvdimm.backing, dataoff + GUEST_OFFSET, PATTERN_LEN)?;
    run.check(guest == pattern("guest", PATTERN_LEN as usize), || {
        format!(
            "the guest's pattern is not at {} in the device-dax backing",
            dataoff + GUEST_OFFSET
        )
    })?;
    let end = read_at(&nvdimm.backing, dataoff + dax_size - END_LEN, END_LEN)?;
    run.check(end == pattern("guest-end", END_LEN as usize), || {
        "the guest's pattern is not in the last 64 KiB of the device-dax backing".to_string()
    })
}

/// A block-device backing: a loop device over a file in L1 (`losetup -f --show`, or busybox's
/// `losetup -f` then `losetup DEV FILE`). The host's pattern is written into the file first;
/// the guest's patterns must be in the file after the loop device is detached.
#[test]
fn block_device_backing_round_trips_data() -> Result<()> {
    let size = 96 * MIB;
    let opts = pmem_guest("report; roundtrip /dev/pmem0")?
        .with_before(format!(
            "{}\ntruncate -s {size} blk.img && host_pattern blk.img || exit 1\n\
             LOOP=$(losetup -f --show blk.img 2>/dev/null) || \
             {{ LOOP=$(losetup -f) && losetup \"$LOOP\" blk.img; }}\n\
             test -b \"$LOOP\" || {{ echo \"losetup gave no loop device: '$LOOP'\"; exit 1; }}\n\
             echo \"@@PMEM-LOOP $LOOP@@\"\nln -s \"$LOOP\" loop.dev",
            host_lib()
        ))
        .with_vmm_args(pmem(format!("path=loop.dev{RAW}")))
        .with_after(format!(
            "losetup -d \"$LOOP\" || echo \"losetup -d $LOOP failed\"\n\
             verify_guest block blk.img {size}"
        ));
    let (run, facts) = boot(opts)?;
    run.expect_success()?;
    let base = expected_bases(256 * MIB, &[size])[0];
    expect_raw_device(&run, &facts, base, size)?;
    expect_checks(&run, &facts, ROUNDTRIP_CHECKS)?;
    expect_host_check(&run.host, "block")
}

/// Three devices of 130 MiB, 1 GiB and 4 GiB (sparse) in a 3.5 GiB guest (so RAM continues
/// above 4 GiB and the windows follow it): each at the layout's address with its size, raw,
/// none sharing a 128 MiB section; `numa=1` on the second shows as its region's target_node 1
/// (numa_node 0: node 1 has no CPUs or RAM); `ndctl list -RND` agrees.
#[test]
fn three_devices_with_numa_node_and_ndctl() -> Result<()> {
    let memory = 3584 * MIB;
    let sizes = [130 * MIB, GIB, 4 * GIB];
    let opts = pmem_guest("report; ndctl_list")?
        .with_memory("3584M")
        .with_before(format!("truncate -s {} small.img", sizes[0]))
        .with_vmm_args(pmem(format!("path=small.img{RAW}")))
        .with_vmm_args(pmem(format!("path=numa1.img,size=1G,numa=1{RAW}")))
        .with_vmm_args(pmem(format!("path=big.img,size=4G{RAW}")));
    let (run, facts) = boot(opts)?;
    run.expect_success()?;

    run.check(facts.regions.len() == 3, || {
        format!("expected 3 regions, the guest has {:?}", facts.regions)
    })?;
    let bases = expected_bases(memory, &sizes);
    run.check(bases[0] == 4 * GIB + 512 * MIB, || {
        format!("layout rule gives {:#x} for the first window", bases[0])
    })?;
    for (i, (&base, &size)) in bases.iter().zip(&sizes).enumerate() {
        let region = expect_raw_device(&run, &facts, base, size)?;
        let target = if i == 1 { "1" } else { "0" };
        run.check(
            region.get("target_node") == target && region.get("numa_node") == "0",
            || {
                format!(
                    "device {i} ({} at {base:#x}): target_node {:?} numa_node {:?}, expected \
                     {target} and 0",
                    region.name,
                    region.get("target_node"),
                    region.get("numa_node")
                )
            },
        )?;
    }
    let windows: Vec<(u64, u64)> = facts
        .persistent_memory()
        .iter()
        .map(|e| (e.start, e.end + 1 - e.start))
        .collect();
    let shared = shared_sections(&windows);
    run.check(shared.is_empty(), || {
        format!("windows share a 128 MiB section: {shared:x?}")
    })?;

    let (rc, json) = facts
        .ndctl
        .clone()
        .ok_or_else(|| run.error("the guest printed no ndctl output"))?;
    run.check(rc == 0, || format!("ndctl list -RND exited {rc}"))?;
    check_ndctl(&run, &json, &sizes)
}

/// `ndctl list -RND`: one DIMM per device with the id and NFIT handle we described (vendor
/// 0x8086, serial number and handle index + 1), one pmem region per device with its size,
/// mapped whole onto that device's DIMM, holding one raw namespace of that size.
fn check_ndctl(run: &GuestRun, json: &str, sizes: &[u64]) -> Result<()> {
    let v: Value = serde_json::from_str(json.trim())
        .map_err(|e| run.error(format!("ndctl printed no JSON ({e}): {json}")))?;
    let dimms = v["dimms"].as_array().cloned().unwrap_or_default();
    let regions = v["regions"].as_array().cloned().unwrap_or_default();
    run.check(
        dimms.len() == sizes.len() && regions.len() == sizes.len(),
        || {
            format!(
                "ndctl shows {} DIMMs and {} regions, expected {} of each: {json}",
                dimms.len(),
                regions.len(),
                sizes.len()
            )
        },
    )?;
    for (i, &size) in sizes.iter().enumerate() {
        let region = regions
            .iter()
            .find(|r| r["size"].as_u64() == Some(size))
            .ok_or_else(|| run.error(format!("ndctl shows no region of {size} bytes: {json}")))?;
        run.check(region["type"] == "pmem", || {
            format!("region of {size} bytes is not type pmem: {region}")
        })?;
        let namespaces = region["namespaces"].as_array().cloned().unwrap_or_default();
        run.check(
            namespaces.len() == 1
                && namespaces[0]["mode"] == "raw"
                && namespaces[0]["size"].as_u64() == Some(size),
            || {
                format!(
                    "region of {size} bytes should have one raw namespace of that size: {region}"
                )
            },
        )?;
        // The DIMM behind the region: ndctl lists the mapping even without -M.
        let mappings = region["mappings"].as_array().cloned().unwrap_or_default();
        let dimm = mappings
            .first()
            .and_then(|m| m["dimm"].as_str())
            .and_then(|name| dimms.iter().find(|d| d["dev"] == name));
        let want_id = dimm_id(i);
        run.check(
            mappings.len() == 1
                && mappings[0]["length"].as_u64() == Some(size)
                && dimm.is_some_and(|d| {
                    d["id"] == want_id.as_str() && d["handle"].as_u64() == Some(i as u64 + 1)
                }),
            || {
                format!(
                    "region of {size} bytes (device {i}) should map all of one DIMM with id \
                     {want_id} and handle {}: mappings {mappings:?}, DIMM {dimm:?}",
                    i + 1
                )
            },
        )?;
        if let Some(target) = region.get("target_node") {
            let want = if i == 1 { 1 } else { 0 };
            run.check(target.as_u64() == Some(want), || {
                format!("region of {size} bytes: target_node {target}, expected {want}")
            })?;
        }
    }
    Ok(())
}

/// `readonly=on`: the guest's region (or block device) is read-only, it reads the host's data,
/// its writes fail or are discarded, and the backing's checksum does not change.
#[test]
fn readonly_backing_is_read_only_in_the_guest_and_unchanged() -> Result<()> {
    let size = 64 * MIB;
    let command = format!(
        "report; pat host {PATTERN_LEN} > /tmp/want; readat /dev/pmem0 0 {PATTERN_LEN} /tmp/got; \
         check host-pattern cmp /tmp/want /tmp/got; pat guest {PATTERN_LEN} > /tmp/guest; \
         check guest-write writeat /dev/pmem0 /tmp/guest 0; check guest-sync sync /dev/pmem0; \
         echo 3 > /proc/sys/vm/drop_caches; readat /dev/pmem0 0 {PATTERN_LEN} /tmp/again; \
         check reread cmp /tmp/want /tmp/again; true"
    );
    let opts = pmem_guest(&command)?
        .with_before(format!(
            "{}\ntruncate -s {size} ro.img && host_pattern ro.img || exit 1\n\
             echo \"@@PMEM-SUM-BEFORE $(md5sum < ro.img)@@\"",
            host_lib()
        ))
        .with_vmm_args(pmem(format!("path=ro.img,readonly=on{RAW}")))
        .with_after("echo \"@@PMEM-SUM-AFTER $(md5sum < ro.img) $(stat -c %s ro.img)@@\"");
    let (run, facts) = boot(opts)?;
    run.expect_success()?;

    let base = expected_bases(256 * MIB, &[size])[0];
    let region = expect_raw_device(&run, &facts, base, size)?;
    let block = facts.block("pmem0");
    run.check(
        region.get("read_only") == "1" || block.is_some_and(|b| b.get("ro") == "1"),
        || format!("the guest does not see the device read-only: {region:?}, {block:?}"),
    )?;
    expect_checks(&run, &facts, &["host-pattern", "reread"])?;
    let wrote = facts.checks.get("guest-write").cloned().unwrap_or_default();
    eprintln!("guest write to the read-only device: {wrote}");
    let before = marker_values(&run.host.output, "PMEM-SUM-BEFORE");
    let after = marker_values(&run.host.output, "PMEM-SUM-AFTER");
    let expected_after = before.first().map(|b| format!("{b} {size}"));
    run.check(
        before.len() == 1 && after.len() == 1 && expected_after.as_deref() == Some(after[0]),
        || format!("the read-only backing changed: before {before:?}, after {after:?} (md5, size)"),
    )
}

/// SIGKILL after a guest flush loses nothing of a file backing, and the flush reaches the
/// monitor: the guest writes its patterns to /dev/pmem0 (into its page cache), announces that
/// and waits, fsyncs the device (REQ_PREFLUSH: the pmem driver writes the NFIT flush hint,
/// an MMIO exit to the vmm, which msyncs) and runs `sync`, announces that and sleeps. The host
/// reads KVM's count of the VM's MMIO exits at both announcements (it must grow across the
/// flush: the flush hint page is the only MMIO the monitor serves), kills the vmm with SIGKILL
/// and finds the patterns in the file.
#[test]
fn sigkill_after_guest_flush_loses_nothing() -> Result<()> {
    let size = 64 * MIB;
    let cmdline = pmem_guest(
        "roundtrip_write /dev/pmem0; mark written; sleep 5; mark flushing; \
         check guest-sync sync /dev/pmem0; sync; mark synced; sleep 600",
    )?
    .guest_cmdline()?;
    let script = format!(
        r#"{host_lib}
[ -d /sys/kernel/debug/kvm ] || mount -t debugfs debugfs /sys/kernel/debug
truncate -s {size} kill.img && host_pattern kill.img || exit 1
"$VMM" --kernel "$KERNEL" --initramfs "$INITRAMFS" --cpus 1 --memory 256M \
    --serial file=console.log --cmdline {cmdline} --pmem {spec} </dev/null >vmm.log 2>&1 &
pid=$!
# waitmark NAME: wait until the guest printed @@PMEM-MARK NAME@@; fails if the vmm is gone
waitmark() {{
    i=0
    while ! grep -q "@@PMEM-MARK $1@@" console.log 2>/dev/null; do
        kill -0 $pid 2>/dev/null || {{ echo "@@PMEM-EARLY-EXIT $1@@"; return 1; }}
        i=$((i + 1))
        [ $i -lt 1800 ] || {{ echo "@@PMEM-WAIT-TIMEOUT $1@@"; return 1; }}
        sleep 0.1
    done
}}
# KVM's count of this VM's exits to the vmm for MMIO (debugfs: <pid>-<vm fd>/mmio_exits)
mmio_exits() {{ cat /sys/kernel/debug/kvm/$pid-*/mmio_exits 2>/dev/null || echo none; }}
if waitmark written; then
    echo "@@PMEM-MMIO-BEFORE $(mmio_exits)@@"
    grep -q '@@PMEM-MARK flushing@@' console.log && echo "@@PMEM-MMIO-LATE@@"
    waitmark synced && echo "@@PMEM-MMIO-AFTER $(mmio_exits)@@"
fi
kill -KILL $pid
wait $pid
echo "@@VMM-EXIT $?@@"
echo "--- guest console ---"; cat console.log; echo "--- vmm output ---"; cat vmm.log
verify_guest sigkill kill.img {size}
"#,
        host_lib = host_lib(),
        cmdline = sh_quote(&cmdline),
        spec = sh_quote(&format!("path=kill.img{RAW}")),
    );
    let host = HostOpts::default()
        .with_initramfs(guest_initramfs()?)
        .with_timeout(Duration::from_secs(300));
    let run = run_on_kvm_host(&script, &host)?;
    eprintln!("{} host: run {:.2?}", run.mode, run.duration);
    run.expect_success()?;
    for bad in ["PMEM-EARLY-EXIT", "PMEM-WAIT-TIMEOUT"] {
        let at = marker_values(&run.output, bad);
        if !at.is_empty() {
            return Err(run.error(format!(
                "the guest never announced {at:?} ({bad}); nothing was tested"
            )));
        }
    }
    let exit: Option<i32> = last_marker(&run.output, "VMM-EXIT");
    if exit != Some(137) {
        return Err(run.error(format!(
            "the vmm exited {exit:?}, expected 137 (killed by SIGKILL)"
        )));
    }
    let facts = GuestFacts::parse(&run.output);
    let failed = facts.failed_checks(ROUNDTRIP_CHECKS);
    if !failed.is_empty() {
        return Err(run.error(format!("guest checks failed: {failed:?}")));
    }
    expect_host_check(&run, "sigkill")?;

    if !marker_values(&run.output, "PMEM-MMIO-LATE").is_empty() {
        return Err(run.error(
            "inconclusive: the host read the MMIO exit count only after the guest had started \
             its flush (host too slow for the guest's 5 s pause?)",
        ));
    }
    let before = marker_values(&run.output, "PMEM-MMIO-BEFORE");
    let after = marker_values(&run.output, "PMEM-MMIO-AFTER");
    let (Some(b), Some(a)) = (
        before.first().and_then(|v| v.parse::<u64>().ok()),
        after.first().and_then(|v| v.parse::<u64>().ok()),
    ) else {
        return Err(run.error(format!(
            "no KVM MMIO exit counts from the host's debugfs (before {before:?}, after \
             {after:?}); the host needs debugfs at /sys/kernel/debug with KVM's per-VM stats"
        )));
    };
    eprintln!("MMIO exits to the vmm: {b} before the guest's flush, {a} after");
    if a > b {
        Ok(())
    } else {
        Err(run.error(format!(
            "the guest's fsync of /dev/pmem0 caused no MMIO exit ({b} before, {a} after): the \
             NFIT flush hint was not written, so the monitor never flushed"
        )))
    }
}

/// One bad `--pmem` case: what to run and what its one stderr line must say.
struct BadCase {
    name: &'static str,
    /// Backing paths whose state (content checksum, or absence) must not change.
    paths: &'static str,
    /// vmm arguments (shell words; may use `$args`).
    args: &'static str,
    /// Each entry: the line must contain one of these alternatives (case-insensitive).
    needles: &'static [&'static [&'static str]],
}

const BAD_CASES: &[BadCase] = &[
    BadCase {
        name: "missing",
        paths: "missing.img",
        args: "--pmem path=missing.img",
        needles: &[&["missing.img"], &["does not exist"]],
    },
    BadCase {
        name: "directory",
        paths: "adir",
        args: "--pmem path=adir",
        needles: &[&["adir"], &["directory"]],
    },
    BadCase {
        name: "same-path-twice",
        paths: "twice.img",
        args: "--pmem path=twice.img --pmem path=twice.img",
        needles: &[&["twice.img"], &["same", "twice"]],
    },
    BadCase {
        name: "locked",
        paths: "lock.img",
        args: "--pmem path=lock.img",
        needles: &[&["lock.img"], &["in use"]],
    },
    BadCase {
        name: "read-only-fs",
        paths: "rofs/ro.img",
        args: "--pmem path=rofs/ro.img",
        needles: &[&["ro.img"], &["read-only"], &["readonly=on"]],
    },
    BadCase {
        name: "unaligned-file",
        paths: "three.img",
        args: "--pmem path=three.img",
        needles: &[&["three.img"], &["3 MiB", "3145728"], &["2 MiB"]],
    },
    BadCase {
        name: "unaligned-size",
        paths: "new3.img",
        args: "--pmem path=new3.img,size=3M",
        needles: &[&["3 MiB", "3M", "3145728"], &["2 MiB"]],
    },
    BadCase {
        name: "zero-size",
        paths: "zero.img",
        args: "--pmem path=zero.img,size=0",
        needles: &[&["size=0"]],
    },
    BadCase {
        name: "unknown-key",
        paths: "key.img",
        args: "--pmem path=key.img,colour=red",
        needles: &[&["colour"]],
    },
    BadCase {
        name: "too-big",
        paths: "huge.img",
        args: "--pmem path=huge.img",
        needles: &[&["huge.img"], &["does not fit"]],
    },
    BadCase {
        name: "too-many",
        paths: "$many",
        args: "$args",
        needles: &[&["at most 64"]],
    },
];

/// The host script of [`bad_pmem_input_is_refused_before_anything_runs`].
fn bad_input_script() -> Result<String> {
    let holder = GuestOpts::default()
        .with_command("sleep 600")
        .guest_cmdline()?;
    let mut s = format!(
        r#"unset RUST_LOG
# sig PATH: what must not change (content, or absence)
sig() {{
    if [ -d "$1" ]; then echo "dir $(ls -A "$1" | md5sum)"
    elif [ ! -e "$1" ]; then echo absent
    elif [ "$(stat -c %s "$1")" -gt 268435456 ]; then
        echo "big $(stat -c '%s %b %Y' "$1") $(head -c 8388608 "$1" | md5sum)"
    else echo "file $(stat -c %s "$1") $(md5sum < "$1")"; fi
}}
sigs() {{ for p in $1; do sig "$p"; done | md5sum; }}
# try NAME PATHS VMM-ARGS...: one vmm run that must fail; prints its status, stderr, backing state
try() {{
    name=$1; paths=$2; shift 2
    before=$(sigs "$paths")
    "$VMM" --kernel "$KERNEL" --initramfs "$INITRAMFS" --memory 256M --serial off "$@" \
        </dev/null >"out.$name" 2>"err.$name"
    rc=$?
    after=$(sigs "$paths")
    same=no; [ "$before" = "$after" ] && same=yes
    echo "@@BAD-RESULT $name rc=$rc lines=$(wc -l < "err.$name") backing=$same@@"
    while IFS= read -r line; do echo "@@BAD-STDERR $name $line@@"; done < "err.$name"
}}
dd if=/dev/urandom of=data.img bs=1M count=4 2>/dev/null
mkdir adir
cp data.img twice.img
cp data.img key.img
dd if=/dev/urandom of=three.img bs=1M count=3 2>/dev/null
# A file on a file system that is read-only.
mkdir rofs && mount -t tmpfs -o size=8m tmpfs rofs && cp data.img rofs/ro.img && \
    mount -o remount,ro rofs || echo "@@BAD-SETUP read-only tmpfs failed@@"
# A device larger than the guest's CPU can address (twice the physical address space; with
# a wide CPU, more than the 10 TiB a KASLR kernel leaves above RAM): the vmm takes the limit
# from this host's /proc/cpuinfo.
bits=$(grep -m1 'address sizes' /proc/cpuinfo | sed 's/.*: *\([0-9]*\) bits physical.*/\1/')
echo "@@BAD-PHYS-BITS $bits@@"
if [ "$bits" -le 42 ]; then huge=$((2 << bits)); else huge=$((16 << 40)); fi
truncate -s $huge huge.img || echo "@@BAD-SETUP truncate -s $huge failed@@"
echo "@@BAD-HUGE $huge@@"
# 65 devices, one more than the limit.
args=""; many=""; i=0
while [ $i -lt 65 ]; do
    args="$args --pmem path=many$i.img,size=2M"; many="$many many$i.img"; i=$((i + 1))
done
# Another monitor holding lock.img: running its guest.
cp data.img lock.img
"$VMM" --kernel "$KERNEL" --initramfs "$INITRAMFS" --memory 256M --serial file=holder.log \
    --cmdline {holder} --pmem {holder_pmem} </dev/null >holder.out 2>&1 &
holder=$!
i=0
while ! grep -q '@@GUEST-INIT@@' holder.log 2>/dev/null && kill -0 $holder 2>/dev/null &&
    [ $i -lt 1200 ]; do
    sleep 0.1; i=$((i + 1))
done
if kill -0 $holder 2>/dev/null; then echo "@@BAD-HOLDER running@@"
else echo "@@BAD-HOLDER gone@@"; cat holder.out; fi
"#,
        holder = sh_quote(&holder),
        holder_pmem = sh_quote(&format!("path=lock.img{RAW}")),
    );
    for case in BAD_CASES {
        // `$args` and `$many` must split into words: left unquoted on purpose.
        let paths = if case.paths.starts_with('$') {
            format!("\"{}\"", case.paths)
        } else {
            sh_quote(case.paths)
        };
        s.push_str(&format!("try {} {paths} {}\n", case.name, case.args));
    }
    s.push_str(
        "kill -TERM $holder; wait $holder; echo \"@@BAD-HOLDER-EXIT $?@@\"\n\
         umount rofs 2>/dev/null\nexit 0\n",
    );
    Ok(s)
}

/// Bad `--pmem` input: for each case the vmm exits 2 with one line on stderr that names the
/// offending value, and leaves the backing as it was (or absent). One host run holds all cases;
/// the vmm fails before creating a VM, but the "locked" case needs another monitor running a
/// guest, hence the KVM host.
#[test]
fn bad_pmem_input_is_refused_before_anything_runs() -> Result<()> {
    let host = HostOpts::default()
        .with_initramfs(guest_initramfs()?)
        .with_timeout(Duration::from_secs(300));
    let run = run_on_kvm_host(&bad_input_script()?, &host)?;
    eprintln!(
        "{} host: run {:.2?}; CPU physical address bits {:?}, too-big size {:?}",
        run.mode,
        run.duration,
        marker_values(&run.output, "BAD-PHYS-BITS"),
        marker_values(&run.output, "BAD-HUGE")
    );
    run.expect_success()?;
    let setup = marker_values(&run.output, "BAD-SETUP");
    if !setup.is_empty() {
        return Err(run.error(format!("preparing the cases failed: {setup:?}")));
    }
    if marker_values(&run.output, "BAD-HOLDER") != ["running"] {
        return Err(run.error(
            "the monitor that should hold lock.img was not running when the locked case ran",
        ));
    }
    let mut problems = Vec::new();
    for case in BAD_CASES {
        if let Err(p) = check_bad_case(&run, case) {
            problems.push(format!("{}: {p}", case.name));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(run.error(format!(
            "{} of {} bad-input cases wrong:\n  {}",
            problems.len(),
            BAD_CASES.len(),
            problems.join("\n  ")
        )))
    }
}

fn check_bad_case(run: &HostRun, case: &BadCase) -> std::result::Result<(), String> {
    let result = marker_values(&run.output, "BAD-RESULT")
        .into_iter()
        .map(Record::parse)
        .find(|r| r.name == case.name)
        .ok_or("no result line")?;
    let stderr: Vec<&str> = marker_values(&run.output, "BAD-STDERR")
        .into_iter()
        .filter_map(|v| v.strip_prefix(case.name).and_then(|l| l.strip_prefix(' ')))
        .collect();
    let mut wrong = Vec::new();
    if result.get("rc") != "2" {
        wrong.push(format!("exit status {}, expected 2", result.get("rc")));
    }
    if result.get("lines") != "1" {
        wrong.push(format!(
            "{} lines on stderr, expected 1",
            result.get("lines")
        ));
    }
    if result.get("backing") != "yes" {
        wrong.push("the backing changed (checksum or existence)".to_string());
    }
    let text = stderr.join("\n").to_lowercase();
    for alternatives in case.needles {
        if !alternatives
            .iter()
            .any(|n| text.contains(&n.to_lowercase()))
        {
            wrong.push(format!("stderr does not mention {alternatives:?}"));
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("{} — stderr: {stderr:?}", wrong.join("; ")))
    }
}

fn write_at(path: &std::path::Path, offset: u64, data: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.write_all(data))
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

fn read_at(path: &std::path::Path, offset: u64, len: u64) -> Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut buf = vec![0; len as usize];
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.read_exact(&mut buf))
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    Ok(buf)
}

/// A flush storm: all four vCPUs of the guest write and `fsync` `/dev/pmem0` in tight loops for
/// 10 s, each fsync a REQ_PREFLUSH that the pmem driver turns into a flush-hint write. The
/// monitor group-commits them (README, Durability): the exit line must show guest flush
/// requests, no more host `msync`s than requests, none failed. (That no flush completes before
/// an `msync` that started after it finishes, and that at most one runs at a time, is
/// `devices::flush_hint`'s unit tests' business: the guest cannot see it.)
#[test]
fn flush_storm_is_group_committed() -> Result<()> {
    let storm = "end=$(( $(cut -d. -f1 /proc/uptime) + 10 )); \
        for c in 0 1 2 3; do ( n=0; while [ $(cut -d. -f1 /proc/uptime) -lt $end ]; do \
        dd if=/dev/zero of=/dev/pmem0 bs=4096 count=1 seek=$c conv=fsync,notrunc 2>/dev/null; \
        n=$((n+1)); done; echo @@STORM $c $n@@ ) & done; wait";
    let opts = pmem_guest(storm)?
        .with_cpus(4)
        .with_before("truncate -s 64M pm.img")
        .with_vmm_args(pmem(format!("path=pm.img{RAW}")));
    let (run, _) = boot(opts)?;
    run.expect_success()?;
    let loops: u64 = marker_values(run.console(), "STORM")
        .iter()
        .filter_map(|v| v.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    // "pmem0: N guest flush requests, M host flushes (F failed, at most K requests per flush)"
    let line = run
        .console()
        .lines()
        .find(|l| l.contains("pmem0: ") && l.contains("guest flush requests"))
        .ok_or_else(|| run.error("no flush counters line for pmem0 at exit"))?;
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    // The line's numbers after "pmem0": requests, host flushes, failed, largest batch.
    let [_, requests, flushes, failed, batch] = numbers[numbers.len() - 5..] else {
        return Err(run.error(format!("unreadable counters line: {line}")));
    };
    eprintln!(
        "flush storm: {loops} fsyncs by 4 vCPUs in 10 s; {requests} flush requests, {flushes} \
         host flushes, largest batch {batch}"
    );
    run.check(loops > 0 && requests >= loops, || {
        format!("{loops} guest fsyncs but {requests} flush requests: {line}")
    })?;
    run.check(flushes > 0 && flushes <= requests && failed == 0, || {
        format!("host flushes must be 1..=requests, none failed: {line}")
    })
}
