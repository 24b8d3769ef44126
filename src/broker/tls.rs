//! TLS on the broker's TCP port (feature `tls`): a connection whose first byte is 0x16 (a TLS
//! handshake record) is wrapped in a rustls [`ServerConnection`], and the same sniffing then
//! runs on the plaintext inside (NDJSON, WebSocket, `/metrics`, the status page).
//!
//! [`TlsStream`] drives rustls sans-IO style (`read_tls`, `process_new_packets`, `write_tls`)
//! over the non-blocking socket and looks to the rest of the reactor like the socket itself,
//! with two promises the reactor's edge-triggered loop relies on: a short read means the socket
//! itself said `WouldBlock` (nothing is left buffered where no readiness event would find it),
//! and at most one chunk of output waits inside rustls, so output that a peer does not read
//! backs up in the core's buffer, where the output caps see it.
//!
//! The certificate, key and client CA are read again on [`TlsReloader::reload`] (`lmx start`
//! calls it on SIGHUP): new connections get the new files, open ones keep theirs.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use mio::net::TcpStream;
use rustls::ServerConfig;
use rustls::ServerConnection;
use rustls::server::WebPkiClientVerifier;

use super::BrokerError;
use super::stream::Stream;
use super::transport::{Cx, Io, Socket, Step};
use crate::pem;

/// Plaintext handed to rustls per write: more waits in the core's output buffer.
const CHUNK: usize = 16 * 1024;

/// The PEM files of the broker's TLS settings (see `BrokerBuilder::tls`).
#[derive(Debug, Clone)]
pub(super) struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates signed by these CAs authenticate their connection.
    pub client_ca: Option<PathBuf>,
}

/// The current server configuration, replaced whole by a reload.
pub(super) struct ServerTls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    pub(super) fn load(files: TlsFiles) -> Result<Arc<ServerTls>, BrokerError> {
        let cfg = build(&files).map_err(BrokerError::Tls)?;
        Ok(Arc::new(ServerTls {
            files,
            current: RwLock::new(Arc::new(cfg)),
        }))
    }

    fn config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn build(files: &TlsFiles) -> Result<ServerConfig, String> {
    let provider = pem::provider();
    let certs = pem::certs(&files.cert)?;
    let key = pem::key(&files.key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let roots = Arc::new(pem::roots(ca)?);
            // Offered, not required: a client without a certificate may still use the token.
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("{} with {}: {e}", files.cert.display(), files.key.display()))
}

/// Reloads the broker's certificate, key and client CA from their files; see
/// [`Broker::tls_reloader`](super::Broker::tls_reloader).
#[derive(Clone)]
pub struct TlsReloader(Arc<ServerTls>);

impl TlsReloader {
    pub(super) fn new(tls: Arc<ServerTls>) -> Self {
        TlsReloader(tls)
    }

    /// Reads the files again. New connections use them; open connections are untouched. On
    /// an error (a missing or bad file) the previous configuration stays in force.
    pub fn reload(&self) -> Result<(), BrokerError> {
        let cfg = build(&self.0.files).map_err(BrokerError::Tls)?;
        *self.0.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(cfg);
        Ok(())
    }
}

impl Socket {
    /// Called with each first peek of a TCP connection in `Io::Sniff`. A ClientHello on a
    /// plain stream becomes a [`TlsStream`] (peeked again, inside); plain TCP from beyond this
    /// machine is refused under `require_tls`; a TLS failure closes with its reason; a verified
    /// client certificate authenticates the connection. `Err`: the connection must close.
    pub(super) fn tls_gate(
        &mut self,
        cx: &mut Cx<'_>,
        mut stream: Stream,
        mut peeked: io::Result<usize>,
        first: &mut [u8; 1],
    ) -> Result<(Stream, io::Result<usize>), Step> {
        let is_tcp = matches!(stream, Stream::Tcp(_));
        if is_tcp && matches!(peeked, Ok(n) if n > 0) {
            if first[0] == 0x16
                && let Some(tls) = cx.tls
            {
                let Stream::Tcp(tcp) = stream else {
                    return Err(Step::Keep);
                };
                match ServerConnection::new(tls.config()) {
                    Ok(conn) => stream = Stream::Tls(Box::new(TlsStream::new(tcp, conn))),
                    Err(e) => {
                        drop(tcp);
                        return Err(Step::Close(format!("TLS: {e}").into()));
                    }
                }
                peeked = stream.peek(first);
            } else if first[0] != 0x16 && cx.cfg.require_tls && !self.peer.is_some_and(is_local) {
                stream.discard_input();
                self.io = Io::Sniff(stream);
                return Err(self.refuse(
                    cx,
                    "plain TCP from beyond this machine; this broker requires TLS (tls://, wss://)",
                ));
            }
        }
        if let Stream::Tls(t) = &mut stream {
            match &peeked {
                Ok(n) if *n > 0 && t.take_client_cert() => cx.core.trusted(self.id),
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    let why = format!("TLS handshake failed: {e}");
                    self.io = Io::Sniff(stream);
                    return Err(self.refuse(cx, why));
                }
                _ => {}
            }
        }
        Ok((stream, peeked))
    }
}

