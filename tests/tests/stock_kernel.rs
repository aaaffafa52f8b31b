//! The monitor serving a stock distribution kernel: Debian's `linux-image-amd64`
//! (`guest-kernel/stock.sh`), whose NVDIMM stack is modules (`nfit`, `libnvdimm`, `nd_pmem`,
//! `nd_btt`, `dax_pmem`, `device_dax`), loaded by the guest init from the stock initramfs
//! (`resources/build-initramfs.sh --kernel-modules`).
//!
//! All guests share one host and boot one after another (`boot_guests`; at once, five stock
//! vCPUs on L1's two crawled: a full suite run saw two of them still in early boot after 600 s,
//! where one by one each boots in about 15 s):
//! - no devices, loud (no `quiet`): the kernel reaches init and prints no WARNING, BUG or Fatal
//!   line, and every module loads;
//! - one file-backed fsdax namespace (`memmap=ram`), loud: the host's pattern is visible in the
//!   guest, ext4 `-o dax` works on it (STATX_ATTR_DAX, a MAP_SYNC mapping), the guest's pattern
//!   is in the backing after the run, `ndctl list -RND` shows the region and namespace;
//! - three devices, loud: devdax (`/dev/dax0.0` of the predicted size, written through `mmap`),
//!   fsdax with `memmap=pmem` (`map: dev`), and a read-only raw device (the host's data
//!   readable, writes refused, the backing unchanged);
//! - the ELF image (PVH entry; Debian's vmlinuz carries the Xen PVH note): boots to init.
//!
//! The pfn checker is a debugfs interface of our own guest kernel series and does not exist in
//! the stock kernel; nothing here stands in for it.
//!
//! These need KVM (direct) or QEMU (nested) and fail, never skip, when neither is available.

use std::time::Duration;

use serde_json::Value;
use testbed::markers::marker_values;
use testbed::pmem_checks::{Record, MIB};
use testbed::policy_checks::{self, host_checks, section, PolicyFacts};
use testbed::{
    boot_and_check, stock_kernel, Error, GuestCase, GuestOpts, GuestRun, HostOpts, KernelImage,
    Result, ScratchDir,
};

/// Where the stock tests' own guest functions live in the guest initramfs.
const STOCK_LIB: &str = "/stock-lib.sh";

/// How sysfs spells a namespace's mode (`namespaceX.Y/mode`) when a pfn device claims it (fsdax)
/// and when a dax device does (devdax); the holder's own `mode` (the policy library's `map`) is
/// `ram` or `pmem`, which ndctl shows as `mem` and `dev`.
const SYSFS_FSDAX: &str = "memory";
const SYSFS_DEVDAX: &str = "dax";

/// Bytes of the host's pattern, written 1 MiB before the end of a backing (past any info block
/// reserve, and past the ext4 the guest makes, which leaves the last MiB alone).
const HOST_PATTERN_LEN: u64 = 256 * 1024;

/// Guest functions on top of the policy library (`/policy-lib.sh`): `hostpat NS TAG` reads the
/// host's pattern through the namespace's device (block or dax), at the backing offset
/// `size - 1 MiB` less the namespace's data offset; `rocheck BLK` reports whether a write to a
/// read-only disk is refused; `ndctl_rnd` prints `ndctl list -RND` between markers.
fn stock_lib() -> String {
    format!(
        r#"# stock-lib.sh: sourced by the stock kernel tests' guest commands (after policy-lib.sh).
hostpat() {{
    nsinfo $1
    dataoff=0
    [ -n "$holder" ] && dataoff=$(( hres - base ))
    off=$(( size - 1048576 - dataoff ))
    pat $2 {HOST_PATTERN_LEN} > /tmp/want-$2
    case "$holder" in
        dax*) daxio get /dev/$cdev $cbytes $off {HOST_PATTERN_LEN} /tmp/got-$2 ;;
        *) dd if=/dev/$blk of=/tmp/got-$2 bs=4096 skip=$(( off / 4096 )) \
               count=$(( {HOST_PATTERN_LEN} / 4096 )) 2>/dev/null ;;
    esac
    check hostpat-$2 cmp /tmp/want-$2 /tmp/got-$2
}}
rocheck() {{
    region=$(basename "$(readlink -f /sys/block/$1/device/..)")
    pat guest-ro 4096 > /tmp/ro
    if dd if=/tmp/ro of=/dev/$1 bs=4096 count=1 conv=fsync 2>/dev/null; then w=accepted; else w=refused; fi
    echo "@@STOCK-RO $1 region=$region region_ro=$(cat /sys/bus/nd/devices/$region/read_only) \
disk_ro=$(cat /sys/block/$1/ro) write=$w@@"
}}
ndctl_rnd() {{
    echo "@@STOCK-NDCTL-BEGIN@@"
    ndctl list -RND
    echo "@@STOCK-NDCTL-END $?@@"
}}
"#
    )
}

