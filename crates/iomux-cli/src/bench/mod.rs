//! `iomux bench`: every model side by side, in one run.
//!
//! For each model and each connection count the bench starts a fresh server
//! as a child process of this binary, pinned to CPU 0 (when the machine has
//! two or more), with the load generator pinned to the other CPUs. A server
//! with N loops (`--server-threads`) is pinned to CPUs 0 to N-1, and the
//! load generator to the CPUs left, or to all of them, shared, when none is
//! left. It runs three kinds of measurement:
//!
//! 1. **closed loop** (`--conns`): as many round trips as the server answers:
//!    throughput and latency;
//! 2. **paced** (`--rate` over `--paced-conns`): the same offered load for
//!    every model, so that server CPU per round trip is comparable; at full
//!    load a faster server just polls more often and still shows a busy core;
//! 3. **idle** (`--idle-conns` for `--idle-secs`): the CPU a server burns
//!    doing nothing, and **memory per idle connection** at `--mem-conns`.
//!
//! Server CPU comes from the server's own `getrusage` (microseconds, all
//! threads), read through its control channel at the window's edges, as do
//! its counters (recv, send, wait and ctl calls). Memory comes from
//! `/proc/PID/status`.
//!
//! Any other server can run beside them (`--server NAME=CMD`): it is
//! started, pinned and loaded the same way; its CPU and memory are read
//! from `/proc` for its whole process tree, and the counters only our
//! servers keep are reported as `-` (null in JSON).
//!
//! `--addr HOST:PORT` measures a server that is already running (one of
//! ours, a balancer in front of several, anything speaking the protocol):
//! throughput and latency only, since its counters cannot be read; its CPU
//! too if `pid=` names its processes (read from `/proc`).

pub mod load;
mod plot;
pub mod proctree;
mod report;
pub mod server;

use std::io::IsTerminal;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use iomux::protocol::Protocol;
use iomux::server::Model;
use serde::Serialize;

use load::{LoadSpec, Probe};
use server::{ServerProc, Stats};

/// Flags of `iomux bench`, as typed.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Models to run, comma-separated (see `iomux serve --help`), or `all`.
    #[arg(long, default_value = "all")]
    pub models: String,
    /// Connection counts for the closed-loop runs, comma-separated.
    #[arg(long, default_value = "1,100,1000")]
    pub conns: String,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Messages in flight per connection (pipelining depth).
    #[arg(long, default_value_t = 1)]
    pub depth: usize,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 0.4)]
    pub duration: f64,
    /// Warm-up seconds before each measured window.
    #[arg(long, default_value_t = 0.15)]
    pub warmup: f64,
    /// Rounds of every load configuration; each row reports the median
    /// round.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Total round trips per second of the paced runs; 0 skips them.
    #[arg(long, default_value_t = 40_000.0)]
    pub rate: f64,
    /// Connection counts for the paced runs, comma-separated.
    #[arg(long, default_value = "100,1000")]
    pub paced_conns: String,
    /// Idle connections for the idle-CPU measurement; 0 skips it.
    #[arg(long, default_value_t = 100)]
    pub idle_conns: usize,
    /// Seconds the idle-CPU measurement lasts.
    #[arg(long, default_value_t = 2.0)]
    pub idle_secs: f64,
    /// Idle connections for the memory measurement; 0 skips it.
    #[arg(long, default_value_t = 10_000)]
    pub mem_conns: usize,
    /// A short run: 1 and 100 connections, one round of at most 0.4 s
    /// windows, 2,000 idle connections for memory, 0.5 s of idle CPU.
    #[arg(long)]
    pub quick: bool,
    /// Also run the peers: a tokio (current_thread) server speaking the
    /// same protocol, as the idiomatic Rust baseline.
    #[arg(long)]
    pub peers: bool,
    /// Also run any server speaking --protocol, as NAME=CMD (repeatable):
    /// CMD runs under `sh -c`, with `{addr}` or `{port}` replaced by a free
    /// loopback address or port, e.g.
    /// `--server socat='socat TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr EXEC:cat'`.
    #[arg(long = "server", value_name = "NAME=CMD")]
    pub servers: Vec<String>,
    /// The protocol every server speaks, and replies are checked against:
    /// upper or echo.
    #[arg(long, default_value = "upper")]
    pub protocol: Protocol,
    /// Write every figure as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write SVG charts into this directory.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Workers of the pool model.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Loops of the epoll, coroutine and uring servers (`serve --threads`),
    /// comma-separated: `1,2` runs each of them with 1 and with 2. The other
    /// models run with 1. A server with N loops is pinned to CPUs 0 to N-1.
    #[arg(long, default_value = "1")]
    pub server_threads: String,
    /// Measure a server already running at this loopback address
    /// (repeatable), for throughput and latency; its counters show as `-`.
    /// `,pid=PID` (repeatable) names a process whose CPU (from
    /// /proc/PID/stat) counts as the server's, e.g.
    /// `--addr 127.0.0.1:8000,pid=4242,pid=4243` for a balancer and the
    /// instance behind it. With --addr, models run only if --models names
    /// them.
    #[arg(long, value_name = "HOST:PORT[,pid=PID]...")]
    pub addr: Vec<String>,
    /// uring's batch wait (`serve --uring-batch-wait`), comma-separated:
    /// `0,100us` runs uring without it and with 100 µs (as `uring+100us`).
    /// Every uring row also gets its CPU per round trip against epoll's.
    #[arg(long, default_value = "0")]
    pub uring_batch_wait: String,
    /// Latency budgets (`serve --latency-budget`), comma-separated: `0,1ms`
    /// runs select, poll, epoll, coroutine and uring without a budget and
    /// with 1 ms (as `epoll+budget1ms`). Every row with a budget gets its
    /// CPU per round trip, p99 and round trips/s against the same model
    /// without one.
    #[arg(long, default_value = "0")]
    pub latency_budget: String,
}

/// A server already running, as `--addr` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningServer {
    /// Where it listens: a loopback address.
    pub addr: SocketAddr,
    /// Processes whose CPU counts as the server's.
    pub pids: Vec<u32>,
}

