//! The broker minus its sockets: a sans-IO state machine in the style of quinn-proto's
//! `Connection`. Messages and time go in; bytes to send per connection and close requests come
//! out. Nothing here touches a socket, reads a clock, or knows about WebSocket.
//!
//! Lock state lives in a [`Store`] (the in-memory table, or etcd), which the core only talks
//! to through ops and events: [`route`] turns requests into ops, [`answers`] turns the store's
//! events into replies, the same way for every store. The rest, by file: [`acks`] (the ack
//! probes of pushed grants), [`legacy_rw`] (the 0.2.x read/write protocol, table only),
//! [`identity`] (who holds what), [`watch`] (live snapshots), [`counters`], [`events`] (lock
//! events in the log).

mod acks;
mod answers;
mod counters;
mod events;
mod identity;
mod legacy_rw;
mod listing;
mod route;
#[cfg(test)]
mod tests;
mod watch;

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ahash::RandomState;
use hashbrown::HashMap;

use crate::proto::encode;
use crate::proto::{self, Decoder, Limits, Reply, Request};
use crate::store::{MemStore, Store, StoreOp};
use crate::table::{self, ConnId, Name};
use acks::PendingAck;
pub(crate) use counters::{CoreMetrics, Counters, Reject, STUCK_KEYS};
use identity::Identity;
use legacy_rw::LegacyRw;
use watch::Watcher;

/// How a connection reached the broker; decides its rights before any request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnKind {
    /// TCP (NDJSON or WebSocket): admin acts need the auth token when `restrict_admin` is on.
    Tcp,
    /// Unix socket: file permissions already guard it, so it may force-unlock.
    Unix,
}

/// What the caller must do with a connection; see [`Core::poll_event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// Close it now; output not yet taken with [`Core::output`] is dropped
    /// (`version-mismatch-confirmed`).
    Close(ConnId),
    /// Send all its output, then close it (a refused auth, a version mismatch). Requests that
    /// arrive before then are still handled.
    CloseAfterFlush(ConnId),
}

/// The core's settings, taken from the `BrokerBuilder`.
pub(crate) struct Config {
    pub table: table::Config,
    pub limits: Limits,
    /// Opt-in (`--ack-timeout`): see [`acks`].
    pub ack_timeout: Option<Duration>,
    pub auth_token: Option<String>,
    pub restrict_admin: bool,
    /// The wall clock, read only for `pong`'s `serverTimestampMs` (tests pass a fixed one).
    pub wall_clock: fn() -> SystemTime,
    /// Most bytes one listing reply may take (`ls` pages, `lock-info`, `watch`): within the
    /// output cap, so that a reply never needs more than the cap.
    pub reply_budget: usize,
    /// When the broker started and its process id, for `system-stats` (`lmx status`).
    pub started: Instant,
    pub pid: u32,
}

/// A connection's protocol state. Its socket, framing and back-pressure belong to the reactor.
struct ConnState {
    id: ConnId,
    /// Encoded NDJSON lines not yet taken by the caller, from `out_pos` on.
    out: Vec<u8>,
    out_pos: usize,
    /// Sent `version`: a Node client, which acknowledges pushed grants with `lock-received`.
    node_client: bool,
    authed: bool,
    /// May force-unlock.
    admin: bool,
    /// `keepLocksAfterDeath` of the connection's `version` message (the Node client's
    /// constructor option): every lock of this connection outlives it, within its TTL.
    keep_default: bool,
    /// A close was already asked for with an [`Event`].
    closing: bool,
    /// Lock requests it made (its close then looks for them in `Core::route`).
    requests: usize,
    /// Listed in `Core::dirty`.
    dirty: bool,
    ident: Identity,
    opened: Instant,
}

