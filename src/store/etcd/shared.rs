//! What every task of the store's thread shares: the etcd client, the delete hub, the batcher,
//! the way out for events, and the state of this store's requests, groups and sessions.
//!
//! The floor every request kind stands on (see `mod.rs` for the floors): it holds data and the
//! few steps every kind takes (emit an event, forget a request, decode a range read); what a
//! request does lives above it.
//!
//! Why one `RefCell` that only this thread touches: tasks need no locks, and aborting a task
//! (an unlock, a disconnect) can never catch it half-way through a state change: it only stops
//! at an `.await`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::sync::mpsc;
use std::task::Poll;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, KeyValue};
use tokio::sync::OnceCell;
use tokio::task::AbortHandle;

use super::batch::Batcher;
use super::calls::Etcd;
use super::config::EtcdConfig;
use super::rules::Entry;
use super::watch::Hub;
use crate::store::StoreEvent;
use crate::table::{ConnId, Name, Ttl};

/// A request this store made, waiting or held.
pub(super) struct Req {
    /// Tells a request apart from a later one with the same key and id.
    pub(super) seq: u64,
    pub(super) conn: ConnId,
    /// Its key's create revision, once put.
    pub(super) rev: i64,
    pub(super) held: bool,
    pub(super) keep: bool,
    pub(super) task: Option<AbortHandle>,
    /// While held: restarts its TTL timer (an extend); `None` = no timer.
    pub(super) deadline: Option<Deadline>,
}

/// The holder task's TTL deadline, which an extend replaces.
pub(super) type Deadline = tokio::sync::watch::Sender<Option<tokio::time::Instant>>;

#[derive(Default)]
pub(super) struct State {
    /// By (lock key, lock id).
    pub(super) reqs: HashMap<(Name, Name), Req>,
    /// Acquire-many groups, by lock id.
    pub(super) groups: HashMap<Name, Group>,
    pub(super) sessions: HashMap<ConnId, Rc<Session>>,
    pub(super) keep: Option<Rc<Session>>,
    pub(super) next_seq: u64,
    pub(super) grants: u64,
    pub(super) expiries: u64,
    pub(super) wait_timeouts: u64,
}

/// What every task of the store shares.
pub(super) struct Shared {
    pub(super) cfg: EtcdConfig,
    pub(super) owner: String,
    /// etcd, under the store's deadline.
    pub(super) etcd: Etcd,
    /// The shared delete watch every request task listens to.
    pub(super) hub: Rc<Hub>,
    /// Steps of requests waiting to share the next Txn (`batch.rs`).
    pub(super) batch: Rc<Batcher>,
    events: mpsc::Sender<StoreEvent>,
    wake: Box<dyn Fn() + Send + Sync>,
    pub(super) st: RefCell<State>,
}

impl Shared {
    pub(super) fn new(
        cfg: EtcdConfig,
        etcd: Etcd,
        hub: Rc<Hub>,
        events: mpsc::Sender<StoreEvent>,
        wake: Box<dyn Fn() + Send + Sync>,
    ) -> Shared {
        Shared {
            owner: format!("{:016x}", fastrand::u64(..)),
            batch: Rc::new(Batcher::new(cfg.op_timeout)),
            hub,
            cfg,
            etcd,
            events,
            wake,
            st: RefCell::new(State::default()),
        }
    }

    pub(super) fn emit(&self, ev: StoreEvent) {
        if self.events.send(ev).is_ok() {
            (self.wake)();
        }
    }

    /// How long a hold with `ttl` lasts: `None` = until released.
    pub(super) fn ttl(&self, ttl: Ttl) -> Option<Duration> {
        match ttl {
            Ttl::Default => self.cfg.default_ttl,
            Ttl::Never => None,
            Ttl::After(d) => Some(d),
        }
    }

    /// Forgets request (`key`, `id`) if it is still the one numbered `seq`.
    pub(super) fn forget(&self, key: &Name, id: &Name, seq: u64) -> Option<Req> {
        let mut st = self.st.borrow_mut();
        let k = (key.clone(), id.clone());
        if st.reqs.get(&k).is_some_and(|r| r.seq == seq) {
            st.reqs.remove(&k)
        } else {
            None
        }
    }
}

/// An acquire-many of this store, waiting or held.
pub(super) struct Group {
    /// Tells a group apart from a later one with the same id.
    pub(super) seq: u64,
    pub(super) conn: ConnId,
    /// Sorted, distinct.
    pub(super) keys: Vec<Name>,
    /// The create revision every member shares, once put.
    pub(super) rev: i64,
    pub(super) held: bool,
    pub(super) keep: bool,
    pub(super) task: Option<AbortHandle>,
    /// While held: restarts its TTL timer.
    pub(super) deadline: Option<Deadline>,
}

impl Group {
    pub(super) fn tokens(&self) -> Vec<(Name, u64)> {
        let token = self.rev.unsigned_abs();
        self.keys.iter().map(|k| (k.clone(), token)).collect()
    }

    /// The etcd keys of its members.
    pub(super) fn members(&self, sh: &Shared, id: &str) -> Vec<Vec<u8>> {
        self.keys
            .iter()
            .map(|k| sh.cfg.request_key(k, id))
            .collect()
    }
}

/// Whose lease a session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Holder {
    Conn(ConnId),
    /// The store's lease for keep-after-death requests.
    Keep,
}

/// One etcd lease: a connection's, or the store's for keep-after-death requests. Granted on
/// first use and renewed by its keeper task (`session.rs`).
pub(super) struct Session {
    pub(super) holder: Holder,
    pub(super) lease: OnceCell<i64>,
    pub(super) keeper: Cell<Option<AbortHandle>>,
}

impl Session {
    pub(super) fn new(holder: Holder) -> Rc<Session> {
        Rc::new(Session {
            holder,
            lease: OnceCell::new(),
            keeper: Cell::new(None),
        })
    }

    /// The lease, once granted.
    pub(super) fn lease_id(&self) -> Option<i64> {
        self.lease.get().copied()
    }
}

/// Decodes the request keys of a range read.
pub(super) fn entries(sh: &Shared, kvs: &[KeyValue]) -> Vec<Entry> {
    kvs.iter()
        .filter_map(|kv| {
            let (_, id) = sh.cfg.parse_request_key(kv.key())?;
            Some(Entry::new(
                kv.key().to_vec(),
                id,
                kv.create_revision(),
                kv.value(),
            ))
        })
        .collect()
}

/// The compares of a Txn that runs only while every key of `members` still exists with create
/// revision `rev` (a group's members share one; a single request is a group of one).
pub(super) fn unchanged(members: &[Vec<u8>], rev: i64) -> Vec<Compare> {
    members
        .iter()
        .map(|m| Compare::create_revision(m.clone(), CompareOp::Equal, rev))
        .collect()
}

/// Waits for the first of two futures (a two-armed `select!` without tokio's macros).
pub(super) async fn race<A: Future, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
    let mut a = pin!(a);
    let mut b = pin!(b);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(x) = a.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(x));
        }
        if let Poll::Ready(x) = b.as_mut().poll(cx) {
            return Poll::Ready(Either::Right(x));
        }
        Poll::Pending
    })
    .await
}

pub(super) enum Either<A, B> {
    Left(A),
    Right(B),
}
