//! Requests that read or change lock state, turned into [`StoreOp`]s for the store, whichever
//! it is (the in-memory table or etcd). What the store answers is turned into replies in
//! `answers.rs`.
//!
//! What the core keeps here is bookkeeping for answers, never a lock decision: which lock
//! requests are waiting or held (so a Node client's retry is not granted twice, a grant its
//! client gave up on is given back, and a pushed grant is told from an immediate one), and
//! which replies await the store's answer (by tag).

use std::time::Instant;

use ahash::RandomState;
use hashbrown::HashMap;

use super::acks::PROBE_PREFIX;
use super::{Core, Reject, table_mode, ttl_of, wait_of};
use crate::proto::encode::LockOutcome as WireLock;
use crate::proto::{self, Reply};
use crate::store::StoreOp;
use crate::table::{self, ConnId, ManyRequest, Name, TableError};

/// The core's bookkeeping of requests the store is working on (`Core::route`).
#[derive(Default)]
pub(super) struct Route {
    /// Lock requests not yet ended, by (key, lock id): unique in every store.
    pub locks: HashMap<(Name, Name), LockState, RandomState>,
    /// Replies awaiting the store's answer, by tag.
    pub pending: HashMap<u64, Pending, RandomState>,
    next_tag: u64,
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
    Ls,
    Info(Name),
    Stats,
    Inspect(Name),
}

impl Route {
    /// A tag for a reply that awaits the store; 0 is never one (an answer nobody awaits).
    pub(super) fn expect(&mut self, conn: ConnId, uuid: Option<&str>, kind: Awaited) -> u64 {
        self.next_tag += 1;
        let tag = self.next_tag;
        let uuid = uuid.map(Name::from);
        self.pending.insert(tag, Pending { conn, uuid, kind });
        tag
    }

    /// Forgets request (`key`, `id`) of `conn`; true when it was held.
    pub(super) fn forget(&mut self, conn: ConnId, key: &str, id: &str) -> bool {
        match self.locks.get(&(Name::from(key), Name::from(id))) {
            Some(l) if l.conn == conn => {
                let held = l.held;
                self.locks.remove(&(Name::from(key), Name::from(id)));
                held
            }
            _ => false,
        }
    }

    /// Forgets everything of a closed connection.
    pub(super) fn disconnect(&mut self, conn: ConnId) {
        self.locks.retain(|_, l| l.conn != conn);
        self.pending.retain(|_, p| p.conn != conn);
    }
}

impl Core {
    pub(super) fn lock(
        &mut self,
        slot: usize,
        cid: ConnId,
        now: Instant,
        r: &proto::LockRequest<'_>,
    ) {
        let k = (Name::from(r.key), Name::from(r.uuid));
        // A Node client re-sends a lock (same uuid) when its own timer fires. A waiting one is
        // asked again (the store reports its place); a granted one's grant is already on its
        // way, and a second `acquired:true` would reach a request the client has settled and
        // make it release the lock.
        let retry = match self.route.locks.get(&k) {
            None => false,
            Some(l) if l.conn != cid => {
                let e = TableError::DuplicateId;
                self.reject(Reject::from(&e));
                let msg = e.to_string();
                return self.send_error(slot, "lock", Some(r.uuid), Some(r.key), &msg);
            }
            Some(l) if l.held => {
                return self.send(
                    slot,
                    &Reply::Lock {
                        uuid: r.uuid,
                        key: r.key,
                        outcome: WireLock::Queued,
                        lock_request_count: 0,
                        readers_count: 0,
                    },
                );
            }
            Some(_) => true,
        };
        let keep_default = self.conn_at(slot).is_some_and(|c| c.keep_default);
        let req = table::LockRequest {
            conn: cid,
            key: r.key,
            id: r.uuid,
            mode: table_mode(r.mode),
            max: r.max,
            ttl: ttl_of(r.ttl),
            wait: wait_of(now, r.try_lock, r.wait_timeout),
            // The Node client puts its constructor option on `version` only (see `keep_default`).
            keep_after_disconnect: r.keep_locks_after_death || keep_default,
        };
        if !retry {
            self.route.locks.insert(
                k,
                LockState {
                    conn: cid,
                    held: false,
                    queued: false,
                },
            );
            if let Some(c) = self.conn_at(slot) {
                c.requests += 1;
            }
        }
        self.store.submit(now, StoreOp::Lock(req));
    }

    /// `lock-received`: the Node client took a pushed grant.
    pub(super) fn lock_received(&mut self, cid: ConnId, uuid: &str) {
        if self.acks.get(uuid).is_some_and(|a| a.conn == cid) {
            self.acks.remove(uuid);
        }
    }

