//! From samples to figures: summaries, derived figures (ratios, per-GiB costs), the list of
//! figures a run must have, the stdout table and the JSON document.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::lines::{Failure, Info, Sample, Tag};
use crate::settings::{parse_size, size_label, PeerKind, PeerState, Settings, GIB};
use crate::stats::{summarize, Summary};

/// `(phase, case, metric)`.
pub type Key = (String, String, String);

/// All results of a run.
#[derive(Debug, Clone, Default)]
pub struct Results {
    /// Raw samples (probe output plus derived per-run figures).
    pub samples: Vec<Sample>,
    /// Facts.
    pub infos: Vec<Info>,
    /// Measurements that failed.
    pub failures: Vec<Failure>,
    /// Summaries of every `(phase, case, metric)`.
    pub summaries: BTreeMap<Key, Summary>,
}

fn key(phase: &str, case: &str, metric: &str) -> Key {
    (phase.to_string(), case.to_string(), metric.to_string())
}

/// The unit of a metric, from its suffix.
pub fn unit(metric: &str) -> &'static str {
    if metric.ends_with("_ms") {
        "ms"
    } else if metric.ends_with("_kib_per_gib") {
        "KiB/GiB"
    } else if metric.ends_with("_kib") {
        "KiB"
    } else if metric.ends_with("_mib_s") {
        "MiB/s"
    } else if metric.ends_with("_bytes") {
        "bytes"
    } else if metric.ends_with("_pct") {
        "%"
    } else {
        "x"
    }
}

/// The pmem size in a memmap case name (`ram-4G` is 4 GiB).
pub fn memmap_case_size(case: &str) -> Option<u64> {
    parse_size(case.rsplit_once('-')?.1)
}

impl Results {
    /// Adds derived per-run samples (memmap costs per GiB), then summarises everything and adds
    /// the figures made of summaries (ratios, start-up spread).
    pub fn finish(&mut self) {
        let mut derived = Vec::new();
        // Boot: the time before the guest kernel's clock started (the monitor's set-up, the
        // firmware or boot protocol, a bzImage's decompression) plus init's own work up to its
        // marker, from the launch time and the kernel's own timestamp of init, per run.
        let mut boot: BTreeMap<(String, usize), (Option<f64>, Option<f64>)> = BTreeMap::new();
        for s in self.samples.iter().filter(|s| s.tag.phase == "boot") {
            let e = boot.entry((s.tag.case.clone(), s.tag.run)).or_default();
            match s.metric.as_str() {
                "launch_ms" => e.0 = Some(s.value),
                "dmesg_init_ms" => e.1 = Some(s.value),
                _ => {}
            }
        }
        for ((case, run), (launch, init)) in boot {
            if let (Some(launch), Some(init)) = (launch, init) {
                derived.push(Sample {
                    tag: Tag {
                        phase: "boot".into(),
                        case,
                        run,
                    },
                    metric: "before_kernel_ms".into(),
                    value: ((launch - init) * 10.0).round() / 10.0,
                });
            }
        }
        for s in &self.samples {
            if s.tag.phase != "memmap" {
                continue;
            }
            let Some(size) = memmap_case_size(&s.tag.case) else {
                continue;
            };
            let gib = size as f64 / GIB as f64;
            let per_gib = match s.metric.as_str() {
                "ram_cost_kib" => Some(("ram_cost_kib_per_gib", s.value / gib)),
                "formula_ram_cost_bytes" => {
                    Some(("formula_ram_cost_kib_per_gib", s.value / 1024.0 / gib))
                }
                _ => None,
            };
            if let Some((metric, value)) = per_gib {
                derived.push(Sample {
                    tag: s.tag.clone(),
                    metric: metric.into(),
                    value: (value * 10.0).round() / 10.0,
                });
            }
        }
        self.samples.extend(derived);
        let mut groups: BTreeMap<Key, Vec<f64>> = BTreeMap::new();
        for s in &self.samples {
            groups
                .entry(key(&s.tag.phase, &s.tag.case, &s.metric))
                .or_default()
                .push(s.value);
        }
        self.summaries = groups
            .into_iter()
            .filter_map(|(k, v)| summarize(&v).map(|s| (k, s)))
            .collect();
        self.add_ratios();
    }

