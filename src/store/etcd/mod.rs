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
//!   Otherwise it listens for deletes from the revision it read, and before it reports a grant
//!   it checks again in etcd that its own key still exists and nothing older conflicts.
//! - **Deletes** reach every request task from one etcd watch per store on the whole prefix
//!   (`watch.rs`), not a watch per request: a holder hears of its own key's delete (`Lost`), a
//!   waiter of its key's. Opening and cancelling a watch per grant cost an exchange with etcd
//!   on every lock+unlock.
//! - **Fencing token.** The key's create revision: it rises across every broker and restarts.
//! - **Try-lock** deletes its key when not first. **Wait time-outs** and **per-holder TTLs**
//!   are timers of this store that delete the key (leases count whole seconds, 2 s at least,
//!   too coarse for lock TTLs). **Unlock** is owner-checked by lock id (the id is part of the
//!   key) and deletes it; a forced unlock deletes every holder of the key. A **cancel** (the
//!   client gave the request up) deletes the key of its own connection's request, waiting or
//!   held, and is never answered.
//! - **Extend** restarts a holder's TTL timer once a Txn has confirmed its key still exists.
//!   Only the broker that granted a hold runs its timer, so an extend of another broker's
//!   holder is refused ([`StoreError::OtherBroker`]); see `extend.rs`.
//! - **Acquire-many** puts every member `PREFIX/<key>/<id>` in one Txn, so they share one
//!   create revision, and holds when every member's turn has come on its key. Since every
//!   request only waits for older ones, and revisions are one order over all keys and brokers,
//!   groups and single locks never deadlock. Members say in their value that they belong to a
//!   group, and once it holds, that it holds, so every broker tells holders from waiters alike.
//!   The reasoning is in `many.rs`.
//! - **keepLocksAfterDeath** requests sit on a lease of the store, not of the connection, kept
//!   alive while the store runs. Bound: such a lock outlives its connection, not its broker: it
//!   ends at an unlock by id (from any broker), at its TTL, or one session TTL after its
//!   broker stops or loses etcd.
//! - **When etcd is unreachable or slow** every call has a deadline
//!   ([`EtcdConfig::op_timeout`]): the request gets [`StoreEvent::Error`], never a grant etcd
//!   did not record. Within that deadline a call that surely did not run (no connection to the
//!   member could be made, or it had no leader) is sent again, and so is a read after any
//!   failure: when a member dies while a quorum lives, requests wait for a live member rather
//!   than fail. A write that may have run is never sent twice (`worker::Shared::txn`). When a lease may have expired (keepalives failing for 4/5 of its TTL, so
//!   before etcd can delete the keys), each of its locks gets [`StoreEvent::Lost`] and each of
//!   its waiters an error: no client is left believing it holds a lock.
//!
//! - **Batching.** The steps of requests that reach the store within one turn (puts-and-reads,
//!   owner-checked deletes, confirming reads) share one Txn, one nested Txn per step, each with
//!   its own compare, at most one new request per lock key per Txn (so create revisions never
//!   tie on a key); see `batch.rs`.
//!
//! Threading: etcd I/O runs on a thread of its own, a current-thread tokio runtime. The owner
//! (the broker's mio reactor) submits [`StoreOp`]s without blocking and drains
//! [`StoreEvent`]s with [`EtcdStore::poll_event`]; after pushing events the store calls the
//! wake hook given to [`EtcdStore::start`] (the reactor's `mio::Waker::wake`).

mod batch;
mod config;
mod extend;
mod many;
mod query;
mod request;
mod rules;
mod session;
mod tls;
mod watch;
mod worker;

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use config::EtcdConfig;

/// The store speaks the lock table's vocabulary: a connection id (never reused), a mode, a
/// TTL and a wait. Here `Ttl::Default` means [`EtcdConfig::default_ttl`], `Ttl::After` is a
/// timer of this store (leases count whole seconds) that deletes the request's key when it
/// fires ([`StoreEvent::Expired`]), and `Wait::Until` ends in [`StoreEvent::TimedOut`].
pub use crate::table::{ConnId, Mode, TableError, Ttl, Wait};

