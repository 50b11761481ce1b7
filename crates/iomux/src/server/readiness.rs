//! The readiness models: select, poll and epoll, one driver for all three.
//!
//! One thread, one [`Selector`]. The thread blocks only in the selector
//! (waiting for data, phase one of a read, for every connection at once);
//! then it copies the data with a `recv` that cannot block (phase two). This
//! is the seeds' select and epoll server, with their bugs fixed:
//!
//! * write interest is held only while output is pending, and dropped when
//!   it is flushed (a socket is almost always writable: watching it for
//!   nothing makes the loop spin);
//! * a partial `send` resumes where it stopped, it is never retried from the
//!   start or dropped;
//! * a closed connection leaves the selector at once, before its fd closes;
//! * event flags are tested as bits, never compared with `==`;
//! * unsent output per connection is bounded by [`Config::max_output`]: a
//!   peer that does not read is not read from either until it drains;
//! * an idle connection holds no buffer (see [`crate::conn`]);
//! * an accept that fails for lack of fds (`EMFILE`, `ENFILE`) is never
//!   retried in a tight loop (level-triggered readiness would report the
//!   waiting connection again at once, forever): as
//!   [`Config::on_fd_exhaustion`] says, the listener leaves the selector
//!   for [`ACCEPT_BACKOFF`], or the waiting clients are accepted and closed
//!   with the spare fd, or the connection idle longest is closed to make
//!   room (see [`FdExhaustion`]);
//! * with select, a connection whose fd is at or above `FD_SETSIZE` is closed
//!   at once and the log says why, once; the server keeps serving the rest.
//!
//! With epoll, connections are registered edge-triggered ([`Mode::Edge`]),
//! as tokio and nginx do: an event comes once per change, and the loop reads
//! until a short read tells it the socket is drained (at most
//! [`READS_PER_TURN`] reads per turn, then the connection waits its turn
//! after the others). Level-triggered epoll puts every reported fd back on
//! its ready list and polls it again at the next wait, which costs a
//! `->poll` per fd per wait and lets a connection just served jump ahead of
//! ones that have waited longer; edge triggering avoids both. select and
//! poll have no edge mode and stay level-triggered, one read per event.
//!
//! The loop is a [`Reactor`]: the listener, the [`Stop`] pipe, each
//! connection and each signal is an I/O watcher with a callback; idle
//! timeouts, the accept back-off and the drain deadline are timers; a
//! connection's edge-triggered leftovers are served by a check callback at
//! the end of the turn. Stopping is an event like any other, so the loop
//! never wakes up to check a flag.
//!
//! Stopping drains: the listener closes (no new connections), no
//! connection is read again, output already produced is sent, and each
//! connection closes once flushed, or when [`Config::drain_timeout`]
//! passes. With [`Config::offload_threads`], the handler runs on the
//! reactor's offload pool: a connection with a job in flight is not read
//! (its replies stay in order), and the loop keeps serving the others.

use std::collections::VecDeque;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::{
    is_peer_gone, Accepted, Acceptor, Config, Counters, FdExhaustion, Stop, ACCEPT_BACKOFF,
};
use crate::conn::{Conn, Input, Linger, ReadState};
use crate::protocol::{Action, CloseReason, Factory, Handler};
use crate::push::Pusher;
use crate::reactor::{IoId, Options, Reactor, TimerId};
use crate::selector::{Backend, Event, Interest, Mode, SelectorError};
use crate::sys;

/// Accepts per listener event, so a connection flood cannot starve the
/// connections already served.
const ACCEPTS_PER_EVENT: usize = 128;
/// Events taken from the selector per wait.
const EVENTS_PER_WAIT: usize = 1024;

/// Reads of one connection per turn in edge-triggered mode, so a peer that
/// streams fast cannot keep the loop from the others.
pub const READS_PER_TURN: usize = 16;

/// How often lingering connections are checked for nothing left to lose
/// (no event tells when the peer's acknowledgement arrives).
const LINGER_CHECK: std::time::Duration = std::time::Duration::from_millis(5);

