//! The byte pipes to a broker: TCP, Unix socket or WebSocket, split into a read half and a
//! write half so one thread can wait for replies while others send. Knows nothing of the
//! protocol: whole messages in and out (a line, or a WebSocket text frame).

use crate::client::error::{Error, Result};
use crate::client::url::{Endpoint, Target, host_port};
use crate::client::websocket::{MAX_LINE, ws_config, ws_refused, ws_request};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;
use tungstenite::Message;
use tungstenite::protocol::{Role, WebSocket};

pub(super) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    #[cfg(feature = "tls")]
    Tls(crate::client::tls::TlsPipe),
}

impl Stream {
    pub(super) fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Stream::Tls(s.try_clone()?),
        })
    }
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Tcp(s) => Some(s),
            Stream::Unix(_) => None,
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Some(s.socket()),
        }
    }
    pub(super) fn shutdown(&self) {
        let _ = match (self, self.tcp()) {
            (Stream::Unix(s), _) => s.shutdown(Shutdown::Both),
            (_, Some(s)) => s.shutdown(Shutdown::Both),
            _ => Ok(()),
        };
    }
    pub(super) fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match (self, self.tcp()) {
            (Stream::Unix(s), _) => s.set_read_timeout(d),
            (_, Some(s)) => s.set_read_timeout(d),
            _ => Ok(()),
        }
    }
    /// The TLS error (an alert from the broker) that ended the connection, if any.
    pub(super) fn failure(&self) -> Option<Error> {
        match self {
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.take_failure(),
            _ => None,
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
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// The read half of a WebSocket. Writes are swallowed so that tungstenite's automatic
/// pong/close replies can never interleave with frames from the writer half; our broker does
/// not ping, and a close means the connection is over anyway.
pub(super) struct ReadOnly(Stream);

impl Read for ReadOnly {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for ReadOnly {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub(super) enum Writer {
    Lines(BufWriter<Stream>),
    Ws(Box<WebSocket<Stream>>),
}

pub(super) enum Reader {
    Lines(BufReader<Stream>),
    Ws(Box<WebSocket<ReadOnly>>),
}

impl Reader {
    /// Fills `buf` with the next message; `false` at end of stream. A read time-out (the
    /// socket's `SO_RCVTIMEO`) is an error of kind `WouldBlock`/`TimedOut` that leaves a partial
    /// line in `buf`, to be completed by the next call; clear `buf` after each message.
    pub(super) fn next(&mut self, buf: &mut Vec<u8>) -> io::Result<bool> {
        match self {
            Reader::Lines(r) => {
                let room = MAX_LINE.saturating_sub(buf.len() as u64);
                let n = r.by_ref().take(room).read_until(b'\n', buf)?;
                if buf.len() as u64 >= MAX_LINE && buf.last() != Some(&b'\n') {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "reply line too long",
                    ));
                }
                Ok(n > 0 || !buf.is_empty())
            }
            Reader::Ws(ws) => loop {
                match ws.read() {
                    Ok(Message::Text(t)) => {
                        buf.clear();
                        buf.extend_from_slice(t.as_bytes());
                        return Ok(true);
                    }
                    Ok(Message::Binary(b)) => {
                        buf.clear();
                        buf.extend_from_slice(&b);
                        return Ok(true);
                    }
                    Ok(Message::Close(_)) => return Ok(false),
                    Ok(_) => {}
                    Err(tungstenite::Error::Io(e)) => return Err(e),
                    Err(e) => return Err(io::Error::other(e)),
                }
            },
        }
    }
}

impl Writer {
    /// Sends `lines` (each request ending in `\n`): as they are over a byte stream, one text
    /// frame per line over WebSocket.
    pub(super) fn send(&mut self, lines: &[u8]) -> io::Result<()> {
        match self {
            Writer::Lines(b) => b.write_all(lines).and_then(|()| b.flush()),
            Writer::Ws(ws) => {
                for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    let text = std::str::from_utf8(line)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    ws.send(Message::text(text)).map_err(|e| match e {
                        tungstenite::Error::Io(e) => e,
                        e => io::Error::other(e),
                    })?;
                }
                Ok(())
            }
        }
    }
}

fn tcp(host: &str, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host}: no address"));
    for addr in host_port(host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Opens `ep` (with its TLS and WebSocket handshakes) within `t.connect_timeout`: the read and
/// write halves, and a handle that shuts the connection.
pub(super) fn connect(ep: &Endpoint, t: &Target) -> Result<(Reader, Writer, Stream)> {
    let (token, timeout) = (t.token.as_deref(), t.connect_timeout);
    let stream = match ep {
        Endpoint::Tcp { host, port, tls }
        | Endpoint::Ws {
            host, port, tls, ..
        } => {
            let s = tcp(host, *port, timeout)?;
            match (*tls, t) {
                #[cfg(feature = "tls")]
                (true, Target { tls: Some(cfg), .. }) => {
                    Stream::Tls(crate::client::tls::handshake(cfg, host, s, timeout)?)
                }
                (true, _) => return Err(Error::Config(format!("{ep}: no TLS configuration"))),
                (false, _) => Stream::Tcp(s),
            }
        }
        Endpoint::Unix(p) => Stream::Unix(UnixStream::connect(p)?),
    };
    let closer = stream.try_clone()?;
    let Endpoint::Ws {
        host, port, path, ..
    } = ep
    else {
        let reader = Reader::Lines(BufReader::with_capacity(16 << 10, stream.try_clone()?));
        return Ok((
            reader,
            Writer::Lines(BufWriter::with_capacity(8 << 10, stream)),
            closer,
        ));
    };
    let req = ws_request(host, *port, path, token)?;
    let tcp = stream
        .tcp()
        .ok_or_else(|| Error::Config(format!("{ep}: WebSocket needs TCP")))?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let cfg = ws_config();
    let (hs, _resp) = tungstenite::client::client_with_config(req, stream.try_clone()?, Some(cfg))
        .map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => ws_refused(e),
            e => Error::Protocol(format!("WebSocket handshake: {e}")),
        })?;
    drop(hs);
    stream.set_read_timeout(None)?;
    tcp.set_write_timeout(None)?;
    let reader = WebSocket::from_raw_socket(ReadOnly(stream.try_clone()?), Role::Client, Some(cfg));
    let writer = WebSocket::from_raw_socket(stream, Role::Client, Some(cfg));
    Ok((
        Reader::Ws(Box::new(reader)),
        Writer::Ws(Box::new(writer)),
        closer,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read time-out in the middle of a line keeps the part read so far: the next read
    /// completes the same line (callers read with `SO_RCVTIMEO` and retry).
    #[test]
    fn lines_survive_a_timeout_mid_line() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut r = Reader::Lines(BufReader::new(Stream::Unix(a)));
        let mut buf = Vec::new();
        b.write_all(br#"{"type":"pong","#).unwrap();
        let e = r.next(&mut buf).unwrap_err();
        assert!(matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ));
        b.write_all(b"\"uuid\":\"x\"}\n{\"n\":2}\n").unwrap();
        assert!(r.next(&mut buf).unwrap());
        assert_eq!(buf, b"{\"type\":\"pong\",\"uuid\":\"x\"}\n");
        buf.clear();
        assert!(r.next(&mut buf).unwrap());
        assert_eq!(buf, b"{\"n\":2}\n");
        buf.clear();
        drop(b);
        assert!(!r.next(&mut buf).unwrap(), "end of stream");
    }
}
