//! Readiness multiplexing: one API over `select(2)`, `poll(2)` and `epoll(7)`.
//!
//! A [`Selector`] watches file descriptors and reports which are ready to read
//! or write. It is the mechanism under the select, poll and epoll servers and
//! under the event loop, and it is the lesson of the seeds in one type: the
//! three backends answer the same question at very different costs.
//!
//! # The backends and what each costs
//!
//! | backend | per-call cost | limit | trigger modes |
//! |---|---|---|---|
//! | [`Backend::Select`] | copies two bitmaps into the kernel and back, and both sides scan them bit by bit up to the highest fd | fds below `FD_SETSIZE` (1024) only | level, oneshot (emulated) |
//! | [`Backend::Poll`] | copies the whole `pollfd` array in and out; the kernel polls every entry | none but `RLIMIT_NOFILE` | level, oneshot (emulated) |
//! | [`Backend::Epoll`] | the interest set lives in the kernel; each wait returns only the ready list, so cost follows the number of *ready* fds, not watched ones | none but `RLIMIT_NOFILE` | level, edge, oneshot |
//!
//! So select and poll cost O(watched) per call and epoll O(ready): with one
//! ready socket among 1,000 watched, epoll does a fraction of the work. The
//! criterion benchmark `select_cost` measures it (`cargo bench -p iomux`).
//! Registering with epoll costs a syscall (`epoll_ctl`) where select and poll
//! only update user-space arrays; [`Stats::ctl_calls`] counts them.
//!
//! Which behaviour is shown by which test, all in `tests/selector.rs`, run
//! once per backend:
//! `readable_after_peer_writes`, `writable_on_fresh_socket`,
//! `read_closed_on_peer_close`, `read_closed_on_reset`,
//! `reregister_switches_interest`, `deregister_stops_events`,
//! `timeout_waits_at_least`, `waker_wakes_blocked_select`,
//! `many_sockets_only_ready_reported`, `level_reports_again`,
//! `edge_reports_once` and `oneshot_reports_once_until_rearmed`; the
//! select-only `select_refuses_fd_past_fd_setsize`.
//!
//! # Portability
//!
//! * Readiness is a hint: a readable event can be spurious. Read until
//!   `WouldBlock` with a non-blocking fd, and treat `WouldBlock` as "not yet".
//! * In edge mode ([`Mode::Edge`]) an event is reported once per change: a
//!   reader that stops before `WouldBlock` gets no second event for the data it
//!   left behind.
//! * `select` cannot tell a hang-up from readable data; [`Event::is_read_closed`]
//!   is only set where [`Backend::reports_hangup`] is true, and elsewhere the
//!   next read returns 0.
//! * A file descriptor must be deregistered before it is closed. A closed fd
//!   still registered with select or poll is reported as an error event; epoll
//!   forgets it silently when its last reference closes.
//!
//! # Examples
//!
//! ```no_run
//! use iomux::selector::{Events, Interest, Selector, Token};
//! use std::net::TcpListener;
//! use std::os::fd::AsRawFd;
//!
//! let listener = TcpListener::bind("127.0.0.1:0")?;
//! listener.set_nonblocking(true)?;
//! let mut selector = Selector::default_backend()?;
//! selector.register(listener.as_raw_fd(), Token(0), Interest::READABLE)?;
//! let mut events = Events::with_capacity(256);
//! selector.select(&mut events, None)?;
//! for event in events.iter() {
//!     assert_eq!(event.token(), Token(0));
//!     let (conn, peer) = listener.accept()?;
//!     println!("{peer} connected");
//!     # drop(conn);
//! }
//! # std::io::Result::Ok(())
//! ```

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(any(target_os = "linux", target_os = "android"))]
mod epoll;
mod poll;
mod select;

/// Identifies a registration; returned in every [`Event`] for it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Token(pub usize);

/// What readiness to watch for. Never empty.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Interest(u8);

const READ: u8 = 0b01;
const WRITE: u8 = 0b10;