struct Slot<H> {
    conn: Conn<H>,
    io: IoId,
    /// Tells this connection from a later one that reuses its key, for
    /// timers and offload results that outlive it.
    serial: u64,
    /// What the selector watches for now, so unchanged interest costs no
    /// `reregister` (an `epoll_ctl` each); `None` while paused (the handler
    /// is on the offload pool and no output waits).
    interest: Option<Interest>,
    /// Edge-triggered: input may be waiting that no new event will announce
    /// (the last read filled the buffer, or reading paused for backpressure).
    maybe_readable: bool,
    /// The peer's FIN (or an error) was reported: read until EOF even after
    /// a short read, since the EOF has no edge of its own.
    peer_closed: bool,
    /// When the peer last sent, or took, a byte (the loop's cached clock).
    last_active: Instant,
    idle_timer: Option<TimerId>,
    /// Input read while the offload queue was full: handed to the pool
    /// when a job completes.
    parked: Option<Vec<u8>>,
    /// A lingering close, for this reason, until this deadline: our FIN
    /// is sent; input is read and dropped until the peer's EOF, or until
    /// nothing can be lost by closing (checked every [`LINGER_CHECK`]).
    lingering: Option<Box<Linger>>,
    /// The pushers' side, for a handler that pushes.
    push: Option<Pusher>,
}

impl<H: Handler> Slot<H> {
    /// Up to `reads` reads while input may be waiting and output has room.
    fn read_some(
        &mut self,
        reads: usize,
        max_output: usize,
        scratch: &mut [u8],
        scratch_out: &mut Vec<u8>,
        counters: &Counters,
    ) -> io::Result<()> {
        for _ in 0..reads {
            if !self.maybe_readable || !self.conn.wants_read(max_output) {
                break;
            }
            self.maybe_readable =
                match self
                    .conn
                    .on_readable(scratch, scratch_out, counters, max_output)?
                {
                    ReadState::Full => true,
                    ReadState::Short => self.peer_closed,
                    ReadState::Drained => false,
                };
        }
        Ok(())
    }
}

/// The loop's state: what every callback is given.
struct Server<F: Factory> {
    config: Config,
    factory: F,
    counters: Arc<Counters>,
    listener: Option<TcpListener>,
    listener_io: Option<IoId>,
    stop_io: Option<IoId>,
    /// The listener is paused until this timer fires.
    accept_paused: Option<TimerId>,
    acceptor: Acceptor,
    conns: Slab<Slot<F::Handler>>,
    next_serial: u64,
    /// The one input buffer of the loop.
    scratch: Vec<u8>,
    /// The one output buffer of the loop: replies are built here and sent
    /// at once; only what the kernel refuses is copied into the connection.
    scratch_out: Vec<u8>,
    warned_fd_setsize: bool,
    /// Edge-triggered (epoll) or level-triggered (select, poll).
    mode: Mode,
    /// Connections that used up their reads this turn with input left:
    /// served again at the end of the turn, before the next blocking wait.
    again: Vec<usize>,
    /// Connections whose input waits for room in the offload queue.
    parked: VecDeque<(usize, u64)>,
    draining: bool,
    /// The timer of [`Server::check_lingering`], while any connection lingers.
    linger_timer: Option<TimerId>,
    /// Connections closed while their handler was on the offload pool, by
    /// serial: the handler is told why when its job comes back.
    orphans: Vec<(u64, CloseReason)>,
}