/// Host commands before the vmm: a sparse backing of `mib` MiB with the host's pattern `tag`.
fn backing_with_pattern(file: &str, mib: u64, tag: &str) -> String {
    format!(
        "truncate -s {mib}M {file} && pat {tag} {HOST_PATTERN_LEN} > {tag}.pat && \
         dd if={tag}.pat of={file} bs=4096 seek={} conv=notrunc 2>/dev/null",
        (mib - 1) * MIB / 4096
    )
}

/// The modules `/init` loads (`resources/guest-modules`).
fn guest_modules() -> Result<Vec<String>> {
    let path = testbed::config::workspace_root().join("resources/guest-modules");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::setup(format!("reading {}: {e}", path.display())))?;
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

/// One guest of the shared host and what its run must show.
fn stock_guest(command: &str) -> GuestOpts {
    GuestOpts::default()
        .with_stock_kernel()
        .with_command(format!(
            ". {}; . {STOCK_LIB}; {command}",
            policy_checks::POLICY_LIB
        ))
}

/// Drops `quiet`, so every kernel message reaches the console.
fn loud(mut opts: GuestOpts) -> GuestOpts {
    opts.kernel_params.retain(|p| p != "quiet");
    opts
}

fn pmem(spec: &str) -> [String; 2] {
    ["--pmem".to_string(), spec.to_string()]
}

fn cases() -> Vec<GuestCase> {
    let host_lib = policy_checks::host_lib();
    vec![
        GuestCase {
            name: "no devices, loud",
            opts: loud(stock_guest("ls -1 /sys/module").with_cpus(2)),
            check: |run| {
                expect_clean_loud_boot(run)?;
                let loaded: Vec<&str> = run.console().lines().map(str::trim).collect();
                let missing: Vec<String> = guest_modules()?
                    .into_iter()
                    .filter(|m| !loaded.contains(&m.as_str()))
                    .collect();
                run.check(missing.is_empty(), || {
                    format!("/sys/module lacks {missing:?}")
                })
            },
        },
        GuestCase {
            name: "one fsdax file, memmap=ram, loud",
            opts: loud(stock_guest(
                "settle 1; nsfacts; hostpat namespace0.0 host-fs; ndctl_rnd; daxcheck_all",
            ))
            .with_before(format!("{host_lib}\n{}", backing_with_pattern("fs.img", 256, "host-fs")))
            .with_vmm_args(pmem("path=fs.img,mode=fsdax,memmap=ram"))
            .with_vmm_args(["--report", "g.json"])
            .with_after(format!("{host_lib}\nhostcheck_all g.json")),
            check: check_one_fsdax,
        },
        GuestCase {
            name: "devdax, fsdax memmap=pmem and read-only raw, loud",
            opts: loud(stock_guest(
                "settle 3; nsfacts; hostpat namespace0.0 host-dd; hostpat namespace1.0 host-fp; \
                 hostpat namespace2.0 host-ro; rocheck pmem2; ndctl_rnd; nsinfo namespace0.0; \
                 devdax_check $cdev $cbytes $base; nsinfo namespace1.0; fsdax_check $blk $base; \
                 check $base-end blkend $blk end-$base",
            ))
            .with_memory("512M")
            .with_before(format!(
                "{host_lib}\n{}\n{}\n{}\nsig ro.img > ro.sig",
                backing_with_pattern("dd.img", 256, "host-dd"),
                backing_with_pattern("fp.img", 512, "host-fp"),
                backing_with_pattern("ro.img", 128, "host-ro"),
            ))
            .with_vmm_args(pmem("path=dd.img,mode=devdax,memmap=ram"))
            .with_vmm_args(pmem("path=fp.img,mode=fsdax,memmap=pmem"))
            .with_vmm_args(pmem("path=ro.img,readonly=on,memmap=none"))
            .with_vmm_args(["--report", "g.json"])
            .with_after(format!(
                "{host_lib}\nhostcheck_all g.json\n\
                 if [ \"$(sig ro.img)\" = \"$(cat ro.sig)\" ]; then r=unchanged; else r=changed; fi\n\
                 echo \"@@STOCK-RO-BACKING $r@@\""
            )),
            check: check_three_devices,
        },
        GuestCase {
            name: "vmlinux (PVH entry)",
            opts: stock_guest("true").with_kernel(KernelImage::Vmlinux),
            check: |run| run.expect_success().map(drop),
        },
    ]
}