impl Interest {
    /// Ready to read (or to accept, for a listener).
    pub const READABLE: Interest = Interest(READ);
    /// Ready to write.
    pub const WRITABLE: Interest = Interest(WRITE);
    /// Both readable and writable.
    pub const BOTH: Interest = Interest(READ | WRITE);

    /// Combines two interests.
    #[must_use]
    pub const fn add(self, other: Interest) -> Interest {
        Interest(self.0 | other.0)
    }

    /// Removes `other`; `None` if nothing would be left.
    #[must_use]
    pub const fn remove(self, other: Interest) -> Option<Interest> {
        match self.0 & !other.0 {
            0 => None,
            bits => Some(Interest(bits)),
        }
    }

    /// Whether readable readiness is watched.
    pub const fn is_readable(self) -> bool {
        self.0 & READ != 0
    }

    /// Whether writable readiness is watched.
    pub const fn is_writable(self) -> bool {
        self.0 & WRITE != 0
    }
}

impl std::ops::BitOr for Interest {
    type Output = Interest;
    fn bitor(self, rhs: Interest) -> Interest {
        self.add(rhs)
    }
}

/// How often a registration reports readiness.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// Reported at every wait for as long as the fd is ready. All backends.
    #[default]
    Level,
    /// Reported when readiness changes (new data, new space); epoll only.
    Edge,
    /// Reported once, then disabled until rearmed with `reregister`.
    /// Native on epoll, emulated in user space on select and poll.
    Oneshot,
}

/// The readiness mechanisms iomux implements.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `select(2)`: portable everywhere, limited to fds below `FD_SETSIZE`.
    Select,
    /// `poll(2)`: no fd limit, but every call passes and scans the whole set.
    Poll,
    /// `epoll(7)`: Linux; the interest set lives in the kernel.
    Epoll,
}

impl Backend {
    /// Every backend, in the order the seeds introduce them.
    pub const ALL: [Backend; 3] = [Backend::Select, Backend::Poll, Backend::Epoll];

    /// The backends this platform offers.
    pub fn supported() -> Vec<Backend> {
        Self::ALL.into_iter().filter(|b| b.is_supported()).collect()
    }

    /// Whether this platform offers the backend.
    pub fn is_supported(self) -> bool {
        match self {
            // select and poll are POSIX: every Unix has them.
            Backend::Select | Backend::Poll => true,
            // epoll is a Linux interface (Android shares the kernel).
            Backend::Epoll => cfg!(any(target_os = "linux", target_os = "android")),
        }
    }

    /// The best backend this platform offers, as [`Selector::default_backend`]
    /// uses. epoll where it exists; otherwise poll, because select is capped at
    /// `FD_SETSIZE` and costs as much per call.
    pub fn recommended() -> Backend {
        if Backend::Epoll.is_supported() {
            Backend::Epoll
        } else {
            Backend::Poll
        }
    }

    /// The backend's name, as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Select => "select",
            Backend::Poll => "poll",
            Backend::Epoll => "epoll",
        }
    }

    /// Whether [`Mode::Edge`] is available.
    pub fn supports_edge(self) -> bool {
        self == Backend::Epoll
    }

    /// Whether [`Mode::Oneshot`] is available (natively or emulated).
    pub fn supports_oneshot(self) -> bool {
        true
    }

    /// Whether a peer's hang-up is reported as [`Event::is_read_closed`].
    /// select only says "readable"; the following read returns 0.
    pub fn reports_hangup(self) -> bool {
        self != Backend::Select
    }

    /// The highest fd number plus one that the backend can watch, if limited.
    pub fn fd_limit(self) -> Option<usize> {
        match self {
            Backend::Select => Some(select::FD_SETSIZE),
            _ => None,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Backend, String> {
        Backend::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| {
                format!("unknown selector backend {s:?}; expected select, poll or epoll")
            })
    }
}

