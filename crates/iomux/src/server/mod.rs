//! One driver per I/O model, all serving the same [`Handler`](crate::protocol::Handler).
//!
//! Every driver takes a bound listener, a [`Config`], a [`Stop`] and the
//! [`Counters`] it reports into, and serves until stopped. The lifecycle is
//! the same in each:
//!
//! * accept until [`Stop::stop`] is called; past [`Config::max_conns`] a new
//!   connection is accepted and closed at once (counted in `refused`), so the
//!   kernel backlog never fills with clients that wait forever;
//! * the peer's EOF flushes pending output, then the connection closes;
//! * a reset or broken pipe closes the connection quietly and is counted in
//!   `resets`; `SIGPIPE` is never raised (sends use `MSG_NOSIGNAL`);
//! * an accept error (`EMFILE`, `ENFILE`, `ECONNABORTED`, ...) is counted and
//!   never makes the loop spin or the server exit. Running out of fds is
//!   handled as [`Config::on_fd_exhaustion`] says ([`FdExhaustion`]): pause
//!   accepting for [`ACCEPT_BACKOFF`], close the waiting clients with a
//!   reserve fd, or close the connection idle longest to make room;
//! * no fd outlives its connection.
//!
//! | model | file | how it waits |
//! |---|---|---|
//! | [`Model::Blocking`] | `blocking.rs` | one client at a time, blocking `recv` |
//! | [`Model::Threaded`] | `threaded.rs` | a thread per connection, at most `max_conns` |
//! | [`Model::Pool`] | `pool.rs` | `workers` threads take connections from a queue |
//! | [`Model::BusyPoll`] | `busy_poll.rs` | non-blocking try-accept / try-recv / try-send in a loop: spins |
//! | [`Model::Select`], [`Model::Poll`], [`Model::Epoll`] | `readiness.rs` | one thread, one [`Reactor`](crate::reactor::Reactor) on that selector |
//! | [`Model::Coroutine`] | `coroutine.rs` | one thread, async tasks on the reactor ([`crate::reactor::task`]) |
//! | [`Model::Uring`] | `uring.rs` | one thread, one io_uring: completions, not readiness (see [`crate::uring`]) |
//!
//! The reactor models also close idle connections ([`Config::idle_timeout`]),
//! drain gracefully on stop ([`Config::drain_timeout`]: stop accepting and
//! reading, send what is already produced, then close), and the readiness
//! ones can run the handler on an offload pool ([`Config::offload_threads`]).
//!
//! The one-thread loops of epoll, coroutine and uring also scale out to
//! several loops, one per thread, each with its own `SO_REUSEPORT` listener
//! ([`Config::threads`], [`bind_loops`], [`serve_loops`]; `loops.rs`): the
//! driver of each loop is the single-loop one, unchanged.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::protocol::Protocol;
use crate::selector::Backend;

mod blocking;
mod busy_poll;
mod coroutine;
mod loops;
mod pool;
mod readiness;
mod threaded;
#[cfg(all(target_os = "linux", feature = "uring"))]
mod uring;

pub use loops::{bind_loops, serve_loops};

/// How long a driver waits before accepting again after an accept error
/// such as `EMFILE`: long enough not to spin, short enough to recover fast.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The I/O models iomux serves with.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Model {
    /// Iterative: one client at a time on the calling thread; a second
    /// client waits in the listen backlog until the first closes.
    Blocking,
    /// A thread per connection, capped at `max_conns`.
    Threaded,
    /// A fixed pool of `workers` threads; connections queue for a free one.
    Pool,
    /// Non-blocking sockets polled in a loop without waiting: burns a core.
    BusyPoll,
    /// Readiness with `select(2)`.
    Select,
    /// Readiness with `poll(2)`.
    Poll,
    /// Readiness with `epoll(7)`.
    Epoll,
    /// Coroutines: async/await tasks on iomux's own executor and reactor.
    Coroutine,
    /// Completions with io_uring (Linux 5.19+, probed at run time; see
    /// [`crate::uring`]).
    Uring,
}

