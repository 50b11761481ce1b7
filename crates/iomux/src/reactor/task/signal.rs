//! Signals for tasks: [`signal`] watches a signal with the reactor's own
//! machinery ([`Reactor::add_signal`]: a self-pipe the loop reads) and
//! hands its deliveries to the task awaiting [`Signals::recv`].

use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use super::{current, Executor, Reactor};

enum Watch {
    /// Asked for; the executor registers it at the end of the turn.
    Asked,
    Watched,
    Failed(io::Error),
    /// Its error was handed over, or its `Signals` is gone.
    Done,
}

pub(super) struct SignalState {
    signo: i32,
    watch: RefCell<Watch>,
    /// Deliveries seen by the loop (coalesced as the reactor does).
    arrived: Cell<u64>,
    waker: RefCell<Option<Waker>>,
}

impl SignalState {
    fn wake(&self) {
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// Registers `state`'s signal with the reactor (the executor calls it while
/// it applies what the turn's tasks asked for).
pub(super) fn watch(r: &mut Reactor<Executor>, state: Rc<SignalState>) {
    if !matches!(*state.watch.borrow(), Watch::Asked) {
        return; // dropped before it was registered
    }
    let cb_state = state.clone();
    let res = r.add_signal(state.signo, move |_, _, _| {
        cb_state.arrived.set(cb_state.arrived.get() + 1);
        cb_state.wake();
    });
    *state.watch.borrow_mut() = match res {
        Ok(()) => Watch::Watched,
        Err(e) => Watch::Failed(e),
    };
    state.wake();
}

/// The deliveries of one signal, from [`signal`]. Dropping it stops
/// watching the signal and gives its previous disposition back.
pub struct Signals {
    state: Rc<SignalState>,
    seen: u64,
}

impl fmt::Debug for Signals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signals")
            .field("signo", &self.state.signo)
            .finish_non_exhaustive()
    }
}

/// Watches `signo` on the current runtime's loop: once this completes,
/// deliveries of the signal are [`Signals::recv`]'s, not the default
/// action's (so `SIGINT` no longer ends the process while it is watched).
///
/// # Errors
/// Outside a runtime; see [`Reactor::add_signal`]: a signal that cannot be
/// caught, or one another loop of this process watches.
///
/// # Examples
///
/// ```no_run
/// use iomux::reactor::task::{self, Runtime};
/// use iomux::reactor::Options;
///
/// let mut rt = Runtime::new(Options::default())?;
/// rt.block_on(async {
///     let mut term = task::signal(libc::SIGTERM).await?;
///     term.recv().await;
///     println!("SIGTERM: leaving");
///     std::io::Result::Ok(())
/// })??;
/// # std::io::Result::Ok(())
/// ```
pub async fn signal(signo: i32) -> io::Result<Signals> {
    let shared = current()?;
    let state = Rc::new(SignalState {
        signo,
        watch: RefCell::new(Watch::Asked),
        arrived: Cell::new(0),
        waker: RefCell::new(None),
    });
    shared.pending.borrow_mut().signals.push(state.clone());
    // Owned from here, so that a caller who gives up unwatches it.
    let signals = Signals { state, seen: 0 };
    poll_fn(|cx| {
        let mut watch = signals.state.watch.borrow_mut();
        match std::mem::replace(&mut *watch, Watch::Done) {
            Watch::Watched => {
                *watch = Watch::Watched;
                Poll::Ready(Ok(()))
            }
            Watch::Failed(e) => Poll::Ready(Err(e)),
            other => {
                *watch = other;
                *signals.state.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    })
    .await?;
    Ok(signals)
}

impl Signals {
    /// Completes when the signal has arrived since the last `recv` (or since
    /// it was watched); deliveries in between coalesce into one, as pending
    /// signals do in the kernel. Gives the signal's number.
    pub async fn recv(&mut self) -> i32 {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The poll form of [`recv`](Self::recv).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<i32> {
        let arrived = self.state.arrived.get();
        if arrived > self.seen {
            self.seen = arrived;
            Poll::Ready(self.state.signo)
        } else {
            *self.state.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// The signal's number.
    pub fn signo(&self) -> i32 {
        self.state.signo
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        let was = std::mem::replace(&mut *self.state.watch.borrow_mut(), Watch::Done);
        if let (Watch::Watched, Ok(shared)) = (was, current()) {
            shared
                .pending
                .borrow_mut()
                .unwatch_signals
                .push(self.state.signo);
        }
    }
}

#[cfg(feature = "futures")]
impl futures_core::Stream for Signals {
    type Item = i32;

    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<i32>> {
        self.poll_recv(cx).map(Some)
    }
}
