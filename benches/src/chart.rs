//! The bench programs' charts as SVG, one line per cache, drawn from the figures a program has
//! just measured (nothing is parsed back from text):
//!
//! * [`hit_ratio_svg`]: hit ratio against capacity, one chart per trace
//!   (`benches/cache_hit_ratio.rs`). The capacity axis is logarithmic (the bench's capacities
//!   run from 0.5% to 25% of the key space), the hit-ratio axis spans the figures shown,
//!   rounded out to 10 points.
//! * [`throughput_svg`]: throughput against thread count (`benches/cache_mixed.rs`). The
//!   thread axis is logarithmic with a tick at each count measured (1, 2, 16, 64), the
//!   throughput axis starts at 0.
//!
//! Each chart carries a caption: the date and the CPU of the run, and what the figures
//! depend on.

use core::{error::Error, fmt::Write as _, ops::Range};
use std::{process::Command, time::SystemTime};

use plotters::prelude::*;

/// Chart size in pixels.
const SIZE: (u32, u32) = (800, 500);

/// Pixels below the plot for the caption lines.
const CAPTION_LINE: u32 = 18;

/// One line of a chart: a cache, and its figure at each x value of the chart (hit ratio in
/// percent at each of [`HitRatioChart::capacities`], or Mops/s at each of
/// [`ThroughputChart::threads`]).
#[derive(Clone, Debug)]
pub struct Series<'a> {
    /// The cache, as the legend names it.
    pub name: &'a str,
    /// One figure per x value.
    pub values: Vec<f64>,
}

/// What one chart shows.
#[derive(Clone, Debug)]
pub struct HitRatioChart<'a> {
    /// The trace, for the title.
    pub trace: &'a str,
    /// Capacities as percent of the key space, ascending and positive: the x values.
    pub capacities: &'a [f64],
    /// The caches; the first is drawn last (on top) and thicker: ours.
    pub series: Vec<Series<'a>>,
    /// The highest hit ratio the trace allows, if below 100% (drawn as a dashed line).
    pub ceiling: Option<f64>,
    /// Lines of text under the plot: date, CPU, workload.
    pub caption: Vec<String>,
}

/// Line colours, in series order: ours first.
const COLOURS: [RGBColor; 6] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(127, 127, 127),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
];

/// What one throughput chart shows.
#[derive(Clone, Debug)]
pub struct ThroughputChart<'a> {
    /// The workload, for the title.
    pub workload: &'a str,
    /// Thread counts, ascending and positive: the x values.
    pub threads: &'a [f64],
    /// The caches, Mops/s at each thread count; the first is drawn last (on top) and
    /// thicker: ours.
    pub series: Vec<Series<'a>>,
    /// Lines of text under the plot: date, CPU, workload.
    pub caption: Vec<String>,
}

/// Draws a hit-ratio `chart` as an SVG document.
pub fn hit_ratio_svg(chart: &HitRatioChart<'_>) -> Result<String, String> {
    let (low, high) = span(&chart.series, chart.ceiling);
    let (low, high) = if low <= high {
        (
            ((low - 2.0) / 10.0).floor().max(0.0) * 10.0,
            ((high + 2.0) / 10.0).ceil().min(10.0) * 10.0,
        )
    } else {
        (0.0, 100.0)
    };
    svg(&LineChart {
        title: format!("Hit ratio by capacity: {}", chart.trace),
        xs: chart.capacities,
        x_desc: "capacity, % of the key space (log scale)",
        x_label: |x| format!("{x}%"),
        y: low..high,
        y_desc: "hit ratio, %",
        series: &chart.series,
        ceiling: chart.ceiling,
        legend: SeriesLabelPosition::LowerRight,
        caption: &chart.caption,
    })
}

