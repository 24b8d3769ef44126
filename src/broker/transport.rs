//! A connection's [`Socket`]: where it is in its life (`Io`: sniffing its first byte, NDJSON,
//! WebSocket, HTTP), the first-byte dispatch and the NDJSON line loop, and writing the core's
//! output out. `ws.rs`, `http.rs` and `tls.rs` hold the readers of the other framings.
//!
//! The core appends replies to a connection's output while a loop turn runs; the reactor
//! writes them once at its end, so a burst of pipelined requests costs one `write`.

use std::borrow::Cow;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use tungstenite::WebSocket;

use super::BrokerBuilder;
use super::core::Core;
use super::flow::{Caps, Flow};
use super::http_guard::{self, HttpPolicy, RefusalLog};
use super::metrics::IoCounters;
use super::spin::Spinner;
use super::stream::Stream;
use super::ws::Handshake;
use crate::proto::ndjson::LineFramer;
use crate::table::ConnId;

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
    /// A reader asks the reactor to list it in this turn's flush (see `queued`).
    pub flush_wanted: bool,
    /// The peer closed its side (or the socket failed): read to the end, never stop at a short
    /// read, since no further readiness event will come.
    pub peer_closed: bool,
    /// Sent a valid request (or proved the token in its WebSocket upgrade): its lines are no
    /// longer checked (see `http_guard`), and with an auth token it has authenticated.
    pub vetted: bool,
    /// The TCP peer (None on the Unix socket), for logs.
    pub peer: Option<SocketAddr>,
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
            flush_wanted: false,
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
            Io::Ws(ws) => super::ws::write_lines(ws, &mut self.ws_unflushed, out),
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
    core: &mut Core,
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

/// What a socket's reader borrows from the broker for one readiness event: the core it hands
/// messages to, the settings, and the broker-wide logs and counters.
pub(super) struct Cx<'a> {
    pub core: &'a mut Core,
    pub now: Instant,
    pub caps: Caps,
    pub cfg: &'a BrokerBuilder,
    /// Host and Origin rules of HTTP requests (the WebSocket upgrade, `/metrics`).
    pub policy: &'a Arc<HttpPolicy>,
    pub refusals: &'a mut RefusalLog,
    /// A WebSocket message, copied to be decoded in place.
    pub scratch: &'a mut Vec<u8>,
    /// Bytes read and HTTP requests answered are counted here; `/metrics` shows them.
    pub io: &'a mut IoCounters,
    pub spinner: &'a Spinner,
    /// The TLS configuration, if the broker has a certificate.
    #[cfg(feature = "tls")]
    pub tls: Option<&'a Arc<super::tls::ServerTls>>,
}

impl Cx<'_> {
    /// Notes a refused peer (rate-limited: see `RefusalLog`).
    pub(super) fn note_refusal(&mut self, peer: Option<SocketAddr>, why: &str) {
        let peer = peer.map_or_else(|| "the Unix socket".to_string(), |p| p.to_string());
        if let Some(line) = self.refusals.refused(self.now, &peer, why) {
            tracing::warn!("{line}");
        }
    }
}

/// What the reactor must do once a socket's reader returns (as in mio's `tcp_server`, a
/// handler reports and only the loop removes a connection). A reader that wants its
/// socket flushed this turn says so with [`Socket::flush_wanted`].
#[derive(Debug)]
pub(super) enum Step {
    /// Keep it: wait for its next readiness event (or its resume, see `flow`).
    Keep,
    /// Close it now; the reason is logged.
    Close(Cow<'static, str>),
}

impl Step {
    pub(super) fn close(why: impl Into<Cow<'static, str>>) -> Step {
        Step::Close(why.into())
    }
}

impl Socket {
    /// Reads and handles everything the connection has sent, until the socket would block.
    pub(super) fn on_readable(&mut self, cx: &mut Cx<'_>) -> Step {
        loop {
            if self.flow.is_paused() {
                return Step::Keep;
            }
            match std::mem::replace(&mut self.io, Io::Gone) {
                Io::Sniff(mut stream) => {
                    let mut b = [0u8; 1];
                    let peeked = stream.peek(&mut b);
                    #[cfg(feature = "tls")]
                    let (stream, peeked) = match self.tls_gate(cx, stream, peeked, &mut b) {
                        Ok(gated) => gated,
                        Err(step) => return step,
                    };
                    match peeked {
                        Ok(0) => {
                            self.io = Io::Sniff(stream);
                            return Step::close("peer closed");
                        }
                        Ok(_) if b[0].is_ascii_uppercase() => {
                            // HTTP (every method is an upper-case token; no request starts
                            // with a letter): `/metrics` and the status page are answered by
                            // `http`, other methods get 405; an upgrade comes back for
                            // tungstenite.
                            let stream = match self.sniff_http(cx, stream) {
                                Ok(stream) => stream,
                                Err(step) => return step,
                            };
                            if let Some(step) = self.upgrade(cx, stream) {
                                return step;
                            }
                        }
                        Ok(_) if b[0] == 0x16 => {
                            let mut stream = stream;
                            stream.discard_input();
                            self.io = Io::Sniff(stream);
                            return self.refuse(
                                cx,
                                "a TLS ClientHello, but this broker has no certificate (--tls-cert)",
                            );
                        }
                        Ok(_) => {
                            self.io = Io::Ndjson(stream);
                            self.announce(cx.core, "NDJSON");
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            self.io = Io::Sniff(stream);
                            return Step::Keep;
                        }
                        Err(_) => {
                            self.io = Io::Sniff(stream);
                            return Step::close("read failed");
                        }
                    }
                }
                Io::Handshake(mid, proved) => {
                    if let Some(step) = self.upgraded(cx, mid.handshake(), proved) {
                        return step;
                    }
                }
                Io::Ndjson(stream) => {
                    self.io = Io::Ndjson(stream);
                    return self.read_ndjson(cx);
                }
                Io::Ws(ws) => {
                    self.io = Io::Ws(ws);
                    return self.read_ws(cx);
                }
                Io::Http(mut stream) => {
                    // Whatever else the client sends is dropped; its close ends the answer.
                    let mut sink = [0u8; 4096];
                    let r = stream.read(&mut sink);
                    self.io = Io::Http(stream);
                    match r {
                        Ok(0) => return Step::close("peer closed"),
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Keep,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return Step::close("read failed"),
                    }
                }
                Io::Gone => return Step::Keep,
            }
        }
    }

