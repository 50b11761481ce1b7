//! Signals to a pipe: the self-pipe trick.
//!
//! [`watch`] installs a handler for one signal that writes the signal's
//! number, one byte, to a pipe; an event loop watches the pipe's read end
//! like any other fd and runs its callback on its own thread. The handler
//! does only what is async-signal-safe: an atomic load and a `write(2)`,
//! with `errno` saved and restored around them.
//!
//! Why not `signalfd` on Linux: a signalfd only sees a signal that is
//! blocked in *every* thread of the process. A process-directed signal
//! (`kill`, Ctrl-C) goes to any one thread that does not block it: in a
//! program with threads the loop did not create (a test harness, a thread
//! pool, a library's helper thread) it would run the default action there,
//! which for `SIGTERM` or `SIGUSR1` ends the process. A handler works
//! whichever thread the kernel picks, which is why libuv, tokio and mio all
//! use a self-pipe on Linux too.
//!
//! Each signal has its own pipe, created the first time the signal is
//! watched and never closed: a handler already running on another thread
//! when the watch ends may still write to it, and a closed and reused fd
//! number would take that byte into an unrelated file.

use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Signal numbers are below this on every supported OS (Linux: 1..=64).
const MAX_SIGNAL: usize = 65;

/// The write end of each signal's pipe, or -1 before the first watch.
/// Set once, never changed: the handler reads it.
static WRITE_FD: [AtomicI32; MAX_SIGNAL] = [const { AtomicI32::new(-1) }; MAX_SIGNAL];
/// The read end of each signal's pipe, or -1.
static READ_FD: [AtomicI32; MAX_SIGNAL] = [const { AtomicI32::new(-1) }; MAX_SIGNAL];
/// Whether some loop watches the signal now: one at a time.
static WATCHED: [AtomicBool; MAX_SIGNAL] = [const { AtomicBool::new(false) }; MAX_SIGNAL];

/// A watched signal: restore the previous disposition with [`unwatch`].
pub struct Watch {
    signo: i32,
    previous: libc::sigaction,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("signo", &self.signo).finish()
    }
}

impl Watch {
    /// The signal number.
    pub fn signo(&self) -> i32 {
        self.signo
    }
}

/// The name of a signal, for messages ("SIGTERM"), or "signal N".
pub fn name(signo: i32) -> String {
    let known = [
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGINT, "SIGINT"),
        (libc::SIGQUIT, "SIGQUIT"),
        (libc::SIGUSR1, "SIGUSR1"),
        (libc::SIGUSR2, "SIGUSR2"),
        (libc::SIGPIPE, "SIGPIPE"),
        (libc::SIGALRM, "SIGALRM"),
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGCHLD, "SIGCHLD"),
        (libc::SIGWINCH, "SIGWINCH"),
        (libc::SIGKILL, "SIGKILL"),
        (libc::SIGSTOP, "SIGSTOP"),
        (libc::SIGSEGV, "SIGSEGV"),
        (libc::SIGBUS, "SIGBUS"),
        (libc::SIGFPE, "SIGFPE"),
        (libc::SIGILL, "SIGILL"),
    ];
    known
        .iter()
        .find(|(n, _)| *n == signo)
        .map_or_else(|| format!("signal {signo}"), |(_, s)| (*s).to_string())
}

extern "C" fn on_signal(signo: libc::c_int) {
    let saved = errno();
    let fd = usize::try_from(signo)
        .ok()
        .and_then(|i| WRITE_FD.get(i))
        .map_or(-1, |a| a.load(Ordering::Acquire));
    if fd >= 0 {
        let byte = [signo as u8];
        // SAFETY: write(2) is async-signal-safe; `byte` is valid for one
        // byte; the fd is a pipe end that is never closed. A full pipe
        // (EAGAIN) drops the byte: the signal is already pending there.
        let _ = unsafe { libc::write(fd, byte.as_ptr().cast(), 1) };
    }
    set_errno(saved);
}

