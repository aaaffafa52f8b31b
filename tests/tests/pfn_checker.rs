//! The guest kernel's pfn / memmap checker (`guest-kernel/patches`, `CONFIG_NVDIMM_PFN_CHECK`)
//! on every namespace configuration the monitor produces.
//!
//! Each test boots one guest with several `--pmem` devices (the monitor writes their info
//! blocks from `memmap=`/`mode=`/`align=`), runs the guest agent `resources/guest-agent/
//! pmem-report` (which prints the checker's debugfs reports, the nd sysfs tree, `/proc/iomem`
//! and `/proc/meminfo` between `@@PMEM-REPORT-BEGIN/END label@@`) and compares it with the
//! monitor's own description of the devices (`vmm --report`, printed by the host script
//! between `@@VMM-REPORT-BEGIN/END@@`):
//!
//! * every namespace passes: no failed pfn, and the checker walked exactly the pfns the
//!   monitor's layout gives the guest (`(data_offset + capacity) / 4 KiB`, the whole mapped
//!   range, header and memmap reserve included);
//! * the struct pages live where the policy says (measured by the checker through the vmemmap
//!   page tables), and their bytes add up to the monitor's `memmap_bytes`;
//! * the new `memmap_location` / `memmap_bytes` sysfs attributes agree.
//!
//! Timings (checker ns per pfn and ms per GiB, bring-up time per namespace from a rebind with
//! `initcall_debug`) are printed to stderr; run with `--nocapture` to see them.
//!
//! These need KVM (direct) or QEMU (nested) and fail, never skip, when neither is available.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use testbed::{boot_guest, GuestOpts, GuestRun, HostOpts, InitramfsSpec, Result, ScratchDir};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const PAGE: u64 = 4096;

/// Where the agent and the workload program live in the guest.
const AGENT: &str = "/usr/bin/pmem-report";
const DAX_TOUCH: &str = "/usr/bin/dax-touch";
const GUEST_SCRIPT: &str = "/pfn-test.sh";
/// e2fsprogs' mke2fs (busybox's cannot make ext4).
const MKE2FS: &str = "/opt/e2fsprogs/mke2fs";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Raw,
    Fsdax,
    Devdax,
}

/// One `--pmem` device of a test guest.
#[derive(Debug, Clone)]
struct Dev {
    id: String,
    size: u64,
    kind: Kind,
    /// `ram` or `pmem` (ignored for raw).
    memmap: &'static str,
    align: u64,
    /// `firmware=e820`: a legacy E820 range instead of an NFIT NVDIMM.
    e820: bool,
}

impl Dev {
    fn new(kind: Kind, memmap: &'static str, size: u64, align: u64) -> Dev {
        let kind_name = match kind {
            Kind::Raw => "raw",
            Kind::Fsdax => "fsdax",
            Kind::Devdax => "devdax",
        };
        let size_name = if size >= GIB {
            format!("{}g", size / GIB)
        } else {
            format!("{}m", size / MIB)
        };
        let id = match kind {
            Kind::Raw => format!("{kind_name}-{size_name}"),
            _ => format!("{kind_name}-{memmap}-{}-{size_name}", align_name(align)),
        };
        Dev {
            id,
            size,
            kind,
            memmap,
            align,
            e820: false,
        }
    }
    /// The same device as a legacy E820 range.
    fn e820(self) -> Dev {
        Dev {
            id: format!("e820-{}", self.id),
            e820: true,
            ..self
        }
    }
    fn raw(size: u64) -> Dev {
        Dev::new(Kind::Raw, "none", size, 0)
    }
    fn fsdax(memmap: &'static str, size: u64) -> Dev {
        Dev::new(Kind::Fsdax, memmap, size, 2 * MIB)
    }
    fn devdax(memmap: &'static str, size: u64, align: u64) -> Dev {
        Dev::new(Kind::Devdax, memmap, size, align)
    }

    /// The `--pmem` value: a sparse file the monitor creates in `$WORK` and formats.
    fn pmem_arg(&self) -> String {
        let firmware = if self.e820 { ",firmware=e820" } else { "" };
        let base = format!(
            "path={}.img,size={},id={}{firmware}",
            self.id, self.size, self.id
        );
        match self.kind {
            Kind::Raw => format!("{base},memmap=none"),
            Kind::Fsdax | Kind::Devdax => format!(
                "{base},memmap={},mode={},align={}",
                self.memmap,
                if self.kind == Kind::Fsdax {
                    "fsdax"
                } else {
                    "devdax"
                },
                align_name(self.align)
            ),
        }
    }
}

