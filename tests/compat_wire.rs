//! The broker's concessions to what the npm 0.2.25 Node client really sends (docs/protocol.md,
//! "Compatibility"), byte level over NDJSON/TCP: one test per promise in that section.

mod common;

use std::time::{Duration, Instant};

use common::{TestBroker, Transport, Wire};
use serde_json::{Value, json};

const TCP: Transport = Transport::Tcp;

/// What the Node client sends first on every connection.
fn version(w: &mut Wire, keep: bool) {
    w.send(
        json!({"type":"version","value":"0.2.25","max":null,"pid":1,"keepLocksAfterDeath":keep}),
    );
}

/// A `lock` exactly as the 0.2.25 client writes it.
fn node_lock(w: &mut Wire, key: &str, uuid: &str, retry: u32, ttl: Value) -> Value {
    w.send(
        json!({"keepLocksAfterDeath":false,"retryCount":retry,"uuid":uuid,"key":key,
        "type":"lock","ttl":ttl,"rwStatus":null,"max":null,"pid":1}),
    );
    w.recv()
}

fn info(w: &mut Wire, key: &str) -> Value {
    w.send(json!({"type":"lock-info-request","uuid":"i","key":key,"max":null,"pid":1,"keepLocksAfterDeath":false}));
    w.recv()
}

fn try_lock(w: &mut Wire, key: &str, uuid: &str) -> bool {
    w.send(json!({"type":"lock","uuid":uuid,"key":key,"wait":false,"ttl":null}));
    let r = w.recv();
    r["acquired"] == json!(true)
}

