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
//! - [`proto`]: the wire format, both directions with one set of types (requests decoded in
//!   place by the broker and encoded by the client; replies encoded by the broker and decoded
//!   by the client), NDJSON framing, and [`proto::session`]: the client's side of a connection
//!   as a sans-IO state machine (pending requests by id, the npm broker's quirks).
//! - [`broker`]: the `mio` reactor around the table, the only code that touches sockets;
//!   run it as `lmx start` (`--daemon` to detach) or embed it with `Broker::builder()`.
//! - `async_client` (feature `tokio`): `AsyncClient`, the same session driven by one tokio
//!   task per connection, with cancellation-safe lock futures.
//! - [`client`]: a thread-safe, pipelining client with RAII guards, used by `lmx`; it drives a
//!   [`proto::session::Session`] over a blocking socket and knows nothing of the table;
//!   [`connect_or_spawn`] starts a broker daemon on demand, and [`serial()`](fn@serial) /
//!   `#[live_mutex::serial("key")]` serialise tests across processes.
//!
//! Embedding a broker with `Broker::builder()` is for a program that owns the broker's
//! lifetime (a server that runs for as long as its clients need it). Short-lived peers (test
//! processes under `cargo nextest`, CI jobs, workers) must not host the broker they share: when
//! the hosting process exits, every other process's locks vanish with it, possibly in the
//! middle of their critical sections. They use [`connect_or_spawn`], which starts
//! `lmx start --daemon` as a process of its own that outlives all of them.

/// The async client (feature `tokio`): [`AsyncClient`].
#[cfg(feature = "tokio")]
pub mod async_client;
#[cfg(feature = "broker")]
pub mod broker;
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod proto;
#[cfg(feature = "broker")]
pub mod table;

#[cfg(feature = "tokio")]
pub use async_client::{AsyncClient, AsyncLockGuard, AsyncManyGuard};
#[cfg(feature = "client")]
pub use client::{
    BrokerKind, Client, Error, LockGuard, LockOptions, ManyGuard, Mode, Ttl, connect_or_spawn,
    connect_or_spawn_using, serial,
};
/// The attribute form of [`serial()`](fn@serial): `#[live_mutex::serial("db", "cache")]` on a
/// `#[test]` or async test fn holds those keys (all-or-nothing) for the whole test. A function
/// and an attribute macro live in different namespaces, so both are `live_mutex::serial`.
#[cfg(feature = "macros")]
pub use live_mutex_macros::serial;
