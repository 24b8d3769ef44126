//! Request decoding: simd-json's tape parser over the caller's buffer, read once, every string
//! borrowed from that buffer. The field readers here (`uint`, `flag`, `ttl`, ...) are shared
//! with reply decoding (`reply_decode.rs`), so both directions accept the same leniencies.

use std::time::Duration;

use simd_json::{Buffers, Node, StaticNode, Tape};
use smallvec::SmallVec;

use super::{
    AcquireMany, CancelReason, Limits, LockRequest, MAX_SEMAPHORE, MAX_TTL_MS, Mode, Request, RwOp,
    Ttl,
};

/// Longest client name a `hello` may carry.
pub const MAX_CLIENT_NAME: usize = 256;

/// What was wrong with a message. The `Display` text is what goes into the reply's `error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The line's bytes are not UTF-8 (JSON text must be).
    #[error("message is not valid UTF-8")]
    InvalidUtf8,
    /// Not parseable as JSON; the text says where, as simd-json reported it.
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// Valid JSON but not an object; the field names what it was (`an array`, `null`, ...).
    #[error("message must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    /// No `type` field (or `null`), so the request cannot be dispatched.
    #[error("message has no `type` field")]
    MissingType,
    /// A `type` this broker does not implement (the field is the type as sent).
    #[error("unknown message type `{0}`")]
    UnknownType(String),
    /// The request's type needs this field (absent, or `null`).
    #[error("missing required field `{0}`")]
    MissingField(&'static str),
    /// A field of the wrong JSON type.
    #[error("field `{field}` must be {expected}, got {got}")]
    WrongType {
        /// The field's wire name.
        field: &'static str,
        /// What it must be (`a string`, `a boolean`, ...).
        expected: &'static str,
        /// What it was.
        got: &'static str,
    },
    /// A string escape that is a lone UTF-16 surrogate (`\ud800` not followed by a low
    /// surrogate, or a lone `\udc00`): JSON allows it, but it is not Unicode text, so it has no
    /// UTF-8 form. Refused rather than replaced, since any replacement (U+0000, U+FFFD) would
    /// make two different JavaScript strings one key or one id.
    #[error(
        "string escape `{escape}` at character {at} is a lone UTF-16 surrogate, which is not \
         Unicode text: keys, ids and names must be well-formed (JavaScript's \
         `String.prototype.isWellFormed()`)"
    )]
    LoneSurrogate {
        /// The escape as sent, such as `\ud800`.
        escape: String,
        /// Its byte offset in the message.
        at: usize,
    },
    /// A field of the right type but out of range (too long, too large, unknown mode, ...).
    #[error("field `{field}` {reason}")]
    Invalid {
        /// The field's wire name.
        field: &'static str,
        /// What is wrong, as a phrase that follows the field name.
        reason: String,
    },
}

/// A rejected message, with whatever `uuid` / `key` / `type` could be read so the error reply
/// reaches the waiting caller (see [`decode_error`](super::encode::decode_error)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
#[non_exhaustive]
pub struct DecodeError {
    /// What was wrong.
    pub kind: DecodeErrorKind,
    /// The message's `uuid`, if it parsed and was a string; `None` for JSON that did not parse.
    pub uuid: Option<Box<str>>,
    /// The message's `key`, likewise.
    pub key: Option<Box<str>>,
    /// The message's `type`, likewise.
    pub ty: Option<Box<str>>,
}

impl From<DecodeErrorKind> for DecodeError {
    fn from(kind: DecodeErrorKind) -> Self {
        DecodeError {
            kind,
            uuid: None,
            key: None,
            ty: None,
        }
    }
}

/// Reusable decoder: keeps simd-json's scratch buffers and tape, so steady-state decoding of
/// a request allocates nothing.
pub struct Decoder {
    limits: Limits,
    buffers: Buffers,
    tape: Tape<'static>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(Limits::default())
    }
}

