//! live-mutex: a lock broker and its client, speaking the npm live-mutex 0.2.x protocol.
//!
//! Processes take turns on named resources by asking one broker to lock and unlock keys.
//!
//! ```
//! # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
//! # let url = format!("tcp://{}", broker.local_addr().unwrap());
//! let client = live_mutex::Client::connect(&url)?;
//! let guard = client.lock("deploy")?;       // blocks until granted
//! let token = guard.fencing_token();        // rises with every grant
//! drop(guard);                              // releases the lock
//! # let _ = token;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Layout, from the core outwards:
//! - [`table`]: every lock decision, as a state machine with no I/O and no clock (`now` is
//!   passed in): FIFO queues, semaphores, read/write locks, TTLs, fencing tokens, acquire-many.
//! - [`proto`]: the wire format: requests decoded in place, replies encoded, NDJSON framing.
//! - [`broker`]: the `mio` reactor around the table, the only code that touches sockets;
//!   run it as `lmx start` or embed it on a thread of any program.
//! - [`store`]: lock stores beyond the in-memory table (etcd, feature `etcd`).
//! - [`client`]: a thread-safe, pipelining client with RAII guards, used by `lmx`.

pub mod broker;
pub mod client;
#[doc(hidden)]
pub mod fuzzing;
pub mod proto;
pub mod store;
pub mod table;

pub use client::{
    BrokerKind, Client, Error, LockGuard, LockOptions, ManyGuard, Mode, Ttl, connect_or_launch,
};
