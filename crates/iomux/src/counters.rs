//! What a server counts: defined once, read by the tests, the control
//! channel and the bench. A leaf module: the connection core and the
//! drivers count into it; [`crate::server`] re-exports it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Defines [`Counters`] and [`Snapshot`] from one list of fields, with the
/// way two loops' values combine (`sum`, or `max` for a peak), so that every
/// reader (the tests, the control line, the bench's JSON and table) takes
/// the names from here: a misspelt counter does not compile.
macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident: $merge:ident,)*) => {
        /// What one loop of a server has done (the whole server, for the
        /// models that run one loop): the figures the bench and the tests
        /// read, through [`ServerCounters`]. Shared between the driver's
        /// threads, so every field is atomic.
        #[derive(Debug, Default)]
        pub struct Counters {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
        }

        /// A copy of [`Counters`] at one moment.
        #[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
        pub struct Snapshot {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl Counters {
            /// A plain copy of every counter.
            pub fn snapshot(&self) -> Snapshot {
                Snapshot {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }

        impl Snapshot {
            /// Every counter's name, in order: the names of the control
            /// line and the bench's JSON.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($name)),*];

            /// Every counter as `(name, value)`, in the order of
            /// [`NAMES`](Self::NAMES).
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name)),*]
            }

            /// A snapshot from named values (as [`fields`](Self::fields)
            /// gives them); a name that is missing reads 0.
            pub fn from_fields(mut get: impl FnMut(&str) -> Option<u64>) -> Snapshot {
                Snapshot {
                    $($name: get(stringify!($name)).unwrap_or(0),)*
                }
            }

            /// Two loops' figures as one server's: counts added, peaks the
            /// larger one.
            pub fn merge(self, other: Snapshot) -> Snapshot {
                Snapshot {
                    $($name: counters!(@merge $merge self.$name, other.$name),)*
                }
            }
        }
    };
    (@merge sum $a:expr, $b:expr) => { $a + $b };
    (@merge max $a:expr, $b:expr) => { $a.max($b) };
}

counters! {
    /// Connections accepted (refused ones included).
    accepted: sum,
    /// Accepted connections closed at once: over `max_conns`, or an fd
    /// select() cannot watch.
    refused: sum,
    /// Served connections that have closed.
    closed: sum,
    /// Connections closed by a reset or broken pipe.
    resets: sum,
    /// Failed accept calls (`EMFILE` and the like), `WouldBlock` excluded.
    accept_errors: sum,
    /// Bytes received.
    bytes_in: sum,
    /// Bytes sent.
    bytes_out: sum,
    /// Bytes the handlers produced (replies, greetings, last words): once
    /// every connection has ended cleanly, equal to `bytes_out`.
    bytes_produced: sum,
    /// `recv`/`read` calls, `WouldBlock` ones included.
    recv_calls: sum,
    /// `send`/`write` calls, `WouldBlock` ones included.
    send_calls: sum,
    /// Selector waits (readiness models only).
    wait_calls: sum,
    /// Calls that changed the selector's kernel interest set (`epoll_ctl`).
    ctl_calls: sum,
    /// Output bytes pending now, over all connections.
    pending_output: sum,
    /// The most output bytes any one connection ever had pending.
    peak_conn_output: max,
    /// Connections closed by the idle timeout.
    idle_closed: sum,
    /// Handler calls run on the offload pool.
    offloaded: sum,
    /// Callbacks that held the event loop past its stall threshold.
    stalls: sum,
}

impl Counters {
    /// Adds `n` to a counter.
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Copies a selector's wait and `epoll_ctl` counts (loop models): each
    /// loop records into its own `Counters`, so the copy is never another
    /// loop's.
    pub fn record_selector(&self, stats: crate::selector::Stats) {
        self.wait_calls.store(stats.wait_calls, Ordering::Relaxed);
        self.ctl_calls.store(stats.ctl_calls, Ordering::Relaxed);
    }

    /// Connections being served now.
    pub fn active(&self) -> u64 {
        let s = self.snapshot();
        s.accepted - s.refused - s.closed
    }
}

/// The counters of a server: one [`Counters`] per loop, read as one.
///
/// Each loop counts only the connections it accepted, and records its own
/// selector's figures, so nothing needs a lock and a per-loop figure (how
/// connections spread over the loops) is there to read;
/// [`snapshot`](Self::snapshot) adds the loops up. Cloning shares them.
#[derive(Clone, Debug)]
pub struct ServerCounters {
    loops: Arc<[Arc<Counters>]>,
}

impl ServerCounters {
    /// Zeroed counters for `loops` loops (at least one).
    pub fn new(loops: usize) -> ServerCounters {
        ServerCounters {
            loops: (0..loops.max(1))
                .map(|_| Arc::new(Counters::default()))
                .collect(),
        }
    }

    /// Each loop's counters, in the order of the listeners.
    pub fn loops(&self) -> &[Arc<Counters>] {
        &self.loops
    }

    /// Every loop's counters added up ([`Snapshot::merge`]).
    pub fn snapshot(&self) -> Snapshot {
        self.loops
            .iter()
            .map(|c| c.snapshot())
            .fold(Snapshot::default(), Snapshot::merge)
    }

    /// Connections being served now, by every loop.
    pub fn active(&self) -> u64 {
        self.loops.iter().map(|c| c.active()).sum()
    }
}
