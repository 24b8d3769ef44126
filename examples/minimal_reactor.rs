//! A deliberately minimal but correct lock server, to measure what our broker costs beyond the
//! floor: one thread, one mio poll, edge-triggered; exclusive FIFO locks; just enough of the
//! NDJSON protocol for `lmx bench` (`ping`, `lock`, `unlock` with `uuid`/`_uuid`; anything else
//! gets an error line). No JSON parser (fields are found by their `"name":"` prefix; a line with
//! a backslash is refused), no TTL, no fencing bookkeeping beyond a counter, no WebSocket, no
//! auth. Replies are coalesced per connection and written once per loop turn, as our reactor
//! does; a connection that closes releases its lock and leaves every queue.
//!
//! ```sh
//! cargo build --release --example minimal_reactor
//! target/release/examples/minimal_reactor /tmp/min.sock &      # or 127.0.0.1:7001
//! target/release/lmx bench --url unix:///tmp/min.sock --clients 64 --keys 1 --ops 20000
//! ```

use mio::net::{TcpListener, UnixListener};
use mio::{Events, Interest, Poll, Token};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};

const LISTENER: Token = Token(usize::MAX);
/// A line longer than this closes the connection (bounded memory).
const MAX_LINE: usize = 64 * 1024;

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

trait Stream: Read + Write + mio::event::Source {}
impl<T: Read + Write + mio::event::Source> Stream for T {}

struct Conn {
    sock: Box<dyn Stream>,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    /// Keys this connection holds: released if it goes away.
    held: Vec<String>,
}

/// One key: its holder (connection slot, lock uuid) and who waits, in order.
#[derive(Default)]
struct Key {
    holder: Option<(usize, String)>,
    queue: VecDeque<(usize, String)>,
}

#[derive(Default)]
struct Server {
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    keys: HashMap<String, Key>,
    dirty: Vec<usize>,
    token: u64,
}

/// The string value of `"name":"…"` in `line` (no escapes: the caller refused backslashes).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let pat = format!("\"{name}\":\"");
    let start = line.find(&pat)? + pat.len();
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

impl Server {
    fn out(&mut self, slot: usize) -> Option<&mut Vec<u8>> {
        let c = self.conns.get_mut(slot)?.as_mut()?;
        if c.out.is_empty() {
            self.dirty.push(slot);
        }
        Some(&mut c.out)
    }

