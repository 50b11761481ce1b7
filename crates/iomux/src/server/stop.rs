//! Telling a running server to stop.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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
        crate::sys::wait_readable([fd, self.fd()])?;
        Ok(self.is_stopped())
    }
}
