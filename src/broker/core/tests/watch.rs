//! `watch` and identity in the core, with simulated time: snapshots at exact instants, who
//! holds and waits with `heldSince`/`waitingSince` from the injected wall clock, the cap on
//! watchers, and nothing left behind when a watcher goes.

use std::time::Duration;

use serde_json::json;

use super::util::{Pair, config};
use super::{MS, granted};
use crate::proto::session::BrokerKind;

/// The fixed wall clock of `util::config`, in Unix ms.
const WALL: u64 = 1_700_000_000_000;

#[test]
fn snapshots_come_at_once_then_every_interval_and_say_who_and_since_when() {
    let mut p = Pair::new(config());
    let w = p.connect();
    let a = p.session(BrokerKind::Rust);
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
    let a1 = p.lock(a, "k");
    granted(&mut p, a, a1);
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
            &json!(a1.to_string()),
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
    let i = p.info(a, "k");
    assert_eq!(i.holders[0].held_since_ms, Some(WALL - 500));
    assert_eq!(i.holders[0].who.name.as_deref(), Some("alpha[7]"));
    assert_eq!(i.queue[0].waiting_since_ms, Some(WALL - 300));
    // The watcher goes: no more timers for it.
    p.disconnect(w);
    p.advance(Duration::from_secs(5));
    assert_eq!(p.core.poll_timeout(), None);
}

#[test]
fn a_lock_kept_after_its_connection_closed_still_says_who_took_it() {
    let mut p = Pair::new(config());
    let a = p.session(BrokerKind::Rust);
    let c = p.session(BrokerKind::Rust);
    p.core.set_peer(p.clients[0].conn, "pid 5 uid 0".into());
    p.send(a, json!({"type":"hello","name":"deploy[5]"}));
    let k1 = p.lock_with(a, "k", |r| r.keep_locks_after_death = true);
    granted(&mut p, a, k1);
    p.disconnect(a);
    let h = p.info(c, "k").holders.remove(0);
    assert_eq!(h.who.name.as_deref(), Some("deploy[5]"));
    assert_eq!(h.who.peer.as_deref(), Some("pid 5 uid 0 (disconnected)"));
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
