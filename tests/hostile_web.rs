//! A web page in the user's browser against a broker on 127.0.0.1 (issue 11): cross-protocol
//! POST/PUT bodies on the NDJSON port, and WebSocket upgrades with a foreign Origin, `null`, or
//! a DNS-rebinding Host. Each attack asserts that the holder keeps its key and nothing was
//! planted; the cases that must keep working follow.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{TestBroker, Transport, Wire};
use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest;

const FORCE: &str = r#"{"type":"unlock","uuid":"f","key":"prod-db","force":true}"#;
const PLANT: &str =
    r#"{"type":"lock","uuid":"p","key":"planted","ttl":null,"keepLocksAfterDeath":true}"#;

/// A broker with `prod-db` held by an NDJSON client.
fn held() -> (TestBroker, Wire) {
    let b = TestBroker::start();
    let mut holder = b.connect(Transport::Tcp);
    assert_eq!(holder.lock("prod-db", "h1")["acquired"], true);
    (b, holder)
}

/// The holder still holds `prod-db` (its own unlock succeeds) and no other key exists.
fn assert_untouched(b: &TestBroker, holder: &mut Wire) {
    let mut c = b.connect(Transport::Uds);
    c.send(json!({"type":"ls","uuid":"ls"}));
    assert_eq!(
        c.recv()["ls_result"],
        json!(["prod-db"]),
        "a key was planted"
    );
    let r = holder.unlock("prod-db", "h1");
    assert_eq!(r["unlocked"], true, "the holder lost its lock: {r}");
}

/// Sends `chunks` as separate TCP writes, then reads what comes back until the broker closes
/// (or 2 s pass).
fn send_raw(b: &TestBroker, chunks: &[&[u8]]) -> Vec<u8> {
    common::exchange(b.addr, chunks, Duration::from_secs(2))
}

fn http_request(method: &str, b: &TestBroker) -> String {
    let body = format!("{FORCE}\n{PLANT}\n");
    format!(
        "{method} / HTTP/1.1\r\nHost: {}\r\nOrigin: http://evil.example\r\n\
         Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
        b.addr,
        body.len()
    )
}

/// What an HTTP request on the broker's port gets: an HTTP refusal (403 for a foreign Origin,
/// 405 for a method other than GET) and the close; never a protocol reply.
fn assert_refused_by_http(got: &[u8]) {
    let text = String::from_utf8_lossy(got);
    assert!(
        text.starts_with("HTTP/1.1 403 ") || text.starts_with("HTTP/1.1 405 "),
        "an HTTP refusal, got {text:?}"
    );
    assert!(
        !text.contains("unlocked") && !text.contains("acquired"),
        "{text}"
    );
}

#[test]
fn post_body_does_not_run() {
    let (b, mut holder) = held();
    let got = send_raw(&b, &[http_request("POST", &b).as_bytes()]);
    assert_refused_by_http(&got);
    assert_untouched(&b, &mut holder);
}

#[test]
fn put_body_does_not_run() {
    let (b, mut holder) = held();
    let got = send_raw(&b, &[http_request("PUT", &b).as_bytes()]);
    assert_refused_by_http(&got);
    assert_untouched(&b, &mut holder);
}

#[test]
fn first_line_split_over_three_writes_does_not_run() {
    let (b, mut holder) = held();
    let req = http_request("POST", &b);
    let bytes = req.as_bytes();
    let got = send_raw(&b, &[&bytes[..2], &bytes[2..9], &bytes[9..]]);
    assert_refused_by_http(&got);
    assert_untouched(&b, &mut holder);
}

#[test]
fn header_line_after_garbage_closes_before_the_body() {
    // Something that is not JSON, then a header line, then requests: closed at the header.
    let (b, mut holder) = held();
    let req = format!("hello\nX-Custom: 1\n{FORCE}\n{PLANT}\n");
    let got = send_raw(&b, &[req.as_bytes()]);
    let text = String::from_utf8_lossy(&got);
    // At most the error reply for `hello` (the close may discard it), nothing else.
    assert!(text.lines().all(|l| l.contains("error")), "{text}");
    assert!(
        !text.contains("unlocked") && !text.contains("acquired"),
        "{text}"
    );
    assert_untouched(&b, &mut holder);
}

