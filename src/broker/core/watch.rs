//! `watch`: a read-only subscription to the broker's state, for the status page and
//! `lmx top`. A watcher gets a snapshot at once and then one per interval: every key with its
//! holders (who, since when, token, TTL left) and queue (who, waiting since when), the
//! connections, and the counters the charts need (grants, and the lock-wait histogram, from
//! which the page computes grants/s and the wait p99 of each interval).
//!
//! Whole snapshots rather than diffs: a watcher that misses one loses nothing, and the cost
//! is bounded by the caps below. A watcher whose previous snapshots are still unsent (a slow
//! reader) skips a tick rather than grow its backlog.

use std::cell::Cell;
use std::time::{Duration, Instant};

use super::identity::wall_ms;
use super::{Core, Reject, ms};
use crate::proto::encode::{Obj, write_list};
use crate::table::{ConnId, Name, WAIT_BUCKETS};

/// Watchers at once, across the broker.
pub(super) const MAX_WATCHERS: usize = 64;
/// Keys, and connections, listed in one snapshot; the totals are always exact.
const MAX_LISTED: usize = 500;
/// Holders, and waiters, listed per key.
const MAX_PER_KEY: usize = 50;
const DEFAULT_INTERVAL: Duration = Duration::from_millis(1000);
const MIN_INTERVAL: Duration = Duration::from_millis(200);
const MAX_INTERVAL: Duration = Duration::from_secs(60);
/// A watcher with this much output unsent skips its tick.
const MAX_BACKLOG: usize = 256 * 1024;

pub(super) struct Watcher {
    conn: ConnId,
    uuid: Box<str>,
    interval: Duration,
    next: Instant,
}

impl Core {
    pub(super) fn watch(
        &mut self,
        slot: usize,
        cid: ConnId,
        now: Instant,
        uuid: &str,
        ms: Option<u64>,
    ) {
        let interval = ms
            .map_or(DEFAULT_INTERVAL, Duration::from_millis)
            .clamp(MIN_INTERVAL, MAX_INTERVAL);
        let full = self.watchers.len() >= MAX_WATCHERS;
        match self.watchers.iter_mut().find(|w| w.conn == cid) {
            Some(w) => {
                w.uuid = uuid.into();
                w.interval = interval;
            }
            None if full => {
                self.reject(Reject::TooManyWatchers);
                return self.send_error(slot, "watch", Some(uuid), None, "too many watchers");
            }
            None => self.watchers.push(Watcher {
                conn: cid,
                uuid: uuid.into(),
                interval,
                next: now,
            }),
        }
        self.snapshot(slot, now, uuid);
        if let Some(w) = self.watchers.iter_mut().find(|w| w.conn == cid) {
            w.next = now + w.interval;
        }
    }

    pub(super) fn unwatch(&mut self, cid: ConnId) {
        if !self.watchers.is_empty() {
            self.watchers.retain(|w| w.conn != cid);
        }
    }

    pub(super) fn next_watch(&self) -> Option<Instant> {
        self.watchers.iter().map(|w| w.next).min()
    }

    /// Sends the snapshots that are due.
    pub(super) fn watch_timers(&mut self, now: Instant) {
        for i in 0..self.watchers.len() {
            let w = &self.watchers[i];
            if w.next > now {
                continue;
            }
            let (conn, uuid) = (w.conn, w.uuid.clone());
            self.watchers[i].next = now + self.watchers[i].interval;
            if self.output(conn).len() > MAX_BACKLOG {
                continue;
            }
            if let Some(slot) = self.slot_of(conn) {
                self.snapshot(slot, now, &uuid);
            }
        }
    }

