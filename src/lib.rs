#![warn(missing_docs, unreachable_pub)]
#![warn(clippy::exhaustive_enums, clippy::exhaustive_structs)]
// docs.rs (`--cfg docsrs`, nightly): every item behind a feature gets an "Available on crate
// feature ... only" badge, from its `#[cfg]`.
#![cfg_attr(docsrs, feature(doc_cfg))]
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
//! # Layout
//!
//! ```text
//!  clients: Node (npm live-mutex 0.2.x), Client, AsyncClient, lmx, browsers (refused)
//!     │  TCP: NDJSON, WebSocket, either inside TLS;  Unix socket: NDJSON
//!  broker/  reactor: the only code with sockets (mio), accept, transport, tls, http_guard
//!           core:    sans-IO: (ConnId, message, now) in → (ConnId, bytes) and closes out
//!  store/   one interface (ops in, events out), two implementations:
//!           the in-memory lock table (table/, no I/O, no clock), or etcd (feature `etcd`)
//!  proto/   one codec, both directions, and the client's sans-IO session
//!  client/  drivers of the session: blocking Client (and TLS), AsyncClient (feature `tokio`)
//!  cli/     lmx
//! ```
//!
//! Layers point one way: `table ← store ← core ← reactor`, `proto ← core`,
//! `proto ← client`, `cli → client, broker`. The table knows no wire format and the protocol
//! no table: the words they share ([`Mode`]) sit in a leaf, `mode.rs`, that both import. The
//! client knows nothing of the broker, the store or the table.
//!
//! - `table` (`src/table/`, feature `broker`): every lock decision of the in-memory store, as
//!   a state machine with no I/O and no clock (`now` is passed in): FIFO queues, semaphores,
//!   read/write locks, TTLs, fencing tokens, acquire-many. Split by idea: `types.rs` (requests
//!   and outcomes), `single.rs` (one key), `groups.rs` (acquire-many), `conns.rs` (what a
//!   connection holds), `deadlines.rs` (TTLs and wait time-outs), `inspect.rs` (`info`,
//!   `keys`, `stats`). Not API: reachable only through the hidden `internal` module, for this
//!   crate's tests, benches, fuzzers and examples.
//! - `store` (`src/store/`, feature `broker`): the one interface the broker core keeps its
//!   lock state behind (ops in, events out), and its two implementations: the in-memory
//!   table (`memory.rs`), and with feature `etcd` the etcd lock store (`store/etcd/`, the
//!   extended etcd Mutex recipe on its own thread, speaking the same ops and events), chosen with
//!   [`BrokerBuilder::etcd`](broker::BrokerBuilder) / `lmx start --store etcd://...`. Not
//!   API either, but for the settings the builder takes.
//! - [`proto`] (`src/proto/`, always built): the wire format, both directions with one set of
//!   types. Requests are decoded in place by the broker (`decode.rs`, simd-json's tape) and
//!   encoded by the client (`encode.rs`); replies are encoded by the broker (`encode.rs`,
//!   `reply.rs`) and decoded by the client (`reply_decode.rs`); NDJSON framing (`ndjson.rs`);
//!   and [`proto::session`], the client's side of a connection as a sans-IO state machine
//!   (pending requests by id, pipelined releases, the npm broker's quirks).
//! - [`broker`] (`src/broker/`, feature `broker`): `core/` is the broker's sans-IO state
//!   machine (messages and time in; bytes per connection and close events out): `requests.rs`
//!   turns requests into store ops, `answers.rs` the store's events into replies, and its
//!   state is owned by types of their own (`route.rs`, `acks.rs`, `identity.rs`, `watch.rs`,
//!   `legacy_rw.rs`, `counters.rs`); around it,
//!   the only code that touches sockets: `reactor.rs` (the `mio` loop), `accept.rs`,
//!   `transport.rs` (a connection's `Socket` and NDJSON framing; its readers report what the
//!   loop must do), `ws.rs` (WebSocket framing), `stream.rs`, `http.rs`, `tls.rs` (rustls on
//!   the TCP port, feature `tls`), `config.rs`, `handle.rs`, `http_guard.rs` (web pages kept out), `keepalive.rs`
//!   (vanished peers found).
//! - [`client`] (`src/client/`, feature `client`): the client wing. Two drivers of one
//!   [`proto::session::Session`]: `blocking/`, a thread-safe, pipelining blocking [`Client`]
//!   with RAII guards (`driver.rs` over the sockets of `transport.rs`, `guard.rs`;
//!   `watch.rs` is [`client::Watch`], the stream of snapshots `lmx top` draws), and
//!   `async_client/` (feature `tokio`), `AsyncClient` (public as `live_mutex::async_client`), the
//!   same session driven by one tokio task per connection, with cancellation-safe lock
//!   futures. What both use sits beside them: `options.rs` ([`LockOptions`]), `builder.rs`,
//!   `requests.rs` (every request they build), `calls.rs` (what the answers mean, the
//!   handshake), `held.rs` (the core of both clients' guards), `url.rs` (a list of brokers),
//!   `backoff.rs`, `tls.rs` (rustls, feature `tls`), `error.rs`; [`connect_or_spawn`]
//!   (`spawn.rs`) starts a broker daemon on demand (`lmx`, or with feature `broker` the
//!   program's own executable: `src/daemon/`, shared with `lmx start --daemon`), and
//!   [`serial()`](fn@serial) / [`parallel()`](fn@parallel) / `#[live_mutex::serial(key)]`
//!   (`client/serial/`: reentrant per test in `held.rs`, waits that name the holder in
//!   `wait.rs`, async takes in `scope.rs`) serialise tests across processes.
//! - `src/cli/` (feature `cli`): the `lmx` binary; `src/bin/lmx.rs` only calls it.
//!
//! # Life of a request
//!
//! A blocking [`Client::lock`] on a key that another connection holds, over NDJSON/TCP:
//!
//! 1. `Client::lock` (`client/blocking/mod.rs`) turns [`LockOptions`] into a
//!    [`proto::Request::Lock`] (`requests::lock`, `client/requests.rs`) and hands it to the connection driver,
//!    `Conn::request` (`client/blocking/driver.rs`). The driver asks the session for it:
//!    `Session::request` (`proto/session.rs`) gives it an id, remembers what the answer must
//!    be, and encodes it (`Request::encode`, `proto/encode.rs`) into the bytes
//!    `Session::transmit` hands back; the driver writes them to the socket.
//! 2. In the broker, `Broker::run` (`broker/reactor.rs`) wakes on readiness and calls the
//!    connection's `Socket::on_readable` (`broker/transport.rs`): its first byte was not an
//!    upper-case letter (HTTP, such as the upgrade to WebSocket), so it speaks NDJSON, and
//!    `read_ndjson` frames the line (`proto/ndjson.rs`, `LineFramer`), checks that the
//!    connection's first lines are not HTTP (`http_guard.rs`), and passes it to the sans-IO
//!    core: `Core::handle_message` (`broker/core/mod.rs`) decodes it in place
//!    (`Decoder::decode`, `proto/decode.rs`) and dispatches it to `Core::lock`
//!    (`broker/core/requests.rs`).
//! 3. `Core::lock` notes the request (so a retry is never granted twice), maps it onto the
//!    table's vocabulary and submits `StoreOp::Lock` to the store. The in-memory store
//!    (`store/memory.rs`) calls `Table::lock` (`table/single.rs`): the key is held, so the
//!    request joins the key's FIFO queue and the store answers `StoreEvent::Queued` before
//!    `submit` returns (etcd answers later, from its own thread). `Core::poll_store`
//!    (`broker/core/answers.rs`) encodes `{"type":"lock",…,"queued":true}` (`Reply::encode`)
//!    into that connection's output buffer and marks it for sending.
//! 4. At the end of the loop turn, `end_turn` (`broker/reactor.rs`) drains the core:
//!    `Core::poll_transmit` names each connection with output, `Core::output` gives its bytes,
//!    which the reactor writes once (`Socket::write_out`, `transport.rs`) and
//!    `Core::consume`s. The client's driver reads the line, `Session::handle_line` decodes it
//!    (`proto/reply_decode.rs`) and records that the request waits.
//! 5. The holder unlocks: `Core::unlock` submits `StoreOp::Unlock`; `Table::unlock` releases
//!    the hold and re-runs the grant decision for the key (`settle`, `table/single.rs`): the
//!    head of the queue is granted with a new fencing token, and the store queues a
//!    `StoreEvent::Granted` after the unlock's answer. `Core::poll_store`
//!    (`broker/core/answers.rs`) turns it into a pushed
//!    `{"type":"lock",…,"acquired":true,"fencingToken":…}` for the waiter's connection (or
//!    releases it at once if that connection is gone), and the same `end_turn` sends it.
//! 6. The waiter's session matches the pushed reply to the pending id and yields
//!    `Answer::Locked`; `Client::lock` returns a [`LockGuard`] (`client/blocking/guard.rs`) carrying
//!    the key, the lock id and the fencing token. Dropping the guard sends the `unlock`
//!    without waiting for its reply (`Session::release`); the session still consumes that
//!    reply by its id, and counts it if the lock had already been lost.
//!
//! Time enters the same way everywhere: the reactor passes `Instant::now()` to
//! `Core::handle_timeout`, which fires the table's due deadlines (`table/deadlines.rs`: TTLs,
//! wait time-outs) and the core's own (ack probes), and sleeps until `Core::poll_timeout`.
//!
//! Embedding a broker with `Broker::builder()` is for a program that owns the broker's
//! lifetime (a server that runs for as long as its clients need it). Short-lived peers (test
//! processes under `cargo nextest`, CI jobs, workers) must not host the broker they share: when
//! the hosting process exits, every other process's locks vanish with it, possibly in the
//! middle of their critical sections. They use [`connect_or_spawn`], which starts
//! `lmx start --daemon` as a process of its own that outlives all of them.

