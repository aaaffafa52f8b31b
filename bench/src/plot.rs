//! `plot.png`: launch to guest init, grouped by device count with the monitors side by side
//! (median bars, min-max whiskers, one colour per monitor and a legend), and guest RAM per GiB
//! of pmem against pmem size for each memmap policy (measured: lines and dots; the vmm's
//! formula: crosses). A panel whose phase was not run, or gave no figures, says so.
//!
//! Text is drawn with `ab_glyph` from DejaVu Sans embedded by the `dejavu` crate, so the plot
//! needs no fontconfig, freetype or installed fonts.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::report::{memmap_case_size, Results};
use crate::settings::GIB;

const FONT: &str = "sans-serif";

fn register_font() -> Result<(), String> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| "the embedded DejaVu Sans font did not load".to_string());
    });
    result
}

/// A bar of the boot panel.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// Case name (`vmm-8`).
    pub label: String,
    /// Median, min, max in ms.
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

/// One policy's line of the memmap panel.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Policy name.
    pub policy: String,
    /// `(size in GiB, measured KiB per GiB)`.
    pub measured: Vec<(f64, f64)>,
    /// `(size in GiB, formula KiB per GiB)`.
    pub formula: Vec<(f64, f64)>,
}

/// The monitors of the boot panel, in their order within a group, with their colours: ours
/// (vmlinux), ours (bzImage), ours with the API, then the peers.
const MONITORS: [(&str, RGBColor); 9] = [
    ("vmm", RGBColor(31, 119, 180)),
    ("vmm-bzimage", RGBColor(120, 170, 215)),
    ("vmm-api", RGBColor(23, 190, 207)),
    ("cloud-hypervisor", RGBColor(214, 39, 40)),
    ("firecracker", RGBColor(230, 120, 20)),
    ("qemu", RGBColor(127, 127, 127)),
    // The density panel's cases.
    ("vmm-shared", RGBColor(31, 119, 180)),
    ("cloud-hypervisor-shared", RGBColor(214, 39, 40)),
    ("vmm-copies", RGBColor(148, 103, 189)),
];

/// A boot case's monitor and device count: `vmm-bzimage-8` is `("vmm-bzimage", 8)`.
pub fn split_case(case: &str) -> Option<(&str, usize)> {
    let (monitor, n) = case.rsplit_once('-')?;
    Some((monitor, n.parse().ok()?))
}

/// The bars of the boot panel, by device count, then monitor (in [`MONITORS`] order).
pub fn boot_bars(r: &Results) -> Vec<Bar> {
    bars_of(r, "boot", "launch_ms", 1.0)
}

/// The bars of the density panel: the host memory each guest cost (the fall of the host's free
/// memory during the launch plus the image files' page cache, over the guest count), in MiB, by
/// guest count, then case.
pub fn density_bars(r: &Results) -> Vec<Bar> {
    bars_of(r, "density", "host_total_per_guest_kib", 1024.0)
}

/// One bar per case of `phase` with `metric` (divided by `scale`), grouped by the count at the
/// end of the case name, then in [`MONITORS`] order.
fn bars_of(r: &Results, phase: &str, metric: &str, scale: f64) -> Vec<Bar> {
    let mut bars: Vec<Bar> = r
        .summaries
        .iter()
        .filter(|((p, _, m), _)| p == phase && m == metric)
        .filter(|((_, c, _), _)| split_case(c).is_some())
        .map(|((_, c, _), s)| Bar {
            label: c.clone(),
            median: s.median / scale,
            min: s.min / scale,
            max: s.max / scale,
        })
        .collect();
    bars.sort_by_key(|b| {
        let (monitor, n) = split_case(&b.label).unwrap_or((&b.label, usize::MAX));
        let rank = MONITORS
            .iter()
            .position(|(m, _)| *m == monitor)
            .unwrap_or(MONITORS.len());
        (n, rank, b.label.clone())
    });
    bars
}

/// Bars at their x positions, and each device-count group as `(device count, x of its
/// centre)`.
pub type Placed<'a> = (Vec<(f64, &'a Bar)>, Vec<(usize, f64)>);

/// Where each bar goes: `(x of the bar, bar)` with a gap between device-count groups, and the
/// groups' centres.
pub fn bar_positions(bars: &[Bar]) -> Placed<'_> {
    let mut placed = Vec::new();
    let mut groups: Vec<(usize, f64)> = Vec::new();
    let mut x = 0.0;
    let mut group: Option<(usize, f64)> = None;
    for b in bars {
        let n = split_case(&b.label).map_or(usize::MAX, |(_, n)| n);
        match group {
            Some((g, _)) if g == n => {}
            Some((g, start)) => {
                groups.push((g, (start + x - 1.0) / 2.0));
                x += 1.0;
                group = Some((n, x));
            }
            None => group = Some((n, x)),
        }
        placed.push((x, b));
        x += 1.0;
    }
    if let Some((g, start)) = group {
        groups.push((g, (start + x - 1.0) / 2.0));
    }
    (placed, groups)
}