impl Model {
    /// Every model, in the order the seeds introduce them.
    pub const ALL: [Model; 9] = [
        Model::Blocking,
        Model::Threaded,
        Model::Pool,
        Model::BusyPoll,
        Model::Select,
        Model::Poll,
        Model::Epoll,
        Model::Coroutine,
        Model::Uring,
    ];

    /// The name the CLI uses.
    pub fn name(self) -> &'static str {
        match self {
            Model::Blocking => "blocking",
            Model::Threaded => "threaded",
            Model::Pool => "pool",
            Model::BusyPoll => "busy-poll",
            Model::Select => "select",
            Model::Poll => "poll",
            Model::Epoll => "epoll",
            Model::Coroutine => "coroutine",
            Model::Uring => "uring",
        }
    }

    /// What `auto` means on this platform: the readiness model on the
    /// recommended selector backend (epoll on Linux).
    pub fn auto() -> Model {
        Model::for_backend(Backend::recommended())
    }

    /// The readiness model on `backend`.
    pub fn for_backend(backend: Backend) -> Model {
        match backend {
            Backend::Select => Model::Select,
            Backend::Poll => Model::Poll,
            Backend::Epoll => Model::Epoll,
        }
    }

    /// The selector backend of a readiness model.
    pub fn backend(self) -> Option<Backend> {
        match self {
            Model::Select => Some(Backend::Select),
            Model::Poll => Some(Backend::Poll),
            Model::Epoll => Some(Backend::Epoll),
            _ => None,
        }
    }

    /// Whether the model runs on a [`Reactor`](crate::reactor::Reactor),
    /// and so has idle timeouts, graceful drain and signal handling.
    pub fn uses_reactor(self) -> bool {
        matches!(
            self,
            Model::Select | Model::Poll | Model::Epoll | Model::Coroutine
        )
    }

    /// Whether the model serves clients concurrently (all but iterative
    /// blocking).
    pub fn is_concurrent(self) -> bool {
        self != Model::Blocking
    }

    /// Whether the model can serve with several loops, one per thread,
    /// each with its own listener ([`Config::threads`]): epoll, coroutine
    /// and uring. The others run one loop, or are already a thread per
    /// connection or per worker.
    pub fn supports_threads(self) -> bool {
        matches!(self, Model::Epoll | Model::Coroutine | Model::Uring)
    }

    /// Whether the model waits for many connections' events at once, so a
    /// [latency budget](Config::latency_budget) can batch them: select,
    /// poll, epoll, coroutine and uring. The thread models wait per
    /// connection, and busy-poll never waits.
    pub fn supports_latency_budget(self) -> bool {
        self.uses_reactor() || self == Model::Uring
    }

    /// Whether this platform can run the model (for [`Model::Uring`], a
    /// run-time probe: [`crate::uring::probe()`] says why not).
    pub fn is_supported(self) -> bool {
        if self == Model::Uring {
            return crate::uring::probe().is_ok();
        }
        self.backend().is_none_or(Backend::is_supported)
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Model {
    type Err = String;
    /// Parses a model name; `auto` gives [`Model::auto`].
    fn from_str(s: &str) -> Result<Model, String> {
        if s == "auto" {
            return Ok(Model::auto());
        }
        Model::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Model::ALL.iter().map(|m| m.name()).collect();
                format!("unknown model {s:?}; expected auto, {}", names.join(", "))
            })
    }
}

