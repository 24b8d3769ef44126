//! The core's bookkeeping of the requests a store is working on ([`Route`]): what
//! `requests.rs` turns into store ops and `answers.rs` answers, never a lock decision. Which
//! lock requests are waiting or held (so a Node client's retry is not granted twice, a grant
//! its client gave up on is given back, and a pushed grant is told from an immediate one), and
//! which replies await the store's answer (by tag).

use ahash::RandomState;
use hashbrown::HashMap;

use crate::table::{ConnId, Name};

/// The core's bookkeeping of requests the store is working on (`Core::route`).
#[derive(Default)]
pub(super) struct Route {
    /// Lock requests not yet ended, by (key, lock id): unique in every store.
    locks: HashMap<(Name, Name), LockState, RandomState>,
    /// Acquire-many groups not yet ended (counted only), by lock id.
    groups: HashMap<Name, ConnId, RandomState>,
    /// What each connection has in `locks` and `groups`, so that its close forgets them
    /// without looking at anyone else's.
    by_conn: HashMap<ConnId, Owned, RandomState>,
    /// Replies awaiting the store's answer, by tag.
    pending: HashMap<u64, Pending, RandomState>,
    /// Per connection, when the store answers later (etcd): what it has in the store and
    /// awaits from it. The table bounds its own; a store on another thread would take
    /// whatever a client pipelines, so the core bounds it (`Config::table`'s
    /// `max_requests_per_conn`).
    load: Option<HashMap<ConnId, Load, RandomState>>,
    next_tag: u64,
    /// Entries a close looked at (for the tests of its cost).
    #[cfg(test)]
    visits: usize,
}

/// What one connection has in a store that answers later.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Load {
    /// Lock requests and acquire-many groups, waiting or held.
    pub requests: usize,
    /// Ops not yet answered.
    pub unanswered: usize,
}

/// The entries of one connection in `Route::locks` and `Route::groups`. Ended entries are
/// not looked for when they end: they stay listed, stale, until they outnumber the live ones
/// and are swept out (amortised O(1) per request).
#[derive(Default)]
struct Owned {
    locks: Vec<(Name, Name)>,
    groups: Vec<Name>,
    /// Entries still live in `locks` and `groups`.
    live: usize,
}

impl Owned {
    fn stale(&self) -> bool {
        self.locks.len() + self.groups.len() > 2 * self.live + 16
    }
}

pub(super) struct LockState {
    pub conn: ConnId,
    pub held: bool,
    /// Answered "queued": a later grant is pushed (a Node client acknowledges those).
    pub queued: bool,
}

/// A reply awaiting the store's answer.
pub(super) struct Pending {
    pub conn: ConnId,
    /// The request's uuid, for the reply.
    pub uuid: Option<Name>,
    pub kind: Awaited,
}

pub(super) enum Awaited {
    Unlock(Name),
    Extend(Name),
    ReleaseMany(Name),
    /// A page of `ls`.
    Ls,
    Info(Name),
    Stats,
    Inspect(Name),
}

impl Route {
    /// Counts each connection's load (for a store that answers later).
    #[cfg_attr(not(any(feature = "etcd", test)), allow(dead_code))]
    pub(super) fn count_load(&mut self) {
        self.load = Some(HashMap::default());
    }

    pub(super) fn load(&self, conn: ConnId) -> Load {
        self.load
            .as_ref()
            .and_then(|l| l.get(&conn).copied())
            .unwrap_or_default()
    }

    fn add_load(&mut self, conn: ConnId, f: impl FnOnce(&mut Load)) {
        if let Some(l) = self.load.as_mut() {
            let e = l.entry(conn).or_default();
            f(e);
            if e.requests == 0 && e.unanswered == 0 {
                l.remove(&conn);
            }
        }
    }

    /// A tag for a reply that awaits the store; 0 is never one (an answer nobody awaits).
    pub(super) fn expect(&mut self, conn: ConnId, uuid: Option<&str>, kind: Awaited) -> u64 {
        self.next_tag += 1;
        let tag = self.next_tag;
        let uuid = uuid.map(Name::from);
        self.pending.insert(tag, Pending { conn, uuid, kind });
        self.add_load(conn, |l| l.unanswered += 1);
        tag
    }

    pub(super) fn awaiting(&self, tag: u64) -> Option<&Pending> {
        self.pending.get(&tag)
    }

    /// The reply awaiting `tag`, now answered.
    pub(super) fn answered(&mut self, tag: u64) -> Option<Pending> {
        let p = self.pending.remove(&tag)?;
        self.add_load(p.conn, |l| l.unanswered = l.unanswered.saturating_sub(1));
        Some(p)
    }

    pub(super) fn lock_mut(&mut self, key: &Name, id: &Name) -> Option<&mut LockState> {
        self.locks.get_mut(&(key.clone(), id.clone()))
    }

    pub(super) fn lock_of(&self, key: &str, id: &str) -> Option<&LockState> {
        self.locks.get(&(Name::from(key), Name::from(id)))
    }

