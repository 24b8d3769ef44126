//! Issue 20: the rules a hostile or careless client must not get around, in memory with
//! simulated time: a forced unlock that names a stale id, a stranger's unlock of a grant that
//! awaits its ack, lock ids under `restrict_admin`.

use std::time::Duration;

use serde_json::json;

use super::super::ConnKind;
use super::util::{Pair, config, uuid};
use super::{MS, granted, holders, lock, pushed_unacknowledged, unlock};
use crate::proto::Request;
use crate::proto::session::{Answer, Unlocked};

/// A forced unlock naming an id that holds nothing is refused, and the holder keeps the key;
/// force without an id still releases every holder (live-mutex after 0.2.25 does the same).
#[test]
fn a_forced_unlock_naming_a_stale_id_is_refused() {
    let mut p = Pair::new(config());
    let (a, b) = (p.connect(), p.connect());
    assert_eq!(lock(&mut p, a, "k", "a1")["acquired"], true);
    for stale in ["gone", "b-never"] {
        p.send(
            b,
            json!({"type":"unlock","uuid":"f","key":"k","_uuid":stale,"force":true}),
        );
        let r = p.recv(b);
        assert_eq!(
            (&r["unlocked"], &r["lost"]),
            (&json!(false), &json!(true)),
            "{r}"
        );
        assert!(r["error"].is_string(), "{r}");
    }
    // an id still queued holds nothing either
    assert_eq!(lock(&mut p, b, "k", "b1")["queued"], true);
    p.send(
        b,
        json!({"type":"unlock","uuid":"f","key":"k","_uuid":"b1","force":true}),
    );
    assert_eq!(p.recv(b)["unlocked"], false);
    assert_eq!(holders(&mut p, b, "k"), json!(["a1"]));
    // a key nobody holds: refused with an id, a no-op success without
    p.send(
        b,
        json!({"type":"unlock","uuid":"f","key":"free","_uuid":"x","force":true}),
    );
    assert_eq!(p.recv(b)["unlocked"], false);
    p.send(
        b,
        json!({"type":"unlock","uuid":"f","key":"free","force":true}),
    );
    assert_eq!(p.recv(b)["unlocked"], true);
    // force naming the holder, or no id at all, releases
    p.send(
        b,
        json!({"type":"unlock","uuid":"f","key":"k","_uuid":"a1","force":true}),
    );
    let (r, g) = (p.recv(b), p.recv(b));
    assert_eq!(
        (&r["unlocked"], &g["uuid"], &g["acquired"]),
        (&json!(true), &json!("b1"), &json!(true)),
        "{r} {g}"
    );
    p.send(
        a,
        json!({"type":"unlock","uuid":"f","key":"k","force":true}),
    );
    assert_eq!(p.recv(a)["unlocked"], true);
    assert_eq!(holders(&mut p, a, "k"), json!([]));
}

/// Only the grant's own ack, rejection or release settles its ack probe: a stranger's unlock
/// that names the grant's id and fails (on another key, forced or not) leaves the probe in
/// place, so the ghost is still found and released at 200 ms.
#[test]
fn a_strangers_failing_unlock_does_not_cancel_an_ack_probe() {
    let mut p = Pair::new(config());
    let (n, c, c1, o) = pushed_unacknowledged(&mut p, json!(7050));
    for force in [false, true] {
        let uuid = uuid();
        let req = Request::Unlock {
            uuid: &uuid,
            key: "other",
            lock_id: Some("n1"),
            force,
        };
        let id = p.request(o, &req);
        assert!(
            matches!(
                p.answer(o, id),
                Answer::Unlocked(Unlocked::NotHeld(_) | Unlocked::Lost)
            ),
            "force: {force}"
        );
    }
    p.advance(200 * MS);
    assert_eq!(p.recv(n)["uuid"], "lmx-ack-probe:n1");
    p.send(
        n,
        json!({"uuid":"lmx-ack-probe:n1","key":"k","type":"lock-received-rejected"}),
    );
    granted(&mut p, c, c1);
    // a successful unlock by id (from anyone) is the grant's release: no probe follows
    let mut p = Pair::new(config());
    let (n2, _, _, o2) = pushed_unacknowledged(&mut p, json!(7050));
    assert_eq!(p.unlock(o2, "k", "n1"), Answer::Unlocked(Unlocked::Yes));
    p.advance(Duration::from_secs(1));
    p.expect_silence(n2);
}

/// Under `restrict_admin` a lock id is a capability: `lock-info` and `watch` show it only to
/// the connection that made the request and to admins (the Unix socket, authenticated
/// connections); to others it is `null`, so they cannot unlock or extend someone else's lock
/// by reading its id. Without `restrict_admin` everyone sees every id, as before.
#[test]
fn restrict_admin_shows_lock_ids_only_to_their_owner_and_admins() {
    let mut cfg = config();
    cfg.restrict_admin = true;
    let mut p = Pair::new(cfg);
    let (a, b, unix) = (p.connect(), p.connect(), p.connect_kind(ConnKind::Unix));
    assert_eq!(lock(&mut p, a, "k", "a1")["acquired"], true);
    assert_eq!(lock(&mut p, b, "k", "b1")["queued"], true);
    let info = |p: &mut Pair, c| {
        p.send(c, json!({"type":"lock-info-request","uuid":"i","key":"k"}));
        let r = p.recv(c);
        (
            r["lockholderUUIDs"].clone(),
            r["holders"][0]["id"].clone(),
            r["waiters"][0]["id"].clone(),
        )
    };
    assert_eq!(info(&mut p, a), (json!(["a1"]), json!("a1"), json!(null)));
    assert_eq!(info(&mut p, b), (json!([null]), json!(null), json!("b1")));
    assert_eq!(
        info(&mut p, unix),
        (json!(["a1"]), json!("a1"), json!("b1"))
    );
    p.send(b, json!({"type":"watch","uuid":"w"}));
    let w = p.recv(b);
    let k = &w["keys"][0];
    assert_eq!(
        (&k["holders"][0]["id"], &k["waiters"][0]["id"]),
        (&json!(null), &json!("b1"))
    );
    // the id is the credential: whoever holds it may still unlock
    assert_eq!(unlock(&mut p, unix, "k", "a1")["unlocked"], true);
    // without restrict_admin, ids are shown to everyone
    let mut p = Pair::new(config());
    let (a, b) = (p.connect(), p.connect());
    assert_eq!(lock(&mut p, a, "k", "a1")["acquired"], true);
    assert_eq!(info(&mut p, b).1, json!("a1"));
}

/// Keys keep their identity: `"a\ud800b"` (a lone surrogate, as `JSON.stringify` writes a
/// JavaScript string with one) was decoded as `"a\u0000b"`, so two different keys were one
/// lock. It is now refused with an error reply, and the real `"a\u0000b"` is free.
#[test]
fn a_lone_surrogate_key_is_refused_not_merged_with_another() {
    let mut p = Pair::new(config());
    let (a, b) = (p.connect(), p.connect());
    p.send_raw(a, r#"{"type":"lock","uuid":"a1","key":"a\ud800b"}"#);
    let r = p.recv(a);
    assert_eq!(r["uuid"], "a1", "{r}");
    assert!(
        r["error"].as_str().is_some_and(|e| e.contains("surrogate")),
        "{r}"
    );
    p.send_raw(b, r#"{"type":"lock","uuid":"b1","key":"a\u0000b"}"#);
    assert_eq!(p.recv(b)["acquired"], true);
}
