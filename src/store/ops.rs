//! The store interface's vocabulary: what the core asks ([`StoreOp`]), what comes back
//! ([`StoreEvent`]), and why a request failed ([`StoreError`]). Requests borrow the table's
//! request types (`LockRequest`, `ManyRequest`, `Ttl`): every store keeps the table's rules.

use std::time::{Duration, Instant};

use crate::table::{ConnId, Grant, LockRequest, ManyRequest, Mode, Name, TableError, Ttl};

/// What the core asks of a store. Answers come back as [`StoreEvent`]s: at once from the
/// in-memory table, later from etcd.
#[derive(Clone, Copy, Debug)]
pub(crate) enum StoreOp<'a> {
    /// Answered by `Granted`, `Queued` (then `Granted` or `TimedOut`), `Busy`, `TimedOut` or
    /// `Failed`.
    Lock(LockRequest<'a>),
    /// The client gave the request up (`lock-client-timeout`, `lock-received-rejected`, an ack
    /// probe's answer): a waiter leaves the queue, a holder is released. No answer.
    Cancel {
        conn: ConnId,
        key: &'a str,
        id: &'a str,
    },
    /// Answered by `Unlocked` or `Failed` with the same tag.
    Unlock {
        conn: ConnId,
        tag: u64,
        key: &'a str,
        id: Option<&'a str>,
        force: bool,
    },
    /// The holder's TTL restarts from now. Answered by `Extended` or `Failed` with the same
    /// tag.
    Extend {
        conn: ConnId,
        tag: u64,
        key: &'a str,
        id: &'a str,
        ttl: Ttl,
    },
    /// Answered by `ManyGranted`, `ManyQueued` (then `ManyGranted` or `TimedOut`), `ManyBusy`,
    /// `TimedOut` or `Failed`.
    LockMany(ManyRequest<'a>),
    /// Answered by `ManyReleased` or `Failed` with the same tag.
    ReleaseMany { conn: ConnId, tag: u64, id: &'a str },
    /// The connection closed: its waiters go, its holds are released (except kept ones).
    Disconnect { conn: ConnId },
    /// Answered by `Keys` with the same tag.
    Keys { tag: u64 },
    /// Answered by `Info` with the same tag.
    Info { tag: u64, key: &'a str },
    /// Answered by `Stats` with the same tag.
    Stats { tag: u64 },
}

/// Which op a [`StoreEvent::Failed`] answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Lock,
    Unlock,
    Extend,
    LockMany,
    ReleaseMany,
}

/// What happened, for the core to tell its clients. `conn` is the connection the event is
/// for; it may have closed meanwhile (the core then gives a grant back at once).
#[derive(Clone, Debug)]
pub(crate) enum StoreEvent {
    /// Recorded by the store: the answer to a `Lock`, or later for a queued one.
    Granted {
        conn: ConnId,
        id: Name,
        key: Name,
        grant: Grant,
    },
    Queued {
        conn: ConnId,
        id: Name,
        key: Name,
        queue_len: usize,
        readers: usize,
    },
    /// Try-lock refused; nothing is queued.
    Busy {
        conn: ConnId,
        id: Name,
        key: Name,
        queue_len: usize,
        readers: usize,
    },
    /// A request reached its wait deadline (at once, for a deadline already past); `key` is
    /// `None` for an acquire-many.
    TimedOut {
        conn: ConnId,
        id: Name,
        key: Option<Name>,
        waited: Duration,
    },
    /// A holder's TTL ended (for an acquire-many, every key of the group is released).
    Expired {
        conn: ConnId,
        id: Name,
        key: Name,
    },
    /// A holder was released by someone else's forced unlock (by connection `by`). Nobody
    /// is told: its next unlock or extend answers "not held", as on the npm broker.
    Released {
        conn: ConnId,
        id: Name,
        key: Name,
        by: ConnId,
    },
    /// A held lock is no longer held for a reason its client must hear of at once (etcd: its
    /// key deleted by another broker, or its lease possibly expired).
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    Lost {
        conn: ConnId,
        id: Name,
        key: Name,
        reason: String,
    },
    /// The answer to `Unlock`, with the waiters left on the key.
    Unlocked {
        tag: u64,
        key: Name,
        id: Option<Name>,
        queue_len: usize,
    },
    Extended {
        tag: u64,
    },
    /// Every key, sorted, with its fencing token.
    ManyGranted {
        conn: ConnId,
        id: Name,
        tokens: Vec<(Name, u64)>,
    },
    ManyQueued {
        conn: ConnId,
        id: Name,
    },
    ManyBusy {
        conn: ConnId,
        id: Name,
    },
    ManyReleased {
        tag: u64,
    },
    /// An op failed; nothing is held for it. `tag` is the op's for `Unlock`, `Extend` and
    /// `ReleaseMany` (0 for the others, whose `id` names them).
    Failed {
        conn: ConnId,
        op: Op,
        tag: u64,
        id: Option<Name>,
        key: Option<Name>,
        error: StoreError,
    },
    Keys {
        tag: u64,
        keys: Result<Vec<Name>, StoreError>,
    },
    /// `Ok(None)`: nobody holds or waits for the key.
    Info {
        tag: u64,
        info: Result<Option<KeyView>, StoreError>,
    },
    Stats {
        tag: u64,
        stats: Result<StoreStats, StoreError>,
    },
}

/// One key as the store sees it, for `lock-info`.
#[derive(Clone, Debug, Default)]
pub(crate) struct KeyView {
    pub max: u32,
    pub holders: Vec<HolderView>,
    pub waiters: Vec<WaiterView>,
    pub readers: usize,
}

/// One holder. `conn` is set when it is a connection of this broker (its identity is known
/// here); `since` and `ttl_remaining` when the store knows them.
#[derive(Clone, Debug)]
pub(crate) struct HolderView {
    pub id: Name,
    pub conn: Option<ConnId>,
    pub mode: Mode,
    pub token: u64,
    pub ttl_remaining: Option<Duration>,
    pub since: Option<Instant>,
}

/// One waiter, in queue order.
#[derive(Clone, Debug)]
pub(crate) struct WaiterView {
    pub id: Name,
    pub conn: Option<ConnId>,
    pub mode: Mode,
    pub since: Option<Instant>,
}

/// Totals over every key the store knows (for etcd: every broker's).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct StoreStats {
    pub keys: usize,
    pub holders: usize,
    pub waiters: usize,
    pub grants: u64,
}

/// Why a store refused or failed a request. One enum for the layer, nesting each store's own;
/// the table's rule errors are the same in every store (the etcd store nests them too).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum StoreError {
    /// The request broke a rule of the lock table.
    #[error(transparent)]
    Rule(#[from] TableError),
    /// The etcd store could not do it (unreachable, slow, stopped, a lease lost).
    #[cfg(feature = "etcd")]
    #[error(transparent)]
    Etcd(crate::store::etcd::StoreError),
}

impl StoreError {
    /// The rule broken, when it is one (the etcd store's rule errors are the table's).
    pub(crate) fn rule(&self) -> Option<TableError> {
        match self {
            StoreError::Rule(e) => Some(e.clone()),
            #[cfg(feature = "etcd")]
            StoreError::Etcd(crate::store::etcd::StoreError::Rule(e)) => Some(e.clone()),
            #[cfg(feature = "etcd")]
            StoreError::Etcd(_) => None,
        }
    }
}

#[cfg(feature = "etcd")]
impl From<crate::store::etcd::StoreError> for StoreError {
    fn from(e: crate::store::etcd::StoreError) -> Self {
        StoreError::Etcd(e)
    }
}
