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

mod name;
mod queue;
mod timers;

pub use name::Name;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ahash::RandomState;
use hashbrown::HashMap;
use hashbrown::hash_map::RawEntryMut;
use slab::Slab;

use queue::{Holder, KeyState, Waiter};
use timers::{GROUP_SLOT, Timer, TimerKind, Timers};

/// A connection as the table knows it. Never a slab index: ids are not reused, so a late event
/// for a closed connection cannot reach the next one in the same slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// How a lock shares its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Up to the key's `max` holders (a mutex when `max` is 1, a semaphore otherwise).
    #[default]
    Exclusive,
    /// Shares with other readers only.
    Read,
    /// Alone on the key, whatever its `max`.
    Write,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Exclusive => "exclusive",
            Mode::Read => "read",
            Mode::Write => "write",
        }
    }
}

/// How long a granted lock lives unless unlocked or extended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Ttl {
    /// The table's configured default.
    #[default]
    Default,
    /// Until unlocked, or its connection dies.
    Never,
    After(Duration),
}

/// What a request does when it cannot be granted at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Wait {
    /// Try-lock: refused at once, never queued.
    No,
    #[default]
    Forever,
    /// Queued until this instant; then it ends as timed out.
    Until(Instant),
}

/// A request for one key. `id` is the client's request uuid and becomes the lock id.
#[derive(Clone, Copy, Debug)]
pub struct LockRequest<'a> {
    pub conn: ConnId,
    pub key: &'a str,
    pub id: &'a str,
    pub mode: Mode,
    /// Semaphore capacity; `None` takes the key's current one (1 for a new key).
    pub max: Option<u32>,
    pub ttl: Ttl,
    pub wait: Wait,
    /// Survive the connection's death (until TTL or an unlock by id).
    pub keep_after_disconnect: bool,
}

impl<'a> LockRequest<'a> {
    /// An exclusive lock that waits forever with the default TTL.
    pub fn new(conn: ConnId, key: &'a str, id: &'a str) -> Self {
        LockRequest {
            conn,
            key,
            id,
            mode: Mode::Exclusive,
            max: None,
            ttl: Ttl::Default,
            wait: Wait::Forever,
            keep_after_disconnect: false,
        }
    }
}

/// A request for several keys at once, granted all together or not at all.
#[derive(Clone, Copy, Debug)]
pub struct ManyRequest<'a> {
    pub conn: ConnId,
    pub keys: &'a [&'a str],
    pub id: &'a str,
    pub ttl: Ttl,
    pub wait: Wait,
    pub keep_after_disconnect: bool,
}

/// Limits and defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// TTL of a lock whose request names none (`Ttl::Default`); `None` = no expiry.
    pub default_ttl: Option<Duration>,
    pub max_key_len: usize,
    pub max_waiters_per_key: usize,
    /// Holds plus queued requests of one connection.
    pub max_requests_per_conn: usize,
    pub max_keys_per_many: usize,
    /// Keys held or waited for at once, across all connections: bounds the memory that
    /// keep-after-disconnect locks of connections long gone can pin.
    pub max_keys: usize,
    /// First fencing token. The broker passes wall-clock microseconds (or a persisted high-water
    /// mark) so tokens keep rising across restarts.
    pub token_seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            default_ttl: Some(Duration::from_millis(5000)),
            max_key_len: 1024,
            max_waiters_per_key: 10_000,
            max_requests_per_conn: 10_000,
            max_keys_per_many: 64,
            max_keys: 1_000_000,
            token_seed: 1,
        }
    }
}

/// Facts of a grant that the reply carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub token: u64,
    /// Waiters still queued on the key.
    pub queue_len: usize,
    pub readers: usize,
}

/// The immediate result of [`Table::lock`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockOutcome {
    Granted(Grant),
    /// Queued; an [`Event::Granted`] or [`Event::TimedOut`] follows.
    Queued {
        queue_len: usize,
        readers: usize,
    },
    /// Try-lock refused; nothing was queued.
    Busy {
        queue_len: usize,
        readers: usize,
    },
    /// The wait deadline had already passed and the key was not free.
    TimedOut,
}

/// The immediate result of [`Table::lock_many`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManyOutcome {
    /// Every key, in canonical (sorted) order, with its fencing token.
    Granted(Vec<(Name, u64)>),
    Queued,
    Busy,
    TimedOut,
}

/// What [`Table::cancel`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cancelled {
    Dequeued,
    Released,
    NotFound,
}

/// Something that happened to a request other than the one being made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A queued request was granted.
    Granted {
        conn: ConnId,
        id: Name,
        key: Name,
        grant: Grant,
    },
    /// A queued acquire-many got its last key.
    ManyGranted {
        conn: ConnId,
        id: Name,
        tokens: Vec<(Name, u64)>,
    },
    /// A queued request reached its wait deadline and was dropped. `key` is `None` for an
    /// acquire-many.
    TimedOut {
        conn: ConnId,
        id: Name,
        key: Option<Name>,
        waited: Duration,
    },
    /// A holder's TTL ended; it no longer holds the key (for an acquire-many, none of its keys).
    Expired { conn: ConnId, id: Name, key: Name },
}

