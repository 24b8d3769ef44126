//! Acquire-many: a group of keys granted all together or not at all. Keys are taken one by
//! one in sorted order (so two groups never wait on each other in a cycle); a group that
//! times out, is cancelled or loses its connection gives back every key it had taken.

use std::time::{Duration, Instant};

use super::queue::Waiter;
use super::timers::{GROUP_SLOT, Timer, TimerKind};
use super::{ConnId, Event, ManyOutcome, ManyRequest, Mode, Name, Table, TableError, Wait};

/// An acquire-many in progress or held. Keys are taken one by one in sorted order, so two
/// groups can never wait on each other in a cycle.
#[derive(Debug)]
pub(super) struct Group {
    pub(super) rid: u64,
    pub(super) conn: ConnId,
    pub(super) keys: Vec<Name>,
    pub(super) tokens: Vec<u64>,
    pub(super) ttl: Option<Duration>,
    pub(super) deadline: Option<Instant>,
    pub(super) since: Instant,
    pub(super) keep: bool,
}

impl Group {
    pub(super) fn complete(&self) -> bool {
        self.tokens.len() == self.keys.len()
    }
}

impl Table {
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
            self.check_waiters()?;
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

    pub(super) fn run_advances(&mut self, now: Instant) {
        while let Some(id) = self.advance.pop() {
            self.advance_group(now, &id, true);
        }
    }

    /// Takes the group's next keys while they are free, queueing on the first that is not.
    pub(super) fn advance_group(&mut self, now: Instant, id: &Name, notify: bool) {
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
                self.waiting += 1;
                self.keys[slot as usize].queue.push_back(w);
                self.conn_add(conn, slot);
                return;
            }
        }
    }

    /// Removes a group and every hold and queue entry it has; settles the keys it touched.
    pub(super) fn drop_group(&mut self, now: Instant, id: &str) {
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
}
