//! Security defaults: the auth token, admin restriction, the Unix socket's mode.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{TestBroker, Transport};
use serde_json::json;

#[test]
fn ndjson_must_authenticate_first() {
    let b = TestBroker::with(|b| b.auth_token(Some("s3cret".into())));
    // Anything else first: an error reply and the connection closed.
    let mut c = b.connect(Transport::Tcp);
    c.send(json!({"type":"lock","uuid":"a","key":"k"}));
    let r = c.recv();
    assert!(r["error"].as_str().unwrap().contains("authenticate"), "{r}");
    assert!(c.try_recv().is_none(), "closed");
    // A wrong token: refused and closed.
    let mut c = b.connect(Transport::Uds);
    c.send(json!({"type":"auth","uuid":"x","token":"nope"}));
    assert_eq!(c.recv()["authenticated"], false);
    assert!(c.try_recv().is_none(), "closed");
    // The right token: served.
    let mut c = b.connect(Transport::Tcp);
    c.send(json!({"type":"auth","uuid":"x","token":"s3cret"}));
    assert_eq!(c.recv()["authenticated"], true);
    assert_eq!(c.lock("k", "a")["acquired"], true);
}

fn ws_text(ws: &mut tungstenite::WebSocket<TcpStream>, v: serde_json::Value) {
    ws.send(tungstenite::Message::text(v.to_string())).unwrap();
}

fn ws_reply(ws: &mut tungstenite::WebSocket<TcpStream>) -> Option<serde_json::Value> {
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => return serde_json::from_str(&t).ok(),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

/// A WebSocket upgrade with `Authorization: Bearer <token>` is authenticated: under
/// `--restrict-admin` it may force, like an NDJSON connection that sent `auth`. A wrong token
/// is refused (401). Without the header (a browser cannot set one: the status page) the
/// upgrade goes on and the connection must send `auth` first, like an NDJSON one.
#[test]
fn websocket_authenticates_by_its_bearer_header_or_an_auth_message() {
    use tungstenite::client::IntoClientRequest;
    let b = TestBroker::with(|b| b.auth_token(Some("s3cret".into())).restrict_admin(true));
    let ws_with = |auth: Option<&str>| {
        let mut req = format!("ws://{}/", b.addr).into_client_request().unwrap();
        if let Some(a) = auth {
            req.headers_mut()
                .insert("Authorization", a.parse().unwrap());
        }
        let s = TcpStream::connect(b.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        tungstenite::client(req, s).map(|(ws, _)| ws).ok()
    };
    assert!(
        ws_with(Some("Bearer wrong")).is_none(),
        "a wrong token: 401"
    );
    let mut ws = ws_with(Some("Bearer s3cret")).expect("upgrade with the token");
    ws_text(&mut ws, json!({"type":"lock","uuid":"a","key":"k"}));
    assert_eq!(ws_reply(&mut ws).unwrap()["acquired"], true);
    ws_text(
        &mut ws,
        json!({"type":"unlock","uuid":"f","key":"k","force":true}),
    );
    let r = ws_reply(&mut ws).unwrap();
    assert_eq!(
        r["unlocked"], true,
        "an authenticated WebSocket may force: {r}"
    );
    // No header: anything but `auth` first closes it; `auth` first serves it.
    let mut ws = ws_with(None).expect("upgrade without the header");
    ws_text(&mut ws, json!({"type":"lock","uuid":"b","key":"k"}));
    assert!(
        ws_reply(&mut ws).unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("authenticate")
    );
    assert!(ws_reply(&mut ws).is_none(), "closed");
    let mut ws = ws_with(None).expect("upgrade without the header");
    ws_text(&mut ws, json!({"type":"auth","uuid":"x","token":"s3cret"}));
    assert_eq!(ws_reply(&mut ws).unwrap()["authenticated"], true);
    ws_text(&mut ws, json!({"type":"lock","uuid":"c","key":"k"}));
    assert_eq!(ws_reply(&mut ws).unwrap()["acquired"], true);
}

#[test]
fn force_can_be_restricted_to_the_unix_socket() {
    let b = TestBroker::with(|b| b.restrict_admin(true));
    let mut holder = b.connect(Transport::Tcp);
    holder.lock("k", "h");
    let mut tcp = b.connect(Transport::Tcp);
    tcp.send(json!({"type":"unlock","uuid":"f","key":"k","force":true}));
    let r = tcp.recv();
    assert_eq!(r["unlocked"], false);
    assert!(r["error"].as_str().unwrap().contains("admin"));
    let mut uds = b.connect(Transport::Uds);
    uds.send(json!({"type":"unlock","uuid":"f","key":"k","force":true}));
    assert_eq!(uds.recv()["unlocked"], true);
}

#[test]
fn default_listener_is_loopback_and_refuses_over_the_connection_cap() {
    let d = live_mutex::broker::Broker::builder();
    assert!(format!("{d:?}").contains("127.0.0.1:6970"));
    let b = TestBroker::with(|b| b.max_connections(3));
    let mut held: Vec<common::Wire> = (0..3).map(|_| b.connect(Transport::Tcp)).collect();
    for (i, c) in held.iter_mut().enumerate() {
        c.send(json!({"type":"ping","uuid":format!("p{i}")}));
        assert_eq!(c.recv()["type"], "pong");
    }
    // The fourth is closed at once, cleanly; the others are unaffected.
    let mut s = TcpStream::connect(b.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"{\"type\":\"ping\",\"uuid\":\"x\"}\n").ok();
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0);
    held[0].send(json!({"type":"ping","uuid":"again"}));
    assert_eq!(held[0].recv()["uuid"], "again");
}
