//! `iomux lessons`: every claim of the seed lessons, tested on this machine
//! in one report.
//!
//! Each claim names the lesson it comes from (the seed files in the
//! project's shared `seeds/`), the measurement that tests it, the figure it
//! gave and the verdict, which comes from that figure against a stated
//! threshold: a claim may come out "does not hold" here, and the report
//! says so. The measurements reuse the bench's machinery: servers are
//! `iomux serve --control` children (pinned to CPU 0 where the machine has
//! two CPUs, the load on the others), loads come from the bench's load
//! generator, and CPU, threads and memory are read from the server itself
//! or from `/proc`. The whole run takes well under two minutes.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use iomux::protocol::Protocol;
use iomux::server::Model;
use serde::Serialize;

use crate::bench::load::LoadSpec;
use crate::bench::server::{ServerProc, Stats};
use crate::bench::{connect_idle, measure_load, proctree, Window};

/// Flags of `iomux lessons`.
#[derive(Args, Debug, Clone)]
pub struct LessonsArgs {
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// What the measurement says of a claim.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The figure meets the claim's threshold.
    Holds,
    /// It does not, on this machine.
    DoesNotHold,
    /// The measurement could not be made here (the figure says why).
    NotMeasured,
}

impl Verdict {
    fn of(holds: bool) -> Verdict {
        if holds {
            Verdict::Holds
        } else {
            Verdict::DoesNotHold
        }
    }

    fn words(self) -> &'static str {
        match self {
            Verdict::Holds => "holds",
            Verdict::DoesNotHold => "does not hold",
            Verdict::NotMeasured => "not measured",
        }
    }
}

/// One claim, tested.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// Short stable name.
    pub id: &'static str,
    /// The claim, as the lessons make it.
    pub claim: &'static str,
    /// The seed files it comes from.
    pub seeds: &'static [&'static str],
    /// What was measured, and the threshold of the verdict.
    pub measurement: String,
    /// The figure, in words.
    pub figure: String,
    /// The figures, by name.
    pub figures: BTreeMap<String, f64>,
    /// Whether the claim holds on this machine.
    pub verdict: Verdict,
    /// Seconds the measurement took.
    pub secs: f64,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Lessons {
    /// CPUs available.
    pub cpus: usize,
    /// Kernel release.
    pub kernel: String,
    /// Whether servers were pinned to CPU 0 and the load to the others.
    pub pinned: bool,
    /// Every claim.
    pub claims: Vec<Finding>,
    /// Wall time of the whole run, seconds.
    pub wall_s: f64,
}

/// What a measurement returns: the figure in words, named figures, and
/// whether the claim holds.
struct Outcome {
    figure: String,
    figures: Vec<(&'static str, f64)>,
    holds: bool,
}

type Measure = fn(&Env) -> Result<Outcome>;

/// A claim: id, words, seeds, measurement (with its threshold), and the
/// function that measures it.
struct Claim {
    id: &'static str,
    claim: &'static str,
    seeds: &'static [&'static str],
    measurement: &'static str,
    measure: Measure,
}

const WORK_MS: u32 = 20;

