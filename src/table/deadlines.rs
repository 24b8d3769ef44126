//! Deadlines: wait time-outs and TTL expiries. The owner asks [`Table::poll_timeout`] for the
//! next one and calls [`Table::handle_timeout`] when it passes; every public operation also
//! fires what is due first, so the outcome never depends on how late the caller is.

use std::time::Instant;

use ahash::RandomState;
use hashbrown::HashMap;
use slab::Slab;

use super::groups::Group;
use super::queue::KeyState;
use super::timers::{GROUP_SLOT, Timer, TimerKind};
use super::{Event, Name, Table};

impl Table {
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

    pub(super) fn timer_live(&self, t: &Timer) -> bool {
        timer_live(&self.keys, &self.groups, &self.group_rids, t)
    }
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
