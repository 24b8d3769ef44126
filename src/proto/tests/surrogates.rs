//! Keys keep their identity (issue 20, item 9): a JSON string escape that is a lone UTF-16
//! surrogate (which `JSON.stringify` produces for a JavaScript string with an unpaired
//! surrogate) has no Unicode form. simd-json decoded `\ud800` as U+0000, so `"a\ud800b"` and
//! `"a\u0000b"` were one key; the decoder now refuses such a message with a clear error, and
//! still echoes its `uuid` so the caller's request is answered.

use super::*;

fn kind(s: &str) -> (DecodeErrorKind, Option<Box<str>>) {
    let e = dec(s).expect_err(s);
    (e.kind, e.uuid)
}

#[test]
fn a_lone_surrogate_escape_is_refused_and_never_collides_with_u0000() {
    let lock = |key: &str| format!(r#"{{"type":"lock","uuid":"u1","key":"{key}"}}"#);
    // The real U+0000 is a key of its own.
    match dec(&lock(r"a\u0000b")).expect("a NUL is valid text") {
        Request::Lock(r) => assert_eq!(r.key, "a\0b"),
        other => panic!("{other:?}"),
    }
    for (key, escape) in [
        (r"a\ud800b", r"\ud800"),
        (r"a\udfffb", r"\udfff"),
        (r"a\uDBFF", r"\udbff"),
        (r"\ud800\u0041", r"\ud800"),
        (r"\udc00\ud800", r"\udc00"),
    ] {
        let (k, uuid) = kind(&lock(key));
        assert!(
            matches!(&k, DecodeErrorKind::LoneSurrogate { escape: e, .. } if e == escape),
            "{key}: {k:?}"
        );
        assert!(k.to_string().contains("lone UTF-16 surrogate"), "{k}");
        assert_eq!(
            uuid.as_deref(),
            Some("u1"),
            "{key}: the error reaches the request"
        );
    }
    // Pairs are one character; an escaped backslash before `u` is plain text.
    for (key, text) in [(r"\ud83d\ude00", "😀"), (r"\\ud800", r"\ud800")] {
        match dec(&lock(key)).expect(key) {
            Request::Lock(r) => assert_eq!(r.key, text),
            other => panic!("{other:?}"),
        }
    }
    // Anywhere in the message, not only in keys.
    let (k, _) = kind(r#"{"type":"hello","name":"x\ud800"}"#);
    assert!(matches!(k, DecodeErrorKind::LoneSurrogate { .. }), "{k:?}");
}