const CLAIMS: &[Claim] = &[
    Claim {
        id: "iterative-blocks",
        claim: "The iterative (blocking) server makes the second client wait until the first leaves",
        seeds: &["000", "004"],
        measurement: "blocking server; client A connects and stays; client B sends a line. Holds if B gets no reply in 500 ms while A stays, and gets it once A closes",
        measure: iterative_blocks,
    },
    Claim {
        id: "thread-per-connection-cost",
        claim: "Thread per connection costs memory (a thread each) and a context switch per message",
        seeds: &["000", "004"],
        measurement: "threaded vs epoll: RSS and threads added by 200 idle connections; voluntary context switches per round trip, closed loop over 50 connections. Holds if threaded adds a thread and more memory per connection than epoll, and sleeps at least 0.5 times per round trip",
        measure: thread_per_connection,
    },
    Claim {
        id: "pool-bounded-but-blocked",
        claim: "A pool bounds the threads, but idle clients holding every worker block the others",
        seeds: &["000", "002", "004"],
        measurement: "pool of 4 workers; 4 idle clients, then a 5th sends a line, then 45 more connect. Holds if the thread count with 50 connections is no more than with 4, the 5th gets no reply in 500 ms, and gets it once an idle client leaves",
        measure: pool_bounded,
    },
    Claim {
        id: "busy-poll-burns-cpu",
        claim: "Non-blocking busy polling burns a CPU while nothing happens",
        seeds: &["000", "004"],
        measurement: "the server's time on a CPU, and runnable (on a CPU or queued for one: what it would burn on a CPU of its own), over 0.5 s with 10 idle connections, busy-poll vs epoll (/proc/PID/task/*/schedstat). Holds if busy-poll is runnable at least 90% of the time and epoll at most 5%",
        measure: busy_poll_idle,
    },
    Claim {
        id: "select-fd-limit",
        claim: "select cannot watch fd 1024 and up (FD_SETSIZE)",
        seeds: &["000"],
        measurement: "1,100 connections to a select and to a poll server (RLIMIT_NOFILE raised). Holds if select refuses some and serves fewer than 1,024 while poll serves all",
        measure: select_fd_limit,
    },
    Claim {
        id: "scan-cost-grows",
        claim: "select's and poll's cost per wait grows with the watched fds; epoll's does not",
        seeds: &["001", "003"],
        measurement: "server CPU per round trip, one connection paced at 2,000 round trips/s, beside 10 and beside 900 idle connections. Holds if the 900/10 ratio is at least 1.5 for select and poll and at most 1.3 for epoll",
        measure: scan_cost,
    },
    Claim {
        id: "multiplexing-one-connection",
        claim: "Multiplexing is no faster than blocking I/O for one connection",
        seeds: &["004"],
        measurement: "round trips/s over one connection, closed loop, blocking vs epoll (median of 5 rounds' ratios). Holds if epoll is at most 10% faster",
        measure: one_connection,
    },
    Claim {
        id: "slow-handler-stalls-loop",
        claim: "A slow handler stalls the whole event loop; handing it to a pool (offload) cures it",
        seeds: &["003"],
        measurement: "epoll, slow-upper burning 20 ms per line: one client sends lines, another sends bytes without a newline (no work) and times its round trips, without and with --offload. Holds if the quick client's median waits at least 10 ms without offload and at most 2 ms with it",
        measure: slow_handler,
    },
    Claim {
        id: "completion-vs-readiness",
        claim: "Completion I/O (the asynchronous model: io_uring here, aio in the lessons) costs less than readiness I/O",
        seeds: &["001", "003", "004"],
        measurement: "server CPU per round trip, uring vs epoll, 100 connections paced at 20,000 round trips/s (median of 5 rounds' ratios); closed-loop round trips/s beside it. Holds if uring's CPU per round trip is at most 0.95 times epoll's",
        measure: completion_vs_readiness,
    },
];

/// Where servers and the load run.
struct Env {
    pin: bool,
}

impl Env {
    /// Starts `iomux -q serve --model MODEL --control EXTRA` (on CPU 0 if
    /// pinning and `pinned`).
    fn serve_on(&self, model: Model, extra: &[&str], pinned: bool) -> Result<ServerProc> {
        let mut args: Vec<String> = ["-q", "serve", "--model", model.name()]
            .iter()
            .chain(&["--addr", "127.0.0.1:0", "--control", "--max-conns", "20000"])
            .chain(extra)
            .map(|s| s.to_string())
            .collect();
        if self.pin && pinned {
            args.extend(["--pin-cpu".into(), "0".into()]);
        }
        ServerProc::start(&args)
    }

    fn serve(&self, model: Model, extra: &[&str]) -> Result<ServerProc> {
        self.serve_on(model, extra, true)
    }

    /// Starts `model` and opens `n` idle connections to it; returns once it
    /// has accepted them (or 5 s passed), with the count it reached.
    fn serve_holding(&self, model: Model, n: usize) -> Result<(ServerProc, Vec<TcpStream>, u64)> {
        let mut server = self.serve(model, &[])?;
        let held = connect_idle(server.addr, n)?;
        let accepted = server.wait_accepted(n as u64, PATIENCE)?;
        Ok((server, held, accepted))
    }
}