    /// The median of one figure, if the run has it.
    pub fn median(&self, phase: &str, case: &str, metric: &str) -> Option<f64> {
        self.summaries
            .get(&key(phase, case, metric))
            .map(|s| s.median)
    }

    fn put(&mut self, phase: &str, case: &str, metric: &str, value: f64) {
        if value.is_finite() {
            let v = (value * 1000.0).round() / 1000.0;
            self.summaries.insert(
                key(phase, case, metric),
                Summary {
                    n: 1,
                    median: v,
                    min: v,
                    max: v,
                },
            );
        }
    }

    fn add_ratios(&mut self) {
        // Boot: each peer against our vmm with the same number of devices.
        let boot_cases: Vec<String> = self
            .summaries
            .keys()
            .filter(|(p, c, m)| p == "boot" && m == "launch_ms" && !c.starts_with("vmm-"))
            .map(|(_, c, _)| c.clone())
            .collect();
        for case in boot_cases {
            let n = case.rsplit('-').next().unwrap_or("0");
            for metric in ["launch_ms", "rss_kib"] {
                if let (Some(peer), Some(ours)) = (
                    self.median("boot", &case, metric),
                    self.median("boot", &format!("vmm-{n}"), metric),
                ) {
                    if ours > 0.0 {
                        let name = format!("{}_vs_vmm_ratio", metric.trim_end_matches("_ms"));
                        self.put("boot", &case, &name, peer / ours);
                    }
                }
            }
        }
        // Ours against the faster peer (the lower median) with the same number of devices.
        let ours: Vec<(String, f64)> = self
            .summaries
            .iter()
            .filter(|((p, c, m), _)| {
                p == "boot"
                    && m == "launch_ms"
                    && c.strip_prefix("vmm-")
                        .is_some_and(|n| n.parse::<u32>().is_ok())
            })
            .map(|((_, c, _), s)| (c.clone(), s.median))
            .collect();
        for (case, median) in ours {
            let n = case.trim_start_matches("vmm-");
            let fastest = PeerKind::ALL
                .iter()
                .filter_map(|k| self.median("boot", &format!("{}-{n}", k.name()), "launch_ms"))
                .fold(f64::INFINITY, f64::min);
            if fastest.is_finite() && fastest > 0.0 {
                self.put(
                    "boot",
                    &case,
                    "launch_vs_fastest_peer_ratio",
                    median / fastest,
                );
            }
        }
        // The API server's resident memory: with `--api-socket` against without, no device.
        if let (Some(api), Some(plain)) = (
            self.median("boot", crate::scripts::API_CASE, "rss_kib"),
            self.median("boot", "vmm-0", "rss_kib"),
        ) {
            self.put(
                "boot",
                crate::scripts::API_CASE,
                "api_rss_delta_kib",
                api - plain,
            );
        }
        // Density: what one more guest costs the host (the fall of its free memory), from the
        // smallest to the largest guest count of each case.
        let mut density: BTreeMap<String, Vec<(usize, f64)>> = BTreeMap::new();
        for ((p, c, m), s) in &self.summaries {
            if p == "density" && m == "host_total_kib" {
                if let Some((case, n)) = c.rsplit_once('-') {
                    if let Ok(n) = n.parse::<usize>() {
                        density
                            .entry(case.to_string())
                            .or_default()
                            .push((n, s.median));
                    }
                }
            }
        }
        for (case, mut points) in density {
            points.sort_by_key(|(n, _)| *n);
            if let (Some(first), Some(last)) = (points.first(), points.last()) {
                if last.0 > first.0 {
                    let extra = (last.1 - first.1) / (last.0 - first.0) as f64;
                    self.put("density", &case, "extra_guest_host_kib", extra.round());
                    // The budget for one more guest: its own RAM (what its guest
                    // touched) and its monitor's resident memory, at the largest count.
                    let at = format!("{case}-{}", last.0);
                    if let (Some(ram), Some(rss)) = (
                        self.median("density", &at, "guest_ram_kib"),
                        self.median("density", &at, "monitor_rss_per_guest_kib"),
                    ) {
                        let budget = (ram / last.0 as f64 + rss).round();
                        self.put("density", &case, "extra_guest_budget_kib", budget);
                        self.put(
                            "density",
                            &case,
                            "extra_guest_over_budget_kib",
                            extra.round() - budget,
                        );
                    }
                }
            }
        }
        // Start-up: the largest size against the smallest (the issue asks for < 10 %).
        let mut startup: Vec<(u64, f64)> = self
            .summaries
            .iter()
            .filter(|((p, _, m), _)| p == "startup" && m == "startup_ms")
            .filter_map(|((_, c, _), s)| Some((parse_size(c.strip_prefix("vmm-")?)?, s.median)))
            .collect();
        startup.sort_by_key(|(size, _)| *size);
        if let (Some(first), Some(last)) = (startup.first().copied(), startup.last().copied()) {
            if startup.len() > 1 && first.1 > 0.0 {
                let case = format!("{}-vs-{}", size_label(last.0), size_label(first.0));
                self.put(
                    "startup",
                    &case,
                    "startup_growth_pct",
                    (last.1 / first.1 - 1.0) * 100.0,
                );
            }
        }
        // Bandwidth: guest against host on the same backing.
        for kind in ["devdax", "fsdax"] {
            for dir in ["read", "write"] {
                let metric = format!("{dir}_mib_s");
                if let (Some(g), Some(h)) = (
                    self.median("bandwidth", &format!("guest-{kind}"), &metric),
                    self.median("bandwidth", &format!("host-{kind}"), &metric),
                ) {
                    if h > 0.0 {
                        self.put(
                            "bandwidth",
                            &format!("guest-{kind}"),
                            &format!("{dir}_vs_host_ratio"),
                            g / h,
                        );
                    }
                }
                // Against the same guest's copies in its own RAM: 1.0 means the device is as
                // fast as guest memory, and what is left against the host is the guest's.
                if let (Some(g), Some(r)) = (
                    self.median("bandwidth", &format!("guest-{kind}"), &metric),
                    self.median("bandwidth", "guest-ram", &metric),
                ) {
                    if r > 0.0 {
                        self.put(
                            "bandwidth",
                            &format!("guest-{kind}"),
                            &format!("{dir}_vs_guest_ram_ratio"),
                            g / r,
                        );
                    }
                }
            }
        }
    }

