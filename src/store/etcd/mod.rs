//! The etcd lock store: lock decisions kept in an etcd cluster, shared by any number of brokers.
//!
//! Why etcd's own Mutex recipe, extended, and not the v3lock `Lock` RPC: `Lock` has no
//! try-lock, semaphores or read/write locks, holds one blocking call per waiter, and grants an
//! unrenewed 60 s lease when given none. The recipe here:
//! - **Sessions.** Each client connection gets one lease ([`EtcdConfig::session_ttl`], default
//!   10 s), renewed every TTL/3 and revoked when the connection closes ([`StoreOp::Disconnect`])
//!   or the store stops; if the broker dies, etcd deletes its keys one TTL later.
//! - **Acquire.** A request is the key `PREFIX/<key>/<id>`, put-if-absent with the lease in one
//!   Txn that also reads the key's other requests. Its create revision orders it; it is
//!   granted when no conflicting older request exists (the rules are in `rules.rs`).
//!   Otherwise it watches for deletes from the revision it read, and before it reports a grant
//!   it checks again in etcd that its own key still exists and nothing older conflicts.
//! - **Fencing token.** The key's create revision: it rises across every broker and restarts.
//! - **Try-lock** deletes its key when not first. **Wait time-outs** and **per-holder TTLs**
//!   are timers of this store that delete the key (leases count whole seconds, 2 s at least,
//!   too coarse for lock TTLs). **Unlock** is owner-checked by lock id (the id is part of the
//!   key) and deletes it; a forced unlock deletes every holder of the key.
//! - **keepLocksAfterDeath** requests sit on a lease of the store, not of the connection, kept
//!   alive while the store runs. Bound: such a lock outlives its connection, not its broker: it
//!   ends at an unlock by id (from any broker), at its TTL, or one session TTL after its
//!   broker stops or loses etcd.
//! - **When etcd is unreachable or slow** every call has a deadline
//!   ([`EtcdConfig::op_timeout`]): the request gets [`StoreEvent::Error`], never a grant etcd
//!   did not record. When a lease may have expired (keepalives failing for 4/5 of its TTL, so
//!   before etcd can delete the keys), each of its locks gets [`StoreEvent::Lost`] and each of
//!   its waiters an error: no client is left believing it holds a lock.
//!
//! Threading: etcd I/O runs on a thread of its own, a current-thread tokio runtime. The owner
//! (the broker's mio reactor) submits [`StoreOp`]s without blocking and drains
//! [`StoreEvent`]s with [`EtcdStore::poll_event`]; after pushing events the store calls the
//! wake hook given to [`EtcdStore::start`] (the reactor's `mio::Waker::wake`).

mod config;
mod query;
mod request;
mod rules;
mod session;
mod worker;

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use config::EtcdConfig;
pub use rules::Mode;

/// A connection of the broker, as the store knows it (ids are never reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// How long a granted lock lives unless unlocked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Ttl {
    /// [`EtcdConfig::default_ttl`].
    #[default]
    Default,
    /// Until unlocked, or its connection dies.
    Never,
    After(Duration),
}

/// What a request does when it cannot be granted at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Wait {
    /// Try-lock: refused at once, its key deleted.
    No,
    #[default]
    Forever,
    /// Queued until this instant, then [`StoreEvent::TimedOut`].
    Until(Instant),
}

/// A request for one key. `id` is the client's request uuid and becomes the lock id.
#[derive(Clone, Debug)]
pub struct LockSpec {
    pub conn: ConnId,
    pub key: String,
    pub id: String,
    pub mode: Mode,
    /// Semaphore capacity; `None` takes the one declared by the oldest request of the key (1
    /// when none declares one).
    pub max: Option<u32>,
    pub ttl: Ttl,
    pub wait: Wait,
    /// Survive the connection's death (see the module docs for the bound).
    pub keep_after_disconnect: bool,
}

impl LockSpec {
    /// An exclusive lock that waits forever with the default TTL.
    pub fn new(conn: ConnId, key: &str, id: &str) -> LockSpec {
        LockSpec {
            conn,
            key: key.to_owned(),
            id: id.to_owned(),
            mode: Mode::Exclusive,
            max: None,
            ttl: Ttl::Default,
            wait: Wait::Forever,
            keep_after_disconnect: false,
        }
    }
}

/// What the owner asks of the store. Answers come back as [`StoreEvent`]s.
#[derive(Clone, Debug)]
pub enum StoreOp {
    Lock(LockSpec),
    /// Release `id`'s hold on `key` (from any connection and any broker: the id is the
    /// credential), or with `force` every holder of `key`.
    Unlock {
        conn: ConnId,
        key: String,
        id: Option<String>,
        force: bool,
    },
    /// The connection closed: drop its waiters, release its holds (except keep-after-death
    /// ones) and revoke its lease.
    Disconnect {
        conn: ConnId,
    },
    /// List the keys held or waited for. `tag` comes back with the answer.
    Keys {
        conn: ConnId,
        tag: u64,
    },
    Info {
        conn: ConnId,
        tag: u64,
        key: String,
    },
    Stats {
        conn: ConnId,
        tag: u64,
    },
}

