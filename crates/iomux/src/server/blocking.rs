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
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Config, Counters, Reserve, Stop};
use crate::protocol::{Action, Handler};

pub(super) fn serve(
    listener: TcpListener,
    config: &Config,
    stop: &Stop,
    counters: &Arc<Counters>,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut buf = vec![0; config.read_chunk];
    let mut reserve = Reserve::new(config.on_fd_exhaustion)?;
    while let Some(stream) = accept(&listener, stop, counters, &mut reserve)? {
        serve_conn(stream, config, counters, &mut buf);
        Counters::add(&counters.closed, 1);
    }
    Ok(())
}

/// Waits, without spinning, for the next connection on a non-blocking
/// `listener` and accepts it (counted in `accepted`). Returns `None` once
/// `stop` is given. Accept errors are counted and backed off, never returned.
///
/// # Errors
/// Only `poll`'s own failure, from [`Stop::wait_readable`].
pub(super) fn accept(
    listener: &TcpListener,
    stop: &Stop,
    counters: &Counters,
    reserve: &mut Reserve,
) -> io::Result<Option<TcpStream>> {
    loop {
        if stop.wait_readable(listener.as_raw_fd())? {
            return Ok(None);
        }
        match listener.accept() {
            Ok((stream, _)) => {
                Counters::add(&counters.accepted, 1);
                return Ok(Some(stream));
            }
            // WouldBlock (the connection vanished) goes straight back to
            // the poll; anything else is counted and backed off.
            Err(e) => {
                super::accept_failed(&e, listener.as_raw_fd(), reserve, counters);
            }
        }
    }
}

/// Serves one connection to completion with blocking calls, reading into
/// `buf`, then closes it.
///
/// Every error ends this connection only: a reset or broken pipe is counted
/// in `resets`, anything else just closes. The caller counts `closed` once
/// it has released whatever slot the connection held: the socket is closed
/// by the time this returns.
pub(super) fn serve_conn(stream: TcpStream, config: &Config, counters: &Counters, buf: &mut [u8]) {
    let mut handler = config.protocol.handler();
    let mut out = Vec::new();
    if let Err(e) = converse(&stream, &mut handler, &mut out, buf, counters) {
        if super::is_peer_gone(&e) {
            Counters::add(&counters.resets, 1);
        }
    }
    drop(stream);
}

/// The read / reply loop of one connection; returns when the peer's EOF or
/// the handler's [`Action::Close`] has been answered in full.
fn converse(
    stream: &TcpStream,
    handler: &mut impl Handler,
    out: &mut Vec<u8>,
    buf: &mut [u8],
    counters: &Counters,
) -> io::Result<()> {
    // On Linux an accepted socket never inherits O_NONBLOCK; elsewhere it
    // may inherit it from the non-blocking listener.
    stream.set_nonblocking(false)?;
    let fd = stream.as_raw_fd();
    loop {
        Counters::add(&counters.recv_calls, 1);
        let n = match crate::sys::recv(fd, buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            handler.on_eof(out);
            return send_all(fd, out, counters);
        }
        Counters::add(&counters.bytes_in, n as u64);
        let action = handler.on_data(&buf[..n], out);
        send_all(fd, out, counters)?;
        if action == Action::Close {
            return Ok(());
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
