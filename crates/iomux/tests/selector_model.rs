//! Model-based property test of the [`Selector`]: random sequences of
//! register / reregister / deregister and readiness changes over a few
//! socket pairs, each `select` compared with what a simple model predicts.
//! Run once per backend.
//!
//! Each case runs up to 40 operations over three `UnixStream` pairs; one end
//! of each pair ("ours") is what the selector watches, the other ("peer") is
//! how readiness is changed:
//!
//! * `Write`: the peer writes bytes, so ours is readable;
//! * `Drain`: ours reads everything queued, so it is not (unless the peer
//!   has closed: EOF stays readable);
//! * `Fill`: ours writes until `WouldBlock`, so it is not writable;
//! * `Unfill`: the peer reads everything, so ours is writable again;
//! * `ClosePeer`: the peer is dropped (hang-up: readable, writable, and
//!   read-closed where the backend reports it); if it had not read all that
//!   ours wrote, ours also gets a pending `ECONNRESET` (an error event where
//!   the backend has an error bit, cleared by the read that returns it);
//! * `Reset`: ours is deregistered if registered, both ends are closed and
//!   a fresh pair takes their place (fd numbers get reused);
//! * `Select`: one `select` with a zero timeout;
//! * `SelectCapped`: the same with [`Events`] of capacity 1 or 2, fewer
//!   than may be ready.
//!
//! What the model predicts, per registration:
//!
//! * level-triggered: reported exactly when its readiness meets its
//!   interest, with exactly those readable / writable flags;
//! * oneshot: the same while armed; once reported it is disarmed and never
//!   reported again (not even for a hang-up) until reregistered;
//! * edge-triggered (epoll only), modelled conservatively: it *must* be
//!   reported when, since the last `select`, something that wakes the socket
//!   happened (new data for a readable interest, space freed for a writable
//!   one, a hang-up, or the registration itself) and its readiness meets its
//!   interest; it must *not* be reported when nothing at all happened to it
//!   since the last `select`; otherwise either is allowed;
//! * every reported event carries the current token, and readable /
//!   writable flags equal to readiness within interest, read-closed exactly
//!   after a hang-up where [`Backend::reports_hangup`], error exactly while
//!   an error is pending (except on select, which has no error bit);
//! * registering a registered fd fails with
//!   [`SelectorError::AlreadyRegistered`], reregistering or deregistering
//!   an unregistered one with [`SelectorError::NotRegistered`], an edge mode
//!   on select or poll with [`SelectorError::Unsupported`] (checked first);
//!   a refused request changes nothing;
//! * a `select` that fills its [`Events`] may leave out registrations the
//!   model says must be reported, but not for ever: [`Events`] promises
//!   that ready fds beyond its capacity are reported by the next call, so a
//!   registration that stays due is left out of fewer than [`PAIRS`]
//!   capped calls in a row (with capacity 1 and three due, each is reported
//!   at least every third call);
//! * [`Stats::registered`](iomux::selector::Stats) follows the model and
//!   [`Stats::events`](iomux::selector::Stats) counts the events returned.
//!
//! 64 cases per backend by default, so CI spends a few seconds here; run it
//! longer with e.g.
//! `PROPTEST_CASES=5000 cargo test -p iomux --test selector_model --release`.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use iomux::selector::{Backend, Event, Events, Interest, Mode, Selector, SelectorError, Token};
use proptest::prelude::*;

/// Socket pairs per case.
const PAIRS: usize = 3;
/// Tokens are `pair * TAGS + tag`, so an event names its pair.
const TAGS: usize = 16;

#[derive(Clone, Debug)]
enum Op {
    Register {
        pair: usize,
        tag: usize,
        interest: Interest,
        mode: Mode,
    },
    Reregister {
        pair: usize,
        tag: usize,
        interest: Interest,
        mode: Mode,
    },
    Deregister {
        pair: usize,
    },
    Write {
        pair: usize,
        len: usize,
    },
    Drain {
        pair: usize,
    },
    Fill {
        pair: usize,
    },
    Unfill {
        pair: usize,
    },
    ClosePeer {
        pair: usize,
    },
    Reset {
        pair: usize,
    },
    Select,
    SelectCapped {
        capacity: usize,
    },
}

fn interest() -> impl Strategy<Value = Interest> {
    prop_oneof![
        Just(Interest::READABLE),
        Just(Interest::WRITABLE),
        Just(Interest::BOTH)
    ]
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![Just(Mode::Level), Just(Mode::Edge), Just(Mode::Oneshot)]
}

