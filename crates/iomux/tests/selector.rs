//! The selector suite, written once and instantiated per [`Backend`] at the
//! bottom of the file: every backend must show the same behaviour, and where
//! a backend lacks a feature (edge triggering on select and poll, the
//! hang-up flag on select) the test asserts the clear refusal or the
//! documented substitute instead.
//!
//! Besides the behaviours the selector module documents (one test each, by
//! the names it cites), each backend runs the error cases (`register_twice_is_refused`,
//! `unknown_fd_is_not_registered`, `closed_fd_is_refused`), the counters
//! (`stats_count_waits_events_and_registrations`), and three regressions:
//! `oneshot_disarmed_ignores_reset`, `waker_survives_concurrent_wakes` and
//! `full_events_do_not_starve_later_fds`.
//! `many_sockets_only_ready_reported` watches 1,000 socket pairs on poll and
//! epoll but 300 on select, whose fds must stay below `FD_SETSIZE` (1024).
//!
//! Time is only ever asserted as a lower bound, and an expected event is
//! waited for with a generous deadline, so a loaded machine cannot make a
//! test fail; the absence of an event is checked with a short wait after the
//! cause has certainly happened (data written on loopback is queued at the
//! peer before `write` returns).

mod util;

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use iomux::selector::{Backend, Event, Events, Interest, Mode, Selector, SelectorError, Token};
use util::{set_linger_zero, tcp_pair, Rng, GENEROUS};

/// How long a test waits when it expects *no* event.
const QUIET: Duration = Duration::from_millis(60);

/// Tests that use fd numbers near 1,000 (many sockets, a known-closed fd,
/// an fd past FD_SETSIZE) take this lock, so that no other test of this
/// binary reaches those numbers meanwhile. The other tests hold a handful
/// of fds each, far below.
static HIGH_FDS: Mutex<()> = Mutex::new(());

fn high_fds() -> std::sync::MutexGuard<'static, ()> {
    HIGH_FDS.lock().unwrap_or_else(|e| e.into_inner())
}

fn new(backend: Backend) -> Selector {
    Selector::new(backend).expect("selector")
}

