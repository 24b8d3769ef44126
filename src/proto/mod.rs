//! The live-mutex wire format, both directions and without I/O: one set of types for each
//! message, each both built and parsed here, so the broker and the clients cannot disagree
//! on a field.
//!
//! - Requests ([`Request`]): decoded in place by the broker ([`Decoder`], `decode.rs`), encoded
//!   by the client ([`Request::encode`], `encode.rs`).
//! - Replies ([`Reply`], `reply.rs`): encoded by the broker ([`Reply::encode`]), decoded by the
//!   client ([`ReplyDecoder`], `reply_decode.rs`).
//! - [`session`]: the client's side of a connection as a state machine (pending requests by id,
//!   the npm broker's quirks), bytes in and bytes out.
//! - [`ndjson`]: line framing.
//!
//! The vocabulary both sides of the wire share ([`Ttl`], [`Stats`], [`HolderInfo`]) is defined
//! here once; the broker maps it to the lock table's own types. [`Mode`], which the table
//! shares too, comes from the crate's leaf `mode.rs`.
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
//!         Ok(Request::Ping { uuid }) => Reply::Pong { uuid, server_timestamp_ms: 0, version: None }.encode(&mut out),
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

mod decode;
pub mod encode;
pub mod ndjson;
mod reply;
mod reply_decode;
pub mod session;

use std::time::Duration;

use smallvec::SmallVec;

/// How a lock shares its key: the word the protocol, the lock table and the clients share.
pub use crate::mode::Mode;
pub use decode::{DecodeError, DecodeErrorKind, Decoder, MAX_CLIENT_NAME, decode};
pub use reply::{HolderInfo, LockOutcome, ManyOutcome, Reply, Stats, WaiterInfo, Who};
pub use reply_decode::{ReplyDecoder, decode_reply};

/// Largest accepted `ttl` / `waitTimeout` in ms: 2^31-1, Node's `setTimeout` ceiling (~24.8
/// days), so nothing a Node client could mean is refused and no timer arithmetic can overflow.
pub const MAX_TTL_MS: u64 = (1 << 31) - 1;
/// Largest accepted semaphore size `max`: far beyond any real use, small enough for `u32` maths.
pub const MAX_SEMAPHORE: u64 = 1_000_000;
/// The protocol version this broker speaks, sent back in `version-mismatch`.
pub const PROTOCOL_VERSION: &str = "0.2.25";

/// Caps applied while decoding, so oversized ids never reach the lock table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
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
/// How long a granted lock lives unless unlocked or extended: the one definition the client
/// API ([`crate::Ttl`]) and the broker's decoder share.
///
/// On the wire: absent, `0` or `false` is [`Ttl::BrokerDefault`] (upstream treats falsy as
/// unset); `null` is [`Ttl::Never`] (the Node client serialises `ttl: Infinity` that way);
/// a number of milliseconds, `1..=MAX_TTL_MS`, is [`Ttl::After`].
///
/// ```
/// use live_mutex::{LockOptions, Ttl};
/// use std::time::Duration;
/// let forever = LockOptions::new().ttl(Ttl::Never);
/// let short = LockOptions::new().ttl(Duration::from_secs(5)); // Ttl::After
/// assert_eq!(short.ttl, Ttl::After(Duration::from_secs(5)));
/// # drop(forever);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Ttl {
    /// Whatever the broker is configured with (the npm broker: 5 s).
    #[default]
    BrokerDefault,
    /// Until released, or until the connection drops.
    Never,
    /// Expires this long after the grant unless extended; sent in whole milliseconds.
    After(Duration),
}

impl From<Duration> for Ttl {
    fn from(d: Duration) -> Ttl {
        Ttl::After(d)
    }
}

/// Why a client abandons its request `uuid` (all three mean: dequeue it, or release it if granted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
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
#[non_exhaustive]
pub enum RwOp {
    /// `increment-readers`: one more reader on the key.
    IncrementReaders,
    /// `decrement-readers`: one reader fewer on the key.
    DecrementReaders,
    /// `register-write-flag-check`: set the key's writer flag.
    RegisterWriteFlagCheck,
    /// `register-write-flag-and-readers-check`: set the writer flag and check for readers.
    RegisterWriteFlagAndReadersCheck,
    /// `set-write-flag-false-and-broadcast`: clear the writer flag.
    SetWriteFlagFalseAndBroadcast,
}