/// Every stock kernel case, booted one after another in one host. Each case is checked; the test fails
/// listing every case that failed, each with its console tail.
#[test]
fn stock_kernel_cases_in_one_shared_host() -> Result<()> {
    let stock = stock_kernel()?;
    eprintln!(
        "stock kernel: {} {} (release {}, PVH note: {})",
        stock.info.get("STOCK_PACKAGE").map_or("?", String::as_str),
        stock.info.get("STOCK_VERSION").map_or("?", String::as_str),
        stock.info.get("STOCK_RELEASE").map_or("?", String::as_str),
        stock.info.get("STOCK_PVH").map_or("?", String::as_str),
    );
    let dir = ScratchDir::new("stock-lib")?;
    let lib = dir.path().join("stock-lib.sh");
    std::fs::write(&lib, stock_lib()).map_err(|e| Error::setup(format!("writing {lib:?}: {e}")))?;
    let spec = policy_checks::guest_initramfs()?.with_file(&lib, STOCK_LIB);
    let cases = cases();
    let host = HostOpts::default()
        .with_initramfs(spec)
        .with_timeout(Duration::from_secs(600))
        .with_memory_mib(4096);
    boot_and_check(&host, &cases, false, "stock kernel cases")
}

/// The guest ran its command to success, printed its kernel messages (the stock kernel's
/// release was booted), no WARNING / BUG / Fatal line, and every module of
/// `/etc/guest-modules` loaded.
fn expect_clean_loud_boot(run: &GuestRun) -> Result<()> {
    run.expect_success()?;
    let console = run.console();
    // `stock.sh` names the release; a kernel from PMEMVMM_STOCK_KERNEL is not known by name.
    let banner = match stock_kernel()?.info.get("STOCK_RELEASE") {
        Some(release) => format!("Linux version {release} "),
        None => "Linux version ".to_string(),
    };
    run.check(console.contains(&banner), || {
        format!("the console holds no `{banner}` line: not the stock kernel, or `quiet` kept")
    })?;
    let bad: Vec<&str> = console
        .lines()
        .filter(|l| ["WARNING", "BUG", "Fatal"].iter().any(|w| l.contains(w)))
        .collect();
    run.check(bad.is_empty(), || {
        format!("the guest printed warnings:\n{}", bad.join("\n"))
    })?;
    let failed = marker_values(console, "GUEST-MODPROBE-FAIL");
    run.check(failed.is_empty(), || {
        format!("modules failed to load: {failed:?}")
    })
}

fn expect_checks(run: &GuestRun, facts: &PolicyFacts, names: &[String]) -> Result<()> {
    let failed = facts.failed_checks(names);
    run.check(failed.is_empty(), || {
        format!("guest checks failed: {failed:?}")
    })
}

/// The namespace of `region`, as the guest reported it.
fn namespace<'f>(run: &GuestRun, facts: &'f PolicyFacts, region: &str) -> Result<&'f Record> {
    facts
        .namespaces
        .values()
        .find(|r| r.get("region") == region)
        .ok_or_else(|| {
            run.error(format!(
                "the guest reported no namespace of {region}: {:?}",
                facts.namespaces
            ))
        })
}

