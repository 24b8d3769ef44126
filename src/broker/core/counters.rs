//! The core's own counters, beside the table's (grants, expiries, wait time-outs, the
//! lock-wait histogram): unlocks, and rejected requests by reason. `/metrics` reads them
//! through `Core::metrics`; they never affect a decision.

use std::time::Duration;

use crate::table::{Longest, Stats, TableError};

/// Why a request was refused, as the `reason` label of `lmx_rejected_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reject {
    /// Not a valid request (bad JSON, unknown type, a bad field).
    BadRequest,
    /// A try-lock (`wait:false`) found the key busy.
    Busy,
    QueueFull,
    /// The broker-wide cap on waiters (`max_waiters`).
    TooManyWaiters,
    TooManyRequests,
    TooManyKeys,
    /// Unlock or extend of a lock the id does not hold (lost, released, or never granted).
    NotHeld,
    /// Any other refusal of the table (key too long, max mismatch, duplicate id, ...).
    Invalid,
    /// A request before the auth token, or a wrong token.
    Unauthenticated,
    /// An admin act (force unlock) without the right.
    Forbidden,
    /// A `watch` beyond the broker's limit of watchers.
    TooManyWatchers,
}

impl Reject {
    pub(crate) const ALL: [Reject; 11] = [
        Reject::BadRequest,
        Reject::Busy,
        Reject::QueueFull,
        Reject::TooManyWaiters,
        Reject::TooManyRequests,
        Reject::TooManyKeys,
        Reject::NotHeld,
        Reject::Invalid,
        Reject::Unauthenticated,
        Reject::Forbidden,
        Reject::TooManyWatchers,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Reject::BadRequest => "bad_request",
            Reject::Busy => "busy",
            Reject::QueueFull => "queue_full",
            Reject::TooManyWaiters => "too_many_waiters",
            Reject::TooManyRequests => "too_many_requests",
            Reject::TooManyKeys => "too_many_keys",
            Reject::NotHeld => "not_held",
            Reject::Invalid => "invalid",
            Reject::Unauthenticated => "unauthenticated",
            Reject::Forbidden => "forbidden",
            Reject::TooManyWatchers => "too_many_watchers",
        }
    }
}

impl From<&TableError> for Reject {
    fn from(e: &TableError) -> Self {
        match e {
            TableError::QueueFull(_) => Reject::QueueFull,
            TableError::TooManyWaiters(_) => Reject::TooManyWaiters,
            TableError::TooManyRequests(_) => Reject::TooManyRequests,
            TableError::TooManyKeys(_) => Reject::TooManyKeys,
            TableError::NotHeld | TableError::StillWaiting => Reject::NotHeld,
            _ => Reject::Invalid,
        }
    }
}

/// Counters kept by the core.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counters {
    pub unlocks: u64,
    pub rejected: [u64; Reject::ALL.len()],
    pub opened: u64,
}

pub(crate) use crate::store::STUCK_KEYS;

/// A reading of everything the core counts, for `/metrics`.
#[derive(Clone, Debug)]
pub(crate) struct CoreMetrics {
    pub table: Stats,
    pub counters: Counters,
    pub connections: usize,
    pub watchers: usize,
    /// The keys held and waited for longest (empty with a store that knows no grant times:
    /// etcd).
    pub longest: Longest,
    /// How old `table` is, for a store read through the op path (etcd: the core's latest
    /// `Snapshot` answer; `None` inside, no reading yet); `None` outside for the table, read
    /// at the scrape.
    pub reading_age: Option<Option<Duration>>,
}

impl Counters {
    pub(super) fn reject(&mut self, why: Reject) {
        self.rejected[why as usize] += 1;
    }
}
