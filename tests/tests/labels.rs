//! Namespace labels (`--pmem ...,labels=on`) end to end: the guest carves a labelled DIMM into
//! namespaces with `ndctl`, through the monitor's `_DSM` mailbox, and finds them again after
//! the monitor restarts on the same backings.
//!
//! One host run, three monitor runs on the same two file-backed DIMMs (`A`, 1 GiB, and `B`,
//! 1 GiB + 2 MiB, a size that is not a multiple of 16 MiB):
//!
//! 1. `first`: the label areas are blank, so the guest sees label-less regions; it disables the
//!    regions, `ndctl init-labels`, enables them, creates on A an fsdax namespace with its
//!    memmap in the device (`-M dev -s 256M`) and a devdax one with its memmap in RAM
//!    (`-M mem -s 256M`), and on B one fsdax namespace over the whole region; writes a file
//!    through an ext4 `-o dax` mount of each fsdax namespace and a pattern through an `mmap` of
//!    the devdax one; the kernel's pfn checker passes on every namespace.
//! 2. `second` (a new monitor, same backings, default options): the monitor reads the labels
//!    (the report says 2 and 1 labels in use, no info block written), the guest finds the same
//!    namespaces (uuid, mode, size), reads its data back, the pfn checker passes; then
//!    `ndctl destroy-namespace` removes A's namespaces.
//! 3. `third`: A has no namespace left and its report says 0 labels in use; B's namespace is
//!    still there. B has `health=critical` (in every run): `ndctl list -DH` shows it.
//!
//! Every run has `--seccomp true`: the label writes are served, and made durable, on vCPU
//! threads under their filter.
//!
//! The whole sequence runs twice: on our guest kernel, and on Debian's stock kernel with the
//! NVDIMM drivers as modules (`..._on_the_stock_kernel`), where everything is checked the same
//! but the pfn checker, which only our kernel has.
//!
//! The regions are 2 MiB-granular and end where the monitor says: A's is 1 GiB - 2 MiB, B's
//! exactly 1 GiB (the label area sits in the last 2 MiB of each backing).
//!
//! This needs KVM (direct) or QEMU (nested) and fails, never skips, when neither is available or
//! ndctl / mkfs.ext4 are missing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use testbed::markers::marker_values;
use testbed::policy_checks::{guest_initramfs, vmm_run_of, GuestImages, VmmRun};
use testbed::{run_on_kvm_host, Error, HostOpts, Result, ScratchDir, StockStaging};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TAIL: usize = 80;

