//! The connection core: one connection's handler, phase, parked input,
//! bounded output and close decision ([`Core`], sans-IO), and the
//! non-blocking socket that carries it ([`Conn`]). Every non-blocking driver
//! (readiness, coroutine, uring, busy-poll) keeps one [`Core`] per
//! connection and only waits in its own way.
//!
//! Memory rules, so that many idle connections cost little more than their
//! kernel sockets:
//!
//! * input is read into the driver's one scratch buffer, never a
//!   per-connection one (a completion driver that cannot refuse bytes
//!   already read parks them, unprocessed, until the output drains);
//! * the handler's reply is built in the driver's scratch output and sent at
//!   once; only what the kernel did not take is copied into the connection's
//!   own buffer, and that buffer is freed as soon as it is flushed;
//! * the buffer's sent prefix is dropped once it outweighs the unsent rest,
//!   so the buffer stays within twice the unsent output plus one reply;
//! * a connection whose unsent output (queued, and handed to the kernel in
//!   an asynchronous send) reaches the driver's bound stops being read
//!   until it drains ([`Core::wants_read`]): a peer that sends without
//!   reading cannot grow the server's memory.
//!
//! The core needs no socket: the test `tests/conn_chunking.rs` and the
//! fuzz target `fuzz/` drive it with any chunking of the input and any
//! partial sends.
//!
//! # Examples
//!
//! ```no_run
//! use iomux::conn::Conn;
//! use iomux::protocol::Protocol;
//! use iomux::counters::Counters;
//! use std::net::TcpStream;
//!
//! let stream = TcpStream::connect("127.0.0.1:1688")?;
//! stream.set_nonblocking(true)?;
//! let mut conn = Conn::new(stream, Protocol::Upper.handler());
//! let (mut scratch, mut out) = (vec![0; 65536], Vec::new());
//! let counters = Counters::default();
//! conn.on_readable(&mut scratch, &mut out, &counters, 256 * 1024)?;
//! if conn.wants_write() {
//!     conn.on_writable(&counters)?;
//! }
//! # std::io::Result::Ok(())
//! ```

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;

use crate::counters::Counters;
use crate::protocol::{Action, CloseReason, Handler};
use crate::sys;

/// What one read says about input still waiting.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ReadState {
    /// The read filled the buffer (or was interrupted): more may be waiting.
    Full,
    /// A short read: the queue was empty at that moment, but an EOF that
    /// arrived with the data is still to be read (it has no edge of its own).
    Short,
    /// `WouldBlock`, or EOF read: nothing more until a new event.
    Drained,
}

/// What one [`Conn::recv_input`] got.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// `n` bytes are at the start of the scratch buffer; the state says
    /// whether more may wait.
    Data(usize, ReadState),
    /// The peer closed its sending side (the handler has not been told).
    Eof,
    /// Nothing to read now (`WouldBlock`, `EINTR`).
    Nothing(ReadState),
}

/// Where a connection is in its life. Every driver asks the [`Core`]
/// rather than keeping flags of its own.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reading input and replying.
    Open,
    /// No more input will be handled (the peer's EOF was handed to the
    /// handler, the handler asked to close, or the server drains): the
    /// output already produced is sent, then the connection ends for this
    /// reason.
    Closing(CloseReason),
}

