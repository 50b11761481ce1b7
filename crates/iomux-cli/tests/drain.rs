//! Stopping and memory, the same promise on every event-driven model
//! (select, poll, epoll, coroutine, uring), checked on the real binary:
//!
//! * SIGTERM while 100 clients stream: every byte the handlers produced
//!   reaches its client (the server's final counters: `bytes_produced`
//!   equals `bytes_out`), each client reads a correct prefix of its
//!   replies and then EOF, never a reset, and the server exits 0;
//! * SIGTERM with 100 open, idle peers under `--drain-timeout 30s`: the
//!   server exits long before the timeout, since closing loses nothing;
//! * on every model, 40 clients that send as fast as they can and never
//!   read: the server's peak memory grows by less than the stated bound.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{available, Server, PATIENCE};

const EVENT_MODELS: [&str; 5] = ["select", "poll", "epoll", "coroutine", "uring"];

fn sigterm(server: &Server) {
    // SAFETY: kill with a valid signal on the PID of our own child, which
    // is not reaped yet (Drop reaps it), so the PID is still ours.
    let rc = unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
}

/// What one client saw: how it ended, and whether every byte it read was
/// the upper-case of what it sent, in order.
struct Seen {
    eof: bool,
    error: Option<String>,
    read: usize,
    sent: usize,
}

