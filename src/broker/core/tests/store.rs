//! The core against a scripted asynchronous store (as etcd is): what reaches the store, and
//! how its later events become replies. No etcd needed; tests/etcd_broker.rs runs the real one.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::util::{Client, Pair, config};
use crate::store::{KeyPage, Op, Store, StoreError, StoreEvent, StoreOp};
use crate::table::{ConnId, Grant, Name, TableError};

/// Records ops (as their debug text); hands out the events the test queues.
#[derive(Clone, Default)]
struct Script {
    ops: Arc<Mutex<Vec<String>>>,
    events: Arc<Mutex<VecDeque<StoreEvent>>>,
}

impl Store for Script {
    fn submit(&mut self, _now: Instant, op: StoreOp<'_>) {
        self.ops.lock().unwrap().push(format!("{op:?}"));
    }
    fn poll_event(&mut self) -> Option<StoreEvent> {
        self.events.lock().unwrap().pop_front()
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        None
    }
    fn handle_timeout(&mut self, _now: Instant) {}
    fn answers_later(&self) -> bool {
        true
    }
    /// Like etcd, a store other brokers share.
    fn shared(&self) -> bool {
        true
    }
    fn is_idle(&self) -> bool {
        true
    }
}

fn setup() -> (Pair, Script, Client, ConnId) {
    let mut p = Pair::new(config());
    let s = Script::default();
    p.core.use_store(Box::new(s.clone()));
    let c = p.connect();
    let conn = p.clients[0].conn;
    (p, s, c, conn)
}

fn emit(p: &mut Pair, s: &Script, ev: StoreEvent) {
    s.events.lock().unwrap().push_back(ev);
    let now = p.time;
    p.core.poll_store(now);
    p.drive();
}

fn take_ops(s: &Script) -> Vec<String> {
    std::mem::take(&mut *s.ops.lock().unwrap())
}

fn granted(conn: ConnId, id: &str, token: u64) -> StoreEvent {
    StoreEvent::Granted {
        conn,
        id: id.into(),
        key: "k".into(),
        grant: Grant {
            token,
            queue_len: 0,
            readers: 0,
        },
    }
}

fn queued(conn: ConnId, id: &str) -> StoreEvent {
    StoreEvent::Queued {
        conn,
        id: id.into(),
        key: "k".into(),
        queue_len: 1,
        readers: 0,
    }
}

/// The tag of the one op recorded, read from its debug text.
fn tag_of(op: &str) -> u64 {
    let rest = &op[op.find("tag: ").expect("a tagged op") + 5..];
    rest[..rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len())]
        .parse()
        .unwrap()
}

#[test]
fn a_grant_is_sent_only_when_the_store_records_it() {
    let (mut p, s, c, conn) = setup();
    p.send(c, json!({"type":"lock","uuid":"a","key":"k"}));
    p.expect_silence(c);
    let ops = take_ops(&s);
    assert!(ops.len() == 1 && ops[0].starts_with("Lock(") && ops[0].contains("\"a\""));
    emit(&mut p, &s, queued(conn, "a"));
    assert_eq!(p.recv(c)["acquired"], false);
    // A retry of a waiting request is asked again: the store reports its place.
    p.send(
        c,
        json!({"type":"lock","uuid":"a","key":"k","retryCount":1}),
    );
    assert_eq!(take_ops(&s).len(), 1);
    emit(&mut p, &s, granted(conn, "a", 77));
    let v = p.recv(c);
    assert_eq!((&v["uuid"], &v["acquired"]), (&json!("a"), &json!(true)));
    assert_eq!(v["fencingToken"], 77);
    // A retry of a granted request is answered here, never granted twice.
    p.send(
        c,
        json!({"type":"lock","uuid":"a","key":"k","retryCount":2}),
    );
    assert_eq!(p.recv(c)["acquired"], false);
    assert!(take_ops(&s).is_empty());
    p.send(c, json!({"type":"unlock","uuid":"u","key":"k","_uuid":"a"}));
    p.expect_silence(c);
    let ops = take_ops(&s);
    assert!(ops[0].starts_with("Unlock") && ops[0].contains("Some(\"a\")"));
    let unlocked = StoreEvent::Unlocked {
        tag: tag_of(&ops[0]),
        key: "k".into(),
        id: Some("a".into()),
        queue_len: 0,
    };
    emit(&mut p, &s, unlocked);
    let v = p.recv(c);
    assert_eq!((&v["uuid"], &v["unlocked"]), (&json!("u"), &json!(true)));
}

