//! SVG charts of a bench report, drawn with plotters.

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

use super::{label, Report};

/// Distinct colours, enough for every model, the peer and a few
/// `--server` subjects before one repeats.
const COLORS: [RGBColor; 14] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(23, 190, 207),
    RGBColor(188, 189, 34),
    RGBColor(0, 0, 128),
    RGBColor(128, 0, 0),
    RGBColor(0, 128, 128),
    RGBColor(0, 0, 0),
];

/// An axis label without trailing zeros: 600k, 2.5, 0.25.
fn short_number(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v.abs() >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// One line per model and loop count: (connections, value) for the runs of
/// `shape` that produced a figure.
fn series(
    r: &Report,
    shape: &str,
    value: impl Fn(&super::RunRow) -> Option<f64>,
) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut out: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for run in r
        .runs
        .iter()
        .filter(|x| x.shape == shape && x.rt_per_s > 0.0)
    {
        // A running server (`--addr`) without a process to read has no CPU.
        let Some(v) = value(run) else { continue };
        let point = (run.conns as f64, v);
        let name = label(&run.model, run.threads);
        match out.iter_mut().find(|(m, _)| *m == name) {
            Some((_, pts)) => pts.push(point),
            None => out.push((name, vec![point])),
        }
    }
    out
}

/// The y axis of a line chart.
#[derive(Clone, Copy, PartialEq)]
enum YScale {
    Linear,
    /// Logarithmic: for figures that span decades (latency).
    Log,
}