/// A client that streams `abcdefgh...` from a writer thread (bounded:
/// 64 MiB or until an error, or `quit`) and reads every reply until the
/// server ends the connection.
fn streaming_client(addr: std::net::SocketAddr, quit: Arc<AtomicBool>) -> Seen {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let msg: Vec<u8> = (0..4096).map(|i| b"abcdefgh"[i % 8]).collect();
        let mut sent = 0;
        while sent < 64 << 20 && !quit.load(Ordering::Relaxed) {
            match w.write(&msg) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        sent
    });
    let mut buf = vec![0u8; 1 << 16];
    let (mut read, mut eof, mut error) = (0usize, false, None);
    loop {
        match s.read(&mut buf) {
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(n) => {
                for (i, &b) in buf[..n].iter().enumerate() {
                    let want = b"ABCDEFGH"[(read + i) % 8];
                    assert_eq!(b, want, "byte {} of the replies is corrupt", read + i);
                }
                read += n;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    // Unblock the writer (the server may have stopped reading us).
    let _ = s.shutdown(Shutdown::Both);
    let sent = writer.join().unwrap();
    Seen {
        eof,
        error,
        read,
        sent,
    }
}

fn sigterm_while_streaming(model: &str) {
    if !available(model) {
        return;
    }
    let mut server = Server::start(model, &["--drain-timeout", "20s"]);
    let addr = server.addr;
    let quit = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..100)
        .map(|_| {
            let quit = quit.clone();
            thread::spawn(move || streaming_client(addr, quit))
        })
        .collect();
    server.wait_until("100 clients streaming", |s| {
        s.stat("accepted") == 100 && s.stat("bytes_out") > 8 << 20
    });
    sigterm(&server);
    let t0 = Instant::now();
    server.wait_exit();
    let took = t0.elapsed();
    quit.store(true, Ordering::Relaxed);
    let seen: Vec<Seen> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let stats = server.final_stats();
    let (produced, sent) = (stats["bytes_produced"], stats["bytes_out"]);
    let read: usize = seen.iter().map(|s| s.read).sum();
    let written: usize = seen.iter().map(|s| s.sent).sum();
    eprintln!(
        "{model}: drained in {took:?}; {written} bytes sent by the clients, {produced} produced, {sent} sent, {read} read by the clients; resets {}",
        stats["resets"]
    );
    for (i, s) in seen.iter().enumerate() {
        assert!(
            s.eof,
            "{model}: client {i} ended with {:?}, not EOF",
            s.error
        );
        assert!(
            s.read <= s.sent,
            "{model}: client {i} read more than it sent"
        );
    }
    assert_eq!(produced, sent, "{model}: produced bytes not all sent");
    assert_eq!(read as u64, sent, "{model}: bytes sent not all read");
    assert_eq!(stats["resets"], 0, "{model}: a connection was reset");
}

fn sigterm_with_idle_peers(model: &str) {
    if !available(model) {
        return;
    }
    let mut server = Server::start(model, &["--drain-timeout", "30s"]);
    let peers: Vec<TcpStream> = (0..100)
        .map(|i| {
            let mut s = TcpStream::connect(server.addr).unwrap();
            s.set_read_timeout(Some(PATIENCE)).unwrap();
            let msg = format!("peer {i}\n");
            s.write_all(msg.as_bytes()).unwrap();
            let mut reply = vec![0; msg.len()];
            s.read_exact(&mut reply).unwrap();
            assert_eq!(reply, msg.to_uppercase().as_bytes());
            s
        })
        .collect();
    server.wait_until("100 peers served", |s| s.stat("accepted") == 100);
    // The peers stay open, reading, and never close.
    let readers: Vec<_> = peers
        .into_iter()
        .map(|mut s| {
            thread::spawn(move || {
                let mut buf = [0u8; 16];
                matches!(s.read(&mut buf), Ok(0))
            })
        })
        .collect();
    sigterm(&server);
    let t0 = Instant::now();
    server.wait_exit();
    let took = t0.elapsed();
    let eofs = readers
        .into_iter()
        .map(|r| r.join().unwrap())
        .filter(|&eof| eof)
        .count();
    eprintln!("{model}: 100 idle peers, --drain-timeout 30s: exited {took:?} after SIGTERM");
    assert!(
        took < Duration::from_secs(10),
        "{model}: took {took:?} to drain 100 idle peers; nothing could be lost, so it need not wait for their EOF"
    );
    assert_eq!(eofs, 100, "{model}: every idle peer reads EOF");
}

/// The memory a connection may hold on `model` with the default bounds
/// (`--max-output` 256 KiB, `--read-chunk` 64 KiB), in bytes: its output
/// up to the bound plus one reply, in buffers up to twice that; the
/// thread models a stack and a read buffer; uring's output has a queued and
/// an in-flight buffer, plus input a multishot recv delivered past the
/// bound before its cancel took effect, at most the provided-buffer ring
/// (256 x 16 KiB).
fn per_conn_bound(model: &str) -> u64 {
    let (max_output, chunk) = (256 << 10, 64 << 10);
    match model {
        "blocking" | "threaded" | "pool" => 128 * 1024 + chunk + 2 * chunk,
        "uring" => 2 * 2 * (max_output + 16 * 1024) + 256 * 16 * 1024,
        _ => 2 * (max_output + chunk),
    }
}

fn slow_readers_bounded(model: &str) {
    if !available(model) {
        return;
    }
    let server = Server::start(model, &[]);
    let base = server.rss_kib();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..40)
        .map(|_| {
            let (addr, stop) = (server.addr, stop.clone());
            thread::spawn(move || {
                // Connected, or still in the backlog (iterative models).
                let Ok(mut s) = TcpStream::connect(addr) else {
                    return 0usize;
                };
                s.set_write_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let chunk = vec![b'a'; 1 << 16];
                let mut sent = 0;
                let t0 = Instant::now();
                while sent < 64 << 20 && t0.elapsed() < Duration::from_secs(3) {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match s.write(&chunk) {
                        Ok(n) => sent += n,
                        Err(e)
                            if e.kind() == ErrorKind::WouldBlock
                                || e.kind() == ErrorKind::TimedOut => {}
                        Err(_) => break,
                    }
                }
                sent
            })
        })
        .collect();
    let sent: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    stop.store(true, Ordering::Relaxed);
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let hwm: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    let growth = hwm.saturating_sub(base) * 1024;
    let bound = 16 * (1 << 20) + 40 * per_conn_bound(model);
    eprintln!(
        "{model}: 40 clients that never read sent {} MiB in 3 s; peak RSS grew by {} KiB (bound {} KiB)",
        sent >> 20,
        growth >> 10,
        bound >> 10
    );
    assert!(
        sent < 40 * (64 << 20),
        "{model}: the server kept reading peers that do not read"
    );
    assert!(
        growth <= bound,
        "{model}: peak RSS grew by {growth} bytes, past {bound}"
    );
    drop(server);
}

macro_rules! per_model {
    ($test:ident: $($model:ident => $name:literal),* $(,)?) => {
        mod $test {
            $(#[test] fn $model() { super::$test($name) })*
        }
    };
}

per_model!(sigterm_while_streaming:
    select => "select", poll => "poll", epoll => "epoll", coroutine => "coroutine", uring => "uring");
per_model!(sigterm_with_idle_peers:
    select => "select", poll => "poll", epoll => "epoll", coroutine => "coroutine", uring => "uring");
per_model!(slow_readers_bounded:
    blocking => "blocking", threaded => "threaded", pool => "pool", busy_poll => "busy-poll",
    select => "select", poll => "poll", epoll => "epoll", coroutine => "coroutine", uring => "uring");

#[test]
fn the_event_models_are_the_ones_that_drain() {
    for model in iomux::server::Model::ALL {
        assert_eq!(
            model.capabilities().drain,
            EVENT_MODELS.contains(&model.name()),
            "{model}"
        );
    }
}