/// The guest side, `sh /labels.sh PHASE`.
const GUEST_SCRIPT: &str = r#". /policy-lib.sh
phase=$1
for b in /sys/bus/nd/devices/ndbus*/wait_probe; do cat "$b" > /dev/null 2>&1; done
lab() { echo "@@LAB $*@@"; }
# every namespace with a size: name, uuid, region, size, the device claiming it
listns() {
    for n in $ND/namespace*; do
        [ -e "$n/size" ] || continue
        [ "$(cat $n/size)" -gt 0 ] || continue
        nsinfo ${n##*/}
        lab "NS $name uuid=$(cat $n/uuid) region=$region size=$size holder=${holder:-none} map=$map blk=$blk cdev=$cdev cbytes=$cbytes"
    done
    for r in $ND/region*; do
        lab "REGION ${r##*/} base=$(( $(cat $r/resource) )) size=$(cat $r/size) align=$(cat $r/align)"
    done
}
# data MODE: write (MODE=write) or check (MODE=check) a file in each fsdax namespace's ext4 -o
# dax mount and a pattern 2 MiB into each devdax namespace, tagged with the namespace uuid
data() {
    for n in $ND/namespace*; do
        [ -e "$n/size" ] && [ "$(cat $n/size)" -gt 0 ] || continue
        nsinfo ${n##*/}
        u=$(cat $n/uuid)
        case "$holder" in
            pfn*)
                mkdir -p /mnt/$blk
                [ $1 = write ] && check $u-mkfs mkfs.ext4 -q -F -b 4096 /dev/$blk
                check $u-mount mount -t ext4 -o dax /dev/$blk /mnt/$blk
                pat persist-$u 300000 > /tmp/p-$u
                if [ $1 = write ]; then cp /tmp/p-$u /mnt/$blk/persist; check $u-sync sync
                else check $u-persisted cmp /tmp/p-$u /mnt/$blk/persist; fi
                echo "@@LAB STATX $u $(daxio statx /mnt/$blk/persist)@@"
                check $u-umount umount /mnt/$blk ;;
            dax*)
                pat persist-$u 65536 > /tmp/p-$u
                if [ $1 = write ]; then
                    check $u-mmap daxio put /dev/$cdev $cbytes 2097152 /tmp/p-$u
                else
                    daxio get /dev/$cdev $cbytes 2097152 65536 /tmp/g-$u
                    check $u-persisted cmp /tmp/p-$u /tmp/g-$u
                fi ;;
        esac
    done
}
case $phase in
first)
    lab "DIMMS $(ndctl list -D | tr -d ' \n')"
    check disable-region ndctl disable-region all
    check init-labels ndctl init-labels all
    check enable-region ndctl enable-region all
    check create-a-fsdax ndctl create-namespace -r region0 -m fsdax -M dev -s 256M
    check create-a-devdax ndctl create-namespace -r region0 -m devdax -M mem -s 256M
    check create-b-fsdax ndctl create-namespace -r region1 -m fsdax -M dev
    settle 3
    listns
    data write ;;
second)
    settle 3
    listns
    data check ;;
third)
    listns
    lab "HEALTH $(ndctl list -DH | tr -d ' \n')" ;;
esac
pmem-report --label $phase --check
if [ $phase = second ]; then
    check destroy ndctl destroy-namespace -f -r region0 all
    lab "AFTER-DESTROY $(ndctl list -r region0 -N | tr -d ' \n')"
fi
ndctl_list
"#;

/// A failure in `run`, with its console tail.
fn fail(run: &VmmRun, msg: impl Into<String>) -> Error {
    Error::Guest {
        msg: format!("run {:?}: {}", run.label, msg.into()),
        tail: run.tail(TAIL),
    }
}

/// `key=value` words after a first word.
fn fields(rest: &str) -> BTreeMap<String, String> {
    rest.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The guest's `@@LAB NS name ...@@` records by namespace name.
fn namespaces(run: &VmmRun) -> BTreeMap<String, BTreeMap<String, String>> {
    marker_values(&run.console, "LAB")
        .into_iter()
        .filter_map(|v| v.strip_prefix("NS "))
        .filter_map(|v| v.split_once(' '))
        .map(|(name, rest)| (name.to_string(), fields(rest)))
        .collect()
}

/// The guest's `@@LAB REGION name ...@@` records by region name.
fn regions(run: &VmmRun) -> BTreeMap<String, BTreeMap<String, String>> {
    marker_values(&run.console, "LAB")
        .into_iter()
        .filter_map(|v| v.strip_prefix("REGION "))
        .filter_map(|v| v.split_once(' '))
        .map(|(name, rest)| (name.to_string(), fields(rest)))
        .collect()
}

/// The vmm's report devices.
fn report(run: &VmmRun) -> Result<Vec<Value>> {
    let v: Value = serde_json::from_str(&run.report).map_err(|e| {
        fail(
            run,
            format!("vmm --report is not JSON ({e}): {:?}", run.report),
        )
    })?;
    v["pmem"]
        .as_array()
        .cloned()
        .ok_or_else(|| fail(run, format!("no pmem array in {v}")))
}

/// Every `check` the guest ran passed, and at least `names` ran.
fn expect_checks(run: &VmmRun, names: &[String]) -> Result<()> {
    let facts = run.facts();
    let failed: Vec<String> = facts
        .checks
        .iter()
        .filter(|(_, v)| v.as_str() != "ok")
        .map(|(k, v)| format!("{k}: {v}"))
        .chain(
            names
                .iter()
                .filter(|n| !facts.checks.contains_key(*n))
                .map(|n| format!("{n}: missing")),
        )
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(fail(run, format!("guest checks failed: {failed:?}")))
    }
}

