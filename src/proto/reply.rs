//! The reply vocabulary: every message a broker sends back, as one set of types that the
//! broker encodes (`encode.rs`) and the client decodes (`reply_decode.rs`).

use std::borrow::Cow;
use std::time::Duration;

use super::{Mode, RwOp};

/// Immediate answer to a `lock` (or the later push with the same `uuid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockOutcome {
    /// `fencing_token` is `None` only from the npm broker, which has none.
    Granted {
        /// `fencingToken`.
        fencing_token: Option<u64>,
    },
    /// Enqueued: a push with `acquired:true` follows (or a timeout).
    Queued,
    /// `wait:false` and not grantable now: never queued.
    Refused,
    /// `acquired:false` with no `queued` field: the npm broker's answer to a contended lock
    /// (it always queues). This broker never sends it.
    NotGranted,
}

/// Answer to an `acquire-many`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManyOutcome<'a> {
    /// Each key with its fencing token.
    Granted {
        /// `fencingTokens`: an object from key to token.
        fencing_tokens: Cow<'a, [(&'a str, u64)]>,
    },
    /// `queued:true`: enqueued; a push with `acquired:true` follows (or a timeout).
    Queued,
    /// `queued:false`: `wait:false` and some key is taken; nothing was queued.
    Refused {
        /// `contendedKey`: a key that was taken; `None` if the broker does not say.
        contended_key: Option<&'a str>,
    },
    /// `timedOut:true`, pushed when the broker-side `waitTimeout` expires.
    TimedOut {
        /// How long it waited, in ms (read back from the `error` text).
        waited_ms: u64,
    },
}

/// One holder in a `lock-info-response` (what [`crate::Client::info`] reports).
///
/// ```
/// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
/// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
/// let g = client.lock_with("k", &live_mutex::LockOptions::new().ttl(std::time::Duration::from_secs(9)))?;
/// let h = &client.info("k")?.holders[0];
/// assert_eq!((&*h.id, h.fencing_token, h.mode.as_str()), (g.id(), g.fencing_token(), "exclusive"));
/// assert!(h.ttl_remaining.unwrap() <= std::time::Duration::from_secs(9));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HolderInfo<'a> {
    /// Lock id; empty when the broker hides it (`null` on the wire): under `--restrict-admin`
    /// a lock id is shown only to the connection that holds it and to admins, since anyone who
    /// knows it may unlock or extend the lock.
    pub id: Cow<'a, str>,
    /// Fencing token of the grant (`None` if the broker does not say).
    pub fencing_token: Option<u64>,
    /// Exclusive, read or write.
    pub mode: Mode,
    /// Time left before expiry, in whole milliseconds on the wire; `None`: never expires.
    pub ttl_remaining: Option<Duration>,
    /// When it was granted, Unix milliseconds by the broker's clock (`heldSince`).
    pub held_since_ms: Option<u64>,
    /// The connection that holds it (all `None` from the npm broker, or once the connection
    /// is gone and the lock outlives it).
    pub who: Who<'a>,
}

impl HolderInfo<'_> {
    /// The same holder, owning its strings.
    pub fn into_owned(self) -> HolderInfo<'static> {
        HolderInfo {
            id: Cow::Owned(self.id.into_owned()),
            fencing_token: self.fencing_token,
            mode: self.mode,
            ttl_remaining: self.ttl_remaining,
            held_since_ms: self.held_since_ms,
            who: self.who.into_owned(),
        }
    }
}

/// Who is behind a connection, as the broker knows it: what a hung test's "who holds my
/// lock?" needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Who<'a> {
    /// `ip:port` of a TCP peer; `pid N uid U` of a Unix-socket peer (from `SO_PEERCRED`).
    pub peer: Option<Cow<'a, str>>,
    /// The name the client gave in `hello` (the Rust clients: `program[pid]`).
    pub name: Option<Cow<'a, str>>,
    /// The pid the client reported (`hello`, or the Node client's `version`).
    pub pid: Option<u64>,
}

impl Who<'_> {
    /// The same identity, owning its strings.
    pub fn into_owned(self) -> Who<'static> {
        Who {
            peer: self.peer.map(|p| Cow::Owned(p.into_owned())),
            name: self.name.map(|n| Cow::Owned(n.into_owned())),
            pid: self.pid,
        }
    }
}

