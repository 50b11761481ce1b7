//! Coroutines: async/await tasks on a single-thread executor that the
//! [`Reactor`] drives, the lessons' third remedy (协程).
//!
//! A task is a future; it waits for readiness through [`Async`], whose
//! [`readable`](Async::readable) and [`writable`](Async::writable) futures
//! complete when the reactor reports the fd ready. The executor is one
//! [check callback](Reactor::add_check) of the reactor: at the end of each
//! turn it polls every task the turn's events woke, then applies the
//! registrations those tasks asked for before the loop waits again.
//!
//! * With epoll, each fd is registered once, edge-triggered, for both
//!   directions (as tokio does): an event sets a readiness flag that stays
//!   set until the task's I/O returns `WouldBlock` and clears it
//!   ([`Async::clear_readable`]). No `epoll_ctl` after the first.
//! * With select and poll (level-triggered), the fd is watched only for the
//!   directions a task waits on, so a writable socket nobody writes to
//!   cannot make the loop spin.
//!
//! Every task waiting on a direction of an `Async` is woken by its next
//! event: each direction keeps a list of waiters (a task once, however
//! often it polls), so two readers of one socket, or several writers
//! waiting for room in it, all run again. A waker called on another thread
//! queues its task and wakes the loop through the selector's waker.
//!
//! What tasks have:
//! * [`spawn`] returns a [`JoinHandle`]: await the task's output, or
//!   [`abort`](JoinHandle::abort) it; dropping the handle detaches it.
//!   [`spawn_detached`] skips the handle and its cost.
//! * [`Runtime::block_on`] returns when its future completes, or when the
//!   loop is stopped ([`Reactor::stop`] from a callback, [`Handle::stop`]
//!   from another thread): an `Interrupted` error then ([`is_stopped`]).
//! * [`sleep`], [`sleep_until`], [`timeout`] and [`interval`]: timers of
//!   the reactor's own heap, disarmed when their future is dropped.
//! * [`offload`]: a closure on the reactor's offload pool, its result
//!   awaited ([`Options::offload_threads`] threads).
//! * [`signal`]: a signal's deliveries, through the reactor's self-pipe.
//! * With the `futures` feature, `futures-io`'s `AsyncRead`/`AsyncWrite`
//!   for `Async<TcpStream>` and `Async<UnixStream>` (and their `&`), and
//!   `futures-core`'s `Stream` for [`Interval`] and [`Signals`], so that
//!   `futures-util` (`BufReader`, `copy`, `split`) and `futures-channel`
//!   work on this executor.
//!
//! # Examples
//!
//! ```no_run
//! use iomux::reactor::task::{spawn, Async, Runtime};
//! use iomux::reactor::Options;
//! use std::net::TcpListener;
//!
//! let mut rt = Runtime::new(Options::default())?;
//! rt.block_on(async {
//!     let listener = Async::new(TcpListener::bind("127.0.0.1:0")?)?;
//!     for _ in 0..100 {
//!         let (stream, _) = listener.accept().await?;
//!         spawn(async move {
//!             let stream = Async::new(stream).unwrap();
//!             let mut buf = [0; 4096];
//!             while let Ok(n @ 1..) = stream.read(&mut buf).await {
//!                 let reply = buf[..n].to_ascii_uppercase();
//!                 if stream.write_all(&reply).await.is_err() {
//!                     break;
//!                 }
//!             }
//!         });
//!     }
//!     Ok::<(), std::io::Error>(())
//! })??;
//! # std::io::Result::Ok(())
//! ```

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::ThreadId;

use super::{Handle, IoId, Options, Reactor, TimerId};
use crate::selector::{Event, Interest, Mode};

#[cfg(feature = "futures")]
mod io_traits;
mod join;
mod offload;
mod signal;
mod time;

pub use join::{Cancelled, JoinHandle};
pub use offload::{offload, Offload};
pub use signal::{signal, Signals};
pub use time::{interval, sleep, sleep_until, timeout, Interval, Sleep};

type Task = Pin<Box<dyn Future<Output = ()>>>;

const READ: u8 = 1;
const WRITE: u8 = 2;

/// The tasks waiting for one direction of one fd. Every one of them is
/// woken by the next event: a task's waker is kept once however often it
/// polls, and a waiter that went away costs one spurious wake at most. The
/// first waiter has a slot of its own, so the usual single waiter costs no
/// allocation.
#[derive(Default)]
struct Waiters(RefCell<(Option<Waker>, Vec<Waker>)>);

