//! The live-mutex wire format, without I/O: requests decoded in place from one JSON object,
//! replies encoded into a byte buffer ([`encode`]), and NDJSON line framing ([`ndjson`]).
//!
//! Decoding runs simd-json's tape parser over the caller's buffer and reads the tape once;
//! every string in a [`Request`] is borrowed from that buffer (simd-json unescapes in place),
//! so a decode allocates nothing except an `acquire-many` key list longer than 8. A reused
//! [`Decoder`] also keeps simd-json's scratch buffers between messages.
//!
//! Leniency follows the npm 0.2.x client, which sends `max:null`, `pid`, `rwStatus:null` and
//! `keepLocksAfterDeath` on every message: unknown fields are ignored and `null` means "absent"
//! for every optional field except `ttl`, where `null` means "never expires". Strictness is
//! where a wrong value would change a lock decision: types, ranges and required fields.
//!
//! The per-connection loop of an NDJSON transport:
//!
//! ```
//! use live_mutex::proto::{Decoder, Reply, Request, encode, ndjson::LineFramer};
//! let (mut framer, mut decoder, mut out) = (LineFramer::default(), Decoder::default(), Vec::new());
//! framer.extend(b"{\"type\":\"ping\",\"uuid\":\"u1\"}\r\n{\"type\":\"lock-received\"}\n");
//! // An `Err` here means framing is lost: close the connection.
//! while let Some(line) = framer.next_line().unwrap() {
//!     let start = out.len();
//!     match decoder.decode(line) {
//!         Ok(Request::Ping { uuid }) => Reply::Pong { uuid, server_timestamp_ms: 0 }.encode(&mut out),
//!         Ok(_) => {} // the lock table's business
//!         Err(e) => encode::decode_error(&e, &mut out),
//!     }
//!     if out.len() > start {
//!         out.push(b'\n');
//!     }
//! }
//! let text = String::from_utf8(out).unwrap();
//! assert!(text.starts_with(r#"{"type":"pong","uuid":"u1","ping":true"#));
//! assert!(text.ends_with("\"error\":\"missing required field `uuid`\"}\n"));
//! ```

pub mod encode;
pub mod ndjson;

use simd_json::{Buffers, Node, StaticNode, Tape};
use smallvec::SmallVec;

pub use encode::Reply;

/// Largest accepted `ttl` / `waitTimeout` in ms: 2^31-1, Node's `setTimeout` ceiling (~24.8
/// days), so nothing a Node client could mean is refused and no timer arithmetic can overflow.
pub const MAX_TTL_MS: u64 = (1 << 31) - 1;
/// Largest accepted semaphore size `max`: far beyond any real use, small enough for `u32` maths.
pub const MAX_SEMAPHORE: u64 = 1_000_000;
/// The protocol version this broker speaks, sent back in `version-mismatch`.
pub const PROTOCOL_VERSION: &str = "0.2.25";

/// Caps applied while decoding, so oversized ids never reach the lock table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest `key` (and each `acquire-many` key), in bytes.
    pub max_key_len: usize,
    /// Longest `uuid` / `_uuid` / `lockUuid`, in bytes (UUIDv4 text is 36).
    pub max_id_len: usize,
    /// Most keys in one `acquire-many` (upstream's cap).
    pub max_many_keys: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_len: 1024,
            max_id_len: 256,
            max_many_keys: 64,
        }
    }
}

/// Lock lifetime requested by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// Absent, `0` or `false`: the broker's configured default (upstream treats falsy as unset).
    Default,
    /// `null`: never expires (the Node client serialises `ttl: Infinity` this way).
    Never,
    /// Milliseconds, `1..=MAX_TTL_MS`.
    Ms(u64),
}

/// Lock mode (extension); plain `exclusive` is what every 0.2.x client gets.
pub use crate::table::Mode;

/// Why a client abandons its request `uuid` (all three mean: dequeue it, or release it if granted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// `lock-received-rejected`: a grant arrived after the client stopped wanting it.
    Rejected,
    /// `lock-client-timeout`: the client's own retries ran out.
    ClientTimeout,
    /// `lock-client-error`.
    ClientError,
}

