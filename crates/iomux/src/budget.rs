//! A latency budget: how long an event loop may hold off its next wait so
//! that one wake-up handles a bigger batch, adapting to the load it sees.
//!
//! On loopback most of the CPU of a round trip is spent waking threads: this
//! loop when a message lands, and the peer when the reply does. A loop that
//! waits a little before its next wait finds several messages ready where it
//! would have found one, and pays for one wake-up instead of several; its
//! replies leave in a burst, so the peer is woken once for the burst too. The
//! price is latency, and it only pays when there is something to batch.
//! Network cards face the same trade and solve it with *adaptive interrupt
//! moderation*: no moderation while traffic is light, more as it grows.
//! [`LatencyBudget`] is that policy for an event loop, sans-IO: the loop
//! tells it what each turn saw ([`LatencyBudget::record`]) and it answers
//! with the delay to add before the next wait. It never sleeps and never
//! reads the clock itself, so every model shares it (the reactor sleeps
//! before `epoll_wait`, `poll` or `select`; the io_uring loop asks the kernel
//! for a minimum wait) and it is tested without a network.
//!
//! # The policy
//!
//! * **Light load adds nothing.** A turn that handled fewer than
//!   [`MIN_BATCH`] events had nothing to batch: the delay halves, and
//!   under a step (the budget / [`STEP_DIVISOR`]) it is zero. A turn that followed an idle gap longer
//!   than the budget resets it to zero at once. So a lone client in a closed
//!   loop (one message per turn) never waits.
//! * **Sustained load grows the delay**: a turn with [`MIN_BATCH`] events or
//!   more doubles it (from one step), turn by turn, up to the ceiling.
//! * **The ceiling keeps the added latency inside the budget.** A message
//!   that arrives just after a wait returned waits for the rest of that turn
//!   and for the delay, so the delay, plus the time a turn takes, plus how
//!   much longer than asked the delay lasts (the OS's timer slack; both
//!   estimates rise fast and fall slowly), stays within [`SHARE`] of the
//!   budget. The rest of the budget is left to what the
//!   loop cannot see: the sleep's own overshoot, the network, the peer.
//!
//! # Examples
//!
//! ```
//! use iomux::budget::LatencyBudget;
//! use std::time::{Duration, Instant};
//!
//! let us = Duration::from_micros;
//! let mut budget = LatencyBudget::new(Duration::from_millis(1));
//! // The loop: wait (after the delay), handle the turn's events, record.
//! let mut done = Instant::now();
//! let mut turn = |budget: &mut LatencyBudget, events| {
//!     let woke = done + budget.delay() + us(10);
//!     done = woke + us(50);
//!     budget.record(events, woke, done)
//! };
//! // One message per turn: nothing to batch, no delay.
//! for _ in 0..10 {
//!     assert_eq!(turn(&mut budget, 1), Duration::ZERO);
//! }
//! // Forty messages per turn: the delay grows, within half the budget.
//! let mut delay = Duration::ZERO;
//! for _ in 0..20 {
//!     delay = turn(&mut budget, 40);
//! }
//! assert!(delay > Duration::ZERO && delay <= budget.budget() / 2);
//! ```

use std::time::{Duration, Instant};

/// A turn with fewer events than this had nothing to batch.
pub const MIN_BATCH: usize = 2;

/// The smallest delay is the budget divided by this: the first delay under
/// load, and below it the delay is zero.
pub const STEP_DIVISOR: u32 = 32;

/// The share of the budget the loop may spend on its own delay plus one
/// turn's handling, in percent; the rest is left for what the loop cannot
/// see (the sleep's overshoot, the network, the peer).
pub const SHARE: u32 = 50;

/// The adaptive delay of one event loop (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatencyBudget {
    budget: Duration,
    delay: Duration,
    /// Time a turn takes to handle its events ([`track`]ed).
    busy: Duration,
    /// How much longer than the delay asked the loop was away before a busy
    /// turn (the OS's timer slack, the scheduler), [`track`]ed.
    overshoot: Duration,
    /// When the previous turn ended (`None` before the first).
    last_done: Option<Instant>,
}

impl LatencyBudget {
    /// A policy that keeps the latency it adds within `budget`; it starts
    /// with no delay.
    pub fn new(budget: Duration) -> LatencyBudget {
        LatencyBudget {
            budget,
            delay: Duration::ZERO,
            busy: Duration::ZERO,
            overshoot: Duration::ZERO,
            last_done: None,
        }
    }