#[test]
fn a_lost_lock_is_told_and_its_connection_closed() {
    let (mut p, s, c, conn) = setup();
    p.send(c, json!({"type":"lock","uuid":"a","key":"k"}));
    emit(&mut p, &s, granted(conn, "a", 5));
    assert_eq!(p.recv(c)["acquired"], true);
    let lost = StoreEvent::Lost {
        conn,
        id: "a".into(),
        key: "k".into(),
        reason: "lease".into(),
    };
    emit(&mut p, &s, lost);
    let v = p.recv(c);
    assert_eq!((&v["type"], &v["uuid"]), (&json!("lock"), &json!("a")));
    assert!(v["error"].as_str().unwrap().contains("lock lost"), "{v}");
    assert!(p.closed(c));
    assert!(take_ops(&s).last().unwrap().starts_with("Disconnect"));
}

#[test]
fn a_grant_the_client_gave_up_on_is_given_back_unseen() {
    let (mut p, s, c, conn) = setup();
    p.send(c, json!({"type":"lock","uuid":"a","key":"k"}));
    emit(&mut p, &s, queued(conn, "a"));
    assert_eq!(p.recv(c)["acquired"], false);
    p.send(
        c,
        json!({"type":"lock-client-timeout","uuid":"a","key":"k"}),
    );
    assert!(take_ops(&s)[1].starts_with("Cancel"));
    // The store granted it before it saw the cancel: given back again, the client told nothing.
    emit(&mut p, &s, granted(conn, "a", 9));
    p.expect_silence(c);
    let ops = take_ops(&s);
    assert!(ops.len() == 1 && ops[0].starts_with("Cancel") && ops[0].contains("\"a\""));
}

#[test]
fn a_grant_for_a_closed_connection_is_given_back() {
    let (mut p, s, c, conn) = setup();
    p.send(c, json!({"type":"lock","uuid":"a","key":"k"}));
    p.disconnect(c);
    take_ops(&s);
    emit(&mut p, &s, granted(conn, "a", 3));
    let ops = take_ops(&s);
    assert!(ops.len() == 1 && ops[0].starts_with("Cancel"), "{ops:?}");
}

#[test]
fn a_grant_pushed_to_a_node_client_is_probed_if_unacknowledged() {
    let (mut p, s, c, conn) = setup();
    p.send(c, json!({"type":"version","value":"0.2.25"}));
    p.send(c, json!({"type":"lock","uuid":"a","key":"k"}));
    emit(&mut p, &s, queued(conn, "a"));
    assert_eq!(p.recv(c)["acquired"], false);
    emit(&mut p, &s, granted(conn, "a", 4));
    assert_eq!(p.recv(c)["acquired"], true);
    p.advance(Duration::from_millis(200));
    let probe = p.recv(c);
    assert_eq!(probe["uuid"], "lmx-ack-probe:a");
    // Answered while unacknowledged: the client dropped it, so it goes back to the store.
    p.send(
        c,
        json!({"type":"lock-received-rejected","uuid":"lmx-ack-probe:a","key":"k"}),
    );
    assert!(take_ops(&s).last().unwrap().starts_with("Cancel"));
}

