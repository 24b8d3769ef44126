//! Decoder and encoder tests against the 0.2.25 captures (`tests/data/captures`), one example
//! per request type (`tests/data/requests`) and the bad-input cases the broker must answer.

use super::encode::{self, HolderInfo, LockOutcome, ManyOutcome, Stats};
use super::*;
use serde_json::{Value, json};
use std::time::Duration;

mod replies;
mod surrogates;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
const U: &str = "8650931b-4909-4955-9c19-ce805365af0e";

fn file(path: &str) -> Vec<u8> {
    std::fs::read(format!("{DATA}/{path}")).unwrap()
}

fn dec(s: &str) -> Result<Request<'static>, DecodeError> {
    decode(Box::leak(s.as_bytes().to_vec().into_boxed_slice()))
}

fn err(s: &str) -> DecodeError {
    dec(s).expect_err(s)
}

fn enc(r: Reply<'_>) -> Value {
    let mut out = Vec::new();
    r.encode(&mut out);
    assert!(!out.contains(&b'\n'));
    // Whatever the broker sends, the client's decoder reads.
    let mut copy = out.clone();
    if let Err(e) = decode_reply(&mut copy) {
        panic!("{e}: {}", String::from_utf8_lossy(&out));
    }
    serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
}

#[test]
fn decodes_the_0_2_25_captures() {
    let mut d = Decoder::default();
    let mut b = file("captures/c2b-1-version.json");
    assert_eq!(
        d.decode(&mut b),
        Ok(Request::Version {
            value: "0.2.25",
            keep_locks_after_death: false,
            pid: Some(12753)
        })
    );
    let mut b = file("captures/c2b-2-lock.json");
    let want = LockRequest {
        uuid: U,
        key: "foo",
        ttl: Ttl::After(Duration::from_millis(7050)),
        max: None,
        try_lock: false,
        wait_timeout: None,
        mode: Mode::Exclusive,
        keep_locks_after_death: false,
        retry_count: 0,
    };
    assert_eq!(d.decode(&mut b), Ok(Request::Lock(want)));
    let mut b = file("captures/c2b-4-lock-received.json");
    assert_eq!(
        d.decode(&mut b),
        Ok(Request::LockReceived {
            uuid: U,
            key: "foo"
        })
    );
    let mut b = file("captures/c2b-5-unlock.json");
    let want = Request::Unlock {
        uuid: "abd1661b-c6cc-4090-aa77-600b136f8902",
        key: "foo",
        lock_id: Some(U),
        force: false,
    };
    assert_eq!(d.decode(&mut b), Ok(want));
}

#[test]
fn decodes_one_example_of_every_request_type() {
    let mut d = Decoder::default();
    let mut seen = 0;
    for entry in std::fs::read_dir(format!("{DATA}/requests")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let mut b = std::fs::read(&path).unwrap();
        let req = d.decode(&mut b).unwrap_or_else(|e| panic!("{stem}: {e}"));
        assert_eq!(
            req.ty(),
            stem.trim_end_matches("-ext").trim_end_matches("-force"),
            "{stem}"
        );
        seen += 1;
    }
    assert_eq!(seen, 24);
}

