//! The broker over real sockets, byte level, for each transport: NDJSON over TCP, WebSocket on
//! the same port, NDJSON over a Unix socket. Each scenario runs once per transport.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{TestBroker, Transport, Wire};
use serde_json::{Value, json};

fn acquired(v: &Value) -> bool {
    v["acquired"] == json!(true)
}

fn lock_basic(t: Transport) {
    let b = TestBroker::start();
    let mut c = b.connect(t);
    let r = c.lock("foo", "a1");
    assert_eq!(r["type"], "lock");
    assert_eq!(r["uuid"], "a1");
    assert_eq!(r["key"], "foo");
    assert!(acquired(&r));
    assert!(r["fencingToken"].as_u64().unwrap() > 0);
    assert!(r.get("error").is_none());
    let u = c.unlock("foo", "a1");
    assert_eq!(u["type"], "unlock");
    assert_eq!(u["uuid"], "u-a1");
    assert_eq!(u["unlocked"], true);
    assert!(u.get("error").is_none());
}

fn contention_pushes_grant(t: Transport) {
    let b = TestBroker::start();
    let (mut a, mut w) = (b.connect(t), b.connect(t));
    let t1 = a.lock("k", "a")["fencingToken"].as_u64().unwrap();
    let r = w.lock("k", "b");
    assert_eq!(r["acquired"], false);
    assert_eq!(r["queued"], true);
    w.expect_silence(Duration::from_millis(100));
    assert_eq!(a.unlock("k", "a")["unlocked"], true);
    let g = w.recv();
    assert_eq!(g["uuid"], "b");
    assert!(acquired(&g));
    assert!(g["fencingToken"].as_u64().unwrap() > t1);
}

fn fifo_of_three(t: Transport) {
    let b = TestBroker::start();
    let mut h = b.connect(t);
    h.lock("k", "h");
    let mut ws: Vec<Wire> = (0..3).map(|_| b.connect(t)).collect();
    for (i, w) in ws.iter_mut().enumerate() {
        assert_eq!(w.lock("k", &format!("w{i}"))["acquired"], false);
    }
    h.unlock("k", "h");
    for i in 0..3 {
        let g = ws[i].recv();
        assert_eq!(g["uuid"], format!("w{i}"));
        assert!(acquired(&g));
        for other in ws.iter_mut().skip(i + 1) {
            other.expect_silence(Duration::from_millis(30));
        }
        let id = format!("w{i}");
        assert_eq!(ws[i].unlock("k", &id)["unlocked"], true);
    }
}

fn semaphore_max_two(t: Transport) {
    let b = TestBroker::start();
    let mut cs: Vec<Wire> = (0..3).map(|_| b.connect(t)).collect();
    let mut got = Vec::new();
    for (i, c) in cs.iter_mut().enumerate() {
        c.send(json!({"type":"lock","uuid":format!("s{i}"),"key":"sem","max":2,"ttl":null}));
        got.push(acquired(&c.recv()));
    }
    assert_eq!(got, [true, true, false]);
    cs[0].unlock("sem", "s0");
    assert!(acquired(&cs[2].recv()));
}

fn try_lock(t: Transport) {
    let b = TestBroker::start();
    let (mut a, mut c) = (b.connect(t), b.connect(t));
    a.lock("k", "a");
    c.send(json!({"type":"lock","uuid":"t","key":"k","wait":false}));
    let r = c.recv();
    assert_eq!(r["acquired"], false);
    assert_eq!(r["queued"], false);
    a.unlock("k", "a");
    c.expect_silence(Duration::from_millis(100));
    // The key is free, nobody holds it: a new try-lock succeeds.
    c.send(json!({"type":"lock","uuid":"t2","key":"k","wait":false}));
    assert!(acquired(&c.recv()));
}

fn broker_side_wait_timeout(t: Transport) {
    let b = TestBroker::start();
    let (mut a, mut c) = (b.connect(t), b.connect(t));
    a.lock("k", "a");
    let t0 = Instant::now();
    c.send(json!({"type":"lock","uuid":"w","key":"k","waitTimeout":100}));
    assert_eq!(c.recv()["queued"], true);
    let r = c.recv();
    let waited = t0.elapsed();
    assert_eq!(r["uuid"], "w");
    assert_eq!(r["acquired"], false);
    assert_eq!(r["timedOut"], true);
    assert!(r["error"].is_string());
    assert!(waited >= Duration::from_millis(100), "{waited:?}");
    assert!(waited < Duration::from_millis(1000), "{waited:?}");
    // No ghost waiter: after the holder leaves nobody is granted.
    a.unlock("k", "a");
    c.expect_silence(Duration::from_millis(100));
}