#[test]
fn store_errors_become_replies_to_the_op_that_failed() {
    let (mut p, s, c, conn) = setup();
    p.send(
        c,
        json!({"type":"extend","uuid":"e","key":"k","_uuid":"a","ttl":1000}),
    );
    let tag = tag_of(&take_ops(&s)[0]);
    let failed = StoreEvent::Failed {
        conn,
        op: Op::Extend,
        tag,
        id: Some(Name::from("a")),
        key: Some(Name::from("k")),
        error: StoreError::Rule(TableError::NotHeld),
    };
    emit(&mut p, &s, failed);
    let v = p.recv(c);
    assert_eq!((&v["uuid"], &v["extended"]), (&json!("e"), &json!(false)));
    // The 0.2.x read/write emulation needs a store no other broker shares.
    p.send(c, json!({"type":"increment-readers","uuid":"r","key":"k"}));
    let v = p.recv(c);
    assert!(
        v["error"].as_str().unwrap().contains("not supported"),
        "{v}"
    );
}

#[test]
fn a_connection_cannot_pile_up_requests_in_a_store_that_answers_later() {
    let mut cfg = config();
    cfg.table.max_requests_per_conn = 2;
    let mut p = Pair::new(cfg);
    let s = Script::default();
    p.core.use_store(Box::new(s.clone()));
    let (c, other) = (p.connect(), p.connect());
    let conn = p.clients[0].conn;
    p.send(c, json!({"type":"lock","uuid":"a","key":"k"}));
    p.send(
        c,
        json!({"type":"acquire-many","uuid":"g","keys":["x","y"]}),
    );
    p.send(c, json!({"type":"lock","uuid":"b","key":"k"}));
    let v = p.recv(c);
    assert_eq!(v["uuid"], "b");
    assert!(v["error"].as_str().unwrap().contains("(the limit)"), "{v}");
    assert_eq!(
        take_ops(&s).len(),
        2,
        "the third request never reached the store"
    );
    // Another connection has room of its own.
    p.send(other, json!({"type":"lock","uuid":"o","key":"k"}));
    assert_eq!(take_ops(&s).len(), 1);
    // Questions count while unanswered: two in flight, the third refused.
    p.send(c, json!({"type":"ls","uuid":"q1"}));
    p.send(c, json!({"type":"ls","uuid":"q2"}));
    p.send(c, json!({"type":"ls","uuid":"q3"}));
    let v = p.recv(c);
    assert_eq!((&v["uuid"], &v["type"]), (&json!("q3"), &json!("ls")));
    assert!(v["error"].is_string(), "{v}");
    let ops = take_ops(&s);
    let answer = |op: &String| StoreEvent::Keys {
        tag: tag_of(op),
        keys: Ok(KeyPage::default()),
    };
    emit(&mut p, &s, answer(&ops[0]));
    assert_eq!(p.recv(c)["uuid"], "q1");
    p.send(c, json!({"type":"ls","uuid":"q4"}));
    p.expect_silence(c);
    let q4 = take_ops(&s);
    assert_eq!(q4.len(), 1, "answered, so there is room again");
    emit(&mut p, &s, answer(&ops[1]));
    emit(&mut p, &s, answer(&q4[0]));
    assert_eq!(
        (p.recv(c)["uuid"].clone(), p.recv(c)["uuid"].clone()),
        (json!("q2"), json!("q4"))
    );
    // A lock that ends makes room too.
    emit(&mut p, &s, granted(conn, "a", 1));
    assert_eq!(p.recv(c)["acquired"], true);
    let expired = StoreEvent::Expired {
        conn,
        id: "a".into(),
        key: "k".into(),
    };
    emit(&mut p, &s, expired);
    p.send(c, json!({"type":"lock","uuid":"b","key":"k"}));
    p.expect_silence(c);
    assert!(take_ops(&s)[0].starts_with("Lock("));
}

