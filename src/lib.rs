pub mod broker;
pub mod client;
#[doc(hidden)]
pub mod fuzzing;
pub mod proto;
pub mod table;

pub use client::{
    BrokerKind, Client, Error, LockGuard, LockOptions, ManyGuard, Mode, Ttl, connect_or_launch,
};
