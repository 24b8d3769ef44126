//! Starting and stopping a bound broker: [`Broker::spawn`] runs it on a thread of its own,
//! [`BrokerHandle`] and [`ShutdownHandle`] stop it from any thread.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use mio::Waker;

use super::{Broker, BrokerBuilder, BrokerError};

/// Stops a running broker from any thread.
#[derive(Clone)]
pub struct ShutdownHandle {
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
}

impl ShutdownHandle {
    pub(super) fn new(waker: Arc<Waker>, stop: Arc<AtomicBool>) -> Self {
        ShutdownHandle { waker, stop }
    }

    /// Asks the broker to stop at the end of its current loop turn, and returns at once (it
    /// does not wait); calling it again does nothing more.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.waker.wake().ok();
    }
}

/// A broker running on its own thread.
pub struct BrokerHandle {
    local_addr: Option<SocketAddr>,
    uds_path: Option<PathBuf>,
    stop: ShutdownHandle,
    thread: JoinHandle<Result<(), BrokerError>>,
}

impl BrokerHandle {
    /// The TCP address actually bound (useful after binding port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }
    /// The Unix socket path it listens on; `None` when it has no Unix socket.
    pub fn uds_path(&self) -> Option<&Path> {
        self.uds_path.as_deref()
    }
    /// Asks the broker to stop; its connections are closed and its Unix socket removed.
    pub fn shutdown(&self) {
        self.stop.shutdown();
    }
    /// A clonable handle that stops this broker from any thread, without owning the
    /// `BrokerHandle` (whose `join` takes it by value).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.stop.clone()
    }
    /// Waits for the broker thread to end.
    pub fn join(self) -> Result<(), BrokerError> {
        self.thread.join().map_err(|_| BrokerError::Panicked)?
    }
}

impl Broker {
    /// A [`BrokerBuilder`] with the default settings; its `bind` makes the broker.
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder::default()
    }

    /// Runs the broker on a dedicated thread.
    pub fn spawn(self) -> Result<BrokerHandle, BrokerError> {
        let local_addr = self.local_addr();
        let uds_path = self.uds_path().map(Path::to_path_buf);
        let stop = self.shutdown_handle();
        let thread = std::thread::Builder::new()
            .name("lmx-broker".into())
            .spawn(move || self.run())?;
        Ok(BrokerHandle {
            local_addr,
            uds_path,
            stop,
            thread,
        })
    }
}
