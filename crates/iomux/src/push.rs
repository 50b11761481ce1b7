//! Server push: output for a connection that is not a reply to its own
//! input, queued from anywhere (another connection's handler, a timer,
//! another thread), like asyncio's `transport.write`.
//!
//! A handler that sets [`Handler::PUSH`](crate::protocol::Handler::PUSH)
//! is given its connection's [`Push`] handle once, before
//! [`on_connect`](crate::protocol::Handler::on_connect), through
//! [`Handler::attach`](crate::protocol::Handler::attach); it may keep it,
//! clone it, and hand it to others. The driver moves pushed bytes into the
//! connection's output in order with its replies, and wakes its loop for
//! that when needed (one wake-up per batch of pushes, not one per push).
//!
//! # The bound, and what a full peer gets
//!
//! Pushed output counts against the same per-connection bound as replies
//! ([`Config::max_output`](crate::server::Config::max_output)): a push that
//! would take the connection's output past it is **refused** with
//! [`PushError::Full`], and nothing of it is queued. So a peer that does
//! not read can neither grow the server's memory nor stall the sender,
//! who decides: drop the message, retry later, or end that peer with
//! [`Push::abort`] (what `examples/chat_server.rs` does). A push to a
//! connection that has ended gets [`PushError::Closed`].
//!
//! The connection's output as the pusher sees it is the figure its loop
//! last published (after each turn that touched the connection), so the
//! bound holds up to what the loop adds between two such turns: at most
//! one reply.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Why a push was refused.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum PushError {
    /// The connection's output would pass its bound: its peer is not
    /// reading fast enough. Nothing was queued.
    Full,
    /// The connection has ended (or is ending).
    Closed,
}

impl fmt::Display for PushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushError::Full => {
                f.write_str("the connection's output is full (its peer does not read fast enough)")
            }
            PushError::Closed => f.write_str("the connection has ended"),
        }
    }
}

impl std::error::Error for PushError {}

/// What the pushers and the driver share for one connection.
struct Shared {
    state: Mutex<State>,
    /// The connection's output (queued and in flight) as its loop last
    /// published it.
    pending: AtomicUsize,
    max_output: usize,
    /// Wakes the connection's loop to take the queue.
    notify: Box<dyn Fn() + Send + Sync>,
}

#[derive(Default)]
struct State {
    queue: Vec<u8>,
    /// The loop has been told and has not taken the queue yet.
    notified: bool,
    /// What the pushers asked for: `Some(true)` close at once,
    /// `Some(false)` close once everything is sent.
    close: Option<bool>,
    /// The connection has ended.
    closed: bool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Queues output for one connection from anywhere. Cloning shares it.
#[derive(Clone)]
pub struct Push {
    shared: Arc<Shared>,
}

impl fmt::Debug for Push {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Push").finish_non_exhaustive()
    }
}

impl Push {
    /// Queues `bytes` behind everything produced for the connection so
    /// far, all of them or none.
    ///
    /// # Errors
    /// [`PushError::Full`] if they would take the connection's output past
    /// its bound; [`PushError::Closed`] if it has ended.
    pub fn send(&self, bytes: &[u8]) -> Result<(), PushError> {
        let wake = {
            let mut st = self.shared.lock();
            if st.closed || st.close.is_some() {
                return Err(PushError::Closed);
            }
            let pending = self.shared.pending.load(Ordering::Relaxed);
            if pending + st.queue.len() + bytes.len() > self.shared.max_output {
                return Err(PushError::Full);
            }
            st.queue.extend_from_slice(bytes);
            !std::mem::replace(&mut st.notified, true)
        };
        if wake {
            (self.shared.notify)();
        }
        Ok(())
    }

    /// Closes the connection once everything queued for it is sent.
    pub fn close(&self) {
        self.request_close(false);
    }

    /// Closes the connection now, dropping output not yet sent: for a
    /// peer that does not read.
    pub fn abort(&self) {
        self.request_close(true);
    }

    fn request_close(&self, now: bool) {
        let wake = {
            let mut st = self.shared.lock();
            if st.closed {
                return;
            }
            st.close = Some(now || st.close == Some(true));
            !std::mem::replace(&mut st.notified, true)
        };
        if wake {
            (self.shared.notify)();
        }
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }
}

/// What a driver takes from a connection's pushers.
#[derive(Debug, Default)]
pub struct Pushed {
    /// Bytes to queue, in order.
    pub bytes: Vec<u8>,
    /// A close was asked for: `Some(true)` at once, `Some(false)` after
    /// the output is sent.
    pub close: Option<bool>,
}

/// The driver's side of a connection's [`Push`].
pub struct Pusher {
    shared: Arc<Shared>,
}

impl fmt::Debug for Pusher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pusher").finish_non_exhaustive()
    }
}

impl Pusher {
    /// A connection's pushing pair: `notify` wakes its loop (called once
    /// per batch, from whichever thread pushed first).
    pub fn new(max_output: usize, notify: impl Fn() + Send + Sync + 'static) -> (Pusher, Push) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            pending: AtomicUsize::new(0),
            max_output,
            notify: Box::new(notify),
        });
        (
            Pusher {
                shared: shared.clone(),
            },
            Push { shared },
        )
    }

    /// Takes what was pushed since the last call (the loop is told again
    /// at the next push).
    pub fn take(&self) -> Pushed {
        let mut st = self.shared.lock();
        st.notified = false;
        Pushed {
            bytes: std::mem::take(&mut st.queue),
            close: st.close,
        }
    }

    /// Whether anything waits to be taken.
    pub fn has_pushed(&self) -> bool {
        let st = self.shared.lock();
        !st.queue.is_empty() || st.close.is_some()
    }

    /// Publishes the connection's output (queued and in flight), which
    /// pushes are checked against.
    pub fn set_pending(&self, pending: usize) {
        self.shared.pending.store(pending, Ordering::Relaxed);
    }

    /// The connection has ended: later pushes get [`PushError::Closed`].
    pub fn close(&self) {
        let mut st = self.shared.lock();
        st.closed = true;
        st.queue = Vec::new();
    }
}

impl Drop for Pusher {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn pushes_are_bounded_ordered_and_wake_once_per_batch() {
        let wakes = Arc::new(AtomicU32::new(0));
        let w = wakes.clone();
        let (pusher, push) = Pusher::new(10, move || {
            w.fetch_add(1, Ordering::Relaxed);
        });
        push.send(b"abc").unwrap();
        push.clone().send(b"def").unwrap();
        assert_eq!(wakes.load(Ordering::Relaxed), 1, "one wake per batch");
        assert_eq!(push.send(b"ghijk"), Err(PushError::Full), "all or nothing");
        pusher.set_pending(4);
        assert_eq!(push.send(b"g"), Err(PushError::Full), "output counts");
        let got = pusher.take();
        assert_eq!(got.bytes, b"abcdef");
        assert_eq!(got.close, None);
        push.send(b"g").unwrap();
        assert_eq!(wakes.load(Ordering::Relaxed), 2);
        push.close();
        assert_eq!(push.send(b"h"), Err(PushError::Closed));
        assert_eq!(pusher.take().close, Some(false));
        drop(pusher);
        assert!(push.is_closed());
        assert_eq!(push.send(b"i"), Err(PushError::Closed));
    }
}
