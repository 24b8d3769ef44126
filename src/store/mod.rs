//! Lock stores other than the in-memory [`table`](crate::table).
//!
//! The broker core will talk to one store interface with two implementations: the in-memory
//! table, and `etcd` (feature `etcd`), where every lock decision lives in an etcd cluster so
//! any number of brokers can serve the same keys. The etcd store is self-contained until the
//! sans-IO broker core drives it through that interface.

#[cfg(feature = "etcd")]
pub mod etcd;