fn align_name(align: u64) -> String {
    match align {
        a if a >= GIB => format!("{}G", a / GIB),
        a if a >= MIB => format!("{}M", a / MIB),
        a => format!("{}K", a / 1024),
    }
}

/// The five configurations of the matrix at one size.
fn matrix(size: u64) -> Vec<Dev> {
    vec![
        Dev::raw(size),
        Dev::fsdax("ram", size),
        Dev::fsdax("pmem", size),
        Dev::devdax("ram", size, 2 * MIB),
        Dev::devdax("pmem", size, 2 * MIB),
    ]
}

/// The static build of `resources/guest-agent/daxio.c`, which acts as `dax-touch` when
/// installed under that name.
fn dax_touch() -> Result<PathBuf> {
    testbed::policy_checks::daxio_binary()
}

/// A guest with `devs`, the agent, `dax-touch`, mke2fs, and `script` as its command.
fn guest(devs: &[Dev], memory: &str, script: &str, scratch: &ScratchDir) -> Result<GuestOpts> {
    let script_path = scratch.path().join("pfn-test.sh");
    std::fs::write(&script_path, script).map_err(|e| testbed::Error::setup(e.to_string()))?;
    let agent = testbed::config::workspace_root().join("resources/guest-agent/pmem-report");
    let spec = InitramfsSpec::default()
        .with_file(&agent, AGENT)
        .with_file(dax_touch()?, DAX_TOUCH)
        .with_file(&script_path, GUEST_SCRIPT)
        .with_bin(format!("/usr/sbin/mke2fs:{MKE2FS}"))
        .with_file("/etc/mke2fs.conf", "/etc/mke2fs.conf");
    let mut opts = GuestOpts::default()
        .with_memory(memory)
        .with_command(format!("sh {GUEST_SCRIPT}"))
        .with_vmm_args(["--report", "vmm-report.json"])
        .with_after(
            "echo @@VMM-REPORT-BEGIN@@; cat vmm-report.json; echo; echo @@VMM-REPORT-END@@; \
             exit 0",
        )
        .with_host(
            HostOpts::default()
                .with_timeout(Duration::from_secs(900))
                .with_initramfs(spec),
        );
    for d in devs {
        opts = opts.with_vmm_args(["--pmem".to_string(), d.pmem_arg()]);
    }
    Ok(opts)
}

fn boot(opts: &GuestOpts) -> Result<GuestRun> {
    let run = boot_guest(opts)?;
    eprintln!(
        "{} host: run {:.2?}, host ready {:?}, vmm {:?}, vmm exit {}, guest exit {:?}",
        run.host.mode,
        run.host.duration,
        run.host.host_ready,
        run.report.vmm_time,
        run.vmm_exit,
        run.report.guest_exit
    );
    Ok(run)
}

/// One `@@PMEM-REPORT-BEGIN label@@` ... `END` block: key=value lines, last one wins.
#[derive(Debug, Default)]
struct Report {
    kv: BTreeMap<String, String>,
}

impl Report {
    fn parse(console: &str, label: &str) -> Option<Report> {
        let begin = format!("@@PMEM-REPORT-BEGIN {label}@@");
        let end = format!("@@PMEM-REPORT-END {label}@@");
        let start = console.find(&begin)? + begin.len();
        let stop = start + console[start..].find(&end)?;
        let kv = console[start..stop]
            .lines()
            .filter_map(|l| {
                let l = l.trim_end_matches('\r');
                let (k, v) = l.split_once('=')?;
                let ok = !k.is_empty()
                    && k.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
                ok.then(|| (k.to_string(), v.to_string()))
            })
            .collect();
        Some(Report { kv })
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.kv.get(key).map(String::as_str)
    }

    /// The checker's report for namespace `ns`, keys without the `check.<ns>.` prefix.
    fn check(&self, ns: &str) -> BTreeMap<String, String> {
        let prefix = format!("check.{ns}.");
        self.kv
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.to_string(), v.clone())))
            .collect()
    }

    /// Namespaces the checker reported on (each report starts with `namespace=`).
    fn namespaces(&self) -> Vec<String> {
        self.kv
            .keys()
            .filter_map(|k| k.strip_prefix("check.")?.strip_suffix(".namespace"))
            .map(String::from)
            .collect()
    }

    /// The namespace whose checked range starts at `base`.
    fn namespace_at(&self, base: u64) -> Option<String> {
        self.namespaces().into_iter().find(|ns| {
            self.get(&format!("check.{ns}.range_start"))
                .and_then(parse_num)
                == Some(base)
        })
    }
}

