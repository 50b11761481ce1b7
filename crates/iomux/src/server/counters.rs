//! What a server counts: defined once, read by the tests, the control
//! channel and the bench.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What one loop of a server has done (the whole server, for the models
/// that run one loop): the figures the bench and the tests read, through
/// [`ServerCounters`]. Shared between the driver's threads, so every field
/// is atomic.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections accepted (refused ones included).
    pub accepted: AtomicU64,
    /// Accepted connections closed at once: over `max_conns`, or an fd
    /// select() cannot watch.
    pub refused: AtomicU64,
    /// Served connections that have closed.
    pub closed: AtomicU64,
    /// Connections closed by a reset or broken pipe.
    pub resets: AtomicU64,
    /// Failed accept calls (`EMFILE` and the like), `WouldBlock` excluded.
    pub accept_errors: AtomicU64,
    /// Bytes received.
    pub bytes_in: AtomicU64,
    /// Bytes sent.
    pub bytes_out: AtomicU64,
    /// `recv`/`read` calls, `WouldBlock` ones included.
    pub recv_calls: AtomicU64,
    /// `send`/`write` calls, `WouldBlock` ones included.
    pub send_calls: AtomicU64,
    /// Selector waits (readiness models only).
    pub wait_calls: AtomicU64,
    /// Calls that changed the selector's kernel interest set (`epoll_ctl`).
    pub ctl_calls: AtomicU64,
    /// Output bytes pending now, over all connections.
    pub pending_output: AtomicU64,
    /// The most output bytes any one connection ever had pending.
    pub peak_conn_output: AtomicU64,
    /// Connections closed by the idle timeout.
    pub idle_closed: AtomicU64,
    /// Handler calls run on the offload pool.
    pub offloaded: AtomicU64,
    /// Callbacks that held the event loop past its stall threshold.
    pub stalls: AtomicU64,
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

    /// A plain copy of every counter.
    pub fn snapshot(&self) -> Snapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            accepted: g(&self.accepted),
            refused: g(&self.refused),
            closed: g(&self.closed),
            resets: g(&self.resets),
            accept_errors: g(&self.accept_errors),
            bytes_in: g(&self.bytes_in),
            bytes_out: g(&self.bytes_out),
            recv_calls: g(&self.recv_calls),
            send_calls: g(&self.send_calls),
            wait_calls: g(&self.wait_calls),
            ctl_calls: g(&self.ctl_calls),
            pending_output: g(&self.pending_output),
            peak_conn_output: g(&self.peak_conn_output),
            idle_closed: g(&self.idle_closed),
            offloaded: g(&self.offloaded),
            stalls: g(&self.stalls),
        }
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

/// A copy of [`Counters`] at one moment.
#[allow(missing_docs)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub accepted: u64,
    pub refused: u64,
    pub closed: u64,
    pub resets: u64,
    pub accept_errors: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub recv_calls: u64,
    pub send_calls: u64,
    pub wait_calls: u64,
    pub ctl_calls: u64,
    pub pending_output: u64,
    pub peak_conn_output: u64,
    pub idle_closed: u64,
    pub offloaded: u64,
    pub stalls: u64,
}

impl Snapshot {
    /// Two loops' figures as one server's: every count added, and
    /// `peak_conn_output`, a maximum over connections, the larger one.
    pub fn merge(self, other: Snapshot) -> Snapshot {
        Snapshot {
            accepted: self.accepted + other.accepted,
            refused: self.refused + other.refused,
            closed: self.closed + other.closed,
            resets: self.resets + other.resets,
            accept_errors: self.accept_errors + other.accept_errors,
            bytes_in: self.bytes_in + other.bytes_in,
            bytes_out: self.bytes_out + other.bytes_out,
            recv_calls: self.recv_calls + other.recv_calls,
            send_calls: self.send_calls + other.send_calls,
            wait_calls: self.wait_calls + other.wait_calls,
            ctl_calls: self.ctl_calls + other.ctl_calls,
            pending_output: self.pending_output + other.pending_output,
            peak_conn_output: self.peak_conn_output.max(other.peak_conn_output),
            idle_closed: self.idle_closed + other.idle_closed,
            offloaded: self.offloaded + other.offloaded,
            stalls: self.stalls + other.stalls,
        }
    }
}
