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
//! * an accept that fails for lack of fds (`EMFILE`, `ENFILE`) takes the
//!   listener out of the selector for [`ACCEPT_BACKOFF`] rather than being
//!   retried in a tight loop (level-triggered readiness would report the
//!   waiting connection again at once, forever);
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
//! Stopping is an event like any other: the [`Stop`] pipe is registered
//! beside the listener, so the loop never wakes up to check a flag.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{is_peer_gone, Config, Counters, Stop, ACCEPT_BACKOFF};
use crate::conn::{Conn, ReadState};
use crate::protocol::Builtin;
use crate::selector::{Backend, Event, Events, Interest, Mode, Selector, SelectorError, Token};
use crate::sys;

const LISTENER: Token = Token(0);
const STOP: Token = Token(1);
/// Connection `i` of the slab has token `FIRST_CONN + i`.
const FIRST_CONN: usize = 2;
/// Accepts per listener event, so a connection flood cannot starve the
/// connections already served.
const ACCEPTS_PER_EVENT: usize = 128;
/// Events taken from the selector per wait.
const EVENTS_PER_WAIT: usize = 1024;

/// Reads of one connection per turn in edge-triggered mode, so a peer that
/// streams fast cannot keep the loop from the others.
pub const READS_PER_TURN: usize = 16;

struct Slot {
    conn: Conn<Builtin>,
    /// What the selector watches for now, so unchanged interest costs no
    /// `reregister` (an `epoll_ctl` each).
    interest: Interest,
    /// Edge-triggered: input may be waiting that no new event will announce
    /// (the last read filled the buffer, or reading paused for backpressure).
    maybe_readable: bool,
    /// The peer's FIN (or an error) was reported: read until EOF even after
    /// a short read, since the EOF has no edge of its own.
    peer_closed: bool,
}

impl Slot {
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
            self.maybe_readable = match self.conn.on_readable(scratch, scratch_out, counters)? {
                ReadState::Full => true,
                ReadState::Short => self.peer_closed,
                ReadState::Drained => false,
            };
        }
        Ok(())
    }
}

/// The loop's state; `serve` builds it and runs it.
struct Loop<'a> {
    config: &'a Config,
    counters: &'a Counters,
    selector: Selector,
    listener: TcpListener,
    conns: Slab<Slot>,
    /// The one input buffer of the loop.
    scratch: Vec<u8>,
    /// The one output buffer of the loop: replies are built here and sent
    /// at once; only what the kernel refuses is copied into the connection.
    scratch_out: Vec<u8>,
    /// While set, the listener is out of the selector until this instant.
    accept_paused_until: Option<Instant>,
    warned_fd_setsize: bool,
    /// Edge-triggered (epoll) or level-triggered (select, poll).
    mode: Mode,
    /// Connections that used up their reads this turn with input left:
    /// served again before the next blocking wait.
    again: Vec<usize>,
}

pub(super) fn serve(
    backend: Backend,
    listener: TcpListener,
    config: &Config,
    stop: &Stop,
    counters: &Arc<Counters>,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut selector = Selector::new(backend)?;
    selector.register(listener.as_raw_fd(), LISTENER, Interest::READABLE)?;
    selector.register(stop.fd(), STOP, Interest::READABLE)?;
    let mut lp = Loop {
        config,
        counters,
        selector,
        listener,
        conns: Slab::default(),
        scratch: vec![0; config.read_chunk],
        scratch_out: Vec::with_capacity(config.read_chunk),
        accept_paused_until: None,
        warned_fd_setsize: false,
        mode: if backend.supports_edge() {
            Mode::Edge
        } else {
            Mode::Level
        },
        again: Vec::new(),
    };
    lp.run()
}

