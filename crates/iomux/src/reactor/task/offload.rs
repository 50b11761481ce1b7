//! Offload for tasks: [`offload`] runs a closure on the reactor's offload
//! pool ([`Reactor::offload`]) and the task awaits its result, so slow work
//! (CPU, a blocking call) does not hold every other task.
//!
//! A job waits in the executor, first come first served, while the pool's
//! queue is full ([`Options::offload_queue`](super::Options)): a task can
//! wait, so it does, rather than fail as a callback must. The pool's
//! completions wake the loop, whose next turn hands the pool the jobs that
//! now fit.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use super::{current, Executor, Reactor, Shared};
use crate::reactor::OffloadError;

struct State<T> {
    result: RefCell<Option<Result<T, OffloadError>>>,
    waker: RefCell<Option<Waker>>,
    /// The future is gone: a job still queued is dropped unrun, a running
    /// one's result is dropped.
    dropped: Cell<bool>,
}

impl<T> State<T> {
    fn finish(&self, res: Result<T, OffloadError>) {
        if self.dropped.get() {
            return;
        }
        *self.result.borrow_mut() = Some(res);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// A job the executor hands to the pool when it fits.
pub(super) trait Submit {
    /// Submits the job, or finishes it with an error; false if the pool's
    /// queue is full (try again later).
    fn submit(&mut self, r: &mut Reactor<Executor>) -> bool;
}

struct Job<T, F> {
    work: Option<F>,
    state: Rc<State<T>>,
}

impl<T: Send + 'static, F: FnOnce() -> T + Send + 'static> Submit for Job<T, F> {
    fn submit(&mut self, r: &mut Reactor<Executor>) -> bool {
        if self.state.dropped.get() {
            return true;
        }
        match r.offload_room() {
            Err(e) => self.state.finish(Err(e)),
            Ok(0) => return false,
            Ok(_) => {
                let work = self.work.take().expect("a job is submitted once");
                let state = self.state.clone();
                let res = r.offload(work, move |_, _, res| {
                    state.finish(res.map_err(|panic| OffloadError::Panicked(message(&*panic))));
                });
                // Room was checked, and only this thread fills the queue.
                if let Err(e) = res {
                    self.state.finish(Err(e));
                }
            }
        }
        true
    }
}

fn message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a payload that is not a string".to_string()
    }
}

/// Hands the pool the waiting jobs that fit, in order (the executor calls
/// it at the end of every turn).
pub(super) fn submit_waiting(shared: &Shared, r: &mut Reactor<Executor>) {
    let mut waiting = shared.offload.borrow_mut();
    while let Some(job) = waiting.front_mut() {
        if !job.submit(r) {
            break;
        }
        waiting.pop_front();
    }
}

/// The future of [`offload`].
pub struct Offload<T> {
    state: Rc<State<T>>,
}

impl<T> fmt::Debug for Offload<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Offload")
            .field("done", &self.state.result.borrow().is_some())
            .finish()
    }
}

/// Runs `work` on the current runtime's offload pool; the future completes
/// with its result. The pool starts on first use with
/// [`Options::offload_threads`](super::Options) threads. Dropping the future
/// drops a job not started yet; one already running runs to its end and
/// its result is dropped.
///
/// # Errors
/// The future's output: [`OffloadError::Panicked`] with the panic's message
/// if `work` panicked (the pool's thread and the loop live on);
/// [`OffloadError::Spawn`] if the pool's threads could not start. A full
/// queue is waited out, not an error.
///
/// # Panics
/// Outside a [`Runtime`](super::Runtime) (no pool to run it), like
/// [`spawn`](super::spawn).
///
/// # Examples
///
/// ```no_run
/// use iomux::reactor::task::{self, Runtime};
/// use iomux::reactor::Options;
///
/// let mut rt = Runtime::new(Options { offload_threads: 2, ..Options::default() })?;
/// let n = rt.block_on(async {
///     // Slow work on a pool thread; the loop serves the other tasks.
///     task::offload(|| (1..=20u64).product::<u64>()).await
/// })?;
/// assert_eq!(n.unwrap(), 2_432_902_008_176_640_000);
/// # std::io::Result::Ok(())
/// ```
pub fn offload<T, F>(work: F) -> Offload<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let shared = current().expect("offload needs a running Runtime on this thread");
    let state = Rc::new(State {
        result: RefCell::new(None),
        waker: RefCell::new(None),
        dropped: Cell::new(false),
    });
    shared.offload.borrow_mut().push_back(Box::new(Job {
        work: Some(work),
        state: state.clone(),
    }));
    Offload { state }
}

impl<T> Future for Offload<T> {
    type Output = Result<T, OffloadError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.state.result.borrow_mut().take() {
            Some(res) => Poll::Ready(res),
            None => {
                *self.state.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl<T> Drop for Offload<T> {
    fn drop(&mut self) {
        self.state.dropped.set(true);
    }
}