fn op() -> impl Strategy<Value = Op> {
    let pair = 0..PAIRS;
    prop_oneof![
        3 => Just(Op::Select),
        3 => (1..=2usize).prop_map(|capacity| Op::SelectCapped { capacity }),
        3 => (pair.clone(), 0..TAGS, interest(), mode())
            .prop_map(|(pair, tag, interest, mode)| Op::Register { pair, tag, interest, mode }),
        2 => (pair.clone(), 0..TAGS, interest(), mode())
            .prop_map(|(pair, tag, interest, mode)| Op::Reregister { pair, tag, interest, mode }),
        1 => pair.clone().prop_map(|pair| Op::Deregister { pair }),
        3 => (pair.clone(), 1..=64usize).prop_map(|(pair, len)| Op::Write { pair, len }),
        2 => pair.clone().prop_map(|pair| Op::Drain { pair }),
        1 => pair.clone().prop_map(|pair| Op::Fill { pair }),
        1 => pair.clone().prop_map(|pair| Op::Unfill { pair }),
        1 => pair.clone().prop_map(|pair| Op::ClosePeer { pair }),
        1 => pair.prop_map(|pair| Op::Reset { pair }),
    ]
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(), 1..=40)
}

/// 64 cases unless `PROPTEST_CASES` says otherwise.
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 64;
    }
    config
}

/// The model of one registration.
#[derive(Clone, Copy, Debug)]
struct Reg {
    token: Token,
    interest: Interest,
    mode: Mode,
    /// Oneshot: not reported since it was (re)armed.
    armed: bool,
    /// Edge: something happened to the socket since the last `select`.
    touched: bool,
    /// Edge: something that wakes this registration happened since the last
    /// `select`: it must be reported if ready.
    woken: bool,
    /// Capped `select`s in a row that left it out while it was due.
    left_out: usize,
}

/// One socket pair and its model.
struct Pair {
    ours: UnixStream,
    peer: Option<UnixStream>,
    /// Bytes the peer wrote that ours has not read.
    queued: usize,
    /// Ours wrote until `WouldBlock` and the peer has not read it yet.
    filled: bool,
    /// The peer closed with ours' data unread: ours has `ECONNRESET`
    /// pending until a read returns it.
    error: bool,
    reg: Option<Reg>,
}

impl Pair {
    fn new() -> Pair {
        let (ours, peer) = UnixStream::pair().expect("socketpair");
        ours.set_nonblocking(true).unwrap();
        peer.set_nonblocking(true).unwrap();
        Pair {
            ours,
            peer: Some(peer),
            queued: 0,
            filled: false,
            error: false,
            reg: None,
        }
    }

    fn fd(&self) -> RawFd {
        self.ours.as_raw_fd()
    }

    fn peer_closed(&self) -> bool {
        self.peer.is_none()
    }

    /// Data or EOF to read.
    fn readable(&self) -> bool {
        self.queued > 0 || self.peer_closed()
    }

    /// Room to write (a closed peer's queue is freed: writes fail at once,
    /// which counts as "ready").
    fn writable(&self) -> bool {
        !self.filled || self.peer_closed()
    }

    fn ready_for(&self, interest: Interest) -> bool {
        (interest.is_readable() && self.readable()) || (interest.is_writable() && self.writable())
    }

    /// The edge model: `wakes` says whether this change wakes a
    /// registration with `interest`.
    fn touch(&mut self, wakes: impl Fn(Interest) -> bool) {
        if let Some(reg) = &mut self.reg {
            reg.touched = true;
            reg.woken |= wakes(reg.interest);
        }
    }
}

/// Reads until `WouldBlock` or EOF: the bytes read, and whether a read
/// returned a pending `ECONNRESET` (the reads after it go on).
fn read_all(mut s: &UnixStream) -> (usize, bool) {
    let mut buf = [0u8; 65536];
    let (mut total, mut reset) = (0, false);
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (total, reset),
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (total, reset),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset && !reset => reset = true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn fill(mut s: &UnixStream) {
    let buf = [0x55u8; 65536];
    loop {
        match s.write(&buf) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("write: {e}"),
        }
    }
}

/// Expects `res` to have failed with `want`, or to have succeeded if `want`
/// is `None`.
fn check_result(res: io::Result<()>, want: Option<SelectorError>, what: &str) {
    match (res, want) {
        (Ok(()), None) => {}
        (Ok(()), Some(want)) => panic!("{what}: succeeded, expected {want:?}"),
        (Err(e), None) => panic!("{what}: failed: {e}"),
        (Err(e), Some(want)) => {
            let got = SelectorError::of(&e).unwrap_or_else(|| panic!("{what}: not typed: {e}"));
            assert_eq!(*got, want, "{what}");
        }
    }
}