impl Decoder {
    /// A decoder that refuses keys, ids and acquire-many key lists beyond `limits`.
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            buffers: Buffers::new(512),
            tape: Tape(Vec::new()),
        }
    }

    /// The limits this decoder enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Decodes one JSON object in place; `buf` is clobbered (simd-json unescapes into it).
    pub fn decode<'a>(&mut self, buf: &'a mut [u8]) -> Result<Request<'a>, DecodeError> {
        // Before simd-json unescapes in place: it turns a lone surrogate into U+0000, or
        // fails on it without a word about the request.
        let lone = lone_surrogates(buf);
        let mut tape: Tape<'a> = std::mem::replace(&mut self.tape, Tape(Vec::new())).reset();
        let res = match simd_json::fill_tape(buf, &mut self.buffers, &mut tape) {
            Ok(()) => decode_tape(&tape.0, &self.limits, lone),
            // simd-json's own error for a lone low surrogate is "invalid UTF-8".
            Err(e) => Err(lone.map_or_else(|| json_error(&e), Kind::from).into()),
        };
        self.tape = tape.reset();
        res
    }
}

/// One-off decode with default [`Limits`]; the broker should hold a [`Decoder`] instead.
pub fn decode(buf: &mut [u8]) -> Result<Request<'_>, DecodeError> {
    Decoder::default().decode(buf)
}

pub(super) fn json_error(e: &simd_json::Error) -> DecodeErrorKind {
    match e.error() {
        simd_json::ErrorType::InvalidUtf8 => DecodeErrorKind::InvalidUtf8,
        // simd-json reports e.g. `{..}{..}` as an internal tape error; don't blame the broker.
        simd_json::ErrorType::InternalError(_) => DecodeErrorKind::InvalidJson(format!(
            "malformed structure near character {}",
            e.index()
        )),
        _ => DecodeErrorKind::InvalidJson(e.to_string()),
    }
}

pub(super) type Kind = DecodeErrorKind;

/// A lone surrogate escape found by [`lone_surrogate`]: its offset and code unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Lone {
    at: usize,
    unit: u32,
}

impl From<Lone> for Kind {
    fn from(l: Lone) -> Kind {
        Kind::LoneSurrogate {
            escape: format!("\\u{:04x}", l.unit),
            at: l.at,
        }
    }
}

/// The first `\uXXXX` escape of `buf` that is a UTF-16 surrogate not part of a pair, if any.
/// Every such escape is overwritten with `\ufffd` (same length), so that the message still
/// parses and its refusal can echo its `uuid`; the message is refused whatever it says.
/// A backslash only occurs inside strings in valid JSON, so escapes are found without
/// tracking strings; `\\` is skipped whole, so `\\ud800` (a backslash, then text) is not one.
/// Malformed escapes are left to the parser.
pub(super) fn lone_surrogates(buf: &mut [u8]) -> Option<Lone> {
    let mut first = None;
    let mut from = 0;
    while let Some(l) = lone_surrogate(buf, from) {
        first.get_or_insert(l);
        buf[l.at + 2..l.at + 6].copy_from_slice(b"fffd");
        from = l.at + 6;
    }
    first
}

/// The first lone surrogate escape at or after `from` (an escape's start, or 0).
fn lone_surrogate(buf: &[u8], from: usize) -> Option<Lone> {
    let hex4 = |at: usize| -> Option<u32> {
        let h = buf.get(at..at + 4)?;
        u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
    };
    let mut i = from;
    while let Some(off) = buf.get(i..)?.iter().position(|&b| b == b'\\') {
        i += off;
        if buf.get(i + 1) != Some(&b'u') {
            i += 2;
            continue;
        }
        let Some(unit) = hex4(i + 2) else {
            i += 2;
            continue;
        };
        match unit {
            0xd800..=0xdbff => {
                let low = (buf.get(i + 6..i + 8) == Some(&b"\\u"[..]))
                    .then(|| hex4(i + 8))
                    .flatten();
                if !low.is_some_and(|l| (0xdc00..=0xdfff).contains(&l)) {
                    return Some(Lone { at: i, unit });
                }
                i += 12;
            }
            0xdc00..=0xdfff => return Some(Lone { at: i, unit }),
            _ => i += 6,
        }
    }
    None
}

