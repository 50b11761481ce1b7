//! `iomux serve`: one model serving one protocol until Ctrl-C (or, with
//! `--control`, until stdin closes).

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use iomux::protocol::Protocol;
use iomux::server::{Config, FdExhaustion, Model, ServerCounters, Stop};

/// Flags of `iomux serve`.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// The I/O model: auto (the best this platform has), blocking, threaded,
    /// pool, busy-poll, select, poll, epoll, coroutine or uring.
    #[arg(long, default_value = "auto")]
    pub model: Model,
    /// Address to listen on; port 0 lets the OS pick a free port.
    #[arg(long, default_value = "127.0.0.1:1688")]
    pub addr: SocketAddr,
    /// Protocol: upper (every byte back, ASCII letters upper-cased), echo,
    /// or slow-upper (upper that burns --work-ms of CPU per line).
    #[arg(long, default_value = "upper")]
    pub protocol: Protocol,
    /// slow-upper: milliseconds of CPU work per line received.
    #[arg(long)]
    pub work_ms: Option<u32>,
    /// Run the handler on a pool of --offload-threads threads, so a slow
    /// handler cannot stall the loop (select, poll, epoll).
    #[arg(long)]
    pub offload: bool,
    /// Threads of the --offload pool.
    #[arg(long, default_value_t = 4)]
    pub offload_threads: usize,
    /// Close connections idle longer than this (e.g. 30s, 500ms; select,
    /// poll, epoll). Default: never.
    #[arg(long, value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// On SIGINT/SIGTERM, how long connections may take to receive the
    /// output already produced before they are closed (select, poll, epoll),
    /// or to finish with their clients (the other models).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub drain_timeout: Duration,
    /// Worker threads of the pool model.
    #[arg(long, default_value_t = Config::default().workers)]
    pub workers: usize,
    /// Connections served at once, per loop; more are accepted and closed
    /// at once.
    #[arg(long, default_value_t = Config::default().max_conns)]
    pub max_conns: usize,
    /// Event loops, each on its own thread with its own listener on the
    /// same port (SO_REUSEPORT: the kernel spreads connections over them);
    /// epoll, coroutine and uring.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Bind with SO_REUSEPORT, so that a new `iomux serve` can bind the
    /// same port while this one drains after SIGTERM (a hot restart on one
    /// host). Set `net.ipv4.tcp_migrate_req=1` too, or the connections
    /// still queued on this process's listener when it closes are reset.
    /// Several loops (`--threads` above 1) always bind this way.
    #[arg(long)]
    pub reuse_port: bool,
    /// Output bytes held per connection before reading from it pauses.
    #[arg(long, default_value_t = Config::default().max_output)]
    pub max_output: usize,
    /// Out of fds (EMFILE/ENFILE): pause (stop accepting for 50 ms; waiting
    /// clients are served once fds are free), reserve-fd (accept the waiting
    /// clients with a spare fd and close them at once), or shed (close the
    /// connection idle longest to make room; select, poll, epoll, uring).
    #[arg(long, default_value_t = FdExhaustion::default())]
    pub on_fd_exhaustion: FdExhaustion,
    /// uring: make each wait for completions last this long (e.g. 100us,
    /// at most 10ms) so they are handled in bigger batches: less CPU per
    /// round trip, up to this much more latency. Needs Linux 6.12. 0: off.
    #[arg(long, value_parser = parse_duration)]
    pub uring_batch_wait: Option<Duration>,
    /// select, poll, epoll, coroutine, uring: latency the loop may add
    /// (e.g. 1ms, at most 100ms) to batch its wake-ups, adapting to the
    /// load: nothing while it is light, up to half the budget under
    /// sustained load. Less CPU per round trip; uring needs Linux 6.12.
    /// 0: off.
    #[arg(long, value_parser = parse_duration)]
    pub latency_budget: Option<Duration>,
    /// Pin the server (all its threads) to these CPUs, e.g. 0 or 0,1.
    #[arg(long, value_delimiter = ',')]
    pub pin_cpu: Vec<usize>,
    /// Answer `stats` lines on stdin with the server's counters, and stop
    /// when stdin closes (how `iomux bench` drives a server).
    #[arg(long)]
    pub control: bool,
}

