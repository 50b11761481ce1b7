//! A server under test, run as a child process of this same binary.
//!
//! The child is `iomux serve --model M --addr 127.0.0.1:0 --control
//! [--pin-cpu N]` (or `iomux peer-tokio ...` for the peer). It prints its bound
//! address on its first stdout line, then answers each `stats` line on its
//! stdin with one line of counters (see [`crate::control`]). Closing its stdin
//! stops it. Memory comes from `/proc/PID/status`, as the kernel sees it.

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
        let field = |name: &str| -> Result<u64> {
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
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
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
