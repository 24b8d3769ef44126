//! The poll loop: one thread, one `mio::Poll`, every connection's [`Socket`] in a `Slab`
//! (its slot is its `mio::Token` and the low bits of its [`ConnId`]). Each turn reads what
//! is ready into the [`Core`], runs the core's timers, then hands the core's output to the
//! sockets and closes what must close.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use super::accept::{Accepted, Listeners};
use super::config::UdsListener;
use super::core::{ConnKind, Core, Event};
use super::flow::{Caps, Verdict};
use super::handle::ShutdownHandle;
use super::http_guard::{HttpPolicy, RefusalLog};
use super::metrics::IoCounters;
use super::spin::Spinner;
use super::stream::Stream;
use super::transport::{Cx, Io, Socket, Step};
use super::unix_peer::unix_peer;
use super::{BrokerBuilder, BrokerError};
use crate::table::ConnId;

pub(super) const WAKER: Token = Token(usize::MAX);
pub(super) const TCP_LISTENER: Token = Token(usize::MAX - 1);
pub(super) const UDS_LISTENER: Token = Token(usize::MAX - 2);
/// How often deadlines of connections (handshakes, stalled output) are checked while any exist.
const HOUSEKEEPING: Duration = Duration::from_millis(50);

/// A bound broker, not yet running; see [`Broker::run`] and [`Broker::spawn`].
///
/// Its fields are the reactor's alone: a socket's readers (`transport.rs`, `http.rs`,
/// `tls.rs`) borrow what they need for one event (`Cx`) and report what must happen
/// (`Step`); only the loop adds and removes connections.
pub struct Broker {
    poll: Poll,
    listeners: Listeners,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    core: Core,
    socks: Slab<Socket>,
    /// A WebSocket message, copied to be decoded in place.
    scratch: Vec<u8>,
    /// Slots with output of the transport's own to flush this turn (see `Socket::queued`).
    flush_list: Vec<usize>,
    /// Connections whose reading resumed (their output drained): read them next turn without
    /// waiting for a readiness event, which will not come for data already waiting.
    resumed: Vec<(usize, ConnId)>,
    local_addr: Option<SocketAddr>,
    next_gen: u64,
    needs_housekeeping: bool,
    retry_accept: bool,
    /// Connections that had not proved themselves when accepted, oldest first (see
    /// `evict_pending`).
    pending_order: VecDeque<(usize, ConnId)>,
    /// Host and Origin rules of HTTP requests (the WebSocket upgrade).
    policy: Arc<HttpPolicy>,
    refusals: RefusalLog,
    /// Since when the broker has had no connections and no locks (for `idle_exit`).
    idle_since: Option<Instant>,
    /// For `/metrics`: bytes in and out, turns, HTTP requests answered.
    io: IoCounters,
    /// Whether and how long to poll without sleeping after a busy turn.
    spinner: Spinner,
    cfg: BrokerBuilder,
    /// The TLS configuration, if the broker has a certificate.
    #[cfg(feature = "tls")]
    tls: Option<Arc<super::tls::ServerTls>>,
}

/// What `BrokerBuilder::bind` made, for [`Broker::new`].
pub(super) struct Bound {
    pub poll: Poll,
    pub tcp: Option<TcpListener>,
    pub uds: Option<UdsListener>,
    pub waker: Arc<Waker>,
    pub core: Core,
    pub local_addr: Option<SocketAddr>,
    pub policy: Arc<HttpPolicy>,
    pub cfg: BrokerBuilder,
    #[cfg(feature = "tls")]
    pub tls: Option<Arc<super::tls::ServerTls>>,
}

