//! From a decoded request to table calls and replies; from table events to pushed replies.
//!
//! Nothing here touches a socket: replies are encoded into each connection's output, which the
//! reactor flushes at the end of its loop turn.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ahash::RandomState;
use hashbrown::HashMap;
use slab::Slab;
use smallvec::SmallVec;

use super::conn::Conn;
use super::legacy_rw::{LegacyRw, RwAnswer};
use crate::proto::encode::{self, HolderInfo, LockOutcome as WireLock, ManyOutcome as WireMany};
use crate::proto::{self, Reply, Request};
use crate::table::{
    self, Cancelled, ConnId, Event, LockOutcome, ManyOutcome, ManyRequest, Name, Table, TableError,
    Wait,
};

/// A pushed grant that a Node client has not acknowledged yet (see `Core::acks`).
struct PendingAck {
    conn: ConnId,
    key: Name,
    /// When it was pushed: tells this grant's timers from those of an earlier grant that had
    /// the same id.
    pushed: Instant,
}

/// Prefix of the uuid of an ack probe (see [`Core::send_probes`]); the rest is the grant's id.
pub(crate) const PROBE_PREFIX: &str = "lmx-ack-probe:";

/// How long a pushed grant may go unacknowledged before it is probed. A client that is
/// running acknowledges within a millisecond; the probe makes the 0.2.25 client log a warning,
/// so it is sent only to clients that are late.
pub(crate) const PROBE_DELAY: Duration = Duration::from_millis(200);

/// The broker minus its sockets: the table, the connections' outputs, and the grant acks.
pub(crate) struct Core {
    pub table: Table,
    pub conns: Slab<Conn>,
    /// Encoding scratch, reused for every reply.
    enc: Vec<u8>,
    /// Pushed grants to Node clients not yet acknowledged with `lock-received`. The 0.2.x
    /// client gives up on a try-lock locally and never tells the broker, so a grant pushed to
    /// it later would be held by nobody (a "ghost"). Such a grant is never released while the
    /// client may still read it and believe it holds the key: only its TTL, the connection's
    /// close, a `lock-received-rejected`, or the answer to an ack probe end it.
    acks: HashMap<Name, PendingAck, RandomState>,
    /// Grants to probe, in push order (all share [`PROBE_DELAY`]).
    probe_order: VecDeque<(Instant, Name)>,
    /// Opt-in (`--ack-timeout`): release an unacknowledged push after this long, although a
    /// client whose event loop is stalled may still read it and believe it holds the key.
    pub ack_timeout: Option<Duration>,
    expiry_order: VecDeque<(Instant, Name)>,
    /// Connections whose output must be flushed this turn.
    pub dirty: Vec<usize>,
    /// Connections to close at the end of this turn (a full WebSocket buffer, a mismatch).
    pub doomed: Vec<usize>,
    pub auth_token: Option<String>,
    rw: LegacyRw,
    /// Mutex holds of legacy RW clients set aside while their RW request waits (see `rw`);
    /// their later unlock is answered as done.
    parked: HashMap<Name, ConnId, RandomState>,
    woken: Vec<(ConnId, Name, Name)>,
}

