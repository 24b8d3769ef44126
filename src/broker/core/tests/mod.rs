//! The core driven in memory with simulated time (see [`util::Pair`]): acks, probes, TTLs,
//! wait deadlines, disconnects, legacy RW parking and closes, with exact instants and no
//! sockets. `tests/compat_wire.rs` checks the same promises over TCP, in real time.

mod caps;
mod rules;
mod store;
mod util;
mod watch;

use std::time::Duration;

use serde_json::{Value, json};

use super::{ConnKind, Event};
use util::{Client, Pair, config};

const MS: Duration = Duration::from_millis(1);

/// What the Node client sends first on every connection.
fn version(p: &mut Pair, c: Client) {
    p.send(
        c,
        json!({"type":"version","value":"0.2.25","max":null,"pid":1,"keepLocksAfterDeath":false}),
    );
}

/// A `lock` exactly as the 0.2.25 client writes it.
fn node_lock(p: &mut Pair, c: Client, key: &str, uuid: &str, retry: u32, ttl: Value) -> Value {
    p.send(
        c,
        json!({"keepLocksAfterDeath":false,"retryCount":retry,"uuid":uuid,"key":key,
        "type":"lock","ttl":ttl,"rwStatus":null,"max":null,"pid":1}),
    );
    p.recv(c)
}

fn lock(p: &mut Pair, c: Client, key: &str, uuid: &str) -> Value {
    p.send(c, json!({"type":"lock","uuid":uuid,"key":key,"ttl":null}));
    p.recv(c)
}

fn unlock(p: &mut Pair, c: Client, key: &str, lock_id: &str) -> Value {
    p.send(
        c,
        json!({"type":"unlock","uuid":format!("u-{lock_id}"),"key":key,"_uuid":lock_id}),
    );
    p.recv(c)
}

fn holders(p: &mut Pair, c: Client, key: &str) -> Value {
    p.send(c, json!({"type":"lock-info-request","uuid":"i","key":key}));
    p.recv(c)["lockholderUUIDs"].clone()
}

/// A Node connection `n` with a pushed grant `n1` of `k` that it has not acknowledged; `c`
/// waits behind it. Returns (n, c, observer).
fn pushed_unacknowledged(p: &mut Pair, ttl: Value) -> (Client, Client, Client) {
    let (a, n, c, o) = (p.connect(), p.connect(), p.connect(), p.connect());
    version(p, n);
    assert_eq!(lock(p, a, "k", "a1")["acquired"], true);
    assert_eq!(node_lock(p, n, "k", "n1", 0, ttl)["queued"], true);
    assert_eq!(lock(p, c, "k", "c1")["queued"], true);
    unlock(p, a, "k", "a1");
    let g = p.recv(n);
    assert_eq!((&g["uuid"], &g["acquired"]), (&json!("n1"), &json!(true)));
    (n, c, o)
}

#[test]
fn an_unacknowledged_push_is_probed_at_200_ms_and_lives_until_its_ttl() {
    let mut p = Pair::new(config());
    let (n, c, o) = pushed_unacknowledged(&mut p, json!(2500));
    p.advance(199 * MS);
    p.expect_silence(n);
    p.advance(MS);
    let probe = p.recv(n);
    assert_eq!(
        (&probe["uuid"], &probe["key"], &probe["acquired"]),
        (&json!("lmx-ack-probe:n1"), &json!("k"), &json!(true))
    );
    // a client stalled for 2.4 s still holds the key
    p.advance(2299 * MS);
    assert_eq!(holders(&mut p, o, "k"), json!(["n1"]));
    p.expect_silence(c);
    // the TTL (2.5 s from the push) ends it, and the waiter is granted at that instant
    p.advance(MS);
    let g = p.recv(c);
    assert_eq!((&g["uuid"], &g["acquired"]), (&json!("c1"), &json!(true)));
    assert_eq!(p.elapsed(), 2500 * MS);
    p.expect_silence(n);
}

#[test]
fn a_probe_answered_before_the_ack_releases_the_ghost() {
    let mut p = Pair::new(config());
    let (n, c, o) = pushed_unacknowledged(&mut p, json!(7050));
    p.advance(200 * MS);
    assert_eq!(p.recv(n)["uuid"], "lmx-ack-probe:n1");
    // another connection cannot answer n's probe
    p.send(
        o,
        json!({"type":"lock-received-rejected","uuid":"lmx-ack-probe:n1","key":"k"}),
    );
    p.expect_silence(o);
    assert_eq!(holders(&mut p, o, "k"), json!(["n1"]));
    p.send(
        n,
        json!({"uuid":"lmx-ack-probe:n1","key":"k","type":"lock-received-rejected"}),
    );
    let g = p.recv(c);
    assert_eq!((&g["uuid"], &g["acquired"]), (&json!("c1"), &json!(true)));
    p.expect_silence(n);
}