    /// Failures of `(phase, case)`.
    pub fn failures_of(&self, phase: &str, case: &str) -> Vec<&Failure> {
        self.failures
            .iter()
            .filter(|f| f.tag.phase == phase && f.tag.case == case)
            .collect()
    }
}

/// Every figure the settings ask of *our* monitor (peers may fail without making the run
/// incomplete). The smoke test checks that each is present.
pub fn expected_figures(s: &Settings) -> Vec<Key> {
    use crate::settings::Phase;
    let mut out = Vec::new();
    if s.has(Phase::Boot) {
        for case in ["vmm", crate::scripts::BZIMAGE_CASE] {
            for n in &s.boot_devices {
                for m in [
                    "launch_ms",
                    "startup_ms",
                    "rss_kib",
                    "rss_total_kib",
                    "dmesg_init_ms",
                    "before_kernel_ms",
                ] {
                    out.push(key("boot", &format!("{case}-{n}"), m));
                }
            }
        }
        if s.boot_devices.contains(&0) {
            for m in [
                "launch_ms",
                "rss_kib",
                "idle_wakeups",
                "idle_cpu_ms",
                "api_rss_delta_kib",
            ] {
                out.push(key("boot", crate::scripts::API_CASE, m));
            }
        }
    }
    if s.has(Phase::Startup) {
        for size in &s.startup_sizes {
            for m in ["launch_ms", "startup_ms", "open_map_ms", "rss_kib"] {
                out.push(key("startup", &format!("vmm-{}", size_label(*size)), m));
            }
        }
    }
    if s.has(Phase::Memmap) {
        for size in &s.memmap_sizes {
            for p in &s.memmap_policies {
                for m in [
                    "bringup_ms",
                    "ram_cost_kib",
                    "ram_cost_kib_per_gib",
                    "formula_ram_cost_kib_per_gib",
                    "open_format_ms",
                    "startup_ms",
                ] {
                    out.push(key("memmap", &format!("{p}-{}", size_label(*size)), m));
                }
            }
        }
    }
    if s.has(Phase::Bandwidth) {
        for side in ["guest", "host"] {
            for kind in ["devdax", "fsdax"] {
                for m in ["read_mib_s", "write_mib_s"] {
                    out.push(key("bandwidth", &format!("{side}-{kind}"), m));
                }
            }
        }
        for m in ["read_mib_s", "write_mib_s"] {
            out.push(key("bandwidth", "guest-ram", m));
        }
        for kind in ["devdax", "fsdax"] {
            for m in [
                "read_vs_host_ratio",
                "write_vs_host_ratio",
                "read_vs_guest_ram_ratio",
                "write_vs_guest_ram_ratio",
                "stage2_4k_kib",
                "stage2_2m_kib",
                "stage2_1g_kib",
                "stage2_mapped_kib",
                "stage2_huge_pct",
            ] {
                out.push(key("bandwidth", &format!("guest-{kind}"), m));
            }
        }
    }
    if s.has(Phase::Density) {
        for case in [
            crate::scripts::DensityCase::VmmShared,
            crate::scripts::DensityCase::VmmCopies,
        ] {
            for n in &s.density_guests {
                for m in DENSITY_FIGURES {
                    out.push(key("density", &format!("{}-{n}", case.name()), m));
                }
            }
        }
    }
    out
}

