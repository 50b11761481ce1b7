//! The sans-IO protocol handler every I/O model serves.
//!
//! A [`Handler`] never touches a socket: a driver hands it the bytes that
//! arrived and sends whatever it appended to `out`. So the same handler runs
//! under every model in [`crate::server`], and it is tested with plain byte
//! slices. A server is given a [`Factory`], which makes one handler per
//! connection: a closure, or one of the built-in [`Protocol`]s.
//!
//! # Examples
//!
//! ```
//! use iomux::protocol::{Action, Handler, Upper};
//!
//! let mut h = Upper;
//! let mut out = Vec::new();
//! assert_eq!(h.on_data(b"hello, World 1", &mut out), Action::Continue);
//! assert_eq!(out, b"HELLO, WORLD 1");
//! ```

use std::fmt;
use std::str::FromStr;

mod echo;
mod slow;
mod upper;

pub use echo::Echo;
pub use slow::SlowUpper;
pub use upper::Upper;

/// What the handler wants after it has seen some input.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Keep the connection open and keep reading.
    Continue,
    /// Send what is pending, then close the connection.
    Close,
}

/// A connection's protocol logic, free of I/O.
///
/// One handler value serves one connection: the server makes a fresh one
/// per accepted connection with its [`Factory`]. The driver calls, in
/// order: [`on_connect`](Handler::on_connect) once, then
/// [`on_data`](Handler::on_data) for each chunk of input as it arrives (in
/// arbitrary pieces: a message may come split, or several together), then
/// [`on_eof`](Handler::on_eof) if the peer closes its sending side, and
/// last [`on_close`](Handler::on_close) with the reason, exactly once,
/// however the connection ended. Output a call appends to `out` is sent in
/// order, before the output of any later call.
///
/// `Send` is required because [`serve`](crate::server::serve) picks the
/// model at run time, and some models move a handler to another thread:
/// `threaded` and `pool` run it on a connection's thread, and the
/// readiness models' offload pool ([`Config::offload_threads`](crate::server::Config::offload_threads))
/// runs it on a worker. Share state between connections through
/// `Arc<Mutex<..>>` (or atomics) captured by the factory.
pub trait Handler: Send + 'static {
    /// Whether the handler pushes output outside its replies: it is then
    /// given its connection's [`Push`](crate::push::Push) handle through
    /// [`attach`](Handler::attach). Every model serves such a handler: the
    /// event loops are woken to send pushed output, the thread models wait
    /// for their socket and an eventfd together instead of in `recv`
    /// alone, busy-poll looks at every pass.
    const PUSH: bool = false;

    /// The connection's push handle, once, before
    /// [`on_connect`](Handler::on_connect), if [`PUSH`](Handler::PUSH) is
    /// set. The default drops it.
    fn attach(&mut self, push: crate::push::Push) {
        let _ = push;
    }

    /// The connection is open: append a greeting to `out` if the protocol
    /// speaks first. [`Action::Close`] sends it and closes. The default
    /// says nothing.
    fn on_connect(&mut self, out: &mut Vec<u8>) -> Action {
        let _ = out;
        Action::Continue
    }

    /// `input` arrived from the peer (never empty); append the reply to `out`.
    fn on_data(&mut self, input: &[u8], out: &mut Vec<u8>) -> Action;

    /// The peer closed its sending side. Append any last words to `out`; the
    /// driver sends them and then closes. The default adds nothing.
    fn on_eof(&mut self, out: &mut Vec<u8>) {
        let _ = out;
    }

    /// The connection has ended, for `reason`: nothing more is sent or
    /// received. Called once per connection that was served (not for one
    /// refused at accept). The default does nothing.
    fn on_close(&mut self, reason: CloseReason) {
        let _ = reason;
    }
}

/// Why a connection ended, as [`Handler::on_close`] is told.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The peer closed its side and every byte for it was sent.
    PeerClosed,
    /// The handler returned [`Action::Close`] and its output was sent.
    HandlerClosed,
    /// The peer reset the connection, or it broke (broken pipe).
    Reset,
    /// Nothing moved for [`Config::idle_timeout`](crate::server::Config::idle_timeout).
    IdleTimeout,
    /// Closed to make room for a new client
    /// ([`FdExhaustion::Shed`](crate::server::FdExhaustion::Shed)).
    Shed,
    /// The server stopped (its drain ended, or it was cut short).
    ServerStop,
    /// Another I/O error, of this kind.
    Error(std::io::ErrorKind),
}

impl CloseReason {
    /// A short name, for logs and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer closed",
            CloseReason::HandlerClosed => "handler closed",
            CloseReason::Reset => "reset",
            CloseReason::IdleTimeout => "idle timeout",
            CloseReason::Shed => "shed",
            CloseReason::ServerStop => "server stop",
            CloseReason::Error(_) => "error",
        }
    }

    /// The reason for a connection that failed with `e`: [`Reset`](Self::Reset)
    /// when the peer went away, else [`Error`](Self::Error).
    pub fn of_error(e: &std::io::Error) -> CloseReason {
        if crate::sys::is_peer_gone(e) {
            CloseReason::Reset
        } else {
            CloseReason::Error(e.kind())
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Error(kind) => write!(f, "error: {kind}"),
            other => f.write_str(other.name()),
        }
    }
}

