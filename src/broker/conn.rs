//! One client connection: its socket, its framing (NDJSON or WebSocket), and its output.
//!
//! Replies are appended to `out` (NDJSON) or queued in tungstenite (WebSocket) while a loop turn
//! runs, and flushed once at its end, so a burst of pipelined requests costs one `write`.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Instant;

use mio::net::{TcpStream, UnixStream};
use tungstenite::handshake::MidHandshake;
use tungstenite::handshake::server::{Callback, ErrorResponse, Request, Response, ServerHandshake};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use super::http_guard::HttpPolicy;
use crate::proto::ndjson::LineFramer;
use crate::table::ConnId;

/// A stream socket of either family; both carry the same framings.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl mio::event::Source for Stream {
    fn register(&mut self, r: &mio::Registry, t: mio::Token, i: mio::Interest) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.register(r, t, i),
            Stream::Unix(s) => s.register(r, t, i),
        }
    }
    fn reregister(&mut self, r: &mio::Registry, t: mio::Token, i: mio::Interest) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.reregister(r, t, i),
            Stream::Unix(s) => s.reregister(r, t, i),
        }
    }
    fn deregister(&mut self, r: &mio::Registry) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.deregister(r),
            Stream::Unix(s) => s.deregister(r),
        }
    }
}

pub(crate) type Handshake = MidHandshake<ServerHandshake<Stream, UpgradeCheck>>;

/// Judges the upgrade request: first its Host and Origin (403 when a web page or a
/// DNS-rebinding name is behind it), then, when the broker has a token, its
/// `Authorization: Bearer <token>` (401). Either failure ends the handshake and the connection.
pub(crate) struct UpgradeCheck {
    pub policy: Arc<HttpPolicy>,
    pub token: Option<Arc<str>>,
}

impl Callback for UpgradeCheck {
    fn on_request(self, req: &Request, resp: Response) -> Result<Response, ErrorResponse> {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        if let Err(why) = self.policy.check(header("host"), header("origin")) {
            let mut e = ErrorResponse::new(Some(why.to_string()));
            *e.status_mut() = tungstenite::http::StatusCode::FORBIDDEN;
            return Err(e);
        }
        let Some(token) = self.token else {
            return Ok(resp);
        };
        let given = header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if super::dispatch::constant_time_eq(given.as_bytes(), token.as_bytes()) {
            Ok(resp)
        } else {
            let mut e = ErrorResponse::new(Some("missing or wrong auth token".into()));
            *e.status_mut() = tungstenite::http::StatusCode::UNAUTHORIZED;
            Err(e)
        }
    }
}

/// Where the connection is in its life.
pub(crate) enum Io {
    /// TCP, nothing read yet: the first byte picks the framing.
    Sniff(Stream),
    Ndjson(Stream),
    /// WebSocket upgrade in progress (it may need several reads).
    Handshake(Box<Handshake>),
    Ws(Box<WebSocket<Stream>>),
    /// Taken out while changing state; never seen between calls.
    Gone,
}

pub(crate) struct Conn {
    pub id: ConnId,
    pub io: Io,
    pub framer: LineFramer,
    /// NDJSON replies not yet written, from `out_pos` on.
    pub out: Vec<u8>,
    pub out_pos: usize,
    pub opened: Instant,
    /// Sent `version`: a Node client, which acknowledges pushed grants with `lock-received`.
    pub node_client: bool,
    pub authed: bool,
    /// Output is backed up: reading stopped at this instant.
    pub stalled_since: Option<Instant>,
    /// Close once the output is flushed (after a `version-mismatch`).
    pub close_after_flush: bool,
    /// WebSocket output that the socket did not take yet.
    pub ws_unflushed: bool,
    /// Listed for the end-of-turn flush.
    pub dirty: bool,
    /// May force-unlock.
    pub admin: bool,
    /// `keepLocksAfterDeath` of the connection's `version` message (the Node client's
    /// constructor option): every lock of this connection outlives it, within its TTL.
    pub keep_default: bool,
    /// The peer closed its side (or the socket failed): read to the end, never stop at a short
    /// read, since no further readiness event will come.
    pub peer_closed: bool,
    /// Sent a valid request: its lines are no longer checked for HTTP (see `http_guard`).
    pub vetted: bool,
    /// The TCP peer (None on the Unix socket), for logs.
    pub peer: Option<std::net::SocketAddr>,
}

impl Conn {
    pub fn new(id: ConnId, io: Io, max_line: usize, now: Instant, authed: bool) -> Self {
        Conn {
            id,
            io,
            framer: LineFramer::new(max_line),
            out: Vec::new(),
            out_pos: 0,
            opened: now,
            node_client: false,
            authed,
            stalled_since: None,
            close_after_flush: false,
            ws_unflushed: false,
            dirty: false,
            admin: true,
            keep_default: false,
            peer_closed: false,
            vetted: false,
            peer: None,
        }
    }

    pub fn handshaking(&self) -> bool {
        matches!(self.io, Io::Sniff(_) | Io::Handshake(_))
    }

    /// Bytes of output waiting for the socket.
    pub fn backlog(&self) -> usize {
        self.out.len() - self.out_pos
    }

    pub fn stream_mut(&mut self) -> Option<&mut Stream> {
        match &mut self.io {
            Io::Sniff(s) | Io::Ndjson(s) => Some(s),
            Io::Handshake(h) => Some(h.get_mut().get_mut()),
            Io::Ws(ws) => Some(ws.get_mut()),
            Io::Gone => None,
        }
    }

    /// Queues one encoded JSON object as a frame of this connection's framing.
    /// Err means the connection must be closed (a WebSocket write buffer is full).
    pub fn push_frame(&mut self, json: &[u8]) -> Result<(), ()> {
        match &mut self.io {
            Io::Ws(ws) => {
                let text = String::from_utf8_lossy(json).into_owned();
                match ws.write(Message::text(text)) {
                    Ok(()) => {}
                    Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Err(()),
                }
                self.ws_unflushed = true;
                Ok(())
            }
            _ => {
                self.out.extend_from_slice(json);
                self.out.push(b'\n');
                Ok(())
            }
        }
    }

    /// Writes what the socket takes. Ok(true) when everything went out.
    pub fn flush(&mut self) -> io::Result<bool> {
        match &mut self.io {
            Io::Ws(ws) => match ws.flush() {
                Ok(()) => {
                    self.ws_unflushed = false;
                    Ok(true)
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    Ok(false)
                }
                Err(e) => Err(io::Error::other(e)),
            },
            Io::Sniff(s) | Io::Ndjson(s) => {
                while self.out_pos < self.out.len() {
                    match s.write(&self.out[self.out_pos..]) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => self.out_pos += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                if self.out_pos == self.out.len() {
                    self.out.clear();
                    self.out_pos = 0;
                    // Give back the memory of a one-off burst.
                    if self.out.capacity() > 64 * 1024 {
                        self.out.shrink_to(4096);
                    }
                    Ok(true)
                } else {
                    if self.out_pos > self.out.len() / 2 {
                        self.out.drain(..self.out_pos);
                        self.out_pos = 0;
                    }
                    Ok(false)
                }
            }
            Io::Handshake(_) | Io::Gone => Ok(true),
        }
    }
}

/// WebSocket settings (DESIGN §4): a small read buffer (the 128 KiB default is zeroed on every
/// read), message and frame caps, and a bounded write buffer.
pub(crate) fn ws_config(max_message: usize, max_write_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(64 * 1024)
        .max_write_buffer_size(max_write_buffer)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}