    /// The budget it was made with.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// The delay to add before the next wait (what the last
    /// [`record`](Self::record) returned).
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// The longest delay the policy would pick now: [`SHARE`] of the
    /// budget less the time a turn takes and less the delay's overshoot.
    pub fn ceiling(&self) -> Duration {
        (self.budget * SHARE / 100).saturating_sub(self.busy + self.overshoot)
    }

    /// Records one turn: `events` handled (I/O events, or completions), the
    /// wait returned at `woke` and the turn's handling ended at `done`.
    /// Returns the delay to add before the next wait.
    pub fn record(&mut self, events: usize, woke: Instant, done: Instant) -> Duration {
        let busy = done.saturating_duration_since(woke);
        if self.last_done.is_none() {
            self.busy = busy; // the first sample is the estimate
        } else {
            track(&mut self.busy, busy);
        }
        // The wait blocked (beyond the delay the loop added) for longer than
        // the budget: the load has gone, start again from nothing.
        let gap = self
            .last_done
            .map_or(Duration::ZERO, |t| woke.saturating_duration_since(t));
        self.last_done = Some(done);
        // With a batch waiting, the wait after the delay returned at once:
        // the loop was away for the delay plus its overshoot. No delay, no
        // overshoot: the estimate decays (else one late wake-up that took
        // the ceiling to zero would keep it there).
        if self.delay.is_zero() {
            track(&mut self.overshoot, Duration::ZERO);
        } else if events >= MIN_BATCH {
            track(&mut self.overshoot, gap.saturating_sub(self.delay));
        }
        let step = self.budget / STEP_DIVISOR;
        self.delay = if gap > self.delay + self.budget {
            Duration::ZERO
        } else if events >= MIN_BATCH {
            (self.delay * 2).max(step)
        } else if self.delay / 2 >= step {
            self.delay / 2
        } else {
            Duration::ZERO
        };
        self.delay = self.delay.min(self.ceiling());
        if self.delay < step {
            self.delay = Duration::ZERO;
        }
        self.delay
    }
}

