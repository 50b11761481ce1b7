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
use super::{is_peer_gone, Config, Counters, Reserve, Stop, ACCEPT_BACKOFF};
use crate::conn::{Conn, ReadState};
use crate::protocol::Builtin;
use crate::reactor::task::{self, Async, Runtime};
use crate::reactor::Options;
use crate::selector::Backend;
use crate::sys;

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

pub(super) fn serve(
    listener: TcpListener,
    config: &Config,
    stop: &Stop,
    counters: &Arc<Counters>,
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
                eprintln!("iomux: {stall}");
            }
        });
    }
    {
        let counters = counters.clone();
        rt.reactor().add_check(move |r, _| {
            counters.record_selector(r.selector_stats());
        });
    }
    let accept = accept_loop(listener, *config, FdRef(stop.fd()), counters.clone());
    let res = rt.block_on(accept);
    // Dropping the runtime drops every connection task: each closes.
    drop(rt);
    res?
}

async fn accept_loop(
    listener: TcpListener,
    config: Config,
    stop: FdRef,
    counters: Arc<Counters>,
) -> io::Result<()> {
    let listener = Async::new(listener)?;
    let stop = Async::new(stop)?;
    let scratch: Scratch = Rc::new(RefCell::new((
        vec![0; config.read_chunk],
        Vec::with_capacity(config.read_chunk),
    )));
    let live = Rc::new(Cell::new(0usize));
    let mut reserve = Reserve::new(config.on_fd_exhaustion)?;
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
            match sys::accept_nonblocking(listener.get_ref().as_raw_fd()) {
                Ok(stream) => {
                    Counters::add(&counters.accepted, 1);
                    if live.get() >= config.max_conns {
                        Counters::add(&counters.refused, 1);
                        continue; // dropping `stream` closes it
                    }
                    live.set(live.get() + 1);
                    let guard = Guard {
                        counters: counters.clone(),
                        live: live.clone(),
                    };
                    task::spawn(connection(stream, config, scratch.clone(), guard));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    listener.clear_readable();
                    drained = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
                    Counters::add(&counters.accept_errors, 1);
                }
                Err(e) => {
                    // EMFILE and the like: retrying now fails the same way.
                    // Turn the waiting clients away, or pause.
                    Counters::add(&counters.accept_errors, 1);
                    let lfd = listener.get_ref().as_raw_fd();
                    if reserve.turn_away(&e, lfd, &counters) {
                        listener.clear_readable();
                        drained = true;
                    } else {
                        backoff = true;
                    }
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
/// stops counting as pending.
struct Owned {
    conn: Async<Conn<Builtin>>,
    counters: Arc<Counters>,
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.conn.get_mut().release_pending(&self.counters);
    }
}

async fn connection(stream: TcpStream, config: Config, scratch: Scratch, guard: Guard) {
    // Replies are whole messages: don't let Nagle hold them.
    let _ = stream.set_nodelay(true);
    let counters = guard.counters.clone();
    let conn = match Async::new(Conn::new(stream, config.protocol.handler())) {
        Ok(conn) => conn,
        Err(_) => return,
    };
    let mut c = Owned {
        conn,
        counters: counters.clone(),
    };
    if let Err(e) = serve_connection(&mut c.conn, &config, &scratch, &counters).await {
        if is_peer_gone(&e) {
            Counters::add(&counters.resets, 1);
        }
    }
    drop(c);
    drop(guard);
}

async fn serve_connection(
    conn: &mut Async<Conn<Builtin>>,
    config: &Config,
    scratch: &Scratch,
    counters: &Counters,
) -> io::Result<()> {
    let max_output = config.max_output;
    loop {
        let (want_read, want_write) = {
            let c = conn.get_ref();
            if c.is_done() {
                return Ok(());
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
                    conn.get_mut().on_readable(input, output, counters)?
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