/// Raw top-level fields, collected in one pass before any validation so a failure can still
/// echo `uuid` / `key` / `type`. Duplicate JSON keys: the last wins, as in `JSON.parse`.
#[derive(Default)]
struct Fields<'a> {
    ty: Option<Node<'a>>,
    uuid: Option<Node<'a>>,
    key: Option<Node<'a>>,
    ttl: Option<Node<'a>>,
    max: Option<Node<'a>>,
    wait: Option<Node<'a>>,
    wait_timeout: Option<Node<'a>>,
    mode: Option<Node<'a>>,
    keep: Option<Node<'a>>,
    force: Option<Node<'a>>,
    lock_id: Option<Node<'a>>,
    lock_uuid: Option<Node<'a>>,
    retry: Option<Node<'a>>,
    value: Option<Node<'a>>,
    token: Option<Node<'a>>,
    inspect: Option<Node<'a>>,
    pid: Option<Node<'a>>,
    name: Option<Node<'a>>,
    interval: Option<Node<'a>>,
    after: Option<Node<'a>>,
    /// Tape index of the `keys` value (an array spans several nodes).
    keys: Option<usize>,
}

/// Number of tape nodes a value occupies.
pub(super) fn span(n: &Node<'_>) -> usize {
    match n {
        Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
        _ => 1,
    }
}

pub(super) fn kind_name(n: &Node<'_>) -> &'static str {
    match n {
        Node::String(_) => "a string",
        Node::Object { .. } => "an object",
        Node::Array { .. } => "an array",
        Node::Static(StaticNode::Null) => "null",
        Node::Static(StaticNode::Bool(_)) => "a boolean",
        Node::Static(_) => "a number",
    }
}

pub(super) fn as_str<'a>(n: Option<Node<'a>>) -> Option<&'a str> {
    match n {
        Some(Node::String(s)) => Some(s),
        _ => None,
    }
}

fn decode_tape<'a>(
    tape: &[Node<'a>],
    limits: &Limits,
    lone: Option<Lone>,
) -> Result<Request<'a>, DecodeError> {
    let len = match tape.first() {
        Some(&Node::Object { len, .. }) => len,
        Some(other) => return Err(Kind::NotAnObject(kind_name(other)).into()),
        None => return Err(Kind::InvalidJson("empty input".into()).into()),
    };
    let mut f = Fields::default();
    let mut ignored = None;
    let mut i = 1;
    for _ in 0..len {
        let (Some(&Node::String(name)), Some(&v)) = (tape.get(i), tape.get(i + 1)) else {
            return Err(Kind::InvalidJson("malformed object".into()).into());
        };
        let slot = match name {
            "type" => &mut f.ty,
            "uuid" => &mut f.uuid,
            "key" => &mut f.key,
            "ttl" => &mut f.ttl,
            "max" => &mut f.max,
            "wait" => &mut f.wait,
            "waitTimeout" => &mut f.wait_timeout,
            "mode" => &mut f.mode,
            "keepLocksAfterDeath" => &mut f.keep,
            "force" => &mut f.force,
            "_uuid" => &mut f.lock_id,
            "lockUuid" => &mut f.lock_uuid,
            "after" => &mut f.after,
            "retryCount" => &mut f.retry,
            "value" => &mut f.value,
            "token" => &mut f.token,
            "inspectCommand" => &mut f.inspect,
            "pid" => &mut f.pid,
            "name" => &mut f.name,
            "intervalMs" => &mut f.interval,
            "keys" => {
                f.keys = Some(i + 1);
                &mut ignored
            }
            _ => &mut ignored,
        };
        *slot = Some(v);
        i += 1 + span(&v);
    }
    let req = match lone {
        Some(l) => Err(l.into()),
        None => request(&f, tape, limits),
    };
    req.map_err(|kind| DecodeError {
        kind,
        uuid: as_str(f.uuid).map(Into::into),
        key: as_str(f.key).map(Into::into),
        ty: as_str(f.ty).map(Into::into),
    })
}

