//! A thread per connection: the seeds' first remedy for blocking `recv`.
//!
//! The acceptor thread waits for the listener (and the [`Stop`]) to become
//! readable, accepts, and hands the connection to a new thread that serves
//! it with blocking calls. Each connection thread is still blocked in
//! **both** phases of a read, waiting for data and copying it, but it only
//! blocks itself: an idle client costs a sleeping thread, not the server.
//!
//! Costs: a thread creation and teardown per connection, a stack
//! ([`STACK_SIZE`]) and a read buffer ([`Config::read_chunk`]) per live
//! connection, and the scheduler's context switches between them.
//! Limits: threads are not free, and the lessons warn that with thousands
//! of clients the machine runs out of them. So at most
//! [`Config::max_conns`] connection threads live at once; past that a new
//! connection is accepted and closed at once (counted in `refused`), and a
//! failure to create a thread does the same and is logged once.
//!
//! On stop the acceptor closes the listener and returns; live connection
//! threads are detached and finish with their clients.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::blocking::{accept, serve_conn};
use super::{Acceptor, Config, Counters, Stop};
use crate::protocol::{Factory, Handler};

/// Stack of each connection thread. The read buffer lives on the heap, so
/// the thread needs little: a fraction of the usual 2 MiB.
pub(super) const STACK_SIZE: usize = 128 * 1024;

pub(super) fn serve<F: Factory>(
    listener: TcpListener,
    config: &Config,
    stop: &Stop,
    counters: &Arc<Counters>,
    factory: F,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let live = Arc::new(AtomicUsize::new(0));
    let mut spawn_failed = false;
    let mut acceptor = Acceptor::new(config)?;
    let count = || live.load(Ordering::Acquire);
    while let Some(stream) = accept(&listener, stop, counters, &mut acceptor, count)? {
        if let Err(e) = spawn(stream, factory.new_handler(), config, counters, &live) {
            // The closure, and the stream with it, is gone already.
            Counters::add(&counters.refused, 1);
            if !spawn_failed {
                spawn_failed = true;
                log::error!("threaded: cannot create a connection thread ({e}); refusing connections until it can");
            }
        }
    }
    Ok(())
}

/// Serves `stream` with `handler` on a new detached thread that holds one
/// `live` slot.
fn spawn<H: Handler>(
    stream: TcpStream,
    handler: H,
    config: &Config,
    counters: &Arc<Counters>,
    live: &Arc<AtomicUsize>,
) -> io::Result<()> {
    let slot = Slot::take(live);
    let (read_chunk, max_output) = (config.read_chunk, config.max_output);
    let counters = Arc::clone(counters);
    std::thread::Builder::new()
        .name("iomux-conn".into())
        .stack_size(STACK_SIZE)
        .spawn(move || {
            let mut buf = vec![0; read_chunk];
            serve_conn(stream, handler, max_output, &counters, &mut buf);
            // Free the slot before the close shows: once `active()` reads
            // 0, `max_conns` new connections are served.
            drop(slot);
            Counters::add(&counters.closed, 1);
        })?;
    Ok(())
}

/// One of the `max_conns` live-thread slots, given back when dropped: at
/// the end of the connection, if the thread unwinds, or if it never starts.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(live: &Arc<AtomicUsize>) -> Slot {
        live.fetch_add(1, Ordering::AcqRel);
        Slot(Arc::clone(live))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