#[test]
fn a_late_ack_before_the_probe_answer_keeps_the_grant() {
    let mut p = Pair::new(config());
    let (n, c, o) = pushed_unacknowledged(&mut p, json!(7050));
    p.advance(500 * MS);
    assert_eq!(p.recv(n)["uuid"], "lmx-ack-probe:n1");
    p.send(n, json!({"uuid":"n1","key":"k","type":"lock-received"}));
    p.send(
        n,
        json!({"uuid":"lmx-ack-probe:n1","key":"k","type":"lock-received-rejected"}),
    );
    p.expect_silence(n);
    p.expect_silence(c);
    assert_eq!(holders(&mut p, o, "k"), json!(["n1"]));
    // no second probe, ever
    p.advance(Duration::from_secs(5));
    p.expect_silence(n);
    unlock(&mut p, n, "k", "n1");
    assert_eq!(p.recv(c)["uuid"], "c1");
}

#[test]
fn opt_in_ack_timeout_releases_an_unacknowledged_push_at_its_deadline() {
    let mut cfg = config();
    cfg.ack_timeout = Some(300 * MS);
    let mut p = Pair::new(cfg);
    let (n, c, o) = pushed_unacknowledged(&mut p, json!(7050));
    p.advance(299 * MS);
    assert_eq!(p.recv(n)["uuid"], "lmx-ack-probe:n1");
    p.expect_silence(c);
    p.advance(MS);
    assert_eq!(p.recv(c)["uuid"], "c1");
    // an acknowledged push is kept past the deadline
    assert_eq!(
        node_lock(&mut p, n, "k", "n2", 0, json!(7050))["queued"],
        true
    );
    unlock(&mut p, c, "k", "c1");
    assert_eq!(p.recv(n)["uuid"], "n2");
    p.send(n, json!({"type":"lock-received","uuid":"n2","key":"k"}));
    p.advance(Duration::from_secs(1));
    assert_eq!(holders(&mut p, o, "k"), json!(["n2"]));
}

#[test]
fn a_wait_timeout_answers_at_its_deadline_and_leaves_the_queue() {
    let mut p = Pair::new(config());
    let (a, w, x) = (p.connect(), p.connect(), p.connect());
    assert_eq!(lock(&mut p, a, "k", "a1")["acquired"], true);
    p.send(
        w,
        json!({"type":"lock","uuid":"w1","key":"k","ttl":null,"waitTimeout":500}),
    );
    assert_eq!(p.recv(w)["queued"], true);
    assert_eq!(lock(&mut p, x, "k", "x1")["queued"], true);
    p.advance(499 * MS);
    p.expect_silence(w);
    p.advance(MS);
    let t = p.recv(w);
    assert_eq!(
        (&t["uuid"], &t["acquired"], &t["timedOut"]),
        (&json!("w1"), &json!(false), &json!(true))
    );
    // the timed-out waiter is gone: the next unlock grants the one behind it
    unlock(&mut p, a, "k", "a1");
    assert_eq!(p.recv(x)["uuid"], "x1");
    p.expect_silence(w);
}

#[test]
fn a_disconnect_releases_its_locks_and_grants_the_next_waiter() {
    let mut p = Pair::new(config());
    let (a, b, o) = (p.connect(), p.connect(), p.connect());
    assert_eq!(lock(&mut p, a, "k", "a1")["acquired"], true);
    assert_eq!(lock(&mut p, a, "j", "a2")["acquired"], true);
    assert_eq!(lock(&mut p, b, "k", "b1")["queued"], true);
    p.disconnect(a);
    let g = p.recv(b);
    assert_eq!((&g["uuid"], &g["acquired"]), (&json!("b1"), &json!(true)));
    assert_eq!(holders(&mut p, o, "j"), json!([]));
    // a waiter that leaves is no longer in line
    assert_eq!(lock(&mut p, o, "k", "o1")["queued"], true);
    let c = p.connect();
    assert_eq!(lock(&mut p, c, "k", "c1")["queued"], true);
    p.disconnect(o);
    unlock(&mut p, b, "k", "b1");
    assert_eq!(p.recv(c)["uuid"], "c1");
}

