//! The `select(2)` backend.
//!
//! Quirks of the mechanism, and what this file does about them:
//!
//! a) An `fd_set` is a fixed bitmap of `FD_SETSIZE` (1024) bits. `FD_SET` on a
//!    larger fd writes past it: undefined behaviour in C. Registration refuses
//!    such fds with [`SelectorError::FdSetSize`] and nothing is ever indexed
//!    out of range.
//! b) The kernel overwrites the sets it is given, so every call copies the
//!    master sets, and both the kernel and this file scan every bit up to the
//!    highest fd: the cost grows with the highest fd, not with readiness.
//! c) A closed fd in a set makes the whole call fail with `EBADF`. This file
//!    then finds the closed fds with `fcntl(F_GETFD)` and reports them as
//!    error events, so one careless close does not stop the loop.
//! d) There is no hang-up bit: a peer's close shows as readable, and the
//!    next read returns 0. Errors show as readable too.
//! e) Oneshot is emulated: a reported oneshot fd leaves the sets until it is
//!    reregistered. Edge triggering cannot be emulated and is refused by the
//!    front type.
//! f) The ready bits are scanned in fd order. When the caller's `Events` fill
//!    up first, the next scan starts where this one stopped, so fds beyond
//!    the capacity are reported by the next call instead of being starved by
//!    lower fds that stay ready.

use std::io;
use std::os::fd::RawFd;

use super::{Event, Interest, Mode, SelectorError, Sys, Token};
use crate::sys::{is_open, syscall};

/// Bits in an `fd_set`.
pub(crate) const FD_SETSIZE: usize = libc::FD_SETSIZE;

#[derive(Clone, Copy)]
struct Slot {
    token: Token,
    interest: Interest,
    mode: Mode,
    /// A fired oneshot that has not been rearmed: out of the sets.
    disarmed: bool,
}

pub(crate) struct Select {
    /// Indexed by fd; `None` for unregistered fds.
    slots: Vec<Option<Slot>>,
    read: libc::fd_set,
    write: libc::fd_set,
    /// Highest registered fd plus one (the `nfds` argument), 0 when empty.
    nfds: usize,
    /// Where the next scan of the ready bits starts: the fd after the last
    /// one reported when the caller's events filled up, else 0.
    resume: usize,
}

fn empty_set() -> libc::fd_set {
    // SAFETY: fd_set is plain old data; all-zero bits is the empty set
    // (what FD_ZERO writes).
    unsafe { std::mem::zeroed() }
}

fn set(set: &mut libc::fd_set, fd: RawFd, on: bool) {
    debug_assert!((fd as usize) < FD_SETSIZE);
    // SAFETY: every caller passes a registered fd, which `register` checked to
    // be in 0..FD_SETSIZE, so the bit is inside the set.
    unsafe {
        if on {
            libc::FD_SET(fd, set)
        } else {
            libc::FD_CLR(fd, set)
        }
    }
}

fn is_set(set: &libc::fd_set, fd: usize) -> bool {
    debug_assert!(fd < FD_SETSIZE);
    // SAFETY: `fd` < nfds <= FD_SETSIZE, so the bit is inside the set.
    unsafe { libc::FD_ISSET(fd as RawFd, set) }
}

impl Select {
    pub(crate) fn new() -> Select {
        Select {
            slots: Vec::new(),
            read: empty_set(),
            write: empty_set(),
            nfds: 0,
            resume: 0,
        }
    }

    fn apply(&mut self, fd: RawFd, slot: Option<Slot>) {
        let armed = slot.filter(|s| !s.disarmed);
        set(
            &mut self.read,
            fd,
            armed.is_some_and(|s| s.interest.is_readable()),
        );
        set(
            &mut self.write,
            fd,
            armed.is_some_and(|s| s.interest.is_writable()),
        );
        let i = fd as usize;
        if self.slots.len() <= i {
            self.slots.resize(i + 1, None);
        }
        self.slots[i] = slot;
        self.nfds = self
            .slots
            .iter()
            .rposition(Option::is_some)
            .map_or(0, |p| p + 1);
        self.slots.truncate(self.nfds);
    }

