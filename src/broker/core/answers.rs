//! The store's events turned into replies and pushed grants, the same way for every store.
//!
//! Rules kept here, once: a grant for a connection that is gone, or for a request its client
//! gave up, is given back at once, unseen; a grant pushed to a Node client after a "queued"
//! answer is watched for its acknowledgement (`acks.rs`); a lock the store lost (etcd) is told
//! to its client with a pushed error and then its connection is closed, so no client is left
//! believing it holds a lock.

use std::time::Instant;

use smallvec::SmallVec;

use super::identity::wall_ms;
use super::route::{Awaited, Pending};
use super::{Core, Reject, events, listing, ms};
use crate::proto::encode::{
    self, HolderInfo, LockOutcome as WireLock, ManyOutcome as WireMany, WaiterInfo,
};
use crate::proto::{Reply, Who};
use crate::store::{KeyView, Op, Stats, StoreError, StoreEvent, StoreOp};
use crate::table::{ConnId, Grant, Name};

impl Core {
    /// Drains the store's events into replies. The core calls it after every input; the
    /// reactor also calls it when an asynchronous store (etcd) woke it.
    pub(crate) fn poll_store(&mut self, now: Instant) {
        while let Some(ev) = self.store.poll_event() {
            self.answer(now, ev);
        }
    }

