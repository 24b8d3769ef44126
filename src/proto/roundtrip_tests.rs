//! Both directions agree: every request decodes to what it was encoded from, every reply the
//! broker encodes decodes back to itself, and the npm broker's reply shapes decode as the
//! client expects.

use super::*;
use std::borrow::Cow;
use std::time::Duration;

/// A test's own copy of `bytes` that outlives every borrow of it.
fn leak(bytes: &[u8]) -> &'static mut [u8] {
    Box::leak(bytes.to_vec().into_boxed_slice())
}

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");

/// Every example request (one per type, `tests/data/requests`): decode, encode, decode again.
#[test]
fn every_request_type_survives_encode_then_decode() {
    let dir = std::fs::read_dir(format!("{DATA}/requests")).unwrap();
    let mut seen = 0;
    for entry in dir {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let mut raw = std::fs::read(&path).unwrap();
        let first = decode(&mut raw).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let mut bytes = Vec::new();
        first.encode(&mut bytes);
        let again = decode(leak(&bytes))
            .unwrap_or_else(|e| panic!("{path:?}: {e}: {}", String::from_utf8_lossy(&bytes)));
        assert_eq!(again, first, "{}", String::from_utf8_lossy(&bytes));
        seen += 1;
    }
    assert!(seen >= 20, "only {seen} request examples found");
}

#[test]
fn lock_options_round_trip() {
    let mut keys = smallvec::SmallVec::new();
    keys.extend(["a", "b\"\n"]);
    let reqs = [
        Request::Lock(LockRequest {
            uuid: "u1",
            key: "k\u{1}é",
            ttl: Ttl::Never,
            max: Some(3),
            try_lock: true,
            wait_timeout: Some(250),
            mode: Mode::Write,
            keep_locks_after_death: true,
            retry_count: 2,
        }),
        Request::Lock(LockRequest {
            uuid: "u2",
            key: "k",
            ttl: Ttl::After(Duration::from_millis(1500)),
            max: None,
            try_lock: false,
            wait_timeout: None,
            mode: Mode::Exclusive,
            keep_locks_after_death: false,
            retry_count: 0,
        }),
        Request::AcquireMany(AcquireMany {
            uuid: "m",
            keys,
            ttl: Ttl::BrokerDefault,
            try_lock: false,
            wait_timeout: Some(9),
            keep_locks_after_death: false,
        }),
        Request::Extend {
            uuid: "e",
            key: "k",
            lock_id: "l",
            ttl: Ttl::Never,
        },
        Request::Unlock {
            uuid: "x",
            key: "k",
            lock_id: None,
            force: true,
        },
        Request::Cancel {
            uuid: "x",
            key: "k",
            reason: CancelReason::ClientTimeout,
        },
        Request::Auth {
            uuid: None,
            token: "t",
        },
        Request::Inspect {
            uuid: Some("i"),
            command: "lockcount",
        },
        Request::Version {
            value: "0.2.25",
            keep_locks_after_death: true,
            pid: Some(12),
        },
        Request::Hello {
            name: "prog \"x\"[12]",
            pid: Some(12),
        },
        Request::Hello {
            name: "n",
            pid: None,
        },
        Request::Watch {
            uuid: "w",
            interval_ms: Some(500),
        },
        Request::Watch {
            uuid: "w",
            interval_ms: None,
        },
    ];
    for r in reqs {
        let mut bytes = Vec::new();
        r.encode(&mut bytes);
        assert_eq!(
            decode(leak(&bytes)),
            Ok(r),
            "{}",
            String::from_utf8_lossy(&bytes)
        );
    }
}

