//! The conformance suite every I/O model must pass, written once and
//! instantiated per [`Model`] at the bottom of the file, again with 2
//! and 4 loops ([`Config::threads`]) for the models that run several, and
//! for uring once more with a batch wait ([`Config::uring_batch_wait`]),
//! and for every model that waits for events with a latency budget
//! ([`Config::latency_budget`]).
//!
//! Each instance runs twice: once with the built-in `upper` protocol, once
//! with [`LocalUpper`], a handler defined here, in the test, the way a user
//! of the library writes one. Every instance also checks the lifecycle
//! hooks with [`Greeter`].
//!
//! Where a model cannot meet a check by design, the check asserts the
//! behaviour the model has instead, with the reason next to it: iterative
//! `blocking` serves one client at a time, so "concurrent" clients are
//! served in turn and a client that never reads holds the server.

mod util;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use iomux::protocol::{Action, CloseReason, Handler, Protocol};
use iomux::server::{Config, Model, Server};
use util::{any_local_address, Rng, GENEROUS};

/// What a suite instance serves with: a model, its loops, and whose
/// handler.
#[derive(Copy, Clone, Debug)]
struct Case {
    model: Model,
    threads: usize,
    /// [`Config::uring_batch_wait`] in microseconds; 0: none.
    batch_wait_us: u64,
    /// [`Config::latency_budget`] in microseconds; 0: none.
    budget_us: u64,
    /// Serve [`LocalUpper`] (defined in this file) instead of the
    /// built-in [`Protocol::Upper`].
    local: bool,
}

/// The `upper` protocol written in the test, as a user of the library
/// would: the framework must serve a handler it has never seen.
struct LocalUpper;

impl Handler for LocalUpper {
    fn on_data(&mut self, input: &[u8], out: &mut Vec<u8>) -> Action {
        out.extend(input.iter().map(|b| b.to_ascii_uppercase()));
        Action::Continue
    }
}

fn config_for(case: Case, config: Config) -> Config {
    Config {
        threads: case.threads,
        uring_batch_wait: (case.batch_wait_us > 0)
            .then(|| Duration::from_micros(case.batch_wait_us)),
        latency_budget: (case.budget_us > 0).then(|| Duration::from_micros(case.budget_us)),
        ..config
    }
}

fn start(case: Case, config: Config) -> Server {
    let config = config_for(case, config);
    let addr = any_local_address();
    let server = if case.local {
        Server::spawn(case.model, addr, config, || LocalUpper)
    } else {
        Server::spawn(case.model, addr, config, Protocol::Upper)
    };
    server.expect("server starts on 127.0.0.1:0")
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(GENEROUS)).unwrap();
    s.set_write_timeout(Some(GENEROUS)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// One request and its whole reply.
fn round_trip(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).unwrap();
    let mut reply = vec![0; Protocol::Upper.expected(msg).len()];
    s.read_exact(&mut reply).unwrap();
    reply
}

/// Sends `input` in the given chunk sizes from a writer thread, shuts the
/// write side, and returns everything read until the server's EOF.
fn exchange(addr: SocketAddr, input: Vec<u8>, chunks: Vec<usize>) -> Vec<u8> {
    let mut s = connect(addr);
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let mut rest = &input[..];
        let mut sizes = chunks.into_iter().cycle();
        while !rest.is_empty() {
            let n = sizes.next().unwrap().min(rest.len());
            w.write_all(&rest[..n]).unwrap();
            rest = &rest[n..];
        }
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    writer.join().unwrap();
    out
}

/// Every byte value, in random chunk sizes, comes back transformed and in
/// order; the server closes after the client's EOF.
fn data_integrity(case: Case) {
    let server = start(case, Config::default());
    let mut rng = Rng::new(0x1688);
    let mut input: Vec<u8> = (0..=255u8).cycle().take(256 * 64).collect();
    input.extend(rng.bytes(200_000));
    let chunks = (0..257).map(|_| rng.range(1, 4096)).collect();
    let out = exchange(server.addr(), input.clone(), chunks);
    assert_eq!(out.len(), input.len());
    assert!(
        out == Protocol::Upper.expected(&input),
        "reply differs from upper(input)"
    );
}