/// The figures of each density case and guest count.
pub const DENSITY_FIGURES: [&str; 14] = [
    "all_init_ms",
    "monitor_rss_kib",
    "monitor_pss_kib",
    "monitor_rss_per_guest_kib",
    "guest_ram_kib",
    "image_cache_kib",
    "image_mapped_kib",
    "image_distinct_kib",
    "image_pfn_shared_kib",
    "image_pfn_mismatch_kib",
    "image_files",
    "host_mem_kib",
    "host_total_kib",
    "host_total_per_guest_kib",
];

/// The figures each peer that was ready to run must have (a peer that starts but fails, or
/// cannot be set up on the KVM host, lacks them: the table and the JSON say so).
pub fn expected_peer_figures(s: &Settings) -> Vec<(PeerKind, Key)> {
    use crate::settings::Phase;
    let mut out = Vec::new();
    for (kind, _) in s.ready_peers() {
        if s.has(Phase::Boot) {
            for n in &s.boot_devices {
                for m in ["launch_ms", "rss_kib"] {
                    out.push((kind, key("boot", &format!("{}-{n}", kind.name()), m)));
                }
            }
        }
        if s.has(Phase::Density) && kind == PeerKind::CloudHypervisor {
            let case = crate::scripts::DensityCase::CloudHypervisorShared.name();
            for n in &s.density_guests {
                for m in DENSITY_FIGURES {
                    out.push((kind, key("density", &format!("{case}-{n}"), m)));
                }
            }
        }
    }
    out
}

/// The figures a ready peer lacks.
fn missing_peer_figures(results: &Results, s: &Settings, kind: PeerKind) -> Vec<Key> {
    expected_peer_figures(s)
        .into_iter()
        .filter(|(k, f)| *k == kind && !results.summaries.contains_key(f))
        .map(|(_, f)| f)
        .collect()
}

/// What became of a peer: `(state, detail)` for the table and the JSON. A peer that was ready
/// but lacks figures is `failed`, with what is missing and the first failure reported for it.
pub fn peer_outcome(results: &Results, s: &Settings, kind: PeerKind) -> (&'static str, String) {
    let state = s
        .peers
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, st)| st.clone())
        .unwrap_or(PeerState::NotGiven);
    match state {
        PeerState::NotGiven => ("not given", format!("set {}", kind.env_var())),
        PeerState::Missing(r) => ("missing", r),
        PeerState::Ready(p) => {
            let missing = missing_peer_figures(results, s, kind);
            if missing.is_empty() {
                return ("measured", p.display().to_string());
            }
            let cases: std::collections::BTreeSet<&str> =
                missing.iter().map(|(_, c, _)| c.as_str()).collect();
            let why = results
                .failures
                .iter()
                .find(|f| {
                    // `boot.<peer>-N` for a launch, `boot.<peer>` for the peer's set-up,
                    // `density.<peer>-shared-N` for a density case.
                    (f.tag.phase == "boot" || f.tag.phase == "density")
                        && (f.tag.case == kind.name()
                            || f.tag.case.starts_with(&format!("{}-", kind.name())))
                })
                .map(|f| format!(": {}", f.reason))
                .unwrap_or_default();
            (
                "failed",
                format!(
                    "{}: {} of {} figures missing ({}){why}",
                    p.display(),
                    missing.len(),
                    expected_peer_figures(s)
                        .iter()
                        .filter(|(k, _)| *k == kind)
                        .count(),
                    cases.into_iter().collect::<Vec<_>>().join(", ")
                ),
            )
        }
    }
}

