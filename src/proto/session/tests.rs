//! The session in memory: bytes in, answers and bytes out, against both brokers' reply shapes.

use super::*;
use crate::proto::{AcquireMany, LockRequest, Mode, Ttl, decode};

fn lock_req(uuid: &str, key: &str, try_lock: bool) -> Vec<u8> {
    let mut b = Vec::new();
    Request::Lock(LockRequest {
        uuid,
        key,
        ttl: Ttl::BrokerDefault,
        max: None,
        try_lock,
        wait_timeout: None,
        mode: Mode::Exclusive,
        keep_locks_after_death: false,
        retry_count: 0,
    })
    .encode(&mut b);
    b
}

struct T {
    s: Session,
}

impl T {
    fn new(broker: BrokerKind) -> Self {
        let mut s = Session::new();
        s.set_broker(broker);
        T { s }
    }
    fn lock(&mut self, key: &str, try_lock: bool) -> (RequestId, String) {
        let id = RequestId::random();
        let uuid = id.to_string();
        let mut b = lock_req(&uuid, key, try_lock);
        let req = decode(&mut b).unwrap();
        assert_eq!(self.s.request(&req), Some(id));
        (id, uuid)
    }
    fn recv(&mut self, line: &str) {
        let mut b = line.as_bytes().to_vec();
        self.s.handle_line(&mut b);
    }
    /// What the session wants to send, one decoded `(type, uuid, key)` per line.
    fn sent(&mut self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        self.s.transmit(&mut out);
        out.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let mut l = l.to_vec();
                let r = decode(&mut l).unwrap();
                let key = match &r {
                    Request::Lock(l) => l.key,
                    Request::LockReceived { key, .. }
                    | Request::Cancel { key, .. }
                    | Request::Unlock { key, .. } => key,
                    _ => "",
                };
                let lock_id = match &r {
                    Request::Unlock { lock_id, .. } => lock_id.unwrap_or_default(),
                    _ => r.uuid().unwrap_or_default(),
                };
                (r.ty().to_string(), lock_id.to_string(), key.to_string())
            })
            .collect()
    }
    fn answer(&mut self) -> Option<(RequestId, Answer)> {
        match self.s.poll_event()? {
            Event::Answer { id, answer } => Some((id, answer)),
            e => panic!("{e:?}"),
        }
    }
}

fn ty(v: &[(String, String, String)]) -> Vec<&str> {
    v.iter().map(|(t, _, _)| t.as_str()).collect()
}