/// Waits until an event for `token` arrives (or GENEROUS passes) and returns it.
fn expect_event(sel: &mut Selector, token: Token) -> Event {
    let mut events = Events::with_capacity(64);
    let deadline = Instant::now() + GENEROUS;
    while Instant::now() < deadline {
        sel.select(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        if let Some(ev) = events.iter().find(|e| e.token() == token) {
            return *ev;
        }
    }
    panic!("no event for {token:?} within {GENEROUS:?}");
}

/// One short wait; the tokens reported.
fn tokens_now(sel: &mut Selector, wait: Duration) -> Vec<Token> {
    let mut events = Events::with_capacity(1024);
    sel.select(&mut events, Some(wait)).unwrap();
    events.iter().map(|e| e.token()).collect()
}

fn fd(s: &impl AsRawFd) -> RawFd {
    s.as_raw_fd()
}

fn error_of(e: &io::Error) -> SelectorError {
    SelectorError::of(e)
        .unwrap_or_else(|| panic!("not a SelectorError: {e}"))
        .clone()
}

fn readable_after_peer_writes(backend: Backend) {
    let (mut client, server) = tcp_pair();
    let mut sel = new(backend);
    sel.register(fd(&server), Token(7), Interest::READABLE)
        .unwrap();
    assert!(
        tokens_now(&mut sel, QUIET).is_empty(),
        "nothing written yet"
    );
    client.write_all(b"ping").unwrap();
    let ev = expect_event(&mut sel, Token(7));
    assert!(ev.is_readable());
    assert!(!ev.is_writable(), "only read interest was asked for");
    assert!(!ev.is_read_closed());
}

fn writable_on_fresh_socket(backend: Backend) {
    let (client, _server) = tcp_pair();
    let mut sel = new(backend);
    sel.register(fd(&client), Token(1), Interest::WRITABLE)
        .unwrap();
    let ev = expect_event(&mut sel, Token(1));
    assert!(ev.is_writable());
    assert!(!ev.is_readable());
}

fn read_closed_on_peer_close(backend: Backend) {
    let (client, server) = tcp_pair();
    let mut sel = new(backend);
    sel.register(fd(&server), Token(3), Interest::READABLE)
        .unwrap();
    drop(client);
    let ev = expect_event(&mut sel, Token(3));
    if backend.reports_hangup() {
        assert!(ev.is_read_closed(), "{backend}: hang-up flag expected");
    } else {
        // select has no hang-up bit: the close shows as readable, and the
        // next read returns 0.
        assert!(ev.is_readable());
    }
    let mut buf = [0u8; 8];
    assert_eq!((&server).read(&mut buf).unwrap(), 0, "EOF after close");
}

fn read_closed_on_reset(backend: Backend) {
    let (client, server) = tcp_pair();
    let mut sel = new(backend);
    sel.register(fd(&server), Token(4), Interest::READABLE)
        .unwrap();
    set_linger_zero(&client);
    drop(client);
    let ev = expect_event(&mut sel, Token(4));
    if backend.reports_hangup() {
        assert!(
            ev.is_read_closed() || ev.is_error(),
            "{backend}: a reset must show as hang-up or error: {ev:?}"
        );
    } else {
        // select has neither a hang-up nor an error bit: the reset shows as
        // readable, and the read says what happened.
        assert!(ev.is_readable(), "{backend}: {ev:?}");
        assert!(!ev.is_read_closed(), "select never sets the hang-up flag");
    }
    // The read reports the reset (ECONNRESET), or EOF once it was consumed.
    let mut buf = [0u8; 8];
    match (&server).read(&mut buf) {
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => assert_eq!(n, 0, "{backend}: data after a reset"),
    }
}

fn reregister_switches_interest(backend: Backend) {
    let (mut client, server) = tcp_pair();
    let mut sel = new(backend);
    sel.register(fd(&server), Token(1), Interest::READABLE)
        .unwrap();
    assert!(tokens_now(&mut sel, QUIET).is_empty(), "not readable yet");
    sel.reregister(fd(&server), Token(2), Interest::WRITABLE)
        .unwrap();
    let ev = expect_event(&mut sel, Token(2));
    assert!(ev.is_writable() && !ev.is_readable());
    // Back to reading: data pending shows as readable, under the new token.
    client.write_all(b"x").unwrap();
    sel.reregister(fd(&server), Token(3), Interest::READABLE)
        .unwrap();
    let ev = expect_event(&mut sel, Token(3));
    assert!(ev.is_readable() && !ev.is_writable());
    assert!(
        !tokens_now(&mut sel, Duration::ZERO).contains(&Token(2)),
        "the old token is gone"
    );
}

fn deregister_stops_events(backend: Backend) {
    let (mut client, server) = tcp_pair();
    let mut sel = new(backend);
    sel.register(fd(&server), Token(5), Interest::READABLE)
        .unwrap();
    client.write_all(b"data").unwrap();
    expect_event(&mut sel, Token(5));
    sel.deregister(fd(&server)).unwrap();
    assert!(
        tokens_now(&mut sel, QUIET).is_empty(),
        "no events after deregister"
    );
    assert_eq!(sel.stats().registered, 0);
}

fn timeout_waits_at_least(backend: Backend) {
    let (_client, server) = tcp_pair();
    let mut sel = new(backend);
    sel.register(fd(&server), Token(1), Interest::READABLE)
        .unwrap();
    let mut events = Events::with_capacity(8);
    for wait in [
        Duration::from_micros(200), // rounds up to 1 ms, never down to 0
        Duration::from_millis(30),
    ] {
        let start = Instant::now();
        sel.select(&mut events, Some(wait)).unwrap();
        assert!(events.is_empty(), "nothing was ready");
        assert!(
            start.elapsed() >= wait,
            "{backend}: returned after {:?}, before the {wait:?} timeout",
            start.elapsed()
        );
    }
    // Zero never blocks; there is no upper bound to assert on a loaded
    // machine, but it must return and report nothing.
    sel.select(&mut events, Some(Duration::ZERO)).unwrap();
    assert!(events.is_empty());
}

fn waker_wakes_blocked_select(backend: Backend) {
    let mut sel = new(backend);
    let waker = sel.waker(Token(99)).unwrap();
    let err = sel.waker(Token(98)).unwrap_err();
    assert_eq!(error_of(&err), SelectorError::WakerExists);
    let remote = waker.clone();
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(30));
        remote.wake().unwrap();
    });
    let mut events = Events::with_capacity(8);
    sel.select(&mut events, None).unwrap();
    t.join().unwrap();
    let got: Vec<Token> = events.iter().map(|e| e.token()).collect();
    assert_eq!(got, vec![Token(99)]);
    assert!(events.iter().all(Event::is_readable));
    // The wake was consumed: no second event from it.
    assert!(tokens_now(&mut sel, QUIET).is_empty());
    // Many wakes before a select coalesce into one event, and the selector
    // keeps working after them.
    for _ in 0..100 {
        waker.wake().unwrap();
    }
    let mut events = Events::with_capacity(8);
    sel.select(&mut events, Some(GENEROUS)).unwrap();
    assert_eq!(events.len(), 1);
    assert!(tokens_now(&mut sel, QUIET).is_empty());
    let (mut client, server) = tcp_pair();
    sel.register(fd(&server), Token(1), Interest::READABLE)
        .unwrap();
    client.write_all(b"after").unwrap();
    expect_event(&mut sel, Token(1));
}