/// A validated server configuration.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The protocol every connection speaks.
    pub protocol: Protocol,
    /// Worker threads of [`Model::Pool`] (at least 1).
    pub workers: usize,
    /// Connections served at once (at least 1), per loop; more are accepted
    /// and closed.
    pub max_conns: usize,
    /// Most output bytes pending per connection before reading from that
    /// peer pauses (backpressure). Non-blocking models only: the blocking
    /// ones write each reply in full before reading again.
    pub max_output: usize,
    /// Bytes read per `recv` (the one scratch buffer of a loop, or of a thread).
    pub read_chunk: usize,
    /// Reactor models: close a connection that has sent nothing and had
    /// nothing sent to it for this long (slowloris clients). `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Reactor models: on stop, how long connections may take to receive
    /// the output already produced for them before they are closed anyway.
    pub drain_timeout: Duration,
    /// Readiness models: run the handler on this many offload threads, so
    /// a slow handler cannot stall the loop (0: on the loop thread).
    pub offload_threads: usize,
    /// Reactor models: stop gracefully on `SIGINT` and `SIGTERM`, caught by
    /// the loop itself (a second signal closes everything at once). For a
    /// process that runs one server: signals belong to the whole process.
    /// With several [`threads`](Config::threads), the calling thread of
    /// [`serve_loops`] catches them for every loop: the first drains them
    /// all, a second one has the signal's previous disposition (by default
    /// it ends the process at once).
    pub catch_signals: bool,
    /// What to do when `accept` fails for lack of fds (`EMFILE`, `ENFILE`).
    pub on_fd_exhaustion: FdExhaustion,
    /// Loops, each on its own thread with its own listener, for the models
    /// that [support it](Model::supports_threads) (at least 1). A
    /// connection stays on the loop that accepted it. [`serve`] runs one;
    /// [`serve_loops`] and [`Server::spawn`] run them all.
    pub threads: usize,
    /// [`Model::Uring`] only: each wait for completions lasts this long
    /// (unless 1,024 completions are in first; at most 10 ms) before the
    /// loop handles what came, so completions are handled
    /// in bigger batches: fewer wake-ups of the loop and of its peers per
    /// round trip, for up to this much more latency. Like a network card's
    /// interrupt coalescing. Needs `IORING_FEAT_MIN_TIMEOUT` (Linux 6.12).
    /// `None` (the default): the loop wakes at the first completion.
    pub uring_batch_wait: Option<Duration>,
    /// The models that [wait for events](Model::supports_latency_budget):
    /// latency the loop may add to batch its wake-ups, adapting to the
    /// load ([`crate::budget`]): nothing while load is light, up to half of
    /// it under sustained load (a sleep before the selector's wait; for
    /// uring, the kernel's minimum wait, Linux 6.12). At most
    /// [`MAX_LATENCY_BUDGET`](Config::MAX_LATENCY_BUDGET). `None` (the
    /// default): never.
    pub latency_budget: Option<Duration>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            protocol: Protocol::Upper,
            workers: 4,
            max_conns: 10_000,
            max_output: 256 * 1024,
            read_chunk: 64 * 1024,
            idle_timeout: None,
            drain_timeout: Duration::from_secs(1),
            offload_threads: 0,
            catch_signals: false,
            on_fd_exhaustion: FdExhaustion::Pause,
            threads: 1,
            uring_batch_wait: None,
            latency_budget: None,
        }
    }
}

impl Config {
    /// The longest [`uring_batch_wait`](Config::uring_batch_wait): past
    /// this, added latency buys no more batching worth having.
    pub const MAX_URING_BATCH_WAIT: Duration = Duration::from_millis(10);

    /// The longest [`latency_budget`](Config::latency_budget).
    pub const MAX_LATENCY_BUDGET: Duration = Duration::from_millis(100);

