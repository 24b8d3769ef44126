//! What a connection must do first (issue 20): authenticate in time when the broker has a
//! token, send a valid request before anything else, and, when it speaks HTTP, get an HTTP
//! answer. A peer that does none of these is closed without touching anyone's locks, and
//! cannot keep others out.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{TestBroker, Transport};
use serde_json::json;

const FORCE: &str = r#"{"type":"unlock","uuid":"f","key":"k","force":true}"#;
const PLANT: &str = r#"{"type":"lock","uuid":"planted","key":"p","ttl":null}"#;

/// Writes `bytes` on a fresh TCP connection and reads until the broker closes it (or `wait`).
fn exchange(b: &TestBroker, bytes: &[u8], wait: Duration) -> Vec<u8> {
    common::exchange(b.addr, &[bytes], wait)
}

/// Writes `line` on a connection that the broker may already have closed (a write to it then
/// fails with EPIPE, or ECONNRESET when bytes of ours were left unread): either way the line
/// did not run, which the caller checks.
fn send_after_close(c: &mut common::Wire, line: &str) {
    let common::Wire::Lines { w, .. } = c else {
        panic!("a line transport");
    };
    if let Err(e) = w.write_all(format!("{line}\n").as_bytes()) {
        use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
        assert!(matches!(e.kind(), BrokenPipe | ConnectionReset), "{e}");
    }
}

/// Before the first valid request, any invalid line closes the connection: binary junk like a
/// TLS ClientHello, or the h2c preface, cannot smuggle requests in the lines that follow.
#[test]
fn an_invalid_first_line_closes_before_the_lines_after_it_run() {
    let b = TestBroker::start();
    let mut holder = b.connect(Transport::Tcp);
    assert_eq!(holder.lock("k", "h")["acquired"], true);
    let hello: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03junk";
    for first in [
        hello,
        b"PRI * HTTP/2.0",
        b"hello",
        b"{\"type\":\"nope\"}",
        b"[1]",
    ] {
        let mut bytes = first.to_vec();
        bytes.extend_from_slice(format!("\n{FORCE}\n{PLANT}\n").as_bytes());
        let got = exchange(&b, &bytes, Duration::from_secs(5));
        let text = String::from_utf8_lossy(&got);
        assert!(
            !text.contains("unlocked") && !text.contains("acquired"),
            "{:?}: {text}",
            String::from_utf8_lossy(first)
        );
    }
    // The same on the Unix socket: the error reply, then the close.
    let mut c = b.connect(Transport::Uds);
    c.send_raw("not json");
    send_after_close(&mut c, FORCE);
    assert!(c.recv()["error"].is_string());
    assert!(c.try_recv().is_none(), "closed after the error reply");
    holder.send(json!({"type":"lock-info-request","uuid":"i","key":"k"}));
    assert_eq!(holder.recv()["lockholderUUIDs"], json!(["h"]));
    holder.send(json!({"type":"lock-info-request","uuid":"i","key":"p"}));
    assert_eq!(holder.recv()["isLocked"], false);
    // After a valid first request, a bad line is answered and the connection lives on.
    let mut c = b.connect(Transport::Tcp);
    c.send(json!({"type":"ping","uuid":"p"}));
    assert_eq!(c.recv()["type"], "pong");
    c.send_raw("not json");
    assert!(c.recv()["error"].is_string());
    c.send(json!({"type":"ping","uuid":"p2"}));
    assert_eq!(c.recv()["uuid"], "p2");
}

/// With an auth token, connections that never authenticate (a lone `\n`, a `{` that never
/// ends) are closed at the handshake deadline, and when the broker is full a newcomer takes
/// the place of the oldest of them: they cannot lock out a client that has the token.
#[test]
fn unauthenticated_connections_are_closed_in_time_and_make_room_for_newcomers() {
    let b = TestBroker::with(|b| {
        b.auth_token(Some("s3cret".into()))
            .max_connections(4)
            .handshake_timeout(Duration::from_millis(700))
    });
    let mut idle = Vec::new();
    for junk in [&b"\n"[..], b"{", b"\n", b"{\"type\""] {
        let mut s = TcpStream::connect(b.addr).unwrap();
        s.write_all(junk).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        idle.push(s);
    }
    std::thread::sleep(Duration::from_millis(100));
    // Full of connections that never authenticate: a newcomer with the token still gets in.
    let mut c = b.connect(Transport::Tcp);
    c.send(json!({"type":"auth","uuid":"a","token":"s3cret"}));
    assert_eq!(c.recv()["authenticated"], true);
    assert_eq!(c.lock("k", "c1")["acquired"], true);
    // The oldest idle one made room; the rest are closed at the deadline.
    let start = Instant::now();
    let mut closed = 0;
    for s in &mut idle {
        let mut buf = [0u8; 64];
        if matches!(s.read(&mut buf), Ok(0)) {
            closed += 1;
        }
    }
    let took = start.elapsed();
    println!("unauthenticated connections closed: {closed} of 4, the last after {took:?}");
    assert_eq!(closed, 4);
    assert!(took < Duration::from_secs(3), "{took:?}");
    // The authenticated one is never closed for room, nor at the deadline.
    std::thread::sleep(Duration::from_millis(800));
    c.send(json!({"type":"ping","uuid":"p"}));
    assert_eq!(c.recv()["type"], "pong");
}

/// HTTP requests other than GET get 405 (HEAD without a body), as documented; nothing in
/// their bodies runs.
#[test]
fn head_and_post_get_405() {
    let b = TestBroker::start();
    let mut holder = b.connect(Transport::Tcp);
    assert_eq!(holder.lock("k", "h")["acquired"], true);
    let host = b.addr;
    for (req, body) in [
        (format!("HEAD / HTTP/1.1\r\nHost: {host}\r\n\r\n"), false),
        (
            format!(
                "POST /metrics HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n{FORCE}\n",
                FORCE.len() + 1
            ),
            true,
        ),
        (
            format!("PUT / HTTP/1.1\r\nHost: {host}\r\n\r\n{FORCE}\n"),
            true,
        ),
    ] {
        let got = exchange(&b, req.as_bytes(), Duration::from_secs(5));
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 405 "), "{req:?}: {text:?}");
        assert_eq!(text.ends_with("only GET\n"), body, "{text:?}");
    }
    holder.send(json!({"type":"lock-info-request","uuid":"i","key":"k"}));
    assert_eq!(holder.recv()["lockholderUUIDs"], json!(["h"]));
}