/// Loopback, also as an IPv4-mapped IPv6 address (a broker bound to `[::]`).
fn is_local(peer: SocketAddr) -> bool {
    match peer.ip() {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
    }
}

/// A TCP connection inside TLS; see the module docs for what its reads and writes promise.
pub(crate) struct TlsStream {
    pub(super) sock: TcpStream,
    conn: ServerConnection,
    /// Plaintext taken out of rustls by [`peek`](Self::peek) and not read yet.
    peeked: Vec<u8>,
    /// Its verified client certificate was reported (see `take_client_cert`).
    told: bool,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("sock", &self.sock)
            .finish()
    }
}

impl TlsStream {
    fn new(sock: TcpStream, conn: ServerConnection) -> TlsStream {
        TlsStream {
            sock,
            conn,
            peeked: Vec::new(),
            told: false,
        }
    }

    /// True once, after the handshake, if the client presented a certificate (which the
    /// verifier then checked against the client CA: an unverified one fails the handshake).
    fn take_client_cert(&mut self) -> bool {
        if self.told || self.conn.is_handshaking() || self.conn.peer_certificates().is_none() {
            return false;
        }
        self.told = true;
        true
    }

    /// Reads one batch of TLS records from the socket and processes them. Ok(false) at the
    /// socket's end; `WouldBlock` when it has nothing.
    fn pull(&mut self) -> io::Result<bool> {
        loop {
            match self.conn.read_tls(&mut self.sock) {
                Ok(0) => return Ok(false),
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if let Err(e) = self.conn.process_new_packets() {
            // Sends the alert rustls queued, so the peer learns why.
            let _ = self.push();
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        self.push()?;
        Ok(true)
    }

    /// Writes what rustls has queued. Ok(false): the socket is full, some is left.
    fn push(&mut self) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Plaintext that rustls already has: Some(0) after the peer's close_notify or the
    /// socket's end, None when more must be read.
    fn plain(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self.conn.reader().read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(Some(0)),
            Err(e) => Err(e),
        }
    }

    /// Like `TcpStream::peek` on the plaintext: up to `buf.len()` bytes that the next reads
    /// return; Ok(0) at the end; `WouldBlock` while nothing has arrived (or the handshake runs).
    pub(super) fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.peeked.len() < buf.len() {
            let have = self.peeked.len();
            self.peeked.resize(buf.len(), 0);
            let mut chunk = std::mem::take(&mut self.peeked);
            let got = self.plain(&mut chunk[have..]);
            self.peeked = chunk;
            let got = match got {
                Ok(got) => got,
                Err(e) => {
                    self.peeked.truncate(have);
                    return Err(e);
                }
            };
            self.peeked.truncate(have + got.unwrap_or(0));
            match got {
                Some(0) => break,
                Some(_) => continue,
                None => {}
            }
            match self.pull() {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !self.peeked.is_empty() => {
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        let n = self.peeked.len().min(buf.len());
        buf[..n].copy_from_slice(&self.peeked[..n]);
        Ok(n)
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = self.peeked.len().min(buf.len());
        buf[..n].copy_from_slice(&self.peeked[..n]);
        self.peeked.drain(..n);
        while n < buf.len() {
            match self.plain(&mut buf[n..]) {
                Ok(Some(0)) => return Ok(n),
                Ok(Some(k)) => {
                    n += k;
                    continue;
                }
                Ok(None) => {}
                Err(_) if n > 0 => return Ok(n),
                Err(e) => return Err(e),
            }
            // Everything rustls had is out: only a `WouldBlock` of the socket ends a short read.
            match self.pull() {
                Ok(true) => {}
                Ok(false) => return Ok(n),
                Err(_) if n > 0 => return Ok(n),
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.push()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.conn.writer().write(&buf[..buf.len().min(CHUNK)])?;
        self.push()?;
        Ok(n)
    }

    /// `WouldBlock` while records wait for the socket.
    fn flush(&mut self) -> io::Result<()> {
        if self.push()? {
            Ok(())
        } else {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }
}

impl Drop for TlsStream {
    /// A close_notify, if the socket takes it: the peer then sees a clean end, not a cut.
    fn drop(&mut self) {
        if !self.conn.is_handshaking() {
            self.conn.send_close_notify();
            let _ = self.push();
        }
    }
}