/// The pfn checker's verdict on every namespace in `names` (from `pmem-report --check`).
fn expect_checker_passes(run: &VmmRun, names: &[&String]) -> Result<()> {
    let begin = format!("@@PMEM-REPORT-BEGIN {}@@", run.label);
    let end = format!("@@PMEM-REPORT-END {}@@", run.label);
    let body = run
        .console
        .split_once(&begin)
        .and_then(|(_, rest)| rest.split_once(&end))
        .map(|(body, _)| body)
        .ok_or_else(|| fail(run, "no pmem-report block"))?;
    let kv: BTreeMap<&str, &str> = body
        .lines()
        .filter_map(|l| l.trim().split_once('='))
        .collect();
    if kv.get("checker") != Some(&"present") {
        return Err(fail(run, format!("checker={:?}", kv.get("checker"))));
    }
    for ns in names {
        let get = |k: &str| kv.get(format!("check.{ns}.{k}").as_str()).copied();
        if get("result") != Some("pass") || get("failed_pfns") != Some("0") {
            return Err(fail(
                run,
                format!(
                    "pfn checker on {ns}: result {:?}, failed_pfns {:?}",
                    get("result"),
                    get("failed_pfns")
                ),
            ));
        }
    }
    Ok(())
}

/// The report's label facts for device `i`: (label area offset, labels in use).
fn labels_of(run: &VmmRun, devs: &[Value], i: usize) -> Result<(u64, Option<u64>)> {
    let l = &devs[i]["labels"];
    match l["offset"].as_u64() {
        Some(offset) => Ok((offset, l["labels_in_use"].as_u64())),
        None => Err(fail(
            run,
            format!("device {i} has no labels in the report: {}", devs[i]),
        )),
    }
}

#[test]
fn guest_namespaces_on_labelled_dimms_survive_a_restart() -> Result<()> {
    labelled_dimms(GuestImages::OURS)
}

/// The same on Debian's stock kernel, whose NVDIMM drivers are modules: labels, namespaces,
/// restart, destroy and health as on ours; there is no pfn checker to ask.
#[test]
fn guest_namespaces_on_labelled_dimms_survive_a_restart_on_the_stock_kernel() -> Result<()> {
    labelled_dimms(GuestImages::STOCK)
}