/// The broker's lock protocol, without I/O.
///
/// # Contract
///
/// The caller (the reactor in `broker/reactor.rs`, or the in-memory `Pair` of the tests) owns
/// the connections' transports and drives the core:
///
/// - [`open`](Self::open) each connection once, before any message of it, with a [`ConnId`]
///   whose low 32 bits are a small index (a slab slot) unique among open connections; a reused
///   index needs different high bits (a generation), so that a grant for a dead connection is
///   never delivered to its successor.
/// - [`handle_message`](Self::handle_message) with each message received (one NDJSON line
///   without its newline, or one WebSocket message), in order.
/// - [`handle_timeout`](Self::handle_timeout) when [`poll_timeout`](Self::poll_timeout) has
///   passed. Calling it earlier, or more often, is harmless. `poll_timeout` changes after every
///   input, so ask it again before sleeping.
/// - [`close`](Self::close) each connection exactly once when its transport is gone, whether the
///   peer left, the caller cut it off, or an [`Event`] asked for it. Its locks are released
///   (unless kept after disconnect) and the next waiters granted.
///
/// After any of these inputs, and before sleeping, the caller drains the outputs:
///
/// - [`poll_event`](Self::poll_event) until `None`: connections to close.
/// - [`poll_transmit`](Self::poll_transmit) until `None`: each connection with new output, once.
///   For it, [`output`](Self::output) is the bytes to send: whole NDJSON lines, each ending
///   in `\n`. Encoded JSON never holds a raw newline, so a WebSocket transport sends each line
///   (without its `\n`) as one text message. [`consume`](Self::consume) says how many were
///   sent; the rest stays for later (a socket that would block). The length of `output` is the
///   connection's backlog, for back-pressure.
///
/// Closing a connection can grant its keys to others, so the caller loops: events, transmits,
/// until both are empty. Time is only ever the `now` passed in.
pub(crate) struct Core {
    store: Box<dyn Store>,
    route: route::Route,
    /// Lock requests, and unanswered ops, one connection may have in a store that answers
    /// later (the table enforces its own limit).
    max_per_conn: usize,
    /// By the low 32 bits of the `ConnId`.
    conns: Vec<Option<ConnState>>,
    open: usize,
    decoder: Decoder,
    /// Connections with output not yet listed by `poll_transmit`.
    dirty: Vec<ConnId>,
    events: VecDeque<Event>,
    /// Pushed grants to Node clients not yet acknowledged with `lock-received` (see [`acks`]).
    acks: HashMap<Name, PendingAck, RandomState>,
    /// Grants to probe, in push order (all share `PROBE_DELAY`).
    probe_order: VecDeque<(Instant, Name)>,
    ack_timeout: Option<Duration>,
    expiry_order: VecDeque<(Instant, Name)>,
    auth_token: Option<String>,
    restrict_admin: bool,
    wall_clock: fn() -> SystemTime,
    started: Instant,
    pid: u32,
    rw: LegacyRw,
    /// Mutex holds of legacy RW clients set aside while their RW request waits (see
    /// [`legacy_rw`]); their later unlock is answered as done.
    parked: HashMap<Name, ConnId, RandomState>,
    woken: Vec<(ConnId, Name, Name)>,
    counters: Counters,
    /// Identities of closed connections whose locks outlive them (kept after disconnect), so
    /// `lmx info` still says who took them; pruned as those locks go.
    departed: HashMap<ConnId, Identity, RandomState>,
    prune_departed_at: usize,
    /// Connections that sent `watch` (see [`watch`]).
    watchers: Vec<Watcher>,
    reply_budget: usize,
}

