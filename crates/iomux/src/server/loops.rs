//! Several loops of one model, one per thread, each with its own listener
//! ([`Config::threads`]): how the one-thread event loops of epoll,
//! coroutine and uring use more than one core.
//!
//! Each loop is the model's single-loop driver (`readiness.rs`,
//! `coroutine.rs`, `uring.rs`), run as it is on its own thread with its own
//! listener and its own [`Counters`](super::Counters); the loops share the
//! [`Stop`] and nothing else. A connection lives and dies on the loop that
//! accepted it, so no connection state is ever touched by two threads, and
//! no lock is taken on the data path.
//!
//! The listeners are N sockets bound to one port with `SO_REUSEPORT`
//! ([`sys::bind_reuseport`]): each has its own accept queue, and the kernel
//! puts each new connection in one of them by a hash of its addresses and
//! ports. The alternative, one listener that every loop watches with
//! `EPOLLEXCLUSIVE`, wakes one waiting loop per connection; which one is
//! the kernel's choice, and a loop that accepts a burst drains the whole
//! queue. Measured with the bench's 100 and 1,000 connections on two
//! loops, the busier loop took 50 to 61% of them with `SO_REUSEPORT`, and
//! 52 to 98% (epoll), 50 to 99% (coroutine) and 74 to 100% (uring, whose
//! multishot accepts on one shared listener gave every connection to one
//! ring in 12 of 14 measured rows) with the shared listener: loops left
//! idle on a machine with cores to spare. The shared listener would also
//! need changes to the drivers: an exclusive registration (without
//! `EPOLLRDHUP`, and never modified, so a paused listener is deleted and
//! added again) in the selector and in the coroutine executor.
//!
//! Quirks of `SO_REUSEPORT`:
//!
//! a. the hash ignores load: a busy loop gets its share of new connections
//!    all the same, and they wait in its accept queue until it accepts;
//! b. a listener that closes (at stop) resets the connections still in its
//!    accept queue (the kernel migrates them to another listener of the
//!    group only with `net.ipv4.tcp_migrate_req`);
//! c. any socket of the same user that binds the port with `SO_REUSEPORT`
//!    joins the group. Binding port 0 never picks a port that a group
//!    already holds, so the first listener gets a port of its own, and the
//!    others then bind that port.
//!
//! Signals: a signal can be watched by one loop of a process only
//! ([`sys::signal`]), so with [`Config::catch_signals`] the loops do not
//! watch them: the calling thread does, and gives the shared stop.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::thread::JoinHandle;

use super::{serve as serve_one, Config, Factory, Model, ServerCounters, Stop};
use crate::reactor::{Options, Reactor};
use crate::selector::{Interest, Mode};
use crate::sys;

/// Listen backlog of each `SO_REUSEPORT` listener, as std's
/// `TcpListener::bind` gives its one (the CLI raises both).
const BACKLOG: i32 = 128;

/// The listeners of [`serve_loops`]: one per loop of `threads`, all on
/// `addr`. One loop gets a plain listener (std's `TcpListener::bind`); more
/// get one each with `SO_REUSEPORT` ([`sys::bind_reuseport`]), the first
/// on `addr` and the others on the port it got, so port 0 works.
///
/// # Errors
/// The bind error; `InvalidInput` for no loop; `Unsupported` for `threads`
/// above 1 where the kernel does not spread connections over
/// `SO_REUSEPORT` listeners (not Linux).
pub fn bind_loops(addr: SocketAddr, threads: usize) -> io::Result<Vec<TcpListener>> {
    match threads {
        0 => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "threads must be at least 1",
        )),
        1 => Ok(vec![TcpListener::bind(addr)?]),
        n => bind_group(addr, n),
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn bind_group(mut addr: SocketAddr, threads: usize) -> io::Result<Vec<TcpListener>> {
    let first = sys::bind_reuseport(addr, BACKLOG)?;
    addr.set_port(first.local_addr()?.port());
    let mut all = vec![first];
    for _ in 1..threads {
        all.push(sys::bind_reuseport(addr, BACKLOG)?);
    }
    Ok(all)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn bind_group(_: SocketAddr, _: usize) -> io::Result<Vec<TcpListener>> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "several loops need SO_REUSEPORT to spread connections, which only Linux does",
    ))
}