    /// Checks the values a driver relies on.
    ///
    /// # Errors
    /// `InvalidInput` naming the bad field.
    pub fn validate(&self) -> io::Result<()> {
        let bad = |what: &str| {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                what.to_string(),
            ))
        };
        if self.workers == 0 {
            return bad("workers must be at least 1");
        }
        if self.max_conns == 0 {
            return bad("max_conns must be at least 1");
        }
        if self.max_output == 0 {
            return bad("max_output must be at least 1 byte");
        }
        if self.read_chunk == 0 {
            return bad("read_chunk must be at least 1 byte");
        }
        if self.idle_timeout == Some(Duration::ZERO) {
            return bad("idle_timeout must be longer than zero (or off)");
        }
        if self.threads == 0 {
            return bad("threads must be at least 1");
        }
        if let Some(wait) = self.uring_batch_wait {
            if wait.is_zero() || wait > Config::MAX_URING_BATCH_WAIT {
                return bad("uring_batch_wait must be longer than zero and at most 10 ms (or off)");
            }
        }
        if let Some(budget) = self.latency_budget {
            if budget.is_zero() || budget > Config::MAX_LATENCY_BUDGET {
                return bad("latency_budget must be longer than zero and at most 100 ms (or off)");
            }
            if self.uring_batch_wait.is_some() {
                return bad("latency_budget and uring_batch_wait both set how long uring's waits last; use one (latency_budget adapts to the load, uring_batch_wait is fixed)");
            }
        }
        Ok(())
    }

    /// [`validate`](Config::validate), and whether `model` can follow
    /// every setting: [`threads`](Config::threads) loops, a
    /// [`latency_budget`](Config::latency_budget), and the
    /// [`on_fd_exhaustion`](Config::on_fd_exhaustion) policy.
    ///
    /// ```
    /// use iomux::server::{Config, FdExhaustion, Model};
    ///
    /// let shed = Config { on_fd_exhaustion: FdExhaustion::Shed, ..Config::default() };
    /// assert!(shed.validate_for(Model::Epoll).is_ok());
    /// // A thread per connection: no one loop can pick a connection to close.
    /// let err = shed.validate_for(Model::Threaded).unwrap_err();
    /// assert!(err.to_string().contains("use reserve-fd or pause"));
    /// ```
    ///
    /// # Errors
    /// `InvalidInput` naming the bad field, the models that take `threads`
    /// above 1, or the policy `model` cannot follow.
    pub fn validate_for(&self, model: Model) -> io::Result<()> {
        self.validate()?;
        if self.threads > 1 && !model.supports_threads() {
            let names: Vec<_> = Model::ALL
                .into_iter()
                .filter(|m| m.supports_threads())
                .map(Model::name)
                .collect();
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "model {model} runs one loop; threads above 1 are for {}",
                    names.join(", ")
                ),
            ));
        }
        if self.uring_batch_wait.is_some() && model != Model::Uring {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("uring_batch_wait is for the uring model only, not {model}"),
            ));
        }
        if self.latency_budget.is_some() && !model.supports_latency_budget() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the {model} model has no wait to delay, so latency_budget cannot batch its wake-ups; use select, poll, epoll, coroutine or uring"),
            ));
        }
        if !self.on_fd_exhaustion.supported_by(model) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the {model} model cannot follow --on-fd-exhaustion {}: only select, poll, epoll and uring own every connection in one loop and can pick one to close; use reserve-fd or pause",
                    self.on_fd_exhaustion
                ),
            ));
        }
        Ok(())
    }
}

/// What a server does when `accept` fails because the process or the
/// system is out of fds (`EMFILE`, `ENFILE`).
///
/// The waiting client stays in the kernel's backlog and the listener stays
/// readable, so a level-triggered loop that simply retries would spin at
/// 100% CPU, failing the same way each time (tokio does this). Every policy
/// here stops that; they differ in what the waiting clients see.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum FdExhaustion {
    /// Stop accepting for [`ACCEPT_BACKOFF`], then try again (nginx,
    /// asyncio). Waiting clients stay in the backlog and are served as soon
    /// as fds are free; none is turned away, but they wait, and once the
    /// backlog is full new ones hang in `connect`. The default: it loses no
    /// client that can wait.
    #[default]
    Pause,
    /// Keep one spare fd open (on `/dev/null`). Out of fds, close it, accept
    /// every waiting client and close each at once, then take the spare
    /// back (libuv). Clients learn at once that the server is full (they
    /// read EOF) instead of hanging; they are counted in `refused`. When the
    /// spare cannot be taken back, the driver pauses as [`Pause`](Self::Pause).
    ReserveFd,
    /// Make room: close the connection that has been idle longest, with
    /// nothing pending in either direction, so it loses no byte, and accept
    /// the newcomer (counted in `idle_closed`). With no such connection,
    /// pause as [`Pause`](Self::Pause). Only models that own every
    /// connection in one loop can choose a victim: select, poll, epoll
    /// and uring.
    Shed,
}