impl std::str::FromStr for RunningServer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(',');
        let first = parts.next().unwrap_or_default().trim();
        let addr: SocketAddr = first.parse().map_err(|_| {
            format!("{first:?} is not an address; write HOST:PORT, e.g. 127.0.0.1:8000")
        })?;
        if !addr.ip().is_loopback() {
            return Err(format!(
                "{addr} is not a loopback address: the bench measures servers on this machine only (127.0.0.1, ::1)"
            ));
        }
        let pids = parts
            .map(|p| {
                p.trim()
                    .strip_prefix("pid=")
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| {
                        format!("{p:?}: after the address, only pid=PID, e.g. {addr},pid=4242")
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(RunningServer { addr, pids })
    }
}

impl RunningServer {
    /// Its readings: the CPU time of its processes as `cpu_us`, every
    /// other field 0 (its counters cannot be read).
    fn stats(&self) -> Result<Stats> {
        let cpu_us = self
            .pids
            .iter()
            .map(|&pid| proctree::cpu_us(pid))
            .sum::<Result<u64>>()?;
        Ok(Stats {
            cpu_us,
            ..Stats::default()
        })
    }

    /// The peak resident memory (VmHWM) of its processes, summed, if they
    /// are named and readable.
    fn peak_rss(&self) -> Option<u64> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids
            .iter()
            .map(|&pid| proctree::memory(pid).map(|(_, peak)| peak))
            .sum::<Result<u64>>()
            .ok()
    }
}

/// A server kind the bench measures: one of our models, a peer, any
/// other server it starts (`--server`), or a server already running
/// (`--addr`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// An iomux model.
    Model(Model),
    /// The tokio current_thread peer.
    Tokio,
    /// A server already running at this address (`--addr`).
    Running(SocketAddr),
    /// Any server, started as `sh -c CMD` (`--server NAME=CMD`).
    Foreign {
        /// Its name in reports.
        name: &'static str,
        /// Its command line, `{addr}` and `{port}` not yet replaced.
        cmd: &'static str,
    },
}

impl Subject {
    /// Its name in reports.
    pub fn name(self) -> String {
        match self {
            Subject::Model(m) => m.name().into(),
            Subject::Tokio => "tokio".into(),
            Subject::Running(addr) => addr.to_string(),
            Subject::Foreign { name, .. } => name.into(),
        }
    }

    /// Whether it keeps the counters of our servers (read through the
    /// control channel): the models and the tokio peer do.
    fn keeps_counters(self) -> bool {
        matches!(self, Subject::Model(_) | Subject::Tokio)
    }
}

/// A `--server NAME=CMD` as a subject. Its two strings live as long as the
/// process (a handful per run), so that subjects stay `Copy`.
fn foreign_subject(spec: &str) -> Result<Subject> {
    let (name, cmd) = spec
        .split_once('=')
        .map(|(n, c)| (n.trim(), c.trim()))
        .filter(|(n, c)| !n.is_empty() && !c.is_empty())
        .ok_or_else(|| {
            anyhow!("--server {spec:?}: expected NAME=CMD, e.g. --server socat='socat TCP-LISTEN:{{port}},bind=127.0.0.1,fork,reuseaddr EXEC:cat'")
        })?;
    if !cmd.contains("{addr}") && !cmd.contains("{port}") {
        bail!("--server {name}: CMD must listen where the bench says: put {{addr}} (127.0.0.1:PORT) or {{port}} in it");
    }
    if name == "tokio" || name.parse::<Model>().is_ok() {
        bail!("--server {name}: that name is a model's or peer's; pick another");
    }
    Ok(Subject::Foreign {
        name: Box::leak(name.to_string().into_boxed_str()),
        cmd: Box::leak(cmd.to_string().into_boxed_str()),
    })
}

/// A server the bench starts: a subject, with its loops.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Target {
    subject: Subject,
    /// Loops, each on its own thread (`serve --threads`); 1 for the models
    /// that run one, and for the tokio peer (`current_thread`).
    threads: usize,
    /// uring's batch wait in microseconds (0: none).
    batch_wait_us: u32,
    /// The latency budget in microseconds (0: none).
    budget_us: u32,
}

impl Target {
    fn new(subject: Subject, threads: usize) -> Target {
        Target {
            subject,
            threads,
            batch_wait_us: 0,
            budget_us: 0,
        }
    }

    /// Its name in reports: the model, with its batch wait or latency
    /// budget if any (`uring+100us`, `epoll+budget1ms`).
    fn name(self) -> String {
        if self.batch_wait_us > 0 {
            format!("{}+{}us", self.subject.name(), self.batch_wait_us)
        } else if self.budget_us > 0 {
            format!("{}+budget{}", self.subject.name(), micros(self.budget_us))
        } else {
            self.subject.name()
        }
    }

    /// Its name in progress lines and charts: `epoll`, or `epoll x2`.
    fn label(self) -> String {
        label(&self.name(), self.threads)
    }
}

/// `1ms` or `250us`.
fn micros(us: u32) -> String {
    if us % 1000 == 0 {
        format!("{}ms", us / 1000)
    } else {
        format!("{us}us")
    }
}

/// A comma-separated list of durations for `--{flag}`, in microseconds,
/// each 0 (none) or 1 µs to `max`, without repeats.
fn parse_micros(flag: &str, s: &str, max: Duration, example: &str) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for w in s.split(',').map(str::trim) {
        let d = crate::serve::parse_duration(w).map_err(|e| anyhow!("--{flag}: {e}"))?;
        let us = u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
        if d > max || (us == 0 && !d.is_zero()) {
            bail!(
                "--{flag} takes durations of 0 (none) or 1us to {}, e.g. {example}",
                micros(max.as_micros() as u32)
            );
        }
        if !out.contains(&us) {
            out.push(us);
        }
    }
    Ok(out)
}

/// A server's name in progress lines and charts: the model, and its loops
/// if more than one (`epoll x2`).
fn label(model: &str, threads: usize) -> String {
    if threads > 1 {
        format!("{model} x{threads}")
    } else {
        model.to_string()
    }
}

/// The validated bench plan.
#[derive(Clone, Debug)]
pub struct Plan {
    subjects: Vec<Target>,
    conns: Vec<usize>,
    paced_conns: Vec<usize>,
    size: usize,
    depth: usize,
    duration: Duration,
    warmup: Duration,
    rate: f64,
    idle_conns: usize,
    idle_time: Duration,
    mem_conns: usize,
    workers: usize,
    json: Option<PathBuf>,
    plot: Option<PathBuf>,
    /// Whether servers and the load generator are pinned (two CPUs or more).
    pin: bool,
    /// CPUs this process could run on before pinning.
    cpus: usize,
    rounds: usize,
    /// The servers of `--addr`.
    running: Vec<RunningServer>,
    protocol: Protocol,
}

