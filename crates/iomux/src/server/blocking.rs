//! Blocking, iterative: one client at a time on the calling thread.
//!
//! The seeds' first server: `accept`, then `recv` / `send` on that client
//! until it closes, then `accept` the next. A read has two phases, waiting
//! for data and copying it from the kernel; here the one thread is blocked
//! in **both**, inside `recv`. While it waits for the current client it can
//! do nothing else: a second client completes its handshake in the kernel
//! and then waits in the listen backlog, unanswered, until the first one
//! closes. So [`Config::max_conns`] does not apply: one connection is served
//! at a time, whatever it says.
//!
//! Costs: one thread, one `recv` and at least one `send` per chunk, no
//! readiness call at all, so it is the cheapest model per byte while it has
//! a single client. Limits: no concurrency; one idle client stalls every
//! other one.
//!
//! Stop is watched only between clients: the loop polls the listener and
//! the [`Stop`] fd together before each `accept` and returns once stopped,
//! but while a client is being served the thread sits in `recv`, and a stop
//! takes effect when that client closes.
//!
//! The listener is made non-blocking so that a connection which vanishes
//! between the poll and the `accept` (reset while still in the backlog)
//! sends the loop back to the poll, where the stop can reach it, instead of
//! parking it in `accept`. Accepted sockets are blocking.
//!
//! The helpers [`accept`] and [`serve_conn`] are the blocking lifecycle the
//! thread-based drivers (`threaded.rs`, `pool.rs`) share.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Acceptor, Config, Counters, Stop};
use crate::protocol::{Action, CloseReason, Factory, Handler};
use crate::push::{Push, Pusher};

pub(super) fn serve<F: Factory>(
    listener: TcpListener,
    config: &Config,
    stop: &Stop,
    counters: &Arc<Counters>,
    factory: F,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut buf = vec![0; config.read_chunk];
    let mut acceptor = Acceptor::new(config)?;
    // One connection at a time: `max_conns` has nothing to bound.
    while let Some(stream) = accept(&listener, stop, counters, &mut acceptor, || 0)? {
        serve_conn(
            stream,
            factory.new_handler(),
            config.max_output,
            counters,
            &mut buf,
        );
        Counters::add(&counters.closed, 1);
    }
    Ok(())
}

/// Waits, without spinning, for the next connection on a non-blocking
/// `listener` (polled together with the [`Stop`]) and accepts it with the
/// [`Acceptor`], which counts, refuses past `max_conns` (with `live`
/// connections served) and backs off after errors. Returns `None` once
/// `stop` is given.
///
/// # Errors
/// Only `poll`'s own failure, from [`Stop::wait_readable`].
pub(super) fn accept(
    listener: &TcpListener,
    stop: &Stop,
    counters: &Counters,
    acceptor: &mut Acceptor,
    live: impl Fn() -> usize,
) -> io::Result<Option<TcpStream>> {
    let fd = listener.as_raw_fd();
    acceptor.next_blocking(fd, live, counters, || {
        stop.wait_readable(fd).map(|stopped| !stopped)
    })
}

/// Serves one connection to completion with blocking calls, reading into
/// `buf`, then closes it and tells the handler why.
///
/// Every error ends this connection only: a reset or broken pipe is counted
/// in `resets`, anything else just closes. The caller counts `closed` once
/// it has released whatever slot the connection held: the socket is closed
/// by the time this returns.
pub(super) fn serve_conn<H: Handler>(
    stream: TcpStream,
    mut handler: H,
    max_output: usize,
    counters: &Counters,
    buf: &mut [u8],
) {
    let mut out = Vec::new();
    // A handler that pushes: the connection's thread waits for its socket
    // and for an eventfd the pushers write, not in `recv` alone.
    let push = match H::PUSH.then(|| PushFd::new(max_output)).transpose() {
        Ok(Some((p, push))) => {
            handler.attach(push);
            Some(p)
        }
        Ok(None) => None,
        Err(e) => {
            drop(stream);
            return handler.on_close(CloseReason::of_error(&e));
        }
    };
    let res = converse(
        &stream,
        &mut handler,
        &mut out,
        buf,
        counters,
        push.as_ref(),
    );
    let reason = match res {
        Ok(reason) => reason,
        Err(e) => {
            if super::is_peer_gone(&e) {
                Counters::add(&counters.resets, 1);
            }
            CloseReason::of_error(&e)
        }
    };
    drop(stream);
    handler.on_close(reason);
}