/// Moves toward `sample` by half the gap when it rises, by an eighth when
/// it falls: an estimate that errs on the long side without letting one
/// stray sample (a preempted turn) zero the delay.
fn track(estimate: &mut Duration, sample: Duration) {
    *estimate = if sample >= *estimate {
        *estimate + (sample - *estimate) / 2
    } else {
        *estimate - (*estimate - sample) / 8
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    /// Feeds `turns` turns of `events` each, one every `period`, each taking
    /// `busy`; returns the delays chosen, and the time after the last turn.
    fn feed(
        p: &mut LatencyBudget,
        start: Instant,
        turns: usize,
        events: usize,
        period: Duration,
        busy: Duration,
    ) -> (Vec<Duration>, Instant) {
        let mut t = start;
        let mut out = Vec::new();
        for _ in 0..turns {
            out.push(p.record(events, t, t + busy));
            t += period.max(busy + p.delay());
        }
        (out, t)
    }

    #[test]
    fn light_load_adds_nothing() {
        let mut p = LatencyBudget::new(1000 * US);
        // A lone closed-loop client: one message per turn, back to back.
        let (d, t) = feed(&mut p, Instant::now(), 1000, 1, 30 * US, 10 * US);
        assert!(d.iter().all(|d| d.is_zero()), "{d:?}");
        // Sparse traffic: one message every 5 ms, and idle turns.
        let (d, t) = feed(&mut p, t, 100, 1, 5000 * US, 10 * US);
        assert!(d.iter().all(|d| d.is_zero()), "{d:?}");
        let (d, _) = feed(&mut p, t, 10, 0, 1000 * 1000 * US, US);
        assert!(d.iter().all(|d| d.is_zero()), "{d:?}");
    }

    #[test]
    fn delay_never_exceeds_the_budget_share() {
        for budget in [10 * US, 100 * US, 1000 * US, 50_000 * US] {
            for busy in [US, 20 * US, 300 * US, 2000 * US] {
                let mut p = LatencyBudget::new(budget);
                let (d, _) = feed(&mut p, Instant::now(), 200, 500, 10 * US, busy);
                for d in d {
                    assert!(d + busy <= budget * SHARE / 100 || d.is_zero(), "{d:?}");
                    assert!(d <= budget);
                }
            }
        }
    }

    #[test]
    fn delay_stays_within_the_share_whatever_the_turns() {
        // Turns of random size, length and spacing (a fixed-seed LCG).
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: u64| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (x >> 33) % n
        };
        let budget = 1000 * US;
        let mut p = LatencyBudget::new(budget);
        let mut t = Instant::now();
        for _ in 0..100_000 {
            let woke = t + p.delay() + US * next(3000) as u32;
            let done = woke + US * next(700) as u32;
            let d = p.record(next(64) as usize, woke, done);
            assert!(d <= budget * SHARE / 100 && d <= p.ceiling(), "{d:?}");
            t = done;
        }
    }

    #[test]
    fn grows_under_sustained_load_to_the_ceiling() {
        let mut p = LatencyBudget::new(1000 * US);
        let (d, _) = feed(&mut p, Instant::now(), 30, 40, 50 * US, 40 * US);
        // Non-decreasing, starting from one step, and it gets to the ceiling.
        assert!(d.windows(2).all(|w| w[0] <= w[1]), "{d:?}");
        assert_eq!(d[0], 1000 * US / STEP_DIVISOR);
        assert!(d[0] < d[3], "{d:?}");
        assert_eq!(*d.last().unwrap(), p.ceiling());
        assert_eq!(p.ceiling(), 500 * US - 40 * US);
    }

    #[test]
    fn falls_back_when_load_drops() {
        let mut p = LatencyBudget::new(1000 * US);
        let (_, t) = feed(&mut p, Instant::now(), 30, 40, 50 * US, 20 * US);
        let high = p.delay();
        assert!(high > Duration::ZERO);
        // Load drops to one message per turn: the delay falls every turn,
        // to zero.
        let (d, t) = feed(&mut p, t, 10, 1, Duration::ZERO, 20 * US);
        assert!(d[0] < high);
        assert!(d.windows(2).all(|w| w[1] < w[0] || w[1].is_zero()), "{d:?}");
        assert!(d.last().unwrap().is_zero());
        // Back up, then an idle gap: zero at once.
        let (_, t) = feed(&mut p, t, 30, 40, 50 * US, 20 * US);
        assert!(p.delay() > Duration::ZERO);
        assert_eq!(p.record(40, t + 5000 * US, t + 5020 * US), Duration::ZERO);
    }

    #[test]
    fn a_delay_that_overshoots_lowers_the_ceiling() {
        let mut p = LatencyBudget::new(1000 * US);
        let (_, t) = feed(&mut p, Instant::now(), 30, 40, 50 * US, 20 * US);
        assert_eq!(p.delay(), 480 * US);
        // Each delay lasts 200 µs longer than asked: the delay shrinks so
        // that delay, overshoot and turn stay within the share.
        let mut done = t - p.delay();
        let mut delays = Vec::new();
        for _ in 0..30 {
            let woke = done + p.delay() + 200 * US;
            done = woke + 20 * US;
            delays.push(p.record(40, woke, done));
        }
        assert!(delays.windows(2).all(|w| w[1] <= w[0]), "{delays:?}");
        // 500 µs = delay + 200 µs of overshoot + 20 µs of turn.
        assert!(p.delay().abs_diff(280 * US) < US, "{delays:?}");
    }

    #[test]
    fn slow_turns_lower_the_ceiling() {
        let mut p = LatencyBudget::new(1000 * US);
        let (_, t) = feed(&mut p, Instant::now(), 30, 40, 50 * US, 20 * US);
        let before = p.delay();
        // Turns that take 450 µs: at most 50 µs of the 500 µs share is
        // left, once the estimate has caught up.
        let (d, t) = feed(&mut p, t, 30, 40, Duration::ZERO, 450 * US);
        assert!(d[0] < before, "{d:?}");
        assert!(*d.last().unwrap() <= 51 * US, "{d:?}");
        // Turns that take the whole share: no delay at all.
        let (d, _) = feed(&mut p, t, 30, 40, Duration::ZERO, 600 * US);
        assert!(d.last().unwrap().is_zero(), "{d:?}");
    }

    #[test]
    fn one_late_wake_up_does_not_stop_batching() {
        let mut p = LatencyBudget::new(1000 * US);
        let (_, t) = feed(&mut p, Instant::now(), 30, 40, 50 * US, 20 * US);
        let before = p.delay();
        // The loop was preempted: its delay lasted 1.4 ms instead of 480 µs.
        let woke = t - before + 1400 * US;
        p.record(40, woke, woke + 20 * US);
        // Back to normal: the delay comes back to where it was.
        let next = woke + 20 * US + p.delay();
        let (d, _) = feed(&mut p, next, 60, 40, 50 * US, 20 * US);
        assert!(d.last().unwrap().abs_diff(before) < 5 * US, "{d:?}");
    }
}