impl Plan {
    /// The `--addr` server listening at `addr`.
    fn running(&self, addr: SocketAddr) -> &RunningServer {
        self.running
            .iter()
            .find(|r| r.addr == addr)
            .expect("every running subject comes from --addr")
    }

    /// The CPUs a server with `threads` loops is pinned to: 0 to N-1 (all
    /// of them, if N is more).
    fn server_cpus(&self, threads: usize) -> Vec<usize> {
        (0..threads.clamp(1, self.cpus)).collect()
    }

    /// The CPUs of the load generator beside such a server: those left, or
    /// all of them when the server takes every one (it then shares them).
    fn load_cpus(&self, threads: usize) -> Vec<usize> {
        let taken = threads.clamp(1, self.cpus);
        if taken < self.cpus {
            (taken..self.cpus).collect()
        } else {
            (0..self.cpus).collect()
        }
    }
}

fn parse_list(what: &str, s: &str) -> Result<Vec<usize>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            p.trim()
                .parse()
                .with_context(|| format!("--{what}: {p:?} is not a whole number"))
        })
        .collect()
}

impl BenchArgs {
    /// Checks the flags and turns them into a plan.
    pub fn plan(&self) -> Result<Plan> {
        let server_threads = parse_list("server-threads", &self.server_threads)?;
        if server_threads.is_empty() || server_threads.contains(&0) {
            bail!("--server-threads takes loop counts of at least 1, e.g. 1 or 1,2");
        }
        let batch_waits = parse_micros(
            "uring-batch-wait",
            &self.uring_batch_wait,
            iomux::server::Config::MAX_URING_BATCH_WAIT,
            "0,100us",
        )?;
        let budgets = parse_micros(
            "latency-budget",
            &self.latency_budget,
            iomux::server::Config::MAX_LATENCY_BUDGET,
            "0,1ms",
        )?;
        let running = self
            .addr
            .iter()
            .map(|a| {
                a.parse::<RunningServer>()
                    .map_err(|e| anyhow!("--addr {e}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut subjects = Vec::new();
        if !running.is_empty() && self.models == "all" {
            // The running servers alone, unless models are named.
        } else if self.models == "all" {
            subjects.extend(
                Model::ALL
                    .into_iter()
                    .filter(|m| m.is_supported())
                    .map(Subject::Model),
            );
        } else {
            for name in self.models.split(',').map(str::trim) {
                if name == "tokio" {
                    subjects.push(Subject::Tokio);
                } else {
                    let m: Model = name.parse().map_err(anyhow::Error::msg)?;
                    subjects.push(Subject::Model(m));
                }
            }
        }
        if self.peers && !subjects.contains(&Subject::Tokio) {
            subjects.push(Subject::Tokio);
        }
        for r in &running {
            if !subjects.contains(&Subject::Running(r.addr)) {
                subjects.push(Subject::Running(r.addr));
            }
        }
        for spec in &self.servers {
            let subject = foreign_subject(spec)?;
            if subjects.iter().any(|s| s.name() == subject.name()) {
                bail!("--server {}: named twice", subject.name());
            }
            subjects.push(subject);
        }
        if matches!(self.protocol, Protocol::SlowUpper(_)) {
            bail!("--protocol slow-upper is a slow handler, not I/O: the bench takes upper or echo (`iomux lessons` measures the slow handler)");
        }
        // Each subject at each loop count it can run: the others at 1 only
        // (the tokio peer is current_thread).
        let named = self.models != "all";
        let mut targets = Vec::new();
        for &subject in &subjects {
            if let Subject::Running(_) = subject {
                // Its loops are its own business.
                targets.push(Target::new(subject, 1));
                continue;
            }
            let multi = matches!(subject, Subject::Model(m) if m.supports_threads());
            let before = targets.len();
            let waits: &[u32] = if subject == Subject::Model(Model::Uring) {
                &batch_waits
            } else {
                &[0]
            };
            let budgeted = matches!(subject, Subject::Model(m) if m.supports_latency_budget());
            let budgets: &[u32] = if budgeted { &budgets } else { &[0] };
            for &threads in &server_threads {
                for &batch_wait_us in waits {
                    for &budget_us in budgets {
                        let t = Target {
                            batch_wait_us,
                            budget_us,
                            ..Target::new(subject, threads)
                        };
                        // Both set uring's wait: the server refuses that.
                        let both = batch_wait_us > 0 && budget_us > 0;
                        if (threads == 1 || multi) && !both && !targets.contains(&t) {
                            targets.push(t);
                        }
                    }
                }
            }
            if targets.len() == before && named {
                bail!(
                    "--server-threads {}: {} runs one loop; more are for epoll, coroutine and uring (add 1 to the list to run it)",
                    self.server_threads,
                    subject.name()
                );
            }
        }
        if targets.is_empty() {
            bail!("--server-threads {}: no model to run", self.server_threads);
        }
        let (mut conns, mut paced_conns) = (
            parse_list("conns", &self.conns)?,
            parse_list("paced-conns", &self.paced_conns)?,
        );
        let (mut duration, mut warmup, mut idle_secs, mut mem_conns) =
            (self.duration, self.warmup, self.idle_secs, self.mem_conns);
        if self.quick {
            conns.retain(|&c| c <= 100);
            paced_conns.retain(|&c| c <= 100);
            duration = duration.min(0.5);
            warmup = warmup.min(0.1);
            idle_secs = idle_secs.min(0.5);
            mem_conns = mem_conns.min(2_000);
        }
        if conns.iter().chain(&paced_conns).any(|&c| c == 0) {
            bail!("connection counts must be at least 1");
        }
        if self.size == 0 || self.depth == 0 || self.workers == 0 || self.rounds == 0 {
            bail!("--size, --depth, --workers and --rounds must be at least 1");
        }
        if !(duration > 0.0 && warmup >= 0.0 && idle_secs >= 0.0 && self.rate >= 0.0) {
            bail!("--duration must be positive; --warmup, --idle-secs and --rate not negative");
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Plan {
            subjects: targets,
            conns,
            paced_conns: if self.rate > 0.0 {
                paced_conns
            } else {
                Vec::new()
            },
            size: self.size,
            depth: self.depth,
            duration: Duration::from_secs_f64(duration),
            warmup: Duration::from_secs_f64(warmup),
            rate: self.rate,
            idle_conns: self.idle_conns,
            idle_time: Duration::from_secs_f64(idle_secs),
            mem_conns,
            workers: self.workers,
            json: self.json.clone(),
            plot: self.plot.clone(),
            pin: cpus >= 2,
            cpus,
            rounds: if self.quick { 1 } else { self.rounds },
            running,
            protocol: self.protocol,
        })
    }
}

/// One closed-loop or paced run.
#[derive(Clone, Debug, Serialize)]
pub struct RunRow {
    /// Model or peer.
    pub model: String,
    /// Loops of the server, each on its own thread (`serve --threads`).
    pub threads: usize,
    /// "closed" or "paced".
    pub shape: &'static str,
    /// Connections.
    pub conns: usize,
    /// Offered round trips/s (paced only).
    pub rate: Option<f64>,
    /// Why the run did not happen, or what went wrong.
    pub status: Option<String>,
    /// Round trips per second.
    pub rt_per_s: f64,
    /// Reply megabytes per second.
    pub mb_per_s: f64,
    /// Latency percentiles in microseconds.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Server CPU seconds per million round trips (`None` for a running
    /// server whose processes were not named).
    pub cpu_s_per_mrt: Option<f64>,
    /// Server CPU use over the window, in cores.
    pub server_cores: Option<f64>,
    /// Selector waits per round trip.
    pub waits_per_rt: Option<f64>,
    /// Counted syscalls (recv, send, wait, ctl) per round trip; for uring,
    /// its `io_uring_enter` calls (recv and send are submissions there).
    pub syscalls_per_rt: Option<f64>,
    /// The server's voluntary context switches per round trip: how often
    /// it went to sleep, and so had to be woken (on a VM, a cross-CPU
    /// wake-up is one of the dearest parts of a round trip).
    pub sleeps_per_rt: Option<f64>,
    /// Peak resident memory of the server, bytes.
    pub peak_rss: Option<u64>,
    /// Resident memory per connection above the idle server's, bytes.
    pub rss_per_conn: Option<f64>,
    /// Errors the load generator saw (wrong or missing bytes, resets).
    pub errors: u64,
    /// Paced messages that found every connection busy.
    pub late: u64,
    /// Rounds measured; the row is their median (see `--rounds`).
    pub rounds: usize,
    /// Server CPU per round trip divided by the tokio peer's at the same
    /// load, median of the per-round ratios (with `--peers`).
    pub cpu_vs_tokio: Option<f64>,
    /// Connections each loop accepted, with more than one loop.
    pub loop_conns: Vec<u64>,
    /// With more than one loop: round trips per second divided by those of
    /// the same model with one loop at the same load, median of the
    /// per-round ratios.
    pub rt_vs_one_loop: Option<f64>,
    /// The same for server CPU per round trip.
    pub cpu_vs_one_loop: Option<f64>,
    /// uring rows: CPU per round trip against epoll's with as many loops
    /// (and the same latency budget), the median of per-round ratios.
    pub cpu_vs_epoll: Option<f64>,
    /// Rows with a latency budget: against the same model without one.
    pub vs_no_budget: Option<VsNoBudget>,
}

/// A row with a latency budget against the same model without one at the
/// same load: each figure the median of per-round ratios.
#[derive(Copy, Clone, Debug, Serialize)]
pub struct VsNoBudget {
    /// Server CPU per round trip.
    pub cpu: f64,
    /// p99 latency.
    pub p99: f64,
    /// Round trips per second.
    pub rt: f64,
}

/// CPU burned with idle connections.
#[derive(Clone, Debug, Serialize)]
pub struct IdleRow {
    /// Model or peer.
    pub model: String,
    /// Loops of the server.
    pub threads: usize,
    /// Idle connections held.
    pub conns: usize,
    /// Why it was not measured.
    pub status: Option<String>,
    /// Server CPU over the idle window, percent of one core.
    pub cpu_pct: f64,
}

/// Memory per idle connection.
#[derive(Clone, Debug, Serialize)]
pub struct MemRow {
    /// Model or peer.
    pub model: String,
    /// Loops of the server.
    pub threads: usize,
    /// Connections held.
    pub conns: usize,
    /// Why it was not measured.
    pub status: Option<String>,
    /// Resident bytes before the connections.
    pub rss_before: u64,
    /// Resident bytes with them.
    pub rss_after: u64,
    /// The difference per connection.
    pub bytes_per_conn: f64,
}

/// Everything one `iomux bench` measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Machine and settings.
    pub setup: Setup,
    /// Closed-loop and paced runs.
    pub runs: Vec<RunRow>,
    /// Idle CPU.
    pub idle: Vec<IdleRow>,
    /// Memory per idle connection.
    pub memory: Vec<MemRow>,
}

/// The conditions of the run.
#[derive(Clone, Debug, Serialize)]
pub struct Setup {
    /// CPUs available.
    pub cpus: usize,
    /// Server CPU, if pinned (of a one-loop server; one with N loops is
    /// pinned to CPUs 0 to N-1).
    pub server_cpu: Option<usize>,
    /// The loop counts of `--server-threads`.
    pub server_threads: Vec<usize>,
    /// Message size.
    pub size: usize,
    /// Pipelining depth.
    pub depth: usize,
    /// Measured seconds per run.
    pub duration_s: f64,
    /// Rounds of each load configuration.
    pub rounds: usize,
    /// Kernel release.
    pub kernel: String,
    /// The protocol every server spoke.
    pub protocol: &'static str,
    /// The `--server` subjects, as given.
    pub servers: Vec<ForeignServer>,
}

/// A `--server NAME=CMD` subject.
#[derive(Clone, Debug, Serialize)]
pub struct ForeignServer {
    /// Its name in the rows.
    pub name: &'static str,
    /// Its command, before `{addr}` and `{port}` are replaced.
    pub cmd: &'static str,
}

/// Why `subject` cannot take `conns` connections, if it cannot: reported,
/// not run.
fn cannot_take(subject: Subject, conns: usize, workers: usize) -> Option<String> {
    match subject {
        Subject::Model(Model::Blocking) if conns > 1 => {
            Some("serialized: serves one client at a time".into())
        }
        Subject::Model(Model::Pool) if conns > workers => Some(format!(
            "queued: {workers} workers, each held by one connection"
        )),
        // The server's own fds (stdio, listener, stop pipe) come first.
        Subject::Model(Model::Select)
            if conns + 16
                > iomux::selector::Backend::Select
                    .fd_limit()
                    .unwrap_or(usize::MAX) =>
        {
            Some("refused: fd limit (FD_SETSIZE 1024)".into())
        }
        Subject::Model(Model::Threaded) if conns > iomux::server::Config::default().max_conns => {
            Some("refused: over its thread limit".into())
        }
        _ => None,
    }
}

/// Starts `target` for one measurement: ours with its control channel, a
/// foreign one through `sh`, each on the CPUs the plan gives it.
fn start_server(target: Target, plan: &Plan) -> Result<ServerProc> {
    match target.subject {
        Subject::Foreign { name, cmd } => {
            let (cpus, load) = if plan.pin {
                (
                    plan.server_cpus(target.threads),
                    plan.load_cpus(target.threads),
                )
            } else {
                (Vec::new(), Vec::new())
            };
            ServerProc::start_foreign(name, cmd, &cpus, &load)
        }
        _ => ServerProc::start(&server_args(target, plan)),
    }
}

fn server_args(target: Target, plan: &Plan) -> Vec<String> {
    let mut args: Vec<String> = match target.subject {
        Subject::Model(m) => vec![
            "serve".into(),
            "--model".into(),
            m.name().into(),
            "--workers".into(),
            plan.workers.to_string(),
            "--max-conns".into(),
            "20000".into(),
            "--threads".into(),
            target.threads.to_string(),
        ],
        Subject::Tokio => vec!["peer-tokio".into()],
        Subject::Running(addr) => unreachable!("{addr} runs already: the bench starts nothing"),
        Subject::Foreign { .. } => unreachable!("foreign servers start through sh"),
    };
    args.extend(["--protocol".into(), plan.protocol.name().into()]);
    if target.batch_wait_us > 0 {
        args.extend([
            "--uring-batch-wait".into(),
            format!("{}us", target.batch_wait_us),
        ]);
    }
    if target.budget_us > 0 {
        args.extend(["--latency-budget".into(), format!("{}us", target.budget_us)]);
    }
    args.extend(["--addr".into(), "127.0.0.1:0".into(), "--control".into()]);
    if plan.pin {
        let cpus: Vec<String> = plan
            .server_cpus(target.threads)
            .iter()
            .map(usize::to_string)
            .collect();
        args.extend(["--pin-cpu".into(), cpus.join(",")]);
    }
    args
}

/// Reads the server's figures at the edges of the measured window with
/// `sample`, if there is one: ours answer through their control channel, a
/// foreign server's tree and a running server's processes are read from
/// `/proc`.
struct WindowProbe<'a> {
    sample: Option<&'a mut dyn FnMut() -> Result<Stats>>,
    start: Option<Stats>,
    end: Option<Stats>,
    failure: Option<String>,
}

impl WindowProbe<'_> {
    fn read(&mut self) -> Option<Stats> {
        let sample = self.sample.as_mut()?;
        sample()
            .map_err(|e| self.failure = Some(format!("server stats: {e:#}")))
            .ok()
    }
}

impl Probe for WindowProbe<'_> {
    fn window_start(&mut self) {
        self.start = self.read();
    }
    fn window_end(&mut self) {
        self.end = self.read();
    }
}