/// Registers `n` socket pairs' read ends, makes a random subset readable,
/// and checks that exactly that subset is reported.
fn many_sockets_only_ready_reported(backend: Backend) {
    let _guard = high_fds();
    // select can only watch fds below FD_SETSIZE (1024) and a socket pair
    // takes two fds: 300 pairs keep every fd of this binary far below it.
    let n = if backend == Backend::Select {
        300
    } else {
        1000
    };
    let want = 2 * n as u64 + 64;
    if !ensure_fd_limit(want) {
        eprintln!("{backend}: skipped: RLIMIT_NOFILE hard limit is below {want}");
        return;
    }
    let pairs: Vec<(UnixStream, UnixStream)> =
        (0..n).map(|_| UnixStream::pair().unwrap()).collect();
    let mut sel = new(backend);
    for (i, (_, reader)) in pairs.iter().enumerate() {
        sel.register(fd(reader), Token(i), Interest::READABLE)
            .unwrap();
    }
    assert_eq!(sel.stats().registered, n);
    let mut rng = Rng::new(0x5e1ec7);
    let mut ready = BTreeSet::new();
    while ready.len() < 50 {
        ready.insert(rng.range(0, n - 1));
    }
    for &i in &ready {
        (&pairs[i].0).write_all(b"!").unwrap();
    }
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + GENEROUS;
    let mut events = Events::with_capacity(2048);
    while seen.len() < ready.len() && Instant::now() < deadline {
        sel.select(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        for ev in events.iter() {
            let i = ev.token().0;
            assert!(ready.contains(&i), "{backend}: token {i} was never written");
            assert!(ev.is_readable());
            seen.insert(i);
        }
    }
    assert_eq!(seen, ready);
    // Level-triggered and undrained: one more wait reports exactly the same set.
    let again: BTreeSet<usize> = tokens_now(&mut sel, Duration::ZERO)
        .into_iter()
        .map(|t| t.0)
        .collect();
    assert_eq!(again, ready);
}

fn level_reports_again(backend: Backend) {
    let (mut client, server) = tcp_pair();
    let mut sel = new(backend);
    sel.register(fd(&server), Token(1), Interest::READABLE)
        .unwrap();
    client.write_all(b"undrained").unwrap();
    expect_event(&mut sel, Token(1));
    for _ in 0..3 {
        assert_eq!(
            tokens_now(&mut sel, Duration::ZERO),
            vec![Token(1)],
            "level-triggered: reported while data is left"
        );
    }
    let mut buf = [0u8; 64];
    assert_eq!((&server).read(&mut buf).unwrap(), 9);
    assert!(tokens_now(&mut sel, QUIET).is_empty(), "drained: quiet");
}

fn edge_reports_once(backend: Backend) {
    let (mut client, server) = tcp_pair();
    let mut sel = new(backend);
    if !backend.supports_edge() {
        assert!(!sel.supports_edge());
        let err = sel
            .register_with_mode(fd(&server), Token(1), Interest::READABLE, Mode::Edge)
            .unwrap_err();
        assert_eq!(
            error_of(&err),
            SelectorError::Unsupported {
                backend,
                mode: Mode::Edge
            }
        );
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
        assert!(err.to_string().contains("use epoll"), "{err}");
        // Nothing was registered, and the selector still works.
        assert_eq!(sel.stats().registered, 0);
        sel.register(fd(&server), Token(1), Interest::READABLE)
            .unwrap();
        client.write_all(b"x").unwrap();
        expect_event(&mut sel, Token(1));
        return;
    }
    assert!(sel.supports_edge());
    sel.register_with_mode(fd(&server), Token(1), Interest::READABLE, Mode::Edge)
        .unwrap();
    client.write_all(b"first").unwrap();
    expect_event(&mut sel, Token(1));
    assert!(
        tokens_now(&mut sel, QUIET).is_empty(),
        "edge-triggered: not reported again for data left unread"
    );
    client.write_all(b"second").unwrap();
    expect_event(&mut sel, Token(1));
    let mut buf = [0u8; 64];
    assert_eq!(
        (&server).read(&mut buf).unwrap(),
        11,
        "both writes were kept"
    );
}

fn oneshot_reports_once_until_rearmed(backend: Backend) {
    let (mut client, server) = tcp_pair();
    let mut sel = new(backend);
    assert!(sel.supports_oneshot());
    sel.register_with_mode(fd(&server), Token(1), Interest::READABLE, Mode::Oneshot)
        .unwrap();
    client.write_all(b"one").unwrap();
    expect_event(&mut sel, Token(1));
    assert!(
        tokens_now(&mut sel, QUIET).is_empty(),
        "oneshot: disabled after its event"
    );
    client.write_all(b"two").unwrap();
    assert!(
        tokens_now(&mut sel, QUIET).is_empty(),
        "oneshot: new data does not re-enable it"
    );
    sel.reregister_with_mode(fd(&server), Token(2), Interest::READABLE, Mode::Oneshot)
        .unwrap();
    expect_event(&mut sel, Token(2));
    assert!(tokens_now(&mut sel, QUIET).is_empty());
    // Still registered: deregister works without error.
    sel.deregister(fd(&server)).unwrap();
}

/// A disarmed oneshot stays quiet even for a hang-up or error, which poll(2)
/// reports whatever `events` asks (the poll backend once leaked it and
/// returned at once from every wait).
fn oneshot_disarmed_ignores_reset(backend: Backend) {
    let (mut client, server) = tcp_pair();
    let mut sel = new(backend);
    sel.register_with_mode(fd(&server), Token(1), Interest::READABLE, Mode::Oneshot)
        .unwrap();
    client.write_all(b"one").unwrap();
    expect_event(&mut sel, Token(1));
    set_linger_zero(&client);
    drop(client);
    let start = Instant::now();
    assert!(
        tokens_now(&mut sel, QUIET).is_empty(),
        "{backend}: a disarmed oneshot reported the reset"
    );
    assert!(start.elapsed() >= QUIET, "the wait ran to its timeout");
    sel.reregister_with_mode(fd(&server), Token(2), Interest::READABLE, Mode::Oneshot)
        .unwrap();
    let ev = expect_event(&mut sel, Token(2));
    assert!(ev.is_readable() || ev.is_read_closed() || ev.is_error());
    sel.deregister(fd(&server)).unwrap();
}

/// A thread waking without pause while the selector loops: every wait must
/// still end with the waker's event. (The waker once cleared its "pending"
/// flag before draining; a wake in between was read away with the flag left
/// set, and every later wake was skipped: the selector slept forever.)
fn waker_survives_concurrent_wakes(backend: Backend) {
    let mut sel = new(backend);
    let waker = sel.waker(Token(99)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let hammer = {
        let stop = stop.clone();
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                waker.wake().unwrap();
            }
        })
    };
    let mut events = Events::with_capacity(8);
    let start = Instant::now();
    let mut rounds = 0u64;
    let mut lost = false;
    while start.elapsed() < Duration::from_millis(300) {
        sel.select(&mut events, Some(GENEROUS)).unwrap();
        if events.is_empty() {
            lost = true;
            break;
        }
        assert!(events.iter().all(|e| e.token() == Token(99)));
        rounds += 1;
    }
    stop.store(true, Ordering::Relaxed);
    hammer.join().unwrap();
    assert!(
        !lost,
        "{backend}: wake-ups lost after {rounds} rounds: select slept {GENEROUS:?}"
    );
}

