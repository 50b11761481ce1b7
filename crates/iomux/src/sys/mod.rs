//! The one home of raw syscalls.
//!
//! Every call into libc goes through `syscall!`, which turns the C convention
//! (`-1` and `errno`) into an [`io::Error`]. The selector backends use the macro
//! directly for their own system calls; everything else that needs a file
//! descriptor helper finds it here.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Calls a libc function and turns `-1` into `io::Error::last_os_error()`.
///
/// The macro only wraps the call; the caller still writes the `unsafe` block
/// around it with its own `// SAFETY:` comment, because only the caller knows
/// why the pointers it passes are valid.
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        let res = libc::$fn($($arg),*);
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}
pub(crate) use syscall;

pub mod signal;

/// Puts `fd` in non-blocking mode.
pub fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFL takes no pointer argument; an invalid fd yields EBADF.
    let flags = unsafe { syscall!(fcntl(fd, libc::F_GETFL))? };
    let new = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    if new != flags {
        // SAFETY: F_SETFL takes an integer argument; an invalid fd yields EBADF.
        unsafe { syscall!(fcntl(fd, libc::F_SETFL, new))? };
    }
    Ok(())
}

/// Whether `fd` names an open file description in this process.
///
/// One `fcntl(F_GETFD)`: it fails with `EBADF` exactly when the fd is closed.
pub fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD takes no pointer argument; an invalid fd yields EBADF.
    fd >= 0 && unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1
}

/// Creates a pipe whose ends are non-blocking and close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    unsafe { syscall!(pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC))? };
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Creates a non-blocking, close-on-exec eventfd with a zero counter.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers.
    let fd = unsafe { syscall!(eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))? };
    // SAFETY: eventfd succeeded, so `fd` is open and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Writes all of `buf` to a non-blocking fd once; `WouldBlock` is returned as is.
pub fn write(fd: &impl AsRawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    let n = unsafe { syscall!(write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()))? };
    Ok(n as usize)
}

/// Reads once from an fd into `buf`.
pub fn read(fd: &impl AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let n = unsafe { syscall!(read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()))? };
    Ok(n as usize)
}

/// Ignores `SIGPIPE` for the whole process, so a write to a closed peer
/// returns `EPIPE` instead of killing the process.
///
/// Servers call this once at start; it is idempotent. (Sockets written with
/// `send(MSG_NOSIGNAL)` do not need it, but `std::io::Write` on a `TcpStream`
/// on some platforms does.)
pub fn ignore_sigpipe() -> io::Result<()> {
    // SAFETY: SIG_IGN is a valid disposition for SIGPIPE; no handler code runs.
    let prev = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    if prev == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends bytes on a socket without raising `SIGPIPE` (`MSG_NOSIGNAL`).
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    let n = unsafe { syscall!(send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL))? };
    Ok(n as usize)
}

/// Receives bytes from a socket into `buf`.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let n = unsafe { syscall!(recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0))? };
    Ok(n as usize)
}

/// The soft and hard `RLIMIT_NOFILE` of this process.
pub fn nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for getrlimit to fill.
    unsafe { syscall!(getrlimit(libc::RLIMIT_NOFILE, &mut lim))? };
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Raises the soft `RLIMIT_NOFILE` to at least `want`, or as far as the
/// hard limit allows when `want` is `None`; never lowers it. Returns the
/// soft limit now in force.
///
/// # Errors
/// The OS error of `getrlimit` or `setrlimit`.
pub fn raise_nofile_limit(want: Option<u64>) -> io::Result<u64> {
    let (soft, hard) = nofile_limit()?;
    let target = want.unwrap_or(hard).min(hard);
    if soft >= target {
        return Ok(soft);
    }
    let lim = libc::rlimit {
        rlim_cur: target,
        rlim_max: hard,
    };
    // SAFETY: `lim` is a valid rlimit; raising the soft limit up to the hard
    // one needs no privilege.
    unsafe { syscall!(setrlimit(libc::RLIMIT_NOFILE, &lim))? };
    Ok(target)
}

/// Number of open file descriptors of this process (entries of /proc/self/fd).
#[cfg(target_os = "linux")]
pub fn open_fd_count() -> io::Result<usize> {
    // read_dir itself holds one fd open while it lists; do not count it.
    Ok(std::fs::read_dir("/proc/self/fd")?
        .count()
        .saturating_sub(1))
}

