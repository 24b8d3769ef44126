//! TLS for both clients (feature `tls`): the configuration from the environment, the errors
//! that name what failed, and the blocking client's TLS stream, whose read and write halves
//! work from two threads at once like a plain socket's.
//!
//! Trust: the CA certificates in `LMX_TLS_CA` (a PEM file) if set, else the system's roots.
//! A client certificate: `LMX_TLS_CERT` and `LMX_TLS_KEY` (PEM), both or neither. A
//! `tls://` or `wss://` URL never falls back to plain text.

use super::error::{Error, Result};
use crate::pem;
use rustls::pki_types::ServerName;
use rustls::{AlertDescription, CertificateError, ClientConfig, ClientConnection, RootCertStore};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// A client's TLS settings, read once per client (reconnects reuse them).
pub(crate) type Config = Arc<ClientConfig>;

/// The configuration: the files given to the builder, else those the environment names; see
/// the module docs.
pub(crate) fn config(ca: Option<PathBuf>, cert: Option<(PathBuf, PathBuf)>) -> Result<Config> {
    let var = |n: &str| {
        std::env::var_os(n)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let (cert, key) = match cert {
        Some((c, k)) => (Some(c), Some(k)),
        None => (var("LMX_TLS_CERT"), var("LMX_TLS_KEY")),
    };
    let roots = match ca.or_else(|| var("LMX_TLS_CA")) {
        Some(ca) => pem::roots(&ca).map_err(|e| Error::Config(format!("LMX_TLS_CA: {e}")))?,
        None => system_roots()?,
    };
    let builder = ClientConfig::builder_with_provider(pem::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let cfg = match (cert, key) {
        (Some(cert), Some(key)) => {
            let certs =
                pem::certs(&cert).map_err(|e| Error::Config(format!("LMX_TLS_CERT: {e}")))?;
            let key = pem::key(&key).map_err(|e| Error::Config(format!("LMX_TLS_KEY: {e}")))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| Error::Config(format!("LMX_TLS_CERT with LMX_TLS_KEY: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(Error::Config(
                "LMX_TLS_CERT and LMX_TLS_KEY go together: set both or neither".into(),
            ));
        }
    };
    Ok(Arc::new(cfg))
}

fn system_roots() -> Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(Error::Config(format!(
            "no system CA certificates found{why}: set LMX_TLS_CA to the broker's CA (a PEM file)"
        )));
    }
    Ok(store)
}

/// The name the broker's certificate must carry: the URL's host (a DNS name or an IP).
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(host.to_string())
        .map_err(|_| Error::Config(format!("{host:?} is not a valid TLS server name")))
}

/// A TLS failure as the caller sees it: which certificate, and what is wrong with it.
pub(crate) fn failure(host: &str, e: &io::Error) -> Error {
    let tls = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    let why = match tls {
        Some(rustls::Error::InvalidCertificate(c)) => broker_cert(host, c),
        Some(rustls::Error::AlertReceived(a)) => refused(*a),
        Some(other) => other.to_string(),
        None => match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted => "the broker closed the connection during the \
                TLS handshake: does it serve TLS? (lmx start --tls-cert FILE --tls-key FILE)"
                .to_string(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                "the TLS handshake timed out".to_string()
            }
            _ => return Error::Io(io::Error::new(e.kind(), e.to_string())),
        },
    };
    Error::Tls(format!("{host}: {why}"))
}

fn broker_cert(host: &str, c: &CertificateError) -> String {
    use CertificateError as C;
    match c {
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            format!("the broker's certificate is not valid for the name {host:?} (wrong name)")
        }
        C::UnknownIssuer => "the broker's certificate is signed by an unknown CA (trust its CA \
                             with LMX_TLS_CA=FILE)"
            .to_string(),
        C::Expired | C::ExpiredContext { .. } => {
            format!("the broker's certificate has expired ({c})")
        }
        C::NotValidYet | C::NotValidYetContext { .. } => {
            format!("the broker's certificate is not valid yet ({c})")
        }
        C::Revoked => "the broker's certificate is revoked".to_string(),
        _ => format!("the broker's certificate is invalid: {c}"),
    }
}

/// An alert from the broker: after our handshake, it judges our client certificate.
fn refused(a: AlertDescription) -> String {
    use AlertDescription as A;
    match a {
        A::BadCertificate
        | A::UnknownCA
        | A::CertificateExpired
        | A::CertificateRevoked
        | A::CertificateUnknown
        | A::UnsupportedCertificate
        | A::AccessDenied
        | A::DecryptError => {
            format!("the broker refused our client certificate (LMX_TLS_CERT): {a:?}")
        }
        A::CertificateRequired => "the broker requires a client certificate (LMX_TLS_CERT, \
                                   LMX_TLS_KEY)"
            .to_string(),
        _ => format!("the broker ended the TLS session: {a:?}"),
    }
}

