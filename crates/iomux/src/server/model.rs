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

    /// Whether the model is event-driven: one thread serves every
    /// connection from one loop that waits for events (select, poll,
    /// epoll, coroutine, uring), so output is bounded per connection
    /// ([`Config::max_output`](super::Config::max_output)) rather than
    /// by a thread blocked in `send`.
    pub fn is_event_driven(self) -> bool {
        matches!(
            self,
            Model::Select | Model::Poll | Model::Epoll | Model::Coroutine | Model::Uring
        )
    }

    /// Whether the model serves clients concurrently (all but iterative
    /// blocking).
    pub fn is_concurrent(self) -> bool {
        self.capabilities().concurrent
    }

    /// Whether the model can serve with several loops, one per thread,
    /// each with its own listener ([`Config::threads`](super::Config::threads)): epoll, coroutine
    /// and uring. The others run one loop, or are already a thread per
    /// connection or per worker.
    pub fn supports_threads(self) -> bool {
        self.capabilities().threads
    }

    /// What the model supports: its row of the [capabilities
    /// table](Capabilities), from which validation
    /// ([`Config::validate_for`](super::Config::validate_for)), the CLI's
    /// refusals and the README's table all come.
    pub const fn capabilities(self) -> Capabilities {
        CAPABILITIES[self as usize]
    }

    /// The capabilities table in Markdown, one row per model: the
    /// README's table is this text (a test checks it).
    pub fn capability_table() -> String {
        let yes = |b: bool| if b { "yes" } else { "-" };
        let mut t = String::from(
            "| model | concurrent | `--threads` | `--idle-timeout` | drain on stop | `--offload` | `--on-fd-exhaustion shed` | `--uring-batch-wait` | `--latency-budget` |\n|---|---|---|---|---|---|---|---|---|\n",
        );
        for m in Model::ALL {
            let c = m.capabilities();
            t += &format!(
                "| `{m}` | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                yes(c.concurrent),
                yes(c.threads),
                yes(c.idle_timeout),
                yes(c.drain),
                yes(c.offload),
                yes(c.shed),
                yes(c.uring_batch_wait),
                yes(c.latency_budget)
            );
        }
        t
    }

    /// Whether the model waits for many connections' events at once, so a
    /// [latency budget](super::Config::latency_budget) can batch them:
    /// select, poll, epoll, coroutine and uring. The thread models wait
    /// per connection, and busy-poll never waits.
    pub fn supports_latency_budget(self) -> bool {
        self.capabilities().latency_budget
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

/// What one model supports (a row of the table, like libev's
/// `ev_supported_backends`): a setting a model does not support is
/// refused by [`Config::validate_for`](super::Config::validate_for) with
/// one line that names the models that do.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Serves several clients at once (iterative `blocking` does not).
    pub concurrent: bool,
    /// Several loops, one per thread ([`Config::threads`](super::Config::threads) above 1).
    pub threads: bool,
    /// Closes idle connections ([`Config::idle_timeout`](super::Config::idle_timeout)).
    pub idle_timeout: bool,
    /// On stop, stops accepting and reading, sends what was produced, then
    /// closes, within [`Config::drain_timeout`](super::Config::drain_timeout).
    /// The others close at once (busy-poll) or leave each connection to
    /// its thread (blocking, threaded, pool).
    pub drain: bool,
    /// Runs the handler on an offload pool ([`Config::offload_threads`](super::Config::offload_threads)).
    pub offload: bool,
    /// Can close an idle connection to make room
    /// ([`FdExhaustion::Shed`](super::FdExhaustion::Shed)): it owns every
    /// connection in one loop.
    pub shed: bool,
    /// [`Config::uring_batch_wait`](super::Config::uring_batch_wait).
    pub uring_batch_wait: bool,
    /// [`Config::latency_budget`](super::Config::latency_budget): it waits
    /// for many connections' events at once, so there is a wait to delay
    /// and a batch to gather.
    pub latency_budget: bool,
}

