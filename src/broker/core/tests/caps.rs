//! The broker's caps (issue 20): the 0.2.x read/write path is held to the lock path's
//! per-connection and key limits, and its close looks only at the closing connection's keys.

use serde_json::json;

use super::util::{Client, Pair, config};
use crate::table;

fn pair(max_per_conn: usize, max_keys: usize) -> Pair {
    let mut cfg = config();
    cfg.table = table::Config {
        max_requests_per_conn: max_per_conn,
        max_keys,
        ..cfg.table
    };
    Pair::new(cfg)
}

fn rw(p: &mut Pair, c: Client, ty: &str, key: &str, uuid: &str) -> serde_json::Value {
    p.send(c, json!({"type":ty,"uuid":uuid,"key":key}));
    p.recv(c)
}

#[test]
fn legacy_readers_are_held_to_the_per_connection_cap() {
    let mut p = pair(100, 1_000_000);
    let (a, b) = (p.connect(), p.connect());
    for i in 0..100 {
        let r = rw(
            &mut p,
            a,
            "increment-readers",
            &format!("k{i}"),
            &format!("r{i}"),
        );
        assert_eq!(r["type"], "increment-readers-success", "{r}");
    }
    // The same key again adds no entry.
    let r = rw(&mut p, a, "increment-readers", "k0", "again");
    assert_eq!(r["type"], "increment-readers-success", "{r}");
    let r = rw(&mut p, a, "increment-readers", "k100", "over");
    assert!(
        r["error"].as_str().is_some_and(|e| e.contains("100")),
        "{r}"
    );
    let r = rw(&mut p, a, "register-write-flag-check", "k101", "over2");
    assert!(r["error"].is_string(), "{r}");
    // Another connection is not affected, and leaving a key makes room again.
    let r = rw(&mut p, b, "increment-readers", "k100", "b");
    assert_eq!(r["type"], "increment-readers-success", "{r}");
    rw(&mut p, a, "decrement-readers", "k5", "d");
    let r = rw(&mut p, a, "increment-readers", "k100", "fits");
    assert_eq!(r["type"], "increment-readers-success", "{r}");
}

#[test]
fn legacy_keys_are_held_to_the_key_cap() {
    let mut p = pair(10_000, 50);
    let (a, b) = (p.connect(), p.connect());
    for i in 0..30 {
        rw(&mut p, a, "increment-readers", &format!("a{i}"), "r");
    }
    for i in 0..20 {
        let r = rw(&mut p, b, "increment-readers", &format!("b{i}"), "r");
        assert_eq!(r["type"], "increment-readers-success", "{r}");
    }
    let r = rw(
        &mut p,
        b,
        "register-write-flag-and-readers-check",
        "b20",
        "w",
    );
    assert!(r["error"].as_str().is_some_and(|e| e.contains("50")), "{r}");
    // A key already in use is not a new one.
    let r = rw(&mut p, b, "increment-readers", "a0", "r");
    assert_eq!(r["type"], "increment-readers-success", "{r}");
}

#[test]
fn a_legacy_close_looks_only_at_the_closing_connections_keys() {
    let mut p = pair(10_000, 1_000_000);
    let (a, b, w) = (p.connect(), p.connect(), p.connect());
    for i in 0..5_000 {
        rw(&mut p, a, "increment-readers", &format!("k{i}"), "r");
    }
    rw(&mut p, b, "increment-readers", "mine", "r");
    p.core.rw.visits = 0;
    p.disconnect(b);
    assert_eq!(p.core.rw.visits, 1, "keys looked at by a close");
    // A's readers are intact: a writer on one of its keys waits for it.
    p.send(
        w,
        json!({"type":"register-write-flag-and-readers-check","uuid":"w","key":"k7"}),
    );
    p.expect_silence(w);
    p.disconnect(a);
    assert_eq!(p.recv(w)["type"], "broadcast-result");
    assert_eq!(p.core.rw.visits, 5_001);
}