/// Runs the handshake on a blocking socket within `timeout`; the broker's certificate is
/// verified here.
pub(super) fn handshake(
    cfg: &Config,
    host: &str,
    mut sock: TcpStream,
    timeout: Duration,
) -> Result<TlsPipe> {
    let mut conn = ClientConnection::new(cfg.clone(), server_name(host)?)
        .map_err(|e| Error::Tls(format!("{host}: {e}")))?;
    // Records are taken out of rustls at once (see `TlsPipe::write`).
    conn.set_buffer_limit(None);
    sock.set_read_timeout(Some(timeout))?;
    sock.set_write_timeout(Some(timeout))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| failure(host, &e))?;
    }
    sock.set_read_timeout(None)?;
    sock.set_write_timeout(None)?;
    Ok(TlsPipe {
        sock,
        shared: Arc::new(Shared {
            conn: Mutex::new(conn),
            write: Mutex::new(()),
            failure: Mutex::new(None),
            host: host.to_string(),
        }),
        raw: Vec::new(),
        raw_at: 0,
        out: Vec::new(),
    })
}

struct Shared {
    conn: Mutex<ClientConnection>,
    /// Held across a write to the socket, so records leave in the order they were sealed.
    write: Mutex<()>,
    /// The TLS error that ended the stream (an alert from the broker), for the caller.
    failure: Mutex<Option<Error>>,
    host: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One handle on a TLS connection over a blocking socket; its clones share the session.
///
/// Reading takes the socket's bytes without holding the session lock and only then opens
/// them, and writing seals the records under the lock and sends them after releasing it: so
/// a thread blocked reading never stops a writer, and a writer blocked on a full socket never
/// stops the reader that would drain the broker's replies (which is what lets a backed-up
/// broker read again).
pub(super) struct TlsPipe {
    sock: TcpStream,
    shared: Arc<Shared>,
    /// Bytes read from the socket; those from `raw_at` on are not yet given to rustls.
    raw: Vec<u8>,
    raw_at: usize,
    out: Vec<u8>,
}

impl TlsPipe {
    pub(super) fn try_clone(&self) -> io::Result<TlsPipe> {
        Ok(TlsPipe {
            sock: self.sock.try_clone()?,
            shared: self.shared.clone(),
            raw: Vec::new(),
            raw_at: 0,
            out: Vec::new(),
        })
    }

    pub(super) fn socket(&self) -> &TcpStream {
        &self.sock
    }

    /// The TLS error that ended the connection, if one did (taken once).
    pub(super) fn take_failure(&self) -> Option<Error> {
        lock(&self.shared.failure).take()
    }
}

impl Read for TlsPipe {
    /// rustls refuses more records (`read_tls`: "received plaintext buffer full") while it
    /// holds more than 16 KiB of opened plaintext, and one socket read can complete a record
    /// that the previous read began: so records are fed to it only while its plaintext is
    /// empty, one `read_tls` at a time, and the socket bytes it has not taken yet stay in
    /// `raw` for the next call.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match lock(&self.shared.conn).reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if self.raw_at == self.raw.len() {
                self.raw.resize(8 << 10, 0);
                self.raw_at = 0;
                // A read time-out (the driver's way to wake up) leaves nothing behind.
                let n = (&self.sock)
                    .read(&mut self.raw)
                    .inspect_err(|_| self.raw.clear())?;
                self.raw.truncate(n);
            }
            // Empty at the peer's EOF: rustls then reports the end (or a truncation) above.
            let mut rest = &self.raw[self.raw_at..];
            let before = rest.len();
            let mut conn = lock(&self.shared.conn);
            conn.read_tls(&mut rest)?;
            self.raw_at += before - rest.len();
            if let Err(e) = conn.process_new_packets() {
                let e = io::Error::new(io::ErrorKind::InvalidData, e);
                *lock(&self.shared.failure) = Some(failure(&self.shared.host, &e));
                return Err(e);
            }
        }
    }
}

impl Write for TlsPipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _order = lock(&self.shared.write);
        self.out.clear();
        {
            let mut conn = lock(&self.shared.conn);
            conn.writer().write_all(buf)?;
            while conn.wants_write() {
                conn.write_tls(&mut self.out)?;
            }
        }
        (&self.sock).write_all(&self.out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
