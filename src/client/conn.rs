//! One broker connection: a transport, replies routed by `uuid`, and a writer behind a mutex so
//! any number of threads can pipeline requests on it.
//!
//! Reading is leader/follower: a thread waiting for a reply takes the read half itself if nobody
//! else holds it, reads until its own reply arrives and routes every other message to its
//! waiter's channel; then it hands the read half on (nudges another waiter). So a thread alone on
//! its connection reads its replies straight off the socket, with no thread hop per reply. A
//! background thread reads only while nobody waits (to notice a dropped connection and run the
//! guards' `on_lost` hooks, and to answer grants nobody waits for); it steps aside as soon as a
//! caller waits.

use super::error::{Error, Result};
use super::url::{Endpoint, host_port};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
use tungstenite::{Message, client::IntoClientRequest};

/// Replies larger than this mean the peer is not a live-mutex broker (or is broken); `ls` of a
/// very large table is the only legitimate big reply.
const MAX_LINE: u64 = 16 << 20;

/// A caller holding the read half wakes this often to check its deadline.
const CALLER_READ_TIMEOUT: Duration = Duration::from_millis(50);
/// The background reader takes the read half only after nobody has waited for this long...
const BG_IDLE: Duration = Duration::from_millis(20);
/// ...and then wakes this often to step aside for a caller (who otherwise gets its reply
/// through it, one thread hop later).
const BG_READ_TIMEOUT: Duration = Duration::from_millis(200);
/// A waiter that is not reading re-checks whether the read half became free at least this often
/// (only a safety net: whoever releases the read half nudges a waiter).
const FOLLOWER_PARK: Duration = Duration::from_secs(1);

/// Which broker is on the other end, detected once per connection with a `ping`.
///
/// ```
/// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
/// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
/// assert_eq!(client.broker_kind()?, live_mutex::BrokerKind::Rust);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// This crate's broker: broker-side try-lock and wait timeouts, `ping`, `extend`, fencing
    /// tokens.
    Rust,
    /// The npm live-mutex 0.2.x broker: needs `lock-received` acks, no `ping`, no `extend`.
    Node,
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }
    fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
    fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(d),
            Stream::Unix(s) => s.set_read_timeout(d),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// The read half of a WebSocket. Writes are swallowed so that tungstenite's automatic
/// pong/close replies can never interleave with frames from the writer half; our broker does
/// not ping, and a close means the connection is over anyway.
struct ReadOnly(Stream);

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

enum Writer {
    Lines(BufWriter<Stream>),
    Ws(Box<WebSocket<Stream>>),
}

enum Reader {
    Lines(BufReader<Stream>),
    Ws(Box<WebSocket<ReadOnly>>),
}