#[test]
fn a_retry_with_the_same_uuid_is_idempotent() {
    let mut p = Pair::new(config());
    let (a, w) = (p.connect(), p.connect());
    version(&mut p, w);
    assert_eq!(lock(&mut p, a, "k", "a1")["acquired"], true);
    assert_eq!(
        node_lock(&mut p, w, "k", "w1", 0, json!(7050))["queued"],
        true
    );
    let r = node_lock(&mut p, w, "k", "w1", 1, json!(7050));
    assert_eq!(
        (&r["acquired"], &r["lockRequestCount"]),
        (&json!(false), &json!(1))
    );
    unlock(&mut p, a, "k", "a1");
    assert_eq!(p.recv(w)["uuid"], "w1");
    p.send(w, json!({"type":"lock-received","uuid":"w1","key":"k"}));
    // a retry that crosses the grant is answered `acquired:false`
    let r = node_lock(&mut p, w, "k", "w1", 2, json!(7050));
    assert_eq!(r["acquired"], false);
    assert!(r.get("error").is_none(), "{r}");
    assert_eq!(holders(&mut p, w, "k"), json!(["w1"]));
    p.expect_silence(w);
}

#[test]
fn legacy_rw_parks_the_mutex_while_a_writer_waits() {
    let mut p = Pair::new(config());
    let (r, wr) = (p.connect(), p.connect());
    version(&mut p, r);
    version(&mut p, wr);
    let step = |p: &mut Pair, c: Client, ty: &str, uuid: &str| {
        p.send(c, json!({"type":ty,"uuid":uuid,"key":"rw"}));
    };
    let mutex = |p: &mut Pair, c: Client, uuid: &str| {
        p.send(
            c,
            json!({"type":"lock","uuid":uuid,"key":"rw","ttl":7050,"max":1,"retryCount":0}),
        );
        assert_eq!(p.recv(c)["acquired"], true);
        p.send(c, json!({"type":"lock-received","uuid":uuid,"key":"rw"}));
    };
    // reader enters: mutex, register-write-flag-check, unlock
    mutex(&mut p, r, "rm1");
    step(&mut p, r, "register-write-flag-check", "r1");
    assert_eq!(p.recv(r)["type"], "register-write-flag-success");
    assert_eq!(unlock(&mut p, r, "rw", "rm1")["unlocked"], true);
    // writer: mutex, then its check must wait for the reader: deferred
    mutex(&mut p, wr, "wm1");
    step(&mut p, wr, "register-write-flag-and-readers-check", "w1");
    p.expect_silence(wr);
    // the writer's mutex hold is parked: the reader can take the mutex to leave
    mutex(&mut p, r, "rm2");
    step(&mut p, r, "decrement-readers", "r2");
    assert_eq!(p.recv(r)["type"], "decrement-readers-success");
    let woke = p.recv(wr);
    assert_eq!(
        (&woke["type"], &woke["uuid"]),
        (&json!("broadcast-result"), &json!("w1"))
    );
    assert_eq!(unlock(&mut p, r, "rw", "rm2")["unlocked"], true);
    // the writer's unlock of its parked hold succeeds quietly
    let u = unlock(&mut p, wr, "rw", "wm1");
    assert_eq!(u["unlocked"], true);
    assert!(u.get("error").is_none(), "{u}");
}

#[test]
fn a_reader_that_dies_does_not_block_the_writer() {
    let mut p = Pair::new(config());
    let (r, wr) = (p.connect(), p.connect());
    p.send(
        r,
        json!({"type":"register-write-flag-check","uuid":"r1","key":"rw"}),
    );
    assert_eq!(p.recv(r)["type"], "register-write-flag-success");
    p.send(
        wr,
        json!({"type":"register-write-flag-and-readers-check","uuid":"w1","key":"rw"}),
    );
    p.expect_silence(wr);
    p.disconnect(r);
    assert_eq!(p.recv(wr)["type"], "broadcast-result");
}

#[test]
fn a_version_mismatch_is_answered_then_closed() {
    let mut p = Pair::new(config());
    let (c, o) = (p.connect(), p.connect());
    assert_eq!(lock(&mut p, o, "k", "o1")["acquired"], true);
    p.send(c, json!({"type":"version","value":"0.1.0"}));
    assert_eq!(p.recv(c)["type"], "version-mismatch");
    assert!(p.closed(c));
    assert!(!p.closed(o));
    // `version-mismatch-confirmed` closes at once, dropping output not yet sent
    let d = p.connect();
    let id = p.clients[2].conn;
    let mut raw = br#"{"type":"version-mismatch-confirmed"}"#.to_vec();
    p.core.handle_message(id, &mut raw, p.time);
    assert_eq!(p.core.poll_event(), Some(Event::Close(id)));
    p.core.close(id, p.time);
    p.clients[2].closed = true;
    p.drive();
    p.expect_silence(d);
}