/// Draws a throughput `chart` as an SVG document.
pub fn throughput_svg(chart: &ThroughputChart<'_>) -> Result<String, String> {
    let (_, high) = span(&chart.series, None);
    let high = if high > 0.0 { high * 1.15 } else { 1.0 };
    svg(&LineChart {
        title: format!("Throughput by thread count: {}", chart.workload),
        xs: chart.threads,
        x_desc: "threads (log scale)",
        x_label: |x| format!("{x}"),
        y: 0.0..high,
        y_desc: "throughput, Mops/s",
        series: &chart.series,
        ceiling: None,
        legend: SeriesLabelPosition::UpperRight,
        caption: &chart.caption,
    })
}

/// The lowest and highest figure of `series` and `extra` (`(inf, -inf)` if none).
fn span(series: &[Series<'_>], extra: Option<f64>) -> (f64, f64) {
    series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .chain(extra)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        })
}

/// A chart of lines over a logarithmic x axis with a tick at each x value.
struct LineChart<'a> {
    title: String,
    xs: &'a [f64],
    x_desc: &'a str,
    x_label: fn(&f64) -> String,
    y: Range<f64>,
    y_desc: &'a str,
    series: &'a [Series<'a>],
    /// A dashed horizontal line: the highest figure the workload allows.
    ceiling: Option<f64>,
    legend: SeriesLabelPosition,
    caption: &'a [String],
}

/// Checks `chart`'s figures, then draws it as an SVG document.
fn svg(chart: &LineChart<'_>) -> Result<String, String> {
    let (first, last) = match chart.xs {
        [first, .., last] if *first > 0.0 && first < last => (*first, *last),
        _ => return Err("a chart needs two or more ascending positive x values".into()),
    };
    if let Some(s) = chart
        .series
        .iter()
        .find(|s| s.values.len() != chart.xs.len())
    {
        return Err(format!(
            "series `{}` has {} points for {} x values",
            s.name,
            s.values.len(),
            chart.xs.len()
        ));
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        draw(&root, chart, (first, last)).map_err(|e| format!("drawing the chart: {e}"))?;
        root.present()
            .map_err(|e| format!("drawing the chart: {e}"))?;
    }
    Ok(svg)
}

fn draw(
    root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    chart: &LineChart<'_>,
    (first, last): (f64, f64),
) -> Result<(), Box<dyn Error>> {
    root.fill(&WHITE)?;
    let caption_height = CAPTION_LINE * chart.caption.len() as u32 + 8;
    let (plot_area, caption_area) = root.split_vertically(SIZE.1 - caption_height);

    let mut plot = ChartBuilder::on(&plot_area)
        .caption(&chart.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(
            (first * 0.8..last * 1.25)
                .log_scale()
                .with_key_points(chart.xs.to_vec()),
            chart.y.clone(),
        )?;
    plot.configure_mesh()
        .x_desc(chart.x_desc)
        .y_desc(chart.y_desc)
        .x_label_formatter(&chart.x_label)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.12))
        .draw()?;

    if let Some(ceiling) = chart.ceiling {
        let grey = BLACK.mix(0.5);
        plot.draw_series(DashedLineSeries::new(
            [(first * 0.8, ceiling), (last * 1.25, ceiling)],
            6,
            4,
            grey.stroke_width(1),
        ))?
        .label(format!("ceiling ({ceiling:.0}%)"))
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], grey.stroke_width(1)));
    }
    // Ours last, so that it is drawn on top of the others.
    for (i, series) in chart.series.iter().enumerate().rev() {
        let colour = COLOURS[i % COLOURS.len()];
        let width = if i == 0 { 3 } else { 2 };
        let points = chart.xs.iter().copied().zip(series.values.clone());
        plot.draw_series(
            LineSeries::new(points, colour.stroke_width(width)).point_size(if i == 0 {
                4
            } else {
                3
            }),
        )?
        .label(series.name)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(width)));
    }
    plot.configure_series_labels()
        .position(chart.legend.clone())
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 15))
        .draw()?;

    for (i, line) in chart.caption.iter().enumerate() {
        caption_area.draw(&Text::new(
            line.as_str(),
            (14, 2 + (CAPTION_LINE * i as u32) as i32),
            ("sans-serif", 14).into_font().color(&BLACK.mix(0.75)),
        ))?;
    }
    Ok(())
}

