//! The memmap policy (`--pmem ...,memmap=,mode=,align=,format=`) end to end: what the guest
//! makes of each namespace the monitor formatted, checked from inside the guest against the
//! monitor's own prediction (`vmm --report`).
//!
//! * every mode (fsdax, devdax) with every memmap location (ram, pmem), plus a raw namespace,
//!   in one guest: the guest's sysfs and `ndctl list -N` show the mode and map asked for, the
//!   device has the predicted capacity, and DAX works (ext4 `-o dax` with `STATX_ATTR_DAX` and
//!   `MAP_SYNC` on fsdax, `mmap` of `/dev/daxN.M` on devdax), with the guest's bytes found in
//!   the backings at the predicted offsets;
//! * the guest RAM a 4 GiB namespace's memmap costs, measured in the guest, against the report
//!   (three 4 GiB devices with three policies, none, ram and pmem, in one guest);
//! * a restart with `format=keep` brings up the same namespaces and the data written before;
//! * a namespace QEMU's guest formatted with ndctl is accepted by `memmap=pmem,format=keep` and
//!   refused by `memmap=ram,format=keep`;
//! * `memmap=auto` on blank devices;
//! * bad input is refused with exit status 2 and a clear line, the backing unchanged, also when
//!   the problem is found only after another device was planned.
//!
//! Six guest boots in all (one for the restart test's second run), each nested host run
//! 3-15 s on a quiet 2-core machine; most wall time is waiting for the job slot.
//!
//! Each host script runs one or more labelled vmm runs
//! ([`testbed::policy_checks::vmm_run`]); the guest sources the policy library and reports
//! `@@POL-...@@` markers; all assertions are made here. Namespaces are matched to devices by
//! guest physical base (region resource = the report's `guest_base`). Backing paths are
//! relative to `$WORK`.
//!
//! These need KVM (direct) or QEMU (nested) and fail, never skip, when neither is available or
//! a tool (ndctl, mkfs.ext4, gcc with a static libc) is missing.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use testbed::markers::{marker_values, tail_lines};
use testbed::nested::qemu_opt_escape;
use testbed::pmem_checks::{Record, GIB, MIB};
use testbed::policy_checks::{
    fsdax_checks, guest_initramfs, host_checks, host_lib, require_tool, vmm_run, PolicyFacts,
    VmmRun, NDCTL,
};
use testbed::{run_on_kvm_host, Error, HostOpts, HostRun, Nvdimm, Result, ScratchDir};

/// Lines of a run's console shown with a failure.
const TAIL: usize = 60;

/// One device as `vmm --report` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Dev {
    path: String,
    guest_base: u64,
    size: u64,
    mode: String,
    memmap: String,
    memmap_bytes: u64,
    ram_cost_bytes: u64,
    device_reserve_bytes: u64,
    data_offset: u64,
    capacity: u64,
    align: u64,
    info_block_written: bool,
}

impl Dev {
    /// What a later run with the same backing must reproduce: everything but the write flag.
    fn layout(&self) -> Dev {
        Dev {
            info_block_written: false,
            ..self.clone()
        }
    }
}

/// A failure in `run`, with its console tail.
fn fail(run: &VmmRun, msg: impl Into<String>) -> Error {
    Error::Guest {
        msg: format!("run {:?}: {}", run.label, msg.into()),
        tail: run.tail(TAIL),
    }
}

/// The labelled run in the host's output.
fn vmm_section(host: &HostRun, label: &str) -> Result<VmmRun> {
    VmmRun::parse(&host.output, label)
        .ok_or_else(|| host.error(format!("the host script never started vmm run {label:?}")))
}

/// Runs a host script; logs where the time went.
fn run_host(name: &str, script: &str, host: HostOpts) -> Result<HostRun> {
    let started = Instant::now();
    let run = run_on_kvm_host(script, &host)?;
    eprintln!(
        "{name}: {} host, run {:.1?} (host ready after {:?}), wall {:.1?} including the wait \
         for a job slot",
        run.mode,
        run.duration,
        run.host_ready,
        started.elapsed()
    );
    Ok(run)
}

fn policy_host(timeout_s: u64) -> Result<HostOpts> {
    Ok(HostOpts::default()
        .with_initramfs(guest_initramfs()?)
        .with_timeout(Duration::from_secs(timeout_s)))
}

fn pmem(spec: impl Into<String>) -> [String; 2] {
    ["--pmem".to_string(), spec.into()]
}

/// The vmm exited 0 after the guest command exited 0.
fn expect_booted(run: &VmmRun) -> Result<()> {
    let (init, exit) = run.guest_exit();
    if run.rc == Some(0) && init && exit == Some(0) {
        Ok(())
    } else {
        Err(fail(
            run,
            format!(
                "expected a guest that ran its command successfully: vmm exit {:?}, guest init \
                 seen {init}, guest command exit {exit:?}",
                run.rc
            ),
        ))
    }
}

/// The devices of the run's `--report`, in command-line order.
fn report(run: &VmmRun) -> Result<Vec<Dev>> {
    let v: Value = serde_json::from_str(&run.report).map_err(|e| {
        fail(
            run,
            format!("vmm --report is not JSON ({e}): {:?}", run.report),
        )
    })?;
    let devs = v["pmem"]
        .as_array()
        .ok_or_else(|| fail(run, format!("vmm --report has no pmem array: {v}")))?;
    devs.iter()
        .map(|d| {
            let num = |k: &str| {
                d[k].as_u64()
                    .ok_or_else(|| fail(run, format!("vmm --report: no number {k} in {d}")))
            };
            let text = |k: &str| {
                d[k].as_str()
                    .map(String::from)
                    .ok_or_else(|| fail(run, format!("vmm --report: no string {k} in {d}")))
            };
            Ok(Dev {
                path: text("path")?,
                guest_base: num("guest_base")?,
                size: num("size")?,
                mode: text("mode")?,
                memmap: text("memmap")?,
                memmap_bytes: num("memmap_bytes")?,
                ram_cost_bytes: num("ram_cost_bytes")?,
                device_reserve_bytes: num("device_reserve_bytes")?,
                data_offset: num("data_offset")?,
                capacity: num("capacity")?,
                align: num("align")?,
                info_block_written: d["info_block_written"].as_bool().ok_or_else(|| {
                    fail(run, format!("vmm --report: no info_block_written in {d}"))
                })?,
            })
        })
        .collect()
}

/// The report's device for `path`.
fn dev<'d>(run: &VmmRun, devs: &'d [Dev], path: &str) -> Result<&'d Dev> {
    devs.iter()
        .find(|d| d.path == path)
        .ok_or_else(|| fail(run, format!("vmm --report has no device {path}: {devs:?}")))
}

