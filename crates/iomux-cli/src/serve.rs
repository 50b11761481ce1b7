//! `iomux serve`: one model serving one protocol until Ctrl-C (or, with
//! `--control`, until stdin closes).

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use iomux::protocol::Protocol;
use iomux::server::{Config, Counters, Model, Stop};

/// Flags of `iomux serve`.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// The I/O model: auto (the best this platform has), blocking, threaded,
    /// pool, busy-poll, select, poll, epoll or uring.
    #[arg(long, default_value = "auto")]
    pub model: Model,
    /// Address to listen on; port 0 lets the OS pick a free port.
    #[arg(long, default_value = "127.0.0.1:1688")]
    pub addr: SocketAddr,
    /// Protocol: upper (every byte back, ASCII letters upper-cased) or echo.
    #[arg(long, default_value = "upper")]
    pub protocol: Protocol,
    /// Worker threads of the pool model.
    #[arg(long, default_value_t = Config::default().workers)]
    pub workers: usize,
    /// Connections served at once; more are accepted and closed at once.
    #[arg(long, default_value_t = Config::default().max_conns)]
    pub max_conns: usize,
    /// Output bytes held per connection before reading from it pauses.
    #[arg(long, default_value_t = Config::default().max_output)]
    pub max_output: usize,
    /// Pin the server (all its threads) to this CPU.
    #[arg(long)]
    pub pin_cpu: Option<usize>,
    /// Answer `stats` lines on stdin with the server's counters, and stop
    /// when stdin closes (how `iomux bench` drives a server).
    #[arg(long)]
    pub control: bool,
}

/// The listen backlog: deep enough for the bench to open thousands of
/// connections in a burst (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

/// Binds `addr`, turning the common failures into advice.
pub fn bind(addr: SocketAddr) -> Result<TcpListener> {
    match TcpListener::bind(addr) {
        Ok(l) => Ok(l),
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

/// Blocks SIGINT and SIGTERM in this thread (and so in every thread it
/// starts later), and starts a thread that waits for them with `sigwait`
/// and gives `stop`. No handler code runs in signal context.
fn stop_on_signals(stop: Stop) -> Result<()> {
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
    std::thread::Builder::new()
        .name("iomux-signals".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: `set` is an initialised signal set, blocked in this
            // thread (inherited); `sig` is valid storage for the number.
            let rc = unsafe { libc::sigwait(&set, &mut sig) };
            if rc == 0 {
                eprintln!("iomux: signal {sig} received; stopping");
            }
            stop.stop();
        })
        .context("starting the signal thread")?;
    Ok(())
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
    let config = Config {
        protocol: args.protocol,
        workers: args.workers,
        max_conns: args.max_conns,
        max_output: args.max_output,
        ..Config::default()
    };
    config
        .validate()
        .map_err(|e| anyhow!("bad configuration: {e}"))?;
    if let Some(cpu) = args.pin_cpu {
        iomux::sys::pin_to_cpus(&[cpu]).with_context(|| format!("pinning to CPU {cpu}"))?;
    }
    iomux::sys::ignore_sigpipe().context("ignoring SIGPIPE")?;
    let stop = Stop::new().context("creating the stop pipe")?;
    stop_on_signals(stop.clone())?;
    let listener = bind(args.addr)?;
    iomux::sys::set_listen_backlog(&listener, BACKLOG).context("setting the listen backlog")?;
    let addr = listener.local_addr()?;
    // The bench reads the address as the last word of this line.
    println!(
        "iomux: serving {} with model {model} on {addr}",
        args.protocol
    );
    let counters = Arc::new(Counters::default());
    if args.control {
        let (c, s) = (counters.clone(), stop.clone());
        std::thread::Builder::new()
            .name("iomux-control".into())
            .spawn(move || crate::control::run(c, s))
            .context("starting the control thread")?;
    }
    iomux::server::serve(model, listener, &config, &stop, &counters)
        .with_context(|| format!("model {model} failed"))?;
    if !args.control {
        let s = counters.snapshot();
        eprintln!(
            "iomux: stopped after {} connections ({} refused), {} bytes in, {} bytes out",
            s.accepted, s.refused, s.bytes_in, s.bytes_out
        );
    }
    Ok(())
}