/// Errors of one request. None of them changes the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("key is {len} bytes long; the limit is {max}")]
    KeyTooLong { len: usize, max: usize },
    #[error("max must be at least 1")]
    InvalidMax,
    #[error("key is in use with max {current}; this request asked for max {requested}")]
    MaxMismatch { current: u32, requested: u32 },
    #[error("{0} requests already wait for this key (the limit)")]
    QueueFull(usize),
    #[error("this connection already has {0} locks and requests (the limit)")]
    TooManyRequests(usize),
    #[error("lock id is already in use by another request")]
    DuplicateId,
    #[error("unlock needs the lock id (_uuid) or force")]
    IdRequired,
    #[error(
        "lock id does not hold this key: the lock was lost (expired or forced), already released, or never granted"
    )]
    NotHeld,
    #[error("lock id is still waiting for this key, it does not hold it")]
    StillWaiting,
    #[error("this lock belongs to an acquire-many; release it with release-many")]
    GroupMember,
    #[error("the broker already tracks {0} keys (the limit)")]
    TooManyKeys(usize),
    #[error("acquire-many needs between 1 and {max} keys, got {got}")]
    BadKeyCount { got: usize, max: usize },
}

/// One holder, for inspection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HolderInfo {
    pub id: Name,
    pub conn: ConnId,
    pub mode: Mode,
    pub token: u64,
    pub ttl_remaining: Option<Duration>,
}

/// One key, for inspection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub key: Name,
    pub max: u32,
    pub holders: Vec<HolderInfo>,
    pub waiters: usize,
    /// Lock ids of the waiters, in queue order.
    pub queue: Vec<Name>,
    pub readers: usize,
}

/// Totals, for `system-stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub keys: usize,
    pub holders: usize,
    pub waiters: usize,
    pub connections: usize,
    pub groups: usize,
    pub grants: u64,
    pub expiries: u64,
    pub wait_timeouts: u64,
    /// The token the next grant will carry.
    pub next_token: u64,
}

#[derive(Default, Debug)]
struct ConnEntry {
    /// Holds plus queued requests.
    requests: usize,
    /// Slots of keys this connection has entries on, possibly with stale ones: a slot is
    /// added when an entry is, and stale ones are swept out once they outnumber the live.
    slots: Vec<u32>,
    /// Disconnected, kept only for its keep-after-disconnect holds: forgotten with the last.
    gone: bool,
}

/// An acquire-many in progress or held. Keys are taken one by one in sorted order, so two
/// groups can never wait on each other in a cycle.
#[derive(Debug)]
struct Group {
    rid: u64,
    conn: ConnId,
    keys: Vec<Name>,
    tokens: Vec<u64>,
    ttl: Option<Duration>,
    deadline: Option<Instant>,
    since: Instant,
    keep: bool,
}

impl Group {
    fn complete(&self) -> bool {
        self.tokens.len() == self.keys.len()
    }
}

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
    grants: u64,
    expiries: u64,
    wait_timeouts: u64,
}

