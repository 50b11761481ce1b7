//! Past one machine, for real: three `iomux serve` instances behind HAProxy
//! (the distribution's package, configured by the project's own
//! `deploy/haproxy.cfg`), a client load through it, and one instance
//! stopped with SIGTERM and started again on the same port while the load
//! flows.
//!
//! The stop is the one the README gives: out of HAProxy's rotation first
//! (`set server ... state drain` on its admin socket), then SIGTERM. Once the
//! instance has exited, it goes back into rotation before anything listens
//! on its port, so HAProxy's connects to it are refused until the health
//! check marks it down, and are redispatched.
//!
//! What must hold: no connection fails at the balancer (every one gets its
//! first reply); no byte comes back wrong (`upper`: each byte upper-cased,
//! in order); the connections the stopped instance held end with an EOF
//! after the replies to what it read, never with a reset; the load goes on
//! through the other two; the restarted instance serves connections again
//! once HAProxy's health check has passed.
//!
//! HAProxy missing: the test fails under CI (`CI` set; `.ci/run` installs
//! it), and is skipped with a printed line elsewhere.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{Server, PATIENCE};

/// Client threads: half hold long conversations (so that the stopped
/// instance has one open when the signal comes), half open short ones (so
/// new connections reach the balancer while the instance is out).
const LONG_CLIENTS: usize = 3;
const SHORT_CLIENTS: usize = 3;
/// Bounds of the load: connections per client thread, and time.
const MAX_CONNS_PER_CLIENT: usize = 2_000;
const LOAD_BOUND: Duration = Duration::from_secs(90);

/// A free loopback port, from the OS. It is free again once returned, so
/// something else could take it before HAProxy binds it; nothing on this
/// machine picks ports that way but this test.
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
}

/// A scratch directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("iomux-balancer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// HAProxy, started in the foreground (`-db`) as our child, killed by its
/// PID on drop.
struct Haproxy {
    child: Child,
    sock: PathBuf,
    log: PathBuf,
}

impl Haproxy {
    fn start(dir: &Path, front: SocketAddr, instances: &[SocketAddr]) -> Haproxy {
        let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/haproxy.cfg");
        let sock = dir.join("haproxy.sock");
        let log = dir.join("haproxy.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db")
            .arg("-f")
            .arg(&cfg)
            .env("IOMUX_FRONT", front.to_string())
            .env("IOMUX_HAPROXY_SOCK", &sock)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        for (i, a) in instances.iter().enumerate() {
            cmd.env(format!("IOMUX_I{}", i + 1), a.to_string());
        }
        let child = cmd.spawn().expect("starting haproxy");
        let mut h = Haproxy { child, sock, log };
        h.wait_for("the admin socket", |h| h.stat().is_some());
        h
    }

    /// Sends one command to the admin socket; its answer.
    fn try_command(&self, cmd: &str) -> std::io::Result<String> {
        let mut s = UnixStream::connect(&self.sock)?;
        s.write_all(format!("{cmd}\n").as_bytes())?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    }