fn refusal(
    backend: Backend,
    mode: Mode,
    fd: RawFd,
    registered: bool,
    register: bool,
) -> Option<SelectorError> {
    if mode == Mode::Edge && !backend.supports_edge() {
        Some(SelectorError::Unsupported {
            backend,
            mode: Mode::Edge,
        })
    } else if register && registered {
        Some(SelectorError::AlreadyRegistered(fd))
    } else if !register && !registered {
        Some(SelectorError::NotRegistered(fd))
    } else {
        None
    }
}

fn fresh_reg(token: Token, interest: Interest, mode: Mode) -> Reg {
    Reg {
        token,
        interest,
        mode,
        armed: true,
        touched: true,
        woken: true,
        left_out: 0,
    }
}

fn run(backend: Backend, ops: &[Op]) {
    let mut sel = Selector::new(backend).expect("selector");
    let mut pairs: Vec<Pair> = (0..PAIRS).map(|_| Pair::new()).collect();
    let mut events = Events::with_capacity(64);
    let mut capped: [Events; 3] = [
        Events::with_capacity(64),
        Events::with_capacity(1),
        Events::with_capacity(2),
    ];
    let mut events_total = 0u64;
    for (step, op) in ops.iter().chain(std::iter::once(&Op::Select)).enumerate() {
        let what = format!("{backend} step {step} {op:?}");
        match *op {
            Op::Register {
                pair,
                tag,
                interest,
                mode,
            }
            | Op::Reregister {
                pair,
                tag,
                interest,
                mode,
            } => {
                let first = matches!(op, Op::Register { .. });
                let p = &mut pairs[pair];
                let token = Token(pair * TAGS + tag);
                let want = refusal(backend, mode, p.fd(), p.reg.is_some(), first);
                let res = if first {
                    sel.register_with_mode(p.fd(), token, interest, mode)
                } else {
                    sel.reregister_with_mode(p.fd(), token, interest, mode)
                };
                if want.is_none() {
                    p.reg = Some(fresh_reg(token, interest, mode));
                }
                check_result(res, want, &what);
            }
            Op::Deregister { pair } => {
                let p = &mut pairs[pair];
                let want = p
                    .reg
                    .is_none()
                    .then_some(SelectorError::NotRegistered(p.fd()));
                check_result(sel.deregister(p.fd()), want, &what);
                p.reg = None;
            }
            Op::Write { pair, len } => {
                let p = &mut pairs[pair];
                if let Some(mut peer) = p.peer.as_ref() {
                    let n = peer.write(&vec![b'w'; len]).expect("peer write");
                    assert!(n > 0, "{what}: the peer's buffer is nowhere near full");
                    p.queued += n;
                    p.touch(|i| i.is_readable());
                }
            }
            Op::Drain { pair } => {
                let p = &mut pairs[pair];
                assert_eq!(
                    read_all(&p.ours),
                    (p.queued, p.error),
                    "{what}: (bytes queued, error pending)"
                );
                p.queued = 0;
                p.error = false;
                // Reading wakes the peer (its space is freed), not ours.
            }
            Op::Fill { pair } => {
                let p = &mut pairs[pair];
                if !p.peer_closed() {
                    fill(&p.ours);
                    p.filled = true;
                    // Writing wakes the peer (data arrived), not ours.
                }
            }
            Op::Unfill { pair } => {
                let p = &mut pairs[pair];
                if let Some(peer) = p.peer.as_ref() {
                    let was_filled = p.filled;
                    let (n, _) = read_all(peer);
                    assert_eq!(n > 0, was_filled, "{what}: only Fill writes to the peer");
                    p.filled = false;
                    if was_filled {
                        // Freed space wakes ours for writing.
                        p.touch(|i| i.is_writable());
                    }
                }
            }
            Op::ClosePeer { pair } => {
                let p = &mut pairs[pair];
                if p.peer.take().is_some() {
                    // Its unread data (ours' Fill) is thrown away: a reset.
                    p.error = p.filled;
                    // A hang-up wakes every registration.
                    p.touch(|_| true);
                }
            }
            Op::Reset { pair } => {
                let p = &mut pairs[pair];
                if p.reg.is_some() {
                    sel.deregister(p.fd())
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                }
                // Deregistered before the close, as the selector requires.
                pairs[pair] = Pair::new();
            }
            Op::Select => {
                sel.select(&mut events, Some(Duration::ZERO))
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                events_total += events.len() as u64;
                check_select(backend, &mut pairs, &events, &what);
            }
            Op::SelectCapped { capacity } => {
                let events = &mut capped[capacity];
                assert_eq!(events.capacity(), capacity);
                sel.select(events, Some(Duration::ZERO))
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                assert!(events.len() <= capacity, "{what}: past the capacity");
                events_total += events.len() as u64;
                check_select(backend, &mut pairs, events, &what);
            }
        }
        let registered = pairs.iter().filter(|p| p.reg.is_some()).count();
        let stats = sel.stats();
        assert_eq!(stats.registered, registered, "{what}: Stats::registered");
        assert_eq!(stats.events, events_total, "{what}: Stats::events");
        if backend != Backend::Epoll {
            assert_eq!(stats.ctl_calls, 0, "{what}: Stats::ctl_calls");
        }
    }
    for p in &mut pairs {
        if p.reg.take().is_some() {
            sel.deregister(p.fd()).unwrap();
        }
    }
    assert_eq!(sel.stats().registered, 0);
}