/// Accepts one connection as a non-blocking, close-on-exec socket in one
/// syscall (`accept4`), where std's `accept` plus `set_nonblocking` takes two.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn accept_nonblocking(listener: RawFd) -> io::Result<std::net::TcpStream> {
    // SAFETY: null address pointers are allowed: the peer address is not wanted.
    let fd = unsafe {
        syscall!(accept4(
            listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC
        ))?
    };
    // SAFETY: accept4 succeeded: `fd` is a connected socket owned by nobody else.
    Ok(unsafe { std::net::TcpStream::from_raw_fd(fd) })
}

/// Accepts one connection and makes it non-blocking (portable fallback).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn accept_nonblocking(listener: RawFd) -> io::Result<std::net::TcpStream> {
    use std::mem::ManuallyDrop;
    // SAFETY: the listener is borrowed for the call only; ManuallyDrop keeps
    // it from being closed here.
    let l = ManuallyDrop::new(unsafe { std::net::TcpListener::from_raw_fd(listener) });
    let (s, _) = l.accept()?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Whether `fd` is readable right now (a `poll` that does not wait): for a
/// listener, whether a connection is waiting, so that an `accept` on it
/// cannot block even if the listener is blocking.
pub fn readable_now(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout.
    let n = unsafe { syscall!(poll(&mut pfd, 1, 0)) };
    matches!(n, Ok(1)) && pfd.revents & libc::POLLIN != 0
}

/// How many connections wait in a listener's accept queue (Linux reports
/// it in `tcpi_unacked` of a listening socket's `TCP_INFO`).
#[cfg(target_os = "linux")]
pub fn accept_queue_len(listener: RawFd) -> io::Result<u32> {
    // SAFETY: all-zero is a valid tcp_info (plain integers).
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is writable storage of `len` bytes; the kernel writes
    // at most `len` and updates it.
    unsafe {
        syscall!(getsockopt(
            listener,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len
        ))?
    };
    Ok(info.tcpi_unacked)
}

/// Whether an accept error means the process or system is out of a
/// resource (fds, memory): retrying at once would fail again, so the
/// caller must pause accepting instead of spinning.
pub fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// What this process has used so far, all threads (dead ones included),
/// from `getrusage(RUSAGE_SELF)`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessUsage {
    /// User plus system CPU time. Linux derives it from the scheduler's
    /// nanosecond run time, so it is precise to the microsecond it is
    /// reported in, unlike the 10 ms ticks of `/proc/PID/stat`.
    pub cpu: std::time::Duration,
    /// Voluntary context switches: how many times a thread went to sleep
    /// (in a wait, a blocking read, a lock). For a one-thread server, its
    /// sleeps and so its wake-ups.
    pub voluntary_switches: u64,
    /// Involuntary context switches: preemptions.
    pub involuntary_switches: u64,
}

/// This process's CPU time and context switches; see [`ProcessUsage`].
pub fn process_usage() -> io::Result<ProcessUsage> {
    // SAFETY: an all-zero rusage is a valid value for getrusage to overwrite.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid rusage for getrusage to fill.
    unsafe { syscall!(getrusage(libc::RUSAGE_SELF, &mut ru))? };
    let us = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64;
    Ok(ProcessUsage {
        cpu: std::time::Duration::from_micros(us(ru.ru_utime) + us(ru.ru_stime)),
        voluntary_switches: ru.ru_nvcsw as u64,
        involuntary_switches: ru.ru_nivcsw as u64,
    })
}

/// Pins the calling thread, and the threads it creates afterwards, to the
/// given CPUs.
#[cfg(target_os = "linux")]
pub fn pin_to_cpus(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is the empty set (what CPU_ZERO writes).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
    for &cpu in cpus {
        if cpu >= max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cpu {cpu} is out of range (at most {})", max - 1),
            ));
        }
        // SAFETY: `cpu` < the set's capacity in bits, checked above.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t and its size is passed with it;
    // pid 0 is the calling thread.
    unsafe {
        syscall!(sched_setaffinity(
            0,
            std::mem::size_of::<libc::cpu_set_t>(),
            &set
        ))?
    };
    Ok(())
}

/// Sets an integer socket option.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_int_option(fd: &impl AsRawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` is a valid int and its size is passed with it.
    unsafe {
        syscall!(setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t
        ))?
    };
    Ok(())
}