pub(super) fn serve<F: Factory>(
    backend: Backend,
    listener: TcpListener,
    config: &Config,
    stop: &Stop,
    counters: &Arc<Counters>,
    factory: F,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let options = Options {
        backend,
        events_per_wait: EVENTS_PER_WAIT,
        offload_threads: config.offload_threads.max(1),
        offload_queue: 64 * config.offload_threads.max(1),
        latency_budget: config.latency_budget,
        ..Options::default()
    };
    let mut reactor: Reactor<Server<F>> = Reactor::new(options)?;
    let counters_for_stalls = counters.clone();
    reactor.on_stall({
        let mut logged = false;
        move |stall| {
            Counters::add(&counters_for_stalls.stalls, 1);
            if !std::mem::replace(&mut logged, true) {
                log::warn!("{stall}");
            }
        }
    });
    let listener_io = reactor.add_io(
        listener.as_raw_fd(),
        Interest::READABLE,
        Mode::Level,
        |r, s: &mut Server<F>, _| s.accept(r),
    )?;
    reactor.set_label(listener_io, "listener");
    let stop_io = reactor.add_io(
        stop.fd(),
        Interest::READABLE,
        Mode::Level,
        |r, s: &mut Server<F>, _| {
            // The pipe stays readable: stop watching it, once is enough.
            if let Some(io) = s.stop_io.take() {
                let _ = r.remove_io(io);
            }
            s.begin_drain(r);
        },
    )?;
    reactor.set_label(stop_io, "stop");
    if config.catch_signals {
        for signo in [libc::SIGINT, libc::SIGTERM] {
            reactor.add_signal(signo, |r, s: &mut Server<F>, signo| {
                if s.draining {
                    log::warn!(
                        "{} again: closing {} connections now",
                        sys::signal::name(signo),
                        s.conns.len()
                    );
                    s.close_all(r);
                    r.stop();
                } else {
                    log::warn!(
                        "{} received: draining {} connections (at most {} ms); send it again to close them now",
                        sys::signal::name(signo),
                        s.conns.len(),
                        s.config.drain_timeout.as_millis()
                    );
                    s.begin_drain(r);
                }
            })?;
        }
    }
    reactor.add_check(|r, s: &mut Server<F>| s.serve_again(r));
    let mut server = Server {
        config: *config,
        factory,
        counters: counters.clone(),
        listener: Some(listener),
        listener_io: Some(listener_io),
        stop_io: Some(stop_io),
        accept_paused: None,
        acceptor: Acceptor::new(config)?,
        conns: Slab::default(),
        next_serial: 0,
        scratch: vec![0; config.read_chunk],
        scratch_out: Vec::with_capacity(config.read_chunk),
        warned_fd_setsize: false,
        mode: if backend.supports_edge() {
            Mode::Edge
        } else {
            Mode::Level
        },
        again: Vec::new(),
        parked: VecDeque::new(),
        draining: false,
        linger_timer: None,
        orphans: Vec::new(),
    };
    let res = reactor.run(&mut server);
    server.close_all(&mut reactor);
    res
}

impl<F: Factory> Server<F> {
    fn accept(&mut self, r: &mut Reactor<Server<F>>) {
        let Some(listener) = &self.listener else {
            return;
        };
        let lfd = listener.as_raw_fd();
        for _ in 0..ACCEPTS_PER_EVENT {
            match self.acceptor.accept(lfd, self.conns.len(), &self.counters) {
                Accepted::Conn(stream) => self.add_conn(r, stream),
                Accepted::Again => {}
                Accepted::Empty | Accepted::TurnedAway => return,
                Accepted::Exhausted(e) => {
                    // Retrying now would fail the same way, and
                    // level-triggered readiness would report the waiting
                    // connection again at once, forever: make room, or
                    // take the listener out for a while.
                    if self.acceptor.policy() == FdExhaustion::Shed
                        && sys::is_resource_exhaustion(&e)
                        && self.shed_idle(r)
                    {
                        continue;
                    }
                    self.pause_accept(r);
                    return;
                }
            }
        }
    }