fn register_twice_is_refused(backend: Backend) {
    let (mut client, server) = tcp_pair();
    let mut sel = new(backend);
    sel.register(fd(&server), Token(1), Interest::READABLE)
        .unwrap();
    let err = sel
        .register(fd(&server), Token(2), Interest::WRITABLE)
        .unwrap_err();
    assert_eq!(
        error_of(&err),
        SelectorError::AlreadyRegistered(fd(&server))
    );
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    assert!(err.to_string().contains("use reregister"), "{err}");
    // The first registration stands, unchanged.
    assert_eq!(sel.stats().registered, 1);
    client.write_all(b"x").unwrap();
    let ev = expect_event(&mut sel, Token(1));
    assert!(ev.is_readable() && !ev.is_writable());
}

fn unknown_fd_is_not_registered(backend: Backend) {
    let (_client, server) = tcp_pair();
    let mut sel = new(backend);
    let err = sel.deregister(fd(&server)).unwrap_err();
    assert_eq!(error_of(&err), SelectorError::NotRegistered(fd(&server)));
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    let err = sel
        .reregister(fd(&server), Token(1), Interest::READABLE)
        .unwrap_err();
    assert_eq!(error_of(&err), SelectorError::NotRegistered(fd(&server)));
    // Deregistering twice: the second is refused.
    sel.register(fd(&server), Token(1), Interest::READABLE)
        .unwrap();
    sel.deregister(fd(&server)).unwrap();
    assert!(sel.deregister(fd(&server)).is_err());
    assert_eq!(sel.stats().registered, 0);
}

