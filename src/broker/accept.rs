//! Taking new connections from the listeners: TCP keepalive, the connection cap, the spare descriptor that
//! lets the broker refuse a client cleanly when the process is out of descriptors, and the
//! registration of each socket with the poll and the core.

use std::io;
use std::time::Instant;

use mio::{Interest, Token};

use super::core::ConnKind;
use super::reactor::{Broker, TCP_LISTENER, UDS_LISTENER};
use super::transport::{Io, Socket, Stream};
use super::unix_peer::unix_peer;
use crate::table::ConnId;

impl Broker {
    /// Accepts every connection waiting on the listener `token`.
    pub(super) fn accept(&mut self, token: Token, now: Instant) {
        loop {
            let accepted = match token {
                TCP_LISTENER => match &self.tcp {
                    Some(l) => l.accept().map(|(s, peer)| {
                        s.set_nodelay(true).ok();
                        if let Some(k) = &self.cfg.keepalive
                            && let Err(e) = k.apply(&s)
                            && !self.warned_keepalive
                        {
                            self.warned_keepalive = true;
                            tracing::warn!("cannot set TCP keepalive: {e}");
                        }
                        (Io::Sniff(Stream::Tcp(s)), Some(peer))
                    }),
                    None => return,
                },
                _ => match &self.uds {
                    Some(u) => u
                        .listener
                        .accept()
                        .map(|(s, _)| (Io::Ndjson(Stream::Unix(s)), None)),
                    None => return,
                },
            };
            let (io, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_fd_exhaustion(&e) && self.spare_fd.take().is_some() => {
                    // Out of descriptors: the spare one makes room to accept the connection
                    // and close it at once, a refusal the client sees, instead of leaving it
                    // hanging in the backlog. Existing connections are untouched.
                    let refused = match token {
                        TCP_LISTENER => self.tcp.as_ref().map(|l| l.accept().is_ok()),
                        _ => self.uds.as_ref().map(|u| u.listener.accept().is_ok()),
                    };
                    self.spare_fd = std::fs::File::open("/dev/null").ok();
                    if refused != Some(true) {
                        self.retry_accept = true;
                        return;
                    }
                    if !self.warned_fds {
                        self.warned_fds = true;
                        tracing::warn!("out of file descriptors: refusing new connections");
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}; retrying shortly");
                    self.retry_accept = true;
                    return;
                }
            };
            self.warned_fds = false;
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
                self.announce(slot, "NDJSON");
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
    pub(super) fn prune_pending(&mut self) {
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

    /// Logs a connection's "opened" line once its framing is known (an HTTP request to
    /// `/metrics` or the page gets none, so a scraper does not flood the log).
    pub(super) fn announce(&mut self, slot: usize, framing: &str) {
        let Some(sock) = self.socks.get_mut(slot) else {
            return;
        };
        sock.announced = true;
        tracing::info!(
            conn = sock.id.0,
            peer = self.core.peer(sock.id).unwrap_or("?"),
            "connection opened ({framing})"
        );
    }
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}
