//! Time for tasks: [`sleep`], [`timeout`] and [`interval`], each one timer
//! of the reactor's own heap (no second timer system, no thread).
//!
//! A timer is armed by the executor at the end of the turn that created
//! it, and disarmed (taken off the heap) when its future is dropped first,
//! so a `timeout` around every read leaves no timer behind.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::{current, Executor, Reactor, TimerId};

/// One timer as a task sees it.
pub(super) struct TimerState {
    deadline: Instant,
    period: Option<Duration>,
    /// Times the timer fired.
    fired: Cell<u64>,
    waker: RefCell<Option<Waker>>,
    id: Cell<Option<TimerId>>,
    dropped: Cell<bool>,
}

/// Arms `state`'s timer on the reactor (the executor calls it while it
/// applies what the turn's tasks asked for).
pub(super) fn arm(r: &mut Reactor<Executor>, state: Rc<TimerState>) {
    if state.dropped.get() {
        return;
    }
    let fire = {
        let state = state.clone();
        move |_: &mut Reactor<Executor>, _: &mut Executor| {
            state.fired.set(state.fired.get() + 1);
            if let Some(w) = state.waker.borrow_mut().take() {
                w.wake();
            }
        }
    };
    let id = match state.period {
        Some(every) => r.add_repeating(every, fire),
        None => r.add_timer(
            state.deadline.saturating_duration_since(Instant::now()),
            fire,
        ),
    };
    state.id.set(Some(id));
}

/// A timer registered with the current runtime, or why there is none.
type Registered = Result<Rc<TimerState>, Option<io::Error>>;

/// A timer of the current runtime's reactor, registered when first polled
/// (so that a `sleep` made before `block_on` works) and disarmed when
/// dropped first.
struct Timer {
    deadline: Instant,
    period: Option<Duration>,
    reg: Option<Registered>,
}

impl Timer {
    fn new(deadline: Instant, period: Option<Duration>) -> Timer {
        Timer {
            deadline,
            period,
            reg: None,
        }
    }

    fn register(&self) -> Registered {
        let shared = current().map_err(Some)?;
        let state = Rc::new(TimerState {
            deadline: self.deadline,
            period: self.period,
            fired: Cell::new(0),
            waker: RefCell::new(None),
            id: Cell::new(None),
            dropped: Cell::new(false),
        });
        shared.pending.borrow_mut().timers.push(state.clone());
        Ok(state)
    }

    /// Ready once the timer fired more than `seen` times (with the count).
    fn poll_fired(&mut self, seen: u64, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        if self.reg.is_none() {
            self.reg = Some(self.register());
        }
        match self.reg.as_mut().expect("registered above") {
            Err(e) => Poll::Ready(Err(e.take().unwrap_or_else(|| {
                io::Error::other("a timer future polled after it returned its error")
            }))),
            Ok(state) => {
                let fired = state.fired.get();
                if fired > seen {
                    Poll::Ready(Ok(fired))
                } else {
                    *state.waker.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        }
    }
}

impl Drop for Timer {
    /// Disarms the timer of a future dropped before it is done with it.
    fn drop(&mut self) {
        let Some(Ok(state)) = &self.reg else { return };
        state.dropped.set(true);
        let Some(id) = state.id.get() else {
            return; // not armed yet: the executor skips it
        };
        if state.period.is_none() && state.fired.get() > 0 {
            return; // a one-shot that fired is off the heap already
        }
        if let Ok(shared) = current() {
            shared.pending.borrow_mut().cancel_timers.push(id);
        }
    }
}

/// The future of [`sleep`] and [`sleep_until`].
pub struct Sleep {
    timer: Timer,
}

impl fmt::Debug for Sleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sleep")
            .field("deadline", &self.timer.deadline)
            .finish()
    }
}

