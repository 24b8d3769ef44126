//! The core's etcd path: requests handed to an [`AsyncStore`] (the etcd store), and its
//! events turned into replies and pushed grants.
//!
//! Chosen at `BrokerBuilder` time (`BrokerBuilder::etcd`); the in-memory table is then unused.
//! What it keeps per connection is only bookkeeping for answers: which lock requests are
//! waiting or held (to answer a Node client's retry, and to give back a grant its client
//! already gave up on), which unlocks await an answer, and which questions (`ls`, `lock-info`,
//! `system-stats`, `inspect`) await etcd's. Every grant it reports is one the store recorded
//! in etcd.
//!
//! Not served (a clear error reply): `acquire-many`/`release-many`, `extend`, and the 0.2.x
//! read/write protocol (`rw`-style requests). A lock the store loses (its key deleted by
//! someone else, or the connection's lease possibly expired) gets a pushed `error` with the
//! lock's id, and the connection is closed once that is sent: the Rust client then marks every
//! guard of it lost, and no client is left believing it holds a lock.

use std::collections::VecDeque;
use std::time::Instant;

use ahash::RandomState;
use hashbrown::HashMap;

use super::store::AsyncStore;
use super::{Core, ms, table_mode, ttl_of, wait_of, wire_mode};
use crate::proto::encode::{self, HolderInfo, LockOutcome as WireLock};
use crate::proto::{self, Reply, Request};
use crate::store::etcd::{LockSpec, StoreError, StoreEvent, StoreOp};
use crate::table::ConnId;

/// The etcd path's state, kept in `Core::etcd`.
pub(crate) struct EtcdRoute {
    store: Box<dyn AsyncStore>,
    /// Lock requests of open connections, by (connection, lock id).
    locks: HashMap<(u64, String), LockState, RandomState>,
    /// Unlocks awaiting their answer, by (connection, key, lock id): their request uuids,
    /// oldest first (the store answers one connection's unlocks of one lock in order).
    unlocks: HashMap<(u64, String, Option<String>), VecDeque<String>, RandomState>,
    /// Questions awaiting etcd's answer, by tag.
    queries: HashMap<u64, Query, RandomState>,
    next_tag: u64,
}

struct LockState {
    key: String,
    held: bool,
    /// The client gave the request up while it waited (`lock-client-timeout`): its grant is
    /// given back at once instead of being pushed.
    cancelled: bool,
}

struct Query {
    conn: ConnId,
    uuid: Option<String>,
    kind: QueryKind,
}

enum QueryKind {
    Ls,
    Info(String),
    Stats,
    Inspect(String),
}

impl EtcdRoute {
    pub(crate) fn new(store: Box<dyn AsyncStore>) -> Self {
        EtcdRoute {
            store,
            locks: HashMap::default(),
            unlocks: HashMap::default(),
            queries: HashMap::default(),
            next_tag: 0,
        }
    }
}

impl Core {
    /// Routes the etcd store's requests at the store; false for the ones the core answers
    /// itself either way (`version`, `auth`, `ping`, `lock-received`).
    pub(super) fn etcd_handle(
        &mut self,
        slot: usize,
        cid: ConnId,
        now: Instant,
        req: &Request<'_>,
    ) -> bool {
        match *req {
            Request::Lock(ref r) => self.etcd_lock(slot, cid, now, r),
            Request::Cancel { uuid, .. } => self.etcd_cancel(cid, uuid),
            Request::Unlock {
                uuid,
                key,
                lock_id,
                force,
            } => self.etcd_unlock(slot, cid, uuid, key, lock_id, force),
            Request::Extend { uuid, key, .. } => self.send(
                slot,
                &Reply::Extend {
                    uuid,
                    key,
                    extended: false,
                    error: Some("extend is not supported by the etcd store"),
                },
            ),
            Request::AcquireMany(ref r) => self.send_error(
                slot,
                "acquire-many",
                Some(r.uuid),
                None,
                "acquire-many is not supported by the etcd store",
            ),
            Request::ReleaseMany { uuid, .. } => self.send_error(
                slot,
                "release-many",
                Some(uuid),
                None,
                "release-many is not supported by the etcd store",
            ),
            Request::Rw { uuid, key, .. } => self.send_error(
                slot,
                req.ty(),
                Some(uuid),
                Some(key),
                "the 0.2.x read/write protocol is not supported by the etcd store",
            ),
            Request::Ls { uuid } => self.etcd_query(slot, cid, Some(uuid), QueryKind::Ls),
            Request::LockInfo { uuid, key } => {
                self.etcd_query(slot, cid, Some(uuid), QueryKind::Info(key.to_owned()))
            }
            Request::SystemStats { uuid } => {
                self.etcd_query(slot, cid, Some(uuid), QueryKind::Stats)
            }
            Request::Inspect { uuid, command } => {
                self.etcd_query(slot, cid, uuid, QueryKind::Inspect(command.to_owned()))
            }
            _ => return false,
        }
        true
    }

