//! The broker minus its sockets: a sans-IO state machine in the style of quinn-proto's
//! `Connection`. Messages and time go in; bytes to send per connection and close requests come
//! out. Nothing here touches a socket, reads a clock, or knows about WebSocket.
//!
//! Lock state lives in a [`Store`] (the in-memory table, or etcd), which the core only talks
//! to through ops and events: [`requests`] turns requests into ops, [`answers`] turns the
//! store's events into replies, the same way for every store; with this file they are the
//! only ones that hold `impl Core`. The rest of the core's state is owned by types of their
//! own, which `Core` holds and calls (quinn's `Connection` and its `StreamsState`):
//! [`route::Route`] (requests the store is working on), [`acks::Acks`] (the ack probes of
//! pushed grants), [`legacy_rw::LegacyRw`] (the 0.2.x read/write protocol, for a store no
//! other broker shares), [`identity::Identities`] (who holds what), [`watch::Watchers`]
//! (live snapshots, asked of the store like any answer),
//! [`counters::Counters`]; [`events`] writes lock events to the log and [`listing`] encodes
//! `ls` pages.

mod acks;
mod answers;
mod counters;
mod events;
mod identity;
mod legacy_rw;
mod listing;
mod requests;
mod route;
#[cfg(test)]
mod tests;
mod watch;

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use crate::proto::encode::{self, LockOutcome as WireLock};
use crate::proto::{self, Decoder, Limits, Reply};
use crate::store::{MemStore, Snapshot, Store, StoreError, StoreOp};
use crate::table::{self, ConnId, Longest};
use acks::Acks;
pub(crate) use counters::{CoreMetrics, Counters, Reject, STUCK_KEYS};
use identity::{Identities, Viewer};
use legacy_rw::LegacyRw;
use watch::Watchers;

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
    acks: Acks,
    auth_token: Option<String>,
    restrict_admin: bool,
    wall_clock: fn() -> SystemTime,
    started: Instant,
    pid: u32,
    rw: LegacyRw,
    counters: Counters,
    idents: Identities,
    watchers: Watchers,
    reply_budget: usize,
}

fn conn_slot(id: ConnId) -> usize {
    (id.0 & 0xffff_ffff) as usize
}