#[test]
fn plain_get_with_a_body_fails_the_upgrade_and_runs_nothing() {
    let (b, mut holder) = held();
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\n\r\n{FORCE}\n{PLANT}\n",
        b.addr
    );
    let got = send_raw(&b, &[req.as_bytes()]);
    let text = String::from_utf8_lossy(&got);
    assert!(!text.contains("unlocked"), "{text}");
    assert_untouched(&b, &mut holder);
}

#[test]
fn after_a_valid_request_lines_are_no_longer_sniffed() {
    // A key may look like a header once the connection has proved it speaks NDJSON.
    let b = TestBroker::start();
    let mut c = b.connect(Transport::Tcp);
    c.send(json!({"type":"ping","uuid":"p"}));
    assert_eq!(c.recv()["type"], "pong");
    c.send_bytes(b"Host: not-json\n");
    assert!(c.recv()["error"].is_string());
    c.send(json!({"type":"ping","uuid":"p2"}));
    assert_eq!(c.recv()["uuid"], "p2");
}

/// A WebSocket upgrade to the test broker with `Host` (from `url`) and optional `Origin`.
fn upgrade(
    addr: SocketAddr,
    url: &str,
    origin: Option<&str>,
) -> Result<Box<tungstenite::WebSocket<TcpStream>>, u16> {
    let mut req = url.into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("Origin", o.parse().unwrap());
    }
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    match tungstenite::client(req, s) {
        Ok((ws, resp)) => {
            assert!(resp.headers().get("access-control-allow-origin").is_none());
            Ok(Box::new(ws))
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            assert!(resp.headers().get("access-control-allow-origin").is_none());
            Err(resp.status().as_u16())
        }
        Err(e) => panic!("unexpected handshake error {e}"),
    }
}

fn assert_forbidden(b: &TestBroker, url: &str, origin: Option<&str>) {
    let status = upgrade(b.addr, url, origin).map(|_| 101);
    assert_eq!(status, Err(403), "{url} {origin:?}");
}

#[test]
fn websocket_with_a_foreign_origin_is_refused() {
    let (b, mut holder) = held();
    assert_forbidden(
        &b,
        &format!("ws://{}/", b.addr),
        Some("http://evil.example"),
    );
    // Same host, another port: another origin.
    let other = format!("http://127.0.0.1:{}", b.addr.port().wrapping_add(1));
    assert_forbidden(&b, &format!("ws://{}/", b.addr), Some(&other));
    assert_untouched(&b, &mut holder);
}

#[test]
fn websocket_with_origin_null_is_refused() {
    let (b, mut holder) = held();
    assert_forbidden(&b, &format!("ws://{}/", b.addr), Some("null"));
    assert_untouched(&b, &mut holder);
}

#[test]
fn websocket_with_a_dns_rebinding_host_is_refused() {
    let (b, mut holder) = held();
    let url = format!("ws://attacker.example:{}/", b.addr.port());
    let origin = format!("http://attacker.example:{}", b.addr.port());
    assert_forbidden(&b, &url, Some(&origin));
    assert_forbidden(&b, &url, None);
    assert_untouched(&b, &mut holder);
}

fn lock_over(ws: &mut tungstenite::WebSocket<TcpStream>, key: &str) -> Value {
    let req = json!({"type":"lock","uuid":"w","key":key}).to_string();
    ws.send(tungstenite::Message::text(req)).unwrap();
    serde_json::from_str(&ws.read().unwrap().into_text().unwrap()).unwrap()
}