fn closed_fd_is_refused(backend: Backend) {
    let _guard = high_fds();
    let mut sel = new(backend);
    let err = sel.register(-1, Token(1), Interest::READABLE).unwrap_err();
    assert_eq!(error_of(&err), SelectorError::BadFd(-1));
    // An fd number nothing in this process has open (tests that could
    // reach it hold HIGH_FDS, as we do).
    let closed = 1000;
    assert!(
        !iomux::sys::is_open(closed),
        "fd {closed} unexpectedly open"
    );
    let err = sel
        .register(closed, Token(1), Interest::READABLE)
        .unwrap_err();
    assert_eq!(error_of(&err), SelectorError::BadFd(closed));
    assert!(err.to_string().contains("not an open file descriptor"));
    assert_eq!(sel.stats().registered, 0);
    let (mut client, server) = tcp_pair();
    sel.register(fd(&server), Token(2), Interest::READABLE)
        .unwrap();
    client.write_all(b"still works").unwrap();
    expect_event(&mut sel, Token(2));
}

fn stats_count_waits_events_and_registrations(backend: Backend) {
    let (mut a, a_server) = tcp_pair();
    let (mut b, b_server) = tcp_pair();
    let mut sel = new(backend);
    let s0 = sel.stats();
    assert_eq!((s0.wait_calls, s0.events, s0.registered), (0, 0, 0));
    sel.register(fd(&a_server), Token(1), Interest::READABLE)
        .unwrap();
    sel.register(fd(&b_server), Token(2), Interest::READABLE)
        .unwrap();
    assert_eq!(sel.stats().registered, 2);
    a.write_all(b"1").unwrap();
    b.write_all(b"2").unwrap();
    let mut events = Events::with_capacity(8);
    let mut waits = 0;
    let mut reported = 0;
    let deadline = Instant::now() + GENEROUS;
    let mut seen = BTreeSet::new();
    while seen.len() < 2 && Instant::now() < deadline {
        sel.select(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        waits += 1;
        reported += events.len() as u64;
        seen.extend(events.iter().map(|e| e.token()));
    }
    let s = sel.stats();
    assert_eq!(
        s.wait_calls, waits,
        "one wait call per select (no EINTR here)"
    );
    assert_eq!(s.events, reported);
    // Both still undrained (level): one more select is one more wait call
    // and two more events.
    sel.select(&mut events, Some(Duration::ZERO)).unwrap();
    assert_eq!(events.len(), 2);
    let s2 = sel.stats();
    assert_eq!(s2.wait_calls, s.wait_calls + 1);
    assert_eq!(s2.events, s.events + 2);
    sel.deregister(fd(&a_server)).unwrap();
    assert_eq!(sel.stats().registered, 1);
    if backend == Backend::Epoll {
        assert_eq!(sel.stats().ctl_calls, 3, "two adds and a delete");
    } else {
        assert_eq!(sel.stats().ctl_calls, 0, "interest set is in user space");
    }
}

fn events_capacity_bounds_each_wait(backend: Backend) {
    let pairs: Vec<(UnixStream, UnixStream)> =
        (0..10).map(|_| UnixStream::pair().unwrap()).collect();
    let mut sel = new(backend);
    for (i, (w, r)) in pairs.iter().enumerate() {
        sel.register(fd(r), Token(i), Interest::READABLE).unwrap();
        (&*w).write_all(b"x").unwrap();
    }
    let mut events = Events::with_capacity(3);
    sel.select(&mut events, Some(GENEROUS)).unwrap();
    assert!(!events.is_empty() && events.len() <= 3, "{}", events.len());
}

/// Ready fds beyond the capacity of `Events` are reported by the next calls,
/// even while the ones reported first stay ready. (select and poll once
/// scanned from the lowest fd every time: with capacity 1 and two fds that
/// stay ready, the second was never reported. Found by the model test
/// `tests/selector_model.rs`.)
fn full_events_do_not_starve_later_fds(backend: Backend) {
    let pairs: Vec<(UnixStream, UnixStream)> =
        (0..3).map(|_| UnixStream::pair().unwrap()).collect();
    let mut sel = new(backend);
    for (i, (ours, peer)) in pairs.iter().enumerate() {
        sel.register(fd(ours), Token(i), Interest::READABLE)
            .unwrap();
        // Level-triggered and never read: all three stay ready.
        (&*peer).write_all(b"x").unwrap();
    }
    for capacity in [1, 2] {
        let mut events = Events::with_capacity(capacity);
        let mut seen = BTreeSet::new();
        for _ in 0..3usize.div_ceil(capacity) {
            sel.select(&mut events, Some(GENEROUS)).unwrap();
            assert_eq!(events.len(), capacity, "{backend}: a full buffer");
            seen.extend(events.iter().map(|e| e.token().0));
        }
        assert_eq!(
            seen,
            BTreeSet::from([0, 1, 2]),
            "{backend}, capacity {capacity}: every ready fd reported in turn"
        );
    }
}

macro_rules! suite {
    ($module:ident, $backend:expr) => {
        mod $module {
            use super::*;

            fn backend() -> Backend {
                $backend
            }

            suite!(@tests
                readable_after_peer_writes,
                writable_on_fresh_socket,
                read_closed_on_peer_close,
                read_closed_on_reset,
                reregister_switches_interest,
                deregister_stops_events,
                timeout_waits_at_least,
                waker_wakes_blocked_select,
                many_sockets_only_ready_reported,
                level_reports_again,
                edge_reports_once,
                oneshot_reports_once_until_rearmed,
                oneshot_disarmed_ignores_reset,
                waker_survives_concurrent_wakes,
                register_twice_is_refused,
                unknown_fd_is_not_registered,
                closed_fd_is_refused,
                stats_count_waits_events_and_registrations,
                events_capacity_bounds_each_wait,
                full_events_do_not_starve_later_fds
            );
        }
    };
    (@tests $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                super::$name(backend());
            }
        )*
    };
}

