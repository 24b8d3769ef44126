//! Each request of a connection, handled: the lock path turned into [`StoreOp`]s for the
//! store, whichever it is (the in-memory table or etcd), with the bookkeeping of [`Route`]
//! (`route.rs`); what the store answers is turned into replies in `answers.rs`. The rest is
//! answered here: `version`, `auth`, `ping`, `hello`, the `watch` subscriptions, and the
//! 0.2.x read/write protocol (its counts kept by the core, its parked holds given back to the
//! store as cancels).
//!
//! [`Route`]: super::route::Route

use std::time::{Instant, UNIX_EPOCH};

use super::acks::PROBE_PREFIX;
use super::legacy_rw::{RwAnswer, Woken};
use super::route::Awaited;
use super::{Core, Event, Reject, constant_time_eq, events, ms, ttl_of, wait_of};
use crate::proto::encode::LockOutcome as WireLock;
use crate::proto::{self, Reply, Request, RwOp};
use crate::store::StoreOp;
use crate::table::{self, ConnId, ManyRequest, TableError};

impl Core {
    /// Handles one request of the connection at `slot`.
    pub(super) fn handle(&mut self, slot: usize, cid: ConnId, now: Instant, req: Request<'_>) {
        let Some(c) = self.conn_at(slot) else {
            return;
        };
        if !c.authed {
            return self.unauthenticated(slot, req);
        }
        match req {
            Request::Version {
                value,
                keep_locks_after_death,
                pid,
            } => {
                c.node_client = true;
                c.keep_default = keep_locks_after_death;
                self.idents.introduce(cid, None, pid);
                if !proto::is_compatible_version(value) {
                    self.send(
                        slot,
                        &Reply::VersionMismatch {
                            client_version: value,
                        },
                    );
                    self.close_after_flush(slot);
                }
            }
            Request::VersionMismatchConfirmed => {
                c.closing = true;
                self.events.push_back(Event::Close(cid));
            }
            Request::Lock(r) => self.lock(slot, cid, now, &r),
            Request::LockReceived { uuid, .. } => self.lock_received(cid, uuid),
            Request::Cancel { uuid, key, .. } => self.cancel(now, cid, uuid, key),
            Request::Unlock {
                uuid,
                key,
                lock_id,
                force,
            } => self.unlock(slot, cid, now, uuid, key, lock_id, force),
            Request::Extend {
                uuid,
                key,
                lock_id,
                ttl,
            } => self.extend(slot, cid, now, uuid, key, lock_id, ttl),
            Request::AcquireMany(r) => self.acquire_many(slot, cid, now, &r),
            Request::ReleaseMany { uuid, lock_id } => {
                self.release_many(slot, cid, now, uuid, lock_id)
            }
            Request::Ls { uuid, after } => self.ls(slot, cid, now, uuid, after),
            Request::LockInfo { uuid, key } => {
                let kind = Awaited::Info(key.into());
                self.ask(slot, cid, now, Some(uuid), kind)
            }
            Request::Ping { uuid } => self.ping(slot, uuid),
            Request::SystemStats { uuid } => self.ask(slot, cid, now, Some(uuid), Awaited::Stats),
            Request::Auth { uuid, .. } => {
                self.send(
                    slot,
                    &Reply::Auth {
                        uuid,
                        authenticated: true,
                        error: None,
                    },
                );
            }
            Request::Rw { op, uuid, key } => self.rw(slot, cid, now, op, uuid, key),
            Request::Inspect { uuid, command } => {
                self.ask(slot, cid, now, uuid, Awaited::Inspect(command.into()))
            }
            Request::Hello { name, pid } => self.idents.introduce(cid, Some(name), pid),
            Request::Watch { uuid, interval_ms } => self.watch(slot, cid, now, uuid, interval_ms),
        }
        self.poll_store(now);
    }

    fn ping(&mut self, slot: usize, uuid: &str) {
        let ts = (self.wall_clock)().duration_since(UNIX_EPOCH).map_or(0, ms);
        self.send(
            slot,
            &Reply::Pong {
                uuid,
                server_timestamp_ms: ts,
                version: Some(crate::VERSION),
            },
        );
    }

    /// Before the auth token: only `auth` is answered; anything else, or a wrong token, closes
    /// the connection once the answer is out.
    fn unauthenticated(&mut self, slot: usize, req: Request<'_>) {
        if let Request::Auth { uuid, token } = req {
            let ok = self
                .auth_token
                .as_deref()
                .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
            self.send(
                slot,
                &Reply::Auth {
                    uuid,
                    authenticated: ok,
                    error: (!ok).then_some("wrong auth token"),
                },
            );
            match self.conn_at(slot) {
                Some(c) if ok => {
                    c.authed = true;
                    c.admin = true;
                }
                _ => {
                    self.counters.reject(Reject::Unauthenticated);
                    self.close_after_flush(slot);
                }
            }
        } else {
            self.counters.reject(Reject::Unauthenticated);
            self.send_error(slot, req.ty(), req.uuid(), None, "authenticate first");
            self.close_after_flush(slot);
        }
    }

