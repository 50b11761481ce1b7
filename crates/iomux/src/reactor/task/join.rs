//! Join handles: a task's output for whoever awaits it, and the task's
//! end (abort) for whoever holds the handle.
//!
//! A spawned future is wrapped in a task that checks an abort flag before
//! each poll and, when the future completes, leaves its output in a cell
//! the handle shares. A guard in the task marks the end however the task
//! goes (completed, aborted, or dropped with its runtime) and wakes the
//! task awaiting the handle, so no one waits for an output that will never
//! come.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use super::Task;

struct State<T> {
    output: RefCell<Option<T>>,
    /// The task is over: completed, aborted, or dropped.
    finished: Cell<bool>,
    aborted: Cell<bool>,
    /// The task awaiting the handle.
    joiner: RefCell<Option<Waker>>,
    /// The task itself, to wake it when it is aborted.
    task: RefCell<Option<Waker>>,
}

/// Marks the end of its task when dropped, however the task ends.
struct Finish<T>(Rc<State<T>>);

impl<T> Drop for Finish<T> {
    fn drop(&mut self) {
        self.0.finished.set(true);
        if let Some(w) = self.0.joiner.borrow_mut().take() {
            w.wake();
        }
    }
}

/// A spawned future and its end. Written out rather than as an `async`
/// block: a wrapping `async` block (even `async move { fut.await }`) stores
/// the future twice in its state, which doubled the memory of every
/// connection task (743 to 1464 bytes in `iomux bench`). Here the future
/// has its own box, pinned there, and the wrapper is two pointers.
struct Joined<F: Future> {
    /// `None` once completed or aborted: dropped before `finish` wakes the
    /// joiner, so that whatever it held is released by then.
    fut: Option<Pin<Box<F>>>,
    finish: Finish<F::Output>,
}

impl<F: Future> Future for Joined<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let state = &this.finish.0;
        if state.aborted.get() {
            this.fut = None;
            return Poll::Ready(());
        }
        let Some(fut) = &mut this.fut else {
            return Poll::Ready(());
        };
        {
            let mut task = state.task.borrow_mut();
            if !task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        let v = std::task::ready!(fut.as_mut().poll(cx));
        this.fut = None;
        // Kept only if a handle is there to take it.
        if Rc::strong_count(state) > 1 {
            *state.output.borrow_mut() = Some(v);
        }
        Poll::Ready(())
    }
}

/// `fut` as a task, and the handle to its output.
pub(super) fn wrap<F: Future + 'static>(fut: F) -> (Task, JoinHandle<F::Output>) {
    let state = Rc::new(State {
        output: RefCell::new(None),
        finished: Cell::new(false),
        aborted: Cell::new(false),
        joiner: RefCell::new(None),
        task: RefCell::new(None),
    });
    let task = Box::pin(Joined {
        fut: Some(Box::pin(fut)),
        finish: Finish(state.clone()),
    });
    (task, JoinHandle { state })
}

/// The handle of a spawned task: `.await` it for the task's output,
/// [`abort`](Self::abort) it to end the task. Dropping it detaches the
/// task, which runs on.
///
/// # Examples
///
/// ```no_run
/// use iomux::reactor::task::{self, Runtime};
/// use iomux::reactor::Options;
///
/// let mut rt = Runtime::new(Options::default())?;
/// let sum = rt.block_on(async {
///     let a = task::spawn(async { 20 });
///     let b = task::spawn(async { 22 });
///     a.await.unwrap() + b.await.unwrap()
/// })?;
/// assert_eq!(sum, 42);
/// # std::io::Result::Ok(())
/// ```
pub struct JoinHandle<T> {
    state: Rc<State<T>>,
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("finished", &self.state.finished.get())
            .field("aborted", &self.state.aborted.get())
            .finish()
    }
}

impl<T> JoinHandle<T> {
    /// Ends the task: it is not polled again, and its future (with every
    /// `Async`, timer and channel it holds) is dropped at the executor's
    /// next turn. Awaiting the handle then gives [`Cancelled`]. No effect
    /// on a task already finished: its output stays.
    pub fn abort(&self) {
        if self.state.finished.get() {
            return;
        }
        self.state.aborted.set(true);
        if let Some(w) = self.state.task.borrow_mut().take() {
            w.wake();
        }
        // Not polled yet: it is in the run queue already.
    }

    /// Whether the task is over (completed, aborted, or dropped).
    pub fn is_finished(&self) -> bool {
        self.state.finished.get()
    }

    /// The output, if the task completed and it was not taken yet.
    pub(super) fn take_output(&self) -> Option<T> {
        self.state.output.borrow_mut().take()
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, Cancelled>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(v) = self.take_output() {
            return Poll::Ready(Ok(v));
        }
        if self.state.finished.get() {
            return Poll::Ready(Err(Cancelled));
        }
        *self.state.joiner.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A task gave no output: it was aborted ([`JoinHandle::abort`]), or
/// dropped with its runtime, before it completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled;

impl fmt::Display for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the task was aborted, or dropped with its runtime, before it completed")
    }
}

impl std::error::Error for Cancelled {}

impl From<Cancelled> for io::Error {
    fn from(e: Cancelled) -> io::Error {
        io::Error::new(io::ErrorKind::Interrupted, e)
    }
}