/// `ndctl list -N` entries (it prints one object for one namespace, an array for several).
fn ndctl_namespaces(run: &VmmRun, facts: &PolicyFacts) -> Result<Vec<Value>> {
    let (rc, text) = facts
        .ndctl
        .clone()
        .ok_or_else(|| fail(run, "the guest printed no `ndctl list -N` output"))?;
    if rc != 0 {
        return Err(fail(run, format!("`ndctl list -N` exited {rc}: {text}")));
    }
    let v: Value = serde_json::from_str(text.trim()).map_err(|e| {
        fail(
            run,
            format!("`ndctl list -N` printed no JSON ({e}): {text}"),
        )
    })?;
    Ok(match v {
        Value::Array(a) => a,
        Value::Object(_) => vec![v],
        _ => Vec::new(),
    })
}

/// Checks what the guest made of device `d`: the namespace at its base has the report's mode
/// (sysfs `mode`: `memory` for fsdax, `dax` for devdax, `raw`), memmap location (the claiming
/// pfn/dax device's `mode`), data offset (its `resource` minus the base), alignment and
/// capacity (its `size`, the `/dev/pmemN` size or the `/dev/daxN.M` size); `ndctl list -N`
/// agrees (mode, map `mem`/`dev`, size, device name). Returns the namespace record.
fn check_guest_view<'f>(
    run: &VmmRun,
    facts: &'f PolicyFacts,
    ndctl: &[Value],
    d: &Dev,
) -> Result<&'f Record> {
    let ns = facts.namespaces.get(&d.guest_base).ok_or_else(|| {
        fail(
            run,
            format!(
                "{}: the guest has no namespace at {:#x} (the report's guest_base); it has {:?}",
                d.path,
                d.guest_base,
                facts.namespaces.values().collect::<Vec<_>>()
            ),
        )
    })?;
    let mut wrong = Vec::new();
    let num = |k: &str| ns.num(k).unwrap_or(u64::MAX);
    let (sys_mode, holder_prefix, ndctl_mode) = match d.mode.as_str() {
        "fsdax" => ("memory", "pfn", "fsdax"),
        "devdax" => ("dax", "dax", "devdax"),
        _ => ("raw", "none", "raw"),
    };
    differ(
        &mut wrong,
        "namespace mode",
        ns.get("mode").into(),
        sys_mode.into(),
    );
    differ(
        &mut wrong,
        "namespace size",
        num("size").to_string(),
        d.size.to_string(),
    );
    let holder = ns.get("holder");
    if !holder.starts_with(holder_prefix) {
        wrong.push(format!(
            "claimed by {holder:?}, expected a {holder_prefix}* device"
        ));
    }
    differ(
        &mut wrong,
        "memmap location (map)",
        ns.get("map").into(),
        d.memmap.clone(),
    );
    match d.mode.as_str() {
        "fsdax" | "devdax" => {
            differ(
                &mut wrong,
                "data size (holder size)",
                num("hsize").to_string(),
                d.capacity.to_string(),
            );
            differ(
                &mut wrong,
                "data offset (holder resource - base)",
                num("hres").wrapping_sub(d.guest_base).to_string(),
                d.data_offset.to_string(),
            );
            differ(
                &mut wrong,
                "holder align",
                num("halign").to_string(),
                d.align.to_string(),
            );
        }
        _ => {}
    }
    match d.mode.as_str() {
        "devdax" => {
            if ns.get("chardev") == "none" {
                wrong.push("no /dev/daxN.M".into());
            }
            differ(
                &mut wrong,
                "/dev/daxN.M size",
                num("cbytes").to_string(),
                d.capacity.to_string(),
            );
            differ(
                &mut wrong,
                "/dev/daxN.M align",
                num("calign").to_string(),
                d.align.to_string(),
            );
            differ(
                &mut wrong,
                "block device",
                ns.get("block").into(),
                "none".into(),
            );
        }
        _ => {
            if ns.get("block") == "none" {
                wrong.push("no /dev/pmemN".into());
            }
            differ(
                &mut wrong,
                "/dev/pmemN size",
                num("bytes").to_string(),
                d.capacity.to_string(),
            );
            differ(
                &mut wrong,
                "dax device",
                ns.get("chardev").into(),
                "none".into(),
            );
        }
    }
    // ndctl's view of the same namespace.
    match ndctl.iter().find(|n| n["dev"] == ns.name.as_str()) {
        None => wrong.push(format!("`ndctl list -N` does not list {}", ns.name)),
        Some(n) => {
            let s = |k: &str| n[k].as_str().unwrap_or("(absent)").to_string();
            differ(&mut wrong, "ndctl mode", s("mode"), ndctl_mode.into());
            differ(
                &mut wrong,
                "ndctl size",
                n["size"].as_u64().unwrap_or(u64::MAX).to_string(),
                d.capacity.to_string(),
            );
            match d.memmap.as_str() {
                "ram" => differ(&mut wrong, "ndctl map", s("map"), "mem".into()),
                "pmem" => differ(&mut wrong, "ndctl map", s("map"), "dev".into()),
                _ => {}
            }
            if d.mode == "devdax" {
                differ(
                    &mut wrong,
                    "ndctl chardev",
                    s("chardev"),
                    ns.get("chardev").into(),
                );
            } else {
                differ(
                    &mut wrong,
                    "ndctl blockdev",
                    s("blockdev"),
                    ns.get("block").into(),
                );
            }
        }
    }
    if wrong.is_empty() {
        Ok(ns)
    } else {
        Err(fail(
            run,
            format!(
                "{} ({} memmap={}) as the guest sees it ({}): {}",
                d.path,
                d.mode,
                d.memmap,
                ns.name,
                wrong.join("; ")
            ),
        ))
    }
}

/// Notes `what` in `wrong` unless `got == want`.
fn differ(wrong: &mut Vec<String>, what: &str, got: String, want: String) {
    if got != want {
        wrong.push(format!("{what} is {got:?}, expected {want:?}"));
    }
}

fn expect_checks(run: &VmmRun, facts: &PolicyFacts, names: &[String]) -> Result<()> {
    let failed = facts.failed_checks(names);
    if failed.is_empty() {
        Ok(())
    } else {
        Err(fail(run, format!("guest checks failed: {failed:?}")))
    }
}

/// The mount of the fsdax namespace at `base` was a DAX mount: `dax=always` in /proc/mounts,
/// and its file has `STATX_ATTR_DAX`.
fn expect_dax_mount(run: &VmmRun, facts: &PolicyFacts, base: u64, path: &str) -> Result<()> {
    let key = base.to_string();
    let opts = facts.mounts.get(&key).map_or("(no mount)", String::as_str);
    let statx = facts.statx.get(&key).map_or("(no statx)", String::as_str);
    if opts.split(',').any(|o| o == "dax" || o == "dax=always") && statx == "dax=1" {
        Ok(())
    } else {
        Err(fail(
            run,
            format!(
                "{path}: the ext4 -o dax mount is not DAX: mount options {opts:?}, statx \
                 {statx:?} (expected dax=always and dax=1)"
            ),
        ))
    }
}