/// What a panel shows.
#[derive(Debug, Clone, PartialEq)]
pub enum Panel<T> {
    /// Its phase was not part of the run.
    NotRun,
    /// Its phase ran; the figures (possibly none: it failed).
    Ran(T),
}

/// The lines of the memmap panel.
pub fn memmap_lines(r: &Results, policies: &[String]) -> Vec<Line> {
    policies
        .iter()
        .map(|policy| {
            let points = |metric: &str| {
                let mut v: Vec<(f64, f64)> = r
                    .summaries
                    .iter()
                    .filter(|((p, c, m), _)| {
                        p == "memmap" && m == metric && c.starts_with(&format!("{policy}-"))
                    })
                    .filter_map(|((_, c, _), s)| {
                        Some((memmap_case_size(c)? as f64 / GIB as f64, s.median))
                    })
                    .collect();
                v.sort_by(|a, b| a.0.total_cmp(&b.0));
                v
            };
            Line {
                policy: policy.clone(),
                measured: points("ram_cost_kib_per_gib"),
                formula: points("formula_ram_cost_kib_per_gib"),
            }
        })
        .collect()
}

fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("drawing the plot: {e:?}")
}

/// How a bar panel is labelled.
struct BarStyle {
    title: &'static str,
    unit: &'static str,
    /// The label of a group from its count.
    group: fn(usize) -> String,
}

const BOOT_STYLE: BarStyle = BarStyle {
    title: BOOT_TITLE,
    unit: "ms",
    group: |n| match n {
        1 => "1 device".to_string(),
        n => format!("{n} devices"),
    },
};

const DENSITY_STYLE: BarStyle = BarStyle {
    title: DENSITY_TITLE,
    unit: "MiB",
    group: |n| match n {
        1 => "1 guest".to_string(),
        n => format!("{n} guests at once"),
    },
};

/// Writes the PNG: the boot and memmap panels side by side, the density panel below.
pub fn draw(
    path: &Path,
    bars: &Panel<Vec<Bar>>,
    lines: &Panel<Vec<Line>>,
    density: &Panel<Vec<Bar>>,
    subtitle: &str,
) -> Result<(), String> {
    register_font()?;
    let root = BitMapBackend::new(path, (1800, 1250)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root
        .titled(subtitle, (FONT, 16).into_font().color(&BLACK.mix(0.7)))
        .map_err(err)?;
    let (top, bottom) = root.split_vertically(680);
    let (left, right) = top.split_horizontally(1020);
    bar_panel(&bottom, density, &DENSITY_STYLE, "density", "host-memory")?;
    bar_panel(&left, bars, &BOOT_STYLE, "boot", "launch")?;
    match lines {
        Panel::Ran(l)
            if l.iter()
                .any(|l| !l.measured.is_empty() || !l.formula.is_empty()) =>
        {
            draw_lines(&right, l)?
        }
        Panel::Ran(_) => say(
            &right,
            MEMMAP_TITLE,
            "the memmap phase ran but gave no RAM-cost figures (see memmap.log)",
        )?,
        Panel::NotRun => say(&right, MEMMAP_TITLE, "memmap phase not run (see --only)")?,
    }
    root.present().map_err(err)?;
    Ok(())
}

const BOOT_TITLE: &str = "Launch to guest init (median; whiskers: min-max)";
const MEMMAP_TITLE: &str = "Guest RAM per GiB of pmem (dots: measured, x: formula)";
const DENSITY_TITLE: &str =
    "Host memory per guest, read-only DAX root image (free-memory fall + image page cache) / guests";

/// A panel without axes: its title and why there is nothing to draw.
/// A bar panel for `phase`: its bars, or why there are none (`figures`: what it measures).
fn bar_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel<Vec<Bar>>,
    style: &BarStyle,
    phase: &str,
    figures: &str,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    match panel {
        Panel::Ran(b) if !b.is_empty() => draw_bars(area, b, style),
        Panel::Ran(_) => say(
            area,
            style.title,
            &format!("the {phase} phase ran but gave no {figures} figures (see {phase}.log)"),
        ),
        Panel::NotRun => say(
            area,
            style.title,
            &format!("{phase} phase not run (see --only)"),
        ),
    }
}

