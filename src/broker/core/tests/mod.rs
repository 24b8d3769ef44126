//! The core driven in memory with simulated time (see [`util::Pair`]): acks, probes, TTLs,
//! wait deadlines, disconnects, legacy RW parking and closes, with exact instants and no
//! sockets. Rust clients are real `proto::Session`s; the npm client's messages and hostile
//! input are raw JSON. `tests/compat_wire.rs` checks the same promises over TCP, in real time.

mod caps;
mod rules;
mod store;
mod util;
mod watch;

use std::time::Duration;

use serde_json::{Value, json};

use super::{ConnKind, Event};
use crate::proto::Request;
use crate::proto::session::{Answer, BrokerKind, RequestId, Unlocked};
use util::{Client, Pair, config, uuid};

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

/// A Rust client's lock that was granted at once (its fencing token).
fn granted(p: &mut Pair, c: Client, id: RequestId) -> u64 {
    match p.answer(c, id) {
        Answer::Locked {
            fencing_token: Some(t),
        } => t,
        a => panic!("lock answered {a:?}"),
    }
}

/// The npm client's connection `n` (raw) with a pushed grant `n1` of `k` that it has not
/// acknowledged; Rust client `c` waits behind it with lock `c1`. Returns (n, c, c1, observer).
fn pushed_unacknowledged(p: &mut Pair, ttl: Value) -> (Client, Client, RequestId, Client) {
    let n = p.connect();
    let (a, c, o) = (
        p.session(BrokerKind::Rust),
        p.session(BrokerKind::Rust),
        p.session(BrokerKind::Rust),
    );
    version(p, n);
    let a1 = p.lock(a, "k");
    granted(p, a, a1);
    assert_eq!(node_lock(p, n, "k", "n1", 0, ttl)["queued"], true);
    let c1 = p.lock(c, "k");
    assert!(p.waits(c, c1));
    assert_eq!(p.unlock(a, "k", a1), Answer::Unlocked(Unlocked::Yes));
    let g = p.recv(n);
    assert_eq!((&g["uuid"], &g["acquired"]), (&json!("n1"), &json!(true)));
    (n, c, c1, o)
}

#[test]
fn an_unacknowledged_push_is_probed_at_200_ms_and_lives_until_its_ttl() {
    let mut p = Pair::new(config());
    let (n, c, c1, o) = pushed_unacknowledged(&mut p, json!(2500));
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
    assert_eq!(p.holders(o, "k"), ["n1"]);
    p.expect_silence(c);
    // the TTL (2.5 s from the push) ends it, and the waiter is granted at that instant
    p.advance(MS);
    granted(&mut p, c, c1);
    assert_eq!(p.elapsed(), 2500 * MS);
    p.expect_silence(n);
}

#[test]
fn a_probe_answered_before_the_ack_releases_the_ghost() {
    let mut p = Pair::new(config());
    let (n, c, c1, o) = pushed_unacknowledged(&mut p, json!(7050));
    p.advance(200 * MS);
    assert_eq!(p.recv(n)["uuid"], "lmx-ack-probe:n1");
    // another connection cannot answer n's probe
    let x = p.connect();
    p.send(
        x,
        json!({"type":"lock-received-rejected","uuid":"lmx-ack-probe:n1","key":"k"}),
    );
    p.expect_silence(x);
    assert_eq!(p.holders(o, "k"), ["n1"]);
    p.send(
        n,
        json!({"uuid":"lmx-ack-probe:n1","key":"k","type":"lock-received-rejected"}),
    );
    granted(&mut p, c, c1);
    p.expect_silence(n);
}

