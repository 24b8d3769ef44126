//! Deadlines of the table: TTL expiries of holders and wait deadlines of waiters.
//!
//! A binary heap with lazy deletion: releasing a holder or dequeuing a waiter does not search the
//! heap, the entry just goes stale and is skipped when it surfaces. Stale entries are counted, and
//! the heap is compacted once they outnumber the live ones, so a loop of short-lived locks with
//! long TTLs cannot grow it without bound.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// What a deadline is for. The order matters: at the same instant a waiter's patience runs out
/// before a holder's TTL frees its place, so a waiter is never granted at the very instant its
/// own deadline passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TimerKind {
    /// A queued waiter (or an acquire-many group) stops waiting.
    Wait,
    /// A holder's TTL ends.
    Expiry,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Timer {
    pub at: Instant,
    pub kind: TimerKind,
    /// The request the deadline belongs to; request ids are never reused, so a stale entry can
    /// always be told from a live one even when its key's slot was reused.
    pub rid: u64,
    /// Slab slot of the key, or `GROUP_SLOT` for an acquire-many group's wait deadline.
    pub slot: u32,
}

pub(crate) const GROUP_SLOT: u32 = u32::MAX;

#[derive(Default, Debug)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<Timer>>,
    /// Entries that are still armed; `heap.len() - live` are stale.
    live: usize,
}

impl Timers {
    pub fn arm(&mut self, timer: Timer) {
        self.heap.push(Reverse(timer));
        self.live += 1;
    }

    /// An armed deadline was made void (its holder released, its waiter dequeued or re-armed).
    pub fn disarm(&mut self) {
        self.live = self.live.saturating_sub(1);
    }

    #[cfg(test)]
    pub fn heap_len(&self) -> usize {
        self.heap.len()
    }

    pub fn live(&self) -> usize {
        self.live
    }

    /// The earliest entry, which may be stale; `is_live` decides.
    pub fn peek(&self) -> Option<Timer> {
        self.heap.peek().map(|r| r.0)
    }

    /// Pops the earliest entry. The caller says whether it was live (then it counts as fired).
    pub fn pop(&mut self, was_live: bool) -> Option<Timer> {
        let t = self.heap.pop()?.0;
        if was_live {
            self.live = self.live.saturating_sub(1);
        }
        Some(t)
    }

    /// Drops stale entries when they are more than half of the heap; amortised O(1) per arm.
    pub fn maybe_compact(&mut self, is_live: impl Fn(&Timer) -> bool) {
        if self.heap.len() > 2 * self.live + 64 {
            self.heap.retain(|r| is_live(&r.0));
            self.live = self.heap.len();
        }
    }
}