impl Table {
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
            grants: 0,
            expiries: 0,
            wait_timeouts: 0,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Requests a lock on one key.
    pub fn lock(&mut self, now: Instant, req: &LockRequest<'_>) -> Result<LockOutcome, TableError> {
        self.handle_timeout(now);
        self.check_key(req.key)?;
        if req.max == Some(0) {
            return Err(TableError::InvalidMax);
        }
        let hash = self.hash_of(req.key);
        let found = self
            .index
            .raw_entry()
            .from_key_hashed_nocheck(hash, req.key);
        if let Some((_, &slot)) = found {
            let ks = &self.keys[slot as usize];
            // The Node client re-sends a lock with the same uuid when its own timer fires:
            // answer with the request's current state instead of queueing it twice.
            if let Some(i) = ks.holder_index(req.id) {
                let h = &ks.holders[i];
                if h.conn != req.conn || h.group {
                    return Err(TableError::DuplicateId);
                }
                return Ok(LockOutcome::Granted(Grant {
                    token: h.token,
                    queue_len: ks.queue.len(),
                    readers: ks.readers(),
                }));
            }
            if let Some(i) = ks.waiter_index(req.id) {
                let w = &ks.queue[i];
                if w.conn != req.conn || w.group {
                    return Err(TableError::DuplicateId);
                }
                return Ok(LockOutcome::Queued {
                    queue_len: ks.queue.len(),
                    readers: ks.readers(),
                });
            }
            if let Some(m) = req.max
                && m != ks.max
            {
                return Err(TableError::MaxMismatch {
                    current: ks.max,
                    requested: m,
                });
            }
            if !ks.grantable_now(req.mode)
                && req.wait != Wait::No
                && ks.queue.len() >= self.cfg.max_waiters_per_key
            {
                return Err(TableError::QueueFull(self.cfg.max_waiters_per_key));
            }
        }
        self.check_conn_capacity(req.conn, 1)?;
        self.check_key_capacity(&[req.key])?;
        let ttl = self.resolve_ttl(req.ttl);
        let slot = self.slot_or_insert(req.key, hash, req.max.unwrap_or(1));
        let ks = &self.keys[slot as usize];
        if ks.grantable_now(req.mode) {
            let w = Waiter {
                id: req.id.into(),
                rid: 0,
                conn: req.conn,
                mode: req.mode,
                ttl,
                deadline: None,
                since: now,
                keep: req.keep_after_disconnect,
                group: false,
            };
            return Ok(LockOutcome::Granted(self.grant(now, slot, w)));
        }
        let (queue_len, readers) = (ks.queue.len(), ks.readers());
        let deadline = match req.wait {
            Wait::No => {
                self.prune(slot);
                return Ok(LockOutcome::Busy { queue_len, readers });
            }
            Wait::Until(t) if t <= now => {
                self.prune(slot);
                return Ok(LockOutcome::TimedOut);
            }
            Wait::Until(t) => Some(t),
            Wait::Forever => None,
        };
        let rid = self.rid();
        if let Some(at) = deadline {
            self.timers.arm(Timer::new(at, TimerKind::Wait, rid, slot));
        }
        self.keys[slot as usize].queue.push_back(Waiter {
            id: req.id.into(),
            rid,
            conn: req.conn,
            mode: req.mode,
            ttl,
            deadline,
            since: now,
            keep: req.keep_after_disconnect,
            group: false,
        });
        self.conn_add(req.conn, slot);
        Ok(LockOutcome::Queued {
            queue_len: queue_len + 1,
            readers,
        })
    }

    /// Releases the holder `id` of `key`, or with `force` every holder of the key (an admin act).
    pub fn unlock(
        &mut self,
        now: Instant,
        key: &str,
        id: Option<&str>,
        force: bool,
    ) -> Result<usize, TableError> {
        self.handle_timeout(now);
        if !force && id.is_none() {
            return Err(TableError::IdRequired);
        }
        let Some(&slot) = self.index.get(key) else {
            return if force {
                Ok(0)
            } else {
                Err(TableError::NotHeld)
            };
        };
        if force {
            let ks = &mut self.keys[slot as usize];
            let gone: Vec<Holder> = ks.holders.drain(..).collect();
            for h in &gone {
                self.forget_holder(h);
            }
            // A forced member takes its whole group with it: a partial acquire-many is no lock.
            for h in gone.iter().filter(|h| h.group) {
                self.drop_group(now, &h.id);
            }
            self.settle(now, slot);
            self.run_advances(now);
            return Ok(gone.len());
        }
        let id = id.unwrap_or_default();
        let ks = &self.keys[slot as usize];
        let Some(i) = ks.holder_of(id, false) else {
            return Err(if ks.holder_of(id, true).is_some() {
                TableError::GroupMember
            } else if ks.waiter_index(id).is_some() {
                TableError::StillWaiting
            } else {
                TableError::NotHeld
            });
        };
        self.release_holder_at(slot, i);
        self.settle(now, slot);
        self.run_advances(now);
        Ok(1)
    }

    /// Pushes a holder's expiry to `now + ttl`. Fails once the lock is lost.
    pub fn extend(
        &mut self,
        now: Instant,
        key: &str,
        id: &str,
        ttl: Ttl,
    ) -> Result<Option<Instant>, TableError> {
        self.handle_timeout(now);
        let slot = *self.index.get(key).ok_or(TableError::NotHeld)?;
        let i = self.keys[slot as usize]
            .holder_index(id)
            .ok_or(TableError::NotHeld)?;
        let expires = self.resolve_ttl(ttl).map(|d| now + d);
        let h = &mut self.keys[slot as usize].holders[i];
        let rid = h.rid;
        if h.expires.take().is_some() {
            self.timers.disarm(rid);
        }
        h.expires = expires;
        if let Some(at) = expires {
            self.timers
                .arm(Timer::new(at, TimerKind::Expiry, rid, slot));
        }
        Ok(expires)
    }