/// The connection core, sans-IO: one connection's handler, phase, parked
/// input and bounded output, and the decision to close, shared by every
/// non-blocking driver (readiness, coroutine, uring, busy-poll). It never
/// touches a socket: a driver tells it what arrived, and gives it a `send`
/// to call (one kernel send, returning the bytes taken) or, for a
/// completion driver, takes its output to submit and tells it what was
/// sent. So it is tested, and fuzzed, with any chunking of the input and
/// any partial sends (`tests/chunking/mod.rs`, `fuzz/`).
///
/// The rules it keeps:
///
/// * the handler runs only while the output (queued plus in flight) is
///   below the bound; input that arrives when it is not (a completion
///   driver cannot refuse bytes already read) is *parked*, unprocessed, and
///   handed to the handler, a chunk at a time, as output drains;
/// * the peer's EOF reaches the handler after every byte that came before
///   it, parked ones included;
/// * the handler's `on_close` is called once, with the reason, when the
///   driver [closes](Core::close) it.
#[derive(Debug)]
pub struct Core<H> {
    /// `None` while the handler is away on another thread ([`Core::take_handler`]).
    handler: Option<H>,
    /// Output not yet handed to the kernel.
    out: Outbox,
    /// Output handed to an asynchronous send not yet completed
    /// ([`Core::take_output`]): it counts against the bound.
    in_flight: usize,
    /// Input read while the output was full, not yet processed (boxed:
    /// only a completion driver parks, and an idle connection pays one
    /// pointer for it, not a `Vec`'s three words).
    #[allow(clippy::box_collection)]
    parked: Option<Box<Vec<u8>>>,
    /// The peer's EOF arrived and waits behind the parked input.
    eof_parked: bool,
    phase: Phase,
    /// The handler's `on_close` has been called.
    closed: bool,
}

impl<H: Handler> Core<H> {
    /// A fresh connection speaking `handler`.
    pub fn new(handler: H) -> Core<H> {
        Core {
            handler: Some(handler),
            out: Outbox::new(),
            in_flight: 0,
            parked: None,
            eof_parked: false,
            phase: Phase::Open,
            closed: false,
        }
    }

    /// Where the connection is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Output bytes produced and not yet sent: queued, and in flight.
    pub fn pending(&self) -> usize {
        self.out.pending() + self.in_flight
    }

    /// Output bytes queued, not handed to the kernel.
    pub fn queued(&self) -> usize {
        self.out.pending()
    }

    /// Bytes of memory held in user space for output and parked input.
    pub fn buffer_capacity(&self) -> usize {
        self.out.capacity() + self.parked.as_ref().map_or(0, |p| p.capacity())
    }

    /// Input bytes parked, waiting for room in the output.
    pub fn parked(&self) -> usize {
        self.parked.as_ref().map_or(0, |p| p.len())
    }

    /// Whether the handler may run now: open, present, output below
    /// `max_output`.
    fn has_room(&self, max_output: usize) -> bool {
        self.phase == Phase::Open && self.handler.is_some() && self.pending() < max_output
    }

    /// Whether the driver should read from the peer: open, nothing parked
    /// or waiting behind parked input, the handler at home, and output
    /// below `max_output` (backpressure: a peer that does not read is not
    /// read from either).
    pub fn wants_read(&self, max_output: usize) -> bool {
        !self.eof_parked && self.parked.is_none() && self.has_room(max_output)
    }

    /// The reason the connection ends, once it may close now: closing, and
    /// every byte produced sent (the handler at home). `None` otherwise.
    pub fn done(&self) -> Option<CloseReason> {
        match self.phase {
            Phase::Closing(reason) if self.pending() == 0 && self.handler.is_some() => Some(reason),
            _ => None,
        }
    }

    /// Enters [`Phase::Closing`] for `reason`, unless already closing. No
    /// more input is handled; parked input is dropped.
    pub fn close_after_flush(&mut self, reason: CloseReason) {
        if self.phase == Phase::Open {
            self.phase = Phase::Closing(reason);
            self.parked = None;
            self.eof_parked = false;
        }
    }

    /// The server drains: stop handling input, send what was produced,
    /// then close ([`CloseReason::ServerStop`]).
    pub fn drain(&mut self) {
        self.close_after_flush(CloseReason::ServerStop);
    }

    /// Lends the handler out, to run it on another thread: until
    /// [`put_handler`](Self::put_handler) nothing is read and the
    /// connection is never done.
    pub fn take_handler(&mut self) -> Option<H> {
        self.handler.take()
    }

