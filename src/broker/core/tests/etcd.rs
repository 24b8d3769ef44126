//! The core's etcd path against a scripted store: what reaches the store, and how its events
//! become replies (no etcd needed; tests/etcd_broker.rs runs the real one).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde_json::json;

use super::super::store::AsyncStore;
use super::util::{Pair, config};
use crate::store::etcd::{ConnId, StoreError, StoreEvent, StoreOp};

/// Records ops; hands out the events the test queues.
#[derive(Clone, Default)]
struct Script {
    ops: Arc<Mutex<Vec<StoreOp>>>,
    events: Arc<Mutex<VecDeque<StoreEvent>>>,
}

impl AsyncStore for Script {
    fn submit(&self, op: StoreOp) -> Result<(), StoreError> {
        self.ops.lock().unwrap().push(op);
        Ok(())
    }
    fn poll_event(&self) -> Option<StoreEvent> {
        self.events.lock().unwrap().pop_front()
    }
}

fn setup() -> (Pair, Script) {
    let mut p = Pair::new(config());
    let s = Script::default();
    p.core.use_store(Box::new(s.clone()));
    (p, s)
}

fn emit(p: &mut Pair, s: &Script, ev: StoreEvent) {
    s.events.lock().unwrap().push_back(ev);
    p.core.poll_store();
    p.drive();
}

fn take_ops(s: &Script) -> Vec<StoreOp> {
    std::mem::take(&mut *s.ops.lock().unwrap())
}

#[test]
fn a_grant_is_sent_only_when_the_store_records_it() {
    let (mut p, s) = setup();
    let c = p.connect();
    let conn = ConnId(p.clients[0].conn.0);
    p.send(c, json!({"type":"lock","uuid":"a","key":"k"}));
    p.expect_silence(c);
    let ops = take_ops(&s);
    assert!(matches!(&ops[..], [StoreOp::Lock(l)] if l.key == "k" && l.id == "a"));
    // A retry of the same request is answered here, not sent again.
    p.send(
        c,
        json!({"type":"lock","uuid":"a","key":"k","retryCount":1}),
    );
    assert_eq!(p.recv(c)["acquired"], false);
    assert!(take_ops(&s).is_empty());
    emit(
        &mut p,
        &s,
        StoreEvent::Granted {
            conn,
            id: "a".into(),
            key: "k".into(),
            token: 77,
        },
    );
    let v = p.recv(c);
    assert_eq!(
        (v["uuid"].as_str(), v["acquired"].as_bool()),
        (Some("a"), Some(true))
    );
    assert_eq!(v["fencingToken"], 77);
    p.send(c, json!({"type":"unlock","uuid":"u","key":"k","_uuid":"a"}));
    assert!(matches!(&take_ops(&s)[..], [StoreOp::Unlock { id: Some(i), .. }] if i == "a"));
    emit(
        &mut p,
        &s,
        StoreEvent::Unlocked {
            conn,
            key: "k".into(),
            id: Some("a".into()),
            released: 1,
        },
    );
    let v = p.recv(c);
    assert_eq!(
        (v["uuid"].as_str(), v["unlocked"].as_bool()),
        (Some("u"), Some(true))
    );
}

#[test]
fn a_lost_lock_is_told_and_its_connection_closed() {
    let (mut p, s) = setup();
    let c = p.connect();
    let conn = ConnId(p.clients[0].conn.0);
    p.send(c, json!({"type":"lock","uuid":"a","key":"k"}));
    emit(
        &mut p,
        &s,
        StoreEvent::Granted {
            conn,
            id: "a".into(),
            key: "k".into(),
            token: 5,
        },
    );
    assert_eq!(p.recv(c)["acquired"], true);
    emit(
        &mut p,
        &s,
        StoreEvent::Lost {
            conn,
            id: "a".into(),
            key: "k".into(),
            reason: "lease".into(),
        },
    );
    let v = p.recv(c);
    assert_eq!(
        (v["type"].as_str(), v["uuid"].as_str()),
        (Some("lock"), Some("a"))
    );
    assert!(v["error"].as_str().unwrap().contains("lock lost"), "{v}");
    assert!(p.closed(c));
    assert!(matches!(&take_ops(&s)[..], [_, StoreOp::Disconnect { .. }]));
}

#[test]
fn a_grant_the_client_gave_up_on_is_given_back_unseen() {
    let (mut p, s) = setup();
    let c = p.connect();
    let conn = ConnId(p.clients[0].conn.0);
    p.send(c, json!({"type":"lock","uuid":"a","key":"k"}));
    emit(
        &mut p,
        &s,
        StoreEvent::Queued {
            conn,
            id: "a".into(),
            key: "k".into(),
            ahead: 1,
        },
    );
    assert_eq!(p.recv(c)["acquired"], false);
    p.send(
        c,
        json!({"type":"lock-client-timeout","uuid":"a","key":"k"}),
    );
    take_ops(&s);
    emit(
        &mut p,
        &s,
        StoreEvent::Granted {
            conn,
            id: "a".into(),
            key: "k".into(),
            token: 9,
        },
    );
    p.expect_silence(c);
    assert!(matches!(&take_ops(&s)[..], [StoreOp::Unlock { id: Some(i), .. }] if i == "a"));
}

#[test]
fn unserved_requests_get_errors() {
    let (mut p, s) = setup();
    let c = p.connect();
    p.send(
        c,
        json!({"type":"acquire-many","uuid":"m","keys":["a","b"]}),
    );
    assert!(
        p.recv(c)["error"]
            .as_str()
            .unwrap()
            .contains("not supported")
    );
    p.send(
        c,
        json!({"type":"extend","uuid":"e","key":"k","_uuid":"a","ttl":1000}),
    );
    assert_eq!(p.recv(c)["extended"], false);
    assert!(take_ops(&s).is_empty());
}