/// How much `field` grew from `a` to `b`.
fn delta(a: &Stats, b: &Stats, field: impl Fn(&Stats) -> u64) -> f64 {
    field(b) as f64 - field(a) as f64
}

fn empty_row(
    target: Target,
    shape: &'static str,
    conns: usize,
    rate: Option<f64>,
    status: String,
) -> RunRow {
    RunRow {
        model: target.name(),
        threads: target.threads,
        shape,
        conns,
        rate,
        status: Some(status),
        rt_per_s: 0.0,
        mb_per_s: 0.0,
        p50_us: 0.0,
        p99_us: 0.0,
        p999_us: 0.0,
        cpu_s_per_mrt: None,
        server_cores: None,
        waits_per_rt: None,
        syscalls_per_rt: None,
        sleeps_per_rt: None,
        peak_rss: None,
        rss_per_conn: None,
        errors: 0,
        late: 0,
        rounds: 1,
        cpu_vs_tokio: None,
        loop_conns: Vec::new(),
        rt_vs_one_loop: None,
        cpu_vs_one_loop: None,
        cpu_vs_epoll: None,
        vs_no_budget: None,
    }
}

/// Each loop's accepted connections, from a `stats` line, with more than
/// one loop.
fn loop_conns(stats: &Stats) -> Vec<u64> {
    if stats.loop_accepted.len() < 2 {
        return Vec::new();
    }
    stats.loop_accepted.clone()
}