/// The place of connection `id` in a list by slot, grown to hold it.
fn slot_entry<T>(list: &mut Vec<Option<T>>, id: ConnId) -> &mut Option<T> {
    let slot = conn_slot(id);
    if list.len() <= slot {
        list.resize_with(slot + 1, || None);
    }
    &mut list[slot]
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
            acks: Acks::new(cfg.ack_timeout),
            auth_token: cfg.auth_token,
            restrict_admin: cfg.restrict_admin,
            wall_clock: cfg.wall_clock,
            started: cfg.started,
            pid: cfg.pid,
            rw,
            counters: Counters::default(),
            idents: Identities::new(),
            watchers: Watchers::default(),
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
        };
        if slot_entry(&mut self.conns, id).replace(state).is_none() {
            self.open += 1;
            self.counters.opened += 1;
        }
        self.idents.open(id, now);
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
        let requests = self.conns[slot].take().map_or(0, |c| c.requests);
        self.open -= 1;
        // The last connection is gone: give back what a flood of them made the list grow to.
        if self.open == 0 && self.conns.capacity() > 1024 {
            self.conns = Vec::new();
        }
        let ident = self.idents.close(id);
        // Only what this connection has is looked at: its requests (and the acks and parked
        // holds, which are its requests' ids), never the other connections' (issue 20).
        if requests > 0 {
            for lock_id in self.route.disconnect(id) {
                self.acks.settle(id, &lock_id);
                self.rw.unpark(id, &lock_id);
            }
            let store = &self.store;
            events::close_releases(id, ident.as_ref(), || store.releasable_holds(id));
        }
        self.store.submit(now, StoreOp::Disconnect { conn: id });
        if let Some(ident) = ident {
            let store = &self.store;
            self.idents.depart(id, ident, |c| store.knows_conn(c));
        }
        self.watchers.remove(id);
        let mut woken = Vec::new();
        self.rw.disconnect(id, &mut woken);
        self.broadcast(woken);
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
                self.counters.reject(Reject::BadRequest);
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
            .chain(self.acks.next_deadline())
            .chain(self.watchers.next_due())
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

    /// The transport tells who the peer is (`127.0.0.1:5000`, `pid 42 uid 1000`).
    pub(crate) fn set_peer(&mut self, id: ConnId, peer: String) {
        self.idents.set_peer(id, peer);
    }

    /// The peer as set by [`set_peer`](Self::set_peer), for logs.
    pub(crate) fn peer(&self, id: ConnId) -> Option<&str> {
        self.idents.peer(id)
    }

    /// The name the client gave, for logs.
    pub(crate) fn client_name(&self, id: ConnId) -> Option<&str> {
        self.idents.name(id)
    }

    /// A reading of the counters, for `/metrics`. A store that cannot read its gauges without
    /// I/O (etcd) shows the totals of its latest snapshot, and is asked for a fresh one when
    /// they are a second old: its answer serves the next scrape.
    pub(crate) fn metrics(&mut self, now: Instant) -> CoreMetrics {
        let (stats, longest, reading_age) = match self.store.gauges(now) {
            Some(g) => (g.stats, g.longest, None),
            None => {
                let (reading, ask) = self.watchers.reading(now);
                if let Some(tag) = ask {
                    self.ask_snapshot(now, tag);
                }
                let age = reading.as_ref().map(|r| r.0);
                let stats = reading.map(|r| r.1).unwrap_or_default();
                (stats, Longest::default(), Some(age))
            }
        };
        CoreMetrics {
            table: stats,
            counters: self.counters,
            connections: self.open,
            watchers: self.watchers.len(),
            longest,
            reading_age,
        }
    }

    /// Runs the acknowledgement timers that are due (see `acks.rs`): ack probes, and the
    /// opt-in release of unacknowledged pushes (`ack_timeout`).
    fn ack_timers(&mut self, now: Instant) {
        while let Some((conn, key, id)) = self.acks.next_probe(now) {
            self.send_probe(conn, &key, &id);
        }
        while let Some((conn, key, id)) = self.acks.next_expired(now) {
            if self.give_back(now, conn, &key, &id) {
                let t = self.acks.timeout().unwrap_or_default();
                tracing::warn!(
                    "grant {id} of key {key:?} was not acknowledged within {} ms: released \
                     (--ack-timeout)",
                    t.as_millis()
                );
            }
        }
        self.poll_store(now);
    }

    /// Asks a Node client whether it took a pushed grant it has not acknowledged: the probe is
    /// a grant for a request the client never made, which the 0.2.x client answers with
    /// `lock-received-rejected` and nothing else. The client reads its socket in order and
    /// acknowledges an accepted grant from the same handler, before it reads the next line;
    /// so a probe answered while the grant is still unacknowledged proves that the client read
    /// the grant and dropped it (a try-lock it gave up on). A client whose event loop is
    /// stalled answers nothing until it has read, and acknowledged, the grant first.
    fn send_probe(&mut self, conn: ConnId, key: &str, id: &str) {
        let Some(slot) = self.slot_of(conn) else {
            return;
        };
        let uuid = format!("{}{id}", acks::PROBE_PREFIX);
        self.send(
            slot,
            &Reply::Lock {
                uuid: &uuid,
                key,
                outcome: WireLock::Granted {
                    fencing_token: None,
                },
                lock_request_count: 0,
                readers_count: 0,
            },
        );
    }

    /// Asks for the `watch` snapshots that are due; a watcher with a backlog skips its tick.
    fn watch_timers(&mut self, now: Instant) {
        for (conn, uuid) in self.watchers.due(now) {
            if self.output(conn).len() <= watch::MAX_BACKLOG {
                self.want_snapshot(now, conn, &uuid);
            }
        }
        self.poll_store(now);
    }

    /// Watcher `conn` gets the next snapshot the store answers, sent with `uuid`.
    fn want_snapshot(&mut self, now: Instant, conn: ConnId, uuid: &str) {
        if let Some(tag) = self.watchers.want(conn, uuid) {
            self.ask_snapshot(now, tag);
        }
    }

    fn ask_snapshot(&mut self, now: Instant, tag: u64) {
        let max_keys = watch::MAX_LISTED;
        self.store.submit(now, StoreOp::Snapshot { tag, max_keys });
    }

    /// The store's answer to snapshot `tag`: one `watch` line for each watcher waiting, as it
    /// may see it.
    fn send_snapshots(&mut self, now: Instant, tag: u64, locks: Result<Snapshot, StoreError>) {
        let stats = locks.as_ref().ok().map(|l| &l.stats);
        let Some(waiting) = self.watchers.answered(tag, now, stats) else {
            return;
        };
        let wall = (self.wall_clock)();
        for (conn, uuid) in waiting {
            let Some(slot) = self.slot_of(conn) else {
                continue;
            };
            let locks = match &locks {
                Ok(l) => l,
                Err(e) => {
                    self.send_error(slot, "watch", Some(&uuid), None, &e.to_string());
                    continue;
                }
            };
            let scene = watch::Scene {
                wall,
                locks,
                connections: self.open,
                unlocks: self.counters.unlocks,
                budget: self.reply_budget,
                idents: &self.idents,
                watchers: &self.watchers,
            };
            let line = watch::snapshot(&scene, self.viewer(conn), now, &uuid);
            self.send_line(slot, &line);
        }
    }

    /// Connection `id` as the viewer of a listing.
    fn viewer(&self, id: ConnId) -> Viewer {
        let admin = self.state(id).is_some_and(|c| c.admin);
        Viewer { id, admin }
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
