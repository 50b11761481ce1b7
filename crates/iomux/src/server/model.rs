//! The I/O models, and what each one supports.

use std::fmt;
use std::str::FromStr;

use crate::selector::Backend;

/// The I/O models iomux serves with.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Model {
    /// Iterative: one client at a time on the calling thread; a second
    /// client waits in the listen backlog until the first closes.
    Blocking,
    /// A thread per connection, capped at `max_conns`.
    Threaded,
    /// A fixed pool of `workers` threads; connections queue for a free one.
    Pool,
    /// Non-blocking sockets polled in a loop without waiting: burns a core.
    BusyPoll,
    /// Readiness with `select(2)`.
    Select,
    /// Readiness with `poll(2)`.
    Poll,
    /// Readiness with `epoll(7)`.
    Epoll,
    /// Coroutines: async/await tasks on iomux's own executor and reactor.
    Coroutine,
    /// Completions with io_uring (Linux 5.19+, probed at run time; see
    /// [`crate::uring`]).
    Uring,
}

impl Model {
    /// Every model, in the order the seeds introduce them.
    pub const ALL: [Model; 9] = [
        Model::Blocking,
        Model::Threaded,
        Model::Pool,
        Model::BusyPoll,
        Model::Select,
        Model::Poll,
        Model::Epoll,
        Model::Coroutine,
        Model::Uring,
    ];

    /// The name the CLI uses.
    pub fn name(self) -> &'static str {
        match self {
            Model::Blocking => "blocking",
            Model::Threaded => "threaded",
            Model::Pool => "pool",
            Model::BusyPoll => "busy-poll",
            Model::Select => "select",
            Model::Poll => "poll",
            Model::Epoll => "epoll",
            Model::Coroutine => "coroutine",
            Model::Uring => "uring",
        }
    }

    /// What `auto` means on this platform: the readiness model on the
    /// recommended selector backend (epoll on Linux).
    pub fn auto() -> Model {
        Model::for_backend(Backend::recommended())
    }

    /// The readiness model on `backend`.
    pub fn for_backend(backend: Backend) -> Model {
        match backend {
            Backend::Select => Model::Select,
            Backend::Poll => Model::Poll,
            Backend::Epoll => Model::Epoll,
        }
    }

    /// The selector backend of a readiness model.
    pub fn backend(self) -> Option<Backend> {
        match self {
            Model::Select => Some(Backend::Select),
            Model::Poll => Some(Backend::Poll),
            Model::Epoll => Some(Backend::Epoll),
            _ => None,
        }
    }

    /// Whether the model runs on a [`Reactor`](crate::reactor::Reactor),
    /// and so has idle timeouts, graceful drain and signal handling.
    pub fn uses_reactor(self) -> bool {
        matches!(
            self,
            Model::Select | Model::Poll | Model::Epoll | Model::Coroutine
        )
    }

    /// Whether the model serves clients concurrently (all but iterative
    /// blocking).
    pub fn is_concurrent(self) -> bool {
        self != Model::Blocking
    }

    /// Whether the model can serve with several loops, one per thread,
    /// each with its own listener ([`Config::threads`](super::Config::threads)): epoll, coroutine
    /// and uring. The others run one loop, or are already a thread per
    /// connection or per worker.
    pub fn supports_threads(self) -> bool {
        matches!(self, Model::Epoll | Model::Coroutine | Model::Uring)
    }

    /// Whether the model waits for many connections' events at once, so a
    /// [latency budget](super::Config::latency_budget) can batch them:
    /// select, poll, epoll, coroutine and uring. The thread models wait
    /// per connection, and busy-poll never waits.
    pub fn supports_latency_budget(self) -> bool {
        self.uses_reactor() || self == Model::Uring
    }

    /// Whether this platform can run the model (for [`Model::Uring`], a
    /// run-time probe: [`crate::uring::probe()`] says why not).
    pub fn is_supported(self) -> bool {
        if self == Model::Uring {
            return crate::uring::probe().is_ok();
        }
        self.backend().is_none_or(Backend::is_supported)
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Model {
    type Err = String;
    /// Parses a model name; `auto` gives [`Model::auto`].
    fn from_str(s: &str) -> Result<Model, String> {
        if s == "auto" {
            return Ok(Model::auto());
        }
        Model::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Model::ALL.iter().map(|m| m.name()).collect();
                format!("unknown model {s:?}; expected auto, {}", names.join(", "))
            })
    }
}