/// A load of `conns` connections (paced at `rate` if given) for `secs`.
fn load(server: &mut ServerProc, conns: usize, rate: Option<f64>, secs: f64) -> Result<Window> {
    let spec = LoadSpec {
        addr: server.addr,
        conns,
        size: 64,
        depth: 1,
        duration: Duration::from_secs_f64(secs),
        warmup: Duration::from_millis(100),
        rate,
        protocol: Protocol::Upper,
    };
    let w = measure_load(server, &spec)?;
    if let Some(why) = &w.failure {
        bail!("{why}");
    }
    if w.result.errors > 0 {
        bail!(
            "{} load errors: {}",
            w.result.errors,
            w.result.error_samples.join("; ")
        );
    }
    if w.result.round_trips == 0 {
        bail!("no round trip completed");
    }
    Ok(w)
}

/// Round trips per second of a window.
fn rt_per_s(w: &Window) -> f64 {
    w.result.round_trips as f64 / w.result.elapsed.as_secs_f64().max(1e-9)
}

/// How much `field` grew per round trip over a window.
fn per_rt(w: &Window, field: impl Fn(&Stats) -> u64) -> Result<f64> {
    let d = w
        .delta(field)
        .ok_or_else(|| anyhow!("the server's counters were not read"))?;
    Ok(d / w.result.round_trips as f64)
}

/// Sends `line` on `s` and waits up to `wait` for its upper-cased reply:
/// `Ok(true)` if it came, `Ok(false)` if the wait ran out.
fn round_trip(s: &mut TcpStream, line: &[u8], wait: Duration) -> Result<bool> {
    s.write_all(line)?;
    replied(s, line, wait)
}

/// Waits up to `wait` for the upper-cased `line` on `s`.
fn replied(s: &mut TcpStream, line: &[u8], wait: Duration) -> Result<bool> {
    s.set_read_timeout(Some(wait))?;
    let mut got = vec![0; line.len()];
    match s.read_exact(&mut got) {
        Ok(()) if got == line.to_ascii_uppercase() => Ok(true),
        Ok(()) => bail!("wrong reply {got:?} to {line:?}"),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(false),
        Err(e) => Err(e).context("reading a reply"),
    }
}

const HELD: Duration = Duration::from_millis(500);
const PATIENCE: Duration = Duration::from_secs(5);

fn iterative_blocks(env: &Env) -> Result<Outcome> {
    let server = env.serve(Model::Blocking, &[])?;
    let mut a = TcpStream::connect(server.addr)?;
    if !round_trip(&mut a, b"a\n", PATIENCE)? {
        bail!("the first client got no reply");
    }
    let mut b = TcpStream::connect(server.addr)?;
    let blocked = !round_trip(&mut b, b"b\n", HELD)?;
    let left = Instant::now();
    drop(a);
    let answered = replied(&mut b, b"b\n", PATIENCE)?;
    let after_ms = left.elapsed().as_secs_f64() * 1e3;
    drop(b);
    server.stop()?;
    let figure = format!(
        "client B: {} in {} ms while A stayed; {}",
        if blocked { "no reply" } else { "a reply" },
        HELD.as_millis(),
        if answered {
            format!("its reply came {after_ms:.1} ms after A closed")
        } else {
            "still no reply 5 s after A closed".into()
        }
    );
    Ok(Outcome {
        figure,
        figures: vec![
            ("b_blocked", f64::from(u8::from(blocked))),
            ("b_reply_after_a_closed_ms", after_ms),
        ],
        holds: blocked && answered,
    })
}

/// RSS and threads a server adds for `n` idle connections (after one, so
/// first-use allocations are in the baseline): bytes and threads per
/// connection.
fn idle_cost(env: &Env, model: Model, n: usize) -> Result<(f64, f64)> {
    let (mut server, warm, _) = env.serve_holding(model, 1)?;
    let (rss0, _) = server.memory()?;
    let threads0 = proctree::threads(server.pid())?;
    let held = connect_idle(server.addr, n)?;
    let got = server.wait_accepted(n as u64 + 1, PATIENCE)?;
    // Let the last threads start.
    std::thread::sleep(Duration::from_millis(100));
    let (rss1, _) = server.memory()?;
    let threads1 = proctree::threads(server.pid())?;
    drop((warm, held));
    server.stop()?;
    if got < n as u64 + 1 {
        bail!("{model} accepted only {got} of {} connections", n + 1);
    }
    Ok((
        rss1.saturating_sub(rss0) as f64 / n as f64,
        threads1.saturating_sub(threads0) as f64 / n as f64,
    ))
}