#[test]
fn websocket_without_origin_and_same_origin_pages_work() {
    let b = TestBroker::start();
    let port = b.addr.port();
    let mut ws = upgrade(b.addr, &format!("ws://{}/", b.addr), None).expect("no Origin");
    assert_eq!(lock_over(&mut ws, "a")["acquired"], true);
    let url = format!("ws://127.0.0.1:{port}/");
    let mut ws =
        upgrade(b.addr, &url, Some(&format!("http://127.0.0.1:{port}"))).expect("127.0.0.1");
    assert_eq!(lock_over(&mut ws, "b")["acquired"], true);
    let url = format!("ws://localhost:{port}/");
    let mut ws =
        upgrade(b.addr, &url, Some(&format!("http://localhost:{port}"))).expect("localhost");
    assert_eq!(lock_over(&mut ws, "c")["acquired"], true);
    // The common test client (no Origin) still works too.
    let mut w = b.connect(Transport::Ws);
    assert_eq!(w.lock("d", "d1")["acquired"], true);
}

#[test]
fn allowed_origins_and_hosts_work() {
    let b = TestBroker::with(|b| {
        b.allow_origins(vec!["http://localhost:3000".into(), "null".into()])
            .allow_hosts(vec!["broker.test".into()])
    });
    let url = format!("ws://{}/", b.addr);
    let mut ws = upgrade(b.addr, &url, Some("http://localhost:3000")).expect("allowed origin");
    assert_eq!(lock_over(&mut ws, "a")["acquired"], true);
    upgrade(b.addr, &url, Some("null")).expect("null, allowed explicitly");
    assert_forbidden(&b, &url, Some("http://localhost:3001"));
    let named = format!("ws://broker.test:{}/", b.addr.port());
    upgrade(b.addr, &named, None).expect("allowed host");
    let same = format!("http://broker.test:{}", b.addr.port());
    upgrade(b.addr, &named, Some(&same)).expect("same origin with an allowed host");
}

/// `lmx start` with the flags and the env variable, and the refusal logged with the peer.
#[test]
fn lmx_start_takes_allow_origin_and_logs_refusals() {
    for (args, env) in [
        (
            &[
                "--allow-origin",
                "http://a.test",
                "--allow-origin",
                "http://b.test",
            ][..],
            None,
        ),
        (&[][..], Some("http://a.test,http://b.test")),
    ] {
        let mut cmd = Command::new(common::LMX);
        cmd.args(["start", "--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .env_remove("LMX_ALLOW_ORIGIN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(e) = env {
            cmd.env("LMX_ALLOW_ORIGIN", e);
        }
        let mut child = Kill(cmd.spawn().unwrap());
        let mut err = BufReader::new(child.0.stderr.take().unwrap());
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        let addr = line
            .split("tcp://")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .expect("listening line")
            .to_string();
        let addr: SocketAddr = addr.parse().unwrap();
        let url = format!("ws://{addr}/");
        for o in ["http://a.test", "http://b.test"] {
            upgrade(addr, &url, Some(o)).expect("allowed origin");
        }
        let status = upgrade(addr, &url, Some("http://c.test")).map(|_| 101);
        assert_eq!(status, Err(403));
        refusal_line(&mut err, &mut line);
        assert!(
            line.contains("refused connection from 127.0.0.1:"),
            "{line}"
        );
        assert!(line.contains("http://c.test"), "{line}");
        // The NDJSON path logs too.
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        refusal_line(&mut err, &mut line);
        assert!(
            line.contains("refused connection from 127.0.0.1:"),
            "{line}"
        );
        assert!(line.contains("HTTP"), "{line}");
    }
}

/// Reads the broker's log up to its next refusal line (connections also log an opened and a
/// closed line at info level).
fn refusal_line(err: &mut impl BufRead, line: &mut String) {
    for _ in 0..50 {
        line.clear();
        if err.read_line(line).unwrap() == 0 || line.contains("refused") {
            return;
        }
    }
}

/// Kills the child process when the test ends, however it ends.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}