/// Serves `model` with one loop per listener (from [`bind_loops`]), each
/// on its own thread, until `stop` is given; returns once every loop has
/// returned. Each loop is the model's single-loop driver, as
/// [`serve`](super::serve) runs it, with its own listener and its own
/// [`Counters`](super::Counters) (loop `i` counts into
/// `counters.loops()[i]`). With one listener, this is
/// [`serve`](super::serve) on the calling thread.
///
/// A loop that fails gives `stop`, so the others end too. With
/// [`Config::catch_signals`] and several loops, the calling thread catches
/// `SIGINT` and `SIGTERM` for all of them and gives `stop` (every loop
/// drains).
///
/// # Errors
/// As [`serve`](super::serve): the first loop's error, in listener order;
/// also `InvalidInput` if `config.threads`, the listeners and the
/// counters' loops are not as many, or `model` runs one loop only.
pub fn serve_loops<F: Factory>(
    model: Model,
    listeners: Vec<TcpListener>,
    config: &Config,
    stop: &Stop,
    counters: &ServerCounters,
    factory: F,
) -> io::Result<()> {
    config.validate_for(model)?;
    let n = listeners.len();
    if n != config.threads || n != counters.loops().len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "threads is {}, with {n} listeners and counters for {} loops: they must agree",
                config.threads,
                counters.loops().len()
            ),
        ));
    }
    // One loop that watches signals itself (select, poll, epoll) runs on
    // this thread; any other model watches them from here, as with
    // several loops.
    if n == 1 && (!config.catch_signals || model.backend().is_some()) {
        let listener = listeners.into_iter().next().expect("one listener");
        return serve_one(model, listener, config, stop, &counters.loops()[0], factory);
    }
    // Watching signals can fail (another loop of the process has them):
    // find out before any loop starts.
    let mut signals = if config.catch_signals {
        Some(watch_signals(stop, config, n)?)
    } else {
        None
    };
    let one = Config {
        threads: 1,
        catch_signals: false,
        ..*config
    };
    let mut threads = Vec::with_capacity(n);
    for (i, (listener, counters)) in listeners.into_iter().zip(counters.loops()).enumerate() {
        let (loop_stop, counters, factory) = (stop.clone(), counters.clone(), factory.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("iomux-{model}-{i}"))
            .spawn(move || {
                let res = serve_one(model, listener, &one, &loop_stop, &counters, factory);
                // A loop returns once stopped, or on a failure: then the
                // others must not go on serving without it.
                loop_stop.stop();
                res
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                stop.stop();
                let _ = join_all(threads);
                return Err(e);
            }
        }
    }
    let watched = match &mut signals {
        Some(r) => r.run(&mut ()),
        None => Ok(()),
    };
    if watched.is_err() {
        stop.stop();
    }
    // The signals' previous dispositions come back here, while the loops
    // drain: a second signal has its old effect.
    drop(signals);
    let served = join_all(threads);
    watched.and(served)
}

/// A loop on the calling thread that turns the first `SIGINT` or `SIGTERM`
/// into `stop` for every loop, and returns once stopped, by a signal or
/// not.
fn watch_signals(stop: &Stop, config: &Config, loops: usize) -> io::Result<Reactor<()>> {
    let mut r: Reactor<()> = Reactor::new(Options::default())?;
    r.add_io(stop.fd(), Interest::READABLE, Mode::Level, |r, _, _| {
        r.stop()
    })?;
    let drain = config.drain_timeout;
    for signo in [libc::SIGINT, libc::SIGTERM] {
        let stop = stop.clone();
        r.add_signal(signo, move |r, _, signo| {
            log::warn!(
                "{} received: draining {loops} loops (at most {} ms); a second signal ends the process",
                sys::signal::name(signo),
                drain.as_millis()
            );
            stop.stop();
            r.stop();
        })?;
    }
    Ok(r)
}

/// Waits for every loop; the first error in loop order, if any.
fn join_all(threads: Vec<JoinHandle<io::Result<()>>>) -> io::Result<()> {
    let mut first = Ok(());
    for t in threads {
        let res = t
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("a loop thread panicked")));
        if first.is_ok() {
            first = res;
        }
    }
    first
}
