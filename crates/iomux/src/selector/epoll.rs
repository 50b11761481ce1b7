//! The `epoll(7)` backend (Linux).
//!
//! Quirks of the mechanism, and what this file does about them:
//!
//! a) The interest set lives in the kernel: each change is one `epoll_ctl`
//!    syscall (counted in `ctl_calls`), and each wait returns only the ready
//!    list, so a wait costs O(ready), not O(watched).
//! b) epoll registers the open file description, not the fd number: an fd
//!    closed while a `dup` of it lives keeps reporting events. Deregister
//!    before close.
//! c) Closing the last reference removes the registration silently, and a
//!    later `EPOLL_CTL_DEL` fails with `EBADF`.
//! d) Regular files cannot be registered (`EPERM`): they are always ready.
//! e) `EPOLLERR` and `EPOLLHUP` are always reported, whatever the interest;
//!    `EPOLLRDHUP` (peer shut its write side) is requested with readable
//!    interest so a half-close is seen without a read.
//! f) Edge (`EPOLLET`) and oneshot (`EPOLLONESHOT`) are native. A fired
//!    oneshot stays registered but disabled until `EPOLL_CTL_MOD` rearms it.
//! g) Event masks are bit sets: test bits with `&`, never compare with `==`
//!    (one of the seeds' epoll loop bugs).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::{Event, Interest, Mode, SelectorError, Sys, Token};
use crate::sys::syscall;

pub(crate) struct Epoll {
    ep: OwnedFd,
    buf: Vec<libc::epoll_event>,
    ctl_calls: u64,
}

fn epoll_bits(interest: Interest, mode: Mode) -> u32 {
    let mut ev = 0;
    if interest.is_readable() {
        ev |= libc::EPOLLIN | libc::EPOLLRDHUP;
    }
    if interest.is_writable() {
        ev |= libc::EPOLLOUT;
    }
    match mode {
        Mode::Level => {}
        Mode::Edge => ev |= libc::EPOLLET,
        Mode::Oneshot => ev |= libc::EPOLLONESHOT,
    }
    ev as u32
}

impl Epoll {
    pub(crate) fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers.
        let fd = unsafe { syscall!(epoll_create1(libc::EPOLL_CLOEXEC))? };
        Ok(Epoll {
            // SAFETY: epoll_create1 succeeded: `fd` is open and ours alone.
            ep: unsafe { OwnedFd::from_raw_fd(fd) },
            buf: Vec::new(),
            ctl_calls: 0,
        })
    }

    fn ctl(&mut self, op: libc::c_int, fd: RawFd, token: Token, bits: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: bits,
            u64: token.0 as u64,
        };
        self.ctl_calls += 1;
        // SAFETY: `ev` is a valid epoll_event for the duration of the call
        // (the kernel ignores it for EPOLL_CTL_DEL but requires it non-null on
        // old kernels).
        let res = unsafe { syscall!(epoll_ctl(self.ep.as_raw_fd(), op, fd, &mut ev)) };
        res.map(drop).map_err(|e| match e.raw_os_error() {
            Some(libc::EEXIST) => SelectorError::AlreadyRegistered(fd).into(),
            Some(libc::ENOENT) => SelectorError::NotRegistered(fd).into(),
            Some(libc::EBADF) => SelectorError::BadFd(fd).into(),
            Some(libc::EPERM) => io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("fd {fd} cannot be watched by epoll (a regular file or directory is always ready); read it directly"),
            ),
            _ => e,
        })
    }
}

impl Sys for Epoll {
    fn register(
        &mut self,
        fd: RawFd,
        token: Token,
        interest: Interest,
        mode: Mode,
    ) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, epoll_bits(interest, mode))
    }

    fn reregister(
        &mut self,
        fd: RawFd,
        token: Token,
        interest: Interest,
        mode: Mode,
    ) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, epoll_bits(interest, mode))
    }

    fn deregister(&mut self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, Token(0), 0)
    }

    fn wait(&mut self, out: &mut Vec<Event>, max: usize, timeout_ms: i32) -> io::Result<()> {
        self.buf.clear();
        self.buf.reserve(max);
        // SAFETY: `buf` has room for `max` events; the kernel writes at most
        // `max` and returns how many, which we then set as the length.
        let n = unsafe {
            syscall!(epoll_wait(
                self.ep.as_raw_fd(),
                self.buf.as_mut_ptr(),
                max.min(i32::MAX as usize) as libc::c_int,
                timeout_ms
            ))?
        } as usize;
        // SAFETY: the kernel initialised the first `n` <= `max` entries.
        unsafe { self.buf.set_len(n) };
        out.extend(self.buf.iter().map(|ev| {
            let bits = ev.events as libc::c_int;
            let mut flags = 0;
            if bits & libc::EPOLLIN != 0 {
                flags |= Event::READABLE;
            }
            if bits & libc::EPOLLOUT != 0 {
                flags |= Event::WRITABLE;
            }
            if bits & libc::EPOLLERR != 0 {
                flags |= Event::ERROR;
            }
            if bits & (libc::EPOLLHUP | libc::EPOLLRDHUP) != 0 {
                flags |= Event::READ_CLOSED;
            }
            Event::new(Token(ev.u64 as usize), flags)
        }));
        Ok(())
    }

    fn ctl_calls(&self) -> u64 {
        self.ctl_calls
    }
}
