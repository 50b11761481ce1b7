//! The coroutine model: one async task per connection on iomux's own
//! executor and reactor ([`crate::reactor::task`]), no tokio.
//!
//! The code of a connection reads top to bottom like the blocking server's
//! (`wait until readable; read; reply`), but each wait is an `.await` that
//! hands the thread back to the executor instead of blocking it. Under it
//! is the same edge-triggered epoll loop as the `epoll` model, and the same
//! [`Conn`] rules: input is read into one scratch buffer shared by every
//! task (borrowed only between awaits, so idle tasks hold none), unsent
//! output is bounded by [`Config::max_output`], EOF flushes then closes.
//!
//! On stop, the accept task returns and every connection task is dropped,
//! which closes its socket: the graceful drain and idle timeouts are the
//! readiness models' (`readiness.rs`).

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;

use super::readiness::READS_PER_TURN;
use super::{is_peer_gone, Accepted, Acceptor, Config, Counters, Stop, ACCEPT_BACKOFF};
use crate::conn::{Conn, ReadState};
use crate::protocol::{CloseReason, Factory, Handler};
use crate::reactor::task::{self, Async, Runtime};
use crate::reactor::Options;
use crate::selector::Backend;

/// Accepts per wake-up of the accept task, so a connection flood cannot
/// starve the connections already served.
const ACCEPTS_PER_WAKE: usize = 128;

/// The loop's one input and one output buffer, lent to one task at a time.
type Scratch = Rc<RefCell<(Vec<u8>, Vec<u8>)>>;

/// A borrowed fd (the [`Stop`] pipe): watched, never closed.
struct FdRef(RawFd);

impl AsRawFd for FdRef {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

pub(super) fn serve<F: Factory>(
    listener: TcpListener,
    config: &Config,
    stop: &Stop,
    counters: &Arc<Counters>,
    factory: F,
) -> io::Result<()> {
    let mut rt = Runtime::new(Options {
        backend: Backend::recommended(),
        latency_budget: config.latency_budget,
        ..Options::default()
    })?;
    {
        let counters = counters.clone();
        let mut logged = false;
        rt.reactor().on_stall(move |stall| {
            Counters::add(&counters.stalls, 1);
            if !std::mem::replace(&mut logged, true) {
                log::warn!("{stall}");
            }
        });
    }
    {
        let counters = counters.clone();
        rt.reactor().add_check(move |r, _| {
            counters.record_selector(r.selector_stats());
        });
    }
    let accept = accept_loop(
        listener,
        *config,
        FdRef(stop.fd()),
        counters.clone(),
        factory,
    );
    let res = rt.block_on(accept);
    // Dropping the runtime drops every connection task: each closes.
    drop(rt);
    res?
}

async fn accept_loop<F: Factory>(
    listener: TcpListener,
    config: Config,
    stop: FdRef,
    counters: Arc<Counters>,
    factory: F,
) -> io::Result<()> {
    let listener = Async::new(listener)?;
    let stop = Async::new(stop)?;
    let scratch: Scratch = Rc::new(RefCell::new((
        vec![0; config.read_chunk],
        Vec::with_capacity(config.read_chunk),
    )));
    let live = Rc::new(Cell::new(0usize));
    let mut acceptor = Acceptor::new(&config)?;
    let lfd = listener.get_ref().as_raw_fd();
    loop {
        let accept = poll_fn(|cx| {
            if stop.poll_readable(cx).is_ready() {
                Poll::Ready(false)
            } else if listener.poll_readable(cx).is_ready() {
                Poll::Ready(true)
            } else {
                Poll::Pending
            }
        })
        .await;
        if !accept {
            return Ok(());
        }
        let mut backoff = false;
        let mut drained = false;
        for _ in 0..ACCEPTS_PER_WAKE {
            match acceptor.accept(lfd, live.get(), &counters) {
                Accepted::Conn(stream) => {
                    live.set(live.get() + 1);
                    let guard = Guard {
                        counters: counters.clone(),
                        live: live.clone(),
                    };
                    let handler = factory.new_handler();
                    task::spawn_detached(connection(
                        stream,
                        handler,
                        config,
                        scratch.clone(),
                        guard,
                    ));
                }
                Accepted::Again => {}
                Accepted::Empty | Accepted::TurnedAway => {
                    listener.clear_readable();
                    drained = true;
                    break;
                }
                // Out of fds: retrying now fails the same way.
                Accepted::Exhausted(_) => {
                    backoff = true;
                    break;
                }
            }
        }
        if backoff {
            task::sleep(ACCEPT_BACKOFF).await?;
        } else if !drained {
            task::yield_now().await;
        }
    }
}

/// Counts a connection closed however its task ends: finished, or dropped
/// with the runtime.
struct Guard {
    counters: Arc<Counters>,
    live: Rc<Cell<usize>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.live.set(self.live.get() - 1);
        Counters::add(&self.counters.closed, 1);
    }
}

