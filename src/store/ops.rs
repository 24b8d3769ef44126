//! The store interface's vocabulary: what the core asks ([`StoreOp`]), what comes back
//! ([`StoreEvent`]), and why a request failed ([`StoreError`]). Requests borrow the table's
//! request types (`LockRequest`, `ManyRequest`, `Ttl`): every store keeps the table's rules.
//! Both stores speak it: the in-memory table answers in the call, the etcd store from its
//! thread (it takes an [`OwnedOp`](super::OwnedOp), the same op owning its strings).

use std::time::{Duration, Instant};

use crate::table::{ConnId, Grant, LockRequest, ManyRequest, Mode, Name, Stats, TableError, Ttl};

/// What the core asks of a store. Answers come back as [`StoreEvent`]s: at once from the
/// in-memory table, later from etcd. A `tag` comes back unchanged with the answer, to match
/// it to the question.
#[derive(Clone, Copy, Debug)]
pub enum StoreOp<'a> {
    /// Answered by `Granted`, `Queued` (then `Granted` or `TimedOut`), `Busy`, `TimedOut` or
    /// `Failed`.
    Lock(LockRequest<'a>),
    /// The client gave the request up (`lock-client-timeout`, `lock-received-rejected`, an ack
    /// probe's answer): a waiter leaves the queue, a holder is released. Only the connection
    /// that made the request may; an id naming an acquire-many of that connection drops the
    /// whole group. No answer.
    Cancel {
        /// The connection that made the request.
        conn: ConnId,
        /// The lock key.
        key: &'a str,
        /// The lock id.
        id: &'a str,
    },
    /// Release `id`'s hold on `key` (from any connection: the id is the credential), or with
    /// `force` every holder of `key`. Answered by `Unlocked` or `Failed` with the same tag.
    Unlock {
        /// The connection asking.
        conn: ConnId,
        /// Returned with the answer.
        tag: u64,
        /// The lock key.
        key: &'a str,
        /// The lock id to release; `None` only with `force`.
        id: Option<&'a str>,
        /// Release every holder of the key (an id, if named, must hold it).
        force: bool,
    },
    /// The holder's TTL restarts from now. Answered by `Extended` or `Failed` with the same
    /// tag.
    Extend {
        /// The connection asking.
        conn: ConnId,
        /// Returned with the answer.
        tag: u64,
        /// The lock key.
        key: &'a str,
        /// The holder's lock id (an acquire-many's extends the whole group).
        id: &'a str,
        /// The new lifetime, from now.
        ttl: Ttl,
    },
    /// Answered by `ManyGranted`, `ManyQueued` (then `ManyGranted` or `TimedOut`), `ManyBusy`,
    /// `TimedOut` or `Failed`.
    LockMany(ManyRequest<'a>),
    /// Release every key of acquire-many `id`. Answered by `ManyReleased` or `Failed` with the
    /// same tag.
    ReleaseMany {
        /// The connection asking.
        conn: ConnId,
        /// Returned with the answer.
        tag: u64,
        /// The group's lock id.
        id: &'a str,
    },
    /// The connection closed: its waiters go, its holds are released (except kept ones).
    Disconnect {
        /// The connection that closed.
        conn: ConnId,
    },
    /// One page of the keys held or waited for, for `ls`: those after the cursor `after`
    /// (the last cursor of an earlier page), until their names reach `budget` bytes.
    /// Answered by `Keys` with the same tag.
    Keys {
        /// Returned with the answer.
        tag: u64,
        /// Where the page starts: after this cursor (one the store gave); `None`: the first.
        after: Option<&'a str>,
        /// Bytes of key names after which the page ends (it lists at least one key).
        budget: usize,
    },
    /// Answered by `Info` with the same tag.
    Info {
        /// Returned with the answer.
        tag: u64,
        /// The lock key.
        key: &'a str,
    },
    /// What an unlock reply reports of a key: its waiters and readers (for an unlock the
    /// 0.2.x read/write emulation already released). Answered by `Counts` with the same tag.
    Counts {
        /// Returned with the answer.
        tag: u64,
        /// The lock key.
        key: &'a str,
    },
    /// Answered by `Stats` with the same tag.
    Stats {
        /// Returned with the answer.
        tag: u64,
    },
    /// What the live views (`watch`, `lmx top`, the status page) show: the totals and up to
    /// `max_keys` keys with their holders and waiters, in one answer (for etcd, one read).
    /// Answered by `Snapshot` with the same tag.
    Snapshot {
        /// Returned with the answer.
        tag: u64,
        /// Most keys listed; the totals count every key.
        max_keys: usize,
    },
}

/// Which op a [`StoreEvent::Failed`] answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// [`StoreOp::Lock`] (also a waiter dropped because its etcd session was lost).
    Lock,
    /// [`StoreOp::Unlock`].
    Unlock,
    /// [`StoreOp::Extend`].
    Extend,
    /// [`StoreOp::LockMany`] (also a waiting group dropped because its etcd session was lost).
    LockMany,
    /// [`StoreOp::ReleaseMany`].
    ReleaseMany,
}