impl Loop<'_> {
    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_PER_WAIT);
        loop {
            let timeout = if self.again.is_empty() {
                self.accept_paused_until
                    .map(|t| t.saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
            };
            self.selector.select(&mut events, timeout)?;
            let stats = self.selector.stats();
            self.counters
                .wait_calls
                .store(stats.wait_calls, Ordering::Relaxed);
            self.counters
                .ctl_calls
                .store(stats.ctl_calls, Ordering::Relaxed);
            self.resume_accept_if_due()?;
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    STOP => {
                        self.close_all();
                        return Ok(());
                    }
                    Token(t) => self.drive(t - FIRST_CONN, event),
                }
            }
            for key in std::mem::take(&mut self.again) {
                self.drive(key, &Event::none());
            }
        }
    }

    fn accept(&mut self) {
        for _ in 0..ACCEPTS_PER_EVENT {
            match sys::accept_nonblocking(self.listener.as_raw_fd()) {
                Ok(stream) => {
                    Counters::add(&self.counters.accepted, 1);
                    if self.conns.len() >= self.config.max_conns {
                        Counters::add(&self.counters.refused, 1);
                        continue; // dropping `stream` closes it
                    }
                    // Replies are whole messages: don't let Nagle hold them.
                    let _ = stream.set_nodelay(true);
                    let fd = stream.as_raw_fd();
                    let key = self.conns.vacant_key();
                    match self.selector.register_with_mode(
                        fd,
                        Token(FIRST_CONN + key),
                        Interest::READABLE,
                        self.mode,
                    ) {
                        Ok(()) => {
                            let conn = Conn::new(stream, self.config.protocol.handler());
                            self.conns.insert(Slot {
                                conn,
                                interest: Interest::READABLE,
                                maybe_readable: false,
                                peer_closed: false,
                            });
                        }
                        Err(e) => self.refuse(fd, &e),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The client gave up between SYN and accept: next one.
                Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
                    Counters::add(&self.counters.accept_errors, 1);
                }
                Err(_) => {
                    // EMFILE, ENFILE and anything unexpected: retrying now
                    // would fail the same way. Pause the listener.
                    Counters::add(&self.counters.accept_errors, 1);
                    self.pause_accept();
                    return;
                }
            }
        }
    }

    /// A connection the selector cannot watch: counted, closed, logged once.
    fn refuse(&mut self, fd: RawFd, e: &io::Error) {
        Counters::add(&self.counters.refused, 1);
        if let Some(SelectorError::FdSetSize { limit, .. }) = SelectorError::of(e) {
            if !self.warned_fd_setsize {
                self.warned_fd_setsize = true;
                eprintln!(
                    "iomux: fd {fd} is past select()'s FD_SETSIZE of {limit}; connection refused; use --model poll or epoll"
                );
            }
        }
    }

    fn pause_accept(&mut self) {
        if self.accept_paused_until.is_none()
            && self.selector.deregister(self.listener.as_raw_fd()).is_ok()
        {
            self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
        }
    }

    fn resume_accept_if_due(&mut self) -> io::Result<()> {
        match self.accept_paused_until {
            Some(t) if Instant::now() >= t => {
                self.accept_paused_until = None;
                self.selector
                    .register(self.listener.as_raw_fd(), LISTENER, Interest::READABLE)
            }
            _ => Ok(()),
        }
    }

    /// Reads, writes, and closes one connection as its event allows.
    fn drive(&mut self, key: usize, event: &Event) {
        let max_output = self.config.max_output;
        let edge = self.mode == Mode::Edge;
        let Some(slot) = self.conns.get_mut(key) else {
            return; // closed earlier in this batch
        };
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            slot.maybe_readable = true;
        }
        if event.is_read_closed() || event.is_error() {
            slot.peer_closed = true;
        }
        // Level-triggered: one read per event; the selector reports the rest.
        let reads = if edge { READS_PER_TURN } else { 1 };
        let (scratch, out, counters) = (&mut self.scratch, &mut self.scratch_out, self.counters);
        let mut res = slot.read_some(reads, max_output, scratch, out, counters);
        if res.is_ok() && slot.conn.wants_write() && (event.is_writable() || event.is_error()) {
            res = slot.conn.on_writable(counters);
            // Room again after backpressure: input that waited needs no new
            // edge to be read.
            if res.is_ok() && edge {
                res = slot.read_some(reads, max_output, scratch, out, counters);
            }
        }
        if !edge {
            slot.maybe_readable = false;
        }
        let conn = &mut slot.conn;
        match res {
            Err(e) => {
                if is_peer_gone(&e) {
                    Counters::add(&self.counters.resets, 1);
                }
                self.close(key);
            }
            Ok(()) if conn.is_done() => self.close(key),
            Ok(()) => {
                if edge && slot.maybe_readable && conn.wants_read(max_output) {
                    self.again.push(key);
                }
                let want = match (conn.wants_read(max_output), conn.wants_write()) {
                    (true, true) => Interest::BOTH,
                    (true, false) => Interest::READABLE,
                    (false, true) => Interest::WRITABLE,
                    (false, false) => unreachable!("a connection that is not done reads or writes"),
                };
                if want != slot.interest {
                    let fd = conn.fd();
                    let token = Token(FIRST_CONN + key);
                    match self
                        .selector
                        .reregister_with_mode(fd, token, want, self.mode)
                    {
                        Ok(()) => slot.interest = want,
                        Err(_) => self.close(key),
                    }
                }
            }
        }
    }

    fn close(&mut self, key: usize) {
        if let Some(slot) = self.conns.remove(key) {
            // Leave the selector before the fd closes (epoll quirk b).
            let _ = self.selector.deregister(slot.conn.fd());
            slot.conn.close(self.counters);
            Counters::add(&self.counters.closed, 1);
        }
    }

    fn close_all(&mut self) {
        for key in 0..self.conns.capacity() {
            self.close(key);
        }
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