/// The listen backlog: deep enough for the bench to open thousands of
/// connections in a burst (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

/// Binds `addr` once per loop (with `SO_REUSEPORT` if `reuse_port`, as
/// several loops always are), turning the common failures into advice.
pub fn bind(addr: SocketAddr, threads: usize, reuse_port: bool) -> Result<Vec<TcpListener>> {
    let bound = if reuse_port && threads == 1 {
        iomux::sys::bind_reuseport(addr, BACKLOG).map(|l| vec![l])
    } else {
        iomux::server::bind_loops(addr, threads)
    };
    match bound {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse && reuse_port => Err(anyhow!(
            "address {addr} is in use by a socket without SO_REUSEPORT (or another user's); a hot restart needs --reuse-port on the running server too"
        )),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(anyhow!(
            "address {addr} is in use; pick another with --addr, or port 0 for any free one"
        )),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(anyhow!(
            "binding {addr}: permission denied (ports below 1024 need privileges); pick a port above 1023"
        )),
        Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => Err(anyhow!(
            "address {addr} is not an address of this machine; try 127.0.0.1"
        )),
        Err(e) => Err(e).with_context(|| format!("binding {addr}")),
    }
}

/// Blocks SIGINT and SIGTERM in this thread and so in every thread it
/// starts later: until something takes them (a `sigwait` thread, or the
/// loop's signal watchers, which unblock them), they wait as pending
/// instead of killing the process.
fn block_stop_signals() -> Result<libc::sigset_t> {
    // SAFETY: an all-zero sigset_t is valid storage; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid storage for a signal set; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
    }
    // SAFETY: `set` is an initialised signal set; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc)).context("blocking SIGINT and SIGTERM");
    }
    Ok(set)
}

/// Starts a thread that waits for SIGINT or SIGTERM with `sigwait` and
/// gives `stop`. No handler code runs in signal context.
///
/// The thread-based models stop accepting at once, but a connection thread
/// (or the blocking model's one thread) sits in `recv` until its client
/// closes. So the stop has a deadline: `drain` after the first signal, or at
/// a second signal, the process exits (status 0: the stop was asked for and
/// carried out), cutting off the connections still open.
fn stop_on_signals(set: libc::sigset_t, stop: Stop, drain: Duration) -> Result<()> {
    std::thread::Builder::new()
        .name("iomux-signals".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: `set` is an initialised signal set, blocked in this
            // thread (inherited); `sig` is valid storage for the number.
            let rc = unsafe { libc::sigwait(&set, &mut sig) };
            if rc == 0 {
                eprintln!(
                    "iomux: signal {sig} received; stopping (connections still open in {} ms are cut off; send it again to cut them now)",
                    drain.as_millis()
                );
            }
            stop.stop();
            let timeout = libc::timespec {
                tv_sec: drain.as_secs() as libc::time_t,
                tv_nsec: drain.subsec_nanos() as libc::c_long,
            };
            // SAFETY: `set` is an initialised signal set, `timeout` a valid
            // timespec; the siginfo is not wanted (null is allowed).
            let again = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
            eprintln!(
                "iomux: {}: exiting with the connections still open cut off",
                if again > 0 { "signal received again" } else { "drain timeout" }
            );
            std::process::exit(0);
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// Parses `30s`, `500ms`, `2m`, or a number of seconds (`1.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; write e.g. 30s, 500ms or 2m"))?;
    let secs = match unit {
        "us" => n / 1e6,
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {s:?}; use us, ms, s or m"
            ))
        }
    };
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("{s:?} is not a duration of zero or more"))
}