fn conn_slot(id: ConnId) -> usize {
    (id.0 & 0xffff_ffff) as usize
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

impl Core {
    pub(super) fn new(cfg: Config) -> Self {
        let rw = LegacyRw::new(cfg.table.max_requests_per_conn, cfg.table.max_keys);
        Core {
            max_per_conn: cfg.table.max_requests_per_conn,
            store: Box::new(MemStore::new(cfg.table)),
            route: route::Route::default(),
            conns: Vec::new(),
            open: 0,
            decoder: Decoder::new(cfg.limits),
            dirty: Vec::new(),
            events: VecDeque::new(),
            acks: HashMap::default(),
            probe_order: VecDeque::new(),
            ack_timeout: cfg.ack_timeout,
            expiry_order: VecDeque::new(),
            auth_token: cfg.auth_token,
            restrict_admin: cfg.restrict_admin,
            wall_clock: cfg.wall_clock,
            started: cfg.started,
            pid: cfg.pid,
            rw,
            parked: HashMap::default(),
            woken: Vec::new(),
            counters: Counters::default(),
            departed: HashMap::default(),
            prune_departed_at: 64,
            watchers: Vec::new(),
            reply_budget: cfg.reply_budget,
        }
    }

    /// Lock decisions go to `store` from now on (before any connection opens); the default is
    /// the in-memory table.
    pub(super) fn use_store(&mut self, store: Box<dyn Store>) {
        if store.answers_later() {
            self.route.count_load();
        }
        self.store = store;
    }

    /// A new connection. Without an auth token it may send any request at once.
    pub(super) fn open(&mut self, id: ConnId, kind: ConnKind, now: Instant) {
        let slot = conn_slot(id);
        if self.conns.len() <= slot {
            self.conns.resize_with(slot + 1, || None);
        }
        let state = ConnState {
            id,
            out: Vec::new(),
            out_pos: 0,
            node_client: false,
            authed: self.auth_token.is_none(),
            // Admin acts need the Unix socket (file permissions guard it) or a token.
            admin: !self.restrict_admin || kind == ConnKind::Unix,
            keep_default: false,
            closing: false,
            requests: 0,
            dirty: false,
            ident: Identity::default(),
            opened: now,
        };
        if self.conns[slot].replace(state).is_none() {
            self.open += 1;
            self.counters.opened += 1;
        }
    }

    /// The transport proved the auth token (a WebSocket upgrade whose `Authorization` header
    /// carried it): the same rights as a connection that sent `auth`, admin acts included.
    pub(super) fn authenticated(&mut self, id: ConnId) {
        if let Some(c) = self.state_mut(id) {
            c.authed = true;
            c.admin = true;
        }
    }

    /// The transport verified a client certificate (TLS with a client CA): it stands in for
    /// the auth token, admin rights included, as the token itself would give them.
    #[cfg(feature = "tls")]
    pub(super) fn trusted(&mut self, id: ConnId) {
        if let Some(c) = self.state_mut(id) {
            c.authed = true;
            c.admin = true;
        }
    }

    /// Has the connection proved itself (or is no token needed)?
    pub(super) fn is_authed(&self, id: ConnId) -> bool {
        self.state(id).is_some_and(|c| c.authed)
    }

    /// The connection is gone: the store releases exactly its holds, and its waiters' turns
    /// pass on.
    pub(super) fn close(&mut self, id: ConnId, now: Instant) {
        let slot = conn_slot(id);
        if self.state(id).is_none() {
            return;
        }
        let (ident, requests) = self.conns[slot]
            .take()
            .map_or((None, 0), |c| (Some(c.ident), c.requests));
        self.open -= 1;
        // The last connection is gone: give back what a flood of them made the list grow to.
        if self.open == 0 && self.conns.capacity() > 1024 {
            self.conns = Vec::new();
        }
        // Only what this connection has is looked at: its requests (and the acks and parked
        // holds, which are its requests' ids), never the other connections' (issue 20).
        if requests > 0 {
            for lock_id in self.route.disconnect(id) {
                if self.acks.get(&lock_id).is_some_and(|a| a.conn == id) {
                    self.acks.remove(&lock_id);
                }
                if self.parked.get(&lock_id) == Some(&id) {
                    self.parked.remove(&lock_id);
                }
            }
            self.log_close_releases(id, ident.as_ref());
        }
        self.store.submit(now, StoreOp::Disconnect { conn: id });
        if let Some(ident) = ident {
            self.depart(id, ident);
        }
        self.unwatch(id);
        let mut woken = std::mem::take(&mut self.woken);
        self.rw.disconnect(id, &mut woken);
        self.broadcast(&mut woken);
        self.woken = woken;
        self.poll_store(now);
    }

    /// Handles one message of `conn`: one JSON object, decoded in place (`msg` is scribbled on).
    /// True when it was a valid request (the transport's HTTP guard stops looking after one).
    pub(super) fn handle_message(&mut self, conn: ConnId, msg: &mut [u8], now: Instant) -> bool {
        let Some(slot) = self.slot_of(conn) else {
            return false;
        };
        match self.decoder.decode(msg) {
            Ok(req) => {
                self.handle(slot, conn, now, req);
                true
            }
            Err(e) => {
                self.reject(Reject::BadRequest);
                if let Some(c) = self.conn_at(slot) {
                    encode::decode_error(&e, &mut c.out);
                    c.out.push(b'\n');
                }
                self.mark_dirty(slot);
                false
            }
        }
    }

    /// No connection is open and the store holds nothing of this broker's (for `idle_exit`).
    pub(super) fn is_idle(&self) -> bool {
        self.open == 0 && self.store.is_idle()
    }

    /// Runs what is due at `now`: lock TTLs, wait deadlines, ack probes.
    pub(super) fn handle_timeout(&mut self, now: Instant) {
        self.store.handle_timeout(now);
        self.poll_store(now);
        self.ack_timers(now);
        if !self.watchers.is_empty() {
            self.watch_timers(now);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next run, if anything waits on time.
    pub(super) fn poll_timeout(&mut self) -> Option<Instant> {
        let store = self.store.poll_timeout();
        store
            .into_iter()
            .chain(self.next_ack_deadline())
            .chain(self.next_watch())
            .min()
    }

    /// The next connection to close; see [`Event`].
    pub(super) fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next connection with new output since the last call.
    pub(super) fn poll_transmit(&mut self) -> Option<ConnId> {
        while let Some(id) = self.dirty.pop() {
            if let Some(c) = self.state_mut(id) {
                c.dirty = false;
                return Some(id);
            }
        }
        None
    }

    /// The bytes waiting to be sent to `conn`: whole NDJSON lines. Empty for an unknown one.
    pub(super) fn output(&self, conn: ConnId) -> &[u8] {
        self.state(conn).map_or(&[], |c| &c.out[c.out_pos..])
    }

    /// The first `n` bytes of [`output`](Self::output) were sent.
    pub(super) fn consume(&mut self, conn: ConnId, n: usize) {
        let Some(c) = self.state_mut(conn) else {
            return;
        };
        c.out_pos = (c.out_pos + n).min(c.out.len());
        if c.out_pos == c.out.len() {
            c.out.clear();
            c.out_pos = 0;
            // Give back the memory of a one-off burst.
            if c.out.capacity() > 64 * 1024 {
                c.out.shrink_to(4096);
            }
        } else if c.out_pos > c.out.len() / 2 {
            c.out.drain(..c.out_pos);
            c.out_pos = 0;
        }
    }

    fn state(&self, id: ConnId) -> Option<&ConnState> {
        self.conns
            .get(conn_slot(id))
            .and_then(Option::as_ref)
            .filter(|c| c.id == id)
    }

    fn state_mut(&mut self, id: ConnId) -> Option<&mut ConnState> {
        self.conns
            .get_mut(conn_slot(id))
            .and_then(Option::as_mut)
            .filter(|c| c.id == id)
    }

    /// The index of a live connection with this id (ids carry their index in the low bits and
    /// a generation above, so a reused index never receives a dead connection's grant).
    fn slot_of(&self, id: ConnId) -> Option<usize> {
        self.state(id).map(|_| conn_slot(id))
    }

    fn conn_at(&mut self, slot: usize) -> Option<&mut ConnState> {
        self.conns.get_mut(slot).and_then(Option::as_mut)
    }

    fn mark_dirty(&mut self, slot: usize) {
        if let Some(c) = self.conns.get_mut(slot).and_then(Option::as_mut)
            && !std::mem::replace(&mut c.dirty, true)
        {
            self.dirty.push(c.id);
        }
    }

    /// Asks the caller to close the connection once its output is sent.
    fn close_after_flush(&mut self, slot: usize) {
        if let Some(c) = self.conn_at(slot)
            && !std::mem::replace(&mut c.closing, true)
        {
            let id = c.id;
            self.events.push_back(Event::CloseAfterFlush(id));
        }
    }

    /// Encodes `reply` as one line of the connection's output.
    fn send(&mut self, slot: usize, reply: &Reply<'_>) {
        let Some(c) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        reply.encode(&mut c.out);
        c.out.push(b'\n');
        if !std::mem::replace(&mut c.dirty, true) {
            self.dirty.push(c.id);
        }
    }

    /// Appends one encoded reply (without its newline) to the connection's output.
    fn send_line(&mut self, slot: usize, line: &[u8]) {
        if let Some(c) = self.conn_at(slot) {
            c.out.extend_from_slice(line);
            c.out.push(b'\n');
        }
        self.mark_dirty(slot);
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

    /// Handles one request of the connection at `slot`.
    fn handle(&mut self, slot: usize, cid: ConnId, now: Instant, req: Request<'_>) {
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
                if pid.is_some() {
                    c.ident.pid = pid;
                }
                c.keep_default = keep_locks_after_death;
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
                let kind = route::Awaited::Info(key.into());
                self.ask(slot, cid, now, Some(uuid), kind)
            }
            Request::Ping { uuid } => self.ping(slot, uuid),
            Request::SystemStats { uuid } => {
                self.ask(slot, cid, now, Some(uuid), route::Awaited::Stats)
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
            Request::Inspect { uuid, command } => self.ask(
                slot,
                cid,
                now,
                uuid,
                route::Awaited::Inspect(command.into()),
            ),
            Request::Hello { name, pid } => self.hello(slot, name, pid),
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
                    self.reject(Reject::Unauthenticated);
                    self.close_after_flush(slot);
                }
            }
        } else {
            self.reject(Reject::Unauthenticated);
            self.send_error(slot, req.ty(), req.uuid(), None, "authenticate first");
            self.close_after_flush(slot);
        }
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

fn ttl_of(t: proto::Ttl) -> table::Ttl {
    match t {
        proto::Ttl::BrokerDefault => table::Ttl::Default,
        proto::Ttl::Never => table::Ttl::Never,
        proto::Ttl::After(d) => table::Ttl::After(d),
    }
}

fn wait_of(now: Instant, try_lock: bool, timeout_ms: Option<u64>) -> table::Wait {
    match (try_lock, timeout_ms) {
        (true, _) => table::Wait::No,
        (false, Some(ms)) => table::Wait::Until(now + Duration::from_millis(ms)),
        (false, None) => table::Wait::Forever,
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
