//! The async guards: a held lock (or several) tied to its connection, released when dropped
//! (the unlock is queued for the connection task, which writes it without the guard waiting:
//! dropping never blocks and never needs a runtime handle).

use super::conn::Conn;
use crate::client::blocking::guard::{Lease, extend_request, renew_period};
use crate::client::calls::{new_uuid, release_many_request, released, unlock_request};
use crate::client::{Error, Result};
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
    pub(super) conn: Arc<Conn>,
    pub(super) key: String,
    pub(super) id: String,
    pub(super) token: Option<u64>,
    pub(super) lease: Arc<Lease>,
    pub(super) timeout: Duration,
    pub(super) done: bool,
    /// Aborted when the guard goes.
    pub(super) keep_alive: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for AsyncLockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncLockGuard")
            .field("key", &self.key)
            .field("id", &self.id)
            .field("token", &self.token)
            .finish()
    }
}

/// One `extend` of lock `id` on `key`, recorded in `lease`.
async fn renew(
    conn: &Conn,
    key: &str,
    id: &str,
    ttl: Option<Duration>,
    timeout: Duration,
    lease: &Lease,
) -> Result<()> {
    let uuid = new_uuid();
    let extend = extend_request(&uuid, key, id, ttl)?;
    lease.renewable(conn.is_dead())?;
    let sent = Instant::now();
    lease.renewed(sent, ttl, conn.call(timeout, &extend).await?)
}

/// Spawns the keep-alive task of one guard: renews every TTL/3 until aborted or lost.
pub(super) fn keep_alive(
    conn: Arc<Conn>,
    key: String,
    id: String,
    ttl: Duration,
    timeout: Duration,
    lease: Arc<Lease>,
) -> JoinHandle<()> {
    let every = renew_period(ttl);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            match renew(&conn, &key, &id, Some(ttl), timeout, &lease).await {
                Ok(()) | Err(Error::BrokerSilent) => {}
                Err(_) => return,
            }
        }
    })
}

impl AsyncLockGuard {
    /// The locked key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The lock id (the uuid of the lock request).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The fencing token of this grant (`None` against the npm broker).
    pub fn fencing_token(&self) -> Option<u64> {
        self.token
    }

    /// Whether the lock is known to be gone: its connection dropped, an `extend` found it
    /// expired, or its TTL has run out by this process's clock.
    pub fn is_lost(&self) -> bool {
        self.lease.is_lost() || self.conn.is_dead()
    }

    /// Sets the lock's remaining lifetime to `ttl` from now (`None`: never expires);
    /// [`Error::LockLost`] if it had already gone. `&self`: a renewal task may share the guard.
    pub async fn extend(&self, ttl: Option<Duration>) -> Result<()> {
        renew(
            &self.conn,
            &self.key,
            &self.id,
            ttl,
            self.timeout,
            &self.lease,
        )
        .await
    }

    fn finish(&mut self) {
        self.done = true;
        if let Some(k) = self.keep_alive.take() {
            k.abort();
        }
    }

    /// Releases the lock and waits for the answer: [`Error::LockLost`] if it had already gone.
    pub async fn unlock(mut self) -> Result<()> {
        self.finish();
        if self.lease.was_lost() || self.conn.is_dead() {
            return Err(Error::LockLost);
        }
        let uuid = new_uuid();
        let req = unlock_request(&uuid, &self.key, &self.id);
        released(self.conn.call(self.timeout, &req).await)
    }

    /// Stops managing the lock and returns its id: it stays held until its TTL, an unlock by
    /// id, or the connection closing.
    pub fn detach(mut self) -> String {
        self.finish();
        std::mem::take(&mut self.id)
    }
}

impl Drop for AsyncLockGuard {
    fn drop(&mut self) {
        if !self.done {
            self.finish();
            if !self.conn.is_dead() {
                self.conn
                    .release(&unlock_request(&new_uuid(), &self.key, &self.id));
            }
        }
    }
}

/// Several keys held together (all-or-nothing), from
/// [`AsyncClient::lock_many`](super::AsyncClient::lock_many). Dropping it releases them all.
#[must_use = "dropping the guard releases the locks at once"]
pub struct AsyncManyGuard {
    pub(super) conn: Arc<Conn>,
    pub(super) id: String,
    pub(super) tokens: HashMap<String, u64>,
    pub(super) timeout: Duration,
    pub(super) done: bool,
}

impl std::fmt::Debug for AsyncManyGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncManyGuard")
            .field("id", &self.id)
            .field("tokens", &self.tokens)
            .finish()
    }
}

impl AsyncManyGuard {
    /// The id of the combined lock.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The fencing token of each key.
    pub fn fencing_tokens(&self) -> &HashMap<String, u64> {
        &self.tokens
    }

    /// Whether the connection carrying these locks has dropped.
    pub fn is_lost(&self) -> bool {
        self.conn.is_dead()
    }

    /// Releases every key and waits for the answer; [`Error::LockLost`] if they had gone.
    pub async fn unlock(mut self) -> Result<()> {
        self.done = true;
        let uuid = new_uuid();
        let req = release_many_request(&uuid, &self.id);
        released(self.conn.call(self.timeout, &req).await)
    }
}

impl Drop for AsyncManyGuard {
    fn drop(&mut self) {
        if !self.done && !self.conn.is_dead() {
            self.conn
                .release(&release_many_request(&new_uuid(), &self.id));
        }
    }
}