/// Why the selector refused a request. Carried inside the returned
/// [`io::Error`]; get it back with [`SelectorError::of`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SelectorError {
    /// The fd is already registered; use `reregister` to change it.
    AlreadyRegistered(RawFd),
    /// The fd is not registered with this selector.
    NotRegistered(RawFd),
    /// The fd is negative or not open.
    BadFd(RawFd),
    /// select(2) cannot watch an fd at or above `FD_SETSIZE`.
    FdSetSize {
        /// The refused fd.
        fd: RawFd,
        /// `FD_SETSIZE`.
        limit: usize,
    },
    /// The backend does not offer this mode.
    Unsupported {
        /// The backend asked.
        backend: Backend,
        /// The mode it lacks.
        mode: Mode,
    },
    /// The selector already has a waker.
    WakerExists,
}

impl SelectorError {
    /// The `SelectorError` inside an error returned by a [`Selector`], if any.
    pub fn of(err: &io::Error) -> Option<&SelectorError> {
        err.get_ref()?.downcast_ref()
    }

    fn kind(&self) -> io::ErrorKind {
        match self {
            SelectorError::AlreadyRegistered(_) | SelectorError::WakerExists => {
                io::ErrorKind::AlreadyExists
            }
            SelectorError::NotRegistered(_) => io::ErrorKind::NotFound,
            SelectorError::BadFd(_) | SelectorError::FdSetSize { .. } => {
                io::ErrorKind::InvalidInput
            }
            SelectorError::Unsupported { .. } => io::ErrorKind::Unsupported,
        }
    }
}

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SelectorError::AlreadyRegistered(fd) => {
                write!(f, "fd {fd} is already registered; use reregister to change its interest")
            }
            SelectorError::NotRegistered(fd) => write!(f, "fd {fd} is not registered"),
            SelectorError::BadFd(fd) => write!(f, "fd {fd} is not an open file descriptor"),
            SelectorError::FdSetSize { fd, limit } => write!(
                f,
                "fd {fd} exceeds select()'s FD_SETSIZE limit of {limit}; use poll or epoll"
            ),
            SelectorError::Unsupported { backend, mode } => write!(
                f,
                "{backend} does not support {mode:?}-triggered registrations; use epoll, or Mode::Level"
            ),
            SelectorError::WakerExists => f.write_str("this selector already has a waker"),
        }
    }
}

impl std::error::Error for SelectorError {}

impl From<SelectorError> for io::Error {
    fn from(e: SelectorError) -> io::Error {
        io::Error::new(e.kind(), e)
    }
}

/// Readiness of one registration, as returned by [`Selector::select`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Event {
    token: Token,
    flags: u8,
}

impl Event {
    pub(crate) const READABLE: u8 = 0b0001;
    pub(crate) const WRITABLE: u8 = 0b0010;
    pub(crate) const ERROR: u8 = 0b0100;
    pub(crate) const READ_CLOSED: u8 = 0b1000;

    pub(crate) fn new(token: Token, flags: u8) -> Event {
        Event { token, flags }
    }

    /// An event with no readiness, for a driver's own bookkeeping.
    pub(crate) const fn none() -> Event {
        Event {
            token: Token(usize::MAX),
            flags: 0,
        }
    }

    /// The token the fd was registered with.
    pub fn token(&self) -> Token {
        self.token
    }
    /// Data (or a connection, or EOF) is there to read.
    pub fn is_readable(&self) -> bool {
        self.flags & Self::READABLE != 0
    }
    /// There is room to write.
    pub fn is_writable(&self) -> bool {
        self.flags & Self::WRITABLE != 0
    }
    /// The fd has a pending error (read it with `SO_ERROR` or the next I/O
    /// call), or is closed while still registered.
    pub fn is_error(&self) -> bool {
        self.flags & Self::ERROR != 0
    }
    /// The peer hung up its sending side (or the whole connection):
    /// reads will return what is buffered, then 0. Never set by select.
    pub fn is_read_closed(&self) -> bool {
        self.flags & Self::READ_CLOSED != 0
    }
}

/// A reusable buffer of events filled by [`Selector::select`].
#[derive(Debug)]
pub struct Events {
    list: Vec<Event>,
    capacity: usize,
}