    /// Watches a new connection and greets it.
    fn add_conn(&mut self, r: &mut Reactor<Server<F>>, stream: std::net::TcpStream) {
        let fd = stream.as_raw_fd();
        let key = self.conns.vacant_key();
        let io = match r.add_io(
            fd,
            Interest::READABLE,
            self.mode,
            move |r, s: &mut Server<F>, ev| {
                s.drive(r, key, ev);
            },
        ) {
            Ok(io) => io,
            Err(e) => return self.refuse(fd, &e),
        };
        r.set_label(io, "conn");
        let serial = self.next_serial;
        self.next_serial += 1;
        let idle_timer = self
            .config
            .idle_timeout
            .map(|t| r.add_timer(t, move |r, s: &mut Server<F>| s.idle_check(r, key, serial)));
        let mut handler = self.factory.new_handler();
        let push = F::Handler::PUSH.then(|| {
            // A push wakes the loop once per batch, to move the pushed
            // bytes into this connection's output.
            let handle = r.handle();
            let (pusher, push) = Pusher::new(self.config.max_output, move || {
                let _ = handle.post(move |r, s: &mut Server<F>| s.take_pushed(r, key, serial));
            });
            handler.attach(push);
            pusher
        });
        let mut conn = Conn::new(stream, handler);
        let greeted = conn.open(&mut self.scratch_out, &self.counters);
        self.conns.insert(Slot {
            conn,
            io,
            serial,
            interest: Some(Interest::READABLE),
            maybe_readable: false,
            peer_closed: false,
            last_active: r.now(),
            idle_timer,
            parked: None,
            lingering: None,
            push,
        });
        self.settle(r, key, greeted);
    }

    /// A connection the selector cannot watch: counted, closed, logged once.
    fn refuse(&mut self, fd: RawFd, e: &io::Error) {
        Counters::add(&self.counters.refused, 1);
        if let Some(SelectorError::FdSetSize { limit, .. }) = SelectorError::of(e) {
            if !self.warned_fd_setsize {
                self.warned_fd_setsize = true;
                log::warn!(
                    "fd {fd} is past select()'s FD_SETSIZE of {limit}; connection refused; use --model poll or epoll"
                );
            }
        }
    }

    /// Whether each connection's `last_active` is kept: for the idle
    /// timeout, or to pick the connection idle longest under
    /// [`FdExhaustion::Shed`].
    fn tracks_activity(&self) -> bool {
        self.config.idle_timeout.is_some() || self.config.on_fd_exhaustion == FdExhaustion::Shed
    }

    /// [`FdExhaustion::Shed`]: closes the connection idle longest that has
    /// nothing pending in either direction (no output unsent, no input
    /// unread or with the handler), so closing it loses no byte. `false`
    /// if no connection qualifies.
    fn shed_idle(&mut self, r: &mut Reactor<Server<F>>) -> bool {
        let mut victim: Option<(Instant, usize)> = None;
        for key in 0..self.conns.capacity() {
            let Some(slot) = self.conns.get_mut(key) else {
                continue;
            };
            let busy = slot.lingering.is_some()
                || slot.maybe_readable
                || slot.peer_closed
                || slot.parked.is_some()
                || slot.conn.handler_lent()
                || slot.conn.wants_write();
            if !busy && victim.is_none_or(|(t, _)| slot.last_active < t) {
                victim = Some((slot.last_active, key));
            }
        }
        let Some((_, key)) = victim else {
            return false;
        };
        Counters::add(&self.counters.idle_closed, 1);
        self.close(r, key, CloseReason::Shed);
        true
    }

    fn pause_accept(&mut self, r: &mut Reactor<Server<F>>) {
        let Some(io) = self.listener_io else {
            return;
        };
        if self.accept_paused.is_some() || r.pause_io(io).is_err() {
            return;
        }
        self.accept_paused = Some(r.add_timer(ACCEPT_BACKOFF, move |r, s: &mut Server<F>| {
            s.accept_paused = None;
            // Cannot watch the listener again yet: try after another pause.
            if r.resume_io(io).is_err() {
                s.pause_accept(r);
            }
        }));
    }

