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
            if self.socks.len() >= self.cfg.max_connections {
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
            self.needs_housekeeping |= sock.handshaking();
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
