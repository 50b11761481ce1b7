//! The `poll(2)` backend.
//!
//! Quirks of the mechanism, and what this file does about them:
//!
//! a) The whole `pollfd` array crosses into the kernel and back on every call,
//!    and the kernel polls every entry: cost grows with the number watched.
//!    Finding the ready entries is a scan of the array in user space as well.
//! b) No fd limit but `RLIMIT_NOFILE`, unlike select.
//! c) A closed fd gets `POLLNVAL` rather than failing the call: it is reported
//!    as an error event.
//! d) `POLLHUP` (both directions closed) and, on Linux, `POLLRDHUP` (peer shut
//!    its write side) are reported as read-closed.
//! e) Oneshot is emulated: a reported oneshot entry's fd is stored negated
//!    (`!fd`) until it is reregistered, because poll ignores negative fds
//!    entirely; zeroing `events` would not do, since `POLLHUP`, `POLLERR` and
//!    `POLLNVAL` are reported whatever `events` asks. Edge triggering is
//!    refused by the front type.
//! f) Deregistering swaps the last entry into the hole, so removal is O(1);
//!    an fd-to-index map keeps lookups O(1) too.
//! g) The entries are scanned in array order. When the caller's `Events` fill
//!    up first, the next scan starts where this one stopped, so entries
//!    beyond the capacity are reported by the next call instead of being
//!    starved by earlier entries that stay ready.

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;

use super::{Event, Interest, Mode, SelectorError, Sys, Token};
use crate::sys::{is_open, syscall};

#[cfg(any(target_os = "linux", target_os = "android"))]
const RDHUP: libc::c_short = libc::POLLRDHUP;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const RDHUP: libc::c_short = 0;

pub(crate) struct Poll {
    fds: Vec<libc::pollfd>,
    /// Parallel to `fds`: the token and mode of each entry.
    meta: Vec<(Token, Mode)>,
    index: HashMap<RawFd, usize>,
    /// Where the next scan of `fds` starts: the entry after the last one
    /// reported when the caller's events filled up, else 0.
    resume: usize,
}

fn poll_events(interest: Interest) -> libc::c_short {
    let mut ev = 0;
    if interest.is_readable() {
        ev |= libc::POLLIN | RDHUP;
    }
    if interest.is_writable() {
        ev |= libc::POLLOUT;
    }
    ev
}

/// The fd of an entry, disarmed (negated) or not.
fn real_fd(fd: RawFd) -> RawFd {
    if fd < 0 {
        !fd
    } else {
        fd
    }
}

impl Poll {
    pub(crate) fn new() -> Poll {
        Poll {
            fds: Vec::new(),
            meta: Vec::new(),
            index: HashMap::new(),
            resume: 0,
        }
    }
}

impl Sys for Poll {
    fn register(
        &mut self,
        fd: RawFd,
        token: Token,
        interest: Interest,
        mode: Mode,
    ) -> io::Result<()> {
        if self.index.contains_key(&fd) {
            return Err(SelectorError::AlreadyRegistered(fd).into());
        }
        if !is_open(fd) {
            return Err(SelectorError::BadFd(fd).into());
        }
        self.index.insert(fd, self.fds.len());
        self.fds.push(libc::pollfd {
            fd,
            events: poll_events(interest),
            revents: 0,
        });
        self.meta.push((token, mode));
        Ok(())
    }

    fn reregister(
        &mut self,
        fd: RawFd,
        token: Token,
        interest: Interest,
        mode: Mode,
    ) -> io::Result<()> {
        let &i = self
            .index
            .get(&fd)
            .ok_or(SelectorError::NotRegistered(fd))?;
        self.fds[i].fd = fd;
        self.fds[i].events = poll_events(interest);
        self.meta[i] = (token, mode);
        Ok(())
    }

    fn deregister(&mut self, fd: RawFd) -> io::Result<()> {
        let i = self
            .index
            .remove(&fd)
            .ok_or(SelectorError::NotRegistered(fd))?;
        self.fds.swap_remove(i);
        self.meta.swap_remove(i);
        if let Some(moved) = self.fds.get(i) {
            self.index.insert(real_fd(moved.fd), i);
        }
        Ok(())
    }

    fn wait(&mut self, out: &mut Vec<Event>, max: usize, timeout_ms: i32) -> io::Result<()> {
        // SAFETY: `fds` is a valid, initialised array of `fds.len()` pollfds
        // that nothing else touches during the call.
        let ready = unsafe {
            syscall!(poll(
                self.fds.as_mut_ptr(),
                self.fds.len() as libc::nfds_t,
                timeout_ms
            ))?
        } as usize;
        let mut found = 0;
        let len = self.fds.len();
        let start = if self.resume < len { self.resume } else { 0 };
        self.resume = 0;
        for i in (start..len).chain(0..start) {
            if found == ready {
                break;
            }
            if out.len() >= max {
                self.resume = i;
                break;
            }
            let (pfd, (token, mode)) = (&mut self.fds[i], self.meta[i]);
            let re = pfd.revents;
            if re == 0 {
                continue;
            }
            found += 1;
            let mut flags = 0;
            if re & libc::POLLIN != 0 {
                flags |= Event::READABLE;
            }
            if re & libc::POLLOUT != 0 {
                flags |= Event::WRITABLE;
            }
            if re & (libc::POLLERR | libc::POLLNVAL) != 0 {
                flags |= Event::ERROR;
            }
            if re & (libc::POLLHUP | RDHUP) != 0 {
                flags |= Event::READ_CLOSED;
            }
            out.push(Event::new(token, flags));
            if mode == Mode::Oneshot {
                pfd.fd = !pfd.fd;
            }
        }
        Ok(())
    }
}