/// The read / reply loop of one connection; returns when the peer's EOF or
/// the handler's [`Action::Close`] has been answered in full.
fn converse(
    stream: &TcpStream,
    handler: &mut impl Handler,
    out: &mut Vec<u8>,
    buf: &mut [u8],
    counters: &Counters,
    push: Option<&PushFd>,
) -> io::Result<CloseReason> {
    // Accepted sockets come non-blocking (accept4's SOCK_NONBLOCK): this
    // model blocks in `recv` on purpose.
    stream.set_nonblocking(false)?;
    let fd = stream.as_raw_fd();
    let action = handler.on_connect(out);
    send_all(fd, out, counters)?;
    if action == Action::Close {
        return Ok(CloseReason::HandlerClosed);
    }
    loop {
        if let Some(p) = push {
            // Pushed output is sent as it comes, until the peer sends.
            while let Some(close) = p.wait(fd, out)? {
                send_all(fd, out, counters)?;
                p.pusher.set_pending(0);
                if close {
                    return Ok(CloseReason::HandlerClosed);
                }
            }
        }
        Counters::add(&counters.recv_calls, 1);
        let n = match crate::sys::recv(fd, buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            handler.on_eof(out);
            send_all(fd, out, counters)?;
            return Ok(CloseReason::PeerClosed);
        }
        Counters::add(&counters.bytes_in, n as u64);
        let action = handler.on_data(&buf[..n], out);
        send_all(fd, out, counters)?;
        if action == Action::Close {
            return Ok(CloseReason::HandlerClosed);
        }
    }
}

/// A connection's pushers, and the eventfd they write to wake its thread.
struct PushFd {
    pusher: Pusher,
    efd: Arc<OwnedFd>,
}

impl PushFd {
    fn new(max_output: usize) -> io::Result<(PushFd, Push)> {
        let efd = Arc::new(crate::sys::eventfd()?);
        let e = efd.clone();
        let (pusher, push) = Pusher::new(max_output, move || {
            let _ = crate::sys::write(&*e, &1u64.to_ne_bytes());
        });
        Ok((PushFd { pusher, efd }, push))
    }

    /// Waits for the socket `fd` to be readable or for a push. `None` once
    /// the socket is readable; else the pushed bytes are appended to
    /// `out`, and `Some(close)` says whether the pushers asked to close
    /// (an abort drops them).
    fn wait(&self, fd: RawFd, out: &mut Vec<u8>) -> io::Result<Option<bool>> {
        let [readable, pushed] = crate::sys::wait_readable([fd, self.efd.as_raw_fd()])?;
        if !pushed {
            debug_assert!(readable);
            return Ok(None);
        }
        let mut count = [0u8; 8];
        let _ = crate::sys::read(&*self.efd, &mut count);
        let p = self.pusher.take();
        match p.close {
            Some(true) => Ok(Some(true)),
            close => {
                out.extend_from_slice(&p.bytes);
                Ok(Some(close.is_some()))
            }
        }
    }
}

/// Sends all of `out` with blocking `send`s, resuming partial writes, then
/// clears it. While it is being written it counts as pending output.
fn send_all(fd: std::os::fd::RawFd, out: &mut Vec<u8>, counters: &Counters) -> io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let len = out.len() as u64;
    Counters::add(&counters.bytes_produced, len);
    counters.peak_conn_output.fetch_max(len, Ordering::Relaxed);
    Counters::add(&counters.pending_output, len);
    let mut sent = 0;
    let res = loop {
        if sent == out.len() {
            break Ok(());
        }
        Counters::add(&counters.send_calls, 1);
        match crate::sys::send(fd, &out[sent..]) {
            Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                sent += n;
                Counters::add(&counters.bytes_out, n as u64);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    counters.pending_output.fetch_sub(len, Ordering::Relaxed);
    out.clear();
    res
}