    /// A number of `show info` (`DroppedLogs`, ...).
    fn info(&self, name: &str) -> Option<u64> {
        let text = self.try_command("show info").ok()?;
        let prefix = format!("{name}: ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
    }

    /// A command that must be taken (HAProxy answers an empty line).
    fn command(&self, cmd: &str) {
        let answer = self.try_command(cmd).expect("haproxy's admin socket");
        assert!(answer.trim().is_empty(), "haproxy: {cmd}: {answer}");
    }

    /// `show stat` from the admin socket: each server's fields by column
    /// name (`status`, `stot`, `wretr`, `wredis`, ...), by server name.
    fn stat(&self) -> Option<HashMap<String, HashMap<String, String>>> {
        let text = self.try_command("show stat").ok()?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
        let mut servers = HashMap::new();
        for line in lines.filter(|l| !l.is_empty()) {
            let row: HashMap<String, String> = header
                .iter()
                .zip(line.split(','))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            if row.get("pxname").map(String::as_str) == Some("instances") {
                servers.insert(row["svname"].clone(), row);
            }
        }
        Some(servers)
    }

    /// One field of one server.
    fn field(&self, server: &str, name: &str) -> String {
        self.stat()
            .and_then(|s| s.get(server)?.get(name).cloned())
            .unwrap_or_default()
    }

    fn is_up(&self, server: &str) -> bool {
        self.field(server, "status") == "UP"
    }

    fn is_down(&self, server: &str) -> bool {
        self.field(server, "status").starts_with("DOWN")
    }

    fn wait_for(&mut self, what: &str, mut cond: impl FnMut(&Haproxy) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !cond(self) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("haproxy exited ({status}): {}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "haproxy: {what} did not happen within {PATIENCE:?}; log: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        // Only our own child, and only if it is still running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What the clients saw, summed over every connection.
#[derive(Default)]
struct Tally {
    /// Connections opened to the balancer.
    conns: AtomicU64,
    /// Their local ports, to find each in HAProxy's log.
    ports: Mutex<Vec<u16>>,
    /// Replies so far of each long conversation in progress, by local port.
    progress: Mutex<HashMap<u16, u64>>,
    /// `connect` to the balancer failed.
    connect_failed: AtomicU64,
    /// Connections that ran their whole conversation and got an EOF after
    /// their own FIN.
    completed: AtomicU64,
    /// Connections the server side ended early with an EOF, after at
    /// least one whole reply (the stopped instance's).
    ended_by_server: AtomicU64,
    /// ... of which the EOF came in the middle of a reply (the instance
    /// had read part of the message when it stopped reading).
    ended_mid_reply: AtomicU64,
    /// Connections that got an EOF before any reply: the balancer failed
    /// to place them.
    ended_before_reply: AtomicU64,
    /// Reply bytes that were not the upper-cased byte sent.
    corrupt: AtomicU64,
    /// Connections ended by a reset.
    resets: AtomicU64,
    /// Other errors (a read timing out, ...), with samples.
    errors: AtomicU64,
    samples: Mutex<Vec<String>>,
    /// The local ports of the connections that ended early: HAProxy's log
    /// says where each went, and how it ended.
    ended_ports: Mutex<Vec<u16>>,
    /// Whole replies received.
    round_trips: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_back: AtomicU64,
}

impl Tally {
    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut s = self.samples.lock().unwrap();
        if s.len() < 5 {
            s.push(what);
        }
    }
}

/// A small deterministic generator for message sizes and bytes.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// How a conversation ended.
enum End {
    /// All messages answered; our FIN sent, the balancer's EOF read.
    Completed,
    /// EOF from the server side after `replies` whole replies and
    /// `partial` bytes of the next, on the connection from local `port`.
    Eof {
        replies: u64,
        partial: usize,
        port: u16,
    },
}

/// One connection: `messages` messages of random lower-case bytes, each
/// answered before the next, `pause` between them; fewer if `stop` is
/// given meanwhile.
fn converse(
    front: SocketAddr,
    rng: &mut Lcg,
    (messages, pause): (usize, Duration),
    stop: &AtomicBool,
    t: &Tally,
) -> std::io::Result<End> {
    let mut s = TcpStream::connect(front).inspect_err(|_| {
        t.connect_failed.fetch_add(1, Ordering::Relaxed);
    })?;
    t.conns.fetch_add(1, Ordering::Relaxed);
    let port = s.local_addr()?.port();
    t.ports.lock().unwrap().push(port);
    let res = talk(&mut s, port, rng, (messages, pause), stop, t);
    t.progress.lock().unwrap().remove(&port);
    res
}

/// The conversation of [`converse`] on its connection.
fn talk(
    s: &mut TcpStream,
    port: u16,
    rng: &mut Lcg,
    (messages, pause): (usize, Duration),
    stop: &AtomicBool,
    t: &Tally,
) -> std::io::Result<End> {
    // A hang becomes an error, not a stuck test.
    s.set_read_timeout(Some(PATIENCE))?;
    s.set_nodelay(true)?;
    let mut reply = vec![0u8; 512];
    for m in 0..messages as u64 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let len = 1 + (rng.next() % 300) as usize;
        let msg: Vec<u8> = (0..len).map(|_| b'a' + (rng.next() % 26) as u8).collect();
        s.write_all(&msg)?;
        t.bytes_sent.fetch_add(len as u64, Ordering::Relaxed);
        let mut got = 0;
        while got < len {
            let n = s.read(&mut reply[got..len])?;
            if n == 0 {
                return Ok(End::Eof {
                    replies: m,
                    partial: got,
                    port,
                });
            }
            let bad = msg[got..got + n]
                .iter()
                .zip(&reply[got..got + n])
                .filter(|(sent, back)| sent.to_ascii_uppercase() != **back)
                .count();
            t.corrupt.fetch_add(bad as u64, Ordering::Relaxed);
            t.bytes_back.fetch_add(n as u64, Ordering::Relaxed);
            got += n;
        }
        t.round_trips.fetch_add(1, Ordering::Relaxed);
        if messages > 2 {
            t.progress.lock().unwrap().insert(port, m + 1);
        }
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    s.shutdown(Shutdown::Write)?;
    match s.read(&mut reply)? {
        0 => Ok(End::Completed),
        n => Err(std::io::Error::other(format!(
            "{n} bytes after the last reply"
        ))),
    }
}

/// A client thread: conversations one after another until `stop`, or its
/// bounds.
fn client(front: SocketAddr, id: u64, long: bool, stop: &AtomicBool, t: &Tally) {
    let mut rng = Lcg(id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let (messages, pause, between) = if long {
        // Seconds long: one is open on each instance at any time.
        (400, Duration::from_millis(5), Duration::ZERO)
    } else {
        (2, Duration::ZERO, Duration::from_millis(5))
    };
    let deadline = Instant::now() + LOAD_BOUND;
    for _ in 0..MAX_CONNS_PER_CLIENT {
        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            return;
        }
        match converse(front, &mut rng, (messages, pause), stop, t) {
            Ok(End::Completed) => {
                t.completed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(End::Eof {
                replies,
                partial,
                port,
            }) => {
                let ended = if replies == 0 {
                    &t.ended_before_reply
                } else {
                    &t.ended_by_server
                };
                ended.fetch_add(1, Ordering::Relaxed);
                if partial > 0 {
                    t.ended_mid_reply.fetch_add(1, Ordering::Relaxed);
                }
                t.ended_ports.lock().unwrap().push(port);
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                t.resets.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => t.error(format!("{e}")),
        }
        if !between.is_zero() {
            std::thread::sleep(between);
        }
    }
}

/// Waits (bounded) until the load has made `more` round trips past `from`.
fn wait_round_trips(t: &Tally, from: u64, more: u64, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    while t.round_trips.load(Ordering::Relaxed) < from + more {
        assert!(
            Instant::now() < deadline,
            "{what}: the load made {} round trips, not {more}, within {PATIENCE:?}",
            t.round_trips.load(Ordering::Relaxed) - from
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn an_instance_restarts_behind_haproxy_and_no_client_notices() {
    if !common::installed("haproxy", "-v") {
        return;
    }
    let dir = TempDir::new();
    let drain = ["--drain-timeout", "10s"];
    let mut instances: Vec<Server> = (0..3).map(|_| Server::start("epoll", &drain)).collect();
    let addrs: Vec<SocketAddr> = instances.iter().map(|s| s.addr).collect();
    let front = free_port();
    let mut haproxy = Haproxy::start(&dir.0, front, &addrs);
    haproxy.wait_for("all three instances up", |h| {
        ["i1", "i2", "i3"].iter().all(|s| h.is_up(s))
    });

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..LONG_CLIENTS + SHORT_CLIENTS)
        .map(|i| {
            let (t, stop) = (tally.clone(), stop.clone());
            std::thread::spawn(move || client(front, i as u64, i < LONG_CLIENTS, &stop, &t))
        })
        .collect();
    // Stops the load even if an assertion below fails first.
    struct StopLoad(Arc<AtomicBool>);
    impl Drop for StopLoad {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop_load = StopLoad(stop.clone());

    // i1 holds conversations (two or more connections open, bytes in).
    // i1 holds a long conversation with a second or more to go (HAProxy's
    // sessions say which instance each client port is on).
    haproxy.wait_for("a long conversation on i1, in its first half", |h| {
        let sessions = h.try_command("show sess").unwrap_or_default();
        let progress = tally.progress.lock().unwrap();
        sessions
            .lines()
            .filter(|l| l.split_whitespace().any(|w| w == "srv=i1"))
            .filter_map(|l| {
                let src = l.split_whitespace().find_map(|w| w.strip_prefix("src="))?;
                Some(src.parse::<SocketAddr>().ok()?.port())
            })
            .any(|p| progress.get(&p).is_some_and(|&m| m < 200))
    });
    wait_round_trips(&tally, 0, 200, "before the restart");

    // Out of the balancer first: HAProxy gives i1 no new connection and
    // leaves the open ones alone. (SIGTERM alone loses, now and then, a
    // connection that HAProxy placed in i1's accept queue just before i1
    // closed its listener: the kernel resets it. README, "Past one
    // machine".)
    // IOMUX_BALANCER_SIGTERM_ONLY=1 skips this step, to measure that.
    let t_term = Instant::now();
    if std::env::var_os("IOMUX_BALANCER_SIGTERM_ONLY").is_none() {
        haproxy.command("set server instances/i1 state drain");
        haproxy.wait_for("i1 in drain state", |h| h.field("i1", "status") == "DRAIN");
    }
    // SIGTERM: i1 closes its listener, and drains its connections.
    let old = instances.remove(0);
    let rt_at_term = tally.round_trips.load(Ordering::Relaxed);
    // SAFETY: kill with a valid signal number on the PID of our own child,
    // which has not been reaped yet, so the PID is still ours.
    let rc = unsafe { libc::kill(old.pid() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let mut old = old;
    old.wait_exit();
    let drained = t_term.elapsed();
    drop(old);
    // Back in rotation at once, with nothing listening on its port: until
    // its health check has failed twice, HAProxy still picks i1, the
    // connect is refused, and the retry goes to another instance.
    haproxy.command("set server instances/i1 state ready");
    haproxy.wait_for("i1 marked down", |h| h.is_down("i1"));
    // The other two carry the load meanwhile.
    let rt_down = tally.round_trips.load(Ordering::Relaxed);
    wait_round_trips(&tally, rt_down, 200, "with i1 down");

    // i1 again, on the same port.
    let mut again = Server::start_on("epoll", addrs[0], &drain);
    let t_start = Instant::now();
    haproxy.wait_for("i1 up again", |h| h.is_up("i1"));
    again.wait_until("i1 serving again (bytes in)", |s| s.stat("bytes_in") > 0);
    let back = t_term.elapsed();
    let restart = t_start.elapsed();
    // Some more load with all three.
    let rt_back = tally.round_trips.load(Ordering::Relaxed);
    wait_round_trips(&tally, rt_back, 200, "after the restart");

    drop(stop_load);
    for c in clients {
        c.join().expect("client thread");
    }
    let again_stats = again.stats();
    let hp = haproxy.stat().expect("haproxy stats");
    let t = &*tally;
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    // The backend's row sums its servers'.
    let backend = |f: &str| hp["BACKEND"][f].clone();
    // HAProxy logs each connection as it ends: wait (bounded) for all.
    let conns = n(&t.conns) as usize;
    // HAProxy drops a log line rather than wait (two threads logging at
    // once), and counts it.
    let dropped = || {
        haproxy
            .info("DroppedLogs")
            .expect("DroppedLogs in show info")
    };
    let deadline = Instant::now() + PATIENCE;
    let mut log = sessions(&haproxy.log_text());
    while log.len() + (dropped() as usize) < conns && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        log = sessions(&haproxy.log_text());
    }
    let dropped = dropped();
    let missing: Vec<u16> = t
        .ports
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|p| !log.iter().any(|s| s.port == *p))
        .collect();
    let ended: Vec<&Session> = t
        .ended_ports
        .lock()
        .unwrap()
        .iter()
        .filter_map(|p| log.iter().rev().find(|s| s.port == *p))
        .collect();
    let unclean: Vec<&Session> = log.iter().filter(|s| s.state != "--").collect();
    eprintln!(
        "balancer: {} connections ({} completed, {} ended by the draining instance after its last reply, \
         {} of them mid-message), {} round trips, {} bytes sent, {} back; \
         resets {}, corrupt bytes {}, connect failures {}, ended by the drain before a first reply {}, other errors {}, connections HAProxy logged as not normal {}; \
         i1 drained and exited {} ms after SIGTERM, restarted instance up {} ms after start, serving {} ms after SIGTERM; \
         round trips: {} at SIGTERM, {} when i1 was marked down, {} when back; \
         haproxy retries {}, redispatches {}, connections per server {:?}; restarted i1 accepted {} (with health checks), {} bytes in",
        n(&t.conns),
        n(&t.completed),
        n(&t.ended_by_server),
        n(&t.ended_mid_reply),
        n(&t.round_trips),
        n(&t.bytes_sent),
        n(&t.bytes_back),
        n(&t.resets),
        n(&t.corrupt),
        n(&t.connect_failed),
        n(&t.ended_before_reply),
        n(&t.errors),
        unclean.len(),
        drained.as_millis(),
        restart.as_millis(),
        back.as_millis(),
        rt_at_term,
        rt_down,
        rt_back,
        backend("wretr"),
        backend("wredis"),
        ["i1", "i2", "i3"].map(|s| hp[s]["stot"].clone()),
        again_stats["accepted"],
        again_stats["bytes_in"],
    );
    assert_eq!(n(&t.connect_failed), 0, "connects to the balancer failed");
    assert_eq!(
        n(&t.corrupt),
        0,
        "reply bytes that were not the upper-cased input"
    );
    assert_eq!(n(&t.resets), 0, "connections ended by a reset");
    assert_eq!(n(&t.errors), 0, "errors: {:?}", t.samples.lock().unwrap());
    assert!(
        missing.len() as u64 <= dropped,
        "{} of {conns} connections not in HAProxy's log, which dropped {dropped} lines: client ports {missing:?}; ended early: {:?}",
        missing.len(),
        t.ended_ports.lock().unwrap()
    );

    // Every connection ended normally on both sides, as HAProxy saw it: no
    // connect it gave up on (SC), no server without a slot (<NOSRV>), no
    // reset from either side (SD, CD).
    assert!(
        unclean.is_empty(),
        "connections that did not end normally: {unclean:?}"
    );
    // Those that ended early were i1's: the draining instance sent the
    // replies to what it had read, then its FIN. (A connection whose first
    // message reached i1 as it began to drain ends with no reply at all;
    // it is counted apart, and was still placed and ended cleanly.)
    for s in &ended {
        assert_eq!(
            s.server, "instances/i1",
            "ended early, not by the drain: {s:?}"
        );
    }
    assert!(
        n(&t.ended_by_server) >= 1,
        "no connection was open on i1 when it drained"
    );
    let (sent, back) = (n(&t.bytes_sent), n(&t.bytes_back));
    assert!(back <= sent, "{back} bytes back for {sent} sent");
    again.stop();
    for s in instances {
        s.stop();
    }
}

/// One connection as HAProxy logged it (`option tcplog`).
#[derive(Debug)]
struct Session {
    /// The client's port.
    port: u16,
    /// `backend/server`, or `backend/<NOSRV>`.
    server: String,
    /// The termination state: `--` for a normal end.
    state: String,
}

/// The connection lines of HAProxy's log: `IP:PORT [date] frontend
/// backend/server Tw/Tc/Tt bytes state ...`; other lines (server state
/// changes) are left out.
fn sessions(log: &str) -> Vec<Session> {
    log.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let client: SocketAddr = w.first()?.parse().ok()?;
            Some(Session {
                port: client.port(),
                server: w.get(3)?.to_string(),
                state: w.get(6)?.to_string(),
            })
        })
        .collect()
}
