//! Hot restart on one host, with no balancer: a new `iomux serve
//! --reuse-port` binds the port of the running one, which then gets
//! SIGTERM and drains, while clients keep connecting.
//!
//! Both listeners are in one `SO_REUSEPORT` group, so the port never stops
//! listening: no connect is refused. What the old listener holds when it
//! closes (connections whose handshake the kernel finished, waiting in its
//! accept queue, and half-open ones) is reset, unless
//! `net.ipv4.tcp_migrate_req` is 1: then the kernel moves them to the new
//! listener (Linux 5.14). The test sets it to 1 (root only; skipped
//! otherwise, failing under CI), restores the old value, and asserts that
//! nothing is refused or reset. The ignored test measures both settings:
//! `cargo test -p iomux-cli --test hot_restart -- --ignored --nocapture`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{Server, PATIENCE};

const SYSCTL: &str = "/proc/sys/net/ipv4/tcp_migrate_req";
/// Client threads, each opening one connection after another.
const CLIENTS: usize = 4;
/// Bounds of the load: connections per client thread, and time.
const MAX_CONNS_PER_CLIENT: usize = 50_000;
const LOAD_BOUND: Duration = Duration::from_secs(60);

/// The sysctl is the network namespace's: one test at a time sets it.
static SYSCTL_LOCK: Mutex<()> = Mutex::new(());

/// Sets `tcp_migrate_req` and puts the old value back on drop (also on a
/// panic).
struct MigrateReq {
    old: String,
}

impl MigrateReq {
    /// `None` (with a printed reason) if the sysctl cannot be set here.
    fn set(value: &str) -> Option<MigrateReq> {
        let old = match std::fs::read_to_string(SYSCTL) {
            Ok(v) => v.trim().to_string(),
            Err(e) => {
                skip(&format!("{SYSCTL}: {e} (Linux 5.14 has it)"));
                return None;
            }
        };
        if let Err(e) = std::fs::write(SYSCTL, value) {
            skip(&format!("cannot set {SYSCTL}: {e} (needs root)"));
            return None;
        }
        Some(MigrateReq { old })
    }
}

impl Drop for MigrateReq {
    fn drop(&mut self) {
        let _ = std::fs::write(SYSCTL, &self.old);
    }
}

/// Skips with a line, or fails under CI (which runs as root).
fn skip(why: &str) {
    assert!(std::env::var_os("CI").is_none(), "under CI: {why}");
    eprintln!("skipped: {why}");
}

/// What the clients saw.
#[derive(Default, Debug)]
struct Tally {
    /// Round trips answered correctly.
    ok: AtomicU64,
    /// `connect` refused: nothing listened.
    refused: AtomicU64,
    /// Reset (on connect, write or read).
    reset: AtomicU64,
    /// EOF before the reply: the old server accepted the connection but
    /// began to drain before reading it.
    eof: AtomicU64,
    /// Anything else, e.g. a wrong reply.
    other: AtomicU64,
}

/// One connection: connect, one message, its reply, close.
fn once(addr: SocketAddr, t: &Tally) {
    let outcome = (|| -> std::io::Result<bool> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(PATIENCE))?;
        s.write_all(b"handover\n")?;
        let mut reply = [0u8; 9];
        let mut got = 0;
        while got < reply.len() {
            match s.read(&mut reply[got..])? {
                0 => return Ok(false),
                n => got += n,
            }
        }
        if &reply != b"HANDOVER\n" {
            return Err(std::io::Error::other("wrong reply"));
        }
        Ok(true)
    })();
    let counter = match outcome {
        Ok(true) => &t.ok,
        Ok(false) => &t.eof,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => &t.refused,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => &t.reset,
        Err(_) => &t.other,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

fn wait_ok(t: &Tally, more: u64, what: &str) {
    let from = t.ok.load(Ordering::Relaxed);
    let deadline = Instant::now() + PATIENCE;
    while t.ok.load(Ordering::Relaxed) < from + more {
        assert!(Instant::now() < deadline, "{what}: load stalled: {t:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The handover under load: old serving, new binds the same port, old gets
/// SIGTERM and drains. Returns what the clients saw and the handover's
/// duration (new started to old exited).
fn handover() -> (Tally, Duration) {
    let reuse = ["--reuse-port", "--drain-timeout", "10s"];
    let old = Server::start("epoll", &reuse);
    let addr = old.addr;
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    struct StopLoad(Arc<AtomicBool>);
    impl Drop for StopLoad {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop_load = StopLoad(stop.clone());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (t, stop) = (tally.clone(), stop.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + LOAD_BOUND;
                for _ in 0..MAX_CONNS_PER_CLIENT {
                    if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                        return;
                    }
                    once(addr, &t);
                }
            })
        })
        .collect();
    wait_ok(&tally, 2_000, "before the handover");
    let started = Instant::now();
    let mut new = Server::start_on("epoll", addr, &reuse);
    // Both in the group: the new one gets its share.
    new.wait_until("the new server accepting", |s| s.stat("bytes_in") > 0);
    // SAFETY: kill with a valid signal number on the PID of our own child,
    // which has not been reaped yet, so the PID is still ours.
    let rc = unsafe { libc::kill(old.pid() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let mut old = old;
    old.wait_exit();
    let took = started.elapsed();
    drop(old);
    wait_ok(&tally, 2_000, "after the handover");
    drop(stop_load);
    for c in clients {
        c.join().expect("client thread");
    }
    new.stop();
    let t = Arc::try_unwrap(tally).expect("clients joined");
    (t, took)
}

fn report(setting: &str, t: &Tally, took: Duration) {
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    eprintln!(
        "hot restart, tcp_migrate_req={setting}: {} round trips, {} refused, {} reset, {} EOF before the reply, {} other; handover {} ms",
        n(&t.ok),
        n(&t.refused),
        n(&t.reset),
        n(&t.eof),
        n(&t.other),
        took.as_millis()
    );
}

#[test]
fn hot_restart_with_migrate_req_refuses_and_resets_nothing() {
    let _one = SYSCTL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(_set) = MigrateReq::set("1") else {
        return;
    };
    let (t, took) = handover();
    report("1", &t, took);
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    assert_eq!(n(&t.refused), 0, "connects refused: {t:?}");
    assert_eq!(n(&t.reset), 0, "connections reset: {t:?}");
    assert_eq!(n(&t.other), 0, "wrong replies or errors: {t:?}");
}

/// Both settings, 20 handovers each: the figures for the README.
#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn hot_restart_measured_with_and_without_migrate_req() {
    let _one = SYSCTL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for setting in ["0", "1"] {
        let Some(_set) = MigrateReq::set(setting) else {
            return;
        };
        let total = Tally::default();
        let mut hit = 0;
        for _ in 0..20 {
            let (t, took) = handover();
            report(setting, &t, took);
            let fields = [
                (&total.ok, &t.ok),
                (&total.refused, &t.refused),
                (&total.reset, &t.reset),
                (&total.eof, &t.eof),
                (&total.other, &t.other),
            ];
            for (sum, one) in fields {
                sum.fetch_add(one.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            hit += usize::from(t.reset.load(Ordering::Relaxed) > 0);
        }
        eprintln!(
            "20 handovers, tcp_migrate_req={setting}: {total:?}; handovers with a reset: {hit}"
        );
    }
}