/// The host found the guest's edge patterns in `d`'s backing at the report's offsets.
fn expect_host_check(host: &HostRun, run: &VmmRun, d: &Dev) -> Result<()> {
    let checks = host_checks(&host.output);
    let Some(c) = checks.get(&d.path) else {
        return Err(fail(
            run,
            format!(
                "the host did not check {} after the run: {checks:?}",
                d.path
            ),
        ));
    };
    let start = if d.mode == "devdax" { "ok" } else { "-" };
    let numbers = (c.num("base"), c.num("data_offset"), c.num("capacity"));
    if numbers != (Some(d.guest_base), Some(d.data_offset), Some(d.capacity)) {
        return Err(fail(
            run,
            format!("the host read other numbers from the report than the test: {c:?} vs {d:?}"),
        ));
    }
    if c.get("end") == "ok" && c.get("start") == start {
        Ok(())
    } else {
        Err(fail(
            run,
            format!(
                "{}: the guest's patterns are not in the backing where the report puts the \
                 data (last 4 KiB of the capacity at data_offset {:#x} + {:#x}{}): host check \
                 {c:?}",
                d.path,
                d.data_offset,
                d.capacity,
                if d.mode == "devdax" {
                    ", and its first 4 KiB"
                } else {
                    ""
                }
            ),
        ))
    }
}

/// Every combination of mode (fsdax, devdax) and memmap (ram, pmem), plus memmap=none: five
/// 256 MiB devices with five policies in one 512 MiB guest. For each: the report says what was
/// asked and that the block was written (not for raw); the guest's sysfs and `ndctl list -N`
/// show that mode and map with the report's capacity, data offset and alignment; DAX works
/// (fsdax: mkfs.ext4, `mount -o dax` shows `dax=always`, a file has `STATX_ATTR_DAX`, a
/// `MAP_SYNC` mapping is accepted and its bytes read back through the file, the file reads
/// back after dropping caches; devdax: writes through an `mmap` of `/dev/daxN.M` read back
/// through a new mapping); and the guest's patterns (last 4 KiB of every device, first 4 KiB of
/// devdax) are in the backing files at `data_offset` and `data_offset + capacity - 4096`.
#[test]
fn every_mode_and_memmap_in_one_guest_with_working_dax() -> Result<()> {
    let devices = [
        ("fsdax-ram.img", "fsdax", "ram"),
        ("fsdax-pmem.img", "fsdax", "pmem"),
        ("devdax-ram.img", "devdax", "ram"),
        ("devdax-pmem.img", "devdax", "pmem"),
        ("raw.img", "raw", "none"),
    ];
    let mut args = Vec::new();
    for (path, mode, memmap) in devices {
        args.extend(pmem(if mode == "raw" {
            format!("path={path},size=256M,memmap=none")
        } else {
            format!("path={path},size=256M,memmap={memmap},mode={mode}")
        }));
    }
    let script = format!(
        "{}\n{}hostcheck_all matrix.json\n",
        host_lib(),
        vmm_run(
            "matrix",
            "512M",
            "settle 5 && nsfacts; ndctl_list; daxcheck_all",
            &args
        )?
    );
    let host = run_host("matrix", &script, policy_host(900)?)?;
    host.expect_success()?;
    let run = vmm_section(&host, "matrix")?;
    expect_booted(&run)?;
    let devs = report(&run)?;
    let facts = run.facts();
    let ndctl = ndctl_namespaces(&run, &facts)?;
    for (path, mode, memmap) in devices {
        let d = dev(&run, &devs, path)?;
        let asked = (mode, memmap, mode != "raw");
        if (d.mode.as_str(), d.memmap.as_str(), d.info_block_written) != asked {
            return Err(fail(
                &run,
                format!(
                    "{path}: the report says {d:?}, asked for {asked:?} (mode, memmap, written)"
                ),
            ));
        }
        check_guest_view(&run, &facts, &ndctl, d)?;
        let base = d.guest_base;
        match mode {
            "fsdax" => {
                expect_checks(&run, &facts, &fsdax_checks(base))?;
                expect_dax_mount(&run, &facts, base, path)?;
            }
            "devdax" => expect_checks(
                &run,
                &facts,
                &[format!("{base}-mmap-start"), format!("{base}-mmap-end")],
            )?,
            _ => expect_checks(&run, &facts, &[format!("{base}-end")])?,
        }
        expect_host_check(&host, &run, d)?;
        eprintln!(
            "{path}: {mode} memmap={memmap}: data offset {:#x}, capacity {} MiB, memmap {} KiB \
             ({} KiB of guest RAM, {} KiB device reserve)",
            d.data_offset,
            d.capacity / MIB,
            d.memmap_bytes / 1024,
            d.ram_cost_bytes / 1024,
            d.device_reserve_bytes / 1024
        );
    }
    Ok(())
}