/// `ndctl list -RND` as JSON.
fn ndctl_json(run: &GuestRun) -> Result<Value> {
    let text = section(run.console(), "STOCK-NDCTL-BEGIN", "STOCK-NDCTL-END")
        .ok_or_else(|| run.error("no ndctl list -RND output"))?;
    // Kernel messages (this guest is loud) may land between ndctl's lines.
    let json: String = text
        .lines()
        .filter(|l| !is_kernel_message(l))
        .map(|l| format!("{l}\n"))
        .collect();
    serde_json::from_str(json.trim())
        .map_err(|e| run.error(format!("ndctl list -RND printed no JSON ({e}): {text}")))
}

/// A printk line: `[ seconds.micros] ...`.
fn is_kernel_message(line: &str) -> bool {
    line.trim_start()
        .strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .is_some_and(|(stamp, _)| {
            let t = stamp.trim();
            !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.')
        })
}

/// ndctl's one namespace of `region` (its `dev`, the sysfs name the guest reported).
fn ndctl_namespace(run: &GuestRun, json: &Value, region: &str) -> Result<Value> {
    let regions = json["regions"].as_array().cloned().unwrap_or_default();
    let found = regions
        .iter()
        .find(|r| r["dev"] == region && r["type"] == "pmem")
        .ok_or_else(|| run.error(format!("ndctl shows no pmem {region}: {json}")))?;
    let namespaces = found["namespaces"].as_array().cloned().unwrap_or_default();
    run.check(namespaces.len() == 1, || {
        format!("ndctl shows namespaces {namespaces:?} in {region}, expected one")
    })?;
    Ok(namespaces[0].clone())
}

/// The host's check of `path`: `capacity` and `data_offset` from `--report`, and whether the
/// guest's end pattern (and for devdax its start pattern) is in the backing.
fn host_check(run: &GuestRun, path: &str) -> Result<Record> {
    host_checks(&run.host.output)
        .remove(path)
        .ok_or_else(|| run.error(format!("no host check of {path}")))
}

fn check_one_fsdax(run: &GuestRun) -> Result<()> {
    expect_clean_loud_boot(run)?;
    let facts = PolicyFacts::parse(run.console());
    let ns = namespace(run, &facts, "region0")?;
    let base = ns.num("base").unwrap_or(0);
    let host = host_check(run, "fs.img")?;
    let capacity = host.num("capacity").unwrap_or(0);
    run.check(
        ns.get("mode") == SYSFS_FSDAX
            && ns.get("holder").starts_with("pfn")
            && ns.get("map") == "ram"
            && ns.num("bytes") == Some(capacity),
        || {
            format!(
                "expected an fsdax namespace, memmap in RAM (map=mem), {capacity} bytes: {ns:?}"
            )
        },
    )?;
    let b = base.to_string();
    let names: Vec<String> = ["hostpat-host-fs".to_string()]
        .into_iter()
        .chain(policy_checks::fsdax_checks(base))
        .collect();
    expect_checks(run, &facts, &names)?;
    run.check(
        facts.statx.get(&b).is_some_and(|s| s.contains("dax=1")),
        || {
            format!(
                "the file in the -o dax mount is not DAX: statx {:?}",
                facts.statx.get(&b)
            )
        },
    )?;
    run.check(host.get("end") == "ok", || {
        format!("the guest's end pattern is not in fs.img after the run: {host:?}")
    })?;
    let json = ndctl_json(run)?;
    let dimms = json["dimms"].as_array().map_or(0, Vec::len);
    run.check(dimms == 1, || {
        format!("ndctl shows {dimms} DIMMs, expected 1: {json}")
    })?;
    let nd = ndctl_namespace(run, &json, "region0")?;
    run.check(
        nd["mode"] == "fsdax"
            && nd["map"] == "mem"
            && nd["size"].as_u64() == Some(capacity)
            && nd["blockdev"] == ns.get("block"),
        || format!("ndctl's namespace should be fsdax, map mem, {capacity} bytes: {nd}"),
    )
}