    /// `lock-received-rejected` (and `lock-client-timeout`): the client gives a grant back, or
    /// answers an ack probe.
    pub(super) fn cancel(&mut self, now: Instant, cid: ConnId, uuid: &str, key: &str) {
        match uuid.strip_prefix(PROBE_PREFIX) {
            Some(id) => self.probe_answered(now, cid, id),
            None => {
                self.acks.remove(uuid);
                self.give_back(now, cid, key, uuid);
            }
        }
    }

    /// Ends request (`key`, `id`) of `conn` without an answer: a waiter leaves the queue, a
    /// holder is released. True when it was held.
    pub(super) fn give_back(&mut self, now: Instant, conn: ConnId, key: &str, id: &str) -> bool {
        let held = self.route.forget(conn, key, id);
        self.store.submit(now, StoreOp::Cancel { conn, key, id });
        held
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn unlock(
        &mut self,
        slot: usize,
        cid: ConnId,
        now: Instant,
        uuid: &str,
        key: &str,
        lock_id: Option<&str>,
        force: bool,
    ) {
        if let Some(id) = lock_id
            && !self.acks.is_empty()
        {
            self.acks.remove(id);
        }
        let admin = self.conn_at(slot).is_some_and(|c| c.admin);
        if force && !admin {
            self.reject(Reject::Forbidden);
            return self.unlock_reply(
                slot,
                uuid,
                key,
                Err("force unlock is an admin act: use the Unix socket or authenticate"),
                false,
                0,
            );
        }
        // Set aside by the 0.2.x read/write emulation: already released in the table.
        if let Some(id) = lock_id.filter(|id| self.parked.get(*id) == Some(&cid)) {
            self.parked.remove(id);
            self.route.forget(cid, key, id);
            self.counters.unlocks += 1;
            let lrc = self.store.table().map_or(0, |t| t.counts(key).0);
            return self.unlock_reply(slot, uuid, key, Ok(()), false, lrc);
        }
        let tag = self
            .route
            .expect(cid, Some(uuid), Awaited::Unlock(key.into()));
        self.store.submit(
            now,
            StoreOp::Unlock {
                conn: cid,
                tag,
                key,
                id: lock_id,
                force,
            },
        );
    }

    pub(super) fn unlock_reply(
        &mut self,
        slot: usize,
        uuid: &str,
        key: &str,
        res: Result<(), &str>,
        lost: bool,
        lrc: usize,
    ) {
        self.send(
            slot,
            &Reply::Unlock {
                uuid,
                key,
                unlocked: res.is_ok(),
                lock_request_count: lrc as u64,
                lost,
                error: res.err(),
                warning: None,
            },
        );
    }

    pub(super) fn extend(
        &mut self,
        cid: ConnId,
        now: Instant,
        uuid: &str,
        key: &str,
        lock_id: &str,
        ttl: proto::Ttl,
    ) {
        let tag = self
            .route
            .expect(cid, Some(uuid), Awaited::Extend(key.into()));
        self.store.submit(
            now,
            StoreOp::Extend {
                conn: cid,
                tag,
                key,
                id: lock_id,
                ttl: ttl_of(ttl),
            },
        );
    }

    pub(super) fn acquire_many(
        &mut self,
        slot: usize,
        cid: ConnId,
        now: Instant,
        r: &proto::AcquireMany<'_>,
    ) {
        let keep_default = self.conn_at(slot).is_some_and(|c| c.keep_default);
        let req = ManyRequest {
            conn: cid,
            keys: &r.keys,
            id: r.uuid,
            ttl: ttl_of(r.ttl),
            wait: wait_of(now, r.try_lock, r.wait_timeout),
            keep_after_disconnect: r.keep_locks_after_death || keep_default,
        };
        self.store.submit(now, StoreOp::LockMany(req));
    }

    pub(super) fn release_many(&mut self, cid: ConnId, now: Instant, uuid: &str, lock_id: &str) {
        let tag = self
            .route
            .expect(cid, Some(uuid), Awaited::ReleaseMany(lock_id.into()));
        self.store.submit(
            now,
            StoreOp::ReleaseMany {
                conn: cid,
                tag,
                id: lock_id,
            },
        );
    }

    /// `ls`, `lock-info`, `system-stats`, `inspect`: asked of the store (for etcd, of every
    /// broker's requests).
    pub(super) fn ask(&mut self, cid: ConnId, now: Instant, uuid: Option<&str>, kind: Awaited) {
        let key = match &kind {
            Awaited::Info(k) => Some(k.clone()),
            _ => None,
        };
        let stats = matches!(kind, Awaited::Stats | Awaited::Inspect(_));
        let tag = self.route.expect(cid, uuid, kind);
        let op = match &key {
            Some(k) => StoreOp::Info { tag, key: k },
            None if stats => StoreOp::Stats { tag },
            None => StoreOp::Keys { tag },
        };
        self.store.submit(now, op);
    }
}