    /// Encodes one snapshot into the output of the connection at `slot`.
    fn snapshot(&mut self, slot: usize, now: Instant, uuid: &str) {
        let Some(viewer) = self.conn_at(slot).map(|c| c.id) else {
            return;
        };
        let wall = (self.wall_clock)();
        // A distributed store (etcd) has no local table to show: totals stay at zero.
        let table = self.store.table();
        let stats = table.map(|t| t.stats()).unwrap_or_default();
        let keys: Vec<Name> = table
            .map(|t| t.keys().take(MAX_LISTED).cloned().collect())
            .unwrap_or_default();
        let infos: Vec<_> = keys
            .iter()
            .filter_map(|k| table.and_then(|t| t.info(now, k)))
            .collect();
        let mut out = Vec::with_capacity(1024);
        let mut o = Obj::new(&mut out);
        o.str("type", "watch")
            .str("uuid", uuid)
            .u64("now", wall_ms(wall, now, now));
        o.field("stats");
        {
            let mut s = Obj::new(&mut *o.out);
            s.u64("connections", self.open as u64)
                .u64("keys", stats.keys as u64)
                .u64("holders", stats.holders as u64)
                .u64("waiters", stats.waiters as u64)
                .u64("grants", stats.grants)
                .u64("unlocks", self.counters.unlocks)
                .u64("expiries", stats.expiries)
                .u64("waitTimeouts", stats.wait_timeouts)
                .field("waitBounds");
            write_list(&mut *s.out, WAIT_BUCKETS.iter(), |o, b| {
                o.extend_from_slice(format!("{b}").as_bytes());
            });
            s.field("waitCounts");
            write_list(&mut *s.out, stats.waits.counts.iter(), |o, c| {
                o.extend_from_slice(itoa::Buffer::new().format(*c).as_bytes());
            });
            s.finish();
        }
        // Within the reply budget: keys while they fit in three quarters of it, connections in
        // the rest; `truncated` (written last) says whether any was left out.
        let (budget, used, cut) = (self.reply_budget, Cell::new(0), Cell::new(false));
        let room = |limit: usize| {
            let ok = used.get() < limit;
            cut.set(cut.get() || !ok);
            ok
        };
        o.field("keys");
        let listed = infos.iter().take_while(|_| room(budget * 3 / 4));
        write_list(&mut *o.out, listed, |out, i| {
            let mut k = Obj::new(out);
            k.str("key", &i.key)
                .u64("max", u64::from(i.max))
                .u64("queued", i.waiters as u64)
                .field("holders");
            write_list(&mut *k.out, i.holders.iter().take(MAX_PER_KEY), |out, h| {
                let mut ho = Obj::new(out);
                ho.lock_id("id", self.shown_id(viewer, Some(h.conn), &h.id))
                    .u64("fencingToken", h.token)
                    .str("mode", h.mode.as_str())
                    .opt_u64("ttlRemaining", h.ttl_remaining.map(ms))
                    .u64("heldSince", wall_ms(wall, now, h.since))
                    .who(&self.who(h.conn));
                ho.finish();
            });
            k.field("waiters");
            write_list(&mut *k.out, i.queue.iter().take(MAX_PER_KEY), |out, w| {
                let mut wo = Obj::new(out);
                wo.lock_id("id", self.shown_id(viewer, Some(w.conn), &w.id))
                    .str("mode", w.mode.as_str())
                    .u64("waitingSince", wall_ms(wall, now, w.since))
                    .who(&self.who(w.conn));
                wo.finish();
            });
            k.finish();
            used.set(out.len());
        });
        o.field("conns");
        let conns = self.conns.iter().flatten().take(MAX_LISTED);
        let conns = conns.take_while(|_| room(budget));
        write_list(&mut *o.out, conns, |out, c| {
            let mut co = Obj::new(out);
            co.u64("id", c.id.0)
                .u64("since", wall_ms(wall, now, c.opened))
                .bool("watching", self.watchers.iter().any(|w| w.conn == c.id))
                .who(&self.who(c.id));
            co.finish();
            used.set(out.len());
        });
        let over = stats.keys > MAX_LISTED || self.open > MAX_LISTED;
        o.bool("truncated", over || cut.get());
        o.finish();
        self.send_line(slot, &out);
    }
}