/// A file-name form of a trace name: ASCII letters, digits and dots kept (lowercased), any
/// run of other characters one `_`. `zipf 1.0 + scans` gives `zipf_1.0_scans`.
pub fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || c == '.' {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    while out.ends_with('_') {
        out.pop();
    }
    out
}

/// The CPU model: `lscpu`'s "Model name", else `/proc/cpuinfo`'s "model name", else the
/// architecture; with the number of CPUs this process may use.
pub fn cpu_model() -> String {
    let field = |text: &str, key: &str| {
        text.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == key && !v.trim().is_empty()).then(|| v.trim().to_owned())
        })
    };
    let model = Command::new("lscpu")
        .env("LC_ALL", "C")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| field(&String::from_utf8_lossy(&out.stdout), "Model name"))
        .or_else(|| {
            std::fs::read_to_string("/proc/cpuinfo")
                .ok()
                .and_then(|info| field(&info, "model name"))
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let mut out = model;
    let _ = write!(out, ", {cpus} CPUs");
    out
}

/// Today's date (UTC) as `YYYY-MM-DD`, from the system clock.
pub fn today() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> HitRatioChart<'static> {
        HitRatioChart {
            trace: "zipf 1.0 + scans",
            capacities: &[0.5, 1.0, 5.0, 10.0, 25.0],
            series: vec![
                Series {
                    name: "deferred",
                    values: vec![43.3, 47.8, 58.1, 62.0, 66.6],
                },
                Series {
                    name: "lru",
                    values: vec![35.0, 40.0, 49.3, 53.9, 61.8],
                },
            ],
            ceiling: Some(80.0),
            caption: vec!["2026-12-06, Some CPU, 2 CPUs".into()],
        }
    }

    #[test]
    fn draws_an_svg_with_title_legend_and_caption() {
        let svg = hit_ratio_svg(&chart()).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        for text in [
            "Hit ratio by capacity: zipf 1.0 + scans",
            "deferred",
            "lru",
            "ceiling (80%)",
            "2026-12-06, Some CPU, 2 CPUs",
            "25%",
            "0.5%",
        ] {
            assert!(svg.contains(text), "no `{text}` in\n{svg}");
        }
        // The same figures draw the same picture.
        assert_eq!(svg, hit_ratio_svg(&chart()).unwrap());
    }

    #[test]
    fn rejects_mismatched_figures() {
        let mut bad = chart();
        bad.series[1].values.pop();
        assert!(hit_ratio_svg(&bad)
            .unwrap_err()
            .contains("`lru` has 4 points"));
        bad.capacities = &[1.0];
        assert!(hit_ratio_svg(&bad).is_err());
    }

    #[test]
    fn draws_a_throughput_chart() {
        let chart = ThroughputChart {
            workload: "mixed",
            threads: &[1.0, 2.0, 16.0, 64.0],
            series: vec![
                Series {
                    name: "deferred",
                    values: vec![5.0, 9.5, 9.0, 8.0],
                },
                Series {
                    name: "quick_cache",
                    values: vec![15.0, 28.0, 27.0, 25.0],
                },
            ],
            caption: vec!["2026-12-06, Some CPU, 2 CPUs".into()],
        };
        let svg = throughput_svg(&chart).unwrap();
        for text in [
            "Throughput by thread count: mixed",
            "quick_cache",
            "threads (log scale)",
            "Mops/s",
            "\n64\n",
            "\n16\n",
        ] {
            assert!(svg.contains(text), "no `{text}` in\n{svg}");
        }
    }

    #[test]
    fn slugs_and_dates() {
        assert_eq!(slug("zipf 1.0 + scans"), "zipf_1.0_scans");
        assert_eq!(slug(" Zipf 0.9 "), "zipf_0.9");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_783), (2026, 11, 26));
    }
}
