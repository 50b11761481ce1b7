//! SVG charts of a bench report, drawn with plotters.

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

use super::{label, Report};

const COLORS: [RGBColor; 9] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(23, 190, 207),
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

fn line_chart(
    path: &Path,
    title: &str,
    y_label: &str,
    data: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let xs = data.iter().flat_map(|(_, p)| p.iter().map(|q| q.0));
    let x_max = xs.fold(1.0f64, f64::max) * 2.0;
    let y_max = data
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.1))
        .fold(0.0f64, f64::max)
        * 1.15
        + 1e-9;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d((0.5f64..x_max).log_scale(), 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("connections")
        .y_desc(y_label)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| short_number(*y))
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
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}

fn bar_chart(path: &Path, title: &str, y_label: &str, bars: &[(String, f64)]) -> Result<()> {
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let y_max = bars.iter().map(|b| b.1).fold(0.0f64, f64::max) * 1.15 + 1e-9;
    let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d((0..bars.len()).into_segmented(), 0f64..y_max)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(y_label)
        .y_label_formatter(&|y| short_number(*y))
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
        let color = COLORS[i % COLORS.len()];
        Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), *v),
            ],
            color.filled(),
        )
    }))?;
    root.present()?;
    Ok(())
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
        )
    })?;
    emit("p99.svg", &|p| {
        line_chart(
            p,
            "p99 latency, closed loop",
            "p99 latency (us)",
            &series(r, "closed", |x| Some(x.p99_us)),
        )
    })?;
    emit("cpu_per_rt.svg", &|p| {
        line_chart(
            p,
            "Server CPU per round trip at equal paced load",
            "server CPU s per million round trips",
            &series(r, "paced", |x| x.cpu_s_per_mrt),
        )
    })?;
    let mem: Vec<(String, f64)> = r
        .memory
        .iter()
        .filter(|m| m.status.is_none())
        .map(|m| (label(&m.model, m.threads), m.bytes_per_conn))
        .collect();
    if !mem.is_empty() {
        let conns = r.memory.first().map_or(0, |m| m.conns);
        emit("memory_per_conn.svg", &|p| {
            bar_chart(
                p,
                &format!("Server memory per idle connection ({conns} connections)"),
                "bytes (RSS)",
                &mem,
            )
        })?;
    }
    Ok(files)
}