fn say<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    text: &str,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let (w, h) = area.dim_in_pixel();
    let area = area.titled(title, (FONT, 20)).map_err(err)?;
    area.draw(&Text::new(
        text.to_string(),
        (40, (h / 2) as i32 - 40),
        (FONT, 18).into_font().color(&BLACK.mix(0.75)),
    ))
    .map_err(err)?;
    let _ = w;
    Ok(())
}

fn draw_bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    bars: &[Bar],
    style: &BarStyle,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let (placed, groups) = bar_positions(bars);
    let last = placed.last().map_or(0.0, |(x, _)| *x);
    let top = bars.iter().map(|b| b.max).fold(1.0, f64::max) * 1.3;
    let mut chart = ChartBuilder::on(area)
        .caption(style.title, (FONT, 20))
        .margin(15)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.7f64..(last + 0.7), 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(style.unit)
        .label_style((FONT, 14))
        .draw()
        .map_err(err)?;
    let color = |b: &Bar| {
        let monitor = split_case(&b.label).map_or(b.label.as_str(), |(m, _)| m);
        MONITORS
            .iter()
            .find(|(m, _)| *m == monitor)
            .map_or(BLACK, |(_, c)| *c)
    };
    // One legend entry per monitor present, drawn with its first bar.
    let mut in_legend: Vec<String> = Vec::new();
    for (x, b) in &placed {
        let c = color(b);
        let series = chart
            .draw_series(std::iter::once(Rectangle::new(
                [(x - 0.4, 0.0), (x + 0.4, b.median)],
                c.mix(0.8).filled(),
            )))
            .map_err(err)?;
        let monitor = split_case(&b.label).map_or(b.label.clone(), |(m, _)| m.to_string());
        if !in_legend.contains(&monitor) {
            series.label(monitor.clone()).legend(move |(lx, ly)| {
                Rectangle::new([(lx, ly - 6), (lx + 16, ly + 6)], c.mix(0.8).filled())
            });
            in_legend.push(monitor);
        }
    }
    chart
        .draw_series(
            placed.iter().map(|(x, b)| {
                PathElement::new(vec![(*x, b.min), (*x, b.max)], BLACK.stroke_width(2))
            }),
        )
        .map_err(err)?;
    // The median above each whisker, centred on its bar (bars are wide enough for 5 digits).
    let label_style =
        (FONT, 12)
            .into_font()
            .color(&BLACK)
            .pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Center,
                plotters::style::text_anchor::VPos::Bottom,
            ));
    chart
        .draw_series(placed.iter().map(|(x, b)| {
            Text::new(
                format!("{:.0}", b.median),
                (*x, b.max.max(b.median) + top * 0.01),
                label_style.clone(),
            )
        }))
        .map_err(err)?;
    // The group labels under the axis.
    let group_style =
        (FONT, 15)
            .into_font()
            .color(&BLACK)
            .pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Center,
                plotters::style::text_anchor::VPos::Top,
            ));
    let base = area.get_base_pixel();
    for (n, x) in &groups {
        let (px, py) = chart.backend_coord(&(*x, 0.0));
        let text = (style.group)(*n);
        area.draw(&Text::new(
            text,
            (px - base.0, py - base.1 + 8),
            group_style.clone(),
        ))
        .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 14))
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()
        .map_err(err)?;
    Ok(())
}

