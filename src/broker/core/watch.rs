//! `watch`: a read-only subscription to the broker's state, for the status page and
//! `lmx top`. A watcher gets a snapshot at once and then one per interval: every key with its
//! holders (who, since when, token, TTL left) and queue (who, waiting since when), the
//! connections, and the counters the charts need (grants, and the lock-wait histogram, from
//! which the page computes grants/s and the wait p99 of each interval).
//!
//! Whole snapshots rather than diffs: a watcher that misses one loses nothing, and the cost
//! is bounded by the caps below. A watcher whose previous snapshots are still unsent (a slow
//! reader) skips a tick rather than grow its backlog.
//!
//! The locks come from the store (`StoreOp::Snapshot`), like any answer: an etcd broker shows
//! every broker's locks of the cluster. One snapshot is asked at a time, and every watcher due
//! meanwhile gets that answer: however many watch, the store is read at most once per
//! interval. The totals of the latest answer are also what `/metrics` shows of a store it
//! cannot read without I/O (etcd), so a scrape asks for one when they are a second old.
//!
//! [`Watchers`] keeps the subscriptions, their ticks and the snapshot asked for; [`snapshot`]
//! encodes one snapshot from a [`Scene`], what the core shows of itself.

use std::cell::Cell;
use std::time::{Duration, Instant, SystemTime};

use super::identity::{Identities, Viewer, wall_ms};
use super::ms;
use crate::proto::encode::{Obj, write_list};
use crate::store::{Snapshot, Stats};
use crate::table::{ConnId, WAIT_BUCKETS};

/// Watchers at once, across the broker.
const MAX_WATCHERS: usize = 64;
/// Keys, and connections, listed in one snapshot; the totals are always exact.
pub(super) const MAX_LISTED: usize = 500;
/// How old the latest totals may be before `/metrics` asks the store for fresh ones.
const FRESH: Duration = Duration::from_secs(1);
/// Holders, and waiters, listed per key.
const MAX_PER_KEY: usize = 50;
const DEFAULT_INTERVAL: Duration = Duration::from_millis(1000);
const MIN_INTERVAL: Duration = Duration::from_millis(200);
const MAX_INTERVAL: Duration = Duration::from_secs(60);
/// A watcher with this much output unsent skips its tick.
pub(super) const MAX_BACKLOG: usize = 256 * 1024;

struct Watcher {
    conn: ConnId,
    uuid: Box<str>,
    interval: Duration,
    next: Instant,
}

/// The connections that sent `watch`, and the snapshot asked of the store for them.
#[derive(Default)]
pub(super) struct Watchers {
    list: Vec<Watcher>,
    /// Watchers waiting for the snapshot asked for (connection and uuid), each once.
    waiting: Vec<(ConnId, Box<str>)>,
    /// The tag of the snapshot asked of the store and not answered yet.
    asked: Option<u64>,
    last_tag: u64,
    /// The totals of the latest snapshot, and when it came.
    reading: Option<(Instant, Stats)>,
}

/// A `watch` beyond the broker's limit of watchers.
pub(super) struct TooManyWatchers;

impl Watchers {
    /// `watch` of `conn` at `now`, which gets its first snapshot now: a new subscription, or
    /// new settings (uuid, interval) for its current one.
    pub(super) fn subscribe(
        &mut self,
        conn: ConnId,
        uuid: &str,
        interval_ms: Option<u64>,
        now: Instant,
    ) -> Result<(), TooManyWatchers> {
        let interval = interval_ms
            .map_or(DEFAULT_INTERVAL, Duration::from_millis)
            .clamp(MIN_INTERVAL, MAX_INTERVAL);
        let full = self.list.len() >= MAX_WATCHERS;
        let w = Watcher {
            conn,
            uuid: uuid.into(),
            interval,
            next: now + interval,
        };
        match self.list.iter_mut().find(|w| w.conn == conn) {
            Some(old) => *old = w,
            None if full => return Err(TooManyWatchers),
            None => self.list.push(w),
        }
        Ok(())
    }

    pub(super) fn remove(&mut self, conn: ConnId) {
        if !self.list.is_empty() {
            self.list.retain(|w| w.conn != conn);
            self.waiting.retain(|w| w.0 != conn);
        }
    }

    /// `conn` wants the next snapshot, sent with `uuid`: the tag of a snapshot to ask the
    /// store for, unless one is asked already (the watcher gets that one).
    pub(super) fn want(&mut self, conn: ConnId, uuid: &str) -> Option<u64> {
        match self.waiting.iter_mut().find(|w| w.0 == conn) {
            Some(w) => w.1 = uuid.into(),
            None => self.waiting.push((conn, uuid.into())),
        }
        self.ask()
    }

    /// The tag of a snapshot to ask the store for, unless one is asked already.
    fn ask(&mut self) -> Option<u64> {
        if self.asked.is_some() {
            return None;
        }
        self.last_tag += 1;
        self.asked = Some(self.last_tag);
        self.asked
    }

    /// The totals of the latest snapshot and their age at `now`; the tag of a snapshot to
    /// ask for when they are missing or stale (and none is asked already).
    pub(super) fn reading(&mut self, now: Instant) -> (Option<(Duration, Stats)>, Option<u64>) {
        let reading = self
            .reading
            .as_ref()
            .map(|(at, st)| (now.saturating_duration_since(*at), *st));
        let stale = reading.as_ref().is_none_or(|(age, _)| *age >= FRESH);
        (reading, if stale { self.ask() } else { None })
    }