impl Broker {
    pub(super) fn new(b: Bound) -> Broker {
        Broker {
            poll: b.poll,
            listeners: Listeners::new(b.tcp, b.uds, b.cfg.keepalive),
            waker: b.waker,
            stop: Arc::new(AtomicBool::new(false)),
            core: b.core,
            socks: Slab::new(),
            scratch: Vec::with_capacity(1024),
            flush_list: Vec::new(),
            resumed: Vec::new(),
            local_addr: b.local_addr,
            next_gen: 1,
            needs_housekeeping: false,
            retry_accept: false,
            pending_order: VecDeque::new(),
            policy: b.policy,
            refusals: RefusalLog::new(),
            idle_since: Some(Instant::now()),
            io: IoCounters::default(),
            spinner: Spinner::new(b.cfg.spin),
            cfg: b.cfg,
            #[cfg(feature = "tls")]
            tls: b.tls,
        }
    }

    /// The TCP address actually bound (useful after binding port 0); `None` without TCP.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The Unix socket path it listens on; `None` when it has no Unix socket.
    pub fn uds_path(&self) -> Option<&Path> {
        self.listeners.uds_path()
    }

    /// A handle that stops the broker from any thread, taken before [`Broker::run`] consumes it.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle::new(self.waker.clone(), self.stop.clone())
    }

    /// A handle that reloads the TLS files (`None` without TLS). `lmx start` calls it on SIGHUP.
    #[cfg(feature = "tls")]
    pub fn tls_reloader(&self) -> Option<super::TlsReloader> {
        self.tls.clone().map(super::TlsReloader::new)
    }
}