fn conn_slot(id: ConnId) -> usize {
    (id.0 & 0xffff_ffff) as usize
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

impl Core {
    pub fn new(table: Table, ack_timeout: Option<Duration>, auth_token: Option<String>) -> Self {
        Core {
            table,
            conns: Slab::new(),
            enc: Vec::with_capacity(256),
            acks: HashMap::default(),
            probe_order: VecDeque::new(),
            ack_timeout,
            expiry_order: VecDeque::new(),
            dirty: Vec::new(),
            doomed: Vec::new(),
            auth_token,
            rw: LegacyRw::default(),
            parked: HashMap::default(),
            woken: Vec::new(),
        }
    }

    /// The slab slot of a live connection with this id (ids carry their slot in the low bits
    /// and a generation above, so a reused slot never receives a dead connection's grant).
    fn slot_of(&self, id: ConnId) -> Option<usize> {
        let slot = conn_slot(id);
        self.conns.get(slot).filter(|c| c.id == id).map(|_| slot)
    }

    fn send(&mut self, slot: usize, reply: &Reply<'_>) {
        self.enc.clear();
        reply.encode(&mut self.enc);
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.push_frame(&self.enc).is_err() {
            self.doomed.push(slot);
        }
        if !std::mem::replace(&mut conn.dirty, true) {
            self.dirty.push(slot);
        }
    }

    fn send_error(
        &mut self,
        slot: usize,
        ty: &str,
        uuid: Option<&str>,
        key: Option<&str>,
        e: &str,
    ) {
        self.send(
            slot,
            &Reply::Error {
                ty: Some(ty),
                uuid,
                key,
                error: e,
            },
        );
    }

    pub fn decode_error(&mut self, slot: usize, e: &proto::DecodeError) {
        self.enc.clear();
        encode::decode_error(e, &mut self.enc);
        if let Some(conn) = self.conns.get_mut(slot) {
            if conn.push_frame(&self.enc).is_err() {
                self.doomed.push(slot);
            }
            if !std::mem::replace(&mut conn.dirty, true) {
                self.dirty.push(slot);
            }
        }
    }

    /// Handles one request of connection `slot`.
    pub fn handle(&mut self, slot: usize, now: Instant, req: Request<'_>) {
        let Some(conn) = self.conns.get(slot) else {
            return;
        };
        let cid = conn.id;
        if !conn.authed {
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
                if ok {
                    self.conns[slot].authed = true;
                    self.conns[slot].admin = true;
                } else {
                    self.conns[slot].close_after_flush = true;
                }
            } else {
                self.send_error(slot, req.ty(), req.uuid(), None, "authenticate first");
                self.conns[slot].close_after_flush = true;
            }
            return;
        }
        match req {
            Request::Version {
                value,
                keep_locks_after_death,
            } => {
                self.conns[slot].node_client = true;
                self.conns[slot].keep_default = keep_locks_after_death;
                if !proto::is_compatible_version(value) {
                    self.send(
                        slot,
                        &Reply::VersionMismatch {
                            client_version: value,
                        },
                    );
                    self.conns[slot].close_after_flush = true;
                }
            }
            Request::VersionMismatchConfirmed => self.doomed.push(slot),
            Request::Lock(r) => self.lock(slot, cid, now, &r),
            Request::LockReceived { uuid, .. } => {
                if self.acks.get(uuid).is_some_and(|a| a.conn == cid) {
                    self.acks.remove(uuid);
                }
            }
            Request::Cancel { uuid, key, .. } => match uuid.strip_prefix(PROBE_PREFIX) {
                Some(id) => self.probe_answered(now, cid, id),
                None => {
                    self.acks.remove(uuid);
                    self.table.cancel(now, cid, key, uuid);
                }
            },
            Request::Unlock {
                uuid,
                key,
                lock_id,
                force,
            } => {
                let parked = lock_id.is_some_and(|id| self.parked.get(id) == Some(&cid));
                // Err(None): refused before the table was asked.
                let res = if force && !self.conns[slot].admin {
                    Err(None)
                } else if parked {
                    lock_id.map(|id| self.parked.remove(id));
                    Ok(1)
                } else {
                    self.table.unlock(now, key, lock_id, force).map_err(Some)
                };
                if let Some(id) = lock_id
                    && !self.acks.is_empty()
                {
                    self.acks.remove(id);
                }
                let (lrc, _) = self.table.counts(key);
                let lost = matches!(res, Err(Some(TableError::NotHeld)));
                let err = match &res {
                    Ok(_) => None,
                    Err(None) => Some(
                        "force unlock is an admin act: use the Unix socket or authenticate"
                            .to_string(),
                    ),
                    Err(Some(e)) => Some(e.to_string()),
                };
                self.send(
                    slot,
                    &Reply::Unlock {
                        uuid,
                        key,
                        unlocked: err.is_none(),
                        lock_request_count: lrc as u64,
                        lost,
                        error: err.as_deref(),
                        warning: None,
                    },
                );
            }
            Request::Extend {
                uuid,
                key,
                lock_id,
                ttl,
            } => {
                let res = self.table.extend(now, key, lock_id, ttl_of(ttl));
                let err = res.as_ref().err().map(ToString::to_string);
                self.send(
                    slot,
                    &Reply::Extend {
                        uuid,
                        key,
                        extended: res.is_ok(),
                        error: err.as_deref(),
                    },
                );
            }
            Request::AcquireMany(r) => {
                let wait = wait_of(now, r.try_lock, r.wait_timeout);
                let req = ManyRequest {
                    conn: cid,
                    keys: &r.keys,
                    id: r.uuid,
                    ttl: ttl_of(r.ttl),
                    wait,
                    keep_after_disconnect: r.keep_locks_after_death
                        || self.conns[slot].keep_default,
                };
                match self.table.lock_many(now, &req) {
                    Ok(out) => self.send_many(slot, r.uuid, &out, r.wait_timeout.unwrap_or(0)),
                    Err(e) => {
                        self.send_error(slot, "acquire-many", Some(r.uuid), None, &e.to_string())
                    }
                }
            }
            Request::ReleaseMany { uuid, lock_id } => {
                let res = self.table.release_many(now, lock_id);
                let err = res.as_ref().err().map(ToString::to_string);
                self.send(
                    slot,
                    &Reply::ReleaseMany {
                        uuid,
                        lock_id,
                        released: res.is_ok(),
                        error: err.as_deref(),
                    },
                );
            }
            Request::Ls { uuid } => {
                let keys: Vec<Name> = self.table.keys().cloned().collect();
                let refs: Vec<&str> = keys.iter().map(|k| &**k).collect();
                self.send(
                    slot,
                    &Reply::Ls {
                        uuid,
                        keys: refs.into(),
                    },
                );
            }
            Request::LockInfo { uuid, key } => {
                let info = self.table.info(now, key);
                let holders: Vec<HolderInfo<'_>> = info
                    .iter()
                    .flat_map(|i| &i.holders)
                    .map(|h| HolderInfo {
                        id: (*h.id).into(),
                        fencing_token: Some(h.token),
                        mode: wire_mode(h.mode),
                        ttl_remaining: h.ttl_remaining,
                    })
                    .collect();
                let reply = Reply::LockInfo {
                    uuid,
                    key,
                    lock_request_count: info.as_ref().map_or(0, |i| i.waiters as u64),
                    readers_count: info.as_ref().map_or(0, |i| i.readers as u64),
                    is_locked: !holders.is_empty(),
                    max: Some(info.as_ref().map_or(1, |i| i.max)),
                    holders: holders.into(),
                };
                self.send(slot, &reply);
            }
            Request::Ping { uuid } => {
                let ts = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, ms);
                self.send(
                    slot,
                    &Reply::Pong {
                        uuid,
                        server_timestamp_ms: ts,
                    },
                );
            }
            Request::SystemStats { uuid } => {
                let s = self.table.stats();
                let stats = encode::Stats {
                    keys: s.keys as u64,
                    holders: s.holders as u64,
                    waiters: s.waiters as u64,
                    connections: self.conns.len() as u64,
                    grants: s.grants,
                };
                self.send(slot, &Reply::SystemStats { uuid, stats });
            }
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
                // The spellings 0.2.25's broker accepts; anything else: the number of holders.
                let result = match command {
                    "lockcount" | "lock-count" | "lock_count" => self.table.stats().keys as u64,
                    "clientcount" | "client-count" | "client_count" => self.conns.len() as u64,
                    _ => self.table.stats().holders as u64,
                };
                self.send(slot, &Reply::Inspect { uuid, result });
            }
        }
        self.route_events(now);
    }

    fn lock(&mut self, slot: usize, cid: ConnId, now: Instant, r: &proto::LockRequest<'_>) {
        let req = table::LockRequest {
            conn: cid,
            key: r.key,
            id: r.uuid,
            mode: table_mode(r.mode),
            max: r.max,
            ttl: ttl_of(r.ttl),
            wait: wait_of(now, r.try_lock, r.wait_timeout),
            // The Node client puts its constructor option on `version` only (see `keep_default`).
            keep_after_disconnect: r.keep_locks_after_death || self.conns[slot].keep_default,
        };
        // A Node client re-sends a lock (same uuid) when its own timer fires. If the lock was
        // granted meanwhile, the grant is already on its way; a second `acquired:true` would
        // reach a request the client has settled and make it reject (release) the lock.
        let retried_holder = r.retry_count > 0
            && self
                .table
                .info(now, r.key)
                .is_some_and(|i| i.holders.iter().any(|h| &*h.id == r.uuid));
        let (outcome, lrc, readers) = match self.table.lock(now, &req) {
            Err(e) => {
                return self.send_error(slot, "lock", Some(r.uuid), Some(r.key), &e.to_string());
            }
            Ok(LockOutcome::TimedOut) => {
                return self.send(
                    slot,
                    &Reply::LockTimedOut {
                        uuid: r.uuid,
                        key: r.key,
                        waited_ms: 0,
                    },
                );
            }
            Ok(LockOutcome::Granted(_)) if retried_holder => (WireLock::Queued, 0, 0),
            Ok(LockOutcome::Granted(g)) => (
                WireLock::Granted {
                    fencing_token: Some(g.token),
                },
                g.queue_len,
                g.readers,
            ),
            Ok(LockOutcome::Queued { queue_len, readers }) => {
                (WireLock::Queued, queue_len, readers)
            }
            Ok(LockOutcome::Busy { queue_len, readers }) => (WireLock::Refused, queue_len, readers),
        };
        self.send(
            slot,
            &Reply::Lock {
                uuid: r.uuid,
                key: r.key,
                outcome,
                lock_request_count: lrc as u64,
                readers_count: readers as u64,
            },
        );
    }

    fn send_many(&mut self, slot: usize, uuid: &str, out: &ManyOutcome, timeout_ms: u64) {
        let tokens: SmallVec<[(&str, u64); 8]>;
        let outcome = match out {
            ManyOutcome::Granted(t) => {
                tokens = t.iter().map(|(k, v)| (&**k, *v)).collect();
                WireMany::Granted {
                    fencing_tokens: (&tokens[..]).into(),
                }
            }
            ManyOutcome::Queued => WireMany::Queued,
            ManyOutcome::Busy => WireMany::Refused {
                contended_key: None,
            },
            ManyOutcome::TimedOut => WireMany::TimedOut {
                waited_ms: timeout_ms,
            },
        };
        self.send(
            slot,
            &Reply::AcquireMany {
                uuid,
                lock_id: uuid,
                outcome,
            },
        );
    }

    /// Turns the table's events into pushed replies; a grant for a connection that is gone is
    /// released at once.
    pub fn route_events(&mut self, now: Instant) {
        while let Some(ev) = self.table.poll_event() {
            match ev {
                Event::Granted {
                    conn,
                    id,
                    key,
                    grant,
                } => {
                    let Some(slot) = self.slot_of(conn) else {
                        self.table.cancel(now, conn, &key, &id);
                        continue;
                    };
                    if self.conns[slot].node_client {
                        self.probe_order.push_back((now + PROBE_DELAY, id.clone()));
                        if let Some(t) = self.ack_timeout {
                            self.expiry_order.push_back((now + t, id.clone()));
                        }
                        self.acks.insert(
                            id.clone(),
                            PendingAck {
                                conn,
                                key: key.clone(),
                                pushed: now,
                            },
                        );
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
                Event::ManyGranted { conn, id, tokens } => {
                    let Some(slot) = self.slot_of(conn) else {
                        self.table.release_many(now, &id).ok();
                        continue;
                    };
                    self.send_many(slot, &id, &ManyOutcome::Granted(tokens), 0);
                }
                Event::TimedOut {
                    conn,
                    id,
                    key,
                    waited,
                } => {
                    let Some(slot) = self.slot_of(conn) else {
                        continue;
                    };
                    match key {
                        Some(key) => self.send(
                            slot,
                            &Reply::LockTimedOut {
                                uuid: &id,
                                key: &key,
                                waited_ms: ms(waited),
                            },
                        ),
                        None => self.send_many(slot, &id, &ManyOutcome::TimedOut, ms(waited)),
                    }
                }
                Event::Expired { id, .. } => {
                    self.acks.remove(&id);
                }
            }
        }
    }

    /// Runs the acknowledgement timers that are due: ack probes, and the opt-in release of
    /// unacknowledged pushes (`ack_timeout`).
    pub fn ack_timers(&mut self, now: Instant) {
        while let Some(id) = due(&mut self.probe_order, now, PROBE_DELAY, &self.acks) {
            self.send_probe(&id);
        }
        if let Some(t) = self.ack_timeout {
            while let Some(id) = due(&mut self.expiry_order, now, t, &self.acks) {
                let Some(a) = self.acks.remove(&id) else {
                    continue;
                };
                if self.table.cancel(now, a.conn, &a.key, &id) == Cancelled::Released {
                    log::note(&format!(
                        "grant {id} of key {:?} was not acknowledged within {} ms: released \
                         (--ack-timeout)",
                        a.key,
                        t.as_millis()
                    ));
                }
            }
        }
        self.route_events(now);
    }

    /// Asks a Node client whether it took a pushed grant it has not acknowledged: the probe is
    /// a grant for a request the client never made, which the 0.2.x client answers with
    /// `lock-received-rejected` and nothing else. The client reads its socket in order and
    /// acknowledges an accepted grant from the same handler, before it reads the next line;
    /// so a probe answered while the grant is still unacknowledged proves that the client read
    /// the grant and dropped it (a try-lock it gave up on). A client whose event loop is
    /// stalled answers nothing until it has read, and acknowledged, the grant first.
    fn send_probe(&mut self, id: &Name) {
        let Some(a) = self.acks.get(id) else {
            return;
        };
        let Some(slot) = self.slot_of(a.conn) else {
            return;
        };
        let (uuid, key) = (format!("{PROBE_PREFIX}{id}"), a.key.clone());
        self.send(
            slot,
            &Reply::Lock {
                uuid: &uuid,
                key: &key,
                outcome: WireLock::Granted {
                    fencing_token: None,
                },
                lock_request_count: 0,
                readers_count: 0,
            },
        );
    }

    /// The client answered the probe of grant `id` with `lock-received-rejected`: if it has not
    /// acknowledged the grant by now, it read it and dropped it, so the grant is released.
    fn probe_answered(&mut self, now: Instant, cid: ConnId, id: &str) {
        // Acknowledged meanwhile, or not this connection's: nothing to do.
        if self.acks.get(id).is_some_and(|a| a.conn == cid)
            && let Some(a) = self.acks.remove(id)
            && self.table.cancel(now, cid, &a.key, id) == Cancelled::Released
        {
            log::note(&format!(
                "grant {id} of key {:?}: the client read it and did not take it: released",
                a.key
            ));
        }
    }

    /// The earliest acknowledgement timer, for the reactor's poll timeout.
    pub fn next_ack_deadline(&self) -> Option<Instant> {
        let probe = self.probe_order.front().map(|(t, _)| *t);
        let expiry = self.expiry_order.front().map(|(t, _)| *t);
        probe.into_iter().chain(expiry).min()
    }

    /// The connection is gone: the table releases exactly its holds.
    pub fn disconnect(&mut self, now: Instant, id: ConnId) {
        self.table.disconnect(now, id);
        if !self.acks.is_empty() {
            self.acks.retain(|_, a| a.conn != id);
        }
        self.parked.retain(|_, c| *c != id);
        let mut woken = std::mem::take(&mut self.woken);
        self.rw.disconnect(id, &mut woken);
        self.broadcast(&mut woken);
        self.woken = woken;
        self.route_events(now);
    }

    /// A legacy RW message. The Node RW client sends it while holding the mutex on `key` and
    /// waits for the answer before unlocking; when the answer must wait (a writer for readers,
    /// a reader for the writer), the party that would clear the way needs that same mutex. So
    /// the waiting client's mutex hold is released now ("parked") and its later unlock is
    /// answered as done: no deadlock until TTL, as 0.2.25 had.
    fn rw(
        &mut self,
        slot: usize,
        cid: ConnId,
        now: Instant,
        op: proto::RwOp,
        uuid: &str,
        key: &str,
    ) {
        let mut woken = std::mem::take(&mut self.woken);
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
            RwAnswer::Full => self.send_error(
                slot,
                op.as_str(),
                Some(uuid),
                Some(key),
                "too many read/write requests already wait for this key",
            ),
            RwAnswer::Deferred => {
                let held: Option<Name> = self.table.info(now, key).and_then(|i| {
                    i.holders
                        .iter()
                        .find(|h| h.conn == cid)
                        .map(|h| h.id.clone())
                });
                if let Some(id) = held
                    && self.table.cancel(now, cid, key, &id) == Cancelled::Released
                {
                    self.parked.insert(id, cid);
                }
            }
        }
        self.broadcast(&mut woken);
        self.woken = woken;
    }

    fn broadcast(&mut self, woken: &mut Vec<(ConnId, Name, Name)>) {
        for (conn, uuid, key) in woken.drain(..) {
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
}

/// Pops the next timer of `order` that is due at `now` and still belongs to a pending grant
/// (pushed exactly `delay` before it: a later push of the same id has timers of its own).
fn due(
    order: &mut VecDeque<(Instant, Name)>,
    now: Instant,
    delay: Duration,
    acks: &HashMap<Name, PendingAck, RandomState>,
) -> Option<Name> {
    while order.front().is_some_and(|(at, _)| *at <= now) {
        let (at, id) = order.pop_front()?;
        if acks.get(&id).is_some_and(|a| a.pushed + delay == at) {
            return Some(id);
        }
    }
    None
}

fn table_mode(m: proto::Mode) -> table::Mode {
    match m {
        proto::Mode::Exclusive => table::Mode::Exclusive,
        proto::Mode::Read => table::Mode::Read,
        proto::Mode::Write => table::Mode::Write,
    }
}

fn wire_mode(m: table::Mode) -> proto::Mode {
    match m {
        table::Mode::Exclusive => proto::Mode::Exclusive,
        table::Mode::Read => proto::Mode::Read,
        table::Mode::Write => proto::Mode::Write,
    }
}

fn ttl_of(t: proto::Ttl) -> table::Ttl {
    match t {
        proto::Ttl::BrokerDefault => table::Ttl::Default,
        proto::Ttl::Never => table::Ttl::Never,
        proto::Ttl::After(d) => table::Ttl::After(d),
    }
}

fn wait_of(now: Instant, try_lock: bool, timeout_ms: Option<u64>) -> Wait {
    match (try_lock, timeout_ms) {
        (true, _) => Wait::No,
        (false, Some(ms)) => Wait::Until(now + Duration::from_millis(ms)),
        (false, None) => Wait::Forever,
    }
}

/// Compares secrets in time independent of where they differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// Start-up and notable events go to stderr, one line each.
pub(crate) mod log {
    pub fn note(msg: &str) {
        eprintln!("lmx: {msg}");
    }
}