/// 100 clients at once, each doing 20 round trips. Iterative `blocking`
/// serves one client at a time by design: the clients take turns.
fn many_clients(case: Case) {
    let model = case.model;
    let server = start(case, Config::default());
    let addr = server.addr();
    let client = move |id: usize| {
        let mut s = connect(addr);
        for i in 0..20 {
            let msg = format!("client {id} message {i} \u{e9}\n");
            assert_eq!(
                round_trip(&mut s, msg.as_bytes()),
                Protocol::Upper.expected(msg.as_bytes())
            );
        }
    };
    if model.is_concurrent() {
        let handles: Vec<_> = (0..100)
            .map(|id| thread::spawn(move || client(id)))
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    } else {
        (0..100).for_each(client);
    }
    assert!(util::wait_until(|| server.counters().active() == 0));
    assert_eq!(server.counters().snapshot().accepted, 100);
    // Each loop counts its own connections. SO_REUSEPORT hashes each
    // connection to a loop: that one of N loops gets none of the 100 has a
    // chance of at most N (1 - 1/N)^100 (2^-99 for two loops).
    let per_loop: Vec<u64> = server
        .counters()
        .loops()
        .iter()
        .map(|c| c.accepted.load(Ordering::Relaxed))
        .collect();
    assert_eq!(per_loop.len(), case.threads);
    assert!(
        per_loop.iter().all(|&n| n > 0),
        "connections per loop: {per_loop:?}"
    );
}

/// The client shuts its write side after 1 MiB and still gets every reply
/// byte, then EOF.
fn half_close(case: Case) {
    let server = start(case, Config::default());
    let input = Rng::new(7).bytes(1 << 20);
    let out = exchange(server.addr(), input.clone(), vec![65_536]);
    assert_eq!(
        out.len(),
        input.len(),
        "every byte of the reply arrives after the half-close"
    );
    assert!(out == Protocol::Upper.expected(&input));
}

/// A client that resets mid-stream is closed and counted; another client is
/// served undisturbed, before and after.
fn reset_does_not_disturb_others(case: Case) {
    let model = case.model;
    let server = start(case, Config::default());
    let addr = server.addr();
    let resetter = move || {
        let mut s = connect(addr);
        s.write_all(&[b'x'; 100_000]).unwrap();
        let mut some = [0u8; 1000];
        s.read_exact(&mut some).unwrap();
        util::set_linger_zero(&s);
        drop(s); // RST, with reply bytes still unread
    };
    let steady = move || {
        let mut s = connect(addr);
        for i in 0..200 {
            let msg = format!("steady {i}");
            assert_eq!(
                round_trip(&mut s, msg.as_bytes()),
                msg.to_uppercase().as_bytes()
            );
        }
    };
    if model.is_concurrent() {
        let (a, b) = (thread::spawn(resetter), thread::spawn(steady));
        a.join().unwrap();
        b.join().unwrap();
    } else {
        // One client at a time by design: the steady client comes after.
        resetter();
        steady();
    }
    assert!(util::wait_until(|| server.counters().active() == 0));
    // The reset connection was closed like any other, and nothing else broke.
    assert_eq!(server.counters().snapshot().closed, 2);
}

/// One 16 MiB message, written while the reply is read.
fn large_message(case: Case) {
    let server = start(case, Config::default());
    let input = Rng::new(16).bytes(16 << 20);
    let out = exchange(server.addr(), input.clone(), vec![1 << 20]);
    assert_eq!(out.len(), input.len());
    assert!(out == Protocol::Upper.expected(&input));
}

/// A client sends up to 64 MiB and never reads. The server stops reading it
/// once its output bound is full (memory stays bounded), and another client
/// keeps getting answers meanwhile.
fn slow_reader_is_bounded(case: Case) {
    let model = case.model;
    let config = Config::default();
    let server = start(case, config);
    let addr = server.addr();
    let hog = connect(addr);
    hog.set_nonblocking(true).unwrap();
    // Push until the kernel and the server refuse more: 64 MiB or 3 s.
    let chunk = vec![b'a'; 1 << 16];
    let (mut sent, start) = (0usize, Instant::now());
    let mut stalled_since = None;
    while sent < 64 << 20 && start.elapsed() < Duration::from_secs(3) {
        match (&hog).write(&chunk) {
            Ok(n) => {
                sent += n;
                stalled_since = None;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Stalled for 300 ms: the server has stopped reading us.
                let since = *stalled_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(300) {
                    break;
                }
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("hog write: {e}"),
        }
    }
    assert!(
        sent < 64 << 20,
        "the server must stop reading a peer that does not read"
    );

    let mut other = connect(addr);
    if model.is_concurrent() {
        for i in 0..50 {
            let msg = format!("still served {i}");
            assert_eq!(
                round_trip(&mut other, msg.as_bytes()),
                msg.to_uppercase().as_bytes()
            );
        }
    } else {
        // Iterative blocking, by design: the hog holds the only server
        // thread, so the other client gets no answer until the hog leaves.
        other.write_all(b"wait").unwrap();
        other
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 4];
        let err = other.read_exact(&mut buf).unwrap_err();
        assert!(matches!(
            err.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ));
    }
    // The driver's own accounting: no connection ever held more than the
    // output bound plus one read's worth of reply.
    let peak = server.counters().snapshot().peak_conn_output as usize;
    assert!(
        peak <= config.max_output + config.read_chunk,
        "peak pending output {peak} exceeds bound {} + {}",
        config.max_output,
        config.read_chunk
    );
    if model == Model::BusyPoll || model.is_event_driven() {
        // Non-blocking models buffer up to the bound before they stop
        // reading: the check above was really exercised.
        assert!(
            peak >= config.max_output,
            "peak {peak}: the bound was never reached"
        );
    }
    util::set_linger_zero(&hog);
    drop(hog);
    if !model.is_concurrent() {
        other.set_read_timeout(Some(GENEROUS)).unwrap();
        let mut buf = [0u8; 4];
        other.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"WAIT");
    }
    drop(other);
    assert!(util::wait_until(|| server.counters().active() == 0));
    assert_eq!(server.counters().snapshot().pending_output, 0);
}

