//! The async guards: a held lock (or several) tied to its connection, released when dropped
//! (the unlock is queued for the connection task, which writes it without the guard waiting:
//! dropping never blocks and never needs a runtime handle).

use super::conn::Conn;
use crate::client::calls::released;
use crate::client::held::{Held, Link, LockCore, ManyCore, renew_period};
use crate::client::options::Renewals;
use crate::client::requests::new_uuid;
use crate::client::{Error, Result};
use crate::proto::Request;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// A held lock, from [`AsyncClient::lock`](super::AsyncClient::lock). Dropping it releases the
/// lock without waiting; [`unlock`](Self::unlock) waits and reports a lost lock.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let broker = live_mutex::broker::Broker::builder().tcp("127.0.0.1:0".parse()?).bind()?.spawn()?;
/// # let url = format!("tcp://{}", broker.local_addr().unwrap());
/// let client = live_mutex::AsyncClient::connect(&url).await?;
/// let g = client.lock("k").await?;
/// assert_eq!(g.key(), "k");
/// g.unlock().await?; // or just drop it
/// # Ok(()) }
/// ```
#[must_use = "dropping the guard releases the lock at once"]
pub struct AsyncLockGuard {
    pub(super) core: LockCore<Conn>,
    /// Aborted when the guard goes.
    pub(super) keep_alive: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for AsyncLockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = &self.core.held;
        f.debug_struct("AsyncLockGuard")
            .field("key", &h.key)
            .field("id", &h.id)
            .field("token", &h.token)
            .finish()
    }
}

/// One `extend` of `held` to `ttl` from now, recorded in it.
async fn renew(conn: &Conn, held: &Held, ttl: Option<Duration>) -> Result<()> {
    let uuid = new_uuid();
    let extend = held.extend_request(&uuid, ttl, conn.is_dead())?;
    let sent = Instant::now();
    held.extended(sent, ttl, conn.call(held.timeout, &extend).await?)
}

/// Spawns the keep-alive task of one guard: renews every TTL/3 until aborted, lost, or past
/// `plan.until` (`max_hold`: the lock then ends with its TTL, and the lease says so).
pub(super) fn keep_alive(conn: Arc<Conn>, held: Arc<Held>, plan: Renewals) -> JoinHandle<()> {
    let ttl = plan.ttl;
    let every = renew_period(ttl);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if !plan.due() {
                return;
            }
            match renew(&conn, &held, Some(ttl)).await {
                Ok(()) | Err(Error::BrokerSilent) => {}
                Err(_) => return,
            }
        }
    })
}

impl Link for Conn {
    fn is_dead(&self) -> bool {
        Conn::is_dead(self)
    }
    fn release_later(&self, req: &Request<'_>) {
        self.release(req);
    }
}

impl AsyncLockGuard {
    /// The locked key.
    pub fn key(&self) -> &str {
        &self.core.held.key
    }

    /// The lock id (the uuid of the lock request).
    pub fn id(&self) -> &str {
        &self.core.held.id
    }

    /// The fencing token of this grant (`None` against the npm broker).
    pub fn fencing_token(&self) -> Option<u64> {
        self.core.held.token
    }

    /// Whether the lock is known to be gone: its connection dropped, an `extend` found it
    /// expired, or its TTL has run out by this process's clock.
    pub fn is_lost(&self) -> bool {
        self.core.is_lost()
    }

    /// Sets the lock's remaining lifetime to `ttl` from now (`None`: never expires);
    /// [`Error::LockLost`] if it had already gone. `&self`: a renewal task may share the guard.
    pub async fn extend(&self, ttl: Option<Duration>) -> Result<()> {
        renew(&self.core.conn, &self.core.held, ttl).await
    }

    /// Stops the keep-alive task and being in charge of the lock (see `LockCore::finish`).
    fn finish(&mut self) -> bool {
        if let Some(k) = self.keep_alive.take() {
            k.abort();
        }
        self.core.finish()
    }

    /// Releases the lock and waits for the answer: [`Error::LockLost`] if it had already gone.
    pub async fn unlock(mut self) -> Result<()> {
        if self.finish() {
            return Err(Error::LockLost);
        }
        let (conn, held) = (&self.core.conn, &self.core.held);
        let uuid = new_uuid();
        released(conn.call(held.timeout, &held.unlock_request(&uuid)).await)
    }

    /// Stops managing the lock and returns its id: it stays held until its TTL, an unlock by
    /// id, or the connection closing.
    pub fn detach(mut self) -> String {
        self.finish();
        self.core.held.id.clone()
    }
}

impl Drop for AsyncLockGuard {
    fn drop(&mut self) {
        // Its unlock, if still due, is sent by the core.
        if let Some(k) = self.keep_alive.take() {
            k.abort();
        }
    }
}

/// Several keys held together (all-or-nothing), from
/// [`AsyncClient::lock_many`](super::AsyncClient::lock_many). Dropping it releases them all.
#[must_use = "dropping the guard releases the locks at once"]
pub struct AsyncManyGuard {
    pub(super) core: ManyCore<Conn>,
}

impl std::fmt::Debug for AsyncManyGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncManyGuard")
            .field("id", &self.core.id)
            .field("tokens", &self.core.tokens)
            .finish()
    }
}

impl AsyncManyGuard {
    /// The id of the combined lock.
    pub fn id(&self) -> &str {
        &self.core.id
    }

    /// The fencing token of each key.
    pub fn fencing_tokens(&self) -> &HashMap<String, u64> {
        &self.core.tokens
    }

    /// Whether the connection carrying these locks has dropped.
    pub fn is_lost(&self) -> bool {
        self.core.conn.is_dead()
    }

    /// Releases every key and waits for the answer; [`Error::LockLost`] if they had gone.
    pub async fn unlock(mut self) -> Result<()> {
        let c = &mut self.core;
        c.done = true;
        let uuid = new_uuid();
        released(c.conn.call(c.timeout, &c.release_request(&uuid)).await)
    }
}