fn draw_lines<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    lines: &[Line],
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let xs: Vec<f64> = lines
        .iter()
        .flat_map(|l| l.measured.iter().chain(&l.formula).map(|p| p.0))
        .filter(|x| *x > 0.0)
        .collect();
    let ys: Vec<f64> = lines
        .iter()
        .flat_map(|l| l.measured.iter().chain(&l.formula).map(|p| p.1))
        .collect();
    let xmin = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let xmax = xs.iter().copied().fold(0.0, f64::max);
    let (xmin, xmax) = if xs.is_empty() {
        (0.5, 128.0)
    } else {
        (xmin / 1.6, xmax * 1.6)
    };
    // Headroom above the highest line for the legend.
    let ymax = ys.iter().copied().fold(1.0, f64::max) * 1.4;
    let ymin = ys.iter().copied().fold(0.0, f64::min);
    let ymin = if ymin < 0.0 {
        ymin * 1.15 - ymax * 0.02
    } else {
        0.0
    };
    let mut chart = ChartBuilder::on(area)
        .caption(MEMMAP_TITLE, (FONT, 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d((xmin..xmax).log_scale(), ymin..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("pmem size (GiB, log scale)")
        .y_desc("KiB of guest RAM per GiB")
        .x_label_formatter(&|x| {
            if *x >= 1.0 {
                format!("{x:.0}")
            } else {
                format!("{x:.3}")
            }
        })
        .label_style((FONT, 14))
        .draw()
        .map_err(err)?;
    let palette = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    for (i, line) in lines.iter().enumerate() {
        let c = palette[i % palette.len()];
        chart
            .draw_series(LineSeries::new(
                line.measured.iter().copied(),
                c.stroke_width(2),
            ))
            .map_err(err)?
            .label(format!("memmap={}", line.policy))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(line.measured.iter().map(|p| Circle::new(*p, 4, c.filled())))
            .map_err(err)?;
        chart
            .draw_series(
                line.formula
                    .iter()
                    .map(|p| Cross::new(*p, 7, c.stroke_width(2))),
            )
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 14))
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png() {
        let dir = testbed::ScratchDir::new("plot").unwrap();
        let path = dir.path().join("p.png");
        let bars = vec![
            Bar {
                label: "vmm-0".into(),
                median: 800.0,
                min: 700.0,
                max: 900.0,
            },
            Bar {
                label: "qemu-0".into(),
                median: 1500.0,
                min: 1400.0,
                max: 1700.0,
            },
        ];
        let lines = vec![Line {
            policy: "ram".into(),
            measured: vec![(1.0, 16000.0), (4.0, 16300.0)],
            formula: vec![(1.0, 16384.0), (4.0, 16384.0)],
        }];
        let density = vec![
            Bar {
                label: "vmm-shared-4".into(),
                median: 40.0,
                min: 40.0,
                max: 40.0,
            },
            Bar {
                label: "vmm-copies-4".into(),
                median: 100.0,
                min: 100.0,
                max: 100.0,
            },
        ];
        draw(
            &path,
            &Panel::Ran(bars),
            &Panel::Ran(lines),
            &Panel::Ran(density),
            "test",
        )
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        // Panels not run, or without figures, draw too.
        draw(
            &path,
            &Panel::NotRun,
            &Panel::Ran(Vec::new()),
            &Panel::NotRun,
            "empty",
        )
        .unwrap();
    }

    fn bar(label: &str) -> Bar {
        Bar {
            label: label.into(),
            median: 1.0,
            min: 1.0,
            max: 1.0,
        }
    }

    /// Density bars: host memory per guest in MiB, by guest count, ours first.
    #[test]
    fn density_bars_by_guest_count() {
        let mut r = Results::default();
        for (case, kib) in [
            ("vmm-copies-2", 4096.0),
            ("cloud-hypervisor-shared-2", 3072.0),
            ("vmm-shared-2", 2048.0),
            ("vmm-shared-1", 1024.0),
        ] {
            r.samples.push(crate::lines::Sample {
                tag: crate::lines::Tag::parse(&format!("density.{case}.1")),
                metric: "host_total_per_guest_kib".into(),
                value: kib,
            });
        }
        r.finish();
        let bars = density_bars(&r);
        let got: Vec<(&str, f64)> = bars.iter().map(|b| (b.label.as_str(), b.median)).collect();
        assert_eq!(
            got,
            [
                ("vmm-shared-1", 1.0),
                ("vmm-shared-2", 2.0),
                ("cloud-hypervisor-shared-2", 3.0),
                ("vmm-copies-2", 4.0)
            ]
        );
    }

    /// Bars go by device count, ours first within a group, with a gap between groups.
    #[test]
    fn groups_by_device_count() {
        let mut r = Results::default();
        for case in [
            "qemu-0",
            "vmm-8",
            "firecracker-1",
            "vmm-bzimage-0",
            "vmm-0",
            "vmm-api-0",
            "cloud-hypervisor-0",
            "vmm-1",
        ] {
            r.samples.push(crate::lines::Sample {
                tag: crate::lines::Tag::parse(&format!("boot.{case}.1")),
                metric: "launch_ms".into(),
                value: 5.0,
            });
        }
        r.finish();
        let bars = boot_bars(&r);
        let order: Vec<&str> = bars.iter().map(|b| b.label.as_str()).collect();
        assert_eq!(
            order,
            [
                "vmm-0",
                "vmm-bzimage-0",
                "vmm-api-0",
                "cloud-hypervisor-0",
                "qemu-0",
                "vmm-1",
                "firecracker-1",
                "vmm-8"
            ]
        );
        let (placed, groups) = bar_positions(&bars);
        let xs: Vec<f64> = placed.iter().map(|(x, _)| *x).collect();
        assert_eq!(xs, [0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 7.0, 9.0]);
        assert_eq!(groups, [(0, 2.0), (1, 6.5), (8, 9.0)]);
        let _ = bar("x");
    }
}