impl FdExhaustion {
    /// Every policy, in the order the CLI lists them.
    pub const ALL: [FdExhaustion; 3] = [
        FdExhaustion::Pause,
        FdExhaustion::ReserveFd,
        FdExhaustion::Shed,
    ];

    /// The name the CLI accepts.
    pub fn name(self) -> &'static str {
        match self {
            FdExhaustion::Pause => "pause",
            FdExhaustion::ReserveFd => "reserve-fd",
            FdExhaustion::Shed => "shed",
        }
    }

    /// Whether `model` can follow this policy.
    pub fn supported_by(self, model: Model) -> bool {
        match self {
            FdExhaustion::Pause | FdExhaustion::ReserveFd => true,
            FdExhaustion::Shed => matches!(
                model,
                Model::Select | Model::Poll | Model::Epoll | Model::Uring
            ),
        }
    }
}

impl fmt::Display for FdExhaustion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Parses the CLI's names: `pause`, `reserve-fd`, `shed`.
///
/// ```
/// use iomux::server::FdExhaustion;
///
/// let p: FdExhaustion = "reserve-fd".parse().unwrap();
/// assert_eq!(p, FdExhaustion::ReserveFd);
/// assert_eq!(p.to_string(), "reserve-fd");
/// assert!("drop".parse::<FdExhaustion>().is_err());
/// ```
impl FromStr for FdExhaustion {
    type Err = String;

    fn from_str(s: &str) -> Result<FdExhaustion, String> {
        FdExhaustion::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown policy {s:?}; expected pause, reserve-fd or shed"))
    }
}

/// The spare fd of [`FdExhaustion::ReserveFd`]; empty under other policies.
#[derive(Debug)]
pub(crate) struct Reserve {
    policy: FdExhaustion,
    spare: Option<OwnedFd>,
}

impl Reserve {
    /// Opens the spare fd if `policy` wants one.
    pub(crate) fn new(policy: FdExhaustion) -> io::Result<Reserve> {
        let spare = match policy {
            FdExhaustion::ReserveFd => Some(open_spare()?),
            _ => None,
        };
        Ok(Reserve { policy, spare })
    }

    /// The policy this reserve serves.
    pub(crate) fn policy(&self) -> FdExhaustion {
        self.policy
    }

    /// Under [`FdExhaustion::ReserveFd`], after an accept failed with
    /// `e`: if it was for lack of fds, releases the spare, accepts every
    /// client waiting on `listener` and closes it at once (counted in
    /// `refused`), then takes the spare back. Never blocks, even on a
    /// blocking listener. Returns `true` if the backlog was emptied, so
    /// the caller need not pause; `false` if it must (another policy,
    /// another error, or no spare to release).
    pub(crate) fn turn_away(
        &mut self,
        e: &io::Error,
        listener: RawFd,
        counters: &Counters,
    ) -> bool {
        if self.policy != FdExhaustion::ReserveFd || !crate::sys::is_resource_exhaustion(e) {
            return false;
        }
        let Some(spare) = self.spare.take() else {
            // Lost to another thread last time: try to take it back.
            self.spare = open_spare().ok();
            return false;
        };
        drop(spare);
        let mut emptied = false;
        // Bounded: a flood cannot keep this loop from returning.
        for _ in 0..1024 {
            if !crate::sys::readable_now(listener) {
                emptied = true;
                break;
            }
            match crate::sys::accept_nonblocking(listener) {
                Ok(stream) => {
                    drop(stream); // closed before it is counted
                    Counters::add(&counters.accepted, 1);
                    Counters::add(&counters.refused, 1);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    emptied = true;
                    break;
                }
                Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Still out of fds: another thread took the spare's slot.
                Err(_) => break,
            }
        }
        self.spare = open_spare().ok();
        emptied && self.spare.is_some()
    }
}

/// An fd that costs nothing to hold: `/dev/null`, close-on-exec.
fn open_spare() -> io::Result<OwnedFd> {
    std::fs::File::open("/dev/null").map(OwnedFd::from)
}

