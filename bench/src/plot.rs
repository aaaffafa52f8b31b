//! `plot.png`: launch to guest init per monitor and device count (median bars, min-max
//! whiskers), and guest RAM per GiB of pmem against pmem size for each memmap policy (measured:
//! lines and dots; the vmm's formula: crosses).
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

/// The bars of the boot panel, in case order (ours first).
pub fn boot_bars(r: &Results) -> Vec<Bar> {
    let mut bars: Vec<Bar> = r
        .summaries
        .iter()
        .filter(|((p, _, m), _)| p == "boot" && m == "launch_ms")
        .map(|((_, c, _), s)| Bar {
            label: c.clone(),
            median: s.median,
            min: s.min,
            max: s.max,
        })
        .collect();
    let order = |b: &Bar| {
        let (name, n) = b.label.rsplit_once('-').unwrap_or((&b.label, "0"));
        (
            name != "vmm",
            name.to_string(),
            n.parse::<u32>().unwrap_or(0),
        )
    };
    bars.sort_by_key(order);
    bars
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

/// Writes the PNG.
pub fn draw(path: &Path, bars: &[Bar], lines: &[Line], subtitle: &str) -> Result<(), String> {
    register_font()?;
    let root = BitMapBackend::new(path, (1500, 650)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root
        .titled(subtitle, (FONT, 16).into_font().color(&BLACK.mix(0.7)))
        .map_err(err)?;
    let (left, right) = root.split_horizontally(720);
    draw_bars(&left, bars)?;
    draw_lines(&right, lines)?;
    root.present().map_err(err)?;
    Ok(())
}

fn draw_bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    bars: &[Bar],
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let n = bars.len().max(1);
    let top = bars.iter().map(|b| b.max).fold(1.0, f64::max) * 1.25;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Launch to guest init (median; whiskers: min-max)",
            (FONT, 20),
        )
        .margin(15)
        .x_label_area_size(20)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.6f64..(n as f64 - 0.4), 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|_| String::new())
        .y_desc("ms")
        .label_style((FONT, 14))
        .draw()
        .map_err(err)?;
    if bars.is_empty() {
        chart
            .draw_series(std::iter::once(Text::new(
                "no boot figures",
                (0.0, top / 2.0),
                (FONT, 18),
            )))
            .map_err(err)?;
        return Ok(());
    }
    let color = |b: &Bar| {
        if b.label.starts_with("vmm-") {
            BLUE.mix(0.65)
        } else {
            RGBColor(230, 120, 20).mix(0.65)
        }
    };
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            let x = i as f64;
            Rectangle::new([(x - 0.35, 0.0), (x + 0.35, b.median)], color(b).filled())
        }))
        .map_err(err)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            let x = i as f64;
            PathElement::new(vec![(x, b.min), (x, b.max)], BLACK.stroke_width(2))
        }))
        .map_err(err)?;
    chart
        .draw_series(bars.iter().enumerate().flat_map(|(i, b)| {
            let x = i as f64 - 0.34;
            let y = b.max.max(b.median) + top * 0.06;
            [
                Text::new(b.label.clone(), (x, y), (FONT, 13).into_font()),
                Text::new(
                    format!("{:.0} ms", b.median),
                    (x, y - top * 0.035),
                    (FONT, 12).into_font(),
                ),
            ]
        }))
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
        .caption(
            "Guest RAM per GiB of pmem (dots: measured, x: formula)",
            (FONT, 20),
        )
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
        draw(&path, &bars, &lines, "test").unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        // Empty panels draw too.
        draw(&path, &[], &[], "empty").unwrap();
    }
}