impl Broker {
    /// Runs the broker on this thread until shut down.
    pub fn run(mut self) -> Result<(), BrokerError> {
        if let Some(cap) = self.cfg.fd_cap.take() {
            cap.log();
        }
        let mut events = Events::with_capacity(1024);
        let mut busy = false;
        loop {
            let timeout = self.next_timeout(Instant::now());
            let spun = busy && self.resumed.is_empty() && self.spin(&mut events)?;
            if !spun && let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            busy = !events.is_empty();
            self.io.turns += 1;
            let now = Instant::now();
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    TCP_LISTENER | UDS_LISTENER => self.accept(ev.token(), now),
                    Token(slot) => {
                        if ev.is_writable() {
                            self.on_writable(slot, now);
                        }
                        if (ev.is_read_closed() || ev.is_error())
                            && let Some(s) = self.socks.get_mut(slot)
                        {
                            s.peer_closed = true;
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.on_readable(slot, now);
                        }
                    }
                }
            }
            for (slot, id) in std::mem::take(&mut self.resumed) {
                if self.socks.get(slot).is_some_and(|s| s.id == id) {
                    self.on_readable(slot, now);
                }
            }
            // The end of a loop turn: stop, retries, timers, flushes.
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            if self.retry_accept {
                self.retry_accept = false;
                self.accept(TCP_LISTENER, now);
                self.accept(UDS_LISTENER, now);
            }
            self.core.poll_store(now);
            self.core.handle_timeout(now);
            if self.needs_housekeeping {
                self.housekeeping(now);
            }
            self.end_turn(now);
            if self.idle_expired(now) {
                tracing::info!("idle: no connections and no locks for the idle time, exiting");
                break;
            }
        }
        self.close_all();
        Ok(())
    }

    /// After a busy turn, polls without sleeping for as long as the spinner allows (see
    /// `spin.rs`: only while recent spins found work): the next request of a client in a
    /// lock/unlock loop usually arrives within microseconds, and catching it awake saves the
    /// broker a sleep and a wake-up. An idle broker never spins (it only spins after a turn
    /// that had events). True when events arrived.
    fn spin(&mut self, events: &mut Events) -> io::Result<bool> {
        let Some(budget) = self.spinner.budget() else {
            return Ok(false);
        };
        let start = Instant::now();
        let until = start + budget;
        loop {
            match self.poll.poll(events, Some(Duration::ZERO)) {
                Ok(()) if !events.is_empty() => {
                    let t = start.elapsed();
                    self.spinner.record(Some(t), t);
                    return Ok(true);
                }
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            if Instant::now() >= until {
                self.spinner.record(None, start.elapsed());
                return Ok(false);
            }
            std::hint::spin_loop();
        }
    }

    /// Tracks idleness (no connection, nothing in the table) and says whether it has lasted
    /// the configured `idle_exit`.
    fn idle_expired(&mut self, now: Instant) -> bool {
        let Some(limit) = self.cfg.idle_exit else {
            return false;
        };
        if !self.socks.is_empty() || !self.core.is_idle() {
            self.idle_since = None;
            return false;
        }
        let since = *self.idle_since.get_or_insert(now);
        now.duration_since(since) >= limit
    }

    fn next_timeout(&mut self, now: Instant) -> Option<Duration> {
        if !self.resumed.is_empty() {
            return Some(Duration::ZERO);
        }
        let mut next = self.core.poll_timeout();
        if let (Some(limit), Some(since)) = (self.cfg.idle_exit, self.idle_since) {
            next = Some(next.map_or(since + limit, |n| n.min(since + limit)));
        }
        if self.needs_housekeeping || self.retry_accept {
            let t = now + HOUSEKEEPING;
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        // Round up: waking a hair early would only spin until the deadline.
        next.map(|t| t.saturating_duration_since(now) + Duration::from_micros(200))
    }

    /// The slot of a live socket with this id.
    fn slot_of(&self, id: ConnId) -> Option<usize> {
        let slot = (id.0 & 0xffff_ffff) as usize;
        self.socks.get(slot).filter(|s| s.id == id).map(|_| slot)
    }

    /// Lists a slot for this turn's flush, for output that is the transport's own.
    fn queue_flush(&mut self, slot: usize) {
        if let Some(s) = self.socks.get_mut(slot) {
            s.flush_wanted = false;
            if !std::mem::replace(&mut s.queued, true) {
                self.flush_list.push(slot);
            }
        }
    }

    /// Reads and handles everything the connection at `slot` has sent (see
    /// `Socket::on_readable`), then does what its reader reported.
    fn on_readable(&mut self, slot: usize, now: Instant) {
        let caps = self.caps();
        let Some(sock) = self.socks.get_mut(slot) else {
            return;
        };
        let mut cx = Cx {
            core: &mut self.core,
            now,
            caps,
            cfg: &self.cfg,
            policy: &self.policy,
            refusals: &mut self.refusals,
            scratch: &mut self.scratch,
            io: &mut self.io,
            spinner: &self.spinner,
            #[cfg(feature = "tls")]
            tls: self.tls.as_ref(),
        };
        let step = sock.on_readable(&mut cx);
        if sock.flow.is_paused() {
            // Its output backed up: the stall deadline is armed.
            self.needs_housekeeping = true;
        }
        match step {
            Step::Keep if sock.flush_wanted => self.queue_flush(slot),
            Step::Keep => {}
            Step::Close(why) => self.close(slot, now, &why),
        }
    }

    fn on_writable(&mut self, slot: usize, now: Instant) {
        let Some(sock) = self.socks.get(slot) else {
            return;
        };
        if matches!(sock.io, Io::Handshake(..)) {
            return self.on_readable(slot, now);
        }
        self.flush_and_judge(slot, now);
    }

    /// The back-pressure limits of every connection.
    fn caps(&self) -> Caps {
        Caps {
            soft: self.cfg.out_soft,
            hard: self.cfg.out_hard,
            stall: self.cfg.stall_timeout,
        }
    }

    /// Writes what the socket takes of the connection's output, then settles its state: close
    /// it if it asked to be once flushed, or if its backlog passed the hard cap; pause or
    /// resume its reading (see `flow`). Every write goes through here, so a pause always ends
    /// when the output drains, whichever write drained it.
    fn flush_and_judge(&mut self, slot: usize, now: Instant) {
        let res = self.flush(slot);
        let caps = self.caps();
        let Some(sock) = self.socks.get_mut(slot) else {
            return;
        };
        let (sent, done) = match res {
            Ok(r) => r,
            Err(_) => return self.close(slot, now, "write failed"),
        };
        if done && sock.close_after_flush {
            let why = sock.closing_why;
            return self.close(slot, now, why);
        }
        let backlog = self.core.output(sock.id).len();
        match sock.flow.after_write(backlog, sent, &caps, now) {
            Verdict::Keep => {
                if sock.flow.is_paused() {
                    self.needs_housekeeping = true;
                }
            }
            Verdict::Resume => self.resumed.push((slot, sock.id)),
            Verdict::CutOff => self.close(slot, now, "its output backed up past the cap"),
        }
    }

    /// Writes what the socket takes of the core's output: the bytes sent, and whether
    /// everything went out.
    fn flush(&mut self, slot: usize) -> io::Result<(usize, bool)> {
        let Some(sock) = self.socks.get_mut(slot) else {
            return Ok((0, true));
        };
        if let Io::Http(_) = sock.io {
            let (n, done) = sock.write_http()?;
            self.io.bytes_out += n as u64;
            return Ok((n, done));
        }
        let out = self.core.output(sock.id);
        let (n, done) = sock.write_out(out)?;
        self.io.bytes_out += n as u64;
        self.core.consume(sock.id, n);
        Ok((n, done))
    }

    /// Closes what the core asks to close, flushes what was written this turn.
    fn end_turn(&mut self, now: Instant) {
        // Closing a connection releases its locks and may push grants to others, which makes
        // them dirty in turn: repeat until nothing is left to flush. One list serves the turn,
        // and the next ones: the transport's own entries, then the core's.
        let mut slots = std::mem::take(&mut self.flush_list);
        loop {
            while let Some(ev) = self.core.poll_event() {
                match ev {
                    Event::Close(id) => {
                        if let Some(slot) = self.slot_of(id) {
                            self.close(slot, now, "it confirmed the version mismatch");
                        }
                    }
                    Event::CloseAfterFlush(id) => {
                        if let Some(slot) = self.slot_of(id) {
                            self.socks[slot].close_when_flushed("closed by the broker after its answer (auth refused or version mismatch)");
                            self.queue_flush(slot);
                        }
                    }
                }
            }
            slots.append(&mut self.flush_list);
            while let Some(id) = self.core.poll_transmit() {
                if let Some(slot) = self.slot_of(id) {
                    slots.push(slot);
                }
            }
            if slots.is_empty() {
                break;
            }
            for slot in slots.drain(..) {
                let Some(sock) = self.socks.get_mut(slot) else {
                    continue;
                };
                sock.queued = false;
                self.flush_and_judge(slot, now);
            }
        }
        // Keep the allocation for the next turn (everything queued meanwhile was taken).
        self.flush_list = slots;
    }

    /// Cuts off connections that are stuck in a handshake (or, with an auth token, have not
    /// authenticated) or never read their output.
    fn housekeeping(&mut self, now: Instant) {
        let caps = self.caps();
        let mut doomed = Vec::new();
        let mut watching = false;
        let token = self.cfg.auth_token.is_some();
        for (slot, s) in &self.socks {
            if s.pending(token) {
                if now.duration_since(s.opened) > self.cfg.handshake_timeout {
                    doomed.push(slot);
                } else {
                    watching = true;
                }
            } else if s.flow.stalled_out(&caps, now) {
                doomed.push(slot);
            } else if s.flow.is_paused() {
                watching = true;
            }
        }
        self.needs_housekeeping = watching;
        for slot in doomed {
            self.close(
                slot,
                now,
                "handshake, authentication or stalled output timed out",
            );
        }
        self.prune_pending();
    }

    /// Closes the socket at `slot` and tells the core, which releases its locks. Logs one
    /// line with the peer and `why`.
    fn close(&mut self, slot: usize, now: Instant, why: &str) {
        if !self.socks.contains(slot) {
            return;
        }
        let mut sock = self.socks.remove(slot);
        if sock.announced {
            tracing::info!(
                conn = sock.id.0,
                peer = self.core.peer(sock.id).unwrap_or("?"),
                name = self.core.client_name(sock.id).unwrap_or(""),
                "connection closed: {why}"
            );
        }
        if let Some(s) = sock.stream_mut() {
            self.poll.registry().deregister(s).ok();
        }
        let id = sock.id;
        drop(sock);
        self.core.close(id, now);
        // The last connection is gone: give back what a flood of them made the slab grow to.
        if self.socks.is_empty() && self.socks.capacity() > 1024 {
            self.socks.shrink_to_fit();
        }
    }

    fn close_all(&mut self) {
        let now = Instant::now();
        let slots: Vec<usize> = self.socks.iter().map(|(s, _)| s).collect();
        for slot in slots {
            self.close(slot, now, "broker shutting down");
        }
        self.listeners.remove_uds();
    }

    /// Accepts every connection waiting on the listener `token`, up to the connection cap.
    fn accept(&mut self, token: Token, now: Instant) {
        loop {
            let (io, peer) = match self.listeners.next(token) {
                Accepted::Conn(io, peer) => (io, peer),
                Accepted::Again => continue,
                Accepted::Empty => return,
                Accepted::Retry => {
                    self.retry_accept = true;
                    return;
                }
            };
            if self.socks.len() >= self.cfg.max_connections && !self.evict_pending(now) {
                drop(io); // refused: closing at once is the clean answer a client can see
                continue;
            }
            let entry = self.socks.vacant_entry();
            let slot = entry.key();
            let id = ConnId((self.next_gen << 32) | slot as u64);
            self.next_gen += 1;
            let mut sock = Socket::new(id, io, self.cfg.max_line, now);
            sock.peer = peer;
            let Some(stream) = sock.stream_mut() else {
                continue;
            };
            if self
                .poll
                .registry()
                .register(stream, Token(slot), Interest::READABLE | Interest::WRITABLE)
                .is_err()
            {
                continue;
            }
            if sock.pending(self.cfg.auth_token.is_some()) {
                self.needs_housekeeping = true;
                self.pending_order.push_back((slot, id));
            }
            entry.insert(sock);
            let kind = if token == UDS_LISTENER {
                ConnKind::Unix
            } else {
                ConnKind::Tcp
            };
            self.core.open(id, kind, now);
            let who = match (peer, &self.socks[slot].io) {
                (Some(p), _) => p.to_string(),
                (None, Io::Ndjson(Stream::Unix(s))) => unix_peer(s),
                (None, _) => "?".to_string(),
            };
            self.core.set_peer(id, who);
            if kind == ConnKind::Unix {
                self.socks[slot].announce(&self.core, "NDJSON");
            }
        }
    }

    /// The broker is full: closes the oldest connection that has not proved itself yet (see
    /// `Socket::pending`), so that connections which never authenticate, or never finish a
    /// handshake, cannot keep a newcomer out. Connections that did are never closed for room.
    /// True when one was closed.
    ///
    /// `pending_order` lists connections in the order they were accepted; an entry that has
    /// since proved itself or closed is dropped when it reaches the front, so each costs O(1).
    fn evict_pending(&mut self, now: Instant) -> bool {
        let token = self.cfg.auth_token.is_some();
        while let Some((slot, id)) = self.pending_order.pop_front() {
            if self
                .socks
                .get(slot)
                .is_some_and(|s| s.id == id && s.pending(token))
            {
                self.close(slot, now, "closed for a newcomer: the broker is full and this connection had not authenticated or finished its handshake");
                return true;
            }
        }
        false
    }

    /// Drops the entries of `pending_order` at its front that are no longer pending, so that
    /// it holds no more than the connections accepted since its oldest pending one.
    fn prune_pending(&mut self) {
        let token = self.cfg.auth_token.is_some();
        while let Some(&(slot, id)) = self.pending_order.front() {
            if self
                .socks
                .get(slot)
                .is_some_and(|s| s.id == id && s.pending(token))
            {
                return;
            }
            self.pending_order.pop_front();
        }
    }
}
