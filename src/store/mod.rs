//! Lock stores: where the broker's lock decisions live, behind one interface.
//!
//! The broker core talks to a `Store` and nothing else for lock state: it hands it
//! `StoreOp`s and turns the `StoreEvent`s it drains into replies and pushed grants. Two
//! implementations:
//! - `MemStore` (`memory.rs`): the in-memory [`Table`], which decides on
//!   the spot, so its answers are waiting by the time `submit` returns, and whose timers (TTLs,
//!   wait deadlines) run on the core's `poll_timeout`/`handle_timeout`.
//! - `etcd` (feature `etcd`, `BrokerBuilder::etcd`, `lmx start --store etcd://...`): every
//!   decision lives in an etcd cluster, so any number of brokers serve the same keys. Its
//!   answers come later, from its own thread, which wakes the reactor.
//!
//! Both speak one vocabulary (`ops.rs`): the core's borrowed [`StoreOp`]s in (the etcd store
//! takes an owned copy across to its thread), [`StoreEvent`]s out, each answer carrying the tag
//! of the op it answers. The broker opens its store with `open` and knows no store by name.
//!
//! Why answers are events for both, even for the table that could answer in the call: one
//! path through the core, so a rule (a grant to a closed connection is given back; a client is
//! told "granted" only for a grant the store recorded; a retried request is not granted twice)
//! is written once and holds for every store.
//!
//! No back door: the core never reaches the table behind a store. What the live views and the
//! legacy paths need are ops like the lock path's (`Snapshot` for `watch`, `lmx top` and the
//! status page; `Keys` pages for `ls`; `Counts` for an unlock the 0.2.x read/write emulation
//! answers), which etcd answers from the cluster, so an etcd broker shows every broker's
//! locks; and a few questions answered without I/O where the store can ([`Store::gauges`] for
//! `/metrics`, [`Store::knows_conn`] and [`Store::releasable_holds`] for identities and the
//! log), which a store that would need I/O answers with "unknown". None is on the lock path.

#[cfg(feature = "etcd")]
pub(crate) mod etcd;
mod memory;
mod ops;
#[cfg(feature = "etcd")]
mod owned;

use std::time::Instant;

pub(crate) use memory::MemStore;
pub use ops::{
    HolderView, KeyPage, KeyView, Op, Snapshot, StoreError, StoreEvent, StoreOp, WaiterView,
};
#[cfg(feature = "etcd")]
pub(crate) use owned::{OwnedLock, OwnedMany, OwnedOp};

/// The table's words the vocabulary is made of: a store keeps the table's rules.
pub use crate::table::{
    ConnId, Grant, LockRequest, Longest, ManyRequest, Mode, Name, Stats, TableError, Ttl, Wait,
};

use crate::table;

/// Where a broker keeps its lock decisions.
#[derive(Clone, Debug)]
pub(crate) enum Backend {
    /// The in-memory table.
    Memory,
    /// An etcd cluster, shared by any number of brokers.
    #[cfg(feature = "etcd")]
    Etcd(Box<etcd::EtcdConfig>),
}

/// Opens the store `backend` names, with the table's settings (for etcd: its default TTL).
/// A store that answers from another thread calls `wake` when events are waiting.
pub(crate) fn open(
    backend: &Backend,
    table: &table::Config,
    #[cfg_attr(not(feature = "etcd"), allow(unused_variables))] wake: Box<dyn Fn() + Send + Sync>,
) -> Result<Box<dyn Store>, StoreError> {
    Ok(match backend {
        Backend::Memory => Box::new(MemStore::new(table.clone())),
        #[cfg(feature = "etcd")]
        Backend::Etcd(cfg) => {
            let mut cfg = (**cfg).clone();
            cfg.default_ttl = table.default_ttl;
            Box::new(etcd::EtcdStore::start(cfg, wake)?)
        }
    })
}

/// A lock store, as the broker core drives it (see the module docs).
///
/// Contract, in the style of the core's own: [`submit`](Self::submit) never blocks; after it,
/// and after [`handle_timeout`](Self::handle_timeout), the caller drains
/// [`poll_event`](Self::poll_event) until `None`. A store that answers from another thread
/// wakes the caller's event loop when events are waiting.
pub(crate) trait Store: Send {
    /// Hands the store an op; its answers come out of `poll_event`.
    fn submit(&mut self, now: Instant, op: StoreOp<'_>);
    /// The next event, if any.
    fn poll_event(&mut self) -> Option<StoreEvent>;
    /// When `handle_timeout` must next run (the table's TTLs and wait deadlines); never, for a
    /// store whose timers run on its own thread.
    fn poll_timeout(&mut self) -> Option<Instant> {
        None
    }
    /// Runs what is due at `now`.
    fn handle_timeout(&mut self, _now: Instant) {}
    /// Answers from another thread, later: the core then bounds what each connection may
    /// have in the store (the table bounds its own).
    #[cfg_attr(not(any(feature = "etcd", test)), allow(dead_code))]
    fn answers_later(&self) -> bool {
        false
    }
    /// Other brokers decide on the same keys (etcd): state the core keeps of a key itself
    /// (the 0.2.x read/write counts) would not be seen by them, so it is refused.
    fn shared(&self) -> bool {
        false
    }
    /// Holds no lock and no waiter that this broker knows of (for `idle_exit`).
    fn is_idle(&self) -> bool;
    /// The `/metrics` gauges at `now`, when the store reads them without I/O (the table);
    /// `None` from a store that must ask (etcd: the core then shows its latest `Snapshot`).
    fn gauges(&self, _now: Instant) -> Option<Gauges> {
        None
    }
    /// The store still has requests of connection `conn` (open, or closed with locks kept
    /// after disconnect), so its identity is worth keeping; false when it cannot tell
    /// without I/O. Costs what `conn` has.
    fn knows_conn(&self, _conn: ConnId) -> bool {
        false
    }
    /// What closing `conn` will release, as (key, lock id), for the broker's log; empty when
    /// the store cannot tell without I/O. Costs what `conn` has, never what others have.
    fn releasable_holds(&self, _conn: ConnId) -> Vec<(Name, Name)> {
        Vec::new()
    }
}

/// How many keys the stuck-lock gauges of `/metrics` name (the oldest holds, the longest
/// waits): a bound on their label sets, whatever the number of keys.
pub(crate) const STUCK_KEYS: usize = 5;

/// What `/metrics` shows of a store.
#[derive(Clone, Debug, Default)]
pub(crate) struct Gauges {
    /// Totals and counters.
    pub stats: Stats,
    /// The keys held and waited for longest.
    pub longest: Longest,
}