/// What one loop of a server has done (the whole server, for the models
/// that run one loop): the figures the bench and the tests read, through
/// [`ServerCounters`]. Shared between the driver's threads, so every field
/// is atomic.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections accepted (refused ones included).
    pub accepted: AtomicU64,
    /// Accepted connections closed at once: over `max_conns`, or an fd
    /// select() cannot watch.
    pub refused: AtomicU64,
    /// Served connections that have closed.
    pub closed: AtomicU64,
    /// Connections closed by a reset or broken pipe.
    pub resets: AtomicU64,
    /// Failed accept calls (`EMFILE` and the like), `WouldBlock` excluded.
    pub accept_errors: AtomicU64,
    /// Bytes received.
    pub bytes_in: AtomicU64,
    /// Bytes sent.
    pub bytes_out: AtomicU64,
    /// `recv`/`read` calls, `WouldBlock` ones included.
    pub recv_calls: AtomicU64,
    /// `send`/`write` calls, `WouldBlock` ones included.
    pub send_calls: AtomicU64,
    /// Selector waits (readiness models only).
    pub wait_calls: AtomicU64,
    /// Calls that changed the selector's kernel interest set (`epoll_ctl`).
    pub ctl_calls: AtomicU64,
    /// Output bytes pending now, over all connections.
    pub pending_output: AtomicU64,
    /// The most output bytes any one connection ever had pending.
    pub peak_conn_output: AtomicU64,
    /// Connections closed by the idle timeout.
    pub idle_closed: AtomicU64,
    /// Handler calls run on the offload pool.
    pub offloaded: AtomicU64,
    /// Callbacks that held the event loop past its stall threshold.
    pub stalls: AtomicU64,
}

impl Counters {
    /// Adds `n` to a counter.
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Copies a selector's wait and `epoll_ctl` counts (loop models): each
    /// loop records into its own `Counters`, so the copy is never another
    /// loop's.
    pub fn record_selector(&self, stats: crate::selector::Stats) {
        self.wait_calls.store(stats.wait_calls, Ordering::Relaxed);
        self.ctl_calls.store(stats.ctl_calls, Ordering::Relaxed);
    }

    /// Connections being served now.
    pub fn active(&self) -> u64 {
        let s = self.snapshot();
        s.accepted - s.refused - s.closed
    }

    /// A plain copy of every counter.
    pub fn snapshot(&self) -> Snapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            accepted: g(&self.accepted),
            refused: g(&self.refused),
            closed: g(&self.closed),
            resets: g(&self.resets),
            accept_errors: g(&self.accept_errors),
            bytes_in: g(&self.bytes_in),
            bytes_out: g(&self.bytes_out),
            recv_calls: g(&self.recv_calls),
            send_calls: g(&self.send_calls),
            wait_calls: g(&self.wait_calls),
            ctl_calls: g(&self.ctl_calls),
            pending_output: g(&self.pending_output),
            peak_conn_output: g(&self.peak_conn_output),
            idle_closed: g(&self.idle_closed),
            offloaded: g(&self.offloaded),
            stalls: g(&self.stalls),
        }
    }
}

/// The counters of a server: one [`Counters`] per loop, read as one.
///
/// Each loop counts only the connections it accepted, and records its own
/// selector's figures, so nothing needs a lock and a per-loop figure (how
/// connections spread over the loops) is there to read;
/// [`snapshot`](Self::snapshot) adds the loops up. Cloning shares them.
#[derive(Clone, Debug)]
pub struct ServerCounters {
    loops: Arc<[Arc<Counters>]>,
}

impl ServerCounters {
    /// Zeroed counters for `loops` loops (at least one).
    pub fn new(loops: usize) -> ServerCounters {
        ServerCounters {
            loops: (0..loops.max(1))
                .map(|_| Arc::new(Counters::default()))
                .collect(),
        }
    }

    /// Each loop's counters, in the order of the listeners.
    pub fn loops(&self) -> &[Arc<Counters>] {
        &self.loops
    }

    /// Every loop's counters added up ([`Snapshot::merge`]).
    pub fn snapshot(&self) -> Snapshot {
        self.loops
            .iter()
            .map(|c| c.snapshot())
            .fold(Snapshot::default(), Snapshot::merge)
    }