/// Binds a TCP listener to `addr` with `SO_REUSEPORT` set before the bind,
/// which std's `TcpListener::bind` cannot do, and listens with `backlog`.
///
/// Every socket of the same user bound this way to the same address and
/// port joins one group, and the kernel hands each new connection to one
/// of them by a hash of its addresses and ports: N listeners, N accept
/// queues, no connection shared. `SO_REUSEADDR` is set too, as std sets it
/// (a restarted server binds past connections in `TIME_WAIT`). Linux only:
/// the BSDs and macOS accept `SO_REUSEPORT` but give every connection to
/// one socket of the group.
///
/// # Errors
/// The OS error of `socket`, `setsockopt`, `bind` or `listen`: `AddrInUse`
/// if a socket without `SO_REUSEPORT`, or another user's, holds the port.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn bind_reuseport(
    addr: std::net::SocketAddr,
    backlog: i32,
) -> io::Result<std::net::TcpListener> {
    use std::net::SocketAddr;
    let domain = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: socket takes no pointers.
    let fd = unsafe { syscall!(socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0))? };
    // SAFETY: socket succeeded: `fd` is open and owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    set_int_option(&sock, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    set_int_option(&sock, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            bind_sockaddr(&sock, &sin)?;
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            bind_sockaddr(&sock, &sin6)?;
        }
    }
    set_listen_backlog(&sock, backlog)?;
    Ok(std::net::TcpListener::from(sock))
}

/// A socket address of the C API: what [`bind_sockaddr`] takes.
#[cfg(any(target_os = "linux", target_os = "android"))]
trait SockAddr {}
#[cfg(any(target_os = "linux", target_os = "android"))]
impl SockAddr for libc::sockaddr_in {}
#[cfg(any(target_os = "linux", target_os = "android"))]
impl SockAddr for libc::sockaddr_in6 {}

/// Binds a socket to `addr`.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn bind_sockaddr<A: SockAddr>(sock: &impl AsRawFd, addr: &A) -> io::Result<()> {
    // SAFETY: `addr` is a sockaddr_in or sockaddr_in6 (the SockAddr
    // impls), valid for reads of its size, which is passed with it.
    unsafe {
        syscall!(bind(
            sock.as_raw_fd(),
            (addr as *const A).cast(),
            std::mem::size_of::<A>() as libc::socklen_t
        ))?
    };
    Ok(())
}

/// Lets a listener queue up to `backlog` finished handshakes (the kernel
/// caps it at `net.core.somaxconn`). Calling `listen` again on a listening
/// socket only changes its backlog.
pub fn set_listen_backlog(listener: &impl AsRawFd, backlog: i32) -> io::Result<()> {
    // SAFETY: listen takes no pointers.
    unsafe { syscall!(listen(listener.as_raw_fd(), backlog))? };
    Ok(())
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

/// A connected socket's bytes sent but not yet acknowledged by the peer
/// (`SIOCOUTQ`), and received but not yet read (`SIOCINQ`). `None` where
/// the kernel cannot tell (not Linux, or the ioctl failed).
pub fn unsent_and_unread(fd: RawFd) -> Option<(usize, usize)> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let (mut outq, mut inq): (libc::c_int, libc::c_int) = (0, 0);
        // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one c_int through the pointer,
        // which points to a live local.
        unsafe { syscall!(ioctl(fd, libc::TIOCOUTQ, &mut outq)) }.ok()?;
        // SAFETY: FIONREAD (SIOCINQ) writes one c_int, likewise.
        unsafe { syscall!(ioctl(fd, libc::FIONREAD, &mut inq)) }.ok()?;
        Some((outq.max(0) as usize, inq.max(0) as usize))
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = fd;
        None
    }
}

/// Blocks until one of two fds is readable (or hung up), `EINTR`
/// retried; says which.
///
/// # Errors
/// The OS error of `poll`.
pub fn wait_readable(fds: [RawFd; 2]) -> io::Result<[bool; 2]> {
    let mut pfds = fds.map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    loop {
        // SAFETY: `pfds` is a valid array of two pollfds.
        match unsafe { syscall!(poll(pfds.as_mut_ptr(), 2, -1)) } {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
            Ok(_) => return Ok(pfds.map(|p| p.revents != 0)),
        }
    }
}