suite!(select, Backend::Select);
suite!(poll, Backend::Poll);
#[cfg(target_os = "linux")]
suite!(epoll, Backend::Epoll);

/// select(2) refuses an fd at or past FD_SETSIZE with the error the issue
/// names, and keeps working; poll and epoll take the same fd.
#[test]
fn select_refuses_fd_past_fd_setsize() {
    let _guard = high_fds();
    if !ensure_fd_limit(1031) {
        eprintln!(
            "select_refuses_fd_past_fd_setsize: skipped: the RLIMIT_NOFILE hard \
             limit is below 1031, so no fd can be placed at 1030"
        );
        return;
    }
    let (mut client, server) = tcp_pair();
    // SAFETY: fcntl(F_DUPFD) on an open fd; it returns a new fd >= 1030 or -1.
    let high = unsafe { libc::fcntl(server.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 1030) };
    assert!(high >= 0, "F_DUPFD: {}", io::Error::last_os_error());
    // SAFETY: `high` is a fresh fd that nothing else owns.
    let high = unsafe { OwnedFd::from_raw_fd(high) };
    assert_eq!(high.as_raw_fd(), 1030, "fd 1030 was free under HIGH_FDS");

    let mut sel = new(Backend::Select);
    let err = sel
        .register(high.as_raw_fd(), Token(1), Interest::READABLE)
        .unwrap_err();
    assert_eq!(
        error_of(&err),
        SelectorError::FdSetSize {
            fd: 1030,
            limit: 1024
        }
    );
    assert_eq!(
        err.to_string(),
        "fd 1030 exceeds select()'s FD_SETSIZE limit of 1024; use poll or epoll"
    );
    assert_eq!(sel.stats().registered, 0);
    // Still usable.
    sel.register(server.as_raw_fd(), Token(2), Interest::READABLE)
        .unwrap();
    client.write_all(b"x").unwrap();
    expect_event(&mut sel, Token(2));

    // The others take the same fd.
    for backend in Backend::supported()
        .into_iter()
        .filter(|b| *b != Backend::Select)
    {
        let mut other = new(backend);
        other
            .register(high.as_raw_fd(), Token(3), Interest::READABLE)
            .unwrap();
        assert!(expect_event(&mut other, Token(3)).is_readable());
    }
}

