//! The broker: one thread, one `mio::Poll`, and every lock decision in its store (the
//! in-memory lock table, or etcd with feature `etcd`, which talks to its cluster from a thread
//! of its own). The broker's sockets live here and nowhere else: the reactor and the files it
//! calls (`accept`, `transport`, `tls`); `core` below them does no I/O.
//!
//! One TCP port serves both framings, told apart by the first byte a client sends (`G` starts
//! an HTTP upgrade to WebSocket, 0x16 a TLS handshake inside which the same choice is made
//! again, anything else is NDJSON); a Unix socket serves NDJSON.
//! Web pages are kept out by `http_guard` (HTTP lines on NDJSON close the connection, Host and
//! Origin rules on upgrades); vanished peers are found by `keepalive`.
//!
//! Layout, from the outside in:
//! - `config`: [`BrokerBuilder`], and `bind` (the listeners; `bind_uds` for the Unix socket
//!   and the lock file beside it).
//! - `handle`: [`Broker::spawn`], [`BrokerHandle`], [`ShutdownHandle`].
//! - `reactor`: the poll loop ([`Broker::run`]), the only code that sees the broker's fields
//!   and the only one that adds (`accept`, with the connection cap) and removes (`close`)
//!   connections; the end of each loop turn runs the core's timers, then writes its output and
//!   closes what must close (`end_turn`); back-pressure and the handshake and stall deadlines
//!   (`housekeeping`); `idle_exit`. `spin`: whether to poll without sleeping after a busy turn
//!   (only while it pays).
//! - `accept`: the listeners (`Listeners`): TCP keepalive, the spare descriptor.
//! - `transport`: a connection's `Socket` and its readers: the first-byte dispatch, the NDJSON
//!   line loop (`read_ndjson`, with the first-line rule), writing the core's output out. A
//!   reader borrows what it needs of the broker for one event (`Cx`) and reports what the
//!   reactor must do (`Step`: keep the connection, or close it), as a handler does in mio's
//!   `tcp_server` example. `stream`: the socket of either family (TCP, Unix, TLS).
//! - `ws` (the WebSocket upgrade, its callback `UpgradeCheck`, messages in and out), `http`
//!   (the `/metrics` and status page answers) and `tls` (feature `tls`: rustls on the
//!   TCP port, the `require_tls` rule, client certificates, reloading the files) are more
//!   readers of a `Socket`.
//! - `http_guard`: what looks like HTTP, and the Host/Origin rules; `keepalive`: TCP options;
//!   `unix_peer`: who is on the other end of a Unix socket.
//! - `core`: the sans-IO protocol state machine: messages and time in, `(ConnId, bytes)` and
//!   close requests out. `impl Core` is in three files: `mod.rs` (connections, output,
//!   timers), `requests` (requests turned into store ops), `answers` (the store's events
//!   turned into replies); the rest of its state is owned by types in files of their own:
//!   `route` (requests the store is working on), `acks` (pushed grants the npm client must
//!   acknowledge), `legacy_rw` (the 0.2.x read/write protocol), `identity` (who is behind a
//!   connection), `watch` (watchers and their snapshots), `counters`; `listing` pages `ls`,
//!   `events` logs lock events. Its tests drive it in memory with simulated time, Rust
//!   clients as real `proto::Session`s.
//!
//! ```no_run
//! use live_mutex::broker::Broker;
//! let handle = Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
//! println!("listening on {:?}", handle.local_addr());
//! handle.shutdown();
//! handle.join()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod accept;
mod config;
mod core;
mod fd_limit;
mod flow;
mod handle;
mod http;
pub(crate) mod http_guard;
mod keepalive;
mod metrics;
mod reactor;
mod spin;
mod stream;
#[cfg(feature = "tls")]
mod tls;
mod transport;
mod unix_peer;
mod ws;

use std::io;
use std::path::PathBuf;

/// The etcd store's settings, for [`BrokerBuilder::etcd`].
#[cfg(feature = "etcd")]
pub use crate::store::etcd::EtcdConfig;
/// The lock table's limits and defaults, for [`BrokerBuilder::table_config`].
pub use crate::table::Config as TableConfig;
pub use config::{BrokerBuilder, uds_lock_path};
pub use handle::{BrokerHandle, ShutdownHandle};
pub use keepalive::Keepalive;
pub use reactor::Broker;
#[cfg(feature = "tls")]
pub use tls::TlsReloader;

/// Errors of starting or running a broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// A listener could not be bound: the TCP address, the Unix socket, or its lock file.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The TCP address or the file path that failed.
        addr: String,
        /// Why, as the OS said it.
        source: io::Error,
    },
    /// Another broker holds the Unix socket's lock file, or something still answers on the
    /// socket: it is never taken over.
    #[error("a broker is already listening on the Unix socket {0}")]
    UdsInUse(PathBuf),
    /// The builder was given neither a TCP address nor a Unix socket path.
    #[error("nothing to listen on: give a TCP address or a Unix socket path")]
    NoListener,
    /// Any other I/O failure while binding or running (poll, socket options, file
    /// permissions, starting the broker thread).
    #[error("broker I/O error: {0}")]
    Io(#[from] io::Error),
    /// The broker thread started by [`Broker::spawn`] panicked; found by [`BrokerHandle::join`].
    #[error("the broker thread panicked")]
    Panicked,
    /// A TLS file could not be used (missing, not PEM, a key that does not match the
    /// certificate), or `require_tls` was asked for without a certificate.
    #[cfg(feature = "tls")]
    #[error("TLS: {0}")]
    Tls(String),
    /// The lock store did not open: only the etcd store can fail to (bad settings, or etcd did
    /// not answer).
    #[error("etcd store: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// The broker's upgrade check (Host and Origin rules, no token) for the fuzz harness; the Host
/// `x` of the older seeds is allowed so that their frames are still reached.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn fuzz_upgrade_check() -> impl tungstenite::handshake::server::Callback {
    let bound = std::net::SocketAddr::from(([127, 0, 0, 1], 6970));
    let policy = http_guard::HttpPolicy::new(Some(bound), &["x".into()], &[]);
    ws::UpgradeCheck {
        policy: std::sync::Arc::new(policy),
        token: None,
        proved: Default::default(),
    }
}

/// The WebSocket settings the broker uses, for the fuzz harness.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn fuzz_ws_config() -> tungstenite::protocol::WebSocketConfig {
    ws::ws_config(crate::proto::ndjson::DEFAULT_MAX_LINE, 4 * 1024 * 1024)
}