/// Field readers; `null` counts as absent everywhere except `ttl`.
struct Rd<'l> {
    limits: &'l Limits,
}

pub(super) fn present(n: Option<Node<'_>>) -> Option<Node<'_>> {
    n.filter(|n| !matches!(n, Node::Static(StaticNode::Null)))
}

pub(super) fn wrong(field: &'static str, expected: &'static str, n: &Node<'_>) -> Kind {
    Kind::WrongType {
        field,
        expected,
        got: kind_name(n),
    }
}

impl Rd<'_> {
    fn opt_str<'a>(
        &self,
        field: &'static str,
        n: Option<Node<'a>>,
        cap: usize,
    ) -> Result<Option<&'a str>, Kind> {
        match present(n) {
            None => Ok(None),
            Some(Node::String(s)) if s.len() <= cap => Ok(Some(s)),
            Some(Node::String(s)) => Err(Kind::Invalid {
                field,
                reason: format!("is {} bytes long; the limit is {cap}", s.len()),
            }),
            Some(other) => Err(wrong(field, "a string", &other)),
        }
    }
    fn str<'a>(
        &self,
        field: &'static str,
        n: Option<Node<'a>>,
        cap: usize,
    ) -> Result<&'a str, Kind> {
        self.opt_str(field, n, cap)?
            .ok_or(Kind::MissingField(field))
    }
    fn id<'a>(&self, field: &'static str, n: Option<Node<'a>>) -> Result<&'a str, Kind> {
        self.str(field, n, self.limits.max_id_len)
    }
    fn key<'a>(&self, n: Option<Node<'a>>) -> Result<&'a str, Kind> {
        self.str("key", n, self.limits.max_key_len)
    }
}

pub(super) fn flag(field: &'static str, n: Option<Node<'_>>, default: bool) -> Result<bool, Kind> {
    match present(n) {
        None => Ok(default),
        Some(Node::Static(StaticNode::Bool(b))) => Ok(b),
        Some(other) => Err(wrong(field, "a boolean", &other)),
    }
}

/// A non-negative integer `<= max`; integral floats (`1e3`) pass since JSON has one number type.
pub(super) fn uint(field: &'static str, n: Node<'_>, max: u64) -> Result<u64, Kind> {
    let Node::Static(s) = n else {
        return Err(wrong(field, "a non-negative integer", &n));
    };
    let v = match s {
        StaticNode::I64(i) => u64::try_from(i).ok(),
        StaticNode::U64(u) => Some(u),
        StaticNode::F64(f) if f.fract() == 0.0 && (0.0..=max as f64).contains(&f) => Some(f as u64),
        StaticNode::F64(_) => None,
        _ => return Err(wrong(field, "a non-negative integer", &n)),
    };
    v.filter(|&v| v <= max).ok_or_else(|| {
        // Keep `1e300` short in the reply instead of printing all its digits.
        let shown = match s {
            StaticNode::F64(f) if f.abs() >= 1e15 => format!("{f:e}"),
            other => other.to_string(),
        };
        Kind::Invalid {
            field,
            reason: format!("must be a non-negative integer no greater than {max}, got {shown}"),
        }
    })
}

pub(super) fn opt_uint(
    field: &'static str,
    n: Option<Node<'_>>,
    max: u64,
) -> Result<Option<u64>, Kind> {
    present(n).map(|n| uint(field, n, max)).transpose()
}

