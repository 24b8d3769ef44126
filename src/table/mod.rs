//! The lock table: every lock decision of the broker, as a pure state machine.
//!
//! The table does no I/O and never reads a clock. Each call takes `now`; the owner asks
//! [`Table::poll_timeout`] for the next deadline, calls [`Table::handle_timeout`] when it passes,
//! and drains [`Table::poll_event`] for what happened to requests other than the one being made
//! (queued waiters granted, wait time-outs, TTL expiries). That keeps the rules testable with
//! simulated time, in the style of `quinn-proto`.
//!
//! Rules (DESIGN §3): at most `max` exclusive holders per key, readers share, a writer is alone;
//! strict FIFO with no barging, and after every change of a key as many waiters as fit are
//! granted; fencing tokens rise strictly across the whole table; release is by lock id; a
//! connection's death releases exactly its own holds and waiters; a key with no holders and no
//! waiters is forgotten.
//!
//! Files, by idea: `types.rs` (requests, outcomes, events, errors), `single.rs` (single-key
//! operations), `conns.rs` (connections), `groups.rs` (acquire-many), `deadlines.rs` (wait
//! time-outs and TTL expiries), `inspect.rs` (read-only views); `queue.rs`, `timers.rs` and
//! `name.rs` hold the per-key state, the deadline heap and the key/id string type.

mod conns;
mod deadlines;
mod groups;
mod inspect;
mod name;
mod queue;
mod single;
mod timers;
mod types;
mod waits;

pub use inspect::{HolderInfo, KeyInfo, Longest, Stats, WaiterInfo};
pub use name::Name;
pub use types::{
    Cancelled, Config, ConnId, Event, Grant, LockOutcome, LockRequest, ManyOutcome, ManyRequest,
    Mode, TableError, Ttl, Wait,
};
pub use waits::{WAIT_BUCKETS, WaitHistogram};

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::Duration;

use ahash::RandomState;
use hashbrown::HashMap;
use slab::Slab;

use conns::ConnEntry;
use groups::Group;
use queue::KeyState;
use timers::Timers;

/// The lock table. See the module docs.
#[derive(Debug)]
pub struct Table {
    cfg: Config,
    index: HashMap<Name, u32, RandomState>,
    keys: Slab<KeyState>,
    conns: HashMap<ConnId, ConnEntry, RandomState>,
    groups: HashMap<Name, Group, RandomState>,
    /// Request id of a group -> its lock id, to find a group from its wait deadline.
    group_rids: HashMap<u64, Name, RandomState>,
    timers: Timers,
    events: VecDeque<Event>,
    /// Groups whose next key may be taken now.
    advance: Vec<Name>,
    next_token: u64,
    next_rid: u64,
    /// Queued requests across all keys (for `Config::max_waiters`).
    waiting: usize,
    grants: u64,
    /// How long each grant waited.
    waits: WaitHistogram,
    expiries: u64,
    wait_timeouts: u64,
}

impl Table {
    /// An empty table; the first fencing token is `cfg.token_seed` (at least 1).
    pub fn new(cfg: Config) -> Self {
        Table {
            next_token: cfg.token_seed.max(1),
            cfg,
            index: HashMap::default(),
            keys: Slab::new(),
            conns: HashMap::default(),
            groups: HashMap::default(),
            group_rids: HashMap::default(),
            timers: Timers::default(),
            events: VecDeque::new(),
            advance: Vec::new(),
            next_rid: 1,
            waiting: 0,
            grants: 0,
            waits: WaitHistogram::default(),
            expiries: 0,
            wait_timeouts: 0,
        }
    }

    /// The limits and defaults the table was made with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The next thing that happened to a request other than the one being made.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---- internals shared by the operations ------------------------------------------------

    pub(super) fn check_key(&self, key: &str) -> Result<(), TableError> {
        if key.len() > self.cfg.max_key_len {
            return Err(TableError::KeyTooLong {
                len: key.len(),
                max: self.cfg.max_key_len,
            });
        }
        Ok(())
    }

    /// Room for the new ones among `keys` (checked before anything changes, so a refusal has
    /// no effect). Costs nothing until the table is nearly full.
    pub(super) fn check_key_capacity(&self, keys: &[&str]) -> Result<(), TableError> {
        if self.index.len() + keys.len() <= self.cfg.max_keys {
            return Ok(());
        }
        let new = keys
            .iter()
            .filter(|k| !self.index.contains_key(**k))
            .count();
        if self.index.len() + new > self.cfg.max_keys {
            return Err(TableError::TooManyKeys(self.cfg.max_keys));
        }
        Ok(())
    }

    /// Room for one more queued request across the table.
    pub(super) fn check_waiters(&self) -> Result<(), TableError> {
        if self.waiting >= self.cfg.max_waiters {
            return Err(TableError::TooManyWaiters(self.cfg.max_waiters));
        }
        Ok(())
    }

    pub(super) fn resolve_ttl(&self, ttl: Ttl) -> Option<Duration> {
        match ttl {
            Ttl::Default => self.cfg.default_ttl,
            Ttl::Never => None,
            Ttl::After(d) => Some(d),
        }
    }

    pub(super) fn rid(&mut self) -> u64 {
        self.next_rid += 1;
        self.next_rid
    }

    pub(super) fn hash_of(&self, key: &str) -> u64 {
        self.index.hasher().hash_one(key)
    }
}
