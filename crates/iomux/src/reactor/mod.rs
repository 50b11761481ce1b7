//! The event loop: callbacks on a [`Selector`], in the class of libev.
//!
//! A [`Reactor`] owns a selector and runs callbacks on one thread:
//!
//! * **I/O watchers** ([`Reactor::add_io`]): an fd, an [`Interest`] and a
//!   callback, the seeds' `sel.register(conn, EVENT_READ, read)`. A callback
//!   may add, modify or remove any watcher, its own included; a watcher
//!   removed while its event is still in the batch gets no further call.
//! * **Timers** ([`Reactor::add_timer`], [`Reactor::add_repeating`]):
//!   one-shot or repeating, cancellable, fired in deadline order (a heap; see
//!   `timer.rs` for why not a wheel). The loop sleeps until the next
//!   deadline, rounded up to the millisecond, and never busy-waits.
//! * **Signals** ([`Reactor::add_signal`]): `SIGINT`, `SIGTERM` or any
//!   catchable signal, delivered to a callback on the loop thread through a
//!   self-pipe ([`crate::sys::signal`] says why not `signalfd`).
//! * **Cross-thread posts** ([`Handle::post`]): a closure sent from any
//!   thread, run on the loop thread; [`Handle::stop`] ends [`Reactor::run`].
//! * **Offload** ([`Reactor::offload`]): a closure run on a bounded worker
//!   pool, its result handed to a callback on the loop thread. A full queue
//!   is reported to the caller at once.
//! * **Stall detection**, on by default: a callback that holds the loop
//!   longer than [`Options::stall_threshold`] (100 ms) is logged once per
//!   watcher and counted in [`Stats::stalls`].
//!
//! Other threads reach the loop only through the selector's
//! [`Waker`]: posts and offload results; signals
//! come through their own pipe.
//!
//! # One turn of the loop
//!
//! [`Reactor::run_once`] is the loop's phases, in order:
//!
//! 1. decide how long to block: not at all if a turn was requested or a
//!    stop is pending, else until the earliest timer (or forever); with a
//!    latency budget, sleep first for the delay its policy chose (at most
//!    that timeout);
//! 2. wait in the selector, then read the clock once ([`Reactor::now`]);
//! 3. run the callback of every I/O event, in the order the kernel gave
//!    them (signals arrive here, as their pipe's watcher);
//! 4. run every timer due at that time, earliest first;
//! 5. if the waker fired: run posted closures, then offload completions;
//! 6. run check callbacks ([`Reactor::add_check`]): what must happen after
//!    the events of a turn, such as running the tasks they woke;
//! 7. release the slots of watchers removed during the turn;
//! 8. with a latency budget ([`Options::latency_budget`]), tell its policy
//!    what the turn saw; it answers how long phase 1 of the next turn
//!    sleeps before waiting, so that events gather into one wake-up.
//!
//! # Examples
//!
//! The seeds' callback server, with the callback given the loop and a
//! shared state (`C`, here a count of bytes):
//!
//! ```no_run
//! use iomux::reactor::{Options, Reactor};
//! use iomux::selector::{Interest, Mode};
//! use std::io::{Read, Write};
//! use std::net::TcpListener;
//! use std::os::fd::AsRawFd;
//!
//! let listener = TcpListener::bind("127.0.0.1:0")?;
//! listener.set_nonblocking(true)?;
//! let mut r: Reactor<u64> = Reactor::new(Options::default())?;
//! let fd = listener.as_raw_fd();
//! r.add_io(fd, Interest::READABLE, Mode::Level, move |r, _, _| {
//!     let Ok((mut conn, _)) = listener.accept() else { return };
//!     conn.set_nonblocking(true).unwrap();
//!     let cfd = conn.as_raw_fd();
//!     r.add_io(cfd, Interest::READABLE, Mode::Level, move |r, total, _| {
//!         let mut buf = [0; 4096];
//!         match conn.read(&mut buf) {
//!             Ok(0) | Err(_) => { let _ = r.remove_io_fd(cfd); }
//!             Ok(n) => {
//!                 *total += n as u64;
//!                 let _ = conn.write_all(&buf[..n].to_ascii_uppercase());
//!             }
//!         }
//!     }).unwrap();
//! })?;
//! let mut total = 0;
//! r.run(&mut total)?;
//! # std::io::Result::Ok(())
//! ```

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::budget::LatencyBudget;
use crate::selector::{Backend, Event, Events, Interest, Mode, Selector, Token, Waker};