/// Figures that are zero by construction up to measurement noise, so that a smoke test checks
/// them for presence, not sign: the guest RAM a memmap kept in the device, or no memmap at all,
/// costs (the RAM difference is then a few pages either way); the idle API thread's wakeups
/// and CPU (0 is the target) and its resident-memory difference (a few pages either way).
pub fn may_be_zero(k: &Key) -> bool {
    let memmap = k.0 == "memmap"
        && (k.2.starts_with("ram_cost") || k.2.starts_with("formula_ram_cost"))
        && !k.1.starts_with("ram-");
    let api = k.0 == "boot"
        && k.1 == crate::scripts::API_CASE
        && ["idle_wakeups", "idle_cpu_ms", "api_rss_delta_kib"].contains(&k.2.as_str());
    // A size of stage-2 leaf the guest's copies did not add (say, no 1 GiB ones), or no huge
    // ones at all (backings KVM maps with 4 KiB leaves): zero is a finding, not a fault.
    let stage2 = k.0 == "bandwidth" && k.2.starts_with("stage2_") && k.2 != "stage2_mapped_kib";
    // Density: sharing figures are zero where nothing can be shared (one guest, or one copy
    // each), and the mismatch is zero when all is well; the fall of free memory can be lost in
    // the host's own churn with one small guest.
    let density =
        k.0 == "density" && (k.2.starts_with("image_pfn_") || k.2.starts_with("host_mem"));
    memmap || api || stage2 || density
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The stdout table.
pub fn table(results: &Results, settings: &Settings, expected: &[Key]) -> String {
    let mut out = String::new();
    let mut phase = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:<22} {:<30} {:>10} {:>10} {:>10} {:>3}  unit",
        "phase", "case", "figure", "median", "min", "max", "n"
    );
    for ((p, c, m), s) in &results.summaries {
        if m.starts_with("formula_") && !m.ends_with("_per_gib") {
            continue;
        }
        if p != &phase {
            let _ = writeln!(out, "{}", "-".repeat(108));
            phase = p.clone();
        }
        let _ = writeln!(
            out,
            "{:<10} {:<22} {:<30} {:>10} {:>10} {:>10} {:>3}  {}",
            p,
            c,
            m,
            fmt_num(s.median),
            fmt_num(s.min),
            fmt_num(s.max),
            s.n,
            unit(m)
        );
    }
    let _ = writeln!(out, "{}", "-".repeat(108));
    for (kind, _) in &settings.peers {
        let (state, detail) = peer_outcome(results, settings, *kind);
        let _ = match state {
            "not given" => writeln!(out, "peer {:<17} not measured ({detail})", kind.name()),
            "measured" => writeln!(out, "peer {:<17} {detail}", kind.name()),
            "failed" => writeln!(out, "peer {:<17} FAILED: {detail}", kind.name()),
            _ => writeln!(out, "peer {:<17} {state}: {detail}", kind.name()),
        };
    }
    let mut seen = std::collections::BTreeSet::new();
    for f in &results.failures {
        if seen.insert((f.tag.phase.clone(), f.tag.case.clone(), f.reason.clone())) {
            let _ = writeln!(
                out,
                "FAILED {}.{} (run {}): {}",
                f.tag.phase, f.tag.case, f.tag.run, f.reason
            );
        }
    }
    let missing: Vec<&Key> = expected
        .iter()
        .filter(|k| !results.summaries.contains_key(*k))
        .collect();
    if !missing.is_empty() {
        let _ = writeln!(out, "MISSING FIGURES: {}", missing.len());
        for (p, c, m) in missing {
            let _ = writeln!(out, "  {p} {c} {m}");
        }
    }
    out
}