    fn reply(&mut self, slot: usize, line: String) {
        if let Some(out) = self.out(slot) {
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
    }

    fn grant(&mut self, slot: usize, key: &str, uuid: &str) {
        self.token += 1;
        let t = self.token;
        if let Some(Some(c)) = self.conns.get_mut(slot) {
            c.held.push(key.to_string());
        }
        self.reply(
            slot,
            format!(
                r#"{{"type":"lock","uuid":"{uuid}","key":"{key}","acquired":true,"fencingToken":{t}}}"#
            ),
        );
    }

    /// Passes `key` to its next waiter, or forgets it.
    fn hand_on(&mut self, key: &str) {
        let Some(k) = self.keys.get_mut(key) else {
            return;
        };
        k.holder = None;
        match k.queue.pop_front() {
            Some((slot, uuid)) => {
                k.holder = Some((slot, uuid.clone()));
                self.grant(slot, key, &uuid);
            }
            None => {
                self.keys.remove(key);
            }
        }
    }

    fn handle(&mut self, slot: usize, line: &str) {
        if line.trim().is_empty() {
            return;
        }
        let uuid = field(line, "uuid").unwrap_or("");
        let ty = field(line, "type");
        if line.contains('\\') {
            return self.reply(
                slot,
                format!(r#"{{"type":"error","uuid":"{uuid}","error":"escapes unsupported"}}"#),
            );
        }
        match (ty, field(line, "key")) {
            (Some("ping"), _) => self.reply(
                slot,
                format!(r#"{{"type":"pong","uuid":"{uuid}","serverTimestamp":0}}"#),
            ),
            (Some("lock"), Some(key)) => {
                let k = self.keys.entry(key.to_string()).or_default();
                if k.holder.is_none() {
                    k.holder = Some((slot, uuid.to_string()));
                    self.grant(slot, key, uuid);
                } else {
                    k.queue.push_back((slot, uuid.to_string()));
                    let n = k.queue.len();
                    self.reply(
                        slot,
                        format!(
                            r#"{{"type":"lock","uuid":"{uuid}","key":"{key}","acquired":false,"queued":true,"lockRequestCount":{n}}}"#
                        ),
                    );
                }
            }
            (Some("unlock"), Some(key)) => {
                let id = field(line, "_uuid");
                let ours = self
                    .keys
                    .get(key)
                    .and_then(|k| k.holder.as_ref())
                    .is_some_and(|(s, u)| *s == slot && Some(u.as_str()) == id);
                if ours
                    && let Some(Some(c)) = self.conns.get_mut(slot)
                    && let Some(i) = c.held.iter().position(|h| h == key)
                {
                    c.held.swap_remove(i);
                }
                // The reply first, so a grant to this same connection follows it in one write.
                let n = self.keys.get(key).map_or(0, |k| k.queue.len());
                self.reply(
                    slot,
                    format!(
                        r#"{{"type":"unlock","uuid":"{uuid}","key":"{key}","unlocked":{ours},"lockRequestCount":{n}}}"#
                    ),
                );
                if ours {
                    self.hand_on(key);
                }
            }
            _ => self.reply(
                slot,
                format!(r#"{{"type":"error","uuid":"{uuid}","error":"unsupported"}}"#),
            ),
        }
    }

    /// Reads until WouldBlock and handles every whole line; false if the connection is done.
    fn on_readable(&mut self, slot: usize) -> bool {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let Some(Some(c)) = self.conns.get_mut(slot) else {
                return false;
            };
            match c.sock.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => {
                    c.inbuf.extend_from_slice(&buf[..n]);
                    let mut inbuf = std::mem::take(&mut c.inbuf);
                    let mut start = 0;
                    while let Some(i) = inbuf[start..].iter().position(|&b| b == b'\n') {
                        match std::str::from_utf8(&inbuf[start..start + i]) {
                            Ok(line) => self.handle(slot, line),
                            Err(_) => return false,
                        }
                        start += i + 1;
                    }
                    inbuf.drain(..start);
                    if inbuf.len() > MAX_LINE {
                        return false;
                    }
                    if let Some(Some(c)) = self.conns.get_mut(slot) {
                        c.inbuf = inbuf;
                    }
                    if n < buf.len() {
                        // Drained (as our reactor assumes too); the EOF of a peer that closed
                        // after its last request comes as a new event.
                        return true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    /// Writes what the socket takes; false on error.
    fn flush(&mut self, slot: usize) -> bool {
        let Some(Some(c)) = self.conns.get_mut(slot) else {
            return true;
        };
        let mut pos = 0;
        while pos < c.out.len() {
            match c.sock.write(&c.out[pos..]) {
                Ok(0) => return false,
                Ok(n) => pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        c.out.drain(..pos);
        true
    }

    fn close(&mut self, poll: &Poll, slot: usize) {
        let Some(mut c) = self.conns.get_mut(slot).and_then(Option::take) else {
            return;
        };
        let _ = poll.registry().deregister(&mut c.sock);
        self.free.push(slot);
        // Leave every queue, then give back what it held.
        self.keys
            .values_mut()
            .for_each(|k| k.queue.retain(|(s, _)| *s != slot));
        for key in c.held {
            self.hand_on(&key);
        }
    }

    fn accept(&mut self, poll: &Poll, listener: &Listener) -> io::Result<()> {
        loop {
            let sock: Box<dyn Stream> = match listener {
                Listener::Tcp(l) => match l.accept() {
                    Ok((s, _)) => {
                        s.set_nodelay(true)?;
                        Box::new(s)
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => return Err(e),
                },
                Listener::Unix(l) => match l.accept() {
                    Ok((s, _)) => Box::new(s),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => return Err(e),
                },
            };
            let slot = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            let mut c = Conn {
                sock,
                inbuf: Vec::new(),
                out: Vec::new(),
                held: Vec::new(),
            };
            poll.registry().register(
                &mut c.sock,
                Token(slot),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            self.conns[slot] = Some(c);
        }
    }
}

fn main() -> io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7001".into());
    let mut listener = if addr.starts_with('/') {
        let _ = std::fs::remove_file(&addr);
        Listener::Unix(UnixListener::bind(&addr)?)
    } else {
        let a = addr
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Listener::Tcp(TcpListener::bind(a)?)
    };
    let mut poll = Poll::new()?;
    match &mut listener {
        Listener::Tcp(l) => poll.registry().register(l, LISTENER, Interest::READABLE)?,
        Listener::Unix(l) => poll.registry().register(l, LISTENER, Interest::READABLE)?,
    }
    eprintln!("minimal_reactor listening on {addr}");
    let mut server = Server::default();
    let mut events = Events::with_capacity(1024);
    loop {
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        let mut doomed = Vec::new();
        for ev in &events {
            if ev.token() == LISTENER {
                server.accept(&poll, &listener)?;
                continue;
            }
            let slot = ev.token().0;
            if (ev.is_readable() || ev.is_read_closed()) && !server.on_readable(slot) {
                doomed.push(slot);
            }
            if ev.is_writable() && !server.flush(slot) {
                doomed.push(slot);
            }
        }
        // End of turn: each connection's output in one write, then the closes (whose grants
        // go out the same way).
        loop {
            for slot in std::mem::take(&mut server.dirty) {
                if !server.flush(slot) {
                    doomed.push(slot);
                }
            }
            if doomed.is_empty() {
                break;
            }
            for slot in std::mem::take(&mut doomed) {
                server.close(&poll, slot);
            }
        }
    }
}
