//! Non-blocking busy polling: the seeds' non-blocking server, fixed.
//!
//! The listener and every client socket are non-blocking, and one thread
//! loops without ever waiting. Each iteration, in order:
//!
//! 1. if the [`Stop`] was given, close every connection and return;
//! 2. try `accept` until it says `WouldBlock` (past [`Config::max_conns`] a
//!    new connection is closed at once and counted in `refused`; after an
//!    accept error such as `EMFILE`, accepting, not serving, pauses for
//!    [`ACCEPT_BACKOFF`]);
//! 3. for each connection, one try-`recv` (skipped while its pending output
//!    has reached [`Config::max_output`]: backpressure), then one try-`send`
//!    of its pending output, resuming where the last partial send stopped;
//! 4. drop the connections that are done: peer EOF or the handler's
//!    [`Action::Close`] with all output flushed, or an error.
//!
//! Of the two phases of a read, nobody waits for data: a `recv` with
//! nothing to read returns `EAGAIN` at once and the loop asks again; only
//! the copy, once data is there, happens inside the call. The price is the
//! lessons' warning: with nothing to do, the loop still asks every socket on
//! every iteration, so **it spins at 100% of a core when idle, by design**.
//! There is deliberately no sleep: a sleep would trade that CPU for the
//! other cost the lessons name, latency added between two polls. Every
//! iteration costs one `accept` plus one `recv` per connection, so the cost
//! of a round grows with the number of connections whether or not any has
//! data: the problem readiness APIs solve.
//!
//! The seeds' bugs are fixed: partial sends keep the rest pending instead of
//! dropping it, closed sockets are removed after the pass (the seeds removed
//! them while iterating), a reset only closes its own connection, and EOF
//! flushes what is pending before closing.

use std::io;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use super::{is_peer_gone, Accepted, Acceptor, Config, Counters, Stop, ACCEPT_BACKOFF};
use crate::conn::Conn;
use crate::protocol::{Action, CloseReason, Factory, Handler};
use crate::push::Pusher;

/// A connection, and its pushers' side for a handler that pushes (checked
/// on every pass: the loop never sleeps, so nothing needs to wake it).
type Entry<H> = (Conn<H>, Option<Pusher>);

pub(super) fn serve<F: Factory>(
    listener: TcpListener,
    config: &Config,
    stop: &Stop,
    counters: &Arc<Counters>,
    factory: F,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut conns: Vec<Entry<F::Handler>> = Vec::new();
    let mut scratch = vec![0; config.read_chunk];
    let mut scratch_out = Vec::with_capacity(config.read_chunk);
    let mut acceptor = Acceptor::new(config)?;
    // Accepting pauses after an accept error; the connections do not.
    let mut paused_until: Option<Instant> = None;
    loop {
        if stop.is_stopped() {
            let n = conns.len() as u64;
            for (conn, _) in conns.drain(..) {
                conn.close(counters, CloseReason::ServerStop);
            }
            Counters::add(&counters.closed, n);
            return Ok(());
        }
        if paused_until.is_none_or(|t| Instant::now() >= t) {
            let paused = accept_all(
                &listener,
                &mut conns,
                &mut acceptor,
                &factory,
                config,
                counters,
            );
            paused_until = paused.then(|| Instant::now() + ACCEPT_BACKOFF);
        }
        let before = conns.len();
        let mut i = 0;
        while i < conns.len() {
            match step(
                &mut conns[i],
                &mut scratch,
                &mut scratch_out,
                config,
                counters,
            ) {
                None => i += 1,
                // Finished: close it; the order of the others does not matter.
                Some(reason) => conns.swap_remove(i).0.close(counters, reason),
            }
        }
        Counters::add(&counters.closed, (before - conns.len()) as u64);
    }
}

/// Accepts until `WouldBlock`. Returns `true` after an accept error
/// (counted): accepting must pause for [`ACCEPT_BACKOFF`]. The kernel takes
/// the new fd before it looks for a connection, so out of fds `accept`
/// fails at once even with nobody waiting, and this loop, which does not
/// wait for readiness, would fail on every turn.
fn accept_all<F: Factory>(
    listener: &TcpListener,
    conns: &mut Vec<Entry<F::Handler>>,
    acceptor: &mut Acceptor,
    factory: &F,
    config: &Config,
    counters: &Counters,
) -> bool {
    loop {
        match acceptor.accept(listener.as_raw_fd(), conns.len(), counters) {
            Accepted::Conn(stream) => {
                let mut handler = factory.new_handler();
                let pusher = F::Handler::PUSH.then(|| {
                    let (pusher, push) = Pusher::new(config.max_output, || {});
                    handler.attach(push);
                    pusher
                });
                let mut conn = Conn::new(stream, handler);
                let mut greeting = Vec::new();
                match conn.open(&mut greeting, counters) {
                    Ok(()) => conns.push((conn, pusher)),
                    Err(e) => {
                        Counters::add(&counters.closed, 1);
                        conn.close(counters, CloseReason::of_error(&e));
                    }
                }
            }
            Accepted::Again => {}
            Accepted::Empty => return false,
            Accepted::TurnedAway | Accepted::Exhausted(_) => return true,
        }
    }
}

/// One iteration's I/O for one connection: a try-`recv` unless reading is
/// over or paused by backpressure (a reply is sent at once), then a
/// try-`send` of output still pending. `Some(reason)` once it is finished.
fn step<H: Handler>(
    (conn, pusher): &mut Entry<H>,
    scratch: &mut [u8],
    scratch_out: &mut Vec<u8>,
    config: &Config,
    counters: &Counters,
) -> Option<CloseReason> {
    let mut res = Ok(());
    if let Some(p) = pusher.as_ref().filter(|p| p.has_pushed()) {
        let pushed = p.take();
        if pushed.close == Some(true) {
            return Some(CloseReason::HandlerClosed);
        }
        let action = if pushed.close.is_some() {
            Action::Close
        } else {
            Action::Continue
        };
        res = conn.respond(&pushed.bytes, action, counters);
    }
    if res.is_ok() && conn.wants_read(config.max_output) {
        res = conn
            .on_readable(scratch, scratch_out, counters, config.max_output)
            .map(drop);
    }
    if res.is_ok() && conn.wants_write() {
        res = conn.on_writable(counters);
    }
    if let Some(p) = pusher {
        p.set_pending(conn.pending());
    }
    match res {
        Ok(()) => conn.is_done().then(|| conn.done_reason()),
        Err(e) => {
            if is_peer_gone(&e) {
                Counters::add(&counters.resets, 1);
            }
            Some(CloseReason::of_error(&e))
        }
    }
}
