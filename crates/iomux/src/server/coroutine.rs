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
//! On stop the server drains, as the readiness models do: the accept task
//! stops accepting and tells every connection task (a [`DrainSignal`]);
//! each answers the input it already has, stops reading, sends what was
//! produced, and ends once nothing can be lost ([`Conn::close_now`]: its
//! output acknowledged and no input unread), with a lingering close
//! otherwise. At [`Config::drain_timeout`] the tasks still running are
//! dropped, which closes their sockets.
//!
//! With [`Config::offload_threads`], each read's input goes to the
//! handler on the reactor's offload pool ([`task::offload`]): the task
//! awaits the reply, so its connection is not read meanwhile (replies stay
//! in order) and a slow handler does not stall the other connections.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::readiness::READS_PER_TURN;
use super::{is_peer_gone, Accepted, Acceptor, Config, Counters, Stop, ACCEPT_BACKOFF};
use crate::conn::{Conn, Input, Linger, ReadState};
use crate::protocol::{CloseReason, Factory, Handler};
use crate::push::Pusher;
use crate::reactor::task::{self, Async, Runtime};
use crate::reactor::Options;
use crate::selector::Backend;

/// Accepts per wake-up of the accept task, so a connection flood cannot
/// starve the connections already served.
const ACCEPTS_PER_WAKE: usize = 128;

/// The loop's one input and one output buffer, lent to one task at a time.
type Scratch = Rc<RefCell<(Vec<u8>, Vec<u8>)>>;

/// How often a lingering connection checks whether closing can lose
/// nothing any more (no event tells when the peer's acknowledgement comes).
const LINGER_CHECK: Duration = Duration::from_millis(5);

/// A connection's pushers, and the waker of its task: a push from any
/// thread wakes the task, which moves the pushed bytes into its output.
struct PushWake {
    pusher: Pusher,
    waker: Arc<std::sync::Mutex<Option<Waker>>>,
}

impl PushWake {
    fn new(max_output: usize) -> (PushWake, crate::push::Push) {
        let waker: Arc<std::sync::Mutex<Option<Waker>>> = Arc::default();
        let w = waker.clone();
        let (pusher, push) = Pusher::new(max_output, move || {
            let slot = w.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(w) = slot.as_ref() {
                w.wake_by_ref();
            }
        });
        (PushWake { pusher, waker }, push)
    }

    /// Ready once something was pushed; the task's waker is kept first, so
    /// a push that comes after the check wakes it.
    fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        {
            let mut slot = self
                .waker
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *slot = Some(cx.waker().clone());
            }
        }
        if self.pusher.has_pushed() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Tells every connection task that the server drains: one waker slot per