    /// Gives back the handler lent with [`take_handler`](Self::take_handler).
    pub fn put_handler(&mut self, handler: H) {
        self.handler = Some(handler);
    }

    /// Whether the handler is lent out.
    pub fn handler_lent(&self) -> bool {
        self.handler.is_none()
    }

    /// The handler's greeting ([`Handler::on_connect`]), offered to `send`.
    ///
    /// # Errors
    /// The error of `send`.
    pub fn open(
        &mut self,
        scratch: &mut Vec<u8>,
        counters: &Counters,
        send: impl FnOnce(&[u8]) -> io::Result<usize>,
    ) -> io::Result<()> {
        scratch.clear();
        let action = match self.handler.as_mut() {
            Some(h) => h.on_connect(scratch),
            None => Action::Continue,
        };
        self.respond(scratch, action, counters, send)
    }

    /// `data` arrived from the peer: handed to the handler (its reply
    /// built in `scratch` and offered to `send`) if the output has room
    /// and nothing is parked before it, else parked. Nothing is lost.
    ///
    /// # Errors
    /// The error of `send`.
    pub fn input(
        &mut self,
        data: &[u8],
        max_output: usize,
        scratch: &mut Vec<u8>,
        counters: &Counters,
        send: impl FnOnce(&[u8]) -> io::Result<usize>,
    ) -> io::Result<()> {
        if data.is_empty() || self.phase != Phase::Open {
            return Ok(());
        }
        if self.parked.is_some() || self.eof_parked || !self.has_room(max_output) {
            self.parked
                .get_or_insert_with(Box::default)
                .extend_from_slice(data);
            return Ok(());
        }
        scratch.clear();
        let action = match self.handler.as_mut() {
            Some(h) => h.on_data(data, scratch),
            None => unreachable!("has_room checks the handler is at home"),
        };
        self.respond(scratch, action, counters, send)
    }

    /// The peer closed its sending side: the handler's last words (after
    /// any parked input) are offered to `send`, and the connection closes
    /// once they are sent.
    ///
    /// # Errors
    /// The error of `send`.
    pub fn eof(
        &mut self,
        scratch: &mut Vec<u8>,
        counters: &Counters,
        send: impl FnOnce(&[u8]) -> io::Result<usize>,
    ) -> io::Result<()> {
        if self.phase != Phase::Open {
            return Ok(());
        }
        if self.parked.is_some() || self.handler.is_none() {
            self.eof_parked = true;
            return Ok(());
        }
        self.eof_parked = false;
        scratch.clear();
        if let Some(h) = self.handler.as_mut() {
            h.on_eof(scratch);
        }
        self.phase = Phase::Closing(CloseReason::PeerClosed);
        let res = self.offer(scratch, counters, send);
        res.map(drop)
    }

    /// Hands parked input to the handler, at most `chunk` bytes at a time,
    /// while the output has room, then a parked EOF. `send` is called for
    /// each reply. Returns whether anything is still parked.
    ///
    /// # Errors
    /// The error of `send`.
    pub fn resume(
        &mut self,
        max_output: usize,
        chunk: usize,
        scratch: &mut Vec<u8>,
        counters: &Counters,
        mut send: impl FnMut(&[u8]) -> io::Result<usize>,
    ) -> io::Result<bool> {
        while self.parked.is_some() && self.has_room(max_output) {
            let Some(mut parked) = self.parked.take() else {
                break;
            };
            let n = parked.len().min(chunk.max(1));
            scratch.clear();
            let action = match self.handler.as_mut() {
                Some(h) => h.on_data(&parked[..n], scratch),
                None => unreachable!("has_room checks the handler is at home"),
            };
            parked.drain(..n);
            if !parked.is_empty() {
                self.parked = Some(parked);
            }
            self.respond(scratch, action, counters, &mut send)?;
        }
        if self.eof_parked && self.parked.is_none() {
            self.eof(scratch, counters, &mut send)?;
        }
        Ok(self.parked.is_some() || self.eof_parked)
    }