/// Polls with try-locks until `key` is granted to `w` (then holds it as `uuid-N`), or panics.
fn wait_free(w: &mut Wire, key: &str, within: Duration) -> Duration {
    let t0 = Instant::now();
    for n in 0.. {
        if try_lock(w, key, &format!("poll-{n}")) {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < within, "{key} not free within {within:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    unreachable!()
}

#[test]
fn a_retry_with_the_same_uuid_is_idempotent() {
    let b = TestBroker::start();
    let (mut a, mut w) = (b.connect(TCP), b.connect(TCP));
    version(&mut w, false);
    assert_eq!(a.lock("k", "a1")["acquired"], true);
    let r = node_lock(&mut w, "k", "w1", 0, json!(7050));
    assert_eq!(
        (r["acquired"].clone(), r["queued"].clone()),
        (json!(false), json!(true))
    );
    // the client's timer fired: same uuid, retryCount 1; still one waiter
    let r = node_lock(&mut w, "k", "w1", 1, json!(7050));
    assert_eq!(r["acquired"], false);
    assert_eq!(r["lockRequestCount"], 1);
    assert!(r.get("error").is_none());
    assert_eq!(info(&mut w, "k")["lockRequestCount"], 1);
    // granted: exactly one push
    a.unlock("k", "a1");
    let g = w.recv();
    assert_eq!(
        (g["uuid"].clone(), g["acquired"].clone()),
        (json!("w1"), json!(true))
    );
    w.send(json!({"type":"lock-received","uuid":"w1","key":"k"}));
    // a retry that crosses the grant is answered `acquired:false`: a second `acquired:true`
    // would reach a settled request, and the client would reject (release) the lock
    let r = node_lock(&mut w, "k", "w1", 2, json!(7050));
    assert_eq!(r["acquired"], false);
    assert!(r.get("error").is_none());
    assert_eq!(info(&mut w, "k")["lockholderUUIDs"], json!(["w1"]));
    w.expect_silence(Duration::from_millis(100));
}

#[test]
fn lock_received_rejected_without_lock_id_releases_and_is_idempotent() {
    let b = TestBroker::start();
    let (mut n, mut o) = (b.connect(TCP), b.connect(TCP));
    version(&mut n, false);
    assert_eq!(
        node_lock(&mut n, "k", "n1", 0, json!(7050))["acquired"],
        true
    );
    // another connection cannot cancel n1
    o.send(json!({"type":"lock-received-rejected","uuid":"n1","key":"k"}));
    o.expect_silence(Duration::from_millis(50));
    assert_eq!(info(&mut o, "k")["lockholderUUIDs"], json!(["n1"]));
    // no `_uuid`: `uuid` names the grant to give back
    n.send(json!({"type":"lock-received-rejected","uuid":"n1","key":"k","max":null,"pid":1,"keepLocksAfterDeath":false}));
    n.expect_silence(Duration::from_millis(50));
    assert!(
        try_lock(&mut o, "k", "o1"),
        "the rejected grant was not released"
    );
    // repeated (it also follows a lock-client-timeout): no reply, nothing changes
    n.send(json!({"type":"lock-received-rejected","uuid":"n1","key":"k"}));
    n.send(json!({"type":"lock-client-timeout","uuid":"n1","key":"k"}));
    n.expect_silence(Duration::from_millis(50));
    assert_eq!(info(&mut o, "k")["lockholderUUIDs"], json!(["o1"]));
}

#[test]
fn opt_in_ack_timeout_releases_unacknowledged_pushes() {
    let b = TestBroker::with(|b| b.ack_timeout(Duration::from_millis(300)));
    let (mut a, mut n, mut c, mut p) = (
        b.connect(TCP),
        b.connect(TCP),
        b.connect(TCP),
        b.connect(TCP),
    );
    version(&mut n, false);
    assert_eq!(a.lock("k", "a1")["acquired"], true);
    assert_eq!(node_lock(&mut n, "k", "n1", 0, json!(7050))["queued"], true);
    assert_eq!(c.lock("k", "c1")["queued"], true);
    // n1 is pushed the grant and never acks (its client gave up a `wait:false` locally)
    a.unlock("k", "a1");
    assert_eq!(n.recv()["uuid"], "n1");
    let t0 = Instant::now();
    let g = c.recv();
    let waited = t0.elapsed();
    assert_eq!(
        (g["uuid"].clone(), g["acquired"].clone()),
        (json!("c1"), json!(true))
    );
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "the unacknowledged grant was revoked after {waited:?}, deadline 300 ms"
    );
    // n1 was probed (200 ms) before its deadline; the probe went unanswered
    assert_eq!(n.recv()["uuid"], "lmx-ack-probe:n1");
    // an acknowledged push is kept
    assert_eq!(node_lock(&mut n, "k", "n2", 0, json!(7050))["queued"], true);
    c.unlock("k", "c1");
    assert_eq!(n.recv()["uuid"], "n2");
    n.send(json!({"type":"lock-received","uuid":"n2","key":"k"}));
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(info(&mut c, "k")["lockholderUUIDs"], json!(["n2"]));
    // an immediate grant needs no ack
    assert_eq!(
        node_lock(&mut n, "j", "n3", 0, json!(7050))["acquired"],
        true
    );
    // nor does a push to a connection that never sent `version`
    assert_eq!(p.lock("k", "p1")["queued"], true);
    n.unlock("k", "n2");
    assert_eq!(p.recv()["uuid"], "p1");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(info(&mut c, "j")["lockholderUUIDs"], json!(["n3"]));
    assert_eq!(info(&mut c, "k")["lockholderUUIDs"], json!(["p1"]));
}

#[test]
fn node_fields_are_accepted_on_every_message() {
    let b = TestBroker::start();
    let mut w = b.connect(TCP);
    let extra = |mut v: Value| {
        for (k, x) in [
            ("max", Value::Null),
            ("pid", json!(4242)),
            ("rwStatus", Value::Null),
            ("keepLocksAfterDeath", json!(false)),
        ] {
            v[k] = x;
        }
        v
    };
    version(&mut w, false);
    w.send(extra(
        json!({"type":"lock","uuid":"l1","key":"k","ttl":7050,"retryCount":0}),
    ));
    assert_eq!(w.recv()["acquired"], true);
    w.send(extra(json!({"type":"lock-received","uuid":"l1","key":"k"})));
    w.send(extra(json!({"type":"ls","uuid":"ls1"})));
    let r = w.recv();
    assert_eq!(r["ls_result"], json!(["k"]));
    w.send(extra(
        json!({"type":"unlock","uuid":"u1","_uuid":"l1","key":"k","force":false}),
    ));
    let r = w.recv();
    assert_eq!(r["unlocked"], true);
    assert!(r.get("error").is_none(), "{r}");
}

#[test]
fn version_keep_locks_after_death_is_the_connections_default() {
    let b = TestBroker::start();
    let (mut keep, mut plain, mut o) = (b.connect(TCP), b.connect(TCP), b.connect(TCP));
    version(&mut keep, true);
    version(&mut plain, false);
    // the Node client's `lock` always says `keepLocksAfterDeath:false` (the per-lock option)
    assert_eq!(
        node_lock(&mut keep, "kept", "k1", 0, json!(60000))["acquired"],
        true
    );
    assert_eq!(
        node_lock(&mut plain, "gone", "p1", 0, json!(60000))["acquired"],
        true
    );
    drop(keep);
    drop(plain);
    wait_free(&mut o, "gone", Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !try_lock(&mut o, "kept", "o1"),
        "the kept lock was released on disconnect"
    );
    assert_eq!(info(&mut o, "kept")["lockholderUUIDs"], json!(["k1"]));
    // any connection may release it by its id
    let r = o.unlock("kept", "k1");
    assert_eq!(r["unlocked"], true);
}

#[test]
fn unlock_of_an_unknown_key_or_a_lost_lock_is_an_error_with_lost() {
    let b = TestBroker::with(|b| b.default_ttl(Some(Duration::from_millis(100))));
    let mut w = b.connect(TCP);
    let r = w.unlock("never-locked", "x1");
    assert_eq!(r["unlocked"], false);
    assert_eq!(r["lost"], true);
    assert!(r["error"].is_string());
    // a late unlock after the TTL never touches the new holder
    w.send(json!({"type":"lock","uuid":"a1","key":"k"}));
    assert_eq!(w.recv()["acquired"], true);
    std::thread::sleep(Duration::from_millis(250));
    assert!(try_lock(&mut w, "k", "b1"));
    let r = w.unlock("k", "a1");
    assert_eq!(
        (r["unlocked"].clone(), r["lost"].clone()),
        (json!(false), json!(true))
    );
    assert!(r["error"].is_string());
    assert_eq!(info(&mut w, "k")["lockholderUUIDs"], json!(["b1"]));
}

#[test]
fn legacy_rw_parks_the_mutex_while_a_writer_waits() {
    let b = TestBroker::start();
    let (mut r, mut wr) = (b.connect(TCP), b.connect(TCP));
    version(&mut r, false);
    version(&mut wr, false);
    let step = |w: &mut Wire, ty: &str, uuid: &str| {
        w.send(json!({"type":ty,"uuid":uuid,"key":"rw","max":null,"pid":1,"keepLocksAfterDeath":false}));
    };
    let mutex = |w: &mut Wire, uuid: &str| {
        w.send(json!({"type":"lock","uuid":uuid,"key":"rw","ttl":7050,"max":1,"retryCount":0}));
        let g = w.recv();
        assert_eq!(g["acquired"], true, "{g}");
        w.send(json!({"type":"lock-received","uuid":uuid,"key":"rw"}));
    };
    // reader enters: mutex, register-write-flag-check, unlock
    mutex(&mut r, "rm1");
    step(&mut r, "register-write-flag-check", "r1");
    assert_eq!(r.recv()["type"], "register-write-flag-success");
    assert_eq!(r.unlock("rw", "rm1")["unlocked"], true);
    // writer: mutex, then its check must wait for the reader, which is deferred
    mutex(&mut wr, "wm1");
    step(&mut wr, "register-write-flag-and-readers-check", "w1");
    wr.expect_silence(Duration::from_millis(50));
    // the writer's mutex hold is parked: the reader can take the mutex to leave
    mutex(&mut r, "rm2");
    step(&mut r, "decrement-readers", "r2");
    assert_eq!(r.recv()["type"], "decrement-readers-success");
    let woke = wr.recv();
    assert_eq!(
        (woke["type"].clone(), woke["uuid"].clone()),
        (json!("broadcast-result"), json!("w1"))
    );
    assert_eq!(r.unlock("rw", "rm2")["unlocked"], true);
    // the writer's unlock of its parked hold succeeds quietly
    let u = wr.unlock("rw", "wm1");
    assert_eq!(u["unlocked"], true);
    assert!(u.get("error").is_none(), "{u}");
}

#[test]
fn inspect_accepts_the_0_2_25_spellings() {
    let b = TestBroker::start();
    let (mut w, _other) = (b.connect(TCP), b.connect(TCP));
    assert_eq!(w.lock("a", "a1")["acquired"], true);
    assert_eq!(w.lock("b", "b1")["acquired"], true);
    for (cmd, want) in [
        ("lockcount", 2),
        ("lock-count", 2),
        ("lock_count", 2),
        ("clientcount", 2),
        ("client-count", 2),
        ("client_count", 2),
    ] {
        w.send(json!({ "inspectCommand": cmd }));
        let r = w.recv();
        assert_eq!(r["type"], "inspect");
        assert_eq!(r["inspectResult"], want, "{cmd}: {r}");
    }
}

/// A Node connection (sent `version`) with a pushed grant that it has not acknowledged; `c` waits
/// behind it. Returns (holder that unlocked, node conn, waiter, observer).
fn pushed_unacknowledged(b: &TestBroker, ttl: Value) -> (Wire, Wire, Wire, Wire) {
    let (mut a, mut n, mut c, o) = (
        b.connect(TCP),
        b.connect(TCP),
        b.connect(TCP),
        b.connect(TCP),
    );
    version(&mut n, false);
    assert_eq!(a.lock("k", "a1")["acquired"], true);
    assert_eq!(node_lock(&mut n, "k", "n1", 0, ttl)["queued"], true);
    assert_eq!(c.lock("k", "c1")["queued"], true);
    a.unlock("k", "a1");
    let g = n.recv();
    assert_eq!(
        (g["uuid"].clone(), g["acquired"].clone()),
        (json!("n1"), json!(true))
    );
    (a, n, c, o)
}

/// By default an unacknowledged push is never handed on while the client may still read it:
/// it lives until its TTL. The client is probed once, at 200 ms.
#[test]
fn an_unacknowledged_push_lives_until_its_ttl() {
    let b = TestBroker::start();
    let (_a, mut n, mut c, mut o) = pushed_unacknowledged(&b, json!(2500));
    let t0 = Instant::now();
    let p = n.recv();
    assert_eq!(
        (p["uuid"].clone(), p["key"].clone(), p["acquired"].clone()),
        (json!("lmx-ack-probe:n1"), json!("k"), json!(true))
    );
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "probe after {:?}",
        t0.elapsed()
    );
    // a client stalled for 1.5 s still holds the key (the old default released it after 1 s)
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(info(&mut o, "k")["lockholderUUIDs"], json!(["n1"]));
    c.expect_silence(Duration::from_millis(10));
    // the TTL (2.5 s from the push) ends it
    let g = c.recv();
    assert_eq!(
        (g["uuid"].clone(), g["acquired"].clone()),
        (json!("c1"), json!(true))
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(2300),
        "released after {:?}",
        t0.elapsed()
    );
    n.expect_silence(Duration::from_millis(50));
}