/// The legacy `RWLockWritePrefClient` messages (broker-side reader count and writer flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RwOp {
    IncrementReaders,
    DecrementReaders,
    RegisterWriteFlagCheck,
    RegisterWriteFlagAndReadersCheck,
    SetWriteFlagFalseAndBroadcast,
}

impl RwOp {
    const ALL: [RwOp; 5] = [
        RwOp::IncrementReaders,
        RwOp::DecrementReaders,
        RwOp::RegisterWriteFlagCheck,
        RwOp::RegisterWriteFlagAndReadersCheck,
        RwOp::SetWriteFlagFalseAndBroadcast,
    ];

    /// The request `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            RwOp::IncrementReaders => "increment-readers",
            RwOp::DecrementReaders => "decrement-readers",
            RwOp::RegisterWriteFlagCheck => "register-write-flag-check",
            RwOp::RegisterWriteFlagAndReadersCheck => "register-write-flag-and-readers-check",
            RwOp::SetWriteFlagFalseAndBroadcast => "set-write-flag-false-and-broadcast",
        }
    }

    /// The success reply `type` 0.2.25 answers with.
    pub fn reply_type(self) -> &'static str {
        match self {
            RwOp::IncrementReaders => "increment-readers-success",
            RwOp::DecrementReaders => "decrement-readers-success",
            RwOp::RegisterWriteFlagCheck => "register-write-flag-success",
            RwOp::RegisterWriteFlagAndReadersCheck => {
                "register-write-flag-and-readers-check-success"
            }
            RwOp::SetWriteFlagFalseAndBroadcast => "write-flag-false-and-broadcast-success",
        }
    }
}

/// `lock`: one key, one holder slot. `uuid` is both the request id and the lock id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockRequest<'a> {
    pub uuid: &'a str,
    pub key: &'a str,
    pub ttl: Ttl,
    /// Semaphore size, `1..=MAX_SEMAPHORE`; `None` (absent/null) keeps the key's current size.
    pub max: Option<u32>,
    /// `wait:false`: refuse instead of queueing.
    pub try_lock: bool,
    /// Broker-side wait deadline in ms (extension); `None` waits until granted or cancelled.
    pub wait_timeout: Option<u64>,
    pub mode: Mode,
    pub keep_locks_after_death: bool,
    /// Node client retry number; retries reuse `uuid`, so the table must treat them idempotently.
    pub retry_count: u32,
}

/// `acquire-many` (extension): all keys or none; `uuid` is the lock id for `release-many`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcquireMany<'a> {
    pub uuid: &'a str,
    /// Distinct, `1..=Limits::max_many_keys`, in request order (the table sorts).
    pub keys: SmallVec<[&'a str; 8]>,
    pub ttl: Ttl,
    pub try_lock: bool,
    pub wait_timeout: Option<u64>,
    pub keep_locks_after_death: bool,
}

