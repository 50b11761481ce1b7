//! Accepting connections, the same way in every driver: one
//! [`Acceptor`] per loop (or acceptor thread) decides what each `accept`
//! outcome means.
//!
//! * a new connection is counted in `accepted`, gets `TCP_NODELAY` (replies
//!   are whole messages: Nagle must not hold them back) and is handed over
//!   non-blocking and close-on-exec;
//! * past [`Config::max_conns`] live connections it is closed at once and
//!   counted in `refused`, so the kernel's backlog never fills with clients
//!   that wait forever;
//! * `ECONNABORTED` (the client gave up between its handshake and our
//!   accept) and `EINTR` mean "take the next one"; `ECONNABORTED` is
//!   counted in `accept_errors`;
//! * any other failure (`EMFILE`, `ENFILE`, ...) is counted, and handled as
//!   [`Config::on_fd_exhaustion`] says ([`FdExhaustion`]): the waiting
//!   clients are turned away with the spare fd, or the driver must make
//!   room or pause for [`ACCEPT_BACKOFF`]. Nothing here ever makes a loop
//!   spin or a server exit.

use std::fmt;
use std::io;
use std::net::TcpStream;
use std::os::fd::{OwnedFd, RawFd};
use std::str::FromStr;
use std::time::Duration;

use super::{Config, Counters, Model};

/// How long a driver waits before accepting again after an accept error
/// such as `EMFILE`: long enough not to spin, short enough to recover fast.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

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

    /// Whether `model` can follow this policy (its row of the
    /// [capabilities table](super::Capabilities)).
    pub fn supported_by(self, model: Model) -> bool {
        match self {
            FdExhaustion::Pause | FdExhaustion::ReserveFd => true,
            FdExhaustion::Shed => model.capabilities().shed,
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

/// What one [`Acceptor::accept`] gave.
#[derive(Debug)]
pub(crate) enum Accepted {
    /// A connection to serve: non-blocking, `TCP_NODELAY`, counted.
    Conn(TcpStream),
    /// Nobody is waiting (`WouldBlock`): wait for the listener again.
    Empty,
    /// Out of fds, and the waiting clients were turned away with the spare
    /// fd ([`FdExhaustion::ReserveFd`]), counted. A driver that waits for
    /// the listener's readiness waits again; one that does not (busy-poll,
    /// uring's re-armed accept) must pause: out of fds, the kernel's
    /// `accept` fails at once even with nobody waiting.
    TurnedAway,
    /// Nothing to serve from this call (a client refused over
    /// `max_conns`, one that gave up, `EINTR`): accept again.
    Again,
    /// Out of fds (or another failure), counted: make room
    /// ([`FdExhaustion::Shed`], where the driver can) or pause accepting
    /// for [`ACCEPT_BACKOFF`]. Retrying at once would fail the same way.
    Exhausted(io::Error),
}

/// The accept policy of one loop, or of one acceptor thread.
#[derive(Debug)]
pub(crate) struct Acceptor {
    max_conns: usize,
    reserve: Reserve,
}

impl Acceptor {
    /// The policy `config` asks for (opens the spare fd of
    /// [`FdExhaustion::ReserveFd`]).
    pub(crate) fn new(config: &Config) -> io::Result<Acceptor> {
        Ok(Acceptor {
            max_conns: config.max_conns,
            reserve: Reserve::new(config.on_fd_exhaustion)?,
        })
    }

    /// The fd-exhaustion policy.
    pub(crate) fn policy(&self) -> FdExhaustion {
        self.reserve.policy()
    }

    /// One `accept` on the non-blocking `listener`, while `live`
    /// connections are served (pass 0 where something else bounds them).
    pub(crate) fn accept(&mut self, listener: RawFd, live: usize, counters: &Counters) -> Accepted {
        match crate::sys::accept_nonblocking(listener) {
            Ok(stream) => match self.admit(stream, live, counters) {
                Some(stream) => Accepted::Conn(stream),
                None => Accepted::Again,
            },
            Err(e) => self.failed(e, listener, counters),
        }
    }

    /// A connection accepted by other means (an io_uring completion):
    /// counted, and `TCP_NODELAY` set; `None` (closed, counted in
    /// `refused`) past `max_conns`.
    pub(crate) fn admit(
        &mut self,
        stream: TcpStream,
        live: usize,
        counters: &Counters,
    ) -> Option<TcpStream> {
        Counters::add(&counters.accepted, 1);
        if live >= self.max_conns {
            Counters::add(&counters.refused, 1);
            return None; // dropping `stream` closes it
        }
        let _ = stream.set_nodelay(true);
        Some(stream)
    }

    /// What a failed accept on `listener` means, counted; never
    /// [`Accepted::Conn`].
    pub(crate) fn failed(
        &mut self,
        e: io::Error,
        listener: RawFd,
        counters: &Counters,
    ) -> Accepted {
        match e.kind() {
            io::ErrorKind::WouldBlock => Accepted::Empty,
            io::ErrorKind::Interrupted => Accepted::Again,
            _ if e.raw_os_error() == Some(libc::ECONNABORTED) => {
                Counters::add(&counters.accept_errors, 1);
                Accepted::Again
            }
            _ => {
                Counters::add(&counters.accept_errors, 1);
                if self.reserve.turn_away(&e, listener, counters) {
                    Accepted::TurnedAway
                } else {
                    Accepted::Exhausted(e)
                }
            }
        }
    }

    /// For a driver that waits for the listener with `wait` (which returns
    /// `false` once the server stops): the next connection, or `None`
    /// once stopped. Sleeps [`ACCEPT_BACKOFF`] after an exhausted accept.
    ///
    /// # Errors
    /// Only `wait`'s own.
    pub(crate) fn next_blocking(
        &mut self,
        listener: RawFd,
        live: impl Fn() -> usize,
        counters: &Counters,
        mut wait: impl FnMut() -> io::Result<bool>,
    ) -> io::Result<Option<TcpStream>> {
        loop {
            if !wait()? {
                return Ok(None);
            }
            loop {
                match self.accept(listener, live(), counters) {
                    Accepted::Conn(stream) => return Ok(Some(stream)),
                    Accepted::Again => continue,
                    Accepted::Empty | Accepted::TurnedAway => break,
                    Accepted::Exhausted(_) => {
                        std::thread::sleep(ACCEPT_BACKOFF);
                        break;
                    }
                }
            }
        }
    }
}