fn ttl_expiry_grants_next(t: Transport) {
    let b = TestBroker::start();
    let (mut a, mut c) = (b.connect(t), b.connect(t));
    // Taken before the request: the TTL starts after it, so the grant cannot come sooner.
    let t0 = Instant::now();
    a.send(json!({"type":"lock","uuid":"a","key":"k","ttl":150}));
    let ta = a.recv()["fencingToken"].as_u64().unwrap();
    assert_eq!(c.lock("k", "c")["acquired"], false);
    let g = c.recv();
    assert!(acquired(&g));
    assert!(t0.elapsed() >= Duration::from_millis(150));
    assert!(g["fencingToken"].as_u64().unwrap() > ta);
    // The old holder's late unlock is refused as lost and disturbs nobody.
    let u = a.unlock("k", "a");
    assert_eq!(u["unlocked"], false);
    assert_eq!(u["lost"], true);
    assert!(u["error"].is_string());
    let mut d = b.connect(t);
    d.send(json!({"type":"lock-info-request","uuid":"i","key":"k"}));
    assert_eq!(d.recv()["lockholderUUIDs"], json!(["c"]));
}

fn unlock_wrong_id_and_force(t: Transport) {
    let b = TestBroker::start();
    let (mut a, mut c) = (b.connect(t), b.connect(t));
    a.lock("k", "a");
    let u = c.unlock("k", "not-mine");
    assert_eq!(u["unlocked"], false);
    assert!(u["error"].is_string());
    c.send(json!({"type":"unlock","uuid":"u0","key":"k"}));
    let u = c.recv();
    assert_eq!(u["unlocked"], false, "no id and no force must fail: {u}");
    assert_eq!(c.lock("k", "c")["acquired"], false);
    c.send(json!({"type":"unlock","uuid":"f","key":"k","force":true}));
    // The forced unlock grants c; both messages go to c, in either order.
    let (m1, m2) = (c.recv(), c.recv());
    let (u, g) = if m1["type"] == "unlock" {
        (m1, m2)
    } else {
        (m2, m1)
    };
    assert_eq!(u["unlocked"], true);
    assert_eq!(g["uuid"], "c");
    assert!(acquired(&g));
}

fn disconnect_releases_only_own_locks(t: Transport) {
    let b = TestBroker::start();
    let (mut a, mut x, mut w) = (b.connect(t), b.connect(t), b.connect(t));
    a.lock("k1", "a1");
    x.lock("k2", "x2");
    assert_eq!(w.lock("k1", "w1")["acquired"], false);
    assert_eq!(w.lock("k2", "w2")["acquired"], false);
    // An unrelated client connecting and disconnecting changes nothing.
    for _ in 0..5 {
        let mut z = b.connect(t);
        z.send(json!({"type":"ping","uuid":"p"}));
        z.recv();
        drop(z);
    }
    w.expect_silence(Duration::from_millis(100));
    drop(a);
    let g = w.recv();
    assert_eq!(g["uuid"], "w1");
    assert!(acquired(&g));
    w.expect_silence(Duration::from_millis(100));
    drop(x);
    assert_eq!(w.recv()["uuid"], "w2");
}

fn pipelined_burst_in_order(t: Transport) {
    let b = TestBroker::start();
    let mut c = b.connect(t);
    let n = 10_000;
    // Write all requests first (in a thread: the replies fill the socket meanwhile), then read.
    let mut batch = String::new();
    for i in 0..n {
        batch.push_str(
            &json!({"type":"lock","uuid":format!("p{i}"),"key":format!("k{}", i % 10),"ttl":null})
                .to_string(),
        );
        batch.push('\n');
    }
    match &mut c {
        Wire::Lines { w, .. } => {
            let mut w = match w {
                common::Sock::Tcp(s) => common::Sock::Tcp(s.try_clone().unwrap()),
                common::Sock::Unix(s) => common::Sock::Unix(s.try_clone().unwrap()),
            };
            let writer = std::thread::spawn(move || w.write_all(batch.as_bytes()).unwrap());
            for i in 0..n {
                let r = c.recv();
                assert_eq!(r["uuid"], format!("p{i}"));
                assert_eq!(r["acquired"], i < 10, "{r}");
            }
            writer.join().unwrap();
        }
        Wire::Ws(_) => {
            for line in batch.lines() {
                c.send_raw(line);
            }
            for i in 0..n {
                assert_eq!(c.recv()["uuid"], format!("p{i}"));
            }
        }
    }
}