fn labelled_dimms(images: GuestImages) -> Result<()> {
    let stock = images == GuestImages::STOCK;
    let scratch = ScratchDir::new("labels")?;
    let script_path = scratch.path().join("labels.sh");
    std::fs::write(&script_path, GUEST_SCRIPT).map_err(|e| Error::setup(e.to_string()))?;
    let initramfs = guest_initramfs()?
        .with_file(
            testbed::config::workspace_root().join("resources/guest-agent/pmem-report"),
            "/usr/bin/pmem-report",
        )
        .with_file(&script_path, "/labels.sh")
        .with_file("/etc/mke2fs.conf", "/etc/mke2fs.conf");
    let pmem = |extra: &str| -> Vec<String> {
        vec![
            "--pmem".into(),
            format!("path=a.img,labels=on{extra}"),
            "--pmem".into(),
            format!("path=b.img,labels=on,health=critical{extra}"),
            // The vCPU filter must allow what serving a label write takes (an msync).
            "--seccomp".into(),
            "true".into(),
        ]
    };
    let script = format!(
        "truncate -s 1G a.img\ntruncate -s {} b.img\n{}{}{}",
        GIB + 2 * MIB,
        vmm_run_of(images, "first", "512M", "sh /labels.sh first", &pmem(""))?,
        vmm_run_of(images, "second", "512M", "sh /labels.sh second", &pmem(""))?,
        vmm_run_of(images, "third", "512M", "sh /labels.sh third", &pmem(""))?,
    );
    let mut host_opts = HostOpts::default()
        .with_initramfs(initramfs)
        .with_timeout(Duration::from_secs(900));
    if stock {
        host_opts.stock_kernel = StockStaging::BzImage;
    }
    let started = Instant::now();
    let host = run_on_kvm_host(&script, &host_opts)?;
    eprintln!(
        "labels ({}): {} host, run {:.1?}, wall {:.1?}",
        images.kernel,
        host.mode,
        host.duration,
        started.elapsed()
    );
    host.expect_success()?;
    let run = |label: &str| {
        VmmRun::parse(&host.output, label)
            .ok_or_else(|| host.error(format!("the host never started run {label:?}")))
    };
    let (first, second, third) = (run("first")?, run("second")?, run("third")?);
    for r in [&first, &second, &third] {
        let (init, exit) = r.guest_exit();
        if r.rc != Some(0) || !init || exit != Some(0) {
            return Err(fail(
                r,
                format!(
                    "vmm exit {:?}, guest init {init}, guest exit {exit:?}",
                    r.rc
                ),
            ));
        }
    }

    // Run 1: label-less regions of the sizes the monitor gives; then three namespaces.
    let devs = report(&first)?;
    for (i, (backing, region)) in [(GIB, GIB - 2 * MIB), (GIB + 2 * MIB, GIB)]
        .iter()
        .enumerate()
    {
        let (offset, in_use) = labels_of(&first, &devs, i)?;
        let d = &devs[i];
        if d["size"].as_u64() != Some(*region)
            || d["backing_size"].as_u64() != Some(*backing)
            || offset != backing - 128 * 1024
            || in_use.is_some()
        {
            return Err(fail(&first, format!("device {i} in the first report: {d}")));
        }
    }
    let regs = regions(&first);
    for (name, d) in ["region0", "region1"].iter().zip(&devs) {
        let r = regs
            .get(*name)
            .ok_or_else(|| fail(&first, format!("no {name}: {regs:?}")))?;
        let (base, size) = (d["guest_base"].as_u64(), d["size"].as_u64());
        if r.get("base").and_then(|b| b.parse().ok()) != base
            || r.get("size").and_then(|s| s.parse().ok()) != size
        {
            return Err(fail(
                &first,
                format!("{name} is {r:?}, the monitor placed {d}"),
            ));
        }
    }
    let created = namespaces(&first);
    let by_holder = |ns: &BTreeMap<String, BTreeMap<String, String>>, region: &str, h: &str| {
        ns.values()
            .filter(|n| n["region"] == region && n["holder"].starts_with(h))
            .count()
    };
    if created.len() != 3
        || by_holder(&created, "region0", "pfn") != 1
        || by_holder(&created, "region0", "dax") != 1
        || by_holder(&created, "region1", "pfn") != 1
    {
        return Err(fail(
            &first,
            format!("namespaces after creating: {created:?}"),
        ));
    }
    for n in created.values() {
        let size: u64 = n["size"].parse().unwrap_or(0);
        if n["region"] == "region0" && size != 256 * MIB {
            return Err(fail(&first, format!("a 256 MiB namespace is {n:?}")));
        }
        if !size.is_multiple_of(16 * MIB) {
            return Err(fail(
                &first,
                format!("namespace not 16 MiB-granular: {n:?}"),
            ));
        }
    }
    let mut names: Vec<String> = ["disable-region", "init-labels", "enable-region"]
        .iter()
        .chain(&["create-a-fsdax", "create-a-devdax", "create-b-fsdax"])
        .map(|s| s.to_string())
        .collect();
    for n in created.values() {
        let u = &n["uuid"];
        if n["holder"].starts_with("pfn") {
            names.extend(["mkfs", "mount", "sync", "umount"].map(|c| format!("{u}-{c}")));
        } else {
            names.push(format!("{u}-mmap"));
        }
    }
    expect_checks(&first, &names)?;
    if !stock {
        expect_checker_passes(&first, &created.keys().collect::<Vec<_>>())?;
    }

    // Run 2: the monitor found the labels and wrote nothing; the guest found the namespaces.
    let devs = report(&second)?;
    for (i, want) in [(0, 2), (1, 1)] {
        let (_, in_use) = labels_of(&second, &devs, i)?;
        let d = &devs[i];
        if in_use != Some(want)
            || d["mode"] != "labels"
            || d["info_block_written"] != Value::Bool(false)
        {
            return Err(fail(
                &second,
                format!("device {i} in the second report: {d}"),
            ));
        }
    }
    let again = namespaces(&second);
    let identity = |ns: &BTreeMap<String, BTreeMap<String, String>>| {
        // The claiming device's kind (pfn or dax), not its number: the kernel numbers those
        // in probe order, seeds included.
        ns.values()
            .map(|n| {
                let mut v = ["uuid", "region", "size", "holder", "map", "cbytes"]
                    .map(|k| n.get(k).cloned().unwrap_or_default());
                v[3] = v[3]
                    .trim_end_matches(|c: char| c.is_ascii_digit() || c == '.')
                    .into();
                v
            })
            .collect::<std::collections::BTreeSet<_>>()
    };
    if identity(&created) != identity(&again) {
        return Err(fail(
            &second,
            format!("the namespaces changed across the restart:\n  {created:?}\n  {again:?}"),
        ));
    }
    let mut names: Vec<String> = vec!["destroy".into()];
    for n in again.values() {
        let u = &n["uuid"];
        if n["holder"].starts_with("pfn") {
            names.extend(["mount", "persisted", "umount"].map(|c| format!("{u}-{c}")));
        } else {
            names.push(format!("{u}-persisted"));
        }
    }
    expect_checks(&second, &names)?;
    if !stock {
        expect_checker_passes(&second, &again.keys().collect::<Vec<_>>())?;
    }
    for v in marker_values(&second.console, "LAB") {
        if let Some(statx) = v.strip_prefix("STATX ") {
            if !statx.ends_with("dax=1") {
                return Err(fail(&second, format!("a DAX file is not DAX: {statx}")));
            }
        }
    }

    // Run 3: A's namespaces are gone, B's is there.
    let devs = report(&third)?;
    let (_, a_in_use) = labels_of(&third, &devs, 0)?;
    let (_, b_in_use) = labels_of(&third, &devs, 1)?;
    let left = namespaces(&third);
    if a_in_use != Some(0)
        || b_in_use != Some(1)
        || left.len() != 1
        || left.values().any(|n| n["region"] != "region1")
    {
        return Err(fail(
            &third,
            format!("after destroy-namespace: labels A {a_in_use:?} B {b_in_use:?}, namespaces {left:?}"),
        ));
    }
    let health = marker_values(&third.console, "LAB")
        .into_iter()
        .find_map(|v| v.strip_prefix("HEALTH "))
        .ok_or_else(|| fail(&third, "no ndctl list -DH output"))?;
    let dimms: Value = serde_json::from_str(health).map_err(|e| {
        fail(
            &third,
            format!("ndctl list -DH is not JSON ({e}): {health}"),
        )
    })?;
    let b = dimms
        .as_array()
        .and_then(|a| a.iter().find(|d| d["handle"] == 2))
        .ok_or_else(|| fail(&third, format!("no DIMM with handle 2: {dimms}")))?;
    if b["health"]["health_state"] != "critical" || b["health"]["spares_percentage"] != 100 {
        return Err(fail(&third, format!("B's health: {b}")));
    }
    Ok(())
}
