//! The byte pipes of the async client: TCP, Unix socket or WebSocket, whole messages in and
//! out (a line, or a WebSocket text frame). Knows nothing of the protocol.

use crate::client::transport::{MAX_LINE, ws_config, ws_refused, ws_request};
use crate::client::url::{Endpoint, host_port};
use crate::client::{Error, Result};
use futures_util::{SinkExt, StreamExt};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::{TcpStream, UnixStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message};

/// The read half of a TCP or Unix connection.
type ReadHalf = Box<dyn AsyncRead + Unpin + Send>;

pub(super) enum Io {
    /// NDJSON: the read half here; the write half is a [`RawWriter`].
    Lines(BufReader<ReadHalf>),
    Ws(Box<WebSocketStream<TcpStream>>),
}

/// The write half of a TCP or Unix connection. Its writes take `&self` and never wait
/// (`try_write`), so the task that queues a request can write it itself, with no hop to the
/// connection task; the caller serialises writes (the connection's state lock).
pub(super) enum RawWriter {
    Tcp(tokio::net::tcp::OwnedWriteHalf),
    Unix(tokio::net::unix::OwnedWriteHalf),
}

impl RawWriter {
    pub(super) fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            RawWriter::Tcp(w) => w.try_write(buf),
            RawWriter::Unix(w) => w.try_write(buf),
        }
    }

    /// Waits until the socket takes bytes again.
    pub(super) async fn writable(&self) -> io::Result<()> {
        match self {
            RawWriter::Tcp(w) => w.writable().await,
            RawWriter::Unix(w) => w.writable().await,
        }
    }
}

impl Io {
    /// Appends the next message to `buf` (without its `\n`); `false` at end of stream.
    /// Cancel safe: bytes of a partial line stay in `buf` and the next call completes it, so
    /// the caller clears `buf` only after a whole message.
    pub(super) async fn recv(&mut self, buf: &mut Vec<u8>) -> io::Result<bool> {
        match self {
            Io::Lines(r) => loop {
                let avail = r.fill_buf().await?;
                if avail.is_empty() {
                    return Ok(false);
                }
                if let Some(i) = avail.iter().position(|&b| b == b'\n') {
                    buf.extend_from_slice(&avail[..i]);
                    r.consume(i + 1);
                    return Ok(true);
                }
                let n = avail.len();
                buf.extend_from_slice(avail);
                r.consume(n);
                if buf.len() as u64 > MAX_LINE {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "reply line too long",
                    ));
                }
            },
            Io::Ws(ws) => loop {
                match ws.next().await {
                    None | Some(Ok(Message::Close(_))) => return Ok(false),
                    Some(Ok(Message::Text(t))) => {
                        buf.extend_from_slice(t.as_bytes());
                        return Ok(true);
                    }
                    Some(Ok(Message::Binary(b))) => {
                        buf.extend_from_slice(&b);
                        return Ok(true);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(tungstenite::Error::Io(e))) => return Err(e),
                    Some(Err(e)) => return Err(io::Error::other(e)),
                }
            },
        }
    }

    /// Sends `lines` (each request ending in `\n`) over WebSocket, one text frame per line,
    /// flushed together. NDJSON goes through the [`RawWriter`] instead.
    pub(super) async fn send(&mut self, lines: &[u8]) -> io::Result<()> {
        match self {
            Io::Lines(_) => Err(io::Error::other("NDJSON is written through its RawWriter")),
            Io::Ws(ws) => {
                for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    let text = std::str::from_utf8(line)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    ws.feed(Message::text(text)).await.map_err(ws_io)?;
                }
                ws.flush().await.map_err(ws_io)
            }
        }
    }
}

fn ws_io(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        e => io::Error::other(e),
    }
}

async fn tcp(host: &str, port: u16) -> io::Result<TcpStream> {
    let s = TcpStream::connect(host_port(host, port)).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Opens `ep` (with the WebSocket handshake, if any) within `timeout`; the write half of an
/// NDJSON connection comes apart.
pub(super) async fn connect(
    ep: &Endpoint,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(Io, Option<RawWriter>)> {
    match tokio::time::timeout(timeout, open(ep, token)).await {
        Ok(r) => r,
        Err(_) => Err(Error::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            "connect timed out",
        ))),
    }
}

async fn open(ep: &Endpoint, token: Option<&str>) -> Result<(Io, Option<RawWriter>)> {
    let lines = |r: ReadHalf, w| (Io::Lines(BufReader::with_capacity(16 << 10, r)), Some(w));
    let (host, port, path) = match ep {
        Endpoint::Tcp { host, port } => {
            let (r, w) = tcp(host, *port).await?.into_split();
            return Ok(lines(Box::new(r), RawWriter::Tcp(w)));
        }
        Endpoint::Unix(p) => {
            let (r, w) = UnixStream::connect(p).await?.into_split();
            return Ok(lines(Box::new(r), RawWriter::Unix(w)));
        }
        Endpoint::Ws { host, port, path } => (host, *port, path),
    };
    let req = ws_request(host, port, path, token)?;
    let stream = tcp(host, port).await?;
    let (ws, _resp) = tokio_tungstenite::client_async_with_config(req, stream, Some(ws_config()))
        .await
        .map_err(ws_refused)?;
    Ok((Io::Ws(Box::new(ws)), None))
}
