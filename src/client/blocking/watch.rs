//! [`Watch`]: the stream of snapshots a broker pushes after a `watch` request (what the status
//! page and `lmx top` draw). A watch is not a request with one answer, so it has a connection
//! of its own rather than sharing a [`Client`](crate::Client)'s; it reaches the broker the same
//! way (the same URL forms, token and transports).

use super::transport::{self, Reader, Writer};
use crate::client::error::{Error, Result};
use crate::client::requests::new_uuid;
use crate::client::url::Settings;
use crate::proto::{DecodeErrorKind, Reply, ReplyDecoder, Request};
use std::time::Duration;

/// Snapshots of a broker, one per interval, as the JSON text the broker sent (its fields are
/// described under `watch` in docs/protocol.md).
///
/// ```
/// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
/// # let url = format!("tcp://{}", broker.local_addr().unwrap());
/// use std::time::Duration;
/// let mut w = live_mutex::client::Watch::open(&url, Duration::from_millis(200))?;
/// let snapshot = w.next_snapshot()?.expect("a first snapshot at once");
/// assert!(snapshot.contains("\"type\":\"watch\""));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Watch {
    reader: Reader,
    // Kept open: closing it would end the watch.
    _writer: Writer,
    buf: Vec<u8>,
    scratch: Vec<u8>,
    decoder: ReplyDecoder,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

impl Watch {
    /// Connects to `url` (any form [`Client::connect`](crate::Client::connect) takes, with
    /// its token rules), names the connection like a client does, and asks for a snapshot
    /// every `interval` (the broker clamps it to its own bounds).
    pub fn open(url: &str, interval: Duration) -> Result<Watch> {
        let target = Settings::new(url).resolve()?;
        // A list of brokers: the first that answers, in order.
        let mut failed = Error::ConnectionLost;
        let mut open = None;
        for ep in &target.endpoints {
            match transport::connect(ep, &target) {
                Ok(c) => {
                    open = Some(c);
                    break;
                }
                Err(e) => failed = e,
            }
        }
        let Some((reader, mut writer, _closer)) = open else {
            return Err(failed);
        };
        let mut out = Vec::with_capacity(256);
        let auth_uuid = new_uuid();
        if let Some(token) = target.token.as_deref() {
            Request::Auth {
                uuid: Some(&auth_uuid),
                token,
            }
            .encode(&mut out);
            out.push(b'\n');
        }
        let name = crate::client::calls::client_name();
        Request::Hello {
            name: &name,
            pid: Some(u64::from(std::process::id())),
        }
        .encode(&mut out);
        out.push(b'\n');
        let uuid = new_uuid();
        let interval_ms = Some(interval.as_millis().min(u128::from(u64::MAX)) as u64);
        Request::Watch {
            uuid: &uuid,
            interval_ms,
        }
        .encode(&mut out);
        out.push(b'\n');
        writer.send(&out)?;
        Ok(Watch {
            reader,
            _writer: writer,
            buf: Vec::with_capacity(16 << 10),
            scratch: Vec::new(),
            decoder: ReplyDecoder::default(),
        })
    }

    /// Waits for the next snapshot; `Ok(None)` when the broker closed the connection. A
    /// refusal (a wrong token, too many watchers) is [`Error::Rejected`].
    pub fn next_snapshot(&mut self) -> Result<Option<String>> {
        loop {
            self.buf.clear();
            if !self.reader.next(&mut self.buf)? {
                return Ok(None);
            }
            while self.buf.last().is_some_and(|b| b.is_ascii_whitespace()) {
                self.buf.pop();
            }
            if self.buf.is_empty() {
                continue;
            }
            self.scratch.clear();
            self.scratch.extend_from_slice(&self.buf);
            match self.decoder.decode(&mut self.scratch) {
                Ok(Reply::Error { error, .. }) => return Err(Error::Rejected(error.into())),
                Ok(Reply::Auth {
                    authenticated: false,
                    error,
                    ..
                }) => {
                    let why = error.unwrap_or("wrong auth token");
                    return Err(Error::Rejected(why.into()));
                }
                // The snapshot is the one reply the client decoder does not model.
                Err(e) if matches!(&e.kind, DecodeErrorKind::UnknownType(t) if t == "watch") => {
                    return String::from_utf8(std::mem::take(&mut self.buf))
                        .map(Some)
                        .map_err(|_| Error::Protocol("watch snapshot is not UTF-8".into()));
                }
                Err(e) => return Err(Error::Protocol(format!("bad watch reply: {e}"))),
                Ok(_) => {}
            }
        }
    }
}

impl Iterator for Watch {
    type Item = Result<String>;
    fn next(&mut self) -> Option<Result<String>> {
        self.next_snapshot().transpose()
    }
}