fn thread_per_connection(env: &Env) -> Result<Outcome> {
    let (thr_bytes, thr_threads) = idle_cost(env, Model::Threaded, 200)?;
    let (ep_bytes, ep_threads) = idle_cost(env, Model::Epoll, 200)?;
    let mut sleeps = Vec::new();
    for model in [Model::Threaded, Model::Epoll] {
        let mut server = env.serve(model, &[])?;
        let w = load(&mut server, 50, None, 0.4)?;
        server.stop()?;
        sleeps.push(per_rt(&w, |s| s.vcsw)?);
    }
    let figure = format!(
        "per idle connection: threaded {thr_threads:.2} threads, {:.1} KiB; epoll {ep_threads:.2} threads, {:.1} KiB. Context switches per round trip: threaded {:.2}, epoll {:.2}",
        thr_bytes / 1024.0,
        ep_bytes / 1024.0,
        sleeps[0],
        sleeps[1]
    );
    Ok(Outcome {
        figure,
        figures: vec![
            ("threaded_bytes_per_conn", thr_bytes),
            ("epoll_bytes_per_conn", ep_bytes),
            ("threaded_threads_per_conn", thr_threads),
            ("threaded_switches_per_rt", sleeps[0]),
            ("epoll_switches_per_rt", sleeps[1]),
        ],
        holds: thr_threads >= 0.99 && thr_bytes > ep_bytes && sleeps[0] >= 0.5,
    })
}

fn pool_bounded(env: &Env) -> Result<Outcome> {
    let workers = 4;
    let mut server = env.serve(Model::Pool, &["--workers", "4"])?;
    let threads0 = proctree::threads(server.pid())?;
    let mut idle = connect_idle(server.addr, workers)?;
    server.wait_accepted(workers as u64, PATIENCE)?;
    // Workers may start on demand: count them once all are busy.
    std::thread::sleep(Duration::from_millis(100));
    let threads4 = proctree::threads(server.pid())?;
    let mut fifth = TcpStream::connect(server.addr)?;
    let blocked = !round_trip(&mut fifth, b"fifth\n", HELD)?;
    let more = connect_idle(server.addr, 45)?;
    std::thread::sleep(Duration::from_millis(100));
    let threads50 = proctree::threads(server.pid())?;
    let left = Instant::now();
    idle.pop();
    let answered = replied(&mut fifth, b"fifth\n", PATIENCE)?;
    let after_ms = left.elapsed().as_secs_f64() * 1e3;
    drop((idle, more, fifth));
    server.stop()?;
    let figure = format!(
        "threads: {threads0} before any client, {threads4} with 4, {threads50} with 50 connections; the 5th client: {} in {} ms behind 4 idle ones, {}",
        if blocked { "no reply" } else { "a reply" },
        HELD.as_millis(),
        if answered {
            format!("its reply {after_ms:.1} ms after one of them left")
        } else {
            "still none 5 s after one of them left".into()
        }
    );
    Ok(Outcome {
        figure,
        figures: vec![
            ("threads_before", threads0 as f64),
            ("threads_with_4_conns", threads4 as f64),
            ("threads_with_50_conns", threads50 as f64),
            ("fifth_blocked", f64::from(u8::from(blocked))),
            ("fifth_reply_after_idle_left_ms", after_ms),
        ],
        holds: threads50 <= threads4 && blocked && answered,
    })
}

/// A server's threads over `secs` with `n` idle connections, in percent
/// of the wall time: on a CPU, and on a CPU or waiting in a run queue for
/// one (what it would have burnt on a CPU of its own; the machine's other
/// tenants may hold the CPU it is pinned to).
fn idle_cpu(env: &Env, model: Model, n: usize, secs: f64) -> Result<(f64, f64)> {
    let (server, held, _) = env.serve_holding(model, n)?;
    let sched = || {
        proctree::sched_ns(server.pid())
            .ok_or_else(|| anyhow!("no /proc/PID/task/TID/schedstat on this kernel"))
    };
    let (run0, wait0) = sched()?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (run1, wait1) = sched()?;
    let wall_ns = t0.elapsed().as_nanos() as f64;
    drop(held);
    server.stop()?;
    let run = (run1 - run0) as f64;
    let wanted = run + (wait1 - wait0) as f64;
    Ok((run / wall_ns * 100.0, wanted / wall_ns * 100.0))
}

