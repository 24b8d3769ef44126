//! The table's vocabulary: who asks ([`ConnId`]), what they ask for ([`LockRequest`],
//! [`ManyRequest`], [`Mode`], [`Ttl`], [`Wait`]), the limits it enforces ([`Config`]) and what
//! comes back ([`LockOutcome`], [`ManyOutcome`], [`Cancelled`], [`Event`], [`TableError`]).
//! Kept apart from the operations so a reader sees the whole contract on one page.

use std::time::{Duration, Instant};

use super::Name;
#[cfg(doc)]
use super::Table;

/// A connection as the table knows it. Never a slab index: ids are not reused, so a late event
/// for a closed connection cannot reach the next one in the same slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// How a lock shares its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Up to the key's `max` holders (a mutex when `max` is 1, a semaphore otherwise).
    #[default]
    Exclusive,
    /// Shares with other readers only.
    Read,
    /// Alone on the key, whatever its `max`.
    Write,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Exclusive => "exclusive",
            Mode::Read => "read",
            Mode::Write => "write",
        }
    }
}

/// How long a granted lock lives unless unlocked or extended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Ttl {
    /// The table's configured default.
    #[default]
    Default,
    /// Until unlocked, or its connection dies.
    Never,
    After(Duration),
}

/// What a request does when it cannot be granted at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Wait {
    /// Try-lock: refused at once, never queued.
    No,
    #[default]
    Forever,
    /// Queued until this instant; then it ends as timed out.
    Until(Instant),
}

/// A request for one key. `id` is the client's request uuid and becomes the lock id.
#[derive(Clone, Copy, Debug)]
pub struct LockRequest<'a> {
    pub conn: ConnId,
    pub key: &'a str,
    pub id: &'a str,
    pub mode: Mode,
    /// Semaphore capacity; `None` takes the key's current one (1 for a new key).
    pub max: Option<u32>,
    pub ttl: Ttl,
    pub wait: Wait,
    /// Survive the connection's death (until TTL or an unlock by id).
    pub keep_after_disconnect: bool,
}

impl<'a> LockRequest<'a> {
    /// An exclusive lock that waits forever with the default TTL.
    pub fn new(conn: ConnId, key: &'a str, id: &'a str) -> Self {
        LockRequest {
            conn,
            key,
            id,
            mode: Mode::Exclusive,
            max: None,
            ttl: Ttl::Default,
            wait: Wait::Forever,
            keep_after_disconnect: false,
        }
    }
}

/// A request for several keys at once, granted all together or not at all.
#[derive(Clone, Copy, Debug)]
pub struct ManyRequest<'a> {
    pub conn: ConnId,
    pub keys: &'a [&'a str],
    pub id: &'a str,
    pub ttl: Ttl,
    pub wait: Wait,
    pub keep_after_disconnect: bool,
}

/// Limits and defaults.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// TTL of a lock whose request names none (`Ttl::Default`); `None` = no expiry.
    pub default_ttl: Option<Duration>,
    pub max_key_len: usize,
    pub max_waiters_per_key: usize,
    /// Holds plus queued requests of one connection.
    pub max_requests_per_conn: usize,
    pub max_keys_per_many: usize,
    /// Keys held or waited for at once, across all connections: bounds the memory that
    /// keep-after-disconnect locks of connections long gone can pin.
    pub max_keys: usize,
    /// First fencing token. The broker passes wall-clock microseconds (or a persisted high-water
    /// mark) so tokens keep rising across restarts.
    pub token_seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            default_ttl: Some(Duration::from_millis(5000)),
            max_key_len: 1024,
            max_waiters_per_key: 10_000,
            max_requests_per_conn: 10_000,
            max_keys_per_many: 64,
            max_keys: 1_000_000,
            token_seed: 1,
        }
    }
}

/// Facts of a grant that the reply carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub token: u64,
    /// Waiters still queued on the key.
    pub queue_len: usize,
    pub readers: usize,
}

/// The immediate result of [`Table::lock`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockOutcome {
    Granted(Grant),
    /// Queued; an [`Event::Granted`] or [`Event::TimedOut`] follows.
    Queued {
        queue_len: usize,
        readers: usize,
    },
    /// Try-lock refused; nothing was queued.
    Busy {
        queue_len: usize,
        readers: usize,
    },
    /// The wait deadline had already passed and the key was not free.
    TimedOut,
}

/// The immediate result of [`Table::lock_many`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManyOutcome {
    /// Every key, in canonical (sorted) order, with its fencing token.
    Granted(Vec<(Name, u64)>),
    Queued,
    Busy,
    TimedOut,
}

/// What [`Table::cancel`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cancelled {
    Dequeued,
    Released,
    NotFound,
}

/// Something that happened to a request other than the one being made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A queued request was granted.
    Granted {
        conn: ConnId,
        id: Name,
        key: Name,
        grant: Grant,
    },
    /// A queued acquire-many got its last key.
    ManyGranted {
        conn: ConnId,
        id: Name,
        tokens: Vec<(Name, u64)>,
    },
    /// A queued request reached its wait deadline and was dropped. `key` is `None` for an
    /// acquire-many.
    TimedOut {
        conn: ConnId,
        id: Name,
        key: Option<Name>,
        waited: Duration,
    },
    /// A holder's TTL ended; it no longer holds the key (for an acquire-many, none of its keys).
    Expired { conn: ConnId, id: Name, key: Name },
}

/// Errors of one request. None of them changes the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    #[error("key is {len} bytes long; the limit is {max}")]
    KeyTooLong { len: usize, max: usize },
    #[error("max must be at least 1")]
    InvalidMax,
    #[error("key is in use with max {current}; this request asked for max {requested}")]
    MaxMismatch { current: u32, requested: u32 },
    #[error("{0} requests already wait for this key (the limit)")]
    QueueFull(usize),
    #[error("this connection already has {0} locks and requests (the limit)")]
    TooManyRequests(usize),
    #[error("lock id is already in use by another request")]
    DuplicateId,
    #[error("unlock needs the lock id (_uuid) or force")]
    IdRequired,
    #[error(
        "lock id does not hold this key: the lock was lost (expired or forced), already released, or never granted"
    )]
    NotHeld,
    #[error("lock id is still waiting for this key, it does not hold it")]
    StillWaiting,
    #[error("this lock belongs to an acquire-many; release it with release-many")]
    GroupMember,
    #[error("the broker already tracks {0} keys (the limit)")]
    TooManyKeys(usize),
    #[error("acquire-many needs between 1 and {max} keys, got {got}")]
    BadKeyCount { got: usize, max: usize },
}
