//! The run's headline figures as Markdown tables (`summary.md`): the monitors side by side with
//! our ratio to the faster peer, then the density table. It is what the repository README's
//! performance section shows, so that table comes from one run and one command instead of
//! being copied figure by figure. Medians throughout; a figure the run lacks is `-`.

use std::fmt::Write as _;

use crate::report::Results;
use crate::scripts::{DensityCase, API_CASE, BZIMAGE_CASE};
use crate::settings::{size_label, PeerKind, Phase, Settings};

/// The peers of the side-by-side columns, in column order.
const PEERS: [PeerKind; 2] = [PeerKind::CloudHypervisor, PeerKind::Firecracker];

/// One figure per item, joined with " / " (`-` where the run lacks it).
fn joined(values: &[Option<f64>], fmt: impl Fn(f64) -> String) -> String {
    if values.iter().all(Option::is_none) {
        return String::new();
    }
    values
        .iter()
        .map(|v| v.map_or_else(|| "-".to_string(), &fmt))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// `0 / 1 / 8`.
fn slashed(counts: &[usize]) -> String {
    counts
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(" / ")
}

/// [`joined`] whole numbers with a unit after the last, or nothing when the run has none.
fn with_unit(values: &[Option<f64>], unit: &str) -> String {
    let j = joined(values, whole);
    if j.is_empty() {
        j
    } else {
        format!("{j} {unit}")
    }
}

fn whole(v: f64) -> String {
    format!("{v:.0}")
}

/// [`joined`], or `-` when the run has none of the figures.
fn joined_or_dash(values: &[Option<f64>], fmt: impl Fn(f64) -> String) -> String {
    let j = joined(values, fmt);
    if j.is_empty() {
        "-".into()
    } else {
        j
    }
}

fn two(v: f64) -> String {
    format!("{v:.2}")
}

/// `a / b` for each pair where both exist.
fn ratios(a: &[Option<f64>], b: &[Option<f64>]) -> Vec<Option<f64>> {
    a.iter()
        .zip(b)
        .map(|(a, b)| match (a, b) {
            (Some(a), Some(b)) if *b > 0.0 => Some(a / b),
            _ => None,
        })
        .collect()
}

/// The Markdown summary of a finished run.
pub fn markdown(results: &Results, s: &Settings, heading: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{heading}\n");
    let _ = writeln!(
        out,
        "| figure | vmm | {} | vmm / faster peer |",
        PEERS.map(PeerKind::name).join(" | ")
    );
    let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
    let mut row = |figure: String, ours: String, peers: [String; 2], ratio: String| {
        let _ = writeln!(
            out,
            "| {figure} | {ours} | {} | {} | {ratio} |",
            peers[0], peers[1]
        );
    };
    let m = |phase: &str, case: &str, metric: &str| results.median(phase, case, metric);

    if s.has(Phase::Boot) {
        let counts = slashed(&s.boot_devices);
        let per_count = |case: &str, metric: &str| -> Vec<Option<f64>> {
            s.boot_devices
                .iter()
                .map(|n| m("boot", &format!("{case}-{n}"), metric))
                .collect()
        };
        let boot_row = |metric: &str| -> (Vec<Option<f64>>, [Vec<Option<f64>>; 2]) {
            (
                per_count("vmm", metric),
                PEERS.map(|p| per_count(p.name(), metric)),
            )
        };
        let ms = |v: &[Option<f64>]| with_unit(v, "ms");
        let kib = |v: &[Option<f64>]| with_unit(v, "KiB");

        let (ours, peers) = boot_row("launch_ms");
        row(
            format!("launch to guest init, {counts} devices (PVH vmlinux for all)"),
            ms(&ours),
            [ms(&peers[0]), ms(&peers[1])],
            joined(&per_count("vmm", "launch_vs_fastest_peer_ratio"), two),
        );
        row(
            "the same, ours booting the bzImage".into(),
            ms(&per_count(BZIMAGE_CASE, "launch_ms")),
            [String::new(), String::new()],
            String::new(),
        );
        for (metric, what) in [
            (
                "dmesg_init_ms",
                "of which the guest kernel's clock to `Run /init`",
            ),
            (
                "before_kernel_ms",
                "and the rest: exec to the kernel's clock, `Run /init` to init's line",
            ),
        ] {
            let (ours, peers) = boot_row(metric);
            row(
                what.into(),
                ms(&ours),
                [ms(&peers[0]), ms(&peers[1])],
                String::new(),
            );
        }
        let (ours, peers) = boot_row("rss_kib");
        let firecracker = &peers[1];
        let vs_fc = joined(&ratios(&ours, firecracker), two);
        row(
            format!("monitor resident memory without guest RAM and pmem, {counts} devices"),
            kib(&ours),
            [kib(&peers[0]), kib(firecracker)],
            if vs_fc.is_empty() {
                vs_fc
            } else {
                format!("{vs_fc} (Firecracker's)")
            },
        );
        let api = [
            m("boot", API_CASE, "rss_kib"),
            m("boot", API_CASE, "idle_wakeups"),
        ];
        if api.iter().any(Option::is_some) {
            row(
                "the same with `--api-socket`, 0 devices; the API thread's wake-ups in 5 s idle"
                    .into(),
                format!(
                    "{} KiB; {}",
                    api[0].map_or("-".into(), whole),
                    api[1].map_or("-".into(), whole)
                ),
                [String::new(), String::new()],
                match (api[0], m("boot", "firecracker-0", "rss_kib")) {
                    (Some(ours), Some(fc)) if fc > 0.0 => {
                        format!("{} (Firecracker's, 0 devices)", two(ours / fc))
                    }
                    _ => String::new(),
                },
            );
        }
    }

    if s.has(Phase::Startup) {
        let sizes = s
            .startup_sizes
            .iter()
            .map(|b| size_label(*b))
            .collect::<Vec<_>>();
        let per_size = |metric: &str| -> Vec<Option<f64>> {
            sizes
                .iter()
                .map(|l| m("startup", &format!("vmm-{l}"), metric))
                .collect()
        };
        let growth = |v: &[Option<f64>]| match (v.first(), v.last()) {
            (Some(Some(a)), Some(Some(b))) if v.len() > 1 && *a > 0.0 => {
                format!(" ({:+.1} %)", (b / a - 1.0) * 100.0)
            }
            _ => String::new(),
        };
        let label = sizes.join(" / ");
        for (metric, what) in [
            ("startup_ms", "monitor start-up (exec to first KVM_RUN)"),
            ("launch_ms", "launch to guest init"),
        ] {
            let v = per_size(metric);
            row(
                format!("{what}, one raw device of {label} (sparse)"),
                format!("{} ms{}", joined(&v, whole), growth(&v)),
                [String::new(), String::new()],
                String::new(),
            );
        }
    }

    if s.has(Phase::Memmap) {
        let range = |policy: &str| -> Option<(f64, f64)> {
            let v: Vec<f64> = s
                .memmap_sizes
                .iter()
                .filter_map(|b| {
                    m(
                        "memmap",
                        &format!("{policy}-{}", size_label(*b)),
                        "ram_cost_kib_per_gib",
                    )
                })
                .collect();
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (!v.is_empty()).then_some((lo, hi))
        };
        let shown = |r: Option<(f64, f64)>| {
            r.map_or("-".to_string(), |(lo, hi)| {
                if (hi - lo).abs() < 0.05 {
                    format!("{lo:.1}")
                } else {
                    format!("{lo:.1}-{hi:.1}")
                }
            })
        };
        let sizes = s
            .memmap_sizes
            .iter()
            .map(|b| size_label(*b))
            .collect::<Vec<_>>();
        row(
            format!(
                "guest RAM per GiB of pmem, `memmap=ram` / `pmem` ({})",
                sizes.join(", ")
            ),
            format!("{} / {} KiB", shown(range("ram")), shown(range("pmem"))),
            [String::new(), String::new()],
            String::new(),
        );
    }

    if s.has(Phase::Bandwidth) {
        for kind in ["devdax", "fsdax"] {
            let case = format!("guest-{kind}");
            let v = [
                m("bandwidth", &case, "read_vs_host_ratio"),
                m("bandwidth", &case, "write_vs_host_ratio"),
            ];
            row(
                format!("DAX bandwidth guest / host, {kind} read / write"),
                joined_or_dash(&v, two),
                [String::new(), String::new()],
                String::new(),
            );
        }
        let ram = |metric: &str| {
            let guest = m("bandwidth", "guest-ram", metric);
            let host = m("bandwidth", "host-devdax", metric);
            guest
                .zip(host)
                .filter(|(_, h)| *h > 0.0)
                .map(|(g, h)| g / h)
        };
        let vs_ram = |kind: &str| {
            let case = format!("guest-{kind}");
            joined_or_dash(
                &[
                    m("bandwidth", &case, "read_vs_guest_ram_ratio"),
                    m("bandwidth", &case, "write_vs_guest_ram_ratio"),
                ],
                two,
            )
        };
        row(
            "the same copies in guest RAM / the host's, read / write; devdax / fsdax against guest RAM"
                .into(),
            format!(
                "{}; {} / {}",
                joined_or_dash(&[ram("read_mib_s"), ram("write_mib_s")], two),
                vs_ram("devdax"),
                vs_ram("fsdax")
            ),
            [String::new(), String::new()],
            String::new(),
        );
        let huge = |kind: &str| {
            let case = format!("guest-{kind}");
            let pct = m("bandwidth", &case, "stage2_huge_pct");
            let mapped = m("bandwidth", &case, "stage2_mapped_kib");
            match (pct, mapped) {
                (Some(p), Some(k)) => format!("{p:.0} % of {:.0} MiB", k / 1024.0),
                _ => "-".into(),
            }
        };
        row(
            "stage-2 leaves of 2 MiB or more among those KVM added for the copies, devdax / fsdax"
                .into(),
            format!("{} / {}", huge("devdax"), huge("fsdax")),
            [String::new(), String::new()],
            String::new(),
        );
    }

    if s.has(Phase::Density) {
        let cases = [
            DensityCase::VmmShared,
            DensityCase::CloudHypervisorShared,
            DensityCase::VmmCopies,
        ];
        let counts = slashed(&s.density_guests);
        let _ = writeln!(
            out,
            "\n| density, one read-only root image | {} |",
            cases.map(DensityCase::name).join(" | ")
        );
        let _ = writeln!(out, "| --- | --- | --- | --- |");
        let per_n = |case: DensityCase, metric: &str, scale: f64| -> String {
            let v: Vec<Option<f64>> = s
                .density_guests
                .iter()
                .map(|n| m("density", &format!("{}-{n}", case.name()), metric).map(|x| x / scale))
                .collect();
            joined(&v, |x| format!("{x:.1}"))
        };
        let mut density_row = |what: String, cells: [String; 3]| {
            let _ = writeln!(out, "| {what} | {} |", cells.join(" | "));
        };
        density_row(
            format!("host memory per guest, N = {counts} (MiB)"),
            cases.map(|c| per_n(c, "host_total_per_guest_kib", 1024.0)),
        );
        density_row(
            format!("monitor RSS per guest without guest RAM and image, N = {counts} (KiB)"),
            cases.map(|c| per_n(c, "monitor_rss_per_guest_kib", 1.0)),
        );
        let last = s.density_guests.iter().max().copied();
        if let Some(n) = last {
            density_row(
                format!("image page cache / distinct image frames the monitors map, N = {n} (KiB)"),
                cases.map(|c| {
                    let case = format!("{}-{n}", c.name());
                    joined(
                        &[
                            m("density", &case, "image_cache_kib"),
                            m("density", &case, "image_distinct_kib"),
                        ],
                        whole,
                    )
                }),
            );
        }
        density_row(
            "one more guest adds / its own RAM + monitor RSS (KiB)".into(),
            cases.map(|c| {
                joined(
                    &[
                        m("density", c.name(), "extra_guest_host_kib"),
                        m("density", c.name(), "extra_guest_budget_kib"),
                    ],
                    whole,
                )
            }),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lines::{Sample, Tag};

    fn sample(phase: &str, case: &str, metric: &str, value: f64) -> Sample {
        Sample {
            tag: Tag {
                phase: phase.into(),
                case: case.into(),
                run: 1,
            },
            metric: metric.into(),
            value,
        }
    }

    /// The boot rows put each monitor in its column, our ratio to the faster peer in the last,
    /// and a figure the run lacks as `-`.
    #[test]
    fn boot_rows_side_by_side() {
        let mut s = Settings::standard(1);
        s.phases = vec![Phase::Boot];
        s.boot_devices = vec![0, 1];
        let mut r = Results::default();
        for (case, launch, rss) in [
            ("vmm-0", 1000.0, 2000.0),
            ("vmm-1", 1500.0, 2100.0),
            ("firecracker-0", 2000.0, 4000.0),
            ("firecracker-1", 3000.0, 4200.0),
            ("cloud-hypervisor-0", 4000.0, 6000.0),
        ] {
            r.samples.push(sample("boot", case, "launch_ms", launch));
            r.samples.push(sample("boot", case, "rss_kib", rss));
        }
        r.samples.push(sample("boot", API_CASE, "rss_kib", 3000.0));
        r.finish();
        let md = markdown(&r, &s, "# run");
        assert!(
            md.contains("| 3000 KiB; - |  |  | 0.75 (Firecracker's, 0 devices) |"),
            "{md}"
        );
        let launch = md
            .lines()
            .find(|l| l.starts_with("| launch to guest init, 0 / 1 devices"))
            .unwrap();
        assert_eq!(
            launch,
            "| launch to guest init, 0 / 1 devices (PVH vmlinux for all) | 1000 / 1500 ms \
             | 4000 / - ms | 2000 / 3000 ms | 0.50 / 0.50 |"
        );
        let rss = md
            .lines()
            .find(|l| l.starts_with("| monitor resident memory"))
            .unwrap();
        assert!(rss.ends_with("| 0.50 / 0.50 (Firecracker's) |"), "{rss}");
        assert!(!md.contains("density"), "{md}");
    }

    /// The density table: MiB per guest per case and guest count, and one more guest's cost
    /// against its budget.
    #[test]
    fn density_table() {
        let mut s = Settings::standard(1);
        s.phases = vec![Phase::Density];
        s.density_guests = vec![1, 4];
        let mut r = Results::default();
        for (case, n, total, ram, rss) in [
            ("vmm-shared", 1, 100.0 * 1024.0, 30000.0, 2000.0),
            ("vmm-shared", 4, 4.0 * 50.0 * 1024.0, 120000.0, 2000.0),
        ] {
            let c = format!("{case}-{n}");
            r.samples
                .push(sample("density", &c, "host_total_kib", total));
            r.samples.push(sample(
                "density",
                &c,
                "host_total_per_guest_kib",
                total / n as f64,
            ));
            r.samples.push(sample("density", &c, "guest_ram_kib", ram));
            r.samples
                .push(sample("density", &c, "monitor_rss_per_guest_kib", rss));
        }
        r.finish();
        let md = markdown(&r, &s, "# run");
        assert!(
            md.contains("| host memory per guest, N = 1 / 4 (MiB) | 100.0 / 50.0 |  |  |"),
            "{md}"
        );
        // (204800 - 102400) / 3 = 34133; budget 120000 / 4 + 2000 = 32000.
        assert!(
            md.contains(
                "| one more guest adds / its own RAM + monitor RSS (KiB) | 34133 / 32000 |"
            ),
            "{md}"
        );
    }
}