/// Compares one `select`'s events with the model, then advances the model.
fn check_select(backend: Backend, pairs: &mut [Pair], events: &Events, what: &str) {
    // A full buffer may have left out due registrations.
    let full = events.len() == events.capacity();
    let mut reported: Vec<Option<Event>> = vec![None; PAIRS];
    for ev in events {
        let pair = ev.token().0 / TAGS;
        assert!(pair < PAIRS, "{what}: unknown token in {ev:?}");
        let reg = pairs[pair]
            .reg
            .unwrap_or_else(|| panic!("{what}: event for unregistered pair {pair}: {ev:?}"));
        assert_eq!(ev.token(), reg.token, "{what}: stale token for pair {pair}");
        assert!(
            reported[pair].replace(*ev).is_none(),
            "{what}: pair {pair} reported twice"
        );
    }
    for (i, p) in pairs.iter_mut().enumerate() {
        let Some(mut reg) = p.reg else { continue };
        let ready = p.ready_for(reg.interest);
        // Some(b): must be reported iff b; None: either.
        let must = match reg.mode {
            Mode::Level => Some(ready),
            Mode::Oneshot => Some(reg.armed && ready),
            Mode::Edge if !reg.touched => Some(false),
            Mode::Edge if reg.woken && ready => Some(true),
            Mode::Edge => None,
        };
        let got = reported[i];
        if full && must == Some(true) && got.is_none() {
            // Left out, this time: still due (armed, on epoll's ready list).
            reg.left_out += 1;
            assert!(
                reg.left_out < PAIRS,
                "{what}: pair {i} {reg:?} left out of {} full selects in a row: starved",
                reg.left_out
            );
            p.reg = Some(reg);
            continue;
        }
        reg.left_out = 0;
        if let Some(must) = must {
            assert_eq!(
                got.is_some(),
                must,
                "{what}: pair {i} {reg:?}, readable {}, writable {}, peer closed {}, error {}: got {got:?}",
                p.readable(),
                p.writable(),
                p.peer_closed(),
                p.error
            );
        }
        if let Some(ev) = got {
            let state = format!(
                "{what}: pair {i} {reg:?}, readable {}, writable {}, peer closed {}, error {}: {ev:?}",
                p.readable(),
                p.writable(),
                p.peer_closed(),
                p.error
            );
            assert_eq!(
                ev.is_readable(),
                reg.interest.is_readable() && p.readable(),
                "readable flag: {state}"
            );
            assert_eq!(
                ev.is_writable(),
                reg.interest.is_writable() && p.writable(),
                "writable flag: {state}"
            );
            assert_eq!(
                ev.is_read_closed(),
                p.peer_closed() && backend.reports_hangup(),
                "read-closed flag: {state}"
            );
            assert_eq!(
                ev.is_error(),
                p.error && backend != Backend::Select,
                "error flag: {state}"
            );
            if reg.mode == Mode::Oneshot {
                reg.armed = false;
            }
        }
        reg.touched = false;
        reg.woken = false;
        p.reg = Some(reg);
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn select_matches_model(ops in ops()) {
        run(Backend::Select, &ops);
    }

    #[test]
    fn poll_matches_model(ops in ops()) {
        run(Backend::Poll, &ops);
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn epoll_matches_model(ops in ops()) {
        run(Backend::Epoll, &ops);
    }
}