impl Events {
    /// A buffer that receives at most `capacity` events per call (at least 1).
    /// Ready fds beyond it are reported by the next call.
    pub fn with_capacity(capacity: usize) -> Events {
        let capacity = capacity.max(1);
        Events {
            list: Vec::with_capacity(capacity),
            capacity,
        }
    }
    /// The most events one call returns.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// The events of the last call.
    pub fn iter(&self) -> std::slice::Iter<'_, Event> {
        self.list.iter()
    }
    /// Number of events of the last call.
    pub fn len(&self) -> usize {
        self.list.len()
    }
    /// Whether the last call returned no event (it timed out).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
    /// Forgets the events.
    pub fn clear(&mut self) {
        self.list.clear();
    }
}

impl<'a> IntoIterator for &'a Events {
    type Item = &'a Event;
    type IntoIter = std::slice::Iter<'a, Event>;
    fn into_iter(self) -> Self::IntoIter {
        self.list.iter()
    }
}

/// What a selector has done so far: the figures the bench reports.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Kernel wait calls (select, poll, epoll_wait), retries included.
    pub wait_calls: u64,
    /// Events returned to the caller.
    pub events: u64,
    /// Kernel calls that changed the interest set (epoll_ctl); 0 for select
    /// and poll, whose interest set lives in user space.
    pub ctl_calls: u64,
    /// Fds registered now.
    pub registered: usize,
}

/// The contract each backend file implements; the front type [`Selector`]
/// dispatches to it through an enum and holds all portable policy
/// (validation of modes, timeout rounding, EINTR retry, the waker, counters).
pub(crate) trait Sys {
    /// Adds `fd`. Errors: `AlreadyRegistered`, `BadFd`, `FdSetSize`.
    fn register(
        &mut self,
        fd: RawFd,
        token: Token,
        interest: Interest,
        mode: Mode,
    ) -> io::Result<()>;
    /// Replaces the token, interest and mode of `fd`; rearms a oneshot.
    fn reregister(
        &mut self,
        fd: RawFd,
        token: Token,
        interest: Interest,
        mode: Mode,
    ) -> io::Result<()>;
    /// Removes `fd`. Errors: `NotRegistered`.
    fn deregister(&mut self, fd: RawFd) -> io::Result<()>;
    /// One kernel wait of at most `timeout_ms` (-1: forever); appends at most
    /// `max` events to `out`. Returns `EINTR` as an error for the front to retry.
    fn wait(&mut self, out: &mut Vec<Event>, max: usize, timeout_ms: i32) -> io::Result<()>;
    /// Kernel calls that changed the interest set so far.
    fn ctl_calls(&self) -> u64 {
        0
    }
}

enum Inner {
    Select(select::Select),
    Poll(poll::Poll),
    #[cfg(any(target_os = "linux", target_os = "android"))]
    Epoll(epoll::Epoll),
}

macro_rules! dispatch {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            Inner::Select($s) => $e,
            Inner::Poll($s) => $e,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Inner::Epoll($s) => $e,
        }
    };
}