    /// The client gave up on request `id` (its own time-out, or it refuses a grant that came too
    /// late): dequeue it, or release it if it was already granted. Only its own connection may.
    pub fn cancel(&mut self, now: Instant, conn: ConnId, key: &str, id: &str) -> Cancelled {
        self.handle_timeout(now);
        if self.groups.get(id).is_some_and(|g| g.conn == conn) {
            let held = self.groups.get(id).is_some_and(Group::complete);
            self.drop_group(now, id);
            self.run_advances(now);
            return if held {
                Cancelled::Released
            } else {
                Cancelled::Dequeued
            };
        }
        let Some(&slot) = self.index.get(key) else {
            return Cancelled::NotFound;
        };
        let ks = &self.keys[slot as usize];
        let out = if let Some(i) = ks
            .holder_of(id, false)
            .filter(|&i| ks.holders[i].conn == conn)
        {
            self.release_holder_at(slot, i);
            Cancelled::Released
        } else if let Some(i) = ks
            .waiter_of(id, false)
            .filter(|&i| ks.queue[i].conn == conn)
        {
            self.remove_waiter_at(slot, i);
            Cancelled::Dequeued
        } else {
            return Cancelled::NotFound;
        };
        self.settle(now, slot);
        self.run_advances(now);
        out
    }

    /// The connection is gone: release its holds (but those that asked to outlive it) and drop
    /// its waiters. Nothing of other connections changes except that waiters may now be granted.
    pub fn disconnect(&mut self, now: Instant, conn: ConnId) {
        self.handle_timeout(now);
        let Some(entry) = self.conns.get(&conn) else {
            return;
        };
        let mut slots: Vec<u32> = entry.slots.clone();
        sweep_slots(&self.keys, &mut slots, conn);
        // Settle keys in key order, so which waiter gets the lower token is reproducible.
        slots.sort_unstable_by(|a, b| self.keys[*a as usize].key.cmp(&self.keys[*b as usize].key));
        let mut groups: Vec<Name> = Vec::new();
        for &slot in &slots {
            let ks = &mut self.keys[slot as usize];
            let mut gone_h = Vec::new();
            ks.holders.retain(|h| {
                let drop = h.conn == conn && !h.keep && !h.group;
                if drop {
                    gone_h.push(h.clone());
                }
                !drop
            });
            let mut gone_w = Vec::new();
            ks.queue.retain(|w| {
                let drop = w.conn == conn && !w.group;
                if drop {
                    gone_w.push(w.deadline.map(|_| w.rid));
                }
                !drop
            });
            groups.extend(
                ks.holders
                    .iter()
                    .filter(|h| h.conn == conn && h.group)
                    .map(|h| h.id.clone()),
            );
            groups.extend(
                ks.queue
                    .iter()
                    .filter(|w| w.conn == conn && w.group)
                    .map(|w| w.id.clone()),
            );
            for h in &gone_h {
                self.forget_holder(h);
            }
            for armed in gone_w {
                if let Some(rid) = armed {
                    self.timers.disarm(rid);
                }
                self.conn_remove(conn);
            }
        }
        groups.sort();
        groups.dedup();
        for id in groups {
            let keep = self.groups.get(&id).is_some_and(|g| g.keep && g.complete());
            if !keep {
                self.drop_group(now, &id);
            }
        }
        for slot in slots {
            self.settle(now, slot);
        }
        self.run_advances(now);
        match self.conns.get_mut(&conn) {
            Some(e) if e.requests == 0 => {
                self.conns.remove(&conn);
            }
            Some(e) => e.gone = true,
            None => {}
        }
    }

    /// Takes several keys atomically: all are granted, or (on time-out, cancel, disconnect)
    /// none stays held.
    pub fn lock_many(
        &mut self,
        now: Instant,
        req: &ManyRequest<'_>,
    ) -> Result<ManyOutcome, TableError> {
        self.handle_timeout(now);
        let max = self.cfg.max_keys_per_many;
        if req.keys.is_empty() || req.keys.len() > max {
            return Err(TableError::BadKeyCount {
                got: req.keys.len(),
                max,
            });
        }
        for k in req.keys {
            self.check_key(k)?;
        }
        if self.groups.contains_key(req.id) {
            return match self.groups.get(req.id) {
                Some(g) if g.conn == req.conn && g.complete() => Ok(ManyOutcome::Granted(
                    g.keys
                        .iter()
                        .cloned()
                        .zip(g.tokens.iter().copied())
                        .collect(),
                )),
                Some(g) if g.conn == req.conn => Ok(ManyOutcome::Queued),
                _ => Err(TableError::DuplicateId),
            };
        }
        let mut keys: Vec<&str> = req.keys.to_vec();
        keys.sort_unstable();
        keys.dedup();
        self.check_conn_capacity(req.conn, keys.len())?;
        self.check_key_capacity(&keys)?;
        let all_free = keys.iter().all(|k| {
            self.index
                .get(*k)
                .is_none_or(|&s| self.keys[s as usize].grantable_now(Mode::Exclusive))
        });
        if !all_free {
            match req.wait {
                Wait::No => return Ok(ManyOutcome::Busy),
                Wait::Until(t) if t <= now => return Ok(ManyOutcome::TimedOut),
                _ => {}
            }
            for k in &keys {
                if let Some(&s) = self.index.get(*k)
                    && self.keys[s as usize].queue.len() >= self.cfg.max_waiters_per_key
                {
                    return Err(TableError::QueueFull(self.cfg.max_waiters_per_key));
                }
            }
        }
        let id: Name = req.id.into();
        let rid = self.rid();
        let deadline = match req.wait {
            Wait::Until(t) => Some(t),
            _ => None,
        };
        if let (Some(at), false) = (deadline, all_free) {
            self.timers.arm(Timer {
                at,
                kind: TimerKind::Wait,
                rid,
                slot: GROUP_SLOT,
            });
        }
        let group = Group {
            rid,
            conn: req.conn,
            keys: keys.iter().map(|k| Name::from(*k)).collect(),
            tokens: Vec::with_capacity(keys.len()),
            ttl: self.resolve_ttl(req.ttl),
            deadline: deadline.filter(|_| !all_free),
            since: now,
            keep: req.keep_after_disconnect,
        };
        self.group_rids.insert(rid, id.clone());
        self.groups.insert(id.clone(), group);
        self.advance_group(now, &id, false);
        match self.groups.get(&id) {
            Some(g) if g.complete() => Ok(ManyOutcome::Granted(
                g.keys
                    .iter()
                    .cloned()
                    .zip(g.tokens.iter().copied())
                    .collect(),
            )),
            _ => Ok(ManyOutcome::Queued),
        }
    }