/// A request for one key. `id` is the client's request uuid and becomes the lock id.
#[derive(Clone, Debug)]
pub struct LockSpec {
    /// The connection asking: its lease carries the request key (unless
    /// `keep_after_disconnect`) and its events go to it.
    pub conn: ConnId,
    /// The lock key, the client's name for the resource (escaped into `PREFIX/<key>/<id>`).
    pub key: String,
    /// The lock id: the last part of the etcd key, and the credential an unlock must name.
    pub id: String,
    /// How it shares the key with the other requests (the grant rules are on [`Mode`]).
    pub mode: Mode,
    /// Semaphore capacity; `None` takes the one declared by the oldest request of the key (1
    /// when none declares one).
    pub max: Option<u32>,
    /// How long it holds once granted.
    pub ttl: Ttl,
    /// What it does when it cannot be granted at once.
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

/// A request for several keys at once, granted all together or not at all (acquire-many).
#[derive(Clone, Debug)]
pub struct ManySpec {
    /// The connection asking: its lease carries the member keys (unless
    /// `keep_after_disconnect`) and its events go to it.
    pub conn: ConnId,
    /// 1 to [`MAX_KEYS_PER_MANY`] keys, any order; duplicates count once. Each is taken
    /// exclusively (within the key's `max`, like an exclusive lock that names none).
    pub keys: Vec<String>,
    /// The group's lock id: every member key is `PREFIX/<key>/<id>`, and
    /// [`StoreOp::ReleaseMany`], [`StoreOp::Cancel`] and [`StoreOp::Extend`] name it.
    pub id: String,
    /// How long the group holds once granted: one timer for all its keys.
    pub ttl: Ttl,
    /// What it does when some key cannot be granted at once.
    pub wait: Wait,
    /// Survive the connection's death (the bound is that of a single lock's, in the module
    /// docs).
    pub keep_after_disconnect: bool,
}

/// Most keys in one acquire-many, as the in-memory table's default: 64 member puts and 64
/// range reads fill etcd's default `--max-txn-ops` (128) of the one Txn that records them.
pub const MAX_KEYS_PER_MANY: usize = 64;

/// What the owner asks of the store. Answers come back as [`StoreEvent`]s.
#[derive(Clone, Debug)]
pub enum StoreOp {
    /// Request a lock: answered by `Granted`, `Queued` (then `Granted` or `TimedOut`), `Busy`
    /// or `Error`.
    Lock(LockSpec),
    /// Release `id`'s hold on `key` (from any connection and any broker: the id is the
    /// credential), or with `force` every holder of `key`.
    Unlock {
        /// The connection asking; the answer goes to it.
        conn: ConnId,
        /// The lock key.
        key: String,
        /// The lock id to release; `None` only with `force` (else [`TableError::IdRequired`]).
        id: Option<String>,
        /// Delete every holder of the key, whatever its id; waiters stay queued.
        force: bool,
    },
    /// The client gave request `id` up (its own time-out, or it refused a grant that came too
    /// late). A waiter stops waiting and a holder is released, as by an unlock; either way its
    /// etcd key is deleted and no event answers. Only the connection that made the request
    /// may (an unknown id, or another connection's, is ignored). When `id` names no single
    /// request of `key` but an acquire-many of this connection, the whole group goes.
    Cancel {
        /// The connection that made the request.
        conn: ConnId,
        /// The lock key.
        key: String,
        /// The lock id.
        id: String,
    },
    /// Restart the TTL timer of holder `id` of `key` from now, with `ttl`. Owner-checked by
    /// id like an unlock (any connection may name it); answered by [`StoreEvent::Extended`]
    /// once etcd confirms the hold still exists, or by [`StoreEvent::Error`] with
    /// [`Op::Extend`]: [`TableError::NotHeld`], [`TableError::StillWaiting`], or
    /// [`StoreError::OtherBroker`] for a holder that another broker made (its TTL timer runs
    /// there, so only that broker can restart it). An id naming an acquire-many of this store
    /// that includes `key` extends the whole group.
    Extend {
        /// The connection asking; the answer goes to it.
        conn: ConnId,
        /// The lock key.
        key: String,
        /// The holder's lock id.
        id: String,
        /// The new lifetime, from now (`Ttl::Never`: no timer).
        ttl: Ttl,
    },
    /// Take several keys at once: answered by `ManyGranted`, `ManyQueued` (then `ManyGranted`
    /// or `ManyTimedOut`), `ManyBusy` or `Error` with [`Op::LockMany`].
    LockMany(ManySpec),
    /// Release every key of acquire-many `id` (from any connection and any broker: the id is
    /// the credential). Answered by [`StoreEvent::ManyReleased`], or `Error` with
    /// [`Op::ReleaseMany`]: [`TableError::NotHeld`] when etcd holds no such group,
    /// [`TableError::StillWaiting`] when it still waits (a group of this store is then
    /// abandoned, its keys deleted, as the in-memory table does; another broker's is left to
    /// it). A group of another broker is found by reading the whole prefix, and its broker
    /// reports it [`StoreEvent::Lost`].
    ReleaseMany {
        /// The connection asking; the answer goes to it.
        conn: ConnId,
        /// The group's lock id.
        id: String,
    },
    /// The connection closed: drop its waiters, release its holds (except keep-after-death
    /// ones) and revoke its lease.
    Disconnect {
        /// The connection that closed.
        conn: ConnId,
    },
    /// List the keys held or waited for. `tag` comes back with the answer.
    Keys {
        /// The connection asking; [`StoreEvent::Keys`] goes to it.
        conn: ConnId,
        /// Returned unchanged in the answer, to match it to the question.
        tag: u64,
    },
    /// Describe one key as etcd records it (holders, waiters, capacity), for any broker's
    /// requests. `tag` comes back with the answer.
    Info {
        /// The connection asking; [`StoreEvent::Info`] goes to it.
        conn: ConnId,
        /// Returned unchanged in the answer, to match it to the question.
        tag: u64,
        /// The lock key.
        key: String,
    },
    /// Totals over every key under the prefix, plus this store's counters. `tag` comes back
    /// with the answer.
    Stats {
        /// The connection asking; [`StoreEvent::Stats`] goes to it.
        conn: ConnId,
        /// Returned unchanged in the answer, to match it to the question.
        tag: u64,
    },
}

/// One holder (or waiter), for inspection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HolderInfo {
    /// Its lock id.
    pub id: String,
    /// The store (broker) that made the request, and its connection there.
    pub owner: String,
    /// That connection's [`ConnId`] on the owner's broker (meaningless on any other).
    pub conn: u64,
    /// How it holds the key.
    pub mode: Mode,
    /// Its fencing token: the create revision of its request key.
    pub token: u64,
}

