//! A server under test, run as a child process.
//!
//! Ours is `iomux serve --model M --addr 127.0.0.1:0 --control
//! [--pin-cpu N]` (or `iomux peer-tokio ...` for the peer). It prints its bound
//! address on its first stdout line, then answers each `stats` line on its
//! stdin with one line of counters (see [`crate::control`]). Closing its stdin
//! stops it. Memory comes from `/proc/PID/status`, as the kernel sees it.
//!
//! A foreign server (`bench --server NAME=CMD`) has no control channel: it
//! runs as `sh -c CMD` in a process group of its own, and its CPU, memory
//! and accepted connections are read from `/proc` over its whole process
//! tree (see [`super::proctree`]); SIGTERM to the group stops it.
//!
//! A server the bench did not start (`--addr`) is no child: the bench reads
//! the processes its `pid=` names through [`super::proctree`].

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::proctree;

/// A running server child.
pub struct ServerProc {
    child: Child,
    /// Ours: its stdin and stdout (the control channel). Foreign: none.
    control: Option<(Option<ChildStdin>, BufReader<ChildStdout>)>,
    /// Foreign: the distinct sockets its tree held before any client.
    base_sockets: usize,
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
            control: Some((stdin, stdout)),
            base_sockets: 0,
            addr,
        })
    }

    /// Starts a foreign server: `sh -c CMD` with `{addr}` and `{port}`
    /// replaced by a free loopback address, in a process group of its own,
    /// on `cpus` (if any; this thread is on `load_cpus` again afterwards);
    /// waits until it accepts a connection.
    pub fn start_foreign(
        name: &str,
        cmd: &str,
        cpus: &[usize],
        load_cpus: &[usize],
    ) -> Result<ServerProc> {
        // A port the OS calls free now; the server binds it a moment later.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let line = cmd
            .replace("{addr}", &addr.to_string())
            .replace("{port}", &addr.port().to_string());
        // The child inherits the affinity of the thread that starts it:
        // pin this thread to the server's CPUs while starting it, then back.
        if !cpus.is_empty() {
            iomux::sys::pin_to_cpus(cpus).context("pinning the foreign server")?;
        }
        let spawned = Command::new("sh")
            .args(["-c", &line])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn();
        if !cpus.is_empty() {
            iomux::sys::pin_to_cpus(load_cpus).context("pinning the load generator")?;
        }
        let child = spawned.with_context(|| format!("starting server {name}: sh -c {line:?}"))?;
        let mut server = ServerProc {
            child,
            control: None,
            base_sockets: 0,
            addr,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("server {name} ({line}) exited with {status} before accepting connections");
            }
            if let Ok(probe) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                drop(probe);
                break;
            }
            if Instant::now() >= deadline {
                bail!("server {name} ({line}) did not accept connections on {addr} within 10 s; does CMD listen on {{addr}} or {{port}}?");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let it close the probe connection before counting its sockets.
        std::thread::sleep(Duration::from_millis(50));
        server.base_sockets = proctree::sockets(server.pid());
        Ok(server)
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks the server for its counters; a foreign one gets its process
    /// tree's CPU time (`cpu_us`) and, as `accepted`, the sockets its tree
    /// holds beyond those it started with; every other field stays 0 (the
    /// bench reports them as absent for it).
    pub fn stats(&mut self) -> Result<Stats> {
        let Some((stdin, stdout)) = self.control.as_mut() else {
            let pid = self.pid();
            let mut stats = Stats {
                cpu_us: proctree::usage(pid)?.cpu_us,
                ..Stats::default()
            };
            stats.counters.accepted =
                proctree::sockets(pid).saturating_sub(self.base_sockets) as u64;
            return Ok(stats);
        };
        let stdin = stdin
            .as_mut()
            .ok_or_else(|| anyhow!("server already stopped"))?;
        stdin.write_all(b"stats\n")?;
        stdin.flush()?;
        let mut line = String::new();
        if stdout.read_line(&mut line)? == 0 {
            bail!("server exited before answering `stats`");
        }
        crate::control::parse_stats(&line)
    }

    /// Resident and peak resident memory in bytes: ours, its VmRSS and
    /// VmHWM; a foreign one, summed over its process tree (see
    /// [`proctree::usage`]).
    pub fn memory(&self) -> Result<(u64, u64)> {
        if self.control.is_none() {
            let tree = proctree::usage(self.pid())?;
            return Ok((tree.rss, tree.peak_rss));
        }
        proctree::memory(self.pid())
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

    /// Stops the server (closes its stdin; a foreign one: SIGTERM to its
    /// process group) and reaps it; kills it if it has not exited within
    /// 5 s.
    pub fn stop(mut self) -> Result<()> {
        if let Some((stdin, _)) = self.control.as_mut() {
            stdin.take();
        } else {
            // The server first, as a user stops it (a forking server then
            // ends its children itself), ...
            proctree::signal(self.pid(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while !proctree::exited(self.pid()) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            // ... then what is left of its group. Not yet reaped, the
            // server's pid (the group's id) cannot have been reused.
            proctree::signal_group(self.pid(), libc::SIGKILL);
            self.child.wait()?;
            return Ok(());
        }
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
            if self.control.is_none() {
                proctree::signal_group(self.pid(), libc::SIGKILL);
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