    /// Logs the connection's "opened" line once its framing is known (an HTTP request to
    /// `/metrics` or the page gets none, so a scraper does not flood the log).
    pub(super) fn announce(&mut self, core: &Core, framing: &str) {
        self.announced = true;
        tracing::info!(
            conn = self.id.0,
            peer = core.peer(self.id).unwrap_or("?"),
            "connection opened ({framing})"
        );
    }

    /// Closes a connection that a web page (or something else speaking HTTP) opened, with a
    /// rate-limited note naming its peer.
    pub(super) fn refuse(&self, cx: &mut Cx<'_>, why: impl Into<Cow<'static, str>>) -> Step {
        let why = why.into();
        cx.note_refusal(self.peer, &why);
        Step::Close(why)
    }

    /// Before a connection's first valid request, an invalid one (not JSON, not a request,
    /// binary junk, the h2c preface) means the peer does not speak this protocol: it gets its
    /// error reply, nothing after it runs, and the connection closes once the reply is out.
    pub(super) fn reject_first(&mut self, cx: &mut Cx<'_>) -> Step {
        let why = "its first message was not a valid request";
        cx.note_refusal(self.peer, why);
        self.close_when_flushed(why);
        Step::Keep
    }

    /// Closes the connection once its output is flushed (this turn's flush is asked for).
    pub(super) fn close_when_flushed(&mut self, why: &'static str) {
        self.close_after_flush = true;
        self.closing_why = why;
        self.flush_wanted = true;
    }

    /// Under the first-line rule (see `hand_line`), what the reactor must do: nothing, or
    /// refuse an HTTP peer, or reject a peer that does not speak the protocol.
    fn after_line(&mut self, cx: &mut Cx<'_>, first: FirstLine) -> Option<Step> {
        match first {
            FirstLine::Ran => None,
            FirstLine::Http => Some(self.refuse(cx, HTTP_ON_NDJSON)),
            FirstLine::Invalid => Some(self.reject_first(cx)),
        }
    }

    /// Whether one more of its requests may be read now; when its output is backed up, its
    /// reading pauses (see `flow`; the reactor then arms the stall deadline).
    pub(super) fn may_read(&mut self, cx: &Cx<'_>) -> bool {
        let backlog = cx.core.output(self.id).len();
        self.flow.may_read(backlog, &cx.caps, cx.now)
    }

    /// The NDJSON read path: hands each complete line to the core, then reads what the socket
    /// has, until it would block or the connection's output backs up (see `flow`). Lines
    /// already read stay in the framer while it is paused, and are handled first on resuming.
    fn read_ndjson(&mut self, cx: &mut Cx<'_>) -> Step {
        let mut drained = false;
        loop {
            // Every complete line read so far, while the output has room.
            loop {
                if !self.may_read(cx) || self.close_after_flush {
                    // Paused, or closing: nothing more it sends is read (see `reject_first`).
                    return Step::Keep;
                }
                let line = match self.framer.next_line() {
                    Ok(Some(line)) => line,
                    Ok(None) => break,
                    // Framing is lost: only this connection is closed.
                    Err(_) => return Step::close("line too long (framing lost)"),
                };
                let first = hand_line(cx.core, &mut self.vetted, self.id, line, cx.now);
                if let Some(step) = self.after_line(cx, first) {
                    return step;
                }
            }
            // A short read drained the socket: after its lines, wait for the next readiness
            // event rather than spend a `read` on `WouldBlock` (one syscall per message saved).
            // Not when the peer has closed: no further event would come for its EOF.
            if drained && !self.peer_closed {
                return Step::Keep;
            }
            let Io::Ndjson(stream) = &mut self.io else {
                return Step::Keep;
            };
            match self.framer.read_some(stream) {
                Ok((0, _)) => {}
                Ok((n, filled)) => {
                    cx.io.bytes_in += n as u64;
                    drained = !filled;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Keep,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Step::close("read failed"),
            }
            // The peer closed its side: its last, unterminated line, then the close.
            if let Some(line) = self.framer.finish() {
                let first = hand_line(cx.core, &mut self.vetted, self.id, line, cx.now);
                if let Some(step) = self.after_line(cx, first) {
                    return step;
                }
            }
            // The peer may have only half-closed (`printf ... | nc`): its replies still go
            // out, then the connection closes and its locks are released.
            if cx.core.output(self.id).is_empty() && !self.ws_unflushed {
                return Step::close("peer closed");
            }
            self.close_when_flushed("peer closed");
            return Step::Keep;
        }
    }
}