/// One key, for inspection, as etcd records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// The lock key.
    pub key: String,
    /// The key's capacity: the `max` of its oldest exclusive request that names one, else 1.
    pub max: u32,
    /// The requests granted, oldest first, from every broker.
    pub holders: Vec<HolderInfo>,
    /// The waiters, oldest first (`token`: the create revision that orders them; it becomes
    /// the fencing token when granted).
    pub queue: Vec<HolderInfo>,
    /// How many of the holders hold it in [`Mode::Read`].
    pub readers: usize,
}

/// Totals: etcd's view of every key under the prefix, plus this store's own counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Lock keys with at least one request (held or waiting) under the prefix.
    pub keys: usize,
    /// Requests granted, over every broker.
    pub holders: usize,
    /// Requests waiting, over every broker.
    pub waiters: usize,
    /// Connections of this store with a lease.
    pub sessions: usize,
    /// Grants this store has reported since it started.
    pub grants: u64,
    /// Holds of this store ended by their TTL ([`StoreEvent::Expired`]).
    pub expiries: u64,
    /// Requests of this store that reached their wait deadline ([`StoreEvent::TimedOut`]).
    pub wait_timeouts: u64,
    /// etcd's current revision: the next grant's token is above it.
    pub revision: u64,
}

/// What happened, for the owner to tell its clients.
#[derive(Clone, Debug)]
pub enum StoreEvent {
    /// Recorded in etcd: `token` is the request key's create revision.
    Granted {
        /// The connection that asked.
        conn: ConnId,
        /// The lock id.
        id: String,
        /// The lock key.
        key: String,
        /// Fencing token: rises across every broker and restart, so a later holder's is larger.
        token: u64,
    },
    /// Recorded and waiting behind `ahead` older requests.
    Queued {
        /// The connection that asked.
        conn: ConnId,
        /// The lock id.
        id: String,
        /// The lock key.
        key: String,
        /// Older requests of the key, held or waiting (0 when answering a repeated request).
        ahead: usize,
    },
    /// Try-lock refused; its key was deleted.
    Busy {
        /// The connection that asked.
        conn: ConnId,
        /// The lock id.
        id: String,
        /// The lock key.
        key: String,
        /// Older requests of the key, held or waiting, when it was refused.
        ahead: usize,
    },
    /// A waiting request reached its [`Wait::Until`] deadline; its key is deleted.
    TimedOut {
        /// The connection that asked.
        conn: ConnId,
        /// The lock id.
        id: String,
        /// The lock key.
        key: String,
        /// How long since the store took the request.
        waited: Duration,
    },
    /// The holder's TTL ended; its key was deleted. For an acquire-many, every key of the
    /// group was, and `key` is its first key in sorted order.
    Expired {
        /// The holder's connection.
        conn: ConnId,
        /// The lock id.
        id: String,
        /// The lock key.
        key: String,
    },
    /// An unlock succeeded: its holds' keys were deleted from etcd.
    Unlocked {
        /// The connection that asked for the unlock (not necessarily the holder's).
        conn: ConnId,
        /// The lock key.
        key: String,
        /// The lock id the unlock named (`None` for a forced unlock that named none).
        id: Option<String>,
        /// Holds released: 1 for an unlock by id; for a forced one, every holder (0 if none).
        released: usize,
    },
    /// A held lock is no longer held (its key was deleted by someone else, or its lease may
    /// have expired). The client must be told at once. For an acquire-many, `key` is the
    /// member that went, and the group's other keys are deleted too.
    Lost {
        /// The holder's connection.
        conn: ConnId,
        /// The lock id.
        id: String,
        /// The lock key.
        key: String,
        /// Why, for the client's error message.
        reason: String,
    },
    /// An op failed. For a lock or lock-many nothing is held for it; for an unlock, extend or
    /// release-many the error says what the id holds (nothing, or still waits).
    Error {
        /// The connection that asked.
        conn: ConnId,
        /// Which op failed, so the owner knows which reply to send without guessing.
        op: Op,
        /// The lock id the op named (`None` for an unlock that named none).
        id: Option<String>,
        /// The lock key (for [`Op::LockMany`] and [`Op::ReleaseMany`], whose id names a group
        /// of keys: its first key in sorted order, or empty when none is known).
        key: String,
        /// What went wrong.
        error: StoreError,
    },
    /// An extend succeeded: the holder's TTL timer restarted.
    Extended {
        /// The connection that asked for the extend.
        conn: ConnId,
        /// The lock key.
        key: String,
        /// The lock id.
        id: String,
    },
    /// An acquire-many holds every one of its keys, recorded in etcd.
    ManyGranted {
        /// The connection that asked.
        conn: ConnId,
        /// The group's lock id.
        id: String,
        /// Every key, sorted, with its fencing token: the create revision its members share.
        tokens: Vec<(String, u64)>,
    },
    /// An acquire-many is recorded and waits for some of its keys.
    ManyQueued {
        /// The connection that asked.
        conn: ConnId,
        /// The group's lock id.
        id: String,
    },
    /// A try-lock acquire-many was refused; every one of its keys was deleted first.
    ManyBusy {
        /// The connection that asked.
        conn: ConnId,
        /// The group's lock id.
        id: String,
    },
    /// A waiting acquire-many reached its [`Wait::Until`] deadline; its keys are deleted.
    ManyTimedOut {
        /// The connection that asked.
        conn: ConnId,
        /// The group's lock id.
        id: String,
        /// How long since the store took the request.
        waited: Duration,
    },
    /// A release-many succeeded: every key of the group was deleted from etcd.
    ManyReleased {
        /// The connection that asked for the release (not necessarily the holder's).
        conn: ConnId,
        /// The group's lock id.
        id: String,
    },
    /// The answer to [`StoreOp::Keys`].
    Keys {
        /// The connection that asked.
        conn: ConnId,
        /// The op's tag, unchanged.
        tag: u64,
        /// Every lock key with a request under the prefix, sorted, from every broker.
        keys: Result<Vec<String>, StoreError>,
    },
    /// The answer to [`StoreOp::Info`].
    Info {
        /// The connection that asked.
        conn: ConnId,
        /// The op's tag, unchanged.
        tag: u64,
        /// `Ok(None)` when etcd holds no request for the key.
        info: Result<Option<KeyInfo>, StoreError>,
    },
    /// The answer to [`StoreOp::Stats`].
    Stats {
        /// The connection that asked.
        conn: ConnId,
        /// The op's tag, unchanged.
        tag: u64,
        /// The totals, or why etcd could not be read.
        stats: Result<Stats, StoreError>,
    },
}

