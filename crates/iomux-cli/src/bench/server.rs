//! A server under test, run as a child process of this same binary.
//!
//! The child is `iomux serve --model M --addr 127.0.0.1:0 --control
//! [--pin-cpu N]` (or `iomux peer-tokio ...` for the peer). It prints its bound
//! address on its first stdout line, then answers each `stats` line on its
//! stdin with one line of counters (see [`crate::control`]). Closing its stdin
//! stops it. Memory comes from `/proc/PID/status`, as the kernel sees it.
//!
//! A server the bench did not start (`--addr`) is read through
//! [`PidProbe`]: the CPU of the processes named, from `/proc/PID/stat`.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// A running server child.
pub struct ServerProc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// The address it bound.
    pub addr: SocketAddr,
}

/// What the server reported (see `control::format_stats`).
pub type Stats = crate::control::ControlStats;

impl ServerProc {
    /// Starts `iomux <args...>` and waits for its address line.
    pub fn start(args: &[String]) -> Result<ServerProc> {
        let exe = std::env::current_exe().context("finding the iomux binary")?;
        let mut child = Command::new(&exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} {}", exe.display(), args.join(" ")))?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let addr = line
            .split_whitespace()
            .last()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| {
                let _ = child.kill();
                let _ = child.wait();
                anyhow!(
                    "server `iomux {}` did not report its address (it printed {line:?})",
                    args.join(" ")
                )
            })?;
        Ok(ServerProc {
            child,
            stdin,
            stdout,
            addr,
        })
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks the server for its counters.
    pub fn stats(&mut self) -> Result<Stats> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("server already stopped"))?;
        stdin.write_all(b"stats\n")?;
        stdin.flush()?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("server exited before answering `stats`");
        }
        crate::control::parse_stats(&line)
    }

    /// Resident and peak resident memory in bytes (VmRSS, VmHWM).
    pub fn memory(&self) -> Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        Ok((
            status_field(&status, "VmRSS:")?,
            status_field(&status, "VmHWM:")?,
        ))
    }

    /// Waits until the server has accepted `n` connections in all, or
    /// `timeout` passes; returns the count reached.
    pub fn wait_accepted(&mut self, n: u64, timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.stats()?.counters.accepted;
            if got >= n || Instant::now() >= deadline {
                return Ok(got);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the server (closes its stdin) and reaps it; kills it if it has
    /// not exited within 5 s.
    pub fn stop(mut self) -> Result<()> {
        self.stdin.take();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return if status.success() {
                    Ok(())
                } else {
                    Err(anyhow!("server exited with {status}"))
                };
            }
            if Instant::now() >= deadline {
                self.child.kill()?;
                self.child.wait()?;
                bail!("server did not stop within 5 s of its stdin closing; killed");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        // Only a server that was not stopped cleanly is still running here.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The CPU time of processes the bench did not start, at the edges of the
/// measured window: `utime + stime` from `/proc/PID/stat`, summed over the
/// processes (in clock ticks, 10 ms on most kernels: measure windows of
/// seconds).
pub struct PidProbe {
    pids: Vec<u32>,
    start: Option<Duration>,
    end: Option<Duration>,
    failure: Option<String>,
}

impl PidProbe {
    /// A probe of `pids`; with none, it measures nothing.
    pub fn new(pids: Vec<u32>) -> PidProbe {
        PidProbe {
            pids,
            start: None,
            end: None,
            failure: None,
        }
    }

    fn sample(&mut self) -> Option<Duration> {
        if self.pids.is_empty() {
            return None;
        }
        let total = self
            .pids
            .iter()
            .map(|&p| process_cpu(p))
            .sum::<Result<Duration>>();
        total
            .map_err(|e| self.failure = Some(format!("{e:#}")))
            .ok()
    }

    /// CPU seconds over the window (`None` without processes, or if a
    /// reading failed), and what went wrong.
    pub fn cpu_seconds(&self) -> (Option<f64>, Option<String>) {
        let cpu = match (self.start, self.end) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64()),
            _ => None,
        };
        (cpu, self.failure.clone())
    }

    /// Peak resident memory (VmHWM) of the processes, summed, in bytes.
    pub fn peak_rss(&self) -> Option<u64> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids
            .iter()
            .map(|&p| peak_rss(p))
            .sum::<Result<u64>>()
            .ok()
    }
}

impl crate::bench::load::Probe for PidProbe {
    fn window_start(&mut self) {
        self.start = self.sample();
    }
    fn window_end(&mut self) {
        self.end = self.sample();
    }
}

/// `utime + stime` of process `pid` (all its threads), from `/proc/PID/stat`.
fn process_cpu(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name, field 2, is in parentheses and may hold spaces:
    // the fields after it start at field 3 (state); utime and stime are
    // fields 14 and 15.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("{path}: no command name"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("{path}: field {} is not a number", i + 3))
    };
    let ticks = tick(11)? + tick(12)?;
    // SAFETY: sysconf takes no pointers.
    let per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if per_s <= 0 {
        bail!("sysconf(_SC_CLK_TCK) failed");
    }
    Ok(Duration::from_secs_f64(ticks as f64 / per_s as f64))
}

/// VmHWM of process `pid`, in bytes.
fn peak_rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status_field(&status, "VmHWM:")
}

/// A `/proc/PID/status` field in KiB, as bytes.
fn status_field(status: &str, name: &str) -> Result<u64> {
    let line = status
        .lines()
        .find(|l| l.starts_with(name))
        .ok_or_else(|| anyhow!("no {name} in /proc/PID/status"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("bad {name} line {line:?}"))?;
    Ok(kib * 1024)
}
