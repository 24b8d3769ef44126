//! The broker: one thread, one `mio::Poll`, every lock decision in the lock
//! [`Table`](crate::table::Table). This module is the only one that does network I/O.
//!
//! One TCP port serves both framings, told apart by the first byte a client sends (`G` starts
//! an HTTP upgrade to WebSocket, anything else is NDJSON); a Unix socket serves NDJSON.
//!
//! Layout, from the outside in:
//! - `config`: [`BrokerBuilder`], and `bind` (the listeners; `bind_uds` for the Unix socket).
//! - `handle`: [`Broker::spawn`], [`BrokerHandle`], [`ShutdownHandle`].
//! - `reactor`: the poll loop ([`Broker::run`]); the end of each loop turn runs the core's
//!   timers, then writes its output and closes what must close (`end_turn`); back-pressure
//!   and the handshake and stall deadlines (`housekeeping`).
//! - `accept`: new connections, the connection cap, the spare descriptor.
//! - `transport`: the sockets, the NDJSON line loop (`read_ndjson`), the WebSocket upgrade and
//!   its callback (`AuthCheck`), reading messages into the core and writing its output out.
//! - `core`: the sans-IO protocol state machine: messages and time in, `(ConnId, bytes)` and
//!   close requests out, with a file per command; its tests drive it in memory with
//!   simulated time.
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
mod handle;
mod reactor;
mod transport;

use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::proto::ndjson::DEFAULT_MAX_LINE;

pub use config::BrokerBuilder;
pub use handle::{BrokerHandle, ShutdownHandle};
pub use reactor::Broker;

/// Errors of starting or running a broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error("a broker is already listening on the Unix socket {0}")]
    UdsInUse(PathBuf),
    #[error("nothing to listen on: give a TCP address or a Unix socket path")]
    NoListener,
    #[error("address {0} is taken by something that does not answer as a live-mutex broker")]
    NotABroker(SocketAddr),
    #[error("broker I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("the broker thread panicked")]
    Panicked,
}

/// If a broker already answers at `addr`, returns `None`; otherwise starts one on a thread of
/// this process. Bind is the arbiter of races: when another process binds first, its broker is
/// used.
pub fn ensure_broker(addr: SocketAddr) -> Result<Option<BrokerHandle>, BrokerError> {
    if answers(addr) {
        return Ok(None);
    }
    match Broker::builder().tcp(addr).bind() {
        Ok(b) => Ok(Some(b.spawn()?)),
        Err(BrokerError::Bind { source, .. }) if source.kind() == io::ErrorKind::AddrInUse => {
            // Lost the race; the winner may still be starting.
            for _ in 0..50 {
                if answers(addr) {
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(BrokerError::NotABroker(addr))
        }
        Err(e) => Err(e),
    }
}

/// Does a live-mutex broker (ours or the Node one) answer a ping at `addr`?
fn answers(addr: SocketAddr) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_millis(1000))).ok();
    if s.write_all(b"{\"type\":\"ping\",\"uuid\":\"ensure-broker\"}\n")
        .is_err()
    {
        return false;
    }
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).is_ok() && line.trim_start().starts_with('{')
}

/// The WebSocket settings the broker uses, for the fuzz harness.
#[doc(hidden)]
pub fn fuzz_ws_config() -> tungstenite::protocol::WebSocketConfig {
    transport::ws_config(DEFAULT_MAX_LINE, 4 * 1024 * 1024)
}

/// Start-up and notable events go to stderr, one line each.
pub(crate) mod log {
    pub fn note(msg: &str) {
        eprintln!("lmx: {msg}");
    }
}