/// One queued request in a `lock-info-response` (`waiters`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WaiterInfo<'a> {
    /// Its lock id (the request's uuid); empty when hidden, as in [`HolderInfo::id`].
    pub id: Cow<'a, str>,
    /// Exclusive, read or write (`mode`).
    pub mode: Mode,
    /// When it was queued, Unix milliseconds by the broker's clock (`waitingSince`).
    pub waiting_since_ms: Option<u64>,
    /// The connection that waits (`peer`, `name`, `pid`; all `None` from the npm broker).
    pub who: Who<'a>,
}

impl WaiterInfo<'_> {
    /// The same waiter, owning its strings.
    pub fn into_owned(self) -> WaiterInfo<'static> {
        WaiterInfo {
            id: Cow::Owned(self.id.into_owned()),
            mode: self.mode,
            waiting_since_ms: self.waiting_since_ms,
            who: self.who.into_owned(),
        }
    }
}

/// Broker-wide counters of a `system-stats-response` (what [`crate::Client::stats`] returns).
/// A counter the broker leaves out reads as 0.
///
/// ```
/// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
/// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
/// let s = client.stats()?;
/// assert!(s.connections >= 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Keys with holders or waiters.
    pub keys: u64,
    /// Held locks.
    pub holders: u64,
    /// Queued requests.
    pub waiters: u64,
    /// Open connections.
    pub connections: u64,
    /// Grants since start.
    pub grants: u64,
    /// `pid` (extension): the broker's process id; `None` when it does not say.
    pub pid: Option<u64>,
    /// `uptimeMs` (extension): milliseconds since the broker started; `None` when it does not
    /// say.
    pub uptime_ms: Option<u64>,
}