/// The 0.2.25 client answers a grant for a request it never made with
/// `lock-received-rejected`, and it reads its socket in order: an answered probe of a grant
/// still unacknowledged means the client dropped the grant (a try-lock it gave up on).
#[test]
fn a_probe_answered_before_the_ack_releases_the_ghost() {
    let b = TestBroker::start();
    let (_a, mut n, mut c, mut o) = pushed_unacknowledged(&b, json!(7050));
    assert_eq!(n.recv()["uuid"], "lmx-ack-probe:n1");
    // another connection cannot answer n's probe
    o.send(json!({"type":"lock-received-rejected","uuid":"lmx-ack-probe:n1","key":"k"}));
    o.expect_silence(Duration::from_millis(100));
    assert_eq!(info(&mut o, "k")["lockholderUUIDs"], json!(["n1"]));
    let t0 = Instant::now();
    n.send(json!({"uuid":"lmx-ack-probe:n1","key":"k","type":"lock-received-rejected","max":null,"pid":1,"keepLocksAfterDeath":false}));
    let g = c.recv();
    assert_eq!(
        (g["uuid"].clone(), g["acquired"].clone()),
        (json!("c1"), json!(true))
    );
    assert!(t0.elapsed() < Duration::from_secs(1));
    n.expect_silence(Duration::from_millis(50));
}

/// A client that was stalled reads the grant and the probe together: it acknowledges the grant
/// first, then rejects the probe. It keeps the key.
#[test]
fn a_late_ack_before_the_probe_answer_keeps_the_grant() {
    let b = TestBroker::start();
    let (_a, mut n, mut c, mut o) = pushed_unacknowledged(&b, json!(7050));
    assert_eq!(n.recv()["uuid"], "lmx-ack-probe:n1");
    std::thread::sleep(Duration::from_millis(300));
    n.send(json!({"uuid":"n1","key":"k","type":"lock-received"}));
    n.send(json!({"uuid":"lmx-ack-probe:n1","key":"k","type":"lock-received-rejected"}));
    n.expect_silence(Duration::from_millis(100));
    c.expect_silence(Duration::from_millis(10));
    assert_eq!(info(&mut o, "k")["lockholderUUIDs"], json!(["n1"]));
    // and its unlock works
    n.unlock("k", "n1");
    assert_eq!(c.recv()["uuid"], "c1");
}