    /// Connections being served now, by every loop.
    pub fn active(&self) -> u64 {
        self.loops.iter().map(|c| c.active()).sum()
    }
}

/// A copy of [`Counters`] at one moment.
#[allow(missing_docs)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub accepted: u64,
    pub refused: u64,
    pub closed: u64,
    pub resets: u64,
    pub accept_errors: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub recv_calls: u64,
    pub send_calls: u64,
    pub wait_calls: u64,
    pub ctl_calls: u64,
    pub pending_output: u64,
    pub peak_conn_output: u64,
    pub idle_closed: u64,
    pub offloaded: u64,
    pub stalls: u64,
}

impl Snapshot {
    /// Two loops' figures as one server's: every count added, and
    /// `peak_conn_output`, a maximum over connections, the larger one.
    pub fn merge(self, other: Snapshot) -> Snapshot {
        Snapshot {
            accepted: self.accepted + other.accepted,
            refused: self.refused + other.refused,
            closed: self.closed + other.closed,
            resets: self.resets + other.resets,
            accept_errors: self.accept_errors + other.accept_errors,
            bytes_in: self.bytes_in + other.bytes_in,
            bytes_out: self.bytes_out + other.bytes_out,
            recv_calls: self.recv_calls + other.recv_calls,
            send_calls: self.send_calls + other.send_calls,
            wait_calls: self.wait_calls + other.wait_calls,
            ctl_calls: self.ctl_calls + other.ctl_calls,
            pending_output: self.pending_output + other.pending_output,
            peak_conn_output: self.peak_conn_output.max(other.peak_conn_output),
            idle_closed: self.idle_closed + other.idle_closed,
            offloaded: self.offloaded + other.offloaded,
            stalls: self.stalls + other.stalls,
        }
    }
}

/// Tells a running server to stop accepting and return.
///
/// Backed by a pipe that becomes readable, and stays readable, once
/// [`stop`](Stop::stop) is called: readiness drivers watch it in their
/// selector, blocking drivers `poll` it beside the listener, busy-poll reads
/// the flag. No driver wakes up on an interval to check.
#[derive(Clone, Debug)]
pub struct Stop {
    inner: Arc<StopInner>,
}

#[derive(Debug)]
struct StopInner {
    flag: AtomicBool,
    read: OwnedFd,
    write: OwnedFd,
}

impl Stop {
    /// A stop signal not yet given.
    ///
    /// # Errors
    /// The OS error if no pipe can be created.
    pub fn new() -> io::Result<Stop> {
        let (read, write) = crate::sys::pipe()?;
        Ok(Stop {
            inner: Arc::new(StopInner {
                flag: AtomicBool::new(false),
                read,
                write,
            }),
        })
    }

    /// Asks every driver holding a clone to stop. Idempotent.
    pub fn stop(&self) {
        if !self.inner.flag.swap(true, Ordering::AcqRel) {
            // The pipe is fresh and never drained: one byte always fits.
            let _ = crate::sys::write(&self.inner.write, &[1]);
        }
    }

    /// Whether [`stop`](Stop::stop) was called.
    pub fn is_stopped(&self) -> bool {
        self.inner.flag.load(Ordering::Acquire)
    }

    /// An fd that is readable once stopped; never read it.
    pub fn fd(&self) -> RawFd {
        self.inner.read.as_raw_fd()
    }

    /// Blocks until `fd` is readable or the stop is given. Returns `true` if
    /// stopped. Blocking drivers call it before `accept`.
    ///
    /// # Errors
    /// The OS error of `poll`, `EINTR` excluded.
    pub fn wait_readable(&self, fd: RawFd) -> io::Result<bool> {
        let mut fds = [
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            // SAFETY: `fds` is a valid array of two pollfds.
            let res = unsafe { crate::sys::syscall!(poll(fds.as_mut_ptr(), 2, -1)) };
            match res {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
                Ok(_) => return Ok(self.is_stopped()),
            }
        }
    }
}

