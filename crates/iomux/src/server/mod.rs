//! One driver per I/O model, all serving the same [`Handler`](crate::protocol::Handler).
//!
//! Every driver takes a bound listener, a [`Config`], a [`Stop`] and the
//! [`Counters`] it reports into, and serves until stopped. The lifecycle is
//! the same in each:
//!
//! * accept until [`Stop::stop`] is called; past [`Config::max_conns`] a new
//!   connection is accepted and closed at once (counted in `refused`), so the
//!   kernel backlog never fills with clients that wait forever;
//! * the peer's EOF flushes pending output, then the connection closes;
//! * a reset or broken pipe closes the connection quietly and is counted in
//!   `resets`; `SIGPIPE` is never raised (sends use `MSG_NOSIGNAL`);
//! * an accept error (`EMFILE`, `ENFILE`, `ECONNABORTED`, ...) is counted and
//!   never makes the loop spin or the server exit. Running out of fds is
//!   handled as [`Config::on_fd_exhaustion`] says ([`FdExhaustion`]): pause
//!   accepting for [`ACCEPT_BACKOFF`], close the waiting clients with a
//!   reserve fd, or close the connection idle longest to make room;
//! * no fd outlives its connection.
//!
//! | model | file | how it waits |
//! |---|---|---|
//! | [`Model::Blocking`] | `blocking.rs` | one client at a time, blocking `recv` |
//! | [`Model::Threaded`] | `threaded.rs` | a thread per connection, at most `max_conns` |
//! | [`Model::Pool`] | `pool.rs` | `workers` threads take connections from a queue |
//! | [`Model::BusyPoll`] | `busy_poll.rs` | non-blocking try-accept / try-recv / try-send in a loop: spins |
//! | [`Model::Select`], [`Model::Poll`], [`Model::Epoll`] | `readiness.rs` | one thread, one [`Reactor`](crate::reactor::Reactor) on that selector |
//! | [`Model::Coroutine`] | `coroutine.rs` | one thread, async tasks on the reactor ([`crate::reactor::task`]) |
//! | [`Model::Uring`] | `uring.rs` | one thread, one io_uring: completions, not readiness (see [`crate::uring`]) |
//!
//! The reactor models also close idle connections ([`Config::idle_timeout`]),
//! drain gracefully on stop ([`Config::drain_timeout`]: stop accepting and
//! reading, send what is already produced, then close), and the readiness
//! ones can run the handler on an offload pool ([`Config::offload_threads`]).
//!
//! The one-thread loops of epoll, coroutine and uring also scale out to
//! several loops, one per thread, each with its own `SO_REUSEPORT` listener
//! ([`Config::threads`], [`bind_loops`], [`serve_loops`]; `loops.rs`): the
//! driver of each loop is the single-loop one, unchanged.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;

pub use crate::protocol::Factory;

mod accept;
mod blocking;
mod busy_poll;
mod config;
mod coroutine;
mod loops;
mod model;
mod pool;
mod readiness;
mod stop;
mod threaded;
#[cfg(all(target_os = "linux", feature = "uring"))]
mod uring;

pub use crate::counters::{Counters, ServerCounters, Snapshot};
pub use crate::sys::is_peer_gone;
pub(crate) use accept::{Accepted, Acceptor};
pub use accept::{FdExhaustion, ACCEPT_BACKOFF};
pub use config::Config;
pub use loops::{bind_loops, serve_loops};
pub use model::{Capabilities, Model, Setting};
pub use stop::Stop;

/// Serves `listener` with `model` on the calling thread until `stop` is
/// given, then closes the listener and returns. Connections still open are
/// closed by the readiness and busy-poll drivers; thread-based drivers let
/// each connection thread finish with its client.
///
/// One loop: [`serve_loops`] runs [`Config::threads`] of them.
///
/// # Errors
/// An invalid `config` (`threads` above 1 included), a model this platform
/// lacks, or a failure to set up (creating the selector). Errors of single
/// connections are never returned: they close that connection and are
/// counted.
pub fn serve<F: Factory>(
    model: Model,
    listener: TcpListener,
    config: &Config,
    stop: &Stop,
    counters: &Arc<Counters>,
    factory: F,
) -> io::Result<()> {
    config.validate_for(model)?;
    if config.threads != 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "serve runs one loop; for threads above 1, bind with bind_loops and call serve_loops",
        ));
    }
    if config.catch_signals && model.backend().is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("catch_signals: the {model} loop does not watch signals itself; serve it with serve_loops or Server::spawn, which watch them on the calling thread"),
        ));
    }
    match model {
        Model::Blocking => blocking::serve(listener, config, stop, counters, factory),
        Model::Threaded => threaded::serve(listener, config, stop, counters, factory),
        Model::Pool => pool::serve(listener, config, stop, counters, factory),
        Model::BusyPoll => busy_poll::serve(listener, config, stop, counters, factory),
        Model::Select | Model::Poll | Model::Epoll => {
            let backend = model.backend().expect("readiness model");
            readiness::serve(backend, listener, config, stop, counters, factory)
        }
        Model::Coroutine => coroutine::serve(listener, config, stop, counters, factory),
        #[cfg(all(target_os = "linux", feature = "uring"))]
        Model::Uring => uring::serve(listener, config, stop, counters, factory),
        #[cfg(not(all(target_os = "linux", feature = "uring")))]
        Model::Uring => {
            drop((listener, stop, counters, factory));
            Err(crate::uring::Unavailable::NotBuilt.into())
        }
    }
}

/// A server running on its own thread (and one thread per loop, with
/// [`Config::threads`] above 1): what tests and the bench start.
#[derive(Debug)]
pub struct Server {
    model: Model,
    addr: SocketAddr,
    stop: Stop,
    counters: ServerCounters,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port), once per loop of
    /// [`Config::threads`], and serves it with `model` on new threads, one
    /// handler from `factory` per connection.
    ///
    /// # Errors
    /// The bind error, or `config.validate_for(model)`'s.
    pub fn spawn<F: Factory>(
        model: Model,
        addr: SocketAddr,
        config: Config,
        factory: F,
    ) -> io::Result<Server> {
        config.validate_for(model)?;
        let listeners = bind_loops(addr, config.threads)?;
        let addr = listeners[0].local_addr()?;
        let stop = Stop::new()?;
        let counters = ServerCounters::new(config.threads);
        let thread = {
            let (stop, counters) = (stop.clone(), counters.clone());
            std::thread::Builder::new()
                .name(format!("iomux-{model}"))
                .spawn(move || serve_loops(model, listeners, &config, &stop, &counters, factory))?
        };
        Ok(Server {
            model,
            addr,
            stop,
            counters,
            thread: Some(thread),
        })
    }

    /// The model serving.
    pub fn model(&self) -> Model {
        self.model
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The live counters, per loop and in all.
    pub fn counters(&self) -> &ServerCounters {
        &self.counters
    }

    /// Stops the server and waits for its thread.
    ///
    /// # Errors
    /// The error `serve` returned; a panic in the driver becomes an error.
    pub fn shutdown(mut self) -> io::Result<()> {
        self.stop.stop();
        let thread = self.thread.take().expect("joined once");
        thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("server thread panicked")))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