mod offload;
pub mod task;
mod timer;

pub use offload::OffloadError;

/// The waker's token; watchers have `FIRST_WATCHER + slot`.
const WAKER: Token = Token(0);
const FIRST_WATCHER: usize = 1;

type IoCallback<C> = Box<dyn FnMut(&mut Reactor<C>, &mut C, Event)>;
type TimerCallback<C> = Box<dyn FnMut(&mut Reactor<C>, &mut C)>;
type StallHook = Box<dyn FnMut(&Stall)>;
type CheckCallback<C> = Box<dyn FnMut(&mut Reactor<C>, &mut C)>;
type Posted<C> = Box<dyn FnOnce(&mut Reactor<C>, &mut C) + Send>;
type DoneCallback<C> =
    Box<dyn FnOnce(&mut Reactor<C>, &mut C, std::thread::Result<Box<dyn Any + Send>>)>;

/// How a [`Reactor`] is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The selector backend.
    pub backend: Backend,
    /// Events taken per wait.
    pub events_per_wait: usize,
    /// A callback that holds the loop longer than this is logged (once per
    /// watcher) and counted; `None` turns detection off.
    pub stall_threshold: Option<Duration>,
    /// Threads of the offload pool, started on the first
    /// [`Reactor::offload`].
    pub offload_threads: usize,
    /// Jobs that may wait for an offload thread; past it `offload` fails.
    pub offload_queue: usize,
    /// Latency the loop may add to batch wake-ups: before a wait, it sleeps
    /// as long as [`LatencyBudget`] says
    /// (nothing under light load). `None` (the default): never.
    pub latency_budget: Option<Duration>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            backend: Backend::recommended(),
            events_per_wait: 1024,
            stall_threshold: Some(Duration::from_millis(100)),
            offload_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            offload_queue: 1024,
            latency_budget: None,
        }
    }
}

/// An I/O watcher, as returned by [`Reactor::add_io`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct IoId {
    idx: usize,
    gen: u32,
}

/// A timer, as returned by [`Reactor::add_timer`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct TimerId {
    idx: usize,
    gen: u32,
}

/// A check callback, as returned by [`Reactor::add_check`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct CheckId(usize);

/// What the loop has done: the figures tests and the bench read.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Turns of the loop (selector waits).
    pub turns: u64,
    /// I/O callbacks run (signal callbacks included).
    pub io_callbacks: u64,
    /// Timer callbacks run.
    pub timers_fired: u64,
    /// Posted closures run.
    pub posts_run: u64,
    /// Jobs accepted by the offload pool.
    pub offload_submitted: u64,
    /// Offload results delivered to their callback.
    pub offload_completed: u64,
    /// Jobs refused because the offload queue was full.
    pub offload_rejected: u64,
    /// Callbacks that held the loop longer than the stall threshold.
    pub stalls: u64,
    /// Turns that slept before their wait, under a latency budget
    /// ([`Options::latency_budget`]).
    pub delayed_turns: u64,
    /// The time those turns slept, in all (as asked of the OS).
    pub delayed: Duration,
    /// I/O watchers registered now.
    pub watchers: usize,
    /// Timers armed now.
    pub timers: usize,
    /// The selector's own counters.
    pub selector: crate::selector::Stats,
}

/// Which callback held the loop: the subject of a [`Stall`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StallSource {
    /// An I/O watcher's callback.
    Io {
        /// The watched fd.
        fd: RawFd,
        /// The watcher's label ([`Reactor::set_label`]).
        label: &'static str,
    },
    /// A timer's callback.
    Timer,
    /// A closure posted from another thread.
    Post,
    /// An offload job's completion callback.
    OffloadDone,
    /// A check callback.
    Check,
}

/// A callback that held the loop longer than the threshold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stall {
    /// Which callback.
    pub source: StallSource,
    /// How long it ran.
    pub held: Duration,
    /// The threshold it passed.
    pub threshold: Duration,
}