/// One decoded request; strings borrow the input line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// First message of the Node client; see [`is_compatible_version`]. No reply when compatible.
    /// `keep_locks_after_death` is the client's constructor option (it shows on `version`, not on
    /// `lock`): the broker takes it as the connection's default for its locks.
    Version {
        value: &'a str,
        keep_locks_after_death: bool,
    },
    /// The client saw our `version-mismatch`: close the connection.
    VersionMismatchConfirmed,
    Lock(LockRequest<'a>),
    /// Ack of a grant; no reply.
    LockReceived {
        uuid: &'a str,
        key: &'a str,
    },
    /// `lock-received-rejected` / `lock-client-timeout` / `lock-client-error`; no reply.
    Cancel {
        uuid: &'a str,
        key: &'a str,
        reason: CancelReason,
    },
    /// `uuid` is this request's id; `lock_id` (`_uuid`) names the lock to release.
    Unlock {
        uuid: &'a str,
        key: &'a str,
        lock_id: Option<&'a str>,
        force: bool,
    },
    /// Extension: reset the holder's TTL.
    Extend {
        uuid: &'a str,
        key: &'a str,
        lock_id: &'a str,
        ttl: Ttl,
    },
    AcquireMany(AcquireMany<'a>),
    /// Extension: `lock_id` is the `uuid` of the `acquire-many`.
    ReleaseMany {
        uuid: &'a str,
        lock_id: &'a str,
    },
    Ls {
        uuid: &'a str,
    },
    LockInfo {
        uuid: &'a str,
        key: &'a str,
    },
    Ping {
        uuid: &'a str,
    },
    SystemStats {
        uuid: &'a str,
    },
    /// Extension; `uuid` is optional so a bare token line works.
    Auth {
        uuid: Option<&'a str>,
        token: &'a str,
    },
    Rw {
        op: RwOp,
        uuid: &'a str,
        key: &'a str,
    },
    /// The type-less `{"inspectCommand": ...}` of `lmx inspect`.
    Inspect {
        uuid: Option<&'a str>,
        command: &'a str,
    },
}

impl<'a> Request<'a> {
    /// The wire `type` (`"inspect"` for the type-less inspect form), for logs and echoing.
    pub fn ty(&self) -> &'static str {
        match self {
            Request::Version { .. } => "version",
            Request::VersionMismatchConfirmed => "version-mismatch-confirmed",
            Request::Lock(_) => "lock",
            Request::LockReceived { .. } => "lock-received",
            Request::Cancel {
                reason: CancelReason::Rejected,
                ..
            } => "lock-received-rejected",
            Request::Cancel {
                reason: CancelReason::ClientTimeout,
                ..
            } => "lock-client-timeout",
            Request::Cancel {
                reason: CancelReason::ClientError,
                ..
            } => "lock-client-error",
            Request::Unlock { .. } => "unlock",
            Request::Extend { .. } => "extend",
            Request::AcquireMany(_) => "acquire-many",
            Request::ReleaseMany { .. } => "release-many",
            Request::Ls { .. } => "ls",
            Request::LockInfo { .. } => "lock-info-request",
            Request::Ping { .. } => "ping",
            Request::SystemStats { .. } => "system-stats-request",
            Request::Auth { .. } => "auth",
            Request::Rw { op, .. } => op.as_str(),
            Request::Inspect { .. } => "inspect",
        }
    }

    pub fn uuid(&self) -> Option<&'a str> {
        match self {
            Request::Version { .. } | Request::VersionMismatchConfirmed => None,
            Request::Auth { uuid, .. } | Request::Inspect { uuid, .. } => *uuid,
            Request::Lock(r) => Some(r.uuid),
            Request::AcquireMany(r) => Some(r.uuid),
            Request::LockReceived { uuid, .. }
            | Request::Cancel { uuid, .. }
            | Request::Unlock { uuid, .. }
            | Request::Extend { uuid, .. }
            | Request::ReleaseMany { uuid, .. }
            | Request::Ls { uuid }
            | Request::LockInfo { uuid, .. }
            | Request::Ping { uuid }
            | Request::SystemStats { uuid }
            | Request::Rw { uuid, .. } => Some(uuid),
        }
    }
}

/// True for 0.2.x, the only line whose wire format this broker speaks.
pub fn is_compatible_version(v: &str) -> bool {
    let mut it = v.trim().split('.');
    it.next() == Some("0") && it.next().is_some_and(|m| m == "2" || m.starts_with("2-"))
}

/// What was wrong with a message. The `Display` text is what goes into the reply's `error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeErrorKind {
    #[error("message is not valid UTF-8")]
    InvalidUtf8,
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("message must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    #[error("message has no `type` field")]
    MissingType,
    #[error("unknown message type `{0}`")]
    UnknownType(String),
    #[error("missing required field `{0}`")]
    MissingField(&'static str),
    #[error("field `{field}` must be {expected}, got {got}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
        got: &'static str,
    },
    #[error("field `{field}` {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// A rejected message, with whatever `uuid` / `key` / `type` could be read so the error reply
/// reaches the waiting caller (see [`encode::decode_error`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct DecodeError {
    pub kind: DecodeErrorKind,
    pub uuid: Option<Box<str>>,
    pub key: Option<Box<str>>,
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
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            buffers: Buffers::new(512),
            tape: Tape(Vec::new()),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Decodes one JSON object in place; `buf` is clobbered (simd-json unescapes into it).
    pub fn decode<'a>(&mut self, buf: &'a mut [u8]) -> Result<Request<'a>, DecodeError> {
        let mut tape: Tape<'a> = std::mem::replace(&mut self.tape, Tape(Vec::new())).reset();
        let res = match simd_json::fill_tape(buf, &mut self.buffers, &mut tape) {
            Ok(()) => decode_tape(&tape.0, &self.limits),
            Err(e) => Err(json_error(&e).into()),
        };
        self.tape = tape.reset();
        res
    }
}