    /// Releases every key of an acquire-many (or abandons it while it still waits).
    pub fn release_many(&mut self, now: Instant, id: &str) -> Result<usize, TableError> {
        self.handle_timeout(now);
        let held = match self.groups.get(id) {
            Some(g) if g.complete() => g.keys.len(),
            Some(_) => 0,
            None => return Err(TableError::NotHeld),
        };
        self.drop_group(now, id);
        self.run_advances(now);
        if held == 0 {
            Err(TableError::StillWaiting)
        } else {
            Ok(held)
        }
    }

    /// The next instant at which [`Table::handle_timeout`] has work, if any.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(t) = self.timers.peek() {
            if self.timer_live(&t) {
                return Some(t.at);
            }
            self.timers.pop(false);
        }
        None
    }

    /// Fires every deadline at or before `now`, in order; at one instant, wait deadlines before
    /// TTL expiries. Each fires at its own instant, so the outcome does not depend on how late
    /// the caller is.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(t) = self.timers.peek() {
            if t.at > now {
                break;
            }
            let live = self.timer_live(&t);
            self.timers.pop(live);
            if !live {
                continue;
            }
            let at = t.at;
            if t.slot == GROUP_SLOT {
                let Some(id) = self.group_rids.get(&t.rid).cloned() else {
                    continue;
                };
                let (conn, waited) = (self.groups[&id].conn, at - self.groups[&id].since);
                if let Some(g) = self.groups.get_mut(&id) {
                    g.deadline = None;
                }
                self.wait_timeouts += 1;
                self.events.push_back(Event::TimedOut {
                    conn,
                    id: id.clone(),
                    key: None,
                    waited,
                });
                self.drop_group(at, &id);
                self.run_advances(at);
                continue;
            }
            let slot = t.slot;
            let ks = &self.keys[slot as usize];
            let key = ks.key.clone();
            match t.kind {
                TimerKind::Wait => {
                    let Some(i) = ks.queue.iter().position(|w| w.rid == t.rid) else {
                        continue;
                    };
                    let w = &mut self.keys[slot as usize].queue[i];
                    w.deadline = None; // fired: remove_waiter_at must not disarm it again
                    let (conn, id, waited) = (w.conn, w.id.clone(), at - w.since);
                    self.remove_waiter_at(slot, i);
                    self.wait_timeouts += 1;
                    self.events.push_back(Event::TimedOut {
                        conn,
                        id,
                        key: Some(key),
                        waited,
                    });
                }
                TimerKind::Expiry => {
                    let Some(i) = ks.holders.iter().position(|h| h.rid == t.rid) else {
                        continue;
                    };
                    let h = &mut self.keys[slot as usize].holders[i];
                    h.expires = None;
                    let (conn, id, group) = (h.conn, h.id.clone(), h.group);
                    self.expiries += 1;
                    self.events.push_back(Event::Expired {
                        conn,
                        id: id.clone(),
                        key,
                    });
                    if group {
                        self.drop_group(at, &id);
                    } else {
                        self.release_holder_at(slot, i);
                    }
                }
            }
            self.settle(at, slot);
            self.run_advances(at);
        }
        let (keys, groups, rids) = (&self.keys, &self.groups, &self.group_rids);
        self.timers
            .maybe_compact(|t| timer_live(keys, groups, rids, t));
    }

    /// The next thing that happened to a request other than the one being made.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Keys currently held or waited for.
    pub fn keys(&self) -> impl Iterator<Item = &Name> + '_ {
        self.keys.iter().map(|(_, ks)| &ks.key)
    }

    pub fn info(&self, now: Instant, key: &str) -> Option<KeyInfo> {
        let ks = &self.keys[*self.index.get(key)? as usize];
        Some(KeyInfo {
            key: ks.key.clone(),
            max: ks.max,
            holders: ks
                .holders
                .iter()
                .map(|h| HolderInfo {
                    id: h.id.clone(),
                    conn: h.conn,
                    mode: h.mode,
                    token: h.token,
                    ttl_remaining: h.expires.map(|e| e.saturating_duration_since(now)),
                })
                .collect(),
            waiters: ks.queue.len(),
            queue: ks.queue.iter().map(|w| w.id.clone()).collect(),
            readers: ks.readers(),
        })
    }

    /// Queue length and readers of a key (zeros for an unknown key); what replies report.
    pub fn counts(&self, key: &str) -> (usize, usize) {
        self.index.get(key).map_or((0, 0), |&s| {
            let ks = &self.keys[s as usize];
            (ks.queue.len(), ks.readers())
        })
    }

    pub fn stats(&self) -> Stats {
        let (mut holders, mut waiters) = (0, 0);
        for (_, ks) in &self.keys {
            holders += ks.holders.len();
            waiters += ks.queue.len();
        }
        Stats {
            keys: self.index.len(),
            holders,
            waiters,
            connections: self.conns.len(),
            groups: self.groups.len(),
            grants: self.grants,
            expiries: self.expiries,
            wait_timeouts: self.wait_timeouts,
            next_token: self.next_token,
        }
    }

    /// True when the table holds no state at all: what idle keys and closed connections must
    /// leave behind.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
            && self.keys.is_empty()
            && self.groups.is_empty()
            && self.group_rids.is_empty()
            && self.conns.values().all(|c| c.requests == 0)
            && self.timers.live() == 0
    }

    /// Checks the structural invariants; for tests and fuzzing.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut per_conn: HashMap<ConnId, usize, RandomState> = HashMap::default();
        let mut armed = 0;
        for (slot, ks) in &self.keys {
            if self.index.get(&*ks.key) != Some(&(slot as u32)) {
                return Err(format!("key {:?} not indexed at its slot", ks.key));
            }
            if ks.is_idle() {
                return Err(format!("idle key {:?} kept", ks.key));
            }
            let excl = ks
                .holders
                .iter()
                .filter(|h| h.mode == Mode::Exclusive)
                .count();
            let writers = ks.holders.iter().filter(|h| h.mode == Mode::Write).count();
            let readers = ks.readers();
            if excl > ks.max as usize
                || (writers > 0 && ks.holders.len() > 1)
                || (readers > 0 && readers != ks.holders.len())
            {
                return Err(format!(
                    "exclusion broken on {:?}: {:?}",
                    ks.key, ks.holders
                ));
            }
            if let Some(w) = ks.queue.front()
                && ks.compatible(w.mode)
            {
                return Err(format!("lost wakeup on {:?}: head {:?} fits", ks.key, w.id));
            }
            for h in &ks.holders {
                *per_conn.entry(h.conn).or_default() += 1;
                armed += usize::from(h.expires.is_some());
                if h.token >= self.next_token {
                    return Err("token from the future".into());
                }
            }
            for w in &ks.queue {
                *per_conn.entry(w.conn).or_default() += 1;
                armed += usize::from(w.deadline.is_some());
            }
        }
        armed += self
            .groups
            .values()
            .filter(|g| g.deadline.is_some())
            .count();
        if armed != self.timers.live() {
            return Err(format!(
                "{armed} deadlines armed, timers count {}",
                self.timers.live()
            ));
        }
        for (conn, n) in &per_conn {
            if self.conns.get(conn).map(|c| c.requests) != Some(*n) {
                return Err(format!("connection {conn:?} request count off"));
            }
        }
        if self.index.len() != self.keys.len() {
            return Err("index and slab disagree".into());
        }
        for (id, g) in &self.groups {
            let (mut held, mut waiting) = (0, 0);
            for (_, ks) in &self.keys {
                held += ks.holders.iter().filter(|h| h.group && h.id == *id).count();
                waiting += ks.queue.iter().filter(|w| w.group && w.id == *id).count();
            }
            if held != g.tokens.len() || waiting > 1 || g.tokens.len() > g.keys.len() {
                return Err(format!(
                    "group {id:?}: {held} held, {waiting} waiting, {} tokens for {} keys",
                    g.tokens.len(),
                    g.keys.len()
                ));
            }
        }
        Ok(())
    }

    // ---- internals ------------------------------------------------------------------------

    fn check_key(&self, key: &str) -> Result<(), TableError> {
        if key.len() > self.cfg.max_key_len {
            return Err(TableError::KeyTooLong {
                len: key.len(),
                max: self.cfg.max_key_len,
            });
        }
        Ok(())
    }

    fn check_conn_capacity(&self, conn: ConnId, n: usize) -> Result<(), TableError> {
        let cap = self.cfg.max_requests_per_conn;
        match self.conns.get(&conn) {
            Some(c) if c.requests + n > cap => Err(TableError::TooManyRequests(cap)),
            None if n > cap => Err(TableError::TooManyRequests(cap)),
            _ => Ok(()),
        }
    }

    /// Room for the new ones among `keys` (checked before anything changes, so a refusal has
    /// no effect). Costs nothing until the table is nearly full.
    fn check_key_capacity(&self, keys: &[&str]) -> Result<(), TableError> {
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

    fn resolve_ttl(&self, ttl: Ttl) -> Option<Duration> {
        match ttl {
            Ttl::Default => self.cfg.default_ttl,
            Ttl::Never => None,
            Ttl::After(d) => Some(d),
        }
    }

    fn rid(&mut self) -> u64 {
        self.next_rid += 1;
        self.next_rid
    }

    fn hash_of(&self, key: &str) -> u64 {
        self.index.hasher().hash_one(key)
    }

    /// The slot of `key` (whose index hash is `hash`), created if new.
    fn slot_or_insert(&mut self, key: &str, hash: u64, max: u32) -> u32 {
        match self
            .index
            .raw_entry_mut()
            .from_key_hashed_nocheck(hash, key)
        {
            RawEntryMut::Occupied(e) => *e.get(),
            RawEntryMut::Vacant(v) => {
                let ve = self.keys.vacant_entry();
                let slot = ve.key() as u32;
                let name = Name::from(key);
                v.insert_hashed_nocheck(hash, name.clone(), slot);
                ve.insert(KeyState::new(name, hash, max));
                slot
            }
        }
    }

    /// Forgets a key nobody holds or waits for.
    fn prune(&mut self, slot: u32) {
        if self.keys[slot as usize].is_idle() {
            let ks = self.keys.remove(slot as usize);
            if let RawEntryMut::Occupied(e) = self
                .index
                .raw_entry_mut()
                .from_key_hashed_nocheck(ks.hash, &*ks.key)
            {
                e.remove();
            }
            // The last key is gone: give back what a burst of keys made the maps grow to.
            if self.keys.is_empty() && self.keys.capacity() > 1024 {
                self.keys.shrink_to_fit();
                self.index.shrink_to(0);
            }
        }
    }

    fn conn_add(&mut self, conn: ConnId, slot: u32) {
        let e = self.conns.entry(conn).or_default();
        e.requests += 1;
        if e.slots.last() != Some(&slot) {
            e.slots.push(slot);
            if e.slots.len() > 2 * e.requests + 16 {
                sweep_slots(&self.keys, &mut e.slots, conn);
            }
        }
    }

    fn conn_remove(&mut self, conn: ConnId) {
        if let Some(e) = self.conns.get_mut(&conn) {
            e.requests = e.requests.saturating_sub(1);
            if e.gone && e.requests == 0 {
                self.conns.remove(&conn);
            }
        }
    }

    /// Makes `id` a holder of `slot` now. The caller has checked that it fits.
    fn grant(&mut self, now: Instant, slot: u32, w: Waiter) -> Grant {
        let token = self.next_token;
        self.next_token += 1;
        self.grants += 1;
        let rid = self.rid();
        let expires = w.ttl.map(|d| now + d);
        if let Some(at) = expires {
            self.timers
                .arm(Timer::new(at, TimerKind::Expiry, rid, slot));
        }
        let ks = &mut self.keys[slot as usize];
        ks.holders.push(Holder {
            id: w.id,
            rid,
            conn: w.conn,
            mode: w.mode,
            token,
            expires,
            keep: w.keep,
            group: w.group,
        });
        let grant = Grant {
            token,
            queue_len: ks.queue.len(),
            readers: ks.readers(),
        };
        self.conn_add(w.conn, slot);
        grant
    }

    fn forget_holder(&mut self, h: &Holder) {
        if h.expires.is_some() {
            self.timers.disarm(h.rid);
        }
        self.conn_remove(h.conn);
    }

    fn release_holder_at(&mut self, slot: u32, i: usize) {
        let h = self.keys[slot as usize].holders.swap_remove(i);
        self.forget_holder(&h);
    }

    fn remove_waiter_at(&mut self, slot: u32, i: usize) {
        if let Some(w) = self.keys[slot as usize].queue.remove(i) {
            if w.deadline.is_some() {
                self.timers.disarm(w.rid);
            }
            self.conn_remove(w.conn);
        }
    }

    /// Grants as many queued requests of `slot` as fit, in order, then forgets the key if it
    /// became idle. Run after every change of a key.
    fn settle(&mut self, now: Instant, slot: u32) {
        if !self.keys.contains(slot as usize) {
            return; // already forgotten by a cascade (a group released with its other keys)
        }
        loop {
            let ks = &mut self.keys[slot as usize];
            let Some(w) = ks.queue.front() else { break };
            if !ks.compatible(w.mode) {
                break;
            }
            let Some(w) = ks.queue.pop_front() else { break };
            if w.deadline.is_some() {
                self.timers.disarm(w.rid);
            }
            self.conn_remove(w.conn);
            let (id, conn, group) = (w.id.clone(), w.conn, w.group);
            let grant = self.grant(now, slot, w);
            if group {
                if let Some(g) = self.groups.get_mut(&id) {
                    g.tokens.push(grant.token);
                }
                self.advance.push(id);
            } else {
                let key = self.keys[slot as usize].key.clone();
                self.events.push_back(Event::Granted {
                    conn,
                    id,
                    key,
                    grant,
                });
            }
        }
        self.prune(slot);
    }

    fn run_advances(&mut self, now: Instant) {
        while let Some(id) = self.advance.pop() {
            self.advance_group(now, &id, true);
        }
    }

    /// Takes the group's next keys while they are free, queueing on the first that is not.
    fn advance_group(&mut self, now: Instant, id: &Name, notify: bool) {
        loop {
            let Some(g) = self.groups.get(id) else { return };
            if g.complete() {
                if notify {
                    if g.deadline.is_some() {
                        self.timers.disarm(g.rid);
                    }
                    let (conn, tokens) = (
                        g.conn,
                        g.keys
                            .iter()
                            .cloned()
                            .zip(g.tokens.iter().copied())
                            .collect(),
                    );
                    if let Some(g) = self.groups.get_mut(id) {
                        g.deadline = None;
                    }
                    self.events.push_back(Event::ManyGranted {
                        conn,
                        id: id.clone(),
                        tokens,
                    });
                }
                return;
            }
            let key = g.keys[g.tokens.len()].clone();
            let (conn, ttl, keep) = (g.conn, g.ttl, g.keep);
            let slot = self.slot_or_insert(&key, self.hash_of(&key), 1);
            let w = Waiter {
                id: id.clone(),
                rid: self.rid(),
                conn,
                mode: Mode::Exclusive,
                ttl,
                deadline: None,
                since: now,
                keep,
                group: true,
            };
            if self.keys[slot as usize].grantable_now(Mode::Exclusive) {
                let grant = self.grant(now, slot, w);
                if let Some(g) = self.groups.get_mut(id) {
                    g.tokens.push(grant.token);
                }
            } else {
                self.keys[slot as usize].queue.push_back(w);
                self.conn_add(conn, slot);
                return;
            }
        }
    }

    /// Removes a group and every hold and queue entry it has; settles the keys it touched.
    fn drop_group(&mut self, now: Instant, id: &str) {
        let Some(g) = self.groups.remove(id) else {
            return;
        };
        self.group_rids.remove(&g.rid);
        if g.deadline.is_some() {
            self.timers.disarm(g.rid);
        }
        for key in &g.keys {
            let Some(&slot) = self.index.get(&**key) else {
                continue;
            };
            let ks = &self.keys[slot as usize];
            if let Some(i) = ks.holder_of(id, true) {
                self.release_holder_at(slot, i);
            } else if let Some(i) = ks.waiter_of(id, true) {
                self.remove_waiter_at(slot, i);
            }
            self.settle(now, slot);
        }
    }

    fn timer_live(&self, t: &Timer) -> bool {
        timer_live(&self.keys, &self.groups, &self.group_rids, t)
    }
}