/// Completes `d` from now (rounded up to the loop's millisecond), on a
/// reactor timer. The time is taken when `sleep` is called; the timer is
/// armed when the future is first polled, on the runtime that polls it.
///
/// # Errors
/// The future's output is an error if it is polled outside a runtime.
///
/// # Examples
///
/// ```no_run
/// use iomux::reactor::task::{self, Runtime};
/// use iomux::reactor::Options;
/// use std::time::{Duration, Instant};
///
/// let mut rt = Runtime::new(Options::default())?;
/// let start = Instant::now();
/// rt.block_on(task::sleep(Duration::from_millis(20)))??;
/// assert!(start.elapsed() >= Duration::from_millis(20));
/// # std::io::Result::Ok(())
/// ```
pub fn sleep(d: Duration) -> Sleep {
    sleep_until(Instant::now() + d)
}

/// Completes at `deadline` (at once if it has passed), on a reactor timer.
///
/// # Errors
/// The future's output is an error if it is polled outside a runtime.
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep {
        timer: Timer::new(deadline, None),
    }
}

impl Future for Sleep {
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.timer.poll_fired(0, cx).map(|r| r.map(drop))
    }
}

/// Runs `fut` for at most `d`: its output, or an error of kind
/// [`TimedOut`](io::ErrorKind::TimedOut) if the time came first (then
/// `fut` is dropped, and whatever it held with it). A future that is ready
/// at its first poll completes even if `d` is zero.
///
/// # Errors
/// `TimedOut`, as above; outside a runtime, the timer's error.
///
/// # Examples
///
/// ```no_run
/// use iomux::reactor::task::{self, Runtime};
/// use iomux::reactor::Options;
/// use std::time::Duration;
///
/// let mut rt = Runtime::new(Options::default())?;
/// let res = rt.block_on(task::timeout(
///     Duration::from_millis(10),
///     std::future::pending::<()>(),
/// ))?;
/// assert_eq!(res.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
/// # std::io::Result::Ok(())
/// ```
pub async fn timeout<F: Future>(d: Duration, fut: F) -> io::Result<F::Output> {
    let mut fut = pin!(fut);
    let mut timer = sleep(d);
    poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match Pin::new(&mut timer).poll(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out after {d:?}"),
            ))),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// A repeating reactor timer, from [`interval`].
pub struct Interval {
    timer: Timer,
    seen: u64,
}

impl fmt::Debug for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interval")
            .field("period", &self.timer.period)
            .field("ticks", &self.seen)
            .finish()
    }
}

/// Ticks every `period`, the first one `period` after the turn that first
/// polls it.
/// Ticks not awaited in time coalesce into one, and a loop that falls
/// behind skips periods rather than bursting (the reactor's repeating
/// timers): a tick means "at least one period passed".
///
/// # Examples
///
/// ```no_run
/// use iomux::reactor::task::{self, Runtime};
/// use iomux::reactor::Options;
/// use std::time::Duration;
///
/// let mut rt = Runtime::new(Options::default())?;
/// rt.block_on(async {
///     let mut every = task::interval(Duration::from_millis(100));
///     for _ in 0..3 {
///         every.tick().await?;
///         println!("tick");
///     }
///     std::io::Result::Ok(())
/// })??;
/// # std::io::Result::Ok(())
/// ```
pub fn interval(period: Duration) -> Interval {
    Interval {
        timer: Timer::new(Instant::now() + period, Some(period)),
        seen: 0,
    }
}

impl Interval {
    /// Completes at the next tick.
    ///
    /// # Errors
    /// Outside a runtime.
    pub async fn tick(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_tick(cx)).await
    }

    /// The poll form of [`tick`](Self::tick).
    ///
    /// # Errors
    /// As `tick`.
    pub fn poll_tick(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.timer.poll_fired(self.seen, cx).map(|r| {
            r.map(|fired| {
                self.seen = fired;
            })
        })
    }
}

#[cfg(feature = "futures")]
impl futures_core::Stream for Interval {
    type Item = io::Result<()>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_tick(cx).map(Some)
    }
}