#[test]
fn a_late_ack_before_the_probe_answer_keeps_the_grant() {
    let mut p = Pair::new(config());
    let (n, c, c1, o) = pushed_unacknowledged(&mut p, json!(7050));
    p.advance(500 * MS);
    assert_eq!(p.recv(n)["uuid"], "lmx-ack-probe:n1");
    p.send(n, json!({"uuid":"n1","key":"k","type":"lock-received"}));
    p.send(
        n,
        json!({"uuid":"lmx-ack-probe:n1","key":"k","type":"lock-received-rejected"}),
    );
    p.expect_silence(n);
    p.expect_silence(c);
    assert_eq!(p.holders(o, "k"), ["n1"]);
    // no second probe, ever
    p.advance(Duration::from_secs(5));
    p.expect_silence(n);
    unlock(&mut p, n, "k", "n1");
    granted(&mut p, c, c1);
}

#[test]
fn opt_in_ack_timeout_releases_an_unacknowledged_push_at_its_deadline() {
    let mut cfg = config();
    cfg.ack_timeout = Some(300 * MS);
    let mut p = Pair::new(cfg);
    let (n, c, c1, o) = pushed_unacknowledged(&mut p, json!(7050));
    p.advance(299 * MS);
    assert_eq!(p.recv(n)["uuid"], "lmx-ack-probe:n1");
    p.expect_silence(c);
    p.advance(MS);
    granted(&mut p, c, c1);
    // an acknowledged push is kept past the deadline
    assert_eq!(
        node_lock(&mut p, n, "k", "n2", 0, json!(7050))["queued"],
        true
    );
    assert_eq!(p.unlock(c, "k", c1), Answer::Unlocked(Unlocked::Yes));
    assert_eq!(p.recv(n)["uuid"], "n2");
    p.send(n, json!({"type":"lock-received","uuid":"n2","key":"k"}));
    p.advance(Duration::from_secs(1));
    assert_eq!(p.holders(o, "k"), ["n2"]);
}

#[test]
fn a_wait_timeout_answers_at_its_deadline_and_leaves_the_queue() {
    let mut p = Pair::new(config());
    let (a, w, x) = (
        p.session(BrokerKind::Rust),
        p.session(BrokerKind::Rust),
        p.session(BrokerKind::Rust),
    );
    let a1 = p.lock(a, "k");
    granted(&mut p, a, a1);
    let w1 = p.lock_with(w, "k", |r| r.wait_timeout = Some(500));
    let x1 = p.lock(x, "k");
    p.advance(499 * MS);
    assert!(p.waits(w, w1));
    p.advance(MS);
    assert_eq!(p.answer(w, w1), Answer::NotGranted);
    // the timed-out waiter is gone: the next unlock grants the one behind it
    p.unlock(a, "k", a1);
    granted(&mut p, x, x1);
    p.expect_silence(w);
}

#[test]
fn a_disconnect_releases_its_locks_and_grants_the_next_waiter() {
    let mut p = Pair::new(config());
    let [a, b, o, c] = [(); 4].map(|()| p.session(BrokerKind::Rust));
    let (a1, a2, b1) = (p.lock(a, "k"), p.lock(a, "j"), p.lock(b, "k"));
    granted(&mut p, a, a1);
    granted(&mut p, a, a2);
    assert!(p.waits(b, b1));
    p.disconnect(a);
    granted(&mut p, b, b1);
    assert!(p.holders(o, "j").is_empty());
    // a waiter that leaves is no longer in line
    let o1 = p.lock(o, "k");
    let c1 = p.lock(c, "k");
    assert!(p.waits(o, o1) && p.waits(c, c1));
    p.disconnect(o);
    p.unlock(b, "k", b1);
    granted(&mut p, c, c1);
}

#[test]
fn a_lock_given_up_is_cancelled_and_its_place_passes_on() {
    let mut p = Pair::new(config());
    let [a, w, x] = [(); 3].map(|()| p.session(BrokerKind::Rust));
    let a1 = p.lock(a, "k");
    granted(&mut p, a, a1);
    let (w1, x1) = (p.lock(w, "k"), p.lock(x, "k"));
    // w's own deadline passed: its session cancels the request at the broker
    p.give_up(w, w1);
    assert_eq!(p.info(a, "k").waiters, 1);
    p.unlock(a, "k", a1);
    granted(&mut p, x, x1);
    assert_eq!(p.holders(a, "k"), [x1.to_string()]);
    p.expect_silence(w);
}