/// Serves `listener` with `model` on the calling thread until `stop` is
/// given, then closes the listener and returns. Connections still open are
/// closed by the readiness and busy-poll drivers; thread-based drivers let
/// each connection thread finish with its client.
///
/// One loop: [`serve_loops`] runs [`Config::threads`] of them.
///
/// # Errors
/// An invalid `config` (`threads` above 1 included), a model this platform
/// lacks, or a failure to set up (creating the selector). Errors of single
/// connections are never returned: they close that connection and are
/// counted.
pub fn serve(
    model: Model,
    listener: TcpListener,
    config: &Config,
    stop: &Stop,
    counters: &Arc<Counters>,
) -> io::Result<()> {
    config.validate_for(model)?;
    if config.threads != 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "serve runs one loop; for threads above 1, bind with bind_loops and call serve_loops",
        ));
    }
    match model {
        Model::Blocking => blocking::serve(listener, config, stop, counters),
        Model::Threaded => threaded::serve(listener, config, stop, counters),
        Model::Pool => pool::serve(listener, config, stop, counters),
        Model::BusyPoll => busy_poll::serve(listener, config, stop, counters),
        Model::Select | Model::Poll | Model::Epoll => {
            let backend = model.backend().expect("readiness model");
            readiness::serve(backend, listener, config, stop, counters)
        }
        Model::Coroutine => coroutine::serve(listener, config, stop, counters),
        #[cfg(all(target_os = "linux", feature = "uring"))]
        Model::Uring => uring::serve(listener, config, stop, counters),
        #[cfg(not(all(target_os = "linux", feature = "uring")))]
        Model::Uring => {
            drop((listener, stop, counters));
            Err(crate::uring::Unavailable::NotBuilt.into())
        }
    }
}

/// A server running on its own thread (and one thread per loop, with
/// [`Config::threads`] above 1): what tests and the bench start.
#[derive(Debug)]
pub struct Server {
    model: Model,
    addr: SocketAddr,
    stop: Stop,
    counters: ServerCounters,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port), once per loop of
    /// [`Config::threads`], and serves it with `model` on new threads.
    ///
    /// # Errors
    /// The bind error, or `config.validate_for(model)`'s.
    pub fn spawn(model: Model, addr: SocketAddr, config: Config) -> io::Result<Server> {
        config.validate_for(model)?;
        let listeners = bind_loops(addr, config.threads)?;
        let addr = listeners[0].local_addr()?;
        let stop = Stop::new()?;
        let counters = ServerCounters::new(config.threads);
        let thread = {
            let (stop, counters) = (stop.clone(), counters.clone());
            std::thread::Builder::new()
                .name(format!("iomux-{model}"))
                .spawn(move || serve_loops(model, listeners, &config, &stop, &counters))?
        };
        Ok(Server {
            model,
            addr,
            stop,
            counters,
            thread: Some(thread),
        })
    }

    /// The model serving.
    pub fn model(&self) -> Model {
        self.model
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The live counters, per loop and in all.
    pub fn counters(&self) -> &ServerCounters {
        &self.counters
    }

    /// Stops the server and waits for its thread.
    ///
    /// # Errors
    /// The error `serve` returned; a panic in the driver becomes an error.
    pub fn shutdown(mut self) -> io::Result<()> {
        self.stop.stop();
        let thread = self.thread.take().expect("joined once");
        thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("server thread panicked")))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether an I/O error means the peer went away (reset, broken pipe):
/// closed quietly and counted in `resets`.
pub fn is_peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
    )
}

/// Handles a failed `accept` on `listener` for the thread-based drivers:
/// counts it and, for anything but `WouldBlock` and `EINTR`, either turns
/// the waiting clients away ([`FdExhaustion::ReserveFd`]) or sleeps
/// [`ACCEPT_BACKOFF`], so that `EMFILE` cannot make the loop spin. The
/// error is never fatal: the caller accepts again.
pub(crate) fn accept_failed(
    e: &io::Error,
    listener: RawFd,
    reserve: &mut Reserve,
    counters: &Counters,
) {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => {}
        _ => {
            Counters::add(&counters.accept_errors, 1);
            if !reserve.turn_away(e, listener, counters) {
                std::thread::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}
