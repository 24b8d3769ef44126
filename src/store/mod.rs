//! Lock stores other than the in-memory [`table`](crate::table).
//!
//! The broker core talks to two kinds of store: the in-memory table, which decides on the
//! spot, and `etcd` (feature `etcd`, `BrokerBuilder::etcd`, `lmx start --store etcd://...`),
//! where every lock decision lives in an etcd cluster so any number of brokers can serve the
//! same keys. The core drives the latter through its asynchronous store interface (ops in,
//! events out, a `mio::Waker` to wake the reactor): see `broker/core/store.rs` and
//! `broker/core/etcd.rs`.

#[cfg(feature = "etcd")]
pub mod etcd;