/// A store's `ls` page is cut at the reply budget however many keys the store gave, and the
/// next page is asked of the store from the last cursor listed (issue 20, item 2).
#[test]
fn a_store_listing_every_key_is_paged_in_key_order() {
    let mut cfg = config();
    cfg.reply_budget = 4096;
    let mut p = Pair::new(cfg);
    let s = Script::default();
    p.core.use_store(Box::new(s.clone()));
    let c = p.connect();
    let all: Vec<Name> = (0..1000)
        .map(|i| Name::from(format!("key-{i:04}")))
        .collect();
    let (mut listed, mut after) = (Vec::new(), None::<String>);
    loop {
        let mut req = json!({"type":"ls","uuid":"q"});
        if let Some(a) = &after {
            req["after"] = json!(a);
        }
        p.send(c, req);
        let op = take_ops(&s).pop().expect("asked of the store");
        assert!(
            op.contains(&format!("after: {:?}", after.as_deref())),
            "{op}"
        );
        // Every key after the cursor, more than the budget holds.
        let keys = all
            .iter()
            .filter(|k| after.as_deref().is_none_or(|a| &***k > a));
        let keys = Ok(KeyPage {
            keys: keys.map(|k| (k.to_string(), k.clone())).collect(),
            more: false,
        });
        emit(
            &mut p,
            &s,
            StoreEvent::Keys {
                tag: tag_of(&op),
                keys,
            },
        );
        let v = p.recv(c);
        assert!(v.to_string().len() <= 4096 + 64, "a page within the budget");
        listed.extend(
            v["ls_result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.to_string()),
        );
        match v["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    let want: Vec<String> = (0..1000).map(|i| format!("\"key-{i:04}\"")).collect();
    assert_eq!(listed, want);
}

/// A store read through ops (etcd): `watch` snapshots are its `Snapshot` answers, one asked at
/// a time for every watcher due, and `/metrics` shows the totals of the latest answer, asking
/// again when they are a second old (issue 23, step 2).
#[test]
fn watchers_share_one_snapshot_of_a_store_and_metrics_show_its_latest_totals() {
    let (mut p, s, a, _) = setup();
    let b = p.connect();
    p.send(a, json!({"type":"watch","uuid":"wa"}));
    p.send(b, json!({"type":"watch","uuid":"wb"}));
    let ops = take_ops(&s);
    assert_eq!(ops.len(), 1, "one snapshot asked for both: {ops:?}");
    assert!(ops[0].starts_with("Snapshot"), "{ops:?}");
    p.expect_silence(a);
    let now = p.time;
    let m = p.core.metrics(now);
    assert_eq!(m.reading_age, Some(None), "nothing read yet");
    assert!(take_ops(&s).is_empty(), "a snapshot is already asked for");
    let mut snap = crate::store::Snapshot::default();
    snap.stats.keys = 1;
    snap.stats.holders = 1;
    let view = crate::store::KeyView {
        max: 1,
        holders: vec![crate::store::HolderView {
            id: "elsewhere".into(),
            conn: None,
            mode: crate::table::Mode::Exclusive,
            token: 9,
            ttl_remaining: None,
            since: None,
        }],
        waiters: Vec::new(),
        readers: 0,
    };
    snap.keys.push(("k".into(), view));
    let tag = tag_of(&ops[0]);
    emit(
        &mut p,
        &s,
        StoreEvent::Snapshot {
            tag,
            snapshot: Ok(snap),
        },
    );
    for (c, uuid) in [(a, "wa"), (b, "wb")] {
        let v = p.recv(c);
        assert_eq!(v["uuid"], uuid);
        assert_eq!(v["keys"][0]["key"], "k", "{v}");
        assert_eq!(v["keys"][0]["holders"][0]["fencingToken"], 9, "{v}");
        assert!(v["keys"][0]["holders"][0].get("heldSince").is_none(), "{v}");
    }
    let m = p.core.metrics(p.time);
    assert_eq!((m.table.keys, m.table.holders), (1, 1));
    assert_eq!(m.reading_age, Some(Some(Duration::ZERO)));
    assert!(take_ops(&s).is_empty(), "fresh totals are not read again");
}