/// What one load run against a server saw: the load generator's figures
/// and the server's readings at the window's edges.
pub struct Window {
    /// The load generator's figures.
    pub result: load::LoadResult,
    /// The server's readings at the start and end of the measured window:
    /// all its counters for ours; only `cpu_us` (and `accepted`) for a
    /// foreign server or a running one with `pid=`; none for a running
    /// one without.
    pub edges: Option<(Stats, Stats)>,
    /// Why the readings are missing, if a reading failed.
    pub failure: Option<String>,
}

impl Window {
    /// How much `field` grew over the window, if the server was read.
    pub fn delta(&self, field: impl Fn(&Stats) -> u64) -> Option<f64> {
        let (a, b) = self.edges.as_ref()?;
        Some(delta(a, b, field))
    }
}

/// Runs `spec`, reading the server with `sample` (if any) at the edges of
/// the measured window.
fn measure(spec: &LoadSpec, sample: Option<&mut dyn FnMut() -> Result<Stats>>) -> Result<Window> {
    let mut probe = WindowProbe {
        sample,
        start: None,
        end: None,
        failure: None,
    };
    let result = load::run(spec, &mut probe)?;
    Ok(Window {
        result,
        edges: probe.start.take().zip(probe.end.take()),
        failure: probe.failure.take(),
    })
}

