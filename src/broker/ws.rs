//! The WebSocket framing: the upgrade and its callback (`UpgradeCheck`: Host, Origin and the
//! bearer token), reading messages into the core, and writing the core's lines out as text
//! messages.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tungstenite::handshake::MidHandshake;
use tungstenite::handshake::server::{Callback, ErrorResponse, Request, Response, ServerHandshake};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{HandshakeError, Message, WebSocket};

use super::http_guard::HttpPolicy;
use super::stream::Stream;
use super::transport::{Cx, Io, Socket, Step};

/// A WebSocket upgrade that needs more reads.
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

/// Sends what the socket takes of `out` (the core's NDJSON lines) as text messages, one per
/// line; see [`Socket::write_out`]. `unflushed` is [`Socket::ws_unflushed`].
pub(super) fn write_lines(
    ws: &mut WebSocket<Stream>,
    unflushed: &mut bool,
    out: &[u8],
) -> io::Result<(usize, bool)> {
    // Lines go into tungstenite's buffer a batch at a time, and only once the
    // previous batch went out: what the socket did not take stays in the core's
    // output, where back-pressure sees it, and the buffer never fills.
    let mut taken = 0;
    loop {
        if *unflushed {
            match ws.flush() {
                Ok(()) => *unflushed = false,
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
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
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(io::Error::other(e)),
            }
        }
        taken += batch;
        *unflushed = true;
    }
}

impl Socket {
    /// Starts the WebSocket upgrade of a connection whose HTTP request asked for one; see
    /// [`upgraded`](Self::upgraded).
    pub(super) fn upgrade(&mut self, cx: &mut Cx<'_>, stream: Stream) -> Option<Step> {
        let ws_cfg = ws_config(cx.cfg.max_line, cx.cfg.out_hard);
        // A client certificate stands in for the token.
        let proved = Arc::new(AtomicBool::new(false));
        let check = UpgradeCheck {
            policy: cx.policy.clone(),
            token: (cx.cfg.auth_token.as_deref())
                .filter(|_| !cx.core.is_authed(self.id))
                .map(Into::into),
            proved: proved.clone(),
        };
        let res = tungstenite::accept_hdr_with_config(stream, check, Some(ws_cfg));
        self.upgraded(cx, res, proved)
    }

    /// Where a step of the upgrade left it: `None` once it is a WebSocket (read on), else what
    /// the reactor must do (wait for more of the request, or close).
    pub(super) fn upgraded(
        &mut self,
        cx: &mut Cx<'_>,
        res: Result<WebSocket<Stream>, HandshakeError<ServerHandshake<Stream, UpgradeCheck>>>,
        proved: Arc<AtomicBool>,
    ) -> Option<Step> {
        match res {
            Ok(ws) => {
                self.ws_opened(cx, ws, &proved);
                None
            }
            Err(HandshakeError::Interrupted(mid)) => {
                self.io = Io::Handshake(Box::new(mid), proved);
                Some(Step::Keep)
            }
            Err(HandshakeError::Failure(e)) => Some(self.handshake_failed(cx, &e)),
        }
    }

    /// A WebSocket upgrade completed. A connection that proved the token in its upgrade is
    /// authenticated (an admin under `restrict_admin`, like one that sent `auth`); without a
    /// token to prove, it is vetted at once; otherwise it must send `auth` first.
    fn ws_opened(&mut self, cx: &mut Cx<'_>, ws: WebSocket<Stream>, proved: &AtomicBool) {
        self.io = Io::Ws(Box::new(ws));
        if proved.load(Ordering::Relaxed) {
            self.vetted = true;
            cx.core.authenticated(self.id);
        } else if cx.cfg.auth_token.is_none() || cx.core.is_authed(self.id) {
            // No token to prove, or a client certificate proved who it is.
            self.vetted = true;
        }
        self.announce(cx.core, "WebSocket");
    }

    /// The WebSocket read path: hands each text or binary message to the core.
    pub(super) fn read_ws(&mut self, cx: &mut Cx<'_>) -> Step {
        loop {
            if !self.may_read(cx) || self.close_after_flush {
                return Step::Keep;
            }
            let Io::Ws(ws) = &mut self.io else {
                return Step::Keep;
            };
            let msg = match ws.read() {
                Ok(Message::Text(t)) => {
                    cx.io.bytes_in += t.len() as u64;
                    cx.scratch.clear();
                    cx.scratch.extend_from_slice(t.as_bytes());
                    true
                }
                Ok(Message::Binary(b)) => {
                    cx.io.bytes_in += b.len() as u64;
                    cx.scratch.clear();
                    cx.scratch.extend_from_slice(&b);
                    true
                }
                Ok(_) => {
                    // Ping, pong, close: tungstenite answers them; their replies need a flush.
                    self.ws_unflushed = true;
                    self.flush_wanted = true;
                    false
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Step::Keep;
                }
                Err(_) => return Step::close("peer closed or WebSocket error"),
            };
            if msg {
                let valid = cx.core.handle_message(self.id, cx.scratch, cx.now);
                if !valid && !self.vetted {
                    return self.reject_first(cx);
                }
                self.vetted = true;
            }
        }
    }

    /// A failed WebSocket handshake closes the connection; a refusal by the Host/Origin rules
    /// (answered 403) is also logged.
    fn handshake_failed(&mut self, cx: &mut Cx<'_>, e: &tungstenite::Error) -> Step {
        match e {
            tungstenite::Error::Http(resp) if resp.status() == 403 => {
                let why = resp.body().as_deref().map(String::from_utf8_lossy);
                let why = format!("WebSocket upgrade: {}", why.unwrap_or_default());
                self.refuse(cx, why)
            }
            _ => Step::close("WebSocket handshake failed"),
        }
    }
}
