//! Reply encoding: the captured 0.2.25 replies, every reply shape, decode errors as error
//! replies, escaping, and the encode/decode round trip.

use super::*;

#[test]
fn lock_and_unlock_replies_match_the_capture() {
    let capture: Value =
        serde_json::from_slice(&file("captures/b2c-3-lock-acquired.json")).unwrap();
    let granted = Reply::Lock {
        uuid: U,
        key: "foo",
        outcome: LockOutcome::Granted {
            fencing_token: Some(42),
        },
        lock_request_count: 0,
        readers_count: 0,
    };
    let mut got = enc(granted);
    assert_eq!(
        got.as_object_mut().unwrap().remove("fencingToken"),
        Some(json!(42))
    );
    assert_eq!(got, capture);
    let capture: Value = serde_json::from_slice(&file("captures/b2c-6-unlock.json")).unwrap();
    let unlock = Reply::Unlock {
        uuid: "abd1661b-c6cc-4090-aa77-600b136f8902",
        key: "foo",
        unlocked: true,
        lock_request_count: 0,
        lost: false,
        error: None,
        warning: None,
    };
    assert_eq!(enc(unlock.clone()), capture);
    let mut out = Vec::new();
    unlock.encode(&mut out);
    assert!(
        out.starts_with(br#"{"type":"unlock","uuid":"#),
        "type comes first"
    );
}

#[test]
fn every_reply_shape() {
    let (u, k) = ("u1", "k1");
    let lock = |outcome| Reply::Lock {
        uuid: u,
        key: k,
        outcome,
        lock_request_count: 2,
        readers_count: 1,
    };
    let base = json!({"type":"lock","uuid":u,"key":k,"acquired":false,"lockRequestCount":2,"readersCount":1});
    let with = |extra: Value| {
        let mut v = base.clone();
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    assert_eq!(enc(lock(LockOutcome::Queued)), with(json!({"queued":true})));
    assert_eq!(
        enc(lock(LockOutcome::Refused)),
        with(json!({"queued":false}))
    );
    assert_eq!(
        enc(Reply::LockTimedOut {
            uuid: u,
            key: k,
            waited_ms: 250
        }),
        json!({"type":"lock","uuid":u,"key":k,"acquired":false,"timedOut":true,"error":"lock request timed out after 250 ms"})
    );
    assert_eq!(
        enc(Reply::Reelection {
            uuid: u,
            key: k,
            lock_request_count: 1
        }),
        json!({"type":"lock","uuid":u,"key":k,"lockRequestCount":1,"reelection":true})
    );
    let lost = Reply::Unlock {
        uuid: u,
        key: k,
        unlocked: false,
        lock_request_count: 0,
        lost: true,
        error: Some("gone"),
        warning: None,
    };
    assert_eq!(
        enc(lost),
        json!({"type":"unlock","uuid":u,"key":k,"unlocked":false,"lockRequestCount":0,"lost":true,"error":"gone"})
    );
    assert_eq!(
        enc(Reply::Extend {
            uuid: u,
            key: k,
            extended: true,
            error: None
        }),
        json!({"type":"extend","uuid":u,"key":k,"extended":true})
    );
    let many = |outcome| {
        enc(Reply::AcquireMany {
            uuid: u,
            lock_id: u,
            outcome,
        })
    };
    assert_eq!(
        many(ManyOutcome::Granted {
            fencing_tokens: (&[("a", 7), ("b\"", 8)][..]).into()
        }),
        json!({"type":"acquire-many","uuid":u,"acquired":true,"lockUuid":u,"fencingTokens":{"a":7,"b\"":8}})
    );
    assert_eq!(
        many(ManyOutcome::Queued),
        json!({"type":"acquire-many","uuid":u,"acquired":false,"lockUuid":u,"queued":true})
    );
    assert_eq!(
        many(ManyOutcome::Refused {
            contended_key: Some("a")
        }),
        json!({"type":"acquire-many","uuid":u,"acquired":false,"lockUuid":u,"queued":false,"contendedKey":"a"})
    );
    assert_eq!(
        many(ManyOutcome::TimedOut { waited_ms: 9 }),
        json!({"type":"acquire-many","uuid":u,"acquired":false,"lockUuid":u,"timedOut":true,"error":"lock request timed out after 9 ms"})
    );
    assert_eq!(
        enc(Reply::ReleaseMany {
            uuid: u,
            lock_id: "L",
            released: false,
            error: Some("no such lock")
        }),
        json!({"type":"release-many","uuid":u,"lockUuid":"L","released":false,"error":"no such lock"})
    );
    assert_eq!(
        enc(Reply::Ls {
            uuid: u,
            keys: (&["a", "b"][..]).into(),
            next: Some("7"),
        }),
        json!({"type":"ls","uuid":u,"ls_result":["a","b"],"next":"7"})
    );
    assert_eq!(
        enc(Reply::Ls {
            uuid: u,
            keys: Vec::new().into(),
            next: None,
        }),
        json!({"type":"ls","uuid":u,"ls_result":[]})
    );
    let holders = [
        HolderInfo {
            id: "h1".into(),
            fencing_token: Some(5),
            mode: Mode::Read,
            ttl_remaining: Some(Duration::from_millis(100)),
            held_since_ms: None,
            who: Default::default(),
        },
        HolderInfo {
            id: "h2".into(),
            fencing_token: Some(6),
            mode: Mode::Read,
            ttl_remaining: None,
            held_since_ms: Some(7),
            who: crate::proto::Who {
                peer: Some("pid 1 uid 0".into()),
                name: None,
                pid: Some(1),
            },
        },
    ];
    assert_eq!(
        enc(Reply::LockInfo {
            uuid: u,
            key: k,
            lock_request_count: 1,
            readers_count: 2,
            is_locked: true,
            max: Some(1),
            holders: (&holders[..]).into(),
            waiters: Vec::new().into(),
            truncated: false,
        }),
        json!({"type":"lock-info-response","uuid":u,"key":k,"lockInfo":true,"isLocked":true,"lockholderUUIDs":["h1","h2"],
            "lockRequestCount":1,"readersCount":2,"max":1,"holders":[
            {"id":"h1","fencingToken":5,"mode":"read","ttlRemaining":100},
            {"id":"h2","fencingToken":6,"mode":"read","ttlRemaining":null,"heldSince":7,"peer":"pid 1 uid 0","pid":1}],
            "waiters":[]})
    );
    assert_eq!(
        enc(Reply::Pong {
            uuid: u,
            server_timestamp_ms: 1_764_000_000_000,
            version: None,
        }),
        json!({"type":"pong","uuid":u,"ping":true,"serverTimestamp":1_764_000_000_000u64})
    );
    assert_eq!(
        enc(Reply::Pong {
            uuid: u,
            server_timestamp_ms: 1,
            version: Some("0.1.0"),
        }),
        json!({"type":"pong","uuid":u,"ping":true,"serverTimestamp":1,"version":"0.1.0"})
    );
    let stats = Stats {
        keys: 1,
        holders: 2,
        waiters: 3,
        connections: 4,
        grants: u64::MAX,
        pid: None,
        uptime_ms: None,
    };
    assert_eq!(
        enc(Reply::SystemStats { uuid: u, stats }),
        json!({"type":"system-stats-response","uuid":u,"stats":{"keys":1,"holders":2,"waiters":3,"connections":4,"grants":u64::MAX}})
    );
    let stats = Stats {
        pid: Some(42),
        uptime_ms: Some(1500),
        ..stats
    };
    assert_eq!(
        enc(Reply::SystemStats { uuid: u, stats }),
        json!({"type":"system-stats-response","uuid":u,"stats":{"keys":1,"holders":2,"waiters":3,"connections":4,"grants":u64::MAX,"pid":42,"uptimeMs":1500}})
    );
    assert_eq!(
        enc(Reply::Auth {
            uuid: None,
            authenticated: false,
            error: Some("bad token")
        }),
        json!({"type":"auth","authenticated":false,"error":"bad token"})
    );
    assert_eq!(
        enc(Reply::VersionMismatch {
            client_version: "1.0.0"
        }),
        json!({"type":"version-mismatch","versions":{"clientVersion":"1.0.0","brokerVersion":"0.2.25"}})
    );
    assert_eq!(
        enc(Reply::Rw {
            op: RwOp::RegisterWriteFlagCheck,
            uuid: u,
            key: k,
            readers_count: 3
        }),
        json!({"type":"register-write-flag-success","uuid":u,"key":k,"writerFlag":false,"readersCount":3})
    );
    assert_eq!(
        enc(Reply::Rw {
            op: RwOp::IncrementReaders,
            uuid: u,
            key: k,
            readers_count: 3
        }),
        json!({"type":"increment-readers-success","uuid":u,"key":k})
    );
    assert_eq!(
        enc(Reply::BroadcastResult { uuid: u, key: k }),
        json!({"type":"broadcast-result","uuid":u,"key":k})
    );
    assert_eq!(
        enc(Reply::Inspect {
            uuid: None,
            result: 5
        }),
        json!({"type":"inspect","inspectResult":5})
    );
}

#[test]
fn decode_errors_become_error_replies() {
    let reply = |input: &str| {
        let mut out = Vec::new();
        encode::decode_error(&err(input), &mut out);
        serde_json::from_slice::<Value>(&out).unwrap()
    };
    assert_eq!(
        reply(r#"{"type":"lock","uuid":"u","key":"k","ttl":-1}"#),
        json!({"type":"lock","uuid":"u","key":"k","acquired":false,"error":"field `ttl` must be a non-negative integer no greater than 2147483647, got -1"})
    );
    assert_eq!(
        reply(r#"{"type":"unlock","uuid":"u","key":"k","force":1}"#),
        json!({"type":"unlock","uuid":"u","key":"k","unlocked":false,"error":"field `force` must be a boolean, got a number"})
    );
    assert_eq!(
        reply(r#"{"type":"frobnicate","uuid":"u"}"#),
        json!({"type":"frobnicate","uuid":"u","error":"unknown message type `frobnicate`"})
    );
    assert_eq!(
        reply("null"),
        json!({"type":"error","error":"message must be a JSON object, got null"})
    );
    let garbage = reply("not json");
    assert_eq!(garbage["type"], "error");
    assert!(
        garbage["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid JSON: ")
    );
}

#[test]
fn escaping_of_nasty_strings() {
    let mut all_controls = String::new();
    all_controls.extend((0u8..0x20).map(char::from));
    let nasty = [
        "",
        "\"",
        "\\",
        "\"\\\"",
        "line\nbreak\r\n",
        "\u{0}\u{1f}\u{7f}",
        "é😀\u{2028}\u{2029}",
        "</script>",
        &all_controls,
    ];
    for s in nasty {
        let mut out = Vec::new();
        encode::write_str(&mut out, s);
        assert!(!out.iter().any(|&b| b < 0x20), "{s:?}");
        assert_eq!(serde_json::from_slice::<String>(&out).unwrap(), s);
        let v = enc(Reply::Error {
            ty: Some(s),
            uuid: Some(s),
            key: Some(s),
            error: s,
        });
        assert_eq!(
            (v["type"].as_str(), v["uuid"].as_str(), v["error"].as_str()),
            (Some(s), Some(s), Some(s))
        );
    }
    let mut out = Vec::new();
    encode::write_str(&mut out, "a\u{1}\"");
    assert_eq!(out, br#""a\u0001\"""#);
}

proptest::proptest! {
    #[test]
    fn any_string_round_trips(s in ".*", k in proptest::prelude::any::<String>()) {
        let v = enc(Reply::Extend { uuid: &s, key: &k, extended: false, error: Some(&s) });
        proptest::prop_assert_eq!(v["uuid"].as_str(), Some(s.as_str()));
        proptest::prop_assert_eq!(v["key"].as_str(), Some(k.as_str()));
        // What we encode, we decode back to the same borrowed strings.
        let mut line = serde_json::to_vec(&json!({"type":"lock-info-request","uuid":s,"key":k})).unwrap();
        let got = decode(&mut line).map(|r| match r { Request::LockInfo { uuid, key } => (uuid.to_owned(), key.to_owned()), _ => unreachable!() });
        if s.len() <= 256 && k.len() <= 1024 {
            proptest::prop_assert_eq!(got, Ok((s.clone(), k.clone())));
        }
    }

    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
        let mut b = bytes;
        let _ = decode(&mut b);
    }
}