/// Which op a [`StoreEvent::Error`] answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// [`StoreOp::Lock`] (also a waiter dropped because its session was lost).
    Lock,
    /// [`StoreOp::Unlock`].
    Unlock,
    /// [`StoreOp::Extend`].
    Extend,
    /// [`StoreOp::LockMany`] (also a waiting group dropped because its session was lost).
    LockMany,
    /// [`StoreOp::ReleaseMany`].
    ReleaseMany,
}

/// Errors of the etcd store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The `etcd://` URL does not parse; the text says why.
    #[error("bad etcd URL {0}")]
    BadUrl(String),
    /// An etcd call failed, or the store's thread could not start; the text says which.
    #[error("etcd: {0}")]
    Etcd(String),
    /// An etcd call passed [`EtcdConfig::op_timeout`] (the duration given).
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    /// The request broke a rule of the lock table, the same rules (and texts) as the in-memory
    /// broker's: `max` 0 or another than the key's, a lock id in use (by another connection of
    /// this store, or its etcd key already exists), an unlock without an id, an id that holds
    /// nothing or still waits, a group member unlocked alone, a bad acquire-many key count
    /// (at most [`MAX_KEYS_PER_MANY`] distinct keys).
    #[error(transparent)]
    Rule(#[from] TableError),
    /// An extend named a holder that another broker made: its TTL timer runs on that broker,
    /// so only that broker can restart it (the text names its store).
    #[error("lock id is held through another broker ({0}); extend it there")]
    OtherBroker(String),
    /// A waiting request's etcd key was deleted (by someone else, or its lease ended); it is no
    /// longer queued.
    #[error("the request's key was deleted from etcd while it waited")]
    Vanished,
    /// The waiter's lease may have expired (no keepalive succeeded for 4/5 of its TTL); it is
    /// dropped. The text says why.
    #[error("the connection's etcd lease may have expired (keepalives failing): {0}")]
    SessionLost(String),
    /// The store's thread has ended, so the op was not taken.
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
