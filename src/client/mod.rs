//! The clients of live-mutex brokers (this crate's, or the npm live-mutex 0.2.x one): a
//! blocking [`Client`] and, with feature `tokio`, an async client (`crate::AsyncClient`).
//!
//! Both drive the same sans-IO [`Session`](crate::proto::session::Session). What they share
//! sits here: the options a caller gives ([`LockOptions`], `options.rs`; the connection's in
//! [`Builder`], `builder.rs`), every request they build (`requests.rs`) and what the answers
//! mean (`calls.rs`), the held-lock core both guards wrap (`held.rs`), the list of brokers and
//! the reconnect back-off (`url.rs`, `backoff.rs`), TLS (`tls.rs`), the WebSocket upgrade
//! (`websocket.rs`), the errors (`error.rs`), starting a broker on demand (`spawn.rs`) and the
//! test attributes (`serial/`). The two drivers are children: `blocking/` (threads, std
//! sockets) and `async_client/` (tokio tasks).
//!
//! One [`Client`] holds one connection that any number of threads share: requests are
//! pipelined and matched to replies by id, so a thread waiting for a contended key never holds
//! up another thread's unlock. When the connection drops, every waiting call fails with
//! [`Error::ConnectionLost`], every guard reports [`LockGuard::is_lost`], and the next call
//! reconnects; nothing is ever re-acquired behind your back.
//!
//! ```
//! # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
//! # let url = format!("tcp://{}", broker.local_addr().unwrap());
//! let client = live_mutex::Client::connect(&url)?;
//! {
//!     let _guard = client.lock("deploy")?;
//!     // ... only one process anywhere runs this at a time ...
//! } // released here
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub(crate) mod backoff;
mod blocking;
mod builder;
pub(crate) mod calls;
mod error;
pub(crate) mod held;
pub(crate) mod options;
mod requests;
mod runtime_dir;
mod serial;
mod spawn;
#[cfg(feature = "tls")]
pub(crate) mod tls;
pub(crate) mod url;
mod websocket;

#[cfg(feature = "tokio")]
pub(crate) mod async_client;

pub use crate::proto::session::{BrokerKind, LockInfo};
pub use crate::proto::{HolderInfo, Stats, WaiterInfo, Who};
pub use blocking::{Client, LockGuard, ManyGuard, Pong, Watch};
pub use builder::{Builder, ClientBuilder};
pub use error::{Error, Result};
pub use options::LockOptions;
#[doc(hidden)]
pub use serial::{__Attr, __serial_async, __serial_attr};
pub use serial::{SerialGuard, parallel, parallel_many, serial, serial_many};
pub use spawn::{
    LocalAddr, connect_or_spawn, connect_or_spawn_using, runtime_dir, spawn_target,
    spawn_url_from_env,
};

use std::time::Duration;

/// How long the client waits beyond a broker-side wait time-out before it gives up on its own:
/// the broker decides, this only guards against a broker that never answers.
pub(crate) const SLACK: Duration = Duration::from_secs(1);

/// How long a lock may be held, and how it shares its key: the protocol's own types.
///
/// ```
/// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
/// # let client = live_mutex::Client::connect(&format!("tcp://{}", broker.local_addr().unwrap()))?;
/// use live_mutex::{LockOptions, Mode};
/// let r1 = client.lock_with("cfg", &LockOptions::new().mode(Mode::Read))?;
/// let r2 = client.lock_with("cfg", &LockOptions::new().mode(Mode::Read))?; // shared
/// # drop((r1, r2));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub use crate::proto::{Mode, Ttl};

/// The broker URL from the environment: `LMX_URL`, else `tcp://$live_mutex_host:$live_mutex_port`
/// (the npm variables), each defaulting to `127.0.0.1` and `6970`.
///
/// ```
/// let url = live_mutex::client::url_from_env();
/// assert!(url.contains("://"));
/// ```
pub fn url_from_env() -> String {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    var("LMX_URL").unwrap_or_else(|| {
        let host = var("live_mutex_host").unwrap_or_else(|| "127.0.0.1".into());
        let port = var("live_mutex_port").unwrap_or_else(|| url::DEFAULT_PORT.to_string());
        format!(
            "tcp://{}",
            url::host_port(&host, port.parse().unwrap_or(url::DEFAULT_PORT))
        )
    })
}