    /// Reads, writes, and closes one connection as its event allows.
    fn drive(&mut self, r: &mut Reactor<Server<F>>, key: usize, event: Event) {
        let max_output = self.config.max_output;
        let edge = self.mode == Mode::Edge;
        let offload = self.config.offload_threads > 0;
        let draining = self.draining;
        // Activity matters only to the idle timeout and to shedding: skip
        // the bookkeeping on the hot path when neither is on.
        let before = self.tracks_activity().then(|| self.counters_progress());
        let Some(slot) = self.conns.get_mut(key) else {
            return; // closed earlier in this turn
        };
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            slot.maybe_readable = true;
        }
        if event.is_read_closed() || event.is_error() {
            slot.peer_closed = true;
        }
        if let Some(reason) = slot.lingering.as_deref().map(|l| l.reason) {
            match Self::discard(slot, &mut self.scratch, edge) {
                Ok(Some(true)) => self.again.push(key),
                Ok(Some(false)) => {}
                Ok(None) | Err(_) => self.close(r, key, reason),
            }
            return;
        }
        // Level-triggered: one read per event; the selector reports the rest.
        let reads = if draining {
            0
        } else if edge {
            READS_PER_TURN
        } else {
            1
        };
        let (scratch, out, counters) = (&mut self.scratch, &mut self.scratch_out, &*self.counters);
        let mut res = if offload {
            Ok(())
        } else {
            slot.read_some(reads, max_output, scratch, out, counters)
        };
        if res.is_ok() && slot.conn.wants_write() && (event.is_writable() || event.is_error()) {
            res = slot.conn.on_writable(counters);
            // Room again after backpressure: input that waited needs no new
            // edge to be read.
            if res.is_ok() && edge && !offload {
                res = slot.read_some(reads, max_output, scratch, out, counters);
            }
        }
        if res.is_ok() && offload && reads > 0 {
            res = self.offload_read(r, key);
        }
        if before.is_some_and(|b| b != self.counters_progress()) {
            if let Some(slot) = self.conns.get_mut(key) {
                slot.last_active = r.now();
            }
        }
        self.settle(r, key, res);
    }

    /// Lingering close: reads and drops input. `None` at the peer's EOF;
    /// else whether input may be left (edge-triggered: serve it again).
    fn discard(
        slot: &mut Slot<F::Handler>,
        scratch: &mut [u8],
        edge: bool,
    ) -> io::Result<Option<bool>> {
        let reads = if edge { READS_PER_TURN } else { 1 };
        for _ in 0..reads {
            match sys::recv(slot.conn.fd(), scratch) {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Some(false)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // A peer that streams forever is cut off by the drain deadline.
        Ok(Some(edge))
    }

    /// Bytes moved so far: a change means the connection was active.
    fn counters_progress(&self) -> u64 {
        self.counters.bytes_in.load(Ordering::Relaxed)
            + self.counters.bytes_out.load(Ordering::Relaxed)
    }

    /// After I/O on a connection: close it, or watch what it needs next.
    fn settle(&mut self, r: &mut Reactor<Server<F>>, key: usize, res: io::Result<()>) {
        let max_output = self.config.max_output;
        let edge = self.mode == Mode::Edge;
        let draining = self.draining;
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        if !edge {
            slot.maybe_readable = false;
        }
        let conn = &slot.conn;
        let busy = slot.parked.is_some() || conn.handler_lent();
        match res {
            Err(e) => {
                if is_peer_gone(&e) {
                    Counters::add(&self.counters.resets, 1);
                }
                self.close(r, key, CloseReason::of_error(&e));
            }
            Ok(()) if conn.is_done() && !busy => {
                let reason = conn.done_reason();
                if conn.close_now(reason) {
                    self.close(r, key, reason);
                } else {
                    self.linger(r, key, reason);
                }
            }
            Ok(()) => {
                if let Some(p) = &slot.push {
                    p.set_pending(conn.pending());
                }
                let read = !draining && !busy && conn.wants_read(max_output);
                if edge && read && slot.maybe_readable {
                    self.again.push(key);
                }
                let want = match (read, conn.wants_write()) {
                    (true, true) => Some(Interest::BOTH),
                    (true, false) => Some(Interest::READABLE),
                    (false, true) => Some(Interest::WRITABLE),
                    // Waiting for the offload pool with nothing to send:
                    // watch nothing, or level-triggered unread input would
                    // be reported at every turn while the job runs.
                    (false, false) => None,
                };
                if want != slot.interest {
                    let io = slot.io;
                    let res = match want {
                        Some(i) => r.modify_io(io, i).and_then(|()| r.resume_io(io)),
                        None => r.pause_io(io),
                    };
                    match res {
                        Ok(()) => slot.interest = want,
                        Err(e) => self.close(r, key, CloseReason::of_error(&e)),
                    }
                }
            }
        }
    }

    /// A lingering close: everything produced is with the kernel, but
    /// closing now could lose it (the peer has not acknowledged it, or
    /// sent more). Send a FIN, drop whatever the peer still sends, and
    /// close at its EOF, once nothing can be lost, or at the deadline
    /// ([`Config::drain_timeout`] from now) (nginx's lingering close).
    fn linger(&mut self, r: &mut Reactor<Server<F>>, key: usize, reason: CloseReason) {
        let edge = self.mode == Mode::Edge;
        let linger = Linger::new(reason, self.config.drain_timeout, r.now());
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        if slot.conn.shutdown_write().is_err() {
            return self.close(r, key, reason);
        }
        slot.lingering = Some(Box::new(linger));
        slot.maybe_readable = true;
        let io = slot.io;
        let res = r
            .modify_io(io, Interest::READABLE)
            .and_then(|()| r.resume_io(io));
        slot.interest = Some(Interest::READABLE);
        match res.and_then(|()| Self::discard(slot, &mut self.scratch, edge)) {
            Ok(Some(true)) => self.again.push(key),
            Ok(Some(false)) => {}
            Ok(None) | Err(_) => return self.close(r, key, reason),
        }
        if self.linger_timer.is_none() {
            self.linger_timer = Some(r.add_timer(LINGER_CHECK, |r, s: &mut Server<F>| {
                s.linger_timer = None;
                s.check_lingering(r);
            }));
        }
    }

    /// Closes each lingering connection that can lose nothing now, or
    /// whose deadline passed; checks again later while any is left.
    fn check_lingering(&mut self, r: &mut Reactor<Server<F>>) {
        let now = r.now();
        let mut left = false;
        for key in 0..self.conns.capacity() {
            let Some(slot) = self.conns.get_mut(key) else {
                continue;
            };
            let Some(linger) = slot.lingering.as_deref() else {
                continue;
            };
            if let Some(reason) = linger.over(slot.conn.fd(), now) {
                self.close(r, key, reason);
            } else {
                left = true;
            }
        }
        if left && self.linger_timer.is_none() {
            self.linger_timer = Some(r.add_timer(LINGER_CHECK, |r, s: &mut Server<F>| {
                s.linger_timer = None;
                s.check_lingering(r);
            }));
        }
    }

    /// Offload: one read, and the handler goes to the pool with the input.
    fn offload_read(&mut self, r: &mut Reactor<Server<F>>, key: usize) -> io::Result<()> {
        let max_output = self.config.max_output;
        let Some(slot) = self.conns.get_mut(key) else {
            return Ok(());
        };
        if !slot.maybe_readable || !slot.conn.wants_read(max_output) || slot.parked.is_some() {
            return Ok(());
        }
        let input = match slot.conn.recv_input(&mut self.scratch, &self.counters)? {
            Input::Data(n, more) => {
                slot.maybe_readable = match more {
                    ReadState::Full => true,
                    ReadState::Short => slot.peer_closed,
                    ReadState::Drained => false,
                };
                self.scratch[..n].to_vec()
            }
            Input::Nothing(more) => {
                slot.maybe_readable = more == ReadState::Full;
                return Ok(());
            }
            Input::Eof => {
                slot.maybe_readable = false;
                return slot.conn.on_eof(&mut self.scratch_out, &self.counters);
            }
        };
        self.submit(r, key, input);
        Ok(())
    }

    /// Hands `input` and the connection's handler to the pool, or parks
    /// the input if the queue is full.
    fn submit(&mut self, r: &mut Reactor<Server<F>>, key: usize, input: Vec<u8>) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        if !matches!(r.offload_room(), Ok(1..)) {
            // Full: keep the input (at most one read per connection) until
            // a job completes. Reading this peer stops meanwhile.
            slot.parked = Some(input);
            self.parked.push_back((key, slot.serial));
            return;
        }
        let Some(mut handler) = slot.conn.take_handler() else {
            return;
        };
        let serial = slot.serial;
        let res = r.offload(
            move || {
                let mut out = Vec::new();
                let action = handler.on_data(&input, &mut out);
                (handler, out, action)
            },
            move |r, s: &mut Server<F>, res| s.job_done(r, key, serial, res),
        );
        match res {
            Ok(()) => Counters::add(&self.counters.offloaded, 1),
            // Cannot happen (room was checked on this thread); if it did,
            // the handler is gone with the job: end the connection.
            Err(_) => self.close(r, key, CloseReason::Error(io::ErrorKind::Other)),
        }
    }

    fn job_done(
        &mut self,
        r: &mut Reactor<Server<F>>,
        key: usize,
        serial: u64,
        res: std::thread::Result<(F::Handler, Vec<u8>, Action)>,
    ) {
        // A job completed: there is room for one parked input.
        while let Some((pkey, pserial)) = self.parked.pop_front() {
            let Some(slot) = self.conns.get_mut(pkey) else {
                continue;
            };
            if slot.serial != pserial {
                continue;
            }
            if let Some(input) = slot.parked.take() {
                self.submit(r, pkey, input);
                break;
            }
        }
        let slot = self.conns.get_mut(key).filter(|s| s.serial == serial);
        let Some(slot) = slot else {
            // Closed while its job ran: the handler hears why now.
            if let Some(i) = self.orphans.iter().position(|&(s, _)| s == serial) {
                let (_, reason) = self.orphans.swap_remove(i);
                if let Ok((mut handler, _, _)) = res {
                    handler.on_close(reason);
                }
            }
            return;
        };
        let res = match res {
            Ok((handler, out, action)) => {
                slot.conn.put_handler(handler);
                slot.last_active = r.now();
                slot.conn.respond(&out, action, &self.counters)
            }
            Err(_) => Err(io::Error::other("the handler panicked on the offload pool")),
        };
        // Input may have waited while the handler was away.
        let res = res.and_then(|()| self.offload_read(r, key));
        self.settle(r, key, res);
    }

    /// Moves what was pushed for a connection into its output, in order
    /// behind its replies; a close asked for by a pusher ends it.
    fn take_pushed(&mut self, r: &mut Reactor<Server<F>>, key: usize, serial: u64) {
        let Some(slot) = self.conns.get_mut(key).filter(|s| s.serial == serial) else {
            return; // closed since
        };
        let Some(pusher) = &slot.push else {
            return;
        };
        let pushed = pusher.take();
        if slot.lingering.is_some() {
            return; // our FIN is sent: nothing more goes out
        }
        let Some(action) = pushed.action() else {
            return self.close(r, key, CloseReason::HandlerClosed);
        };
        let res = slot.conn.respond(&pushed.bytes, action, &self.counters);
        self.settle(r, key, res);
    }

    /// The check phase: connections with input left after their reads.
    fn serve_again(&mut self, r: &mut Reactor<Server<F>>) {
        self.counters.record_selector(r.selector_stats());
        if self.again.is_empty() {
            return;
        }
        for key in std::mem::take(&mut self.again) {
            self.drive(r, key, Event::none());
        }
        if !self.again.is_empty() {
            r.request_turn();
        }
    }

    fn idle_check(&mut self, r: &mut Reactor<Server<F>>, key: usize, serial: u64) {
        let Some(timeout) = self.config.idle_timeout else {
            return;
        };
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        if slot.serial != serial {
            return;
        }
        let idle = r.now().saturating_duration_since(slot.last_active);
        if idle >= timeout {
            Counters::add(&self.counters.idle_closed, 1);
            slot.idle_timer = None;
            self.close(r, key, CloseReason::IdleTimeout);
        } else if let Some(t) = slot.idle_timer {
            r.reschedule_timer(t, timeout - idle);
        }
    }

    /// Stop accepting; answer the input already received, then stop
    /// reading; close each connection once its output is sent and nothing
    /// can be lost ([`Conn::close_now`]), all of them at the drain
    /// deadline.
    fn begin_drain(&mut self, r: &mut Reactor<Server<F>>) {
        if self.draining {
            return;
        }
        self.draining = true;
        if let Some(io) = self.listener_io.take() {
            let _ = r.remove_io(io);
        }
        if let Some(t) = self.accept_paused.take() {
            r.cancel_timer(t);
        }
        self.listener = None; // closed: new clients are refused by the kernel
        r.add_timer(self.config.drain_timeout, |r, s: &mut Server<F>| {
            s.close_all(r);
            r.stop();
        });
        let max_output = self.config.max_output;
        let offload = self.config.offload_threads > 0;
        for key in 0..self.conns.capacity() {
            let Some(slot) = self.conns.get_mut(key) else {
                continue;
            };
            if slot.lingering.is_some() {
                continue;
            }
            // Input that arrived before the drain began is answered (a
            // request the peer sent is not dropped); nothing read later.
            slot.maybe_readable = true;
            let (scratch, out, counters) =
                (&mut self.scratch, &mut self.scratch_out, &*self.counters);
            let res = if offload {
                Ok(())
            } else {
                slot.read_some(READS_PER_TURN, max_output, scratch, out, counters)
            };
            slot.conn.core_mut().drain();
            self.settle(r, key, res);
        }
        if self.conns.len() == 0 {
            r.stop();
        }
    }

    fn close(&mut self, r: &mut Reactor<Server<F>>, key: usize, reason: CloseReason) {
        if let Some(slot) = self.conns.remove(key) {
            // Leave the selector before the fd closes (epoll quirk b).
            let _ = r.remove_io(slot.io);
            if let Some(t) = slot.idle_timer {
                r.cancel_timer(t);
            }
            if slot.conn.handler_lent() {
                self.orphans.push((slot.serial, reason));
            }
            if let Some(p) = &slot.push {
                p.close();
            }
            slot.conn.close(&self.counters, reason);
            Counters::add(&self.counters.closed, 1);
        }
        if self.draining && self.conns.len() == 0 {
            r.stop();
        }
    }

    fn close_all(&mut self, r: &mut Reactor<Server<F>>) {
        for key in 0..self.conns.capacity() {
            self.close(r, key, CloseReason::ServerStop);
        }
        self.counters.record_selector(r.selector_stats());
    }
}

/// Connections by key, reusing freed keys (so tokens stay small and dense).
pub(super) struct Slab<T> {
    entries: Vec<Option<T>>,
    free: Vec<usize>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            entries: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// The key the next `insert` will use.
    pub(super) fn vacant_key(&self) -> usize {
        self.free.last().copied().unwrap_or(self.entries.len())
    }

    pub(super) fn insert(&mut self, value: T) -> usize {
        self.len += 1;
        match self.free.pop() {
            Some(key) => {
                self.entries[key] = Some(value);
                key
            }
            None => {
                self.entries.push(Some(value));
                self.entries.len() - 1
            }
        }
    }

    pub(super) fn get_mut(&mut self, key: usize) -> Option<&mut T> {
        self.entries.get_mut(key)?.as_mut()
    }

    pub(super) fn remove(&mut self, key: usize) -> Option<T> {
        let value = self.entries.get_mut(key)?.take()?;
        self.free.push(key);
        self.len -= 1;
        Some(value)
    }
}
