//! The transports: a connection's socket, its framing (NDJSON or WebSocket), reading messages
//! into the core and writing the core's output out.
//!
//! The core appends replies to a connection's output while a loop turn runs; the reactor
//! writes them once at its end, so a burst of pipelined requests costs one `write`.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use mio::net::{TcpStream, UnixStream};
use tungstenite::handshake::MidHandshake;
use tungstenite::handshake::server::{Callback, ErrorResponse, Request, Response, ServerHandshake};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{HandshakeError, Message, WebSocket};

use super::Broker;
use super::flow::{Caps, Flow};
use super::http_guard::{self, HttpPolicy};
use crate::proto::ndjson::LineFramer;
use crate::table::ConnId;

/// A stream socket of either family; both carry the same framings.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// TCP inside TLS (see `tls`).
    #[cfg(feature = "tls")]
    Tls(Box<super::tls::TlsStream>),
}

impl Stream {
    /// The first bytes of what the peer sent, left to be read (the Unix socket is never
    /// sniffed).
    pub(crate) fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.peek(buf),
            Stream::Unix(_) => Ok(1),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.peek(buf),
        }
    }

    /// Reads and drops what has arrived (up to 64 KiB), so that a close right after sends a
    /// FIN, not the reset the kernel sends for unread data: a refused peer sees a clean end.
    pub(crate) fn discard_input(&mut self) {
        let mut sink = [0u8; 4096];
        for _ in 0..16 {
            match self.read(&mut sink) {
                Ok(n) if n == sink.len() => {}
                _ => break,
            }
        }
    }

    /// Writes what a TLS stream still holds; false if the socket did not take all of it.
    /// A plain socket holds nothing.
    fn flushed(&mut self) -> io::Result<bool> {
        match self.flush() {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(_) | Stream::Unix(_) => Ok(()),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.flush(),
        }
    }
}

impl mio::event::Source for Stream {
    fn register(&mut self, r: &mio::Registry, t: mio::Token, i: mio::Interest) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.register(r, t, i),
            Stream::Unix(s) => s.register(r, t, i),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.sock.register(r, t, i),
        }
    }
    fn reregister(&mut self, r: &mio::Registry, t: mio::Token, i: mio::Interest) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.reregister(r, t, i),
            Stream::Unix(s) => s.reregister(r, t, i),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.sock.reregister(r, t, i),
        }
    }
    fn deregister(&mut self, r: &mio::Registry) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.deregister(r),
            Stream::Unix(s) => s.deregister(r),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.sock.deregister(r),
        }
    }
}

pub(crate) type Handshake = MidHandshake<ServerHandshake<Stream, UpgradeCheck>>;

/// The WebSocket upgrade's callback. Judges the upgrade request: first its Host and Origin
/// (403 when a web page or a DNS-rebinding name is behind it), then, when the broker has a
/// token, its `Authorization: Bearer <token>`: the right one authenticates the connection
/// (`proved`), a wrong one is refused (401). Without the header the upgrade goes on, and the
/// connection must send `auth` first like an NDJSON one: a browser cannot set that header, and
/// the status page authenticates with the token from its URL's fragment.
pub(crate) struct UpgradeCheck {
    pub policy: Arc<HttpPolicy>,
    pub token: Option<Arc<str>>,
    /// Set when the request carried the right bearer token.
    pub proved: Arc<AtomicBool>,
}

