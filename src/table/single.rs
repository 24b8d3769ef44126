//! Single-key operations: lock, unlock, extend, cancel, and the steps every change of a key
//! goes through (grant, release, settle the queue, forget an idle key). Acquire-many groups
//! are built from these same steps (see `groups.rs`).

use std::time::Instant;

use hashbrown::hash_map::RawEntryMut;

use super::queue::{Holder, KeyState, Waiter};
use super::timers::{Timer, TimerKind};
use super::{
    Cancelled, ConnId, Event, Grant, Group, LockOutcome, LockRequest, Name, Table, TableError, Ttl,
    Wait,
};

impl Table {
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
            if !ks.grantable_now(req.mode) && req.wait != Wait::No {
                self.check_waiters()?;
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
        self.waiting += 1;
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
    /// A forced unlock that names an id is refused unless that id holds the key: a stale id
    /// (a lock that expired, was released or forced) must not evict the current holder.
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
            return if force && id.is_none() {
                Ok(0)
            } else {
                Err(TableError::NotHeld)
            };
        };
        let named_holds = |id: &str| {
            let ks = &self.keys[slot as usize];
            ks.holder_of(id, false).is_some() || ks.holder_of(id, true).is_some()
        };
        if force && id.is_none_or(named_holds) {
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

    /// The slot of `key` (whose index hash is `hash`), created if new.
    pub(super) fn slot_or_insert(&mut self, key: &str, hash: u64, max: u32) -> u32 {
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
    pub(super) fn prune(&mut self, slot: u32) {
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

    /// Makes `id` a holder of `slot` now. The caller has checked that it fits.
    pub(super) fn grant(&mut self, now: Instant, slot: u32, w: Waiter) -> Grant {
        let token = self.next_token;
        self.next_token += 1;
        self.grants += 1;
        self.waits.record(now.saturating_duration_since(w.since));
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
            since: now,
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

    pub(super) fn forget_holder(&mut self, h: &Holder) {
        if h.expires.is_some() {
            self.timers.disarm(h.rid);
        }
        self.conn_remove(h.conn);
    }

    pub(super) fn release_holder_at(&mut self, slot: u32, i: usize) {
        let h = self.keys[slot as usize].holders.swap_remove(i);
        self.forget_holder(&h);
    }

    pub(super) fn remove_waiter_at(&mut self, slot: u32, i: usize) {
        if let Some(w) = self.keys[slot as usize].queue.remove(i) {
            self.waiting -= 1;
            if w.deadline.is_some() {
                self.timers.disarm(w.rid);
            }
            self.conn_remove(w.conn);
        }
    }

    /// Grants as many queued requests of `slot` as fit, in order, then forgets the key if it
    /// became idle. Run after every change of a key.
    pub(super) fn settle(&mut self, now: Instant, slot: u32) {
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
            self.waiting -= 1;
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
}