// One argument per column of the table below.
#[allow(clippy::too_many_arguments)]
const fn caps(
    concurrent: bool,
    threads: bool,
    idle_timeout: bool,
    drain: bool,
    offload: bool,
    shed: bool,
    uring_batch_wait: bool,
    latency_budget: bool,
) -> Capabilities {
    Capabilities {
        concurrent,
        threads,
        idle_timeout,
        drain,
        offload,
        shed,
        uring_batch_wait,
        latency_budget,
    }
}

/// The table, in the order of [`Model::ALL`] (the enum's order).
#[rustfmt::skip]
const CAPABILITIES: [Capabilities; 9] = [
    //   concurrent threads idle   drain  offload shed   batch  budget
    caps(false,     false,  false, false, false,  false, false, false), // blocking
    caps(true,      false,  false, false, false,  false, false, false), // threaded
    caps(true,      false,  false, false, false,  false, false, false), // pool
    caps(true,      false,  false, false, false,  false, false, false), // busy-poll
    caps(true,      false,  true,  true,  true,   true,  false, true),  // select
    caps(true,      false,  true,  true,  true,   true,  false, true),  // poll
    caps(true,      true,   true,  true,  true,   true,  false, true),  // epoll
    caps(true,      true,   false, true,  true,   false, false, true),  // coroutine
    caps(true,      true,   false, true,  false,  true,  true,  true),  // uring
];

/// A setting of [`Config`](super::Config) that only some models support.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Setting {
    /// [`Config::threads`](super::Config::threads) above 1.
    Threads,
    /// [`Config::idle_timeout`](super::Config::idle_timeout).
    IdleTimeout,
    /// [`Config::offload_threads`](super::Config::offload_threads) above 0.
    Offload,
    /// [`FdExhaustion::Shed`](super::FdExhaustion::Shed).
    Shed,
    /// [`Config::uring_batch_wait`](super::Config::uring_batch_wait).
    UringBatchWait,
    /// [`Config::latency_budget`](super::Config::latency_budget).
    LatencyBudget,
}

impl Setting {
    /// Every setting that some model does not support.
    pub const ALL: [Setting; 6] = [
        Setting::Threads,
        Setting::IdleTimeout,
        Setting::Offload,
        Setting::Shed,
        Setting::UringBatchWait,
        Setting::LatencyBudget,
    ];

    /// The config field and the CLI flag, as error lines name them.
    pub fn name(self) -> &'static str {
        match self {
            Setting::Threads => "threads above 1 (--threads)",
            Setting::IdleTimeout => "idle_timeout (--idle-timeout)",
            Setting::Offload => "offload_threads (--offload)",
            Setting::Shed => "on_fd_exhaustion shed (--on-fd-exhaustion shed)",
            Setting::UringBatchWait => "uring_batch_wait (--uring-batch-wait)",
            Setting::LatencyBudget => "latency_budget (--latency-budget)",
        }
    }

    /// Whether `model` supports the setting: its capabilities row.
    pub fn supported_by(self, model: Model) -> bool {
        let c = model.capabilities();
        match self {
            Setting::Threads => c.threads,
            Setting::IdleTimeout => c.idle_timeout,
            Setting::Offload => c.offload,
            Setting::Shed => c.shed,
            Setting::UringBatchWait => c.uring_batch_wait,
            Setting::LatencyBudget => c.latency_budget,
        }
    }

    /// The one line that refuses the setting on `model`, naming what to
    /// use instead.
    pub fn refusal(self, model: Model) -> String {
        let with: Vec<&str> = Model::ALL
            .into_iter()
            .filter(|&m| self.supported_by(m))
            .map(Model::name)
            .collect();
        let instead = match self {
            Setting::Shed => format!(
                "only a model that owns every connection in one loop can pick one to close ({}); use reserve-fd or pause",
                with.join(", ")
            ),
            _ => format!("use --model {}", with.join(" or ")),
        };
        format!("{} does not work on model {model}; {instead}", self.name())
    }
}
