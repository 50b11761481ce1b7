//! The offload pool: a fixed set of worker threads and a bounded queue.
//!
//! The loop hands a closure to [`Pool::submit`]; a worker runs it and puts
//! the result on the done list, then wakes the loop through its
//! [`Waker`](crate::selector::Waker), which runs the job's callback on the
//! loop thread (libuv's `uv_queue_work` does the same through its async
//! handle). The queue holds at most `capacity` jobs not yet started: a full
//! queue is an error the caller sees at once ([`OffloadError::Full`]), never
//! a backlog that grows with the load.

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use crate::selector::Waker;

/// Why a job was not queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffloadError {
    /// `capacity` jobs wait already; try again once one completes.
    Full {
        /// The queue's bound.
        capacity: usize,
    },
    /// The pool's threads could not be started.
    Spawn(String),
    /// The job panicked, with this message (a task's
    /// [`offload`](super::task::offload) reports it so; a callback of
    /// [`Reactor::offload`](super::Reactor::offload) gets the panic itself).
    Panicked(String),
}

impl fmt::Display for OffloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OffloadError::Full { capacity } => write!(
                f,
                "offload queue full ({capacity} jobs waiting); retry when a job completes, or raise the queue bound"
            ),
            OffloadError::Spawn(e) => write!(f, "cannot start offload threads: {e}"),
            OffloadError::Panicked(msg) => write!(f, "the offloaded job panicked: {msg}"),
        }
    }
}

impl std::error::Error for OffloadError {}

/// What a finished job gives back: its id and its result or panic.
pub(super) type Done = (u64, std::thread::Result<Box<dyn Any + Send>>);
type Job = (u64, Box<dyn FnOnce() -> Box<dyn Any + Send> + Send>);

struct Shared {
    state: Mutex<State>,
    ready: Condvar,
    done: Mutex<Vec<Done>>,
    waker: Waker,
    capacity: usize,
}

struct State {
    jobs: VecDeque<Job>,
    shutdown: bool,
}

/// Worker threads and their queue.
pub(super) struct Pool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    pub(super) fn new(threads: usize, capacity: usize, waker: Waker) -> Result<Pool, OffloadError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                jobs: VecDeque::with_capacity(capacity.min(1024)),
                shutdown: false,
            }),
            ready: Condvar::new(),
            done: Mutex::new(Vec::new()),
            waker,
            capacity,
        });
        let mut pool = Pool {
            shared,
            threads: Vec::with_capacity(threads),
        };
        for i in 0..threads.max(1) {
            let shared = pool.shared.clone();
            let t = std::thread::Builder::new()
                .name(format!("iomux-offload-{i}"))
                .spawn(move || work(&shared))
                .map_err(|e| OffloadError::Spawn(e.to_string()))?;
            pool.threads.push(t);
        }
        Ok(pool)
    }

    pub(super) fn submit(
        &self,
        id: u64,
        job: Box<dyn FnOnce() -> Box<dyn Any + Send> + Send>,
    ) -> Result<(), OffloadError> {
        let mut state = lock(&self.shared.state);
        if state.jobs.len() >= self.shared.capacity {
            return Err(OffloadError::Full {
                capacity: self.shared.capacity,
            });
        }
        state.jobs.push_back((id, job));
        drop(state);
        self.shared.ready.notify_one();
        Ok(())
    }

    /// Takes every finished job's result.
    pub(super) fn take_done(&self, into: &mut Vec<Done>) {
        into.append(&mut lock(&self.shared.done));
    }

    /// Jobs queued and not yet started.
    pub(super) fn queued(&self) -> usize {
        lock(&self.shared.state).jobs.len()
    }
}

impl Drop for Pool {
    /// Lets running jobs finish, drops queued ones, joins the threads.
    fn drop(&mut self) {
        let mut state = lock(&self.shared.state);
        state.shutdown = true;
        state.jobs.clear();
        drop(state);
        self.shared.ready.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A job's panic is caught outside any lock, so poisoning cannot carry
    // a broken invariant; take the data anyway.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn work(shared: &Shared) {
    loop {
        let (id, job) = {
            let mut state = lock(&shared.state);
            loop {
                if state.shutdown {
                    return;
                }
                if let Some(job) = state.jobs.pop_front() {
                    break job;
                }
                state = shared
                    .ready
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        let result = catch_unwind(AssertUnwindSafe(job));
        lock(&shared.done).push((id, result));
        // The waker cannot fail while the loop lives; a loop that is gone
        // no longer needs the result.
        let _ = shared.waker.wake();
    }
}