// Unix sockets, fork, flock, file modes: the client and the broker are built on them.
#[cfg(all(not(unix), any(feature = "client", feature = "broker")))]
compile_error!(
    "live-mutex's client and broker need a Unix-like OS (Linux, macOS, FreeBSD); Windows is not \
     supported"
);

/// This crate's version: what a broker reports in `pong` and in `lmx_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(feature = "tokio")]
pub mod async_client {
    //! An async client on tokio (feature `tokio`), driving the same [`Session`] as the blocking
    //! [`Client`](crate::Client): TCP, Unix socket and WebSocket, any runtime flavour.
    //!
    //! Nothing here blocks an executor thread: connecting, reconnect back-off and every wait are
    //! awaited; a guard's drop only queues its unlock for the connection's task.
    //!
    //! **Cancellation safety.** Dropping a `lock` future (a `select!` that lost, an aborted task, a
    //! `tokio::time::timeout`) withdraws the request at the broker, and if the grant crossed the
    //! withdrawal on the wire, the lock is released as soon as it arrives: a lock future that did
    //! not complete never leaves a lock held.
    //!
    //! ```
    //! # #[tokio::main(flavor = "current_thread")]
    //! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    //! # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
    //! # let url = format!("tcp://{}", broker.local_addr().unwrap());
    //! let client = live_mutex::AsyncClient::connect(&url).await?;
    //! {
    //!     let _guard = client.lock("deploy").await?;
    //!     // ... only one holder anywhere ...
    //! } // released here
    //! // A wait bounded by the caller: the abandoned request leaves nothing behind.
    //! let held = client.lock("busy").await?;
    //! let r = tokio::time::timeout(std::time::Duration::from_millis(20), client.lock("busy")).await;
    //! assert!(r.is_err());
    //! assert_eq!(client.info("busy").await?.waiters, 0);
    //! # drop(held);
    //! # Ok(()) }
    //! ```
    //!
    //! [`Session`]: crate::proto::session::Session