impl Waiters {
    fn add(&self, waker: &Waker) {
        let mut list = self.0.borrow_mut();
        let (first, more) = &mut *list;
        match first {
            // `more` is empty while `first` is: nothing else to compare.
            None => *first = Some(waker.clone()),
            Some(w) if w.will_wake(waker) => {}
            Some(_) => {
                if !more.iter().any(|w| w.will_wake(waker)) {
                    more.push(waker.clone());
                }
            }
        }
    }

    fn wake_all(&self) {
        // Taken out first: a waker may run code that waits here again.
        let (first, mut more) = {
            let mut list = self.0.borrow_mut();
            (list.0.take(), std::mem::take(&mut list.1))
        };
        if let Some(w) = first {
            w.wake();
        }
        for w in more.drain(..) {
            w.wake();
        }
        let mut list = self.0.borrow_mut();
        if list.1.is_empty() {
            list.1 = more; // keep the allocation
        }
    }
}

/// One fd's readiness, shared by its [`Async`] and its reactor watcher.
struct Source {
    fd: RawFd,
    /// Readiness seen and not yet consumed (READ | WRITE bits).
    ready: Cell<u8>,
    /// The peer hung up or the fd has an error: reads end in EOF or an
    /// error, which no further edge announces.
    closed: Cell<bool>,
    readers: Waiters,
    writers: Waiters,
    /// Level-triggered backends: the directions tasks wait on.
    wanted: Cell<u8>,
    /// Level-triggered backends: what the selector watches now.
    watched: Cell<u8>,
    id: Cell<Option<IoId>>,
    dropped: Cell<bool>,
}

impl Source {
    fn on_event(&self, event: &Event) {
        let mut bits = 0;
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            bits |= READ;
        }
        if event.is_writable() || event.is_error() {
            bits |= WRITE;
        }
        if event.is_read_closed() || event.is_error() {
            self.closed.set(true);
        }
        self.ready.set(self.ready.get() | bits);
        if bits & READ != 0 {
            self.readers.wake_all();
        }
        if bits & WRITE != 0 {
            self.writers.wake_all();
        }
    }

    fn poll_ready(&self, bit: u8, cx: &mut Context<'_>) -> Poll<()> {
        if self.ready.get() & bit != 0 {
            return Poll::Ready(());
        }
        if bit == READ {
            self.readers.add(cx.waker());
        } else {
            self.writers.add(cx.waker());
        }
        self.wanted.set(self.wanted.get() | bit);
        Poll::Pending
    }
}

/// What tasks asked of the reactor during a turn, applied by the executor
/// before the loop waits again.
#[derive(Default)]
struct Pending {
    register: Vec<Rc<Source>>,
    remove: Vec<IoId>,
    spawn: Vec<Task>,
    timers: Vec<Rc<time::TimerState>>,
    cancel_timers: Vec<TimerId>,
    signals: Vec<Rc<signal::SignalState>>,
    unwatch_signals: Vec<i32>,
}

struct Shared {
    pending: RefCell<Pending>,
    /// Sources whose wanted set may differ from the watched one (level).
    sources: RefCell<Vec<std::rc::Weak<Source>>>,
    /// Offload jobs not yet handed to the pool, first come first served:
    /// they wait here while the pool's queue is full.
    offload: RefCell<VecDeque<Box<dyn offload::Submit>>>,
    edge: bool,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Shared>>> = const { RefCell::new(None) };
}

fn current() -> io::Result<Rc<Shared>> {
    CURRENT.with(|c| c.borrow().clone()).ok_or_else(|| {
        io::Error::other(
            "no coroutine runtime on this thread: create Async values and spawn tasks inside Runtime::block_on",
        )
    })
}

/// Task ids woken since the executor last ran, from any thread.
struct RunQueue {
    ids: Mutex<Vec<usize>>,
    handle: Handle<Executor>,
    loop_thread: ThreadId,
}

struct TaskWaker {
    id: usize,
    queue: Arc<RunQueue>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        let mut ids = self.queue.ids.lock().unwrap_or_else(|e| e.into_inner());
        ids.push(self.id);
        drop(ids);
        if std::thread::current().id() != self.queue.loop_thread {
            // The loop may be blocked in its selector: wake it.
            let _ = self.queue.handle.wake();
        }
    }
}

