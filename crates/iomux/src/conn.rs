//! One non-blocking connection: its handler, its unsent output, its
//! half-close state. Shared by the drivers that never block on a socket.
//!
//! Memory rules, so that many idle connections cost little more than their
//! kernel sockets:
//!
//! * input is read into the driver's one scratch buffer, never a
//!   per-connection one;
//! * the handler's reply is built in the driver's scratch output and sent at
//!   once; only what the kernel did not take is copied into the connection's
//!   own buffer, and that buffer is freed as soon as it is flushed;
//! * the buffer's sent prefix is dropped once it outweighs the unsent rest,
//!   so the buffer stays within twice the unsent output plus one reply;
//! * a connection whose unsent output reaches the driver's bound stops being
//!   read until it drains ([`Conn::wants_read`]): a peer that sends without
//!   reading cannot grow the server's memory.
//!
//! The output rules live in [`Outbox`], which needs no socket: the test
//! `tests/conn_chunking.rs` and the fuzz target `fuzz/` drive it with any
//! chunking of the input and any partial sends.
//!
//! # Examples
//!
//! ```no_run
//! use iomux::conn::Conn;
//! use iomux::protocol::Protocol;
//! use iomux::server::Counters;
//! use std::net::TcpStream;
//!
//! let stream = TcpStream::connect("127.0.0.1:1688")?;
//! stream.set_nonblocking(true)?;
//! let mut conn = Conn::new(stream, Protocol::Upper.handler());
//! let (mut scratch, mut out) = (vec![0; 65536], Vec::new());
//! let counters = Counters::default();
//! conn.on_readable(&mut scratch, &mut out, &counters)?;
//! if conn.wants_write() {
//!     conn.on_writable(&counters)?;
//! }
//! # std::io::Result::Ok(())
//! ```

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;

use crate::protocol::{Action, CloseReason, Handler};
use crate::server::Counters;
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

/// A non-blocking connection's state.
#[derive(Debug)]
pub struct Conn<H> {
    stream: TcpStream,
    /// `None` while the handler is away on another thread ([`Conn::take_handler`]).
    handler: Option<H>,
    /// Output the kernel has not taken yet.
    out: Outbox,
    /// The peer closed its sending side (read returned 0).
    read_closed: bool,
    /// The handler asked to close once its output is sent.
    closing: bool,
}

impl<H: Handler> Conn<H> {
    /// A connection over a non-blocking `stream`, speaking `handler`.
    pub fn new(stream: TcpStream, handler: H) -> Conn<H> {
        Conn {
            stream,
            handler: Some(handler),
            out: Outbox::new(),
            read_closed: false,
            closing: false,
        }
    }

    /// The socket's fd.
    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Output bytes not yet sent.
    pub fn pending(&self) -> usize {
        self.out.pending()
    }

    /// Bytes of memory the connection holds in user space for output.
    pub fn buffer_capacity(&self) -> usize {
        self.out.capacity()
    }

    /// Whether the driver should read from this peer: it has not closed,
    /// the handler has not asked to close, and its unsent output is below
    /// `max_output`.
    pub fn wants_read(&self, max_output: usize) -> bool {
        !self.read_closed && !self.closing && self.pending() < max_output && self.handler.is_some()
    }

    /// Whether output is waiting for the socket to become writable.
    pub fn wants_write(&self) -> bool {
        self.pending() > 0
    }

    /// Whether the connection is finished: the peer or the handler ended it
    /// and every byte has been sent. The driver closes it now.
    pub fn is_done(&self) -> bool {
        (self.read_closed || self.closing) && self.pending() == 0 && self.handler.is_some()
    }

