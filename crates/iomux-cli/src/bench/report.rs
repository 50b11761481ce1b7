//! The bench's final aligned tables.

use std::fmt::Write;

use super::Report;

/// Lays out rows of cells in columns: the first column left-aligned, the
/// others right-aligned, the last (notes) left-aligned and unpadded.
fn columns(header: &[&str], rows: &[Vec<String>]) -> String {
    let n = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(n - 1) {
            width[i] = width[i].max(c.len());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        for (i, c) in cells.iter().enumerate() {
            if i == 0 {
                let _ = write!(out, "{c:<w$}", w = width[0]);
            } else if i == n - 1 {
                if !c.is_empty() {
                    let _ = write!(out, "  {c}");
                }
            } else {
                let _ = write!(out, "  {c:>w$}", w = width[i]);
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

fn num(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn opt(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), num)
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

/// Where the servers ran: "server pinned to CPU 0", and where one with
/// several loops ran, and its load generator.
fn pinning(s: &super::Setup) -> String {
    let Some(cpu) = s.server_cpu else {
        return " (server not pinned)".into();
    };
    let mut out = format!(", server pinned to CPU {cpu}");
    for &n in s.server_threads.iter().filter(|&&n| n > 1) {
        let last = n.min(s.cpus) - 1;
        let _ = write!(out, ", with {n} loops to CPUs {cpu}-{last}");
        if n >= s.cpus {
            out += " (shared with the load generator)";
        }
    }
    out
}

/// The whole report as text.
pub fn table(r: &Report) -> String {
    let s = &r.setup;
    let mut out = format!(
        "iomux bench: {} CPUs{}, protocol {}, {}-byte messages, depth {}, {:.2} s windows, median of {} rounds, kernel {}\n",
        s.cpus,
        pinning(s),
        s.protocol,
        s.size,
        s.depth,
        s.duration_s,
        s.rounds,
        s.kernel
    );
    for f in &s.servers {
        let _ = writeln!(
            out,
            "{}: `{}` (CPU and memory of its process tree, from /proc)",
            f.name, f.cmd
        );
    }
    out.push('\n');
    let header = [
        "model",
        "thr",
        "load",
        "conns",
        "rt/s",
        "MB/s",
        "p50 us",
        "p99 us",
        "p999 us",
        "cpu s/Mrt",
        "vs tokio",
        "cores",
        "waits/rt",
        "sys/rt",
        "sleeps/rt",
        "peak MiB",
        "B/conn",
        "note",
    ];
    let rows: Vec<Vec<String>> = r
        .runs
        .iter()
        .map(|x| {
            let load = match x.rate {
                Some(rate) => format!("paced {}k", rate / 1000.0),
                None => "closed".into(),
            };
            if x.rt_per_s == 0.0 {
                let mut v = vec![x.model.clone(), x.threads.to_string(), load];
                v.push(x.conns.to_string());
                v.extend(std::iter::repeat_n("-".to_string(), 13));
                v.push(x.status.clone().unwrap_or_default());
                return v;
            }
            let mut notes = Vec::new();
            if let Some(s) = &x.status {
                notes.push(s.clone());
            } else if x.late > 0 {
                notes.push(format!("{} late", x.late));
            }
            if let Some(r) = x.cpu_vs_epoll {
                notes.push(format!("cpu/rt vs epoll {r:.2}x"));
            }
            if let Some(v) = x.vs_no_budget {
                notes.push(format!(
                    "vs no budget: cpu/rt {:.2}x, p99 {:.2}x, rt/s {:.2}x",
                    v.cpu, v.p99, v.rt
                ));
            }
            if let (Some(rt), Some(cpu)) = (x.rt_vs_one_loop, x.cpu_vs_one_loop) {
                notes.push(format!("vs 1 loop: rt/s {rt:.2}x, cpu/rt {cpu:.2}x"));
            }
            if !x.loop_conns.is_empty() {
                let n: Vec<String> = x.loop_conns.iter().map(u64::to_string).collect();
                notes.push(format!("conns per loop {}", n.join("/")));
            }
            vec![
                x.model.clone(),
                x.threads.to_string(),
                load,
                x.conns.to_string(),
                format!("{:.0}", x.rt_per_s),
                num(x.mb_per_s),
                num(x.p50_us),
                num(x.p99_us),
                num(x.p999_us),
                opt(x.cpu_s_per_mrt),
                opt(x.cpu_vs_tokio),
                opt(x.server_cores),
                opt(x.waits_per_rt),
                opt(x.syscalls_per_rt),
                opt(x.sleeps_per_rt),
                x.peak_rss.map_or_else(|| "-".into(), mib),
                x.rss_per_conn
                    .map_or_else(|| "-".into(), |b| format!("{b:.0}")),
                notes.join("; "),
            ]
        })
        .collect();
    out += &columns(&header, &rows);
    if !r.idle.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = r
            .idle
            .iter()
            .map(|x| {
                vec![
                    x.model.clone(),
                    x.threads.to_string(),
                    x.conns.to_string(),
                    if x.status.is_some() {
                        "-".into()
                    } else {
                        format!("{:.2}", x.cpu_pct)
                    },
                    x.status.clone().unwrap_or_default(),
                ]
            })
            .collect();
        out += &columns(&["idle", "thr", "conns", "cpu % of a core", "note"], &rows);
    }
    if !r.memory.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = r
            .memory
            .iter()
            .map(|x| {
                let ok = x.status.is_none();
                vec![
                    x.model.clone(),
                    x.threads.to_string(),
                    x.conns.to_string(),
                    if ok { mib(x.rss_before) } else { "-".into() },
                    if ok { mib(x.rss_after) } else { "-".into() },
                    if ok {
                        format!("{:.0}", x.bytes_per_conn)
                    } else {
                        "-".into()
                    },
                    x.status.clone().unwrap_or_default(),
                ]
            })
            .collect();
        out += &columns(
            &[
                "memory",
                "thr",
                "conns",
                "RSS before MiB",
                "RSS after MiB",
                "bytes/conn",
                "note",
            ],
            &rows,
        );
    }
    out
}