/// A connection that said `version` (so the broker waits for its acks) driven by a session
/// that acks every grant with `lock-received`, as it does for the npm broker: the pushed
/// grant is acknowledged at once, so nothing is left to probe, and the lock is held until
/// released.
#[test]
fn a_session_that_acks_its_grants_leaves_nothing_to_probe() {
    let mut p = Pair::new(config());
    let (a, n) = (p.session(BrokerKind::Rust), p.session(BrokerKind::Node));
    version(&mut p, n);
    let a1 = p.lock(a, "k");
    granted(&mut p, a, a1);
    let n1 = p.lock(n, "k");
    p.unlock(a, "k", a1);
    assert_eq!(
        p.answer(n, n1),
        Answer::Locked {
            fencing_token: Some(1001)
        }
    );
    assert!(p.core.acks.is_empty(), "the push was acknowledged");
    p.advance(Duration::from_secs(5));
    assert_eq!(p.holders(a, "k"), [n1.to_string()]);
    assert_eq!(p.unlock(n, "k", n1), Answer::Unlocked(Unlocked::Yes));
}

#[test]
fn a_retry_with_the_same_uuid_is_idempotent() {
    let mut p = Pair::new(config());
    let (a, w) = (p.session(BrokerKind::Rust), p.connect());
    version(&mut p, w);
    let a1 = p.lock(a, "k");
    granted(&mut p, a, a1);
    assert_eq!(
        node_lock(&mut p, w, "k", "w1", 0, json!(7050))["queued"],
        true
    );
    let r = node_lock(&mut p, w, "k", "w1", 1, json!(7050));
    assert_eq!(
        (&r["acquired"], &r["lockRequestCount"]),
        (&json!(false), &json!(1))
    );
    p.unlock(a, "k", a1);
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
    // (raw: the refusal of a lock carries no `key`, which a session takes for a bad reply)
    let (bad, good) = (p.connect(), p.session(BrokerKind::Rust));
    let unix = p.session_kind(ConnKind::Unix, BrokerKind::Rust);
    p.send(bad, json!({"type":"lock","uuid":"b1","key":"k"}));
    let e = p.recv(bad);
    assert_eq!(e["error"], "authenticate first");
    assert!(p.closed(bad));
    let auth = |p: &mut Pair, c: Client, token: &str| {
        let uuid = uuid();
        let id = p.request(
            c,
            &Request::Auth {
                uuid: Some(&uuid),
                token,
            },
        );
        p.answer(c, id)
    };
    assert_eq!(auth(&mut p, good, "s3cret"), Answer::Authenticated);
    let g1 = p.lock(good, "k");
    granted(&mut p, good, g1);
    // another connection's request is not refused for this one's state
    assert_eq!(
        auth(&mut p, unix, "wrong"),
        Answer::Rejected("wrong auth token".into())
    );
    assert!(p.closed(unix));
    assert_eq!(p.holders(good, "k"), [g1.to_string()]);
}

#[test]
fn restrict_admin_lets_only_unix_connections_force() {
    let mut cfg = config();
    cfg.restrict_admin = true;
    let mut p = Pair::new(cfg);
    let tcp = p.session(BrokerKind::Rust);
    let unix = p.session_kind(ConnKind::Unix, BrokerKind::Rust);
    let t1 = p.lock(tcp, "k");
    granted(&mut p, tcp, t1);
    let force = |p: &mut Pair, c: Client| {
        let uuid = uuid();
        let req = Request::Unlock {
            uuid: &uuid,
            key: "k",
            lock_id: None,
            force: true,
        };
        let id = p.request(c, &req);
        p.answer(c, id)
    };
    let r = force(&mut p, tcp);
    assert!(
        matches!(&r, Answer::Unlocked(Unlocked::NotHeld(Some(e))) if e.contains("admin")),
        "{r:?}"
    );
    assert_eq!(force(&mut p, unix), Answer::Unlocked(Unlocked::Yes));
    assert!(p.holders(tcp, "k").is_empty());
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