/// Runs `spec` against `server`, reading its counters at the edges of the
/// measured window.
pub fn measure_load(server: &mut ServerProc, spec: &LoadSpec) -> Result<Window> {
    measure(spec, Some(&mut || server.stats()))
}

/// A server's memory over one load run, where it is known.
struct Memory {
    /// Peak resident bytes.
    peak: Option<u64>,
    /// Resident bytes per connection above the idle server's (only for a
    /// server the bench started, so measured idle first).
    per_conn: Option<f64>,
}

/// One load run against `target`: started and stopped around it, or, for
/// a running server, loaded where it listens.
fn run_load(target: Target, plan: &Plan, conns: usize, rate: Option<f64>) -> Result<RunRow> {
    let spec = |addr| LoadSpec {
        addr,
        conns,
        size: plan.size,
        depth: plan.depth,
        duration: plan.duration,
        warmup: plan.warmup,
        rate,
        protocol: plan.protocol,
    };
    let (window, memory) = if let Subject::Running(addr) = target.subject {
        let running = plan.running(addr);
        let mut sample = || running.stats();
        let sample: Option<&mut dyn FnMut() -> Result<Stats>> = if running.pids.is_empty() {
            None
        } else {
            Some(&mut sample)
        };
        let window = measure(&spec(addr), sample)?;
        let memory = Memory {
            peak: running.peak_rss(),
            per_conn: None,
        };
        (window, memory)
    } else {
        let mut server = start_server(target, plan)?;
        let (rss_idle, _) = server.memory()?;
        let spec = spec(server.addr);
        let window = measure_load(&mut server, &spec)?;
        let (rss_now, peak) = server.memory()?;
        server.stop()?;
        let memory = Memory {
            peak: Some(peak),
            per_conn: Some(rss_now.saturating_sub(rss_idle) as f64 / conns as f64),
        };
        (window, memory)
    };
    Ok(load_row(target, conns, rate, window, memory))
}

/// The row of one measured window. A figure the server could not give is
/// `None`: the counters only our servers keep (waits and syscalls: the
/// models; sleeps: the models and the tokio peer), CPU without readings
/// (a running server without `pid=`), memory per connection of a server
/// the bench did not start.
fn load_row(
    target: Target,
    conns: usize,
    rate: Option<f64>,
    window: Window,
    memory: Memory,
) -> RunRow {
    let subject = target.subject;
    let shape = if rate.is_some() { "paced" } else { "closed" };
    // A server the bench started is read at both edges or not measured.
    if window.edges.is_none() && !matches!(subject, Subject::Running(_)) {
        let why = window
            .failure
            .unwrap_or_else(|| "no measured window".into());
        return empty_row(target, shape, conns, rate, why);
    }
    let result = &window.result;
    let secs = result.elapsed.as_secs_f64().max(1e-9);
    let rts = result.round_trips as f64;
    let per_rt = |x: f64| if rts > 0.0 { Some(x / rts) } else { None };
    let is_model = matches!(subject, Subject::Model(_));
    let counter =
        |keeps: bool, f: &dyn Fn(&Stats) -> u64| window.delta(f).filter(|_| keeps).and_then(per_rt);
    // io_uring's recv and send are submissions, not syscalls: its only
    // kernel entry is io_uring_enter, which it counts as a wait.
    let uring = subject == Subject::Model(Model::Uring);
    let cpu_s = window.delta(|s| s.cpu_us).map(|us| us / 1e6);
    let h = &result.latency_ns;
    let mut status = window.failure.clone();
    if rts == 0.0 && status.is_none() {
        status = Some(format!(
            "no round trip completed in the {:.2} s window ({} of {conns} connected)",
            secs, result.connected
        ));
    }
    if result.errors > 0 {
        status = Some(format!(
            "{} errors: {}",
            result.errors,
            result.error_samples.join("; ")
        ));
    }
    RunRow {
        model: target.name(),
        threads: target.threads,
        shape,
        conns,
        rate,
        status,
        rt_per_s: rts / secs,
        mb_per_s: result.bytes as f64 / secs / 1e6,
        p50_us: h.value_at_quantile(0.50) as f64 / 1e3,
        p99_us: h.value_at_quantile(0.99) as f64 / 1e3,
        p999_us: h.value_at_quantile(0.999) as f64 / 1e3,
        cpu_s_per_mrt: cpu_s.and_then(|c| per_rt(c * 1e6)),
        server_cores: cpu_s.map(|c| c / secs),
        waits_per_rt: counter(is_model, &|s| s.counters.wait_calls),
        syscalls_per_rt: counter(is_model, &|s| {
            let c = &s.counters;
            let io = if uring {
                0
            } else {
                c.recv_calls + c.send_calls
            };
            io + c.wait_calls + c.ctl_calls
        }),
        sleeps_per_rt: counter(subject.keeps_counters(), &|s| s.vcsw),
        peak_rss: memory.peak,
        rss_per_conn: memory.per_conn,
        errors: result.errors,
        late: result.late,
        rounds: 1,
        cpu_vs_tokio: None,
        loop_conns: window
            .edges
            .as_ref()
            .map_or_else(Vec::new, |(_, s1)| loop_conns(s1)),
        rt_vs_one_loop: None,
        cpu_vs_one_loop: None,
        cpu_vs_epoll: None,
        vs_no_budget: None,
    }
}

/// Opens `n` connections to `addr` that send nothing, a few at a time.
pub fn connect_idle(addr: std::net::SocketAddr, n: usize) -> Result<Vec<TcpStream>> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        v.push(TcpStream::connect(addr).with_context(|| format!("idle connection #{i}"))?);
        if i % 64 == 63 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(v)
}

