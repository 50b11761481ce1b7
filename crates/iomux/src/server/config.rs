//! The server's settings, and their validation against a model.

use std::io;
use std::time::Duration;

use super::{FdExhaustion, Model, Setting};

/// A validated server configuration.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Worker threads of [`Model::Pool`] (at least 1).
    pub workers: usize,
    /// Connections served at once (at least 1), per loop; more are accepted
    /// and closed.
    pub max_conns: usize,
    /// Most output bytes pending per connection before reading from that
    /// peer pauses (backpressure). Non-blocking models only: the blocking
    /// ones write each reply in full before reading again.
    pub max_output: usize,
    /// Bytes read per `recv` (the one scratch buffer of a loop, or of a thread).
    pub read_chunk: usize,
    /// Reactor models: close a connection that has sent nothing and had
    /// nothing sent to it for this long (slowloris clients). `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Reactor models: on stop, how long connections may take to receive
    /// the output already produced for them before they are closed anyway.
    pub drain_timeout: Duration,
    /// Readiness models: run the handler on this many offload threads, so
    /// a slow handler cannot stall the loop (0: on the loop thread).
    pub offload_threads: usize,
    /// Reactor models: stop gracefully on `SIGINT` and `SIGTERM`, caught by
    /// the loop itself (a second signal closes everything at once). For a
    /// process that runs one server: signals belong to the whole process.
    /// With several [`threads`](Config::threads), the calling thread of
    /// [`serve_loops`](super::serve_loops) catches them for every loop: the first drains them
    /// all, a second one has the signal's previous disposition (by default
    /// it ends the process at once).
    pub catch_signals: bool,
    /// What to do when `accept` fails for lack of fds (`EMFILE`, `ENFILE`).
    pub on_fd_exhaustion: FdExhaustion,
    /// Loops, each on its own thread with its own listener, for the models
    /// that [support it](Model::supports_threads) (at least 1). A
    /// connection stays on the loop that accepted it. [`serve`](super::serve) runs one;
    /// [`serve_loops`](super::serve_loops) and [`Server::spawn`](super::Server::spawn) run them all.
    pub threads: usize,
    /// [`Model::Uring`] only: each wait for completions lasts this long
    /// (unless 1,024 completions are in first; at most 10 ms) before the
    /// loop handles what came, so completions are handled
    /// in bigger batches: fewer wake-ups of the loop and of its peers per
    /// round trip, for up to this much more latency. Like a network card's
    /// interrupt coalescing. Needs `IORING_FEAT_MIN_TIMEOUT` (Linux 6.12).
    /// `None` (the default): the loop wakes at the first completion.
    pub uring_batch_wait: Option<Duration>,
    /// The models that [wait for events](Model::supports_latency_budget):
    /// latency the loop may add to batch its wake-ups, adapting to the
    /// load ([`crate::budget`]): nothing while load is light, up to half of
    /// it under sustained load (a sleep before the selector's wait; for
    /// uring, the kernel's minimum wait, Linux 6.12). At most
    /// [`MAX_LATENCY_BUDGET`](Config::MAX_LATENCY_BUDGET). `None` (the
    /// default): never.
    pub latency_budget: Option<Duration>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            workers: 4,
            max_conns: 10_000,
            max_output: 256 * 1024,
            read_chunk: 64 * 1024,
            idle_timeout: None,
            drain_timeout: Duration::from_secs(1),
            offload_threads: 0,
            catch_signals: false,
            on_fd_exhaustion: FdExhaustion::Pause,
            threads: 1,
            uring_batch_wait: None,
            latency_budget: None,
        }
    }
}

impl Config {
    /// The longest [`uring_batch_wait`](Config::uring_batch_wait): past
    /// this, added latency buys no more batching worth having.
    pub const MAX_URING_BATCH_WAIT: Duration = Duration::from_millis(10);

    /// The longest [`latency_budget`](Config::latency_budget).
    pub const MAX_LATENCY_BUDGET: Duration = Duration::from_millis(100);

    /// Checks the values a driver relies on.
    ///
    /// # Errors
    /// `InvalidInput` naming the bad field.
    pub fn validate(&self) -> io::Result<()> {
        let bad = |what: &str| {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                what.to_string(),
            ))
        };
        if self.workers == 0 {
            return bad("workers must be at least 1");
        }
        if self.max_conns == 0 {
            return bad("max_conns must be at least 1");
        }
        if self.max_output == 0 {
            return bad("max_output must be at least 1 byte");
        }
        if self.read_chunk == 0 {
            return bad("read_chunk must be at least 1 byte");
        }
        if self.idle_timeout == Some(Duration::ZERO) {
            return bad("idle_timeout must be longer than zero (or off)");
        }
        if self.threads == 0 {
            return bad("threads must be at least 1");
        }
        if let Some(wait) = self.uring_batch_wait {
            if wait.is_zero() || wait > Config::MAX_URING_BATCH_WAIT {
                return bad("uring_batch_wait must be longer than zero and at most 10 ms (or off)");
            }
        }
        if let Some(budget) = self.latency_budget {
            if budget.is_zero() || budget > Config::MAX_LATENCY_BUDGET {
                return bad("latency_budget must be longer than zero and at most 100 ms (or off)");
            }
            if self.uring_batch_wait.is_some() {
                return bad("latency_budget and uring_batch_wait both set how long uring's waits last; use one (latency_budget adapts to the load, uring_batch_wait is fixed)");
            }
        }
        Ok(())
    }

    /// The settings in use that only some models support.
    pub fn settings(&self) -> Vec<Setting> {
        Setting::ALL
            .into_iter()
            .filter(|s| match s {
                Setting::Threads => self.threads > 1,
                Setting::IdleTimeout => self.idle_timeout.is_some(),
                Setting::Offload => self.offload_threads > 0,
                Setting::Shed => self.on_fd_exhaustion == FdExhaustion::Shed,
                Setting::UringBatchWait => self.uring_batch_wait.is_some(),
                Setting::LatencyBudget => self.latency_budget.is_some(),
            })
            .collect()
    }

    /// [`validate`](Config::validate), and whether `model` supports every
    /// setting in use ([`settings`](Config::settings)), by its row of the
    /// [capabilities table](super::Capabilities).
    ///
    /// ```
    /// use iomux::server::{Config, FdExhaustion, Model};
    ///
    /// let shed = Config { on_fd_exhaustion: FdExhaustion::Shed, ..Config::default() };
    /// assert!(shed.validate_for(Model::Epoll).is_ok());
    /// // A thread per connection: no one loop can pick a connection to close.
    /// let err = shed.validate_for(Model::Threaded).unwrap_err();
    /// assert!(err.to_string().contains("use reserve-fd or pause"));
    /// ```
    ///
    /// # Errors
    /// `InvalidInput` naming the bad field, or the first setting `model`
    /// does not support and the models that do.
    pub fn validate_for(&self, model: Model) -> io::Result<()> {
        self.validate()?;
        match self.settings().into_iter().find(|s| !s.supported_by(model)) {
            Some(s) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                s.refusal(model),
            )),
            None => Ok(()),
        }
    }
}