    fn answer(&mut self, now: Instant, ev: StoreEvent) {
        match ev {
            StoreEvent::Granted {
                conn,
                id,
                key,
                grant,
            } => self.granted(now, conn, id, key, grant),
            StoreEvent::Queued {
                conn,
                id,
                key,
                queue_len,
                readers,
            } => {
                if let Some(l) = self.route.lock_mut(&key, &id) {
                    l.queued = true;
                }
                self.lock_reply(conn, &id, &key, WireLock::Queued, queue_len, readers);
            }
            StoreEvent::Busy {
                conn,
                id,
                key,
                queue_len,
                readers,
            } => {
                self.route.forget(conn, &key, &id);
                self.counters.reject(Reject::Busy);
                self.lock_reply(conn, &id, &key, WireLock::Refused, queue_len, readers);
            }
            StoreEvent::TimedOut {
                conn,
                id,
                key,
                waited,
            } => {
                let Some(slot) = self.slot_of(conn) else {
                    return;
                };
                match key {
                    Some(key) => {
                        self.route.forget(conn, &key, &id);
                        self.send(
                            slot,
                            &Reply::LockTimedOut {
                                uuid: &id,
                                key: &key,
                                waited_ms: ms(waited),
                            },
                        );
                    }
                    None => {
                        self.route.remove_group(&id);
                        self.send_many(
                            slot,
                            &id,
                            WireMany::TimedOut {
                                waited_ms: ms(waited),
                            },
                        );
                    }
                }
            }
            StoreEvent::Expired { conn, id, key } => {
                events::expired(&self.idents, &key, &id, conn);
                self.forget_any(conn, &key, &id);
                self.acks.forget(&id);
            }
            StoreEvent::Released { conn, id, key, by } => {
                events::forced(&self.idents, &key, &id, conn, by);
                self.forget_any(conn, &key, &id);
                self.acks.forget(&id);
            }
            StoreEvent::Lost {
                conn,
                id,
                key,
                reason,
            } => {
                self.forget_any(conn, &key, &id);
                self.acks.forget(&id);
                if let Some(slot) = self.slot_of(conn) {
                    let msg = format!("lock lost: {reason}");
                    self.send_error(slot, "lock", Some(&id), Some(&key), &msg);
                    self.close_after_flush(slot);
                }
            }
            StoreEvent::Unlocked {
                tag,
                key,
                id,
                queue_len,
                ..
            } => {
                let by = self.route.awaiting(tag).map(|p| p.conn);
                events::unlocked(&self.idents, &key, id.as_deref(), by);
                if let Some(id) = id {
                    self.route.remove_lock(&key, &id);
                    // Released: its ack probe, if any, has nothing left to find.
                    self.acks.forget(&id);
                }
                self.counters.unlocks += 1;
                self.settle(tag, Ok(queue_len), false);
            }
            StoreEvent::Extended { tag } => self.settle(tag, Ok(0), false),
            StoreEvent::ManyGranted { conn, id, tokens } => {
                let Some(slot) = self.slot_of(conn) else {
                    // Its connection is gone: give it back, unseen (tag 0: no answer awaited).
                    let op = StoreOp::ReleaseMany {
                        conn,
                        tag: 0,
                        id: &id,
                    };
                    return self.store.submit(now, op);
                };
                let t: SmallVec<[(&str, u64); 8]> =
                    tokens.iter().map(|(k, v)| (&**k, *v)).collect();
                self.send_many(
                    slot,
                    &id,
                    WireMany::Granted {
                        fencing_tokens: (&t[..]).into(),
                    },
                );
            }
            StoreEvent::ManyQueued { conn, id } => {
                if let Some(slot) = self.slot_of(conn) {
                    self.send_many(slot, &id, WireMany::Queued);
                }
            }
            StoreEvent::ManyBusy { conn, id } => {
                self.route.remove_group(&id);
                if let Some(slot) = self.slot_of(conn) {
                    self.send_many(
                        slot,
                        &id,
                        WireMany::Refused {
                            contended_key: None,
                        },
                    );
                }
            }
            StoreEvent::ManyReleased { tag } => {
                if let Some(Awaited::ReleaseMany(id)) = self.route.awaiting(tag).map(|p| &p.kind) {
                    let id = id.clone();
                    self.route.remove_group(&id);
                }
                // Tag 0: a grant given back unseen, not a client's release.
                if tag != 0 {
                    self.counters.unlocks += 1;
                }
                self.settle(tag, Ok(0), false);
            }
            StoreEvent::Failed {
                conn,
                op,
                tag,
                id,
                key,
                error,
            } => self.failed(conn, op, tag, id, key, &error),
            StoreEvent::Keys { tag, keys } => {
                let Some((slot, p)) = self.awaited(tag) else {
                    return;
                };
                let uuid = p.uuid.as_deref().unwrap_or("");
                match keys {
                    Ok(keys) => {
                        let line = listing::page(uuid, &keys, self.reply_budget);
                        self.send_line(slot, &line);
                    }
                    Err(e) => self.send_error(slot, "ls", Some(uuid), None, &e.to_string()),
                }
            }
            StoreEvent::Info { tag, info } => {
                let Some((slot, p)) = self.awaited(tag) else {
                    return;
                };
                let (Awaited::Info(key), Some(uuid)) = (&p.kind, p.uuid.as_deref()) else {
                    return;
                };
                match info {
                    Ok(info) => self.lock_info(slot, now, uuid, key, info.unwrap_or_default()),
                    Err(e) => {
                        self.send_error(slot, "lock-info", Some(uuid), Some(key), &e.to_string())
                    }
                }
            }
            StoreEvent::Stats { tag, stats } => {
                let Some((slot, p)) = self.awaited(tag) else {
                    return;
                };
                self.stats_reply(slot, now, &p, stats);
            }
            StoreEvent::Counts { tag, queue_len, .. } => self.settle(tag, Ok(queue_len), false),
            StoreEvent::Snapshot { tag, snapshot } => self.send_snapshots(now, tag, snapshot),
        }
    }

    fn granted(&mut self, now: Instant, conn: ConnId, id: Name, key: Name, grant: Grant) {
        let slot = self.slot_of(conn);
        let state = self.route.lock_mut(&key, &id).filter(|l| l.conn == conn);
        let (Some(slot), Some(l)) = (slot, state) else {
            // Its connection is gone, or its client gave it up: give it back, unseen.
            let op = StoreOp::Cancel {
                conn,
                key: &key,
                id: &id,
            };
            return self.store.submit(now, op);
        };
        l.held = true;
        let pushed = l.queued;
        events::granted(&self.idents, &key, &id, conn, grant.token);
        if pushed && self.conn_at(slot).is_some_and(|c| c.node_client) {
            self.acks.pushed(now, conn, &key, &id);
        }
        self.send(
            slot,
            &Reply::Lock {
                uuid: &id,
                key: &key,
                outcome: WireLock::Granted {
                    fencing_token: Some(grant.token),
                },
                lock_request_count: grant.queue_len as u64,
                readers_count: grant.readers as u64,
            },
        );
    }