fn tag_json(t: &Tag) -> Value {
    json!({ "phase": t.phase, "case": t.case, "run": t.run })
}

/// The JSON document: machine, settings, every sample, summaries, infos, failures, peers and
/// the figures that are missing.
pub fn to_json(results: &Results, settings: &Settings, machine: Value, expected: &[Key]) -> Value {
    let samples: Vec<Value> = results
        .samples
        .iter()
        .map(|s| {
            let mut v = tag_json(&s.tag);
            v["metric"] = json!(s.metric);
            v["value"] = json!(s.value);
            v["unit"] = json!(unit(&s.metric));
            v
        })
        .collect();
    let summaries: Vec<Value> = results
        .summaries
        .iter()
        .map(|((p, c, m), s)| {
            json!({
                "phase": p, "case": c, "metric": m, "unit": unit(m),
                "n": s.n, "median": s.median, "min": s.min, "max": s.max,
            })
        })
        .collect();
    let infos: Vec<Value> = results
        .infos
        .iter()
        .map(|i| {
            let mut v = tag_json(&i.tag);
            v["key"] = json!(i.key);
            v["text"] = json!(i.text);
            v
        })
        .collect();
    let failures: Vec<Value> = results
        .failures
        .iter()
        .map(|f| {
            let mut v = tag_json(&f.tag);
            v["reason"] = json!(f.reason);
            v
        })
        .collect();
    let peers: Vec<Value> = settings
        .peers
        .iter()
        .map(|(k, _)| {
            let (state, detail) = peer_outcome(results, settings, *k);
            let missing: Vec<Value> = missing_peer_figures(results, settings, *k)
                .into_iter()
                .map(|(p, c, m)| json!({ "phase": p, "case": c, "metric": m }))
                .collect();
            json!({
                "peer": k.name(), "env": k.env_var(), "state": state, "detail": detail,
                "missing_figures": missing,
            })
        })
        .collect();
    let missing: Vec<Value> = expected
        .iter()
        .filter(|k| !results.summaries.contains_key(*k))
        .map(|(p, c, m)| json!({ "phase": p, "case": c, "metric": m }))
        .collect();
    let expected_json: Vec<Value> = expected
        .iter()
        .map(|(p, c, m)| json!({ "phase": p, "case": c, "metric": m, "may_be_zero": may_be_zero(&(p.clone(), c.clone(), m.clone())) }))
        .collect();
    json!({
        "machine": machine,
        "settings": {
            "runs": settings.runs,
            "memmap_runs": settings.memmap_runs,
            "quick": settings.quick,
            "phases": settings.phases.iter().map(|p| p.name()).collect::<Vec<_>>(),
            "guest_ram_bytes": settings.guest_ram,
            "boot_devices": settings.boot_devices,
            "boot_pmem_size": settings.boot_pmem_size,
            "startup_sizes": settings.startup_sizes,
            "memmap_sizes": settings.memmap_sizes,
            "memmap_policies": settings.memmap_policies,
            "memmap_guest_ram_bytes": settings.memmap_guest_ram,
            "bandwidth_device_size": settings.bw_device,
            "bandwidth_bytes": settings.bw_bytes,
            "bandwidth_chunk": settings.bw_chunk,
            "bandwidth_passes": settings.bw_passes,
            "bandwidth_guest_ram_bytes": settings.bw_guest_ram,
            "settle_ms": settings.settle_ms,
        },
        "peers": peers,
        "summaries": summaries,
        "samples": samples,
        "infos": infos,
        "failures": failures,
        "expected": expected_json,
        "missing_figures": missing,
    })
}