/// Watches file descriptors for readiness with one of the [`Backend`]s.
///
/// The selector does not own the fds it watches: deregister an fd before you
/// close it. Misuse (a closed or reused fd) yields wrong or error events,
/// never undefined behaviour.
pub struct Selector {
    backend: Backend,
    inner: Inner,
    waker: Option<(Token, Arc<WakerInner>)>,
    wait_calls: u64,
    events: u64,
    registered: usize,
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Selector")
            .field("backend", &self.backend)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Selector {
    /// A selector on the given backend.
    ///
    /// # Errors
    /// `Unsupported` if the platform lacks the backend; the OS error if the
    /// kernel object (the epoll instance) cannot be created, e.g. `EMFILE`.
    pub fn new(backend: Backend) -> io::Result<Selector> {
        let inner = match backend {
            Backend::Select => Inner::Select(select::Select::new()),
            Backend::Poll => Inner::Poll(poll::Poll::new()),
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Backend::Epoll => Inner::Epoll(epoll::Epoll::new()?),
            #[allow(unreachable_patterns)]
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("the {backend} backend is not available on this platform; use poll"),
                ))
            }
        };
        Ok(Selector {
            backend,
            inner,
            waker: None,
            wait_calls: 0,
            events: 0,
            registered: 0,
        })
    }

    /// A selector on [`Backend::recommended`]: the `DefaultSelector`.
    pub fn default_backend() -> io::Result<Selector> {
        Selector::new(Backend::recommended())
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether this selector's backend offers [`Mode::Edge`].
    pub fn supports_edge(&self) -> bool {
        self.backend.supports_edge()
    }

    /// Whether this selector's backend offers [`Mode::Oneshot`].
    pub fn supports_oneshot(&self) -> bool {
        self.backend.supports_oneshot()
    }

    fn check_mode(&self, mode: Mode) -> io::Result<()> {
        let ok = match mode {
            Mode::Level => true,
            Mode::Edge => self.supports_edge(),
            Mode::Oneshot => self.supports_oneshot(),
        };
        if ok {
            Ok(())
        } else {
            Err(SelectorError::Unsupported {
                backend: self.backend,
                mode,
            }
            .into())
        }
    }

    /// Watches `fd` for `interest`, level-triggered; events carry `token`.
    ///
    /// # Errors
    /// [`SelectorError::AlreadyRegistered`], [`SelectorError::BadFd`],
    /// [`SelectorError::FdSetSize`] (select only); the selector is unchanged.
    pub fn register(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        self.register_with_mode(fd, token, interest, Mode::Level)
    }

    /// Like [`register`](Self::register), with a trigger [`Mode`].
    ///
    /// # Errors
    /// As `register`, and [`SelectorError::Unsupported`] for a mode the
    /// backend lacks.
    pub fn register_with_mode(
        &mut self,
        fd: RawFd,
        token: Token,
        interest: Interest,
        mode: Mode,
    ) -> io::Result<()> {
        self.check_mode(mode)?;
        if fd < 0 {
            return Err(SelectorError::BadFd(fd).into());
        }
        dispatch!(&mut self.inner, s => s.register(fd, token, interest, mode))?;
        self.registered += 1;
        Ok(())
    }

    /// Changes the token and interest of a registered fd, level-triggered.
    /// Also rearms a oneshot registration.
    ///
    /// # Errors
    /// [`SelectorError::NotRegistered`].
    pub fn reregister(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        self.reregister_with_mode(fd, token, interest, Mode::Level)
    }

    /// Like [`reregister`](Self::reregister), with a trigger [`Mode`].
    ///
    /// # Errors
    /// As `reregister`, and [`SelectorError::Unsupported`].
    pub fn reregister_with_mode(
        &mut self,
        fd: RawFd,
        token: Token,
        interest: Interest,
        mode: Mode,
    ) -> io::Result<()> {
        self.check_mode(mode)?;
        dispatch!(&mut self.inner, s => s.reregister(fd, token, interest, mode))
    }

    /// Stops watching `fd`.
    ///
    /// # Errors
    /// [`SelectorError::NotRegistered`].
    pub fn deregister(&mut self, fd: RawFd) -> io::Result<()> {
        dispatch!(&mut self.inner, s => s.deregister(fd))?;
        self.registered -= 1;
        Ok(())
    }

    /// Waits until at least one registered fd is ready or `timeout` passes,
    /// and fills `events` (cleared first). `None` waits forever; a zero
    /// timeout never blocks; any other timeout is rounded *up* to the
    /// backend's resolution (1 ms), so a short timeout never becomes a busy
    /// loop. A signal (`EINTR`) does not end the wait early: it is retried with
    /// the time that remains. Returns with no events when the timeout passes.
    ///
    /// # Errors
    /// OS errors other than `EINTR` from the wait call.
    pub fn select(&mut self, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
        events.list.clear();
        let deadline = match timeout {
            Some(t) if !t.is_zero() => Instant::now().checked_add(t),
            _ => None,
        };
        let mut timeout_ms = timeout.map_or(-1, round_up_ms);
        loop {
            self.wait_calls += 1;
            let res = dispatch!(&mut self.inner, s => s.wait(&mut events.list, events.capacity, timeout_ms));
            match res {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    events.list.clear();
                    if let Some(deadline) = deadline {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            return Ok(());
                        }
                        timeout_ms = round_up_ms(left);
                    } else if timeout.is_some() {
                        // A zero timeout never blocks: report nothing.
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
                Ok(()) => break,
            }
        }
        if let Some((token, waker)) = &self.waker {
            if events.list.iter().any(|e| e.token == *token) {
                waker.drain();
            }
        }
        self.events += events.list.len() as u64;
        Ok(())
    }

    /// Creates the selector's [`Waker`]; its wake-ups arrive as readable
    /// events carrying `token`. One per selector.
    ///
    /// # Errors
    /// [`SelectorError::WakerExists`]; the OS error if no eventfd or pipe
    /// can be created.
    pub fn waker(&mut self, token: Token) -> io::Result<Waker> {
        if self.waker.is_some() {
            return Err(SelectorError::WakerExists.into());
        }
        let inner = Arc::new(WakerInner::new()?);
        self.register(inner.read_fd(), token, Interest::READABLE)?;
        self.waker = Some((token, inner.clone()));
        Ok(Waker { inner })
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        Stats {
            wait_calls: self.wait_calls,
            events: self.events,
            ctl_calls: dispatch!(&self.inner, s => s.ctl_calls()),
            registered: self.registered,
        }
    }
}