fn busy_poll_idle(env: &Env) -> Result<Outcome> {
    let (busy, busy_wanted) = idle_cpu(env, Model::BusyPoll, 10, 0.5)?;
    let (epoll, epoll_wanted) = idle_cpu(env, Model::Epoll, 10, 0.5)?;
    Ok(Outcome {
        figure: format!(
            "idle: busy-poll on a CPU {busy:.0}% of the time, runnable {busy_wanted:.0}% (the rest queued behind the CPU's other tasks); epoll on a CPU {epoll:.2}%, runnable {epoll_wanted:.2}%"
        ),
        figures: vec![
            ("busy_poll_cpu_pct", busy),
            ("busy_poll_runnable_pct", busy_wanted),
            ("epoll_cpu_pct", epoll),
            ("epoll_runnable_pct", epoll_wanted),
        ],
        holds: busy_wanted >= 90.0 && epoll_wanted <= 5.0,
    })
}

/// Connections served and refused of `n` opened to `model`.
fn served_of(env: &Env, model: Model, n: usize) -> Result<(u64, u64)> {
    let (mut server, held, accepted) = env.serve_holding(model, n)?;
    let refused = server.stats()?.counters.refused;
    drop(held);
    server.stop()?;
    Ok((accepted - refused, refused))
}

fn select_fd_limit(env: &Env) -> Result<Outcome> {
    let n = 1100;
    let limit = iomux::sys::raise_nofile_limit(Some(4096)).context("raising RLIMIT_NOFILE")?;
    if limit < 2 * n as u64 + 64 {
        bail!("RLIMIT_NOFILE is {limit}; this needs {}", 2 * n + 64);
    }
    let (sel_served, sel_refused) = served_of(env, Model::Select, n)?;
    let (poll_served, poll_refused) = served_of(env, Model::Poll, n)?;
    Ok(Outcome {
        figure: format!(
            "of {n} connections: select served {sel_served}, refused {sel_refused}; poll served {poll_served}, refused {poll_refused}"
        ),
        figures: vec![
            ("select_served", sel_served as f64),
            ("select_refused", sel_refused as f64),
            ("poll_served", poll_served as f64),
            ("poll_refused", poll_refused as f64),
        ],
        holds: sel_refused > 0 && sel_served < 1024 && poll_refused == 0 && poll_served == n as u64,
    })
}

/// Server CPU microseconds per round trip of one connection paced at
/// 2,000/s beside `idle` idle connections.
fn cpu_per_rt_beside(env: &Env, model: Model, idle: usize) -> Result<f64> {
    let (mut server, held, _) = env.serve_holding(model, idle)?;
    let w = load(&mut server, 1, Some(2000.0), 0.4)?;
    drop(held);
    server.stop()?;
    per_rt(&w, |s| s.cpu_us)
}

fn scan_cost(env: &Env) -> Result<Outcome> {
    let mut figures = Vec::new();
    let mut ratios = Vec::new();
    let mut words = Vec::new();
    for (model, name) in [
        (Model::Select, "select"),
        (Model::Poll, "poll"),
        (Model::Epoll, "epoll"),
    ] {
        let few = cpu_per_rt_beside(env, model, 10)?;
        let many = cpu_per_rt_beside(env, model, 900)?;
        let ratio = many / few;
        words.push(format!("{name} {few:.0} -> {many:.0} us (x{ratio:.2})"));
        figures.push((name, ratio));
        ratios.push(ratio);
    }
    Ok(Outcome {
        figure: format!(
            "CPU per round trip beside 10 -> 900 idle fds: {}",
            words.join(", ")
        ),
        figures: vec![
            ("select_900_over_10", ratios[0]),
            ("poll_900_over_10", ratios[1]),
            ("epoll_900_over_10", ratios[2]),
        ],
        holds: ratios[0] >= 1.5 && ratios[1] >= 1.5 && ratios[2] <= 1.3,
    })
}