/// What happened, for the core to tell its clients. `conn` is the connection the event is
/// for; it may have closed meanwhile (the core then gives a grant back at once).
#[derive(Clone, Debug)]
pub enum StoreEvent {
    /// Recorded by the store: the answer to a `Lock`, or later for a queued one. etcd knows
    /// no queue length or reader count at the grant: both are 0 there.
    Granted {
        /// The connection that asked.
        conn: ConnId,
        /// The lock id.
        id: Name,
        /// The lock key.
        key: Name,
        /// Its fencing token (etcd: its request key's create revision), queue and readers.
        grant: Grant,
    },
    /// Recorded and waiting.
    Queued {
        /// The connection that asked.
        conn: ConnId,
        /// The lock id.
        id: Name,
        /// The lock key.
        key: Name,
        /// Waiters on the key, this one included (etcd: older requests, held or waiting).
        queue_len: usize,
        /// Read-mode holders of the key (etcd: 0).
        readers: usize,
    },
    /// Try-lock refused; nothing is queued.
    Busy {
        /// The connection that asked.
        conn: ConnId,
        /// The lock id.
        id: Name,
        /// The lock key.
        key: Name,
        /// Waiters on the key (etcd: older requests, held or waiting).
        queue_len: usize,
        /// Read-mode holders of the key (etcd: 0).
        readers: usize,
    },
    /// A request reached its wait deadline (at once, for a deadline already past); nothing is
    /// held for it.
    TimedOut {
        /// The connection that asked.
        conn: ConnId,
        /// The lock id.
        id: Name,
        /// The lock key; `None` for an acquire-many.
        key: Option<Name>,
        /// How long since the store took the request.
        waited: Duration,
    },
    /// A holder's TTL ended (for an acquire-many, every key of the group is released, and
    /// `key` is its first).
    Expired {
        /// The holder's connection.
        conn: ConnId,
        /// The lock id.
        id: Name,
        /// The lock key.
        key: Name,
    },
    /// A holder was released by someone else's forced unlock (by connection `by`). Nobody
    /// is told: its next unlock or extend answers "not held", as on the npm broker.
    Released {
        /// The holder's connection.
        conn: ConnId,
        /// The lock id.
        id: Name,
        /// The lock key.
        key: Name,
        /// The connection whose forced unlock released it.
        by: ConnId,
    },
    /// A held lock is no longer held for a reason its client must hear of at once (etcd: its
    /// key deleted by another broker, or its lease possibly expired). For an acquire-many,
    /// `key` is the member that went; the group's other keys are released too.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    Lost {
        /// The holder's connection.
        conn: ConnId,
        /// The lock id.
        id: Name,
        /// The lock key.
        key: Name,
        /// Why, for the client's error message.
        reason: String,
    },
    /// The answer to `Unlock`, with the waiters left on the key (etcd: 0).
    Unlocked {
        /// The op's tag.
        tag: u64,
        /// The lock key.
        key: Name,
        /// The lock id the unlock named.
        id: Option<Name>,
        /// Waiters left on the key.
        queue_len: usize,
    },
    /// The answer to `Extend`: the holder's TTL restarted.
    Extended {
        /// The op's tag.
        tag: u64,
    },
    /// An acquire-many holds every one of its keys.
    ManyGranted {
        /// The connection that asked.
        conn: ConnId,
        /// The group's lock id.
        id: Name,
        /// Every key, sorted, with its fencing token.
        tokens: Vec<(Name, u64)>,
    },
    /// An acquire-many is recorded and waits for some of its keys.
    ManyQueued {
        /// The connection that asked.
        conn: ConnId,
        /// The group's lock id.
        id: Name,
    },
    /// A try-lock acquire-many was refused; nothing is held for it.
    ManyBusy {
        /// The connection that asked.
        conn: ConnId,
        /// The group's lock id.
        id: Name,
    },
    /// The answer to `ReleaseMany`: every key of the group was released.
    ManyReleased {
        /// The op's tag.
        tag: u64,
    },
    /// An op failed; nothing is held for it (for an unlock, extend or release-many, the error
    /// says what the id holds: nothing, or it still waits).
    Failed {
        /// The connection that asked.
        conn: ConnId,
        /// Which op failed, so the core knows which reply to send.
        op: Op,
        /// The op's tag for `Unlock`, `Extend` and `ReleaseMany`; 0 for the others, whose `id`
        /// names them.
        tag: u64,
        /// The lock id the op named.
        id: Option<Name>,
        /// The lock key, when the op names one (for an acquire-many's, its first key, when
        /// known).
        key: Option<Name>,
        /// What went wrong.
        error: StoreError,
    },
    /// The answer to `Keys`.
    Keys {
        /// The op's tag.
        tag: u64,
        /// The page (etcd: keys of every broker, in key order).
        keys: Result<KeyPage, StoreError>,
    },
    /// The answer to `Counts` (etcd: waiters are the requests that wait, readers the holders
    /// in read mode, of every broker).
    Counts {
        /// The op's tag.
        tag: u64,
        /// Requests waiting for the key.
        queue_len: usize,
        /// Holders of the key in read mode.
        readers: usize,
    },
    /// The answer to `Info`; `Ok(None)`: nobody holds or waits for the key.
    Info {
        /// The op's tag.
        tag: u64,
        /// The key's holders and waiters.
        info: Result<Option<KeyView>, StoreError>,
    },
    /// The answer to `Stats`.
    Stats {
        /// The op's tag.
        tag: u64,
        /// The totals, or why they could not be read. etcd: keys, holders and waiters over
        /// every broker; connections (with a lease), groups, grants, expiries and wait
        /// time-outs this store's; no wait histogram and no next token (a waiter granted next
        /// carries its older create revision).
        stats: Result<Stats, StoreError>,
    },
    /// The answer to `Snapshot`.
    Snapshot {
        /// The op's tag.
        tag: u64,
        /// The totals and the keys listed, or why they could not be read.
        snapshot: Result<Snapshot, StoreError>,
    },
}