fn run_idle(target: Target, plan: &Plan) -> Result<IdleRow> {
    let (subject, conns) = (target.subject, plan.idle_conns);
    if let Some(reason) = cannot_take(subject, conns, plan.workers) {
        return Ok(IdleRow {
            model: target.name(),
            threads: target.threads,
            conns,
            status: Some(reason),
            cpu_pct: 0.0,
        });
    }
    let mut server = start_server(target, plan)?;
    let held = connect_idle(server.addr, conns)?;
    server.wait_accepted(conns as u64, Duration::from_secs(10))?;
    let c0 = server.stats()?;
    let t0 = Instant::now();
    std::thread::sleep(plan.idle_time);
    let c1 = server.stats()?;
    let secs = t0.elapsed().as_secs_f64();
    drop(held);
    server.stop()?;
    Ok(IdleRow {
        model: target.name(),
        threads: target.threads,
        conns,
        status: None,
        cpu_pct: delta(&c0, &c1, |s| s.cpu_us) / 1e6 / secs * 100.0,
    })
}

fn run_memory(target: Target, plan: &Plan) -> Result<MemRow> {
    let (subject, conns) = (target.subject, plan.mem_conns);
    let row = |status: String| MemRow {
        model: target.name(),
        threads: target.threads,
        conns,
        status: Some(status),
        rss_before: 0,
        rss_after: 0,
        bytes_per_conn: 0.0,
    };
    if let Some(reason) = cannot_take(subject, conns, plan.workers) {
        return Ok(row(reason));
    }
    if subject == Subject::Model(Model::BusyPoll) {
        return Ok(row("skipped: polls every connection on every pass".into()));
    }
    let mut server = start_server(target, plan)?;
    // One connection first, so first-use allocations are in the baseline.
    let warm = connect_idle(server.addr, 1)?;
    server.wait_accepted(1, Duration::from_secs(10))?;
    let (before, _) = server.memory()?;
    let held = connect_idle(server.addr, conns)?;
    let got = server.wait_accepted(conns as u64 + 1, Duration::from_secs(30))?;
    let (after, _) = server.memory()?;
    drop((warm, held));
    server.stop()?;
    if got < conns as u64 + 1 {
        return Ok(row(format!(
            "only {} of {conns} connections accepted",
            got.saturating_sub(1)
        )));
    }
    Ok(MemRow {
        model: target.name(),
        threads: target.threads,
        conns,
        status: None,
        rss_before: before,
        rss_after: after,
        bytes_per_conn: after.saturating_sub(before) as f64 / conns as f64,
    })
}