pub(super) fn ttl(n: Option<Node<'_>>) -> Result<Ttl, Kind> {
    match n {
        None | Some(Node::Static(StaticNode::Bool(false))) => Ok(Ttl::BrokerDefault),
        Some(Node::Static(StaticNode::Null)) => Ok(Ttl::Never),
        Some(n) => Ok(match uint("ttl", n, MAX_TTL_MS)? {
            0 => Ttl::BrokerDefault,
            ms => Ttl::After(Duration::from_millis(ms)),
        }),
    }
}

pub(super) fn mode(n: Option<Node<'_>>) -> Result<Mode, Kind> {
    match present(n) {
        None | Some(Node::String("exclusive")) => Ok(Mode::Exclusive),
        Some(Node::String("read")) => Ok(Mode::Read),
        Some(Node::String("write")) => Ok(Mode::Write),
        Some(Node::String(s)) => Err(Kind::Invalid {
            field: "mode",
            reason: format!("must be \"exclusive\", \"read\" or \"write\", got {s:?}"),
        }),
        Some(other) => Err(wrong("mode", "a string", &other)),
    }
}

fn request<'a>(f: &Fields<'a>, tape: &[Node<'a>], limits: &Limits) -> Result<Request<'a>, Kind> {
    let rd = Rd { limits };
    // Upstream checks `inspectCommand` before `type`.
    if let Some(cmd) = f.inspect {
        let Node::String(command) = cmd else {
            return Err(wrong("inspectCommand", "a string", &cmd));
        };
        return Ok(Request::Inspect {
            uuid: rd.opt_str("uuid", f.uuid, limits.max_id_len)?,
            command,
        });
    }
    let ty = match present(f.ty) {
        None => return Err(Kind::MissingType),
        Some(Node::String(s)) => s,
        Some(other) => return Err(wrong("type", "a string", &other)),
    };
    let uuid = || rd.id("uuid", f.uuid);
    let key = || rd.key(f.key);
    let cancel = |reason| {
        Ok(Request::Cancel {
            uuid: uuid()?,
            key: key()?,
            reason,
        })
    };
    Ok(match ty {
        "lock" => Request::Lock(LockRequest {
            uuid: uuid()?,
            key: key()?,
            ttl: ttl(f.ttl)?,
            max: match present(f.max) {
                None => None,
                Some(n) => match uint("max", n, MAX_SEMAPHORE)? {
                    0 => {
                        return Err(Kind::Invalid {
                            field: "max",
                            reason: "must be at least 1".into(),
                        });
                    }
                    m => Some(m as u32),
                },
            },
            try_lock: !flag("wait", f.wait, true)?,
            wait_timeout: opt_uint("waitTimeout", f.wait_timeout, MAX_TTL_MS)?,
            mode: mode(f.mode)?,
            keep_locks_after_death: flag("keepLocksAfterDeath", f.keep, false)?,
            retry_count: opt_uint("retryCount", f.retry, u32::MAX.into())?.unwrap_or(0) as u32,
        }),
        "lock-received" => Request::LockReceived {
            uuid: uuid()?,
            key: key()?,
        },
        "lock-received-rejected" => return cancel(CancelReason::Rejected),
        "lock-client-timeout" => return cancel(CancelReason::ClientTimeout),
        "lock-client-error" => return cancel(CancelReason::ClientError),
        "unlock" => Request::Unlock {
            uuid: uuid()?,
            key: key()?,
            lock_id: rd.opt_str("_uuid", f.lock_id, limits.max_id_len)?,
            force: flag("force", f.force, false)?,
        },
        "extend" => Request::Extend {
            uuid: uuid()?,
            key: key()?,
            lock_id: rd.id("_uuid", f.lock_id)?,
            ttl: ttl(f.ttl)?,
        },
        "acquire-many" => Request::AcquireMany(AcquireMany {
            uuid: uuid()?,
            keys: many_keys(f.keys, tape, limits)?,
            ttl: ttl(f.ttl)?,
            try_lock: !flag("wait", f.wait, true)?,
            wait_timeout: opt_uint("waitTimeout", f.wait_timeout, MAX_TTL_MS)?,
            keep_locks_after_death: flag("keepLocksAfterDeath", f.keep, false)?,
        }),
        "release-many" => Request::ReleaseMany {
            uuid: uuid()?,
            lock_id: rd.id("lockUuid", f.lock_uuid)?,
        },
        "ls" => Request::Ls {
            uuid: uuid()?,
            after: rd.opt_str("after", f.after, limits.max_key_len)?,
        },
        "lock-info-request" => Request::LockInfo {
            uuid: uuid()?,
            key: key()?,
        },
        "ping" => Request::Ping { uuid: uuid()? },
        "system-stats-request" => Request::SystemStats { uuid: uuid()? },
        "auth" => Request::Auth {
            uuid: rd.opt_str("uuid", f.uuid, limits.max_id_len)?,
            token: rd.str("token", f.token, usize::MAX)?,
        },
        "version" => Request::Version {
            value: rd.str("value", f.value, 64)?,
            keep_locks_after_death: flag("keepLocksAfterDeath", f.keep, false)?,
            // Lenient: a pid that is not a number is dropped rather than failing the client.
            pid: present(f.pid).and_then(|n| uint("pid", n, u64::from(u32::MAX)).ok()),
        },
        "hello" => Request::Hello {
            name: rd.str("name", f.name, MAX_CLIENT_NAME)?,
            pid: opt_uint("pid", f.pid, u64::from(u32::MAX))?,
        },
        "watch" => Request::Watch {
            uuid: uuid()?,
            interval_ms: opt_uint("intervalMs", f.interval, MAX_TTL_MS)?,
        },
        "version-mismatch-confirmed" => Request::VersionMismatchConfirmed,
        other => match RwOp::ALL.into_iter().find(|op| op.as_str() == other) {
            Some(op) => Request::Rw {
                op,
                uuid: uuid()?,
                key: key()?,
            },
            None => return Err(Kind::UnknownType(other.into())),
        },
    })
}

fn many_keys<'a>(
    at: Option<usize>,
    tape: &[Node<'a>],
    limits: &Limits,
) -> Result<SmallVec<[&'a str; 8]>, Kind> {
    const EXPECTED: &str = "an array of strings";
    let len = match at.and_then(|i| tape.get(i)) {
        None | Some(Node::Static(StaticNode::Null)) => return Err(Kind::MissingField("keys")),
        Some(&Node::Array { len, .. }) => len,
        Some(other) => return Err(wrong("keys", EXPECTED, other)),
    };
    let invalid = |reason: String| Kind::Invalid {
        field: "keys",
        reason,
    };
    if len == 0 || len > limits.max_many_keys {
        return Err(invalid(format!(
            "must hold 1 to {} keys, got {len}",
            limits.max_many_keys
        )));
    }
    let mut keys = SmallVec::<[&'a str; 8]>::new();
    // Elements are single nodes until the first non-string, where we stop anyway.
    let first = at.unwrap_or(0) + 1;
    let items = tape
        .get(first..first + len)
        .ok_or_else(|| Kind::InvalidJson("malformed array".into()))?;
    for item in items {
        match item {
            &Node::String(k) if k.len() > limits.max_key_len => {
                return Err(invalid(format!(
                    "holds a key of {} bytes; the limit is {}",
                    k.len(),
                    limits.max_key_len
                )));
            }
            &Node::String(k) if keys.contains(&k) => {
                return Err(invalid(format!("holds {k:?} twice")));
            }
            &Node::String(k) => keys.push(k),
            other => return Err(wrong("keys", EXPECTED, other)),
        }
    }
    Ok(keys)
}