impl fmt::Display for Stall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.source {
            StallSource::Io { fd, label } => format!("I/O watcher {label:?} on fd {fd}"),
            StallSource::Timer => "a timer".to_string(),
            StallSource::Post => "a posted closure".to_string(),
            StallSource::OffloadDone => "an offload completion".to_string(),
            StallSource::Check => "a check callback".to_string(),
        };
        write!(
            f,
            "the callback of {what} held the event loop for {} ms (threshold {} ms); every other connection waited; move slow work to Reactor::offload",
            self.held.as_millis(),
            self.threshold.as_millis()
        )
    }
}

struct Watcher<C> {
    fd: RawFd,
    gen: u32,
    live: bool,
    /// `None` while free, or while the callback runs.
    cb: Option<IoCallback<C>>,
    interest: Interest,
    mode: Mode,
    /// Registered in the selector (false while paused).
    active: bool,
    label: &'static str,
    stall_logged: bool,
}

struct Shared<C> {
    posted: Mutex<Vec<Posted<C>>>,
    stop: AtomicBool,
    alive: AtomicBool,
    waker: Waker,
}

/// Sends work to a [`Reactor`] from any thread.
pub struct Handle<C> {
    shared: Arc<Shared<C>>,
}

impl<C> Clone for Handle<C> {
    fn clone(&self) -> Self {
        Handle {
            shared: self.shared.clone(),
        }
    }
}

impl<C> fmt::Debug for Handle<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle").finish_non_exhaustive()
    }
}

impl<C> Handle<C> {
    /// Runs `f` on the loop thread at its next turn (phase 5), after the
    /// closures posted before it.
    ///
    /// # Errors
    /// `BrokenPipe` if the reactor is gone; the waker's OS error.
    pub fn post(&self, f: impl FnOnce(&mut Reactor<C>, &mut C) + Send + 'static) -> io::Result<()> {
        if !self.shared.alive.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the event loop is gone; nothing will run the posted closure",
            ));
        }
        lock(&self.shared.posted).push(Box::new(f));
        self.shared.waker.wake()
    }

    /// Wakes the loop without posting anything: its next turn runs the
    /// check callbacks (a task waker on another thread uses it).
    ///
    /// # Errors
    /// The waker's OS error.
    pub fn wake(&self) -> io::Result<()> {
        self.shared.waker.wake()
    }

    /// Makes [`Reactor::run`] return after its current turn.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        let _ = self.shared.waker.wake();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The event loop; `C` is the state every callback is given.
pub struct Reactor<C> {
    selector: Selector,
    events: Option<Events>,
    watchers: Vec<Watcher<C>>,
    free: Vec<usize>,
    /// Slots of watchers removed this turn: reused only once the turn's
    /// events are all dispatched, so a stale event cannot reach a newcomer.
    free_later: Vec<usize>,
    timers: timer::Timers<TimerCallback<C>>,
    checks: Vec<Option<CheckCallback<C>>>,
    shared: Arc<Shared<C>>,
    signals: Vec<(IoId, crate::sys::signal::Watch)>,
    pool: Option<offload::Pool>,
    next_job: u64,
    jobs: HashMap<u64, DoneCallback<C>>,
    done: Vec<offload::Done>,
    options: Options,
    now: Instant,
    stats: Stats,
    stop: bool,
    turn: bool,
    stall_hook: Option<StallHook>,
    /// Non-watcher stall sources already logged (timer, post, offload, check).
    stall_logged_kinds: u8,
    /// [`Options::latency_budget`]'s policy.
    budget: Option<LatencyBudget>,
}