    fn lock_reply(
        &mut self,
        conn: ConnId,
        id: &str,
        key: &str,
        outcome: WireLock,
        queue_len: usize,
        readers: usize,
    ) {
        if let Some(slot) = self.slot_of(conn) {
            self.send(
                slot,
                &Reply::Lock {
                    uuid: id,
                    key,
                    outcome,
                    lock_request_count: queue_len as u64,
                    readers_count: readers as u64,
                },
            );
        }
    }

    fn failed(
        &mut self,
        conn: ConnId,
        op: Op,
        tag: u64,
        id: Option<Name>,
        key: Option<Name>,
        error: &StoreError,
    ) {
        let rule = error.rule();
        self.counters
            .reject(rule.as_ref().map_or(Reject::Invalid, Reject::from));
        let msg = error.to_string();
        let (id, key) = (id.as_deref(), key.as_deref());
        match op {
            Op::Lock => {
                if let (Some(i), Some(k)) = (id, key) {
                    self.route.forget(conn, k, i);
                }
                if let Some(slot) = self.slot_of(conn) {
                    self.send_error(slot, "lock", id, key, &msg);
                }
            }
            Op::LockMany => {
                if let Some(i) = id {
                    self.route.remove_group(i);
                }
                if let Some(slot) = self.slot_of(conn) {
                    self.send_error(slot, "acquire-many", id, None, &msg);
                }
            }
            Op::Unlock => {
                let lost = rule == Some(crate::table::TableError::NotHeld);
                if lost
                    && let (Some(i), Some(k)) = (id, key)
                    && self.route.lock_of(k, i).is_some_and(|l| l.held)
                {
                    self.route.remove_lock(k, i);
                }
                self.settle(tag, Err(&msg), lost);
            }
            Op::Extend | Op::ReleaseMany => self.settle(tag, Err(&msg), false),
        }
    }

    /// Answers the unlock, extend or release-many awaiting `tag`: done (with the waiters left
    /// on the key, for an unlock), or why not.
    fn settle(&mut self, tag: u64, res: Result<usize, &str>, lost: bool) {
        let Some((slot, p)) = self.awaited(tag) else {
            return;
        };
        let uuid = p.uuid.as_deref().unwrap_or("");
        let (ok, error) = (res.is_ok(), res.err());
        match &p.kind {
            Awaited::Unlock(key) => {
                let lrc = res.unwrap_or(0);
                self.unlock_reply(slot, uuid, key, res.map(|_| ()), lost, lrc);
            }
            Awaited::Extend(key) => {
                let extended = ok;
                self.send(
                    slot,
                    &Reply::Extend {
                        uuid,
                        key,
                        extended,
                        error,
                    },
                );
            }
            Awaited::ReleaseMany(lock_id) => {
                let released = ok;
                self.send(
                    slot,
                    &Reply::ReleaseMany {
                        uuid,
                        lock_id,
                        released,
                        error,
                    },
                );
            }
            _ => {}
        }
    }

    /// Forgets what `id` names on `key`: a lock request of `conn`, else an acquire-many.
    fn forget_any(&mut self, conn: ConnId, key: &str, id: &str) {
        if self.route.forget(conn, key, id).is_none() {
            self.route.remove_group(id);
        }
    }

    /// The reply awaiting `tag`, and its connection's slot (`None` once that closed).
    fn awaited(&mut self, tag: u64) -> Option<(usize, Pending)> {
        let p = self.route.answered(tag)?;
        Some((self.slot_of(p.conn)?, p))
    }

