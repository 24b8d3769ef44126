//! Taking new connections from the listeners: TCP keepalive, and the spare descriptor that
//! lets the broker refuse a client cleanly when the process is out of descriptors. The reactor
//! (`Broker::accept`) applies the connection cap and registers each socket with the poll and
//! the core.

use std::io;
use std::net::SocketAddr;
use std::path::Path;

use mio::Token;
use mio::net::TcpListener;

use super::config::UdsListener;
use super::keepalive::Keepalive;
use super::reactor::TCP_LISTENER;
use super::stream::Stream;
use super::transport::Io;

/// The broker's listeners, and what accepting from them needs.
pub(super) struct Listeners {
    tcp: Option<TcpListener>,
    uds: Option<UdsListener>,
    keepalive: Option<Keepalive>,
    /// Held in reserve so that a connection can still be accepted (and refused) when the
    /// process runs out of descriptors.
    spare_fd: Option<std::fs::File>,
    warned_fds: bool,
    warned_keepalive: bool,
}

/// What one accept on a listener gave.
pub(super) enum Accepted {
    /// A new connection: its transport, and its TCP peer.
    Conn(Io, Option<SocketAddr>),
    /// Nothing this time (interrupted, or a connection refused for want of descriptors); there
    /// may be more.
    Again,
    /// No connection waits (or there is no such listener).
    Empty,
    /// Accepting failed: retry shortly.
    Retry,
}

impl Listeners {
    pub(super) fn new(
        tcp: Option<TcpListener>,
        uds: Option<UdsListener>,
        keepalive: Option<Keepalive>,
    ) -> Self {
        Listeners {
            tcp,
            uds,
            keepalive,
            spare_fd: std::fs::File::open("/dev/null").ok(),
            warned_fds: false,
            warned_keepalive: false,
        }
    }

    /// The Unix socket path it listens on.
    pub(super) fn uds_path(&self) -> Option<&Path> {
        self.uds.as_ref().map(|u| u.path.as_path())
    }

    /// Closes the Unix socket and removes its path.
    pub(super) fn remove_uds(&mut self) {
        if let Some(u) = self.uds.take() {
            // Removed while the lock file is still held, so no newer broker's socket is hit.
            std::fs::remove_file(&u.path).ok();
        }
    }

    /// Accepts one connection waiting on the listener `token`.
    pub(super) fn next(&mut self, token: Token) -> Accepted {
        let accepted = match token {
            TCP_LISTENER => match &self.tcp {
                Some(l) => l.accept().map(|(s, peer)| {
                    s.set_nodelay(true).ok();
                    if let Some(k) = &self.keepalive
                        && let Err(e) = k.apply(&s)
                        && !self.warned_keepalive
                    {
                        self.warned_keepalive = true;
                        tracing::warn!("cannot set TCP keepalive: {e}");
                    }
                    (Io::Sniff(Stream::Tcp(s)), Some(peer))
                }),
                None => return Accepted::Empty,
            },
            _ => match &self.uds {
                Some(u) => u
                    .listener
                    .accept()
                    .map(|(s, _)| (Io::Ndjson(Stream::Unix(s)), None)),
                None => return Accepted::Empty,
            },
        };
        match accepted {
            Ok((io, peer)) => {
                self.warned_fds = false;
                Accepted::Conn(io, peer)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Accepted::Empty,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Accepted::Again,
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
                    return Accepted::Retry;
                }
                if !self.warned_fds {
                    self.warned_fds = true;
                    tracing::warn!("out of file descriptors: refusing new connections");
                }
                Accepted::Again
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}; retrying shortly");
                Accepted::Retry
            }
        }
    }
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}