impl RwOp {
    pub(crate) const ALL: [RwOp; 5] = [
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
// Built with struct syntax by whoever drives a `Session` themselves: every field is the wire's,
// and a new one is a protocol change.
#[allow(clippy::exhaustive_structs)]
pub struct LockRequest<'a> {
    /// `uuid`: the request id, and the lock id once granted.
    pub uuid: &'a str,
    /// `key`: the resource to lock.
    pub key: &'a str,
    /// `ttl`, in ms on the wire; see [`Ttl`] for absent, `0` and `null`.
    pub ttl: Ttl,
    /// Semaphore size, `1..=MAX_SEMAPHORE`; `None` (absent/null) keeps the key's current size.
    pub max: Option<u32>,
    /// `wait:false`: refuse instead of queueing.
    pub try_lock: bool,
    /// Broker-side wait deadline in ms (extension); `None` waits until granted or cancelled.
    pub wait_timeout: Option<u64>,
    /// `mode`; absent or `null` is [`Mode::Exclusive`].
    pub mode: Mode,
    /// `keepLocksAfterDeath`: keep the lock when this connection closes; `false` (or absent)
    /// falls back to the connection's default from `version`.
    pub keep_locks_after_death: bool,
    /// `retryCount`: Node client retry number; retries reuse `uuid`, so the table must treat them idempotently.
    pub retry_count: u32,
}

/// `acquire-many` (extension): all keys or none; `uuid` is the lock id for `release-many`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::exhaustive_structs)] // as `LockRequest`
pub struct AcquireMany<'a> {
    /// `uuid`: the request id, and the lock id `release-many` names (as `lockUuid`).
    pub uuid: &'a str,
    /// `keys`: distinct, `1..=Limits::max_many_keys`, in request order (the table sorts).
    pub keys: SmallVec<[&'a str; 8]>,
    /// `ttl`, in ms on the wire, for every key; see [`Ttl`].
    pub ttl: Ttl,
    /// `wait:false`: refuse at once if any key is taken instead of queueing.
    pub try_lock: bool,
    /// `waitTimeout` in ms; `None` (absent/null) waits until granted or cancelled.
    pub wait_timeout: Option<u64>,
    /// `keepLocksAfterDeath`: keep the locks when this connection closes; `false` (or absent)
    /// falls back to the connection's default from `version`.
    pub keep_locks_after_death: bool,
}

/// One decoded request; strings borrow the input line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request<'a> {
    /// First message of the Node client; see [`is_compatible_version`]. No reply when compatible.
    /// `keep_locks_after_death` is the client's constructor option (it shows on `version`, not on
    /// `lock`): the broker takes it as the connection's default for its locks.
    Version {
        /// `value`: the client's protocol version, e.g. `"0.2.25"`.
        value: &'a str,
        /// `keepLocksAfterDeath`: the connection's default for its locks.
        keep_locks_after_death: bool,
        /// `pid`: the client's process id (the Node client sends it); `None` if absent or
        /// invalid (ignored rather than refused). For `lmx info` and the status
        /// page.
        pid: Option<u64>,
    },
    /// Extension: names the connection (`lmx info` shows it beside each of its locks). No
    /// reply; the Rust clients send their program name and pid right after connecting.
    Hello {
        /// `name`: the client's name, at most [`MAX_CLIENT_NAME`] bytes.
        name: &'a str,
        /// `pid`: the client's process id; `None` if absent or `null`.
        pid: Option<u64>,
    },
    /// Extension, read-only: a `watch` snapshot of the whole broker now, then every
    /// `interval_ms` (clamped by the broker) for as long as the connection lives. Another
    /// `watch` changes the interval. The status page and `lmx top` use it.
    Watch {
        /// `uuid`: carried by every snapshot this watch sends.
        uuid: &'a str,
        /// `intervalMs`: ms between snapshots; `None` (absent/null) is the broker's default.
        interval_ms: Option<u64>,
    },
    /// The client saw our `version-mismatch`: close the connection.
    VersionMismatchConfirmed,
    /// `lock`: see [`LockRequest`].
    Lock(LockRequest<'a>),
    /// Ack of a grant; no reply.
    LockReceived {
        /// `uuid`: the granted request's id.
        uuid: &'a str,
        /// `key`: the granted key.
        key: &'a str,
    },
    /// `lock-received-rejected` / `lock-client-timeout` / `lock-client-error`; no reply.
    Cancel {
        /// `uuid`: the `lock` request to abandon.
        uuid: &'a str,
        /// `key`: the key it asked for.
        key: &'a str,
        /// Which of the three `type`s it came as.
        reason: CancelReason,
    },
    /// `uuid` is this request's id; `lock_id` (`_uuid`) names the lock to release.
    Unlock {
        /// `uuid`: this request's id.
        uuid: &'a str,
        /// `key`: the key to release.
        key: &'a str,
        /// `_uuid`: the lock to release; `None` (absent/null) is refused unless `force`.
        lock_id: Option<&'a str>,
        /// `force`: release every holder of the key (an admin act; see `restrict_admin`).
        force: bool,
    },
    /// Extension: reset the holder's TTL.
    Extend {
        /// `uuid`: this request's id.
        uuid: &'a str,
        /// `key`: the held key.
        key: &'a str,
        /// `_uuid`: the lock to extend (required).
        lock_id: &'a str,
        /// `ttl`: the new lifetime from now, in ms on the wire; see [`Ttl`].
        ttl: Ttl,
    },
    /// Extension: see [`AcquireMany`].
    AcquireMany(AcquireMany<'a>),
    /// Extension: `lock_id` is the `uuid` of the `acquire-many`.
    ReleaseMany {
        /// `uuid`: this request's id.
        uuid: &'a str,
        /// `lockUuid`: the `acquire-many`'s `uuid`.
        lock_id: &'a str,
    },
    /// `ls`: list the keys that have holders or waiters, one page at a time.
    Ls {
        /// `uuid`: this request's id.
        uuid: &'a str,
        /// `after` (ext): the `next` of the previous page; absent for the first page.
        after: Option<&'a str>,
    },
    /// `lock-info-request`: who holds and waits on one key.
    LockInfo {
        /// `uuid`: this request's id.
        uuid: &'a str,
        /// `key`: the key asked about.
        key: &'a str,
    },
    /// `ping`: answered with `pong` and the broker's clock.
    Ping {
        /// `uuid`: this request's id.
        uuid: &'a str,
    },
    /// `system-stats-request`: the broker's counters.
    SystemStats {
        /// `uuid`: this request's id.
        uuid: &'a str,
    },
    /// Extension; `uuid` is optional so a bare token line works.
    Auth {
        /// `uuid`: this request's id; `None` (absent/null) for a bare token line.
        uuid: Option<&'a str>,
        /// `token`: the shared secret the broker was configured with.
        token: &'a str,
    },
    /// One of the legacy read/write mutex messages; see [`RwOp`].
    Rw {
        /// Which message (its `type`).
        op: RwOp,
        /// `uuid`: this request's id.
        uuid: &'a str,
        /// `key`: the read/write mutex's key.
        key: &'a str,
    },
    /// The type-less `{"inspectCommand": ...}` of `lmx inspect`.
    Inspect {
        /// `uuid`: this request's id; `None` if absent or `null`.
        uuid: Option<&'a str>,
        /// `inspectCommand`: the command text.
        command: &'a str,
    },
}

impl<'a> Request<'a> {
    /// The wire `type` (`"inspect"` for the type-less inspect form), for logs and echoing.
    pub fn ty(&self) -> &'static str {
        match self {
            Request::Version { .. } => "version",
            Request::Hello { .. } => "hello",
            Request::Watch { .. } => "watch",
            Request::VersionMismatchConfirmed => "version-mismatch-confirmed",
            Request::Lock(_) => "lock",
            Request::LockReceived { .. } => "lock-received",
            Request::Cancel { reason, .. } => reason.as_str(),
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

    /// The request's `uuid`, the id its reply carries; `None` for messages without one
    /// (`version`, `hello`, `version-mismatch-confirmed`, and `auth`/`inspect` sent without).
    pub fn uuid(&self) -> Option<&'a str> {
        match self {
            Request::Version { .. } | Request::Hello { .. } | Request::VersionMismatchConfirmed => {
                None
            }
            Request::Auth { uuid, .. } | Request::Inspect { uuid, .. } => *uuid,
            Request::Lock(r) => Some(r.uuid),
            Request::AcquireMany(r) => Some(r.uuid),
            Request::LockReceived { uuid, .. }
            | Request::Cancel { uuid, .. }
            | Request::Unlock { uuid, .. }
            | Request::Extend { uuid, .. }
            | Request::ReleaseMany { uuid, .. }
            | Request::Ls { uuid, .. }
            | Request::LockInfo { uuid, .. }
            | Request::Ping { uuid }
            | Request::Watch { uuid, .. }
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

#[cfg(test)]
mod roundtrip_tests;
#[cfg(test)]
mod tests;