/// A restart with `format=keep`: run 1 formats two blank files (fsdax with the memmap in pmem,
/// devdax with the memmap in RAM), makes an ext4 file system on the fsdax namespace and writes
/// a file through its `-o dax` mount, and writes a pattern into the devdax namespace through
/// `mmap`. Run 2 uses the same files with `format=keep`: the report shows the same layout and
/// no write, the info blocks' bytes are unchanged, the guest sees the same modes, maps,
/// offsets and capacities (sysfs and ndctl), and reads back the file (DAX mount again) and the
/// pattern.
#[test]
fn format_keep_restart_comes_up_identically_with_the_data() -> Result<()> {
    let spec = |path: &str, rest: &str| pmem(format!("path={path},{rest}"));
    let first: Vec<String> = [
        spec("keep-fsdax.img", "memmap=pmem,mode=fsdax"),
        spec("keep-devdax.img", "memmap=ram,mode=devdax"),
    ]
    .concat();
    let second: Vec<String> = [
        spec("keep-fsdax.img", "memmap=pmem,mode=fsdax,format=keep"),
        spec("keep-devdax.img", "memmap=ram,mode=devdax,format=keep"),
    ]
    .concat();
    // The md5 of each info block (namespace bytes [4 KiB, 8 KiB)) after each run.
    let blocks = r#"blocks() {
    for f in keep-fsdax.img keep-devdax.img; do
        sum=$(dd if=$f bs=4096 skip=1 count=1 2>/dev/null | md5sum | cut -d' ' -f1)
        echo "@@POL-INFOBLOCK $1 $f $sum@@"
    done
}
truncate -s 256M keep-fsdax.img keep-devdax.img
"#;
    let script = format!(
        "{}\n{blocks}{}blocks first\n{}blocks second\n",
        host_lib(),
        vmm_run(
            "first",
            "512M",
            "settle 2 && nsfacts; ndctl_list; persist_write",
            &first
        )?,
        vmm_run(
            "second",
            "512M",
            "settle 2 && nsfacts; ndctl_list; persist_check",
            &second
        )?,
    );
    let host = run_host("restart", &script, policy_host(900)?)?;
    host.expect_success()?;
    let runs = [vmm_section(&host, "first")?, vmm_section(&host, "second")?];
    let mut layouts = Vec::new();
    let mut views = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        expect_booted(run)?;
        let devs = report(run)?;
        let facts = run.facts();
        let ndctl = ndctl_namespaces(run, &facts)?;
        let mut view = Vec::new();
        for d in &devs {
            if d.info_block_written != (i == 0) {
                return Err(fail(
                    run,
                    format!(
                        "{}: info_block_written is {}, expected {}",
                        d.path,
                        d.info_block_written,
                        i == 0
                    ),
                ));
            }
            let ns = check_guest_view(run, &facts, &ndctl, d)?;
            // What must be identical across the restart, as the guest sees it.
            let mut seen: BTreeMap<&str, String> = ["mode", "size", "map", "hsize", "hres"]
                .iter()
                .chain(&["halign", "block", "bytes", "chardev", "cbytes", "calign"])
                .map(|k| (*k, ns.get(k).to_string()))
                .collect();
            seen.insert("namespace", ns.name.clone());
            if let Some(n) = ndctl.iter().find(|n| n["dev"] == ns.name.as_str()) {
                for k in ["mode", "map", "size", "align", "blockdev", "chardev"] {
                    seen.insert(k, format!("ndctl {}", n[k]));
                }
            }
            view.push((d.path.clone(), seen));
            let base = d.guest_base;
            let checks: Vec<String> = match (d.mode.as_str(), i) {
                ("fsdax", 0) => ["mkfs", "mount", "sync", "umount"]
                    .iter()
                    .map(|c| format!("{base}-{c}"))
                    .collect(),
                ("fsdax", _) => ["mount", "persisted", "umount"]
                    .iter()
                    .map(|c| format!("{base}-{c}"))
                    .collect(),
                (_, 0) => vec![format!("{base}-mmap-persist")],
                _ => vec![format!("{base}-persisted")],
            };
            expect_checks(run, &facts, &checks)?;
            if d.mode == "fsdax" {
                let statx = facts.statx.get(&base.to_string()).cloned();
                if statx.as_deref() != Some("dax=1") {
                    return Err(fail(
                        run,
                        format!(
                            "{}: the file in the -o dax mount has statx {statx:?}",
                            d.path
                        ),
                    ));
                }
            }
        }
        layouts.push(devs.iter().map(Dev::layout).collect::<Vec<_>>());
        views.push(view);
    }
    let second = &runs[1];
    if layouts[0] != layouts[1] {
        return Err(fail(
            second,
            format!(
                "the report differs after the restart:\n  first  {:?}\n  second {:?}",
                layouts[0], layouts[1]
            ),
        ));
    }
    if views[0] != views[1] {
        return Err(fail(
            second,
            format!(
                "the guest sees the namespaces differently after the restart:\n  first  {:?}\n  \
                 second {:?}",
                views[0], views[1]
            ),
        ));
    }
    let sums = marker_values(&host.output, "POL-INFOBLOCK");
    let of = |run: &str| -> Vec<&str> {
        sums.iter()
            .filter_map(|s| s.strip_prefix(run).map(str::trim))
            .collect()
    };
    if of("first").len() != 2 || of("first") != of("second") {
        return Err(fail(
            second,
            format!("the info blocks changed across the format=keep run: {sums:?}"),
        ));
    }
    eprintln!(
        "restart: layouts identical: {:?}",
        layouts[1]
            .iter()
            .map(|d| format!(
                "{} {} {} off {:#x} cap {}",
                d.path, d.mode, d.memmap, d.data_offset, d.capacity
            ))
            .collect::<Vec<_>>()
    );
    Ok(())
}

/// What binding one namespace took from the guest's free RAM, in bytes.
fn memfree_drop(run: &VmmRun, rec: &Record) -> Result<i64> {
    match (rec.num("free_before"), rec.num("free_after")) {
        (Some(b), Some(a)) => Ok((b as i64 - a as i64) * 1024),
        _ => Err(fail(run, format!("incomplete MemFree numbers: {rec:?}"))),
    }
}