    pub(super) fn add_lock(&mut self, key: &str, id: &str, conn: ConnId) {
        let state = LockState {
            conn,
            held: false,
            queued: false,
        };
        let entry = (Name::from(key), Name::from(id));
        self.locks.insert(entry.clone(), state);
        self.add_load(conn, |l| l.requests += 1);
        let o = self.by_conn.entry(conn).or_default();
        o.locks.push(entry);
        o.live += 1;
        if o.stale() {
            let locks = &self.locks;
            o.locks
                .retain(|e| locks.get(e).is_some_and(|l| l.conn == conn));
        }
    }

    /// Forgets lock request (`key`, `id`), whoever made it.
    pub(super) fn remove_lock(&mut self, key: &str, id: &str) -> Option<LockState> {
        let l = self.locks.remove(&(Name::from(key), Name::from(id)))?;
        self.add_load(l.conn, |n| n.requests = n.requests.saturating_sub(1));
        self.ended(l.conn);
        Some(l)
    }

    /// One entry of `conn` ended.
    fn ended(&mut self, conn: ConnId) {
        if let Some(o) = self.by_conn.get_mut(&conn) {
            o.live = o.live.saturating_sub(1);
            if o.live == 0 {
                self.by_conn.remove(&conn);
            }
        }
    }

    /// The lock id of a hold of `conn` on `key`, if it has one; costs what `conn` has.
    pub(super) fn held_by(&self, conn: ConnId, key: &str) -> Option<Name> {
        let o = self.by_conn.get(&conn)?;
        o.locks
            .iter()
            .filter(|e| &*e.0 == key)
            .find(|e| self.locks.get(*e).is_some_and(|l| l.conn == conn && l.held))
            .map(|e| e.1.clone())
    }

    /// Forgets request (`key`, `id`) of `conn`; `Some(held)` when there was one.
    pub(super) fn forget(&mut self, conn: ConnId, key: &str, id: &str) -> Option<bool> {
        if self.lock_of(key, id)?.conn != conn {
            return None;
        }
        self.remove_lock(key, id).map(|l| l.held)
    }

    pub(super) fn add_group(&mut self, id: &str, conn: ConnId) {
        if self.load.is_some() && self.groups.insert(id.into(), conn).is_none() {
            self.add_load(conn, |l| l.requests += 1);
            let o = self.by_conn.entry(conn).or_default();
            o.groups.push(id.into());
            o.live += 1;
            if o.stale() {
                let groups = &self.groups;
                o.groups.retain(|g| groups.get(g) == Some(&conn));
            }
        }
    }

    pub(super) fn remove_group(&mut self, id: &str) {
        if let Some(conn) = self.groups.remove(id) {
            self.add_load(conn, |l| l.requests = l.requests.saturating_sub(1));
            self.ended(conn);
        }
    }

    /// Forgets everything of a closed connection, at a cost of what it has (never a scan of
    /// the other connections' requests); returns the lock ids it forgot. Replies still
    /// awaited for it stay in `pending` until the store answers, and are then dropped.
    pub(super) fn disconnect(&mut self, conn: ConnId) -> Vec<Name> {
        let Some(o) = self.by_conn.remove(&conn) else {
            return Vec::new();
        };
        #[cfg(test)]
        {
            self.visits += o.locks.len() + o.groups.len();
        }
        let mut ids = Vec::with_capacity(o.live);
        for e in o.locks {
            if self.locks.get(&e).is_some_and(|l| l.conn == conn) {
                self.locks.remove(&e);
                ids.push(e.1);
            }
        }
        for g in o.groups {
            if self.groups.get(&g) == Some(&conn) {
                self.groups.remove(&g);
            }
        }
        if let Some(l) = self.load.as_mut() {
            l.remove(&conn);
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 20, item 4: a close looks at what the closing connection has, not at everyone's.
    #[test]
    fn a_close_looks_only_at_the_closing_connections_requests() {
        let mut r = Route::default();
        r.count_load();
        for i in 0..10_000 {
            r.add_lock(&format!("k{i}"), &format!("a{i}"), ConnId(1));
        }
        r.add_group("g", ConnId(1));
        r.add_lock("mine", "b", ConnId(2));
        r.visits = 0;
        assert_eq!(r.disconnect(ConnId(2)), vec![Name::from("b")]);
        assert!(
            r.visits <= 1,
            "closing one lock's connection looked at {} entries",
            r.visits
        );
        assert!(r.lock_of("k0", "a0").is_some() && r.lock_of("mine", "b").is_none());
        assert_eq!(r.load(ConnId(1)).requests, 10_001);
        assert_eq!(r.disconnect(ConnId(1)).len(), 10_000);
        assert!(r.locks.is_empty() && r.groups.is_empty() && r.by_conn.is_empty());
    }

    /// A long-lived connection's index stays about the size of what it has now.
    #[test]
    fn a_connections_index_of_ended_requests_is_swept() {
        let mut r = Route::default();
        r.add_lock("held", "h", ConnId(1));
        for i in 0..100_000 {
            let id = format!("c{i}");
            r.add_lock("k", &id, ConnId(1));
            r.remove_lock("k", &id);
        }
        let o = &r.by_conn[&ConnId(1)];
        assert!(
            o.locks.len() <= 2 * o.live + 17,
            "{} listed for {}",
            o.locks.len(),
            o.live
        );
        assert_eq!(r.disconnect(ConnId(1)), vec![Name::from("h")]);
    }
}