/// Makes one [`Handler`] per connection: what a server is given to serve
/// a protocol.
///
/// Any `Fn() -> H` closure is a factory, and so is each built-in
/// [`Protocol`]. A factory is cloned once per loop (and is shared by the
/// threads of the thread models), so state all connections share lives
/// behind an `Arc` the factory captures.
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
/// use iomux::protocol::{Action, Factory, Handler};
///
/// /// Replies with how many connections came before it, then closes.
/// struct Ticket(u64);
/// impl Handler for Ticket {
///     fn on_data(&mut self, _: &[u8], out: &mut Vec<u8>) -> Action {
///         out.extend_from_slice(format!("{}\n", self.0).as_bytes());
///         Action::Close
///     }
/// }
///
/// let next = Arc::new(AtomicU64::new(0));
/// let factory = move || Ticket(next.fetch_add(1, Ordering::Relaxed));
/// let mut out = Vec::new();
/// factory.new_handler().on_data(b"?", &mut out);
/// factory.new_handler().on_data(b"?", &mut out);
/// assert_eq!(out, b"0\n1\n");
/// ```
pub trait Factory: Clone + Send + Sync + 'static {
    /// The handler it makes.
    type Handler: Handler;

    /// A fresh handler for one new connection.
    fn new_handler(&self) -> Self::Handler;
}

impl<H: Handler, F: Fn() -> H + Clone + Send + Sync + 'static> Factory for F {
    type Handler = H;
    fn new_handler(&self) -> H {
        self()
    }
}

impl Factory for Protocol {
    type Handler = Builtin;
    fn new_handler(&self) -> Builtin {
        self.handler()
    }
}

/// The built-in protocols, chosen by name at run time (`--protocol`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    /// Every byte back, ASCII letters upper-cased: the seeds' protocol.
    #[default]
    Upper,
    /// Every byte back unchanged.
    Echo,
    /// `upper`, holding the thread for the given milliseconds per line: a
    /// slow handler (see [`SlowUpper`]).
    SlowUpper(u32),
}

impl Protocol {
    /// Every built-in protocol (`slow-upper` with its default work).
    pub const ALL: [Protocol; 3] = [
        Protocol::Upper,
        Protocol::Echo,
        Protocol::SlowUpper(Protocol::DEFAULT_WORK_MS),
    ];

    /// Milliseconds per line of `slow-upper` unless told otherwise.
    pub const DEFAULT_WORK_MS: u32 = 10;

    /// The name the CLI uses.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Upper => "upper",
            Protocol::Echo => "echo",
            Protocol::SlowUpper(_) => "slow-upper",
        }
    }

    /// A fresh handler for one connection.
    pub fn handler(self) -> Builtin {
        match self {
            Protocol::Upper => Builtin::Upper(Upper),
            Protocol::Echo => Builtin::Echo(Echo),
            Protocol::SlowUpper(ms) => Builtin::SlowUpper(SlowUpper {
                work: std::time::Duration::from_millis(u64::from(ms)),
            }),
        }
    }

    /// The bytes a peer must receive for `input` sent in full, then EOF:
    /// the one-shot output that every chunking must reproduce.
    pub fn expected(self, input: &[u8]) -> Vec<u8> {
        let mut h = self.handler();
        let mut out = Vec::with_capacity(input.len());
        if !input.is_empty() {
            h.on_data(input, &mut out);
        }
        h.on_eof(&mut out);
        out
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Protocol, String> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown protocol {s:?}; expected upper, echo or slow-upper"))
    }
}

/// A handler for one of the [`Protocol`]s, dispatched without a box.
#[derive(Clone, Debug)]
pub enum Builtin {
    /// See [`Upper`].
    Upper(Upper),
    /// See [`Echo`].
    Echo(Echo),
    /// See [`SlowUpper`].
    SlowUpper(SlowUpper),
}

impl Handler for Builtin {
    fn on_connect(&mut self, out: &mut Vec<u8>) -> Action {
        match self {
            Builtin::Upper(h) => h.on_connect(out),
            Builtin::Echo(h) => h.on_connect(out),
            Builtin::SlowUpper(h) => h.on_connect(out),
        }
    }

    fn on_data(&mut self, input: &[u8], out: &mut Vec<u8>) -> Action {
        match self {
            Builtin::Upper(h) => h.on_data(input, out),
            Builtin::Echo(h) => h.on_data(input, out),
            Builtin::SlowUpper(h) => h.on_data(input, out),
        }
    }

    fn on_eof(&mut self, out: &mut Vec<u8>) {
        match self {
            Builtin::Upper(h) => h.on_eof(out),
            Builtin::Echo(h) => h.on_eof(out),
            Builtin::SlowUpper(h) => h.on_eof(out),
        }
    }
}