/// One-off decode with default [`Limits`]; the broker should hold a [`Decoder`] instead.
pub fn decode(buf: &mut [u8]) -> Result<Request<'_>, DecodeError> {
    Decoder::default().decode(buf)
}

fn json_error(e: &simd_json::Error) -> DecodeErrorKind {
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

type Kind = DecodeErrorKind;

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
    /// Tape index of the `keys` value (an array spans several nodes).
    keys: Option<usize>,
}

/// Number of tape nodes a value occupies.
fn span(n: &Node<'_>) -> usize {
    match n {
        Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
        _ => 1,
    }
}

fn kind_name(n: &Node<'_>) -> &'static str {
    match n {
        Node::String(_) => "a string",
        Node::Object { .. } => "an object",
        Node::Array { .. } => "an array",
        Node::Static(StaticNode::Null) => "null",
        Node::Static(StaticNode::Bool(_)) => "a boolean",
        Node::Static(_) => "a number",
    }
}

fn as_str<'a>(n: Option<Node<'a>>) -> Option<&'a str> {
    match n {
        Some(Node::String(s)) => Some(s),
        _ => None,
    }
}

fn decode_tape<'a>(tape: &[Node<'a>], limits: &Limits) -> Result<Request<'a>, DecodeError> {
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
            "retryCount" => &mut f.retry,
            "value" => &mut f.value,
            "token" => &mut f.token,
            "inspectCommand" => &mut f.inspect,
            "keys" => {
                f.keys = Some(i + 1);
                &mut ignored
            }
            _ => &mut ignored,
        };
        *slot = Some(v);
        i += 1 + span(&v);
    }
    request(&f, tape, limits).map_err(|kind| DecodeError {
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

fn present(n: Option<Node<'_>>) -> Option<Node<'_>> {
    n.filter(|n| !matches!(n, Node::Static(StaticNode::Null)))
}

fn wrong(field: &'static str, expected: &'static str, n: &Node<'_>) -> Kind {
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

fn flag(field: &'static str, n: Option<Node<'_>>, default: bool) -> Result<bool, Kind> {
    match present(n) {
        None => Ok(default),
        Some(Node::Static(StaticNode::Bool(b))) => Ok(b),
        Some(other) => Err(wrong(field, "a boolean", &other)),
    }
}

/// A non-negative integer `<= max`; integral floats (`1e3`) pass since JSON has one number type.
fn uint(field: &'static str, n: Node<'_>, max: u64) -> Result<u64, Kind> {
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

fn opt_uint(field: &'static str, n: Option<Node<'_>>, max: u64) -> Result<Option<u64>, Kind> {
    present(n).map(|n| uint(field, n, max)).transpose()
}

fn ttl(n: Option<Node<'_>>) -> Result<Ttl, Kind> {
    match n {
        None | Some(Node::Static(StaticNode::Bool(false))) => Ok(Ttl::Default),
        Some(Node::Static(StaticNode::Null)) => Ok(Ttl::Never),
        Some(n) => Ok(match uint("ttl", n, MAX_TTL_MS)? {
            0 => Ttl::Default,
            ms => Ttl::Ms(ms),
        }),
    }
}

fn mode(n: Option<Node<'_>>) -> Result<Mode, Kind> {
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
        "ls" => Request::Ls { uuid: uuid()? },
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

#[cfg(test)]
mod tests;