    fn slot(&self, fd: RawFd) -> Option<Slot> {
        usize::try_from(fd)
            .ok()
            .and_then(|i| self.slots.get(i).copied().flatten())
    }

    /// After `EBADF`: report every registered fd that is closed as an error.
    fn report_closed(&mut self, out: &mut Vec<Event>, max: usize) {
        for fd in 0..self.nfds {
            if out.len() >= max {
                break;
            }
            if let Some(slot) = self.slots[fd] {
                if !slot.disarmed && !is_open(fd as RawFd) {
                    out.push(Event::new(slot.token, Event::ERROR | Event::READABLE));
                }
            }
        }
    }
}

impl Sys for Select {
    fn register(
        &mut self,
        fd: RawFd,
        token: Token,
        interest: Interest,
        mode: Mode,
    ) -> io::Result<()> {
        if fd as usize >= FD_SETSIZE {
            return Err(SelectorError::FdSetSize {
                fd,
                limit: FD_SETSIZE,
            }
            .into());
        }
        if self.slot(fd).is_some() {
            return Err(SelectorError::AlreadyRegistered(fd).into());
        }
        if !is_open(fd) {
            return Err(SelectorError::BadFd(fd).into());
        }
        let slot = Slot {
            token,
            interest,
            mode,
            disarmed: false,
        };
        self.apply(fd, Some(slot));
        Ok(())
    }

    fn reregister(
        &mut self,
        fd: RawFd,
        token: Token,
        interest: Interest,
        mode: Mode,
    ) -> io::Result<()> {
        if self.slot(fd).is_none() {
            return Err(SelectorError::NotRegistered(fd).into());
        }
        let slot = Slot {
            token,
            interest,
            mode,
            disarmed: false,
        };
        self.apply(fd, Some(slot));
        Ok(())
    }

    fn deregister(&mut self, fd: RawFd) -> io::Result<()> {
        if self.slot(fd).is_none() {
            return Err(SelectorError::NotRegistered(fd).into());
        }
        self.apply(fd, None);
        Ok(())
    }

    fn wait(&mut self, out: &mut Vec<Event>, max: usize, timeout_ms: i32) -> io::Result<()> {
        let mut read = self.read;
        let mut write = self.write;
        let mut tv = libc::timeval {
            tv_sec: (timeout_ms / 1000) as libc::time_t,
            tv_usec: ((timeout_ms % 1000) * 1000) as libc::suseconds_t,
        };
        let tvp = if timeout_ms < 0 {
            std::ptr::null_mut()
        } else {
            &mut tv as *mut libc::timeval
        };
        // SAFETY: the sets are valid fd_sets owned by this frame, nfds never
        // exceeds FD_SETSIZE, and tvp is null or points at `tv`.
        let res = unsafe {
            syscall!(select(
                self.nfds as libc::c_int,
                &mut read,
                &mut write,
                std::ptr::null_mut(),
                tvp
            ))
        };
        let ready = match res {
            Ok(n) => n as usize,
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => {
                self.report_closed(out, max);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let mut found = 0;
        let mut fired = Vec::new();
        let start = if self.resume < self.nfds {
            self.resume
        } else {
            0
        };
        self.resume = 0;
        for fd in (start..self.nfds).chain(0..start) {
            if found == ready {
                break;
            }
            if out.len() >= max {
                self.resume = fd;
                break;
            }
            let mut flags = 0;
            if is_set(&read, fd) {
                flags |= Event::READABLE;
                found += 1;
            }
            if is_set(&write, fd) {
                flags |= Event::WRITABLE;
                found += 1;
            }
            if flags != 0 {
                let slot = self.slots[fd].expect("a set bit is a registered fd");
                out.push(Event::new(slot.token, flags));
                if slot.mode == Mode::Oneshot {
                    fired.push((fd, slot));
                }
            }
        }
        for (fd, slot) in fired {
            self.apply(
                fd as RawFd,
                Some(Slot {
                    disarmed: true,
                    ..slot
                }),
            );
        }
        Ok(())
    }
}