/// Raises the soft RLIMIT_NOFILE to at least `want` if the hard limit
/// allows; whether it now is.
fn ensure_fd_limit(want: u64) -> bool {
    iomux::sys::raise_nofile_limit(Some(want)).is_ok_and(|soft| soft >= want)
}

#[test]
fn recommended_backend_is_the_default() {
    let sel = Selector::default_backend().unwrap();
    assert_eq!(sel.backend(), Backend::recommended());
    assert!(Backend::supported().contains(&Backend::recommended()));
    #[cfg(target_os = "linux")]
    assert_eq!(Backend::recommended(), Backend::Epoll);
    assert_eq!("epoll".parse::<Backend>().unwrap(), Backend::Epoll);
    assert!("kqueue-on-linux".parse::<Backend>().is_err());
}

#[test]
fn writes_to_tcp_are_seen_through_a_cloned_stream() {
    // A registration follows the open file, not the Rust value: a clone
    // (dup) shares readiness with the original.
    let (mut client, server) = tcp_pair();
    let clone: TcpStream = server.try_clone().unwrap();
    let mut sel = new(Backend::recommended());
    sel.register(fd(&clone), Token(1), Interest::READABLE)
        .unwrap();
    client.write_all(b"y").unwrap();
    expect_event(&mut sel, Token(1));
    let mut buf = [0u8; 1];
    (&server).read_exact(&mut buf).unwrap();
    assert!(tokens_now(&mut sel, QUIET).is_empty());
}