fn line_chart(
    path: &Path,
    title: &str,
    y_label: &str,
    data: &[(String, Vec<(f64, f64)>)],
    scale: YScale,
) -> Result<()> {
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let (x_min, x_max) = x_span(data.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)));
    // A log y axis is drawn as a linear axis of log10(y), labelled 10^y.
    let log = scale == YScale::Log;
    let data: Vec<(String, Vec<(f64, f64)>)> = data
        .iter()
        .map(|(name, pts)| {
            let pts = pts
                .iter()
                .filter(|p| !log || p.1 > 0.0)
                .map(|&(x, y)| (x, if log { y.log10() } else { y }))
                .collect();
            (name.clone(), pts)
        })
        .collect();
    let ys = || data.iter().flat_map(|(_, p)| p.iter().map(|q| q.1));
    let (y_min, y_max) = if log {
        let lo = ys().fold(f64::INFINITY, f64::min);
        let hi = ys().fold(f64::NEG_INFINITY, f64::max);
        if lo.is_finite() {
            (lo.floor(), hi.ceil().max(lo.floor() + 1.0))
        } else {
            (0.0, 1.0)
        }
    } else {
        (0.0, ys().fold(0.0f64, f64::max) * 1.15 + 1e-9)
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d((x_min..x_max).log_scale(), y_min..y_max)?;
    chart
        .configure_mesh()
        .x_desc("connections (log scale)")
        .y_desc(y_label)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_labels(if log {
            (y_max - y_min) as usize + 1
        } else {
            10
        })
        .y_label_formatter(&|y| short_number(if log { 10f64.powf(*y) } else { *y }))
        .draw()?;
    for (i, (model, pts)) in data.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
            .label(model.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The x range of a log axis over `xs`: a third of a decade either side of
/// the data, so the first and last points sit inside the frame and nothing
/// is drawn where there is no data.
fn x_span(xs: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = xs.fold((f64::INFINITY, 0.0f64), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    if !lo.is_finite() || lo <= 0.0 {
        return (0.5, 2.0);
    }
    (lo / 1.5, hi * 1.5)
}

/// A series of bars: its name, and its value in each group (if any).
type BarSeries = (String, Vec<Option<f64>>);

/// Bars in groups: one group per name along x, in each a bar per series
/// (coloured, with a legend); a series without a value in a group leaves a
/// gap.
fn grouped_bar_chart(
    path: &Path,
    title: &str,
    y_label: &str,
    groups: &[String],
    series: &[BarSeries],
) -> Result<()> {
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let y_max = series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten())
        .fold(0.0f64, |m, &v| m.max(v))
        * 1.15
        + 1e-9;
    let n = groups.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.5f64..n - 0.5, 0f64..y_max)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len().max(1))
        .y_desc(y_label)
        .y_label_formatter(&|y| short_number(*y))
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                groups.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .draw()?;
    // Each group 0.8 wide, split among the series.
    let width = 0.8 / series.len().max(1) as f64;
    for (k, (name, values)) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let left = |g: usize| g as f64 - 0.4 + k as f64 * width;
        chart
            .draw_series(values.iter().enumerate().filter_map(|(g, v)| {
                let v = (*v)?;
                Some(Rectangle::new(
                    [(left(g), 0.0), (left(g) + width * 0.9, v)],
                    color.filled(),
                ))
            }))?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Server CPU per round trip of the paced runs: a group per server whose
/// CPU is known (in the report's order: models, then peers, `--addr` and
/// `--server` subjects), a bar per paced load.
fn cpu_groups(r: &Report) -> (Vec<String>, Vec<BarSeries>) {
    let paced: Vec<&super::RunRow> = r
        .runs
        .iter()
        // A running server (`--addr`) without a process to read has no CPU.
        .filter(|x| x.shape == "paced" && x.rt_per_s > 0.0 && x.cpu_s_per_mrt.is_some())
        .collect();
    let mut groups: Vec<String> = Vec::new();
    let mut loads: Vec<(usize, f64)> = Vec::new();
    for run in &paced {
        let name = label(&run.model, run.threads);
        if !groups.contains(&name) {
            groups.push(name);
        }
        let load = (run.conns, run.rate.unwrap_or(0.0));
        if !loads.contains(&load) {
            loads.push(load);
        }
    }
    loads.sort_by_key(|l| l.0);
    let series = loads
        .iter()
        .map(|&(conns, rate)| {
            let values = groups
                .iter()
                .map(|g| {
                    paced
                        .iter()
                        .find(|x| label(&x.model, x.threads) == *g && x.conns == conns)
                        .and_then(|x| x.cpu_s_per_mrt)
                })
                .collect();
            (
                format!("{} rt/s over {conns} connections", short_number(rate)),
                values,
            )
        })
        .collect();
    (groups, series)
}

/// Writes every chart into `dir`; returns the file names.
pub fn write_all(r: &Report, dir: &Path) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut files = Vec::new();
    let mut emit = |name: &str, f: &dyn Fn(&Path) -> Result<()>| -> Result<()> {
        let path = dir.join(name);
        f(&path).with_context(|| format!("drawing {}", path.display()))?;
        files.push(path.display().to_string());
        Ok(())
    };
    emit("throughput.svg", &|p| {
        line_chart(
            p,
            "Round trips per second, closed loop",
            "round trips/s",
            &series(r, "closed", |x| Some(x.rt_per_s)),
            YScale::Linear,
        )
    })?;
    emit("p99.svg", &|p| {
        line_chart(
            p,
            "p99 latency, closed loop",
            "p99 latency (us, log scale)",
            &series(r, "closed", |x| Some(x.p99_us)),
            YScale::Log,
        )
    })?;
    let (groups, loads) = cpu_groups(r);
    if !groups.is_empty() {
        emit("cpu_per_rt.svg", &|p| {
            grouped_bar_chart(
                p,
                "Server CPU per round trip at equal paced load",
                "server CPU s per million round trips",
                &groups,
                &loads,
            )
        })?;
    }
    let measured: Vec<&super::MemRow> = r.memory.iter().filter(|m| m.status.is_none()).collect();
    if !measured.is_empty() {
        let conns = measured[0].conns;
        let names: Vec<String> = measured
            .iter()
            .map(|m| label(&m.model, m.threads))
            .collect();
        let bytes = vec![(
            "RSS added per connection (Pss of the tree for --server)".to_string(),
            measured.iter().map(|m| Some(m.bytes_per_conn)).collect(),
        )];
        emit("memory_per_conn.svg", &|p| {
            grouped_bar_chart(
                p,
                &format!("Server memory per idle connection ({conns} connections)"),
                "bytes",
                &names,
                &bytes,
            )
        })?;
    }
    Ok(files)
}
