//! `watch` and identity in the core, with simulated time: snapshots at exact instants, who
//! holds and waits with `heldSince`/`waitingSince` from the injected wall clock, the cap on
//! watchers, and nothing left behind when a watcher goes.

use std::time::Duration;

use serde_json::json;

use super::util::{Pair, config};
use super::{MS, lock};

/// The fixed wall clock of `util::config`, in Unix ms.
const WALL: u64 = 1_700_000_000_000;

#[test]
fn snapshots_come_at_once_then_every_interval_and_say_who_and_since_when() {
    let mut p = Pair::new(config());
    let w = p.connect();
    let a = p.connect();
    let b = p.connect();
    p.core.set_peer(p.clients[1].conn, "127.0.0.1:5000".into());
    p.send(a, json!({"type":"hello","name":"alpha[7]","pid":7}));
    p.send(
        b,
        json!({"type":"version","value":"0.2.25","max":null,"pid":99,"keepLocksAfterDeath":false}),
    );
    p.send(w, json!({"type":"watch","uuid":"w","intervalMs":500}));
    let s = p.recv(w);
    assert_eq!(
        (s["type"].clone(), s["keys"].clone()),
        (json!("watch"), json!([]))
    );
    assert_eq!(s["stats"]["connections"], 3);
    assert_eq!(lock(&mut p, a, "k", "a1")["acquired"], true);
    p.advance(200 * MS);
    p.send(b, json!({"type":"lock","uuid":"b1","key":"k","ttl":null}));
    assert_eq!(p.recv(b)["queued"], true);
    p.advance(299 * MS);
    p.expect_silence(w);
    p.advance(MS);
    let s = p.recv(w);
    let k = &s["keys"][0];
    assert_eq!(k["key"], "k");
    let h = &k["holders"][0];
    assert_eq!(
        (&h["id"], &h["name"], &h["pid"], &h["peer"]),
        (
            &json!("a1"),
            &json!("alpha[7]"),
            &json!(7),
            &json!("127.0.0.1:5000")
        )
    );
    // The wall clock is fixed: a lock taken 500 ms ago was taken at WALL - 500.
    assert_eq!(h["heldSince"], WALL - 500);
    let q = &k["waiters"][0];
    assert_eq!((&q["id"], &q["pid"]), (&json!("b1"), &json!(99)));
    assert_eq!(q["waitingSince"], WALL - 300);
    assert_eq!(s["stats"]["grants"], 1);
    // lock-info says the same.
    p.send(a, json!({"type":"lock-info-request","uuid":"i","key":"k"}));
    let i = p.recv(a);
    assert_eq!(i["holders"][0]["heldSince"], WALL - 500);
    assert_eq!(i["holders"][0]["name"], "alpha[7]");
    assert_eq!(i["waiters"][0]["waitingSince"], WALL - 300);
    // The watcher goes: no more timers for it.
    p.disconnect(w);
    p.advance(Duration::from_secs(5));
    assert_eq!(p.core.poll_timeout(), None);
}

#[test]
fn a_lock_kept_after_its_connection_closed_still_says_who_took_it() {
    let mut p = Pair::new(config());
    let a = p.connect();
    let c = p.connect();
    p.core.set_peer(p.clients[0].conn, "pid 5 uid 0".into());
    p.send(a, json!({"type":"hello","name":"deploy[5]"}));
    p.send(
        a,
        json!({"type":"lock","uuid":"k1","key":"k","ttl":null,"keepLocksAfterDeath":true}),
    );
    assert_eq!(p.recv(a)["acquired"], true);
    p.disconnect(a);
    p.send(c, json!({"type":"lock-info-request","uuid":"i","key":"k"}));
    let h = &p.recv(c)["holders"][0];
    assert_eq!(h["name"], "deploy[5]");
    assert_eq!(h["peer"], "pid 5 uid 0 (disconnected)");
}

#[test]
fn watchers_are_capped() {
    let mut p = Pair::new(config());
    let clients: Vec<_> = (0..65).map(|_| p.connect()).collect();
    for (i, &c) in clients.iter().enumerate() {
        p.send(c, json!({"type":"watch","uuid":format!("w{i}")}));
        let r = p.recv(c);
        if i < 64 {
            assert_eq!(r["type"], "watch", "{r}");
        } else {
            assert_eq!(r["error"], "too many watchers", "{r}");
        }
    }
}
