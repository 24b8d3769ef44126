//! The byte pipes of the async client: TCP, Unix socket or WebSocket, each also inside TLS
//! (feature `tls`, tokio-rustls), whole messages in and out (a line, or a WebSocket text
//! frame). Knows nothing of the protocol.

use crate::client::url::{Endpoint, Target, host_port};
use crate::client::websocket::{MAX_LINE, ws_config, ws_refused, ws_request};
use crate::client::{Error, Result};
use futures_util::{SinkExt, StreamExt};
use std::io;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message};

/// The read half of a TCP or Unix connection.
type ReadHalf = Box<dyn AsyncRead + Unpin + Send>;

/// A TCP connection inside TLS, or (for WebSocket) outside it.
pub(super) trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

pub(super) enum Io {
    /// NDJSON: the read half here; the write half is a [`RawWriter`].
    Lines(BufReader<ReadHalf>),
    /// NDJSON inside TLS: reads and writes both here (the connection task writes).
    TlsLines(BufReader<Box<dyn Duplex>>),
    Ws(Box<WebSocketStream<Box<dyn Duplex>>>),
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
            Io::Lines(r) => recv_line(r, buf).await,
            Io::TlsLines(r) => recv_line(r, buf).await,
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
            Io::TlsLines(s) => {
                s.get_mut().write_all(lines).await?;
                s.get_mut().flush().await
            }
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

/// The next line of `r` into `buf`; see [`Io::recv`].
async fn recv_line(r: &mut (impl AsyncBufRead + Unpin), buf: &mut Vec<u8>) -> io::Result<bool> {
    loop {
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

/// Opens `ep` (with the TLS and WebSocket handshakes, if any) within the connect time-out;
/// the write half of a plain NDJSON connection comes apart.
pub(super) async fn connect(ep: &Endpoint, t: &Target) -> Result<(Io, Option<RawWriter>)> {
    match tokio::time::timeout(t.connect_timeout, open(ep, t)).await {
        Ok(r) => r,
        Err(_) => Err(Error::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            "connect timed out",
        ))),
    }
}

async fn open(ep: &Endpoint, t: &Target) -> Result<(Io, Option<RawWriter>)> {
    let lines = |r: ReadHalf, w| (Io::Lines(BufReader::with_capacity(16 << 10, r)), Some(w));
    let (host, port, path) = match ep {
        Endpoint::Tcp {
            host,
            port,
            tls: false,
        } => {
            let (r, w) = tcp(host, *port).await?.into_split();
            return Ok(lines(Box::new(r), RawWriter::Tcp(w)));
        }
        Endpoint::Tcp { host, port, .. } => {
            let s = tls(t, host, tcp(host, *port).await?).await?;
            return Ok((Io::TlsLines(BufReader::with_capacity(16 << 10, s)), None));
        }
        Endpoint::Unix(p) => {
            let (r, w) = UnixStream::connect(p).await?.into_split();
            return Ok(lines(Box::new(r), RawWriter::Unix(w)));
        }
        Endpoint::Ws {
            host, port, path, ..
        } => (host, *port, path),
    };
    let req = ws_request(host, port, path, t.token.as_deref())?;
    let stream: Box<dyn Duplex> = match ep.is_tls() {
        true => tls(t, host, tcp(host, port).await?).await?,
        false => Box::new(tcp(host, port).await?),
    };
    let (ws, _resp) = tokio_tungstenite::client_async_with_config(req, stream, Some(ws_config()))
        .await
        .map_err(ws_refused)?;
    Ok((Io::Ws(Box::new(ws)), None))
}

/// The TLS handshake over `s`, verifying the broker's certificate for `host`.
#[cfg(feature = "tls")]
async fn tls(t: &Target, host: &str, s: TcpStream) -> Result<Box<dyn Duplex>> {
    use crate::client::tls;
    let cfg = t
        .tls
        .clone()
        .ok_or_else(|| Error::Config("no TLS configuration".into()))?;
    let s = tokio_rustls::TlsConnector::from(cfg)
        .connect(tls::server_name(host)?, s)
        .await
        .map_err(|e| tls::failure(host, &e))?;
    Ok(Box::new(s))
}

#[cfg(not(feature = "tls"))]
async fn tls(_: &Target, host: &str, _: TcpStream) -> Result<Box<dyn Duplex>> {
    Err(Error::Config(format!(
        "{host}: TLS needs live-mutex built with the `tls` feature"
    )))
}