/// After 1,000 connections have come and gone, the server holds no socket
/// but its listeners (one per loop).
fn no_fd_leak(case: Case) {
    let server = start(case, Config::default());
    let port = server.addr().port();
    for i in 0..1000 {
        let mut s = connect(server.addr());
        if i % 2 == 0 {
            assert_eq!(round_trip(&mut s, b"ping"), b"PING");
        } // odd ones close without a word
    }
    assert!(util::wait_until(|| server.counters().active() == 0));
    assert!(
        util::wait_until(|| util::sockets_on_local_port(port) == case.threads),
        "{} sockets on the server's port; want its {} listeners only",
        util::sockets_on_local_port(port),
        case.threads
    );
    assert_eq!(server.counters().snapshot().accepted, 1000);
}

/// Stopping returns promptly and releases the port's sockets, with clients
/// still connected (readiness and busy-poll close them; thread models let
/// each thread finish with its client, which here closes right after).
fn stops_cleanly(case: Case) {
    let server = start(case, Config::default());
    let port = server.addr().port();
    let mut s = connect(server.addr());
    assert_eq!(round_trip(&mut s, b"before stop"), b"BEFORE STOP");
    let counters = server.counters().clone();
    drop(s);
    assert!(util::wait_until(|| counters.active() == 0));
    server.shutdown().expect("serve returns Ok after stop");
    assert!(util::wait_until(|| util::sockets_on_local_port(port) == 0));
}

/// Greets, upper-cases, closes on a line that starts with `bye`, and
/// records why each connection ended.
struct Greeter {
    closed: Arc<Mutex<Vec<CloseReason>>>,
}

impl Handler for Greeter {
    fn on_connect(&mut self, out: &mut Vec<u8>) -> Action {
        out.extend_from_slice(b"hi\n");
        Action::Continue
    }

    fn on_data(&mut self, input: &[u8], out: &mut Vec<u8>) -> Action {
        out.extend(input.iter().map(|b| b.to_ascii_uppercase()));
        if input.starts_with(b"bye") {
            Action::Close
        } else {
            Action::Continue
        }
    }

    fn on_close(&mut self, reason: CloseReason) {
        self.closed.lock().unwrap().push(reason);
    }
}

/// The hooks: every connection is greeted before anything else it
/// receives, and the handler hears why each one ended, once: the peer's
/// EOF, its own close, a reset, and (where the model closes its
/// connections on stop) the server's stop.
fn hooks_greet_and_report_every_close(case: Case) {
    let model = case.model;
    let closed = Arc::new(Mutex::new(Vec::new()));
    let factory = {
        let closed = closed.clone();
        move || Greeter {
            closed: closed.clone(),
        }
    };
    let config = config_for(case, Config::default());
    let server = Server::spawn(model, any_local_address(), config, factory).unwrap();
    let addr = server.addr();
    let greeted = |s: &mut TcpStream| {
        let mut hi = [0u8; 3];
        s.read_exact(&mut hi).unwrap();
        assert_eq!(&hi, b"hi\n", "the greeting comes first");
    };
    let counters = server.counters().clone();
    let wait_closed = |n: usize| {
        assert!(
            util::wait_until(|| closed.lock().unwrap().len() >= n && counters.active() == 0),
            "{n} closes expected: {:?}",
            closed.lock().unwrap()
        );
    };

    // The peer closes: its last reply, then EOF, then on_close(PeerClosed).
    let mut s = connect(addr);
    greeted(&mut s);
    assert_eq!(round_trip(&mut s, b"abc"), b"ABC");
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    drop(s);
    wait_closed(1);

    // The handler closes: the reply to "bye" arrives whole, then EOF.
    let mut s = connect(addr);
    greeted(&mut s);
    s.write_all(b"bye now").unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"BYE NOW");
    drop(s);
    wait_closed(2);

    // The peer resets.
    let mut s = connect(addr);
    greeted(&mut s);
    util::set_linger_zero(&s);
    drop(s);
    wait_closed(3);
    assert_eq!(
        *closed.lock().unwrap(),
        [
            CloseReason::PeerClosed,
            CloseReason::HandlerClosed,
            CloseReason::Reset
        ]
    );

    // The server stops with a client connected. The thread models leave
    // each connection to its thread, which ends with its client.
    let mut s = connect(addr);
    greeted(&mut s);
    assert!(util::wait_until(|| counters.active() == 1));
    let reader = thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest); // EOF (or a reset) once stopped
    });
    let closes_on_stop = !matches!(model, Model::Blocking | Model::Threaded | Model::Pool);
    if closes_on_stop {
        server.shutdown().unwrap();
        reader.join().unwrap();
        let reasons = closed.lock().unwrap();
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        assert_eq!(reasons[3], CloseReason::ServerStop);
    } else {
        drop(server);
        drop(reader); // detached: the client's socket stays with it
    }
}

