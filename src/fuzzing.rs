//! Fuzz harnesses, shared by the `fuzz/` crate (libFuzzer) and by `tests/fuzz_seeds.rs`, which
//! replays every committed seed and crash input on stable Rust. Each panics on a finding.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};

use crate::proto::Decoder;
use crate::proto::ndjson::LineFramer;
use crate::table::{Config, ConnId, LockRequest, Mode, Table, Ttl, Wait};

/// Any bytes as one request: decoding returns, never panics; an error still encodes. The HTTP
/// recogniser of the NDJSON port returns too, and never calls a valid request HTTP (that would
/// refuse a real client).
pub fn decode(data: &[u8]) {
    let http = crate::broker::http_guard::is_http_line(data);
    let mut buf = data.to_vec();
    let mut d = Decoder::default();
    let decoded = d.decode(&mut buf);
    assert!(!(http && decoded.is_ok()), "a valid request taken for HTTP");
    if let Err(e) = decoded {
        let mut out = Vec::new();
        crate::proto::encode::decode_error(&e, &mut out);
        assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok());
    }
}

/// The first byte seeds a chunking of the rest; chunked framing must equal unchunked framing.
pub fn framer(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let max = 256;
    let whole = frame(stream, &[stream.len()], max);
    let mut sizes = Vec::new();
    let mut x = u32::from(seed) | 1;
    let mut left = stream.len();
    while left > 0 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let n = (x as usize % 7 + 1).min(left);
        sizes.push(n);
        left -= n;
    }
    assert_eq!(frame(stream, &sizes, max), whole);
}

fn frame(stream: &[u8], chunks: &[usize], max: usize) -> (Vec<Vec<u8>>, bool) {
    let mut f = LineFramer::new(max);
    let mut lines = Vec::new();
    let mut pos = 0;
    for &n in chunks {
        f.extend(&stream[pos..pos + n]);
        pos += n;
        loop {
            match f.next_line() {
                Ok(Some(l)) => lines.push(l.to_vec()),
                Ok(None) => break,
                Err(_) => return (lines, true),
            }
        }
    }
    if let Some(l) = f.finish() {
        lines.push(l.to_vec());
    }
    (lines, false)
}

/// An in-memory socket: reads come from the fuzz input in small pieces, writes are dropped.
struct MemStream<'a> {
    input: &'a [u8],
    step: usize,
}