fn bad_input(t: Transport) {
    let b = TestBroker::start();
    let mut c = b.connect(t);
    // Before the first valid request a bad line closes the connection (tests/first_contact.rs);
    // after it, each gets an error reply and the connection lives on.
    c.send(json!({"type":"ping","uuid":"p"}));
    assert_eq!(c.recv()["type"], "pong");
    let long_key = "k".repeat(2000);
    let cases: Vec<(String, &str)> = vec![
        ("this is not json".into(), "invalid JSON"),
        ("null".into(), "JSON object"),
        ("42".into(), "JSON object"),
        ("[1,2,3]".into(), "JSON object"),
        (r#"{"uuid":"u1","key":"k"}"#.into(), "type"),
        (
            r#"{"type":"frobnicate","uuid":"u2","key":"k"}"#.into(),
            "frobnicate",
        ),
        (r#"{"type":"lock","key":"k"}"#.into(), "uuid"),
        (r#"{"type":"lock","uuid":"u3"}"#.into(), "key"),
        (r#"{"type":"lock","uuid":"u4","key":7}"#.into(), "key"),
        (
            r#"{"type":"lock","uuid":"u5","key":"k","ttl":-5}"#.into(),
            "ttl",
        ),
        (
            r#"{"type":"lock","uuid":"u6","key":"k","ttl":"soon"}"#.into(),
            "ttl",
        ),
        (
            r#"{"type":"lock","uuid":"u7","key":"k","max":0}"#.into(),
            "max",
        ),
        (
            format!(r#"{{"type":"lock","uuid":"u8","key":"{long_key}"}}"#),
            "key",
        ),
    ];
    for (input, needle) in &cases {
        c.send_raw(input);
        let r = c.recv();
        let err = r["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{input}: {r}"));
        assert!(
            err.contains(needle),
            "{input}: error {err:?} should mention {needle:?}"
        );
        if let Some(u) = input.split("\"uuid\":\"").nth(1) {
            let u = u.split('"').next().unwrap();
            assert_eq!(r["uuid"], u, "the error echoes the uuid");
        }
    }
    // The connection still works.
    assert!(acquired(&c.lock("k", "ok")));
}

macro_rules! per_transport {
    ($($name:ident),* $(,)?) => {
        mod tcp { $( #[test] fn $name() { super::$name(super::Transport::Tcp) } )* }
        mod ws { $( #[test] fn $name() { super::$name(super::Transport::Ws) } )* }
        mod uds { $( #[test] fn $name() { super::$name(super::Transport::Uds) } )* }
    };
}

per_transport!(
    lock_basic,
    contention_pushes_grant,
    fifo_of_three,
    semaphore_max_two,
    try_lock,
    broker_side_wait_timeout,
    ttl_expiry_grants_next,
    unlock_wrong_id_and_force,
    disconnect_releases_only_own_locks,
    pipelined_burst_in_order,
    bad_input,
);

#[test]
fn non_utf8_and_nul_bytes_get_an_error_reply() {
    let b = TestBroker::start();
    let mut c = b.connect(Transport::Tcp);
    c.send(json!({"type":"ping","uuid":"p"}));
    assert_eq!(c.recv()["type"], "pong");
    c.send_bytes(b"{\"type\":\"lock\",\"uuid\":\"x\",\"key\":\"\xff\xfe\"}\n");
    assert!(c.recv()["error"].as_str().unwrap().contains("UTF-8"));
    c.send_bytes(b"\0\0\0\n");
    assert!(c.recv()["error"].is_string());
    assert!(acquired(&c.lock("k", "ok")));
}

#[test]
fn overlong_line_closes_only_that_connection() {
    let b = TestBroker::start();
    let mut other = b.connect(Transport::Tcp);
    other.lock("held", "o");
    let mut s = TcpStream::connect(b.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let big = vec![b'x'; 70 * 1024];
    s.write_all(b"{\"type\":\"lock\",\"key\":\"").ok();
    s.write_all(&big).ok();
    let mut buf = [0u8; 64];
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "closed");
    // Others are unaffected.
    assert_eq!(other.unlock("held", "o")["unlocked"], true);
}

#[test]
fn websocket_handshake_split_over_three_writes() {
    let b = TestBroker::start();
    let mut s = TcpStream::connect(b.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        b.addr
    );
    let bytes = req.as_bytes();
    let (p1, rest) = bytes.split_at(10);
    let (p2, p3) = rest.split_at(40);
    for p in [p1, p2, p3] {
        s.write_all(p).unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    let mut resp = Vec::new();
    let mut buf = [0u8; 512];
    while !resp.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        resp.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(text.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{text}");
}

#[test]
fn handshake_that_never_finishes_is_cut_off() {
    let b = TestBroker::with(|b| b.handshake_timeout(Duration::from_millis(200)));
    let mut s = TcpStream::connect(b.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 64];
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0);
    assert!(t0.elapsed() < Duration::from_secs(3));
}

#[test]
fn a_client_that_never_reads_is_cut_off_and_others_are_served() {
    let b = TestBroker::with(|b| {
        b.output_caps(64 * 1024, 1024 * 1024)
            .stall_timeout(Duration::from_millis(300))
    });
    let mut hog = TcpStream::connect(b.addr).unwrap();
    hog.write_all(b"{\"type\":\"lock\",\"uuid\":\"hog\",\"key\":\"hogged\",\"ttl\":null}\n")
        .unwrap();
    let mut waiter = b.connect(Transport::Tcp);
    assert_eq!(waiter.lock("hogged", "w")["acquired"], false);
    // The hog pipelines pings and never reads a reply.
    let line = b"{\"type\":\"ping\",\"uuid\":\"pppppppppppppppppppppppppppppppp\"}\n".repeat(1000);
    hog.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let t0 = Instant::now();
    let mut other = b.connect(Transport::Tcp);
    while t0.elapsed() < Duration::from_secs(3) {
        if hog.write_all(&line).is_err() {
            break;
        }
        // Others stay responsive meanwhile.
        other.send(json!({"type":"ping","uuid":"o"}));
        assert_eq!(other.recv()["type"], "pong");
    }
    // The hog is cut off and its lock released to the waiter.
    let g = waiter.recv();
    assert_eq!(g["uuid"], "w");
    assert!(acquired(&g));
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[test]
fn stale_unix_socket_is_replaced_and_live_one_is_not() {
    let dir = common::TempDir::new();
    let path = dir.0.join("s.sock");
    // A stale socket file, nobody listening.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let h = live_mutex::broker::Broker::builder()
        .no_tcp()
        .uds(&path)
        .bind()
        .expect("stale file replaced")
        .spawn()
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let second = live_mutex::broker::Broker::builder()
        .no_tcp()
        .uds(&path)
        .bind();
    assert!(matches!(
        second,
        Err(live_mutex::broker::BrokerError::UdsInUse(_))
    ));
    h.shutdown();
    h.join().unwrap();
    assert!(!path.exists(), "socket file removed on shutdown");
}

#[test]
fn version_handshake() {
    let b = TestBroker::start();
    let mut c = b.connect(Transport::Tcp);
    c.send(
        json!({"type":"version","value":"0.2.25","max":null,"pid":1,"keepLocksAfterDeath":false}),
    );
    c.expect_silence(Duration::from_millis(100));
    let mut m = b.connect(Transport::Tcp);
    m.send(json!({"type":"version","value":"1.0.0"}));
    let r = m.recv();
    assert_eq!(r["type"], "version-mismatch");
    assert_eq!(r["versions"]["clientVersion"], "1.0.0");
}

#[test]
fn a_request_and_the_close_in_one_segment_are_both_seen() {
    // The broker stops reading at a short read; data and FIN that arrive together must still
    // end in the connection closed and its lock released.
    let b = TestBroker::start();
    let mut waiter = b.connect(Transport::Tcp);
    let mut s = TcpStream::connect(b.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"{\"type\":\"lock\",\"uuid\":\"h\",\"key\":\"k\"}\n")
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert!(got.contains("\"acquired\":true"), "{got}");
    // Its connection is gone, so a new waiter gets the key at once.
    assert_eq!(waiter.lock("k", "w")["acquired"], true);
}