/// The executor: the tasks and what they asked for. It is the state `C`
/// of its [`Reactor`]; [`Runtime`] puts the two together.
pub struct Executor {
    tasks: Vec<Option<(Task, Waker)>>,
    free: Vec<usize>,
    queue: Arc<RunQueue>,
    shared: Rc<Shared>,
    scratch: Vec<usize>,
    live: usize,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("tasks", &self.live)
            .finish_non_exhaustive()
    }
}

impl Executor {
    /// Tasks not finished yet.
    pub fn tasks(&self) -> usize {
        self.live
    }

    fn insert(&mut self, task: Task) -> usize {
        let id = self.free.pop().unwrap_or(self.tasks.len());
        let waker = Waker::from(Arc::new(TaskWaker {
            id,
            queue: self.queue.clone(),
        }));
        if id == self.tasks.len() {
            self.tasks.push(Some((task, waker)));
        } else {
            self.tasks[id] = Some((task, waker));
        }
        self.live += 1;
        self.queue
            .ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id);
        id
    }

    /// Drops task `id` now (its Async values are deregistered at once).
    fn cancel(&mut self, id: usize, r: &mut Reactor<Executor>) {
        let _current = Current::enter(&self.shared);
        if let Some(slot) = self.tasks.get_mut(id) {
            if let Some(task) = slot.take() {
                drop(task);
                self.free.push(id);
                self.live -= 1;
            }
        }
        self.apply(r);
    }

    /// Polls every woken task, then applies what they asked for. Runs as
    /// the reactor's check callback, with this runtime made current.
    fn tick(&mut self, r: &mut Reactor<Executor>) {
        let _current = Current::enter(&self.shared);
        self.insert_spawned();
        std::mem::swap(
            &mut self.scratch,
            &mut self.queue.ids.lock().unwrap_or_else(|e| e.into_inner()),
        );
        let ids = std::mem::take(&mut self.scratch);
        for &id in &ids {
            self.poll_task(id);
        }
        self.scratch = ids;
        self.scratch.clear();
        // Tasks woken or spawned by the tasks just run run in the next
        // turn, after I/O: a task that wakes itself forever cannot starve
        // the others, nor the loop.
        self.insert_spawned();
        self.apply(r);
        if !self.queue.ids.lock().map_or(true, |v| v.is_empty()) {
            r.request_turn();
        }
    }

    fn insert_spawned(&mut self) {
        let spawned = std::mem::take(&mut self.shared.pending.borrow_mut().spawn);
        for task in spawned {
            self.insert(task);
        }
    }

    fn poll_task(&mut self, id: usize) {
        let Some(Some((task, waker))) = self.tasks.get_mut(id) else {
            return; // finished; a stale wake
        };
        let mut cx = Context::from_waker(waker);
        if task.as_mut().poll(&mut cx).is_ready() {
            // Dropping the task drops its Async values: their removal is
            // queued in `pending` and applied below.
            self.tasks[id] = None;
            self.free.push(id);
            self.live -= 1;
        }
    }

    /// Applies removals first: an fd closed by a finished task may already
    /// have been reused by an fd a new task registers.
    fn apply(&mut self, r: &mut Reactor<Executor>) {
        let pending = std::mem::take(&mut *self.shared.pending.borrow_mut());
        for id in pending.remove {
            let _ = r.remove_io(id);
        }
        for id in pending.cancel_timers {
            r.cancel_timer(id);
        }
        for signo in pending.unwatch_signals {
            r.remove_signal(signo);
        }
        for src in pending.register {
            if src.dropped.get() {
                continue;
            }
            let (interest, mode) = if self.shared.edge {
                (Interest::BOTH, Mode::Edge)
            } else {
                match interest_of(src.wanted.get()) {
                    Some(i) => (i, Mode::Level),
                    None => {
                        // Nothing awaited yet: register when something is.
                        self.shared.sources.borrow_mut().push(Rc::downgrade(&src));
                        continue;
                    }
                }
            };
            let cb_src = src.clone();
            match r.add_io(src.fd, interest, mode, move |_, _, ev| cb_src.on_event(&ev)) {
                Ok(id) => {
                    r.set_label(id, "async");
                    src.id.set(Some(id));
                    if !self.shared.edge {
                        src.watched.set(src.wanted.get());
                        self.shared.sources.borrow_mut().push(Rc::downgrade(&src));
                    }
                }
                Err(e) => {
                    // The fd cannot be watched (select's FD_SETSIZE, ...):
                    // report it as an error event so its task sees it.
                    let _ = e;
                    src.closed.set(true);
                    src.ready.set(READ | WRITE);
                    src.readers.wake_all();
                    src.writers.wake_all();
                }
            }
        }
        for state in pending.timers {
            time::arm(r, state);
        }
        for state in pending.signals {
            signal::watch(r, state);
        }
        offload::submit_waiting(&self.shared, r);
        if !self.shared.edge {
            self.sync_level(r);
        }
    }

    /// Level-triggered backends: watch exactly what tasks wait on.
    fn sync_level(&mut self, r: &mut Reactor<Executor>) {
        let mut sources = self.shared.sources.borrow_mut();
        sources.retain(|weak| {
            let Some(src) = weak.upgrade() else {
                return false;
            };
            if src.dropped.get() {
                return false;
            }
            // What is ready is not waited on: don't let level-triggered
            // readiness repeat for a direction nobody reads yet.
            let want = src.wanted.get() & !src.ready.get();
            src.wanted.set(want);
            if want == src.watched.get() {
                return true;
            }
            match (src.id.get(), interest_of(want)) {
                (Some(id), Some(i)) => {
                    if r.modify_io(id, i).is_ok() {
                        src.watched.set(want);
                    }
                }
                (Some(id), None) => {
                    let _ = r.remove_io(id);
                    src.id.set(None);
                    src.watched.set(0);
                }
                (None, Some(i)) => {
                    let cb_src = src.clone();
                    if let Ok(id) =
                        r.add_io(src.fd, i, Mode::Level, move |_, _, ev| cb_src.on_event(&ev))
                    {
                        src.id.set(Some(id));
                        src.watched.set(want);
                    }
                }
                (None, None) => {}
            }
            true
        });
    }
}