/// Peer names, for the plot and the table.
pub fn peer_names() -> Vec<&'static str> {
    PeerKind::ALL.iter().map(|k| k.name()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lines::parse;

    fn results(text: &str) -> Results {
        let p = parse(text);
        let mut r = Results {
            samples: p.samples,
            infos: p.infos,
            failures: p.failures,
            ..Default::default()
        };
        r.finish();
        r
    }

    #[test]
    fn derived_figures() {
        let r = results(
            "@@BENCH memmap.ram-4G.1 ram_cost_kib 65536@@\n\
             @@BENCH memmap.ram-4G.1 formula_ram_cost_bytes 67108864@@\n\
             @@BENCH boot.vmm-1.1 launch_ms 1000@@\n\
             @@BENCH boot.qemu-1.1 launch_ms 1500@@\n\
             @@BENCH boot.firecracker-1.1 launch_ms 1200@@\n\
             @@BENCH boot.vmm-1.1 dmesg_init_ms 700@@\n\
             @@BENCH startup.vmm-1G.1 startup_ms 100@@\n\
             @@BENCH startup.vmm-1T.1 startup_ms 105@@\n\
             @@BENCH bandwidth.guest-devdax.1 read_mib_s 900@@\n\
             @@BENCH bandwidth.host-devdax.1 read_mib_s 1000@@\n\
             @@BENCH bandwidth.guest-ram.1 read_mib_s 1125@@\n",
        );
        let get = |p: &str, c: &str, m: &str| r.summaries[&key(p, c, m)].median;
        assert_eq!(get("memmap", "ram-4G", "ram_cost_kib_per_gib"), 16384.0);
        assert_eq!(
            get("memmap", "ram-4G", "formula_ram_cost_kib_per_gib"),
            16384.0
        );
        assert_eq!(get("boot", "qemu-1", "launch_vs_vmm_ratio"), 1.5);
        assert_eq!(get("boot", "vmm-1", "before_kernel_ms"), 300.0);
        assert_eq!(get("boot", "vmm-1", "launch_vs_fastest_peer_ratio"), 0.833);
        assert_eq!(get("startup", "1T-vs-1G", "startup_growth_pct"), 5.0);
        assert_eq!(get("bandwidth", "guest-devdax", "read_vs_host_ratio"), 0.9);
        assert_eq!(
            get("bandwidth", "guest-devdax", "read_vs_guest_ram_ratio"),
            0.8
        );
    }

    /// One more guest's cost from the smallest to the largest count, against its budget.
    #[test]
    fn density_figures() {
        let r = results(
            "@@BENCH density.vmm-shared-1.1 host_total_kib 100000@@\n\
             @@BENCH density.vmm-shared-8.1 host_total_kib 310000@@\n\
             @@BENCH density.vmm-shared-8.1 guest_ram_kib 240000@@\n\
             @@BENCH density.vmm-shared-8.1 monitor_rss_per_guest_kib 4000@@\n\
             @@BENCH density.vmm-copies-1.1 host_total_kib 100000@@\n",
        );
        let get = |c: &str, m: &str| r.summaries.get(&key("density", c, m)).map(|s| s.median);
        assert_eq!(get("vmm-shared", "extra_guest_host_kib"), Some(30000.0));
        assert_eq!(get("vmm-shared", "extra_guest_budget_kib"), Some(34000.0));
        assert_eq!(
            get("vmm-shared", "extra_guest_over_budget_kib"),
            Some(-4000.0)
        );
        // One guest count: nothing to derive.
        assert_eq!(get("vmm-copies", "extra_guest_host_kib"), None);
        let mut s = Settings::quick();
        s.phases = vec![crate::settings::Phase::Density];
        s.peers = vec![(PeerKind::CloudHypervisor, PeerState::Ready("/ch".into()))];
        let ours = expected_figures(&s);
        assert_eq!(ours.len(), 2 * DENSITY_FIGURES.len());
        assert!(ours.contains(&key("density", "vmm-copies-2", "image_pfn_shared_kib")));
        let peer = expected_peer_figures(&s);
        assert_eq!(peer.len(), DENSITY_FIGURES.len());
        assert!(peer.contains(&(
            PeerKind::CloudHypervisor,
            key("density", "cloud-hypervisor-shared-2", "host_total_kib")
        )));
        // Without its figures the peer is FAILED, with the density failure as the reason.
        let failed = results(
            "@@BENCH-FAIL density.cloud-hypervisor-shared-2.1 copy 1 of ch ended (exit 1)@@\n",
        );
        let (state, detail) = peer_outcome(&failed, &s, PeerKind::CloudHypervisor);
        assert_eq!(state, "failed");
        assert!(detail.contains("copy 1 of ch ended"), "{detail}");
    }

    #[test]
    fn expected_and_table() {
        let mut s = Settings::quick();
        s.peers = vec![
            (
                PeerKind::Firecracker,
                PeerState::Missing("/x: No such file".into()),
            ),
            (PeerKind::Qemu, PeerState::NotGiven),
        ];
        let exp = expected_figures(&s);
        assert!(exp.contains(&key("boot", "vmm-8", "rss_kib")));
        assert!(exp.contains(&key("memmap", "none-256M", "ram_cost_kib_per_gib")));
        assert!(may_be_zero(&key("memmap", "none-64M", "ram_cost_kib")));
        assert!(!may_be_zero(&key("memmap", "ram-64M", "ram_cost_kib")));
        assert!(may_be_zero(&key("boot", "vmm-api-0", "idle_wakeups")));
        assert!(!may_be_zero(&key("boot", "vmm-api-0", "rss_kib")));
        let r = results(
            "@@BENCH boot.vmm-0.1 launch_ms 812.5@@\n@@BENCH-FAIL boot.vmm-1.1 no init@@\n",
        );
        let t = table(&r, &s, &exp);
        assert!(t.contains("launch_ms"), "{t}");
        assert!(t.contains("missing: /x: No such file"), "{t}");
        assert!(t.contains("not measured (set PMEMVMM_BENCH_QEMU)"), "{t}");
        assert!(t.contains("FAILED boot.vmm-1 (run 1): no init"), "{t}");
        assert!(t.contains("MISSING FIGURES"), "{t}");
        let j = to_json(&r, &s, json!({}), &exp);
        assert_eq!(j["samples"][0]["value"], 812.5);
        assert_eq!(j["peers"][0]["state"], "missing");
        assert!(!j["missing_figures"].as_array().unwrap().is_empty());
    }

    /// A peer that was ready but has no figures is a FAILED line and `failed` in the JSON, with
    /// its failure's reason; one with every figure is `measured`.
    #[test]
    fn failed_peer_is_visible() {
        let mut s = Settings::quick();
        s.phases = vec![crate::settings::Phase::Boot];
        s.peers = vec![
            (
                PeerKind::CloudHypervisor,
                PeerState::Ready("/p/cloud-hypervisor".into()),
            ),
            (
                PeerKind::Firecracker,
                PeerState::Ready("/p/firecracker".into()),
            ),
        ];
        let mut text =
            String::from("@@BENCH-FAIL boot.cloud-hypervisor-0.1 the guest command exited 1@@\n");
        for n in &s.boot_devices {
            text.push_str(&format!(
                "@@BENCH boot.firecracker-{n}.1 launch_ms 900@@\n\
                 @@BENCH boot.firecracker-{n}.1 rss_kib 4000@@\n"
            ));
        }
        let r = results(&text);
        let exp = expected_figures(&s);
        assert_eq!(
            expected_peer_figures(&s).len(),
            2 * 2 * s.boot_devices.len()
        );
        let t = table(&r, &s, &exp);
        assert!(
            t.contains(
                "peer cloud-hypervisor  FAILED: /p/cloud-hypervisor: 6 of 6 figures missing"
            ),
            "{t}"
        );
        assert!(t.contains("the guest command exited 1"), "{t}");
        assert!(t.contains("peer firecracker       /p/firecracker"), "{t}");
        let j = to_json(&r, &s, json!({}), &exp);
        assert_eq!(j["peers"][0]["state"], "failed");
        assert_eq!(
            j["peers"][0]["missing_figures"].as_array().unwrap().len(),
            6
        );
        assert_eq!(j["peers"][1]["state"], "measured");
    }

    #[test]
    fn units() {
        assert_eq!(unit("launch_ms"), "ms");
        assert_eq!(unit("ram_cost_kib_per_gib"), "KiB/GiB");
        assert_eq!(unit("rss_kib"), "KiB");
        assert_eq!(unit("read_mib_s"), "MiB/s");
        assert_eq!(unit("read_vs_host_ratio"), "x");
        assert_eq!(memmap_case_size("pmem-64G"), Some(64 * GIB));
    }
}