/// Milliseconds for a kernel timeout, rounded up, capped at `i32::MAX`.
fn round_up_ms(t: Duration) -> i32 {
    let ms = t.as_nanos().div_ceil(1_000_000);
    ms.min(i32::MAX as u128) as i32
}

/// Wakes a [`Selector`] blocked in `select` from any thread.
///
/// Cheap to clone; wakes are coalesced: many `wake` calls before the selector
/// runs cost one write and produce one event.
#[derive(Clone, Debug)]
pub struct Waker {
    inner: Arc<WakerInner>,
}

impl Waker {
    /// Makes the selector's current or next `select` return with the waker's
    /// token.
    ///
    /// # Errors
    /// The OS error of the write, which cannot fail for a live eventfd/pipe.
    pub fn wake(&self) -> io::Result<()> {
        self.inner.wake()
    }
}

#[derive(Debug)]
struct WakerInner {
    /// Set by `wake`, cleared by the selector after it drains: a wake that
    /// finds it set knows a wake-up is already on its way (or the selector is
    /// still draining and returns to its caller next) and writes nothing.
    pending: AtomicBool,
    read: OwnedFd,
    /// `None` where one eventfd serves as both ends.
    write: Option<OwnedFd>,
}

impl WakerInner {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn new() -> io::Result<WakerInner> {
        Ok(WakerInner {
            pending: AtomicBool::new(false),
            read: crate::sys::eventfd()?,
            write: None,
        })
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn new() -> io::Result<WakerInner> {
        let (read, write) = crate::sys::pipe()?;
        Ok(WakerInner {
            pending: AtomicBool::new(false),
            read,
            write: Some(write),
        })
    }

    fn read_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    fn wake(&self) -> io::Result<()> {
        if self.pending.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let fd = self.write.as_ref().unwrap_or(&self.read);
        match crate::sys::write(fd, &1u64.to_ne_bytes()) {
            // A full eventfd counter or pipe is already readable: the wake is on its way.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
            Ok(_) => Ok(()),
        }
    }

    fn drain(&self) {
        let mut buf = [0u8; 64];
        // An eventfd read resets the counter at once; a pipe may need more.
        while let Ok(n) = crate::sys::read(&self.read, &mut buf) {
            if n < buf.len() || self.write.is_none() {
                break;
            }
        }
        // Only now: clearing before the read let a wake in between write,
        // have its write consumed here, and leave `pending` set with nothing
        // to read, so every later wake was skipped and lost.
        self.pending.swap(false, Ordering::AcqRel);
    }
}