fn parse_num(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn report(run: &GuestRun, label: &str) -> Result<Report> {
    Report::parse(&run.host.output, label)
        .ok_or_else(|| run.error(format!("no complete pmem-report block {label:?}")))
}

/// What the monitor said about one device (`vmm --report`).
#[derive(Debug, Clone)]
struct VmmDev {
    id: String,
    base: u64,
    size: u64,
    mode: String,
    memmap: String,
    memmap_bytes: u64,
    data_offset: u64,
    capacity: u64,
}

fn vmm_report(run: &GuestRun) -> Result<Vec<VmmDev>> {
    let out = &run.host.output;
    let text = out
        .split_once("@@VMM-REPORT-BEGIN@@")
        .and_then(|(_, rest)| rest.split_once("@@VMM-REPORT-END@@"))
        .map(|(json, _)| json.trim())
        .ok_or_else(|| run.error("the host printed no vmm --report"))?;
    let v: Value = serde_json::from_str(text)
        .map_err(|e| run.error(format!("vmm --report is not JSON ({e}): {text}")))?;
    let devs = v["pmem"]
        .as_array()
        .ok_or_else(|| run.error(format!("vmm --report has no pmem array: {text}")))?;
    devs.iter()
        .map(|d| {
            let num = |k: &str| {
                d[k].as_u64()
                    .ok_or_else(|| run.error(format!("vmm --report: {k} missing in {d}")))
            };
            let s = |k: &str| d[k].as_str().unwrap_or("").to_string();
            Ok(VmmDev {
                id: s("id"),
                base: num("guest_base")?,
                size: num("size")?,
                mode: s("mode"),
                memmap: s("memmap"),
                memmap_bytes: num("memmap_bytes")?,
                data_offset: num("data_offset")?,
                capacity: num("capacity")?,
            })
        })
        .collect()
}

/// The checker's verdict on one device, checked against the monitor's numbers.
#[derive(Debug, Clone)]
struct Checked {
    id: String,
    kind: String,
    memmap: String,
    size: u64,
    pfns: u64,
    check_ns: u64,
    namespace: String,
}

/// Every device passed and matches the monitor's layout; returns the numbers for the timing
/// table.
fn expect_all_pass(run: &GuestRun, rep: &Report, vmm: &[VmmDev]) -> Result<Vec<Checked>> {
    run.check(rep.get("checker") == Some("present"), || {
        format!("agent says checker={:?}", rep.get("checker"))
    })?;
    let mut out = Vec::new();
    for d in vmm {
        let ns = rep.namespace_at(d.base).ok_or_else(|| {
            run.error(format!(
                "{}: no checker report for the namespace at {:#x} (namespaces: {:?})",
                d.id,
                d.base,
                rep.namespaces()
            ))
        })?;
        let c = rep.check(&ns);
        let get = |k: &str| c.get(k).map(String::as_str).unwrap_or("");
        let num = |k: &str| parse_num(get(k)).unwrap_or(u64::MAX);
        let ctx = || format!("{} ({ns}): {c:#?}", d.id);
        run.check(get("result") == "pass" && num("failed_pfns") == 0, || {
            format!("checker did not pass: {}", ctx())
        })?;
        // A raw namespace with a memmap (a legacy E820 range: Linux maps it with struct pages
        // in RAM) is an fsdax pgmap to the checker.
        let kind = if d.mode == "raw" && d.memmap == "ram" {
            "fsdax"
        } else {
            d.mode.as_str()
        };
        run.check(get("kind") == kind, || {
            format!(
                "kind {} != {kind} (the monitor's mode {}, memmap {}): {}",
                get("kind"),
                d.mode,
                d.memmap,
                ctx()
            )
        })?;
        let expect_pfns = (d.data_offset + d.capacity) / PAGE;
        run.check(num("pfns") == expect_pfns, || {
            format!(
                "checked {} pfns, the monitor's layout gives the guest {expect_pfns}: {}",
                get("pfns"),
                ctx()
            )
        })?;
        run.check(
            num("range_end") - num("range_start") == d.data_offset + d.capacity,
            || format!("range is not the monitor's: {}", ctx()),
        )?;
        run.check(num("data_start") == d.base + d.data_offset, || {
            format!(
                "data_start != base + data_offset {:#x}: {}",
                d.data_offset,
                ctx()
            )
        })?;
        run.check(
            get("memmap_policy") == d.memmap && get("memmap_location") == d.memmap,
            || {
                format!(
                    "memmap is not where the monitor put it ({}): {}",
                    d.memmap,
                    ctx()
                )
            },
        )?;
        let (ram, pmem) = (num("memmap_ram_bytes"), num("memmap_pmem_bytes"));
        run.check(
            ram.saturating_add(pmem) == d.memmap_bytes && num("memmap_other_bytes") == 0,
            || {
                format!(
                    "struct pages take {ram} + {pmem} bytes, the monitor says {}: {}",
                    d.memmap_bytes,
                    ctx()
                )
            },
        )?;
        let reserve = if d.memmap == "pmem" { 2 } else { 0 };
        run.check(num("pfns_reserve_untouched") == reserve, || {
            format!("expected {reserve} untouched reserve pfns: {}", ctx())
        })?;
        if d.mode != "raw" {
            // the upstreamable sysfs attributes on the pfn / dax device
            let nd = get("nd_device");
            let loc = rep.get(&format!("nd.{nd}.memmap_location")).unwrap_or("");
            let bytes = rep
                .get(&format!("nd.{nd}.memmap_bytes"))
                .and_then(parse_num)
                .unwrap_or(u64::MAX);
            let want = if d.memmap == "pmem" { pmem } else { ram };
            run.check(loc == d.memmap && bytes == want, || {
                format!(
                    "{nd}/memmap_location={loc:?} memmap_bytes={bytes}, expected {} and {want}: {}",
                    d.memmap,
                    ctx()
                )
            })?;
        }
        out.push(Checked {
            id: d.id.clone(),
            kind: d.mode.clone(),
            memmap: d.memmap.clone(),
            size: d.size,
            pfns: num("pfns"),
            check_ns: num("duration_ns"),
            namespace: ns.clone(),
        });
    }
    Ok(out)
}

/// Prints the checker time per GiB and (when measured) the bring-up time per namespace.
fn print_timings(title: &str, checked: &[Checked], bringup: Option<&Report>) {
    eprintln!("--- {title}: checker and bring-up times in the guest ---");
    eprintln!(
        "{:<28} {:>6} {:>10} {:>10} {:>10} {:>12}",
        "device", "GiB", "pfns", "check ms", "ms/GiB", "bring-up ms"
    );
    for c in checked {
        let gib = c.size as f64 / GIB as f64;
        let ms = c.check_ns as f64 / 1e6;
        let up = bringup
            .and_then(|r| r.get(&format!("bringup.{}.us", c.namespace)))
            .and_then(parse_num)
            .map(|us| format!("{:.1}", us as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        eprintln!(
            "{:<28} {:>6.3} {:>10} {:>10.1} {:>10.1} {:>12}   [{} {}] ns/pfn {:.0}",
            c.id,
            gib,
            c.pfns,
            ms,
            ms / gib,
            up,
            c.kind,
            c.memmap,
            c.check_ns as f64 / c.pfns.max(1) as f64
        );
    }
}

/// Every device was brought up again by the agent's rebind.
fn expect_bringup(run: &GuestRun, rep: &Report, checked: &[Checked]) -> Result<()> {
    for c in checked {
        let key = |k: &str| format!("bringup.{}.{k}", c.namespace);
        let request = |k: &str| rep.get(&format!("request.bringup.{}.{k}", c.namespace));
        run.check(
            rep.get(&key("rc")) == Some("0")
                && rep.get(&key("us")).and_then(parse_num).is_some()
                && request("unbind") == Some("ok")
                && request("bind") == Some("ok"),
            || {
                format!(
                    "{}: rebind did not work: rc={:?} us={:?} unbind={:?} bind={:?}",
                    c.id,
                    rep.get(&key("rc")),
                    rep.get(&key("us")),
                    request("unbind"),
                    request("bind")
                )
            },
        )?;
    }
    Ok(())
}

/// Runs the agent twice: as the namespaces came up at boot, then after rebinding each
/// namespace (timing its bring-up) and re-checking on request.
const BOOT_AND_BRINGUP: &str = "pmem-report --label boot\n\
     pmem-report --label bringup --bringup --check\n";

fn run_matrix(title: &str, devs: &[Dev], memory: &str) -> Result<()> {
    run_matrix_report(title, devs, memory).map(|_| ())
}

/// [`run_matrix`], returning the run, the boot-time agent report and the monitor's report for
/// further checks.
fn run_matrix_report(
    title: &str,
    devs: &[Dev],
    memory: &str,
) -> Result<(GuestRun, Report, Vec<VmmDev>)> {
    let scratch = ScratchDir::new("pfn-matrix")?;
    let run = boot(&guest(devs, memory, BOOT_AND_BRINGUP, &scratch)?)?;
    run.expect_success()?;
    let vmm = vmm_report(&run)?;
    run.check(vmm.len() == devs.len(), || {
        format!("vmm reports {} devices, expected {}", vmm.len(), devs.len())
    })?;
    for (d, v) in devs.iter().zip(&vmm) {
        run.check(d.id == v.id && d.size == v.size, || {
            format!("vmm --report order/size mismatch: {d:?} vs {v:?}")
        })?;
    }
    let at_boot = report(&run, "boot")?;
    let checked = expect_all_pass(&run, &at_boot, &vmm)?;
    for c in &checked {
        run.check(
            at_boot.get(&format!("check.{}.trigger", c.namespace)) == Some("probe"),
            || {
                format!(
                    "{}: the boot-time report was not from the come-up check",
                    c.id
                )
            },
        )?;
    }
    let after = report(&run, "bringup")?;
    run.check(after.get("request.check") == Some("ok"), || {
        format!("check request: {:?}", after.get("request.check"))
    })?;
    let rechecked = expect_all_pass(&run, &after, &vmm)?;
    expect_bringup(&run, &after, &rechecked)?;
    print_timings(title, &rechecked, Some(&after));
    Ok((run, at_boot, vmm))
}

/// The 128 MiB and 1 GiB rows of the matrix (plus devdax with 1 GiB alignment on 2 GiB
/// devices, the smallest that can hold a 1 GiB-aligned data area) in one guest: twelve
/// devices of every kind and both memmap policies side by side; the 128 MiB windows are all
/// adjacent (each ends where the next begins). Checked as they come up, then each namespace
/// is unbound and rebound (timing its bring-up) and checked again on request.
///
/// With the memmap in RAM and a window that is not 1 GiB aligned, Linux 6.12 builds its 1 GiB
/// compound pages from the start of the namespace rather than of the data, so they are not
/// naturally aligned, and the checker's compound_head test fails on every pfn of such a
/// namespace; the layout therefore puts `align=1G` devices on 1 GiB boundaries wherever they
/// come on the command line (see [`align_1g_device_after_a_small_one_passes`]).
#[test]
fn matrix_128m_1g_and_1g_aligned_devdax_in_one_guest() -> Result<()> {
    let mut devs = vec![
        // windows at 4 GiB and 6 GiB
        Dev::devdax("pmem", 2 * GIB, GIB),
        Dev::devdax("ram", 2 * GIB, GIB),
    ];
    devs.extend(matrix(128 * MIB));
    devs.extend(matrix(GIB));
    run_matrix("128 MiB, 1 GiB, 2 GiB (1 GiB align)", &devs, "1G")
}

/// Issue 10, defect 5: a devdax device with 1 GiB alignment and its memmap in RAM after a
/// 128 MiB device, whose window ends off a 1 GiB boundary (at 4 GiB + 128 MiB). The layout
/// still starts it on a 1 GiB boundary (5 GiB), so its compound pages are naturally aligned and
/// every pfn passes; before, it sat at 4 GiB + 128 MiB and every pfn failed the checker.
#[test]
fn align_1g_device_after_a_small_one_passes() -> Result<()> {
    let devs = vec![
        Dev::fsdax("ram", 128 * MIB),
        Dev::devdax("ram", 2 * GIB, GIB),
    ];
    run_matrix("1 GiB align after a 128 MiB device", &devs, "1G")
}

/// Issue 12, legacy E820 persistent memory: the matrix's five configurations as
/// `firmware=e820` ranges (raw, fsdax and devdax with the memmap in RAM and in the device),
/// with one NFIT NVDIMM among them. Each range comes up as its own region on the `e820` bus
/// (`nd_e820`; the monitor keeps the ranges apart, or Linux would merge them into one), under
/// a "Persistent Memory (legacy)" entry of `/proc/iomem`, and the checker passes on every
/// namespace, as for NFIT devices.
#[test]
fn legacy_e820_ranges_in_every_mode_pass_the_checker() -> Result<()> {
    let mut devs: Vec<Dev> = matrix(256 * MIB).into_iter().map(Dev::e820).collect();
    devs.insert(2, Dev::fsdax("pmem", 256 * MIB));
    let (run, rep, vmm) = run_matrix_report("legacy E820 ranges, 256 MiB", &devs, "1G")?;
    // Which bus each region is on, and each bus's provider.
    let provider_of_region_at = |base: u64| -> Option<&str> {
        let region = rep.kv.iter().find_map(|(k, v)| {
            let dev = k.strip_prefix("nd.")?.strip_suffix(".resource")?;
            (dev.starts_with("region") && parse_num(v) == Some(base)).then_some(dev)
        })?;
        let bus = rep.get(&format!("nd.{region}.bus"))?;
        rep.get(&format!("nd.{bus}.provider"))
    };
    // Top-level /proc/iomem entries: (start, name).
    let iomem: Vec<(u64, &str)> = rep
        .kv
        .iter()
        .filter(|(k, _)| k.starts_with("iomem."))
        .filter_map(|(_, v)| {
            let (depth, rest) = v.split_once(':')?;
            let (range, name) = rest.split_once(':')?;
            let start = u64::from_str_radix(range.split_once('-')?.0, 16).ok()?;
            (depth == "0").then_some((start, name))
        })
        .collect();
    for (d, v) in devs.iter().zip(&vmm) {
        let (provider, iomem_name) = if d.e820 {
            ("e820", "Persistent Memory (legacy)")
        } else {
            ("ACPI.NFIT", "Persistent Memory")
        };
        run.check(provider_of_region_at(v.base) == Some(provider), || {
            format!(
                "{}: the region at {:#x} should be on the {provider} bus, found {:?}",
                d.id,
                v.base,
                provider_of_region_at(v.base)
            )
        })?;
        run.check(iomem.contains(&(v.base, iomem_name)), || {
            format!(
                "{}: /proc/iomem should have {iomem_name:?} at {:#x}: {iomem:x?}",
                d.id, v.base
            )
        })?;
    }
    Ok(())
}

/// The 16 GiB row, sparse backing files: only the memmap is ever written.
#[test]
fn matrix_16g_sparse() -> Result<()> {
    let mut devs = matrix(16 * GIB);
    devs.push(Dev::devdax("pmem", 16 * GIB, GIB));
    run_matrix("16 GiB", &devs, "1536M")
}

/// The windows of consecutive 128 MiB devices touch, and both sides of each seam pass.
#[test]
fn adjacent_windows_with_different_policies() -> Result<()> {
    let devs = vec![
        Dev::fsdax("pmem", 128 * MIB),
        Dev::devdax("ram", 128 * MIB, 2 * MIB),
        Dev::raw(128 * MIB),
        Dev::devdax("pmem", 128 * MIB, 2 * MIB),
        Dev::fsdax("ram", 128 * MIB),
    ];
    let scratch = ScratchDir::new("pfn-adjacent")?;
    let run = boot(&guest(
        &devs,
        "512M",
        "pmem-report --label boot\n",
        &scratch,
    )?)?;
    run.expect_success()?;
    let vmm = vmm_report(&run)?;
    for pair in vmm.windows(2) {
        run.check(pair[0].base + pair[0].size == pair[1].base, || {
            format!("windows not adjacent: {:?} then {:?}", pair[0], pair[1])
        })?;
    }
    let rep = report(&run, "boot")?;
    let checked = expect_all_pass(&run, &rep, &vmm)?;
    print_timings("adjacent 128 MiB windows", &checked, None);
    Ok(())
}

/// Writes through DAX — a file mmap'd MAP_SYNC on ext4 mounted `-o dax` on each fsdax
/// namespace, and a MAP_SYNC mmap of each device-dax device — then re-checks: every namespace
/// still passes, and every page the workload touched has a pfn inside its namespace's data
/// area.
#[test]
fn recheck_after_dax_workload_passes() -> Result<()> {
    let devs = vec![
        Dev::fsdax("pmem", GIB),
        Dev::fsdax("ram", GIB),
        Dev::devdax("pmem", GIB, 2 * MIB),
        Dev::devdax("ram", GIB, 2 * MIB),
    ];
    let script = r#"set -e
pmem-report --label boot
# fsdax: ext4 with DAX, a 64 MiB file written through a MAP_SYNC mapping
for n in 0 1; do
    /opt/e2fsprogs/mke2fs -q -F -t ext4 -b 4096 /dev/pmem$n
    mkdir -p /mnt/p$n
    mount -t ext4 -o dax /dev/pmem$n /mnt/p$n
    grep -q "/mnt/p$n .*dax" /proc/mounts || { echo "pmem$n: not mounted with dax"; exit 1; }
    echo "@@WORKLOAD pmem$n@@"
    dax-touch /mnt/p$n/file $((64 << 20)) $n
done
# devdax: 64 MiB of each device
for d in /dev/dax*; do
    echo "@@WORKLOAD ${d#/dev/}@@"
    dax-touch $d $((64 << 20)) 7
done
sync
pmem-report --label after --check
"#;
    let scratch = ScratchDir::new("pfn-workload")?;
    let run = boot(&guest(&devs, "768M", script, &scratch)?)?;
    run.expect_success()?;
    let vmm = vmm_report(&run)?;
    expect_all_pass(&run, &report(&run, "boot")?, &vmm)?;
    let after = report(&run, "after")?;
    let checked = expect_all_pass(&run, &after, &vmm)?;
    for c in &checked {
        let runs = after.get(&format!("check.{}.runs", c.namespace));
        let trigger = after.get(&format!("check.{}.trigger", c.namespace));
        run.check(runs == Some("2") && trigger == Some("request"), || {
            format!(
                "{}: expected a second, requested run: runs={runs:?} {trigger:?}",
                c.id
            )
        })?;
    }
    // every touched pfn lies in some namespace's data area
    let touches = testbed::marker_values(&run.host.output, "DAX-TOUCH");
    run.check(touches.len() == 4, || {
        format!("expected 4 dax-touch results, got {touches:?}")
    })?;
    for t in touches {
        let field = |k: &str| testbed::word_value(t, k).and_then(parse_num);
        let (min, max) = (field("pfn_min"), field("pfn_max"));
        run.check(
            field("bad") == Some(0) && field("pfn_missing") == Some(0),
            || format!("dax-touch failed: {t}"),
        )?;
        let inside = vmm.iter().any(|d| {
            let lo = (d.base + d.data_offset) / PAGE;
            let hi = (d.base + d.data_offset + d.capacity) / PAGE;
            matches!((min, max), (Some(a), Some(b)) if a >= lo && b < hi)
        });
        run.check(inside, || {
            format!("dax-touch pfns {min:x?}..{max:x?} are in no data area: {t}")
        })?;
    }
    Ok(())
}

/// The negative control: with the checker's fault injection armed it must report failures —
/// comparing against another device's pgmap, against a reserve that is not the device's, and
/// expecting struct pages on a raw namespace — and the next check passes again. Bad requests
/// get errors, never a crash.
#[test]
fn injected_faults_fail_and_bad_requests_are_errors() -> Result<()> {
    let devs = vec![
        Dev::fsdax("pmem", 128 * MIB),
        Dev::devdax("ram", 256 * MIB, 2 * MIB),
        Dev::raw(128 * MIB),
        Dev::fsdax("ram", 128 * MIB),
    ];
    let script = r#"C=/sys/kernel/debug/nvdimm-pfn-check
bad() { what=$1; shift; if ( "$@" ) 2>/tmp/err; then echo "@@BAD $what accepted@@"; else echo "@@BAD $what refused $(tr -d '\n' < /tmp/err)@@"; fi; }
pmem-report --label boot
dmesg -c > /dev/null
pmem-report --label inject --inject namespace0.0 wrong-altmap --inject namespace1.0 wrong-pgmap --inject namespace2.0 wrong-pgmap --inject namespace3.0 wrong-altmap --check
pmem-report --label clean --check
bad missing-device sh -c "echo namespace9.0 > $C/check"
bad not-pmem sh -c "echo loop0 > $C/check"
bad empty sh -c "echo > $C/check"
bad check-value-2 sh -c "echo 2 > $C/namespace0.0/check"
bad check-value-text sh -c "echo yes > $C/namespace0.0/check"
bad inject-unknown sh -c "echo wrong-everything > $C/namespace0.0/inject"
bad missing-dir sh -c "echo 1 > $C/namespace9.0/check"
bad sysfs-disabled sh -c "cat /sys/bus/nd/devices/pfn0.0/memmap_location"
pmem-report --label final --check
# nothing went wrong in the kernel since the boot-time report
dmesg | grep -E "BUG|Oops|WARNING|Call Trace" && exit 1
exit 0
"#;
    let scratch = ScratchDir::new("pfn-negative")?;
    let run = boot(&guest(&devs, "512M", script, &scratch)?)?;
    run.expect_success()?;
    let vmm = vmm_report(&run)?;
    expect_all_pass(&run, &report(&run, "boot")?, &vmm)?;

    let inject = report(&run, "inject")?;
    // namespaceN.0 is the N-th device (one region per NFIT SPA range, in table order)
    let expected: [(&str, &str, &[&str]); 4] = [
        ("namespace0.0", "wrong-altmap", &["memmap_location"]),
        ("namespace1.0", "wrong-pgmap", &["pgmap", "pgmap_lookup"]),
        ("namespace2.0", "wrong-pgmap", &["pfn_valid"]),
        ("namespace3.0", "wrong-altmap", &["memmap_location"]),
    ];
    for ((ns, kind, tests), d) in expected.iter().zip(&vmm) {
        let c = inject.check(ns);
        let get = |k: &str| c.get(k).map(String::as_str).unwrap_or("");
        let num = |k: &str| parse_num(get(k)).unwrap_or(0);
        run.check(
            inject.get(&format!("request.inject.{ns}")) == Some("ok")
                && parse_num(get("range_start")) == Some(d.base),
            || format!("{ns} is not {} or the injection was refused: {c:#?}", d.id),
        )?;
        run.check(
            get("inject") == *kind && get("result") == "fail" && num("failed_pfns") > 0,
            || format!("{ns}: injected {kind} but the checker did not fail: {c:#?}"),
        )?;
        for t in *tests {
            run.check(num(&format!("fail_{t}")) > 0, || {
                format!("{ns}: injected {kind}, expected fail_{t} > 0: {c:#?}")
            })?;
        }
        run.check(c.contains_key("failure0"), || {
            format!("{ns}: no first failing pfn listed: {c:#?}")
        })?;
        eprintln!(
            "negative control {ns} ({}): inject={kind} failed_pfns={} of {} first: {}",
            d.id,
            get("failed_pfns"),
            get("pfns"),
            get("failure0")
        );
    }
    // the injection is one-shot: the next check passes again
    let clean = report(&run, "clean")?;
    expect_all_pass(&run, &clean, &vmm)?;

    let bad = testbed::marker_values(&run.host.output, "BAD");
    for (what, errno) in [
        ("missing-device", "No such device"),
        ("not-pmem", "No such device"),
        ("empty", "Invalid argument"),
        ("check-value-2", "Invalid argument"),
        ("check-value-text", "Invalid argument"),
        ("inject-unknown", "Invalid argument"),
        ("missing-dir", "nonexistent"),
    ] {
        let line = bad.iter().find(|l| l.starts_with(&format!("{what} ")));
        run.check(
            matches!(line, Some(l) if l.contains("refused") && l.contains(errno)),
            || format!("bad request {what}: expected refusal with {errno:?}, got {line:?}"),
        )?;
    }
    // pfn0.0 is the idle seed device: the attributes exist but it is disabled
    let line = bad.iter().find(|l| l.starts_with("sysfs-disabled "));
    run.check(
        matches!(line, Some(l) if l.contains("refused") && l.contains("No such device or address")),
        || format!("memmap_location of a disabled pfn seed: {line:?}"),
    )?;
    let last = report(&run, "final")?;
    expect_all_pass(&run, &last, &vmm)?;
    Ok(())
}

/// On a kernel without `CONFIG_NVDIMM_PFN_CHECK` the debugfs directory does not exist: the
/// agent must say `checker=absent`, report the failed check request, exit non-zero and print
/// no checker results. Run on this machine's own kernel with the agent's debugfs root pointed
/// at an empty directory (a kernel without the option shows exactly that), or — when
/// `PMEMVMM_KERNEL_WITHOUT_PFN_CHECK` names a bzImage built without the option — in a guest
/// booted from it.
#[test]
fn agent_reports_checker_absent_without_the_option() -> Result<()> {
    let agent = testbed::config::workspace_root().join("resources/guest-agent/pmem-report");
    let expect_absent = |text: &str, rc: Option<i32>| -> std::result::Result<(), String> {
        let rep = Report::parse(text, "absent").ok_or("no report block")?;
        let checks = rep.kv.keys().filter(|k| k.starts_with("check.")).count();
        if rep.get("checker") != Some("absent")
            || !rep
                .get("request.check")
                .is_some_and(|v| v.starts_with("error:"))
            || checks != 0
            || rc != Some(1)
        {
            return Err(format!(
                "expected checker=absent and a failed request: {text}"
            ));
        }
        Ok(())
    };
    let other_kernel = std::env::var("PMEMVMM_KERNEL_WITHOUT_PFN_CHECK").unwrap_or_default();
    if !other_kernel.is_empty() {
        let kernel = other_kernel;
        let share = ScratchDir::new("pfn-absent")?;
        std::fs::copy(&kernel, share.path().join("bzImage"))
            .map_err(|e| testbed::Error::setup(format!("{kernel}: {e}")))?;
        let scratch = ScratchDir::new("pfn-absent-script")?;
        let devs = [Dev::fsdax("pmem", 128 * MIB)];
        let mut opts = guest(
            &devs,
            "256M",
            "pmem-report --label absent --check; echo \"@@AGENT-RC $?@@\"\n",
            &scratch,
        )?
        .with_before("KERNEL=\"$SHARE/bzImage\"");
        opts.host = opts.host.with_share(share.path());
        let run = boot(&opts)?;
        run.expect_success()?;
        let rc = testbed::markers::last_marker(&run.host.output, "AGENT-RC");
        return expect_absent(&run.host.output, rc).map_err(|e| run.error(e));
    }
    let empty = ScratchDir::new("no-debugfs")?;
    let out = Command::new("sh")
        .arg(&agent)
        .args(["--label", "absent", "--check"])
        .env("PMEM_REPORT_DEBUGFS", empty.path())
        .output()
        .map_err(|e| testbed::Error::setup(format!("running {}: {e}", agent.display())))?;
    let text = String::from_utf8_lossy(&out.stdout);
    expect_absent(&text, out.status.code()).map_err(testbed::Error::setup)
}