/// Whether `model` can run here; if not, prints why (the test is skipped:
/// io_uring may be missing, disabled by sysctl, or filtered by seccomp).
fn available(case: Case) -> bool {
    if case.model == Model::Uring {
        match iomux::uring::probe() {
            Err(why) => {
                eprintln!("skipped: {why}");
                return false;
            }
            Ok(p) if case.batch_wait_us + case.budget_us > 0 && !p.features.min_timeout => {
                eprintln!("skipped: a batch wait or latency budget on uring needs IORING_FEAT_MIN_TIMEOUT (Linux 6.12)");
                return false;
            }
            Ok(_) => {}
        }
    }
    true
}

macro_rules! conformance {
    (@or_default $d:literal) => { $d };
    (@or_default $d:literal $n:literal) => { $n };
    (@local) => { false };
    (@local local) => { true };
    ($($name:ident => $model:expr $(, $threads:literal loops)? $(, wait $us:literal us)? $(, budget $b:literal us)? $(, by $local:ident)?);* $(;)?) => {$(
        mod $name {
            use super::*;
            const CASE: Case = Case {
                model: $model,
                threads: conformance!(@or_default 1 $($threads)?),
                batch_wait_us: conformance!(@or_default 0 $($us)?),
                budget_us: conformance!(@or_default 0 $($b)?),
                local: conformance!(@local $($local)?),
            };
            #[test] fn hooks_greet_and_report_every_close() { if available(CASE) { super::hooks_greet_and_report_every_close(CASE) } }
            #[test] fn data_integrity() { if available(CASE) { super::data_integrity(CASE) } }
            #[test] fn many_clients() { if available(CASE) { super::many_clients(CASE) } }
            #[test] fn half_close() { if available(CASE) { super::half_close(CASE) } }
            #[test] fn reset_does_not_disturb_others() { if available(CASE) { super::reset_does_not_disturb_others(CASE) } }
            #[test] fn large_message() { if available(CASE) { super::large_message(CASE) } }
            #[test] fn slow_reader_is_bounded() { if available(CASE) { super::slow_reader_is_bounded(CASE) } }
            #[test] fn no_fd_leak() { if available(CASE) { super::no_fd_leak(CASE) } }
            #[test] fn stops_cleanly() { if available(CASE) { super::stops_cleanly(CASE) } }
        }
    )*};
}

conformance! {
    blocking => Model::Blocking;
    threaded => Model::Threaded;
    pool => Model::Pool;
    busy_poll => Model::BusyPoll;
    select => Model::Select;
    poll => Model::Poll;
    epoll => Model::Epoll;
    coroutine => Model::Coroutine;
    uring => Model::Uring;
    epoll_2_loops => Model::Epoll, 2 loops;
    epoll_4_loops => Model::Epoll, 4 loops;
    coroutine_2_loops => Model::Coroutine, 2 loops;
    coroutine_4_loops => Model::Coroutine, 4 loops;
    uring_2_loops => Model::Uring, 2 loops;
    uring_4_loops => Model::Uring, 4 loops;
    uring_batch_wait => Model::Uring, wait 200 us;
    select_budget => Model::Select, budget 1000 us;
    poll_budget => Model::Poll, budget 1000 us;
    epoll_budget => Model::Epoll, budget 1000 us;
    coroutine_budget => Model::Coroutine, budget 1000 us;
    uring_budget => Model::Uring, budget 1000 us;
    epoll_2_loops_budget => Model::Epoll, 2 loops, budget 1000 us;
    blocking_local => Model::Blocking, by local;
    threaded_local => Model::Threaded, by local;
    pool_local => Model::Pool, by local;
    busy_poll_local => Model::BusyPoll, by local;
    select_local => Model::Select, by local;
    poll_local => Model::Poll, by local;
    epoll_local => Model::Epoll, by local;
    coroutine_local => Model::Coroutine, by local;
    uring_local => Model::Uring, by local;
    epoll_2_loops_local => Model::Epoll, 2 loops, by local;
}