#[test]
fn auth_gates_every_request_and_a_refusal_closes_after_its_answer() {
    let mut cfg = config();
    cfg.auth_token = Some("s3cret".into());
    cfg.restrict_admin = true;
    let mut p = Pair::new(cfg);
    let (bad, good, unix) = (p.connect(), p.connect(), p.connect_kind(ConnKind::Unix));
    p.send(bad, json!({"type":"lock","uuid":"b1","key":"k"}));
    let e = p.recv(bad);
    assert_eq!(e["error"], "authenticate first");
    assert!(p.closed(bad));
    p.send(good, json!({"type":"auth","uuid":"a","token":"s3cret"}));
    assert_eq!(p.recv(good)["authenticated"], true);
    assert_eq!(lock(&mut p, good, "k", "g1")["acquired"], true);
    // another connection's request is not refused for this one's state
    p.send(unix, json!({"type":"auth","uuid":"a","token":"wrong"}));
    assert_eq!(p.recv(unix)["authenticated"], false);
    assert!(p.closed(unix));
    assert_eq!(holders(&mut p, good, "k"), json!(["g1"]));
}

#[test]
fn restrict_admin_lets_only_unix_connections_force() {
    let mut cfg = config();
    cfg.restrict_admin = true;
    let mut p = Pair::new(cfg);
    let (tcp, unix) = (p.connect(), p.connect_kind(ConnKind::Unix));
    assert_eq!(lock(&mut p, tcp, "k", "t1")["acquired"], true);
    let force = json!({"type":"unlock","uuid":"u","key":"k","force":true});
    p.send(tcp, force.clone());
    let r = p.recv(tcp);
    assert_eq!(r["unlocked"], false);
    assert!(
        r["error"].as_str().is_some_and(|e| e.contains("admin")),
        "{r}"
    );
    p.send(unix, force);
    assert_eq!(p.recv(unix)["unlocked"], true);
    assert_eq!(holders(&mut p, tcp, "k"), json!([]));
}

#[test]
fn a_malformed_message_gets_an_error_line_and_the_connection_lives() {
    let mut p = Pair::new(config());
    let c = p.connect();
    p.send_raw(c, r#"{"type":"lock","uuid":"x","key":"#);
    assert!(p.recv(c)["error"].is_string());
    assert!(!p.closed(c));
    assert_eq!(lock(&mut p, c, "k", "c1")["acquired"], true);
}

/// Issue 14: a connection that holds `k` and has a second lock on `k` queued behind it
/// (pipelined) gets the unlock's reply and its own next grant in ONE output buffer, drained by
/// one `poll_transmit`: the reactor writes a connection's whole output once per turn, so the
/// two leave in one write.
#[test]
fn an_unlock_reply_and_the_next_grant_to_the_same_connection_share_one_transmit() {
    let mut p = Pair::new(config());
    let c = p.connect();
    assert_eq!(lock(&mut p, c, "k", "c1")["acquired"], true);
    assert_eq!(lock(&mut p, c, "k", "c2")["queued"], true);
    p.expect_silence(c);
    // One message in, no drive: look at what the core queued for this turn.
    let conn = p.clients[0].conn;
    let mut unlock =
        serde_json::to_vec(&json!({"type":"unlock","uuid":"u-c1","key":"k","_uuid":"c1"}))
            .expect("serializes");
    p.core.handle_message(conn, &mut unlock, p.time);
    assert_eq!(p.core.poll_transmit(), Some(conn));
    assert_eq!(p.core.poll_transmit(), None, "one connection, one transmit");
    let out = p.core.output(conn).to_vec();
    let lines: Vec<Value> = out
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("one JSON value per line"))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(
        (&lines[0]["uuid"], &lines[0]["unlocked"]),
        (&json!("u-c1"), &json!(true))
    );
    assert_eq!(
        (&lines[1]["uuid"], &lines[1]["acquired"]),
        (&json!("c2"), &json!(true))
    );
    p.core.consume(conn, out.len());
    assert!(p.core.output(conn).is_empty());
    assert_eq!(p.core.poll_transmit(), None);
}