    /// `broadcast-result` to each deferred read/write request that may now proceed.
    pub(super) fn broadcast(&mut self, woken: Vec<Woken>) {
        for (conn, uuid, key) in woken {
            if let Some(slot) = self.slot_of(conn) {
                self.send(
                    slot,
                    &Reply::BroadcastResult {
                        uuid: &uuid,
                        key: &key,
                    },
                );
            }
        }
    }

    fn lock(&mut self, slot: usize, cid: ConnId, now: Instant, r: &proto::LockRequest<'_>) {
        // A Node client re-sends a lock (same uuid) when its own timer fires. A waiting one is
        // asked again (the store reports its place); a granted one's grant is already on its
        // way, and a second `acquired:true` would reach a request the client has settled and
        // make it release the lock.
        let retry = match self.route.lock_of(r.key, r.uuid) {
            None => false,
            Some(l) if l.conn != cid => {
                let e = TableError::DuplicateId;
                self.counters.reject(Reject::from(&e));
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
            mode: r.mode,
            max: r.max,
            ttl: ttl_of(r.ttl),
            wait: wait_of(now, r.try_lock, r.wait_timeout),
            // The Node client puts its constructor option on `version` only (see `keep_default`).
            keep_after_disconnect: r.keep_locks_after_death || keep_default,
        };
        if !retry {
            if let Err(e) = self.room(cid, true) {
                return self.send_error(slot, "lock", Some(r.uuid), Some(r.key), &e);
            }
            self.route.add_lock(r.key, r.uuid, cid);
            if let Some(c) = self.conn_at(slot) {
                c.requests += 1;
            }
        }
        self.store.submit(now, StoreOp::Lock(req));
    }

    /// `lock-received`: the Node client took a pushed grant.
    fn lock_received(&mut self, cid: ConnId, uuid: &str) {
        self.acks.settle(cid, uuid);
    }

    /// `lock-received-rejected` (and `lock-client-timeout`): the client gives a grant back, or
    /// answers an ack probe (see `Core::send_probe`). A probe of grant `id` answered while the
    /// grant is still unacknowledged means the client read it and dropped it: it is released.
    fn cancel(&mut self, now: Instant, cid: ConnId, uuid: &str, key: &str) {
        match uuid.strip_prefix(PROBE_PREFIX) {
            // Acknowledged meanwhile, or not this connection's: nothing to do.
            Some(id) => {
                if let Some(key) = self.acks.settle(cid, id)
                    && self.give_back(now, cid, &key, id)
                {
                    tracing::warn!(
                        "grant {id} of key {key:?}: the client read it and did not take it: \
                         released"
                    );
                }
            }
            None => {
                self.acks.forget(uuid);
                self.give_back(now, cid, key, uuid);
            }
        }
    }

    /// Ends request (`key`, `id`) of `conn` without an answer: a waiter leaves the queue, a
    /// holder is released. True when it was held.
    pub(super) fn give_back(&mut self, now: Instant, conn: ConnId, key: &str, id: &str) -> bool {
        let held = self.route.forget(conn, key, id) == Some(true);
        self.store.submit(now, StoreOp::Cancel { conn, key, id });
        held
    }

    #[allow(clippy::too_many_arguments)]
    fn unlock(
        &mut self,
        slot: usize,
        cid: ConnId,
        now: Instant,
        uuid: &str,
        key: &str,
        lock_id: Option<&str>,
        force: bool,
    ) {
        // A pending ack probe of `lock_id` is settled by the store's answer (`Unlocked`), not
        // here: an unlock that fails (another key, a refused force, a stranger's guess) must
        // leave the probe that finds a ghost grant in place.
        let admin = self.conn_at(slot).is_some_and(|c| c.admin);
        if force && !admin {
            self.counters.reject(Reject::Forbidden);
            events::admin_refused(&self.idents, cid, "force unlock", key);
            return self.unlock_reply(
                slot,
                uuid,
                key,
                Err("force unlock is an admin act: use the Unix socket or authenticate"),
                false,
                0,
            );
        }
        if let Err(e) = self.room(cid, false) {
            return self.unlock_reply(slot, uuid, key, Err(&e), false, 0);
        }
        let tag = self
            .route
            .expect(cid, Some(uuid), Awaited::Unlock(key.into()));
        // Set aside by the 0.2.x read/write emulation: already released in the store, which
        // is asked only for the key's counts the reply reports.
        if let Some(id) = lock_id
            && self.rw.unpark(cid, id)
        {
            self.route.forget(cid, key, id);
            self.counters.unlocks += 1;
            return self.store.submit(now, StoreOp::Counts { tag, key });
        }
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

    #[allow(clippy::too_many_arguments)]
    fn extend(
        &mut self,
        slot: usize,
        cid: ConnId,
        now: Instant,
        uuid: &str,
        key: &str,
        lock_id: &str,
        ttl: proto::Ttl,
    ) {
        if let Err(e) = self.room(cid, false) {
            return self.send_error(slot, "extend", Some(uuid), Some(key), &e);
        }
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

    fn acquire_many(&mut self, slot: usize, cid: ConnId, now: Instant, r: &proto::AcquireMany<'_>) {
        if let Err(e) = self.room(cid, true) {
            return self.send_error(slot, "acquire-many", Some(r.uuid), None, &e);
        }
        self.route.add_group(r.uuid, cid);
        let keep_default = match self.conn_at(slot) {
            Some(c) => {
                c.requests += 1;
                c.keep_default
            }
            None => false,
        };
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

    fn release_many(&mut self, slot: usize, cid: ConnId, now: Instant, uuid: &str, lock_id: &str) {
        if let Err(e) = self.room(cid, false) {
            return self.send_error(slot, "release-many", Some(uuid), None, &e);
        }
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

    /// `lock-info`, `system-stats`, `inspect`: asked of the store (for etcd, of every
    /// broker's requests).
    fn ask(&mut self, slot: usize, cid: ConnId, now: Instant, uuid: Option<&str>, kind: Awaited) {
        if let Err(e) = self.room(cid, false) {
            let ty = match kind {
                Awaited::Info(_) => "lock-info",
                Awaited::Inspect(_) => "inspect",
                _ => "system-stats",
            };
            return self.send_error(slot, ty, uuid, None, &e);
        }
        let key = match &kind {
            Awaited::Info(k) => Some(k.clone()),
            _ => None,
        };
        let tag = self.route.expect(cid, uuid, kind);
        let op = match &key {
            Some(k) => StoreOp::Info { tag, key: k },
            None => StoreOp::Stats { tag },
        };
        self.store.submit(now, op);
    }

    /// Room for one more op of `conn` in a store that answers later: at most
    /// `max_per_conn` lock requests and groups (`request`), and as many unanswered ops.
    fn room(&mut self, conn: ConnId, request: bool) -> Result<(), String> {
        let l = self.route.load(conn);
        let max = self.max_per_conn;
        if l.unanswered >= max || (request && l.requests >= max) {
            let e = TableError::TooManyRequests(max);
            self.counters.reject(Reject::from(&e));
            return Err(e.to_string());
        }
        Ok(())
    }

    /// A legacy RW message. The Node RW client sends it while holding the mutex on `key` and
    /// waits for the answer before unlocking; when the answer must wait (a writer for readers,
    /// a reader for the writer), the party that would clear the way needs that same mutex. So
    /// the waiting client's mutex hold is released now ("parked") and its later unlock is
    /// answered as done: no deadlock until TTL, as 0.2.25 had.
    fn rw(&mut self, slot: usize, cid: ConnId, now: Instant, op: RwOp, uuid: &str, key: &str) {
        if self.store.shared() {
            // Its counts are this broker's: a broker beside it would not see them.
            return self.send_error(
                slot,
                op.as_str(),
                Some(uuid),
                Some(key),
                "the 0.2.x read/write protocol is not supported by this lock store",
            );
        }
        let mut woken = Vec::new();
        match self.rw.apply(cid, key, uuid, op, &mut woken) {
            RwAnswer::Now { readers } => self.send(
                slot,
                &Reply::Rw {
                    op,
                    uuid,
                    key,
                    readers_count: readers,
                },
            ),
            RwAnswer::Refused(e) => {
                self.counters.reject(Reject::from(&e));
                let msg = e.to_string();
                self.send_error(slot, op.as_str(), Some(uuid), Some(key), &msg);
            }
            RwAnswer::Full => self.send_error(
                slot,
                op.as_str(),
                Some(uuid),
                Some(key),
                "too many read/write requests already wait for this key",
            ),
            RwAnswer::Deferred => {
                // The connection's hold on `key` is given back to the store like any cancel
                // (its next waiters are granted); its later unlock is answered as done.
                if let Some(id) = self.route.held_by(cid, key) {
                    self.store.submit(
                        now,
                        StoreOp::Cancel {
                            conn: cid,
                            key,
                            id: &id,
                        },
                    );
                    self.rw.park(id, cid);
                }
            }
        }
        self.broadcast(woken);
    }

    /// `ls`: one page of keys, asked of the store (see `listing.rs`).
    fn ls(&mut self, slot: usize, cid: ConnId, now: Instant, uuid: &str, after: Option<&str>) {
        if let Err(e) = self.room(cid, false) {
            return self.send_error(slot, "ls", Some(uuid), None, &e);
        }
        let tag = self.route.expect(cid, Some(uuid), Awaited::Ls);
        let budget = self.reply_budget;
        self.store.submit(now, StoreOp::Keys { tag, after, budget });
    }

    /// `watch`: a snapshot as soon as the store answers, then one per interval (see
    /// `watch.rs`).
    fn watch(&mut self, slot: usize, cid: ConnId, now: Instant, uuid: &str, ms: Option<u64>) {
        if self.watchers.subscribe(cid, uuid, ms, now).is_err() {
            self.counters.reject(Reject::TooManyWatchers);
            return self.send_error(slot, "watch", Some(uuid), None, "too many watchers");
        }
        self.want_snapshot(now, cid, uuid);
    }
}