    /// The store answered snapshot `tag` at `now` (its totals, when it could read them): the
    /// watchers to send it to. `None` for a tag not asked.
    pub(super) fn answered(
        &mut self,
        tag: u64,
        now: Instant,
        stats: Option<&Stats>,
    ) -> Option<Vec<(ConnId, Box<str>)>> {
        if self.asked != Some(tag) {
            return None;
        }
        self.asked = None;
        if let Some(st) = stats {
            self.reading = Some((now, *st));
        }
        Some(std::mem::take(&mut self.waiting))
    }

    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn watching(&self, conn: ConnId) -> bool {
        self.list.iter().any(|w| w.conn == conn)
    }

    /// When the next snapshot is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.list.iter().map(|w| w.next).min()
    }

    /// The watchers whose snapshot is due at `now` (connection and uuid), their next tick set.
    pub(super) fn due(&mut self, now: Instant) -> Vec<(ConnId, Box<str>)> {
        let mut due = Vec::new();
        for w in self.list.iter_mut().filter(|w| w.next <= now) {
            w.next = now + w.interval;
            due.push((w.conn, w.uuid.clone()));
        }
        due
    }
}

/// What a snapshot shows of the core.
pub(super) struct Scene<'a> {
    pub wall: SystemTime,
    /// The store's locks (etcd: every broker's; a holder of another broker has no
    /// connection here, and no grant time or TTL known here).
    pub locks: &'a Snapshot,
    pub connections: usize,
    pub unlocks: u64,
    /// Most bytes the snapshot may take.
    pub budget: usize,
    pub idents: &'a Identities,
    pub watchers: &'a Watchers,
}

/// Encodes one snapshot for `viewer` (one line, without its newline).
pub(super) fn snapshot(s: &Scene<'_>, viewer: Viewer, now: Instant, uuid: &str) -> Vec<u8> {
    let wall = s.wall;
    let stats = &s.locks.stats;
    let who = |c: Option<ConnId>| c.map(|c| s.idents.who(c)).unwrap_or_default();
    let mut out = Vec::with_capacity(1024);
    let mut o = Obj::new(&mut out);
    o.str("type", "watch")
        .str("uuid", uuid)
        .u64("now", wall_ms(wall, now, now));
    o.field("stats");
    {
        let mut st = Obj::new(&mut *o.out);
        st.u64("connections", s.connections as u64)
            .u64("keys", stats.keys as u64)
            .u64("holders", stats.holders as u64)
            .u64("waiters", stats.waiters as u64)
            .u64("grants", stats.grants)
            .u64("unlocks", s.unlocks)
            .u64("expiries", stats.expiries)
            .u64("waitTimeouts", stats.wait_timeouts)
            .field("waitBounds");
        write_list(&mut *st.out, WAIT_BUCKETS.iter(), |o, b| {
            o.extend_from_slice(format!("{b}").as_bytes());
        });
        st.field("waitCounts");
        write_list(&mut *st.out, stats.waits.counts.iter(), |o, c| {
            o.extend_from_slice(itoa::Buffer::new().format(*c).as_bytes());
        });
        st.finish();
    }
    // Within the reply budget: keys while they fit in three quarters of it, connections in
    // the rest; `truncated` (written last) says whether any was left out.
    let (budget, used, cut) = (s.budget, Cell::new(0), Cell::new(false));
    let room = |limit: usize| {
        let ok = used.get() < limit;
        cut.set(cut.get() || !ok);
        ok
    };
    o.field("keys");
    let listed = s.locks.keys.iter().take(MAX_LISTED);
    let listed = listed.take_while(|_| room(budget * 3 / 4));
    write_list(&mut *o.out, listed, |out, (key, i)| {
        let mut k = Obj::new(out);
        k.str("key", key)
            .u64("max", u64::from(i.max))
            .u64("queued", i.waiters.len() as u64)
            .field("holders");
        write_list(&mut *k.out, i.holders.iter().take(MAX_PER_KEY), |out, h| {
            let mut ho = Obj::new(out);
            ho.lock_id("id", viewer.shown(h.conn, &h.id))
                .u64("fencingToken", h.token)
                .str("mode", h.mode.as_str())
                .opt_u64("ttlRemaining", h.ttl_remaining.map(ms))
                .opt_u64("heldSince", h.since.map(|t| wall_ms(wall, now, t)))
                .who(&who(h.conn));
            ho.finish();
        });
        k.field("waiters");
        write_list(&mut *k.out, i.waiters.iter().take(MAX_PER_KEY), |out, w| {
            let mut wo = Obj::new(out);
            wo.lock_id("id", viewer.shown(w.conn, &w.id))
                .str("mode", w.mode.as_str())
                .opt_u64("waitingSince", w.since.map(|t| wall_ms(wall, now, t)))
                .who(&who(w.conn));
            wo.finish();
        });
        k.finish();
        used.set(out.len());
    });
    o.field("conns");
    let conns = s.idents.open_since().take(MAX_LISTED);
    let conns = conns.take_while(|_| room(budget));
    write_list(&mut *o.out, conns, |out, (id, since)| {
        let mut co = Obj::new(out);
        co.u64("id", id.0)
            .u64("since", wall_ms(wall, now, since))
            .bool("watching", s.watchers.watching(id))
            .who(&s.idents.who(id));
        co.finish();
        used.set(out.len());
    });
    let over = stats.keys > MAX_LISTED || s.connections > MAX_LISTED;
    o.bool("truncated", over || cut.get());
    o.finish();
    out
}