fn interest_of(bits: u8) -> Option<Interest> {
    match bits & (READ | WRITE) {
        READ => Some(Interest::READABLE),
        WRITE => Some(Interest::WRITABLE),
        0 => None,
        _ => Some(Interest::BOTH),
    }
}

/// Makes a runtime current on this thread while alive.
struct Current {
    previous: Option<Rc<Shared>>,
}

impl Current {
    fn enter(shared: &Rc<Shared>) -> Current {
        let previous = CURRENT.with(|c| c.borrow_mut().replace(shared.clone()));
        Current { previous }
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        CURRENT.with(|c| *c.borrow_mut() = self.previous.take());
    }
}

/// A reactor and its executor: where coroutines run.
pub struct Runtime {
    reactor: Reactor<Executor>,
    executor: Executor,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("reactor", &self.reactor)
            .field("executor", &self.executor)
            .finish()
    }
}

impl Runtime {
    /// A runtime on a new reactor.
    ///
    /// # Errors
    /// The reactor's creation error.
    pub fn new(options: Options) -> io::Result<Runtime> {
        let mut reactor = Reactor::new(options)?;
        let edge = reactor.backend().supports_edge();
        reactor.add_check(|r, exec: &mut Executor| exec.tick(r));
        let executor = Executor {
            tasks: Vec::new(),
            free: Vec::new(),
            queue: Arc::new(RunQueue {
                ids: Mutex::new(Vec::new()),
                handle: reactor.handle(),
                loop_thread: std::thread::current().id(),
            }),
            shared: Rc::new(Shared {
                pending: RefCell::new(Pending::default()),
                sources: RefCell::new(Vec::new()),
                offload: RefCell::new(VecDeque::new()),
                edge,
            }),
            scratch: Vec::new(),
            live: 0,
        };
        Ok(Runtime { reactor, executor })
    }

    /// The reactor, for watchers, timers and signals beside the tasks.
    pub fn reactor(&mut self) -> &mut Reactor<Executor> {
        &mut self.reactor
    }

