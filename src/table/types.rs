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

/// How a lock shares its key: the shared word (`src/mode.rs`), so a request's mode reaches the
/// table (and the etcd store) without a translation.
pub use crate::mode::Mode;

/// How long a granted lock lives unless unlocked or extended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Ttl {
    /// The table's configured default.
    #[default]
    Default,
    /// Until unlocked, or its connection dies.
    Never,
    /// Expires this long after the grant (or after the last [`Table::extend`]).
    After(Duration),
}

/// What a request does when it cannot be granted at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Wait {
    /// Try-lock: refused at once, never queued.
    No,
    /// Queued until granted, cancelled, or its connection dies.
    #[default]
    Forever,
    /// Queued until this instant; then it ends as timed out.
    Until(Instant),
}

/// A request for one key. `id` is the client's request uuid and becomes the lock id.
#[derive(Clone, Copy, Debug)]
pub struct LockRequest<'a> {
    /// The asking connection: its death releases the lock unless `keep_after_disconnect`.
    pub conn: ConnId,
    /// The resource; at most [`Config::max_key_len`] bytes.
    pub key: &'a str,
    /// The lock id, unique among the key's holders and waiters; a resend with the same id on
    /// the same connection reports the request's current state instead of queueing it twice.
    pub id: &'a str,
    /// Exclusive (up to `max`), shared read, or sole write.
    pub mode: Mode,
    /// Semaphore capacity; `None` takes the key's current one (1 for a new key). A value other
    /// than the current one of a key in use is refused ([`TableError::MaxMismatch`]).
    pub max: Option<u32>,
    /// How long the lock lives once granted.
    pub ttl: Ttl,
    /// What to do if the key is not free now.
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
    /// The asking connection: its death releases every key unless `keep_after_disconnect`.
    pub conn: ConnId,
    /// 1 to [`Config::max_keys_per_many`] keys, any order; duplicates count once. They are
    /// taken exclusively, one by one in sorted order, so two groups never deadlock.
    pub keys: &'a [&'a str],
    /// The group's lock id; [`Table::release_many`] and [`Table::cancel`] take it.
    pub id: &'a str,
    /// Lifetime of each key, counted from that key's own grant; the first to expire releases
    /// the whole group, even one still waiting for its other keys.
    pub ttl: Ttl,
    /// What to do if some key is not free now; a time-out gives back every key taken so far.
    pub wait: Wait,
    /// Survive the connection's death (until TTL or [`Table::release_many`]).
    pub keep_after_disconnect: bool,
}

/// Limits and defaults.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// TTL of a lock whose request names none (`Ttl::Default`); `None` = no expiry.
    pub default_ttl: Option<Duration>,
    /// Longest key, in bytes; longer ones are refused ([`TableError::KeyTooLong`]).
    pub max_key_len: usize,
    /// Queued requests on one key; a request that would queue beyond it is refused
    /// ([`TableError::QueueFull`]), so one hot key cannot grow memory without bound.
    pub max_waiters_per_key: usize,
    /// Holds plus queued requests of one connection.
    pub max_requests_per_conn: usize,
    /// Queued requests across the whole table (an acquire-many waits on one key at a time, and
    /// counts once); a request that would queue beyond it is refused
    /// ([`TableError::TooManyWaiters`]). Bounds the memory of waiters, which the per-key and
    /// per-connection caps alone would let grow with the number of connections.
    pub max_waiters: usize,
    /// Most keys in one acquire-many ([`TableError::BadKeyCount`]).
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
            max_waiters: 100_000,
            max_keys_per_many: 64,
            max_keys: 1_000_000,
            token_seed: 1,
        }
    }
}

/// Facts of a grant that the reply carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Fencing token: strictly higher than every token granted before, on any key, so a
    /// resource can refuse writes from a holder that has since lost the lock.
    pub token: u64,
    /// Waiters still queued on the key.
    pub queue_len: usize,
    /// Read-mode holders of the key, this one included if it is a reader.
    pub readers: usize,
}

/// The immediate result of [`Table::lock`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockOutcome {
    /// Held now (or already held: a resend of a granted request).
    Granted(Grant),
    /// Queued; an [`Event::Granted`] or [`Event::TimedOut`] follows.
    Queued {
        /// Waiters on the key, this one included.
        queue_len: usize,
        /// Read-mode holders of the key.
        readers: usize,
    },
    /// Try-lock refused; nothing was queued.
    Busy {
        /// Waiters on the key.
        queue_len: usize,
        /// Read-mode holders of the key.
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
    /// Waiting for some key; an [`Event::ManyGranted`] or [`Event::TimedOut`] follows. Keys
    /// taken meanwhile stay held by the group but count as no lock until all are.
    Queued,
    /// Try-lock refused (some key was not free); nothing was taken or queued.
    Busy,
    /// The wait deadline had already passed and some key was not free; nothing was taken.
    TimedOut,
}