/// Every reply shape a broker sends (docs/protocol.md shows each on the wire): encoded by this
/// broker ([`Reply::encode`]), decoded by the client ([`super::ReplyDecoder`]). Lists are
/// [`Cow`] so the broker encodes from borrowed slices and the decoder fills owned ones, both
/// with strings borrowed from the line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply<'a> {
    /// `lock`: the answer to a `lock`, or the later grant pushed with the same `uuid`.
    Lock {
        /// `uuid`: the `lock` request's id.
        uuid: &'a str,
        /// `key`: the requested key.
        key: &'a str,
        /// `acquired`, `queued` and `fencingToken`.
        outcome: LockOutcome,
        /// `lockRequestCount`: waiters queued on the key.
        lock_request_count: u64,
        /// `readersCount`: the key's read holders (`mode:"read"`).
        readers_count: u64,
    },
    /// Pushed when a broker-side `waitTimeout` expires.
    LockTimedOut {
        /// `uuid`: the `lock` request's id.
        uuid: &'a str,
        /// `key`: the requested key.
        key: &'a str,
        /// How long it waited, in ms (sent inside the `error` text).
        waited_ms: u64,
    },
    /// 0.2.x re-election push: the waiter was dequeued and must re-send its `lock`.
    Reelection {
        /// `uuid`: the `lock` request's id.
        uuid: &'a str,
        /// `key`: the requested key.
        key: &'a str,
        /// `lockRequestCount`: waiters queued on the key.
        lock_request_count: u64,
    },
    /// `lost`: the lock had already expired or been forced away (then `unlocked` is false).
    Unlock {
        /// `uuid`: the `unlock` request's id.
        uuid: &'a str,
        /// `key`: the key named in the request.
        key: &'a str,
        /// `unlocked`: whether a lock was released.
        unlocked: bool,
        /// `lockRequestCount`: waiters queued on the key.
        lock_request_count: u64,
        /// `lost:true` (left out when false).
        lost: bool,
        /// `error`: why it failed; `None` (left out) on success.
        error: Option<&'a str>,
        /// `warning`: the npm broker's note (it says `unlocked:true` with one for a lock that
        /// had already gone); `None` (left out) when there is none. This broker sends none.
        warning: Option<&'a str>,
    },
    /// `extend` (extension): the answer to an `extend`.
    Extend {
        /// `uuid`: the `extend` request's id.
        uuid: &'a str,
        /// `key`: the key named in the request.
        key: &'a str,
        /// `extended`: whether the TTL was reset.
        extended: bool,
        /// `error`: why it failed; `None` (left out) on success.
        error: Option<&'a str>,
    },
    /// `lock_id` is the `uuid` of the `acquire-many`.
    AcquireMany {
        /// `uuid`: the `acquire-many` request's id.
        uuid: &'a str,
        /// `lockUuid`: the lock id to pass to `release-many`.
        lock_id: &'a str,
        /// `acquired`, `queued`, `fencingTokens`, `contendedKey`, `timedOut`.
        outcome: ManyOutcome<'a>,
    },
    /// `release-many` (extension): the answer to a `release-many`.
    ReleaseMany {
        /// `uuid`: the `release-many` request's id.
        uuid: &'a str,
        /// `lockUuid`: the `acquire-many` released.
        lock_id: &'a str,
        /// `released`: whether its locks were released.
        released: bool,
        /// `error`: why it failed; `None` (left out) on success.
        error: Option<&'a str>,
    },
    /// `ls`: the answer to an `ls`.
    Ls {
        /// `uuid`: the `ls` request's id.
        uuid: &'a str,
        /// `ls_result`: the keys that have holders or waiters (one page of them).
        keys: Cow<'a, [&'a str]>,
        /// `next` (ext): there are more keys; ask for them with `after` set to this.
        next: Option<&'a str>,
    },
    /// `is_locked` is sent as is: the npm broker says `true` for a key it knows, holders or not.
    LockInfo {
        /// `uuid`: the `lock-info-request`'s id.
        uuid: &'a str,
        /// `key`: the key asked about.
        key: &'a str,
        /// `isLocked`.
        is_locked: bool,
        /// `lockRequestCount`: waiters queued on the key.
        lock_request_count: u64,
        /// `readersCount`: the key's read holders (`mode:"read"`).
        readers_count: u64,
        /// `max`: the key's semaphore size; `None`: not reported (the npm broker).
        max: Option<u32>,
        /// `holders` (their ids are also sent as `lockholderUUIDs`).
        holders: Cow<'a, [HolderInfo<'a>]>,
        /// `truncated` (ext, sent only when true): `holders` or `waiters` lists only the first
        /// of them, to keep the reply within the broker's output cap; the counts are exact.
        truncated: bool,
        /// `waiters`: the queue, in order (empty from the npm broker).
        waiters: Cow<'a, [WaiterInfo<'a>]>,
    },
    /// `pong`: the answer to a `ping`.
    Pong {
        /// `uuid`: the `ping`'s id.
        uuid: &'a str,
        /// `serverTimestamp`: the broker's wall clock, Unix milliseconds.
        server_timestamp_ms: u64,
        /// `version` (extension): the broker's version; `None` (left out) when not told.
        version: Option<&'a str>,
    },
    /// `system-stats-response`: the answer to a `system-stats-request`.
    SystemStats {
        /// `uuid`: the request's id.
        uuid: &'a str,
        /// `stats`: the broker's counters.
        stats: Stats,
    },
    /// `auth` (extension): the answer to an `auth`.
    Auth {
        /// `uuid`: the `auth` request's id; `None` (left out) if it had none.
        uuid: Option<&'a str>,
        /// `authenticated`: whether the token was accepted.
        authenticated: bool,
        /// `error`: why it was refused; `None` (left out) on success.
        error: Option<&'a str>,
    },
    /// `version-mismatch`: the client speaks another protocol line; the broker will close.
    VersionMismatch {
        /// `versions.clientVersion`: the client's `version` value (`versions.brokerVersion`
        /// is always [`super::PROTOCOL_VERSION`]).
        client_version: &'a str,
    },
    /// Legacy RW success; `readers_count` is sent only by the two `register-*` replies.
    Rw {
        /// Which request this answers; its `type` is [`RwOp::reply_type`].
        op: RwOp,
        /// `uuid`: the request's id.
        uuid: &'a str,
        /// `key`: the read/write mutex's key.
        key: &'a str,
        /// `readersCount` (with `writerFlag:false`): the mutex's reader count, sent only by the
        /// `register-*` replies.
        readers_count: u64,
    },
    /// Legacy RW: a deferred `register-*` request may now proceed.
    BroadcastResult {
        /// `uuid`: the deferred request's id.
        uuid: &'a str,
        /// `key`: the read/write mutex's key.
        key: &'a str,
    },
    /// `inspect`: the answer to an `inspectCommand`.
    Inspect {
        /// `uuid`: the request's id; `None` (left out) if it had none.
        uuid: Option<&'a str>,
        /// `inspectResult`: the count asked for.
        result: u64,
    },
    /// A failed request. `ty` echoes the request type (`"error"` when unknown); for types whose
    /// success flag the Node client checks, the flag is sent as `false` too.
    Error {
        /// `type`: the request's type; `None` is sent as `"error"`.
        ty: Option<&'a str>,
        /// `uuid`: the request's id, if it could be read; `None` is left out.
        uuid: Option<&'a str>,
        /// `key`: the request's key, if it could be read; `None` is left out.
        key: Option<&'a str>,
        /// `error`: what was wrong, for people.
        error: &'a str,
    },
}