    fn send_many<'a>(&mut self, slot: usize, uuid: &'a str, outcome: WireMany<'a>) {
        self.send(
            slot,
            &Reply::AcquireMany {
                uuid,
                lock_id: uuid,
                outcome,
            },
        );
    }

    fn lock_info(&mut self, slot: usize, now: Instant, uuid: &str, key: &str, info: KeyView) {
        let Some(viewer) = self.conn_at(slot).map(|c| c.id) else {
            return;
        };
        let viewer = self.viewer(viewer);
        let wall = (self.wall_clock)();
        let holders: Vec<HolderInfo<'_>> = info
            .holders
            .iter()
            .map(|h| HolderInfo {
                id: viewer.shown(h.conn, &h.id).into(),
                fencing_token: Some(h.token),
                mode: h.mode,
                ttl_remaining: h.ttl_remaining,
                held_since_ms: h.since.map(|s| wall_ms(wall, now, s)),
                who: h.conn.map(|c| self.idents.who(c)).unwrap_or_default(),
            })
            .collect();
        let waiters: Vec<WaiterInfo<'_>> = info
            .waiters
            .iter()
            .map(|w| WaiterInfo {
                id: viewer.shown(w.conn, &w.id).into(),
                mode: w.mode,
                waiting_since_ms: w.since.map(|s| wall_ms(wall, now, s)),
                who: w.conn.map(|c| self.idents.who(c)).unwrap_or_default(),
            })
            .collect();
        // Within the reply budget (a semaphore can have a million holders, a key ten thousand
        // waiters): as many entries as fit by their size, fewer if escaping made the line
        // longer; `truncated` says so, and the counts stay exact.
        let budget = self.reply_budget;
        let cost = |id: &str, who: &Who<'_>| {
            let len = |s: &Option<std::borrow::Cow<'_, str>>| s.as_deref().map_or(0, str::len);
            id.len() * 2 + len(&who.name) + len(&who.peer) + 160
        };
        let mut room = budget.saturating_sub(key.len() + uuid.len() + 256);
        let mut fits = |c: usize| {
            let ok = c <= room;
            room = room.saturating_sub(c);
            ok
        };
        let mut nh = holders
            .iter()
            .take_while(|h| fits(cost(&h.id, &h.who)))
            .count();
        let mut nw = waiters
            .iter()
            .take_while(|w| fits(cost(&w.id, &w.who)))
            .count();
        let mut line = Vec::with_capacity(256);
        loop {
            let reply = Reply::LockInfo {
                uuid,
                key,
                lock_request_count: info.waiters.len() as u64,
                readers_count: info.readers as u64,
                is_locked: !holders.is_empty(),
                max: Some(info.max.max(1)),
                holders: (&holders[..nh]).into(),
                waiters: (&waiters[..nw]).into(),
                truncated: nh < holders.len() || nw < waiters.len(),
            };
            line.clear();
            reply.encode(&mut line);
            if line.len() <= budget || nh + nw == 0 {
                break;
            }
            (nh, nw) = (nh / 2, nw / 2);
        }
        // Encoded apart: the identities borrow `idents`.
        drop(holders);
        drop(waiters);
        self.send_line(slot, &line);
    }

    fn stats_reply(
        &mut self,
        slot: usize,
        now: Instant,
        p: &Pending,
        stats: Result<Stats, StoreError>,
    ) {
        let uuid = p.uuid.as_deref();
        let s = match stats {
            Ok(s) => s,
            Err(e) => {
                let ty = if matches!(p.kind, Awaited::Inspect(_)) {
                    "inspect"
                } else {
                    "system-stats"
                };
                return self.send_error(slot, ty, uuid, None, &e.to_string());
            }
        };
        match &p.kind {
            Awaited::Inspect(command) => {
                // The spellings 0.2.25's broker accepts; anything else: the number of holders.
                let result = match &**command {
                    "lockcount" | "lock-count" | "lock_count" => s.keys as u64,
                    "clientcount" | "client-count" | "client_count" => self.open as u64,
                    _ => s.holders as u64,
                };
                self.send(slot, &Reply::Inspect { uuid, result });
            }
            _ => {
                let stats = encode::Stats {
                    keys: s.keys as u64,
                    holders: s.holders as u64,
                    waiters: s.waiters as u64,
                    connections: self.open as u64,
                    grants: s.grants,
                    pid: Some(u64::from(self.pid)),
                    uptime_ms: Some(ms(now.saturating_duration_since(self.started))),
                };
                let uuid = uuid.unwrap_or("");
                self.send(slot, &Reply::SystemStats { uuid, stats });
            }
        }
    }
}