impl Read for MemStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.step = self.step % 13 + 1;
        let n = self.step.min(self.input.len()).min(buf.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

impl Write for MemStream<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The server side of a WebSocket (handshake with the broker's Host and Origin check, then
/// frames) with the broker's settings, fed from the fuzz input; each text message is decoded
/// as a request.
pub fn ws_server(data: &[u8]) {
    use tungstenite::HandshakeError;
    let cfg = crate::broker::fuzz_ws_config();
    let stream = MemStream {
        input: data,
        step: 0,
    };
    let check = crate::broker::fuzz_upgrade_check();
    let mut hs = tungstenite::accept_hdr_with_config(stream, check, Some(cfg));
    for _ in 0..64 {
        match hs {
            Err(HandshakeError::Interrupted(mid)) => hs = mid.handshake(),
            _ => break,
        }
    }
    let Ok(mut ws) = hs else { return };
    let mut d = Decoder::default();
    for _ in 0..10_000 {
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                let mut b = t.as_bytes().to_vec();
                d.decode(&mut b).ok();
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Lock {
        conn: u8,
        key: u8,
        id: u8,
        mode: u8,
        max: u8,
        ttl: u8,
        wait: u8,
        keep: bool,
    },
    Unlock {
        key: u8,
        id: u8,
        force: bool,
    },
    Extend {
        key: u8,
        id: u8,
        ttl: u8,
    },
    Cancel {
        conn: u8,
        key: u8,
        id: u8,
    },
    Disconnect {
        conn: u8,
    },
    Many {
        conn: u8,
        keys: u8,
        id: u8,
        wait: u8,
    },
    ReleaseMany {
        id: u8,
    },
    Advance {
        ms: u8,
    },
}

/// The lock table driven by an arbitrary sequence of operations; invariants after every step.
pub fn table_ops(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(ops) = Vec::<Op>::arbitrary(&mut u) else {
        return;
    };
    let mut t = Table::new(Config {
        default_ttl: Some(Duration::from_millis(50)),
        max_waiters_per_key: 8,
        max_requests_per_conn: 16,
        ..Config::default()
    });
    let mut now = Instant::now();
    let keys = ["a", "b", "c", "d"];
    let ids: Vec<String> = (0..16).map(|i| format!("id{i}")).collect();
    let mut last_token = 0;
    // The token of an immediate grant: checked after the events of the same call, which the
    // table produced first (deadlines that fell due before the request was looked at).
    let mut immediate: Option<u64>;
    let mut seen = std::collections::HashSet::new();
    for op in ops.iter().take(500) {
        immediate = None;
        match *op {
            Op::Lock {
                conn,
                key,
                id,
                mode,
                max,
                ttl,
                wait,
                keep,
            } => {
                let r = LockRequest {
                    conn: ConnId(u64::from(conn % 4)),
                    key: keys[usize::from(key) % 4],
                    id: &ids[usize::from(id) % 16],
                    mode: [Mode::Exclusive, Mode::Read, Mode::Write][usize::from(mode) % 3],
                    max: (max % 4 > 0).then_some(u32::from(max % 4)),
                    ttl: match ttl % 3 {
                        0 => Ttl::Default,
                        1 => Ttl::Never,
                        _ => Ttl::After(Duration::from_millis(u64::from(ttl))),
                    },
                    wait: match wait % 3 {
                        0 => Wait::No,
                        1 => Wait::Forever,
                        _ => Wait::Until(now + Duration::from_millis(u64::from(wait))),
                    },
                    keep_after_disconnect: keep,
                };
                if let Ok(crate::table::LockOutcome::Granted(g)) = t.lock(now, &r) {
                    immediate = Some(g.token);
                }
            }
            Op::Unlock { key, id, force } => {
                let id = &ids[usize::from(id) % 16];
                t.unlock(now, keys[usize::from(key) % 4], Some(id), force)
                    .ok();
            }
            Op::Extend { key, id, ttl } => {
                let ttl = Ttl::After(Duration::from_millis(u64::from(ttl)));
                t.extend(
                    now,
                    keys[usize::from(key) % 4],
                    &ids[usize::from(id) % 16],
                    ttl,
                )
                .ok();
            }
            Op::Cancel { conn, key, id } => {
                let c = ConnId(u64::from(conn % 4));
                t.cancel(
                    now,
                    c,
                    keys[usize::from(key) % 4],
                    &ids[usize::from(id) % 16],
                );
            }
            Op::Disconnect { conn } => t.disconnect(now, ConnId(u64::from(conn % 4))),
            Op::Many {
                conn,
                keys: mask,
                id,
                wait,
            } => {
                let chosen: Vec<&str> = (0..4)
                    .filter(|b| mask & (1 << b) != 0)
                    .map(|b| keys[b])
                    .collect();
                let r = crate::table::ManyRequest {
                    conn: ConnId(u64::from(conn % 4)),
                    keys: &chosen,
                    id: &ids[usize::from(id) % 16],
                    ttl: Ttl::Default,
                    wait: if wait % 2 == 0 {
                        Wait::No
                    } else {
                        Wait::Forever
                    },
                    keep_after_disconnect: false,
                };
                t.lock_many(now, &r).ok();
            }
            Op::ReleaseMany { id } => {
                t.release_many(now, &ids[usize::from(id) % 16]).ok();
            }
            Op::Advance { ms } => {
                now += Duration::from_millis(u64::from(ms));
                t.handle_timeout(now);
            }
        }
        while let Some(e) = t.poll_event() {
            if let crate::table::Event::Granted { grant, .. } = e {
                assert!(grant.token > last_token, "fencing tokens must rise");
                last_token = grant.token;
                seen.insert(grant.token);
            }
        }
        if let Some(tok) = immediate {
            // A retry of a held request answers with its existing token; anything else is new.
            if !seen.contains(&tok) {
                assert!(tok > last_token, "fencing tokens must rise");
                last_token = tok;
                seen.insert(tok);
            }
        }
        if let Err(e) = t.check_invariants() {
            panic!("invariant broken after {op:?}: {e}\n{t:#?}");
        }
    }
    for c in 0..4 {
        t.disconnect(now, ConnId(c));
    }
    t.handle_timeout(now + Duration::from_secs(1));
    t.check_invariants().expect("invariants at the end");
}