/// The guest RAM a memmap costs, measured: three 4 GiB devices (raw, memmap=ram,
/// memmap=pmem; fsdax, 2 MiB alignment) in one 512 MiB guest, which therefore also shows three
/// policies side by side (each checked as in the matrix test). In the guest every namespace is
/// unbound from its driver (freeing its memmap), then bound back one at a time; MemFree is read
/// before and after each bind (caches dropped, after it stops moving). The drop for the raw
/// namespace is the baseline (gendisk, sysfs objects); the drop for `ram` minus that baseline
/// must be the report's `ram_cost_bytes` (64 MiB of struct pages for 1 Mi pages of 4 KiB, plus
/// its vmemmap page tables), the drop for `pmem` minus the baseline must be its (near zero)
/// `ram_cost_bytes`.
///
/// Tolerance: 8 MiB (1/8 of the 64 MiB cost) either way. The noise in a MemFree difference in
/// one guest, caches dropped: pages parked on the per-CPU free lists (not counted as free; up
/// to a few MiB for a 512 MiB zone), slab and kernfs objects of the new pfn device beyond the
/// raw baseline (KiBs), and the upper vmemmap page-table levels the report does not count (at
/// most a few 4 KiB pages). A wrong policy is off by the whole 64 MiB.
///
/// MemTotal is reported too: struct pages for hot-added ZONE_DEVICE memory come from the page
/// allocator, so MemTotal must not move; MemFree is what changes.
#[test]
fn ram_cost_of_a_4_gib_memmap_in_ram_and_in_pmem() -> Result<()> {
    let devices = [
        ("cost-raw.img", "memmap=none"),
        ("cost-ram.img", "memmap=ram,mode=fsdax"),
        ("cost-pmem.img", "memmap=pmem,mode=fsdax"),
    ];
    let args: Vec<String> = devices
        .iter()
        .flat_map(|(p, m)| pmem(format!("path={p},size=4G,{m}")))
        .collect();
    let script = format!(
        "{}\n{}",
        host_lib(),
        vmm_run(
            "cost",
            "512M",
            "settle 3 && nsfacts; ndctl_list; memcost",
            &args
        )?
    );
    let host = run_host("ram-cost", &script, policy_host(1200)?)?;
    host.expect_success()?;
    let run = vmm_section(&host, "cost")?;
    expect_booted(&run)?;
    let devs = report(&run)?;
    let facts = run.facts();
    let ndctl = ndctl_namespaces(&run, &facts)?;
    if !marker_values(&run.console, "POL-MEMCOST-FAIL").is_empty() {
        return Err(fail(
            &run,
            format!(
                "unbinding or binding a namespace failed: {:?}",
                marker_values(&run.console, "POL-MEMCOST-FAIL")
            ),
        ));
    }
    let mut drops = Vec::new();
    for (path, _) in devices {
        let d = dev(&run, &devs, path)?;
        if d.size != 4 * GIB {
            return Err(fail(&run, format!("{path}: report says size {}", d.size)));
        }
        check_guest_view(&run, &facts, &ndctl, d)?;
        let rec = facts.memcost.get(&d.guest_base).ok_or_else(|| {
            fail(
                &run,
                format!("no MemFree measurement for {path} at {:#x}", d.guest_base),
            )
        })?;
        let dropped = memfree_drop(&run, rec)?;
        let totals = (rec.num("total_before"), rec.num("total_after"));
        eprintln!(
            "{path} ({} memmap={}): binding took {:.2} MiB of MemFree (report ram_cost_bytes \
             {:.2} MiB, memmap_bytes {:.2} MiB); MemTotal {:?} -> {:?} kB",
            d.mode,
            d.memmap,
            dropped as f64 / MIB as f64,
            d.ram_cost_bytes as f64 / MIB as f64,
            d.memmap_bytes as f64 / MIB as f64,
            totals.0,
            totals.1
        );
        if totals.0.is_none() || totals.0 != totals.1 {
            return Err(fail(
                &run,
                format!(
                    "{path}: MemTotal changed when the namespace came up ({totals:?} kB): the \
                     memmap should come from the page allocator, not be taken out of the RAM \
                     total"
                ),
            ));
        }
        drops.push((d.clone(), dropped));
    }
    let (raw, ram, pm) = (&drops[0], &drops[1], &drops[2]);
    let tolerance = 8 * MIB as i64;
    if ram.0.ram_cost_bytes < 60 * MIB || ram.0.ram_cost_bytes > 70 * MIB {
        return Err(fail(
            &run,
            format!(
                "the report's ram_cost_bytes for a 4 GiB memmap=ram namespace is {}, expected \
                 about 64 MiB (64 bytes per 4 KiB page)",
                ram.0.ram_cost_bytes
            ),
        ));
    }
    let mut wrong = Vec::new();
    for (d, dropped) in [ram, pm] {
        let measured = dropped - raw.1;
        let predicted = d.ram_cost_bytes as i64;
        eprintln!(
            "{}: measured {:.2} MiB more than raw, predicted {:.2} MiB (tolerance {} MiB)",
            d.memmap,
            measured as f64 / MIB as f64,
            predicted as f64 / MIB as f64,
            tolerance / MIB as i64
        );
        if (measured - predicted).abs() > tolerance {
            wrong.push(format!(
                "memmap={}: binding took {measured} bytes more guest RAM than the raw namespace, \
                 the report predicts {predicted} (tolerance {tolerance})",
                d.memmap
            ));
        }
    }
    if pm.1 - raw.1 > ram.0.ram_cost_bytes as i64 / 4 {
        wrong.push(format!(
            "memmap=pmem took {} bytes of guest RAM beyond raw, not nearly nothing next to the \
             {} of memmap=ram",
            pm.1 - raw.1,
            ram.0.ram_cost_bytes
        ));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(fail(&run, wrong.join("; ")))
    }
}

/// `memmap=auto` end to end: a blank 1 GiB file and a blank 16 GiB sparse file in a 512 MiB
/// guest. The 1 GiB memmap costs 16 MiB of RAM, within the 1/16 of guest RAM (32 MiB) that auto
/// allows, so it goes to RAM; the 16 GiB one would cost 256 MiB, so it goes to the device. The
/// report and the guest (sysfs, ndctl) agree on fsdax with map ram and pmem.
#[test]
fn memmap_auto_puts_a_small_memmap_in_ram_and_a_large_one_in_pmem() -> Result<()> {
    let args: Vec<String> = [pmem("path=auto-1g.img"), pmem("path=auto-16g.img")].concat();
    let script = format!(
        "{}\ntruncate -s 1G auto-1g.img && truncate -s 16G auto-16g.img || exit 1\n{}",
        host_lib(),
        vmm_run("auto", "512M", "settle 2 && nsfacts; ndctl_list", &args)?
    );
    let host = run_host("auto", &script, policy_host(900)?)?;
    host.expect_success()?;
    let run = vmm_section(&host, "auto")?;
    expect_booted(&run)?;
    let devs = report(&run)?;
    let facts = run.facts();
    let ndctl = ndctl_namespaces(&run, &facts)?;
    for (path, size, memmap) in [
        ("auto-1g.img", GIB, "ram"),
        ("auto-16g.img", 16 * GIB, "pmem"),
    ] {
        let d = dev(&run, &devs, path)?;
        if (
            d.size,
            d.mode.as_str(),
            d.memmap.as_str(),
            d.info_block_written,
        ) != (size, "fsdax", memmap, true)
        {
            return Err(fail(
                &run,
                format!(
                    "{path}: memmap=auto on a blank {} GiB device with 512 MiB of guest RAM \
                     should write fsdax with the memmap in {memmap}; the report says {d:?}",
                    size / GIB
                ),
            ));
        }
        check_guest_view(&run, &facts, &ndctl, d)?;
        eprintln!(
            "{path}: auto chose {} (guest RAM cost {} MiB, device reserve {} MiB, capacity {} \
             MiB)",
            d.memmap,
            d.ram_cost_bytes / MIB,
            d.device_reserve_bytes / MIB,
            d.capacity / MIB
        );
    }
    Ok(())
}

