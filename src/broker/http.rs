//! The tiny HTTP responder on the broker's TCP port: `GET /metrics` (Prometheus text) and
//! `GET /` (the status page), told apart from a WebSocket upgrade by the request head; any
//! other method gets 405. A connection whose first byte is an upper-case letter (every HTTP
//! method; no request of the protocol starts with one) lands here; the head is peeked (not
//! read) so that an upgrade still reaches tungstenite whole.
//!
//! Every answer first passes the same Host/Origin rules as the upgrade
//! ([`HttpPolicy::check`]): a page on another origin, or a DNS-rebinding name, gets 403. No
//! answer carries `Access-Control-Allow-Origin`, so no other origin can read one. One request
//! per connection (`Connection: close`): a scraper every second costs one accept, and the
//! broker never keeps HTTP state.

use std::io::{self, Read};

use super::metrics::{self, IoCounters};
use super::stream::Stream;
use super::transport::{Cx, Io, Socket, Step};

/// A request head larger than this is refused (431).
const MAX_HEAD: usize = 8 * 1024;

/// The status page, built into the binary: one self-contained file, nothing fetched.
const STATUS_PAGE: &str = include_str!("status.html");

/// What the peeked head asks for.
enum Head {
    /// Not complete yet: wait for more bytes (the handshake deadline bounds the wait).
    Partial,
    /// A WebSocket upgrade: hand the stream to tungstenite.
    Upgrade,
    /// Answered here: the whole response.
    Answer {
        status: u16,
        log: &'static str,
        response: Vec<u8>,
    },
}

impl Socket {
    /// Called with the stream of a TCP connection whose first byte is an upper-case letter.
    /// Returns it back for the WebSocket upgrade; otherwise the connection now answers (or
    /// waits for the rest of its head), and `Err` says what the reactor must do.
    pub(super) fn sniff_http(
        &mut self,
        cx: &mut Cx<'_>,
        mut stream: Stream,
    ) -> Result<Stream, Step> {
        if matches!(stream, Stream::Unix(_)) {
            return Ok(stream);
        }
        let mut buf = vec![0u8; MAX_HEAD];
        let n = match stream.peek(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => {
                self.io = Io::Sniff(stream);
                return Err(Step::Close("read failed".into()));
            }
        };
        let peer = self.peer.map_or_else(|| "?".to_string(), |p| p.to_string());
        // A verified client certificate (`--tls-client-ca`) authenticates like the token.
        let authed = cx.core.is_authed(self.id);
        match judge(cx, &buf[..n], n == MAX_HEAD, &peer, authed) {
            Head::Upgrade => Ok(stream),
            Head::Partial => {
                self.io = Io::Sniff(stream);
                Err(Step::Keep)
            }
            Head::Answer {
                status,
                log,
                response,
            } => {
                cx.io.http += 1;
                // Take the request out of the socket: closing with unread bytes would send
                // a reset, which can destroy the response before the client reads it.
                let mut sink = [0u8; 4096];
                for _ in 0..4 {
                    match stream.read(&mut sink) {
                        Ok(n) if n == sink.len() => {}
                        _ => break,
                    }
                }
                tracing::debug!(peer, status, "HTTP {log}");
                self.io = Io::Http(stream);
                self.http_out = response;
                self.close_when_flushed("HTTP response sent");
                Err(Step::Keep)
            }
        }
    }
}

/// With an auth token configured, `/metrics` needs it as a bearer token (the counters and
/// key counts are the broker's business), or a connection already authenticated by a
/// verified client certificate; the page itself is static, and its WebSocket
/// authenticates like any client (`#token=` in the page's URL).
fn bearer_ok(token: Option<&str>, authed: bool, header: Option<&str>) -> bool {
    let Some(token) = token else {
        return true;
    };
    if authed {
        return true;
    }
    let given = header.and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
    super::core::constant_time_eq(given.as_bytes(), token.as_bytes())
}

/// Decides what a request head gets.
fn judge(cx: &mut Cx<'_>, bytes: &[u8], full: bool, peer: &str, authed: bool) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) if !full => return Head::Partial,
        Ok(httparse::Status::Partial) => {
            return answer(
                431,
                "head too large",
                "text/plain",
                b"request head too large\n",
            );
        }
        Err(httparse::Error::TooManyHeaders) => {
            return answer(431, "too many headers", "text/plain", b"too many headers\n");
        }
        Err(_) => return answer(400, "bad request", "text/plain", b"bad request\n"),
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let upgrade = header("upgrade").is_some_and(|v| v.to_ascii_lowercase().contains("websocket"));
    if upgrade {
        return Head::Upgrade;
    }
    if let Err(why) = cx.policy.check(header("host"), header("origin")) {
        if let Some(line) = cx
            .refusals
            .refused(cx.now, peer, &format!("HTTP request: {why}"))
        {
            tracing::warn!("{line}");
        }
        return answer(403, "refused", "text/plain", format!("{why}\n").as_bytes());
    }
    let path = req.path.unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path);
    match (req.method, path) {
        (Some("GET"), "/metrics")
            if !bearer_ok(
                cx.cfg.auth_token.as_deref(),
                authed,
                header("authorization"),
            ) =>
        {
            answer(
                401,
                "/metrics without the auth token",
                "text/plain",
                b"this broker needs its auth token: Authorization: Bearer <token>\n",
            )
        }
        (Some("GET"), "/metrics") => {
            let io = IoCounters {
                spins: cx.spinner.spins,
                spin_wins: cx.spinner.wins,
                spun_ns: cx.spinner.spun_ns,
                ..*cx.io
            };
            let body = metrics::render(&cx.core.metrics(cx.now), &io);
            answer(200, "/metrics", metrics::CONTENT_TYPE, body.as_bytes())
        }
        (Some("GET"), "/" | "/index.html") => {
            answer(200, "/", "text/html; charset=utf-8", STATUS_PAGE.as_bytes())
        }
        (Some("GET"), _) => answer(404, "not found", "text/plain", b"not found\n"),
        (method, _) => {
            // A POST or PUT here is what a web page's `fetch` sends: noted like the other
            // refusals. Nothing in its body runs.
            let method = method.unwrap_or("?");
            let why = format!("HTTP {method} on the broker's port (answered 405)");
            if let Some(line) = cx.refusals.refused(cx.now, peer, &why) {
                tracing::warn!("{line}");
            }
            // A HEAD response carries no body.
            let body: &[u8] = if method == "HEAD" { b"" } else { b"only GET\n" };
            answer(405, "method not allowed", "text/plain", body)
        }
    }
}

fn answer(status: u16, log: &'static str, content_type: &str, body: &[u8]) -> Head {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Request Header Fields Too Large",
    };
    let mut r = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\
         X-Frame-Options: DENY\r\nContent-Security-Policy: default-src 'none'; \
         script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; \
         connect-src 'self'; frame-ancestors 'none'\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    Head::Answer {
        status,
        log,
        response: r,
    }
}