impl Callback for UpgradeCheck {
    fn on_request(self, req: &Request, resp: Response) -> Result<Response, ErrorResponse> {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        if let Err(why) = self.policy.check(header("host"), header("origin")) {
            let mut e = ErrorResponse::new(Some(why.to_string()));
            *e.status_mut() = tungstenite::http::StatusCode::FORBIDDEN;
            return Err(e);
        }
        let (Some(token), Some(auth)) = (self.token, header("authorization")) else {
            return Ok(resp);
        };
        let given = auth.strip_prefix("Bearer ").unwrap_or("");
        if super::core::constant_time_eq(given.as_bytes(), token.as_bytes()) {
            self.proved.store(true, Ordering::Relaxed);
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
    /// WebSocket upgrade in progress (it may need several reads); the flag is its
    /// [`UpgradeCheck::proved`].
    Handshake(Box<Handshake>, Arc<AtomicBool>),
    Ws(Box<WebSocket<Stream>>),
    /// Answering one HTTP request (`Socket::http_out`), then closing; see `http`.
    Http(Stream),
    /// Taken out while changing state; never seen between calls.
    Gone,
}

/// One connection's transport: its socket, framing and back-pressure state. Its protocol
/// state (rights, pending output) is the core's, under the same [`ConnId`].
pub(crate) struct Socket {
    pub id: ConnId,
    pub io: Io,
    pub framer: LineFramer,
    pub opened: Instant,
    /// Whether its requests are read (back-pressure; see `flow`).
    pub flow: Flow,
    /// Close once the output is flushed (the core asked, or the peer half-closed).
    pub close_after_flush: bool,
    /// Why, for the log line.
    pub closing_why: &'static str,
    /// WebSocket output that the socket did not take yet.
    pub ws_unflushed: bool,
    /// Listed in the reactor's own flush list (output that is not the core's: WebSocket
    /// control replies, a close after flush).
    pub queued: bool,
    /// The peer closed its side (or the socket failed): read to the end, never stop at a short
    /// read, since no further readiness event will come.
    pub peer_closed: bool,
    /// Sent a valid request (or proved the token in its WebSocket upgrade): its lines are no
    /// longer checked (see `http_guard`), and with an auth token it has authenticated.
    pub vetted: bool,
    /// The TCP peer (None on the Unix socket), for logs.
    pub peer: Option<std::net::SocketAddr>,
    /// The HTTP response not yet written (`Io::Http`).
    pub http_out: Vec<u8>,
    /// Its "connection opened" line was logged (a protocol connection, not an HTTP request),
    /// so its close is logged too.
    pub announced: bool,
}

impl Socket {
    pub(super) fn new(id: ConnId, io: Io, max_line: usize, now: Instant) -> Self {
        Socket {
            id,
            io,
            framer: LineFramer::new(max_line),
            opened: now,
            flow: Flow::Reading,
            close_after_flush: false,
            closing_why: "",
            ws_unflushed: false,
            queued: false,
            peer_closed: false,
            vetted: false,
            peer: None,
            http_out: Vec::new(),
            announced: false,
        }
    }

    pub(super) fn handshaking(&self) -> bool {
        matches!(self.io, Io::Sniff(_) | Io::Handshake(..) | Io::Http(_))
    }

    /// Has not proved itself yet: still in its handshake, or (when the broker has an auth
    /// token) not yet authenticated. Such a connection is closed at the handshake deadline, and
    /// is the first to go when the broker is full (see `accept`).
    pub(super) fn pending(&self, token: bool) -> bool {
        self.handshaking() || (token && !self.vetted)
    }

    pub(super) fn stream_mut(&mut self) -> Option<&mut Stream> {
        match &mut self.io {
            Io::Sniff(s) | Io::Ndjson(s) | Io::Http(s) => Some(s),
            Io::Handshake(h, _) => Some(h.get_mut().get_mut()),
            Io::Ws(ws) => Some(ws.get_mut()),
            Io::Gone => None,
        }
    }

    /// Sends what the socket takes of `out` (the core's NDJSON lines for this connection).
    /// Returns how many bytes of `out` were taken, and whether everything went out; Err means
    /// the connection must be closed.
    ///
    /// A WebSocket sends each line as one text message.
    pub(super) fn write_out(&mut self, out: &[u8]) -> io::Result<(usize, bool)> {
        match &mut self.io {
            Io::Ws(ws) => {
                // Lines go into tungstenite's buffer a batch at a time, and only once the
                // previous batch went out: what the socket did not take stays in the core's
                // output, where back-pressure sees it, and the buffer never fills.
                let mut taken = 0;
                loop {
                    if self.ws_unflushed {
                        match ws.flush() {
                            Ok(()) => self.ws_unflushed = false,
                            Err(tungstenite::Error::Io(e))
                                if e.kind() == io::ErrorKind::WouldBlock =>
                            {
                                return Ok((taken, false));
                            }
                            Err(e) => return Err(io::Error::other(e)),
                        }
                    }
                    if taken == out.len() {
                        return Ok((taken, true));
                    }
                    let mut batch = 0;
                    for line in out[taken..].split_inclusive(|&b| b == b'\n') {
                        if batch > 0 && batch + line.len() > WS_BATCH {
                            break;
                        }
                        batch += line.len();
                        let text = line.strip_suffix(b"\n").unwrap_or(line);
                        if text.is_empty() {
                            continue;
                        }
                        let text = String::from_utf8_lossy(text).into_owned();
                        match ws.write(Message::text(text)) {
                            Ok(()) => {}
                            // Queued: the flush above sends it.
                            Err(tungstenite::Error::Io(e))
                                if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(e) => return Err(io::Error::other(e)),
                        }
                    }
                    taken += batch;
                    self.ws_unflushed = true;
                }
            }
            Io::Sniff(s) | Io::Ndjson(s) => {
                let mut pos = 0;
                while pos < out.len() {
                    match s.write(&out[pos..]) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => pos += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok((pos, pos == out.len() && s.flushed()?))
            }
            Io::Handshake(..) | Io::Http(_) | Io::Gone => Ok((0, true)),
        }
    }

    /// Writes what the socket takes of the HTTP response; see [`write_out`](Self::write_out).
    pub(super) fn write_http(&mut self) -> io::Result<(usize, bool)> {
        let Io::Http(s) = &mut self.io else {
            return Ok((0, true));
        };
        let mut pos = 0;
        while pos < self.http_out.len() {
            match s.write(&self.http_out[pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.http_out.drain(..pos);
        Ok((pos, self.http_out.is_empty() && s.flushed()?))
    }
}

const HTTP_ON_NDJSON: &str = "HTTP on the NDJSON port (a web page?)";

/// What the first-line rule made of a line (see `hand_line`).
enum FirstLine {
    /// Handed to the core (an error reply, if it was bad, after the first valid request).
    Ran,
    /// HTTP before the first valid request: a web page (or a confused client) is talking.
    Http,
    /// Not a valid request before the first valid one: the peer does not speak this protocol.
    Invalid,
}

/// Hands one NDJSON line to the core under the first-line rule: until a connection's first
/// valid request, a line that looks like HTTP is refused before it runs (so that nothing a
/// page sent, such as a POST body in the same segment, runs either), and any other invalid
/// line gets its error reply and ends the connection.
fn hand_line(
    core: &mut super::core::Core,
    vetted: &mut bool,
    id: ConnId,
    line: &mut [u8],
    now: Instant,
) -> FirstLine {
    if *vetted {
        core.handle_message(id, line, now);
        return FirstLine::Ran;
    }
    if http_guard::is_http_line(line) {
        return FirstLine::Http;
    }
    if !core.handle_message(id, line, now) {
        return FirstLine::Invalid;
    }
    *vetted = true;
    FirstLine::Ran
}

/// The socket at `slot` if one more of its requests may be read now; when its output is
/// backed up, its reading pauses (see `flow`) and the stall deadline is armed (`housekeeping`).
fn readable<'s>(
    socks: &'s mut slab::Slab<Socket>,
    core: &super::core::Core,
    slot: usize,
    caps: &Caps,
    now: Instant,
    housekeeping: &mut bool,
) -> Option<&'s mut Socket> {
    let sock = socks.get_mut(slot)?;
    if sock.flow.may_read(core.output(sock.id).len(), caps, now) {
        return Some(sock);
    }
    *housekeeping = true;
    None
}

/// Bytes of lines handed to tungstenite at once (at least one whole line).
const WS_BATCH: usize = 64 * 1024;

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

impl Broker {
    /// Reads and handles everything the connection has sent, until the socket would block.
    pub(super) fn on_readable(&mut self, slot: usize, now: Instant) {
        loop {
            let Some(sock) = self.socks.get_mut(slot) else {
                return;
            };
            if sock.flow.is_paused() {
                return;
            }
            match std::mem::replace(&mut sock.io, Io::Gone) {
                Io::Sniff(mut stream) => {
                    let mut b = [0u8; 1];
                    let peeked = stream.peek(&mut b);
                    #[cfg(feature = "tls")]
                    let Some((stream, peeked)) = self.tls_gate(slot, stream, peeked, &mut b, now)
                    else {
                        return;
                    };
                    let Some(sock) = self.socks.get_mut(slot) else {
                        return;
                    };
                    match peeked {
                        Ok(0) => {
                            sock.io = Io::Sniff(stream);
                            return self.close(slot, now, "peer closed");
                        }
                        Ok(_) if b[0].is_ascii_uppercase() => {
                            // HTTP (every method is an upper-case token; no request starts
                            // with a letter): `/metrics` and the status page are answered by
                            // `http`, other methods get 405; an upgrade comes back for
                            // tungstenite.
                            let Some(stream) = self.sniff_http(slot, stream, now) else {
                                return;
                            };
                            let Some(sock) = self.socks.get_mut(slot) else {
                                return;
                            };
                            // The WebSocket upgrade; `UpgradeCheck` is its callback.
                            let cfg = ws_config(self.cfg.max_line, self.cfg.out_hard);
                            // A client certificate stands in for the token.
                            let proved = Arc::new(AtomicBool::new(false));
                            let check = UpgradeCheck {
                                policy: self.policy.clone(),
                                token: (self.cfg.auth_token.as_deref())
                                    .filter(|_| !self.core.is_authed(sock.id))
                                    .map(Into::into),
                                proved: proved.clone(),
                            };
                            match tungstenite::accept_hdr_with_config(stream, check, Some(cfg)) {
                                Ok(ws) => self.ws_opened(slot, ws, &proved),
                                Err(HandshakeError::Interrupted(mid)) => {
                                    sock.io = Io::Handshake(Box::new(mid), proved);
                                    return;
                                }
                                Err(HandshakeError::Failure(e)) => {
                                    return self.handshake_failed(slot, now, &e);
                                }
                            }
                        }
                        Ok(_) if b[0] == 0x16 => {
                            let mut stream = stream;
                            stream.discard_input();
                            sock.io = Io::Sniff(stream);
                            return self.refuse(
                                slot,
                                now,
                                "a TLS ClientHello, but this broker has no certificate (--tls-cert)",
                            );
                        }
                        Ok(_) => {
                            sock.io = Io::Ndjson(stream);
                            self.announce(slot, "NDJSON");
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            sock.io = Io::Sniff(stream);
                            return;
                        }
                        Err(_) => {
                            sock.io = Io::Sniff(stream);
                            return self.close(slot, now, "read failed");
                        }
                    }
                }
                Io::Handshake(mid, proved) => match mid.handshake() {
                    Ok(ws) => self.ws_opened(slot, ws, &proved),
                    Err(HandshakeError::Interrupted(mid)) => {
                        sock.io = Io::Handshake(Box::new(mid), proved);
                        return;
                    }
                    Err(HandshakeError::Failure(e)) => return self.handshake_failed(slot, now, &e),
                },
                Io::Ndjson(stream) => {
                    sock.io = Io::Ndjson(stream);
                    return self.read_ndjson(slot, now);
                }
                Io::Ws(ws) => {
                    sock.io = Io::Ws(ws);
                    return self.read_ws(slot, now);
                }
                Io::Http(mut stream) => {
                    // Whatever else the client sends is dropped; its close ends the answer.
                    let mut sink = [0u8; 4096];
                    let r = stream.read(&mut sink);
                    sock.io = Io::Http(stream);
                    match r {
                        Ok(0) => return self.close(slot, now, "peer closed"),
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return self.close(slot, now, "read failed"),
                    }
                }
                Io::Gone => return,
            }
        }
    }

    /// A WebSocket upgrade completed. A connection that proved the token in its upgrade is
    /// authenticated (an admin under `restrict_admin`, like one that sent `auth`); without a
    /// token to prove, it is vetted at once; otherwise it must send `auth` first.
    fn ws_opened(&mut self, slot: usize, ws: WebSocket<Stream>, proved: &AtomicBool) {
        let Some(sock) = self.socks.get_mut(slot) else {
            return;
        };
        sock.io = Io::Ws(Box::new(ws));
        if proved.load(Ordering::Relaxed) {
            sock.vetted = true;
            let id = sock.id;
            self.core.authenticated(id);
        } else if self.cfg.auth_token.is_none() || self.core.is_authed(sock.id) {
            // No token to prove, or a client certificate proved who it is.
            sock.vetted = true;
        }
        self.announce(slot, "WebSocket");
    }

    /// Before a connection's first valid request, an invalid one (not JSON, not a request,
    /// binary junk, the h2c preface) means the peer does not speak this protocol: it gets its
    /// error reply, nothing after it runs, and the connection closes once the reply is out.
    fn reject_first(&mut self, slot: usize, now: Instant) {
        let peer = self.socks.get(slot).and_then(|s| s.peer);
        let peer = peer.map_or_else(|| "the Unix socket".to_string(), |p| p.to_string());
        let why = "its first message was not a valid request";
        if let Some(line) = self.refusals.refused(now, &peer, why) {
            tracing::warn!("{line}");
        }
        if let Some(sock) = self.socks.get_mut(slot) {
            sock.close_after_flush = true;
            sock.closing_why = why;
        }
        self.queue_flush(slot);
    }

    /// The NDJSON read path: hands each complete line to the core, then reads what the socket
    /// has, until it would block or the connection's output backs up (see `flow`). Lines
    /// already read stay in the framer while it is paused, and are handled first on resuming.
    fn read_ndjson(&mut self, slot: usize, now: Instant) {
        let caps = self.caps();
        let mut drained = false;
        loop {
            // Every complete line read so far, while the output has room.
            loop {
                let hk = &mut self.needs_housekeeping;
                let Some(sock) = readable(&mut self.socks, &self.core, slot, &caps, now, hk) else {
                    return;
                };
                if sock.close_after_flush {
                    // Closing: nothing more it sends is read (see `reject_first`).
                    return;
                }
                let id = sock.id;
                let line = match sock.framer.next_line() {
                    Ok(Some(line)) => line,
                    Ok(None) => break,
                    // Framing is lost: only this connection is closed.
                    Err(_) => return self.close(slot, now, "line too long (framing lost)"),
                };
                match hand_line(&mut self.core, &mut sock.vetted, id, line, now) {
                    FirstLine::Ran => {}
                    FirstLine::Http => return self.refuse(slot, now, HTTP_ON_NDJSON),
                    FirstLine::Invalid => return self.reject_first(slot, now),
                }
            }
            // A short read drained the socket: after its lines, wait for the next readiness
            // event rather than spend a `read` on `WouldBlock` (one syscall per message saved).
            // Not when the peer has closed: no further event would come for its EOF.
            if drained && self.socks.get(slot).is_some_and(|s| !s.peer_closed) {
                return;
            }
            let Some(sock) = self.socks.get_mut(slot) else {
                return;
            };
            let id = sock.id;
            let Io::Ndjson(stream) = &mut sock.io else {
                return;
            };
            match sock.framer.read_some(stream) {
                Ok((0, _)) => {}
                Ok((n, filled)) => {
                    self.bytes_in += n as u64;
                    drained = !filled;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.close(slot, now, "read failed"),
            }
            // The peer closed its side: its last, unterminated line, then the close.
            if let Some(line) = sock.framer.finish() {
                match hand_line(&mut self.core, &mut sock.vetted, id, line, now) {
                    FirstLine::Ran => {}
                    FirstLine::Http => return self.refuse(slot, now, HTTP_ON_NDJSON),
                    FirstLine::Invalid => return self.reject_first(slot, now),
                }
            }
            // The peer may have only half-closed (`printf ... | nc`): its replies still go
            // out, then the connection closes and its locks are released.
            let Some(sock) = self.socks.get_mut(slot) else {
                return;
            };
            if self.core.output(id).is_empty() && !sock.ws_unflushed {
                return self.close(slot, now, "peer closed");
            }
            sock.close_after_flush = true;
            sock.closing_why = "peer closed";
            self.queue_flush(slot);
            return;
        }
    }

    /// The WebSocket read path: hands each text or binary message to the core.
    fn read_ws(&mut self, slot: usize, now: Instant) {
        let caps = self.caps();
        loop {
            let hk = &mut self.needs_housekeeping;
            let Some(sock) = readable(&mut self.socks, &self.core, slot, &caps, now, hk) else {
                return;
            };
            let (id, vetted) = (sock.id, sock.vetted);
            if sock.close_after_flush {
                return;
            }
            let Io::Ws(ws) = &mut sock.io else {
                return;
            };
            let msg = match ws.read() {
                Ok(Message::Text(t)) => {
                    self.bytes_in += t.len() as u64;
                    self.scratch.clear();
                    self.scratch.extend_from_slice(t.as_bytes());
                    true
                }
                Ok(Message::Binary(b)) => {
                    self.bytes_in += b.len() as u64;
                    self.scratch.clear();
                    self.scratch.extend_from_slice(&b);
                    true
                }
                Ok(_) => {
                    // Ping, pong, close: tungstenite answers them; their replies need a flush.
                    sock.ws_unflushed = true;
                    self.queue_flush(slot);
                    false
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    return;
                }
                Err(_) => return self.close(slot, now, "peer closed or WebSocket error"),
            };
            if msg && !self.core.handle_message(id, &mut self.scratch, now) && !vetted {
                return self.reject_first(slot, now);
            }
            if msg
                && !vetted
                && let Some(s) = self.socks.get_mut(slot)
            {
                s.vetted = true;
            }
        }
    }

    /// Closes a connection that a web page (or something else speaking HTTP) opened, with a
    /// rate-limited note naming its peer.
    pub(super) fn refuse(&mut self, slot: usize, now: Instant, why: &str) {
        let peer = self.socks.get(slot).and_then(|s| s.peer);
        let peer = peer.map_or_else(|| "the Unix socket".to_string(), |p| p.to_string());
        if let Some(line) = self.refusals.refused(now, &peer, why) {
            tracing::warn!("{line}");
        }
        self.close(slot, now, why);
    }

    /// A failed WebSocket handshake closes the connection; a refusal by the Host/Origin rules
    /// (answered 403) is also logged.
    fn handshake_failed(&mut self, slot: usize, now: Instant, e: &tungstenite::Error) {
        match e {
            tungstenite::Error::Http(resp) if resp.status() == 403 => {
                let why = resp.body().as_deref().map(String::from_utf8_lossy);
                let why = format!("WebSocket upgrade: {}", why.unwrap_or_default());
                self.refuse(slot, now, &why);
            }
            _ => self.close(slot, now, "WebSocket handshake failed"),
        }
    }
}
