//! Connections: what each one holds or waits for, its request limit, and what its death
//! releases. A connection that kept keep-after-disconnect holds lingers as `gone` until the
//! last of them ends.

use std::time::Instant;

use slab::Slab;

use super::queue::KeyState;
use super::{ConnId, Name, Table, TableError};

#[derive(Default, Debug)]
pub(super) struct ConnEntry {
    /// Holds plus queued requests.
    pub(super) requests: usize,
    /// Slots of keys this connection has entries on, possibly with stale ones: a slot is
    /// added when an entry is, and stale ones are swept out once they outnumber the live.
    pub(super) slots: Vec<u32>,
    /// Disconnected, kept only for its keep-after-disconnect holds: forgotten with the last.
    pub(super) gone: bool,
}

impl Table {
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
            self.waiting -= gone_w.len();
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

    pub(super) fn check_conn_capacity(&self, conn: ConnId, n: usize) -> Result<(), TableError> {
        let cap = self.cfg.max_requests_per_conn;
        match self.conns.get(&conn) {
            Some(c) if c.requests + n > cap => Err(TableError::TooManyRequests(cap)),
            None if n > cap => Err(TableError::TooManyRequests(cap)),
            _ => Ok(()),
        }
    }

    pub(super) fn conn_add(&mut self, conn: ConnId, slot: u32) {
        let e = self.conns.entry(conn).or_default();
        e.requests += 1;
        if e.slots.last() != Some(&slot) {
            e.slots.push(slot);
            if e.slots.len() > 2 * e.requests + 16 {
                sweep_slots(&self.keys, &mut e.slots, conn);
            }
        }
    }

    pub(super) fn conn_remove(&mut self, conn: ConnId) {
        if let Some(e) = self.conns.get_mut(&conn) {
            e.requests = e.requests.saturating_sub(1);
            if e.gone && e.requests == 0 {
                self.conns.remove(&conn);
            }
        }
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
