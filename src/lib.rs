pub mod client;
pub mod table;

pub use client::{BrokerKind, Client, Error, LockGuard, LockOptions, ManyGuard, Mode, Ttl};