/// Checks the flags that only some models or protocols take.
fn check_flags(args: &ServeArgs) -> Result<Protocol> {
    let protocol = match (args.protocol, args.work_ms) {
        (Protocol::SlowUpper(_), Some(ms)) => Protocol::SlowUpper(ms),
        (p, None) => p,
        (p, Some(_)) => bail!("--work-ms is for --protocol slow-upper, not {p}"),
    };
    // What each model supports is checked by Config::validate_for, from
    // the library's capabilities table.
    Ok(protocol)
}

/// Runs `iomux serve`.
pub fn run(args: &ServeArgs) -> Result<()> {
    let model = args.model;
    if model == Model::Uring {
        // One line naming the cause: sysctl, seccomp, kernel, build.
        iomux::uring::probe().map_err(|why| anyhow!("{why}"))?;
    }
    if !model.is_supported() {
        bail!("model {model} is not available on this platform; use --model auto");
    }
    let protocol = check_flags(args)?;
    // The readiness models drain on SIGINT/SIGTERM in their own loop (with
    // several loops, serve_loops catches them for all); the others stop
    // through a sigwait thread.
    let loop_catches_signals = model.backend().is_some();
    let config = Config {
        workers: args.workers,
        max_conns: args.max_conns,
        max_output: args.max_output,
        idle_timeout: args.idle_timeout,
        drain_timeout: args.drain_timeout,
        offload_threads: if args.offload {
            args.offload_threads
        } else {
            0
        },
        catch_signals: loop_catches_signals,
        on_fd_exhaustion: args.on_fd_exhaustion,
        threads: args.threads,
        uring_batch_wait: args.uring_batch_wait.filter(|d| !d.is_zero()),
        latency_budget: args.latency_budget.filter(|d| !d.is_zero()),
        ..Config::default()
    };
    config
        .validate_for(model)
        .map_err(|e| anyhow!("bad configuration: {e}"))?;
    if !args.pin_cpu.is_empty() {
        iomux::sys::pin_to_cpus(&args.pin_cpu)
            .with_context(|| format!("pinning to CPUs {:?}", args.pin_cpu))?;
    }
    iomux::sys::ignore_sigpipe().context("ignoring SIGPIPE")?;
    let stop = Stop::new().context("creating the stop pipe")?;
    let set = block_stop_signals()?;
    if !loop_catches_signals {
        stop_on_signals(set, stop.clone(), args.drain_timeout)?;
    }
    let listeners = bind(args.addr, args.threads, args.reuse_port)?;
    for listener in &listeners {
        iomux::sys::set_listen_backlog(listener, BACKLOG).context("setting the listen backlog")?;
    }
    let addr = listeners[0].local_addr()?;
    // The bench reads the address as the last word of this line.
    if args.threads > 1 {
        println!(
            "iomux: serving {protocol} with model {model}, {} threads (a loop and a listener each), on {addr}",
            args.threads
        );
    } else {
        println!("iomux: serving {protocol} with model {model} on {addr}");
    }
    let counters = ServerCounters::new(args.threads);
    if args.control {
        let (c, s) = (counters.clone(), stop.clone());
        std::thread::Builder::new()
            .name("iomux-control".into())
            .spawn(move || crate::control::run(c, s))
            .context("starting the control thread")?;
    }
    iomux::server::serve_loops(model, listeners, &config, &stop, &counters, protocol)
        .with_context(|| format!("model {model} failed"))?;
    if args.control {
        // The last word of the control channel: the counters once every
        // connection has ended, for whoever drove this server.
        println!("{}", crate::control::format_stats(&counters));
    }
    if !args.control {
        let s = counters.snapshot();
        let per_loop = if args.threads > 1 {
            let n: Vec<String> = counters
                .loops()
                .iter()
                .map(|c| c.snapshot().accepted.to_string())
                .collect();
            format!(", accepted per loop: {}", n.join(", "))
        } else {
            String::new()
        };
        eprintln!(
            "iomux: stopped after {} connections ({} refused, {} closed idle), {} bytes in, {} bytes out{per_loop}",
            s.accepted, s.refused, s.idle_closed, s.bytes_in, s.bytes_out
        );
    }
    Ok(())
}