/// Keeps each slot of `slots` where `conn` has entries, once.
fn sweep_slots(keys: &Slab<KeyState>, slots: &mut Vec<u32>, conn: ConnId) {
    slots.retain(|&s| has_entries(keys, s, conn));
    slots.sort_unstable();
    slots.dedup();
}

/// Does connection `conn` hold or wait for the key in `slot`?
fn has_entries(keys: &Slab<KeyState>, slot: u32, conn: ConnId) -> bool {
    keys.get(slot as usize).is_some_and(|ks| {
        ks.holders.iter().any(|h| h.conn == conn) || ks.queue.iter().any(|w| w.conn == conn)
    })
}

fn timer_live(
    keys: &Slab<KeyState>,
    groups: &HashMap<Name, Group, RandomState>,
    group_rids: &HashMap<u64, Name, RandomState>,
    t: &Timer,
) -> bool {
    if t.slot == GROUP_SLOT {
        return group_rids
            .get(&t.rid)
            .and_then(|id| groups.get(id))
            .is_some_and(|g| g.deadline == Some(t.at));
    }
    let Some(ks) = keys.get(t.slot as usize) else {
        return false;
    };
    match t.kind {
        TimerKind::Wait => ks
            .queue
            .iter()
            .any(|w| w.rid == t.rid && w.deadline == Some(t.at)),
        TimerKind::Expiry => ks
            .holders
            .iter()
            .any(|h| h.rid == t.rid && h.expires == Some(t.at)),
    }
}