#[test]
fn queued_then_pushed_grant_against_this_broker() {
    let mut t = T::new(BrokerKind::Rust);
    let (id, u) = t.lock("k", false);
    assert_eq!(ty(&t.sent()), ["lock"]);
    t.recv(&format!(r#"{{"type":"lock","uuid":"{u}","key":"k","acquired":false,"lockRequestCount":1,"readersCount":0,"queued":true}}"#));
    assert_eq!(t.answer(), None, "still waiting");
    t.recv(&format!(r#"{{"type":"lock","uuid":"{u}","key":"k","acquired":true,"lockRequestCount":0,"readersCount":0,"fencingToken":12}}"#));
    assert_eq!(
        t.answer(),
        Some((
            id,
            Answer::Locked {
                fencing_token: Some(12)
            }
        ))
    );
    assert!(t.sent().is_empty(), "no ack to this broker");
    assert_eq!(t.s.pending(), 0);
}

#[test]
fn npm_grants_are_acked_and_late_ones_handed_back() {
    let mut t = T::new(BrokerKind::Node);
    let (id, u) = t.lock("k", false);
    t.sent();
    t.recv(&format!(r#"{{"readersCount":0,"key":"k","uuid":"{u}","lockRequestCount":0,"type":"lock","acquired":false}}"#));
    assert_eq!(t.answer(), None);
    t.recv(&format!(r#"{{"readersCount":0,"key":"k","uuid":"{u}","type":"lock","lockRequestCount":0,"acquired":true}}"#));
    assert_eq!(
        t.answer(),
        Some((
            id,
            Answer::Locked {
                fencing_token: None
            }
        ))
    );
    assert_eq!(t.sent(), [("lock-received".into(), u.clone(), "k".into())]);

    // A waiter that gave up: its cancel goes out, and a grant that still comes is acked and
    // handed back at once.
    let (_, u2) = t.lock("k", false);
    t.sent();
    t.s.give_up(RequestId::parse(&u2).unwrap());
    assert_eq!(
        t.sent(),
        [("lock-client-timeout".into(), u2.clone(), "k".into())]
    );
    t.recv(&format!(
        r#"{{"key":"k","uuid":"{u2}","type":"lock","acquired":true}}"#
    ));
    assert_eq!(t.answer(), None);
    assert_eq!(
        t.sent(),
        [
            ("lock-received".into(), u2.clone(), "k".into()),
            ("unlock".into(), u2, "k".into())
        ]
    );
}

#[test]
fn try_lock_is_emulated_against_npm() {
    let mut t = T::new(BrokerKind::Node);
    let (id, u) = t.lock("k", true);
    // The npm broker knows no `wait:false`: it queues, so the session withdraws the request.
    t.sent();
    t.recv(&format!(
        r#"{{"key":"k","uuid":"{u}","type":"lock","acquired":false}}"#
    ));
    assert_eq!(t.answer(), Some((id, Answer::NotGranted)));
    assert_eq!(t.sent(), [("lock-client-timeout".into(), u, "k".into())]);
}

#[test]
fn try_lock_refused_by_this_broker_sends_nothing_more() {
    let mut t = T::new(BrokerKind::Rust);
    let (id, u) = t.lock("k", true);
    t.sent();
    t.recv(&format!(r#"{{"type":"lock","uuid":"{u}","key":"k","acquired":false,"lockRequestCount":0,"readersCount":0,"queued":false}}"#));
    assert_eq!(t.answer(), Some((id, Answer::NotGranted)));
    assert!(t.sent().is_empty());
}

#[test]
fn reelection_sends_the_lock_again() {
    let mut t = T::new(BrokerKind::Node);
    let (id, u) = t.lock("re", false);
    let first = t.sent();
    t.recv(&format!(
        r#"{{"key":"re","uuid":"{u}","type":"lock","lockRequestCount":1,"reelection":true}}"#
    ));
    assert_eq!(t.answer(), None);
    assert_eq!(t.sent(), first);
    t.recv(&format!(
        r#"{{"key":"re","uuid":"{u}","type":"lock","acquired":true}}"#
    ));
    assert_eq!(
        t.answer(),
        Some((
            id,
            Answer::Locked {
                fencing_token: None
            }
        ))
    );
}

#[test]
fn wait_timeouts_errors_and_garbage() {
    let mut t = T::new(BrokerKind::Rust);
    let (id, u) = t.lock("k", false);
    t.recv(&format!(r#"{{"type":"lock","uuid":"{u}","key":"k","acquired":false,"timedOut":true,"error":"lock request timed out after 50 ms"}}"#));
    assert_eq!(t.answer(), Some((id, Answer::NotGranted)));

    let (id, u) = t.lock("k", false);
    t.recv(&format!(r#"{{"type":"lock","uuid":"{u}","key":"k","acquired":false,"error":"max must be at least 1"}}"#));
    assert_eq!(
        t.answer(),
        Some((id, Answer::Rejected("max must be at least 1".into())))
    );

    // Not JSON at all: skipped. JSON naming the request but not a lock reply: ends it.
    let (id, u) = t.lock("k", false);
    t.recv("not json");
    t.recv(&format!(
        r#"{{"type":"lock","uuid":"{u}","key":"k","acquired":"maybe"}}"#
    ));
    assert!(matches!(t.answer(), Some((i, Answer::Unexpected(_))) if i == id));
    // A reply for nobody changes nothing.
    assert_eq!(ty(&t.sent()), ["lock", "lock", "lock"]);
    t.recv(
        r#"{"type":"lock","uuid":"0123456789abcdef0123456789abcdef","key":"k","acquired":true}"#,
    );
    assert_eq!(t.answer(), None);
    assert!(t.sent().is_empty());
}

#[test]
fn other_requests_and_connection_loss() {
    let mut t = T::new(BrokerKind::Rust);
    let mk = |s: &mut Session, f: &dyn Fn(&str) -> Vec<u8>| {
        let id = RequestId::random();
        let mut b = f(&id.to_string());
        let r = decode(&mut b).unwrap();
        s.request(&r).unwrap()
    };
    let unlock = mk(&mut t.s, &|u| {
        format!(r#"{{"type":"unlock","uuid":"{u}","key":"k","_uuid":"x"}}"#).into_bytes()
    });
    let stats = mk(&mut t.s, &|u| {
        format!(r#"{{"type":"system-stats-request","uuid":"{u}"}}"#).into_bytes()
    });
    let many = {
        let id = RequestId::random();
        let uuid = id.to_string();
        let mut keys = smallvec::SmallVec::new();
        keys.push("a");
        let r = Request::AcquireMany(AcquireMany {
            uuid: &uuid,
            keys,
            ttl: Ttl::Never,
            try_lock: false,
            wait_timeout: None,
            keep_locks_after_death: false,
        });
        t.s.request(&r).unwrap()
    };
    t.recv(&format!(r#"{{"type":"unlock","uuid":"{unlock}","key":"k","unlocked":false,"lockRequestCount":0,"lost":true}}"#));
    assert_eq!(t.answer(), Some((unlock, Answer::Unlocked(Unlocked::Lost))));
    t.recv(&format!(
        r#"{{"type":"system-stats-response","uuid":"{stats}","stats":{{"keys":1,"grants":9}}}}"#
    ));
    let Some((_, Answer::Stats(s))) = t.answer() else {
        panic!()
    };
    assert_eq!((s.keys, s.grants, s.holders), (1, 9, 0));
    assert_eq!(t.s.pending(), 1);
    t.s.connection_lost();
    assert_eq!(t.s.poll_event(), Some(Event::Lost { id: many }));
    assert_eq!(t.s.pending(), 0);
}