/// One page of an `ls` listing.
#[derive(Clone, Debug, Default)]
pub struct KeyPage {
    /// The keys, each with its cursor: the `after` that resumes the listing behind it (the
    /// table: the key's place; etcd: the key itself).
    pub keys: Vec<(String, Name)>,
    /// Keys follow the last one listed.
    pub more: bool,
}

/// The store's locks at one moment, for the live views.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The totals, as `Stats` answers them (so `keys` may count more keys than are listed).
    pub stats: Stats,
    /// The keys listed (etcd: in key order, from every broker), each with its holders and
    /// waiters.
    pub keys: Vec<(Name, KeyView)>,
}

/// One key as the store sees it, for `lock-info`.
#[derive(Clone, Debug, Default)]
pub struct KeyView {
    /// Its semaphore capacity for exclusive holders.
    pub max: u32,
    /// Its holders (from every broker, for etcd).
    pub holders: Vec<HolderView>,
    /// Its waiters, in queue order.
    pub waiters: Vec<WaiterView>,
    /// How many of the holders hold it in [`Mode::Read`].
    pub readers: usize,
}

/// One holder. `conn` is set when it is a connection of this broker (its identity is known
/// here); `since` and `ttl_remaining` when the store knows them.
#[derive(Clone, Debug)]
pub struct HolderView {
    /// Its lock id (the group's, for an acquire-many member).
    pub id: Name,
    /// Its connection, when that is one of this broker's.
    pub conn: Option<ConnId>,
    /// How it shares the key.
    pub mode: Mode,
    /// Its fencing token.
    pub token: u64,
    /// Time left before its TTL ends, when the store knows it.
    pub ttl_remaining: Option<Duration>,
    /// When it was granted, when the store knows it.
    pub since: Option<Instant>,
}

/// One waiter, in queue order.
#[derive(Clone, Debug)]
pub struct WaiterView {
    /// Its request id, the lock id once granted.
    pub id: Name,
    /// Its connection, when that is one of this broker's.
    pub conn: Option<ConnId>,
    /// How it wants to share the key.
    pub mode: Mode,
    /// When it was queued, when the store knows it.
    pub since: Option<Instant>,
}

