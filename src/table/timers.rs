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

impl Timer {
    pub(super) fn new(at: Instant, kind: TimerKind, rid: u64, slot: u32) -> Self {
        Timer {
            at,
            kind,
            rid,
            slot,
        }
    }
}

/// Deadlines armed since the heap was last touched. Most locks are released within
/// microseconds, long before their TTL: their deadlines are withdrawn from here without ever
/// entering the heap. Bounded: past this many they move to the heap.
const STAGED: usize = 64;

#[derive(Default, Debug)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<Timer>>,
    staged: Vec<Timer>,
    /// The earliest staged deadline.
    staged_min: Option<Timer>,
    /// Entries that are still armed (staged or in the heap); the rest of the heap is stale.
    live: usize,
}

impl Timers {
    pub(super) fn arm(&mut self, timer: Timer) {
        if self.staged.len() == STAGED {
            self.flush();
        }
        self.staged.push(timer);
        if self.staged_min.is_none_or(|m| timer < m) {
            self.staged_min = Some(timer);
        }
        self.live += 1;
    }

    /// The armed deadline of request `rid` was made void (its holder released, its waiter
    /// dequeued or re-armed). A staged one is dropped at once; one in the heap goes stale.
    pub(super) fn disarm(&mut self, rid: u64) {
        self.live = self.live.saturating_sub(1);
        if let Some(i) = self.staged.iter().rposition(|t| t.rid == rid) {
            let gone = self.staged.swap_remove(i);
            if self.staged_min == Some(gone) {
                self.staged_min = self.staged.iter().min().copied();
            }
        }
    }

    pub(super) fn flush(&mut self) {
        self.heap.extend(self.staged.drain(..).map(Reverse));
        self.staged_min = None;
    }

    pub(super) fn live(&self) -> usize {
        self.live
    }

    #[cfg(test)]
    pub(super) fn heap_len(&self) -> usize {
        self.heap.len()
    }

    /// The earliest entry, which may be stale; `is_live` decides.
    pub(super) fn peek(&self) -> Option<Timer> {
        let top = self.heap.peek().map(|r| r.0);
        match (top, self.staged_min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Pops the earliest entry. The caller says whether it was live (then it counts as fired).
    pub(super) fn pop(&mut self, was_live: bool) -> Option<Timer> {
        self.flush();
        let t = self.heap.pop()?.0;
        if was_live {
            self.live = self.live.saturating_sub(1);
        }
        Some(t)
    }

    /// Drops stale entries when they are more than half of the heap; amortised O(1) per arm.
    /// Identical entries (a deadline re-armed to the very same instant) are merged: both
    /// would pass `is_live`, but only one is armed.
    pub(super) fn maybe_compact(&mut self, is_live: impl Fn(&Timer) -> bool) {
        if self.heap.len() + self.staged.len() > 2 * self.live + 64 {
            let mut v = std::mem::take(&mut self.heap).into_vec();
            v.retain(|r| is_live(&r.0));
            v.sort_unstable();
            v.dedup();
            if v.capacity() > 4 * v.len() + 1024 {
                v.shrink_to_fit();
            }
            self.heap = BinaryHeap::from(v);
            self.live = self.heap.len() + self.staged.len();
        }
    }
}
