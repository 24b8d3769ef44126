//! Inspection: read-only views of the table for replies, `system-stats`, the admin commands,
//! and the invariant check that the tests and fuzzers run after every step.

use std::time::{Duration, Instant};

use ahash::RandomState;
use hashbrown::HashMap;

use super::{ConnId, Mode, Name, Table, WaitHistogram};

/// One holder, for inspection.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HolderInfo {
    /// Its lock id (the group's, for an acquire-many member).
    pub id: Name,
    /// The connection that took it (possibly gone, for a keep-after-disconnect lock).
    pub conn: ConnId,
    /// How it shares the key.
    pub mode: Mode,
    /// Its fencing token.
    pub token: u64,
    /// Time left before its TTL ends; `None` = no expiry.
    pub ttl_remaining: Option<Duration>,
    /// When it was granted.
    pub since: Instant,
}

/// One queued request, for inspection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaiterInfo {
    /// Its request id, the lock id once granted (the group's, for an acquire-many).
    pub id: Name,
    /// The connection that asked.
    pub conn: ConnId,
    /// How it wants to share the key.
    pub mode: Mode,
    /// When it was queued.
    pub since: Instant,
}

/// One key, for inspection.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyInfo {
    /// The key.
    pub key: Name,
    /// Its semaphore capacity for exclusive holders, fixed while the key is in use.
    pub max: u32,
    /// Current holders, in no particular order.
    pub holders: Vec<HolderInfo>,
    /// Queued requests (the length of `queue`).
    pub waiters: usize,
    /// The waiters, in queue order.
    pub queue: Vec<WaiterInfo>,
    /// Read-mode holders.
    pub readers: usize,
}

/// See [`Table::longest`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Longest {
    /// Keys by the age of their oldest hold, oldest first.
    pub held: Vec<(Name, Duration)>,
    /// Keys by their longest current wait, longest first.
    pub waiting: Vec<(Name, Duration)>,
}

/// The `n` entries with the longest durations, longest first (ties by key, for stable
/// output); linear in `v`'s length plus `n log n`.
fn top(mut v: Vec<(Name, Duration)>, n: usize) -> Vec<(Name, Duration)> {
    let order = |a: &(Name, Duration), b: &(Name, Duration)| b.1.cmp(&a.1).then(a.0.cmp(&b.0));
    if n == 0 {
        return Vec::new();
    }
    if v.len() > n {
        v.select_nth_unstable_by(n - 1, order);
        v.truncate(n);
    }
    v.sort_unstable_by(order);
    v
}

/// Totals, for `system-stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Keys held or waited for now.
    pub keys: usize,
    /// Holds now, across all keys (an acquire-many counts once per key).
    pub holders: usize,
    /// Queued requests now, across all keys.
    pub waiters: usize,
    /// Connections that have made a request and not disconnected, plus disconnected ones kept
    /// for their keep-after-disconnect locks.
    pub connections: usize,
    /// Acquire-many groups, held or still waiting.
    pub groups: usize,
    /// Grants since the table was made.
    pub grants: u64,
    /// Holds ended by their TTL since the table was made.
    pub expiries: u64,
    /// Requests dropped at their wait deadline since the table was made.
    pub wait_timeouts: u64,
    /// How long grants waited.
    pub waits: WaitHistogram,
    /// The token the next grant will carry.
    pub next_token: u64,
}

impl Table {
    /// Keys currently held or waited for.
    pub fn keys(&self) -> impl Iterator<Item = &Name> + '_ {
        self.keys.iter().map(|(_, ks)| &ks.key)
    }

    /// Keys currently held or waited for, with their places, from the place after `after`
    /// on: a listing in pages resumes from the last place it listed. A key that stays held
    /// keeps its place, so a listing in pages names it once.
    pub fn keys_after(&self, after: Option<usize>) -> impl Iterator<Item = (usize, &Name)> + '_ {
        let from = after.map_or(0, |a| a.saturating_add(1));
        (from..self.keys.capacity()).filter_map(|i| self.keys.get(i).map(|ks| (i, &ks.key)))
    }

    /// A snapshot of one key's holders and queue; `None` when nobody holds or waits for it.
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
                    since: h.since,
                })
                .collect(),
            waiters: ks.queue.len(),
            queue: ks
                .queue
                .iter()
                .map(|w| WaiterInfo {
                    id: w.id.clone(),
                    conn: w.conn,
                    mode: w.mode,
                    since: w.since,
                })
                .collect(),
            readers: ks.readers(),
        })
    }

    /// The table still has holds of this connection (open, or closed with locks kept after
    /// disconnect).
    pub fn knows_conn(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    /// Queue length and readers of a key (zeros for an unknown key); what replies report.
    pub fn counts(&self, key: &str) -> (usize, usize) {
        self.index.get(key).map_or((0, 0), |&s| {
            let ks = &self.keys[s as usize];
            (ks.queue.len(), ks.readers())
        })
    }

    /// Current totals and counters since the table was made.
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
            waits: self.waits,
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

    /// What closing `conn` would release: its holds that do not outlive it, as (key, lock id)
    /// (an acquire-many group's id once per key). For the broker's log; costs what `conn`
    /// has, never what other connections have.
    pub fn releasable_holds(&self, conn: ConnId) -> Vec<(Name, Name)> {
        let Some(entry) = self.conns.get(&conn) else {
            return Vec::new();
        };
        let mut slots = entry.slots.clone();
        slots.sort_unstable();
        slots.dedup();
        let kept_group = |id: &Name| self.groups.get(id).is_some_and(|g| g.keep && g.complete());
        let mut out = Vec::new();
        for ks in slots.iter().filter_map(|&s| self.keys.get(s as usize)) {
            for h in &ks.holders {
                let kept = if h.group { kept_group(&h.id) } else { h.keep };
                if h.conn == conn && !kept {
                    out.push((ks.key.clone(), h.id.clone()));
                }
            }
        }
        out
    }

    /// The keys held longest and waited for longest at `now`: each key's oldest hold and
    /// longest current wait, the `n` largest of each, largest first (for the stuck-lock
    /// gauges of `/metrics`; `n` bounds their label sets).
    pub fn longest(&self, now: Instant, n: usize) -> Longest {
        let mut held = Vec::new();
        let mut waiting = Vec::new();
        for (_, ks) in &self.keys {
            let age = |since: Instant| now.saturating_duration_since(since);
            if let Some(d) = ks.holders.iter().map(|h| age(h.since)).max() {
                held.push((ks.key.clone(), d));
            }
            if let Some(d) = ks.queue.iter().map(|w| age(w.since)).max() {
                waiting.push((ks.key.clone(), d));
            }
        }
        Longest {
            held: top(held, n),
            waiting: top(waiting, n),
        }
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
        let queued: usize = self.keys.iter().map(|(_, ks)| ks.queue.len()).sum();
        if queued != self.waiting {
            return Err(format!("{queued} queued, {} counted", self.waiting));
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
}
