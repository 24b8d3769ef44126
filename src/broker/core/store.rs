//! The store interface the core talks to, and the backend chosen at `BrokerBuilder` time.
//!
//! The in-memory [`Table`](crate::table::Table) decides on the spot, so the core calls it
//! directly (lock.rs and the other command files). A store whose decisions live elsewhere
//! (etcd) answers later: the core hands it [`StoreOp`]s and turns the [`StoreEvent`]s it
//! drains into replies and pushed grants (`etcd.rs`). Both kinds keep one contract: a client
//! is told "granted" only for a grant the store recorded, and a hold the store loses is told.

use crate::store::etcd::{EtcdStore, StoreError, StoreEvent, StoreOp};

/// A lock store that answers asynchronously: ops go in without blocking, events come out.
/// The reactor wakes (a `mio::Waker`) when events are waiting.
pub(crate) trait AsyncStore: Send {
    fn submit(&self, op: StoreOp) -> Result<(), StoreError>;
    fn poll_event(&self) -> Option<StoreEvent>;
}

impl AsyncStore for EtcdStore {
    fn submit(&self, op: StoreOp) -> Result<(), StoreError> {
        EtcdStore::submit(self, op)
    }
    fn poll_event(&self) -> Option<StoreEvent> {
        EtcdStore::poll_event(self)
    }
}