    /// Adds a task; it runs once the runtime does. The handle awaits its
    /// output or aborts it; dropping the handle lets the task run on.
    pub fn spawn<F: Future + 'static>(&mut self, task: F) -> JoinHandle<F::Output> {
        let (task, handle) = join::wrap(task);
        self.executor.insert(task);
        handle
    }

    /// Tasks not finished yet.
    pub fn tasks(&self) -> usize {
        self.executor.live
    }

    /// Runs the loop until `fut` completes, with the other tasks beside it,
    /// or until the loop is stopped: by [`Reactor::stop`] from a callback
    /// (a signal's, a timer's) or by [`Handle::stop`] from another thread
    /// (the handle of [`reactor`](Self::reactor)). A stop requested before
    /// the call ends it at once, as it ends [`Reactor::run`].
    ///
    /// On stop, `fut` is dropped (its `Async` values deregistered) and the
    /// result is an error of kind [`Interrupted`](io::ErrorKind::Interrupted)
    /// ([`is_stopped`] tells it from an OS error). The other tasks stay:
    /// they run again on the next `block_on`, or drop with the runtime.
    ///
    /// # Errors
    /// The stop, as above; the reactor's wait error.
    pub fn block_on<F: Future + 'static>(&mut self, fut: F) -> io::Result<F::Output> {
        let (task, handle) = join::wrap(fut);
        let id = self.executor.insert(task);
        loop {
            if let Some(v) = handle.take_output() {
                return Ok(v);
            }
            if self.reactor.take_stop() {
                self.executor.cancel(id, &mut self.reactor);
                return Err(io::Error::new(io::ErrorKind::Interrupted, Stopped));
            }
            // Tasks are polled in the check phase: make sure a turn comes
            // without waiting when some are ready.
            if !self
                .executor
                .queue
                .ids
                .lock()
                .map_or(true, |v| v.is_empty())
                || !self.executor.shared.pending.borrow().spawn.is_empty()
            {
                self.reactor.request_turn();
            }
            if let Err(e) = self.reactor.run_once(&mut self.executor, None) {
                self.executor.cancel(id, &mut self.reactor);
                return Err(e);
            }
        }
    }
}

/// Why [`Runtime::block_on`] returned before its future completed: the
/// loop was stopped. Carried by an `io::Error` of kind `Interrupted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped;

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the event loop was stopped (Reactor::stop or Handle::stop) before the future completed; it was dropped")
    }
}

impl std::error::Error for Stopped {}

/// Whether `e` is the error [`Runtime::block_on`] returns when the loop is
/// stopped (not an `EINTR` from the OS).
pub fn is_stopped(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Stopped>())
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // Tasks drop their Async values, which want the runtime current.
        let _current = Current::enter(&self.executor.shared);
        self.executor.tasks.clear();
    }
}

/// Starts a task on the current thread's runtime. The handle awaits the
/// task's output or aborts it; dropping it lets the task run on
/// (detached), so `spawn(fut);` alone is a fire-and-forget.
///
/// # Panics
/// Outside a [`Runtime`] (there is nothing to run the task).
pub fn spawn<F: Future + 'static>(task: F) -> JoinHandle<F::Output> {
    let shared = current().expect("spawn needs a running Runtime on this thread");
    let (task, handle) = join::wrap(task);
    shared.pending.borrow_mut().spawn.push(task);
    handle
}

/// Starts a task whose output and end no one awaits: the cost of the
/// future alone (one allocation), where [`spawn`] adds a shared join state
/// (about 130 bytes). For servers' connection tasks.
///
/// # Panics
/// Outside a [`Runtime`] (there is nothing to run the task).
pub fn spawn_detached(task: impl Future<Output = ()> + 'static) {
    let shared = current().expect("spawn_detached needs a running Runtime on this thread");
    shared.pending.borrow_mut().spawn.push(Box::pin(task));
}

/// Yields once: the task runs again after the others woken this turn.
pub async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// An fd driven by the reactor: I/O on it waits as a future, not a thread.
#[derive(Debug)]
pub struct Async<T: AsRawFd> {
    source: Rc<Source>,
    io: T,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").field("fd", &self.fd).finish()
    }
}

impl<T: AsRawFd> Async<T> {
    /// Puts `io` in non-blocking mode and has the reactor watch it from the
    /// end of this turn.
    ///
    /// # Errors
    /// Outside a runtime; the `fcntl` error.
    pub fn new(io: T) -> io::Result<Async<T>> {
        let shared = current()?;
        let fd = io.as_raw_fd();
        crate::sys::set_nonblocking(fd, true)?;
        let source = Rc::new(Source {
            fd,
            ready: Cell::new(0),
            closed: Cell::new(false),
            readers: Waiters::default(),
            writers: Waiters::default(),
            wanted: Cell::new(0),
            watched: Cell::new(0),
            id: Cell::new(None),
            dropped: Cell::new(false),
        });
        shared.pending.borrow_mut().register.push(source.clone());
        Ok(Async { source, io })
    }