impl Reader {
    /// Fills `buf` with the next message; `false` at end of stream. A read time-out (the
    /// socket's `SO_RCVTIMEO`) is an error of kind `WouldBlock`/`TimedOut` that leaves a partial
    /// line in `buf`, to be completed by the next call; clear `buf` after each message.
    fn next(&mut self, buf: &mut Vec<u8>) -> io::Result<bool> {
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

type LostHook = Box<dyn FnOnce() + Send>;

struct State {
    dead: bool,
    pending: HashMap<u128, Sender<Value>, ahash::RandomState>,
    on_lost: Vec<(u64, LostHook)>,
    next_hook: u64,
    /// Requests whose caller is inside [`Pending::recv`] right now.
    waiting: Vec<u128>,
    /// When the last caller left [`Pending::recv`].
    last_wait: Instant,
}

/// The read half and what a time-out left of a partial message.
struct ReadSide {
    reader: Reader,
    buf: Vec<u8>,
    timeout: Option<Duration>,
}

enum ReadOutcome {
    Message,
    TimedOut,
    Closed,
}

/// A nudge: "the read half may be free, try to take it". Never a real reply (those are objects).
const NUDGE: Value = Value::Null;

struct Shared {
    writer: Mutex<Writer>,
    state: Mutex<State>,
    read: Mutex<ReadSide>,
    node: AtomicBool,
    dead: AtomicBool,
    closer: Stream,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves no broken invariant worth refusing service for.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn write(&self, msg: &Value) -> Result<()> {
        let mut w = lock(&self.writer);
        let r = match &mut *w {
            Writer::Lines(b) => serde_json::to_writer(&mut *b, msg)
                .map_err(io::Error::from)
                .and_then(|()| b.write_all(b"\n"))
                .and_then(|()| b.flush()),
            Writer::Ws(ws) => ws
                .send(Message::text(msg.to_string()))
                .map_err(|e| match e {
                    tungstenite::Error::Io(e) => e,
                    e => io::Error::other(e),
                }),
        };
        drop(w);
        r.map_err(|_| {
            self.fail();
            Error::ConnectionLost
        })
    }

    /// Marks the connection dead: every waiter sees its channel close, every guard sees
    /// `is_lost`, and the socket is shut so the reader thread ends.
    fn fail(&self) {
        let mut st = lock(&self.state);
        if st.dead {
            return;
        }
        st.dead = true;
        self.dead.store(true, Ordering::Release);
        st.pending.clear();
        let hooks = std::mem::take(&mut st.on_lost);
        drop(st);
        self.closer.shutdown();
        hooks.into_iter().for_each(|(_, h)| h());
    }

    /// Reads one message (or a time-out) with the read half and routes it.
    fn read_one(&self, rs: &mut ReadSide, timeout: Duration) -> ReadOutcome {
        if rs.timeout != Some(timeout) {
            if self.closer.set_read_timeout(Some(timeout)).is_err() {
                return ReadOutcome::Closed;
            }
            rs.timeout = Some(timeout);
        }
        match rs.reader.next(&mut rs.buf) {
            Ok(true) => {
                // A line that does not parse is skipped, as the npm client does: one bad
                // message must not take down every lock on the connection.
                if !rs.buf.iter().all(u8::is_ascii_whitespace) {
                    if let Ok(v) = serde_json::from_slice::<Value>(&rs.buf) {
                        self.dispatch(v);
                    }
                }
                rs.buf.clear();
                ReadOutcome::Message
            }
            Ok(false) => ReadOutcome::Closed,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                ReadOutcome::TimedOut
            }
            Err(_) => ReadOutcome::Closed,
        }
    }

    /// Called by a thread that no longer holds the read half: if another caller waits and the
    /// read half is free, nudge that caller so it takes over.
    fn hand_off(&self, st: &State) {
        if let Some(id) = st.waiting.first() {
            if let Ok(free) = self.read.try_lock() {
                drop(free);
                if let Some(tx) = st.pending.get(id) {
                    let _ = tx.send(NUDGE);
                }
            }
        }
    }

    fn dispatch(&self, v: Value) {
        let Some(id) = v.get("uuid").and_then(Value::as_str).and_then(parse_id) else {
            return;
        };
        let granted = v.get("type").and_then(Value::as_str) == Some("lock")
            && v.get("acquired").and_then(Value::as_bool) == Some(true);
        let node = self.node.load(Ordering::Relaxed);
        let uuid = v.get("uuid").cloned().unwrap_or(Value::Null);
        let key = v.get("key").cloned().unwrap_or(Value::Null);
        if granted && node {
            // The npm broker re-elects a holder that does not confirm its grant within 4.5 s.
            let _ = self.write(&json!({"type":"lock-received","uuid":uuid,"key":key}));
        }
        let delivered = {
            let st = lock(&self.state);
            st.pending.get(&id).is_some_and(|tx| tx.send(v).is_ok())
        };
        if !delivered && granted && node {
            // The waiter gave up and the npm broker granted anyway: hand the lock back.
            let unlock =
                json!({"type":"unlock","uuid":new_id().1,"key":key,"_uuid":uuid,"force":false});
            let _ = self.write(&unlock);
        }
    }
}

/// A live connection. Dropping the last handle (client and guards) closes the socket, which
/// makes the broker release whatever it still holds for us.
pub(crate) struct Conn {
    shared: Arc<Shared>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.fail();
    }
}

/// An in-flight request: replies for its uuid arrive on `rx` until it is dropped.
pub(crate) struct Pending {
    id: u128,
    rx: Receiver<Value>,
    shared: Arc<Shared>,
}

impl Pending {
    pub(crate) fn recv(&self, deadline: Option<Instant>) -> Result<Value> {
        lock(&self.shared.state).waiting.push(self.id);
        let r = self.wait(deadline);
        let mut st = lock(&self.shared.state);
        if let Some(i) = st.waiting.iter().position(|&w| w == self.id) {
            st.waiting.swap_remove(i);
        }
        st.last_wait = Instant::now();
        self.shared.hand_off(&st);
        r
    }