fn check_three_devices(run: &GuestRun) -> Result<()> {
    expect_clean_loud_boot(run)?;
    let facts = PolicyFacts::parse(run.console());
    let json = ndctl_json(run)?;
    let dimms = json["dimms"].as_array().map_or(0, Vec::len);
    run.check(dimms == 3, || {
        format!("ndctl shows {dimms} DIMMs, expected 3: {json}")
    })?;
    expect_checks(
        run,
        &facts,
        &["hostpat-host-dd", "hostpat-host-fp", "hostpat-host-ro"].map(String::from),
    )?;

    // devdax: /dev/dax0.0 of the capacity the monitor reported, written through mmap.
    let dd = namespace(run, &facts, "region0")?;
    let dd_host = host_check(run, "dd.img")?;
    let dd_capacity = dd_host.num("capacity").unwrap_or(0);
    run.check(
        dd.get("mode") == SYSFS_DEVDAX
            && dd.get("chardev") == "dax0.0"
            && dd.num("cbytes") == Some(dd_capacity)
            && dd.get("map") == "ram",
        || format!("expected devdax /dev/dax0.0 of {dd_capacity} bytes, memmap in RAM: {dd:?}"),
    )?;
    let b = dd.get("base");
    expect_checks(
        run,
        &facts,
        &[format!("{b}-mmap-start"), format!("{b}-mmap-end")],
    )?;
    run.check(
        dd_host.get("start") == "ok" && dd_host.get("end") == "ok",
        || format!("the guest's mmap writes are not in dd.img: {dd_host:?}"),
    )?;
    let nd = ndctl_namespace(run, &json, "region0")?;
    run.check(
        nd["mode"] == "devdax" && nd["map"] == "mem" && nd["chardev"] == "dax0.0",
        || format!("ndctl's namespace should be devdax dax0.0, map mem: {nd}"),
    )?;

    // fsdax with the memmap in the device's reserve.
    let fp = namespace(run, &facts, "region1")?;
    let fp_host = host_check(run, "fp.img")?;
    let fp_capacity = fp_host.num("capacity").unwrap_or(0);
    run.check(
        fp.get("mode") == SYSFS_FSDAX
            && fp.get("map") == "pmem"
            && fp.num("bytes") == Some(fp_capacity),
        || format!("expected fsdax of {fp_capacity} bytes, memmap on the device: {fp:?}"),
    )?;
    let b = fp.get("base");
    expect_checks(
        run,
        &facts,
        &[
            "mkfs", "mount", "write", "sync", "mapsync", "readback", "umount", "end",
        ]
        .map(|c| format!("{b}-{c}")),
    )?;
    run.check(fp_host.get("end") == "ok", || {
        format!("the guest's end pattern is not in fp.img: {fp_host:?}")
    })?;
    let nd = ndctl_namespace(run, &json, "region1")?;
    run.check(
        nd["mode"] == "fsdax" && nd["map"] == "dev" && nd["size"].as_u64() == Some(fp_capacity),
        || format!("ndctl's namespace should be fsdax, map dev, {fp_capacity} bytes: {nd}"),
    )?;

    // read-only raw: readable (hostpat above), writes refused, backing unchanged.
    let ro = namespace(run, &facts, "region2")?;
    run.check(
        ro.get("mode") == "raw" && ro.get("block") == "pmem2",
        || format!("expected a raw namespace with /dev/pmem2: {ro:?}"),
    )?;
    let ro_report: Vec<Record> = marker_values(run.console(), "STOCK-RO")
        .into_iter()
        .map(Record::parse)
        .collect();
    run.check(
        ro_report.len() == 1
            && ro_report[0].get("region_ro") == "1"
            && ro_report[0].get("disk_ro") == "1"
            && ro_report[0].get("write") == "refused",
        || format!("the read-only device should be read-only and refuse writes: {ro_report:?}"),
    )?;
    let backing = marker_values(&run.host.output, "STOCK-RO-BACKING");
    run.check(backing == ["unchanged"], || {
        format!("ro.img after the run: {backing:?}")
    })
}