/// What identifies a load configuration: server, shape, connections.
type RunKey = (Target, &'static str, usize);

/// One measurement to make.
#[derive(Clone, Copy, Debug)]
enum Job {
    Load {
        target: Target,
        conns: usize,
        rate: Option<f64>,
    },
    Idle(Target),
    Memory(Target),
}

impl Job {
    fn target(self) -> Target {
        match self {
            Job::Load { target, .. } | Job::Idle(target) | Job::Memory(target) => target,
        }
    }
}

/// The order of the measurements. Every load configuration runs all its
/// subjects back to back, `rounds` times over: on a shared machine the cost
/// of a cross-core wake-up drifts by 2x over minutes (seen on this project's
/// 2-vCPU VMs), and subjects measured seconds apart see the same machine.
/// Memory runs come last: opening and closing 10,000 connections is the
/// heaviest thing the bench does to the kernel.
fn schedule(plan: &Plan) -> Vec<Job> {
    let mut jobs = Vec::new();
    let loads = plan
        .conns
        .iter()
        .map(|&c| (c, None))
        .chain(plan.paced_conns.iter().map(|&c| (c, Some(plan.rate))));
    for (conns, rate) in loads {
        for _ in 0..plan.rounds {
            for &target in &plan.subjects {
                jobs.push(Job::Load {
                    target,
                    conns,
                    rate,
                });
            }
        }
    }
    // A running server's memory and idle CPU are not ours to measure.
    let started = || {
        plan.subjects
            .iter()
            .filter(|t| !matches!(t.subject, Subject::Running(_)))
    };
    if plan.idle_conns > 0 {
        jobs.extend(started().map(|&s| Job::Idle(s)));
    }
    if plan.mem_conns > 0 {
        jobs.extend(started().map(|&s| Job::Memory(s)));
    }
    jobs
}

/// The round to report among several of one configuration: the median by
/// server CPU per round trip for paced runs (the figure they exist for), by
/// round trips per second for closed ones. Rows that failed are reported
/// as they are, so a failure in any round shows.
fn pick_median(mut rows: Vec<RunRow>) -> RunRow {
    if let Some(bad) = rows.iter().position(|r| r.status.is_some() || r.errors > 0) {
        let mut row = rows.swap_remove(bad);
        row.rounds = rows.len() + 1;
        return row;
    }
    let paced = rows[0].rate.is_some();
    rows.sort_by(|a, b| {
        let (x, y) = if paced {
            (
                a.cpu_s_per_mrt.unwrap_or(0.0),
                b.cpu_s_per_mrt.unwrap_or(0.0),
            )
        } else {
            (a.rt_per_s, b.rt_per_s)
        };
        x.total_cmp(&y)
    });
    let n = rows.len();
    let mut row = rows.swap_remove(n / 2);
    row.rounds = n;
    row
}

/// Each configuration's `value` as a ratio to that of its `baseline` (the
/// tokio peer, or the same model with one loop) at the same load: the
/// median of the per-round ratios; `None` where `baseline` gives none.
/// Subjects of one round run seconds apart, so a ratio within a round
/// cancels most of the machine's drift, which a ratio of medians over
/// minutes would not.
fn median_ratios(
    rounds: &[(RunKey, Vec<RunRow>)],
    baseline: impl Fn(Target) -> Option<Target>,
    value: impl Fn(&RunRow) -> f64,
) -> Vec<Option<f64>> {
    let ok = |r: &RunRow| r.status.is_none() && r.errors == 0 && value(r) > 0.0;
    rounds
        .iter()
        .map(|((target, shape, conns), rows)| {
            let base = baseline(*target)?;
            let (_, base_rows) = rounds
                .iter()
                .find(|((t, sh, c), _)| *t == base && sh == shape && c == conns)?;
            let mut per_round: Vec<f64> = rows
                .iter()
                .zip(base_rows)
                .filter(|(a, b)| ok(a) && ok(b))
                .map(|(a, b)| value(a) / value(b))
                .collect();
            if per_round.is_empty() {
                return None;
            }
            per_round.sort_by(f64::total_cmp);
            Some(per_round[per_round.len() / 2])
        })
        .collect()
}

/// Runs the plan, printing progress to stderr and the report to stdout.
pub fn run(args: &BenchArgs) -> Result<Report> {
    let plan = args.plan()?;
    // The load generator holds one fd per connection.
    let fd_limit = iomux::sys::raise_nofile_limit(None).context("raising RLIMIT_NOFILE")?;
    let jobs = schedule(&plan);
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(jobs.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} {bar:30} {pos}/{len} {msg}")
            .expect("valid template"),
    );
    let mut report = Report {
        setup: Setup {
            cpus: plan.cpus,
            server_cpu: plan.pin.then_some(0),
            server_threads: {
                let mut t: Vec<usize> = plan.subjects.iter().map(|t| t.threads).collect();
                t.sort_unstable();
                t.dedup();
                t
            },
            size: plan.size,
            depth: plan.depth,
            duration_s: plan.duration.as_secs_f64(),
            rounds: plan.rounds,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .into(),
            protocol: plan.protocol.name(),
            servers: plan
                .subjects
                .iter()
                .filter_map(|t| match t.subject {
                    Subject::Foreign { name, cmd } => Some(ForeignServer { name, cmd }),
                    _ => None,
                })
                .collect(),
        },
        runs: Vec::new(),
        idle: Vec::new(),
        memory: Vec::new(),
    };
    // Rounds of each (subject, shape, conns), in the order first seen.
    let mut rounds: Vec<(RunKey, Vec<RunRow>)> = Vec::new();
    for job in jobs {
        if plan.pin {
            // Beside this server: the CPUs it leaves, or all of them.
            let cpus = plan.load_cpus(job.target().threads);
            iomux::sys::pin_to_cpus(&cpus).context("pinning the load generator")?;
        }
        let what = match job {
            Job::Load {
                target,
                conns,
                rate,
            } => format!(
                "{} {} {conns}",
                target.label(),
                if rate.is_some() { "paced" } else { "closed" }
            ),
            Job::Idle(t) => format!("{} idle {}", t.label(), plan.idle_conns),
            Job::Memory(t) => format!("{} memory {}", t.label(), plan.mem_conns),
        };
        if bar.is_hidden() {
            eprintln!("bench: {what} connections");
        }
        bar.set_message(what);
        match job {
            Job::Load {
                target,
                conns,
                rate,
            } => {
                let shape = if rate.is_some() { "paced" } else { "closed" };
                let needed = (conns as u64) + 64;
                let row = if let Some(reason) = cannot_take(target.subject, conns, plan.workers) {
                    empty_row(target, shape, conns, rate, reason)
                } else if needed > fd_limit {
                    empty_row(
                        target,
                        shape,
                        conns,
                        rate,
                        format!("needs {needed} fds; RLIMIT_NOFILE is {fd_limit}"),
                    )
                } else {
                    run_load(target, &plan, conns, rate).unwrap_or_else(|e| {
                        empty_row(target, shape, conns, rate, format!("failed: {e:#}"))
                    })
                };
                let key = (target, shape, conns);
                match rounds.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, v)) => v.push(row),
                    None => rounds.push((key, vec![row])),
                }
            }
            Job::Idle(target) => report
                .idle
                .push(run_idle(target, &plan).unwrap_or_else(|e| IdleRow {
                    model: target.name(),
                    threads: target.threads,
                    conns: plan.idle_conns,
                    status: Some(format!("failed: {e:#}")),
                    cpu_pct: 0.0,
                })),
            Job::Memory(target) => {
                report
                    .memory
                    .push(run_memory(target, &plan).unwrap_or_else(|e| MemRow {
                        model: target.name(),
                        threads: target.threads,
                        conns: plan.mem_conns,
                        status: Some(format!("failed: {e:#}")),
                        rss_before: 0,
                        rss_after: 0,
                        bytes_per_conn: 0.0,
                    }))
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    // Report by subject, then shape, then connections.
    rounds.sort_by_key(|((target, shape, conns), _)| {
        let i = plan.subjects.iter().position(|t| t == target);
        (i, *shape != "closed", *conns)
    });
    let tokio = Target::new(Subject::Tokio, 1);
    let cpu = |r: &RunRow| r.cpu_s_per_mrt.unwrap_or(0.0);
    let vs_tokio = median_ratios(&rounds, |_| Some(tokio), cpu);
    let one_loop = |t: Target| (t.threads > 1).then_some(Target { threads: 1, ..t });
    let rt_vs_one = median_ratios(&rounds, one_loop, |r| r.rt_per_s);
    let cpu_vs_one = median_ratios(&rounds, one_loop, cpu);
    // uring against epoll with as many loops (what issue-style targets are
    // stated as).
    let epoll_beside = |t: Target| {
        (t.subject == Subject::Model(Model::Uring)).then_some(Target {
            budget_us: t.budget_us,
            ..Target::new(Subject::Model(Model::Epoll), t.threads)
        })
    };
    let cpu_vs_epoll = median_ratios(&rounds, epoll_beside, cpu);
    // Each budget against none, the same model and loops.
    let unbudgeted = |t: Target| (t.budget_us > 0).then_some(Target { budget_us: 0, ..t });
    let budget_cpu = median_ratios(&rounds, unbudgeted, cpu);
    let budget_p99 = median_ratios(&rounds, unbudgeted, |r| r.p99_us);
    let budget_rt = median_ratios(&rounds, unbudgeted, |r| r.rt_per_s);
    report.runs = rounds
        .into_iter()
        .enumerate()
        .map(|(i, (_, rows))| RunRow {
            cpu_vs_tokio: vs_tokio[i],
            rt_vs_one_loop: rt_vs_one[i],
            cpu_vs_one_loop: cpu_vs_one[i],
            cpu_vs_epoll: cpu_vs_epoll[i],
            vs_no_budget: match (budget_cpu[i], budget_p99[i], budget_rt[i]) {
                (Some(cpu), Some(p99), Some(rt)) => Some(VsNoBudget { cpu, p99, rt }),
                _ => None,
            },
            ..pick_median(rows)
        })
        .collect();
    print!("{}", report::table(&report));
    if let Some(path) = &plan.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: JSON written to {}", path.display());
    }
    if let Some(dir) = &plan.plot {
        let files = plot::write_all(&report, dir)?;
        eprintln!("bench: charts written: {}", files.join(", "));
    }
    Ok(report)
}