/// Starts delivering `signo` to its pipe and returns the pipe's read end
/// (non-blocking, drained of earlier deliveries) with the watch. The signal
/// is unblocked in the calling thread, so a program can block it early and
/// have a delivery that came before the watch wait for it.
///
/// # Errors
/// `InvalidInput` for a signal that cannot be caught (`SIGKILL`, `SIGSTOP`)
/// or must not be (`SIGSEGV`, `SIGBUS`, `SIGFPE`, `SIGILL`: returning from
/// their handler re-runs the faulting instruction); `AlreadyExists` if
/// another loop of this process watches it; the OS error of `pipe` or
/// `sigaction`.
pub fn watch(signo: i32) -> io::Result<(RawFd, Watch)> {
    let bad = |why: &str| {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} {why}", name(signo)),
        ))
    };
    let idx = match usize::try_from(signo) {
        Ok(i) if (1..MAX_SIGNAL).contains(&i) => i,
        _ => return bad("is not a signal number"),
    };
    if [libc::SIGKILL, libc::SIGSTOP].contains(&signo) {
        return bad("cannot be caught");
    }
    if [libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE, libc::SIGILL].contains(&signo) {
        return bad("is a fault signal; a loop cannot handle it after the fact");
    }
    if WATCHED[idx].swap(true, Ordering::AcqRel) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} is already watched by another event loop in this process; watch it in one loop and post to the others",
                name(signo)
            ),
        ));
    }
    match install(idx, signo) {
        Ok(ok) => Ok(ok),
        Err(e) => {
            WATCHED[idx].store(false, Ordering::Release);
            Err(e)
        }
    }
}

fn install(idx: usize, signo: i32) -> io::Result<(RawFd, Watch)> {
    if WRITE_FD[idx].load(Ordering::Acquire) < 0 {
        let (read, write) = super::pipe()?;
        // Only the watcher of `idx` gets here (WATCHED is held), so the
        // pair is stored once.
        READ_FD[idx].store(read.into_raw_fd(), Ordering::Release);
        WRITE_FD[idx].store(write.into_raw_fd(), Ordering::Release);
    }
    let read = READ_FD[idx].load(Ordering::Acquire);
    // Bytes of deliveries to an earlier watch are not news for this one.
    let mut buf = [0u8; 64];
    // SAFETY: `read` is a pipe end this module owns and never closes; it
    // outlives the borrow.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(read) };
    while matches!(super::read(&fd, &mut buf), Ok(n) if n > 0) {}
    // SAFETY: an all-zero sigaction is a valid value (no handler, empty
    // mask, no flags) for the fields set below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: `action.sa_mask` is a valid sigset_t to clear.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: as above; sigaction fills it.
    let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid sigactions; the handler is an
    // `extern "C" fn(c_int)` that only does async-signal-safe work.
    unsafe { super::syscall!(sigaction(signo, &action, &mut previous))? };
    // A program may block the signal until its loop is ready, so that one
    // arriving early waits instead of killing it: from now on this thread
    // takes it (a pending one is delivered at once).
    // SAFETY: an all-zero sigset_t is valid storage; sigemptyset
    // initialises it and sigaddset takes a valid signal number.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signo);
    }
    // SAFETY: `set` is initialised; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        // SAFETY: `previous` is what the kernel gave back just above.
        let _ = unsafe { super::syscall!(sigaction(signo, &previous, std::ptr::null_mut())) };
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok((read.as_raw_fd(), Watch { signo, previous }))
}

/// Restores the disposition the signal had before [`watch`] and lets
/// another loop watch it. The pipe stays open (see the module docs).
pub fn unwatch(watch: Watch) {
    // SAFETY: `previous` is the sigaction the kernel gave back in `watch`.
    let _ = unsafe {
        super::syscall!(sigaction(
            watch.signo,
            &watch.previous,
            std::ptr::null_mut()
        ))
    };
    WATCHED[watch.signo as usize].store(false, Ordering::Release);
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn errno_location() -> *mut libc::c_int {
    #[cfg(target_os = "linux")]
    // SAFETY: returns the calling thread's errno slot; no preconditions.
    return unsafe { libc::__errno_location() };
    #[cfg(target_os = "android")]
    // SAFETY: as above.
    return unsafe { libc::__errno() };
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn errno_location() -> *mut libc::c_int {
    // SAFETY: returns the calling thread's errno slot; no preconditions.
    unsafe { libc::__error() }
}

fn errno() -> libc::c_int {
    // SAFETY: the slot is the calling thread's own, valid for its lifetime.
    unsafe { *errno_location() }
}

fn set_errno(value: libc::c_int) {
    // SAFETY: as in `errno`.
    unsafe { *errno_location() = value };
}