    /// Lends the handler out, to run it on another thread: until
    /// [`put_handler`](Self::put_handler), the connection is not read
    /// ([`wants_read`](Self::wants_read) is false) and never done.
    pub fn take_handler(&mut self) -> Option<H> {
        self.handler.take()
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

    /// Whether the peer's EOF has been read.
    pub fn is_read_closed(&self) -> bool {
        self.read_closed
    }

    /// Whether the handler is lent out ([`take_handler`](Self::take_handler)).
    pub fn handler_lent(&self) -> bool {
        self.handler.is_none()
    }

    /// Gives back the handler lent with [`take_handler`](Self::take_handler).
    pub fn put_handler(&mut self, handler: H) {
        self.handler = Some(handler);
    }

    /// One `recv` into `scratch`, without running the handler: for a driver
    /// that runs the handler elsewhere (offload). An EOF marks the read
    /// side closed; the caller then calls [`on_eof`](Self::on_eof).
    ///
    /// # Errors
    /// The OS error of `recv`, `WouldBlock` and `EINTR` excluded.
    pub fn recv_input(&mut self, scratch: &mut [u8], counters: &Counters) -> io::Result<Input> {
        Counters::add(&counters.recv_calls, 1);
        match sys::recv(self.fd(), scratch) {
            Ok(0) => {
                self.read_closed = true;
                Ok(Input::Eof)
            }
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

    /// Asks the handler for its last words after an EOF and sends them.
    ///
    /// # Errors
    /// The OS error of `send`.
    pub fn on_eof(&mut self, scratch_out: &mut Vec<u8>, counters: &Counters) -> io::Result<()> {
        scratch_out.clear();
        if let Some(h) = self.handler.as_mut() {
            h.on_eof(scratch_out);
        }
        self.respond(scratch_out, Action::Continue, counters)
    }

    /// Sends `reply` at once if nothing is queued before it, and keeps only
    /// what the kernel did not take; [`Action::Close`] closes the
    /// connection once everything is sent.
    ///
    /// # Errors
    /// The OS error of `send`.
    pub fn respond(&mut self, reply: &[u8], action: Action, counters: &Counters) -> io::Result<()> {
        if action == Action::Close {
            self.closing = true;
        }
        if reply.is_empty() {
            return Ok(());
        }
        let fd = self.fd();
        let queued = self.out.offer(reply, |b| send(fd, b, counters))?;
        if queued > 0 {
            Counters::add(&counters.pending_output, queued as u64);
            counters
                .peak_conn_output
                .fetch_max(self.pending() as u64, Ordering::Relaxed);
        }
        Ok(())
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
    /// ([`crate::server::is_peer_gone`] tells a reset from other errors).
    pub fn on_readable(
        &mut self,
        scratch: &mut [u8],
        scratch_out: &mut Vec<u8>,
        counters: &Counters,
    ) -> io::Result<ReadState> {
        let (n, more) = match self.recv_input(scratch, counters)? {
            Input::Data(n, more) => (n, more),
            Input::Nothing(more) => return Ok(more),
            Input::Eof => {
                self.on_eof(scratch_out, counters)?;
                return Ok(ReadState::Drained);
            }
        };
        scratch_out.clear();
        let action = match self.handler.as_mut() {
            Some(h) => h.on_data(&scratch[..n], scratch_out),
            None => unreachable!("a connection whose handler is away is not read"),
        };
        self.respond(scratch_out, action, counters)?;
        Ok(more)
    }

    /// One `send` of the unsent output; frees the buffer once it is empty.
    ///
    /// # Errors
    /// The OS error of `send`; the connection should be closed.
    pub fn on_writable(&mut self, counters: &Counters) -> io::Result<()> {
        if self.pending() == 0 {
            return Ok(());
        }
        let fd = self.fd();
        let n = self.out.flush(|b| send(fd, b, counters))?;
        counters
            .pending_output
            .fetch_sub(n as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Asks the handler for its greeting ([`Handler::on_connect`]) and
    /// sends it: the first thing a driver does with a new connection.
    ///
    /// # Errors
    /// The OS error of `send`.
    pub fn open(&mut self, scratch_out: &mut Vec<u8>, counters: &Counters) -> io::Result<()> {
        scratch_out.clear();
        let action = match self.handler.as_mut() {
            Some(h) => h.on_connect(scratch_out),
            None => Action::Continue,
        };
        self.respond(scratch_out, action, counters)
    }

    /// Why a connection that [`is_done`](Self::is_done) ends: the peer's
    /// EOF, or the handler's [`Action::Close`].
    pub fn done_reason(&self) -> CloseReason {
        if self.closing {
            CloseReason::HandlerClosed
        } else {
            CloseReason::PeerClosed
        }
    }

    /// Closes the socket and tells the handler why
    /// ([`Handler::on_close`]; not if it is lent out); output never sent
    /// stops counting as pending.
    pub fn close(mut self, counters: &Counters, reason: CloseReason) {
        self.release_pending(counters);
        if let Some(h) = self.handler.as_mut() {
            h.on_close(reason);
        }
    }

    /// Forgets the unsent output (it stops counting as pending): for a
    /// driver about to drop the connection without [`close`](Self::close).
    pub fn release_pending(&mut self, counters: &Counters) {
        counters
            .pending_output
            .fetch_sub(self.pending() as u64, Ordering::Relaxed);
        self.out = Outbox::new();
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
                let _state = conn.on_readable(&mut scratch, &mut out, &counters).unwrap();
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