#[test]
fn decodes_typed_fields() {
    let mut b = file("requests/lock-ext.json");
    let Ok(Request::Lock(l)) = decode(&mut b) else {
        panic!()
    };
    assert_eq!(
        (l.ttl, l.max, l.try_lock, l.wait_timeout),
        (Ttl::Never, Some(3), true, Some(250))
    );
    assert_eq!(
        (l.mode, l.keep_locks_after_death, l.retry_count),
        (Mode::Read, true, 2)
    );
    let mut b = file("requests/acquire-many.json");
    let Ok(Request::AcquireMany(m)) = decode(&mut b) else {
        panic!()
    };
    assert_eq!(
        (&m.keys[..], m.ttl, m.wait_timeout),
        (
            &["b", "a", "c"][..],
            Ttl::After(Duration::from_millis(5000)),
            Some(1000)
        )
    );
    let mut b = file("requests/unlock-force.json");
    assert!(matches!(
        decode(&mut b),
        Ok(Request::Unlock {
            lock_id: None,
            force: true,
            ..
        })
    ));
    let mut b = file("requests/set-write-flag-false-and-broadcast.json");
    assert!(matches!(
        decode(&mut b),
        Ok(Request::Rw {
            op: RwOp::SetWriteFlagFalseAndBroadcast,
            ..
        })
    ));
    assert_eq!(
        dec(r#"{"inspectCommand":"x","type":"lock"}"#),
        Ok(Request::Inspect {
            uuid: None,
            command: "x"
        })
    );
    assert_eq!(
        dec(r#"{"type":"auth","token":"t"}"#),
        Ok(Request::Auth {
            uuid: None,
            token: "t"
        })
    );
}

#[test]
fn ttl_max_and_flag_forms() {
    let lock = |extra: &str| match dec(&format!(r#"{{"type":"lock","uuid":"u","key":"k"{extra}}}"#))
    {
        Ok(Request::Lock(l)) => l,
        other => panic!("{extra}: {other:?}"),
    };
    for (extra, ttl) in [
        ("", Ttl::BrokerDefault),
        (r#","ttl":0"#, Ttl::BrokerDefault),
        (r#","ttl":false"#, Ttl::BrokerDefault),
        (r#","ttl":null"#, Ttl::Never),
        (r#","ttl":1e3"#, Ttl::After(Duration::from_millis(1000))),
        (r#","ttl":7050.0"#, Ttl::After(Duration::from_millis(7050))),
        (
            r#","ttl":2147483647"#,
            Ttl::After(Duration::from_millis(MAX_TTL_MS)),
        ),
    ] {
        assert_eq!(lock(extra).ttl, ttl, "{extra}");
    }
    assert_eq!(lock(r#","max":1000000"#).max, Some(1_000_000));
    assert_eq!(
        lock(r#","max":null,"wait":null,"mode":null,"retryCount":null"#),
        lock("")
    );
    assert!(!lock(r#","wait":true,"force":true"#).try_lock);
    // Duplicate JSON keys: the last one wins, as with JSON.parse.
    assert_eq!(lock(r#","key":"k2""#).key, "k2");
}

#[test]
fn strings_are_unescaped_in_place() {
    let r = dec(r#"{"type":"lock-info-request","uuid":"u","key":"a\"b\\c\n\u00e9\ud83d\ude00 ü"}"#);
    assert_eq!(
        r,
        Ok(Request::LockInfo {
            uuid: "u",
            key: "a\"b\\c\né😀 ü"
        })
    );
}

#[test]
fn decoder_is_reusable_across_messages_and_errors() {
    let mut d = Decoder::default();
    for i in 0..1000 {
        let mut good = format!(r#"{{"type":"ping","uuid":"u{i}"}}"#).into_bytes();
        let want = format!("u{i}");
        assert!(matches!(d.decode(&mut good), Ok(Request::Ping { uuid }) if uuid == want));
        let mut bad = b"{\"type\":".to_vec();
        assert!(d.decode(&mut bad).is_err());
    }
}

#[test]
fn bad_input_errors_echo_what_they_can() {
    use DecodeErrorKind as K;
    let cases: &[(&str, K)] = &[
        ("", K::InvalidJson(String::new())),
        ("this is not json", K::InvalidJson(String::new())),
        (r#"{"type":"lock","#, K::InvalidJson(String::new())),
        (
            r#"{"type":"ping","uuid":"u"}{"type":"ping","uuid":"v"}"#,
            K::InvalidJson(String::new()),
        ),
        ("null", K::NotAnObject("null")),
        ("42", K::NotAnObject("a number")),
        ("[1,2,3]", K::NotAnObject("an array")),
        (r#""a string""#, K::NotAnObject("a string")),
        (r#"{"uuid":"u","key":"k"}"#, K::MissingType),
        (r#"{"type":null,"uuid":"u"}"#, K::MissingType),
        (
            r#"{"type":7,"uuid":"u"}"#,
            K::WrongType {
                field: "type",
                expected: "a string",
                got: "a number",
            },
        ),
        (
            r#"{"type":"frobnicate","uuid":"u","key":"k"}"#,
            K::UnknownType("frobnicate".into()),
        ),
        (r#"{"type":"lock","key":"k"}"#, K::MissingField("uuid")),
        (r#"{"type":"lock","uuid":"u"}"#, K::MissingField("key")),
        (
            r#"{"type":"lock","uuid":"u","key":null}"#,
            K::MissingField("key"),
        ),
        (
            r#"{"type":"lock","uuid":"u","key":5}"#,
            K::WrongType {
                field: "key",
                expected: "a string",
                got: "a number",
            },
        ),
        (
            r#"{"type":"lock","uuid":"u","key":{"a":1}}"#,
            K::WrongType {
                field: "key",
                expected: "a string",
                got: "an object",
            },
        ),
        (
            r#"{"type":"lock","uuid":5,"key":"k"}"#,
            K::WrongType {
                field: "uuid",
                expected: "a string",
                got: "a number",
            },
        ),
        (
            r#"{"type":"unlock","uuid":"u","key":"k","force":"yes"}"#,
            K::WrongType {
                field: "force",
                expected: "a boolean",
                got: "a string",
            },
        ),
        (
            r#"{"type":"unlock","uuid":"u","key":"k","_uuid":1}"#,
            K::WrongType {
                field: "_uuid",
                expected: "a string",
                got: "a number",
            },
        ),
        (
            r#"{"type":"lock","uuid":"u","key":"k","ttl":"100"}"#,
            K::WrongType {
                field: "ttl",
                expected: "a non-negative integer",
                got: "a string",
            },
        ),
        (
            r#"{"type":"lock","uuid":"u","key":"k","ttl":true}"#,
            K::WrongType {
                field: "ttl",
                expected: "a non-negative integer",
                got: "a boolean",
            },
        ),
        (
            r#"{"type":"lock","uuid":"u","key":"k","wait":0}"#,
            K::WrongType {
                field: "wait",
                expected: "a boolean",
                got: "a number",
            },
        ),
        (
            r#"{"type":"lock","uuid":"u","key":"k","keepLocksAfterDeath":"1"}"#,
            K::WrongType {
                field: "keepLocksAfterDeath",
                expected: "a boolean",
                got: "a string",
            },
        ),
        (
            r#"{"type":"extend","uuid":"u","key":"k"}"#,
            K::MissingField("_uuid"),
        ),
        (
            r#"{"type":"release-many","uuid":"u"}"#,
            K::MissingField("lockUuid"),
        ),
        (
            r#"{"type":"acquire-many","uuid":"u"}"#,
            K::MissingField("keys"),
        ),
        (
            r#"{"type":"acquire-many","uuid":"u","keys":"a"}"#,
            K::WrongType {
                field: "keys",
                expected: "an array of strings",
                got: "a string",
            },
        ),
        (
            r#"{"type":"acquire-many","uuid":"u","keys":["a",1]}"#,
            K::WrongType {
                field: "keys",
                expected: "an array of strings",
                got: "a number",
            },
        ),
        (
            r#"{"type":"acquire-many","uuid":"u","keys":["a",["b"]]}"#,
            K::WrongType {
                field: "keys",
                expected: "an array of strings",
                got: "an array",
            },
        ),
        (r#"{"type":"auth","uuid":"u"}"#, K::MissingField("token")),
        (r#"{"type":"version"}"#, K::MissingField("value")),
        (
            r#"{"inspectCommand":5,"uuid":"u"}"#,
            K::WrongType {
                field: "inspectCommand",
                expected: "a string",
                got: "a number",
            },
        ),
    ];
    for (input, kind) in cases {
        let e = err(input);
        if let K::InvalidJson(_) = kind {
            assert!(matches!(e.kind, K::InvalidJson(_)), "{input}: {e:?}");
            continue;
        }
        assert_eq!(&e.kind, kind, "{input}");
        let v: Option<Value> = serde_json::from_str(input).ok();
        let field = |f: &str| {
            v.as_ref()
                .and_then(|v| v.get(f))
                .and_then(Value::as_str)
                .map(Box::from)
        };
        assert_eq!(
            (e.uuid, e.key, e.ty),
            (field("uuid"), field("key"), field("type")),
            "{input}"
        );
    }
}

#[test]
fn range_checks() {
    let invalid = |extra: &str, field: &str, needle: &str| {
        let e = err(&format!(
            r#"{{"type":"lock","uuid":"u1","key":"k1"{extra}}}"#
        ));
        match &e.kind {
            DecodeErrorKind::Invalid { field: f, reason }
                if *f == field && reason.contains(needle) => {}
            other => panic!("{extra}: {other:?}"),
        }
        assert_eq!(
            (e.uuid.as_deref(), e.key.as_deref(), e.ty.as_deref()),
            (Some("u1"), Some("k1"), Some("lock"))
        );
    };
    invalid(r#","ttl":-1"#, "ttl", "got -1");
    invalid(r#","ttl":1.5"#, "ttl", "got 1.5");
    invalid(r#","ttl":2147483648"#, "ttl", "no greater than 2147483647");
    invalid(r#","ttl":1e300"#, "ttl", "got 1e300");
    invalid(
        r#","ttl":18446744073709551615"#,
        "ttl",
        "got 18446744073709551615",
    );
    invalid(r#","max":0"#, "max", "at least 1");
    invalid(r#","max":-3"#, "max", "got -3");
    invalid(r#","max":1000001"#, "max", "no greater than 1000000");
    invalid(r#","max":2.5"#, "max", "got 2.5");
    invalid(r#","waitTimeout":-5"#, "waitTimeout", "got -5");
    invalid(r#","retryCount":-1"#, "retryCount", "got -1");
    invalid(r#","mode":"shared""#, "mode", "\"shared\"");
    // Numbers simd-json cannot represent are a JSON error, not a panic.
    assert!(dec(r#"{"type":"lock","uuid":"u","key":"k","ttl":1e999}"#).is_err());
    assert!(
        dec(r#"{"type":"lock","uuid":"u","key":"k","ttl":123456789012345678901234567890}"#)
            .is_err()
    );
}

#[test]
fn length_and_count_limits() {
    let mut d = Decoder::new(Limits {
        max_key_len: 4,
        max_id_len: 3,
        max_many_keys: 3,
    });
    let mut run = |s: &str| {
        d.decode(&mut s.as_bytes().to_vec())
            .map(|r| r.ty())
            .map_err(|e| e.kind.to_string())
    };
    assert_eq!(
        run(r#"{"type":"lock","uuid":"abc","key":"abcd"}"#),
        Ok("lock")
    );
    assert_eq!(
        run(r#"{"type":"lock","uuid":"abc","key":"abcde"}"#),
        Err("field `key` is 5 bytes long; the limit is 4".into())
    );
    assert_eq!(
        run(r#"{"type":"lock","uuid":"abcd","key":"a"}"#),
        Err("field `uuid` is 4 bytes long; the limit is 3".into())
    );
    assert_eq!(
        run(r#"{"type":"unlock","uuid":"a","key":"a","_uuid":"abcd"}"#),
        Err("field `_uuid` is 4 bytes long; the limit is 3".into())
    );
    assert_eq!(
        run(r#"{"type":"acquire-many","uuid":"a","keys":["a","b","c"]}"#),
        Ok("acquire-many")
    );
    assert_eq!(
        run(r#"{"type":"acquire-many","uuid":"a","keys":["a","b","c","d"]}"#),
        Err("field `keys` must hold 1 to 3 keys, got 4".into())
    );
    assert_eq!(
        run(r#"{"type":"acquire-many","uuid":"a","keys":[]}"#),
        Err("field `keys` must hold 1 to 3 keys, got 0".into())
    );
    assert_eq!(
        run(r#"{"type":"acquire-many","uuid":"a","keys":["a","b","a"]}"#),
        Err("field `keys` holds \"a\" twice".into())
    );
    assert_eq!(
        run(r#"{"type":"acquire-many","uuid":"a","keys":["abcde"]}"#),
        Err("field `keys` holds a key of 5 bytes; the limit is 4".into())
    );
    let default = Limits::default();
    assert_eq!((default.max_key_len, default.max_many_keys), (1024, 64));
}

#[test]
fn non_utf8_is_reported_as_such() {
    let mut b = b"{\"type\":\"lock\",\"uuid\":\"u\",\"key\":\"\xff\xfe\"}".to_vec();
    let e = decode(&mut b).unwrap_err();
    assert_eq!(e.kind, DecodeErrorKind::InvalidUtf8);
    assert_eq!(e.to_string(), "message is not valid UTF-8");
}

#[test]
fn version_compatibility() {
    for v in ["0.2.25", "0.2.0", "0.2.27", " 0.2.3 ", "0.2"] {
        assert!(is_compatible_version(v), "{v}");
    }
    for v in ["1.0.0", "0.3.0", "0.20.1", "0.1.1066", "", "x"] {
        assert!(!is_compatible_version(v), "{v}");
    }
}