    fn etcd_submit(&mut self, op: StoreOp) -> Result<(), StoreError> {
        match &self.etcd {
            Some(r) => r.store.submit(op),
            None => Err(StoreError::Stopped),
        }
    }

    fn etcd_lock(&mut self, slot: usize, cid: ConnId, now: Instant, r: &proto::LockRequest<'_>) {
        let Some(route) = self.etcd.as_mut() else {
            return;
        };
        if let Some(l) = route.locks.get(&(cid.0, r.uuid.to_owned())) {
            // A Node client's retry of a request it already made: the answer (or the pushed
            // grant) is on its way; a second `acquired:true` would reach a settled request and
            // make the client release the lock.
            if l.key == r.key {
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
            return self.send_error(
                slot,
                "lock",
                Some(r.uuid),
                Some(r.key),
                &StoreError::DuplicateId.to_string(),
            );
        }
        let keep_default = self.conn_at(slot).is_some_and(|c| c.keep_default);
        let spec = LockSpec {
            conn: cid,
            key: r.key.to_owned(),
            id: r.uuid.to_owned(),
            mode: table_mode(r.mode),
            max: r.max,
            ttl: ttl_of(r.ttl),
            wait: wait_of(now, r.try_lock, r.wait_timeout),
            keep_after_disconnect: r.keep_locks_after_death || keep_default,
        };
        match self.etcd_submit(StoreOp::Lock(spec)) {
            Ok(()) => {
                if let Some(route) = self.etcd.as_mut() {
                    route.locks.insert(
                        (cid.0, r.uuid.to_owned()),
                        LockState {
                            key: r.key.to_owned(),
                            held: false,
                            cancelled: false,
                        },
                    );
                }
            }
            Err(e) => self.send_error(slot, "lock", Some(r.uuid), Some(r.key), &e.to_string()),
        }
    }

    /// `lock-received-rejected` / `lock-client-timeout`: a held lock is given back; a waiting
    /// one is marked, and given back when its grant comes.
    fn etcd_cancel(&mut self, cid: ConnId, uuid: &str) {
        let Some(route) = self.etcd.as_mut() else {
            return;
        };
        let k = (cid.0, uuid.to_owned());
        let Some(l) = route.locks.get_mut(&k) else {
            return;
        };
        if !l.held {
            l.cancelled = true;
            return;
        }
        let key = l.key.clone();
        route.locks.remove(&k);
        self.etcd_give_back(cid, key, uuid.to_owned());
    }

    /// Unlocks a grant nobody will be told of; its answer is dropped.
    fn etcd_give_back(&mut self, cid: ConnId, key: String, id: String) {
        let _ = self.etcd_submit(StoreOp::Unlock {
            conn: cid,
            key,
            id: Some(id),
            force: false,
        });
    }

    fn etcd_unlock(
        &mut self,
        slot: usize,
        cid: ConnId,
        uuid: &str,
        key: &str,
        lock_id: Option<&str>,
        force: bool,
    ) {
        let admin = self.conn_at(slot).is_some_and(|c| c.admin);
        let res = if force && !admin {
            Err("force unlock is an admin act: use the Unix socket or authenticate".to_owned())
        } else {
            self.etcd_submit(StoreOp::Unlock {
                conn: cid,
                key: key.to_owned(),
                id: lock_id.map(str::to_owned),
                force,
            })
            .map_err(|e| e.to_string())
        };
        match res {
            Ok(()) => {
                if let Some(route) = self.etcd.as_mut() {
                    route
                        .unlocks
                        .entry((cid.0, key.to_owned(), lock_id.map(str::to_owned)))
                        .or_default()
                        .push_back(uuid.to_owned());
                }
            }
            Err(e) => self.send(
                slot,
                &Reply::Unlock {
                    uuid,
                    key,
                    unlocked: false,
                    lock_request_count: 0,
                    lost: false,
                    error: Some(&e),
                    warning: None,
                },
            ),
        }
    }

    fn etcd_query(&mut self, slot: usize, cid: ConnId, uuid: Option<&str>, kind: QueryKind) {
        let Some(route) = self.etcd.as_mut() else {
            return;
        };
        route.next_tag += 1;
        let tag = route.next_tag;
        let (conn, ty) = (cid, query_ty(&kind));
        let op = match &kind {
            QueryKind::Ls => StoreOp::Keys { conn, tag },
            QueryKind::Info(key) => StoreOp::Info {
                conn,
                tag,
                key: key.clone(),
            },
            QueryKind::Stats | QueryKind::Inspect(_) => StoreOp::Stats { conn, tag },
        };
        route.queries.insert(
            tag,
            Query {
                conn: cid,
                uuid: uuid.map(str::to_owned),
                kind,
            },
        );
        if let Err(e) = self.etcd_submit(op) {
            if let Some(route) = self.etcd.as_mut() {
                route.queries.remove(&tag);
            }
            self.send_error(slot, ty, uuid, None, &e.to_string());
        }
    }

    /// The connection closed: the store drops its waiters, releases its holds (except
    /// keep-after-death ones) and revokes its lease.
    pub(super) fn etcd_close(&mut self, id: ConnId) {
        let Some(route) = self.etcd.as_mut() else {
            return;
        };
        route.locks.retain(|(c, _), _| *c != id.0);
        route.unlocks.retain(|(c, _, _), _| *c != id.0);
        route.queries.retain(|_, q| q.conn != id);
        let _ = route.store.submit(StoreOp::Disconnect { conn: id });
    }

    /// Drains the store's events into replies; the reactor calls it every loop turn (the
    /// store's wake hook wakes the reactor when events are waiting).
    pub(crate) fn poll_store(&mut self) {
        while let Some(ev) = self.etcd.as_ref().and_then(|r| r.store.poll_event()) {
            self.etcd_event(ev);
        }
    }

    fn etcd_event(&mut self, ev: StoreEvent) {
        match ev {
            StoreEvent::Granted {
                conn,
                id,
                key,
                token,
            } => self.etcd_granted(ConnId(conn.0), id, key, token),
            StoreEvent::Queued {
                conn,
                id,
                key,
                ahead,
            } => self.etcd_lock_reply(ConnId(conn.0), &id, &key, WireLock::Queued, ahead, false),
            StoreEvent::Busy {
                conn,
                id,
                key,
                ahead,
            } => self.etcd_lock_reply(ConnId(conn.0), &id, &key, WireLock::Refused, ahead, true),
            StoreEvent::TimedOut {
                conn,
                id,
                key,
                waited,
            } => {
                let cid = ConnId(conn.0);
                self.etcd_forget(cid, &id);
                if let Some(slot) = self.slot_of(cid) {
                    self.send(
                        slot,
                        &Reply::LockTimedOut {
                            uuid: &id,
                            key: &key,
                            waited_ms: ms(waited),
                        },
                    );
                }
            }
            StoreEvent::Expired { conn, id, .. } => self.etcd_forget(ConnId(conn.0), &id),
            StoreEvent::Lost {
                conn,
                id,
                key,
                reason,
            } => {
                let cid = ConnId(conn.0);
                self.etcd_forget(cid, &id);
                if let Some(slot) = self.slot_of(cid) {
                    let msg = format!("lock lost: {reason}");
                    self.send_error(slot, "lock", Some(&id), Some(&key), &msg);
                    self.close_after_flush(slot);
                }
            }
            StoreEvent::Unlocked { conn, key, id, .. } => {
                let cid = ConnId(conn.0);
                if let Some(i) = &id {
                    self.etcd_forget(cid, i);
                }
                if let Some(uuid) = self.etcd_pending_unlock(cid, &key, &id) {
                    self.etcd_unlock_reply(cid, &uuid, &key, None);
                }
            }
            StoreEvent::Error {
                conn,
                op: _,
                id,
                key,
                error,
            } => self.etcd_error(ConnId(conn.0), id, key, error),
            // This route submits no extend, cancel or acquire-many yet.
            StoreEvent::Extended { .. }
            | StoreEvent::ManyGranted { .. }
            | StoreEvent::ManyQueued { .. }
            | StoreEvent::ManyBusy { .. }
            | StoreEvent::ManyTimedOut { .. }
            | StoreEvent::ManyReleased { .. } => {}
            StoreEvent::Keys { tag, keys, .. } => {
                let Some((slot, q)) = self.etcd_query_done(tag) else {
                    return;
                };
                let uuid = q.uuid.as_deref().unwrap_or("");
                match keys {
                    Ok(keys) => {
                        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                        self.send(
                            slot,
                            &Reply::Ls {
                                uuid,
                                keys: refs.into(),
                            },
                        );
                    }
                    Err(e) => self.send_error(slot, "ls", Some(uuid), None, &e.to_string()),
                }
            }
            StoreEvent::Info { tag, info, .. } => {
                let Some((slot, q)) = self.etcd_query_done(tag) else {
                    return;
                };
                let uuid = q.uuid.as_deref().unwrap_or("");
                let QueryKind::Info(key) = &q.kind else {
                    return;
                };
                match info {
                    Ok(info) => {
                        let holders: Vec<HolderInfo<'_>> = info
                            .iter()
                            .flat_map(|i| &i.holders)
                            .map(|h| HolderInfo {
                                id: h.id.as_str().into(),
                                fencing_token: Some(h.token),
                                mode: wire_mode(h.mode),
                                ttl_remaining: None,
                                // The etcd store does not record when or by whom (yet).
                                held_since_ms: None,
                                who: Default::default(),
                            })
                            .collect();
                        let reply = Reply::LockInfo {
                            uuid,
                            key,
                            lock_request_count: info.as_ref().map_or(0, |i| i.queue.len() as u64),
                            readers_count: info.as_ref().map_or(0, |i| i.readers as u64),
                            is_locked: !holders.is_empty(),
                            max: Some(info.as_ref().map_or(1, |i| i.max)),
                            holders: holders.into(),
                            waiters: Vec::new().into(),
                        };
                        self.send(slot, &reply);
                    }
                    Err(e) => {
                        self.send_error(slot, "lock-info", Some(uuid), Some(key), &e.to_string())
                    }
                }
            }
            StoreEvent::Stats { tag, stats, .. } => {
                let Some((slot, q)) = self.etcd_query_done(tag) else {
                    return;
                };
                let s = match stats {
                    Ok(s) => s,
                    Err(e) => {
                        let ty = query_ty(&q.kind);
                        return self.send_error(slot, ty, q.uuid.as_deref(), None, &e.to_string());
                    }
                };
                match &q.kind {
                    QueryKind::Inspect(command) => {
                        let result = match command.as_str() {
                            "lockcount" | "lock-count" | "lock_count" => s.keys as u64,
                            "clientcount" | "client-count" | "client_count" => self.open as u64,
                            _ => s.holders as u64,
                        };
                        let uuid = q.uuid.as_deref();
                        self.send(slot, &Reply::Inspect { uuid, result });
                    }
                    _ => {
                        let stats = encode::Stats {
                            keys: s.keys as u64,
                            holders: s.holders as u64,
                            waiters: s.waiters as u64,
                            connections: self.open as u64,
                            grants: s.grants,
                        };
                        let uuid = q.uuid.as_deref().unwrap_or("");
                        self.send(slot, &Reply::SystemStats { uuid, stats });
                    }
                }
            }
        }
    }

    fn etcd_granted(&mut self, cid: ConnId, id: String, key: String, token: u64) {
        let open = self.state(cid).is_some();
        let Some(route) = self.etcd.as_mut() else {
            return;
        };
        let k = (cid.0, id);
        let wanted = open
            && route
                .locks
                .get(&k)
                .is_some_and(|l| !l.cancelled && l.key == key);
        if !wanted {
            // Its connection is gone, or its client gave it up: give it back, unseen.
            route.locks.remove(&k);
            return self.etcd_give_back(cid, key, k.1);
        }
        if let Some(l) = route.locks.get_mut(&k) {
            l.held = true;
        }
        if let Some(slot) = self.slot_of(cid) {
            self.send(
                slot,
                &Reply::Lock {
                    uuid: &k.1,
                    key: &key,
                    outcome: WireLock::Granted {
                        fencing_token: Some(token),
                    },
                    lock_request_count: 0,
                    readers_count: 0,
                },
            );
        }
    }

    fn etcd_lock_reply(
        &mut self,
        cid: ConnId,
        id: &str,
        key: &str,
        outcome: WireLock,
        ahead: usize,
        done: bool,
    ) {
        if done {
            self.etcd_forget(cid, id);
        }
        if let Some(slot) = self.slot_of(cid) {
            self.send(
                slot,
                &Reply::Lock {
                    uuid: id,
                    key,
                    outcome,
                    lock_request_count: ahead as u64,
                    readers_count: 0,
                },
            );
        }
    }

    /// A failed lock (nothing is held for it) or a failed unlock: which one, by what awaits
    /// an answer. Unlock failures name the lock's state (not held, still waiting).
    fn etcd_error(&mut self, cid: ConnId, id: Option<String>, key: String, error: StoreError) {
        let Some(route) = self.etcd.as_ref() else {
            return;
        };
        let unlock_waits = route
            .unlocks
            .contains_key(&(cid.0, key.clone(), id.clone()));
        let lock_waits = id.as_ref().is_some_and(|i| {
            route
                .locks
                .get(&(cid.0, i.clone()))
                .is_some_and(|l| !l.held && l.key == key)
        });
        let unlock_error = matches!(
            error,
            StoreError::NotHeld | StoreError::StillWaiting | StoreError::IdRequired
        );
        if unlock_waits && (unlock_error || !lock_waits) {
            if let Some(uuid) = self.etcd_pending_unlock(cid, &key, &id) {
                self.etcd_unlock_reply(cid, &uuid, &key, Some(&error));
            }
            return;
        }
        let Some(id) = id else {
            return;
        };
        self.etcd_forget(cid, &id);
        if let Some(slot) = self.slot_of(cid) {
            self.send_error(slot, "lock", Some(&id), Some(&key), &error.to_string());
        }
    }

    fn etcd_unlock_reply(&mut self, cid: ConnId, uuid: &str, key: &str, err: Option<&StoreError>) {
        let Some(slot) = self.slot_of(cid) else {
            return;
        };
        let msg = err.map(ToString::to_string);
        self.send(
            slot,
            &Reply::Unlock {
                uuid,
                key,
                unlocked: err.is_none(),
                lock_request_count: 0,
                lost: matches!(err, Some(StoreError::NotHeld)),
                error: msg.as_deref(),
                warning: None,
            },
        );
    }

    fn etcd_pending_unlock(
        &mut self,
        cid: ConnId,
        key: &str,
        id: &Option<String>,
    ) -> Option<String> {
        let route = self.etcd.as_mut()?;
        let k = (cid.0, key.to_owned(), id.clone());
        let q = route.unlocks.get_mut(&k)?;
        let uuid = q.pop_front();
        if q.is_empty() {
            route.unlocks.remove(&k);
        }
        uuid
    }

    fn etcd_forget(&mut self, cid: ConnId, id: &str) {
        if let Some(route) = self.etcd.as_mut() {
            route.locks.remove(&(cid.0, id.to_owned()));
        }
    }

    fn etcd_query_done(&mut self, tag: u64) -> Option<(usize, Query)> {
        let q = self.etcd.as_mut()?.queries.remove(&tag)?;
        Some((self.slot_of(q.conn)?, q))
    }
}

fn query_ty(k: &QueryKind) -> &'static str {
    match k {
        QueryKind::Ls => "ls",
        QueryKind::Info(_) => "lock-info",
        QueryKind::Stats => "system-stats",
        QueryKind::Inspect(_) => "inspect",
    }
}
