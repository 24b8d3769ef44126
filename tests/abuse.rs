//! The bad-input list of issue 7, all against one broker: each input gets an error reply or
//! only its own connection closed; the broker keeps serving others; its memory stays bounded.
//! (One test in this binary, so the RSS it reads is the broker's and this test's alone.)

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{TestBroker, Transport, rss_kib};
use serde_json::json;

/// Sends raw bytes on a fresh connection; returns the first reply line, or None if the broker
/// closed the connection without one.
fn one_shot(addr: std::net::SocketAddr, bytes: &[u8]) -> Option<serde_json::Value> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).ok();
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.extend_from_slice(&b[..n]);
                if buf.contains(&b'\n') {
                    break;
                }
            }
        }
    }
    let line = buf.split(|&c| c == b'\n').next()?;
    serde_json::from_slice(line).ok()
}

#[test]
fn bad_input_gets_an_error_or_a_close_and_memory_stays_bounded() {
    let b = TestBroker::start();
    let mut bystander = b.connect(Transport::Tcp);
    assert_eq!(bystander.lock("mine", "by")["acquired"], true);
    let before = rss_kib();
    let key64k = "k".repeat(64 * 1024 - 100);
    let many_keys: Vec<String> = (0..10_000).map(|i| format!("k{i}")).collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("invalid JSON", b"{\"type\":\"lock\",\n".to_vec()),
        ("null", b"null\n".to_vec()),
        ("42", b"42\n".to_vec()),
        ("array", b"[1,2]\n".to_vec()),
        (
            "unknown type",
            b"{\"type\":\"nope\",\"uuid\":\"u\"}\n".to_vec(),
        ),
        (
            "wrong field type",
            b"{\"type\":\"lock\",\"uuid\":\"u\",\"key\":\"k\",\"max\":\"two\"}\n".to_vec(),
        ),
        ("1 MiB line", [vec![b'{'; 1 << 20], b"\n".to_vec()].concat()),
        (
            "64 KiB key",
            format!("{{\"type\":\"lock\",\"uuid\":\"u\",\"key\":\"{key64k}\"}}\n").into_bytes(),
        ),
        ("NUL bytes", b"\0\0\0\0\n".to_vec()),
        (
            "non-UTF-8",
            b"{\"type\":\"lock\",\"uuid\":\"u\",\"key\":\"\xc3\x28\"}\n".to_vec(),
        ),
        (
            "negative TTL",
            b"{\"type\":\"lock\",\"uuid\":\"u\",\"key\":\"k\",\"ttl\":-1}\n".to_vec(),
        ),
        (
            "NaN TTL",
            b"{\"type\":\"lock\",\"uuid\":\"u\",\"key\":\"k\",\"ttl\":NaN}\n".to_vec(),
        ),
        (
            "huge TTL",
            b"{\"type\":\"lock\",\"uuid\":\"u\",\"key\":\"k\",\"ttl\":1e300}\n".to_vec(),
        ),
        (
            "max 0",
            b"{\"type\":\"lock\",\"uuid\":\"u\",\"key\":\"k\",\"max\":0}\n".to_vec(),
        ),
        (
            "max 2^63",
            b"{\"type\":\"lock\",\"uuid\":\"u\",\"key\":\"k\",\"max\":9223372036854775808}\n"
                .to_vec(),
        ),
        (
            "unlock of an unknown id",
            b"{\"type\":\"unlock\",\"uuid\":\"u\",\"key\":\"k\",\"_uuid\":\"ghost\"}\n".to_vec(),
        ),
        (
            "acquire-many with 10,000 keys",
            format!(
                "{}\n",
                json!({"type":"acquire-many","uuid":"m","keys":many_keys})
            )
            .into_bytes(),
        ),
    ];
    for (name, bytes) in &cases {
        for _ in 0..20 {
            let r = one_shot(b.addr, bytes);
            if let Some(r) = &r {
                assert!(
                    r["error"].is_string(),
                    "{name}: a reply must be an error: {r}"
                );
            }
            eprintln!(
                "{name}: {}",
                r.map_or("connection closed".into(), |r| r["error"].to_string())
            );
        }
        // Others are served throughout.
        bystander.send(json!({"type":"ping","uuid":"p"}));
        assert_eq!(bystander.recv()["type"], "pong", "after {name}");
    }
    // A WebSocket frame that claims 2^60 bytes: only that connection is closed.
    let s = TcpStream::connect(b.addr).unwrap();
    let (mut ws, _) = tungstenite::client(format!("ws://{}/", b.addr), s).unwrap();
    let raw = ws.get_mut();
    let mut frame = vec![0x81u8, 0x80 | 127];
    frame.extend_from_slice(&(1u64 << 60).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4, b'x']);
    raw.write_all(&frame).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    let n = raw.read(&mut buf).unwrap_or(0);
    assert!(n == 0 || buf[0] == 0x88, "closed (or a close frame)");
    // The bystander still holds its lock, and memory stayed bounded.
    bystander.send(json!({"type":"lock-info-request","uuid":"i","key":"mine"}));
    assert_eq!(bystander.recv()["lockholderUUIDs"], json!(["by"]));
    let after = rss_kib();
    eprintln!("RSS before {before} KiB, after {after} KiB");
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
}
