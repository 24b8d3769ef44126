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
//!   ([`EtcdConfig::op_timeout`]): the request gets [`StoreEvent::Failed`], never a grant etcd
//!   did not record. Within that deadline a call that surely did not run (no connection to the
//!   member could be made, or it had no leader) is sent again, and so is a read after any
//!   failure: when a member dies while a quorum lives, requests wait for a live member rather
//!   than fail. A write that may have run is never sent twice (`calls::Etcd::txn`). When a lease may have expired (keepalives failing for 4/5 of its TTL, so
//!   before etcd can delete the keys), each of its locks gets [`StoreEvent::Lost`] and each of
//!   its waiters an error: no client is left believing it holds a lock.
//!
//! - **Batching.** The steps of requests that reach the store within one turn (puts-and-reads,
//!   owner-checked deletes, confirming reads) share one Txn, one nested Txn per step, each with
//!   its own compare, at most one new request per lock key per Txn (so create revisions never
//!   tie on a key); see `batch.rs`.
//!
//! Vocabulary: the store layer's own ([`StoreOp`] in, [`StoreEvent`] out, tags returned with
//! the answers they match). Here `Ttl::Default` means [`EtcdConfig::default_ttl`], `Ttl::After`
//! is a timer of this store (leases count whole seconds) that deletes the request's key when it
//! fires (`Expired`), and `Wait::Until` ends in `TimedOut`. etcd knows no queue lengths or
//! reader counts at a grant (0), and `Queued`/`Busy` count the older requests of the key.
//!
//! Threading: etcd I/O runs on a thread of its own, a current-thread tokio runtime. The owner
//! (the broker's mio reactor) submits ops without blocking (each crosses to the thread as an
//! owned copy) and drains events with [`EtcdStore::poll_event`]; after pushing events the store
//! calls the wake hook given to [`EtcdStore::start`] (the reactor's `mio::Waker::wake`).
//!
//! Files, in floors: each imports only from the floors below it (`scripts/etcd-floors.sh`
//! checks, in CI):
//! 1. etcd and its records: `rules.rs` (records and grant rules, no I/O), `config.rs` (settings
//!    and key layout), `tls.rs`, `calls.rs` (calls under the deadline, retried when unsent);
//! 2. `batch.rs` (steps of one turn sharing Txns) and `watch.rs` (the one delete watch);
//! 3. `shared.rs`: what every task shares, the state of this store's requests and sessions;
//! 4. `delete.rs` (owner-checked deletes) and `session.rs` (leases, their renewal and loss);
//! 5. the request kinds: `lock.rs`, `query.rs`, `extend.rs`, `many.rs` (acquire-many),
//!    `release.rs` (unlock, cancel);
//! 6. `worker.rs`, the thread that hands each op to its kind; this file, the handle.
mod batch;
mod calls;
mod config;
mod delete;
mod extend;
mod lock;
mod many;
mod query;
mod release;
mod rules;
mod session;
mod shared;
mod tls;
mod watch;
mod worker;

use std::collections::VecDeque;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

pub use config::EtcdConfig;

use super::{OwnedOp, Store, StoreError, StoreEvent, StoreOp};

/// The handle the owner keeps. Dropping it revokes every lease of the store (bounded by
/// [`EtcdConfig::op_timeout`]) and stops its thread.
pub struct EtcdStore {
    ops: tokio::sync::mpsc::UnboundedSender<worker::Cmd>,
    events: mpsc::Receiver<StoreEvent>,
    thread: Option<JoinHandle<()>>,
    owner: String,
    /// Answers made here, for ops the stopped thread could not take; drained first.
    refused: VecDeque<StoreEvent>,
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
            refused: VecDeque::new(),
        })
    }

    /// Hands `op` to the store's thread; never blocks. Its answers come from
    /// [`poll_event`](Self::poll_event); `Err` when the thread has stopped.
    pub fn submit(&self, op: StoreOp<'_>) -> Result<(), StoreError> {
        self.ops
            .send(worker::Cmd::Op(OwnedOp::from(op)))
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

impl Store for EtcdStore {
    fn submit(&mut self, _now: Instant, op: StoreOp<'_>) {
        if let Err(e) = EtcdStore::submit(self, op) {
            // A stopped store has released everything: only the ops that await an answer get
            // one.
            self.refused.extend(op.refused(e));
        }
    }

    fn poll_event(&mut self) -> Option<StoreEvent> {
        self.refused
            .pop_front()
            .or_else(|| EtcdStore::poll_event(self))
    }

    fn answers_later(&self) -> bool {
        true
    }

    fn shared(&self) -> bool {
        true
    }

    fn is_idle(&self) -> bool {
        // Locks live in etcd and outlive this broker's idleness; only connections count.
        true
    }
}