/// One holder, for inspection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HolderInfo {
    pub id: String,
    /// The store (broker) that made the request, and its connection there.
    pub owner: String,
    pub conn: u64,
    pub mode: Mode,
    pub token: u64,
}

/// One key, for inspection, as etcd records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub key: String,
    pub max: u32,
    pub holders: Vec<HolderInfo>,
    /// Lock ids of the waiters, oldest first.
    pub queue: Vec<String>,
    pub readers: usize,
}

/// Totals: etcd's view of every key under the prefix, plus this store's own counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub keys: usize,
    pub holders: usize,
    pub waiters: usize,
    /// Connections of this store with a lease.
    pub sessions: usize,
    pub grants: u64,
    pub expiries: u64,
    pub wait_timeouts: u64,
    /// etcd's current revision: the next grant's token is above it.
    pub revision: u64,
}

/// What happened, for the owner to tell its clients.
#[derive(Clone, Debug)]
pub enum StoreEvent {
    /// Recorded in etcd: `token` is the request key's create revision.
    Granted {
        conn: ConnId,
        id: String,
        key: String,
        token: u64,
    },
    /// Recorded and waiting behind `ahead` older requests.
    Queued {
        conn: ConnId,
        id: String,
        key: String,
        ahead: usize,
    },
    /// Try-lock refused; its key was deleted.
    Busy {
        conn: ConnId,
        id: String,
        key: String,
        ahead: usize,
    },
    TimedOut {
        conn: ConnId,
        id: String,
        key: String,
        waited: Duration,
    },
    /// The holder's TTL ended; its key was deleted.
    Expired {
        conn: ConnId,
        id: String,
        key: String,
    },
    Unlocked {
        conn: ConnId,
        key: String,
        id: Option<String>,
        released: usize,
    },
    /// A held lock is no longer held (its key was deleted by someone else, or its lease may
    /// have expired). The client must be told at once.
    Lost {
        conn: ConnId,
        id: String,
        key: String,
        reason: String,
    },
    /// A request failed; nothing is held for it.
    Error {
        conn: ConnId,
        id: Option<String>,
        key: String,
        error: StoreError,
    },
    Keys {
        conn: ConnId,
        tag: u64,
        keys: Result<Vec<String>, StoreError>,
    },
    Info {
        conn: ConnId,
        tag: u64,
        info: Result<Option<KeyInfo>, StoreError>,
    },
    Stats {
        conn: ConnId,
        tag: u64,
        stats: Result<Stats, StoreError>,
    },
}

/// Errors of the etcd store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("bad etcd URL {0}")]
    BadUrl(String),
    #[error("etcd: {0}")]
    Etcd(String),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("max must be at least 1")]
    InvalidMax,
    #[error("key is in use with max {current}; this request asked for max {requested}")]
    MaxMismatch { current: u32, requested: u32 },
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
    #[error("the request's key was deleted from etcd while it waited")]
    Vanished,
    #[error("the connection's etcd lease may have expired (keepalives failing): {0}")]
    SessionLost(String),
    #[error("the etcd store has stopped")]
    Stopped,
}

/// The handle the owner keeps. Dropping it revokes every lease of the store (bounded by
/// [`EtcdConfig::op_timeout`]) and stops its thread.
pub struct EtcdStore {
    ops: tokio::sync::mpsc::UnboundedSender<worker::Cmd>,
    events: mpsc::Receiver<StoreEvent>,
    thread: Option<JoinHandle<()>>,
    owner: String,
}

impl EtcdStore {
    /// Starts the store's thread and checks that etcd answers (within `op_timeout`).
    pub fn start(
        cfg: EtcdConfig,
        wake: Box<dyn Fn() + Send + Sync>,
    ) -> Result<EtcdStore, StoreError> {
        let (ops, events, thread, owner) = worker::spawn(cfg, wake)?;
        Ok(EtcdStore {
            ops,
            events,
            thread: Some(thread),
            owner,
        })
    }

    /// Hands `op` to the store's thread; never blocks.
    pub fn submit(&self, op: StoreOp) -> Result<(), StoreError> {
        self.ops
            .send(worker::Cmd::Op(op))
            .map_err(|_| StoreError::Stopped)
    }

    /// The next event, if any; the wake hook is called after events are pushed.
    pub fn poll_event(&self) -> Option<StoreEvent> {
        self.events.try_recv().ok()
    }

    /// This store's owner name, as recorded in the values of its request keys.
    pub fn owner(&self) -> &str {
        &self.owner
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        let _ = self.ops.send(worker::Cmd::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