#[test]
fn broker_replies_decode_to_themselves() {
    let holders = [HolderInfo {
        id: "h\"1".into(),
        fencing_token: Some(5),
        mode: Mode::Read,
        ttl_remaining: Some(Duration::from_millis(100)),
        held_since_ms: Some(1_764_000_000_000),
        who: Who {
            peer: Some("127.0.0.1:1".into()),
            name: Some("n\"[1]".into()),
            pid: Some(1),
        },
    }];
    let waiters = [WaiterInfo {
        id: "w".into(),
        mode: Mode::Write,
        waiting_since_ms: Some(5),
        who: Who::default(),
    }];
    let tokens = [("a", 7), ("b", 8)];
    let replies = [
        Reply::Lock {
            uuid: "u",
            key: "k",
            outcome: LockOutcome::Granted {
                fencing_token: Some(9),
            },
            lock_request_count: 1,
            readers_count: 0,
        },
        Reply::Lock {
            uuid: "u",
            key: "k",
            outcome: LockOutcome::Queued,
            lock_request_count: 2,
            readers_count: 1,
        },
        Reply::Lock {
            uuid: "u",
            key: "k",
            outcome: LockOutcome::Refused,
            lock_request_count: 0,
            readers_count: 0,
        },
        Reply::LockTimedOut {
            uuid: "u",
            key: "k",
            waited_ms: 40,
        },
        Reply::Reelection {
            uuid: "u",
            key: "k",
            lock_request_count: 1,
        },
        Reply::Unlock {
            uuid: "u",
            key: "k",
            unlocked: false,
            lock_request_count: 0,
            lost: true,
            error: Some("lost"),
            warning: None,
        },
        Reply::Extend {
            uuid: "u",
            key: "k",
            extended: true,
            error: None,
        },
        Reply::AcquireMany {
            uuid: "u",
            lock_id: "u",
            outcome: ManyOutcome::Granted {
                fencing_tokens: Cow::Borrowed(&tokens),
            },
        },
        Reply::AcquireMany {
            uuid: "u",
            lock_id: "u",
            outcome: ManyOutcome::Refused {
                contended_key: Some("a"),
            },
        },
        Reply::AcquireMany {
            uuid: "u",
            lock_id: "u",
            outcome: ManyOutcome::TimedOut { waited_ms: 3 },
        },
        Reply::ReleaseMany {
            uuid: "u",
            lock_id: "l",
            released: true,
            error: None,
        },
        Reply::Ls {
            uuid: "u",
            keys: Cow::Borrowed(&["a", "b"]),
            next: None,
        },
        Reply::Ls {
            uuid: "u",
            keys: Cow::Borrowed(&["c"]),
            next: Some("c"),
        },
        Reply::LockInfo {
            uuid: "u",
            key: "k",
            is_locked: true,
            lock_request_count: 0,
            readers_count: 1,
            max: Some(2),
            holders: Cow::Borrowed(&holders),
            waiters: Cow::Borrowed(&waiters),
            truncated: true,
        },
        Reply::Pong {
            uuid: "u",
            server_timestamp_ms: 17,
            version: Some("0.1.0"),
        },
        Reply::SystemStats {
            uuid: "u",
            stats: Stats {
                keys: 1,
                holders: 2,
                waiters: 3,
                connections: 4,
                grants: 5,
                pid: Some(6),
                uptime_ms: Some(7),
            },
        },
        Reply::Auth {
            uuid: Some("u"),
            authenticated: false,
            error: Some("wrong auth token"),
        },
        Reply::VersionMismatch {
            client_version: "0.3.0",
        },
        Reply::Rw {
            op: RwOp::RegisterWriteFlagCheck,
            uuid: "u",
            key: "k",
            readers_count: 2,
        },
        Reply::BroadcastResult {
            uuid: "u",
            key: "k",
        },
        Reply::Inspect {
            uuid: None,
            result: 4,
        },
        Reply::Error {
            ty: Some("ping"),
            uuid: Some("u"),
            key: None,
            error: "authenticate first",
        },
    ];
    for r in replies {
        let mut bytes = Vec::new();
        r.encode(&mut bytes);
        assert_eq!(
            decode_reply(leak(&bytes)),
            Ok(r),
            "{}",
            String::from_utf8_lossy(&bytes)
        );
    }
}

fn dec(s: &str) -> Reply<'static> {
    decode_reply(Box::leak(s.as_bytes().to_vec().into_boxed_slice())).unwrap()
}

/// What the npm 0.2.25 broker sends (tests/data/captures and the protocol reference).
#[test]
fn npm_broker_replies_decode() {
    let grant =
        std::fs::read_to_string(format!("{DATA}/captures/b2c-3-lock-acquired.json")).unwrap();
    assert!(matches!(
        dec(&grant),
        Reply::Lock {
            outcome: LockOutcome::Granted {
                fencing_token: None
            },
            ..
        }
    ));
    assert!(matches!(
        dec(
            r#"{"readersCount":0,"key":"foo","uuid":"u","lockRequestCount":0,"type":"lock","acquired":false}"#
        ),
        Reply::Lock {
            outcome: LockOutcome::NotGranted,
            ..
        }
    ));
    assert!(matches!(
        dec(r#"{"key":"re","uuid":"r2","type":"lock","lockRequestCount":1,"reelection":true}"#),
        Reply::Reelection {
            lock_request_count: 1,
            ..
        }
    ));
    assert!(matches!(
        dec(
            r#"{"uuid":"U","key":"K","lockRequestCount":0,"type":"unlock","unlocked":true,"warning":"no lock with key => \"K\"."}"#
        ),
        Reply::Unlock {
            unlocked: true,
            warning: Some(_),
            ..
        }
    ));
    assert_eq!(
        dec(r#"{"error":"Malformed data"}"#),
        Reply::Error {
            ty: None,
            uuid: None,
            key: None,
            error: "Malformed data"
        }
    );
    assert!(matches!(
        dec(r#"{"key":"k","uuid":"u","lockholderUUIDs":["a"],"lockRequestCount":null,"isLocked":true,"lockInfo":true,"type":"lock-info-response"}"#),
        Reply::LockInfo { is_locked: true, max: None, lock_request_count: 0, ref holders, .. } if holders.is_empty()
    ));
    assert!(matches!(
        dec(
            r#"{"type":"lock","uuid":"u","key":"k","acquired":false,"error":"max must be at least 1"}"#
        ),
        Reply::Error {
            ty: Some("lock"),
            ..
        }
    ));
}

/// A reply that is not what it claims is an error, never a grant.
#[test]
fn garbled_replies_are_errors() {
    for bad in [
        r#"{"type":"lock","uuid":"u","key":"k","acquired":"yes"}"#,
        r#"{"type":"lock","uuid":"u","key":"k"}"#,
        r#"{"type":"lock","uuid":7,"key":"k","acquired":true}"#,
        r#"{"type":"lock","uuid":"u","key":"k","acquired":true,"fencingToken":-1}"#,
        r#"{"type":"unlock","uuid":"u","key":"k"}"#,
        r#"{"type":"who-knows","uuid":"u"}"#,
        r#"{"uuid":"u"}"#,
        r#"[1]"#,
        r#"{"type":"ls","uuid":"u","ls_result":[1]}"#,
        "{\"type\":\"lock\"",
    ] {
        let mut b = bad.as_bytes().to_vec();
        assert!(decode_reply(&mut b).is_err(), "{bad}");
    }
}
