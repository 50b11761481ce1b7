//! Timers: a binary min-heap keyed by (deadline, sequence number).
//!
//! Why a heap and not a wheel: a heap gives exact deadline order at
//! O(log n) per insert and per expiry, needs no tick (so the loop sleeps
//! exactly until the next deadline instead of waking every slot width), and
//! equal deadlines fire first in, first out thanks to the sequence number.
//! A wheel wins only when timers are re-armed on every event, and the servers
//! avoid that: an idle timeout is one timer per connection that, when it
//! fires, compares the connection's last activity with the timeout and
//! re-arms itself for the rest, so activity costs a timestamp, not a heap
//! operation (libev's trick for `ev_timer` idle timeouts).
//!
//! Cancelling is lazy: the slot is freed at once and its heap entry is
//! skipped when it surfaces (its generation no longer matches). When stale
//! entries outnumber live ones the heap is rebuilt, so cancelled timers
//! cannot pile up.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// A heap entry: (deadline, seq, slot, generation), smallest first.
type Entry = Reverse<(Instant, u64, usize, u32)>;

pub(super) struct Slot<T> {
    pub(super) gen: u32,
    /// `None` while free, or while the callback runs.
    pub(super) cb: Option<T>,
    pub(super) live: bool,
    pub(super) repeat: Option<Duration>,
    pub(super) deadline: Instant,
    pub(super) stall_logged: bool,
}

/// The timer set of one reactor; `T` is the callback type.
pub(super) struct Timers<T> {
    heap: BinaryHeap<Entry>,
    pub(super) slots: Vec<Slot<T>>,
    free: Vec<usize>,
    seq: u64,
    live: usize,
}

impl<T> Default for Timers<T> {
    fn default() -> Self {
        Timers {
            heap: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            seq: 0,
            live: 0,
        }
    }
}

impl<T> Timers<T> {
    /// Arms a new timer; returns its (slot, generation).
    pub(super) fn add(
        &mut self,
        deadline: Instant,
        repeat: Option<Duration>,
        cb: T,
    ) -> (usize, u32) {
        let slot = Slot {
            gen: 0,
            cb: Some(cb),
            live: true,
            repeat,
            deadline,
            stall_logged: false,
        };
        let idx = match self.free.pop() {
            Some(idx) => {
                let gen = self.slots[idx].gen.wrapping_add(1);
                self.slots[idx] = Slot { gen, ..slot };
                idx
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        self.live += 1;
        let gen = self.slots[idx].gen;
        self.push(deadline, idx, gen);
        (idx, gen)
    }

    fn push(&mut self, deadline: Instant, idx: usize, gen: u32) {
        self.seq += 1;
        self.heap.push(Reverse((deadline, self.seq, idx, gen)));
        // Rebuild once stale entries (cancelled or moved timers) dominate.
        if self.heap.len() > 64 && self.heap.len() > 2 * self.live {
            let slots = &self.slots;
            self.heap.retain(|Reverse((d, _, i, g))| {
                slots[*i].live && slots[*i].gen == *g && slots[*i].deadline == *d
            });
        }
    }

    pub(super) fn is_live(&self, idx: usize, gen: u32) -> bool {
        self.slots.get(idx).is_some_and(|s| s.live && s.gen == gen)
    }

    /// Moves a live timer's deadline.
    pub(super) fn reschedule(&mut self, idx: usize, gen: u32, deadline: Instant) -> bool {
        if !self.is_live(idx, gen) {
            return false;
        }
        if self.slots[idx].deadline != deadline {
            self.slots[idx].deadline = deadline;
            self.push(deadline, idx, gen);
        }
        true
    }

    /// Disarms a timer; its callback is dropped (at once, or after it
    /// returns if it is running). Returns whether it was armed.
    pub(super) fn cancel(&mut self, idx: usize, gen: u32) -> bool {
        if !self.is_live(idx, gen) {
            return false;
        }
        let slot = &mut self.slots[idx];
        slot.live = false;
        self.live -= 1;
        let cb = slot.cb.take();
        // A running callback has its `cb` taken: the slot is freed when it
        // returns (see `finish`).
        if cb.is_some() {
            self.free.push(idx);
        }
        true
    }

    /// The earliest live deadline.
    pub(super) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((d, _, i, g))) = self.heap.peek().copied() {
            let s = &self.slots[i];
            if s.live && s.gen == g && s.deadline == d {
                return Some(d);
            }
            self.heap.pop();
        }
        None
    }

    /// Takes the callback of the earliest timer due at `now`.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<(usize, u32, T)> {
        let d = self.next_deadline()?;
        if d > now {
            return None;
        }
        let Reverse((_, _, idx, gen)) = self.heap.pop().expect("peeked");
        let cb = self.slots[idx].cb.take()?;
        Some((idx, gen, cb))
    }

    /// After a callback ran: re-arms a repeating timer or frees a one-shot
    /// one; a timer cancelled meanwhile is freed and `cb` dropped.
    pub(super) fn finish(&mut self, idx: usize, gen: u32, cb: T, now: Instant) {
        let slot = &mut self.slots[idx];
        if slot.gen != gen {
            return; // cannot happen: a slot is only reused once freed here
        }
        if !slot.live {
            // Cancelled inside its own callback.
            self.free.push(idx);
            return;
        }
        if slot.deadline > now {
            // Rescheduled inside its own callback: keep the new deadline.
            slot.cb = Some(cb);
            return;
        }
        match slot.repeat {
            Some(every) => {
                // Next period after the one that fired; a loop that fell
                // behind skips the missed periods instead of firing a burst.
                let mut next = slot.deadline + every;
                if next <= now {
                    next = now + every;
                }
                slot.deadline = next;
                slot.cb = Some(cb);
                self.push(next, idx, gen);
            }
            None => {
                slot.live = false;
                self.live -= 1;
                self.free.push(idx);
            }
        }
    }

    /// Timers armed now.
    pub(super) fn len(&self) -> usize {
        self.live
    }

    /// Heap entries, stale ones included (a test checks they stay bounded).
    #[cfg(test)]
    pub(super) fn heap_len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_deadlines_fire_first_in_first_out() {
        let mut t = Timers::default();
        let now = Instant::now();
        for i in 0..10 {
            t.add(now, None, i);
        }
        let order: Vec<i32> = std::iter::from_fn(|| {
            let (idx, gen, cb) = t.pop_due(now)?;
            t.finish(idx, gen, cb, now);
            Some(cb)
        })
        .collect();
        assert_eq!(order, (0..10).collect::<Vec<_>>());
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn cancelled_entries_do_not_pile_up() {
        let mut t = Timers::default();
        let now = Instant::now();
        for i in 0..10_000u64 {
            let (idx, gen) = t.add(now + Duration::from_secs(60 + i), None, i);
            assert!(t.cancel(idx, gen));
        }
        assert_eq!(t.len(), 0);
        assert!(
            t.heap_len() <= 130,
            "heap kept {} stale entries",
            t.heap_len()
        );
        assert_eq!(t.next_deadline(), None);
    }
}
