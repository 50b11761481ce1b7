//! The sans-IO protocol handler every I/O model serves.
//!
//! A [`Handler`] never touches a socket: a driver hands it the bytes that
//! arrived and sends whatever it appended to `out`. So the same handler runs
//! under every model in [`crate::server`], and it is tested with plain byte
//! slices.
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
/// One handler value serves one connection; drivers make a fresh one per
/// connection with the server's factory.
pub trait Handler: Send + 'static {
    /// `input` arrived from the peer (never empty); append the reply to `out`.
    fn on_data(&mut self, input: &[u8], out: &mut Vec<u8>) -> Action;

    /// The peer closed its sending side. Append any last words to `out`; the
    /// driver sends them and then closes. The default adds nothing.
    fn on_eof(&mut self, out: &mut Vec<u8>) {
        let _ = out;
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
