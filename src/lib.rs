#![warn(missing_docs)]
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
//! Layers point one way: `table ← broker → proto ← client`. The table knows nothing of the
//! wire; the client knows nothing of the broker or the table; `lmx` (the `cli` feature) uses
//! the client and the broker.
//!
//! - [`table`] (`src/table/`, feature `broker`): every lock decision, as a state machine with
//!   no I/O and no clock (`now` is passed in): FIFO queues, semaphores, read/write locks, TTLs,
//!   fencing tokens, acquire-many. Split by idea: `types.rs` (requests and outcomes),
//!   `single.rs` (one key), `groups.rs` (acquire-many), `conns.rs` (what a connection holds),
//!   `deadlines.rs` (TTLs and wait time-outs), `inspect.rs` (`info`, `keys`, `stats`).
//! - [`proto`] (`src/proto/`, always built): the wire format, both directions with one set of
//!   types. Requests are decoded in place by the broker (`decode.rs`, simd-json's tape) and
//!   encoded by the client (`encode.rs`); replies are encoded by the broker (`encode.rs`,
//!   `reply.rs`) and decoded by the client (`reply_decode.rs`); NDJSON framing (`ndjson.rs`);
//!   and [`proto::session`], the client's side of a connection as a sans-IO state machine
//!   (pending requests by id, pipelined releases, the npm broker's quirks).
//! - [`broker`] (`src/broker/`, feature `broker`): `core/` is the broker's sans-IO state
//!   machine (messages and time in; bytes per connection and close events out): `route.rs`
//!   turns requests into store ops, `answers.rs` the store's events into replies; around it, the only code that touches sockets: `reactor.rs` (the `mio` loop),
//!   `accept.rs`, `transport.rs` (NDJSON and WebSocket framing), `tls.rs` (rustls on the TCP
//!   port, feature `tls`), `config.rs`, `handle.rs`,
//!   `http_guard.rs` (web pages kept out), `keepalive.rs` (vanished peers found).
//! - [`client`] (`src/client/`, feature `client`): a thread-safe, pipelining blocking client
//!   with RAII guards that drives a [`proto::session::Session`] over a socket (`driver.rs`,
//!   `transport.rs`, `tls.rs`, `url.rs` (a list of brokers), `options.rs`, `guard.rs`; `calls.rs` holds what it shares with the async
//!   client: the handshake, and answers turned into results); [`connect_or_spawn`] (`spawn.rs`) starts a
//!   broker daemon on demand (`lmx`, or with feature `broker` the program's own executable:
//!   `src/daemon/`, shared with `lmx start --daemon`), and [`serial()`](fn@serial) /
//!   [`parallel()`](fn@parallel) / `#[live_mutex::serial(key)]` (`client/serial/`: reentrant
//!   per test in `held.rs`, waits that name the holder in `wait.rs`, async takes in `scope.rs`)
//!   serialise tests across processes.
//! - [`store`] (`src/store/`, feature `broker`): the one interface the broker core keeps its
//!   lock state behind (ops in, events out), and its two implementations: the in-memory
//!   [`table`] (`memory.rs`), and with feature `etcd` the etcd lock store (`store/etcd/`, the
//!   extended etcd Mutex recipe on its own thread, speaking the same ops and events), chosen with
//!   `BrokerBuilder::etcd` / `lmx start --store etcd://...`.
//! - `async_client` (feature `tokio`): `AsyncClient`, the same session driven by one tokio
//!   task per connection, with cancellation-safe lock futures.
//! - `src/cli/` (feature `cli`): the `lmx` binary; `src/bin/lmx.rs` only calls it.
//!
//! # Life of a request
//!
//! A blocking [`Client::lock`] on a key that another connection holds, over NDJSON/TCP:
//!
//! 1. `Client::lock` (`client/mod.rs`) turns [`LockOptions`] into a
//!    [`proto::Request::Lock`] (`LockOptions::lock_request`, `client/options.rs`) and hands it to the connection driver,
//!    `Conn::request` (`client/driver.rs`). The driver asks the session for it:
//!    `Session::request` (`proto/session.rs`) gives it an id, remembers what the answer must
//!    be, and encodes it (`Request::encode`, `proto/encode.rs`) into the bytes
//!    `Session::transmit` hands back; the driver writes them to the socket.
//! 2. In the broker, `Broker::run` (`broker/reactor.rs`) wakes on readiness and calls
//!    `on_readable` (`broker/transport.rs`): the connection's first byte was not `G` (an HTTP
//!    upgrade to WebSocket), so it speaks NDJSON, and `read_ndjson` frames the line (`proto/ndjson.rs`, `LineFramer`), checks that the
//!    connection's first lines are not HTTP (`http_guard.rs`), and passes it to the sans-IO
//!    core: `Core::handle_message` (`broker/core/mod.rs`) decodes it in place
//!    (`Decoder::decode`, `proto/decode.rs`) and dispatches it to `Core::lock`
//!    (`broker/core/route.rs`).
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
//!    `Answer::Granted`; `Client::lock` returns a [`LockGuard`] (`client/guard.rs`) carrying
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

/// The async client (feature `tokio`): [`AsyncClient`].
#[cfg(feature = "tokio")]
pub mod async_client;
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
#[cfg(feature = "tls")]
mod pem;
pub mod proto;
#[cfg(feature = "broker")]
pub mod store;
#[cfg(feature = "broker")]
pub mod table;

#[cfg(feature = "tokio")]
pub use async_client::{AsyncClient, AsyncLockGuard, AsyncManyGuard};
#[cfg(feature = "client")]
pub use client::{
    BrokerKind, Client, Error, LockGuard, LockOptions, ManyGuard, Mode, Ttl, connect_or_spawn,
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