/// Rounds of a two-server comparison: each round measures both, seconds
/// apart, so that their ratio cancels most of a shared machine's drift.
const ROUNDS: usize = 5;

/// A two-server comparison: the medians of each one's figure, and the
/// median of the per-round ratios (second / first).
struct Paired {
    first: f64,
    second: f64,
    ratio: f64,
}

/// Measures `figure` on a fresh server of each of `models`, `ROUNDS`
/// times over.
fn paired_rounds(
    env: &Env,
    models: [Model; 2],
    figure: impl Fn(&mut ServerProc) -> Result<f64>,
) -> Result<Paired> {
    let (mut first, mut second, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let mut v = [0.0; 2];
        for (i, model) in models.into_iter().enumerate() {
            let mut server = env.serve(model, &[])?;
            v[i] = figure(&mut server)?;
            server.stop()?;
        }
        first.push(v[0]);
        second.push(v[1]);
        ratios.push(v[1] / v[0]);
    }
    Ok(Paired {
        first: median(first),
        second: median(second),
        ratio: median(ratios),
    })
}

/// The median of `v` (not empty).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn one_connection(env: &Env) -> Result<Outcome> {
    let rounds = paired_rounds(env, [Model::Blocking, Model::Epoll], |server| {
        Ok(rt_per_s(&load(server, 1, None, 0.3)?))
    })?;
    let (b, e, ratio) = (rounds.first, rounds.second, rounds.ratio);
    Ok(Outcome {
        figure: format!(
            "one connection: blocking {b:.0} round trips/s, epoll {e:.0} (epoll/blocking {ratio:.2}, median of {ROUNDS} rounds)"
        ),
        figures: vec![
            ("blocking_rt_per_s", b),
            ("epoll_rt_per_s", e),
            ("epoll_over_blocking", ratio),
        ],
        holds: ratio <= 1.10,
    })
}

/// The quick client's median and worst round trip in milliseconds beside a
/// client whose every line costs `WORK_MS`.
fn quick_beside_slow(env: &Env, offload: bool) -> Result<(f64, f64)> {
    let work = WORK_MS.to_string();
    let mut extra = vec!["--protocol", "slow-upper", "--work-ms", &work];
    if offload {
        extra.push("--offload");
    }
    // Not pinned: the offload pool's threads may use every CPU.
    let server = env.serve_on(Model::Epoll, &extra, false)?;
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let slow = {
        let stop = stop.clone();
        std::thread::spawn(move || slow_client(addr, &stop))
    };
    std::thread::sleep(Duration::from_millis(50));
    let mut quick = TcpStream::connect(addr)?;
    let mut times = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(1) && times.len() < 10_000 {
        let t = Instant::now();
        if !round_trip(&mut quick, b"q", PATIENCE)? {
            bail!("the quick client got no reply in 5 s");
        }
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    stop.store(true, Ordering::Relaxed);
    let lines = slow
        .join()
        .map_err(|_| anyhow!("the slow client panicked"))??;
    drop(quick);
    server.stop()?;
    if lines == 0 {
        bail!("the slow client got no line answered");
    }
    let worst = times.iter().copied().fold(0.0, f64::max);
    Ok((median(times), worst))
}

/// Sends lines (each costing the server `WORK_MS`) until `stop`; returns
/// how many were answered.
fn slow_client(addr: SocketAddr, stop: &AtomicBool) -> Result<u64> {
    let mut s = TcpStream::connect(addr)?;
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) && n < 1000 {
        if !round_trip(&mut s, b"s\n", PATIENCE)? {
            bail!("a slow line got no reply in 5 s");
        }
        n += 1;
    }
    Ok(n)
}

fn slow_handler(env: &Env) -> Result<Outcome> {
    let (stalled, stalled_worst) = quick_beside_slow(env, false)?;
    let (offloaded, offloaded_worst) = quick_beside_slow(env, true)?;
    let work = f64::from(WORK_MS);
    Ok(Outcome {
        figure: format!(
            "quick client's round trip beside {WORK_MS} ms lines: median {stalled:.2} ms (worst {stalled_worst:.1}) on the loop, {offloaded:.2} ms (worst {offloaded_worst:.1}) with --offload"
        ),
        figures: vec![
            ("stalled_median_ms", stalled),
            ("stalled_worst_ms", stalled_worst),
            ("offloaded_median_ms", offloaded),
            ("offloaded_worst_ms", offloaded_worst),
        ],
        holds: stalled >= work / 2.0 && offloaded <= work / 10.0,
    })
}