    /// Queues `reply` (offered to `send` first if nothing is queued before
    /// it); [`Action::Close`] closes the connection once everything is
    /// sent.
    ///
    /// # Errors
    /// The error of `send`.
    pub fn respond(
        &mut self,
        reply: &[u8],
        action: Action,
        counters: &Counters,
        send: impl FnOnce(&[u8]) -> io::Result<usize>,
    ) -> io::Result<()> {
        if action == Action::Close {
            self.close_after_flush(CloseReason::HandlerClosed);
        }
        self.offer(reply, counters, send).map(drop)
    }

    /// Offers `reply` behind the queued output; returns the bytes queued.
    #[inline]
    fn offer(
        &mut self,
        reply: &[u8],
        counters: &Counters,
        send: impl FnOnce(&[u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        if reply.is_empty() {
            return Ok(0);
        }
        Counters::add(&counters.bytes_produced, reply.len() as u64);
        // A send in flight goes first: nothing may overtake it.
        let queued = if self.in_flight > 0 {
            self.out.offer(reply, |_| Ok(0))?
        } else {
            self.out.offer(reply, send)?
        };
        if queued > 0 {
            Counters::add(&counters.pending_output, queued as u64);
            counters
                .peak_conn_output
                .fetch_max(self.pending() as u64, Ordering::Relaxed);
        }
        Ok(queued)
    }

    /// One `send` of the queued output; returns the bytes sent.
    ///
    /// # Errors
    /// The error of `send`.
    pub fn flush(
        &mut self,
        counters: &Counters,
        send: impl FnOnce(&[u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        if self.in_flight > 0 {
            return Ok(0);
        }
        let n = self.out.flush(send)?;
        counters
            .pending_output
            .fetch_sub(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    /// For a completion driver: moves the queued output into `buf` (whose
    /// heap buffer then must not move until the send completes), to submit
    /// as one send. It counts as in flight until [`sent`](Self::sent).
    /// Nothing is moved while a send is in flight.
    pub fn take_output(&mut self, buf: &mut Vec<u8>) {
        if self.in_flight > 0 || self.out.pending() == 0 {
            return;
        }
        let before = buf.len();
        self.out
            .flush(|b| {
                buf.extend_from_slice(b);
                Ok(b.len())
            })
            .expect("an infallible send");
        self.in_flight = buf.len() - before;
    }

    /// For a completion driver: an asynchronous send of the output taken
    /// with [`take_output`](Self::take_output) completed with `n` bytes.
    /// `done`: the send is over (the rest, if any, goes in a new one,
    /// still counted in flight).
    pub fn sent(&mut self, n: usize, counters: &Counters) {
        let n = n.min(self.in_flight);
        self.in_flight -= n;
        counters
            .pending_output
            .fetch_sub(n as u64, Ordering::Relaxed);
    }

    /// Bytes handed to a send that has not completed.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Ends the connection: output never sent stops counting as pending,
    /// and the handler hears why (once; not if it is lent out).
    pub fn close(&mut self, counters: &Counters, reason: CloseReason) {
        counters
            .pending_output
            .fetch_sub(self.pending() as u64, Ordering::Relaxed);
        self.out = Outbox::new();
        self.in_flight = 0;
        self.parked = None;
        if !self.closed {
            if let Some(h) = self.handler.as_mut() {
                self.closed = true;
                h.on_close(reason);
            }
        }
    }
}

/// A non-blocking socket and its [`Core`]: what the readiness, coroutine
/// and busy-poll drivers keep per connection. Its methods do the socket's
/// `recv` and `send` and hand the rest to the core.
#[derive(Debug)]
pub struct Conn<H> {
    stream: TcpStream,
    core: Core<H>,
}

impl<H: Handler> Conn<H> {
    /// A connection over a non-blocking `stream`, speaking `handler`.
    pub fn new(stream: TcpStream, handler: H) -> Conn<H> {
        Conn {
            stream,
            core: Core::new(handler),
        }
    }

    /// The socket's fd.
    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// The connection core.
    pub fn core(&self) -> &Core<H> {
        &self.core
    }

    /// The connection core, to change.
    pub fn core_mut(&mut self) -> &mut Core<H> {
        &mut self.core
    }

    /// Output bytes not yet sent.
    pub fn pending(&self) -> usize {
        self.core.pending()
    }

    /// Bytes of memory the connection holds in user space.
    pub fn buffer_capacity(&self) -> usize {
        self.core.buffer_capacity()
    }

    /// Whether the driver should read from this peer ([`Core::wants_read`]).
    pub fn wants_read(&self, max_output: usize) -> bool {
        self.core.wants_read(max_output)
    }

    /// Whether output is waiting for the socket to become writable.
    pub fn wants_write(&self) -> bool {
        self.core.pending() > 0
    }

    /// Whether the connection is finished ([`Core::done`]): the driver
    /// closes it now.
    pub fn is_done(&self) -> bool {
        self.core.done().is_some()
    }

    /// Why a connection that [`is_done`](Self::is_done) ends.
    pub fn done_reason(&self) -> CloseReason {
        match self.core.phase() {
            Phase::Closing(reason) => reason,
            Phase::Open => CloseReason::PeerClosed,
        }
    }

    /// Lends the handler out ([`Core::take_handler`]).
    pub fn take_handler(&mut self) -> Option<H> {
        self.core.take_handler()
    }

    /// Gives back the handler lent with [`take_handler`](Self::take_handler).
    pub fn put_handler(&mut self, handler: H) {
        self.core.put_handler(handler);
    }

    /// Whether the handler is lent out.
    pub fn handler_lent(&self) -> bool {
        self.core.handler_lent()
    }

    /// Sends a FIN after the output already queued in the kernel: the peer
    /// reads everything, then EOF. For a lingering close (see
    /// `server::readiness`): closing a socket whose input is unread makes
    /// the kernel send a reset and drop the output it had not sent yet.
    ///
    /// # Errors
    /// The OS error of `shutdown`.
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.stream.shutdown(std::net::Shutdown::Write)
    }

    /// Whether closing now loses nothing: every byte sent has been
    /// acknowledged by the peer (the socket's send queue is empty,
    /// `SIOCOUTQ`) and no input waits unread (`SIOCINQ`), so the close
    /// sends a FIN, not a reset. `false` where the kernel cannot tell.
    pub fn nothing_to_lose(&self) -> bool {
        nothing_to_lose(self.fd())
    }

    /// Whether a connection that is [done](Self::is_done) for `reason`
    /// may close at once. The peer's EOF, a reset, an error, the idle
    /// timeout or shedding: yes. The handler's close or the server's drain:
    /// only if [nothing can be lost](Self::nothing_to_lose); else the
    /// driver sends a FIN and waits (a lingering close), since closing a
    /// socket whose peer still sends makes the kernel answer with a reset,
    /// which can destroy replies the peer has not read yet.
    pub fn close_now(&self, reason: CloseReason) -> bool {
        close_now(self.fd(), reason)
    }

    /// Whether the connection has handled the peer's EOF, or will no more
    /// read (closing).
    pub fn is_read_closed(&self) -> bool {
        self.core.phase() != Phase::Open
    }

    /// Asks the handler for its greeting and sends it: the first thing a
    /// driver does with a new connection.
    ///
    /// # Errors
    /// The OS error of `send`.
    pub fn open(&mut self, scratch_out: &mut Vec<u8>, counters: &Counters) -> io::Result<()> {
        let fd = self.fd();
        self.core
            .open(scratch_out, counters, |b| send(fd, b, counters))
    }

    /// One `recv` into `scratch`, without running the handler: for a driver
    /// that runs the handler elsewhere (offload). The caller hands an EOF
    /// to [`on_eof`](Self::on_eof).
    ///
    /// # Errors
    /// The OS error of `recv`, `WouldBlock` and `EINTR` excluded.
    pub fn recv_input(&mut self, scratch: &mut [u8], counters: &Counters) -> io::Result<Input> {
        Counters::add(&counters.recv_calls, 1);
        match sys::recv(self.fd(), scratch) {
            Ok(0) => Ok(Input::Eof),
            Ok(n) => {
                Counters::add(&counters.bytes_in, n as u64);
                let more = if n == scratch.len() {
                    ReadState::Full
                } else {
                    ReadState::Short
                };
                Ok(Input::Data(n, more))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                Ok(Input::Nothing(ReadState::Drained))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Input::Nothing(ReadState::Full)),
            Err(e) => Err(e),
        }
    }

    /// Hands the peer's EOF to the handler ([`Core::eof`]) and sends its
    /// last words.
    ///
    /// # Errors
    /// The OS error of `send`.
    pub fn on_eof(&mut self, scratch_out: &mut Vec<u8>, counters: &Counters) -> io::Result<()> {
        let fd = self.fd();
        self.core
            .eof(scratch_out, counters, |b| send(fd, b, counters))
    }

    /// Queues a reply made elsewhere (the offload pool): sent at once if
    /// nothing is queued before it; [`Action::Close`] closes the
    /// connection once everything is sent.
    ///
    /// # Errors
    /// The OS error of `send`.
    pub fn respond(&mut self, reply: &[u8], action: Action, counters: &Counters) -> io::Result<()> {
        let fd = self.fd();
        self.core
            .respond(reply, action, counters, |b| send(fd, b, counters))
    }

    /// One `recv` into `scratch`; feeds what arrived to the handler, which
    /// builds its reply in `scratch_out`; sends the reply at once if nothing
    /// is queued before it, and keeps only what the kernel did not take.
    /// On EOF, asks the handler for its last words the same way.
    ///
    /// `WouldBlock` (a spurious wake-up) is not an error: nothing happens.
    ///
    /// Returns what the `recv` tells about input still waiting (see
    /// [`ReadState`]); an edge-triggered driver relies on it, since the kernel
    /// reports data that arrives after a drain as a new edge.
    ///
    /// # Errors
    /// The OS error of `recv` or `send`; the connection should be closed
    /// ([`crate::sys::is_peer_gone`] tells a reset from other errors).
    pub fn on_readable(
        &mut self,
        scratch: &mut [u8],
        scratch_out: &mut Vec<u8>,
        counters: &Counters,
        max_output: usize,
    ) -> io::Result<ReadState> {
        let (n, more) = match self.recv_input(scratch, counters)? {
            Input::Data(n, more) => (n, more),
            Input::Nothing(more) => return Ok(more),
            Input::Eof => {
                self.on_eof(scratch_out, counters)?;
                return Ok(ReadState::Drained);
            }
        };
        let fd = self.fd();
        self.core
            .input(&scratch[..n], max_output, scratch_out, counters, |b| {
                send(fd, b, counters)
            })?;
        Ok(more)
    }

    /// One `send` of the unsent output; frees the buffer once it is empty.
    ///
    /// # Errors
    /// The OS error of `send`; the connection should be closed.
    pub fn on_writable(&mut self, counters: &Counters) -> io::Result<()> {
        let fd = self.fd();
        self.core
            .flush(counters, |b| send(fd, b, counters))
            .map(drop)
    }

    /// Closes the socket and tells the handler why ([`Handler::on_close`];
    /// not if it is lent out); output never sent stops counting as pending.
    pub fn close(mut self, counters: &Counters, reason: CloseReason) {
        self.core.close(counters, reason);
    }

    /// Ends the connection's core without dropping the socket (a driver
    /// that drops it later): output never sent stops counting as pending
    /// and the handler hears `reason`.
    pub fn release(&mut self, counters: &Counters, reason: CloseReason) {
        self.core.close(counters, reason);
    }
}

/// A lingering close in progress: the FIN is sent after everything
/// produced, and what the peer still sends is dropped, until its EOF, until
/// closing can lose nothing ([`nothing_to_lose`]), or until the deadline.
/// Every driver that lingers keeps one and asks it, so the rule is written
/// once.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Linger {
    /// Why the connection ends.
    pub reason: CloseReason,
    /// When it ends at the latest.
    pub deadline: std::time::Instant,
}

impl Linger {
    /// A lingering close for `reason`, for `limit` at most from `now`.
    pub fn new(reason: CloseReason, limit: std::time::Duration, now: std::time::Instant) -> Linger {
        Linger {
            reason,
            deadline: now + limit,
        }
    }

    /// The reason to close socket `fd` now: nothing can be lost any more,
    /// or time is up. `None`: linger on.
    pub fn over(&self, fd: RawFd, now: std::time::Instant) -> Option<CloseReason> {
        (now >= self.deadline || nothing_to_lose(fd)).then_some(self.reason)
    }
}

/// Whether closing the connected socket `fd` now loses nothing: every
/// byte sent is acknowledged (`SIOCOUTQ` is 0) and no input waits unread
/// (`SIOCINQ` is 0). `false` where the kernel cannot tell.
pub fn nothing_to_lose(fd: RawFd) -> bool {
    sys::unsent_and_unread(fd) == Some((0, 0))
}

/// The close decision for a connection done for `reason`, on socket `fd`
/// ([`Conn::close_now`]): at once, unless the handler's close or the
/// server's drain could lose bytes, which take a lingering close.
pub fn close_now(fd: RawFd, reason: CloseReason) -> bool {
    match reason {
        CloseReason::HandlerClosed | CloseReason::ServerStop => nothing_to_lose(fd),
        _ => true,
    }
}

impl<H> AsRawFd for Conn<H> {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

/// A connection's unsent output: the bookkeeping of [`Conn`] without the
/// socket, so that it can be tested (and fuzzed) with any "kernel" that takes
/// an arbitrary number of bytes per send.
///
/// It keeps the memory rules of the module: a reply is offered to the
/// kernel at once when nothing is queued before it, and only the part the
/// kernel refused is copied in; the sent prefix is dropped once it outweighs
/// the unsent rest; the buffer is freed as soon as it is flushed. So the
/// buffer's length stays within twice the unsent output plus one reply, and
/// an empty outbox holds no memory.
///
/// # Examples
///
/// ```
/// use iomux::conn::Outbox;
///
/// let mut out = Outbox::new();
/// // The "kernel" takes 2 bytes of the reply; 3 are queued.
/// assert_eq!(out.offer(b"HELLO", |b| Ok(b.len().min(2))).unwrap(), 3);
/// assert_eq!(out.unsent(), b"LLO");
/// // A later send takes the rest, and the buffer is freed.
/// assert_eq!(out.flush(|b| Ok(b.len())).unwrap(), 3);
/// assert_eq!((out.pending(), out.capacity()), (0, 0));
/// # std::io::Result::Ok(())
/// ```
#[derive(Debug, Default)]
pub struct Outbox {
    /// `buf[sent..]` is unsent.
    buf: Vec<u8>,
    sent: usize,
}

impl Outbox {
    /// An empty outbox; it allocates nothing.
    pub const fn new() -> Outbox {
        Outbox {
            buf: Vec::new(),
            sent: 0,
        }
    }

    /// Bytes queued and not yet sent.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.sent
    }

    /// Bytes of memory held: 0 whenever nothing is pending.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The bytes queued and not yet sent, oldest first.
    pub fn unsent(&self) -> &[u8] {
        &self.buf[self.sent..]
    }

    /// Queues `reply` behind the pending output. If nothing is pending it is
    /// first given to `send` (one call, which returns how many bytes it
    /// took, at most those given), and only the rest is copied in. Returns
    /// the bytes queued.
    ///
    /// # Errors
    /// The error of `send`; nothing is queued then.
    #[inline]
    pub fn offer(
        &mut self,
        reply: &[u8],
        send: impl FnOnce(&[u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        if reply.is_empty() {
            return Ok(0);
        }
        let taken = if self.pending() == 0 { send(reply)? } else { 0 };
        let rest = &reply[taken..];
        if !rest.is_empty() {
            // Drop the sent prefix once it outweighs the unsent rest, so a
            // peer that reads slowly but steadily cannot grow the buffer past
            // twice its pending output (plus one reply): the move is
            // amortised over at least as many bytes sent.
            if self.sent > 0 && self.sent >= self.pending() {
                self.buf.drain(..self.sent);
                self.sent = 0;
            }
            self.buf.extend_from_slice(rest);
        }
        Ok(rest.len())
    }

    /// Gives the pending output to `send` (one call, none if nothing is
    /// pending) and forgets what it took (at most what it was given); frees the buffer once it is empty.
    /// Returns the bytes sent.
    ///
    /// # Errors
    /// The error of `send`; the outbox is unchanged then.
    #[inline]
    pub fn flush(&mut self, send: impl FnOnce(&[u8]) -> io::Result<usize>) -> io::Result<usize> {
        if self.pending() == 0 {
            return Ok(0);
        }
        let n = send(&self.buf[self.sent..])?;
        debug_assert!(n <= self.pending(), "send took more than it was given");
        self.sent += n;
        if self.pending() == 0 {
            // Idle connections hold no buffer.
            self.buf = Vec::new();
            self.sent = 0;
        }
        Ok(n)
    }
}

/// Sends once without `SIGPIPE`; `WouldBlock` counts as 0 bytes taken.
fn send(fd: RawFd, buf: &[u8], counters: &Counters) -> io::Result<usize> {
    Counters::add(&counters.send_calls, 1);
    match sys::send(fd, buf) {
        Ok(n) => {
            Counters::add(&counters.bytes_out, n as u64);
            Ok(n)
        }
        Err(e)
            if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted =>
        {
            Ok(0)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Protocol;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A peer that reads slowly but steadily keeps unsent output just under
    /// the bound; the buffer must not grow with the bytes already sent.
    #[test]
    fn buffer_stays_bounded_under_a_steady_slow_reader() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stream, _) = listener.accept().unwrap();
        stream.set_nonblocking(true).unwrap();
        peer.set_nonblocking(true).unwrap();
        let counters = Counters::default();
        let (max_output, chunk) = (64 * 1024, 4096);
        let mut conn = Conn::new(stream, Protocol::Echo.handler());
        let (mut scratch, mut out) = (vec![0; chunk], Vec::new());
        let mut sink = vec![0; 1024];
        let msg = vec![b'x'; chunk];
        let mut max_capacity = 0;
        for _ in 0..20_000 {
            let _ = peer.write(&msg); // the peer keeps sending...
            let _ = peer.read(&mut sink); // ...and reads a little
            if conn.wants_read(max_output) {
                let _state = conn
                    .on_readable(&mut scratch, &mut out, &counters, max_output)
                    .unwrap();
            }
            if conn.wants_write() {
                conn.on_writable(&counters).unwrap();
            }
            max_capacity = max_capacity.max(conn.buffer_capacity());
        }
        let sent = counters.bytes_out.load(Ordering::Relaxed) as usize;
        assert!(
            sent > 8 * max_output,
            "the test must push far more than the bound ({sent})"
        );
        assert!(
            max_capacity <= 4 * (max_output + chunk),
            "buffer grew to {max_capacity} bytes for a bound of {max_output}"
        );
    }
}