/// Owns the connection so that, however the task ends, its unsent output
/// stops counting as pending and the handler hears why it ended (the
/// server's stop, if the task is dropped before it finishes).
struct Owned<H: Handler> {
    conn: Async<Conn<H>>,
    counters: Arc<Counters>,
    reason: CloseReason,
}

impl<H: Handler> Drop for Owned<H> {
    fn drop(&mut self) {
        self.conn.get_mut().release(&self.counters, self.reason);
    }
}

async fn connection<H: Handler>(
    stream: TcpStream,
    handler: H,
    config: Config,
    scratch: Scratch,
    guard: Guard,
) {
    let counters = guard.counters.clone();
    let conn = match Async::new(Conn::new(stream, handler)) {
        Ok(conn) => conn,
        Err(_) => return,
    };
    let mut c = Owned {
        conn,
        counters: counters.clone(),
        reason: CloseReason::ServerStop,
    };
    c.reason = match serve_connection(&mut c.conn, &config, &scratch, &counters).await {
        Ok(reason) => reason,
        Err(e) => {
            if is_peer_gone(&e) {
                Counters::add(&counters.resets, 1);
            }
            CloseReason::of_error(&e)
        }
    };
    drop(c);
    drop(guard);
}

async fn serve_connection<H: Handler>(
    conn: &mut Async<Conn<H>>,
    config: &Config,
    scratch: &Scratch,
    counters: &Counters,
) -> io::Result<CloseReason> {
    let max_output = config.max_output;
    {
        let mut bufs = scratch.borrow_mut();
        conn.get_mut().open(&mut bufs.1, counters)?;
    }
    loop {
        let (want_read, want_write) = {
            let c = conn.get_ref();
            if c.is_done() {
                return Ok(c.done_reason());
            }
            (c.wants_read(max_output), c.wants_write())
        };
        let (readable, writable) = poll_fn(|cx| {
            let r = want_read && conn.poll_readable(cx).is_ready();
            let w = want_write && conn.poll_writable(cx).is_ready();
            if r || w {
                Poll::Ready((r, w))
            } else {
                Poll::Pending
            }
        })
        .await;
        if writable {
            conn.get_mut().on_writable(counters)?;
            // Output left after a send means the kernel's buffer is full:
            // wait for the next edge.
            if conn.get_ref().wants_write() {
                conn.clear_writable();
            }
        }
        if readable {
            let mut reads = 0;
            while conn.get_ref().wants_read(max_output) {
                let pending_before = conn.get_ref().pending();
                let state = {
                    let mut bufs = scratch.borrow_mut();
                    let (input, output) = &mut *bufs;
                    conn.get_mut()
                        .on_readable(input, output, counters, max_output)?
                };
                if pending_before == 0 && conn.get_ref().wants_write() {
                    // The reply's send was partial: the socket is full.
                    conn.clear_writable();
                }
                match state {
                    ReadState::Full => {
                        reads += 1;
                        if reads == READS_PER_TURN {
                            // Let the others run; the flag stays set.
                            task::yield_now().await;
                            reads = 0;
                        }
                    }
                    // A short read drained the socket, but an EOF that came
                    // with the data has no edge of its own: read on.
                    ReadState::Short if conn.is_read_closed() => {}
                    ReadState::Short | ReadState::Drained => {
                        conn.clear_readable();
                        break;
                    }
                }
            }
        }
    }
}
