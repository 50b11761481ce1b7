//! What the CLI's test targets share: the `iomux` binary, and a server
//! child driven through `--control`.
#![allow(dead_code)] // each test target uses its own part

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const IOMUX: &str = env!("CARGO_BIN_EXE_iomux");

/// Upper bound of every wait for the server to reach a state.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The address `iomux serve` prints as the last word of its first line.
pub fn address_in(first_line: &str) -> SocketAddr {
    first_line
        .split_whitespace()
        .last()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {first_line:?}"))
}

/// Whether the model can run here; prints why not otherwise.
pub fn available(model: &str) -> bool {
    if model == "uring" {
        if let Err(why) = iomux::uring::probe() {
            eprintln!("skipped: {why}");
            return false;
        }
    }
    true
}

/// The fields of a `stats` line of the control channel.
fn parse_stats(line: &str) -> HashMap<String, u64> {
    line.split_whitespace()
        .skip(1)
        .filter_map(|w| {
            let (k, v) = w.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// A server child: the real binary, driven through `--control`.
pub struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// The address, the last word of the first line.
    pub addr: SocketAddr,
    /// The server's first line of output.
    pub first_line: String,
    model: String,
}

impl Server {
    pub fn start(model: &str, extra: &[&str]) -> Server {
        Server::start_limited(model, extra, None)
    }

    /// Starts `iomux serve --model MODEL --addr ADDR --control EXTRA...`:
    /// on a given address, e.g. again on the port of one that stopped.
    pub fn start_on(model: &str, addr: SocketAddr, extra: &[&str]) -> Server {
        Server::start_with(model, &addr.to_string(), extra, None)
    }

    /// Starts `iomux serve --model MODEL --control EXTRA...` on
    /// 127.0.0.1:0, with `RLIMIT_NOFILE` set to `nofile` if given.
    pub fn start_limited(model: &str, extra: &[&str], nofile: Option<u64>) -> Server {
        Server::start_with(model, "127.0.0.1:0", extra, nofile)
    }

    fn start_with(model: &str, addr: &str, extra: &[&str], nofile: Option<u64>) -> Server {
        let mut cmd = Command::new(IOMUX);
        cmd.args(["serve", "--model", model, "--addr", addr, "--control"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(n) = nofile {
            // SAFETY: the closure runs in the child between fork and exec
            // and calls only setrlimit, which is async-signal-safe, on a
            // valid rlimit.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("starting iomux serve");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let addr = address_in(&line);
        Server {
            child,
            stdin,
            stdout,
            addr,
            first_line: line,
            model: model.to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's counters and `cpu_us`, from its control channel.
    pub fn stats(&mut self) -> HashMap<String, u64> {
        let stdin = self.stdin.as_mut().expect("server running");
        writeln!(stdin, "stats").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        parse_stats(&line)
    }

    pub fn stat(&mut self, name: &str) -> u64 {
        *self
            .stats()
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in the stats"))
    }

    /// Open fds of the server process.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("reading the server's fd table")
            .count()
    }

    /// Resident memory of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// Waits (bounded) until `cond` holds of the server; panics saying
    /// `what` otherwise.
    pub fn wait_until(&mut self, what: &str, mut cond: impl FnMut(&mut Server) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !cond(self) {
            if Instant::now() >= deadline {
                let stats = self.stats();
                panic!(
                    "{}: {what} did not happen within {PATIENCE:?}; stats {stats:?}",
                    self.model
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Closes the control channel and waits (bounded) for exit status 0.
    pub fn stop(mut self) {
        self.stdin.take();
        self.wait_exit();
    }

    /// After the server exited: the counters it printed last, once every
    /// connection had ended (`--control` prints them at exit).
    pub fn final_stats(&mut self) -> HashMap<String, u64> {
        let mut last = None;
        let mut line = String::new();
        while self.stdout.read_line(&mut line).unwrap_or(0) > 0 {
            if line.starts_with("stats ") {
                last = Some(line.clone());
            }
            line.clear();
        }
        parse_stats(&last.expect("a final stats line"))
    }

    pub fn wait_exit(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{}: exited with {status}", self.model);
                return;
            }
            assert!(Instant::now() < deadline, "{}: did not exit", self.model);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Only our own child, and only if it is still running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether `program` is installed (`program ARG` succeeds). Without it, a
/// test that needs it is skipped with a line saying how to install it,
/// except under CI, whose `.ci/run` installs it: there it fails.
pub fn installed(program: &str, version_arg: &str) -> bool {
    let found = Command::new(program)
        .arg(version_arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{program} is not installed, and CI is set: install it (`apt-get install -y {program}`; .ci/run does)"
        );
        eprintln!("skipped: {program} is not installed (apt-get install -y {program})");
    }
    found
}

/// Whether `--uring-batch-wait` can run here (io_uring with
/// `IORING_FEAT_MIN_TIMEOUT`, Linux 6.12); if not, prints why the caller
/// is skipped.
pub fn uring_batch_wait_available() -> bool {
    match iomux::uring::probe() {
        Ok(p) if p.features.min_timeout => true,
        Ok(_) => {
            eprintln!("skipped: no IORING_FEAT_MIN_TIMEOUT (Linux 6.12)");
            false
        }
        Err(why) => {
            eprintln!("skipped: {why}");
            false
        }
    }
}

/// Runs `iomux ARGS --json FILE`, which must succeed; the JSON it wrote
/// and its output.
pub fn run_json(args: &[&str]) -> (serde_json::Value, Output) {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let json = std::env::temp_dir().join(format!("iomux-json-{}-{n}.json", std::process::id()));
    let out = Command::new(IOMUX)
        .args(args)
        .arg("--json")
        .arg(&json)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    std::fs::remove_file(&json).unwrap();
    (report, out)
}

/// Runs `iomux bench ARGS --json FILE`: see [`run_json`].
pub fn bench_json(args: &[&str]) -> (serde_json::Value, Output) {
    let all: Vec<&str> = std::iter::once("bench")
        .chain(args.iter().copied())
        .collect();
    run_json(&all)
}

/// The report's one-loop row of `model` under `shape`, which must have
/// been measured: round trips and no errors.
pub fn measured_row<'a>(
    runs: &'a [serde_json::Value],
    model: &str,
    shape: &str,
) -> &'a serde_json::Value {
    let row = runs
        .iter()
        .find(|r| r["model"] == model && r["threads"] == 1 && r["shape"] == shape)
        .unwrap_or_else(|| panic!("no {shape} row for {model}"));
    assert!(
        row["status"].is_null(),
        "{model} {shape}: {}",
        row["status"]
    );
    assert!(row["rt_per_s"].as_f64().unwrap() > 0.0, "{model} {shape}");
    assert_eq!(row["errors"], 0, "{model} {shape}");
    row
}