/// task, so waiting costs no allocation per poll.
#[derive(Default)]
struct DrainSignal {
    on: Cell<bool>,
    wakers: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl DrainSignal {
    /// A slot for a new task.
    fn join(&self) -> usize {
        match self.free.borrow_mut().pop() {
            Some(id) => id,
            None => {
                let mut w = self.wakers.borrow_mut();
                w.push(None);
                w.len() - 1
            }
        }
    }

    fn leave(&self, id: usize) {
        self.wakers.borrow_mut()[id] = None;
        self.free.borrow_mut().push(id);
    }

    fn poll(&self, id: usize, cx: &mut Context<'_>) -> Poll<()> {
        if self.on.get() {
            return Poll::Ready(());
        }
        let mut w = self.wakers.borrow_mut();
        if !w[id].as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            w[id] = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    fn fire(&self) {
        self.on.set(true);
        let wakers: Vec<Waker> = self
            .wakers
            .borrow_mut()
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for w in wakers {
            w.wake();
        }
    }
}

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
        offload_threads: config.offload_threads.max(1),
        offload_queue: 64 * config.offload_threads.max(1),
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
    let drain = Rc::new(DrainSignal::default());
    let mut acceptor = Acceptor::new(&config)?;
    // One copy for every task: a connection's future holds a pointer, not
    // the whole configuration.
    let shared = Rc::new(config);
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
            // Drain: no more accepts (the listener closes when this
            // returns); every connection finishes, until the deadline.
            drop(listener);
            drain.fire();
            let deadline = Instant::now() + config.drain_timeout;
            while live.get() > 0 && Instant::now() < deadline {
                task::sleep(LINGER_CHECK).await?;
            }
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
                        id: drain.join(),
                        drain: drain.clone(),
                    };
                    let handler = factory.new_handler();
                    task::spawn_detached(connection(
                        stream,
                        handler,
                        shared.clone(),
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
    /// The task's slot in the drain signal.
    id: usize,
    drain: Rc<DrainSignal>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.drain.leave(self.id);
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
    mut handler: H,
    config: Rc<Config>,
    scratch: Scratch,
    guard: Guard,
) {
    let counters = guard.counters.clone();
    let push = H::PUSH.then(|| {
        let (wake, push) = PushWake::new(config.max_output);
        handler.attach(push);
        wake
    });
    let conn = match Async::new(Conn::new(stream, handler)) {
        Ok(conn) => conn,
        Err(_) => return,
    };
    let mut c = Owned {
        conn,
        counters: counters.clone(),
        reason: CloseReason::ServerStop,
    };
    c.reason = match serve_connection(
        &mut c.conn,
        &config,
        &scratch,
        &counters,
        &guard,
        push.as_ref(),
    )
    .await
    {
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
    guard: &Guard,
    push: Option<&PushWake>,
) -> io::Result<CloseReason> {
    let max_output = config.max_output;
    let offload = config.offload_threads > 0;
    {
        let mut bufs = scratch.borrow_mut();
        conn.get_mut().open(&mut bufs.1, counters)?;
    }
    let mut draining = false;
    let reason = loop {
        let (want_read, want_write) = {
            let c = conn.get_ref();
            if c.is_done() {
                break c.done_reason();
            }
            (c.wants_read(max_output), c.wants_write())
        };
        if let Some(p) = push {
            p.pusher.set_pending(conn.get_ref().pending());
        }
        let (readable, writable, drain, pushed) = poll_fn(|cx| {
            let d = !draining && guard.drain.poll(guard.id, cx).is_ready();
            let r = want_read && conn.poll_readable(cx).is_ready();
            let w = want_write && conn.poll_writable(cx).is_ready();
            let p = push.is_some_and(|p| p.poll(cx).is_ready());
            if r || w || d || p {
                Poll::Ready((r, w, d, p))
            } else {
                Poll::Pending
            }
        })
        .await;
        if pushed {
            let pushed = push.expect("polled").pusher.take();
            let Some(action) = pushed.action() else {
                return Ok(CloseReason::HandlerClosed);
            };
            let pending_before = conn.get_ref().pending();
            conn.get_mut().respond(&pushed.bytes, action, counters)?;
            if pending_before == 0 && conn.get_ref().wants_write() {
                // The send was partial: the socket is full.
                conn.clear_writable();
            }
        }
        if writable {
            conn.get_mut().on_writable(counters)?;
            // Output left after a send means the kernel's buffer is full:
            // wait for the next edge.
            if conn.get_ref().wants_write() {
                conn.clear_writable();
            }
        }
        if drain {
            // Input that arrived before the drain began is answered (a
            // request the peer sent is not dropped); nothing read later.
            draining = true;
            if !offload {
                read_available(conn, max_output, scratch, counters).await?;
            }
            conn.get_mut().core_mut().drain();
        } else if readable && offload {
            // Boxed: only a connection that offloads carries the job's
            // future, not every task.
            Box::pin(read_offloaded(conn, max_output, scratch, counters)).await?;
        } else if readable {
            read_available(conn, max_output, scratch, counters).await?;
        }
    };
    if conn.get_ref().close_now(reason) {
        return Ok(reason);
    }
    Box::pin(linger(conn, config.drain_timeout, scratch)).await;
    Ok(reason)
}

/// Reads while the core wants input and the socket has it, answering
/// each read; yields to the others every [`READS_PER_TURN`] reads.
async fn read_available<H: Handler>(
    conn: &mut Async<Conn<H>>,
    max_output: usize,
    scratch: &Scratch,
    counters: &Counters,
) -> io::Result<()> {
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
    Ok(())
}

/// One read, its input handled on the offload pool while this task waits
/// (the connection is not read meanwhile, so replies stay in order).
async fn read_offloaded<H: Handler>(
    conn: &mut Async<Conn<H>>,
    max_output: usize,
    scratch: &Scratch,
    counters: &Counters,
) -> io::Result<()> {
    if !conn.get_ref().wants_read(max_output) {
        return Ok(());
    }
    let input = {
        let mut bufs = scratch.borrow_mut();
        let (input, output) = &mut *bufs;
        match conn.get_mut().recv_input(input, counters)? {
            Input::Data(n, _) => input[..n].to_vec(),
            Input::Nothing(ReadState::Full) => return Ok(()),
            Input::Nothing(_) => {
                conn.clear_readable();
                return Ok(());
            }
            Input::Eof => return conn.get_mut().on_eof(output, counters),
        }
    };
    let Some(mut handler) = conn.get_mut().take_handler() else {
        return Ok(());
    };
    Counters::add(&counters.offloaded, 1);
    let job = task::offload(move || {
        let mut out = Vec::new();
        let action = handler.on_data(&input, &mut out);
        (handler, out, action)
    })
    .await;
    match job {
        Ok((handler, out, action)) => {
            conn.get_mut().put_handler(handler);
            conn.get_mut().respond(&out, action, counters)
        }
        Err(e) => Err(io::Error::other(e.to_string())),
    }
}

/// A lingering close: a FIN after everything produced, then whatever the
/// peer still sends is dropped, until its EOF, until closing can lose
/// nothing ([`Conn::nothing_to_lose`]), or for `limit` at most.
async fn linger<H: Handler>(conn: &mut Async<Conn<H>>, limit: Duration, scratch: &Scratch) {
    if conn.get_ref().shutdown_write().is_err() {
        return;
    }
    // The reason does not matter here: the caller has it.
    let linger = Linger::new(CloseReason::ServerStop, limit, Instant::now());
    let fd = conn.get_ref().fd();
    loop {
        {
            let mut bufs = scratch.borrow_mut();
            loop {
                match crate::sys::recv(fd, &mut bufs.0) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => return,
                }
            }
        }
        conn.clear_readable();
        if linger.over(fd, Instant::now()).is_some() {
            return;
        }
        let _ = task::timeout(LINGER_CHECK, conn.readable()).await;
    }
}
