//! What both clients' transports share of WebSocket: the upgrade request (with the token as
//! a bearer header), the limits, and what a refused upgrade means to the caller.

use super::error::{Error, Result};
use super::url::host_port;
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::Request;
use tungstenite::protocol::WebSocketConfig;

/// Replies larger than this mean the peer is not a live-mutex broker (or is broken); `ls` of a
/// very large table is the only legitimate big reply.
pub(crate) const MAX_LINE: u64 = 16 << 20;

/// The WebSocket upgrade request to `host:port` and `path`, carrying the token as a bearer
/// header too (both clients).
pub(crate) fn ws_request(
    host: &str,
    port: u16,
    path: &str,
    token: Option<&str>,
) -> Result<Request> {
    let mut req = format!("ws://{}{path}", host_port(host, port))
        .into_client_request()
        .map_err(|e| Error::Config(e.to_string()))?;
    if let Some(t) = token {
        let v = format!("Bearer {t}")
            .parse()
            .map_err(|_| Error::Config("token is not a valid header value".into()))?;
        req.headers_mut().insert("authorization", v);
    }
    Ok(req)
}

/// Both clients' WebSocket limits: no message or frame over [`MAX_LINE`].
pub(crate) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 << 10)
        .max_message_size(Some(MAX_LINE as usize))
        .max_frame_size(Some(MAX_LINE as usize))
}

/// A failed WebSocket handshake, as the caller sees it.
pub(crate) fn ws_refused(e: tungstenite::Error) -> Error {
    match e {
        tungstenite::Error::Io(e) => Error::Io(e),
        tungstenite::Error::Http(r) => {
            Error::Rejected(format!("WebSocket upgrade refused: HTTP {}", r.status()))
        }
        e => Error::Protocol(format!("WebSocket handshake: {e}")),
    }
}