/// Hash of a byte range of a file (FNV-1a; equality is all that matters).
fn range_hash(path: &Path, start: u64, end: u64) -> Result<u64> {
    let mut f =
        File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    f.seek(SeekFrom::Start(start))
        .map_err(|e| Error::io(format!("seeking {}", path.display()), e))?;
    let mut left = end - start;
    let mut buf = vec![0u8; MIB as usize];
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.read_exact(&mut buf[..n])
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        for &b in &buf[..n] {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        left -= n as u64;
    }
    Ok(h)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Cross-tool: a namespace formatted by Linux itself under QEMU is usable by our monitor.
///
/// Run 1: the nested host (L1, a QEMU guest) gets a 256 MiB file here as a QEMU NVDIMM and
/// runs `ndctl create-namespace -f -e namespace0.0 -m fsdax -M dev`, so L1's kernel writes an
/// fsdax info block with the memmap in the device, laid out for QEMU's guest physical base.
/// Run 2: L1 gets the same file as a virtio disk (`/dev/vda` = the file's bytes) and runs our
/// vmm on it: `memmap=ram,format=keep` must exit 2 with one line naming the block's memmap=pmem
/// and the asked memmap=ram, `/dev/vda`'s checksum unchanged; `memmap=pmem,format=keep` must
/// boot, without writing, and its guest must see fsdax with map=dev and the capacity L1's
/// kernel gave the namespace. Afterwards the file here is unchanged outside the memmap reserve
/// [8 KiB, dataoff), which the guest's struct pages may overwrite.
#[test]
fn a_namespace_qemus_guest_formatted_is_kept_with_memmap_pmem_and_refused_with_ram() -> Result<()> {
    require_tool(NDCTL, "ndctl")?;
    let size = 256 * MIB;
    let dir = ScratchDir::new("policy-xtool")?;
    let file = dir.path().join("qemu-fsdax.img");
    let l1_ndctl = r#"r=/sys/bus/nd/devices/region0
echo "@@XT-REGION $(cat $r/resource) $(cat $r/size)@@"
ndctl create-namespace -f -e namespace0.0 -m fsdax -M dev > create.json 2>&1
echo "@@XT-CREATE $?@@"
cat create.json
echo "@@XT-NDCTL-BEGIN@@"
ndctl list -N
echo "@@XT-NDCTL-END@@"
sync
"#;
    let first = run_host(
        "cross-tool/ndctl-in-L1",
        l1_ndctl,
        HostOpts::default()
            .without_guest_artifacts()
            .with_nvdimm(Nvdimm::raw(&file, size))
            .with_host_bin(NDCTL)
            .with_timeout(Duration::from_secs(300)),
    )?;
    first.expect_success()?;
    let created: Option<i32> = testbed::markers::last_marker(&first.output, "XT-CREATE");
    if created != Some(0) {
        return Err(first.error(format!(
            "ndctl create-namespace in the QEMU guest (L1) exited {created:?}"
        )));
    }
    let region = marker_values(&first.output, "XT-REGION")
        .first()
        .map(|v| v.to_string())
        .unwrap_or_default();
    let l1_base = region
        .split_whitespace()
        .next()
        .and_then(testbed::pmem_checks::parse_num)
        .ok_or_else(|| first.error(format!("L1 reported no region base: {region:?}")))?;
    let l1_json = testbed::policy_checks::section(&first.output, "XT-NDCTL-BEGIN", "XT-NDCTL-END")
        .unwrap_or("")
        .trim()
        .to_string();
    let l1_ns: Value = serde_json::from_str(&l1_json)
        .map_err(|e| first.error(format!("L1's ndctl list -N is not JSON ({e}): {l1_json}")))?;
    let l1_ns = if let Value::Array(a) = &l1_ns {
        a.first().cloned().unwrap_or(Value::Null)
    } else {
        l1_ns
    };
    let l1_capacity = l1_ns["size"].as_u64();
    if l1_ns["mode"] != "fsdax" || l1_ns["map"] != "dev" || l1_capacity.is_none() {
        return Err(first.error(format!(
            "L1's namespace is not fsdax with map=dev after ndctl create-namespace: {l1_ns}"
        )));
    }

    // What L1's kernel wrote, read here.
    let mut block = vec![0u8; 4096];
    File::open(&file)
        .and_then(|mut f| {
            f.seek(SeekFrom::Start(4096))?;
            f.read_exact(&mut block)
        })
        .map_err(|e| Error::io(format!("reading {}", file.display()), e))?;
    let (dataoff, memmap_mode, align) =
        (le_u64(&block, 56), le_u32(&block, 72), le_u32(&block, 84));
    eprintln!(
        "QEMU placed the NVDIMM at {l1_base:#x} (2 MiB aligned: {}); L1's kernel wrote {:?} \
         dataoff {dataoff:#x} mode {memmap_mode} align {align:#x}; L1 capacity {l1_capacity:?}",
        l1_base % (2 * MIB) == 0,
        String::from_utf8_lossy(&block[..15]),
    );
    if &block[..16] != b"NVDIMM_PFN_INFO\0" || memmap_mode != 2 {
        return Err(first.error(format!(
            "the file holds no fsdax (PFN) info block with PFN_MODE_PMEM after ndctl: signature \
             {:?}, mode {memmap_mode}",
            String::from_utf8_lossy(&block[..16])
        )));
    }
    let head = range_hash(&file, 0, 8192)?;
    let data = range_hash(&file, dataoff, size)?;

    // Run 2: the same bytes as L1's /dev/vda, under our vmm.
    let refused_spec = "path=/dev/vda,memmap=ram,format=keep";
    let script = format!(
        r#"{lib}
i=0; while [ ! -b /dev/vda ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
[ -b /dev/vda ] || {{ echo "no /dev/vda in L1"; ls /dev; exit 1; }}
echo "@@XT-VDA-BYTES $(( $(cat /sys/block/vda/size) * 512 ))@@"
before=$(sig /dev/vda)
unset RUST_LOG
"$VMM" --kernel "$KERNEL" --initramfs "$INITRAMFS" --memory 256M --serial off \
    --pmem {refused_spec} </dev/null >refused.out 2>refused.err
rc=$?
after=$(sig /dev/vda)
same=no; [ "$before" = "$after" ] && same=yes
echo "@@XT-REFUSED rc=$rc lines=$(wc -l < refused.err) same=$same@@"
while IFS= read -r line; do echo "@@XT-REFUSED-STDERR $line@@"; done < refused.err
{accepted}"#,
        lib = host_lib(),
        accepted = vmm_run(
            "accepted",
            "512M",
            "settle 1 && nsfacts; ndctl_list",
            &pmem("path=/dev/vda,memmap=pmem,format=keep")
        )?,
    );
    let drive = format!(
        "file={},if=virtio,format=raw",
        qemu_opt_escape(&file.display().to_string())
    );
    let second = run_host(
        "cross-tool/vmm-on-vda",
        &script,
        policy_host(600)?.with_qemu_args(["-drive".to_string(), drive]),
    )?;
    second.expect_success()?;

    let refused = marker_values(&second.output, "XT-REFUSED")
        .first()
        .map(|v| Record::parse(&format!("refused {v}")))
        .ok_or_else(|| second.error("the refused run did not report"))?;
    let stderr = marker_values(&second.output, "XT-REFUSED-STDERR").join("\n");
    eprintln!("memmap=ram,format=keep on the QEMU-formatted namespace: {refused:?}: {stderr}");
    let mut wrong = Vec::new();
    if refused.get("rc") != "2" {
        wrong.push(format!("exit status {}, expected 2", refused.get("rc")));
    }
    if refused.get("lines") != "1" {
        wrong.push(format!(
            "{} lines on stderr, expected 1",
            refused.get("lines")
        ));
    }
    if refused.get("same") != "yes" {
        wrong.push("/dev/vda changed".to_string());
    }
    for needle in ["memmap=pmem", "memmap=ram", "format=keep"] {
        if !stderr.contains(needle) {
            wrong.push(format!("the message does not mention {needle}"));
        }
    }
    if !wrong.is_empty() {
        return Err(second.error(format!(
            "{refused_spec} on the namespace L1's ndctl made: {} — stderr: {stderr:?}",
            wrong.join("; ")
        )));
    }

    let run = vmm_section(&second, "accepted")?;
    expect_booted(&run)?;
    let devs = report(&run)?;
    let d = dev(&run, &devs, "/dev/vda")?;
    let facts = run.facts();
    let ndctl = ndctl_namespaces(&run, &facts)?;
    if (
        d.mode.as_str(),
        d.memmap.as_str(),
        d.info_block_written,
        d.data_offset,
    ) != ("fsdax", "pmem", false, dataoff)
    {
        return Err(fail(
            &run,
            format!(
                "memmap=pmem,format=keep should use L1's block as it is (fsdax, pmem, not \
                 written, data offset {dataoff:#x}); the report says {d:?}"
            ),
        ));
    }
    if Some(d.capacity) != l1_capacity {
        return Err(fail(
            &run,
            format!(
                "our guest's capacity {} differs from what QEMU's guest (L1) got from the same \
                 block, {l1_capacity:?} (bases: ours {:#x}, QEMU's {l1_base:#x})",
                d.capacity, d.guest_base
            ),
        ));
    }
    check_guest_view(&run, &facts, &ndctl, d)?;
    let (head_after, data_after) = (
        range_hash(&file, 0, 8192)?,
        range_hash(&file, dataoff, size)?,
    );
    if (head_after, data_after) != (head, data) {
        return Err(fail(
            &run,
            format!(
                "the file changed outside the memmap reserve: header and info block {}, data {}",
                if head_after == head {
                    "unchanged"
                } else {
                    "CHANGED"
                },
                if data_after == data {
                    "unchanged"
                } else {
                    "CHANGED"
                },
            ),
        ));
    }
    Ok(())
}

/// One bad `--pmem` input: how to make its backing(s), the vmm arguments, and what the one
/// stderr line must mention.
struct BadCase {
    name: &'static str,
    /// Shell that creates the case's files in `$WORK`.
    setup: &'static str,
    /// Paths whose content must not change.
    paths: &'static str,
    /// `--kernel` value (shell word).
    kernel: &'static str,
    args: &'static str,
    /// Each entry: the last stderr line must contain one of these (case-insensitive).
    needles: &'static [&'static [&'static str]],
    /// Whether stderr must be exactly that one line (cases where an earlier device is planned
    /// first may log notes about it before the error).
    one_line: bool,
}

const KERNEL: &str = "\"$KERNEL\"";

const BAD_CASES: &[BadCase] = &[
    BadCase {
        name: "unknown-memmap",
        setup: "truncate -s 16M u-memmap.img",
        paths: "u-memmap.img",
        kernel: KERNEL,
        args: "--pmem path=u-memmap.img,memmap=dev",
        needles: &[&["memmap=dev"], &["ram, pmem, none or auto"]],
        one_line: true,
    },
    BadCase {
        name: "unknown-mode",
        setup: "truncate -s 16M u-mode.img",
        paths: "u-mode.img",
        kernel: KERNEL,
        args: "--pmem path=u-mode.img,memmap=ram,mode=sector",
        needles: &[&["mode=sector"], &["fsdax, devdax or raw"]],
        one_line: true,
    },
    BadCase {
        name: "unknown-format",
        setup: "truncate -s 16M u-format.img",
        paths: "u-format.img",
        kernel: KERNEL,
        args: "--pmem path=u-format.img,memmap=ram,format=always",
        needles: &[&["format=always"], &["keep, init or force"]],
        one_line: true,
    },
    BadCase {
        name: "unknown-align",
        setup: "truncate -s 16M u-align.img",
        paths: "u-align.img",
        kernel: KERNEL,
        args: "--pmem path=u-align.img,memmap=ram,align=3M",
        needles: &[&["align=3M"], &["4K, 2M or 1G"]],
        one_line: true,
    },
    BadCase {
        name: "memmap-none-with-mode",
        setup: "truncate -s 16M conflict.img",
        paths: "conflict.img",
        kernel: KERNEL,
        args: "--pmem path=conflict.img,memmap=none,mode=fsdax",
        needles: &[&["memmap=none"], &["mode=fsdax"]],
        one_line: true,
    },
    BadCase {
        name: "align-on-raw",
        setup: "truncate -s 16M alignraw.img",
        paths: "alignraw.img",
        kernel: KERNEL,
        args: "--pmem path=alignraw.img,mode=raw,align=2M",
        needles: &[&["align=2M"], &["raw"]],
        one_line: true,
    },
    BadCase {
        name: "align-1g-device-too-small",
        setup: "truncate -s 64M align1g.img",
        paths: "align1g.img",
        kernel: KERNEL,
        args: "--pmem path=align1g.img,memmap=ram,align=1G",
        needles: &[&["align=1G"], &["1 GiB"], &["align=2M", "larger device"]],
        one_line: true,
    },
    BadCase {
        name: "devdax-align-1g-device-too-small",
        setup: "truncate -s 64M dax1g.img",
        paths: "dax1g.img",
        kernel: KERNEL,
        args: "--pmem path=dax1g.img,mode=devdax,memmap=pmem,align=1G",
        needles: &[&["align=1G"], &["mode=devdax"]],
        one_line: true,
    },
    BadCase {
        name: "too-small-for-memmap-reserve",
        setup: "truncate -s 2M tiny.img",
        paths: "tiny.img",
        kernel: KERNEL,
        args: "--pmem path=tiny.img,memmap=pmem",
        needles: &[
            &["memmap=pmem"],
            &["memmap reserve"],
            &["2 MiB", "0x200000"],
        ],
        one_line: true,
    },
    BadCase {
        name: "keep-conflicting-memmap",
        setup: "truncate -s 16M kc.img && ndctl write-infoblock -o kc.img -m fsdax -M mem -a 2M",
        paths: "kc.img",
        kernel: KERNEL,
        args: "--pmem path=kc.img,memmap=pmem,format=keep",
        needles: &[&["format=keep"], &["memmap=ram"], &["memmap=pmem"]],
        one_line: true,
    },
    BadCase {
        name: "keep-conflicting-mode",
        setup: "truncate -s 16M km.img && ndctl write-infoblock -o km.img -m devdax -M dev -a 2M",
        paths: "km.img",
        kernel: KERNEL,
        args: "--pmem path=km.img,mode=fsdax,memmap=pmem,format=keep",
        needles: &[&["format=keep"], &["mode=devdax"], &["mode=fsdax"]],
        one_line: true,
    },
    BadCase {
        name: "keep-without-block",
        setup: "truncate -s 16M kn.img",
        paths: "kn.img",
        kernel: KERNEL,
        args: "--pmem path=kn.img,memmap=ram,format=keep",
        needles: &[&["format=keep"], &["no info block"]],
        one_line: true,
    },
    BadCase {
        name: "init-not-blank",
        setup: "head -c 1048576 /dev/urandom > nb.img && truncate -s 16M nb.img",
        paths: "nb.img",
        kernel: KERNEL,
        args: "--pmem path=nb.img,memmap=ram,format=init",
        needles: &[&["format=init"], &["not blank"], &["format=force"]],
        one_line: true,
    },
    BadCase {
        name: "default-format-not-blank",
        setup: "truncate -s 64K nb2.img && printf x >> nb2.img && truncate -s 16M nb2.img",
        paths: "nb2.img",
        kernel: KERNEL,
        args: "--pmem path=nb2.img,memmap=pmem",
        needles: &[&["not blank"], &["0x10000"]],
        one_line: true,
    },
    BadCase {
        name: "readonly-needs-write",
        setup: "truncate -s 16M ro.img",
        paths: "ro.img",
        kernel: KERNEL,
        args: "--pmem path=ro.img,readonly=on,memmap=ram",
        needles: &[&["readonly=on"], &["write"]],
        one_line: true,
    },
    BadCase {
        name: "readonly-memmap-in-device",
        setup: "truncate -s 16M rod.img && ndctl write-infoblock -o rod.img -m fsdax -M dev -a 2M",
        paths: "rod.img",
        kernel: KERNEL,
        args: "--pmem path=rod.img,readonly=on,memmap=pmem,format=keep",
        needles: &[&["readonly=on"], &["memmap=ram", "read-only mapping"]],
        one_line: true,
    },
];

/// Bad input found only after a device was planned: another `--pmem` that is refused, or a
/// kernel that cannot be read (loaded after the devices are formatted). The same contract
/// holds: exit status 2, no backing changed.
const LATE_CASES: &[BadCase] = &[
    BadCase {
        name: "second-device-bad",
        setup: "truncate -s 16M first.img && truncate -s 2M second.img",
        paths: "first.img second.img",
        kernel: KERNEL,
        args: "--pmem path=first.img,memmap=ram --pmem path=second.img,memmap=pmem",
        needles: &[&["second.img"], &["memmap reserve"]],
        one_line: false,
    },
    BadCase {
        name: "missing-kernel",
        setup: "truncate -s 16M nokernel.img",
        paths: "nokernel.img",
        kernel: "/nonexistent/bzImage",
        args: "--pmem path=nokernel.img,memmap=ram",
        needles: &[&["/nonexistent/bzImage"]],
        one_line: false,
    },
];

/// Bad input: for each case the vmm exits 2, its last stderr line names the problem, and the
/// backing is unchanged (md5 before and after). One host run holds all cases; none boots a
/// guest (the vmm refuses before creating the VM), but the monitor runs only on a KVM host.
/// ndctl (`write-infoblock -o FILE`) makes the existing blocks the conflicting cases need.
#[test]
fn bad_policy_input_is_refused_with_the_backing_unchanged() -> Result<()> {
    refuse_all("bad-input", BAD_CASES)
}

/// A refused run changes no backing even when what is wrong is found late: with a second
/// device that cannot be laid out, the first (blank, `format=init`) must not have been
/// formatted; with an unreadable `--kernel` the blank device must not have been formatted
/// either. Both must exit 2 with the error as the last stderr line (notes about devices planned
/// before may precede it).
#[test]
fn late_refusals_leave_every_backing_unchanged() -> Result<()> {
    refuse_all("late-refusals", LATE_CASES)
}

/// Runs `cases` in one host script and checks each.
fn refuse_all(name: &str, cases: &[BadCase]) -> Result<()> {
    require_tool(NDCTL, "ndctl")?;
    let mut script = format!(
        r#"{lib}
unset RUST_LOG
# try NAME PATHS KERNEL VMM-ARGS...: one vmm run that must fail
try() {{
    name=$1; paths=$2; kernel=$3; shift 3
    before=$(for p in $paths; do sig "$p"; done | md5sum)
    "$VMM" --kernel "$kernel" --initramfs "$INITRAMFS" --memory 256M --serial off "$@" \
        </dev/null >"out.$name" 2>"err.$name"
    rc=$?
    after=$(for p in $paths; do sig "$p"; done | md5sum)
    same=no; [ "$before" = "$after" ] && same=yes
    echo "@@BAD-RESULT $name rc=$rc lines=$(wc -l < "err.$name") backing=$same@@"
    while IFS= read -r line; do echo "@@BAD-STDERR $name $line@@"; done < "err.$name"
}}
"#,
        lib = host_lib()
    );
    for c in cases {
        script.push_str(&format!(
            "{{ {}; }} || echo \"@@BAD-SETUP {} failed@@\"\ntry {} '{}' {} {}\n",
            c.setup, c.name, c.name, c.paths, c.kernel, c.args
        ));
    }
    let host = run_host(
        name,
        &script,
        HostOpts::default()
            .with_host_bin(NDCTL)
            .with_timeout(Duration::from_secs(600)),
    )?;
    host.expect_success()?;
    let setup = marker_values(&host.output, "BAD-SETUP");
    if !setup.is_empty() {
        return Err(host.error(format!("preparing the cases failed: {setup:?}")));
    }
    let mut problems = Vec::new();
    for c in cases {
        match check_bad_case(&host, c) {
            Ok(line) => eprintln!("{}: {line}", c.name),
            Err(p) => problems.push(format!("{}: {p}", c.name)),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Host {
            msg: format!(
                "{} of {} bad-input cases wrong:\n  {}",
                problems.len(),
                cases.len(),
                problems.join("\n  ")
            ),
            tail: tail_lines(&host.output, 20),
        })
    }
}

/// Checks one case; returns its error line.
fn check_bad_case(host: &HostRun, case: &BadCase) -> std::result::Result<String, String> {
    let result = marker_values(&host.output, "BAD-RESULT")
        .into_iter()
        .map(Record::parse)
        .find(|r| r.name == case.name)
        .ok_or("no result line")?;
    let stderr: Vec<&str> = marker_values(&host.output, "BAD-STDERR")
        .into_iter()
        .filter_map(|v| v.strip_prefix(case.name).and_then(|l| l.strip_prefix(' ')))
        .collect();
    let last = stderr.last().copied().unwrap_or("");
    let mut wrong = Vec::new();
    if result.get("rc") != "2" {
        wrong.push(format!("exit status {}, expected 2", result.get("rc")));
    }
    if case.one_line && result.get("lines") != "1" {
        wrong.push(format!(
            "{} lines on stderr, expected 1",
            result.get("lines")
        ));
    }
    if result.get("backing") != "yes" {
        wrong.push("the backing changed (md5 before and after differ)".to_string());
    }
    if !last.starts_with("vmm: ") {
        wrong.push("the last stderr line is not the vmm's error".to_string());
    }
    let text = last.to_lowercase();
    for alternatives in case.needles {
        if !alternatives
            .iter()
            .any(|n| text.contains(&n.to_lowercase()))
        {
            wrong.push(format!("the error does not mention {alternatives:?}"));
        }
    }
    if wrong.is_empty() {
        Ok(last.to_string())
    } else {
        Err(format!("{} — stderr: {stderr:?}", wrong.join("; ")))
    }
}