/// What [`Table::cancel`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cancelled {
    /// It was still waiting and left the queue (an acquire-many also gave back its keys).
    Dequeued,
    /// It was already granted and is now released.
    Released,
    /// No request of that id on that key for this connection: already ended, or not its own.
    NotFound,
}

/// Something that happened to a request other than the one being made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A queued request was granted.
    Granted {
        /// The connection that asked.
        conn: ConnId,
        /// Its lock id.
        id: Name,
        /// The key now held.
        key: Name,
        /// Token and key counts for the reply.
        grant: Grant,
    },
    /// A queued acquire-many got its last key.
    ManyGranted {
        /// The connection that asked.
        conn: ConnId,
        /// The group's lock id.
        id: Name,
        /// Every key, in sorted order, with its fencing token.
        tokens: Vec<(Name, u64)>,
    },
    /// A queued request reached its wait deadline and was dropped. `key` is `None` for an
    /// acquire-many.
    TimedOut {
        /// The connection that asked.
        conn: ConnId,
        /// Its lock id.
        id: Name,
        /// The key it waited for; `None` for an acquire-many.
        key: Option<Name>,
        /// From queueing to the deadline.
        waited: Duration,
    },
    /// A holder's TTL ended; it no longer holds the key (for an acquire-many, none of its keys).
    Expired {
        /// The holder's connection (which may already be gone, for a kept lock).
        conn: ConnId,
        /// Its lock id (the group's, for an acquire-many).
        id: Name,
        /// The key whose TTL ended.
        key: Name,
    },
}

/// Errors of one request. None of them changes the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    /// The key exceeds [`Config::max_key_len`].
    #[error("key is {len} bytes long; the limit is {max}")]
    KeyTooLong {
        /// The key's length, in bytes.
        len: usize,
        /// The limit, in bytes.
        max: usize,
    },
    /// `max: Some(0)`: a semaphore nobody could ever hold.
    #[error("max must be at least 1")]
    InvalidMax,
    #[error("key is in use with max {current}; this request asked for max {requested}")]
    /// A key's `max` is fixed while anyone holds or waits for it; this request named another.
    MaxMismatch {
        /// The key's `max` now.
        current: u32,
        /// The `max` the request named.
        requested: u32,
    },
    #[error("{0} requests already wait for this key (the limit)")]
    /// The key already has [`Config::max_waiters_per_key`] waiters (the field); a try-lock or
    /// an immediate grant is never refused for this.
    QueueFull(usize),
    #[error("this connection already has {0} locks and requests (the limit)")]
    /// The request would take its connection past [`Config::max_requests_per_conn`] holds and
    /// queued requests (the field).
    TooManyRequests(usize),
    #[error("lock id is already in use by another request")]
    /// The lock id is held or awaited on the key by another connection or by an acquire-many,
    /// or names another connection's acquire-many.
    DuplicateId,
    #[error("unlock needs the lock id (_uuid) or force")]
    /// An unlock named neither a lock id nor `force`: releasing "whoever holds it" is only
    /// for an admin.
    IdRequired,
    #[error(
        "lock id does not hold this key: the lock was lost (expired or forced), already released, or never granted"
    )]
    /// The id holds nothing here (unlock, extend, release-many): the caller must assume its
    /// lock is gone.
    NotHeld,
    #[error("lock id is still waiting for this key, it does not hold it")]
    /// The id is queued, not granted: an unlock cannot release it (cancel dequeues it).
    StillWaiting,
    #[error("this lock belongs to an acquire-many; release it with release-many")]
    /// A plain unlock named a key held by an acquire-many; releasing one key alone would
    /// break the all-or-nothing rule.
    GroupMember,
    #[error("{0} requests already wait across the broker (the limit); try again later")]
    /// The request would queue past [`Config::max_waiters`] (the field); a try-lock or an
    /// immediate grant is never refused for this.
    TooManyWaiters(usize),
    #[error("the broker already tracks {0} keys (the limit)")]
    /// The request's new keys would take the table past [`Config::max_keys`] (the field).
    TooManyKeys(usize),
    #[error("acquire-many needs between 1 and {max} keys, got {got}")]
    /// An acquire-many named no key, or more than [`Config::max_keys_per_many`].
    BadKeyCount {
        /// Keys named, duplicates included.
        got: usize,
        /// The limit.
        max: usize,
    },
}