    pub use crate::client::async_client::{
        AsyncClient, AsyncClientBuilder, AsyncLockGuard, AsyncManyGuard,
    };
}
#[cfg(feature = "broker")]
pub mod broker;
#[cfg(feature = "client")]
pub mod client;
/// Detaching a broker as a daemon: shared by `lmx start --daemon` and the zero-install start
/// of the shared broker from a test executable (`daemon::self_serve`).
#[cfg(all(feature = "client", feature = "broker"))]
#[doc(hidden)]
pub mod daemon;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod mode;
#[cfg(feature = "tls")]
mod pem;
pub mod proto;
// Not API (see `internal`): free to grow a variant or a field.
#[cfg(feature = "broker")]
#[allow(clippy::exhaustive_enums, clippy::exhaustive_structs)]
mod store;
#[cfg(feature = "broker")]
#[allow(clippy::exhaustive_enums, clippy::exhaustive_structs)]
mod table;

/// Not API: the lock table and the etcd store, for this crate's own tests, benches, fuzzers
/// and examples (as rustls keeps its `internal`). Anything here may change in any release.
#[cfg(feature = "broker")]
#[doc(hidden)]
pub mod internal {
    /// The in-memory lock table (`src/table/`).
    pub mod table {
        pub use crate::table::*;
    }
    /// The store interface's vocabulary (`src/store/`), which both stores speak: ops in,
    /// events out.
    pub mod store {
        pub use crate::store::*;
    }
    /// The etcd lock store (`src/store/etcd/`).
    #[cfg(feature = "etcd")]
    pub mod etcd {
        pub use crate::store::etcd::*;
    }
}

pub use mode::Mode;

#[cfg(feature = "tokio")]
pub use async_client::{AsyncClient, AsyncLockGuard, AsyncManyGuard};
#[cfg(feature = "client")]
pub use client::{
    BrokerKind, Client, Error, LockGuard, LockOptions, ManyGuard, Ttl, connect_or_spawn,
    connect_or_spawn_using, parallel, serial,
};
/// The attribute form of [`parallel()`](fn@parallel): holds the keys shared, so parallel tests
/// of a key run together, never alongside a serial one.
#[cfg(feature = "macros")]
pub use live_mutex_macros::parallel;
/// The attribute form of [`serial()`](fn@serial): `#[live_mutex::serial(db, cache)]` on a test
/// fn (or an async helper, or a `mod` of tests) holds those keys exclusively (all-or-nothing)
/// for the whole call; `#[live_mutex::serial]` holds one default key. A function and an
/// attribute macro live in different namespaces, so both are `live_mutex::serial`.
#[cfg(feature = "macros")]
pub use live_mutex_macros::serial;