impl<C> fmt::Debug for Reactor<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reactor")
            .field("backend", &self.selector.backend())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl<C> Reactor<C> {
    /// A loop on a new selector.
    ///
    /// # Errors
    /// The selector's or its waker's creation error.
    pub fn new(options: Options) -> io::Result<Reactor<C>> {
        let mut selector = Selector::new(options.backend)?;
        let waker = selector.waker(WAKER)?;
        Ok(Reactor {
            selector,
            events: Some(Events::with_capacity(options.events_per_wait)),
            budget: options.latency_budget.map(LatencyBudget::new),
            watchers: Vec::new(),
            free: Vec::new(),
            free_later: Vec::new(),
            timers: timer::Timers::default(),
            checks: Vec::new(),
            shared: Arc::new(Shared {
                posted: Mutex::new(Vec::new()),
                stop: AtomicBool::new(false),
                alive: AtomicBool::new(true),
                waker,
            }),
            signals: Vec::new(),
            pool: None,
            next_job: 0,
            jobs: HashMap::new(),
            done: Vec::new(),
            options,
            now: Instant::now(),
            stats: Stats::default(),
            stop: false,
            turn: false,
            stall_hook: None,
            stall_logged_kinds: 0,
        })
    }

    /// The selector backend.
    pub fn backend(&self) -> Backend {
        self.selector.backend()
    }

    /// A handle for other threads.
    pub fn handle(&self) -> Handle<C> {
        Handle {
            shared: self.shared.clone(),
        }
    }

    /// The time read when the loop last woke up: cheap, and the same for
    /// every callback of a turn (libev's `ev_now`).
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The selector's counters alone: cheaper than [`stats`](Self::stats),
    /// which counts the watchers.
    pub fn selector_stats(&self) -> crate::selector::Stats {
        self.selector.stats()
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        Stats {
            watchers: self.watchers.iter().filter(|w| w.live).count(),
            timers: self.timers.len(),
            selector: self.selector.stats(),
            ..self.stats
        }
    }

    /// Replaces the stall log (a line on stderr, once per watcher) with
    /// `hook`, called for every stall.
    pub fn on_stall(&mut self, hook: impl FnMut(&Stall) + 'static) {
        self.stall_hook = Some(Box::new(hook));
    }

    /// Makes [`run`](Self::run) return after this turn.
    pub fn stop(&mut self) {
        self.stop = true;
    }

    /// Makes the next turn poll without blocking: for a callback that left
    /// work to do that no event will announce.
    pub fn request_turn(&mut self) {
        self.turn = true;
    }

    /// Runs turns until [`stop`](Self::stop) or [`Handle::stop`].
    ///
    /// # Errors
    /// The selector's wait error; callbacks' errors are theirs to handle.
    pub fn run(&mut self, ctx: &mut C) -> io::Result<()> {
        loop {
            if self.take_stop() {
                return Ok(());
            }
            self.run_once(ctx, None)?;
        }
    }

    /// Whether a stop was asked for ([`stop`](Self::stop) or
    /// [`Handle::stop`]) and not yet acted on; clears the request. For
    /// loops of their own around [`run_once`](Self::run_once), such as
    /// [`task::Runtime::block_on`].
    pub fn take_stop(&mut self) -> bool {
        let here = std::mem::take(&mut self.stop);
        let there = self.shared.stop.swap(false, Ordering::AcqRel);
        here || there
    }

    /// One turn of the loop (the phases are listed in the module docs),
    /// blocking at most `max_wait` (`None`: until something happens).
    ///
    /// # Errors
    /// The selector's wait error.
    pub fn run_once(&mut self, ctx: &mut C, max_wait: Option<Duration>) -> io::Result<()> {
        // 1. How long to block; with a latency budget, first let events
        // gather for a while (never past the timeout).
        let mut timeout = self.wait_time(max_wait);
        if let Some(delay) = self.budget.as_ref().map(LatencyBudget::delay) {
            let delay = timeout.map_or(delay, |t| t.min(delay));
            if !delay.is_zero() {
                std::thread::sleep(delay);
                self.stats.delayed_turns += 1;
                self.stats.delayed += delay;
                timeout = timeout.map(|t| t - delay);
            }
        }
        // 2. Wait.
        let mut events = self.events.take().expect("events are put back every turn");
        let res = self.selector.select(&mut events, timeout);
        self.stats.turns += 1;
        self.now = Instant::now();
        if let Err(e) = res {
            self.events = Some(events);
            return Err(e);
        }
        let woke_at = self.now;
        let mut mark = self.now;
        // 3. I/O callbacks.
        let mut woke = false;
        for event in events.iter() {
            match event.token() {
                WAKER => woke = true,
                Token(t) => self.dispatch_io(t - FIRST_WATCHER, *event, ctx, &mut mark),
            }
        }
        self.events = Some(events);
        // 4. Timers due at the wake-up time (a zero-period timer cannot keep
        // this phase going: what it re-arms is due after `due`).
        let due = self.now.max(mark);
        while let Some((idx, gen, mut cb)) = self.timers.pop_due(due) {
            cb(self, ctx);
            self.stats.timers_fired += 1;
            if let Some(held) = self.held(&mut mark) {
                let logged = std::mem::replace(&mut self.timers.slots[idx].stall_logged, true);
                self.report_stall(StallSource::Timer, held, logged);
            }
            self.timers.finish(idx, gen, cb, due);
        }
        // 5. Posts and offload results: they come with the waker.
        if woke {
            let posted = std::mem::take(&mut *lock(&self.shared.posted));
            for f in posted {
                f(self, ctx);
                self.stats.posts_run += 1;
                self.after_other(StallSource::Post, 1, &mut mark);
            }
            if let Some(pool) = &self.pool {
                pool.take_done(&mut self.done);
            }
            for (id, result) in std::mem::take(&mut self.done) {
                if let Some(cb) = self.jobs.remove(&id) {
                    cb(self, ctx, result);
                    self.stats.offload_completed += 1;
                    self.after_other(StallSource::OffloadDone, 2, &mut mark);
                }
            }
        }
        // 6. Checks.
        for i in 0..self.checks.len() {
            if let Some(mut cb) = self.checks[i].take() {
                cb(self, ctx);
                self.after_other(StallSource::Check, 4, &mut mark);
                // Removed inside its own call: `remove_check` left a tombstone.
                if let Some(slot @ None) = self.checks.get_mut(i) {
                    *slot = Some(cb);
                }
            }
        }
        // 7. Slots of removed watchers are free from now on.
        self.free.append(&mut self.free_later);
        if let Some(budget) = &mut self.budget {
            let n = self.events.as_ref().map_or(0, Events::len);
            budget.record(n, woke_at, Instant::now());
        }
        Ok(())
    }

    fn wait_time(&mut self, max_wait: Option<Duration>) -> Option<Duration> {
        if std::mem::take(&mut self.turn) || self.stop || self.shared.stop.load(Ordering::Acquire) {
            return Some(Duration::ZERO);
        }
        let until_timer = self
            .timers
            .next_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()));
        match (until_timer, max_wait) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn dispatch_io(&mut self, idx: usize, event: Event, ctx: &mut C, mark: &mut Instant) {
        let Some(w) = self.watchers.get_mut(idx) else {
            return;
        };
        if !w.live {
            return; // removed earlier in this batch
        }
        let Some(mut cb) = w.cb.take() else {
            return;
        };
        let gen = w.gen;
        cb(self, ctx, event);
        self.stats.io_callbacks += 1;
        if let Some(held) = self.held(mark) {
            let w = &mut self.watchers[idx];
            let source = StallSource::Io {
                fd: w.fd,
                label: w.label,
            };
            let logged = std::mem::replace(&mut w.stall_logged, true);
            self.report_stall(source, held, logged);
        }
        let w = &mut self.watchers[idx];
        if w.live && w.gen == gen {
            w.cb = Some(cb);
        }
    }

    /// Reads the clock after a callback; how long it held the loop, if
    /// longer than the threshold.
    fn held(&mut self, mark: &mut Instant) -> Option<Duration> {
        let threshold = self.options.stall_threshold?;
        let t = Instant::now();
        let held = t.duration_since(*mark);
        *mark = t;
        (held > threshold).then_some(held)
    }

    fn after_other(&mut self, source: StallSource, kind_bit: u8, mark: &mut Instant) {
        if let Some(held) = self.held(mark) {
            let logged = self.stall_logged_kinds & kind_bit != 0;
            self.stall_logged_kinds |= kind_bit;
            self.report_stall(source, held, logged);
        }
    }

    fn report_stall(&mut self, source: StallSource, held: Duration, logged: bool) {
        self.stats.stalls += 1;
        let stall = Stall {
            source,
            held,
            threshold: self.options.stall_threshold.unwrap_or_default(),
        };
        match &mut self.stall_hook {
            Some(hook) => hook(&stall),
            None if !logged => log::warn!("{stall}"),
            None => {}
        }
    }

    // ---- I/O watchers ----

    /// Watches `fd` for `interest` in `mode` and calls `cb` with each event.
    ///
    /// The reactor does not own `fd`: remove the watcher before closing it.
    ///
    /// # Errors
    /// The selector's registration error ([`crate::selector::SelectorError`]);
    /// nothing is registered then.
    pub fn add_io(
        &mut self,
        fd: RawFd,
        interest: Interest,
        mode: Mode,
        cb: impl FnMut(&mut Reactor<C>, &mut C, Event) + 'static,
    ) -> io::Result<IoId> {
        let idx = self.free.pop().unwrap_or(self.watchers.len());
        if let Err(e) =
            self.selector
                .register_with_mode(fd, Token(FIRST_WATCHER + idx), interest, mode)
        {
            if idx < self.watchers.len() {
                self.free.push(idx);
            }
            return Err(e);
        }
        let watcher = Watcher {
            fd,
            gen: 0,
            live: true,
            cb: Some(Box::new(cb)),
            interest,
            mode,
            active: true,
            label: "io",
            stall_logged: false,
        };
        let gen = if idx == self.watchers.len() {
            self.watchers.push(watcher);
            0
        } else {
            let gen = self.watchers[idx].gen.wrapping_add(1);
            self.watchers[idx] = Watcher { gen, ..watcher };
            gen
        };
        Ok(IoId { idx, gen })
    }

    fn watcher(&mut self, id: IoId) -> io::Result<&mut Watcher<C>> {
        match self.watchers.get_mut(id.idx) {
            Some(w) if w.live && w.gen == id.gen => Ok(w),
            _ => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no such I/O watcher (already removed)",
            )),
        }
    }

    /// Changes what a watcher waits for; no syscall if nothing changes. A
    /// paused watcher keeps the new interest for when it resumes.
    ///
    /// # Errors
    /// `NotFound` for a removed watcher; the selector's error.
    pub fn modify_io(&mut self, id: IoId, interest: Interest) -> io::Result<()> {
        let w = self.watcher(id)?;
        if w.interest == interest {
            return Ok(());
        }
        let (fd, mode, active) = (w.fd, w.mode, w.active);
        if active {
            self.selector.reregister_with_mode(
                fd,
                Token(FIRST_WATCHER + id.idx),
                interest,
                mode,
            )?;
        }
        self.watcher(id)?.interest = interest;
        Ok(())
    }

    /// Takes the fd out of the selector but keeps the watcher, its interest
    /// and its callback (libev's `ev_io_stop`): nothing is reported until
    /// [`resume_io`](Self::resume_io). For a connection that has nothing to
    /// do for a while: level-triggered readiness would otherwise report
    /// unread input at every turn.
    ///
    /// # Errors
    /// `NotFound` for a removed watcher; the selector's error.
    pub fn pause_io(&mut self, id: IoId) -> io::Result<()> {
        let w = self.watcher(id)?;
        if !w.active {
            return Ok(());
        }
        let fd = w.fd;
        self.selector.deregister(fd)?;
        self.watcher(id)?.active = false;
        Ok(())
    }

    /// Puts a paused watcher back in the selector.
    ///
    /// # Errors
    /// `NotFound` for a removed watcher; the selector's registration error.
    pub fn resume_io(&mut self, id: IoId) -> io::Result<()> {
        let w = self.watcher(id)?;
        if w.active {
            return Ok(());
        }
        let (fd, interest, mode) = (w.fd, w.interest, w.mode);
        self.selector
            .register_with_mode(fd, Token(FIRST_WATCHER + id.idx), interest, mode)?;
        self.watcher(id)?.active = true;
        Ok(())
    }

    /// Whether the watcher is in the selector (not paused).
    pub fn is_io_active(&self, id: IoId) -> bool {
        self.watchers
            .get(id.idx)
            .is_some_and(|w| w.live && w.gen == id.gen && w.active)
    }

    /// Stops watching; the callback gets no further call, even for an event
    /// already taken from the kernel in this turn. The fd stays open.
    ///
    /// # Errors
    /// `NotFound` for a removed watcher. A selector error (the fd was
    /// closed while watched) is ignored: the watcher is gone either way.
    pub fn remove_io(&mut self, id: IoId) -> io::Result<()> {
        let w = self.watcher(id)?;
        let (fd, active) = (w.fd, w.active);
        w.live = false;
        let cb = w.cb.take();
        if active {
            let _ = self.selector.deregister(fd);
        }
        self.free_later.push(id.idx);
        drop(cb);
        Ok(())
    }

    /// Removes the live watcher of `fd`, for callbacks that know their fd
    /// but not their id.
    ///
    /// # Errors
    /// `NotFound` if no live watcher has `fd`.
    pub fn remove_io_fd(&mut self, fd: RawFd) -> io::Result<()> {
        let found = self
            .watchers
            .iter()
            .position(|w| w.live && w.fd == fd)
            .map(|idx| IoId {
                idx,
                gen: self.watchers[idx].gen,
            });
        match found {
            Some(id) => self.remove_io(id),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no I/O watcher on fd {fd}"),
            )),
        }
    }

    /// Names a watcher in stall reports ("conn", "listener", ...).
    pub fn set_label(&mut self, id: IoId, label: &'static str) {
        if let Ok(w) = self.watcher(id) {
            w.label = label;
        }
    }

    /// Whether the watcher is still registered.
    pub fn is_io_live(&self, id: IoId) -> bool {
        self.watchers
            .get(id.idx)
            .is_some_and(|w| w.live && w.gen == id.gen)
    }

    // ---- Timers ----

    /// Calls `cb` once, `after` from now (rounded up to the millisecond).
    pub fn add_timer(
        &mut self,
        after: Duration,
        cb: impl FnMut(&mut Reactor<C>, &mut C) + 'static,
    ) -> TimerId {
        let (idx, gen) = self.timers.add(Instant::now() + after, None, Box::new(cb));
        TimerId { idx, gen }
    }

    /// Calls `cb` every `every`, first `every` from now, until cancelled.
    /// A loop that falls behind skips missed periods rather than bursting.
    pub fn add_repeating(
        &mut self,
        every: Duration,
        cb: impl FnMut(&mut Reactor<C>, &mut C) + 'static,
    ) -> TimerId {
        let (idx, gen) = self
            .timers
            .add(Instant::now() + every, Some(every), Box::new(cb));
        TimerId { idx, gen }
    }

    /// Disarms a timer: its callback never runs again and is dropped.
    /// Returns whether it was armed (false once a one-shot timer has fired).
    pub fn cancel_timer(&mut self, id: TimerId) -> bool {
        self.timers.cancel(id.idx, id.gen)
    }

    /// Moves an armed timer to `after` from now; returns whether it was armed.
    pub fn reschedule_timer(&mut self, id: TimerId, after: Duration) -> bool {
        self.timers
            .reschedule(id.idx, id.gen, Instant::now() + after)
    }

    /// Whether the timer is armed (it has not fired, if one-shot, nor been
    /// cancelled).
    pub fn is_timer_armed(&self, id: TimerId) -> bool {
        self.timers.is_live(id.idx, id.gen)
    }

    // ---- Signals ----

    /// Calls `cb` on the loop thread when `signo` arrives. Deliveries that
    /// arrive before the loop runs coalesce into one call, as pending
    /// signals do in the kernel. The previous disposition comes back with
    /// [`remove_signal`](Self::remove_signal) or when the reactor drops.
    ///
    /// # Errors
    /// See [`crate::sys::signal::watch`]: a signal that cannot be caught, or
    /// one another loop of this process watches.
    pub fn add_signal(
        &mut self,
        signo: i32,
        mut cb: impl FnMut(&mut Reactor<C>, &mut C, i32) + 'static,
    ) -> io::Result<()> {
        let (read_fd, watch) = crate::sys::signal::watch(signo)?;
        let res = self.add_io(read_fd, Interest::READABLE, Mode::Level, move |r, c, _| {
            // SAFETY: the pipe's read end is never closed (sys::signal).
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(read_fd) };
            let mut buf = [0u8; 64];
            let mut got = false;
            while let Ok(n @ 1..) = crate::sys::read(&fd, &mut buf) {
                got = true;
                if n < buf.len() {
                    break;
                }
            }
            if got {
                cb(r, c, signo);
            }
        });
        match res {
            Ok(id) => {
                self.set_label(id, "signal");
                self.signals.push((id, watch));
                Ok(())
            }
            Err(e) => {
                crate::sys::signal::unwatch(watch);
                Err(e)
            }
        }
    }

    /// Stops watching `signo`; returns whether it was watched.
    pub fn remove_signal(&mut self, signo: i32) -> bool {
        match self.signals.iter().position(|(_, w)| w.signo() == signo) {
            Some(i) => {
                let (id, watch) = self.signals.swap_remove(i);
                let _ = self.remove_io(id);
                crate::sys::signal::unwatch(watch);
                true
            }
            None => false,
        }
    }

    // ---- Offload ----

    /// Runs `work` on the offload pool and `done` with its result (or its
    /// panic) on the loop thread. The pool starts on first use with
    /// [`Options::offload_threads`] threads.
    ///
    /// # Errors
    /// [`OffloadError::Full`] when [`Options::offload_queue`] jobs wait
    /// already: neither closure runs, and the caller decides (retry after
    /// a completion, refuse, or run inline).
    pub fn offload<T: Send + 'static>(
        &mut self,
        work: impl FnOnce() -> T + Send + 'static,
        done: impl FnOnce(&mut Reactor<C>, &mut C, std::thread::Result<T>) + 'static,
    ) -> Result<(), OffloadError> {
        self.start_pool()?;
        let pool = self.pool.as_ref().expect("started above");
        let id = self.next_job;
        match pool.submit(
            id,
            Box::new(move || Box::new(work()) as Box<dyn Any + Send>),
        ) {
            Ok(()) => {
                self.next_job += 1;
                self.stats.offload_submitted += 1;
                self.jobs.insert(
                    id,
                    Box::new(move |r, c, res| {
                        let typed = res.map(|b| *b.downcast::<T>().expect("the job's own type"));
                        done(r, c, typed);
                    }),
                );
                Ok(())
            }
            Err(e) => {
                self.stats.offload_rejected += 1;
                Err(e)
            }
        }
    }

    /// Room left in the offload queue, starting the pool if it has not
    /// started: an [`offload`](Self::offload) now fails only if this is 0.
    ///
    /// # Errors
    /// The pool's threads could not start.
    pub fn offload_room(&mut self) -> Result<usize, OffloadError> {
        self.start_pool()?;
        Ok(self.options.offload_queue - self.offload_queued())
    }

    fn start_pool(&mut self) -> Result<(), OffloadError> {
        if self.pool.is_none() {
            self.pool = Some(offload::Pool::new(
                self.options.offload_threads,
                self.options.offload_queue,
                self.shared.waker.clone(),
            )?);
        }
        Ok(())
    }

    /// Offload jobs waiting for a thread (not started yet).
    pub fn offload_queued(&self) -> usize {
        self.pool.as_ref().map_or(0, offload::Pool::queued)
    }

    /// Offload jobs submitted whose result has not been delivered yet.
    pub fn offload_in_flight(&self) -> usize {
        self.jobs.len()
    }

    // ---- Checks ----

    /// Calls `cb` at the end of every turn, after the turn's other
    /// callbacks (libev's `ev_check`).
    pub fn add_check(&mut self, cb: impl FnMut(&mut Reactor<C>, &mut C) + 'static) -> CheckId {
        self.checks.push(Some(Box::new(cb)));
        CheckId(self.checks.len() - 1)
    }

    /// Removes a check callback.
    pub fn remove_check(&mut self, id: CheckId) {
        if let Some(slot) = self.checks.get_mut(id.0) {
            // A tombstone that is not `None`: a running check puts itself
            // back only into a `None` slot.
            *slot = Some(Box::new(|_, _| {}));
        }
    }
}

impl<C> Drop for Reactor<C> {
    fn drop(&mut self) {
        self.shared.alive.store(false, Ordering::Release);
        for (id, watch) in std::mem::take(&mut self.signals) {
            let _ = self.remove_io(id);
            crate::sys::signal::unwatch(watch);
        }
        // Dropping the pool joins its threads after their running jobs.
        self.pool = None;
    }
}
