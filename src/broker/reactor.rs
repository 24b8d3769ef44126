//! The poll loop: one thread, one `mio::Poll`, every connection's [`Socket`] in a `Slab`
//! (its slot is its `mio::Token` and the low bits of its [`ConnId`]). Each turn reads what
//! is ready into the [`Core`], runs the core's timers, then hands the core's output to the
//! sockets and closes what must close.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Poll, Token, Waker};
use slab::Slab;

use super::config::UdsListener;
use super::core::{Core, Event};
use super::flow::{Caps, Verdict};
use super::http_guard::{HttpPolicy, RefusalLog};
use super::transport::{Io, Socket};
use super::{BrokerBuilder, BrokerError};
use crate::table::ConnId;

pub(super) const WAKER: Token = Token(usize::MAX);
pub(super) const TCP_LISTENER: Token = Token(usize::MAX - 1);
pub(super) const UDS_LISTENER: Token = Token(usize::MAX - 2);
/// How often deadlines of connections (handshakes, stalled output) are checked while any exist.
const HOUSEKEEPING: Duration = Duration::from_millis(50);

/// A bound broker, not yet running; see [`Broker::run`] and [`Broker::spawn`].
pub struct Broker {
    pub(super) poll: Poll,
    pub(super) tcp: Option<TcpListener>,
    pub(super) uds: Option<UdsListener>,
    pub(super) waker: Arc<Waker>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) core: Core,
    pub(super) socks: Slab<Socket>,
    /// A WebSocket message, copied to be decoded in place.
    pub(super) scratch: Vec<u8>,
    /// Slots with output of the transport's own to flush this turn (see `Socket::queued`).
    pub(super) flush_list: Vec<usize>,
    /// Connections whose reading resumed (their output drained): read them next turn without
    /// waiting for a readiness event, which will not come for data already waiting.
    pub(super) resumed: Vec<(usize, ConnId)>,
    pub(super) local_addr: Option<SocketAddr>,
    pub(super) next_gen: u64,
    pub(super) needs_housekeeping: bool,
    pub(super) retry_accept: bool,
    /// Connections that had not proved themselves when accepted, oldest first (see
    /// `accept::evict_pending`).
    pub(super) pending_order: std::collections::VecDeque<(usize, ConnId)>,
    /// Held in reserve so that a connection can still be accepted (and refused) when the
    /// process runs out of descriptors.
    pub(super) spare_fd: Option<std::fs::File>,
    pub(super) warned_fds: bool,
    pub(super) warned_keepalive: bool,
    /// Host and Origin rules of HTTP requests (the WebSocket upgrade).
    pub(super) policy: Arc<HttpPolicy>,
    pub(super) refusals: RefusalLog,
    /// Since when the broker has had no connections and no locks (for `idle_exit`).
    pub(super) idle_since: Option<Instant>,
    /// For `/metrics` (see `metrics::IoCounters`).
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
    pub(super) turns: u64,
    pub(super) http_served: u64,
    /// Whether and how long to poll without sleeping after a busy turn.
    pub(super) spinner: super::spin::Spinner,
    pub(super) cfg: BrokerBuilder,
    /// The TLS configuration, if the broker has a certificate.
    #[cfg(feature = "tls")]
    pub(super) tls: Option<Arc<super::tls::ServerTls>>,
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
            self.turns += 1;
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
    pub(super) fn queue_flush(&mut self, slot: usize) {
        if let Some(s) = self.socks.get_mut(slot)
            && !std::mem::replace(&mut s.queued, true)
        {
            self.flush_list.push(slot);
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
    pub(super) fn caps(&self) -> Caps {
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
            self.bytes_out += n as u64;
            return Ok((n, done));
        }
        let out = self.core.output(sock.id);
        let (n, done) = sock.write_out(out)?;
        self.bytes_out += n as u64;
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
                            self.socks[slot].close_after_flush = true;
                            self.socks[slot].closing_why = "closed by the broker after its answer (auth refused or version mismatch)";
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
    pub(super) fn close(&mut self, slot: usize, now: Instant, why: &str) {
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

    pub(super) fn close_all(&mut self) {
        let now = Instant::now();
        let slots: Vec<usize> = self.socks.iter().map(|(s, _)| s).collect();
        for slot in slots {
            self.close(slot, now, "broker shutting down");
        }
        if let Some(u) = self.uds.take() {
            // Removed while the lock file is still held, so no newer broker's socket is hit.
            std::fs::remove_file(&u.path).ok();
        }
    }
}