    fn wait(&self, deadline: Option<Instant>) -> Result<Value> {
        let sh = &self.shared;
        loop {
            match self.rx.try_recv() {
                Ok(v) if v != NUDGE => return Ok(v),
                Ok(_) | Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => return Err(Error::ConnectionLost),
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return Err(Error::TimedOut);
            }
            if let Ok(mut rs) = sh.read.try_lock() {
                // Our reply may have been routed to us just before the read half came free.
                match self.rx.try_recv() {
                    Ok(v) if v != NUDGE => return Ok(v),
                    Ok(_) | Err(TryRecvError::Empty) => {}
                    Err(TryRecvError::Disconnected) => return Err(Error::ConnectionLost),
                }
                if sh.dead.load(Ordering::Acquire) {
                    return Err(Error::ConnectionLost);
                }
                let t = left.map_or(CALLER_READ_TIMEOUT, |l| l.min(CALLER_READ_TIMEOUT));
                // SO_RCVTIMEO has microsecond resolution; zero would mean "no time-out".
                let t = t.max(Duration::from_millis(1));
                if let ReadOutcome::Closed = sh.read_one(&mut rs, t) {
                    drop(rs);
                    sh.fail();
                }
            } else {
                let park = left.map_or(FOLLOWER_PARK, |l| l.min(FOLLOWER_PARK));
                match self.rx.recv_timeout(park) {
                    Ok(v) if v != NUDGE => return Ok(v),
                    Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return Err(Error::ConnectionLost),
                }
            }
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        lock(&self.shared.state).pending.remove(&self.id);
    }
}

/// A fresh random 128-bit request id, as a number (map key) and as the hex string on the wire.
pub(crate) fn new_id() -> (u128, String) {
    let id = fastrand::u128(..);
    (id, format!("{id:032x}"))
}

fn parse_id(s: &str) -> Option<u128> {
    if s.len() == 32 {
        u128::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

impl Conn {
    pub(crate) fn open(ep: &Endpoint, token: Option<&str>, timeout: Duration) -> Result<Conn> {
        let (reader, writer, closer) = connect(ep, token, timeout)?;
        let shared = Arc::new(Shared {
            writer: Mutex::new(writer),
            state: Mutex::new(State {
                dead: false,
                pending: HashMap::default(),
                on_lost: Vec::new(),
                next_hook: 0,
                waiting: Vec::new(),
                last_wait: Instant::now(),
            }),
            read: Mutex::new(ReadSide {
                reader,
                buf: Vec::with_capacity(4096),
                timeout: None,
            }),
            node: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            closer,
        });
        let sh = shared.clone();
        std::thread::Builder::new()
            .name("lmx-client-reader".into())
            .spawn(move || background_reader(sh))?;
        let conn = Conn { shared };
        // Over WebSocket the token also rides in the upgrade request; the message is what our
        // broker checks on every transport.
        let auth = match token {
            Some(t) => {
                let (id, uuid) = new_id();
                Some(conn.request(id, &json!({"type":"auth","uuid":uuid,"token":t}))?)
            }
            None => None,
        };
        let (id, uuid) = new_id();
        let ping = conn.request(id, &json!({"type":"ping","uuid":uuid}))?;
        let reply = ping.recv(Some(Instant::now() + timeout));
        let auth_err = auth
            .and_then(|a| a.rx.try_recv().ok())
            .and_then(|v| err_text(&v));
        let ty = |v: &Value| v.get("type").and_then(Value::as_str).map(str::to_string);
        match reply {
            Ok(v) if ty(&v).as_deref() == Some("pong") => {
                if let Some(e) = auth_err {
                    return Err(Error::Rejected(e));
                }
            }
            // Our broker echoes the type in errors ("authenticate first"); the npm broker
            // answers an unknown type with a type-less "Malformed data" error.
            Ok(v) if ty(&v).is_some() => {
                let e = auth_err
                    .or_else(|| err_text(&v))
                    .unwrap_or_else(|| v.to_string());
                return Err(Error::Rejected(e));
            }
            Ok(v) if v.get("error").is_some() => conn.shared.node.store(true, Ordering::Relaxed),
            Ok(v) => return Err(Error::Protocol(format!("unexpected answer to ping: {v}"))),
            Err(e) => return Err(auth_err.map_or(e, Error::Rejected)),
        }
        Ok(conn)
    }

    /// Registers `id` before sending so the reply cannot overtake the registration.
    pub(crate) fn request(&self, id: u128, msg: &Value) -> Result<Pending> {
        let (tx, rx) = mpsc::channel();
        {
            let mut st = lock(&self.shared.state);
            if st.dead {
                return Err(Error::ConnectionLost);
            }
            st.pending.insert(id, tx);
        }
        let p = Pending {
            id,
            rx,
            shared: self.shared.clone(),
        };
        self.shared.write(msg)?;
        Ok(p)
    }

    /// Fire-and-forget: used for cancels and guard drops, whose replies nobody waits for.
    pub(crate) fn send(&self, msg: &Value) -> Result<()> {
        if self.is_dead() {
            return Err(Error::ConnectionLost);
        }
        self.shared.write(msg)
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.shared.dead.load(Ordering::Acquire)
    }

    pub(crate) fn kind(&self) -> BrokerKind {
        if self.shared.node.load(Ordering::Relaxed) {
            BrokerKind::Node
        } else {
            BrokerKind::Rust
        }
    }

    /// Runs `f` once when the connection dies (at once if it already has); the id returned
    /// lets a guard that is released first withdraw it.
    pub(crate) fn on_lost(&self, f: LostHook) -> Option<u64> {
        let mut st = lock(&self.shared.state);
        if st.dead {
            drop(st);
            f();
            return None;
        }
        st.next_hook += 1;
        let id = st.next_hook;
        st.on_lost.push((id, f));
        Some(id)
    }

    pub(crate) fn forget_hooks(&self, ids: &[u64]) {
        if !ids.is_empty() {
            lock(&self.shared.state)
                .on_lost
                .retain(|(id, _)| !ids.contains(id));
        }
    }
}

pub(crate) fn err_text(v: &Value) -> Option<String> {
    v.get("error").filter(|e| !e.is_null()).map(|e| match e {
        Value::String(s) => s.clone(),
        e => e.to_string(),
    })
}

/// Reads while no caller waits, so that a dropped connection is noticed (guards report
/// `is_lost`, `on_lost` hooks run) and grants nobody waits for are answered; steps aside when a
/// caller starts waiting.
fn background_reader(shared: Arc<Shared>) {
    loop {
        loop {
            let st = lock(&shared.state);
            if st.dead {
                return;
            }
            let quiet = st.last_wait.elapsed();
            if st.waiting.is_empty() && quiet >= BG_IDLE {
                break;
            }
            drop(st);
            std::thread::sleep(BG_IDLE.saturating_sub(quiet).max(Duration::from_millis(1)));
        }
        let mut rs = lock(&shared.read);
        loop {
            if let ReadOutcome::Closed = shared.read_one(&mut rs, BG_READ_TIMEOUT) {
                drop(rs);
                shared.fail();
                return;
            }
            if !lock(&shared.state).waiting.is_empty() {
                break;
            }
        }
        drop(rs);
        let st = lock(&shared.state);
        shared.hand_off(&st);
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

fn connect(
    ep: &Endpoint,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(Reader, Writer, Stream)> {
    let stream = match ep {
        Endpoint::Tcp { host, port } | Endpoint::Ws { host, port, .. } => {
            Stream::Tcp(tcp(host, *port, timeout)?)
        }
        Endpoint::Unix(p) => Stream::Unix(UnixStream::connect(p)?),
    };
    let closer = stream.try_clone()?;
    let Endpoint::Ws { host, port, path } = ep else {
        let reader = Reader::Lines(BufReader::with_capacity(16 << 10, stream.try_clone()?));
        return Ok((
            reader,
            Writer::Lines(BufWriter::with_capacity(8 << 10, stream)),
            closer,
        ));
    };
    let mut req = format!("ws://{}{path}", host_port(host, *port))
        .into_client_request()
        .map_err(|e| Error::Config(e.to_string()))?;
    if let Some(t) = token {
        let v = format!("Bearer {t}")
            .parse()
            .map_err(|_| Error::Config("token is not a valid header value".into()))?;
        req.headers_mut().insert("authorization", v);
    }
    let Stream::Tcp(tcp) = &stream else {
        unreachable!("ws endpoints are tcp")
    };
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let cfg = WebSocketConfig::default()
        .read_buffer_size(8 << 10)
        .max_message_size(Some(MAX_LINE as usize))
        .max_frame_size(Some(MAX_LINE as usize));
    let (hs, _resp) = tungstenite::client::client_with_config(req, stream.try_clone()?, Some(cfg))
        .map_err(|e| match e {
            tungstenite::HandshakeError::Failure(tungstenite::Error::Io(e)) => Error::Io(e),
            tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r)) => {
                Error::Rejected(format!("WebSocket upgrade refused: HTTP {}", r.status()))
            }
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