/// Why a store refused or failed a request: one enum for the layer. The table's rule errors
/// are the same in every store (the etcd store keeps the table's rules, with its texts).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The request broke a rule of the lock table: `max` 0 or another than the key's, a lock
    /// id in use, an unlock without an id, an id that holds nothing or still waits, a group
    /// member unlocked alone, a bad acquire-many key count.
    #[error(transparent)]
    Rule(#[from] TableError),
    /// The `etcd://` URL does not parse; the text says why.
    #[cfg(feature = "etcd")]
    #[error("bad etcd URL {0}")]
    BadUrl(String),
    /// An etcd call failed, or the etcd store's thread could not start; the text says which.
    #[cfg(feature = "etcd")]
    #[error("etcd: {0}")]
    Etcd(String),
    /// An etcd call passed the store's `op_timeout` (the duration given).
    #[cfg(feature = "etcd")]
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    /// An extend named a holder that another broker made: its TTL timer runs on that broker,
    /// so only that broker can restart it (the text names its store).
    #[cfg(feature = "etcd")]
    #[error("lock id is held through another broker ({0}); extend it there")]
    OtherBroker(String),
    /// A waiting request's etcd key was deleted (by someone else, or its lease ended); it is no
    /// longer queued.
    #[cfg(feature = "etcd")]
    #[error("the request's key was deleted from etcd while it waited")]
    Vanished,
    /// The waiter's etcd lease may have expired (no keepalive succeeded for 4/5 of its TTL);
    /// it is dropped. The text says why.
    #[cfg(feature = "etcd")]
    #[error("the connection's etcd lease may have expired (keepalives failing): {0}")]
    SessionLost(String),
    /// The etcd store's thread has ended, so the op was not taken.
    #[cfg(feature = "etcd")]
    #[error("the etcd store has stopped")]
    Stopped,
    /// An `ls` cursor that no page of this store gave.
    #[error("`after` must be the `next` of an earlier ls reply")]
    BadCursor,
}

impl StoreError {
    /// The rule broken, when it is one.
    pub(crate) fn rule(&self) -> Option<TableError> {
        match self {
            StoreError::Rule(e) => Some(e.clone()),
            _ => None,
        }
    }
}

impl StoreOp<'_> {
    /// The answer to this op when the store could not take it at all (its thread stopped):
    /// `None` for the ops that are never answered (`Cancel`, `Disconnect`).
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub(crate) fn refused(&self, error: StoreError) -> Option<StoreEvent> {
        let (conn, op, tag, id, key) = match *self {
            StoreOp::Lock(r) => (r.conn, Op::Lock, 0, Some(r.id), Some(r.key)),
            StoreOp::LockMany(r) => (r.conn, Op::LockMany, 0, Some(r.id), None),
            StoreOp::Unlock {
                conn, tag, key, id, ..
            } => (conn, Op::Unlock, tag, id, Some(key)),
            StoreOp::Extend {
                conn, tag, key, id, ..
            } => (conn, Op::Extend, tag, Some(id), Some(key)),
            StoreOp::ReleaseMany { conn, tag, id } => (conn, Op::ReleaseMany, tag, Some(id), None),
            StoreOp::Keys { tag, .. } => {
                let keys = Err(error);
                return Some(StoreEvent::Keys { tag, keys });
            }
            StoreOp::Info { tag, .. } => {
                let info = Err(error);
                return Some(StoreEvent::Info { tag, info });
            }
            StoreOp::Counts { tag, .. } => {
                // A read that could not be made: the reply says nothing waits.
                return Some(StoreEvent::Counts {
                    tag,
                    queue_len: 0,
                    readers: 0,
                });
            }
            StoreOp::Stats { tag } => {
                let stats = Err(error);
                return Some(StoreEvent::Stats { tag, stats });
            }
            StoreOp::Snapshot { tag, .. } => {
                let snapshot = Err(error);
                return Some(StoreEvent::Snapshot { tag, snapshot });
            }
            StoreOp::Cancel { .. } | StoreOp::Disconnect { .. } => return None,
        };
        Some(StoreEvent::Failed {
            conn,
            op,
            tag,
            id: id.map(Name::from),
            key: key.map(Name::from),
            error,
        })
    }
}