fn completion_vs_readiness(env: &Env) -> Result<Outcome> {
    iomux::uring::probe().map_err(|why| anyhow!("io_uring unavailable: {why}"))?;
    let pair = [Model::Epoll, Model::Uring];
    let cpu = paired_rounds(env, pair, |server| {
        per_rt(&load(server, 100, Some(20_000.0), 0.3)?, |s| s.cpu_us)
    })?;
    let closed = paired_rounds(env, pair, |server| {
        Ok(rt_per_s(&load(server, 100, None, 0.3)?))
    })?;
    Ok(Outcome {
        figure: format!(
            "CPU per round trip at 20k/s: uring {:.1} us, epoll {:.1} us (uring/epoll {:.2}); closed loop: uring {:.0} round trips/s, epoll {:.0} (uring/epoll {:.2}); medians of {ROUNDS} rounds",
            cpu.second, cpu.first, cpu.ratio, closed.second, closed.first, closed.ratio
        ),
        figures: vec![
            ("uring_cpu_us_per_rt", cpu.second),
            ("epoll_cpu_us_per_rt", cpu.first),
            ("uring_over_epoll_cpu", cpu.ratio),
            ("uring_closed_rt_per_s", closed.second),
            ("epoll_closed_rt_per_s", closed.first),
            ("uring_over_epoll_closed_rt", closed.ratio),
        ],
        holds: cpu.ratio <= 0.95,
    })
}

/// Runs every claim's measurement and prints the report.
pub fn run(args: &LessonsArgs) -> Result<()> {
    let started = Instant::now();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let env = Env { pin: cpus >= 2 };
    if env.pin {
        let load: Vec<usize> = (1..cpus).collect();
        iomux::sys::pin_to_cpus(&load).context("pinning the load generator")?;
    }
    iomux::sys::raise_nofile_limit(Some(4096)).context("raising RLIMIT_NOFILE")?;
    let mut claims = Vec::new();
    for (i, c) in CLAIMS.iter().enumerate() {
        eprintln!("lessons: {}/{}: {}", i + 1, CLAIMS.len(), c.id);
        let t = Instant::now();
        let (figure, figures, verdict) = match (c.measure)(&env) {
            Ok(o) => (
                o.figure,
                o.figures
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                Verdict::of(o.holds),
            ),
            Err(e) => (format!("{e:#}"), BTreeMap::new(), Verdict::NotMeasured),
        };
        claims.push(Finding {
            id: c.id,
            claim: c.claim,
            seeds: c.seeds,
            measurement: c.measurement.to_string(),
            figure,
            figures,
            verdict,
            secs: t.elapsed().as_secs_f64(),
        });
    }
    let report = Lessons {
        cpus,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .into(),
        pinned: env.pin,
        claims,
        wall_s: started.elapsed().as_secs_f64(),
    };
    print!("{}", text(&report));
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("lessons: JSON written to {}", path.display());
    }
    Ok(())
}

/// The report as text.
fn text(r: &Lessons) -> String {
    let mut out = format!(
        "iomux lessons: {} CPUs, kernel {}{}\n\n",
        r.cpus,
        r.kernel,
        if r.pinned {
            ", servers on CPU 0 and the load on the others"
        } else {
            " (not pinned)"
        }
    );
    for (i, c) in r.claims.iter().enumerate() {
        out += &format!(
            "{:>2}. {}\n    seeds:    {}\n    measured: {}\n    figure:   {}\n    verdict:  {}\n\n",
            i + 1,
            c.claim,
            c.seeds.join(", "),
            c.measurement,
            c.figure,
            c.verdict.words().to_uppercase()
        );
    }
    let holds = r
        .claims
        .iter()
        .filter(|c| c.verdict == Verdict::Holds)
        .count();
    out += &format!(
        "{holds} of {} claims hold on this machine ({:.1} s)\n",
        r.claims.len(),
        r.wall_s
    );
    out
}