    /// The inner value.
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// The inner value, mutably. Do not close its fd.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.io
    }

    /// Completes once the fd is readable (or hung up, or in error).
    pub async fn readable(&self) {
        poll_fn(|cx| self.poll_readable(cx)).await
    }

    /// Completes once the fd is writable (or in error).
    pub async fn writable(&self) {
        poll_fn(|cx| self.poll_writable(cx)).await
    }

    /// The poll form of [`readable`](Self::readable), for waiting on
    /// several things at once.
    pub fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.source.poll_ready(READ, cx)
    }

    /// The poll form of [`writable`](Self::writable).
    pub fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.source.poll_ready(WRITE, cx)
    }

    /// Forgets read readiness: call it when a read returned `WouldBlock`
    /// (or a short read, unless [`is_read_closed`](Self::is_read_closed)).
    pub fn clear_readable(&self) {
        self.source.ready.set(self.source.ready.get() & !READ);
    }

    /// Forgets write readiness: call it when a write returned `WouldBlock`.
    pub fn clear_writable(&self) {
        self.source.ready.set(self.source.ready.get() & !WRITE);
    }

    /// Whether the peer hung up (or the fd is in error): an EOF or error is
    /// still to be read, and no new event will announce it.
    pub fn is_read_closed(&self) -> bool {
        self.source.closed.get()
    }

    /// The poll form of [`read_with`](Self::read_with): `op` runs while the
    /// fd is readable, until it stops returning `WouldBlock`.
    fn poll_read_with<R>(
        &self,
        cx: &mut Context<'_>,
        mut op: impl FnMut(&T) -> io::Result<R>,
    ) -> Poll<io::Result<R>> {
        loop {
            if self.poll_readable(cx).is_pending() {
                return Poll::Pending;
            }
            match op(&self.io) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.clear_readable(),
                res => return Poll::Ready(res),
            }
        }
    }

    /// The poll form of [`write_with`](Self::write_with).
    fn poll_write_with<R>(
        &self,
        cx: &mut Context<'_>,
        mut op: impl FnMut(&T) -> io::Result<R>,
    ) -> Poll<io::Result<R>> {
        loop {
            if self.poll_writable(cx).is_pending() {
                return Poll::Pending;
            }
            match op(&self.io) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.clear_writable(),
                res => return Poll::Ready(res),
            }
        }
    }

    /// Runs `op` once the fd is readable, until it stops returning
    /// `WouldBlock`.
    ///
    /// # Errors
    /// `op`'s error.
    pub async fn read_with<R>(&self, mut op: impl FnMut(&T) -> io::Result<R>) -> io::Result<R> {
        poll_fn(|cx| self.poll_read_with(cx, &mut op)).await
    }

    /// Runs `op` once the fd is writable, until it stops returning
    /// `WouldBlock`.
    ///
    /// # Errors
    /// `op`'s error.
    pub async fn write_with<R>(&self, mut op: impl FnMut(&T) -> io::Result<R>) -> io::Result<R> {
        poll_fn(|cx| self.poll_write_with(cx, &mut op)).await
    }
}

impl Async<TcpListener> {
    /// Accepts a connection (blocking std sockets are made non-blocking by
    /// [`Async::new`]).
    ///
    /// # Errors
    /// The accept error.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        self.read_with(|l| l.accept()).await
    }
}

impl Async<TcpStream> {
    /// Reads into `buf`; 0 at EOF.
    ///
    /// # Errors
    /// The read error.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_with(|mut s| s.read(buf)).await
    }

    /// Writes some of `buf`.
    ///
    /// # Errors
    /// The write error.
    pub async fn write(&self, buf: &[u8]) -> io::Result<usize> {
        self.write_with(|mut s| s.write(buf)).await
    }

    /// Writes all of `buf`.
    ///
    /// # Errors
    /// The first write error.
    pub async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.write(buf).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            buf = &buf[n..];
        }
        Ok(())
    }
}

impl<T: AsRawFd> Drop for Async<T> {
    /// Queues the watcher's removal; it is applied before any later
    /// registration, so a reused fd number is never confused with this one.
    fn drop(&mut self) {
        self.source.dropped.set(true);
        if let (Some(id), Ok(shared)) = (self.source.id.get(), current()) {
            shared.pending.borrow_mut().remove.push(id);
        }
    }
}
